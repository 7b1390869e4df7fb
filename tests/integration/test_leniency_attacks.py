"""Attacks on the leniencies of the AG-UI multi-run stream (a further RUN_STARTED after a run closed is a chat of its
own; a replayed run ahead of the requested one is accepted): real loopback servers (tests.profiles.servers), or a
recording judged by `chatprobe check`. A server must not hide a failing requested run behind runs nobody asked for.

FAILED-ON-ORIGINAL on each test: the false pass or diluted counter it pins."""
from __future__ import annotations

import json

from ag_ui.core import RunAgentInput, RunErrorEvent

from harness.events import Outcome, Rule
from harness.offline import check_files
from harness.profiles import load_profile
from harness.scenario import Expect, Scenario
from harness.stats import compute

from ..profiles.servers import AguiSSEServer
from .test_agui_conformance import TS, F, S, chat, text

AGUI = load_profile("ag-ui")


async def test_clean_further_runs_do_not_dilute_a_requested_run_that_misses_events():
    """The requested run misses the text `streaming: true` asks for, then the server adds 20 clean runs: the one chat
    the client asked for misses events (ratio 1.0, not 1/21: the ">5% of chats miss events" alert must fire)."""
    def script(inp: RunAgentInput):
        yield S(inp)
        yield F(inp)  # no partial_result: R2 under streaming
        for i in range(20):
            yield S(inp, f"extra-{i}")
            yield from text(f"m{i}")
            yield F(inp, f"extra-{i}")

    async with AguiSSEServer(script) as server:
        result, results = await chat(server.url, streaming=True)
    assert len(results) == 21  # every run is still reported
    stats = compute(results)
    assert stats.chats == 1, stats.to_dict()
    assert stats.missing_ratio == 1.0 and stats.passed_ratio == 0.0, stats.to_dict()
    assert result.outcome is Outcome.FAILED


async def test_a_replayed_clean_run_does_not_hide_the_requested_runs_error():
    """A clean "replayed" run of another id, then the requested run's RUN_ERROR: the chat the client asked for failed."""
    def script(inp: RunAgentInput):
        yield S(inp, "old-1")
        yield from text("a0")
        yield F(inp, "old-1")
        yield S(inp)
        yield RunErrorEvent(message="model unavailable", code="UPSTREAM", timestamp=TS)

    async with AguiSSEServer(script) as server:
        result, results = await chat(server.url)
    assert result.outcome is Outcome.FAILED and any(v.rule is Rule.R13 for v in result.violations)
    stats = compute(results)
    assert (stats.chats, stats.passed_ratio) == (1, 0.0), stats.to_dict()


def test_check_judges_the_requested_run_after_a_replayed_one(tmp_path):
    """`chatprobe check`: further runs of a recorded stream were never judged, so a replayed clean run ahead of the
    requested run's RUN_ERROR passed the recording."""
    req = {"threadId": "t1", "runId": "R", "state": {}, "messages": [{"id": "m1", "role": "user", "content": "hi"}],
           "tools": [], "context": [], "forwardedProps": {}}

    def ev(**kw):
        return {**kw, "timestamp": TS}

    frames = [("send", req), ("recv", ev(type="RUN_STARTED", threadId="t1", runId="X")),
              ("recv", ev(type="TEXT_MESSAGE_START", messageId="a0", role="assistant")),
              ("recv", ev(type="TEXT_MESSAGE_CONTENT", messageId="a0", delta="old")),
              ("recv", ev(type="TEXT_MESSAGE_END", messageId="a0")),
              ("recv", ev(type="RUN_FINISHED", threadId="t1", runId="X")),
              ("recv", ev(type="RUN_STARTED", threadId="t1", runId="R")),
              ("recv", ev(type="RUN_ERROR", message="boom"))]
    path = tmp_path / "rec.jsonl"
    t0 = 1_700_000_000.0
    with path.open("w") as f:
        for i, (d, frame) in enumerate(frames):
            f.write(json.dumps({"t": t0 + i * 0.001, "dir": d, "conn": "c1", "frame": frame}) + "\n")
        f.write(json.dumps({"t": t0 + 1, "dir": "close", "conn": "c1", "frame": None}) + "\n")
    runs = check_files([path], AGUI, Scenario(name="t", expect=Expect(deadline=10)))
    run = runs[0] if isinstance(runs, list) else runs
    assert not run.passed
    assert run.stats.chats == 1 and run.stats.outcomes[Outcome.FAILED] == 1, run.stats.to_dict()
    assert [r.chat_id for r in run.results] == ["c1#1", "c1#1.1"]
