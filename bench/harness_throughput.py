"""Chats per CPU-second of chatprobe's runner (full checking) next to a bare websockets client doing the
same exchange with no checking, in the same command, against agentsim with zero think time.

agentsim runs in a subprocess pinned to core 0; the clients run in this process pinned to core 1. CPU
time is this process's own (time.process_time), so the server's work is not counted. Rounds alternate
bare / chatprobe; the ratio of medians is what to compare across machines.

    .venv/bin/python bench/harness_throughput.py --chats 3000 --concurrency 50 --rounds 5
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.profiles import load_profile  # noqa: E402
from harness.runner import run_scenario  # noqa: E402
from harness.scenario import Scenario  # noqa: E402
from harness.targets import Target  # noqa: E402

MESSAGE = "what is 6*7"


def start_sim(core: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentsim", "--port", "0", "--no-auth", "--think", "0", "--tool-latency", "0"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:
        os.sched_setaffinity(proc.pid, {core})
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"agentsim did not start: {line!r}")
    return proc, line.split("listening on", 1)[1].strip()


async def bare(url: str, chats: int, concurrency: int) -> tuple[float, float]:
    """The same exchange with no decoding beyond finding the terminal frame: the floor of client cost."""
    per_conn = chats // concurrency
    conns = [await websockets.connect(f"{url}?user=bare-{i}", compression=None, ping_interval=None)
             for i in range(concurrency)]
    for ws in conns:
        await ws.recv()
    request = json.dumps({"type": "user_message", "payload": {"content": MESSAGE, "message_id": "m"}})

    async def one(ws) -> None:
        for _ in range(per_conn):
            await ws.send(request)
            while '"agent_completed"' not in await ws.recv():
                pass

    c0, t0 = time.process_time(), time.perf_counter()
    async with asyncio.timeout(600):
        await asyncio.gather(*(one(ws) for ws in conns))
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    for ws in conns:
        await ws.close()
    return per_conn * concurrency / cpu, per_conn * concurrency / wall


async def chatprobe(url: str, chats: int, concurrency: int) -> tuple[float, float]:
    scenario = Scenario.model_validate({
        "name": "bench", "users": concurrency, "chats_per_user": chats // concurrency, "message": MESSAGE,
        "expect": {"settle": 0, "deadline": "60s"},
    })
    target = Target(url=url, profile=load_profile("netra"), name="bench", no_auth_user_param=True)
    c0, t0 = time.process_time(), time.perf_counter()
    run = await run_scenario(scenario, target)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    if run.stats.outcomes["passed"] != run.stats.chats:
        raise SystemExit(f"benchmark chats did not all pass: {run.stats.to_dict()}")
    return run.stats.chats / cpu, run.stats.chats / wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chats", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    proc, url = start_sim(0)
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    try:
        rows = {"bare": [], "chatprobe": []}
        for r in range(args.rounds):
            for name, fn in (("bare", bare), ("chatprobe", chatprobe)):
                per_cpu, per_wall = asyncio.run(fn(url, args.chats, args.concurrency))
                rows[name].append(per_cpu)
                print(f"round {r + 1} {name:9s} {per_cpu:8.0f} chats/CPU-s  {per_wall:7.0f} chats/s wall", flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
    mb, mc = statistics.median(rows["bare"]), statistics.median(rows["chatprobe"])
    print(f"median bare      {mb:8.0f} chats per CPU-second")
    print(f"median chatprobe {mc:8.0f} chats per CPU-second")
    print(f"chatprobe costs {mb / mc:.2f}x the CPU of a bare client per chat")
    return 0


if __name__ == "__main__":
    sys.exit(main())
