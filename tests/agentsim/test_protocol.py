"""Every frame shape of docs/protocol.md's netra wire format as agentsim sends it, over real sockets."""

from __future__ import annotations

import json
import time

import pytest
import websockets

from .wsclient import chat, collect_runs, connect, gt_of, recv, send

AGENT_ROLES = ("agent_started", "agent_thinking", "tool_executing", "tool_completed", "partial_result",
               "agent_completed", "agent_error")
PAYLOAD_FIELDS = {
    "agent_started": {"agent_name", "message_id"},
    "agent_thinking": {"thought", "step_number"},
    "tool_executing": {"tool_name", "tool_call_id", "parameters"},
    "tool_completed": {"tool_name", "tool_call_id", "result", "duration_ms", "success"},
    "partial_result": {"content", "is_complete"},
    "agent_completed": {"result", "duration_ms"},
    "agent_error": {"error_message", "error_type", "is_recoverable"},
}


def check_run(events: list[dict], user: str) -> None:
    """Field-by-field check of one run's frames against the reference wire format."""
    run_id, thread_id = events[0]["run_id"], events[0]["thread_id"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    for e in events:
        assert set(e) == {"type", "run_id", "thread_id", "user_id", "seq", "timestamp", "payload"}, e
        assert e["type"] in AGENT_ROLES
        assert (e["run_id"], e["thread_id"], e["user_id"]) == (run_id, thread_id, user)
        assert isinstance(e["timestamp"], float) and abs(e["timestamp"] - time.time()) < 60
        assert PAYLOAD_FIELDS[e["type"]] <= set(e["payload"]), e
    roles = [e["type"] for e in events]
    assert roles[0] == "agent_started"
    assert roles.index("agent_thinking") < roles.index("tool_executing")
    open_calls = {}
    for e in events:
        p = e["payload"]
        if e["type"] == "tool_executing":
            open_calls[p["tool_call_id"]] = p["tool_name"]
        elif e["type"] == "tool_completed":
            assert open_calls.pop(p["tool_call_id"]) == p["tool_name"]
            assert isinstance(p["duration_ms"], float) and isinstance(p["success"], bool)
    assert not open_calls


async def test_welcome_frame(agentsim):
    ws, welcome = await connect(agentsim.url, "alice")
    async with ws:
        assert set(welcome) == {"type", "data", "timestamp"}
        assert isinstance(welcome["timestamp"], float)
        data = welcome["data"]
        assert set(data) == {"connection_id", "user_id", "server_time"}
        assert data["user_id"] == "alice" and data["connection_id"]
        assert "T" in data["server_time"]


async def test_anonymous_user_gets_fresh_id(agentsim):
    ws1, w1 = await connect(agentsim.url)
    ws2, w2 = await connect(agentsim.url)
    async with ws1, ws2:
        assert w1["data"]["user_id"] != w2["data"]["user_id"]


async def test_websocket_alias_and_404(agentsim):
    ws, _ = await connect(agentsim.url.replace("/ws", "/websocket"), "alice")
    await ws.close()
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(agentsim.url.replace("/ws", "/nope"), open_timeout=5)
    assert info.value.response.status_code == 404


async def test_ping_pong_and_ignored_frames(agentsim):
    ws, _ = await connect(agentsim.url, "alice")
    async with ws:
        await send(ws, {"type": "pong"})
        await send(ws, {"type": "heartbeat"})
        await send(ws, {"type": "ping"})
        pong = await recv(ws)  # the two ignored frames produced nothing before it
        assert pong["type"] == "pong" and isinstance(pong["data"]["timestamp"], float)


@pytest.mark.parametrize("bad", [
    "this is not json",
    "[" * 100_000 + "]" * 100_000,  # deeper than Python's json recurses: the handler failed, the connection with it
    '{"type": "user_message", "payload": ' + "[" * 5000 + "]" * 5000 + "}",
    b"\x00binary",
    json.dumps([1, 2]),
    json.dumps({"payload": {"content": "no type"}}),
    json.dumps({"type": ""}),
    json.dumps({"type": "launch_missiles"}),
    json.dumps({"type": "user_message", "payload": {"content": ""}}),
    json.dumps({"type": "user_message", "payload": {"content": "   "}}),
    json.dumps({"type": "user_message", "payload": {}}),
    json.dumps({"type": "start_agent", "payload": {"user_request": ""}}),
    json.dumps({"type": "chat", "content": ""}),
    json.dumps({"type": "resume", "payload": {}}),
])
async def test_invalid_message_keeps_connection_open(agentsim, bad):
    ws, _ = await connect(agentsim.url, "alice")
    async with ws:
        await ws.send(bad)
        err = await recv(ws)
        assert err["type"] == "error_message" and err["error_code"] == "INVALID_MESSAGE"
        assert err["error_message"]
        events = await chat(ws, "still works?")  # the connection stayed open and usable
        assert events[-1]["type"] == "agent_completed"


@pytest.mark.parametrize("kind,frame", [
    ("user_message", {"type": "user_message", "payload": {"content": "what is 6*7", "thread_id": "t-1",
                                                          "message_id": "m-1"}}),
    ("start_agent", {"type": "start_agent", "payload": {"user_request": "what is 6*7", "thread_id": "t-1",
                                                        "message_id": "m-1"}}),
    ("chat_payload", {"type": "chat", "payload": {"content": "what is 6*7", "thread_id": "t-1",
                                                  "message_id": "m-1"}}),
    ("chat_root", {"type": "chat", "content": "what is 6*7", "thread_id": "t-1", "message_id": "m-1"}),
])
async def test_chat_types_run_full_agent(agentsim, kind, frame):
    ws, _ = await connect(agentsim.url, "alice")
    async with ws:
        await send(ws, frame)
        (events,) = (await collect_runs(ws, 1)).values()
    check_run(events, "alice")
    roles = [e["type"] for e in events]
    assert roles == ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_thinking",
                     "partial_result", "partial_result", "agent_completed"]
    first = events[0]
    assert first["thread_id"] == "t-1" and first["payload"]["message_id"] == "m-1"
    assert first["run_id"].startswith("r-")  # server-assigned
    done = events[3]["payload"]
    assert done["tool_name"] == "calculator" and done["result"] == 42 and done["success"] is True
    assert events[2]["payload"]["parameters"] == {"expression": "6*7"}
    parts = [e["payload"] for e in events if e["type"] == "partial_result"]
    assert [p["is_complete"] for p in parts] == [False, True]
    assert "".join(p["content"] for p in parts) == events[-1]["payload"]["result"]


async def test_client_run_id_is_used(agentsim):
    ws, _ = await connect(agentsim.url, "alice")
    async with ws:
        events = await chat(ws, "hello", run_id="my-run-1", thread_id="th")
        assert {e["run_id"] for e in events} == {"my-run-1"}
        await send(ws, {"type": "user_message", "payload": {"content": "again", "run_id": "my-run-1"}})
        err = await recv(ws)
        assert err["error_code"] == "INVALID_MESSAGE"


async def test_a_calculation_too_large_to_write_fails_the_tool_not_the_run(agentsim):
    ws, _ = await connect(agentsim.url, "alice")
    async with ws:
        events = await chat(ws, "What is " + "*".join(["1000000**64"] * 12))
        assert events[-1]["type"] == "agent_completed"
        done = [e["payload"] for e in events if e["type"] == "tool_completed"]
        assert done and done[0]["success"] is False and "too large" in str(done[0]["result"])


async def test_tools_lookup_time_and_default(agentsim):
    ws, _ = await connect(agentsim.url, "alice")
    async with ws:
        events = await chat(ws, "what time is it in paris")
        done = [e["payload"] for e in events if e["type"] == "tool_completed"]
        assert [d["tool_name"] for d in done] == ["current_time", "lookup"]
        assert abs(done[0]["result"]["epoch"] - time.time()) < 60
        assert done[1]["result"]["found"] is True and "France" in done[1]["result"]["answer"]
        events = await chat(ws, "hello there")  # nothing recognisable: still one look-up
        assert [e["payload"]["tool_name"] for e in events if e["type"] == "tool_executing"] == ["lookup"]


async def test_directives_tools_chunks(agentsim):
    ws, _ = await connect(agentsim.url, "alice")
    async with ws:
        events = await chat(ws, "hello #tools=3 #chunks=4")
        check_run(events, "alice")
        roles = [e["type"] for e in events]
        assert roles.count("tool_executing") == 3 and roles.count("tool_completed") == 3
        assert roles.count("partial_result") == 4
        events = await chat(ws, "hello #tools=0 #chunks=1")
        roles = [e["type"] for e in events]
        assert "tool_executing" not in roles and roles.count("partial_result") == 1
        assert roles[0] == "agent_started" and roles[1] == "agent_thinking" and roles[-1] == "agent_completed"


async def test_fail_tool_is_recoverable(agentsim):
    ws, _ = await connect(agentsim.url, "alice")
    async with ws:
        events = await chat(ws, "what is 1+1 #fail-tool")
    roles = [e["type"] for e in events]
    i = roles.index("tool_completed")
    assert events[i]["payload"]["success"] is False
    assert roles[i + 1] == "agent_error"
    err = events[i + 1]["payload"]
    assert err["is_recoverable"] is True and err["error_type"] and err["error_message"]
    assert roles[-1] == "agent_completed" and roles.count("agent_completed") == 1


async def test_fail_agent_is_fatal(agentsim):
    ws, _ = await connect(agentsim.url, "alice")
    async with ws:
        events = await chat(ws, "what is 1+1 #fail-agent")
        assert [e["type"] for e in events] == ["agent_started", "agent_thinking", "agent_error"]
        assert events[-1]["payload"]["is_recoverable"] is False
        # nothing more for that run, and the connection still serves chats
        more = await chat(ws, "next one")
        assert more[-1]["type"] == "agent_completed"
        assert events[0]["run_id"] not in {e["run_id"] for e in more}


async def test_think_directive_and_latency(make_sim):
    sim = await make_sim(think="0.05-0.06", tool_latency=0.03)
    ws, _ = await connect(sim.url, "alice")
    async with ws:
        t0 = time.monotonic()
        events = await chat(ws, "hello #think=0.1")  # 2 thinking steps of 0.1 + one tool of 0.03
        assert time.monotonic() - t0 >= 0.2
        done = next(e for e in events if e["type"] == "tool_completed")
        assert done["payload"]["duration_ms"] >= 25


async def test_concurrent_runs_on_one_connection(agentsim):
    ws, _ = await connect(agentsim.url, "alice")
    async with ws:
        for i in range(20):
            await send(ws, {"type": "user_message", "payload": {"content": f"what is {i}+1 #tools=2",
                                                                "run_id": f"run-{i}"}})
        runs = await collect_runs(ws, 20)
    assert set(runs) == {f"run-{i}" for i in range(20)}
    for events in runs.values():
        check_run(events, "alice")


async def test_ground_truth_records_events_and_runs(agentsim):
    ws, welcome = await connect(agentsim.url, "alice")
    async with ws:
        events = await chat(ws, "hello", run_id="gt-run")
    gt = gt_of(agentsim)
    sent = [r for r in gt if r["kind"] == "event" and r["run_id"] == "gt-run"]
    assert [(r["role"], r["seq"]) for r in sent] == [(e["type"], e["seq"]) for e in events]
    assert all(r["user_id"] == "alice" and r["connection_id"] == welcome["data"]["connection_id"]
               and isinstance(r["t"], float) for r in sent)
    kinds = [r["kind"] for r in gt if r.get("run_id") == "gt-run"]
    assert kinds[0] == "run_started" and "run_finished" in kinds
    finished = next(r for r in gt if r["kind"] == "run_finished")
    assert finished["outcome"] == "completed" and finished["last_seq"] == len(events)
