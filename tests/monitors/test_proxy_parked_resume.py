"""`chatprobe proxy` follows a chat whose connection the SERVER dropped mid-run (a deploy, a load balancer's timeout)
and that the user's client resumes on a new connection (netra's `resume` with `run_id` and `last_seq`): the chat is
parked with its user until its deadline and adopted by that user's resume, as `chatprobe check` follows it in a
recording and as the live client (`chatprobe run`'s Session, here pointed at the proxy) judges it. Real agentsim with
`close` / `close:abort` faults, real sockets on 127.0.0.1, every wait bounded.

FAILED on the code before the proxyresume patch:
- test_a_chat_resumed_after_the_server_dropped_its_connection_is_judged_by_the_proxy_as_by_the_client[*]: the client
  passed (resumed), the proxy counted the chat incomplete at the drop (lost) and, on the new connection, the run's
  events belonged to no chat;
- test_another_users_resume_never_adopts_a_parked_chat: alice's chat was incomplete at the drop;
- test_a_parked_chat_never_resumed_is_judged_at_its_deadline_as_it_stood: judged at the drop, not at its deadline;
- test_check_of_the_proxys_recording_follows_the_resumed_chat_too: the proxy counted incomplete where check passed.
"""
from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import pytest
import websockets.asyncio.client
from prometheus_client import CollectorRegistry

from agentsim.server import AgentSim, SimConfig
from harness.checker import ChatResult, Expectations
from harness.client import Session
from harness.events import DEFAULT_REQUIRED, Outcome, Role
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.targets import Target, TokenProvider
from monitors.metrics import ChatMetrics, MetricsSink
from monitors.proxy import Proxy, start_proxy

from .test_proxy import Recorder_, WatchedChats

LIVE = dict(target="agentsim", scenario="live", source="live")


class Judged(MetricsSink):
    """The proxy's sink, telling the test each verdict as it is counted."""

    def __init__(self, metrics: ChatMetrics) -> None:
        super().__init__(metrics, "agentsim", "live")
        self.results: list[ChatResult] = []
        self.judged = asyncio.Event()
        self.started = 0
        self.abandoned = 0

    def chat_started(self, scenario: str) -> None:
        self.started += 1
        super().chat_started(scenario)

    def chat_abandoned(self, scenario: str) -> None:
        self.abandoned += 1
        super().chat_abandoned(scenario)

    def chat_finished(self, result: ChatResult) -> None:
        self.results.append(result)
        self.judged.set()
        super().chat_finished(result)


class Proxied:
    """agentsim with `faults` behind the proxy; `target` is the proxy for chatprobe's own client."""

    def __init__(self, faults: list[str], deadline: float = 10.0, record: Path | None = None,
                 record_all: bool = False) -> None:
        self.secret = secrets.token_urlsafe(32)
        self.faults = faults
        self.exp = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=deadline)
        self.record, self.record_all = record, record_all

    async def __aenter__(self) -> "Proxied":
        self.sim = AgentSim(SimConfig(port=0, jwt_secret=self.secret, think=0.02, tool_latency=0.01,
                                      faults=self.faults, seed=7))
        await self.sim.start()
        self.metrics = ChatMetrics(CollectorRegistry())
        self.sink = Judged(self.metrics)
        recorder = Recorder(self.record, keep_all=self.record_all) if self.record is not None else None
        self.live = WatchedChats(load_profile("netra"), self.sink, self.exp, "live", 0.1, recorder)
        self.server = await start_proxy(Proxy(self.sim.url.rsplit("/", 1)[0], self.live), "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.tokens = TokenProvider(jwt_secret=self.secret)
        self.token = {u: self.tokens.for_user(u) for u in ("alice", "mallory")}
        # chatprobe's own client as alice, with one token for all her connections, as a browser keeps its credentials
        # (a token minted anew names the same user too: test_a_resume_under_the_users_refreshed_token_is_hers).
        self.target = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile("netra"), name="proxy",
                             tokens=TokenProvider(token=self.token["alice"]))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()
        self.live.stop()
        await self.sim.stop()

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, {**LIVE, **labels}) or 0.0

    def outcomes(self) -> dict[str, float]:
        out = {o.value: self.sample("chatprobe_chats_total", outcome=o.value) for o in Outcome}
        return {k: v for k, v in out.items() if v}

    async def connect(self, user: str) -> websockets.asyncio.client.ClientConnection:
        ws = await websockets.asyncio.client.connect(
            self.target.url, additional_headers={"Authorization": f"Bearer {self.token[user]}"},
            open_timeout=5, ping_interval=None, close_timeout=1)
        assert json.loads(await ws.recv())["type"] == "connection_established"
        return ws


async def read_until_dropped(ws: websockets.asyncio.client.ClientConnection) -> list[dict]:
    """Every frame until the server's drop: the events the user's client had."""
    got = []
    try:
        async for raw in ws:
            got.append(json.loads(raw))
    except websockets.ConnectionClosed:
        pass
    return got


async def read_until_completed(ws: websockets.asyncio.client.ClientConnection) -> list[dict]:
    got = []
    while True:
        frame = json.loads(await ws.recv())
        got.append(frame)
        if frame.get("type") == "agent_completed":
            return got


@pytest.mark.parametrize("fault", ["close:abort=1.0", "close=1.0"], ids=["abort", "clean-1001"])
async def test_a_chat_resumed_after_the_server_dropped_its_connection_is_judged_by_the_proxy_as_by_the_client(fault):
    async with Proxied([fault]) as p:
        async with asyncio.timeout(20):  # a hang fails the test
            client = Session(p.target, "alice", "user", Recorder_())
            result = await client.chat("What is 3 * 4? #tools=1", p.exp)
            await client.close()
            await p.sink.judged.wait()
    # The live client resumed the run on a new connection and judged it passed.
    assert result.outcome is Outcome.PASSED and result.reconnects == ["resumed"], (result.violations, result.note)
    # The proxy judged that same chat once, alike.
    [proxied] = p.sink.results
    assert (proxied.outcome, proxied.reconnects) == (Outcome.PASSED, ["resumed"]), (proxied.violations, proxied.note)
    assert p.outcomes() == {"passed": 1} and p.sink.started == 1 and p.sink.abandoned == 0
    assert p.sample("chatprobe_reconnects_total", result="resumed") == 1
    assert p.sample("chatprobe_chats_missing_events_total") == 0
    assert p.sample("chatprobe_rule_violations_total", rule="R8") == 0


async def test_another_users_resume_never_adopts_a_parked_chat(tmp_path):
    """mallory resumes alice's run id while alice's chat is parked (her connection dropped): the chat stays alice's,
    mallory's leaving abandons nothing, and alice's own resume picks it up and passes; `chatprobe check` of the
    proxy's --record-all recording tells the two users apart (each connection labelled by a pseudonym of its
    credentials) and judges alike."""
    from harness.offline import check_files

    async with Proxied(["close:abort=1.0"], record=tmp_path / "rec", record_all=True) as p:
        async with asyncio.timeout(20):
            alice = await p.connect("alice")
            await alice.send(json.dumps({"type": "user_message", "payload": {
                "content": "What is 3 * 4? #tools=1", "thread_id": "t-a", "message_id": "m-a"}}))
            had = await read_until_dropped(alice)
            events = [f for f in had if "seq" in f]
            assert events and events[-1]["type"] != "agent_completed"
            run_id, last_seq = events[-1]["run_id"], events[-1]["seq"]
            mallory = await p.connect("mallory")
            await mallory.send(json.dumps({"type": "resume", "payload": {"run_id": run_id, "last_seq": 0}}))
            assert json.loads(await mallory.recv()).get("error_code") == "RESUME_UNKNOWN_RUN"
            await mallory.close()  # leaves: had the chat been adopted there, it would be abandoned now
            alice = await p.connect("alice")
            await alice.send(json.dumps({"type": "resume", "payload": {"run_id": run_id, "last_seq": last_seq}}))
            await read_until_completed(alice)
            await p.sink.judged.wait()
            await alice.close()
    [proxied] = p.sink.results
    assert (proxied.outcome, proxied.reconnects) == (Outcome.PASSED, ["resumed"]), (proxied.violations, proxied.note)
    assert Role.AGENT_COMPLETED in proxied.event_counts  # judged on the events of both of alice's connections
    assert p.outcomes() == {"passed": 1} and p.sink.started == 1 and p.sink.abandoned == 0
    assert p.sample("chatprobe_rule_violations_total", rule="R8") == 0
    files = list((tmp_path / "rec").glob("*.jsonl"))
    assert len(files) == 3 and not any(p.token[u].split(".")[2] in f.read_text()
                                       for f in files for u in ("alice", "mallory"))
    (run,) = check_files([tmp_path / "rec"], load_profile("netra"))
    assert [(r.outcome, r.reconnects) for r in run.results] == [(Outcome.PASSED, ["resumed"])], [
        (r.outcome, r.note, r.violations) for r in run.results]


async def test_a_parked_chat_never_resumed_is_judged_at_its_deadline_as_it_stood():
    """No resume comes: judged once, incomplete (a lost run), at its deadline (not at the drop), its events those
    that came before the drop."""
    async with Proxied(["close:abort=1.0"], deadline=1.5) as p:
        async with asyncio.timeout(20):
            alice = await p.connect("alice")
            await alice.send(json.dumps({"type": "user_message", "payload": {
                "content": "What is 3 * 4? #tools=1", "thread_id": "t-a", "message_id": "m-a"}}))
            had = [f for f in await read_until_dropped(alice) if "seq" in f]
            await p.live.closed.wait()  # the proxy is done with the dropped connection
            assert not p.sink.results and len(p.live.parked) == 1  # not judged at the drop: parked, until its deadline
            await p.sink.judged.wait()
    [proxied] = p.sink.results
    assert proxied.outcome is Outcome.INCOMPLETE and proxied.events_received == len(had), (proxied.note, had)
    assert "no resume" in proxied.note and not proxied.violations, (proxied.note, proxied.violations)
    assert p.outcomes() == {"incomplete": 1} and p.sink.started == 1 and not p.live.parked


async def test_check_of_the_proxys_recording_follows_the_resumed_chat_too(tmp_path):
    """--record (without --record-all) keeps both connections of a parked-then-resumed chat: `chatprobe check` of
    the recording judges the one chat as the proxy did."""
    from harness.offline import check_files

    async with Proxied(["close:abort=1.0"], record=tmp_path / "rec") as p:
        async with asyncio.timeout(20):
            client = Session(p.target, "alice", "user", Recorder_())
            result = await client.chat("What is 3 * 4? #tools=1", p.exp)
            await client.close()
            await p.sink.judged.wait()
    assert result.outcome is Outcome.PASSED and result.reconnects == ["resumed"]
    [proxied] = p.sink.results
    assert (proxied.outcome, proxied.reconnects) == (Outcome.PASSED, ["resumed"]), (proxied.violations, proxied.note)
    assert len(list((tmp_path / "rec").glob("*.jsonl"))) == 2  # the dropped connection and the resuming one
    (run,) = check_files([tmp_path / "rec"], load_profile("netra"))
    assert [(r.outcome, r.reconnects) for r in run.results] == [(Outcome.PASSED, ["resumed"])], [
        (r.outcome, r.note, r.violations) for r in run.results]


def test_parked_chats_are_bounded_per_user_in_all_and_in_bytes():
    """A user whose connections the server keeps dropping parks at most MAX_PARKED_EACH chats, so another user's chat
    is still parked; chats keeping large events park only within MAX_PARKED_BYTES; past a bound a chat is not parked
    (PARKING_FULL: the proxy cannot follow its resume, and its connection counts it unjudged). Every parked chat is
    counted once, unjudged (proxy_stopped), at stop()."""
    from harness.sinks import PARKING_FULL
    from monitors.proxy import MAX_PARKED_BYTES, MAX_PARKED_EACH, LiveChats, LiveTracker

    profile = load_profile("netra")
    sink = Judged(ChatMetrics(CollectorRegistry()))
    exp = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=10.0)
    live = LiveChats(profile, sink, exp, "live", 0.05)

    def cut(identity: str, n: int, tools: int = 0) -> str:
        """A chat of `identity` cut mid-run, after its start and `tools` tool calls with 1,000-byte ids (each chat
        keeps LIVE_KEPT_BYTES of events at most: about 17 KiB with 14 of them)."""
        chat = LiveTracker(f"c-{identity}-{n}", exp, 0.0, scenario="live", thread_id="t", run_id=f"r-{n}")
        frames = [{"type": "agent_started", "run_id": f"r-{n}", "seq": 1, "payload": {"agent_name": "a"}}]
        frames += [{"type": "tool_executing", "run_id": f"r-{n}", "seq": 2 + i,
                    "payload": {"tool_name": "t", "tool_call_id": f"{i:04d}" + "x" * 996}} for i in range(tools)]
        for frame in frames:
            chat.feed(profile.decode(json.dumps(frame), 0.1))
        return live.park(identity, chat, 0.2)

    assert [cut("hostile", n) for n in range(MAX_PARKED_EACH + 5)] == ["parked"] * MAX_PARKED_EACH + [PARKING_FULL] * 5
    assert cut("someone-else", 1) == "parked"  # still a place for another user
    assert live.resumed("someone-else", "r-0") is None  # another user's run id: nothing adopted
    adopted = live.resumed("hostile", "r-0")
    assert adopted is not None and adopted[1] is None and adopted[0].chat_id == "c-hostile-0"
    assert cut("hostile", 10_000) == "parked"  # a place given back is a place again
    heavy = [cut(f"user-{n // 50}", n, tools=14) for n in range(MAX_PARKED_BYTES // (16 * 1024) + 1)]
    assert heavy[0] == "parked" and heavy[-1] == PARKING_FULL and live.parked.nbytes <= MAX_PARKED_BYTES
    parked = len(live.parked)
    live.stop()
    assert not sink.results and not live.parked  # none judged: every parked chat counted once, unjudged
    assert sink.metrics.registry.get_sample_value(
        "chatprobe_chats_unjudged_total", {**LIVE, "reason": "proxy_stopped"}) == parked



def test_parked_chats_in_all_are_bounded_at_max_parked_exactly():
    """README: at most 10,000 chats parked in all (MAX_PARKED), of many users each within MAX_PARKED_EACH: that many
    are parked, the next one is not (PARKING_FULL), and a place given back is a place again."""
    from harness.sinks import PARKING_FULL
    from monitors.proxy import MAX_PARKED, MAX_PARKED_EACH, LiveChats, LiveTracker

    profile = load_profile("netra")
    exp = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=10.0)
    live = LiveChats(profile, Judged(ChatMetrics(CollectorRegistry())), exp, "live", 0.05)
    started = profile.decode(json.dumps({"type": "agent_started", "run_id": "r", "seq": 1,
                                         "payload": {"agent_name": "a"}}), 0.1)

    def cut(n: int) -> str:
        chat = LiveTracker(f"c-{n}", exp, 0.0, scenario="live", thread_id="t", run_id=f"r-{n}")
        chat.feed(started)
        return live.park(f"user-{n // MAX_PARKED_EACH}", chat, 0.2)

    assert all(cut(n) == "parked" for n in range(MAX_PARKED)) and len(live.parked) == MAX_PARKED
    assert cut(MAX_PARKED) == PARKING_FULL and len(live.parked) == MAX_PARKED
    assert live.resumed("user-0", "r-0") is not None  # taken by its user's resume: a place again
    assert cut(MAX_PARKED + 1) == "parked"
    live.stop()

async def test_a_resume_under_the_users_refreshed_token_is_hers():
    """alice's connection drops mid-run and her client resumes with a refreshed token (a new `iat` and `exp`, as an
    identity provider's refresh, or a token minted per connection crossing a second): the same user (the JWT's `sub`),
    so the parked chat is adopted and passes. Keyed by the raw token's digest, the resume was another identity's: the
    run's events on it were another user's (R8) and alice's chat was lost at its deadline."""
    import time

    import jwt

    async with Proxied(["close:abort=1.0"]) as p:
        now = int(time.time())
        refreshed = jwt.encode({"sub": "alice", "iat": now - 5, "exp": now + 7200, "jti": "refreshed"}, p.secret,
                               algorithm="HS256")
        assert refreshed != p.token["alice"]
        async with asyncio.timeout(20):
            alice = await p.connect("alice")
            await alice.send(json.dumps({"type": "user_message", "payload": {
                "content": "What is 3 * 4? #tools=1", "thread_id": "t-a", "message_id": "m-a"}}))
            events = [f for f in await read_until_dropped(alice) if "seq" in f]
            assert events and events[-1]["type"] != "agent_completed"
            p.token["alice"] = refreshed
            alice = await p.connect("alice")
            await alice.send(json.dumps({"type": "resume", "payload": {"run_id": events[-1]["run_id"],
                                                                       "last_seq": events[-1]["seq"]}}))
            await read_until_completed(alice)
            await p.sink.judged.wait()
            await alice.close()
    [proxied] = p.sink.results
    assert (proxied.outcome, proxied.reconnects) == (Outcome.PASSED, ["resumed"]), (proxied.violations, proxied.note)
    assert p.outcomes() == {"passed": 1} and p.sink.abandoned == 0
    assert p.sample("chatprobe_rule_violations_total", rule="R8") == 0
