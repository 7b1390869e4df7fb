"""The threaded/gevent SyncSession (websockets' Sans-I/O protocol read by the session's own reader) against a real
server in a thread: a chat passes, a fragmented event is joined, an oversized frame is an R12 with close code 1009."""
from __future__ import annotations

import asyncio
import json
import threading

import pytest
from websockets.asyncio.server import serve

from harness.checker import Expectations
from harness.events import DEFAULT_REQUIRED, Outcome, Rule
from harness.flow import ChatOptions
from harness.gevent_client import SyncSession
from harness.profiles import load_profile
from harness.sinks import Sink
from harness.targets import Target

WELCOME = json.dumps({"type": "connection_established", "data": {"connection_id": "c", "user_id": "u"}})
RUN = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "partial_result", "agent_completed"]
EXP = Expectations(required=frozenset(DEFAULT_REQUIRED), first_event_limit=5.0, deadline=5.0)


def frame(kind: str, seq: int, message_id: str) -> str:
    payload = {"message_id": message_id, "tool_call_id": "t1", "tool_name": "calc"}
    return json.dumps({"type": kind, "run_id": "r1", "seq": seq, "payload": payload})


class ServerThread:
    """A websockets server on its own loop in a thread, so the blocking SyncSession can talk to it from the test."""

    def __init__(self, handler) -> None:
        self.handler = handler
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),), daemon=True)
        self.stop: asyncio.Future | None = None

    async def _serve(self) -> None:
        self.stop = self.loop.create_future()
        async with serve(self.handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self.ready.set()
            await self.stop

    def __enter__(self) -> str:
        self.thread.start()
        assert self.ready.wait(10)
        return f"ws://127.0.0.1:{self.port}/ws"

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.stop.set_result, None)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()  # its descriptors (ws_stacks.LoopThread says why)


def play(handler, max_size: int | None = None):
    with ServerThread(handler) as url:
        session = SyncSession(Target(url=url, profile=load_profile("netra"), name="raw"), "u", "sync", Sink(),
                              connect_timeout=5)
        if max_size is not None:  # the client's frame limit, as `settings_for` would give it
            settings_for = session.target.settings_for

            def small(user_id, timeout):
                s = settings_for(user_id, timeout)
                s.max_size = max_size
                return s

            session.target.settings_for = small  # type: ignore[method-assign]
        try:
            return session.chat("hi", EXP, ChatOptions(settle=0.05)), session
        finally:
            session.close()


async def _run(ws, fragment: bool = False, oversized: bool = False) -> None:
    await ws.send(WELCOME)
    msg = json.loads(await ws.recv())
    if msg.get("type") != "user_message":  # a resume after the client dropped the connection: not supported here
        await ws.close()
        return
    mid = msg["payload"]["message_id"]
    for seq, kind in enumerate(RUN, 1):
        text = frame(kind, seq, mid)
        if fragment and kind == "agent_thinking":
            await ws.send([text[:10], text[10:20], text[20:]])  # one message in three frames
        elif oversized and kind == "tool_completed":
            await ws.send(text[:-1] + ', "pad": "' + "x" * 5000 + '"}')
            await ws.wait_closed()
            return
        else:
            await ws.send(text)
    await ws.wait_closed()


@pytest.mark.timeout(60)
def test_a_chat_passes_and_a_fragmented_event_is_joined():
    result, _ = play(lambda ws: _run(ws, fragment=True))
    assert result.outcome is Outcome.PASSED, result.violations
    assert result.events_received == len(RUN)


@pytest.mark.timeout(60)
def test_an_oversized_frame_is_an_r12_from_the_clients_1009():
    result, _ = play(lambda ws: _run(ws, oversized=True), max_size=2048)
    # The client closed with 1009 for the oversized frame (record_close read it from the protocol): an R12 naming it.
    assert any(v.rule is Rule.R12 and "larger than the 2048 byte limit" in v.reason for v in result.violations), \
        result.violations
    assert result.outcome is not Outcome.PASSED


@pytest.mark.timeout(60)
def test_closing_a_session_whose_reader_never_started_does_not_raise():
    # Locust stopping a user (GreenletExit) while `connect()` is inside the reader thread's start() leaves a thread that
    # never started; the user's on_stop then closes the session, and joining that thread raised a traceback.
    with ServerThread(lambda ws: _run(ws)) as url:
        session = SyncSession(Target(url=url, profile=load_profile("netra"), name="raw"), "u", "sync", Sink(),
                              connect_timeout=5)
        session.connect()
        conn = session.conn
        assert conn is not None and conn.reader is not None
        started = conn.reader
        conn.reader = threading.Thread(target=lambda: None)  # as start() left it when interrupted
        try:
            session.close()  # raised RuntimeError: cannot join thread before it is started
        finally:
            conn.reader = started
            conn.ws.abort()
            started.join(5)
    assert session.closed_by_client
