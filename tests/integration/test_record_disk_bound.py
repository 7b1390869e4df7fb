"""`--record`'s bound on bytes (Recorder.max_bytes) holds for what is on disk at any moment: the part files of the
connections still open count, not only the files kept. Many connections of one process write at once against a raw
netra server on a loopback port, the real client and the real recorder.

FAILED on the code before: the bound counted the files kept only, so N busy connections held N part files of up to
16 MiB each at once (here 16 connections wrote ~13 MiB of parts against a 2 MiB bound).
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from harness.events import Outcome
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.results import ScenarioRun
from harness.runner import run_scenario
from harness.scenario import Scenario
from harness.targets import Target

from .outside_servers import RawWsServer, WsConn
from .test_conforming_servers import USER, text

pytestmark = pytest.mark.timeout(120)

CONNECTIONS = 16
BIG = 100 * 1024  # each partial_result's text: a frame that fills a part file's buffer (64 KiB) on its own
BIG_FRAMES = 8  # per connection: ~800 KiB each, ~13 MiB for all of them
BOUND = 2 * 1024 * 1024


def on_disk(directory: Path) -> int:
    """The bytes of every file in the directory, the hidden part files of the connections still open included."""
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


class AllWriteThenFinish:
    """Each chat's run up to BIG_FRAMES big partial results, then a JSON ping: its pong means the client read, and
    recorded, everything before it. When every connection has answered, the bytes on disk are measured (every
    connection has written all it will before its end, and none has ended), and the runs end."""

    def __init__(self, directory: Path, big: int = BIG_FRAMES) -> None:
        self.directory = directory
        self.big = big
        self.pongs = 0
        self.everyone = asyncio.Event()
        self.peak: int | None = None
        self.files: int | None = None  # files on disk then

    async def handler(self, conn: WsConn) -> None:
        conn.writer.write(text({"type": "connection_established", "data": {"connection_id": "c", "user_id": USER}}))
        p: dict[str, Any] = {}
        while (raw := await conn.recv()) is not None:
            msg = json.loads(raw)
            if msg.get("type") == "user_message":
                p = msg["payload"]
                for seq, frame in enumerate(self.frames(p, self.big)[:-1], 1):
                    conn.writer.write(text({**frame, "seq": seq}))
                    await conn.writer.drain()
                conn.writer.write(text({"type": "ping"}))
            elif msg.get("type") == "pong":
                self.pongs += 1
                if self.pongs == CONNECTIONS:
                    self.peak = on_disk(self.directory)
                    self.files = sum(p.is_file() for p in self.directory.iterdir())
                    self.everyone.set()
                async with asyncio.timeout(30):
                    await self.everyone.wait()
                end = self.frames(p, self.big)[-1]
                conn.writer.write(text({**end, "seq": 4 + self.big + 1}))

    @staticmethod
    def frames(p: dict[str, Any], big: int) -> list[dict[str, Any]]:
        run = {"run_id": f"run-{p['message_id']}", "thread_id": p["thread_id"], "user_id": USER}
        call = {"tool_name": "calc", "tool_call_id": "c0"}
        steps: list[tuple[str, dict[str, Any]]] = [("agent_started", {"message_id": p["message_id"]}),
                                                   ("agent_thinking", {"thought": "t"}), ("tool_executing", call),
                                                   ("tool_completed", {**call, "result": 1})]
        steps += [("partial_result", {"content": "x" * BIG})] * big
        steps.append(("agent_completed", {"result": "ok"}))
        return [{"type": kind, **run, "payload": fields} for kind, fields in steps]


async def all_at_once(server_side: AllWriteThenFinish, recorder: Recorder) -> ScenarioRun:
    """CONNECTIONS users, one chat each, all at once, against the raw server side, recorded by `recorder`."""
    server = RawWsServer(server_side.handler)
    await server.start()
    sc = Scenario.model_validate({"name": "busy", "users": CONNECTIONS, "chats_per_user": 1, "ramp_up": "0s",
                                  "connect_timeout": "5s", "expect": {"deadline": "60s", "settle": "0.05s"}})
    try:
        async with asyncio.timeout(90):
            return await run_scenario(sc, Target(url=server.url, profile=load_profile("netra"), name="raw",
                                                 recorder=recorder))
    finally:
        assert server.server is not None
        server.server.close()


async def test_the_bound_holds_for_part_files_of_connections_writing_at_once(tmp_path):
    rec = tmp_path / "rec"
    recorder = Recorder(rec, max_bytes=BOUND)
    server_side = AllWriteThenFinish(rec)
    run = await all_at_once(server_side, recorder)
    assert server_side.peak is not None, "the connections never all wrote at once"
    assert server_side.peak <= BOUND, f"{server_side.peak:,} bytes on disk with every connection open"
    assert on_disk(rec) <= BOUND
    # Recording never fails a chat: every one passed; the frames that did not fit were counted, not written.
    assert [r.outcome for r in run.results] == [Outcome.PASSED] * CONNECTIONS, [
        str(v) for r in run.results for v in r.violations][:3]
    conns, frames, _ = recorder.take_dropped()
    assert conns > 0 and frames > 0



MAX_FILES = 4


async def test_the_file_bound_holds_for_part_files_of_connections_writing_at_once(tmp_path):
    """`max_files` (1,000 for --record) holds for what is on disk at any moment too, as max_bytes does: N open
    connections held N part files at once, counted nowhere. Each of 16 connections writes past the flush size (its
    part file is on disk) against a bound of 4 files: at most 4 files exist with all of them open, every chat passes,
    and the frames of the connections that got no file are counted dropped.

    FAILED on the code before: 16 part files on disk with a bound of 4."""
    rec = tmp_path / "rec"
    recorder = Recorder(rec, max_files=MAX_FILES)
    server_side = AllWriteThenFinish(rec, big=1)
    run = await all_at_once(server_side, recorder)
    assert server_side.files is not None, "the connections never all wrote at once"
    assert 0 < server_side.files <= MAX_FILES, f"{server_side.files} files on disk with every connection open"
    assert 0 < len(list(rec.iterdir())) <= MAX_FILES
    assert [r.outcome for r in run.results] == [Outcome.PASSED] * CONNECTIONS, [
        str(v) for r in run.results for v in r.violations][:3]
    conns, frames, _ = recorder.take_dropped()
    assert conns >= CONNECTIONS - MAX_FILES and frames > 0
