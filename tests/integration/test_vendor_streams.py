"""Vendors' own streaming formats, each served byte for byte as the vendor documents it by a small raw server
(tests/integration/outside_servers.py), and judged through the example profile docs/profiles/ ships for it, as a
team adopting chatprobe would: `chatprobe run --profile FILE`, then `chatprobe check` of the recording.

- Anthropic's Messages API streaming over SSE (`event:` lines; `message_start`, `content_block_start/delta/stop` with
  `tool_use` and `input_json_delta`, `ping`, `message_delta`, `message_stop`, `error`);
- OpenAI's Chat Completions streaming (data-only `chat.completion.chunk`s told apart by their fields, tool calls as
  `choices[].delta.tool_calls` fragments, a mid-stream `{"error": …}`, `data: [DONE]`);
- OpenAI's Responses streaming with hosted and function tools, citations and `response.incomplete`;
- the Vercel AI SDK 5 UI message stream with data parts, sources, a tool input that did not parse and an error part
  the SDK follows with `finish-step` and `finish`;
- LangGraph `astream_events` v2 with retrievers, prompts, custom events and a tool's error, over a WebSocket.

For each: a good chat passes; an error mid-stream is R13; a stream cut before its last event is incomplete; a stream
that never ends is ended by the deadline; a tool call left unfinished and a stream out of order are violations; live
and offline alike.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from harness.cli import main

from .outside_servers import InThread, RawSseServer, RawWsServer, WsConn

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "profiles"

SCENARIO = """\
name: vendor-chats
users: 1
chats_per_user: {n}
messages: {messages}
expect:
  deadline: {deadline}
  settle: 0.2s
"""


def tag(text: str) -> str:
    """What a chat's message asks of the server (`#error`, `#truncated`, …), or `good`."""
    return next((w[1:] for w in text.split() if w.startswith("#")), "good")


def judge(tmp_path: Path, url: str, profile: str, messages: list[str], deadline: str = "5s"
          ) -> tuple[dict[str, tuple[str, tuple[str, ...]]], int]:
    """`chatprobe run --profile FILE --record`, then `chatprobe check` of the recording: each chat's (outcome, rules),
    by the tag of its message (each server puts it in the run's id), the same live and offline; the exit code."""
    scenario = tmp_path / "chats.yaml"
    scenario.write_text(SCENARIO.format(n=len(messages), messages=json.dumps(messages), deadline=deadline))
    live, offline, rec = tmp_path / "live.json", tmp_path / "offline.json", tmp_path / "rec"
    code = main(["run", "--target", url, "--profile", profile, "--auth", "none", str(scenario),
                 "--record", str(rec), "--json", str(live), "-q"])
    assert code in (0, 1), code
    code2 = main(["check", str(rec), "--profile", profile, "--scenario", str(scenario), "--json", str(offline), "-q"])
    assert code2 == code, (code, code2)
    out = []
    for path in (live, offline):
        (sc,) = json.loads(path.read_text())["scenarios"]
        tags = [tag(m) for m in messages]
        out.append({next(t for t in tags if t in (c.get("run_id") or "")):
                    (c["outcome"], tuple(sorted({v["rule"] for v in c["violations"]}))) for c in sc["chats"]})
    assert out[0] == out[1], out
    return out[0], code


def sse(ev: dict[str, Any] | str, event: str | None = None, compact: bool = True) -> bytes:
    """One server-sent event: JSON as JavaScript's JSON.stringify writes it (OpenAI's, the AI SDK's), or with a space
    after each separator (`compact=False`: Anthropic's)."""
    data = ev if isinstance(ev, str) else json.dumps(ev, ensure_ascii=False,
                                                     separators=(",", ":") if compact else (", ", ": "))
    return (f"event: {event}\n" if event else "").encode() + f"data: {data}\n\n".encode()


async def forever() -> None:
    """A server that keeps the stream open and says nothing more (until the test's server is stopped)."""
    await asyncio.Event().wait()


# -- 1. Anthropic Messages API streaming (SSE with `event:` lines) --------------------------------------------------

ANTHROPIC = str(EXAMPLES / "anthropic-messages.yaml")


def anthropic_events(text: str) -> list[dict[str, Any] | None]:
    t = tag(text)
    msg = {"id": f"msg_01{t}", "type": "message", "role": "assistant", "content": [],
           "model": "claude-sonnet-4-5-20250929", "stop_reason": None, "stop_sequence": None,
           "usage": {"input_tokens": 472, "output_tokens": 2}}
    evs: list[dict[str, Any] | None] = [
        {"type": "message_start", "message": msg},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Weather tool."}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Let me check"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " the weather."}},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2, "content_block": {
            "type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "input": {}}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta",
                                                             "partial_json": "{\"location\": \"Paris\"}"}},
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
         "usage": {"output_tokens": 89}},
        {"type": "message_stop"},
    ]
    if t == "error":  # overloaded mid-stream: the API's `event: error`, and the stream ends
        evs = [*evs[:8], {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}]
    elif t == "truncated":
        evs = evs[:-1]
    elif t == "hang":
        evs = [*evs[:8], None]
    elif t == "maxtokens":  # the answer cut short: the message stops all the same
        evs = [*evs[:10], {"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                           "usage": {"output_tokens": 1024}}, {"type": "message_stop"}]
    elif t == "unstopped":  # the tool_use block never stopped, yet the message did
        del evs[13]
    elif t == "swapped":  # a text delta before its block's start
        evs[6], evs[7] = evs[7], evs[6]
    return evs


def anthropic_script(req: dict[str, Any]) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for ev in anthropic_events(req["messages"][-1]["content"]):
            if ev is None:
                await forever()
            else:
                yield sse(ev, event=ev["type"], compact=False)
    return gen()


def test_anthropic_messages_stream(tmp_path):
    messages = ["weather? #good", "weather? #error", "weather? #maxtokens", "weather? #truncated", "weather? #hang",
                "weather? #unstopped", "weather? #swapped"]
    with InThread(RawSseServer(anthropic_script)) as server:
        got, code = judge(tmp_path, server.url, ANTHROPIC, messages, deadline="2s")
    assert code == 1
    assert got == {"good": ("passed", ()), "error": ("failed", ("R13",)), "maxtokens": ("failed", ("R13",)),
                   "truncated": ("incomplete", ()), "hang": ("incomplete", ("R10",)), "unstopped": ("failed", ("R5",)),
                   "swapped": ("failed", ("R5",))}, got


# -- 2. OpenAI Chat Completions streaming (data-only SSE, `data: [DONE]`) --------------------------------------------

CHAT_COMPLETIONS = str(EXAMPLES / "openai-chat-completions.yaml")


def chat_chunks(text: str, usage: bool = False) -> list[dict[str, Any] | str | None]:
    """The chunks of one completion; with `usage` (the request's `stream_options: {include_usage: true}`) every chunk
    has `"usage": null` and one more chunk, with no choices, carries the usage after the finish."""
    t = tag(text)

    def chunk(delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
        out = {"id": f"chatcmpl-{t}-B9x", "object": "chat.completion.chunk", "created": 1764000000,
               "model": "gpt-4.1-2025-04-14", "service_tier": "default", "system_fingerprint": "fp_3f58d112f7",
               "choices": [] if delta is None else
               [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if usage:
            out["usage"] = {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29} if delta is None \
                else None
        return out

    if t == "tools":  # the first chunk names the role and starts the call; the argument fragments name neither
        return [
            chunk({"role": "assistant", "content": None, "tool_calls": [{"index": 0, "id": "call_Dd9", "type": "function",
                   "function": {"name": "get_weather", "arguments": ""}}], "refusal": None}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"loc"}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": "ation\": \"Paris\"}"}}]}),
            chunk({"tool_calls": [{"index": 1, "id": "call_Ee4", "type": "function",
                                   "function": {"name": "get_time", "arguments": ""}}]}),
            chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
            chunk({}, "tool_calls"),
            *([chunk(None)] if usage else []),
            "[DONE]",
        ]
    chunks: list[dict[str, Any] | str | None] = [
        chunk({"role": "assistant", "content": "", "refusal": None}),
        chunk({"content": "It is"}),
        chunk({"content": " 21 °C."}),
        chunk({}, "stop"),
        *([chunk(None)] if usage else []),
        "[DONE]",
    ]
    if t == "error":  # the API's mid-stream error: an object with no `object`, and the stream ends
        chunks = [*chunks[:2], {"error": {"message": "The server had an error while processing your request.",
                                          "type": "server_error", "param": None, "code": None}}]
    elif t == "length":
        chunks[3] = chunk({}, "length")
    elif t == "truncated":  # [DONE] with no finish_reason (and no usage) before it
        chunks = [*chunks[:3], "[DONE]"]
    elif t == "hang":
        chunks = [*chunks[:2], None]
    elif t == "swapped":  # a piece of the answer after the finish
        chunks[2], chunks[3] = chunks[3], chunks[2]
    return chunks


def chat_script(req: dict[str, Any]) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        usage = bool(req.get("stream_options", {}).get("include_usage"))
        for ev in chat_chunks(req["messages"][-1]["content"], usage):
            if ev is None:
                await forever()
            else:
                yield sse(ev)
    return gen()


def test_openai_chat_completions_stream(tmp_path):
    messages = ["weather? #good", "weather? #tools", "weather? #error", "weather? #length", "weather? #truncated",
                "weather? #hang", "weather? #swapped"]
    with InThread(RawSseServer(chat_script)) as server:
        got, code = judge(tmp_path, server.url, CHAT_COMPLETIONS, messages, deadline="2s")
    assert code == 1
    assert got == {"good": ("passed", ()), "tools": ("passed", ()), "error": ("failed", ("R13",)),
                   "length": ("failed", ("R13",)), "truncated": ("incomplete", ()), "hang": ("incomplete", ("R10",)),
                   "swapped": ("failed", ("R4",))}, got


def test_openai_chat_completions_stream_with_usage(tmp_path):
    # `stream_options: {include_usage: true}` adds a chunk with no choices after the finish, with the completion's id:
    # an event of the run after its terminal one (R4) unless the profile says it belongs to no run (a `control` entry
    # with `where: {choices: []}`). The shipped profile, asking for usage, judges the same chats alike.
    shipped = Path(CHAT_COMPLETIONS).read_text(encoding="utf-8")
    variant = shipped.replace("request: {model: gpt-4.1, stream: true,",
                              "request: {model: gpt-4.1, stream: true, stream_options: {include_usage: true},")
    assert variant.count("include_usage: true},") == 1
    profile = tmp_path / "usage.yaml"
    profile.write_text(variant)
    messages = ["weather? #good", "weather? #tools", "weather? #error", "weather? #truncated", "weather? #swapped"]
    with InThread(RawSseServer(chat_script)) as server:
        got, code = judge(tmp_path, server.url, str(profile), messages)
    assert code == 1
    assert got == {"good": ("passed", ()), "tools": ("passed", ()), "error": ("failed", ("R13",)),
                   "truncated": ("incomplete", ()), "swapped": ("failed", ("R4",))}, got


# -- 3. OpenAI Responses API streaming: the events a real response sends beyond a text answer ------------------------

RESPONSES = str(EXAMPLES / "openai-responses.yaml")


def responses_events(text: str) -> list[dict[str, Any] | None]:
    """A response that reasons, searches files (a hosted tool), calls a function (the client's) and answers with a
    citation: every event as the API's stream sends it, `event:` line and `sequence_number` included."""
    t = tag(text)
    resp = {"id": f"resp_{t}_68af", "object": "response", "created_at": 1764000000, "status": "in_progress",
            "model": "o4-mini-2025-04-16", "output": [], "error": None, "incomplete_details": None}
    rs, fs, fc, msg = f"rs_{t}", f"fs_{t}", f"fc_{t}", f"msg_{t}"
    call = {"id": fc, "type": "function_call", "status": "in_progress", "call_id": "call_9Kx", "name": "get_weather",
            "arguments": ""}
    evs: list[dict[str, Any] | None] = [
        {"type": "response.created", "response": resp},
        {"type": "response.in_progress", "response": resp},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"id": rs, "type": "reasoning", "summary": []}},
        {"type": "response.reasoning_summary_part.added", "item_id": rs, "output_index": 0, "summary_index": 0,
         "part": {"type": "summary_text", "text": ""}},
        {"type": "response.reasoning_summary_text.delta", "item_id": rs, "output_index": 0, "summary_index": 0,
         "delta": "**Searching the docs**"},
        {"type": "response.reasoning_summary_text.done", "item_id": rs, "output_index": 0, "summary_index": 0,
         "text": "**Searching the docs**"},
        {"type": "response.reasoning_summary_part.done", "item_id": rs, "output_index": 0, "summary_index": 0,
         "part": {"type": "summary_text", "text": "**Searching the docs**"}},
        {"type": "response.output_item.done", "output_index": 0,
         "item": {"id": rs, "type": "reasoning", "summary": [{"type": "summary_text", "text": "**Searching**"}]}},
        {"type": "response.output_item.added", "output_index": 1,
         "item": {"id": fs, "type": "file_search_call", "status": "in_progress", "queries": [], "results": None}},
        {"type": "response.file_search_call.in_progress", "output_index": 1, "item_id": fs},
        {"type": "response.file_search_call.searching", "output_index": 1, "item_id": fs},
        {"type": "response.file_search_call.completed", "output_index": 1, "item_id": fs},
        {"type": "response.output_item.done", "output_index": 1,
         "item": {"id": fs, "type": "file_search_call", "status": "completed", "queries": ["weather"],
                  "results": None}},
        {"type": "response.output_item.added", "output_index": 2, "item": call},
        {"type": "response.function_call_arguments.delta", "item_id": fc, "output_index": 2, "delta": "{\"city\":"},
        {"type": "response.function_call_arguments.delta", "item_id": fc, "output_index": 2, "delta": "\"Paris\"}"},
        {"type": "response.function_call_arguments.done", "item_id": fc, "output_index": 2,
         "arguments": "{\"city\":\"Paris\"}"},
        {"type": "response.output_item.done", "output_index": 2,
         "item": {**call, "status": "completed", "arguments": "{\"city\":\"Paris\"}"}},
        {"type": "response.output_item.added", "output_index": 3,
         "item": {"id": msg, "type": "message", "status": "in_progress", "role": "assistant", "content": []}},
        {"type": "response.content_part.added", "item_id": msg, "output_index": 3, "content_index": 0,
         "part": {"type": "output_text", "annotations": [], "text": ""}},
        {"type": "response.output_text.delta", "item_id": msg, "output_index": 3, "content_index": 0,
         "delta": "Sunny, per the guide.", "logprobs": []},
        {"type": "response.output_text.annotation.added", "item_id": msg, "output_index": 3, "content_index": 0,
         "annotation_index": 0, "annotation": {"type": "file_citation", "file_id": "file-2dtbBZ", "filename":
                                               "guide.pdf", "index": 20}},
        {"type": "response.output_text.done", "item_id": msg, "output_index": 3, "content_index": 0,
         "text": "Sunny, per the guide.", "logprobs": []},
        {"type": "response.content_part.done", "item_id": msg, "output_index": 3, "content_index": 0,
         "part": {"type": "output_text", "annotations": [], "text": "Sunny, per the guide."}},
        {"type": "response.output_item.done", "output_index": 3,
         "item": {"id": msg, "type": "message", "status": "completed", "role": "assistant", "content": []}},
        {"type": "response.completed", "response": {**resp, "status": "completed"}},
    ]
    if t == "incomplete":  # out of output tokens in the answer: the response ends, incomplete
        evs = [*evs[:21], {"type": "response.incomplete", "response": {
            **resp, "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}}]
    elif t == "error":
        evs = [*evs[:10], {"type": "error", "code": "server_error", "message": "The server had an error",
                           "param": None}]
    elif t == "unfinished":  # the function call's item never done, yet the response completed
        del evs[17]
    elif t == "hang":
        evs = [*evs[:12], None]
    seq = 0
    for ev in evs:
        if ev is not None:
            ev["sequence_number"] = seq
            seq += 1
    if t == "swapped":
        evs[15], evs[16] = evs[16], evs[15]
    return evs


def responses_script(req: dict[str, Any]) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for ev in responses_events(req["input"]):
            if ev is None:
                await forever()
            else:
                yield sse(ev, event=ev["type"])
    return gen()


def test_openai_responses_stream_with_hosted_and_function_tools(tmp_path):
    # The shipped profile knew a text answer and web search: a file search, a citation or a response ended
    # `response.incomplete` (a terminal event) were types outside the dialect (R12), the last never the end it is.
    messages = ["weather? #good", "weather? #incomplete", "weather? #error", "weather? #unfinished", "weather? #hang",
                "weather? #swapped"]
    with InThread(RawSseServer(responses_script)) as server:
        got, code = judge(tmp_path, server.url, RESPONSES, messages, deadline="2s")
    assert code == 1
    assert got == {"good": ("passed", ()), "incomplete": ("failed", ("R13",)), "error": ("failed", ("R13",)),
                   "unfinished": ("failed", ("R5",)), "hang": ("incomplete", ("R10",)),
                   "swapped": ("failed", ("R7",))}, got


# -- 4. Vercel AI SDK v5 UI message stream (SSE, `data: [DONE]`) ------------------------------------------------------

AI_SDK = str(EXAMPLES / "ai-sdk-ui-stream.yaml")


def ai_sdk_chunks(text: str) -> list[dict[str, Any] | str | None]:
    """What `streamText(...).toUIMessageStreamResponse()` of `ai` 5 sends: a server tool's call and result, a custom
    data part, a source, then the answer; JSON.stringify'd, one `data:` line each, ended by `data: [DONE]`."""
    t = tag(text)
    evs: list[dict[str, Any] | str | None] = [
        {"type": "start", "messageId": f"msg-{t}-Xq2"},
        {"type": "start-step"},
        {"type": "reasoning-start", "id": "rs_0"},
        {"type": "reasoning-delta", "id": "rs_0", "delta": "The weather tool."},
        {"type": "reasoning-end", "id": "rs_0"},
        {"type": "tool-input-start", "toolCallId": "call_1", "toolName": "getWeather"},
        {"type": "tool-input-delta", "toolCallId": "call_1", "inputTextDelta": "{\"city\":\"Paris\"}"},
        {"type": "tool-input-available", "toolCallId": "call_1", "toolName": "getWeather", "input": {"city": "Paris"}},
        {"type": "tool-output-available", "toolCallId": "call_1", "output": {"celsius": 21}},
        {"type": "data-weather", "id": "w1", "data": {"city": "Paris", "celsius": 21}},
        {"type": "source-url", "sourceId": "src_1", "url": "https://example.com/paris", "title": "Paris"},
        {"type": "finish-step"},
        {"type": "start-step"},
        {"type": "text-start", "id": "txt_0"},
        {"type": "text-delta", "id": "txt_0", "delta": "It is 21 °C "},
        {"type": "text-delta", "id": "txt_0", "delta": "in Paris."},
        {"type": "text-end", "id": "txt_0"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop"},
        "[DONE]",
    ]
    if t == "badinput":  # the model's tool input did not parse: the SDK says so, the call fails, the model goes on
        evs[7:9] = [{"type": "tool-input-error", "toolCallId": "call_1", "toolName": "getWeather", "input": "{",
                     "errorText": "Invalid input for tool getWeather"},
                    {"type": "tool-output-error", "toolCallId": "call_1", "errorText": "Invalid input for tool"}]
    elif t == "error":  # the provider's error part: the SDK still closes the step and the message
        evs = [*evs[:15], {"type": "error", "errorText": "Overloaded"}, {"type": "finish-step"},
               {"type": "finish", "finishReason": "error"}, "[DONE]"]
    elif t == "thrown":  # an exception in the step: the error part, then the stream closes
        evs = [*evs[:15], {"type": "error", "errorText": "An error occurred."}, "[DONE]"]
    elif t == "truncated":
        evs = [*evs[:-2], "[DONE]"]
    elif t == "unfinished":  # a server tool with no output, yet the message finished
        del evs[8]
    elif t == "hang":
        evs = [*evs[:15], None]
    elif t == "swapped":
        evs[14], evs[16] = evs[16], evs[14]
    return evs


def ai_sdk_script(req: dict[str, Any]) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for ev in ai_sdk_chunks(req["messages"][-1]["parts"][0]["text"]):
            if ev is None:
                await forever()
            else:
                yield sse(ev)
    return gen()


def test_ai_sdk_v5_ui_message_stream(tmp_path):
    # The shipped profile knew no `data-*` part, source, file or tool-input-error (each an R12 on a good stream), and
    # judged the SDK's own close after an error part (finish-step, finish) as events after the end (R4, R3).
    messages = ["weather? #good", "weather? #badinput", "weather? #error", "weather? #thrown", "weather? #truncated",
                "weather? #unfinished", "weather? #hang", "weather? #swapped"]
    with InThread(RawSseServer(ai_sdk_script)) as server:
        got, code = judge(tmp_path, server.url, AI_SDK, messages, deadline="2s")
    assert code == 1
    assert got == {"good": ("passed", ()), "badinput": ("passed", ()), "error": ("failed", ("R13",)),
                   "thrown": ("failed", ("R13",)), "truncated": ("incomplete", ()), "unfinished": ("failed", ("R5",)),
                   "hang": ("incomplete", ("R10",)), "swapped": ("failed", ("R5",))}, got


# -- 5. LangGraph astream_events v2 forwarded over a WebSocket: the events besides nodes, models and tools -------------

LANGGRAPH = str(EXAMPLES / "langgraph-astream-events.yaml")


def langgraph_events(req: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """A graph that retrieves, formats a prompt, dispatches a custom event, calls a tool that raises (the ToolNode
    turns the error into a ToolMessage and the graph goes on) and answers: each event as langchain-core 1.8's
    astream_events(version="v2") yields it, forwarded as JSON (an exception as its repr)."""
    t = tag(req["input"]["messages"][-1]["content"])
    root = f"run-{t}-{n:02d}"
    meta = {"thread_id": req["thread_id"]}

    def ev(event: str, run: str, name: str, parents: list[str], data: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"event": event, "data": data or {}, "run_id": run, "name": name, "tags": [],
                "metadata": {**meta, "langgraph_step": 1, "langgraph_node": name} if parents else meta,
                "parent_ids": parents}

    node, ret, prompt, tools, tool, model = (f"{root}-{x}" for x in ("rag", "ret", "prompt", "tools", "tool", "m"))
    evs = [
        ev("on_chain_start", root, "LangGraph", [], {"input": req["input"]}),
        ev("on_chain_start", node, "rag", [root]),
        ev("on_retriever_start", ret, "VectorStoreRetriever", [root, node], {"input": {"query": "weather"}}),
        ev("on_retriever_end", ret, "VectorStoreRetriever", [root, node], {"output": [{"page_content": "sunny"}]}),
        ev("on_prompt_start", prompt, "ChatPromptTemplate", [root, node], {"input": {"question": "weather"}}),
        ev("on_prompt_end", prompt, "ChatPromptTemplate", [root, node], {"output": {"messages": []}}),
        ev("on_custom_event", node, "progress", [root], {"step": "retrieved"}),
        ev("on_chain_end", node, "rag", [root]),
        ev("on_chain_start", tools, "tools", [root]),
        ev("on_tool_start", tool, "get_weather", [root, tools], {"input": {"city": "Paris"}}),
        ev("on_tool_error", tool, "get_weather", [root, tools], {"error": "ToolException('service down')",
                                                                 "input": {"city": "Paris"}, "tool_call_id": "call_1"}),
        ev("on_chain_end", tools, "tools", [root]),
        ev("on_chat_model_start", model, "ChatOpenAI", [root], {"input": {"messages": []}}),
        ev("on_chat_model_stream", model, "ChatOpenAI", [root],
           {"chunk": {"content": "Sunny, says the guide.", "type": "AIMessageChunk", "id": "run-m"}}),
        ev("on_chat_model_end", model, "ChatOpenAI", [root], {"output": {"content": "Sunny, says the guide."}}),
        ev("on_chain_end", root, "LangGraph", [], {"output": {"messages": []}}),
    ]
    if t == "unended":  # the retriever never ended, yet the graph did
        del evs[3]
    return evs


def test_langgraph_astream_events_beyond_nodes_models_and_tools(tmp_path):
    # The shipped profile knew chains, chat models and tools: a retriever, a prompt, a custom event or a tool's error
    # (which a ToolNode handles) were types outside the dialect (R12), and a tool that raised left its call open (R5).
    count = [0]

    async def handle(conn: WsConn) -> None:
        while (text := await conn.recv()) is not None:
            count[0] += 1
            for ev in langgraph_events(json.loads(text), count[0]):
                await conn.send(ev)

    with InThread(RawWsServer(handle)) as ws:
        got, code = judge(tmp_path, ws.url, LANGGRAPH, ["weather? #good", "weather? #unended"], deadline="2s")
    assert code == 1
    assert got == {"good": ("passed", ()), "unended": ("failed", ("R5",))}, got


# -- a saved body (`curl -N … > body.txt`, a browser's response) of each, checked offline ----------------------------

def _body(events: list[Any], **how: Any) -> bytes:
    return b"".join(sse(e, event=e["type"] if how.get("named") else None, compact=how.get("compact", True))
                    for e in events if e is not None)


def test_a_saved_body_of_each_vendors_stream_is_judged_as_live(tmp_path):
    bodies = {
        ANTHROPIC: lambda m: _body(anthropic_events(m), named=True, compact=False),
        CHAT_COMPLETIONS: lambda m: _body(chat_chunks(m)),
        RESPONSES: lambda m: _body(responses_events(m), named=True),
        AI_SDK: lambda m: _body(ai_sdk_chunks(m)),
    }
    got = {}
    for profile, body in bodies.items():
        for case in ("good", "error", "swapped"):
            f = tmp_path / f"{Path(profile).stem}-{case}.txt"
            f.write_bytes(body(f"weather? #{case}"))
            out = tmp_path / "out.json"
            code = main(["check", str(f), "--profile", profile, "--json", str(out), "-q"])
            [chat] = json.loads(out.read_text())["scenarios"][0]["chats"]
            got[Path(profile).stem, case] = (code, chat["outcome"], sorted({v["rule"] for v in chat["violations"]}))
    want_swapped = {"anthropic-messages": "R5", "openai-chat-completions": "R4", "openai-responses": "R7",
                    "ai-sdk-ui-stream": "R5"}
    assert got == {**{(p, "good"): (0, "passed", []) for p in want_swapped},
                   **{(p, "error"): (1, "failed", ["R13"]) for p in want_swapped},
                   **{(p, "swapped"): (1, "failed", [r]) for p, r in want_swapped.items()}}, got


async def test_a_completion_asked_without_streaming_through_the_proxy_is_no_chat() -> None:
    """A client of the Chat Completions API asks some completions with `stream: false` (a title, a summary): it has
    every key of the template, so the proxy took it for a chat, and the API's JSON answer was a protocol_error
    connection counted against the server. Only `stream: true` is a chat's request; it is judged as ever."""
    from prometheus_client import CollectorRegistry

    from harness.profiles import load_profile
    from harness.scenario import Expect, expectations_for
    from monitors.metrics import ChatMetrics
    from monitors.proxy import LiveChats
    from monitors.sse_proxy import SSEProxy, start_sse_proxy

    from .conftest import Attempts, post_through

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The API as it answers: a JSON completion, or (stream: true) the chunks as SSE, the connection closed after."""
        try:
            async with asyncio.timeout(10):
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
                length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0])
                req = json.loads(await reader.readexactly(length))
            if req.get("stream") is True:
                body = b"".join(sse(c) for c in chat_chunks("hi") if c is not None)
                kind = b"text/event-stream"
            else:
                body = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "A title"}, "finish_reason": "stop"}]}
                                  ).encode()
                kind = b"application/json"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (kind, len(body), body))
            await writer.drain()
        finally:
            writer.close()

    profile = load_profile(CHAT_COMPLETIONS)
    sink = Attempts(ChatMetrics(CollectorRegistry()), "upstream", "live")
    live = LiveChats(profile, sink, expectations_for(profile, Expect(deadline="5s")), "live", 0.2)
    api = await asyncio.start_server(upstream, "127.0.0.1", 0)
    server = await start_sse_proxy(SSEProxy(f"http://127.0.0.1:{api.sockets[0].getsockname()[1]}", live),
                                   "127.0.0.1", 0)
    try:
        proxied = server.sockets[0].getsockname()[1]
        ask = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "Name this chat"}]}
        for stream in ({"stream": False}, {}):
            answer = await post_through(proxied, {**ask, **stream})
            assert answer.startswith(b"HTTP/1.1 200") and b"A title" in answer
        assert sink.attempts == [] and sink.results == []
        assert b"[DONE]" in await post_through(proxied, {**ask, "stream": True})
        async with asyncio.timeout(10):
            while not sink.results:
                sink.judged.clear()
                await sink.judged.wait()
    finally:
        server.close()
        api.close()
        async with asyncio.timeout(10):
            await server.wait_closed()
            await api.wait_closed()
        live.stop()
    assert sink.attempts == ["ok"]
    assert [r.outcome.value for r in sink.results] == ["passed"]
