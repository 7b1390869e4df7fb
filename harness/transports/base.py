"""What every transport shares: the scheme table, connection settings, TLS, and the classified connection failure."""
from __future__ import annotations

import base64
import functools
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from ..backoff import RETRY_AFTER_STATUSES, credentials_refusal, parse_retry_after
from ..subprotocols import AUTH_SUBPROTOCOL

if TYPE_CHECKING:
    import ssl

    from ..checker import Expectations

FrameCallback = Callable[[str | bytes, float], None]

# The most frames one WebSocket message may come in, for every client: websockets' own bound, read as websockets
# reads it (its asyncio client fails a message in more frames with 1009, "too many fragments"). picows and the Locust
# user's client keep a message's fragments themselves: without it a server's 4 MiB message in 2-byte fragments
# (12 MB on the wire) cost them ~260 MB of fragment objects, and a message of empty fragments never ended.
# The bounds websockets reads from the environment as numbers when it is imported (int() or float() of the text, a
# ValueError out of its import for anything else); chatprobe reads WEBSOCKETS_MAX_FRAGMENTS alike. `check_environment`
# refuses a value that is no number before any command runs: it was a traceback, of `--help` too.
WEBSOCKETS_NUMBERS = {
    "WEBSOCKETS_MAX_FRAGMENTS": int, "WEBSOCKETS_MAX_NUM_HEADERS": int, "WEBSOCKETS_MAX_LINE_LENGTH": int,
    "WEBSOCKETS_MAX_BODY_SIZE": int, "WEBSOCKETS_MAX_LOG_SIZE": int, "WEBSOCKETS_MAX_REDIRECTS": int,
    "WEBSOCKETS_BACKOFF_INITIAL_DELAY": float, "WEBSOCKETS_BACKOFF_MIN_DELAY": float,
    "WEBSOCKETS_BACKOFF_MAX_DELAY": float, "WEBSOCKETS_BACKOFF_FACTOR": float,
}


def environment_problem() -> str | None:
    """What is wrong with a WEBSOCKETS_* number in the environment (naming the variable, never its value), or None."""
    for name, kind in WEBSOCKETS_NUMBERS.items():
        text = os.environ.get(name)
        if text is None:
            continue
        try:
            kind(text)
        except ValueError:
            return (f"the environment variable {name} is not {'a whole number' if kind is int else 'a number'} "
                    "(websockets reads it as one); set it to one, or unset it for websockets' default")
    return None


def _max_fragments() -> int:
    try:
        return int(os.environ.get("WEBSOCKETS_MAX_FRAGMENTS", "4096"))
    except ValueError:
        return 4096  # (refused before any command runs: environment_problem)


MAX_FRAGMENTS = _max_fragments()
TOO_MANY_FRAGMENTS = "too many fragments"  # the reason of websockets' close frame (1009) for it
FRAGMENTS_ERROR = f"message in more than {MAX_FRAGMENTS} fragments"  # what the chats on the connection are told (R12)
# RFC 6455 4.1: what every client says of an upgrade answer that chose a subprotocol it did not offer (or several).
UNOFFERED_SUBPROTOCOL = "the server chose a subprotocol the client did not offer"
UNOFFERED_EXTENSION = "the server chose an extension the client did not offer"
# What every client says of a header of the upgrade answer that RFC 6455 4.1 fails the connection for: an Upgrade or a
# Sec-WebSocket-Accept header missing, repeated or wrong, a Connection header without the `upgrade` token, a
# Sec-WebSocket-Extensions header that names no extension (9.1: 1#extension), an empty one included.
MALFORMED_HEADER = "the server's {} header is malformed"
MALFORMED_EXTENSIONS = MALFORMED_HEADER.format("Sec-WebSocket-Extensions")
# What every client says of an upgrade answer it cannot parse as HTTP/1.1 (not HTTP/1.1, a folded header line, a head
# past its client's limits).
MALFORMED_UPGRADE = "malformed upgrade response"
# What every client says of a 101 that announces a body (a Content-Length other than 0, a Transfer-Encoding): RFC 9110
# 8.6 and RFC 9112 6.1 forbid both on a 1xx. picows refuses such an answer, so every client does (websockets took it).
UPGRADE_BODY = "the server's 101 answer announces a body ({} header), which a 101 may not have (RFC 9110)"
UPGRADE_BODY_HEADERS = ("Content-Length", "Transfer-Encoding")
# Frames a WebSocket client (websockets', the Locust user's) hands over between two turns of its event loop (gevent's
# hub under Locust): a read of 256 KiB holds 131,072 empty text frames, each a malformed one to judge, and handed over
# in one go they held every chat of the loop, deadlines included, for seconds. (SSE reads are 64 KiB at most.) Past
# this many, the client lets the loop's others run and stamps what follows anew (a chat may have been judged
# meanwhile: as a read of its own). A chat's read mostly holds a few frames, so this costs ordinary streams nothing.
FRAMES_PER_TURN = 256
TransportName = Literal["websocket", "sse"]
Compression = Literal["none", "deflate"]


@dataclass(frozen=True, slots=True)
class Scheme:
    """What a URL scheme means: the transport that carries it, whether it is TLS, its default port."""

    transport: TransportName
    secure: bool
    default_port: int


# The one scheme table every driver uses (the runner, monitor, proxy, Locust user, pytest plugin).
SCHEMES: dict[str, Scheme] = {
    "ws": Scheme("websocket", False, 80),
    "wss": Scheme("websocket", True, 443),
    "http": Scheme("sse", False, 80),
    "https": Scheme("sse", True, 443),
}


def schemes_for(transport: TransportName) -> tuple[str, ...]:
    """The URL schemes that mean `transport` (ws, wss for websocket)."""
    return tuple(name for name, s in SCHEMES.items() if s.transport == transport)


def scheme_of(url: str) -> Scheme | None:
    return SCHEMES.get(urlsplit(url).scheme.lower())


class ConnectFailed(Exception):
    """Could not open a usable connection; `kind` is a connections_total result label. What the server answered, for
    the reconnect's retry decision (backoff.ReconnectRetries.failed): `status`, the HTTP status of the handshake (or
    the SSE request); `close_code`, the WebSocket close code it ended the connection with before it was usable;
    `auth_frame`, the code of the AUTH_FAILED session error that refused it; `retry_after`, the seconds a 429's or
    503's Retry-After asked the client to wait (backoff.parse_retry_after)."""

    def __init__(self, kind: str, message: str, *, status: int | None = None, close_code: int | None = None,
                 auth_frame: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.close_code = close_code
        self.auth_frame = auth_frame
        self.retry_after = retry_after

    @property
    def refusal(self) -> str | None:
        """How the answer refused the credentials, or None: no reconnect attempt follows one
        (backoff.credentials_refusal)."""
        return credentials_refusal(self.status, self.close_code, self.auth_frame)


def answer_of(status: int | None, header: Callable[[str], str | None]) -> dict[str, Any]:
    """The ConnectFailed fields of a handshake (or SSE request) answered `status`, its headers read by `header`: the
    status, and a 429's or 503's Retry-After in seconds."""
    if status is None:
        return {}
    retry_after = parse_retry_after(header("retry-after")) if status in RETRY_AFTER_STATUSES else None
    return {"status": status, "retry_after": retry_after}


# The bytes a connection may hold unsent (written by the client, not yet taken by the socket) before a frame is sent:
# past it the server has stopped reading (the kernel's socket buffers, megabytes on loopback, are full already and a
# megabyte more waits behind them), and the next frame is refused (SendStalled), not queued: a server that never
# reads while a scenario sends large `send_raw:` frames or many chats grew the client's memory by every frame, without
# end (picows and the Locust user's client write without waiting). One frame more than this at most (the frame that
# passed it), per connection.
MAX_UNSENT_SEND = 1024 * 1024


class SendStalled(Exception):
    """A frame not sent: the connection already holds more than MAX_UNSENT_SEND bytes the server has not read. The
    chat it was is an `error`, `send_failed`, with this message as its note."""

    def __init__(self, unsent: int) -> None:
        super().__init__(f"the frame was not sent: {unsent:,} bytes sent before are still unread (past the "
                         f"{MAX_UNSENT_SEND // 1024:,} KiB bound: the server stopped reading)")


class LeanClientRefused(ConnectFailed):
    """picows (the lean WebSocket client) refused an upgrade answer that RFC 6455 allows and the websockets client
    takes (its compiled check wants a header's whole value where the RFC asks for a token in it): the client's
    limit, not the server's fault. The caller opens the target with the websockets client instead (WebSocketChoice);
    the message says what picows refused, never the server's value."""

    def __init__(self, message: str) -> None:
        super().__init__("protocol_error", message)


class WebSocketChoice:
    """Which WebSocket client a target's connections take (ConnectSettings.client), shared by every copy of a Target
    (one per scenario): "auto" (picows unless compression is on) until picows refuses a valid answer of that server
    (LeanClientRefused), then "websockets" for the rest of the run, said once (`take_note`: the run's warning)."""

    __slots__ = ("client", "note", "told")

    def __init__(self) -> None:
        self.client = "auto"
        self.note: str | None = None
        self.told = False

    def fall_back(self, refused: str) -> None:
        """picows refused `refused` (LeanClientRefused's message): the websockets client carries the target now."""
        if self.client == "websockets":
            return
        self.client = "websockets"
        self.note = (f"{refused}, which RFC 6455 allows and picows (the default WebSocket client) refuses: this "
                     "target's connections went over the websockets client from then on")

    def take_note(self) -> str | None:
        """The warning of the fall-back, once (the first run report after it)."""
        if self.note is None or self.told:
            return None
        self.told = True
        return self.note


class RecordingHooks:
    """What a client tells a connection's recording (`--record`) beyond the frames that pass: no-ops here, so that a
    client calls them on any transport and imports nothing of the recorder; `recorder.RecordingTransport`, the
    wrapper `--record` puts around a transport, overrides them (docs/recordings.md). Every transport derives from it."""

    __slots__ = ()

    async def send(self, obj: Any) -> None:
        raise NotImplementedError

    async def send_chat(self, obj: Any, expectations: Expectations, since: float) -> None:
        """Send a chat's message (or a `send_raw:` probe); the recording writes the chat's `expectations` with it and
        `since`, when its times count from (its first try, or when an open-model chat was due)."""
        await self.send(obj)

    def connect_failed(self, kind: str, reason: str, answer: ConnectFailed | None = None) -> None:
        """The connection opened but never became usable (no welcome, AUTH_FAILED): `kind` a connections_total
        result; `answer`, the failure the client raises, with what the server answered (the retry decision's)."""

    def send_failed(self, kind: str, reason: str) -> None:
        """A send never went: over SSE no stream came of the request (`kind` a connections_total result, `timeout`
        when no answer came within connect_timeout); over WebSocket the frame did not leave within connect_timeout
        (`send_failed`: the server stopped reading), which fails the chat it was."""

    def dropped_by_client(self) -> None:
        """The client is about to drop the connection on purpose, as a lost network would, to reconnect and resume."""

    def stopped_by_client(self) -> None:
        """The run stopped (its max_duration, Ctrl-C) with a chat of the connection still open: the client's close of
        it that follows is that stop, not a user leaving."""


@dataclass
class ConnectSettings:
    """How a transport connects: the URL, the credentials and how they are sent, TLS, limits, headers and client."""

    url: str
    token: str | None = field(default=None, repr=False)  # never in a repr: pytest -l, a traceback's locals
    auth: str = "header"  # header | subprotocol | none
    ca_file: str | None = None
    insecure: bool = False
    # The client certificate (PEM) shown to a server that asks for one (mutual TLS), and its private key's PEM file
    # (None: in the certificate's file). Paths only: the key itself is read by OpenSSL, never by chatprobe.
    client_cert: str | None = None
    client_key: str | None = None
    connect_timeout: float = 10.0
    max_size: int = 4 * 1024 * 1024
    extra_headers: dict[str, str] = field(default_factory=dict, repr=False)  # may carry a cookie
    # Offer permessage-deflate (as browsers do) or not. "none" by default: on loopback and LAN deflate costs both
    # ends more CPU than it saves in bytes, and agentsim offers none; a server that needs it is tested with it.
    compression: Compression = "none"
    # Which WebSocket client carries ws:// and wss:// (WEBSOCKET_CLIENTS): "auto" takes the lean one (picows) when
    # it is installed and compression is off, else websockets, which supports everything.
    client: str = "auto"
    # The WebSocket subprotocols of the user's own to offer (`--subprotocol`, a profile's `subprotocols`), in order of
    # preference, checked (subprotocol_problem); with `--auth subprotocol` the token's pair follows them.
    subprotocols: tuple[str, ...] = ()


def auth_headers(settings: ConnectSettings) -> tuple[dict[str, str], list[str] | None]:
    """(headers, subprotocols) of a WebSocket handshake: the bearer token as a header or as a subprotocol. The
    subprotocols offered are the user's own in the order given (RFC 6455: the client's preference), then the token's
    pair: a server that wants agent.v1 and reads the token from jwt.<token> answers agent.v1."""
    headers = dict(settings.extra_headers)
    subprotocols = list(settings.subprotocols) or None
    if settings.token and settings.auth == "header":
        headers["Authorization"] = f"Bearer {settings.token}"
    elif settings.token and settings.auth == "subprotocol":
        encoded = base64.urlsafe_b64encode(settings.token.encode()).decode().rstrip("=")
        subprotocols = [*settings.subprotocols, AUTH_SUBPROTOCOL, f"jwt.{encoded}"]
    return headers, subprotocols


def with_defaults(defaults: dict[str, str], headers: dict[str, str]) -> dict[str, str]:
    """`headers` (a user's --header) over chatprobe's `defaults`, names compared case-insensitively: a `user-agent`
    of the user's replaces chatprobe's User-Agent, never goes beside it."""
    given = {name.lower() for name in headers}
    return {**{k: v for k, v in defaults.items() if k.lower() not in given}, **headers}


# TLS contexts are shared: building one loads the CA bundle (≈26 ms of CPU, and a few hundred KB it keeps), which
# every wss:// connection and every SSE chat paid before (a load test of 1,000 chats over TLS spent ≈26 CPU-s loading
# the same certificates). An SSLContext is made to be shared by connections (and threads: the Locust user). One per
# (CA file, client certificate and key, and their modification times, --insecure, use, hour): a CA bundle or a client
# certificate rewritten on disk (a rotated one) gives a new context at the next connection, and the system store is
# read again every TLS_CONTEXT_TTL seconds (a monitor runs for days). The use keeps httpx's contexts apart from the
# WebSocket clients' (httpcore sets its ALPN protocols on the context).
TLS_CONTEXT_TTL = 3600.0
# The largest CA file, client certificate or key loaded: OpenSSL holds a PEM block's whole base64 in memory (a file
# of one `BEGIN CERTIFICATE` line and then 300 MB of base64 took 500 MB, at start or at any connection once it was
# rewritten so). Mozilla's whole CA bundle is a quarter of a megabyte; a key or certificate a few kilobytes.
MAX_PEM_FILE = 16 * 1024 * 1024


# OpenSSL's verify codes (X509_V_ERR_*) of a certificate whose issuer the client does not trust: a private CA's or a
# self-signed one (2, 18, 19, 20, 21), which --ca-file names; and of one issued for another name or address (62, 64).
_UNTRUSTED_ISSUER = frozenset({2, 18, 19, 20, 21})
_OTHER_NAME = frozenset({62, 64})


# A certificate out of its validity dates (X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED).
_OUT_OF_DATE = frozenset({9, 10})
# OpenSSL's reasons for bytes that are no TLS record where the server's handshake was due: a plain-HTTP server's
# answer to the ClientHello (nginx's `400 Bad Request`, ...).
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE", "HTTP_REQUEST",
                      "UNKNOWN_PROTOCOL"})
# A server's alert saying it wants a client certificate (TLS 1.3's certificate_required), and the alerts of one that
# refused the certificate shown (not its CA's, expired, revoked, or not allowed in).
_CERT_REQUIRED = frozenset({"TLSV13_ALERT_CERTIFICATE_REQUIRED"})
_CERT_REFUSED = frozenset({"TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
                           "SSLV3_ALERT_CERTIFICATE_EXPIRED", "SSLV3_ALERT_CERTIFICATE_REVOKED",
                           "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "TLSV1_ALERT_ACCESS_DENIED"})
# What every client says of a server that hung up during the TLS handshake (OpenSSL's unexpected EOF; asyncio's
# ConnectionResetError out of the handshake): what a server that speaks no TLS does with a ClientHello.
TLS_CUT = ("TLS: the server closed the connection during the TLS handshake: a server that speaks no TLS does so (is it "
           "a ws:// or http:// one?)")


# What the clients say of a server that closed the connection before a byte of its answer: WebSocket's (picows,
# websockets, the Locust user's), SSE's (httpx's words, the Locust user's SSE client too).
CLOSED_IN_HANDSHAKE = "the server closed the connection during the handshake"
NO_RESPONSE = "HTTP protocol error: Server disconnected without sending a response."


def plain_close_hint(url: str, reason: str) -> str:
    """`reason`, and for such a close at a ws:// or http:// URL what it may be: a TLS server (an OpenSSL-based one)
    closes on a request that is not TLS without a word, and the client cannot tell it from any server's close."""
    if reason == CLOSED_IN_HANDSHAKE or reason == NO_RESPONSE:
        scheme = url.partition(":")[0].lower()
        if scheme in ("ws", "http"):
            return f"{reason} (a TLS server does so at {'an' if scheme == 'http' else 'a'} {scheme}:// URL: is it {scheme}s://?)"
    return reason


def tls_reason(exc: ssl.SSLError) -> str:
    """A TLS failure in one line: OpenSSL's reason and, for a certificate not verified, why (a self-signed one, a name
    or IP address it is not for, expired) and, where one helps, what to give (`--ca-file`, `--client-cert`, another
    host name, another scheme): each of docs/protocol.md's TLS failures in words of its own, on every client."""
    name = getattr(exc, "reason", None) or exc.__class__.__name__
    if name in ("UNEXPECTED_EOF_WHILE_READING", "SSLEOFError"):
        return TLS_CUT
    reason = f"TLS: {name}"
    why = getattr(exc, "verify_message", None)
    if isinstance(why, str) and why:
        reason += f" ({why.strip().rstrip('.')[:200]})"
        code = getattr(exc, "verify_code", None)
        if code in _UNTRUSTED_ISSUER:
            reason += ": give the server's CA with --ca-file, or --insecure"
        elif code in _OTHER_NAME:
            reason += ": connect by a name or address the certificate is for, or --insecure"
        elif code in _OUT_OF_DATE:
            reason += ": the server's certificate is out of its validity dates (renew it, or check this machine's " \
                      "clock), or --insecure"
    elif name in _NOT_TLS:
        reason += ": the server answered in plain text, not TLS (is it a ws:// or http:// one?)"
    elif name in _CERT_REQUIRED:
        reason += ": the server requires a client certificate: give one with --client-cert"
    elif name in _CERT_REFUSED:
        reason += ": the server refused the client certificate shown (--client-cert): give one it trusts"
    return reason


def tls_advice_as(reason: str, prefix: str) -> str:
    """A TLS failure's reason (tls_reason's, picows') with the flags it advises named as a driver of other flags names
    them: `--ca-file`, `--client-cert` and `--client-key` as `--{prefix}ca-file` and so on, and `or --insecure` left
    out (neither the proxy's upstream nor the pytest plugin has one). Said once per failure, never per event."""
    reason = reason.replace(", or --insecure", "")
    return re.sub(r"(?<![\w-])--(ca-file|client-cert|client-key)\b", rf"--{prefix}\1", reason)


def ssl_context(settings: ConnectSettings, use: str = "websocket") -> ssl.SSLContext | None:
    """The TLS context of a connection to settings.url (None for ws:// and http://), shared (see above). A CA file,
    client certificate or key that cannot be loaded now (checked at start, it may have been rewritten since: emptied
    for a moment, or turned into a FIFO or a device, which would block or spin the event loop in OpenSSL's read) raises
    ConnectFailed (`tls_error`, naming the file), as every client classifies a failed connection; a FIFO or a device
    is never opened."""
    scheme = scheme_of(settings.url)
    if scheme is None or not scheme.secure:
        return None
    ca_file, cert, key = settings.ca_file, settings.client_cert, settings.client_key
    stamps = (_stamp(ca_file, "CA file"), _stamp(cert, "client certificate"), _stamp(key, "client key"))
    import ssl  # here, not at the top: the command line's `--help` and `list` load no TLS library

    try:
        return _tls_context(ca_file, cert, key, stamps, settings.insecure, use,
                            int(time.monotonic() // TLS_CONTEXT_TTL))
    except (ssl.SSLError, OSError, ValueError, _Encrypted) as exc:  # (nothing failed is cached)
        if cert and (problem := client_cert_problem(cert, key)) is not None:
            option, why = problem
            path = cert if option == "client_cert" else key or cert
            what = "client certificate" if option == "client_cert" else "client key"
            raise _file_failed(what, path, why) from None
        if not ca_file and not cert:
            raise
        why = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc.__class__.__name__
        raise _file_failed("CA file" if ca_file else "client certificate", ca_file or cert or "", why) from None


def _stamp(path: str | None, what: str) -> tuple[int, ...]:
    """What tells a file the TLS context loads from a rewrite of it (() for none): its modification time, and its
    inode, size and change time (a file rewritten within one tick of the file system's clock, 1-4 ms, keeps its
    modification time: a certificate renamed over it, or one of another size, still gives a new context); one that
    is not a regular file now is a ConnectFailed naming it, and never opened."""
    if not path:
        return ()
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _file_failed(what, path, exc.strerror or exc.__class__.__name__) from None
    if not stat.S_ISREG(st.st_mode):
        raise _file_failed(what, path, "not a regular file")
    if st.st_size > MAX_PEM_FILE:
        raise _file_failed(what, path, pem_too_big(st.st_size))
    return st.st_mtime_ns, st.st_ino, st.st_size, st.st_ctime_ns


def pem_too_big(size: int) -> str:
    return f"{size:,} bytes, over the {MAX_PEM_FILE // (1024 * 1024)} MiB a PEM file may be"


def _file_failed(what: str, path: str, why: str) -> ConnectFailed:
    return ConnectFailed("tls_error", f"TLS: the {what} {os.path.basename(path)[:80]!r} cannot be loaded: {why}")


class _Encrypted(Exception):
    """A client key that asks for a passphrase: chatprobe has none to give (OpenSSL would prompt on the terminal)."""


def _no_passphrase() -> bytes:
    raise _Encrypted


def client_cert_problem(cert: str, key: str | None) -> tuple[str, str] | None:
    """What keeps a client certificate and its key (None: in the certificate's file) from being used, as (the
    option it is about, `client_cert` or `client_key`, and why, in words that never hold the key), or None. The
    files are read by OpenSSL only; an encrypted key is refused, never prompted for."""
    import ssl

    for option, path in (("client_cert", cert), ("client_key", key)):
        if path is None:
            continue
        try:
            st = os.stat(path)
        except OSError as exc:
            return option, exc.strerror or exc.__class__.__name__
        except ValueError:  # a NUL in it (a config file's "\0"): the file's own option, not the certificate's
            return option, "no file name can hold a NUL character"
        if not stat.S_ISREG(st.st_mode):
            return option, "not a regular file"
        if st.st_size > MAX_PEM_FILE:
            return option, pem_too_big(st.st_size)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)  # (no system CAs loaded)
    except (ssl.SSLError, ValueError):
        return "client_cert", "holds no PEM certificate"
    except OSError as exc:
        return "client_cert", exc.strerror or exc.__class__.__name__
    key_option = "client_key" if key else "client_cert"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=_no_passphrase)
    except _Encrypted:
        return key_option, ("the private key is encrypted (passphrase-protected); chatprobe takes an unencrypted key "
                            "file, readable by this user only")
    except ssl.SSLError as exc:
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            return key_option, "the private key is not the certificate's (key values mismatch)"
        return key_option, ("holds no PEM private key" if key else
                            "holds no PEM private key beside the certificate (give the key's file with --client-key)")
    except OSError as exc:
        return key_option, exc.strerror or exc.__class__.__name__
    return None


@functools.lru_cache(maxsize=8)
def _tls_context(ca_file: str | None, cert: str | None, key: str | None, _stamps: tuple[tuple[int, ...], ...],
                 insecure: bool, _use: str, _hour: int) -> ssl.SSLContext:
    import ssl

    ctx = ssl.create_default_context(cafile=ca_file)
    if cert:
        ctx.load_cert_chain(cert, key, password=_no_passphrase)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
