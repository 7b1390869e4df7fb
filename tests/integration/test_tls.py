"""wss:// with a custom CA on the client side: verified with --ca-file, refused without it, classified."""
from __future__ import annotations

import json
import ssl

import trustme
from websockets.asyncio.server import serve

from harness.events import Outcome
from harness.profiles import load_profile
from harness.runner import run_scenario
from harness.scenario import Scenario
from harness.targets import Target

ROLES = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"]


async def handler(ws):
    await ws.send(json.dumps({"type": "connection_established", "data": {"user_id": "u"}}))
    msg = json.loads(await ws.recv())
    mid = msg["payload"]["message_id"]
    for i, kind in enumerate(ROLES, start=1):
        await ws.send(json.dumps({"type": kind, "run_id": "r1", "seq": i,
                                  "payload": {"message_id": mid, "tool_call_id": "c"}}))
    await ws.wait_closed()


async def run_tls(tmp_path, **target_kw):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    sc = Scenario.model_validate({"name": "tls", "connect_timeout": "3s",
                                  "expect": {"deadline": "3s", "settle": "0.05s"}})
    async with serve(handler, "127.0.0.1", 0, ssl=server_ctx) as server:
        port = server.sockets[0].getsockname()[1]
        kw = {k: (str(ca_file) if v == "CA" else v) for k, v in target_kw.items()}
        target = Target(url=f"wss://127.0.0.1:{port}/ws", profile=load_profile("netra"), name="tls", **kw)
        return await run_scenario(sc, target)


async def test_wss_with_custom_ca_file_passes(tmp_path):
    run = await run_tls(tmp_path, ca_file="CA")
    assert [r.outcome for r in run.results] == [Outcome.PASSED], run.results[0].violations


async def test_wss_with_an_unknown_ca_is_a_tls_error(tmp_path):
    run = await run_tls(tmp_path)
    (r,) = run.results
    assert r.outcome is Outcome.ERROR and r.error_kind == "tls_error"
    assert run.unreachable


async def test_wss_insecure_skips_verification(tmp_path):
    run = await run_tls(tmp_path, insecure=True)
    assert run.results[0].outcome is Outcome.PASSED
