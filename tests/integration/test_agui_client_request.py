"""`chatprobe proxy` and `chatprobe check` of its recording judge an AG-UI chat against the RunAgentInput the user's own
client sent, not the profile's template (which offers no tools and resumes nothing), over real loopback sockets: a
raw upstream replays what real frameworks sent (agui_captures/, see test_agui_captured_frameworks.py).

- A frontend tool: Microsoft Agent Framework's AG-UI endpoint (`agent-framework-ag-ui` 1.7.0), and CopilotKit's
  runtime (`@copilotkit/runtime` 1.75.0, its own agent or a Mastra one), call a tool the
  client's request offered and ends the run, as the spec's frontend-tool path says, with no `TOOL_CALL_RESULT` and no
  `pendingToolCallIds`. The proxy took every call for a backend call and failed the chat (R5) for any client that
  offers tools, as CopilotKit-style apps do. A request offering no tools still makes the call a backend one (R5).
- A resume: AG2's `AGUIStream` (`ag2` 1.2.1) and `ag-ui-strands` 1.0.2 end a run whose tool asks the user, and
  Microsoft Agent Framework one whose tool call awaits approval, with the `interrupt` outcome; the client's next
  request on the thread carries `resume`, and that run answers the call the interrupted one left
  (`TOOL_CALL_RESULT`), as "Run 2 begins; resume[].interruptId links back to run 1's interrupts ... ToolCallResult"
  (spec 1.1, Interrupts). The proxy judged it a result for a call that never started (R5). Without `resume`, the
  same stream still is."""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx
import pytest

from .test_agui_captured_frameworks import CAPTURES
from .test_sse_proxy import answer, proxy_to, raw_upstream, sample, until

pytestmark = pytest.mark.timeout(120)

CONFIRM = {"name": "confirm", "description": "ask the user", "parameters": {"type": "object", "properties": {
    "q": {"type": "string"}}}}


def request(thread: str, run: str, tools: list[dict], **more: object) -> bytes:
    return json.dumps({"threadId": thread, "runId": run, "state": {}, "tools": tools, "context": [],
                       "forwardedProps": {}, "messages": [{"id": f"m-{run}", "role": "user", "content": "go"}],
                       **more}).encode()


def events(name: str, body: bytes) -> list[bytes]:
    """The capture's events, for the request's thread and run, each a chunk of its own."""
    inp = json.loads(body)
    data = (CAPTURES / f"{name}.sse").read_bytes()
    data = data.replace(b'"THREAD"', json.dumps(inp["threadId"]).encode())
    data = data.replace(b'"RUN"', json.dumps(inp["runId"]).encode())
    return [e + b"\n\n" for e in data.split(b"\n\n") if e]


async def judged_alike(tmp_path: Path, name: str, bodies: list[bytes], pick) -> tuple[dict, dict]:
    """Each body POSTed through the proxy in turn to a raw upstream answering `pick(body)`'s capture; the proxy's
    verdicts (outcomes, violations by rule) and `chatprobe check`'s of its recording."""
    record = tmp_path / name

    async def handle(reader, writer, head, body):
        await answer(events(pick(body), body))(reader, writer, head, body)

    async with raw_upstream(handle) as (up, _), proxy_to(up, record=record) as (url, metrics, _):
        async with httpx.AsyncClient(timeout=10) as client:
            for body in bodies:
                response = await client.post(f"{url}/agent", content=body, headers={"Accept": "text/event-stream"})
                assert response.status_code == 200 and b"RUN_FINISHED" in response.content
        outcomes = ("passed", "failed", "incomplete", "error")
        await until(lambda: sum(sample(metrics, "chatprobe_chats_total", outcome=o) for o in outcomes) == len(bodies))
        live = {o: int(sample(metrics, "chatprobe_chats_total", outcome=o)) for o in outcomes}
        live_rules = {r: int(v) for r in ("R5", "R12", "R13")
                      if (v := sample(metrics, "chatprobe_rule_violations_total", rule=r))}
    report = tmp_path / f"{name}.json"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "harness.cli", "check", str(record), "--profile",
                                                "ag-ui", "--json", str(report), "--quiet",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode in (0, 1), err.decode()
    stats = json.loads(report.read_text())["scenarios"][0]["stats"]
    assert {o: stats["outcomes"].get(o, 0) for o in outcomes} == live, (stats, live)
    assert stats["violations"] == live_rules, (stats, live_rules)
    return live, live_rules


@pytest.mark.parametrize("capture", ["maf_client", "copilotkit_client", "mastra_client"])
async def test_a_frontend_tool_the_users_client_offered_owes_no_result_behind_the_proxy_nor_in_its_recording(tmp_path,
                                                                                                            capture):
    offered = request("t-offered", "r-1", [CONFIRM])
    not_offered = request("t-bare", "r-2", [])
    live, rules = await judged_alike(tmp_path, "frontend", [offered, not_offered], lambda body: capture)
    # The call of the tool the client offered is the client's to answer; the same call with no tool offered is a
    # backend call the server left unanswered.
    assert live == {"passed": 1, "failed": 1, "incomplete": 0, "error": 0} and rules == {"R5": 1}


@pytest.mark.parametrize("asking, resuming, answer", [
    ("ag2_ask", "ag2_resume", "the blue one"),  # a tool asked the user (reason input_required, no toolCallId)
    ("maf_approve", "maf_resume", {"approved": True}),  # a tool call held for approval (reason tool_call)
    ("strands_ask", "strands_resume", "the blue one"),  # a tool's native interrupt (tool_context.interrupt)
], ids=["ag2-question", "maf-approval", "strands-interrupt"])
async def test_a_run_resuming_an_interrupt_answers_the_interrupted_runs_call_behind_the_proxy_and_in_its_recording(
        tmp_path, asking, resuming, answer):
    asked = request("t-1", "r-ask", [])
    ask_events = events(asking, asked)
    interrupt = json.loads(ask_events[-1][len(b"data: "):])["outcome"]["interrupts"][0]
    resumed = request("t-1", "r-resume", [], resume=[{"interruptId": interrupt["id"], "status": "resolved",
                                                      "payload": answer}])
    unasked = request("t-2", "r-unasked", [])  # no resume: a result for a call no run of it started

    def pick(body: bytes) -> str:
        inp = json.loads(body)
        return asking if inp["runId"] == "r-ask" else resuming

    live, rules = await judged_alike(tmp_path, "resume", [asked, resumed, unasked], pick)
    assert live == {"passed": 2, "failed": 1, "incomplete": 0, "error": 0} and rules == {"R5": 1}


@pytest.mark.parametrize("req", [
    {"tools": "confirm", "messages": "no", "resume": {}},
    {"tools": [1, None, {"name": 5}, {"name": ["x"]}], "messages": [1, None, {"toolCalls": "x"},
                                                                    {"toolCalls": [None, {"id": 3}, {"id": "c"}]}]},
    {"tools": [{"name": "t" * 5000 + str(i)} for i in range(3000)], "resume": [None]},
], ids=["wrong-types", "wrong-items", "flood"])
def test_a_hostile_request_is_read_without_a_failure_and_within_its_bounds(req):
    from harness.payload_checks import MAX_ID_CHARS, MAX_OFFERED, AguiRunChecks, RunContext

    checks = AguiRunChecks(RunContext(request=req))
    assert checks.ctx.request is None  # read as the checks start, not kept
    assert len(checks.ctx.offered_tools) <= MAX_OFFERED
    assert all(len(name) <= MAX_ID_CHARS for name in checks.ctx.offered_tools)
    assert checks.followup().ctx == checks.ctx  # a further run of the stream offers the same tools, resumes nothing
    assert not checks.followup().resuming


async def test_a_browsers_har_of_a_frontend_tool_is_judged_against_the_request_it_holds(tmp_path):
    """A HAR a browser saved of an app on CopilotKit's runtime: its POST body offers the tool the run calls."""
    body = request("t1", "r1", [CONFIRM])
    stream = b"".join(events("copilotkit_client", body)).decode()
    entry = {"startedDateTime": "2026-12-05T09:00:00.000Z", "time": 50, "cache": {},
             "timings": {"send": 0, "wait": 10, "receive": 40},
             "request": {"method": "POST", "url": "http://127.0.0.1:3000/api/agent/default/run", "httpVersion": "HTTP/1.1",
                         "headers": [{"name": "Content-Type", "value": "application/json"}], "queryString": [],
                         "cookies": [], "headersSize": -1, "bodySize": len(body),
                         "postData": {"mimeType": "application/json", "text": body.decode()}},
             "response": {"status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1", "cookies": [],
                          "headers": [{"name": "content-type", "value": "text/event-stream"}], "redirectURL": "",
                          "headersSize": -1, "bodySize": -1,
                          "content": {"size": len(stream), "mimeType": "text/event-stream", "text": stream}}}
    har = tmp_path / "page.har"
    har.write_text(json.dumps({"log": {"version": "1.2", "creator": {"name": "browser", "version": "1"},
                                       "entries": [entry]}}))
    report = tmp_path / "check.json"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "harness.cli", "check", str(har), "--profile",
                                                "ag-ui", "--json", str(report), "--quiet",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    (chat,) = json.loads(report.read_text())["scenarios"][0]["chats"]
    assert chat["outcome"] == "passed" and chat["violations"] == [], chat
