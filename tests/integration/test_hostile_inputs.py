"""Hostile recordings, streams and flags against a real chatprobe process: each ends in time, in bounded memory
(peak RSS of the process), with a classified verdict or exit 2, never a traceback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


# Runs chatprobe as its only child, its address space capped at 3 GiB (a regression fails with MemoryError instead of
# taking the machine), and prints the child's peak RSS (KiB) last: the test's own children don't count.
_WRAPPER = ("import resource, subprocess, sys; cap = lambda: resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
            "r = subprocess.run(sys.argv[1:], preexec_fn=cap); sys.stdout.flush(); "
            "print(f'\\nPEAK_RSS_KIB={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}'); sys.exit(r.returncode)")


def chatprobe(*args: str, timeout: float = 90.0) -> tuple[int, str, int]:
    """(exit code, output, peak RSS in MiB) of `chatprobe ARGS`, killed (its process group) at `timeout`."""
    proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, sys.executable, "-m", "harness", *args], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"chatprobe {' '.join(args)[:200]} still running after {timeout}s") from None
    text = out.decode("utf-8", "replace")
    text, _, rss = text.rpartition("\nPEAK_RSS_KIB=")
    return proc.returncode, text, int(rss) // 1024


def sse(*events: dict) -> str:
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events)


def test_agui_state_delta_copying_the_state_into_itself_is_bounded(tmp_path):
    # 40 copies of the root into itself: 2^40 times the state if applied as sent.
    body = sse({"type": "RUN_STARTED", "threadId": "t", "runId": "r1"},
               {"type": "STATE_SNAPSHOT", "snapshot": {"a": "x" * 1000}},
               {"type": "STATE_DELTA", "delta": [{"op": "copy", "from": "", "path": f"/k{i}"} for i in range(40)]},
               {"type": "ACTIVITY_SNAPSHOT", "messageId": "a1", "activityType": "x", "content": {"a": "x" * 1000}},
               {"type": "ACTIVITY_DELTA", "messageId": "a1", "activityType": "x",
                "patch": [{"op": "copy", "from": "", "path": f"/k{i}"} for i in range(40)]},
               {"type": "RUN_FINISHED", "threadId": "t", "runId": "r1"})
    f = tmp_path / "bomb.sse"
    f.write_text(body)
    code, out, rss = chatprobe("check", "--profile", "ag-ui", str(f), timeout=60)
    assert "Traceback" not in out and code == 0 and rss < 300, (code, rss, out[-2000:])
    assert "STATE_DELTA: state over 1048576 bytes" in out, out[-2000:]
    assert "activity 'a1' over 1048576 bytes" in out, out[-2000:]
