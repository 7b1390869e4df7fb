"""Load shapes against a real agentsim on loopback, checked against what the server itself recorded (its ground
truth): think time spaces a user's chats, stages ramp and hold users, an arrival rate starts chats on schedule
whatever the server does, chats past max_in_flight are dropped and counted, and first-event time counts from
when a chat was due."""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from harness.client import Session
from harness.events import Outcome, Rule
from harness.flow import ChatOptions
from harness.runner import run_scenario
from harness.scenario import Scenario, expectations_for
from harness.sinks import Sink
from monitors.metrics import ChatMetrics, MetricsSink

from .conftest import ground_truth, scenario

pytestmark = pytest.mark.timeout(60)
QUICK = {"settle": "0.02s", "deadline": "5s"}


def shaped(**kw) -> Scenario:
    return Scenario.model_validate({"name": "t", "message": "hi", "expect": QUICK, **kw})


def records(path, kind: str) -> list[dict]:
    return [r for r in ground_truth(path) if r.get("kind") == kind]


async def test_think_time_spaces_each_users_chats(sim_factory):
    async with sim_factory() as (_, target, gt):
        sc = scenario(users=2, chats_per_user=4, think_time="300ms", message="hi", expect=QUICK)
        run = await run_scenario(sc, target)
        assert run.stats.outcomes[Outcome.PASSED] == 8
        starts: dict[str, list[float]] = {}
        for r in records(gt, "run_started"):
            starts.setdefault(r["user_id"], []).append(r["t"])
        assert len(starts) == 2
        for times in starts.values():  # each gap: a chat, its settle and the 300 ms of thought
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert len(gaps) == 3 and all(g >= 0.3 for g in gaps), gaps

        # A range is drawn for each pause (uniform), a step's own think time wins over the scenario's.
        sc = scenario(users=1, think_time={"min": "100ms", "max": "500ms"}, expect=QUICK,
                      steps=[{"chat": {"message": "a", "repeat": 6}}, {"chat": {"message": "b", "think_time": "0.7s"}},
                             {"chat": {"message": "c"}}])
        before = len(records(gt, "run_started"))
        await run_scenario(sc, target)
        times = [r["t"] for r in records(gt, "run_started")[before:]]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(gaps) == 7
        assert all(g >= 0.1 for g in gaps[:6]) and max(gaps[:6]) - min(gaps[:6]) > 0.05, gaps  # drawn
        assert gaps[6] >= 0.7, gaps  # after step b: its own 0.7 s


async def test_stages_ramp_users_up_hold_them_and_ramp_down(sim_factory):
    async with sim_factory() as (_, target, gt):
        sc = shaped(think_time="50ms", stages=[{"duration": "2s", "users": 4},
                                               {"duration": "1s", "users": 4, "ramp": False},
                                               {"duration": "1s", "users": 0}])
        t0 = time.time()
        run = await run_scenario(sc, target)
        opened = sorted(r["t"] - t0 for r in records(gt, "connection_opened"))
        closed = sorted(r["t"] - t0 for r in records(gt, "connection_closed"))
    # 0 -> 4 users over 2 s: one more user each time the line passes a whole user (0, 0.5, 1.0, 1.5 s), never
    # sooner (later by as much as the machine is busy: not asserted).
    assert len(opened) == 4, opened
    assert all(got >= want for got, want in zip(opened, (0.0, 0.5, 1.0, 1.5), strict=True)), opened
    # 4 -> 0 over the last second: a user leaves after the chat it is in (3.25 s, 3.5, 3.75, 4), never sooner.
    assert len(closed) == 4, closed
    assert all(got >= want for got, want in zip(closed, (3.25, 3.5, 3.75, 4.0), strict=True)), closed
    assert [s.label for s in run.stages] == ["0→4 users", "4 users", "4→0 users"]
    assert all(s.chats > 0 and s.outcomes[Outcome.PASSED] == s.chats for s in run.stages)
    # Held stage: 4 users for 1 s, each thinking 50 ms after each chat: at most 21 chats each.
    assert run.stages[1].chats <= 4 * (1 / 0.05 + 1), run.stages[1].chats


async def test_an_arrival_rate_starts_chats_on_schedule_however_slow_the_server(sim_factory):
    async with sim_factory() as (_, target, gt):
        # Each run takes over half a second (#think): a closed model would slow down, the open model does not.
        # max_in_flight is above what can be in flight (20/s for a chat's 5 s deadline): none is dropped.
        sc = shaped(message="slow #think=0.25", arrival_rate=20, duration="3s", max_in_flight=200)
        run = await run_scenario(sc, target)
        runs = records(gt, "run_started")
        ended = {r["run_id"]: r["t"] for r in records(gt, "run_finished")}
    assert run.stats.chats == 60 and run.stats.outcomes[Outcome.PASSED] == 60 and run.stats.dropped == 0
    assert len(runs) == 60 and len(ended) == 60
    starts = sorted(r["t"] for r in runs)
    # None began before it was due: the k-th (k + 0.5) / 20 s after the start (Shape.arrivals).
    assert all(t >= run.started_at + (k + 0.5) / 20 for k, t in enumerate(starts)), [t - run.started_at for t in starts]
    # Never waited for a slow chat to end: runs overlapped at the server (one connection's chats never do).
    assert max(sum(1 for r in runs if r["t"] <= t < ended[r["run_id"]]) for t in starts) > 1
    # The stage's account: the chats begun on time (the achieved rate over its 3 s) and those begun late are the 60.
    assert round(run.stages[0].achieved_rate * 3) + run.stages[0].late == 60, run.stages[0]
    assert max(r.duration for r in run.results) > 0.5  # the runs were slow indeed


async def test_chats_past_max_in_flight_are_dropped_and_counted(sim_factory):
    registry = CollectorRegistry()
    metrics = MetricsSink(ChatMetrics(registry), "agentsim", "load")
    async with sim_factory() as (_, target, gt):
        sc = shaped(message="slow #think=1", arrival_rate=20, duration="1s", max_in_flight=4)
        run = await run_scenario(sc, target, metrics)
        started = len(records(gt, "run_started"))
    assert run.stats.chats == started == 4  # the server saw exactly the chats that started
    assert run.stats.dropped == 16 == run.stages[0].dropped
    assert run.stats.outcomes[Outcome.PASSED] == 4
    exported = {s.name: s.value for fam in text_string_to_metric_families(generate_latest(registry).decode())
                for s in fam.samples if s.labels.get("scenario") == "t"}
    assert exported["chatprobe_chats_dropped_total"] == 16
    assert sum(v for k, v in exported.items() if k == "chatprobe_chats_total") <= 4
    assert run.knee is run.stages[0]  # 80% dropped: the stage broke


async def test_first_event_time_counts_from_when_the_chat_was_due(sim_factory):
    async with sim_factory() as (_, target, _gt):
        exp = expectations_for(target.profile, shaped().expect)
        session = Session(target, "due-user", "t", Sink())
        try:
            on_time = await session.chat("hi", exp, ChatOptions(settle=0.02))
            late = await session.chat("hi", exp, ChatOptions(settle=0.02, due_at=time.monotonic() - 2.5))
        finally:
            await session.close()
    assert on_time.passed
    # Due 2.5 s ago (a saturated generator or server kept it queued): the wait counts, and breaks R9's 2 s.
    assert late.time_to_first_event >= 2.5
    assert any(v.rule is Rule.R9 for v in late.violations) and not late.passed


async def test_a_rate_the_process_cannot_generate_is_a_warning_with_the_rate_achieved(sim_factory):
    """The process stalls for 0.8 s (here: a blocking computation on the event loop, as an overloaded generator
    would): the chats due meanwhile start late, so that stage reports the rate it really generated, a warning says
    so, and their first-event times include the wait (counted from when they were due)."""
    async with sim_factory() as (_, target, _gt):
        # The stall's wait is in the chats' first-event times (counted from when they were due): limits with room for
        # it and for a loaded machine's catching up on the chats due meanwhile (2 s went by now and then: R9s, not
        # what is tested here).
        sc = shaped(stages=[{"duration": "1s", "rate": 50, "ramp": False}, {"duration": "1s", "rate": 50, "ramp": False}],
                    max_in_flight=500, expect={**QUICK, "first_event_limit": "10s", "deadline": "15s"})

        async def hog() -> None:
            await asyncio.sleep(0.15)  # wait-ok: when the stall begins is part of the load schedule under test
            end = time.monotonic() + 0.8
            while time.monotonic() < end:  # busy: the loop runs nothing else
                pass

        hogger = asyncio.ensure_future(hog())
        run = await run_scenario(sc, target)
        await hogger
    first, second = run.stages
    assert run.stats.chats == 100 and run.stats.outcomes[Outcome.PASSED] == 100
    assert first.asked_rate == 50 and first.achieved_rate < 30, first
    assert any("stage 1 asked 50 chats/s and the load generator achieved" in w for w in run.warnings), run.warnings
    assert first.ttfe["p95"] > 0.5, first.ttfe  # the stall is in the chats' times, not hidden


async def test_an_open_model_chat_that_never_connects_counts_in_the_stage_it_was_due_in(sim_factory, refused_port):
    """Chats due while the loop stalls begin late, in the next stage, and find no server: each counts in the stage it
    was due in, as a chat that connected does. One that never connected was counted where it began (its times, and
    so its stage, from when the generator got to it), and a saturated run's stages (the knee's) did not add up."""
    async with sim_factory() as (_, target, _gt):
        # a port nothing listens on: every connection refused at once
        target = dataclasses.replace(target, url=f"ws://127.0.0.1:{refused_port()}/ws")
        sc = shaped(stages=[{"duration": "1s", "rate": 20, "ramp": False}, {"duration": "1s", "rate": 20, "ramp": False}],
                    max_in_flight=500)

        async def hog() -> None:
            await asyncio.sleep(0.6)  # wait-ok: when the stall begins is part of the load schedule under test
            end = time.monotonic() + 0.8
            while time.monotonic() < end:  # busy: the loop runs nothing else, past the stages' boundary
                pass

        hogger = asyncio.ensure_future(hog())
        run = await run_scenario(sc, target)
        await hogger
    assert run.stats.chats == 40 and run.stats.outcomes[Outcome.ERROR] == 40, run.stats
    first, second = run.stages
    assert first.late > 0, first  # the stall did make chats of the first stage begin late, in the second
    assert (first.chats, first.dropped, second.chats, second.dropped) == (20, 0, 20, 0), (first, second)


def test_on_uvloop_no_open_model_chat_starts_before_it_is_due():
    """uvloop's timers fire up to a millisecond early (whole milliseconds from a clock read once per loop turn): a chat
    due a fraction of a millisecond into a stage began before it, in the stage before, and was counted there (the
    knee scenario's stage of 400/s once had 1,601 chats). `chatprobe run` runs on uvloop."""
    import uvloop

    from agentsim.server import AgentSim, SimConfig
    from harness.profiles import load_profile
    from harness.targets import Target

    async def main():
        sim = AgentSim(SimConfig(port=0, no_auth=True, think=0, tool_latency=0, max_live_runs_per_user=10_000))
        await sim.start()
        try:
            target = Target(url=sim.url, profile=load_profile("netra"), name="sim", no_auth_user_param=True)
            stages = [{"duration": "0.25s", "rate": rate, "ramp": False} for rate in (400, 800) * 8]
            return await run_scenario(shaped(stages=stages, max_in_flight=5000), target)
        finally:
            await sim.stop()

    run = uvloop.run(main())
    assert [(s.chats + s.dropped) for s in run.stages] == [round(s.asked_rate * 0.25) for s in run.stages]
