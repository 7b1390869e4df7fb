"""The highest arrival rate (new chats per second, open model) one chatprobe process sustains with every chat
validated: each rate held for --seconds by `run_scenario`'s open model against agentsim in its own process.

agentsim runs in a subprocess pinned to core 0 with the embedded server's latencies (think 5-30 ms per thinking
step, tool 2-10 ms: a chat takes ~60 ms, 8 events); the harness runs in this process pinned to core 1. A rate is
sustained when the load generator began at least 97% of the chats on time (within 0.1 s of due), none was dropped
(max_in_flight 5,000), and every chat passed every rule (so every first event, counted from when the chat was due,
came within 2 s). Each rate is a fresh run; the search stops after two rates in a row fail.

    .venv/bin/python bench/arrival_rate.py --rates 250 500 750 1000 1250 1500 --seconds 10
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.events import Outcome  # noqa: E402
from harness.profiles import load_profile  # noqa: E402
from harness.runner import run_scenario  # noqa: E402
from harness.scenario import Scenario  # noqa: E402
from harness.targets import Target  # noqa: E402

MESSAGE = "What is 17 * 23? Then look up the capital of France."


def start_sim(core: int, think: str, tool_latency: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentsim", "--port", "0", "--no-auth", "--think", think, "--tool-latency",
         tool_latency, "--seed", "1"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(proc.pid, {core})
    line = proc.stdout.readline() if proc.stdout else ""
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"agentsim did not start: {line!r}")
    return proc, line.split("listening on", 1)[1].strip()


async def hold(url: str, rate: float, seconds: float) -> dict:
    scenario = Scenario.model_validate({
        "name": "bench", "arrival_rate": rate, "duration": seconds, "max_in_flight": 5000, "message": MESSAGE,
        "expect": {"deadline": "10s"}, "max_duration": seconds + 30,
    })
    target = Target(url=url, profile=load_profile("netra"), name="bench", no_auth_user_param=True)
    c0, t0 = time.process_time(), time.perf_counter()
    run = await run_scenario(scenario, target)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    stage = run.stages[0]
    asked = rate * seconds
    on_time = (stage.achieved_rate or 0) / rate
    passed = run.stats.outcomes[Outcome.PASSED]
    ok = on_time >= 0.97 and run.stats.dropped == 0 and passed == run.stats.chats == round(asked)
    return {"rate": rate, "chats": run.stats.chats, "passed": passed, "dropped": run.stats.dropped,
            "on_time": on_time, "late": stage.late, "lag_max": stage.lag_max, "p50": run.stats.ttfe["p50"],
            "p95": run.stats.ttfe["p95"], "p99": run.stats.ttfe["p99"], "cpu": cpu / wall, "ok": ok,
            "violations": dict(run.stats.violations)}


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", type=float, nargs="+", default=[250, 500, 750, 1000, 1250, 1500])
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--think", default="0.005-0.03")
    p.add_argument("--tool-latency", default="0.002-0.01")
    p.add_argument("--uvloop", action="store_true", help="on uvloop's event loop, as chatprobe run runs where installed")
    args = p.parse_args()
    proc, url = start_sim(0, args.think, args.tool_latency)
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    best = None
    fails = 0
    if args.uvloop:
        import uvloop
        run = uvloop.run
    else:
        run = asyncio.run
    print("| asked chats/s | chats | passed | dropped | on time | late (max lag) | first event p50 / p95 / p99 ms "
          "| harness CPU | sustained |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    try:
        for rate in args.rates:
            r = run(hold(url, rate, args.seconds))
            print(f"| {rate:g} | {r['chats']:,} | {r['passed']:,} | {r['dropped']:,} | {r['on_time'] * 100:.1f}% "
                  f"| {r['late']:,} ({r['lag_max']:.2f} s) | {ms(r['p50'])} / {ms(r['p95'])} / {ms(r['p99'])} "
                  f"| {r['cpu'] * 100:.0f}% | {'yes' if r['ok'] else 'no'}"
                  + (f" {r['violations']}" if r["violations"] else "") + " |", flush=True)
            if r["ok"]:
                best, fails = rate, 0
            else:
                fails += 1
                if fails == 2:
                    break
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"highest arrival rate sustained with every chat validated: {best:g} chats/s" if best is not None
          else "no rate was sustained")
    return 0


if __name__ == "__main__":
    sys.exit(main())
