"""`chatprobe proxy --upstream http://… --record DIR`: what `chatprobe check DIR` makes of the HTTP side's recording is
what the proxy judged live, chat by chat (outcome, rules, first-event time, duration, the order they were judged in),
over real loopback sockets: agentsim's AG-UI SSE endpoint behind the proxy (a clean chat, a run error, a chat its
client left), and a raw upstream (a stream ended with no event, a stream cut mid-body)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry

from agentsim.agui import AguiSim
from agentsim.server import SimConfig
from harness.recorder import Recorder
from harness.scenario import Expect, expectations_for
from harness.targets import TokenProvider
from monitors.metrics import ChatMetrics
from monitors.proxy import LiveChats
from monitors.sse_proxy import SSEProxy, start_sse_proxy

from .conftest import Kept, chatprobe_cli
from .test_sse_proxy import AGUI, RUN, answer, raw_upstream, sse

# Long, so that a chat judged only at its deadline (held for a resend no SSE client sends) is never judged within the
# test's own bound (WAIT): a verdict that waits for it fails the test, it does not slow it down.
DEADLINE = "60s"
WAIT = 20.0
SCENARIO = f"name: live\nusers: 1\nchats_per_user: 1\nmessage: hi\nexpect:\n  deadline: {DEADLINE}\n  settle: 0.05s\n"


def run_input(run_id: str, content: str) -> bytes:
    return json.dumps({"threadId": "t1", "runId": run_id, "state": {}, "tools": [], "context": [],
                       "forwardedProps": {}, "messages": [{"id": f"m-{run_id}", "role": "user",
                                                          "content": content}]}).encode()


@contextlib.asynccontextmanager
async def recording_proxy(upstream: str, record: Path) -> AsyncIterator[tuple[str, Kept]]:
    sink = Kept(ChatMetrics(CollectorRegistry()), "upstream", "live")
    live = LiveChats(AGUI, sink, expectations_for(AGUI, Expect(deadline=DEADLINE, settle="0.05s")), "live", 0.05,
                     Recorder(str(record), keep_all=True))
    server = await start_sse_proxy(SSEProxy(upstream, live), "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", sink
    finally:
        server.close()
        async with asyncio.timeout(10):
            await server.wait_closed()
        live.stop()


async def judged(sink: Kept, n: int) -> None:
    async with asyncio.timeout(WAIT):
        while len(sink.results) < n:
            sink.judged.clear()
            await sink.judged.wait()


async def check(record: Path, tmp_path: Path) -> list[dict]:
    scenario = tmp_path / "live.yaml"
    scenario.write_text(SCENARIO)
    report = tmp_path / f"{record.name}.json"
    code, out = await chatprobe_cli("check", str(record), "--profile", "ag-ui", "--scenario", str(scenario),
                                    "--json", str(report), "--quiet")
    assert code in (0, 1), out
    chats: list[dict] = json.loads(report.read_text())["scenarios"][0]["chats"]
    return chats


def same_as_live(live: list, offline: list[dict]) -> None:
    """Each chat `check` judged as the proxy judged it, in the same order."""
    assert [c["run_id"] for c in offline] == [r.run_id for r in live]
    for result, chat in zip(live, offline, strict=True):
        what = result.run_id
        assert chat["outcome"] == result.outcome.value, what
        assert sorted(v["rule"] for v in chat["violations"]) == sorted(v.rule.value for v in result.violations), what
        for name in ("time_to_first_event", "duration"):
            mine, theirs = getattr(result, name), chat[name]
            assert (mine is None) == (theirs is None), (what, name, mine, theirs)
            if mine is not None:  # (the recording's times are epoch seconds to the microsecond)
                assert abs(mine - theirs) < 1e-3, (what, name, mine, theirs)


def close_records(record: Path) -> list[dict]:
    lines = [json.loads(line) for f in sorted(record.glob("*.jsonl")) for line in f.read_text().splitlines()]
    return [r for r in lines if r["dir"] == "close"]


async def test_check_judges_the_http_sides_recording_of_agentsims_chats_as_the_proxy_did(tmp_path):
    secret = secrets.token_urlsafe(32)
    sim = AguiSim(SimConfig(host="127.0.0.1", port=0, jwt_secret=secret, think=0.002, tool_latency=0.001,
                            protocol="ag-ui"))
    await sim.start()
    token = TokenProvider(jwt_secret=secret).for_user("u1")
    record = tmp_path / "agentsim"
    try:
        async with recording_proxy(f"http://127.0.0.1:{sim.port}", record) as (url, sink):
            async with httpx.AsyncClient(timeout=10) as client:
                for n, (run_id, content) in enumerate((("clean", "hi #tools=1"), ("run-error", "hi #fail-agent")), 1):
                    response = await client.post(f"{url}/agent", content=run_input(run_id, content),
                                                 headers={"Authorization": f"Bearer {token}"})
                    assert response.status_code == 200 and b"RUN_" in response.content
                    await judged(sink, n)
            # a user who closes the tab mid-run
            host, port = url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            body = run_input("left", "hi #think=5")
            writer.write(b"POST /agent HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
                         % (token.encode(), len(body), body))
            async with asyncio.timeout(WAIT):
                await reader.readuntil(b"RUN_STARTED")
            writer.close()
            await judged(sink, 3)
    finally:
        await sim.stop()
    live = sink.results
    assert [(r.run_id, r.outcome.value) for r in live] == [("clean", "passed"), ("run-error", "failed"),
                                                         ("left", "passed")]
    assert [v.rule.value for v in live[1].violations] == ["R13"] and live[2].note.startswith("abandoned")
    closes = close_records(record)
    assert len(closes) == 3 and all(c.get("stream") is True for c in closes), closes
    assert [c.get("by") for c in closes] == [None, None, "client"]
    same_as_live(live, await check(record, tmp_path))


async def test_check_judges_a_stream_ended_with_no_event_or_cut_mid_body_as_the_proxy_did_and_at_once(tmp_path):
    async def handle(reader, writer, head, body):
        run_id = json.loads(body)["runId"]
        if run_id == "empty":  # 200, text/event-stream, and the chunked body's end at once: no event
            await answer([])(reader, writer, head, body)
        else:  # two events, then the connection closed inside the chunked body
            await answer(sse({**RUN[0], "runId": run_id}, RUN[1]), end=False)(reader, writer, head, body)

    record = tmp_path / "raw"
    async with raw_upstream(handle) as (up, _), recording_proxy(up, record) as (url, sink):
        async with httpx.AsyncClient(timeout=10) as client:
            for n, run_id in enumerate(("empty", "cut", "empty-again")):
                with contextlib.suppress(httpx.RemoteProtocolError):
                    await client.post(f"{url}/agent", content=run_input(run_id if n < 2 else "empty", "x"),
                                      headers={"Authorization": "Bearer tok-" + "A1" * 12})
                # judged when its stream ended, not at its deadline (held for a resend no SSE client sends)
                await judged(sink, n + 1)
    live = sink.results
    assert [(r.run_id, r.outcome.value) for r in live] == [("empty", "incomplete"), ("cut", "incomplete"),
                                                         ("empty", "incomplete")]
    assert [v.rule.value for v in live[1].violations] == ["R12"] and not live[0].violations
    closes = close_records(record)
    assert [(c.get("code"), c.get("stream")) for c in closes] == [(1000, True), (1006, True), (1000, True)]
    # the same message sent again after its empty stream is a chat of its own, live and in `check`
    same_as_live(live, await check(record, tmp_path))
