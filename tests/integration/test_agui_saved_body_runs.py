"""A saved AG-UI response body (`curl -N > body.sse`, `chatprobe check --format sse`) that carries more than one run
start is judged as `chatprobe run` judged the same stream live, and as `chatprobe check` of its `--record`ing: one
response answers one request, so its first run is its chat and a later `RUN_STARTED` is what it is on that stream.
A further run after the first closed (a replayed thread, a resumed interrupt) continues the first run's checks
(known tool calls, state); a second `RUN_STARTED` inside the open run is R1. The server is a raw asyncio HTTP/1.0
server on loopback writing the events as an `ag-ui-protocol` `EventEncoder` does (sse_stacks.serve_raw).

FAILED on the code before this file, with what was wrong:
- test_a_saved_body_judges_its_runs_as_run_and_check_of_the_recording: a body with no recorded request made each
  new run id a chat of its own, fresh. The further run resuming a call of the first run and patching its state
  passed live and failed the body's check (R5 "TOOL_CALL_RESULT for tool call … which never started", R12 "STATE_DELTA
  does not apply"), counted as two chats; a second RUN_STARTED inside the open run, R1 live, passed as two chats.
"""
from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from harness.cli import main

from .sse_stacks import Action, Agent, Answer, Wire, serve_raw

pytestmark = pytest.mark.timeout(60)

PASS = ("passed", ())


def resumed(inp: dict[str, Any], text: str) -> list[Action]:
    """A run that leaves a frontend-style call pending, then a further run on the same stream (parentRunId) that
    answers it and patches the state the first run set."""
    t, r = inp["threadId"], inp["runId"]
    return [
        {"type": "RUN_STARTED", "threadId": t, "runId": r},
        {"type": "STATE_SNAPSHOT", "snapshot": {"approved": False}},
        {"type": "TEXT_MESSAGE_CHUNK", "messageId": "m1", "delta": "May I?"},
        {"type": "TOOL_CALL_START", "toolCallId": "c1", "toolCallName": "confirm", "parentMessageId": "m1"},
        {"type": "TOOL_CALL_END", "toolCallId": "c1"},
        {"type": "RUN_FINISHED", "threadId": t, "runId": r,
         "outcome": {"type": "success", "pendingToolCallIds": ["c1"]}},
        {"type": "RUN_STARTED", "threadId": t, "runId": f"{r}-2", "parentRunId": r},
        {"type": "TOOL_CALL_RESULT", "messageId": "t1", "toolCallId": "c1", "content": "yes"},
        {"type": "STATE_DELTA", "delta": [{"op": "replace", "path": "/approved", "value": True}]},
        {"type": "TEXT_MESSAGE_CHUNK", "messageId": "m2", "delta": "Done."},
        {"type": "RUN_FINISHED", "threadId": t, "runId": f"{r}-2"},
    ]


def restarted(inp: dict[str, Any], text: str) -> list[Action]:
    """A second RUN_STARTED while the run is open (R1), each start closed by a RUN_FINISHED of its own (R3)."""
    t, r = inp["threadId"], inp["runId"]
    return [
        {"type": "RUN_STARTED", "threadId": t, "runId": r},
        {"type": "TEXT_MESSAGE_CHUNK", "messageId": "m1", "delta": "Hi"},
        {"type": "RUN_STARTED", "threadId": t, "runId": f"{r}-inner"},
        {"type": "RUN_FINISHED", "threadId": t, "runId": f"{r}-inner"},
        {"type": "RUN_FINISHED", "threadId": t, "runId": r},
    ]


@pytest.mark.parametrize(("answer", "verdicts"), [
    (resumed, [PASS, PASS]),  # the chat and its further run
    (restarted, [("failed", ("R1", "R3"))]),
], ids=["further-run-resumes-the-call-and-state", "second-start-inside-the-run"])
def test_a_saved_body_judges_its_runs_as_run_and_check_of_the_recording(tmp_path, answer, verdicts):
    got = judged(tmp_path, answer)
    # One chat asked for by every road, its further run a record of its own.
    assert got == {"run": (1, verdicts), "check": (1, verdicts), "body": (1, verdicts)}, got


def judged(tmp_path: Any, answer: Answer) -> dict[str, tuple[int, list[tuple[str, tuple[str, ...]]]]]:
    """(chats counted, each run's (outcome, rules)) by `chatprobe run` (recorded), `chatprobe check` of the
    recording, and `chatprobe check --format sse` of the body of the same request saved by hand."""
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(json.dumps({"name": "bodies", "users": 1, "connect_timeout": "3s",
                                    "steps": [{"chat": {"message": "Go"}}],
                                    "expect": {"deadline": "3s", "settle": "0.5s"}}))
    live, offline, rec, body, saved = (tmp_path / n for n in ("live.json", "check.json", "rec", "body.json",
                                                              "body.sse"))
    agent = Agent(answer)
    with serve_raw(agent, Wire(framing="close")) as url:
        code = main(["run", "--target", url, "--profile", "ag-ui", "--auth", "none", str(scenario),
                     "--record", str(rec), "--json", str(live), "-q"])
        with httpx.Client(timeout=10) as client:
            saved.write_bytes(client.post(url, json=agent.requests[0],
                                          headers={"Accept": "text/event-stream"}).content)
    assert code in (0, 1), code
    for args, report in (([str(rec)], offline), ([str(saved), "--format", "sse"], body)):
        assert main(["check", *args, "--profile", "ag-ui", "--scenario", str(scenario), "--json", str(report),
                     "-q"]) == code
    out = {}
    for road, report in (("run", live), ("check", offline), ("body", body)):
        (doc,) = json.loads(report.read_text())["scenarios"]
        out[road] = (doc["stats"]["chats"], [(c["outcome"], tuple(sorted({v["rule"] for v in c["violations"]})))
                                             for c in doc["chats"]])
    return out
