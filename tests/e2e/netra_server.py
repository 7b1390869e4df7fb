"""A small netra server of the e2e tests' own (not agentsim), written from docs/protocol.md, whose faults the test
sets on its command line: `--drop-percent P` leaves tool_completed out of P% of chats (exactly: chat n drops it when
floor(n*P/100) grows), `--first-delay S` waits S seconds before each run's first event, `--crosstalk-every N` sends
every N-th chat one event of another user's run. No authentication (any token or none is taken). It prints
`netra-server listening on ws://127.0.0.1:PORT/ws` once it listens (port 0: a free one), and runs until SIGTERM.

Run: python tests/e2e/netra_server.py --port 0 [--drop-percent 10] [--first-delay 0] [--crosstalk-every 0]"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import time
import uuid

import websockets
from websockets.asyncio.server import ServerConnection, serve


class Faults:
    def __init__(self, drop_percent: float, first_delay: float, crosstalk_every: int) -> None:
        self.drop_percent, self.first_delay, self.crosstalk_every = drop_percent, first_delay, crosstalk_every
        self.chats = itertools.count(1)

    def next_chat(self) -> tuple[bool, bool]:
        """(drop tool_completed, send another user's event) for the next chat."""
        n = next(self.chats)
        drop = int(n * self.drop_percent / 100) != int((n - 1) * self.drop_percent / 100)
        crosstalk = self.crosstalk_every > 0 and n % self.crosstalk_every == 0
        return drop, crosstalk


def event(kind: str, run_id: str, thread_id: str, user: str, seq: int, payload: dict) -> str:
    return json.dumps({"type": kind, "run_id": run_id, "thread_id": thread_id, "user_id": user, "seq": seq,
                       "timestamp": time.time(), "payload": payload})


async def run(ws: ServerConnection, faults: Faults, user: str, msg: dict) -> None:
    payload = msg.get("payload") or {}
    run_id = payload.get("run_id") or f"r-{uuid.uuid4().hex[:12]}"
    thread_id = payload.get("thread_id") or f"t-{uuid.uuid4().hex[:8]}"
    drop, crosstalk = faults.next_chat()
    if faults.first_delay:
        await asyncio.sleep(faults.first_delay)  # wait-ok: the server's fault: a slow first event
    frames = [
        ("agent_started", {"agent_name": "calc", "message_id": payload.get("message_id")}),
        ("agent_thinking", {"thought": "a sum", "step_number": 1}),
        ("tool_executing", {"tool_name": "calculator", "tool_call_id": "c-1", "parameters": {"x": 1}}),
        ("tool_completed", {"tool_name": "calculator", "tool_call_id": "c-1", "result": 2, "success": True}),
        ("agent_thinking", {"thought": "done", "step_number": 2}),
        ("partial_result", {"content": "2", "is_complete": False}),
        ("agent_completed", {"result": "2", "duration_ms": 1.0}),
    ]
    seq = 0
    for kind, body in frames:
        if kind == "tool_completed" and drop:
            continue
        seq += 1
        await ws.send(event(kind, run_id, thread_id, user, seq, body))
        if kind == "agent_thinking" and crosstalk and seq == 2:
            await ws.send(event("agent_thinking", f"r-other-{uuid.uuid4().hex[:8]}", "t-other", "u-other", 2,
                                {"thought": "someone else's", "step_number": 1}))


async def handler(ws: ServerConnection, faults: Faults) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    await ws.send(json.dumps({"type": "connection_established",
                              "data": {"connection_id": uuid.uuid4().hex, "user_id": user,
                                       "server_time": "2026-01-01T00:00:00Z"}, "timestamp": time.time()}))
    tasks: set[asyncio.Task] = set()
    try:
        async for raw in ws:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            if msg.get("type") == "ping":
                await ws.send(json.dumps({"type": "pong", "data": {"timestamp": time.time()}}))
            elif msg.get("type") in ("user_message", "start_agent", "chat"):
                task = asyncio.create_task(run(ws, faults, user, msg))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    except websockets.ConnectionClosed:
        pass
    finally:
        for task in tasks:
            task.cancel()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--drop-percent", type=float, default=0.0)
    ap.add_argument("--first-delay", type=float, default=0.0)
    ap.add_argument("--crosstalk-every", type=int, default=0)
    args = ap.parse_args()
    faults = Faults(args.drop_percent, args.first_delay, args.crosstalk_every)
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(lambda ws: handler(ws, faults), "127.0.0.1", args.port) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"netra-server listening on ws://127.0.0.1:{port}/ws", flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
