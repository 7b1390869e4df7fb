"""Transports put a profile's frames on the road: one `Transport` protocol, one scheme table, every wait bounded.

A transport knows nothing of events or rules; it connects, sends JSON, hands each received frame with its
monotonic receipt time to a callback, and classifies connection failures with the `result` values of
docs/metrics.md (refused, auth_failed, timeout, tls_error, protocol_error). WebSocket lives in `websocket.py`,
Server-Sent Events in `sse.py`; `SCHEMES` is the only place a URL scheme is mapped to one of them.
"""
from __future__ import annotations

from typing import Any, Protocol

from .base import (
    SCHEMES,
    ConnectFailed,
    ConnectSettings,
    FrameCallback,
    Scheme,
    TransportName,
    scheme_of,
    schemes_for,
    ssl_context,
)

__all__ = ["SCHEMES", "ConnectFailed", "ConnectSettings", "FrameCallback", "Scheme", "Transport", "TransportName",
           "make_transport", "scheme_of", "schemes_for", "ssl_context"]


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
