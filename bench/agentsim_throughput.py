"""Chats per second agentsim serves on one CPU core with zero think time and tool latency, and its CPU per chat.

Starts ``python -m agentsim`` in a subprocess pinned to one core (os.sched_setaffinity), drives it from
this process (pinned to the other cores when there are any) with N raw websockets clients, each doing
chats one after another until a fixed total is done, and prints the median chats/s and the server's own CPU per
chat (user+system from /proc/PID/stat, Linux) of the rounds. The client is one Python process and may be the
bottleneck of chats/s; the CPU per chat is the server's cost whoever drives it.

``--baseline REV`` runs agentsim as it was at git revision REV (its ``agentsim/`` from ``git archive``) in
alternate rounds with today's, against the same client, and prints both and the ratio.

    .venv/bin/python bench/agentsim_throughput.py --clients 50 --chats 5000 --rounds 3 [--baseline 1440c1c]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
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


def cpu_of(pid: int) -> float | None:
    """User+system CPU seconds of a live process (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def baseline_tree(rev: str, into: Path) -> Path:
    """agentsim/ as it was at `rev`, unpacked under `into` (git archive: the tree, not the working copy)."""
    archive = into / "agentsim.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "archive", rev, "agentsim"], cwd=ROOT, stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def start(source: Path, server_core: int) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "agentsim", "--port", "0", "--no-auth", "--think", "0", "--tool-latency", "0"]
    env = dict(os.environ, PYTHONPATH=str(source))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=str(source),
                            preexec_fn=lambda: os.sched_setaffinity(0, {server_core}))
    line = proc.stdout.readline()
    if not line.startswith("agentsim listening on "):
        proc.kill()
        raise SystemExit(f"agentsim did not start: {line!r}")
    return proc, line.split()[-1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--chats", type=int, default=5000, help="chats per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--baseline", metavar="REV", help="also run agentsim as of this git revision, in alternate rounds")
    args = p.parse_args()

    cores = sorted(os.sched_getaffinity(0))
    server_core = args.server_core if args.server_core in cores else cores[0]
    client_cores = [c for c in cores if c != server_core] or cores
    os.sched_setaffinity(0, set(client_cores))
    with tempfile.TemporaryDirectory() as tmp:
        sources = {"today": ROOT}
        if args.baseline:
            sources[f"at {args.baseline}"] = baseline_tree(args.baseline, Path(tmp))
        rates: dict[str, list[float]] = {name: [] for name in sources}
        cpus: dict[str, list[float]] = {name: [] for name in sources}
        for r in range(args.rounds):
            for name, source in sources.items():
                proc, url = start(source, server_core)
                try:
                    c0 = cpu_of(proc.pid)
                    rate = asyncio.run(drive(url, args.clients, args.chats))
                    c1 = cpu_of(proc.pid)
                finally:
                    proc.terminate()
                    proc.wait(10)
                rates[name].append(rate)
                line = f"round {r + 1} {name:>14s}: {rate:.0f} chats/s"
                if c0 is not None and c1 is not None:
                    cpus[name].append((c1 - c0) / args.chats)
                    line += f", server CPU {cpus[name][-1] * 1e6:.0f} us/chat"
                print(line, flush=True)
    print(json.dumps({"server_core": server_core, "client_cores": client_cores, "clients": args.clients,
                      "chats_per_round": args.chats, "rounds": {k: [round(x) for x in v] for k, v in rates.items()}}))
    for name in sources:
        line = f"median {name:>14s}: {statistics.median(rates[name]):.0f} chats/s"
        if cpus[name]:
            line += f", server CPU {statistics.median(cpus[name]) * 1e6:.0f} us/chat"
        print(line + " (agentsim on one core, think 0, tool latency 0)")
    if args.baseline and all(cpus.values()):
        today, base = (statistics.median(v) for v in cpus.values())
        print(f"server CPU per chat today / at {args.baseline}: {today / base:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
