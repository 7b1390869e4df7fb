"""A server that takes the connection and then never reads a byte, while the scenario keeps sending: large messages,
many chats. picows and the Locust user's client write without waiting (the frame goes into the connection's write
buffer), so every frame the server left unread stayed in the client's memory, to the end of the run: 300 chats of
900 KB, 270 MB held. Now a connection holds at most MAX_UNSENT_SEND bytes unread (and the frame that passed it):
each chat after that is an `error`, `send_failed`, its note saying the server stopped reading (SendStalled), and the
run ends in its usual time with its memory bounded. (The websockets client waits connect_timeout for its buffer to
drain and fails the chat then: bounded already, docs/protocol.md.)

A raw WebSocket server on 127.0.0.1 (tests/integration/hostile_ws.py), `chatprobe run` in a subprocess whose peak
RSS is measured, and the Locust user's sync client under gevent in another.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path

from harness.offline import check_files
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.runner import run_scenario
from harness.scenario import load_scenario
from harness.targets import Target, TokenProvider
from harness.transports.base import MAX_UNSENT_SEND

from .hostile_ws import MEASURE, TOKEN, WELCOME, Raw, Reader, Writer, frame, raw, upgrade

MESSAGE = 900_000  # characters a message (a scenario file holds at most 1 MiB)
ROUNDS = 30  # of PARALLEL chats each: 270 MB sent in all
PARALLEL = 10
# The run's peak RSS: the interpreter, picows, the chats' state, the kernel-side bytes aside, and a few MiB unsent;
# the code before held every frame, 270 MB more
# (it peaked at 310 MB where it is now under 60 MB).
LIMIT_KB = 200 * 1024
LOCUST_LIMIT_KB = 120 * 1024  # (150 chats of 900 KB, one at a time: the code before peaked at 180 MB)
STALLED = "bytes sent before are still unread (past the"


async def never_reads(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
    """The upgrade and the welcome, then not a byte read: held open until the client goes (or the test ends)."""
    writer.write(upgrade(head) + frame(1, WELCOME))
    await writer.drain()
    await srv.held.wait()


def scenario_file(tmp_path: Path, chats: int = PARALLEL * ROUNDS, message: int = MESSAGE) -> Path:
    path = tmp_path / "unread.yaml"
    path.write_text(f"name: unread\nusers: 1\nparallel_chats: {PARALLEL}\nchats_per_user: {chats}\n"
                    "connect_timeout: 5s\ncompression: none\nreconnect: false\n"
                    "expect: {first_event_limit: 0.1s, deadline: 0.1s, settle: 0.01s}\n"
                    f"message: {'x' * message}\n")
    return path


async def bounded(args: list[str], timeout: float) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1", "CHATPROBE_TOKEN": TOKEN}, start_new_session=True)
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)  # a hang fails here
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    return proc.returncode or 0, stdout.decode(), stderr.decode()


async def test_a_server_that_never_reads_fails_the_chats_past_the_bound_in_bounded_memory(tmp_path):
    """`chatprobe run` on picows. FAILED on the code before: no chat said the server stopped reading (each was an
    R9/R10 at its deadline, its 900 KB kept unsent), and the run peaked at 270 MB more than it does now."""
    async with raw(never_reads) as srv:
        code, out, err = await bounded(
            [sys.executable, "-c", MEASURE, sys.executable, "-m", "harness", "run", str(scenario_file(tmp_path)),
             "--target", srv.url, "--json", str(tmp_path / "r.json"), "-q"], 120)
    text = out + err
    assert "Traceback" not in text and TOKEN not in text, text[-2000:]
    peak_kb = int(err.strip().splitlines()[-1].rpartition("peak_kb=")[2])
    assert peak_kb < LIMIT_KB, (peak_kb, MAX_UNSENT_SEND)
    (scenario,) = json.loads((tmp_path / "r.json").read_text())["scenarios"]
    chats = scenario["chats"]
    assert len(chats) == PARALLEL * ROUNDS, len(chats)
    stalled = [c for c in chats if c["outcome"] == "error" and STALLED in (c.get("error") or "")]
    # The kernel's buffers take the first few MB; past them and the bound, every chat is refused its send.
    assert len(stalled) >= len(chats) // 2, sorted({(c["outcome"], c.get("error") or c["note"]) for c in chats})
    assert {c["error_kind"] for c in stalled} == {"send_failed"}, stalled[0]


# The Locust user's client under gevent, as Locust runs it: one user's chats back to back on its connection, each
# message 900 KB; prints each verdict's (outcome, error) as one JSON line.
LOCUST_CHATS = """
import sys
from gevent import monkey
monkey.patch_all()
import json
from harness.gevent_client import SyncSession
from harness.scenario import load_scenario
from harness.sinks import Sink
from harness.targets import TargetOptions, make_target, read_token
scenario = load_scenario(sys.argv[1])
options = TargetOptions(url=sys.argv[2], auth="header")
target = make_target(options, read_token(options), scenario.profile, transports=("websocket",))
session = SyncSession(target, "u1", scenario.name, Sink(), connect_timeout=scenario.connect_timeout)
expectations, options = scenario.shared_by_users(target.profile)
verdicts = []
try:
    for _ in range(int(sys.argv[3])):
        result = session.chat(scenario.message, expectations, options)
        verdicts.append((result.outcome.value, result.error_kind, result.error))
finally:
    session.close()
print(json.dumps(verdicts))
"""


async def test_the_locust_users_client_bounds_what_a_server_that_never_reads_leaves_unsent(tmp_path):
    """FAILED on the code before: every chat's 900 KB stayed queued (R9/R10 at each deadline, none said why), the
    process's peak 180 MB where it is now under 60 MB; now the chats past the bound are `send_failed`, saying the server stopped
    reading, as under `chatprobe run`."""
    chats = 150
    async with raw(never_reads) as srv:
        code, out, err = await bounded(
            [sys.executable, "-c", MEASURE, sys.executable, "-c", LOCUST_CHATS, str(scenario_file(tmp_path)), srv.url,
             str(chats)], 120)
    text = out + err
    assert code == 0 and "Traceback" not in text and TOKEN not in text, text[-2000:]
    peak_kb = int(err.strip().splitlines()[-1].rpartition("peak_kb=")[2])
    assert peak_kb < LOCUST_LIMIT_KB, (peak_kb, MAX_UNSENT_SEND)
    verdicts = json.loads(out.strip().splitlines()[-1])
    stalled = [v for v in verdicts if v[0] == "error" and STALLED in (v[2] or "")]
    assert len(verdicts) == chats and len(stalled) >= chats // 2, sorted({tuple(v) for v in verdicts})
    assert {v[1] for v in stalled} == {"send_failed"}, stalled[0]


async def test_check_of_the_recording_judges_the_refused_sends_as_live(tmp_path):
    """`--record`: a frame refused past the bound is recorded as sent and then failed (`"failed": "send_failed"`, its
    send named), so `chatprobe check` of the recording judges each chat as live did. (50 chats of 250 KB: within
    what --record writes of one connection, 16 MiB, past which frames go unrecorded.)"""
    sc = load_scenario(str(scenario_file(tmp_path, chats=50, message=250_000)))
    async with raw(never_reads) as srv:
        target = Target(url=srv.url, profile=load_profile("netra"), name="t", tokens=TokenProvider(TOKEN),
                        recorder=Recorder(tmp_path / "rec"))
        live = await asyncio.wait_for(run_scenario(sc, target), 60)
    [checked] = check_files([tmp_path / "rec"], target.profile, sc)

    def verdicts(run) -> Counter:
        return Counter((c.outcome.value, c.error_kind, STALLED in (c.error or "")) for c in run.results)

    assert verdicts(live)[("error", "send_failed", True)] >= PARALLEL, verdicts(live)
    assert verdicts(checked) == verdicts(live), (verdicts(checked), verdicts(live))
