"""How many concurrent chats chatprobe holds open on this machine, and its memory per open chat.

agentsim (subprocess, --no-auth) is told `#think=SECONDS` so every run stays open after agent_started.
chatprobe opens N connections through its real Session, each with one chat in flight, waits until every
chat has its first event, then reads this process's RSS. Memory per chat = (RSS at N - RSS before) / N.

    .venv/bin/python bench/harness_capacity.py --steps 500 1000 2000 4000
"""
from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness_throughput import start_sim  # noqa: E402
from harness.checker import Expectations  # noqa: E402
from harness.client import Session  # noqa: E402
from harness.events import DEFAULT_REQUIRED  # noqa: E402
from harness.profiles import load_profile  # noqa: E402
from harness.sinks import Sink  # noqa: E402
from harness.targets import Target  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def hold(url: str, n: int, think: float) -> tuple[int, float, float]:
    target = Target(url=url, profile=load_profile("netra"), name="cap", no_auth_user_param=True)
    exp = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=think + 30, first_event_limit=10)
    before = rss_mib()
    sessions = [Session(target, f"cap-{i}", "capacity", Sink(), connect_timeout=30) for i in range(n)]
    tasks = []
    for s in sessions:
        tasks.append(asyncio.ensure_future(s.chat(f"hold #think={think}", exp, settle=0)))
    deadline = time.monotonic() + 120
    # Poll until every chat has its first event (bounded); the benchmark's own condition wait.
    while time.monotonic() < deadline:
        open_chats = sum(1 for s in sessions for c in s.checker.chats if c.events)
        if open_chats >= n:
            break
        await asyncio.sleep(0.2)
    open_chats = sum(1 for s in sessions for c in s.checker.chats if c.events)
    after = rss_mib()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
    return open_chats, before, after


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    p.add_argument("--think", type=float, default=60.0)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    proc, url = start_sim(0)
    try:
        for n in args.steps:
            held, before, after = asyncio.run(hold(url, n, args.think))
            per = (after - before) * 1024 / max(held, 1)
            print(f"{n:6d} asked  {held:6d} open  RSS {before:7.1f} -> {after:7.1f} MiB  {per:6.1f} KiB per open chat",
                  flush=True)
            if held < n:
                break
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
