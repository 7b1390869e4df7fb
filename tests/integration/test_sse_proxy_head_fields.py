"""The proxy's HTTP side against a request of thousands of tiny header fields (6,500 `a:b` fit in its 64 KiB bound on
a head), over real loopback sockets: refused 431 before h11 parses them (30-50 ms of the event loop a head), as the
WebSocket side's websockets refuses an upgrade of more than 128, and never forwarded; 128 still pass."""
from __future__ import annotations

import pytest

from .test_sse_proxy import _raw_client, proxy_to, raw_upstream, refused


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
