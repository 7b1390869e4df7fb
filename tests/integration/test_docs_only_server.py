"""A netra server another team wrote from docs/protocol.md and README.md alone (tests/integration/docs_only_server.py),
judged on every road: `chatprobe run --target` (recorded), `chatprobe check` of that recording, `chatprobe proxy` in
front of it with a `run` through it, and `check` of the proxy's `--record`. Correct in each of its legal variants it
passes everywhere; each bug a real server ships is the rule the docs name for it, on every road alike."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import queue
import re
import secrets
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest

from harness.checker import ChatResult
from harness.cli import main
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.scenario import Scenario, load_scenario
from monitors.proxy import LiveChats, Proxy, start_proxy

from .docs_only_server import DocsServer
from .test_independent_servers import KeptSink, Verdict, chat_verdicts

pytestmark = pytest.mark.timeout(120)

SECRET_ENV = "DOCS28_JWT_SECRET"
PASS: Verdict = ("passed", ())


class InThread:
    """The server on an event loop of its own thread; start and stop bounded."""

    def __init__(self, server: DocsServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> InThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.__aenter__(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(asyncio.wait_for(self.server.__aexit__(), 5), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    value = secrets.token_urlsafe(32)
    monkeypatch.setenv(SECRET_ENV, value)
    return value


def scenario_file(tmp_path: Path, scenario: dict[str, Any] | str) -> str:
    if isinstance(scenario, str):
        return scenario
    sc = {"name": "docs-only", "users": 1, "connect_timeout": "3s", **scenario}
    sc["expect"] = {"deadline": "4s", "settle": "0.2s", **scenario.get("expect", {})}
    path = tmp_path / "scenario.yaml"
    path.write_text(json.dumps(sc))
    return str(path)


def roads(tmp_path: Path, secret: str, scenario: dict[str, Any] | str, *, variants: tuple[str, ...] = (),
          bug: str | None = None, extra: tuple[str, ...] = (), **knobs: Any) -> dict[str, list[Verdict]]:
    """Each chat's (outcome, rules) on the four roads; `run` and `check` of its recording exit alike."""
    named = scenario_file(tmp_path, scenario)
    live, offline, rec = tmp_path / "live.json", tmp_path / "offline.json", tmp_path / "rec"
    with InThread(DocsServer(secret, variants=variants, bug=bug, **knobs)) as hosted:
        code = main(["run", "--target", hosted.server.url, "--jwt-secret-env", SECRET_ENV, named, *extra,
                     "--record", str(rec), "--json", str(live), "-q"])
    assert code in (0, 1), code
    code2 = main(["check", str(rec), "--scenario", named, "--json", str(offline), "-q"])
    assert code2 == code, (code, code2)
    out: dict[str, list[Verdict]] = {}
    out["run"], stats = chat_verdicts(json.loads(live.read_text()))
    out["check"], _ = chat_verdicts(json.loads(offline.read_text()))
    out["proxy"] = behind_proxy(tmp_path, secret, named, stats["chats"], variants, bug, extra, knobs)
    proxy_rec = tmp_path / "proxy-rec"
    judged_again = tmp_path / "proxy-check.json"
    main(["check", str(proxy_rec), "--scenario", named, "--json", str(judged_again), "-q"])
    out["proxy-check"], _ = chat_verdicts(json.loads(judged_again.read_text()))
    return out


def behind_proxy(tmp_path: Path, secret: str, named: str, chats: int, variants: tuple[str, ...], bug: str | None,
                 extra: tuple[str, ...], knobs: dict[str, Any]) -> list[Verdict]:
    profile = load_profile("netra")
    if named.endswith(".yaml"):
        doc = json.loads(Path(named).read_text())
        sc = Scenario.model_validate(doc)
        # the user behind the proxy waits a little longer than the proxy's deadline (no tab closed first)
        doc["expect"]["deadline"] = sc.expect.deadline + 1
        played = tmp_path / "player.yaml"
        played.write_text(json.dumps(doc))
        player = str(played)
    else:
        sc = load_scenario(named)
        player = named
    kept = Kept()
    with InThread(DocsServer(secret, variants=variants, bug=bug, **knobs)) as hosted:
        live = LiveChats(profile, kept, sc.expectations(profile), "live", sc.expect.settle,
                         recorder=Recorder(tmp_path / "proxy-rec", keep_all=True))
        front = asyncio.run_coroutine_threadsafe(
            start_proxy(Proxy(hosted.server.url.rsplit("/", 1)[0], live), "127.0.0.1", 0), hosted.loop).result(10)
        try:
            port = front.sockets[0].getsockname()[1]
            code = main(["run", "--target", f"ws://127.0.0.1:{port}/ws", "--jwt-secret-env", SECRET_ENV, player,
                         *extra, "-q", "--json", str(tmp_path / "played.json")])
            assert code in (0, 1), code
            results = kept.wait_for(chats, 15)
        finally:
            hosted.loop.call_soon_threadsafe(front.close)
    return sorted((r.outcome.value, tuple(sorted(r.rule_counts()))) for r in results)


ALL = ("run", "check", "proxy", "proxy-check")


class Kept(KeptSink):
    """The proxy's verdicts, with the chats it counts as the client's doing (a rejected message) as verdicts too."""

    def client_rejected(self, result: ChatResult) -> None:
        self.chat_finished(result)

# -- the correct server, in each of its legal variants --------------------------------------------------------------

CORRECT = {
    "plain": (),
    "fragments_pings": ("fragment", "pings", "ws_pings"),
    "system_welcome_data_iso": ("system_welcome", "data_layout", "iso_time", "uuid_ids"),
    "flat_extra_fields": ("flat_layout", "extra_fields", "interleave_tools"),
    "unicode_escaped": ("unicode", "escaped_json", "fragment"),
    "big_frames": ("big", "unicode"),
    "close_after_terminal": ("close_after_terminal",),
    "idle_close": ("idle_close", "pings"),
    "alt_names_recoverable_error": ("alt_names", "recoverable_error", "data_layout"),
    "oldest_layout": ("oldest", "fragment"),
    "numeric_tool_call_ids": ("numeric_ids", "interleave_tools"),
    "restart_mid_run": ("restart_mid_run", "fragment", "pings"),
}


@pytest.mark.parametrize("variant", sorted(CORRECT))
def test_a_correct_server_passes_on_every_road(tmp_path, secret, variant):
    got = roads(tmp_path, secret, {"chats_per_user": 3, "expect": {"streaming": True}}, variants=CORRECT[variant])
    assert got == {way: [PASS] * 3 for way in ALL}, got


@pytest.mark.parametrize("name", ["basic", "probe", "abandonment", "reconnection", "concurrent"])
def test_the_built_in_scenarios_pass_on_every_road(tmp_path, secret, name):
    variants = ("fragment", "pings", "interleave_tools", "unicode", "escaped_json", "uuid_ids", "extra_fields")
    got = roads(tmp_path, secret, name, variants=variants, extra=("--auth", "subprotocol"))
    n = len(got["run"])
    assert got == {way: [PASS] * n for way in ALL}, got


def test_chats_interleaved_on_one_connection_pass_on_every_road(tmp_path, secret):
    got = roads(tmp_path, secret, {"chats_per_user": 4, "parallel_chats": 2, "users": 2},
                variants=("interleave_tools", "pings", "close_after_terminal", "flat_layout"))
    assert got == {way: [PASS] * 8 for way in ALL}, got


# -- chatprobe's own faults this server showed ---------------------------------------------------------------------

async def _raw_client(port: int, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client of raw bytes, so that it can leave a close frame unanswered (a busy tab)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n")
                 .encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def _masked(text: str) -> bytes:
    data, mask = text.encode(), os.urandom(4)
    n = len(data)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


async def _server_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked, unfragmented server frame: (opcode, payload)."""
    head = await asyncio.wait_for(reader.readexactly(2), 10)
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    return head[0] & 0x0F, await asyncio.wait_for(reader.readexactly(n), 10)


def _message(thread: str, message: str) -> str:
    return json.dumps({"type": "user_message", "payload": {"content": "What is 17 * 23?", "thread_id": thread,
                                                           "message_id": message}})


def test_a_message_crossing_the_servers_close_is_recorded_by_the_proxy_as_judged_live(tmp_path, secret):
    # The server writes its terminal event and its close frame in one write (a close once the connection idles,
    # legal: docs/protocol.md). The user's client sends its next message as it reads the terminal event, so the
    # message crosses the server's close (RFC 6455: never read), and the client, busy, answers the proxy's close
    # only late; it sends the message again on a new connection at once, which the proxy follows as the same chat.
    # The proxy wrote the close in its --record as of when its own closing handshake with the client was over (up to
    # CLOSE_TIMEOUT, 2 s, later), so `check` of that recording saw the message wait past its first-event limit on an
    # open connection (R9, incomplete) and its resend as a chat of its own: three chats, where the proxy saw two pass.
    sc = Scenario.model_validate({"name": "docs-only", "expect": {"first_event_limit": "1s", "deadline": "4s",
                                                                "settle": "0.1s"}})
    profile = load_profile("netra")
    kept = KeptSink()
    rec = tmp_path / "proxy-rec"
    token = pyjwt.encode({"sub": "u-28", "exp": int(time.time()) + 300}, secret, algorithm="HS256")
    with InThread(DocsServer(secret, variants=("close_after_terminal",))) as hosted:
        live = LiveChats(profile, kept, sc.expectations(profile), "live", sc.expect.settle, recorder=Recorder(rec))
        front = asyncio.run_coroutine_threadsafe(
            start_proxy(Proxy(hosted.server.url.rsplit("/", 1)[0], live), "127.0.0.1", 0), hosted.loop).result(10)
        port = front.sockets[0].getsockname()[1]

        async def user() -> None:
            reader, writer = await _raw_client(port, token)
            await _server_frame(reader)  # the welcome
            writer.write(_masked(_message("t-1", "m-1")))
            while b"agent_completed" not in (await _server_frame(reader))[1]:
                pass
            writer.write(_masked(_message("t-2", "m-2")))  # crosses the server's close
            await writer.drain()
            # the same message again on a new connection, at once; the first one's close is left unanswered
            reader2, writer2 = await _raw_client(port, token)
            await _server_frame(reader2)
            writer2.write(_masked(_message("t-2", "m-2")))
            while b"agent_completed" not in (await _server_frame(reader2))[1]:
                pass
            writer2.close()
            # the proxy gives up on the first connection's closing handshake and drops it
            while await asyncio.wait_for(reader.read(65536), 10):
                pass
            writer.close()

        try:
            asyncio.run(user())
            results = kept.wait_for(2, 15)
        finally:
            hosted.loop.call_soon_threadsafe(front.close)
    proxy = sorted((r.outcome.value, tuple(sorted(r.rule_counts()))) for r in results)
    assert proxy == [PASS, PASS], proxy
    judged_again = tmp_path / "proxy-check.json"
    main(["check", str(rec), "--json", str(judged_again), "-q", "--scenario", scenario_file(tmp_path, {
        "expect": {"first_event_limit": "1s", "deadline": "4s", "settle": "0.1s"}})])
    offline, _ = chat_verdicts(json.loads(judged_again.read_text()))
    assert offline == proxy, offline


# -- the bugs real servers ship, one at a time: the rule the docs name, on every road -------------------------------

BUGGY = {
    # a tool_completed never sent (its seq used): a lost seq, and a tool call left open at completion
    "drop_event": ("failed", ("R5", "R7")),
    # tool_completed before its tool_executing: out of order, and a close of a call not open (then one never closed)
    "reorder": ("failed", ("R5", "R7")),
    # another user's run's event on this connection
    "other_user": ("failed", ("R8",)),
    # the first event past first_event_limit (0.5 s here)
    "late_first": ("failed", ("R9",)),
    # one event sent twice under its seq
    "dup_seq": ("failed", ("R7",)),
    # a partial_result after agent_completed
    "after_terminal": ("failed", ("R4",)),
    # a fatal error_message naming the run, without an error_code; a fatal agent_error without one
    "error_no_code": ("failed", ("R13",)),
    "fatal_no_code": ("failed", ("R13",)),
    # an event in a binary frame: an R12, and the event missing from its run
    "binary_event": ("failed", ("R12", "R5", "R7")),
    # the connection dropped mid-run, and the run forgotten: the resume answered RESUME_UNKNOWN_RUN, no rule broken
    "drop_no_resume": ("incomplete", ()),
}


@pytest.mark.parametrize("bug", sorted(BUGGY))
def test_each_bug_is_the_rule_the_docs_name_on_every_road(tmp_path, secret, bug):
    outcome, rules = BUGGY[bug]
    got = roads(tmp_path, secret, {"expect": {"first_event_limit": "0.5s", "streaming": True}},
                variants=("fragment", "uuid_ids"), bug=bug, late_first=0.8)
    assert got == {way: [(outcome, tuple(sorted(rules)))] for way in ALL}, got


@pytest.mark.parametrize("variants", [("restart_mid_run", "interleave_tools"),
                                      ("restart_mid_run", "close_after_terminal", "escaped_json")],
                         ids=["restart", "restart_close_after_terminal"])
def test_interleaved_runs_resumed_after_a_server_restart_pass_on_every_road(tmp_path, secret, variants):
    # two runs in flight on a connection the server closes with 1012 mid-run: both resumed on the next one
    got = roads(tmp_path, secret, {"users": 2, "chats_per_user": 4, "parallel_chats": 2}, variants=variants)
    assert got == {way: [PASS] * 8 for way in ALL}, got


def test_an_idle_close_racing_the_next_message_passes_on_every_road(tmp_path, secret):
    # the server closes an idle connection (1000 or 1001) about when the client sends its next message after its
    # settle window: a message that crossed the close is sent again on a new connection
    got = roads(tmp_path, secret, {"users": 3, "chats_per_user": 4}, variants=("idle_close",),
                idle_close_after=0.2)
    assert got == {way: [PASS] * 12 for way in ALL}, got


def test_frames_near_the_size_limit_pass_on_every_road(tmp_path, secret):
    # three partial results of 3.9 MB each (the limit is 4 MiB), fragmented
    got = roads(tmp_path, secret, {"expect": {"deadline": "15s"}}, variants=("big", "fragment"), big_size=3_900_000)
    assert got == {way: [PASS] for way in ALL}, got


@pytest.mark.parametrize("bug", [None, "dup_seq"])
def test_the_proxy_command_in_front_of_it_agrees_with_run(tmp_path, secret, bug):
    # `chatprobe proxy` as users start it (a process of its own, --record-all), `run` through it, `check` of its
    # recording: the verdicts `run --target` gives the server directly
    named = scenario_file(tmp_path, {"chats_per_user": 2, "expect": {"streaming": True}})
    variants = ("fragment", "pings", "system_welcome", "close_after_terminal", "uuid_ids")
    expected = [(("failed", ("R7",)) if bug else PASS)] * 2
    rec = tmp_path / "proxy-rec"
    with InThread(DocsServer(secret, variants=variants, bug=bug)) as hosted:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness", "proxy", "--upstream", hosted.server.url.rsplit("/", 1)[0],
             "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--record", str(rec), "--record-all",
             "--deadline", "4s", "--settle", "0.2s", "--streaming"],
            env={**os.environ, "NO_COLOR": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        try:
            lines: queue.Queue[str] = queue.Queue()
            threading.Thread(target=lambda: lines.put(proc.stdout.readline() if proc.stdout else ""),
                             daemon=True).start()
            line = lines.get(timeout=30)
            found = re.search(r"listening on (\S+)", line)
            assert found, line
            code = main(["run", "--target", f"{found.group(1)}/ws", "--jwt-secret-env", SECRET_ENV, named, "-q",
                         "--json", str(tmp_path / "played.json")])
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
    assert code == (1 if bug else 0), code
    played, _ = chat_verdicts(json.loads((tmp_path / "played.json").read_text()))
    main(["check", str(rec), "--scenario", named, "--json", str(tmp_path / "proxy-check.json"), "-q"])
    judged, _ = chat_verdicts(json.loads((tmp_path / "proxy-check.json").read_text()))
    assert {"run": played, "proxy-check": judged} == {"run": expected, "proxy-check": expected}


def test_a_start_event_naming_only_the_thread_is_matched_to_its_chat_on_every_road(tmp_path, secret):
    # agent_started without the client's message_id, two chats in flight: the thread tells them apart
    got = roads(tmp_path, secret, {"users": 2, "chats_per_user": 4, "parallel_chats": 2},
                variants=("interleave_tools", "data_layout"), bug="no_message_id")
    assert got == {way: [PASS] * 8 for way in ALL}, got


def test_a_refusal_naming_the_later_message_is_that_chats_on_every_road(tmp_path, secret):
    # one run at a time per user: the second message in flight is refused (QUOTA_EXCEEDED naming its message_id),
    # an `error` chat, the first one's run going on (the proxy counts the refusal as the client's doing)
    got = roads(tmp_path, secret, {"chats_per_user": 2, "parallel_chats": 2}, variants=("quota", "pings"))
    assert got == {way: [("error", ()), PASS] for way in ALL}, got
