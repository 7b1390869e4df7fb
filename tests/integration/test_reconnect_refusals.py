"""What a server answers a reconnect decides whether the client tries again, as load testers and SREs expect of
k6's or Locust's users: a reconnect (or the new connection a message goes again on) refused for the credentials —
HTTP 401/403 at the handshake, a WebSocket close 4401/4403 before the welcome, an AUTH_FAILED session error — is
never retried with the same credentials (that only hammers the auth service): the chat ends at once, an `error`,
auth_failed, its one attempt counted. A plain 1008 (policy violation) says nothing of credentials and is retried as
any failure. An HTTP 429 or 503 with Retry-After puts the next attempt no earlier than that, and when that is past
reconnect_timeout the chat ends as when its attempts run out, without waiting. The same on the asyncio client (picows
and websockets) and the Locust user's SyncSession, and `chatprobe check` of the recording (check_files) judges it as
live did.

A raw asyncio server on a loopback port, on its own loop in a thread (so the blocking SyncSession talks to it as the
asyncio client does): the first connection carries part of a run and is dropped (or closed cleanly before any event:
the message goes again); every later one is answered as the test says. The assertions are on the connections the
server saw (counts, never times) and the chat's outcome.

Failing on the code before the retry policy: every refusal test (the refused attempt was retried until
max_reconnect_attempts or the chat's deadline: the server saw more than two connections, and the chat ended
`incomplete`, "reconnecting failed", not auth_failed) and the Retry-After tests (the backoff's 0.1 s, 0.2 s … attempts
came regardless of the header).
"""
from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from harness.backoff import MAX_RETRY_AFTER, parse_retry_after
from harness.events import Outcome
from harness.flow import RECONNECT_FAILED_NOTE
from harness.offline import check_files
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.results import exit_code
from harness.runner import run_scenario
from harness.scenario import Scenario
from harness.targets import Target

from .conftest import scenario
from .hostile_ws import WELCOME, frame, read_frame, read_until_gone, run_frames, upgrade
from .test_sync_record_check import play_sync

pytestmark = pytest.mark.timeout(60)

Reader, Writer = asyncio.StreamReader, asyncio.StreamWriter
AUTH_FAILED = json.dumps({"type": "error_message", "payload": {"error_code": "AUTH_FAILED",
                                                                "error_message": "token revoked"}}).encode()


def close_frame(code: int) -> bytes:
    return frame(8, code.to_bytes(2, "big"))


async def http_answer(writer: Writer, status: str, headers: str = "") -> None:
    writer.write(f"HTTP/1.1 {status}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()


async def upgraded_then(reader: Reader, writer: Writer, head: bytes, *frames: bytes) -> None:
    """The upgrade accepted, `frames` sent, then the socket kept until the client goes."""
    writer.write(upgrade(head) + b"".join(frames))
    await writer.drain()
    await read_until_gone(reader)


# How a refused reconnect is answered (each a handler of the connection's reader, writer and request head).
REFUSALS: dict[str, Callable[[Reader, Writer, bytes], Awaitable[None]]] = {
    "http401": lambda r, w, h: http_answer(w, "401 Unauthorized"),
    "http403": lambda r, w, h: http_answer(w, "403 Forbidden"),
    "close4401": lambda r, w, h: upgraded_then(r, w, h, close_frame(4401)),
    "close4403": lambda r, w, h: upgraded_then(r, w, h, close_frame(4403)),
    # The session error first, then the close: the frame refuses the credentials, whatever the close code.
    "auth_failed": lambda r, w, h: upgraded_then(r, w, h, frame(1, AUTH_FAILED), close_frame(1008)),
    "close1008": lambda r, w, h: upgraded_then(r, w, h, close_frame(1008)),
    "429_30s": lambda r, w, h: http_answer(w, "429 Too Many Requests", "Retry-After: 30\r\n"),
    "503_date": lambda r, w, h: http_answer(
        w, "503 Service Unavailable", f"Retry-After: {email.utils.formatdate(time.time() + 3600, usegmt=True)}\r\n"),
    "503_1s": lambda r, w, h: http_answer(w, "503 Service Unavailable", "Retry-After: 1\r\n"),
    "429_0s": lambda r, w, h: http_answer(w, "429 Too Many Requests", "Retry-After: 0\r\n"),
    # A Retry-After of a byte that decodes (ISO-8859-1, as HTTP headers are read) to a superscript two: a "digit" to
    # str.isdigit, no number to float().
    "429_sup2": lambda r, w, h: http_raw_answer(w, b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: \xb2\r\n"),
}


async def http_raw_answer(writer: Writer, head: bytes) -> None:
    writer.write(head + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()


class RefusingServer:
    """Connection 0: the welcome, the chat's message, then (`first`) "drop": two events of its run and the socket
    closed without a close frame (the client reconnects to resume), or "close1000": a clean close before any event
    (the message goes again). Connections 1 .. `refusals` (None: every one): answered by REFUSALS[`how`]. Any later
    one is served: the welcome, then the rest of the run after the resume (or the whole run for a message sent
    again). `answered` keeps, per connection in the order they came, what it got."""

    def __init__(self, how: str, refusals: int | None = None, first: str = "drop") -> None:
        self.how, self.refusals, self.first = how, refusals, first
        self.answered: list[str] = []
        self.received: list[dict] = []
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),), daemon=True)
        self.stop: asyncio.Future | None = None
        self.port = 0

    async def _handle(self, reader: Reader, writer: Writer) -> None:
        n = len(self.answered)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if n == 0:
                self.answered.append(self.first)
                writer.write(upgrade(head) + frame(1, WELCOME))
                await writer.drain()
                _, data = await read_frame(reader)
                msg = json.loads(data)
                self.received.append(msg)
                if self.first == "close1000":
                    writer.write(close_frame(1000))
                    await writer.drain()
                    await read_until_gone(reader)
                    return
                writer.write(b"".join(frame(1, f) for f in run_frames(msg["payload"]["message_id"])[:2]))
                await writer.drain()
                writer.transport.abort()  # dropped: no close frame (1006)
                return
            if self.refusals is None or n <= self.refusals:
                self.answered.append(self.how)
                await REFUSALS[self.how](reader, writer, head)
                return
            self.answered.append("served")
            writer.write(upgrade(head) + frame(1, WELCOME))
            await writer.drain()
            _, data = await read_frame(reader)
            msg = json.loads(data)
            self.received.append(msg)
            frames = run_frames(msg["payload"].get("message_id") or self.received[0]["payload"]["message_id"])
            rest = frames if msg.get("type") != "resume" else frames[int(msg["payload"]["last_seq"] or 0):]
            writer.write(b"".join(frame(1, f) for f in rest))
            await writer.drain()
            await read_until_gone(reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away
        finally:
            writer.close()

    async def _serve(self) -> None:
        self.stop = self.loop.create_future()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        async with server:
            await self.stop

    @property
    def target(self) -> Target:
        return Target(url=f"ws://127.0.0.1:{self.port}/ws", profile=load_profile("netra"), name="raw")

    def __enter__(self) -> RefusingServer:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set_result, None)
        self.thread.join(10)
        assert not self.thread.is_alive()


def play(driver: str, target: Target, sc: Scenario, directory: Path):
    """The scenario live on `driver` (picows or websockets under the asyncio client, or the Locust user's
    SyncSession), every connection recorded into `directory`; then the recording checked."""
    if driver == "sync":
        live = play_sync(target, sc, directory)
    else:
        sc = sc.model_copy(update={"compression": "deflate" if driver == "websockets" else "none"})

        async def live_run():
            async with asyncio.timeout(30):  # a hang fails the test
                return await run_scenario(sc, dataclasses.replace(target, recorder=Recorder(directory)))
        live = asyncio.run(live_run())
    [offline] = check_files([directory], target.profile, sc)
    return live, offline


def scenario_for(*, reconnect_timeout: str = "3s", deadline: str = "6s") -> Scenario:
    return scenario(name="raw", users=1, connect_timeout="2s", chats_per_user=1, message="hi", max_reconnect_attempts=8,
                    reconnect_timeout=reconnect_timeout, expect={"deadline": deadline, "settle": "0.05s",
                                                                 "first_event_limit": "2s"})


def summary(chat) -> tuple:
    return (chat.outcome, chat.error_kind, chat.reconnect_attempts, chat.reconnect_failures)


DRIVERS = ["picows", "websockets", "sync"]
CREDENTIAL_REFUSALS = {"http401": "HTTP 401", "http403": "HTTP 403", "close4401": "close code 4401",
                       "close4403": "close code 4403", "auth_failed": "AUTH_FAILED"}


@pytest.mark.parametrize("how", list(CREDENTIAL_REFUSALS))
@pytest.mark.parametrize("driver", DRIVERS)
def test_a_reconnect_refused_for_the_credentials_is_not_tried_again(tmp_path, driver, how):
    # The run's connection dropped mid-run; the one reconnect answered with a refusal of the credentials: no second
    # attempt (the server saw two connections), the chat an `error`, auth_failed, its one failed attempt counted;
    # `check` of the recording the same.
    with RefusingServer(how) as server:
        live, offline = play(driver, server.target, scenario_for(), tmp_path / "rec")
    seen = server.answered
    assert seen == ["drop", how], seen
    [chat] = live.results
    [judged] = offline.results
    assert summary(chat) == (Outcome.ERROR, "auth_failed", 1, 1), (summary(chat), chat.error, chat.note)
    assert CREDENTIAL_REFUSALS[how] in (chat.error or ""), chat.error
    assert summary(judged) == summary(chat), (summary(judged), judged.error, judged.note)
    assert chat.reconnects == judged.reconnects == ["lost"]
    assert exit_code([live]) == exit_code([offline])
    # The recording says the client did not try again, and what refused it.
    closes = [json.loads(line) for f in sorted((tmp_path / "rec").glob("*.jsonl"))
              for line in f.read_text().splitlines() if '"failed"' in line]
    assert [c.get("retry", False) for c in closes] == [False], closes


@pytest.mark.parametrize("how", ["http401", "close4401", "auth_failed"])
@pytest.mark.parametrize("driver", DRIVERS)
def test_a_message_sent_again_on_a_connection_refused_for_the_credentials_is_one_attempt(tmp_path, driver, how):
    # The server closed the connection cleanly (1000) as the message went: it goes again on a new connection opened
    # with the reconnect's retries; that one refused for the credentials: no further attempt, an `error` chat,
    # auth_failed, one attempt counted, live and in check.
    with RefusingServer(how, first="close1000") as server:
        live, offline = play(driver, server.target, scenario_for(), tmp_path / "rec")
    seen = server.answered
    assert seen == ["close1000", how], seen
    [chat] = live.results
    [judged] = offline.results
    assert summary(chat) == summary(judged) == (Outcome.ERROR, "auth_failed", 1, 1), (
        summary(chat), chat.error, summary(judged), judged.error)
    assert exit_code([live]) == exit_code([offline])


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_plain_policy_violation_close_is_still_retried(tmp_path, driver):
    # 1008 with no credentials meaning: tried again as any failure, and the run resumes on the next connection.
    with RefusingServer("close1008", refusals=1) as server:
        live, offline = play(driver, server.target, scenario_for(), tmp_path / "rec")
    seen = server.answered
    assert seen == ["drop", "close1008", "served"], seen
    for run in (live, offline):
        [chat] = run.results
        assert (chat.outcome, chat.reconnects, chat.reconnect_attempts, chat.reconnect_failures) == (
            Outcome.PASSED, ["resumed"], 2, 1), (chat.outcome, chat.note, chat.error)


@pytest.mark.parametrize("how", ["429_30s", "503_date"])
@pytest.mark.parametrize("driver", DRIVERS)
def test_a_retry_after_past_reconnect_timeout_ends_the_chat_without_another_attempt(tmp_path, driver, how):
    # Retry-After 30 s (or an HTTP-date an hour ahead), reconnect_timeout 3 s: the next attempt would come past it,
    # so none does: the server saw the one refused attempt; the chat ends as when its attempts run out.
    with RefusingServer(how) as server:
        live, offline = play(driver, server.target, scenario_for(), tmp_path / "rec")
    seen = server.answered
    assert seen == ["drop", how], seen
    for run in (live, offline):
        [chat] = run.results
        assert (chat.outcome, chat.note, chat.reconnect_attempts, chat.reconnect_failures) == (
            Outcome.INCOMPLETE, RECONNECT_FAILED_NOTE, 1, 1), (chat.outcome, chat.note, chat.error)


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_retry_after_spaces_the_attempts(tmp_path, driver):
    # Every reconnect answered 503, Retry-After: 1, within a reconnect_timeout of 2.5 s and 8 attempts allowed: at
    # most three attempts fit when each waits the second it was asked to (the backoff alone, 0.05 s to 0.8 s apart,
    # made six or more).
    with RefusingServer("503_1s") as server:
        live, offline = play(driver, server.target, scenario_for(reconnect_timeout="2.5s"), tmp_path / "rec")
    seen = server.answered
    refused = len(seen) - 1
    assert seen == ["drop"] + ["503_1s"] * refused and 1 <= refused <= 3, seen
    for run in (live, offline):
        [chat] = run.results
        assert (chat.outcome, chat.note, chat.reconnect_attempts, chat.reconnect_failures) == (
            Outcome.INCOMPLETE, RECONNECT_FAILED_NOTE, refused, refused), (chat.outcome, chat.note)


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_retry_after_of_zero_is_tried_again_and_resumes(tmp_path, driver):
    with RefusingServer("429_0s", refusals=1) as server:
        live, offline = play(driver, server.target, scenario_for(), tmp_path / "rec")
    seen = server.answered
    assert seen == ["drop", "429_0s", "served"], seen
    for run in (live, offline):
        [chat] = run.results
        assert (chat.outcome, chat.reconnects, chat.reconnect_attempts, chat.reconnect_failures) == (
            Outcome.PASSED, ["resumed"], 2, 1), (chat.outcome, chat.note, chat.error)


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_retry_after_that_is_no_number_is_the_backoffs_alone(tmp_path, driver):
    """A hostile server's Retry-After holding a byte read as a superscript digit ("\xb2"): no wait it asks for, the
    client's own backoff decides, the attempt retried and the run resumed, live and in `check`. FAILED before: a
    ValueError out of the header's parse (str.isdigit takes "²" for a digit, float() does not)."""
    with RefusingServer("429_sup2", refusals=1) as server:
        live, offline = play(driver, server.target, scenario_for(), tmp_path / "rec")
    assert server.answered == ["drop", "429_sup2", "served"], server.answered
    for run in (live, offline):
        [chat] = run.results
        assert (chat.outcome, chat.reconnects, chat.reconnect_attempts, chat.reconnect_failures) == (
            Outcome.PASSED, ["resumed"], 2, 1), (chat.outcome, chat.note, chat.error)


@pytest.mark.parametrize(("value", "seconds"), [
    ("7", 7.0), (" 0 ", 0.0), ("99999999", MAX_RETRY_AFTER), ("-3", None), ("1.5", None), ("soon", None), ("", None),
    ("\u00b2", None), ("\u0663", None), ("\uff17", None),  # digits to str.isdigit, none to RFC 9110 (ASCII DIGIT)
    (None, None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("x" * 100, None),
])
def test_retry_after_values(value, seconds):
    assert parse_retry_after(value) == seconds


def test_retry_after_dates_are_read_against_now():
    now = time.time()
    assert parse_retry_after(email.utils.formatdate(now + 120, usegmt=True), now) == pytest.approx(120, abs=1)
    assert parse_retry_after(email.utils.formatdate(now + 10**8, usegmt=True), now) == MAX_RETRY_AFTER


class RefusingSSEServer(RefusingServer):
    """netra over SSE (a dialect of the user's own, with a resume): the first POST is answered with a stream of two
    events of its run that then ends (the run lost mid-stream: the client resumes it); every later POST (the resume)
    is answered HTTP 401."""

    async def _handle(self, reader: Reader, writer: Writer) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            body = json.loads(await reader.readexactly(length))
            self.received.append(body)
            if len(self.answered) == 0:
                self.answered.append("drop")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
                             b"Connection: close\r\n\r\n")
                for f in run_frames(body["payload"]["message_id"])[:2]:
                    writer.write(b"data: " + f + b"\n\n")
                await writer.drain()
                return
            self.answered.append(self.how)
            await REFUSALS[self.how](reader, writer, head)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    @property
    def target(self) -> Target:
        netra = load_profile("netra")
        profile = netra.model_validate({**netra.model_dump(), "name": "netra-sse", "transport": "sse", "path": ""})
        return Target(url=f"http://127.0.0.1:{self.port}/chat", profile=profile, name="raw-sse")


@pytest.mark.parametrize("how", ["http401", "http403"])
@pytest.mark.parametrize("driver", ["asyncio", "sync"])
def test_an_sse_resume_refused_for_the_credentials_is_not_tried_again(tmp_path, driver, how):
    # Over SSE the resume's request is the reconnect: answered 401/403, it is not sent again; the chat an `error`,
    # auth_failed, live and in check (it was `incomplete`, "the run could not be resumed", and in check "no resume of
    # the run was recorded").
    with RefusingSSEServer(how) as server:
        live, offline = play(driver, server.target, scenario_for(), tmp_path / "rec")
    assert server.answered == ["drop", how], server.answered
    assert [m["type"] for m in server.received] == ["user_message", "resume"], server.received
    [chat] = live.results
    [judged] = offline.results
    assert (chat.outcome, chat.error_kind) == (judged.outcome, judged.error_kind) == (Outcome.ERROR, "auth_failed"), (
        chat.outcome, chat.error, chat.note, judged.outcome, judged.error, judged.note)
