"""A conversation (`thread: continue`, docs/scenarios.md) against hostile AG-UI servers, over SSE and WebSocket: what
the client keeps of a turn's reply for the next turn's request is bounded in bytes however the reply is cut into
deltas, holds only the words of the turn's own run, and a token the server echoes never reaches a recording.

Each server is written here (a raw HTTP/1.1 server for SSE, a `websockets` one), on 127.0.0.1; every wait is bounded
(the scenario's deadline, asyncio.timeout around each play). Memory is counted in bytes of the objects the user's
Conversation holds, never timed."""
from __future__ import annotations

import asyncio
import gc
import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from harness.checker import ChatResult
from harness.client import Session
from harness.flow import MAX_HISTORY_BYTES
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.scenario import ChatCall, Scenario, UserScript
from harness.sinks import Sink
from harness.targets import Target, TokenProvider

from .test_sse_attacks import HEAD, RawServer

AGUI = load_profile("ag-ui")
Script = Callable[[dict[str, Any], int], list[dict[str, Any]]]  # (the request, its turn 1, 2, …) -> the events


def conversation(turns: int = 2) -> Scenario:
    return Scenario.model_validate({
        "name": "conv", "users": 1, "connect_timeout": "5s", "expect": {"settle": "0.05s", "deadline": "20s"},
        "steps": [{"chat": {"message": "turn 1 of the user"}},
                  *({"chat": {"message": f"turn {n} of the user", "thread": "continue"}} for n in range(2, turns + 1))],
    })


def run_of(inp: dict[str, Any], *middle: dict[str, Any]) -> list[dict[str, Any]]:
    ids = {"threadId": inp["threadId"], "runId": inp["runId"]}
    return [{"type": "RUN_STARTED", **ids}, *middle, {"type": "RUN_FINISHED", **ids}]


def text(mid: str, *deltas: Any) -> list[dict[str, Any]]:
    return [{"type": "TEXT_MESSAGE_START", "messageId": mid, "role": "assistant"},
            *({"type": "TEXT_MESSAGE_CONTENT", "messageId": mid, "delta": d} for d in deltas),
            {"type": "TEXT_MESSAGE_END", "messageId": mid}]


class Served:
    """What the server was sent: each chat request, in order, and the token of each connection."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.tokens: list[str] = []


@asynccontextmanager
async def agui_server(script: Script, ws: bool) -> AsyncIterator[tuple[str, Served]]:
    served = Served()

    def answer(raw: bytes | str, token: str) -> list[bytes]:
        inp = json.loads(raw)
        served.requests.append(inp)
        served.tokens.append(token)
        return [json.dumps(e).encode() for e in script(inp, len(served.requests))]

    if ws:
        async def on_ws(conn: ServerConnection) -> None:
            token = (conn.request.headers.get("Authorization") or "").removeprefix("Bearer ") if conn.request else ""
            async for raw in conn:
                for frame in answer(raw, token):
                    await conn.send(frame.decode())

        async with serve(on_ws, "127.0.0.1", 0, compression=None, max_size=None) as server:
            yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/agent", served
        return

    async def on_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> None:
        token = next((line.split(b" ", 2)[2].decode() for line in head.split(b"\r\n")
                      if line.lower().startswith(b"authorization: bearer ")), "")
        writer.write(HEAD + b"\r\n")
        for n, frame in enumerate(answer(body, token)):
            writer.write(b"data: " + frame + b"\n\n")
            if n % 256 == 0:
                await writer.drain()
        await writer.drain()

    async with RawServer(on_http) as server:
        yield server.url, served


async def converse(url: str, sc: Scenario, *, token: str | None = None, recorder: Recorder | None = None,
                   after_turn: Callable[[UserScript], None] | None = None) -> list[ChatResult]:
    """One user playing `sc`'s turns on one session, `after_turn` called with its script after each."""
    target = Target(url=url, profile=AGUI, name="t", tokens=TokenProvider(token), recorder=recorder)
    session = Session(target, "u1", sc.name, Sink(), connect_timeout=5)
    script = sc.user_script(AGUI)
    results = []
    try:
        for call in script.plan():
            assert isinstance(call, ChatCall)
            async with asyncio.timeout(40):  # a hang fails the test
                results.append(await session.chat(call.content, call.expectations, call.options))
            if after_turn is not None:
                after_turn(script)
    finally:
        await asyncio.wait_for(session.close(), 10)
    return results


def held(root: object) -> int:
    """Bytes of the objects reachable from `root` (each once; classes are shared, not held by it)."""
    seen: set[int] = set()
    stack, total = [root], 0
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, type):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        stack.extend(gc.get_referents(o))
    return total


def history_bytes(messages: list[dict[str, Any]]) -> int:
    return sum(len(m["id"].encode()) + len(m["content"].encode("utf-8", "surrogatepass")) for m in messages)


N_DELTAS = 17_000  # 34,000 bytes of two-byte deltas: past the 32 KiB bound


@pytest.mark.parametrize("ws", [False, True], ids=["sse", "ws"])
@pytest.mark.parametrize("shape", ["two-byte deltas", "four-byte characters", "a message id per delta",
                                   "4 MiB in 64 KiB deltas", "ASCII and one emoji"])
async def test_a_reply_in_any_cut_is_kept_within_the_bound_in_bytes_and_the_turn_keeps_its_message(ws, shape):
    """The reply being heard was a list of the delta strings: a reply of 17,000 two-byte deltas held ~0.9 MB (a
    string is ~50 bytes beside its text), 30 times the 32 KiB bound (1,000 users: ~1 GB, not the documented 40 MB);
    four-byte characters alike. A server naming a new messageId with each delta made each a message of ~310 bytes
    counted as 64 + its text and id (~150 KB held), and, once the bound was reached, each new one pushed out the
    oldest message: the turn's own user message first, so the next request carried the reply's tail with no question
    before it."""
    def script(inp: dict[str, Any], n: int) -> list[dict[str, Any]]:
        if n > 1:
            return run_of(inp, *text(f"b{n}", "ok"))
        if shape == "two-byte deltas":
            return run_of(inp, *text("a1", *[f"{i % 100:02d}" for i in range(N_DELTAS)]))
        if shape == "four-byte characters":
            return run_of(inp, *text("a1", *["\U0001f600"] * (N_DELTAS // 2)))
        if shape == "a message id per delta":
            return run_of(inp, *(e for i in range(N_DELTAS // 4) for e in text(f"m{i}", "ab")))
        if shape == "ASCII and one emoji":  # a string of them is 4 bytes a character
            return run_of(inp, *text("a1", "\U0001f600", "x" * 24_000))
        return run_of(inp, *text("a1", *["x" * 65536] * 64))

    sizes: list[int] = []
    async with agui_server(script, ws) as (url, served):
        await converse(url, conversation(3), after_turn=lambda s: sizes.append(held(s.conversation)))
    # after turn 1 (its reply being heard) and after turn 2 (turn 1's reply a message of the conversation)
    assert max(sizes) < 2 * MAX_HISTORY_BYTES, f"the conversation holds {sizes} bytes"
    first, second, _third = served.requests
    history = second["messages"][:-1]
    assert history[0] == first["messages"][0]  # the turn's question, kept before its reply
    assert history_bytes(history) <= MAX_HISTORY_BYTES
    reply = "".join(m["content"] for m in history[1:])
    assert history[1]["role"] == "assistant" and reply, history[:3]
    sent = {"two-byte deltas": "".join(f"{i % 100:02d}" for i in range(N_DELTAS)),
            "four-byte characters": "\U0001f600" * (N_DELTAS // 2),
            "a message id per delta": "ab" * (N_DELTAS // 4), "4 MiB in 64 KiB deltas": "x" * 65536 * 64,
            "ASCII and one emoji": "\U0001f600" + "x" * 24_000}[shape]
    assert sent.startswith(reply) and len(reply) < len(sent)  # what came, cut short on a character's boundary


@pytest.mark.parametrize("ws", [False, True], ids=["sse", "ws"])
async def test_a_turn_keeps_only_the_words_of_its_own_run(ws):
    """A delta naming another thread (an R8: another conversation's words) went into the turn's reply, sent back to
    the server as the assistant's; so did a late delta of the turn before, whether it came before the new turn's
    run started (R1) or after, under the earlier turn's messageId."""
    def script(inp: dict[str, Any], n: int) -> list[dict[str, Any]]:
        if n == 1:  # a delta of this run (its runId) naming another thread
            return run_of(inp, *text("a1", "mine"),
                          {"type": "TEXT_MESSAGE_CONTENT", "messageId": "a1", "runId": inp["runId"],
                           "threadId": "t-someone-elses", "delta": " and someone else's"})
        if n == 2:  # before the run started (under a messageId never seen), and after it (under turn 1's)
            late = {"type": "TEXT_MESSAGE_CONTENT", "messageId": "a1", "delta": " (late of turn 1)"}
            return [{**late, "messageId": "a0"}, *run_of(inp, late, *text("a2", "two"))]
        return run_of(inp, *text(f"a{n}", "three"))

    async with agui_server(script, ws) as (url, served):
        first, second, _third = await converse(url, conversation(3))
    assert "R8" in first.rule_counts() and "R1" in second.rule_counts(), (first.violations, second.violations)
    said = [(m["role"], m["content"]) for m in served.requests[2]["messages"]]
    assert said == [("user", "turn 1 of the user"), ("assistant", "mine"), ("user", "turn 2 of the user"),
                    ("assistant", "two"), ("user", "turn 3 of the user")], said


async def test_a_turn_sent_on_a_new_connection_carries_the_conversation_once():
    """The server closes the connection after each run (docs/protocol.md: a message that finds the connection
    closed is sent on a new one): turn 2 goes on a new connection with the conversation so far, once."""
    served: list[dict[str, Any]] = []

    async def on_ws(conn: ServerConnection) -> None:
        async for raw in conn:
            served.append(inp := json.loads(raw))
            for e in run_of(inp, *text(f"a{len(served)}", f"reply {len(served)}")):
                await conn.send(json.dumps(e))
            await conn.close()
            return

    async with serve(on_ws, "127.0.0.1", 0, compression=None) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/agent"
        results = await converse(url, conversation())
    assert len(served) == 2 and [r.outcome.value for r in results] == ["passed", "passed"], results
    assert [(m["role"], m["content"]) for m in served[1]["messages"]] == [
        ("user", "turn 1 of the user"), ("assistant", "reply 1"), ("user", "turn 2 of the user")]


@pytest.mark.parametrize("ws", [False, True], ids=["sse", "ws"])
async def test_a_token_the_server_echoes_in_its_reply_never_reaches_the_recording(tmp_path: Path, ws):
    """The conversation sends the server's own words back (with the token it echoed: its own text); the recording
    of both the reply and the next request never shows the token."""
    token = "Xk3vQ9pLm2Rt7Yw4Nz8Bc6Df"

    def script(inp: dict[str, Any], n: int) -> list[dict[str, Any]]:
        return run_of(inp, *text(f"a{n}", "your token is ", served.tokens[-1], "."))

    async with agui_server(script, ws) as (url, served):
        rec = Recorder(tmp_path / "rec")
        await converse(url, conversation(), token=token, recorder=rec)
    assert served.tokens == [token, token]
    assert token in json.dumps(served.requests[1]["messages"])  # the server's words went back to it
    files = list((tmp_path / "rec").iterdir())
    assert files and all(token not in f.read_text() for f in files)
    assert any("your token is" in f.read_text() for f in files)
