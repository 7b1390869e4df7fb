"""A server that sends a frame over the size limit right behind its welcome (in the same write): the client closes
the connection (1009) before its chat's message leaves, and the chat's message is sent again on a new connection.
The R12 of that frame was the chat's (told while it waited to send), and stayed in the verdict of the message sent
again (a chat the second connection served in full failed), or was lost with a chat that failed to send at all (no
violation anywhere for a server that sent an oversized frame). `chatprobe check` of the same run's recording, which
has no send on that connection (nothing left), judges the R12 the connection's own. Now live does too: the message
never reached the server, so what came on that connection is the connection's own violation.

A raw WebSocket server on 127.0.0.1 (tests/integration/hostile_ws.py), the run in-process with `--record`, and
`chatprobe check` of its recording.
"""
from __future__ import annotations

import asyncio
import struct
from collections import Counter
from pathlib import Path

from harness.offline import check_files
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.runner import run_scenario
from harness.scenario import load_scenario
from harness.targets import Target, TokenProvider

from .hostile_ws import (
    TOKEN,
    WELCOME,
    Raw,
    Reader,
    Writer,
    frame,
    raw,
    read_until_gone,
    run_frames,
    upgrade,
    welcome_and_message,
)

# A text frame's header announcing 2**63 - 1 bytes: over any limit, refused from its header (close 1009).
OVERSIZED = bytes([0x81, 127]) + struct.pack("!Q", 2**63 - 1)
LIMIT = "frame larger than the 4194304 byte limit"


def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "one.yaml"
    path.write_text("name: one\nusers: 1\nchats_per_user: 1\ncompression: none\nmax_reconnect_attempts: 2\n"
                    "expect: {first_event_limit: 5s, deadline: 10s, settle: 0.05s}\n")
    return path


async def oversized_first(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
    """The first connection: the welcome and the oversized frame's header in one write (so the client reads both
    before its message can leave); every later one answers the chat's message with a valid run."""
    if len(srv.requests) == 1:
        writer.write(upgrade(head) + frame(1, WELCOME) + OVERSIZED)
        await writer.drain()
        await read_until_gone(reader)
        return
    writer.write(upgrade(head))
    message_id = await welcome_and_message(reader, writer)
    writer.write(b"".join(frame(1, f) for f in run_frames(message_id)))
    await writer.drain()
    await read_until_gone(reader)


async def oversized_always(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
    writer.write(upgrade(head) + frame(1, WELCOME) + OVERSIZED)
    await writer.drain()
    await read_until_gone(reader)


async def run_and_check(tmp_path: Path, handler) -> tuple:  # type: ignore[no-untyped-def]
    sc = load_scenario(str(scenario(tmp_path)))
    async with raw(handler) as srv:
        target = Target(url=srv.url, profile=load_profile("netra"), name="t", tokens=TokenProvider(TOKEN),
                        recorder=Recorder(tmp_path / "rec"))
        live = await asyncio.wait_for(run_scenario(sc, target), 60)
    [checked] = check_files([tmp_path / "rec"], target.profile, sc)
    return live, checked


def verdicts(run) -> list[tuple[str, list[str]]]:  # type: ignore[no-untyped-def]
    return [(c.outcome.value, [v.rule.value for v in c.violations]) for c in run.results]


def own(run) -> Counter:  # type: ignore[no-untyped-def]
    return Counter({rule: n for rule, n in run.stats.connection_violations.items() if n})


async def test_an_oversized_frame_before_the_message_left_is_the_connections_not_the_chat_sent_again(tmp_path):
    live, checked = await run_and_check(tmp_path, oversized_first)
    assert verdicts(live) == [("passed", [])], verdicts(live)
    assert own(live) == Counter({"R12": 1}), live.stats.connection_violations
    assert any(LIMIT in v.reason for v in live.connection_violations), live.connection_violations
    assert verdicts(checked) == verdicts(live), (verdicts(checked), verdicts(live))
    assert own(checked) == own(live), (checked.stats.connection_violations, live.stats.connection_violations)


async def test_an_oversized_frame_on_every_connection_is_counted_though_no_message_ever_left(tmp_path):
    """The message found each connection closed: the chat is an `error` (send_failed), and each connection's
    oversized frame is its own R12, as `check` counts them (the chat itself is in no record: nothing was sent)."""
    live, checked = await run_and_check(tmp_path, oversized_always)
    assert [(c.outcome.value, c.error_kind) for c in live.results] == [("error", "send_failed")]
    assert own(live) == Counter({"R12": 2}), live.stats.connection_violations
    assert own(checked) == own(live), (checked.stats.connection_violations, live.stats.connection_violations)
