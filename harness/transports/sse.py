"""The SSE transport: each chat is an HTTP POST whose `text/event-stream` answer carries the run's events.

It has the WebSocket transport's shape (open, send, run, close, abort) so the client stays one: `send` makes the
request and reads the response head within the connect deadline (failures classified with the same labels),
`run` hands the data of each server-sent event with its monotonic receipt time to the same callback, and returns
when the server ends the stream. The SSE wire format is parsed here, per the specification, from the response's
bytes as they come: no line and no event may grow past `ConnectSettings.max_size` (the WebSocket frame limit), so a
server that sends one giant event, or a line with no end, costs the client that much memory and no more; the
stream is then dropped and the chat gets an R12, as for an oversized WebSocket frame.
"""
from __future__ import annotations

import asyncio
import functools
import json
import ssl
import time
from typing import Any

import httpx

from ..eventstream import EventStreamParser, EventTooLarge
from .base import ConnectFailed, ConnectSettings, FrameCallback, RecordingHooks, ssl_context, with_defaults

EVENT_STREAM = "text/event-stream"


def classify_http(exc: BaseException) -> tuple[str, str]:
    """An httpx failure as (result label, one-line reason with no secret in it)."""
    if isinstance(exc, ConnectFailed):
        return exc.kind, str(exc)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, httpx.TimeoutException)):
        return "timeout", "timed out while connecting"
    cause: BaseException | None = exc
    while cause is not None:  # httpx wraps the socket's own error
        if isinstance(cause, ssl.SSLError):
            return "tls_error", f"TLS: {getattr(cause, 'reason', None) or cause.__class__.__name__}"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.ConnectError):
        return "refused", "connection refused" if "refused" in str(exc).lower() else f"network error: {str(exc)[:80]}"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return "protocol_error", "invalid SSE URL"
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ProtocolError)):
        return "protocol_error", f"HTTP protocol error: {str(exc)[:80]}"
    if isinstance(exc, (ConnectionRefusedError,)):
        return "refused", "connection refused"
    if isinstance(exc, (OSError, httpx.NetworkError)):
        return "refused", f"network error: {exc.__class__.__name__}"
    return "protocol_error", exc.__class__.__name__


def classify_status(status: int, content_type: str) -> tuple[str, str] | None:
    """The response head as a failure (label, reason), or None when it opens an event stream."""
    if status in (401, 403):
        return "auth_failed", f"HTTP {status} from the SSE endpoint"
    if status == 503:
        return "refused", "HTTP 503: the server refused the request"
    if not 200 <= status < 300:
        return "protocol_error", f"HTTP {status} from the SSE endpoint"
    if content_type.partition(";")[0].strip().lower() != EVENT_STREAM:
        return "protocol_error", f"content type {content_type or '(none)'!r}, not {EVENT_STREAM}"
    return None


@functools.cache
def _no_tls() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname, no CA loaded


class SSETransport(RecordingHooks):
    """HTTP POST of the chat request, then the Server-Sent Events of one run; one stream at a time."""

    # The server is reached when the first message is sent, not at open(): the Session counts the connection then.
    connects_on_send = True

    def __init__(self, settings: ConnectSettings) -> None:
        self.settings = settings
        self.client: httpx.AsyncClient | None = None
        self.response: httpx.Response | None = None
        self.close_code: int | None = None
        self.close_reason: str = ""
        # Why the stream ended, for a chat that was still waiting for its terminal event.
        self.ended_note: str = ""
        # Set when the client itself had to drop the stream for what the server sent (counted as R12 by the client).
        self.protocol_error: str | None = None
        self._stream_ready = asyncio.Event()
        self._closing = False
        self._requested = False
        self._pump: asyncio.Task | None = None

    # Transport.closing: never; each send opens a stream of its own (a second one while one is open is refused).
    closing = False

    async def open(self) -> None:
        s = self.settings
        self.client = httpx.AsyncClient(
            # https: the shared context (base.ssl_context); http: no TLS is ever spoken on this client (redirects
            # are not followed): httpx's default loaded a CA bundle per client (≈29 ms) and even a bare context is
            # ≈1 ms to make, so one is shared, verifying and with no CA (were it ever used, it would trust nobody).
            verify=ssl_context(s, "sse") or _no_tls(),
            timeout=httpx.Timeout(s.connect_timeout, read=None),  # reads are bounded by the chat's deadline
            follow_redirects=False,
            trust_env=False,  # like the WebSocket transport: no proxy from the environment
        )

    async def send(self, obj: Any) -> None:
        """POST the request and read the response head; raises ConnectFailed, classified, when no stream opens."""
        if self._requested or self._closing:
            raise ConnectFailed("protocol_error", "an SSE connection carries one chat at a time: "
                                                  "use more users, not parallel_chats, for concurrency over SSE")
        assert self.client is not None
        self._requested = True
        s = self.settings
        headers = with_defaults({
            "Accept": EVENT_STREAM,
            # httpx offers gzip, deflate, br and zstd by default and would unpack whatever came, unbounded: 3 kB of
            # brotli were 2 GiB of stream. The stream is read as it comes (aiter_raw); an encoded one is refused.
            "Accept-Encoding": "identity",
            "Cache-Control": "no-store",
            "Content-Type": "application/json",
            "User-Agent": "chatprobe",
        }, s.extra_headers)
        if s.token and s.auth != "none":
            headers["Authorization"] = f"Bearer {s.token}"
        body = obj if isinstance(obj, (str, bytes)) else json.dumps(obj)
        request = self.client.build_request("POST", s.url, content=body, headers=headers)
        response: httpx.Response | None = None
        try:
            async with asyncio.timeout(s.connect_timeout):
                response = await self.client.send(request, stream=True)
        except Exception as exc:
            raise ConnectFailed(*classify_http(exc)) from None
        finally:
            if response is None:  # no stream came of it (also when cancelled): the next chat may try again
                self._requested = False
        failure = classify_status(response.status_code, response.headers.get("content-type", ""))
        # Shown as sent, never case-folded: redaction finds an echoed token only in the case it was given.
        encoding = response.headers.get("content-encoding", "").strip()
        if failure is None and encoding.lower() not in ("", "identity"):
            failure = ("protocol_error", f"the server encoded the event stream (Content-Encoding {encoding[:40]!r}) "
                                         "though the client asked for identity")
        if failure is not None:
            self._requested = False
            await response.aclose()
            raise ConnectFailed(*failure)
        self.response = response
        self._stream_ready.set()

    async def run(self, on_frame: FrameCallback) -> None:
        """Hand over each event's data until the stream ends (or close/abort); never raises for what a server does."""
        await self._stream_ready.wait()
        if self.response is None:
            return
        self._pump = asyncio.ensure_future(self._read_events(self.response, on_frame))
        try:
            await asyncio.wait({self._pump})
        finally:
            if self._pump.cancelled():
                self.close_reason = self.close_reason or "closed by the client"
            self.close_code = self.close_code if self.close_code is not None else 1000
            if self.client is not None:  # one stream per transport: its end is the connection's
                try:
                    async with asyncio.timeout(3):
                        await self.client.aclose()
                except Exception:
                    pass

    async def _read_events(self, response: httpx.Response, on_frame: FrameCallback) -> None:
        clock = time.monotonic
        parser = EventStreamParser(self.settings.max_size)
        try:
            async for chunk in response.aiter_raw():  # as sent: never unpacked (send() refused an encoded one)
                for data in parser.feed(chunk):
                    on_frame(data, clock())
            for data in parser.end():  # the body ended cleanly: an event its end left without the empty line
                on_frame(data, clock())
            self.ended_note = "the server ended the event stream before the run's terminal event (truncated run)"
        except EventTooLarge as exc:
            # Stop reading at once, as the WebSocket transport closes with 1009: the client counts it as an R12.
            self.protocol_error = str(exc)
            self.ended_note = f"the client dropped the event stream: {exc}"
            self.close_reason = str(exc)
        except (httpx.HTTPError, OSError) as exc:
            self.ended_note = f"the event stream broke before the run's terminal event ({exc.__class__.__name__})"
            self.close_reason = f"{exc.__class__.__name__}: {str(exc)[:120]}"
            if isinstance(exc, httpx.RemoteProtocolError):
                # The server broke HTTP's framing (a chunked body or a Content-Length body cut short, a bad chunk
                # header): an R12 even after the run's terminal event, as a fetch()-based client (AG-UI's
                # HttpAgent) fails the run with a network error there. A reset connection is a lost one, not this.
                self.protocol_error = f"the HTTP response carrying the event stream is malformed: {str(exc)[:120]}"
        finally:
            try:
                async with asyncio.timeout(2):
                    await response.aclose()
            except BaseException:
                pass

    async def close(self) -> None:
        self._closing = True
        self._stream_ready.set()
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
            await asyncio.wait({self._pump}, timeout=3)
        if self.client is not None:
            try:
                async with asyncio.timeout(3):
                    await self.client.aclose()
            except Exception:
                pass

    def abort(self) -> None:
        """Drop the stream at once, as a lost network would."""
        self._closing = True
        self._stream_ready.set()
        if self._pump is not None:
            self._pump.cancel()
