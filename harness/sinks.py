"""Where results leave the harness: a Sink receives every verdict and connection outcome of a driver.

Drivers (runner, monitor, proxy, Locust user) call these hooks; sinks (metrics, console, JSON, JUnit) are
handed in from outside, so harness/ never imports monitors/.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .checker import ChatResult
    from .events import Event, Violation

# Values of the `result` label of chatprobe_connections_total (docs/metrics.md).
CONNECTION_RESULTS = ("ok", "refused", "auth_failed", "timeout", "tls_error", "protocol_error")
RECONNECT_RESULTS = ("resumed", "lost")
# The `result` label of chatprobe_reconnect_attempts_total: each connection opened to reconnect a chat connected or not.
RECONNECT_ATTEMPT_RESULTS = ("connected", "failed")
# Why a watched chat was not judged (docs/metrics.md, chatprobe_chats_unjudged_total{reason}): the proxy stopped while
# it was in flight or kept for its user's resume or resend, or the proxy's bounds on chats so kept were full when the
# server cut it. Nothing showed the server failed it; no outcome is counted for it.
UNJUDGED_REASONS = ("proxy_stopped", "parking_full")
PROXY_STOPPED, PARKING_FULL = UNJUDGED_REASONS


def refused_upgrade(status: int) -> tuple[str, str]:
    """A WebSocket upgrade answered with `status` (not 101) as the connection result it is and a reason: what every
    WebSocket client counts live (transports/websocket, picows_ws), and `chatprobe check` of a HAR's socket."""
    if status in (401, 403):
        return "auth_failed", f"HTTP {status} at the WebSocket handshake"
    if status == 503:
        return "refused", "HTTP 503: the server refused the connection"
    return "protocol_error", f"HTTP {status} at the WebSocket handshake{_NOT_FOUND if status == 404 else ''}"


def refused_response(status: int, content_type: str) -> tuple[str, str] | None:
    """An answer to a request for an event stream as the connection failure it is (a connections_total result and
    a reason), or None when it opens one: the SSE transport's judgement live (transports/sse.classify_status, which
    also names where a redirect points), and `chatprobe check`'s of a HAR entry's answer."""
    if status in (401, 403):
        return "auth_failed", f"HTTP {status} from the SSE endpoint"
    if status == 503:
        return "refused", "HTTP 503: the server refused the request"
    if not 200 <= status < 300:
        return "protocol_error", f"HTTP {status} from the SSE endpoint{_NOT_FOUND if status == 404 else ''}"
    media = content_type.partition(";")[0].strip().lower()
    if media != _EVENT_STREAM:
        said = f"content type {content_type or '(none)'!r}, not {_EVENT_STREAM}"
        if media == AGUI_PROTO:
            # AG-UI's binary encoding: @ag-ui/encoder answers in it whenever the request's Accept admits it (`*/*`
            # too). Its frames are protobuf: say so, rather than leave a user to wonder what the stream was.
            said += (" (AG-UI's protobuf encoding, which chatprobe does not read: it asks for text/event-stream; an "
                     "Accept header of your own that admits the protobuf type makes such a server choose it)")
        return "protocol_error", said
    return None


_EVENT_STREAM = "text/event-stream"
AGUI_PROTO = "application/vnd.ag-ui.event+proto"  # AG-UI's protobuf encoding (@ag-ui/proto's AGUI_MEDIA_TYPE)
# A 404 is mostly a wrong path in the URL given (a profile's `path` is appended only to a URL without one).
_NOT_FOUND = ": nothing is served at the URL's path (is it the chat endpoint's?)"


class Sink:
    """Every hook is optional; override what you need."""

    def chat_started(self, scenario: str) -> None: ...

    def event_received(self, scenario: str, event: "Event") -> None: ...

    def chat_finished(self, result: "ChatResult") -> None: ...

    def chat_abandoned(self, scenario: str) -> None: ...

    def chat_dropped(self, scenario: str) -> None:
        """An open-model chat fell due while max_in_flight chats were in flight: never started, counted."""

    def client_rejected(self, result: "ChatResult") -> None:
        """A watched chat (the proxy) ended because the server rejected what the client sent: not one of the
        server's outcomes. By default it is a verdict like any other."""
        self.chat_finished(result)

    def chat_unjudged(self, scenario: str, reason: str) -> None:
        """A watched chat (the proxy, `check` of its recording) that will get no verdict: the proxy stopped with it,
        or had no room to keep it for its user's resume (`reason`, one of UNJUDGED_REASONS). Not one of the server's
        outcomes: started = outcomes + in flight + client rejections + unjudged."""

    def connection_attempt(self, scenario: str, result: str) -> None: ...

    def connection_violation(self, scenario: str, violation: "Violation") -> None:
        """A violation of a connection's own, reported at its end: another user's event (R8) or a malformed frame
        (R12) that came after its last chat was judged, with no chat after it to be told
        (checker.ConnectionChecker.ended). Counted with its rule, never as a chat."""

    def reconnect(self, scenario: str, result: str) -> None: ...

    def run_finished(self, success: bool) -> None: ...


class Fanout(Sink):
    def __init__(self, sinks: Iterable[Sink]) -> None:
        # A Fanout among them is flattened into this one (the runner's fans out to the CLI's): the same sinks in the
        # same order, one loop per hook instead of one per level (hooks run for every chat).
        self.sinks: list[Sink] = []
        for s in sinks:
            if type(s) is Fanout:
                self.sinks.extend(s.sinks)
            elif s is not None:
                self.sinks.append(s)

    def chat_started(self, scenario: str) -> None:
        for s in self.sinks:
            s.chat_started(scenario)

    def event_received(self, scenario: str, event: "Event") -> None:
        for s in self.sinks:
            s.event_received(scenario, event)

    def chat_finished(self, result: "ChatResult") -> None:
        for s in self.sinks:
            s.chat_finished(result)

    def chat_abandoned(self, scenario: str) -> None:
        for s in self.sinks:
            s.chat_abandoned(scenario)

    def chat_dropped(self, scenario: str) -> None:
        for s in self.sinks:
            s.chat_dropped(scenario)

    def client_rejected(self, result: "ChatResult") -> None:
        for s in self.sinks:
            s.client_rejected(result)

    def chat_unjudged(self, scenario: str, reason: str) -> None:
        for s in self.sinks:
            s.chat_unjudged(scenario, reason)

    def connection_attempt(self, scenario: str, result: str) -> None:
        for s in self.sinks:
            s.connection_attempt(scenario, result)

    def connection_violation(self, scenario: str, violation: "Violation") -> None:
        for s in self.sinks:
            s.connection_violation(scenario, violation)

    def reconnect(self, scenario: str, result: str) -> None:
        for s in self.sinks:
            s.reconnect(scenario, result)

    def run_finished(self, success: bool) -> None:
        for s in self.sinks:
            s.run_finished(success)
