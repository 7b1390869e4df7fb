"""The synchronous chat client of one virtual user, for gevent (Locust) or plain threads.

The asyncio Session's twin over websockets' threading layer: the same FrameRouter (profile decode, ConnectionChecker,
ChatTrackers), handshake and resume frame; it only moves frames and waits, every wait with a deadline.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, Callable
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .checker import ChatResult, ChatTracker, ConnectionChecker, Expectations, abandon, error_result
from .client import FrameRouter, Target, lost_note_for, new_tracker, resume_frame
from .sinks import Sink
from .transport import ConnectFailed, ConnectSettings, classify, handshake_options, record_close

# A chat cut off from outside (Locust stopping the user, Ctrl-C) is judged on what arrived, as an abandonment:
# the load generator left, the server is not to blame.
STOPPED_NOTE = "stopped by the load generator before the chat ended"


class _Connection:
    """One WebSocket connection and how it ended (the fields record_close and lost_note_for read)."""

    ended_note = ""

    def __init__(self, settings: ConnectSettings, ws: Any, generation: int) -> None:
        self.settings = settings
        self.ws = ws
        self.generation = generation
        self.close_code: int | None = None
        self.close_reason = ""
        self.protocol_error: str | None = None
        self.reader: threading.Thread | None = None


class SyncSession:
    """One virtual user: a connection carrying its chats (several at once from several greenlets), surviving drops."""

    def __init__(self, target: Target, user_id: str, scenario: str, sink: Sink, *, connect_timeout: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if urlsplit(target.url).scheme not in ("ws", "wss"):
            raise ValueError(f"the gevent client speaks WebSocket only (ws://, wss://), not {target.url.split(':')[0]}")
        self.target = target
        self.profile = target.profile
        self.user_id = user_id
        self.scenario = scenario
        self.sink = sink
        self.connect_timeout = connect_timeout
        self.clock = clock
        self.checker = ConnectionChecker(None)
        self.router = FrameRouter(self.profile, self.checker, sink, scenario)
        self.conn: _Connection | None = None
        self.generation = 0
        self.closed = True
        # One condition guards the checker and trackers (the reader feeds them) and wakes waiting chats;
        # `_ticks` changes on every frame and every close, so a waiter never misses a wake-up.
        self._cond = threading.Condition()
        self._ticks = 0
        self._connect_lock = threading.Lock()

    # -- connection --
    def connect(self) -> None:
        """Open (or reopen) the connection and wait for the welcome; raises ConnectFailed, classified."""
        settings = self.target.settings_for(self.user_id, self.connect_timeout)
        try:
            # connect(...) is a context manager in websockets >= 14; entering it opens the connection.
            ws = connect(settings.url, open_timeout=settings.connect_timeout, **handshake_options(settings)).__enter__()
        except Exception as exc:
            kind, reason = classify(exc)
            self.sink.connection_attempt(self.scenario, kind)
            raise ConnectFailed(kind, reason) from None
        with self._cond:
            self.generation += 1
            conn = self.conn = _Connection(settings, ws, self.generation)
            self.router.new_connection()
            self.closed = False
        conn.reader = threading.Thread(target=self._read, args=(conn,), name=f"chatprobe-reader-{self.user_id}",
                                       daemon=True)
        conn.reader.start()
        if not self.profile.welcome:
            self.sink.connection_attempt(self.scenario, "ok")
            return
        with self._cond:
            answered = self._cond.wait_for(lambda: self.router.answered or self.closed, self.connect_timeout)
        if not answered:
            self._drop(conn)
            self.sink.connection_attempt(self.scenario, "timeout")
            raise ConnectFailed("timeout", f"no welcome frame within {self.connect_timeout:g}s")
        if self.router.auth_failed is not None or (self.closed and conn.close_code == 1008):
            self._drop(conn)
            self.sink.connection_attempt(self.scenario, "auth_failed")
            raise ConnectFailed("auth_failed", "the server rejected the credentials (AUTH_FAILED)")
        if self.closed:
            self.sink.connection_attempt(self.scenario, "protocol_error")
            raise ConnectFailed("protocol_error", f"closed before the welcome frame (code {conn.close_code})")
        self.sink.connection_attempt(self.scenario, "ok")

    def _read(self, conn: _Connection) -> None:
        ws = conn.ws
        clock = self.clock
        try:
            while True:
                message = ws.recv()
                at = clock()
                with self._cond:
                    _wake, reply = self.router.on_frame(message, at)
                    self._ticks += 1
                    self._cond.notify_all()
                if reply is not None:
                    self._send(reply)
        except ConnectionClosed:
            pass
        except Exception as exc:  # what the server did (an oversized frame…) never escapes the reader
            conn.close_reason = f"{exc.__class__.__name__}: {str(exc)[:120]}"
        finally:
            record_close(conn, ws.protocol)
            with self._cond:
                if conn.protocol_error is not None:
                    self.router.on_protocol_error(conn.protocol_error, clock())
                if conn.generation == self.generation:
                    self.closed = True
                self._ticks += 1
                self._cond.notify_all()

    def _send(self, obj: object) -> bool:
        conn = self.conn
        if conn is None or self.closed:
            return False
        try:
            conn.ws.send(obj if isinstance(obj, (str, bytes)) else json.dumps(obj))
            return True
        except Exception:
            return False

    def _abort(self, conn: _Connection) -> None:
        """Drop the socket without a closing handshake, as a lost network would."""
        try:
            conn.ws.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _drop(self, conn: _Connection) -> None:
        self._abort(conn)
        self._join(conn, 2.0)

    def _join(self, conn: _Connection, timeout: float) -> None:
        if conn.reader is not None and conn.reader is not threading.current_thread():
            conn.reader.join(timeout)

    def close(self) -> None:
        conn = self.conn
        if conn is None:
            return
        try:
            conn.ws.close()  # bounded by close_timeout
        except Exception:
            self._abort(conn)
        self._join(conn, 3.0)

    def _ensure_connected(self) -> None:
        """Connect unless connected; chats starting together share the one connection."""
        with self._connect_lock:
            if self.closed:
                self.connect()

    def _reconnect(self, seen_generation: int) -> bool:
        """Reconnect once per lost connection, however many chats noticed; True when connected."""
        with self._connect_lock:
            if self.generation != seen_generation and not self.closed:
                return True
            try:
                self.connect()
                return True
            except ConnectFailed:
                return False

    def _wait(self, seen_ticks: int, timeout: float) -> None:
        """Until a frame arrives or the connection ends (anything after `seen_ticks`), at most `timeout`."""
        with self._cond:
            self._cond.wait_for(lambda: self._ticks != seen_ticks, timeout)

    def _stopped(self, tracker: ChatTracker) -> None:
        """The chat was interrupted from outside: judged on what arrived, so the sink's counters add up."""
        if tracker._result is not None:  # already judged and recorded
            return
        with self._cond:
            result = abandon(tracker, self.clock())
        result.note = STOPPED_NOTE
        self.sink.chat_abandoned(self.scenario)
        self._finished(result)

    def _finished(self, result: ChatResult) -> ChatResult:
        self.sink.chat_finished(result)
        return result

    # -- chats --
    def chat(
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
        """Send one message and follow its run to a verdict, within the chat's deadline.

        Interrupted from outside (GreenletExit when Locust stops the user), the chat is judged as abandoned
        (STOPPED_NOTE) for the sink, and the interruption goes on: the caller gets no result to report.
        """
        tracker = new_tracker(expectations, self.scenario, self.clock(), client_run_id or self.profile.client_run_id)
        self.sink.chat_started(self.scenario)
        try:
            try:
                self._ensure_connected()
            except ConnectFailed as exc:
                return self._finished(error_result(tracker.chat_id, self.scenario, tracker.sent_at, exc.kind, str(exc)))
            with self._cond:
                self.checker.add(tracker)
            request = self.profile.build_request(
                content=content, thread_id=tracker.thread_id, run_id=tracker.run_id,
                message_id=tracker.message_id, user_id=self.user_id,
            )
            tracker.sent_at = tracker.last_at = self.clock()
            if not self._send(request):
                return self._finished(error_result(tracker.chat_id, self.scenario, tracker.sent_at, "send_failed",
                                                   "the connection closed before the message could be sent"))
            return self._follow(tracker, disconnect_after, abandon_after, reconnect, max_reconnects, settle)
        except BaseException:
            self._stopped(tracker)
            raise

    def _follow(self, tracker: ChatTracker, disconnect_after: int | None, abandon_after: int | None, reconnect: bool,
                max_reconnects: int, settle: float) -> ChatResult:
        clock = self.clock
        deadline = tracker.wait_deadline()
        generation = self.generation
        reconnects = 0
        dropped_on_purpose = False
        events_at_reconnect: int | None = None
        lost_note = ""
        while not tracker.done:
            seen = self._ticks
            if abandon_after is not None and len(tracker.events) >= abandon_after:
                self.close()
                self.sink.chat_abandoned(self.scenario)
                with self._cond:
                    return self._finished(abandon(tracker, clock()))
            if disconnect_after is not None and not dropped_on_purpose and len(tracker.events) >= disconnect_after:
                dropped_on_purpose = True
                if self.conn is not None and not self.closed:
                    self._drop(self.conn)
                continue
            if self.closed or generation != self.generation:
                if events_at_reconnect is not None:
                    tracker.reconnected(len(tracker.events) > events_at_reconnect)
                    self.sink.reconnect(self.scenario, tracker.reconnects[-1])
                    events_at_reconnect = None
                with self._cond:
                    tracker.connection_lost(clock())
                can_resume = resume_frame(self.profile, tracker) is not None
                if not (reconnect and can_resume and reconnects < max_reconnects):
                    lost_note = lost_note_for(self.conn, can_resume)
                    break
                reconnects += 1
                if not self._reconnect(generation):
                    lost_note = "connection lost mid-run and reconnecting failed"
                    tracker.reconnected(False)
                    self.sink.reconnect(self.scenario, "lost")
                    break
                generation = self.generation
                with self._cond:
                    self.checker.add(tracker)
                    resume = resume_frame(self.profile, tracker)
                events_at_reconnect = len(tracker.events)
                self._send(resume)
                continue
            if tracker.run_id is not None and tracker.run_id in self.router.resume_unknown:
                lost_note = "the server did not know the run when resuming (RESUME_UNKNOWN_RUN)"
                break
            remaining = deadline - clock()
            if remaining <= 0:
                break
            self._wait(seen, remaining)
        if events_at_reconnect is not None:
            tracker.reconnected(len(tracker.events) > events_at_reconnect)
            self.sink.reconnect(self.scenario, tracker.reconnects[-1])
        if tracker.done and settle > 0 and not self.closed:
            # Listen a little longer for late events (R3, R4, R7): an observation window, not a wait for a condition.
            until = (tracker.terminal_at or clock()) + settle
            with self._cond:
                self._cond.wait_for(lambda: self.closed, max(0.0, until - clock()))
        with self._cond:
            result = tracker.finish(clock(), lost=bool(lost_note) and not tracker.done, note=lost_note)
        return self._finished(result)

    def send_invalid(self, raw: str, expectations: Expectations) -> ChatResult:
        """Send a frame the server must answer with an error_message, keeping the connection open (R13)."""
        tracker = new_tracker(expectations, self.scenario, self.clock(), False)
        self.sink.chat_started(self.scenario)
        try:
            try:
                self._ensure_connected()
            except ConnectFailed as exc:
                return self._finished(error_result(tracker.chat_id, self.scenario, tracker.sent_at, exc.kind, str(exc)))
            with self._cond:
                self.checker.add(tracker)
            tracker.sent_at = self.clock()
            if not self._send(raw):
                return self._finished(error_result(tracker.chat_id, self.scenario, tracker.sent_at, "send_failed",
                                                   "the connection closed before the frame could be sent"))
            deadline = tracker.wait_deadline()
            with self._cond:
                self._cond.wait_for(lambda: tracker.done or self.closed, max(0.0, deadline - self.clock()))
                if self.closed:
                    tracker.connection_lost(self.clock())
                result = tracker.finish(self.clock())
            return self._finished(result)
        except BaseException:
            self._stopped(tracker)
            raise
