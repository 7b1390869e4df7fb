"""A made-up dialect described by a user's profile file, driven end to end through `chatprobe run`; bad files exit 2."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from harness.cli import main

from .servers import InThread, WsServer

# Types begin/think/call/called/chunk/done/oops, every field under `body`, the run id named `rid`, a `hello` greeting.
ACME = """\
name: acme
description: the ACME assistant's own wire format
transport: websocket
path: /chat
client_run_id: true
request:
  op: ask
  body:
    text: "{content}"
    conv: "{thread_id}"
    rid: "{run_id}"
lookup: ["", body]
fields:
  type: [kind]
  run_id: [rid]
  thread_id: [conv]
  tool_call_id: [call_id]
  tool_name: [tool]
  recoverable: [retry]
roles:
  agent_started: [begin]
  agent_thinking: [think]
  tool_executing: [call]
  tool_completed: [called]
  partial_result: [chunk]
  agent_completed: [done]
  error_event: [oops]
control: [hello]
ping: {types: [], reply: null}
spans:
  - name: tool call
    open: [call]
    close: [called]
    key: tool_call_id
required: [agent_started, agent_thinking, tool_executing, tool_completed, agent_completed]
"""

SCENARIO = """\
name: acme-basic
users: 2
chats_per_user: 2
message: "What is 6 * 7?"
expect:
  streaming: true
  deadline: 10s
"""


def acme_run(request: dict, *, fault: str | None = None):
    body = request["body"]
    ids = {"rid": body["rid"], "conv": body["conv"]}

    def frame(kind: str, **fields):
        return {"kind": kind, "body": {**ids, **fields}}

    yield frame("begin")
    yield frame("think", text="multiply")
    if fault != "unpaired":
        yield frame("call", call_id="k1", tool="calc")
    yield frame("called", call_id="k1", tool="calc", out=42)
    yield frame("chunk", text="42")
    yield frame("done")


def run_cli(tmp_path: Path, url: str, profile_text: str = ACME) -> tuple[int, dict]:
    profile = tmp_path / "acme.yaml"
    profile.write_text(profile_text)
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "out.json"
    code = main(["run", "--target", url, "--profile", str(profile), str(scenario), "--json", str(out), "-q"])
    return code, json.loads(out.read_text()) if out.exists() else {}


def test_custom_dialect_passes_end_to_end(tmp_path):
    with InThread(WsServer(acme_run, welcome={"kind": "hello"})) as server:
        code, doc = run_cli(tmp_path, server.url)
    assert code == 0, doc
    (scenario,) = doc["scenarios"]
    assert [c["outcome"] for c in scenario["chats"]] == ["passed"] * 4
    assert [e["wire_type"] for e in scenario["chats"][0]["events"]] == ["begin", "think", "call", "called", "chunk", "done"]
    assert all(r["op"] == "ask" and r["body"]["text"] == "What is 6 * 7?" and r["body"]["rid"] for r in server.requests)


def test_custom_dialect_fault_fails_with_its_rule(tmp_path):
    with InThread(WsServer(lambda r: acme_run(r, fault="unpaired"), welcome={"kind": "hello"})) as server:
        code, doc = run_cli(tmp_path, server.url)
    assert code == 1
    chats = doc["scenarios"][0]["chats"]
    assert {c["outcome"] for c in chats} == {"failed"}
    assert chats[0]["violations"][0]["rule"] == "R5"
    assert "closes tool call 'k1', which is not open" in chats[0]["violations"][0]["reason"]


def test_welcome_is_awaited_unless_the_profile_says_none(tmp_path):
    # No hello from this server: with `welcome: false` the client does not wait for one.
    with InThread(WsServer(acme_run)) as server:
        code, doc = run_cli(tmp_path, server.url, ACME.replace("client_run_id: true", "client_run_id: true\nwelcome: false"))
    assert code == 0, doc


STREAM_END_SCENARIO = """\
name: s
users: 1
chats_per_user: 1
message: "What is 6 * 7?"
connect_timeout: 0.5s
expect: {streaming: true, deadline: 3s, settle: 0.05s}
"""


def _done_first(tmp_path: Path, welcome: list, record: Path | None = None) -> tuple[int, list[tuple]]:
    """`chatprobe run` of one chat against a server whose new connection opens with `welcome`'s frames, the profile
    ending streams with `[DONE]`: the exit code and each chat's (outcome, error kind, rules)."""
    profile, scenario, out = tmp_path / "acme.yaml", tmp_path / "s.yaml", tmp_path / "out.json"
    profile.write_text(ACME + 'stream_end: ["[DONE]"]\n')
    scenario.write_text(STREAM_END_SCENARIO)
    with InThread(WsServer(acme_run, welcome=welcome)) as server:
        code = main(["run", "--target", server.url, "--profile", str(profile), str(scenario), "--json", str(out), "-q",
                     *(["--record", str(record)] if record is not None else [])])
    return code, _outcomes(out)


def _outcomes(out: Path) -> list[tuple]:
    [sc] = json.loads(out.read_text())["scenarios"]
    return [(c["outcome"], c.get("error_kind"), sorted(v["rule"] for v in c["violations"])) for c in sc["chats"]]


def test_a_stream_end_marker_is_no_welcome(tmp_path):
    # docs/profiles.md, `welcome`: the server greets a new connection with a control frame or an event. A `[DONE]`
    # (`stream_end`) says a stream is over: it greets nothing. It was taken as the welcome, and the chat was sent to
    # a server that never said hello (here: then judged on its answer, passed). Now: no welcome within
    # connect_timeout, the connection's protocol_error (outcome `error`), as for a server that sends nothing.
    code, chats = _done_first(tmp_path, ["[DONE]"])
    assert chats == [("error", "protocol_error", [])] and code == 1, chats
    # the welcome after it is still awaited and taken: the marker before it changes nothing
    code, chats = _done_first(tmp_path, ["[DONE]", {"kind": "hello"}])
    assert chats == [("passed", None, [])] and code == 0, chats


def test_a_recorded_stream_end_before_any_welcome_is_judged_offline_as_live(tmp_path):
    # `chatprobe check` of what `--record` kept: the same connection that never became usable, the same `error`.
    rec = tmp_path / "rec"
    code, live = _done_first(tmp_path, ["[DONE]"], record=rec)
    offline = tmp_path / "offline.json"
    assert main(["check", str(rec), "--profile", str(tmp_path / "acme.yaml"), "--scenario", str(tmp_path / "s.yaml"),
                 "--json", str(offline), "-q"]) == code
    assert _outcomes(offline) == live == [("error", "protocol_error", [])]


# -- bad profile files: exit 2, a message that names the file, the line and the field --

@pytest.mark.parametrize("edit,line,field,words", [
    (("client_run_id: true", "client_run_id: true\nwelcom: false"), 6, "welcom", "Extra inputs are not permitted"),
    (("roles:", "rolez:"), 20, "rolez", "(did you mean 'roles'?)"),  # not "Field required" for the key meant
    (("  agent_thinking: [think]", "  agent_thinkin: [think]"), 22, "roles.agent_thinkin.[key]", "'agent_thinking'"),
    (("  partial_result: [chunk]", "  partial_result: [chunk, think]"), 21, "roles",
     "wire type 'think' is mapped to both agent_thinking and partial_result"),
    (("transport: websocket", "transport: carrier-pigeon"), 3, "transport", "expected websocket, sse"),
    (("transport: websocket", "transport: [sse, sse]"), 3, "transport", "without repeats"),
    (("    key: tool_call_id", "    key: [tool_call_id]"), 34, "spans.0.key", "valid string"),
    (("    key: tool_call_id\n", "    key: tool_call_id\n  - {name: again, open: [called], close: [done], key: rid}\n"),
     31, "spans", "'called' belongs to more than one span"),
    (("lookup: [\"\", body]", "lookup: []"), 12, "lookup", "at least one container"),
])
def test_bad_profile_file_exits_2_naming_file_line_and_field(tmp_path, capsys, edit, line, field, words):
    old, new = edit
    assert old in ACME
    code, _ = run_cli(tmp_path, "ws://127.0.0.1:9/chat", ACME.replace(old, new, 1))
    assert code == 2
    err = capsys.readouterr().err
    assert f"acme.yaml:{line}: field '{field}'" in err, err
    assert words in err, err


def test_profile_that_is_not_yaml_exits_2(tmp_path, capsys):
    code, _ = run_cli(tmp_path, "ws://127.0.0.1:9/chat", "name: acme\nroles: [unclosed\n")
    assert code == 2
    assert "acme.yaml:3: field 'roles': not valid YAML" in capsys.readouterr().err


def test_target_scheme_the_profile_does_not_speak_exits_2(tmp_path, capsys):
    code, _ = run_cli(tmp_path, "http://127.0.0.1:9/chat")
    assert code == 2
    assert "http:// means sse, but profile 'acme' is spoken over websocket only" in capsys.readouterr().err


def test_builtin_agui_accepts_both_schemes_and_netra_only_websocket(tmp_path, capsys):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(textwrap.dedent(SCENARIO))
    assert main(["run", "--target", "http://127.0.0.1:9/", "--profile", "netra", str(scenario), "-q"]) == 2
    assert "spoken over websocket only" in capsys.readouterr().err
    # ag-ui over either: unreachable (exit 3), not a usage error.
    for url in ("http://127.0.0.1:9/agent", "ws://127.0.0.1:9/agent"):
        assert main(["run", "--target", url, "--profile", "ag-ui", str(scenario), "-q"]) == 3


# -- every field a rule reads is the profile's: a user id named `uid` under `meta` still catches cross-talk (R8) --

META_UID = (ACME.replace("fields:\n", "fields:\n  user_id: [meta.uid]\n")
            .replace("control: [hello]", "control: [hello]\nevents_name_run: true"))


def acme_run_with_user(request: dict, *, intruder: bool):
    """acme's run, every event naming its user under meta.uid; with `intruder`, one event of another user's run."""
    for frame in acme_run(request):
        frame["meta"] = {"uid": "alice"}
        yield frame
        if intruder and frame["kind"] == "think":
            yield {"kind": "chunk", "meta": {"uid": "mallory"}, "body": {"rid": "r-other", "conv": "c-other", "text": "hi"}}


@pytest.mark.parametrize("intruder", [False, True])
def test_cross_talk_is_caught_with_the_profiles_user_field(tmp_path, intruder):
    server = WsServer(lambda r: acme_run_with_user(r, intruder=intruder), welcome={"kind": "hello", "meta": {"uid": "alice"}})
    with InThread(server) as s:
        code, doc = run_cli(tmp_path, s.url, META_UID)
    chats = doc["scenarios"][0]["chats"]
    if not intruder:
        assert code == 0, doc
        return
    assert code == 1
    assert all(any(v["rule"] == "R8" and "another user" in v["reason"] for v in c["violations"]) for c in chats)


def test_an_event_naming_no_run_is_cross_talk_where_the_dialect_names_runs(tmp_path):
    def script(request):
        for frame in acme_run(request):
            yield frame
            if frame["kind"] == "begin":
                yield {"kind": "chunk", "body": {"text": "whose is this?"}}  # no rid, no conv

    with InThread(WsServer(script, welcome={"kind": "hello"})) as s:
        code, doc = run_cli(tmp_path, s.url, META_UID)
    assert code == 1
    chats = doc["scenarios"][0]["chats"]
    assert all(any(v["rule"] == "R8" and "no run" in v["reason"] for v in c["violations"]) for c in chats)


def test_a_dialect_of_your_own_carries_the_builtin_basic_and_probe_scenarios(tmp_path):
    # docs/profiles.md's first check of a new profile, `chatprobe run --profile acme.yaml basic`, was exit 2 ("a acme
    # server cannot carry it"), and the default suite against it an empty table and exit 1.
    profile = tmp_path / "acme.yaml"
    profile.write_text(ACME)
    out = tmp_path / "out.json"
    with InThread(WsServer(acme_run, welcome={"kind": "hello"})) as server:
        code = main(["run", "--target", server.url, "--profile", str(profile), "basic", "probe", "--json", str(out),
                     "-q"])
    assert code == 0
    doc = json.loads(out.read_text())
    assert [s["scenario"] for s in doc["scenarios"]] == ["basic", "probe"]
    assert all(c["outcome"] == "passed" for s in doc["scenarios"] for c in s["chats"])


class _InfoFirst(WsServer):
    """A netra server that sends a frame of its own (`server_info`, not netra's) ahead of its welcome."""

    async def _handler(self, ws):  # type: ignore[no-untyped-def]
        await ws.send(json.dumps({"type": "server_info", "version": "2.3"}))
        await super()._handler(ws)


def netra_run(request: dict):
    p = request["payload"]
    ids = {"run_id": "r-1", "thread_id": p["thread_id"]}
    for seq, (kind, extra) in enumerate([("agent_started", {"message_id": p["message_id"]}), ("agent_thinking", {}),
                                         ("tool_executing", {"tool_call_id": "c1", "tool_name": "calc"}),
                                         ("tool_completed", {"tool_call_id": "c1", "tool_name": "calc"}),
                                         ("partial_result", {"content": "42"}), ("agent_completed", {})], 1):
        yield {"type": kind, **ids, "seq": seq, "payload": extra}


def test_a_frame_outside_the_dialect_before_the_first_chat_fails_that_chat(tmp_path):
    # Before any chat the R12 was dropped, so the same server passed or failed by whether its frame beat the message.
    out = tmp_path / "out.json"
    welcome = {"type": "connection_established", "data": {"user_id": "u1"}}
    with InThread(_InfoFirst(netra_run, welcome=welcome)) as server:
        code = main(["run", "--target", server.url, "basic", "--json", str(out), "-q"])
    (chat,) = json.loads(out.read_text())["scenarios"][0]["chats"]
    assert code == 1 and chat["outcome"] == "failed", chat
    assert [v["rule"] for v in chat["violations"]] == ["R12"] and "'server_info'" in chat["violations"][0]["reason"]


def test_a_run_started_for_a_send_raw_probe_says_so_in_its_cross_talk(tmp_path):
    # The `errors` scenario's empty user_message, taken by a server as a chat: 8 "cross-talk" violations with
    # nothing to say that the client's own probe had started that run.
    def run_anyway(request: dict):
        for seq, kind in enumerate(["agent_started", "agent_thinking", "agent_completed"], 1):
            yield {"type": kind, "run_id": "r-probe", "thread_id": "t-x", "seq": seq, "payload": {}}

    scenario = tmp_path / "probe.yaml"
    scenario.write_text("name: p\nexpect: {deadline: 1s}\nsteps:\n"
                        "  - send_raw: '{\"type\": \"user_message\", \"payload\": {\"content\": \"\"}}'\n")
    out = tmp_path / "out.json"
    welcome = {"type": "connection_established", "data": {"user_id": "u1"}}
    with InThread(WsServer(run_anyway, welcome=welcome)) as server:
        code = main(["run", "--target", server.url, str(scenario), "--json", str(out), "-q"])
    (chat,) = json.loads(out.read_text())["scenarios"][0]["chats"]
    assert code == 1
    r8 = [v["reason"] for v in chat["violations"] if v["rule"] == "R8"]
    assert r8 and all("did the server start a run for it?" in r for r in r8), chat["violations"]
    assert "R13" in {v["rule"] for v in chat["violations"]}
