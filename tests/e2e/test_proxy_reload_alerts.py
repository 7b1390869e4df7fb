"""Real users reloading the page mid-chat behind `chatprobe proxy`, and resuming their chats on the next proxy process
after a deploy of the proxy, with a real Prometheus loading the shipped rules
(windows shortened tenfold, tests/e2e/rules.py): each user's browser closes its socket mid-run (a reload; half with a
closing handshake, half dropped), opens a new one with the same token and resumes the run (netra's `resume` with
`run_id` and `last_seq`). Nothing crossed between users, so the critical ChatEventIsolationBreach must stay silent,
while the chats are counted once each (abandoned at the reload).

FAILED on the code before the LeftRuns patch: every event the server replayed or sent on after a resume was an R8 of
the new connection (8 a reload), and ChatEventIsolationBreach fired (critical) at its first evaluation.
FAILED on the code before LiveChats.inherited: test_users_resuming_on_the_next_proxy_after_a_deploy_page_nothing:
the new process had never seen the runs its users' browsers resumed after the old one closed them (1001) at its
SIGTERM: every replayed event an R8, and ChatEventIsolationBreach fired on a deploy of the proxy.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .conftest import chatprobe_bin, query, scrape, start_on_free_port, start_prometheus, value, wait_for
from .rules import write_shortened_rules

pytestmark = [pytest.mark.e2e]
FACTOR = 10
USERS = 12


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
    _, url, metrics = start_proxy(procs, "proxy", sim_url)
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
    done = time.time()
    seen = scrape(f"http://{metrics}/metrics")
    # Each chat counted once, as its user left it at the reload; none in flight, no second chat for the resume.
    assert value(seen, "chatprobe_chats_total") == value(seen, "chatprobe_chats_abandoned_total") == USERS
    assert value(seen, "chatprobe_chats_in_flight") == 0
    stamp = scraped_after(prom, metrics, done)
    no_breach(prom, stamp, started)
    assert value(scrape(f"http://{metrics}/metrics"), "chatprobe_rule_violations_total") == 0


def start_proxy(procs: Any, name: str, sim_url: str, *extra: str) -> tuple[Any, str, str]:
    """`chatprobe proxy` (target label `reload`) → (its Proc, its ws URL for users, its /metrics host:port)."""
    proc, port = start_on_free_port(procs, name, lambda p: [
        chatprobe_bin(), "proxy", "--upstream", sim_url.rsplit("/", 1)[0], "--listen", "127.0.0.1:0",
        "--metrics-listen", f"127.0.0.1:{p}", "--target-name", "reload", "--settle", "0.05s", *extra])
    return proc, proc.wait_for_line(r"chatprobe proxy listening on (ws://\S+)").group(1) + "/ws", f"127.0.0.1:{port}"


def scraped_after(prom: str, instance: str, after: float) -> float:
    """The time of a scrape of `instance` that Prometheus made after `after` (wall clock), once it made one."""
    return wait_for(lambda: [float(s["value"][1]) for s in query(
        prom, f'timestamp(chatprobe_proxy_connections{{instance="{instance}"}}) > {after}')], 30,
        f"Prometheus scraped {instance} after the resumes")[0]


def no_breach(prom: str, stamp: float, started: float) -> None:
    """Once every rule group was evaluated after the scrape at `stamp`: no R8 counted since `started`, and
    ChatEventIsolationBreach never pending or firing."""
    from datetime import datetime

    def evaluated_since() -> bool:
        groups = httpx.get(f"{prom}/api/v1/rules", timeout=5).json()["data"]["groups"]
        return all(datetime.fromisoformat(g["lastEvaluation"].replace("Z", "+00:00")).timestamp() > stamp + 1
                   for g in groups)

    wait_for(evaluated_since, 30, "every rule group evaluated after that scrape")
    window = f"{int(time.time() - started) + 5}s"
    r8 = query(prom, f'chatprobe_rule_violations_total{{rule="R8"}}[{window}]')
    assert all(float(v) == 0 for s in r8 for _, v in s["values"]), r8
    assert not query(prom, f'ALERTS{{alertname="ChatEventIsolationBreach"}}[{window}]')


@pytest.mark.timeout(150)
def test_users_resuming_on_the_next_proxy_after_a_deploy_page_nothing(procs, agentsim, tmp_path):
    """The proxy is deployed anew mid-chat, with no drain (`--drain-timeout 0`: an orchestrator's grace too short for
    one): SIGTERM closes its users' sockets (1001), their browsers reconnect to the next process and resume their runs.
    The old process counted those chats unjudged (proxy_stopped); the new one judges none of them again and reads none
    of their events as another user's."""
    _, sim_url, env = agentsim(think="0.05", tool_latency="0.01")
    secret = env["E2E_JWT_SECRET"]
    old, url, old_metrics = start_proxy(procs, "proxy-old", sim_url, "--drain-timeout", "0")
    new, new_url, new_metrics = start_proxy(procs, "proxy-new", sim_url)  # the next process, behind the same name
    _, prom = start_prometheus(procs, [old_metrics, new_metrics], write_shortened_rules(tmp_path / "rules.yml", FACTOR))
    started = time.time()
    now = int(started)
    tokens = [jwt.encode({"sub": f"user-{n}", "iat": now, "exp": now + 600}, secret, algorithm="HS256")
              for n in range(USERS)]

    async def mid_chat(n: int) -> tuple[Any, str, int]:
        ws = await connect(url, additional_headers={"Authorization": f"Bearer {tokens[n]}"})
        await ws.recv()
        await ws.send(json.dumps({"type": "user_message", "payload": {
            "content": "Explain tides #think=0.3 #tools=2", "thread_id": f"t-{n}", "message_id": f"m-{n}"}}))
        while "seq" not in (frame := json.loads(await ws.recv())) or frame["seq"] < 2:
            pass
        return ws, frame["run_id"], frame["seq"]

    async def deploy() -> list[tuple[str, int]]:
        async with asyncio.timeout(30):
            chats = await _all(mid_chat(n) for n in range(USERS))
            old.popen.send_signal(signal.SIGTERM)  # the deploy: the old process closes every socket (1001)
            for ws, _, _ in chats:
                with contextlib.suppress(ConnectionClosed):
                    async for _ in ws:
                        pass
                assert ws.close_code == 1001
            return [(run, seq) for _, run, seq in chats]

    left = asyncio.run(deploy())
    assert old.popen.wait(20) == 0
    assert f"stopping: {USERS} chat(s)" in old.err()
    asyncio.run(_all(resume(new_url, tokens[n], *left[n]) for n in range(USERS)))
    done = time.time()
    seen = scrape(f"http://{new_metrics}/metrics")
    assert value(seen, "chatprobe_chats_total") == 0 and value(seen, "chatprobe_chats_in_flight") == 0
    stamp = scraped_after(prom, new_metrics, done)
    no_breach(prom, stamp, started)
    assert value(scrape(f"http://{new_metrics}/metrics"), "chatprobe_rule_violations_total") == 0


async def _all(coros: Any) -> list[Any]:
    return list(await asyncio.gather(*coros))
