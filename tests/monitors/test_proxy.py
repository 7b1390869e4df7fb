"""The passive proxy between a real client and agentsim: forwards everything, judges chats as source=live."""
from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import errno
import itertools
import json
import logging
import os
import secrets
import socket
import struct
import sys

import pytest
import websockets
import websockets.asyncio.client
import websockets.asyncio.server
from prometheus_client import CollectorRegistry, generate_latest

from agentsim.server import AgentSim, SimConfig
from harness.checker import Expectations
from harness.client import Session
from harness.events import DEFAULT_REQUIRED, Outcome
from harness.flow import ChatOptions
from harness.profiles import load_profile
from harness.sinks import Sink
from harness.targets import Target, TokenProvider
from monitors.metrics import ChatMetrics, MetricsSink
from monitors.proxy import LiveChats, Proxy, start_proxy
from tests.integration.hostile_ws import BROKEN_FRAMES, breaks_framing, fragments, raw

EXP = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=10.0)
# For a chat the server cuts and no resume follows: parked until this deadline, then judged (lost) as it stood (the
# proxy stopping judges no parked chat: it counts it unjudged, proxy_stopped). Long enough for the cut to come first
# on a loaded machine.
SHORT = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=5.0)


class Recorder_(Sink):
    def __init__(self):
        self.results = []
        self.abandoned = 0

    def chat_finished(self, result):
        self.results.append(result)

    def chat_abandoned(self, scenario):
        self.abandoned += 1


async def setup(faults=(), settle=0.2, **proxy_options):
    secret = secrets.token_urlsafe(32)
    sim = AgentSim(SimConfig(port=0, jwt_secret=secret, think=0.005, tool_latency=0.002, faults=list(faults), seed=5))
    await sim.start()
    metrics = ChatMetrics(CollectorRegistry())
    sink = MetricsSink(metrics, "agentsim", "live")
    live = LiveChats(load_profile("netra"), sink, EXP, "live", settle)
    server = await start_proxy(Proxy(sim.url.rsplit("/", 1)[0], live, **proxy_options), "127.0.0.1", 0)
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
            client = Session(dataclasses.replace(target, auth=auth), "alice", "user", Recorder_())
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
        client = Session(target, "bob", "user", Recorder_())
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
        client = Session(target, "carol", "user", Recorder_())
        r = await client.chat("Look up the capital of Peru. #think=0.3", EXP, ChatOptions(abandon_after=1))
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


def _reset(ws) -> None:
    """Drop a websockets connection as a lost network or a killed app does: a TCP reset, no close frame."""
    ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort()


class Counts(MetricsSink):
    def __init__(self, *args):
        super().__init__(*args)
        self.results = []
        self.abandoned = 0

    def chat_finished(self, result):
        self.results.append(result)
        super().chat_finished(result)

    def chat_abandoned(self, scenario):
        self.abandoned += 1
        super().chat_abandoned(scenario)


async def _drops(upstream_handler, user) -> Counts:
    """10 users through the proxy to `upstream_handler`, each played by `user(url, i)`; every chat judged (one the
    server cut at its deadline, SHORT, no resume following)."""
    up = await websockets.asyncio.server.serve(upstream_handler, "127.0.0.1", 0, ping_interval=None)
    sink = Counts(ChatMetrics(CollectorRegistry()), "up", "live")
    live = LiveChats(load_profile("netra"), sink, SHORT, "live", 0.1)
    server = await start_proxy(Proxy(f"ws://127.0.0.1:{up.sockets[0].getsockname()[1]}", live), "127.0.0.1", 0)
    try:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        await asyncio.gather(*(user(url, i) for i in range(10)))
        await until(lambda: not live.open)  # every connection done with
        await until(lambda: len(sink.results) == 10, 30)  # a chat parked for a resume: judged at its deadline
    finally:
        server.close()
        up.close()
    assert len(sink.results) == 10
    return sink


async def _welcome_and_run(ws) -> None:
    """The upstream's side of a chat's start: the welcome, the user's message, the run's first event."""
    await ws.send(json.dumps({"type": "connection_established", "data": {"user_id": "u"}}))
    message_id = json.loads(await ws.recv())["payload"]["message_id"]
    await ws.send(json.dumps({"type": "agent_started", "run_id": f"r-{message_id}", "seq": 1,
                              "payload": {"message_id": message_id}}))


async def _start_chat(url: str, i: int):
    ws = await websockets.asyncio.client.connect(url, open_timeout=5, max_queue=4)
    await ws.recv()  # the welcome
    await ws.send(json.dumps({"type": "user_message", "payload": {"content": "hi", "message_id": f"m{i}"}}))
    await ws.recv()  # the run's first event
    return ws


async def test_a_user_who_drops_while_the_server_streams_abandoned_the_chat():
    """The server streams a run's events without a pause (tokens); mid-run the user's network goes (a reset). The
    proxy's send of the next event finds the client gone: that is the user leaving, as when the server was quiet.
    It was taken for the server closing the connection mid-run (every chat parked for a resume, then judged lost:
    incomplete, on the server's dashboard)."""
    async def streams(ws):
        await _welcome_and_run(ws)
        with contextlib.suppress(websockets.ConnectionClosed):
            for seq in itertools.count(2):
                await ws.send(json.dumps({"type": "agent_thinking", "run_id": "r", "seq": seq,
                                          "payload": {"thought": "x" * 100}}))
                await asyncio.sleep(0)  # wait-ok: a yield between frames (a stream without pause), no condition

    async def user(url, i):
        ws = await _start_chat(url, i)
        for _ in range(20):
            await ws.recv()
        _reset(ws)

    sink = await _drops(streams, user)
    assert sink.abandoned == 10, [r.note for r in sink.results]


async def test_a_server_that_drops_while_the_user_sends_closed_the_connection_itself():
    """Mid-run the user's client sends frames (keepalives) without a pause; the server's connection goes (a reset).
    The proxy's send of the next frame finds the upstream gone: that is the server closing the connection mid-run
    (the chat parked for a resume, then judged lost). It was taken for the user abandoning the chat: the server's
    failure hidden from its dashboard."""
    async def drops(ws):
        await _welcome_and_run(ws)
        n = 0
        async for _ in ws:
            n += 1
            if n == 200:
                _reset(ws)
                return

    async def user(url, i):
        ws = await _start_chat(url, i)
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                await ws.send(json.dumps({"type": "ping"}))
                await asyncio.sleep(0)  # wait-ok: a yield between frames (keepalives without pause), no condition

    sink = await _drops(drops, user)
    assert sink.abandoned == 0, [r.note for r in sink.results]
    assert all(r.outcome is Outcome.INCOMPLETE and r.note.startswith("the server closed the connection mid-run")
               for r in sink.results), [(r.outcome, r.note) for r in sink.results]


@pytest.mark.parametrize("auth", ["header", "subprotocol"])
async def test_bad_token_is_passed_through_as_auth_failure(auth):
    """The client's refusal is passed on as it came, and the proxy counts the attempt auth_failed, never ok: a server
    reading the token from a subprotocol accepts the upgrade and refuses it in its first frame (AUTH_FAILED)."""
    sim, server, metrics, live, target = await setup()
    try:
        bad = dataclasses.replace(target, tokens=TokenProvider(token="not-a-jwt"), auth=auth)
        client = Session(bad, "mallory", "user", Recorder_())
        r = await client.chat("hi", EXP)
        assert r.outcome is Outcome.ERROR and r.error_kind == "auth_failed"
        await client.close()
        labels = dict(target="agentsim", scenario="live", source="live")
        await until(lambda: not live.open)
        counted = {result: sample(metrics, "chatprobe_connections_total", result=result, **labels)
                   for result in ("ok", "auth_failed", "protocol_error")}
        assert counted == {"ok": 0, "auth_failed": 1, "protocol_error": 0}, counted
    finally:
        server.close()
        await sim.stop()


class WatchedChats(LiveChats):
    """LiveChats that tells when the proxy is done with a connection (its handler's last step)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.closed = asyncio.Event()
        self.closed_count = 0

    def connection_closed(self, conn):
        super().connection_closed(conn)
        self.closed_count += 1
        self.closed.set()


BIG = b"x" * 256 * 1024


@pytest.mark.parametrize("stuck", ["client", "upstream"])
async def test_a_peer_that_stops_reading_does_not_hold_the_proxy(stuck):
    """Every send has a deadline: a client (or server) that takes no frames ends its connection, not hangs it."""
    async def upstream_handler(ws):
        if stuck == "client":  # the server streams, the client never reads
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    await ws.send(BIG)
        else:  # the server never reads what the client sends
            await ws.wait_closed()

    upstream = await websockets.asyncio.server.serve(upstream_handler, "127.0.0.1", 0, max_size=None, max_queue=1,
                                                     ping_interval=None, close_timeout=0.5)
    metrics = ChatMetrics(CollectorRegistry())
    live = WatchedChats(load_profile("netra"), MetricsSink(metrics, "up", "live"), EXP, "live", 0.1)
    up_port = upstream.sockets[0].getsockname()[1]
    proxy = await start_proxy(Proxy(f"ws://127.0.0.1:{up_port}", live, send_timeout=0.5), "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    flood = None
    try:
        client = await websockets.asyncio.client.connect(f"ws://127.0.0.1:{port}/ws", max_size=None, max_queue=1,
                                                         ping_interval=None, open_timeout=5, close_timeout=1)
        if stuck == "upstream":
            async def send_forever():
                with contextlib.suppress(websockets.ConnectionClosed):
                    while True:
                        await client.send(BIG)
            flood = asyncio.ensure_future(send_forever())
        async with asyncio.timeout(10):  # the send deadline, then at most the close deadline
            await live.closed.wait()
    finally:
        if flood is not None:
            flood.cancel()
            await asyncio.gather(flood, return_exceptions=True)
        client.transport.abort()
        proxy.close()
        upstream.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.gather(proxy.wait_closed(), upstream.wait_closed())


@pytest.mark.parametrize("args,needle", [
    (["--upstream", "ftp://x"], "--upstream"),
    (["--upstream", "ws://127.0.0.1:1", "--deadline", "soon"], "--deadline"),
    (["--upstream", "ws://[::1"], "--upstream 'ws://[::1': not a valid URL"),
    (["--upstream", "ws://127.0.0.1:notaport/ws"], "--upstream 'ws://127.0.0.1:notaport/ws'"),
    (["--upstream", "ws://127.0.0.1:1/ws", "--listen", "127.0.0.1:99999"], "--listen '127.0.0.1:99999'"),
    (["--upstream", "ws://127.0.0.1:1/ws", "--metrics-listen", "127.0.0.1:99999"], "--metrics-listen"),
    (["--upstream", "ws://127.0.0.1:1/ws", "--send-timeout", "0"], "--send-timeout"),
    (["--upstream", "ws://127.0.0.1:1/ws", "--drain-timeout", "soon"], "--drain-timeout"),
    (["--upstream", "ws://127.0.0.1:1/ws", "--drain-timeout", "2h"], "--drain-timeout: at most 3600s"),
    (["--upstream", "ws://127.0.0.1:1/ws", "--max-size", "lots"], "--max-size: bad size 'lots'"),
    (["--upstream", "ws://127.0.0.1:1/ws", "--max-size", "0"], "--max-size"),
])
def test_bad_flags_exit_2(capsys, args, needle):
    from monitors.proxy import main

    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("flag", ["--listen", "--metrics-listen"])
def test_an_address_in_use_is_exit_2_with_one_line_naming_the_flag_as_the_monitors(capsys, flag):
    """A port another process holds is the flag's fault, a usage error: `chatprobe monitor --listen` and the Locust
    user's metrics port exit 2 for it (README, "For SREs"), and the proxy exited 1, the code the monitor gives a probe
    loop that crashed. Both now exit 2, with one line naming the flag and the address, before serving anything."""
    from harness.cli import main as cli_main

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        metrics = f"127.0.0.1:{free.getsockname()[1]}"  # (closed at once: a port to serve metrics on)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        proxy = ["proxy", "--upstream", "ws://127.0.0.1:1/ws", "--listen", "127.0.0.1:0",
                 "--metrics-listen", metrics, flag, taken]  # (the last one given counts)
        monitor = ["monitor", "--target", "ws://127.0.0.1:1/ws", "--auth", "none", "--listen", taken]
        for argv in (proxy, monitor) if flag == "--listen" else (proxy,):
            assert cli_main(argv) == 2, argv
            out, err = capsys.readouterr()
            # FAILED on the old code for the proxy's --listen: "chatprobe proxy metrics on http://…" was printed
            # first, as if it served.
            assert "metrics on" not in out, out
            lines = err.strip().splitlines()
            assert len(lines) == 1 and f"{flag} {taken}: cannot listen" in lines[0], err
            # The system's reason in its own words (FAILED on the old code for the proxy's --listen: "error while
            # attempting to bind on address ('127.0.0.1', P): address already in use", asyncio's wrapping).
            assert lines[0].endswith(f": cannot listen: {os.strerror(errno.EADDRINUSE)}"), err
            assert "Traceback" not in err


async def test_a_rejected_message_is_judged_at_once_by_the_proxy():
    sim, server, metrics, live, target = await setup()
    try:
        client = Session(target, "dave", "user", Recorder_())
        await client.connect()
        await client.transport.send({"type": "user_message", "payload": {"content": "", "message_id": "m-1"}})
        labels = dict(target="agentsim", scenario="live", source="live")
        # The client's garbage is the client's doing: counted apart, never one of the server's outcomes (no SLO burn).
        await until(lambda: sample(metrics, "chatprobe_client_rejections_total", **labels) == 1)
        assert sample(metrics, "chatprobe_chats_in_flight", **labels) == 0
        assert sum(sample(metrics, "chatprobe_chats_total", outcome=o, **labels)
                   for o in ("passed", "failed", "incomplete", "error")) == 0
        await client.close()
    finally:
        server.close()
        await sim.stop()


# -- frame size: neither a client nor the upstream can make the proxy buffer more than --max-size --

SMALL_LIMIT = 64 * 1024  # the proxy's --max-size in these tests; agentsim itself takes frames up to 1 MiB
LIVE = dict(target="agentsim", scenario="live", source="live")


def test_max_size_flag_syntax():
    from monitors.proxy import DEFAULT_MAX_SIZE, build_parser, parse_size

    assert build_parser().parse_args(["--upstream", "ws://x"]).max_size == "4MiB"
    assert parse_size("4MiB") == DEFAULT_MAX_SIZE == 4 * 1024 * 1024
    assert parse_size("512KiB") == 512 * 1024 and parse_size("1000") == 1000 and parse_size("2MB") == 2_000_000
    for bad in ("", "-1", "0", "4 parsecs", "1e400"):
        with pytest.raises(ValueError):
            parse_size(bad)


async def test_a_client_frame_over_max_size_closes_only_that_client_with_1009():
    sim, server, metrics, live, target = await setup(max_size=SMALL_LIMIT)
    port = server.sockets[0].getsockname()[1]
    try:
        # A well-behaved user is mid-chat on its own connection when another sends a frame over the limit.
        good = Session(target, "erin", "user", Recorder_())
        chat = asyncio.ensure_future(good.chat("What is 3 * 3? #think=0.3", EXP))
        token = target.tokens.for_user("oscar")
        async with websockets.asyncio.client.connect(
                f"ws://127.0.0.1:{port}/ws", additional_headers={"Authorization": f"Bearer {token}"},
                max_size=None, ping_interval=None, open_timeout=5, close_timeout=2) as big:
            await big.recv()  # the welcome
            content = "y" * (2 * SMALL_LIMIT)
            await big.send(json.dumps({"type": "user_message", "payload": {"content": content}}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async with asyncio.timeout(5):
                    while True:
                        await big.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        result = await chat
        assert result.outcome is Outcome.PASSED, result.violations
        # The proxy is still up: a new connection's chat passes too.
        again = await good.chat("What is 2 + 2?", EXP)
        assert again.outcome is Outcome.PASSED, again.violations
        await good.close()
        await until(lambda: sample(metrics, "chatprobe_chats_total", outcome="passed", **LIVE) == 2)
    finally:
        server.close()
        await sim.stop()


async def test_an_upstream_frame_over_max_size_ends_only_that_connection():
    """Between the proxy and agentsim, a relay adds one valid but oversized frame to the connections on /big. The
    cut-off chat is held until its deadline for a resume elsewhere (then judged): 3 s here, not EXP's 10 s."""
    exp = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=3.0)
    secret = secrets.token_urlsafe(32)
    sim = AgentSim(SimConfig(port=0, jwt_secret=secret, think=0.005, tool_latency=0.002, seed=5))
    await sim.start()
    padding = json.dumps({"type": "system_message", "data": {"event": "padding", "padding": "z" * 2 * SMALL_LIMIT}})

    async def relay(ws):
        big = ws.request.path.startswith("/big")
        auth = {"Authorization": ws.request.headers["Authorization"]}
        async with websockets.asyncio.client.connect(sim.url, additional_headers=auth, max_size=None,
                                                     ping_interval=None, close_timeout=1) as agent:
            async def up():
                with contextlib.suppress(websockets.ConnectionClosed):
                    async for m in ws:
                        await agent.send(m)

            async def down():
                with contextlib.suppress(websockets.ConnectionClosed):
                    async for m in agent:
                        await ws.send(m)
                        if big and '"agent_started"' in m:
                            await ws.send(padding)

            pumps = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for p in pumps:
                p.cancel()

    upstream = await websockets.asyncio.server.serve(relay, "127.0.0.1", 0, max_size=None, ping_interval=None)
    metrics = ChatMetrics(CollectorRegistry())
    live = LiveChats(load_profile("netra"), MetricsSink(metrics, "agentsim", "live"), exp, "live", 0.2)
    up_port = upstream.sockets[0].getsockname()[1]
    server = await start_proxy(Proxy(f"ws://127.0.0.1:{up_port}", live, max_size=SMALL_LIMIT), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    base = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile("netra"), name="proxy",
                  tokens=TokenProvider(jwt_secret=secret))
    try:
        good = Session(base, "erin", "user", Recorder_())
        good_chat = asyncio.ensure_future(good.chat("What is 3 * 3? #think=0.3", exp))
        token = base.tokens.for_user("oscar")
        async with websockets.asyncio.client.connect(
                f"ws://127.0.0.1:{port}/big", additional_headers={"Authorization": f"Bearer {token}"},
                max_size=None, ping_interval=None, open_timeout=5, close_timeout=2) as user:
            await user.recv()  # the welcome
            await user.send(json.dumps({"type": "user_message", "payload": {"content": "What is 4 * 4? #think=0.3"}}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async with asyncio.timeout(5):
                    while True:
                        await user.recv()
        # The user on /big lost the connection mid-run: the proxy closed it, saying why (1014: bad gateway) ...
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1014, closed.value
        assert str(SMALL_LIMIT) in closed.value.rcvd.reason
        # ... while the other user's chat, on the same proxy at the same time, passes.
        good_result = await good_chat
        assert good_result.outcome is Outcome.PASSED, good_result.violations
        await good.close()
        # The proxy judged the cut-off chat like the harness judges an oversized frame: an R12 (and not passed).
        await until(lambda: sample(metrics, "chatprobe_chats_total", outcome="passed", **LIVE) == 1
                    and sample(metrics, "chatprobe_rule_violations_total", rule="R12", **LIVE) == 1)
        await until(lambda: sample(metrics, "chatprobe_chats_in_flight", **LIVE) == 0)
        judged = sum(sample(metrics, "chatprobe_chats_total", outcome=o, **LIVE)
                     for o in ("passed", "failed", "incomplete", "error"))
        assert judged == 2
    finally:
        server.close()
        upstream.close()
        await sim.stop()


# -- no false isolation alarms; another user's resume never changes a verdict --

async def _raw_client(target: Target, user: str):
    token = target.tokens.for_user(user)
    ws = await websockets.asyncio.client.connect(target.url, additional_headers={"Authorization": f"Bearer {token}"},
                                                 open_timeout=5, ping_interval=None)
    async with asyncio.timeout(5):
        welcome = json.loads(await ws.recv())
    assert welcome["type"] == "connection_established"
    return ws


async def test_a_client_that_sends_no_thread_or_message_id_is_not_cross_talk():
    sim, server, metrics, live, target = await setup()
    try:
        ws = await _raw_client(target, "erin")
        await ws.send(json.dumps({"type": "user_message", "payload": {"content": "What is 2 * 2?"}}))
        async with asyncio.timeout(10):
            while json.loads(await ws.recv())["type"] != "agent_completed":
                pass
        await until(lambda: sample(metrics, "chatprobe_chats_total", outcome="passed", **LIVE) == 1)
        assert sample(metrics, "chatprobe_rule_violations_total", rule="R8", **LIVE) == 0
        await ws.close()
    finally:
        server.close()
        await sim.stop()


async def test_another_users_resume_of_a_run_never_changes_its_verdict():
    sim, server, metrics, live, target = await setup(faults=["drop:tool_completed=1.0"])
    try:
        alice = Session(target, "alice", "user", Recorder_())
        chat = asyncio.ensure_future(alice.chat("What is 3 * 3? #think=0.4 #tools=1", EXP))
        await until(lambda: any(c.run_id and c.events for c in alice.checker.chats))
        run_id = next(c.run_id for c in alice.checker.chats if c.run_id)
        mallory = await _raw_client(target, "mallory")
        await mallory.send(json.dumps({"type": "resume", "payload": {"run_id": run_id, "last_seq": 0}}))
        async with asyncio.timeout(5):
            reply = json.loads(await mallory.recv())
        assert "RESUME_UNKNOWN_RUN" in json.dumps(reply), reply  # agentsim keeps run ids per user
        await mallory.close()  # leaving must not abandon (or judge) alice's chat
        result = await chat
        await alice.close()
        assert result.outcome is Outcome.FAILED
        await until(lambda: sample(metrics, "chatprobe_chats_total", outcome="failed", **LIVE) == 1)
        assert sample(metrics, "chatprobe_chats_abandoned_total", **LIVE) == 0
        assert sample(metrics, "chatprobe_chats_total", outcome="passed", **LIVE) == 0
        assert sample(metrics, "chatprobe_reconnects_total", result="resumed", **LIVE) == 0
    finally:
        server.close()
        await sim.stop()


# -- --record: the frames of a failing live chat kept for `chatprobe check`, passing ones dropped, no secrets --

async def test_the_proxy_records_failing_connections_only_and_check_gives_the_same_verdict(tmp_path):
    from harness.offline import check_files
    from harness.recorder import Recorder

    secret = secrets.token_urlsafe(32)
    sim = AgentSim(SimConfig(port=0, jwt_secret=secret, think=0.005, tool_latency=0.002, seed=5))
    await sim.start()
    metrics = ChatMetrics(CollectorRegistry())
    live = WatchedChats(load_profile("netra"), MetricsSink(metrics, "agentsim", "live"), EXP, "live", 0.2,
                        Recorder(tmp_path / "rec", keep_all=False))
    server = await start_proxy(Proxy(sim.url.rsplit("/", 1)[0], live), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    target = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile("netra"), name="proxy",
                    tokens=TokenProvider(jwt_secret=secret))
    try:
        good = Session(target, "alice", "user", Recorder_())
        assert (await good.chat("What is 2 * 2?", EXP)).outcome is Outcome.PASSED
        await good.close()
        await until(lambda: live.closed_count == 1)
        bad = Session(target, "bob", "user", Recorder_())
        failed = await bad.chat("What is 3 * 3? #fail-agent", EXP)  # an unexpected fatal error: R13
        await bad.close()
        await until(lambda: live.closed_count == 2)
        assert failed.outcome is Outcome.FAILED
    finally:
        server.close()
        await sim.stop()
    (recording,) = list((tmp_path / "rec").glob("*.jsonl"))  # the passing connection's file was not kept
    text = recording.read_text()
    assert secret not in text and target.tokens.for_user("bob").split(".")[0] not in text
    (run,) = check_files([recording], load_profile("netra"))
    (chat,) = run.results
    assert chat.outcome is Outcome.FAILED and {v.rule for v in chat.violations} == {v.rule for v in failed.violations}


# -- a client opening chat after chat on one connection: bounded, linear, counted as the client's doing --

async def _drain(ws) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        async for _ in ws:
            pass


@contextlib.asynccontextmanager
async def _thinking_sim_behind_proxy():
    """agentsim whose runs think for 30 s (every chat stays open), behind a proxy judging into fresh metrics: the
    secret its tokens are minted with, the metrics and the proxy's port."""
    secret = secrets.token_urlsafe(32)
    sim = AgentSim(SimConfig(port=0, jwt_secret=secret, think=30.0, seed=5, max_live_runs_per_user=1000))
    await sim.start()
    metrics = ChatMetrics(CollectorRegistry())
    live = LiveChats(load_profile("netra"), MetricsSink(metrics, "agentsim", "live"), EXP, "live", 0.2)
    server = await start_proxy(Proxy(sim.url.rsplit("/", 1)[0], live), "127.0.0.1", 0)
    try:
        yield secret, metrics, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await sim.stop()


async def test_a_client_with_too_many_chats_open_at_once_is_bounded_and_counted_as_its_own_doing():
    from harness.flow import MAX_OPEN_WATCHED

    # Runs that take long: every chat the client opens stays open while it sends the next ones.
    async with _thinking_sim_behind_proxy() as (secret, metrics, port):
        target = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile("netra"), name="proxy",
                        tokens=TokenProvider(jwt_secret=secret))
        sent = 3 * MAX_OPEN_WATCHED
        ws = await _raw_client(target, "flood")
        reader = asyncio.ensure_future(_drain(ws))  # the user's client reads what comes, as a chat UI does
        for i in range(sent):
            await ws.send(json.dumps({"type": "user_message", "payload": {
                "content": "What is 2 * 2?", "thread_id": f"t-{i}", "message_id": f"m-{i}"}}))
        rejected = sent - MAX_OPEN_WATCHED
        await until(lambda: sample(metrics, "chatprobe_client_rejections_total", **LIVE) == rejected)
        assert sample(metrics, "chatprobe_chats_in_flight", **LIVE) == MAX_OPEN_WATCHED
        assert sum(sample(metrics, "chatprobe_chats_total", outcome=o, **LIVE)
                   for o in ("passed", "failed", "incomplete", "error")) == 0  # no verdict burnt on the server
        await ws.close()
        reader.cancel()
        # The client leaves: the chats still open are abandoned, and every message sent is counted once.
        await until(lambda: sample(metrics, "chatprobe_chats_in_flight", **LIVE) == 0)
        judged = sum(sample(metrics, "chatprobe_chats_total", outcome=o, **LIVE)
                     for o in ("passed", "failed", "incomplete", "error"))
        assert judged == MAX_OPEN_WATCHED and judged + rejected == sent


async def test_a_chat_past_the_open_chats_bound_with_a_resume_pending_is_no_lost_reconnect():
    """The proxy stops following the oldest chat of a connection with more than MAX_OPEN_WATCHED open (the client's
    doing, counted in chatprobe_client_rejections_total). When that chat had a resume of its run pending, the resume
    was judged there and then: no event back yet, so `lost`, a reconnect the server failed, on the dashboard and in
    the runbook's reading of `reconnects{result="lost"}`, for what was the proxy's own bound. It is judged as a chat the
    client left with a resume pending is: `resumed` had events come back, else in neither result."""
    from harness.flow import MAX_OPEN_WATCHED

    # Runs that take long: nothing of the resumed run comes back while the client opens chat after chat.
    async with _thinking_sim_behind_proxy() as (secret, metrics, port):
        url = f"ws://127.0.0.1:{port}/ws"
        headers = {"Authorization": f"Bearer {TokenProvider(jwt_secret=secret).for_user('ana')}"}  # one user, two sockets
        first = await websockets.asyncio.client.connect(url, additional_headers=headers, ping_interval=None)
        second = await websockets.asyncio.client.connect(url, additional_headers=headers, ping_interval=None)
        async with asyncio.timeout(10):
            for ws in (first, second):
                assert json.loads(await ws.recv())["type"] == "connection_established"
            await first.send(json.dumps({"type": "user_message", "payload": {
                "content": "What is 2 * 2?", "thread_id": "t-0", "message_id": "m-0"}}))
            started = json.loads(await first.recv())
        assert started["type"] == "agent_started", started
        run_id, seq = started["run_id"], started["seq"]
        # The user's client resumes the run on its second socket (the first still open): the chat moves there, its
        # resume awaiting events (the run thinks for 30 s).
        await second.send(json.dumps({"type": "resume", "payload": {"run_id": run_id, "last_seq": seq}}))
        reader = asyncio.ensure_future(_drain(second))
        for i in range(1, MAX_OPEN_WATCHED + 1):  # the 64th chat opened there makes the proxy let the oldest go
            await second.send(json.dumps({"type": "user_message", "payload": {
                "content": "What is 2 * 2?", "thread_id": f"t-{i}", "message_id": f"m-{i}"}}))
        await until(lambda: sample(metrics, "chatprobe_client_rejections_total", **LIVE) == 1)
        for result in ("resumed", "lost"):
            assert sample(metrics, "chatprobe_reconnects_total", result=result, **LIVE) == 0, result
        await second.close()
        await first.close()
        reader.cancel()
        await until(lambda: sample(metrics, "chatprobe_chats_in_flight", **LIVE) == 0)
        judged = sum(sample(metrics, "chatprobe_chats_total", outcome=o, **LIVE)
                     for o in ("passed", "failed", "incomplete", "error"))
        assert judged + 1 == MAX_OPEN_WATCHED + 1  # every chat started counted once: judged, or the one let go
        assert sample(metrics, "chatprobe_reconnects_total", result="lost", **LIVE) == 0


async def refused_through_proxy(upstream_client, connect_timeout: float,
                                open_timeout: float) -> tuple[int, dict[str, float]]:
    """A client's connection through the proxy to an upstream served by `upstream_client` (raw asyncio streams) that
    refuses or never answers it, each connection held open until the client is answered: the HTTP status the client
    got and the attempts the proxy counted, by result."""
    held: list[asyncio.StreamWriter] = []

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await upstream_client(reader, writer)

    upstream = await asyncio.start_server(client, "127.0.0.1", 0)
    metrics = ChatMetrics(CollectorRegistry())
    live = LiveChats(load_profile("netra"), MetricsSink(metrics, "up", "live"), EXP, "live", 0.2)
    proxy = Proxy(f"ws://127.0.0.1:{upstream.sockets[0].getsockname()[1]}", live, connect_timeout=connect_timeout)
    server = await start_proxy(proxy, "127.0.0.1", 0)
    try:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.asyncio.client.connect(url, open_timeout=open_timeout)
        labels = dict(target="up", scenario="live", source="live")
        counted = {result: sample(metrics, "chatprobe_connections_total", result=result, **labels)
                   for result in ("timeout", "auth_failed", "protocol_error", "refused")}
        return refused.value.response.status_code, counted
    finally:
        server.close()
        upstream.close()
        for w in held:
            w.close()


async def test_an_upstream_that_never_answers_the_handshake_is_a_504_and_counted_as_a_timeout():
    """The upstream accepts the TCP connection and says nothing: the client gets 504 at the proxy's connect timeout,
    and the attempt is counted (it was dropped unanswered and uncounted when the client's own handshake deadline,
    the same 10 s, came first)."""
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pass  # read nothing, answer nothing

    status, counted = await refused_through_proxy(silent, connect_timeout=0.5, open_timeout=10)
    assert status == 504
    assert counted["timeout"] == 1


async def test_an_upstreams_401_whose_body_never_ends_reaches_the_client_as_a_401():
    """The upstream refuses the credentials with a 401 whose body has no length and keeps the connection open: the
    client gets the 401 and the attempt counts as auth_failed, at once. The proxy's upstream client (websockets) read
    the body first and waited out the connect timeout: a 504 and a `timeout`, the upstream's refusal lost."""
    async def refuses(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Type: text/html\r\n\r\n<h1>Sign in</h1>")
        # the connection stays open, the body never ends

    # the proxy's connect timeout is 10 s, the client's 5 s
    status, counted = await refused_through_proxy(refuses, connect_timeout=10, open_timeout=5)
    assert status == 401
    assert counted["auth_failed"] == 1


@pytest.mark.parametrize(("upstream_status", "client_status", "result"),
                         [(503, 503, "refused"), (500, 500, "protocol_error"), (599, 502, "protocol_error")])
async def test_an_upstreams_5xx_at_the_upgrade_reaches_the_client_as_it_came(upstream_status, client_status, result):
    """An upstream refusing the upgrade with a server error (503 while it is overloaded or deploying, 500) is what the
    client gets, as a 4xx is: a client told 503 backs off and retries, where a 502 of the proxy's own says the proxy
    could not reach it. A status HTTP does not name (599) is no answer to pass on: a 502."""
    async def refuses(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 {upstream_status} Whatever\r\nContent-Length: 0\r\n\r\n".encode())

    status, counted = await refused_through_proxy(refuses, connect_timeout=10, open_timeout=5)
    assert status == client_status
    assert counted[result] == 1 and sum(counted.values()) == 1, counted


def _upgrade_answer(head: bytes, extra: str = "", accept: str | None = None) -> bytes:
    """A 101 to the proxy's upgrade `head` (its Sec-WebSocket-Accept, or `accept`), with `extra` header lines."""
    from websockets.utils import accept_key

    key = next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    return (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(key) if accept is None else accept}\r\n{extra}\r\n").encode()


# What a hostile upstream answers the proxy's upgrade with, none of which is a WebSocket connection the proxy offered.
HOSTILE_UPGRADE_ANSWERS = {
    "junk": lambda head: b"\x00\x01 no HTTP at all\r\n\r\n",
    "a 101 with a wrong Sec-WebSocket-Accept": lambda head: _upgrade_answer(head, accept="A" * 27 + "="),
    "a 101 with no Sec-WebSocket-Accept": lambda head: (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
    # the proxy offers no compression: a deflate it did not offer would be a way to a compression bomb
    "a 101 with an extension not offered": lambda head: _upgrade_answer(
        head, "Sec-WebSocket-Extensions: permessage-deflate\r\n"),
    "a 101 with a subprotocol not offered": lambda head: _upgrade_answer(head, "Sec-WebSocket-Protocol: evil\r\n"),
    "a 101 with 300 headers": lambda head: b"HTTP/1.1 101 Switching Protocols\r\n" + b"".join(
        b"X-%d: y\r\n" % i for i in range(300)) + b"\r\n",
    "a 101 with a 100 kB header line": lambda head: b"HTTP/1.1 101 Switching Protocols\r\nX: " + b"a" * 100_000 + b"\r\n\r\n",
    "an HTTP/1.0 101": lambda head: _upgrade_answer(head).replace(b"HTTP/1.1", b"HTTP/1.0", 1),
    "a 200 with a body": lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    "a status of 999": lambda head: b"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n",
    # FAILED on the code before: counted `refused` (websockets' "line without CRLF" read as the upstream's end)
    "a 101 in bare-LF lines": lambda head: _upgrade_answer(head).replace(b"\r\n", b"\n"),
}


@pytest.mark.parametrize("answer", list(HOSTILE_UPGRADE_ANSWERS))
async def test_an_upstream_answering_the_upgrade_with_what_was_not_asked_is_a_502_and_a_protocol_error(answer, caplog):
    """An attacker's pass over the proxy's upstream side: junk for an answer, a 101 whose Sec-WebSocket-Accept is wrong
    or missing, an extension (permessage-deflate) or subprotocol the proxy never offered, a head too big, a version or
    status that is no upgrade. The client gets 502, the attempt is counted once (protocol_error), and the log holds
    no traceback."""
    caplog.set_level(logging.INFO)

    async def hostile(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HOSTILE_UPGRADE_ANSWERS[answer](await reader.readuntil(b"\r\n\r\n")))
        await writer.drain()

    status, counted = await refused_through_proxy(hostile, connect_timeout=5, open_timeout=10)
    assert status == 502
    assert counted == {"timeout": 0, "auth_failed": 0, "protocol_error": 1, "refused": 0}, counted
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records), caplog.text


async def test_an_upstream_message_in_millions_of_tiny_fragments_is_the_r12_the_clients_give():
    """The upstream sends one message in 2,000,000 continuation frames of 2 bytes: the proxy's upstream connection
    fails it past websockets' 4,096 fragments, in bounded memory, and the chat's R12 says so, as chatprobe's clients
    say it (the proxy called it a frame over its byte limit)."""
    class Keeps(MetricsSink):
        def __init__(self, *args):
            super().__init__(*args)
            self.results = []

        def chat_finished(self, result):
            self.results.append(result)
            super().chat_finished(result)

    sink = Keeps(ChatMetrics(CollectorRegistry()), "up", "live")
    live = LiveChats(load_profile("netra"), sink, EXP, "live", 0.2)
    async with raw(fragments(2)) as upstream:
        server = await start_proxy(Proxy(f"ws://127.0.0.1:{upstream.port}", live), "127.0.0.1", 0)
        try:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
            async with websockets.asyncio.client.connect(url, open_timeout=5, close_timeout=2) as user:
                await user.recv()  # the welcome
                await user.send(json.dumps({"type": "user_message", "payload": {"content": "hi", "message_id": "m1"}}))
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    async with asyncio.timeout(10):
                        while True:
                            await user.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1014, closed.value
            await until(lambda: bool(sink.results))
        finally:
            server.close()
    (result,) = sink.results
    assert [v.reason for v in result.violations if v.rule.value == "R12"] == [
        "malformed frame: message in more than 4096 fragments"], result.violations


@pytest.mark.parametrize("broken", list(BROKEN_FRAMES))
async def test_an_upstream_frame_that_breaks_the_protocol_is_the_r12_the_clients_give_and_the_client_is_told(
        broken, tmp_path):
    """The upstream sends a frame no server may send (text that is not UTF-8, a reserved bit or opcode, a masked
    frame, a control frame over 125 bytes or fragmented, a close code or reason that is none). The proxy fails that
    connection, and: the chat's R12 says why, as chatprobe's clients say it (it was judged lost mid-run with no word
    of why); the user is told the upstream misbehaved (1014), never a clean 1000; `check` of the proxy's recording
    gives the same R12."""
    from harness.offline import check_files
    from harness.recorder import Recorder

    written, detail = BROKEN_FRAMES[broken]

    class Keeps(MetricsSink):
        def __init__(self, *args):
            super().__init__(*args)
            self.results = []

        def chat_finished(self, result):
            self.results.append(result)
            super().chat_finished(result)

    sink = Keeps(ChatMetrics(CollectorRegistry()), "up", "live")
    # Parked when the proxy fails the connection (text that is not UTF-8: after websockets' 2 s close timeout), then
    # judged at its deadline.
    live = LiveChats(load_profile("netra"), sink, SHORT, "live", 0.2, Recorder(tmp_path / "rec", keep_all=False))
    async with raw(breaks_framing(written)) as upstream:
        server = await start_proxy(Proxy(f"ws://127.0.0.1:{upstream.port}", live), "127.0.0.1", 0)
        try:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
            async with websockets.asyncio.client.connect(url, open_timeout=5, close_timeout=2) as user:
                await user.recv()  # the welcome
                await user.send(json.dumps({"type": "user_message", "payload": {"content": "hi", "message_id": "m1"}}))
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    async with asyncio.timeout(10):
                        while True:
                            await user.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1014, closed.value
            assert detail in closed.value.rcvd.reason
            await until(lambda: not live.open)  # the connection is done with (its chat parked for a resume)
            await until(lambda: sink.results, 30)  # judged at its deadline, no resume following
        finally:
            server.close()
    (result,) = sink.results
    assert [v.reason for v in result.violations if v.rule.value == "R12"] == [f"malformed frame: {detail}"], \
        result.violations
    (recording,) = list((tmp_path / "rec").glob("*.jsonl"))
    (run,) = check_files([recording], load_profile("netra"))
    (chat,) = run.results
    assert [v.reason for v in chat.violations if v.rule.value == "R12"] == [f"malformed frame: {detail}"], \
        chat.violations


@pytest.mark.parametrize("offered", ["jwt.X x", "jwt/X", "jwt.\u00e4X"])
async def test_a_clients_malformed_subprotocol_is_its_own_bad_request_not_the_upstreams_error(offered):
    """Refused by websockets' own check of the upgrade, before any upstream connection, with its reason (the proxy's
    own 400 for it, after that check, could never be reached and is gone)."""
    sim, server, metrics, live, target = await setup()
    try:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.asyncio.client.connect(target.url, additional_headers={"Sec-WebSocket-Protocol": offered},
                                                    open_timeout=10)
        assert refused.value.response.status_code == 400
        assert b"invalid Sec-WebSocket-Protocol header" in refused.value.response.body
        labels = dict(target="agentsim", source="live")
        assert sample(metrics, "chatprobe_proxy_refused_connections_total", reason="bad_request", **labels) == 1
        assert sample(metrics, "chatprobe_connections_total", result="protocol_error", scenario="live", **labels) == 0
    finally:
        server.close()
        await sim.stop()


def test_who_a_connection_is_counts_every_credential_a_client_can_send():
    """Users who authenticate by a subprotocol or the query string are told apart (they had one identity, so one
    could resume another's run); a parameter that carries no credential changes nothing."""
    from monitors.proxy import credentials_identity

    none = credentials_identity({})
    assert credentials_identity({}, ["jwt.userAtoken123"]) != credentials_identity({}, ["jwt.userBtoken456"]) != none
    assert credentials_identity({}, [], "/ws?access_token=aaaa1111") != credentials_identity({}, [], "/ws?access_token=bbbb2222")
    assert credentials_identity({}, [], "/ws?t=8fK2qLz9Xw4mRt7B") != credentials_identity({}, [], "/ws?t=Zq81LmNw0Pe5Rt3Y")
    same = credentials_identity({"Authorization": "Bearer x1y2z3w4"}, ["jwt.userAtoken123"], "/ws?v=2&lang=en")
    assert same == credentials_identity({"authorization": "Bearer x1y2z3w4"}, ["jwt.userAtoken123"], "/ws?v=3")



def test_only_what_reads_as_a_credential_becomes_a_connections_secret():
    """A subprotocol's words and a plain query value are no secrets: made secrets they were erased from every
    recorded frame (AG-UI's `messages` key with them), and `chatprobe check` then saw schema failures."""
    from monitors.proxy import credentials_of

    secrets_ = credentials_of({}, ["chatapp.messages.v1", "base64url.bearer.authorization.k8s.io.eyBmZk93Tq1x2Lp"],
                              "/ws?view=conversation&access_token=plainword&t=8fK2qLz9Xw4mRt7B")
    assert "messages" not in secrets_ and "conversation" not in secrets_ and "chatapp.messages.v1" not in secrets_
    assert {"eyBmZk93Tq1x2Lp", "8fK2qLz9Xw4mRt7B"} <= set(secrets_)
    # a plain word is no secret even under a credential-like name (`session_type=assistant` erased AG-UI's roles)
    assert credentials_of({}, [], "/ws?session_type=assistant&auth_mode=anonymous&keyword=messages") == ()
    assert credentials_of({}, [], "/ws?x=1;token=s3cr3tvalue99") == ("s3cr3tvalue99",)


def test_runs_the_server_carries_on_after_the_clients_are_counted_started_as_well_as_finished(tmp_path):
    """Follow-up runs on one stream (parentRunId) are reported as chats of their own and counted in the chat the
    client asked for: chats_in_flight never goes negative and the counters add up."""
    from pathlib import Path

    import harness.profiles as profiles_module
    from harness.profiles import load_profile as load

    source = (Path(profiles_module.__file__).with_suffix("") / "netra.yaml").read_text()
    profile_file = tmp_path / "netra_parent.yaml"
    profile_file.write_text(source.replace("  run_id: [run_id]\n", "  run_id: [run_id]\n  parent_run_id: [parent_run_id]\n"))
    profile = load(str(profile_file))
    metrics = ChatMetrics(CollectorRegistry())
    live = LiveChats(profile, MetricsSink(metrics, "up", "live"), EXP, "live", 0.1)
    conn = live.connection("id")
    conn.client_frame(json.dumps(profile.build_request(content="hi", thread_id="t1", run_id="r0", message_id="m1")), 0.0)

    def event(kind: str, **ids: str) -> None:
        conn.server_frame(json.dumps({"type": kind, "payload": {"thread_id": "t1", **ids}}), 0.0)

    event("agent_started", run_id="r0")
    event("agent_completed", run_id="r0")
    for i in range(1, 6):
        event("agent_started", run_id=f"r{i}", parent_run_id=f"r{i - 1}")
        event("agent_completed", run_id=f"r{i}")
    conn.judge_due(5.0)
    conn.closed(5.0, by_client=True)
    labels = dict(target="up", scenario="live", source="live")
    judged = sum(sample(metrics, "chatprobe_chats_total", outcome=o, **labels)
                 for o in ("passed", "failed", "incomplete", "error"))
    # One chat the client asked for; the five runs the server added count in it (checker.fold_further).
    assert judged == 1 and sample(metrics, "chatprobe_chats_in_flight", **labels) == 0


async def test_the_proxy_says_when_record_could_not_write_a_connections_frames(tmp_path, caplog):
    # A connection's file full (here 4 KiB): its frames past it are not written (the file says where). `chatprobe run`
    # warns in its summary; the proxy logs it (at most once a minute, the rest at its stop).
    from harness.recorder import Recorder

    secret = secrets.token_urlsafe(32)
    sim = AgentSim(SimConfig(port=0, jwt_secret=secret, think=0.001, tool_latency=0.001, seed=5))
    await sim.start()
    live = WatchedChats(load_profile("netra"), MetricsSink(ChatMetrics(CollectorRegistry()), "agentsim", "live"),
                        EXP, "live", 0.05, Recorder(tmp_path / "rec", keep_all=True, max_file_bytes=4096))
    server = await start_proxy(Proxy(sim.url.rsplit("/", 1)[0], live), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    target = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile("netra"), name="proxy",
                    tokens=TokenProvider(jwt_secret=secret))
    caplog.set_level(logging.WARNING, logger="chatprobe.proxy")
    try:
        session = Session(target, "alice", "user", Recorder_())
        for _ in range(3):
            assert (await session.chat("What is 2 * 2?", EXP)).outcome is Outcome.PASSED
        await session.close()
        await until(lambda: live.closed_count == 1)
    finally:
        server.close()
        await sim.stop()
    [line] = [r.getMessage() for r in caplog.records if "were not recorded" in r.getMessage()]
    assert "of 1 connection(s)" in line and "4,096 bytes" in line
    live.say_dropped(0.0)  # said once: nothing more to say at the stop
    assert sum("were not recorded" in r.getMessage() for r in caplog.records) == 1


# -- --record of a large frame: its scrubbing costs no Python call per escape, per string or per run of a secret --

_SCRUBBING = ("harness/redact.py", "harness/recorder.py", "/json/__init__.py", "/json/encoder.py", "/json/decoder.py")


class PythonCalls:
    """A profile hook counting the Python calls into the scrubbing code (harness/redact.py, harness/recorder.py and the
    json package's Python parts) while it is set: how much Python work a recorded frame costs the proxy's event loop,
    measured without a clock (the same count on any machine, however loaded)."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    def __call__(self, frame, event, arg) -> None:
        if event == "call" and frame.f_code.co_filename.endswith(_SCRUBBING):
            self.calls[frame.f_code.co_name] += 1


async def recorded_through_proxy(tmp_path, upstream_handler, exchanges, headers=None):
    """A user, through a recording proxy in front of an upstream served by `upstream_handler`, sends each (sent,
    answer) of `exchanges` and receives its answer, the Python calls into the scrubbing code counted meanwhile
    (PythonCalls); returns those counts and the connection's recording (the one file)."""
    from harness.recorder import Recorder

    upstream = await websockets.asyncio.server.serve(upstream_handler, "127.0.0.1", 0, max_size=None,
                                                     ping_interval=None)
    live = WatchedChats(load_profile("netra"), MetricsSink(ChatMetrics(CollectorRegistry()), "up", "live"), EXP,
                        "live", 0.05, Recorder(tmp_path / "rec", keep_all=True))
    server = await start_proxy(Proxy(f"ws://127.0.0.1:{upstream.sockets[0].getsockname()[1]}", live), "127.0.0.1", 0)
    hook = PythonCalls()
    try:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        async with websockets.asyncio.client.connect(url, additional_headers=headers, max_size=None,
                                                     ping_interval=None) as user:
            previous = sys.getprofile()
            sys.setprofile(hook)
            try:
                for sent, answer in exchanges:
                    await user.send(sent)
                    async with asyncio.timeout(60):
                        assert await user.recv() == answer  # through the proxy and back, recorded both ways
            finally:
                sys.setprofile(previous)
        await until(lambda: live.closed_count == 1)
    finally:
        server.close()
        upstream.close()
    (path,) = (tmp_path / "rec").glob("*.jsonl")
    return hook.calls, path


async def echo(ws):
    with contextlib.suppress(websockets.ConnectionClosed):
        async for message in ws:
            await ws.send(message)


async def test_recording_a_large_frame_costs_no_python_call_per_escape_per_string_or_per_run(tmp_path):
    """`--record` scrubs every frame on the proxy's event loop. A CJK answer as `json.dumps` writes it (every
    character a `\\uXXXX` escape) that echoes the user's token once made a Python call per escape, twice (the
    process's secrets, then the connection's own), and took ~2 s for 4 MB; a frame of strings each holding a run of
    the token had every run followed and every string written back through json.dumps, and the parts of the frame
    (its strings, a batch at a time) each had the whole bound on that work again: ~3 s for 4 MB, every other user's
    chat stalled meanwhile. The recording still shows neither frame's token, and both frames as JSON, the rest intact."""
    from harness.redact import REDACTED

    token = secrets.token_urlsafe(32)
    answer = "".join(chr(0x4E00 + i * 7919 % 3000) for i in range(150_000))
    frames = [json.dumps({"type": "partial_result", "data": {"text": f"{answer} (key={token} is invalid)"}}),
              json.dumps([f"{token[:10]}{i}" for i in range(60_000)])]
    calls, path = await recorded_through_proxy(tmp_path, echo, [(f, f) for f in frames],
                                               {"Authorization": f"Bearer {token}"})
    # 150,000 escapes and 60,000 strings, each recorded twice: a Python call per escape or per string is 300,000 or
    # more (it was 2.1 million); what is left is bounded by the frame's budget of grown runs (redact.Budget).
    assert sum(calls.values()) < 100_000, calls.most_common(6)
    recorded = [json.loads(line)["frame"] for line in path.read_text().splitlines() if '"frame"' in line]
    assert len(recorded) == 4
    for text in recorded:
        assert REDACTED in text and not any(token[i:i + 8] in text for i in range(len(token) - 7))
    assert json.loads(recorded[0])["data"]["text"] == json.loads(recorded[1])["data"]["text"] == \
        f"{answer} (key={REDACTED} is invalid)"
    assert all(len(json.loads(text)) == 60_000 for text in recorded[2:])


async def test_recording_a_frame_of_many_base64_like_ids_costs_no_python_call_per_id(tmp_path):
    """A JWT inside base64 text is redacted whole: each run of base64 characters holding one of the marks "eyJ" reads
    as was decoded. Every run of 16 or more such characters was handed to a Python function to look for the marks,
    so a frame of ids (hashes, random tokens: 240,000 of them in 4 MB) with one mark anywhere cost a Python call per
    id, each way: over a second of the proxy's event loop, every other user's chat stalled. The marks are found
    first now, and only their runs are looked at. The base64 JWT is still redacted, every id kept."""
    import base64

    from harness import redact
    from harness.redact import REDACTED

    # Secrets other tests of this process registered are matched in every scrub (an id may agree with one for a few
    # characters: a call each), a cost of their own: counted here is what the base64 search costs.
    redact.forget_all()
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
    hidden = base64.b64encode(f"session {jwt} end".encode()).decode()
    ids = [secrets.token_hex(8) for _ in range(240_000)]  # (hex: no "eyJ" of a plain JWT among them)
    frame = json.dumps({"type": "partial_result", "data": {"text": " ".join(ids[:1000] + [hidden] + ids[1000:])}})
    calls, path = await recorded_through_proxy(tmp_path, echo, [(frame, frame)])
    # 240,000 ids recorded twice (each scrubbed as the frame's text and as its string): a call per id was a million.
    assert sum(calls.values()) < 10_000, calls.most_common(6)
    recorded = [json.loads(line)["frame"] for line in path.read_text().splitlines() if '"frame"' in line]
    assert len(recorded) == 2
    for text in recorded:
        assert json.loads(text)["data"]["text"] == " ".join(ids[:1000] + [REDACTED] + ids[1000:])


async def test_recording_a_frame_of_escapes_echoing_the_token_often_decodes_each_run_once(tmp_path):
    """A hostile upstream whose frame is one run of `\\uXXXX` escapes (every character escaped, the user's token in it
    hundreds of times), or one run of %-escapes alike: each place the token was found in the decoded run was mapped
    back into it by decoding the whole run again from its start, twice a place (a 2 MB %-run held the proxy's event
    loop two minutes, growing as the square of the frame). Each run is decoded once now, and measured in strides;
    the recording shows no token, escaped or not."""
    from urllib.parse import unquote

    from harness.redact import REDACTED

    token = secrets.token_urlsafe(24)
    echoed = ("\u4e2d\U0001f600" + token) * 300
    escaped = json.dumps(echoed)[1:-1].replace(token, "".join(f"\\u{ord(c):04x}" for c in token))
    percent = "".join(f"%{b:02X}" for b in (("\u4e2d\U0001f600" * 20 + token) * 300).encode())
    frames = [f'{{"type": "partial_result", "data": {{"text": "{escaped}"}}}}',
              f'{{"type": "partial_result", "data": {{"url": "{percent}"}}}}']

    async def hostile(ws):
        with contextlib.suppress(websockets.ConnectionClosed):
            for frame in frames:
                await ws.recv()
                await ws.send(frame)
            await ws.wait_closed()

    calls, path = await recorded_through_proxy(tmp_path, hostile, [("{}", frame) for frame in frames],
                                               {"Authorization": f"Bearer {token}"})
    # A run is decoded once a decoding (the frame, then its strings: a handful); it was twice per token found in it.
    assert calls["_json_escape"] + calls["_percent_run"] < 100, calls.most_common(6)
    recorded = [json.loads(line)["frame"] for line in path.read_text().splitlines() if '"dir": "recv"' in line]
    texts = [json.loads(recorded[0])["data"]["text"], unquote(json.loads(recorded[1])["data"]["url"])]
    for text in texts:
        assert text.count(REDACTED) == 300 and token[:8] not in text and token[-8:] not in text


async def test_recording_a_legal_frame_full_of_short_escapes_costs_no_python_call_per_escape(tmp_path):
    """A legal 4 MB answer of prose full of quotes, backslashes and emoji, as `json.dumps` writes it (`\\"`, `\\\\`,
    `\\ud83d\\ude00`: 800,000 escapes), cost a Python call per escape to decode before it was searched for
    secrets, each way through the proxy: seconds of its one event loop a frame on a loaded machine, every other user's
    chat stalled meanwhile (a hostile client may send such frames, up to --max-size). The escapes are decoded all at
    once now; the token it echoes (plain, and with its characters escaped) is still redacted, the rest intact."""
    from harness.redact import REDACTED

    token = secrets.token_urlsafe(32)
    disguised = "".join(f"\\u{ord(c):04x}" if i % 3 else c for i, c in enumerate(token))
    words = ['"', "\\", "\U0001f600", "\U0001f44d\U0001f3fd", ' he said "hi" ', "C:\\dir\\", "\u00e9", "/"]
    answer = "".join(words[i * 7 % len(words)] for i in range(450_000))
    head = json.dumps({"type": "partial_result", "data": {"text": f"{answer} (key={token} is invalid)"}})
    frame = head[:-3] + f" {disguised}" + head[-3:]  # the token again, its characters \\u-escaped but each third
    assert len(frame) > 4_000_000 and frame.count("\\") > 900_000
    calls, path = await recorded_through_proxy(tmp_path, echo, [(frame, frame)],
                                               {"Authorization": f"Bearer {token}"})
    # 800,000 escapes each way: a Python call per escape (or per run of them) was over a million.
    assert sum(calls.values()) < 5_000, calls.most_common(6)
    recorded = [json.loads(line)["frame"] for line in path.read_text().splitlines() if '"frame"' in line]
    assert len(recorded) == 2
    for text in recorded:
        assert not any(token[i:i + 8] in text for i in range(len(token) - 7))
        # (the space before the escaped token is redacted with it: "Bearer <token>" is one of the user's secrets)
        assert json.loads(text)["data"]["text"] in (f"{answer} (key={REDACTED} is invalid){REDACTED}",
                                                    f"{answer} (key={REDACTED} is invalid) {REDACTED}")


@pytest.mark.parametrize("token", ["Zx9k%41Q7mP2", "Zx9kQ7\\mP2vR"])
async def test_a_token_holding_a_percent_escape_or_a_backslash_escaped_by_the_server_is_not_recorded(tmp_path, token):
    """A user's token holding `%41` or a backslash, echoed by a hostile upstream with every character a `\\uXXXX`
    escape (the backslash as `\\\\`): the recording's frame read back as JSON held the token whole. Decoded to find
    disguised secrets, the text read `Zx9kAQ7mP2` (the token's own %-escape decoded too) or `Zx9kQ7mP2vR` (its
    backslash taken for an escape's doubled one): neither the token nor a literal form of it, nor a run of 8 of
    either, so the frame was kept as it came. What the token reads as decoded is looked for too now."""
    from harness.recorder import Recorder
    from harness.redact import REDACTED

    escaped = "".join("\\\\" if c == "\\" else f"\\u{ord(c):04x}" for c in token)
    frame = f'{{"type": "partial_result", "data": {{"text": "key {escaped} end"}}}}'
    assert json.loads(frame)["data"]["text"] == f"key {token} end"

    async def hostile(ws):
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.recv()
            await ws.send(frame)
            await ws.wait_closed()

    upstream = await websockets.asyncio.server.serve(hostile, "127.0.0.1", 0, ping_interval=None)
    live = WatchedChats(load_profile("netra"), MetricsSink(ChatMetrics(CollectorRegistry()), "up", "live"), EXP,
                        "live", 0.05, Recorder(tmp_path / "rec", keep_all=True))
    server = await start_proxy(Proxy(f"ws://127.0.0.1:{upstream.sockets[0].getsockname()[1]}", live), "127.0.0.1", 0)
    try:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        async with websockets.asyncio.client.connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                                     ping_interval=None) as user:
            await user.send("{}")
            async with asyncio.timeout(10):
                assert await user.recv() == frame
        await until(lambda: live.closed_count == 1)
    finally:
        server.close()
        upstream.close()
    (path,) = (tmp_path / "rec").glob("*.jsonl")
    (recorded,) = [json.loads(line)["frame"] for line in path.read_text().splitlines() if '"dir": "recv"' in line]
    text = json.loads(recorded)["data"]["text"]
    assert token not in text and text.endswith(f"{REDACTED} end"), text


async def test_a_basic_credentials_password_echoed_by_the_server_is_not_recorded(tmp_path):
    """A user who signs in with HTTP Basic sends `Authorization: Basic base64(user:password)`. Its value and the
    base64 were the connection's secrets, never what they encode: a server that echoed the password (a debug
    "signed in as alice:…" event, an error that quotes what it was given) had it written to --record in the clear."""
    from harness.recorder import Recorder
    from harness.redact import REDACTED

    password = "Tr0ub4dor-" + secrets.token_hex(4)

    async def hostile(ws):
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.recv()
            await ws.send(json.dumps({"type": "error_message", "payload": {
                "message": f"signed in as alice:{password}; the password {password} has expired"}}))
            await ws.wait_closed()

    upstream = await websockets.asyncio.server.serve(hostile, "127.0.0.1", 0, ping_interval=None)
    live = WatchedChats(load_profile("netra"), MetricsSink(ChatMetrics(CollectorRegistry()), "up", "live"), EXP,
                        "live", 0.05, Recorder(tmp_path / "rec", keep_all=True))
    server = await start_proxy(Proxy(f"ws://127.0.0.1:{upstream.sockets[0].getsockname()[1]}", live), "127.0.0.1", 0)
    basic = base64.b64encode(f"alice:{password}".encode()).decode()
    try:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        async with websockets.asyncio.client.connect(url, additional_headers={"Authorization": f"Basic {basic}"},
                                                     ping_interval=None) as user:
            await user.send(json.dumps({"type": "user_message", "payload": {"content": "hi"}}))
            async with asyncio.timeout(10):
                assert password in await user.recv()  # the user sees what the server sent
        await until(lambda: live.closed_count == 1)
    finally:
        server.close()
        upstream.close()
    (path,) = (tmp_path / "rec").glob("*.jsonl")
    text = path.read_text()
    assert password not in text and password[:8] not in text and basic not in text
    assert f"signed in as {REDACTED}; the password {REDACTED} has expired" in json.loads(text.splitlines()[-2])["frame"]


async def test_a_client_with_kilobytes_of_credentials_is_proxied_but_not_recorded(tmp_path, caplog):
    """--record builds matchers for each connection's own credentials (every form, every run of each), which cost
    in proportion to their size: a client that sent 8 KB each of Authorization, Cookie and a subprotocol held the
    proxy's event loop over a second per connection (every other user's chat waited) and kept ~20 MiB for it while
    it was open. Past MAX_RECORDED_CREDENTIALS characters such a connection is forwarded and judged, not recorded
    (a line says so); a connection with a usual token is recorded as ever."""
    from harness.recorder import Recorder
    from monitors import proxy

    async def echo(ws):
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in ws:
                await ws.send(message)

    upstream = await websockets.asyncio.server.serve(echo, "127.0.0.1", 0, ping_interval=None)
    live = WatchedChats(load_profile("netra"), MetricsSink(ChatMetrics(CollectorRegistry()), "up", "live"), EXP,
                        "live", 0.05, Recorder(tmp_path / "rec", keep_all=True))
    server = await start_proxy(Proxy(f"ws://127.0.0.1:{upstream.sockets[0].getsockname()[1]}", live), "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
    hostile = {"Authorization": "Bearer " + secrets.token_urlsafe(6000),
               "Cookie": "; ".join(f"c{i}={secrets.token_urlsafe(60)}" for i in range(90))}
    built = collections.Counter()

    def count_matchers(frame, event, arg):
        if event == "c_call" and getattr(arg, "__name__", "") == "add_word":
            built["add_word"] += 1

    try:
        for headers in (hostile, {"Authorization": "Bearer " + secrets.token_urlsafe(32)}):
            previous = sys.getprofile()
            sys.setprofile(count_matchers if headers is hostile else previous)
            try:
                async with websockets.asyncio.client.connect(url, additional_headers=headers,
                                                             ping_interval=None) as user:
                    await user.send('{"type": "ping"}')
                    async with asyncio.timeout(10):
                        assert await user.recv() == '{"type": "ping"}'  # forwarded either way
            finally:
                sys.setprofile(previous)
        await until(lambda: live.closed_count == 2)
    finally:
        server.close()
        upstream.close()
    assert sum(len(v) for v in hostile.values()) > getattr(proxy, "MAX_RECORDED_CREDENTIALS", 8 * 1024)
    assert built["add_word"] == 0  # no matcher built for the hostile connection's credentials (it was ~40,000 words)
    (path,) = (tmp_path / "rec").glob("*.jsonl")  # the usual one's recording only
    assert "ping" in path.read_text()
    assert "not recorded: their credentials" in caplog.text


async def test_credentials_of_exactly_max_recorded_credentials_are_recorded_and_held_one_more_is_not(tmp_path,
                                                                                                  caplog):
    """The bound is MAX_RECORDED_CREDENTIALS characters inclusive, for both of its uses: a connection whose credentials
    come to exactly that many is recorded, and its credentials are held in the process's pool (an upstream that tells
    them to another user is scrubbed from that user's recording); one character more and the connection is not
    recorded (a line says so). An Authorization of scheme `Token` counts the header and its credential: 6 + 2n."""
    from harness import redact
    from harness.recorder import Recorder
    from monitors import frontdoor

    bound = frontdoor.MAX_RECORDED_CREDENTIALS
    assert bound % 2 == 0
    told: list[str] = []

    async def tells_the_first_token(ws):
        told.append(ws.request.headers["Authorization"].partition(" ")[2])
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in ws:
                await ws.send(json.dumps({"type": "ping", "said": message, "first": told[0]}))

    upstream = await websockets.asyncio.server.serve(tells_the_first_token, "127.0.0.1", 0, ping_interval=None,
                                                     max_size=None)
    live = WatchedChats(load_profile("netra"), MetricsSink(ChatMetrics(CollectorRegistry()), "up", "live"), EXP,
                        "live", 0.05, Recorder(tmp_path / "rec", keep_all=True))
    server = await start_proxy(Proxy(f"ws://127.0.0.1:{upstream.sockets[0].getsockname()[1]}", live), "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
    # A token of letters only that no shape rule redacts on its own (a random token might be): only the pool does.
    first = ("Token", secrets.token_urlsafe(bound)[:(bound - 6) // 2])
    over = ("Bearer", secrets.token_urlsafe(bound)[:(bound - 6) // 2])
    usual = ("Bearer", secrets.token_urlsafe(32))
    assert sum(map(len, redact.credentials_of([("Authorization", " ".join(first))], []))) == bound
    assert sum(map(len, redact.credentials_of([("Authorization", " ".join(over))], []))) == bound + 1
    try:
        async with websockets.asyncio.client.connect(url, additional_headers={"Authorization": " ".join(first)},
                                                     ping_interval=None, max_size=None) as at_bound:
            for scheme, token in (over, usual):
                async with websockets.asyncio.client.connect(url, additional_headers={"Authorization": f"{scheme} "
                                                             f"{token}"}, ping_interval=None, max_size=None) as user:
                    await user.send(json.dumps({"type": "ping", "who": scheme}))
                    async with asyncio.timeout(10):
                        assert json.loads(await user.recv())["first"] == first[1]  # forwarded either way
            await at_bound.send(json.dumps({"type": "ping", "who": "at-bound"}))
            async with asyncio.timeout(10):
                assert json.loads(await at_bound.recv())["first"] == first[1]
        await until(lambda: live.closed_count == 3)
    finally:
        server.close()
        upstream.close()
    recorded = [p.read_text() for p in (tmp_path / "rec").glob("*.jsonl")]
    # The one at the bound and the usual one; the one over it not.
    assert sorted("at-bound" in r for r in recorded) == [False, True], [r[:300] for r in recorded]
    (usual_rec,) = [r for r in recorded if "at-bound" not in r]
    assert "Bearer" in usual_rec  # (the usual user's own frame: its `who`)
    # The first user's credentials, held in the pool, scrubbed from the usual user's recording too.
    assert all(first[1] not in r and first[1][:64] not in r for r in recorded), "a held credential stood in clear"
    assert "not recorded: their credentials" in caplog.text


async def test_a_user_who_leaves_a_blank_screen_after_the_first_event_limit_is_an_r9():
    """The server takes the message and shows nothing: the user stares at a blank screen past the first-event limit
    and closes the tab. That is the chat the limit is for (an R9, failed), not a chat the user chose to leave while
    the server was on time; one who leaves before the limit, the server silent as yet, is abandoned and passed. It
    was passed either way."""
    limit = 1.0

    async def silent(ws):
        await ws.send(json.dumps({"type": "connection_established", "data": {"user_id": "u"}}))
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.recv()  # the message
            await ws.wait_closed()

    up = await websockets.asyncio.server.serve(silent, "127.0.0.1", 0, ping_interval=None)
    sink = Counts(ChatMetrics(CollectorRegistry()), "up", "live")
    exp = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=30.0, first_event_limit=limit)
    live = LiveChats(load_profile("netra"), sink, exp, "live", 0.1)
    server = await start_proxy(Proxy(f"ws://127.0.0.1:{up.sockets[0].getsockname()[1]}", live), "127.0.0.1", 0)
    try:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        for i, wait in enumerate((limit + 0.3, 0.0)):
            ws = await websockets.asyncio.client.connect(url, open_timeout=5)
            await ws.recv()  # the welcome
            await ws.send(json.dumps({"type": "user_message", "payload": {"content": "hi", "message_id": f"m{i}"}}))
            await asyncio.sleep(wait)  # wait-ok: the user looking at a blank screen this long is what is judged
            await ws.close()
            await until(lambda n=i + 1: len(sink.results) == n)
    finally:
        server.close()
        up.close()
    late, early = sink.results
    assert sink.abandoned == 2
    assert late.outcome is Outcome.FAILED and [v.rule.value for v in late.violations] == ["R9"], late.violations
    assert "no event within the 1s limit" in late.violations[0].reason
    assert early.outcome is Outcome.PASSED and not early.violations, early.violations


@contextlib.asynccontextmanager
async def _behind_proxy(handler, recorder=None, exp=EXP, sink=None):
    """A websockets upstream served by `handler`, a proxy in front of it judging into fresh metrics (and recording
    into `recorder`): (the metrics, the LiveChats, the proxy's ws:// URL)."""
    upstream = await websockets.asyncio.server.serve(handler, "127.0.0.1", 0)
    metrics = ChatMetrics(CollectorRegistry())
    live = LiveChats(load_profile("netra"), (sink or MetricsSink)(metrics, "up", "live"), exp, "live", 0.2, recorder)
    server = await start_proxy(Proxy(f"ws://127.0.0.1:{upstream.sockets[0].getsockname()[1]}", live), "127.0.0.1", 0)
    try:
        yield metrics, live, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
    finally:
        server.close()
        upstream.close()


@pytest.mark.parametrize("code", [1008, 4401, 4403])
async def test_an_upstream_that_accepts_then_closes_with_1008_before_any_frame_is_counted_auth_failed(code):
    """A server that reads the credentials after the upgrade and refuses them with a bare close 1008 (policy
    violation), or 4401/4403 (the application codes for unauthorized and forbidden, graphql-ws's), no frame first:
    the proxy passes the close on and counts the attempt auth_failed, as `run` counts it, not protocol_error."""
    async def refuses(ws) -> None:
        await ws.close(code, "unauthorized")

    async with _behind_proxy(refuses) as (metrics, live, url):
        async with asyncio.timeout(20):
            async with websockets.asyncio.client.connect(url, open_timeout=10) as ws:
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
            assert ws.close_code == code
            await until(lambda: not live.open)
        counted = {result: sample(metrics, "chatprobe_connections_total", result=result, target="up", scenario="live",
                                  source="live") for result in ("ok", "auth_failed", "protocol_error")}
        assert counted == {"ok": 0, "auth_failed": 1, "protocol_error": 0}, counted


@pytest.mark.parametrize("code", [1008, 4401, 4403])
async def test_a_client_that_closes_with_an_auth_code_before_the_welcome_is_no_refusal_of_its_credentials(code):
    """A user's client that closes (with 1008, 4401 or 4403) before the upstream said anything, and an upstream that
    answers the close with the code it got (RFC 6455 5.5.1; websockets does): the client left, its attempt `ok`, as for
    any other code it closes with. FAILED on the code before: counted `auth_failed`, the server refusing credentials
    (an auth outage on the dashboard), whatever the client closed with first."""
    async def silent(ws) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.recv()  # no frame ever: the client's close comes, answered with its own code

    async with _behind_proxy(silent) as (metrics, live, url):
        async with asyncio.timeout(20):
            async with websockets.asyncio.client.connect(url, open_timeout=10) as ws:
                await ws.close(code, "bye")
            assert ws.close_code == code  # (the upstream's answer, passed on)
            await until(lambda: not live.open)
        counted = {result: sample(metrics, "chatprobe_connections_total", result=result, target="up", scenario="live",
                                  source="live") for result in ("ok", "auth_failed", "protocol_error")}
        assert counted == {"ok": 1, "auth_failed": 0, "protocol_error": 0}, counted


@pytest.mark.parametrize("code", [1008, 4401, 4403])
async def test_a_chat_whose_upstream_closes_refusing_the_credentials_before_any_frame_is_the_clients_doing(code):
    """A user's client that sends its message at once (no welcome awaited) and an upstream that reads it and closes
    with 1008/4401/4403 before any frame: the credentials refused, as an AUTH_FAILED frame refuses them, so the chat
    is an `auth_failed` error counted as the client's doing (chatprobe_client_rejections_total), not one of the
    server's outcomes. It was held for a resend, then judged `incomplete` against the server."""
    async def refuses(ws) -> None:
        await ws.recv()
        await ws.close(code, "unauthorized")

    async with _behind_proxy(refuses, exp=SHORT) as (metrics, live, url):
        async with asyncio.timeout(20):
            async with websockets.asyncio.client.connect(url, open_timeout=10) as ws:
                await ws.send(json.dumps({"type": "user_message", "payload": {"content": "hi", "thread_id": "t1",
                                                                                "message_id": "m1"}}))
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
            assert ws.close_code == code
            labels = {"target": "up", "scenario": "live", "source": "live"}
            await until(lambda: sample(metrics, "chatprobe_client_rejections_total", **labels) == 1)
        assert sum(sample(metrics, "chatprobe_chats_total", outcome=o, **labels)
                   for o in ("passed", "failed", "incomplete", "error")) == 0
        assert sample(metrics, "chatprobe_connections_total", result="auth_failed", **labels) == 1


async def test_an_upstream_that_rejects_a_message_then_closes_1008_refuses_no_credentials():
    """A user's client that sends two messages at once (no welcome awaited) and an upstream that rejects the first
    (INVALID_MESSAGE, naming it) and then closes with 1008: the server spoke before its close, which is about that
    message, not the credentials. The first chat is the client's doing (rejected); the second, cut before any event,
    is the server's (`incomplete`, held for a resend that never came), as `run` and `check` judge it. FAILED on the code
    before: the second chat `auth_failed`, counted as the client's doing too (two client rejections)."""
    async def rejects(ws) -> None:
        first = json.loads(await ws.recv())
        await ws.recv()
        await ws.send(json.dumps({"type": "error_message", "error_code": "INVALID_MESSAGE", "error_message": "no",
                                  "message_id": first["payload"]["message_id"]}))
        await ws.close(1008, "invalid message")

    labels = {"target": "up", "scenario": "live", "source": "live"}
    async with _behind_proxy(rejects, exp=SHORT) as (metrics, live, url):
        async with asyncio.timeout(30):
            async with websockets.asyncio.client.connect(url, open_timeout=10) as ws:
                for n in (1, 2):
                    await ws.send(json.dumps({"type": "user_message", "payload": {
                        "content": "hi", "thread_id": f"t{n}", "message_id": f"m{n}"}}))
                with contextlib.suppress(websockets.ConnectionClosed):
                    while True:
                        await ws.recv()
            assert ws.close_code == 1008
            judged = ("chatprobe_client_rejections_total", {}), ("chatprobe_chats_total", {"outcome": "incomplete"})
            await until(lambda: sum(sample(metrics, name, **more, **labels) for name, more in judged) >= 2, timeout=20)
        assert [sample(metrics, name, **more, **labels) for name, more in judged] == [1, 1]
        assert sample(metrics, "chatprobe_connections_total", result="auth_failed", **labels) == 0
        assert sample(metrics, "chatprobe_connections_total", result="ok", **labels) == 1


async def test_an_upstream_that_drops_the_connection_is_a_drop_for_the_client_too_not_a_clean_close(tmp_path):
    """An upstream that crashes (a TCP reset, no close frame) is dropped for the client as it came: a clean 1000 in its
    place would tell the client the server closed with a handshake (and a client sends again a message that crossed
    such a close, docs/protocol.md, never one cut by a crash). The recording's close record says 1006 too, so that
    `chatprobe check` reads the crash the proxy saw, not a closing handshake."""
    from harness.recorder import Recorder

    async def crashes(ws) -> None:
        await ws.send(json.dumps({"type": "connection_established", "data": {"connection_id": "c", "user_id": "u"}}))
        await ws.recv()
        _reset(ws)

    async with _behind_proxy(crashes, Recorder(tmp_path / "rec", keep_all=True)) as (metrics, live, url):
        async with asyncio.timeout(20):
            async with websockets.asyncio.client.connect(url, open_timeout=10) as ws:
                await ws.recv()
                await ws.send(json.dumps({"type": "user_message", "payload": {"content": "hi", "thread_id": "t1",
                                                                                "message_id": "m1"}}))
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
            assert ws.protocol.close_rcvd is None and ws.close_code == 1006, (ws.close_code, ws.close_reason)
            await until(lambda: not live.open)
    (recording,) = (tmp_path / "rec").glob("*.jsonl")
    (close,) = [r for r in map(json.loads, recording.read_text().splitlines()) if r["dir"] == "close"]
    assert close.get("code") == 1006 and "by" not in close, close


@pytest.mark.parametrize("code", [3000, 4000, 1011])
async def test_an_upstreams_close_code_of_a_registered_or_private_range_reaches_the_client(code):
    """A close code the upstream may send on (1011, IANA's registered 3000-3999: 3000 "unauthorized" of some servers,
    the application's 4000-4999) reaches the client as it came, with its reason: a 1000 in its place tells the client
    all was well."""
    async def closes(ws) -> None:
        await ws.send(json.dumps({"type": "connection_established", "data": {"connection_id": "c", "user_id": "u"}}))
        await ws.close(code, "why")

    async with _behind_proxy(closes) as (metrics, live, url):
        async with asyncio.timeout(20):
            async with websockets.asyncio.client.connect(url, open_timeout=10) as ws:
                await ws.recv()
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
            assert (ws.close_code, ws.close_reason) == (code, "why")


async def test_a_chat_the_server_cuts_while_the_proxy_drains_is_unjudged_not_parked_where_no_resume_can_come():
    """The proxy drains (SIGTERM: its listener closed, so no resume or resend can reach it) and the server cuts a chat
    mid-run (a sidecar's server stopping with it): the chat is counted unjudged (proxy_stopped) at once, as one kept
    for a resume is at the drain's start. Parked instead, it waited for a resume that cannot come, out of every count
    (the drain's start had counted the parked chats already): in flight for good on the dashboard."""
    cut = asyncio.Event()

    async def cuts_mid_run(ws) -> None:
        await ws.send(json.dumps({"type": "connection_established", "data": {"connection_id": "c", "user_id": "u"}}))
        p = json.loads(await ws.recv())["payload"]
        await ws.send(json.dumps({"type": "agent_started", "run_id": "r1", "thread_id": p["thread_id"], "seq": 1,
                                  "user_id": "u", "payload": {"message_id": p["message_id"]}}))
        await cut.wait()
        await ws.close(1001, "going away")

    async with _behind_proxy(cuts_mid_run) as (metrics, live, url):
        labels = dict(target="up", scenario="live", source="live")
        async with asyncio.timeout(20):
            async with websockets.asyncio.client.connect(url, open_timeout=10) as ws:
                await ws.recv()
                await ws.send(json.dumps({"type": "user_message", "payload": {"content": "hi", "thread_id": "t1",
                                                                                "message_id": "m1"}}))
                assert json.loads(await ws.recv())["type"] == "agent_started"
                await until(lambda: sample(metrics, "chatprobe_chats_in_flight", **labels) == 1)
                live.begin_stop()
                cut.set()
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
            await until(lambda: not live.open)
        assert not live.parked
        assert sample(metrics, "chatprobe_chats_unjudged_total", reason="proxy_stopped", **labels) == 1
        assert sample(metrics, "chatprobe_chats_in_flight", **labels) == 0


async def test_a_message_never_sent_again_is_judged_at_its_deadline_as_it_stood_when_its_connection_closed():
    """A chat the server cut before any event, held for its user's resend that never comes: judged at its deadline as
    it stood when its connection closed (`chatprobe check` judges it so), not as it stands at the deadline: no R9 for
    a first-event limit that passed after the close."""
    results = []

    class Kept(MetricsSink):
        def chat_finished(self, result):
            results.append(result)
            super().chat_finished(result)

    async def crashes(ws) -> None:
        await ws.send(json.dumps({"type": "connection_established", "data": {"connection_id": "c", "user_id": "u"}}))
        await ws.recv()
        _reset(ws)

    exp = Expectations(required=frozenset(DEFAULT_REQUIRED), first_event_limit=0.5, deadline=1.0)
    async with _behind_proxy(crashes, exp=exp, sink=Kept) as (metrics, live, url):
        async with asyncio.timeout(20):
            async with websockets.asyncio.client.connect(url, open_timeout=10) as ws:
                await ws.recv()
                await ws.send(json.dumps({"type": "user_message", "payload": {"content": "hi", "thread_id": "t1",
                                                                                "message_id": "m1"}}))
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
            await until(lambda: results)
    [result] = results
    assert result.outcome is Outcome.INCOMPLETE and not result.violations, result.violations
