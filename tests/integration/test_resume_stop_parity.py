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
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from harness.offline import ENDED_NOTE, check_files
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.runner import run_scenario
from harness.scenario import Scenario
from monitors.metrics import ChatMetrics, MetricsSink

from .conftest import ground_truth

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

    cut = tmp_path / "cut"
    cut_before_the_stop(rec, cut)
    (ended,) = check_files([cut], profile, sc)
    assert verdicts(ended.results) == [("incomplete", [], ENDED_NOTE, ["resumed"] if back else [])]
