"""`agentsim --protocol ag-ui` as a process: it prints where it listens, answers a RunAgentInput POST with an AG-UI
event stream, and refuses a netra-only fault with a usage error."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import httpx

from harness.eventstream import EventStreamParser


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agentsim", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


_seen: dict[int, bytes] = {}  # what each process printed so far


def _line_with(proc: subprocess.Popen, words: str, deadline: float = 30.0) -> str:
    """The first line the process printed that holds `words`, waiting at most `deadline` seconds for it."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    end = time.monotonic() + deadline
    while True:
        for line in _seen.get(proc.pid, b"").decode(errors="replace").splitlines():
            if words in line:
                return line.strip()
        left = end - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break  # the process exited
        _seen[proc.pid] = _seen.get(proc.pid, b"") + chunk
    proc.kill()
    _, err = proc.communicate(timeout=10)
    raise AssertionError(f"no line with {words!r} within {deadline:g}s; stderr: {err.decode(errors='replace')[-500:]}")


def test_agentsim_speaks_agui_over_http_and_sse():
    proc = _start("--protocol", "ag-ui", "--port", "0", "--no-auth", "--think", "0", "--tool-latency", "0")
    try:
        url = _line_with(proc, "listening on").rsplit(" ", 1)[1]
        ws = _line_with(proc, "over WebSocket at").rsplit(" ", 1)[1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/agent") and ws.startswith("ws://")
        body = {"threadId": "t1", "runId": "r1", "state": {}, "tools": [], "context": [], "forwardedProps": {},
                "messages": [{"id": "m1", "role": "user", "content": "What is 2 * 3? #tools=1"}]}
        parser = EventStreamParser(1 << 20)
        events: list[dict] = []
        with httpx.Client(timeout=10) as client, client.stream("POST", url, json=body,
                                                               headers={"Accept": "text/event-stream"}) as response:
            assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
            for chunk in response.iter_bytes():
                events += [json.loads(d) for d in parser.feed(chunk)]
        types = [e["type"] for e in events]
        assert types[0] == "RUN_STARTED" and types[-1] == "RUN_FINISHED" and "TOOL_CALL_RESULT" in types
        assert events[0]["runId"] == "r1" and all(isinstance(e["timestamp"], int) for e in events)
        bad = httpx.post(url, content=b'{"threadId": "t"}', timeout=10)
        assert bad.status_code == 422 and "RunAgentInput" in bad.json()["error"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def test_a_netra_only_fault_is_a_usage_error():
    proc = _start("--protocol", "ag-ui", "--port", "0", "--fault", "crosstalk=0.5")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and b"netra-only" in err


def test_an_agui_only_fault_in_netra_mode_is_a_usage_error():
    proc = _start("--port", "0", "--fault", "bad_args=0.5")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and b"--protocol ag-ui only" in err
