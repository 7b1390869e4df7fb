"""docs/profiles/a2a.yaml against a real A2A server: the official `a2a-sdk` (its JSON-RPC endpoint with A2A 0.3's
`message/stream` served, `enable_v0_3_compat=True`) under uvicorn on a loopback socket, with an agent executor written
here. The message picks what the agent does: `#good` (a task: submitted, working with a progress note, an answer in
two artifact chunks, completed), `#raise` (the executor raises: the SDK's JSON-RPC error in the stream), `#failed`
(the task fails), `#input` (the task stops for the user's input), `#nofinal` (the executor returns without a final
status: the SDK ends the stream), `#otherctx` (a status update naming another context), `#message` (a Message alone,
no task). The same server speaks A2A 1.0 (`SendStreamingMessage`, the SDK's default) to docs/profiles/a2a-v1.yaml.

Judged as a team adopting chatprobe would: `chatprobe run --profile docs/profiles/a2a.yaml --record`, then `chatprobe
check` of the recording, the same verdicts; then `chatprobe proxy` in front of the same server, with chatprobe's own
client through it, and `chatprobe check` of the proxy's recording, the same verdicts again. What the SDK refuses to
send (events for another task on a chat's stream; a stream that never ends) is served byte for byte as the SDK writes
its streams by a raw server."""
from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from a2a.helpers.proto_helpers import new_task_from_user_message, new_text_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Role,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from harness.cli import main
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.runner import run_scenario
from harness.scenario import Expect, Scenario, expectations_for
from harness.targets import Target
from monitors.metrics import ChatMetrics
from monitors.proxy import LiveChats
from monitors.sse_proxy import SSEProxy, start_sse_proxy

from .asgi import uvicorn_on_loopback
from .conftest import Attempts, Kept, chatprobe_cli, post_through
from .outside_servers import InThread, RawSseServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
A2A = str(Path(__file__).resolve().parents[2] / "docs" / "profiles" / "a2a.yaml")
A2A_V1 = str(Path(__file__).resolve().parents[2] / "docs" / "profiles" / "a2a-v1.yaml")

SCENARIO = """\
name: a2a-chats
users: 1
chats_per_user: {n}
messages: {messages}
expect:
  deadline: {deadline}
  settle: 0.2s
"""


def tag(text: str) -> str:
    return next((w[1:] for w in text.split() if w.startswith("#")), "good")


class Weather(AgentExecutor):
    """An agent as the SDK's samples write one: a task, its progress, its answer as an artifact, its end."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        t = tag(context.get_user_input())
        assert context.message is not None
        if t == "message":  # an immediate answer: one Message, no task
            await event_queue.enqueue_event(new_text_message("It is 21 °C.", context_id=context.context_id,
                                                             role=Role.ROLE_AGENT))
            return
        task = context.current_task or new_task_from_user_message(context.message)
        await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)

        def note(text: str) -> Any:
            return new_text_message(text, context_id=task.context_id, task_id=task.id, role=Role.ROLE_AGENT)

        await updater.start_work(note("Looking up the weather…"))
        await updater.add_artifact([new_text_part("It is")], artifact_id="answer", name="answer")
        await updater.add_artifact([new_text_part(" 21 °C.")], artifact_id="answer", append=True, last_chunk=True)
        if t == "raise":
            raise RuntimeError("weather backend unavailable")
        if t == "nofinal":
            return
        if t == "otherctx":
            await event_queue.enqueue_event(TaskStatusUpdateEvent(
                task_id=task.id, context_id="someone-elses-context",
                status=TaskStatus(state=TaskState.TASK_STATE_WORKING, message=note("Your bank balance is …"))))
        if t == "failed":
            await updater.failed(note("no weather today"))
        elif t == "input":
            await updater.requires_input(note("Which city?"))
        else:
            await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise NotImplementedError


def a2a_app() -> Starlette:
    card = AgentCard(name="weather", description="Tells the weather", version="1.0",
                     capabilities=AgentCapabilities(streaming=True),
                     default_input_modes=["text/plain"], default_output_modes=["text/plain"],
                     skills=[AgentSkill(id="weather", name="weather", description="Tells the weather", tags=["weather"])],
                     supported_interfaces=[AgentInterface(url="http://127.0.0.1/", protocol_binding="JSONRPC",
                                                          protocol_version="0.3")])
    handler = DefaultRequestHandler(agent_executor=Weather(), task_store=InMemoryTaskStore(), agent_card=card)
    return Starlette(routes=create_jsonrpc_routes(handler, "/", enable_v0_3_compat=True))


Verdicts = list[tuple[str, str, tuple[str, ...]]]


def verdicts(report: Path, messages: list[str]) -> tuple[Verdicts, list[str | None]]:
    """Each chat's (tag, outcome, rules), in the order sent (one user: one chat at a time), and its thread."""
    (sc,) = json.loads(report.read_text())["scenarios"]
    chats = sc["chats"]
    assert len(chats) == len(messages)
    return ([(tag(m), c["outcome"], tuple(sorted({v["rule"] for v in c["violations"]})))
             for m, c in zip(messages, chats, strict=True)], [c["thread_id"] for c in chats])


def judge(tmp_path: Path, url: str, messages: list[str], deadline: str = "5s", profile: str = A2A,
          *options: str) -> tuple[Verdicts, int]:
    """`chatprobe run --profile docs/profiles/a2a.yaml --record`, then `chatprobe check` of the recording: the same
    verdicts, each chat of the same thread (the recording tells the chat's context from the request it sent)."""
    scenario = tmp_path / "chats.yaml"
    scenario.write_text(SCENARIO.format(n=len(messages), messages=json.dumps(messages), deadline=deadline))
    live, offline, rec = tmp_path / "live.json", tmp_path / "offline.json", tmp_path / "rec"
    code = main(["run", "--target", url, "--profile", profile, "--auth", "none", *options, str(scenario),
                 "--record", str(rec), "--json", str(live), "-q"])
    assert code in (0, 1), code
    code2 = main(["check", str(rec), "--profile", profile, "--scenario", str(scenario), "--json", str(offline), "-q"])
    got, threads = verdicts(live, messages)
    assert verdicts(offline, messages) == (got, threads)
    assert code2 == code
    return got, code


MESSAGES = ["weather? #good", "weather? #raise", "weather? #failed", "weather? #input", "weather? #nofinal",
            "weather? #otherctx", "weather? #message"]
EXPECTED = [("good", "passed", ()), ("raise", "failed", ("R13",)), ("failed", "failed", ("R13",)),
            ("input", "passed", ()), ("nofinal", "incomplete", ()), ("otherctx", "failed", ("R8",)),
            ("message", "failed", ("R1", "R2"))]


def test_the_sdks_streams_judged_live_and_from_the_recording(tmp_path):
    with uvicorn_on_loopback(a2a_app()) as port:
        got, code = judge(tmp_path, f"http://127.0.0.1:{port}/", MESSAGES)
    assert code == 1
    assert got == EXPECTED, got


def test_the_sdks_own_a2a_1_0_streams_judged_by_the_v1_profile(tmp_path):
    # The SDK's default: SendStreamingMessage with `A2A-Version: 1.0`, results told by their key (type_keys paths),
    # TASK_STATE_* states and no `final`: the same verdicts.
    with uvicorn_on_loopback(a2a_app()) as port:
        url = f"http://127.0.0.1:{port}/"
        got, code = judge(tmp_path, url, MESSAGES, "5s", A2A_V1, "--header", "A2A-Version: 1.0")
        assert code == 1
        assert got == EXPECTED, got
        # Without the header the SDK reads the request as 0.3's and refuses it with a JSON answer: no stream.
        report = tmp_path / "no-header.json"
        assert main(["run", "--target", url, "--profile", A2A_V1, "--auth", "none", "basic", "--json", str(report),
                     "-q"]) == 1
    (sc,) = json.loads(report.read_text())["scenarios"]
    assert {(c["outcome"], c["error_kind"], c["error"]) for c in sc["chats"]} == \
        {("error", "protocol_error", "content type 'application/json', not text/event-stream")}, sc["chats"]


async def test_behind_the_proxy_and_from_its_recording_as_the_client_judges(tmp_path):
    profile = load_profile(A2A)
    scenario = Scenario.model_validate(dict(name="a2a-chats", users=1, chats_per_user=len(MESSAGES),
                                            messages=MESSAGES, expect={"deadline": "5s", "settle": "0.2s"}))
    record = tmp_path / "rec"
    sink = Kept(ChatMetrics(CollectorRegistry()), "upstream", "live")
    live = LiveChats(profile, sink, expectations_for(profile, Expect(deadline="5s")), "live", 0.2,
                     Recorder(str(record), keep_all=True))
    with uvicorn_on_loopback(a2a_app()) as port:
        server = await start_sse_proxy(SSEProxy(f"http://127.0.0.1:{port}", live), "127.0.0.1", 0)
        try:
            url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
            run = await run_scenario(scenario, Target(url=url, profile=profile, name="a2a"))
            async with asyncio.timeout(10):
                while len(sink.results) < len(MESSAGES):
                    sink.judged.clear()
                    await sink.judged.wait()
        finally:
            server.close()
            async with asyncio.timeout(10):
                await server.wait_closed()
            live.stop()

    def by_thread(results: list[Any]) -> dict[str | None, tuple[str, tuple[str, ...]]]:
        return {r.thread_id: (r.outcome.value, tuple(sorted({v.rule.value for v in r.violations}))) for r in results}

    client = by_thread(run.results)
    assert sorted(client.values()) == sorted((o, rules) for _, o, rules in EXPECTED), client
    assert by_thread(sink.results) == client  # the proxy judged each chat as the client did
    report = tmp_path / "check.json"
    code, out = await chatprobe_cli("check", str(record), "--profile", A2A, "--json", str(report), "-q")
    assert code == 1, out
    (sc,) = json.loads(report.read_text())["scenarios"]
    assert {c["thread_id"]: (c["outcome"], tuple(sorted({v["rule"] for v in c["violations"]})))
            for c in sc["chats"]} == client


# -- what the SDK will not send, as it would write it ----------------------------------------------------------------

def sdk_events(text: str, context: str, message_id: str) -> list[dict[str, Any] | None]:
    """The `result`s of a2a-sdk 1.3's v0.3 stream for one task (as `#good` above makes it), with a fault."""
    t, task = tag(text), f"{uuid.uuid4()}"
    user = {"contextId": context, "kind": "message", "messageId": message_id, "role": "user", "taskId": task,
            "parts": [{"kind": "text", "text": text}]}
    evs: list[dict[str, Any] | None] = [
        {"contextId": context, "history": [user], "id": task, "kind": "task", "status": {"state": "submitted"}},
        {"contextId": context, "final": False, "kind": "status-update", "taskId": task,
         "status": {"state": "working", "timestamp": "2026-01-05T11:50:56.420425Z"}},
        {"append": False, "artifact": {"artifactId": "answer", "name": "answer", "parts": [{"kind": "text",
         "text": "It is"}]}, "contextId": context, "kind": "artifact-update", "lastChunk": False, "taskId": task},
        {"append": True, "artifact": {"artifactId": "answer", "parts": [{"kind": "text", "text": " 21 °C."}]},
         "contextId": context, "kind": "artifact-update", "lastChunk": True, "taskId": task},
        {"contextId": context, "final": True, "kind": "status-update", "taskId": task,
         "status": {"state": "completed", "timestamp": "2026-01-05T11:50:56.420527Z"}},
    ]
    if t == "othertask":  # another task's progress, of another user's context, on this chat's stream
        other = {**evs[3], "taskId": f"{uuid.uuid4()}", "contextId": f"{uuid.uuid4()}"}
        evs.insert(3, other)
    elif t == "hang":  # the final status never comes, and the stream stays open
        evs[-1] = None
    elif t == "notfinal":  # completed, but `final: false`, and the stream ends
        evs[-1] = {**evs[-1], "final": False}
    return evs


def sdk_script(req: dict[str, Any]) -> AsyncIterator[bytes]:
    message = req["params"]["message"]
    evs = sdk_events(message["parts"][0]["text"], message["contextId"], message["messageId"])

    async def gen() -> AsyncIterator[bytes]:
        for ev in evs:
            if ev is None:
                await asyncio.Event().wait()
            data = json.dumps({"id": req["id"], "jsonrpc": "2.0", "result": ev}, ensure_ascii=False,
                              separators=(",", ":"))
            yield f"data: {data}\n\n".encode()
    return gen()


def test_events_of_another_task_a_stream_never_ended_and_a_status_not_final(tmp_path):
    messages = ["weather? #good", "weather? #othertask", "weather? #hang", "weather? #notfinal"]
    with InThread(RawSseServer(sdk_script)) as server:
        got, code = judge(tmp_path, server.url, messages, deadline="2s")
    assert code == 1
    assert got == [("good", "passed", ()), ("othertask", "failed", ("R8",)), ("hang", "incomplete", ("R10",)),
                   ("notfinal", "incomplete", ())], got


async def test_the_other_json_rpc_calls_of_a_client_through_the_proxy_are_no_chats(tmp_path):
    """An A2A client calls more than message/stream on the same endpoint (tasks/get, message/send, tasks/cancel): each
    has the template's `id`, which was all the proxy looked for, so each was a chat's request, and the SDK's JSON
    answer a protocol_error connection counted against the server (chatprobe_connections_total). They are relayed,
    not followed; the message/stream of the same client is a chat, judged as ever."""
    profile = load_profile(A2A)
    sink = Attempts(ChatMetrics(CollectorRegistry()), "upstream", "live")
    live = LiveChats(profile, sink, expectations_for(profile, Expect(deadline="5s")), "live", 0.2)
    context = str(uuid.uuid4())
    with uvicorn_on_loopback(a2a_app()) as port:
        server = await start_sse_proxy(SSEProxy(f"http://127.0.0.1:{port}", live), "127.0.0.1", 0)
        try:
            proxied = server.sockets[0].getsockname()[1]
            message = {"kind": "message", "role": "user", "messageId": str(uuid.uuid4()), "contextId": context,
                       "parts": [{"kind": "text", "text": "weather? #good"}]}
            for method, params in (("tasks/get", {"id": str(uuid.uuid4())}), ("tasks/cancel", {"id": "t-none"}),
                                   ("message/send", {"message": {**message, "messageId": str(uuid.uuid4())}})):
                answer = await post_through(proxied, {"jsonrpc": "2.0", "id": str(uuid.uuid4()), "method": method,
                                              "params": params})
                assert answer.startswith(b"HTTP/1.1 200") and b"application/json" in answer.split(b"\r\n\r\n")[0]
            assert sink.attempts == [] and sink.results == []
            streamed = await post_through(proxied, {"jsonrpc": "2.0", "id": message["messageId"], "method": "message/stream",
                                            "params": {"message": message}})
            assert b"text/event-stream" in streamed.split(b"\r\n\r\n")[0]
            async with asyncio.timeout(10):
                while not sink.results:
                    sink.judged.clear()
                    await sink.judged.wait()
        finally:
            server.close()
            async with asyncio.timeout(10):
                await server.wait_closed()
            live.stop()
    assert sink.attempts == ["ok"]
    ((result),) = sink.results
    assert (result.thread_id, result.outcome.value) == (context, "passed")
