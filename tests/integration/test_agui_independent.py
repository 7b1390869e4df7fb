"""AG-UI servers written the way teams write them: the official `ag-ui-protocol` package's event models and its
`EventEncoder`, a Starlette app under uvicorn on a loopback socket, the request read with the package's own
`RunAgentInput` (so chatprobe's requests are judged by the official schema too). Every event the conforming server
sends is built from an `ag_ui.core` model; the faulty chats write the dicts a careless server writes.

The chat's message picks its run: `#text` (two text messages in a step, timestamps and `rawEvent`), `#chunks`
(`TEXT_MESSAGE_CHUNK`, `TOOL_CALL_CHUNK`, `REASONING_MESSAGE_CHUNK`), `#tools` (a call attached to a text message), `#parallel`
(two calls whose arguments interleave), `#state` (`STATE_SNAPSHOT`, JSON Patch deltas, `MESSAGES_SNAPSHOT`),
`#reasoning`, `#raw` (`RAW`, `CUSTOM`, activity), `#error` (`RUN_ERROR`), `#fault=NAME` (one broken rule).
The URL's last part picks the wire: `plain` (the encoder's output as is), `crlf` (CRLF line ends, comments,
`id:`/`event:`/`retry:` lines, a keep-alive comment before each event), `gzip` / `deflate` (encoded when the client
asks, flushed per event), `split` / `gzip-split` (a chunk every 5 bytes: events, UTF-8 and gzip blocks cut
anywhere), `gzip-no-trailer` (never finished), `ws` (the same events as WebSocket text frames); `/slashed/` is an
endpoint mounted with a trailing slash. uvicorn sends every body chunked.

Each run is recorded and `chatprobe check` of the recording must give the same verdicts; every conforming chat
passes with no violation or warning, every faulty chat fails with the one rule it breaks.
"""
from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from ag_ui.core import (
    ActivityDeltaEvent,
    ActivitySnapshotEvent,
    AssistantMessage,
    BaseEvent,
    CustomEvent,
    Event,
    FunctionCall,
    Interrupt,
    MessagesSnapshotEvent,
    RawEvent,
    ReasoningEncryptedValueEvent,
    ReasoningEndEvent,
    ReasoningMessageChunkEvent,
    ReasoningMessageContentEvent,
    ReasoningMessageEndEvent,
    ReasoningMessageStartEvent,
    ReasoningStartEvent,
    RunAgentInput,
    RunErrorEvent,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    RunFinishedInterruptOutcome,
    RunFinishedSuccessOutcome,
    RunStartedEvent,
    StateDeltaEvent,
    StateSnapshotEvent,
    StepFinishedEvent,
    StepStartedEvent,
    SubagentFinishedEvent,
    SubagentFinishedSuccessOutcome,
    SubagentStartedEvent,
    TextMessageChunkEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    TokenUsage,
    ToolCall,
    ToolCallArgsEvent,
    ToolCallChunkEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
    ToolMessage,
)
from ag_ui.encoder import EventEncoder
from pydantic import TypeAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from harness.cli import main

from .asgi import uvicorn_on_loopback

pytestmark = pytest.mark.timeout(90)

TS = 1_764_800_000_000  # a millisecond timestamp


def said(message_id: str, text: str) -> list[BaseEvent]:
    """An assistant's message of one delta: its start, content and end."""
    return [TextMessageStartEvent(message_id=message_id, role="assistant"),
            TextMessageContentEvent(message_id=message_id, delta=text), TextMessageEndEvent(message_id=message_id)]


# -- the runs -------------------------------------------------------------------------------------------------------

def conforming(inp: RunAgentInput, text: str, parent: str | None = None) -> list[BaseEvent]:
    """The run answering `inp`; `parent`: the thread's previous run, which a continued turn names as its parentRunId
    and whose input it echoes (the conversation so far)."""
    t, r = inp.thread_id, inp.run_id
    start = RunStartedEvent(thread_id=t, run_id=r, timestamp=TS, parent_run_id=parent, input=inp if parent else None)
    end = RunFinishedEvent(thread_id=t, run_id=r, timestamp=TS + 9, result={"ok": True})
    if "#text" in text:
        body: list[BaseEvent] = [
            StepStartedEvent(step_name="answer"),
            TextMessageStartEvent(message_id="m1", role="assistant", timestamp=TS + 1),
            TextMessageContentEvent(message_id="m1", delta="Hello ", raw_event={"provider": "x", "n": 1}),
            TextMessageContentEvent(message_id="m1", delta="there."),
            TextMessageEndEvent(message_id="m1"),
            TextMessageStartEvent(message_id="m2", role="assistant"),
            TextMessageContentEvent(message_id="m2", delta="Anything else?"),
            TextMessageEndEvent(message_id="m2", timestamp=TS + 2),
            StepFinishedEvent(step_name="answer"),
        ]
    elif "#chunks" in text:
        body = [
            ReasoningMessageChunkEvent(message_id="r1", delta="Thinking…"),
            ReasoningMessageChunkEvent(delta=" done."),
            ToolCallChunkEvent(tool_call_id="c1", tool_call_name="add", parent_message_id="m1", delta='{"a": 2, '),
            ToolCallChunkEvent(delta='"b": 3}'),
            TextMessageChunkEvent(message_id="m1", role="assistant", delta="Calling add."),
            ToolCallResultEvent(message_id="t1", tool_call_id="c1", content="5", role="tool"),
            TextMessageChunkEvent(message_id="m2", role="assistant", delta="It is "),
            TextMessageChunkEvent(delta="5."),
        ]
    elif "#tools" in text:
        body = [
            *said("m1", "Let me check."),
            ToolCallStartEvent(tool_call_id="c1", tool_call_name="weather", parent_message_id="m1"),
            ToolCallArgsEvent(tool_call_id="c1", delta='{"city": '),
            ToolCallArgsEvent(tool_call_id="c1", delta='"Paris"}'),
            ToolCallEndEvent(tool_call_id="c1"),
            ToolCallResultEvent(message_id="t1", tool_call_id="c1", content='{"temp": 21}'),
            *said("m2", "21 °C in Paris."),
        ]
    elif "#parallel" in text:
        body = [
            ToolCallStartEvent(tool_call_id="c1", tool_call_name="weather"),
            ToolCallStartEvent(tool_call_id="c2", tool_call_name="time"),
            ToolCallArgsEvent(tool_call_id="c2", delta='{"tz": "UTC"}'),
            ToolCallArgsEvent(tool_call_id="c1", delta='{"city": "Oslo"}'),
            ToolCallEndEvent(tool_call_id="c2"),
            ToolCallEndEvent(tool_call_id="c1"),
            ToolCallResultEvent(message_id="t2", tool_call_id="c2", content="12:00"),
            ToolCallResultEvent(message_id="t1", tool_call_id="c1", content="3 °C"),
            *said("m1", "Cold, noon."),
        ]
    elif "#state" in text:
        msgs = [*inp.messages,
                AssistantMessage(id="m1", content=None, tool_calls=[ToolCall(
                    id="c1", function=FunctionCall(name="add_item", arguments='{"item": "milk"}'))]),
                ToolMessage(id="t1", tool_call_id="c1", content="added"),
                AssistantMessage(id="m2", content="Added milk.")]
        body = [
            StateSnapshotEvent(snapshot={"items": [], "meta": {"v": 1}}),
            ToolCallStartEvent(tool_call_id="c1", tool_call_name="add_item", parent_message_id="m1"),
            ToolCallArgsEvent(tool_call_id="c1", delta='{"item": "milk"}'),
            ToolCallEndEvent(tool_call_id="c1"),
            StateDeltaEvent(delta=[{"op": "add", "path": "/items/-", "value": "milk"},
                                   {"op": "replace", "path": "/meta/v", "value": 2},
                                   {"op": "test", "path": "/items/0", "value": "milk"}]),
            ToolCallResultEvent(message_id="t1", tool_call_id="c1", content="added"),
            StateDeltaEvent(delta=[{"op": "remove", "path": "/meta"}, {"op": "add", "path": "/done", "value": True}]),
            *said("m2", "Added milk."),
            MessagesSnapshotEvent(messages=msgs),
        ]
    elif "#reasoning" in text:
        body = [
            ReasoningStartEvent(message_id="r1"),
            ReasoningMessageStartEvent(message_id="rm1", role="reasoning"),
            ReasoningMessageContentEvent(message_id="rm1", delta="Weighing options."),
            ReasoningMessageEndEvent(message_id="rm1"),
            ReasoningEncryptedValueEvent(subtype="message", entity_id="rm1", encrypted_value="b64=="),
            ReasoningEndEvent(message_id="r1"),
            *said("m1", "Option B."),
        ]
    elif "#raw" in text:
        body = [
            RawEvent(event={"id": "chatcmpl-1", "object": "chat.completion.chunk"}, source="openai"),
            CustomEvent(name="progress", value={"pct": 50}),
            ActivitySnapshotEvent(message_id="a1", activity_type="PLAN", content={"steps": ["look"]}),
            ActivityDeltaEvent(message_id="a1", activity_type="PLAN",
                               patch=[{"op": "add", "path": "/steps/-", "value": "answer"}]),
            *said("m1", "Done."),
            CustomEvent(name="usage", value=12, raw_event={"tokens": 12}),
        ]
    elif "#interrupt" in text:
        # A tool that waits for the user: the run pauses with the interrupt outcome, the call owes no result now.
        start = RunStartedEvent(thread_id=t, run_id=r, input=inp, protocol_version="1.1", metadata={"agent": "demo"})
        body = [TextMessageChunkEvent(message_id="m1", role="assistant", delta="Asking first."),
                ToolCallStartEvent(tool_call_id="c1", tool_call_name="delete", parent_message_id="m1"),
                ToolCallArgsEvent(tool_call_id="c1", delta='{"what": "x"}'),
                ToolCallEndEvent(tool_call_id="c1")]
        end = RunFinishedEvent(thread_id=t, run_id=r, outcome=RunFinishedInterruptOutcome(interrupts=[
            Interrupt(id="i1", reason="tool_approval", tool_call_id="c1", message="Delete x?")]),
            usage=[TokenUsage(provider="p", model="m", input_tokens=10, output_tokens=3, total_tokens=13)])
    elif "#pending" in text:
        body = [*said("m1", "Please confirm."),
                ToolCallStartEvent(tool_call_id="c1", tool_call_name="confirm"),
                ToolCallArgsEvent(tool_call_id="c1", delta="{}"),
                ToolCallEndEvent(tool_call_id="c1")]
        end = RunFinishedEvent(thread_id=t, run_id=r,
                               outcome=RunFinishedSuccessOutcome(pending_tool_call_ids=["c1"]))
    elif "#subagent" in text:
        body = [
            StepStartedEvent(step_name="search"),
            ToolCallStartEvent(tool_call_id="c1", tool_call_name="delegate"),
            ToolCallArgsEvent(tool_call_id="c1", delta='{"task": "look"}'),
            ToolCallEndEvent(tool_call_id="c1"),
            SubagentStartedEvent(subagent_run_id="sa1", name="researcher", parent_tool_call_id="c1"),
            StepStartedEvent(step_name="search", subagent_run_id="sa1"),
            TextMessageStartEvent(message_id="s1", role="assistant", subagent_run_id="sa1"),
            TextMessageContentEvent(message_id="s1", delta="Found it."),
            TextMessageEndEvent(message_id="s1", subagent_run_id="sa1"),
            StepFinishedEvent(step_name="search", subagent_run_id="sa1"),
            SubagentFinishedEvent(subagent_run_id="sa1", result="found",
                                  outcome=SubagentFinishedSuccessOutcome()),
            ToolCallResultEvent(message_id="t1", tool_call_id="c1", content="found"),
            StepFinishedEvent(step_name="search"),
            *said("m1", "The researcher found it."),
        ]
    elif "#misc" in text:
        body = [
            StateDeltaEvent(delta=[{"op": "add", "path": "/counter", "value": 1}]),  # onto the request's state {}
            StepStartedEvent(step_name="outer"),
            StepStartedEvent(step_name="inner"),
            StateDeltaEvent(delta=[{"op": "copy", "from": "/counter", "path": "/copy"},
                                   {"op": "move", "from": "/copy", "path": "/moved"},
                                   {"op": "add", "path": "/list", "value": []}]),
            StepFinishedEvent(step_name="inner"),
            StepStartedEvent(step_name="inner"),  # the same name again once closed
            StepFinishedEvent(step_name="inner"),
            StepFinishedEvent(step_name="outer"),
            TextMessageStartEvent(message_id="m1", role="assistant"),
            TextMessageContentEvent(message_id="m1", delta="Ünïcødé 🎉 " + "x" * 20_000),
            TextMessageEndEvent(message_id="m1"),
            TextMessageStartEvent(message_id="m1", role="assistant"),  # a closed message reopened (spec 1.1: MAY)
            TextMessageContentEvent(message_id="m1", delta=" and more"),
            TextMessageEndEvent(message_id="m1"),
            ToolCallStartEvent(tool_call_id="c1", tool_call_name="ping"),  # a call with no arguments
            ToolCallEndEvent(tool_call_id="c1"),
            ToolCallResultEvent(message_id="t1", tool_call_id="c1", content=""),
            StateSnapshotEvent(snapshot={"replaced": True}),
            StateDeltaEvent(delta=[{"op": "replace", "path": "/replaced", "value": False}]),
        ]
        end = RunFinishedEvent(thread_id=t, run_id=r, result=None)
    elif "#cancel" in text:
        body = [*said("m1", "Stopping.")]
        end = RunFinishedEvent(thread_id=t, run_id=r, outcome=RunFinishedCancelledOutcome())
    elif "#refused" in text:  # the run fails before it starts: RUN_ERROR alone
        return [RunErrorEvent(message="quota exceeded", code="QUOTA", timestamp=TS)]
    elif "#error" in text:
        return [start, TextMessageStartEvent(message_id="m1", role="assistant"),
                TextMessageContentEvent(message_id="m1", delta="Partial"),
                RunErrorEvent(message="model backend unavailable", code="UPSTREAM")]
    else:
        body = [TextMessageStartEvent(message_id="m1", role="assistant"),
                TextMessageContentEvent(message_id="m1", delta=f"You said {len(inp.messages)} things."),
                TextMessageEndEvent(message_id="m1")]
    return [start, *body, end]


def dump(ev: BaseEvent | dict[str, Any]) -> dict[str, Any]:
    return ev if isinstance(ev, dict) else json.loads(ev.model_dump_json(by_alias=True))


def faulty(inp: RunAgentInput, fault: str) -> list[dict[str, Any]]:
    """The dicts a server breaking one rule sends."""
    t, r = inp.thread_id, inp.run_id
    start = {"type": "RUN_STARTED", "threadId": t, "runId": r}
    end = {"type": "RUN_FINISHED", "threadId": t, "runId": r}
    ok = [dump(e) for e in conforming(inp, "#text")[1:-1]]
    content = {"type": "TEXT_MESSAGE_CONTENT", "messageId": "x", "delta": "hi"}
    return {
        "content_before_start": [start, content, {"type": "TEXT_MESSAGE_START", "messageId": "x", "role": "assistant"},
                                 {"type": "TEXT_MESSAGE_END", "messageId": "x"}, end],
        "end_without_start": [start, *ok, {"type": "TEXT_MESSAGE_END", "messageId": "never"}, end],
        "unclosed_tool": [start, {"type": "TOOL_CALL_START", "toolCallId": "c1", "toolCallName": "add"},
                          {"type": "TOOL_CALL_ARGS", "toolCallId": "c1", "delta": "{}"}, end],
        "after_finished": [start, *ok, end, dict(content, messageId="m1")],
        "bad_patch": [start, {"type": "STATE_SNAPSHOT", "snapshot": {"a": 1}},
                      {"type": "STATE_DELTA", "delta": [{"op": "frobnicate", "path": "/a"}]}, *ok, end],
        "missing_path": [start, {"type": "STATE_SNAPSHOT", "snapshot": {"a": 1}},
                         {"type": "STATE_DELTA", "delta": [{"op": "replace", "path": "/nope/deeper", "value": 2}]},
                         *ok, end],
        "wrong_types": [start, {"type": "TEXT_MESSAGE_START", "messageId": 7, "role": "assistant"},
                        {"type": "TEXT_MESSAGE_CONTENT", "messageId": 7, "delta": ["hi"]},
                        {"type": "TEXT_MESSAGE_END", "messageId": 7}, end],
        "missing_run_id": [{"type": "RUN_STARTED", "threadId": t}, *ok, end],
        "two_run_started": [start, *ok[:3], start, *ok[3:], end],
        "no_terminal": [start, *ok],
        "slow_first": [start, *ok, end],
        "finished_other_run": [start, *ok, dict(end, runId="someone-else")],
        "result_unknown_call": [start, *ok, {"type": "TOOL_CALL_RESULT", "messageId": "t9", "toolCallId": "nope",
                                             "content": "x"}, end],
        "result_before_end": [start, {"type": "TOOL_CALL_START", "toolCallId": "c1", "toolCallName": "add"},
                              {"type": "TOOL_CALL_RESULT", "messageId": "t1", "toolCallId": "c1", "content": "5"},
                              {"type": "TOOL_CALL_END", "toolCallId": "c1"}, *ok, end],
        "backend_call_without_result": [start, {"type": "TOOL_CALL_START", "toolCallId": "c1", "toolCallName": "a"},
                                        {"type": "TOOL_CALL_END", "toolCallId": "c1"}, *ok, end],
        "content_after_end": [start, *ok, dict(content, messageId="m1"), end],
        "step_finished_unstarted": [start, *ok, {"type": "STEP_FINISHED", "stepName": "never"}, end],
        "float_timestamp": [start, *ok, dict(end, timestamp=1.5)],
        "unknown_type": [start, {"type": "TEXT_MESSAGE_DELTA", "messageId": "m1", "delta": "x"}, *ok, end],
        "delta_not_list": [start, {"type": "STATE_DELTA", "delta": {"op": "add", "path": "/a", "value": 1}}, *ok, end],
        "chunk_without_name": [start, {"type": "TOOL_CALL_CHUNK", "toolCallId": "c1", "delta": "{}"},
                               {"type": "TOOL_CALL_RESULT", "messageId": "t1", "toolCallId": "c1", "content": "5"},
                               *ok, end],
        "snake_case": [start, {"type": "TEXT_MESSAGE_START", "message_id": "m1", "role": "assistant"},
                       {"type": "TEXT_MESSAGE_CONTENT", "message_id": "m1", "delta": "x"},
                       {"type": "TEXT_MESSAGE_END", "message_id": "m1"}, end],
        "missing_thread_id": [{"type": "RUN_STARTED", "runId": r}, *ok, end],
        "error_with_open_message": [start, *ok[:3], {"type": "RUN_ERROR", "message": "boom"}],
        "server_thread_id": [dict(start, threadId="srv-t"), *ok, dict(end, threadId="srv-t")],
        "thinking": [start, {"type": "THINKING_START", "title": "Planning"},
                     {"type": "THINKING_TEXT_MESSAGE_START"},
                     {"type": "THINKING_TEXT_MESSAGE_CONTENT", "delta": "Hmm."},
                     {"type": "THINKING_TEXT_MESSAGE_END"}, {"type": "THINKING_END"}, *ok, end],
        "bad_role": [start, ok[0], {"type": "TEXT_MESSAGE_START", "messageId": "m1", "role": "robot"}, *ok[2:], end],
    }[fault]


#: each fault and the verdict it earns: its outcome and the one rule it breaks
FAULTS = {
    "content_before_start": ("failed", "R5"), "end_without_start": ("failed", "R5"),
    "unclosed_tool": ("failed", "R5"), "after_finished": ("failed", "R4"), "bad_patch": ("failed", "R12"),
    "missing_path": ("failed", "R12"), "wrong_types": ("failed", "R12"), "missing_run_id": ("failed", "R12"),
    "two_run_started": ("failed", "R1"), "slow_first": ("failed", "R9"),
    "result_unknown_call": ("failed", "R5"), "result_before_end": ("failed", "R5"),
    "backend_call_without_result": ("failed", "R5"), "content_after_end": ("failed", "R5"),
    "step_finished_unstarted": ("failed", "R5"), "float_timestamp": ("failed", "R12"),
    "unknown_type": ("failed", "R12"), "delta_not_list": ("failed", "R12"), "chunk_without_name": ("failed", "R12"),
    "snake_case": ("failed", "R12"), "missing_thread_id": ("failed", "R12"), "bad_role": ("failed", "R12"),
    # A fatal RUN_ERROR nobody expected, with a message left open (it owes no end after an error): R13 alone.
    "error_with_open_message": ("failed", "R13"),
    # RUN_FINISHED naming another run is no end of this one: that run's event (R8), this one never ended.
    "finished_other_run": ("incomplete", "R8"),
}


def events_for(inp: RunAgentInput, parent: str | None) -> list[dict[str, Any]]:
    text = str(inp.messages[-1].content)
    if "#fault=" in text:
        return faulty(inp, text.split("#fault=")[1].split()[0])
    return [dump(e) for e in conforming(inp, text, parent)]


# -- the server -----------------------------------------------------------------------------------------------------

#: the content codings the server offers, as zlib writes them (deflate in its zlib form, RFC 9110)
WBITS = {"gzip": 31, "deflate": 15}


class Agent:
    """The Starlette app; `requests` keeps every RunAgentInput it was sent (validated by the official model)."""

    def __init__(self) -> None:
        self.requests: list[RunAgentInput] = []
        self.app = Starlette(routes=[Route("/agent/{style}", self.sse, methods=["POST"]),
                                     WebSocketRoute("/agent/ws", self.ws),
                                     # Mounted with a trailing slash, as `add_langgraph_fastapi_endpoint(app, a, "/x/")`
                                     # does: Starlette answers a POST to /slashed with 307 to /slashed/.
                                     Route("/slashed/", self.sse, methods=["POST"])])

    async def _stream(self, inp: RunAgentInput) -> AsyncIterator[dict[str, Any]]:
        text = str(inp.messages[-1].content)
        if "#fault=slow_first" in text:
            await asyncio.sleep(2.2)  # wait-ok: a slow model on purpose, its first event past the 2 s limit
        parent = next((r.run_id for r in reversed(self.requests[:-1]) if r.thread_id == inp.thread_id), None)
        for ev in events_for(inp, parent):
            yield ev

    async def sse(self, request: Request) -> Response:
        inp = RunAgentInput.model_validate(await request.json())
        self.requests.append(inp)
        style = request.path_params.get("style", "plain")
        encoder = EventEncoder(accept=request.headers.get("accept"))
        coding = next((c for c in WBITS if style.startswith(c) and c in request.headers.get("accept-encoding", "")),
                      None)
        # A faulty run is JSON written by hand (the models would refuse or mend it); a conforming one goes through
        # the package's models and encoder.
        by_hand = "#fault=" in str(inp.messages[-1].content)

        async def body() -> AsyncIterator[bytes]:
            packer = zlib.compressobj(wbits=WBITS[coding]) if coding else None
            n = 0
            async for ev in self._stream(inp):
                frame = f"data: {json.dumps(ev)}\n\n" if by_hand else encoder.encode(_model(ev))
                if style == "crlf":
                    n += 1
                    frame = (f": keep-alive\r\nid: {n}\r\nevent: {ev.get('type')}\r\nretry: 3000\r\n"
                             + frame.replace("\n", "\r\n"))
                data = frame.encode()
                if packer is not None:
                    data = packer.compress(data) + packer.flush(zlib.Z_SYNC_FLUSH)
                if style.endswith("split"):  # every few bytes a chunk of its own: events and UTF-8 cut anywhere
                    for i in range(0, len(data), 5):
                        yield data[i:i + 5]
                else:
                    yield data
            if packer is not None and style != "gzip-no-trailer":
                yield packer.flush()

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if coding:
            headers["Content-Encoding"] = coding
        return StreamingResponse(body(), media_type=encoder.get_content_type(), headers=headers)

    async def ws(self, websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                inp = RunAgentInput.model_validate_json(await websocket.receive_text())
                self.requests.append(inp)
                async for ev in self._stream(inp):
                    await websocket.send_text(json.dumps(ev))
        except WebSocketDisconnect:
            pass


def _model(ev: dict[str, Any]) -> BaseEvent:
    """The package's event model for `ev` (what the app hands its encoder)."""
    return _EVENT.validate_python(ev)


_EVENT: TypeAdapter[Any] = TypeAdapter(Event)


@contextmanager
def served(agent: Agent) -> Iterator[str]:
    """The app under uvicorn (tests/integration/asgi.py); its host:port."""
    with uvicorn_on_loopback(agent.app, timeout_graceful_shutdown=5) as port:
        yield f"127.0.0.1:{port}"


# -- running chatprobe as a user does --------------------------------------------------------------------------------

CONFORMING = ["#text", "#chunks", "#tools", "#parallel", "#state", "#reasoning", "#raw", "#interrupt", "#pending",
              "#subagent", "#cancel", "#misc"]


def conforming_scenario() -> str:
    steps = "".join(f'  - chat: {{message: "{m} please"}}\n' for m in CONFORMING)
    return ("name: agui-independent\nusers: 2\nexpect: {streaming: true, first_event_limit: 10s, settle: 0.2s}\n"
            "objectives: {time_to_first_event: {p95: 10s}}\nsteps:\n" + steps
            + '  - chat: {message: "#refused now", expect_error: fatal}\n'
            + '  - chat: {message: "#error now", expect_error: fatal}\n'
            + '  - chat: {message: "and a follow-up", thread: continue}\n')


def fault_scenario() -> str:
    steps = "".join(f'  - chat: {{message: "#fault={f} x"}}\n' for f in [*FAULTS, "no_terminal"])
    return "name: agui-faults\nusers: 1\nexpect: {settle: 0.2s, deadline: 3.5s}\nsteps:\n" + steps


def run_and_check(tmp_path: Path, url: str, body: str) -> tuple[dict[str, Any], dict[str, Any], int]:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(body)
    live, offline, rec = tmp_path / "live.json", tmp_path / "offline.json", tmp_path / "rec"
    code = main(["run", "--target", url, "--profile", "ag-ui", "--auth", "none", str(scenario),
                 "--record", str(rec), "--json", str(live), "-q"])
    assert code in (0, 1), code
    code2 = main(["check", str(rec), "--profile", "ag-ui", "--scenario", str(scenario), "--json", str(offline), "-q"])
    assert code2 == code, (code, code2)
    (a,) = json.loads(live.read_text())["scenarios"]
    (b,) = json.loads(offline.read_text())["scenarios"]
    return a, b, code


def verdicts(doc: dict[str, Any], agent: Agent) -> dict[str, list[tuple[str, tuple[str, ...], tuple[str, ...]]]]:
    """Each chat's verdict (outcome, violated rules, warned rules) under the message its server was sent."""
    texts = {r.thread_id: [] for r in agent.requests}
    for r in agent.requests:
        texts[r.thread_id].append(str(r.messages[-1].content))
    out: dict[str, list[tuple[str, tuple[str, ...], tuple[str, ...]]]] = {}
    seen: dict[str, int] = {}
    for c in doc["chats"]:  # in the order they started
        i = seen.get(c["thread_id"], 0)
        seen[c["thread_id"]] = i + 1
        msg = texts[c["thread_id"]][i].split()[0]
        out.setdefault(msg, []).append((c["outcome"], tuple(v["rule"] for v in c["violations"]),
                                        tuple(sorted({w["rule"] for w in c["warnings"]}))))
    return out


def counts_add_up(doc: dict[str, Any]) -> None:
    stats = doc["stats"]
    assert stats["chats"] == len(doc["chats"]) == sum(stats["outcomes"].values()), stats
    by_rule: dict[str, int] = {}
    for c in doc["chats"]:
        for v in c["violations"]:
            by_rule[v["rule"]] = by_rule.get(v["rule"], 0) + 1
    assert {k: v for k, v in stats["violations"].items() if v} == by_rule, (stats["violations"], by_rule)
    assert stats["events"] == sum(c["events_received"] for c in doc["chats"]), stats
    missing: dict[str, int] = {}
    for c in doc["chats"]:
        for role in c["missing"]:
            missing[role] = missing.get(role, 0) + 1
    assert {k: v for k, v in stats["missing_roles"].items() if v} == missing, (stats["missing_roles"], missing)
    assert stats["missing_events_chats"] == sum(1 for c in doc["chats"] if c["missing"]), stats


def judged(tmp_path: Path, capfd: Any, path: str, scenario: str
           ) -> tuple[Agent, dict[str, Any], dict[str, Any], int, dict[str, Any]]:
    """The official package's server (a fresh Agent) at `path` ("ws": its WebSocket endpoint, else /agent/PATH),
    driven by `chatprobe run` and its recording judged by `chatprobe check`: no traceback, the two roads' verdicts the
    same, the counts adding up in both; (agent, live, offline, exit code, the verdicts by message)."""
    agent = Agent()
    with served(agent) as host:
        url = f"ws://{host}/agent/ws" if path == "ws" else f"http://{host}/agent/{path}"
        live, offline, code = run_and_check(tmp_path, url, scenario)
    assert "Traceback" not in "".join(capfd.readouterr())
    got = verdicts(live, agent)
    assert got == verdicts(offline, agent)
    for doc in (live, offline):
        counts_add_up(doc)
    return agent, live, offline, code, got

@pytest.mark.parametrize("style", ["plain", "crlf", "gzip", "deflate", "split", "gzip-split", "ws"])
def test_conforming_official_package_server_passes_live_and_offline(tmp_path: Path, style: str, capfd):
    agent, live, offline, code, got = judged(tmp_path, capfd, style, conforming_scenario())
    assert code == 0, got
    assert set(got) == {*CONFORMING, "#error", "#refused", "and"}, got
    # A tool call whose parentMessageId names an assistant message not shown yet (one carrying only tool calls, or
    # streamed after its calls) is advice, never a failure (docs/profiles.md).
    advised = {"#chunks", "#state"}
    assert all(v == [("passed", (), ("R5",) if m in advised else ())] * 2 for m, v in got.items()), got
    assert {w["reason"].split(", which")[0].split("names ")[1] for c in live["chats"] for w in c["warnings"]} \
        == {"parentMessageId 'm1'"}
    # The follow-up turn carried the conversation so far, which the official RunAgentInput read.
    follow = [r for r in agent.requests if str(r.messages[-1].content) == "and a follow-up"]
    assert len(follow) == 2 and all(len(r.messages) >= 3 for r in follow), [r.messages for r in follow]
    assert all(c["parent_run_id"] is None for c in live["chats"]), "a continued turn's parentRunId is no further run"


@pytest.mark.parametrize("style", ["plain", "crlf", "gzip", "ws"])
def test_each_fault_is_its_one_rule_live_and_offline(tmp_path: Path, style: str, capfd):
    agent, live, offline, _, got = judged(tmp_path, capfd, style, fault_scenario())
    found = {msg.removeprefix("#fault="): v for msg, v in got.items()}
    # A run whose stream ends without RUN_FINISHED is incomplete (its agent_completed missing, "truncated run"); one
    # whose WebSocket stays open without it is incomplete at its deadline (R10).
    assert found.pop("no_terminal") == [("incomplete", ("R10",) if style == "ws" else (), ())], found
    cut = [c["missing"] for c in live["chats"] if c["outcome"] == "incomplete"]
    assert cut == [["agent_completed"]] * 2, cut
    assert set(found) == set(FAULTS), found
    # One violation per faulty frame (a run with three snake_case frames has three R12s), all of the fault's rule;
    # over WebSocket the run that never ends is also at its deadline (R10).
    def late_rule(fault: str) -> set[str]:
        return {"R10"} if style == "ws" and fault == "finished_other_run" else set()

    wrong = {f: v for f, v in found.items()
             if [(o, set(rules), w) for o, rules, w in v] != [(FAULTS[f][0], {FAULTS[f][1], *late_rule(f)},
                                                               ())]}
    assert not wrong, wrong


def test_a_gzip_stream_without_its_end_is_an_r12_live_and_offline(tmp_path: Path, capfd):
    """Flushed per event, every event whole, but never finished (no last block, no CRC trailer): the body is not the
    gzip it says it is (RFC 9110 8.4.1.3, RFC 1952), an R12 as docs/protocol.md says, though lenient clients (browsers,
    Node's fetch) read it. Pinned: a server that does this is told so, not passed."""
    agent, live, offline, code, got = judged(tmp_path, capfd, "gzip-no-trailer",
                                             'name: no-trailer\nsteps:\n  - chat: {message: "#text"}\n'
                                             '  - chat: {message: "#tools"}\n')
    assert code == 1
    assert got == {"#text": [("failed", ("R12",), ())], "#tools": [("failed", ("R12",), ())]}
    assert all("ended before its gzip end" in c["violations"][0]["reason"] for c in live["chats"]), live["chats"]


@pytest.mark.parametrize("style", ["plain", "ws"])
def test_the_clients_run_under_a_thread_of_the_servers_is_r8(tmp_path: Path, style: str, capfd):
    """A server that names the thread itself (ids of its own) but the run the client asked for. AG-UI's reference
    client checks neither id, and another runId than sent is only advice; another thread inside the client's run is
    R8, as docs/protocol.md says (a client that files runs by thread shows the answer in another conversation).
    Pinned as documented: each lifecycle event naming that thread is one R8, live and offline alike."""
    agent, live, offline, code, got = judged(tmp_path, capfd, style, 'name: srv-thread\nsteps:\n'
                                             '  - chat: {message: "#fault=server_thread_id"}\n'
                                             '  - chat: {message: "#text"}\n')
    assert got == {"#fault=server_thread_id": [("failed", ("R8", "R8"), ())], "#text": [("passed", (), ())]}, got
    assert code == 1
    (failed,) = [c for c in live["chats"] if c["violations"]]
    assert [v["reason"] for v in failed["violations"]] == [
        f"received {role} of thread 'srv-t' inside this client's run: cross-talk"
        for role in ("agent_started (RUN_STARTED)", "agent_completed (RUN_FINISHED)")]


def test_pre_1_0_thinking_events_pass_with_advice_live_and_offline(tmp_path: Path, capfd):
    """A server on an ag-ui-protocol from before 1.0 streams THINKING_* (1.0 replaced them with REASONING_*; the
    installed package has no model for them): advice, said once per run (docs/profiles.md), and the run passes."""
    agent, live, offline, code, got = judged(tmp_path, capfd, "plain",
                                             'name: thinking\nsteps:\n  - chat: {message: "#fault=thinking"}\n')
    assert got == {"#fault=thinking": [("passed", (), ("R12",))]}, got
    assert code == 0
    (chat,) = live["chats"]
    assert [w["reason"].split()[0] for w in chat["warnings"]] == ["THINKING_START"]
    assert "agent_thinking" in {e["role"] for e in chat["events"]}


def test_a_redirect_to_the_endpoint_with_a_slash_says_where_it_goes(tmp_path: Path, capfd):
    """Starlette (FastAPI) answers a POST to /slashed, whose route is /slashed/, with 307 and a Location. fetch() (AG-UI's
    HttpAgent) follows it; chatprobe follows no redirect (docs/profiles.md: the token goes to --target only), so the
    chat is a protocol_error, live and offline alike. The error named the status alone ("HTTP 307 from the SSE
    endpoint"), leaving the user to find out why; it now says where the server sends the client, without the
    query (a token echoed there stays out of the report), and what to do."""
    agent = Agent()
    with served(agent) as host:
        live, offline, code = run_and_check(tmp_path, f"http://{host}/slashed?key=abc",
                                            'name: slash\nsteps:\n  - chat: {message: "#text"}\n')
        assert "Traceback" not in "".join(capfd.readouterr())
    assert code == 1 and not agent.requests
    want = (f"HTTP 307 from the SSE endpoint, redirecting to http://{host}/slashed/ (no redirect is followed: give "
            "that URL as --target)")
    for doc in (live, offline):
        (chat,) = doc["chats"]
        assert (chat["outcome"], chat["error_kind"], chat["error"]) == ("error", "protocol_error", want), chat


@pytest.mark.parametrize("location, said", [
    ("/agent/", "http://127.0.0.1:8000/agent/"),
    ("https://user:pw@other.example/x/?token=s3cr3t#f", "https://other.example/x/"),
    ("http://[::1]:9/a", "http://[::1]:9/a"),
    ("javascript:alert(1)", ""), ("", ""), ("http://", ""), ("//other.example/y", "http://other.example/y"),
])
def test_where_a_redirect_points_is_said_without_credentials(location: str, said: str):
    from harness.transports.sse import classify_status

    failure = classify_status(307, "text/html", location, "http://127.0.0.1:8000/agent?key=k")
    assert failure is not None and failure[0] == "protocol_error"
    assert failure[1] == (f"HTTP 307 from the SSE endpoint, redirecting to {said} (no redirect is followed: give that "
                          "URL as --target)" if said else "HTTP 307 from the SSE endpoint")
