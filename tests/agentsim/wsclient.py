"""A small raw-websockets client for agentsim tests (deliberately not the harness)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websockets

TERMINAL = ("agent_completed",)
DEADLINE = 10.0


async def connect(url: str, user: str | None = None, **kw: Any):
    if user is not None:
        url = f"{url}?user={user}"
    kw.setdefault("open_timeout", DEADLINE)
    ws = await websockets.connect(url, **kw)
    welcome = await recv(ws)
    assert welcome["type"] == "connection_established", welcome
    return ws, welcome


async def recv(ws, timeout: float = DEADLINE) -> dict:
    async with asyncio.timeout(timeout):
        raw = await ws.recv()
    return json.loads(raw)


async def send(ws, obj: dict) -> None:
    await ws.send(json.dumps(obj))


def chat_frame(content: str, kind: str = "user_message", **ids: Any) -> dict:
    if kind == "start_agent":
        return {"type": "start_agent", "payload": {"user_request": content, **ids}}
    return {"type": kind, "payload": {"content": content, **ids}}


def is_terminal(frame: dict) -> bool:
    if frame.get("type") == "agent_completed":
        return True
    return frame.get("type") == "agent_error" and not frame["payload"]["is_recoverable"]


async def collect_runs(ws, n_runs: int, timeout: float = DEADLINE) -> dict[str, list[dict]]:
    """Read frames until n_runs runs reached their terminal event; returns events per run_id."""
    runs: dict[str, list[dict]] = {}
    done: set[str] = set()
    async with asyncio.timeout(timeout):
        while len(done) < n_runs:
            frame = json.loads(await ws.recv())
            if "run_id" not in frame or "seq" not in frame:
                continue
            runs.setdefault(frame["run_id"], []).append(frame)
            if is_terminal(frame):
                done.add(frame["run_id"])
    return runs


async def chat(ws, content: str, kind: str = "user_message", timeout: float = DEADLINE, **ids: Any) -> list[dict]:
    await send(ws, chat_frame(content, kind, **ids))
    runs = await collect_runs(ws, 1, timeout)
    (events,) = runs.values()
    return events


async def wait_until(cond: Callable[[], bool], timeout: float = DEADLINE, what: str = "condition") -> None:
    """Wait for cond() to hold, checking each loop turn, failing after timeout."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)  # wait-ok: poll interval inside the deadline loop above


def read_gt(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def gt_of(sim) -> list[dict]:
    return read_gt(sim.config.ground_truth)
