"""The canonical vocabulary of chatprobe: the seven roles, a decoded Event, a Violation and a chat's outcome."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import msgspec


class Role(str, Enum):
    AGENT_STARTED = "agent_started"
    AGENT_THINKING = "agent_thinking"
    TOOL_EXECUTING = "tool_executing"
    TOOL_COMPLETED = "tool_completed"
    PARTIAL_RESULT = "partial_result"
    AGENT_COMPLETED = "agent_completed"
    ERROR_EVENT = "error_event"

    def __str__(self) -> str:  # so f-strings and labels read "agent_started"
        return self.value


ALL_ROLES: tuple[Role, ...] = tuple(Role)
_COMPLETED, _ERROR = Role.AGENT_COMPLETED, Role.ERROR_EVENT  # bound once: Role.X costs a lookup each time

# The roles a successful run must show when a scenario says nothing else (docs/protocol.md, R2).
DEFAULT_REQUIRED: tuple[Role, ...] = (
    Role.AGENT_STARTED,
    Role.AGENT_THINKING,
    Role.TOOL_EXECUTING,
    Role.TOOL_COMPLETED,
    Role.AGENT_COMPLETED,
)


class Outcome(str, Enum):
    PASSED = "passed"
    FAILED = "failed"
    INCOMPLETE = "incomplete"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


class Rule(str, Enum):
    """The protocol's rules (docs/protocol.md#rules); `title` is the short name reports and labels show."""

    R1 = "R1"
    R2 = "R2"
    R3 = "R3"
    R4 = "R4"
    R5 = "R5"
    R6 = "R6"
    R7 = "R7"
    R8 = "R8"
    R9 = "R9"
    R10 = "R10"
    R11 = "R11"
    R12 = "R12"
    R13 = "R13"

    def __str__(self) -> str:
        return self.value

    @property
    def caption(self) -> str:
        """The rule's short name: "first", "required", "isolation"…"""
        return _RULE_TITLES[self.value]

    @property
    def number(self) -> int:
        return int(self.value[1:])


_RULE_TITLES = {
    "R1": "first",
    "R2": "required",
    "R3": "terminal",
    "R4": "after-terminal",
    "R5": "pairing",
    "R6": "order",
    "R7": "seq",
    "R8": "isolation",
    "R9": "first-event time",
    "R10": "deadline",
    "R11": "stall",
    "R12": "well-formed",
    "R13": "error handling",
}

# Rule id -> title, for tables and metric labels.
RULES: dict[str, str] = {r.value: r.caption for r in Rule}


class FrameKind(str, Enum):
    """What a profile made of a frame that is not an agent event."""

    CONTROL = "control"  # welcome, pong, heartbeat…: belongs to no run
    # A profile's `stream_end` marker (`[DONE]`): belongs to no run, and is no welcome (the server saying that a
    # stream is over has not greeted a connection)
    STREAM_END = "stream_end"
    PING = "ping"  # the server asks for a reply
    ERROR = "error"  # a connection-level error (bad input, credentials, resume)
    MALFORMED = "malformed"  # not a frame of this dialect (R12)
    UNKNOWN = "unknown"  # a type the profile does not know, with `unknown_types: ignore`

    def __str__(self) -> str:
        return self.value


class SessionError(str, Enum):
    """Connection-level error codes that answer the session, never one chat's message (a map in the profile)."""

    AUTH_FAILED = "auth_failed"  # the credentials were refused
    RESUME_UNKNOWN = "resume_unknown"  # the server does not know the run a resume named


# A span's key (a tool call id, a step name), or (key, owner) when the profile's span names an owner (Span.owner) and
# the frame names one: AG-UI steps are per owner, a parent and a subagent may each have a step of one name open.
SpanKey = str | None | tuple[str | None, str]


def span_key_text(key: SpanKey) -> str:
    """A span key as violation messages show it (an absent key as such: the event named none, never "None")."""
    if key.__class__ is tuple:
        k, owner = key
        return f"{NO_KEY if k is None else repr(k)} of {owner!r}"
    return NO_KEY if key is None else repr(key)


NO_KEY = "(no key)"  # a span event that names no key: spans of such events pair by order of appearance


class Event(msgspec.Struct, gc=False):
    """One agent event as the profile decoded it, stamped with the client's monotonic receipt time.

    A msgspec Struct with gc=False, not a dataclass: made in C (eight a chat, each ~0.15 µs instead of the dataclass
    `__init__`'s ~0.9 µs) and never walked by the garbage collector (a run keeps every judged chat's events: each young
    collection walked them). It holds strings, numbers, tuples and `payload`'s references into the decoded frame,
    none of which refers back to an event, so it can be in no reference cycle. Compared and shown as the dataclass was:
    `nbytes` not compared, neither it nor `error_detail` shown."""

    role: Role | None  # None: a wire type the profile knows but maps to no role (e.g. TEXT_MESSAGE_START)
    wire_type: str
    received_at: float
    run_id: str | None = None
    thread_id: str | None = None
    user_id: str | None = None
    message_id: str | None = None
    seq: int | None = None
    tool_call_id: str | None = None
    tool_name: str | None = None
    recoverable: bool = False
    # (span name, "open" | "inner" | "close", key) when the profile pairs this wire type with others.
    span: tuple[str, str, SpanKey] | None = None
    server_time: Any = None
    # A `seq` that is present but not an integer of at most 64 bits: its JSON text (cut) and what it is (an R12).
    bad_seq: Any = None
    oversized: tuple[str, ...] = ()  # fields over the size limit, kept truncated (an R12)
    parent_run_id: str | None = None  # the run this one continues (AG-UI's parentRunId): a new run on the stream
    # The fields the profile's payload checks read (harness/checksets.py): references into the decoded frame,
    # dropped by the checker once read, so events kept for reports hold none of them.
    payload: dict[str, Any] | None = None
    problems: tuple[str, ...] = ()  # the frame breaks the dialect's schema (an R12 each), field named
    advice: tuple[str, ...] = ()  # the frame is off the schema's advice (warnings, not violations)
    # What keeping the event costs (kept_bytes), measured by the decoder while the strings are at hand; 0: not measured.
    nbytes: int = 0
    # An error event's own code and message as the server gave them, cut (`error_code: message`): what its R13 says.
    error_detail: str | None = None

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Event:
            return NotImplemented
        return _compared(self) == _compared(other)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in _SHOWN)
        return f"Event({shown})"

    @property
    def terminal(self) -> bool:
        role = self.role
        return role is _COMPLETED or (role is _ERROR and not self.recoverable)


_SHOWN = tuple(name for name in Event.__struct_fields__ if name not in ("nbytes", "error_detail"))
_COMPARED = tuple(name for name in Event.__struct_fields__ if name != "nbytes")


def _compared(ev: Event) -> tuple[Any, ...]:
    return tuple(getattr(ev, name) for name in _COMPARED)


EVENT_OVERHEAD = 200  # an Event's own size, roughly


def kept_bytes(ev: Event) -> int:
    """What keeping an event costs, about: its object and its strings. (Once per event kept, where the decoder did
    not measure it: the ids one by one, with no tuple of them made and looped over.)"""
    n = EVENT_OVERHEAD + len(ev.wire_type)
    if (s := ev.run_id) is not None:
        n += len(s)
    if (s := ev.thread_id) is not None:
        n += len(s)
    if (s := ev.user_id) is not None:
        n += len(s)
    if (s := ev.message_id) is not None:
        n += len(s)
    if (s := ev.tool_call_id) is not None:
        n += len(s)
    if (s := ev.tool_name) is not None:
        n += len(s)
    if isinstance(t := ev.server_time, str):
        n += len(t)
    if (span := ev.span) is not None and (key := span[2]).__class__ is tuple:  # an owned span's owner (span_key_text)
        n += len(key[1])
    if (s := ev.error_detail) is not None:
        n += len(s)
    return n


@dataclass(slots=True, frozen=True)
class Violation:
    """A rule broken: which, why (one line), and at which event of the chat's list if one."""

    rule: Rule
    reason: str  # one line a person understands
    event_index: int | None = None  # index of the offending event in the chat's event list

    def __str__(self) -> str:
        where = f" (event #{self.event_index})" if self.event_index is not None else ""
        return f"{self.rule} {RULES.get(self.rule, '')}: {self.reason}{where}"  # RULES: also a plain "R1" string


@dataclass(slots=True)
class Frame:
    """What a profile made of one wire frame that is not an agent event, with the fields the rules read."""

    kind: FrameKind
    wire_type: str | None = None
    error_code: str | None = None
    detail: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None  # the run an error names (a resume the server did not know)
    user_id: str | None = None  # the user a welcome names
    session_error: SessionError | None = None  # an error that answers the session, not a chat's message
    # The client's message a connection-level error names (its message id, else its thread id): the chat it rejects
    message_id: str | None = None
    thread_id: str | None = None
    # What makes the frame malformed although it was read (it holds NaN or Infinity: profiles._with_not_json): an
    # R12, while the frame is still what it says (a ping answered, an error ending the chat it answers)
    problem: str = ""
