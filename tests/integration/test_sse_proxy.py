"""`chatprobe proxy --upstream http://…`: the proxy's HTTP side in front of a server answering chats with an SSE event
stream (monitors/sse_proxy.py), over real loopback sockets: agentsim (AG-UI) behind it with the harness's own SSE
client, raw upstreams that misbehave and raw clients that do, written here."""
from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import trustme
from prometheus_client import CollectorRegistry, generate_latest

from agentsim.agui import AguiSim
from agentsim.server import SimConfig
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.runner import run_scenario
from harness.scenario import Expect, expectations_for
from harness.targets import Target, TokenProvider
from harness.transports.base import ConnectSettings
from monitors.metrics import ChatMetrics, MetricsSink
from monitors.proxy import LiveChats
from monitors.sse_proxy import EVENTS_PER_TURN, SSEProxy, start_sse_proxy

from .conftest import scenario

AGUI = load_profile("ag-ui")
LABELS = dict(target="upstream", scenario="live", source="live")
BODY = json.dumps({"threadId": "t1", "runId": "r1", "state": {}, "tools": [], "context": [], "forwardedProps": {},
                   "messages": [{"id": "m1", "role": "user", "content": "hi"}]}).encode()
RUN = [{"type": "RUN_STARTED", "threadId": "t1", "runId": "r1"},
       {"type": "TEXT_MESSAGE_START", "messageId": "a1", "role": "assistant"},
       {"type": "TEXT_MESSAGE_CONTENT", "messageId": "a1", "delta": "hello"},
       {"type": "TEXT_MESSAGE_END", "messageId": "a1"},
       {"type": "RUN_FINISHED", "threadId": "t1", "runId": "r1"}]


def sse(*events: dict) -> list[bytes]:
    return [f"data: {json.dumps(e)}\n\n".encode() for e in events]


def chunked(pieces: list[bytes], end: bool = True) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + (b"0\r\n\r\n" if end else b"")


def sample(metrics: ChatMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {**LABELS, **labels}) or 0.0


def refused(metrics: ChatMetrics, reason: str) -> float:
    return metrics.registry.get_sample_value("chatprobe_proxy_refused_connections_total",
                                             {"target": "upstream", "source": "live", "reason": reason}) or 0.0


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)  # wait-ok: poll interval of a condition wait bounded by the timeout


@contextlib.asynccontextmanager
async def proxy_to(upstream: str, settle: float = 0.05, deadline: str = "5s", record: Path | None = None,
                   **options) -> AsyncIterator[tuple[str, ChatMetrics, SSEProxy]]:
    metrics = ChatMetrics(CollectorRegistry())
    sink = MetricsSink(metrics, "upstream", "live")
    sink.declare("live")
    live = LiveChats(AGUI, sink, expectations_for(AGUI, Expect(deadline=deadline)), "live", settle,
                     Recorder(str(record), keep_all=True) if record else None)
    proxy = SSEProxy(upstream, live, **options)
    server = await start_sse_proxy(proxy, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", metrics, proxy
    finally:
        server.close()
        async with asyncio.timeout(10):
            await server.wait_closed()
        live.stop()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes, bytes], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_upstream(handler: Handler) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A hand-written HTTP server: reads each request's head and body (Content-Length), hands them to `handler`."""
    heads: list[bytes] = []
    tasks: set[asyncio.Task] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            heads.append(head)
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            body = await reader.readexactly(length)
            await handler(reader, writer, head, body)
            # What the handler wrote reaches the kernel before the reset: drain() returns with up to its low-water
            # mark (16 KiB) still buffered (64 KiB when not paused), which abort() drops. A proxy reading slowly (a
            # loaded machine) then saw a body cut short by the server. With no write buffer allowed, drain() waits
            # for every byte to leave it (or for the proxy to drop the connection).
            writer.transport.set_write_buffer_limits(0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", heads
    finally:
        server.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def answer(pieces: list[bytes], head: bytes = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n", end: bool = True, then: Awaitable[None] | None = None) -> Handler:
    async def handle(reader, writer, _head, _body):
        writer.write(head)
        for p in pieces:  # each piece its own write: the proxy relays them as they come
            writer.write(b"%x\r\n%s\r\n" % (len(p), p))
            await writer.drain()
        if end:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        if then is not None:
            await then
    return handle


# -- agentsim behind the proxy, the harness's own SSE client in front --

async def test_agentsim_behind_the_proxy_each_chat_judged_as_the_client_judges_it(tmp_path):
    secret = secrets.token_urlsafe(32)
    sim = AguiSim(SimConfig(host="127.0.0.1", port=0, jwt_secret=secret, think=0.002, tool_latency=0.001,
                            protocol="ag-ui", faults=["drop_result=0.5"], seed=3))
    await sim.start()
    try:
        async with proxy_to(f"http://127.0.0.1:{sim.port}") as (url, metrics, _):
            target = Target(url=f"{url}/agent", profile=AGUI, name="p", tokens=TokenProvider(jwt_secret=secret))
            run = await run_scenario(scenario(users=2, chats_per_user=4), target)
            passed = sum(r.outcome.value == "passed" for r in run.results)
            r5 = sum(any(v.rule.value == "R5" for v in r.violations) for r in run.results)
            assert run.stats.chats == 8 and 0 < passed < 8 and r5 == 8 - passed  # the fault hit some chats, not all
            await until(lambda: sum(sample(metrics, "chatprobe_chats_total", outcome=o)
                                    for o in ("passed", "failed", "incomplete", "error")) == 8)
            assert sample(metrics, "chatprobe_chats_total", outcome="passed") == passed
            assert sample(metrics, "chatprobe_rule_violations_total", rule="R5") >= r5
            assert sample(metrics, "chatprobe_connections_total", result="ok") == 8
            assert sample(metrics, "chatprobe_chats_in_flight") == 0
            assert sample(metrics, "chatprobe_events_total", event="agent_completed") == 8
            text = generate_latest(metrics.registry).decode()
            assert "Bearer" not in text and secret not in text
    finally:
        await sim.stop()


# -- what is relayed, and what is counted --

async def test_the_relayed_bytes_are_the_upstreams_and_the_chat_is_judged():
    pieces = sse(*RUN[:2]) + [b": a comment\n\n", sse(RUN[2])[0][:7], sse(RUN[2])[0][7:]] + sse(*RUN[3:])
    async with raw_upstream(answer(pieces, head=b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                              b"X-Server: raw\r\nTransfer-Encoding: chunked\r\n\r\n")) as (up, heads):
        async with proxy_to(up) as (url, metrics, _):
            async with httpx.AsyncClient(timeout=10) as client:
                async with client.stream("POST", f"{url}/agent?x=1", content=BODY,
                                         headers={"Accept": "text/event-stream", "Authorization": "Bearer tok-1",
                                                  "Accept-Encoding": "br, gzip"}) as response:
                    got = b"".join([chunk async for chunk in response.aiter_raw()])
                    assert response.status_code == 200 and response.headers["x-server"] == "raw"
            assert got == b"".join(pieces)
            await until(lambda: sample(metrics, "chatprobe_chats_total", outcome="passed") == 1)
            assert sample(metrics, "chatprobe_connections_total", result="ok") == 1
            assert sample(metrics, "chatprobe_events_total", event="agent_completed") == 1
    head = heads[0].decode().lower()
    # forwarded: the path and query, the credentials; the upstream is told only codings the proxy can unpack
    assert head.startswith("post /agent?x=1 http/1.1") and "authorization: bearer tok-1" in head
    assert "accept-encoding: gzip\r\n" in head and "br" not in head.split("accept-encoding")[1].split("\r\n")[0]


async def test_a_chats_request_body_is_decoded_once():
    """The request's body is read by the profile once, for whether it is a chat and for the chat's tracker (a client's
    body of 4 MiB was decoded twice)."""
    decodes: list[str] = []

    def hook(frame, event, arg) -> None:
        if event == "call" and frame.f_code.co_qualname == "Decoder.decode_client":
            decodes.append(frame.f_code.co_filename)

    async with raw_upstream(answer(sse(*RUN))) as (up, _):
        async with proxy_to(up) as (url, metrics, _proxy):
            async with httpx.AsyncClient(timeout=10) as client:
                previous = sys.getprofile()
                sys.setprofile(hook)
                try:
                    async with client.stream("POST", f"{url}/agent", content=BODY,
                                             headers={"Accept": "text/event-stream"}) as response:
                        assert response.status_code == 200
                        await response.aread()
                finally:
                    sys.setprofile(previous)
            await until(lambda: sample(metrics, "chatprobe_chats_total", outcome="passed") == 1)
    assert len(decodes) == 1, decodes


async def test_answers_that_are_no_event_stream_are_relayed_unchanged_and_no_chat():
    async def handle(reader, writer, head, body):
        if head.startswith(b"GET /health"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}")
        else:
            writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n"
                         b"{\"error\":\"auth\"}")
        await writer.drain()

    async with raw_upstream(handle) as (up, _), proxy_to(up) as (url, metrics, _):
        async with httpx.AsyncClient(timeout=10) as client:
            health = await client.get(f"{url}/health")
            denied = await client.post(f"{url}/agent", content=BODY)
        assert (health.status_code, health.content) == (200, b'{"ok":true}')
        assert (denied.status_code, denied.content) == (401, b'{"error":"auth"}')
        # the chat's request answered 401 counts as the WebSocket side counts an upgrade the upstream refused
        assert sample(metrics, "chatprobe_connections_total", result="auth_failed") == 1
        assert sample(metrics, "chatprobe_connections_total", result="ok") == 0
        assert sum(sample(metrics, "chatprobe_chats_total", outcome=o) for o in ("passed", "failed", "error")) == 0


async def test_an_https_upstream_is_verified_and_one_with_an_unknown_ca_is_a_tls_error(tmp_path):
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            await reader.readexactly(length)
            await answer(sse(*RUN))(reader, writer, head, b"")
        writer.transport.abort()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_tls)
    up = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    trusting = ConnectSettings(url=up, ca_file=str(tmp_path / "ca.pem"))  # --upstream-ca-file
    try:
        async with proxy_to(up, tls=trusting) as (url, metrics, _), httpx.AsyncClient(timeout=10) as client:
            response = await client.post(f"{url}/agent", content=BODY)
            assert response.status_code == 200 and response.content == b"".join(sse(*RUN))
            await until(lambda: sample(metrics, "chatprobe_chats_total", outcome="passed") == 1)
        async with proxy_to(up) as (url, metrics, _), httpx.AsyncClient(timeout=10) as client:
            assert (await client.post(f"{url}/agent", content=BODY)).status_code == 502
            assert sample(metrics, "chatprobe_connections_total", result="tls_error") == 1
    finally:
        server.close()


# -- hostile upstreams --

async def test_an_upstream_cutting_its_chunked_body_is_an_r12_and_the_client_sees_the_cut():
    async with raw_upstream(answer(sse(*RUN[:3]), end=False)) as (up, _), proxy_to(up) as (url, metrics, _):
        async with httpx.AsyncClient(timeout=10) as client:
            with contextlib.suppress(httpx.RemoteProtocolError):
                async with client.stream("POST", f"{url}/agent", content=BODY) as response:
                    async for _ in response.aiter_raw():
                        pass
                raise AssertionError("the client saw a clean end of a stream the upstream cut")
        await until(lambda: sample(metrics, "chatprobe_rule_violations_total", rule="R12") == 1)
        await until(lambda: sample(metrics, "chatprobe_chats_in_flight") == 0)
        assert sample(metrics, "chatprobe_chats_total", outcome="passed") == 0


async def test_a_gzip_bomb_costs_the_proxy_no_more_than_its_limit():
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), 9)  # one endless line once unpacked
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: %d\r\n\r\n" % len(bomb))

    async def handle(reader, writer, _head, _body):
        writer.write(head + bomb)
        await writer.drain()

    async with raw_upstream(handle) as (up, _), proxy_to(up, max_size=64 * 1024) as (url, metrics, _):
        tracemalloc.start()
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                async with client.stream("POST", f"{url}/agent", content=BODY) as response:
                    got = b"".join([chunk async for chunk in response.aiter_raw()])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert got == bomb  # relayed as sent, packed
        assert peak < 16 * 1024 * 1024, peak
        await until(lambda: sample(metrics, "chatprobe_rule_violations_total", rule="R12") == 1)


async def test_an_upstream_that_never_answers_or_drips_its_head_is_a_504_within_the_connect_timeout():
    never = asyncio.Event()

    async def handle(reader, writer, head, _body):
        if b"/drip" in head:
            writer.write(b"HTTP/1.1 200 OK\r\n")
            for b in b"Content-Type: text/event-stream\r\n" * 100:
                writer.write(bytes([b]))
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):  # wait-ok: the drip itself (a slow upstream)
                        await never.wait()
        await never.wait()

    async with raw_upstream(handle) as (up, _), proxy_to(up, connect_timeout=0.5) as (url, metrics, _):
        async with httpx.AsyncClient(timeout=10) as client:
            for path in ("/agent", "/drip"):
                started = time.monotonic()
                response = await client.post(f"{url}{path}", content=BODY)
                assert response.status_code == 504 and time.monotonic() - started < 5
        assert sample(metrics, "chatprobe_connections_total", result="timeout") == 2


async def test_an_upstream_that_goes_silent_mid_stream_is_cut_at_the_read_timeout_and_judged():
    never = asyncio.Event()
    async with raw_upstream(answer(sse(RUN[0]), end=False, then=never.wait())) as (up, _), \
            proxy_to(up, read_timeout=1.0, deadline="0.5s") as (url, metrics, _):
        async with httpx.AsyncClient(timeout=10) as client:
            with contextlib.suppress(httpx.RemoteProtocolError):
                async with client.stream("POST", f"{url}/agent", content=BODY) as response:
                    async for _ in response.aiter_raw():
                        pass
        await until(lambda: sample(metrics, "chatprobe_chats_total", outcome="incomplete") == 1)


def _flooding_upstream(stop: threading.Event) -> tuple[socket.socket, threading.Thread]:
    """A thread answering /flood with one-byte chunks as fast as its socket takes them (until `stop`), and anything
    else with a short JSON answer: the flood keeps the proxy's socket always readable."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)

    def serve(conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            if head.startswith(b"POST /flood"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                             + chunked(sse(RUN[0]), end=False))
                # On until `stop`, however long the proxy takes to read it (its backlog of one-byte chunks on a
                # loaded machine): a sendall() timing out ended the flood early, mid-test, and a send cut short by a
                # timeout would leave a chunk half-written, so each send's remainder is sent next.
                burst = memoryview(b"1\r\n:\r\n" * 4096)
                rest = burst
                with contextlib.suppress(OSError):
                    while not stop.is_set():
                        try:
                            rest = rest[conn.send(rest):] or burst
                        except TimeoutError:
                            continue
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return listener, thread


# The most of the flood relayed to its reader while another client's request went through the proxy. The proxy relays
# one write of a chunk of at most EVENTS_PER_TURN one-byte pieces (263 bytes) a turn of its loop: another request took
# some 21 turns (5,699 bytes relayed beside it, loaded machine or not), where a proxy parsing a whole read (11,000
# pieces) a turn relayed 65-87 KB beside it (and the request waited 12-14 s on a loaded machine). Counted in bytes,
# not seconds: on a loaded machine the fair proxy's answer took 1.3-1.6 s as well.
FLOOD_BESIDE_ANOTHER = 16 * 1024


async def test_a_flood_of_tiny_chunks_does_not_starve_another_client():
    stop = threading.Event()
    listener, thread = _flooding_upstream(stop)
    try:
        up = f"http://127.0.0.1:{listener.getsockname()[1]}"
        async with proxy_to(up, deadline="60s") as (url, metrics, _):
            flooded, left = threading.Event(), threading.Event()
            port = int(url.rsplit(":", 1)[1])
            got = [0]  # bytes of the flood relayed to its reader

            def flood_client() -> None:
                """The flood's reader, in a thread of its own (its reading costs this test's event loop nothing)."""
                with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                    conn.sendall(b"POST /flood HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
                    with contextlib.suppress(OSError):
                        while not left.is_set() and (data := conn.recv(65536)):
                            got[0] += len(data)
                            # the flood under way through the proxy (one-byte chunks are slow to relay: 256 KiB
                            # of them took 25 s on a loaded machine, past the wait for them below)
                            if got[0] > 1 << 14:
                                flooded.set()

            reader = threading.Thread(target=flood_client, daemon=True)
            reader.start()
            try:
                await until(flooded.is_set, timeout=30)
                async with httpx.AsyncClient(timeout=10) as other:
                    before = got[0]
                    quick = await other.get(f"{url}/other")
                    beside = got[0] - before
                assert quick.status_code == 200 and quick.content == b"{}"
                assert beside < FLOOD_BESIDE_ANOTHER, f"another client waited behind {beside} bytes of the flood"
            finally:
                left.set()  # the flood's reader leaves mid-run (the upstream floods on)
                await asyncio.to_thread(reader.join, 10)
            # the flooded chat is judged as a client that left mid-run
            await until(lambda: sample(metrics, "chatprobe_chats_abandoned_total") == 1)
    finally:
        stop.set()
        listener.close()
        thread.join(5)


# -- hostile clients --

async def _raw_client(url: str, data: bytes, *, drip: float = 0.0, read: bool = True) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        if drip:
            for b in data:
                writer.write(bytes([b]))
                try:
                    async with asyncio.timeout(drip):  # a byte each `drip` seconds until the proxy answers
                        first = await reader.read(1)
                except TimeoutError:
                    continue
                async with asyncio.timeout(10):
                    return first + await reader.read()
        else:
            writer.write(data)
        if not read:
            return b""
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.transport.abort()


async def test_hostile_requests_are_answered_by_the_proxy_and_counted():
    async def handle(reader, writer, head, body):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with raw_upstream(handle) as (up, heads), \
            proxy_to(up, max_size=1024, request_timeout=0.5) as (url, metrics, _):
        big_head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (70 * 1024) + b"\r\n\r\n"
        assert (await _raw_client(url, big_head)).startswith(b"HTTP/1.1 431 ")
        big_body = b"POST /agent HTTP/1.1\r\nHost: x\r\nContent-Length: 2048\r\n\r\n" + b"{" * 2048
        assert (await _raw_client(url, big_body)).startswith(b"HTTP/1.1 413 ")
        chunked_body = (b"POST /agent HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                        + chunked([b"x" * 800, b"y" * 800]))
        assert (await _raw_client(url, chunked_body)).startswith(b"HTTP/1.1 413 ")
        twice = b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n"
        assert (await _raw_client(url, twice)).startswith(b"HTTP/1.1 400 ")
        for target in (b"//evil.example/x", b"/a/../../x", b"http://evil.example/"):
            assert (await _raw_client(url, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
                b"HTTP/1.1 400 "), target
        assert (await _raw_client(url, b"\x16\x03\x01garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        # a client dripping its request past the request deadline: 408, never forwarded
        started = time.monotonic()
        dripped = await _raw_client(url, b"GET /slow HTTP/1.1\r\nHost: x\r\nX-A: " + b"b" * 200, drip=0.01)
        assert dripped.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started < 5
        assert refused(metrics, "bad_request") == 9
        assert heads == []  # none of them reached the upstream
        # the proxy still serves a good request after all that
        assert (await _raw_client(url, b"GET /fine HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).endswith(b"ok")


async def test_a_client_leaving_mid_stream_closes_the_upstream_request_and_abandons_the_chat():
    upstream_saw_end = asyncio.Event()

    async def handle(reader, writer, _head, _body):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + chunked(sse(RUN[0]), end=False))
        await writer.drain()
        async with asyncio.timeout(10):
            await reader.read()  # the proxy's end of the upstream request
        upstream_saw_end.set()

    async with raw_upstream(handle) as (up, _), proxy_to(up) as (url, metrics, _):
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /agent HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
        async with asyncio.timeout(10):
            assert b"RUN_STARTED" in await reader.readuntil(b"RUN_STARTED")
        writer.close()
        async with asyncio.timeout(10):
            await upstream_saw_end.wait()
        await until(lambda: sample(metrics, "chatprobe_chats_abandoned_total") == 1)
        assert sample(metrics, "chatprobe_chats_in_flight") == 0


# -- secrets --

async def test_credentials_the_upstream_echoes_reach_no_recording_metric_or_log(tmp_path, caplog):
    token = "tok-" + secrets.token_hex(16)
    cookie = "sess-" + secrets.token_hex(16)
    echo = [{"type": "RUN_STARTED", "threadId": "t1", "runId": "r1"},
            {"type": "RUN_ERROR", "message": f"bad token Bearer {token} cookie {cookie}"}]

    async def handle(reader, writer, head, body):
        assert token.encode() in head and cookie.encode() in head  # forwarded to the upstream
        await answer(sse(*echo), head=b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-Echo: " + token.encode()
                     + b"\r\nTransfer-Encoding: chunked\r\n\r\n")(reader, writer, head, body)

    record = tmp_path / "rec"
    async with raw_upstream(handle) as (up, _), proxy_to(up, record=record) as (url, metrics, _):
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(f"{url}/agent?access_token={token}", content=BODY,
                                         headers={"Authorization": f"Bearer {token}", "Cookie": f"s={cookie}"})
        assert token.encode() in response.content  # the user sees what the server sent
        await until(lambda: sum(sample(metrics, "chatprobe_chats_total", outcome=o)
                                for o in ("passed", "failed", "incomplete", "error")) == 1)
        text = generate_latest(metrics.registry).decode()
    files = list(record.rglob("*.jsonl"))
    assert files and any(b"RUN_ERROR" in f.read_bytes() for f in files)
    for f in files:
        data = f.read_bytes()
        assert token.encode() not in data and cookie.encode() not in data
    assert token not in text and cookie not in text
    assert token not in caplog.text and cookie not in caplog.text


# -- the command --

def _proxy_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "proxy", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_the_command_refuses_an_http_upstream_for_a_websocket_only_profile():
    proc = _proxy_cli("--upstream", "http://127.0.0.1:9", "--profile", "netra", "--metrics-listen", "127.0.0.1:0")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and b"--upstream" in err and b"SSE" in err


async def test_the_command_proxies_an_http_upstream_and_serves_metrics():
    secret = secrets.token_urlsafe(32)
    sim = AguiSim(SimConfig(host="127.0.0.1", port=0, jwt_secret=secret, think=0.002, tool_latency=0.001,
                            protocol="ag-ui"))
    await sim.start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        mport = s.getsockname()[1]
    proc = _proxy_cli("--upstream", f"http://127.0.0.1:{sim.port}", "--profile", "ag-ui", "--listen", "127.0.0.1:0",
                      "--metrics-listen", f"127.0.0.1:{mport}", "--target-name", "upstream", "--settle", "0.05s", "-v")
    try:
        assert proc.stdout is not None
        line = b""
        async with asyncio.timeout(30):
            while b"listening on" not in line:
                line = await asyncio.to_thread(proc.stdout.readline)
                assert line, proc.stderr.read() if proc.stderr else b""
        url = line.decode().split("listening on ", 1)[1].split(" ", 1)[0]
        assert url.startswith("http://127.0.0.1:")
        target = Target(url=f"{url}/agent", profile=AGUI, name="p", tokens=TokenProvider(jwt_secret=secret))
        run = await run_scenario(scenario(users=1, chats_per_user=2), target)
        assert [r.outcome.value for r in run.results] == ["passed", "passed"]
        async with httpx.AsyncClient(timeout=10) as client:
            async def passed() -> bool:
                text = (await client.get(f"http://127.0.0.1:{mport}/metrics")).text
                return 'chatprobe_chats_total{outcome="passed",scenario="live",source="live",target="upstream"} 2.0' \
                    in text
            async with asyncio.timeout(10):
                while not await passed():
                    await asyncio.sleep(0.05)  # wait-ok: poll interval of a condition wait bounded by the timeout
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(proc.communicate, timeout=30)
        await sim.stop()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    # -v: a line per answer (it logged none of its own), never a credential
    assert err.count(b"POST /agent from 127.0.0.1: HTTP 200") == 2, err
    assert b"Bearer" not in err and b"eyJ" not in err


# -- --record, and the proxy stopping --

async def test_record_writes_what_check_judges_as_the_proxy_did(tmp_path):
    record = tmp_path / "rec"

    async def handle(reader, writer, head, body):
        cut = b"/cut" in head.split(b"\r\n", 1)[0]
        await answer(sse(*RUN[:2]) if cut else sse(*RUN), end=not cut)(reader, writer, head, body)

    async with raw_upstream(handle) as (up, _), proxy_to(up, record=record) as (url, metrics, _):
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.post(f"{url}/agent", content=BODY)).status_code == 200
            with contextlib.suppress(httpx.RemoteProtocolError):
                await client.post(f"{url}/cut", content=BODY)
        await until(lambda: sum(sample(metrics, "chatprobe_chats_total", outcome=o)
                                for o in ("passed", "failed", "incomplete", "error")) == 2)
        live = {o: sample(metrics, "chatprobe_chats_total", outcome=o) for o in ("passed", "failed", "incomplete")}
        r12 = sample(metrics, "chatprobe_rule_violations_total", rule="R12")
    report = tmp_path / "check.json"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "harness.cli", "check", str(record), "--profile",
                                                "ag-ui", "--json", str(report), "--quiet",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        await proc.communicate()
    assert proc.returncode == 1  # a chat did not pass
    stats = json.loads(report.read_text())["scenarios"][0]["stats"]
    assert {o: stats["outcomes"][o] for o in live} == live  # the proxy's verdicts, again from its recording
    assert r12 == 1 and stats["violations"].get("R12") == 1


async def test_a_stream_in_flight_as_the_proxy_stops_is_counted_unjudged_and_cut_within_the_grace():
    from monitors.proxy import stop_proxy

    never = asyncio.Event()
    async with raw_upstream(answer(sse(RUN[0]), end=False, then=never.wait())) as (up, _):
        metrics = ChatMetrics(CollectorRegistry())
        sink = MetricsSink(metrics, "upstream", "live")
        live = LiveChats(AGUI, sink, expectations_for(AGUI, Expect(deadline="60s")), "live", 0.05)
        proxy = SSEProxy(up, live)
        server = await start_sse_proxy(proxy, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        host, port = url.removeprefix("http://").split(":")
        idle_reader, idle_writer = await asyncio.open_connection(host, int(port))  # a client that sent nothing yet
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /agent HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
        async with asyncio.timeout(10):
            await reader.readuntil(b"RUN_STARTED")
        started = time.monotonic()
        live.begin_stop()
        assert proxy.door is not None
        await stop_proxy(server, proxy.door, grace=0.5)
        live.stop()
        assert time.monotonic() - started < 5
        async with asyncio.timeout(5):
            await reader.read()  # the stream was cut
            assert await idle_reader.read() == b""  # closed at once
        writer.close()
        idle_writer.close()
        assert metrics.registry.get_sample_value("chatprobe_chats_unjudged_total",
                                                 {**LABELS, "reason": "proxy_stopped"}) == 1
        assert sum(sample(metrics, "chatprobe_chats_total", outcome=o)
                   for o in ("passed", "failed", "incomplete", "error")) == 0


async def test_a_client_that_stops_reading_is_cut_at_the_send_timeout_and_its_chat_abandoned():
    flood = sse(RUN[0]) + [b": " + b"x" * 60000 + b"\n\n"] * 400  # ~24 MB, far more than the socket buffers hold

    async with raw_upstream(answer(flood)) as (up, _), proxy_to(up, send_timeout=0.5) as (url, metrics, _):
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port), limit=1024)
        writer.transport.pause_reading()  # reads nothing of its answer
        writer.write(b"POST /agent HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
        try:
            await until(lambda: sample(metrics, "chatprobe_chats_abandoned_total") == 1)
            assert sample(metrics, "chatprobe_chats_in_flight") == 0
        finally:
            writer.transport.abort()


async def test_both_values_of_a_credential_header_sent_twice_are_kept_out_of_the_recording(tmp_path):
    first, second = "key-" + secrets.token_hex(12), "key-" + secrets.token_hex(12)
    echo = [RUN[0], {"type": "RUN_ERROR", "message": f"keys {first} and {second}"}]
    record = tmp_path / "rec"
    async with raw_upstream(answer(sse(*echo))) as (up, _), proxy_to(up, record=record) as (url, metrics, _):
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(f"{url}/agent", content=BODY,
                                         headers=[("X-Api-Key", first), ("X-Api-Key", second)])
        assert first.encode() in response.content and second.encode() in response.content
        await until(lambda: sum(sample(metrics, "chatprobe_chats_total", outcome=o)
                                for o in ("passed", "failed", "incomplete", "error")) == 1)
    data = b"".join(f.read_bytes() for f in record.rglob("*.jsonl"))
    assert b"RUN_ERROR" in data and first.encode() not in data and second.encode() not in data


async def test_requests_pipelined_on_one_kept_alive_connection_are_each_forwarded_and_answered_in_order():
    async def handle(reader, writer, head, body):
        path = head.split(b" ", 2)[1]
        if path == b"/agent":
            await answer(sse(*RUN))(reader, writer, head, body)
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))
            await writer.drain()

    async with raw_upstream(handle) as (up, heads), proxy_to(up) as (url, metrics, _):
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /agent HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
                     + b"GET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(10):
            got = await reader.read()
        writer.close()
        assert got.count(b"HTTP/1.1 200 ") == 3
        assert got.index(b"/one") < got.index(b"RUN_FINISHED") < got.index(b"/three")
        assert [h.split(b" ", 2)[1] for h in heads] == [b"/one", b"/agent", b"/three"]
        await until(lambda: sample(metrics, "chatprobe_chats_total", outcome="passed") == 1)


async def test_a_request_sent_while_the_previous_answer_streams_is_kept_and_answered_after_it():
    go = asyncio.Event()

    async def handle(reader, writer, head, body):
        if head.startswith(b"POST"):
            await answer(sse(*RUN[:1]), end=False)(reader, writer, head, body)
            await go.wait()
            writer.write(chunked(sse(*RUN[1:])))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n/two")
        await writer.drain()

    async with raw_upstream(handle) as (up, heads), proxy_to(up) as (url, metrics, _):
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /agent HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
        async with asyncio.timeout(10):
            first = await reader.readuntil(b"RUN_STARTED")
            writer.write(b"GET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await writer.drain()
            go.set()  # the rest of the first answer, after the second request came
            got = first + await reader.read()
        writer.close()
        assert got.count(b"HTTP/1.1 200 ") == 2 and got.index(b"RUN_FINISHED") < got.index(b"/two")
        assert [h.split(b" ", 2)[1] for h in heads] == [b"/agent", b"/two"]
        await until(lambda: sample(metrics, "chatprobe_chats_total", outcome="passed") == 1)


async def test_sigterms_drain_lets_a_stream_in_flight_end_and_closes_an_idle_connection_at_once():
    """The drain (`chatprobe proxy`'s SIGTERM, --drain-timeout) on the HTTP side, as on the WebSocket side: the listener
    closes, a kept-alive connection waiting for its next request is closed at once, a stream in flight is relayed to
    its end and judged as any other, and one still streaming when the drain's time is up is cut, counted unjudged
    (proxy_stopped). The HTTP side had no drain: the stop sequence took the WebSocket side's proxy."""
    from monitors.proxy import stop_proxy

    release, never = asyncio.Event(), asyncio.Event()

    async def handle(reader, writer, head, body):
        if head.startswith(b"GET /health "):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            return
        short = b"/short" in head.split(b"\r\n", 1)[0]
        gate = release.wait() if short else never.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in sse(*RUN[:2]):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await writer.drain()
        await gate
        writer.write(chunked(sse(*RUN[2:])))
        await writer.drain()

    async with raw_upstream(handle) as (up, _):
        metrics = ChatMetrics(CollectorRegistry())
        sink = MetricsSink(metrics, "upstream", "live")
        live = LiveChats(AGUI, sink, expectations_for(AGUI, Expect(deadline="60s")), "live", 0.05)
        proxy = SSEProxy(up, live)
        server = await start_sse_proxy(proxy, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        streams = {}
        for path in ("short", "long"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), len(BODY),
                                                                                           BODY))
            async with asyncio.timeout(10):
                await reader.readuntil(b"TEXT_MESSAGE_START")
            streams[path] = (reader, writer)
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(10):  # a kept-alive client between requests: one answered, the next not sent
            idle_writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            await idle_reader.readuntil(b"\r\n\r\nok")
        await until(lambda: len(proxy.relays) == 3)
        live.begin_stop()
        drain = asyncio.ensure_future(proxy.drain(server, 3.0))
        async with asyncio.timeout(2):
            while await idle_reader.read(65536):  # the idle connection is closed at once
                pass
        try:
            await asyncio.open_connection("127.0.0.1", port)
            accepted = True
        except OSError:
            accepted = False
        assert not accepted  # the listener is closed
        release.set()
        async with asyncio.timeout(10):
            rest = await streams["short"][0].read()  # relayed to its end, then its connection closed
        assert b"RUN_FINISHED" in rest and rest.endswith(b"0\r\n\r\n"), rest[-200:]
        await until(lambda: sample(metrics, "chatprobe_chats_total", outcome="passed") == 1)
        assert not drain.done()  # the long stream holds the drain to its time
        async with asyncio.timeout(10):
            left = await drain
        assert left == 1
        live.cut()
        assert proxy.door is not None
        await stop_proxy(server, proxy.door, grace=0.5)
        live.stop()
        for _, writer in streams.values():
            writer.close()
        idle_writer.close()
    assert metrics.registry.get_sample_value("chatprobe_chats_unjudged_total",
                                             {**LABELS, "reason": "proxy_stopped"}) == 1
    assert {o: sample(metrics, "chatprobe_chats_total", outcome=o)
            for o in ("passed", "failed", "incomplete", "error")} == {"passed": 1, "failed": 0, "incomplete": 0,
                                                                       "error": 0}


async def test_requests_a_server_in_front_could_read_otherwise_are_refused_and_never_reach_the_upstream():
    """Request smuggling: bytes that two HTTP readers may split into different requests. A request framed both by
    Content-Length and chunks (CL.TE: here the chunked body is empty and a second request follows, which a server in
    front reading 4 bytes of body saw as part of the first), a head with lines ended by LF alone (a pipelined one too,
    behind a good request), and CONNECT: each refused (400, 501) before anything reaches the upstream, the connection
    closed, counted bad_request. h11 took all of them: the smuggled GET reached the upstream, CONNECT /x was passed on."""
    async def handle(reader, writer, head, body):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with raw_upstream(handle) as (up, heads), proxy_to(up) as (url, metrics, _):
        smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        cl_te = (b"POST /agent HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"0\r\n\r\n" + smuggled)
        got = await _raw_client(url, cl_te)
        assert got.startswith(b"HTTP/1.1 400 ") and got.count(b"HTTP/1.1") == 1, got
        te_cl = (b"POST /agent HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
                 b"0\r\n\r\n" + smuggled)
        assert (await _raw_client(url, te_cl)).startswith(b"HTTP/1.1 400 ")
        bare = b"GET /bare HTTP/1.1\nHost: x\nX-A: a\r\nConnection: close\r\n\r\n"
        assert (await _raw_client(url, bare)).startswith(b"HTTP/1.1 400 ")
        bare_header = b"GET /bare HTTP/1.1\r\nHost: x\r\nX-A: a\nTransfer-Encoding: chunked\r\n\r\n"
        assert (await _raw_client(url, bare_header)).startswith(b"HTTP/1.1 400 ")
        # behind a good request in the same write (the bytes h11 holds past the first request are checked too)
        got = await _raw_client(url, b"GET /fine HTTP/1.1\r\nHost: x\r\n\r\n" + bare)
        assert got.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 400 " in got, got
        for target in (b"/x", b"evil.example:443"):
            assert (await _raw_client(url, b"CONNECT " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
                b"HTTP/1.1 501 "), target
        # a body with bare LFs is a body: passed on
        body = b"{\n}\n"
        got = await _raw_client(url, b"POST /fine HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close"
                                     b"\r\n\r\n" + body)
        assert got.startswith(b"HTTP/1.1 200 "), got
        assert [h.split(b" ", 2)[1] for h in heads] == [b"/fine", b"/fine"]
        assert refused(metrics, "bad_request") == 7


async def test_an_upstreams_answer_framed_both_ways_is_relayed_whole_and_the_headers_its_connection_names_are_not():
    """An upstream answering with Content-Length and Transfer-Encoding: chunked (RFC 9112 §6.3: the chunks frame it,
    and an intermediary drops the length): the proxy kept the length, framed the client's answer by it, and cut it at
    the first chunk longer than that (an event stream's chat with it). Headers the upstream's Connection names (RFC
    9110 §7.6.1, one hop's) were passed on to the client, and a 204's Content-Length (which a reader in front framing
    by it would take the next answer's bytes for)."""
    async def handle(reader, writer, head, body):
        if head.startswith(b"POST"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 3\r\n"
                         b"Transfer-Encoding: chunked\r\nConnection: keep-alive, X-Internal\r\nX-Internal: s3cr3t\r\n"
                         b"X-Kept: yes\r\n\r\n" + chunked(sse(*RUN)))
        elif head.startswith(b"GET /204 "):
            writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: s3cr3t\r\nContent-Length: 2\r\n\r\n"
                         b"ok")
        await writer.drain()

    async with raw_upstream(handle) as (up, _), proxy_to(up) as (url, metrics, _):
        got = await _raw_client(url, b"POST /agent HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close"
                                     b"\r\n\r\n%s" % (len(BODY), BODY))
        head, _, rest = got.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower() and b"content-length" not in head.lower(), head
        assert b"X-Kept: yes" in head and b"X-Internal" not in head, head
        assert b"RUN_FINISHED" in rest and rest.endswith(b"0\r\n\r\n"), rest[-200:]
        await until(lambda: sample(metrics, "chatprobe_chats_total", outcome="passed") == 1)
        got = await _raw_client(url, b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"\r\n\r\nok") and b"X-Internal" not in got, got
        # a 204 with a Content-Length (RFC 9110 §8.6: never): relayed without it, the next answer whole after it
        got = await _raw_client(url, b"GET /204 HTTP/1.1\r\nHost: x\r\n\r\nGET /other HTTP/1.1\r\nHost: x\r\n"
                                     b"Connection: close\r\n\r\n")
        first, _, second = got.partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 204 ") and b"content-length" not in first.lower(), got
        assert second.startswith(b"HTTP/1.1 200 ") and second.endswith(b"\r\n\r\nok"), got


async def test_a_request_partly_sent_as_the_drain_begins_is_served_and_its_connection_closed_after():
    """SIGTERM's drain on the HTTP side: a client that had sent part of its chat's POST (its head, half its body) when
    the drain began had its connection reset, its message lost, at every deploy; an idle kept-alive one is still
    closed at once. The request is now let come whole, forwarded, its answer relayed with `Connection: close` and the
    connection closed after it; the chat is judged as any other."""
    from monitors.proxy import stop_proxy

    async with raw_upstream(answer(sse(*RUN))) as (up, heads):
        metrics = ChatMetrics(CollectorRegistry())
        sink = MetricsSink(metrics, "upstream", "live")
        live = LiveChats(AGUI, sink, expectations_for(AGUI, Expect(deadline="60s")), "live", 0.05)
        proxy = SSEProxy(up, live)
        server = await start_sse_proxy(proxy, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /agent HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY[:20]))
        await writer.drain()
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: len(proxy.relays) == 2 and any(c.heard for c in proxy.relays))
        live.begin_stop()
        drain = asyncio.ensure_future(proxy.drain(server, 5.0))
        async with asyncio.timeout(5):
            assert await idle_reader.read() == b""  # the idle connection: closed at once
        writer.write(BODY[20:])
        async with asyncio.timeout(10):
            got = await reader.read()  # the answer whole, then the connection's end
        head = got.partition(b"\r\n\r\n")[0]
        assert got.startswith(b"HTTP/1.1 200 ") and b"connection: close" in head.lower(), got[:300]
        assert b"RUN_FINISHED" in got and got.endswith(b"0\r\n\r\n"), got[-200:]
        async with asyncio.timeout(10):
            assert await drain == 0
        await until(lambda: sample(metrics, "chatprobe_chats_total", outcome="passed") == 1)
        live.cut()
        assert proxy.door is not None
        await stop_proxy(server, proxy.door, grace=0.5)
        live.stop()
        writer.close()
        idle_writer.close()
    assert len(heads) == 1
    assert (metrics.registry.get_sample_value("chatprobe_chats_unjudged_total",
                                              {**LABELS, "reason": "proxy_stopped"}) or 0) == 0


async def test_a_clients_own_x_forwarded_for_reaches_the_upstream_only_from_a_trusted_proxy():
    """A client's X-Forwarded-For (X-Real-IP, Forwarded, X-Forwarded-Proto…) was passed on as it came: an upstream
    believing them from the proxy (uvicorn does from 127.0.0.1 by default: a proxy beside it) took any client's word
    for its address, past its own per-address limits and into its logs, while the proxy's own cap believes them only
    from --trusted-proxy. Now the upstream gets them only from a trusted proxy, and X-Forwarded-For always ends with
    the socket's peer."""
    import ipaddress

    async def handle(reader, writer, head, body):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    spoof = (b"GET /x HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6"
             b"\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nX-Other: kept\r\nConnection: close\r\n\r\n")
    async with raw_upstream(handle) as (up, heads), proxy_to(up) as (url, _, proxy):
        assert (await _raw_client(url, spoof)).endswith(b"ok")
        seen = heads[-1].lower()
        assert b"x-forwarded-for: 127.0.0.1\r\n" in seen and b"6.6.6.6" not in seen, seen
        assert b"x-forwarded-proto" not in seen and b"evil.example" not in seen and b"x-other: kept" in seen, seen
        assert proxy.door is not None
        proxy.door.trusted = (ipaddress.ip_network("127.0.0.1/32"),)  # the client is now a load balancer in front
        assert (await _raw_client(url, spoof)).endswith(b"ok")
        seen = heads[-1].lower()
        assert b"x-forwarded-for: 6.6.6.6, 127.0.0.1\r\n" in seen and b"x-real-ip: 6.6.6.6" in seen, seen
        assert b"x-forwarded-proto: https" in seen and b"forwarded: for=6.6.6.6" in seen, seen


async def test_a_second_sigterm_ends_the_drain_and_the_streams_left_are_cut_at_once():
    """A second SIGTERM (or the drain's time up): the streams still in flight are cut at once and counted unjudged.
    The HTTP side relayed them on for stop_proxy's whole grace (5 s), which the WebSocket side spends on closing
    handshakes an HTTP answer does not have: a second Ctrl-C ended the proxy 5 s later, not at once."""
    from monitors.proxy import stop_proxy

    never = asyncio.Event()

    async def handle(reader, writer, head, body):  # each answer begun, never ended
        await answer(sse(*RUN[:2]), end=False)(reader, writer, head, body)
        await never.wait()

    async with raw_upstream(handle) as (up, _):
        metrics = ChatMetrics(CollectorRegistry())
        sink = MetricsSink(metrics, "upstream", "live")
        live = LiveChats(AGUI, sink, expectations_for(AGUI, Expect(deadline="60s")), "live", 0.05)
        proxy = SSEProxy(up, live)
        server = await start_sse_proxy(proxy, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        streams = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /agent HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
            async with asyncio.timeout(10):
                await reader.readuntil(b"TEXT_MESSAGE_START")
            streams.append((reader, writer))
        live.begin_stop()
        second = asyncio.Event()
        drain = asyncio.ensure_future(proxy.drain(server, 30.0, second))
        await until(lambda: not server.server.is_serving())
        second.set()
        started = time.monotonic()
        async with asyncio.timeout(10):
            assert await drain == 3
        live.cut()
        assert proxy.door is not None
        await stop_proxy(server, proxy.door, grace=5.0)
        live.stop()
        assert time.monotonic() - started < 2.5
        for reader, writer in streams:
            async with asyncio.timeout(5):
                rest = await reader.read()
            assert not rest.endswith(b"0\r\n\r\n")  # cut, never a clean end
            writer.close()
    assert metrics.registry.get_sample_value("chatprobe_chats_unjudged_total",
                                             {**LABELS, "reason": "proxy_stopped"}) == 3
    assert sum(sample(metrics, "chatprobe_chats_total", outcome=o)
               for o in ("passed", "failed", "incomplete", "error")) == 0


# The most h11 events the proxy may parse in one turn of its event loop (pieces of a body, informational answers): it
# parses EVENTS_PER_TURN (256, 257 counted), where parsing a read whole was 10,000-44,000. Counted in turns, not with a
# clock: the loop's longest hold, bounded at 0.3 s, was 0.62 s on a loaded machine with the proxy handing it over.
MOST_PER_TURN = 2 * EVENTS_PER_TURN


def _flood(port: int, head: bytes, burst: bytes, stop: threading.Event) -> threading.Thread:
    """A thread sending `head`, then `burst` as fast as the socket takes it until `stop` or the peer closes."""
    def run() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn, contextlib.suppress(OSError):
            conn.sendall(head)
            while not stop.is_set():
                conn.sendall(burst)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def test_a_request_body_of_one_byte_chunks_does_not_hold_the_loop():
    """A client sending its body as one-byte chunks as fast as it can: h11 parsed each read of them (11,000 chunks in
    64 KiB) in one go, and reads kept coming without the loop being handed over: every other user's stream (and the
    proxy's timers, its first-event clocks with them) stood still for most of a second at a time. Now the loop is
    handed over every EVENTS_PER_TURN pieces, as for an upstream's chunks, until the request's deadline (408)."""
    async def handle(reader, writer, head, body):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    from .test_sse_proxy_event_flood import PerTurn

    stop = threading.Event()
    async with raw_upstream(handle) as (up, heads), proxy_to(up, request_timeout=3.0) as (url, metrics, _):
        async with PerTurn("next_event", "h11/_connection.py").counting() as per_turn:
            flood = _flood(int(url.rsplit(":", 1)[1]), b"POST /agent HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                           b"\r\n\r\n", b"1\r\nx\r\n" * 8192, stop)
            try:
                await until(lambda: refused(metrics, "bad_request") == 1, timeout=20)  # its 408
            finally:
                stop.set()
                await asyncio.to_thread(flood.join, 10)
        assert per_turn.most <= MOST_PER_TURN, f"{per_turn.most} pieces parsed in one turn of the event loop"
        assert heads == []


async def test_an_upstream_flooding_informational_answers_does_not_hold_the_loop():
    """An upstream answering with endless `100` responses (3,600 in 64 KiB), each skipped: the loop was held for half
    a second at a time until the connect timeout's 504."""
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):
            conn.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            while not stop.is_set():
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" * 4096)

    from .test_sse_proxy_event_flood import PerTurn

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        async with proxy_to(f"http://127.0.0.1:{listener.getsockname()[1]}", connect_timeout=3.0) as (url, _, _):
            async with PerTurn("next_event", "h11/_connection.py").counting() as per_turn:
                got = await _raw_client(url, b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert got.startswith(b"HTTP/1.1 504 "), got[:100]
            assert per_turn.most <= MOST_PER_TURN, f"{per_turn.most} answers parsed in one turn of the event loop"
    finally:
        stop.set()
        listener.close()
        await asyncio.to_thread(server.join, 10)


async def test_a_request_header_folded_onto_the_next_line_is_refused():
    """obs-fold (a header line beginning with whitespace, RFC 9112 §5.2): h11 joined it to the header before and the
    request went on, while a reader in front that takes it for a header of its own (` Transfer-Encoding: chunked`)
    frames the request otherwise. Refused (400), counted bad_request, as the WebSocket side refuses it."""
    async def handle(reader, writer, head, body):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with raw_upstream(handle) as (up, heads), proxy_to(up) as (url, metrics, _):
        for fold in (b" ", b"\t"):
            got = await _raw_client(url, b"POST /agent HTTP/1.1\r\nHost: x\r\nX-A: a\r\n" + fold + b"Transfer-Encoding: "
                                    b"chunked\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            assert got.startswith(b"HTTP/1.1 400 "), got
        assert heads == [] and refused(metrics, "bad_request") == 2


async def test_a_chunked_request_ended_by_lf_alone_or_with_trailers_is_refused():
    """A chunked body ended by `0` CRLF LF (h11 takes LF alone for the end of the empty trailer section), or carrying
    a trailer section: a reader in front holding to CRLF reads on past where h11 ended the body, so the bytes after it
    (here a second request) are a request to the proxy only (smuggling). Refused (400); a body ended properly, in
    one read or byte by byte, still passes."""
    async def handle(reader, writer, head, body):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    head = b"POST /agent HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    async with raw_upstream(handle) as (up, heads), proxy_to(up) as (url, metrics, _):
        for ending in (b"0\r\n\n", b"0\r\nX-T: 1\r\n\r\n", b"0\r\nX-T: 1\n\n", b"0;ext=1\r\n\n"):
            got = await _raw_client(url, head + b"2\r\n{}\r\n" + ending + smuggled)
            assert got.startswith(b"HTTP/1.1 400 ") and got.count(b"HTTP/1.1 ") == 1, (ending, got)
        assert heads == [] and refused(metrics, "bad_request") == 4
        got = await _raw_client(url, head + b"2\r\n{}\r\n0;ext=1\r\n\r\n" + smuggled)
        assert got.count(b"HTTP/1.1 200 ") == 2 and b"\r\n\r\n{}" in got, got
        reader, writer = await asyncio.open_connection(*url.removeprefix("http://").split(":"))
        for byte in head + b"2\r\n{}\r\n0\r\n\r\n" + smuggled:  # the end split over reads
            writer.write(bytes([byte]))
            await writer.drain()
        async with asyncio.timeout(10):
            got = await reader.read()
        writer.close()
        assert got.count(b"HTTP/1.1 200 ") == 2, got
        assert [h.split(b" ", 2)[1] for h in heads] == [b"/agent", b"/smuggled", b"/agent", b"/smuggled"]


async def test_an_answer_ending_the_connection_reaches_the_client_whole_though_it_kept_sending():
    """A connection that ends with its answer (`Connection: close`, a pipelined request past MAX_PIPELINED, the drain)
    was closed at once: with bytes of the client's still unread the kernel reset it and dropped what it had not yet
    sent of the answer, and the client got the head and a silently short body (0.7 of 4 MiB here). Now it is closed
    lingering, as the proxy's own answers are: the answer whole, then the end."""
    size = 4 << 20

    async def handle(reader, writer, head, body):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % size
                     + b"x" * size)
        await writer.drain()

    def client(port: int) -> int:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            conn.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            stop = threading.Event()

            def chatter() -> None:  # bytes after the request, until the connection ends
                with contextlib.suppress(OSError):
                    while not stop.is_set():
                        conn.send(b"j" * 512)
                        time.sleep(0.001)  # wait-ok: a paced trickle of the client's bytes, not a condition wait

            sender = threading.Thread(target=chatter, daemon=True)
            sender.start()
            got = b""
            try:
                while data := conn.recv(65536):
                    got += data
                    time.sleep(0.0005)  # wait-ok: a client reading slower than the proxy writes
            except OSError:
                pass
            finally:
                stop.set()
                sender.join(10)
            return len(got.partition(b"\r\n\r\n")[2])

    async with raw_upstream(handle) as (up, _), proxy_to(up) as (url, _, _):
        assert await asyncio.to_thread(client, int(url.rsplit(":", 1)[1])) == size


async def test_a_request_pipelined_behind_a_stream_as_the_drain_begins_is_still_answered():
    """A client that sent its next request while its chat's answer streamed, the drain beginning meanwhile: the
    connection was closed once the stream ended, that request unanswered (the stream's head, sent before the drain,
    had not said the connection would end). It is answered now, `Connection: close`, and the connection closed."""
    from monitors.proxy import stop_proxy

    go = asyncio.Event()

    async def handle(reader, writer, head, body):
        if head.startswith(b"POST"):
            await answer(sse(*RUN[:1]), end=False)(reader, writer, head, body)
            await go.wait()
            writer.write(chunked(sse(*RUN[1:])))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n/two")
        await writer.drain()

    async with raw_upstream(handle) as (up, heads):
        metrics = ChatMetrics(CollectorRegistry())
        sink = MetricsSink(metrics, "upstream", "live")
        live = LiveChats(AGUI, sink, expectations_for(AGUI, Expect(deadline="60s")), "live", 0.05)
        proxy = SSEProxy(up, live)
        server = await start_sse_proxy(proxy, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        writer.write(b"POST /agent HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
        async with asyncio.timeout(10):
            first = await reader.readuntil(b"RUN_STARTED")
        writer.write(b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n")  # kept-alive: no Connection: close of its own
        await writer.drain()
        live.begin_stop()
        drain = asyncio.ensure_future(proxy.drain(server, 10.0))
        await until(lambda: not server.server.is_serving())
        go.set()
        async with asyncio.timeout(10):
            got = first + await reader.read()
            assert await drain == 0
        writer.close()
        assert b"RUN_FINISHED" in got and got.count(b"HTTP/1.1 200 ") == 2 and got.endswith(b"/two"), got[-300:]
        assert b"connection: close" in got.rpartition(b"HTTP/1.1 200 ")[2].lower()
        assert [h.split(b" ", 2)[1] for h in heads] == [b"/agent", b"/two"]
        live.cut()
        assert proxy.door is not None
        await stop_proxy(server, proxy.door, grace=0.5)
        live.stop()
