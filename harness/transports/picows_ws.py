"""The lean WebSocket transport (picows, a Cython client): the same handshake, limits and close codes as websocket.py
at a fraction of its CPU per frame; frames reach the callback from picows' protocol callback, with no queue or task,
and so does the connection's end (`listen`): nothing waits on a connection while it is open.

picows hands over raw frames: fragments are joined here (bounded by `max_size`, as one websockets message is), text
is checked to be UTF-8 here, and a server's close is answered here; a connection the client closes for what the
server sent records the same R12 detail and close code (1009, 1007, 1002) as the websockets transport.
"""
from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import Any, Protocol

from picows import WSCloseCode, WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from picows.common import WSHandshakeError, WSInvalidHeaderError, WSInvalidMessageError

from ..sinks import refused_upgrade
from .base import (
    CLOSED_IN_HANDSHAKE,
    FRAGMENTS_ERROR,
    MALFORMED_EXTENSIONS,
    MALFORMED_HEADER,
    MALFORMED_UPGRADE,
    MAX_FRAGMENTS,
    MAX_UNSENT_SEND,
    TLS_CUT,
    UNOFFERED_EXTENSION,
    UNOFFERED_SUBPROTOCOL,
    UPGRADE_BODY,
    UPGRADE_BODY_HEADERS,
    ConnectFailed,
    ConnectSettings,
    FrameCallback,
    LeanClientRefused,
    RecordingHooks,
    SendStalled,
    answer_of,
    auth_headers,
    plain_close_hint,
    ssl_context,
    tls_reason,
    with_defaults,
)

_dumps: Any
try:
    from orjson import dumps as _dumps
except ImportError:  # pragma: no cover - orjson is a dependency
    _dumps = None


class _Quiet(logging.LoggerAdapter):
    """picows' logger: it logs a server's protocol errors at ERROR level, which chatprobe reports as R12 violations
    instead. An adapter, not a Logger: picows makes a child Logger per connection of a Logger it is given (~1 KiB
    per open connection)."""

    def isEnabledFor(self, level: int) -> bool:
        return False

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        pass


_LOG = _Quiet(logging.getLogger("picows.chatprobe"))

# picows' read buffer starts at 16 KiB per connection and grows as frames need: agent events are a few hundred bytes,
# and 15,000 open chats must fit in 10 KiB each (BENCHMARKS.md).
READ_BUFFER = 2048
# What a connection's upgrade request and response hold once it is open: nothing (see PicowsTransport.open).
_NO_HEADERS: Any = MappingProxyType({})
# Bytes waiting to be written past which a ping is not answered (see on_ws_frame).
MAX_UNSENT = 64 * 1024
# picows' bound on an upgrade answer's head (WebSocketProtocol._http_max_size: it fails the handshake with its bytes so
# far), and what a 101 past it is opened with the websockets client for (LeanClientRefused).
PICOWS_HEAD = 16 * 1024
HEAD_PAST_PICOWS = f"the server's upgrade answer's head is over picows' {PICOWS_HEAD // 1024} KiB"
# Frames kept while nobody reads yet (between open() and run()); past it the socket is read no further.
MAX_EARLY = 1024
# The most one socket read takes (_CappedReads): picows doubles its read buffer whenever a read fills it, so a server
# sending at line rate had reads of megabytes, every frame of one read handed over in one call (picows cannot pause
# within it): empty text frames, each judged, held every chat of the event loop, deadlines included, for seconds (a 2
# s deadline to 7 s, a close to 20 s). 8 KiB holds at most 4,096 frames (about a tenth of a second of judging the
# cheapest); an agent event's read is a few hundred bytes, and a frame of megabytes comes in reads of this size.
READ_CAP = 8 * 1024
# Bound once: an Enum member looked up on its class costs ~80 ns, several times per frame.
_TEXT, _BINARY, _CONTINUATION, _CLOSE, _PING = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION,
                                                WSMsgType.CLOSE, WSMsgType.PING)
_monotonic = time.monotonic
PROTOCOL_ERRORS = {1009: "frame larger than the {} byte limit", 1007: "text frame that is not valid UTF-8",
                   1002: "WebSocket protocol error"}


# The headers of an upgrade answer picows refuses that the websockets clients name alike (MALFORMED_HEADER).
_HANDSHAKE_HEADERS = frozenset({"Upgrade", "Connection", "Sec-WebSocket-Accept"})


def _unparsed_answer(exc: WSInvalidMessageError) -> tuple[int, Callable[[str], str | None]] | None:
    """The status of an upgrade answer picows could not read for its status line alone, and a reader of its headers,
    or None: picows reads the line as UTF-8 and the status as an HTTPStatus member, so a reason phrase in Latin-1 (`401
    Non autoris\xe9`) or a status Python names not (a CDN's 520-526, nginx's 499) was a "malformed upgrade response",
    where websockets, browsers and the Locust user's client read the status (a 401 refuses the credentials). The head
    is read by h11 (RFC 9112, obs-text in a reason phrase allowed), as the answer to the upgrade request it was; h11
    is loaded only for such an answer (the lean client's start-up does without it)."""
    import h11

    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[
        ("Host", "chatprobe"), ("Connection", "Upgrade"), ("Upgrade", "websocket")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data((exc.raw_header or b"").rstrip(b"\r\n") + b"\r\n\r\n")
    try:
        answer = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(answer, (h11.Response, h11.InformationalResponse)) or answer.http_version != b"1.1" \
            or not 100 <= answer.status_code <= 599:
        return None
    fields: dict[str, str] = {}
    for name, value in answer.headers:  # (h11 gives the names lower-cased)
        fields.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return answer.status_code, lambda name: fields.get(name.lower())


def classify(exc: BaseException) -> tuple[str, str]:
    """A picows connection failure as (result label, one-line reason with no secret in it)."""
    if isinstance(exc, ConnectFailed):
        return exc.kind, str(exc)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout", "timed out while connecting"
    if isinstance(exc, ssl.SSLError):
        return "tls_error", tls_reason(exc)
    if isinstance(exc, WSInvalidMessageError) and exc.response is None:
        if (answer := _unparsed_answer(exc)) is not None and answer[0] != 101:
            return refused_upgrade(answer[0])
        # What picows could not parse as an HTTP/1.1 response (HTTP/1.0, a bad status line, a head past 16 KiB):
        # the server answered, wrongly, as websockets' InvalidMessage says; a server that hangs up is an EOF.
        return "protocol_error", f"WebSocket handshake failed: {MALFORMED_UPGRADE}"
    if isinstance(exc, WSHandshakeError):
        response = exc.response
        if response is None:
            return "refused", CLOSED_IN_HANDSHAKE
        status = int(response.status)
        if status == 101 and isinstance(exc, WSInvalidHeaderError) and exc.name in _HANDSHAKE_HEADERS:
            if (refused := _valid_refused(exc.name, exc.value)) is not None:
                return "protocol_error", f"WebSocket handshake failed: {refused}"
            return "protocol_error", f"WebSocket handshake failed: {MALFORMED_HEADER.format(exc.name)}"
        if status == 101 and isinstance(exc, WSInvalidHeaderError) and exc.name in UPGRADE_BODY_HEADERS:
            return "protocol_error", f"WebSocket handshake failed: {UPGRADE_BODY.format(exc.name)}"
        if status == 101 and isinstance(exc, WSInvalidMessageError):  # a 101 whose head it could not parse (a header
            return "protocol_error", f"WebSocket handshake failed: {MALFORMED_UPGRADE}"  # line folded, 100+ headers)
        if status == 101:
            return "protocol_error", "WebSocket handshake failed: invalid upgrade response"
        return refused_upgrade(status)
    if isinstance(exc, ConnectionRefusedError):
        return "refused", "connection refused"
    if isinstance(exc, (EOFError, ConnectionError)):
        return "refused", CLOSED_IN_HANDSHAKE
    if isinstance(exc, OSError):
        return "refused", f"network error: {exc.strerror or exc.__class__.__name__}"
    if isinstance(exc, WSError):
        return "protocol_error", f"WebSocket handshake failed: {exc.__class__.__name__}"
    if isinstance(exc, ValueError):  # picows' URL parser
        return "protocol_error", "invalid WebSocket URL"
    return "protocol_error", exc.__class__.__name__


def _valid_refused(name: str, value: str | None) -> str | None:
    """What picows refused, when it refused a 101 answer's header that RFC 6455 4.1 allows and the websockets client
    takes (LeanClientRefused): a `Connection` header that lists the `Upgrade` token among others (`keep-alive,
    Upgrade`, which RFC 6455 asks for and browsers find), or an `Upgrade` header whose list holds `websocket` alone
    with empty elements (`websocket,`: RFC 9110's list syntax). picows' compiled check wants the whole value: it
    cannot be told otherwise. None for any other header or value (malformed for every client)."""
    tokens = [t.strip().lower() for t in (value or "").split(",")]
    if name == "Connection" and "upgrade" in tokens:
        return "the server's upgrade answer lists Upgrade among other tokens in its Connection header"
    if name == "Upgrade" and [t for t in tokens if t] == ["websocket"]:
        return "the server's upgrade answer lists websocket with empty elements in its Upgrade header"
    return None


def _ended_before_answer(ws: WSTransport, s: ConnectSettings) -> tuple[str, str]:
    """Why a connection ended before the upgrade's answer. Over TLS, picows drops the TLS error that ended it (a TLS
    1.3 server's alert comes after the client's handshake is done: `certificate_required` from a server that wants a
    client certificate): what the TLS object says when read once more tells a fatal alert (it reads as the end, b"")
    from a plain end (it wants more), as the other clients, which get OpenSSL's error, tell it."""
    tls = ws.underlying_transport.get_extra_info("ssl_object")
    if tls is not None:
        try:
            alert = tls.read(1) == b""
        except (ssl.SSLError, ValueError):
            alert = False
        if alert:
            return "tls_error", (
                "TLS: the server ended the connection with a TLS alert before answering: "
                + ("the server refused the client certificate shown (--client-cert)?" if s.client_cert else
                   "the server requires a client certificate? give one with --client-cert"))
    return "refused", plain_close_hint(s.url, CLOSED_IN_HANDSHAKE)


class FrameListener(Protocol):
    """Whom a listening connection calls (`PicowsTransport.listen`): with each frame and its time, and once with the
    connection's end. One object, not two callbacks: a bound method each would be 128 bytes per open connection."""

    def on_frame(self, message: str | bytes, at: float) -> None: ...

    def on_end(self, transport: Any) -> None: ...


class PicowsTransport(WSListener, RecordingHooks):
    """One WebSocket connection on picows: auth by header or subprotocol, wss:// with a CA file, JSON text frames.
    It is its own picows listener (one object and one call per frame fewer)."""

    connects_on_send = False
    ended_note = ""

    __slots__ = ("settings", "ws", "close_code", "close_reason", "protocol_error", "_on_frame", "_listener", "_early",
                 "_parts", "_parts_size", "_parts_text", "_read_at", "_max_size")

    def __init__(self, settings: ConnectSettings) -> None:
        # Let go once the connection is open (~300 bytes per open connection, and the credential with them).
        self.settings: ConnectSettings | None = settings
        self._max_size = settings.max_size
        self.ws: WSTransport | None = None
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.protocol_error: str | None = None
        self._on_frame: FrameCallback | None = None  # run()'s
        self._listener: FrameListener | None = None  # listen()'s
        self._early: list[tuple[str | bytes, float]] | None = None  # frames before anyone listens (rare)
        self._parts: list[bytes] | None = None  # a fragmented message so far
        self._parts_size = 0
        self._parts_text = True
        # When the bytes of the current socket read came: every frame of one read is stamped with it, so a frame's
        # time does not include handling the frames before it in the same read. 0 between reads.
        self._read_at = 0.0

    async def open(self) -> None:
        s = self.settings
        assert s is not None, "a PicowsTransport opens once"
        headers, subprotocols = auth_headers(s)
        if subprotocols:
            headers["Sec-WebSocket-Protocol"] = ", ".join(subprotocols)
        headers = with_defaults({"User-Agent": "chatprobe"}, headers)
        try:
            async with asyncio.timeout(s.connect_timeout):
                # Pings are answered here, not by picows (enable_auto_pong): a ping it swallowed as the last frame
                # of a read would leave that read's time stamped on the next one's frames.
                # picows' own handshake deadline, from the TCP connection on (so later than this one, which this
                # one's classification keeps): ws_connect cut by this timeout while it waits for the upgrade's
                # answer leaves the connection open, and without it a server that never answers kept every one a
                # user's chats opened (a socket and its buffers per attempt, to the end of the run).
                self.ws, _ = await ws_connect(
                    lambda: self, s.url, ssl_context=ssl_context(s), websocket_handshake_timeout=s.connect_timeout,
                    logger_name=_LOG, enable_auto_pong=False, max_frame_size=s.max_size, extra_headers=headers,
                    max_redirects=0, proxy=None, use_aiofastnet=False, read_buffer_init_size=READ_BUFFER)
        except Exception as exc:
            if (isinstance(exc, WSInvalidHeaderError) and exc.response is not None and int(exc.response.status) == 101
                    and (refused := _valid_refused(exc.name, exc.value)) is not None):
                raise LeanClientRefused(refused) from None  # the caller opens it with the websockets client
            if (isinstance(exc, WSInvalidMessageError) and exc.response is None
                    and (unparsed := _unparsed_answer(exc)) is not None and unparsed[0] == 101):
                # A 101 whose head is past picows' 16 KiB (websockets reads 128 fields of up to 8 KiB), or whose
                # reason phrase is not UTF-8 (obs-text, RFC 9112 4): only picows' reading refuses either.
                raise LeanClientRefused(HEAD_PAST_PICOWS if len(exc.raw_header or b"") >= PICOWS_HEAD else
                                        "the server's upgrade answer has a reason phrase that is not UTF-8 in its "
                                        "status line") from None
            kind, reason = classify(exc)
            if type(exc) is ConnectionResetError and s.url[:4].lower() == "wss:":
                # asyncio's word for a server that hung up during the TLS handshake (OpenSSL's unexpected EOF,
                # which the other clients see): what a server that speaks no TLS does with the ClientHello.
                kind, reason = "tls_error", TLS_CUT
            answer = {}
            if isinstance(exc, WSHandshakeError) and exc.response is not None and int(exc.response.status) != 101:
                answer = answer_of(int(exc.response.status), exc.response.headers.get)
            elif isinstance(exc, WSInvalidMessageError) and (unparsed := _unparsed_answer(exc)) is not None \
                    and unparsed[0] != 101:
                answer = answer_of(*unparsed)
            raise ConnectFailed(kind, plain_close_hint(s.url, reason), **answer) from None
        ws = self.ws
        if ws.is_disconnected and ws.response is None:
            # picows returns, not raises, when the server hangs up before answering the upgrade.
            raise ConnectFailed(*_ended_before_answer(ws, s))
        self.settings = None
        refusal = _unoffered(ws.response.headers if ws.response is not None else None, subprotocols)
        # The upgrade's headers are not read again: ~1 KiB per open connection, and the request's carry the credential.
        # Replaced by one shared empty mapping (a cleared one keeps its table); picows also keeps the dict of extra
        # headers it was given, with the bearer token in it, for the connection's life: emptied too.
        for message in (ws.request, ws.response):
            if message is not None:
                message.headers = _NO_HEADERS
        headers.clear()
        underlying = ws.underlying_transport
        if not underlying.is_closing():
            underlying.set_protocol(_CappedReads(underlying.get_protocol(), underlying, self))
        if refusal is not None:
            # RFC 6455 4.1: the client MUST fail a connection whose server chose a subprotocol or an extension the
            # client did not offer (picows offers no extension and checks neither); websockets refuses both.
            ws.disconnect(graceful=False)
            raise ConnectFailed("protocol_error", f"WebSocket handshake failed: {refusal}")

    # -- frames, from picows' protocol callback --
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.protocol_error is not None or self.close_code is not None:
            # picows goes on calling back for the frames left in the same read after we failed the connection or
            # read its close frame: RFC 6455 7.1.7 says discard them (a server that writes a burst in one write
            # put events behind an oversized frame, and they were counted as if the connection had not failed).
            return
        at = self._read_at
        if not at:  # the first frame of this read
            at = _monotonic()
        self._read_at = 0.0 if frame.last_in_buffer else at
        kind = frame.msg_type
        if frame.payload_size > self._max_size:
            # picows checks max_frame_size on the frame's header, but not on every path (a frame in the same read
            # as the upgrade response got through in tests): checked again here, before anything is decoded.
            self._fail(transport, 1009)
            return
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            # RFC 6455 5.2: no extension was negotiated (picows offers none), so a reserved bit set MUST fail the
            # connection, as websockets does; picows passes them on (deflated bytes were read as text).
            self._fail(transport, 1002)
            return
        if kind is _TEXT and frame.fin and self._parts is None:
            try:
                message: str | bytes = frame.get_payload_as_utf8_text()
            except UnicodeDecodeError:
                self._fail(transport, 1007)
                return
        elif kind is _CLOSE:
            self._on_close_frame(transport, frame)
            return
        elif kind is _BINARY and frame.fin and self._parts is None:
            message = frame.get_payload_as_bytes()
        elif kind is _TEXT or kind is _BINARY or kind is _CONTINUATION:
            joined = self._join(transport, frame)
            if joined is None:
                return
            message = joined
        elif kind is _PING:
            # A server that floods pings and reads nothing would grow the unsent pongs without end: past
            # MAX_UNSENT bytes waiting for the socket, a ping goes unanswered (that server cannot read the pong).
            if (not transport.is_close_frame_sent
                    and transport.underlying_transport.get_write_buffer_size() <= MAX_UNSENT):
                transport.send_pong(frame.get_payload_as_bytes())
            return
        else:  # a PONG answers nothing we asked
            return
        listener = self._listener
        if listener is not None:
            listener.on_frame(message, at)
        elif (on_frame := self._on_frame) is not None:
            on_frame(message, at)
        else:
            if self._early is None:
                self._early = []
            self._early.append((message, at))
            if len(self._early) >= MAX_EARLY:
                transport.underlying_transport.pause_reading()

    def _join(self, transport: WSTransport, frame: WSFrame) -> str | bytes | None:
        """A fragment of a message: the whole message when this one ends it, else None (kept, or refused)."""
        kind = frame.msg_type
        parts = self._parts
        if (kind is WSMsgType.CONTINUATION) != (parts is not None):  # a continuation of nothing, or a new message
            self._fail(transport, 1002)  # inside another one
            return None
        if parts is None:
            self._parts_text = kind is WSMsgType.TEXT
            self._parts = parts = []
        size = self._parts_size + frame.payload_size
        if size > self._max_size:
            self._fail(transport, 1009)
            return None
        if len(parts) >= MAX_FRAGMENTS:  # as websockets' client: tiny (or empty) fragments cost far more than bytes
            self._fail(transport, 1009, FRAGMENTS_ERROR)
            return None
        parts.append(frame.get_payload_as_bytes())
        self._parts_size = size
        if not frame.fin:
            return None
        data = b"".join(parts)
        self._parts, self._parts_size = None, 0
        if not self._parts_text:
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self._fail(transport, 1007)
            return None

    def _on_close_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        handshake = transport.close_handshake
        if handshake is not None and handshake.sent is not None and not handshake.recv_then_sent:
            sent = getattr(handshake.sent.code, "value", handshake.sent.code)
            if sent in PROTOCOL_ERRORS:
                # picows failed the connection itself (its parser refuses a close frame whose code RFC 6455 7.4
                # forbids, 1004, 1005, 1015, 2999, or whose reason is not UTF-8, and answers it with 1002 or 1007)
                # and this is the server's answer: the connection was the client's to fail, as websockets fails it,
                # never the server's clean close (a 1000 echo read so sent a message that crossed it again).
                self.protocol_error = self.protocol_error or PROTOCOL_ERRORS[sent].format(self._max_size)
                transport.disconnect()
                return
        if frame.payload_size == 0:  # picows' NO_INFO: a close frame with no payload (websockets and RFC 6455: 1005)
            code = 1005
        else:
            try:
                code = int(frame.get_close_code().value)
            except ValueError:
                code = 1005
            if code == 0 or code == 1006 or code >= 5000:
                # picows refuses the other codes RFC 6455 7.4 forbids on the wire, not these (0 and 1006 are in its
                # WSCloseCode): websockets fails the connection for them, and so does every client here
                self._fail(transport, 1002)
                return
        self.close_code = code
        try:
            self.close_reason = self.close_reason or frame.get_close_reason() or ""
        except UnicodeDecodeError:
            self.close_reason = self.close_reason or "(close reason not UTF-8)"
        if not transport.is_close_frame_sent:
            # Echoed only when it is a code an endpoint may send (RFC 6455 7.4): picows' NO_INFO went out as code 0.
            sendable = 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code < 5000
            transport.send_close(WSCloseCode(code) if sendable else WSCloseCode.OK)
        transport.disconnect()

    def _fail(self, transport: WSTransport, code: int, detail: str | None = None) -> None:
        """Close for what the server sent (as websockets does): an R12 for the client (`detail`, else the code's),
        the code for the server."""
        if self.protocol_error is None:
            self.protocol_error = detail or PROTOCOL_ERRORS[code].format(self._max_size)
        self._parts, self._parts_size = None, 0
        if not transport.is_close_frame_sent:
            transport.send_close(WSCloseCode(code))
        transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.close_code is None:
            self.close_code = 1006
        listener = self._listener
        if listener is not None:  # listen(): nobody waits on picows' future, so its end is told from here
            self._listener = None
            self._record_close(transport)
            # picows' future may carry the exception it closed on (an oversized frame): read, so asyncio logs nothing.
            asyncio.get_running_loop().create_task(_reap(transport))
            listener.on_end(self)

    # -- the Transport protocol --
    @property
    def closing(self) -> bool:
        """Transport.closing: picows answered the server's close frame (or sent its own), or the socket is gone."""
        ws = self.ws
        return ws is None or ws.is_disconnected or ws.is_close_frame_sent

    def send_now(self, obj: Any) -> None:
        """Send one frame: a write into the socket's buffer, nothing to wait for (raises ConnectionError when the
        connection is closed, SendStalled when the server has left more than MAX_UNSENT_SEND bytes unread)."""
        ws = self.ws
        assert ws is not None
        if self.closing:
            raise ConnectionError("the connection is closed")
        # picows writes into the socket's buffer without waiting: bounded here, or a server that never reads grows it
        # by every frame (one C call a send; a send is per chat, not per frame received).
        if (unsent := ws.underlying_transport.get_write_buffer_size()) > MAX_UNSENT_SEND:
            raise SendStalled(unsent)
        if isinstance(obj, str):
            data = obj.encode()
        elif isinstance(obj, bytes):
            data = obj
        else:
            data = _encode(obj)
        ws.send(_TEXT, data)

    async def send(self, obj: Any) -> None:
        self.send_now(obj)

    def _start(self, on_frame: FrameCallback) -> None:
        """Frames from now on go to `on_frame`, those that came before anyone listened first."""
        ws = self.ws
        assert ws is not None
        early, self._early = self._early, None
        if early:
            for message, at in early:
                on_frame(message, at)
        if self._listener is None:
            self._on_frame = on_frame
        if early and len(early) >= MAX_EARLY:
            ws.underlying_transport.resume_reading()

    def listen(self, listener: FrameListener) -> None:
        """Hand over frames as picows reads them (`listener.on_frame`), and call `listener.on_end(self)` once when the
        connection ends (close_code and protocol_error set by then); no task waits meanwhile. Instead of `run`."""
        ws = self.ws
        assert ws is not None
        self._listener = listener
        self._start(listener.on_frame)
        if ws.is_disconnected and self._listener is not None:  # it ended before anyone listened
            self.on_ws_disconnected(ws)

    def stop_listening(self) -> None:
        """No more callbacks (the client gave up waiting for the end); the socket is dropped."""
        self._listener = self._on_frame = None
        if self.ws is not None and not self.ws.is_disconnected:
            self.ws.disconnect(graceful=False)

    async def run(self, on_frame: FrameCallback) -> None:
        """Hand over frames until the connection ends (normally or not); never raises for what a server does."""
        ws = self.ws
        assert ws is not None
        self._start(on_frame)
        try:
            # picows' own future: it carries the exception picows closed on (an oversized frame), read here.
            await ws.wait_disconnected()
        except asyncio.CancelledError:
            raise
        except Exception:
            pass
        finally:
            self._record_close(ws)

    def _record_close(self, ws: WSTransport) -> None:
        """What the client's own close said about the server (picows closes on an oversized frame by itself)."""
        handshake = ws.close_handshake
        # Our close frame only when we sent it first: the echo of a close the server started (1009 when its own
        # max_size refused the client's message, 1007, 1002) says nothing wrong of the server's frames.
        sent = handshake.sent if handshake is not None and not handshake.recv_then_sent else None
        if sent is not None and self.protocol_error is None:
            code = getattr(sent.code, "value", sent.code)
            if code in PROTOCOL_ERRORS:
                self.protocol_error = PROTOCOL_ERRORS[code].format(self._max_size)
        if self.close_code is None:
            self.close_code = 1006

    async def close(self) -> None:
        ws = self.ws
        if ws is None or ws.is_disconnected:
            return
        try:
            if not ws.is_close_frame_sent:
                ws.send_close(WSCloseCode.OK)
            async with asyncio.timeout(2):
                await ws.wait_disconnected()
        except Exception:
            pass
        finally:
            if not ws.is_disconnected:
                ws.disconnect(graceful=False)

    def abort(self) -> None:
        """Drop the socket without a closing handshake, as a lost network would."""
        if self.ws is not None:
            self.ws.underlying_transport.abort()


class _CappedReads(asyncio.BufferedProtocol):
    """picows' protocol as asyncio's transport sees it, each read at most READ_CAP bytes (asyncio reads once per
    turn of the loop into the buffer given, over TLS too), and a read that filled the cap the last of its turn:
    uvloop (libuv) reads a socket up to 32 times a turn while it has bytes, so capped reads alone still handed over
    32 of them (131,072 empty frames) before the next turn (a loop turn of 0.5 s, a 2 s deadline to 2.9 s). Reading
    is paused for the rest of the turn after such a read (a full read: more is likely waiting), resumed on the next.
    Installed with the transport's public set_protocol; per read, one call of ours each side of picows' own."""

    __slots__ = ("_inner", "_get", "_updated", "_transport", "_owner", "_resume", "_ws")

    def __init__(self, inner: Any, transport: asyncio.BaseTransport, owner: "PicowsTransport") -> None:
        self._inner = inner
        self._get = inner.get_buffer
        self._updated = inner.buffer_updated
        self._transport: Any = transport
        self._owner = owner
        self._resume = asyncio.get_running_loop().call_soon
        self._ws: Any = owner.ws  # (set: installed once the connection is open)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._get(sizehint)[:READ_CAP]

    def buffer_updated(self, nbytes: int) -> None:
        if (handshake := self._ws.close_handshake) is not None and _failed_by_client(handshake):
            # The client failed the connection (a frame picows' parser refused: a close frame with a code RFC 6455
            # forbids or a reason that is not UTF-8 moves its parser past the frame): picows parsed and handed over
            # the frames of the reads that came before its disconnect (10 ms later), judged as the run's events (a
            # chat passed). RFC 6455 7.1.7: nothing more is processed; this read is not given to picows.
            return
        self._updated(nbytes)
        if nbytes == READ_CAP and not (transport := self._transport).is_closing():
            transport.pause_reading()
            self._resume(self._resumed)

    def _resumed(self) -> None:
        early = self._owner._early
        if not self._transport.is_closing() and (early is None or len(early) < MAX_EARLY):  # else run() resumes it
            self._transport.resume_reading()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def _failed_by_client(handshake: Any) -> bool:
    """Whether the client sent its close first, with a code that fails the connection for what the server sent
    (PROTOCOL_ERRORS), not in answer to the server's close."""
    sent = handshake.sent
    return sent is not None and not handshake.recv_then_sent and getattr(sent.code, "value", sent.code) in \
        PROTOCOL_ERRORS


def _unoffered(headers: Any, offered: list[str] | None) -> str | None:
    """What an upgrade response chose that the client did not offer (a subprotocol, any extension), or None. A
    Sec-WebSocket-Protocol header that names no subprotocol (empty: a server echoing the request's header whatever it
    held) chose none the client offered, as websockets and browsers read it; an empty Sec-WebSocket-Extensions header
    is malformed (websockets refuses it too)."""
    if headers is None:
        return None
    # RFC 6455 4.1 asks for one Upgrade (websocket) and one Sec-WebSocket-Accept: picows reads the first of several,
    # where websockets and browsers fail the connection (a proxy that adds its own to the server's). An empty one
    # beside it is one more too: websockets refuses a second Sec-WebSocket-Accept whatever it holds, and an Upgrade
    # header naming no protocol.
    for name in ("Upgrade", "Sec-WebSocket-Accept"):
        given = headers.getall(name, ())
        if len(given) > 1 or len([v for h in given for v in h.split(",") if v.strip()]) > 1:
            return MALFORMED_HEADER.format(name)
    values = headers.getall("Sec-WebSocket-Protocol", ())
    chosen = [p.strip() for h in values for p in h.split(",") if p.strip()]
    if values and (len(chosen) != 1 or chosen[0] not in (offered or ())):
        return UNOFFERED_SUBPROTOCOL
    extensions = headers.getall("Sec-WebSocket-Extensions", ())
    if any(h.strip() for h in extensions):
        return UNOFFERED_EXTENSION
    if extensions:
        return MALFORMED_EXTENSIONS
    return None


async def _reap(ws: WSTransport) -> None:
    try:
        await ws.wait_disconnected()
    except Exception:
        pass


def _encode(obj: Any) -> bytes:
    if _dumps is not None:
        try:
            return bytes(_dumps(obj))
        except TypeError:  # what orjson refuses (integers past 64 bits, keys that are not strings)
            pass
    return json.dumps(obj).encode()
