"""The runner: plays a scenario's virtual users against a target and collects one verdict per chat."""
from __future__ import annotations

import asyncio
import time
import uuid

from .checker import ChatResult
from .client import Session
from .results import ScenarioRun
from .scenario import ChatCall, ChatGroup, RawCall, Scenario, UserScript
from .sinks import Fanout, Sink
from .stats import compute, evaluate
from .targets import Target


class _Collector(Sink):
    def __init__(self) -> None:
        self.results: list[ChatResult] = []

    def chat_finished(self, result: ChatResult) -> None:
        self.results.append(result)


async def run_scenario(scenario: Scenario, target: Target, sink: Sink | None = None, *,
                       user_prefix: str | None = None) -> ScenarioRun:
    """Run every virtual user of the scenario, bounded by its max_duration; every chat gets a verdict.

    Virtual users are `<user_prefix>-u<N>`; the default prefix is random so parallel runs never share users.
    """
    collector = _Collector()
    out = Fanout([collector, sink] if sink is not None else [collector])
    profile = target.profile
    prefix = user_prefix or f"cp-{uuid.uuid4().hex[:6]}"
    concurrency = asyncio.Semaphore(scenario.concurrency or scenario.users)
    started_wall = time.time()
    started = time.monotonic()
    stopped_early = False

    async def user(i: int) -> None:
        if scenario.ramp_up and scenario.users > 1:
            await asyncio.sleep(scenario.ramp_up * i / scenario.users)  # the ramp schedule itself
        async with concurrency:
            session = Session(target, f"{prefix}-u{i}", scenario.name, out, connect_timeout=scenario.connect_timeout)
            script = scenario.user_script(profile)
            try:
                for item in script.plan():
                    if isinstance(item, ChatCall):
                        await session.chat(item.content, item.expectations, item.options)
                    elif isinstance(item, RawCall):
                        await session.send_invalid(item.raw, item.expectations)
                    else:
                        await chat_group(session, script, item)
            finally:
                await session.close()

    async def chat_group(session: Session, script: UserScript, group: ChatGroup) -> None:
        in_flight = asyncio.Semaphore(group.parallel)

        async def one() -> None:
            async with in_flight:
                call = script.chat()
                await session.chat(call.content, call.expectations, call.options)

        await asyncio.gather(*(one() for _ in range(group.count)))

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
