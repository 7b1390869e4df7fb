"""A message whose connection the server closed cleanly as it went (1000, or 1012, service restart: a rolling deploy),
before any event of its run, is sent again on a new connection opened as a lost connection is reconnected: tried
again with backoff (harness/backoff.ReconnectRetries) within reconnect_timeout and the chat's deadline, each attempt
counted as a reconnect attempt's (ChatResult.reconnect_attempts / reconnect_failures: chatprobe_reconnect_attempts_
total), on the asyncio client and on the Locust user's SyncSession alike, and `chatprobe check` of the recording
(check_files) judges it as live did. A real websockets server on a loopback port in a thread, refusing connections at
the handshake (HTTP 503, or a TCP reset), the real recorder; no mock of the thing under test.

Failing on the code before the resend's retries: test_a_restart_that_refuses_then_serves_is_a_pass[*] (the chat was
an `error` at the first refused connection, live and in check) and
test_a_restart_that_refuses_for_good_is_one_error_chat_with_its_attempts_counted[*] (one error chat, but with no
attempt counted: 0 reconnect attempts). Failing on the first version of those retries (reverted):
test_a_chat_whose_message_went_again_resumes_a_later_loss[*] (the later reconnect took the resend's path and sent the
message a second time, its frame gone by then: `null`, answered INVALID_MESSAGE; the chat `incomplete`, R10 + R11, at
its deadline) and test_a_message_that_found_the_connection_closed_is_no_reconnect[*] (live counted a reconnect attempt
`check` cannot see, and waited the reconnect's jitter before each chat).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from harness.events import Outcome
from harness.offline import check_files
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.results import exit_code
from harness.runner import run_scenario
from harness.scenario import Scenario
from harness.targets import Target

from .conftest import scenario
from .test_netra_conformance import NetraServer, clean_run
from .test_record_check_parity import assert_parity
from .test_resend_attacks import Scripted, warned_resend
from .test_sync_record_check import play_sync

pytestmark = pytest.mark.timeout(60)


class ClosesOnFirstMessage(NetraServer):
    """The doc's netra server (resume included) that closes the connection with `code` as the first user message
    arrives, before any event of its run; a later message is answered, its run held after the 3rd event until the
    client dropped that connection (disconnect_after: 3), then played on (to the connection its resume moved it to,
    the events past the resume's last_seq replayed from the log)."""

    def __init__(self, code: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.code = code
        self.messages = 0

    async def play(self, run: dict[str, Any]) -> None:
        self.messages += 1
        if self.messages == 1:
            await run["ws"].close(self.code)
            return
        first = run["ws"]
        for seq, (_, kind, fields) in enumerate(clean_run(), start=1):
            if seq == 4:
                async with asyncio.timeout(10):  # the client drops the connection after the 3rd event
                    await first.wait_closed()
            if seq == 1:
                fields = {**fields, "message_id": run["msg"]["payload"]["message_id"]}
            frame = json.dumps(self.shape(kind, run["run_id"], seq, fields, thread=run["msg"]["payload"]["thread_id"],
                                          user=self.user))
            run["log"].append((seq, frame))
            with contextlib.suppress(ConnectionClosed):  # dropped before its resume moved the run: replayed then
                await run["ws"].send(frame)


class RestartingServer:
    """A netra server (`server`: by default one that closes 1000 on the first message, before any event) that then
    refuses the next `refusals` connections (None: every one) at the handshake, as a server coming back under a rolling
    deploy: HTTP 503, or a TCP reset (`how`); then it serves. On its own loop in a thread, so that the blocking
    SyncSession can talk to it as the asyncio client does."""

    def __init__(self, refusals: int | None, how: str, server: Any = None) -> None:
        self.server = server if server is not None else Scripted(lambda n, msg: "close1000" if n == 1 else None)
        self.refusals, self.how = refusals, how
        self.refused = 0
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),), daemon=True)
        self.stop: asyncio.Future | None = None

    def _refuse(self, connection: ServerConnection, request: object) -> object:
        if not self.server.connections or (self.refusals is not None and self.refused >= self.refusals):
            return None
        self.refused += 1
        if self.how == "rst":
            sock = connection.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.transport.abort()  # a reset, no HTTP answer at all
        return connection.respond(503, "restarting\n")

    async def _serve(self) -> None:
        self.stop = self.loop.create_future()
        async with serve(self.server.handler, "127.0.0.1", 0, compression=None, process_request=self._refuse) as srv:
            self.port = srv.sockets[0].getsockname()[1]
            self.ready.set()
            await self.stop

    def __enter__(self) -> Target:
        self.thread.start()
        assert self.ready.wait(10)
        return Target(url=f"ws://127.0.0.1:{self.port}/ws", profile=load_profile("netra"), name="raw")

    def __exit__(self, *exc: object) -> None:
        assert self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set_result, None)
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.loop.close()


def play(driver: str, target: Target, sc: Scenario, directory: Path):
    """The scenario live on `driver` (the asyncio client, or the Locust user's SyncSession) with every connection
    recorded into `directory`, then the recording checked."""
    if driver == "asyncio":
        async def live_run():
            async with asyncio.timeout(30):  # a hang fails the test
                return await run_scenario(sc, dataclasses.replace(target, recorder=Recorder(directory)))
        live = asyncio.run(live_run())
    else:
        live = play_sync(target, sc, directory)
    [offline] = check_files([directory], target.profile, sc)
    return live, offline


SC = dict(name="raw", users=1, chats_per_user=1, connect_timeout="1s", message="hi")


@pytest.mark.parametrize(("code", "refusals"), [(1000, 1), (1012, 2)])
@pytest.mark.parametrize("how", ["503", "rst"])
@pytest.mark.parametrize("driver", ["asyncio", "sync"])
def test_a_restart_that_refuses_then_serves_is_a_pass(tmp_path, driver, how, code, refusals):
    sc = scenario(**SC, expect={"deadline": "5s", "settle": "0.05s"})
    server = Scripted(lambda n, msg: f"close{code}" if n == 1 else None)
    with RestartingServer(refusals, how, server) as target:
        live, offline = play(driver, target, sc, tmp_path / "rec")
    assert server.connections == 2 and len(server.received) == 2, (server.connections, server.received)
    for run in (live, offline):
        [chat] = run.results
        assert chat.outcome is Outcome.PASSED, (chat.outcome, chat.error_kind, chat.error)
        assert warned_resend(chat)
        # The refused connections and the one that served: each a reconnect attempt, the refused ones failed.
        assert (chat.reconnect_attempts, chat.reconnect_failures) == (refusals + 1, refusals)
    assert exit_code([live]) == exit_code([offline]) == 0
    assert_parity(live, offline)


@pytest.mark.parametrize(("how", "kind"), [("503", "refused"), ("rst", "refused")])
@pytest.mark.parametrize("driver", ["asyncio", "sync"])
def test_a_restart_that_refuses_for_good_is_one_error_chat_with_its_attempts_counted(tmp_path, driver, how, kind):
    # Every new connection refused (HTTP 503, or reset) until the chat's deadline: after its attempts (backoff within
    # the deadline), still one `error` chat of the last refusal's kind, live and in check.
    sc = scenario(**SC, expect={"deadline": "1.5s", "settle": "0.05s"})
    with RestartingServer(None, how) as target:
        live, offline = play(driver, target, sc, tmp_path / "rec")
    assert live.stats.outcomes == offline.stats.outcomes == {"error": 1}
    [chat] = live.results
    [judged] = offline.results
    assert chat.error_kind == judged.error_kind == kind, (chat.error_kind, chat.error, judged.error)
    assert chat.reconnect_attempts == chat.reconnect_failures >= 2
    assert (judged.reconnect_attempts, judged.reconnect_failures) == (chat.reconnect_attempts, chat.reconnect_failures)
    assert exit_code([live]) == exit_code([offline])
    assert_parity(live, offline)


@pytest.mark.parametrize("driver", ["asyncio", "sync"])
def test_a_chat_whose_message_went_again_resumes_a_later_loss(tmp_path, driver):
    # The message crosses the server's close (1000) and goes again on a connection opened with the retries (one 503
    # first); on it the client drops the socket after the 3rd event (disconnect_after) and reconnects: that reconnect
    # resumes the run, as any chat's, and the message is not sent a third time.
    sc = scenario(**{**SC, "steps": [{"chat": {"message": "hi", "disconnect_after": 3}}]},
                  expect={"deadline": "5s", "settle": "0.05s"})
    server = ClosesOnFirstMessage(1000)
    with RestartingServer(1, "503", server) as target:
        live, offline = play(driver, target, sc, tmp_path / "rec")
    kinds = [m.get("type") for m in server.received]
    assert kinds == ["user_message", "user_message", "resume"], server.received
    assert all(m is not None for m in server.received)
    for run in (live, offline):
        [chat] = run.results
        assert chat.outcome is Outcome.PASSED, (chat.outcome, chat.note, [v.rule for v in chat.violations])
        assert warned_resend(chat) and chat.reconnects == ["resumed"], (chat.warnings, chat.reconnects)
        # the refused attempt, the resend's connection, the resume's
        assert (chat.reconnect_attempts, chat.reconnect_failures) == (3, 1)
    assert exit_code([live]) == exit_code([offline]) == 0
    assert_parity(live, offline)


@pytest.mark.parametrize("driver", ["asyncio", "sync"])
def test_a_message_that_found_the_connection_closed_is_no_reconnect(tmp_path, driver):
    # A server that closes (1000) right after each run's terminal event: the user's next message finds the connection
    # closed, as it is about to leave or before; either way it goes on one new connection, no reconnect attempt (it
    # never reached the server, and a recording cannot tell the two apart: check counts none). One that left as the
    # close came crossed it (the server read it, then closed): sent again (R13), its new connection a reconnect's.
    sc = scenario(**{**SC, "chats_per_user": 4}, expect={"deadline": "5s", "settle": "0.05s"})
    server = NetraServer(close_after_run=0)
    with RestartingServer(0, "503", server) as target:
        live, offline = play(driver, target, sc, tmp_path / "rec")
    said = {}
    for way, run in (("live", live), ("check", offline)):
        assert [r.outcome for r in run.results] == [Outcome.PASSED] * 4, way
        said[way] = sorted((warned_resend(r), r.reconnect_attempts, r.reconnect_failures) for r in run.results)
        assert all(attempts == int(resent) and not failed for resent, attempts, failed in said[way]), (way, said)
    assert said["live"] == said["check"], said
    resent = sum(resent for resent, _, _ in said["live"])
    assert [m["payload"]["content"] for m in server.received] == ["hi"] * (4 + resent)
    assert_parity(live, offline)



@pytest.mark.parametrize("driver", ["asyncio", "sync"])
def test_chats_refused_while_a_message_waits_to_go_again_are_each_counted_once(tmp_path, driver):
    # Three chats in parallel on one connection; the server closes it (1000) on the first message it reads and refuses
    # every connection after (503). A message that crossed the close waits to go again, its connection opened with the
    # reconnect's retries ("resume" records); a chat that found the connection closed before its message left opens
    # one plain connection, refused: an `error` chat of its own. Check took such a plain failure for the waiting
    # message's (as when a resend opened one plain connection): one chat fewer than live (the asyncio client's
    # second and third chats find the connection closed in most runs), the waiting message's attempts on no chat.
    # The recording cannot say which waiting message an attempt was (each makes its own): the totals agree.
    sc = scenario(**{**SC, "chats_per_user": 3, "parallel_chats": 3}, expect={"deadline": "1.5s", "settle": "0.05s"})
    server = Scripted(lambda n, msg: "close1000")
    with RestartingServer(None, "503", server) as target:
        live, offline = play(driver, target, sc, tmp_path / "rec")
    assert live.stats.outcomes == offline.stats.outcomes == {"error": 3}, (live.stats.outcomes, offline.stats.outcomes)
    assert live.stats.chats == offline.stats.chats == 3
    for counted in ("reconnect_attempts", "reconnect_failures"):
        assert (sum(getattr(r, counted) for r in live.results)
                == sum(getattr(r, counted) for r in offline.results)), counted
    assert exit_code([live]) == exit_code([offline])
    assert_parity(live, offline)
