"""Every wait is bounded and nothing is lost: a run stopped by its max_duration still judges every chat."""
from __future__ import annotations

from harness.events import Outcome
from harness.runner import run_scenario
from harness.sinks import Sink

from .conftest import scenario


class Count(Sink):
    def __init__(self):
        self.started = self.finished = 0

    def chat_started(self, scenario):
        self.started += 1

    def chat_finished(self, result):
        self.finished += 1


async def test_max_duration_stops_the_scenario_and_every_started_chat_is_judged(sim_factory):
    count = Count()
    async with sim_factory(think="0.05-0.2") as (sim, target, gt):
        # The stop must find chats in flight: the users' first connections (the first of the process loads the
        # client) took 0.8-1.0 s to open under a load of 12 on 2 cores, past a max_duration of 0.5 s, which then
        # stopped a run with no chat started. 5 s is a bound that leaves them time, not a latency; the run's 1,500
        # chats of about a second each are far from done by then.
        sc = scenario(users=30, chats_per_user=50, max_duration="5s")
        run = await run_scenario(sc, target, count)
    assert run.stopped_early and not run.passed
    assert count.started == count.finished == run.stats.chats > 0
    assert run.stats.chats < 30 * 50
    stopped = [r for r in run.results if "stopped" in (r.note or r.error or "")]
    assert stopped and all(r.outcome in (Outcome.INCOMPLETE, Outcome.ERROR) for r in stopped)
