"""What the benches share: reading where an agentsim process they started listens."""
from __future__ import annotations

import subprocess


def agentsim_url(proc: subprocess.Popen[str]) -> str:
    """The URL from agentsim's first line (`agentsim listening on URL`); the process is killed if it said otherwise."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"agentsim did not start: {line!r}")
    return line.split("listening on", 1)[1].strip()
