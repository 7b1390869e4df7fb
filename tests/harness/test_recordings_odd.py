"""Odd recordings as crashes, copies and other tools leave them: a file cut mid-record, and what `check` says of it."""
from __future__ import annotations

import json

import pytest

from harness.events import Outcome
from harness.offline import check_files
from harness.recordings import CUT_RECORD

from .test_recordings import NETRA, SC, netra_run, send


def _lines(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


@pytest.mark.parametrize("cut_at", ['"t": 100.', '"dir": "re', '"conn": "c2", "frame": "{\\"type\\": \\"tool_'])
def test_a_recording_cut_mid_record_is_judged_as_it_stood_there_not_as_a_frame_the_server_broke(tmp_path, cut_at):
    """A process killed while it wrote a line (or a copy taken then) leaves a last line that is neither JSON nor ended:
    it was read as a frame received, "malformed frame: not JSON" an R12 on each chat open on the connection, held
    against a server that sent nothing broken. It is the recording's end: the chats open on the connection the cut
    record names are judged as they stood (incomplete, never held against the server), the warning naming the line."""
    whole = [send(100.0, "c1"), *netra_run("r1", 100.0, "c1"),
             send(100.0, "c2", thread="t2", message="m2"), *netra_run("r2", 100.0, "c2", thread="t2")]
    last = json.dumps(whole[-2])  # c2's tool_completed: its run still open there
    text = _lines(whole[:-2]) + last[: last.index(cut_at) + len(cut_at)]
    f = tmp_path / "crashed.jsonl"
    f.write_text(text)
    [run] = check_files([f], NETRA, SC)
    by_run = {r.run_id: r for r in run.results}
    assert by_run["r1"].outcome is Outcome.PASSED
    cut = by_run["r2"]
    assert cut.outcome is Outcome.INCOMPLETE and not cut.violations, cut.violations
    assert "crashed.jsonl:11" in cut.note and CUT_RECORD in cut.note
    assert not run.connection_violations and sum(run.stats.violations.values()) == 0
    assert any("crashed.jsonl:11" in w and "not held against the server" in w for w in run.warnings), run.warnings


def test_a_last_line_without_its_end_is_read_when_whole_and_junk_stays_a_frame(tmp_path):
    """Only a last line begun as a record and left unended is a cut: a whole last record without its line end is read
    as any record, and a last line of text that is no JSON record (a proxy's error page) is the frame it was."""
    recs = [send(100.0), *netra_run("r1", 100.0)]
    whole = tmp_path / "whole.jsonl"
    whole.write_text(_lines(recs).rstrip("\n"))
    [run] = check_files([whole], NETRA, SC)
    assert [r.outcome for r in run.results] == [Outcome.PASSED]

    junk = tmp_path / "junk.jsonl"
    junk.write_text(_lines([send(100.0), *netra_run("r1", 100.0)[:3]]) + "<html>502 Bad Gateway</html>")
    [run] = check_files([junk], NETRA, SC)
    [chat] = run.results
    assert [v.rule for v in chat.violations] == ["R12"] and "not JSON" in chat.violations[0].reason
