"""How many concurrent chats chatprobe holds open on this machine, and its memory per open chat.

agentsim (subprocess, --no-auth) is told `#think=SECONDS` so every run stays open after agent_started.
chatprobe opens N connections through its real Session, each with one chat in flight, waits until every
chat has its first event, then reads this process's RSS. Memory per chat = (RSS at N - RSS before) / N.
With --runner the chats are played by run_scenario, as `chatprobe run` plays them (N users of one chat each,
started over N / 1000 seconds): the virtual user's own objects (its script, its coroutines) count too.

With --census the chats are played by run_scenario on uvloop (as `chatprobe run` plays them) under tracemalloc: the
Python heap held by the run at the first and at the second of --steps, each relative to a warm-up's, so the figure is
what each further open chat adds in Python allocations, and the allocation sites that add most. Unlike RSS it does not
move with the machine's load or the allocator's fragmentation (C allocations of the libraries, libuv's handles, the
kernel's socket buffers are not in it): the figure to compare two trees by.

With --cli it is `chatprobe run` itself, in a process of its own with every sink the command has (the live view, the
collector of results), on the loop it picks (uvloop where installed): a scenario of N users of one held chat each, run
once with --base users and once with N; the process's RSS is read once it holds N sockets and its RSS has stopped
growing for a second (its first events arrived), and the memory per open chat is the difference of the two RSS
divided by the difference of the chats, so the interpreter, the imports and everything a run holds once are not
counted, only what each further open chat adds.

    .venv/bin/python bench/harness_capacity.py --steps 500 1000 2000 4000 [--uvloop] [--runner | --cli]
    .venv/bin/python bench/harness_capacity.py --census --steps 1000 3000
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procs import agentsim_url  # noqa: E402
from harness.checker import Expectations  # noqa: E402
from harness.client import Session  # noqa: E402
from harness.events import DEFAULT_REQUIRED, Event, Role  # noqa: E402
from harness.flow import ChatOptions  # noqa: E402
from harness.profiles import load_profile  # noqa: E402
from harness.runner import run_scenario  # noqa: E402
from harness.scenario import Scenario  # noqa: E402
from harness.sinks import Sink  # noqa: E402
from harness.targets import Target  # noqa: E402

HOLD = ChatOptions(settle=0)


def start_sim(core: int, tmp: Path, jwt_secret: str | None = None) -> tuple[subprocess.Popen, str]:
    """agentsim on core `core`, allowed to hold every run of the benchmark (max_runs from a config): --no-auth, or
    with `jwt_secret` checking a JWT per connection, as `chatprobe run`'s embedded server does (each user its own)."""
    config = tmp / "sim.yaml"
    config.write_text("max_runs: 100000\n" + (f"jwt_secret: {jwt_secret}\n" if jwt_secret else ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentsim", "--port", "0", *([] if jwt_secret else ["--no-auth"]), "--think", "0",
         "--tool-latency", "0", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        cwd=ROOT)
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(proc.pid, {core})
    return proc, agentsim_url(proc)


def rss_mib(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def hold(url: str, n: int, think: float, bound: float, wave: int) -> tuple[int, float, float]:
    target = Target(url=url, profile=load_profile("netra"), name="cap", no_auth_user_param=True)
    exp = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=think + 30, first_event_limit=10)
    before = rss_mib()
    sink = Sink()  # one for every session, as `chatprobe run` has
    sessions = [Session(target, f"cap-{i}", "capacity", sink, connect_timeout=30) for i in range(n)]
    tasks: list[asyncio.Future] = []
    deadline = time.monotonic() + bound

    def opened() -> int:
        return sum(1 for s in sessions for c in s.checker.chats if c.events)

    # Connections open in waves of `wave` (a listen backlog overflowing makes SYNs wait out retransmission timers,
    # which is the kernel's limit, not the harness's); each wave waits until its chats have their first event.
    for start in range(0, n, wave):
        for s in sessions[start:start + wave]:
            tasks.append(asyncio.ensure_future(s.chat(f"hold #think={think}", exp, HOLD)))
        # Poll until the wave's chats have their first event (bounded); the benchmark's own condition wait.
        while time.monotonic() < deadline and opened() < len(tasks):
            await asyncio.sleep(0.1)
    open_chats = opened()
    after = rss_mib()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
    return open_chats, before, after


class FirstEvents(Sink):
    """Counts the chats that have their first event (agent_started)."""

    def __init__(self) -> None:
        self.started = 0

    def event_received(self, scenario: str, event: Event) -> None:
        if event.role is Role.AGENT_STARTED:
            self.started += 1


def hold_scenario(n: int, think: float) -> dict[str, Any]:
    """N users of one chat each that agentsim holds open `think` seconds after its first event, started over N / 1000
    seconds: what --runner plays and --cli hands to `chatprobe run`."""
    return {"name": "cap", "users": n, "chats_per_user": 1, "message": f"hold #think={think:g}", "ramp_up": f"{n / 1000:g}s",
            "connect_timeout": "30s", "max_duration": f"{think + 60:g}s",
            "expect": {"deadline": f"{think + 30:g}s", "first_event_limit": "10s", "settle": "0s"}}


async def hold_run(url: str, n: int, think: float, bound: float) -> tuple[int, float, float]:
    """N users of one held chat each, played by run_scenario (the `chatprobe run` path)."""
    scenario = Scenario.model_validate(hold_scenario(n, think))
    target = Target(url=url, profile=load_profile("netra"), name="cap", no_auth_user_param=True)
    counter = FirstEvents()
    stop = asyncio.Event()
    before = rss_mib()
    task = asyncio.ensure_future(run_scenario(scenario, target, counter, stop=stop))
    deadline = time.monotonic() + bound
    # Poll until every chat has its first event (bounded); the benchmark's own condition wait.
    while time.monotonic() < deadline and counter.started < n and not task.done():
        await asyncio.sleep(0.1)
    open_chats = counter.started
    after = rss_mib()
    stop.set()
    await asyncio.gather(task, return_exceptions=True)
    return open_chats, before, after


def census(url: str, steps: list[int], think: float, bound: float, top: int = 25) -> None:
    """Marginal Python heap per held chat through run_scenario on uvloop, between steps[0] and steps[1] (tracemalloc,
    one frame per site)."""
    import gc
    import tracemalloc

    import uvloop

    if len(steps) != 2 or steps[1] <= steps[0]:
        raise SystemExit("--census needs two --steps, the second larger")

    async def held(n: int) -> tuple[int, tracemalloc.Snapshot]:
        scenario = Scenario.model_validate(hold_scenario(n, think))
        target = Target(url=url, profile=load_profile("netra"), name="cap", no_auth_user_param=True)
        counter, stop = FirstEvents(), asyncio.Event()
        task = asyncio.ensure_future(run_scenario(scenario, target, counter, stop=stop))
        deadline = time.monotonic() + bound
        # Poll until every chat has its first event (bounded); the benchmark's own condition wait.
        while time.monotonic() < deadline and counter.started < n and not task.done():
            await asyncio.sleep(0.1)
        gc.collect()
        snap, got = tracemalloc.take_snapshot(), counter.started
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        return got, snap

    def total(snap: tracemalloc.Snapshot) -> int:
        return sum(st.size for st in snap.statistics("filename"))

    tracemalloc.start(1)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(held(50))  # warm-up: imports, the decoder's compilation, the loop's own objects
        gc.collect()
        base = total(tracemalloc.take_snapshot())
        (na, sa), (nb, sb) = runner.run(held(steps[0])), runner.run(held(steps[1]))
    if na < steps[0] or nb < steps[1]:
        raise SystemExit(f"held {na} of {steps[0]} and {nb} of {steps[1]}: no figure")
    per = ((total(sb) - base) - (total(sa) - base)) / (nb - na)
    print(f"held {na} and {nb} chats: {per:,.0f} B of Python heap per further open chat ({per / 1024:.2f} KiB)")
    for st in sb.compare_to(sa, "lineno")[:top]:
        if st.size_diff / (nb - na) >= 8:
            frame = st.traceback[0]
            print(f"  {st.size_diff / (nb - na):7.0f} B  {st.count_diff / (nb - na):5.2f} objects  "
                  f"{os.path.relpath(frame.filename, ROOT) if frame.filename.startswith(str(ROOT)) else frame.filename}"
                  f":{frame.lineno}")


def open_sockets(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


def hold_cli(url: str, secret: str, n: int, think: float, bound: float, tmp: Path,
             extra: int = 0) -> tuple[int, float]:
    """`chatprobe run` holding N chats (one user each): (sockets it held, its RSS in MiB then); `extra`: the sockets
    it holds besides its chats' (its event loop's own), which the wait for N chats counts on top."""
    scenario = tmp / f"cap-{n}.yaml"
    scenario.write_text(yaml.safe_dump(hold_scenario(n, think)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["CHATPROBE_JWT_SECRET"] = secret  # a token minted per user, as against the embedded server
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(scenario), "--target", url, "-q"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + bound
        held, rss, steady_since = 0, 0.0, time.monotonic()
        # Poll (bounded) until the process holds every socket and its RSS has not grown for a second.
        while time.monotonic() < deadline and proc.poll() is None:
            held = open_sockets(proc.pid)
            now_rss = rss_mib(proc.pid)
            if now_rss > rss + 0.05 or held < n + extra:
                rss, steady_since = max(rss, now_rss), time.monotonic()
            elif time.monotonic() - steady_since >= 1.0:
                break
            time.sleep(0.1)  # the benchmark's own poll interval
        return held, rss
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    p.add_argument("--think", type=float, default=300.0)
    p.add_argument("--bound", type=float, default=240.0, help="seconds to wait for every chat's first event")
    p.add_argument("--wave", type=int, default=500, help="connections opened at once")
    p.add_argument("--uvloop", action="store_true", help="on uvloop's event loop, as chatprobe run runs where installed")
    p.add_argument("--runner", action="store_true", help="the chats played by run_scenario, as chatprobe run does")
    p.add_argument("--cli", action="store_true", help="the chats held by a `chatprobe run` process of its own")
    p.add_argument("--base", type=int, default=100, help="with --cli: the users of the run the others are compared with")
    p.add_argument("--census", action="store_true",
                   help="tracemalloc's Python heap per further held chat between the two --steps (run_scenario, uvloop)")
    args = p.parse_args()
    # One socket per chat on each side: the soft open-file limit up to the hard one (20,000 here), for this process
    # and for agentsim, which inherits it.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = tempfile.TemporaryDirectory()
    secret = secrets.token_hex(16) if args.cli else None
    proc, url = start_sim(0, Path(tmp.name), secret)
    try:
        if args.census:
            census(url, args.steps, args.think, args.bound)
            return 0
        if args.cli:
            assert secret is not None
            base_held, base_rss = hold_cli(url, secret, args.base, args.think, args.bound, Path(tmp.name))
            if base_held < args.base or base_rss <= 0:
                raise SystemExit(f"the base run of {args.base} users held {base_held} sockets: no figure")
            extra = base_held - args.base  # the loop's own sockets (e.g. its wake-up pair), counted in every run
            for n in args.steps:
                sim_before = rss_mib(proc.pid)
                held, rss = hold_cli(url, secret, n, args.think, args.bound, Path(tmp.name), extra)
                held -= extra
                per = (rss - base_rss) * 1024 / max(n - args.base, 1)
                print(f"{n:6d} asked  {held:6d} held  chatprobe run RSS {base_rss:7.1f} MiB with {args.base} -> "
                      f"{rss:7.1f} MiB with {n}  {per:6.1f} KiB per further open chat  (agentsim {sim_before:.1f} MiB "
                      f"-> {rss_mib(proc.pid):.1f} MiB)", flush=True)
                if held < n:
                    break
            return 0
        for n in args.steps:
            sim_before = rss_mib(proc.pid)
            coro = (hold_run(url, n, args.think, args.bound) if args.runner
                    else hold(url, n, args.think, args.bound, args.wave))
            if args.uvloop:
                import uvloop

                held, before, after = uvloop.run(coro)
            else:
                held, before, after = asyncio.run(coro)
            sim_after = rss_mib(proc.pid)
            per = (after - before) * 1024 / max(held, 1)
            print(f"{n:6d} asked  {held:6d} open  RSS {before:7.1f} -> {after:7.1f} MiB  {per:6.1f} KiB per open chat"
                  f"  (agentsim {sim_before:.1f} -> {sim_after:.1f} MiB)", flush=True)
            if held < n:
                break
    finally:
        proc.terminate()
        proc.wait(10)
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
