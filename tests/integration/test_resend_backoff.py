"""A message whose connection the server closed cleanly as it went (here 1012, service restart: a rolling deploy),
before any event of its run, is sent again on a new connection opened as a lost connection is reconnected: tried
again with backoff (harness/backoff.ReconnectRetries) within reconnect_timeout and the chat's deadline, each attempt
counted as a reconnect attempt's (ChatResult.reconnect_attempts / reconnect_failures: chatprobe_reconnect_attempts_
total), on the asyncio client and on the Locust user's SyncSession alike, and `chatprobe check` of the recording
(check_files) judges it as live did. A real websockets server on a loopback port in a thread, refusing connections at
the handshake (HTTP 503, or a TCP reset), the real recorder; no mock of the thing under test.

Failing on the code before this file was added: test_a_restart_that_refuses_two_connections_then_serves_is_a_pass
[*] (the chat was an `error` at the first refused connection, live and in check), and
test_a_restart_that_refuses_for_good_is_one_error_chat_with_its_attempts_counted[*] (one error chat, but with no
attempt counted: 0 reconnect attempts).
"""
from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct
import threading
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from harness.events import Outcome
from harness.offline import check_files
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.results import exit_code
from harness.runner import run_scenario
from harness.scenario import Scenario
from harness.targets import Target

from .conftest import scenario
from .test_record_check_parity import assert_parity
from .test_resend_attacks import Scripted, warned_resend
from .test_sync_record_check import play_sync

pytestmark = pytest.mark.timeout(60)


class RestartingServer:
    """A netra server that closes 1012 on the first message, then refuses the next `refusals` connections (None: every
    one) at the handshake, as a server coming back under a rolling deploy: HTTP 503, or a TCP reset (`how`); then it
    serves. On its own loop in a thread, so that the blocking SyncSession can talk to it as the asyncio client does."""

    def __init__(self, refusals: int | None, how: str) -> None:
        self.server = Scripted(lambda n, msg: "close1012" if n == 1 else None)
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


@pytest.mark.parametrize("how", ["503", "rst"])
@pytest.mark.parametrize("driver", ["asyncio", "sync"])
def test_a_restart_that_refuses_two_connections_then_serves_is_a_pass(tmp_path, driver, how):
    sc = scenario(**SC, expect={"deadline": "5s", "settle": "0.05s"})
    with RestartingServer(2, how) as target:
        live, offline = play(driver, target, sc, tmp_path / "rec")
    for run in (live, offline):
        [chat] = run.results
        assert chat.outcome is Outcome.PASSED, (chat.outcome, chat.error_kind, chat.error)
        assert warned_resend(chat)
        # The two refused connections and the one that served: three reconnect attempts, two failed.
        assert (chat.reconnect_attempts, chat.reconnect_failures) == (3, 2)
    assert exit_code([live]) == exit_code([offline]) == 0
    assert_parity(live, offline)


@pytest.mark.parametrize("driver", ["asyncio", "sync"])
def test_a_restart_that_refuses_for_good_is_one_error_chat_with_its_attempts_counted(tmp_path, driver):
    # Every new connection refused (HTTP 503) until the chat's deadline: after its attempts (backoff within the
    # deadline), still one `error` chat of the refusal's kind, live and in check.
    sc = scenario(**SC, expect={"deadline": "1.5s", "settle": "0.05s"})
    with RestartingServer(None, "503") as target:
        live, offline = play(driver, target, sc, tmp_path / "rec")
    assert live.stats.outcomes == offline.stats.outcomes == {"error": 1}
    [chat] = live.results
    [judged] = offline.results
    assert chat.error_kind == judged.error_kind == "refused"
    assert chat.reconnect_attempts == chat.reconnect_failures >= 2
    assert (judged.reconnect_attempts, judged.reconnect_failures) == (chat.reconnect_attempts, chat.reconnect_failures)
    assert_parity(live, offline)
