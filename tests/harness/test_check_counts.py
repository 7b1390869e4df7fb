"""`chatprobe check` counts every chat a recording opened: none is dropped from the verdicts on the way."""
from __future__ import annotations

import json

from .test_cli_ux import run_cli

T = 1_000_000_000.0


def test_two_chats_cut_short_under_one_run_id_are_both_judged(tmp_path):
    lines = []

    def rec(t, d, conn, frame=None, **extra):
        lines.append(json.dumps({"t": t, "dir": d, "conn": conn, **({"frame": frame} if frame else {}), **extra}))

    def ev(kind, seq, thread):
        return {"type": kind, "run_id": "r1", "seq": seq, "thread_id": thread}

    # Chat 1 (c1): its connection drops mid-run and is never resumed: incomplete.
    rec(T, "send", "c1", {"type": "user_message", "payload": {"content": "q1", "thread_id": "t1", "message_id": "m1"}})
    rec(T + .01, "recv", "c1", ev("agent_started", 1, "t1"))
    rec(T + .02, "recv", "c1", ev("agent_thinking", 2, "t1"))
    rec(T + .03, "close", "c1", code=1006)
    # Chat 2 (c2): the server reuses the run id; dropped mid-run too, then resumed on c3 to a clean end.
    rec(T + 1, "send", "c2", {"type": "user_message", "payload": {"content": "q2", "thread_id": "t2", "message_id": "m2"}})
    rec(T + 1.01, "recv", "c2", ev("agent_started", 1, "t2"))
    rec(T + 1.02, "recv", "c2", ev("agent_thinking", 2, "t2"))
    rec(T + 1.03, "close", "c2", code=1006)
    rec(T + 1.5, "send", "c3", {"type": "resume", "payload": {"run_id": "r1", "last_seq": 2}})
    rec(T + 1.51, "recv", "c3", {**ev("tool_executing", 3, "t2"), "tool_call_id": "k1", "tool_name": "calc"})
    rec(T + 1.52, "recv", "c3", {**ev("tool_completed", 4, "t2"), "tool_call_id": "k1", "tool_name": "calc"})
    rec(T + 1.53, "recv", "c3", ev("agent_completed", 5, "t2"))
    recording = tmp_path / "parked.jsonl"
    recording.write_text("\n".join(lines) + "\n")
    report = tmp_path / "r.json"
    proc = run_cli("check", str(recording), "--json", str(report), "-q")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # chat 1 was never resumed: not a passing recording
    [run] = json.loads(report.read_text())["scenarios"]
    assert run["stats"]["chats"] == 2, run["stats"]
    assert run["stats"]["outcomes"]["incomplete"] == 1 and run["stats"]["outcomes"]["passed"] == 1


def test_chats_judged_to_free_memory_let_their_events_go(tmp_path, monkeypatch):
    """Past MAX_OPEN_BYTES the oldest open chats are judged as they stand: their events must be freed, not kept by
    the connection that remembers the chat (a 170 MB recording of never-ending runs took 1.1 GB)."""
    import harness.offline as offline
    from harness.profiles import load_profile
    from harness.recordings import read_recording
    from harness.scenario import Scenario

    monkeypatch.setattr(offline, "MAX_OPEN_BYTES", 256 * 1024)
    recording = tmp_path / "endless.jsonl"
    with recording.open("w") as f:
        for c in range(4):
            f.write(json.dumps({"t": 1e9, "conn": f"c{c}", "frame": {"type": "agent_started", "run_id": f"r{c}.0"}})
                    + "\n")
            for r in range(1, 100):
                f.write(json.dumps({"type": "agent_started", "run_id": f"r{c}.{r}"}) + "\n")
        for _ in range(30):
            for c in range(4):
                f.write(json.dumps({"conn": f"c{c}", "frame": {"type": "agent_thinking", "run_id": f"r{c}.0"}}) + "\n")
                f.write("".join(json.dumps({"type": "agent_thinking", "run_id": f"r{c}.{r}"}) + "\n"
                                for r in range(1, 100)))
    check = offline.OfflineCheck(load_profile("netra"), Scenario(name="endless"))
    for rec in read_recording(recording):
        check.feed(rec)
    judged = [chat for conn in check.conns.values() for chat in conn.checker.chats if chat.judged]
    assert len(judged) > 100 and check.tally.chats == len(judged)  # the bound was reached: chats were judged
    assert sum(len(chat.events) for chat in judged) == 0
    assert sum(t.kept_bytes for t, _ in check.open.values()) <= offline.MAX_OPEN_BYTES
    check.end()
    assert check.tally.chats == 400


def test_netra_events_naming_no_run_are_cross_talk_offline_as_live(tmp_path):
    lines = [json.dumps({"t": T, "dir": "send", "conn": "c1",
                         "frame": {"type": "user_message", "payload": {"content": "q", "thread_id": "t1"}}})]
    for seq, kind in enumerate(["agent_started", "agent_thinking", "agent_completed"], 1):
        lines.append(json.dumps({"t": T + seq / 100, "dir": "recv", "conn": "c1",
                                 "frame": {"type": kind, "seq": seq, "thread_id": "t1"}}))
    recording = tmp_path / "thread-only.jsonl"
    recording.write_text("\n".join(lines) + "\n")
    report = tmp_path / "r.json"
    proc = run_cli("check", str(recording), "--json", str(report), "-q")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [run] = json.loads(report.read_text())["scenarios"]
    [chat] = run["chats"]
    assert chat["outcome"] != "passed" and any(v["rule"] == "R8" for v in chat["violations"]), chat


def test_connections_followed_at_once_are_bounded_the_least_recently_seen_judged_as_it_stands(tmp_path, monkeypatch):
    """Past MAX_OPEN_CONNS connections followed at once, the least recently seen one is judged as it stands: a
    recording of endless connections that never close must not hold them all (each with its router and checker)."""
    import harness.offline as offline
    from harness.profiles import load_profile
    from harness.recordings import read_recording
    from harness.scenario import Scenario

    monkeypatch.setattr(offline, "MAX_OPEN_CONNS", 3)
    recording = tmp_path / "endless-conns.jsonl"
    with recording.open("w") as f:
        for c in range(8):
            f.write(json.dumps({"t": T + c, "dir": "send", "conn": f"c{c}", "frame": {
                "type": "user_message", "payload": {"content": "q", "thread_id": f"t{c}", "message_id": f"m{c}"}}})
                + "\n")
            # c0 is seen again after each new connection: never the least recently seen, so never let go.
            f.write(json.dumps({"t": T + c + 0.5, "dir": "recv", "conn": "c0",
                                "frame": {"type": "heartbeat"}}) + "\n")
    check = offline.OfflineCheck(load_profile("netra"), Scenario(name="endless"))
    for rec in read_recording(recording):
        check.feed(rec)
        assert len(check.conns) <= offline.MAX_OPEN_CONNS
    assert "c0" in check.conns  # the least recently seen went first, not the oldest opened
    assert check.tally.chats == 5  # c1..c5 judged as they stood, counted
    check.end()
    assert check.tally.chats == 8
