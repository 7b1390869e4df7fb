"""The floor for bench/vs_k6.py: a raw `websockets` client with no decoding and no checking.

USERS connections, each sending CHATS chats back to back and reading frames until the one naming agent_completed;
prints {"ok": N} (chats that ended) as its last line.

    python bench/bare_ws.py ws://127.0.0.1:PORT/ws 100 50 none [--uvloop]
"""
from __future__ import annotations

import asyncio
import json
import sys

import websockets

REQUEST = json.dumps({"type": "user_message", "payload": {"content": "what is 6*7"}})


async def main(url: str, users: int, chats: int, compression: str) -> int:
    done = 0

    async def user(i: int) -> None:
        nonlocal done
        async with websockets.connect(f"{url}?user=bare-{i}", ping_interval=None,
                                      compression="deflate" if compression == "deflate" else None) as ws:
            await ws.recv()  # the welcome
            for _ in range(chats):
                await ws.send(REQUEST)
                while '"agent_completed"' not in await ws.recv():
                    pass
                done += 1

    async with asyncio.timeout(600):
        await asyncio.gather(*(user(i) for i in range(users)))
    return done


if __name__ == "__main__":
    url, users, chats, compression = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if "--uvloop" in sys.argv:
        import uvloop
        uvloop.install()
    print(json.dumps({"ok": asyncio.run(main(url, users, chats, compression))}))
