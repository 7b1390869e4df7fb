"""The harness's own delay: when chatprobe says an event arrived, against when agentsim wrote it to the socket.

agentsim (subprocess pinned to core 0, --no-auth, --ground-truth FILE) records every event it sends with its wall
time `t`, taken when the frame has been handed to the socket. chatprobe (this process, pinned to core 1) runs
N users with one chat each, all at once (the server thinks THINK seconds first, so N chats are open together),
and stamps each event with its monotonic receipt time; the offset between the two clocks (time.time() -
time.monotonic(), one machine) is read once. Added delay of an event = chatprobe's receipt time - agentsim's send
time; reported for the first event of every chat (what time_to_first_event measures) and for all events, p50/p99/max.

    .venv/bin/python bench/harness_delay.py --chats 1000 --rounds 3
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procs import agentsim_url  # noqa: E402
from harness.checker import ChatResult  # noqa: E402
from harness.profiles import load_profile  # noqa: E402
from harness.runner import run_scenario  # noqa: E402
from harness.scenario import Scenario  # noqa: E402
from harness.sinks import Sink  # noqa: E402
from harness.targets import Target  # noqa: E402


def start_sim(gt: Path, think: str) -> tuple[subprocess.Popen, str]:
    config = gt.with_suffix(".yaml")
    config.write_text("max_runs: 100000\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentsim", "--port", "0", "--no-auth", "--think", think, "--tool-latency", "0.01",
         "--ground-truth", str(gt), "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(proc.pid, {0})
    return proc, agentsim_url(proc)


class Keep(Sink):
    def __init__(self) -> None:
        self.results: list[ChatResult] = []

    def chat_finished(self, result: ChatResult) -> None:
        self.results.append(result)


def send_times(gt: Path) -> dict[tuple[str, int], float]:
    """(run id, seq) -> the wall time agentsim handed that event to the socket, from its ground truth."""
    sent = {}
    for line in gt.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "event":
            sent[(rec["run_id"], rec["seq"])] = rec["t"]
    return sent


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def one_round(url: str, chats: int, ramp_up: float) -> list[ChatResult]:
    scenario = Scenario.model_validate({"name": "delay", "users": chats, "chats_per_user": 1, "message": "what is 6*7",
                                        "ramp_up": ramp_up,
                                        "connect_timeout": "60s", "expect": {"deadline": "120s", "settle": 0,
                                                                             "first_event_limit": "60s"}})
    target = Target(url=url, profile=load_profile("netra"), name="delay", no_auth_user_param=True)
    keep = Keep()
    run = await run_scenario(scenario, target, keep)
    if run.stats.outcomes["passed"] != chats:
        raise SystemExit(f"not every chat passed: {run.stats.to_dict()}")
    return keep.results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chats", type=int, default=1000, help="concurrent chats, one connection each")
    p.add_argument("--think", default="3-5", help="agentsim's think time (s or lo-hi), so every chat is open at once")
    p.add_argument("--ramp-up", type=float, default=2.0, help="seconds over which the users connect")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--uvloop", action="store_true", help="run chatprobe on uvloop's event loop")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.uvloop:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    firsts_all: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            gt = Path(tmp) / f"gt-{r}.jsonl"
            proc, url = start_sim(gt, args.think)
            if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
                os.sched_setaffinity(0, {1})
            try:
                results = asyncio.run(one_round(url, args.chats, args.ramp_up))
            finally:
                proc.terminate()
                proc.wait(10)
            offset = time.time() - time.monotonic()
            sent = send_times(gt)
            firsts, every = [], []
            for res in results:
                for i, ev in enumerate(res.events):
                    t = sent.get((ev.run_id, ev.seq))
                    if t is None:
                        continue
                    delay = (ev.received_at + offset - t) * 1000
                    every.append(delay)
                    if i == 0:
                        firsts.append(delay)
            firsts_all += firsts
            print(f"round {r + 1}: {len(firsts)} chats; first event added delay p50 {pct(firsts, 50):.2f} ms, "
                  f"p99 {pct(firsts, 99):.2f} ms, max {max(firsts):.2f} ms; all {len(every)} events p50 "
                  f"{pct(every, 50):.2f} ms, p99 {pct(every, 99):.2f} ms", flush=True)
    print(f"all rounds, first events: p50 {statistics.median(firsts_all):.2f} ms, p99 {pct(firsts_all, 99):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
