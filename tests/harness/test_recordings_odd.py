"""Odd recordings as crashes, copies and other tools leave them: a file cut mid-record, and what `check` says of it."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from harness.events import Outcome
from harness.offline import check_files
from harness.recordings import CUT_RECORD, RecordingError

from .test_recordings import AGUI, NETRA, SC, assert_sse_cut_at_event_3, netra_run, send, write_jsonl


def _lines(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def _judged_cut_at_line_11(f):
    """`f`'s two chats judged: r1 passed, r2 cut at line 11 (incomplete, the cut named, nothing held against the
    server); the run."""
    [run] = check_files([f], NETRA, SC)
    by_run = {r.run_id: r for r in run.results}
    assert by_run["r1"].outcome is Outcome.PASSED
    cut = by_run["r2"]
    assert cut.outcome is Outcome.INCOMPLETE and not cut.violations, cut.violations
    assert "crashed.jsonl:11" in cut.note and CUT_RECORD in cut.note
    assert not run.connection_violations and sum(run.stats.violations.values()) == 0
    return run


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
    run = _judged_cut_at_line_11(f)
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


# A WebSocket entry read whole, whose message comes before what breaks a HAR: the break is then an R12 where it falls.
_GOOD_ENTRY = (b'{"startedDateTime": "2026-12-02T00:59:59.000Z", "request": {"method": "GET", "url": "ws://127.0.0.1/ws"}, '
               b'"response": {"status": 101}, "_resourceType": "websocket", "_webSocketMessages": [{"type": "receive", '
               b'"time": 1764637199.0, "opcode": 1, "data": "{\\"type\\": \\"connection_established\\"}"}]}, ')


def _har_bytes(entry_headers: bytes, message_time: bytes = b"1764637200.0", before: bytes = b"") -> bytes:
    """A DevTools HAR of one WebSocket, its request headers and its first message's time given as raw bytes (after
    the entries `before`)."""
    frames = [json.dumps({"type": "connection_established", "user_id": "u1"}),
              json.dumps({"type": "user_message", "payload": {"content": "hi", "thread_id": "t1"}})]
    msgs = b", ".join(b'{"type": "%s", "time": %s, "opcode": 1, "data": %s}'
                      % (kind, t, json.dumps(data).encode())
                      for kind, t, data in [(b"receive", message_time, frames[0]), (b"send", b"1764637200.01", frames[1])])
    return (b'{"log": {"version": "1.2", "creator": {"name": "WebInspector", "version": "537.36"}, "entries": [' + before + b'{'
            b'"startedDateTime": "2026-12-02T01:00:00.000Z", "request": {"method": "GET", "url": "ws://127.0.0.1/ws", '
            b'"headers": [' + entry_headers + b']}, "response": {"status": 101, "headers": []}, '
            b'"_resourceType": "websocket", "_webSocketMessages": [' + msgs + b"]}]}}")


def test_a_har_broken_inside_a_credential_never_shows_it_in_the_r12(tmp_path):
    """A byte that is not UTF-8 inside a request's cookie: the parser's error quotes the bytes around it, the cookie's
    value among them, before the request's credentials are registered. Only the message's first line is kept, but
    yajl gives it as bytes, whose repr is one line: the R12 (and every report) showed the session token."""
    token = b"Zq8xK2mN7pR4vT9wY3aB6cD1eF5gH0jL"
    f = tmp_path / "broken.har"
    f.write_bytes(_har_bytes(b'{"name": "Cookie", "value": "session=' + token + b'\xff"}'))
    with pytest.raises(RecordingError, match="invalid bytes in UTF8 string") as refused:  # nothing read before it
        check_files([f], NETRA, SC)
    assert token[8:20].decode() not in str(refused.value)
    f.write_bytes(_har_bytes(b'{"name": "Cookie", "value": "session=' + token + b'\xff"}', before=_GOOD_ENTRY))
    [run] = check_files([f], NETRA, SC)
    reasons = [v.reason for v in run.connection_violations] + [v.reason for r in run.results for v in r.violations]
    assert reasons and all("HAR file invalid JSON near byte" in r for r in reasons), reasons
    assert any("invalid bytes in UTF8 string" in r for r in reasons), reasons
    assert not any(token[8:20].decode() in r for r in reasons), reasons


def test_a_har_cut_by_a_number_it_cannot_hold_is_no_firefox_export_without_messages(tmp_path):
    """A message's `time` of 1e400 (past a float) stops the parser there: an R12 naming the byte. The socket, its
    messages unread, was then taken for one that lists none, and the check said Firefox leaves WebSocket messages
    out: advice for another file."""
    f = tmp_path / "absurd.har"
    f.write_bytes(_har_bytes(b"", message_time=b"1e400", before=_GOOD_ENTRY))
    [run] = check_files([f], NETRA, SC)
    assert [v.rule for v in run.connection_violations] == ["R12"]
    assert "near byte" in run.connection_violations[0].reason and "overflow" in run.connection_violations[0].reason
    assert not any("Firefox" in e for e in run.errors + run.warnings), run.errors + run.warnings


@pytest.mark.parametrize("cut", [40, 150, 300], ids=["before-any-entry", "in-the-request", "in-the-handshake"])
def test_a_har_cut_before_anything_in_it_was_read_is_exit_2_naming_the_byte(tmp_path, cut):
    """A HAR cut (a save interrupted, a copy of a file still written, an upload's limit) before its first WebSocket
    message or request was read whole was judged as a recording: exit 1, "no chat found" and an R12 held against no
    server. It holds nothing to judge: exit 2 naming the file and the byte, as a JSON Lines file cut inside its first
    record. Cut after a message was read, it is judged up to there (the R12 says where it stopped)."""
    whole = _har_bytes(b"")
    f = tmp_path / "cut.har"
    f.write_bytes(whole[:cut])
    with pytest.raises(RecordingError, match=rf"^{re.escape(str(f))}: the HAR file is truncated near byte {cut} "
                                             r"\(parse error: premature EOF\), before any .* nothing to judge"):
        check_files([f], NETRA, SC)
    f.write_bytes(whole[:whole.index(b'"send"')])  # the first message read whole
    [run] = check_files([f], NETRA, SC)
    assert [v.rule for v in run.connection_violations] == ["R12"], run.connection_violations


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_recordings_each_written_with_a_byte_order_mark_and_joined_are_judged_as_each_alone(tmp_path, newline):
    """`cat a.jsonl b.jsonl > all.jsonl` of files a Windows tool wrote with a BOM: the BOM before b's first record
    made it a line of no JSON, a frame received: an R12 on a chat of a server that sent nothing broken, and the record
    (here b's message, its chat with it) lost."""
    a = [send(100.0, "a1"), *netra_run("r1", 100.0, "a1")]
    b = [send(200.0, "b1", thread="t2", message="m2"), *netra_run("r2", 200.0, "b1", thread="t2")]
    joined = "".join("\ufeff" + newline.join(json.dumps(r) for r in recs) + newline for recs in (a, b))
    f = tmp_path / "all.jsonl"
    f.write_bytes(joined.encode())
    [run] = check_files([f], NETRA, SC)
    assert [(r.run_id, r.outcome) for r in run.results] == [("r1", Outcome.PASSED), ("r2", Outcome.PASSED)]
    assert not run.connection_violations and sum(run.stats.violations.values()) == 0


def test_a_recording_cut_inside_its_first_record_is_refused_as_such_not_as_text(tmp_path):
    """A writer killed at its first line leaves a file of one record cut short: it was refused as prose ("is no JSON:
    text, not a recording … move other files out"), which it is not."""
    f = tmp_path / "u1.jsonl"
    f.write_text(json.dumps(send(100.0))[:40])
    with pytest.raises(RecordingError) as refused:
        check_files([f], NETRA, SC)
    said = str(refused.value)
    assert said.startswith(f"{f}:1: the file ends inside its first record") and "no JSON" not in said, said


# Characters of two, three and four bytes in UTF-8, each cut after each of its first bytes.
_CUT_CHARACTERS = [(ch, k) for ch in ("é", "€", "𝄞") for k in range(1, len(ch.encode()))]


@pytest.mark.parametrize(("char", "kept"), _CUT_CHARACTERS)
def test_a_recording_cut_inside_a_character_is_judged_as_it_stood_not_as_bytes_the_server_broke(tmp_path, char, kept):
    """`--record` writes frames' text as it is (UTF-8, not \\u escapes), and a writer killed mid-line (or a copy taken
    then) cuts wherever the bytes stop: between two bytes of one character of a reply in French, Chinese or emoji.
    That last line was "line N is not UTF-8", an R12 held against a server that sent nothing broken, where a cut
    between two ASCII bytes was judged as the recording's end. It is that end either way."""
    whole = [send(100.0, "c1"), *netra_run("r1", 100.0, "c1"),
             send(100.0, "c2", thread="t2", message="m2"), *netra_run("r2", 100.0, "c2", thread="t2")]
    frame = json.loads(whole[-2]["frame"]) | {"payload": {"result": f"391 {char} cents"}}
    last = json.dumps(whole[-2] | {"frame": json.dumps(frame, ensure_ascii=False)}, ensure_ascii=False).encode()
    at = last.index(char.encode()) + kept
    f = tmp_path / "crashed.jsonl"
    f.write_bytes(_lines(whole[:-2]).encode() + last[:at])
    _judged_cut_at_line_11(f)

    first = tmp_path / "first.jsonl"  # a file of its first record, cut so: nothing to judge (exit 2), saying why
    first.write_bytes(last[:at])
    with pytest.raises(RecordingError) as refused:
        check_files([first], NETRA, SC)
    assert str(refused.value).startswith(f"{first}:1: the file ends inside its first record"), str(refused.value)


def test_a_last_line_ending_in_a_byte_no_character_begins_with_is_still_not_utf8(tmp_path):
    """Only a character begun and cut is the file's cut: a last line whose bytes are no UTF-8 (a Latin-1 writer's
    0xFF, a stray continuation byte) is the R12 it was."""
    recs = [send(100.0), *netra_run("r1", 100.0)[:3]]
    for junk in (b'{"t": 100.5, "frame": "\xff', b'{"t": 100.5, "frame": "\x80'):
        f = tmp_path / "junk.jsonl"
        f.write_bytes(_lines(recs).encode() + junk)
        [run] = check_files([f], NETRA, SC)
        [chat] = run.results
        assert [v.rule for v in chat.violations] == ["R12"] and "line 5 is not UTF-8" in chat.violations[0].reason


@pytest.mark.parametrize(("char", "kept"), _CUT_CHARACTERS)
def test_an_sse_body_cut_inside_a_character_is_judged_as_it_stood(tmp_path, char, kept):
    """`curl -N … > body.sse` stopped between two bytes of a character of the reply: the event's data was "not valid
    UTF-8", an R12 held against the server, where a cut between two ASCII bytes is the recording's end."""
    body = ('data: {"type":"RUN_STARTED","threadId":"t","runId":"r1"}\n\n'
            'data: {"type":"TEXT_MESSAGE_START","messageId":"a","role":"assistant"}\n\n'
            f'data: {{"type":"TEXT_MESSAGE_CONTENT","messageId":"a","delta":"caf{char} ok"}}\n\n').encode()
    f = tmp_path / "body.sse"
    f.write_bytes(body[:body.index(char.encode()) + kept])
    [run] = check_files([f], AGUI, SC)
    assert_sse_cut_at_event_3(run)

    f.write_bytes(body + "data: [caf\xe9]\n\n".encode("latin-1"))  # bytes no UTF-8 before the end: the server's
    [run] = check_files([f], AGUI, SC)
    [chat] = run.results
    assert any("not valid UTF-8" in v.reason for v in chat.violations + run.connection_violations)


def test_a_first_line_that_is_not_utf8_is_no_recording_as_a_first_line_of_no_json_is_none(tmp_path):
    """A README saved by a Windows editor (`Café notes` in Windows-1252) among a directory's recordings, or a log
    another tool wrote in Latin-1: its first line was "line 1 is not UTF-8", an R12 held against the server and exit
    1 with "no chat found", where the same README in ASCII is exit 2 naming the file and line. JSON text is UTF-8
    (RFC 8259), so that line is no JSON either: exit 2, naming the file, the line and the byte. A later line so stays
    the R12 on the chat it falls in, and `--format jsonl` judges the first one so too."""
    d = tmp_path / "rec"
    d.mkdir()
    write_jsonl(d / "u1.jsonl", [send(100.0), *netra_run("r1", 100.0)])
    (d / "README.txt").write_bytes("\n  Café notes: the run of Tuesday\n".encode("cp1252"))
    with pytest.raises(RecordingError) as refused:
        check_files([d], NETRA, SC)
    said = str(refused.value)
    assert said.startswith(f"{d / 'README.txt'}:2: not UTF-8 (byte 6 of the line, 0xe9)"), said

    later = tmp_path / "later.jsonl"
    later.write_bytes(_lines([send(100.0), *netra_run("r1", 100.0)[:3]]).encode()
                      + '{"t": 100.5, "frame": "Café"}\n'.encode("cp1252") + _lines(netra_run("r1", 100.0)[3:]).encode())
    [run] = check_files([later], NETRA, SC)
    [chat] = run.results
    assert [v.rule for v in chat.violations] == ["R12"] and "line 5 is not UTF-8" in chat.violations[0].reason


_WS_ENTRY = {"startedDateTime": "2026-12-02T01:00:00.000Z",
             "request": {"method": "GET", "url": "ws://127.0.0.1/ws", "headers": []},
             "response": {"status": 101, "headers": []}, "_resourceType": "websocket", "_webSocketMessages": []}


def _check_cli(path, *flags: str) -> subprocess.CompletedProcess[str]:
    """`chatprobe check PATH` (quiet unless flags are given) run as a user runs it."""
    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-m", "harness", "check", str(path), *(flags or ("-q",))], cwd=root,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("log", "said"), [
    ({"version": "1.2", "entries": {}}, "field log.entries is an object, not an array"),
    ({"version": "1.2", "entries": {"0": _WS_ENTRY}}, "field log.entries is an object, not an array"),
    ({"version": "1.2", "entries": "none"}, "field log.entries is a string, not an array"),
    ({"version": "1.2", "entries": None}, "field log.entries is null, not an array"),
    ({"version": "1.2", "creator": {"name": "x"}}, "field log.entries is missing"),
])
def test_a_har_whose_entries_are_no_array_is_exit_2_naming_the_field_not_no_chat_found(tmp_path, log, said):
    """HAR 1.2 requires log.entries to be an array: a file whose entries are an object (or missing) was read as a HAR
    with no request in it, exit 1 and "no chat found (is it the profile's dialect?)". Now it is refused as the HAR
    reader refuses a file with no `log` object: exit 2, one line naming the file and the field."""
    har = tmp_path / "odd.har"
    har.write_text(json.dumps({"log": log}))
    proc = _check_cli(har)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"chatprobe: error: {har}: not a HAR 1.2 file: {said} "), proc.stderr
    assert "requires log.entries to be an array" in proc.stderr


def test_a_har_with_no_entries_is_still_no_chat_found_and_a_log_of_no_object_still_no_har(tmp_path):
    """An empty `entries` array is a valid HAR with no request in it: judged (exit 1, "no chat found"), not refused;
    a `log` that is no object stays "no \\"log\\" object"."""
    empty = tmp_path / "empty.har"
    empty.write_text(json.dumps({"log": {"version": "1.2", "entries": []}}))
    proc = _check_cli(empty, "--json", str(tmp_path / "empty.json"))
    assert proc.returncode == 1 and "no chat found in the recording" in proc.stdout, proc.stdout + proc.stderr
    bare = tmp_path / "bare.har"
    bare.write_text(json.dumps({"log": [{"entries": []}]}))
    proc = _check_cli(bare)
    assert proc.returncode == 2 and 'not a HAR file (no "log" object)' in proc.stderr, proc.stderr


def _ws_har(times: list) -> dict:
    """A DevTools HAR of one WebSocket whose two messages (the server's greeting, the client's message) have the
    times given."""
    frames = [("receive", json.dumps({"type": "connection_established", "user_id": "u1"})),
              ("send", json.dumps({"type": "user_message", "payload": {"content": "hi", "thread_id": "t1"}}))]
    msgs = [{"type": kind, "time": t, "opcode": 1, "data": data} for (kind, data), t in zip(frames, times, strict=True)]
    return {"log": {"version": "1.2", "creator": {"name": "WebInspector", "version": "537.36"},
                    "entries": [{**_WS_ENTRY, "_webSocketMessages": msgs}]}}


def test_har_message_times_written_as_strings_are_refused_as_a_jsonl_records_are(tmp_path):
    """A WebSocket message's `time` holding an epoch number written as a string ("1764637200.5") was read as no time:
    the run only warned of no first-event time. The rule is a JSON Lines record's `t`: a number (epoch seconds or
    milliseconds) or an ISO 8601 date and time; a number written as a string is no time. When none of the file's
    message times can be read: exit 2, one line naming the file, entry, message and field, as a JSON Lines file whose
    every `t` is such a string is refused naming its file, line and field."""
    har = tmp_path / "strings.har"
    har.write_text(json.dumps(_ws_har(["1764637200.0", "1764637200.01"])))
    proc = _check_cli(har)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"chatprobe: error: {har}: entry 0 message 1: field 'time': \"1764637200.0\" is no "
                                  "time, nor is the time of any of the 2 WebSocket messages that have one"), proc.stderr
    # entries out of order (read one by one in the order they started): the same, over the whole file
    doc = _ws_har(["1764637200.0", "1764637200.01"])
    earlier = {**doc["log"]["entries"][0], "startedDateTime": "2026-12-02T00:00:00.000Z"}
    doc["log"]["entries"].append(earlier)
    har.write_text(json.dumps(doc))
    proc = _check_cli(har)
    assert proc.returncode == 2 and proc.stderr.startswith(
        f"chatprobe: error: {har}: entry 1 message 1: field 'time': \"1764637200.0\" is no time, nor is the time of "
        "any of the 4 WebSocket messages"), proc.stdout[-2000:] + proc.stderr
    jsonl = tmp_path / "strings.jsonl"
    jsonl.write_text("".join(json.dumps({"t": t, "dir": "recv", "frame": "{}"}) + "\n"
                             for t in ("1764637200.0", "1764637200.01")))
    proc = _check_cli(jsonl)
    assert proc.returncode == 2 and proc.stderr.startswith(
        f"chatprobe: error: {jsonl}:1: field 't': \"1764637200.0\" is no time, nor is the t of any of the 2 records"), \
        proc.stderr


def test_one_har_message_time_written_as_a_string_among_numbers_is_that_messages_r12(tmp_path):
    """Among messages whose times are read, one whose time is a number written as a string is that message's R12
    (as a JSON Lines record's `t` so among others), never a frame judged as if it had no time."""
    har = tmp_path / "one.har"
    har.write_text(json.dumps(_ws_har(["1764637200.0", 1764637200.01])))
    [run] = check_files([har], NETRA, SC)
    reasons = [v.reason for r in run.results for v in r.violations if v.rule == "R12"]
    reasons += [v.reason for v in run.connection_violations if v.rule == "R12"]
    assert any("field 'time' must be a time" in r and "entry 0 message 1" in r for r in reasons), (reasons, run)


def test_har_message_times_in_iso_8601_are_read_as_startedDateTime_is(tmp_path):
    """An ISO 8601 message time is read (as an entry's startedDateTime, and a JSON Lines record's `t`): the same
    clean chat, with its first-event time, as with Chromium's epoch seconds."""
    t0 = 1764637200.0
    records = [send(t0), *netra_run("r1", t0)]
    iso_of = lambda t: datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")  # noqa: E731
    runs = []
    for name, when in [("iso", iso_of), ("num", float)]:
        msgs = [{"type": "send" if r["dir"] == "send" else "receive", "time": when(r["t"]), "opcode": 1,
                 "data": r["frame"] if isinstance(r["frame"], str) else json.dumps(r["frame"])} for r in records]
        har = tmp_path / f"{name}.har"
        har.write_text(json.dumps({"log": {"version": "1.2", "entries": [{**_WS_ENTRY, "_webSocketMessages": msgs}]}}))
        [run] = check_files([har], NETRA, SC)
        runs.append(run)
    iso, num = runs
    assert [(r.outcome, r.time_to_first_event) for r in iso.results] == [(r.outcome, r.time_to_first_event) for r in num.results]
    assert [r.outcome for r in iso.results] == [Outcome.PASSED] and iso.results[0].time_to_first_event is not None
    assert iso.warnings == num.warnings
