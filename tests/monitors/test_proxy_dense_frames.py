"""A hostile client of `chatprobe proxy` sending messages within --max-size (4 MiB) made of millions of tiny JSON values
(`[0,0,…]`, `{"a":[[],[],…]}`): the proxy parses a client's message to find its chat, and such a parse held its event
loop, every other user's relay with it, for most of a second per message. Now a message of more than
profiles.MAX_CLIENT_STRUCTURE JSON structural characters is never parsed: the proxy refuses it as it refuses a frame
over --max-size (1009 to the client, never passed on, counted bad_request), and every other user's chat passes. Real
processes over real sockets on 127.0.0.1: agentsim, the proxy, a raw hostile client written here and the websockets
client for the others. Every wait has a deadline; nothing is timed."""
from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys

from websockets.asyncio.client import connect

from harness.events import Outcome
from harness.transports.websocket import DENSE_ERROR, TOO_DENSE
from tests.integration.hostile_ws import read_frame
from tests.profiles.test_client_structure import DENSE

from .procs import ROOT, agentsim_process, proxy_process
from .test_proxy_unjudged import outcomes, poll, unjudged, value

UPGRADE = ("GET /ws?user={user} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
def masked_text(payload: bytes) -> bytes:
    """A client's text frame, masked with a zero key (the payload as it is), of any length."""
    n = len(payload)
    size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n) if n < 65536 else \
        bytes([0x80 | 127]) + struct.pack("!Q", n)
    return bytes([0x81]) + size + b"\0\0\0\0" + payload


def chat(user: str, n: int) -> dict:
    return {"type": "user_message", "payload": {"content": f"What is 17 * {n}?", "thread_id": f"t-{user}-{n}",
                                                "message_id": f"m-{user}-{n}"}}


async def close_of(reader: asyncio.StreamReader) -> tuple[int, str]:
    """The server frames read (unmasked) until the close frame: its code and reason."""
    while True:
        opcode, data = await read_frame(reader)
        if opcode == 8:
            return struct.unpack("!H", data[:2])[0], data[2:].decode()


async def hostile(port: int, user: str, dense: bytes) -> tuple[int, str]:
    """Upgrade, send a chat and, in the same write, a dense message: the close the proxy answered with."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(60):
            writer.write(UPGRADE.format(user=user).encode())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            writer.write(masked_text(json.dumps(chat(user, 0)).encode()) + masked_text(dense))
            await writer.drain()
            return await close_of(reader)
    finally:
        writer.transport.abort()


USERS = 4  # other users, each with CHATS chats one after another, while the hostile clients send
CHATS = 3


async def user(port: int, name: str) -> list[str]:
    """CHATS chats on one connection through the proxy: the terminal frame's type of each."""
    ends = []
    async with asyncio.timeout(60):
        async with connect(f"ws://127.0.0.1:{port}/ws?user={name}", open_timeout=10, ping_interval=None,
                           close_timeout=2, max_size=None) as ws:
            assert json.loads(await ws.recv())["type"] == "connection_established"
            for n in range(1, CHATS + 1):
                await ws.send(json.dumps(chat(name, n)))
                while (kind := json.loads(await ws.recv())["type"]) not in ("agent_completed", "agent_error",
                                                                            "error_message"):
                    pass
                ends.append(kind)
    return ends


async def test_a_client_message_too_dense_to_parse_is_refused_and_every_other_users_chat_passes(tmp_path):
    """Each hostile client sends a chat and a ~4 MiB message of tiny values: the proxy closes it 1009 "message too
    dense" without parsing or passing the message on (the upstream is told 1001, the client is gone), counts it
    bad_request, and judges its chat (as one its client left, unless its run ended first); the other users' chats
    all pass meanwhile, the counters add up (chats started = judged + client rejections + unjudged + in flight), and
    `chatprobe check` of the recording judges the same chats. FAILED on the code before: the message was parsed
    (0.3-0.7 s of the proxy's event loop each) and passed on to the upstream, which closed 1009 for its own size
    limit; nothing was counted."""
    record = tmp_path / "rec"
    async with agentsim_process() as url, proxy_process(url, tmp_path, "--record", str(record), "--record-all", "-v",
                                                        metrics=True) as p:
        async with asyncio.timeout(120):
            hostiles = asyncio.gather(*(hostile(p.port, f"hostile-{name}", text) for name, text in DENSE.items()))
            others = asyncio.gather(*(user(p.port, f"user-{i}") for i in range(USERS)))
            closes, ends = await asyncio.gather(hostiles, others)
            started = len(DENSE) + USERS * CHATS
            samples = await poll(p, lambda s: sum(outcomes(s).values()) >= started)
    assert closes == [(1009, TOO_DENSE)] * len(DENSE), closes
    assert ends == [["agent_completed"] * CHATS] * USERS, ends
    assert outcomes(samples) == {**{o.value: 0.0 for o in Outcome}, Outcome.PASSED.value: started}, samples
    judged = (sum(outcomes(samples).values()) + value(samples, "chatprobe_chats_in_flight")
              + value(samples, "chatprobe_client_rejections_total") + sum(unjudged(samples).values()))
    assert judged == started, samples
    # Only the hostile clients' chats may be left (one whose run ended while its 4 MiB came, 16 KiB a read, was not)
    assert value(samples, "chatprobe_chats_abandoned_total") <= len(DENSE), samples
    assert value(samples, "chatprobe_proxy_refused_connections_total", reason="bad_request") == len(DENSE), samples
    assert not any(v for (name, _), v in samples.items() if name == "chatprobe_rule_violations_total"), samples
    err = p.err.read_text()
    assert "Traceback" not in err, err
    assert err.count("closed by client (to the client 1009, to the upstream 1001)") == len(DENSE), err
    assert DENSE_ERROR in err, err  # the refusal's line (a line a minute), naming the bound, never the message
    checked = subprocess.run([sys.executable, "-m", "harness", "check", str(record), "--json",
                              str(tmp_path / "check.json")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    stats = json.loads((tmp_path / "check.json").read_text())["scenarios"][0]["stats"]
    assert stats["chats"] == started and stats["outcomes"]["passed"] == started, stats
    assert not stats["violations"], stats
