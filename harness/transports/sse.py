"""The SSE transport: each chat is an HTTP POST whose `text/event-stream` answer carries the run's events.

It has the WebSocket transport's shape (open, send, run, close, abort) so the client stays one: `send` makes the
request and reads the response head within the connect deadline (failures classified with the same labels),
`run` hands the data of each server-sent event with its monotonic receipt time (one time for the events of one
socket read) to the same callback, and returns
when the server ends the stream. The SSE wire format is parsed here, per the specification, from the response's
bytes as they come: no line and no event may grow past `ConnectSettings.max_size` (the WebSocket frame limit), so a
server that sends one giant event, or a line with no end, costs the client that much memory and no more; the
stream is then dropped and the chat gets an R12, as for an oversized WebSocket frame. The request offers gzip and
deflate, as a browser's EventSource or fetch() does (a server behind nginx compresses), and an encoded stream is
unpacked here piece by piece (`Unpacker`), so those limits apply to the unpacked bytes: a gzip bomb costs no more.
"""
from __future__ import annotations

import asyncio
import functools
import http.cookiejar
import json
import ssl
import time
import zlib
from collections.abc import Iterator
from typing import Any

import h11
import httpcore
import httpx

from ..eventstream import EventStreamParser, EventTooLarge
from ..sinks import refused_response
from .base import (
    ConnectFailed,
    ConnectSettings,
    FrameCallback,
    RecordingHooks,
    answer_of,
    plain_close_hint,
    ssl_context,
    tls_reason,
    with_defaults,
)

EVENT_STREAM = "text/event-stream"
# The content codings the client offers and unpacks: a browser's EventSource and fetch() offer these (and br, zstd,
# which would need packages chatprobe does not depend on); a server may send no other (RFC 9110, 12.5.3).
ACCEPT_ENCODING = "gzip, deflate"
CODINGS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}  # x-gzip is gzip (RFC 9110, 8.4.1.3)
# The most one step of unpacking gives (zlib's max_length). httpx unpacks each read whole (a 64 KiB read of gzip can
# be 64 MiB: deflate packs up to 1032:1) before anything sees it, so the stream is read raw and unpacked here in
# pieces this large, each fed to the bounded SSE parser before the next is made.
UNPACK_PIECE = 1 << 16
# The most bytes of an answer's head (its status line and headers) read before it is refused as a protocol error:
# httpx's (httpcore's h11 connection), which the synchronous client (gevent_client, under Locust) gives its own h11
# connection too. h11's default (16 KiB) refused there a head that `chatprobe run` reads: a server's 20 KiB of
# Set-Cookie failed every chat under Locust as protocol_error, and opened the stream under `run`.
MAX_HEAD = httpcore.HTTP11Connection.MAX_INCOMPLETE_EVENT_SIZE


class CorruptEncoding(Exception):
    """The stream's content coding cannot be unpacked (the message says why)."""


class Unpacker:
    """A gzip or deflate body unpacked as it comes, never more than UNPACK_PIECE bytes at a time (see above). Deflate
    is the zlib format (RFC 9110, 8.4.1.2), or raw deflate as some servers send it (httpx and browsers read both);
    gzip may come in several members (RFC 1952), each unpacked in turn."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._z = self._new()
        self._started = False  # any input taken yet (deflate: whether the zlib form was taken)
        self._head = b""  # deflate: the first byte, held until the second tells the zlib form from raw deflate

    def _new(self, raw: bool = False) -> Any:
        if self.coding == "gzip":
            return zlib.decompressobj(zlib.MAX_WBITS | 16)
        return zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)

    def pieces(self, data: bytes) -> Iterator[bytes]:
        """The unpacked bytes of the next piece of the body, in pieces of at most UNPACK_PIECE bytes."""
        if self.coding == "deflate" and not self._started:
            # zlib's header is two bytes: from one, zlib finds nothing wrong, and raw deflate in reads of a byte (a
            # chunked body whose first chunk is one byte) was refused at the second. Nothing is decided before then.
            data, self._head = self._head + data, b""
            if len(data) < 2:
                self._head = data
                return
        while data:
            z = self._z
            if z.eof:
                if self.coding != "gzip":
                    return  # (bytes after a deflate stream's end are not part of it: ignored, as httpx does)
                self._z = z = self._new()  # the next gzip member
            try:
                out = z.decompress(data, UNPACK_PIECE)
            except zlib.error as exc:
                if self.coding == "deflate" and not self._started:
                    self._started = True
                    self._z = self._new(raw=True)
                    continue
                raise CorruptEncoding(f"the server's {self.coding}-encoded event stream cannot be unpacked: "
                                      f"{str(exc)[:80]}") from None
            self._started = True
            if out:
                yield out
            data = z.unconsumed_tail or (z.unused_data if z.eof else b"")
            while not data and len(out) == UNPACK_PIECE and not z.eof:  # output held back for want of room
                out = z.decompress(b"", UNPACK_PIECE)
                if out:
                    yield out
                data = z.unconsumed_tail

    def complete(self) -> bool:
        """Whether the body ended where its encoding ends (a gzip or deflate stream cut short did not)."""
        return bool(self._z.eof)


def classify_http(exc: BaseException) -> tuple[str, str]:
    """An httpx failure as (result label, one-line reason with no secret in it)."""
    if isinstance(exc, ConnectFailed):
        return exc.kind, str(exc)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, httpx.TimeoutException)):
        return "timeout", "timed out while connecting"
    cause: BaseException | None = exc
    while cause is not None:  # httpx wraps the socket's own error
        if isinstance(cause, ssl.SSLError):
            return "tls_error", tls_reason(cause)
        if isinstance(cause, ConnectionRefusedError):  # (anyio's "All connection attempts failed" from it)
            return "refused", "connection refused"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.ConnectError):
        return "refused", "connection refused" if "refused" in str(exc).lower() else f"network error: {str(exc)[:80]}"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return "protocol_error", "invalid SSE URL"
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ProtocolError, h11.ProtocolError)):  # (h11: the Locust user's)
        return "protocol_error", f"HTTP protocol error: {str(exc)[:80]}"
    if isinstance(exc, (ConnectionRefusedError,)):
        return "refused", "connection refused"
    if isinstance(exc, (OSError, httpx.NetworkError)):
        return "refused", f"network error: {exc.__class__.__name__}"
    return "protocol_error", exc.__class__.__name__


def request_headers(s: ConnectSettings) -> dict[str, str]:
    """The headers of a chat's POST, for every SSE client (this transport's, the Locust user's)."""
    headers = with_defaults({
        "Accept": EVENT_STREAM,
        # Not httpx's own offer (gzip, deflate, br, zstd), which it would unpack whatever came, unbounded: 3 kB of
        # brotli were 2 GiB of stream. The stream is read raw and unpacked by the client, bounded (Unpacker).
        "Accept-Encoding": ACCEPT_ENCODING,
        "Cache-Control": "no-store",
        "Content-Type": "application/json",
        "User-Agent": "chatprobe",
    }, s.extra_headers)
    if s.token and s.auth != "none":
        headers["Authorization"] = f"Bearer {s.token}"
    return headers


def head_failure(status: int, content_type: str, location: str, url: str, encoding: str) -> tuple[str, str] | None:
    """A chat's response head as a failure (label, reason), or None when it opens an event stream the client can
    read: a status that is not one (classify_status), or a content coding it did not offer."""
    failure = classify_status(status, content_type, location, url)
    # Shown as sent, never case-folded: redaction finds an echoed token only in the case it was given.
    encoding = encoding.strip()
    if failure is None and encoding.lower() not in ("", "identity") and encoding.lower() not in CODINGS:
        failure = ("protocol_error", f"the server encoded the event stream (Content-Encoding {encoding[:40]!r}) "
                                     f"in a coding the client did not offer (it offers {ACCEPT_ENCODING})")
    return failure


def classify_status(status: int, content_type: str, location: str = "", url: str = "") -> tuple[str, str] | None:
    """The response head as a failure (label, reason), or None when it opens an event stream. `location`: a redirect's
    Location header, resolved against the request's `url`."""
    if 300 <= status < 400 and (where := _redirect_target(location, url)):
        # No redirect is followed (the token goes to --target only), but a server mounted at `/agent/` answers a POST
        # to `/agent` so (Starlette, FastAPI): say where it points, so the user can give that URL.
        return "protocol_error", (f"HTTP {status} from the SSE endpoint, redirecting to {where} (no redirect is "
                                  "followed: give that URL as --target)")
    return refused_response(status, content_type)


def _redirect_target(location: str, url: str) -> str:
    """Where a redirect points, as scheme://host[:port]/path: no user info, query or fragment (a server may echo a
    token there), at most 200 characters; "" when it names no http(s) URL."""
    location = location.strip()
    if not location:
        return ""
    try:
        given = httpx.URL(location)
        target = given if given.scheme or not url else httpx.URL(url).join(location)
    except Exception:
        return ""
    try:
        host = target.host
    except ValueError:
        # An A-label IDNA cannot read back (`xn--ls8h.la`, `xn--`: httpx decodes the host as it is asked for it, and
        # raised, which left the answer unclassified): shown as sent.
        host = target.raw_host.decode("ascii", "replace")
    if target.scheme not in ("http", "https") or not host:
        return ""
    host = f"[{host}]" if ":" in host else host
    port = f":{target.port}" if target.port is not None else ""
    return f"{target.scheme}://{host}{port}{target.path}"[:200]


async def _judge_head(response: httpx.Response) -> None:
    """The response hook of every chat's client: the answer's head judged (head_failure) as soon as it comes, its
    failure raised (ConnectFailed, with what the server answered), and httpx closes the response. Not after httpx's
    send: it builds the request a redirect would make even when it follows none (its `next_request`), reading the
    Location's host, and one IDNA cannot read (`xn--ls8h.la`) raised IDNA's own error from it: a 302 answer was a
    chat failed for a reason it did not say ("IDNAError")."""
    failure = head_failure(response.status_code, response.headers.get("content-type", ""),
                           response.headers.get("location", ""), str(response.request.url),
                           response.headers.get("content-encoding", ""))
    if failure is not None:
        raise ConnectFailed(*failure, **answer_of(response.status_code, response.headers.get))


_HOOKS = {"response": [_judge_head]}


class _NoCookies(http.cookiejar.CookieJar):
    """The cookie jar of every chat's client: it keeps none. httpx's own kept each `Set-Cookie` of a user's answers
    and sent them all with its next chats: a server's cookies held without bound (20 of 3 kB an answer made the third
    chat's request 120 kB), a session cookie kept as no other credential is, and the Locust user's client and the
    WebSocket clients keep none. A cookie the server needs goes with `--header 'Cookie: …'`."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def set_cookie(self, cookie: Any) -> None:
        return None


@functools.cache
def _no_tls() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname, no CA loaded


class _CountedStream(httpcore.AsyncNetworkStream):
    """A connection's stream that counts the bytes read from it: whether any of a request's answer came before it
    failed (a request on a kept connection is sent again only when none did)."""

    __slots__ = ("_stream", "got")

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self.got = 0

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = await self._stream.read(max_bytes, timeout)
        self.got += len(data)
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        return _CountedStream(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _CountingBackend(httpcore.AnyIOBackend):
    """asyncio's sockets (anyio's, as httpx uses them), each counted (_CountedStream); `connects`: how many made."""

    connects = 0

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        self.connects += 1
        return _CountedStream(await super().connect_tcp(*args, **kwargs))


class KeptConnection:
    """A virtual user's HTTP client between its SSE chats: its connection kept alive (HTTP/1.1 keep-alive, as a
    browser, k6 and Locust's HttpUser keep one), at most one idle, for the user's next chat. Each chat's stream is
    still its own transport. Holds no credential: a request's headers are given with it and not kept."""

    def __init__(self) -> None:
        self.backend = _CountingBackend()
        self.client: httpx.AsyncClient | None = None
        self._tls: ssl.SSLContext | None = None  # the client's TLS context (base.ssl_context's, shared)
        self.idle: _CountedStream | None = None  # the idle connection's stream, when a chat's body ended cleanly

    async def client_for(self, settings: ConnectSettings) -> httpx.AsyncClient:
        """The user's client; made anew when the TLS context changed (the CA file was rewritten: base.ssl_context),
        so that a new connection is verified as without keep-alive. Raises ConnectFailed as ssl_context does."""
        tls = ssl_context(settings, "sse") or _no_tls()
        if self.client is not None and tls is self._tls:
            return self.client
        await self.aclose()
        transport = httpx.AsyncHTTPTransport(verify=tls, trust_env=False)
        # httpx's pool, made again with the counting sockets (httpx takes no network backend of its own) and no
        # idle expiry: a connection the server closed while idle is found so before it is used (its socket
        # readable), and a request that finds it so anyway is sent again (SSETransport.send).
        transport._pool = httpcore.AsyncConnectionPool(ssl_context=tls, max_connections=None,
                                                       max_keepalive_connections=1, keepalive_expiry=None,
                                                       network_backend=self.backend)
        self.client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(settings.connect_timeout, read=None),  # reads are bounded by the chat's deadline
            follow_redirects=False,
            trust_env=False,  # like the WebSocket transport: no proxy from the environment
            event_hooks=_HOOKS,
            cookies=_NoCookies(),
        )
        self._tls = tls
        return self.client

    async def kept_clean(self, response: httpx.Response) -> None:
        """The body of `response` was read to its end and closed: its connection is idle in the pool (unless HTTP
        said it ends: `Connection: close`, HTTP/1.0). Bytes after the body's end are no answer to anything: such a
        connection is not used again."""
        stream = response.extensions.get("network_stream")
        self.idle = stream if isinstance(stream, _CountedStream) else None
        for conn in self.pool.connections:
            # (httpcore keeps what h11 read past the body's end for the next answer: none may be there)
            h11_state = getattr(getattr(conn, "_connection", None), "_h11_state", None)
            if h11_state is not None and h11_state.trailing_data[0]:
                self.idle = None
                await conn.aclose()

    @property
    def pool(self) -> httpcore.AsyncConnectionPool:
        return self.client._transport._pool  # type: ignore[union-attr]

    async def aclose(self) -> None:
        client, self.client, self.idle = self.client, None, None
        if client is not None:
            try:
                async with asyncio.timeout(3):
                    await client.aclose()
            except Exception:
                pass


class SSETransport(RecordingHooks):
    """HTTP POST of the chat request, then the Server-Sent Events of one run; one stream at a time."""

    # The server is reached when the first message is sent, not at open(): the Session counts the connection then.
    connects_on_send = True

    def __init__(self, settings: ConnectSettings) -> None:
        self.settings = settings
        self.client: httpx.AsyncClient | None = None
        # The user's client kept between its chats (keep-alive), set by the Session before open(); None: this
        # transport's own, closed with its stream (a connection per chat).
        self.kept: KeptConnection | None = None
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
        if self.kept is not None:
            self.client = await self.kept.client_for(s)
            return
        self.client = httpx.AsyncClient(
            # https: the shared context (base.ssl_context); http: no TLS is ever spoken on this client (redirects
            # are not followed): httpx's default loaded a CA bundle per client (≈29 ms) and even a bare context is
            # ≈1 ms to make, so one is shared, verifying and with no CA (were it ever used, it would trust nobody).
            verify=ssl_context(s, "sse") or _no_tls(),
            timeout=httpx.Timeout(s.connect_timeout, read=None),  # reads are bounded by the chat's deadline
            follow_redirects=False,
            trust_env=False,  # like the WebSocket transport: no proxy from the environment
            event_hooks=_HOOKS,
            cookies=_NoCookies(),
        )

    async def send(self, obj: Any) -> None:
        """POST the request and read the response head (judged by _judge_head); raises ConnectFailed, classified, when
        no stream opens."""
        if self._requested or self._closing:
            raise ConnectFailed("protocol_error", "an SSE connection carries one chat at a time: "
                                                  "use more users, not parallel_chats, for concurrency over SSE")
        assert self.client is not None
        self._requested = True
        s = self.settings
        body = obj if isinstance(obj, (str, bytes)) else json.dumps(obj)
        request = self.client.build_request("POST", s.url, content=body, headers=request_headers(s),
                                            timeout=httpx.Timeout(s.connect_timeout, read=None))
        response: httpx.Response | None = None
        kept = self.kept
        idle = kept.idle if kept is not None else None
        try:
            async with asyncio.timeout(s.connect_timeout):
                while True:
                    connects = kept.backend.connects if kept is not None else 0
                    got = idle.got if idle is not None else 0
                    if kept is not None:
                        kept.idle = None
                    try:
                        response = await self.client.send(request, stream=True)
                        break
                    except (httpx.TransportError, OSError):
                        # Sent on the kept connection (none made) and failed before a byte of the answer came: the
                        # server closed it while idle, found so only by the request. Sent again once, on a new
                        # connection, within the same deadline, as a browser does; never once an answer byte came.
                        if kept is None or idle is None or kept.backend.connects != connects or idle.got != got:
                            raise
                        idle = None
        except ConnectFailed:
            raise  # the answer's head refused (_judge_head)
        except Exception as exc:
            kind, reason = classify_http(exc)
            raise ConnectFailed(kind, plain_close_hint(s.url, reason)) from None
        finally:
            if response is None:  # no stream came of it (also when cancelled): the next chat may try again
                self._requested = False
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
            if self.client is not None and self.kept is None:  # one stream per transport: its end is the connection's
                try:
                    async with asyncio.timeout(3):
                        await self.client.aclose()
                except Exception:
                    pass

    async def _read_events(self, response: httpx.Response, on_frame: FrameCallback) -> None:
        clock = time.monotonic
        parser = EventStreamParser(self.settings.max_size)
        coding = CODINGS.get(response.headers.get("content-encoding", "").strip().lower())
        unpacker = Unpacker(coding) if coding else None
        # The events of one read come together: one time for all of them, as the WebSocket clients stamp the frames
        # of one read (picows) or of one turn of the event loop (websockets). No chat woken by one of them has its
        # turn before the last is handed over, and the recording's equal times say so to `chatprobe check`
        # (offline.OfflineCheck._judge_ready): live and offline judge the read alike.
        clean = False  # the body was read to its end
        try:
            # As sent; an encoded body unpacked piece by piece. The response's stream itself, not aiter_raw, which
            # closes the response at the body's end in this task: a chat judged at its terminal event cancels it
            # then, and the close, cancelled, left the connection neither closed nor idle (see the end).
            async for chunk in response.stream:  # type: ignore[union-attr]
                at = clock()
                if unpacker is None:
                    for data in parser.feed(chunk):
                        on_frame(data, at)
                    continue
                for i, piece in enumerate(unpacker.pieces(chunk)):
                    if i:
                        # One read may unpack to a thousand pieces: the loop's other chats and this chat's own
                        # deadline (a cancellation) get their turn between them. A yield, not a wait for anything;
                        # past it, a chat may have been judged: what follows is stamped anew (a turn of its own).
                        await asyncio.sleep(0)
                        at = clock()
                    for data in parser.feed(piece):
                        on_frame(data, at)
            if unpacker is not None and not unpacker.complete():
                raise CorruptEncoding(f"the server's {unpacker.coding}-encoded event stream ended before its "
                                      f"{unpacker.coding} end (cut short)")
            at = clock()
            for data in parser.end():  # the body ended cleanly: an event its end left without the empty line
                on_frame(data, at)
            self.ended_note = "the server ended the event stream before the run's terminal event (truncated run)"
            clean = True
        except CorruptEncoding as exc:
            # As broken HTTP framing: an R12, and nothing the cut left pending is dispatched.
            self.protocol_error = str(exc)
            self.ended_note = f"the client dropped the event stream: {exc}"
            self.close_reason = str(exc)
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
            # Closed in a task of its own: this one may be being cancelled (the chat ended, its deadline), and
            # httpcore's lock (anyio's) refuses a cancelled task, which left the connection open and, in the user's
            # kept client, active in its pool for good.
            closer = asyncio.ensure_future(self._release(response, clean))
            try:
                await asyncio.wait({closer}, timeout=2)
            except BaseException:
                pass

    async def _release(self, response: httpx.Response, clean: bool) -> None:
        """Close the response: read to its end, its connection goes back to the user's pool, idle, for its next chat
        (KeptConnection.kept_clean); else the connection is closed (a chat cut short keeps none)."""
        await response.aclose()
        if clean and self.kept is not None:
            await self.kept.kept_clean(response)

    async def close(self) -> None:
        self._closing = True
        self._stream_ready.set()
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
            await asyncio.wait({self._pump}, timeout=3)
        if self.kept is not None:
            if self.response is not None:  # (closed before its end: its connection is closed, not kept)
                try:
                    async with asyncio.timeout(3):
                        await self.response.aclose()
                except Exception:
                    pass
        elif self.client is not None:
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
