"""The proxy's HTTP side (monitors/sse_proxy.py) and a JWT forged to name another user: it follows a chat only once
the server answered its request with a 2xx event stream, so a token the server refuses (401) binds nothing of the
user it names, as the WebSocket side binds nothing before the server accepted the connection
(tests/monitors/test_proxy_forged_claim.py). A guard (the HTTP side had no such hole): agentsim (AG-UI, JWT auth)
behind the proxy, real sockets on 127.0.0.1."""
from __future__ import annotations

import secrets
import time

import httpx
import jwt

from agentsim.agui import AguiSim
from agentsim.server import SimConfig

from .test_sse_proxy import BODY, proxy_to, sample


async def test_a_forged_token_refused_with_401_follows_no_chat_and_binds_no_user():
    secret = secrets.token_urlsafe(32)
    sim = AguiSim(SimConfig(host="127.0.0.1", port=0, jwt_secret=secret, think=0.002, tool_latency=0.001,
                            protocol="ag-ui", seed=3))
    await sim.start()
    try:
        async with proxy_to(f"http://127.0.0.1:{sim.port}") as (url, metrics, proxy):
            forged = jwt.encode({"sub": "alice", "exp": int(time.time()) + 300}, "not-the-servers-" + "x" * 24,
                                algorithm="HS256")
            async with httpx.AsyncClient(timeout=10) as client:
                answer = await client.post(f"{url}/agent", content=BODY, headers={
                    "Accept": "text/event-stream", "Authorization": f"Bearer {forged}"})
            assert answer.status_code == 401
            assert not proxy.live.open and not proxy.live.parked  # no connection of alice's, nothing kept
            assert sample(metrics, "chatprobe_connections_total", result="auth_failed") == 1
            assert sample(metrics, "chatprobe_chats_in_flight") == 0
            assert sum(sample(metrics, "chatprobe_chats_total", outcome=o)
                       for o in ("passed", "failed", "incomplete", "error")) == 0
            assert sample(metrics, "chatprobe_client_rejections_total") == 0
    finally:
        await sim.stop()
