"""An outside evaluator's AG-UI server over SSE (tests/integration/outside_servers.py: HTTP/1.1 by hand, no AG-UI
encoder), written from docs/protocol.md and docs/profiles.md alone: chunked transfer encoding, CRLF line ends,
comments, `event:` and `id:` fields, an event's JSON split over several `data:` lines, integer millisecond
timestamps, unicode ids, steps, reasoning, a tool call with its result, text as START/CONTENT/END in one chat and as
`TEXT_MESSAGE_CHUNK` in another. A conformant server passes every chat; each variant breaks one rule on the chat whose
message says `#culprit`. Every run is recorded and `chatprobe check` of the recording must give the same verdicts.
"""
from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main

from .outside_servers import InThread, RawSseServer, RawWsServer, WsConn


def ms() -> int:
    return int(time.time() * 1000)


def encode(n: int, ev: dict[str, Any]) -> bytes:
    """One SSE event in a style of its own per index: CRLF or LF, with a comment, `event:` / `id:`, data split."""
    text = json.dumps(ev, ensure_ascii=False)
    if n % 4 == 3:  # lone CR line ends
        return f"event: {ev['type']}\rdata: {text}\r\r".encode()
    if n % 3 == 0:
        return f": keep-alive ☕\r\nevent: {ev['type']}\r\nid: {n}\r\ndata: {text}\r\n\r\n".encode()
    if n % 3 == 1:
        head, _, tail = text.partition(", ")  # split between two members: the newline the join adds is whitespace
        return f"data: {head},\ndata: {tail}\n\n".encode() if tail else f"data: {text}\n\n".encode()
    return f"data:{text}\n\n".encode()  # no space after the colon


def events(req: dict[str, Any], server_run_id: str | None = None) -> list[dict[str, Any]]:
    """The run's events; `server_run_id`: the server names every run so, whatever runId the client sent."""
    thread, run = req["threadId"], server_run_id or req["runId"]
    text = req["messages"][-1]["content"]
    chunked = "#chunks" in text
    msg, call = f"msg-✓-{run[-6:]}", f"call-ü-{run[-6:]}"
    out: list[dict[str, Any]] = [
        {"type": "RUN_STARTED", "threadId": thread, "runId": run, "timestamp": ms()},
        {"type": "STEP_STARTED", "stepName": "planning"},
        {"type": "REASONING_START", "messageId": f"r-{msg}"},
        {"type": "REASONING_MESSAGE_START", "messageId": f"r-{msg}", "role": "reasoning"},
        {"type": "REASONING_MESSAGE_CONTENT", "messageId": f"r-{msg}", "delta": "17 × 23 first"},
        {"type": "REASONING_MESSAGE_END", "messageId": f"r-{msg}"},
        {"type": "REASONING_END", "messageId": f"r-{msg}"},
        {"type": "STEP_FINISHED", "stepName": "planning"},
        {"type": "TOOL_CALL_START", "toolCallId": call, "toolCallName": "calculator"},
        {"type": "TOOL_CALL_ARGS", "toolCallId": call, "delta": "{\"expr\": "},
        {"type": "TOOL_CALL_ARGS", "toolCallId": call, "delta": "\"17*23\"}"},
        {"type": "TOOL_CALL_END", "toolCallId": call},
        {"type": "TOOL_CALL_RESULT", "messageId": f"t-{msg}", "toolCallId": call, "content": "391", "role": "tool"},
    ]
    if chunked:
        out += [{"type": "TEXT_MESSAGE_CHUNK", "messageId": msg, "role": "assistant", "delta": "391, "},
                {"type": "TEXT_MESSAGE_CHUNK", "delta": "Paris ✓"}]
    else:
        out += [{"type": "TEXT_MESSAGE_START", "messageId": msg, "role": "assistant", "timestamp": ms()},
                {"type": "TEXT_MESSAGE_CONTENT", "messageId": msg, "delta": "391, "},
                {"type": "TEXT_MESSAGE_CONTENT", "messageId": msg, "delta": "Paris ✓"},
                {"type": "TEXT_MESSAGE_END", "messageId": msg}]
    out.append({"type": "RUN_FINISHED", "threadId": thread, "runId": run, "result": {"answer": 391}})
    return out


Fault = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


def _without(type_: str) -> Fault:
    return lambda evs: [e for e in evs if e["type"] != type_]


FAULTS: dict[str, Fault] = {
    "R1": lambda evs: [evs[1], evs[0], *evs[2:]],  # a step before the run started
    "R2": lambda evs: [e for e in evs if e["type"] not in ("TEXT_MESSAGE_START", "TEXT_MESSAGE_CONTENT",
                                                            "TEXT_MESSAGE_END", "TEXT_MESSAGE_CHUNK")],
    "R3": lambda evs: evs + [evs[-1]],
    "R4": lambda evs: evs + [{"type": "CUSTOM", "name": "late", "value": 1}],
    "R5": _without("STEP_FINISHED"),
    "R12": lambda evs: [{**evs[0], "timestamp": str(evs[0]["timestamp"])}, *evs[1:]],
    "R13": lambda evs: [*evs[:-1], {"type": "RUN_ERROR", "message": "model down", "code": "UPSTREAM"}],
}


def make_script(fault: str | None, server_run_id: str | None = None) -> Callable[[dict[str, Any]], AsyncIterator[bytes]]:
    async def script(req: dict[str, Any]) -> AsyncIterator[bytes]:
        evs = events(req, server_run_id)
        if fault and "#culprit" in req["messages"][-1]["content"]:
            evs = FAULTS[fault](evs)
        yield b": stream open\r\n\r\n"
        for n, ev in enumerate(evs):
            yield encode(n, ev)
    return script


SCENARIO = """\
name: judge-agui
users: 1
chats_per_user: 3
messages: ["chat zero, 17 × 23?", "chat one #culprit", "chat two #chunks"]
expect:
  streaming: true
  settle: 0.2s
"""


def verdicts(doc: dict[str, Any], threads: dict[str, str]) -> dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]]:
    (scenario,) = doc["scenarios"]
    return {threads.get(c["thread_id"], c["thread_id"]): (
        c["outcome"], tuple(sorted({v["rule"] for v in c["violations"]})),
        tuple(sorted({w["rule"] for w in c["warnings"]}))) for c in scenario["chats"]}


def run_and_check(tmp_path: Path, fault: str | None, framing: str = "chunked", server_run_id: str | None = None):
    scenario = tmp_path / "judge.yaml"
    scenario.write_text(SCENARIO)
    live, offline, rec = tmp_path / "live.json", tmp_path / "offline.json", tmp_path / "rec"
    server = RawSseServer(make_script(fault, server_run_id), framing)
    with InThread(server) as sse:
        code = main(["run", "--target", sse.url, "--profile", "ag-ui", "--auth", "none", str(scenario),
                     "--record", str(rec), "--json", str(live), "-q"])
    assert code in (0, 1), code
    code2 = main(["check", str(rec), "--profile", "ag-ui", "--scenario", str(scenario), "--json", str(offline), "-q"])
    assert code2 == code, (code, code2)
    threads = {r["threadId"]: r["messages"][-1]["content"] for r in server.requests}
    return verdicts(json.loads(live.read_text()), threads), verdicts(json.loads(offline.read_text()), threads)


def test_conformant_agui_sse_server_passes_every_chat_live_and_offline(tmp_path):
    live, offline = run_and_check(tmp_path, None)
    assert live == offline, (live, offline)
    assert len(live) == 3 and set(live.values()) == {("passed", (), ())}, live


@pytest.mark.parametrize("rule", sorted(FAULTS, key=lambda r: int(r[1:])))
def test_one_broken_agui_rule_is_that_rule_on_that_chat_only(tmp_path, rule):
    live, offline = run_and_check(tmp_path, rule)
    assert live == offline, (live, offline)
    culprit = live.pop("chat one #culprit")
    assert culprit[:2] == ("failed", (rule,)), culprit
    assert set(live.values()) == {("passed", (), ())}, live


def run_ws(tmp_path: Path, fault: str | None, server_run_id: str | None = None):
    """The same events over WebSocket: every frame cut into continuation frames with pings between them."""
    scenario = tmp_path / "judge.yaml"
    scenario.write_text(SCENARIO)
    live, offline, rec = tmp_path / "live.json", tmp_path / "offline.json", tmp_path / "rec"
    threads: dict[str, str] = {}

    async def handle(conn: WsConn) -> None:
        while (text := await conn.recv()) is not None:
            req = json.loads(text)
            threads[req["threadId"]] = req["messages"][-1]["content"]
            evs = events(req, server_run_id)
            if fault and "#culprit" in threads[req["threadId"]]:
                evs = FAULTS[fault](evs)
            for ev in evs:
                await conn.send(ev, pieces=3, ping_between=True)

    with InThread(RawWsServer(handle)) as ws:
        code = main(["run", "--target", ws.url.replace("/ws", "/agent"), "--profile", "ag-ui", "--auth", "none",
                     str(scenario), "--record", str(rec), "--json", str(live), "-q"])
    assert code in (0, 1), code
    code2 = main(["check", str(rec), "--profile", "ag-ui", "--scenario", str(scenario), "--json", str(offline), "-q"])
    assert code2 == code, (code, code2)
    return verdicts(json.loads(live.read_text()), threads), verdicts(json.loads(offline.read_text()), threads)


@pytest.mark.parametrize("fault", [None, "R4", "R5", "R13"])
def test_agui_over_fragmented_websocket_frames(tmp_path, fault):
    live, offline = run_ws(tmp_path, fault)
    assert live == offline, (live, offline)
    if fault:
        assert live.pop("chat one #culprit")[:2] == ("failed", (fault,))
    assert len(live) == (2 if fault else 3) and set(live.values()) == {("passed", (), ())}, live


@pytest.mark.parametrize("framing", ["length", "close"])
@pytest.mark.parametrize("fault", [None, "R3"])
def test_agui_sse_bodies_framed_by_length_or_by_the_close(tmp_path, framing, fault):
    live, offline = run_and_check(tmp_path, fault, framing)
    assert live == offline, (live, offline)
    if fault:
        assert live.pop("chat one #culprit")[:2] == ("failed", (fault,))
    assert set(live.values()) == {("passed", (), ())}, live


@pytest.mark.parametrize("transport", ["sse", "websocket"])
def test_a_server_that_names_every_run_alike_whatever_the_client_sent(tmp_path, transport):
    # The runId the client sent ignored, every run named "run-♻": each chat's RUN_STARTED names its own thread and
    # comes before any other event of that chat, so it is that chat's run (R8 advice: another run id than sent), not
    # an event after the first chat's end (live it was R4/R3 warnings on the first chat and R1 + R10 on the others,
    # over SSE too, where `chatprobe check` passed them: each stream is its own there).
    run = run_and_check if transport == "sse" else run_ws
    live, offline = run(tmp_path, None, server_run_id="run-♻")
    assert live == offline, (live, offline)
    assert len(live) == 3 and set(live.values()) == {("passed", (), ("R8",))}, live
