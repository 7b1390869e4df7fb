"""What every transport shares: the scheme table, connection settings, TLS, and the classified connection failure."""
from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
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
