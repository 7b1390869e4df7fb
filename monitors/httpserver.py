"""The monitor's HTTP side (/ and /probes/ID: the recent probes; /metrics, /probe, health): a WSGI app served by
waitress with a fixed pool of worker threads, slow clients timed out, and /probe's query checked field by field
(400 with a one-line reason)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import resource
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol
from urllib.parse import parse_qsl

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import choose_encoder
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import create_server
from waitress.task import ErrorTask
from waitress.trigger import trigger as WaitressTrigger
from waitress.utilities import BadRequest, find_double_newline

from harness import redact

from . import probes_page

log = logging.getLogger("chatprobe.monitor")

# /probe runs a real chat per request: a flood of them must not become a load test of the target.
MAX_CONCURRENT_PROBES = 8
# Workers that serve requests: every probe slot, plus two that /metrics and health always find free. Slow or idle
# clients hold no worker at all: waitress reads requests in one I/O thread and hands only complete ones over.
HTTP_THREADS = MAX_CONCURRENT_PROBES + 2
# A connection is closed when it sends nothing for this long with no request in progress (slowloris, idle
# keep-alive), or when a request's head and body have not all arrived this long after its first byte (a trickle).
SLOW_CLIENT_TIMEOUT = 10
MAX_CONNECTIONS = 10_000
FD_HEADROOM = 256  # descriptors kept for the probes' own sockets, out of the open-file limit
MAX_REQUEST_HEADER = 16 * 1024  # a scrape's request line and headers are a few hundred bytes
MAX_REQUEST_BODY = 64 * 1024

PROBE_FIELDS = ("target", "scenario")
MAX_QUERY = 1024
MAX_QUERY_FIELDS = 8
MAX_VALUE = 128
# A % not followed by two hex digits: unquote() would keep it as it is, and a name would silently not match.
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PRINTABLE_ASCII = re.compile(r"^[\x21-\x7e]*$")


class ProbeRunner(Protocol):
    """What the app needs of a Monitor: known names, the default deadline, and a probe into fresh metrics."""

    timeout: float
    recent: probes_page.RecentProbes

    def lookup(self, target: str, scenario: str | None) -> Any: ...

    async def probe_now(self, target: str, scenario: str | None, timeout: float, *,
                        encode: Callable[[CollectorRegistry], bytes] = ...) -> bytes: ...


class QueryError(ValueError):
    """A /probe query the monitor will not run; the message is one line, safe to send back."""


def _shown(text: str) -> str:
    return repr(text[:64]) + ("..." if len(text) > 64 else "")


def parse_probe_query(query: str) -> tuple[str, str | None]:
    """(target, scenario) of a /probe query string; QueryError for anything else: unknown or repeated fields, too
    many or too long ones, bad percent-encoding, text that is not UTF-8, control characters."""
    if len(query) > MAX_QUERY:
        raise QueryError(f"the query string is longer than {MAX_QUERY} bytes")
    if not _PRINTABLE_ASCII.match(query):  # WSGI hands the raw bytes over as latin-1: anything else is unencoded
        raise QueryError("the query string has characters that must be percent-encoded")
    if _BAD_PERCENT.search(query):
        raise QueryError("the query string has a % that is not followed by two hex digits")
    if query.count("&") + 1 > MAX_QUERY_FIELDS:
        raise QueryError(f"more than {MAX_QUERY_FIELDS} query fields; /probe takes target and scenario")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True, encoding="utf-8", errors="strict",
                          max_num_fields=MAX_QUERY_FIELDS) if query else []
    except UnicodeDecodeError:
        raise QueryError("a query field is not UTF-8 once percent-decoded") from None
    except ValueError:
        raise QueryError("the query string has an empty field or a field without '='") from None
    fields: dict[str, str] = {}
    for key, value in pairs:
        if key not in PROBE_FIELDS:
            raise QueryError(f"unknown query field {_shown(key)}; /probe takes {' and '.join(PROBE_FIELDS)}")
        if key in fields:
            raise QueryError(f"the query field {key!r} is given more than once")
        if len(value) > MAX_VALUE:
            raise QueryError(f"the query field {key!r} is longer than {MAX_VALUE} characters")
        if not value.isprintable():
            raise QueryError(f"the query field {key!r} has control characters")
        fields[key] = value
    if not fields.get("target"):
        raise QueryError("the target parameter is missing: /probe?target=NAME[&scenario=NAME]")
    return fields["target"], fields.get("scenario") or None


# A probe's page: /probes/ and its number, nothing else (no query, no trailing parts).
_PROBE_PAGE = re.compile(r"^/probes/([1-9][0-9]{0,17})$")
# The pages run no script and fetch nothing: a browser is told so, and a server's string that slipped through
# escaping still could not run.
_HTML_HEADERS = [("Content-Type", "text/html; charset=utf-8"), ("Content-Security-Policy", probes_page.CONTENT_SECURITY_POLICY),
                 ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"), ("Cache-Control", "no-store")]


def _scrape(metrics: Callable, environ: dict, start_response: Callable) -> Iterable[bytes]:
    """/metrics by prometheus_client's WSGI app, which answers GET only: a HEAD (a load balancer's or an uptime
    checker's) got its 405 "use OPTIONS or GET" with `Allow: OPTIONS,GET`, while every other path here takes HEAD and
    a refused method is told `Allow: GET, HEAD` (that 405 went out chunked, a `0` chunk after a HEAD's head, and
    closed a keep-alive connection). A HEAD gets GET's status and headers with the length of GET's body, and no body
    (rendered as a GET would be: HEAD costs what GET costs)."""
    if environ.get("REQUEST_METHOD") != "HEAD":
        return metrics(environ, start_response)
    got: list[tuple[str, list[tuple[str, str]]]] = []
    body = b"".join(metrics({**environ, "REQUEST_METHOD": "GET"}, lambda status, headers, exc_info=None: got.append(
        (status, headers))))
    status, headers = got[0]
    start_response(status, [*((k, v) for k, v in headers if k.lower() != "content-length"),
                            ("Content-Length", str(len(body)))])
    return []


def _scrape_timeout(header: str | None, timeout: float, grace: float) -> float:
    """The probe's deadline: within Prometheus' scrape timeout when it sends one, as blackbox_exporter does."""
    if not header:
        return timeout
    with contextlib.suppress(ValueError):
        seconds = float(header[:32])
        if math.isfinite(seconds):
            return max(0.5, min(timeout, seconds - grace - 0.5))
    return timeout


def make_app(monitor: ProbeRunner, loop: asyncio.AbstractEventLoop, grace: float,
             max_probes: int = MAX_CONCURRENT_PROBES) -> Callable:
    metrics_app = make_wsgi_app()
    slots = threading.BoundedSemaphore(max_probes)

    def text(start_response: Callable, status: str, body: str, headers: Iterable[tuple[str, str]] = (),
             exc_info: Any = None) -> list[bytes]:
        data = (body.rstrip("\n") + "\n").encode()
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data))),
                                *headers], exc_info)
        return [data]

    def html(start_response: Callable, body: bytes) -> list[bytes]:
        start_response("200 OK", [*_HTML_HEADERS, ("Content-Length", str(len(body)))])
        return [body]

    def probe(environ: dict, start_response: Callable) -> list[bytes]:
        try:
            target, scenario = parse_probe_query(environ.get("QUERY_STRING", ""))
            monitor.lookup(target, scenario)
        except QueryError as exc:
            return text(start_response, "400 Bad Request", str(exc))
        except KeyError as exc:
            return text(start_response, "400 Bad Request", exc.args[0])
        timeout = _scrape_timeout(environ.get("HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS"), monitor.timeout, grace)
        if not slots.acquire(blocking=False):
            return text(start_response, "503 Service Unavailable",
                        f"{max_probes} probes are already running; try again later")
        # The format the scraper asks for, as /metrics answers it (prometheus_client's negotiation): OpenMetrics for
        # `Accept: application/openmetrics-text`, else the text format, each under its own Content-Type.
        encode, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
        try:
            future = asyncio.run_coroutine_threadsafe(monitor.probe_now(target, scenario, timeout, encode=encode), loop)
            try:
                body = future.result(timeout + 2 * grace)
            except Exception as exc:
                future.cancel()
                return text(start_response, "503 Service Unavailable", f"no probe result: {type(exc).__name__}")
        finally:
            slots.release()
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    def route(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return text(start_response, "405 Method Not Allowed", "only GET and HEAD", [("Allow", "GET, HEAD")])
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return _scrape(metrics_app, environ, start_response)
        if path == "/probe":
            return probe(environ, start_response)
        if path in ("/-/healthy", "/-/ready"):
            return text(start_response, "200 OK", "OK")
        if path == "/":
            return html(start_response, probes_page.index_page(monitor.recent))
        if (m := _PROBE_PAGE.match(path)) is not None:
            record = monitor.recent.get(int(m.group(1)))
            page = probes_page.detail_page(record) if record is not None else None
            if page is None:
                return text(start_response, "404 Not Found", "no such probe kept: the page keeps the last "
                            f"{monitor.recent.per_probe} probes per target and scenario, and the details of failing "
                            "ones within a memory bound; see /")
            return html(start_response, page)
        return text(start_response, "404 Not Found", "not found: try /, /metrics or /probe?target=NAME")

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        try:
            body = route(environ, start_response)
            if environ.get("REQUEST_METHOD") == "HEAD":  # the headers (Content-Length included), no body:
                close = getattr(body, "close", None)     # waitress sends what the app returns, even for HEAD
                if close is not None:
                    close()
                return []
            return body
        except Exception as exc:
            # the path is the client's, the exception may quote it: both cleaned
            log.error("HTTP %s: %s: %s", redact.clean(environ.get("PATH_INFO", "?"), 64), type(exc).__name__,
                      redact.clean(exc, 1000))
            return text(start_response, "500 Internal Server Error", "internal error", (), sys.exc_info())

    return app


def metrics_app() -> Callable:
    """/metrics (the default registry) and health, nothing else: what `chatprobe proxy` serves on --metrics-listen."""
    metrics = make_wsgi_app()

    def text(start_response: Callable, status: str, body: str, headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:
        data = (body + "\n").encode()
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data))),
                                *headers])
        return [data]

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD")
        if method not in ("GET", "HEAD"):
            return text(start_response, "405 Method Not Allowed", "only GET and HEAD", [("Allow", "GET, HEAD")])
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            body: Iterable[bytes] = _scrape(metrics, environ, start_response)
        elif path in ("/-/healthy", "/-/ready"):
            body = text(start_response, "200 OK", "OK")
        else:
            body = text(start_response, "404 Not Found", "not found: try /metrics")
        return [] if method == "HEAD" else body

    return app


# A metrics-only endpoint (`chatprobe proxy --metrics-listen`, the Locust user's --chatprobe-metrics-port) is served
# here, not by prometheus_client's start_http_server, which spent a thread per connection (a greenlet under Locust)
# and a descriptor, with no deadline: every scraper that sent half a request and waited kept its thread for good (150
# of them, 150 threads in the proxy; a few hundred, and its port accepted a connection a second, so Prometheus' own
# scrape timed out), and enough of them took every descriptor of a Locust process (400 at a limit of 256: its scrape
# timed out, then was refused, and whatever else it opened failed with EMFILE). Two workers (a scrape takes
# milliseconds); a connection silent or unfinished for 10 s is closed; one answer per connection
# (_OneRequestChannel); at most a twentieth of the open-file limit of connections at once, from 4 up to 1024 (the
# proxy keeps a tenth free beyond its client connections; a Locust process's descriptors are its chats'), and past it
# a new connection closes the one waiting longest on its client (_make_room).
METRICS_THREADS = 2


def metrics_connections(nofile: int | None) -> int:
    """Connections a metrics-only endpoint holds at once for an open-file limit (None: unlimited)."""
    return MAX_CONNECTIONS if nofile is None else max(4, min(1024, nofile // 20))


def _open_file_limit() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def connection_limit(kept: int = FD_HEADROOM) -> int:
    """Open connections the server holds: below the open-file limit, with room left for the probes' sockets (`kept`
    descriptors, FD_HEADROOM at least). Past it, a new connection closes the one that has waited longest on its
    client (`_make_room`)."""
    soft = _open_file_limit()
    if soft is None:
        return MAX_CONNECTIONS
    return max(16, min(MAX_CONNECTIONS, soft - max(kept, FD_HEADROOM)))


BARE_LF = re.compile(rb"(?<!\r)\n")  # a line ended by LF alone (the proxy's HTTP side refuses one too)


class _Parser(HTTPRequestParser):
    """waitress's request parser, answering at once two requests it held until the slow-client timeout (10 s):

    - a head with a line ended by a bare LF: waitress refuses one with 400 ("Bare CR or LF found", its defence against
      request smuggling) but only once a CRLF CRLF ends the head, which a client writing LF alone never sends. The 400
      now comes at the first bare LF of the head.
    - `Expect: 100-continue` on a request with no body (no Content-Length, or 0): waitress sent `100 Continue` and then
      waited for the body it had just been told was not coming (its send_continue marks the request unfinished). A
      request with no body has nothing to continue (RFC 9110 §10.1.1: the server may answer at once): it is answered.
    """

    def received(self, data: bytes) -> int:
        if self.body_rcv is None and not getattr(self, "completed", False) and data:
            tail = self.header_plus[-1:]
            s = tail + data  # the byte before this read: its CR may end a line this read's LF finishes
            end = find_double_newline(self.header_plus + data)
            if (m := BARE_LF.search(s, len(tail))) is not None and (end < 0 or m.start() < end - len(self.header_plus)):
                self.parse_header(b"GET / HTTP/1.0\r\n")  # as waitress readies a refusal it reads no further
                self.error = BadRequest("a line of the request head ends with a bare LF; HTTP lines end with CRLF")
                self.completed = True
                return len(data)
        return int(super().received(data))

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        if self.body_rcv is None:
            self.expect_continue = False


class _OneLineError(ErrorTask):
    """waitress's own refusals (a bad request line, headers over the limit) as one plain line, like the app's;
    its default body spans five lines with its name in it."""

    def execute(self) -> None:
        error = self.request.error
        line = f"{error.reason}: {error.body}" if error.body else error.reason
        body = (" ".join(str(line).split())[:200] + "\n").encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "text/plain; charset=utf-8"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):
    error_task_class = _OneLineError
    parser_class = _Parser
    # When the first byte of the request being read arrived (0: none is being read). waitress times out only
    # silence: a client trickling a byte a second would otherwise hold its connection forever.
    request_started = 0.0

    def received(self, data: bytes) -> bool:
        if self.request is None and data:
            self.request_started = time.time()  # waitress' own clock in maintenance()
        done = super().received(data)
        if self.request is None:
            self.request_started = 0.0
        return done


class _OneRequestParser(_Parser):
    """A request read as if it asked for its connection to be closed once answered."""

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        self.headers["CONNECTION"] = "close"


class _OneRequestChannel(_Channel):
    """One request per connection: the answer says `Connection: close`, and requests pipelined after it are dropped
    unanswered. A scraper that pipelined thousands of `GET /metrics` and read nothing had each one it sent in a read
    rendered (about 230 a read, a core's worth of CPU for seconds from a handful of connections: in a Locust process,
    the whole gevent hub its chats run on); Prometheus opens a connection per scrape anyway (an idle one is cut at
    10 s, and it scrapes every 15 s or so)."""

    parser_class = _OneRequestParser


def _drop(channel: Any) -> None:
    """Close a channel now, unsent answers and all; a worker waiting for its buffer to drain is woken (and its
    request ends as the client's disconnect)."""
    if channel.connected:
        with contextlib.suppress(OSError):
            channel.handle_close()


def _drop_all(channels: list[Any]) -> None:
    for channel in channels:
        _drop(channel)


def _waiting_since(channel: Any) -> float:
    """Since when a connection has been waiting on its client: the first byte of the request it is reading, else
    its last byte in or out."""
    return getattr(channel, "request_started", 0) or channel.last_activity


def _make_room(channels: dict[int, Any]) -> None:
    """One connection over the limit, the newest: close the connection that has waited longest on its client with no
    request being served (an idle keep-alive, a request that never ends, answers never taken), else the newest itself.
    Stopping accepting at the limit, as waitress does, let idle connections lock every scraper out until they timed
    out, and an attacker reconnecting every 10 s locked them out for good; a scrape sends its request at once and is
    served in milliseconds, so it is the last connection this closes."""
    newest = next(reversed(channels.values()))  # the map is filled in accept order; the newest is last
    victim = min((c for c in channels.values() if c is not newest and not c.requests), key=_waiting_since,
                 default=newest)
    with contextlib.suppress(OSError):
        victim.handle_close()


class _Trigger(WaitressTrigger):
    """waitress's wake-up pipe (a worker writes a byte to wake the I/O thread), never written once closed.

    A worker wakes the I/O thread at the end of each request, once it has seen its connection open, and whenever its
    answer outgrows the send size; nothing orders that after a shutdown. A shutdown in between (the monitor stopped
    while a /probe was being answered) closed the connection and the pipe first, and the worker wrote into a closed
    descriptor: EBADF, logged by waitress as "Exception when servicing" with a traceback; or, the number taken again
    meanwhile (a probe's socket, the proxy's client), a stray byte into someone else's stream.

    Here the check and the write are one step under `_pull_lock`, and close() marks the pipe closed under it before
    closing the descriptors: a write that began before close() ends before them, one after sees the mark and does
    nothing (the I/O thread it would wake is gone). That holds for every order, which stopping the workers before
    closing the pipe would not: a worker can outlive any bounded wait for it (a /probe past its deadline), and a
    worker waiting for its answer to drain needs the I/O thread running. No other lock is taken under `_pull_lock`
    (a thunk is queued before it, under waitress's own lock, which the I/O thread holds while it runs close_all), and
    the write never blocks (a full pipe already holds a pending wake-up): close() from the I/O thread, the pipe's only
    reader, never waits on a worker that waits on it."""

    def __init__(self, map: dict) -> None:
        super().__init__(map)
        self._pull_lock = threading.Lock()
        self._shut = False
        os.set_blocking(self.trigger, False)

    def pull_trigger(self, thunk: Callable[[], None] | None = None) -> None:
        if thunk is not None and not self._shut:  # a thunk queued once closed would never run: dropped
            with self.lock:
                self.thunks.append(thunk)
        with self._pull_lock:
            if not self._shut:
                with contextlib.suppress(BlockingIOError):
                    self._physical_pull()

    def close(self) -> None:
        with self._pull_lock:
            self._shut = True
        super().close()


class HttpServer:
    """waitress serving one WSGI app on one socket, in a daemon I/O thread plus `threads` workers."""

    def __init__(self, app: Callable, sock: socket.socket, threads: int, slow_client_timeout: int,
                 max_connections: int, one_request_per_connection: bool = False) -> None:
        self._map: dict = {}
        self._server = create_server(
            # waitress counts its own two entries of the map (the listening socket, the trigger) and stops accepting
            # at its limit: set past what make_room leaves, so that it never does (a new connection makes room).
            app, map=self._map, sockets=[sock], threads=threads, connection_limit=max_connections + 3,
            channel_timeout=slow_client_timeout, cleanup_interval=1, asyncore_use_poll=True,  # poll: no 1024-fd cap
            max_request_header_size=MAX_REQUEST_HEADER, max_request_body_size=MAX_REQUEST_BODY,
            ident="chatprobe-monitor", expose_tracebacks=False,
            log_socket_errors=False)  # a client that resets, or an accept() that fails, is not worth a traceback
        self._server.channel_class = _OneRequestChannel if one_request_per_connection else _Channel
        # waitress's trigger, for one never written once closed (_Trigger); swapped before the I/O thread starts
        self._server.trigger.close()
        self._server.trigger = _Trigger(self._map)
        sweep = self._server.maintenance

        def maintenance(now: float) -> None:  # every cleanup_interval, in the I/O thread
            sweep(now)  # closes connections silent for slow_client_timeout
            cutoff = now - slow_client_timeout
            stuck = []
            for channel in self._server.active_channels.values():
                if 0 < getattr(channel, "request_started", 0) < cutoff and not channel.requests:
                    channel.will_close = True
                # Answers waiting to be sent and nothing taken for slow_client_timeout: a peer that stopped reading.
                # waitress only marks such a channel to close once flushed (never, as the peer reads nothing), and
                # not at all while a worker waits for its buffer to drain: a scraper pipelining requests it never
                # read held its connection, its answers (megabytes each) and perhaps a worker for good.
                # Also one with no answer left to write but the kernel's send buffer full of them (every answer it
                # asked for fitted there: a page smaller on a busy monitor, a shorter burst): waitress marks it to
                # close once its socket is writable, which it never is again.
                if channel.last_activity < cutoff and (channel.total_outbufs_len or not channel.requests):
                    stuck.append(channel)
            if stuck:  # closed from the trigger, outside the loop's walk of the map (as close_all is)
                self._server.trigger.pull_trigger(lambda: _drop_all(stuck))

        self._server.maintenance = maintenance
        channels = self._server.active_channels
        accept = self._server.handle_accept

        def handle_accept() -> None:  # in the I/O thread, from the walk of poll's results (a closed one is skipped)
            accept()
            if len(channels) > max_connections:
                _make_room(channels)

        self._server.handle_accept = handle_accept
        self.server_address = sock.getsockname()
        self._thread = threading.Thread(target=self._server.run, name="chatprobe-monitor-http", daemon=True)
        self._closed = False

    def start(self) -> HttpServer:
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection, and stop the workers (a running /probe gets `timeout`)."""
        if self._closed:
            return
        self._closed = True

        def close_all() -> None:  # runs in the I/O thread, which owns the map: the loop ends when it is empty
            for channel in list(self._map.values()):
                with contextlib.suppress(OSError):
                    # A connection by its handle_close (the listening socket and the trigger by close): under the
                    # lock a worker holds while it checks the connection and writes to it, and waking a worker
                    # that waits for its answer to drain. close() alone woke none: that worker waited for good,
                    # and the shutdown its whole timeout for it ("1 thread(s) still running"); and a worker
                    # writing meanwhile could find the socket gone under it (a logged AttributeError).
                    (channel.handle_close if isinstance(channel, HTTPChannel) else channel.close)()

        self._server.trigger.pull_trigger(close_all)
        self._thread.join(timeout)
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=timeout)

    def server_close(self) -> None:
        self.shutdown()


def start_metrics(host: str, port: int) -> HttpServer:
    """/metrics (the default registry) and health on host:port, bounded as METRICS_THREADS says; OSError (cannot
    listen) is the caller's to report."""
    return start_http(metrics_app(), host, port, threads=METRICS_THREADS,
                      max_connections=metrics_connections(_open_file_limit()), one_request_per_connection=True)


class _QueueDepth(logging.Filter):
    """waitress logs "Task queue depth is N" at WARNING for each request it queues while every worker is busy: a
    client flooding the port wrote a line a request into the log, thousands a second. Those lines are dropped here and
    said as one of ours a minute at most (the front door's throttle), with the count of those held back."""

    def __init__(self) -> None:
        super().__init__()
        from .frontdoor import Throttled  # (websockets and jwt: imported once a server starts, not with this module)

        self._throttle = Throttled(logger=log)
        self._lock = threading.Lock()  # waitress's I/O thread and its workers queue tasks

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Task queue depth"):
            return True
        depth = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        with self._lock:
            self._throttle.warn("queue_depth", "HTTP requests wait for a free worker (%s queued, every worker busy): "
                                "a client sends requests faster than they are answered", depth)
        return False


def _throttle_queue_depth() -> None:
    queue_log = logging.getLogger("waitress.queue")
    if not any(isinstance(f, _QueueDepth) for f in queue_log.filters):
        queue_log.addFilter(_QueueDepth())


def start_http(app: Callable, host: str, port: int, *, threads: int = HTTP_THREADS,
               slow_client_timeout: int | None = None, max_connections: int | None = None,
               one_request_per_connection: bool = False) -> HttpServer:
    """Listen on host:port and serve; OSError (cannot listen) is the caller's to report. `slow_client_timeout`: None
    is SLOW_CLIENT_TIMEOUT as it stands when called. `one_request_per_connection`: see _OneRequestChannel."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=1024)
    try:
        server = HttpServer(app, sock, threads, SLOW_CLIENT_TIMEOUT if slow_client_timeout is None else slow_client_timeout,
                            connection_limit() if max_connections is None else max_connections,
                            one_request_per_connection)
    except BaseException:
        sock.close()
        raise
    # waitress logs "Serving on ..." and each closed idle channel at INFO: the monitor says what it listens on.
    logging.getLogger("waitress").setLevel(logging.WARNING)
    _throttle_queue_depth()
    return server.start()
