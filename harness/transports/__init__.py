"""Transports put a profile's frames on the road: one `Transport` protocol, one scheme table, every wait bounded.

A transport knows nothing of events or rules; it connects, sends JSON, hands each received frame with its
monotonic receipt time to a callback, and classifies connection failures with the `result` values of
docs/metrics.md (refused, auth_failed, timeout, tls_error, protocol_error). WebSocket lives in `websocket.py`,
Server-Sent Events in `sse.py`; `SCHEMES` is the only place a URL scheme is mapped to one of them.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol
from urllib.parse import urlsplit

FrameCallback = Callable[[str | bytes, float], None]
TransportName = Literal["websocket", "sse"]


@dataclass(frozen=True, slots=True)
class Scheme:
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
    """Could not open a usable connection; `kind` is a connections_total result label."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class ConnectSettings:
    url: str
    token: str | None = None
    auth: str = "header"  # header | subprotocol | none
    ca_file: str | None = None
    insecure: bool = False
    connect_timeout: float = 10.0
    max_size: int = 4 * 1024 * 1024
    extra_headers: dict[str, str] = field(default_factory=dict)


def ssl_context(settings: ConnectSettings) -> ssl.SSLContext | None:
    scheme = scheme_of(settings.url)
    if scheme is None or not scheme.secure:
        return None
    ctx = ssl.create_default_context(cafile=settings.ca_file)
    if settings.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Transport(Protocol):
    """What the clients need of a connection, whatever carries it.

    `open()` connects (SSE: prepares; its request is the connection, made by `send`); `send(obj)` sends one frame
    (raises ConnectFailed when sending is connecting and that fails); `run(on_frame)` reads until the connection
    ends and never raises for what a server does; `close()` ends it within a bound; `abort()` drops it as a lost
    network would. After `run` returns: `close_code`, `protocol_error` (an R12 detail when the client dropped the
    connection for what the server sent) and `ended_note` (why, when the transport knows better than "lost").
    """

    connects_on_send: bool
    ended_note: str
    close_code: int | None
    close_reason: str
    protocol_error: str | None

    async def open(self) -> None: ...

    async def send(self, obj: Any) -> None: ...

    async def run(self, on_frame: FrameCallback) -> None: ...

    async def close(self) -> None: ...

    def abort(self) -> None: ...


def make_transport(settings: ConnectSettings) -> Transport:
    """The transport the URL's scheme names in SCHEMES."""
    scheme = scheme_of(settings.url)
    if scheme is not None and scheme.transport == "sse":
        from .sse import SSETransport

        return SSETransport(settings)
    from .websocket import WebSocketTransport

    return WebSocketTransport(settings)
