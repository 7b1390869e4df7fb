"""The monitor's HTTP server over real sockets: odd /probe queries get 400 and one line, slowloris clients hold
no threads and are closed within the timeout, and /metrics answers while they are held."""
from __future__ import annotations

import asyncio
import logging
import re
import secrets
import selectors
import socket
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from agentsim.server import AgentSim, SimConfig
from monitors import httpserver
from monitors.metrics import ChatMetrics
from monitors.monitor import (
    Monitor,
    load_config,
    make_app,
    probes_from_config,
    start_http,
)
from tests.fdlimit import room_for_files

DEADLINE = 10.0


def http(port: int, request: bytes, timeout: float = DEADLINE) -> tuple[int, bytes]:
    """One raw request (bytes exactly as given: no client normalizes the query), the answer read to EOF."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendall(request)
            while chunk := sock.recv(65536):
                data += chunk
        except (ConnectionResetError, BrokenPipeError):  # the server answered and closed before reading it all
            pass
    if not data:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def get(port: int, target: bytes, timeout: float = DEADLINE, method: bytes = b"GET") -> tuple[int, bytes]:
    return http(port, method + b" " + target + b" HTTP/1.1\r\nHost: monitor\r\nConnection: close\r\n\r\n", timeout)


@pytest.fixture
async def monitor_http(tmp_path, monkeypatch):
    """A real Monitor probing a real agentsim (target `sim`), its HTTP server on a free loopback port."""
    secret = secrets.token_urlsafe(32)
    sim = AgentSim(SimConfig(port=0, jwt_secret=secret, think=0.001, tool_latency=0.001, seed=1))
    await sim.start()
    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"targets:\n  sim: {{url: '{sim.url}', jwt_secret_env: SIM_SECRET}}\n")
    monkeypatch.setenv("SIM_SECRET", secret)
    mon = Monitor(probes_from_config(str(cfg), load_config(str(cfg)), timeout=5), interval=1, timeout=5,
                  metrics=ChatMetrics(CollectorRegistry()))
    server = start_http(make_app(mon, asyncio.get_running_loop()), "127.0.0.1", 0)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.shutdown)
        await sim.stop()


ODD_QUERIES = {
    "repeated key": b"target=sim&target=sim",
    "unknown key": b"target=sim&module=http_2xx",
    "unknown key only": b"debug=true",
    "many fields": b"&".join(b"f%d=1" % i for i in range(300)),
    "huge value": b"target=" + b"a" * 8_000,
    "giant request line": b"target=" + b"a" * 1_000_000,
    "long value": b"target=" + b"a" * 200,
    "bad percent": b"target=%zz",
    "lone percent": b"target=sim%",
    "not utf-8": b"target=%ff%fe",
    "raw non-ascii": b"target=\xffsim",
    "control char": b"target=sim%0d%0aX-Evil:%201",
    "empty field": b"target=sim&&scenario=probe",
    "no equals": b"target",
    "missing target": b"scenario=probe",
    "empty": b"",
    "unknown target": b"target=ws%3A%2F%2Fevil.example%2Fws",
    "unknown scenario": b"target=sim&scenario=..%2F..%2Fetc%2Fpasswd",
}


async def test_odd_probe_queries_answer_400_with_one_line(monitor_http, caplog):
    caplog.set_level(logging.DEBUG)
    port = monitor_http.server_address[1]
    for name, query in ODD_QUERIES.items():
        status, body = await asyncio.to_thread(get, port, b"/probe?" + query)
        # waitress refuses a request over its header limit before the app: 431, or a reset when it closes with
        # the rest of the request unread, is fine; a 500 is not.
        expected = (431, 400, 0) if len(query) > httpserver.MAX_REQUEST_HEADER else (400,)
        assert status in expected, (name, status, body)
        if status == 400 and len(query) <= httpserver.MAX_REQUEST_HEADER:
            text = body.decode()
            assert text.endswith("\n") and text.count("\n") == 1 and len(text) < 300, (name, text)
        assert b"Traceback" not in body, name
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], caplog.text
    # A well-formed query still runs a probe.
    status, body = await asyncio.to_thread(get, port, b"/probe?target=sim&scenario=probe")
    assert status == 200 and re.search(rb"^probe_success 1\.0$", body, re.MULTILINE), body
    status, body = await asyncio.to_thread(get, port, b"/probe?target=sim")
    assert status == 200 and re.search(rb"^probe_success 1\.0$", body, re.MULTILINE), body


async def test_probe_reasons_name_the_problem(monitor_http):
    port = monitor_http.server_address[1]
    for query, needle in ((b"target=sim&target=sim", b"'target' is given more than once"),
                          (b"target=sim&module=x", b"unknown query field 'module'"),
                          (b"target=%zz", b"not followed by two hex digits"),
                          (b"target=%ff", b"not UTF-8"),
                          (b"target=a%0ab", b"control characters")):
        status, body = await asyncio.to_thread(get, port, b"/probe?" + query)
        assert status == 400 and needle in body, (query, body)
    status, body = await asyncio.to_thread(get, port, b"/probe?target=sim", method=b"POST")
    assert status == 405


def test_an_app_error_is_a_plain_500_and_one_log_line(caplog):
    class Broken:
        timeout = 1.0

        def lookup(self, target, scenario):
            raise RuntimeError("boom")

    loop = asyncio.new_event_loop()
    server = httpserver.start_http(httpserver.make_app(Broken(), loop, grace=1.0), "127.0.0.1", 0)
    try:
        status, body = get(server.server_address[1], b"/probe?target=x")
    finally:
        server.shutdown()
        loop.close()
    assert status == 500 and body == b"internal error\n"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and not errors[0].exc_info and "RuntimeError: boom" in errors[0].getMessage()


# -- slow clients ----------------------------------------------------------------------------------------------

N_SLOWLORIS = 400
SLOW_TIMEOUT = 3


@pytest.fixture
def enough_files():
    """Room for both ends of every slowloris socket in this one process, under a low default open-file limit."""
    with room_for_files(4 * N_SLOWLORIS + 256):
        yield


def open_slowloris(port: int) -> list[socket.socket]:
    held = []
    for _ in range(N_SLOWLORIS):
        sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        sock.sendall(b"GET /metr")  # half a request line, then nothing
        held.append(sock)
    return held


def test_slowloris_holds_no_threads_while_held(enough_files):
    """400 half-sent requests held (the timeout, a minute, far off): no thread for them, a scrape answered at once. (With
    a timeout of seconds, as below, opening 400 sockets on a loaded machine can outlast it: the first ones were cut
    before the scrape.)"""
    loop = asyncio.new_event_loop()  # /metrics never touches it
    app = httpserver.make_app(type("NoProbes", (), {"timeout": 1.0})(), loop, grace=1.0)
    threads_of_others = threading.active_count()  # what earlier tests of this process left running is not the server's
    server = httpserver.start_http(app, "127.0.0.1", 0, slow_client_timeout=60)
    held: list[socket.socket] = []
    try:
        threads_before = threading.active_count()
        # the pool exists up front, and is small: its workers and the I/O thread
        assert threads_before - threads_of_others <= httpserver.HTTP_THREADS + 2
        held = open_slowloris(server.server_address[1])
        # The server has accepted them all (its own map: one entry per connection, plus itself and its trigger) ...
        deadline = time.monotonic() + DEADLINE
        while len(server._map) < N_SLOWLORIS:
            assert time.monotonic() < deadline, f"the server accepted {len(server._map)} of {N_SLOWLORIS}"
            time.sleep(0.01)  # wait-ok: poll interval inside the deadline loop above
        # ... holds no thread for them, and a scrape still answers while they are held.
        assert threading.active_count() <= threads_before
        status, body = get(server.server_address[1], b"/metrics", timeout=DEADLINE)
        assert status == 200 and b"# HELP" in body
        assert len(server._map) >= N_SLOWLORIS
        assert threading.active_count() <= threads_before
    finally:
        for sock in held:
            sock.close()
        server.shutdown()
        loop.close()


def test_slowloris_is_timed_out(enough_files):
    loop = asyncio.new_event_loop()
    app = httpserver.make_app(type("NoProbes", (), {"timeout": 1.0})(), loop, grace=1.0)
    server = httpserver.start_http(app, "127.0.0.1", 0, slow_client_timeout=SLOW_TIMEOUT)
    held: list[socket.socket] = []
    try:
        held = open_slowloris(server.server_address[1])
        opened = time.monotonic()  # the last one sent its half request just before
        # Every held socket is closed by the server within its timeout (plus the 1 s sweep and some slack).
        selector = selectors.DefaultSelector()
        for sock in held:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        open_left = set(held)
        deadline = opened + SLOW_TIMEOUT + 5
        while open_left:
            left = deadline - time.monotonic()
            assert left > 0, f"{len(open_left)} of {N_SLOWLORIS} slow clients still open after {SLOW_TIMEOUT + 5}s"
            for key, _ in selector.select(timeout=left):
                try:
                    data = key.fileobj.recv(4096)
                except ConnectionResetError:
                    data = b""
                if not data:
                    selector.unregister(key.fileobj)
                    open_left.discard(key.fileobj)
        # The last one closed no sooner than its timeout after it went silent: by the timeout, not at once.
        assert time.monotonic() - opened >= SLOW_TIMEOUT - 0.5
        selector.close()
        status, _ = get(server.server_address[1], b"/metrics", timeout=DEADLINE)
        assert status == 200
    finally:
        for sock in held:
            sock.close()
        server.shutdown()
        loop.close()


def test_a_client_trickling_its_request_is_closed_within_the_timeout():
    """Never silent long enough for the idle timeout, but the request never completes: closed all the same."""
    loop = asyncio.new_event_loop()
    app = httpserver.make_app(type("NoProbes", (), {"timeout": 1.0})(), loop, grace=1.0)
    server = httpserver.start_http(app, "127.0.0.1", 0, slow_client_timeout=2)
    started = time.monotonic()  # before the server can have begun to time the connection
    sock = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=DEADLINE)
    selector = selectors.DefaultSelector()
    try:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Trickle: ")
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        closed = False
        while not closed:
            assert time.monotonic() - started < 2 + 5, "a trickling client is still connected"
            try:
                if selector.select(timeout=0.3):  # the attacker's pace, and a check for the server's EOF
                    closed = sock.recv(4096) == b""
                if not closed:
                    sock.send(b"a")
            except (ConnectionResetError, BrokenPipeError):
                closed = True
        assert time.monotonic() - started >= 2 - 0.5
        status, _ = get(server.server_address[1], b"/metrics", timeout=2)
        assert status == 200
    finally:
        selector.close()
        sock.close()
        server.shutdown()
        loop.close()


# -- a metrics-only endpoint (`chatprobe proxy --metrics-listen`, the Locust user's --chatprobe-metrics-port) --------

def test_at_the_connection_limit_a_new_connection_closes_the_one_waiting_longest():
    """FAILED on the original code: at its connection limit waitress stopped accepting, so idle scrapers holding
    every slot kept Prometheus' scrape waiting in the backlog until one of them timed out (here 30 s: past the
    scrape's own 5 s deadline), and an attacker reconnecting as they are cut kept it out for good. Now the new
    connection closes the connection that has waited longest on its client, oldest first; the scrape is answered."""
    server = httpserver.start_http(httpserver.metrics_app(), "127.0.0.1", 0, threads=2, slow_client_timeout=30,
                                   max_connections=8)
    port = server.server_address[1]
    held: list[socket.socket] = []
    try:
        for _ in range(8):
            sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # half a request, then nothing
            held.append(sock)
        deadline = time.monotonic() + DEADLINE  # until it took all 8, or (the original code) stopped accepting
        while len(server._server.active_channels) < 8 and not server._server.in_connection_overflow:
            assert time.monotonic() < deadline, "the server neither accepted the 8 connections nor stopped accepting"
            time.sleep(0.01)  # wait-ok: poll interval inside the deadline loop above
        status, body = get(port, b"/metrics", timeout=5)
        assert status == 200 and b"# HELP" in body
        held[0].settimeout(DEADLINE)
        assert held[0].recv(100) == b""  # the oldest was closed to make room
        assert len(server._server.active_channels) <= 8
        for sock in held[1:]:  # the others still wait (their 30 s are not up)
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(100)
    finally:
        for sock in held:
            sock.close()
        server.shutdown()


def _read_answer(sock: socket.socket, head_only: bool) -> tuple[bytes, bytes]:
    """One answer off a keep-alive socket: its head, and its body by its Content-Length (none for a HEAD)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0 if head_only else int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
    while len(rest) < length:
        rest += sock.recv(65536)
    return head, rest


async def test_head_of_metrics_is_gets_head_with_no_body_on_the_monitor_and_the_metrics_port(monitor_http):
    # FAILED on the old code: prometheus_client's app answers GET only, so HEAD /metrics was a 405 `Allow: OPTIONS,GET`
    # where every other path takes HEAD (and refuses other methods with `Allow: GET, HEAD`), sent chunked (a `0` chunk
    # after a HEAD's head) and closing the monitor's keep-alive connection.
    metrics_only = httpserver.start_metrics("127.0.0.1", 0)
    try:
        for port, keep_alive in ((monitor_http.server_address[1], True), (metrics_only.server_address[1], False)):
            status, body = await asyncio.to_thread(get, port, b"/metrics")
            assert status == 200 and body.startswith(b"# HELP"), (port, status, body[:200])

            def head_then_health(port: int = port, keep_alive: bool = keep_alive) -> tuple[bytes, bytes, bytes]:
                with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
                    sock.settimeout(DEADLINE)
                    sock.sendall(b"HEAD /metrics HTTP/1.1\r\nHost: monitor\r\n\r\n")
                    head, _ = _read_answer(sock, head_only=True)
                    if not keep_alive:  # the metrics port answers one request per connection: nothing may follow
                        rest = b""
                        while chunk := sock.recv(65536):
                            rest += chunk
                        return head, rest, b""
                    sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: monitor\r\n\r\n")
                    return (head, *_read_answer(sock, head_only=False))

            head, after, health = await asyncio.to_thread(head_then_health)
            assert head.startswith(b"HTTP/1.1 200 "), (port, head)
            assert re.search(rb"(?im)^content-type: text/plain; version=", head), head
            assert int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1)) > 100, head
            assert not re.search(rb"(?im)^transfer-encoding:", head), head
            if keep_alive:  # the next answer on the connection is the next request's, whole
                assert after.startswith(b"HTTP/1.1 200 ") and health == b"OK\n", (after, health)
            else:
                assert after == b"", after
    finally:
        await asyncio.to_thread(metrics_only.shutdown, 1.0)


# Requests waitress held until its slow-client timeout (10 s), answered at once now: each sent whole, the answer
# read to the server's end within PROMPT (FAILED on the old code: socket.timeout for every one of them).
PROMPT = 3.0
HELD_REQUESTS = {
    "bare LF": (b"GET /metrics HTTP/1.1\nHost: monitor\nConnection: close\n\n", 400),
    "bare LF after a CRLF line": (b"GET /metrics HTTP/1.1\r\nHost: monitor\nConnection: close\r\n\r\n", 400),
    # (not a bare LF: a CRLF whose LF comes in the next segment)
    "CRLF cut in two at its CR": (b"GET /metrics HTTP/1.1\r|\nHost: monitor\r\nConnection: close\r\n\r\n", 200),
    "Expect: 100-continue, no body": (b"GET /metrics HTTP/1.1\r\nHost: monitor\r\nExpect: 100-continue\r\n"
                                      b"Connection: close\r\n\r\n", 200),
    "Expect: 100-continue, Content-Length: 0": (b"GET /-/healthy HTTP/1.1\r\nHost: monitor\r\nExpect: 100-continue"
                                                b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 200),
}


def send_in_parts(port: int, request: bytes, timeout: float) -> bytes:
    """The request in the parts its `|` marks (each its own segment), the answer read to the server's end."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for part in request.split(b"|"):
            sock.sendall(part)
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize("name", list(HELD_REQUESTS))
async def test_a_bare_lf_or_an_expect_with_no_body_is_answered_at_once_on_the_monitor_and_the_metrics_port(
        monitor_http, name):
    """A line ended by LF alone: waitress refuses such a head with 400 (against request smuggling), but only once a
    CRLF CRLF ends it, which such a client never sends: it waited 10 s, then closed unanswered. `Expect:
    100-continue` on a request without a body: waitress sent `100 Continue` and waited 10 s for the body it had been
    told was not coming. Now: the 400 at the first bare LF, and the answer to a bodiless request at once (a request
    with a body still gets its 100 Continue first)."""
    request, status = HELD_REQUESTS[name]
    metrics_only = httpserver.start_metrics("127.0.0.1", 0)
    try:
        for port in (monitor_http.server_address[1], metrics_only.server_address[1]):
            answer = await asyncio.to_thread(send_in_parts, port, request, PROMPT)
            assert answer.startswith(b"HTTP/1.") and int(answer.split(b" ", 2)[1]) == status, (port, answer[:200])
            assert b"100 Continue" not in answer, answer[:200]
            if status == 400:
                assert b"bare LF" in answer, answer
        # A request with a body and Expect: 100-continue is still told to go on, then answered (405: GET and HEAD only).
        with socket.create_connection(("127.0.0.1", metrics_only.server_address[1]), timeout=PROMPT) as sock:
            sock.sendall(b"POST /metrics HTTP/1.1\r\nHost: m\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
            assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(b"hello")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 405 "), answer[:200]
    finally:
        await asyncio.to_thread(metrics_only.shutdown, 1.0)


# -- a worker finishing as the server shuts down -------------------------------------------------------------------

@pytest.mark.parametrize("descriptor", ["left closed", "reused"])
def test_a_worker_that_wakes_the_io_thread_after_shutdown_neither_fails_nor_writes_into_another_descriptor(
        descriptor, caplog):
    """FAILED on the old code: a worker ends each request by waking waitress's I/O thread through its trigger (a
    pipe), once it has checked that its connection is open. A shutdown in between (the monitor stopped while a
    /probe was being answered: once in some six runs of test_monitor_signals) closed the connection and the pipe, and
    the worker wrote its byte into a closed descriptor: `OSError: [Errno 9] Bad file descriptor`, logged by waitress
    as "Exception when servicing" with a traceback; or, the number taken again by a socket opened meanwhile, into
    that socket. The worker is held here at that point (waitress's server.pull_trigger, which it calls) until the
    shutdown has ended the I/O thread; then, for "reused", a socket pair is opened until one end has the pipe's
    number. The byte must go nowhere, and nothing be logged."""
    caplog.set_level(logging.DEBUG)
    answering, answer = threading.Event(), threading.Event()

    def app(environ, start_response):
        answering.set()
        assert answer.wait(DEADLINE), "the answer was never let go"
        start_response("503 Service Unavailable", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"gone\n"]

    server = httpserver.start_http(app, "127.0.0.1", 0, threads=1)
    waitress_server, io_thread = server._server, server._thread
    pipe_fd = waitress_server.trigger.trigger  # the pipe's end the workers write into
    wake, held = waitress_server.pull_trigger, threading.Event()
    strangers: list[socket.socket] = []
    stranger: list[socket.socket] = []  # the peer of the socket that got the pipe's number

    def pull_trigger() -> None:
        if threading.current_thread() is not io_thread and not held.is_set():
            held.set()
            io_thread.join(DEADLINE)  # the shutdown has closed every connection and the pipe
            if descriptor == "reused":
                for _ in range(64):
                    pair = socket.socketpair()
                    strangers.extend(pair)
                    if pipe_fd in (pair[0].fileno(), pair[1].fileno()):
                        stranger.append(pair[1] if pair[0].fileno() == pipe_fd else pair[0])
                        break
        wake()

    waitress_server.pull_trigger = pull_trigger
    try:
        with socket.create_connection(server.server_address[:2], timeout=DEADLINE) as client:
            client.sendall(b"GET /probe?target=x HTTP/1.1\r\nHost: monitor\r\n\r\n")
            assert answering.wait(DEADLINE)
            answer.set()
            assert held.wait(DEADLINE), "the worker never woke the I/O thread"
            server.shutdown()
            assert not io_thread.is_alive()
        if descriptor == "reused":
            assert stranger, f"descriptor {pipe_fd} was not free again"
            stranger[0].setblocking(False)
            with pytest.raises(BlockingIOError):  # nothing to read: no byte was written into the stranger's socket
                stranger[0].recv(16)
    finally:
        answer.set()
        server.shutdown()
        for sock in strangers:
            sock.close()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], caplog.text


def test_shutdown_wakes_a_worker_waiting_for_its_answer_to_drain(caplog):
    """FAILED on the old code: a worker whose answer is more than waitress's high watermark (16 MiB) ahead of what
    the client took waits for the I/O thread to drain it, woken only by that thread. The shutdown closed the
    connection without waking it: the shutdown waited its whole `timeout` for that worker and logged "1 thread(s)
    still running", and the worker waited for good. The worker's wait is seen as its call to wake the I/O thread with
    its buffer over the watermark (it waits right after, holding the lock the shutdown's close needs until then)."""
    caplog.set_level(logging.DEBUG)
    big = b"m" * (20 * 1024 * 1024)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(big) + 1))])
        return [big, b"\n"]  # the second write waits until the first has drained below the watermark

    server = httpserver.start_http(app, "127.0.0.1", 0, threads=1)
    waitress_server, io_thread = server._server, server._thread
    wake, waiting = waitress_server.pull_trigger, threading.Event()
    channels: list = []

    def pull_trigger() -> None:
        if threading.current_thread() is not io_thread:
            for channel in list(waitress_server.active_channels.values()):
                if channel.total_outbufs_len > channel.adj.outbuf_high_watermark:
                    channels.append(channel)
                    waiting.set()
        wake()

    waitress_server.pull_trigger = pull_trigger
    try:
        with socket.socket() as client:  # reads nothing, with a small receive buffer: the answer stays in the server
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.settimeout(DEADLINE)
            client.connect(server.server_address[:2])
            client.sendall(b"GET / HTTP/1.1\r\nHost: monitor\r\n\r\n")
            assert waiting.wait(DEADLINE), "the worker never waited for its answer to drain"
            server.shutdown(timeout=DEADLINE)
        assert not io_thread.is_alive()
        assert not waitress_server.task_dispatcher.threads, "a worker is still running"
    finally:
        server.shutdown()
        for channel in channels:  # the old code's worker, still waiting: let go
            with channel.outbuf_lock:
                channel.outbuf_lock.notify_all()
    # (requests waiting for the one worker, the shutdown's close queued behind it on a loaded machine: not what this
    # test is about, the "thread(s) still running" of a shutdown that waited)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                and "wait for a free worker" not in r.getMessage()], caplog.text


def test_a_flood_of_requests_is_one_log_line_not_one_a_request(caplog):
    """waitress logs "Task queue depth is N" at WARNING for each request it queues while every worker is busy: a
    client flooding the port wrote a line a request. Now one line (a minute at most) says requests wait."""
    caplog.set_level(logging.INFO)
    busy, entered, release = 2, threading.Semaphore(0), threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/block":
            entered.release()
            release.wait(DEADLINE)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    server = httpserver.start_http(app, "127.0.0.1", 0, threads=busy, slow_client_timeout=60)
    port = server.server_address[1]
    socks: list[socket.socket] = []
    try:
        def send(path: bytes) -> None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
            sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: monitor\r\nConnection: close\r\n\r\n")
            socks.append(sock)

        for _ in range(busy):
            send(b"/block")
        for _ in range(busy):
            assert entered.acquire(timeout=DEADLINE), "a worker never took its request"
        flood = 50
        for _ in range(flood):
            send(b"/x")
        dispatcher = server._server.task_dispatcher
        with dispatcher.queue_cv:  # notified as each request is queued
            assert dispatcher.queue_cv.wait_for(lambda: len(dispatcher.queue) >= flood, timeout=DEADLINE)
        release.set()
        for sock in socks:
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            assert data.startswith(b"HTTP/1.1 200"), data[:100]
    finally:
        release.set()
        for sock in socks:
            sock.close()
        server.shutdown()
        server.server_close()
    depth = [r.getMessage() for r in caplog.records if "queue depth" in r.getMessage() or "free worker" in r.getMessage()]
    assert len(depth) <= 1, depth[:5]
    assert all("wait for a free worker" in line for line in depth)
