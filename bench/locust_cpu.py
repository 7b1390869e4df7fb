"""CPU per chat of chatprobe's Locust user: Locust headless for a fixed time against agentsim, CPU / chats.

agentsim (--no-auth, zero think and tool time) runs pinned to core 0; `locust -f scenarios/locustfile.py --headless`
runs pinned to core 1 with USERS users for RUN_TIME, playing a scenario of back-to-back chats (no think time); its
CPU is the Locust process's own user+system time (RUSAGE_CHILDREN around it, start-up included) and its chats
are the `chat` requests in Locust's stats CSV (every one judged by chatprobe's rules). The scenario has no think
time, so each user overlaps its chats' settle windows as `chatprobe run` does (since 534a4dc; before, every chat
waited out its 0.1 s window, ≈10 chats/s per user). Rounds are repeated; the median is printed. Nothing is asserted.

    .venv/bin/python bench/locust_cpu.py --users 50 --run-time 20 --rounds 3
    .venv/bin/python bench/locust_cpu.py --sse      # an AG-UI server over HTTP + SSE (agentsim --protocol ag-ui)
"""
from __future__ import annotations

import argparse
import csv
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.vs_k6 import pin, start_sim  # noqa: E402


def chats_in(stats_csv: Path) -> tuple[int, int]:
    """(chat requests, failed ones) from Locust's stats CSV."""
    with stats_csv.open() as f:
        for row in csv.DictReader(f):
            if row["Type"] == "chat" and row["Name"] != "Aggregated":
                return int(row["Request Count"]), int(row["Failure Count"])
    return 0, 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--run-time", type=int, default=20, help="seconds of load per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sse", action="store_true", help="AG-UI over HTTP + SSE (each chat a POST and its stream), "
                                                      "not netra over a WebSocket")
    args = p.parse_args()
    locust = Path(sys.executable).with_name("locust")
    per_chat: list[float] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        scenario = tmp / "locust_cpu.yaml"
        scenario.write_text('name: locust_cpu\nusers: 1\nchats_per_user: 50\nmessage: "what is 6*7"\n'
                            "expect:\n  deadline: 60s\n")
        proc, url = start_sim("none", ["--protocol", "ag-ui"] if args.sse else None)
        profile = ["--chatprobe-profile", "ag-ui"] if args.sse else []
        try:
            for r in range(args.rounds):
                prefix = tmp / f"r{r}"
                cmd = [str(locust), "-f", str(ROOT / "scenarios" / "locustfile.py"), "--headless", "-u",
                       str(args.users), "-r", str(args.users), "--run-time", f"{args.run_time}s", "--host", url,
                       "--chatprobe-scenario", str(scenario), "--chatprobe-auth", "none", "--csv", str(prefix),
                       "--only-summary", "--stop-timeout", "5", *profile]
                ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.run_time + 120,
                                      preexec_fn=pin(1))
                wall = time.perf_counter() - t0
                ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
                chats, failed = chats_in(prefix.with_name(prefix.name + "_stats.csv"))
                if not chats:
                    raise SystemExit(f"no chats counted (exit {done.returncode}): {done.stderr.strip()[-400:]}")
                per_chat.append(cpu / chats)
                print(f"round {r + 1}: {chats} chats ({failed} failed, {chats / args.run_time:.0f}/s) in {wall:.1f} s "
                      f"wall, CPU {cpu:.2f} s = {cpu / chats * 1e6:.0f} us per chat", flush=True)
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"median CPU per chat under Locust: {statistics.median(per_chat) * 1e6:.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
