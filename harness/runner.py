"""The runner: plays a scenario's virtual users against a target and collects one verdict per chat."""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from .checker import ChatResult, Expectations
from .client import Session, Target
from .events import Outcome
from .scenario import ChatStep, ChatStepWrapper, RawStep, Scenario
from .sinks import Fanout, Sink
from .stats import ObjectiveResult, ScenarioStats, compute, evaluate

UNREACHABLE_KINDS = frozenset({"refused", "timeout", "tls_error"})


class _Collector(Sink):
    def __init__(self) -> None:
        self.results: list[ChatResult] = []

    def chat_finished(self, result: ChatResult) -> None:
        self.results.append(result)


def invalid_input_expectations(scenario: Scenario) -> Expectations:
    """What a `send_raw:` step expects: an error_message answer on an open connection (R13), within 10 s."""
    e = scenario.expect
    return Expectations(required=frozenset(), first_event_limit=e.first_event_limit,
                        deadline=min(e.deadline, 10.0), stall_limit=e.stall_limit, expect_error="invalid_input")


@dataclass
class ScenarioRun:
    scenario: Scenario
    target: str
    results: list[ChatResult]
    stats: ScenarioStats
    objectives: list[ObjectiveResult]
    started_at: float
    elapsed: float
    stopped_early: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(o.ok for o in self.objectives) and not self.unreachable

    @property
    def unreachable(self) -> bool:
        return bool(self.results) and all(
            r.outcome is Outcome.ERROR and r.error_kind in UNREACHABLE_KINDS for r in self.results
        )

    @property
    def failed_objectives(self) -> list[ObjectiveResult]:
        return [o for o in self.objectives if not o.ok]


async def run_scenario(scenario: Scenario, target: Target, sink: Sink | None = None, *,
                       user_prefix: str | None = None) -> ScenarioRun:
    """Run every virtual user of the scenario, bounded by its max_duration; every chat gets a verdict.

    Virtual users are `<user_prefix>-u<N>`; the default prefix is random so parallel runs never share users.
    """
    collector = _Collector()
    out = Fanout([collector, sink] if sink is not None else [collector])
    profile = target.profile
    spans_must_close = frozenset(s.name for s in profile.spans if s.must_close)
    prefix = user_prefix or f"cp-{uuid.uuid4().hex[:6]}"
    concurrency = asyncio.Semaphore(scenario.concurrency or scenario.users)
    started_wall = time.time()
    started = time.monotonic()
    stopped_early = False

    def expectations(step: ChatStep | None = None):
        return scenario.expectations(profile.required, profile.thinking_before_tool, step, spans_must_close)

    async def chat(session: Session, n: int, step: ChatStep | None) -> None:
        await session.chat(
            (step.message if step and step.message else None) or scenario.message_for(n),
            expectations(step),
            client_run_id=scenario.client_run_id,
            disconnect_after=step.disconnect_after if step else None,
            abandon_after=step.abandon_after if step else None,
            reconnect=scenario.reconnect,
            max_reconnects=scenario.max_reconnects,
            settle=scenario.expect.settle,
        )

    async def user(i: int) -> None:
        if scenario.ramp_up and scenario.users > 1:
            await asyncio.sleep(scenario.ramp_up * i / scenario.users)  # the ramp schedule itself
        async with concurrency:
            session = Session(target, f"{prefix}-u{i}", scenario.name, out, connect_timeout=scenario.connect_timeout)
            try:
                if scenario.steps:
                    n = 0
                    for step in scenario.steps:
                        if isinstance(step, RawStep):
                            for _ in range(step.repeat):
                                await session.send_invalid(step.send_raw, expectations_invalid())
                        elif isinstance(step, ChatStepWrapper):
                            for _ in range(step.chat.repeat):
                                await chat(session, n, step.chat)
                                n += 1
                else:
                    per_user = asyncio.Semaphore(scenario.parallel_chats)

                    async def one(n: int) -> None:
                        async with per_user:
                            await chat(session, n, None)

                    await asyncio.gather(*(one(n) for n in range(scenario.chats_per_user)))
            finally:
                await session.close()

    def expectations_invalid():
        return invalid_input_expectations(scenario)

    tasks = [asyncio.ensure_future(user(i)) for i in range(scenario.users)]
    try:
        async with asyncio.timeout(scenario.max_duration):
            await asyncio.gather(*tasks)
    except TimeoutError:
        stopped_early = True
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    stats = compute(collector.results)
    run = ScenarioRun(
        scenario=scenario, target=target.name, results=collector.results, stats=stats,
        objectives=evaluate(stats, scenario.objectives), started_at=started_wall,
        elapsed=time.monotonic() - started, stopped_early=stopped_early,
    )
    out.run_finished(run.passed)
    return run
