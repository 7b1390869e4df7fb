"""The proxy's HTTP side against a request of thousands of tiny header fields (6,500 `a:b` fit in its 64 KiB bound on
a head), over real loopback sockets: refused 431 before h11 parses them (30-50 ms of the event loop a head), as the
WebSocket side's websockets refuses an upgrade of more than 128, and never forwarded; 128 still pass. And an upstream's
answer of as many: a 502 and a `protocol_error`, as the WebSocket side's upgrade answer of more than 128."""
from __future__ import annotations

import pytest

from .test_sse_proxy import BODY, RUN, _raw_client, chunked, proxy_to, raw_upstream, refused, sample, sse


async def _ok(reader, writer, head, body):
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()


@pytest.mark.parametrize("fields,pipelined", [(6000, False), (129, False), (6000, True)])
async def test_a_request_of_too_many_header_fields_is_refused_431_and_never_forwarded(fields, pipelined):
    padding = b"".join(b"a%d:b\r\n" % i for i in range(fields - 1))  # and Host
    async with raw_upstream(_ok) as (up, heads), proxy_to(up) as (url, metrics, _):
        request = b"GET /x HTTP/1.1\r\nHost: x\r\n%s\r\n" % padding
        if pipelined:  # behind a good request, in the same write: h11 holds it before it is this request's turn
            request = b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n" + request
        answer = await _raw_client(url, request)
        assert answer.count(b"HTTP/1.1 431 ") == 1, answer[-300:]
        assert b"more than 128 header fields" in answer
        assert [h.split(b" ", 2)[1] for h in heads] == ([b"/first"] if pipelined else [])
        assert refused(metrics, "bad_request") == 1


async def test_a_request_of_128_header_fields_and_a_body_of_many_lines_passes():
    padding = b"".join(b"a%d:b\r\n" % i for i in range(125))  # and Host, Content-Length, Connection: 128
    body = b"line\n" * 1000  # line ends after the head, in the same read: the body's, not header fields
    async with raw_upstream(_ok) as (up, heads), proxy_to(up) as (url, metrics, _):
        answer = await _raw_client(url, b"POST /x HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\nConnection: close"
                                        b"\r\n\r\n%s" % (padding, len(body), body))
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        assert len(heads) == 1 and refused(metrics, "bad_request") == 0


def _fields(n: int) -> bytes:
    return b"".join(b"a%d:1\r\n" % i for i in range(n))


CHAT = b"POST /agent HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"


def _answering(data: bytes):
    async def handle(reader, writer, head, body):
        writer.write(data)
        await writer.drain()
    return handle


@pytest.mark.parametrize("answer", [
    STREAM_HEAD + _fields(10_000) + b"\r\n" + chunked(sse(*RUN)),  # 55 KiB of tiny fields: h11 took them all
    STREAM_HEAD + _fields(127) + b"\r\n" + chunked(sse(*RUN)),  # 129 in all
    b"HTTP/1.1 100 Continue\r\n\r\n" + STREAM_HEAD + _fields(10_000) + b"\r\n" + chunked(sse(*RUN)),  # behind a 1xx
    b"HTTP/1.1 103 Early Hints\r\n" + _fields(10_000) + b"\r\n" + STREAM_HEAD + b"\r\n" + chunked(sse(*RUN)),
], ids=["final", "129", "behind_1xx", "in_1xx"])
async def test_an_upstreams_answer_of_too_many_header_fields_is_a_502_and_a_protocol_error(answer):
    """FAILED on the code before: h11 parsed an upstream's head of 10,000 tiny fields whole (some 25-40 ms of the event
    loop) and the proxy sent them all on to the client (as long again), every other user's stream and the chats' clocks
    stood still meanwhile, for each such answer; a client's request of more than 128 is refused before h11 parses it,
    and so is the WebSocket side's upgrade answer (websockets). Now a 502 too, the chat's request counted a
    `protocol_error` (its connection's result, as the WebSocket side's), no chat followed."""
    async with raw_upstream(_answering(answer)) as (up, heads), proxy_to(up) as (url, metrics, _):
        got = await _raw_client(url, CHAT)
        assert got.startswith(b"HTTP/1.1 502 "), got[:200]
        assert len(heads) == 1
        assert sample(metrics, "chatprobe_connections_total", result="protocol_error") == 1
        assert sample(metrics, "chatprobe_connections_total", result="ok") == 0
        assert refused(metrics, "bad_request") == 0  # the upstream's doing, not the client's


async def test_an_upstreams_answers_of_128_header_fields_each_and_a_stream_in_the_same_write_pass():
    """128 fields in each head, two informational answers before the final one, and the event stream's lines (line ends
    after the final head, in the same write: its body's, not header fields) all pass, the chat judged."""
    answer = (b"HTTP/1.1 100 Continue\r\n" + _fields(128) + b"\r\n" + b"HTTP/1.1 103 Early Hints\r\n" + _fields(128)
              + b"\r\n" + STREAM_HEAD + _fields(126) + b"\r\n" + chunked(sse(*RUN) * 1 + [b": keep\n" * 500]))
    async with raw_upstream(_answering(answer)) as (up, heads), proxy_to(up) as (url, metrics, _):
        got = await _raw_client(url, CHAT)
        assert got.startswith(b"HTTP/1.1 200 "), got[:200]
        assert got.count(b"\r\na") == 126 and b"RUN_FINISHED" in got
        assert sample(metrics, "chatprobe_connections_total", result="ok") == 1
        assert sample(metrics, "chatprobe_chats_total", outcome="passed") == 1
