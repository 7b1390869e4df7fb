"""Fixtures that start agentsim for real on a loopback port and point the harness at it."""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

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


# A chat's expectations unless the test gives its own. Its deadline is not what these tests are about: each run is
# done in well under a second, and 10 s keeps it so on a loaded machine (where 3 s went by before a faulted run
# reached its fault: an R10 where the fault's own rule was due). A deadline costs time only for a chat that never ends
# by itself; a test with such chats (a dropped terminal event: its verdict comes at the deadline) gives them TIMED.
UNTIMED = {"streaming": True, "settle": "0.05s", "deadline": "10s"}
TIMED = {"streaming": True, "settle": "0.05s", "deadline": "3s"}


def scenario(**kw) -> Scenario:
    base = dict(name="t", users=4, chats_per_user=5, message="What is 2 * 3? #tools=2 #chunks=2", expect=UNTIMED)
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


class Attempts(Kept):
    """Kept, with each chat connection the proxy counted (chatprobe_connections_total's result)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.attempts: list[str] = []

    def connection_attempt(self, scenario: str, result: str) -> None:
        self.attempts.append(result)
        super().connection_attempt(scenario, result)


async def post_through(port: int, body: dict[str, Any]) -> bytes:
    """One POST through the proxy, its whole answer (the connection closed after it), within a deadline."""
    data = json.dumps(body).encode()
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Accept: application/json, text/event-stream\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
            await writer.drain()
            return await reader.read(-1)
        finally:
            writer.close()


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
