"""The async chat client: one virtual user's connection, its chats, pings, reconnects and resumes.

It only moves frames: decoding is the profile's, judging is the ChatTracker's, results go to a Sink.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .checker import ChatResult, Expectations
from .flow import DEFAULTS, WAKE_ALL, ChatFlow, ChatOptions, Close, Connect, Drop, Reconnect, Send, VirtualUser, Wait
from .sinks import Sink
from .targets import Target
from .transports import ConnectFailed, Transport, make_transport


async def _woken_or_until(wake: Wake, timeout: float) -> None:
    """A chat's Wait: until something arrives for it (or its connection ends), at most `timeout` seconds."""
    wake.clear()
    try:
        async with asyncio.timeout(timeout):
            await wake.wait()
    except TimeoutError:
        pass


class Wake:
    """asyncio.Event for one waiter (a chat's own task, or the connection's welcome): a bare future, no deque of
    waiters, which is most of an Event's memory when 15,000 chats are open."""

    __slots__ = ("_is_set", "_waiter")

    def __init__(self) -> None:
        self._is_set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._is_set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._is_set = False

    async def wait(self) -> None:
        if self._is_set:
            return
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None


class Session(VirtualUser):
    """One virtual user: a connection that carries chats (several at once if asked) and survives drops."""

    def __init__(self, target: Target, user_id: str, scenario: str, sink: Sink, *, connect_timeout: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(target, user_id, scenario, sink, connect_timeout=connect_timeout, clock=clock)
        self.transport: Transport | None = None
        self.reader: asyncio.Task | None = None
        self.generation = 0
        self.closed = True
        self._wake: dict[str, Wake] = {}
        self._welcomed: Wake | None = None
        self._lock = asyncio.Lock()
        self._pending_sends: set[asyncio.Task] = set()
        self._send_failure: ConnectFailed | None = None
        # Chats listening out their settle window in the background (ChatOptions.overlap_settle), by task.
        self._settling: dict[asyncio.Task, ChatFlow] = {}

    # -- connection --
    async def connect(self) -> None:
        """Open (or reopen) the connection and wait for the welcome; raises ConnectFailed, classified."""
        settings = self.target.settings_for(self.user_id, self.connect_timeout)
        transport = make_transport(settings)
        if self.target.recorder is not None:  # --record: the frames both ways, for `chatprobe check`
            from .recorder import RecordingTransport

            transport = RecordingTransport(transport, self.target.recorder.connection(self.user_id))
        self._welcomed = Wake()
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
        in_time = True
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._welcomed.wait()  # set by the first answer, or by the reader when the connection ends
        except TimeoutError:
            in_time = False
        self._welcomed = None  # nothing waits for it any more (memory per open connection)
        kind, reason = self.router.welcome_outcome(in_time, self.closed, transport.close_code, self.connect_timeout)
        if kind != "ok":
            await self._drop(transport)
            raise ConnectFailed(kind, reason)

    async def _drop(self, transport: Transport) -> None:
        transport.abort()
        await self._join_reader(2, cancel=True)

    async def _join_reader(self, timeout: float, *, cancel: bool) -> None:
        """Give the reader `timeout` seconds to see the connection's end; past it, cancel it (when `cancel`)."""
        if self.reader is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.reader)
        except TimeoutError:
            if cancel:
                self.reader.cancel()
        except asyncio.CancelledError:
            if not cancel:
                raise
            self.reader.cancel()

    async def _read(self, transport: Transport, gen: int) -> None:
        try:
            await transport.run(self._on_frame)
        finally:
            if transport.protocol_error is not None:
                self.router.on_protocol_error(transport.protocol_error, self.clock())
            if gen == self.generation:
                self.closed = True
                if self._welcomed is not None:
                    self._welcomed.set()
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

    async def settled(self) -> list[ChatResult]:
        """Wait until every chat listening out its settle window in the background is judged; their verdicts."""
        if not self._settling:
            return []
        flows = list(self._settling.values())
        try:
            await asyncio.gather(*self._settling)
        except BaseException:
            # Stopped from outside: judged now, on what arrived, so the counters add up before anyone reads them.
            self._stop_settling()
            raise
        return [f.result for f in flows if f.result is not None]

    def _stop_settling(self) -> None:
        now = self.clock()
        for task, flow in list(self._settling.items()):
            flow.stopped(now)
            task.cancel()

    async def close(self) -> None:
        """Listen out the settle windows still open, then close the connection. Closed by a task being cancelled
        (the run stopped: max_duration, Ctrl-C), the windows are judged at once, on what arrived, not waited out."""
        task = asyncio.current_task()
        try:
            if task is not None and task.cancelling():
                self._stop_settling()
            else:
                await self.settled()
        finally:
            await self._close()

    async def _close(self) -> None:
        if self.transport is not None and not self.closed:
            await self.transport.close()
        await self._join_reader(3, cancel=True)
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
    @property
    def ended_note(self) -> str:
        """Why the connection ended, when the transport knows (a truncated event stream)."""
        return self.transport.ended_note if self.transport is not None else ""

    async def chat(self, content: str, expectations: Expectations, options: ChatOptions = DEFAULTS) -> ChatResult:
        """Send one message and follow its run to a verdict, within the chat's deadline.

        With `options.overlap_settle` (and a profile whose events name their run, over a connection that carries
        several chats) it returns when the run ends, with the verdict as it stands (`ChatFlow.provisional`); the
        settle window goes on listening in the background and the final verdict goes to the sink when it ends
        (`settled()` waits for them; `close()` does first)."""
        flow = ChatFlow.chat(self.router, content, expectations, user_id=self.user_id, now=self.clock(),
                             options=options)
        return await self._play(flow, overlap=options.overlap_settle and self.profile.events_name_run)

    async def send_invalid(self, raw: str, expectations: Expectations) -> ChatResult:
        """Send a frame the server must answer with an error_message, keeping the connection open (R13)."""
        return await self._play(ChatFlow.invalid_input(self.router, raw, expectations, now=self.clock()))

    async def _play(self, flow: ChatFlow, overlap: bool = False) -> ChatResult:
        """Perform what the chat's flow asks, with this connection and asyncio's waits, until its verdict (with
        `overlap`: until its settle window starts, then listen it out in the background)."""
        clock = self.clock
        wake = self._wake[flow.chat_id] = Wake()
        own_stream = False
        background = False
        try:
            while True:
                action = flow.next(clock(), self)
                if isinstance(action, Wait):
                    if overlap and flow.settling and not own_stream:
                        task = asyncio.get_running_loop().create_task(self._listen_out(flow, wake))
                        self._settling[task] = flow
                        task.add_done_callback(self._settling_done)
                        background = True
                        return flow.provisional(clock())
                    await _woken_or_until(wake, action.until - clock())
                elif isinstance(action, Send):
                    self._send_failure = None
                    sent = await self._safe_send(action.frame)
                    if sent and action.what == "message" and self.transport is not None and self.transport.connects_on_send:
                        own_stream = True  # SSE: the request opened this chat's stream
                        self.sink.connection_attempt(self.scenario, "ok")
                    failure = self._send_failure
                    flow.sent(sent, failure.kind if failure else None, str(failure) if failure else "")
                elif isinstance(action, Connect):
                    try:
                        async with self._lock:  # chats in parallel share one connection: only the first one opens it
                            if self.closed:
                                await self.connect()
                    except ConnectFailed as exc:
                        flow.connect_failed(exc.kind, str(exc))
                    else:
                        flow.connected()
                elif isinstance(action, Reconnect):
                    flow.reconnected(await self._reconnect(action.generation))
                elif isinstance(action, Drop):
                    await self._drop_on_purpose()
                elif isinstance(action, Close):
                    if self.transport is not None:
                        await self.transport.close()
                else:
                    if own_stream:
                        await self.close()  # SSE: the stream was this chat's; the next chat opens its own
                    return action.result
        except asyncio.CancelledError:
            # Stopped from outside (the scenario's max_duration, Ctrl-C): still judged, so counters add up.
            flow.stopped(clock())
            raise
        finally:
            if not background:
                self._wake.pop(flow.chat_id, None)

    async def _listen_out(self, flow: ChatFlow, wake: Wake) -> ChatResult:
        """A chat's settle window, in the background: late events still reach its tracker; judged when it ends."""
        clock = self.clock
        try:
            while True:
                action = flow.next(clock(), self)
                if not isinstance(action, Wait):  # in SETTLING the flow only waits or finishes
                    assert flow.result is not None
                    return flow.result
                await _woken_or_until(wake, action.until - clock())
        except asyncio.CancelledError:
            flow.stopped(clock())
            raise
        finally:
            self._wake.pop(flow.chat_id, None)

    def _settling_done(self, task: asyncio.Task) -> None:
        self._settling.pop(task, None)

    async def _drop_on_purpose(self) -> None:
        """Drop the socket as a lost network would, and give the reader a bounded time to see it."""
        if self.transport is not None and not self.closed:
            self.transport.abort()
            await self._join_reader(2, cancel=False)
