"""A `chatprobe run --record DIR` killed outright (SIGKILL, the OOM killer) leaves the connections it had open in their
hidden part files: `check DIR` names them instead of saying the directory holds no recording, and each renamed as
a kept file is judged."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.recorder import FLUSH_BYTES

ROOT = Path(__file__).resolve().parents[2]
LONG = """name: long
users: 1
chats_per_user: 100000
message: "What is 17 * 23? Then look up the capital of France."
expect:
  streaming: true
"""


def _parts(rec: Path) -> list[Path]:
    out = []
    for p in rec.glob(".*.jsonl.part"):
        try:
            if p.stat().st_size > FLUSH_BYTES:
                out.append(p)
        except FileNotFoundError:
            pass
    return out


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", "check", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_a_run_killed_while_recording_is_said_from_its_part_files_not_as_no_recording(tmp_path):
    scenario = tmp_path / "long.yaml"
    scenario.write_text(LONG)
    rec = tmp_path / "rec"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(scenario), "--record", str(rec)], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _parts(rec) if rec.exists() else True:
            assert proc.poll() is None, "the run ended before its connection's part file was written"
            assert time.monotonic() < deadline, "no part file of 64 KiB within 60s"
            time.sleep(0.05)  # wait-ok: the poll interval of a deadline loop, not a wait for a condition
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    [part] = [p for p in rec.iterdir() if p.name.endswith(".part")]
    assert not [p for p in rec.iterdir() if not p.name.startswith(".")]  # its one connection was never closed

    # Before: "no recording file in the directory", exit 2, with the recording right there.
    alone = _check(str(rec))
    assert alone.returncode == 2 and "Traceback" not in alone.stderr
    assert part.name in alone.stderr and "killed" in alone.stderr and "rename" in alone.stderr, alone.stderr

    # Beside a recording kept, the run is judged and its warnings say what was not read.
    kept = tmp_path / "kept.jsonl"
    kept.write_text("".join(json.dumps(r) + "\n" for r in [
        {"t": 100.0, "dir": "send", "conn": "u1.1",
         "frame": {"type": "user_message", "payload": {"content": "hi", "thread_id": "t1", "message_id": "m1"}}},
        *({"t": 100.1 + i / 100, "dir": "recv", "conn": "u1.1",
           "frame": {"type": role, "run_id": "r1", "thread_id": "t1", "seq": i + 1}}
          for i, role in enumerate(["agent_started", "agent_thinking", "agent_completed"]))]))
    os.rename(kept, rec / "kept.jsonl")
    beside = _check(str(rec), "--json", str(tmp_path / "out.json"))
    assert beside.returncode in (0, 1) and "Traceback" not in beside.stderr, beside.stderr
    [run] = json.loads((tmp_path / "out.json").read_text())["scenarios"]
    assert run["stats"]["chats"] == 1 and any(part.name in w and "killed" in w for w in run["warnings"]), run

    # Renamed as the recorder would have kept it, its chats are judged: those before its last write passed, one cut
    # there (when the write fell inside a chat) is incomplete, never held against the server.
    os.unlink(rec / "kept.jsonl")
    os.rename(part, rec / part.name[1:].removesuffix(".part"))
    judged = _check(str(rec), "--json", str(tmp_path / "out.json"))
    assert judged.returncode in (0, 1) and "Traceback" not in judged.stderr, judged.stderr
    [run] = json.loads((tmp_path / "out.json").read_text())["scenarios"]
    outcomes = {k: v for k, v in run["stats"]["outcomes"].items() if v}
    assert outcomes.get("passed", 0) >= 10 and set(outcomes) <= {"passed", "incomplete"}, outcomes
    assert not any(run["stats"]["violations"].values()), run["stats"]["violations"]
