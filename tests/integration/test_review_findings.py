"""Findings of the review of the day's changes (25b96e1..e5050ec): each test failed on that code and guards its fix.

Every server here is real, on 127.0.0.1; every wait is bounded (asyncio.timeout, the scenario's deadlines)."""
from __future__ import annotations

import asyncio
import json
from typing import Any

from harness.events import Outcome
from harness.profiles import Profile, load_profile
from harness.runner import run_scenario
from harness.targets import Target

from .test_misbehaving_server import quick


def _netra_over_sse() -> Profile:
    """A dialect of the user's own (docs/profiles.md): netra's frames over HTTP POST + SSE, run ids the server's."""
    netra = load_profile("netra")
    return Profile.model_validate({**netra.model_dump(), "name": "netra-sse", "transport": "sse", "path": ""})


class SSEServer:
    """POST → 200 text/event-stream. The first `empty` requests get a stream that ends before any event (a server
    that accepted the message and lost its run); the others a whole netra run."""

    def __init__(self, empty: int = 1) -> None:
        self.empty = empty
        self.posts: list[dict[str, Any]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode().split("\r\n"):
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            body = json.loads(await reader.readexactly(length))
            self.posts.append(body)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
                         b"Connection: close\r\n\r\n")
            if len(self.posts) > self.empty:
                p = body["payload"]
                run = f"srv-run-{len(self.posts)}"
                steps = [("agent_started", {"message_id": p["message_id"]}), ("agent_thinking", {"thought": "t"}),
                         ("tool_executing", {"tool_name": "calc", "tool_call_id": "c1"}),
                         ("tool_completed", {"tool_name": "calc", "tool_call_id": "c1", "result": 1}),
                         ("partial_result", {"content": "x"}), ("agent_completed", {"result": "done"})]
                for seq, (kind, fields) in enumerate(steps, start=1):
                    frame = {"type": kind, "run_id": run, "thread_id": p.get("thread_id"), "seq": seq,
                             "payload": fields}
                    writer.write(f"data: {json.dumps(frame)}\n\n".encode())
            await writer.drain()
        finally:
            writer.close()


async def _run_sse(server: SSEServer, scenario):
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    async with srv:
        port = srv.sockets[0].getsockname()[1]
        target = Target(url=f"http://127.0.0.1:{port}/chat", profile=_netra_over_sse(), name="raw-sse")
        async with asyncio.timeout(15):
            return await run_scenario(scenario, target)


# 1. SSE: a POST the server took (200, an event stream) whose stream ended before any event was POSTed again, and the
# chat passed on the second answer (a false pass, and the user's message submitted twice). The resend is for a
# WebSocket message that crossed the server's close frame; an SSE request is answered by its own stream.
async def test_an_sse_stream_that_ends_before_any_event_is_not_posted_again():
    server = SSEServer(empty=1)
    run = await _run_sse(server, quick(expect={"deadline": "2s", "settle": "0.05s"}))
    [chat] = run.results
    assert len(server.posts) == 1, "the request was POSTed again"
    assert chat.outcome is not Outcome.PASSED, (chat.outcome, chat.violations, chat.warnings)


async def test_an_sse_run_answered_at_once_still_passes():
    server = SSEServer(empty=0)
    run = await _run_sse(server, quick(expect={"deadline": "2s", "settle": "0.05s"}, chats_per_user=2))
    assert [r.outcome for r in run.results] == [Outcome.PASSED] * 2, [(r.violations, r.error) for r in run.results]
    assert len(server.posts) == 2


# 2. The proxy now follows a run resumed on a new connection while the old one is still open: the old connection lets
# the chat go (frames of that run on it are ignored) and the replay of events the chat already had is not judged
# again. `chatprobe check` of the proxy's own --record (same profile, same expectations) did neither: the run's events
# the server still sent on the old connection and the replayed ones were duplicates there (R7, R5): proxy and check
# disagreed on the same traffic.
import pytest  # noqa: E402


@pytest.mark.parametrize("lost", [False, True], ids=["nothing-lost", "events-lost-in-transit"])
async def test_check_of_the_proxys_recording_judges_a_resumed_run_as_the_proxy_did(tmp_path, lost):
    import secrets

    from prometheus_client import CollectorRegistry
    from websockets.asyncio.client import connect

    from agentsim.server import AgentSim, SimConfig
    from harness.checker import Expectations
    from harness.events import DEFAULT_REQUIRED
    from harness.offline import check_files
    from harness.recorder import Recorder
    from harness.scenario import Scenario
    from harness.targets import TokenProvider
    from monitors.metrics import ChatMetrics, MetricsSink
    from monitors.proxy import LiveChats, Proxy, start_proxy

    secret = secrets.token_urlsafe(32)
    sim = AgentSim(SimConfig(port=0, jwt_secret=secret, think=0.5, tool_latency=0.5, seed=5))
    await sim.start()
    results: list[Any] = []
    finished = asyncio.Event()

    class Watched(MetricsSink):
        def chat_finished(self, result):
            results.append(result)
            finished.set()
            super().chat_finished(result)

    rec_dir = tmp_path / "rec"
    exp = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=10.0)
    live = LiveChats(load_profile("netra"), Watched(ChatMetrics(CollectorRegistry()), "up", "live"), exp, "live", 0.1,
                     Recorder(rec_dir))
    server = await start_proxy(Proxy(sim.url.rsplit("/", 1)[0], live), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    headers = {"Authorization": f"Bearer {TokenProvider(jwt_secret=secret).for_user('alice')}"}
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        async with asyncio.timeout(30):
            old = await connect(url, additional_headers=headers, ping_interval=None, close_timeout=1)
            await old.send(json.dumps({"type": "user_message", "payload": {"content": "What is 2 * 21?"}}))
            while (frame := json.loads(await old.recv())).get("type") != "agent_started":
                pass
            run_id, last_seq = frame.get("run_id") or frame["payload"]["run_id"], frame.get("seq", 1)
            while lost and json.loads(await old.recv()).get("type") != "tool_executing":
                pass
            new = await connect(url, additional_headers=headers, ping_interval=None, close_timeout=1)
            assert json.loads(await new.recv())["type"] == "connection_established"
            await new.send(json.dumps({"type": "resume", "payload": {"run_id": run_id, "last_seq": last_seq}}))
            assert json.loads(await new.recv()).get("run_id") == run_id
            # The old connection stays open to the end of the run (the server may go on sending it there).
            while json.loads(await new.recv()).get("type") not in ("agent_completed", "agent_error"):
                pass
            await finished.wait()
            await old.close()
            await new.close()
    finally:
        server.close()
        await server.wait_closed()
        await sim.stop()
    assert [r.outcome for r in results] == [Outcome.PASSED], [(r.outcome, r.violations) for r in results]
    [run] = check_files([rec_dir], load_profile("netra"),
                        Scenario.model_validate({"name": "c", "expect": {"deadline": "10s", "settle": "0.1s"}}))
    got = [(r.outcome, sorted({v.rule for v in r.violations})) for r in run.results]
    assert got == [(Outcome.PASSED, [])], got
