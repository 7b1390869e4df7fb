"""The proxy's front door: which request targets may pass and to what upstream URL, who the client is, how many
connections it may hold, and quiet handling of running out of file descriptors."""
from __future__ import annotations

import asyncio
import errno
import hashlib
import ipaddress
import logging
import re
import resource
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

# PyJWT, loaded with the proxy for harness.targets.jwt_claims, which imports it on first use: ~0.3 s of imports inside
# the event loop at the first user's JWT, every other user's handshake and request stalled behind it.
import jwt  # noqa: F401
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import InvalidMessage, SecurityError
from websockets.protocol import State
from websockets.server import ServerProtocol

from harness import redact
from harness.errors import ConfigError
from harness.targets import jwt_claims
from harness.transports.base import tls_advice_as
from harness.transports.websocket import BoundedPongs

_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62})?)*\.?")


def listen_host_port(value: str, flag: str, example: str) -> tuple[str, int]:
    """HOST:PORT to listen on, as a flag gives it: a port of ASCII digits 0-65535, a host that is an IP address
    (IPv6 in brackets) or a DNS name; anything else a ConfigError naming the flag (exit 2), not the socket's error
    later ("Name or service not known", exit 1). An empty host is returned empty (the caller's default)."""
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or len(port) > 5 or int(port) > 65535:
        raise ConfigError(f"{flag} {value[:80]!r}: expected HOST:PORT with a port from 0 to 65535, e.g. {example}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"{flag} {value[:80]!r}: an IPv6 address goes in brackets, e.g. [::1]:{port}")
    if host and not _HOSTNAME.fullmatch(host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"{flag} {value[:80]!r}: {host[:60]!r} is neither an IP address nor a host name") from None
    elif host and host.replace(".", "").isdigit():  # all digits and dots: an IPv4 address, or nothing
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ConfigError(f"{flag} {value[:80]!r}: {host!r} is not an IPv4 address") from None
    return host, int(port)

log = logging.getLogger("chatprobe.proxy")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

REFUSAL_REASONS = ("bad_request", "over_capacity", "per_address_limit")
# Every proxied connection holds two file descriptors (the client's socket and the upstream's). Out of the
# open-file limit, this many plus a tenth stay free for handshakes in progress, refusals being answered, /metrics,
# logs and the interpreter itself ...
HEADROOM_FDS = 32
# ... and the sockets accepted but not yet looked at. asyncio accepts up to the listen backlog of them in one go, and
# one accepted now is closed, if cut, three loop turns later (its transport is made in a task, connection_made comes
# a turn after that, the close a turn after that) while the turns between accept more: a flood from one address holds
# up to ACCEPT_TURNS batches at once. (Budgeting one batch of 100, a 300-socket flood at an open-file limit of 256
# peaked at 186-224 descriptors, and past 256 on a loaded machine.) So the backlog shrinks with the open-file limit.
ACCEPT_TURNS = 4
MAX_ACCEPT_BATCH = 100  # asyncio's default backlog
# With no open-file limit at all, memory is the bound: see the per-connection byte budget in proxy.py.
UNLIMITED_DEFAULT_CONNECTIONS = 10000
# One client address may take this share of --max-connections by default (nginx's limit_conn has no default;
# without one a single address could take every slot).
DEFAULT_PER_ADDRESS_SHARE = 10
DEFAULT_PING_INTERVAL = 20.0
DEFAULT_PING_TIMEOUT = 20.0
# A repeated warning (out of descriptors, refusals) is one line per this many seconds, never one per event.
WARN_EVERY = 60.0

# Controls, space, DEL, backslash (some servers read it as "/"), and "#" (a fragment has no place in a request).
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\#]")


# The most bytes of request line and headers an upgrade may carry (nginx's default, 4 buffers of 8 KiB, is 32 KiB; a
# browser's is a few KiB, cookies included): past it, 431 (proxy.Proxy.process_request, once the head is read).
# websockets keeps a request's head for the connection's life: at --max-connections connections, a client sending a
# MiB of it made the proxy hold a MiB each, outside the per-connection budget ...
MAX_REQUEST_HEAD = 64 * 1024
# ... and the bytes a socket may send before its request is read whole: that head, its line ends, and a read more
# (proxy.READ_CAP). websockets reads up to 128 header lines of 8 KiB, 1 MiB, before it gives up on a request: a head
# that went on without end (a slow loris's) held that much of the proxy's memory to the handshake's deadline, 15 s,
# for each of the tenth of the open-file limit of sockets allowed to be reading one. Past it, 431 as the bytes come.
MAX_HEAD_READ = MAX_REQUEST_HEAD + 16 * 1024


class BadTarget(ValueError):
    """A request target that is not a plain origin-form path (and query)."""


MAX_DECODES = 8  # percent-decodings of a request path looked through for a dot segment (`%25252e`: three)


def _climbs(path: str) -> bool:
    """Whether a path holds a dot segment ("." or "..") in a form some server behind the proxy reads as one: plain or
    percent-encoded (`%2e%2e`), encoded more than once (`%252e%252e`: a framework that decodes again), beside an
    encoded slash or backslash (`..%2f`, `..%5c`: decoded before routing), or with a path parameter or a NUL after
    it (`..;`, Tomcat and Spring drop the parameter; `..%00`, C code stops at the NUL). A path that is still
    percent-encoded after MAX_DECODES decodings is taken for one too."""
    decoded = path
    for _ in range(MAX_DECODES):
        if "%" not in decoded or (again := unquote(decoded)) == decoded:
            break
        decoded = again
    else:  # a path still encoded after that many decodings is no client's (and decoding on costs a pass each)
        return "%" in decoded and unquote(decoded) != decoded
    for segment in decoded.replace("\\", "/").split("/"):
        if segment.split(";", 1)[0].split("\0", 1)[0] in (".", ".."):
            return True
    return False


def upstream_url(upstream: str, target: str) -> str:
    """The URL to connect to for a client's request target: the configured upstream's scheme, host, port and base
    path, then the target's path and query. Only origin-form targets pass (RFC 9112 §3.2.1: "/" path ["?" query]);
    anything else (`//host/ws`, `@host:9000/ws`, `ws://host/ws`, a backslash, a control character, a dot segment
    that would climb out of the base path, in any form a server decodes: `_climbs`) raises BadTarget, so no request
    can choose where the proxy connects. A target of exactly "/" means the upstream's own path."""
    if not target.startswith("/") or target.startswith("//") or not target.isascii() or _UNSAFE.search(target):
        raise BadTarget("the request target must be a path starting with a single '/'")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or parts.fragment:
        raise BadTarget("the request target names a scheme or host")
    if _climbs(parts.path):
        raise BadTarget("the request target has a dot segment")
    base = urlsplit(upstream)
    path = (base.path or "/") if parts.path == "/" else base.path.rstrip("/") + parts.path
    return urlunsplit((base.scheme, base.netloc, path, parts.query, ""))


# --record scrubs a connection's own credentials from its frames with matchers built for them (redact.Secrets: every
# form and every run of each), which cost ~20 ms and ~1.2 MiB for a 1 KB JWT and grow with their size: a client that
# sent 8 KB each of Authorization, Cookie, subprotocol and query held the event loop over a second per connection and
# kept ~20 MiB. A connection whose credentials (as credentials_of finds them, all forms) pass this many characters is
# forwarded and judged, but not recorded (a line a minute says how many).
MAX_RECORDED_CREDENTIALS = 8 * 1024


# JWTs read for the user they name, per connection (or request): a client that packed its 64 KiB of head with a
# thousand `jwt.` subprotocols, or a query of a thousand tokens, had each one decoded (PyJWT, ~70 us each): 100 ms and
# more of the event loop per handshake, every other user's relay stalled meanwhile. A client's own few (its
# Authorization, a subprotocol, a query token) are read; any past these are digested as they come, as any other
# credential is.
MAX_JWT_USERS = 4


def credentials_identity(headers: dict[str, str], subprotocols: Sequence[str] = (), path: str = "") -> str:
    """Who a connection is, as far as a resume is concerned (identity_of, without whether a claim named it)."""
    return identity_of(headers, subprotocols, path)[0]


def identity_of(headers: dict[str, str], subprotocols: Sequence[str] = (), path: str = "") -> tuple[str, bool]:
    """Who a connection is, as far as a resume is concerned: a digest of its credentials (never the credentials
    themselves, which are never kept or logged): Authorization, Cookie, the offered subprotocols (`jwt.<token>`) and
    the query parameters that carry a credential (`?access_token=`, an opaque `?t=`). Users who authenticate by a
    subprotocol or the query string all had one identity, so one could resume another's run. A JWT stands for the
    user it names (jwt_user), the first MAX_JWT_USERS of them. With it, whether a JWT's claim (read unverified) named
    the user: anyone can write such a claim, so the identity is only a claim until the server accepts the connection
    (LiveConnection.confirm); a digest of the credentials as they are is the credentials' holder's."""
    h = hashlib.sha256()
    left = MAX_JWT_USERS
    claimed = False

    def user_of(token: str) -> str | None:
        nonlocal left, claimed
        if token.count(".") != 2 or left <= 0:  # (no JWT, or past the bound: digested as it is)
            return None
        left -= 1
        user = jwt_user(token)
        claimed = claimed or user is not None
        return user

    for name in ("authorization", "cookie"):
        for k, v in headers.items():
            if k.lower() == name:
                scheme, _, credential = v.partition(" ")
                user = user_of(credential.strip()) if name == "authorization" and scheme.lower() == "bearer" else None
                h.update(f"{name}\0{v if user is None else user}\0".encode("utf-8", "replace"))
    for p in subprotocols:
        user = None
        if p.startswith("jwt.") and left > 0:  # its token as it is or base64url-encoded: one of the bound's reads
            left -= 1
            user = subprotocol_user(p[4:])
            claimed = claimed or user is not None
        h.update(f"subprotocol\0{p if user is None else user}\0".encode("utf-8", "replace"))
    for raw, value in redact.query_credentials(path):
        user = user_of(value)
        h.update(f"query\0{raw if user is None else user}\0".encode("utf-8", "replace"))
    return h.hexdigest()[:32], claimed


def jwt_user(token: str) -> str | None:
    """The user a JWT names (its `iss` and `sub` claims, read without its signature: the proxy holds no key), or None
    when `token` is no JWT naming one. A user's refreshed token (a new `iat`, `exp`, `jti`), or one minted per
    connection, names the same user: a resume under it is that user's, where the raw token's digest made it another
    identity's (the run's events another user's, R8, and the parked chat lost). Unverified is enough for what the
    identity is for, pairing a resume with the chat it continues, once the server has accepted the connection: a token
    forged to name another user is refused by the server, at the handshake or after it (AUTH_FAILED, a close of 1008,
    4401 or 4403), and until the server spoke the proxy binds nothing of the user to the connection (LiveConnection.
    confirm); a server that verifies nothing has no users to tell apart."""
    claims = jwt_claims(token) or {}
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        return None
    iss = claims.get("iss")
    return f"jwt\0{iss if isinstance(iss, str) else ''}\0{sub}"


def subprotocol_user(value: str) -> str | None:
    """The user a `jwt.<token>` subprotocol names (jwt_user): its token as it is, or base64url-encoded, the form
    docs/protocol.md gives for browsers and chatprobe's own clients send (`--auth subprotocol`). Read as it is only, the
    encoded form was no JWT, and the raw subprotocol's digest was the identity: a client whose token was minted anew
    for its reconnection (a new `iat`, crossing a second) resumed as another user, the run's events there another
    user's (R8) and its recording's connections labelled as two users'."""
    user = jwt_user(value)
    if user is None and (token := redact.subprotocol_jwt(value)) is not None:
        user = jwt_user(token)
    return user


class UpstreamTls:
    """Says why the upstream's TLS failed, in the log (WARNING), once until the reason changes, on either side of the
    proxy: a 502 and a `tls_error` count say only that it failed, and an unknown CA, an expired certificate or a client
    certificate the upstream wants are each the operator's to fix. The reason is the clients' (transports.base.
    tls_reason), with what to give named by the proxy's own flags; never a credential (OpenSSL's words, file names)."""

    __slots__ = ("said",)

    def __init__(self) -> None:
        self.said = ""

    def failed(self, kind: str, reason: str) -> None:
        if kind != "tls_error":
            return
        reason = tls_advice_as(reason, "upstream-")
        if reason != self.said:
            self.said = reason
            log.warning("the upstream's TLS failed: %s (502 to the clients; said again when the reason changes)",
                        redact.clean(reason, 400))


async def drain_wait(done: Awaitable[Any], timeout: float, interrupted: asyncio.Event | None) -> None:
    """The drain's wait, either side's: until `done` (every connection closed), `timeout` seconds, or `interrupted`
    (a second signal), whichever comes first."""
    waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(done)]
    if interrupted is not None:
        waits.append(asyncio.ensure_future(interrupted.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


def parse_ip(text: str | None) -> IPAddress | None:
    """An address as a socket or X-Forwarded-For gives it; IPv4-mapped IPv6 becomes IPv4; None if not one."""
    if not text:
        return None
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_trusted(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """--trusted-proxy CIDRs (or bare addresses); ValueError names the bad one."""
    nets = []
    for v in values:
        try:
            nets.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{v!r} is not an address or CIDR (e.g. 10.0.0.0/8, 192.0.2.7, fd00::/8)") from None
    return tuple(nets)


MAX_FORWARDED_HOPS = 32  # X-Forwarded-For hops walked (proxies in front of this one: a few)


def client_address(peer: str | None, forwarded_for: list[str], trusted: tuple[IPNetwork, ...]) -> IPAddress | None:
    """Who the client is: the socket's peer, or, when that peer is a trusted proxy, the rightmost X-Forwarded-For
    hop that is not itself trusted (as nginx's real_ip_recursive). Hops left of it were written by the client and
    prove nothing; a hop that is not an address stops the walk at the last good one."""
    addr = parse_ip(peer)
    if addr is None or not _trusted(addr, trusted):
        return addr
    hops = [hop for value in forwarded_for for hop in value.split(",")]
    # The rightmost MAX_FORWARDED_HOPS only: 64 kB of trusted hops cost 20-50 ms a handshake to walk.
    for hop in reversed(hops[-MAX_FORWARDED_HOPS:]):
        ip = parse_ip(hop)
        if ip is None:
            break
        addr = ip
        if not _trusted(ip, trusted):
            break
    return addr


def trusted_peer(peer: str | None, trusted: tuple[IPNetwork, ...]) -> bool:
    """Whether a socket's peer is a --trusted-proxy (its X-Forwarded-For is believed)."""
    addr = parse_ip(peer)
    return addr is not None and _trusted(addr, trusted)


def idle_key(peer: str | None, trusted: tuple[IPNetwork, ...]) -> str | None:
    """The limit key a trusted proxy's kept-alive connection holds its slot under between two requests (None for a
    peer that is not a --trusted-proxy: its connection is its own, requests or none). Between requests it carries no
    user's: counted in --max-connections, in no client's --max-connections-per-ip (nginx's limit_conn counts a
    connection only while a request of it is being processed). Kept under its last client, a pool of connections a
    load balancer keeps alive held each user to the idle connections that last carried it: a user who had used that
    many of them was refused 503 with nothing in flight."""
    addr = parse_ip(peer)
    return f"{limit_key(addr)} (idle)" if addr is not None and _trusted(addr, trusted) else None


def _trusted(ip: IPAddress, trusted: tuple[IPNetwork, ...]) -> bool:
    return any(ip.version == net.version and ip in net for net in trusted)


def limit_key(ip: IPAddress | None) -> str:
    """What the per-address cap counts by: an IPv4 address, or an IPv6 /64 (one host usually holds a whole /64,
    so counting single IPv6 addresses would let it open a connection from each)."""
    if ip is None:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def open_file_limit() -> int | None:
    """The soft RLIMIT_NOFILE, None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def accept_batch(nofile: int | None) -> int:
    """The listen backlog for an open-file limit, which is also how many sockets asyncio accepts in one go: a
    thirty-second of the limit, from 16 up to asyncio's default 100 (reached at 3,200 descriptors)."""
    if nofile is None:
        return MAX_ACCEPT_BATCH
    return max(16, min(MAX_ACCEPT_BATCH, nofile // 32))


def connections_for_fds(nofile: int | None) -> int:
    """The most proxied connections `nofile` descriptors carry with headroom (0 when it carries none)."""
    if nofile is None:
        return UNLIMITED_DEFAULT_CONNECTIONS
    return max(0, (nofile - HEADROOM_FDS - ACCEPT_TURNS * accept_batch(nofile) - nofile // 10) // 2)


def handshake_budget(nofile: int | None) -> int:
    """Sockets held at once still reading their request (the tenth of the open-file limit kept free for them, at
    least 8; with no limit, UNLIMITED_DEFAULT_CONNECTIONS): past it FrontDoor cuts one (handshake_began)."""
    if nofile is None:
        return UNLIMITED_DEFAULT_CONNECTIONS
    return max(8, nofile // 10)


def default_per_address(max_connections: int) -> int:
    return max(1, max_connections // DEFAULT_PER_ADDRESS_SHARE)


class ConnectionSlots:
    """At most `total` connections at once, and at most `per_address` for one limit key (nginx's limit_conn)."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self.open = 0
        self.by_key: dict[str, int] = {}  # only keys holding a slot: bounded by `total`

    def acquire(self, key: str, *, limited: bool = True) -> str | None:
        """Take a slot for `key`; None if taken, else the refusal reason. Not `limited`: no per-address cap (a trusted
        proxy's idle kept-alive connection, FrontDoor.rekey), the total still counted."""
        if self.open >= self.total:
            return "over_capacity"
        held = self.by_key.get(key, 0)
        if limited and held >= self.per_address:
            return "per_address_limit"
        self.open += 1
        self.by_key[key] = held + 1
        return None

    def release(self, key: str) -> None:
        held = self.by_key.get(key, 0)
        if held <= 1:
            self.by_key.pop(key, None)
        else:
            self.by_key[key] = held - 1
        self.open = max(0, self.open - 1)


class Throttled:
    """A warning logged at most once per `every` seconds per key, with the count of the ones held back (to `logger`,
    the proxy's unless told)."""

    def __init__(self, every: float = WARN_EVERY, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger = log) -> None:
        self.every = every
        self.clock = clock
        self.logger = logger
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warn(self, key: str, message: str, *args: Any) -> None:
        now = self.clock()
        if now < self._next.get(key, 0.0):
            self._held[key] = self._held.get(key, 0) + 1
            return
        held = self._held.pop(key, 0)
        self._next[key] = now + self.every
        self.logger.warning(message + (f" ({held} more since the last such line)" if held else ""), *args)


_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class AcceptErrors:
    """An event-loop exception handler for asyncio's "socket.accept() out of system resource": asyncio already stops
    accepting for a second and retries (the open connections go on); this turns its traceback-a-second into one
    warning line a minute. Everything else goes to the handler that was there before."""

    def __init__(self, previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], Any] | None,
                 throttle: Throttled) -> None:
        self.previous = previous
        self.throttle = throttle

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _OUT_OF_RESOURCES and "accept" in str(context.get("message")):
            limit = open_file_limit()
            self.throttle.warn(
                "accept", "out of %s accepting a connection (%s; open-file limit %s): new connections wait in the "
                "listen backlog, accepting again in a second; open connections are unaffected",
                "file descriptors" if exc.errno in (errno.EMFILE, errno.ENFILE) else "memory",
                errno.errorcode.get(exc.errno or 0, exc.errno), "unlimited" if limit is None else limit)
            return
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)


def install_accept_errors(loop: asyncio.AbstractEventLoop, throttle: Throttled) -> None:
    if not isinstance(loop.get_exception_handler(), AcceptErrors):
        loop.set_exception_handler(AcceptErrors(loop.get_exception_handler(), throttle))


def unreadable_status(cause: BaseException | None) -> tuple[HTTPStatus, str]:
    """The answer to bytes websockets could not read as a request: 501 for a transfer coding (RFC 9112 §6.1: one a
    server does not understand), 400 for the rest (a request line that is no request line, a line ended by a bare LF,
    a body, a method or path that is not ASCII). The reason is the proxy's own words, never the client's bytes."""
    if isinstance(cause, NotImplementedError):
        return HTTPStatus.NOT_IMPLEMENTED, "a request with a Transfer-Encoding"
    if isinstance(cause, EOFError):  # the line ended, but with LF alone (the reader is not at its end)
        return HTTPStatus.BAD_REQUEST, "a line that does not end with CRLF"
    return HTTPStatus.BAD_REQUEST, "no HTTP/1.1 request a WebSocket upgrade could be"


class AnsweringProtocol(ServerProtocol):
    """websockets' server side, answering what it cannot read as an HTTP request as a reverse proxy does (nginx:
    400, then the close): websockets answers a line or headers too long (414, 431) and closes on anything else
    unanswered, which a client, a load balancer's health check or an operator's curl saw as a dropped connection,
    the proxy's fault. A request cut short by the client's end is still not answered (no one reads it)."""

    def send_eof(self) -> None:
        exc = self.handshake_exc
        # websockets' parse(), failing to read a request (never a response sent, nor a 414/431: those set no
        # InvalidMessage), sets this and ends the connection: the answer goes out first.
        if (self.state is State.CONNECTING and not self.eof_sent and isinstance(exc, InvalidMessage)
                and not self.reader.eof and exc.__cause__ is not None):
            status, why = unreadable_status(exc.__cause__)
            self.writes.append(self.reject(status, f"Failed to open a WebSocket connection: {why}.\n").serialize())
        super().send_eof()


@dataclass
class FrontDoor:
    """The proxy's admission settings and the slots they guard.

    ping_interval/ping_timeout: keepalive on both sides; a peer that answers no ping within
    ping_interval + ping_timeout (+ the close timeout) is dropped. None: no keepalive."""

    max_connections: int
    max_per_address: int
    trusted: tuple[IPNetwork, ...] = ()
    ping_interval: float | None = DEFAULT_PING_INTERVAL
    ping_timeout: float | None = DEFAULT_PING_TIMEOUT
    slots: ConnectionSlots = field(init=False)
    throttle: Throttled = field(default_factory=Throttled)
    _holders: set[asyncio.Task[None]] = field(default_factory=set)
    admitted: set[Any] = field(default_factory=set)  # client connections holding a slot (to cut at shutdown)
    moved: dict[Any, str] = field(default_factory=dict)  # of those, the ones whose slot moved to another key (rekey)
    # Upstream connections open (to cut at shutdown): one outlives its client's socket while its relay closes it.
    upstreams: set[Any] = field(default_factory=set)
    sockets: dict[str, int] = field(default_factory=dict)  # open sockets by untrusted peer, handshake or not
    sink: Any = None  # where socket-level refusals are counted (start_proxy sets it)
    max_handshakes: int = 0  # sockets still reading their request at once (0: handshake_budget of the open-file limit)
    # Those sockets, by limit key (trusted peers: ""), each key's oldest first, with when each began (time.monotonic);
    # `handshakes` their number.
    reading: dict[str, dict[Any, float]] = field(default_factory=dict)
    handshakes: int = 0

    def __post_init__(self) -> None:
        self.slots = ConnectionSlots(self.max_connections, self.max_per_address)
        if not self.max_handshakes:
            self.max_handshakes = handshake_budget(open_file_limit())

    @classmethod
    def defaults(cls, **overrides: Any) -> FrontDoor:
        """Limits derived from this process's open-file limit (a floor of one connection)."""
        total = overrides.pop("max_connections", None) or max(1, connections_for_fds(open_file_limit()))
        per = overrides.pop("max_per_address", None) or default_per_address(total)
        return cls(total, per, **overrides)

    # -- admission --
    @staticmethod
    def count_refusal(sink: Any, reason: str) -> None:
        """`chatprobe_proxy_refused_connections_total{reason}` + 1."""
        metrics = getattr(sink, "metrics", None)
        if metrics is not None and hasattr(metrics, "proxy_refused"):
            metrics.proxy_refused.labels(sink.target, sink.source, reason).inc()

    def refuse(self, sink: Any, reason: str, peer: str | None = None) -> None:
        """Count a refusal and say so, a line a minute."""
        self.count_refusal(sink, reason)
        if reason == "bad_request":
            self.throttle.warn(reason, "refused an upgrade the proxy does not pass on (from %s): a request target "
                               "that is not a plain path (the proxy only ever connects to --upstream), a malformed "
                               "Sec-WebSocket-Protocol, a header sent twice that is sent once, a handshake websockets "
                               "refuses or bytes that are no HTTP request", peer or "unknown")
        elif reason == "over_capacity":
            self.throttle.warn(reason, "answered 503: all %d connections (--max-connections) are in use",
                               self.max_connections)
        else:
            self.throttle.warn(reason, "answered 503 to %s: it holds %d connections (--max-connections-per-ip); "
                               "behind a load balancer, name it with --trusted-proxy", peer or "unknown",
                               self.max_per_address)

    def admit(self, conn: Any, key: str, sink: Any) -> str | None:
        """Give `conn` a slot until its socket closes; None if admitted, else the refusal reason (counted)."""
        reason = self.slots.acquire(key)
        if reason is not None:
            self.refuse(sink, reason, key)
            return reason
        self._gauge(sink, 1)
        self.admitted.add(conn)
        holder = asyncio.ensure_future(self._hold(conn, key, sink))
        self._holders.add(holder)
        holder.add_done_callback(self._holders.discard)
        return None

    def rekey(self, conn: Any, old: str, new: str, sink: Any, *, limited: bool = True) -> str | None:
        """`conn`'s slot (admitted under `old`) moved to limit key `new`: the HTTP side's kept-alive connection from a
        trusted proxy carrying another client's request, or (not `limited`) idle again between two (idle_key). None
        if moved; else the refusal reason (counted: `new` holds its --max-connections-per-ip already), `conn` keeping
        its slot under `old`."""
        if old == new:
            return None
        self.slots.release(old)
        reason = self.slots.acquire(new, limited=limited)
        if reason is not None:
            self.slots.acquire(old)  # (the slot it freed just now: taken back, never refused)
            self.refuse(sink, reason, new)
            return reason
        self.moved[conn] = new
        return None

    async def _hold(self, conn: Any, key: str, sink: Any) -> None:
        try:
            await conn.wait_closed()
        finally:
            self.admitted.discard(conn)
            self.slots.release(self.moved.pop(conn, key))
            self._gauge(sink, -1)
            # The client's handshake failed after the upstream was opened for it (the handler, which closes the
            # upstream, never ran): close it here, or it would leak a descriptor and an upstream session.
            upstream = getattr(conn, "upstream", None)
            if upstream is not None and not getattr(conn, "handled", False):
                try:
                    async with asyncio.timeout(2.0):
                        await upstream.close(1001, "the client is gone")
                except (TimeoutError, OSError):
                    upstream.transport.abort()

    @staticmethod
    def _gauge(sink: Any, delta: int) -> None:
        metrics = getattr(sink, "metrics", None)
        if metrics is not None and hasattr(metrics, "proxy_connections"):
            metrics.proxy_connections.labels(sink.target, sink.source).inc(delta)

    @property
    def max_sockets_per_address(self) -> int:
        """Sockets one untrusted peer may hold, handshakes included: twice its connection share, so a client at its
        share still gets a clean 503, while a flood of sockets that never finish a handshake (each one a file
        descriptor until the handshake times out) is cut at accept and cannot starve everyone else."""
        return 2 * self.max_per_address

    def socket_opened(self, peername: Any) -> str | None:
        """A socket accepted from `peername`: the key it counts under, "" if not counted (a trusted proxy), or None
        if the peer is over its socket share (cut it)."""
        ip = parse_ip(peername[0] if isinstance(peername, tuple) and peername else None)
        if ip is None or _trusted(ip, self.trusted):
            return ""
        key = limit_key(ip)
        held = self.sockets.get(key, 0)
        if held >= self.max_sockets_per_address:
            self.count_refusal(self.sink, "per_address_limit")
            self.throttle.warn("sockets", "cut sockets from %s at accept: it holds %d (twice "
                               "--max-connections-per-ip), most of them not even through the handshake", key, held)
            return None
        self.sockets[key] = held + 1
        return key

    def handshake_began(self, conn: Any, key: str) -> None:
        """A socket accepted, its request still to read. Past max_handshakes such sockets, the one waiting longest of
        the key (address) holding the most is cut: silent sockets from many addresses, each within its share, would
        otherwise take every descriptor, and no one else could connect (EMFILE) until their handshakes timed out. A
        real client's request follows its connect at once; an address holding one such socket loses it last. A trusted
        proxy's sockets (key "") weigh as one address's one: they are its many clients', each known only once its
        request is read, and two of them mid-handshake made it the heaviest, cut for every silent socket from an
        address of its own. Between keys of equal weight, the one whose socket has waited longest loses it."""
        if self.handshakes >= self.max_handshakes and self.reading:
            reading = self.reading
            heaviest = max(reading, key=lambda k: (len(reading[k]) if k else 1, -next(iter(reading[k].values()))))
            victim = next(iter(reading[heaviest]))
            self.handshake_ended(victim, heaviest)
            self.throttle.warn("handshakes", "cut a socket of %s still sending no request: %d sockets were waiting "
                               "for theirs (a tenth of the open-file limit), %d of them from that address",
                               heaviest or "a trusted proxy", self.max_handshakes, len(self.reading.get(heaviest, ())) + 1)
            transport = getattr(victim, "transport", None)
            if transport is not None:
                transport.abort()
        self.reading.setdefault(key, {})[conn] = time.monotonic()
        self.handshakes += 1

    def handshake_ended(self, conn: Any, key: str) -> None:
        """The socket's request is read, or it closed (idempotent)."""
        held = self.reading.get(key)
        if held is not None and held.pop(conn, None) is not None:
            self.handshakes -= 1
            if not held:
                del self.reading[key]

    def socket_closed(self, key: str | None) -> None:
        if key:
            held = self.sockets.get(key, 0)
            if held <= 1:
                self.sockets.pop(key, None)
            else:
                self.sockets[key] = held - 1

    def connection_class(self) -> type[ServerConnection]:
        """websockets' ServerConnection, counting each socket per peer from accept to close (see socket_opened)."""
        door = self

        class CountedConnection(BoundedPongs, ServerConnection):
            door_key: str | None = None
            reading_request = False  # counted in door.reading (handshake_began) until its request is read
            head_read = 0  # bytes read of it, while it is read
            heard = False  # a byte of a request came
            judged = False  # its refusal is counted

            def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
                # websockets' serve() builds a ServerProtocol and has no option for another class: this one answers
                # requests websockets closes on unanswered (AnsweringProtocol). Nothing is parsed yet, and only a
                # method's lookup changes (no state).
                if type(protocol) is ServerProtocol:
                    protocol.__class__ = AnsweringProtocol
                super().__init__(protocol, *args, **kwargs)

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                self.door_key = door.socket_opened(transport.get_extra_info("peername"))
                if self.door_key is None:
                    if isinstance(transport, asyncio.Transport):
                        transport.abort()
                    return
                self.reading_request = True
                door.handshake_began(self, self.door_key)
                # (a callback, not a test in data_received: nothing added per read of an open connection)
                self.request_rcvd.add_done_callback(self._request_read)

            def data_received(self, data: bytes) -> None:
                self.heard = self.heard or bool(data)
                if self.reading_request:
                    self.head_read += len(data)
                    if self.head_read > MAX_HEAD_READ:
                        self._head_too_large()
                        return
                super().data_received(data)
                self._unparsed()

            def _head_too_large(self) -> None:
                """431 and the close, as websockets answers a header line too long, for a request whose head goes
                on past MAX_HEAD_READ: what came is not parsed (nor what comes after)."""
                protocol = self.protocol
                if protocol.state is State.CONNECTING and protocol.handshake_exc is None:
                    protocol.handshake_exc = SecurityError(f"request head over {MAX_REQUEST_HEAD // 1024} KiB")
                    protocol.send_response(protocol.reject(
                        HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Failed to open a WebSocket connection: the "
                        f"request's head is over {MAX_REQUEST_HEAD // 1024} KiB.\n"))
                    self.send_data()
                    self._unparsed()

            def _request_read(self, _: Any = None) -> None:
                if self.reading_request:
                    self.reading_request = False
                    door.handshake_ended(self, self.door_key or "")

            def eof_received(self) -> None:
                super().eof_received()
                self._unparsed()

            def _unparsed(self, ended: bool = False) -> None:
                """websockets could not read an HTTP request in what came (garbage for a request line, a line or
                headers too long: it answers 414 or 431, or closes; or the client's end came halfway through one),
                so the proxy's process_request never sees it: counted here, as every refused upgrade is. `ended`:
                the socket closed with a request begun and never read whole (its handshake deadline cut a client
                that sent a byte at a time, or one that went quiet halfway: as a request cut short by the client's
                end). A socket that sent nothing before its end (a load balancer's TCP check) is no request."""
                if (not self.judged and self.heard and self.request is None
                        and (ended or self.protocol.handshake_exc is not None)):
                    self.judged = True
                    peer = self.transport.get_extra_info("peername") if self.transport is not None else None
                    door.refuse(door.sink, "bad_request", peer[0] if isinstance(peer, tuple) and peer else None)

            def connection_lost(self, exc: Exception | None) -> None:
                self._request_read()
                self._unparsed(ended=True)
                door.socket_closed(self.door_key)
                self.door_key = None
                super().connection_lost(exc)

        return CountedConnection

    def upstream_opened(self, ws: Any) -> None:
        """`ws`, an upstream connection, is cut by cut_all until its socket closes (websockets' connection_lost_waiter),
        even once its client's socket closed: a client that left while the proxy's writes to a stuck upstream backed
        up took its upstream out of cut_all's reach, and the shutdown waited a second grace for it."""
        self.upstreams.add(ws)
        ws.connection_lost_waiter.add_done_callback(lambda _: self.upstreams.discard(ws))

    def cut_all(self) -> None:
        """Abort every admitted connection and its upstream, and every upstream still open, at once (the end of a
        shutdown's grace period)."""
        for ws in [*self.admitted, *(getattr(c, "upstream", None) for c in self.admitted), *self.upstreams]:
            transport = getattr(ws, "transport", None)
            if transport is not None:
                transport.abort()

    def init_metrics(self, sink: Any) -> None:
        """Every refusal reason at 0 from the start, so rate() and alerts see the series before the first one."""
        metrics = getattr(sink, "metrics", None)
        if metrics is not None and hasattr(metrics, "proxy_refused"):
            for reason in REFUSAL_REASONS:
                metrics.proxy_refused.labels(sink.target, sink.source, reason)
            metrics.proxy_connections.labels(sink.target, sink.source)


class HeldBack:
    """How long the proxy's writes to one client have been backed up (asyncio's pause_writing to resume_writing), in
    all since the connection opened: set on pause and resume (never per frame), read when a chat is judged
    (proxy.HELD_BACK_MIN). Kept by the client's connection on either side of the proxy."""

    __slots__ = ("since", "total", "resumed_at")

    def __init__(self) -> None:
        self.since: float | None = None  # paused since then (None: not paused now)
        self.total = 0.0  # the pauses ended so far
        self.resumed_at = float("-inf")  # when the last one ended

    def paused(self, now: float) -> None:
        if self.since is None:
            self.since = now

    def resumed(self, now: float) -> None:
        if self.since is not None:
            self.total += now - self.since
            self.since = None
            self.resumed_at = now

    def upto(self, now: float) -> float:
        """The time held back in all up to `now` (the pause under way included)."""
        return self.total + (now - self.since if self.since is not None else 0.0)

    def within(self, now: float, span: float) -> bool:
        """Whether writing is paused at `now`, or was less than `span` ago (what it held back is still being read)."""
        return self.since is not None or now - self.resumed_at < span


class NotesHeldWrites:
    """Mixed into a client connection's asyncio protocol on either side of the proxy (before the protocol class):
    asyncio calls pause_writing and resume_writing as the write buffer to the client passes its high-water mark and
    drains below its low one; while paused, the relay's send waits and the upstream is read no further, so a chat's
    timing is the client's (proxy.HELD_BACK_MIN). Noted in `held` (set where the connection is made), never per
    frame."""

    held: HeldBack

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        self.held.paused(time.monotonic())

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        self.held.resumed(time.monotonic())
