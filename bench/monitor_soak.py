"""Soak of `chatprobe monitor`: does its memory and its /metrics series count stay flat over many probes?

agentsim runs in a subprocess on loopback (--no-auth, short think and tool latency, a seeded 10 % drop of
tool_completed so verdicts vary between passed and failed); `chatprobe monitor` runs in another subprocess
probing it every 0.2 s and serving /metrics on a free loopback port. Every --sample-every seconds for
--minutes this script reads the monitor's RSS (VmRSS of /proc/PID/status), open fds, threads and CPU time,
scrapes /metrics once and counts its series (lines not starting with '#') and chatprobe_chats_total summed
over outcomes. At the end: RSS growth per 1,000 chats from the first sample after --warmup to the last, and
the series count min/max. Only the monitor's process is measured; agentsim's memory is its own.

    .venv/bin/python bench/monitor_soak.py --minutes 10
"""
from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script (`python bench/monitor_soak.py`): the checkout's `bench` package

from bench.procs import cpu_seconds, proc_status  # noqa: E402

STARTUP_TIMEOUT = 30.0
SCRAPE_TIMEOUT = 10.0
CHATS_RE = re.compile(r'^chatprobe_chats_total\{[^}]*outcome="([^"]+)"[^}]*\}\s+(\S+)')


@dataclass
class Sample:
    t: float  # seconds since the monitor started listening
    rss_kib: int
    hwm_kib: int
    fds: int
    threads: int
    cpu_s: float
    series: int
    chats: float
    outcomes: dict[str, float]


def chatprobe_bin() -> str:
    local = Path(sys.executable).parent / "chatprobe"
    if local.exists():
        return str(local)
    found = shutil.which("chatprobe")
    if not found:
        raise SystemExit("chatprobe is not installed next to this Python nor on PATH")
    return found


def read_line(proc: subprocess.Popen, marker: str, timeout: float, what: str, log: Path) -> str:
    """The first stdout line of `proc` containing marker, within timeout (never blocks past it)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            text = line.decode(errors="replace")
            if marker in text:
                drain(proc)
                return text
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise SystemExit(f"{what} did not start within {timeout:g}s (exit {proc.poll()}); stderr tail:\n{tail}")


def drain(proc: subprocess.Popen) -> None:
    """Keep reading the child's stdout so it can never block on a full pipe."""
    def run() -> None:
        assert proc.stdout is not None
        with open(os.devnull, "wb") as sink:
            while chunk := os.read(proc.stdout.fileno(), 65536):
                sink.write(chunk)
    threading.Thread(target=run, daemon=True).start()


def scrape(url: str) -> tuple[int, dict[str, float]]:
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as r:
        text = r.read().decode()
    series = 0
    outcomes: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series += 1
        m = CHATS_RE.match(line)
        if m:
            outcomes[m.group(1)] = outcomes.get(m.group(1), 0.0) + float(m.group(2))
    return series, outcomes


def sample(pid: int, metrics_url: str, t0: float) -> Sample:
    # /proc first: the scrape's own handler thread and socket would otherwise be counted while they wind down.
    t = time.monotonic() - t0
    st = proc_status(pid)
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    cpu = cpu_seconds(pid)
    series, outcomes = scrape(metrics_url)
    return Sample(
        t=t,
        rss_kib=int(st["VmRSS"].split()[0]),
        hwm_kib=int(st["VmHWM"].split()[0]),
        fds=fds,
        threads=int(st["Threads"]),
        cpu_s=cpu,
        series=series,
        chats=sum(outcomes.values()),
        outcomes=outcomes,
    )


def row(s: Sample) -> str:
    o = s.outcomes
    others = sum(v for k, v in o.items() if k not in ("passed", "failed"))
    return (f"| {s.t / 60:5.1f} | {s.chats:7.0f} | {o.get('passed', 0):7.0f} | {o.get('failed', 0):6.0f} | "
            f"{others:5.0f} | {s.rss_kib / 1024:7.2f} | {s.hwm_kib / 1024:7.2f} | {s.fds:3d} | {s.threads:3d} | "
            f"{s.cpu_s:6.1f} | {s.series:6d} |")


HEADER = ("| min | chats | passed | failed | other | RSS MiB | HWM MiB | fds | thr | CPU s | series |\n"
          "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")


def stop(proc: subprocess.Popen | None, name: str) -> int | None:
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            print(f"{name} did not exit within 10 s of SIGTERM: killing it", file=sys.stderr)
            proc.kill()
            proc.wait(10)
    return proc.returncode


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="soak duration (default 10)")
    p.add_argument("--sample-every", type=float, default=30.0, metavar="SECONDS", help="default 30")
    p.add_argument("--warmup", type=float, default=2.0, metavar="MINUTES",
                   help="growth is measured from the first sample at or after this (default 2)")
    p.add_argument("--interval", default="0.2s", help="the monitor's --interval (default 0.2s)")
    p.add_argument("--drop", type=float, default=0.1, help="agentsim drop:tool_completed rate (default 0.1)")
    p.add_argument("--seed", type=int, default=20261125, help="agentsim --seed")
    args = p.parse_args()
    if not (args.minutes > 0 and args.sample_every > 0 and args.warmup >= 0):
        p.error("--minutes and --sample-every must be positive, --warmup non-negative")

    workdir = Path(tempfile.mkdtemp(prefix="monitor-soak-"))
    sim_log, mon_log = workdir / "agentsim.stderr", workdir / "monitor.stderr"
    sim = mon = None
    samples: list[Sample] = []
    try:
        with open(sim_log, "wb") as sim_err:
            sim = subprocess.Popen(
                [sys.executable, "-m", "agentsim", "--host", "127.0.0.1", "--port", "0", "--no-auth",
                 "--think", "0.005", "--tool-latency", "0.002", "--seed", str(args.seed),
                 "--fault", f"drop:tool_completed={args.drop:g}"],
                stdout=subprocess.PIPE, stderr=sim_err, stdin=subprocess.DEVNULL, cwd=ROOT,
            )
        url = read_line(sim, "listening on", STARTUP_TIMEOUT, "agentsim", sim_log).split("listening on", 1)[1].strip()

        env = {k: v for k, v in os.environ.items()
               if k not in ("CHATPROBE_TOKEN", "CHATPROBE_JWT_SECRET")}  # --auth none, no token at all
        with open(mon_log, "wb") as mon_err:
            mon = subprocess.Popen(
                [chatprobe_bin(), "monitor", "--target", url, "--target-name", "soak", "--auth", "none",
                 "--interval", args.interval, "--listen", "127.0.0.1:0"],
                stdout=subprocess.PIPE, stderr=mon_err, stdin=subprocess.DEVNULL, cwd=ROOT, env=env,
            )
        line = read_line(mon, "listening on", STARTUP_TIMEOUT, "chatprobe monitor", mon_log)
        base = line.split("listening on", 1)[1].strip()
        if not base.startswith("http://127.0.0.1:"):
            raise SystemExit(f"the monitor is not on loopback: {line!r}")
        t0 = time.monotonic()
        metrics_url = f"{base}/metrics"

        print(f"agentsim {url} (seed {args.seed}, drop:tool_completed={args.drop:g}); "
              f"monitor pid {mon.pid} on {base}, --interval {args.interval}; "
              f"{args.minutes:g} min, a sample every {args.sample_every:g} s", flush=True)
        print(HEADER, flush=True)
        end = t0 + args.minutes * 60
        next_at = t0
        while True:
            if mon.poll() is not None:
                raise SystemExit(f"the monitor exited ({mon.returncode}) mid-soak:\n"
                                 f"{mon_log.read_text(errors='replace')[-2000:]}")
            if sim.poll() is not None:
                raise SystemExit(f"agentsim exited ({sim.returncode}) mid-soak")
            s = sample(mon.pid, metrics_url, t0)
            samples.append(s)
            print(row(s), flush=True)
            next_at += args.sample_every
            if next_at > end + 1:
                break
            time.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        mon_rc = stop(mon, "chatprobe monitor")
        stop(sim, "agentsim")

    warm = next((s for s in samples if s.t >= args.warmup * 60 - 1), samples[0])
    last = samples[-1]
    first = samples[0]
    series = [s.series for s in samples]
    series_warm = [s.series for s in samples if s.t >= warm.t]
    chats = last.chats - warm.chats
    grow_kib = last.rss_kib - warm.rss_kib
    per_1000 = grow_kib / chats * 1000 if chats else float("nan")
    elapsed = last.t - first.t
    print()
    print(f"chats: {last.chats:.0f} in {last.t / 60:.1f} min ({(last.chats - first.chats) / elapsed if elapsed else 0:.1f}/s); "
          f"outcomes {', '.join(f'{k} {v:.0f}' for k, v in sorted(last.outcomes.items()))}")
    print(f"RSS: {first.rss_kib / 1024:.1f} MiB at {first.t / 60:.1f} min, {warm.rss_kib / 1024:.1f} MiB at "
          f"{warm.t / 60:.1f} min (after warm-up), {last.rss_kib / 1024:.1f} MiB at {last.t / 60:.1f} min; "
          f"peak (VmHWM) {last.hwm_kib / 1024:.1f} MiB")
    print(f"RSS growth after warm-up: {grow_kib:+d} KiB over {chats:.0f} chats = {per_1000:+.1f} KiB per 1,000 chats")
    half = next((s for s in samples if s.t >= last.t / 2 - 1), warm)
    if half is not last and last.chats > half.chats:
        print(f"  second half only ({half.t / 60:.1f}-{last.t / 60:.1f} min): {last.rss_kib - half.rss_kib:+d} KiB over "
              f"{last.chats - half.chats:.0f} chats = "
              f"{(last.rss_kib - half.rss_kib) / (last.chats - half.chats) * 1000:+.1f} KiB per 1,000 chats")
    print(f"series on /metrics: min {min(series)}, max {max(series)} (after warm-up: {min(series_warm)}-{max(series_warm)})")
    print(f"fds {min(s.fds for s in samples)}-{max(s.fds for s in samples)}, "
          f"threads {min(s.threads for s in samples)}-{max(s.threads for s in samples)}; "
          f"monitor exit code on SIGTERM: {mon_rc}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
