"""The one checker: rules R1–R13 of docs/protocol.md as a pure, incremental state machine.

Feed a ChatTracker the events of one chat with their receipt times and ask it for a verdict; a
ConnectionChecker routes the decoded frames of one connection to its chats and catches cross-talk. Neither
touches a socket, a clock or a global: every time comes in as an argument (the sans-I/O shape of websockets).
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from .checksets import CHECKS, Finding, RunChecks, RunContext
from .events import (
    ALL_ROLES,
    Event,
    Frame,
    FrameKind,
    Outcome,
    Role,
    Rule,
    SessionError,
    SpanKey,
    Violation,
    kept_bytes,
    span_key_text,
)

# Judged chats a connection remembers for late events; older ones are forgotten (bounded memory).
KEEP_FINISHED = 64
# A flooding server must not take the client down: per chat, events and violations past these are counted,
# not kept (the verdict and every counter stay exact).
MAX_EVENTS_KEPT = 10_000
# …and past this many bytes of kept events (their strings, each at most the decoder's 1 KiB per id): a server
# sending big ids costs a chat this much at most, whatever the event count.
MAX_KEPT_BYTES = 4 * 1024 * 1024
MAX_VIOLATIONS_KEPT = 200
MAX_SEQS_AHEAD = 10_000
MAX_OPEN_SPANS = 1_000
MAX_WARNINGS_KEPT = 50
# Further runs one stream may carry after the chat's own (AG-UI: RUN_STARTED with parentRunId after RUN_FINISHED).
MAX_FOLLOWUP_RUNS = 32
# Run ids a connection maps to a chat of this client besides its own (a run restarted under another id).
MAX_RUN_ALIASES = 1024
# Chats a connection holds before it keeps a set of them beside the list (see ConnectionChecker._members).
SMALL_CONNECTION = 8
# A connection's first malformed or foreign frames (R12, R8) are charged to every chat open when each arrives; past
# this many, a flood: each open chat has been told, so a further one is charged only to chats opened since the last
# (a recording of 1,000 open chats and a million junk lines was a billion steps: hours).
INCIDENTS_EACH = 16

# The roles feed() compares against, bound once: an enum member looked up on its class costs ~60 ns each time.
_STARTED, _THINKING, _TOOL_EXECUTING = Role.AGENT_STARTED, Role.AGENT_THINKING, Role.TOOL_EXECUTING
_COMPLETED, _ERROR = Role.AGENT_COMPLETED, Role.ERROR_EVENT
_PASSED, _FAILED = Outcome.PASSED, Outcome.FAILED
_N_ROLES = len(ALL_ROLES)
_NONE_REQUIRED: frozenset[Role] = frozenset()

# A chat's containers it may never need (violations, gaps in seqs, spans, reconnects…) start as these shared empty
# immutables, replaced by a container of its own when first written: an open chat allocates only what it uses, and
# each container not made is an object less for the garbage collector. Typed Any so each slot keeps the type of the
# container that replaces it; a write that forgot to replace one raises (they are immutable) instead of sharing it.
_NO_LIST: Any = ()
_NO_DICT: Any = MappingProxyType({})
_NO_TRIES = (0, 0)  # a chat that never tried to reconnect
_NO_SET: Any = frozenset()

ExpectError = Literal["recoverable", "fatal", "invalid_input"] | None


@dataclass(frozen=True, slots=True)
class Expectations:
    """What one chat must show: required roles, limits in seconds, relaxations, an expected error."""

    required: frozenset[Role]
    first_event_limit: float = 2.0
    deadline: float = 60.0
    stall_limit: float = 30.0
    thinking_before_tool: bool = True
    expect_error: ExpectError = None
    # Span names that must be closed by the terminal event (from the profile); others may stay open.
    spans_must_close: frozenset[str] | None = None
    # The profile's payload check sets (harness/checksets.py) and the tools the request offered the agent.
    checks: tuple[str, ...] = ()
    offered_tools: frozenset[str] = frozenset()
    # The roles a scenario step listed (`required:`), as it listed them; None: the scenario's or the profile's. Not
    # read by any rule (`required` holds them): `--record` writes them with the chat's message, so that `chatprobe
    # check` builds the same expectations from the recording (harness/recorder.expect_note).
    step_required: frozenset[Role] | None = None
    # The `seq` of a run's first event (the profile's `seq_start`: 1, or 0 for a dialect counting from 0, such as the
    # OpenAI Responses API's `sequence_number`): R7 wants seq_start, seq_start + 1, … with no gap.
    seq_start: int = 1
    # Wire types the dialect still sends after a fatal error event, closing what it cut short (the profile's
    # `after_error`: the Vercel AI SDK's finish-step and finish after an error part): no R3 or R4 there.
    after_error: frozenset[str] = frozenset()


@dataclass(slots=True)
class ChatResult:
    """The verdict on one chat, with everything a report, a metric or a JUnit case needs."""

    chat_id: str
    scenario: str
    outcome: Outcome
    violations: list[Violation]
    missing: list[Role]
    events: list[Event]
    sent_at: float
    time_to_first_event: float | None
    duration: float | None
    event_delays: dict[Role, float]
    run_id: str | None = None
    thread_id: str | None = None
    reconnects: list[str] = field(default_factory=list)
    # Connections this chat tried to open to reconnect (every attempt, retries too), and how many of them failed.
    reconnect_attempts: int = 0
    reconnect_failures: int = 0
    error: str | None = None
    error_kind: str | None = None
    note: str = ""
    events_received: int = 0  # all of them; `events` keeps the first MAX_EVENTS_KEPT
    violations_not_listed: dict[str, int] = field(default_factory=dict)  # by rule, past MAX_VIOLATIONS_KEPT
    event_counts: dict[Role, int] = field(default_factory=dict)  # every event received, by role
    # Advice apart from the contract (docs/profiles.md): shown in reports, never failing the chat.
    warnings: list[Violation] = field(default_factory=list)
    parent_run_id: str | None = None  # a further run of the same stream: the run it continues
    further_run: bool = False  # a run the server added to a chat's stream: reported, counted in its chat (fold_further)
    abandoned_at: float | None = None  # when the client left it mid-run (`abandon`), on the clock of sent_at
    # What its events cost to keep (events.kept_bytes of each), as the tracker counted them up to the verdict: what a
    # run's listing charges for them (results.Listing), with no second pass over them; 0: not counted (summed then).
    events_bytes: int = field(default=0, compare=False, repr=False)

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASSED

    def rule_counts(self) -> Counter[str]:
        """Violations by rule id, the listed ones and those past the listing cap."""
        if not self.violations and not self.violations_not_listed:
            return Counter()  # the common case, read by every sink for every chat: no generator, no update
        counts: Counter[str] = Counter(v.rule.value for v in self.violations)
        counts.update(self.violations_not_listed)
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "chat_id": self.chat_id,
            "scenario": self.scenario,
            "outcome": self.outcome.value,
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "time_to_first_event": self.time_to_first_event,
            "duration": self.duration,
            "missing": [r.value for r in self.missing],
            "violations": [
                {"rule": v.rule, "reason": v.reason, "event_index": v.event_index} for v in self.violations
            ],
            "warnings": [
                {"rule": v.rule, "reason": v.reason, "event_index": v.event_index} for v in self.warnings
            ],
            "parent_run_id": self.parent_run_id,
            "event_delays": {r.value: d for r, d in self.event_delays.items()},
            "events": [
                {
                    "index": i,
                    "role": e.role.value if e.role else None,
                    "wire_type": e.wire_type,
                    "seq": e.seq,
                    "t": round(e.received_at - self.sent_at, 6),
                    "server_time": e.server_time,
                }
                for i, e in enumerate(self.events)
            ],
            "events_received": self.events_received,
            "violations_not_listed": self.violations_not_listed,
            "reconnects": self.reconnects,
            "reconnect_attempts": self.reconnect_attempts,
            "reconnect_failures": self.reconnect_failures,
            "error": self.error,
            "error_kind": self.error_kind,
            "note": self.note,
        }


class ChatTracker:
    """Rules R1–R13 for one chat (one message and the run it triggers), fed incrementally."""

    # The bytes of events this chat keeps for reports (past them events are counted, not kept: the verdict is the
    # same). A driver that reports no events (the proxy) keeps fewer, in a subclass.
    keep_bytes: ClassVar[int] = MAX_KEPT_BYTES

    __slots__ = (
        "chat_id", "scenario", "exp", "sent_at", "thread_id", "run_id", "message_id", "events",
        "violations", "saw_started", "roles_past_kept", "first_delay", "terminal_index", "terminal_at", "last_at",
        "seq_low", "seqs_above", "max_seq", "bad_seqs",
        "open_spans", "saw_tool", "saw_thinking", "error_seen", "reconnects", "reconnect_tries", "lost", "connection_error",
        "_result", "n_events", "kept_bytes", "overflow", "unkept_counts", "terminal_event", "warnings", "run_checks", "followups",
        "wake_id", "parent_run_id", "_root",
    )

    def __init__(
        self,
        chat_id: str,
        expectations: Expectations,
        sent_at: float,
        scenario: str = "",
        thread_id: str | None = None,
        run_id: str | None = None,
        message_id: str | None = None,
        request: dict[str, Any] | None = None,
    ) -> None:
        """`request`: the client's own request where this program did not send it (the proxy, `chatprobe check`), for
        the payload checks to read as they start (checksets.RunContext); not kept. (Every argument may be given by
        position: a class called with keywords gets them as a dict, a chat's cost on the client's path, new_tracker.)"""
        self.chat_id = chat_id
        self.scenario = scenario
        self.exp = expectations
        self.sent_at = sent_at
        self.thread_id = thread_id
        self.run_id = run_id
        self.message_id = message_id
        self.events: list[Event] = _NO_LIST
        self.violations: list[Violation] = _NO_LIST
        # Each role's first time up to the terminal event is read from the kept events by the verdict, so an open chat
        # keeps no dict of them (nor updates one per event); past the kept events (MAX_EVENTS_KEPT, MAX_KEPT_BYTES)
        # they are all here, from the kept ones on.
        self.saw_started = False
        self.roles_past_kept: dict[Role, float] = _NO_DICT
        self.first_delay: float | None = None
        self.terminal_index: int | None = None
        self.terminal_at: float | None = None
        self.last_at = sent_at
        # Seqs seen: all of seq_start..seq_low, plus those above it (an in-order stream keeps this set empty).
        self.seq_low = self.max_seq = expectations.seq_start - 1
        self.seqs_above: set[int] = _NO_SET
        # Events whose seq was not an integer (an R12 each): a seq the verdict finds missing may be one of them.
        self.bad_seqs = 0
        self.open_spans: dict[tuple[str, SpanKey], int] = _NO_DICT
        self.saw_tool = False
        self.saw_thinking = False
        self.error_seen: Event | None = None
        self.reconnects: list[str] = _NO_LIST
        self.reconnect_tries = _NO_TRIES  # (attempts, failed ones): reconnect_tried
        self.lost = False
        self.connection_error: Frame | None = None
        self._result: ChatResult | None = None
        self.n_events = 0
        self.kept_bytes = 0
        self.overflow: dict[str, int] = _NO_DICT
        # Events by role past those kept (MAX_EVENTS_KEPT, MAX_KEPT_BYTES): the verdict counts the kept ones, so a chat
        # pays no dict, and no update per event, for counts its event list already holds.
        self.unkept_counts: dict[Role, int] = _NO_DICT
        self.terminal_event: Event | None = None
        self.warnings: list[Violation] = _NO_LIST
        self.run_checks: RunChecks | None = None
        if expectations.checks:
            ctx = RunContext(expectations.offered_tools, (message_id,) if message_id else (), request)
            self.run_checks = _Combined([CHECKS[name].start(ctx) for name in expectations.checks])
        # Further runs the stream carried after this one (multi-run streams), each judged as its own chat; they wake
        # the flow that plays this chat (wake_id).
        self.followups: list[ChatTracker] = _NO_LIST
        self.wake_id = chat_id
        self.parent_run_id: str | None = None
        # The chat whose stream carried this further run; None: this chat itself (a reference to itself would make
        # every chat a reference cycle, freed only by the garbage collector's full passes).
        self._root: ChatTracker | None = None

    def __copy__(self) -> "ChatTracker":
        """A shallow copy (a provisional verdict is judged on one while the chat listens on), slot by slot."""
        return _copy_tracker(self)

    # -- state --
    @property
    def root(self) -> "ChatTracker":
        """The chat whose stream carried this run: itself, or the one this further run followed."""
        return self._root or self

    @property
    def judged(self) -> bool:
        """The verdict is in (`finish` or `abandon` was called); later calls return the same result."""
        return self._result is not None

    @property
    def result(self) -> ChatResult | None:
        return self._result

    @property
    def done(self) -> bool:
        """The chat needs nothing more: its terminal event (or, for an invalid-input probe, the error) came."""
        # (asked a few times a chat: most chats expect no error, and None is told apart before a string comparison)
        if (expect := self.exp.expect_error) is not None and expect == "invalid_input":
            return self.connection_error is not None
        return self.terminal_index is not None or self.connection_error is not None

    def wait_deadline(self) -> float:
        return self.sent_at + self.exp.deadline

    @property
    def held_bytes(self) -> int:
        """What the chat holds, about: the kept events of its run and of the further runs its stream carried, and
        what their payload checks hold (ids, state)."""
        n = 0
        for run in (self, *self.followups):
            checks = run.run_checks
            n += run.kept_bytes + (0 if checks is None else checks.held_bytes())
        return n

    def last_run(self) -> "ChatTracker":
        """The latest run of this chat's stream: itself, or the last further run it carried."""
        return self.followups[-1] if self.followups else self

    def followup(self, run_id: str) -> "ChatTracker":
        """A further run on this chat's stream after this run's clean end: a chat of its own, of the same user and
        thread, timed from that end, whose payload checks continue this run's (ids, state)."""
        root = self.root
        chat = type(self)(f"{root.chat_id}.{len(root.followups) + 1}", self.exp, self.terminal_at or self.last_at,
                           scenario=self.scenario, thread_id=self.thread_id, run_id=run_id)
        chat.parent_run_id = self.run_id
        chat.wake_id, chat._root = root.wake_id, root
        if self.run_checks is not None:
            # This run is over and no further run follows it any more (the new one is the stream's last): its checks
            # are done, and what the next run needs of them it takes over.
            chat.run_checks, self.run_checks = self.run_checks.followup(), None
        if not root.followups:
            root.followups = []
        root.followups.append(chat)
        return chat

    def _warn(self, rule: Rule, reason: str, index: int | None) -> None:
        if not self.warnings:
            self.warnings = []
        if len(self.warnings) < MAX_WARNINGS_KEPT:
            self.warnings.append(Violation(rule, reason, index))

    def _flag(self, rule: Rule, reason: str, index: int | None = None) -> None:
        if not self.violations:
            self.violations = [Violation(rule, reason, index)]
        elif len(self.violations) < MAX_VIOLATIONS_KEPT:
            self.violations.append(Violation(rule, reason, index))
        else:
            if not self.overflow:
                self.overflow = {}
            self.overflow[rule] = self.overflow.get(rule, 0) + 1

    # -- input --
    def feed(self, ev: Event) -> None:
        """One event of this chat's run, in arrival order."""
        if self._result is not None:
            self._after_verdict(ev)
            return
        if self.terminal_index is None and ev.received_at > self.sent_at + self.exp.deadline:
            # Received past the chat's deadline, before any terminal event: the chat was due to be judged at its
            # deadline as it stood (R10), and this event comes after that verdict, as a watcher (`chatprobe check`)
            # judges it from the same receipt times. A live client busy when its deadline passed (a loaded machine, a
            # long frame) reads the event only now: it must not let the event into the verdict. So for a further run
            # of the stream (timed from the end of the run before it): `check` judges it at its deadline as well.
            self.finish(self.wait_deadline())
            self._after_verdict(ev)
            return
        idx = self.n_events
        self.n_events = idx + 1
        role = ev.role
        kept = idx < MAX_EVENTS_KEPT and self.kept_bytes < self.keep_bytes
        if kept:
            if idx or self.events is not _NO_LIST:  # the first event makes the list (or a verdict before it did)
                self.events.append(ev)
            else:
                self.events = [ev]
            if n := ev.nbytes:  # the decoder measured it (else measured here); spent: no int kept per event
                ev.nbytes = 0
            self.kept_bytes += n or kept_bytes(ev)
            # (Role is a str enum: the wire type is compared with the member itself, its `_value_` attribute read only
            # to be kept, ~25 ns an event less)
            if role is not None and ev.wire_type == role:
                ev.wire_type = role._value_  # the role's own string, not a copy per kept event (netra's wire types)
        else:
            if self.roles_past_kept is _NO_DICT:
                self.roles_past_kept = self._kept_delays()
            if role is not None:
                if not self.unkept_counts:
                    self.unkept_counts = {}
                self.unkept_counts[role] = self.unkept_counts.get(role, 0) + 1
        at = ev.received_at
        terminal = role is _COMPLETED or (role is _ERROR and not ev.recoverable)  # Event.terminal, with no call
        if idx == 0:
            self.first_delay = at - self.sent_at
            # A run may fail before it starts: a fatal error as the first event is told to the user.
            if role is not _STARTED and not (role is _ERROR and terminal):
                self._flag(Rule.R1, f"first event is {_name(ev)}, not agent_started", idx)
            if self.first_delay > self.exp.first_event_limit:
                self._flag(Rule.R9,
                    f"first event after {self.first_delay:.3f}s, over the {self.exp.first_event_limit:g}s limit",
                    idx,
                )
        else:
            gap = at - self.last_at
            if gap > self.exp.stall_limit:
                self._flag(Rule.R11, f"{gap:.3f}s without an event, over the {self.exp.stall_limit:g}s stall limit", idx)
        self.last_at = at
        if self.run_id is None and ev.run_id is not None:
            self.run_id = ev.run_id

        if ev.oversized:
            self._flag(Rule.R12, f"{_name(ev)} has {', '.join(ev.oversized)} over the size limit (kept truncated)", idx)
        # R7: sequence numbers, where the server sends them.
        seq = ev.seq
        if seq is not None:
            if seq == self.max_seq + 1 and self.seq_low == self.max_seq:  # the next one, no gap open: all _seq does
                self.seq_low = self.max_seq = seq
            elif self._seq(seq, idx) and self._copy_of_kept(ev, seq, idx):
                # The same event again (a resume that replays what the client had): R7 says so, and the rules that
                # judged it the first time do not judge it twice (no R1, R4, R5 of a copy). Another event under a
                # seq already used (not a copy) is judged by every rule.
                if ev.payload is not None:
                    ev.payload = None
                return
        elif ev.bad_seq is not None:
            # Malformed, not out of order: JSON has one number type, but the protocol's seq is an integer (1, 2, 3, …),
            # and 1.0 is no more read as 1 than "1" or true is; nor is one past 64 bits a count of a run's events. The
            # event is judged as one without a seq.
            self.bad_seqs += 1
            self._flag(Rule.R12, f"{_name(ev)} has seq {ev.bad_seq}", idx)  # (what it is and must be: profiles._seq_text)

        if idx and role is _STARTED and self.saw_started and self.terminal_index is None:
            self._flag(Rule.R1, "a second agent_started in the same run", idx)

        if ev.problems or ev.advice or ev.payload is not None:
            self._payload(ev, idx)
            if ev.role is not role:  # the payload shows no content of its role (an empty delta): it counts as none
                if not kept and role is not None:
                    self.unkept_counts[role] -= 1
                role = ev.role

        if self.terminal_index is not None:
            if (self.exp.after_error and ev.wire_type in self.exp.after_error and self.terminal_event is not None
                    and self.terminal_event.role is _ERROR):
                return  # the dialect's own close after its error (only on this path: no cost before the terminal)
            if terminal:
                self._flag(Rule.R3, f"second terminal event {_name(ev)} "
                                    f"(the run already ended at event #{self.terminal_index})", idx)
            else:
                self._flag(Rule.R4, f"{_name(ev)} after the terminal event #{self.terminal_index}", idx)
            return

        if not kept and role is not None and role not in self.roles_past_kept:
            self.roles_past_kept[role] = at - self.sent_at

        if role is _THINKING:
            self.saw_thinking = True
        elif role is _TOOL_EXECUTING and not self.saw_tool:
            self.saw_tool = True
            if self.exp.thinking_before_tool and not self.saw_thinking:
                self._flag(Rule.R6, "tool_executing before any agent_thinking", idx)
        elif role is _ERROR:
            self.error_seen = ev
            if self.exp.expect_error is None:
                kind = "recoverable" if ev.recoverable else "fatal"
                if not ev.recoverable:
                    said = f": {ev.error_detail}" if ev.error_detail else ""
                    self._flag(Rule.R13, f"unexpected {kind} error event ({ev.wire_type}){said}", idx)
        elif role is _STARTED:
            self.saw_started = True

        if ev.span is not None:
            self._span(ev, idx)

        if terminal:
            self.terminal_index = idx
            self.terminal_event = ev
            self.terminal_at = at
            if self.run_checks is not None:
                for finding in self.run_checks.end(ev):
                    (self._warn if finding.warning else self._flag)(finding.rule, finding.reason, idx)
            ev.payload = None
            must = self.exp.spans_must_close
            # A fatal error may cut a tool call or a message short: only a completed run owes closed spans.
            still_open = self.open_spans.items() if role is _COMPLETED else ()
            for (name, key), _count in still_open:
                if must is None or name in must:
                    shown = "" if key is None else key if key.__class__ is str else span_key_text(key)
                    self._flag(Rule.R5, f"{name} {shown} still open at the terminal event".replace("  ", " "), idx)

    def _after_verdict(self, ev: Event) -> None:
        """An event of this run after its verdict (past the settle window, or its deadline): its verdict was counted
        and stands, so the event shows with the chat as a warning, never silently (a longer `expect.settle` judges
        such events: R3, R4)."""
        res = self._result
        assert res is not None
        if len(res.warnings) < MAX_WARNINGS_KEPT:
            rule = Rule.R10 if self.terminal_index is None else Rule.R3 if ev.terminal else Rule.R4
            res.warnings.append(Violation(rule, f"{_name(ev)} arrived after the chat was judged (past its settle "
                                                "window): not in its verdict", None))
        events = self.events
        if events is res.events and len(events) < MAX_EVENTS_KEPT and self.kept_bytes < self.keep_bytes:
            ev.payload = None
            events.append(ev)
            n = ev.nbytes or kept_bytes(ev)
            self.kept_bytes += n
            if res.events_bytes:
                res.events_bytes += n  # (the list is the result's too)
            ev.nbytes = 0

    def _payload(self, ev: Event, idx: int) -> None:
        """The dialect's payload rules (harness/payload_checks.py): the schema's verdict, then the run's checks."""
        for problem in ev.problems:
            self._flag(Rule.R12, problem, idx)
        for advice in ev.advice:
            self._warn(Rule.R12, advice, idx)
        if self.run_checks is not None and self.terminal_index is None:
            for finding in self.run_checks.event(ev):
                (self._warn if finding.warning else self._flag)(finding.rule, finding.reason, idx)
        if not ev.terminal or self.terminal_index is not None:
            ev.payload = None  # read: the events kept for reports hold no payload (the terminal one is read at its end)

    def copy_of_had(self, ev: Event) -> bool:
        """Whether `ev` is a copy of the event this chat already had under its seq (the duplicate R7 would see, as
        `_copy_of_kept` finds it): what a resume's replay of events the client did not say it had may send again
        (flow.Resumes), left unjudged, where another event under that seq is judged."""
        s = ev.seq
        if not isinstance(s, int) or isinstance(s, bool) or not (s <= self.seq_low or s in self.seqs_above):
            return False
        return s >= self.exp.seq_start and self._copy_of_kept(ev, s, self.n_events)

    def _copy_of_kept(self, ev: Event, s: int, idx: int) -> bool:
        """Whether `ev`, whose seq `s` came before, is a copy of that earlier event (the same wire type, span and
        terminality): found where a run numbered from its first event puts it, else among the 16 kept before it.
        Bounded work per duplicate; a copy not found is judged as any event."""
        events = self.events
        n = min(idx, len(events))
        if not n:
            return False
        first = events[0].seq
        spots = [s - first] if first is not None and 0 <= s - first < n - 16 else []
        spots.extend(range(max(0, n - 16), n))
        for j in spots:
            old = events[j]
            if old.seq == s:
                return old.wire_type == ev.wire_type and old.span == ev.span and old.terminal == ev.terminal
        return False

    def _seq(self, s: int, idx: int, *, quiet: bool = False) -> bool:
        """R7 for a seq off the plain next one; True when it is a duplicate (that event received again). `quiet`:
        only note that the seq came (an event of the run that another rule took away, R8), flag nothing."""
        if s < (start := self.exp.seq_start):
            # One R7, naming what was sent: the event's seq stood for none of the run's, so a seq missing at the
            # verdict may be this event's (counted as an unreadable one, bad_seqs), not a second R7 for a lost event.
            self.bad_seqs += 1
            if not quiet:
                self._flag(Rule.R7, f"seq {s} is not a positive sequence number" if start == 1 else
                           f"seq {s} is below the dialect's first sequence number, {start}", idx)
            return False
        above = self.seqs_above
        if s <= self.seq_low or s in above:
            if not quiet:
                self._flag(Rule.R7, f"seq {s} received twice (duplicate event)", idx)
            return True
        if s < self.max_seq and not quiet:
            self._flag(Rule.R7, f"seq {s} arrived after seq {self.max_seq} (out of order)", idx)
        if s > self.max_seq:
            self.max_seq = s
        if s == self.seq_low + 1:
            low = s
            while low + 1 in above:
                low += 1
                above.discard(low)
            self.seq_low = low
        elif len(above) < MAX_SEQS_AHEAD:
            if not above:
                above = self.seqs_above = set()
            above.add(s)
        else:  # a server that skips seqs forever: stop remembering them (memory stays bounded)
            self.seq_low = self.max_seq
            above.clear()
            self._flag(Rule.R7, f"more than {MAX_SEQS_AHEAD} seqs ahead of a gap: stopped tracking the gaps", idx)
        return False

    def _span(self, ev: Event, idx: int) -> None:
        name, kind, key = ev.span  # type: ignore[misc]
        k = (name, key)
        # An event naming no key whose frame already has its R12 (AG-UI's schema: `toolCallId`, `messageId`, `stepName`
        # required): that one violation says what it lacks, and an R5 for "tool call (no key)" would say it again. It
        # still opens and closes by order, as keyless spans pair.
        told = ev.problems and (key[0] if key.__class__ is tuple else key) is None
        if kind == "open":
            # Several open at once are fine when keyed by a fallback (two calls of one tool, no call ids).
            by_fallback = ev.tool_call_id is None and key is not None and key == ev.tool_name
            if k in self.open_spans and not by_fallback and not told:
                self._flag(Rule.R5, f"{_name(ev)} opens {name} {span_key_text(key)} again while it is open", idx)
            elif k not in self.open_spans and len(self.open_spans) >= MAX_OPEN_SPANS:
                self._flag(Rule.R5, f"more than {MAX_OPEN_SPANS} spans open at once: {name} {span_key_text(key)} not "
                           "tracked", idx)
                return
            if not self.open_spans:
                self.open_spans = {}
            self.open_spans[k] = self.open_spans.get(k, 0) + 1
        elif k not in self.open_spans:
            if told:
                return
            what = "closes" if kind == "close" else "continues"
            self._flag(Rule.R5, f"{_name(ev)} {what} {name} {span_key_text(key)}, which is not open", idx)
        elif kind == "close":
            n = self.open_spans[k] - 1
            if n:
                self.open_spans[k] = n
            else:
                del self.open_spans[k]

    def malformed(self, detail: str, at: float) -> None:
        self._flag(Rule.R12, malformed_reason(detail), self.n_events or None)

    def foreign(self, ev: Event, why: str) -> None:
        self._flag(Rule.R8, foreign_reason(ev, why), self.n_events or None)

    def error_frame(self, frame: Frame, at: float) -> None:
        """A connection-level error frame (INVALID_MESSAGE …) arrived while this chat was open."""
        if self.exp.expect_error == "invalid_input" and self.connection_error is None:
            self.connection_error = _slim(frame)
            self.last_at = at
            if self.first_delay is None:
                self.first_delay = at - self.sent_at

    def rejected(self, frame: Frame, at: float) -> None:
        """The server answered this chat's message with a connection-level error (INVALID_MESSAGE…): there
        will be no run, so the chat ends now instead of at its deadline."""
        if self.connection_error is None and self.n_events == 0:
            self.connection_error = _slim(frame)
            self.last_at = at

    def connection_lost(self, at: float) -> None:
        if self.error_seen is not None and self.exp.expect_error in ("recoverable", "fatal"):
            self._flag(Rule.R13, "the connection closed after the expected error; it must stay open", None)
        elif self.exp.expect_error == "invalid_input" and self.connection_error is not None:
            self._flag(Rule.R13, "the connection closed after the invalid message; it must stay open", None)

    def reconnect_tried(self, connected: bool) -> None:
        """An attempt to open a connection to reconnect this chat: it connected, or failed."""
        attempts, failures = self.reconnect_tries
        self.reconnect_tries = (attempts + 1, failures if connected else failures + 1)

    def credentials_refused(self, how: str) -> None:
        """A reconnect of this chat (or the new connection its message was to be sent again on) was refused for the
        credentials (`how`: "HTTP 401", "close code 4401", the AUTH_FAILED frame's code): no attempt follows, and the
        chat is an `error`, auth_failed, as one whose credentials were refused on its open connection."""
        if self.connection_error is None:
            self.connection_error = Frame(FrameKind.ERROR, error_code=how, session_error=SessionError.AUTH_FAILED)

    def reconnected(self, resumed: bool) -> None:
        if not self.reconnects:
            self.reconnects = []
        self.reconnects.append("resumed" if resumed else "lost")
        if not resumed:
            self.lost = True

    # -- verdict --
    def finish(self, now: float, *, lost: bool = False, note: str = "") -> ChatResult:
        """Judge the chat as it stands at `now` (its deadline, the end of its connection, or later)."""
        if self._result is not None:
            return self._result
        lost = lost or self.lost
        violations = list(self.violations)
        exp = self.exp
        index = self.n_events or None

        if exp.expect_error != "invalid_input" and self.connection_error is not None:
            frame = self.connection_error
            res = self._make(Outcome.ERROR, violations, [], now, note)
            if frame.session_error is SessionError.AUTH_FAILED:
                # The credentials refused once the connection was open (checked at the message, or expired on a
                # connection that outlived its token): what an AUTH_FAILED at the welcome is, said the same way.
                res.error = f"the server rejected the credentials ({frame.error_code or frame.wire_type})"
                res.error_kind = "auth_failed"
                return res
            res.error = f"the server rejected the message: {frame.error_code or frame.wire_type} {frame.detail}".rstrip()
            res.error_kind = "rejected"
            return res

        if exp.expect_error == "invalid_input":
            missing: list[Role] = []
            if self.connection_error is None:
                violations.append(Violation(Rule.R13, "no error_message answered the invalid client message", None))
            outcome = Outcome.FAILED if violations else Outcome.PASSED
            return self._make(outcome, violations, missing, now, note)

        # No event by the limit's time: judged at it or later, an R9. `>=` on the time itself, not `elapsed > limit`:
        # `chatprobe check` judges a chat at its deadline exactly (sent + deadline), where a deadline equal to the
        # limit gave `elapsed == limit` (or a rounding either side of it) and no R9, while the live client, its timer
        # a moment late, always gave one.
        if self.first_delay is None and now >= self.sent_at + exp.first_event_limit:
            violations.append(Violation(Rule.R9, f"no event within the {exp.first_event_limit:g}s limit", None))
        if self.max_seq > self.seq_low:
            # Counted, never enumerated: a server may send seq 10**12 (bounded work and memory).
            gaps = self.max_seq - self.seq_low - len(self.seqs_above)
            # As many missing as events whose seq was unreadable (R12): they may be those events, not lost ones.
            if gaps > self.bad_seqs:
                first: list[int] = []
                s = self.seq_low + 1
                while len(first) < 5 and s <= self.max_seq:
                    if s not in self.seqs_above:
                        first.append(s)
                    s += 1
                shown = ", ".join(map(str, first)) + (f" … ({gaps} in all)" if gaps > len(first) else "")
                unread = f"; {self.bad_seqs} event(s) had no usable seq" if self.bad_seqs else ""
                violations.append(Violation(Rule.R7, f"seq {shown} never arrived (lost event{'s' if gaps > 1 else ''}"
                                                     f"{unread})", None))

        terminal = self.terminal_event
        required = exp.required
        if terminal is not None and terminal.role is _ERROR:
            # A fatal error ends the run (an R13 when unexpected): the user was told, nothing more is owed
            # (R1 still asks that a run that got going began with agent_started).
            required = _NONE_REQUIRED
        if exp.expect_error:
            required = required | {_ERROR}
        delays, counts = self._delays_and_counts()
        # (in ALL_ROLES' order; a chat that showed every required role, as most do, makes no list of them)
        missing = [] if required <= delays.keys() else [r for r in ALL_ROLES if r in required and r not in delays]

        if exp.expect_error and self.error_seen is None:
            violations.append(Violation(Rule.R13, f"the expected {exp.expect_error} error_event never arrived", None))
        elif exp.expect_error == "recoverable" and self.error_seen is not None and not self.error_seen.recoverable:
            violations.append(Violation(Rule.R13, "a recoverable error was expected, the error was fatal", None))
        elif exp.expect_error == "fatal" and self.error_seen is not None and self.error_seen.recoverable:
            violations.append(Violation(Rule.R13, "a fatal error was expected, the error was recoverable", None))

        if terminal is None:
            # The silence up to the chat's end: its deadline at the latest (a verdict whose timer fired late, under
            # load, must not hold the judge's own lateness against the server: live and `chatprobe check` alike).
            silent = min(now, self.wait_deadline()) - self.last_at
            if self.events and silent > exp.stall_limit and not lost:
                violations.append(Violation(Rule.R11, f"{silent:.3f}s without an event, over the "
                                                      f"{exp.stall_limit:g}s stall limit", index))
            if lost:
                reason = note or "connection lost and the run could not be resumed"
                outcome = Outcome.INCOMPLETE
            else:
                violations.append(Violation(Rule.R10, f"no terminal event within {exp.deadline:g}s "
                                                      f"({self.n_events} events received)", index))
                outcome = Outcome.INCOMPLETE
                reason = note
            return self._make(outcome, violations, missing, now, reason, delays, counts)

        if missing:
            violations.append(Violation(Rule.R2, "missing " + ", ".join(r.value for r in missing), self.terminal_index))
        outcome = _FAILED if violations else _PASSED
        return self._make(outcome, violations, missing, now, note, delays, counts)

    def _make(self, outcome: Outcome, violations: list[Violation], missing: list[Role], now: float, note: str,
              delays: dict[Role, float] | None = None, counts: dict[Role, int] | None = None) -> ChatResult:
        if not self.events:
            self.events = []  # the result shares the chat's list (late events it receives show in the report)
        # Positional, in the order of ChatResult's fields (RESULT_FIELDS, held by a test): a class called with keywords
        # gets them as a dict (type.__call__ -> __init__), ~2 us a chat for these 22.
        res = ChatResult(
            self.chat_id,
            self.scenario,
            outcome,
            violations,
            missing,
            self.events,
            self.sent_at,
            self.first_delay,  # time_to_first_event
            (self.terminal_at - self.sent_at) if self.terminal_at is not None else None,  # duration
            self._event_delays() if delays is None else delays,
            self.run_id,
            self.thread_id,
            list(self.reconnects),
            self.reconnect_tries[0],  # reconnect_attempts
            self.reconnect_tries[1],  # reconnect_failures
            None,  # error
            None,  # error_kind
            note,
            self.n_events,  # events_received
            dict(self.overflow),  # violations_not_listed
            self._event_counts() if counts is None else counts,
            list(self.warnings),
            self.parent_run_id,
            self._root is not None,  # further_run
            None,  # abandoned_at
            self.kept_bytes,  # events_bytes
        )
        if self.followups:
            fold_further(res, [c._result for c in self.followups if c._result is not None])
        self._result = res
        if self._root is None:
            # Judged: no further run starts on its stream (ConnectionChecker._further), so its payload checks (their
            # ids: up to MAX_REMEMBERED_BYTES) are not kept with a judged chat the connection remembers.
            self.run_checks = None
        return res

    def _event_delays(self) -> dict[Role, float]:
        """Each role seen up to the terminal event, at its first event's time after the message, in order of them."""
        if self.roles_past_kept is not _NO_DICT:
            return dict(self.roles_past_kept)
        return self._kept_delays()

    def _delays_and_counts(self) -> tuple[dict[Role, float], dict[Role, int]]:
        """(_event_delays(), _event_counts()), in one pass over the kept events where that is all of them and none came
        after the terminal one (the verdict's common case): a role is counted from its first event on, which is its
        first time (both dicts in the order of first events, as each alone makes them)."""
        events = self.events
        if self.roles_past_kept is not _NO_DICT or not (self.terminal_index is None
                                                         or self.terminal_index + 1 >= len(events)):
            return self._event_delays(), self._event_counts()
        delays: dict[Role, float] = {}
        counts: dict[Role, int] = {}
        sent = self.sent_at
        for ev in events:
            if (role := ev.role) is not None:
                if role in counts:
                    counts[role] += 1
                else:
                    counts[role] = 1
                    delays[role] = ev.received_at - sent
        return delays, counts

    def _kept_delays(self) -> dict[Role, float]:
        delays: dict[Role, float] = {}
        sent = self.sent_at
        end = len(self.events) if self.terminal_index is None else self.terminal_index + 1
        for ev in islice(self.events, end):
            role = ev.role
            if role is not None and role not in delays:
                delays[role] = ev.received_at - sent
                if len(delays) == _N_ROLES:
                    break
        return delays

    def _event_counts(self) -> dict[Role, int]:
        """Every event received, by role: the kept ones counted now, the others as they came."""
        counts: dict[Role, int] = {}
        for ev in self.events:
            role = ev.role
            if role is not None:
                counts[role] = counts.get(role, 0) + 1
        for role, n in self.unkept_counts.items():
            counts[role] = counts.get(role, 0) + n
        return counts


# The fields ChatTracker._make passes by position, in order.
RESULT_FIELDS = ("chat_id", "scenario", "outcome", "violations", "missing", "events", "sent_at", "time_to_first_event",
                 "duration", "event_delays", "run_id", "thread_id", "reconnects", "reconnect_attempts",
                 "reconnect_failures", "error", "error_kind", "note", "events_received", "violations_not_listed",
                 "event_counts", "warnings", "parent_run_id", "further_run", "abandoned_at", "events_bytes")


def _slot_copier(cls: type[ChatTracker]) -> Callable[[ChatTracker], ChatTracker]:
    """A shallow copy assigning each slot straight: copy.copy's generic reduce protocol costs eight times as much, once
    per chat. The source is made of the class's own slot names only."""
    body = "".join(f"    new.{name} = self.{name}\n" for name in cls.__slots__)
    namespace: dict[str, Any] = {"cls": cls}
    exec(f"def copy(self):\n    new = cls.__new__(cls)\n{body}    return new\n", namespace)
    copier: Callable[[ChatTracker], ChatTracker] = namespace["copy"]
    return copier


_copy_tracker = _slot_copier(ChatTracker)


def error_result(chat_id: str, scenario: str, sent_at: float, kind: str, message: str) -> ChatResult:
    """A chat that could not be connected or sent: outcome `error`, with a classified kind."""
    return ChatResult(
        chat_id=chat_id, scenario=scenario, outcome=Outcome.ERROR, violations=[], missing=[], events=[],
        sent_at=sent_at, time_to_first_event=None, duration=None, event_delays={}, error=message, error_kind=kind,
    )


class ChatIndex:
    """A connection's index of its chats by one id (run, message or thread): its first entry in two slots, a dict
    only from a second key on. Most connections carry one chat at a time and index it by all three ids: three
    one-entry dicts were ~550 bytes of every open connection (184 each), this is 48 each. The mapping methods the
    checker uses; a later entry for the same key replaces the earlier one, as in a dict."""

    __slots__ = ("_key", "_chat", "_many")

    def __init__(self) -> None:
        self._key: str | None = None
        self._chat: ChatTracker | None = None
        self._many: dict[str, ChatTracker] | None = None

    def get(self, key: str) -> ChatTracker | None:
        many = self._many
        if many is not None:
            return many.get(key)
        return self._chat if key == self._key else None

    def __setitem__(self, key: str, chat: ChatTracker) -> None:
        many = self._many
        if many is not None:
            many[key] = chat
        elif self._chat is None or key == self._key:
            self._key, self._chat = key, chat
        else:
            self._many = {self._key: self._chat, key: chat}  # type: ignore[dict-item]
            self._key = self._chat = None

    def __delitem__(self, key: str) -> None:
        many = self._many
        if many is not None:
            del many[key]
        elif self._chat is not None and key == self._key:
            self._key = self._chat = None
        else:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        many = self._many
        if many is not None:
            return key in many
        return self._chat is not None and key == self._key

    def __len__(self) -> int:
        many = self._many
        return len(many) if many is not None else int(self._chat is not None)

    def items(self) -> list[tuple[str, ChatTracker]]:
        many = self._many
        if many is not None:
            return list(many.items())
        return [(self._key, self._chat)] if self._chat is not None else []  # type: ignore[list-item]


class ConnectionChecker:
    """Routes one connection's decoded frames to its chats; catches events of runs this client never started."""

    __slots__ = ("user_id", "user_from_welcome", "welcome_user", "events_name_run", "further_runs", "by_run",
                 "by_message", "by_thread", "chats", "_members", "unnamed", "_prune_at", "malformed", "foreign",
                 "_fresh", "untold", "probes", "_settled")

    def __init__(self, user_id: str | None = None, *, events_name_run: bool = False, further_runs: bool = False) -> None:
        # The user this connection authenticated as (the token's `sub`), else the one its welcome names.
        self.user_id = user_id
        # No token named the user: each connection's welcome does (an anonymous user may be named anew on each).
        self.user_from_welcome = user_id is None
        # The user a welcome named that is not the token's `sub` (a server naming its users otherwise): said in the
        # R8 of each event naming it, so a person reads why.
        self.welcome_user: str | None = None
        # The dialect names the run in every event (netra): an event naming none is not this client's (R8).
        self.events_name_run = events_name_run
        # A server may start further runs on a chat's stream after its run closed (AG-UI): a run start with a new run
        # id there is a chat of its own, not an event after the terminal one.
        self.further_runs = further_runs
        # The chats by their ids; by_run also holds the aliases of runs a chat's thread continues (_new_run).
        self.by_run = ChatIndex()
        self.by_message = ChatIndex()
        self.by_thread = ChatIndex()
        self.chats: list[ChatTracker] = []
        self._settled = 0  # chats[:_settled] are done or judged (active())
        # The same chats as a set, for an O(1) "is it here" (a tracker hashes by identity), once there are more than
        # SMALL_CONNECTION of them: below that a look through the list costs no more, and no set (216 bytes) is made
        # for the one or two chats most connections carry.
        self._members: set[ChatTracker] | None = None
        # Chats added without a run id, oldest first: those a run nothing names may answer (`waiting_for_run`). Kept
        # apart so a new run looks at these only, not at every chat (a recording may hold a thousand open ones). The
        # shared empty mapping while none waits: a chat's wait for its run id is short, and a dict emptied by it keeps
        # its table (184 bytes per open connection).
        self.unnamed: dict[str, ChatTracker] = _NO_DICT
        self._prune_at = 2 * KEEP_FINISHED  # amortized: a prune that finds little to forget waits for twice as many
        self.malformed = 0
        self.foreign = 0
        # Once INCIDENTS_EACH malformed or foreign frames came: the chats added since the last one (see _charged).
        self._fresh: list[ChatTracker] = _NO_LIST
        # Malformed (R12) and foreign (R8) frames that came while no chat was on screen (none yet, or the latest one
        # judged: between chats), at most INCIDENTS_EACH, as what each violation says: the next chat the connection
        # carries is told when it is added (a new chat, one sent again, one resumed here), so whether the client had
        # sent its message yet, or the last chat's settle window had ended, decides nothing; when none comes, the
        # connection's end reports them as its own (`ended`). Reasons only: no event (an AG-UI delta of up to the
        # frame limit) is kept for them.
        self.untold: list[tuple[Rule, str]] = _NO_LIST
        # The invalid-input probes sent on this connection whose answer has not come, oldest first (at most
        # INCIDENTS_EACH): one judged without it (its deadline passed) still owes it, and an answer that comes late is
        # its, not the rejection of a chat's message sent after it (on_error).
        self.probes: list[ChatTracker] = _NO_LIST

    def add(self, chat: ChatTracker) -> None:
        """Register a chat (again, after a reconnect: then it is not duplicated)."""
        if len(self.chats) >= self._prune_at:
            self._prune()
            self._prune_at = max(2 * KEEP_FINISHED, 2 * len(self.chats))
        if not self._has(chat):
            self.chats.append(chat)
            if chat.exp.expect_error == "invalid_input" and chat.connection_error is None:
                if self.probes is _NO_LIST:
                    self.probes = []
                elif len(self.probes) >= INCIDENTS_EACH:
                    del self.probes[0]
                self.probes.append(chat)
            if self.untold:
                for rule, reason in self.untold:
                    chat._flag(rule, reason, chat.n_events or None)
                self.untold = _NO_LIST
            if self.malformed + self.foreign >= INCIDENTS_EACH:
                if self._fresh is _NO_LIST:
                    self._fresh = []
                self._fresh.append(chat)
            if self._members is not None:
                self._members.add(chat)
            elif len(self.chats) > SMALL_CONNECTION:
                self._members = set(self.chats)
        if chat.run_id:
            self.by_run[chat.run_id] = chat
        elif not chat.done and chat.exp.expect_error != "invalid_input":
            # A `send_raw:` probe waits for an error_message, never for a run: a run that shows up while it waits is
            # one this client did not start (R8), not the probe's to adopt.
            if self.unnamed is _NO_DICT:
                self.unnamed = {}
            self.unnamed[chat.chat_id] = chat
        if chat.message_id:
            self.by_message[chat.message_id] = chat
        if chat.thread_id:
            self.by_thread[chat.thread_id] = chat

    def _has(self, chat: ChatTracker) -> bool:
        members = self._members
        if members is not None:
            return chat in members
        # A tracker compares by identity (no __eq__): the same answer as the set's.
        return chat in self.chats

    def _unname(self, key: str) -> None:
        """A chat waits for its run id no more: forgotten from `unnamed`, which goes back to the shared empty mapping
        when it empties."""
        unnamed = self.unnamed
        if key in unnamed:
            del unnamed[key]
            if not unnamed:
                self.unnamed = _NO_DICT

    def _prune(self) -> None:
        """Forget all but the latest judged chats, so a connection carrying endless chats stays bounded; the
        ones kept still catch late events (R4) of recent runs."""
        judged = [c for c in self.chats if c._result is not None]
        drop = {id(c) for c in judged[:-KEEP_FINISHED]}
        if not drop:
            return
        self.chats = [c for c in self.chats if id(c) not in drop]
        self._settled = 0
        self._members = set(self.chats) if len(self.chats) > SMALL_CONNECTION else None
        if self._fresh:
            self._fresh = [c for c in self._fresh if id(c) not in drop]
        for table in (self.by_run, self.by_message, self.by_thread):
            for key in [k for k, c in table.items() if id(c) in drop]:
                del table[key]
        for key in [k for k, c in self.unnamed.items() if id(c) in drop]:
            self._unname(key)

    def discard(self, chat: ChatTracker) -> None:
        """Forget a chat whose message never reached the server (its stream could not be opened)."""
        if self._has(chat):
            if self._members is not None:
                self._members.discard(chat)
            self.chats.remove(chat)
            self._settled = 0
            if chat in self._fresh:
                self._fresh.remove(chat)
        for index in (self.by_run, self.by_message, self.by_thread):
            for key in [k for k, c in index.items() if c is chat]:
                del index[key]
        for key in [k for k, c in self.unnamed.items() if c is chat]:
            self._unname(key)
        if chat in self.probes:
            self.probes.remove(chat)

    def active(self) -> list[ChatTracker]:
        """The chats still waiting for something: not done, not judged (a judged chat cut short takes no more).

        Asked for every event that names no run (most of AG-UI's): the chats before `_settled` are known to be done
        or judged, which a chat never stops being, so a connection carrying chat after chat scans only its latest
        (the whole list, up to KEEP_FINISHED chats, cost each event as much again)."""
        chats = self.chats
        settled, n = self._settled, len(chats)
        while settled < n and ((c := chats[settled]).done or c._result is not None):
            settled += 1
        self._settled = settled
        if settled == n:
            return []
        return [c for c in chats[settled:] if not c.done and c._result is None]

    def welcome(self, frame: Frame, first: bool = True) -> None:
        """A control frame: when it names the user (a welcome, decoded by the profile), events of others are R8. A
        later control frame of the same connection (`first` False: not what opened it) naming another user (a
        heartbeat, a system message carrying someone else's data) is cross-talk too; a new connection's welcome is
        not (a server may name an anonymous user anew on each connection)."""
        if (user := frame.user_id) is None:
            return
        if self.user_id is None or (first and self.user_from_welcome):
            self.user_id = user  # this connection's user, from its welcome (a token's `sub` is never replaced)
        elif user != self.user_id and first:
            self.welcome_user = user
        elif user != self.user_id:
            witnesses = self._charged()
            self.foreign += 1
            reason = f"received {frame.wire_type} (a control frame) naming another user: cross-talk"
            for chat in witnesses:
                chat._flag(Rule.R8, reason, chat.n_events or None)
            if not witnesses:
                self._untold(Rule.R8, reason)

    def route(self, ev: Event) -> ChatTracker | None:
        """Give the event to its chat; None when it belongs to none of them (then R8 is recorded).

        An id the event names that equals the connection's or the chat's is replaced by that string: a kept event
        holds no copy of it (~60 bytes each, three of them in most events)."""
        if (user := ev.user_id) is not None and (own := self.user_id) is not None:
            if user != own:
                told = self._foreign(ev, "another user" if user != self.welcome_user else WELCOME_NOT_SUB)
                if (seq := ev.seq) is not None and ev.run_id is not None and (
                        mine := self.by_run.get(ev.run_id)) is not None and mine._result is None and any(
                        c is mine for c in told):
                    # It came: no gap (R7) for what the R8 it got says already. A chat that was not told (it had
                    # ended: the R8 went to the chats in flight) keeps its gap, or it would pass without the event.
                    mine._seq(seq, mine.n_events, quiet=True)
                return None
            ev.user_id = own
        chat = None
        if (run_id := ev.run_id) is not None:
            index = self.by_run  # ChatIndex.get, inlined for the one-chat connection (a call saved per event)
            chat = (index._chat if run_id == index._key else None) if index._many is None else index._many.get(run_id)
            if chat is not None:
                if ev.role is _STARTED and chat.terminal_event is not None and (
                        named := self._names_waiting(ev)) is not None and named is not chat and (
                        named.run_id is None or len(self.by_run) < MAX_RUN_ALIASES):
                    # A run id of a run that ended, given again to the run of a chat that this start names (by its
                    # message, else its thread) and that has had no event yet: that chat's run, not an event after
                    # the old run's end; later events of that id are the new run's. A server that assigns run ids
                    # may reuse a finished one (netra); one that ignores the client's (AG-UI) may name every run alike.
                    if named.run_id is None:
                        named.run_id = run_id
                        self._unname(named.chat_id)
                    else:
                        _other_run_id(named, ev)
                    self.by_run[run_id] = named
                    chat = named
                elif ev.role is _STARTED and chat.terminal_event is not None and self.further_runs:
                    # The run the client asked for, after a replayed one (or another run after this chat's run).
                    chat = self._further(chat.root.last_run(), ev) or chat
            else:
                cand = self._named_or_waiting(ev)
                if cand is not None and cand.run_id is None:
                    cand.run_id = run_id
                    self.by_run[run_id] = cand
                    self._unname(cand.chat_id)
                    chat = cand
                elif ev.role is _STARTED:
                    chat = self._new_run(ev, cand)
        elif self.events_name_run:
            # Whatever else it names (a thread of this client's): this dialect's events name their run.
            self._foreign(ev, "no run (this dialect names the run in every event)")
            return None
        elif ev.thread_id is not None:
            chat = self.by_thread.get(ev.thread_id)
        else:
            active = self.active()
            if len(active) == 1:
                chat = active[0]
            elif not active and self.chats:
                # An event naming no run (AG-UI's) after the last chat's terminal event: a late event of it (R4 while
                # it listens out its settle window, a warning on it once judged), not proof of cross-talk (only
                # several chats in flight make it so): never the next chat's R8 (`untold`).
                chat = self.chats[-1]
            elif active:
                # Several chats in flight (parallel_chats): the one whose run is under way, as a server that streams
                # one run at a time per connection sends it (the others wait for their run's first event).
                chat, running = _under_way(active)
                if chat is None and running:
                    self._foreign(ev, f"no run, while {running} runs of this connection are under way (this dialect's "
                                      "events name no run: runs interleaved on one connection cannot be told apart; "
                                      "keep one chat per connection in flight, or run them over SSE)")
                    return None
        if chat is None:
            why = "a run this client did not start" if ev.run_id else "no run of this client"
            if ev.run_id and self.malformed + self.foreign < INCIDENTS_EACH and any(
                    c.exp.expect_error == "invalid_input" and c.connection_error is None for c in self.active()):
                # Still cross-talk as far as the client can tell, but the likelier story is worth saying (for the
                # connection's first incidents only, which every chat on screen is told: a flood costs no more).
                why += " (while a send_raw probe waited for its error_message: did the server start a run for it?)"
            self._foreign(ev, why)
            return None
        if (thread := ev.thread_id) is not None and (own := chat.thread_id) is not None:
            if thread != own:
                chat.foreign(ev, f"thread {thread!r} inside this client's run")
            else:
                ev.thread_id = own
        if (message := ev.message_id) is not None and message == chat.message_id:
            ev.message_id = chat.message_id
        chat.feed(ev)
        return chat

    def _new_run(self, ev: Event, same_thread: ChatTracker | None) -> ChatTracker | None:
        """A run start naming a run this client did not start. After a clean end, naming the finished run as its
        parent (AG-UI's parentRunId), it is a further run of that chat's stream: a chat of its own. Else, on the
        thread of a chat of this client, it is that run starting again (R1) or an event after its end (R4): not
        cross-talk."""
        parent = self.by_run.get(ev.parent_run_id) if ev.parent_run_id else None
        if parent is None and self.further_runs and same_thread is not None:
            parent = same_thread.root.last_run()  # spec 1.1: "A producer MAY emit RUN_STARTED to begin a new run"
        chat = self._further(parent, ev)
        if chat is not None:
            return chat
        if same_thread is not None and ev.run_id is not None and len(self.by_run) < MAX_RUN_ALIASES:
            self.by_run[ev.run_id] = same_thread  # the rest of that "run" goes to the same chat (R4, R3), not R8
            if same_thread.n_events == 0:  # the run the client asked for, started under another id
                _other_run_id(same_thread, ev)
        return same_thread

    def _further(self, parent: ChatTracker | None, ev: Event) -> ChatTracker | None:
        """The further run `ev` starts after `parent`, the latest run of a chat's stream, closed (RUN_FINISHED or
        RUN_ERROR: AG-UI 1.1, Runs and Steps, "After a run closes" and "Several runs on one stream"), as a chat of its
        own; None when it starts none (`parent` still open, judged, the same run id again, too many runs)."""
        if (parent is None or ev.run_id is None or (end := parent.terminal_event) is None
                or parent is not parent.root.last_run() or len(parent.root.followups) >= MAX_FOLLOWUP_RUNS
                or parent.root.judged):
            return None
        first = parent.events[0] if parent.events else None
        if ev.run_id == (first.run_id if first is not None and first.role is _STARTED else parent.run_id):
            return None  # that run once more: an event after its terminal one (R4)
        if end.role is not Role.AGENT_COMPLETED and not self.further_runs:
            return None
        chat = parent.followup(ev.run_id)
        self.add(chat)
        return chat

    def waiting_for_run(self, ev: Event) -> ChatTracker | None:
        """The chat a run this connection has not seen yet answers (`ev` names it), None when it answers none: THE
        adoption rule, for the live clients, the proxy and `chatprobe check`. The chat whose message or thread id the
        event names, if it has no run yet; else the oldest chat still waiting for its run (no run id yet, not done, not
        judged) whose own ids the event does not contradict, whether or not events that named no run came before
        (AG-UI's first event may precede RUN_STARTED). A client that sends no ids (the server assigns them) is thus
        not cross-talk; a run naming another thread or message still is."""
        cand = self._named_or_waiting(ev)
        return cand if cand is not None and cand.run_id is None else None

    def _names_waiting(self, ev: Event) -> ChatTracker | None:
        """The chat the event's message id (else thread id) names, when that chat still waits for its run's first
        event."""
        cand = (self.by_message.get(ev.message_id) if ev.message_id else None) or (
            self.by_thread.get(ev.thread_id) if ev.thread_id else None)
        return cand if cand is not None and cand.n_events == 0 and not cand.done and cand._result is None else None

    def _named_or_waiting(self, ev: Event) -> ChatTracker | None:
        """The chat the event's message or thread id names (whatever its run), else the oldest one waiting."""
        return (self.by_message.get(ev.message_id) if ev.message_id else None) or (
            self.by_thread.get(ev.thread_id) if ev.thread_id else None
        ) or (self._oldest_waiting(ev) if self.unnamed else None)

    def _oldest_waiting(self, ev: Event) -> ChatTracker | None:
        oldest = None
        for key, c in list(self.unnamed.items()):
            if c.run_id is not None or c.done or c._result is not None:
                self._unname(key)  # for good: none of these turns back into a chat waiting for its run
            elif ((c.thread_id is None or ev.thread_id is None or c.thread_id == ev.thread_id)
                  and (c.message_id is None or ev.message_id is None or c.message_id == ev.message_id)
                  and (oldest is None or c.sent_at < oldest.sent_at)):
                oldest = c
        return oldest

    def _foreign(self, ev: Event, why: str) -> list[ChatTracker]:
        """R8 for a foreign event, on the chats that witness it (none on screen: the next chat added, else the
        connection's end, `ended`); those chats."""
        witnesses = list(self._charged())
        self.foreign += 1
        for chat in witnesses:
            chat.foreign(ev, why)
        if not witnesses:
            self._untold(Rule.R8, foreign_reason(ev, why))
        return witnesses

    def on_malformed(self, frame: Frame, at: float) -> None:
        witnesses = self._charged()
        self.malformed += 1
        for chat in witnesses:
            chat.malformed(frame.detail, at)
        if not witnesses:
            self._untold(Rule.R12, malformed_reason(frame.detail))

    def _untold(self, rule: Rule, reason: str) -> None:
        """An incident no chat was on screen for: kept for the next chat added, or the connection's end (`ended`)
        when none comes (the first INCIDENTS_EACH), unless a chat is on screen and was told already (a flood: see
        _charged)."""
        if len(self.untold) < INCIDENTS_EACH and not self._on_screen():
            if self.untold is _NO_LIST:
                self.untold = []
            self.untold.append((rule, reason))

    def ended(self) -> list[Violation]:
        """The connection ended (or its driver stops: a run's stop, the proxy's, the end of a recording): what came
        while no chat was on screen and no chat came after (`untold`: another user's events, R8, malformed frames,
        R12, after the last chat was judged) is the connection's own violation, returned once, with no event index
        (it is no chat's). Every driver reports them (`Sink.connection_violation`): counted with their rule, never as
        a chat."""
        untold, self.untold = self.untold, _NO_LIST
        return [Violation(rule, reason, None) for rule, reason in untold]

    def new_connection(self) -> None:
        """The client opened another connection (the live clients keep one checker for all of a session's): what no
        chat was told on the last one was that connection's, reported at its end (`ended`), as a watcher (the proxy,
        `chatprobe check`), with a checker per connection, reports it. So were the answers probes judged on it still
        owed: the new connection's server owes them none. The flood bound (INCIDENTS_EACH, `_charged`) is the
        connection's too: counted across a session's connections, every chat after its 16th malformed frame went
        untold of its own stream's R12 (SSE: a stream a chat, so a user's 17th chat on), which `chatprobe check`,
        with a checker per connection, reported."""
        self.untold = _NO_LIST
        self.malformed = self.foreign = 0
        self._fresh = _NO_LIST
        self.probes = [p for p in self.probes if p._result is None] or _NO_LIST

    def _charged(self) -> Iterable[ChatTracker]:
        """Who a malformed or foreign frame is charged to: the connection's first INCIDENTS_EACH, every chat on screen
        (`_witnesses`); past them, only the chats opened since the last such frame and still open, so a flood costs
        each frame the chats it tells, not every open chat again (each was told already)."""
        if self.malformed + self.foreign < INCIDENTS_EACH:
            return self._witnesses()
        fresh, self._fresh = self._fresh, _NO_LIST
        return [c for c in fresh if not c.done and c._result is None]

    def on_error(self, frame: Frame, at: float) -> None:
        """A connection-level error: the answer an invalid-input probe waits for; else, when a chat is waiting for its
        first event, the oldest one's message was rejected. Servers answer in order: an error that comes while a probe
        judged without its answer (its deadline passed) still owes it, sent before every chat waiting now, is that
        probe's answer, come late: it goes to that probe, whose verdict stands (R13: not answered in time), and is
        no other chat's rejection."""
        if frame.session_error is not None:  # credentials and resumes answer the session, never one chat's message
            auth = frame.session_error is SessionError.AUTH_FAILED
            for chat in self.active():
                if chat.exp.expect_error == "invalid_input":
                    chat.error_frame(frame, at)
                elif auth:
                    # Refused credentials after the welcome: no chat waiting for its run gets one (a run under way
                    # is judged by the connection's end, as any cut run).
                    chat.rejected(frame, at)
            return
        active = self.active()
        owed = self.probes
        if owed:
            owed = [p for p in owed if p.connection_error is None and self._has(p)]
            self.probes = owed or _NO_LIST
        late = owed[0] if owed and owed[0]._result is not None else None
        named = frame.message_id is not None or frame.thread_id is not None  # an answer naming its message is that one's
        if late is not None and (frame.message_id is not None and frame.message_id == late.message_id if named else
                                 all(late.sent_at <= c.sent_at for c in active if c.n_events == 0)):
            late.connection_error = _slim(frame)  # after its verdict: taken, judged nothing again
            self.probes.remove(late)
            return
        probes = [c for c in active if c.exp.expect_error == "invalid_input"]
        if probes:
            for chat in probes:
                chat.error_frame(frame, at)
        else:
            # Servers answer messages in order: the rejection is the oldest waiting message's.
            waiting = [c for c in active if c.n_events == 0 and c.connection_error is None]
            if named:
                # It says which message it answers: that chat's, if it still waits (else no waiting chat's).
                waiting = [c for c in waiting if c.message_id == frame.message_id] if frame.message_id is not None else [
                    c for c in waiting if c.thread_id == frame.thread_id]
            if waiting:
                # Naming none, it is the oldest waiting message's: servers answer messages in order.
                min(waiting, key=lambda c: c.sent_at).rejected(frame, at)

    def _on_screen(self) -> bool:
        """Whether `_witnesses` names any chat, without listing them: the latest chat not judged is one (open, or
        listening out its settle window), found at once. A flood past INCIDENTS_EACH asks for every frame it charges
        no fresh chat with, and listing every open chat made its work frames x chats (1,000 chats, 100,000 frames:
        10^8 steps)."""
        chats = self.chats
        if not chats:
            return False
        return chats[-1]._result is None or bool(self.active())

    def _witnesses(self) -> list[ChatTracker]:
        """The chats on screen when something bad arrived: all open ones, else the latest one while it listens out its
        settle window; none once that one was judged (between chats: the next chat is told, or the connection's end
        reports it, `untold`)."""
        active = self.active()
        if active:
            return active
        return [c for c in self.chats[-1:] if c._result is None]


def _other_run_id(chat: ChatTracker, ev: Event) -> None:
    """The advice that the run the client asked for started under another run id than the client sent."""
    chat._warn(Rule.R8, f"{ev.wire_type} names run {(ev.run_id or '')[:80]!r}, not the run id the client sent "
                        f"({(chat.run_id or '')[:80]!r})", 0)


def _slim(frame: Frame) -> Frame:
    """A frame to keep with a chat: without its raw JSON (a server may make that megabytes)."""
    return dataclasses.replace(frame, raw={}) if frame.raw else frame


def malformed_reason(detail: str) -> str:
    return f"malformed frame: {detail}"


# Whose event an R8 says it was when the event names the user the connection's welcome named, which is not the
# user its token's `sub` names (docs/protocol.md R8: a connection is the token's `sub`).
WELCOME_NOT_SUB = "the user the welcome named, not the token's sub (a connection is its token's sub)"


def _under_way(active: list[ChatTracker]) -> tuple[ChatTracker | None, int]:
    """Of chats in flight, the one whose run has started and not ended when it is the only one (else None), and how
    many such runs there are."""
    found = None
    running = 0
    for c in active:
        if c.n_events and c.terminal_event is None:
            found = c
            running += 1
    return (found if running == 1 else None), running


def foreign_reason(ev: Event, why: str) -> str:
    return f"received {_name(ev)} of {why}: cross-talk"


def _name(ev: Event) -> str:
    if ev.role is None or ev.role.value == ev.wire_type:
        return ev.wire_type
    return f"{ev.role.value} ({ev.wire_type})"


def judge_followups(tracker: ChatTracker, now: float) -> list[ChatResult]:
    """The further runs a chat's stream carried, each judged as its own chat when the chat is: one still going is
    cut short (its stream ended, or the chat was stopped) unless its deadline has passed (R10)."""
    out = []
    for chat in tracker.followups:
        if chat._result is None:
            cut = not chat.done and now < chat.wait_deadline()
            chat.finish(now, lost=cut, note="the stream ended before this run's terminal event" if cut else "")
        assert chat._result is not None
        chat.run_checks = None  # its chat is judged next (no further run follows): done, as that chat's are
        out.append(chat._result)
    return out


_WORSE = {Outcome.PASSED: 0, Outcome.INCOMPLETE: 1, Outcome.FAILED: 2}


def fold_further(result: ChatResult, runs: list[ChatResult]) -> None:
    """The request's verdict is its stream's: a further run the stream carried (judged, and reported, as a chat of its
    own) that did not pass makes the chat the client asked for fail too, with that run's violations and missing roles
    (named by the run), since the user saw them on the answer to their message. Counters and objectives count the
    chats a client asked for (`ChatResult.further_run`), so runs a server adds never dilute a failure ratio."""
    if result.outcome is Outcome.ERROR:
        return
    for run in runs:
        if run.outcome is Outcome.PASSED:
            continue
        if _WORSE.get(run.outcome, 2) > _WORSE.get(result.outcome, 2):
            result.outcome = run.outcome
        name = f"further run {(run.run_id or '')[:80]!r} ({run.chat_id}) on this chat's stream"
        for v in run.violations:
            if len(result.violations) < MAX_VIOLATIONS_KEPT:
                result.violations.append(Violation(v.rule, f"{name}: {v.reason}", None))
            else:
                rule = v.rule.value if isinstance(v.rule, Rule) else str(v.rule)
                result.violations_not_listed[rule] = result.violations_not_listed.get(rule, 0) + 1
        for rule, n in run.violations_not_listed.items():
            result.violations_not_listed[rule] = result.violations_not_listed.get(rule, 0) + n
        result.missing += [r for r in run.missing if r not in result.missing]
        if not result.note:
            result.note = f"{name}: {run.outcome.value}" + (f" ({run.note})" if run.note else "")


def abandon(tracker: ChatTracker, now: float) -> ChatResult:
    """The client left on purpose mid-run: judge only what arrived (no required roles, no terminal owed). A user who
    left a blank screen after the first-event limit was kept waiting: an R9, as `finish` judges it (the user staring
    at nothing and leaving is what the limit is there for)."""
    if tracker._result is not None:
        return tracker._result
    violations = list(tracker.violations)
    exp = tracker.exp
    if (tracker.first_delay is None and tracker.connection_error is None and exp.expect_error != "invalid_input"
            and now >= tracker.sent_at + exp.first_event_limit):
        violations.append(Violation(Rule.R9, f"no event within the {exp.first_event_limit:g}s limit (the client left "
                                             f"after {now - tracker.sent_at:.3f}s)", None))
    outcome = Outcome.FAILED if violations else Outcome.PASSED
    result = tracker._make(outcome, violations, [], now,
                           f"abandoned by the client after {len(tracker.events)} events")
    result.abandoned_at = now
    return result


class _Combined(RunChecks):
    """Several check sets' run checks as one."""

    def __init__(self, parts: list[RunChecks]) -> None:
        self.parts = parts

    def event(self, ev: Event) -> list[Finding]:
        return [f for p in self.parts for f in p.event(ev)]

    def end(self, ev: Event) -> list[Finding]:
        return [f for p in self.parts for f in p.end(ev)]

    def followup(self) -> RunChecks:
        return _Combined([p.followup() for p in self.parts])

    def held_bytes(self) -> int:
        return sum(p.held_bytes() for p in self.parts)
