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
    LeanClientRefused,
    RecordingHooks,
    Scheme,
    TransportName,
    WebSocketChoice,
    scheme_of,
    schemes_for,
    ssl_context,
)

__all__ = ["SCHEMES", "WEBSOCKET_CLIENTS", "ConnectFailed", "ConnectSettings", "FrameCallback", "LeanClientRefused",
           "RecordingHooks", "Scheme", "Transport", "TransportName", "WebSocketChoice", "make_transport", "scheme_of",
           "schemes_for", "ssl_context", "websocket_client"]


class Transport(Protocol):
    """What the clients need of a connection, whatever carries it.

    `open()` connects (SSE: prepares; its request is the connection, made by `send`); `send(obj)` sends one frame
    (raises ConnectFailed when sending is connecting and that fails); `run(on_frame)` reads until the connection
    ends and never raises for what a server does; `close()` ends it within a bound; `abort()` drops it as a lost
    network would. After `run` returns: `close_code`, `protocol_error` (an R12 detail when the client dropped the
    connection for what the server sent) and `ended_note` (why, when the transport knows better than "lost").
    The recording hooks (`send_chat`, `connect_failed`, `send_failed`, `dropped_by_client`, `stopped_by_client`:
    base.RecordingHooks, no-ops every transport inherits) tell `--record` what the frames do not say; the recorder's
    wrapper overrides them.
    """

    connects_on_send: bool
    ended_note: str
    close_code: int | None
    close_reason: str
    protocol_error: str | None

    @property
    def closing(self) -> bool:
        """The connection takes no more frames: `send` would raise ConnectionError before a byte left (the server's
        close frame came, even in the read still being handed over, or the connection ended)."""
        ...

    async def open(self) -> None: ...

    async def send(self, obj: Any) -> None: ...

    async def run(self, on_frame: FrameCallback) -> None: ...

    async def close(self) -> None: ...

    def abort(self) -> None: ...

    async def send_chat(self, obj: Any, expectations: Any, since: float) -> None: ...

    def connect_failed(self, kind: str, reason: str, answer: ConnectFailed | None = None) -> None: ...

    def send_failed(self, kind: str, reason: str) -> None: ...

    def dropped_by_client(self) -> None: ...

    def stopped_by_client(self) -> None: ...


# The WebSocket clients a ws:// or wss:// URL can be carried by (ConnectSettings.client): picows is the lean one
# (a Cython parser, frames handed over from its protocol callback; no permessage-deflate), websockets the complete
# one (deflate, the sync client, agentsim and the proxy use it too). "auto" takes picows unless compression is on.
WEBSOCKET_CLIENTS = ("picows", "websockets")


def websocket_client(settings: ConnectSettings) -> str:
    """The WebSocket client that carries these settings: the one asked for, else picows when it can, else websockets."""
    if settings.client in WEBSOCKET_CLIENTS:
        return settings.client
    if settings.compression != "none":
        return "websockets"
    try:
        import picows  # noqa: F401
    except ImportError:  # an install without the lean client still works
        return "websockets"
    return "picows"


def make_transport(settings: ConnectSettings) -> Transport:
    """The transport the URL's scheme names in SCHEMES (for WebSocket, the client `websocket_client` picks)."""
    scheme = scheme_of(settings.url)
    if scheme is not None and scheme.transport == "sse":
        from .sse import SSETransport

        return SSETransport(settings)
    if websocket_client(settings) == "picows":
        from .picows_ws import PicowsTransport

        return PicowsTransport(settings)
    from .websocket import WebSocketTransport

    return WebSocketTransport(settings)
