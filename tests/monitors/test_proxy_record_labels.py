"""`chatprobe proxy --record` names each connection by a pseudonym of its user's credentials, keyed by a random key of
the proxy's process that is never written (docs/recordings.md): `chatprobe check` tells one user's connections from
another's by it, and no digest of a credential is in a recording. A digest that is the same in every process (the
identity's own hash) would let anyone holding two recordings link a user across them, and one holding a guess of a
user's credentials (or of the user a JWT names: the identity of a bearer JWT is its `sub`) confirm it offline.

Real sockets: agentsim behind two in-process proxies, each recording every connection.
"""
from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agentsim.server import AgentSim, SimConfig
from harness.checker import Expectations
from harness.client import Session
from harness.events import DEFAULT_REQUIRED, Outcome
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.sinks import Sink
from harness.targets import Target, TokenProvider
from monitors.metrics import ChatMetrics, MetricsSink
from monitors.proxy import LiveChats, Proxy, start_proxy

pytestmark = pytest.mark.timeout(60)

EXP = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=10.0)


def _labels(directory: Path) -> list[str]:
    """The user label of each recorded connection (its `conn` is LABEL.N), in the order the files were written."""
    labels = []
    for path in sorted(directory.glob("*.jsonl")):
        conns = {json.loads(line)["conn"] for line in path.read_text().splitlines() if line.strip()}
        (conn,) = conns
        labels.append(conn.rpartition(".")[0])
    return labels


async def test_a_recorded_connections_label_is_the_same_for_a_user_in_one_proxy_and_another_in_the_next(tmp_path):
    secret = secrets.token_urlsafe(32)
    sim = AgentSim(SimConfig(port=0, jwt_secret=secret, think=0.005, tool_latency=0.002, seed=5))
    await sim.start()
    tokens = TokenProvider(jwt_secret=secret)
    lives, servers = [], []
    try:
        for name in ("first", "second"):
            live = LiveChats(load_profile("netra"), MetricsSink(ChatMetrics(CollectorRegistry()), "agentsim", "live"),
                           EXP, "live", 0.2, Recorder(tmp_path / name, keep_all=True))
            lives.append(live)
            servers.append(await start_proxy(Proxy(sim.url.rsplit("/", 1)[0], live), "127.0.0.1", 0))
        async with asyncio.timeout(40):
            # The first proxy: alice on two connections, then bob; the second (a restart, another replica): alice.
            for n, user in ((0, "alice"), (0, "alice"), (0, "bob"), (1, "alice")):
                port = servers[n].sockets[0].getsockname()[1]
                target = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile("netra"), name="proxy",
                                tokens=tokens)
                session = Session(target, user, "user", Sink())
                assert (await session.chat("What is 2 * 3?", EXP)).outcome is Outcome.PASSED
                await session.close()
                while lives[n].open:  # the proxy is done with the connection: its recording saved
                    await asyncio.sleep(0.02)  # wait-ok: poll interval of a condition wait bounded by the timeout
    finally:
        for server in servers:
            server.close()
        await sim.stop()
    alice, alice_again, bob = _labels(tmp_path / "first")
    (alice_next,) = _labels(tmp_path / "second")
    assert alice.startswith("live-") and alice == alice_again, "one user's connections share a label (check's resume)"
    assert bob != alice, "two users are told apart"
    # Keyed by each process's own random key: the same user's label in another proxy's recording is another one.
    assert alice_next != alice, "a label the same across processes is a digest of the user's credentials"
    for label in (alice, bob, alice_next):
        assert tokens.for_user("alice").split(".")[1] not in label and "alice" not in label and "bob" not in label
