"""A soak's user whose every chat loses its connection to agentsim's `close` fault, on an agentsim that does not know
the run when it is resumed (`--no-auth` without `?user=`: each connection is a new user), goes on at full pace: every
chat ends at the RESUME_UNKNOWN_RUN answer, the 257th as the first (a soak slowed from 2,800 to 30 chats/s once each
user had 256 such answers: the client remembered them for the user's whole life, and ignored the next ones), and
agentsim, past max_runs chats, still serves every chat and ends with no live run counted."""
from __future__ import annotations

import asyncio

from harness.events import Outcome
from harness.flow import MAX_RESUME_UNKNOWN
from harness.profiles import load_profile
from harness.runner import run_scenario
from harness.targets import Target

from .conftest import scenario

MAX_RUNS = 8


async def test_every_chat_lost_to_an_unknown_resume_ends_at_the_answer_however_many(sim_factory):
    chats = MAX_RESUME_UNKNOWN + 2
    async with sim_factory(faults=["close=1"], no_auth=True, think=0, tool_latency=0, max_runs=MAX_RUNS,
                           max_live_runs_per_user=2) as (sim, _target, _gt):
        # No token (`--auth none`): each connection's user is the one its welcome names, a new one every time.
        target = Target(url=sim.url, profile=load_profile("netra"), name="agentsim")
        sc = scenario(users=1, chats_per_user=chats, message="What is 3 * 4? #fail-agent",
                      expect={"deadline": "3s", "first_event_limit": "3s", "settle": "0s"})
        async with asyncio.timeout(120):  # a hang fails the test
            run = await run_scenario(sc, target)
            # Every run of agentsim ends (the fault closed its connection; the run goes on to its end).
            if sim._tasks:
                await asyncio.wait(set(sim._tasks), timeout=10)
        assert run.stats.chats == chats
        # Served, each of them (a SERVER_BUSY refusal has no run id), past max_runs chats.
        assert all(r.run_id for r in run.results)
        assert all(r.outcome is Outcome.INCOMPLETE for r in run.results)
        late = [i for i, r in enumerate(run.results) if "RESUME_UNKNOWN_RUN" not in r.note]
        assert late == [], f"chats that waited for their deadline instead: {late[:5]}"
        assert sim.chats_started == sim.chats_finished == chats
        assert sim._live_total == 0 and sim._live == {}
        assert len(sim.runs) <= MAX_RUNS
