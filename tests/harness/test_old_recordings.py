"""Recordings that older chatprobe versions wrote, judged by this one.

tests/harness/old_recordings/ holds what `chatprobe run SCENARIO --record DIR` wrote at a few earlier commits
against its embedded agentsim (each directory named after the commit and the scenario, its `.live.json` beside it: the
command, the commit, and the verdicts that run gave live). A recording written since `--record` wrote step
expectations (`expect`, 2026-12-03) is judged as its run was live; one written before any of the fields `check` reads
beyond t, dir, conn, frame and code (its files named without a run id, or with a run id to the second) is judged as a
plain recording and says so first among the run's warnings, naming the file, instead of a silent misjudgement."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.offline import check_files
from harness.profiles import load_profile

OLD = Path(__file__).parent / "old_recordings"
NETRA = load_profile("netra")
SAID = "written by a chatprobe --record of before 2026-12-02 05:29 UTC"


def _live(name: str) -> dict:
    return json.loads((OLD / f"{name}.live.json").read_text())["live"]


def _outcomes(outcomes: dict) -> dict[str, int]:
    return {getattr(o, "value", o): n for o, n in outcomes.items() if n}


def _verdicts(run) -> list:
    return sorted(([r.run_id or "", r.outcome.value, sorted(v.rule for v in r.violations)] for r in run.results),
                  key=str)


@pytest.mark.parametrize("name", ["64ec3dc-errors", "27a2b8e-abandonment", "34f7498-reconnection"])
def test_a_recording_an_older_chatprobe_wrote_with_its_steps_is_judged_as_its_run_was_live(name):
    live = _live(name)
    [run] = check_files([OLD / name], NETRA)
    assert run.stats.chats == live["chats"]
    assert _outcomes(run.stats.outcomes) == _outcomes(live["outcomes"])
    assert {k: v for k, v in run.stats.violations.items() if v} == live["violations"]
    assert _verdicts(run) == live["verdicts"]
    assert run.passed == live["passed"]
    assert not any(SAID in w for w in run.warnings), run.warnings


@pytest.mark.parametrize("name", ["baa5fe3-errors", "8afd7b8-abandonment"])
def test_a_recording_from_before_the_fields_that_judge_steps_says_so_naming_its_file(name):
    """These recordings hold no `expect` and no `by`: the errors scenario's expected errors were judged R13 and error
    chats and its send_raw probes were no chats, the abandonment scenario's abandoned chats incomplete, exit 1 where
    the run passed live, with nothing saying why."""
    live = _live(name)
    [run] = check_files([OLD / name], NETRA)
    first = sorted((OLD / name).iterdir())[0].name
    assert run.warnings and run.warnings[0].startswith(f"{first}: {SAID}"), run.warnings
    # What the warning is for: the recording cannot say what live knew.
    assert _outcomes(run.stats.outcomes) != _outcomes(live["outcomes"])
    cli = subprocess.run([sys.executable, "-m", "harness.cli", "check", str(OLD / name)], capture_output=True,
                         text=True, timeout=60)
    assert cli.returncode == 1 and "Traceback" not in cli.stderr
    assert SAID in " ".join((cli.stdout + cli.stderr).split()), cli.stdout + cli.stderr


def test_a_teams_own_file_named_with_six_digits_is_no_old_recording(tmp_path):
    f = tmp_path / "202612-prod.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in [
        {"t": 100.0, "dir": "send", "conn": "c1",
         "frame": {"type": "user_message", "payload": {"content": "hi", "thread_id": "t1", "message_id": "m1"}}},
        *({"t": 100.1 + i / 100, "dir": "recv", "conn": "c1",
           "frame": {"type": role, "run_id": "r1", "thread_id": "t1", "seq": i + 1}}
          for i, role in enumerate(["agent_started", "agent_thinking", "agent_completed"]))]))
    [run] = check_files([f], NETRA)
    assert not any(SAID in w for w in run.warnings), run.warnings
