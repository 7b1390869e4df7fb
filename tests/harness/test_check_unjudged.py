"""`chatprobe check` of a proxy's recording counts the chats the proxy could not judge as it did: not judged, by reason
(proxy_stopped: the proxy's stop record, "by": "proxy-stop"; parking_full: the send records a close record names), in
no outcome and no ratio. A recording that does not say so (older ones, `chatprobe run`'s) is judged as before, and a
hostile `parking_full` is a record that cannot be read (an R12 naming the field), never a crash.

FAILED on the code before the change: a chat parked when the proxy's stop record came, or named by `parking_full`,
was judged `incomplete` ("no resume of the run was recorded"), and `ScenarioStats` had no `unjudged`."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from harness.cli import main
from harness.events import Outcome
from harness.offline import check_files
from harness.profiles import load_profile

T0 = 1_796_000_000.0
NETRA = load_profile("netra")


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def chat(conn: str, t: float, n: int, *, close: dict | None = None) -> list[dict]:
    """A chat on connection `conn` from `t`: its message (the connection's send record `n`), its run's first event,
    and the connection's close (the server dropped it mid-run, 1006, unless `close` says otherwise)."""
    return [
        {"t": t, "dir": "recv", "conn": conn, "frame": json.dumps({"type": "connection_established",
                                                                   "data": {"user_id": "u"}})},
        {"t": t + 0.01, "dir": "send", "conn": conn, "frame": json.dumps(
            {"type": "user_message", "payload": {"content": "hi", "thread_id": f"t{n}", "message_id": f"m{n}"}})},
        {"t": t + 0.02, "dir": "recv", "conn": conn, "frame": json.dumps(
            {"type": "agent_started", "run_id": f"r{n}", "seq": 1, "payload": {"message_id": f"m{n}"}})},
        {"t": t + 0.03, "dir": "close", "conn": conn, **(close or {"code": 1006})},
    ]


STOP = {"dir": "close", "conn": "proxy-stop.9", "by": "proxy-stop"}


def outcomes(run) -> dict[str, int]:
    return {o.value: n for o, n in run.stats.outcomes.items() if n}


def test_a_chat_parked_when_the_proxys_stop_record_comes_is_not_judged(tmp_path):
    rec = write(tmp_path / "a.jsonl", chat("live-a.1", T0, 1) + [{"t": T0 + 5, **STOP}])
    (run,) = check_files([rec], NETRA)
    assert (run.stats.chats, run.results) == (0, []), [(r.outcome, r.note) for r in run.results]
    assert dict(run.stats.unjudged) == {"proxy_stopped": 1}
    assert any("could not judge (proxy_stopped: 1)" in w for w in run.warnings), run.warnings
    assert any("no chat judged" in e for e in run.errors), run.errors
    assert run.stats.to_dict()["unjudged_chats"] == {"proxy_stopped": 1, "parking_full": 0}


def test_without_the_stop_record_the_parked_chat_is_judged_as_before(tmp_path):
    """Older recordings, a proxy killed outright, `chatprobe run`'s: the recording's end judges it, lost."""
    rec = write(tmp_path / "a.jsonl", chat("live-a.1", T0, 1))
    (run,) = check_files([rec], NETRA)
    assert outcomes(run) == {"incomplete": 1} and not run.stats.unjudged
    assert "no resume of the run was recorded" in run.results[0].note


def test_a_parked_chat_whose_deadline_passed_before_the_stop_is_judged_at_it(tmp_path):
    """The proxy judged it at its deadline (60 s), before it stopped: so does `check`."""
    rec = write(tmp_path / "a.jsonl", chat("live-a.1", T0, 1) + chat("live-b.1", T0 + 50, 2)
                + [{"t": T0 + 70, **STOP}])
    (run,) = check_files([rec], NETRA)
    assert outcomes(run) == {"incomplete": 1} and run.results[0].run_id == "r1"
    assert dict(run.stats.unjudged) == {"proxy_stopped": 1}


def test_the_chats_open_on_a_connection_the_proxy_closed_as_it_stopped_are_not_judged_unless_ended(tmp_path):
    done = chat("live-a.1", T0, 1)[:-1] + [
        {"t": T0 + 0.05, "dir": "recv", "conn": "live-a.1", "frame": json.dumps(
            {"type": "agent_completed", "run_id": "r1", "seq": 2, "payload": {"result": "x"}})}]
    records = done + chat("live-a.1", T0 + 0.1, 2, close={"by": "proxy-stop"})[1:]
    (run,) = check_files([write(tmp_path / "a.jsonl", records)], NETRA)
    assert [r.run_id for r in run.results] == ["r1"] and run.results[0].outcome is not Outcome.INCOMPLETE
    assert dict(run.stats.unjudged) == {"proxy_stopped": 1} and not run.stats.outcomes[Outcome.INCOMPLETE]


def test_the_chats_a_close_record_names_parking_full_are_not_judged_the_others_are_parked(tmp_path):
    """Two chats on one connection, the second's send record named: the first is parked (and resumed: passed),
    the second not judged, as the proxy had no room to keep it."""
    conn = "live-a.1"
    records = [
        {"t": T0, "dir": "recv", "conn": conn, "frame": json.dumps({"type": "connection_established"})},
        *[{"t": T0 + 0.01 * n, "dir": "send", "conn": conn, "frame": json.dumps(
            {"type": "user_message", "payload": {"content": "hi", "thread_id": f"t{n}", "message_id": f"m{n}"}})}
          for n in (1, 2)],
        *[{"t": T0 + 0.1 + 0.01 * n, "dir": "recv", "conn": conn, "frame": json.dumps(
            {"type": "agent_started", "run_id": f"r{n}", "seq": 1, "payload": {"message_id": f"m{n}"}})}
          for n in (1, 2)],
        {"t": T0 + 0.2, "dir": "close", "conn": conn, "code": 1006, "parking_full": [2]},
        # the user's resume of the first run on a new connection: followed (it was parked)
        {"t": T0 + 1, "dir": "recv", "conn": "live-a.2", "frame": json.dumps({"type": "connection_established"})},
        {"t": T0 + 1.01, "dir": "send", "conn": "live-a.2", "frame": json.dumps(
            {"type": "resume", "payload": {"run_id": "r1", "last_seq": 1}})},
        *[{"t": T0 + 1.1 + 0.01 * i, "dir": "recv", "conn": "live-a.2", "frame": json.dumps(
            {"type": role, "run_id": "r1", "seq": 2 + i, "payload": {}})}
          for i, role in enumerate(["agent_thinking", "tool_executing", "tool_completed", "agent_completed"])],
        {"t": T0 + 2, "dir": "close", "conn": "live-a.2", "by": "client"},
    ]
    (run,) = check_files([write(tmp_path / "a.jsonl", records)], NETRA)
    assert [(r.run_id, r.reconnects) for r in run.results] == [("r1", ["resumed"])], [
        (r.run_id, r.outcome, r.note) for r in run.results]
    assert dict(run.stats.unjudged) == {"parking_full": 1}


def test_parking_full_may_name_a_resume(tmp_path):
    """A chat parked, resumed on a new connection and cut there again with no room left: the second close record
    names the resume's send record."""
    records = chat("live-a.1", T0, 1) + [
        {"t": T0 + 1, "dir": "recv", "conn": "live-a.2", "frame": json.dumps({"type": "connection_established"})},
        {"t": T0 + 1.01, "dir": "send", "conn": "live-a.2", "frame": json.dumps(
            {"type": "resume", "payload": {"run_id": "r1", "last_seq": 1}})},
        {"t": T0 + 1.1, "dir": "recv", "conn": "live-a.2", "frame": json.dumps(
            {"type": "agent_thinking", "run_id": "r1", "seq": 2, "payload": {}})},
        {"t": T0 + 1.2, "dir": "close", "conn": "live-a.2", "code": 1006, "parking_full": [1]},
    ]
    (run,) = check_files([write(tmp_path / "a.jsonl", records)], NETRA)
    assert run.results == [] and dict(run.stats.unjudged) == {"parking_full": 1}, [
        (r.outcome, r.note) for r in run.results]


@pytest.mark.parametrize("bad", ["2", [0], [True], [1.5], {"n": 1}, [1] * 1025, [-1], [10**18]])
def test_a_hostile_parking_full_is_an_r12_naming_the_field(tmp_path, bad):
    records = chat("live-a.1", T0, 1, close={"code": 1006, "parking_full": bad})
    (run,) = check_files([write(tmp_path / "a.jsonl", records)], NETRA)
    reasons = [v.reason for r in run.results for v in r.violations if v.rule.value == "R12"]
    assert any("field 'parking_full'" in reason for reason in reasons), (bad, reasons)
    assert not run.stats.unjudged


def test_the_json_report_shows_them_by_reason_and_the_exit_code_says_nothing_was_judged(tmp_path, capsys):
    rec = write(tmp_path / "a.jsonl", chat("live-a.1", T0, 1) + [{"t": T0 + 5, **STOP}])
    out = tmp_path / "out.json"
    assert main(["check", str(rec), "--json", str(out), "-q"]) == 1  # no chat judged: nothing passed
    report = json.loads(out.read_text())
    schema = json.loads((Path(__file__).resolve().parents[2] / "harness/schemas/result.schema.json").read_text())
    jsonschema.validate(report, schema)
    (scenario,) = report["scenarios"]
    assert scenario["stats"]["unjudged_chats"] == {"proxy_stopped": 1, "parking_full": 0}
    assert scenario["stats"]["chats"] == 0 and scenario["chats"] == []
    # With a chat judged beside it, the run is judged on that chat alone.
    passed = chat("live-b.1", T0, 2)[:-1] + [
        {"t": T0 + 0.05 + 0.01 * i, "dir": "recv", "conn": "live-b.1", "frame": json.dumps(
            {"type": role, "run_id": "r2", "seq": 2 + i, "payload": {}})}
        for i, role in enumerate(["agent_thinking", "tool_executing", "tool_completed", "agent_completed"])]
    both = write(tmp_path / "b.jsonl", chat("live-a.1", T0, 1) + passed + [{"t": T0 + 5, **STOP}])
    assert main(["check", str(both), "--json", str(out), "-q"]) == 0, capsys.readouterr().out
    (scenario,) = json.loads(out.read_text())["scenarios"]
    assert scenario["stats"]["chats"] == 1 and scenario["stats"]["outcomes"]["passed"] == 1
    assert scenario["stats"]["unjudged_chats"]["proxy_stopped"] == 1 and scenario["stats"]["missing_events_ratio"] == 0
