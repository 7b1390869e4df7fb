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
