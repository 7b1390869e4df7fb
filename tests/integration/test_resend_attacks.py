"""Attacks on the resend of a message whose connection the server closed (docs/protocol.md, "Outcomes"): raw
`websockets` servers on 127.0.0.1 that lose, drop or run twice a user's message, against both clients (asyncio
Session, threaded SyncSession) and their counters. Every wait is bounded (run_against's 15 s, the chats' deadlines).

FAILED on the code before this file: test_a_resend_to_a_server_that_never_welcomes_ends_by_the_chats_deadline and
test_the_sync_client_bounds_a_resend_by_the_chats_deadline_too (the resend's new connection waited connect_timeout
for a welcome, 6 s, past the chat's 1 s deadline that had run since the first try). The rest passed and guard it.
"""
from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from harness.events import Outcome, Rule
from harness.sinks import Sink

from .test_misbehaving_server import quick, run_against
from .test_netra_conformance import NetraServer, verdicts


class Counting(Sink):
    def __init__(self) -> None:
        self.started = 0
        self.finished = 0
        self.attempts: Counter[str] = Counter()

    def chat_started(self, scenario: str) -> None:
        self.started += 1

    def chat_finished(self, result: Any) -> None:
        self.finished += 1

    def connection_attempt(self, scenario: str, result: str) -> None:
        self.attempts[result] += 1


class Scripted(NetraServer):
    """A netra server that, for the user messages `policy` names, does something else than answer: `policy(n, msg)`
    (n counts user messages from 1) returns None to answer, or an action ("close1000", "close1001", "ping+1000",
    "control+1000", "abort", "1011")."""

    def __init__(self, policy, **kw) -> None:
        super().__init__(**kw)
        self.policy = policy
        self.n = 0

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        await ws.send(json.dumps(self.welcome))
        async for raw in ws:
            msg = json.loads(raw)
            if msg.get("type") != "user_message":
                continue
            self.n += 1
            self.received.append(msg)
            action = self.policy(self.n, msg)
            if action is None:
                run = {"ws": ws, "log": [], "msg": msg, "run_id": f"srv-run-{next(self._ids)}"}
                self.runs[run["run_id"]] = run
                self.tasks.add(task := asyncio.create_task(self.play(run)))
                task.add_done_callback(self.tasks.discard)
                continue
            if action.startswith("ping"):
                await ws.ping()
            if action.startswith("control"):
                await ws.send(json.dumps({"type": "heartbeat"}))
            if action == "abort":
                ws.transport.abort()
            elif action == "1011":
                await ws.close(1011)
            else:
                await ws.close(int(action[-4:]))
            return


def warned_resend(result) -> bool:
    return any(w.rule == "R13" and "sent again" in w.reason for w in result.warnings)


# --- (2) a message the server took, then closed cleanly before answering: sent again with the same ids ----------

async def test_a_message_sent_again_carries_the_same_ids_so_a_server_can_tell_it_ran_it():
    server = Scripted(lambda n, msg: "close1000" if n == 1 else None)
    run = await run_against(server.handler, quick(expect={"deadline": "2s", "settle": "0.05s"}))
    [chat] = run.results
    assert chat.outcome is Outcome.PASSED and warned_resend(chat), verdicts(run)
    first, again = server.received
    assert first["payload"] == again["payload"]


# --- (1) false passes -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["ping+1000", "control+1000"])
async def test_a_close_after_a_ping_or_control_frame_on_every_message_is_not_a_pass(how):
    server = Scripted(lambda n, msg: how)
    run = await run_against(server.handler, quick(expect={"deadline": "2s", "settle": "0.05s"}))
    [chat] = run.results
    assert chat.outcome is not Outcome.PASSED, verdicts(run)
    assert len(server.received) == 2


async def test_closing_on_every_other_message_warns_on_every_chat_it_lost():
    server = Scripted(lambda n, msg: "close1000" if n % 2 else None)
    run = await run_against(server.handler, quick(chats_per_user=4, expect={"deadline": "2s", "settle": "0.05s"}))
    assert len(run.results) == 4
    assert all(warned_resend(r) for r in run.results), verdicts(run)
    assert len(server.received) == 8


async def test_going_away_mid_burst_with_several_chats_in_flight():
    """parallel_chats: three messages in flight on one connection, the server answers none and closes with 1001;
    each is sent again once (never more), and the counters add up."""
    seen: list[int] = []

    def policy(n, msg):
        seen.append(n)
        return "close1001" if n == 3 else (None if n > 3 else "hold")

    class Burst(Scripted):
        async def handler(self, ws):
            self.connections += 1
            await ws.send(json.dumps(self.welcome))
            async for raw in ws:
                msg = json.loads(raw)
                if msg.get("type") != "user_message":
                    continue
                self.n += 1
                self.received.append(msg)
                action = self.policy(self.n, msg)
                if action == "hold":
                    continue
                if action is None:
                    run = {"ws": ws, "log": [], "msg": msg, "run_id": f"srv-run-{next(self._ids)}"}
                    self.runs[run["run_id"]] = run
                    self.tasks.add(task := asyncio.create_task(self.play(run)))
                    task.add_done_callback(self.tasks.discard)
                    continue
                await ws.close(1001)
                return

    server = Burst(policy)
    sink = Counting()
    from websockets.asyncio.server import serve

    from harness.profiles import load_profile
    from harness.runner import run_scenario
    from harness.targets import Target

    async with serve(server.handler, "127.0.0.1", 0, compression=None) as srv:
        port = srv.sockets[0].getsockname()[1]
        target = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile("netra"), name="raw")
        async with asyncio.timeout(15):
            run = await run_scenario(quick(parallel_chats=3, chats_per_user=3,
                                           expect={"deadline": "2s", "settle": "0.05s"}), target, sink)
    assert len(run.results) == 3, verdicts(run)
    assert all(r.outcome is Outcome.PASSED and warned_resend(r) for r in run.results), verdicts(run)
    assert len(server.received) == 6
    assert sink.started == sink.finished == 3
    assert server.connections == 2


# --- (4) the threaded client judges alike ------------------------------------------------------------------------

def _sync_chat(server, *, deadline: float = 2.0, connect_timeout: float = 3.0):
    from harness.checker import Expectations
    from harness.events import DEFAULT_REQUIRED
    from harness.flow import ChatOptions
    from harness.gevent_client import SyncSession
    from harness.profiles import load_profile
    from harness.targets import Target

    from .test_sync_session import ServerThread

    sink = Counting()
    exp = Expectations(required=frozenset(DEFAULT_REQUIRED), first_event_limit=deadline, deadline=deadline)
    with ServerThread(server.handler) as url:
        session = SyncSession(Target(url=url, profile=load_profile("netra"), name="raw"), "u", "sync", sink,
                              connect_timeout=connect_timeout)
        try:
            result = session.chat("hi", exp, ChatOptions(settle=0.05, max_reconnects=1))
        finally:
            session.close()
    return result, sink


@pytest.mark.parametrize("how,sent,outcome", [("close1000", 2, "passed"), ("abort", 1, None), ("1011", 1, None)])
async def test_both_clients_judge_a_hang_up_on_the_first_message_alike(how, sent, outcome):
    server = Scripted(lambda n, msg: how if n == 1 else None)
    run = await run_against(server.handler, quick(expect={"deadline": "2s", "settle": "0.05s"}))
    [chat] = run.results
    sync_server = Scripted(lambda n, msg: how if n == 1 else None)
    result, sink = await asyncio.to_thread(_sync_chat, sync_server)
    assert (chat.outcome, warned_resend(chat)) == (result.outcome, warned_resend(result)), (verdicts(run), result)
    assert len(server.received) == len(sync_server.received) == sent
    if outcome:
        assert chat.outcome.value == outcome
    assert sink.started == sink.finished == 1


# --- (5) a resend is bounded by the chat's deadline --------------------------------------------------------------

class SilentAfterClose(Scripted):
    """Closes cleanly on the first message; every later connection is accepted and never spoken on."""

    async def handler(self, ws):
        if self.connections:
            self.connections += 1
            await ws.wait_closed()
            return
        await super().handler(ws)


def waited_at_most(result, deadline: float) -> bool:
    """The resend's wait for a welcome was what was left of the chat's deadline (its error says how long it waited),
    not the connect timeout; or the deadline had passed before a resend (R10)."""
    waited = re.search(r"no welcome frame within ([0-9.]+)s", result.error or "")
    if waited is None:
        return any(v.rule is Rule.R10 for v in result.violations)
    return float(waited.group(1)) <= deadline


async def test_a_resend_to_a_server_that_never_welcomes_ends_by_the_chats_deadline():
    server = SilentAfterClose(lambda n, msg: "close1000")
    run = await run_against(server.handler, quick(connect_timeout="6s", expect={"deadline": "1s", "settle": "0.05s"}))
    [chat] = run.results
    assert chat.outcome is not Outcome.PASSED, verdicts(run)
    assert waited_at_most(chat, 1.0), verdicts(run)


def test_the_sync_client_bounds_a_resend_by_the_chats_deadline_too():
    server = SilentAfterClose(lambda n, msg: "close1000")
    result, sink = _sync_chat(server, deadline=1.0, connect_timeout=6.0)
    assert result.outcome is not Outcome.PASSED, result
    assert waited_at_most(result, 1.0), result
    assert sink.started == sink.finished == 1
    assert sink.attempts == Counter({"ok": 1, "protocol_error": 1})
