"""Chats per second agentsim serves on one CPU core with zero think time and tool latency.

Starts ``python -m agentsim`` in a subprocess pinned to one core (os.sched_setaffinity), drives it from
this process (pinned to the other cores when there are any) with N raw websockets clients, each doing
chats one after another until a fixed total is done, and prints the median chats/s of 3 rounds.

    .venv/bin/python bench/agentsim_throughput.py --clients 50 --chats 5000 --rounds 3
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


async def drive(url: str, clients: int, chats: int) -> float:
    remaining = chats
    conns = [await websockets.connect(f"{url}?user=bench-{i}", open_timeout=10, compression=None)
             for i in range(clients)]
    for ws in conns:
        await ws.recv()  # welcome

    async def client(ws) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await ws.send('{"type":"user_message","payload":{"content":"what is 6*7"}}')
            while True:
                raw = await ws.recv()
                if '"agent_completed"' in raw:
                    break

    t0 = time.perf_counter()
    async with asyncio.timeout(600):
        await asyncio.gather(*(client(ws) for ws in conns))
    elapsed = time.perf_counter() - t0
    for ws in conns:
        await ws.close()
    return chats / elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--chats", type=int, default=5000, help="chats per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--server-core", type=int, default=0)
    args = p.parse_args()

    cores = sorted(os.sched_getaffinity(0))
    server_core = args.server_core if args.server_core in cores else cores[0]
    client_cores = [c for c in cores if c != server_core] or cores
    cmd = [sys.executable, "-m", "agentsim", "--port", "0", "--no-auth", "--think", "0", "--tool-latency", "0"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=str(ROOT),
                            preexec_fn=lambda: os.sched_setaffinity(0, {server_core}))
    try:
        line = proc.stdout.readline()
        if not line.startswith("agentsim listening on "):
            print(f"agentsim did not start: {line!r}", file=sys.stderr)
            return 1
        url = line.split()[-1]
        os.sched_setaffinity(0, set(client_cores))
        rates = []
        for r in range(args.rounds):
            rate = asyncio.run(drive(url, args.clients, args.chats))
            rates.append(rate)
            print(f"round {r + 1}: {rate:.0f} chats/s")
        print(json.dumps({"server_core": server_core, "client_cores": client_cores, "clients": args.clients,
                          "chats_per_round": args.chats, "rounds": [round(x) for x in rates]}))
        print(f"median: {statistics.median(rates):.0f} chats/s (agentsim on one core, think 0, tool latency 0)")
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
