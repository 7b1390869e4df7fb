"""The SSE transport bounds what one event, or one line, may make it buffer: the WebSocket frame limit
(`ConnectSettings.max_size`, 4 MiB). Past it the stream is dropped and the chat gets an R12, as for an oversized
WebSocket frame; the giant event is never held whole in memory."""
from __future__ import annotations

import json
import tracemalloc

from ag_ui.core import RunAgentInput, RunFinishedEvent, RunStartedEvent, TextMessageEndEvent, TextMessageStartEvent

from harness.events import Outcome
from harness.transports import ConnectSettings

from .servers import AguiSSEServer
from .test_agui import chat, rules, text_only

LIMIT = ConnectSettings(url="http://x").max_size  # 4 MiB
GIANT = 8 * 1024 * 1024  # twice the limit: quick, yet a client that buffers it whole is caught
PIECE = 64 * 1024


def _around(inp: RunAgentInput, middle):
    """A well-formed run with `middle` (raw stream bytes, yielded piece by piece) inside its text message."""
    yield RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id)
    yield TextMessageStartEvent(message_id="a1", role="assistant")
    yield from middle
    yield TextMessageEndEvent(message_id="a1")
    yield RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id)


def _content_event(delta_size: int):
    """A valid TEXT_MESSAGE_CONTENT event whose delta is `delta_size` bytes, generated in pieces (never whole)."""
    yield b'data: {"type":"TEXT_MESSAGE_CONTENT","messageId":"a1","delta":"'
    for _ in range(delta_size // PIECE):
        yield b"x" * PIECE
    yield b'"}\n\n'


async def _chat_measured(server: AguiSSEServer):
    """The chat's result and how far Python memory rose above where it was while the chat ran (the server is in
    the same process, and never holds much). A small chat first makes the lazy imports and caches of a first
    chat (httpx, anyio, TLS defaults) happen before the measure."""
    async with AguiSSEServer(text_only) as warm:
        assert (await chat(warm.url)).outcome is Outcome.PASSED
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        result = await chat(server.url, deadline=30.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak - base


async def test_a_giant_valid_event_is_an_r12_and_is_never_buffered_whole():
    async with AguiSSEServer(lambda inp: _around(inp, _content_event(GIANT))) as server:
        result, peak = await _chat_measured(server)
    assert "R12" in rules(result), result.violations
    r12 = next(v for v in result.violations if v.rule == "R12")
    assert f"{LIMIT} byte limit" in r12.reason
    assert result.outcome is not Outcome.PASSED
    assert "dropped the event stream" in result.note
    assert peak < GIANT, f"peak {peak} bytes: the {GIANT} byte event was buffered whole"


async def test_a_comment_line_with_no_end_is_an_r12():
    def endless_comment():
        yield b":"
        for _ in range(GIANT // PIECE):
            yield b"c" * PIECE

    async with AguiSSEServer(lambda inp: _around(inp, endless_comment())) as server:
        result, peak = await _chat_measured(server)
    assert "R12" in rules(result), result.violations
    assert "line longer than" in next(v for v in result.violations if v.rule == "R12").reason
    assert peak < GIANT


async def test_an_event_of_many_small_data_lines_is_bounded_too():
    line = b"data: " + b"y" * (PIECE - 7) + b"\n"  # each line well under the limit; together twice over

    def many_lines():
        for _ in range(GIANT // len(line) + 1):
            yield line
        yield b"\n"

    async with AguiSSEServer(lambda inp: _around(inp, many_lines())) as server:
        result, peak = await _chat_measured(server)
    assert "R12" in rules(result), result.violations
    assert "event larger than" in next(v for v in result.violations if v.rule == "R12").reason
    assert peak < GIANT


async def test_a_large_event_under_the_limit_still_passes():
    async with AguiSSEServer(lambda inp: _around(inp, _content_event(LIMIT // 2))) as server:
        result = await chat(server.url, deadline=30.0)
    assert result.outcome is Outcome.PASSED, result.violations


def test_parser_limit_is_inclusive_and_bom_is_dropped():
    from harness.eventstream import EventStreamParser, EventTooLarge

    parser = EventStreamParser(10)
    assert parser.feed(b"\xef\xbb") == []  # a byte-order mark split over chunks
    assert parser.feed(b"\xbfdata:0123\ndata:45678\n\n") == ["0123\n45678"]  # exactly 10 bytes of data
    parser = EventStreamParser(10)
    try:
        parser.feed(b"data:01234\ndata:56789\n\n")  # 10 byte lines, 11 bytes of data
    except EventTooLarge as exc:
        assert "event larger than the 10 byte limit" in str(exc)
    else:
        raise AssertionError("11 bytes of data passed a 10 byte limit")
    parser = EventStreamParser(10)
    # a line may hold the limit plus its field name's `data: ` (framing, as a WebSocket frame's header): 16 bytes
    assert parser.feed(b":" + b"c" * 15) == []  # a 16 byte line not ended yet: it fits
    try:
        parser.feed(b"c")
    except EventTooLarge:
        pass
    else:
        raise AssertionError("a 17 byte line passed a 10 byte limit")
    assert EventStreamParser(10).feed(b"data: 0123456789\n\n") == ["0123456789"]  # 10 bytes of data on one line
    assert json.loads(EventStreamParser(100).feed(b'data: {"a": 1}\r\n\r\n')[0]) == {"a": 1}
