"""CPU of `chatprobe check` on a large browser HAR export: builds, in a temporary directory, a Chrome-like HAR of a
long session (by default 120,000 entries, about 110 MB, one line: requests with their headers, cookies and timings, and
every 200th entry a WebSocket with its `_webSocketMessages` of netra frames), then runs
`python -m harness check FILE --quiet` N times in a fresh interpreter pinned to core 1 and prints the median user +
system CPU seconds (the child's rusage). With `--baseline REV` each run is paired with the same command on the tree
at git revision REV (git archive), A and B alternating, each pair's order swapped from the last, and the median of
the pairs' B/A ratios is printed (on a shared machine the ratios, not the single figures, are what to read).

    .venv/bin/python bench/har_read.py [--entries 120000] [--runs 5] [--baseline REV]
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.startup import pinned  # noqa: E402

ROLES = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"]


def _headers(i: int) -> list[dict[str, str]]:
    return [{"name": "accept", "value": "*/*"}, {"name": "x-request-id", "value": f"req-{i:08d}"}]


def _entry(i: int, t: float) -> dict:
    """One entry as Chrome writes it; every 200th a WebSocket carrying one chat."""
    ws = i % 200 == 0
    entry = {
        "_priority": "High", "_resourceType": "websocket" if ws else "fetch", "cache": {}, "pageref": "page_1",
        "request": {"method": "GET", "url": f"{'wss' if ws else 'https'}://app.example.test/api/{i}?v=2",
                    "httpVersion": "http/2.0", "headers": _headers(i), "queryString": [{"name": "v", "value": "2"}],
                    "cookies": [], "headersSize": -1, "bodySize": 0},
        "response": {"status": 101 if ws else 200, "statusText": "", "httpVersion": "http/2.0",
                     "headers": [{"name": "content-type", "value": "application/json"}],
                     "cookies": [], "content": {"size": 120, "mimeType": "application/json", "compression": 0},
                     "redirectURL": "", "bodySize": -1, "_transferSize": 260},
        "serverIPAddress": "192.0.2.1", "startedDateTime": f"2026-12-06T07:{int(t) // 60 % 60:02d}:{t % 60:06.3f}Z",
        "time": 12.5, "timings": {"blocked": 0.8, "dns": -1, "ssl": -1, "connect": -1, "send": 0.1, "wait": 11.2,
                                  "receive": 0.4, "_blocked_queueing": 0.5}}
    if ws:
        t0 = 1_796_540_000.0 + t
        messages = [{"type": "send", "time": t0, "opcode": 1,
                     "data": json.dumps({"type": "user_message", "payload": {"content": f"question {i}"}})}]
        for k, role in enumerate(ROLES):
            frame = {"type": role, "run_id": f"r{i}", "seq": k + 1, "payload": {"text": "token " * 8}}
            messages.append({"type": "receive", "time": t0 + 0.01 * (k + 1), "opcode": 1, "data": json.dumps(frame)})
        entry["_webSocketMessages"] = messages
    return entry


def write_har(path: Path, entries: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.write('{"log": {"version": "1.2", "creator": {"name": "WebInspector", "version": "537.36"}, '
                  '"pages": [{"startedDateTime": "2026-12-06T07:00:00.000Z", "id": "page_1", "title": "app", '
                  '"pageTimings": {}}], "entries": [')
        for i in range(entries):
            out.write(("," if i else "") + json.dumps(_entry(i, i * 0.02)))
        out.write("]}}")


def check_cpu(tree: Path, har: Path) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-m", "harness", "check", str(har), "--quiet"], cwd=tree,
                         env={**os.environ, "PYTHONPATH": str(tree)}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, timeout=600, preexec_fn=pinned(1))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode not in (0, 1):
        raise SystemExit(f"chatprobe check ({tree}) exited {out.returncode}: {out.stderr[-500:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    from bench.procs import tree_at

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=120_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--baseline", metavar="REV", help="pair each run with the tree at git revision REV")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        har = tmp / "session.har"
        write_har(har, args.entries)
        trees = {"this tree": ROOT}
        if args.baseline is not None:
            trees = {f"at {args.baseline}": tree_at(args.baseline, tmp / "baseline", ("harness", "scenarios")),
                     "this tree": ROOT}
        compileall.compile_dir(ROOT / "harness", quiet=1)
        for tree in trees.values():  # a first run of each, not counted: the file in the page cache
            check_cpu(tree, har)
        names = list(trees)
        cpu: dict[str, list[float]] = {name: [] for name in names}
        for i in range(args.runs):
            for name in names if i % 2 == 0 else names[::-1]:
                cpu[name].append(check_cpu(trees[name], har))
        size = har.stat().st_size
    print(f"`chatprobe check` of a {size / 1e6:.1f} MB HAR of {args.entries} entries, CPU-s (user+system), "
          f"{args.runs} runs each:")
    for name, xs in cpu.items():
        print(f"  {name:<24} median {statistics.median(xs):.2f}  (min {min(xs):.2f}, max {max(xs):.2f})")
    if args.baseline is not None:
        ratios = sorted(b / a for a, b in zip(cpu[names[0]], cpu[names[1]], strict=True))
        print(f"  this tree / {names[0]}: median of the {args.runs} pair ratios {statistics.median(ratios):.3f} "
              f"(spread {ratios[0]:.2f}-{ratios[-1]:.2f}; load average {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
