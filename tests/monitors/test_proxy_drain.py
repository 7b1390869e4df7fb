"""`chatprobe proxy` on SIGTERM (a rolling deploy): it drains. Real processes over real sockets on 127.0.0.1: agentsim,
the proxy in front of it, WebSocket clients with a chat in flight, a long one, and none. Every wait has a deadline."""
from __future__ import annotations

import asyncio
import contextlib
import json
import signal

import pytest
import websockets
from websockets.asyncio.client import connect

from harness.offline import check_files
from harness.profiles import load_profile

from .procs import agentsim_process, proxy_process
from .test_proxy_unjudged import outcomes, poll, unjudged, value

DRAIN = 6.0  # the test's --drain-timeout


async def open_chat(port: int, user: str, content: str | None):
    ws = await connect(f"ws://127.0.0.1:{port}/ws?user={user}", ping_interval=None, close_timeout=2, open_timeout=10)
    assert json.loads(await ws.recv())["type"] == "connection_established"
    if content is not None:
        await ws.send(json.dumps({"type": "user_message", "payload": {
            "content": content, "thread_id": f"t-{user}", "message_id": f"m-{user}"}}))
        assert json.loads(await ws.recv())["type"] == "agent_started"
    return ws


async def until_closed(ws) -> list[str]:
    """The types of the events still to come, until the connection closes."""
    types = []
    with contextlib.suppress(websockets.ConnectionClosed):
        async for raw in ws:
            types.append(json.loads(raw)["type"])
    return types


async def test_sigterm_drains_chats_in_flight_closes_idle_connections_and_cuts_the_rest_at_the_deadline(tmp_path):
    """On SIGTERM the proxy accepts no new connection, closes an idle one at once with 1001 (going away: the client
    reconnects to another replica), lets a chat in flight run to its end (judged `passed`, as any other), then closes
    its connection with 1001, and closes a chat still running at --drain-timeout with 1001 (counted unjudged,
    proxy_stopped, as the docs say, not as the server's failure). `check` of the recording counts the same. FAILED on
    the code before: every connection was closed at the SIGTERM, the short chat with it (proxy_stopped, never judged)."""
    rec = tmp_path / "rec"
    async with agentsim_process() as sim, proxy_process(
            sim, tmp_path, "--drain-timeout", f"{DRAIN:g}s", "--record", str(rec), "--record-all", "--deadline", "60s",
            metrics=True, stop=False) as p:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(60):
            short = await open_chat(p.port, "short", "What is 3 * 4? #tools=1 #think=1.5")
            long = await open_chat(p.port, "long", "What is 3 * 4? #tools=1 #think=60")
            idle = await open_chat(p.port, "idle", None)
            await poll(p, lambda s: value(s, "chatprobe_chats_in_flight") == 2)
            stopped_at = loop.time()
            p.proc.send_signal(signal.SIGTERM)
            assert await until_closed(idle) == []
            assert idle.close_code == 1001 and loop.time() - stopped_at < DRAIN / 2, loop.time() - stopped_at
            with pytest.raises((OSError, websockets.InvalidStatus)):  # refused, or 503 while the listener closes
                await connect(f"ws://127.0.0.1:{p.port}/ws?user=late", open_timeout=5)
            rest = await until_closed(short)
            assert rest[-1] == "agent_completed" and short.close_code == 1001, (rest, short.close_code)
            assert loop.time() - stopped_at < DRAIN, loop.time() - stopped_at  # closed at its end, not the drain's
            judged = await poll(p, lambda s: outcomes(s)["passed"] == 1)
            assert outcomes(judged)["passed"] == 1 and unjudged(judged)["proxy_stopped"] == 0, judged
            assert "agent_completed" not in await until_closed(long)
            assert long.close_code == 1001 and loop.time() - stopped_at >= DRAIN - 0.5, loop.time() - stopped_at
            assert await p.proc.wait() == 0, p.err.read_text()
    assert {k: v for k, v in outcomes(judged).items() if v} == {"passed": 1}, outcomes(judged)
    assert value(judged, "chatprobe_chats_abandoned_total") == 0
    # The last counts may come after the last scrape (the process exits): it says them on stderr.
    err = p.err.read_text()
    assert "1 connection(s) still had a chat in flight at the end of the drain (--drain-timeout" in err, err
    assert "stopping: 1 chat(s) it could not judge" in err, err
    assert "Traceback" not in err
    (run,) = check_files([rec], load_profile("netra"))
    assert [r.outcome.value for r in run.results] == ["passed"], [(r.outcome, r.note) for r in run.results]
    assert dict(run.stats.unjudged) == {"proxy_stopped": 1}, run.stats.unjudged


async def test_a_second_sigterm_ends_the_drain_at_once(tmp_path):
    """An operator who signals again (a second Ctrl-C or SIGTERM) does not wait out the drain: the chat in flight is
    closed with 1001 then, counted proxy_stopped."""
    async with agentsim_process() as sim, proxy_process(sim, tmp_path, "--drain-timeout", "60s", metrics=True,
                                                         stop=False) as p:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(40):
            long = await open_chat(p.port, "long", "What is 3 * 4? #tools=1 #think=60")
            await poll(p, lambda s: value(s, "chatprobe_chats_in_flight") == 1)
            p.proc.send_signal(signal.SIGTERM)
            # Draining: the listener is closed (a new connection refused or answered 503) while the chat goes on.
            async def refused() -> bool:
                try:
                    await (await connect(f"ws://127.0.0.1:{p.port}/ws?user=late", open_timeout=5)).close()
                except (OSError, websockets.InvalidStatus):
                    return True
                return False
            while not await refused():
                await asyncio.sleep(0.02)  # wait-ok: poll interval of a condition wait bounded by the timeout
            second = loop.time()
            p.proc.send_signal(signal.SIGTERM)
            assert "agent_completed" not in await until_closed(long)
            assert long.close_code == 1001 and loop.time() - second < 10, loop.time() - second
            assert await p.proc.wait() == 0, p.err.read_text()
    # Said as it happened: the second signal ended the drain, not its --drain-timeout of 60 s.
    assert "1 connection(s) still had a chat in flight when a second signal ended the drain" in p.err.read_text()


async def test_verbose_says_each_connections_start_and_end_and_never_its_credentials(tmp_path):
    """`-v` promised a line at each connection's start and end: it logged none of its own. It names the peer, the
    user's pseudonym and who closed, never the token in the request's query."""
    token = "tok_" + "s3cr3t" * 6
    async with agentsim_process() as sim, proxy_process(sim, tmp_path, "-v") as p:
        async with asyncio.timeout(30):
            ws = await connect(f"ws://127.0.0.1:{p.port}/ws?user=verbose&access_token={token}", open_timeout=10)
            assert json.loads(await ws.recv())["type"] == "connection_established"
            await ws.close()
    err = p.err.read_text()
    assert "connection from 127.0.0.1 (user live-" in err and ") opened" in err, err
    assert "connection from 127.0.0.1 closed by client" in err, err
    assert token not in err and "access_token" not in err
