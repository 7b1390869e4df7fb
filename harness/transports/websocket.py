"""The WebSocket transport (websockets' asyncio client): auth by header or subprotocol, JSON text frames, limits."""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import re
import ssl
import struct
import time
from collections.abc import Generator
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidHeader,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
    NegotiationError,
    ProtocolError,
    SecurityError,
)
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory, PerMessageDeflate
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Response
from websockets.protocol import State

from ..backoff import RETRY_AFTER_STATUSES
from ..profiles import MAX_CLIENT_STRUCTURE
from ..sinks import refused_upgrade
from .base import (
    CLOSED_IN_HANDSHAKE,
    FRAGMENTS_ERROR,
    FRAMES_PER_TURN,
    MALFORMED_HEADER,
    MALFORMED_UPGRADE,
    TLS_CUT,
    TOO_MANY_FRAGMENTS,
    UNOFFERED_EXTENSION,
    UNOFFERED_SUBPROTOCOL,
    UPGRADE_BODY,
    ConnectFailed,
    ConnectSettings,
    FrameCallback,
    RecordingHooks,
    answer_of,
    auth_headers,
    plain_close_hint,
    ssl_context,
    tls_reason,
)

# What the websockets-based clients (the asyncio one, the proxy's upstream connection, the Locust user's) say of an
# upgrade answer past websockets' bounds on a head (WEBSOCKETS_MAX_LINE_LENGTH, WEBSOCKETS_MAX_NUM_HEADERS).
UPGRADE_TOO_LARGE = (f"the server's upgrade answer is too large (a line over {MAX_LINE_LENGTH} bytes or more than "
                     f"{MAX_NUM_HEADERS} header fields)")

# The headers of an upgrade answer whose refusal every client names alike (MALFORMED_HEADER), by lowercase name.
_HANDSHAKE_HEADERS = {name.lower(): name for name in ("Upgrade", "Connection", "Sec-WebSocket-Accept",
                                                      "Sec-WebSocket-Extensions")}


def classify(exc: BaseException) -> tuple[str, str]:
    """A connection exception as (result label, one-line reason with no secret in it)."""
    if isinstance(exc, ConnectFailed):
        return exc.kind, str(exc)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout", "timed out while connecting"
    if isinstance(exc, ssl.SSLError):
        return "tls_error", tls_reason(exc)
    if isinstance(exc, InvalidStatus):
        return refused_upgrade(exc.response.status_code)
    if isinstance(exc, InvalidURI):
        return "protocol_error", "invalid WebSocket URL"
    if isinstance(exc, InvalidMessage) and _bare_lf(exc):
        return "protocol_error", "WebSocket handshake failed: a line of the answer ended with LF alone, not CRLF"
    if isinstance(exc, InvalidMessage) and isinstance(exc.__cause__, (EOFError, ConnectionError)):
        return "refused", CLOSED_IN_HANDSHAKE
    if isinstance(exc, SecurityError) or isinstance(exc, InvalidMessage) and isinstance(exc.__cause__, SecurityError):
        # An answer past websockets' bounds on a head (a status or header line past 8 KiB, more than 128 header
        # fields): too large, not malformed (a status line was StatusLineTooLong, its class name).
        return "protocol_error", f"WebSocket handshake failed: {UPGRADE_TOO_LARGE}"
    if isinstance(exc, InvalidMessage):
        # What websockets could not parse as an HTTP/1.1 answer (a folded header line): the server answered, wrongly,
        # in picows' words for it (the class name said nothing).
        return "protocol_error", f"WebSocket handshake failed: {MALFORMED_UPGRADE}"
    if isinstance(exc, (NegotiationError, InvalidHeader)) and _about_subprotocol(exc):
        return "protocol_error", f"WebSocket handshake failed: {UNOFFERED_SUBPROTOCOL}"
    if isinstance(exc, UpgradeBody):
        return "protocol_error", f"WebSocket handshake failed: {UPGRADE_BODY.format(exc.name)}"
    if isinstance(exc, InvalidHeader) and exc.name.lower() in _HANDSHAKE_HEADERS:
        return "protocol_error", f"WebSocket handshake failed: {MALFORMED_HEADER.format(_HANDSHAKE_HEADERS[exc.name.lower()])}"
    if isinstance(exc, NegotiationError):  # the rest are of extensions: one not offered, or parameters not offered
        return "protocol_error", f"WebSocket handshake failed: {UNOFFERED_EXTENSION}"
    if isinstance(exc, InvalidHandshake):
        return "protocol_error", f"WebSocket handshake failed: {exc.__class__.__name__}"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", "connection refused"
    if isinstance(exc, OSError):
        return "refused", f"network error: {exc.strerror or exc.__class__.__name__}"
    if isinstance(exc, ConnectionClosed):
        return "protocol_error", f"closed during the handshake (code {exc.rcvd.code if exc.rcvd else 'none'})"
    return "protocol_error", exc.__class__.__name__


def handshake_answer(exc: BaseException) -> dict[str, Any]:
    """What a refused upgrade answered (websockets' InvalidStatus: its status, a 429's or 503's Retry-After), as
    ConnectFailed's fields for the reconnect's retry decision; {} for any other failure."""
    if isinstance(exc, InvalidStatus):
        return answer_of(exc.response.status_code, exc.response.headers.get)
    return {}


# websockets' EOFError for a line ended by LF alone: the server answered, wrongly; not the end of the connection it
# reads as (an EOFError too, "connection closed while reading HTTP status line", caused by this one for a status line).
_BARE_LF_REASON = "line without CRLF"


def _bare_lf(exc: BaseException) -> bool:
    """Whether websockets gave up on the server's answer for a line ended by LF alone (anywhere in the causes)."""
    cause = exc.__cause__
    for _ in range(4):  # InvalidMessage <- EOFError(closed while reading ...) <- EOFError(line without CRLF)
        if cause is None:
            return False
        if isinstance(cause, EOFError) and str(cause) == _BARE_LF_REASON:
            return True
        cause = cause.__cause__
    return False


def _about_subprotocol(exc: NegotiationError | InvalidHeader) -> bool:
    """Whether websockets refused the server's Sec-WebSocket-Protocol (one not offered, none offered, several)."""
    if isinstance(exc, InvalidHeader):
        return exc.name.lower() == "sec-websocket-protocol"
    return str(exc).startswith(("unsupported subprotocol", "no subprotocols supported"))


class DeflateOffer(ClientPerMessageDeflateFactory):
    """permessage-deflate as a browser offers and takes it (RFC 7692). A server may limit the client's window to 8 bits
    (`client_max_window_bits=8`: Node's `ws` with `clientMaxWindowBits: 8`), which websockets refuses, failing the
    handshake (zlib cannot compress with an 8-bit window), where Chromium and Node's own client take it and compress
    with zlib's 9-bit window: zlib's back-references then reach at most 2^9 - 262 = 250 bytes back, which a peer
    inflating with a 256-byte window reads (Chromium's WebSocketDeflater says so). Taken here alike, at
    the handshake only: nothing per frame."""

    def process_response_params(self, params: Any, accepted_extensions: Any) -> PerMessageDeflate:
        params = [(name, "9" if name == "client_max_window_bits" and value == "8" else value)
                  for name, value in params]
        return super().process_response_params(params, accepted_extensions)


def deflate_offer(settings: ConnectSettings) -> list[DeflateOffer] | None:
    """The extensions a websockets client offers: permessage-deflate when compression is on (memLevel 5, websockets'
    own default for `compression="deflate"`), else none."""
    return [DeflateOffer(compress_settings={"memLevel": 5})] if settings.compression == "deflate" else None


def handshake_options(settings: ConnectSettings) -> dict[str, Any]:
    """Keyword arguments of a websockets `connect` (asyncio or sync): auth, TLS, limits; the one handshake."""
    headers, subprotocols = auth_headers(settings)
    return {
        "additional_headers": headers or None,
        "subprotocols": subprotocols,
        "ssl": ssl_context(settings),
        "ping_interval": None,
        "close_timeout": 2,
        "max_size": settings.max_size,
        # Frames buffered before the socket is read no further: a bound in bytes too (16 x max_size = 64 MiB at the
        # default), where 1,024 frames of 4 MiB let a fast server push the client past 4 GiB.
        "max_queue": 16,
        "compression": None,
        "extensions": deflate_offer(settings),
        "proxy": None,
        "user_agent_header": "chatprobe",
    }


# The reason of the proxy's close (1009) for a client's message of more than MAX_CLIENT_STRUCTURE JSON structural
# characters (profiles.too_dense), and what its log line and the upstream's close say of it.
TOO_DENSE = "message too dense"
DENSE_ERROR = f"message of more than {MAX_CLIENT_STRUCTURE} JSON structural characters"


def close_detail(sent: Any, max_size: int) -> str | None:
    """The R12 detail of a close frame this end sent for what its peer sent (None for any other code): a frame over
    `max_size` or a message in too many fragments (1009; the proxy's, a client's message too dense to parse), text
    that is not UTF-8 (1007), bad framing (1002: a reserved bit or opcode, a masked server frame, a control frame over
    125 bytes or fragmented, a close code or reason that is none), the words every driver gives."""
    if sent is None or sent.code not in (1002, 1007, 1009):
        return None
    if sent.code == 1009:
        if sent.reason == TOO_DENSE:
            return DENSE_ERROR
        return FRAGMENTS_ERROR if sent.reason == TOO_MANY_FRAGMENTS else f"frame larger than the {max_size} byte limit"
    return "text frame that is not valid UTF-8" if sent.code == 1007 else "WebSocket protocol error"


def failed_for(protocol: Any, max_size: int) -> str | None:
    """What a peer sent that made this end of a websockets connection fail it (RFC 6455 7.1.7), close_detail's words;
    None when it did not: a close the peer started is echoed, whatever its code, and the echo is no failure of ours
    (the proxy passes the upstream's close on to its client as it came)."""
    sent = getattr(protocol, "close_sent", None)
    return None if sent is getattr(protocol, "close_rcvd", None) else close_detail(sent, max_size)


def record_close(transport: Any, protocol: Any) -> None:
    """Set a transport's close_code, close_reason and protocol_error from a websockets protocol that ended. A close
    the server started, whatever its code (1009 when the server's own max_size refused the client's message, 1007,
    1002), is the server's close, echoed: no R12, as picows reads it and as the proxy passes it on."""
    failure = failed_for(protocol, transport.settings.max_size)
    if failure is not None:
        transport.protocol_error = failure
    rcvd = protocol.close_rcvd
    if rcvd is not None:
        transport.close_code = rcvd.code
        transport.close_reason = transport.close_reason or rcvd.reason
    elif transport.close_code is None:
        transport.close_code = 1006


# The status line of an answer to the upgrade that refuses it: any status but 101, HTTP/1.1 as websockets requires.
_REFUSAL = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9])(?: ([^\r\n]*))?\r?\n")
# A refusal's Retry-After header (429, 503), its value at most 64 characters (longer is no value parse_retry_after
# reads), in a head of at most _REFUSAL_HEAD bytes.
_RETRY_AFTER = re.compile(rb"\nretry-after:[ \t]*([^\r\n]{0,64})[ \t]*\r?\n", re.IGNORECASE)
_REFUSAL_HEAD = 16 * 1024


def status_first(protocol: ClientProtocol) -> None:
    """Make a websockets client protocol (the asyncio client's, the proxy's upstream, the Locust user's) judge an
    answer to its upgrade by its status line: one that is not 101 fails the handshake there and then (InvalidStatus,
    what classify() reads), its headers and body never waited for. websockets reads a refusal's body before it says
    anything: a 401 or 403 whose body had no length and a connection the server kept open (or a Content-Length it
    never sent in full) was a `timeout` at connect_timeout, and one over 1 MiB or with a transfer coding other than
    chunked a `protocol_error`, where picows says `auth_failed` at once. A 101 is left to websockets, from its first
    byte. Called on a protocol that has read nothing yet."""
    protocol.parser = _status_first(protocol)
    next(protocol.parser)
    # A 101 that announces a body is refused, as picows refuses it (UPGRADE_BODY); websockets took it.
    protocol.process_response = functools.partial(_no_body, protocol)  # type: ignore[method-assign]


class UpgradeBody(InvalidHeader):
    """A 101 answer with a Content-Length other than 0 or a Transfer-Encoding (UPGRADE_BODY)."""


def _no_body(protocol: ClientProtocol, response: Response) -> None:
    """ClientProtocol.process_response, a 101 that announces a body refused first, as picows refuses it (its value
    never shown: a server may echo the token there)."""
    headers = response.headers
    if "Transfer-Encoding" in headers:
        raise UpgradeBody("Transfer-Encoding")
    if any(v.strip().lstrip("0") or not v.strip() for v in headers.get_all("Content-Length")):  # (0 is no body)
        raise UpgradeBody("Content-Length")
    ClientProtocol.process_response(protocol, response)


def _status_first(protocol: ClientProtocol) -> Generator[None]:
    reader = protocol.reader
    while reader.buffer.find(b"\n", 0, MAX_LINE_LENGTH) < 0 and not reader.eof \
            and len(reader.buffer) < MAX_LINE_LENGTH:
        yield
    refusal = _REFUSAL.match(reader.buffer, 0, MAX_LINE_LENGTH)  # a longer status line is websockets' to refuse
    if refusal is None or refusal[1] == b"101":
        yield from ClientProtocol.parse(protocol)  # websockets' own parser, nothing of the answer read yet
        return
    status, headers = int(refusal[1]), Headers()
    if status in RETRY_AFTER_STATUSES:
        # Its Retry-After is read (the next reconnect attempt waits that long): the head awaited to its end, within
        # 16 KiB (picows' bound on a head), never its body.
        while ((end := reader.buffer.find(b"\r\n\r\n", 0, _REFUSAL_HEAD)) < 0 and not reader.eof
               and len(reader.buffer) < _REFUSAL_HEAD):
            yield
        after = _RETRY_AFTER.search(reader.buffer, 0, end if end >= 0 else _REFUSAL_HEAD)
        if after is not None:
            headers["Retry-After"] = after[1].decode("iso-8859-1")
    # What websockets does with a response it refuses (ClientProtocol.parse), with no body.
    response = Response(status, (refusal[2] or b"").decode("iso-8859-1"), headers)
    protocol.handshake_exc = InvalidStatus(response)
    protocol.events.append(response)
    protocol.send_eof()
    protocol.parser = protocol.discard()
    next(protocol.parser)
    yield


def minimal_lengths(protocol: ClientProtocol) -> None:
    """Make a websockets client protocol (the asyncio client's, the proxy's upstream, the Locust user's) fail the
    connection (1002, an R12: *WebSocket protocol error*) on a frame whose payload length is not encoded in the minimal
    number of bytes: RFC 6455 5.2 says it MUST be (a length under 126 in the 7-bit field, under 65,536 in the 16-bit
    one), and picows refuses such a frame, a ping too, where websockets read it and answered the ping: one server,
    two verdicts. websockets' frame parser reads through `protocol.reader.read_exact`, which is wrapped here; the
    frames' own parsing stays websockets'. Called on a protocol that has read nothing yet."""
    protocol.reader.read_exact = _MinimalLengths(protocol)  # type: ignore[method-assign]


class _MinimalLengths:
    """`read_exact` for a client protocol, checking each server frame's extended length as websockets' Frame.parse
    reads it: its head (2 bytes), then the 16- or 64-bit length when the head says so, then its payload (a server's
    frame is never masked: websockets refuses a masked one before reading on)."""

    __slots__ = ("protocol", "read", "next")

    def __init__(self, protocol: ClientProtocol) -> None:
        self.protocol = protocol
        self.read = protocol.reader.read_exact
        self.next = 0  # what the next read of a frame is: 0 its head, 2 or 8 its extended length, 1 its payload

    def __call__(self, n: int) -> Generator[None, None, bytearray]:
        data = yield from self.read(n)
        if self.protocol.state is State.CONNECTING:  # the answer to the upgrade, not a frame
            return data
        step = self.next
        if step == 0:
            code = data[1] & 0x7F
            self.next = 2 if code == 126 else 8 if code == 127 else 1
        elif step == 1:
            self.next = 0
        else:
            (length,) = struct.unpack("!H" if step == 2 else "!Q", data)
            if length < (126 if step == 2 else 65536):
                raise ProtocolError(f"payload length {length} not encoded in the minimal number of bytes")
            self.next = 1
        return data


class BoundedPongs:
    """websockets answers every ping at once and writes without bound: a peer that floods pings and reads nothing
    would grow the unsent pongs without end (~100 MB a second on loopback). While asyncio holds writing paused (the
    write buffer over websockets' write_limit), the socket is read no further; reading resumes once it drains,
    unless websockets' own max_queue still holds it paused. Mixed into a websockets connection class (client side
    here, server side in the proxy)."""

    paused: bool
    transport: asyncio.Transport
    recv_messages: Any

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self.paused:  # writing paused: this read's pongs did not fit either
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        if not self.recv_messages.paused:
            self.transport.resume_reading()


def _awaits_answer(protocol: Any) -> bool:
    """This end started a closing handshake of its own (not a failure: RFC 6455 7.1.7 reads nothing after one) and the
    server's close frame has not come: what the server sent before its answer is still to be read, then the answer
    (the close waiting on it ends the connection at close_timeout). Ended at the first frame read after the close, the
    socket was closed with the answer unread: a reset where the server had a clean close due."""
    return (protocol.state is State.CLOSING and protocol.close_rcvd is None and protocol.parser_exc is None
            and close_detail(protocol.close_sent, 0) is None)


class BoundedClientConnection(BoundedPongs, ClientConnection):
    """websockets' asyncio connection notes when the TCP connection is over (`close_expected()`: the server's answer
    failed the handshake, the client failed the connection for what the server sent, or a close frame went out in
    answer to the server's) but ends it only while a send or close of ours waits: a server that sent a frame over
    max_size (a deflated one that inflates past it too), or its close frame, and then kept the socket open held the
    reader, and the chat with it, until the chat's deadline (an R10 instead of the R12 or the lost connection). Here
    the connection ends there and then, as picows and the Locust user's client end it: a failed handshake at once
    (nothing of HTTP is left to wait for), anything else once what is written has gone (FIN), and at close_timeout
    at the latest (a server that reads nothing). A close of this end's own awaits the server's answer, the frames the
    server sent before it read first (_awaits_answer)."""

    _close_timer: asyncio.TimerHandle | None = None

    def __init__(self, protocol: ClientProtocol, *args: Any, **kwargs: Any) -> None:
        super().__init__(protocol, *args, **kwargs)
        status_first(protocol)  # a refusal of the upgrade is judged by its status line (status_first)
        minimal_lengths(protocol)  # a frame's length in more bytes than it needs fails it, as picows does

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._close_timer is not None or not self.protocol.close_expected() or _awaits_answer(self.protocol):
            return
        if self.protocol.state is State.CONNECTING:
            self.transport.abort()
            return
        deadline = self.close_deadline if self.close_deadline is not None else self.loop.time() + 2
        self._close_timer = self.loop.call_at(deadline, self.transport.abort)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        handshaking = self.protocol.state is State.CONNECTING
        super().connection_lost(exc)
        if handshaking and isinstance(exc, ssl.SSLError):
            # A TLS alert read before the upgrade's answer (TLS 1.3: a server's certificate_required comes after the
            # client's handshake is done): the handshake's failure is it, not the end of the stream websockets says
            # (`the server closed the connection during the handshake`, where the other clients say what TLS said).
            self.protocol.handshake_exc = exc


class NoRedirects(connect):
    """websockets follows a 3xx answer to the handshake (to another host too, where a token sent as a subprotocol
    went with it); picows, the SSE transport and the Locust user's client follow none, nor does this one: a
    redirect is the server's answer, an `HTTP 302 at the WebSocket handshake` protocol_error. The proxy's upstream
    connection is one too (monitors/proxy.py)."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


class WebSocketTransport(RecordingHooks):
    """One WebSocket connection: auth by header or subprotocol, wss:// with a CA file, JSON text frames."""

    # The connection is made by open(); SSE's is made by send() (see harness/sse.py).
    connects_on_send = False
    # Why the connection ended, when a transport knows better than "connection lost" (SSE does).
    ended_note = ""

    def __init__(self, settings: ConnectSettings) -> None:
        self.settings = settings
        self.ws: ClientConnection | None = None
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.protocol_error: str | None = None
        self.dropped = False  # closed or aborted by the client: what is still queued is handed over no more

    async def open(self) -> None:
        s = self.settings
        try:
            async with asyncio.timeout(s.connect_timeout):
                self.ws = await NoRedirects(s.url, open_timeout=None, create_connection=BoundedClientConnection,
                                             **handshake_options(s))
        except Exception as exc:
            kind, reason = classify(exc)
            if type(exc) is ConnectionResetError and s.url[:4].lower() == "wss:":
                kind, reason = "tls_error", TLS_CUT  # (the server hung up during the TLS handshake: picows_ws.py)
            raise ConnectFailed(kind, plain_close_hint(s.url, reason), **handshake_answer(exc)) from None
        # Open: the credential is not kept for the connection's life (the upgrade request, headers and all, is not
        # read again; the settings keep what the connection's end is told by, max_size).
        self.ws.request = None
        self.ws.protocol.available_subprotocols = None  # only the handshake reads them (one carries the token)
        if s.token is not None or s.extra_headers:  # --header values are secrets too
            self.settings = dataclasses.replace(s, token=None, extra_headers={})

    @property
    def closing(self) -> bool:
        """Transport.closing: the connection is past OPEN (the server's close frame came, or it ended)."""
        return self.ws is None or self.ws.state is not State.OPEN

    async def send(self, obj: Any) -> None:
        """Send one frame; raises ConnectionError when the connection was closed before it could leave (a frame that
        was written and lost while draining raises ConnectionClosed: it may have reached the server, never sent again)."""
        ws = self.ws
        assert ws is not None
        if self.closing:
            raise ConnectionError(f"the connection is closed ({ws.state.name.lower()})")
        await ws.send(obj if isinstance(obj, (str, bytes)) else json.dumps(obj))

    async def run(self, on_frame: FrameCallback) -> None:
        """Read frames until the connection ends (normally or not); never raises for what a server does."""
        ws = self.ws
        assert ws is not None
        clock = time.monotonic
        loop = asyncio.get_running_loop()
        read_at = 0.0

        def read_over() -> None:
            nonlocal read_at
            read_at = 0.0

        handed = 0
        try:
            async for message in ws:
                # The messages handed over before the event loop's next turn (websockets gives the ones it has read
                # without a yield) came together: one time for all, as picows stamps the frames of one read. No chat
                # woken by one of them has its turn before the last is routed, and the recording's equal times say
                # so to `chatprobe check` (offline.OfflineCheck._judge_ready).
                if not read_at:
                    read_at = clock()
                    loop.call_soon(read_over)
                    handed = 0
                elif handed >= FRAMES_PER_TURN:
                    # A read of thousands of tiny frames: the loop's other chats, and this one's deadline, get a turn
                    # (base.FRAMES_PER_TURN); what follows is stamped anew, as a read of its own. Once the client
                    # has closed or dropped the connection meanwhile, the rest (a read of 256 KiB queues 131,072
                    # empty frames) is not judged: its chats are over.
                    await asyncio.sleep(0)
                    if self.dropped:
                        break
                    read_at = clock()
                    loop.call_soon(read_over)
                    handed = 0
                handed += 1
                on_frame(message, read_at)
        except ConnectionClosed:
            pass
        except Exception as exc:  # a protocol error from the server's side (e.g. an oversized frame)
            self.close_reason = f"{exc.__class__.__name__}: {str(exc)[:120]}"
        finally:
            record_close(self, ws.protocol)

    async def close(self) -> None:
        """The closing handshake, within close_timeout (2 s) for the peer's answer and 3 s in all; past them the socket
        is dropped, as picows drops it. websockets' close waits to write its close frame without end: to a peer that
        reads nothing (the write buffer full) the wait was cut at 3 s and the socket left open, its megabytes
        queued, for the process's life (a monitor probing such a server kept one per probe)."""
        self.dropped = True
        ws = self.ws
        if ws is not None:
            try:
                async with asyncio.timeout(3):
                    await ws.close()
            except Exception:
                pass
            finally:
                if ws.state is not State.CLOSED:
                    ws.transport.abort()

    def abort(self) -> None:
        """Drop the socket without a closing handshake, as a lost network would."""
        self.dropped = True
        if self.ws is not None:
            self.ws.transport.abort()
