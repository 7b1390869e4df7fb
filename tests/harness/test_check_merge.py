"""`chatprobe check DIR` merges a recorded run's files (one per connection): as many as `--record` writes for one run,
with the records waiting in the merge bounded in bytes of memory, and frame limits counted in bytes, not characters."""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path

from harness.events import Outcome
from harness.offline import MAX_FILES_MERGED, MAX_MERGED_BYTES, check_files
from harness.recorder import DEFAULT_MAX_FILES
from harness.recordings import read_recording

from .test_recordings import AGUI, NETRA, SC, netra_run, send, write_jsonl

RUN = "20261203T043037932304Z-8576a4"


def recorded_run(directory: Path, n: int, big: int = 0) -> Path:
    """`n` files as `--record` names a run's files, one clean chat each; with `big`, each also receives a frame of
    that many bytes (an agent_started of a run of its own) on its connection before its chat."""
    directory.mkdir(exist_ok=True)
    for i in range(n):
        conn = f"cp-d8a318-u{i}.1"
        t0 = 1000.0 + i * 0.001
        records: list = []
        if big:
            records.append({"t": t0, "dir": "recv", "conn": conn,
                            "frame": json.dumps({"type": "agent_started", "run_id": f"big{i}", "pad": "x" * big})})
        records += [send(t0, conn, thread=f"t{i}", message=f"m{i}"),
                    *netra_run(f"r{i}", t0, conn, thread=f"t{i}"),
                    {"t": t0 + 1, "dir": "close", "conn": conn, "code": 1000, "by": "client"}]
        write_jsonl(directory / f"{RUN}-{i + 1:06d}-cp-d8a318-u{i}.jsonl", records)
    return directory


def test_check_merges_as_many_files_as_the_recorder_writes_for_one_run(tmp_path):
    assert MAX_FILES_MERGED == DEFAULT_MAX_FILES  # what one `run --record` writes is judged as one run
    n = 700  # more than the 512 files check merged before
    [run] = check_files([recorded_run(tmp_path / "rec", n)], NETRA, SC)
    assert run.stats.chats == n
    assert run.stats.outcomes[Outcome.PASSED] == n, [r.violations for r in run.results if r.violations][:3]


def test_the_records_waiting_in_a_merge_are_bounded_in_bytes(tmp_path):
    # 300 files, each with a 1 MiB frame first: every file's first record waits in the merge at once. Each file's
    # share of the bound is 256 MiB / 300 (< 1 MiB), so each large frame is an R12 naming it, and the merge holds a
    # few MiB, not 300 MiB.
    n, big = 300, 1 << 20
    directory = recorded_run(tmp_path / "rec", n, big=big)
    assert MAX_MERGED_BYTES // n < big
    tracemalloc.start()
    try:
        [run] = check_files([directory], NETRA, SC)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"peak {peak >> 20} MiB while merging {n} files of a 1 MiB frame each"
    # No chat is made up for a frame the recording could not hold: it is an R12 of the chat its connection carries
    # next (as a malformed frame before a connection's first chat is, live), and the chats are the recording's n.
    assert run.stats.chats == n
    shares = [v for r in run.results for v in r.violations if v.rule == "R12" and "share" in v.reason]
    assert shares and "300 files merged" in shares[0].reason
    assert sum(1 for r in run.results if r.run_id and r.run_id.startswith("r")
               and [v.rule for v in r.violations] == ["R12"]) == n


def test_a_frame_limit_counts_bytes_not_characters(tmp_path):
    # 300,000 characters of 4 bytes each: 1.2 MB on the wire (and in memory), under a 1 MiB limit by characters.
    frame = json.dumps({"type": "agent_thinking", "run_id": "r1", "thought": "\U0001F600" * 300_000},
                       ensure_ascii=False)
    assert len(frame) < 1 << 20 < len(frame.encode())
    f = tmp_path / "wide.jsonl"  # UTF-8 as is (escaped, the line would be over its own limit first)
    f.write_text(json.dumps({"t": 1.0, "dir": "recv", "conn": "c1", "frame": frame}, ensure_ascii=False) + "\n",
                 encoding="utf-8")
    [rec] = read_recording(f, max_frame=1 << 20)
    assert rec.direction == "problem" and "frame larger than the 1048576 byte limit" in rec.detail
    # a frame of the same characters under the limit in bytes is taken
    small = json.dumps({"type": "agent_thinking", "run_id": "r1", "thought": "\U0001F600" * 1000}, ensure_ascii=False)
    g = write_jsonl(tmp_path / "ok.jsonl", [{"t": 1.0, "dir": "recv", "conn": "c1", "frame": small}])
    [rec] = read_recording(g, max_frame=1 << 20)
    assert rec.direction == "recv" and rec.frame == small


def test_a_non_json_line_is_cut_to_the_limit_in_bytes(tmp_path):
    line = "\u00e9" * 3000  # 2 bytes each in UTF-8; not JSON: judged as a frame as received, cut to the limit
    f = tmp_path / "text.jsonl"
    f.write_text(line + "\n")
    # (--format jsonl: told from the content, a file whose first line is no JSON is no recording, exit 2)
    [rec] = read_recording(f, "jsonl", max_frame=1000)
    assert isinstance(rec.frame, str) and len(rec.frame.encode()) <= 1000 and rec.frame == "\u00e9" * 500


def test_check_raises_its_open_file_limit_for_a_large_run(tmp_path):
    # A process started with a soft limit of 256 open files (as some systems start every process with 1,024) merges
    # a run of 400 files: check raises its own soft limit up to the hard one.
    directory = recorded_run(tmp_path / "rec", 400)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard >= 600, "the test needs a hard limit of at least 600"
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit("
            "resource.RLIMIT_NOFILE)[1])); from harness.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "check", str(directory), "--quiet"], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]


def test_a_run_past_the_open_file_hard_limit_is_refused_with_one_message(tmp_path):
    directory = recorded_run(tmp_path / "rec", 300)
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200)); "
            "from harness.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "check", str(directory), "--quiet"], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "300 files" in proc.stderr and "ulimit -n" in proc.stderr and "Traceback" not in proc.stderr


def test_a_directory_of_one_file_is_judged_as_the_file_alone(tmp_path):
    # No merge share for one file: a HAR whose SSE body is 36 MiB (under the 64 MiB a HAR string may be) is read
    # whole in a directory of its own, as `check FILE.har` reads it (the share had cut it at 32 MiB: an R12).
    body = (": " + "x" * (2 << 20) + "\n") * 18 + (
        'data: {"type":"RUN_STARTED","threadId":"t","runId":"r1"}\n\n'
        'data: {"type":"RUN_FINISHED","threadId":"t","runId":"r1"}\n\n')
    har = {"log": {"version": "1.2", "entries": [{
        "startedDateTime": "2026-12-03T05:00:00.000Z",
        "request": {"method": "POST", "url": "http://h/agent",
                    "postData": {"mimeType": "application/json",
                                 "text": json.dumps({"threadId": "t", "runId": "r1", "messages": []})}},
        "response": {"status": 200, "headers": [], "content": {"mimeType": "text/event-stream", "text": body}}}]}}
    directory = tmp_path / "one"
    directory.mkdir()
    (directory / "page.har").write_text(json.dumps(har))
    [alone] = check_files([directory / "page.har"], AGUI, SC)
    [merged] = check_files([directory], AGUI, SC)
    assert [(r.outcome, [v.rule for v in r.violations]) for r in alone.results] == [(Outcome.PASSED, [])]
    assert [(r.outcome, [v.rule for v in r.violations]) for r in merged.results] == [(Outcome.PASSED, [])]
