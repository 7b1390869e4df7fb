"""`chatprobe monitor --once` over many targets: its start-up (building the probes) and one round against closed
loopback ports, in a child process; prints the child's CPU seconds (user + system), its peak RSS and how many probes
ended in each outcome (every one should be `refused`).

    .venv/bin/python bench/monitor_targets.py [--targets 1000] [--tree PATH]

`--build-only` stops after building the probes (the start-up alone). `--daemon SECONDS` runs the daemon at that
`--interval` instead (`--listen 127.0.0.1:0`) and prints its CPU from start to listening, over its first interval
and per interval over the `--intervals` after it (from /proc), and its RSS at the end. `--tree` runs another
checkout's code (e.g. a worktree of main) against the same config.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import resource
import select
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]

BUILD_ONLY = """
import resource, sys, time
from monitors.monitor import load_config, probes_from_config
t0 = time.process_time()
probes = probes_from_config(sys.argv[1], load_config(sys.argv[1]), 10.0)
print(f"built {len(probes)} probes in {time.process_time() - t0:.2f} s CPU, "
      f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
"""


def closed_ports(n: int) -> list[int]:
    """`n` loopback ports nothing listens on (bound, then closed: refused at once, RST)."""
    ports = []
    for _ in range(n):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return ports


def write_config(path: Path, n: int) -> None:
    ports = closed_ports(min(n, 50))
    lines = ["targets:"]
    lines += [f"  t{i}: {{url: 'ws://127.0.0.1:{ports[i % len(ports)]}/ws', auth: none}}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def scrape(url: str) -> tuple[int, collections.Counter[str]]:
    """The daemon's chats (one a probe run) and its chatprobe_connections_total by result."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as answer:
        text = answer.read().decode()
    chats, out = 0, collections.Counter[str]()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "chatprobe_chats_total":
                chats += int(sample.value)
            if sample.name == "chatprobe_connections_total" and sample.value:
                out[sample.labels["result"]] += int(sample.value)
    return chats, out


def daemon(config: Path, tree: Path, interval: float, intervals: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "harness", "monitor", "--config", str(config), "--interval", f"{interval}s",
           "--listen", "127.0.0.1:0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=config.parent)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        line = proc.stdout.readline() if ready else ""
        if not (m := re.search(r"listening on (http://\S+)", line)):
            raise SystemExit("the monitor did not start")
        url = m.group(1)
        started = proc_cpu(proc.pid)
        # Every probe runs once in each interval after the first (spread or not): 1.5 intervals in, none is at its
        # window's edge. No scrape in between: a scrape of 1,000 targets' series (~25 MB) costs ~2.5 s of CPU.
        time.sleep(interval * 1.5)
        first = proc_cpu(proc.pid)
        time.sleep(interval * intervals)
        later = proc_cpu(proc.pid)
        _, by_result = scrape(url)
        print(f"daemon at --interval {interval:g}s ({tree}): start-up {started:.2f} s CPU; first 1.5 intervals "
              f"{first - started:.2f} s; then {(later - first) / intervals:.2f} s per interval; RSS "
              f"{proc_rss_mb(proc.pid):.0f} MB")
        print(f"connections by result: {dict(by_result.most_common())}")
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=1000)
    ap.add_argument("--tree", type=Path, default=ROOT)
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--daemon", type=float, metavar="SECONDS")
    ap.add_argument("--intervals", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "monitor.yaml"
        write_config(config, a.targets)
        if a.daemon:
            daemon(config, a.tree, a.daemon, a.intervals)
            return
        env = {**os.environ, "PYTHONPATH": str(a.tree)}
        if a.build_only:
            cmd = [sys.executable, "-c", BUILD_ONLY, str(config)]
        else:
            cmd = [sys.executable, "-m", "harness", "monitor", "--config", str(config), "--once"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"{a.targets} targets ({a.tree}): {cpu:.2f} s CPU, peak RSS {after.ru_maxrss / 1024:.0f} MB, exit "
          f"{out.returncode}")
    if a.build_only:
        print(out.stdout.strip() or out.stderr[-2000:])
        return
    kinds = collections.Counter(m.group(1) if (m := re.search(r"passed \((\w+):", line)) else line.split(": ", 1)[-1][:40]
                                for line in out.stdout.splitlines() if " / " in line)
    print(dict(kinds.most_common()) or out.stderr[-2000:])


if __name__ == "__main__":
    main()
