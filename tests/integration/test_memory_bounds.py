"""Memory bounded in bytes against a hostile server, measured on a real `chatprobe run` process: 100 events with 4 MB
fields, or 300 fat RESUME_UNKNOWN_RUN frames, leave it under a few hundred MB and the chat failed, never passed."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading

import pytest
from websockets.asyncio.server import serve

WELCOME = json.dumps({"type": "connection_established", "data": {"connection_id": "c", "user_id": "u"}})
BIG = 4_000_000  # under the 4 MiB frame limit: the frame is taken, its field is what is too big
LIMIT_KB = 250 * 1024  # "a few hundred MB" of peak RSS for the whole process (about 80 MB seen)
# Runs the command as its only child and prints that child's peak RSS (ru_maxrss of RUSAGE_CHILDREN) last on stderr.
MEASURE = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
           "print(f'peak_kb={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr); "
           "sys.exit(p.returncode)")


def fat_events(mid: str) -> list[str]:
    frames = [json.dumps({"type": "agent_started", "run_id": "r1", "seq": 1, "payload": {"message_id": mid}})]
    for seq in range(2, 102):  # 400 MB of fields: kept whole, well past LIMIT_KB
        frames.append(json.dumps({"type": "partial_result", "run_id": "r1", "seq": seq,
                                  "payload": {"timestamp": "x" * BIG, "content": "y"}}))
    frames.append(json.dumps({"type": "agent_completed", "run_id": "r1", "seq": 102, "payload": {}}))
    return frames


def fat_resume_errors(mid: str) -> list[str]:
    started = json.dumps({"type": "agent_started", "run_id": "r1", "seq": 1, "payload": {"message_id": mid}})
    err = json.dumps({"type": "error_message", "payload": {"error_code": "RESUME_UNKNOWN_RUN",
                                                           "run_id": "r" * BIG, "error_message": "m" * 1000}})
    return [started] + [err] * 300 + [json.dumps({"type": "agent_completed", "run_id": "r1", "seq": 2})]


class Server:
    """A raw WebSocket server on its own loop thread that answers the first chat with `frames(message_id)`."""

    def __init__(self, frames):
        self.frames = frames
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0

    async def handler(self, ws):
        await ws.send(WELCOME)
        msg = json.loads(await ws.recv())
        for frame in self.frames(msg["payload"]["message_id"]):
            await ws.send(frame)
        await ws.wait_closed()

    def __enter__(self):
        async def start():
            self.server = await serve(self.handler, "127.0.0.1", 0, compression=None, max_size=None)
            self.port = self.server.sockets[0].getsockname()[1]
            self.ready.set()

        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(start(), self.loop)
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc):
        async def stop():
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.mark.parametrize("frames, rule", [(fat_events, "R12"), (fat_resume_errors, None)])
def test_a_flood_of_fat_fields_costs_bounded_memory_and_fails_the_chat(tmp_path, frames, rule):
    scenario = tmp_path / "one.yaml"
    scenario.write_text("name: one\nexpect: {deadline: 60s, settle: 0.1s}\n")
    out = tmp_path / "r.json"
    with Server(frames) as server:
        proc = subprocess.Popen([sys.executable, "-c", MEASURE, sys.executable, "-m", "harness", "run", str(scenario),
                                 "--target",
                                 f"ws://127.0.0.1:{server.port}/ws", "--json", str(out), "-q"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "NO_COLOR": "1", "CHATPROBE_TOKEN": "t"})
        try:
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    peak_kb = int(stderr.decode().strip().splitlines()[-1].rpartition("peak_kb=")[2])
    print(f"peak RSS {peak_kb // 1024} MB")
    assert peak_kb < LIMIT_KB, f"peak RSS {peak_kb // 1024} MB"
    assert proc.returncode == 1, stdout.decode() + stderr.decode()
    (scenario_doc,) = json.loads(out.read_text())["scenarios"]
    (chat,) = scenario_doc["chats"]
    assert chat["outcome"] != "passed"
    if rule:
        assert any(v["rule"] == rule and "timestamp" in v["reason"] for v in chat["violations"])
    assert len(out.read_bytes()) < 20 * 1024 * 1024  # the report is proportional to what it shows


def test_a_server_that_stops_reading_and_floods_pings_does_not_outlive_max_duration(tmp_path):
    """Pongs owed to a server that never reads are not buffered without bound, and the run ends at its deadline."""
    async def handler(ws):
        await ws.send(WELCOME)
        await ws.recv()  # the chat's message; then never read again
        ping = json.dumps({"type": "ping", "data": "x" * 60_000})
        while True:
            await ws.send(ping)

    class PingServer(Server):
        async def handler(self, ws):
            await handler(ws)

    scenario = tmp_path / "one.yaml"
    scenario.write_text("name: one\nexpect: {deadline: 60s}\n")
    with PingServer(None) as server:
        proc = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "harness", "run", str(scenario),
                               "--target", f"ws://127.0.0.1:{server.port}/ws", "--max-duration", "2s"],
                              capture_output=True, timeout=30,  # a hang fails here
                              env={**os.environ, "NO_COLOR": "1", "CHATPROBE_TOKEN": "t"})
    peak_kb = int(proc.stderr.decode().strip().splitlines()[-1].rpartition("peak_kb=")[2])
    assert proc.returncode == 1, proc.stdout.decode() + proc.stderr.decode()
    assert peak_kb < LIMIT_KB
    assert "stopped early: its max_duration" in proc.stdout.decode()
    assert "Traceback" not in proc.stderr.decode() and "never retrieved" not in proc.stderr.decode(), proc.stderr


@pytest.mark.parametrize("compression", ["none", "deflate"])  # picows, and the websockets client (deflate)
def test_a_server_that_floods_websocket_pings_and_reads_nothing_does_not_grow_the_unsent_pongs(tmp_path, compression):
    """WebSocket pings from a peer that never reads: the pongs owed queue up in the client's write buffer; past a
    bound they go unanswered, so the process stays small, and the run ends at its deadline."""
    import base64
    import hashlib

    ping = b"\x89\x7d" + b"p" * 125  # a ping frame with the largest control payload (125 bytes)
    burst = ping * 8192  # ~1 MB per write

    async def raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        welcome = WELCOME.encode()
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + b"\x81" + bytes([len(welcome)]) + welcome)
        try:
            while True:  # never reads again: the client's pongs pile up in its own buffers
                writer.write(burst)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    server = asyncio.run_coroutine_threadsafe(asyncio.start_server(raw, "127.0.0.1", 0), loop).result(10)
    port = server.sockets[0].getsockname()[1]
    scenario = tmp_path / "one.yaml"
    scenario.write_text(f"name: one\ncompression: {compression}\nexpect: {{deadline: 60s}}\n")
    try:
        proc = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "harness", "run", str(scenario),
                               "--target", f"ws://127.0.0.1:{port}/ws", "--max-duration", "3s"],
                              capture_output=True, timeout=60,  # a hang fails here
                              env={**os.environ, "NO_COLOR": "1", "CHATPROBE_TOKEN": "t"})
    finally:
        server.close()
        loop.call_soon_threadsafe(loop.stop)
    peak_kb = int(proc.stderr.decode().strip().splitlines()[-1].rpartition("peak_kb=")[2])
    print(f"peak RSS {peak_kb // 1024} MB")
    assert proc.returncode == 1, proc.stdout.decode() + proc.stderr.decode()
    assert peak_kb < 120 * 1024, f"peak RSS {peak_kb // 1024} MB"
    assert "Traceback" not in proc.stderr.decode(), proc.stderr.decode()
