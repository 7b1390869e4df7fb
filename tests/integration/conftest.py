"""Fixtures that start agentsim for real on a loopback port and point the harness at it."""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from pathlib import Path

import pytest

from agentsim.server import AgentSim, SimConfig
from harness.profiles import load_profile
from harness.scenario import Scenario
from harness.targets import Target, TokenProvider
from monitors.metrics import MetricsSink


@pytest.fixture
def sim_factory(tmp_path: Path):
    """`async with sim_factory(faults=[...]) as (sim, target, ground_truth_path)`."""
    started: list[AgentSim] = []

    class _Ctx:
        def __init__(self, faults=(), seed=7, think=0.002, tool_latency=0.001, **cfg):
            self.gt = tmp_path / f"gt-{len(started)}.jsonl"
            self.secret = secrets.token_urlsafe(32)
            self.sim = AgentSim(SimConfig(host="127.0.0.1", port=0, jwt_secret=self.secret, think=think,
                                          tool_latency=tool_latency, seed=seed, faults=list(faults),
                                          ground_truth=str(self.gt), **cfg))

        async def __aenter__(self):
            await self.sim.start()
            started.append(self.sim)
            target = Target(url=self.sim.url, profile=load_profile("netra"), name="agentsim",
                            tokens=TokenProvider(jwt_secret=self.secret))
            return self.sim, target, self.gt

        async def __aexit__(self, *exc):
            await self.sim.stop()

    return _Ctx


def ground_truth(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def faults_by_run(path: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for rec in ground_truth(path):
        if rec.get("kind") == "fault" and rec.get("run_id"):
            out.setdefault(rec["run_id"], []).append(rec)
    return out


def scenario(**kw) -> Scenario:
    base = dict(name="t", users=4, chats_per_user=5, message="What is 2 * 3? #tools=2 #chunks=2",
                expect={"streaming": True, "settle": "0.05s", "deadline": "3s"})
    base.update(kw)
    if "steps" in kw:  # steps replace chats_per_user (docs/scenarios.md)
        base.pop("chats_per_user", None)
    return Scenario.model_validate(base)


class Kept(MetricsSink):
    """A metrics sink that keeps each chat's verdict too (the proxy's, in the order judged): `judged` is set at the
    first, so a test waits on it, not on time."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.results: list = []
        self.judged = asyncio.Event()

    def chat_finished(self, result) -> None:
        self.results.append(result)
        self.judged.set()
        super().chat_finished(result)


async def chatprobe_cli(*args: str) -> tuple[int, str]:
    """`chatprobe ARGS` in a process of its own, bounded (a hang fails here), with no credential from the environment:
    (exit code, stdout + stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CHATPROBE_TOKEN", "CHATPROBE_JWT_SECRET")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "harness", *args, env={**env, "NO_COLOR": "1"},
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, stdout.decode() + stderr.decode()
