"""Start-up CPU of the command line: `chatprobe --help`, `run --help` and `list`, each run N times in a fresh
interpreter; prints the median user+system CPU seconds of each (target: under 0.15 s).

    .venv/bin/python bench/startup.py [--runs 15]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

COMMANDS = (["--help"], ["run", "--help"], ["list"])


def cpu_of(args: list[str]) -> float:
    before = os.times()
    subprocess.run([sys.executable, "-m", "harness", *args], stdout=subprocess.DEVNULL, check=True, timeout=60)
    after = os.times()
    return (after.children_user - before.children_user) + (after.children_system - before.children_system)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=15)
    runs = p.parse_args().runs
    baseline = statistics.median(cpu_of(["--version"]) for _ in range(runs))
    print(f"{'command':<24} median CPU-s (of {runs})")
    print(f"{'chatprobe --version':<24} {baseline:.3f}")
    for args in COMMANDS:
        print(f"{'chatprobe ' + ' '.join(args):<24} {statistics.median(cpu_of(args) for _ in range(runs)):.3f}")
    bare = statistics.median(cpu_of_python() for _ in range(runs))
    print(f"{'python (bare start)':<24} {bare:.3f}")


def cpu_of_python() -> float:
    before = os.times()
    subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=60)
    after = os.times()
    return (after.children_user - before.children_user) + (after.children_system - before.children_system)


if __name__ == "__main__":
    main()
