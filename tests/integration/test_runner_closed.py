"""The closed model's users through run_scenario against agentsim: at most `concurrency` of them play at once, the
ramp-up starts them in order, and every chat is judged. Real sockets."""
from __future__ import annotations

from harness.runner import run_scenario
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
