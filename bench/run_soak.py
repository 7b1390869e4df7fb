"""Soak of `chatprobe run`: does its memory stay flat however long a run goes?

agentsim runs in a subprocess on loopback (zero think time and tool latency; --no-auth unless --jwt, then chatprobe
mints a token per virtual user); `chatprobe run` plays one scenario written by this script against it, in another
subprocess, for --minutes:

- `--shape open`: the open model, `arrival_rate: --rate` chats a second for the whole duration (max_in_flight 100);
- `--shape stages`: the closed model through one stage of --users users, each playing chats back to back;
- `--shape new-users`: a new user (a new connection, a new user id, a new token with --jwt) for every chat:
  `users` enough for the whole run at --rate a second (`ramp_up` over the run), `chats_per_user: 1`.

`--driver locust` plays the same users with the Locust user instead (`locust -f scenarios/locustfile.py --headless
-u --users -r --users --run-time`, a scenario of one chat per script item, users playing it again and again; --shape
is not used), the chats counted from chatprobe's /metrics on a free loopback port.

Every --sample-every seconds this script reads the run's RSS (VmRSS of /proc/PID/status), open fds and CPU time,
and the chats judged so far (`chatprobe run`'s progress line). At the end: RSS growth per minute and per 1,000 chats
from the first sample at or after --warmup to the last. Only the load generator's process is measured. Extra flags
go after `--`, e.g. `-- --record DIR --json out.json` (the reports' own writing happens after the last sample).
`--root DIR` runs the chatprobe of another checkout (e.g. a `git worktree` of an older commit) for a before/after.

    .venv/bin/python bench/run_soak.py --shape open --rate 150 --minutes 3
    .venv/bin/python bench/run_soak.py --shape new-users --rate 100 --minutes 3 --jwt
    .venv/bin/python bench/run_soak.py --shape stages --users 100 --minutes 3 --message '#fail-agent hi'
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script (`python bench/run_soak.py`): the checkout's `bench` package

from bench.procs import agentsim_url, cpu_seconds, proc_status  # noqa: E402

PROGRESS_RE = re.compile(r" (?:running|done) \d+s: chats (\d+)")
JWT_SECRET = "soak-secret-0123456789abcdef"


@dataclass
class Sample:
    t: float
    rss_kib: int
    hwm_kib: int
    fds: int
    cpu_s: float
    chats: int


def scraped_chats(url: str, before: int) -> int:
    """chatprobe_chats_total summed over its series (the Locust user's /metrics); `before` when it cannot be read."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return before
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("chatprobe_chats_total{")))


def scenario_yaml(args: argparse.Namespace) -> dict[str, object]:
    seconds = round(args.minutes * 60)
    sc: dict[str, object] = {
        "name": f"soak-{args.shape}", "message": args.message,
        "expect": {"first_event_limit": "10s", "deadline": "30s", "settle": "0s"},
        "objectives": {"passed_ratio": {"min": 0}, "violations": {"max": 10**9},
                       "missing_events_ratio": {"max": 1}, "time_to_first_event": {"p95": "60s"}},
        "max_duration": seconds + 60,
    }
    if args.shape == "open":
        sc.update(arrival_rate=args.rate, duration=f"{seconds}s", max_in_flight=100)
    elif args.shape == "stages":
        sc["stages"] = [{"duration": f"{seconds}s", "users": args.users, "ramp": False}]
    else:  # new-users: one chat per user, a new user every 1/rate s
        users = max(1, round(args.rate * seconds))
        sc.update(users=users, chats_per_user=1, ramp_up=f"{seconds}s", concurrency=args.users)
    return sc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=("open", "stages", "new-users"), default="open")
    p.add_argument("--minutes", type=float, default=3.0, help="length of the run (default 3)")
    p.add_argument("--rate", type=float, default=150.0, help="chats a second: open, new-users (default 150)")
    p.add_argument("--users", type=int, default=100, help="stages, locust: users; new-users: most at once (default 100)")
    p.add_argument("--message", default="What is 17 * 23?", help="each chat's text ('#fail-agent …': errors)")
    p.add_argument("--sim-fault", action="append", default=[], metavar="SPEC", help="agentsim --fault (repeatable)")
    p.add_argument("--jwt", action="store_true", help="agentsim checks JWTs; chatprobe mints one per user")
    p.add_argument("--sample-every", type=float, default=5.0, metavar="SECONDS", help="default 5")
    p.add_argument("--warmup", type=float, default=0.5, metavar="MINUTES",
                   help="growth is measured from the first sample at or after this (default 0.5)")
    p.add_argument("--driver", choices=("run", "locust"), default="run")
    p.add_argument("--root", type=Path, default=ROOT, help="the checkout whose chatprobe runs (default this one)")
    p.add_argument("extra", nargs="*", help="after --: more `chatprobe run` (or locust) flags")
    args = p.parse_args()
    if not (args.minutes > 0 and args.sample_every > 0 and args.rate > 0 and args.users > 0):
        p.error("--minutes, --sample-every, --rate and --users must be positive")

    workdir = Path(tempfile.mkdtemp(prefix="run-soak-"))
    scenario = workdir / "soak.yaml"
    scenario.write_text(json.dumps(scenario_yaml(args)))  # JSON is YAML
    sim_cmd = [sys.executable, "-m", "agentsim", "--host", "127.0.0.1", "--port", "0", "--think", "0",
               "--tool-latency", "0", "--seed", "1"]
    sim_cmd += ["--jwt-secret", JWT_SECRET] if args.jwt else ["--no-auth"]
    for spec in args.sim_fault:
        sim_cmd += ["--fault", spec]
    env = {k: v for k, v in os.environ.items() if k not in ("CHATPROBE_TOKEN", "CHATPROBE_JWT_SECRET")}
    sim = subprocess.Popen(sim_cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                           cwd=ROOT, text=True)
    run = None
    samples: list[Sample] = []
    chats = [0]
    try:
        url = agentsim_url(sim)
        threading.Thread(target=lambda: sim.stdout and sim.stdout.read(), daemon=True).start()
        metrics = None
        if args.driver == "locust":
            if args.jwt:
                env["CHATPROBE_JWT_SECRET"] = JWT_SECRET
            with socket.socket() as free:
                free.bind(("127.0.0.1", 0))
                port = free.getsockname()[1]
            metrics = f"http://127.0.0.1:{port}/metrics"
            scenario.write_text(json.dumps({k: v for k, v in scenario_yaml(args).items()
                                            if k in ("name", "message", "expect")}))
            cmd = [str(Path(sys.executable).parent / "locust"), "-f", "scenarios/locustfile.py", "--headless",
                   "-u", str(args.users), "-r", str(args.users), "--run-time", f"{round(args.minutes * 60)}s",
                   "--host", url, "--chatprobe-scenario", str(scenario), "--chatprobe-metrics-port", str(port),
                   *([] if args.jwt else ["--chatprobe-auth", "none"]), "--only-summary", *args.extra]
        else:
            auth = ["--jwt-secret-env", "SOAK_JWT"] if args.jwt else ["--auth", "none"]
            if args.jwt:
                env["SOAK_JWT"] = JWT_SECRET
            cmd = [sys.executable, "-m", "harness", "run", str(scenario), "--target", url, *auth,
                   "--progress-interval", f"{max(1.0, args.sample_every / 2):g}s", *args.extra]
        print("$", " ".join(cmd[1:]), f"(in {args.root})", flush=True)
        run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               cwd=args.root, env=env, text=True)
        tail: list[str] = []

        def read() -> None:
            assert run is not None and run.stdout is not None
            for line in run.stdout:
                if (m := PROGRESS_RE.search(line)) is not None:
                    chats[0] = int(m[1])
                tail.append(line)
                del tail[:-60]

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        print("| min | chats | RSS MiB | HWM MiB | fds | CPU s |\n| ---: | ---: | ---: | ---: | ---: | ---: |")
        while run.poll() is None and time.monotonic() < end:
            time.sleep(min(args.sample_every, max(0.0, end - time.monotonic())))  # the sampling period itself
            if metrics is not None:
                chats[0] = scraped_chats(metrics, chats[0])
            try:
                st = proc_status(run.pid)
                s = Sample(time.monotonic() - t0, int(st["VmRSS"].split()[0]), int(st["VmHWM"].split()[0]),
                           len(os.listdir(f"/proc/{run.pid}/fd")), cpu_seconds(run.pid), chats[0])
            except (FileNotFoundError, ProcessLookupError, KeyError):
                break
            samples.append(s)
            print(f"| {s.t / 60:4.2f} | {s.chats:7d} | {s.rss_kib / 1024:7.1f} | {s.hwm_kib / 1024:7.1f} | "
                  f"{s.fds:4d} | {s.cpu_s:6.1f} |", flush=True)
        try:
            code = run.wait(120)
        except subprocess.TimeoutExpired:
            run.kill()
            code = run.wait(10)
        reader.join(5)
        print(f"chatprobe run exited {code}; its last lines:")
        print("".join(line for line in tail[-12:] if line.strip()), end="")
    finally:
        for proc in (run, sim):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    warm = [s for s in samples if s.t >= args.warmup * 60]
    if len(warm) >= 2:
        a, b = warm[0], warm[-1]
        grow = (b.rss_kib - a.rss_kib) / 1024
        per_min = grow / ((b.t - a.t) / 60)
        per_k = grow * 1024 / ((b.chats - a.chats) / 1000) if b.chats > a.chats else float("nan")
        print(f"after {args.warmup:g} min: RSS {a.rss_kib / 1024:.1f} -> {b.rss_kib / 1024:.1f} MiB over "
              f"{b.chats - a.chats} chats ({per_min:+.2f} MiB/min, {per_k:+.1f} KiB per 1,000 chats); "
              f"median RSS {statistics.median(s.rss_kib for s in warm) / 1024:.1f} MiB, peak "
              f"{max(s.hwm_kib for s in samples) / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
