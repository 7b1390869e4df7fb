"""The synchronous chat client of one virtual user, for gevent (Locust) or plain threads.

The asyncio Session's twin over websockets' Sans-I/O protocol (ws://, wss://) and h11's (http://, https://: a chat's
POST and the Server-Sent Events of its answer): the same sans-I/O FrameRouter and ChatFlow (harness/flow.py) decide;
it only moves frames and waits, every wait with a deadline.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import orjson
from websockets.client import ClientProtocol
from websockets.frames import Frame as WireFrame
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from .checker import ChatResult, Expectations
from .flow import (
    CLEAN_CLOSE_CODES,
    DEFAULTS,
    STOPPED_NOTE,
    ChatFlow,
    ChatOptions,
    Close,
    Connect,
    Drop,
    Reconnect,
    Send,
    VirtualUser,
    Wait,
    takes_attempt,
)
from .sinks import Sink
from .targets import Target
from .transports import SCHEMES, ConnectFailed, ConnectSettings
from .transports.base import (
    FRAMES_PER_TURN,
    MAX_FRAGMENTS,
    MAX_UNSENT_SEND,
    NO_RESPONSE,
    TOO_MANY_FRAGMENTS,
    SendStalled,
    answer_of,
    plain_close_hint,
)
from .transports.websocket import (
    classify,
    handshake_answer,
    handshake_options,
    minimal_lengths,
    record_close,
    status_first,
)

if TYPE_CHECKING:
    from .recorder import ConnectionRecording

__all__ = ["STOPPED_NOTE", "SyncSession"]

# A reader lets the other greenlets run once per this many bytes it read (SSE: parsed, unpacked for an encoded stream):
# a read that waited for the socket let them run already, but a server sending faster than it is read never makes
# one wait, and the reader alone would hold the Locust process (its run time's end, --stop-timeout, SIGTERM) for as
# long as the server kept sending. Counted in bytes, not reads: a read of 64 KiB of tiny lines is ~20 ms of parsing,
# and one of gzip unpacks to a thousand times that. A chat's stream of a few kB never yields for it.
YIELD_BYTES = 1 << 16
# How long a turn given to the others lasts (_yield): a timer, one turn of gevent's loop, its timers and I/O, for them
# (a GIL release on plain threads). Not sleep(0): gevent's may switch straight back, the loop never turning (a chat's
# deadline timer fired seconds late, a stream flood held the run's end).
YIELD_PAUSE = 0.0001
BACKLOG = 1 << 20  # bytes the server has not read past which the reader waits for it to read (pongs of a ping flood)


class _Wire:
    """One WebSocket connection on websockets' Sans-I/O protocol, read by the session's own reader (a greenlet under
    Locust): no second thread per connection and no hand-off of every frame through a queue and a lock, which is
    where websockets' threading client spent most of a Locust user's CPU (BENCHMARKS.md). The same handshake options,
    limits and close codes as the asyncio transport; the protocol object is what record_close reads."""

    connects_on_send = False  # a WebSocket connection carries every chat of the session, and is made by open()
    ended_note = ""  # it ends with a close code, never a note

    def __init__(self, settings: ConnectSettings) -> None:
        self.settings = settings
        self.sock: socket.socket | None = None
        self.protocol: ClientProtocol | None = None
        self.lock = threading.Lock()  # the protocol and the socket's writes; the reader only reads outside it
        self.early: list[Any] = []  # frames that came with the handshake response
        self.parts: list[bytes] = []  # a fragmented message so far
        self.parts_text = True
        # What the protocol has to send and the socket has not taken yet: written without waiting when the socket
        # takes it, else left here (as the asyncio transports' write buffers keep it) for the next write to carry on
        # with. A server that never reads never holds a sender past its deadline, nor the reader at all.
        self.out = bytearray()
        self.eof_out = False  # the protocol asked to end the write side once `out` is written
        self.dropped = False  # abort() was called: nothing more is read or handed over
        self.poller: Any = None
        # wss://: the socket stays non-blocking and its SSL object is used under the lock only (_tls_read).
        self.tls = False
        self.readable: Any = None  # the reader's own poll object (POLLIN), for a TLS socket

    def open(self) -> None:
        """Connect and complete the handshake within connect_timeout, a deadline on the whole of it (TCP, TLS, the
        upgrade), as the asyncio transports' asyncio.timeout; raises what classify() classifies."""
        s = self.settings
        opts = handshake_options(s)
        uri = parse_uri(s.url)
        deadline = time.monotonic() + s.connect_timeout
        sock = _open_socket(uri.host, uri.port, s.connect_timeout, deadline, opts["ssl"])
        self.tls = opts["ssl"] is not None
        try:
            protocol = ClientProtocol(uri, extensions=opts["extensions"], subprotocols=opts["subprotocols"],
                                      max_size=s.max_size)
            status_first(protocol)  # a refusal (401, 403, …) judged by its status line, its body never awaited
            minimal_lengths(protocol)  # a frame's length in more bytes than it needs fails it, as picows does
            request = protocol.connect()
            if opts["additional_headers"]:
                request.headers.update(opts["additional_headers"])
            request.headers.setdefault("User-Agent", opts["user_agent_header"])
            protocol.send_request(request)
            head = memoryview(b"".join(protocol.data_to_send()))
            while head:
                head = head[_within(sock, deadline, functools.partial(_send_some, sock, head), select.POLLOUT):]
            events: list[Any] = []
            while not any(isinstance(e, Response) for e in events) and protocol.handshake_exc is None:
                data = _within(sock, deadline, lambda: sock.recv(65536))
                if data:
                    protocol.receive_data(data)
                else:
                    protocol.receive_eof()
                events += protocol.events_received()
            if protocol.handshake_exc is not None:
                raise protocol.handshake_exc
            if not self.tls:
                sock.settimeout(None)  # read blocking by the reader, written with MSG_DONTWAIT (_flush)
        except BaseException:
            sock.close()
            raise
        self.sock, self.protocol = sock, protocol
        self.poller = select.poll()  # gevent's under Locust (monkey-patched); polled under the lock only
        self.poller.register(sock, select.POLLOUT)
        if self.tls:
            self.readable = select.poll()
            self.readable.register(sock, select.POLLIN)
        self.early = [e for e in events if isinstance(e, WireFrame)]
        # Open: the credential is not kept for the connection's life (the offered subprotocols, one of which may
        # carry the token, are read by the handshake only; the settings keep what the connection's end is told by).
        protocol.available_subprotocols = None
        if s.token is not None or s.extra_headers:  # --header values are secrets too
            self.settings = dataclasses.replace(s, token=None, extra_headers={})

    def send_text(self, data: bytes, timeout: float = 0.0, sending: Callable[[], object] | None = None) -> None:
        """Send one text message, given as UTF-8: queued at once, written within `timeout` seconds as far as the
        server reads; what it has not taken by then stays queued (the chat's own deadline judges a server that
        never reads, as under `chatprobe run`), never a wait without an end; SendStalled, and nothing queued, while
        more than MAX_UNSENT_SEND bytes are (bounded memory). `sending` is called once the message
        is sure to go (the connection open, under the lock the reader changes its state under): --record writes
        it then, never for a message that found the connection closed."""
        assert self.protocol is not None and self.sock is not None
        with self.lock:
            if self.protocol.state is not State.OPEN:
                raise ConnectionError("the connection is closed")
            if sending is not None:
                sending()
            if len(self.out) > MAX_UNSENT_SEND:  # the server stopped reading: not queued behind what it left unread
                raise SendStalled(len(self.out))  # (recorded as sent, then failed: as a stalled send under `run`)
            self.protocol.send_text(data)
            if self._flush():
                return
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._writable(left)  # outside the lock: the reader goes on reading meanwhile
            with self.lock:
                if self._flush():
                    return

    def _writable(self, timeout: float | None) -> bool:
        """Wait until the socket takes more bytes (or is in error), at most `timeout` seconds; None: no end. Its own
        poll object: the reader and a sender may wait at once (one poll object refuses concurrent polls)."""
        assert self.sock is not None
        poller = select.poll()
        poller.register(self.sock, select.POLLOUT)
        return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000) + 1)))

    def _flush(self) -> bool:
        """Write what the protocol has to send (under the lock) as far as the socket takes it now, never waiting;
        True when nothing is left. An empty chunk means: end the write side (once the rest is written)."""
        assert self.protocol is not None and self.sock is not None
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.out += chunk
            else:
                self.eof_out = True
        while self.out:
            # Only after poll() says the socket takes bytes, and without blocking (MSG_DONTWAIT: a plain thread's
            # blocking socket; gevent's are non-blocking; a TLS socket, which refuses flags, is non-blocking): a send
            # writes what fits and returns (an SSL socket retries the same bytes, and more, as OpenSSL asks).
            if not self.poller.poll(0):
                return False
            try:
                chunk = bytes(self.out[:1 << 20])
                sent = self.sock.send(chunk) if self.tls else self.sock.send(chunk, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return False
            except OSError:
                self.out.clear()  # the connection is gone: nothing of it will be written
                self.eof_out = False
                raise
            if not sent:
                return False  # gevent's SSL socket: OpenSSL wants to write later
            del self.out[:sent]
        if self.eof_out:
            self.eof_out = False
            _shutdown(self.sock, socket.SHUT_WR)
        return True

    def read(self, deliver: Callable[[list[str | bytes]], None]) -> None:
        """Read until the connection ends, handing the whole messages of each read to `deliver` at once (one wake-up
        and one hand-off per read, not per message); never raises for what a server does (the protocol answers
        pings and closes, and fails the connection on a frame over max_size)."""
        protocol, sock = self.protocol, self.sock
        assert protocol is not None and sock is not None
        early, self.early = self.early, []
        messages = self._messages(early)
        if messages:
            deliver(messages)
        if early and protocol.close_expected():
            # The server's close came in the read that ended the handshake (a server that refuses the credentials
            # at once, 1008 or 4401): answered now and over, as below. Left to the loop, the answer waited for a
            # read the server never sends (it awaits it): the chats heard nothing until their connect_timeout.
            with self.lock:
                try:
                    self._flush()
                except OSError:
                    pass
            self.abort()
            return
        got = 0  # bytes read since the other greenlets last had a turn (YIELD_BYTES)
        while protocol.state is not State.CLOSED and not self.dropped:
            if len(self.out) > BACKLOG:
                # Pongs (and closes) the server does not read: read no further until it takes some (websockets'
                # BoundedPongs for the asyncio clients), so its pings cannot grow this without end.
                self._writable(None)
                with self.lock:
                    try:
                        self._flush()
                    except OSError:
                        break
                continue
            if self.tls:
                data = self._tls_read()
            else:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
            with self.lock:
                if data:
                    protocol.receive_data(data)
                else:
                    protocol.receive_eof()
                events = protocol.events_received()
                try:
                    self._flush()
                except OSError:
                    pass
            messages = self._messages(events)
            if len(messages) > FRAMES_PER_TURN:
                # A read of thousands of tiny frames (32,768 empty ones in 64 KiB): handed over FRAMES_PER_TURN at a
                # time, the others' turn between (deliver stamps each part anew, a read of its own), and no more
                # once the connection is dropped (the chat's deadline came meanwhile).
                for i in range(0, len(messages), FRAMES_PER_TURN):
                    if i:
                        _yield()
                        if self.dropped:
                            break
                    deliver(messages[i:i + FRAMES_PER_TURN])
            elif messages:
                deliver(messages)
            if not data:
                break
            got += len(data)
            if got >= YIELD_BYTES:  # a server sending faster than it is read (pongs back to back): see YIELD_BYTES
                got = 0
                _yield()
            if protocol.close_expected():
                # A close frame went out (ours: a frame over max_size, bad UTF-8 or framing; or our answer to the
                # server's): the connection is over. Waiting for the server's end of TCP would leave a server that
                # streams on (or never closes) holding the reader, and the chats not told, until their deadlines;
                # the asyncio clients report it at once.
                self.abort()
                break

    def _tls_read(self) -> bytes:
        """One read of a TLS connection (b"": its end). An SSL object may not be used by two threads at once (the
        reader and a sender, on plain threads), so it is read under the lock, without blocking, once the socket has
        bytes: a TLS record that comes in parts is waited for outside the lock, senders go on meanwhile."""
        sock = cast(ssl.SSLSocket, self.sock)
        while True:
            with self.lock:
                try:
                    data = sock.recv(65536)
                    pending = sock.pending()  # decrypted and kept by OpenSSL: the socket would not wake for it
                    return data + sock.recv(pending) if pending and data else data
                except ssl.SSLWantReadError:
                    wait = self.readable
                except ssl.SSLWantWriteError:
                    wait = None
                except OSError:
                    return b""
            if wait is None:
                self._writable(None)  # OpenSSL must write first (a key update) to a server that does not read
            else:
                wait.poll()  # no end but the connection's: abort()'s shutdown wakes it

    def _messages(self, events: list[Any]) -> list[str | bytes]:
        """The whole messages of one read's frames, up to a frame this client failed the connection for (bad UTF-8):
        what came after it in the same read is not delivered, as websockets' asyncio client reads nothing past it
        (else the rest of a run the server streamed on were judged live under Locust: R8, not the R12 of `run`)."""
        out = []
        protocol = self.protocol
        for frame in events:
            message = self._on_frame(frame)
            if message is not None:
                out.append(message)
            elif protocol is not None and protocol.close_sent is not None and protocol.close_sent.code in (1007,
                                                                                                           1009):
                break  # this client failed the connection (bad UTF-8, a message in too many fragments)
        return out

    def _on_frame(self, frame: Any) -> str | bytes | None:
        """The whole message a frame completes, if any (events that are not frames, control frames: None)."""
        if not isinstance(frame, WireFrame):
            return None
        opcode, payload = frame.opcode, bytes(frame.data)
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                message: str | bytes | None = self._text(payload) if opcode is Opcode.TEXT else payload
            else:
                self.parts, self.parts_text, message = [payload], opcode is Opcode.TEXT, None
        elif opcode is Opcode.CONT:
            if len(self.parts) >= MAX_FRAGMENTS:  # as websockets' asyncio client: 1009, R12 (record_close)
                self.parts = []
                self._fail(1009, TOO_MANY_FRAGMENTS)
                return None
            self.parts.append(payload)  # the protocol bounds the whole message by max_size
            if not frame.fin:
                return None
            data, self.parts = b"".join(self.parts), []
            message = self._text(data) if self.parts_text else data
        else:  # ping, pong, close: the protocol answered
            return None
        return message

    def _text(self, data: bytes) -> str | None:
        try:
            return data.decode()
        except UnicodeDecodeError:
            self._fail(1007, "invalid UTF-8")
            return None

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection for what the server sent, as websockets does (record_close makes it an R12)."""
        with self.lock:
            assert self.protocol is not None
            self.protocol.fail(code, reason)
            try:
                self._flush()
            except OSError:
                pass

    def abort(self) -> None:
        self.dropped = True
        if self.sock is not None:
            _shutdown(self.sock, socket.SHUT_RDWR)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

    def ended(self, conn: _Connection) -> None:
        """Tell `conn` how the connection ended (its close code and reason, an R12 this client failed it for)."""
        assert self.protocol is not None
        record_close(conn, self.protocol)


class _StreamWire:
    """One chat over SSE: its HTTP POST, and the Server-Sent Events of the answer, on h11's Sans-I/O HTTP/1.1 client
    and a socket of its own, read by the session's reader as a WebSocket connection is; the asyncio SSE transport's
    twin (harness/transports/sse.py: the same request headers, the same judgement of the answer's head, the same
    bounded unpacking and event parser, the same failure labels and notes). h11, not httpx's sync client: every wait of
    the request and the answer's head polls against one deadline, as _Wire's handshake does (httpx bounds each read
    alone: a server dripping its head a byte at a time held the chat to the drip's end), and the reader's socket is
    one abort() can shut down."""

    connects_on_send = True  # the request is the connection: made by send_text, one chat's

    def __init__(self, settings: ConnectSettings, keeper: StreamKeeper | None = None) -> None:
        self.settings = settings
        # Where the user's idle connection waits for its next chat (keep-alive); None: a connection per chat.
        self.keeper = keeper
        self.sock: socket.socket | None = None
        self.http: Any = None  # the h11 connection, once the answer's head opened a stream
        self.coding: str | None = None  # the stream's content coding (gzip, deflate), unpacked as read
        self.ready = threading.Event()  # the stream opened (or the wire closed): the reader may start
        self.closing = False  # the client closed or dropped it
        self.requested = False
        self.ended_note = ""  # why the stream ended, for a chat still waiting for its terminal event
        self.close_reason = ""
        self.protocol_error: str | None = None  # the client dropped the stream for what the server sent (R12)

    def open(self) -> None:
        """Nothing to do: the server is reached when the chat's message is sent (send_text)."""

    def send_text(self, data: bytes, timeout: float = 0.0, sending: Callable[[], object] | None = None) -> None:
        """POST the chat's message and read the answer's head, within connect_timeout (a deadline on the whole of
        it: TCP, TLS, the request, the head); raises ConnectFailed, classified, when no event stream opens.
        `sending` is called before the request leaves (--record writes the message then, as the asyncio client's
        recording does)."""
        import h11

        from .transports.sse import CODINGS, MAX_HEAD, classify_http, head_failure, request_headers

        if self.requested or self.closing:
            raise ConnectFailed("protocol_error", "an SSE connection carries one chat at a time: "
                                                  "use more users, not parallel_chats, for concurrency over SSE")
        self.requested = True
        s = self.settings
        if sending is not None:
            sending()
        deadline = time.monotonic() + s.connect_timeout
        url = urlsplit(s.url)
        scheme = SCHEMES[url.scheme.lower()]
        host = url.hostname or ""
        shown = f"[{host}]" if ":" in host else host
        headers = [("Host", f"{shown}:{url.port}" if url.port else shown), *request_headers(s).items(),
                   ("Content-Length", str(len(data)))]
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        kept = self.keeper.take() if self.keeper is not None else None
        sock: socket.socket | None = None
        while True:
            answered = False  # a byte of the answer came (a request failing after one is never sent again)
            try:
                if kept is not None:
                    sock, http = kept
                    sock.setblocking(False)
                else:
                    sock = _open_socket(host, url.port or scheme.default_port, s.connect_timeout, deadline,
                                        _stream_tls(s) if scheme.secure else None)
                    http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
                out = memoryview(http.send(h11.Request(method="POST", target=target, headers=headers))
                                 + http.send(h11.Data(data=data)) + http.send(h11.EndOfMessage()))
                while out:
                    out = out[_within(sock, deadline, functools.partial(_send_some, sock, out), select.POLLOUT):]
                while True:
                    event = http.next_event()
                    if event is h11.NEED_DATA:
                        got = _within(sock, deadline, functools.partial(sock.recv, 65536))
                        if not got and not answered:
                            # The server closed without a byte of an answer (h11 says only that its state forbids
                            # it): in the words of the asyncio transport's httpx.
                            raise ConnectFailed("protocol_error", NO_RESPONSE)
                        answered = answered or bool(got)
                        http.receive_data(got)
                    elif isinstance(event, h11.Response):
                        break
                    elif isinstance(event, h11.ConnectionClosed):  # as httpx says it (the asyncio transport)
                        raise ConnectFailed("protocol_error", NO_RESPONSE)
                    else:
                        # A 1xx answer: the next one is awaited, within the same deadline (_within checks it before
                        # every read, however fast they come), and the other greenlets get their turn meanwhile: a
                        # server sending `100 Continue` without end, never making a read wait, held the whole Locust
                        # process, its run time's end and its signals included, until it stopped.
                        _yield()
                head = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in event.headers}
                failure = head_failure(event.status_code, head.get("content-type", ""), head.get("location", ""),
                                       s.url, head.get("content-encoding", ""))
                if failure is not None:
                    raise ConnectFailed(*failure, **answer_of(event.status_code, head.get))
            except BaseException as exc:
                if sock is not None:
                    sock.close()
                retry = (kept is not None and not answered and isinstance(exc, Exception)
                         and time.monotonic() < deadline)
                if retry:
                    # A kept connection the server closed while it was idle, found so only by the request (it closed
                    # after the check): sent again once, on a new connection, within the same deadline, as a browser
                    # does. Never once a byte of the answer came.
                    kept = sock = None
                    continue
                self.requested = False
                if isinstance(exc, ConnectFailed):
                    raise ConnectFailed(exc.kind, plain_close_hint(s.url, str(exc)), status=exc.status,
                                        retry_after=exc.retry_after) from None
                if isinstance(exc, Exception):
                    kind, reason = classify_http(exc)
                    raise ConnectFailed(kind, plain_close_hint(s.url, reason)) from None
                raise
            break
        self.coding = CODINGS.get(head.get("content-encoding", "").strip().lower())
        sock.settimeout(None)  # read blocking by the reader: abort()'s shutdown ends it
        self.sock, self.http = sock, http
        # Open: the credential is not kept for the stream's life.
        if s.token is not None or s.extra_headers:
            self.settings = dataclasses.replace(s, token=None, extra_headers={})
        self.ready.set()

    def read(self, deliver: Callable[[list[str | bytes]], None]) -> None:
        """Hand over the data of each read's events until the stream ends (or the client closes it); never raises for
        what a server does: why it ended is left in ended_note, close_reason and protocol_error."""
        import h11

        from .eventstream import EventStreamParser, EventTooLarge
        from .transports.sse import CorruptEncoding, Unpacker

        self.ready.wait()  # no end but the wire's: abort() sets it
        http, sock = self.http, self.sock
        if self.closing or http is None or sock is None:
            self.close_reason = self.close_reason or "closed by the client"
            return
        parser = EventStreamParser(self.settings.max_size)
        unpacker = Unpacker(self.coding) if self.coding else None
        parsed = 0  # bytes parsed since the other greenlets last had a turn (YIELD_BYTES)
        try:
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    try:
                        data = sock.recv(65536)
                    except OSError as exc:
                        if self.closing:
                            break
                        self.ended_note = ("the event stream broke before the run's terminal event "
                                           f"({exc.__class__.__name__})")
                        self.close_reason = f"{exc.__class__.__name__}: {str(exc)[:120]}"
                        return
                    if self.closing:
                        break  # closed or dropped by the client: what a server still streams is read no further
                    http.receive_data(data)
                elif isinstance(event, h11.Data):
                    data = bytes(event.data)
                    # An encoded stream's unpacked pieces, each handed over before the next is made.
                    for piece in (data,) if unpacker is None else unpacker.pieces(data):
                        messages: list[str | bytes] = list(parser.feed(piece))
                        if messages:
                            deliver(messages)
                        parsed += len(piece)
                        if parsed >= YIELD_BYTES:
                            parsed = 0
                            _yield()
                            if self.closing:
                                break  # (the rest of a bomb's read is not unpacked for a closed stream)
                else:  # EndOfMessage, ConnectionClosed: the body ended cleanly
                    if unpacker is not None and not unpacker.complete():
                        raise CorruptEncoding(f"the server's {unpacker.coding}-encoded event stream ended before "
                                              f"its {unpacker.coding} end (cut short)")
                    rest: list[str | bytes] = list(parser.end())  # an event its end left without the empty line
                    if rest:
                        deliver(rest)
                    self.ended_note = "the server ended the event stream before the run's terminal event (truncated run)"
                    if self.keeper is not None and isinstance(event, h11.EndOfMessage):
                        self._keep(http, sock)
                    return
        except (CorruptEncoding, EventTooLarge) as exc:
            # As the asyncio transport: stop reading at once, an R12, nothing the cut left pending dispatched.
            self.protocol_error = str(exc)
            self.ended_note = f"the client dropped the event stream: {exc}"
            self.close_reason = str(exc)
            return
        except h11.ProtocolError as exc:
            if not self.closing:
                # The server broke HTTP's framing (a chunked or Content-Length body cut short, a bad chunk header):
                # an R12 even after the run's terminal event, as under the asyncio transport.
                self.ended_note = f"the event stream broke before the run's terminal event ({exc.__class__.__name__})"
                self.close_reason = f"{exc.__class__.__name__}: {str(exc)[:120]}"
                self.protocol_error = f"the HTTP response carrying the event stream is malformed: {str(exc)[:120]}"
                return
        self.close_reason = self.close_reason or "closed by the client"  # (the client ended it: abort, close)

    def _keep(self, http: Any, sock: socket.socket) -> None:
        """The answer's body ended cleanly: its connection waits for the user's next chat (keep-alive) when HTTP lets
        it carry another (h11 both sides DONE: no `Connection: close`, HTTP/1.1) and nothing came after the body."""
        import h11

        keeper = self.keeper
        if keeper is None or self.closing or self.protocol_error is not None:
            return
        if http.our_state is not h11.DONE or http.their_state is not h11.DONE or http.trailing_data[0]:
            return  # (bytes after the body's end: not an answer to anything; the connection is not trusted again)
        self.sock = None  # no longer this chat's: its end (abort, close) leaves it open
        if self.closing:  # (closed meanwhile, from another thread)
            sock.close()
            return
        http.start_next_cycle()
        keeper.put(sock, http)

    def abort(self) -> None:
        self.closing = True
        self.ready.set()
        sock = self.sock
        if sock is not None:
            _shutdown(sock, socket.SHUT_RDWR)

    def close(self) -> None:
        self.abort()
        sock = self.sock
        if sock is not None:
            sock.close()

    def ended(self, conn: _Connection) -> None:
        conn.close_code = 1000 if conn.close_code is None else conn.close_code
        conn.close_reason = conn.close_reason or self.close_reason
        if self.protocol_error is not None:
            conn.protocol_error = self.protocol_error


class StreamKeeper:
    """A user's idle HTTP/1.1 connection between its SSE chats (keep-alive, as a browser, k6 or Locust's HttpUser
    keeps one): at most one, handed to the next chat's request. It holds the socket and h11's state, no credential
    (each request's headers are made from the chat's settings and not kept)."""

    __slots__ = ("_idle",)

    def __init__(self) -> None:
        self._idle: tuple[socket.socket, Any] | None = None

    def put(self, sock: socket.socket, http: Any) -> None:
        old, self._idle = self._idle, (sock, http)
        if old is not None:
            old[0].close()

    def take(self) -> tuple[socket.socket, Any] | None:
        """The idle connection, unless the server closed it (or sent anything) while it was idle: a socket readable
        now has nothing to say to a request not yet sent but its end; closed then."""
        idle, self._idle = self._idle, None
        if idle is None:
            return None
        sock = idle[0]
        try:
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            stale = bool(poller.poll(0)) or (isinstance(sock, ssl.SSLSocket) and sock.pending() > 0)
        except (OSError, ValueError):
            stale = True
        if stale:
            sock.close()
            return None
        return idle

    def close(self) -> None:
        idle, self._idle = self._idle, None
        if idle is not None:
            idle[0].close()


def _stream_tls(s: ConnectSettings) -> ssl.SSLContext:
    from .transports.base import ssl_context
    from .transports.sse import _no_tls

    return ssl_context(s, "sse") or _no_tls()


def _open_socket(host: str, port: int, timeout: float, deadline: float,
                 tls: ssl.SSLContext | None) -> socket.socket:
    """A TCP connection (TLS over it when `tls`) within `deadline`, left non-blocking for _within()."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        # Every wait of the handshake is a poll against that one deadline, on a non-blocking socket: gevent's
        # SSL socket waits its timeout afresh for each read, so a server that dripped its TLS handshake a byte at
        # a time (each within the timeout) held the connect, and the chat, to the drip's end under Locust.
        sock.setblocking(False)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
            _within(sock, deadline, sock.do_handshake)
    except BaseException:
        sock.close()
        raise
    return sock


def _within(sock: socket.socket, deadline: float, op: Callable[[], Any], wait: int = select.POLLIN) -> Any:
    """`op()` on a non-blocking socket during the handshake, tried again whenever the socket is ready for it (`wait`
    for a plain socket; what OpenSSL asks for a TLS one), until `deadline` (time.monotonic): a TimeoutError then,
    also for a caller whose ops never wait (a server that never stops sending what is not yet the answer)."""
    if time.monotonic() >= deadline:
        raise TimeoutError("timed out while connecting")
    while True:
        try:
            return op()
        except ssl.SSLWantReadError:
            event = select.POLLIN
        except ssl.SSLWantWriteError:
            event = select.POLLOUT
        except (BlockingIOError, InterruptedError):
            event = wait
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out while connecting")
        poller = select.poll()
        poller.register(sock, event)
        poller.poll(math.ceil(left * 1000))


def _yield() -> None:
    """Let the other greenlets run: under Locust time.sleep is gevent's, and a time past 0 waits for the next turn of
    its loop, timers and signals included (YIELD_PAUSE); on plain threads, let the others have the interpreter."""
    time.sleep(YIELD_PAUSE)


def _send_some(sock: socket.socket, data: memoryview) -> int:
    """One send; 0 (gevent's SSL socket when OpenSSL wants to write later) as the socket being full."""
    n = sock.send(data)
    if not n:
        raise BlockingIOError
    return n


def _shutdown(sock: socket.socket, how: int) -> None:
    """Shut the socket down at the TCP level. Not SSLSocket.shutdown, which also drops the TLS session: a reader
    still in it would then take the server's encrypted bytes as WebSocket frames."""
    try:
        socket.socket.shutdown(sock, how)
    except OSError:
        pass


class _Connection:
    """One connection (a WebSocket, or an SSE chat's stream) and how it ended (the fields record_close reads)."""

    def __init__(self, settings: ConnectSettings, ws: _Wire | _StreamWire, generation: int,
                 recording: ConnectionRecording | None = None) -> None:
        self.settings = settings
        self.ws = ws
        self.generation = generation
        # --chatprobe-record: the connection's recording (target.recorder), written at the moments the asyncio
        # client's RecordingTransport writes it (frames both ways, a chat's expectations, failures, who closed it).
        self.recording = recording
        self.close_code: int | None = None
        self.close_reason = ""
        self.protocol_error: str | None = None
        self.reader: threading.Thread | None = None


class SyncSession(VirtualUser):
    """One virtual user: a connection carrying its chats (several at once from several greenlets), surviving drops;
    over SSE, a stream per chat."""

    def __init__(self, target: Target, user_id: str, scenario: str, sink: Sink, *, connect_timeout: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(target, user_id, scenario, sink, connect_timeout=connect_timeout, clock=clock)
        self.conn: _Connection | None = None
        self.generation = 0
        self.closed = True
        self.closed_at = float("-inf")  # when the connection was seen to end (flow.Link.closed_at)
        # One lock guards the checker and trackers (the reader feeds them). Waiting chats wait on `_woken`, taken
        # under the lock; a wake-up sets it and puts a fresh one in its place, so a waiter never misses one that
        # came after it looked (an Event per wake-up is gevent's cheapest wait with a timeout; a Condition
        # allocated a lock per wait and an RLock per entry).
        self._lock = threading.Lock()
        self._woken = threading.Event()
        self._connect_lock = threading.Lock()
        self.ended_note = ""  # why the connection ended, when it knows (an SSE stream; a WebSocket never says)
        self.stream_per_chat = target.transport == "sse"  # else one WebSocket connection carries every chat
        # SSE: the user's connection kept alive between its chats (each chat's stream still its own).
        self._keeper: StreamKeeper | None = StreamKeeper() if self.stream_per_chat else None
        # The failure of the last send that was a connection's (SSE: the chat's request, classified), for its chat.
        self._send_failure: ConnectFailed | None = None
        self._send_note = ""  # why a chat's frame was not sent (SendStalled), for its send_failed verdict
        self.closed_by_client = False  # this client closed or dropped the connection on purpose (until the next)
        # Chats listening out their settle window while the session's next chats play (ChatOptions.overlap_settle),
        # each with where its verdict goes; `_settle_at`: the earliest time one of them may be due.
        self._settling: list[tuple[ChatFlow, Callable[[ChatResult], None]]] = []
        self._settle_at = float("inf")

    # -- connection --
    def connect(self, by: float | None = None, *, resume: bool = False,
                retry: Callable[[ConnectFailed | None], bool] | None = None) -> None:
        """Open (or reopen) the connection and wait for the welcome (at most connect_timeout, and past `by`, a chat's
        deadline, not at all); raises ConnectFailed, classified. `resume`: a reconnect to resume a run (recorded so:
        its failure fails no chat of its own); `retry`, asked when it fails: whether the chat tries again (recorded
        so: Reconnect.will_retry)."""
        settings = self.target.settings_for(self.user_id, self.open_timeout(by))
        recorder = self.target.recorder
        recording = None if recorder is None else recorder.recording(
            self.user_id, resume=resume, retry=retry, user=self.target.tokens.subject(self.user_id))
        ws: _Wire | _StreamWire = _StreamWire(settings, self._keeper) if self.stream_per_chat else _Wire(settings)
        try:
            ws.open()
        except Exception as exc:
            kind, reason = classify(exc)
            reason = plain_close_hint(settings.url, reason)
            # What the server answered (its status, a Retry-After) goes with the failure: the retry decision's.
            failed = ConnectFailed(kind, reason, **handshake_answer(exc))
            if recording is not None:
                recording.open_failed(kind, reason, failed)  # the recording keeps the attempt, and why it failed
            self.sink.connection_attempt(self.scenario, kind)
            raise failed from None
        except BaseException:
            if recording is not None:
                # Stopped from outside (Locust stopping the user): nothing passed, no file; but for a reconnect to
                # resume a run, a close record saying the client left (its chat waiting for it abandoned, as live).
                if resume:
                    recording.open_left()
                else:
                    recording.discard()
            raise
        with self._lock:
            self.generation += 1
            conn = self.conn = _Connection(ws.settings, ws, self.generation, recording)
            self.router.new_connection()
            self.closed = False
            self.closed_by_client = False
        conn.reader = threading.Thread(target=self._read, args=(conn,), name=f"chatprobe-reader-{self.user_id}",
                                       daemon=True)
        conn.reader.start()
        if ws.connects_on_send or not self.profile.welcome:
            # Nothing to wait for: SSE connects when the message is sent; an AG-UI server speaks only when asked.
            if not ws.connects_on_send:
                self.sink.connection_attempt(self.scenario, "ok")
            return
        start = self.clock()
        deadline = start + self.connect_timeout if by is None else min(start + self.connect_timeout, by)
        while True:
            with self._lock:
                in_time = self.router.answered or self.closed
                left = deadline - self.clock()
                if in_time or left <= 0:
                    kind, reason = self.router.welcome_outcome(in_time, self.closed, conn.close_code,
                                                               max(deadline - start, 0.0))
                    break
                woken = self._woken
            woken.wait(left)
        if kind != "ok":
            with self._lock:  # what the server answered (its close code, an AUTH_FAILED): the retry decision's
                failed = ConnectFailed(kind, reason, **self.router.failure_answer(conn.close_code if self.closed
                                                                                  else None))
            if recording is not None:
                recording.connect_failed(kind, reason, failed)  # the recording says the connection failed, and why
            self._drop(conn)
            raise failed

    def _read(self, conn: _Connection) -> None:
        ws = conn.ws
        clock = self.clock

        router = self.router
        recording = conn.recording

        def deliver(messages: list[str | bytes]) -> None:
            at = clock()  # the messages of one read arrived together
            if recording is not None:
                for message in messages:
                    recording.received(message, at)
            replies = []
            with self._lock:
                answered, wake = router.answered, False
                for message in messages:
                    whom, reply = router.on_frame(message, at)
                    if whom is not None:
                        wake = True
                    if reply is not None:
                        replies.append(reply)
                if wake or router.answered is not answered:
                    # A chat to wake (its run is done, or it counts events), everyone, or the welcome came:
                    # waking every chat of the connection on every event would cost a switch per event.
                    self._wake()
            for reply in replies:
                self._send(reply)

        try:
            ws.read(deliver)
        except Exception as exc:  # what the server did never escapes the reader
            conn.close_reason = f"{exc.__class__.__name__}: {str(exc)[:120]}"
        finally:
            ws.ended(conn)
            ended_at = clock()  # the close record's time too: a settle window is judged against it, live as offline
            if recording is not None:
                recording.end(conn.close_code, conn.protocol_error, at=ended_at, stream=ws.connects_on_send)
            with self._lock:
                if conn.protocol_error is not None:
                    self.router.on_protocol_error(conn.protocol_error, clock())
                if conn.generation == self.generation:
                    # 1008, 4401, 4403 before the server said anything, in a close the client did not start
                    self.router.closed_refusing(conn.close_code, ended_at, by_client=self.closed_by_client)
                    self.router.connection_ended()  # what no chat was told on it: its own (R8, R12)
                    self.ended_note = ws.ended_note
                    self.closed_at = ended_at
                    self.closed = True
                self._wake()

    def _wake(self) -> None:
        """Wake every waiting chat (under the lock)."""
        woken, self._woken = self._woken, threading.Event()
        woken.set()

    def _send(self, obj: object, timeout: float = 0.0, expectations: Expectations | None = None,
              since: float = 0.0) -> bool | None:
        """Send a frame; the reader's replies without waiting, a chat's within `timeout` (until its deadline): a
        server that does not read leaves the rest queued, not the sender waiting. True when sent; None when the
        connection was found closed before the frame left (the server closed it between chats), False for any other
        failure. `expectations`: given for a chat's message or probe, which a recording writes with them, and
        `since`, when its times count from (as the asyncio Session._safe_send)."""
        conn = self.conn
        if conn is None:
            return False
        if self.closed:
            return None
        recording = conn.recording
        send = None

        def record() -> None:  # under the connection's lock, once the frame is sure to go (send_text)
            nonlocal send
            assert recording is not None
            send = recording.sent(obj, expectations, since if expectations is not None else None)

        try:
            conn.ws.send_text(_encode(obj), timeout, record if recording is not None else None)
            return True
        except ConnectFailed as exc:  # SSE: the request is the connection, classified like one
            self._send_failure = exc
            if recording is not None:
                recording.send_failed(exc.kind, str(exc), answer=exc)
            return False
        except ConnectionError:
            return None
        except Exception as exc:
            note = str(exc) if isinstance(exc, SendStalled) else f"the frame could not be sent ({type(exc).__name__})"
            if isinstance(exc, SendStalled):
                self._send_note = note  # the chat's send_failed says why
            if recording is not None and expectations is not None:  # the chat fails (send_failed): recorded so,
                # naming its send record (another chat's may have been recorded since)
                recording.send_failed("send_failed", note, send)
            return False

    @property
    def close_code(self) -> int | None:
        """The close code the connection ended with (flow.Link.close_code)."""
        return self.conn.close_code if self.closed and self.conn is not None else None

    @property
    def closed_clean(self) -> bool:
        """The server closed the connection with a closing handshake of CLEAN_CLOSE_CODES (flow.Link.closed_clean)."""
        return (self.closed and not self.closed_by_client and self.conn is not None
                and self.conn.close_code in CLEAN_CLOSE_CODES)

    def _abort(self, conn: _Connection) -> None:
        """Drop the socket without a closing handshake, as a lost network would."""
        conn.ws.abort()

    def _drop(self, conn: _Connection) -> None:
        self._abort(conn)
        self._join(conn, 2.0)

    def _join(self, conn: _Connection, timeout: float) -> None:
        reader = conn.reader
        # Not one that never started: Locust stopping a user (GreenletExit) inside Thread.start() leaves it so, and
        # joining it raised from the user's on_stop (a traceback in Locust's output).
        if reader is not None and reader is not threading.current_thread():
            try:
                reader.join(timeout)
            except RuntimeError:  # "cannot join thread before it is started"
                pass

    def close(self) -> None:
        """Listen out the settle windows still open (judged at once if interrupted: Locust stopping the user), then
        close the connection."""
        try:
            self._listen_out()
        finally:
            self._close()
            if self._keeper is not None:
                self._keeper.close()  # the user's end: its idle connection too

    def _close(self) -> None:
        conn = self.conn
        if conn is None:
            return
        self.closed_by_client = True
        if conn.recording is not None:
            conn.recording.closed_by_client()
        # Shut the socket down first and let the reading threads see the end before the fd is closed: closing
        # an fd that a greenlet still waits on aborts gevent's loop (libev asserts), which a server that floods
        # and never answers the closing handshake would otherwise trigger. The server sees the connection end
        # without a close frame, as when a load generator stops.
        self._abort(conn)
        self._join(conn, 3.0)
        if conn.recording is not None and not (conn.reader is not None and conn.reader.is_alive()):
            # Its reader ended it already, or never started (Locust stopping the user inside Thread.start()): saved.
            conn.recording.end(conn.close_code, conn.protocol_error)
        conn.ws.close()

    def _ensure_connected(self, by: float | None = None) -> None:
        """Connect unless connected; chats starting together share the one connection (its welcome awaited until
        `by` at the latest: ChatFlow.connect_by)."""
        with self._connect_lock:
            if self.closed:
                self.connect(by)

    def _reconnect(self, action: Reconnect) -> tuple[bool, bool, ConnectFailed | None]:
        """One attempt to reconnect a lost connection, however many chats noticed: (connected, whether this call
        tried: False when another chat had reconnected it already, or made the attempt since this one asked, which
        failed: flow.takes_attempt), and why this call's attempt failed."""
        with self._connect_lock:
            takes = takes_attempt(action, self.generation, self.closed)
            if takes is None:
                return True, False, None
            if not takes:
                return False, False, None
            try:
                self.connect(action.by, resume=True, retry=lambda answer: action.will_retry(self.clock(), answer))
                return True, True, None
            except ConnectFailed as exc:
                return False, True, exc

    @staticmethod
    def _wait(woken: threading.Event, timeout: float) -> None:
        """Until a wake-up after `woken` was taken (a frame for the chat, the connection's end), at most `timeout`."""
        if timeout > 0:
            woken.wait(timeout)

    # -- chats --
    def chat(self, content: str, expectations: Expectations, options: ChatOptions = DEFAULTS,
             verdict: Callable[[ChatResult], None] | None = None) -> ChatResult | None:
        """Send one message and follow its run to a verdict, within the chat's deadline; the verdict is returned and,
        when given, handed to `verdict` too.

        With `verdict`, `options.overlap_settle` and a profile whose events name their run, it returns None when the
        run ends: the settle window is listened out while the session's next chats play (or by close()), and the
        final verdict goes to `verdict` then, so a user without think time starts its next chat at once, as under
        `chatprobe run`. Interrupted from outside (GreenletExit when Locust stops the user), the chat is judged as
        abandoned (STOPPED_NOTE) for the sink, and the interruption goes on: nothing goes to `verdict`.
        """
        flow = ChatFlow.chat(self.router, content, expectations, user_id=self.user_id, now=self.clock(),
                             options=options)
        # (Not over SSE: the chat's stream is its own, and ends with its run; the asyncio client's own_stream.)
        overlap = (verdict is not None and options.overlap_settle and self.profile.events_name_run
                   and not self.stream_per_chat)
        result = self._play(flow, verdict if overlap else None)
        if result is not None and verdict is not None:
            verdict(result)
        return result

    def send_invalid(self, raw: str, expectations: Expectations) -> ChatResult:
        """Send a frame the server must answer with an error_message, keeping the connection open (R13)."""
        result = self._play(ChatFlow.invalid_input(self.router, raw, expectations, now=self.clock()))
        assert result is not None
        return result

    def _play(self, flow: ChatFlow, background: Callable[[ChatResult], None] | None = None) -> ChatResult | None:
        """Perform what the chat's flow asks with this connection and the lock's waits, until its verdict (with
        `background`: until its settle window starts; the window is then the session's to listen out).

        The flow reads and changes the trackers the reader thread feeds, so it is only asked under the lock.
        While it plays, it also judges the session's chats whose settle windows have ended.
        """
        lock, clock = self._lock, self.clock
        own_stream = False  # SSE: the chat's request opened a stream of its own
        try:
            while True:
                with lock:
                    woken = self._woken
                    now = clock()
                    action = flow.next(now, self)
                    if isinstance(action, Wait) and background is not None and flow.settling:
                        self._settling.append((flow, background))
                        self._settle_at = min(self._settle_at, action.until)
                        return None
                    due = self._due(now) if self._settling and (now >= self._settle_at or self.closed) else None
                if due:
                    self._deliver(due)
                if isinstance(action, Wait):
                    self._wait(woken, min(action.until, self._settle_at) - clock())
                elif isinstance(action, Send):
                    self._send_failure, self._send_note = None, ""
                    sent = self._send(action.frame, flow.tracker.wait_deadline() - clock(),
                                      flow.tracker.exp if action.what != "resume" else None, flow.tracker.sent_at)
                    failure = self._send_failure
                    if sent and action.what == "message" and self.stream_per_chat:
                        own_stream = True
                        self.sink.connection_attempt(self.scenario, "ok")  # SSE: the request opened its stream
                    if sent is None and not self.closed and self.conn is not None:
                        self._drop(self.conn)  # found closed before its reader saw the end: ended now, for every chat
                    with lock:
                        flow.sent(sent is True, failure.kind if failure else None,
                                  str(failure) if failure else self._send_note, closed=sent is None, answer=failure)
                elif isinstance(action, Connect):
                    try:
                        self._ensure_connected(flow.connect_by)
                    except ConnectFailed as exc:
                        with lock:
                            flow.connect_failed(exc.kind, str(exc))
                    else:
                        with lock:
                            flow.connected()
                elif isinstance(action, Reconnect):
                    reconnected, attempted, failure = self._reconnect(action)
                    with lock:
                        if failure is None:
                            flow.reconnected(reconnected, clock(), attempted=attempted)
                        else:
                            flow.reconnected(reconnected, clock(), attempted=attempted, failure_kind=failure.kind,
                                             failure_message=str(failure), answer=failure)
                elif isinstance(action, Drop):
                    if self.conn is not None and not self.closed:
                        self.closed_by_client = True
                        if self.conn.recording is not None:
                            self.conn.recording.dropped_by_client()  # a drop on purpose, not the server's doing
                        self._drop(self.conn)
                elif isinstance(action, Close):
                    self._close()  # chats still settling are judged now: their connection is gone
                else:
                    if own_stream:
                        self._close()  # SSE: the stream was this chat's; the next chat opens its own
                    return action.result
        except BaseException:
            with lock:
                between_attempts = flow.backing_off
                flow.left(clock())
            recorder = self.target.recorder
            if between_attempts and recorder is not None:
                # Left between two reconnect attempts, no connection open or opening: --record says the client left
                # there, as it does when it closes a connection with the chat open (check: abandoned, as live).
                recorder.recording(self.user_id, resume=True, user=self.target.tokens.subject(self.user_id)).open_left()
            raise

    # -- settle windows listened out in the background --
    def _due(self, now: float) -> list[tuple[ChatFlow, Callable[[ChatResult], None]]]:
        """Judge the settling chats whose windows ended (all of them once the connection is gone); under the lock.
        A window only moves later (a further run on the stream), so `_settle_at` never misses one."""
        due, keep, at = [], [], float("inf")
        for item in self._settling:
            action = item[0].next(now, self)
            if isinstance(action, Wait):
                keep.append(item)
                at = min(at, action.until)
            else:
                due.append(item)
        self._settling, self._settle_at = keep, at
        return due

    @staticmethod
    def _deliver(due: list[tuple[ChatFlow, Callable[[ChatResult], None]]]) -> None:
        for flow, verdict in due:
            assert flow.result is not None
            verdict(flow.result)

    def _listen_out(self) -> None:
        """Wait until every settling chat is judged; stopped from outside, judge the rest at once on what arrived."""
        lock, clock = self._lock, self.clock
        try:
            while True:
                with lock:
                    if not self._settling:
                        return
                    woken = self._woken
                    due = self._due(clock())
                if due:
                    self._deliver(due)
                else:
                    self._wait(woken, self._settle_at - clock())
        except BaseException:
            with lock:
                now = clock()
                due, self._settling, self._settle_at = self._settling, [], float("inf")
                for flow, _ in due:
                    flow.stopped(now)
            self._deliver(due)
            raise


def _encode(obj: object) -> bytes:
    """A frame to send as UTF-8 text: orjson for a dict (what json.dumps gives, compact), json for what it refuses."""
    if isinstance(obj, bytes):
        obj.decode()  # text must be UTF-8: refused (the send fails) as websockets would
        return obj
    if isinstance(obj, str):
        return obj.encode()
    try:
        return orjson.dumps(obj)
    except TypeError:  # integers past 64 bits, keys that are not strings
        return json.dumps(obj).encode()
