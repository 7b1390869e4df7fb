"""The async chat client: one virtual user's connection, its chats, pings, reconnects and resumes.

It only moves frames: decoding is the profile's, judging is the ChatTracker's, results go to a Sink.
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import heapq
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, cast

from .checker import ChatResult, Expectations
from .flow import (
    CLEAN_CLOSE_CODES,
    DEFAULTS,
    WAKE_ALL,
    ChatFlow,
    ChatOptions,
    Close,
    Connect,
    Drop,
    Reconnect,
    Send,
    VirtualUser,
    Wait,
    takes_attempt,
)
from .sinks import Sink
from .targets import Target
from .transports import ConnectFailed, LeanClientRefused, Transport, make_transport
from .transports.base import SendStalled

_MIN_TIMER = 0.001  # seconds (see Wake.arm)


class _Deadlines:
    """Every Wake's timer on one event loop: a heap of (when, wake) entries (loop time) and one loop timer, for the
    earliest. A loop timer per waiting chat (on uvloop a TimerHandle, its UVTimer and libuv's timer: ~420 bytes,
    ~2.3 us to arm and cancel) was the largest piece of an open chat after its socket; an entry is a 2-tuple and a
    float, pushed and popped with heapq. asyncio has no shared timer of its own to hang many deadlines on (its heap is
    per handle), hence this. An entry is in force while its wake points at it (`Wake._timer is entry`); one replaced or
    cancelled goes at once when it is first in line, else stays until it is, or until such ones are a quarter of the
    heap: then the heap is rebuilt without them (bounded in bytes by the waits in force, not by those made). Every
    open chat leaves one such entry behind, its connection's welcome wait (cancelled when the welcome came, due
    connect_timeout later): at half, a heap of 15,000 open chats held 15,000 dead entries with their Wakes (~170 bytes
    a chat); a rebuild every quarter-heap of drops costs a few list steps per drop."""

    __slots__ = ("heap", "timer", "timer_at", "stale", "context")

    def __init__(self) -> None:
        self.heap: list[tuple[float, Wake]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.stale = 0
        # The loop timer runs in this loop's own empty context, not a copy of the caller's each time it is armed.
        # Nothing in it reads a context variable; one per loop, not one for the process: Python refuses to enter a
        # context already entered, even from another thread, and two loops in two threads (the pytest plugin's
        # loop thread beside a test's own asyncio.run) may fire at the same moment.
        self.context = contextvars.Context()

    def add(self, loop: asyncio.AbstractEventLoop, delay: float, wake: Wake) -> tuple[float, Wake]:
        # At least a millisecond ahead (as a loop timer of its own was): an entry armed while the heap is being
        # fired is never due in the same pass, so a wake that arms again at once cannot keep the pass going.
        at = loop.time() + (delay if delay > _MIN_TIMER else _MIN_TIMER)
        entry = (at, wake)  # two due at once compare their wakes, which are all equal (Wake.__lt__)
        heapq.heappush(self.heap, entry)
        if self.timer is None or at < self.timer_at:
            self._arm(loop, at)
        return entry

    def dropped(self) -> None:
        """A wake let go of its entry (cancelled, or armed earlier with a new one)."""
        self.stale += 1
        heap = self.heap
        # Those now first in line go at once: a welcome wait is the earliest deadline of its chat and the welcomes
        # come in the order the connections opened, so most dead entries are let go here, not by a rebuild.
        while heap and heap[0][1]._timer is not heap[0]:
            heapq.heappop(heap)
            if self.stale:  # a wake cancelled with no loop running, or on another loop, was never counted
                self.stale -= 1
        if self.stale * 4 > len(heap):
            heap[:] = [e for e in heap if e[1]._timer is e]
            heapq.heapify(heap)
            self.stale = 0
        if not heap and self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        # uvloop's timers count whole milliseconds from a clock read once per loop turn: they fire up to ~1 ms
        # early, and a wait of less than 1 ms becomes 0 ms, so an entry not yet due was looked at again ~16 times.
        # A timer of at least 1 ms ends that (asyncio's are exact to begin with).
        delay = at - loop.time()
        self.timer = loop.call_later(delay if delay > _MIN_TIMER else _MIN_TIMER, self._fire, loop,
                                     context=self.context)
        self.timer_at = at

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timer = None
        heap = self.heap
        now = loop.time()
        try:
            while heap and heap[0][0] <= now:
                entry = heapq.heappop(heap)
                wake = entry[1]
                if wake._timer is not entry:
                    if self.stale:
                        self.stale -= 1
                    continue
                wake._timer = None
                try:
                    wake.set()
                except (KeyboardInterrupt, SystemExit):
                    raise  # as the loop's own timers let them through
                except BaseException as exc:  # one chat's failure is the loop's to report, not the others' to share
                    loop.call_exception_handler({"message": "chatprobe: a chat's timer failed", "exception": exc})
        finally:  # the deadlines still to come keep their timer, whatever went through
            if heap and (self.timer is None or self.timer_at > heap[0][0]):  # a wake may have armed it already
                self._arm(loop, heap[0][0])


# One heap per event loop, kept on the loop (an attribute is the cheapest look-up, and it goes with its loop); a loop
# class that takes no attribute keeps it here instead, weakly (asyncio's and uvloop's take one; such a loop dropped
# with deadlines still pending would be kept alive by them). A test or a Locust user may run several loops in turn.
_DEADLINES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Deadlines] = weakref.WeakKeyDictionary()
_ATTR = "_chatprobe_deadlines"


def _deadlines(loop: asyncio.AbstractEventLoop) -> _Deadlines:
    try:
        deadlines: _Deadlines = getattr(loop, _ATTR)
        return deadlines
    except AttributeError:
        pass
    deadlines = _DEADLINES.get(loop) or _Deadlines()
    try:
        setattr(loop, _ATTR, deadlines)
    except AttributeError:
        _DEADLINES[loop] = deadlines
    return deadlines


class Wake:
    """What a chat (or a connection's welcome) waits on: a bare future, resolved by what arrives for it or by its
    connection's end, and one deadline (an entry in the loop's _Deadlines), re-armed only when the deadline moves
    earlier (a deadline that passes before a later one only makes the waiter look and wait again). One waiter at a
    time; cheaper than an asyncio.Event and an asyncio.timeout per wait, in CPU and in memory when 15,000 chats are
    open. With `call` set nothing awaits it: a wake (or the deadline) calls `call()` instead."""

    __slots__ = ("_waiter", "_timer", "_timer_at", "call")

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None
        self._timer: tuple[float, Wake] | None = None  # its entry in the loop's _Deadlines
        self._timer_at = 0.0
        self.call: Callable[[], None] | None = None

    def set(self) -> None:
        if self.call is not None:
            self.call()
            return
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def arm(self, when: float, now: float, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Have the deadline pass at `when` (clock time; `now` is the clock now), or within a millisecond after.
        `loop`: the running loop, when the caller has it (asyncio.get_running_loop() is a getpid(2) system call each
        time: a chat passes its own, looked up once)."""
        timer = self._timer
        if timer is None or self._timer_at > when:
            if loop is None:
                loop = asyncio.get_running_loop()
            deadlines = _deadlines(loop)
            if timer is not None:
                self._timer = None
                deadlines.dropped()
            self._timer = deadlines.add(loop, when - now, self)
            self._timer_at = when

    def __lt__(self, other: Wake) -> bool:
        """Two deadlines due at the same moment: either first (a heap entry compares its wake only then)."""
        return False

    def until(self, when: float, now: float, loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future[None]:
        """What to await: resolved by `set()` or at `when` (clock time; `now` is the clock now), whichever is first.
        Whoever waits looks again afterwards: a wake is a reason to look, not a verdict. `loop`: as for `arm`."""
        if loop is None:
            loop = asyncio.get_running_loop()
        self.arm(when, now, loop)
        self._waiter = waiter = loop.create_future()
        return waiter

    def cancel(self) -> None:
        """No more waits: the deadline goes with them (a chat's may be minutes away)."""
        self.call = None
        timer = self._timer
        if timer is not None:
            self._timer = None  # the entry is skipped if it ever comes up
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop running (its end)
                return
            _deadlines(loop).dropped()


class Session(VirtualUser):
    """One virtual user: a connection that carries chats (several at once if asked) and survives drops."""

    __slots__ = ("transport", "reader", "generation", "closed", "closed_at", "closed_by_client", "_wake_id",
                 "_wake_one", "_wakes", "_welcomed", "_opening", "_pending_sends",
                 "_send_failure", "_send_note", "_settling", "_all_settled", "_sends_now", "_listening", "_ending",
                 "_kept")

    def __init__(self, target: Target, user_id: str, scenario: str, sink: Sink, *, connect_timeout: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(target, user_id, scenario, sink, connect_timeout=connect_timeout, clock=clock)
        self.transport: Transport | None = None
        # The task reading the connection, for a transport that must be read (websockets, SSE); picows calls back.
        self.reader: asyncio.Task | None = None
        self.generation = 0
        self.closed = True
        # When the connection was seen to end (Link.closed_at): the time its close record carries, when recorded.
        self.closed_at = float("-inf")
        self.closed_by_client = False  # this client closed or dropped the connection on purpose (until the next)
        # What each chat in flight waits on, by its wake id: the first in two slots (a connection mostly carries one
        # chat at a time: no dict, ~250 bytes per open chat), others in a dict, each newer than the one in the slots.
        self._wake_id: str | None = None
        self._wake_one: Wake | None = None
        self._wakes: dict[str, Wake] | None = None
        self._welcomed: Wake | None = None
        # Set while a chat (re)connects: the others wait for it instead of opening a connection of their own.
        self._opening: asyncio.Future[None] | None = None
        # Replies (pongs) being sent by a transport whose send waits; created with the first one.
        self._pending_sends: set[asyncio.Task] | None = None
        self._send_failure: ConnectFailed | None = None
        self._send_note = ""  # why a chat's frame did not leave (a stall, an error), for its send_failed verdict
        # Chats listening out their settle window in the background (ChatOptions.overlap_settle), and their Wakes;
        # what settled() awaits until there are none. None while there are none (memory per open connection).
        self._settling: dict[ChatFlow, Wake] | None = None
        self._all_settled: asyncio.Future[None] | None = None
        # The transport sends without waiting (picows writes into the socket's buffer): send_now, no timeout around
        # it. A flag, not the bound method: 64 bytes less per open connection.
        self._sends_now = False
        # The connection that calls back (picows) and has not ended yet; who waits for its end.
        self._listening: Transport | None = None
        self._ending: Wake | None = None
        # SSE: the user's HTTP client kept between its chats, its connection alive (sse.KeptConnection).
        self._kept: Any = None

    # -- connection --
    async def connect(self, by: float | None = None, *, resume: bool = False,
                      retry: Callable[[ConnectFailed | None], bool] | None = None) -> None:
        """Open (or reopen) the connection and wait for the welcome (at most connect_timeout, and past `by`, a chat's
        deadline, not at all); raises ConnectFailed, classified. `resume`: a reconnect to resume a run (recorded so:
        its failure fails no chat of its own); `retry`, asked when it fails: whether the chat tries again (recorded
        so: Reconnect.will_retry)."""
        settings = self.target.settings_for(self.user_id, self.open_timeout(by))
        transport = make_transport(settings)
        if transport.connects_on_send:  # SSE: the user's connection kept alive between its chats
            from .transports.sse import KeptConnection

            if self._kept is None:
                self._kept = KeptConnection()
            transport.kept = self._kept  # type: ignore[attr-defined]
        if self.target.recorder is not None:  # --record: the frames both ways, for `chatprobe check`
            transport = self.target.recorder.wrap(transport, self.user_id, resume=resume, retry=retry,
                                                  user=self.target.tokens.subject(self.user_id))
        self._welcomed = welcomed = Wake()
        self.router.new_connection()
        try:
            await transport.open()
        except LeanClientRefused as exc:
            # picows refused a valid answer of this server (`Connection: keep-alive, Upgrade`): the websockets client
            # opens it, now and for the rest of the run (said once, in the run's warnings). Nothing was counted or
            # recorded of the refused attempt; the websockets client never raises this, so this happens once.
            self._welcomed = None
            self.target.websocket_client.fall_back(str(exc))
            return await self.connect(by, resume=resume, retry=retry)
        except ConnectFailed as exc:
            self._welcomed = None
            self.sink.connection_attempt(self.scenario, exc.kind)
            raise
        self.transport = transport
        self.closed = False
        self.closed_by_client = False
        self.generation += 1
        # Looked up on the class: a wrapper that forwards attributes (RecordingTransport) must not be bypassed.
        kind = type(transport)
        self._sends_now = getattr(kind, "send_now", None) is not None
        if getattr(kind, "listen", None) is not None:
            self.reader = None
            self._listening = transport
            transport.listen(self)  # type: ignore[attr-defined]
        else:
            self.reader = asyncio.get_running_loop().create_task(self._read(transport))
        if transport.connects_on_send or not self.profile.welcome:
            # Nothing to wait for: SSE connects when the message is sent; an AG-UI server speaks only when asked.
            self._welcomed = None
            if not transport.connects_on_send:
                self.sink.connection_attempt(self.scenario, "ok")
            return
        clock = self.clock
        start = clock()
        deadline = start + self.connect_timeout if by is None else min(start + self.connect_timeout, by)
        try:
            # Set by the first answer, or when the connection ends.
            while not (self.router.answered or self.closed) and (now := clock()) < deadline:
                await welcomed.until(deadline, now)
        finally:
            welcomed.cancel()
            self._welcomed = None  # nothing waits for it any more (memory per open connection)
        in_time = self.router.answered or self.closed
        kind_, reason = self.router.welcome_outcome(in_time, self.closed, transport.close_code,
                                                    max(deadline - start, 0.0))
        if kind_ != "ok":
            # What the server answered (its close code, an AUTH_FAILED) goes with the failure: the retry decision's.
            failed = ConnectFailed(kind_, reason, **self.router.failure_answer(transport.close_code if self.closed
                                                                               else None))
            transport.connect_failed(kind_, reason, failed)  # --record: the recording says the connection failed, and why
            await self._drop(transport)
            raise failed

    async def _drop(self, transport: Transport) -> None:
        transport.abort()
        await self._join_reader(2, cancel=True)

    async def _join_reader(self, timeout: float, *, cancel: bool) -> None:
        """Give the connection `timeout` seconds to end; past it (when `cancel`) take it as ended: its reader is
        cancelled, or a connection that calls back is told to stop. Cancelled meanwhile from outside (the run's stop,
        a probe's deadline), the connection is taken as ended so too (when `cancel`) and the cancellation goes on:
        swallowed here, the task played on as if never stopped (its next chat, its deadline), past a monitor's probe
        deadline and a stopped run's end."""
        reader = self.reader
        if reader is not None:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(reader)
            except TimeoutError:
                if cancel:
                    reader.cancel()
            except asyncio.CancelledError:
                if cancel:
                    reader.cancel()
                raise
            return
        transport = self._listening
        if transport is None:
            return
        clock = self.clock
        deadline = clock() + timeout
        ending = self._ending = Wake()
        try:
            while self._listening is transport and (now := clock()) < deadline:
                await ending.until(deadline, now)
        finally:
            ending.cancel()
            self._ending = None
            if cancel and self._listening is transport:
                transport.stop_listening()  # type: ignore[attr-defined]
                self.on_end(transport)

    async def _read(self, transport: Transport) -> None:
        try:
            await transport.run(self.on_frame)
        finally:
            self.on_end(transport)

    def on_end(self, transport: Transport) -> None:
        """A connection ended (its reader returned, or the transport said so): what the client closed it for is an
        R12; when it is the current one, what no chat was told on it is reported as its own (FrameRouter.
        connection_ended) and every waiter is woken to see it."""
        if transport.protocol_error is not None:
            self.router.on_protocol_error(transport.protocol_error, self.clock())
        if self._listening is transport:
            self._listening = None
            if self._ending is not None:
                self._ending.set()
        if transport is self.transport:
            ended_at = getattr(transport, "ended_at", None)  # the close record's time (--record), else now
            self.closed_at = ended_at if ended_at is not None else self.clock()
            # 1008, 4401, 4403 before the server said anything, in a close the client did not start
            self.router.closed_refusing(transport.close_code, self.closed_at, by_client=self.closed_by_client)
            self.router.connection_ended()
            self.closed = True
            if self._welcomed is not None:
                self._welcomed.set()
            self._wake_all()

    def on_frame(self, message: str | bytes, at: float) -> None:
        wake, reply = self.router.on_frame(message, at)
        if reply is not None and self.transport is not None:
            self._reply(reply)
        if self._welcomed is not None and self.router.answered:
            self._welcomed.set()
        if wake is not None:
            if wake == self._wake_id:
                self._wake_one.set()  # type: ignore[union-attr]
            elif wake == WAKE_ALL:
                self._wake_all()
            elif self._wakes is not None and (one := self._wakes.get(wake)) is not None:
                one.set()

    def _wake_all(self) -> None:
        """Wake every chat in flight, oldest first (a chat settling in the background leaves as it is judged)."""
        one = self._wake_one
        others = list(self._wakes.values()) if self._wakes is not None else ()
        if one is not None:
            one.set()
        for w in others:
            w.set()

    def _add_wake(self, wake_id: str, wake: Wake) -> None:
        if self._wake_id is None and self._wakes is None:
            self._wake_id, self._wake_one = wake_id, wake
        else:
            if self._wakes is None:
                self._wakes = {}
            self._wakes[wake_id] = wake

    def _drop_wake(self, wake_id: str) -> None:
        if wake_id == self._wake_id:
            self._wake_id = self._wake_one = None
        elif self._wakes is not None:
            self._wakes.pop(wake_id, None)
            if not self._wakes:
                self._wakes = None

    def _reply(self, reply: object) -> None:
        """Answer the server (a pong) without holding up the frames behind the one that asked."""
        if self._sends_now:
            if not self.closed and self.transport is not None:
                try:
                    self.transport.send_now(reply)  # type: ignore[attr-defined]
                except Exception:  # the connection is going: its end is seen by the reader
                    pass
            return
        t = asyncio.get_running_loop().create_task(self._safe_send(reply))
        if self._pending_sends is None:
            self._pending_sends = set()
        self._pending_sends.add(t)
        t.add_done_callback(self._pending_sends.discard)

    def _send_now(self, obj: object) -> bool | None:
        """_safe_send on a transport that sends without waiting (picows): the same outcomes, with no coroutine made
        and run for it (one a chat)."""
        transport = self.transport
        if transport is None:
            return False
        if self.closed or transport.closing:
            # Found closed before the frame left (the server's close frame came in the read that woke this chat):
            # asked before --record writes the frame, so that a recording holds no send that never went (`check`
            # would judge the message as crossing the server's close: sent twice, or a run lost).
            return None
        try:
            transport.send_now(obj)  # type: ignore[attr-defined]
            return True
        except ConnectionError:
            return None
        except SendStalled as exc:  # the server stopped reading: the chat's send_failed says so
            self._send_note = str(exc)
            return False
        except Exception:
            return False

    async def _safe_send(self, obj: object, expectations: Expectations | None = None,
                         since: float = 0.0) -> bool | None:
        """Send a frame: True when sent; None when the connection was found closed before the frame left (the
        server closed it between chats), False for any other failure (as SyncSession._send). The outcome is this
        call's own: a pong sent meanwhile by another task, or another chat's send, cannot change it.
        `expectations`: given (only with --record) for a chat's message or probe, which the recording writes with
        them (Transport.send_chat), and `since`, when its times count from (its first try, or when an open-model chat
        was due)."""
        if self._sends_now:
            return self._send_now(obj)
        transport = self.transport
        if transport is None:
            return False
        if self.closed or transport.closing:
            return None  # (as in _send_now)
        try:
            async with asyncio.timeout(self.connect_timeout):
                if expectations is not None:
                    await transport.send_chat(obj, expectations, since)
                else:
                    await transport.send(obj)
            return True
        except ConnectFailed as exc:  # SSE: the request is the connection, classified like one
            self._send_failure = exc
            return False
        except TimeoutError:
            if transport.connects_on_send:
                self._send_failure = failure = ConnectFailed("timeout", f"no response within {self.connect_timeout:g}s")
                transport.send_failed(failure.kind, str(failure))  # --record: no stream came of the request
            else:
                self._send_note = (f"the frame did not leave within {self.connect_timeout:g}s "
                                   "(the server read nothing)")
                if expectations is not None:
                    # --record: a chat's frame that did not leave in time (the server stopped reading) fails the chat
                    # (ChatFlow.sent: send_failed); the recording says so in its place, or `check` would judge it
                    # otherwise.
                    transport.send_failed("send_failed", self._send_note)
            return False
        except ConnectionError:
            return None
        except Exception as exc:
            if not transport.connects_on_send:
                self._send_note = str(exc) if isinstance(exc, SendStalled) else \
                    f"the frame could not be sent ({type(exc).__name__})"
                if expectations is not None:  # --record: as a stalled frame
                    transport.send_failed("send_failed", self._send_note)
            return False

    async def settled(self) -> list[ChatResult]:
        """Wait until every chat listening out its settle window in the background is judged; their verdicts.
        (Bounded: each window ends by its own timer.)"""
        if not self._settling:
            return []
        flows = list(self._settling)
        try:
            while self._settling:
                self._all_settled = done = asyncio.get_running_loop().create_future()
                await done
        except BaseException:
            # Stopped from outside: judged now, on what arrived, so the counters add up before anyone reads them.
            self._stop_settling()
            raise
        finally:
            self._all_settled = None
        return [f.result for f in flows if f.result is not None]

    def _stop_settling(self) -> None:
        now = self.clock()
        for flow, wake in list((self._settling or {}).items()):
            flow.stopped(now)
            self._settled(flow, wake)
            self._stopping()

    def _stopping(self, between_attempts: bool = False) -> None:
        """The run stopped a chat of this connection (ChatFlow.stopped): --record says so at the connection's close;
        `between_attempts`: the chat waited out a backoff between two reconnects, no connection open or opening, and
        --record writes a file of one close record "by": "client-stop" for the user, as for a reconnect whose opening
        the stop cut short (so that `check` judges its chat stopped, as live, not lost for want of a resume)."""
        if self.transport is not None and not self.closed:
            self.transport.stopped_by_client()
        elif between_attempts and self.target.recorder is not None:
            self.target.recorder.recording(self.user_id, resume=True,
                                           user=self.target.tokens.subject(self.user_id)).open_stopped()

    async def close(self, *, user_ends: bool = True) -> None:
        """Listen out the settle windows still open, then close the connection. Closed by a task being cancelled
        (the run stopped: max_duration, Ctrl-C), the windows are judged at once, on what arrived, not waited out.
        `user_ends`: False at the end of an SSE chat's stream, whose user's idle connection stays for its next."""
        task = asyncio.current_task()
        try:
            if task is not None and task.cancelling():
                self._stop_settling()
            else:
                await self.settled()
        finally:
            try:
                await self._close()
            finally:  # also when cancelled from outside meanwhile: the user's kept connection is not left open
                if user_ends and self._kept is not None:
                    kept, self._kept = self._kept, None
                    await kept.aclose()

    async def _close(self) -> None:
        self.closed_by_client = True
        try:
            if self.transport is not None and not self.closed:
                await self.transport.close()
            await self._join_reader(3, cancel=True)
        finally:  # also when cancelled from outside meanwhile: no reply left sending on a connection closed
            for t in list(self._pending_sends or ()):
                t.cancel()

    async def _exclusive(self) -> asyncio.Future[None]:
        """Wait until no other chat of this session is (re)connecting, then claim that; set the future to release.
        (An asyncio.Lock would do, at some 200 bytes more per open connection.)"""
        while (busy := self._opening) is not None:
            await asyncio.shield(busy)  # a waiter cancelled must not release the holder's claim
        self._opening = claim = asyncio.get_running_loop().create_future()
        return claim

    def _release(self, claim: asyncio.Future[None]) -> None:
        if self._opening is claim:
            self._opening = None
        claim.set_result(None)

    async def _open_shared(self, by: float | None = None) -> None:
        """Open the connection unless it is open: chats in parallel share it, only the first one opens it (its
        welcome awaited until `by` at the latest: ChatFlow.connect_by)."""
        claim = await self._exclusive()
        try:
            if self.closed:
                await self.connect(by)
        finally:
            self._release(claim)

    async def _reconnect(self, action: Reconnect) -> tuple[bool, bool, ConnectFailed | None]:
        """One attempt to reconnect a lost connection, however many chats noticed: (connected, whether this call
        tried: False when another chat had reconnected it already, or made the attempt since this one asked, which
        failed: flow.takes_attempt), and why this call's attempt failed."""
        claim = await self._exclusive()
        try:
            takes = takes_attempt(action, self.generation, self.closed)
            if takes is None:
                return True, False, None
            if not takes:
                return False, False, None
            try:
                await self.connect(action.by, resume=True,
                                   retry=lambda answer: action.will_retry(self.clock(), answer))
                return True, True, None
            except ConnectFailed as exc:
                return False, True, exc
        finally:
            self._release(claim)

    # -- chats --
    @property
    def ended_note(self) -> str:
        """Why the connection ended, when the transport knows (a truncated event stream)."""
        return self.transport.ended_note if self.transport is not None else ""

    @property
    def stream_per_chat(self) -> bool:
        """SSE: each chat's request opens its own event stream, which ends with the run."""
        return self.transport is not None and self.transport.connects_on_send

    @property
    def close_code(self) -> int | None:
        """The close code the connection ended with (Link.close_code)."""
        return self.transport.close_code if self.closed and self.transport is not None else None

    @property
    def closed_clean(self) -> bool:
        """The server closed the connection with a closing handshake of CLEAN_CLOSE_CODES (Link.closed_clean)."""
        return (self.closed and not self.closed_by_client and self.transport is not None
                and self.transport.close_code in CLEAN_CLOSE_CODES)

    def chat(self, content: str, expectations: Expectations,
             options: ChatOptions = DEFAULTS) -> Coroutine[Any, Any, ChatResult]:
        """Send one message and follow its run to a verdict, within the chat's deadline (a coroutine to await).

        With `options.overlap_settle` (and a profile whose events name their run, over a connection that carries
        several chats) it returns when the run ends, with the verdict as it stands (`ChatFlow.provisional`); the
        settle window goes on listening in the background and the final verdict goes to the sink when it ends
        (`settled()` waits for them; `close()` does first)."""
        # A plain function returning _play's coroutine: one suspended frame fewer per open chat.
        return cast("Coroutine[Any, Any, ChatResult]", self._play(self._flow(content, expectations, options),
                                                                  overlap=self._overlaps(options)))

    def play(self, content: str, expectations: Expectations,
             options: ChatOptions = DEFAULTS) -> Coroutine[Any, Any, ChatResult | None]:
        """chat() for a caller that reads its verdicts from the sink (the runner): with overlap_settle it returns
        None at the run's end instead of judging a copy of the chat for a provisional verdict."""
        return self._play(self._flow(content, expectations, options), overlap=self._overlaps(options),
                          provisional=False)

    def _flow(self, content: str, expectations: Expectations, options: ChatOptions) -> ChatFlow:
        return ChatFlow.chat(self.router, content, expectations, user_id=self.user_id, now=self.clock(),
                             options=options)

    def _overlaps(self, options: ChatOptions) -> bool:
        return options.overlap_settle and self.profile.events_name_run

    async def send_invalid(self, raw: str, expectations: Expectations) -> ChatResult:
        """Send a frame the server must answer with an error_message, keeping the connection open (R13)."""
        result = await self._play(ChatFlow.invalid_input(self.router, raw, expectations, now=self.clock()))
        assert result is not None
        return result

    async def _play(self, flow: ChatFlow, overlap: bool = False, provisional: bool = True) -> ChatResult | None:
        """Perform what the chat's flow asks, with this connection and asyncio's waits, until its verdict (with
        `overlap`: until its settle window starts, then listen it out in the background)."""
        clock = self.clock
        loop = asyncio.get_running_loop()  # once a chat, not at each of its waits
        wake = Wake()
        self._add_wake(flow.chat_id, wake)
        own_stream = False
        background = False
        try:
            while True:
                now = clock()
                action = flow.next(now, self)
                if isinstance(action, Wait):
                    if overlap and flow.settling and not own_stream:
                        self._listen_out(flow, wake, action.until, now, loop)
                        background = True
                        return flow.provisional(clock()) if provisional else None
                    waiter = wake.until(action.until, now, loop)
                    del now  # not kept while the chat waits, maybe minutes (a float per open chat)
                    await waiter
                    del waiter
                elif isinstance(action, Send):
                    self._send_failure, self._send_note = None, ""
                    if self._sends_now:  # (what a transport that sends now is told of the chat: nothing more)
                        sent = self._send_now(action.frame)
                    else:
                        # --record: a chat's message (or probe) is written with what its step expected (expect_note).
                        recorded = self.target.recorder is not None and action.what != "resume"
                        sent = await self._safe_send(action.frame, flow.tracker.exp if recorded else None,
                                                     flow.tracker.sent_at)
                    if sent and action.what == "message" and self.transport is not None and self.transport.connects_on_send:
                        own_stream = True  # SSE: the request opened this chat's stream
                        self.sink.connection_attempt(self.scenario, "ok")
                    failure = self._send_failure
                    if sent is None and not self.closed and self.transport is not None:
                        # Found closed before its reader saw the end: ended now, so every chat on it sees that.
                        await self._drop(self.transport)
                    flow.sent(sent is True, failure.kind if failure else None, str(failure) if failure else self._send_note,
                              closed=sent is None, answer=failure)
                elif isinstance(action, Connect):
                    try:
                        await self._open_shared(flow.connect_by)
                    except ConnectFailed as exc:
                        flow.connect_failed(exc.kind, str(exc))
                    else:
                        flow.connected()
                elif isinstance(action, Reconnect):
                    ok, attempted, failure = await self._reconnect(action)
                    if failure is None:
                        flow.reconnected(ok, clock(), attempted=attempted)
                    else:
                        flow.reconnected(ok, clock(), attempted=attempted, failure_kind=failure.kind,
                                         failure_message=str(failure), answer=failure)
                elif isinstance(action, Drop):
                    self.closed_by_client = True  # until the next connect (a resume's)
                    await self._drop_on_purpose()
                elif isinstance(action, Close):
                    if self.transport is not None:
                        self.closed_by_client = True
                        await self.transport.close()
                else:
                    if own_stream:
                        # SSE: the stream was this chat's; the next chat opens its own (on the kept connection)
                        await self.close(user_ends=False)
                    return action.result
        except asyncio.CancelledError:
            # Stopped from outside (the scenario's max_duration, Ctrl-C): still judged, so counters add up; --record:
            # the connection's close record says the run stopped it, so `check` judges the chat as this does.
            between_attempts = flow.backing_off
            flow.stopped(clock())
            self._stopping(between_attempts)
            raise
        finally:
            if not background:
                self._drop_wake(flow.chat_id)
                wake.cancel()

    def _listen_out(self, flow: ChatFlow, wake: Wake, until: float, now: float,
                    loop: asyncio.AbstractEventLoop) -> None:
        """A chat's settle window, in the background and with no task of its own: what wakes the chat (a late event,
        the connection's end, the window's end) asks its flow again; judged, to the sink, when the window ends."""
        if self._settling is None:
            self._settling = {}
        self._settling[flow] = wake
        wake.call = functools.partial(self._settle_step, flow, wake)
        wake.arm(until, now, loop)

    def _settle_step(self, flow: ChatFlow, wake: Wake) -> None:
        now = self.clock()
        action = flow.next(now, self)
        if isinstance(action, Wait):  # in SETTLING the flow only waits or finishes
            wake.arm(action.until, now)
        else:
            self._settled(flow, wake)

    def _settled(self, flow: ChatFlow, wake: Wake) -> None:
        wake.cancel()
        self._drop_wake(flow.chat_id)
        if self._settling is not None:
            self._settling.pop(flow, None)
            if not self._settling:
                self._settling = None
        done = self._all_settled
        if not self._settling and done is not None and not done.done():
            done.set_result(None)

    async def _drop_on_purpose(self) -> None:
        """Drop the socket as a lost network would, and give the reader a bounded time to see it."""
        if self.transport is not None and not self.closed:
            self.transport.dropped_by_client()  # --record: the recording says the client dropped it, not the server
            self.transport.abort()
            await self._join_reader(2, cancel=False)
