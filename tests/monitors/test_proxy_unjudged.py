"""Chats `chatprobe proxy` could not judge: a chat the proxy stops with (SIGTERM: a deploy, a restart), in flight on an
open connection or parked for its user's resume after the server dropped its connection, and a chat the server cut
that the proxy's parking bounds had no room for. Nothing shows the server failed them: they are counted in
`chatprobe_chats_unjudged_total{reason}` (proxy_stopped, parking_full), never as an outcome, so they neither add to
the missing-events page's ratio nor dilute it, and `chatprobe check` of the proxy's recording classifies them alike.

Real processes over real sockets on 127.0.0.1: agentsim, `chatprobe proxy` in front of it, WebSocket clients that
send a chat and lose their connection mid-run (the server drops it: agentsim's `close:abort` fault) or hold it while
the proxy stops. What the proxy says is read from its /metrics, its stderr and its `--record` recording.

FAILED on the code before the change:
- test_a_chat_in_flight_when_the_proxy_stops_is_unjudged_not_abandoned: counted `passed` and abandoned (as if the
  user had closed the tab), and `check` of the recording (`"by": "client"`) judged it so too;
- test_chats_past_the_parking_bound_and_parked_at_the_stop_are_unjudged_live_and_in_check: the 65th chat the server
  cut (one anonymous identity, 64 parked places) was counted `incomplete` with its roles missing, at once; the 64
  parked ones were judged `incomplete` as the proxy stopped (into a registry no scrape read any more), and `check`
  judged all 65 `incomplete`.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal

import websockets
from websockets.asyncio.client import connect

from harness.events import Outcome
from harness.offline import check_files
from harness.profiles import load_profile
from monitors.proxy import MAX_PARKED_EACH

from .procs import ProxyProc, agentsim_process, proxy_process

MESSAGE = "What is 3 * 4? #tools=1"


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def outcomes(samples: dict) -> dict[str, float]:
    return {o.value: value(samples, "chatprobe_chats_total", outcome=o.value) for o in Outcome}


def unjudged(samples: dict) -> dict[str, float]:
    return {r: value(samples, "chatprobe_chats_unjudged_total", reason=r) for r in ("proxy_stopped", "parking_full")}


async def poll(p: ProxyProc, done, timeout: float = 30.0) -> dict:
    """/metrics read until `done(samples)` holds, or until the proxy no longer answers (the last answer read)."""
    last: dict = {}
    async with asyncio.timeout(timeout):
        while (samples := await p.scrape()) is not None:
            last = samples
            if done(samples):
                break
            await asyncio.sleep(0.02)  # wait-ok: poll interval of a condition wait bounded by the timeout
    return last


async def hold_the_shutdown(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client of the proxy that completes its handshake and then reads nothing and answers no close: as
    the proxy stops it waits its close timeout (2 s) for this one, which keeps /metrics served while the other
    connections' chats are counted. (What is counted does not depend on it: it only keeps the counts readable.)"""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /ws?user=holder HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def test_a_chat_in_flight_when_the_proxy_stops_is_unjudged_not_abandoned(tmp_path):
    """A user's chat is streaming (its first event came, the agent thinks for 30 s) when the proxy is stopped: the
    proxy cuts the connection, not the user and not the server. Not judged: counted proxy_stopped, in no outcome and
    not abandoned, and so in no ratio; `check` of the recording classifies it alike."""
    rec = tmp_path / "rec"
    async with agentsim_process("--think", "30") as sim, proxy_process(
            sim, tmp_path, "--record", str(rec), "--record-all", "--deadline", "60s", metrics=True, stop=False) as p:
        async with asyncio.timeout(60):
            ws = await connect(f"ws://127.0.0.1:{p.port}/ws?user=alice", ping_interval=None, close_timeout=2)
            assert json.loads(await ws.recv())["type"] == "connection_established"
            await ws.send(json.dumps({"type": "user_message", "payload": {
                "content": MESSAGE, "thread_id": "t-1", "message_id": "m-1"}}))
            assert json.loads(await ws.recv())["type"] == "agent_started"
            holder = await hold_the_shutdown(p.port)
            before = await poll(p, lambda s: value(s, "chatprobe_chats_in_flight") == 1)
            assert value(before, "chatprobe_chats_in_flight") == 1
            os.kill(p.proc.pid, signal.SIGTERM)
            with contextlib.suppress(websockets.ConnectionClosed):
                async for _ in ws:
                    pass
            assert ws.close_code == 1001  # the proxy going away, not the server
            last = await poll(p, lambda s: unjudged(s)["proxy_stopped"] == 1 or sum(outcomes(s).values()) > 0)
            assert await p.proc.wait() == 0, p.err.read_text()
            holder[1].close()
    assert unjudged(last) == {"proxy_stopped": 1, "parking_full": 0}, (unjudged(last), outcomes(last))
    assert sum(outcomes(last).values()) == 0 and value(last, "chatprobe_chats_abandoned_total") == 0
    assert value(last, "chatprobe_chats_in_flight") == 0 and value(last, "chatprobe_chats_missing_events_total") == 0
    err = p.err.read_text()
    assert "1 chat(s) it could not judge" in err and "proxy_stopped" in err, err
    # The recording says who ended the connection; `check` counts the chat as the proxy did.
    closes = [json.loads(line) for f in rec.glob("*.jsonl") for line in f.read_text().splitlines()
              if json.loads(line).get("dir") == "close"]
    assert {c.get("by") for c in closes} == {"proxy-stop"}, closes
    (run,) = check_files([rec], load_profile("netra"))
    assert (run.stats.chats, run.results) == (0, []), [(r.outcome, r.note) for r in run.results]
    assert dict(run.stats.unjudged) == {"proxy_stopped": 1}, run.stats.unjudged


async def test_chats_past_the_parking_bound_and_parked_at_the_stop_are_unjudged_live_and_in_check(tmp_path):
    """The server drops the connection of each of 65 anonymous users' chats mid-run (anonymous users are one identity
    to the proxy: 64 parked places). 64 are parked for a resume; the 65th finds no place: the proxy cannot follow it,
    so it is not judged (parking_full), where it was counted `incomplete` with its roles missing. Then the proxy
    stops with the 64 still parked: proxy_stopped. Counters add up (started = outcomes + in flight + client
    rejections + unjudged), no chat is held against the server, and `check` of the recording says the same."""
    rec = tmp_path / "rec"
    n = MAX_PARKED_EACH + 1
    # The cut comes after the run's first event and a think (50 ms) at least, so the run's id is known to the proxy
    # (a chat with no event is held for a resend instead: another bound, the next test's).
    async with agentsim_process("--think", "0.05", "--tool-latency", "0.01", "--fault", "close:abort=1.0") as sim, \
            proxy_process(sim, tmp_path, "--record", str(rec), "--deadline", "60s", metrics=True,
                          stop=False) as p:
        async with asyncio.timeout(120):

            async def chat(i: int) -> list[dict]:
                ws = await connect(f"ws://127.0.0.1:{p.port}/ws?user=u{i}", ping_interval=None, close_timeout=1)
                assert json.loads(await ws.recv())["type"] == "connection_established"
                await ws.send(json.dumps({"type": "user_message", "payload": {
                    "content": MESSAGE, "thread_id": f"t-{i}", "message_id": f"m-{i}"}}))
                got = []
                with contextlib.suppress(websockets.ConnectionClosed):
                    async for raw in ws:
                        got.append(json.loads(raw))
                return got

            for first in range(0, n, 13):
                for got in await asyncio.gather(*(chat(i) for i in range(first, min(n, first + 13)))):
                    # cut mid-run: its run started, its terminal event never came
                    assert got and got[0]["type"] == "agent_started" and got[-1]["type"] != "agent_completed", got

            def settled(s: dict) -> bool:
                return (value(s, "chatprobe_chats_in_flight") + sum(outcomes(s).values()) + sum(unjudged(s).values())
                        + value(s, "chatprobe_client_rejections_total") == n
                        and value(s, "chatprobe_chats_in_flight") <= MAX_PARKED_EACH)

            cut = await poll(p, settled)
            assert settled(cut), cut
            assert outcomes(cut) == {"passed": 0, "failed": 0, "incomplete": 0, "error": 0}, outcomes(cut)
            assert unjudged(cut) == {"proxy_stopped": 0, "parking_full": 1}, unjudged(cut)
            assert value(cut, "chatprobe_chats_in_flight") == MAX_PARKED_EACH  # parked, awaiting a resume
            assert value(cut, "chatprobe_chats_missing_events_total") == 0

            holder = await hold_the_shutdown(p.port)
            os.kill(p.proc.pid, signal.SIGTERM)
            last = await poll(p, lambda s: unjudged(s)["proxy_stopped"] >= MAX_PARKED_EACH)
            assert await p.proc.wait() == 0, p.err.read_text()
            holder[1].close()
    assert unjudged(last) == {"proxy_stopped": MAX_PARKED_EACH, "parking_full": 1}, (unjudged(last), outcomes(last))
    assert sum(outcomes(last).values()) == 0 and value(last, "chatprobe_chats_in_flight") == 0
    assert value(last, "chatprobe_chats_missing_events_total") == 0
    assert value(last, "chatprobe_reconnects_total", result="lost") == 0
    err = p.err.read_text()
    assert f"{MAX_PARKED_EACH} chat(s) it could not judge" in err, err
    # `check` of the recording (each cut connection's file, kept, and the proxy's stop): the same classification.
    (run,) = check_files([rec], load_profile("netra"))
    assert (run.stats.chats, run.results) == (0, []), [(r.outcome, r.note) for r in run.results][:3]
    assert dict(run.stats.unjudged) == {"proxy_stopped": MAX_PARKED_EACH, "parking_full": 1}, run.stats.unjudged


async def test_chats_cut_before_any_event_past_the_resend_bound_are_unjudged_live_and_in_check(tmp_path):
    """The server drops each connection right after the user's message, before any event of its run (no run id to
    resume): the proxy holds each chat for its user's client to send the message again, at most MAX_RESENDS_EACH per
    identity. The one past that bound is not judged (parking_full; it was counted `incomplete` at once), and those
    held when the proxy stops are not either (proxy_stopped; they were judged `incomplete`); `check` of the
    recording counts them alike. (The proxy in this process, its upstream a raw server, over real sockets.)"""
    from prometheus_client import CollectorRegistry
    from websockets.asyncio.server import serve

    from harness.checker import Expectations
    from harness.events import DEFAULT_REQUIRED
    from harness.recorder import Recorder
    from monitors.metrics import ChatMetrics, MetricsSink
    from monitors.proxy import MAX_RESENDS_EACH, LiveChats, Proxy, start_proxy

    async def cuts(ws):  # the welcome, the user's message read, then a reset: no event of the run
        await ws.send(json.dumps({"type": "connection_established", "data": {"user_id": "u"}}))
        await ws.recv()
        ws.transport.abort()

    labels = {"target": "up", "scenario": "live", "source": "live"}
    metrics = ChatMetrics(CollectorRegistry())
    exp = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=60.0)
    rec = tmp_path / "rec"
    live = LiveChats(load_profile("netra"), MetricsSink(metrics, "up", "live"), exp, "live", 0.1,
                     Recorder(rec, keep_all=False))
    n = MAX_RESENDS_EACH + 1

    def sample(name: str, **extra: str) -> float:
        return metrics.registry.get_sample_value(name, {**labels, **extra}) or 0.0

    up = await serve(cuts, "127.0.0.1", 0, ping_interval=None)
    server = await start_proxy(Proxy(f"ws://127.0.0.1:{up.sockets[0].getsockname()[1]}", live), "127.0.0.1", 0)
    try:
        async with asyncio.timeout(60):
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
            for i in range(n):
                ws = await connect(url, ping_interval=None, close_timeout=1)
                await ws.recv()  # the welcome
                await ws.send(json.dumps({"type": "user_message", "payload": {"content": "hi", "message_id": f"m{i}"}}))
                with contextlib.suppress(websockets.ConnectionClosed):
                    async for _ in ws:
                        pass
            while live.open or len(live.resends) + sample("chatprobe_chats_unjudged_total", reason="parking_full") < n:
                await asyncio.sleep(0.02)  # wait-ok: poll interval of a condition wait bounded by the timeout
    finally:
        server.close()
        await server.wait_closed()
        up.close()
    assert sample("chatprobe_chats_unjudged_total", reason="parking_full") == 1
    assert sample("chatprobe_chats_in_flight") == MAX_RESENDS_EACH and len(live.resends) == MAX_RESENDS_EACH
    assert sum(sample("chatprobe_chats_total", outcome=o.value) for o in Outcome) == 0
    live.stop()
    assert sample("chatprobe_chats_unjudged_total", reason="proxy_stopped") == MAX_RESENDS_EACH
    assert sample("chatprobe_chats_in_flight") == 0 and sample("chatprobe_chats_missing_events_total") == 0
    (run,) = check_files([rec], load_profile("netra"))
    assert (run.stats.chats, run.results) == (0, []), [(r.outcome, r.note) for r in run.results][:3]
    assert dict(run.stats.unjudged) == {"proxy_stopped": MAX_RESENDS_EACH, "parking_full": 1}, run.stats.unjudged
