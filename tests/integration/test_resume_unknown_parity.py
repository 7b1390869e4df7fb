"""A chat whose connection the server drops mid-run, and whose resume the server answers with RESUME_UNKNOWN_RUN (it
forgot the run: a restart, a deploy that lost its state), is one verdict however it is watched: live (`chatprobe
run`, the asyncio client), through `chatprobe proxy` (a browser whose server dropped it resumes on a new socket), and
`chatprobe check` of both recordings. The chat is `incomplete`, lost with the note the live client gives, no rule
broken, its reconnect `lost` (never `resumed`), judged at the server's answer, not at its deadline; the metrics count
it so (`chats_total{outcome="incomplete"}`, `reconnects_total{result="lost"}`), live and through the proxy.

Failed on the code before the resumeparity patch: the proxy counted the reconnect `resumed` at the resume and judged
the chat at its deadline (R10, no note); `check` judged it at its deadline too, lost with another note.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from harness.cli import main
from harness.client import Session
from harness.flow import RESUME_UNKNOWN_NOTE
from harness.offline import check_files
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.scenario import load_scenario
from harness.targets import Target
from monitors.metrics import ChatMetrics, MetricsSink

from .conftest import Kept
from .outside_servers import InThread, RawWsServer, WsConn

SCENARIO = """\
name: forgotten
users: 1
chats_per_user: 1
messages: ["hi"]
expect:
  deadline: 3s
  settle: 0.2s
"""
RUN_ID = "r-forgotten"
HAD = [("agent_started", 1), ("agent_thinking", 2)]  # what the first connection carries before the server drops it


def forgetful_server(names_run: bool = True) -> RawWsServer:
    """netra, by hand: a welcome on every connection; a message gets HAD, then the TCP connection is dropped (no
    closing handshake: 1006, a crash); a resume of any run is answered RESUME_UNKNOWN_RUN (the connection stays
    open), naming the run unless `names_run` is false (a server that says only that it knows no such run)."""

    async def handle(conn: WsConn) -> None:
        await conn.send({"type": "connection_established", "data": {"connection_id": "c", "user_id": "u-1"}})
        while (text := await conn.recv()) is not None:
            msg = json.loads(text)
            if msg["type"] == "user_message":
                payload = msg["payload"]
                for wire, seq in HAD:
                    await conn.send({"type": wire, "run_id": RUN_ID, "thread_id": payload.get("thread_id"),
                                     "seq": seq, "payload": {"message_id": payload.get("message_id"),
                                                             "agent_name": "a", "thought": "t"}})
                conn.abort()
                return
            if msg["type"] == "resume":
                named = {"run_id": msg["payload"]["run_id"]} if names_run else {}
                await conn.send({"type": "error_message", "error_code": "RESUME_UNKNOWN_RUN", **named,
                                 "error_message": "unknown run"})

    return RawWsServer(handle)


def counters(metrics: ChatMetrics, target: str, source: str) -> dict[str, float]:
    labels = {"target": target, "scenario": "forgotten" if source != "live" else "live", "source": source}

    def sample(name: str, **extra: str) -> float:
        return metrics.registry.get_sample_value(name, {**labels, **extra}) or 0.0

    return {
        **{f"chats_{o}": sample("chatprobe_chats_total", outcome=o) for o in ("passed", "failed", "incomplete", "error")},
        "reconnects_resumed": sample("chatprobe_reconnects_total", result="resumed"),
        "reconnects_lost": sample("chatprobe_reconnects_total", result="lost"),
        "missing_events": sample("chatprobe_chats_missing_events_total"),
        "in_flight": sample("chatprobe_chats_in_flight"),
    }


def verdict(outcome: str, rules: list[str], note: str, reconnects: list[str]) -> tuple:
    return outcome, sorted(rules), note, reconnects


def report_verdicts(path: Path) -> list[tuple]:
    (scenario,) = json.loads(path.read_text())["scenarios"]
    return [verdict(c["outcome"], [v["rule"] for v in c["violations"]], c["note"], c["reconnects"])
            for c in scenario["chats"]]


def check_verdicts(rec: Path, scenario: Path) -> list[tuple]:
    (run,) = check_files([rec], load_profile("netra"), load_scenario(str(scenario)))
    return [verdict(r.outcome.value, [v.rule.value for v in r.violations], r.note, r.reconnects)
            for r in run.results]


async def play_live(url: str, scenario: Path) -> dict[str, float]:
    """The same chat played by the asyncio client (`chatprobe run`'s) into a metrics registry: its counters."""
    prof = load_profile("netra")
    sc = load_scenario(str(scenario))
    metrics = ChatMetrics(CollectorRegistry())
    session = Session(Target(url=url, profile=prof, name="raw"), "u", "forgotten", MetricsSink(metrics, "raw"))
    try:
        async with asyncio.timeout(15):  # a hang fails the test
            await session.chat("hi", sc.expectations(prof))
    finally:
        await session.close()
    return counters(metrics, "raw", "synthetic")


async def browse_through_proxy(upstream: str, scenario: Path, rec: Path) -> tuple[list[tuple], dict[str, float]]:
    """A browser's chat through `chatprobe proxy`: its message and HAD events, then the server drops the connection;
    the browser resumes the run on a new socket, the server answers RESUME_UNKNOWN_RUN. The proxy's verdicts and
    counters."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from monitors.proxy import LiveChats, Proxy, start_proxy

    prof = load_profile("netra")
    sc = load_scenario(str(scenario))
    metrics = ChatMetrics(CollectorRegistry())
    kept = Kept(metrics, "up", "live")
    live = LiveChats(prof, kept, sc.expectations(prof), "live", sc.expect.settle,
                     recorder=Recorder(rec))
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
            assert seqs == [seq for _, seq in HAD]
            new = await connect(url, ping_interval=None, close_timeout=1)
            assert json.loads(await new.recv())["type"] == "connection_established"
            await new.send(json.dumps({"type": "resume", "payload": {"run_id": RUN_ID, "last_seq": seqs[-1]}}))
            assert json.loads(await new.recv())["error_code"] == "RESUME_UNKNOWN_RUN"
            await kept.judged.wait()  # judged at the server's answer: the chat's deadline is seconds away
            assert not live.parked
            await new.close()
    finally:
        proxy.close()
        await proxy.wait_closed()
        live.stop()
    proxied = [verdict(r.outcome.value, [v.rule.value for v in r.violations], r.note, r.reconnects)
               for r in kept.results]
    return proxied, counters(metrics, "up", "live")


@pytest.mark.parametrize("names_run", [True, False], ids=["named", "unnamed"])
def test_a_resume_the_server_did_not_know_is_lost_live_through_the_proxy_and_offline(tmp_path, names_run):
    """`unnamed` FAILED on the old code: an answer naming no run ended no chat, live, through the proxy or offline
    (each waited for its deadline: R10, no note). The one resume awaiting an answer on the connection is the one it
    is about (FrameRouter.resume_sent)."""
    scenario = tmp_path / "forgotten.yaml"
    scenario.write_text(SCENARIO)
    with InThread(forgetful_server(names_run)) as ws:
        code = main(["run", "--target", ws.url, "--auth", "none", str(scenario), "--record", str(tmp_path / "rec"),
                     "--json", str(tmp_path / "live.json"), "-q"])
        live = report_verdicts(tmp_path / "live.json")
        live_counts = asyncio.run(play_live(ws.url, scenario))
        proxied, proxy_counts = asyncio.run(browse_through_proxy(ws.url, scenario, tmp_path / "proxy-rec"))
    offline = check_verdicts(tmp_path / "rec", scenario)
    proxy_offline = check_verdicts(tmp_path / "proxy-rec", scenario)

    expected = [("incomplete", [], RESUME_UNKNOWN_NOTE, ["lost"])]
    assert live == expected and code == 1, (live, code)
    assert offline == live, (live, offline)
    assert proxied == live, (live, proxied)
    assert proxy_offline == live, (live, proxy_offline)
    assert live_counts == proxy_counts == {
        "chats_passed": 0, "chats_failed": 0, "chats_incomplete": 1, "chats_error": 0,
        "reconnects_resumed": 0, "reconnects_lost": 1, "missing_events": 1, "in_flight": 0,
    }, (live_counts, proxy_counts)


def test_an_answer_naming_no_run_is_about_the_one_resume_awaiting_one_never_a_guess_among_several(tmp_path):
    """A recording (`chatprobe check`, on the same FrameRouter as the live client and the proxy): two chats cut by a
    dropped connection, both resumed on a new one. A RESUME_UNKNOWN_RUN naming no run while both resumes await an
    answer could be about either: it ends neither. Once B's events came back (its resume answered), a second such
    answer can only be about A's: A is lost and judged there. FAILED on the old code: A was judged at the recording's
    end, not at the answer (an answer naming no run ended no chat)."""
    t0 = 1_764_000_000.0

    def rec(t: float, direction: str, conn: str, frame: dict) -> str:
        return json.dumps({"t": t0 + t, "dir": direction, "conn": conn, "frame": json.dumps(frame)})

    def event(kind: str, run: str, seq: int, thread: str, message: str) -> dict:
        return {"type": kind, "run_id": run, "thread_id": thread, "seq": seq,
                "payload": {"message_id": message, "agent_name": "a", "thought": "t", "result": "r"}}

    welcome = {"type": "connection_established", "data": {"connection_id": "c", "user_id": "u-1"}}
    unnamed = {"type": "error_message", "error_code": "RESUME_UNKNOWN_RUN", "error_message": "unknown run"}
    lines = [rec(0.00, "recv", "u1.1", welcome)]
    for n, name in enumerate("AB"):
        lines += [rec(0.01 + n / 100, "send", "u1.1", {"type": "user_message", "payload": {
                      "content": "hi", "thread_id": f"t{name}", "message_id": f"m{name}"}}),
                  rec(0.015 + n / 100, "recv", "u1.1", event("agent_started", f"r{name}", 1, f"t{name}", f"m{name}"))]
    lines += [json.dumps({"t": t0 + 0.05, "dir": "close", "conn": "u1.1", "code": 1006}),  # the server dropped it
              rec(0.10, "recv", "u1.2", welcome),
              rec(0.11, "send", "u1.2", {"type": "resume", "payload": {"run_id": "rA", "last_seq": 1}}),
              rec(0.12, "send", "u1.2", {"type": "resume", "payload": {"run_id": "rB", "last_seq": 1}}),
              rec(0.13, "recv", "u1.2", unnamed),  # about rA or rB: neither is ended by it
              rec(0.20, "recv", "u1.2", event("agent_thinking", "rB", 2, "tB", "mB")),
              rec(0.21, "recv", "u1.2", event("agent_completed", "rB", 3, "tB", "mB")),  # B judged at 0.41
              rec(0.50, "recv", "u1.2", unnamed),  # only rA awaits an answer: about it
              rec(0.60, "recv", "u1.2", {"type": "pong"})]
    path = tmp_path / "two.jsonl"
    path.write_text("\n".join(lines) + "\n")
    scenario = tmp_path / "forgotten.yaml"
    scenario.write_text(SCENARIO)
    (run,) = check_files([path], load_profile("netra"), load_scenario(str(scenario)))
    by_thread = {r.thread_id: r for r in run.results}
    assert [r.thread_id for r in run.results] == ["tB", "tA"]  # A judged after B's verdict: at the second answer
    a, b = by_thread["tA"], by_thread["tB"]
    assert (a.outcome.value, a.note, a.reconnects, [v.rule.value for v in a.violations]) == \
        ("incomplete", RESUME_UNKNOWN_NOTE, ["lost"], [])
    assert b.note != RESUME_UNKNOWN_NOTE and b.reconnects == ["resumed"], (b.note, b.reconnects)
