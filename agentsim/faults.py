"""Fault injection for agentsim: the ``--fault`` grammar, its parser, and the per-run fault plan.

Grammar (one fault per ``--fault`` flag or per item of ``faults:`` in the YAML config)::

    NAME[:ARG]=RATE            e.g.  drop:tool_completed=0.08
    NAME[:ARG][=VALUE]@RATE    e.g.  delay_first=2.5s@0.1   stall@0.2   oversized=3MiB@0.05

RATE is a probability in [0, 1]; unless stated it is drawn once per chat (run).  VALUE is a
duration as chatprobe writes one (``2.5s``, ``250ms``, ``1m30s``, ``2.5`` = seconds) or a size (``2MiB``, ``512KiB``, ``1000``).
A fault with a VALUE uses its default when written ``NAME=RATE``.  ROLE is a wire event type
(agent_started, agent_thinking, tool_executing, tool_completed, partial_result, agent_completed,
agent_error; ``error_event`` is accepted for agent_error).

Faults (all off by default):

  drop:ROLE=RATE           skip sending the run's first event of ROLE; its seq number is still
                           consumed (a real lost event: gap in seq, not replayed on resume)
  drop=RATE                same, for a random event of the run
  delay_first[=DUR]@RATE   delay the run's first event by DUR (default 2s)
  duplicate[:ROLE]=RATE    send an event twice with the same seq (random event without ROLE)
  swap[:ROLE]=RATE         send two adjacent events in the wrong order (the ROLE event and its successor)
  crosstalk[:ROLE]=RATE    also deliver an event of the run to a connection of another user, if one is open
  stall[=DUR]@RATE         pause DUR mid-run (default 5s)
  close[:clean|abort]=RATE close the connection(s) of the run mid-run; ``clean`` = close handshake
                           (code 1001), ``abort`` = TCP reset via transport.abort(); default clean.
                           The run goes on server-side, so the client can resume it.
  malformed[:KIND]=RATE    send a malformed frame mid-run; KIND is notjson (default), binary,
                           notype or unknowntype
  oversized[=SIZE]@RATE    send a frame of SIZE bytes mid-run (default 5MiB: past a
                           client's usual 4MiB frame limit; at most 64MiB)
  after_terminal=RATE      send one more event (partial_result, next seq) after the terminal event
  refuse=RATE              answer a new connection with HTTP 503 before the upgrade (rate per connection)
  exit=RATE                os._exit(3) mid-run (rate per chat)
  exit_after=N             os._exit(3) right after the N-th chat's terminal event (VALUE is a count, not a rate)

AG-UI faults (``--protocol ag-ui``; each strikes the first event it can, and is logged only where it struck):

  drop_result=RATE         the first TOOL_CALL_RESULT of a backend tool call is not sent           (R5)
  bad_args=RATE            the TOOL_CALL_ARGS of the first call do not concatenate to JSON  (R12 advice: a warning,
                           the chat passes; spec 1.1 leaves unparsable arguments to the application)
  bad_state_delta=RATE     a STATE_DELTA whose path does not exist in the state                    (R12)
  empty_delta=RATE         a TEXT_MESSAGE_CONTENT with an empty delta       (R12 advice: the schema allows it)
  result_before_end=RATE   a TOOL_CALL_RESULT before its call's TOOL_CALL_END                      (R5)
  orphan_result=RATE       a TOOL_CALL_RESULT for a tool call that never started                   (R5)
  unknown_parent=RATE      a TOOL_CALL_START whose parentMessageId names no message shown (R5 advice: spec 1.1)
  reused_id=RATE           a second TEXT_MESSAGE_START for the answer's id while it is still open  (R5)
  second_start=RATE        a second RUN_STARTED, with another runId, inside the run                (R1)
  missing_field=RATE       a TOOL_CALL_START without its required toolCallName                     (R12)
  bad_sse_line=RATE        a stream line that is not an SSE field (over WebSocket: a non-JSON frame) (R12)
  chunk_without_id=RATE    a TEXT_MESSAGE_CHUNK without messageId, no chunk stream open           (R5)
  string_timestamp=RATE    a STATE_SNAPSHOT whose timestamp is a JSON string                      (R12)
  (drop:ROLE and duplicate:ROLE name the AG-UI event carrying the role: tool_completed is TOOL_CALL_RESULT;
  swap, crosstalk and oversized are netra only)

Every decision comes from a random.Random seeded with ``(seed, run key)`` so the same seed and the
same chats give the same faults, whatever the interleaving of concurrent runs.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field

WIRE_ROLES = (
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "partial_result",
    "agent_completed",
    "agent_error",
)
ROLE_ALIASES = {"error_event": "agent_error"}
MALFORMED_KINDS = ("notjson", "binary", "notype", "unknowntype")
CLOSE_KINDS = ("clean", "abort")

# name -> (arg kind, value kind, default value)
#   arg kind: None (no ARG allowed), "role" (optional role), "role!" (required), or a tuple of choices
#   value kind: None, "duration", "size", "count"
FAULTS: dict[str, tuple[object, str | None, object]] = {
    "drop": ("role", None, None),
    "delay_first": (None, "duration", 2.0),
    "duplicate": ("role", None, None),
    "swap": ("role", None, None),
    "crosstalk": ("role", None, None),
    "stall": (None, "duration", 5.0),
    "close": (CLOSE_KINDS, None, "clean"),
    "malformed": (MALFORMED_KINDS, None, "notjson"),
    "oversized": (None, "size", 5 * 1024 * 1024),  # past chatprobe's max_size (4 MiB)
    "after_terminal": (None, None, None),
    "refuse": (None, None, None),
    "exit": (None, None, None),
    "exit_after": (None, "count", None),
    # AG-UI's own rules (agentsim --protocol ag-ui only; see agentsim/agui.py)
    "drop_result": (None, None, None),
    "bad_args": (None, None, None),
    "bad_state_delta": (None, None, None),
    "empty_delta": (None, None, None),
    "result_before_end": (None, None, None),
    "orphan_result": (None, None, None),
    "unknown_parent": (None, None, None),
    "reused_id": (None, None, None),
    "second_start": (None, None, None),
    "missing_field": (None, None, None),
    "bad_sse_line": (None, None, None),
    "chunk_without_id": (None, None, None),
    "string_timestamp": (None, None, None),
}
AGUI_ONLY = ("drop_result", "bad_args", "bad_state_delta", "empty_delta", "result_before_end", "orphan_result",
             "unknown_parent", "reused_id", "second_start", "missing_field", "bad_sse_line", "chunk_without_id",
             "string_timestamp")
ALIASES = {"cross_talk": "crosstalk", "dup": "duplicate", "reset": "close", "delay": "delay_first"}

_NAME_RE = re.compile(r"^[a-z_]+$")


class FaultSpecError(ValueError):
    """A fault spec that does not follow the grammar; the message says why."""


@dataclass(frozen=True)
class FaultSpec:
    """One fault asked for (`--fault`): its name, the share of runs it hits, and its argument or value."""

    name: str
    rate: float = 1.0
    arg: str | None = None
    value: float | int | None = None
    text: str = field(default="", compare=False)

    def __str__(self) -> str:
        return self.text or self.name


# chatprobe's duration grammar (harness/durations.py), mirrored: agentsim imports nothing of the harness, and
# tests/agentsim/test_fault_durations.py holds both to one table of inputs. A bare number (seconds), or numbers with
# units in Go's compound form ("250ms", "2 s", "1m30s", "1h 30m"), each unit at most once, largest first.
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_N = r"([0-9]*\.?[0-9]+)"
_DURATION = re.compile(rf"\s*(?:{_N}|(?:{_N}\s*h\s*)?(?:{_N}\s*m(?!s)\s*)?(?:{_N}\s*s\s*)?(?:{_N}\s*ms\s*)?)\s*")
MAX_SECONDS = 366 * 24 * 3600.0


def parse_duration(text: str) -> float:
    """Seconds of a duration as chatprobe reads one; FaultSpecError (which parse_fault prefixes with the fault)."""
    m = _DURATION.fullmatch(text) if isinstance(text, str) and len(text) <= 64 else None
    if m is None or not any(m.groups()):
        raise FaultSpecError(f"bad duration {str(text)[:40]!r} (examples: 2s, 250ms, 1m30s, 1.5)")
    bare, *parts = m.groups()
    seconds = float(bare) if bare is not None else \
        sum(float(n) * _UNITS[u] for n, u in zip(parts, ("h", "m", "s", "ms"), strict=True) if n is not None)
    if not math.isfinite(seconds) or seconds > MAX_SECONDS:
        raise FaultSpecError(f"bad duration {str(text)[:40]!r}: too long (at most 366 days)")
    return seconds


# The largest frame `oversized` sends: past any client's frame limit (chatprobe's is 4MiB), and no more memory.
MAX_OVERSIZED = 64 * 1024 * 1024

_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([a-z]*)", text.strip().lower())
    if not m or m.group(2) not in _SIZE_UNITS:
        raise FaultSpecError(f"bad size {text!r} (use e.g. 2MiB, 512KiB, 1000)")
    size = float(m.group(1)) * _SIZE_UNITS[m.group(2)]
    if not math.isfinite(size):
        raise FaultSpecError(f"bad size {text!r}: too large")
    return int(size)


def _parse_rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise FaultSpecError(f"bad rate {text!r} (a probability between 0 and 1)") from None
    if not 0.0 <= rate <= 1.0:
        raise FaultSpecError(f"rate {text!r} is not between 0 and 1")
    return rate


def parse_fault(text: str) -> FaultSpec:
    """Parse one fault spec; raises FaultSpecError with a one-line reason."""
    try:
        return _parse_fault(text)
    except FaultSpecError as exc:
        msg = str(exc)
        if isinstance(text, str) and not msg.startswith(repr(text.strip())):
            msg = f"{text.strip()!r}: {msg}"
        raise FaultSpecError(msg) from None


def _parse_fault(text: str) -> FaultSpec:
    if not isinstance(text, str) or not text.strip():
        raise FaultSpecError("empty fault spec")
    src = text.strip()
    value_text: str | None = None
    if "@" in src:
        left, rate_text = src.rsplit("@", 1)
        if "=" in left:
            left, value_text = left.split("=", 1)
    elif "=" in src:
        left, rate_text = src.split("=", 1)
    else:
        raise FaultSpecError(f"{src!r}: missing rate (write NAME=RATE or NAME=VALUE@RATE)")
    name, _, arg_text = left.partition(":")
    name = name.strip().lower().replace("-", "_")
    name = ALIASES.get(name, name)
    original_name = left.partition(":")[0].strip().lower()
    arg: str | None = arg_text.strip() or None
    if not _NAME_RE.match(name) or name not in FAULTS:
        raise FaultSpecError(f"{src!r}: unknown fault {name!r} (known: {', '.join(FAULTS)})")
    arg_kind, value_kind, default = FAULTS[name]
    if original_name == "reset" and arg is None:
        arg = "abort"

    if value_kind == "count":
        # exit_after=N: the number after '=' is a count of chats, not a rate.
        count_text = value_text if value_text is not None else rate_text
        try:
            count = int(count_text)
        except ValueError:
            raise FaultSpecError(f"{src!r}: exit_after needs a whole number of chats") from None
        if count < 1:
            raise FaultSpecError(f"{src!r}: exit_after needs at least 1 chat")
        rate = _parse_rate(rate_text) if value_text is not None else 1.0
        return FaultSpec(name, rate, None, count, src)

    rate = _parse_rate(rate_text)

    if arg_kind is None and arg is not None:
        raise FaultSpecError(f"{src!r}: fault {name!r} takes no ':{arg}' argument")
    if arg_kind == "role" and arg is not None:
        arg = ROLE_ALIASES.get(arg, arg)
        if arg not in WIRE_ROLES:
            raise FaultSpecError(f"{src!r}: unknown event role {arg!r} (known: {', '.join(WIRE_ROLES)})")
    if isinstance(arg_kind, tuple):
        if arg is None:
            arg = str(default) if default is not None else None
        elif arg not in arg_kind:
            raise FaultSpecError(f"{src!r}: {name} kind must be one of {', '.join(arg_kind)}")

    value: float | int | None = None
    if value_kind is None:
        if value_text is not None:
            raise FaultSpecError(f"{src!r}: fault {name!r} takes no value (write {name}=RATE)")
    elif value_kind == "duration":
        try:
            value = parse_duration(value_text) if value_text is not None else float(default)  # type: ignore[arg-type]
        except FaultSpecError as exc:
            raise FaultSpecError(f"{src!r}: fault {name}: {exc}") from None
    elif value_kind == "size":
        value = parse_size(value_text) if value_text is not None else int(default)  # type: ignore[call-overload]
        if value < 1:
            raise FaultSpecError(f"{src!r}: size must be positive")
        if value > MAX_OVERSIZED:  # built whole for each chat it strikes: `oversized=4000MB@1` was gigabytes a chat
            raise FaultSpecError(f"{src!r}: size {value_text} is more than 64MiB (16 times a client's usual frame "
                                 "limit, 4MiB, which is what the fault is for)")
    return FaultSpec(name, rate, arg, value, src)


# Faults decided per run; the others (refuse, exit_after) are handled by the server.
RUN_FAULTS = ("drop", "delay_first", "duplicate", "swap", "crosstalk", "stall", "close",
              "malformed", "oversized", "after_terminal", "exit")


@dataclass
class PlannedFault:
    """A fault planned for a run, and where in its planned events it strikes."""

    spec: FaultSpec
    position: int  # index into the run's planned event list (-1: after the terminal event)


def plan_run_faults(specs: list[FaultSpec], roles: list[str], rng: random.Random) -> list[PlannedFault]:
    """Decide which faults hit a run whose events will have these roles, and where."""
    planned: list[PlannedFault] = []
    n = len(roles)
    for spec in specs:
        if spec.name not in RUN_FAULTS:
            continue
        hit = rng.random() < spec.rate
        pick = rng.random()  # always drawn, so one fault's outcome never shifts another's
        if not hit or n == 0:
            continue
        name = spec.name
        if name in ("drop", "duplicate", "crosstalk", "swap") and spec.arg:
            candidates = [i for i, r in enumerate(roles) if r == spec.arg]
            if name == "swap":
                candidates = [i for i in candidates if i < n - 1]
            if not candidates:
                continue
            pos = candidates[0]
        elif name in ("drop", "duplicate", "crosstalk"):
            pos = int(pick * n)
        elif name == "swap":
            if n < 2:
                continue
            pos = int(pick * (n - 1))
        elif name == "delay_first":
            pos = 0
        elif name == "after_terminal":
            pos = -1
        else:  # mid-run: after event `pos`, with at least one event still to come
            if n < 3:
                pos = 0
            else:
                pos = 1 + int(pick * (n - 2))
        planned.append(PlannedFault(spec, pos))
    return planned
