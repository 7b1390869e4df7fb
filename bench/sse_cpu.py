"""CPU per chat of `chatprobe run` over AG-UI's HTTP + SSE (one POST and one event stream a chat), next to the same
command of another revision (`--against REV`, unpacked with git archive), paired and alternating.

agentsim (`--protocol ag-ui --no-auth --think 0 --tool-latency 0`) runs pinned to core 0, each client process to
core 1; CPU is the client process's user+system time, start-up included. Every chat must pass (exit 0).

    .venv/bin/python bench/sse_cpu.py --users 10 --chats 30 --rounds 3 [--against REV]
"""
from __future__ import annotations

import argparse
import compileall
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procs import tree_at  # noqa: E402
from bench.vs_k6 import PY, Children, pin, start_sim  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=10)
    p.add_argument("--chats", type=int, default=30, help="chats per user, back to back")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--against", metavar="REV", help="also run `chatprobe run` as it was at this git revision")
    args = p.parse_args()
    for package in ("harness", "agentsim"):
        compileall.compile_dir(ROOT / package, quiet=1)
    total = args.users * args.chats
    children = Children()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        scenario = tmp / "sse.yaml"
        scenario.write_text(f"name: sse_cpu\nusers: {args.users}\nchats_per_user: {args.chats}\n"
                            'message: "what is 6*7"\nexpect:\n  deadline: 60s\n')
        trees = {"this tree": ROOT}
        if args.against:
            trees[args.against] = tree_at(args.against, tmp / "against", ("harness", "agentsim", "scenarios"))
        proc, url = start_sim("none", ["--protocol", "ag-ui"])
        cpu: dict[str, list[float]] = {name: [] for name in trees}
        try:
            for r in range(args.rounds):
                names = list(trees) if r % 2 == 0 else list(reversed(trees))
                for name in names:
                    cmd = [PY, "-m", "harness", "run", str(scenario), "--target", url, "--profile", "ag-ui",
                           "--auth", "none", "--quiet"]
                    c0 = children.cpu()
                    t0 = time.perf_counter()
                    # run from the tree itself: `python -m` puts its working directory first on the path
                    done = subprocess.run(cmd, capture_output=True, text=True, cwd=trees[name], timeout=600,
                                          preexec_fn=pin(1))
                    wall, rc, out, err = time.perf_counter() - t0, done.returncode, done.stdout, done.stderr
                    if rc != 0:
                        raise SystemExit(f"{name}: exit {rc}: {(err or out).strip().splitlines()[-3:]}")
                    used = children.cpu() - c0
                    cpu[name].append(used)
                    print(f"round {r + 1} {name:12s} CPU {used:6.2f} s ({used / total * 1e3:6.2f} ms/chat)  "
                          f"wall {wall:6.2f} s", flush=True)
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"\n{total} chats over SSE ({args.users} users x {args.chats}), {args.rounds} rounds, medians:")
    base = statistics.median(cpu["this tree"])
    for name, values in cpu.items():
        median = statistics.median(values)
        print(f"  {name:12s} CPU {median:6.2f} s = {median / total * 1e3:6.2f} ms/chat  ({median / base:4.2f}x this tree)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
