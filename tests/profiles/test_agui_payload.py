"""AG-UI's payload rules (harness/payload_checks.py, the `agui` check set), each against a real loopback AG-UI server
built with the ag-ui-protocol encoder: one stream that breaks the rule, one that keeps it."""
from __future__ import annotations

import json

import pytest
from ag_ui.core import (
    RawEvent,
    RunAgentInput,
    RunFinishedEvent,
    RunStartedEvent,
    StateDeltaEvent,
    StateSnapshotEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
)

from harness.checker import ChatResult
from harness.client import Session
from harness.events import Outcome, Rule
from harness.flow import ChatOptions
from harness.profiles import Profile, load_profile
from harness.scenario import Expect, Scenario
from harness.sinks import Sink
from harness.targets import Target

from .servers import AguiSSEServer

AGUI = load_profile("ag-ui")
FAST = ChatOptions(settle=0.05)
TS = 1_700_000_000_000  # a timestamp on every event, as the SDK's examples send


def offering(*tools: str) -> Profile:
    """The ag-ui profile whose RunAgentInput offers these frontend tools."""
    data = AGUI.model_dump()
    data["request"] = {**data["request"], "tools": [{"name": t, "description": t} for t in tools]}
    return Profile.model_validate(data)


async def chat(url: str, profile: Profile = AGUI) -> ChatResult:
    target = Target(url=url, profile=profile, name="t")
    exp = Scenario(name="t", expect=Expect(deadline=10)).expectations(profile)
    session = Session(target, "u1", "t", Sink(), connect_timeout=5)
    try:
        return await session.chat("What is 6 * 7?", exp, FAST)
    finally:
        await session.close()


def run(*middle):
    """A script: RUN_STARTED, the events given (built with the run's input, or raw bytes), RUN_FINISHED."""
    def script(inp: RunAgentInput):
        yield RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS)
        for item in middle:
            yield item(inp) if callable(item) else item
        yield RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS)
    return script


def raw(obj: dict) -> bytes:
    return f"data: {json.dumps({'timestamp': TS, **obj})}\n\n".encode()


def call(cid="c1", name="calc", args=('{"x": ', "1}"), *, parent=None, end=True, result=True):
    events = [ToolCallStartEvent(tool_call_id=cid, tool_call_name=name, parent_message_id=parent, timestamp=TS)]
    events += [ToolCallArgsEvent(tool_call_id=cid, delta=a, timestamp=TS) for a in args]
    if end:
        events.append(ToolCallEndEvent(tool_call_id=cid, timestamp=TS))
    if result:
        events.append(ToolCallResultEvent(message_id=f"r-{cid}", tool_call_id=cid, content="1", timestamp=TS))
    return events


def text(mid="a1", *deltas):
    return [TextMessageStartEvent(message_id=mid, role="assistant", timestamp=TS),
            *(TextMessageContentEvent(message_id=mid, delta=d, timestamp=TS) for d in (deltas or ("hi",))),
            TextMessageEndEvent(message_id=mid, timestamp=TS)]


def content(mid: str, delta: str) -> bytes:  # the encoder's own models would not let some of these be built
    return raw({"type": "TEXT_MESSAGE_CONTENT", "messageId": mid, "delta": delta})


# name: (script, profile, rule expected or None when the stream keeps the rule, words of the reason)
CASES = {
    # a backend tool call owes its result; a frontend one does not
    "backend call without TOOL_CALL_RESULT": (run(*call(result=False)), AGUI, "R5", "has no TOOL_CALL_RESULT"),
    "backend call with its TOOL_CALL_RESULT": (run(*call()), AGUI, None, ""),
    "frontend call without TOOL_CALL_RESULT": (run(*call(name="confirm", result=False)), offering("confirm"), None, ""),
    "backend call paused by an interrupt": (
        lambda inp: [RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS), *call(result=False),
                     raw({"type": "RUN_FINISHED", "threadId": inp.thread_id, "runId": inp.run_id, "outcome": {
                         "type": "interrupt", "interrupts": [{"id": "i1", "reason": "approve", "toolCallId": "c1"}]}})],
        AGUI, None, ""),
    # results only for ended calls
    "TOOL_CALL_RESULT before TOOL_CALL_END": (
        run(*call(end=False, result=False), ToolCallResultEvent(message_id="r1", tool_call_id="c1", content="1", timestamp=TS),
            ToolCallEndEvent(tool_call_id="c1", timestamp=TS)), AGUI, "R5", "before its TOOL_CALL_END"),
    "TOOL_CALL_RESULT for a call that never started": (
        run(ToolCallResultEvent(message_id="r1", tool_call_id="nope", content="1", timestamp=TS)), AGUI, "R5",
        "'nope', which never started"),
    "two TOOL_CALL_RESULTs for one call": (
        run(*call(), ToolCallResultEvent(message_id="r2", tool_call_id="c1", content="1", timestamp=TS)), AGUI, "R5",
        "a second TOOL_CALL_RESULT"),
    # arguments as JSON at TOOL_CALL_END: advice only (test_tool_call_arguments_that_are_not_json_are_advice)
    "TOOL_CALL_ARGS in many pieces, valid JSON": (run(*call(args=("{", '"x"', ":", " [1, 2]", "}"))), AGUI, None, ""),
    "a call with no arguments at all": (run(*call(args=())), AGUI, None, ""),
    # empty deltas: the schema allows them ("providers emit empty deltas as keep-alives"): advice
    "empty TEXT_MESSAGE_CONTENT delta": (
        run(TextMessageStartEvent(message_id="a1", timestamp=TS), content("a1", ""),
            TextMessageEndEvent(message_id="a1", timestamp=TS)), AGUI, "advice R12", "empty delta"),
    # parent message ids: a message carrying only tool calls is never streamed as text (spec 1.1, Tool Calls): advice
    "parentMessageId naming no message": (run(*call(parent="ghost")), AGUI, "advice R5", "parentMessageId 'ghost'"),
    "parentMessageId naming a streamed message": (run(*text("a1"), *call(parent="a1")), AGUI, None, ""),
    "parentMessageId naming the user's message": (
        lambda inp: run(*call(parent=inp.messages[0].id))(inp), AGUI, None, ""),
    # ids: a closed message or call MAY be reopened (spec 1.1); opening one still open, or continuing one not open,
    # is what the streaming pattern forbids
    "a message reopened after it closed": (run(*text("a1", "Hel"), *text("a1", "lo")), AGUI, None, ""),
    "a tool call reopened after it ended, then answered": (
        run(*call(args=('{"x": 1}',), result=False), *call(args=())), AGUI, None, ""),
    "a reopened message, then content after its second end": (
        run(*text("a1"), *text("a1"), content("a1", "late")), AGUI, "R5", "continues text message 'a1', which is not open"),
    "a second TEXT_MESSAGE_START while the message is open": (
        run(TextMessageStartEvent(message_id="a1", timestamp=TS), TextMessageStartEvent(message_id="a1", timestamp=TS),
            content("a1", "x"), TextMessageEndEvent(message_id="a1", timestamp=TS),
            TextMessageEndEvent(message_id="a1", timestamp=TS)), AGUI, "R5", "opens text message 'a1' again while it is open"),
    "a second TOOL_CALL_START while the call is open": (
        run(*call(args=(), end=False, result=False), *call(args=(), result=False), *call(args=())[1:]), AGUI, "R5",
        "opens tool call 'c1' again while it is open"),
    "content for a message never opened": (run(content("ghost", "x")), AGUI, "R5", "'ghost', which is not open"),
    "TOOL_CALL_ARGS after the call ended, not reopened": (
        run(*call(result=False), ToolCallArgsEvent(tool_call_id="c1", delta="2", timestamp=TS),
            ToolCallResultEvent(message_id="r-c1", tool_call_id="c1", content="1", timestamp=TS)), AGUI, "R5",
        "TOOL_CALL_ARGS continues"),
    "two messages, two ids": (run(*text("a1"), *text("a2")), AGUI, None, ""),
    # state: RFC 6902 patches that apply to the current state
    "STATE_DELTA that applies": (
        run(StateSnapshotEvent(snapshot={"n": 1, "items": []}, timestamp=TS),
            StateDeltaEvent(delta=[{"op": "replace", "path": "/n", "value": 2},
                                   {"op": "add", "path": "/items/-", "value": "x"}], timestamp=TS),
            StateDeltaEvent(delta=[{"op": "test", "path": "/items/0", "value": "x"}], timestamp=TS)), AGUI, None, ""),
    "STATE_DELTA on a path that does not exist": (
        run(StateSnapshotEvent(snapshot={"n": 1}, timestamp=TS),
            StateDeltaEvent(delta=[{"op": "replace", "path": "/missing/deep", "value": 2}], timestamp=TS)),
        AGUI, "R12", "does not apply to the current state"),
    "STATE_DELTA whose test fails": (
        run(StateDeltaEvent(delta=[{"op": "add", "path": "/n", "value": 1}], timestamp=TS),
            StateDeltaEvent(delta=[{"op": "test", "path": "/n", "value": 2}], timestamp=TS)),
        AGUI, "R12", "does not apply"),
    "STATE_DELTA that is not JSON Patch": (
        run(raw({"type": "STATE_DELTA", "delta": [{"op": "frobnicate", "path": "/n"}]})), AGUI, "R12", "STATE_DELTA field"),
    # activities: deltas apply to their snapshot
    "ACTIVITY_DELTA that applies": (
        run(raw({"type": "ACTIVITY_SNAPSHOT", "messageId": "p1", "activityType": "PLAN", "content": {"steps": []}}),
            raw({"type": "ACTIVITY_DELTA", "messageId": "p1", "activityType": "PLAN",
                 "patch": [{"op": "add", "path": "/steps/-", "value": "search"}]})), AGUI, None, ""),
    "ACTIVITY_DELTA that does not apply": (
        run(raw({"type": "ACTIVITY_SNAPSHOT", "messageId": "p1", "activityType": "PLAN", "content": {"steps": []}}),
            raw({"type": "ACTIVITY_DELTA", "messageId": "p1", "activityType": "PLAN",
                 "patch": [{"op": "remove", "path": "/steps/3"}]})), AGUI, "R12", "does not apply to activity 'p1'"),
    "ACTIVITY_DELTA of no activity": (
        run(raw({"type": "ACTIVITY_DELTA", "messageId": "p9", "activityType": "PLAN", "patch": []})), AGUI, "R5",
        "which no ACTIVITY_SNAPSHOT started"),
    # pendingToolCallIds agree with the stream
    "pendingToolCallIds naming the call left pending": (
        lambda inp: [RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS),
                     *call(name="confirm", result=False),
                     raw({"type": "RUN_FINISHED", "threadId": inp.thread_id, "runId": inp.run_id,
                          "outcome": {"type": "success", "pendingToolCallIds": ["c1"]}})], offering("confirm"), None, ""),
    "pendingToolCallIds naming a call that never started": (
        lambda inp: [RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS),
                     raw({"type": "RUN_FINISHED", "threadId": inp.thread_id, "runId": inp.run_id,
                          "outcome": {"type": "success", "pendingToolCallIds": ["ghost"]}})], AGUI, "R5",
        "pendingToolCallIds names 'ghost', which never started"),
    "pendingToolCallIds leaving out a call the run left unanswered": (
        lambda inp: [RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS),
                     *call(name="confirm", result=False), *call(cid="c2", name="confirm", result=False),
                     raw({"type": "RUN_FINISHED", "threadId": inp.thread_id, "runId": inp.run_id,
                          "outcome": {"type": "success", "pendingToolCallIds": ["c1"]}})], offering("confirm"), "R5",
        "pendingToolCallIds leaves out tool call 'c2'"),
    "pendingToolCallIds naming one call twice": (
        lambda inp: [RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS),
                     *call(name="confirm", result=False),
                     raw({"type": "RUN_FINISHED", "threadId": inp.thread_id, "runId": inp.run_id,
                          "outcome": {"type": "success", "pendingToolCallIds": ["c1", "c1"]}})], offering("confirm"),
        "R5", "pendingToolCallIds names 'c1' twice"),
    "two interrupts of a run under one id": (
        lambda inp: [RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS),
                     raw({"type": "RUN_FINISHED", "threadId": inp.thread_id, "runId": inp.run_id, "outcome": {
                         "type": "interrupt", "interrupts": [{"id": "i1", "reason": "approve"},
                                                            {"id": "i1", "reason": "confirm"}]}})], AGUI, "R5",
        "two interrupts of the run have the id 'i1'"),
    "pendingToolCallIds on an outcome other than success": (
        lambda inp: [RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS),
                     *call(name="confirm", result=False),
                     raw({"type": "RUN_FINISHED", "threadId": inp.thread_id, "runId": inp.run_id,
                          "outcome": {"type": "cancelled", "pendingToolCallIds": ["c1"]}})], offering("confirm"), "R5",
        "pendingToolCallIds on a 'cancelled' outcome: only a success outcome leaves tool calls to the application"),
    # the official schema
    "TOOL_CALL_START without toolCallName": (
        run(raw({"type": "TOOL_CALL_START", "toolCallId": "c1"}), raw({"type": "TOOL_CALL_END", "toolCallId": "c1"}),
            raw({"type": "TOOL_CALL_RESULT", "messageId": "r", "toolCallId": "c1", "content": "x"})),
        AGUI, "R12", "TOOL_CALL_START field 'toolCallName': Field required"),
    "TEXT_MESSAGE_CONTENT with a numeric delta": (
        run(TextMessageStartEvent(message_id="a1", timestamp=TS), raw({"type": "TEXT_MESSAGE_CONTENT", "messageId": "a1",
                                                                        "delta": 5}),
            TextMessageEndEvent(message_id="a1", timestamp=TS)), AGUI, "R12", "field 'delta'"),
    "a fractional timestamp": (run(raw({"type": "CUSTOM", "name": "n", "value": 1, "timestamp": 1.5})), AGUI, "R12",
                               "CUSTOM field 'timestamp'"),
    # an event that breaks the schema is its R12 alone: the run's checks do not read it as if it said something else
    # (an absent snapshot as a null state, an absent call id as '', content that is not an object as no snapshot)
    "STATE_SNAPSHOT without snapshot, then a STATE_DELTA": (
        run(raw({"type": "STATE_SNAPSHOT"}), StateDeltaEvent(delta=[{"op": "add", "path": "/n", "value": 1}],
                                                             timestamp=TS)),
        AGUI, "R12", "STATE_SNAPSHOT field 'snapshot': Field required"),
    "ACTIVITY_SNAPSHOT whose content is not an object, then its ACTIVITY_DELTA": (
        run(raw({"type": "ACTIVITY_SNAPSHOT", "messageId": "p1", "activityType": "PLAN", "content": ["search"]}),
            raw({"type": "ACTIVITY_DELTA", "messageId": "p1", "activityType": "PLAN",
                 "patch": [{"op": "add", "path": "/steps", "value": []}]})), AGUI, "R12", "field 'content'"),
    "TOOL_CALL_RESULT without toolCallId": (
        run(raw({"type": "TOOL_CALL_RESULT", "messageId": "r", "content": "x"})), AGUI, "R12",
        "TOOL_CALL_RESULT field 'toolCallId': Field required"),
    "TOOL_CALL_RESULT with a numeric toolCallId": (
        run(raw({"type": "TOOL_CALL_RESULT", "messageId": "r", "toolCallId": 7, "content": "x"})), AGUI, "R12",
        "TOOL_CALL_RESULT field 'toolCallId'"),
    "pendingToolCallIds holding a number": (
        lambda inp: [RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS),
                     raw({"type": "RUN_FINISHED", "threadId": inp.thread_id, "runId": inp.run_id,
                          "outcome": {"type": "success", "pendingToolCallIds": [7]}})], AGUI, "R12",
        "field 'outcome.success.pendingToolCallIds.0'"),
}


async def judged_as(script, profile: Profile, rule: str | None, words: str) -> None:
    """One chat against a server playing `script`: it passes with no warning (rule None), passes with one warning of
    that rule ("advice R12"), or fails on `rule` alone with `words` in its reason."""
    async with AguiSSEServer(script) as server:
        result = await chat(server.url, profile)
    if rule is None:
        assert result.outcome is Outcome.PASSED, result.violations
        assert result.warnings == [], result.warnings
    elif rule.startswith("advice "):  # a warning only: the chat passes
        assert result.outcome is Outcome.PASSED, result.violations
        assert [w.rule for w in result.warnings] == [Rule(rule.split()[1])], result.warnings
        assert words in result.warnings[0].reason, result.warnings[0].reason
    else:
        assert result.outcome is Outcome.FAILED
        assert [v.rule for v in result.violations] == [Rule(rule)], result.violations
        assert words in result.violations[0].reason, result.violations[0].reason


@pytest.mark.parametrize("case", list(CASES))
async def test_payload_rule(case):
    await judged_as(*CASES[case])


# -- advice: warnings show, the chat passes --

async def test_events_without_timestamps_pass_with_no_advice():
    """BaseEvent's `timestamp` is optional with no SHOULD (LangGraph's server sends none): nothing to say."""
    def script(inp: RunAgentInput):
        yield RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id)
        yield from (TextMessageStartEvent(message_id="a1"), TextMessageContentEvent(message_id="a1", delta="x"),
                    TextMessageEndEvent(message_id="a1"))
        yield RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id)

    async with AguiSSEServer(script) as server:
        result = await chat(server.url)
    assert result.outcome is Outcome.PASSED and result.violations == [] and result.warnings == []


@pytest.mark.parametrize("args", [('{"x": ', "1"), ("not json",)])
async def test_tool_call_arguments_that_are_not_json_are_advice(args):
    """Spec 1.1, Tool Calls: "closing establishes completeness, not validity" — text that does not parse is the
    application's decision, not a protocol violation. A warning; the chat passes."""
    async with AguiSSEServer(run(*call(args=args))) as server:
        result = await chat(server.url)
    assert result.outcome is Outcome.PASSED and result.violations == [], result.violations
    assert [w.rule for w in result.warnings] == [Rule.R12], result.warnings
    assert "'c1': the TOOL_CALL_ARGS deltas do not concatenate to valid JSON" in result.warnings[0].reason
    assert result.to_dict()["warnings"][0]["rule"] == "R12"


async def test_raw_wrapping_a_typed_event_is_advice():
    script = run(RawEvent(event={"type": "TEXT_MESSAGE_START", "messageId": "x"}, source="me", timestamp=TS),
                 RawEvent(event={"provider": "thing"}, timestamp=TS))
    async with AguiSSEServer(script) as server:
        result = await chat(server.url)
    assert result.outcome is Outcome.PASSED and result.violations == []
    assert [w.reason.split(" (")[0] for w in result.warnings] == ["RAW wraps a typed AG-UI event"]


async def test_a_pre_1_0_thinking_event_is_advice_not_a_schema_failure():
    script = run(raw({"type": "THINKING_START"}), raw({"type": "THINKING_END"}))
    async with AguiSSEServer(script) as server:
        result = await chat(server.url)
    assert result.outcome is Outcome.PASSED, result.violations
    assert result.warnings and "not an AG-UI 1.0 event" in result.warnings[0].reason


async def test_events_kept_for_reports_hold_no_payload():
    async with AguiSSEServer(run(StateSnapshotEvent(snapshot={"big": "x" * 10_000}, timestamp=TS), *call())) as server:
        result = await chat(server.url)
    assert result.outcome is Outcome.PASSED, result.violations
    assert all(e.payload is None for e in result.events)


async def test_state_over_the_bound_is_not_tracked_and_says_so():
    from harness.payload_checks import MAX_STATE_BYTES

    script = run(StateSnapshotEvent(snapshot={"big": "x" * (MAX_STATE_BYTES + 1)}, timestamp=TS),
                 StateDeltaEvent(delta=[{"op": "remove", "path": "/nothing"}], timestamp=TS))
    async with AguiSSEServer(script) as server:
        result = await chat(server.url)
    assert result.outcome is Outcome.PASSED, result.violations
    assert any("state over" in w.reason for w in result.warnings)


def test_the_payload_checks_are_pure():
    import ast
    from pathlib import Path

    import harness.payload_checks as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
    assert not imported & {"asyncio", "websockets", "httpx", "gevent", "socket", "threading", "argparse", "locust"}


async def test_advice_shows_in_the_console_report_and_the_run_still_passes():
    import io

    from rich.console import Console

    from harness.report import print_summary
    from harness.runner import run_scenario

    script = run(RawEvent(event={"type": "RUN_FINISHED", "threadId": "t", "runId": "r"}, timestamp=TS))
    async with AguiSSEServer(script) as server:
        run_ = await run_scenario(Scenario(name="advice", users=2, chats_per_user=1), Target(url=server.url, profile=AGUI,
                                                                                                name="t"))
    out = io.StringIO()
    print_summary(Console(file=out, width=200, color_system=None), [run_])
    assert run_.passed
    assert "advice in 2 chat(s) (warnings, not failures)" in out.getvalue() and "RAW wraps a typed" in out.getvalue()


def test_a_flooding_server_keeps_the_checks_bounded_in_bytes():
    from harness.checker import ChatTracker
    from harness.payload_checks import MAX_ARGS_BYTES, MAX_ID_CHARS

    tracker = ChatTracker("c", Scenario(name="t").expectations(AGUI), 0.0, run_id="r", message_id="m")
    feed = [{"type": "RUN_STARTED", "threadId": "t", "runId": "r", "timestamp": TS}]
    for i in range(2_000):  # more calls than remembered, each with a huge id and huge arguments, none ended
        cid = f"{i}-" + "x" * 5000
        feed += [{"type": "TOOL_CALL_START", "toolCallId": cid, "toolCallName": "n" * 5000, "timestamp": TS},
                 {"type": "TOOL_CALL_ARGS", "toolCallId": cid, "delta": "{" * 4000, "timestamp": TS}]
    for frame in feed:
        tracker.feed(AGUI.decode_obj(frame, 0.0))
    [checks] = tracker.run_checks.parts  # type: ignore[union-attr]
    assert deep_size(checks) <= ID_BOUND + ID_SLACK + MAX_ARGS_BYTES * 2 and checks.args_bytes <= MAX_ARGS_BYTES
    assert all(len(k) <= MAX_ID_CHARS and len(c.name) <= MAX_ID_CHARS for k, c in checks.calls.items())
    assert sum(len(a) for c in checks.calls.values() for a in c.args) <= MAX_ARGS_BYTES
    assert any("not checked as JSON" in w.reason for w in tracker.warnings)
    assert all(e.payload is None for e in tracker.events)


# What a run's remembered ids may cost in all (docs/profiles.md: 256 KiB), and the checks' fixed part besides them
# (their empty containers, the request's context).
ID_BOUND = 256 * 1024
ID_SLACK = 16 * 1024


def deep_size(root: object) -> int:
    """The bytes of every object `root` holds, each counted once (a dict's keys too, which the garbage collector's
    traversal skips for string keys); classes, modules and functions are shared, not counted."""
    import gc
    import sys
    import types

    seen: set[int] = set()
    todo = [root]
    n = 0
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)):
            continue
        seen.add(id(obj))
        n += sys.getsizeof(obj)
        todo.extend([*obj.keys(), *obj.values()] if isinstance(obj, dict) else gc.get_referents(obj))
    return n


def _long(i: int, ch: str = "x") -> str:
    return f"{i:06d}" + ch * 994  # 1,000 characters, each one distinct


# Events that each make the run remember an id of its own (1,000 characters), by the kind of id.
ID_FLOODS = {
    "message": lambda i: [{"type": "TEXT_MESSAGE_START", "messageId": _long(i), "role": "assistant"}],
    "message-ended": lambda i: [{"type": "TEXT_MESSAGE_START", "messageId": _long(i), "role": "assistant"},
                                {"type": "TEXT_MESSAGE_END", "messageId": _long(i)}],
    "tool-call": lambda i: [{"type": "TOOL_CALL_START", "toolCallId": _long(i), "toolCallName": _long(i, "n")},
                            {"type": "TOOL_CALL_END", "toolCallId": _long(i)}],
    "subagent": lambda i: [{"type": "SUBAGENT_STARTED", "subagentRunId": _long(i), "name": "n"},
                           {"type": "SUBAGENT_FINISHED", "subagentRunId": _long(i)}],
    "attributed": lambda i: [{"type": "STEP_STARTED", "stepName": "s", "subagentRunId": _long(i)}],
    "owned-message": lambda i: [{"type": "TEXT_MESSAGE_START", "messageId": _long(i), "role": "assistant",
                                 "subagentRunId": _long(i, "s")}],
    "activity": lambda i: [{"type": "ACTIVITY_SNAPSHOT", "messageId": _long(i), "activityType": "a", "content": {}}],
    "chunk-lane": lambda i: [{"type": "TEXT_MESSAGE_CHUNK", "messageId": _long(i), "delta": "x",
                              "subagentRunId": _long(i, "s"), "name": _long(i, "n")}],
    "snapshot": lambda i: [{"type": "MESSAGES_SNAPSHOT", "messages": [
        {"id": _long(i), "role": "assistant", "toolCalls": [
            {"id": _long(i, "c"), "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}],
}


@pytest.mark.parametrize("kind", list(ID_FLOODS))
def test_the_ids_a_run_remembers_are_bounded_in_bytes_and_said_once(kind):
    """3,000 distinct 1,000-character ids of one kind: the run's checks keep 256 KiB of ids at most (they kept 10,000
    of each kind, counted not weighed: 12 MiB for TEXT_MESSAGE_START, 14 MiB for TOOL_CALL_START), and say once
    which checks stop."""
    from harness.checker import ChatTracker

    tracker = ChatTracker("c", Scenario(name="t").expectations(AGUI), 0.0, run_id="r", message_id="m")
    tracker.feed(AGUI.decode_obj({"type": "RUN_STARTED", "threadId": "t", "runId": "r", "timestamp": TS}, 0.0))
    for i in range(3_000):
        for frame in ID_FLOODS[kind](i):
            tracker.feed(AGUI.decode_obj({**frame, "timestamp": TS}, 0.0))
    [checks] = tracker.run_checks.parts  # type: ignore[union-attr]
    assert deep_size(checks) <= ID_BOUND + ID_SLACK
    said = [w.reason for w in tracker.warnings if "ids passed" in w.reason]
    assert len(said) == 1 and "256 KiB" in said[0] and "a call that never started" in said[0], tracker.warnings


def test_a_judged_chat_keeps_no_payload_checks():
    """A connection remembers its 64 latest judged chats (late events, R4): their checks (ids, state) are done once the
    chat is judged, and a run followed by a further one on its stream hands them over."""
    from harness.checker import ChatTracker, judge_followups

    exp = Scenario(name="t").expectations(AGUI)
    tracker = ChatTracker("c", exp, 0.0, thread_id="t", run_id="r", message_id="m")
    for frame in ({"type": "RUN_STARTED", "threadId": "t", "runId": "r"},
                  {"type": "TEXT_MESSAGE_START", "messageId": _long(1), "role": "assistant"},
                  {"type": "TEXT_MESSAGE_END", "messageId": _long(1)},
                  {"type": "RUN_FINISHED", "threadId": "t", "runId": "r"}):
        tracker.feed(AGUI.decode_obj({**frame, "timestamp": TS}, 0.0))
    further = tracker.followup("r2")
    assert tracker.run_checks is None and further.run_checks is not None
    judge_followups(tracker, 1.0)
    tracker.finish(1.0)
    assert tracker.judged and tracker.run_checks is None and further.run_checks is None


def _state_tracker(snapshot: dict):
    from harness.checker import ChatTracker

    tracker = ChatTracker("c", Scenario(name="t").expectations(AGUI), 0.0, run_id="r", message_id="m")
    for frame in ({"type": "RUN_STARTED", "threadId": "t", "runId": "r", "timestamp": TS},
                  {"type": "STATE_SNAPSHOT", "snapshot": snapshot, "timestamp": TS}):
        tracker.feed(AGUI.decode_obj(frame, 0.0))
    [checks] = tracker.run_checks.parts  # type: ignore[union-attr]
    return tracker, checks


def test_small_deltas_on_a_large_state_are_applied_in_place_and_its_size_kept_exactly():
    """Thousands of small patches on a state near the bound: each costs what it touches, not the state's size (a
    copy and a serialization of the whole state per delta held a client's loop for a minute), and the state and its
    size stay exact."""
    tracker, checks = _state_tracker({"counter": 0, "names": [], **{f"k{i}": "v" * 8 for i in range(40_000)}})
    for i in range(1, 3001):
        ops = [{"op": "replace", "path": "/counter", "value": i}, {"op": "add", "path": "/names/-", "value": f"n{i}"},
               {"op": "add", "path": f"/new{i}", "value": {"a": [1, 2]}}, {"op": "remove", "path": f"/k{i}"}]
        tracker.feed(AGUI.decode_obj({"type": "STATE_DELTA", "delta": ops, "timestamp": TS}, 0.0))
    assert checks.state_tracked and checks.state["counter"] == 3000 and len(checks.state["names"]) == 3000
    assert checks.state_size == len(json.dumps(checks.state, separators=(",", ":")))
    assert checks.state_work < 8_000_000  # what the patches touched and their ops, not 3,000 times the 0.8 MB state
    assert not tracker.violations and not [w for w in tracker.warnings if "state" in w.reason]
    bad = {"type": "STATE_DELTA", "delta": [{"op": "test", "path": "/counter", "value": -1}], "timestamp": TS}
    tracker.feed(AGUI.decode_obj(bad, 0.0))
    assert [v.rule for v in tracker.violations] == ["R12"] and "does not apply" in tracker.violations[0].reason


def test_patches_that_copy_large_parts_of_the_state_stop_at_the_work_bound():
    """A 100-byte patch copying a 400 kB subtree (and removing the copy) is 800 kB of work: past MAX_STATE_WORK in
    all, the state is no longer followed, and said once."""
    from harness.payload_checks import MAX_STATE_WORK

    tracker, checks = _state_tracker({"big": {f"k{i}": "v" * 30 for i in range(10_000)}})
    ops = [{"op": "copy", "from": "/big", "path": "/tmp"}, {"op": "remove", "path": "/tmp"}]
    for _ in range(200):
        tracker.feed(AGUI.decode_obj({"type": "STATE_DELTA", "delta": ops, "timestamp": TS}, 0.0))
    assert not checks.state_tracked and checks.state_work <= MAX_STATE_WORK + 2 * (1 << 20)
    said = [w.reason for w in tracker.warnings if "weighed over" in w.reason]
    assert len(said) == 1 and not tracker.violations


def test_a_value_too_deep_to_measure_ends_state_tracking_rather_than_lose_the_size():
    """Moves nest a value ~1,200 deep (too deep to serialize); removing it must not take an unknown size off the
    kept one (it took MAX_STATE_BYTES off, so the real state grew 30 times past the bound unnoticed)."""
    tracker, checks = _state_tracker({})
    ops = [{"op": "add", "path": "/d", "value": {}}]
    for _ in range(1200):
        ops += [{"op": "add", "path": "/x", "value": {}}, {"op": "move", "from": "/d", "path": "/x/d"},
                {"op": "move", "from": "/x", "path": "/d"}]
    for delta in (ops, [{"op": "remove", "path": "/d"}, {"op": "add", "path": "/" + "k" * 900_000, "value": 0}]):
        tracker.feed(AGUI.decode_obj({"type": "STATE_DELTA", "delta": delta, "timestamp": TS}, 0.0))
    assert not checks.state_tracked and checks.state is None
    assert any("state over" in w.reason for w in tracker.warnings)


def test_inserts_at_the_head_of_a_long_array_are_charged_the_items_they_shift():
    """An insert or removal at the front of a long array moves every item after it: 20,000 of them on a 500,000-item
    array were seconds of CPU charged 20 kB of work. They are charged the items shifted, and stop at the bound."""
    from harness.payload_checks import MAX_STATE_WORK

    tracker, checks = _state_tracker({"a": [0] * 500_000})
    ops = [{"op": "add", "path": "/a/0", "value": 0}, {"op": "remove", "path": "/a/0"}] * 1_000
    for _ in range(10):  # (patches within MAX_PATCH_OPS: the run's work bound stops them, not their length)
        tracker.feed(AGUI.decode_obj({"type": "STATE_DELTA", "delta": ops, "timestamp": TS}, 0.0))
    assert not checks.state_tracked and MAX_STATE_WORK < checks.state_work < MAX_STATE_WORK + 8 * 500_001 + 64
    assert any("weighed over" in w.reason for w in tracker.warnings)


def test_a_move_whose_target_shifts_is_counted_with_its_member_name():
    """The library takes a move's value out before it resolves the target, so the target is not the one the
    document shows: a 2 MiB member name landing in a shifted array slot went uncounted (the real state grew without
    bound). The name is counted whatever the target turns out to be."""
    tracker, checks = _state_tracker({"a": [0, 0, {}]})
    ops = [{"op": "move", "from": "/a/0", "path": "/a/1/" + "k" * (2 << 20)}]
    tracker.feed(AGUI.decode_obj({"type": "STATE_DELTA", "delta": ops, "timestamp": TS}, 0.0))
    assert not checks.state_tracked and any("state over" in w.reason for w in tracker.warnings)


def test_a_new_snapshot_of_a_known_activity_is_held_to_the_bound():
    tracker, checks = _state_tracker({})
    for i in range(3):
        tracker.feed(AGUI.decode_obj({"type": "ACTIVITY_SNAPSHOT", "messageId": f"a{i}", "activityType": "x",
                                      "content": {"n": 1}, "timestamp": TS}, 0.0))
    for i in range(3):  # each new snapshot ~0.5 MiB: the second one is past the bound for all of them together
        tracker.feed(AGUI.decode_obj({"type": "ACTIVITY_SNAPSHOT", "messageId": f"a{i}", "activityType": "x",
                                      "content": {"big": "x" * (1 << 19)}, "timestamp": TS}, 0.0))
    assert checks.activity_bytes <= (1 << 20) and len(checks.activities) < 3
    assert any("activities over" in w.reason for w in tracker.warnings)


def test_values_of_many_small_nodes_are_charged_per_node():
    """A `test` of a value of 300,000 empty lists is 0.9 MB but ~0.4 s to compare: charged per node, a run reaches
    the work bound within a few such patches, not after 30."""
    value = [[] for _ in range(300_000)]
    tracker, checks = _state_tracker({"v": value})
    frames = 0
    while checks.state_tracked and frames < 10:
        frames += 1
        tracker.feed(AGUI.decode_obj({"type": "STATE_DELTA", "timestamp": TS,
                                      "delta": [{"op": "test", "path": "/v", "value": value}]}, 0.0))
    assert not checks.state_tracked and frames <= 4
    assert any("weighed over" in w.reason for w in tracker.warnings)


def test_a_parked_chat_is_weighed_with_the_ids_its_checks_hold():
    """The proxy parks a chat cut mid-run for its user's resume, within 32 MiB in all (`check` alike): weighed by its
    kept events alone (16 KiB at most in the proxy), a chat holding 256 KiB of ids weighed almost nothing, and 10,000
    parked chats could hold gigabytes."""
    from harness.flow import ParkedChats
    from monitors.proxy import LiveTracker

    tracker = LiveTracker("c", Scenario(name="t").expectations(AGUI), 0.0, thread_id="t", run_id="r", message_id="m")
    tracker.feed(AGUI.decode_obj({"type": "RUN_STARTED", "threadId": "t", "runId": "r", "timestamp": TS}, 0.0))
    for i in range(3_000):
        tracker.feed(AGUI.decode_obj({"type": "TEXT_MESSAGE_START", "messageId": _long(i), "role": "assistant",
                                      "timestamp": TS}, 0.0))
    assert tracker.kept_bytes < 64 * 1024
    parked, _ = ParkedChats(10, 10, 64 * 1024).park("u", tracker)
    assert not parked
    room = ParkedChats(10, 10, 1024 * 1024)
    assert room.park("u", tracker) == (True, None) and room.nbytes == tracker.held_bytes > ID_BOUND // 2
    assert room.take("u", "r") is tracker and room.nbytes == 0


async def test_an_event_after_the_terminal_one_is_r4_alone_not_judged_by_the_runs_checks():
    """The run's payload checks end with its terminal event (their end-of-run findings are said there): an event after
    it is R4 (docs/protocol.md) and nothing more, even one those checks would speak of mid-run (a tool call naming an
    assistant message no event showed: advice before RUN_FINISHED)."""
    def script(inp: RunAgentInput):
        yield RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS)
        yield from text("a1")
        yield RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS)
        yield ToolCallStartEvent(tool_call_id="late", tool_call_name="calc", parent_message_id="nowhere", timestamp=TS)

    async with AguiSSEServer(script) as server:
        result = await chat(server.url)
    assert result.outcome is Outcome.FAILED
    assert [v.rule for v in result.violations] == [Rule.R4], result.violations
    assert result.warnings == [], result.warnings


async def test_a_second_terminal_event_is_kept_without_its_payload():
    """Events kept for reports hold no payload (bounded memory); the terminal one is read at its end. A second
    terminal event (R3) is read by no end: kept without its payload too."""
    def script(inp: RunAgentInput):
        yield from run(*text("a1"))(inp)
        yield RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS, result={"big": "x" * 1000})

    async with AguiSSEServer(script) as server:
        result = await chat(server.url)
    assert [v.rule for v in result.violations] == [Rule.R3], result.violations
    assert len(result.events) == 6 and all(e.payload is None for e in result.events)


async def test_a_patch_on_a_state_too_deep_to_copy_is_advice_not_a_violation():
    """Moves nest the state 600 deep, which JSON can write; copying or comparing that value goes past the
    interpreter's recursion limit. A valid patch is then not followable, which is no fault of the server: advice, the
    chat passes (it was an R12 "does not apply ... maximum recursion depth exceeded")."""
    nest = [{"op": "add", "path": "/d", "value": {}}]
    for _ in range(600):
        nest += [{"op": "add", "path": "/x", "value": {}}, {"op": "move", "from": "/d", "path": "/x/d"},
                 {"op": "move", "from": "/x", "path": "/d"}]
    for deep in ([{"op": "copy", "from": "/d", "path": "/e"}],
                 [{"op": "test", "path": "/d", "value": json.loads('{"d":' * 600 + "{}" + "}" * 600)}]):
        await judged_as(run(raw({"type": "STATE_DELTA", "delta": nest}), raw({"type": "STATE_DELTA", "delta": deep})),
                        AGUI, "advice R12", "nested too deeply to follow")
