"""The Locust user's client (gevent_client.SyncSession, run here on plain threads as the sync client is) against
hostile raw servers, judged as `chatprobe run`'s asyncio Session judges the same server: the same verdict, no wait
without an end; and real Locust against such servers (its request stats add up to chatprobe's count, the secret
never reaches what it prints or writes). Raw servers on 127.0.0.1 in threads, written here.

Failing on the code before this file was added (each marked `# FAILED before the fix`):
- a server that never reads held a sync chat's send forever (no verdict, the chat's deadline ignored);
- a server streaming fragments past max_size (or bad UTF-8) and never closing: the sync client's 1009/1007 close
  was not reported until the server closed TCP, so the chat ended at its deadline (R9, R10) where `chatprobe run`
  says R12 at once, and the reader went on reading the endless stream (under Locust too);
- SIGTERM to a headless Locust run (the locustfile's shape makes Locust install its own handler only after the run):
  the process died of the signal, with no summary, exit code, CSV or HTML;
- ConnectSettings' repr showed the bearer token.
Not failing before (kept as guards): a token the server echoes reaches none of Locust's output or reports.
"""
from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.checker import ChatResult, Expectations
from harness.client import Session
from harness.events import DEFAULT_REQUIRED
from harness.flow import ChatOptions
from harness.gevent_client import SyncSession
from harness.profiles import load_profile
from harness.sinks import Sink
from harness.targets import Target

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
WELCOME = json.dumps({"type": "connection_established", "data": {"connection_id": "c", "user_id": "u"}}).encode()
EXP = Expectations(required=frozenset(DEFAULT_REQUIRED), first_event_limit=1.5, deadline=1.5)
OPTIONS = ChatOptions(settle=0.05)
BIG = "x" * (24 * 1024 * 1024)  # more than loopback's socket buffers take from a server that never reads


# -- a raw WebSocket server, one thread per connection -------------------------------------------------------------

def ws_frame(payload: bytes, opcode: int = 1, fin: bool = True) -> bytes:
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes([first, n])
    elif n < 65536:
        head = bytes([first, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, 127]) + n.to_bytes(8, "big")
    return head + payload


def upgrade(conn: socket.socket) -> bytes:
    """Answer the client's upgrade; returns the request head ("" when the client left first)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return b""
        data += chunk
    key = next(line.split(b":", 1)[1].strip() for line in data.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key"))
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    return data


class RawServer:
    def __init__(self, behaviour: Callable[[socket.socket, threading.Event], None]) -> None:
        self.behaviour = behaviour
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.behaviour(conn, self.stop)
        except OSError:
            pass

    def __enter__(self) -> str:
        self.thread.start()
        return f"ws://127.0.0.1:{self.port}/ws"

    def __exit__(self, *exc) -> None:
        self.stop.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close() alone leaves the thread in it)
        except OSError:
            pass
        self.listener.close()
        self.thread.join(5)
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


def never_reads(conn: socket.socket, stop: threading.Event) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    upgrade(conn)
    conn.sendall(ws_frame(WELCOME))
    stop.wait(60)


def pings_and_never_reads(conn: socket.socket, stop: threading.Event) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    upgrade(conn)
    conn.sendall(ws_frame(WELCOME))
    while not stop.is_set():
        conn.sendall(ws_frame(b"p" * 100, opcode=9))


def endless_fragments(conn: socket.socket, stop: threading.Event) -> None:
    """One message that never ends: fragments past any max_size; never answers a close, never closes TCP."""
    upgrade(conn)
    conn.sendall(ws_frame(WELCOME))
    conn.recv(65536)  # the chat's message
    conn.sendall(ws_frame(b'{"type": ', fin=False))
    while not stop.is_set():
        conn.sendall(ws_frame(b"x" * 65535, opcode=0, fin=False))


def bad_utf8_then_streams(conn: socket.socket, stop: threading.Event) -> None:
    """A text frame that is not UTF-8, then events on and on; never answers a close, never closes TCP."""
    upgrade(conn)
    conn.sendall(ws_frame(WELCOME))
    conn.recv(65536)
    conn.sendall(ws_frame(b'{"type": "agent_started", "x": "\xff\xfe"}'))
    while not stop.is_set():
        conn.sendall(ws_frame(json.dumps({"type": "agent_thinking", "payload": {"x": "y" * 1000}}).encode()))


# -- the two drivers on the same server ---------------------------------------------------------------------------

def target(url: str) -> Target:
    return Target(url=url, profile=load_profile("netra"), name="raw")


# How long a sync chat's thread is waited for: a chat that hangs, not one on a slow machine (its deadline is 1.5 s).
HANG = 30.0


def sync_chat(url: str, message: str) -> ChatResult | None:
    """The sync client's verdict, on a thread joined with a deadline (None: no verdict within HANG)."""
    out: list[ChatResult] = []

    def play() -> None:
        session = SyncSession(target(url), "u", "sync", Sink(), connect_timeout=3)
        try:
            out.append(session.chat(message, EXP, OPTIONS))
        finally:
            session.close()

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    thread.join(HANG)
    return out[0] if out else None


def async_chat(url: str, message: str) -> ChatResult:
    async def play() -> ChatResult:
        session = Session(target(url), "u", "async", Sink(), connect_timeout=3)
        try:
            return await session.chat(message, EXP, OPTIONS)
        finally:
            await session.close()

    return asyncio.run(asyncio.wait_for(play(), 20))


def verdict(result: ChatResult) -> tuple[str, str | None, tuple[str, ...]]:
    return result.outcome.value, result.error_kind, tuple(sorted({v.rule.value for v in result.violations}))


# FAILED before the fix (both): the sync chat never returned (a blocking send with no deadline).
@pytest.mark.parametrize("behaviour", [never_reads, pings_and_never_reads], ids=["never_reads", "pings_never_reads"])
def test_a_server_that_never_reads_gets_a_verdict_at_the_chats_deadline_as_under_run(behaviour):
    with RawServer(behaviour) as url:
        expected = async_chat(url, BIG)
    with RawServer(behaviour) as url:
        result = sync_chat(url, BIG)
    assert result is not None, "the sync chat is still sending to a server that never reads"
    assert verdict(result) == verdict(expected), (result, expected)


# FAILED before the fix (both): R9 and R10 at the deadline instead of R12 at once.
@pytest.mark.parametrize("behaviour", [endless_fragments, bad_utf8_then_streams], ids=["over_max_size", "bad_utf8"])
def test_a_frame_the_client_fails_ends_the_chat_at_once_as_under_run(behaviour):
    with RawServer(behaviour) as url:
        expected = async_chat(url, "hi")
    with RawServer(behaviour) as url:
        result = sync_chat(url, "hi")
    assert result is not None
    # At once: a verdict at the deadline rather than when the frame came has R9 and R10 (the async client's has not).
    assert "R12" in verdict(expected)[2] and not {"R9", "R10"} & set(verdict(expected)[2]), expected
    assert verdict(result) == verdict(expected), (result, expected)


# -- real Locust ---------------------------------------------------------------------------------------------------

SUMMARY_CHATS = "chats, "


def locust(url: str, tmp_path: Path, *extra: str, env: dict[str, str] | None = None,
           run_time: str = "3s") -> tuple[int, str, Path]:
    import os

    prefix = tmp_path / "lc"
    exe = Path(sys.executable).with_name("locust")
    argv = [str(exe), "-f", str(ROOT / "scenarios" / "locustfile.py"), "--headless", "-u", "2", "-r", "2",
            "--run-time", run_time, "--host", url, "--chatprobe-scenario", "basic", "--csv", str(prefix),
            "--html", str(tmp_path / "report.html"), "--exit-code-on-error", "0", "--stop-timeout", "0", *extra]
    proc = subprocess.run(argv, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=60)
    return proc.returncode, proc.stdout + proc.stderr, prefix


def csv_rows(prefix: Path, kind: str) -> list[dict[str, str]]:
    with open(f"{prefix}_{kind}.csv", newline="") as f:
        return list(csv.DictReader(f))


# FAILED before the fix: the Locust chats failed as R9/R10 timeouts, not R12 as under `chatprobe run`.
@pytest.mark.e2e
def test_locust_judges_a_frame_over_max_size_as_run_does_and_its_counts_add_up(tmp_path: Path):
    with RawServer(endless_fragments) as url:
        code, out, prefix = locust(url, tmp_path, "--chatprobe-auth", "none")
    assert code == 1, out[-3000:]
    chat = next(r for r in csv_rows(prefix, "stats") if r["Type"] == "chat")
    summary = next(line for line in out.splitlines() if line.startswith("basic: ") and SUMMARY_CHATS in line)
    chats = int(summary.split()[1])
    assert chats > 0 and int(chat["Request Count"]) == chats == int(chat["Failure Count"]), (chat, summary)
    failures = csv_rows(prefix, "failures")
    assert failures and all("R12" in r["Error"] for r in failures if r["Method"] == "chat"), failures
    assert "Traceback" not in out, out[out.index("Traceback") - 500:][:4000]


def echoes_the_credentials(conn: socket.socket, stop: threading.Event) -> None:
    """A server that repeats the client's Authorization header back everywhere it can: an error event's message, a
    close reason."""
    head = upgrade(conn)
    auth = next((line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                 if line.lower().startswith(b"authorization")), b"none")
    conn.sendall(ws_frame(WELCOME))
    conn.recv(65536)
    error = {"type": "agent_error", "run_id": "r1", "seq": 1,
             "payload": {"error_message": "bad credentials " + auth.decode(), "error_code": auth.decode()}}
    conn.sendall(ws_frame(json.dumps(error).encode()))
    conn.sendall(ws_frame((4000).to_bytes(2, "big") + auth[:100], opcode=8))
    stop.wait(5)


@pytest.mark.e2e
def test_a_token_the_server_echoes_reaches_no_locust_output_or_report(tmp_path: Path):
    secret = "sEcReT" + "q" * 40
    with RawServer(echoes_the_credentials) as url:
        code, out, prefix = locust(url, tmp_path, env={"CHATPROBE_TOKEN": secret})
    assert code in (0, 1), out[-3000:]
    assert secret not in out
    for path in tmp_path.iterdir():
        assert secret not in path.read_text(errors="replace"), path.name


class Lines:
    """A subprocess's merged output, read line by line on a thread; `wait(pattern)` returns the first match or None
    at the deadline (an event wakes the waiter per line: no sleep)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines, self.cond = proc, [], threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)
            self.cond.notify_all()

    def wait(self, pattern: str, timeout: float):
        import re

        deadline, seen = time.monotonic() + timeout, 0
        with self.cond:
            while True:
                for line in self.lines[seen:]:
                    if line is None:
                        return None
                    if (m := re.search(pattern, line)) is not None:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or not self.cond.wait(left):
                    if time.monotonic() >= deadline:
                        return None

    def text(self) -> str:
        with self.cond:
            return "".join(line for line in self.lines if line is not None)


def start(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, Lines]:
    import os

    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    return proc, Lines(proc)


# FAILED before the fix: the process died of the signal (exit -15/143) with no summary, exit code or reports.
@pytest.mark.e2e
def test_sigterm_ends_a_headless_locust_run_with_its_verdict_and_counts_that_add_up(tmp_path: Path):
    import secrets
    import signal

    secret = secrets.token_urlsafe(32)
    sim, sim_out = start([sys.executable, "-m", "agentsim", "--port", "0", "--seed", "3", "--think", "0.002",
                          "--tool-latency", "0.001"], {"AGENTSIM_JWT_SECRET": secret})
    lc = None
    try:
        found = sim_out.wait(r"agentsim listening on (ws://\S+)", 20)
        assert found is not None, sim_out.text()
        prefix = tmp_path / "term"
        lc, out = start([str(Path(sys.executable).with_name("locust")), "-f", str(ROOT / "scenarios" / "locustfile.py"),
                         "--headless", "-u", "3", "-r", "3", "--run-time", "60s", "--host", found.group(1),
                         "--chatprobe-scenario", "basic", "--csv", str(prefix), "--html", str(tmp_path / "term.html"),
                         "--exit-code-on-error", "0"],
                        {"CHATPROBE_JWT_SECRET": secret})
        assert out.wait(r"^chat\s+basic\s+[1-9]", 30) is not None, out.text()[-3000:]  # chats are being judged
        lc.send_signal(signal.SIGTERM)
        code = lc.wait(30)
        text = out.text()
        assert code == 0, (code, text[-3000:])
        summary = next((line for line in text.splitlines() if line.startswith("basic: ") and " chats, " in line), None)
        assert summary is not None and "objectives met" in summary, text[-3000:]
        chat = next(r for r in csv_rows(prefix, "stats") if r["Type"] == "chat")
        assert int(chat["Request Count"]) == int(summary.split()[1]) > 0, (chat, summary)
        assert (tmp_path / "term.html").stat().st_size > 0
    finally:
        for proc in (lc, sim):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)


# FAILED before the fix: ConnectSettings' repr (what pytest -l, or a traceback with locals, shows of `s` in the
# clients' connect) carried the bearer token; TokenProvider's repr already hid it.
def test_the_settings_a_client_connects_with_never_show_the_token_in_their_repr():
    from harness.targets import TokenProvider

    secret = "tok-" + "z" * 40
    t = Target(url="ws://127.0.0.1:9/ws", profile=load_profile("netra"), name="raw",
               tokens=TokenProvider(token=secret))
    settings = t.settings_for("u", 1.0)
    assert settings.token == secret  # it is there to be sent
    assert secret not in repr(settings) and secret not in repr(t)
