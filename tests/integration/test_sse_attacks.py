"""chatprobe's SSE transport against hostile or broken HTTP servers: each test's server is a raw asyncio TCP server
on 127.0.0.1 speaking HTTP/1.1 by hand, so it can send what no framework would (a stream of tiny `data:` lines, a
token echoed in a response header, a chunked body cut short). Every wait is bounded; memory is measured in bytes.

Each test here failed on the code before this file was added.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import tracemalloc
from collections.abc import Awaitable, Callable

from harness import redact
from harness.checker import ChatResult
from harness.client import Session
from harness.events import Outcome, Rule
from harness.flow import ChatOptions
from harness.profiles import load_profile
from harness.scenario import Expect, Scenario
from harness.sinks import Sink
from harness.targets import Target, TokenProvider
from harness.transports import ConnectSettings

AGUI = load_profile("ag-ui")
LIMIT = ConnectSettings(url="http://x").max_size  # 4 MiB: what one SSE line or event may make the client buffer
MiB = 1024 * 1024

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes, bytes], Awaitable[None]]


class RawServer:
    """An HTTP/1.1 server written by hand: it reads one request (head and Content-Length body) per connection and
    hands it to `handler(reader, writer, head, body)`, which writes whatever it likes; the connection is then
    closed."""

    def __init__(self, handler: Handler, within: float = 60) -> None:
        self.handler = handler
        self.within = within  # how long one connection is served at most
        self.server: asyncio.Server | None = None
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.within):
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                body = await reader.readexactly(int(length.group(1))) if length else b""
                await self.handler(reader, writer, head, body)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # the client went away (it dropped the stream): nothing more to send
        finally:
            writer.close()

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/agent"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await asyncio.wait_for(self.server.wait_closed(), 10)


def event(**fields: object) -> bytes:
    return b"data: " + json.dumps(fields).encode() + b"\n\n"


def whole_run(body: bytes) -> bytes:
    """A valid AG-UI run for the request `body`: RUN_STARTED, one text message, RUN_FINISHED."""
    inp = json.loads(body)
    thread, run = inp["threadId"], inp["runId"]
    return (event(type="RUN_STARTED", threadId=thread, runId=run)
            + event(type="TEXT_MESSAGE_START", messageId="a1", role="assistant")
            + event(type="TEXT_MESSAGE_CONTENT", messageId="a1", delta="42")
            + event(type="TEXT_MESSAGE_END", messageId="a1")
            + event(type="RUN_FINISHED", threadId=thread, runId=run))


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"


class Collector(Sink):
    def __init__(self) -> None:
        self.results: list[ChatResult] = []

    def chat_finished(self, result: ChatResult) -> None:
        self.results.append(result)


@dataclasses.dataclass
class LimitedTarget(Target):
    """A target whose connections' size limit (`ConnectSettings.max_size`, 4 MiB) is `max_size`."""

    max_size: int = LIMIT

    def settings_for(self, user_id: str, connect_timeout: float) -> ConnectSettings:
        return dataclasses.replace(super().settings_for(user_id, connect_timeout), max_size=self.max_size)


async def chat(url: str, *, token: str | None = None, deadline: float = 20, settle: float = 0.1,
               max_size: int = LIMIT) -> ChatResult:
    """One chat over SSE, bounded: the server has `deadline` seconds, the whole chat twice that."""
    target = LimitedTarget(url=url, profile=AGUI, name="t", tokens=TokenProvider(token), max_size=max_size)
    session = Session(target, "u1", "t", Collector(), connect_timeout=5)
    try:
        exp = Scenario(name="t", expect=Expect(deadline=deadline)).expectations(AGUI)
        return await asyncio.wait_for(session.chat("What is 6 * 7?", exp, ChatOptions(settle=settle)), 2 * deadline)
    finally:
        await asyncio.wait_for(session.close(), 10)


async def test_a_stream_of_tiny_data_lines_costs_about_the_limit_in_bytes():
    """Each `data:` line of an event was kept as a bytes object of its own in a list: three bytes of data on a line
    cost some 43 bytes of memory, so an event just under the 4 MiB limit (or a server that sends 11 MiB of
    `data:xy` lines before the client drops the stream) held about 60 MB, fifteen times the documented bound. The
    limit is set to 1 MiB here: the same code, a quarter of the lines to parse (under tracemalloc)."""
    limit = 1 << 20
    lines = b"data:xy\n" * 8192  # 64 KiB a write; each line counts 3 bytes (its data and the newline that joins it)
    total = (limit // 3) * 8 + 2 * len(lines)  # just past the limit

    async def tiny_lines(reader, writer, head, body):
        writer.write(HEAD + b"\r\n")
        sent = 0
        while sent < total:
            writer.write(lines)
            sent += len(lines)
            await writer.drain()

    async with RawServer(lambda r, w, h, b: w.drain()) as warm:  # the lazy imports of a first chat, not measured
        await chat(warm.url, deadline=5)
    # The R12 comes when the bytes past the limit have been read, however long that takes (traced, on a busy machine,
    # more than 20 s): the chat's deadline and the server's bound are only there so that a hang ends, and a deadline
    # run out first (R9, R10, no R12) would say nothing about the bound under test.
    async with RawServer(tiny_lines, within=150) as server:
        tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()
            result = await chat(server.url, deadline=120, max_size=limit)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert any(v.rule is Rule.R12 and f"event larger than the {limit} byte limit" in v.reason
               for v in result.violations), result.violations
    assert result.outcome is not Outcome.PASSED
    assert peak - base < 3 * limit, f"peak {peak - base} bytes over a {limit} byte limit"


async def test_a_token_echoed_in_content_encoding_is_never_shown_even_in_lower_case():
    """The Content-Encoding the server sent was lower-cased into the error message: a token it echoed there showed,
    in lower case, in every report (redaction looks for the token as it is)."""
    token = "Zq7Xw9LmPa3RtY6vKc2N"

    async def echo(reader, writer, head, body):
        given = re.search(rb"(?im)^authorization: bearer (\S+)", head)
        assert given is not None
        writer.write(HEAD + b"Content-Encoding: x-" + given.group(1) + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with RawServer(echo) as server:
        result = await chat(server.url, token=token)
    assert result.outcome is Outcome.ERROR and result.error_kind == "protocol_error", result
    assert "Content-Encoding" in (result.error or "")
    shown = redact.clean(result.error or "").lower()
    assert token.lower() not in shown and token.lower()[:10] not in shown and token.lower()[10:] not in shown, shown


async def test_a_chunked_stream_cut_short_after_the_terminal_event_does_not_pass():
    """A chunked body cut in the middle of its last chunk (the server closed the connection with bytes it had
    announced still to come) passed when RUN_FINISHED was among the bytes that came: a fetch()-based client (AG-UI's
    HttpAgent) sees a network error there. Broken HTTP framing is an R12, as an oversized event is."""

    async def cut(reader, writer, head, body):
        run = whole_run(body)
        writer.write(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % (len(run) + 100) + run)
        await writer.drain()  # and the connection is closed: 100 announced bytes never come, nor the last chunk

    async with RawServer(cut) as server:
        # The cut comes at once; a 1 s settle window is ample time to see it (an observation window, not a sleep).
        result = await chat(server.url, settle=1.0)
    assert result.outcome is not Outcome.PASSED, result
    assert any(v.rule is Rule.R12 and "HTTP" in v.reason for v in result.violations), result.violations


async def test_a_chunked_stream_that_ends_properly_still_passes():
    async def chunked(reader, writer, head, body):
        run = whole_run(body)
        writer.write(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(run) + run + b"\r\n0\r\n\r\n")
        await writer.drain()

    async with RawServer(chunked) as server:
        result = await chat(server.url, settle=1.0)
    assert result.outcome is Outcome.PASSED, result.violations


async def test_a_stream_of_tiny_events_at_line_rate_does_not_hold_the_chat_past_its_deadline():
    """After RUN_STARTED, `data:x` events back to back (8 bytes each, each a malformed frame to judge, an R12) until the
    client goes away: the chat ends at its deadline (2 s, an R10), as over WebSocket (test_hostile_handshakes.py,
    where a read of tiny frames held the loop for seconds). The parity guard: a read of the response body is 64 KiB at
    most, and an encoded body is unpacked in pieces with a turn of the loop between them."""
    async def tiny(reader, writer, head, body):
        inp = json.loads(body)
        writer.write(HEAD + b"\r\n" + event(type="RUN_STARTED", threadId=inp["threadId"], runId=inp["runId"]))
        batch = b"data:x\n\n" * 8192
        while True:  # until the client goes away (drain raises), within the server's own 60 s
            writer.write(batch)
            await writer.drain()

    loop = asyncio.get_running_loop()
    async with RawServer(tiny) as server:
        start = loop.time()
        result = await chat(server.url, deadline=2)
        took = loop.time() - start
    assert result.outcome is Outcome.INCOMPLETE, result
    assert Rule.R10 in {v.rule for v in result.violations} | set(result.violations_not_listed), result.violations
    assert took < 2 + 1.5, took


async def test_an_event_nested_past_what_a_parser_reads_is_said_so_not_called_no_json():
    """An event of valid JSON nested 5,000 levels deep (a hostile server's, or a runaway serializer's) is an R12 that
    ends nothing: it said "not JSON: '{"type":"CUSTOM"…'", sending whoever reads it to look for broken JSON that is
    not there. It says what it is."""
    nested = b'{"type":"CUSTOM","name":"deep","value":' + b"[" * 5000 + b"]" * 5000 + b"}"

    async def deep(reader, writer, head, body):
        run = whole_run(body)
        first_end = run.index(b"\n\n") + 2
        writer.write(HEAD + b"Content-Length: %d\r\n\r\n" % (len(run) + len(nested) + 8)
                     + run[:first_end] + b"data: " + nested + b"\n\n" + run[first_end:])
        await writer.drain()

    async with RawServer(deep) as server:
        result = await chat(server.url)
    [r12] = [v for v in result.violations if v.rule is Rule.R12]
    assert "JSON nested too deeply to read" in r12.reason and "not JSON" not in r12.reason, r12.reason
    assert result.outcome is Outcome.FAILED and [v.rule for v in result.violations] == [Rule.R12], result.violations
