"""What the benches share: reading where an agentsim process they started listens, and what a process they watch
holds (its /proc status and CPU time)."""
from __future__ import annotations

import compileall
import os
import subprocess
import tarfile
from pathlib import Path


def agentsim_url(proc: subprocess.Popen[str]) -> str:
    """The URL from agentsim's first line (`agentsim listening on URL`); the process is killed if it said otherwise."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"agentsim did not start: {line!r}")
    return line.split("listening on", 1)[1].strip()


def proc_status(pid: int) -> dict[str, str]:
    """The process's /proc/PID/status fields by name (VmRSS, VmHWM, Threads...), their values as written."""
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


def cpu_seconds(pid: int) -> float:
    """The CPU time the process has used, user and system (utime + stime of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_at(rev: str, into: Path, paths: tuple[str, ...]) -> Path:
    """`paths` (folders of this checkout) as they were at `rev` (git archive: the tree, not the working copy),
    unpacked under `into` and compiled, for a bench that pairs a revision against this tree."""
    into.mkdir(parents=True, exist_ok=True)
    archive = into / "tree.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "archive", rev, *paths], cwd=Path(__file__).resolve().parents[1], stdout=out,
                       check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    compileall.compile_dir(into, quiet=1)
    return into
