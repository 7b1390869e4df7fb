"""`chatprobe monitor` against a hostile configuration and hostile servers: more probes than the open-file limit
carries is exit 2 at start, as `run` says it. Real processes and real loopback sockets, every wait with a deadline."""
from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    """A loopback port nothing listens on (a probe there is refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _monitor(*args: str, nofile: int) -> subprocess.CompletedProcess[str]:
    """`chatprobe monitor ARGS` from this checkout, its open-file limit `nofile` (soft and hard), within a deadline."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return subprocess.run([sys.executable, "-m", "monitors.monitor", *args], capture_output=True, text=True,
                          timeout=120, cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)), preexec_fn=limit)


def test_more_probes_than_the_open_file_limit_carries_is_exit_2_naming_the_file_line_and_field(tmp_path):
    """FAILED on the code before it: 300 targets under `ulimit -n 128` were probed, and every connection past the limit
    failed as the monitor's own EMFILE, reported as that target's: `unreachable (refused: network error: Too many
    open files)`, a `refused` connection and probe_success 0, paging for targets that were never asked. Refused at
    start instead, as `run` refuses a scenario past the limit: the file, the line and the field, the limit, what to
    change."""
    port = _closed_port()
    cfg = tmp_path / "m.yaml"
    cfg.write_text("interval: 30s\ntargets:\n" + "".join(
        f"  t{i}: {{url: 'ws://127.0.0.1:{port}/ws', auth: none}}\n" for i in range(300)))
    for once in (["--once"], ["--listen", "127.0.0.1:0"]):
        proc = _monitor("--config", str(cfg), *once, nofile=128)
        assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
        err = proc.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith(f"chatprobe monitor: error: {cfg}:3: field 'targets': 300 probes"), err
        assert "may open 128 (`ulimit -n`)" in err and "raise the limit" in err, err
        assert "listening" not in proc.stdout, proc.stdout  # nothing was served, nothing probed
    # What the limit carries runs: the same targets under a limit that holds them are probed (refused, exit 3).
    proc = _monitor("--config", str(cfg), "--once", nofile=1024)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "Too many open files" not in proc.stdout + proc.stderr
