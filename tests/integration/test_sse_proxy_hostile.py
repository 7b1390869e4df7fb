"""The proxy's HTTP side (monitors/sse_proxy.py) against a trusted proxy in front multiplexing its users over one
kept-alive connection, hostile clients and hostile upstreams, over real loopback sockets: each gets a sane answer,
the chat a classified verdict, the counters add up, nothing hangs."""
from __future__ import annotations

import asyncio
import contextlib
import gzip
import ipaddress
import tracemalloc
from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry

from harness.scenario import Expect, expectations_for
from monitors.frontdoor import FrontDoor
from monitors.metrics import ChatMetrics, MetricsSink
from monitors.proxy import LiveChats
from monitors.sse_proxy import SSEProxy, start_sse_proxy

from .test_sse_proxy import AGUI, BODY, RUN, answer, chunked, raw_upstream, refused, sample, sse, until

TRUSTED = (ipaddress.ip_network("127.0.0.1/32"),)


@contextlib.asynccontextmanager
async def proxy_with(upstream: str, door: FrontDoor | None = None, **options
                     ) -> AsyncIterator[tuple[str, ChatMetrics, SSEProxy, MetricsSink]]:
    metrics = ChatMetrics(CollectorRegistry())
    sink = MetricsSink(metrics, "upstream", "live")
    sink.declare("live")
    live = LiveChats(AGUI, sink, expectations_for(AGUI, Expect(deadline="5s")), "live", 0.05)
    proxy = SSEProxy(upstream, live, **options)
    server = await start_sse_proxy(proxy, "127.0.0.1", 0, door)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", metrics, proxy, sink
    finally:
        server.close()
        async with asyncio.timeout(10):
            await server.wait_closed()
        live.stop()


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
    """One request on a kept-alive connection, and its answer (head and a Content-Length body)."""
    writer.write(request)
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        return head + await reader.readexactly(length)


def get(path: str, forwarded_for: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {forwarded_for}\r\n\r\n".encode()


async def ok(reader, writer, head, body):
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()


# -- a trusted proxy in front, its users over one kept-alive connection --

async def test_a_trusted_proxys_kept_alive_connection_counts_under_the_client_of_each_request():
    """A load balancer (--trusted-proxy) keeps its connection to the proxy alive and sends one user's request on it,
    then another's. The connection's per-address slot was taken under its FIRST request's X-Forwarded-For and kept
    there: the first user was held to hold the connection (their own next connection refused 503 at
    --max-connections-per-ip 1) while the user it now carries was not counted at all. Now a request counts under its
    own client while it is served, as the WebSocket side's upgrade (one request a connection) always did."""
    gate = asyncio.Event()

    async def held(reader, writer, head, body):  # /hold is answered once the test opens the gate
        if b" /hold" in head:
            async with asyncio.timeout(10):
                await gate.wait()
        await ok(reader, writer, head, body)

    door = FrontDoor(max_connections=10, max_per_address=1, trusted=TRUSTED)
    async with raw_upstream(held) as (up, heads), proxy_with(up, door) as (url, metrics, _, _sink):
        front_r, front_w = await connect(url)
        assert (await exchange(front_r, front_w, get("/a", "1.1.1.1"))).endswith(b"ok")
        assert (await exchange(front_r, front_w, get("/b", "2.2.2.2"))).endswith(b"ok")
        # 1.1.1.1 holds nothing now: its request on another connection is served
        other_r, other_w = await connect(url)
        assert (await exchange(other_r, other_w, get("/c", "1.1.1.1"))).endswith(b"ok")
        # a request of 2.2.2.2 in flight on the front connection: a second one of its own at once is at its limit
        front_w.write(get("/hold", "2.2.2.2"))
        async with asyncio.timeout(10):
            while door.slots.by_key.get("2.2.2.2") != 1:
                await asyncio.sleep(0.02)  # wait-ok: poll interval of a condition wait bounded by the timeout
        third_r, third_w = await connect(url)
        answer = await exchange(third_r, third_w, get("/d", "2.2.2.2"))
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 5" in answer
        assert refused(metrics, "per_address_limit") == 1
        gate.set()
        async with asyncio.timeout(10):
            head = await front_r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and await front_r.readexactly(2) == b"ok"
        assert [h.split(b" ", 2)[1] for h in heads] == [b"/a", b"/b", b"/c", b"/hold"]
        for w in (front_w, other_w, third_w):
            w.close()
        # every slot given back under the key it was held under at the end (none leaked, none freed twice)
        async with asyncio.timeout(10):
            while door.slots.open or door.moved:
                await asyncio.sleep(0.02)  # wait-ok: poll interval of a condition wait bounded by the timeout
        assert door.slots.by_key == {}
        assert metrics.registry.get_sample_value("chatprobe_proxy_connections",
                                                 {"target": "upstream", "source": "live"}) == 0


async def test_a_trusted_proxys_idle_kept_alive_connections_hold_no_users_slot():
    """A load balancer keeps a pool of connections to the proxy alive and sends each request on whichever is free. A
    connection between two requests carries no user: kept under the client of its last request, it held that user
    to it, and a user who had used --max-connections-per-ip of the pool's connections was refused 503 on the next one
    with nothing in flight (nginx's limit_conn counts a connection only while it serves a request)."""
    door = FrontDoor(max_connections=10, max_per_address=2, trusted=TRUSTED)
    async with raw_upstream(ok) as (up, heads), proxy_with(up, door) as (url, metrics, _, _sink):
        pool = [await connect(url) for _ in range(4)]
        for n, (r, w) in enumerate(pool):  # one user's requests, one after the other, each on the next connection
            answer = await exchange(r, w, get(f"/{n}", "1.1.1.1"))
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok"), (n, answer)
        assert refused(metrics, "per_address_limit") == 0
        # the four idle connections are counted (--max-connections), under the balancer's own idle key only (the last
        # one once the proxy is back to reading its next request)
        async with asyncio.timeout(10):
            while door.slots.by_key != {"127.0.0.1 (idle)": 4}:
                await asyncio.sleep(0.02)  # wait-ok: poll interval of a condition wait bounded by the timeout
        assert door.slots.open == 4
        for _, w in pool:
            w.close()
        async with asyncio.timeout(10):
            while door.slots.open or door.moved:
                await asyncio.sleep(0.02)  # wait-ok: poll interval of a condition wait bounded by the timeout
        assert door.slots.by_key == {}


async def test_an_untrusted_clients_x_forwarded_for_never_moves_its_connections_slot():
    door = FrontDoor(max_connections=10, max_per_address=1, trusted=())
    async with raw_upstream(ok) as (up, _), proxy_with(up, door) as (url, metrics, _, _sink):
        reader, writer = await connect(url)
        for n in range(3):  # a client claiming another address each request is its socket's peer still
            assert (await exchange(reader, writer, get(f"/{n}", f"9.9.9.{n}"))).endswith(b"ok")
        assert door.slots.by_key == {"127.0.0.1": 1}
        writer.close()
        assert refused(metrics, "per_address_limit") == 0


# -- a hostile client --

async def raw_exchange(url: str, data: bytes, *, timeout: float = 10) -> bytes:
    """`data` sent in one write, and all the proxy answers until it closes."""
    reader, writer = await connect(url)
    try:
        writer.write(data)
        async with asyncio.timeout(timeout):
            return await reader.read()
    finally:
        writer.close()


async def test_a_request_begun_in_the_previous_requests_read_is_answered_and_counted_as_one_begun():
    """Bytes pipelined in the same read as a request (h11's trailing data) were taken for no request begun: garbage
    there closed the connection after the first answer with nothing said and nothing counted, and a next request cut
    short there (a slow-loris) was held for the kept-alive connection's 60 s, not the 10 s a request begun has, and
    then closed uncounted. Now they are what a request sent later is: 400, and 408 at the request deadline, counted."""
    async with raw_upstream(ok) as (up, heads), proxy_with(up, request_timeout=0.5) as (url, metrics, _, _sink):
        got = await raw_exchange(url, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n")
        first, second = got.split(b"ok", 1)
        assert first.startswith(b"HTTP/1.1 200 ") and second.startswith(b"HTTP/1.1 400 "), got
        assert refused(metrics, "bad_request") == 1
        # the next request cut short in the first one's read: 408 at the request deadline (0.5 s), not at 60 s
        got = await raw_exchange(url, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n", timeout=5)
        first, second = got.split(b"ok", 1)
        assert first.startswith(b"HTTP/1.1 200 ") and second.startswith(b"HTTP/1.1 408 "), got
        assert refused(metrics, "bad_request") == 2
        # a blank line after a request is no request begun (h11 reads no request after it: the connection ends after
        # the answer), not one the proxy answers 400 nor counts
        got = await raw_exchange(url, b"GET /d HTTP/1.1\r\nHost: x\r\n\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"ok"), got
        assert refused(metrics, "bad_request") == 2
        assert [h.split(b" ", 2)[1] for h in heads] == [b"/a", b"/b", b"/d"]


async def test_expect_100_continue_a_head_request_and_a_get_with_a_chunked_body_each_get_a_sane_answer():
    async def echo(reader, writer, head, body):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    async with raw_upstream(echo) as (up, heads), proxy_with(up, max_size=1024) as (url, metrics, _, _sink):
        reader, writer = await connect(url)
        # the body comes once the proxy says 100 Continue, and is forwarded (with its length, without the Expect)
        writer.write(b"POST /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        async with asyncio.timeout(10):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100 ")
        assert (await exchange(reader, writer, b"hello")).endswith(b"\r\n\r\nhello")
        # kept alive: a HEAD's answer has no body, and the next request is answered after it
        got = await exchange(reader, writer, b"HEAD /b HTTP/1.1\r\nHost: x\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"\r\n\r\n")
        # a GET with a chunked body: forwarded with its body and its length
        got = await exchange(reader, writer, b"GET /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                             b"3\r\nabc\r\n0\r\n\r\n")
        assert got.endswith(b"\r\n\r\nabc")
        writer.close()
        # a body over --max-size announced with Expect: 413 at once, never invited (no 100), never forwarded
        got = await raw_exchange(url, b"POST /d HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4096"
                                      b"\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 413 "), got
        assert [h.split(b" ", 2)[1] for h in heads] == [b"/a", b"/b", b"/c"]
        assert b"expect" not in heads[0].lower() and b"content-length: 5\r\n" in heads[0].lower()
        assert b"transfer-encoding" not in heads[2].lower() and b"content-length: 3\r\n" in heads[2].lower()
        assert refused(metrics, "bad_request") == 1  # the 413


# -- a hostile upstream --

OUTCOMES = ("passed", "failed", "incomplete", "error")
CHAT = b"POST /agent HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(BODY), BODY)
STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


def sent_as(head: bytes, body: bytes = b""):
    async def handle(reader, writer, _head, _body):
        writer.write(head + body)
        await writer.drain()
    return handle


def dechunked(answer: bytes) -> bytes:
    """The body of a chunked answer (head and all), as its client reads it."""
    body, rest = b"", answer.split(b"\r\n\r\n", 1)[1]
    while True:
        size, rest = rest.split(b"\r\n", 1)
        if not int(size, 16):
            return body
        body, rest = body + rest[:int(size, 16)], rest[int(size, 16) + 2:]


def counts(metrics: ChatMetrics) -> tuple[dict[str, float], dict[str, float], float]:
    """(chats by outcome, connection attempts by result, R12s)."""
    return ({o: sample(metrics, "chatprobe_chats_total", outcome=o) for o in OUTCOMES if
             sample(metrics, "chatprobe_chats_total", outcome=o)},
            {r: sample(metrics, "chatprobe_connections_total", result=r) for r in ("ok", "protocol_error", "refused")
             if sample(metrics, "chatprobe_connections_total", result=r)},
            sample(metrics, "chatprobe_rule_violations_total", rule="R12"))


async def test_sse_line_endings_and_encodings_each_read_as_a_browser_reads_them():
    """LF, CRLF and CR alone end SSE lines (WHATWG), each in one-byte chunks (a CRLF cut between its CR and LF is one
    line end, a CR alone at a chunk's end too), and gzip in two members (browsers unpack them in a row): the chat
    passes, the client gets the upstream's bytes."""
    events = b"".join(sse(*RUN))
    cases = [[bytes([c]) for c in events.replace(b"\n", end)] for end in (b"\n", b"\r\n", b"\r")]
    for pieces in cases:
        async with raw_upstream(answer(pieces)) as (up, _), proxy_with(up) as (url, metrics, _, _sink):
            got = await raw_exchange(url, CHAT)
            assert dechunked(got) == b"".join(pieces)
            await until(lambda: counts(metrics) == ({"passed": 1}, {"ok": 1}, 0))
    packed = gzip.compress(events[:200]) + gzip.compress(events[200:])
    head = STREAM_HEAD + b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with raw_upstream(sent_as(head, chunked([packed[:30], packed[30:]]))) as (up, _), \
            proxy_with(up) as (url, metrics, _, _sink):
        got = await raw_exchange(url, CHAT)
        assert b"Content-Encoding: gzip" in got and dechunked(got) == packed
        await until(lambda: counts(metrics) == ({"passed": 1}, {"ok": 1}, 0))


async def test_an_upstreams_odd_statuses_and_codings_get_the_client_a_sane_answer_and_are_counted():
    """101 (no upgrade was asked), 304 and 204 to a chat's POST, 103 before the stream, a brotli stream (a coding the
    proxy never offered and cannot check): each relayed or answered sanely, the chat's POST counted by what it got."""
    cases = [
        # (what the upstream sends, what the client's answer begins with, the counts then)
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nbytes",
         b"HTTP/1.1 502 ", ({}, {"protocol_error": 1}, 0)),
        (b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n", b"HTTP/1.1 304 ", ({}, {"protocol_error": 1}, 0)),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", b"HTTP/1.1 204 ",
         ({}, {"protocol_error": 1}, 0)),
        (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + STREAM_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
         + chunked(sse(*RUN)), b"HTTP/1.1 200 ", ({"passed": 1}, {"ok": 1}, 0)),
        (STREAM_HEAD + b"Content-Encoding: br\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked([b"\x0b\x02\x80?"]),
         b"HTTP/1.1 200 ", ({}, {"protocol_error": 1}, 0)),
    ]
    for sent, begins, expected in cases:
        async with raw_upstream(sent_as(sent)) as (up, _), proxy_with(up) as (url, metrics, _, _sink):
            got = await raw_exchange(url, CHAT)
            assert got.startswith(begins), (sent[:40], got[:200])
            assert b"Early Hints" not in got and not got.endswith(b"\r\n\r\nhello"), got
            await until(lambda: counts(metrics) == expected)  # noqa: B023
            assert sample(metrics, "chatprobe_chats_in_flight") == 0


async def test_a_client_over_its_limit_is_refused_at_its_requests_head_never_invited_to_send_its_body():
    """The per-address slot was taken once the request came whole: a client at its --max-connections-per-ip sending
    `Expect: 100-continue` was told 100 Continue, sent its body (up to --max-size, held in memory), and only then got
    its 503. Now the slot is taken at the head, as nginx's limit_conn: 503 at once, no 100, the body never read."""
    release = asyncio.Event()

    async def hold(reader, writer, head, body):
        await answer(sse(RUN[0]), end=False)(reader, writer, head, body)
        await release.wait()

    door = FrontDoor(max_connections=10, max_per_address=1)
    async with raw_upstream(hold) as (up, heads), proxy_with(up, door) as (url, metrics, _, _sink):
        reader, writer = await connect(url)
        writer.write(CHAT.replace(b"Connection: close\r\n", b""))
        async with asyncio.timeout(10):
            await reader.readuntil(b"RUN_STARTED")  # this address's one connection, streaming
        got = await raw_exchange(url, b"POST /agent HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                                      b"Content-Length: 100000\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 5" in got and b" 100 " not in got, got
        assert refused(metrics, "per_address_limit") == 1 and len(heads) == 1
        release.set()
        writer.close()


async def test_a_very_long_sse_line_is_an_r12_relayed_whole_in_bounded_memory():
    """One `data:` line of 16 MiB (no line end until its last byte, CR alone), then the rest of the run: the client
    gets every byte, the proxy holds no more of it than --max-size (the line is an R12, the rest relayed unchecked),
    and the chat is judged when the stream ends."""
    piece = b"x" * (64 * 1024)

    async def handle(reader, writer, _head, _body):
        writer.write(STREAM_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(sse(RUN[0]), end=False))
        writer.write(chunked([b"data: "], end=False))
        for _ in range(256):
            writer.write(chunked([piece], end=False))
            await writer.drain()
        writer.write(chunked([b"\r\r", *sse(*RUN[1:])]))
        await writer.drain()

    async with raw_upstream(handle) as (up, _), proxy_with(up, max_size=64 * 1024) as (url, metrics, _, _sink):
        tracemalloc.start()
        try:
            reader, writer = await connect(url)
            writer.write(CHAT)
            got = 0
            tail = b""
            async with asyncio.timeout(30):
                while data := await reader.read(256 * 1024):
                    got += len(data)
                    tail = (tail + data)[-200:]
            writer.close()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert got > 256 * len(piece) and b"RUN_FINISHED" in tail and tail.endswith(b"0\r\n\r\n")
        assert peak < 8 * 1024 * 1024, peak
        await until(lambda: counts(metrics) == ({"incomplete": 1}, {"ok": 1}, 1))
        assert sample(metrics, "chatprobe_chats_in_flight") == 0


async def test_an_upstream_redirect_to_a_host_idna_cannot_read_is_relayed_and_counted(caplog):
    """An upstream's 302 whose Location names an A-label IDNA cannot read back (an emoji domain's `xn--ls8h.la`): the
    proxy, judging the answer's head, read where it points and IDNA's error escaped (logged as "an answer failed in
    the proxy (InvalidCodepoint) ... please report it"): the client got no answer, its connection closed, the attempt
    never counted. It is relayed and counted as any redirect: a protocol_error."""
    async def moved(reader, writer, head, body):
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: http://xn--ls8h.la/agent\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with raw_upstream(moved) as (up, _), proxy_with(up) as (url, metrics, _, _):
        reader, writer = await connect(url)
        try:
            answer = await exchange(reader, writer, b"POST /agent HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                                    b"\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
            assert answer.startswith(b"HTTP/1.1 302 ") and b"xn--ls8h.la" in answer, answer
            # the connection is still the client's: a second request on it is answered
            again = await exchange(reader, writer, get("/health", "127.0.0.1"))
            assert again.startswith(b"HTTP/1.1 302 "), again
        finally:
            writer.close()
        await until(lambda: sample(metrics, "chatprobe_connections_total", result="protocol_error") == 1)
    assert "Traceback" not in caplog.text and "failed in the proxy" not in caplog.text, caplog.text
