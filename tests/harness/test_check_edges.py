"""`chatprobe check` of crafted recordings at the edges of its rules and bounds: a time equal to a chat's deadline,
a count equal to a cap. Each recording is the smallest that reaches its edge."""
from __future__ import annotations

import json

import pytest

from harness.events import Outcome
from harness.offline import check_files

from .test_recordings import NETRA, SC, send, write_jsonl

DEADLINE = 10.0  # SC's expect.deadline


def netra_frames(run: str, conn: str, timed: list[tuple[float, str]]) -> list[dict]:
    out = []
    for seq, (t, role) in enumerate(timed, 1):
        frame = {"type": role, "run_id": run, "thread_id": "t1", "seq": seq}
        if role.startswith("tool_"):
            frame |= {"tool_call_id": f"{run}-c1", "tool_name": "calc"}
        out.append({"t": t, "dir": "recv", "conn": conn, "frame": json.dumps(frame)})
    return out


@pytest.mark.parametrize(("end", "outcome"), [(1000.0 + DEADLINE, Outcome.PASSED),
                                              (1000.0 + DEADLINE + 0.001, Outcome.INCOMPLETE)],
                         ids=["at-the-deadline", "just-past-it"])
def test_a_terminal_event_at_the_deadline_itself_is_within_it(tmp_path, end, outcome):
    """docs/protocol.md R10: the terminal event must arrive *within* the deadline. One received at the very time the
    deadline falls (sent at 1000.0, deadline 10 s, agent_completed at 1010.0) is in the verdict and the chat passes;
    a millisecond later it is not (R10, incomplete) and shows as a warning."""
    events = [(1000.1, "agent_started"), (1001.5, "agent_thinking"), (1003.0, "tool_executing"),
              (1004.5, "tool_completed"), (1006.0, "agent_thinking"), (1007.5, "agent_thinking"),
              (1009.0, "agent_thinking"), (end, "agent_completed")]
    recs = [send(1000.0, conn="c1"), *netra_frames("r1", "c1", events)]
    [run] = check_files([write_jsonl(tmp_path / "edge.jsonl", recs)], NETRA, SC)
    [result] = run.results
    assert result.outcome is outcome, (result.outcome, result.violations, result.warnings)
    if outcome is Outcome.PASSED:
        assert not result.violations and not result.warnings
    else:
        assert [v.rule.value for v in result.violations] == ["R10"]



CLEAN = [(1000.1, "agent_started"), (1000.2, "agent_thinking"), (1000.3, "tool_executing"), (1000.4, "tool_completed"),
         (1000.5, "agent_completed")]


@pytest.mark.parametrize(("timed", "rules"), [
    # the first event at the first-event limit itself (1 s): within it, no R9
    ([(1001.0, "agent_started"), *CLEAN[1:3], (1001.4, "tool_completed"), (1001.5, "agent_completed")], []),
    ([(1001.001, "agent_started"), *CLEAN[1:3], (1001.4, "tool_completed"), (1001.5, "agent_completed")], ["R9"]),
    # two seconds without an event (the stall limit) itself: no R11; a millisecond more is one
    # (times a float holds exactly, so the gap is 2.0 itself)
    ([CLEAN[0], (1000.25, "agent_thinking"), (1002.25, "tool_executing"), (1002.3, "tool_completed"),
      (1002.4, "agent_completed")], []),
    ([CLEAN[0], (1000.25, "agent_thinking"), (1002.251, "tool_executing"), (1002.3, "tool_completed"),
      (1002.4, "agent_completed")], ["R11"]),
    # no terminal event: its last event the stall limit itself before the deadline (1010.0) is R10 and no R11
    ([(1000.5, "agent_started"), (1002.0, "agent_thinking"), (1003.5, "tool_executing"), (1005.0, "tool_completed"),
      (1006.5, "agent_thinking"), (1008.0, "agent_thinking")], ["R10"]),
    ([(1000.5, "agent_started"), (1002.0, "agent_thinking"), (1003.5, "tool_executing"), (1005.0, "tool_completed"),
      (1006.5, "agent_thinking"), (1007.999, "agent_thinking")], ["R10", "R11"]),
], ids=["first-event-at-the-limit", "just-past-it", "stall-at-the-limit", "stall-just-past-it",
        "silent-to-the-deadline-at-the-limit", "silent-just-over-it"])
def test_a_time_equal_to_a_limit_is_within_it(tmp_path, timed, rules):
    """docs/protocol.md: R9 and R11 are for times *over* their limit. A recording whose times fall on a limit exactly
    (sent at 1000.0, first_event_limit 1 s, stall_limit 2 s, deadline 10 s) is within it; a millisecond over is not."""
    # (the user's next message, past the deadline: the first chat is judged at its deadline, not at the file's end)
    recs = [send(1000.0, conn="c1"), *netra_frames("r1", "c1", timed), send(1011.0, conn="c1", message="m2")]
    [run] = check_files([write_jsonl(tmp_path / "limits.jsonl", recs)], NETRA, SC)
    result = run.results[0]
    assert sorted(v.rule.value for v in result.violations) == rules, result.violations


def test_no_event_by_a_first_event_limit_equal_to_the_deadline_is_r9(tmp_path):
    """A chat with no event is judged at its deadline; with expect.first_event_limit equal to it, that is the limit's
    own time: R9 as well as R10 (checker.finish: `>=` on the time, as the live client, its timer a moment late, gives
    one)."""
    from harness.scenario import Scenario

    scenario = Scenario(name="t", expect={"settle": "0.05s", "deadline": "2s", "first_event_limit": "2s"})
    recs = [send(1000.0, conn="c1"), {"t": 1005.0, "dir": "close", "conn": "c1", "code": 1000, "by": "client"}]
    [run] = check_files([write_jsonl(tmp_path / "silent.jsonl", recs)], NETRA, scenario)
    [result] = run.results
    assert sorted(v.rule.value for v in result.violations) == ["R10", "R9"], result.violations


@pytest.mark.parametrize(("left_at", "rules"), [(1001.0, ["R9"]), (1000.999, [])], ids=["at-the-limit", "before-it"])
def test_a_user_who_leaves_a_blank_screen_at_the_first_event_limit_was_kept_waiting(tmp_path, left_at, rules):
    """checker.abandon: a user who left with no event at the first-event limit itself (1 s) or later was kept waiting
    (R9); a moment before it, not."""
    recs = [send(1000.0, conn="c1"), {"t": left_at, "dir": "close", "conn": "c1", "by": "client"}]
    [run] = check_files([write_jsonl(tmp_path / "left.jsonl", recs)], NETRA, SC)
    [result] = run.results
    assert result.abandoned_at == left_at
    assert [v.rule.value for v in result.violations] == rules, result.violations


def test_connections_followed_at_once_are_bounded_at_the_cap_exactly(tmp_path, monkeypatch):
    """docs/recordings.md: 10,000 connections are followed at once (MAX_OPEN_CONNS, here 3): that many are all kept;
    one more and the one least recently seen is ended as the recording's end would end it (its chat judged as it
    stood), never a table of connections without end."""
    from harness import offline
    from harness.recordings import read_recording

    monkeypatch.setattr(offline, "MAX_OPEN_CONNS", 3)
    recs = [send(1000.0 + i, conn=f"c{i}", message=f"m{i}") for i in range(4)]
    check = offline.OfflineCheck(NETRA, SC)
    fed = list(read_recording(write_jsonl(tmp_path / "conns.jsonl", recs)))
    for rec in fed[:3]:
        check.feed(rec)
    assert len(check.conns) == 3 and check.tally.chats == 0  # at the cap: every connection still followed
    check.feed(fed[3])
    assert sorted(check.conns) == ["c1", "c2", "c3"] and check.tally.chats == 1  # c0's chat judged as it stood
    check.end()
    run = check.run("t", 1.0)
    assert run.stats.chats == 4
    assert [r.note for r in run.results if r.chat_id.startswith("c0")] == [offline.ENDED_NOTE]


def test_a_directory_run_of_exactly_the_files_check_merges_is_judged(tmp_path, monkeypatch):
    """MAX_FILES_MERGED (here 3) files of one run are merged and judged; one more is refused (test_recordings.py)."""
    from harness import offline

    monkeypatch.setattr(offline, "MAX_FILES_MERGED", 3)
    for n in range(3):
        write_jsonl(tmp_path / f"20261205T085630Z-abcdef-{n:06d}-u{n}.jsonl", [send(1000.0 + n, conn=f"u{n}.1")])
    [run] = check_files([tmp_path], NETRA, SC)
    assert run.stats.chats == 3
