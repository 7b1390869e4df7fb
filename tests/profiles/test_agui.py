"""The ag-ui profile against AG-UI servers built from the ag-ui-protocol package, over real loopback SSE and WebSocket."""
from __future__ import annotations

import asyncio
import gzip
import json
import tracemalloc
import zlib

import pytest
from ag_ui.core import (
    EventType,
    ReasoningEndEvent,
    ReasoningMessageContentEvent,
    ReasoningMessageEndEvent,
    ReasoningMessageStartEvent,
    ReasoningStartEvent,
    RunAgentInput,
    RunErrorEvent,
    RunFinishedEvent,
    RunStartedEvent,
    StepFinishedEvent,
    StepStartedEvent,
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
from harness.events import Outcome, Role, Rule
from harness.flow import ChatOptions
from harness.profiles import load_profile
from harness.scenario import Expect, Scenario
from harness.sinks import Sink
from harness.targets import Target, TokenProvider

from .servers import AguiSSEServer, Response, WsServer

PROFILE = load_profile("ag-ui")
FAST = ChatOptions(settle=0.05)


class Recorder(Sink):
    def __init__(self) -> None:
        self.connections: list[str] = []

    def connection_attempt(self, scenario: str, result: str) -> None:
        self.connections.append(result)


async def chat(url: str, *, deadline: float = 10.0, streaming: bool = False, token: str | None = None,
               connect_timeout: float = 5.0, sink: Sink | None = None, ca_file: str | None = None) -> ChatResult:
    target = Target(url=url, profile=PROFILE, name="t", tokens=TokenProvider(token=token), ca_file=ca_file)
    scenario = Scenario(name="t", expect=Expect(deadline=deadline, streaming=streaming))
    exp = scenario.expectations(PROFILE)
    session = Session(target, "u1", "t", sink or Sink(), connect_timeout=connect_timeout)
    try:
        return await session.chat("What is 6 * 7?", exp, FAST)
    finally:
        await session.close()


def full_run(inp: RunAgentInput):
    """Every kind of AG-UI event a well-behaved server sends, properly nested."""
    yield RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id)
    yield StepStartedEvent(step_name="plan")
    yield ReasoningStartEvent(message_id="rs1")
    yield ReasoningMessageStartEvent(message_id="rm1", role="reasoning")
    yield ReasoningMessageContentEvent(message_id="rm1", delta="multiply")
    yield ReasoningMessageEndEvent(message_id="rm1")
    yield ReasoningEndEvent(message_id="rs1")
    yield StepFinishedEvent(step_name="plan")
    yield ToolCallStartEvent(tool_call_id="c1", tool_call_name="calculator")
    yield ToolCallArgsEvent(tool_call_id="c1", delta='{"expr": ')
    yield ToolCallArgsEvent(tool_call_id="c1", delta='"6*7"}')
    yield ToolCallEndEvent(tool_call_id="c1")
    yield ToolCallResultEvent(message_id="tr1", tool_call_id="c1", content="42")
    yield TextMessageStartEvent(message_id="a1", role="assistant")
    yield TextMessageContentEvent(message_id="a1", delta="It is ")
    yield TextMessageContentEvent(message_id="a1", delta="42.")
    yield TextMessageEndEvent(message_id="a1")
    yield RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id)


def text_only(inp: RunAgentInput):
    yield RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id)
    yield TextMessageStartEvent(message_id="a1", role="assistant")
    yield TextMessageContentEvent(message_id="a1", delta="hi")
    yield TextMessageEndEvent(message_id="a1")
    yield RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id)


def rules(result: ChatResult) -> list[str]:
    return [v.rule for v in result.violations]


async def test_full_run_passes_and_the_request_is_a_valid_run_agent_input():
    async with AguiSSEServer(full_run) as server:
        result = await chat(server.url, streaming=True, token="tok-123")
    assert result.outcome is Outcome.PASSED, result.violations
    assert [e.wire_type for e in result.events][0] == "RUN_STARTED" and len(result.events) == 18
    assert {Role.AGENT_THINKING, Role.TOOL_EXECUTING, Role.TOOL_COMPLETED, Role.PARTIAL_RESULT} <= set(result.event_delays)
    (request,) = server.requests
    assert request["messages"] == [{"id": request["messages"][0]["id"], "role": "user", "content": "What is 6 * 7?"}]
    assert request["runId"] == result.run_id and request["threadId"] == result.thread_id
    assert request["tools"] == [] and request["context"] == [] and request["forwardedProps"] == {} and request["state"] == {}
    headers = server.headers[0]
    assert headers["authorization"] == "Bearer tok-123"
    assert headers["accept"] == "text/event-stream" and headers["content-type"] == "application/json"


async def test_minimal_run_passes_without_thinking_or_tools():
    async with AguiSSEServer(text_only) as server:
        result = await chat(server.url, streaming=True)
    assert result.outcome is Outcome.PASSED, result.violations
    assert result.missing == []


async def test_stream_split_into_tiny_pieces_is_reassembled():
    async with AguiSSEServer(full_run, chunk_size=3) as server:
        result = await chat(server.url)
    assert result.outcome is Outcome.PASSED, result.violations
    assert len(result.events) == 18


async def test_sse_spec_details_comments_event_field_multiline_data_crlf():
    def script(inp: RunAgentInput):
        started = json.dumps({"type": "RUN_STARTED", "threadId": inp.thread_id, "runId": inp.run_id})
        cut = started.index(", ") + 1  # after a comma, where JSON allows the newline the data lines are joined with
        head, tail = started[:cut], started[cut + 1:]
        yield b": a comment, ignored\n\n"
        yield b"retry: 1000\n\n"  # no data: not dispatched
        yield f"event: message\ndata: {head}\ndata:{tail}\n\n".encode()  # multi-line data joins with a newline
        yield b'id: 7\r\ndata: {"type":"TEXT_MESSAGE_START","messageId":"a1"}\r\n\r\n'
        yield b'data: {"type":"TEXT_MESSAGE_CONTENT","messageId":"a1","delta":"x"}\r\r'
        yield b'data: {"type":"TEXT_MESSAGE_END","messageId":"a1"}\n\n'
        yield (f'data: {{"type":"RUN_FINISHED","threadId":"{inp.thread_id}","runId":"{inp.run_id}"}}\n\n').encode()

    async with AguiSSEServer(script, chunk_size=5) as server:
        result = await chat(server.url)
    assert result.outcome is Outcome.PASSED, result.violations
    assert [e.wire_type for e in result.events] == [
        "RUN_STARTED", "TEXT_MESSAGE_START", "TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END", "RUN_FINISHED"]


# -- each ordering fault fails with its rule --

def _with(inp: RunAgentInput, *middle, start=True, finish=True):
    if start:
        yield RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id)
    yield from middle
    if finish:
        yield RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id)


FAULTS = {
    "event before RUN_STARTED": (
        lambda inp: [TextMessageStartEvent(message_id="a1", role="assistant"), *_with(inp,
                     TextMessageContentEvent(message_id="a1", delta="x"), TextMessageEndEvent(message_id="a1"))],
        "R1", "first event is TEXT_MESSAGE_START, not agent_started"),
    "event after RUN_FINISHED": (
        lambda inp: [*_with(inp), TextMessageStartEvent(message_id="a1", role="assistant")],
        "R4", "TEXT_MESSAGE_START after the terminal event"),
    "TEXT_MESSAGE_CONTENT without START": (
        lambda inp: _with(inp, TextMessageContentEvent(message_id="a1", delta="x")),
        "R5", "continues text message 'a1', which is not open"),
    "TOOL_CALL_ARGS without START": (
        lambda inp: _with(inp, ToolCallArgsEvent(tool_call_id="c9", delta="{}")),
        "R5", "TOOL_CALL_ARGS continues tool call 'c9', which is not open"),
    "TEXT_MESSAGE_CONTENT of another message id": (
        lambda inp: _with(inp, TextMessageStartEvent(message_id="a1", role="assistant"),
                          TextMessageContentEvent(message_id="a2", delta="x"), TextMessageEndEvent(message_id="a1")),
        "R5", "which is not open"),
    "RUN_FINISHED with a text message open": (
        lambda inp: _with(inp, TextMessageStartEvent(message_id="a1", role="assistant"),
                          TextMessageContentEvent(message_id="a1", delta="x")),
        "R5", "text message a1 still open at the terminal event"),
    "RUN_FINISHED with a tool call open": (
        lambda inp: _with(inp, ToolCallStartEvent(tool_call_id="c1", tool_call_name="calc"),
                          ToolCallArgsEvent(tool_call_id="c1", delta="{}")),
        "R5", "tool call c1 still open at the terminal event"),
    "RUN_FINISHED with a step open": (
        lambda inp: _with(inp, StepStartedEvent(step_name="plan")),
        "R5", "step plan still open at the terminal event"),
    "RUN_FINISHED with a reasoning message open": (
        lambda inp: _with(inp, ReasoningMessageStartEvent(message_id="r1", role="reasoning")),
        "R5", "reasoning message r1 still open at the terminal event"),
    "two RUN_FINISHED": (
        lambda inp: [*_with(inp), RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id)],
        "R3", "second terminal event"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_ordering_fault_fails_with_its_rule(fault):
    script, rule, reason = FAULTS[fault]
    async with AguiSSEServer(script) as server:
        result = await chat(server.url)
    assert result.outcome is Outcome.FAILED
    assert rules(result) == [rule], result.violations
    assert reason in result.violations[0].reason


async def test_stream_that_ends_without_a_terminal_event_is_incomplete_at_once():
    def truncated(inp: RunAgentInput):
        yield RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id)
        yield TextMessageStartEvent(message_id="a1", role="assistant")
        yield TextMessageContentEvent(message_id="a1", delta="and then")

    async with AguiSSEServer(truncated) as server:
        result = await chat(server.url, deadline=30.0)
    assert result.outcome is Outcome.INCOMPLETE
    assert "ended the event stream before the run's terminal event" in result.note
    assert Role.AGENT_COMPLETED in result.missing
    # Judged when the stream ended, not at the 30 s deadline (a chat cut short after its deadline is an R10 too).
    assert Rule.R10 not in rules(result), result.violations


async def test_run_error_is_a_fatal_error_event():
    def failing(inp: RunAgentInput):
        yield RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id)
        yield RunErrorEvent(message="model overloaded", code="OVERLOADED")

    async with AguiSSEServer(failing) as server:
        result = await chat(server.url)
    assert result.outcome is Outcome.FAILED
    assert rules(result) == ["R13"] and "unexpected fatal error event (RUN_ERROR)" in result.violations[0].reason
    assert result.events[-1].role is Role.ERROR_EVENT and not result.events[-1].recoverable


async def test_run_error_expected_by_the_scenario_passes():
    def failing(inp: RunAgentInput):
        yield RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id)
        yield RunErrorEvent(message="bad input")

    async with AguiSSEServer(failing) as server:
        target = Target(url=server.url, profile=PROFILE, name="t")
        scenario = Scenario(name="t", expect=Expect(deadline=10))
        from harness.scenario import ChatStep

        exp = scenario.expectations(PROFILE, ChatStep(expect_error="fatal"))
        session = Session(target, "u1", "t", Sink(), connect_timeout=5)
        try:
            result = await session.chat("x", exp, FAST)
        finally:
            await session.close()
    assert result.outcome is Outcome.PASSED, result.violations


async def test_chats_in_a_row_each_open_their_own_stream():
    async with AguiSSEServer(text_only) as server:
        target = Target(url=server.url, profile=PROFILE, name="t")
        exp = Scenario(name="t").expectations(PROFILE)
        sink = Recorder()
        session = Session(target, "u1", "t", sink, connect_timeout=5)
        try:
            results = [await session.chat(f"message {i}", exp, FAST) for i in range(3)]
        finally:
            await session.close()
    assert [r.outcome for r in results] == [Outcome.PASSED] * 3
    assert len({r.run_id for r in results}) == 3 and len(server.requests) == 3
    assert sink.connections == ["ok"] * 3


# -- connection failures, classified with the WebSocket transport's labels --

async def test_refused(refused_port):
    sink = Recorder()
    result = await chat(f"http://127.0.0.1:{refused_port()}/agent", sink=sink)
    assert (result.outcome, result.error_kind) == (Outcome.ERROR, "refused")
    assert sink.connections == ["refused"]


@pytest.mark.parametrize("status,kind", [(401, "auth_failed"), (403, "auth_failed"), (500, "protocol_error")])
async def test_http_status(status, kind):
    async with AguiSSEServer(text_only, response=Response(status=status, content_type="application/json")) as server:
        result = await chat(server.url)
    assert (result.outcome, result.error_kind) == (Outcome.ERROR, kind)
    assert f"HTTP {status}" in (result.error or "")


async def test_wrong_content_type_is_a_protocol_error():
    async with AguiSSEServer(text_only, response=Response(content_type="application/json")) as server:
        result = await chat(server.url)
    assert (result.outcome, result.error_kind) == (Outcome.ERROR, "protocol_error")
    assert "text/event-stream" in (result.error or "")


def _raw_deflate(data: bytes) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return z.compress(data) + z.flush()


def _two_gzip_members(data: bytes) -> bytes:
    return gzip.compress(data[: len(data) // 2]) + gzip.compress(data[len(data) // 2:])


@pytest.mark.parametrize("coding,encode", [("gzip", gzip.compress), ("x-gzip", gzip.compress),
                                           ("gzip", _two_gzip_members), ("deflate", zlib.compress),
                                           ("deflate", _raw_deflate)])
async def test_a_compressed_stream_is_unpacked_as_a_browser_unpacks_it(coding, encode):
    """FAILED-ON-ORIGINAL (protocol_error: "the server encoded the event stream … though the client asked for
    identity"): a server behind nginx that compresses its event stream (gzip on) works for every browser, whose
    EventSource and fetch() offer gzip and deflate and unpack them. The client offers them too and unpacks the stream
    as it comes (here in 7-byte writes), bounded as the unpacked bytes go (below)."""
    async with AguiSSEServer(full_run, chunk_size=7, response=Response(content_encoding=coding, encode=encode)) as server:
        result = await chat(server.url, streaming=True)
    assert server.headers[0]["accept-encoding"] == "gzip, deflate"
    assert result.outcome is Outcome.PASSED, (result.error, result.violations)
    assert [e.wire_type for e in result.events][0] == "RUN_STARTED" and result.events[-1].wire_type == "RUN_FINISHED"


async def test_a_gzip_bomb_is_bounded_by_the_size_limit_of_what_it_unpacks_to():
    """httpx would unpack each read whole, unbounded (3 kB of brotli were 2 GiB): the client unpacks 64 KiB at a time
    into the bounded SSE parser, so 64 MiB of one unfinished line, 64 kB of gzip, costs about the 4 MiB line limit
    and is the R12 of an oversized line, as it would be unpacked."""
    bomb = gzip.compress(b"data: " + b"A" * (64 << 20), compresslevel=9)
    assert len(bomb) < 200_000
    async with AguiSSEServer(text_only, response=Response(content_encoding="gzip", body=bomb)) as server:
        tracemalloc.start()
        try:
            result = await chat(server.url)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert result.outcome is not Outcome.PASSED
    assert any(v.rule is Rule.R12 and "line longer than the" in v.reason for v in result.violations), result.violations
    assert peak < 16 << 20, f"peak {peak} bytes"


@pytest.mark.parametrize("coding", ["br", "zstd", "gzip, gzip", "compress"])
async def test_a_stream_in_a_coding_not_offered_is_refused_unread(coding):
    """A coding the client did not offer (RFC 9110: the server sends none of those) is a protocol error before a byte
    of the body is unpacked, naming what was offered."""
    async with AguiSSEServer(text_only, response=Response(content_encoding=coding, body=b"\x1b\x00junk")) as server:
        result = await chat(server.url)
    assert (result.outcome, result.error_kind) == (Outcome.ERROR, "protocol_error")
    assert f"Content-Encoding {coding!r}" in (result.error or "") and "offers gzip, deflate" in (result.error or "")


@pytest.mark.parametrize("encode", [_raw_deflate, zlib.compress, gzip.compress])
async def test_a_compressed_stream_read_a_byte_at_a_time_is_unpacked(encode):
    """FAILED-ON-ORIGINAL for raw deflate (R12 "cannot be unpacked: incorrect header check"): a deflate stream is
    told zlib or raw by its first two bytes (zlib's header), but the client decided on the first read, and a
    server whose first HTTP chunk held one byte had its raw deflate stream refused as corrupt. Now nothing is decided
    before two bytes came; every read here is one chunk of one byte."""
    coding = "gzip" if encode is gzip.compress else "deflate"
    async with AguiSSEServer(full_run, chunk_size=1,
                             response=Response(content_encoding=coding, encode=encode, chunked=True)) as server:
        result = await chat(server.url, streaming=True)
    assert result.outcome is Outcome.PASSED, (result.error, result.violations)


@pytest.mark.parametrize("damage", ["corrupt", "cut"])
async def test_a_compressed_stream_that_cannot_be_unpacked_is_an_r12(damage):
    """A gzip body that is not gzip, or one cut before its gzip end (with HTTP framing intact): the stream is broken
    as a body cut short is, an R12, never read as far as it goes and passed."""
    def encode(data: bytes) -> bytes:
        packed = gzip.compress(data)
        return packed[:-12] if damage == "cut" else packed[:20] + b"\xff" * 40 + packed[60:]

    async with AguiSSEServer(full_run, response=Response(content_encoding="gzip", encode=encode)) as server:
        result = await chat(server.url)
    assert result.outcome is not Outcome.PASSED
    assert any(v.rule is Rule.R12 and "gzip-encoded event stream" in v.reason for v in result.violations), \
        result.violations


async def test_no_answer_within_the_connect_deadline_is_a_timeout():
    async with AguiSSEServer(text_only, response=Response(hang=True)) as server:
        result = await chat(server.url, connect_timeout=0.3)
    # The connect deadline's verdict (it names it), not the chat's 10 s deadline.
    assert (result.outcome, result.error_kind) == (Outcome.ERROR, "timeout")
    assert "0.3s" in (result.error or ""), result.error


async def test_https_to_a_plain_http_server_is_a_tls_error():
    async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain_http, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        result = await chat(f"https://127.0.0.1:{port}/agent")
    finally:
        server.close()
    assert (result.outcome, result.error_kind) == (Outcome.ERROR, "tls_error")


# -- the same profile over WebSocket --

def _agui_over_ws(request: dict):
    inp = RunAgentInput.model_validate(request)
    for ev in full_run(inp):
        yield ev.model_dump_json(by_alias=True, exclude_none=True)


async def test_agui_over_websocket_passes():
    async with WsServer(_agui_over_ws) as server:
        result = await chat(server.url, streaming=True)
    assert result.outcome is Outcome.PASSED, result.violations
    assert len(result.events) == 18 and result.events[-1].wire_type == EventType.RUN_FINISHED.value


async def test_agui_over_websocket_fault_is_caught():
    def bad(request: dict):
        inp = RunAgentInput.model_validate(request)
        for ev in _with(inp, ToolCallStartEvent(tool_call_id="c1", tool_call_name="calc")):
            yield ev.model_dump_json(by_alias=True, exclude_none=True)

    async with WsServer(bad) as server:
        result = await chat(server.url)
    assert rules(result) == ["R5"] and "tool call c1 still open" in result.violations[0].reason


async def test_a_second_chat_in_flight_on_one_sse_user_is_an_explained_error():
    async with AguiSSEServer(text_only, chunk_size=1) as server:
        target = Target(url=server.url, profile=PROFILE, name="t")
        exp = Scenario(name="t").expectations(PROFILE)
        session = Session(target, "u1", "t", Sink(), connect_timeout=5)
        try:
            first, second = await asyncio.gather(session.chat("one", exp, FAST), session.chat("two", exp, FAST))
        finally:
            await session.close()
    assert first.outcome is Outcome.PASSED, first.violations
    assert (second.outcome, second.error_kind) == (Outcome.ERROR, "protocol_error")
    assert "one chat at a time" in (second.error or "")
