"""Where the harness's delay goes: agentsim's send -> the client loop's select() returning -> the frame's stamp.

bench/harness_delay.py measures the added delay end to end; on a shared machine its tail is mostly the client
process waiting for a CPU. This runs one round of the same workload (1,000 concurrent chats, agentsim on core 0,
the client on core 1) on an asyncio loop whose selector notes when each select() returned and how long the thread
sat runnable on the run queue meanwhile (/proc/self/task/TID/schedstat), and splits every event's delay into
  send -> select: in the kernel, or the loop busy or not scheduled (the harness cannot stamp what it has not read);
  select -> stamp: queueing inside the client's loop iteration (what the harness itself adds);
then sorts the events delayed over 2 ms by cause. Linux only.

    .venv/bin/python bench/harness_delay_breakdown.py --chats 1000
"""
from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import os
import resource
import selectors
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import harness.client as client  # noqa: E402
from bench.harness_delay import one_round, pct, send_times, start_sim  # noqa: E402

SLOW_MS = 2.0


class NotingSelector(selectors.EpollSelector):
    """An epoll selector that notes, per select(): when it returned, and the run-queue wait during it."""

    def __init__(self) -> None:
        super().__init__()
        self._schedstat = os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
        self.returned: list[float] = []
        self.runnable_wait: list[float] = []
        self.busy_before: list[tuple[float, float]] = []  # (wall, cpu) of the loop iteration before it
        self._last = (time.monotonic(), time.thread_time())

    def _queued(self) -> float:
        return int(os.pread(self._schedstat, 100, 0).split()[1]) / 1e9

    def select(self, timeout: float | None = None) -> list:
        wall, cpu = time.monotonic(), time.thread_time()
        self.busy_before.append((wall - self._last[0], cpu - self._last[1]))
        queued = self._queued()
        ready = super().select(timeout)
        now = time.monotonic()
        self.runnable_wait.append(self._queued() - queued)
        self.returned.append(now)
        self._last = (now, time.thread_time())
        return ready


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chats", type=int, default=1000)
    p.add_argument("--think", default="3-5")
    p.add_argument("--ramp-up", type=float, default=2.0)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    selector = NotingSelector()

    # Each frame's stamp, next to the select() it was read after (the Session's frame callback, wrapped).
    stamped: dict[float, float] = {}
    on_frame = client.Session.on_frame

    def noting(self: client.Session, message: str | bytes, at: float) -> None:
        stamped.setdefault(at, selector.returned[-1] if selector.returned else at)
        on_frame(self, message, at)

    client.Session.on_frame = noting  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        gt = Path(tmp) / "gt.jsonl"
        proc, url = start_sim(gt, args.think)
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {1})
        loop = asyncio.SelectorEventLoop(selector)
        try:
            results = loop.run_until_complete(one_round(url, args.chats, args.ramp_up))
        finally:
            loop.close()
            proc.terminate()
            proc.wait(10)
        offset = time.time() - time.monotonic()
        sent = send_times(gt)
    rows: dict[str, list[float]] = collections.defaultdict(list)
    causes: collections.Counter[str] = collections.Counter()
    for res in results:
        for i, ev in enumerate(res.events):
            t, selected = sent.get((ev.run_id, ev.seq)), stamped.get(ev.received_at)
            if t is None or selected is None:
                continue
            total, before = (ev.received_at + offset - t) * 1000, (selected + offset - t) * 1000
            inside = (ev.received_at - selected) * 1000
            for kind in ("every event", "first event") if i == 0 else ("every event",):
                rows[f"{kind}: total"].append(total)
                rows[f"{kind}: send -> select"].append(before)
                rows[f"{kind}: select -> stamp"].append(inside)
            if total > SLOW_MS:
                k = bisect.bisect_left(selector.returned, selected)
                wall, cpu = selector.busy_before[k]
                if inside > SLOW_MS:
                    causes["queued inside the loop iteration"] += 1
                elif selector.runnable_wait[k] > 0.001:
                    causes["runnable, not scheduled (another process had the CPU)"] += 1
                elif wall - cpu > 0.001:
                    causes["preempted in the iteration before"] += 1
                elif cpu > 0.001:
                    causes["the iteration before busy"] += 1
                else:
                    causes["other (kernel, agentsim)"] += 1
    for name, xs in rows.items():
        print(f"{name:32s} n={len(xs):5d}  p50 {pct(xs, 50):6.2f}  p99 {pct(xs, 99):6.2f}  max {max(xs):7.2f} ms")
    print(f"events delayed over {SLOW_MS:g} ms, by cause: {dict(causes.most_common())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
