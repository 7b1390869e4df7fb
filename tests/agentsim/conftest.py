"""Fixtures for agentsim tests: an in-process AgentSim on a free port with zero think time."""

from __future__ import annotations

import pytest

from agentsim.server import AgentSim, SimConfig


@pytest.fixture
async def make_sim(tmp_path):
    """Factory: ``sim = await make_sim(seed=1, faults=[...])``; every sim writes ground truth to tmp_path."""
    sims: list[AgentSim] = []

    async def make(**overrides) -> AgentSim:
        # The fault tests start 200 chats at once as one user: above the default per-user quota, which the
        # abuse tests set themselves.
        settings = {"port": 0, "no_auth": True, "think": 0, "tool_latency": 0, "max_live_runs_per_user": 1000,
                    "ground_truth": str(tmp_path / f"gt-{len(sims)}.jsonl")}
        settings.update(overrides)
        sim = AgentSim(SimConfig(**settings))
        await sim.start()
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        await sim.stop()


@pytest.fixture
async def agentsim(make_sim):
    """An AgentSim without auth (``?user=NAME`` names the user), think 0, tool latency 0."""
    return await make_sim()
