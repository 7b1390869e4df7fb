"""An AG-UI server on the official TypeScript SDK (`@ag-ui/core` 1.0.0, `@ag-ui/encoder` 1.0.0, express 5.3.0 on
Node 20), reproduced byte for byte by a raw server here (the SDK is no dependency of this project): its response heads
and framing as captured from the real server, its events the ones that server sent. The encoder negotiates on the
request's `Accept` (`new EventEncoder({accept: req.headers.accept})`): any Accept that admits
`application/vnd.ag-ui.event+proto` (`*/*` too) gets AG-UI's protobuf encoding, 4-byte big-endian length prefixed
frames; `text/event-stream` alone gets SSE. chatprobe asks for `text/event-stream`, and its SSE stream (every AG-UI 1.0
event family, a keep-alive comment before each event) passes, live and from its recording. A user's own `Accept` that
admits the protobuf type gets a protocol_error that says what the server chose: the header's value was once taken for a
secret, so the error read "content type '[REDACTED]', not[REDACTED]"."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from .conftest import chatprobe_cli as chatprobe
from .test_sse_attacks import RawServer

pytestmark = pytest.mark.timeout(150)

PROTO = "application/vnd.ag-ui.event+proto"
# The heads express 5.3.0 wrote (curl -D), less the Date.
SSE_HEAD = (b"HTTP/1.1 200 OK\r\nX-Powered-By: Express\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"X-Accel-Buffering: no\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
PROTO_HEAD = SSE_HEAD.replace(b"text/event-stream", PROTO.encode())
# The first frame of the protobuf answer (RUN_STARTED of thread t1, run r1, its input echoed), as captured.
PROTO_FRAME = bytes.fromhex("0000003562330a02080b120274311a0272312a250a0274311202723122022a002a130a026d311204757365721a07"
                            "7765617468657242022a00")


def admits_proto(accept: str) -> bool:
    """@ag-ui/encoder's `isProtobufAccepted`: the protobuf type, or a wildcard over it, with a q above 0."""
    for item in accept.split(","):
        media, *params = [p.strip() for p in item.split(";")]
        q = next((float(p[2:]) for p in params if p.lower().startswith("q=")), 1.0)
        kind, _, sub = media.lower().partition("/")
        if q > 0 and kind in ("*", "application") and sub in ("*", PROTO.split("/")[1]):
            return True
    return False


def run_events(inp: dict) -> list[dict]:
    """The events the SDK server sent for one RunAgentInput (the test server's run: every AG-UI 1.0 family)."""
    thread, run = inp["threadId"], inp["runId"]
    return [
        {"type": "RUN_STARTED", "threadId": thread, "runId": run, "input": inp},
        {"type": "CUSTOM", "name": "progress", "value": {"pct": 0}},
        {"type": "RAW", "event": {"provider": "fake", "kind": "hello"}, "source": "fake"},
        {"type": "STATE_SNAPSHOT", "snapshot": {"items": [], "status": "start"}},
        {"type": "STEP_STARTED", "stepName": "plan"},
        {"type": "REASONING_START", "messageId": "r1"},
        {"type": "REASONING_MESSAGE_START", "messageId": "r1m", "role": "reasoning"},
        {"type": "REASONING_MESSAGE_CONTENT", "messageId": "r1m", "delta": "Thinking..."},
        {"type": "REASONING_MESSAGE_END", "messageId": "r1m"},
        {"type": "REASONING_ENCRYPTED_VALUE", "subtype": "message", "entityId": "r1m", "encryptedValue": "b3BhcXVl"},
        {"type": "REASONING_END", "messageId": "r1"},
        {"type": "STEP_FINISHED", "stepName": "plan"},
        {"type": "ACTIVITY_SNAPSHOT", "messageId": "act1", "activityType": "PLAN",
         "content": {"steps": ["a"], "done": 0}},
        {"type": "ACTIVITY_DELTA", "messageId": "act1", "activityType": "PLAN",
         "patch": [{"op": "add", "path": "/steps/-", "value": "b"}, {"op": "replace", "path": "/done", "value": 1}]},
        {"type": "TOOL_CALL_START", "toolCallId": "tc1", "toolCallName": "get_weather", "parentMessageId": "a1"},
        {"type": "TOOL_CALL_ARGS", "toolCallId": "tc1", "delta": '{"city":'},
        {"type": "TOOL_CALL_ARGS", "toolCallId": "tc1", "delta": '"Paris"}'},
        {"type": "TOOL_CALL_END", "toolCallId": "tc1"},
        {"type": "TOOL_CALL_RESULT", "messageId": "tr1", "toolCallId": "tc1", "content": "sunny", "role": "tool"},
        {"type": "STATE_DELTA", "delta": [{"op": "add", "path": "/items/-", "value": "weather"},
                                          {"op": "replace", "path": "/status", "value": "answering"}]},
        {"type": "TEXT_MESSAGE_START", "messageId": "a2", "role": "assistant"},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": "a2", "delta": "It is "},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": "a2", "delta": "sunny."},
        {"type": "TEXT_MESSAGE_END", "messageId": "a2"},
        {"type": "TEXT_MESSAGE_CHUNK", "messageId": "a3", "delta": "Also "},
        {"type": "TEXT_MESSAGE_CHUNK", "delta": "warm."},
        {"type": "MESSAGES_SNAPSHOT", "messages": [
            *inp["messages"],
            {"id": "a1", "role": "assistant", "toolCalls": [
                {"id": "tc1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
            {"id": "tr1", "role": "tool", "toolCallId": "tc1", "content": "sunny"},
            {"id": "a2", "role": "assistant", "content": "It is sunny."},
            {"id": "a3", "role": "assistant", "content": "Also warm."}]},
        {"type": "RUN_FINISHED", "threadId": thread, "runId": run, "outcome": {"type": "success"},
         "result": {"ok": True}},
    ]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def sdk_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> None:
    """`res.write(sse ? encoder.encode(e) : encoder.encodeBinary(e))` per event, each res.write a chunk of its own;
    over SSE a `: keep-alive` comment first and a `: ping` after every event."""
    accept = next((line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"accept:")), "")
    if admits_proto(accept):
        writer.write(PROTO_HEAD + chunk(PROTO_FRAME))  # (the rest of the frames: the client has gone)
        await writer.drain()
        return
    out = [SSE_HEAD, chunk(b": keep-alive\n\n")]
    for event in run_events(json.loads(body)):
        out += [chunk(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"), chunk(b": ping\n\n")]
    writer.write(b"".join(out) + b"0\r\n\r\n")
    await writer.drain()


def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "one.yaml"
    path.write_text("name: one\nexpect: {deadline: 20s, settle: 0.1s, streaming: true}\n")
    return path


async def test_the_sdk_servers_sse_stream_passes_live_and_from_its_recording(tmp_path):
    async with RawServer(sdk_server) as srv:
        code, text = await chatprobe("run", str(scenario(tmp_path)), "--target", srv.url, "--profile", "ag-ui",
                                     "--json", str(tmp_path / "r.json"), "--record", str(tmp_path / "rec"))
    assert code == 0, text
    (chat,) = json.loads((tmp_path / "r.json").read_text())["scenarios"][0]["chats"]
    assert chat["outcome"] == "passed" and chat["violations"] == [], chat
    assert len(chat["events"]) == 28, chat["events"]  # every event, none of the comments
    # The one advice: the tool call's parentMessageId names a message no event had shown when the call started.
    assert [w["rule"] for w in chat["warnings"]] == ["R5"], chat["warnings"]
    code, text = await chatprobe("check", str(tmp_path / "rec"), "--profile", "ag-ui")
    assert code == 0, text


@pytest.mark.parametrize("accept", [f"{PROTO}, text/event-stream;q=0.5", "*/*"])
async def test_an_accept_of_ones_own_that_admits_protobuf_gets_an_error_that_names_what_came(tmp_path, accept):
    """Before the fix the value of `--header 'Accept: …'` was a secret, and the error showed neither media type."""
    async with RawServer(sdk_server) as srv:
        code, text = await chatprobe("run", str(scenario(tmp_path)), "--target", srv.url, "--profile", "ag-ui",
                                     "--header", f"Accept: {accept}", "--json", str(tmp_path / "r.json"))
    assert code == 1, text
    said = (f"content type '{PROTO}', not text/event-stream (AG-UI's protobuf encoding, which chatprobe does not "
            "read: it asks for text/event-stream; an Accept header of your own that admits the protobuf type makes "
            "such a server choose it)")
    (chat,) = json.loads((tmp_path / "r.json").read_text())["scenarios"][0]["chats"]
    assert chat["outcome"] == "error" and chat["error"] == said, chat
    assert "[REDACTED]" not in text and f"content type '{PROTO}', not text/event-stream" in text, text


async def test_a_saved_protobuf_body_is_told_for_what_it_is(tmp_path):
    """`curl -N -o body -H 'Content-Type: application/json' -d @input.json URL` (curl's own `Accept: */*`, which
    admits the protobuf type) against the SDK server saves its protobuf body: `chatprobe check` said only "binary data
    (a NUL byte at byte 0, in its first line), not a recording"."""
    async with RawServer(sdk_protobuf_body) as srv:
        assert srv.server is not None
        port = srv.server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        body = json.dumps({"threadId": "t1", "runId": "r1", "state": {}, "messages": [], "tools": [], "context": [],
                           "forwardedProps": {}}).encode()
        writer.write(b"POST /agent HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        answer = await asyncio.wait_for(reader.read(), 10)  # the server closes the connection after its body
        writer.close()
    head, _, chunked = answer.partition(b"\r\n\r\n")
    assert PROTO.encode() in head, head
    saved = tmp_path / "body"
    saved.write_bytes(unchunked(chunked))
    code, text = await chatprobe("check", str(saved), "--profile", "ag-ui")
    assert code == 2, text
    assert text.strip().endswith(
        f"{saved}: AG-UI's protobuf encoding ({PROTO}: each event a 4-byte length and its bytes), not a recording: "
        "chatprobe reads AG-UI as SSE; save the body the server sends for 'Accept: text/event-stream'"), text


async def sdk_protobuf_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes,
                            body: bytes) -> None:
    """The SDK server's protobuf answer in full: its first two frames as captured, then the last chunk."""
    assert admits_proto(head.decode().split("Accept: ", 1)[1].split("\r\n", 1)[0])
    writer.write(PROTO_HEAD + chunk(PROTO_FRAME) + chunk(PROTO_FRAME_2) + b"0\r\n\r\n")
    await writer.drain()


# The second frame of the captured protobuf answer (CUSTOM 'progress').
PROTO_FRAME_2 = bytes.fromhex("000000265a240a02080a120870726f67726573731a142a120a100a037063741209110000000000000000")


def unchunked(data: bytes) -> bytes:
    out = b""
    while True:
        size, _, data = data.partition(b"\r\n")
        n = int(size, 16)
        if not n:
            return out
        out, data = out + data[:n], data[n + 2:]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    n, length = len(payload), b""
    while True:
        length += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return bytes([number << 3 | 2]) + length + payload


async def test_a_saved_protobuf_body_whose_first_event_is_kilobytes_is_told_for_what_it_is(tmp_path):
    """The SDK's RUN_STARTED echoes the run's input, the conversation so far: after a few turns its frame is past the
    4 KiB `check` looks at first, and the body read 'binary data (a NUL byte at byte 0, in its first line)'. Built as
    the captured PROTO_FRAME is, a user's message of 6,000 characters in it, then the captured second frame."""
    message = _field(1, b"m1") + _field(2, b"user") + _field(3, b"What is the weather? " * 300)
    run_input = _field(1, b"t1") + _field(2, b"r1") + _field(4, b"\x2a\x00") + _field(5, message) + \
        _field(8, b"\x2a\x00")
    event = _field(12, _field(1, b"\x08\x0b") + _field(2, b"t1") + _field(3, b"r1") + _field(5, run_input))
    assert event[:1] == PROTO_FRAME[4:5]  # RUN_STARTED, as the captured frame's field
    saved = tmp_path / "body"
    saved.write_bytes(len(event).to_bytes(4, "big") + event + PROTO_FRAME_2)
    code, text = await chatprobe("check", str(saved), "--profile", "ag-ui")
    assert code == 2, text
    assert f"{saved}: AG-UI's protobuf encoding ({PROTO}: each event a 4-byte length" in text, text

    saved.write_bytes(b"\0\0\0\x05\x62" + b"x" * 5000)  # a frame of 5 bytes, then what is no frame: binary data
    code, text = await chatprobe("check", str(saved), "--profile", "ag-ui")
    assert code == 2 and "binary data (a NUL byte at byte 0, in its first line)" in text, text
