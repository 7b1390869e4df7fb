"""Start-up CPU of the command line: `chatprobe --help`, `run --help` and `list`, each run N times in a fresh
interpreter; prints the median user+system CPU seconds of each (target: under 0.15 s). With `--baseline REV` each
command is paired with the same command on the tree at git revision REV, as `--run` below (the child's rusage, pinned
to core 1, A and B alternating), and the median of the pair ratios is printed.

    .venv/bin/python bench/startup.py [--runs 15] [--baseline REV]

`--run` measures a one-chat `chatprobe run` instead: what start-up costs each chat of bench/vs_k6.py's workload
(start-up, one chat, the report, the interpreter's exit). One agentsim (`--no-auth`, zero think time, pinned to
core 0) serves every run; each run is `python -m harness run ONE.yaml --target URL --auth none --quiet`, as vs_k6.py
runs chatprobe, pinned to core 1, its CPU the child's rusage. With `--baseline REV` the runs are paired with the
same command on the tree at git revision REV (git archive; the server is this tree's either way): A and B
alternate, each pair's order swapped from the last, and the median of the pairs' B/A ratios is printed with their
quartiles and spread (on a machine shared with other work, the ratios, not the single figures, are what to read).

    .venv/bin/python bench/startup.py --run [--runs 15] [--baseline REV]

Both trees are byte-compiled first (as an installed package is), so PYTHONDONTWRITEBYTECODE makes no difference.
"""
from __future__ import annotations

import argparse
import compileall
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (["--help"], ["run", "--help"], ["list"])
ONE_CHAT = 'name: one\nusers: 1\nchats_per_user: 1\nmessage: "what is 6*7"\nexpect:\n  deadline: 60s\n'


def cpu_of(args: list[str], tree: Path = ROOT) -> float:
    """The CPU seconds (user + system) of `python -m harness ARGS` of `tree`, pinned to core 1 (getrusage: finer
    than os.times' clock ticks, which are 10 ms, a sixth of a command's CPU)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "harness", *args], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                   stdout=subprocess.DEVNULL, check=True, timeout=60, preexec_fn=pinned(1))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cpu_of_python() -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=60, preexec_fn=pinned(1))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def commands_paired(runs: int, rev: str) -> None:
    """Each command on the tree at `rev` and on this tree, A and B alternating, each pair's order swapped."""
    from bench.procs import tree_at

    with tempfile.TemporaryDirectory() as tmpdir:
        trees = [tree_at(rev, Path(tmpdir) / "baseline", ("harness", "scenarios")), ROOT]
        compileall.compile_dir(ROOT / "harness", quiet=1)
        compileall.compile_dir(ROOT / "scenarios", quiet=1)
        print(f"{'command':<24} median CPU-s (of {runs}) at {rev}, this tree, median of the pair ratios (spread)")
        for cmd in COMMANDS:
            for tree in trees:  # a first run of each, not counted: the files in the page cache
                cpu_of(cmd, tree)
            cpu: list[list[float]] = [[], []]
            for i in range(runs):
                for k in (0, 1) if i % 2 == 0 else (1, 0):
                    cpu[k].append(cpu_of(cmd, trees[k]))
            ratios = sorted(b / a for a, b in zip(cpu[0], cpu[1], strict=True))
            print(f"{'chatprobe ' + ' '.join(cmd):<24} {statistics.median(cpu[0]):.3f}  {statistics.median(cpu[1]):.3f}"
                  f"  {statistics.median(ratios):.3f} ({ratios[0]:.2f}-{ratios[-1]:.2f})")


def pinned(core: int) -> Callable[[], None]:
    def pre() -> None:
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {core})
    return pre


def run_cpu(tree: Path, scenario: Path, url: str) -> float:
    """The CPU seconds (user + system) of one `chatprobe run` of `tree`, pinned to core 1: RUSAGE_CHILDREN around it
    (the children of this process finish one at a time; the server, still running, is not in it)."""
    cmd = [sys.executable, "-m", "harness", "run", str(scenario), "--target", url, "--auth", "none", "--quiet"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, timeout=60, preexec_fn=pinned(1))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"chatprobe run ({tree}) exited {out.returncode}: {out.stderr[-500:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def one_chat(runs: int, rev: str | None) -> None:
    from bench.agentsim_throughput import start
    from bench.procs import tree_at

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        scenario = tmp / "one.yaml"
        scenario.write_text(ONE_CHAT, encoding="utf-8")
        trees = {"this tree": ROOT}
        if rev is not None:
            trees = {f"at {rev}": tree_at(rev, tmp / "baseline", ("harness", "scenarios")), "this tree": ROOT}
        for tree in trees.values():
            for package in ("harness", "scenarios", "agentsim"):
                if (tree / package).is_dir():
                    compileall.compile_dir(tree / package, quiet=1)
        server, url = start(ROOT, 0)
        try:
            for tree in trees.values():  # a first run of each, not counted: the files in the page cache
                run_cpu(tree, scenario, url)
            cpu: dict[str, list[float]] = {name: [] for name in trees}
            names = list(trees)
            for i in range(runs):
                for name in names if i % 2 == 0 else names[::-1]:
                    cpu[name].append(run_cpu(trees[name], scenario, url))
        finally:
            server.terminate()
            server.wait(10)
    print(f"one-chat `chatprobe run --target URL --auth none --quiet`, CPU-s (user+system), {runs} runs each:")
    for name, xs in cpu.items():
        print(f"  {name:<24} median {statistics.median(xs):.3f}  (min {min(xs):.3f}, max {max(xs):.3f})")
    if rev is not None:
        a, b = cpu[names[0]], cpu[names[1]]
        ratios = sorted(y / x for x, y in zip(a, b, strict=True))
        print(f"  this tree / {names[0]}: median of the {runs} pair ratios {statistics.median(ratios):.3f} "
              f"(quartiles {ratios[len(ratios) // 4]:.3f}-{ratios[(3 * len(ratios)) // 4]:.3f}, "
              f"spread {ratios[0]:.2f}-{ratios[-1]:.2f}; load average {os.getloadavg()[0]:.2f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--run", action="store_true", help="measure a one-chat `chatprobe run` against an agentsim")
    p.add_argument("--baseline", metavar="REV", help="pair each run with the tree at git revision REV")
    args = p.parse_args()
    runs = args.runs
    if args.run:
        one_chat(runs, args.baseline)
        return
    if args.baseline:
        commands_paired(runs, args.baseline)
        return
    baseline_cpu = statistics.median(cpu_of(["--version"]) for _ in range(runs))
    print(f"{'command':<24} median CPU-s (of {runs})")
    print(f"{'chatprobe --version':<24} {baseline_cpu:.3f}")
    for cmd in COMMANDS:
        print(f"{'chatprobe ' + ' '.join(cmd):<24} {statistics.median(cpu_of(cmd) for _ in range(runs)):.3f}")
    bare = statistics.median(cpu_of_python() for _ in range(runs))
    print(f"{'python (bare start)':<24} {bare:.3f}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
