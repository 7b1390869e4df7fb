"""Where `chatprobe run`'s CPU goes on bench/vs_k6.py's workload: a cProfile of the real CLI, each function's own
time put in a named bucket, next to the CPU of the same run without the profiler.

agentsim starts as bench/vs_k6.py starts it (--no-auth, zero think time and tool latency, pinned to core 0); the
client is `chatprobe run` on the same scenario (USERS connections x CHATS chats of 8 events), each run its own
process pinned to core 1: first --rounds times without the profiler (CPU = the process's user+system time, os.wait4
via RUSAGE_CHILDREN; medians), then once under cProfile. Every chat must pass, or the command stops.

The client is `harness.cli.main`, as `python -m harness` runs it, in a small `python -c` wrapper (CHILD) that notes
the process's CPU time at its first `socket.connect` (an audit event, sys.addaudithook; the hook sees ~5,000 events
in a run, well under a millisecond) or, on uvloop (which connects in C, with no audit event), when the wrapper's
stand-in for harness.runner.run_scenario is called, just before the first connection (the product is not changed).
That splits the start-up off:
everything before the first connection (the interpreter's start, imports, module top levels, pydantic models,
argument parsing, scenario and profile loading, the event loop's start) is "start-up", measured without the
profiler, and profiled by one cProfile.Profile that hands over to a second one at the first connect. The rest of
the run (shutdown and report included) is bucketed by file and function name (bucket_of). A C function that no rule
names, such as `dict.get` or `len`, takes the buckets of its callers, split by the time spent under each caller
(pstats keeps it per call edge). cProfile does not see picows' Cython methods: their time counts in the Python
function that called them (asyncio's `_read_ready__get_buffer` reading and parsing frames: event loop; the
transport's `send_now`: client/session).

The profiler counts CPU time (time.process_time), not wall: the loop's idle epoll waits cost nothing. It slows many
small Python calls more than C code, so the table gives the profiled seconds and shares, then an estimate without
the profiler: start-up as measured; every other bucket its share of the profiled run times the unprofiled CPU after
the first connect. Nothing is asserted.

    .venv/bin/python bench/profile_chat.py [--rounds 3] [--json FILE] [--save DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import statistics
import sys
import sysconfig
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.vs_k6 import PY, Children, measure, scenario_file, start_sim, validated  # noqa: E402

# The client: harness.cli.main as `python -m harness` runs it (harness/__main__.py), in a `python -c` wrapper that
# notes the process's CPU time at the first socket.connect. argv: MODE OUT chatprobe-args... MODE "time" writes that
# CPU time to OUT; MODE "profile" also profiles (CPU time, not wall: the loop's idle epoll waits are no cost) with one
# cProfile.Profile until then and another after it, and writes OUT.startup and OUT.run.
CHILD = """\
import sys, time
mode, out, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
first_connect = []
if mode == "profile":
    import cProfile
    startup, run = cProfile.Profile(time.process_time), cProfile.Profile(time.process_time)
def split():
    if not first_connect:
        first_connect.append(time.process_time())
        if mode == "profile":
            startup.disable()
            run.enable()
def split_at_first_connect(event, args):
    if event == "socket.connect":
        split()
sys.addaudithook(split_at_first_connect)
rc = 1
if mode == "profile":
    startup.enable()
try:
    # On uvloop (chatprobe's loop where installed) connections are made in C, with no socket.connect audit event:
    # the run's start (run_scenario, just before the first connection) is the split there.
    import harness.runner
    play = harness.runner.run_scenario
    def run_scenario(*args, **kwargs):
        split()
        return play(*args, **kwargs)
    harness.runner.run_scenario = run_scenario
    from harness.cli import main
    rc = main(argv)
except SystemExit as exc:
    rc = exc.code if isinstance(exc.code, int) else 1
finally:
    if mode == "profile":
        startup.disable()
        run.disable()
        startup.dump_stats(out + ".startup")
        run.dump_stats(out + ".run")
    with open(out, "w") as f:
        f.write(repr(first_connect[0] if first_connect else -1.0))
sys.exit(rc)
"""

# The buckets; bucket_of holds the rules. The generated decoder's filename is what Decoder._compile passes to
# compile() (harness/profiles.py): "<decoder of profile 'NAME'>".
DECODER_FILE = "<decoder of profile "
STARTUP = "start-up (before the first connect)"
DECODE = "decode (profiles.py, generated decoder, orjson/json)"
CHECKER = "checker (checker.py, payload_checks.py)"
FLOW = "flow/routing (flow.py, events.py)"
CLIENT = "client/session (client.py, runner.py, targets.py, transports/)"
VERDICT = "verdict/stats/sinks/report"
LOOP = "event loop + picows + sockets"
OTHER = "other"
BUCKET_ORDER = (STARTUP, DECODE, CHECKER, FLOW, CLIENT, VERDICT, LOOP, OTHER)

HARNESS_FILES = {
    "profiles.py": DECODE,
    "checker.py": CHECKER, "payload_checks.py": CHECKER,
    "flow.py": FLOW, "events.py": FLOW,
    "client.py": CLIENT, "runner.py": CLIENT, "targets.py": CLIENT,
    "results.py": VERDICT, "stats.py": VERDICT, "sinks.py": VERDICT, "report.py": VERDICT, "html_report.py": VERDICT,
    "redact.py": VERDICT, "safefile.py": VERDICT,
}
# C functions by a piece of their name (cProfile names them like "<built-in method orjson.loads>" or
# "<method 'recv' of '_socket.socket' objects>").
C_NAMES = (
    ("orjson", DECODE), ("_json", DECODE), ("json.", DECODE),
    ("picows", LOOP), ("_socket", LOOP), ("select.", LOOP), ("_asyncio", LOOP), ("_contextvars", LOOP),
    ("_heapq", LOOP), ("_selectors", LOOP),
)


def bucket_of(func: tuple[str, int, str]) -> str | None:
    """The bucket a function's own time belongs to by its file and name; None for a helper that takes its callers'
    buckets: a C function no rule names, or a standard library function outside asyncio, selectors, socket and json
    (`collections.Counter`, `abc`, a dataclass's or namedtuple's generated `__init__` in "<string>")."""
    filename, _, name = func
    path = filename.replace(os.sep, "/")
    if path.startswith(DECODER_FILE):
        return DECODE
    if path == "~":
        for piece, bucket in C_NAMES:
            if piece in name:
                return bucket
        return None
    parts = path.split("/")
    rest = harness_part(Path(filename))
    if rest is not None:
        if rest[:1] == ("transports",):
            return CLIENT
        return HARNESS_FILES.get(rest[-1], OTHER)
    if "picows" in parts or "asyncio" in parts or parts[-1] in ("selectors.py", "socket.py"):
        return LOOP
    if "json" in parts or "orjson" in parts:
        return DECODE
    if path.startswith("<") or (Path(filename).is_relative_to(STDLIB) and "site-packages" not in parts):
        return None
    return OTHER


STDLIB = Path(sysconfig.get_paths()["stdlib"])
HARNESS_DIRS = (ROOT / "harness", *(Path(p) / "harness" for p in sys.path if p.endswith("site-packages")))


def harness_part(path: Path) -> tuple[str, ...] | None:
    """A file's path inside the harness package (this checkout's, or an installed one), or None."""
    for base in HARNESS_DIRS:
        if path.is_relative_to(base):
            return path.relative_to(base).parts
    return None


def attribute(stats: pstats.Stats) -> dict[str, list[tuple[float, tuple[str, int, str], str]]]:
    """Every function's own time, as (seconds, function, how) lists per bucket."""
    table: dict[str, list[tuple[float, tuple[str, int, str], str]]] = defaultdict(list)
    raw = stats.stats  # type: ignore[attr-defined]
    memo: dict[tuple[str, int, str], str] = {}

    def inherited(func: tuple[str, int, str], depth: int = 0) -> str:
        """The bucket of a helper no rule names: its callers' (the one it cost most in, for a chain of them)."""
        if func in memo:
            return memo[func]
        own = bucket_of(func)
        if own is not None or depth > 8:
            return own or OTHER
        callers = raw[func][4]
        best = max(callers.items(), key=lambda kv: kv[1][2], default=None)
        memo[func] = inherited(best[0], depth + 1) if best else OTHER
        return memo[func]

    for func, (_, _, tottime, _, callers) in raw.items():
        bucket = bucket_of(func)
        if bucket is not None:
            table[bucket].append((tottime, func, ""))
            continue
        # Split over the callers by the own time spent under each (the edge's tottime); the rest, if the edges do
        # not add up (recursion, a caller not recorded), goes with the biggest caller.
        split: dict[str, float] = defaultdict(float)
        for caller, edge in callers.items():
            split[inherited(caller)] += edge[2]
        rest = tottime - sum(split.values())
        if not split:
            split[OTHER] = 0.0
        main_bucket = max(split, key=lambda b: split[b])
        split[main_bucket] += rest
        for b, secs in split.items():
            table[b].append((secs, func, "via callers"))
    return table


def label(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~":
        return re.sub(r" at 0x[0-9a-f]+", "", name)
    path = Path(filename)
    parts = path.parts
    if "site-packages" in parts:
        return f"{'/'.join(parts[parts.index('site-packages') + 1:])}:{line} {name}"
    for base in (ROOT, STDLIB):
        if path.is_relative_to(base):
            return f"{path.relative_to(base)}:{line} {name}"
    return f"{filename}:{line} {name}"


# As an installed chatprobe runs: from .pyc files (the warm-up writes them), even where the environment says
# PYTHONDONTWRITEBYTECODE (an empty value turns it off), which would compile harness/ from source in every run.
WRITE_BYTECODE = {"PYTHONDONTWRITEBYTECODE": ""}


def run_client(mode: str, out: Path, base: list[str], total: int, children: Children) -> tuple[float, float]:
    """(process CPU seconds, CPU seconds at its first connect) of one `chatprobe run`, checked to pass every chat."""
    c0 = children.cpu()
    cmd = [PY, "-c", CHILD, "profile" if mode == "profile" else "time", str(out), "run", *base]
    wall, rc, stdout, stderr = measure(cmd, env=WRITE_BYTECODE)
    cpu = children.cpu() - c0
    if validated("chatprobe", rc, stdout, total) != total:
        tail = (stderr or stdout).strip().splitlines()[-3:]
        raise SystemExit(f"chatprobe ({mode}) exit {rc}, not every chat passed: {tail}")
    startup = float(out.read_text())
    if startup < 0:
        raise SystemExit(f"chatprobe ({mode}) never connected")
    print(f"{mode:7s} CPU {cpu:6.2f} s ({cpu / total * 1e6:5.0f} us/chat), {startup:5.3f} s of it before the first "
          f"connect; wall {wall:6.2f} s", flush=True)
    return cpu, startup


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--chats", type=int, default=50, help="chats per user, back to back")
    p.add_argument("--rounds", type=int, default=3, help="runs without the profiler (medians); the profiled run is one")
    p.add_argument("--top", type=int, default=5, help="functions shown per bucket")
    p.add_argument("--json", type=Path, help="write the table to this file")
    p.add_argument("--save", type=Path, help="keep the profiles (chat.prof.startup, chat.prof.run) in this directory")
    args = p.parse_args()
    total = args.users * args.chats
    children = Children()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        out_dir = args.save or tmp
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / "chat.prof"
        scenario = scenario_file(tmp, args.users, args.chats, "none", None)
        proc, url = start_sim("none")
        base = [str(scenario), "--target", url, "--auth", "none", "--quiet"]
        warm = tmp / "warm"
        warm.mkdir()
        try:
            # Once, not counted: it writes the .pyc files a fresh clone lacks (see WRITE_BYTECODE).
            run_client("warm-up", warm / "out", [str(scenario_file(warm, 1, 1, "none", None)), *base[1:]], 1, children)
            plain = [run_client("plain", tmp / "plain", base, total, children) for _ in range(args.rounds)]
            profiled_cpu, _ = run_client("profile", out, base, total, children)
        finally:
            proc.terminate()
            proc.wait(10)
        run_stats = pstats.Stats(f"{out}.run")
        if not any(func[0].startswith(DECODER_FILE) for func in run_stats.stats):  # type: ignore[attr-defined]
            print(f"warning: no function of a file named {DECODER_FILE}...> in the profile: has Decoder._compile's "
                  "filename changed? Its time goes to its callers' buckets.", file=sys.stderr)
        table = attribute(run_stats)
        startup_stats = pstats.Stats(f"{out}.startup").stats  # type: ignore[attr-defined]
        table[STARTUP] = [(tt, func, "") for func, (_, _, tt, _, _) in startup_stats.items()]
        startup_views = startup_breakdown(startup_stats, args.top + 3)
    plain_cpu = statistics.median(cpu for cpu, _ in plain)
    plain_startup = statistics.median(startup for _, startup in plain)
    report = summarize(table, total, plain_cpu, plain_startup, profiled_cpu, args.top)
    report["startup"] = startup_views
    print_report(report, args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def package_of(filename: str) -> str | None:
    """Who a start-up function's own time is for: a harness module, a third-party package, a standard library module,
    "import machinery" (importlib's frozen bootstrap), "generated code"; None for a C function (its callers')."""
    if filename == "~":
        return None
    if filename.startswith("<frozen"):
        return "import machinery"
    if filename.startswith("<"):
        return "generated code (<string>)"
    path = Path(filename)
    rest = harness_part(path)
    if rest is not None:
        return "harness." + ".".join(rest).removesuffix(".py")
    parts = path.parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].split(".")[0]
    if path.is_relative_to(STDLIB):
        return "stdlib " + path.relative_to(STDLIB).parts[0].removesuffix(".py")
    return filename


def startup_breakdown(raw: dict[Any, Any], top: int) -> dict[str, list[dict[str, object]]]:
    """Start-up two ways: own time by package (a C function's split over its callers' packages; the lists add up),
    and the slowest module top levels by cumulative time (a module's imports included, so these overlap)."""
    own: dict[str, float] = defaultdict(float)
    for func, (_, _, tottime, _, callers) in raw.items():
        package = package_of(func[0])
        if package is not None:
            own[package] += tottime
            continue
        edges = {caller: edge[2] for caller, edge in callers.items()}
        for caller, secs in edges.items():
            own[package_of(caller[0]) or "C functions"] += secs
        own["C functions" if not edges else package_of(max(edges, key=edges.__getitem__)[0]) or "C functions"] += (
            tottime - sum(edges.values()))
    modules = sorted(((ct, func) for func, (_, _, _, ct, _) in raw.items() if func[2] == "<module>"), reverse=True)
    return {
        "own_by_package": [{"package": k, "cpu_s": round(v, 4)} for k, v in sorted(own.items(), key=lambda kv: -kv[1])[:top]],
        "module_top_levels_cumulative": [{"module": label(func).rsplit(":", 1)[0], "cpu_s": round(ct, 4)}
                                         for ct, func in modules[:top]],
    }


def summarize(table: dict[str, list[tuple[float, tuple[str, int, str], str]]], total: int, plain_cpu: float,
              plain_startup: float, profiled_cpu: float, top: int) -> dict[str, object]:
    """The report: per bucket the profiled seconds and share, and the estimate without the profiler (start-up as
    measured, every other bucket its share of the profiled run times the unprofiled CPU after the first connect)."""
    profile_total = sum(secs for rows in table.values() for secs, _, _ in rows)
    profile_run = profile_total - sum(secs for secs, _, _ in table.get(STARTUP, []))
    buckets = []
    for bucket in BUCKET_ORDER:
        rows = table.get(bucket, [])
        secs = sum(s for s, _, _ in rows)
        merged: dict[tuple[str, int, str], tuple[float, str]] = {}
        for s, func, how in rows:
            merged[func] = (merged.get(func, (0.0, how))[0] + s, how)
        best = sorted(merged.items(), key=lambda kv: -kv[1][0])[:top]
        estimate = plain_startup if bucket == STARTUP else secs / profile_run * (plain_cpu - plain_startup)
        buckets.append({
            "bucket": bucket, "cpu_s": round(secs, 4), "share": round(secs / profile_total, 4),
            "us_per_chat": round(secs / total * 1e6, 1),
            "unprofiled_us_per_chat": round(estimate / total * 1e6, 1),
            "unprofiled_share": round(estimate / plain_cpu, 4),
            "top": [{"function": label(func) + (f" ({how})" if how else ""), "cpu_s": round(s, 4)}
                    for func, (s, how) in best],
        })
    return {"chats": total, "unprofiled_cpu_s": round(plain_cpu, 3), "unprofiled_startup_cpu_s": round(plain_startup, 3),
            "profiled_cpu_s": round(profiled_cpu, 3), "profile_total_s": round(profile_total, 3), "buckets": buckets}


def print_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    plain, profiled, prof_total = report["unprofiled_cpu_s"], report["profiled_cpu_s"], report["profile_total_s"]
    print(f"\n{report['chats']} chats ({args.users} connections x {args.chats}), own time (tottime) per bucket; "
          f"profiled, then estimated without the profiler:")
    print(f"{'bucket':64s} {'CPU s':>6s} {'share':>6s} {'us/chat':>7s} | {'us/chat':>7s} {'share':>6s}")
    for b in report["buckets"]:
        print(f"{b['bucket']:64s} {b['cpu_s']:6.3f} {b['share']:6.1%} {b['us_per_chat']:7.1f} | "
              f"{b['unprofiled_us_per_chat']:7.1f} {b['unprofiled_share']:6.1%}")
    print(f"{'total':64s} {prof_total:6.3f} {1:6.1%} {prof_total / report['chats'] * 1e6:7.1f} | "
          f"{plain / report['chats'] * 1e6:7.1f} {1:6.1%}")
    print(f"\nCPU of the profiled process {profiled:.2f} s; without the profiler {plain:.2f} s (median of {args.rounds}), "
          f"{report['unprofiled_startup_cpu_s']:.3f} s of it before the first connect (the interpreter's own start "
          f"included): the profiler costs {profiled / plain:.1f}x. Estimates: start-up as measured, every other bucket "
          f"its share of the profiled run times the unprofiled CPU after the first connect (cProfile slows many small "
          f"Python calls more than C code: an estimate, no more).")
    for b in report["buckets"]:
        if b["top"]:
            print(f"\n{b['bucket']}:")
            for row in b["top"]:
                print(f"  {row['cpu_s']:7.3f} s  {row['function']}")
    views = report["startup"]
    print("\nstart-up, own time by package (profiled; C functions by their callers):")
    for row in views["own_by_package"]:
        print(f"  {row['cpu_s']:7.3f} s  {row['package']}")
    print("start-up, slowest module top levels (profiled, cumulative: each includes its own imports, so they overlap):")
    for row in views["module_top_levels_cumulative"]:
        print(f"  {row['cpu_s']:7.3f} s  {row['module']}")


if __name__ == "__main__":
    sys.exit(main())
