"""The lean WebSocket transport (picows, a Cython client): the same handshake, limits and close codes as websocket.py
at a fraction of its CPU per frame; frames reach the callback from picows' protocol callback, with no queue or task.

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
from typing import Any

from picows import WSCloseCode, WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from picows.common import WSHandshakeError

from .base import ConnectFailed, ConnectSettings, FrameCallback, auth_headers, ssl_context

_dumps: Any
try:
    from orjson import dumps as _dumps
except ImportError:  # pragma: no cover - orjson is a dependency
    _dumps = None

# picows logs a server's protocol errors at ERROR level; chatprobe reports them as R12 violations instead.
_LOG = logging.getLogger("picows.chatprobe")
_LOG.setLevel(logging.CRITICAL + 1)
_LOG.propagate = False

# picows' read buffer starts at 16 KiB per connection and grows as frames need: agent events are a few hundred bytes,
# and 15,000 open chats must fit in 10 KiB each (BENCHMARKS.md).
READ_BUFFER = 2048
# Frames kept while nobody reads yet (between open() and run()); past it the socket is read no further.
MAX_EARLY = 1024
PROTOCOL_ERRORS = {1009: "frame larger than the {} byte limit", 1007: "text frame that is not valid UTF-8",
                   1002: "WebSocket protocol error"}


def classify(exc: BaseException) -> tuple[str, str]:
    """A picows connection failure as (result label, one-line reason with no secret in it)."""
    if isinstance(exc, ConnectFailed):
        return exc.kind, str(exc)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout", "timed out while connecting"
    if isinstance(exc, ssl.SSLError):
        return "tls_error", f"TLS: {getattr(exc, 'reason', None) or exc.__class__.__name__}"
    if isinstance(exc, WSHandshakeError):
        response = exc.response
        if response is None:
            return "refused", "the server closed the connection during the handshake"
        status = int(response.status)
        if status in (401, 403):
            return "auth_failed", f"HTTP {status} at the WebSocket handshake"
        if status == 503:
            return "refused", "HTTP 503: the server refused the connection"
        if status == 101:
            return "protocol_error", "WebSocket handshake failed: invalid upgrade response"
        return "protocol_error", f"HTTP {status} at the WebSocket handshake"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", "connection refused"
    if isinstance(exc, (EOFError, ConnectionError)):
        return "refused", "the server closed the connection during the handshake"
    if isinstance(exc, OSError):
        return "refused", f"network error: {exc.strerror or exc.__class__.__name__}"
    if isinstance(exc, WSError):
        return "protocol_error", f"WebSocket handshake failed: {exc.__class__.__name__}"
    if isinstance(exc, ValueError):  # picows' URL parser
        return "protocol_error", "invalid WebSocket URL"
    return "protocol_error", exc.__class__.__name__


class _Listener(WSListener):
    """picows' callbacks, handed to the PicowsTransport that owns them."""

    __slots__ = ("owner",)

    def __init__(self, owner: PicowsTransport) -> None:
        self.owner = owner

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        self.owner._on_ws_frame(transport, frame)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.owner._on_disconnected()


class PicowsTransport:
    """One WebSocket connection on picows: auth by header or subprotocol, wss:// with a CA file, JSON text frames."""

    connects_on_send = False
    ended_note = ""

    def __init__(self, settings: ConnectSettings) -> None:
        self.settings = settings
        self.ws: WSTransport | None = None
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.protocol_error: str | None = None
        self._on_frame: FrameCallback | None = None
        self._early: list[tuple[str | bytes, float]] = []
        self._parts: list[bytes] = []  # a fragmented message so far
        self._parts_size = 0
        self._parts_text = True

    async def open(self) -> None:
        s = self.settings
        headers, subprotocols = auth_headers(s)
        if subprotocols:
            headers["Sec-WebSocket-Protocol"] = ", ".join(subprotocols)
        headers.setdefault("User-Agent", "chatprobe")
        try:
            async with asyncio.timeout(s.connect_timeout):
                self.ws, _ = await ws_connect(
                    lambda: _Listener(self), s.url, ssl_context=ssl_context(s), websocket_handshake_timeout=None,
                    logger_name=_LOG, enable_auto_pong=True, max_frame_size=s.max_size, extra_headers=headers,
                    max_redirects=0, proxy=None, use_aiofastnet=False, read_buffer_init_size=READ_BUFFER)
        except Exception as exc:
            kind, reason = classify(exc)
            raise ConnectFailed(kind, reason) from None
        if self.ws.is_disconnected and self.ws.response is None:
            # picows returns, not raises, when the server hangs up before answering the upgrade.
            raise ConnectFailed("refused", "the server closed the connection during the handshake")

    # -- frames, from picows' protocol callback --
    def _on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if frame.payload_size > self.settings.max_size:
            # picows checks max_frame_size on the frame's header, but not on every path (a frame in the same read
            # as the upgrade response got through in tests): checked again here, before anything is decoded.
            self._fail(transport, 1009)
            return
        if kind is WSMsgType.TEXT and frame.fin and not self._parts:
            try:
                message: str | bytes = frame.get_payload_as_utf8_text()
            except UnicodeDecodeError:
                self._fail(transport, 1007)
                return
        elif kind is WSMsgType.CLOSE:
            self._on_close_frame(transport, frame)
            return
        elif kind is WSMsgType.BINARY and frame.fin and not self._parts:
            message = frame.get_payload_as_bytes()
        elif kind in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            joined = self._join(transport, frame)
            if joined is None:
                return
            message = joined
        else:  # PING is answered by picows; a PONG answers nothing we asked
            return
        at = time.monotonic()
        on_frame = self._on_frame
        if on_frame is not None:
            on_frame(message, at)
        else:
            self._early.append((message, at))
            if len(self._early) >= MAX_EARLY:
                transport.underlying_transport.pause_reading()

    def _join(self, transport: WSTransport, frame: WSFrame) -> str | bytes | None:
        """A fragment of a message: the whole message when this one ends it, else None (kept, or refused)."""
        kind = frame.msg_type
        if (kind is WSMsgType.CONTINUATION) != bool(self._parts):  # a continuation of nothing, or a new message
            self._fail(transport, 1002)  # inside another one
            return None
        if kind is not WSMsgType.CONTINUATION:
            self._parts_text = kind is WSMsgType.TEXT
        size = self._parts_size + frame.payload_size
        if size > self.settings.max_size:
            self._fail(transport, 1009)
            return None
        self._parts.append(frame.get_payload_as_bytes())
        self._parts_size = size
        if not frame.fin:
            return None
        data = b"".join(self._parts)
        self._parts, self._parts_size = [], 0
        if not self._parts_text:
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self._fail(transport, 1007)
            return None

    def _on_close_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        try:
            code = int(frame.get_close_code().value)
        except ValueError:
            code = 1005
        self.close_code = code
        try:
            self.close_reason = self.close_reason or frame.get_close_reason()
        except UnicodeDecodeError:
            self.close_reason = self.close_reason or "(close reason not UTF-8)"
        if not transport.is_close_frame_sent:
            transport.send_close(WSCloseCode.OK if code == 1000 else WSCloseCode(code) if _known(code)
                                 else WSCloseCode.OK)
        transport.disconnect()

    def _fail(self, transport: WSTransport, code: int) -> None:
        """Close for what the server sent (as websockets does): an R12 for the client, the code for the server."""
        if self.protocol_error is None:
            self.protocol_error = PROTOCOL_ERRORS[code].format(self.settings.max_size)
        self._parts, self._parts_size = [], 0
        if not transport.is_close_frame_sent:
            transport.send_close(WSCloseCode(code))
        transport.disconnect()

    def _on_disconnected(self) -> None:
        if self.close_code is None:
            self.close_code = 1006

    # -- the Transport protocol --
    async def send(self, obj: Any) -> None:
        ws = self.ws
        assert ws is not None
        if ws.is_disconnected or ws.is_close_frame_sent:
            raise ConnectionError("the connection is closed")
        if isinstance(obj, str):
            data = obj.encode()
        elif isinstance(obj, bytes):
            data = obj
        else:
            data = _encode(obj)
        ws.send(WSMsgType.TEXT, data)

    async def run(self, on_frame: FrameCallback) -> None:
        """Hand over frames until the connection ends (normally or not); never raises for what a server does."""
        ws = self.ws
        assert ws is not None
        early, self._early = self._early, []
        for message, at in early:
            on_frame(message, at)
        self._on_frame = on_frame
        if len(early) >= MAX_EARLY:
            ws.underlying_transport.resume_reading()
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
        sent = handshake.sent if handshake is not None else None
        if sent is not None and self.protocol_error is None:
            code = getattr(sent.code, "value", sent.code)
            if code in PROTOCOL_ERRORS:
                self.protocol_error = PROTOCOL_ERRORS[code].format(self.settings.max_size)
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


def _known(code: int) -> bool:
    try:
        WSCloseCode(code)
        return True
    except ValueError:
        return False


def _encode(obj: Any) -> bytes:
    if _dumps is not None:
        try:
            return bytes(_dumps(obj))
        except TypeError:  # what orjson refuses (integers past 64 bits, keys that are not strings)
            pass
    return json.dumps(obj).encode()
