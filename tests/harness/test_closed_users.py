"""The closed model's users (harness/runner.py `_Play.closed`): each user's task is made when the ramp says it starts,
never before; a user that fails, or a cancellation, starts no more and ends the others, as asyncio.TaskGroup would.
The users here stand in for virtual users (what they do is not under test: when and how they are started and ended
is), on asyncio's loop and on uvloop."""
from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from harness.runner import SWEEP_MIN, USER_TASK, _Play
from harness.scenario import Scenario
from harness.sinks import Sink

LOOPS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    return LOOPS[request.param]


class Users(_Play):
    """_Play with users that note when they start and, told to, fail or wait until cancelled."""

    def __init__(self, scenario: Scenario, fail_first: bool = False) -> None:
        super().__init__(scenario, None, Sink(), "t", 0.0, None)  # type: ignore[arg-type]
        self.fail_first = fail_first
        self.starts: list[float] = []
        self.tasks_at_start: list[int] = []  # the users' tasks that existed when each one started
        self.cancelled = 0
        self.forever = False
        self.three_started = asyncio.Event()

    async def user(self, leave: asyncio.Event | None = None, *, again: bool = False,
                   slots: asyncio.Semaphore | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.starts.append(loop.time())
        self.tasks_at_start.append(sum(1 for t in asyncio.all_tasks() if t.get_name() == USER_TASK))
        if len(self.starts) == 3:
            self.three_started.set()
        if self.fail_first and len(self.starts) == 1:
            raise RuntimeError("a user's bug")
        if self.forever:
            try:
                await loop.create_future()  # until cancelled
            except asyncio.CancelledError:
                self.cancelled += 1
                raise


def test_users_start_on_the_ramps_schedule_never_before(run: Callable[..., Any]) -> None:
    play = Users(Scenario.model_validate({"name": "r", "users": 5, "ramp_up": "0.2s"}))

    async def main() -> float:
        start = asyncio.get_running_loop().time()
        await play.closed()
        return start

    start = run(main())
    assert len(play.starts) == 5
    # Each user's task was made when it started, not at the ramp's beginning to sleep until then (the users before it
    # have ended already here, or are about to: never more tasks than users started).
    assert all(n <= i + 1 for i, n in enumerate(play.tasks_at_start)), play.tasks_at_start
    for i, at in enumerate(play.starts):
        # uvloop's clock is read once per loop turn and its timers fire up to 1 ms early: the ramp waits until due
        assert at - start >= 0.2 * i / 5 - 0.0015, (i, at - start)


def test_a_user_failing_during_the_ramp_starts_no_more_and_ends_the_others(run: Callable[..., Any]) -> None:
    play = Users(Scenario.model_validate({"name": "r", "users": 50, "ramp_up": "30s"}), fail_first=True)
    play.forever = True

    async def main() -> None:
        await play.closed()

    with pytest.raises(RuntimeError, match="a user's bug"):
        run(main())
    # The first user failed at once: the ramp (30 s for 50 users) stopped long before its end, and every user that
    # had started was cancelled and awaited before closed() raised.
    assert 1 <= len(play.starts) < 50
    assert play.cancelled == len(play.starts) - 1


def test_cancelling_the_closed_model_ends_every_started_user_and_starts_no_more(run: Callable[..., Any]) -> None:
    play = Users(Scenario.model_validate({"name": "r", "users": 40, "ramp_up": "20s"}))
    play.forever = True

    async def main() -> None:
        task = asyncio.ensure_future(play.closed())
        async with asyncio.timeout(10):  # a ramp that never starts them fails the test
            await play.three_started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # closed() has returned: the ramp that starts users is over, and every user it started was ended and awaited.
        assert 3 <= len(play.starts) < 40 and play.cancelled == len(play.starts)

    run(main())


def test_a_user_that_ends_cancelled_is_no_failure_and_the_others_go_on(run: Callable[..., Any]) -> None:
    """As in an asyncio.TaskGroup: a user's task ending cancelled when nobody cancelled the run (a future it awaited
    was cancelled by another coroutine) ends that user only."""

    class Some(Users):
        finished = 0

        async def user(self, leave: asyncio.Event | None = None, *, again: bool = False,
                       slots: asyncio.Semaphore | None = None) -> None:
            i = len(self.starts)
            self.starts.append(0.0)
            if i == 0:
                try:
                    task = asyncio.current_task()
                    assert task is not None
                    task.cancel()
                    await asyncio.sleep(0)  # wait-ok: a yield, where the cancel lands (no condition to wait for)
                finally:
                    first_ended.set()
            # The others are still running when the first ends cancelled, and go on to their end.
            async with asyncio.timeout(10):
                await first_ended.wait()
            self.finished += 1

    first_ended = asyncio.Event()
    play = Some(Scenario.model_validate({"name": "r", "users": 4}))
    run(play.closed())
    assert len(play.starts) == 4 and play.finished == 3


_SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("_SEEN", default="unset")


class ContextUsers(Users):
    """Users that note the caller's context variable, and set one of their own."""

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario)
        self.seen: list[str] = []

    async def user(self, leave: asyncio.Event | None = None, *, again: bool = False,
                   slots: asyncio.Semaphore | None = None) -> None:
        self.seen.append(_SEEN.get())
        _SEEN.set(f"user {len(self.seen)}")


def test_users_start_in_one_copy_of_the_callers_context(run: Callable[..., Any]) -> None:
    """A run's users see the context variables of whoever started the run (a tracing context, say), through one copy
    of it for all of them, not a copy each (memory per open chat): what one user sets, the next one sees."""
    play = ContextUsers(Scenario.model_validate({"name": "c", "users": 3}))

    async def main() -> None:
        _SEEN.set("caller")
        await play.closed()
        assert _SEEN.get() == "caller"  # the caller's own context is untouched

    run(main())
    assert play.seen == ["caller", "user 1", "user 2"]


class BriefUsers(Users):
    """Users that end at once (`chats_per_user: 1` against a fast server), each noting how many of the users before
    it are still held in memory (their tasks, through weak references), and how many users were started and not yet
    ended when it ran (every task but the run's own: a user's task runs to its end at once)."""

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario)
        self.tasks: list[weakref.ref[asyncio.Task[Any]]] = []
        self.held: list[int] = []
        self.playing = 0

    async def user(self, leave: asyncio.Event | None = None, *, again: bool = False,
                   slots: asyncio.Semaphore | None = None) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(weakref.ref(task))
        self.playing = max(self.playing, len(asyncio.all_tasks()) - 1)
        if len(self.tasks) % 100 == 0:  # (a task let go is freed at once: it is in no reference cycle)
            self.held.append(sum(1 for ref in self.tasks[:-1] if ref() is not None))


def test_a_long_ramp_of_brief_users_holds_the_users_playing_not_every_user_started(run: Callable[..., Any]) -> None:
    """A new user for every chat, over a long run (a server that sees a new user and connection per chat): every
    user's task was kept in the run's list to its end, done or not (~700 bytes a chat, a task and its finished
    coroutine). The list keeps the users still playing: those that ended are swept out of it, so the users held stay
    under a bound that does not grow with the users started."""
    users = 2_000
    play = BriefUsers(Scenario.model_validate({"name": "b", "users": users, "ramp_up": "1s"}))
    run(play.closed())
    assert len(play.tasks) == users and len(play.held) == users // 100
    # Ended users are swept once they are half the list past SWEEP_MIN: twice the users started and not yet ended
    # plus SWEEP_MIN at most. Those are a few here, unless the loop lagged and the ramp started a burst of them at
    # once (how many, this machine's load says: counted, not assumed); every user ever started was held before.
    assert max(play.held) <= 2 * play.playing + SWEEP_MIN, (play.playing, play.held)
