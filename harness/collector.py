"""The garbage collector tuned for a process that runs many chats (chatprobe run, the Locust user)."""
from __future__ import annotations

import gc

# Allocations between two collections of the youngest generation in a process that runs chats (Python's default 700).
YOUNG_COLLECTION = 20_000


def tune_collector() -> None:
    """Before the chats start. What start-up allocated (modules, pydantic's validators, Locust and gevent, an embedded
    server: tens of thousands of objects that live as long as the process) is frozen out of the collector's sight, and
    the youngest generation is collected every YOUNG_COLLECTION allocations rather than 700: a chat's objects die
    within its settle window, but every collection promoted the chats then in flight, which set off full collections
    walking everything (a sixth of a chat's CPU under Locust, a tenth under `chatprobe run`; BENCHMARKS.md). Cyclic
    garbage waits a little longer; everything else is freed by its reference count as before. (No collection first:
    it costs ~11 ms of start-up for a few cycles of start-up garbage, which stay frozen.)"""
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_COLLECTION), middle, old)
