"""The passive proxy between a real client and agentsim: forwards everything, judges chats as source=live."""
from __future__ import annotations

import asyncio
import dataclasses
import secrets

from prometheus_client import CollectorRegistry, generate_latest

from agentsim.server import AgentSim, SimConfig
from harness.checker import Expectations
from harness.client import Session, Target, TokenProvider
from harness.events import DEFAULT_REQUIRED, Outcome
from harness.profiles import load_profile
from harness.sinks import Sink
from monitors.metrics import ChatMetrics, MetricsSink
from monitors.proxy import LiveChats, Proxy, start_proxy

EXP = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=10.0)


class Recorder(Sink):
    def __init__(self):
        self.results = []
        self.abandoned = 0

    def chat_finished(self, result):
        self.results.append(result)

    def chat_abandoned(self, scenario):
        self.abandoned += 1


async def setup(faults=(), settle=0.2):
    secret = secrets.token_urlsafe(32)
    sim = AgentSim(SimConfig(port=0, jwt_secret=secret, think=0.005, tool_latency=0.002, faults=list(faults), seed=5))
    await sim.start()
    metrics = ChatMetrics(CollectorRegistry())
    sink = MetricsSink(metrics, "agentsim", "live")
    live = LiveChats(load_profile("netra"), sink, EXP, "live", settle)
    server = await start_proxy(Proxy(sim.url.rsplit("/", 1)[0], live), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return sim, server, metrics, live, Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile("netra"),
                                              name="proxy", tokens=TokenProvider(jwt_secret=secret))


async def until(cond, timeout=10.0):
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)  # wait-ok: poll interval of a condition wait bounded by the timeout


def sample(metrics, name, **labels):
    v = metrics.registry.get_sample_value(name, labels)
    return v or 0.0


async def test_proxy_judges_real_chats_and_the_client_sees_everything():
    sim, server, metrics, live, target = await setup()
    try:
        for auth in ("header", "subprotocol"):
            client = Session(dataclasses.replace(target, auth=auth), "alice", "user", Recorder())
            results = [await client.chat("What is 2 * 21?", EXP) for _ in range(3)]
            await client.close()
            assert all(r.outcome is Outcome.PASSED for r in results), [r.violations for r in results]
        labels = dict(target="agentsim", scenario="live", source="live")
        await until(lambda: sample(metrics, "chatprobe_chats_total", outcome="passed", **labels) == 6)
        assert sample(metrics, "chatprobe_chats_in_flight", **labels) == 0
        assert sample(metrics, "chatprobe_events_total", event="tool_completed", **labels) >= 6
        text = generate_latest(metrics.registry).decode()
        assert "alice" not in text and "Bearer" not in text
    finally:
        server.close()
        await sim.stop()


async def test_proxy_sees_missing_events_the_client_also_sees():
    sim, server, metrics, live, target = await setup(faults=["drop:tool_completed=1.0"])
    try:
        client = Session(target, "bob", "user", Recorder())
        r = await client.chat("What is 1 + 1? #tools=1", EXP)
        await client.close()
        assert r.outcome is Outcome.FAILED
        labels = dict(target="agentsim", scenario="live", source="live")
        await until(lambda: sample(metrics, "chatprobe_chats_missing_events_total", **labels) == 1)
        assert sample(metrics, "chatprobe_missing_events_total", event="tool_completed", **labels) == 1
        assert sample(metrics, "chatprobe_rule_violations_total", rule="R2", **labels) == 1
    finally:
        server.close()
        await sim.stop()


async def test_user_leaving_mid_run_is_abandoned():
    sim, server, metrics, live, target = await setup()
    try:
        client = Session(target, "carol", "user", Recorder())
        r = await client.chat("Look up the capital of Peru. #think=0.3", EXP, abandon_after=1)
        assert "abandoned" in r.note
        labels = dict(target="agentsim", scenario="live", source="live")
        await until(lambda: sample(metrics, "chatprobe_chats_abandoned_total", **labels) == 1)
        assert sample(metrics, "chatprobe_chats_in_flight", **labels) == 0
        total = sum(sample(metrics, "chatprobe_chats_total", outcome=o, **labels)
                    for o in ("passed", "failed", "incomplete", "error"))
        assert total == 1  # started = judged + in flight
    finally:
        server.close()
        await sim.stop()


async def test_bad_token_is_passed_through_as_auth_failure():
    sim, server, metrics, live, target = await setup()
    try:
        bad = dataclasses.replace(target, tokens=TokenProvider(token="not-a-jwt"))
        client = Session(bad, "mallory", "user", Recorder())
        r = await client.chat("hi", EXP)
        assert r.outcome is Outcome.ERROR and r.error_kind == "auth_failed"
    finally:
        server.close()
        await sim.stop()


def test_bad_flags_exit_2(capsys):
    from monitors.proxy import main

    assert main(["--upstream", "ftp://x"]) == 2
    assert "--upstream" in capsys.readouterr().err
    assert main(["--upstream", "ws://127.0.0.1:1", "--deadline", "soon"]) == 2
    assert "--deadline" in capsys.readouterr().err
