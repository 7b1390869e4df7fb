"""Builders of event streams for checker tests: valid runs and named mutations of them."""
from __future__ import annotations

from harness.checker import ChatTracker, Expectations
from harness.events import DEFAULT_REQUIRED, Event, Role

EXP = Expectations(required=frozenset(DEFAULT_REQUIRED), first_event_limit=2.0, deadline=60.0, stall_limit=30.0)


def ev(role: Role, seq: int | None, t: float, *, run: str = "r1", call: str | None = None,
       recoverable: bool = False, user: str | None = "u1", thread: str | None = "t1") -> Event:
    e = Event(role=role, wire_type=role.value, received_at=t, run_id=run, seq=seq, user_id=user, thread_id=thread,
              recoverable=recoverable)
    if role in (Role.TOOL_EXECUTING, Role.TOOL_COMPLETED):
        e.tool_call_id = call
        e.tool_name = "calculator"
        e.span = ("tool call", "open" if role is Role.TOOL_EXECUTING else "close", call)
    return e


def valid_run(tools: int = 1, thinks: int = 1, chunks: int = 1, gap: float = 0.01, start: float = 0.05) -> list[Event]:
    roles: list[tuple[Role, str | None]] = [(Role.AGENT_STARTED, None)]
    roles += [(Role.AGENT_THINKING, None)] * thinks
    for i in range(tools):
        roles += [(Role.TOOL_EXECUTING, f"c{i}"), (Role.TOOL_COMPLETED, f"c{i}")]
    roles += [(Role.PARTIAL_RESULT, None)] * chunks
    roles += [(Role.AGENT_COMPLETED, None)]
    return [ev(r, i + 1, start + i * gap, call=c) for i, (r, c) in enumerate(roles)]


def judge(events: list[Event], exp: Expectations = EXP, now: float | None = None, **kw):
    t = ChatTracker("c1", exp, 0.0, thread_id="t1", run_id="r1")
    for e in events:
        t.feed(e)
    end = now if now is not None else (events[-1].received_at + 0.1 if events else exp.deadline)
    return t.finish(end, **kw)


def rules(result) -> set[str]:
    return {v.rule for v in result.violations}
