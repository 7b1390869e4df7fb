"""The proxy's front door under attack, over real sockets: no open relay, bounded connections per address and in
all, keepalive drops frozen peers, out-of-descriptors is quiet, and a flood of huge frames stays in a byte budget."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from http import HTTPStatus
from pathlib import Path

import pytest
import websockets
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.frames import Frame, Opcode
from websockets.utils import accept_key

from agentsim.server import AgentSim, SimConfig
from harness.checker import Expectations
from harness.events import DEFAULT_REQUIRED
from harness.profiles import load_profile
from harness.targets import TokenProvider
from monitors.frontdoor import FrontDoor, client_address, parse_trusted, upstream_url
from monitors.metrics import ChatMetrics, MetricsSink
from monitors.proxy import LiveChats, Proxy, start_proxy

from .procs import PROXY_MAIN, proxy_process

ROOT = Path(__file__).resolve().parents[2]
EXP = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=10.0)


# -- helpers: a recording upstream, a listener that must stay silent, a raw HTTP upgrade --

class Recorded:
    """A WebSocket upstream that remembers each handshake (path and headers) and echoes frames."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.open = 0
        self.server = None

    async def start(self, **options):
        async def handler(ws):
            self.open += 1
            try:
                with contextlib.suppress(websockets.ConnectionClosed):
                    async for m in ws:
                        await ws.send(m)
            finally:
                self.open -= 1

        def process_request(conn, request):
            self.requests.append((request.path, {k.lower(): v for k, v in request.headers.raw_items()}))

        self.server = await serve(handler, "127.0.0.1", 0, process_request=process_request, ping_interval=None,
                                  **options)
        return self

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]


class Silent:
    """The "other host": a TCP listener that counts every connection it is offered (there must be none)."""

    def __init__(self) -> None:
        self.accepted = 0

    async def start(self):
        async def on_conn(reader, writer):
            self.accepted += 1
            writer.close()

        self.server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self


def upgrade_request(target: str, host: str, extra: dict[str, str] | None = None) -> bytes:
    headers = {"Host": host, "Upgrade": "websocket", "Connection": "Upgrade",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), "Sec-WebSocket-Version": "13",
               "Authorization": "Bearer do-not-leak", "Cookie": "session=do-not-leak", **(extra or {})}
    head = f"GET {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode("latin-1")


async def raw_upgrade(port: int, target: str, source: str = "127.0.0.1", extra: dict[str, str] | None = None):
    """Send a real HTTP upgrade with `target` as the request target; returns (status, reader, writer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(upgrade_request(target, f"127.0.0.1:{port}", extra))
    await writer.drain()
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, reader, writer


async def status_of(port: int, target: str, **kw) -> int:
    status, _, writer = await raw_upgrade(port, target, **kw)
    writer.close()
    return status


async def until(cond, timeout=10.0):
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)  # wait-ok: poll interval of a condition wait bounded by the timeout


async def in_process_proxy(upstream: str, door: FrontDoor | None = None, **options):
    metrics = ChatMetrics(CollectorRegistry())
    live = LiveChats(load_profile("netra"), MetricsSink(metrics, "up", "live"), EXP, "live", 0.1)
    server = await start_proxy(Proxy(upstream, live, **options), "127.0.0.1", 0, door)
    return server, server.sockets[0].getsockname()[1], metrics


def refused(metrics, reason):
    return metrics.registry.get_sample_value("chatprobe_proxy_refused_connections_total",
                                             {"target": "up", "source": "live", "reason": reason}) or 0.0


def held(metrics):
    return metrics.registry.get_sample_value("chatprobe_proxy_connections", {"target": "up", "source": "live"}) or 0.0


# -- 1. no open relay --

def relay_targets(other: int) -> list[str]:
    return [
        f"@127.0.0.1:{other}/ws", f"//127.0.0.1:{other}/ws", f"ws://127.0.0.1:{other}/ws",
        f"http://127.0.0.1:{other}/", f"127.0.0.1:{other}", f"\\\\127.0.0.1:{other}\\ws", f"/\\127.0.0.1:{other}/ws",
        f"/\\\\127.0.0.1:{other}/ws", "*", "ws", "/ws\x01", "/ws\x7f", "/ws\t", "/../ws", "/a/%2e%2e/ws", "/ws#x",
        f"///127.0.0.1:{other}/ws",
    ]


async def test_no_request_target_makes_the_proxy_connect_anywhere_but_the_upstream():
    upstream, other = await Recorded().start(), await Silent().start()
    server, port, metrics = await in_process_proxy(f"ws://127.0.0.1:{upstream.port}")
    try:
        targets = relay_targets(other.port)
        for target in targets:
            assert await status_of(port, target) == 400, target
        assert other.accepted == 0 and upstream.requests == []
        assert refused(metrics, "bad_request") == len(targets)
        # A Host header naming the other host changes nothing: the upgrade goes to --upstream, with the credentials.
        status, _, writer = await raw_upgrade(port, "/ws", extra={"Host": f"127.0.0.1:{other.port}"})
        assert status == 101
        writer.close()
        assert other.accepted == 0 and [p for p, _ in upstream.requests] == ["/ws"]
        assert upstream.requests[0][1]["authorization"] == "Bearer do-not-leak"
    finally:
        server.close()
        upstream.server.close()
        other.server.close()


# Upgrades the proxy answers 4xx itself (websockets' own checks of the client's handshake), with what was wrong.
BAD_HANDSHAKES = {
    "key-of-8-bytes": ({"Sec-WebSocket-Key": base64.b64encode(b"12345678").decode()}, 400),
    "key-of-32-bytes": ({"Sec-WebSocket-Key": base64.b64encode(os.urandom(32)).decode()}, 400),
    "key-not-base64": ({"Sec-WebSocket-Key": "!" * 24}, 400),
    "version-8": ({"Sec-WebSocket-Version": "8"}, 400),
    "no-upgrade-token": ({"Connection": "keep-alive"}, 426),
    "upgrade-to-h2c": ({"Upgrade": "h2c"}, 426),
    # 84 KB of headers, each line within websockets' 8 KiB (it reads 128 of them, 1 MiB): taken, and kept for the
    # connection's life, before MAX_REQUEST_HEAD (FAILED on the code before: 101).
    "head-over-64-KiB": ({f"X-Pad-{i}": "p" * 7000 for i in range(12)}, 431),
}


@pytest.mark.parametrize("bad", list(BAD_HANDSHAKES))
async def test_an_upgrade_the_proxy_refuses_opens_no_upstream_connection_and_is_counted(bad):
    """websockets answers a client's bad upgrade (a Sec-WebSocket-Key of 8 or 32 bytes, a version it does not speak,
    no upgrade asked) with a 4xx, but only after the proxy's process_request: the proxy had opened an upstream
    connection for it first (a whole handshake, with the user's credentials, then closed: one upstream session per
    bad request), and counted the refusal nowhere."""
    extra, status = BAD_HANDSHAKES[bad]
    upstream = await Recorded().start()
    server, port, metrics = await in_process_proxy(f"ws://127.0.0.1:{upstream.port}")
    try:
        for _ in range(3):
            assert await status_of(port, "/ws", extra=extra) == status
        assert upstream.requests == []
        assert refused(metrics, "bad_request") == 3
        assert await status_of(port, "/ws") == 101  # a good upgrade still goes through
        assert [p for p, _ in upstream.requests] == ["/ws"]
    finally:
        server.close()
        upstream.server.close()


# Bytes that are no WebSocket upgrade request, and the status the proxy answers them with before it closes (None: a
# request cut short by the client's end, which no one reads an answer to). websockets reads a method other than GET
# and a version other than 1.1 as a request (then refuses it: 405, 505); it gives up on the rest before the proxy's
# process_request.
UNREAD_REQUESTS = {
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n", 400),  # a TLS hello
    "no-request-line": (b"HELLO\r\n\r\n", 400),
    "http2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    "bare-lf": (b"GET /ws HTTP/1.1\nHost: 127.0.0.1\nUpgrade: websocket\nConnection: Upgrade\n\n", 400),
    "non-ascii-path": (b"GET /\xff HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    "a-body": (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello", 400),
    "transfer-encoding": (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    "not-get": (b"POST /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\r\n", 405),
    "http-1.0": (b"GET /ws HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", 505),
    "request-line-too-long": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
    "header-line-too-long": (b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
    "too-many-headers": (b"GET /ws HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n",
                         431),
    "cut-short": (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr", None),  # then the client's end
}


@pytest.mark.parametrize("bad", list(UNREAD_REQUESTS))
async def test_bytes_that_are_no_http_request_are_answered_with_a_status_and_counted_as_a_bad_request(bad):
    """What websockets cannot read as an HTTP request never reaches the proxy's process_request, where every other
    refused upgrade is counted: such a connection was closed counted nowhere (chatprobe_proxy_refused_connections_total
    did not add up to what the front door turned away). Counted `bad_request` now, by the time the client reads its
    answer; no upstream connection is opened. A socket that sends nothing before its end (a load balancer's TCP
    check) is no request and is not counted.

    Each is answered with an HTTP status before the proxy's end, as a reverse proxy answers: websockets closed on a
    request line that is none, a bare LF, a body, a Transfer-Encoding, a non-ASCII path with no status at all (FAILED
    on the code before: b"" for garbage, no-request-line, http2-preface, bare-lf, non-ascii-path, a-body,
    transfer-encoding). The answer never echoes the client's bytes."""
    data, status = UNREAD_REQUESTS[bad]
    upstream = await Recorded().start()
    server, port, metrics = await in_process_proxy(f"ws://127.0.0.1:{upstream.port}")
    try:
        for n in (1, 2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(data)
            if status is None:
                writer.write_eof()  # (what comes after them changes nothing: the proxy closes)
            async with asyncio.timeout(10):
                answer = await reader.read()  # to the proxy's end
            writer.close()
            assert (int(answer.split(b" ", 2)[1]) if answer else None) == status, answer[:80]
            assert b"hello" not in answer and b"\xff" not in answer and b"PRI" not in answer
            assert refused(metrics, "bad_request") == n
        # A socket that sends nothing is no request.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write_eof()
        async with asyncio.timeout(10):
            assert await reader.read() == b""
        writer.close()
        assert refused(metrics, "bad_request") == 2
        assert upstream.requests == []
        assert await status_of(port, "/ws") == 101  # a good upgrade still goes through
    finally:
        server.close()
        upstream.server.close()


# A header an upgrade carries once, sent twice with two values (a raw socket: no client library sends this).
TWICE = {
    "Host": ("first-host.example", "second-host.example"),
    "Authorization": ("Bearer first-token-aaaa1111", "Bearer second-token-bbbb2222"),
    "Sec-WebSocket-Key": (base64.b64encode(b"k" * 16).decode(), base64.b64encode(b"j" * 16).decode()),
    "Cookie": ("session=first-cookie-cccc3333", "session=second-cookie-dddd4444"),
}


@pytest.mark.parametrize("name", list(TWICE))
async def test_an_upgrade_with_a_header_sent_twice_is_refused_counted_and_logged_without_its_values(name, caplog):
    """Two Host headers (RFC 9110: a 400), two Authorization headers, two Cookie headers: the proxy took one (the
    last) for the upstream, the identity and the scrubbing, whatever a load balancer in front judged by the first;
    two Host headers passed as one. Refused with 400 now, no upstream connection, counted bad_request, and the log
    names the header, never a value.

    FAILED on the code before: 101 for two Host, Authorization or Cookie headers (two keys websockets refused, its
    log line naming no header)."""
    upstream = await Recorded().start()
    server, port, metrics = await in_process_proxy(f"ws://127.0.0.1:{upstream.port}")
    caplog.set_level(logging.WARNING)
    try:
        headers = [("Host", f"127.0.0.1:{port}"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
                   ("Sec-WebSocket-Key", base64.b64encode(os.urandom(16)).decode()), ("Sec-WebSocket-Version", "13")]
        headers = [(k, v) for k, v in headers if k != name] + [(name, v) for v in TWICE[name]]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(("GET /ws HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode())
        async with asyncio.timeout(10):
            answer = await reader.read()  # to the proxy's end
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:80]
        assert upstream.requests == []
        assert refused(metrics, "bad_request") == 1
        logged = caplog.text
        assert name in logged and not any(v in logged for v in TWICE[name])
        assert await status_of(port, "/ws") == 101  # one of each still goes through
    finally:
        server.close()
        upstream.server.close()


async def test_an_upgrade_without_host_is_refused_and_counted_as_the_http_side_refuses_it():
    """RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request that lacks Host. FAILED before: websockets asks
    for none, and an upgrade without one was proxied (101, an upstream connection opened with the user's credentials),
    while the HTTP side (h11) refused the same request 400. Now 400 too, counted bad_request, no upstream connection."""
    upstream = await Recorded().start()
    server, port, metrics = await in_process_proxy(f"ws://127.0.0.1:{upstream.port}")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
                     + base64.b64encode(os.urandom(16)) + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        async with asyncio.timeout(10):
            answer = await reader.read()  # to the proxy's end
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400 ") and b"no Host header" in answer, answer[:200]
        assert upstream.requests == []
        assert refused(metrics, "bad_request") == 1
        assert await status_of(port, "/ws") == 101  # with its Host, the same upgrade goes through
    finally:
        server.close()
        upstream.server.close()


async def test_a_request_never_finished_before_the_handshake_deadline_is_counted_as_a_bad_request():
    """A slowloris: a request head sent a byte at a time and never finished, until the handshake deadline
    (connect_timeout + HANDSHAKE_SLACK) cuts it. The same bytes followed by the client's end are a bad_request, but cut
    by the proxy's own deadline the connection was closed counted nowhere: refusals did not add up to the sockets
    that sent a request and were turned away. Counted bad_request now; no upstream connection is opened."""
    upstream = await Recorded().start()
    server, port, metrics = await in_process_proxy(f"ws://127.0.0.1:{upstream.port}", connect_timeout=0.1)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for byte in b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr":  # one segment a byte, then nothing more
            writer.write(bytes([byte]))
            await writer.drain()
        async with asyncio.timeout(20):
            assert await reader.read() == b""  # the proxy's handshake deadline ends it, unanswered
        writer.close()
        await until(lambda: refused(metrics, "bad_request") == 1)  # counted as its socket closes
        assert upstream.requests == [] and held(metrics) == 0
    finally:
        server.close()
        upstream.server.close()


async def test_a_client_that_hangs_up_while_the_upstream_answers_leaves_no_upstream_connection_open(caplog):
    """A client sends its upgrade and hangs up while the upstream is still answering (a slow handshake: TLS, a
    distant server). The proxy closed the upstream of a failed handshake when the client's socket closed, which was
    before there was an upstream: it stayed open for good (it answers pings), outside every connection slot, one
    more each time a client connected and hung up."""
    started, open_now = [0], [0]

    async def handler(ws):
        started[0] += 1
        open_now[0] += 1
        try:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for _ in ws:
                    pass
        finally:
            open_now[0] -= 1

    async def slow_handshake(conn, request):
        await asyncio.sleep(0.3)  # wait-ok: the upstream's handshake latency (a TLS round trip or two), no condition

    upstream = await serve(handler, "127.0.0.1", 0, process_request=slow_handshake, ping_interval=None)
    server, port, metrics = await in_process_proxy(f"ws://127.0.0.1:{upstream.sockets[0].getsockname()[1]}")
    try:
        for _ in range(5):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(upgrade_request("/ws", f"127.0.0.1:{port}"))
            await writer.drain()
            writer.close()
        await until(lambda: started[0] == 5 and open_now[0] == 0)
        assert held(metrics) == 0
    finally:
        server.close()
        upstream.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


# Dot segments in the forms a server or framework behind the proxy still reads as "..": a path parameter (`..;`,
# Tomcat and Spring drop it), an encoded slash or backslash (`..%2f`, `..%5c`, decoded before routing by some),
# percent-encoding twice (`%252e`, decoded twice by others), a NUL (C code stops there). Each would climb out of
# --upstream's base path on such a server. (A path still encoded after frontdoor.MAX_DECODES decodings is refused too.)
CLIMBING_TARGETS = ["/..;/admin", "/a/..;x/..;/admin", "/%2e%2e%2fadmin", "/a/..%2F..%2Fadmin", "/..%5cadmin",
                    "/%252e%252e/admin", "/%25252e%25252e/admin", "/.%2e;/admin", "/ws/..%00/admin", "/.;/ws",
                    "/" + ("%" + "25" * 8 + "2e") * 2 + "/admin"]  # "." encoded nine times: no client's path


async def test_no_target_climbs_out_of_the_upstreams_base_path_in_a_form_a_server_decodes():
    upstream = await Recorded().start()
    server, port, metrics = await in_process_proxy(f"ws://127.0.0.1:{upstream.port}/base/")
    try:
        for target in CLIMBING_TARGETS:
            assert await status_of(port, target) == 400, target
        assert upstream.requests == []
        assert refused(metrics, "bad_request") == len(CLIMBING_TARGETS)
        # What only looks like one is a path as any other: dots in a name, an encoded slash between plain names,
        # a ';' parameter on a plain segment.
        plain = ["/ws/v1.2/a..b", "/ws/%2Fx", "/ws;v=1", "/ws/...", "/ws?next=/../x"]
        for target in plain:
            assert await status_of(port, target) == 101, target
        await until(lambda: len(upstream.requests) == len(plain))
        assert [p for p, _ in upstream.requests] == ["/base" + t for t in plain]
    finally:
        server.close()
        upstream.server.close()


async def test_upstream_url_is_the_base_path_plus_the_request_path_and_query():
    upstream = await Recorded().start()
    server, port, _ = await in_process_proxy(f"ws://127.0.0.1:{upstream.port}/base/")
    try:
        for target in ("/ws?x=1&y=%2F", "/", "/a/b/?q=%40other"):
            status, _, writer = await raw_upgrade(port, target)
            assert status == 101, target
            writer.close()
        assert [p for p, _ in upstream.requests] == ["/base/ws?x=1&y=%2F", "/base", "/base/a/b/?q=%40other"]
        headers = upstream.requests[0][1]
        assert headers["cookie"] == "session=do-not-leak" and headers["host"] == f"127.0.0.1:{upstream.port}"
    finally:
        server.close()
        upstream.server.close()


def test_upstream_url_building():
    base = "ws://10.0.0.5:8000"
    assert upstream_url(base, "/ws") == "ws://10.0.0.5:8000/ws"
    assert upstream_url(base + "/chat", "/") == "ws://10.0.0.5:8000/chat"
    assert upstream_url("wss://[::1]:9/p", "/ws?token=a") == "wss://[::1]:9/p/ws?token=a"
    assert upstream_url(base, "/@evil:1/ws") == "ws://10.0.0.5:8000/@evil:1/ws"  # a path segment, not a host


async def test_a_redirect_to_another_host_is_not_followed_with_the_credentials():
    other = await Silent().start()

    def redirect(conn, request):
        response = conn.respond(HTTPStatus.FOUND, "")
        response.headers["Location"] = f"ws://127.0.0.1:{other.port}/ws"
        return response

    async def never(ws):
        await ws.close()

    upstream = await serve(never, "127.0.0.1", 0, process_request=redirect)
    up_port = upstream.sockets[0].getsockname()[1]
    server, port, _ = await in_process_proxy(f"ws://127.0.0.1:{up_port}")
    try:
        assert await status_of(port, "/ws") == 502
        assert other.accepted == 0
    finally:
        server.close()
        upstream.close()
        other.server.close()


@pytest.mark.parametrize("location", ["/elsewhere", "/ws"], ids=["another path", "itself"])
async def test_a_redirect_on_the_same_origin_is_not_followed_either(location):
    """A passive proxy answers what --upstream answered to the path the client asked: a 3xx from the upstream is a
    502, after one upstream request. It followed a same-origin redirect: the client got a 101 from a path it never
    asked for (an endpoint the proxy then watched under the client's name), and a redirect to itself cost eleven
    upstream handshakes a client connection before websockets gave up."""
    up = Recorded()

    def process_request(conn, request):
        up.requests.append((request.path, {}))
        if request.path == "/ws":
            response = conn.respond(HTTPStatus.FOUND, "")
            response.headers["Location"] = f"ws://127.0.0.1:{up.port}{location}"
            return response
        return None

    async def accept(ws):
        await ws.wait_closed()

    up.server = await serve(accept, "127.0.0.1", 0, process_request=process_request)
    server, port, metrics = await in_process_proxy(f"ws://127.0.0.1:{up.port}")
    try:
        assert await status_of(port, "/ws") == 502
        assert [path for path, _ in up.requests] == ["/ws"]
        attempts = {s.labels["result"]: s.value for m in metrics.registry.collect() for s in m.samples
                    if s.name == "chatprobe_connections_total" and s.value}
        assert attempts == {"protocol_error": 1.0}
    finally:
        server.close()
        up.server.close()


# -- 3. bounded connections --

def test_client_address_trusts_forwarded_for_only_from_a_trusted_proxy():
    lb = parse_trusted(["10.0.0.0/8", "fd00::/8"])
    assert str(client_address("10.1.2.3", ["6.6.6.6, 198.51.100.7"], lb)) == "198.51.100.7"
    assert str(client_address("10.1.2.3", ["198.51.100.7, 10.9.9.9"], lb)) == "198.51.100.7"  # two LBs
    assert str(client_address("203.0.113.1", ["198.51.100.7"], lb)) == "203.0.113.1"  # not trusted: ignored
    assert str(client_address("10.1.2.3", ["nonsense"], lb)) == "10.1.2.3"
    assert str(client_address("::ffff:10.1.2.3", ["2001:db8::1"], lb)) == "2001:db8::1"
    # A chain of trusted hops is walked 32 deep at most (64 kB of them cost up to 50 ms a handshake): past that the
    # client is the last hop walked, whatever the header says further left.
    chain = ["198.51.100.7"] + [f"10.0.{i // 250}.{i % 250}" for i in range(5000)]
    assert str(client_address("10.1.2.3", [", ".join(chain)], lb)) == chain[-32]
    with pytest.raises(ValueError):
        parse_trusted(["10.0.0.0/33"])


async def test_per_address_and_total_caps_answer_503_and_count_why():
    upstream = await Recorded().start()
    door = FrontDoor(max_connections=5, max_per_address=2, trusted=parse_trusted(["127.0.0.9"]), ping_interval=None)
    server, port, metrics = await in_process_proxy(f"ws://127.0.0.1:{upstream.port}", door)
    kept = []

    async def attempt(source, xff=None):
        status, _, writer = await raw_upgrade(port, "/ws", source,
                                                   {"X-Forwarded-For": xff} if xff else None)
        if status == 101:
            kept.append(writer)
        else:
            writer.close()
        return status

    try:
        assert [await attempt("127.0.0.1") for _ in range(3)] == [101, 101, 503]
        # Untrusted peers' X-Forwarded-For is the client's own claim: it does not buy another slot.
        assert await attempt("127.0.0.1", "203.0.113.5") == 503
        # Behind the trusted balancer, each real client (the hop it appended) has its own share.
        assert [await attempt("127.0.0.9", "6.6.6.6, 198.51.100.7") for _ in range(3)] == [101, 101, 503]
        assert await attempt("127.0.0.9", "198.51.100.8") == 101
        assert await attempt("127.0.0.4") == 503  # all 5 in use
        assert refused(metrics, "per_address_limit") == 3 and refused(metrics, "over_capacity") == 1
        assert held(metrics) == 5 and upstream.open == 5
        kept.pop(0).close()  # one of 127.0.0.1's goes: its slot comes back
        await until(lambda: held(metrics) == 4)
        assert await attempt("127.0.0.4") == 101
        # Sockets that never send a request count too: past twice the share, one address's are cut at accept.
        before = refused(metrics, "per_address_limit")
        for _ in range(6):
            kept.append((await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.7", 0)))[1])
        await until(lambda: refused(metrics, "per_address_limit") == before + 2)
    finally:
        for w in kept:
            w.close()
        server.close()
        upstream.server.close()


async def frozen_upstream():
    """A server that completes the WebSocket handshake and then never reads again (no pong, ever)."""
    conns = []

    async def on_conn(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        key = re.search(rb"(?i)sec-websocket-key:\s*(\S+)", head).group(1).decode()
        writer.write(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n".encode())
        conns.append(writer)

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    return server, conns


@pytest.mark.parametrize("frozen", ["client", "upstream"])
async def test_a_peer_that_answers_no_ping_is_dropped(frozen):
    """Pings every 0.2 s, 0.2 s to answer: a frozen peer goes within a couple of seconds, its slot with it, while a
    client that answers pings stays."""
    if frozen == "client":
        recorded = await Recorded().start()
        upstream_server, up_port = recorded.server, recorded.port
    else:
        upstream_server, _ = await frozen_upstream()
        up_port = upstream_server.sockets[0].getsockname()[1]
    door = FrontDoor(max_connections=10, max_per_address=1, ping_interval=0.2, ping_timeout=0.2)
    server, port, metrics = await in_process_proxy(f"ws://127.0.0.1:{up_port}", door)
    good = None
    try:
        good = await connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5, close_timeout=1)  # answers pings
        if frozen == "upstream":
            async with asyncio.timeout(10):  # the upstream answered no ping: the proxy ends the client's connection
                await good.wait_closed()
            await until(lambda: held(metrics) == 0)
            return
        # The raw client never reads again, so never answers a ping: the proxy drops it and frees its slot.
        status, reader, _ = await raw_upgrade(port, "/ws", "127.0.0.5")
        assert status == 101
        await until(lambda: held(metrics) == 1)
        async with asyncio.timeout(5):  # its socket was closed by the proxy
            with contextlib.suppress(ConnectionError):
                while await reader.read(65536):
                    pass
        # The same span of pings went by for the client that answers them: it is still there, and works.
        await good.send("still here")
        async with asyncio.timeout(5):
            assert await good.recv() == "still here"
        # The dropped connection's slot is free again (one per address here).
        again, _, w2 = await raw_upgrade(port, "/ws", "127.0.0.5")
        assert again == 101
        w2.close()
    finally:
        if good is not None:
            await good.close()
        server.close()
        upstream_server.close()


# -- 3. under a lowered open-file limit, in a real process --

async def start_sim():
    secret = secrets.token_urlsafe(32)
    sim = AgentSim(SimConfig(port=0, jwt_secret=secret, think=0.005, tool_latency=0.002, seed=5))
    await sim.start()
    return sim, TokenProvider(jwt_secret=secret)


async def open_ws(port: int, token: str, source: str):
    return await connect(f"ws://127.0.0.1:{port}/ws", additional_headers={"Authorization": f"Bearer {token}"},
                         local_addr=(source, 0), open_timeout=10, ping_interval=None, close_timeout=1)


async def chat_on(ws) -> str:
    """One chat over an open connection; the terminal frame's type."""
    await ws.send(json.dumps({"type": "user_message", "payload": {"content": "What is 2 * 21?"}}))
    async with asyncio.timeout(10):
        async for message in ws:
            kind = json.loads(message).get("type")
            if kind in ("agent_completed", "error_message"):
                return kind
    return "closed"


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_one_address_cannot_take_every_slot_under_a_low_open_file_limit(tmp_path):
    sim, tokens = await start_sim()
    upstream = sim.url.rsplit("/", 1)[0]
    nofile = 256
    conns = []
    try:
        async with proxy_process(upstream, tmp_path, nofile=nofile) as proxy:
            port, pid, err_path, line = proxy.port, proxy.pid, proxy.err, proxy.line
            total, per = map(int, re.search(r"at most (\d+) connections, (\d+) per", line).groups())
            assert 2 * total < nofile and 1 <= per < total  # the defaults come from the limit, with headroom
            # 127.0.0.1 opens idle connections until it is refused: exactly its share, then a clean 503.
            with pytest.raises(websockets.InvalidStatus) as refusal:
                for i in range(total + 1):
                    conns.append(await open_ws(port, tokens.for_user(f"idle-{i}"), "127.0.0.1"))
            assert refusal.value.response.status_code == 503 and len(conns) == per
            # Another address still gets through, and its chat completes.
            async with await open_ws(port, tokens.for_user("alice"), "127.0.0.2") as alice:
                assert await chat_on(alice) == "agent_completed"
            # Many addresses together fill every slot, and then get 503 too, without running out of descriptors.
            sources = iter(f"127.0.0.{i}" for i in range(3, 250))
            with pytest.raises(websockets.InvalidStatus) as full:
                while True:
                    source = next(sources)
                    for _ in range(per):
                        conns.append(await open_ws(port, tokens.for_user(f"u-{len(conns)}"), source))
            assert full.value.response.status_code == 503 and len(conns) == total
            assert fds_of(pid) < nofile
            # Every held connection still works: the first and the last one chat.
            assert await chat_on(conns[0]) == "agent_completed"
            assert await chat_on(conns[-1]) == "agent_completed"
            for ws in conns[:per]:
                await ws.close()
            async with await open_ws(port, tokens.for_user("bob"), "127.0.0.2") as bob:
                assert await chat_on(bob) == "agent_completed"
        err = err_path.read_text()
        assert "Traceback" not in err and "file descriptors" not in err, err
        assert err.count("--max-connections-per-ip") <= 1 and err.count("--max-connections)") <= 1, err
    finally:
        for ws in conns:
            ws.transport.abort()
        await sim.stop()


def closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


async def test_one_address_flooding_sockets_that_never_handshake_cannot_exhaust_descriptors(tmp_path):
    """Slowloris from one address: 300 sockets that send nothing. Past its socket share (twice its connection
    share) each is cut at accept, so the proxy never runs out of descriptors and others still chat."""
    sim, tokens = await start_sim()
    upstream = sim.url.rsplit("/", 1)[0]
    raw: list[socket.socket] = []
    try:
        async with proxy_process(upstream, tmp_path, nofile=256) as proxy:
            port, pid, err_path, line = proxy.port, proxy.pid, proxy.err, proxy.line
            per = int(re.search(r"(\d+) per client address", line).group(1))

            def wave() -> None:
                for _ in range(8):
                    raw.append(socket.create_connection(("127.0.0.1", port), timeout=5,
                                                        source_address=("127.0.0.3", 0)))

            async with asyncio.timeout(60):
                while len(raw) < 300:
                    # Half a listen backlog (16 at this limit) at a time, then until the proxy has dealt with them: all
                    # but its share cut. Past a full accept queue the kernel drops a SYN, which is sent again 1 s later.
                    await asyncio.to_thread(wave)
                    await until(lambda: sum(not closed_by_peer(s) for s in raw) <= 2 * per, timeout=20)
            assert fds_of(pid) < 64
            async with await open_ws(port, tokens.for_user("alice"), "127.0.0.2") as alice:
                assert await chat_on(alice) == "agent_completed"
            for s in raw:  # the share left open, closed now: the proxy's shutdown does not wait out their handshakes
                s.close()
        err = err_path.read_text()
        assert "Traceback" not in err and "file descriptors" not in err, err
        assert sum("127.0.0.3" in ln for ln in err.splitlines()) == 1, err  # one line a minute, not one a socket
    finally:
        for s in raw:
            s.close()
        await sim.stop()


async def test_running_out_of_file_descriptors_is_one_line_and_the_open_connections_go_on(tmp_path):
    # Silent sockets no longer take every descriptor (test_silent_sockets_from_many_addresses_...): here they may hold
    # far more than the limit, so that they do, as the process's other files (recordings, /metrics' sockets) still may.
    sim, tokens = await start_sim()
    upstream = sim.url.rsplit("/", 1)[0]
    raw: list[socket.socket] = []
    try:
        async with proxy_process(upstream, tmp_path, nofile=256, handshakes=10_000) as proxy:
            port, pid, err_path = proxy.port, proxy.pid, proxy.err
            alice = await open_ws(port, tokens.for_user("alice"), "127.0.0.2")

            def connect() -> None:
                # A connection that never sends a request: it takes a descriptor until the handshake times out. Each
                # from its own address (one address is cut at a few sockets, see the test above).
                source = f"127.0.{1 + len(raw) // 200}.{10 + len(raw) % 200}"
                raw.append(socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)))

            base = fds_of(pid)
            while fds_of(pid) < 256:
                assert len(raw) < 400, "the proxy never ran out of descriptors"
                # Half a listen backlog at a time (16 at this limit), then until the proxy has taken them: past a
                # full accept queue the kernel drops a handshake's last ACK, and a client's socket looks open long
                # before the proxy has it.
                for _ in range(8):
                    await asyncio.to_thread(connect)
                await until(lambda: fds_of(pid) >= min(256, base + len(raw)))
            # The proxy holds all 256: a few more wait in the listen backlog, where accept() fails.
            for _ in range(10):
                await asyncio.to_thread(connect)
            await until(lambda: err_path.stat().st_size > 0)  # the proxy said something about it
            assert await chat_on(alice) == "agent_completed"  # the open connection is served throughout
            # asyncio retries accept each second: let it fail a few more times (the log must not grow).
            await asyncio.sleep(2.5)  # wait-ok: time for repeated EMFILE, not a condition
            for s in raw:
                s.close()
            async with await open_ws(port, tokens.for_user("bob"), "127.0.0.4") as bob:
                assert await chat_on(bob) == "agent_completed"
            await alice.close()
        err = err_path.read_text()
        assert "Traceback" not in err, err
        assert sum("out of file descriptors" in ln for ln in err.splitlines()) == 1, err
    finally:
        for s in raw:
            s.close()
        await sim.stop()


# -- 4. huge frames: the proxy's own buffers stay within a byte budget --

def peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024


HUGE = 4_000_000  # a 4 MB timestamp in every event, under the proxy's 4 MiB frame limit


@pytest.mark.parametrize("direction", ["upstream_to_client", "client_to_upstream"])
async def test_a_fast_writer_facing_a_slow_reader_does_not_pile_up_frames(tmp_path, direction):
    """A writer sends 4 MB frames as fast as it can; the reader on the other side reads nothing. The proxy takes a
    few frames and then stops reading (backpressure): its peak memory grows by a few frames, not by the flood."""
    event = json.dumps({"type": "agent_thinking", "run_id": "r-1", "thread_id": "t-1",
                        "payload": {"thought": "x"}, "timestamp": "9" * HUGE})
    progress = {"sent": 0, "at": time.monotonic()}
    stalled = asyncio.Event()

    async def writer(ws):
        with contextlib.suppress(websockets.ConnectionClosed):
            while progress["sent"] < 200:  # 800 MB if the proxy took it all
                await ws.send(event)
                progress["sent"] += 1
                progress["at"] = time.monotonic()

    async def watch():
        # The writer is stuck when its last send finished a second ago while it still has frames to send.
        while not (progress["sent"] >= 3 and time.monotonic() - progress["at"] > 1.0):
            await asyncio.sleep(0.05)  # wait-ok: poll interval of a condition wait bounded by the caller
        stalled.set()

    async def upstream_handler(ws):
        if direction == "upstream_to_client":
            await writer(ws)
        else:
            ws.transport.pause_reading()
        await ws.wait_closed()

    upstream = await serve(upstream_handler, "127.0.0.1", 0, max_size=None, ping_interval=None)
    up_port = upstream.sockets[0].getsockname()[1]
    client = None
    try:
        async with proxy_process(f"ws://127.0.0.1:{up_port}", tmp_path, "--send-timeout", "60s",
                                 nofile=1024) as proxy:
            port, pid, err_path = proxy.port, proxy.pid, proxy.err
            before = peak_rss(pid)
            client = await connect(f"ws://127.0.0.1:{port}/ws", max_size=None, ping_interval=None, open_timeout=10,
                                   close_timeout=1)
            if direction == "upstream_to_client":
                client.transport.pause_reading()
                flood = None
            else:
                flood = asyncio.ensure_future(writer(client))
            await asyncio.wait_for(watch(), 60)
            grown = peak_rss(pid) - before
            assert progress["sent"] < 40, progress  # the writer was held back, not buffered for
            # The budget for one direction: ~6 frames of 4 MB (see proxy.py); websockets' default queue alone
            # would park 16 more.
            assert grown < 40 * 1024 * 1024, (grown, progress)
            if flood is not None:
                flood.cancel()
                await asyncio.gather(flood, return_exceptions=True)
        assert "Traceback" not in err_path.read_text()
    finally:
        if client is not None:
            client.transport.abort()
        # The upstream's own end too: one that paused its reading never reads the close, and the server's closing
        # handshake waited out its 10 s close_timeout at the event loop's teardown.
        for conn in list(upstream.connections):
            conn.transport.abort()
        upstream.close()


PING_FLOOD_BYTES = 400 * 1024 * 1024  # what a flooder writes at most: the proxy owes as many bytes of pongs


async def _flood_pings(writer: asyncio.StreamWriter, masked: bool, progress: dict) -> None:
    """Ping frames (125-byte payloads) as fast as the socket takes them; never reads."""
    frame = (b"\x89\xfd\x00\x00\x00\x00" if masked else b"\x89\x7d") + b"p" * 125  # a zero mask leaves it as is
    burst = frame * 8192
    with contextlib.suppress(ConnectionError, OSError):
        while progress["sent"] < PING_FLOOD_BYTES:
            writer.write(burst)
            await writer.drain()
            progress["sent"] += len(burst)
            progress["at"] = time.monotonic()


async def _stalled(progress: dict) -> None:
    """Until the flooder is held back (its last write drained a second ago) or has written everything."""
    while not (progress["sent"] >= PING_FLOOD_BYTES
               or (progress["sent"] > 0 and time.monotonic() - progress["at"] > 1.0)):
        await asyncio.sleep(0.05)  # wait-ok: poll interval of a condition wait bounded by the caller


async def _raw_upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The server side of a WebSocket upgrade, by hand."""
    request = await reader.readuntil(b"\r\n\r\n")
    key = next(line.split(b":", 1)[1].strip().decode() for line in request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n")
    await writer.drain()


@pytest.mark.parametrize("side", ["client", "upstream"])
async def test_a_peer_that_floods_pings_and_reads_nothing_does_not_grow_the_proxys_memory(tmp_path, side):
    """A client (or an upstream) sends WebSocket pings as fast as it can and reads nothing: the pongs the proxy owes
    it cannot be sent, and the proxy stops reading that peer instead of queueing pongs without end."""
    progress = {"sent": 0, "at": time.monotonic()}
    flooders: list[asyncio.Task] = []

    async def raw_upstream(reader, writer):
        await _raw_upgrade(reader, writer)
        if side == "upstream":
            await _flood_pings(writer, False, progress)
        with contextlib.suppress(ConnectionError, OSError):
            await reader.read()  # until the proxy closes

    async def normal_upstream(ws):
        await ws.wait_closed()

    upstream = (await asyncio.start_server(raw_upstream, "127.0.0.1", 0) if side == "upstream"
                else await serve(normal_upstream, "127.0.0.1", 0, ping_interval=None))
    up_port = upstream.sockets[0].getsockname()[1]
    client_writer = None
    try:
        async with proxy_process(f"ws://127.0.0.1:{up_port}", tmp_path, "--ping-interval", "1h",
                                 nofile=1024) as proxy:
            port, pid, err_path = proxy.port, proxy.pid, proxy.err
            before = peak_rss(pid)
            reader, client_writer = await asyncio.open_connection("127.0.0.1", port)
            key = base64.b64encode(os.urandom(16)).decode()
            client_writer.write(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                                "Sec-WebSocket-Version: 13\r\n\r\n".encode())
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            if side == "client":
                flooders.append(asyncio.ensure_future(_flood_pings(client_writer, True, progress)))
            await asyncio.wait_for(_stalled(progress), 120)
            grown = peak_rss(pid) - before
            assert progress["sent"] < PING_FLOOD_BYTES, progress  # held back, not answered without end
            assert grown < 60 * 1024 * 1024, (grown, progress)
            for task in flooders:
                task.cancel()
            await asyncio.gather(*flooders, return_exceptions=True)
        assert "Traceback" not in err_path.read_text()
    finally:
        if client_writer is not None:
            client_writer.transport.abort()
        upstream.close()


# -- flags --

@pytest.mark.parametrize("flags,needle", [
    (["--max-connections", "0"], "--max-connections '0'"),
    (["--max-connections", "lots"], "--max-connections 'lots'"),
    (["--max-connections", "9" * 400], "--max-connections '9999"),
    (["--max-connections", "1000000"], "open-file limit"),  # more than the limit carries: refused up front
    (["--max-connections-per-ip", "-1"], "--max-connections-per-ip"),
    # A per-address cap over the total caps nothing: taken silently before (one address could hold every slot).
    (["--max-connections", "10", "--max-connections-per-ip", "11"],
     "--max-connections-per-ip 11: more than --max-connections 10"),
    (["--max-connections-per-ip", "999999999"], "more than --max-connections"),
    (["--trusted-proxy", "10.0.0.0/33"], "--trusted-proxy '10.0.0.0/33'"),
    (["--trusted-proxy", "lb.example"], "--trusted-proxy 'lb.example'"),
    (["--ping-interval", "soon"], "--ping-interval"),
    (["--ping-interval", "9" * 400], "--ping-interval"),
    (["--ping-timeout", "2h"], "--ping-timeout: at most 3600s"),
    # Just past the bound (MAX_PING_SECONDS, MAX_DRAIN_SECONDS): the bound itself is taken (see the test below).
    (["--ping-timeout", "3600.5s"], "--ping-timeout: at most 3600s"),
    (["--ping-interval", "3600.5s"], "--ping-interval: at most 3600s"),
    (["--drain-timeout", "3600.5s"], "--drain-timeout: at most 3600s"),
    (["--ping-timeout", "0"], "--ping-timeout: must be more than 0"),
    (["--upstream", "ws://127.0.0.1:1/ws?token=s3cret"], "--upstream: no query"),
    (["--upstream", "ws://user:s3cret@127.0.0.1:1/ws"], "--upstream: no credentials"),
    (["--max-connections", "\u0661\u0662"], "--max-connections"),  # Arabic-Indic digits: isdigit() took them as 12
    (["--listen", "256.1.1.1:0"], "'256.1.1.1' is not an IPv4 address"),
    (["--listen", "bad host:0"], "'bad host' is neither an IP address nor a host name"),
    (["--metrics-listen", "999.0.0.1:0"], "--metrics-listen '999.0.0.1:0'"),
    (["--listen", "127.0.0.1:\u0668\u0667\u0668\u0660"], "--listen"),
])
def test_bad_front_door_flags_exit_2_with_one_line(capsys, flags, needle):
    from monitors.proxy import main

    args = ["--upstream", "ws://127.0.0.1:1/ws", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", *flags]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "s3cret" not in err


async def test_keepalive_and_drain_at_their_bounds_are_taken(tmp_path):
    """--ping-interval, --ping-timeout and --drain-timeout of exactly 3600s (MAX_PING_SECONDS, MAX_DRAIN_SECONDS) are
    taken: the proxy listens, and stops on SIGTERM with exit 0 (no connection: no drain to wait out). 0.5 s more is
    refused (above): an off-by-one either way fails one of them."""
    from .procs import proxy_process

    async with proxy_process("ws://127.0.0.1:1/ws", tmp_path, "--ping-interval", "3600s", "--ping-timeout", "3600s",
                             "--drain-timeout", "3600s") as p:
        assert "listening on ws://127.0.0.1:" in p.line


@pytest.mark.parametrize("flag, value", [("--ping-interval", "1ms"), ("--ping-interval", "0.5"),
                                         ("--ping-timeout", "100ms"), ("--ping-timeout", "0.001s")])
def test_a_keepalive_of_under_a_second_is_refused_not_a_flood_of_pings(flag, value):
    # `--ping-interval 20ms` meant as 20 s. FAILED on the old code: taken, the proxy pinged every client and the upstream
    # for each of them a thousand times a second (or dropped every user whose pong took over 1 ms); it ran (the timeout).
    argv = [sys.executable, "-c", PROXY_MAIN, "--upstream", "ws://127.0.0.1:1/ws", "--listen", "127.0.0.1:0",
            "--metrics-listen", "127.0.0.1:0", flag, value]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert f"{flag}: at least 1s" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def masked_text(payload: bytes) -> bytes:
    return Frame(Opcode.TEXT, payload).serialize(mask=True, extensions=[])


@pytest.mark.parametrize("when", ["with-the-request", "while-the-upstream-answers"])
async def test_bytes_after_the_upgrade_request_that_are_no_frame_open_no_upstream_and_are_counted(when, caplog):
    """A client pipelines a second HTTP request (or a body, or garbage) behind its upgrade request. websockets fails
    such a connection and answers nothing; the proxy had opened an upstream connection for it all the same (a whole
    handshake with the user's credentials) and counted the refusal nowhere. Now: counted bad_request, the upstream
    connection not opened (or closed, when the bytes came while it answered), and no traceback in the log. A client
    that sends a well-formed frame before the answer (allowed to a server) is proxied as any other."""
    release = asyncio.Event()
    if when == "with-the-request":
        release.set()
    opened, open_now = [], [0]

    async def handler(ws):
        open_now[0] += 1
        try:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for m in ws:
                    await ws.send(m)
        finally:
            open_now[0] -= 1

    async def answer_when_released(conn, request):
        opened.append(request.path)
        await release.wait()

    upstream = await serve(handler, "127.0.0.1", 0, process_request=answer_when_released, ping_interval=None)
    server, port, metrics = await in_process_proxy(f"ws://127.0.0.1:{upstream.sockets[0].getsockname()[1]}")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        pipelined = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        if when == "with-the-request":
            writer.write(upgrade_request("/ws", f"127.0.0.1:{port}") + pipelined)
        else:
            writer.write(upgrade_request("/ws", f"127.0.0.1:{port}"))
            await until(lambda: len(opened) == 1)
            writer.write(pipelined)
        async with asyncio.timeout(10):
            assert await reader.read() == b""  # websockets failed it: its end, and no answer after it
        release.set()  # (the upstream answers only now, after the client's bytes were failed)
        writer.close()
        await until(lambda: refused(metrics, "bad_request") == 1)
        await until(lambda: open_now[0] == 0 and held(metrics) == 0)
        assert opened == ([] if when == "with-the-request" else ["/ws"])
        # A well-formed frame sent before the answer goes through.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(upgrade_request("/ws", f"127.0.0.1:{port}") + masked_text(b'{"type":"ping"}'))
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            echo = await reader.readexactly(2 + len(b'{"type":"ping"}'))
        assert head.startswith(b"HTTP/1.1 101") and echo.endswith(b'{"type":"ping"}')
        writer.close()
        assert refused(metrics, "bad_request") == 1
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    finally:
        server.close()
        upstream.close()


async def test_silent_sockets_from_many_addresses_cannot_lock_others_out_of_the_handshake(tmp_path):
    """A slowloris from many addresses: 40 of them each open their socket share (twice their connection share) of
    sockets that send nothing, at once. No address is over its share, so none was cut at accept, and together they
    took every descriptor the proxy had: past its open-file limit it accepted nothing more (EMFILE, "new connections
    wait in the listen backlog") until their handshakes timed out (15 s), and a user from another address could not
    connect until then. Now the sockets still to send their request are held to a tenth of the open-file limit (the
    headroom kept for them): past it, the one waiting longest from the address holding the most is cut. The user
    connects at once and chats, and the proxy never runs out of descriptors.

    FAILED on the code before: the proxy ran out of descriptors ("out of file descriptors accepting a connection" in
    its log, new connections left in the listen backlog), or held 244 of its 256 after the flood."""
    sim, tokens = await start_sim()
    upstream = sim.url.rsplit("/", 1)[0]
    raw: list[socket.socket] = []
    nofile = 256
    try:
        async with proxy_process(upstream, tmp_path, nofile=nofile) as proxy:
            port, pid, err_path, line = proxy.port, proxy.pid, proxy.err, proxy.line
            per = int(re.search(r"(\d+) per client address", line).group(1))
            def flood(source: str) -> None:
                for _ in range(2 * per):
                    with contextlib.suppress(OSError):  # a connect the kernel's full accept queue held past 3 s
                        raw.append(socket.create_connection(("127.0.0.1", port), timeout=3,
                                                            source_address=(source, 0)))

            async with asyncio.timeout(30):  # all 40 addresses at once
                await asyncio.gather(*(asyncio.to_thread(flood, f"127.0.0.{i}") for i in range(10, 50)))
            assert len(raw) > nofile - 2 * per, len(raw)  # more than the proxy's descriptors, less its share
            async with asyncio.timeout(5):
                async with await open_ws(port, tokens.for_user("alice"), "127.0.0.2") as alice:
                    assert await chat_on(alice) == "agent_completed"
            assert fds_of(pid) < nofile - 16
            for s in raw:
                s.close()
        err = err_path.read_text()
        assert "Traceback" not in err and "file descriptors" not in err, err
        assert err.count("still sending no request") == 1, err  # one line a minute, not one a socket
    finally:
        for s in raw:
            s.close()
        await sim.stop()


async def test_users_behind_a_trusted_balancer_mid_handshake_are_not_cut_first_for_silent_sockets():
    """Past max_handshakes the socket cut is the oldest of the address holding the most sockets still to send their
    request. A trusted balancer's sockets all count under one key (its clients are known only from their request's
    X-Forwarded-For): two of its users mid-handshake made it "the address holding the most", and each silent socket
    from an address of its own then cut one of them (FAILED on the code before: A's socket cut, no 101). The
    balancer's sockets weigh one address each now, and between equals the oldest socket goes."""
    upstream = await Recorded().start()
    door = FrontDoor(max_connections=50, max_per_address=10, trusted=parse_trusted(["127.0.0.9"]), ping_interval=None,
                     max_handshakes=8)
    server, port, _ = await in_process_proxy(f"ws://127.0.0.1:{upstream.port}", door)
    held_open = []
    try:
        for i in range(10, 18):  # silent sockets, one an address, up to the budget
            held_open.append((await asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.0.{i}", 0)))[1])
        await until(lambda: door.handshakes == 8)
        request = upgrade_request("/ws", f"127.0.0.1:{port}", {"X-Forwarded-For": "198.51.100.7"})
        users = []
        for n in range(2):  # two users through the balancer, each mid-request
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.9", 0))
            writer.write(request[:20])
            await writer.drain()
            users.append((reader, writer))
            await until(lambda n=n: len(door.reading.get("", ())) == n + 1)
        held_open.append((await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.30", 0)))[1])
        await until(lambda: "127.0.0.30" in door.reading)
        for reader, writer in users:
            writer.write(request[20:])
            await writer.drain()
            async with asyncio.timeout(10):
                head = await reader.read(12)
            assert head == b"HTTP/1.1 101", head
            writer.close()
    finally:
        for w in held_open:
            w.close()
        server.close()
        upstream.server.close()
