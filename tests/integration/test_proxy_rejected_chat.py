"""A chat whose message the server rejects with a connection-level error naming it (`error_message`, its
`message_id`) is judged alike by `chatprobe run`, `chatprobe check` of run's recording, `chatprobe check` of the
proxy's `--record`, and the proxy itself, over a raw RFC 6455 server on 127.0.0.1: an `error`, `rejected`.

The proxy counts a plain rejection as the client's doing (chatprobe_client_rejections_total, not chatprobe_chats_total:
a user's garbage or a quota must not page for the server). An error frame that is itself malformed (it holds NaN: a
browser's JSON.parse refuses it) is an R12 on that chat, the server's: the proxy then counts the chat as run and check
judge it, chatprobe_chats_total{outcome="error"} with its R12 in chatprobe_rule_violations_total. Either way
started = judged + client rejections + unjudged + in flight.

FAILED on the code before: with NaN in the error frame the proxy counted the chat in client_rejections_total only,
its R12 in no counter (run and check said `error` with one R12).
"""
from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from harness.checker import ChatResult
from harness.offline import check_files
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.runner import run_scenario
from harness.scenario import Scenario
from harness.targets import Target
from monitors.metrics import ChatMetrics, MetricsSink
from monitors.proxy import LiveChats, Proxy, start_proxy
from monitors.sse_proxy import SSEProxy, start_sse_proxy

from .outside_servers import RawWsServer, WsConn
from .test_conforming_servers import Server, frame, verdict
from .test_sse_proxy import answer, raw_upstream

pytestmark = pytest.mark.timeout(60)

NETRA = load_profile("netra")
SC = Scenario.model_validate({"name": "rejected", "users": 1, "connect_timeout": "2s",
                              "expect": {"deadline": "3s", "settle": "0.1s"}})


def _rejecting(written: str) -> Server:
    """A netra server that answers each message with QUOTA_EXCEEDED naming its message id (`written`: a value the
    frame holds besides, NaN, or nothing)."""
    async def answer(conn: WsConn, p: dict[str, Any], n: int, server: Server) -> None:
        data = json.dumps({"type": "error_message", "error_code": "QUOTA_EXCEEDED", "message_id": p["message_id"],
                           "error_message": "too many runs"})
        conn.writer.write(frame((data[:-1] + f', "score": {written}}}' if written else data).encode()))
    return Server(answer)


class Counted(MetricsSink):
    """The proxy's metrics, and its verdicts: `done` set at each chat the proxy is through with (judged or
    counted as the client's doing)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        super().__init__(ChatMetrics(self.registry), "up", "live")
        self.results: list[ChatResult] = []
        self.rejected: list[ChatResult] = []
        self.done = asyncio.Event()

    def chat_finished(self, result: ChatResult) -> None:
        self.results.append(result)
        self.done.set()
        super().chat_finished(result)

    def client_rejected(self, result: ChatResult) -> None:
        self.rejected.append(result)
        self.done.set()
        super().client_rejected(result)

    def value(self, name: str, **labels: str) -> float:
        got = self.registry.get_sample_value(name, {"target": "up", "scenario": "live", "source": "live", **labels})
        return got or 0.0


class Watched(LiveChats):
    """LiveChats that tells when the proxy is done with a connection (its recording written)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.closed = asyncio.Event()

    def connection_closed(self, conn: Any) -> None:
        super().connection_closed(conn)
        self.closed.set()


async def _judged(written: str, rec: Path) -> tuple[dict[str, list[Any]], Counted]:
    server = RawWsServer(_rejecting(written).handler)
    await server.start()
    try:
        async with asyncio.timeout(30):
            live = await run_scenario(SC, Target(url=server.url, profile=NETRA, name="raw",
                                                 recorder=Recorder(rec / "run")))
    finally:
        assert server.server is not None
        server.server.close()
    [offline] = check_files([rec / "run"], NETRA, SC)

    server = RawWsServer(_rejecting(written).handler)
    await server.start()
    sink = Counted()
    watched = Watched(NETRA, sink, SC.expectations(NETRA), "live", SC.expect.settle, Recorder(rec / "proxy"))
    proxy = await start_proxy(Proxy(server.url.rsplit("/", 1)[0], watched), "127.0.0.1", 0)
    try:
        async with asyncio.timeout(30):
            await run_scenario(SC, Target(url=f"ws://127.0.0.1:{proxy.sockets[0].getsockname()[1]}/ws",
                                          profile=NETRA, name="proxy"))
            await sink.done.wait()
            await watched.closed.wait()
    finally:
        proxy.close()
        assert server.server is not None
        server.server.close()
    [recorded] = check_files([rec / "proxy"], NETRA, SC)
    kinds = {road: [(verdict(r), r.error_kind) for r in results] for road, results in (
        ("run", live.results), ("check", offline.results), ("check of the proxy's recording", recorded.results),
        ("proxy", sink.results), ("proxy: the client's doing", sink.rejected))}
    return kinds, sink


async def test_a_plain_rejection_is_the_client_s_doing_through_the_proxy_and_an_error_chat_elsewhere():
    with tempfile.TemporaryDirectory() as rec:
        got, sink = await _judged("", Path(rec))
    error = [(("error", (), ()), "rejected")]
    assert got == {"run": error, "check": error, "check of the proxy's recording": error,
                   "proxy": [], "proxy: the client's doing": error}, got
    assert sink.value("chatprobe_client_rejections_total") == 1
    assert sink.value("chatprobe_chats_total", outcome="error") == 0
    assert sink.value("chatprobe_chats_in_flight") == 0


@pytest.mark.parametrize("written", ["NaN", "-Infinity"])
async def test_a_rejection_holding_nan_is_the_server_s_error_chat_through_the_proxy_as_in_run_and_check(written):
    with tempfile.TemporaryDirectory() as rec:
        got, sink = await _judged(written, Path(rec))
    error = [(("error", (("R12", 1),), ()), "rejected")]
    # FAILED on the code before: "proxy" was [] and the chat among the client's doing, its R12 counted nowhere.
    assert got == {"run": error, "check": error, "check of the proxy's recording": error,
                   "proxy": error, "proxy: the client's doing": []}, got
    assert sink.value("chatprobe_chats_total", outcome="error") == 1
    assert sink.value("chatprobe_rule_violations_total", rule="R12") == 1
    assert sink.value("chatprobe_client_rejections_total") == 0
    assert sink.value("chatprobe_chats_in_flight") == 0


# -- the proxy's HTTP side (--upstream http://): an error status at the chat's request, an error event in its stream --

AGUI = load_profile("ag-ui")
SSE_SC = Scenario.model_validate({"name": "rejected", "users": 1, "connect_timeout": "2s",
                                  "expect": {"deadline": "3s", "settle": "0.1s"}})


def _status(code: int) -> Any:
    async def handle(reader: Any, writer: Any, head: bytes, body: bytes) -> None:
        text = b'{"error":"too many runs"}'
        writer.write(b"HTTP/1.1 %d Refused\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (code, len(text), text))
    return handle


def _run_error(written: str) -> Any:
    """The run started, then a RUN_ERROR (holding `written` besides, or nothing) ends it."""
    async def handle(reader: Any, writer: Any, head: bytes, body: bytes) -> None:
        given = json.loads(body)
        started = {"type": "RUN_STARTED", "threadId": given["threadId"], "runId": given["runId"]}
        error = '{"type": "RUN_ERROR", "message": "too many runs", "code": "QUOTA_EXCEEDED"%s}' % (
            f', "score": {written}' if written else "")
        await answer([f"data: {json.dumps(started)}\n\n".encode(), f"data: {error}\n\n".encode()])(
            reader, writer, head, body)
    return handle


async def _judged_over_sse(handler: Any, rec: Path, *, judged: bool) -> tuple[dict[str, list[Any]], Counted]:
    async with raw_upstream(handler) as (up, _):
        async with asyncio.timeout(30):
            live = await run_scenario(SSE_SC, Target(url=f"{up}/agent", profile=AGUI, name="raw",
                                                     recorder=Recorder(rec / "run")))
        [offline] = check_files([rec / "run"], AGUI, SSE_SC)
        sink = Counted()
        watched = Watched(AGUI, sink, SSE_SC.expectations(AGUI), "live", SSE_SC.expect.settle,
                          Recorder(rec / "proxy"))
        proxy = await start_sse_proxy(SSEProxy(up, watched), "127.0.0.1", 0)
        try:
            async with asyncio.timeout(30):
                await run_scenario(SSE_SC, Target(url=f"http://127.0.0.1:{proxy.sockets[0].getsockname()[1]}/agent",
                                                  profile=AGUI, name="proxy"))
                if judged:  # (an answer that opens no stream is counted before its head reaches the client)
                    await sink.done.wait()
                    await watched.closed.wait()
        finally:
            proxy.close()
            async with asyncio.timeout(10):
                await proxy.wait_closed()
            watched.stop()
    kinds = {"run": [(verdict(r), r.error_kind) for r in live.results],
             "check": [(verdict(r), r.error_kind) for r in offline.results],
             "proxy": [(verdict(r), r.error_kind) for r in sink.results],
             "proxy: the client's doing": [(verdict(r), r.error_kind) for r in sink.rejected]}
    files = sorted((rec / "proxy").glob("*.jsonl"))
    if files:
        [recorded] = check_files(files, AGUI, SSE_SC)
        kinds["check of the proxy's recording"] = [(verdict(r), r.error_kind) for r in recorded.results]
    return kinds, sink


@pytest.mark.parametrize(("code", "result"), [(429, "protocol_error"), (503, "refused")])
async def test_over_sse_an_error_status_at_the_chat_s_request_is_the_proxy_s_connection_result_not_a_chat(
        code, result):
    # By design (docs/metrics.md, "How a verdict is counted"): the proxy follows a chat only once the server accepted
    # its request, as the WebSocket side an upgrade; `run` counts the same connection result, and an `error` chat.
    with tempfile.TemporaryDirectory() as rec:
        got, sink = await _judged_over_sse(_status(code), Path(rec), judged=False)
    error = [(("error", (), ()), result)]
    assert got == {"run": error, "check": error, "proxy": [], "proxy: the client's doing": []}, got  # nothing recorded
    assert sink.value("chatprobe_connections_total", result=result) == 1
    assert sink.value("chatprobe_chats_in_flight") == 0 and sink.value("chatprobe_client_rejections_total") == 0
    assert sum(sink.value("chatprobe_chats_total", outcome=o) for o in ("passed", "failed", "incomplete", "error")) == 0


@pytest.mark.parametrize("written", ["", "NaN"])
async def test_over_sse_an_error_event_ends_the_chat_alike_through_the_proxy_in_run_and_check(written):
    with tempfile.TemporaryDirectory() as rec:
        got, sink = await _judged_over_sse(_run_error(written), Path(rec), judged=True)
    rules = (("R12", 1), ("R13", 1)) if written else (("R13", 1),)
    failed = [(("failed", rules, ()), None)]
    assert got == {"run": failed, "check": failed, "check of the proxy's recording": failed, "proxy": failed,
                   "proxy: the client's doing": []}, got
    assert sink.value("chatprobe_chats_total", outcome="failed") == 1
    assert sink.value("chatprobe_rule_violations_total", rule="R12") == (1 if written else 0)
    assert sink.value("chatprobe_chats_in_flight") == 0
