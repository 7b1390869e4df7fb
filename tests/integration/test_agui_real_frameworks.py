"""`chatprobe run` and `chatprobe check`, as a user runs them, against AG-UI servers built with real, third-party agent
frameworks (not this repo's servers): pydantic-ai's AGUIAdapter and ag-ui-langgraph (the AG-UI project's LangGraph
integration), each under uvicorn on a loopback socket, their models scripted in-process (pydantic-ai's FunctionModel,
a LangChain chat model written here), so nothing leaves the machine and no key is needed. The message picks what the
model does: `#tool` (a backend tool, its result, then text), `#think` (reasoning first), `#two-tools`, `#retry-tool`
(the tool asks the model to retry), `#state` (the tool emits state and custom events), `#approve` (a tool call that
waits for the user), `#fail-tool` (the tool raises), `#fail-model` (the model raises mid-answer).

Conformant streams pass with no violation; a run that fails is a RUN_ERROR, judged as docs/protocol.md says (the
expected error of an `expect_error: fatal` step passes, an unexpected one is R13 and nothing else). Where a library
breaks the spec, the test pins chatprobe's violation and says why."""
from __future__ import annotations

import datetime
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from ag_ui.core import CustomEvent, StateDeltaEvent, StateSnapshotEvent
from ag_ui_langgraph import LangGraphAgent, add_langgraph_fastapi_endpoint
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from langchain.agents import create_agent
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import interrupt
from pydantic_ai import Agent, DeferredToolRequests, ModelRetry, ToolReturn
from pydantic_ai.messages import ModelMessage, ModelRequest, RetryPromptPart, ToolReturnPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, DeltaThinkingPart, DeltaToolCall, FunctionModel
from pydantic_ai.ui.ag_ui import AGUIAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .asgi import uvicorn_on_loopback

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
ROOT = Path(__file__).resolve().parents[2]


# -- pydantic-ai ------------------------------------------------------------------------------------------------------

def _prompt(messages: list[ModelMessage]) -> str:
    """The user's latest message (the turn being answered)."""
    for m in reversed(messages):
        if isinstance(m, ModelRequest):
            for p in m.parts:
                if isinstance(p, UserPromptPart):
                    return str(p.content)
    return ""


async def _pydantic_model(messages: list[ModelMessage], info: AgentInfo):
    text = _prompt(messages)
    last = messages[-1]
    back = isinstance(last, ModelRequest) and any(isinstance(p, ToolReturnPart | RetryPromptPart) for p in last.parts)
    if "#think" in text and not back:
        yield {0: DeltaThinkingPart(content="Let me ")}
        yield {0: DeltaThinkingPart(content="think.")}
    if "#fail-model" in text:
        yield "Partial "
        raise RuntimeError("model backend unavailable")
    if back:
        yield "The answer "
        yield "is 5."
        return
    for word, calls in (("#fail-tool", [("broken", "{}")]), ("#retry-tool", [("picky", "{}")]),
                        ("#two-tools", [("add", '{"a": 1, "b": 1}'), ("add", '{"a": 2, "b": 2}')]),
                        ("#state", [("set_state", "{}")]), ("#approve", [("delete", '{"what": "x"}')])):
        if word in text:
            for i, (name, args) in enumerate(calls, 1):
                yield {i: DeltaToolCall(name=name, json_args=args, tool_call_id=f"call-{name}-{i}")}
            return
    if "#tool" in text:
        yield {1: DeltaToolCall(name="add", json_args='{"a": 2, ', tool_call_id="call-1")}
        yield {1: DeltaToolCall(json_args='"b": 3}')}
        return
    yield "Hello "
    yield "there."


def _pydantic_agent() -> Agent:
    agent = Agent(FunctionModel(stream_function=_pydantic_model), output_type=[str, DeferredToolRequests])

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        return a + b

    @agent.tool_plain
    def broken() -> int:
        raise ValueError("tool exploded")

    @agent.tool_plain
    def picky() -> int:
        raise ModelRetry("try again")

    @agent.tool_plain
    def set_state() -> ToolReturn:
        return ToolReturn(return_value="ok", metadata=[
            StateSnapshotEvent(snapshot={"n": 1}), StateDeltaEvent(delta=[{"op": "replace", "path": "/n", "value": 2}]),
            CustomEvent(name="progress", value=1)])

    @agent.tool_plain(requires_approval=True)
    def delete(what: str) -> str:
        return "deleted"

    return agent


def _pydantic_app() -> Starlette:
    """The agent at /agent, and at /agent-0.1.10 speaking AG-UI as pydantic-ai does for a client of that version (its
    reasoning as the pre-1.0 THINKING_* events)."""
    agent = _pydantic_agent()

    async def endpoint(request: Request) -> Response:
        return await AGUIAdapter.dispatch_request(request, agent=agent)

    async def endpoint_0_1_10(request: Request) -> Response:
        return await AGUIAdapter.dispatch_request(request, agent=agent, ag_ui_version="0.1.10")

    return Starlette(routes=[Route("/agent", endpoint, methods=["POST"]),
                             Route("/agent-0.1.10", endpoint_0_1_10, methods=["POST"])])


def _pydantic_websocket_app(*, pairs: bool = False) -> FastAPI:
    """The same agent behind a FastAPI WebSocket endpoint, as a team serves AG-UI over WebSocket: each RunAgentInput (a
    JSON text frame) is run by AGUIAdapter and its events sent back as JSON text frames, one run after another on a
    connection. `pairs`: two requests are taken, then both run at once, their events interleaved on the socket. A
    message with `#crash` fails the handler after three events: its `except` closes the socket with 1011."""
    agent = _pydantic_agent()
    app = FastAPI()

    async def events(body: str) -> AsyncIterator[str]:
        adapter = AGUIAdapter(agent=agent, run_input=AGUIAdapter.build_run_input(body.encode()))
        n = 0
        async for ev in adapter.run_stream():
            n += 1
            if n > 3 and "#crash" in body:
                raise RuntimeError("the handler failed")
            yield ev.model_dump_json(by_alias=True)

    @app.websocket("/agent")
    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        try:
            while True:
                if not pairs:
                    async for text in events(await ws.receive_text()):
                        await ws.send_text(text)
                    continue
                streams = [events(await ws.receive_text()), events(await ws.receive_text())]
                while streams:  # one event of each run in turn
                    for s in list(streams):
                        try:
                            await ws.send_text(await anext(s))
                        except StopAsyncIteration:
                            streams.remove(s)
        except WebSocketDisconnect:
            pass
        except RuntimeError:
            await ws.close(code=1011)

    return app


# -- LangGraph --------------------------------------------------------------------------------------------------------

def _lg_script(messages: list[Any]) -> tuple[list[str], list[tuple[str, str, str]]]:
    text = next((str(m.content) for m in reversed(messages) if isinstance(m, HumanMessage)), "")
    if "#fail-model" in text:
        raise RuntimeError("model backend unavailable")
    if isinstance(messages[-1], ToolMessage):
        return ["The answer ", "is 5."], []
    for word, call in (("#fail-tool", ("broken", "{}", "call-b")), ("#approve", ("delete", '{"what": "x"}', "call-d")),
                       ("#tool", ("add", '{"a": 2, "b": 3}', "call-1"))):
        if word in text:
            return [], [call]
    return ["Hello ", "there."], []


class ScriptedChatModel(BaseChatModel):
    """A LangChain chat model that streams what _lg_script says: text chunks, then tool call chunks."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Any, **kw: Any) -> "ScriptedChatModel":
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kw) -> ChatResult:
        texts, calls = _lg_script(messages)
        msg = AIMessage(content="".join(texts),
                        tool_calls=[{"name": n, "args": json.loads(a), "id": i} for n, a, i in calls])
        return ChatResult(generations=[ChatGeneration(message=msg)])

    def _stream(self, messages, stop=None, run_manager=None, **kw) -> Iterator[ChatGenerationChunk]:
        texts, calls = _lg_script(messages)
        for t in texts:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=t))
            if run_manager:
                run_manager.on_llm_new_token(t, chunk=chunk)
            yield chunk
        for idx, (n, a, i) in enumerate(calls):
            yield ChatGenerationChunk(message=AIMessageChunk(
                content="", tool_call_chunks=[tool_call_chunk(name=n, args=a, id=i, index=idx)]))


def _langgraph_app() -> FastAPI:
    @tool
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @tool
    def broken() -> int:
        """Always fails."""
        raise ValueError("tool exploded")

    @tool
    def delete(what: str) -> str:
        """Delete something once the user approves."""
        return f"deleted {what}: {interrupt({'question': f'delete {what}?'})}"

    graph = create_agent(ScriptedChatModel(), tools=[add, broken, delete], checkpointer=InMemorySaver())
    app = FastAPI()
    add_langgraph_fastapi_endpoint(app, LangGraphAgent(name="agent", graph=graph), "/agent")
    # AG-UI 1.0's interrupt outcome (the integration's opt-in) instead of its legacy CUSTOM on_interrupt event.
    add_langgraph_fastapi_endpoint(app, LangGraphAgent(name="agent", graph=graph, emit_interrupt_outcome=True),
                                   "/agent-1.0")
    return app


# -- serving and running, as a user does ------------------------------------------------------------------------------

@contextmanager
def served(app: Any) -> Iterator[str]:
    """`app` under uvicorn (tests/integration/asgi.py); its base URL."""
    with uvicorn_on_loopback(app) as port:
        yield f"http://127.0.0.1:{port}"


def chatprobe(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                          timeout=90, cwd=ROOT, env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})


def scenario(tmp: Path, name: str, body: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(f"name: {name}\n{body}")
    return path


def run(tmp: Path, url: str, *scenarios: Path) -> tuple[int, dict[str, list[dict]], str]:
    """`chatprobe run SCENARIO... --target URL --profile ag-ui --auth none --json`: its exit code, chats by scenario and
    output."""
    report = tmp / f"result-{len(list(tmp.glob('result-*')))}.json"
    proc = chatprobe("run", *scenarios, "--target", url, "--profile", "ag-ui", "--auth", "none", "--json", report, "-q")
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    data = json.loads(report.read_text())
    return proc.returncode, {s["scenario"]: s["chats"] for s in data["scenarios"]}, proc.stdout + proc.stderr


# Generous first-event limits: the framework and chatprobe share two cores in CI; the test is about the streams.
SINGLE = 'users: 1\nmessage: "What is 2 + 3? #think #tool"\nexpect: {streaming: true, first_event_limit: 10s}\n' \
         "objectives: {time_to_first_event: {p95: 10s}}\n"
ERRORS = """users: 2
expect: {first_event_limit: 10s}
objectives: {time_to_first_event: {p95: 10s}}
steps:
  - chat: {message: "What is 2 + 3? #tool"}
  - chat: {message: "Break it #fail-tool", expect_error: fatal}
  - chat: {message: "Say hi"}
  - chat: {message: "Break #fail-model", expect_error: fatal}
  - chat: {message: "What is 2 + 3? #tool"}
"""
UNEXPECTED = """users: 1
expect: {first_event_limit: 10s}
steps:
  - chat: {message: "Break #fail-model"}
  - chat: {message: "Break it #fail-tool"}
"""


def users(messages: list[str], streaming: bool = True, chats: int = 24) -> str:
    """`chats` chats, every user sending each message once (a user's n-th chat sends messages[n % len])."""
    return (f"users: {chats // len(messages)}\nchats_per_user: {len(messages)}\nmessages: {json.dumps(messages)}\n"
            f"expect: {{streaming: {'true' if streaming else 'false'}, first_event_limit: 10s}}\n"
            "objectives: {time_to_first_event: {p95: 10s}}\n")


def types_of(chats: list[dict]) -> set[str]:
    return {e["wire_type"] for c in chats for e in c["events"]}


def only_r13_for_the_error(chats: list[dict]) -> None:
    assert [c["outcome"] for c in chats] == ["failed", "failed"], chats
    for c in chats:
        assert [v["rule"] for v in c["violations"]] == ["R13"], c["violations"]
        assert "unexpected fatal error event (RUN_ERROR)" in c["violations"][0]["reason"]


# -- pydantic-ai ------------------------------------------------------------------------------------------------------

def test_pydantic_ai_single_concurrent_and_expected_errors_pass(tmp_path: Path):
    with served(_pydantic_app()) as base:
        code, chats, out = run(
            tmp_path, f"{base}/agent", scenario(tmp_path, "single", SINGLE),
            scenario(tmp_path, "users", users(["Hi", "What is 2 + 3? #tool", "#think first", "#two-tools",
                                               "#retry-tool please", "#state"])),
            scenario(tmp_path, "paused", users(["Delete it #approve"], streaming=False, chats=4)),
            scenario(tmp_path, "errors", ERRORS))
    assert code == 0, out
    assert {k: len(v) for k, v in chats.items()} == {"single": 1, "users": 24, "paused": 4, "errors": 10}
    every = [c for v in chats.values() for c in v]
    assert all(c["outcome"] == "passed" and not c["violations"] for c in every), \
        [(c["chat_id"], c["violations"]) for c in every if c["violations"]]
    assert {"REASONING_MESSAGE_CONTENT", "TOOL_CALL_ARGS", "TOOL_CALL_RESULT", "TEXT_MESSAGE_CONTENT"} <= \
        types_of(chats["single"])
    assert {"STATE_SNAPSHOT", "STATE_DELTA", "CUSTOM"} <= types_of(chats["users"])
    assert "RUN_ERROR" in types_of(chats["errors"])
    # The tool call an approval holds back is named by the interrupt outcome and owes no result in this run.
    assert all(c["events"][-1]["wire_type"] == "RUN_FINISHED" for c in chats["paused"])


def test_pydantic_ai_unexpected_model_and_tool_errors_are_r13_only(tmp_path: Path):
    """The model raising mid-answer leaves its text message open and a failed tool leaves its call answered by an error
    text: after a RUN_ERROR spans may stay open, and nothing but the unexpected fatal error (R13) is a violation."""
    with served(_pydantic_app()) as base:
        code, chats, _ = run(tmp_path, f"{base}/agent", scenario(tmp_path, "unexpected", UNEXPECTED))
    assert code == 1
    only_r13_for_the_error(chats["unexpected"])


def test_pydantic_ai_speaking_pre_1_0_thinking_events_gets_that_advice_once_per_chat(tmp_path: Path):
    """FAILED-ON-ORIGINAL (an advice per THINKING_* event: 6 for two reasoning deltas, and a long reasoning stream
    filled the chat's 50 warnings, leaving no room for any other advice): pydantic-ai's `ag_ui_version="0.1.10"`."""
    with served(_pydantic_app()) as base:
        code, chats, out = run(tmp_path, f"{base}/agent-0.1.10", scenario(tmp_path, "old", users(
            ["#think first", "#think then #tool"], chats=4)))
    assert code == 0, out
    for c in chats["old"]:
        assert c["outcome"] == "passed" and not c["violations"], c["violations"]
        assert "THINKING_TEXT_MESSAGE_CONTENT" in [e["wire_type"] for e in c["events"]]
        assert [w["reason"] for w in c["warnings"] if "THINKING" in w["reason"]] == [
            "THINKING_START is not an AG-UI 1.0 event (1.0 replaced THINKING_* with REASONING_*; said once per run)"]


PARALLEL = """users: 2
chats_per_user: 4
parallel_chats: 2
messages: ["Hi", "What is 2 + 3? #tool", "#think first", "#two-tools"]
expect: {streaming: true, first_event_limit: 10s}
objectives: {time_to_first_event: {p95: 10s}}
"""


def test_pydantic_ai_over_a_websocket_with_parallel_chats_passes(tmp_path: Path):
    """FAILED-ON-ORIGINAL (every event between RUN_STARTED and RUN_FINISHED an R8 'of no run of this client'): two
    chats in flight on one connection, a server that streams one run at a time. AG-UI's events name no run, so with
    two chats in flight the client sent its second request while the first run streamed; each such event is of the
    one run under way (the other chat has had no event yet)."""
    with served(_pydantic_websocket_app()) as base:
        code, chats, out = run(tmp_path, base.replace("http", "ws") + "/agent", scenario(tmp_path, "parallel", PARALLEL))
        recorded = chatprobe("run", scenario(tmp_path, "parallel", PARALLEL), "--target", base.replace("http", "ws")
                             + "/agent", "--profile", "ag-ui", "--auth", "none", "--record", tmp_path / "rec", "-q")
    assert code == 0, out
    assert len(chats["parallel"]) == 8
    assert all(c["outcome"] == "passed" and not c["violations"] for c in chats["parallel"]), \
        [(c["chat_id"], c["violations"]) for c in chats["parallel"] if c["violations"]]
    assert {"TOOL_CALL_RESULT", "REASONING_MESSAGE_CONTENT", "TEXT_MESSAGE_CONTENT"} <= types_of(chats["parallel"])
    # `chatprobe check` of the recording judges the connections' interleaved chats alike.
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    checked = chatprobe("check", tmp_path / "rec", "--profile", "ag-ui", "--json", tmp_path / "check.json", "-q")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    again = [c for s in json.loads((tmp_path / "check.json").read_text())["scenarios"] for c in s["chats"]]
    assert len(again) == 8 and all(c["outcome"] == "passed" and not c["violations"] for c in again)


def test_runs_interleaved_on_one_websocket_are_r8_saying_they_cannot_be_told_apart(tmp_path: Path):
    """Two runs streamed at once on one connection, their events (which name no run) interleaved: no client can tell
    whose each is. The R8 says that, and what to do, rather than blaming a run of another client (once one of the two
    has ended, the rest are the other's, so what went missing of it is its R5 and R2 too)."""
    with served(_pydantic_websocket_app(pairs=True)) as base:
        code, chats, out = run(tmp_path, base.replace("http", "ws") + "/agent",
                               scenario(tmp_path, "interleaved", PARALLEL.replace("chats_per_user: 4", "chats_per_user: 2")))
    assert code == 1, out
    reasons = {v["reason"] for c in chats["interleaved"] for v in c["violations"]}
    assert all(c["outcome"] == "failed" for c in chats["interleaved"]), reasons
    assert any("while 2 runs of this connection are under way" in r and "cannot be told apart" in r for r in reasons), \
        reasons
    assert not any("of no run of this client" in r for r in reasons), reasons


def test_a_websocket_closed_mid_run_says_the_close_code_and_that_ag_ui_has_no_resume(tmp_path: Path):
    """FAILED-ON-ORIGINAL (the note said 'connection lost mid-run before the run had an id to resume': the run had one,
    the client chose it, and nothing said how the server ended the connection): a handler failing mid-run."""
    with served(_pydantic_websocket_app()) as base:
        code, chats, out = run(tmp_path, base.replace("http", "ws") + "/agent", scenario(tmp_path, "crash", users(
            ["Hi #crash"], streaming=False, chats=2)))
    assert code == 1, out
    for c in chats["crash"]:
        assert c["outcome"] == "incomplete" and c["events"][0]["wire_type"] == "RUN_STARTED", c
        assert c["note"] == ("connection lost mid-run (WebSocket close code 1011: the server's internal error); the "
                             "dialect has no resume"), c["note"]


def _har_entry(url: str, body: dict) -> dict:
    started = datetime.datetime.now(datetime.UTC).isoformat()
    text = httpx.post(url, json=body, headers={"Accept": "text/event-stream"}, timeout=20).text
    return {"startedDateTime": started,
            "request": {"method": "POST", "url": url, "postData": {"mimeType": "application/json",
                                                                  "text": json.dumps(body)}},
            "response": {"status": 200, "content": {"mimeType": "text/event-stream", "text": text}}}


def _conversation(url: str, path: Path) -> Path:
    """Three turns of one thread as a browser's client sends them (the history it holds, then only the new message),
    exported as a HAR."""
    def body(run_id: str, messages: list[dict]) -> dict:
        return {"threadId": "t-conversation", "runId": run_id, "state": {}, "messages": messages, "tools": [],
                "context": [], "forwardedProps": {}}

    u1 = {"id": "u1", "role": "user", "content": "What is 2 + 3? #tool"}
    first = _har_entry(url, body("run-1", [u1]))
    history = [u1, {"id": "a1", "role": "assistant", "toolCalls": [
                   {"id": "call-1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
               {"id": "t1", "role": "tool", "toolCallId": "call-1", "content": "5"},
               {"id": "a2", "role": "assistant", "content": "The answer is 5."}]
    second = _har_entry(url, body("run-2", [*history, {"id": "u2", "role": "user", "content": "#think and again"}]))
    third = _har_entry(url, body("run-3", [{"id": "u3", "role": "user", "content": "#tool once more"}]))
    path.write_text(json.dumps({"log": {"version": "1.2", "creator": {"name": "test", "version": "1"},
                                        "entries": [first, second, third]}}))
    return path


def test_a_multi_turn_thread_recorded_from_both_frameworks_passes_check(tmp_path: Path):
    """chatprobe run opens a new thread per chat; a conversation on one thread is judged from a recording (a HAR): a
    stateless server (pydantic-ai: the client sends the history) and one that keeps the thread (LangGraph's
    checkpointer: later turns replay the thread in MESSAGES_SNAPSHOT)."""
    with served(_pydantic_app()) as pa, served(_langgraph_app()) as lg:
        hars = [_conversation(f"{pa}/agent", tmp_path / "pydantic-ai.har"),
                _conversation(f"{lg}/agent", tmp_path / "langgraph.har")]
    report = tmp_path / "check.json"
    proc = chatprobe("check", *hars, "--profile", "ag-ui", "--json", report, "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = json.loads(report.read_text())["scenarios"]
    assert [len(r["chats"]) for r in runs] == [3, 3]
    for r in runs:
        assert all(c["outcome"] == "passed" and c["thread_id"] == "t-conversation" for c in r["chats"]), r["chats"]
        assert [c["run_id"] for c in r["chats"]] == ["run-1", "run-2", "run-3"]


# -- LangGraph --------------------------------------------------------------------------------------------------------

def test_langgraph_single_concurrent_and_expected_errors_pass(tmp_path: Path):
    with served(_langgraph_app()) as base:
        code, chats, out = run(tmp_path, f"{base}/agent", scenario(tmp_path, "single", SINGLE),
                               scenario(tmp_path, "users", users(["Hi", "What is 2 + 3? #tool"])),
                               scenario(tmp_path, "errors", ERRORS))
    assert code == 0, out
    assert {k: len(v) for k, v in chats.items()} == {"single": 1, "users": 24, "errors": 10}
    every = [c for v in chats.values() for c in v]
    assert all(c["outcome"] == "passed" and not c["violations"] for c in every), \
        [(c["chat_id"], c["violations"]) for c in every if c["violations"]]
    assert {"STEP_STARTED", "TOOL_CALL_START", "TOOL_CALL_RESULT", "MESSAGES_SNAPSHOT", "RAW"} <= types_of(chats["single"])


def test_langgraph_unexpected_model_and_tool_errors_are_r13_only(tmp_path: Path):
    """LangGraph fails the run with its step still open: after a RUN_ERROR that is no R5."""
    with served(_langgraph_app()) as base:
        code, chats, _ = run(tmp_path, f"{base}/agent", scenario(tmp_path, "unexpected", UNEXPECTED))
    assert code == 1
    only_r13_for_the_error(chats["unexpected"])


def test_langgraph_interrupt_inside_a_tool_passes(tmp_path: Path):
    """FAILED-ON-ORIGINAL (R5 'has no TOOL_CALL_RESULT'): the tool calls LangGraph's interrupt(), the run ends with the
    interrupt outcome, and that interrupt names no toolCallId (it is optional: "toolCallId names the tool call an
    approval concerns"). The call is pending: "On an interrupted run the pending calls are derived the same way; the
    interrupt outcome does not carry them" (spec 1.1, Tool Calls); the run that resumes answers it."""
    with served(_langgraph_app()) as base:
        code, chats, out = run(tmp_path, f"{base}/agent-1.0", scenario(tmp_path, "approve",
                                                                       'users: 1\nmessage: "Delete it #approve"\n'))
    assert code == 0, out
    (chat,) = chats["approve"]
    assert chat["outcome"] == "passed" and not chat["violations"], chat["violations"]
    assert "TOOL_CALL_RESULT" not in types_of([chat])


def test_langgraph_legacy_interrupt_reported_as_success_fails(tmp_path: Path):
    """The library is wrong here, by default: its legacy mode pauses the run with a CUSTOM 'on_interrupt' event and a
    RUN_FINISHED without outcome, which AG-UI reads as success ("omitted — legacy/back-compat. Treated as a normal
    completion"), and "A producer MUST NOT report an interrupted run as success" (spec 1.1, Interrupts and Resume). A
    successful run left its backend call unanswered, and chatprobe says so (R5)."""
    with served(_langgraph_app()) as base:
        code, chats, _ = run(tmp_path, f"{base}/agent", scenario(tmp_path, "approve",
                                                                 'users: 1\nmessage: "Delete it #approve"\n'))
    assert code == 1
    (chat,) = chats["approve"]
    assert "CUSTOM" in types_of([chat]) and chat["events"][-1]["wire_type"] == "RUN_FINISHED"
    assert [v["rule"] for v in chat["violations"]] == ["R5"], chat["violations"]
    assert "tool call 'call-d' (delete: a backend tool, not offered by the client) has no TOOL_CALL_RESULT" in \
        chat["violations"][0]["reason"]


# -- conversations through `chatprobe run` (a step's `thread: continue`) ----------------------------------------------

CONVERSATION = """users: 1
expect: {first_event_limit: 10s}
steps:
  - chat: {message: "Hi"}
  - chat: {message: "What is 2 + 3? #tool", thread: continue}
  - chat: {message: "And once more", thread: continue}
"""


class Requests:
    """An ASGI wrapper that keeps every request body the framework was sent (JSON), then hands the request on."""

    def __init__(self, app: Any) -> None:
        self.app, self.bodies = app, []  # type: ignore[var-annotated]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        self.bodies.append(json.loads(body))
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _pydantic_seen(messages: list[ModelMessage]) -> list[tuple[str, str]]:
    """What the model was given, as (role, text): user prompts, the model's own text, tool calls and returns."""
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
    out: list[tuple[str, str]] = []
    for m in messages:
        for p in m.parts:
            if isinstance(p, UserPromptPart):
                out.append(("user", str(p.content)))
            elif isinstance(p, TextPart) and isinstance(m, ModelResponse):
                out.append(("assistant", p.content))
            elif isinstance(p, ToolCallPart):
                out.append(("tool_call", p.tool_name))
            elif isinstance(p, ToolReturnPart):
                out.append(("tool", str(p.content)))
    return out


def _lg_seen(messages: list[Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for m in messages:
        if isinstance(m, HumanMessage):
            out.append(("user", str(m.content)))
        elif isinstance(m, AIMessage):
            if m.content:
                out.append(("assistant", str(m.content)))
            out.extend(("tool_call", c["name"]) for c in m.tool_calls)
        elif isinstance(m, ToolMessage):
            out.append(("tool", str(m.content)))
    return out


def _no_message_altered(bodies: list[dict]) -> None:
    """A message id names one message: every request that sends it again sends the same text (another text under
    the same id is an edit of it)."""
    texts: dict[str, str] = {}
    for b in bodies:
        for m in b["messages"]:
            assert texts.setdefault(m["id"], m["content"]) == m["content"], f"message {m['id']} sent altered"


def _check_conversation(chats: list[dict], bodies: list[dict], seen: list[list[tuple[str, str]]]) -> None:
    from ag_ui.core import RunAgentInput
    assert len(chats) == 3 and all(c["outcome"] == "passed" and not c["violations"] for c in chats), \
        [(c["chat_id"], c["outcome"], c["violations"]) for c in chats]
    assert "RUN_ERROR" not in types_of(chats)
    assert len({c["thread_id"] for c in chats}) == 1
    # What we sent is a RunAgentInput by the official schema, on one thread, its messages' ids unique.
    inputs = [RunAgentInput.model_validate(b) for b in bodies]
    assert len(inputs) == 3 and len({i.thread_id for i in inputs}) == 1
    for i in inputs:
        ids = [m.id for m in i.messages]
        assert len(ids) == len(set(ids)), ids
    _no_message_altered(bodies)
    sent = [[(m.role, m.content if isinstance(m.content, str) else "") for m in i.messages] for i in inputs]
    assert [r for r, _ in sent[0]] == ["user"]
    assert sent[1][0] == ("user", "Hi") and sent[1][1] == ("assistant", "Hello there.")
    assert sent[1][-1] == ("user", "What is 2 + 3? #tool")
    assert sent[2][:2] == sent[1][:2] and sent[2][2] == ("user", "What is 2 + 3? #tool")
    assert sent[2][-1] == ("user", "And once more")
    # The model of turn 2 and turn 3 saw the earlier user and assistant messages, in order.
    first_of_turn2 = next(s for s in seen if s and s[-1] == ("user", "What is 2 + 3? #tool"))
    assert first_of_turn2 == [("user", "Hi"), ("assistant", "Hello there."), ("user", "What is 2 + 3? #tool")], \
        first_of_turn2
    first_of_turn3 = next(s for s in seen if s and s[-1] == ("user", "And once more"))
    said = [x for x in first_of_turn3 if x[0] in ("user", "assistant")]
    assert said[:3] == first_of_turn2 and said[-1] == ("user", "And once more"), first_of_turn3
    assert ("assistant", "The answer is 5.") in said, first_of_turn3


def test_pydantic_ai_conversation_turns_reach_the_model_in_order(tmp_path: Path):
    seen: list[list[tuple[str, str]]] = []

    async def model(messages: list[ModelMessage], info: AgentInfo):
        seen.append(_pydantic_seen(messages))
        async for x in _pydantic_model(messages, info):
            yield x

    agent = Agent(FunctionModel(stream_function=model), output_type=[str, DeferredToolRequests])

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        return a + b

    async def endpoint(request: Request) -> Response:
        return await AGUIAdapter.dispatch_request(request, agent=agent)

    app = Requests(Starlette(routes=[Route("/agent", endpoint, methods=["POST"])]))
    with served(app) as base:
        code, chats, out = run(tmp_path, f"{base}/agent", scenario(tmp_path, "conversation", CONVERSATION))
    assert code == 0, out
    _check_conversation(chats["conversation"], app.bodies, seen)


def test_langgraph_conversation_turns_reach_the_model_in_order(tmp_path: Path):
    seen: list[list[tuple[str, str]]] = []

    class Recording(ScriptedChatModel):
        def _stream(self, messages, stop=None, run_manager=None, **kw) -> Iterator[ChatGenerationChunk]:
            seen.append(_lg_seen(messages))
            return super()._stream(messages, stop, run_manager, **kw)

    @tool
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    graph = create_agent(Recording(), tools=[add], checkpointer=InMemorySaver())
    fastapi = FastAPI()
    add_langgraph_fastapi_endpoint(fastapi, LangGraphAgent(name="agent", graph=graph), "/agent")
    app = Requests(fastapi)
    with served(app) as base:
        code, chats, out = run(tmp_path, f"{base}/agent", scenario(tmp_path, "conversation", CONVERSATION))
    assert code == 0, out
    _check_conversation(chats["conversation"], app.bodies, seen)


def test_langgraph_conversation_after_a_message_past_the_history_bound_reaches_the_model(tmp_path: Path):
    """FAILED-ON-ORIGINAL (turn 2's model saw only turn 1's message, cut short, and never 'second turn'): a first
    message past the 32 KiB history bound went into turn 2's history cut short under its id. ag-ui-langgraph reads a
    known user message id with other text as the user editing it (ag-ui-langgraph #1748) and reruns the thread from
    it: the new message is dropped and the run still passes. A message that does not fit is now left out whole."""
    seen: list[list[tuple[str, str]]] = []

    class Recording(ScriptedChatModel):
        def _stream(self, messages, stop=None, run_manager=None, **kw) -> Iterator[ChatGenerationChunk]:
            seen.append(_lg_seen(messages))
            return super()._stream(messages, stop, run_manager, **kw)

    fastapi = FastAPI()
    add_langgraph_fastapi_endpoint(fastapi, LangGraphAgent(name="agent", graph=create_agent(
        Recording(), tools=[], checkpointer=InMemorySaver())), "/agent")
    app = Requests(fastapi)
    big = "Hi " + "x" * 40_000
    body = (f'users: 1\nexpect: {{first_event_limit: 10s}}\nsteps:\n  - chat: {{message: "{big}"}}\n'
            '  - chat: {message: "second turn", thread: continue}\n')
    with served(app) as base:
        code, chats, out = run(tmp_path, f"{base}/agent", scenario(tmp_path, "big", body))
    assert code == 0, out
    assert all(c["outcome"] == "passed" for c in chats["big"]), chats["big"]
    assert seen == [[("user", big)], [("user", big), ("assistant", "Hello there."), ("user", "second turn")]], \
        [[(r, t[:20], len(t)) for r, t in s] for s in seen]
    _no_message_altered(app.bodies)
