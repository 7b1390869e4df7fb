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

from .outside_servers import RawWsServer, WsConn
from .test_conforming_servers import Server, frame, verdict

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
