"""The runner: plays a scenario's load (users, stages of users, or an arrival rate of chats) against a target and
collects one verdict per chat."""
from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from .checker import ChatResult
from .client import Session
from .events import Violation
from .results import STOPPED_BY, Listing, ScenarioRun
from .scenario import ChatCall, ChatGroup, RawCall, Scenario, Shape, UserScript
from .sinks import Fanout, Sink
from .stats import StageTallies, Tally, evaluate, generator_warnings
from .targets import Target

# How often a staged run of users looks at its schedule: a ramp adds or removes users on these ticks.
SCHEDULE_TICK = 0.05
# Task names: one string for all (asyncio would make a "Task-N" string per task, ~55 bytes of every open chat).
USER_TASK, CHAT_TASK = "chatprobe-user", "chatprobe-chat"
# The closed model's list of user tasks is swept of ended ones past twice the users playing plus this many.
SWEEP_MIN = 64
# Users started in one turn of the event loop at most: each one's first step (its session, its token, its connection
# opened) is ~0.5 ms, and a signal or the run's deadline is seen only between two turns: 9,000 users started in one
# turn held a SIGTERM for 5 s.
START_BATCH = 100


def _tasks_context() -> contextvars.Context:
    """The context every user (or chat) task of one run starts in: one copy of the caller's, not a copy per task
    (asyncio's default, 64 bytes of every open chat). Nothing in a chat sets a context variable, and the run's one
    loop runs one task step at a time, so none enters it while another is in it (a context is never shared across
    threads: the client's timers have one per loop, client.py)."""
    return contextvars.copy_context()


class _Collector(Sink):
    """The run's verdicts as they come: every chat counted (its Tally, and its stage's when the run has stages), the
    first ones listed (results.Listing): memory bounded however many chats the run judges. The last of the run's
    sinks: a chat it does not list loses its events, after every other sink has seen them."""

    def __init__(self, stages: StageTallies | None, started: float) -> None:
        self.tally = Tally()
        self.listing = Listing()
        self.stages, self.started = stages, started
        self.dropped = 0

    def chat_finished(self, result: ChatResult) -> None:
        self.tally.add(result)
        if self.stages is not None:
            self.stages.add(result, result.sent_at - self.started)
        self.listing.add(result)

    def chat_dropped(self, scenario: str) -> None:
        self.dropped += 1

    def connection_violation(self, scenario: str, violation: Violation) -> None:
        # A connection's own (R8, R12 after its last chat): counted and listed, in no chat (nor any stage's chats).
        self.tally.add_connection_violation(violation)
        self.listing.add_connection_violation(violation)


class _Play:
    """One run's drivers: the closed model (users playing their script, maybe through stages of users) and the
    open model (chats started at the stages' rate, at most max_in_flight at once, the others dropped)."""

    def __init__(self, scenario: Scenario, target: Target, out: Sink, prefix: str, started: float,
                 stages: StageTallies | None) -> None:
        self.scenario, self.target, self.out, self.prefix = scenario, target, out, prefix
        self.started = started
        self.stages = stages
        self.users = 0

    def session(self) -> Session:
        i, self.users = self.users, self.users + 1
        return Session(self.target, f"{self.prefix}-u{i}", self.scenario.name, self.out,
                       connect_timeout=self.scenario.connect_timeout)

    async def item(self, session: Session, script: UserScript, item: RawCall | ChatGroup) -> None:
        if isinstance(item, RawCall):
            await session.send_invalid(item.raw, item.expectations)
        else:
            in_flight = asyncio.Semaphore(item.parallel)

            async def one() -> None:
                async with in_flight:
                    call = script.chat()
                    await session.play(call.content, call.expectations, call.options)

            await asyncio.gather(*(one() for _ in range(item.count)))

    async def user(self, leave: asyncio.Event | None = None, *, again: bool = False) -> None:
        """One virtual user: its script once (or, `again`, over and over until `leave`), thinking between chats;
        a user asked to leave finishes the chat it is in (k6's graceful ramp-down)."""
        session = self.session()
        script = self.scenario.user_script(self.target.profile)
        last: ChatCall | RawCall | ChatGroup | None = None
        try:
            while True:
                for item in script.plan():
                    if last is not None and (pause := script.pause(last)) > 0:
                        if await _wait(leave, pause):
                            return
                    if leave is not None and leave.is_set():
                        return
                    if isinstance(item, ChatCall):  # played here: no coroutine of its own per open chat
                        await session.play(item.content, item.expectations, item.options)
                    else:
                        await self.item(session, script, item)
                    last = item
                if not again:
                    return
        finally:
            await session.close()

    async def closed(self) -> None:
        sc = self.scenario
        at_once = sc.concurrency or sc.users
        ramp = sc.ramp_up if sc.users > 1 else 0.0
        # Each user's task is made when the ramp says it starts, as k6 starts a VU, not all at once to sleep until
        # then (100,000 users over a long ramp were 100,000 sleeping tasks, ~1 KB each, before the first connection).
        # The tasks are kept in a list with one done-callback for all, not in a TaskGroup (its per-task bookkeeping,
        # a bound done-callback and a set entry, was ~130 bytes of every open chat); what a TaskGroup guarantees is
        # kept: when a user fails (also during the ramp) or this is cancelled, no more start and the others are
        # cancelled and awaited; a failure comes out as the user's own exception (the first, if several). The list
        # holds the users still playing: it is swept of the ended ones once it is twice what the last sweep left plus
        # SWEEP_MIN (amortized O(1) a user). Each user kept to the run's end was ~700 bytes, a task and its finished
        # coroutine: a run of a new user per chat grew by that much a chat.
        # A user's task is made once fewer than `concurrency` are playing, so at most that many user tasks (and their
        # sessions, connections and file descriptors) exist at once: made at once and each waiting for a slot, the
        # 100,000 users of `users: 100000` were 100,000 tasks, and with no `concurrency` 100,000 connections opened
        # in one turn of the loop, which a signal then waited behind.
        loop = asyncio.get_running_loop()
        users: list[asyncio.Task[None]] = []
        # Set to the first user that failed, or to None once every user has ended after the ramp; a user that ends
        # cancelled (not by this) is no failure, as in a TaskGroup: the others go on.
        over: asyncio.Future[asyncio.Task[None] | None] = loop.create_future()
        left = 0  # users playing (their tasks not ended)
        room: asyncio.Future[None] | None = None  # set when a user ends: one more may start
        swept = SWEEP_MIN  # the list's length at which it is swept next
        ramping = True

        def ended(task: asyncio.Task[None]) -> None:  # one function for every user: no bound method each
            nonlocal left
            left -= 1
            if room is not None and not room.done():
                room.set_result(None)
            if over.done():
                return
            if not task.cancelled() and task.exception() is not None:
                over.set_result(task)
            elif left == 0 and not ramping:
                over.set_result(None)

        start = time.monotonic()
        context = _tasks_context()
        try:
            for i in range(sc.users):
                due = start + ramp * i / sc.users
                while not over.done() and (delay := due - time.monotonic()) > 0:
                    await asyncio.wait((over,), timeout=delay)  # the ramp's schedule itself, cut by a failure
                while not over.done() and left >= at_once:  # all `concurrency` playing: until one ends
                    room = loop.create_future()
                    await asyncio.wait((over, room), return_when=asyncio.FIRST_COMPLETED)
                if over.done():
                    break
                task = loop.create_task(self.user(), name=USER_TASK, context=context)
                task.add_done_callback(ended)
                if len(users) >= swept:
                    users = [t for t in users if not t.done()]  # (`ended` still comes: its callback holds it)
                    swept = 2 * len(users) + SWEEP_MIN
                users.append(task)
                left += 1
                if (i + 1) % START_BATCH == 0:
                    await asyncio.sleep(0)  # one turn of the loop: the users started so far take their first step
            ramping = False
            if left == 0 and not over.done():
                over.set_result(None)
            failed = await over
            if failed is not None:
                failed.result()  # raises the first user's error (the others are cancelled below)
        finally:
            for task in users:
                task.cancel()  # a no-op on a finished one
            await asyncio.gather(*users, return_exceptions=True)

    async def staged_users(self, shape: Shape) -> None:
        """Users through the stages: as many as the shape says at each tick, each playing its script again and
        again; the newest leave first when a stage ramps down, all of them at the end of the last stage."""
        active: list[asyncio.Event] = []
        context = _tasks_context()
        async with asyncio.TaskGroup() as tg:
            while (t := time.monotonic() - self.started) < shape.total:
                want = shape.users_at(t)
                while len(active) < want:
                    leave = asyncio.Event()
                    active.append(leave)
                    tg.create_task(self.user(leave, again=True), name=USER_TASK, context=context)
                while len(active) > want:
                    active.pop().set()
                await asyncio.sleep(min(SCHEDULE_TICK, shape.total - t))  # the schedule's tick itself
            for leave in active:
                leave.set()

    async def arrivals(self, shape: Shape) -> None:
        """The open model: each chat starts when it is due, on an idle connection or a new one, whatever the
        chats before it are doing; one due while max_in_flight are in flight is dropped and counted, never
        delayed. Its times count from when it was due (ChatOptions.due_at)."""
        stages = self.stages
        assert stages is not None
        script = self.scenario.user_script(self.target.profile)
        idle: list[Session] = []
        context = _tasks_context()
        sessions: list[Session] = []
        in_flight = 0
        limit = self.scenario.max_in_flight
        clock, started, name = time.monotonic, self.started, self.scenario.name

        async def one(session: Session, due_at: float) -> None:
            nonlocal in_flight
            stages.begun(due_at - started, clock() - due_at)  # late when the process is saturated
            try:
                call = script.chat()
                await session.play(call.content, call.expectations, dataclasses.replace(call.options, due_at=due_at))
            finally:
                in_flight -= 1
                idle.append(session)

        try:
            async with asyncio.TaskGroup() as tg:
                for due in shape.arrivals():
                    at = started + due
                    # The arrival schedule itself; again until it is due: uvloop's timers fire up to a millisecond
                    # early, and a chat begun before it was due counted in the stage before a boundary.
                    while (delay := at - clock()) > 0:
                        await asyncio.sleep(delay)
                    if in_flight >= limit:
                        stages.dropped(due)
                        self.out.chat_dropped(name)
                        continue
                    in_flight += 1
                    if idle:
                        session = idle.pop()
                    else:
                        session = self.session()
                        sessions.append(session)
                    tg.create_task(one(session, at), name=CHAT_TASK, context=context)
        finally:
            await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


async def run_scenario(scenario: Scenario, target: Target, sink: Sink | None = None, *,
                       user_prefix: str | None = None, stop: asyncio.Event | None = None) -> ScenarioRun:
    """Run the scenario's load, bounded by its max_duration (or until `stop` is set); every chat gets a verdict.

    Virtual users are `<user_prefix>-u<N>`; the default prefix is random so parallel runs never share users.
    """
    if target.compression != scenario.compression:  # the scenario says whether to offer permessage-deflate
        target = dataclasses.replace(target, compression=scenario.compression)
    prefix = user_prefix or f"cp-{uuid.uuid4().hex[:6]}"
    shape = scenario.shape()
    stages = StageTallies(shape) if shape is not None else None
    started_wall = time.time()
    started = time.monotonic()
    collector = _Collector(stages, started)
    out = Fanout([sink, collector] if sink is not None else [collector])
    play = _Play(scenario, target, out, prefix, started, stages)
    stopped_by = ""

    body: Callable[[], Coroutine[Any, Any, None]]
    if shape is None:
        body = play.closed
    elif shape.kind == "users":
        body = lambda: play.staged_users(shape)  # noqa: E731
    else:
        body = lambda: play.arrivals(shape)  # noqa: E731
    task = asyncio.ensure_future(body())
    try:
        await _until_done_or_stopped([task], stop, scenario.max_duration)
    except (TimeoutError, _Stopped) as exc:
        # Out of time, or stopped from outside (Ctrl-C, SIGTERM): the chats in flight are judged as they stand.
        why = "interrupted" if isinstance(exc, _Stopped) else "max_duration"
        stopped_by = STOPPED_BY[why]
        if target.recorder is not None:  # --record: the connections the stop closes say so, and why (before it does)
            target.recorder.stopped(why)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    elapsed = time.monotonic() - started
    stats = collector.tally.stats()
    stats.dropped = collector.dropped
    run = ScenarioRun(
        scenario=scenario, target=target.name, results=collector.listing.listed, stats=stats,
        objectives=evaluate(stats, scenario.objectives), started_at=started_wall,
        elapsed=elapsed, stopped_by=stopped_by, connection_violations=collector.listing.connection_violations,
    )
    if stages is not None:
        run.stages = stages.stats()
        run.warnings = generator_warnings([s for s in run.stages if s.end <= elapsed])
    if (note := collector.listing.note(stats.chats)) is not None:
        run.warnings.append(note)
    if (note := target.websocket_client.take_note()) is not None:  # picows refused a valid answer: said once
        run.warnings.append(note)
    out.run_finished(run.passed)
    return run


async def _wait(event: asyncio.Event | None, seconds: float) -> bool:
    """Think for `seconds`, cut short when `event` is set; True when it was."""
    if event is None:
        await asyncio.sleep(seconds)  # the think time itself
        return False
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
        return True
    except TimeoutError:
        return False


class _Stopped(Exception):
    pass


def _retrieve(f: asyncio.Future[Any]) -> None:
    """Mark whatever a gather ended with as seen: when the run's deadline or a signal cut the wait, the caller cancels
    and awaits the users itself, and nothing else would (asyncio would log "exception was never retrieved")."""
    if not f.cancelled():
        f.exception()


async def _until_done_or_stopped(tasks: Sequence[asyncio.Future[None]], stop: asyncio.Event | None,
                                 within: float | None = None) -> None:
    """Wait for every user, or until `stop` is set (then raise _Stopped) or `within` seconds have passed (then raise
    TimeoutError); a user's error is raised. Stopped, the users are still running: the caller stops them, after it
    has said why (an asyncio.timeout around this would cancel them first, before the caller knew)."""
    everyone = asyncio.gather(*tasks)
    everyone.add_done_callback(_retrieve)
    stopper: asyncio.Future[Any] | None = asyncio.ensure_future(stop.wait()) if stop is not None else None
    try:
        done, _ = await asyncio.wait({everyone} if stopper is None else {everyone, stopper}, timeout=within,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        if stopper is not None:
            stopper.cancel()
    if everyone not in done:
        raise _Stopped if stopper in done else TimeoutError
    everyone.result()
