"""Defects where one piece of traffic was judged two ways (live and offline, one client and the other) or twice. Each
test failed on the code before its fix; every server is raw, on 127.0.0.1, every wait bounded (asyncio.timeout, the
scenario's deadlines).

- a late answer to a `send_raw:` probe judged already was taken by the next chat as its rejection
- SSE stamped each event of one socket read with a time of its own, so `check` of the recording judged a chat
  rejected in a read before the rest of that read, where the live client took it in
- a reconnect to resume that failed read "reconnecting failed" live, "no resume of the run was recorded" offline
- a seq of 0 or -1 in place of 1 was two R7s (the bad seq, and seq 1 "never arrived")
- a ping with a non-minimal 64-bit length was an R12 on the picows client, answered by the websockets client
"""
from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from harness.events import Outcome
from harness.offline import check_files
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.runner import run_scenario
from harness.sinks import Sink
from harness.targets import Target

from .conftest import scenario
from .hostile_ws import WELCOME, Raw, frame, read_frame, read_until_gone, run_frames, upgrade
from .hostile_ws import raw as raw_server

INVALID = json.dumps({"type": "error_message", "error_code": "INVALID_MESSAGE", "error_message": "bad frame"}).encode()


def seen(results) -> list[tuple]:
    return [(r.run_id, r.outcome, r.error_kind, r.note, sorted(r.rule_counts().items()), r.reconnects) for r in results]


class Reconnects(Sink):
    """Counts the reconnects a driver reports (chatprobe_reconnects_total's source), by result."""

    def __init__(self) -> None:
        self.counted: Counter[str] = Counter()

    def reconnect(self, scenario: str, result: str) -> None:
        self.counted[result] += 1


async def live_then_check(server: Raw, sc, tmp_path: Path, *, live_sink: Sink | None = None,
                          offline_sink: Sink | None = None):
    target = Target(url=server.url, profile=load_profile("netra"), name="raw", recorder=Recorder(tmp_path / "rec"))
    async with asyncio.timeout(20):  # a hang fails the test
        live = await run_scenario(sc, target, live_sink)
    [offline] = check_files([tmp_path / "rec"], target.profile, sc, sink=offline_sink)
    return live, offline


# 1. The probe's late answer. The server ignores the probe past its deadline (the probe fails: R13, no answer), then,
# as servers answer in order, its error_message comes in front of the next chat's run. It is the probe's answer, come
# late: the chat that follows passes (it was charged that error as its rejection: an `error`, "rejected").
async def late_probe_answer(reader, writer, head: bytes, srv) -> None:
    writer.write(upgrade(head) + frame(1, WELCOME))
    await writer.drain()
    await read_frame(reader)  # the probe: not answered yet
    _, data = await read_frame(reader)  # the chat's message, once the probe was judged
    message_id = json.loads(data)["payload"]["message_id"]
    writer.write(frame(1, INVALID))  # the probe's answer, late
    await writer.drain()
    for f in run_frames(message_id):
        writer.write(frame(1, f))
        await writer.drain()
    await read_until_gone(reader)


async def probe_then_chat(serve, tmp_path):
    """A `send_raw` probe, then a chat, against `serve`, live and through `check` of the recording (the roads agree);
    the probe's and the chat's results, live."""
    sc = scenario(name="raw", users=1, connect_timeout="1s", reconnect=False,
                  steps=[{"send_raw": "this is not json"}, {"chat": {"message": "hi"}}],
                  expect={"deadline": "0.5s", "first_event_limit": "0.5s", "settle": "0.05s"})
    async with raw_server(serve) as server:
        live, offline = await live_then_check(server, sc, tmp_path)
    assert seen(offline.results) == seen(live.results)
    return live.results


async def test_a_probes_late_answer_is_not_the_next_chats_rejection(tmp_path):
    probe, chat = await probe_then_chat(late_probe_answer, tmp_path)
    assert probe.outcome is Outcome.FAILED and set(probe.rule_counts()) == {"R13"}, probe
    assert chat.outcome is Outcome.PASSED and chat.error_kind is None, (chat.outcome, chat.error, chat.violations)


# 1b. The same, but the error names the chat's message: it answers that message, not the probe's (a server may say which
# message it refuses, docs/protocol.md): the chat is rejected, the probe's verdict stands.
async def late_probe_then_named_refusal(reader, writer, head: bytes, srv) -> None:
    writer.write(upgrade(head) + frame(1, WELCOME))
    await writer.drain()
    await read_frame(reader)  # the probe: never answered
    _, data = await read_frame(reader)
    refusal = json.loads(INVALID)
    refusal["message_id"] = json.loads(data)["payload"]["message_id"]
    writer.write(frame(1, json.dumps(refusal).encode()))
    await writer.drain()
    await read_until_gone(reader)


async def test_a_refusal_naming_the_chats_message_is_the_chats_even_while_a_probe_owes_its_answer(tmp_path):
    probe, chat = await probe_then_chat(late_probe_then_named_refusal, tmp_path)
    assert probe.outcome is Outcome.FAILED and set(probe.rule_counts()) == {"R13"}, probe
    assert chat.outcome is Outcome.ERROR and chat.error_kind == "rejected", (chat.outcome, chat.error_kind, chat.note)


# 4. A seq of 0 or -1 where the run's first seq belongs: one R7 naming what was sent, not a second one for seq 1
# "never arrived" (the event that should have carried it is there: its seq was no usable one).
@pytest.mark.parametrize("bad", [0, -1])
async def test_a_seq_below_the_first_is_one_r7(tmp_path, bad):
    async def handler(reader, writer, head: bytes, srv) -> None:
        writer.write(upgrade(head) + frame(1, WELCOME))
        await writer.drain()
        _, data = await read_frame(reader)
        frames = [json.loads(f) for f in run_frames(json.loads(data)["payload"]["message_id"])]
        frames[0]["seq"] = bad
        for f in frames:
            writer.write(frame(1, json.dumps(f).encode()))
        await writer.drain()
        await read_until_gone(reader)

    sc = scenario(name="raw", users=1, chats_per_user=1, connect_timeout="1s", reconnect=False, message="hi",
                  expect={"deadline": "2s", "settle": "0.05s"})
    async with raw_server(handler) as server:
        live, offline = await live_then_check(server, sc, tmp_path)
    [chat] = live.results
    r7 = [v.reason for v in chat.violations if v.rule == "R7"]
    assert r7 == [f"seq {bad} is not a positive sequence number"], chat.violations
    assert seen(offline.results) == seen(live.results)


# 2. SSE, one read: an error_message rejecting the chat's message and, in the same write (one socket read for the
# client), a run naming that message. Live, the client routes the whole read before the chat's turn comes: the chat
# takes the run's id and events in. The recording stamped each event with a time of its own, so `check` judged the
# chat at the error's time, before the run's first event: rejected with no run id, the run's events after its verdict.
def _netra_over_sse():
    from harness.profiles import Profile

    netra = load_profile("netra")
    return Profile.model_validate({**netra.model_dump(), "name": "netra-sse", "transport": "sse", "path": ""})


async def _sse_rejects_then_runs(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        message_id = json.loads(await reader.readexactly(length))["payload"]["message_id"]
        body = b"".join(b"data: " + f + b"\n\n" for f in [INVALID, *run_frames(message_id)])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
                     b"Connection: close\r\n\r\n" + body)  # one write: one read for the client
        await writer.drain()
    finally:
        writer.close()


async def test_sse_events_of_one_read_are_judged_offline_as_live(tmp_path):
    srv = await asyncio.start_server(_sse_rejects_then_runs, "127.0.0.1", 0)
    sc = scenario(name="raw", users=1, chats_per_user=1, connect_timeout="1s", reconnect=False, message="hi",
                  expect={"deadline": "2s", "settle": "0.05s"})
    async with srv:
        port = srv.sockets[0].getsockname()[1]
        target = Target(url=f"http://127.0.0.1:{port}/chat", profile=_netra_over_sse(), name="raw-sse",
                        recorder=Recorder(tmp_path / "rec"))
        async with asyncio.timeout(20):
            live = await run_scenario(sc, target)
    [offline] = check_files([tmp_path / "rec"], target.profile, sc)
    assert [(r.run_id, r.outcome, r.error_kind) for r in live.results] == [("r1", Outcome.ERROR, "rejected")]
    assert seen(offline.results) == seen(live.results)
    assert not offline.warnings, offline.warnings


# 5. A frame whose payload length is not in the minimal number of bytes (RFC 6455 5.2: it MUST be): a ping of 4 bytes
# with a 64-bit length, a text frame of 2 bytes with a 16-bit one. picows failed the connection (1002, an R12),
# websockets (`compression: deflate` picks it) and the Locust user's client read the frame and answered the ping: the
# same server passed on one client and failed on the other. Now all three fail it alike (the proxy's upstream too:
# tests/monitors/test_proxy.py reads the same BROKEN_FRAMES).
@pytest.mark.parametrize("broken", ["ping-length-in-64-bits", "text-length-in-16-bits"])
@pytest.mark.parametrize("client", ["picows", "websockets", "locust"])
async def test_a_length_not_in_the_minimal_bytes_is_the_same_r12_on_every_client(tmp_path, client, broken):
    from .hostile_ws import BROKEN_FRAMES, breaks_framing
    from .test_gevent_hostile import locust_chat

    written, detail = BROKEN_FRAMES[broken]
    async with raw_server(breaks_framing(written)) as server:
        if client == "locust":
            chat, _ = await locust_chat(tmp_path, server.url, within=60)
            got = (chat["outcome"], [(v["rule"], v["reason"]) for v in chat["violations"]], chat["events_received"])
        else:
            sc = scenario(name="raw", users=1, chats_per_user=1, connect_timeout="1s", reconnect=False, message="hi",
                          compression="deflate" if client == "websockets" else "none",
                          expect={"deadline": "2s", "settle": "0.05s"})
            target = Target(url=server.url, profile=load_profile("netra"), name="raw")
            async with asyncio.timeout(20):
                [result] = (await run_scenario(sc, target)).results
            got = (result.outcome.value, [(v.rule.value, v.reason) for v in result.violations], result.events_received)
    assert got == ("incomplete", [("R12", f"malformed frame: {detail}")], 1), got


# 3. A reconnect to resume that fails: the server cut the connection mid-run and refuses the next one. Live the chat
# ends there, "connection lost mid-run and reconnecting failed"; `check` of the recording, which holds that failed
# reconnect (a close record with "resume": true), kept the chat for a resume until its deadline and said "no resume of
# the run was recorded": one event, two reasons.
async def cuts_then_refuses(reader, writer, head: bytes, srv: Raw) -> None:
    writer.write(upgrade(head) + frame(1, WELCOME))
    await writer.drain()
    _, data = await read_frame(reader)
    first, second, *_ = run_frames(json.loads(data)["payload"]["message_id"])
    writer.write(frame(1, first) + frame(1, second))
    await writer.drain()
    assert srv.server is not None
    srv.server.close()  # nothing listens any more: the reconnect is refused
    writer.transport.abort()  # no close frame: a lost connection


@pytest.mark.parametrize("compression", ["none", "deflate"], ids=["picows", "websockets"])
async def test_a_failed_reconnect_to_resume_reads_the_same_live_and_offline(tmp_path, compression):
    sc = scenario(name="raw", users=1, chats_per_user=1, connect_timeout="1s", reconnect=True, max_reconnects=1,
                  message="hi", compression=compression, expect={"deadline": "3s", "settle": "0.05s"})
    live_sink, offline_sink = Reconnects(), Reconnects()
    async with raw_server(cuts_then_refuses) as server:
        live, offline = await live_then_check(server, sc, tmp_path, live_sink=live_sink, offline_sink=offline_sink)
    [chat] = live.results
    assert (chat.outcome, chat.note) == (Outcome.INCOMPLETE, "connection lost mid-run and reconnecting failed"), chat
    assert seen(offline.results) == seen(live.results)
    assert offline_sink.counted == live_sink.counted == Counter(lost=1)
