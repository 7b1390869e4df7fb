"""The closed model's users through run_scenario against agentsim: at most `concurrency` of them play at once, the
ramp-up starts them in order, and every chat is judged. Real sockets."""
from __future__ import annotations

from harness.runner import run_scenario
from harness.scenario import Scenario
from harness.sinks import Sink

from .conftest import scenario


class InFlight(Sink):
    """Chats started and not yet judged: now, and at most."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self.started = 0

    def chat_started(self, scenario: str) -> None:
        self.started += 1
        self.now += 1
        self.most = max(self.most, self.now)

    def chat_finished(self, result) -> None:
        self.now -= 1


async def test_concurrency_caps_the_users_playing_at_once_and_every_chat_is_judged(sim_factory) -> None:
    async with sim_factory(think=0.05) as (_sim, target, _gt):
        seen = InFlight()
        # One chat per user: a user's next chat may start while the last one's settle window listens on.
        run = await run_scenario(scenario(users=6, concurrency=2, chats_per_user=1, ramp_up=0.0), target, seen)
    assert run.stats.chats == 6 and run.stats.outcomes["passed"] == 6
    assert seen.started == 6 and seen.now == 0
    assert 1 <= seen.most <= 2  # two users at a time


async def test_a_ramp_up_starts_every_user_and_judges_every_chat(sim_factory) -> None:
    async with sim_factory() as (_sim, target, _gt):
        seen = InFlight()
        run = await run_scenario(scenario(users=5, chats_per_user=1, ramp_up=0.2), target, seen)
    assert run.stats.chats == 5 and run.stats.outcomes["passed"] == 5 and seen.now == 0


class Seen(Sink):
    """Every verdict a sink is given, and how many events it carried then."""

    def __init__(self) -> None:
        self.results: list = []
        self.events_then: list[int] = []

    def chat_finished(self, result) -> None:
        self.results.append(result)
        self.events_then.append(len(result.events))


async def test_a_run_counts_every_chat_and_keeps_only_the_listed_ones(sim_factory, monkeypatch) -> None:
    """Every chat's result with its events was kept to the run's end (~5 KB a chat: an hour's load test at 500 chats
    a second held gigabytes). Now the run counts every chat (stats, stages, objectives) and keeps the first
    MAX_CHATS_LISTED passing and not passing ones (here 3 each) with their events; the others keep none once every
    other sink has seen them whole. One of every two chats fails (agentsim's fatal error, #fail-agent)."""
    from harness import results

    monkeypatch.setattr(results, "MAX_CHATS_LISTED", 3)
    seen = Seen()
    async with sim_factory() as (_sim, target, _gt):
        sc = Scenario.model_validate({
            "name": "t", "messages": ["What is 2 * 3? #tools=1", "What is 3 * 4? #fail-agent"],
            "expect": {"settle": "0.05s", "deadline": "3s"}, "stages": [{"duration": "1s", "users": 2, "ramp": False}]})
        run = await run_scenario(sc, target, seen)
    assert run.stats.chats == len(seen.results) >= 12, run.stats
    passed = run.stats.outcomes["passed"]
    assert 0 < passed < run.stats.chats
    assert sum(st.chats for st in run.stages) == run.stats.chats  # every chat in its stage's tally
    assert len(run.results) == 6 and sum(r.passed for r in run.results) == 3
    assert all(n > 0 for n in seen.events_then)  # every sink saw every chat's events
    listed = {id(r) for r in run.results}
    assert all(r.events for r in run.results)
    assert all(not r.events for r in seen.results if id(r) not in listed)
    assert any(w.startswith(f"{run.stats.chats} chats judged, 6 listed") for w in run.warnings), run.warnings
