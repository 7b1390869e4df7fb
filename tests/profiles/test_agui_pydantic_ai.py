"""The ag-ui profile against a real agent framework's AG-UI adapter: a pydantic-ai agent (its model a scripted
FunctionModel, so nothing leaves the machine) served by pydantic-ai's AGUIAdapter under Starlette and uvicorn on a
loopback socket. A correct server passes; a server whose agent calls a tool the client never offered, and leaves it
for the client to run, is caught (R5: a backend call without its result)."""
from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

pytest.importorskip("pydantic_ai.ui.ag_ui")
uvicorn = pytest.importorskip("uvicorn")

from pydantic_ai import Agent, DeferredToolRequests  # noqa: E402
from pydantic_ai.messages import ModelMessage, ModelRequest, ToolReturnPart  # noqa: E402
from pydantic_ai.models.function import (  # noqa: E402
    AgentInfo,
    DeltaToolCall,
    FunctionModel,
)
from pydantic_ai.tools import ToolDefinition  # noqa: E402
from pydantic_ai.toolsets import ExternalToolset  # noqa: E402
from pydantic_ai.ui.ag_ui import AGUIAdapter  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from harness.client import Session  # noqa: E402
from harness.events import Outcome, Rule  # noqa: E402
from harness.flow import ChatOptions  # noqa: E402
from harness.profiles import Profile, load_profile  # noqa: E402
from harness.scenario import Expect, Scenario  # noqa: E402
from harness.sinks import Sink  # noqa: E402
from harness.targets import Target  # noqa: E402

AGUI = load_profile("ag-ui")
APPROVE = ToolDefinition(name="approve", description="ask the user to approve",
                         parameters_json_schema={"type": "object", "properties": {"what": {"type": "string"}}})


async def model(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | dict[int, DeltaToolCall]]:
    """Calls a tool (approve when the agent has it, else add), then answers once the tool's result is back."""
    last = messages[-1]
    if isinstance(last, ModelRequest) and any(isinstance(p, ToolReturnPart) for p in last.parts):
        yield "The answer "
        yield "is 5."
        return
    names = {t.name for t in info.function_tools}
    if "approve" in names:
        yield {0: DeltaToolCall(name="approve", json_args='{"what": "the booking"}', tool_call_id="call-a")}
    else:
        yield {0: DeltaToolCall(name="add", json_args='{"a": 2, ', tool_call_id="call-1")}
        yield {0: DeltaToolCall(json_args='"b": 3}')}


def agent(external: bool) -> Agent:
    a = Agent(FunctionModel(stream_function=model), output_type=[str, DeferredToolRequests],
              toolsets=[ExternalToolset([APPROVE])] if external else [])

    @a.tool_plain
    def add(a: int, b: int) -> int:
        return a + b

    return a


class Served:
    """The agent's AG-UI endpoint on a loopback socket bound before uvicorn starts (the port is known at once)."""

    def __init__(self, agent: Agent) -> None:
        async def endpoint(request: Request) -> Response:
            return await AGUIAdapter.dispatch_request(request, agent=agent)

        self.app = Starlette(routes=[Route("/agent", endpoint, methods=["POST"])])
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/agent"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="off"))

    async def __aenter__(self) -> "Served":
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        async with asyncio.timeout(10):
            await self.task
        self.sock.close()


def offering(*tools: ToolDefinition) -> Profile:
    data = AGUI.model_dump()
    data["request"] = {**data["request"], "tools": [
        {"name": t.name, "description": t.description, "parameters": t.parameters_json_schema} for t in tools]}
    return Profile.model_validate(data)


async def chat(url: str, profile: Profile = AGUI, streaming: bool = False):
    target = Target(url=url, profile=profile, name="pydantic-ai")
    exp = Scenario(name="t", expect=Expect(deadline=20, streaming=streaming)).expectations(profile)
    session = Session(target, "u1", "t", Sink(), connect_timeout=5)
    try:
        return await session.chat("What is 2 + 3?", exp, ChatOptions(settle=0.05))
    finally:
        await session.close()


async def test_a_backend_tool_run_of_a_real_framework_passes():
    async with Served(agent(external=False)) as served:
        result = await chat(served.url, streaming=True)
    assert result.outcome is Outcome.PASSED, result.violations
    assert result.warnings == [], result.warnings
    types = [e.wire_type for e in result.events]
    assert "TOOL_CALL_RESULT" in types and types[0] == "RUN_STARTED" and types[-1] == "RUN_FINISHED"


async def test_a_frontend_tool_the_client_offered_is_left_to_the_client_and_passes():
    async with Served(agent(external=False)) as served:  # the adapter gives the agent the client's tools
        result = await chat(served.url, offering(APPROVE))
    assert result.outcome is Outcome.PASSED, result.violations
    assert "TOOL_CALL_RESULT" not in [e.wire_type for e in result.events]


async def test_a_tool_left_to_a_client_that_never_offered_it_is_a_backend_call_without_result():
    async with Served(agent(external=True)) as served:
        result = await chat(served.url)
    assert result.outcome is Outcome.FAILED
    assert [v.rule for v in result.violations] == [Rule.R5], result.violations
    assert "'call-a' (approve: a backend tool, not offered by the client) has no TOOL_CALL_RESULT" in \
        result.violations[0].reason
