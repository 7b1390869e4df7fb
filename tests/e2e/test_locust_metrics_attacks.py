"""A hostile scraper of a real Locust process's --chatprobe-metrics-port (single process, and a worker, which serves on
the port plus its index): thousands of idle or half-sent requests, a request whose headers never end, a slowloris
drip, a pipeliner that reads nothing. Raw sockets on 127.0.0.1; every wait has a deadline; the process's descriptors,
threads and memory are read from /proc. Each test FAILED on the original code, which served the port with
prometheus_client's start_http_server (a greenlet and a descriptor per connection, no deadline)."""
from __future__ import annotations

import contextlib
import re
import selectors
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fdlimit import room_for_files

from .conftest import PORT_ATTEMPTS, free_port, port_taken_first, scrape, start_on_free_port, value, wait_for
from .test_locust import LOCUSTFILE, SUMMARY, finish, locust_bin

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

# The Locust process runs under a hard open-file limit (Locust cannot raise it to its 10,000): a few hundred
# connections are then past it, as ten thousand are past Locust's usual limit.
NOFILE = 256
HOSTILE = 400
# Descriptors the bounded server may hold for scrapers: a twentieth of the limit (httpserver.metrics_connections),
# and a few in transit; the original code held one per connection until the limit ran out.
SCRAPER_FDS = NOFILE // 20 + 8
RUN_TIME = 50  # what a run needs to be attacked and looked at; it is stopped sooner, with SIGTERM, once it was
SLOW_CUT = 10  # httpserver.SLOW_CLIENT_TIMEOUT: silent or unfinished connections are closed after it
LIMIT = "import os, resource, sys; n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); " \
        "os.execv(sys.argv[2], sys.argv[2:])"


def status_of(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def threads(pid: int) -> int:
    return int(status_of(pid)["Threads"])


def rss(pid: int) -> int:
    return int(status_of(pid)["VmRSS"].split()[0]) * 1024


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


@pytest.fixture
def enough_files():
    """Room in this process for both ends of every hostile socket, under a low default open-file limit."""
    with room_for_files(4 * HOSTILE + 256):
        yield


def raw_scrape(port: int, timeout: float = 5.0) -> tuple[int, bytes]:
    """One plain GET /metrics with a deadline: (status, body); (0, error) when none came."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError as exc:
        return 0, repr(exc).encode()
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return (int(match.group(1)) if match else 0), body


def open_many(port: int, n: int, payload: bytes, deadline: float = 20.0) -> list[socket.socket]:
    """`n` connections opened at once (non-blocking: the original server took most of a second to accept each), each
    sent `payload` once connected; those still connecting at the deadline are kept as they are."""
    socks, waiting = [], selectors.DefaultSelector()
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
        waiting.register(s, selectors.EVENT_WRITE)
    end = time.monotonic() + deadline
    while waiting.get_map() and (left := end - time.monotonic()) > 0:
        for key, _ in waiting.select(timeout=left):
            sock = key.fileobj
            waiting.unregister(sock)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                with contextlib.suppress(OSError):
                    sock.send(payload)
    waiting.close()
    return socks


def wait_closed_by_server(socks: list[socket.socket], timeout: float, what: str) -> None:
    """Every socket sees the server's end (EOF or a reset) within the deadline; what they are sent is read and
    dropped."""
    selector = selectors.DefaultSelector()
    for s in socks:
        selector.register(s, selectors.EVENT_READ)
    end = time.monotonic() + timeout
    while selector.get_map():
        left = end - time.monotonic()
        assert left > 0, f"{len(selector.get_map())} of {len(socks)} {what} still open after {timeout:g}s"
        for key, _ in selector.select(timeout=left):
            try:
                data = key.fileobj.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                selector.unregister(key.fileobj)
    selector.close()


@contextlib.contextmanager
def closing(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def start_locust(procs, agentsim, mode: str, nofile: int | None = None):
    """A headless Locust run of `basic` against agentsim, serving /metrics; `mode` single or worker (a master, and
    one worker with the metrics flags: it serves on the port plus its index, 0). → (the process to attack, the
    master or None, its metrics port)."""
    _, url, env = agentsim()
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    limit = [sys.executable, "-c", LIMIT, str(nofile)] if nofile else []
    common = ["-f", LOCUSTFILE, "-u", "4", "-r", "4", "--run-time", f"{RUN_TIME}s", "--host", url,
              "--chatprobe-scenario", "basic", "--chatprobe-target-name", "sim", "--exit-code-on-error", "0"]

    def metrics(port: int) -> list[str]:  # a worker's own flags; the rest comes from the master
        return ["--chatprobe-metrics-port", str(port)]

    if mode == "single":
        proc, port = start_on_free_port(procs, "locust", lambda port: [*limit, locust_bin(), *common, "--headless",
                                                                       *metrics(port)], env=secret)
        return proc, None, port
    # A worker whose metrics port was taken first exits after it joined the master: both start again.
    for _ in range(PORT_ATTEMPTS):
        master, master_port = start_on_free_port(procs, "master", lambda port: [
            locust_bin(), *common, "--master", "--headless", "--expect-workers", "1", "--expect-workers-max-wait", "30",
            "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port)], env=secret)
        port = free_port()
        worker = procs.start("worker", [*limit, locust_bin(), "-f", LOCUSTFILE, "--worker", "--master-host",
                                        "127.0.0.1", "--master-port", str(master_port), *metrics(port)], env=secret)
        if not port_taken_first(worker, port):
            return worker, master, port
        master.stop()
    pytest.fail(f"{PORT_ATTEMPTS} metrics ports found free were each taken before the worker could listen there")


def passed_chats(port: int) -> float:
    return value(scrape(f"http://127.0.0.1:{port}/metrics"), "chatprobe_chats_total", target="sim",
                 scenario="basic", source="load", outcome="passed")


def stop_and_check_the_verdict(proc, master) -> None:
    """Every chat passed and the objectives were met, exit 0: the headless process (a single one, or the master) is
    stopped with SIGTERM, which ends a headless run as its run time would (the master stops and quits its worker:
    tests/e2e/test_locust.py::test_sigterm_ends_a_headless_master_with_its_verdict_and_quits_its_worker)."""
    if master is None:
        assert proc.stop(30) == 0, proc.tail(60)
    else:
        assert master.stop(30) == 0, master.tail(60)
        assert finish(proc, 30) == 0, proc.tail()
    judge = master or proc
    summary = SUMMARY.search(judge.out())
    assert summary is not None and summary["verdict"] == "objectives met", judge.tail(60)
    assert "Traceback" not in proc.err() + judge.err(), proc.tail(60)


@pytest.mark.parametrize("mode", ["single", "worker"])
def test_hundreds_of_idle_scrapers_take_no_descriptors_from_a_locust_process_nor_keep_prometheus_out(
        procs, agentsim, enough_files, mode):
    """FAILED on the original code: each connection to the metrics port took a descriptor and a greenlet for good.
    400 connections that send half a request and wait took every descriptor of a Locust process (256 here; 10,000
    are as easily opened against Locust's usual limit): its own scrape timed out, then was refused, and Locust
    itself failed to open files (`Too many open files` reading /proc). Now the port holds at most a twentieth of
    the limit (past it a new connection closes the one waiting longest), each cut after 10 s: the scrape is
    answered while the 400 wait, the descriptors and OS threads stay bounded, and the chats run on unharmed."""
    proc, master, port = start_locust(procs, agentsim, mode, NOFILE)
    wait_for(lambda: passed_chats(port) > 0, 40, "the metrics port counts passed chats", diagnostics=proc.tail)
    base_fds, base_threads = open_fds(proc.popen.pid), threads(proc.popen.pid)

    with closing(open_many(port, HOSTILE, b"GET /metrics HTTP/1.1\r\nHost: x\r\n")) as hostile:
        status, body = raw_scrape(port)
        assert status == 200 and b"chatprobe_chats_total{" in body, (status, body[:200], proc.tail())
        fds = open_fds(proc.popen.pid)
        assert fds <= base_fds + SCRAPER_FDS, (fds, base_fds, proc.tail())
        assert threads(proc.popen.pid) <= base_threads + 4, (threads(proc.popen.pid), base_threads)
        before = passed_chats(port)
        wait_for(lambda: passed_chats(port) > before, 20, "chats still pass while the scrapers wait",
                 diagnostics=proc.tail)
        # Every one of them is closed by the server: at once to make room, or after 10 s of waiting.
        wait_closed_by_server(hostile, SLOW_CUT + 10, "half-request connections")
    assert raw_scrape(port)[0] == 200
    stop_and_check_the_verdict(proc, master)


HEADER_BLOATERS = 16
HEADER_LINE = b"X-Pad: " + b"a" * 65000 + b"\r\n"  # under http.server's 64 KiB per line: each one was kept
DRIPPERS = 8
NON_READERS = 4
PIPELINED = 50


def test_bloated_dripping_and_non_reading_scrapers_are_cut_and_hold_no_memory(procs, agentsim, tmp_path: Path):
    """FAILED on the original code, which kept every one of these for good: a request whose 99 header lines of 64 KiB
    never end (6.4 MB held per connection: 16 of them grew the process by over 100 MB), a slowloris sending a byte
    of its headers every half second, and a scraper pipelining thousands of requests and reading no answer (its
    greenlet blocked in a write). Now headers past 16 KiB get a 431 and the connection is closed, and a request
    unfinished, or answers untaken, for 10 s is cut; a connection gets one answer however many requests it pipelines;
    scrapes are answered throughout."""
    proc, _, port = start_locust(procs, agentsim, "single")
    wait_for(lambda: passed_chats(port) > 0, 40, "the metrics port counts passed chats", diagnostics=proc.tail)
    pid = proc.popen.pid
    # A burst of pipelined requests is answered once, then the connection is closed (as prometheus_client's HTTP/1.0
    # server did; the bounded server without one answer per connection rendered ~230 a read, seconds of the gevent
    # hub for a few such connections).
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * PIPELINED)
        answers = b""
        while chunk := s.recv(65536):
            answers += chunk
    assert len(re.findall(rb"HTTP/1\.[01] \d{3} ", answers)) == 1 and b" 200 OK\r\n" in answers, answers[:300]
    base_fds, base_rss = open_fds(pid), rss(pid)
    stop = threading.Event()
    socks: list[socket.socket] = []
    with closing(socks):
        # A slowloris: a byte of a header every half second, never the end of the request.
        drippers = open_many(port, DRIPPERS, b"GET /metrics HTTP/1.1\r\nX-Drip: ")
        socks += drippers

        def drip() -> None:
            while not stop.wait(0.5):  # wait-ok: the attacker's pace
                for s in drippers:
                    with contextlib.suppress(OSError):
                        s.send(b"a")

        dripping = threading.Thread(target=drip, daemon=True)
        dripping.start()
        # Pipeliners with a tiny receive window that never read.
        for _ in range(NON_READERS):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 3000)
            socks.append(s)
        # Header bloat: 99 long header lines and no blank line, then silence.
        bloaters = []
        for _ in range(HEADER_BLOATERS):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            with contextlib.suppress(OSError):  # the bounded server cuts it off partway: a reset here
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + HEADER_LINE * 99)
            s.setblocking(False)
            bloaters.append(s)
        socks += bloaters
        try:
            status, body = raw_scrape(port)
            assert status == 200 and b"chatprobe_chats_total{" in body, (status, body[:200])
            grown = rss(pid) - base_rss
            assert grown < 48 * 1024 * 1024, grown
            wait_closed_by_server(bloaters, 10, "connections with 6 MB of headers")
            wait_closed_by_server(drippers, SLOW_CUT + 10, "slowloris connections")
            wait_closed_by_server(socks[DRIPPERS:DRIPPERS + NON_READERS], SLOW_CUT + 20, "non-reading pipeliners")
        finally:
            stop.set()
            dripping.join(5)
    wait_for(lambda: open_fds(pid) <= base_fds + 2, 10, "the scrapers' descriptors are freed",
             diagnostics=proc.tail)
    assert raw_scrape(port)[0] == 200
    stop_and_check_the_verdict(proc, None)
