"""How long a client's message of millions of tiny JSON values holds `chatprobe proxy`'s event loop: agentsim and the
proxy in child processes (of `--root`, a checkout: this one by default, so that another checkout's proxy can be
measured the same way), a watching user's connection through the proxy pinging it every 2 ms (the proxy answers a
ping in its event loop: a ping's round trip is how long the loop kept it waiting), and a hostile client sending
`--rounds` messages of each shape (~4 MiB, within the default --max-size), one after another, each on a new
connection, waiting for that connection's end. Printed per shape: the longest ping round trip while its messages
went through, and their median; nothing is asserted.

    .venv/bin/python bench/proxy_dense_frames.py [--rounds 5] [--root PATH]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import statistics
import struct
import sys
import time
from pathlib import Path

from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[1]
PROXY_MAIN = "import sys; from monitors.proxy import main; sys.exit(main(sys.argv[1:]))"
SIZE = 4 * 1024 * 1024 - 64  # within the proxy's default --max-size (4 MiB): no frame the byte cap refuses


def filled(head: bytes, unit: bytes, tail: bytes) -> bytes:
    """`head`, `unit` as many times as SIZE holds, `tail`: a JSON text of SIZE bytes at most (tests use it too)."""
    return head + unit * ((SIZE - len(head) - len(tail)) // len(unit)) + tail


SHAPES = {
    "[0,0,...]": filled(b"[", b"0,", b"0]"),
    '{"a":[[],[],...]}': filled(b'{"a":[', b"[],", b"[]]}"),
    "[0.5,0.5,...]": filled(b"[", b"0.5,", b"0.5]"),
    "4 MiB of text (a chat)": filled(b'{"type":"user_message","payload":{"content":"', b"x", b'"}}'),
    # a user's pasted CSV: commas, escaped quotes and line ends inside the message's one string (not its structure)
    "4 MiB of pasted CSV (a chat)": filled(b'{"type":"user_message","payload":{"content":"', b'1,a,\\"b, c\\"\\n',
                                           b'"}}'),
}


async def child(root: Path, args: list[str], pattern: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, *args, cwd=root, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        while line := (await proc.stdout.readline()).decode():
            if match := re.search(pattern, line):
                return proc, match.group(1)
    raise SystemExit(f"{args[:2]} exited before listening")


def masked_text(payload: bytes) -> bytes:
    n = len(payload)
    size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n) if n < 65536 else \
        bytes([0x80 | 127]) + struct.pack("!Q", n)
    return bytes([0x81]) + size + b"\0\0\0\0" + payload


async def hostile(port: int, message: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(60):
            writer.write(b"GET /ws?user=hostile HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) +
                         b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            writer.write(masked_text(message))
            await writer.drain()
            while await reader.read(65536):  # until the proxy ends the connection
                pass
    except (OSError, TimeoutError):
        pass
    finally:
        writer.transport.abort()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args()
    sim, url = await child(args.root, ["-m", "agentsim", "--port", "0", "--no-auth"],
                           r"listening on (ws://127\.0\.0\.1:\d+)")
    proxy, port = await child(args.root, ["-c", PROXY_MAIN, "--upstream", url, "--listen", "127.0.0.1:0"],
                              r"listening on ws://127\.0\.0\.1:(\d+)")
    try:
        async with connect(f"ws://127.0.0.1:{port}/ws?user=watcher", ping_interval=None) as ws:
            await ws.recv()  # the welcome
            print(f"{args.root}: {args.rounds} messages of each shape, ~{SIZE / 2**20:.0f} MiB each")
            print(f"{'shape':28} {'longest ping':>14} {'median ping':>12}")
            for shape, message in SHAPES.items():
                rtts: list[float] = []
                async def rounds(message: bytes = message) -> None:
                    for _ in range(args.rounds):  # one after another: each message's hold seen alone
                        await hostile(int(port), message)

                sending = asyncio.ensure_future(rounds())
                while not sending.done():
                    t = time.perf_counter()
                    await (await ws.ping())
                    rtts.append(time.perf_counter() - t)
                    await asyncio.sleep(0.002)  # wait-ok: the ping interval
                await sending
                print(f"{shape:28} {max(rtts) * 1000:11.1f} ms {statistics.median(rtts) * 1000:9.2f} ms")
    finally:
        for p in (proxy, sim):
            p.kill()
            await p.wait()


if __name__ == "__main__":
    asyncio.run(main())
