"""AG-UI streams that are valid but unlike agentsim's, and subtly broken ones, each from a raw HTTP/1.1 server on
127.0.0.1 (or a saved body through `chatprobe check`), judged as the AG-UI 1.1 specification says: its HTTP + SSE
binding (docs.ag-ui.com/spec/1.1/basic/transports/http-sse), Subagents (ownership and lifecycle), Interrupts and
Activity pages. Tests marked FAILED-ON-ORIGINAL failed on the code before they were added; the parametrised variants
pin valid framings so that none starts failing.
"""
from __future__ import annotations

import json

import pytest

from harness.events import Outcome, Rule

from .test_sse_attacks import HEAD, RawServer, chat, event

pytestmark = pytest.mark.timeout(60)


def run_events(body: bytes) -> list[dict]:
    """A valid AG-UI run for the request `body`, as event objects."""
    inp = json.loads(body)
    thread, run = inp["threadId"], inp["runId"]
    return [{"type": "RUN_STARTED", "threadId": thread, "runId": run, "timestamp": 1_700_000_000_000},
            {"type": "TEXT_MESSAGE_START", "messageId": "a1", "role": "assistant"},
            {"type": "TEXT_MESSAGE_CONTENT", "messageId": "a1", "delta": "42"},
            {"type": "TEXT_MESSAGE_END", "messageId": "a1"},
            {"type": "RUN_FINISHED", "threadId": thread, "runId": run}]


def sse(events: list[dict], line_end: bytes = b"\n", prefix: bytes = b"data: ") -> bytes:
    return b"".join(prefix + json.dumps(e).encode() + line_end + line_end for e in events)


def framed(kind: str, stream: bytes) -> bytes:
    """The HTTP response carrying `stream`: by Content-Length, chunked (in small chunks), or to the connection's
    close."""
    if kind == "length":
        return HEAD + b"Content-Length: %d\r\n\r\n" % len(stream) + stream
    if kind == "chunked":
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(stream[i:i + 7]), stream[i:i + 7]) for i in range(0, len(stream), 7))
        return HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    return HEAD + b"Connection: close\r\n\r\n" + stream


async def answer(response) -> object:
    """One chat against a server that writes `response(request body)` (whole) and closes."""
    async def handler(reader, writer, head, body):
        writer.write(response(body))
        await writer.drain()

    async with RawServer(handler) as server:
        return await chat(server.url)


# -- valid framings -------------------------------------------------------------------------------------------------

def _no_last_blank_line(body: bytes) -> bytes:
    return sse(run_events(body))[:-1]


VALID = {
    "lf": lambda b: sse(run_events(b)),
    "crlf": lambda b: sse(run_events(b), b"\r\n"),
    "lone-cr": lambda b: sse(run_events(b), b"\r"),
    "no-space-after-colon": lambda b: sse(run_events(b), prefix=b"data:"),
    "bom": lambda b: b"\xef\xbb\xbf" + sse(run_events(b)),
    "fields-and-comments": lambda b: b": keep-alive\n\n" + b"".join(
        b"event: %s\nid: %d\nretry: 500\n: ping\n%s" % (e["type"].encode(), i, event(**e))
        for i, e in enumerate(run_events(b))),
    "data-split-over-lines": lambda b: b"".join(
        b"data: " + json.dumps(e, indent=1).replace("\n", "\ndata: ").encode() + b"\n\n" for e in run_events(b)),
    # FAILED-ON-ORIGINAL (incomplete, "truncated run"): the body ends right after the last event's data line, or
    # inside it, with no empty line. The WHATWG parser discards such an event; AG-UI's reference client (HttpAgent's
    # parseSSEStream) dispatches what its buffer holds when the body completes, and so does chatprobe now.
    "last-event-without-blank-line": _no_last_blank_line,
    "last-event-without-line-end": lambda b: sse(run_events(b))[:-2],
}


@pytest.mark.parametrize("kind", ["length", "chunked", "close"])
@pytest.mark.parametrize("variant", list(VALID))
async def test_valid_sse_framings_pass(variant, kind):
    result = await answer(lambda body: framed(kind, VALID[variant](body)))
    assert result.outcome is Outcome.PASSED, (result.violations, result.note)
    assert [e.wire_type for e in result.events][-1] == "RUN_FINISHED"


async def test_charset_parameter_and_keep_alive_pass():
    """`text/event-stream; charset=utf-8` and a server that keeps the connection open after a Content-Length body."""
    async def keep_open(reader, writer, head, body):
        stream = sse(run_events(body))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nConnection: keep-alive\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(stream), stream))
        await writer.drain()
        await reader.read()  # until the client closes its end

    async with RawServer(keep_open, within=20) as server:
        result = await chat(server.url)
    assert result.outcome is Outcome.PASSED, result.violations


async def test_a_body_cut_inside_its_last_event_is_incomplete_and_says_what_came():
    """Dispatching the last event at the body's end is no licence to pass a cut one: half an event is an R12 (not
    JSON), and the run without its terminal event is incomplete."""
    result = await answer(lambda body: framed("close", sse(run_events(body)[:2]) + b'data: {"type":"TEXT_MESS'))
    assert result.outcome is Outcome.INCOMPLETE, result
    assert [v.rule for v in result.violations] == [Rule.R12] and "not JSON" in result.violations[0].reason


async def test_a_chunked_body_cut_inside_its_last_event_dispatches_nothing():
    """Broken HTTP framing (a chunk announced, never sent whole) is no clean end: the event it cut is not taken."""
    def cut(body: bytes) -> bytes:
        stream = sse(run_events(body))[:-1]
        return HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % (len(stream) + 10) + stream

    result = await answer(cut)
    assert result.outcome is not Outcome.PASSED, result
    assert [e.wire_type for e in result.events][-1] == "TEXT_MESSAGE_END"
    assert any(v.rule is Rule.R12 and "HTTP" in v.reason for v in result.violations), result.violations


def test_a_saved_body_whose_last_event_has_no_blank_line_passes_check(tmp_path):
    """FAILED-ON-ORIGINAL: `chatprobe check` of the same body read the last event as cut off (incomplete)."""
    from harness.offline import check_files
    from harness.profiles import load_profile
    from harness.scenario import Scenario

    path = tmp_path / "body.sse"
    path.write_bytes(_no_last_blank_line(b'{"threadId": "t1", "runId": "r1"}'))
    [run] = check_files([path], load_profile("ag-ui"), Scenario(name="t"))
    assert [r.outcome for r in run.results] == [Outcome.PASSED], [r.violations for r in run.results]


# -- valid payloads unlike agentsim's -------------------------------------------------------------------------------

def _run(body: bytes, *middle: dict, **finish: object) -> list[dict]:
    inp = json.loads(body)
    thread, run = inp["threadId"], inp["runId"]
    return [{"type": "RUN_STARTED", "threadId": thread, "runId": run}, *middle,
            {"type": "RUN_FINISHED", "threadId": thread, "runId": run, **finish}]


PAYLOADS = {
    "chunk-only text": lambda b: _run(b, {"type": "TEXT_MESSAGE_CHUNK", "messageId": "m1", "delta": "4"},
                                      {"type": "TEXT_MESSAGE_CHUNK", "delta": "2"}),
    "chunk-only tool call and answer": lambda b: _run(
        b, {"type": "TOOL_CALL_CHUNK", "toolCallId": "c1", "toolCallName": "calc", "delta": '{"x":'},
        {"type": "TOOL_CALL_CHUNK", "delta": " 6}"},
        {"type": "TOOL_CALL_RESULT", "messageId": "r1", "toolCallId": "c1", "content": "42"},
        {"type": "TEXT_MESSAGE_CHUNK", "messageId": "m1", "role": "assistant", "delta": "42"}),
    "metadata-only last chunk": lambda b: _run(
        b, {"type": "TEXT_MESSAGE_CHUNK", "messageId": "m1", "delta": "42"},
        {"type": "TEXT_MESSAGE_CHUNK", "metadata": {"finishReason": "stop"}}),
    "reasoning chunks then text": lambda b: _run(
        b, {"type": "REASONING_START", "messageId": "rs"},
        {"type": "REASONING_MESSAGE_CHUNK", "messageId": "rm", "delta": "hm"},
        {"type": "REASONING_END", "messageId": "rs"},
        {"type": "TEXT_MESSAGE_START", "messageId": "m1"}, {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m1", "delta": "42"},
        {"type": "TEXT_MESSAGE_END", "messageId": "m1"}),
    "interleaved message, call and step": lambda b: _run(
        b, {"type": "STEP_STARTED", "stepName": "answer"},
        {"type": "TEXT_MESSAGE_START", "messageId": "m1", "role": "assistant"},
        {"type": "TOOL_CALL_START", "toolCallId": "c1", "toolCallName": "calc", "parentMessageId": "m1"},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m1", "delta": "4"},
        {"type": "TOOL_CALL_ARGS", "toolCallId": "c1", "delta": "{}"}, {"type": "TOOL_CALL_END", "toolCallId": "c1"},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m1", "delta": "2"}, {"type": "TEXT_MESSAGE_END", "messageId": "m1"},
        {"type": "TOOL_CALL_RESULT", "messageId": "r1", "toolCallId": "c1", "content": [{"type": "text", "text": "42"}]},
        {"type": "STEP_FINISHED", "stepName": "answer"}),
    "snapshots, null and falsy state, patch extras": lambda b: _run(
        b, {"type": "STATE_SNAPSHOT", "snapshot": None}, {"type": "STATE_SNAPSHOT", "snapshot": ["a", "b"]},
        {"type": "STATE_DELTA", "delta": [{"op": "remove", "path": "/1", "value": "b"}]},
        {"type": "MESSAGES_SNAPSHOT", "messages": []},
        {"type": "TEXT_MESSAGE_CHUNK", "messageId": "m1", "delta": "42"}),
    "passthrough and optional fields": lambda b: _run(
        b, {"type": "RAW", "event": {"x": None}, "source": "p", "timestamp": 0},
        {"type": "CUSTOM", "name": "n", "value": None, "metadata": {"k": None}, "rawEvent": [1]},
        {"type": "TEXT_MESSAGE_CHUNK", "messageId": "m1", "delta": "42", "timestamp": 1_700_000_000_123}),
    "success outcome with usage and result": lambda b: _run(
        b, {"type": "TEXT_MESSAGE_CHUNK", "messageId": "m1", "delta": "42"},
        outcome={"type": "success"}, result={"answer": 42},
        usage=[{"provider": "p", "model": "m", "inputTokens": 3, "outputTokens": 1, "totalTokens": 4}]),
    "subagent chunk lane closed by its terminal": lambda b: _run(
        b, {"type": "SUBAGENT_STARTED", "subagentRunId": "s1", "name": "writer"},
        {"type": "TEXT_MESSAGE_CHUNK", "messageId": "m1", "delta": "4", "subagentRunId": "s1"},
        {"type": "TEXT_MESSAGE_CHUNK", "delta": "2", "subagentRunId": "s1"},
        {"type": "SUBAGENT_FINISHED", "subagentRunId": "s1"}),
}


@pytest.mark.parametrize("variant", list(PAYLOADS))
async def test_valid_payload_variants_pass(variant):
    result = await answer(lambda body: framed("chunked", sse(PAYLOADS[variant](body))))
    assert result.outcome is Outcome.PASSED, result.violations
    assert not result.warnings, result.warnings
