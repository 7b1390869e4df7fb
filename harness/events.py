"""The canonical vocabulary of chatprobe: the seven roles, a decoded Event, a Violation and a chat's outcome."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


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

# The roles a successful run must show when a scenario says nothing else (PROTOCOL.md R2).
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


RULES: dict[str, str] = {
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


@dataclass(slots=True)
class Event:
    """One agent event as the profile decoded it, stamped with the client's monotonic receipt time."""

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
    span: tuple[str, str, str | None] | None = None
    server_time: Any = None
    bad_seq: Any = None  # a `seq` that is present but not an integer (an R7)

    @property
    def terminal(self) -> bool:
        return self.role is Role.AGENT_COMPLETED or (self.role is Role.ERROR_EVENT and not self.recoverable)


@dataclass(slots=True, frozen=True)
class Violation:
    rule: str  # "R1" … "R13"
    reason: str  # one line a person understands
    event_index: int | None = None  # index of the offending event in the chat's event list

    def __str__(self) -> str:
        where = f" (event #{self.event_index})" if self.event_index is not None else ""
        return f"{self.rule} {RULES.get(self.rule, '')}: {self.reason}{where}"


@dataclass(slots=True)
class Frame:
    """What a profile made of one wire frame that is not an agent event."""

    kind: str  # "control" (welcome, pong, heartbeat…), "ping", "error" (connection-level error), "malformed"
    wire_type: str | None = None
    error_code: str | None = None
    detail: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
