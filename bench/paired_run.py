"""Two trees' `chatprobe run` on vs_k6.py's workload, paired: the CPU of tree B over tree A, pair by pair.

One agentsim (--no-auth, zero think time and tool latency, from tree A) pinned to core 0; `python -m harness run` of
vs_k6's scenario (USERS connections x CHATS chats, --quiet) from tree A and tree B in turn pinned to core 1, the order
alternating pair by pair, each process's user+system CPU (RUSAGE_CHILDREN), start-up included. A pair's ratio is B's
CPU over A's, run seconds apart: on a machine shared with other work only the ratios count, not the seconds. Prints
every pair, then the median of the ratios with their spread and quartiles (all CPU, and user CPU alone). Every chat
must pass in every run, or the command stops. A tree is a checkout (a `git worktree` of the revision to compare
against) or a copy of its harness/ and agentsim/; each is byte-compiled first, and PYTHONDONTWRITEBYTECODE is
dropped, as an installed package is compiled once.

    .venv/bin/python bench/paired_run.py TREE_A TREE_B [--pairs 31] [--users 100] [--chats 50]

`--agui-ws` serves AG-UI over WebSocket instead (agentsim --protocol ag-ui, its WebSocket endpoint, `--profile ag-ui`):
its events name no run, which the checker's routing handles otherwise; `--settle` sets the scenario's expect.settle.

    .venv/bin/python bench/paired_run.py TREE_A TREE_B --agui-ws --users 20 --chats 250 --settle 0s

`--python-b PY` runs tree B's chatprobe on another interpreter (a virtualenv of another Python version with
chatprobe's dependencies installed: `python3.13 -m venv /tmp/py313 && /tmp/py313/bin/pip install .`); give the same
tree twice to compare interpreters alone (B writes its own byte-code in the warm-up run):

    .venv/bin/python bench/paired_run.py . . --python-b /tmp/py313/bin/python --pairs 11
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procs import agentsim_url  # noqa: E402
from bench.vs_k6 import pin, scenario_file  # noqa: E402

PY = sys.executable


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tree_a", type=Path)
    p.add_argument("tree_b", type=Path)
    p.add_argument("--pairs", type=int, default=31)
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--chats", type=int, default=50, help="chats per user, back to back")
    p.add_argument("--agui-ws", action="store_true", help="AG-UI over WebSocket (agentsim --protocol ag-ui)")
    p.add_argument("--settle", default=None, help="the scenario's expect.settle (default: chatprobe's default)")
    p.add_argument("--python-b", default=PY, metavar="PY", help="the interpreter of tree B's runs (default: this one)")
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    trees = [args.tree_a.resolve(), args.tree_b.resolve()]
    for tree in trees:
        for package in ("harness", "agentsim"):
            compileall.compile_dir(tree / package, quiet=1)
    with tempfile.TemporaryDirectory() as tmpdir:
        scenario = scenario_file(Path(tmpdir), args.users, args.chats, "none", args.settle)
        sim = subprocess.Popen([PY, "-m", "agentsim", "--port", "0", "--no-auth", "--think", "0", "--tool-latency", "0",
                                *(["--protocol", "ag-ui"] if args.agui_ws else [])],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=trees[0],
                               env={**env, "PYTHONPATH": str(trees[0])}, preexec_fn=pin(0))
        url = agentsim_url(sim)
        profile: list[str] = []
        if args.agui_ws:  # its second line: "agentsim: the same AG-UI events over WebSocket at ws://…/agent"
            assert sim.stdout is not None
            line = sim.stdout.readline()
            if " at ws://" not in line:
                sim.kill()
                raise SystemExit(f"agentsim did not say its AG-UI WebSocket endpoint: {line!r}")
            url, profile = line.rsplit(" at ", 1)[1].strip(), ["--profile", "ag-ui"]

        def run(tree: Path, python: str = PY) -> tuple[float, float]:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            done = subprocess.run([python, "-m", "harness", "run", str(scenario), "--target", url, "--auth", "none",
                                   *profile, "--quiet"], cwd=tree, env={**env, "PYTHONPATH": str(tree)}, preexec_fn=pin(1),
                                  capture_output=True, text=True, timeout=600)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if done.returncode != 0:
                raise SystemExit(f"{tree}: exit {done.returncode}: {(done.stderr or done.stdout)[-500:]}")
            return (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
                    after.ru_utime - before.ru_utime)

        ratios: list[float] = []
        user_ratios: list[float] = []
        try:
            run(trees[0])
            run(trees[1], args.python_b)  # warm: the OS's caches (and B's byte-code), not counted
            for i in range(args.pairs):
                if i % 2 == 0:
                    a = run(trees[0])
                    b = run(trees[1], args.python_b)
                else:
                    b = run(trees[1], args.python_b)
                    a = run(trees[0])
                ratios.append(b[0] / a[0])
                user_ratios.append(b[1] / a[1])
                print(f"pair {i + 1:3d}  A {a[0]:.3f} s  B {b[0]:.3f} s  B/A {ratios[-1]:.3f}  (user {user_ratios[-1]:.3f})",
                      flush=True)
        finally:
            sim.terminate()
            sim.wait(10)
    for name, values in (("CPU", ratios), ("user CPU", user_ratios)):
        v = sorted(values)
        print(f"{name}: B/A median {statistics.median(v):.3f} over {len(v)} pairs, spread {v[0]:.3f}-{v[-1]:.3f}, "
              f"quartiles {v[len(v) // 4]:.3f}-{v[(3 * len(v)) // 4]:.3f}; load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
