"""The client's deadlines: every Wake's timer is an entry in one heap per event loop, under one loop timer. They pass in
order and never early, a moved or cancelled one never fires where it was, cancelled entries do not pile up, and one
chat's failing callback does not hold up the others. On asyncio's loop and on uvloop's (whose timers fire early)."""
from __future__ import annotations

import asyncio
import random
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from harness.client import Wake, _deadlines

LOOPS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    return LOOPS[request.param]


def test_deadlines_pass_in_order_and_never_early(run: Callable[..., Any]) -> None:
    async def main() -> list[tuple[int, float, float]]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        delays = [0.03, 0.005, 0.02, 0.0, 0.011, 0.005, 0.04]
        passed: list[tuple[int, float, float]] = []

        async def one(i: int, delay: float) -> None:
            wake = Wake()
            await wake.until(now + delay, now)
            passed.append((i, now + delay, loop.time()))

        async with asyncio.timeout(5):  # a lost deadline fails the test, not hangs it
            await asyncio.gather(*(one(i, d) for i, d in enumerate(delays)))
        assert not _deadlines(loop).heap  # every entry fired: nothing left behind
        return passed

    passed = run(main())
    assert [when for _, when, _ in passed] == sorted(when for _, when, _ in passed)
    assert all(at >= when for _, when, at in passed)


def test_a_deadline_moves_earlier_never_later_and_a_cancelled_one_never_fires(run: Callable[..., Any]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        moved, cancelled, later = Wake(), Wake(), Wake()
        fired: list[str] = []
        moved.call, cancelled.call, later.call = (lambda: fired.append("moved")), (lambda: fired.append("cancelled")), \
            (lambda: fired.append("later"))
        moved.arm(now + 60, now)
        moved.arm(now + 0.01, now)  # earlier: moved
        moved.arm(now + 30, now)  # later: kept where it was
        cancelled.arm(now + 0.005, now)
        cancelled.cancel()
        later.arm(now + 0.02, now)
        done = Wake()
        async with asyncio.timeout(5):  # a lost deadline fails the test, not hangs it
            await done.until(now + 0.05, now)
        assert fired == ["moved", "later"]
        assert not _deadlines(loop).heap and _deadlines(loop).timer is None

    run(main())


def test_cancelled_deadlines_do_not_pile_up(run: Callable[..., Any]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        deadlines = _deadlines(loop)
        now = loop.time()
        live = [Wake() for _ in range(10)]
        for i, w in enumerate(live):
            w.arm(now + 300 + i, now)
        for i in range(20_000):  # chats that came and went, each with a deadline minutes away
            w = Wake()
            w.arm(now + 600 + i, now)
            w.cancel()
            assert len(deadlines.heap) <= 2 * len(live) + 2
        for w in live:
            w.cancel()
        assert not deadlines.heap and deadlines.timer is None

    run(main())


@pytest.mark.parametrize("order", ["in_order", "shuffled"])
def test_open_chats_carry_few_dead_entries(run: Callable[..., Any], order: str) -> None:
    """Every open chat leaves one cancelled entry behind (its connection's welcome wait, due a connect timeout later):
    cancelled in the order they are due (welcomes come in the order connections opened) they go at once; in any
    order they stay under a quarter of the heap, not one for every live one."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        deadlines = _deadlines(loop)
        now = loop.time()
        chats = []
        welcomes = []
        for i in range(2_000):
            welcome = Wake()
            welcome.arm(now + 30 + i / 1000, now)
            welcomes.append(welcome)
            chat = Wake()
            chat.arm(now + 330 + i / 1000, now)  # the chat's own deadline, minutes away
            chats.append(chat)
        if order == "shuffled":
            random.Random(7).shuffle(welcomes)
        for welcome in welcomes:
            welcome.cancel()  # the welcome came
        live = sum(1 for entry in deadlines.heap if entry[1]._timer is entry)
        assert live == len(chats)
        dead = len(deadlines.heap) - live
        if order == "in_order":
            assert dead == 0
        assert dead <= len(deadlines.heap) // 4 + 1
        for w in chats:
            w.cancel()
        assert not deadlines.heap and deadlines.timer is None

    run(main())


def test_a_failing_callback_is_reported_and_the_others_still_fire(run: Callable[..., Any]) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        reported: list[BaseException] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context["exception"]))
        now = loop.time()
        fired: list[str] = []

        def boom() -> None:
            raise ValueError("a sink failed")

        bad, good = Wake(), Wake()
        bad.call, good.call = boom, (lambda: fired.append("good"))
        bad.arm(now + 0.005, now)
        good.arm(now + 0.005, now)  # due in the same pass as the failing one
        async with asyncio.timeout(5):  # a lost deadline fails the test, not hangs it
            await Wake().until(now + 0.03, now)
        assert [type(e) for e in reported] == [ValueError]
        return fired

    assert run(main()) == ["good"]


def test_each_event_loop_has_its_own_deadlines() -> None:
    seen: list[object] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        async with asyncio.timeout(5):  # a lost deadline fails the test, not hangs it
            await Wake().until(now + 0.002, now)
        seen.append(_deadlines(loop))

    asyncio.run(main())
    uvloop.run(main())
    asyncio.run(main())
    assert len({id(d) for d in seen}) == 3  # (all three kept alive by `seen`: no id reused)


def test_a_callback_raising_a_base_exception_loses_no_other_deadline(run: Callable[..., Any]) -> None:
    async def main() -> tuple[list[str], list[type]]:
        loop = asyncio.get_running_loop()
        reported: list[type] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(type(context["exception"])))
        now = loop.time()
        fired: list[str] = []

        def bad() -> None:
            raise asyncio.CancelledError()  # a BaseException, not an Exception

        a, b, c = Wake(), Wake(), Wake()
        a.call, b.call, c.call = bad, (lambda: fired.append("b")), (lambda: fired.append("c"))
        a.arm(now + 0.005, now)
        b.arm(now + 0.005, now)  # due in the same pass, after or before the failing one
        c.arm(now + 0.02, now)  # due later: the loop timer must still be armed for it
        async with asyncio.timeout(5):  # a lost deadline fails the test, not hangs it
            await Wake().until(now + 0.05, now)
        return fired, reported

    fired, reported = run(main())
    assert sorted(fired) == ["b", "c"] and reported == [asyncio.CancelledError]


def test_a_wake_cancelled_between_runs_of_its_loop_leaves_the_count_of_dead_entries_true() -> None:
    """A wake cancelled while no loop runs is not counted as a dead entry; the count must not go below the truth (it
    decides when the heap is rebuilt)."""
    loop = asyncio.new_event_loop()
    try:
        a, b, c = Wake(), Wake(), Wake()

        async def arm() -> None:
            now = loop.time()
            a.arm(now + 10, now)
            b.arm(now + 20, now)
            c.arm(now + 30, now)

        async def cancel_b() -> None:
            b.cancel()

        loop.run_until_complete(arm())
        a.cancel()  # between runs: no running loop
        loop.run_until_complete(cancel_b())
        deadlines = _deadlines(loop)
        dead = sum(1 for entry in deadlines.heap if entry[1]._timer is not entry)
        assert deadlines.stale == dead == 0 and len(deadlines.heap) == 1
        c.cancel()
    finally:
        loop.close()


def test_loops_in_two_threads_fire_their_deadlines_at_the_same_time() -> None:
    """Each loop's timer runs in a context of its own: two loops in two threads (the pytest plugin's loop thread beside
    a test's own loop) firing at once must not both enter one (Python refuses: the loser's timer was lost and every
    wait on its loop hung)."""
    errors: list[str] = []
    finished: list[int] = []
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, so the two loops' timers overlap

    def worker(tag: int) -> None:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda _loop, ctx: errors.append(repr(ctx.get("exception"))))
            fired = 0
            done = loop.create_future()

            def again(w: Wake) -> Callable[[], None]:
                def call() -> None:
                    nonlocal fired
                    fired += 1
                    sum(range(2000))  # a little Python inside the timer's callback: the other thread gets the GIL
                    if fired >= 6000:
                        if not done.done():
                            done.set_result(None)
                        return
                    now = loop.time()
                    w.arm(now + 0.001, now)
                return call

            wakes = [Wake() for _ in range(20)]
            for w in wakes:
                w.call = again(w)
                now = loop.time()
                w.arm(now + 0.001, now)
            try:
                await asyncio.wait_for(done, 20)  # a hung loop fails the test, not the suite
                finished.append(tag)
            finally:
                for w in wakes:
                    w.cancel()

        asyncio.run(main())

    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(switch)
    assert errors == []
    assert sorted(finished) == [0, 1]
