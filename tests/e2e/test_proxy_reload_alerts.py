"""Real users reloading the page mid-chat behind `chatprobe proxy`, with a real Prometheus loading the shipped rules
(windows shortened tenfold, tests/e2e/rules.py): each user's browser closes its socket mid-run (a reload; half with a
closing handshake, half dropped), opens a new one with the same token and resumes the run (netra's `resume` with
`run_id` and `last_seq`). Nothing crossed between users, so the critical ChatEventIsolationBreach must stay silent,
while the chats are counted once each (abandoned at the reload).

FAILED on the code before the LeftRuns patch: every event the server replayed or sent on after a resume was an R8 of
the new connection (8 a reload), and ChatEventIsolationBreach fired (critical) at its first evaluation.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect

from .conftest import chatprobe_bin, scrape, start_on_free_port, start_prometheus, value, wait_for
from .rules import write_shortened_rules

pytestmark = [pytest.mark.e2e]
FACTOR = 10
USERS = 12


def query(prom: str, expr: str) -> list[dict]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


async def leave(url: str, token: str, n: int) -> tuple[str, int]:
    """One user's chat: sent, a few events read, and the page reloaded → (its run id, the last seq the user had)."""
    async with asyncio.timeout(20):
        ws = await connect(url, additional_headers={"Authorization": f"Bearer {token}"})
        await ws.recv()  # the welcome
        await ws.send(json.dumps({"type": "user_message", "payload": {
            "content": "Explain tides #think=0.2 #tools=2", "thread_id": f"t-{n}", "message_id": f"m-{n}"}}))
        while "seq" not in (frame := json.loads(await ws.recv())) or frame["seq"] < 2:
            pass
        if n % 2:
            await ws.close(1001)  # the browser's unload: a closing handshake
        else:
            ws.transport.abort()  # a socket dropped with the page
        return frame["run_id"], frame["seq"]


async def resume(url: str, token: str, run_id: str, last_seq: int) -> None:
    """The reloaded page resumes the run on a new connection and reads it to its end."""
    async with asyncio.timeout(20), connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "resume", "payload": {"run_id": run_id, "last_seq": last_seq}}))
        while json.loads(await ws.recv())["type"] != "agent_completed":
            pass


@pytest.mark.timeout(150)
def test_users_reloading_mid_chat_page_no_isolation_breach(procs, agentsim, tmp_path):
    _, sim_url, env = agentsim(think="0.05", tool_latency="0.01")
    secret = env["E2E_JWT_SECRET"]
    proc, port = start_on_free_port(procs, "proxy", lambda p: [
        chatprobe_bin(), "proxy", "--upstream", sim_url.rsplit("/", 1)[0], "--listen", "127.0.0.1:0",
        "--metrics-listen", f"127.0.0.1:{p}", "--target-name", "reload", "--settle", "0.05s"])
    url = proc.wait_for_line(r"chatprobe proxy listening on (ws://\S+)").group(1) + "/ws"
    metrics = f"127.0.0.1:{port}"
    _, prom = start_prometheus(procs, [metrics], write_shortened_rules(tmp_path / "rules.yml", FACTOR))
    started = time.time()
    now = int(started)
    tokens = [jwt.encode({"sub": f"user-{n}", "iat": now, "exp": now + 600}, secret, algorithm="HS256")
              for n in range(USERS)]

    left = asyncio.run(_all(leave(url, tokens[n], n) for n in range(USERS)))
    # The proxy has seen every page go (each chat judged as its user left it) before the reloaded pages resume.
    wait_for(lambda: value(scrape(f"http://{metrics}/metrics"), "chatprobe_chats_abandoned_total") == USERS, 20,
             "the proxy counts each chat its user left")
    asyncio.run(_all(resume(url, tokens[n], *left[n]) for n in range(USERS)))
    seen = scrape(f"http://{metrics}/metrics")
    # Each chat counted once, as its user left it at the reload; none in flight, no second chat for the resume.
    assert value(seen, "chatprobe_chats_total") == value(seen, "chatprobe_chats_abandoned_total") == USERS
    assert value(seen, "chatprobe_chats_in_flight") == 0
    # Prometheus has those counts, and the rules were evaluated on them.
    stamp = wait_for(lambda: [float(s["value"][0]) for s in query(
        prom, f'sum(chatprobe_chats_abandoned_total{{target="reload"}}) == {USERS}')], 30,
        "Prometheus scraped the final counts")[0]

    def evaluated_since() -> bool:
        groups = httpx.get(f"{prom}/api/v1/rules", timeout=5).json()["data"]["groups"]
        from datetime import datetime
        return all(datetime.fromisoformat(g["lastEvaluation"].replace("Z", "+00:00")).timestamp() > stamp + 1
                   for g in groups)

    wait_for(evaluated_since, 30, "every rule group evaluated after that scrape")
    window = f"{int(time.time() - started) + 5}s"
    r8 = query(prom, f'chatprobe_rule_violations_total{{rule="R8"}}[{window}]')
    assert all(float(v) == 0 for s in r8 for _, v in s["values"]), r8
    assert not query(prom, f'ALERTS{{alertname="ChatEventIsolationBreach"}}[{window}]')
    assert value(scrape(f"http://{metrics}/metrics"), "chatprobe_rule_violations_total") == 0


async def _all(coros: Any) -> list[Any]:
    return list(await asyncio.gather(*coros))
