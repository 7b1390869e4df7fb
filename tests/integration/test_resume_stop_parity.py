"""A chat the run itself cuts short (its max_duration, Ctrl-C) after the server dropped its connection mid-run and the
client resumed the run is one verdict live (`chatprobe run --record`) and in `chatprobe check` of that recording:
incomplete, "stopped before the chat ended", never held against the server as a rule broken; and its pending resume is
judged as a chat left with one (flow.judge_resume, `left`): `resumed` when events came back since the resume (in its
result and in `chatprobe_reconnects_total{result="resumed"}`), else in no count (the run stopped before the server could
show whether the run went on). A recording that simply ends there (its close records missing: a recorder killed) judges
the pending resume alike.

agentsim drops the connection mid-run (close:abort) and stalls the run for a minute (stall): with seed 2 it stalls
after the event that follows the drop (the resume replays it: events came back), with seed 1 right at the drop (nothing
comes back); the scenario's max_duration stops the chat in the stall.

FAILED on the code before:
- live: the stopped chat's pending resume was judged nowhere: no reconnect in its result, reconnects_total missed it;
- check: the run's close of its connection was written "by": "client", so the stopped chat was judged abandoned
  (`passed`, "abandoned by the client after N events") where live it was incomplete;
- a recording that ends with a resume pending and no event back judged that resume `lost`.

FAILED on the code before the stopped-run parity patch (test_a_run_stopped_between_connections_…,
test_the_close_record_says_why_the_run_stopped, and the `stopped_by` of the test above):
- live: a chat the stop found before its message ever left was an `error` chat ("stopped before the connection was
  open"), which nothing in the recording showed: counted live, absent from `check`; so was a chat whose message was
  to be sent again (it had gone once: incomplete offline, "the connection closed mid-run");
- check: a chat stopped while it reconnected to resume its run was "the connection was lost mid-run and no resume of
  the run was recorded" (live: "stopped before the chat ended"): the recording held nothing of the connection the
  stop cut short;
- check: the run was never `stopped_early` (its close records did not say why the run stopped).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from harness.offline import ENDED_NOTE, check_files
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.runner import run_scenario
from harness.scenario import Scenario
from harness.sinks import Sink
from harness.targets import Target
from monitors.metrics import ChatMetrics, MetricsSink

from .conftest import ground_truth
from .hostile_ws import WELCOME, frame, raw, read_frame, read_until_gone, run_frames, upgrade

STOPPED = "stopped before the chat ended"  # flow.STOPPED_CHAT_NOTE
SCENARIO = {"name": "stopped", "users": 1, "chats_per_user": 1, "message": "hi #tools=0 #chunks=1",
            "max_duration": "2s", "expect": {"deadline": "30s", "settle": "0.1s"}}


def verdicts(results) -> list[tuple]:
    return [(r.outcome.value, sorted(v.rule.value for v in r.violations), r.note, r.reconnects) for r in results]


def counters(metrics: ChatMetrics) -> dict[str, float]:
    labels = {"target": "agentsim", "scenario": "stopped", "source": "synthetic"}

    def sample(name: str, **extra: str) -> float:
        return metrics.registry.get_sample_value(name, {**labels, **extra}) or 0.0

    return {
        "chats_incomplete": sample("chatprobe_chats_total", outcome="incomplete"),
        "chats_passed": sample("chatprobe_chats_total", outcome="passed"),
        "reconnects_resumed": sample("chatprobe_reconnects_total", result="resumed"),
        "reconnects_lost": sample("chatprobe_reconnects_total", result="lost"),
        "in_flight": sample("chatprobe_chats_in_flight"),
    }


def cut_before_the_stop(rec: Path, to: Path) -> None:
    """The recording as a recorder killed as the run stopped leaves it: without the last close record (the stopped
    connection's)."""
    files = {f.name: f.read_text().splitlines() for f in rec.iterdir()}
    last = max((json.loads(line)["t"], name, line) for name, lines in files.items() for line in lines
               if json.loads(line).get("dir") == "close")
    to.mkdir()
    for name, lines in files.items():
        (to / name).write_text("".join(line + "\n" for line in lines if (name, line) != last[1:]))


@pytest.mark.parametrize(("seed", "back"), [(2, True), (1, False)], ids=["events-back", "nothing-back"])
async def test_a_chat_stopped_after_its_resume_is_judged_alike_live_and_offline(sim_factory, tmp_path, seed, back):
    sc = Scenario.model_validate(SCENARIO)
    metrics = ChatMetrics(CollectorRegistry())
    rec = tmp_path / "rec"
    async with sim_factory(faults=["close:abort=1", "stall=60s@1"], seed=seed) as (_sim, target, gt):
        run = await run_scenario(sc, dataclasses.replace(target, recorder=Recorder(rec)),
                                 MetricsSink(metrics, "agentsim"), user_prefix="stop")
    # What agentsim did: dropped the connection, the client resumed the run, and it replayed events (or none).
    truth = ground_truth(gt)
    assert [r["fault"] for r in truth if r.get("kind") == "fault"] == ["close", "stall"]
    assert [r["replayed"] > 0 for r in truth if r.get("kind") == "resume"] == [back]
    assert run.stopped_by == "its max_duration"

    live = verdicts(run.results)
    assert live == [("incomplete", [], STOPPED, ["resumed"] if back else [])], live
    assert counters(metrics) == {"chats_incomplete": 1, "chats_passed": 0, "reconnects_resumed": 1 if back else 0,
                                 "reconnects_lost": 0, "in_flight": 0}

    profile = load_profile("netra")
    (offline,) = check_files([rec], profile, sc)
    assert verdicts(offline.results) == live
    assert offline.stopped_by == run.stopped_by  # said by the close record ("stop": "max_duration"); "" before

    cut = tmp_path / "cut"
    cut_before_the_stop(rec, cut)
    (ended,) = check_files([cut], profile, sc)
    assert verdicts(ended.results) == [("incomplete", [], ENDED_NOTE, ["resumed"] if back else [])]


# --- a run stopped with chats between connections: reconnecting, connecting, about to send again ---------------------

class Stopping:
    """A raw netra server (no auth: `?user=` names the user) whose four users meet the run's stop in four places:
    u0's chat passes before it; u1's connection is closed (1001) after two events of its run, and its reconnect to
    resume is held; u2's first connection is held, its message never sent; u3's connection is closed (1000) as its
    message arrives, before any event, and the connection its message was to be sent again on is held. A connection is
    held at the upgrade (never answered) or, `hold="welcome"`, after it (no welcome). `ready` is set once every hold
    is reached and u0's chat is judged (`judged`): the test stops the run then."""

    def __init__(self, hold: str) -> None:
        self.hold = hold
        self.seen: dict[str, int] = {}
        self.holds = 0
        self.judged = asyncio.Event()
        self.ready = asyncio.Event()
        self._held = asyncio.Event()

    async def handler(self, reader, writer, head: bytes, srv) -> None:
        user = re.search(rb"user=[^ &]*-(u\d)", head).group(1).decode()
        n = self.seen[user] = self.seen.get(user, 0) + 1
        if (user, n) in {("u1", 2), ("u2", 1), ("u3", 2)}:
            if self.hold == "welcome":
                writer.write(upgrade(head))
            self.holds += 1
            if self.holds == 3:
                self._held.set()
            await self._held.wait()
            await self.judged.wait()
            self.ready.set()
            if self.hold == "welcome":
                await close_when_asked(reader, writer)
            else:
                await read_until_gone(reader)
            return
        writer.write(upgrade(head) + frame(1, WELCOME))
        await writer.drain()
        _, data = await read_frame(reader)
        message_id = json.loads(data)["payload"]["message_id"]
        run = run_frames(message_id)
        if user == "u0":
            writer.write(b"".join(frame(1, f) for f in run))
        elif user == "u1":
            writer.write(b"".join(frame(1, f) for f in run[:2]) + frame(8, b"\x03\xe9"))  # 1001, going away
        elif user == "u3":
            writer.write(frame(8, b"\x03\xe8"))  # 1000: a server that closes as the message comes, before any event
        await writer.drain()
        await close_when_asked(reader, writer)


async def close_when_asked(reader, writer) -> None:
    """Read the client's frames until its close, answered; or until it goes."""
    while (await read_frame(reader))[0] != 8:
        pass
    writer.write(frame(8, b"\x03\xe8"))
    await writer.drain()


class Judged(Sink):
    def __init__(self, server: Stopping) -> None:
        self.server, self.started, self.finished = server, 0, 0

    def chat_started(self, scenario: str) -> None:
        self.started += 1

    def chat_finished(self, result) -> None:
        self.finished += 1
        if result.outcome.value == "passed":
            self.server.judged.set()


def seen(results) -> Counter:
    return Counter((r.run_id, r.outcome.value, r.error_kind, r.note, tuple(sorted(r.rule_counts()))) for r in results)


@pytest.mark.parametrize("hold", ["upgrade", "welcome"])
async def test_a_run_stopped_between_connections_is_judged_alike_live_and_offline(tmp_path, hold):
    # The stop comes while u1 reconnects to resume its run, u2 connects for its first message and u3 reconnects to send
    # its message again. Live: u1 and u3 incomplete, "stopped before the chat ended"; u2's chat never sent anything and
    # is no chat (neither started nor judged: the counts add up). `check` of the recording judges the same chats with
    # the same notes, and says that the run stopped early, and why.
    # FAILED on the code before: live counted u2 and u3 as `error` chats ("stopped before the connection was open");
    # the recording held nothing of a connection whose opening the stop cut short, so `check` judged u1 "the connection
    # was lost mid-run and no resume of the run was recorded", u3 "the connection closed mid-run", and the run not
    # stopped early.
    server = Stopping(hold)
    sink = Judged(server)
    stop = asyncio.Event()
    sc = Scenario.model_validate({"name": "stopped", "users": 4, "chats_per_user": 1, "ramp_up": 0,
                                  "connect_timeout": "5s", "expect": {"deadline": "30s", "settle": "0.05s"}})
    async with raw(server.handler) as srv:
        target = Target(url=srv.url, profile=load_profile("netra"), name="raw", no_auth_user_param=True,
                        recorder=Recorder(tmp_path / "rec"))

        async def stop_when_ready() -> None:
            await server.ready.wait()
            stop.set()

        async with asyncio.timeout(20):  # a hang fails the test
            stopper = asyncio.ensure_future(stop_when_ready())
            run = await run_scenario(sc, target, sink, user_prefix="stop", stop=stop)
            await stopper
    assert run.stopped_by == "interrupted"
    live = seen(run.results)
    assert live == Counter({("r1", "passed", None, "", ()): 1, ("r1", "incomplete", None, STOPPED, ()): 1,
                            (None, "incomplete", None, STOPPED, ()): 1}), live
    assert sink.started == sink.finished == run.stats.chats == 3

    [offline] = check_files([tmp_path / "rec"], load_profile("netra"), sc)
    assert seen(offline.results) == live
    assert offline.stats.chats == 3
    assert (offline.stopped_early, offline.stopped_by) == (True, "interrupted")


@pytest.mark.parametrize(("stop", "said"), [("max_duration", "its max_duration"), ("interrupted", "interrupted"),
                                            (None, "the recorded run was stopped"), ("lunch", None), (7, None)])
def test_the_close_record_says_why_the_run_stopped(tmp_path, stop, said):
    # A "client-stop" close record's `stop` is why the run stopped early: `check` reports it as live reported it; a
    # record written before it existed says only that it stopped; any other value is an R12 naming the field.
    records = [{"t": 1.0, "dir": "recv", "conn": "u1.1", "frame": json.dumps({"type": "connection_established"})},
               {"t": 1.1, "dir": "send", "conn": "u1.1",
                "frame": json.dumps({"type": "user_message", "payload": {"content": "hi", "message_id": "m1"}})},
               {"t": 1.5, "dir": "close", "conn": "u1.1", "code": 1000, "by": "client-stop",
                **({} if stop is None else {"stop": stop})}]
    path = tmp_path / "rec.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    [run] = check_files([path], load_profile("netra"), Scenario.model_validate(SCENARIO))
    if said is None:
        assert not run.stopped_early
        assert any(v.rule.value == "R12" and "field 'stop'" in v.reason for r in run.results for v in r.violations)
    else:
        assert (run.stopped_early, run.stopped_by) == (True, said)
        assert verdicts(run.results) == [("incomplete", [], STOPPED, [])]
