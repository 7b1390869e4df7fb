"""The named payload check sets a profile's `checks:` lists: what a set is (CheckSet), what its checks of a run
report (Finding) and know of the request (RunContext), and the registry of them (CHECKS).

A set's code loads at its first look-up in CHECKS, which a profile naming it makes as its decoder is made (start-up,
before any chat): AG-UI's (harness/payload_checks.py, ~1% of a one-chat run's start-up instructions) loads for no
profile without it. Pure: no I/O.
"""
# No `from __future__ import annotations`: typing.NamedTuple took each field's annotation text for a ForwardRef.

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .events import Event, Rule


class Finding(NamedTuple):
    """One rule broken by an event's payload; `warning` findings are advice, shown in reports, never failing a chat."""

    rule: Rule
    reason: str
    warning: bool = False


class RunContext(NamedTuple):
    """What a run's checks know of the request that started it."""

    offered_tools: frozenset[str] = frozenset()  # tools the client offered (the request's `tools`)
    request_message_ids: tuple[str, ...] = ()  # ids of the messages the client sent
    # The request itself, where the client that sent it is not this program (the proxy's users, a recording's sends):
    # what it offers, carries and resumes is read from it as the run's checks start, not from the profile's template.
    request: dict[str, Any] | None = None


class RunChecks:
    """The stateful checks of one run; `event` sees each event in order, `end` the terminal one."""

    def event(self, ev: Event) -> Iterable[Finding]:
        return ()

    def end(self, ev: Event) -> Iterable[Finding]:
        return ()

    def followup(self) -> "RunChecks":
        """The checks of a further run on the same stream (it inherits what is known: ids, state)."""
        return type(self)()

    def held_bytes(self) -> int:
        """About what the checks hold now (ids, buffered text, state), in bytes: what a parked chat is weighed."""
        return 0


@dataclass(frozen=True)
class CheckSet:
    """A named set of checks: the payload fields it reads, a stateless check of the whole frame, a run's checks."""

    name: str
    fields: tuple[str, ...]
    frame: Callable[[dict[str, Any]], tuple[tuple[str, ...], tuple[str, ...]]]  # (problems: R12, advice)
    start: Callable[[RunContext], RunChecks]
    # What the checks load on first use (a schema's models): `Decoder.prepare` has it loaded before a chat is timed
    load: Callable[[], object] = lambda: None


# Each set's name -> the module that defines it, which registers it in CHECKS as it is imported.
MODULES = {"agui": "harness.payload_checks"}
NAMES = tuple(MODULES)


class _Registry(dict[str, CheckSet]):
    """A dict of the sets loaded so far; looking up a known set not yet loaded imports its module (once)."""

    def __missing__(self, name: str) -> CheckSet:
        if name not in MODULES:
            raise KeyError(name)
        importlib.import_module(MODULES[name])
        return dict.__getitem__(self, name)


# The registry a profile's `checks:` names come from (their names: NAMES).
CHECKS: dict[str, CheckSet] = _Registry()
