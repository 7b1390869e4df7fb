"""Profile grammar that the common agent streaming formats need (tests/integration/test_outside_dialects.py drives
them end to end): a field's names tried in the order written, a list index in a dotted path, a role that hangs on a
field's value (`where`), a non-JSON end-of-stream marker (`stream_end`) and sequence numbers counted from 0
(`seq_start`); each refused with file, line and field when misused."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from harness.checker import ChatTracker
from harness.cli import main
from harness.events import Event, Frame, FrameKind, Role, Rule
from harness.profiles import Decoder, Profile, load_profile
from harness.scenario import expectations_for

BASE = """\
name: lg
request: {thread_id: "{thread_id}", input: "{content}"}
fields:
  type: [event]
  run_id: [parent_ids.0, run_id]
  tool_call_id: [run_id]
roles:
  agent_started: [{type: on_chain_start, where: {parent_ids: []}}]
  agent_thinking: [on_chain_start]
  agent_completed: [{type: on_chain_end, where: {parent_ids: []}}]
  error_event: [{type: oops, when: run, where: {data.fatal: true}}]
unmapped: [on_chain_end, oops]
"""


def profile(text: str = BASE) -> Profile:
    import yaml
    return Profile.model_validate(yaml.safe_load(text))


def test_names_are_tried_in_the_order_written_and_a_digit_part_indexes_a_list():
    # docs/profiles.md: "for each canonical field, the wire names to try, in order". A dotted path written before a
    # plain name was tried after it: every nested LangGraph run read as a run of its own (R8 / R1 / R10).
    p = profile(BASE.split("roles:")[0] + "roles: {agent_started: [on_chain_start]}\n")
    nested = p.decode('{"event":"on_chain_start","run_id":"n1","parent_ids":["root","x"]}', 1.0)
    root = p.decode('{"event":"on_chain_start","run_id":"root","parent_ids":[]}', 1.0)
    assert isinstance(nested, Event) and isinstance(root, Event)
    assert (nested.run_id, root.run_id) == ("root", "root")
    # the table-driven lookup (client frames, Profile.field) agrees with the compiled decoder
    assert p.field({"parent_ids": ["root"], "run_id": "n1"}, "run_id") == "root"
    assert p.field({"parent_ids": {"0": "key"}, "run_id": "n1"}, "run_id") == "key"  # an object's key "0" still
    assert p.field({"parent_ids": ["only"], "run_id": "n1"}, "tool_call_id") == "n1"


def test_where_picks_a_role_by_a_fields_value_else_the_plain_mapping():
    p = profile()
    decode = lambda s: p.decode(s, 1.0)  # noqa: E731
    root, nested = decode('{"event":"on_chain_start","run_id":"r","parent_ids":[]}'), \
        decode('{"event":"on_chain_start","run_id":"n","parent_ids":["r"]}')
    end_root, end_nested = decode('{"event":"on_chain_end","run_id":"r","parent_ids":[]}'), \
        decode('{"event":"on_chain_end","run_id":"n","parent_ids":["r"]}')
    assert isinstance(root, Event) and root.role is Role.AGENT_STARTED
    assert isinstance(nested, Event) and nested.role is Role.AGENT_THINKING
    assert isinstance(end_root, Event) and end_root.role is Role.AGENT_COMPLETED
    assert isinstance(end_nested, Event) and end_nested.role is None  # unmapped: an event of the run, no role
    # `when: run` and `where` together; a boolean matches a boolean only (not 1)
    fatal = decode('{"event":"oops","run_id":"r","parent_ids":[],"data":{"fatal":true}}')
    runless = decode('{"event":"oops","parent_ids":[],"data":{"fatal":true}}')
    one = decode('{"event":"oops","run_id":"r","parent_ids":[],"data":{"fatal":1}}')
    assert isinstance(fatal, Event) and fatal.role is Role.ERROR_EVENT and fatal.terminal
    assert isinstance(runless, Event) and runless.role is None
    assert isinstance(one, Event) and one.role is None
    # a type with only `where` matches, none holding, and not unmapped: outside the dialect (R12), as any unknown type
    strict = profile(BASE.replace("unmapped: [on_chain_end, oops]", "unmapped: [on_chain_end]"))
    assert isinstance(bad := strict.decode('{"event":"oops","run_id":"r"}', 1.0), Frame) and \
        bad.kind is FrameKind.MALFORMED


def test_stream_end_marker_is_no_violation_and_json_stays_json():
    plain = load_profile("ag-ui")
    p = profile(BASE + 'stream_end: ["[DONE]"]\n')
    done = p.decode("[DONE]", 1.0)
    assert isinstance(done, Frame) and done.kind is FrameKind.STREAM_END and done.wire_type == "[DONE]"  # no welcome
    assert p.decode("[DONE] ", 1.0).kind is FrameKind.MALFORMED  # type: ignore[union-attr]  # the whole text only
    assert isinstance(m := plain.decode("[DONE]", 1.0), Frame) and m.kind is FrameKind.MALFORMED  # without the key
    assert Decoder(p).source.count("STREAM_END") == 1 and "STREAM_END" not in Decoder(plain).source


def _judge(seq_start: int, seqs: list[int]) -> list[str]:
    p = profile(BASE.replace("  type: [event]\n", "  type: [event]\n  seq: [sequence_number]\n")
                + f"seq_start: {seq_start}\n")
    tracker = ChatTracker("c1", expectations_for(p), 0.0)
    frames = ['{"event":"on_chain_start","run_id":"r","parent_ids":[],"sequence_number":%d}',
              '{"event":"on_chain_start","run_id":"n","parent_ids":["r"],"sequence_number":%d}',
              '{"event":"on_chain_end","run_id":"r","parent_ids":[],"sequence_number":%d}']
    for i, (frame, seq) in enumerate(zip(frames, seqs, strict=True)):
        ev = p.decode(frame % seq, 0.1 * (i + 1))
        assert isinstance(ev, Event)
        tracker.feed(ev)
    result = tracker.finish(1.0)
    return [f"{v.rule.value}: {v.reason}" for v in result.violations if v.rule is Rule.R7]


def test_seq_start_zero_counts_from_zero():
    assert _judge(0, [0, 1, 2]) == []
    assert _judge(1, [1, 2, 3]) == []
    assert _judge(1, [0, 1, 2]) == ["R7: seq 0 is not a positive sequence number"]
    assert _judge(0, [0, 2, 1]) == ["R7: seq 1 arrived after seq 2 (out of order)"]
    assert _judge(0, [1, 2, 3]) == ["R7: seq 0 never arrived (lost event)"]
    assert _judge(0, [-1, 0, 1]) == ["R7: seq -1 is below the dialect's first sequence number, 0"]


@pytest.mark.parametrize(("extra", "field", "says"), [
    ('stream_end: ["{\\"done\\": true}"]\n', "stream_end", "is JSON"),
    ("seq_start: 2\n", "seq_start", "0 or 1"),
    ("seq_start: true\n", "seq_start", "0 or 1"),  # pydantic's Literal took `true` for 1 and 0.0 for 0
    ("seq_start: 0.0\n", "seq_start", "0 or 1"),
])
def test_misused_keys_exit_2_naming_file_line_and_field(tmp_path: Path, capsys, extra, field, says):
    f = tmp_path / "p.yaml"
    f.write_text(BASE + extra)
    assert main(["run", "--target", "ws://127.0.0.1:9/ws", "--profile", str(f), "basic"]) == 2
    err = capsys.readouterr().err
    assert f"p.yaml:{BASE.count(chr(10)) + 1}: field '{field}'" in err and says in err, err


@pytest.mark.parametrize(("match", "field", "says"), [
    ("{type: x, where: {}}", "roles.error_event.0.where", "at least one path"),
    ("{type: x, where: 5}", "roles.error_event.0.where", "valid dictionary"),
    # a match's mistake is named by its key; it was "roles.error_event.0.str: Input should be a valid string"
    ("{type: x, when: bad}", "roles.error_event.0.when", "'always' or 'run'"),
    ("5", "roles.error_event.0", "valid string"),
])
def test_a_bad_role_match_names_its_own_key(tmp_path: Path, capsys, match, field, says):
    f = tmp_path / "p.yaml"
    f.write_text(textwrap.dedent(f"""\
        name: x
        request: {{a: "{{content}}"}}
        roles:
          agent_started: [s]
          error_event: [{match}]
        """))
    assert main(["run", "--target", "ws://127.0.0.1:9/ws", "--profile", str(f), "basic"]) == 2
    err = capsys.readouterr().err
    assert f"p.yaml:5: field '{field}'" in err and says in err, err


# -- found by attacking the grammar (a hostile profile, a hostile server) --------------------------------------------

def test_a_path_part_indexes_a_list_only_with_ascii_digits():
    # "²" and "١" are str.isdigit() but no index (int("²") raises): the decoder's generation raised ValueError at
    # `chatprobe run` (a traceback, exit 1), and a `where` path raised it per frame. They are an object's keys.
    p = profile(BASE.replace("run_id: [parent_ids.0, run_id]", "run_id: [p.², run_id]")
                .replace("where: {data.fatal: true}", "where: {p.١: 1}"))
    on_list = p.decode('{"event":"oops","run_id":"r","p":[1,2,3]}', 1.0)
    on_key = p.decode('{"event":"oops","run_id":"r","p":{"²":"k","١":1}}', 1.0)
    assert isinstance(on_list, Event) and (on_list.run_id, on_list.role) == ("r", None)
    assert isinstance(on_key, Event) and (on_key.run_id, on_key.role) == ("k", Role.ERROR_EVENT)
    assert p.field({"p": ["x"], "run_id": "r"}, "run_id") == "r"  # the table-driven lookup alike


@pytest.mark.parametrize(("value", "says"), [
    ("2024-01-01", "a date is no JSON value"),  # YAML reads a date: TypeError in json.dumps, a traceback
    ("!!binary aGk=", "a bytes is no JSON value"),
    ("!!set {q}", "a set is no JSON value"),
    (".nan", "nan is no JSON value"),  # equal to nothing, itself included: a match that never held, silently
    ("-.inf", "-inf is no JSON value"),
    ("{1: x}", "key is a string"),
])
def test_a_where_value_no_json_frame_can_hold_exits_2(tmp_path: Path, capsys, value, says):
    f = tmp_path / "p.yaml"
    f.write_text(BASE.replace("where: {data.fatal: true}", f"where: {{data.fatal: {value}}}"))
    assert main(["run", "--target", "ws://127.0.0.1:9/ws", "--profile", str(f), "basic"]) == 2
    err = capsys.readouterr().err
    assert "p.yaml:11: field 'roles.error_event.0.where'" in err and says in err and len(err.splitlines()) == 1, err


def test_where_matches_a_boolean_only_with_a_boolean_at_any_depth():
    # docs/profiles.md: "JSON equality; a boolean matches only a boolean" — Python's == took [true] for [1].
    p = profile(BASE.replace("where: {data.fatal: true}", "where: {data: {fatal: [1, 2.0]}}"))
    decode = lambda s: p.decode('{"event":"oops","run_id":"r","data":' + s + "}", 1.0)  # noqa: E731
    roles = [getattr(decode(s), "role", "?") for s in
             ('{"fatal":[1,2]}', '{"fatal":[1.0,2]}', '{"fatal":[true,2]}', '{"fatal":[1,2],"x":0}', '{"fatal":[1]}')]
    assert roles == [Role.ERROR_EVENT, Role.ERROR_EVENT, None, None, None]


@pytest.mark.parametrize("entries", [
    # one wire type, two entries whose `where` hold for the same frames (JSON equality): the second never applies
    "[{type: x, where: {a: 1}}, {type: x, where: {a: 1.0}}]",
    "[{type: x, where: {a: [1, {b: 2}]}}, {type: x, where: {a: [1.0, {b: 2.0}]}}]",
    "[{type: x, where: {a: 1, b: c}}, {type: x, where: {b: c, a: 1.0}}]",  # the paths in another order
])
def test_two_where_entries_that_can_never_match_differently_exit_2(tmp_path: Path, capsys, entries):
    # Both were taken: the second entry, which can never apply, looked like a mapping of its own.
    f = tmp_path / "p.yaml"
    f.write_text(BASE.replace("  error_event: [{type: oops, when: run, where: {data.fatal: true}}]",
                              f"  error_event: {entries}"))
    assert main(["run", "--target", "ws://127.0.0.1:9/ws", "--profile", str(f), "basic"]) == 2
    err = capsys.readouterr().err
    assert "p.yaml:8: field 'roles'" in err and "twice by one condition" in err and "1.0" in err, err
    assert len(err.splitlines()) == 1, err


def test_where_entries_told_apart_by_a_boolean_or_another_role_are_kept(tmp_path: Path):
    # `true` is no 1 (a boolean matches only a boolean): two conditions, each applies to frames of its own.
    p = profile(BASE.replace("  error_event: [{type: oops, when: run, where: {data.fatal: true}}]",
                             "  error_event: [{type: x, where: {a: true}}]\n"
                             "  partial_result: [{type: x, where: {a: 1}}]"))
    roles = [getattr(p.decode('{"event":"x","run_id":"r","a":' + a + '}', 1.0), "role", "?") for a in ("true", "1.0")]
    assert roles == [Role.ERROR_EVENT, Role.PARTIAL_RESULT]


@pytest.mark.parametrize(("edit", "field", "says"), [
    (("run_id: [parent_ids.0, run_id]", "run_id: [parent_ids..0, run_id]"), "fields.run_id", "an empty part"),
    (("run_id: [parent_ids.0, run_id]", "run_id: [.parent_ids, run_id]"), "fields.run_id", "an empty part"),
    (("run_id: [parent_ids.0, run_id]", "run_id: [parent_ids., run_id]"), "fields.run_id", "an empty part"),
    # parent_ids.01 read item 1, parent_ids.00 item 0: only the canonical integer indexes a list
    (("run_id: [parent_ids.0, run_id]", "run_id: [parent_ids.01, run_id]"), "fields.run_id", "leading zero (write 1"),
    (("where: {data.fatal: true}", "where: {data..fatal: true}"), "roles.error_event.0.where", "an empty part"),
    (("where: {data.fatal: true}", "where: {parent_ids.00: x}"), "roles.error_event.0.where", "leading zero"),
    (("  tool_call_id: [run_id]", "  tool_call_id: [run_id]\n  extra: {k: [a.]}"), "fields.extra", "an empty part"),
    (("unmapped:", "lookup: ['', body.]\nunmapped:"), "lookup", "an empty part"),
])
def test_a_field_path_that_names_nothing_exits_2_naming_the_field(tmp_path: Path, capsys, edit, field, says):
    f = tmp_path / "p.yaml"
    text = BASE.replace(*edit)
    assert text != BASE
    f.write_text(text)
    assert main(["run", "--target", "ws://127.0.0.1:9/ws", "--profile", str(f), "basic"]) == 2
    err = capsys.readouterr().err
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln not in BASE.splitlines())
    assert f"p.yaml:{line}: field '{field}" in err and says in err and len(err.splitlines()) == 1, err


def test_a_span_key_path_that_names_nothing_exits_2(tmp_path: Path, capsys):
    f = tmp_path / "p.yaml"
    f.write_text(BASE + "spans: [{name: s, open: [on_chain_start], close: [on_chain_end], key: data..id}]\n")
    assert main(["run", "--target", "ws://127.0.0.1:9/ws", "--profile", str(f), "basic"]) == 2
    err = capsys.readouterr().err
    assert f"p.yaml:{BASE.count(chr(10)) + 1}: field 'spans.0.key'" in err and "an empty part" in err, err


def test_a_where_path_is_read_from_the_root_even_without_a_dot():
    # docs/profiles.md, `where`: a path from the frame's root; a plain name is the root's too, unlike a plain name in
    # `fields`, which each `lookup` container is searched for. A field under `data` is named `data.kind`.
    p = profile(BASE.replace("  agent_thinking: [on_chain_start]\n",
                             "  agent_thinking: [on_chain_start]\n"
                             "  tool_executing: [{type: step, where: {kind: tool}}]\n"
                             "  tool_completed: [{type: step, where: {data.kind: done}}]\n")
                + 'lookup: ["", data]\nunknown_types: ignore\n')
    role = lambda frame: getattr(p.decode_obj(frame, 0.0), "role", None)  # noqa: E731
    assert role({"event": "step", "kind": "tool", "run_id": "r"}) is Role.TOOL_EXECUTING
    assert role({"event": "step", "data": {"kind": "done", "run_id": "r"}}) is Role.TOOL_COMPLETED
    assert role({"event": "step", "data": {"kind": "tool", "run_id": "r"}}) is None  # `kind` is the root's only


# -- what vendors' formats needed (tests/integration/test_vendor_streams.py drives them end to end) -----------------

@pytest.mark.parametrize(("spans", "says"), [
    # a misspelt close: every span stayed open at every terminal event, an R5 on every good run
    ("[{name: s, open: [on_chain_start], close: [on_chain_ended], key: run_id}]", "'on_chain_ended' is no role"),
    ("[{name: s, open: [tool_execting], close: [on_chain_end], key: run_id}]", "'tool_execting' is no role"),
])
def test_a_span_naming_a_type_no_list_has_exits_2(tmp_path: Path, capsys, spans, says):
    f = tmp_path / "p.yaml"
    f.write_text(BASE + f"spans: {spans}\n")
    assert main(["run", "--target", "ws://127.0.0.1:9/ws", "--profile", str(f), "basic"]) == 2
    err = capsys.readouterr().err
    assert f"p.yaml:{BASE.count(chr(10)) + 1}: field 'spans'" in err and says in err and len(err.splitlines()) == 1, err


def test_a_span_may_name_a_role_a_mapped_type_or_an_unmapped_one():
    p = profile(BASE + "spans: [{name: s, open: [agent_thinking, oops], close: [on_chain_end], key: run_id}]\n")
    assert [s.name for s in p.spans] == ["s"]


def test_type_keys_give_a_frame_without_a_type_the_type_of_a_key_it_has():
    # OpenAI Chat Completions: every chunk's type is its `object`, but the API's mid-stream error is `{"error": {…}}`,
    # with no `object`: it was a malformed frame (R12, "JSON object without a 'type'"), never the error it is (R13).
    p = profile(BASE.replace("unmapped: [on_chain_end, oops]", "unmapped: [on_chain_end, oops, failure]\n"
                                                               "type_keys: [failure, error]")
                .replace("error_event: [{type: oops, when: run, where: {data.fatal: true}}]",
                         "error_event: [error, {type: oops, when: run, where: {data.fatal: true}}]"))
    ev = p.decode(json.dumps({"error": {"message": "overloaded", "type": "server_error", "code": None}}), 0.0)
    assert isinstance(ev, Event) and ev.role is Role.ERROR_EVENT and ev.wire_type == "error", ev
    # a type of its own comes first; the first key present names it (failure, unmapped here: an event of no role)
    assert p.decode(json.dumps({"event": "on_chain_start", "error": 1, "parent_ids": []}), 0.0).role is \
        Role.AGENT_STARTED
    odd = p.decode(json.dumps({"error": {}, "failure": "x", "run_id": "r"}), 0.0)
    assert isinstance(odd, Event) and odd.role is None and odd.wire_type == "failure", odd
    for frame in ({"error": None}, {"event": ""}, {"event": 5, "error": {}}, {}):
        got = p.decode(json.dumps(frame), 0.0)
        assert isinstance(got, Frame) and got.detail == "JSON object without a 'type'", (frame, got)


def test_a_dotted_type_key_names_a_key_below_the_root_and_is_the_type_as_written():
    # A2A 1.0's stream: each event is a JSON-RPC response whose `result` holds one key, `task`, `statusUpdate`,
    # `artifactUpdate` or `message` (protobuf's oneof as JSON), and nothing names its type; with no `fields.type` at all.
    p = profile(BASE.replace("  type: [event]\n", "  type: []\n")
                .replace("agent_started: [{type: on_chain_start, where: {parent_ids: []}}]",
                         "agent_started: [result.task]")
                .replace("agent_thinking: [on_chain_start]", "agent_thinking: [result.statusUpdate]")
                .replace("unmapped: [on_chain_end, oops]", "unmapped: [on_chain_end, oops]\n"
                         "type_keys: [result.task, result.statusUpdate]"))
    task = p.decode(json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"task": {"id": "t1"}}, "run_id": "t1"}), 0.0)
    assert isinstance(task, Event) and task.role is Role.AGENT_STARTED and task.wire_type == "result.task", task
    update = p.decode(json.dumps({"result": {"statusUpdate": {}, "task": None}, "run_id": "t1"}), 0.0)
    assert isinstance(update, Event) and update.wire_type == "result.statusUpdate", update  # a null is no key had
    for frame in ({"result": {"statusUpdate": None}}, {"result": "task"}, {"result.task": {}}, {"result": [{}]}, {}):
        got = p.decode(json.dumps(frame), 0.0)
        assert isinstance(got, Frame) and got.detail == "JSON object without a 'type'", (frame, got)


def test_an_unmapped_pattern_names_every_type_with_its_prefix():
    # The Vercel AI SDK's custom data parts are `data-<name>` (`data-weather`, `data-notification`): a server's own
    # names, each an R12 ("not in profile") unless listed one by one.
    p = profile(BASE.replace("unmapped: [on_chain_end, oops]", "unmapped: [on_chain_end, oops, data-*]"))
    for t in ("data-weather", "data-"):
        ev = p.decode(json.dumps({"event": t, "run_id": "r"}), 0.0)
        assert isinstance(ev, Event) and ev.role is None and ev.wire_type == t, ev
    other = p.decode(json.dumps({"event": "datum", "run_id": "r"}), 0.0)
    assert isinstance(other, Frame) and other.kind is FrameKind.MALFORMED, other


@pytest.mark.parametrize(("extra", "field", "says"), [
    ("type_keys: [error..type]\n", "type_keys", "an empty part"),
    ("type_keys: [result.eror]\n", "type_keys", "'result.eror' is the type of no list"),
    ("type_keys: ['']\n", "type_keys", "not empty"),
    ("type_keys: [eror]\n", "type_keys", "'eror' is the type of no list"),  # every such frame an R12
])
def test_a_type_key_that_is_no_key_of_the_root_exits_2(tmp_path: Path, capsys, extra, field, says):
    f = tmp_path / "p.yaml"
    f.write_text(BASE + extra)
    assert main(["run", "--target", "ws://127.0.0.1:9/ws", "--profile", str(f), "basic"]) == 2
    err = capsys.readouterr().err
    assert f"p.yaml:{BASE.count(chr(10)) + 1}: field '{field}'" in err and says in err, err


def test_a_profile_naming_no_type_at_all_exits_2(tmp_path: Path, capsys):
    f = tmp_path / "p.yaml"  # no `fields.type` and no `type_keys`: no frame would ever have a type
    f.write_text(BASE.replace("  type: [event]\n", "  type: []\n"))
    assert main(["run", "--target", "ws://127.0.0.1:9/ws", "--profile", str(f), "basic"]) == 2
    err = capsys.readouterr().err
    # Named where the profile empties it (the line of `type: []`), not as a `type_keys` it never wrote
    line = BASE.splitlines().index("  type: [event]") + 1
    assert f"p.yaml:{line}: field 'fields.type'" in err and "no name for the frame's type" in err, err


@pytest.mark.parametrize("pattern", ["'*'", "'data-*-x'", "'*-delta'"])
def test_an_unmapped_pattern_is_a_prefix_and_a_star_at_its_end(tmp_path: Path, capsys, pattern):
    f = tmp_path / "p.yaml"
    f.write_text(BASE.replace("unmapped: [on_chain_end, oops]", f"unmapped: [on_chain_end, oops, {pattern}]"))
    assert main(["run", "--target", "ws://127.0.0.1:9/ws", "--profile", str(f), "basic"]) == 2
    err = capsys.readouterr().err
    assert f"p.yaml:{BASE.count(chr(10))}: field 'unmapped'" in err and "a prefix" in err, err


def test_a_control_entry_with_where_takes_a_types_frames_out_of_every_run():
    # OpenAI Chat Completions with `stream_options: {include_usage: true}`: after the finish chunk (the terminal event)
    # comes one more chat.completion.chunk, with no choices and the completion's id: an event after the terminal
    # one (R4) on every good stream, unless it can be said to belong to no run.
    p = profile(BASE.replace("unmapped:", "control: [hello, {type: on_chain_end, where: {usage.total: 3}}]\nunmapped:"))
    usage = p.decode(json.dumps({"event": "on_chain_end", "run_id": "n", "parent_ids": ["r"], "usage": {"total": 3}}),
                     0)
    assert isinstance(usage, Frame) and usage.kind is FrameKind.CONTROL and usage.wire_type == "on_chain_end", usage
    # the roles' `where` entries of the type come first, then the control's, then its plain mapping (unmapped here)
    end = p.decode(json.dumps({"event": "on_chain_end", "run_id": "r", "parent_ids": [], "usage": {"total": 3}}), 0)
    assert isinstance(end, Event) and end.role is Role.AGENT_COMPLETED, end
    node = p.decode(json.dumps({"event": "on_chain_end", "run_id": "n", "parent_ids": ["r"]}), 0)
    assert isinstance(node, Event) and node.role is None and node.run_id == "r", node
    hello = p.decode(json.dumps({"event": "hello"}), 0)
    assert isinstance(hello, Frame) and hello.kind is FrameKind.CONTROL, hello


@pytest.mark.parametrize(("entry", "field", "says"), [
    ("{type: on_chain_start, where: {parent_ids: []}}", "control", "never applies"),  # agent_started's own condition
    ("{type: x, where: {}}", "control.0.where", "at least one path"),
    ("{type: x, when: run, where: {a: 1}}", "control.0.when", "Extra inputs"),
    ("{type: x}", "control.0.where", "Field required"),
])
def test_a_control_match_that_never_applies_or_is_malformed_exits_2(tmp_path: Path, capsys, entry, field, says):
    f = tmp_path / "p.yaml"
    f.write_text(BASE + f"control: [{entry}]\n")
    assert main(["run", "--target", "ws://127.0.0.1:9/ws", "--profile", str(f), "basic"]) == 2
    err = capsys.readouterr().err
    assert f"p.yaml:{BASE.count(chr(10)) + 1}: field '{field}'" in err and says in err, err


def _rules_after(p: Profile, frames: list[dict]) -> list[str]:
    tracker = ChatTracker("c1", expectations_for(p), 0.0)
    for i, frame in enumerate(frames):
        ev = p.decode(json.dumps(frame), 0.01 * (i + 1))
        assert isinstance(ev, Event), ev
        tracker.feed(ev)
    return [f"{v.rule.value}: {v.reason}" for v in tracker.finish(1.0).violations if v.rule is not Rule.R2]


def test_after_error_types_close_a_failed_run_without_r3_or_r4():
    # The Vercel AI SDK after a provider's error part: `error`, then `finish-step` and `finish` (finishReason "error"):
    # the stream in its own order, yet R4 and R3 ("second terminal event") beside the R13 that is the failure.
    p = profile(BASE.replace("unmapped: [on_chain_end, oops]", "unmapped: [on_chain_end, oops, step_end]")
                .replace("error_event: [{type: oops, when: run, where: {data.fatal: true}}]", "error_event: [error]")
                + "after_error: [step_end, on_chain_end]\n")
    start = {"event": "on_chain_start", "run_id": "r", "parent_ids": []}
    err = {"event": "error", "run_id": "r", "message": "Overloaded"}
    step_end = {"event": "step_end", "run_id": "r"}
    end = {"event": "on_chain_end", "run_id": "r", "parent_ids": []}
    assert _rules_after(p, [start, err, step_end, end]) == ["R13: unexpected fatal error event (error): Overloaded"]
    # after a completed run they are judged as ever; so is a type not listed after an error
    assert [r[:3] for r in _rules_after(p, [start, end, step_end, end])] == ["R4:", "R3:"]
    assert [r[:3] for r in _rules_after(p, [start, err, {"event": "on_chain_start", "run_id": "r",
                                                          "parent_ids": ["r"]}])] == ["R13", "R4:"]
    without = profile(BASE.replace("unmapped: [on_chain_end, oops]", "unmapped: [on_chain_end, oops, step_end]")
                      .replace("error_event: [{type: oops, when: run, where: {data.fatal: true}}]",
                               "error_event: [error]"))
    assert [r[:3] for r in _rules_after(without, [start, err, step_end, end])] == ["R13", "R4:", "R3:"]


def test_an_after_error_type_no_list_has_exits_2(tmp_path: Path, capsys):
    f = tmp_path / "p.yaml"
    f.write_text(BASE + "after_error: [on_chain_end, finsh]\n")
    assert main(["run", "--target", "ws://127.0.0.1:9/ws", "--profile", str(f), "basic"]) == 2
    err = capsys.readouterr().err
    assert f"p.yaml:{BASE.count(chr(10)) + 1}: field 'after_error'" in err and "'finsh' is no wire type" in err, err


@pytest.mark.parametrize(("extra", "field", "says"), [
    # a frame told a control frame (or a ping) before any role: every run's terminal event gone, every chat incomplete
    ("control: [hello, on_chain_end]\n", "control", "'on_chain_end' is mapped to agent_completed"),
    ("ping: {types: [on_chain_start], reply: null}\n", "ping", "'on_chain_start' is a ping and mapped to agent_started"),
    ("control: [hello]\nping: {types: [hello], reply: null}\n", "ping", "'hello' is a ping and in control"),
])
def test_a_type_mapped_to_a_role_and_told_a_control_frame_or_ping_exits_2(tmp_path: Path, capsys, extra, field, says):
    f = tmp_path / "p.yaml"
    f.write_text(BASE + extra)
    assert main(["run", "--target", "ws://127.0.0.1:9/ws", "--profile", str(f), "basic"]) == 2
    err = capsys.readouterr().err
    assert f"p.yaml:{len((BASE + extra).splitlines())}: field '{field}'" in err and says in err, err
