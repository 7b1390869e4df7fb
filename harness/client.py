"""The async chat client: one virtual user's connection, its chats, pings, reconnects and resumes.

It only moves frames: decoding is the profile's, judging is the ChatTracker's, results go to a Sink.
"""
from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import jwt

from .checker import ChatResult, ChatTracker, ConnectionChecker, Expectations, abandon, error_result
from .events import Event, Frame
from .profiles import Profile
from .sinks import Sink
from .transport import ConnectFailed, ConnectSettings, WebSocketTransport, make_transport


class TokenProvider:
    """A fixed token for every user, or an HS256 JWT minted per virtual user (sub = user id)."""

    def __init__(self, token: str | None = None, jwt_secret: str | None = None, ttl: float = 3600) -> None:
        self._token = token
        self._secret = jwt_secret
        self._ttl = ttl

    def __repr__(self) -> str:  # never show a secret
        return "TokenProvider(<redacted>)"

    @property
    def mints(self) -> bool:
        return self._secret is not None

    def for_user(self, user_id: str) -> str | None:
        if self._token is not None:
            return self._token
        if self._secret is not None:
            now = int(time.time())
            return jwt.encode({"sub": user_id, "iat": now, "exp": now + int(self._ttl)}, self._secret, algorithm="HS256")
        return None


@dataclass
class Target:
    """Where and how to connect: URL, profile, auth and TLS, and the short name used as the `target` label."""

    url: str
    profile: Profile
    name: str
    tokens: TokenProvider = field(default_factory=TokenProvider)
    auth: str = "header"
    ca_file: str | None = None
    insecure: bool = False
    no_auth_user_param: bool = False  # agentsim --no-auth: name the user with ?user=

    def settings_for(self, user_id: str, connect_timeout: float) -> ConnectSettings:
        url = self.url
        if self.no_auth_user_param:
            url += ("&" if "?" in url else "?") + f"user={user_id}"
        return ConnectSettings(
            url=url, token=self.tokens.for_user(user_id), auth=self.auth, ca_file=self.ca_file,
            insecure=self.insecure, connect_timeout=connect_timeout,
        )


_chat_ids = itertools.count(1)


def new_tracker(expectations: Expectations, scenario: str, now: float, client_run_id: bool) -> ChatTracker:
    """A chat with fresh thread, message and (when the client names runs) run ids."""
    n = next(_chat_ids)
    return ChatTracker(
        f"c{n}-{uuid.uuid4().hex[:8]}", expectations, now, scenario=scenario,
        thread_id=f"t-{uuid.uuid4().hex[:12]}", message_id=f"m-{uuid.uuid4().hex[:12]}",
        run_id=f"r-{uuid.uuid4().hex[:12]}" if client_run_id else None,
    )


def resume_frame(profile: Profile, tracker: ChatTracker) -> dict | None:
    """The frame that resumes a chat's run after a reconnect, or None when it cannot be resumed."""
    if profile.resume is None or tracker.run_id is None:
        return None
    return profile.build_resume(tracker.run_id, tracker.max_seq or len(tracker.events))


def lost_note_for(transport: object | None, can_resume: bool) -> str:
    """Why a chat ended without its terminal event when the connection went and was not resumed."""
    return getattr(transport, "ended_note", "") or (
        "connection lost mid-run" + ("" if can_resume else " before the run had an id to resume"))


WAKE_ALL = "*"


class FrameRouter:
    """The sans-I/O half of a client connection, shared by the asyncio Session and the gevent client.

    `on_frame` decodes one frame with the profile, routes events to their chats through the ConnectionChecker and
    says what the I/O layer must do: which chat to wake (a chat id, WAKE_ALL or None) and what to reply (a ping).
    """

    def __init__(self, profile: Profile, checker: ConnectionChecker, sink: Sink, scenario: str) -> None:
        self.profile = profile
        self.checker = checker
        self.sink = sink
        self.scenario = scenario
        self.answered = False  # the server spoke on this connection (welcome, event or AUTH_FAILED)
        self.auth_failed: Frame | None = None
        self.resume_unknown: set[str] = set()

    def new_connection(self) -> None:
        self.answered = False
        self.auth_failed = None

    def on_frame(self, message: str | bytes, at: float) -> tuple[str | None, dict | None]:
        """(whom to wake, what to send back) for one received frame."""
        decoded = self.profile.decode(message, at)
        if isinstance(decoded, Event):
            chat = self.checker.route(decoded)
            self.sink.event_received(self.scenario, decoded)
            self.answered = True
            return (chat.chat_id if chat is not None else WAKE_ALL), None
        kind = decoded.kind
        if kind == "ping":
            return None, self.profile.ping_reply()
        if kind == "control":
            self.checker.welcome(decoded)
            self.answered = True
        elif kind == "error":
            code = decoded.error_code or ""
            if code == "AUTH_FAILED":
                self.auth_failed = decoded
                self.answered = True
            elif code == "RESUME_UNKNOWN_RUN":
                rid = decoded.raw.get("run_id") or (decoded.raw.get("payload") or {}).get("run_id")
                self.resume_unknown.add(str(rid) if rid else "*")
            self.checker.on_error(decoded, at)
            return WAKE_ALL, None
        elif kind == "malformed":
            self.checker.on_malformed(decoded, at)
            return WAKE_ALL, None
        return None, None

    def on_protocol_error(self, detail: str, at: float) -> None:
        """The transport closed because of what the server sent (oversized frame, bad UTF-8): an R12."""
        self.checker.on_malformed(Frame("malformed", detail=detail), at)


class Session:
    """One virtual user: a connection that carries chats (several at once if asked) and survives drops."""

    def __init__(self, target: Target, user_id: str, scenario: str, sink: Sink, *, connect_timeout: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.profile = target.profile
        self.user_id = user_id
        self.scenario = scenario
        self.sink = sink
        self.connect_timeout = connect_timeout
        self.clock = clock
        self.checker = ConnectionChecker(None)
        self.transport: WebSocketTransport | None = None
        self.reader: asyncio.Task | None = None
        self.generation = 0
        self.closed = True
        self._wake: dict[str, asyncio.Event] = {}
        self.router = FrameRouter(self.profile, self.checker, sink, scenario)
        self._welcomed: asyncio.Event | None = None
        self._lock = asyncio.Lock()
        self._pending_sends: set[asyncio.Task] = set()
        self._send_failure: ConnectFailed | None = None

    # -- connection --
    async def connect(self) -> None:
        """Open (or reopen) the connection and wait for the welcome; raises ConnectFailed, classified."""
        settings = self.target.settings_for(self.user_id, self.connect_timeout)
        transport = make_transport(settings)
        self._welcomed = asyncio.Event()
        self.router.new_connection()
        try:
            await transport.open()
        except ConnectFailed as exc:
            self.sink.connection_attempt(self.scenario, exc.kind)
            raise
        self.transport = transport
        self.closed = False
        self.generation += 1
        gen = self.generation
        self.reader = asyncio.get_running_loop().create_task(self._read(transport, gen))
        if transport.connects_on_send or not self.profile.welcome:
            # Nothing to wait for: SSE connects when the message is sent; an AG-UI server speaks only when asked.
            if not transport.connects_on_send:
                self.sink.connection_attempt(self.scenario, "ok")
            return
        try:
            async with asyncio.timeout(self.connect_timeout):
                while not self._welcomed.is_set() and not self.closed:
                    waiter = asyncio.ensure_future(self._welcomed.wait())
                    closed = asyncio.ensure_future(asyncio.shield(self.reader))
                    await asyncio.wait({waiter, closed}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    closed.cancel()
        except TimeoutError:
            await self._drop(transport)
            self.sink.connection_attempt(self.scenario, "timeout")
            raise ConnectFailed("timeout", f"no welcome frame within {self.connect_timeout:g}s") from None
        if self.router.auth_failed is not None or (self.closed and transport.close_code == 1008):
            await self._drop(transport)
            self.sink.connection_attempt(self.scenario, "auth_failed")
            raise ConnectFailed("auth_failed", "the server rejected the credentials (AUTH_FAILED)")
        if self.closed:
            self.sink.connection_attempt(self.scenario, "protocol_error")
            raise ConnectFailed("protocol_error", f"closed before the welcome frame (code {transport.close_code})")
        self.sink.connection_attempt(self.scenario, "ok")

    async def _drop(self, transport: WebSocketTransport) -> None:
        transport.abort()
        if self.reader is not None:
            try:
                async with asyncio.timeout(2):
                    await asyncio.shield(self.reader)
            except (TimeoutError, asyncio.CancelledError):
                self.reader.cancel()

    async def _read(self, transport: WebSocketTransport, gen: int) -> None:
        try:
            await transport.run(self._on_frame)
        finally:
            if transport.protocol_error is not None:
                self.router.on_protocol_error(transport.protocol_error, self.clock())
            if gen == self.generation:
                self.closed = True
                for ev in self._wake.values():
                    ev.set()

    def _on_frame(self, message: str | bytes, at: float) -> None:
        wake, reply = self.router.on_frame(message, at)
        if reply is not None and self.transport is not None:
            t = asyncio.get_running_loop().create_task(self._safe_send(reply))
            self._pending_sends.add(t)
            t.add_done_callback(self._pending_sends.discard)
        if self.router.answered and self._welcomed is not None:
            self._welcomed.set()
        if wake == WAKE_ALL:
            self._wake_all()
        elif wake is not None and (w := self._wake.get(wake)) is not None:
            w.set()

    def _wake_all(self) -> None:
        for ev in self._wake.values():
            ev.set()

    async def _safe_send(self, obj: object) -> bool:
        transport = self.transport
        if transport is None or self.closed:
            return False
        try:
            async with asyncio.timeout(self.connect_timeout):
                await transport.send(obj)
            return True
        except ConnectFailed as exc:  # SSE: the request is the connection, classified like one
            self._send_failure = exc
            return False
        except TimeoutError:
            if transport.connects_on_send:
                self._send_failure = ConnectFailed("timeout", f"no response within {self.connect_timeout:g}s")
            return False
        except Exception:
            return False

    async def close(self) -> None:
        if self.transport is not None and not self.closed:
            await self.transport.close()
        if self.reader is not None:
            try:
                async with asyncio.timeout(3):
                    await asyncio.shield(self.reader)
            except (TimeoutError, asyncio.CancelledError):
                self.reader.cancel()
        for t in list(self._pending_sends):
            t.cancel()

    async def _reconnect(self, seen_generation: int) -> bool:
        """Reconnect once per lost connection, however many chats noticed; True when connected."""
        async with self._lock:
            if self.generation != seen_generation and not self.closed:
                return True
            try:
                await self.connect()
                return True
            except ConnectFailed:
                return False

    # -- chats --
    def _new_tracker(self, expectations: Expectations, client_run_id: bool) -> ChatTracker:
        return new_tracker(expectations, self.scenario, self.clock(), client_run_id)

    async def chat(
        self,
        content: str,
        expectations: Expectations,
        *,
        client_run_id: bool = False,
        disconnect_after: int | None = None,
        abandon_after: int | None = None,
        reconnect: bool = True,
        max_reconnects: int = 3,
        settle: float = 0.1,
    ) -> ChatResult:
        """Send one message and follow its run to a verdict, within the chat's deadline."""
        tracker = self._new_tracker(expectations, client_run_id or self.profile.client_run_id)
        if (failed := await self._begin(tracker)) is not None:
            return failed
        wake = self._wake[tracker.chat_id]
        try:
            request = self.profile.build_request(
                content=content, thread_id=tracker.thread_id, run_id=tracker.run_id,
                message_id=tracker.message_id, user_id=self.user_id,
            )
            tracker.sent_at = tracker.last_at = self.clock()
            self._send_failure = None
            if not await self._safe_send(request):
                if (failure := self._send_failure) is not None:
                    self.checker.discard(tracker)  # never reached the server: not a chat to route events to
                    self.sink.connection_attempt(self.scenario, failure.kind)
                    return self._finished(error_result(tracker.chat_id, self.scenario, tracker.sent_at, failure.kind,
                                                       str(failure)))
                return self._finished(error_result(tracker.chat_id, self.scenario, tracker.sent_at, "send_failed",
                                                   "the connection closed before the message could be sent"))
            per_chat = self.transport is not None and self.transport.connects_on_send
            if per_chat:
                self.sink.connection_attempt(self.scenario, "ok")
            result = await self._follow(tracker, wake, disconnect_after, abandon_after, reconnect, max_reconnects, settle)
            if per_chat:
                await self.close()  # SSE: the stream was this chat's; the next chat opens its own
            return result
        except asyncio.CancelledError:
            # Stopped from outside (the scenario's max_duration, Ctrl-C): still judged, so counters add up.
            if tracker._result is None:
                stopped = not tracker.done
                self._finished(tracker.finish(self.clock(), lost=stopped,
                                              note="stopped before the chat ended" if stopped else ""))
            raise
        finally:
            self._wake.pop(tracker.chat_id, None)

    async def _begin(self, tracker: ChatTracker) -> ChatResult | None:
        """Count the chat as started and make sure a connection carries it; its result when none can."""
        self.sink.chat_started(self.scenario)
        if self.closed:
            try:
                async with self._lock:  # chats in parallel share one connection: only the first one opens it
                    if self.closed:
                        await self.connect()
            except ConnectFailed as exc:
                return self._finished(error_result(tracker.chat_id, self.scenario, tracker.sent_at, exc.kind, str(exc)))
            except asyncio.CancelledError:
                self._finished(error_result(tracker.chat_id, self.scenario, tracker.sent_at, "stopped",
                                            "stopped before the connection was open"))
                raise
        self._wake[tracker.chat_id] = asyncio.Event()
        self.checker.add(tracker)
        return None

    async def _follow(self, tracker: ChatTracker, wake: asyncio.Event, disconnect_after: int | None,
                      abandon_after: int | None, reconnect: bool, max_reconnects: int, settle: float) -> ChatResult:
        clock = self.clock
        deadline = tracker.wait_deadline()
        generation = self.generation
        reconnects = 0
        dropped_on_purpose = False
        events_at_reconnect: int | None = None
        lost_note = ""
        while not tracker.done:
            if abandon_after is not None and len(tracker.events) >= abandon_after:
                if self.transport is not None:
                    await self.transport.close()
                self.sink.chat_abandoned(self.scenario)
                return self._finished(abandon(tracker, clock()))
            if disconnect_after is not None and not dropped_on_purpose and len(tracker.events) >= disconnect_after:
                dropped_on_purpose = True
                if self.transport is not None and not self.closed:
                    self.transport.abort()
                    if self.reader is not None:
                        try:
                            async with asyncio.timeout(2):
                                await asyncio.shield(self.reader)
                        except TimeoutError:
                            pass
            if self.closed or generation != self.generation:
                if events_at_reconnect is not None:
                    tracker.reconnected(len(tracker.events) > events_at_reconnect)
                    self.sink.reconnect(self.scenario, tracker.reconnects[-1])
                    events_at_reconnect = None
                tracker.connection_lost(clock())
                can_resume = resume_frame(self.profile, tracker) is not None
                if not (reconnect and can_resume and reconnects < max_reconnects):
                    lost_note = lost_note_for(self.transport, can_resume)
                    break
                reconnects += 1
                if not await self._reconnect(generation):
                    lost_note = "connection lost mid-run and reconnecting failed"
                    tracker.reconnected(False)
                    self.sink.reconnect(self.scenario, "lost")
                    break
                generation = self.generation
                self.checker.add(tracker)
                events_at_reconnect = len(tracker.events)
                await self._safe_send(resume_frame(self.profile, tracker))
                continue
            if tracker.run_id is not None and tracker.run_id in self.router.resume_unknown:
                lost_note = "the server did not know the run when resuming (RESUME_UNKNOWN_RUN)"
                break
            remaining = deadline - clock()
            if remaining <= 0:
                break
            wake.clear()
            try:
                async with asyncio.timeout(remaining):
                    await wake.wait()
            except TimeoutError:
                break
        if events_at_reconnect is not None:
            tracker.reconnected(len(tracker.events) > events_at_reconnect)
            self.sink.reconnect(self.scenario, tracker.reconnects[-1])
        if tracker.done and settle > 0 and not self.closed:
            # Listen a little longer for late events (R3, R4, R7): an observation window, not a wait for a condition.
            until = (tracker.terminal_at or clock()) + settle
            while not self.closed and (left := until - clock()) > 0:
                wake.clear()
                try:
                    async with asyncio.timeout(left):
                        await wake.wait()
                except TimeoutError:
                    break
        return self._finished(tracker.finish(clock(), lost=bool(lost_note) and not tracker.done, note=lost_note))

    async def send_invalid(self, raw: str, expectations: Expectations) -> ChatResult:
        """Send a frame the server must answer with an error_message, keeping the connection open (R13)."""
        tracker = self._new_tracker(expectations, False)
        if (failed := await self._begin(tracker)) is not None:
            return failed
        wake = self._wake[tracker.chat_id]
        tracker.sent_at = self.clock()
        try:
            if not await self._safe_send(raw):
                return self._finished(error_result(tracker.chat_id, self.scenario, tracker.sent_at, "send_failed",
                                                   "the connection closed before the frame could be sent"))
            deadline = tracker.wait_deadline()
            while not tracker.done and not self.closed and (left := deadline - self.clock()) > 0:
                wake.clear()
                try:
                    async with asyncio.timeout(left):
                        await wake.wait()
                except TimeoutError:
                    break
            if self.closed:
                tracker.connection_lost(self.clock())
            return self._finished(tracker.finish(self.clock()))
        except asyncio.CancelledError:
            if tracker._result is None:
                self._finished(tracker.finish(self.clock(), lost=True, note="stopped before the answer"))
            raise
        finally:
            self._wake.pop(tracker.chat_id, None)

    def _finished(self, result: ChatResult) -> ChatResult:
        self.sink.chat_finished(result)
        return result
