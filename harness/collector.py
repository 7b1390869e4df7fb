"""The garbage collector tuned for a process that runs many chats (chatprobe run, the Locust user)."""
from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

# Allocations between two collections of the youngest generation in a process that runs chats (Python's default 700).
YOUNG_COLLECTION = 20_000

_paused = False  # paused_for_startup() holds the collector off and tune_collector() has not yet let it go


@contextlib.contextmanager
def paused_for_startup() -> Iterator[None]:
    """No collection while a command loads what it runs with (`chatprobe run`: its modules, pydantic's validators,
    the scenario, the profile's decoder): start-up allocates ~40,000 objects that live as long as the process, and
    Python's default thresholds walked them some 80 times on the way (~6% of the start-up's CPU, BENCHMARKS.md).
    tune_collector() ends the pause once start-up is done, end_startup_pause() for a command that runs no chats;
    leaving the block ends it too, whatever happened (a usage error before the chats, or main() called in a process
    that goes on)."""
    global _paused
    if not gc.isenabled():  # someone else holds it off: theirs to let go
        yield
        return
    gc.disable()
    _paused = True
    try:
        yield
    finally:
        if _paused:
            _paused = False
            gc.enable()


def end_startup_pause() -> None:
    """The collector back on, if paused_for_startup() holds it off (a command that runs no chats, or that tunes it)."""
    global _paused
    if _paused:
        _paused = False
        gc.enable()


def tune_collector() -> None:
    """Before the chats start. What start-up allocated (modules, pydantic's validators, Locust and gevent, an embedded
    server: tens of thousands of objects that live as long as the process) is frozen out of the collector's sight, and
    the youngest generation is collected every YOUNG_COLLECTION allocations rather than 700: a chat's objects die
    within its settle window, but every collection promoted the chats then in flight, which set off full collections
    walking everything (a sixth of a chat's CPU under Locust, a tenth under `chatprobe run`; BENCHMARKS.md). Cyclic
    garbage waits a little longer; everything else is freed by its reference count as before.

    No collection first: a full one costs ~10 ms of start-up, as much as the pause saved, for the cycles start-up left
    (after paused_for_startup(), ~700 objects of ~0.2 MB in `chatprobe run`: argparse's formatters, classes that
    dataclasses and pydantic rebuilt). They stay frozen, once per process; nothing a chat allocates is."""
    gc.freeze()
    end_startup_pause()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_COLLECTION), middle, old)
