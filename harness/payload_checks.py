"""Payload rules as small, named checks: what a dialect's events must carry, beyond the order the profile describes.

A profile names the check sets that apply (`checks: [agui]`). The Decoder runs a set's stateless `frame` check on
each decoded frame (the official schema) and hands the fields the set reads to the Event (`Event.payload`, transient);
the ChatTracker runs the set's stateful `RunChecks` on each event of a run. Pure: no I/O; each state bounded in bytes.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError  # (imported at the top: an import statement per frame costs 0.3 us)

from .checksets import CHECKS, CheckSet, Finding, RunChecks, RunContext
from .events import Event, Rule

# Per run: remembered ids (messages, tool calls), argument text per tool call, and the agent state, bounded so that a
# flooding or hostile server costs the client this much and no more (past a bound the check says so and stops).
MAX_ID_CHARS = 1024  # harness.profiles.MAX_ID_BYTES: an id kept longer than that is cut
# The bytes a run's remembered ids may cost in all, every kind together (messages, open messages, tool calls, owners,
# subagents announced, finished and attributed, activities, open chunk streams): each id charged what its string costs
# (sys.getsizeof) where it is kept, and its place in the set or dict that keeps it. ~1,000 messages or tool calls
# under UUIDs; past it ids are forgotten, and the checks that need every id (AguiRunChecks.IDS_FULL) stop, said once.
MAX_REMEMBERED_BYTES = 256 * 1024
DICT_ENTRY = 64  # a dict's entries and indices per item, up to 60 bytes just after its table grew (CPython 3.11-3.13)
PAIR = 56  # a (family, id) tuple, the owners' key
MAX_ARGS_BYTES = 256 * 1024  # argument text buffered per run, all calls together
MAX_STATE_BYTES = 1024 * 1024
# Bytes of state a run's patches may weigh or copy in all (the sizes a patch's copy, add, replace and remove touch).
# Patches are applied in place, so a small one costs little whatever the state's size; but a 60-byte `copy` of a
# 1 MiB subtree costs a megabyte of work, and a server sending thousands of them held the client's loop for a minute.
MAX_STATE_WORK = 32 * 1024 * 1024
OP_WORK = 256  # what any operation is charged (a JsonPatch built, its pointer resolved: ~10 us)
SHIFT_WORK = 8  # what each array item an insert or removal shifts is charged (a pointer moved)
NODE_WORK = 32  # what each container or item of a value added, copied, tested or dropped is charged (~1 us)
# Operations in one patch (a STATE_DELTA's `delta`, an ACTIVITY_DELTA's `patch`), counted before any is validated or
# applied: each costs ~3 us to validate against the schema and ~14 us to weigh and apply (jsonpatch, one operation at a
# time), so a 4 MiB frame of 90,000 operations held the client's event loop ~2 s in one go, stalling every chat on it
# (MAX_STATE_WORK bounds a run's patches in all, not one frame's). AG-UI sets patches no size, and a server diffing a
# large state may send a long one: past the bound the patch is validated up to it and not applied, the state (or the
# activity) not followed from there, said once (advice, as the other bounds here).
MAX_PATCH_OPS = 4096
MAX_LANES = 1000  # chunk streams open at once, one per lane (the parent agent, each subagent)
MAX_OFFERED = 1000  # tools of a client's own request taken for frontend tools (their names cut at MAX_ID_CHARS)
# Schema failures reported per event, each cut to this many characters.
MAX_PROBLEMS = 3
MAX_PROBLEM_CHARS = 200


# -- AG-UI ---------------------------------------------------------------------------------------------------------

_TYPED_EVENT: Any = None  # ag_ui.core's Event union as a pydantic TypeAdapter, built on first use
_EVENT_TYPES: frozenset[str] = frozenset()


def _schema() -> tuple[Any, frozenset[str]]:
    """The official AG-UI event schema (the ag-ui-protocol package's models), loaded only when a profile uses it."""
    global _TYPED_EVENT, _EVENT_TYPES
    if _TYPED_EVENT is None:
        from ag_ui.core import Event as AguiEvent
        from ag_ui.core import EventType
        from pydantic import TypeAdapter

        _EVENT_TYPES = frozenset(t.value for t in EventType)
        _TYPED_EVENT = TypeAdapter(AguiEvent)
    return _TYPED_EVENT, _EVENT_TYPES


def agui_frame(frame: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The frame against ag_ui.core's models (wire names only): each failure names its field."""
    adapter, types = _schema()
    wire_type = frame.get("type")
    if wire_type not in types:
        # The profile knows it (else the decoder would have refused it). A name from before AG-UI 1.0 (THINKING_*) is
        # the run's advice, said once (AguiRunChecks._pre_1_0): a server on the old names sends one per reasoning delta.
        if str(wire_type).startswith("THINKING_"):
            return (), ()
        return (), (f"{str(wire_type)[:60]} is not an AG-UI 1.0 event: not checked against the schema",)
    if wire_type == "STATE_DELTA" or wire_type == "ACTIVITY_DELTA":
        key = "delta" if wire_type == "STATE_DELTA" else "patch"
        if (ops := frame.get(key)).__class__ is list and len(ops) > MAX_PATCH_OPS:
            # Validated up to the bound only (the run's checks apply none of it: AguiRunChecks._apply).
            frame = {**frame, key: ops[:MAX_PATCH_OPS]}
    try:
        adapter.validate_python(frame, by_alias=True, by_name=False)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False)[:MAX_PROBLEMS]:
            loc = ".".join(str(p) for p in err["loc"][1:]) or "(event)"
            problems.append(f"{wire_type} field '{loc}': {err['msg']}"[:MAX_PROBLEM_CHARS])
        return tuple(problems), ()
    except (RecursionError, ValueError) as exc:  # a pathologically nested frame
        return (f"{wire_type}: not checkable against the schema ({exc.__class__.__name__})",), ()
    if "subagentRunId" in frame and frame["subagentRunId"] is None:
        # The models read null as absent; the spec does not: "An absent subagentRunId means the parent agent, and MUST
        # NOT be spelled as null" (spec 1.1, Subagents, Attribution).
        return (f"{wire_type} field 'subagentRunId': null (leave the field out for the parent agent)",), ()
    ts = frame.get("timestamp")
    if ts.__class__ is str or ts.__class__ is bool:
        # The schema's `integer`; pydantic's lax mode turns "17..." and true into ints, JSON Schema does not.
        return (f"{wire_type} field 'timestamp': {str(ts)[:40]!r} is a JSON {'string' if ts.__class__ is str else 'boolean'}"
                ", not an integer (milliseconds since the epoch)",), ()
    if wire_type == "RUN_STARTED" and isinstance(inp := frame.get("input"), dict):
        return (), _input_echo(frame, inp)
    return (), ()


def _input_echo(frame: dict[str, Any], inp: dict[str, Any]) -> tuple[str, ...]:
    """RUN_STARTED "MAY echo the input the run was started from" (spec 1.1, Runs and Steps): an echo naming another
    thread or run is not that input. Advice: the spec states no MUST for it. The event's own ids are checked against the
    client's request elsewhere (R8), so this also ties the echo to the request."""
    out = []
    for key in ("threadId", "runId"):
        echoed, own = inp.get(key), frame.get(key)
        if echoed is not None and own is not None and echoed != own:
            out.append(f"RUN_STARTED.input.{key} {str(echoed)[:80]!r} is not the run's own {key} {str(own)[:80]!r}: "
                       "the echo is not the input this run was started from")
    return tuple(out)


@dataclass(slots=True)
class _Call:
    """A tool call of the run: its name, whether it ended and was answered, its argument text as it came."""

    name: str
    ended: bool = False
    answered: bool = False
    args: list[str] = field(default_factory=list)
    args_bytes: int = 0
    owed: bool = True  # started in this run (a call known from an earlier run owes nothing here)


CALL_BYTES = sys.getsizeof(_Call("")) + sys.getsizeof([])  # a call's object and its argument list, besides its strings
ACTIVITY_ENTRY = sys.getsizeof([None, 0])  # an activity's [content, size] (its content is counted apart)


@dataclass(slots=True)
class _Chunk:
    """A chunk stream being assembled in one lane: its family, item id, and what its first chunk established."""

    kind: str  # TEXT_MESSAGE_CHUNK, TOOL_CALL_CHUNK or REASONING_MESSAGE_CHUNK
    id: str
    role: str | None = None  # text: the role (absent: assistant); tool: the tool's name
    name: str | None = None  # text: the speaker's name; tool: parentMessageId

    def nbytes(self, lane: str | None) -> int:
        """What keeping it open in `lane` costs: the object, its lane's entry and key, its id, role and name."""
        return (CHUNK_BYTES + DICT_ENTRY + sys.getsizeof(self.id) + (0 if lane is None else sys.getsizeof(lane))
                + (0 if self.role is None else sys.getsizeof(self.role))
                + (0 if self.name is None else sys.getsizeof(self.name)))


CHUNK_BYTES = sys.getsizeof(_Chunk("", ""))


# Chunk expansion (spec 1.1, Streaming Messages, "Closing a chunk stream"): these stand aside and close no chunk
# stream; run-level events close every lane; any other event closes the open chunk stream of its own lane.
_STAND_ASIDE = frozenset({"RAW", "ACTIVITY_SNAPSHOT", "ACTIVITY_DELTA", "REASONING_ENCRYPTED_VALUE", "SUBAGENT_STARTED",
                          "TEXT_MESSAGE_CHUNK", "TOOL_CALL_CHUNK", "REASONING_MESSAGE_CHUNK"})
_RUN_LEVEL = frozenset({"RUN_STARTED", "RUN_FINISHED", "RUN_ERROR", "MESSAGES_SNAPSHOT"})
# The events that carry the answer's text (the profile's partial_result): only with a non-empty delta.
_TEXT_CARRIERS = frozenset({"TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_CHUNK"})


def _text(v: Any) -> str | None:
    """An id as a check keeps it: a string, cut as the decoder cuts ids (so 10,000 of them stay ~10 MiB at most)."""
    if not isinstance(v, str):
        return None
    return v if len(v) <= MAX_ID_CHARS else v[:MAX_ID_CHARS]


class AguiRunChecks(RunChecks):
    """AG-UI's payload rules for one run (docs/profiles.md lists them with their rule ids)."""

    # What stops when the run's ids pass MAX_REMEMBERED_BYTES: the checks that an id was never seen, which a forgotten
    # id would fail on a server doing nothing wrong. The checks of ids remembered go on.
    IDS_FULL = ("a TOOL_CALL_RESULT or pendingToolCallIds naming a call that never started, a parentSubagentRunId no "
                "SUBAGENT_STARTED announced, a subagent announced after events attributed to it, an ACTIVITY_DELTA "
                "no ACTIVITY_SNAPSHOT started, a chunk continuing no open chunk stream, a parentMessageId no event "
                "has shown (advice)")

    def __init__(self, ctx: RunContext = RunContext()) -> None:
        self.ctx = ctx
        # What the ids remembered cost (MAX_REMEMBERED_BYTES), and whether one was forgotten: then the checks that
        # need every id (IDS_FULL) are not judged any more in this run, nor in the runs that follow it on the stream.
        self.id_bytes = 0
        self.ids_full = False
        self.messages: dict[str, None] = {}  # message ids known in this conversation
        for mid in ctx.request_message_ids:
            self._remember(self.messages, mid)
        self.open_messages: dict[str, None] = {}
        self.calls: dict[str, _Call] = {}
        self.state: Any = {}  # the request's state (the profile's template sends {})
        self.state_size = 2  # its size as compact JSON, kept up to date patch by patch
        self.state_tracked = True
        self.state_work = 0  # bytes weighed or copied by this run's patches (MAX_STATE_WORK)
        self.warned: set[str] = set()
        self.schema_failed = False  # the event at hand broke the schema (already an R12)
        self.args_bytes = 0  # argument text buffered now, all open calls together
        # activity message id -> [its content, its size] (ACTIVITY_SNAPSHOT, then deltas)
        self.activities: dict[str, list[Any]] = {}
        self.activity_bytes = 0
        self.activities_dropped: dict[str, None] = {}  # a delta did not apply, or went past a bound: no longer checked
        # Open chunk streams by lane (None: the parent agent; else the subagentRunId), expanded as the spec says.
        self.lanes: dict[str | None, _Chunk] = {}
        # Who opened each message, reasoning message, tool call and activity (None: the parent agent), by (family, id):
        # "every event continuing it MUST agree about that owner" (spec 1.1, Subagents, Ownership).
        self.owners: dict[tuple[str, str], str | None] = {}
        # Subagent invocations of this run: announced (SUBAGENT_STARTED), finished, and the ids events were attributed
        # to before any announcement of theirs. Run-scoped: "An id MAY reappear in a later run".
        self.announced: dict[str, None] = {}
        self.finished: dict[str, None] = {}
        self.attributed: dict[str, None] = {}
        self.resuming = False  # the request answers interrupts: the run may answer the interrupted run's calls
        if ctx.request is not None:
            self._request(ctx.request)

    def _request(self, req: dict[str, Any]) -> None:
        """The client's own RunAgentInput (the proxy's user's, a recording's): the messages it carries and their tool
        calls are known ids, as when RUN_STARTED echoes them; the tools it offers are the frontend tools (not the
        profile's template's); a non-empty `resume` answers interrupts of an earlier run of the thread, on another
        stream, whose calls this run may answer ("Run 2 begins; resume[].interruptId links back to run 1's
        interrupts ... ToolCallResult", spec 1.1, Interrupts). Read once, not kept: followups get the tools alone."""
        messages = req.get("messages")
        if isinstance(messages, list):
            self._messages_snapshot({"messages": messages}, "")
        tools = req.get("tools")
        offered = self.ctx.offered_tools
        if isinstance(tools, list):
            offered = frozenset(name for t in tools[:MAX_OFFERED]
                                if isinstance(t, dict) and (name := _text(t.get("name"))) is not None)
        resume = req.get("resume")
        self.resuming = isinstance(resume, list) and bool(resume)
        self.ctx = RunContext(offered, self.ctx.request_message_ids)

    def followup(self) -> "AguiRunChecks":
        nxt = AguiRunChecks(self.ctx)
        nxt.messages = self.messages.copy()
        nxt.state, nxt.state_size, nxt.state_tracked = self.state, self.state_size, self.state_tracked
        nxt.state_work = self.state_work  # one budget for the stream's runs: they share the state
        # Calls the finished run left for the application (frontend tools) may be answered in the next one.
        nxt.calls = {k: _Call(c.name, ended=True, answered=c.answered, owed=False) for k, c in self.calls.items()}
        # What it took over costs it (its strings are this run's, and the checker lets this run's checks go); ids this
        # run forgot are not known to the next one either, so it does not judge the checks that need them (a chat of
        # its own: it says so too).
        nxt.id_bytes = (sum(sys.getsizeof(m) for m in nxt.messages) + DICT_ENTRY * len(nxt.messages)
                        + sum(sys.getsizeof(k) + sys.getsizeof(c.name) for k, c in nxt.calls.items())
                        + (CALL_BYTES + DICT_ENTRY) * len(nxt.calls))
        nxt.ids_full = self.ids_full
        nxt.warned = set(self.warned) - {"ids"}
        return nxt

    def held_bytes(self) -> int:
        return self.id_bytes + self.args_bytes + (self.state_size if self.state_tracked else 0) + self.activity_bytes

    def _ids_full(self, t: str) -> list[Finding]:
        """The one warning of a run whose ids passed MAX_REMEMBERED_BYTES: which checks stop, and why."""
        return self._warn_once("ids", f"{t}: the run's ids passed {MAX_REMEMBERED_BYTES // 1024} KiB of memory; ids "
                                      f"past it are not remembered, so these are not checked from here: {self.IDS_FULL}")

    def _warn_once(self, key: str, reason: str) -> list[Finding]:
        if key in self.warned:
            return []
        self.warned.add(key)
        return [Finding(Rule.R12, reason, warning=True)]

    def _charge(self, n: int) -> bool:
        """Whether `n` more bytes of ids fit MAX_REMEMBERED_BYTES (then they are charged); else the run forgets."""
        if self.id_bytes + n > MAX_REMEMBERED_BYTES:
            self.ids_full = True
            return False
        self.id_bytes += n
        return True

    def _remember(self, ids: dict[str, None], value: str, string: bool = True) -> bool:
        """Keep `value` in `ids`, charged its place and (unless the caller has charged that very string) the string;
        whether it is a member now. (Ids are kept as a dict's keys: a set's table costs up to 107 bytes a member, a
        dict's 44.)"""
        if value in ids:
            return True
        if not self._charge(DICT_ENTRY + (sys.getsizeof(value) if string else 0)):
            return False
        ids[value] = None
        return True

    def _new_call(self, cid: str, call: _Call) -> bool:
        """Keep a call not known yet; whether it is kept."""
        if not self._charge(DICT_ENTRY + CALL_BYTES + sys.getsizeof(cid) + sys.getsizeof(call.name)):
            return False
        self.calls[cid] = call
        return True

    def _own(self, family: str, key: str, p: dict[str, Any], string: bool = True) -> None:
        """Who opens (or re-mints) the entity: its tag, or None for the parent agent (`string`: `key` is not a string
        the caller just kept elsewhere)."""
        tag = p.get("subagentRunId")
        owner = _text(tag) if tag.__class__ is str else None
        old = self.owners.get((family, key), _NOTHING)
        cost = 0 if owner is None else sys.getsizeof(owner)
        if old is _NOTHING:
            cost += PAIR + DICT_ENTRY + (sys.getsizeof(key) if string else 0)
        elif old is not None:
            cost -= sys.getsizeof(old)
        if self._charge(cost):
            self.owners[(family, key)] = owner
        elif old is not _NOTHING:
            del self.owners[(family, key)]  # re-minted, its new owner not kept: its old one is not the owner any more

    def _owner_agrees(self, family: tuple[str, str, str], p: dict[str, Any], t: str, tag: str | None) -> list[Finding]:
        """A continuation tagged with another owner than its opener's: "A consumer MUST reject a continuation whose
        tag disagrees with its opener" (spec 1.1, Subagents, Ownership). One with no tag continues whatever the opener
        owns."""
        kind, key_field, opener = family
        key = _text(p.get(key_field))
        if key is None or (kind, key) not in self.owners:
            return []  # not opened by an event this run saw (the spans and the checks above say so where it matters)
        owner = self.owners[(kind, key)]
        if owner == tag:
            return []
        return [Finding(Rule.R5, f"{t} for {key[:80]!r} is attributed to subagent {str(tag)[:80]!r}, but {opener} opened "
                                 f"it for {'the parent agent' if owner is None else repr(owner[:80])}: a continuation "
                                 "must agree with its opener's owner")]

    def _subagent_started(self, p: dict[str, Any], t: str) -> list[Finding]:
        """The lifecycle MUSTs of spec 1.1, Subagents: announced before any event attributed to it, never an id that
        finished in this run, a parentSubagentRunId announced in this run. (An id announced twice while active is the
        subagent span's R5.)"""
        sid = _text(p.get("subagentRunId"))
        if sid is None:
            return []  # the schema's R12
        out = []
        if sid in self.finished:
            out.append(Finding(Rule.R5, f"{t} reuses {sid[:80]!r}, the id of an invocation that finished in this run "
                                        "(a second invocation gets an id of its own)"))
        elif sid in self.attributed and sid not in self.announced and not self.ids_full:
            # (An announcement forgotten would make this one look late: with ids forgotten, not judged.)
            out.append(Finding(Rule.R5, f"{t} announces {sid[:80]!r} after events attributed to it (an invocation is "
                                        "announced before any event attributed to it, or not at all)"))
        parent = p.get("parentSubagentRunId")
        if parent.__class__ is str and not self.ids_full and _text(parent) not in self.announced:
            out.append(Finding(Rule.R5, f"{t} {sid[:80]!r} names parentSubagentRunId {str(parent)[:80]!r}, which no "
                                        "SUBAGENT_STARTED of this run announced"))
        self._remember(self.announced, sid)
        return out

    def _subagent_ended(self, p: dict[str, Any], t: str) -> list[Finding]:
        sid = _text(p.get("subagentRunId"))
        if sid is not None and sid in self.announced:
            self._remember(self.finished, sid)
        return []

    def event(self, ev: Event) -> list[Finding]:
        p = ev.payload or {}
        t = ev.wire_type
        out: list[Finding] = []
        # No advice on a missing `timestamp`: the spec makes it optional with no SHOULD (BaseEvent), and real servers
        # (LangGraph's) leave it out; its JSON type is still checked (`agui_frame`).
        handler = _HANDLERS.get(t)
        self.schema_failed = bool(ev.problems)
        if self.lanes and t not in _STAND_ASIDE:
            # The chunk shorthand has no end event: this one ends the chunk stream of its lane (a run-level one, all).
            if t in _RUN_LEVEL:
                for lane in list(self.lanes):
                    out += self._close_chunk(lane, check=t != "RUN_ERROR")
            elif (((lane := p.get("subagentRunId")) is None or lane.__class__ is str)
                  and (lane := _text(lane)) in self.lanes):
                out += self._close_chunk(lane)  # (a list or object there is the schema's R12, and unhashable)
        if (tag := _text(p.get("subagentRunId"))) is not None and not t.startswith("SUBAGENT_"):
            if tag not in self.announced:
                self._remember(self.attributed, tag)
            if (family := _CONTINUES.get(t)) is not None:
                out += self._owner_agrees(family, p, t, tag)
        if handler is not None:
            out += handler(self, p, t)
        if self.ids_full and "ids" not in self.warned:
            out += self._ids_full(t)
        if t in _TEXT_CARRIERS and not p.get("delta"):
            # An empty delta (a keep-alive) or a chunk with none shows the user no text: not a partial result, so a
            # scenario requiring streamed text (`expect.streaming`) is not met by keep-alives alone.
            ev.role = None
        return out

    # -- messages --
    def _message_start(self, p: dict[str, Any], t: str) -> list[Finding]:
        mid = _text(p.get("messageId"))
        if mid is None:
            return []
        # A closed message "MAY reopen" with a new START (spec 1.1, Text Messages; Reasoning: "closed ... before its
        # messageId is used again"): it is open again. A START while the id is open is the spans' R5 (checker).
        kept = mid not in self.messages and self._remember(self.messages, mid)  # (`mid` itself kept: its string charged)
        self._remember(self.open_messages, mid, string=not kept)
        self._own("reasoning" if t.startswith("REASONING") else "text", mid, p, string=not kept)
        return []

    def _message_content(self, p: dict[str, Any], t: str) -> list[Finding]:
        if p.get("delta") == "":
            # Advice: the schema's delta "May be the empty string: providers emit empty deltas as keep-alives ... and
            # rejecting them would kill runs that are working correctly" (ag-ui-protocol 1.0 schema).
            return self._warn_once("empty", f"{t} with an empty delta (advice: allowed, e.g. as a keep-alive; it "
                                            "carries no text)")
        return []

    def _message_end(self, p: dict[str, Any], t: str) -> list[Finding]:
        mid = _text(p.get("messageId"))
        if mid is not None:
            self.open_messages.pop(mid, None)
        return []


    def _run_started(self, p: dict[str, Any], t: str) -> list[Finding]:
        # The request echoed back (RUN_STARTED.input): its messages, and the tool calls in them, are known ids, so a
        # run resuming an interrupted one may answer a call the earlier run made.
        inp = p.get("input")
        if isinstance(inp, dict) and isinstance(inp.get("messages"), list):
            return self._messages_snapshot({"messages": inp["messages"]}, t)
        return []

    def _messages_snapshot(self, p: dict[str, Any], t: str) -> list[Finding]:
        messages = p.get("messages")
        for m in messages if isinstance(messages, list) else ():
            if not isinstance(m, dict):
                continue
            if (mid := _text(m.get("id"))) is not None:
                self._remember(self.messages, mid)
            calls = m.get("toolCalls")
            for call in calls if isinstance(calls, list) else ():
                cid = _text(call.get("id")) if isinstance(call, dict) else None
                if cid is not None and cid not in self.calls:
                    fn = call.get("function")
                    self._new_call(cid, _Call(_text(fn.get("name") if isinstance(fn, dict) else None) or "",
                                              ended=True, owed=False))
            if m.get("role") == "tool" and (c := self.calls.get(_text(m.get("toolCallId")) or "")) is not None:
                c.answered = True
        return []

    # -- tool calls --
    def _call_start(self, p: dict[str, Any], t: str) -> list[Finding]:
        cid, name = _text(p.get("toolCallId")), _text(p.get("toolCallName")) or ""
        if cid is None:
            return []
        call = self.calls.get(cid)
        if call is not None:
            if call.ended:
                # A closed call "MAY be reopened by a new TOOL_CALL_START" (spec 1.1, Tool Calls): open again, its
                # further arguments appending (not checked as JSON: the text is now in two parts). A START while it is
                # still open is the spans' R5 (checker).
                call.ended, call.args, call.args_bytes = False, [], -1  # (its END released its bytes)
        kept = call is None and self._new_call(cid, _Call(name))  # (`cid` itself kept: its string charged)
        tag, parent = p.get("subagentRunId"), _text(p.get("parentMessageId"))
        if tag is None and parent is not None and (inherited := self.owners.get(("text", parent))) is not None:
            # "A tool call inherits the attribution of the message that held it" (spec 1.1, Subagents).
            self._own("call", cid, {"subagentRunId": inherited}, string=not kept)
        else:
            self._own("call", cid, p, string=not kept)
        return self._parent(p, t, cid)

    def _parent(self, p: dict[str, Any], t: str, cid: str) -> list[Finding]:
        """`parentMessageId` "attaches the call to the assistant message that carries it" (spec 1.1, Tool Calls): a
        message that carries only tool calls is never streamed as text, and one may be streamed after its calls (a
        consumer creates it from the call). Naming one no event has shown is advice, never a violation."""
        parent = _text(p.get("parentMessageId"))
        tag = p.get("subagentRunId")
        if parent is not None and tag.__class__ is str and ("text", parent) in self.owners:
            # "A producer MUST NOT attribute a tool call to one owner while the message carrying it is attributed to
            # another" (spec 1.1, Subagents, Ownership). An untagged call inherits its message's owner.
            owner = self.owners[("text", parent)]
            if owner != _text(tag):
                whose = "the parent agent" if owner is None else f"subagent {owner[:80]!r}"
                return [Finding(Rule.R5, f"{t} {cid[:80]!r} is attributed to subagent {str(tag)[:80]!r}, but the message "
                                         f"{parent[:80]!r} that carries it is attributed to {whose}")]
        if parent is None or parent in self.messages:
            return []
        # The assistant message the call attaches to exists from now on. (With ids forgotten, it may have been shown.)
        if not self._remember(self.messages, parent) or self.ids_full:
            return []
        return [Finding(Rule.R5, f"{t} {cid[:80]!r} names parentMessageId {parent[:80]!r}, which no event has shown "
                                 "yet (advice: a consumer creates that assistant message)", warning=True)]

    def _call_args(self, p: dict[str, Any], t: str) -> list[Finding]:
        call = self.calls.get(_text(p.get("toolCallId")) or "")
        delta = p.get("delta")
        if call is None or call.ended or not isinstance(delta, str) or call.args_bytes < 0:
            return []
        call.args_bytes += len(delta)
        self.args_bytes += len(delta)
        if self.args_bytes > MAX_ARGS_BYTES:
            self.args_bytes -= call.args_bytes
            call.args, call.args_bytes = [], -1  # stop buffering: these arguments are not checked
            return self._warn_once("args", f"{t}: tool call arguments over {MAX_ARGS_BYTES} bytes in all, "
                                           "not checked as JSON")
        call.args.append(delta)
        return []

    def _call_end(self, p: dict[str, Any], t: str) -> list[Finding]:
        cid = _text(p.get("toolCallId")) or ""
        call = self.calls.get(cid)
        if call is None or call.ended:
            return []
        call.ended = True
        text, call.args = "".join(call.args), []
        self.args_bytes -= max(0, call.args_bytes)
        if call.args_bytes > 0 and text.strip():
            # Advice only: "closing establishes completeness, not validity", and argument text that does not parse is
            # "the application's decision, not a protocol violation" (spec 1.1, Tool Calls).
            try:
                json.loads(text)
            except (ValueError, RecursionError) as exc:
                return [Finding(Rule.R12, f"tool call {cid[:80]!r}: the "
                                          f"{'TOOL_CALL_CHUNK' if t == 'TOOL_CALL_CHUNK' else 'TOOL_CALL_ARGS'} deltas "
                                          f"do not concatenate to valid JSON ({str(exc)[:80]}; advice: the spec leaves "
                                          "unparsable arguments to the application)", warning=True)]
        return []

    # -- the chunk shorthand, expanded into START / CONTENT|ARGS / END as the spec's Streaming Messages page says --
    def _chunk(self, p: dict[str, Any], t: str) -> list[Finding]:
        tool = t == "TOOL_CALL_CHUNK"
        key = "toolCallId" if tool else "messageId"
        cid = _text(p.get(key))
        # Cut as ids are: a lane's key is kept while its stream is open (1,000 lanes of 4 MiB tags were 4 GB a run).
        tag = _text(p.get("subagentRunId"))
        out: list[Finding] = []
        if cid is None:
            lane, problem = self._continued_lane(t, tag)
            if problem and self.ids_full:
                return []  # (a stream not tracked for want of room may be the one it continues)
            if problem:
                return [Finding(Rule.R5, f"{t} without {key} {problem}: the first chunk of a "
                                         f"{'call' if tool else 'message'} must carry {key} "
                                         f"{'and toolCallName ' if tool else ''}(a consumer rejects it)")]
            cid = self.lanes[lane].id
            out += self._conflicts(self.lanes[lane], p, t)
        else:
            lane = next((k for k, c in self.lanes.items() if c.kind == t and c.id == cid), tag)
            if tag is not None and lane != tag:
                out.append(Finding(Rule.R12, f"{t} for {cid[:80]!r} says subagentRunId {tag[:80]!r}, but the chunk "
                                             f"stream was opened by {'the parent agent' if lane is None else repr(lane[:80])}"))
            cur = self.lanes.get(lane)
            if cur is not None and cur.kind == t and cur.id == cid:
                out += self._conflicts(cur, p, t)
            else:  # a first chunk: the lane's open stream (if any) ends, this one opens
                if cur is not None:
                    out += self._close_chunk(lane)
                if len(self.lanes) >= MAX_LANES:
                    return out + self._warn_once("lanes", f"{t}: over {MAX_LANES} chunk streams open at once, "
                                                          "not tracked")
                out += self._open_chunk(lane, t, cid, p)
                if lane not in self.lanes:
                    return out  # not opened (it mixed the spellings): its delta belongs to nothing
        delta = p.get("delta")
        if tool and isinstance(delta, str) and delta:
            out += self._call_args({"toolCallId": cid, "delta": delta}, t)
        return out

    def _continued_lane(self, t: str, tag: str | None) -> tuple[str | None, str]:
        """The lane an id-less chunk continues (its tag's; else the parent's; else the sole one of its family), or
        why it continues none."""
        if tag is not None:
            cur = self.lanes.get(tag)
            return tag, "" if cur is not None and cur.kind == t else f"continues no chunk stream of subagent {tag[:80]!r}"
        cur = self.lanes.get(None)
        if cur is not None and cur.kind == t:
            return None, ""
        lanes = [k for k, c in self.lanes.items() if c.kind == t]
        if len(lanes) == 1:
            return lanes[0], ""
        if lanes:
            return None, (f"is ambiguous: {len(lanes)} subagents have a {t} stream open and none is the parent "
                          "agent's (continuations must name their subagentRunId)")
        return None, "continues no open chunk stream"

    def _open_chunk(self, lane: str | None, t: str, cid: str, p: dict[str, Any]) -> list[Finding]:
        out = []
        if t == "TOOL_CALL_CHUNK":
            name, parent = _text(p.get("toolCallName")), _text(p.get("parentMessageId"))
            if name is None:
                out.append(Finding(Rule.R12, f"{t} opening call {cid[:80]!r} has no toolCallName: the first chunk of "
                                             "a call must carry toolCallId and toolCallName"))
            call = self.calls.get(cid)
            if call is not None and not call.ended:
                out.append(Finding(Rule.R5, f"{t} opens tool call {cid[:80]!r}, which TOOL_CALL_START already opened "
                                            "(the two spellings do not mix within one call)"))
                return out
            if call is not None:
                # Reopening a closed call is allowed (spec 1.1); its arguments, now in two parts, are not checked.
                call.ended, call.args, call.args_bytes = False, [], -1
            else:
                self._new_call(cid, _Call(name or ""))
            out += self._parent(p, t, cid)
            return out + self._open_lane(lane, _Chunk(t, cid, name, parent), t)
        if cid in self.open_messages:
            start = "REASONING_MESSAGE_START" if t == "REASONING_MESSAGE_CHUNK" else "TEXT_MESSAGE_START"
            return [Finding(Rule.R5, f"{t} opens message {cid[:80]!r}, which {start} already opened (the two "
                                     "spellings do not mix within one message)")]
        # (A closed message may be reopened: spec 1.1, Text Messages. So no reuse check here.)
        kept = cid not in self.messages and self._remember(self.messages, cid)
        self._remember(self.open_messages, cid, string=not kept)
        self._own("reasoning" if t == "REASONING_MESSAGE_CHUNK" else "text", cid, p, string=not kept)
        role = p.get("role")
        return out + self._open_lane(lane, _Chunk(t, cid, _text(role) or "assistant" if t == "TEXT_MESSAGE_CHUNK"
                                                  else None, _text(p.get("name"))), t)

    def _open_lane(self, lane: str | None, chunk: _Chunk, t: str) -> list[Finding]:
        """The chunk stream open in `lane` from now on, charged to the run's ids while it is open; not tracked when
        they are full (then its continuations are not judged: IDS_FULL)."""
        if not self._charge(chunk.nbytes(lane)):
            return []
        self.lanes[lane] = chunk
        return []

    def _conflicts(self, cur: _Chunk, p: dict[str, Any], t: str) -> list[Finding]:
        """A continuation may repeat what its first chunk established, with the same value only (a MUST)."""
        if t == "TOOL_CALL_CHUNK":
            fields = (("toolCallName", cur.role), ("parentMessageId", cur.name))
        elif t == "TEXT_MESSAGE_CHUNK":
            fields = (("role", cur.role), ("name", cur.name))
        else:
            return []
        out = []
        for key, established in fields:
            v = p.get(key)
            if v is not None and established is not None and _text(v) != established:
                out.append(Finding(Rule.R12, f"{t} continuing {cur.id[:80]!r} says {key} {str(v)[:60]!r}, its first "
                                             f"chunk {established[:60]!r} (a conflicting repeat)"))
        return out

    def _close_chunk(self, lane: str | None, check: bool = True) -> list[Finding]:
        """The synthesized end of a lane's chunk stream."""
        cur = self.lanes.pop(lane)
        self.id_bytes -= cur.nbytes(lane)
        if cur.kind != "TOOL_CALL_CHUNK":
            return self._message_end({"messageId": cur.id}, cur.kind)
        if not check:  # RUN_ERROR: the call may have been cut short
            call = self.calls.get(cur.id)
            if call is not None and not call.ended:
                self.args_bytes -= max(0, call.args_bytes)
                call.ended, call.args, call.args_bytes = True, [], -1
            return []
        return self._call_end({"toolCallId": cur.id}, cur.kind)

    def _call_result(self, p: dict[str, Any], t: str) -> list[Finding]:
        cid = _text(p.get("toolCallId"))
        if cid is None:
            return []  # no toolCallId, or not a string: the schema's R12 (it answers no call this run can name)
        out = []
        call = self.calls.get(cid)
        if call is None:
            if self.resuming:
                # A call of the interrupted run this one resumes (another stream): answered here, once.
                self._new_call(cid, _Call("", ended=True, answered=True, owed=False))
            elif not self.ids_full:  # (else it may be a call forgotten)
                out.append(Finding(Rule.R5, f"{t} for tool call {cid[:80]!r}, which never started"))
        elif not call.ended:
            out.append(Finding(Rule.R5, f"{t} for tool call {cid[:80]!r} before its TOOL_CALL_END"))
        elif call.answered:
            out.append(Finding(Rule.R5, f"a second {t} for tool call {cid[:80]!r}"))
        if call is not None:
            call.answered = True
        mid = _text(p.get("messageId"))
        if mid is not None:
            if mid in self.messages:
                out.append(Finding(Rule.R5, f"{t} reuses message id {mid[:80]!r}: a message with that id already exists"))
            self._remember(self.messages, mid)
        return out

    # -- state --
    def _state_snapshot(self, p: dict[str, Any], t: str) -> list[Finding]:
        if self.schema_failed and "snapshot" not in p:
            # (Already an R12: `snapshot` missing.) The server replaced its state with one the event does not show:
            # the state is unknown from here, and a delta against it is not judged (it was judged against null, an
            # R12 for a delta doing nothing wrong).
            self.state, self.state_tracked = None, False
            return []
        snapshot = p.get("snapshot")
        size = _json_size(snapshot)
        if size > MAX_STATE_BYTES:
            self.state, self.state_tracked = None, False
            return self._warn_once("state", f"{t}: state over {MAX_STATE_BYTES} bytes, later STATE_DELTAs not checked")
        self.state, self.state_size, self.state_tracked = snapshot, size, True
        return []

    def _state_delta(self, p: dict[str, Any], t: str) -> list[Finding]:
        patch = p.get("delta")
        if not self.state_tracked or not isinstance(patch, list) or self.schema_failed:
            return []  # not a JSON Patch: the schema check reported it
        new, size, problem = self._apply(self.state, self.state_size, patch)
        if problem:
            # Applied in place up to the operation that failed: the state is not the server's any more.
            self.state, self.state_tracked = None, False
            return self._unfollowed(problem, t, "state", "state", "later STATE_DELTAs", "the current state")
        self.state, self.state_size = new, size
        return []

    # -- activities: the same snapshot/delta pattern, per activity message --
    def _activity_snapshot(self, p: dict[str, Any], t: str) -> list[Finding]:
        mid, content = _text(p.get("messageId")), p.get("content")
        if mid is None:
            return []
        if self.schema_failed:
            # (Already an R12.) It started (or re-minted) the activity with content that cannot be followed: its
            # deltas are not judged (they were an R5 for an activity no snapshot started).
            if (old := self.activities.pop(mid, None)) is not None:
                self.activity_bytes -= old[1]
            self._remember(self.activities_dropped, mid)
            return []
        if p.get("replace") is False and mid in self.activities:
            # "Leave what is already there": the existing content stands, and its owner, with which "the snapshot's
            # own attribution MUST agree" (spec 1.1, Activity).
            tag = p.get("subagentRunId")
            return self._owner_agrees(("activity", "messageId", "ACTIVITY_SNAPSHOT"), p, t, _text(tag)) \
                if tag.__class__ is str else []
        self._own("activity", mid, p)  # a replacing snapshot "re-mints the activity", its owner with it
        size = _json_size(content)
        old = self.activities.get(mid)
        kept = old[1] if old is not None else 0
        if self.activity_bytes - kept + size > MAX_STATE_BYTES:
            if old is not None:  # a new snapshot too big for the bound: that activity is no longer followed
                del self.activities[mid]
                self.activity_bytes -= kept
                self._remember(self.activities_dropped, mid)
            return self._warn_once("activity", f"{t}: activities over {MAX_STATE_BYTES} bytes, later deltas not checked")
        if old is None and not self._charge(DICT_ENTRY + sys.getsizeof(mid) + ACTIVITY_ENTRY):
            return []  # not followed: the run's ids are full (IDS_FULL)
        self.activity_bytes += size - kept
        self.activities[mid] = [content, size]
        self.activities_dropped.pop(mid, None)
        return []

    def _activity_delta(self, p: dict[str, Any], t: str) -> list[Finding]:
        mid, patch = _text(p.get("messageId")), p.get("patch")
        if mid is None or not isinstance(patch, list) or self.schema_failed or mid in self.activities_dropped:
            return []
        entry = self.activities.get(mid)
        if entry is None:
            if self.activity_bytes >= MAX_STATE_BYTES or self.ids_full:
                return []  # not tracked (said once)
            return [Finding(Rule.R5, f"{t} for activity {mid[:80]!r}, which no ACTIVITY_SNAPSHOT started")]
        content, size = entry
        new, new_size, problem = self._apply(content, size, patch, MAX_STATE_BYTES - (self.activity_bytes - size))
        if problem:
            # Applied in place up to the operation that failed: this activity is no longer followed.
            del self.activities[mid]
            self.activity_bytes -= size
            self._remember(self.activities_dropped, mid)
            what = f"activity {mid[:80]!r}"
            return self._unfollowed(problem, t, "activity", what, "its later deltas", what)
        self.activity_bytes += new_size - size
        entry[0], entry[1] = new, new_size
        if not isinstance(new, dict):
            # "The patched result MUST still be an object" (spec 1.1, Activity): not followed further.
            del self.activities[mid]
            self.activity_bytes -= new_size
            self._remember(self.activities_dropped, mid)
            return [Finding(Rule.R12, f"{t} makes the content of activity {mid[:80]!r} a JSON "
                                      f"{_json_kind(new)}, not an object; its later deltas not checked")]
        return []

    def _unfollowed(self, problem: str, t: str, key: str, what: str, later: str, target: str) -> list[Finding]:
        """What a patch that ended the following of `what` (the state, an activity) says: advice, once per kind,
        when a bound ended it; an R12 when it does not apply to `target`."""
        if problem is TOO_BIG:
            return self._warn_once(key, f"{t}: {what} over {MAX_STATE_BYTES} bytes, {later} not checked")
        if problem is TOO_DEEP:
            return self._warn_once(key, f"{t}: {what} nested too deeply to follow (past the interpreter's recursion "
                                        f"limit), {later} not checked")
        if problem is TOO_LONG:
            return self._warn_once(key, f"{t}: a patch of over {MAX_PATCH_OPS:,} operations (not applied, nor "
                                        f"validated past them): {what} not followed from here, {later} not checked")
        if problem is TOO_MUCH:
            return self._warn_once("work", f"{t}: the run's patches weighed over {MAX_STATE_WORK} bytes of state, "
                                           f"{later} not checked")
        return [Finding(Rule.R12, f"{t} does not apply to {target} (RFC 6902): {problem}; {later} not checked")]

    def _weigh(self, v: Any) -> int | None:
        """`v`'s size as compact JSON, charged to the run's work; None when it cannot be measured (nested past the
        serializer's depth, not JSON): then the state's size is unknown and it is no longer followed."""
        text = _json_text(v)
        if text is None:
            self.state_work += MAX_STATE_BYTES
            return None
        n = len(text)
        # Copying, comparing or dropping a value costs per node more than per byte (330,000 empty lists are 1 MiB):
        # each container and item is charged NODE_WORK besides its bytes.
        self.state_work += min(n, MAX_STATE_BYTES) + NODE_WORK * (text.count("[") + text.count("{") + text.count(","))
        return None if n > MAX_STATE_BYTES else n

    def _apply(self, doc: Any, size: int, patch: list[Any], limit: int = MAX_STATE_BYTES) -> tuple[Any, int, str]:
        """`patch` applied to `doc` IN PLACE with the jsonpatch library, one operation at a time: (the result, its
        size as compact JSON, "") or (None, 0, why it does not apply), TOO_BIG when an operation would take it past
        `limit` bytes (or its size can no longer be known), TOO_MUCH past the run's MAX_STATE_WORK, TOO_LONG past
        MAX_PATCH_OPS operations (none applied), TOO_DEEP when a value is too deep for the library to copy or compare.

        Each operation is weighed before it is applied, and charged what applying it costs: the values it adds,
        copies, tests or drops (their size), a new member's name, and the items an array insert or removal shifts.
        So a patch copying the root into itself 40 times stops at the first copy too big, a flood of inserts at the
        head of a long array stops at the work bound, and the size is kept without serializing the document."""
        import jsonpatch
        import jsonpointer

        if len(patch) > MAX_PATCH_OPS:
            # Counted before any operation is weighed or applied (none is): what one frame may cost the client's
            # loop is bounded here, what a run's frames may cost in all by MAX_STATE_WORK below (MAX_PATCH_OPS).
            return None, 0, TOO_LONG
        try:
            for op in patch:
                if isinstance(op, dict):
                    kind, path, source = op.get("op"), op.get("path"), op.get("from")
                    self.state_work += OP_WORK
                    grown: int | None = 0
                    if kind == "copy" and isinstance(source, str):
                        grown = self._weigh(jsonpointer.resolve_pointer(doc, source))
                    elif kind in ("add", "replace", "test"):
                        grown = self._weigh(op.get("value"))
                        if kind == "test":
                            grown = 0 if grown is not None else None
                    if grown is None:
                        return None, 0, TOO_BIG
                    size += grown
                    if kind == "move" and isinstance(source, str) and isinstance(path, str):
                        # The library takes the value out first, which can shift an array on the way to the target:
                        # the target is not resolved on the document as it stands. Its member name is counted as
                        # new whatever it replaces, and the source's never taken off (over, never under, the size).
                        member = len(json.dumps(path.rsplit("/", 1)[-1])) + 2
                        size += member
                        self.state_work += member + (_touched(doc, source, "remove", jsonpointer)[2]
                                                     + _touched(doc, path, "add", jsonpointer)[2]) * SHIFT_WORK
                    elif kind in ("add", "replace", "remove", "copy") and isinstance(path, str):
                        replaced, member, shifted = _touched(doc, path, kind, jsonpointer)
                        size += member
                        self.state_work += abs(member) + shifted * SHIFT_WORK
                        if replaced is not _NOTHING:
                            dropped = self._weigh(replaced)
                            if dropped is None:
                                return None, 0, TOO_BIG
                            size -= dropped
                    if size > limit or size < 0:  # (below 0: the estimate is lost; not followed any more)
                        return None, 0, TOO_BIG
                    if self.state_work > MAX_STATE_WORK:
                        return None, 0, TOO_MUCH
                doc = jsonpatch.JsonPatch([op]).apply(doc, in_place=True)
            return doc, size, ""
        except RecursionError:
            # A value JSON can write (it was weighed) but too deep for the library to copy or compare: the patch may
            # well apply, the client cannot follow it. (It was an R12 "does not apply".)
            return None, 0, TOO_DEEP
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, KeyError, IndexError,
                ValueError, AttributeError) as exc:
            return None, 0, str(exc)[:120] or exc.__class__.__name__

    # -- advice --
    def _pre_1_0(self, p: dict[str, Any], t: str) -> list[Finding]:
        return self._warn_once("thinking", f"{t} is not an AG-UI 1.0 event (1.0 replaced THINKING_* with REASONING_*; "
                                           "said once per run)")

    def _raw(self, p: dict[str, Any], t: str) -> list[Finding]:
        inner = p.get("event")
        _, types = _schema()
        if isinstance(inner, dict) and inner.get("type") in types:
            return [Finding(Rule.R12, f"RAW wraps a typed AG-UI event ({str(inner.get('type'))[:40]}): send it as "
                                      "itself", warning=True)]
        return []

    def end(self, ev: Event) -> list[Finding]:
        """At RUN_FINISHED: every backend tool call (a tool the client did not offer) owes its TOOL_CALL_RESULT."""
        if ev.wire_type != "RUN_FINISHED":
            return []  # RUN_ERROR: the run failed, nothing more is owed
        outcome = (ev.payload or {}).get("outcome")
        kind = outcome.get("type") if isinstance(outcome, dict) else None
        pending = outcome.get("pendingToolCallIds") if isinstance(outcome, dict) else None
        if pending is not None and kind != "success":
            # A field of the success outcome only (ag_ui.core: "a success with an interrupt still pending would be a
            # contradiction"); the models keep unknown fields, so the schema lets it through. It excuses nothing.
            pending = None
            out = [Finding(Rule.R5, f"pendingToolCallIds on a {str(kind)[:40]!r} outcome: only a success outcome "
                                    "leaves tool calls to the application")]
        else:
            out = []
        if isinstance(outcome, dict) and kind == "interrupt" and isinstance(interrupts := outcome.get("interrupts"), list):
            # "Each interrupt's id MUST be unique within the run; a resume entry answers it by this id" (spec 1.1,
            # Interrupts and Resume).
            seen: set[str] = set()
            for item in interrupts:
                iid = item.get("id") if isinstance(item, dict) else None
                if isinstance(iid, str) and iid in seen:
                    out.append(Finding(Rule.R5, f"two interrupts of the run have the id {iid[:80]!r} (a resume entry "
                                                "answers one by its id)"))
                    break
                if isinstance(iid, str):
                    seen.add(iid)
        if kind in ("cancelled", "interrupt"):
            # A cancelled run asks for nothing; an interrupted one is closed, and the calls it left unanswered are
            # pending, derived from the stream: "On an interrupted run the pending calls are derived the same way; the
            # interrupt outcome does not carry them" (spec 1.1, Tool Calls, Frontend tools). An interrupt raised inside
            # a running tool (LangGraph's interrupt()) names no toolCallId; the run that resumes it answers the call.
            return out
        named: set[str] = set()
        for cid in pending if isinstance(pending, list) else ():
            if len(out) >= 20:
                return out  # (a list may hold ~a million ids: a finding each was hundreds of MB)
            if not isinstance(cid, str):
                continue  # the schema's R12 (it names no call)
            call = self.calls.get(cid)
            if call is None and self.ids_full:
                continue  # it may be a call forgotten (IDS_FULL)
            if call is None or call.answered or not call.owed:
                out.append(Finding(Rule.R5, f"pendingToolCallIds names {str(cid)[:80]!r}, " + (
                    "which never started" if call is None else "which has its result" if call.answered
                    else "which this run did not start (the list names the calls this run started)")))
            elif cid in named:
                out.append(Finding(Rule.R5, f"pendingToolCallIds names {cid[:80]!r} twice (the list names each call "
                                            "the run left unanswered once)"))
            elif isinstance(cid, str):
                named.add(cid)
        if named:
            # "when it does, the list MUST contain exactly the tool calls the run started and did not answer" (spec
            # 1.1, Tool Calls, Frontend tools).
            for cid, call in self.calls.items():
                if call.owed and call.ended and not call.answered and cid not in named:
                    out.append(Finding(Rule.R5, f"pendingToolCallIds leaves out tool call {cid[:80]!r}, which this run "
                                                "started and did not answer (the list must name all of them)"))
                    if len(out) >= 20:
                        return out
        for cid, call in self.calls.items():
            if (call.answered or not call.owed or not call.ended or cid in named
                    or call.name in self.ctx.offered_tools):
                # (A call still open at the end is the tool call span's R5. One pendingToolCallIds names is left for
                # the application: a call of a tool the input did not advertise "is not by itself a protocol
                # violation", spec 1.1, Tool Calls.)
                continue
            out.append(Finding(Rule.R5, f"tool call {cid[:80]!r} ({call.name[:60] or 'unnamed'}: a backend tool, not "
                                        "offered by the client) has no TOOL_CALL_RESULT before the run's end"))
            if len(out) >= 20:
                break
        return out


# What _apply says when a patch would grow the document past its limit, the run's patches past MAX_STATE_WORK, or a value
# is too deep to copy or compare
# (it stops before the operation that would).
TOO_BIG = "over the byte limit"
TOO_MUCH = "over the work limit"
TOO_DEEP = "too deep to copy or compare"
TOO_LONG = "over the operations limit"
_NOTHING = object()


def _touched(doc: Any, path: str, kind: str, jsonpointer: Any) -> tuple[Any, int, int]:
    """What an operation writing at (or removing) `path` takes out of `doc` (_NOTHING when none: an insert into an
    array, a new member, a missing place); what the member itself adds or drops besides its value (a new member's
    quoted key, colon and comma, an array item's comma); and how many array items it shifts."""
    if path == "":
        return doc, 0, 0
    try:
        parent, part = jsonpointer.JsonPointer(path).to_last(doc)
    except (jsonpointer.JsonPointerException, TypeError, KeyError, IndexError, ValueError, AttributeError,
            RecursionError):
        return _NOTHING, 0, 0  # the operation itself will say what is wrong with the path
    writes = kind != "remove"
    if isinstance(parent, dict) and isinstance(part, str):
        # A member is its quoted key and a colon, and a comma when it is not alone.
        member = len(json.dumps(part)) + 1
        if part in parent:
            return parent[part], 0 if writes else -(member + (len(parent) > 1)), 0
        return _NOTHING, member + bool(parent) if writes else 0, 0
    if isinstance(parent, list):
        at = part if isinstance(part, int) and 0 <= part <= len(parent) else len(parent)
        if kind == "replace" and at < len(parent):
            return parent[at], 0, 0
        if kind == "remove" and at < len(parent):
            return parent[at], -(len(parent) > 1), len(parent) - at - 1
        return _NOTHING, int(bool(parent)) if writes else 0, len(parent) - at if writes else 0
    return _NOTHING, 0, 0


def _json_text(v: Any) -> str | None:
    """`v` as compact JSON; None when it cannot be written (nested past the serializer's depth, not JSON)."""
    try:
        return json.dumps(v, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return None


def _json_size(v: Any) -> int:
    text = _json_text(v)
    return MAX_STATE_BYTES + 1 if text is None else len(text)


def _json_kind(v: Any) -> str:
    return ("null" if v is None else "boolean" if isinstance(v, bool) else "number" if isinstance(v, (int, float))
            else "string" if isinstance(v, str) else "array" if isinstance(v, list) else "value")


# The explicit continuations whose subagentRunId must agree with their opener's: (family, key field, opener).
_TEXT_ID = ("text", "messageId", "TEXT_MESSAGE_START")
_REASONING_ID = ("reasoning", "messageId", "REASONING_MESSAGE_START")
_CALL_ID = ("call", "toolCallId", "TOOL_CALL_START")
_CONTINUES: dict[str, tuple[str, str, str]] = {
    "TEXT_MESSAGE_CONTENT": _TEXT_ID, "TEXT_MESSAGE_END": _TEXT_ID,
    "REASONING_MESSAGE_CONTENT": _REASONING_ID, "REASONING_MESSAGE_END": _REASONING_ID,
    "TOOL_CALL_ARGS": _CALL_ID, "TOOL_CALL_END": _CALL_ID,
    "ACTIVITY_DELTA": ("activity", "messageId", "ACTIVITY_SNAPSHOT"),
}

_HANDLERS: dict[str, Callable[[AguiRunChecks, dict[str, Any], str], list[Finding]]] = {
    "RUN_STARTED": AguiRunChecks._run_started,
    "TEXT_MESSAGE_START": AguiRunChecks._message_start,
    "TEXT_MESSAGE_CONTENT": AguiRunChecks._message_content,
    "TEXT_MESSAGE_END": AguiRunChecks._message_end,
    "TEXT_MESSAGE_CHUNK": AguiRunChecks._chunk,
    "REASONING_MESSAGE_START": AguiRunChecks._message_start,
    "REASONING_MESSAGE_CONTENT": AguiRunChecks._message_content,
    "REASONING_MESSAGE_END": AguiRunChecks._message_end,
    "REASONING_MESSAGE_CHUNK": AguiRunChecks._chunk,
    "MESSAGES_SNAPSHOT": AguiRunChecks._messages_snapshot,
    "TOOL_CALL_START": AguiRunChecks._call_start,
    "TOOL_CALL_ARGS": AguiRunChecks._call_args,
    "TOOL_CALL_END": AguiRunChecks._call_end,
    "TOOL_CALL_CHUNK": AguiRunChecks._chunk,
    "TOOL_CALL_RESULT": AguiRunChecks._call_result,
    "STATE_SNAPSHOT": AguiRunChecks._state_snapshot,
    "STATE_DELTA": AguiRunChecks._state_delta,
    "RAW": AguiRunChecks._raw,
    # The names servers used before AG-UI 1.0 (ag-ui.yaml maps them still): advice, once per run.
    **dict.fromkeys(("THINKING_START", "THINKING_END", "THINKING_TEXT_MESSAGE_START", "THINKING_TEXT_MESSAGE_CONTENT",
                     "THINKING_TEXT_MESSAGE_END"), AguiRunChecks._pre_1_0),
    "ACTIVITY_SNAPSHOT": AguiRunChecks._activity_snapshot,
    "ACTIVITY_DELTA": AguiRunChecks._activity_delta,
    "SUBAGENT_STARTED": AguiRunChecks._subagent_started,
    "SUBAGENT_FINISHED": AguiRunChecks._subagent_ended,
    "SUBAGENT_ERROR": AguiRunChecks._subagent_ended,
}

AGUI = CheckSet(
    name="agui",
    fields=("timestamp", "messageId", "delta", "toolCallId", "toolCallName", "parentMessageId", "messages",
            "snapshot", "event", "outcome", "parentRunId", "input", "content", "patch", "replace", "subagentRunId",
            "role", "name", "parentSubagentRunId"),
    frame=agui_frame,
    start=AguiRunChecks,
    load=_schema,  # ag_ui.core's models: about a second of imports, which must not stall a chat in flight
)

# In the registry (harness/checksets.py) as this module is imported: at a profile's first look-up of `agui`.
CHECKS[AGUI.name] = AGUI
