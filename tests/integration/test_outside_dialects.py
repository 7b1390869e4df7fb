"""The agent streaming formats chatprobe's users run most besides netra and AG-UI, each served by a small raw server
(tests/integration/outside_servers.py: HTTP/1.1 and RFC 6455 by hand) written from the format's public shape, and
driven through a profile written from docs/profiles.md alone, as a user would: `chatprobe run --profile FILE`, then
`chatprobe check` of the recording.

- the OpenAI Responses API's streaming events over SSE (`response.created` … `response.completed`; `sequence_number`
  counts the stream's events from 0; only the `response.*` lifecycle events name the response's id);
- the Vercel AI SDK's UI message stream over SSE (`start` … `finish`, ended by the literal `data: [DONE]`);
- LangChain / LangGraph `astream_events` v2 forwarded over a WebSocket (every nested run has its own `run_id`; the
  root's is the first of `parent_ids`).

Each format's good chat (with a tool call) passes live and offline alike; a failing chat is R13; a stream without its
completion and a stream out of order are caught, live and offline alike.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main

from .outside_servers import InThread, RawSseServer, RawWsServer, WsConn

# The example profiles docs/profiles.md points users at: tested here as they ship.
EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "profiles"

SCENARIO = """\
name: dialect-chats
users: 1
chats_per_user: {n}
messages: {messages}
expect:
  streaming: true
  deadline: {deadline}
  settle: 0.2s
"""


def tag(text: str) -> str:
    """What a chat's message asks of the server (`#fail`, `#truncated`, …), or `good`; each server puts it in the
    run's id, so a chat's verdict is found by it, live and offline."""
    return next((w[1:] for w in text.split() if w.startswith("#")), "good")


def verdicts(doc: dict[str, Any]) -> dict[str, tuple[str, tuple[str, ...]]]:
    (scenario,) = doc["scenarios"]
    out = {}
    for c in scenario["chats"]:
        name = next((t for t in TAGS if t in (c.get("run_id") or "")), c.get("run_id"))
        out[name] = (c["outcome"], tuple(sorted({v["rule"] for v in c["violations"]})))
    return out


TAGS = ("good", "fail", "error", "truncated", "swapped")


def run_and_check(tmp_path: Path, url: str, profile: str, messages: list[str],
                  deadline: str = "10s") -> tuple[dict, dict, int]:
    """`chatprobe run --profile FILE --record` then `chatprobe check` of the recording: both verdicts, the exit code."""
    scenario, prof = tmp_path / "chats.yaml", tmp_path / "profile.yaml"
    scenario.write_text(SCENARIO.format(n=len(messages), messages=json.dumps(messages), deadline=deadline))
    prof.write_text(profile)
    live, offline, rec = tmp_path / "live.json", tmp_path / "offline.json", tmp_path / "rec"
    code = main(["run", "--target", url, "--profile", str(prof), "--auth", "none", str(scenario),
                 "--record", str(rec), "--json", str(live), "-q"])
    assert code in (0, 1), code
    code2 = main(["check", str(rec), "--profile", str(prof), "--scenario", str(scenario), "--json", str(offline), "-q"])
    assert code2 == code, (code, code2)
    return verdicts(json.loads(live.read_text())), verdicts(json.loads(offline.read_text())), code


def sse(ev: dict[str, Any] | str, event: str | None = None) -> bytes:
    data = ev if isinstance(ev, str) else json.dumps(ev)
    return (f"event: {event}\n" if event else "").encode() + f"data: {data}\n\n".encode()


# -- 1. OpenAI Responses API streaming (SSE) -------------------------------------------------------------------

RESPONSES_PROFILE = (EXAMPLES / "openai-responses.yaml").read_text(encoding="utf-8")


def responses_events(text: str) -> list[dict[str, Any]]:
    rid = f"resp_{tag(text)}_0a1b"
    n = tag(text)
    resp = {"id": rid, "object": "response", "created_at": 1764000000, "status": "in_progress", "model": "gpt-4.1",
            "output": []}
    ws, call, msg = f"ws_{n}", f"fc_{n}", f"msg_{n}"
    evs: list[dict[str, Any]] = [
        {"type": "response.created", "response": resp},
        {"type": "response.in_progress", "response": resp},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"id": ws, "type": "web_search_call", "status": "in_progress"}},
        {"type": "response.web_search_call.in_progress", "output_index": 0, "item_id": ws},
        {"type": "response.web_search_call.searching", "output_index": 0, "item_id": ws},
        {"type": "response.web_search_call.completed", "output_index": 0, "item_id": ws},
        {"type": "response.output_item.done", "output_index": 0,
         "item": {"id": ws, "type": "web_search_call", "status": "completed"}},
        {"type": "response.output_item.added", "output_index": 1,
         "item": {"id": call, "type": "function_call", "call_id": "call_1", "name": "calc", "arguments": ""}},
        {"type": "response.function_call_arguments.delta", "item_id": call, "output_index": 1, "delta": "{\"x\":"},
        {"type": "response.function_call_arguments.delta", "item_id": call, "output_index": 1, "delta": "1}"},
        {"type": "response.function_call_arguments.done", "item_id": call, "output_index": 1, "arguments": "{\"x\":1}"},
        {"type": "response.output_item.done", "output_index": 1,
         "item": {"id": call, "type": "function_call", "call_id": "call_1", "name": "calc", "arguments": "{\"x\":1}"}},
        {"type": "response.output_item.added", "output_index": 2,
         "item": {"id": msg, "type": "message", "role": "assistant", "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", "item_id": msg, "output_index": 2, "content_index": 0,
         "part": {"type": "output_text", "text": ""}},
        {"type": "response.output_text.delta", "item_id": msg, "output_index": 2, "content_index": 0, "delta": "Hi"},
        {"type": "response.output_text.delta", "item_id": msg, "output_index": 2, "content_index": 0, "delta": " ✓"},
        {"type": "response.output_text.done", "item_id": msg, "output_index": 2, "content_index": 0, "text": "Hi ✓"},
        {"type": "response.content_part.done", "item_id": msg, "output_index": 2, "content_index": 0,
         "part": {"type": "output_text", "text": "Hi ✓"}},
        {"type": "response.output_item.done", "output_index": 2,
         "item": {"id": msg, "type": "message", "role": "assistant", "status": "completed"}},
        {"type": "response.completed", "response": {**resp, "status": "completed"}},
    ]
    if "#fail" in text:
        evs = [*evs[:2], {"type": "response.failed", "response": {
            **resp, "status": "failed", "error": {"code": "server_error", "message": "The model failed"}}}]
    if "#error" in text:
        evs = [*evs[:2], {"type": "error", "code": "rate_limit_exceeded", "message": "slow down", "param": None}]
    if "#truncated" in text:
        evs = evs[:-1]
    if "#swapped" in text:
        evs[14], evs[15] = evs[15], evs[14]
    for i, ev in enumerate(evs):
        ev["sequence_number"] = i
    if "#swapped" in text:
        evs[14]["sequence_number"], evs[15]["sequence_number"] = 15, 14  # sent out of order: 15 before 14
    return evs


def responses_script(req: dict[str, Any]) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for ev in responses_events(req["input"]):
            yield sse(ev, event=ev["type"])
    return gen()


def test_responses_good_failing_and_broken_streams(tmp_path):
    messages = ["weather?", "weather? #fail", "weather? #error", "weather? #truncated", "weather? #swapped"]
    with InThread(RawSseServer(responses_script)) as server:
        live, offline, code = run_and_check(tmp_path, server.url, RESPONSES_PROFILE, messages)
    assert live == offline, (live, offline)
    assert code == 1
    assert live == {"good": ("passed", ()), "fail": ("failed", ("R13",)), "error": ("failed", ("R13",)),
                    "truncated": ("incomplete", ()), "swapped": ("failed", ("R7",))}, live


# -- 2. Vercel AI SDK UI message stream (SSE, ended by `data: [DONE]`) -------------------------------------------

VERCEL_PROFILE = (EXAMPLES / "ai-sdk-ui-stream.yaml").read_text(encoding="utf-8")


def vercel_events(text: str) -> list[dict[str, Any] | str]:
    t = tag(text)
    call = f"call_{t}"
    evs: list[dict[str, Any] | str] = [
        {"type": "start", "messageId": f"msg-{t}-Xq2"},
        {"type": "start-step"},
        {"type": "reasoning-start", "id": "r0"},
        {"type": "reasoning-delta", "id": "r0", "delta": "Need the weather."},
        {"type": "reasoning-end", "id": "r0"},
        {"type": "tool-input-start", "toolCallId": call, "toolName": "getWeather"},
        {"type": "tool-input-delta", "toolCallId": call, "inputTextDelta": "{\"city\":\"Paris\"}"},
        {"type": "tool-input-available", "toolCallId": call, "toolName": "getWeather", "input": {"city": "Paris"}},
        {"type": "tool-output-available", "toolCallId": call, "output": {"celsius": 21}},
        {"type": "finish-step"},
        {"type": "start-step"},
        {"type": "text-start", "id": "t0"},
        {"type": "text-delta", "id": "t0", "delta": "It is 21 °C "},
        {"type": "text-delta", "id": "t0", "delta": "in Paris."},
        {"type": "text-end", "id": "t0"},
        {"type": "finish-step"},
        {"type": "finish"},
        "[DONE]",
    ]
    if t == "fail":
        evs = [*evs[:9], {"type": "error", "errorText": "The model is overloaded"}, "[DONE]"]
    elif t == "truncated":
        evs = [*evs[:-2], "[DONE]"]  # no `finish`, yet the stream says it is done
    elif t == "swapped":
        evs[12], evs[14] = evs[14], evs[12]  # text-end before its deltas
    return evs


def vercel_script(req: dict[str, Any]) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for ev in vercel_events(req["messages"][-1]["parts"][0]["text"]):
            yield sse(ev)
    return gen()


def test_ai_sdk_ui_message_stream_good_failing_and_broken(tmp_path):
    messages = ["weather?", "weather? #fail", "weather? #truncated", "weather? #swapped"]
    with InThread(RawSseServer(vercel_script)) as server:
        live, offline, code = run_and_check(tmp_path, server.url, VERCEL_PROFILE, messages)
    assert live == offline, (live, offline)
    assert code == 1
    assert live == {"good": ("passed", ()), "fail": ("failed", ("R13",)), "truncated": ("incomplete", ()),
                    "swapped": ("failed", ("R5",))}, live


# -- 3. LangGraph / LangChain astream_events v2 forwarded over a WebSocket --------------------------------------

LANGGRAPH_PROFILE = (EXAMPLES / "langgraph-astream-events.yaml").read_text(encoding="utf-8")


def langgraph_events(req: dict[str, Any], n: int) -> list[dict[str, Any]]:
    t = tag(req["input"]["messages"][-1]["content"])
    thread = req["thread_id"]
    root = f"run-{t}-{n:02d}"
    meta = {"thread_id": thread}

    def ev(event: str, run: str, name: str, parents: list[str], data: dict[str, Any] | None = None,
           **more: Any) -> dict[str, Any]:
        node_meta = {**meta, "langgraph_node": name} if parents else meta
        return {"event": event, "run_id": run, "name": name, "tags": [], "metadata": node_meta,
                "data": data or {}, "parent_ids": parents, **more}

    a1, m1, tools, t1, a2, m2 = (f"{root}-{x}" for x in ("agent1", "model1", "tools", "tool1", "agent2", "model2"))
    chunk = lambda text: {"chunk": {"content": text, "type": "AIMessageChunk", "id": "msg-1"}}  # noqa: E731
    evs = [
        ev("on_chain_start", root, "LangGraph", [], {"input": req["input"]}),
        ev("on_chain_start", a1, "agent", [root]),
        ev("on_chat_model_start", m1, "ChatOpenAI", [root, a1], {"input": {"messages": []}}),
        ev("on_chat_model_stream", m1, "ChatOpenAI", [root, a1], chunk("")),
        ev("on_chat_model_end", m1, "ChatOpenAI", [root, a1], {"output": {"tool_calls": [{"name": "calc"}]}}),
        ev("on_chain_end", a1, "agent", [root]),
        ev("on_chain_start", tools, "tools", [root]),
        ev("on_tool_start", t1, "calc", [root, tools], {"input": {"expr": "17*23"}}),
        ev("on_tool_end", t1, "calc", [root, tools], {"output": "391"}),
        ev("on_chain_end", tools, "tools", [root]),
        ev("on_chain_start", a2, "agent", [root]),
        ev("on_chat_model_start", m2, "ChatOpenAI", [root, a2], {"input": {"messages": []}}),
        ev("on_chat_model_stream", m2, "ChatOpenAI", [root, a2], chunk("17 × 23 ")),
        ev("on_chat_model_stream", m2, "ChatOpenAI", [root, a2], chunk("= 391")),
        ev("on_chat_model_end", m2, "ChatOpenAI", [root, a2]),
        ev("on_chain_stream", root, "LangGraph", [], {"chunk": {"agent": {}}}),
        ev("on_chain_end", a2, "agent", [root]),
        ev("on_chain_end", root, "LangGraph", [], {"output": {"messages": []}}),
    ]
    if t == "fail":  # astream_events raised inside the tool: the server forwards the exception as it can
        # (it names no run: the chat in flight on the socket is the one it ends)
        evs = [*evs[:8], {"event": "error", "data": {"message": "ToolException('calc crashed')"}}]
    elif t == "truncated":
        evs = evs[:-1]
    elif t == "swapped":
        evs[7], evs[8] = evs[8], evs[7]  # the tool's end before its start
    return evs


def test_langgraph_astream_events_over_websocket(tmp_path):
    messages = ["17 × 23?", "17 × 23? #fail", "17 × 23? #truncated", "17 × 23? #swapped"]
    count = [0]

    async def handle(conn: WsConn) -> None:
        while (text := await conn.recv()) is not None:
            count[0] += 1
            for ev in langgraph_events(json.loads(text), count[0]):
                await conn.send(ev)

    with InThread(RawWsServer(handle)) as ws:
        live, offline, code = run_and_check(tmp_path, ws.url, LANGGRAPH_PROFILE, messages, deadline="2s")
    assert live == offline, (live, offline)
    assert code == 1
    assert live == {"good": ("passed", ()), "fail": ("failed", ("R13",)), "truncated": ("incomplete", ("R10",)),
                    "swapped": ("failed", ("R5",))}, live


# -- 4. A dialect counting from 0 across a resume (found by attacking `seq_start`) -----------------------------------

RESUMING_PROFILE = """\
name: zero-based
transport: websocket
welcome: false
request: {{type: chat, run_id: "{{run_id}}", text: "{{content}}"}}
client_run_id: true
resume: {resume}
fields: {{type: [type], run_id: [run_id], seq: [seq]}}
roles: {{agent_started: [s], agent_thinking: [th], partial_result: [p], agent_completed: [done]}}
required: [agent_started, agent_completed]
thinking_before_tool: false
seq_start: {start}
"""
RESUME_WITH_LAST_SEQ = '{type: resume, run_id: "{run_id}", last_seq: "{last_seq}"}'


@pytest.mark.parametrize("start", [0, 1])
def test_a_resume_before_any_event_asks_for_the_first_seq_of_a_dialect_counting_from_0(tmp_path, start):
    # The client names the run, and its connection drops before any event: it had nothing, so its resume's last_seq
    # is the seq before the dialect's first (the server replays seq > last_seq). It said 0 (the events' count): the
    # server, counting from 0, never sent seq 0 again (agent_started lost: R7, R1 and a missing role).
    resumes: list[dict[str, Any]] = []

    async def handle(conn: WsConn) -> None:
        while (text := await conn.recv()) is not None:
            msg = json.loads(text)
            if msg["type"] == "chat":
                conn.writer.close()  # dropped before any event
                return
            resumes.append(msg)
            for i, t in enumerate(["s", "th", "p", "done"]):
                if start + i > int(msg["last_seq"]):
                    await conn.send({"type": t, "run_id": msg["run_id"], "seq": start + i})

    with InThread(RawWsServer(handle)) as ws:
        live, offline, code = run_and_check(tmp_path, ws.url, RESUMING_PROFILE.format(
            resume=RESUME_WITH_LAST_SEQ, start=start), ["hi"], deadline="3s")
    assert [int(r["last_seq"]) for r in resumes] == [start - 1]
    assert code == 0 and live == offline, (live, offline)


@pytest.mark.parametrize("start", [0, 1])
def test_check_follows_a_resume_without_last_seq_alike_from_0_and_from_1(tmp_path, start):
    # A resume that says nothing of what the client had (no `{last_seq}` in the template): `chatprobe check` and the
    # proxy (flow.Resumes) do not judge again the events the server replays that the chat had. Counting from 0, seq 0
    # was taken for one the client said it had: "seq 0 received twice" (R7), where the same stream from 1 passed.
    def ev(t: float, kind: str, i: int) -> dict[str, Any]:
        return {"t": t, "dir": "recv", "conn": "a" if t < 2 else "b",
                "frame": json.dumps({"type": kind, "run_id": "r1", "seq": start + i})}

    records = [{"t": 1.0, "dir": "send", "conn": "a", "frame": json.dumps({"type": "chat", "run_id": "r1",
                                                                           "text": "hi"})},
               ev(1.1, "s", 0), ev(1.2, "th", 1), ev(1.3, "p", 2),
               {"t": 1.5, "dir": "close", "conn": "a", "code": 1006},
               {"t": 2.0, "dir": "send", "conn": "b", "resume": True,
                "frame": json.dumps({"type": "resume", "run_id": "r1"})},
               ev(2.1, "s", 0), ev(2.2, "th", 1), ev(2.3, "p", 2), ev(2.4, "p", 3), ev(2.5, "done", 4),
               {"t": 3.0, "dir": "close", "conn": "b", "code": 1000}]
    rec, prof = tmp_path / f"rec{start}.jsonl", tmp_path / f"p{start}.yaml"
    rec.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    prof.write_text(RESUMING_PROFILE.format(resume='{type: resume, run_id: "{run_id}"}', start=start))
    out = tmp_path / f"out{start}.json"
    assert main(["check", str(rec), "--profile", str(prof), "--json", str(out), "-q"]) == 0, start
    [chat] = json.loads(out.read_text())["scenarios"][0]["chats"]
    assert (chat["outcome"], chat["violations"]) == ("passed", []), (start, chat)
