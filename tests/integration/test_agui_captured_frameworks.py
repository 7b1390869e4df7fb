"""AG-UI servers of eight more agent frameworks and CopilotKit's runtime, replayed from their bytes: each was run on
loopback (under uvicorn, CopilotKit's under Node) with a scripted model (a fake OpenAI Chat Completions server, an ADK
`BaseLlm` or AG2 `TestConfig` of the test's own), and the body of one chat saved with `curl -N`
(`agui_captures/*.sse`, the request's `threadId` and `runId` sent as THREAD and RUN, so a replay names the client's
own); the heads below are theirs, less the Date. The frameworks are no dependency of this project, so a raw server
here sends what they sent, each event a chunk of its own as uvicorn writes them:

- `llama-index-protocols-ag-ui` 0.6.0 (llama-index-core 0.14.25): `TOOL_CALL_CHUNK`s, the backend tool's result only
  as a `tool` message of a `MESSAGES_SNAPSHOT`, timestamps in seconds. On a model failure its router yields
  `RUN_ERROR` and then re-raises, so uvicorn drops the connection without the chunked body's last chunk: the R12 of a
  malformed HTTP response beside the error (a `fetch()` client, AG-UI's `HttpAgent`, fails there too) — the
  framework's bug, the one violation chatprobe finds in these servers.
- `ag-ui-adk` 0.11.0 (google-adk 2.13.0): sse-starlette's `EventSourceResponse` (`x-accel-buffering: no`; during a
  model call of 16 s its keep-alive comment, `: ping - <time>` ended by CRLF CRLF between events ended by LF LF),
  reasoning as `REASONING_*`, `RUN_ERROR` with `code`.
- `agno` 3.1.10's AG-UI interface: agno's own events as `RAW`, `STATE_DELTA` patches, `RUN_ERROR` with `rawEvent`.
- `ag-ui-crewai` 1.0.0 (crewai 1.15.30), `emission_shape="chunks"` with RAW passthrough: `TOOL_CALL_CHUNK` and
  `TEXT_MESSAGE_CHUNK`, `STEP_*` with `rawEvent`, a `RUN_ERROR` naming its thread and run.

- `agent-framework-ag-ui` 1.7.0 (Microsoft Agent Framework, agent-framework-core 1.26.0, on `ag-ui-protocol` 0.1.22;
  its OpenAIChatCompletionClient on the fake): a tool call inside an open, textless `TEXT_MESSAGE_START` that names it
  as `parentMessageId`, two calls' args interleaved with one's result, `MESSAGES_SNAPSHOT` before `RUN_FINISHED`,
  reasoning as an empty reasoning message with `REASONING_ENCRYPTED_VALUE`, predictive state (`CUSTOM`
  `PredictState`, `STATE_SNAPSHOT`, a `replace` `STATE_DELTA` while the call streams), its keep-alive comment
  (`: keepalive` ended by CRLF CRLF) between events, a call held for approval as a `CUSTOM` event, a synthetic
  `confirm_changes` call and the `interrupt` outcome (on its 0.1 models), `RUN_ERROR` with `code`. A workflow (two
  agents in a `SequentialBuilder`) nests `STEP_*` per superstep and executor with an `ACTIVITY_SNAPSHOT` each; when
  it fails, it sends a `CUSTOM` `status` event after its `RUN_ERROR`: the R4 of an event after the terminal one
  (AG-UI's own client refuses it too), its own bug (`mafwf_fail`).
- `ag2` 1.2.1's `AGUIStream` (its scripted `ag2.testing.TestConfig`): a one-event answer as `TEXT_MESSAGE_CHUNK`,
  `REASONING_*` under one id for the phase and its message, a delegated task as `SUBAGENT_STARTED`/`_FINISHED`
  (suspended when the task asked the user), a question or a tool approval as the `interrupt` outcome (its proof
  scrubbed), a `RUN_ERROR` without `code`.
- `ag-ui-strands` 1.0.2 (strands-agents 1.62.0, its OpenAIModel on the fake): `STATE_SNAPSHOT` and
  `MESSAGES_SNAPSHOT` around the answer, a `parentMessageId` that only a later `MESSAGES_SNAPSHOT` shows (advice,
  not a failure), a tool's `tool_context.interrupt()` as the `interrupt` outcome.

- `@copilotkit/runtime` 1.75.0's v2 endpoint (`createCopilotEndpoint` on Hono under Node 20, its `BuiltInAgent` on the
  AI SDK's OpenAI provider pointed at the fake, `POST /api/agent/default/run`): `RUN_STARTED.input` echoing the
  request, a `parentMessageId` no event shows (advice), `RUN_FINISHED.finishReason`, `RUN_ERROR` naming its run. When
  a backend tool throws, the runtime drops the AI SDK's tool-error part: the call never gets its `TOOL_CALL_RESULT`
  and the model goes on, so a client shows the call pending forever: the R5 of a backend call without result, the one
  violation of its streams (`copilotkit_failtool`). A Mastra agent (`@mastra/core` 1.71, its model the AI SDK's
  OpenAI provider on the fake) through `@ag-ui/mastra` 1.1.2 on the same runtime does the same with a failing tool
  (`mastra_failtool`); it sends `RUN_FINISHED.usage` and a text message id other than the `parentMessageId` its
  tool calls name (advice).

Their `*_client` captures (a frontend tool the request offered) and the runs that resume an interrupt
(`ag2_resume`, `maf_resume`, `strands_resume`) need the client's own request: test_agui_client_request.py replays
them behind the proxy.

Every stream but llama-index's failure, the failed Agent Framework workflow and the failed tools on CopilotKit's runtime
passes, live and from the recording; the errors are the expected fatal ones."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from .conftest import chatprobe_cli as chatprobe
from .test_sse_attacks import RawServer

pytestmark = pytest.mark.timeout(150)

CAPTURES = Path(__file__).parent / "agui_captures"
UVICORN = b"HTTP/1.1 200 OK\r\nserver: uvicorn\r\n"
SSE = b"content-type: text/event-stream; charset=utf-8\r\n"
HEADS = {
    "llama": UVICORN + SSE,
    "adk": UVICORN + b"cache-control: no-store\r\nconnection: keep-alive\r\nx-accel-buffering: no\r\n" + SSE,
    "agno": UVICORN + b"cache-control: no-cache\r\nconnection: keep-alive\r\naccess-control-allow-origin: *\r\n"
                      b"access-control-allow-methods: POST, GET, OPTIONS\r\naccess-control-allow-headers: *\r\n" + SSE
                      + b"vary: Origin\r\n",
    "crewc": UVICORN + SSE,
    "crew": UVICORN + SSE,
    "maf": UVICORN + b"cache-control: no-cache\r\nconnection: keep-alive\r\nx-accel-buffering: no\r\n" + SSE,
    "mafwf": UVICORN + b"cache-control: no-cache\r\nconnection: keep-alive\r\nx-accel-buffering: no\r\n" + SSE,
    "ag2": UVICORN + SSE,
    "strands": UVICORN + b"cache-control: no-cache\r\n" + SSE,
    "copilotkit": b"HTTP/1.1 200 OK\r\naccess-control-allow-origin: *\r\ncache-control: no-cache\r\n"
                  b"connection: keep-alive\r\ncontent-type: text/event-stream\r\n",
}
HEADS["mastra"] = HEADS["copilotkit"]
# capture: (the chat's step, its outcome, the rules of its violations)
CHATS = {
    "llama_tool": ("", "passed", []),
    "llama_fail": (", expect_error: fatal", "failed", ["R12"]),
    "adk_tool": ("", "passed", []),
    "adk_think": ("", "passed", []),
    "adk_slow": ("", "passed", []),
    "agno_tool": ("", "passed", []),
    "agno_fail": (", expect_error: fatal", "passed", []),
    "crewc_tool": ("", "passed", []),
    "crew_fail": (", expect_error: fatal", "passed", []),
    "maf_tool": ("", "passed", []),
    "maf_two": ("", "passed", []),
    "maf_think": ("", "passed", []),
    "maf_state": ("", "passed", []),
    "maf_slow": ("", "passed", []),
    "maf_fail": (", expect_error: fatal", "passed", []),
    "maf_approve": ("", "passed", []),
    "mafwf_tool": ("", "passed", []),
    "mafwf_fail": (", expect_error: fatal", "failed", ["R4"]),
    "ag2_tool": ("", "passed", []),
    "ag2_think": ("", "passed", []),
    "ag2_sub": ("", "passed", []),
    "ag2_subask": ("", "passed", []),
    "ag2_approve": ("", "passed", []),
    "ag2_ask": ("", "passed", []),
    "ag2_fail": (", expect_error: fatal", "passed", []),
    "strands_tool": ("", "passed", []),
    "strands_think": ("", "passed", []),
    "strands_fail": (", expect_error: fatal", "passed", []),
    "strands_ask": ("", "passed", []),
    "copilotkit_tool": ("", "passed", []),
    "copilotkit_slow": ("", "passed", []),
    "copilotkit_fail": (", expect_error: fatal", "passed", []),
    "copilotkit_failtool": ("", "failed", ["R5"]),
    "mastra_tool": ("", "passed", []),
    "mastra_fail": (", expect_error: fatal", "passed", []),
    "mastra_failtool": ("", "failed", ["R5"]),
}


async def replay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> None:
    """The capture the message names, for the request's thread and run."""
    inp = json.loads(body)
    name = inp["messages"][-1]["content"].split()[-1]
    data = (CAPTURES / f"{name}.sse").read_bytes()
    data = data.replace(b'"THREAD"', json.dumps(inp["threadId"]).encode())
    data = data.replace(b'"RUN"', json.dumps(inp["runId"]).encode())
    out = HEADS[name.split("_")[0]] + b"Transfer-Encoding: chunked\r\n\r\n"
    for event in data.replace(b"\r\n\r\n", b"\r\n\r\n\0").replace(b"\n\n", b"\n\n\0").split(b"\0")[:-1]:
        out += b"%x\r\n%s\r\n" % (len(event), event)
    # llama-index re-raises after its RUN_ERROR: the connection ends with no last chunk.
    writer.write(out if name == "llama_fail" else out + b"0\r\n\r\n")
    await writer.drain()


def verdicts(report: Path) -> list[tuple[str, list[str]]]:
    chats = json.loads(report.read_text())["scenarios"][0]["chats"]
    return [(c["outcome"], [v["rule"] for v in c["violations"]]) for c in chats]


async def test_the_frameworks_streams_are_judged_as_they_are_live_and_from_their_recording(tmp_path):
    scenario = tmp_path / "frameworks.yaml"
    scenario.write_text("name: frameworks\nexpect: {deadline: 20s, settle: 0.1s}\nsteps:\n" + "".join(
        f"  - chat: {{message: 'replay {name}'{step}}}\n" for name, (step, _, _) in CHATS.items()))
    async with RawServer(replay) as srv:
        code, text = await chatprobe("run", str(scenario), "--target", srv.url, "--profile", "ag-ui",
                                     "--json", str(tmp_path / "run.json"), "--record", str(tmp_path / "rec"))
    assert code == 1, text  # the three frameworks' own bugs, alone
    expected = [(outcome, rules) for _, outcome, rules in CHATS.values()]
    assert verdicts(tmp_path / "run.json") == expected, text
    (malformed,) = json.loads((tmp_path / "run.json").read_text())["scenarios"][0]["chats"][1]["violations"]
    assert "the HTTP response carrying the event stream is malformed" in malformed["reason"], malformed
    code, text = await chatprobe("check", str(tmp_path / "rec"), "--profile", "ag-ui", "--json",
                                 str(tmp_path / "check.json"))
    assert code == 1, text
    assert verdicts(tmp_path / "check.json") == expected, text
