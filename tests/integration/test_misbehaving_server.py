"""Raw servers written here misbehave on purpose; every case ends in a classified verdict within its deadline."""
from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Iterator

import pytest
from websockets.asyncio.server import serve

from harness.events import Outcome
from harness.flow import MAX_RESUME_UNKNOWN
from harness.profiles import load_profile
from harness.runner import run_scenario
from harness.scenario import Scenario
from harness.targets import Target

WELCOME = json.dumps({"type": "connection_established", "data": {"connection_id": "c", "user_id": "u"}})


def quick(**kw) -> Scenario:
    base = dict(name="raw", users=1, chats_per_user=1, connect_timeout="1s", max_reconnects=1,
                expect={"deadline": "1s", "first_event_limit": "0.5s", "settle": "0.05s"})
    base.update(kw)
    return Scenario.model_validate(base)


async def run_against(handler, scenario: Scenario | None = None, profile: str = "netra"):
    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        target = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile(profile), name="raw")
        async with asyncio.timeout(15):  # a hang fails the test
            return await run_scenario(scenario or quick(), target)


@contextlib.contextmanager
def served_from_a_thread(handler) -> Iterator[int]:
    """A `websockets` server on an event loop of its own, in a thread (its port): a server whose handler never yields
    (a flood whose sends never wait: its socket is never full while the client reads) holds up its own loop, as a
    server process would, not the client's under test. On the client's loop it starved the client's timers for as
    long as it ran, which a busy machine stretched past the test's bound."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []
    stop = asyncio.Event()

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, compression=None) as server:
            port.append(server.sockets[0].getsockname()[1])
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), name="flooding-server", daemon=True)
    thread.start()
    try:
        assert ready.wait(15), "the server did not start"
        yield port[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(15)
        assert not thread.is_alive(), "the server did not stop"
        loop.close()


def rules(run) -> set[str]:
    return {v.rule for r in run.results for v in r.violations}


def event(kind, seq, run_id="r1", **payload):
    return json.dumps({"type": kind, "run_id": run_id, "thread_id": None, "seq": seq, "payload": payload})


async def test_garbage_frames_then_silence():
    async def handler(ws):
        await ws.send(WELCOME)
        msg = json.loads(await ws.recv())
        mid = msg["payload"]["message_id"]
        await ws.send(json.dumps({"type": "agent_started", "run_id": "r1", "seq": 1, "payload": {"message_id": mid}}))
        for junk in ("not json {", b"\x00\x01binary", "[1, 2]", '{"no": "type"}'):
            await ws.send(junk)
        await ws.wait_closed()

    run = await run_against(handler)
    (r,) = run.results
    assert r.outcome is Outcome.INCOMPLETE
    assert sum(1 for v in r.violations if v.rule == "R12") == 4
    assert "R10" in rules(run)


def resume_unknown(run_id: str) -> str:
    """The server's answer to a resume of a run it does not know."""
    return json.dumps({"type": "error_message", "error_code": "RESUME_UNKNOWN_RUN", "error_message": "unknown run",
                       "run_id": run_id})


async def start_then_drop(ws, msg) -> None:
    """The chat's run starts (its agent_started), then the server drops the connection (1011)."""
    mid = msg["payload"]["message_id"]
    await ws.send(json.dumps({"type": "agent_started", "run_id": "r1", "seq": 1, "payload": {"message_id": mid}}))
    await ws.close(1011, "boom")


async def test_close_mid_run_without_resume_support():
    async def handler(ws):
        await ws.send(WELCOME)
        msg = json.loads(await ws.recv())
        if msg["type"] == "resume":
            await ws.send(resume_unknown(msg["payload"]["run_id"]))
            await ws.wait_closed()
            return
        await start_then_drop(ws, msg)

    run = await run_against(handler)
    (r,) = run.results
    assert r.outcome is Outcome.INCOMPLETE
    assert r.reconnects == ["lost"]
    assert "RESUME_UNKNOWN_RUN" in r.note


async def test_a_flood_of_resume_unknown_answers_never_hides_the_one_for_the_chat():
    # More RESUME_UNKNOWN_RUN answers naming other runs than the client remembers, then the one for the chat's run:
    # the newest is kept (the oldest go), so the chat ends at it, not at its deadline.
    async def handler(ws):
        await ws.send(WELCOME)
        msg = json.loads(await ws.recv())
        if msg["type"] == "resume":
            for i in range(MAX_RESUME_UNKNOWN + 50):
                await ws.send(resume_unknown(f"other-{i}"))
            await ws.send(resume_unknown(msg["payload"]["run_id"]))
            await ws.wait_closed()
            return
        await start_then_drop(ws, msg)

    run = await run_against(handler, quick(expect={"deadline": "5s", "first_event_limit": "0.5s", "settle": "0s"}))
    (r,) = run.results
    assert r.outcome is Outcome.INCOMPLETE
    assert r.reconnects == ["lost"]
    assert "RESUME_UNKNOWN_RUN" in r.note


async def test_no_welcome_is_a_protocol_error_not_unreachable():
    async def handler(ws):
        await ws.wait_closed()

    run = await run_against(handler)
    (r,) = run.results
    assert r.outcome is Outcome.ERROR and r.error_kind == "protocol_error"
    assert "welcome" in r.error and not run.unreachable


async def test_tcp_accept_without_handshake_is_a_timeout():
    async def swallow(reader, writer):
        await reader.read()  # reads until the client gives up

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        target = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile("netra"), name="raw")
        async with asyncio.timeout(15):
            run = await run_scenario(quick(), target)
    finally:
        server.close()
    assert [r.error_kind for r in run.results] == ["timeout"]
    assert run.unreachable


async def test_nothing_listening_is_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile("netra"), name="raw")
    run = await run_scenario(quick(users=2), target)
    assert [r.error_kind for r in run.results] == ["refused", "refused"]
    assert run.unreachable


async def test_auth_failed_frame_and_1008():
    async def handler(ws):
        await ws.send(json.dumps({"type": "error_message", "error_code": "AUTH_FAILED", "error_message": "no"}))
        await ws.close(1008, "auth")

    run = await run_against(handler)
    assert [r.error_kind for r in run.results] == ["auth_failed"]


@pytest.mark.parametrize("variant", ["newest", "bridge", "oldest"])
async def test_netra_variants_are_accepted(variant):
    """The three deployed shapes of netra frames, with agent_response and stream_chunk, all pass."""

    def frame(kind, seq, **fields):
        if variant == "newest":
            return {"type": kind, "run_id": "r1", "seq": seq, **fields}
        if variant == "bridge":
            return {"type": kind, "run_id": "r1", "user_id": "u", "agent_name": "a", "seq": seq,
                    "timestamp": "2026-11-25T00:00:00Z", "data": fields}
        return {"type": kind, "payload": {"run_id": "r1", **fields}, "sender": None, "timestamp": 1.0}

    async def handler(ws):
        await ws.send(json.dumps({"type": "system_message", "data": {"event": "connection_established", "user_id": "u"}}))
        msg = json.loads(await ws.recv())
        mid = msg["payload"]["message_id"]
        frames = [
            frame("agent_started", 1, message_id=mid),
            frame("agent_thinking", 2, reasoning="hmm"),
            frame("tool_executing", 3, tool_name="calc", parameters={"x": 1}),
            frame("tool_completed", 4, tool_name="calc", results=2, execution_time_ms=3),
            frame("stream_chunk", 5, content="4"),
            frame("agent_response", 6, final_response="4"),
        ]
        for f in frames:
            await ws.send(json.dumps(f))
        await ws.wait_closed()

    run = await run_against(handler, quick(expect={"streaming": True, "deadline": "2s", "settle": "0.05s"}))
    (r,) = run.results
    assert r.outcome is Outcome.PASSED, r.violations
    assert len(r.events) == 6


async def test_server_pings_are_answered():
    got_pong = asyncio.Event()

    async def handler(ws):
        await ws.send(WELCOME)
        msg = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "ping", "data": {}}))
        await ws.send(json.dumps({"type": "heartbeat"}))
        reply = json.loads(await ws.recv())
        if reply == {"type": "pong"}:
            got_pong.set()
        mid = msg["payload"]["message_id"]
        for i, kind in enumerate(["agent_started", "agent_thinking", "tool_executing", "tool_completed",
                                  "agent_completed"], start=1):
            await ws.send(json.dumps({"type": kind, "run_id": "r1", "seq": i,
                                      "payload": {"message_id": mid, "tool_call_id": "t"}}))
        await ws.wait_closed()

    run = await run_against(handler)
    assert got_pong.is_set()
    assert run.results[0].outcome is Outcome.PASSED, run.results[0].violations


async def test_parallel_chats_share_one_connection():
    connections = []

    async def handler(ws):
        connections.append(ws)
        await ws.send(WELCOME)
        async for raw in ws:
            msg = json.loads(raw)
            mid = msg["payload"]["message_id"]
            run_id = "r-" + mid
            for i, kind in enumerate(["agent_started", "agent_thinking", "tool_executing", "tool_completed",
                                      "agent_completed"], start=1):
                await ws.send(json.dumps({"type": kind, "run_id": run_id, "seq": i,
                                          "payload": {"message_id": mid, "tool_call_id": "t"}}))

    run = await run_against(handler, quick(chats_per_user=6, parallel_chats=3))
    assert [r.outcome for r in run.results] == [Outcome.PASSED] * 6
    assert len(connections) == 1


async def test_a_rejected_message_ends_the_chat_at_once_as_an_error():
    async def handler(ws):
        await ws.send(WELCOME)
        async for _ in ws:
            await ws.send(json.dumps({"type": "error_message", "error_code": "INVALID_MESSAGE",
                                      "error_message": "unknown message shape"}))

    # A 30 s deadline the test would hit (and pytest-timeout fail) if the rejection were not recognised.
    run = await run_against(handler, quick(expect={"deadline": "30s", "first_event_limit": "10s"}))
    (r,) = run.results
    assert r.outcome is Outcome.ERROR and r.error_kind == "rejected"
    assert "INVALID_MESSAGE" in r.error and not run.unreachable


async def test_rejected_messages_with_chats_in_parallel_all_end_at_once():
    async def handler(ws):
        await ws.send(WELCOME)
        async for _ in ws:
            await ws.send(json.dumps({"type": "error_message", "error_code": "INVALID_MESSAGE", "error_message": "no"}))

    run = await run_against(handler, quick(chats_per_user=3, parallel_chats=3,
                                           expect={"deadline": "30s", "first_event_limit": "10s"}))
    assert [r.error_kind for r in run.results] == ["rejected"] * 3


async def test_a_ping_flood_from_a_server_that_never_reads_ends_in_a_verdict():
    async def handler(ws):
        await ws.send(WELCOME)
        await ws.recv()
        ping = json.dumps({"type": "ping"})
        try:
            for _ in range(200_000):
                await ws.send(ping)
        except Exception:
            pass
        await ws.wait_closed()

    # The flood's sends never wait while the client reads: on a loop of its own (a thread), as a server process's.
    with served_from_a_thread(handler) as port:
        target = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile("netra"), name="raw")
        async with asyncio.timeout(15):  # a hang fails the test
            run = await run_scenario(quick(), target)  # a 1 s chat deadline
    (r,) = run.results
    assert r.outcome is Outcome.INCOMPLETE and "R10" in {v.rule for v in r.violations}
