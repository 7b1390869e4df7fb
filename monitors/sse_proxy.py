"""`chatprobe proxy --upstream http(s)://…`: the proxy's HTTP side, for servers that answer a chat's POST with its
events as `text/event-stream` (AG-UI's usual transport). Each client request is forwarded to --upstream and its answer
relayed to the client as it comes, chunk by chunk (forward first, check second: the checking never delays the user);
an event stream answering a chat's request (the profile reads its body as one) goes through the same road as the
WebSocket side's frames: the SSE parser (harness.eventstream), the profile's decoder, a LiveConnection of the shared
LiveChats (ChatTracker, the sinks, --record). Both sides speak HTTP/1.1 through h11's Sans-I/O connection.

One request is one upstream connection (`Connection: close` to the upstream), so a stream is never shared; the
client's own connection is kept alive between its requests (idle at most KEEPALIVE_TIMEOUT).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import h11

from harness import redact
from harness.eventstream import EventStreamParser, EventTooLarge
from harness.profiles import ClientFrame
from harness.redact import credentials_of
from harness.transports.base import ConnectSettings, ssl_context
from harness.transports.sse import CODINGS, CorruptEncoding, Unpacker, classify_http, head_failure

from .frontdoor import (
    MAX_RECORDED_CREDENTIALS,
    BadTarget,
    FrontDoor,
    HeldBack,
    NotesHeldWrites,
    UpstreamTls,
    accept_batch,
    client_address,
    credentials_identity,
    drain_wait,
    idle_key,
    install_accept_errors,
    limit_key,
    open_file_limit,
    trusted_peer,
    upstream_url,
)
from .httpserver import BARE_LF

if TYPE_CHECKING:  # (proxy.py, whose LiveChats this side feeds, dispatches to it: no import back at run time)
    from .proxy import LiveChats, LiveConnection

log = logging.getLogger("chatprobe.proxy")

# The most bytes of request line and headers a request may carry, as the WebSocket side's upgrade (proxy.py:
# MAX_REQUEST_HEAD; nginx's default large_client_header_buffers, 4 x 8 KiB, is 32 KiB). Past it, 431.
MAX_REQUEST_HEAD = 64 * 1024
# The defaults of --max-size and --send-timeout (proxy.py's; main passes the flags).
DEFAULT_MAX_SIZE = 4 * 1024 * 1024
DEFAULT_SEND_TIMEOUT = 30.0
# A client's request (head and body) must come whole within this long of its first byte: a client that drips it (a
# slow-loris) is answered 408 and closed, counted as a bad request.
REQUEST_TIMEOUT = 10.0
# How long an answer of the proxy's own (a 4xx, 502, 503, 504) may take to leave before the connection is dropped.
CLOSE_TIMEOUT = 2.0
# A kept-alive client connection with no request begun is closed after this long (nginx's keepalive_timeout is 75s).
KEEPALIVE_TIMEOUT = 60.0
# The most bytes of status line and headers an upstream's answer may carry (as a client's request: MAX_REQUEST_HEAD).
MAX_RESPONSE_HEAD = 64 * 1024
# One read from either socket; the most the proxy holds of a response between the upstream and the client is this and
# the client's write buffer (WRITE_LIMIT: past it, the proxy waits for the client before reading on).
READ_CHUNK = 64 * 1024
WRITE_LIMIT = 64 * 1024
# Pieces of a body (chunks) parsed from the upstream's bytes per turn of the event loop: an upstream sending one-byte
# chunks (64 KiB of them a read, some 11,000) holds the loop for a few milliseconds a turn, not a quarter second.
EVENTS_PER_TURN = 256
# Bytes of an event stream checked (parsed, each event judged) per turn of the event loop: a 64 KiB read of tiny events
# (`data:1` and a blank line: 8,192 of them; blank lines alone: 65,536 lines) was checked in one go, 40-100 ms of the
# loop a read, every other user's stream and the chats' clocks stood still meanwhile. A slice of this many bytes holds
# at most 512 events (as the WebSocket side's 256 frames a turn, base.FRAMES_PER_TURN, about) or 4,096 lines.
PARSE_SLICE = 4 * 1024
# Bytes a client may send while its answer streams (a pipelined next request); past them the connection ends with
# the answer (the extra bytes are not kept).
MAX_PIPELINED = MAX_REQUEST_HEAD
# Headers of one hop, never passed on (RFC 9110 7.6.1), plus the ones the proxy sets itself for the upstream (Host:
# the upstream's; Content-Length: of the body as read; Expect: the proxy read the body already).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "proxy-authorization", "proxy-authenticate"})
REQUEST_SET = frozenset({"host", "content-length", "expect", "accept-encoding"})
# Headers saying who the client is and how it connected, which the upstream may believe from the proxy (uvicorn's
# --forwarded-allow-ips is 127.0.0.1 by default: a proxy beside it): passed on only from a --trusted-proxy, as the
# per-address cap believes X-Forwarded-For only from one; X-Forwarded-For then says the socket's peer too (nginx's
# $proxy_add_x_forwarded_for).
CLIENT_ADDRESS = frozenset({"forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
                            "x-forwarded-port", "x-real-ip"})
# A request's header sent twice is refused (400) as the WebSocket side refuses it: which one counts is up to each
# reader, and the identity and the scrubbing would know one of them only.
ONCE_HEADERS = ("host", "authorization", "proxy-authorization", "cookie", "content-length")
# The codings the proxy can unpack to check a stream (harness.transports.sse.Unpacker): a client's Accept-Encoding
# is passed on with only these, so the upstream never encodes a stream the proxy cannot read (br, zstd).
PASSED_CODINGS = frozenset({*CODINGS, "identity", "*"})
CHAT_METHODS = (b"POST", b"PUT")


class _Refused(Exception):
    """A request the proxy answers itself and then closes the connection: (status, the proxy's own words)."""

    def __init__(self, status: HTTPStatus, why: str, counted: bool = True, extra: str = "") -> None:
        super().__init__(why)
        self.status = status
        self.why = why
        self.counted = counted  # a bad_request refusal (chatprobe_proxy_refused_connections_total)
        self.extra = extra  # header lines of the answer's own (Retry-After)


class _Socket:
    """An upstream socket as FrontDoor.cut_all finds it (its `transport` aborted at the end of a shutdown's grace)."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport


class ClientSocket:
    """A client's connection as the front door holds it: `transport`, `upstream` (while a request is forwarded),
    `wait_closed` (its slot released then)."""

    handled = True  # the proxy closes its upstream itself (FrontDoor._hold closes none)

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.transport = writer.transport
        # How long the proxy's writes to it have been backed up (_HeldProtocol; None for another protocol).
        self.held: HeldBack | None = getattr(writer.transport.get_protocol(), "held", None)
        self.upstream: _Socket | None = None
        self.key = "unknown"  # its limit key (client address), once admitted
        self.admitted = False  # it holds a slot of the front door (from its first request's head on)
        self.reading = True  # waiting for (or reading) a request: closed at once when the proxy stops
        self.heard = False  # (while reading) a byte of the request came: the drain lets it come whole and be served
        self.lingering = False  # its last answer sent, its connection closing lingering (SSEProxy._send_and_close)
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def done(self) -> None:
        if not self._closed.done():
            self._closed.set_result(None)


def _answer(status: HTTPStatus, text: str, extra: str = "") -> bytes:
    """A response of the proxy's own, ending the connection (never an echo of what the client sent)."""
    body = text.encode()
    return (f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n").encode() + body


def _accept_encoding(value: str) -> str:
    """A client's Accept-Encoding with only the codings the proxy can unpack ("" when none is left)."""
    kept = [item.strip() for item in value.split(",")
            if item.split(";", 1)[0].strip().lower() in PASSED_CODINGS]
    return ", ".join(k for k in kept if k)


# The end of a request's head as h11 finds it (its _receivebuffer: a blank line, CRLF or LF alone), and a line end
# that is LF alone.
_HEAD_END = re.compile(rb"\n\r?\n")
_FOLDED = re.compile(rb"\n[ \t]")  # a line beginning with whitespace: obs-fold, a continuation of the line before


# Header fields a request may carry, as many as the WebSocket side's upgrade (websockets' MAX_NUM_HEADERS; a browser
# sends some 20, a load balancer adds a few): h11 reads as many as 64 KiB holds (6,500 of `a:b`), some 30-50 ms of the
# event loop for each such head, every other user's stream stalled meanwhile, and the proxy then copied, checked and
# forwarded them all. Past it, 431, before h11 parses the head.
MAX_HEADERS = 128


def _check_count(raw: bytes | bytearray) -> None:
    """_Refused (431) for a request head (the start of `raw`, blank lines before it aside) of more than MAX_HEADERS
    header fields. Called only once the line ends read pass that many (a head's, or a body's in the same read)."""
    raw = bytes(raw).lstrip(b"\r\n")
    end = _HEAD_END.search(raw)
    if raw.count(b"\n", 0, end.end() if end is not None else len(raw)) > MAX_HEADERS + 2:  # + request line, blank line
        raise _Refused(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"the request has more than {MAX_HEADERS} header "
                       "fields")


def _check_lines(raw: bytes | bytearray) -> None:
    """_Refused (400) for a request head with a line ended by LF alone, or a header folded onto a line beginning with
    whitespace (obs-fold): h11 reads the first as a line (RFC 9112 §2.2 lets a recipient) and joins the second to the
    header before, but a server or load balancer in front that does neither would read other headers (`X-A: a` then
    ` Transfer-Encoding: chunked`), or another request, from the same bytes (request smuggling). Refused as the
    WebSocket side's websockets refuses both (and the monitor's HTTP side a bare LF). `raw`: the bytes read of the
    request, its head first."""
    end = _HEAD_END.search(raw)
    stop = end.end() if end is not None else len(raw)
    if BARE_LF.search(raw, 0, stop) is not None:
        raise _Refused(HTTPStatus.BAD_REQUEST, "a line of the request head ends with a bare LF; HTTP lines end with "
                       "CRLF")
    if _FOLDED.search(raw, 0, stop) is not None:
        raise _Refused(HTTPStatus.BAD_REQUEST, "a header line folded onto the next (obs-fold, RFC 9112 §5.2) is not "
                       "accepted")


# The status line of an informational (1xx) answer, which another head follows.
_INFORMATIONAL = re.compile(rb"HTTP/[0-9]\.[0-9] 1")


def _check_response_heads(raw: bytes) -> int:
    """h11.RemoteProtocolError (a 502, `protocol_error`) for an upstream's answer whose head (a 1xx's or the final
    one's, the start of `raw` its first byte) has more than MAX_HEADERS header fields, as the WebSocket side's upstream
    answer (websockets reads at most 128) and a client's request here: h11 parses a head whole once it came, and 64 KiB
    of `a:1` is 10,000 fields, some 50-80 ms of the event loop to parse and send on, every other user's stream and the
    chats' clocks stood still meanwhile, for each answer. Returns where the head still to come begins (after the whole
    informational heads in `raw`, checked): the bytes before it need not be looked at again. Line ends are counted,
    nothing parsed; the final head's body is not looked at."""
    pos = 0
    while True:
        end = _HEAD_END.search(raw, pos)
        stop = end.end() if end is not None else len(raw)
        if raw.count(b"\n", pos, stop) > MAX_HEADERS + 2:  # + the status line and the blank line
            raise h11.RemoteProtocolError(f"the upstream's answer has more than {MAX_HEADERS} header fields")
        if end is None or not _INFORMATIONAL.match(raw, pos):
            return pos
        pos = stop


def _relayed_headers(response: h11.Response) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers as the client gets them: without those of one hop (HOP_BY_HOP and the ones
    its Connection names, RFC 9110 §7.6.1: an upstream's `Connection: X-Internal` with `X-Internal: …` was passed on),
    nor a Content-Length beside a Transfer-Encoding (RFC 9112 §6.3: the body is chunked, read so, and an intermediary
    MUST drop the length before passing it on: kept, it framed the client's answer at a length its body was not, and
    the answer was cut), nor a 204's Content-Length."""
    named = {t.strip() for n, v in response.headers if n == b"connection" for t in v.lower().split(b",")}
    drop = {n.encode() for n in HOP_BY_HOP} | named
    if response.status_code == 204 or any(n == b"transfer-encoding" for n, _ in response.headers):
        drop.add(b"content-length")  # (a 204 has no body, and RFC 9110 §8.6 forbids it the header: a reader in
        # front framing it by one would take the next answer's first bytes for its body)
    return [(n, v) for n, v in response.headers.raw_items() if n.lower() not in drop]


def _check_end(consumed: bytes, end: h11.EndOfMessage) -> None:
    """_Refused (400) for a chunked request body whose end is not `0` CRLF CRLF, or that carries trailer fields: h11
    ends the body at `0` CRLF LF (and at a trailer section's LF LF), where a reader in front holding to CRLF reads on
    into what comes next, the proxy's next request (smuggling). Trailers would be dropped anyway (never passed on);
    browsers' fetch() cannot send them. `consumed`: the bytes up to the body's end, its last 4 at least."""
    if end.headers:
        raise _Refused(HTTPStatus.BAD_REQUEST, "a chunked request body with trailer fields is not accepted")
    if not consumed.endswith(b"\r\n\r\n"):
        raise _Refused(HTTPStatus.BAD_REQUEST, "a chunked request body's end is not CRLF CRLF")


class _Request:
    def __init__(self, request: h11.Request, body: bytes) -> None:
        self.head = request
        self.body = body


class SSEProxy:
    """The HTTP side of `chatprobe proxy` (see the module's docstring)."""

    def __init__(self, upstream: str, live: LiveChats, connect_timeout: float = 10.0,
                 send_timeout: float = DEFAULT_SEND_TIMEOUT, max_size: int = DEFAULT_MAX_SIZE,
                 request_timeout: float = REQUEST_TIMEOUT, read_timeout: float | None = None,
                 tls: ConnectSettings | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.request_timeout = request_timeout
        self.live = live
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self.max_size = max_size  # the largest request body, and the largest event checked
        self.clock = time.monotonic
        # An answer that sends nothing for this long is cut (nginx's proxy_read_timeout is 60s): past a chat's deadline
        # the chat was judged already.
        self.read_timeout = read_timeout or max(60.0, live.exp.deadline + live.settle)
        self.door: FrontDoor | None = None
        self.stopping = False
        self.drained = False  # the drain is over: what still streams is cut at the stop's close, not given its grace
        self.clients: dict[ClientSocket, asyncio.Task[Any]] = {}
        # An https:// upstream's TLS, as the WebSocket side's wss://: its certificate verified against the system's
        # CAs or `tls`'s CA file, and `tls`'s client certificate shown when it asks for one (the clients' shared
        # context, transports.base.ssl_context: loaded once, again when a file is rewritten).
        self.tls = tls or ConnectSettings(url=self.upstream)
        self.tls_failure = UpstreamTls()

    # -- the client's connection --

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        door = self.door or FrontDoor.defaults()
        self.door = door
        key = door.socket_opened(writer.get_extra_info("peername"))
        if key is None:
            writer.transport.abort()
            return
        client = ClientSocket(writer)
        task = asyncio.current_task()
        assert task is not None
        self.clients[client] = task
        writer.transport.set_write_buffer_limits(WRITE_LIMIT)
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        door.handshake_began(client, key)
        pending: bytes | None = b""
        try:
            # Draining, a request the client sent while its last answer streamed (pipelined) is still answered, as
            # one partly come when the drain began is (SSEServer.close): its answer says `Connection: close`.
            while not self.stopping or pending or h.trailing_data[0]:
                client.reading, client.heard = True, bool(pending or h.trailing_data[0])
                try:
                    request = await self._read_request(h, reader, writer, pending or b"", first=not client.admitted,
                                                       client=client)
                except _Refused as refused:
                    await self._refused(reader, writer, refused)
                    return
                finally:
                    door.handshake_ended(client, key)
                if request is None:
                    return
                client.reading = False
                try:
                    pending = await self._exchange(h, reader, writer, request, client)
                except _Refused as refused:
                    await self._refused(reader, writer, refused)
                    return
                if h.our_state is not h11.DONE or h.their_state is not h11.DONE or pending is None:
                    return
                h.start_next_cycle()
                if client.admitted and (idle := idle_key(self._peer(writer), door.trusted)) is not None:
                    # A trusted proxy's connection between two requests: no user's (frontdoor.idle_key)
                    door.rekey(client, client.key, idle, self.live.sink, limited=False)
                    client.key = idle
        except (OSError, h11.ProtocolError, TimeoutError):
            pass  # the client's socket failed or broke HTTP mid-answer: nothing more to tell it
        finally:
            client.done()
            door.socket_closed(key)
            client.lingering = True
            try:
                if not writer.transport.is_closing():
                    if h.our_state in (h11.SEND_BODY, h11.ERROR):  # an answer cut short: the client sees it cut
                        writer.transport.abort()
                    else:
                        # Closed lingering, as the proxy's own answers are: closed at once with bytes of the client's
                        # unread (a request sent behind `Connection: close`, pipelined past MAX_PIPELINED, or coming
                        # as the drain ends the connection), the socket was reset and the kernel dropped what it had
                        # not yet sent of the answer: the client got a whole answer's head and a silently short body.
                        await self._send_and_close(reader, writer, None)
            finally:
                # Only now: the stop waits for (or cuts) a connection closing lingering too. Left out of it, its task
                # was still running as the proxy's event loop ended, which cancelled it, and Python 3.11's asyncio
                # logs a connection handler's cancellation as an "Exception in callback" traceback.
                self.clients.pop(client, None)

    @property
    def relays(self) -> dict[ClientSocket, asyncio.Task[Any]]:
        """The client connections open, as the WebSocket side's relays (what the stop's lines count), those closing
        lingering aside (the drain waits for those too, CLOSE_TIMEOUT at most, but they carry no request)."""
        return {c: t for c, t in self.clients.items() if not c.lingering}

    async def drain(self, server: SSEServer, timeout: float, interrupted: asyncio.Event | None = None) -> int:
        """SIGTERM's first step, as the WebSocket side's (proxy.Proxy.drain): no new connection (the listener closed),
        each connection waiting for a request closed now (a kept-alive client's next request goes to another
        replica), a request partly come let come whole and answered, each answer streaming relayed to its end and
        its connection closed then (an answer begun during the drain says `Connection: close`), for at most `timeout`
        seconds or until `interrupted` is set (a second signal). Returns how many connections are still open
        (stop_proxy cuts them)."""
        server.close(requests_too=timeout <= 0)
        tasks = set(self.clients.values())
        if tasks and timeout > 0:
            await drain_wait(asyncio.wait(tasks), timeout, interrupted)
        self.drained = True
        return len(self.relays)

    async def _refused(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, refused: _Refused) -> None:
        """A request the proxy answers itself: counted (when it is a bad request), answered, the connection closed."""
        if refused.counted:
            self.refuse(self._peer(writer), refused.status)
        await self._send_and_close(reader, writer, _answer(refused.status, refused.why + "\n", refused.extra)
                                   if refused.why else None)

    def refuse(self, peer: str | None, status: HTTPStatus) -> None:
        """A request the proxy answered itself and did not pass on: counted (bad_request) and said, a line a minute."""
        door = self.door
        if door is not None:
            door.count_refusal(self.live.sink, "bad_request")
            door.throttle.warn("bad_request", "refused a request the proxy does not pass on (from %s; HTTP %d): a "
                               "request target that is not a plain path (the proxy only ever connects to --upstream), "
                               "a head or body over its bounds, a header sent twice that is sent once, a request not "
                               "sent whole in time, a request framed two ways or with a bare LF (smuggling), CONNECT, "
                               "or bytes that are no HTTP/1.1 request", peer or "unknown",
                               status.value)

    def warn(self, key: str, message: str, *args: Any) -> None:
        """A warning, a line a minute per key (the front door's throttle)."""
        if self.door is not None:
            self.door.throttle.warn(key, message, *args)

    @staticmethod
    def _peer(writer: asyncio.StreamWriter) -> str | None:
        peer = writer.get_extra_info("peername")
        return peer[0] if isinstance(peer, tuple) and peer else None

    async def _send_and_close(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                              data: bytes | None) -> None:
        """`data` (None: nothing) to the client, then its connection closed, lingering (as nginx's lingering_close):
        what the client still sends is read and dropped until it closes too, for at most CLOSE_TIMEOUT in all. Closed
        at once, a socket with unread bytes is reset, and the reset may destroy the answer before the client read it
        (a client still sending a body, or dripping its request, never saw its 413 or 408)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                if data is not None:
                    writer.write(data)
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
                while await reader.read(READ_CHUNK):
                    pass
        if writer.transport.is_closing():
            writer.transport.abort()
        else:
            writer.close()

    async def _read_request(self, h: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            pending: bytes, first: bool, client: ClientSocket | None = None) -> _Request | None:
        """The client's next request, head and body (at most --max-size of body), within its deadlines: None when the
        client closed (or stayed idle) with no request begun. _Refused: a request the proxy answers itself."""
        loop = asyncio.get_running_loop()
        head: h11.Request | None = None
        body = bytearray()
        # The bytes of this request read so far, up to its head (h11 may hold some from the last read already): h11
        # takes a line ended by LF alone, which the head is checked for once it came (_check_lines).
        raw = bytearray(h.trailing_data[0]) + pending
        # Begun already: what came behind the last request (pipelined in its read, or while its answer streamed),
        # blank lines aside. A request begun in the last request's read was taken for none: garbage there closed the
        # connection unanswered and uncounted, and a request cut short there (a slow-loris's next one) was given the
        # 60 s of an idle connection, not the 10 s of a request begun, and then closed uncounted too.
        heard = bool(raw.lstrip(b"\r\n"))
        # The last bytes given to h11 and the 4 before them: where a chunked body's end is checked (_check_end).
        last, before = bytes(raw), b""
        # Line ends read while the head is (a cheap count: the head itself is looked at only past MAX_HEADERS).
        lines = raw.count(b"\n")
        if lines > MAX_HEADERS + 2:
            _check_count(raw)
        if pending:
            h.receive_data(pending)
        idle = self.request_timeout if first else KEEPALIVE_TIMEOUT
        try:
            async with asyncio.timeout(self.request_timeout if heard else idle) as deadline:
                parsed = 0
                while True:
                    parsed += 1
                    if parsed % EVENTS_PER_TURN == 0:
                        # A body of one-byte chunks (11,000 a 64 KiB read) parsed in one go held the loop, every
                        # other user's stream with it, for most of a second: the loop is handed over as _relay does.
                        await asyncio.sleep(0)
                    try:
                        event = h.next_event()
                    except h11.RemoteProtocolError as exc:
                        if not heard:
                            return None
                        status = exc.error_status_hint
                        if status == 431:
                            raise _Refused(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "the request's head is over "
                                           f"{MAX_REQUEST_HEAD // 1024} KiB") from None
                        if h.their_state is h11.ERROR and reader.at_eof():
                            # cut short by the client's own end: counted, as the WebSocket side counts a request
                            # cut short, and closed unanswered (no one reads an answer)
                            raise _Refused(HTTPStatus.BAD_REQUEST, "") from None
                        raise _Refused(HTTPStatus.BAD_REQUEST, "no HTTP/1.1 request the proxy passes on") from None
                    if event is h11.NEED_DATA:
                        if h.they_are_waiting_for_100_continue:  # the body comes once told to (Expect: 100-continue)
                            writer.write(h.send(h11.InformationalResponse(status_code=100, headers=[])))
                        data = await reader.read(READ_CHUNK)
                        if data and not heard:
                            heard = True
                            if client is not None:
                                client.heard = True
                            deadline.reschedule(loop.time() + self.request_timeout)
                        if head is None:
                            raw += data
                            lines += data.count(b"\n")
                            if lines > MAX_HEADERS + 2:
                                _check_count(raw)
                        before, last = (before + last[-4:])[-4:], data
                        h.receive_data(data)
                        continue
                    if isinstance(event, h11.Request):
                        head = event
                        _check_lines(raw)
                        self._check_head(event)
                        if client is not None:
                            self._admit(client, event, writer)
                    elif isinstance(event, h11.Data):
                        body += event.data
                        if len(body) > self.max_size:
                            raise _Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                           f"the request's body is over the proxy's {self.max_size} byte limit")
                    elif isinstance(event, h11.EndOfMessage):
                        assert head is not None
                        if any(n == b"transfer-encoding" for n, _ in head.headers):
                            window = before + last
                            _check_end(window[:len(window) - len(h.trailing_data[0])], event)
                        return _Request(head, bytes(body))
                    elif isinstance(event, h11.ConnectionClosed):
                        return None
                    else:  # PAUSED: nothing more is read on this connection
                        return None
        except TimeoutError:
            if not heard:
                return None
            raise _Refused(HTTPStatus.REQUEST_TIMEOUT, f"the request did not come whole within "
                           f"{self.request_timeout:g}s") from None

    def _admit(self, client: ClientSocket, request: h11.Request, writer: asyncio.StreamWriter) -> None:
        """The front door's slot for this request's client, taken once its head came, before its body is read (or
        invited: Expect: 100-continue), as nginx's limit_conn: _Refused (503, counted by the door) when its client
        holds its --max-connections-per-ip already, or every connection is in use. Whose request it is, per request:
        a trusted proxy in front (a load balancer keeping its connections to the proxy alive) carries one client's
        request and then another's on one connection, and each is that client's own (X-Forwarded-For), as the
        WebSocket side's upgrade is: the connection's slot moves to the client of its request (FrontDoor.rekey), and
        so does its share of the credentials pool. From an untrusted peer it is the peer's, whatever a request says."""
        door = self.door
        assert door is not None
        who = limit_key(client_address(self._peer(writer), [v.decode("latin-1") for n, v in request.headers
                                                            if n == b"x-forwarded-for"], door.trusted))
        if client.admitted and who == client.key:
            return
        over = (door.rekey(client, client.key, who, self.live.sink) if client.admitted
                else door.admit(client, who, self.live.sink))
        if over is not None:
            raise _Refused(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections, try again later", counted=False,
                           extra="Retry-After: 5\r\n")
        client.key, client.admitted = who, True

    def _check_head(self, request: h11.Request) -> None:
        # (h11's own bound is on a head still incomplete: one that came whole in a read or two passed it)
        if len(request.target) + sum(len(n) + len(v) + 4 for n, v in request.headers) > MAX_REQUEST_HEAD:
            raise _Refused(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                           f"the request's head is over {MAX_REQUEST_HEAD // 1024} KiB")
        length = next((v for n, v in request.headers if n == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.max_size:
            raise _Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"the request's body is over the proxy's {self.max_size} byte limit")
        if request.method == b"CONNECT":  # a tunnel, which an origin-form target cannot ask for and --upstream is not
            raise _Refused(HTTPStatus.NOT_IMPLEMENTED, "CONNECT is not relayed (the proxy only forwards requests to "
                           "--upstream)")
        names = [n for n, _ in request.headers]
        if b"content-length" in names and b"transfer-encoding" in names:
            # RFC 9112 §6.3: a request framed both ways may be a smuggling attempt (a server in front reading it by
            # its Content-Length, this one by its chunks, would see two different requests): refused, as nginx
            # and the WebSocket side (websockets refuses any Transfer-Encoding) refuse it.
            raise _Refused(HTTPStatus.BAD_REQUEST, "a request with both Content-Length and Transfer-Encoding")
        twice = [name for name in ONCE_HEADERS if names.count(name.encode()) > 1]
        if twice:
            if self.door is not None:
                self.door.throttle.warn("header_twice", "refused a request (HTTP 400) that sent a header more than "
                                        "once: %s", ", ".join(twice))
            raise _Refused(HTTPStatus.BAD_REQUEST, f"a header sent more than once: {', '.join(twice)}")

    # -- one request, forwarded, and its answer relayed (and checked) --

    async def _exchange(self, h: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        request: _Request, client: ClientSocket) -> bytes | None:
        """Forward `request`, relay its answer; the bytes the client sent meanwhile (its next request), or None when
        its connection is to end."""
        try:
            target = request.head.target.decode("ascii")
            url = upstream_url(self.upstream, target)
        except (BadTarget, UnicodeDecodeError) as exc:
            raise _Refused(HTTPStatus.BAD_REQUEST, f"bad request target: {exc if isinstance(exc, BadTarget) else ''}"
                           ) from None
        watch = _ClientWatch(reader)
        watcher = asyncio.ensure_future(watch.run())
        exchange = _Exchange(self, h, writer, request, url, client, watch)
        work = asyncio.ensure_future(exchange.run())
        try:
            await asyncio.wait({watcher, work}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                exchange.client_left = True
                work.cancel()
            await asyncio.gather(work, return_exceptions=True)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            work.cancel()
        if work.cancelled() or work.exception() is not None:
            failure = None if work.cancelled() else work.exception()
            if isinstance(failure, _Refused):
                raise failure
            if failure is not None and not isinstance(failure, (OSError, h11.ProtocolError)):
                # The proxy's own fault: one line a minute naming it, never the request's content.
                self.warn("bug", "an answer failed in the proxy (%s): its connection closed; please report it",
                          failure.__class__.__name__)
                log.debug("the proxy's failure", exc_info=failure)
            return None
        keep = work.result()
        if not keep or watch.ended or watch.overflow:
            return None
        return bytes(watch.pending)


class _ClientWatch:
    """The client's socket read while its answer streams: its end is the user leaving (the upstream's request is
    closed, the chat judged as the WebSocket side judges a client that left); bytes it sends are kept (a pipelined
    next request, at most MAX_PIPELINED)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.pending = bytearray()
        self.ended = False
        self.overflow = False

    async def run(self) -> None:
        while True:
            try:
                data = await self.reader.read(READ_CHUNK)
            except OSError:
                data = b""
            if not data:
                self.ended = True
                return
            if len(self.pending) + len(data) > MAX_PIPELINED:
                self.overflow = True  # not kept: the connection ends with this answer
                self.pending.clear()
            elif not self.overflow:
                self.pending += data


class _Exchange:
    """One request forwarded and its answer relayed; a chat followed when the answer is its event stream."""

    def __init__(self, proxy: SSEProxy, h: h11.Connection, writer: asyncio.StreamWriter, request: _Request, url: str,
                 client: ClientSocket, watch: _ClientWatch) -> None:
        self.proxy = proxy
        self.h = h
        self.writer = writer
        self.request = request
        self.url = url
        self.client = client
        self.watch = watch
        self.client_left = False
        self.conn: LiveConnection | None = None
        self.changed = asyncio.Event()
        self.upstream: asyncio.StreamWriter | None = None

    def _forwarded_headers(self, host: str) -> list[tuple[bytes, bytes]]:
        head = self.request.head
        connection_named = {t.strip().lower().encode() for n, v in head.headers if n == b"connection"
                            for t in v.decode("latin-1").split(",")}
        out: list[tuple[bytes, bytes]] = [(b"Host", host.encode("ascii"))]
        peer = SSEProxy._peer(self.client.writer)
        door = self.proxy.door
        believed = door is not None and trusted_peer(peer, door.trusted)
        hops: list[bytes] = []
        for name, value in head.headers.raw_items():
            low = name.lower()
            text = low.decode("latin-1")
            if text in HOP_BY_HOP or text in REQUEST_SET or low in connection_named:
                continue
            if text in CLIENT_ADDRESS:
                if not believed:
                    continue  # a client's own word about its address: the upstream gets the socket's peer instead
                if text == "x-forwarded-for":
                    hops.append(value)
                    continue
            out.append((name, value))
        if peer is not None:
            out.append((b"X-Forwarded-For", b", ".join([*hops, peer.encode("latin-1")])))
        for name, value in head.headers:
            if name == b"accept-encoding":
                kept = _accept_encoding(value.decode("latin-1"))
                if kept:
                    out.append((b"Accept-Encoding", kept.encode("latin-1")))
        if self.request.body or head.method in CHAT_METHODS or head.method == b"PATCH":
            out.append((b"Content-Length", str(len(self.request.body)).encode()))
        out.append((b"Connection", b"close"))
        return out

    async def run(self) -> bool:
        """Whether the client's connection may carry its next request."""
        proxy, live = self.proxy, self.proxy.live
        head, body = self.request.head, self.request.body
        parts = urlsplit(self.url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            text = body.decode("utf-8") if head.method in CHAT_METHODS and body else ""
        except UnicodeDecodeError:
            text = ""  # no chat's request: relayed, not followed
        # (once: the chat's tracker is made of it). A body of more JSON values than the proxy parses ("dense",
        # profiles.MAX_CLIENT_STRUCTURE) is no chat's request either: relayed, not followed, as any request the proxy
        # cannot read as a chat is (a request is its own stream here: nothing is judged of its answer; the WebSocket
        # side, where a run nothing follows would be another user's, refuses such a message).
        sent = live.profile.decode_client(text) if text else None
        chat = sent is not None and sent.kind in ("request", "resume")
        pairs = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in head.headers.raw_items()]
        secrets = credentials_of(pairs, (), target) if chat else ()  # (every header: one sent twice, both values)
        headers = dict(pairs)  # for the identity: Authorization and Cookie, each refused when sent twice
        held: tuple[tuple[str, int], ...] = ()
        seen = redact.seen_credentials()
        if chat and live.recorder is not None and sum(len(s) for s in secrets) <= MAX_RECORDED_CREDENTIALS:
            door = proxy.door
            share = door.max_per_address / max(1, door.max_connections) if door else 0.1
            held = seen.hold(secrets, owner=self.client.key, share=share)
        try:
            return await self._run(text if chat else "", target, parts, secrets, headers, sent)
        finally:
            if held:
                seen.release(held)

    async def _run(self, chat: str, target: str, parts: Any, secrets: tuple[str, ...],
                   headers: dict[str, str], sent: ClientFrame | None) -> bool:
        proxy, live, h, writer = self.proxy, self.proxy.live, self.h, self.writer
        head, body = self.request.head, self.request.body
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        sent_at = proxy.clock()
        up = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
        response: h11.Response | None = None
        try:
            async with asyncio.timeout(proxy.connect_timeout):
                # (ConnectFailed, a tls_error, for a CA or certificate file gone bad since the start: a 502)
                tls = ssl_context(proxy.tls) if parts.scheme == "https" else None
                ureader, uwriter = await asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=host if tls else None, limit=READ_CHUNK)
                self.upstream = uwriter
                self.client.upstream = _Socket(uwriter.transport)
                uwriter.write(up.send(h11.Request(method=head.method, target=target.encode("ascii"),
                                                  headers=self._forwarded_headers(parts.netloc))))
                if body:
                    uwriter.write(up.send(h11.Data(data=body)))
                uwriter.write(up.send(h11.EndOfMessage()))
                await uwriter.drain()
                informational = 0
                unread = b""  # the answer's bytes from the start of the head still to come (_check_response_heads)
                while response is None:
                    event = up.next_event()
                    if event is h11.NEED_DATA:
                        data = await ureader.read(READ_CHUNK)
                        unread += data
                        unread = unread[_check_response_heads(unread):]
                        up.receive_data(data)
                    elif isinstance(event, h11.Response):
                        response = event
                    elif isinstance(event, h11.InformationalResponse):
                        # (100 Continue and the like: the proxy sent the body whole.) A flood of them (3,600 a 64 KiB
                        # read) held the loop for half a second at a time: it is handed over as _relay does.
                        informational += 1
                        if informational % EVENTS_PER_TURN == 0:
                            await asyncio.sleep(0)
                    else:
                        raise h11.RemoteProtocolError("the upstream closed before its answer")
        except asyncio.CancelledError:
            self._close_upstream()
            raise
        except Exception as exc:
            self._close_upstream()
            kind, why = classify_http(exc)
            proxy.tls_failure.failed(kind, why)
            if chat:
                live.sink.connection_attempt(live.scenario, kind)
            if kind == "timeout":
                raise _Refused(HTTPStatus.GATEWAY_TIMEOUT, f"upstream did not answer within "
                               f"{proxy.connect_timeout:g}s", counted=False) from None
            raise _Refused(HTTPStatus.BAD_GATEWAY, "upstream unreachable" if kind in ("refused", "tls_error")
                           else "upstream answered no valid HTTP response", counted=False) from None
        # The answer's head goes to the client first; then what it is decides whether a chat is followed.
        out = _relayed_headers(response)
        if proxy.stopping:  # draining: the client is told this connection ends with this answer (as nginx tells it)
            out.append((b"Connection", b"close"))
        try:
            writer.write(h.send(h11.Response(status_code=response.status_code, headers=out,
                                             reason=response.reason)))
        except h11.LocalProtocolError:
            self._close_upstream()
            raise _Refused(HTTPStatus.BAD_GATEWAY, "upstream answered no valid HTTP response", counted=False) from None
        stream = None
        # -v: a line per answer (its peer, method, path without the query, status), never a credential.
        log.info("%s %s from %s: HTTP %d", head.method.decode("ascii", "replace"),
                 redact.clean(parts.path or "/", 200), self.proxy._peer(writer) or "unknown", response.status_code)
        if chat:
            fields = {n: v.decode("latin-1") for n, v in response.headers}
            failure = head_failure(response.status_code, fields.get(b"content-type", ""), fields.get(b"location", ""),
                                   self.url, fields.get(b"content-encoding", ""))
            live.sink.connection_attempt(live.scenario, failure[0] if failure is not None else "ok")
            if failure is None:
                self.conn = conn = live.connection(credentials_identity(headers, (), target), secrets, stream=True)
                conn.held = self.client.held  # before the chat: its timing is the client's while it reads slowly
                conn.client_frame(chat, sent_at, sent)
                coding = CODINGS.get(fields.get(b"content-encoding", "").strip().lower())
                stream = _Stream(conn, proxy.max_size, Unpacker(coding) if coding else None)
        judge = asyncio.ensure_future(self._judge()) if self.conn is not None else None
        ended = "server"
        code: int | None = 1006
        try:
            code = await self._relay(up, ureader, stream)
            ended = "server" if code is not None else "client"
        except asyncio.CancelledError:
            ended = "client"
            raise
        finally:
            # All of it before the first wait: the client's end may cancel this (its watch) while it waits.
            self._close_upstream()
            if judge is not None:
                judge.cancel()
            if self.client_left:  # (a client closing after its whole answer came left no chat)
                ended = "client"
            if self.conn is not None:
                self.conn.closed(proxy.clock(), by_client=ended == "client", code=None if ended == "client" else code)
            if judge is not None:
                await asyncio.gather(judge, return_exceptions=True)
        return code == 1000 and h.our_state is h11.DONE

    async def _relay(self, up: h11.Connection, ureader: asyncio.StreamReader, stream: _Stream | None) -> int | None:
        """Relay the answer's body as it comes, checking an event stream once each read of it is on its way to the
        client. 1000: the answer ended whole; 1006: the upstream broke or cut it (the client's connection is then
        cut too, so that it sees the break, never a clean end); None: the client left or stopped reading."""
        proxy, h, writer = self.proxy, self.h, self.writer
        clock = proxy.clock
        read = False  # h11 may hold the body's first bytes already (they came with the head)
        while True:
            if read:
                try:
                    async with asyncio.timeout(proxy.read_timeout):
                        data = await ureader.read(READ_CHUNK)
                except TimeoutError:
                    proxy.warn("upstream_silent", "the upstream sent nothing of an answer for %gs: cut it",
                               proxy.read_timeout)
                    writer.transport.abort()
                    return 1006
                except OSError:
                    writer.transport.abort()  # reset: a lost connection, not broken framing
                    return 1006
                up.receive_data(data)
            # What h11 has of the body now (at most EVENTS_PER_TURN of its pieces: a read of thousands of one-byte
            # chunks is parsed over several turns of the loop) goes to the client in one write, then is checked:
            # forward first, check second. The body's bytes are the upstream's; its chunks are re-framed, one a turn.
            pieces: list[bytes] = []
            end: int | None = None
            broken = ""
            read = True
            for _ in range(EVENTS_PER_TURN):
                try:
                    event = up.next_event()
                except h11.RemoteProtocolError as exc:
                    # A chunked or Content-Length body cut short, a bad chunk header: an R12 on the chats open, as
                    # the SSE client judges it (a fetch()-based client fails the run with a network error there).
                    broken = f"the HTTP response carrying the event stream is malformed: {str(exc)[:120]}"
                    end = 1006
                    break
                if event is h11.NEED_DATA:
                    break
                if isinstance(event, h11.Data):
                    pieces.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    end = 1000
                    break
                else:  # ConnectionClosed before the end
                    end = 1006
                    break
            else:
                read = False  # more is parsed from what came, next turn
            body = b"".join(pieces)
            if body:
                writer.write(h.send(h11.Data(data=body)))
            if end == 1000:
                writer.write(h.send(h11.EndOfMessage()))
            if stream is not None and (body or end is not None):
                at = clock()  # one time for the events of one read, as the SSE transport stamps them
                if body:
                    await stream.feed(body, at)
                if broken:
                    stream.failed(broken, at)
                elif end == 1000:
                    stream.end(at)
                self.changed.set()
            if end == 1000:
                with contextlib.suppress(OSError, TimeoutError):
                    async with asyncio.timeout(proxy.send_timeout):
                        await writer.drain()
                return 1000
            if end is not None:
                writer.transport.abort()
                return 1006
            if writer.transport.is_closing():
                return None
            try:
                async with asyncio.timeout(proxy.send_timeout):
                    await writer.drain()
            except TimeoutError:
                proxy.warn("client_stuck", "a client took nothing of its answer for %gs: closing its connection",
                           proxy.send_timeout)
                writer.transport.abort()
                return None
            except OSError:
                return None
            # A flood of tiny chunks must not starve the proxy's other clients: the loop is handed over each turn.
            await asyncio.sleep(0)

    async def _judge(self) -> None:
        conn = self.conn
        assert conn is not None
        clock = self.proxy.clock
        while True:
            wake = conn.next_due()
            self.changed.clear()
            timeout = None if wake is None else max(0.0, wake - clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.changed.wait()
            conn.judge_due(clock())

    def _close_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.transport.abort()
            self.upstream = None
        self.client.upstream = None


class _Stream:
    """An answer's event stream checked as it is relayed: unpacked (gzip, deflate) and parsed bounded (no event, no
    line past --max-size; a gzip bomb costs no more), each event's data to the LiveConnection. What breaks the
    checking (an event too large, an encoding that cannot be unpacked) is an R12 and the rest is relayed unchecked."""

    def __init__(self, conn: LiveConnection, limit: int, unpacker: Unpacker | None) -> None:
        self.conn = conn
        self.parser = EventStreamParser(limit)
        self.unpacker = unpacker
        self.broken = False

    async def feed(self, chunk: bytes, at: float) -> None:
        if self.broken:
            return
        conn, parser = self.conn, self.parser
        left: asyncio.CancelledError | None = None  # the client left while this read was checked
        try:
            if self.unpacker is None and len(chunk) <= PARSE_SLICE:  # (a chat's events of a few KiB: one slice)
                for data in parser.feed(chunk):
                    conn.server_frame(data, at)
                return
            # One read may unpack to a thousand pieces, and a piece hold thousands of tiny events: the loop's other
            # clients get their turn between slices. A client that leaves meanwhile (its end cancels this) had this
            # read relayed whole already: the next READ_CHUNK bytes are still checked, in one go, as a read was before
            # (a user who got its run's end and closed at once is no abandoned chat), and then the leaving goes on.
            turned = False
            after = 0  # bytes checked since the client left
            for piece in (chunk,) if self.unpacker is None else self.unpacker.pieces(chunk):
                for start in range(0, len(piece), PARSE_SLICE):
                    if left is not None:
                        if after >= READ_CHUNK:
                            raise left
                        after += PARSE_SLICE
                    elif turned:
                        try:
                            await asyncio.sleep(0)
                        except asyncio.CancelledError as exc:
                            left = exc
                            after = PARSE_SLICE
                    turned = True
                    for data in parser.feed(piece[start:start + PARSE_SLICE]):
                        conn.server_frame(data, at)
            if left is not None:
                raise left
        except (EventTooLarge, CorruptEncoding) as exc:
            self.failed(str(exc), at)
            if left is not None:
                raise left from None

    def failed(self, detail: str, at: float) -> None:
        if not self.broken:
            self.broken = True
            self.conn.failed(detail, at)

    def end(self, at: float) -> None:
        """The answer ended whole: an encoding cut short is an R12; an event its end left pending is dispatched."""
        if self.broken:
            return
        if self.unpacker is not None and not self.unpacker.complete():
            self.failed(f"the server's {self.unpacker.coding}-encoded event stream ended before its "
                        f"{self.unpacker.coding} end (cut short)", at)
            return
        try:
            for data in self.parser.end():
                self.conn.server_frame(data, at)
        except EventTooLarge as exc:
            self.failed(str(exc), at)


class SSEServer:
    """The listening side: `sockets`, `close()`, `wait_closed()` as stop_proxy uses them."""

    def __init__(self, proxy: SSEProxy, server: asyncio.Server) -> None:
        self.proxy = proxy
        self.server = server
        self.sockets = server.sockets

    def close(self, requests_too: bool = True) -> None:
        """Stop listening; connections waiting for a request are closed now, answers streaming go on (until
        stop_proxy's grace cuts them: FrontDoor.cut_all; after a drain, they are cut now). `requests_too` False (the
        drain): a request partly come is let come whole (within the request deadline), forwarded and answered,
        `Connection: close`; its client was not told the connection ends, and a reset there lost the user's message
        (a chat's POST) at every deploy."""
        self.proxy.stopping = True
        self.server.close()
        for client in list(self.proxy.clients):
            # After a drain (its time up, or a second SIGTERM), what still streams is cut now: an HTTP answer has no
            # closing handshake to wait for (the WebSocket side's 1001), and relaying on for stop_proxy's grace made
            # a second SIGTERM end the proxy 5 s later, not at once.
            if self.proxy.drained or (client.reading and (requests_too or not client.heard)):
                client.transport.abort()

    async def wait_closed(self) -> None:
        await self.server.wait_closed()
        tasks = set(self.proxy.clients.values())
        if tasks:
            await asyncio.wait(tasks)


async def start_sse_proxy(proxy: SSEProxy, host: str, port: int, door: FrontDoor | None = None) -> SSEServer:
    """Listen (port 0: any free port) for the HTTP side of the proxy."""
    proxy.door = door or proxy.door or FrontDoor.defaults()
    proxy.door.init_metrics(proxy.live.sink)
    proxy.door.sink = proxy.live.sink
    install_accept_errors(asyncio.get_running_loop(), proxy.door.throttle)
    loop = asyncio.get_running_loop()

    def protocol() -> _HeldProtocol:  # what asyncio.start_server makes, keeping how long its writes were backed up
        return _HeldProtocol(asyncio.StreamReader(limit=READ_CHUNK, loop=loop), proxy.handle, loop=loop)

    server = await loop.create_server(protocol, host, port, backlog=accept_batch(open_file_limit()))
    return SSEServer(proxy, server)


class _HeldProtocol(NotesHeldWrites, asyncio.StreamReaderProtocol):
    """A client's connection as asyncio.start_server makes it, noting how long asyncio held its writes paused (the
    write buffer over WRITE_LIMIT): meanwhile the relay's drain waits and the upstream is read no further, so a chat's
    timing is the client's (proxy.HELD_BACK_MIN). Set on pause and resume, never per chunk."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held = HeldBack()
