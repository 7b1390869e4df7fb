"""A 200 MB recording, generated here, judged by a real `chatprobe check` process: its peak RSS (bytes, measured by
the kernel) does not grow with the file, and it finishes within a bound, its verdicts those the file holds."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROLES = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "partial_result", "agent_completed"]
# Runs chatprobe as its only child and prints the child's peak RSS in bytes last (ru_maxrss is KiB on Linux).
_WRAPPER = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); sys.stdout.flush(); "
            "print(f'\\nPEAK_RSS_BYTES={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}'); "
            "sys.exit(r.returncode)")


def _write(path: Path, size: int) -> tuple[int, int]:
    """JSON Lines of 4-chat connections (one chat in 50 missing its tool_completed: failed), up to `size` bytes:
    (chats, failed chats)."""
    chats = failed = 0
    pad = "x" * 600  # a partial_result's text: frames of a realistic size
    with path.open("w") as f:
        written, conn, t = 0, 0, 1_800_000_000.0
        while written < size:
            conn += 1
            lines = [{"t": t, "dir": "recv", "conn": f"u{conn}.1", "frame": {"type": "connection_established",
                                                                             "data": {"user_id": f"u{conn}"}}}]
            for c in range(4):
                run, thread = f"r{conn}-{c}", f"t{conn}-{c}"
                t += 0.01
                lines.append({"t": t, "dir": "send", "conn": f"u{conn}.1", "frame": {
                    "type": "user_message", "payload": {"content": "hi", "thread_id": thread, "message_id": run}}})
                drop = chats % 50 == 7
                chats += 1
                failed += drop
                for seq, role in enumerate(ROLES, 1):
                    t += 0.001
                    if drop and role == "tool_completed":
                        continue
                    frame: dict = {"type": role, "run_id": run, "thread_id": thread, "user_id": f"u{conn}",
                                   "seq": seq}
                    if role.startswith("tool_"):
                        frame |= {"tool_call_id": f"{run}-c", "tool_name": "calc"}
                    if role == "partial_result":
                        frame["payload"] = {"text": pad}
                    lines.append({"t": t, "dir": "recv", "conn": f"u{conn}.1", "frame": json.dumps(frame)})
            t += 0.01
            lines.append({"t": t, "dir": "close", "conn": f"u{conn}.1", "code": 1000, "by": "client"})
            text = "".join(json.dumps(r) + "\n" for r in lines)
            f.write(text)
            written += len(text)
    return chats, failed


def _check(path: Path, out: Path, timeout: float) -> tuple[int, str, int]:
    proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, sys.executable, "-m", "harness", "check", str(path),
                             "--json", str(out)], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"chatprobe check of {path.stat().st_size} bytes still running after {timeout}s") from None
    body, _, rss = text.decode("utf-8", "replace").rpartition("\nPEAK_RSS_BYTES=")
    return proc.returncode, body, int(rss)


@pytest.mark.timeout(400)
def test_a_200_mb_recording_is_judged_in_bounded_memory_and_time(tmp_path):
    peaks = {}
    for size in (20_000_000, 200_000_000):
        f = tmp_path / f"rec-{size}.jsonl"
        chats, failed = _write(f, size)
        rc, out, peaks[size] = _check(f, tmp_path / "out.json", timeout=300)
        assert rc == 1 and "Traceback" not in out, out[-2000:]
        [run] = json.loads((tmp_path / "out.json").read_text())["scenarios"]
        assert run["stats"]["chats"] == chats
        assert {k: v for k, v in run["stats"]["outcomes"].items() if v} == {"passed": chats - failed,
                                                                            "failed": failed}
        f.unlink()
    # Ten times the file, not ten times the memory: what grows is the bounded listing of chats (1,000 passing and
    # 1,000 failing, with their events) and the tallies, a few MiB.
    assert peaks[200_000_000] < peaks[20_000_000] + (48 << 20), peaks
    assert peaks[200_000_000] < 256 << 20, peaks
