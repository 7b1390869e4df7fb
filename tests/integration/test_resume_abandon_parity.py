"""A chat whose connection the server drops mid-run, resumed on a new connection (events come back), then left by its
user (`abandon_after`, a tab closed) is one verdict however it is watched: live (`chatprobe run`, the asyncio client),
through `chatprobe proxy`, and `chatprobe check` of both recordings. It is abandoned (judged on what arrived,
`passed`) and its reconnect is `resumed`, in its result and in `chatprobe_reconnects_total{result="resumed"}`: the
server did resume the run, and the dashboard's resumed/lost split counts it (docs/metrics.md).

FAILED on the code before: the pending resume of an abandoned chat was judged nowhere (live: never; the proxy and
`check`: after its result was made), so the chat showed no reconnect and the counter missed it, live, through the
proxy and offline alike.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

from prometheus_client import CollectorRegistry

from harness.cli import main
from harness.client import Session
from harness.flow import ChatOptions
from harness.offline import check_files
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.scenario import load_scenario
from harness.targets import Target
from monitors.metrics import ChatMetrics, MetricsSink

from .conftest import Kept
from .outside_servers import InThread, RawWsServer, WsConn

SCENARIO = """\
name: left
users: 1
steps:
  - chat: {message: hi, abandon_after: 4}
expect:
  deadline: 3s
  settle: 0.2s
"""
RUN_ID = "r-left"
BEFORE = [("agent_started", 1), ("agent_thinking", 2)]  # on the first connection, before the server drops it
AFTER = [("agent_thinking", 3), ("agent_thinking", 4)]  # on the new one, after the resume (the run goes on)


def event(wire: str, seq: int, thread: str | None, message: str | None) -> dict:
    return {"type": wire, "run_id": RUN_ID, "thread_id": thread, "seq": seq,
            "payload": {"message_id": message, "agent_name": "a", "thought": "t"}}


def dropping_server() -> RawWsServer:
    """netra, by hand: a message gets BEFORE, then the TCP connection is dropped (1006); a resume gets AFTER and the
    run then says nothing more (the user leaves before its end)."""

    async def handle(conn: WsConn) -> None:
        await conn.send({"type": "connection_established", "data": {"connection_id": "c", "user_id": "u-1"}})
        thread = message = None
        while (text := await conn.recv()) is not None:
            msg = json.loads(text)
            if msg["type"] == "user_message":
                thread, message = msg["payload"].get("thread_id"), msg["payload"].get("message_id")
                for wire, seq in BEFORE:
                    await conn.send(event(wire, seq, thread, message))
                conn.abort()
                return
            if msg["type"] == "resume":
                assert msg["payload"] == {"run_id": RUN_ID, "last_seq": 2}
                for wire, seq in AFTER:
                    await conn.send(event(wire, seq, thread, message))

    return RawWsServer(handle)


def counters(metrics: ChatMetrics, target: str, scenario: str, source: str) -> dict[str, float]:
    labels = {"target": target, "scenario": scenario, "source": source}

    def sample(name: str, **extra: str) -> float:
        return metrics.registry.get_sample_value(name, {**labels, **extra}) or 0.0

    return {
        **{f"chats_{o}": sample("chatprobe_chats_total", outcome=o) for o in ("passed", "failed", "incomplete", "error")},
        "abandoned": sample("chatprobe_chats_abandoned_total"),
        "reconnects_resumed": sample("chatprobe_reconnects_total", result="resumed"),
        "reconnects_lost": sample("chatprobe_reconnects_total", result="lost"),
        "in_flight": sample("chatprobe_chats_in_flight"),
    }


def verdict(outcome: str, rules: list[str], note: str, reconnects: list[str]) -> tuple:
    return outcome, sorted(rules), note, reconnects


def check_verdicts(rec: Path, scenario: Path) -> list[tuple]:
    (run,) = check_files([rec], load_profile("netra"), load_scenario(str(scenario)))
    return [verdict(r.outcome.value, [v.rule.value for v in r.violations], r.note, r.reconnects)
            for r in run.results]


async def play_live(url: str, scenario: Path) -> dict[str, float]:
    """The same chat played by the asyncio client into a metrics registry: its counters."""
    prof = load_profile("netra")
    sc = load_scenario(str(scenario))
    metrics = ChatMetrics(CollectorRegistry())
    session = Session(Target(url=url, profile=prof, name="raw"), "u", "left", MetricsSink(metrics, "raw"))
    try:
        async with asyncio.timeout(15):  # a hang fails the test
            await session.chat("hi", sc.expectations(prof), ChatOptions(abandon_after=4))
    finally:
        await session.close()
    return counters(metrics, "raw", "left", "synthetic")


async def browse_through_proxy(upstream: str, scenario: Path, rec: Path) -> tuple[list[tuple], dict[str, float]]:
    """A browser's chat through `chatprobe proxy`: BEFORE, the server drops the connection, the browser resumes on a
    new socket, gets AFTER and closes the tab. The proxy's verdicts and counters."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from monitors.proxy import LiveChats, Proxy, start_proxy

    prof = load_profile("netra")
    sc = load_scenario(str(scenario))
    metrics = ChatMetrics(CollectorRegistry())
    kept = Kept(metrics, "up", "live")
    live = LiveChats(prof, kept, sc.expectations(prof), "live", sc.expect.settle, recorder=Recorder(rec))
    proxy = await start_proxy(Proxy(upstream, live), "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{proxy.sockets[0].getsockname()[1]}/ws"
    try:
        async with asyncio.timeout(15):  # a hang fails the test
            old = await connect(url, ping_interval=None, close_timeout=1)
            assert json.loads(await old.recv())["type"] == "connection_established"
            await old.send(json.dumps({"type": "user_message", "payload": {
                "content": "hi", "thread_id": "t-1", "message_id": "m-1"}}))
            seqs = []
            try:
                async for raw in old:
                    seqs.append(json.loads(raw)["seq"])
            except ConnectionClosed:
                pass  # the server dropped it; the proxy closed the browser's side
            assert seqs == [seq for _, seq in BEFORE]
            new = await connect(url, ping_interval=None, close_timeout=1)
            assert json.loads(await new.recv())["type"] == "connection_established"
            await new.send(json.dumps({"type": "resume", "payload": {"run_id": RUN_ID, "last_seq": seqs[-1]}}))
            assert [json.loads(await new.recv())["seq"] for _ in AFTER] == [seq for _, seq in AFTER]
            await new.close()  # the tab closed mid-run
            await kept.judged.wait()
    finally:
        proxy.close()
        await proxy.wait_closed()
        live.stop()
    proxied = [verdict(r.outcome.value, [v.rule.value for v in r.violations], r.note, r.reconnects)
               for r in kept.results]
    return proxied, counters(metrics, "up", "live", "live")


def test_a_resumed_chat_then_abandoned_counts_its_reconnect_live_through_the_proxy_and_offline(tmp_path):
    scenario = tmp_path / "left.yaml"
    scenario.write_text(SCENARIO)
    with InThread(dropping_server()) as ws:
        code = main(["run", "--target", ws.url, "--auth", "none", str(scenario), "--record", str(tmp_path / "rec"),
                     "--json", str(tmp_path / "live.json"), "-q"])
        (run,) = json.loads((tmp_path / "live.json").read_text())["scenarios"]
        live = [verdict(c["outcome"], [v["rule"] for v in c["violations"]], c["note"], c["reconnects"])
                for c in run["chats"]]
        live_counts = asyncio.run(play_live(ws.url, scenario))
        proxied, proxy_counts = asyncio.run(browse_through_proxy(ws.url, scenario, tmp_path / "proxy-rec"))
    offline = check_verdicts(tmp_path / "rec", scenario)
    proxy_offline = check_verdicts(tmp_path / "proxy-rec", scenario)

    expected = [("passed", [], "abandoned by the client after 4 events", ["resumed"])]
    assert live == expected and code == 0, (live, code)
    assert offline == live, (live, offline)
    assert proxied == live, (live, proxied)
    assert proxy_offline == live, (live, proxy_offline)
    assert live_counts == proxy_counts == {
        "chats_passed": 1, "chats_failed": 0, "chats_incomplete": 0, "chats_error": 0, "abandoned": 1,
        "reconnects_resumed": 1, "reconnects_lost": 0, "in_flight": 0,
    }, (live_counts, proxy_counts)
