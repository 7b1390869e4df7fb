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

