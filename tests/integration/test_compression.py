"""Compression is the scenario's choice: by default chatprobe offers no permessage-deflate (and takes the lean
picows client); `compression: deflate` offers it, as browsers do, and a server that accepts it is spoken to in it."""
from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.server import serve

from harness.events import Outcome
from harness.profiles import load_profile
from harness.runner import run_scenario
from harness.scenario import Scenario
from harness.targets import Target

WELCOME = json.dumps({"type": "connection_established", "data": {"connection_id": "c", "user_id": "u"}})
RUN = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "partial_result", "agent_completed"]


@pytest.mark.parametrize(("setting", "offered"), [(None, False), ("none", False), ("deflate", True)])
async def test_the_scenario_decides_whether_deflate_is_offered_and_chats_pass_either_way(setting, offered):
    seen: list[tuple[str | None, str | None]] = []  # (extensions offered, extensions agreed) per connection

    async def handler(ws):
        seen.append((ws.request.headers.get("Sec-WebSocket-Extensions"),
                     ws.response.headers.get("Sec-WebSocket-Extensions")))
        await ws.send(WELCOME)
        mid = json.loads(await ws.recv())["payload"]["message_id"]
        for seq, kind in enumerate(RUN, 1):
            await ws.send(json.dumps({"type": kind, "run_id": "r1", "seq": seq,
                                      "payload": {"message_id": mid, "tool_call_id": "t1", "tool_name": "calc"}}))
        await ws.wait_closed()

    spec = {"name": "c", "users": 1, "chats_per_user": 1, "expect": {"settle": "0.05s", "deadline": "5s"}}
    if setting is not None:
        spec["compression"] = setting
    async with serve(handler, "127.0.0.1", 0, compression="deflate") as server:  # the server accepts deflate
        port = server.sockets[0].getsockname()[1]
        target = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile("netra"), name="raw")
        async with asyncio.timeout(15):
            run = await run_scenario(Scenario.model_validate(spec), target)
    assert [r.outcome for r in run.results] == [Outcome.PASSED]
    ((offer, agreed),) = seen
    assert ("permessage-deflate" in (offer or "")) is offered
    assert ("permessage-deflate" in (agreed or "")) is offered


def test_an_unknown_compression_is_a_config_error():
    with pytest.raises(ValueError, match="compression"):
        Scenario.model_validate({"name": "c", "compression": "gzip"})
