"""`chatprobe proxy` reads a connection's user from its JWT without verifying the signature (it holds no key): a
hostile client can write a token naming another user. Such a claim binds nothing of that user's until the upstream
has accepted the connection (its welcome, or any answer that is no AUTH_FAILED): a forged token's resume of the
victim's parked run (her connection dropped mid-run) is the client's rejection, and her own resume is judged as
ever. Real agentsim (JWT auth: it accepts every upgrade and refuses a bad token with AUTH_FAILED and a 1008 close)
behind the proxy, real sockets on 127.0.0.1, every wait bounded. Between them a relay (tests/integration/fault_relay)
makes the server's refusal slow to come, as a server checking a token with an identity provider makes it: agentsim
refuses at once, and the proxy read the refusal before the attacker's first frame.

FAILED on the code before the proxyjwt27 patch: the attacker's resume, read before (or after) the server's
AUTH_FAILED, adopted alice's parked chat on the attacker's connection; her chat was then judged there (an
`auth_failed` client rejection) or lost and parked again (a `lost` reconnect counted), and her own resume's events
were no chat's: not the one passed chat the proxy counts without the attacker.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time

import jwt
import pytest
import websockets.asyncio.client
import websockets.asyncio.server
from prometheus_client import CollectorRegistry

from agentsim.server import AgentSim, SimConfig
from harness.checker import Expectations
from harness.events import DEFAULT_REQUIRED, Outcome
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.targets import Target, TokenProvider
from monitors.frontdoor import credentials_identity
from monitors.metrics import ChatMetrics
from monitors.proxy import (
    MAX_UNCONFIRMED_BYTES,
    MAX_UNCONFIRMED_FRAMES,
    MAX_UNCONFIRMED_TOTAL_BYTES,
    LiveTracker,
    Proxy,
    start_proxy,
)
from tests.integration.fault_relay import DOWN, Fault, relay

from .test_proxy import WatchedChats
from .test_proxy_parked_resume import LIVE, Judged, Proxied, read_until_completed, read_until_dropped

# How long the server's AUTH_FAILED takes to reach the proxy (an identity provider's round trip, made long): the
# attacker's resume is read first. (On the code before the fix the takeover needed it; after it, the order is moot.)
SLOW_REFUSAL = 1.0


class SlowRefusal(Proxied):
    """Proxied, with the upstream reached through a relay that delays what follows the server's AUTH_FAILED."""

    async def __aenter__(self) -> "SlowRefusal":
        self.sim = AgentSim(SimConfig(port=0, jwt_secret=self.secret, think=0.02, tool_latency=0.01,
                                      faults=self.faults, seed=7))
        await self.sim.start()
        port = self.sim.port
        self._relay = relay(port, Fault("latency", DOWN, at=b"AUTH_FAILED", seconds=SLOW_REFUSAL))  # wait-ok: slow server
        self.relay = await self._relay.__aenter__()
        self.metrics = ChatMetrics(CollectorRegistry())
        self.sink = Judged(self.metrics)
        recorder = Recorder(self.record, keep_all=self.record_all) if self.record is not None else None
        self.live = WatchedChats(load_profile("netra"), self.sink, self.exp, "live", 0.1, recorder)
        self.server = await start_proxy(Proxy(f"ws://127.0.0.1:{self.relay.port}", self.live), "127.0.0.1", 0)
        listen = self.server.sockets[0].getsockname()[1]
        self.tokens = TokenProvider(jwt_secret=self.secret)
        self.token = {u: self.tokens.for_user(u) for u in ("alice", "mallory")}
        self.target = Target(url=f"ws://127.0.0.1:{listen}/ws", profile=load_profile("netra"), name="proxy",
                             tokens=TokenProvider(token=self.token["alice"]))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()
        self.live.stop()
        await self._relay.__aexit__(None, None, None)
        await self.sim.stop()


def forged(sub: str) -> str:
    """A token naming `sub`, signed with a key that is not the server's."""
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 300}, "not-the-servers-secret-" + "x" * 16,
                      algorithm="HS256")


async def proxy_done_with(p: Proxied, count: int) -> None:
    """Until the proxy's handler has ended `count` connections (bounded by the caller's timeout)."""
    while p.live.closed_count < count:
        p.live.closed.clear()
        await p.live.closed.wait()


def credentials(token: str, how: str) -> dict:
    """The connect() arguments carrying `token` as a client sends it: an Authorization header, or the `jwt.`
    subprotocol base64url-encoded, as browsers send it."""
    if how == "header":
        return {"additional_headers": {"Authorization": f"Bearer {token}"}}
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    return {"subprotocols": [f"jwt.{encoded}"]}


async def connect(p: Proxied, token: str, how: str) -> websockets.asyncio.client.ClientConnection:
    return await websockets.asyncio.client.connect(p.target.url, open_timeout=5, ping_interval=None,
                                                   close_timeout=1, **credentials(token, how))


async def as_alice(p: Proxied, how: str) -> websockets.asyncio.client.ClientConnection:
    ws = await connect(p, p.token["alice"], how)
    assert json.loads(await ws.recv())["type"] == "connection_established"
    return ws


async def attack(p: Proxied, run_id: str, how: str) -> tuple[list[dict], int | None]:
    """A client with a forged token naming alice, sent as she sends hers: resumes her run at once (pipelined after
    the upgrade, before any answer). Returns what it got and the close code."""
    ws = await connect(p, forged("alice"), how)
    await ws.send(json.dumps({"type": "resume", "payload": {"run_id": run_id, "last_seq": 0}}))
    got = []
    try:
        async for raw in ws:
            got.append(json.loads(raw))
    except websockets.ConnectionClosed:
        pass
    return got, ws.close_code


@pytest.mark.parametrize("how", ["header", "subprotocol"])
async def test_a_forged_token_never_takes_over_the_victims_parked_run(how, tmp_path):
    """alice's connection drops mid-run; a client with a token naming her (wrong signature) resumes her run before the
    server's refusal comes: refused, it adopted nothing, and her own resume is judged as ever, live and by `chatprobe
    check` of the proxy's --record-all recording (the attacker's connection labelled apart from hers)."""
    from harness.offline import check_files

    async with SlowRefusal(["close:abort=1.0"], record=tmp_path / "rec", record_all=True) as p:
        async with asyncio.timeout(20):
            alice = await as_alice(p, how)
            await alice.send(json.dumps({"type": "user_message", "payload": {
                "content": "What is 3 * 4? #tools=1", "thread_id": "t-a", "message_id": "m-a"}}))
            events = [f for f in await read_until_dropped(alice) if "seq" in f]
            assert events and events[-1]["type"] != "agent_completed"
            run_id, last_seq = events[-1]["run_id"], events[-1]["seq"]
            await proxy_done_with(p, 1)
            assert len(p.live.parked) == 1  # alice's chat, parked for her resume

            got, code = await attack(p, run_id, how)
            assert [f.get("error_code") for f in got] == ["AUTH_FAILED"] and code == 1008, (got, code)
            assert [kind for _n, kind, _d in p.relay.stats.struck] == ["latency"]  # the refusal came late
            await proxy_done_with(p, 2)
            assert len(p.live.parked) == 1  # still hers

            alice = await as_alice(p, how)
            await alice.send(json.dumps({"type": "resume", "payload": {"run_id": run_id, "last_seq": last_seq}}))
            await read_until_completed(alice)
            await p.sink.judged.wait()
            await alice.close()
            await proxy_done_with(p, 3)
    [proxied] = p.sink.results
    assert (proxied.outcome, proxied.reconnects) == (Outcome.PASSED, ["resumed"]), (proxied.violations, proxied.note)
    # alice's one chat passed, resumed once; the attacker's connection is the client's doing (its credentials
    # refused: auth_failed), no chat and no reconnect of the server's; nothing in flight; no cross-talk.
    assert p.outcomes() == {"passed": 1}
    assert p.sample("chatprobe_reconnects_total", result="resumed") == 1
    assert p.sample("chatprobe_reconnects_total", result="lost") == 0
    assert p.sample("chatprobe_client_rejections_total") == 0
    assert p.sample("chatprobe_connections_total", result="auth_failed") == 1
    assert p.sample("chatprobe_connections_total", result="ok") == 2
    assert p.sample("chatprobe_chats_in_flight") == 0 and p.sink.started == 1
    assert p.sample("chatprobe_rule_violations_total", rule="R8") == 0
    assert not p.live.parked and not p.live.open
    files = sorted((tmp_path / "rec").glob("*.jsonl"))
    labels = {json.loads(f.read_text().splitlines()[0])["conn"].rpartition(".")[0] for f in files}
    assert len(files) == 3 and len(labels) == 2  # alice's two connections under one pseudonym, the attacker's apart
    (run,) = check_files([tmp_path / "rec"], load_profile("netra"))
    assert [(r.outcome, r.reconnects) for r in run.results] == [(Outcome.PASSED, ["resumed"])], [
        (r.outcome, r.note, r.violations) for r in run.results]


class RawUpstream:
    """A WebSocket server of the test's own behind the proxy (`handler` per connection), the proxy's LiveChats and
    metrics at hand; `deadline`: a chat's."""

    def __init__(self, handler, deadline: float = 10.0, record=None) -> None:
        self.handler = handler
        self.exp = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=deadline)
        self.record = record  # --record-all's directory, if any

    async def __aenter__(self) -> "RawUpstream":
        self.upstream = await websockets.asyncio.server.serve(self.handler, "127.0.0.1", 0, ping_interval=None,
                                                              close_timeout=1)
        self.metrics = ChatMetrics(CollectorRegistry())
        self.sink = Started(self.metrics)
        recorder = Recorder(self.record, keep_all=True) if self.record is not None else None
        self.live = WatchedChats(load_profile("netra"), self.sink, self.exp, "live", 0.1, recorder)
        port = self.upstream.sockets[0].getsockname()[1]
        self.proxy = Proxy(f"ws://127.0.0.1:{port}", self.live)
        self.server = await start_proxy(self.proxy, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/ws"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()
        self.live.stop()
        self.upstream.close()
        await self.upstream.wait_closed()

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, {**LIVE, **labels}) or 0.0


class Started(Judged):
    def __init__(self, metrics: ChatMetrics) -> None:
        super().__init__(metrics)
        self.began = asyncio.Event()

    def chat_started(self, scenario: str) -> None:
        super().chat_started(scenario)
        self.began.set()


@pytest.mark.parametrize("code", [4401, 4403, 1008])
async def test_a_close_refusing_the_claim_before_the_server_spoke_leaves_the_users_parked_chat_alone(code):
    """A server that refuses the token with a close before it said anything (4401, 4403, 1008), after the forged
    client's resume and message came: the victim's chat, parked for her resume, is still parked, hers, untouched; the
    connection counts auth_failed and its message is the client's doing (a client rejection)."""
    async def refusing(ws) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.recv()  # the client's resume and message came first: only then the token is refused
            await ws.recv()
            await ws.close(code, "bad token")

    async with RawUpstream(refusing) as p:
        profile, now = load_profile("netra"), time.monotonic()
        real = jwt.encode({"sub": "alice", "exp": int(time.time()) + 300}, "the-servers-secret-" + "y" * 16,
                          algorithm="HS256")
        chat = LiveTracker("live-alice", p.exp, now, scenario="live", thread_id="t-a", run_id="r-alice")
        chat.feed(profile.decode(json.dumps({"type": "agent_started", "run_id": "r-alice", "seq": 1,
                                             "payload": {"agent_name": "a"}}), now))
        p.sink.chat_started("live")  # as the proxy counted it when her message came
        assert p.live.park(credentials_identity({"Authorization": f"Bearer {real}"}), chat, now) == "parked"
        async with asyncio.timeout(20):
            ws = await websockets.asyncio.client.connect(p.url, open_timeout=5, ping_interval=None, close_timeout=1,
                                                         **credentials(forged("alice"), "header"))
            await ws.send(json.dumps({"type": "resume", "payload": {"run_id": "r-alice", "last_seq": 0}}))
            await ws.send(json.dumps({"type": "user_message", "payload": {"content": "hi", "message_id": "m-m"}}))
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == code
            await proxy_done_with(p, 1)  # type: ignore[arg-type]
        assert p.live.parked.holds("r-alice") and len(p.live.parked) == 1  # still parked, for alice
        assert not chat.reconnects and chat.connection_error is None and not chat.judged  # untouched: no resume, no loss
        assert not p.sink.results and p.sample("chatprobe_client_rejections_total") == 1
        assert p.sample("chatprobe_connections_total", result="auth_failed") == 1 and p.sink.started == 2
        assert p.sample("chatprobe_reconnects_total", result="lost") == 0
    assert p.sample("chatprobe_chats_in_flight") == 0  # counted unjudged (proxy_stopped) at the stop, as ever


@pytest.mark.parametrize("token", ["jwt", "opaque"])
async def test_a_chat_the_server_never_answers_is_judged_at_its_deadline(token):
    """The server accepts the upgrade and says nothing: the client's message (held while a JWT's claim awaits the
    server; an opaque token's taken at once) is judged at its deadline (incomplete), the connection still open, and
    nothing stays in flight. FAILED before for both: the proxy's judge waited for the server's next frame, so a
    chat on a connection whose server never spoke was judged only when the connection closed."""
    async def silent(ws) -> None:
        await ws.wait_closed()

    async with RawUpstream(silent, deadline=1.0) as p:
        async with asyncio.timeout(20):
            ws = await websockets.asyncio.client.connect(
                p.url, open_timeout=5, ping_interval=None, close_timeout=1,
                **credentials(forged("bob") if token == "jwt" else "opaque-" + "z" * 24, "header"))
            await ws.send(json.dumps({"type": "user_message", "payload": {"content": "hi", "message_id": "m-1"}}))
            await p.sink.judged.wait()
            await ws.close()
            await proxy_done_with(p, 1)  # type: ignore[arg-type]
        [result] = p.sink.results
        assert result.outcome is Outcome.INCOMPLETE, (result.note, result.violations)
        assert p.sample("chatprobe_chats_in_flight") == 0 and p.sink.started == 1


async def test_a_client_flooding_before_the_server_spoke_lets_its_claim_go():
    """Past MAX_UNCONFIRMED_FRAMES frames held for a claim the server has not answered, the claim is let go: the
    frames are judged at once (the message is a chat now, not at the deadline), under no user's identity."""
    async def silent(ws) -> None:
        await ws.wait_closed()

    async with RawUpstream(silent, deadline=60.0) as p:
        async with asyncio.timeout(20):
            ws = await websockets.asyncio.client.connect(p.url, open_timeout=5, ping_interval=None, close_timeout=1,
                                                         **credentials(forged("bob"), "header"))
            for _ in range(MAX_UNCONFIRMED_FRAMES):
                await ws.send(json.dumps({"type": "ping"}))
            await ws.send(json.dumps({"type": "user_message", "payload": {"content": "hi", "message_id": "m-1"}}))
            await p.sink.began.wait()  # long before its 60 s deadline
            [conn] = [c for conns in p.live.open.values() for c in conns]
            assert conn.confirmed and conn.identity != credentials_identity(
                {"Authorization": f"Bearer {forged('bob')}"})
            await ws.close()
            await proxy_done_with(p, 1)  # type: ignore[arg-type]
        assert p.sink.abandoned == 1 and p.sample("chatprobe_chats_in_flight") == 0


async def test_the_frames_held_for_claims_are_bounded_across_connections():
    """Many connections, each with a token naming a user of its own and a silent server, each send just under their
    connection's bound (MAX_UNCONFIRMED_BYTES) before the server spoke: the proxy holds at most
    MAX_UNCONFIRMED_TOTAL_BYTES across them all (the connection whose frame takes the total past it lets its claim
    go), measured by tracemalloc and by its own count, which returns to 0 as they close. FAILED before: each
    connection held its ~3.6 MiB until a chat's deadline, 86 MiB for 24 connections (gigabytes at --max-connections)."""
    import tracemalloc

    # Frames of 60 KiB: what else the proxy holds a connection (the frame being read, the one being forwarded) is
    # small beside what it holds for a claim.
    conns, frames, size = 24, 60, 60 * 1024
    got = {"bytes": 0}
    all_in = asyncio.Event()

    async def silent(ws) -> None:  # reads and counts what the proxy forwarded, says nothing
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in ws:
                got["bytes"] += len(message)
                del message
                if got["bytes"] >= conns * frames * size:
                    all_in.set()

    async with RawUpstream(silent, deadline=60.0) as p:
        async with asyncio.timeout(60):
            frame = json.dumps({"type": "ping", "pad": ""})
            frame = frame[:-2] + "x" * (size - len(frame)) + frame[-2:]
            assert len(frame) == size
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                clients = [await websockets.asyncio.client.connect(
                    p.url, open_timeout=5, ping_interval=None, close_timeout=1,
                    **credentials(forged(f"user-{n}"), "header")) for n in range(conns)]
                for ws in clients:
                    for _ in range(frames):
                        await ws.send(frame)
                await all_in.wait()  # the proxy took every frame (it holds a frame before it forwards it)
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            assert grown < MAX_UNCONFIRMED_TOTAL_BYTES + 8 * 1024 * 1024, grown
            held = [c for c in p.proxy.relays if not c.confirmed]
            assert len(held) < conns  # some let their claims go
            assert p.live.unconfirmed_bytes == sum(c._early_bytes for c in held)
            assert p.live.unconfirmed_bytes <= MAX_UNCONFIRMED_TOTAL_BYTES
            for ws in clients:
                await ws.close()
            await proxy_done_with(p, conns)  # type: ignore[arg-type]
        assert p.live.unconfirmed_bytes == 0
        assert p.sample("chatprobe_chats_in_flight") == 0


@pytest.mark.parametrize("sent", ["ping", "message"])
async def test_a_drain_with_a_claim_awaiting_a_silent_server(sent):
    """SIGTERM's drain while a JWT's claim awaits a silent server. The client sent a frame that opens no chat (its
    own ping): nothing is in flight, the connection is closed at once (1001), as an opaque token's is. FAILED before:
    the held frame counted as busy, and the drain waited for a chat's deadline (here past the drain's bound: the
    connection was left open). The client sent a message: the drain waits for it, judged at its deadline
    (incomplete), and the counts add up (one chat started, one judged, none in flight)."""
    came = asyncio.Event()

    async def silent(ws) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.recv()
            came.set()
            await ws.wait_closed()

    async with RawUpstream(silent, deadline=60.0 if sent == "ping" else 1.0) as p:
        async with asyncio.timeout(30):
            ws = await websockets.asyncio.client.connect(p.url, open_timeout=5, ping_interval=None, close_timeout=1,
                                                         **credentials(forged("bob"), "header"))
            await ws.send(json.dumps({"type": "ping"} if sent == "ping" else {
                "type": "user_message", "payload": {"content": "hi", "message_id": "m-1"}}))
            await came.wait()  # the proxy took it (it takes a frame before it forwards it)
            left = await p.proxy.drain(p.server, 5.0)
            assert left == 0
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1001
            await proxy_done_with(p, 1)  # type: ignore[arg-type]
        if sent == "ping":
            assert not p.sink.results and p.sink.started == 0
        else:
            [result] = p.sink.results
            assert result.outcome is Outcome.INCOMPLETE and p.sink.started == 1, (result.note, result.violations)
        assert p.sample("chatprobe_chats_in_flight") == 0 and p.live.unconfirmed_bytes == 0


@pytest.mark.parametrize("first", ["ping", "malformed"])
async def test_a_server_frame_that_says_nothing_after_the_claim_was_let_go_is_relayed(first):
    """The client floods before the server spoke (its claim let go by the client's relay); then the server's first
    frame is one that neither accepts nor refuses a claim (its ping, a frame of no dialect), then an event: both reach
    the client, the connection goes on, and the proxy's relay does not fail. FAILED before: the relay still tested
    the server's frames for the claim and held that one for a claim no longer awaited (an AssertionError): the
    connection was cut, as if the server had dropped it."""
    async def late(ws) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            for _ in range(MAX_UNCONFIRMED_FRAMES + 1):
                await ws.recv()
            await ws.send(json.dumps({"type": "ping"}) if first == "ping" else "not a frame of this dialect")
            await ws.send(json.dumps({"type": "heartbeat"}))
            await ws.wait_closed()

    async with RawUpstream(late) as p:
        async with asyncio.timeout(20):
            ws = await websockets.asyncio.client.connect(p.url, open_timeout=5, ping_interval=None, close_timeout=1,
                                                         **credentials(forged("bob"), "header"))
            for _ in range(MAX_UNCONFIRMED_FRAMES + 1):
                await ws.send(json.dumps({"type": "ping"}))
            got = [await ws.recv(), await ws.recv()]
            assert json.loads(got[1]) == {"type": "heartbeat"}
            await ws.close()
            assert ws.close_code == 1000
            await proxy_done_with(p, 1)  # type: ignore[arg-type]
        assert p.sample("chatprobe_connections_total", result="ok") + p.sample(
            "chatprobe_connections_total", result="protocol_error") == 1


async def test_clients_filling_the_claims_budget_do_not_let_a_real_users_claim_go():
    """Eight clients with tokens naming users of their own and a silent server hold exactly the budget across
    connections (MAX_UNCONFIRMED_TOTAL_BYTES, each at its own MAX_UNCONFIRMED_BYTES); then alice, with the server's
    own token, sends her resume before her server's welcome: the claim holding the most is let go, not hers, and once
    her server answers her resume the connection is hers. FAILED with the first budget (the frame taking the total
    past it let its own connection's claim go): her resume was a stranger's, her parked chat out of its reach."""
    attackers = MAX_UNCONFIRMED_TOTAL_BYTES // MAX_UNCONFIRMED_BYTES
    size = MAX_UNCONFIRMED_BYTES // MAX_UNCONFIRMED_FRAMES
    real = jwt.encode({"sub": "alice", "exp": int(time.time()) + 300}, "the-servers-secret-" + "y" * 16,
                      algorithm="HS256")
    got = {"bytes": 0}
    all_in = asyncio.Event()

    async def server(ws) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            if real in ws.request.headers.get("Authorization", ""):  # alice: her resume answered once it came
                await ws.recv()
                await ws.send(json.dumps({"type": "connection_established"}))
                await ws.send(json.dumps({"type": "agent_started", "run_id": "r-alice", "seq": 1,
                                          "payload": {"agent_name": "a"}}))
            async for message in ws:  # the others: read, never answered
                got["bytes"] += len(message)
                del message
                if got["bytes"] >= attackers * MAX_UNCONFIRMED_BYTES:
                    all_in.set()

    async with RawUpstream(server, deadline=60.0) as p:
        async with asyncio.timeout(60):
            frame = json.dumps({"type": "ping", "pad": ""})
            frame = frame[:-2] + "x" * (size - len(frame)) + frame[-2:]
            clients = [await websockets.asyncio.client.connect(
                p.url, open_timeout=5, ping_interval=None, close_timeout=1,
                **credentials(forged(f"user-{n}"), "header")) for n in range(attackers)]
            for ws in clients:
                for _ in range(MAX_UNCONFIRMED_FRAMES):
                    await ws.send(frame)
            await all_in.wait()
            assert p.live.unconfirmed_bytes == MAX_UNCONFIRMED_TOTAL_BYTES  # full, none let go yet
            alice = await websockets.asyncio.client.connect(p.url, open_timeout=5, ping_interval=None,
                                                            close_timeout=1, **credentials(real, "header"))
            await alice.send(json.dumps({"type": "resume", "payload": {"run_id": "r-alice", "last_seq": 0}}))
            assert json.loads(await alice.recv())["type"] == "connection_established"
            assert json.loads(await alice.recv())["type"] == "agent_started"
            hers = credentials_identity({"Authorization": f"Bearer {real}"})
            assert [c.confirmed for c in p.proxy.relays if c.identity == hers] == [True]
            assert sum(not c.confirmed for c in p.proxy.relays) == attackers - 1
            for ws in [*clients, alice]:
                await ws.close()
            await proxy_done_with(p, attackers + 1)  # type: ignore[arg-type]
        assert p.live.unconfirmed_bytes == 0 and not p.live.unconfirmed


@pytest.mark.parametrize("server", ["silent", "refused", "flooded", "welcomed_late", "rate_limited"])
async def test_check_of_the_recording_agrees_with_the_proxy_on_a_claims_chat(server, tmp_path):
    """A chat sent under a JWT's claim before the server spoke, whatever came of the claim: the server never spoke
    (judged at its deadline), refused it (AUTH_FAILED, 1008), the client flooded past MAX_UNCONFIRMED_FRAMES, the
    server welcomed it late and said nothing more, or answered with an error that is no AUTH_FAILED: `chatprobe check`
    of the proxy's --record-all recording gives the verdicts the proxy counted (a client rejection is a chat of the
    client's error kind there), and the counts add up (started = judged + rejected, nothing in flight)."""
    from harness.offline import check_files
    from harness.scenario import Scenario
    from monitors.proxy import CLIENTS_DOING

    message = json.dumps({"type": "user_message", "payload": {"content": "hi", "message_id": "m-1"}})
    floods = MAX_UNCONFIRMED_FRAMES + 1 if server == "flooded" else 0

    async def upstream(ws) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            for _ in range(floods + 1):
                await ws.recv()
            if server == "refused":
                await ws.send(json.dumps({"type": "error_message", "error_code": "AUTH_FAILED", "error_message": "no"}))
                await ws.close(1008, "bad token")
            elif server == "welcomed_late":
                await ws.send(json.dumps({"type": "connection_established"}))
            elif server == "rate_limited":
                await ws.send(json.dumps({"type": "error_message", "error_code": "RATE_LIMITED",
                                          "error_message": "slow down"}))
            await ws.wait_closed()

    async with RawUpstream(upstream, deadline=1.0, record=tmp_path / "rec") as p:
        async with asyncio.timeout(20):
            ws = await websockets.asyncio.client.connect(p.url, open_timeout=5, ping_interval=None, close_timeout=1,
                                                         **credentials(forged("bob"), "header"))
            for _ in range(floods):
                await ws.send(json.dumps({"type": "ping"}))
            await ws.send(message)
            if server in ("refused", "rate_limited"):
                with contextlib.suppress(websockets.ConnectionClosed):
                    await ws.recv()
            else:
                await p.sink.judged.wait()
            await ws.close()
            await proxy_done_with(p, 1)  # type: ignore[arg-type]
    live = [(r.outcome, r.error_kind) for r in p.sink.results]
    rejected = p.sample("chatprobe_client_rejections_total")
    assert p.sink.started == len(live) + rejected == 1 and p.sample("chatprobe_chats_in_flight") == 0
    (run,) = check_files([tmp_path / "rec"], load_profile("netra"),
                         Scenario(name="live", expect={"settle": "0.1s", "deadline": "1s"}))
    checked = [(r.outcome, r.error_kind) for r in run.results]
    assert [c for c in checked if c[1] not in CLIENTS_DOING] == live, (checked, live)
    assert sum(c[1] in CLIENTS_DOING for c in checked) == rejected
    if server == "refused":
        assert p.sample("chatprobe_connections_total", result="auth_failed") == 1 and checked[0][1] == "auth_failed"


async def test_a_users_own_ping_before_her_first_message_does_not_let_her_claim_go():
    """A server that speaks only when asked (no welcome, as AG-UI's): alice's client sends its own ping, she idles
    past a chat's deadline, then sends her message, which her server answers with her run's first event: the
    connection is hers (a resume of that run on her next connection finds it). FAILED before: a chat's deadline was
    counted from the first frame held, whatever it was, so an idle user's claim was let go at it and her chats on the
    connection were a stranger's."""
    real = jwt.encode({"sub": "alice", "exp": int(time.time()) + 300}, "the-servers-secret-" + "y" * 16,
                      algorithm="HS256")

    async def asked(ws) -> None:  # answers her message with its run's first event, nothing before
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                if json.loads(raw)["type"] == "user_message":
                    await ws.send(json.dumps({"type": "agent_started", "run_id": "r-1", "seq": 1,
                                              "payload": {"agent_name": "a"}}))

    async with RawUpstream(asked, deadline=0.5) as p:
        async with asyncio.timeout(20):
            ws = await websockets.asyncio.client.connect(p.url, open_timeout=5, ping_interval=None, close_timeout=1,
                                                         **credentials(real, "header"))
            await ws.send(json.dumps({"type": "ping"}))
            await asyncio.sleep(1.0)  # wait-ok: the user idles past a chat's deadline before her first message
            await ws.send(json.dumps({"type": "user_message", "payload": {"content": "hi", "message_id": "m-1"}}))
            assert json.loads(await ws.recv())["type"] == "agent_started"
            hers = credentials_identity({"Authorization": f"Bearer {real}"})
            assert [c.identity == hers for c in p.proxy.relays] == [True]
            await ws.close()
            await proxy_done_with(p, 1)  # type: ignore[arg-type]


async def test_a_pong_to_the_forged_clients_own_ping_accepts_no_claim():
    """A server that answers a ping before it checks a token (a heartbeat handler ahead of its auth), then refuses
    the token at the client's next frame: a forged client naming alice pings, reads the pong, then resumes her parked
    run. The pong answered the client's own frame, it is no welcome: the claim still awaits the server, which refuses
    it, and alice's parked chat is untouched. FAILED before: any control frame accepted the claim, so the resume was
    alice's, her chat adopted on the forged client's connection and judged there (auth_failed)."""
    async def pongs_first(ws) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                if json.loads(raw).get("type") == "ping":
                    await ws.send(json.dumps({"type": "pong"}))
                else:
                    await ws.send(json.dumps({"type": "error_message", "error_code": "AUTH_FAILED",
                                              "error_message": "bad token"}))
                    await ws.close(1008, "bad token")

    async with RawUpstream(pongs_first) as p:
        profile, now = load_profile("netra"), time.monotonic()
        real = jwt.encode({"sub": "alice", "exp": int(time.time()) + 300}, "the-servers-secret-" + "y" * 16,
                          algorithm="HS256")
        chat = LiveTracker("live-alice", p.exp, now, scenario="live", thread_id="t-a", run_id="r-alice")
        chat.feed(profile.decode(json.dumps({"type": "agent_started", "run_id": "r-alice", "seq": 1,
                                             "payload": {"agent_name": "a"}}), now))
        p.sink.chat_started("live")
        assert p.live.park(credentials_identity({"Authorization": f"Bearer {real}"}), chat, now) == "parked"
        async with asyncio.timeout(20):
            ws = await websockets.asyncio.client.connect(p.url, open_timeout=5, ping_interval=None, close_timeout=1,
                                                         **credentials(forged("alice"), "header"))
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await ws.recv())["type"] == "pong"
            await ws.send(json.dumps({"type": "resume", "payload": {"run_id": "r-alice", "last_seq": 0}}))
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    await ws.recv()
            assert ws.close_code == 1008
            await proxy_done_with(p, 1)  # type: ignore[arg-type]
        assert p.live.parked.holds("r-alice") and len(p.live.parked) == 1  # still parked, for alice
        assert not chat.reconnects and chat.connection_error is None and not chat.judged
        assert not p.sink.results and p.sample("chatprobe_client_rejections_total") == 0
        assert p.sample("chatprobe_reconnects_total", result="lost") == 0


async def test_the_opened_log_line_never_names_a_forged_claims_victim(caplog):
    """`-v`'s "opened" line names a connection's user by its pseudonym (--record's label). A token naming alice
    whose signature the server refuses is not alice's connection (the claim awaits the server's acceptance): the
    line says the claim awaits the server, and only the server's acceptance names the user. FAILED before:
    the line was written from the claimed user, so a forger was logged as its victim. Alice's own connection is
    named hers once the server accepted her token, on a line of its own."""
    async def refuses_forgeries(ws) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            auth = ws.request.headers.get("Authorization", "")
            if not _signed_by_server(auth.removeprefix("Bearer ")):
                await ws.send(json.dumps({"type": "error_message", "error_code": "AUTH_FAILED",
                                          "error_message": "bad token"}))
                await ws.close(1008, "bad token")
                return
            await ws.send(json.dumps({"type": "connection_established", "payload": {}}))
            await ws.wait_closed()

    caplog.set_level("INFO", logger="chatprobe.proxy")
    async with RawUpstream(refuses_forgeries) as p:
        alices = p.live.label(credentials_identity({"Authorization": f"Bearer {SERVERS_ALICE}"}))
        async with asyncio.timeout(20):
            ws = await websockets.asyncio.client.connect(p.url, open_timeout=5, ping_interval=None, close_timeout=1,
                                                         **credentials(SERVERS_ALICE, "header"))
            assert json.loads(await ws.recv())["type"] == "connection_established"
            await ws.close()
            await proxy_done_with(p, 1)  # type: ignore[arg-type]
            ws = await websockets.asyncio.client.connect(p.url, open_timeout=5, ping_interval=None, close_timeout=1,
                                                         **credentials(forged("alice"), "header"))
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    await ws.recv()
            assert ws.close_code == 1008
            await proxy_done_with(p, 2)  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("connection from")]
    named = [line for line in lines if alices in line]
    assert named == [f"connection from 127.0.0.1 (user {alices}): the server accepted its token"], lines
    assert sum("opened" in line and "awaits the server" in line for line in lines) == 2, lines


SERVERS_SECRET = "the-servers-secret-" + "y" * 16
SERVERS_ALICE = jwt.encode({"sub": "alice", "exp": int(time.time()) + 3600}, SERVERS_SECRET, algorithm="HS256")


def _signed_by_server(token: str) -> bool:
    try:
        jwt.decode(token, SERVERS_SECRET, algorithms=["HS256"])
    except jwt.PyJWTError:
        return False
    return True
