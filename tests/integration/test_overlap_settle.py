"""Overlapping settle windows against a real server: the next chat starts while the last one still listens, and a
late event of the last one (sent only after the next chat's message arrived) still fails the chat it belongs to."""
from __future__ import annotations

import asyncio
import json

from websockets.asyncio.server import serve

from harness.checker import Expectations
from harness.client import Session
from harness.events import DEFAULT_REQUIRED, Outcome, Rule
from harness.flow import ChatOptions
from harness.profiles import load_profile
from harness.sinks import Sink
from harness.targets import Target

WELCOME = json.dumps({"type": "connection_established", "data": {"connection_id": "c", "user_id": "u"}})
EXP = Expectations(required=frozenset(DEFAULT_REQUIRED), first_event_limit=5.0, deadline=10.0)
RUN = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "partial_result", "agent_completed"]


def frame(kind: str, run_id: str, seq: int, message_id: str) -> str:
    payload = {"message_id": message_id, "tool_call_id": "t1", "tool_name": "calc"}
    return json.dumps({"type": kind, "run_id": run_id, "seq": seq, "payload": payload})


class Counts(Sink):
    def __init__(self) -> None:
        self.started = 0
        self.finished: list = []

    def chat_started(self, scenario):
        self.started += 1

    def chat_finished(self, result):
        self.finished.append(result)


async def late_event_server(ws, messages: list[str]) -> None:
    """Run r1 in full; when the second message arrives, first a late agent_thinking of r1 (R4, seq 7), then r2."""
    await ws.send(WELCOME)
    for n in (1, 2):
        msg = json.loads(await ws.recv())
        mid = msg["payload"]["message_id"]
        messages.append(mid)
        if n == 2:
            await ws.send(frame("agent_thinking", "r1", len(RUN) + 1, messages[0]))
        for seq, kind in enumerate(RUN, 1):
            await ws.send(frame(kind, f"r{n}", seq, mid))
    await ws.wait_closed()


async def play(options: ChatOptions):
    messages: list[str] = []
    async with serve(lambda ws: late_event_server(ws, messages), "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        target = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile("netra"), name="raw")
        sink = Counts()
        session = Session(target, "u", "overlap", sink, connect_timeout=5)
        async with asyncio.timeout(20):  # a hang fails the test
            first = await session.chat("one", EXP, options)
            finished_before_second = len(sink.finished)
            second = await session.chat("two", EXP, options)
            await session.close()
    return first, second, finished_before_second, sink


async def test_late_event_after_the_next_chat_started_fails_the_earlier_chat():
    # A settle window far longer than the exchange: the second message is sent while the first chat still listens.
    first, second, finished_before_second, sink = await play(ChatOptions(settle=2.0, overlap_settle=True))
    # chat() returned at the terminal event with the verdict as it stood; the chat was not judged yet.
    assert first.outcome is Outcome.PASSED and finished_before_second == 0
    # The sink got one final verdict per chat, the first one failed by the late event that came after chat two began.
    assert sink.started == len(sink.finished) == 2
    by_id = {r.chat_id: r for r in sink.finished}
    final_first = by_id[first.chat_id]
    assert final_first.outcome is Outcome.FAILED
    assert [v.rule for v in final_first.violations] == [Rule.R4]
    assert by_id[second.chat_id].outcome is Outcome.PASSED
    assert final_first is not first  # the returned verdict is a provisional copy; the sink's is the one that counts


async def test_without_overlap_the_second_message_waits_for_the_window():
    # Same server, same settle: the first chat is judged (passed: nothing late came in its window) before chat two.
    first, second, finished_before_second, sink = await play(ChatOptions(settle=0.3))
    assert finished_before_second == 1 and first.outcome is Outcome.PASSED
    assert sink.started == len(sink.finished) == 2


async def test_close_while_settling_is_stopped_from_outside_and_still_counted():
    messages: list[str] = []
    async with serve(lambda ws: late_event_server(ws, messages), "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        target = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile("netra"), name="raw")
        sink = Counts()
        session = Session(target, "u", "overlap", sink, connect_timeout=5)
        async with asyncio.timeout(20):
            await session.chat("one", EXP, ChatOptions(settle=60.0, overlap_settle=True))
            closing = asyncio.ensure_future(session.close())
            await asyncio.sleep(0)  # wait-ok: one turn of the loop, so close() runs up to its first await (no timed wait)
            closing.cancel()
            await asyncio.gather(closing, return_exceptions=True)
    # Cut short: judged on what arrived (a passed chat), once.
    assert sink.started == 1 and [r.outcome for r in sink.finished] == [Outcome.PASSED]


async def test_a_run_stopped_while_windows_listen_still_judges_every_chat_it_started(sim_factory):
    # Long settle windows, overlapped, and a run cut short: every chat started is judged exactly once, the ones
    # still listening judged on what arrived when the run stopped.
    from harness.runner import run_scenario
    from harness.scenario import Scenario

    scenario = Scenario.model_validate({"name": "stop", "users": 3, "chats_per_user": 1000, "max_duration": "1.5s",
                                        "message": "What is 2 * 3?", "expect": {"settle": "30s", "deadline": "5s"}})
    counts = Counts()
    async with sim_factory() as (_sim, target, _gt):
        async with asyncio.timeout(30):  # the windows (30 s) must not hold the stop
            run = await run_scenario(scenario, target, counts)
    assert run.stopped_early
    assert counts.started == len(counts.finished) == run.stats.chats > 3
    assert len({r.chat_id for r in counts.finished}) == len(counts.finished)
