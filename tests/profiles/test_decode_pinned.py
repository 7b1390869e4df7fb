"""The decode of every tricky frame pinned, for both built-in profiles and custom ones (dotted names, extra fields,
nested and root-last lookups): whatever makes the Decoder fast must not change one Event or Frame.

decode_pinned.json holds what the Decoder made of each frame before it was specialised per profile; regenerate it
only on purpose (CHATPROBE_PIN_REGEN=1) when a decode is meant to change, and review the diff.
"""
from __future__ import annotations

import copy
import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.events import Event, Frame, kept_bytes
from harness.eventstream import StreamProblem
from harness.profiles import Profile, load_profile

PINNED = Path(__file__).with_name("decode_pinned.json")

# Dotted names (paths from the root), several names per field, an extra field used as a span key, a nested lookup
# container, a role name as a span type, a raw dotted span key, `when: run`, session errors, unknown types ignored.
DOTTY = """\
name: dotty
request: {kind: ask, body: {text: "{content}"}}
lookup: ["", env.body, meta]
fields:
  type: [kind, env.kind]
  run_id: [rid, run.id]
  parent_run_id: [parent]
  thread_id: [conv, thread]
  user_id: [who.name]
  message_id: [mid]
  seq: [n, env.n]
  tool_call_id: [call.id, call_id]
  tool_name: [tool]
  recoverable: [retry]
  timestamp: [ts]
  error_code: [code]
  error_message: [msg, detail.text]
  extra:
    step: [step.name, stepName]
roles:
  agent_started: [begin]
  agent_thinking: [think]
  tool_executing: [call]
  tool_completed: [called]
  partial_result: [chunk]
  agent_completed: [done]
  error_event: [oops, {type: err, when: run}]
unmapped: [mark, stepbeg, stepend]
control: [hello]
ping: {types: [ping, beat], reply: {kind: pong}}
connection_error: [err]
connection_error_codes: [BAD]
session_errors: {auth_failed: [NOAUTH], resume_unknown: [NORUN]}
unknown_types: ignore
spans:
  - {name: tool call, open: [call], close: [called], key: tool_call_id, key_fallback: tool_name}
  - {name: step, open: [stepbeg], close: [stepend], key: step}
  - {name: thoughts, open: [agent_thinking], inner: [chunk], close: [], key: mid, key_fallback: raw.key}
  - {name: marks, open: [mark], close: [], key: raw.key}
"""

# The root searched last, a field with no names, default field names.
ROOTLAST = """\
name: rootlast
request: {type: go}
lookup: [payload, ""]
fields:
  user_id: []
  seq: [seq, n]
roles:
  agent_started: [agent_started]
  agent_thinking: [agent_thinking]
  tool_executing: [tool_executing]
  tool_completed: [tool_completed]
  agent_completed: [agent_completed]
  error_event: [error_event]
control: [connection_established]
"""

LONG = "x" * 1025  # one over the id limit
EDGE = "y" * 1024  # exactly the limit

FRAMES: list[tuple[str, Any]] = [
    # -- not an object, not JSON, not text --
    ("binary", b'{"type":"ping"}'),
    ("binary-garbage", b"\x00\x01\xff"),
    ("bytearray", bytearray(b"{}")),
    ("not-json", '{"type": "agent_thinking", "payload": {"thought": unterminated'),
    ("empty", ""),
    ("stream-problem", StreamProblem("event: without data: the line was cut")),
    ("array", "[1, 2]"),
    ("string", '"agent_started"'),
    ("number", "5"),
    ("null", "null"),
    ("true", "true"),
    ("deep", "[" * 3000 + "]" * 3000),
    ("deep-object", '{"type":"agent_thinking","run_id":"r","payload":' + '{"a":' * 1100 + "1" + "}" * 1100 + "}"),
    # -- the type --
    ("no-type", '{"payload": {"note": "no type"}}'),
    ("type-null", '{"type": null, "kind": null}'),
    ("type-int", '{"type": 5, "kind": 5, "run_id": "r"}'),
    ("type-empty", '{"type": "", "kind": "", "run_id": "r"}'),
    ("type-long", json.dumps({"type": "t" * 1025, "kind": "k" * 1025, "run_id": "r"})),
    ("type-edge", json.dumps({"type": "t" * 1024, "kind": "k" * 1024, "run_id": "r"})),
    ("type-in-payload", '{"payload": {"type": "agent_started", "run_id": "r", "seq": 1}}'),
    ("type-in-data", '{"data": {"type": "agent_thinking", "run_id": "r"}}'),
    ("type-nested", '{"env": {"kind": "begin", "body": {"rid": "r9", "n": 4}}}'),
    ("type-dup-key", '{"type": "ping", "type": "agent_started", "run_id": "r", "seq": 1}'),
    ("unknown", '{"type": "zz_unknown", "kind": "zz_unknown", "run_id": "r"}'),
    ("unknown-quote", '{"type": "it\'s \\"odd\\"\\n", "kind": "{__import__}", "run_id": "r"}'),
    # -- control, ping --
    ("welcome", '{"type": "connection_established", "user_id": "u1", "kind": "hello", "who": {"name": "u1"}}'),
    ("welcome-payload", '{"type": "connection_established", "payload": {"user_id": "u2"}}'),
    ("welcome-int-user", '{"type": "connection_established", "user_id": 42, "kind": "hello", "who": {"name": 42}}'),
    ("welcome-long-user", json.dumps({"type": "connection_established", "user_id": LONG, "kind": "hello",
                                      "who": {"name": LONG}})),
    ("welcome-dict-user", '{"type": "connection_established", "user_id": {"a": [1]}, "kind": "hello", '
                          '"who": {"name": {"a": [1]}}}'),
    ("ping", '{"type": "ping", "kind": "ping"}'),
    ("beat", '{"type": "heartbeat", "kind": "beat"}'),
    ("pong", '{"type": "pong"}'),
    # -- netra events --
    ("netra-started", '{"type":"agent_started","run_id":"r1","thread_id":"t1","user_id":"u1","seq":1,'
                      '"timestamp":1700000000.5,"payload":{"message_id":"m1","agent_name":"a"}}'),
    ("netra-started-parent", '{"type":"agent_started","run_id":"r2","parent_run_id":"r1","seq":1}'),
    ("netra-started-parent-long", json.dumps({"type": "agent_started", "run_id": "r2", "parent_run_id": LONG})),
    ("netra-thinking-payload", '{"type":"agent_thinking","payload":{"run_id":"r1","seq":2,"thread_id":"t1",'
                               '"user_id":"u1","message_id":"m1","timestamp":"2024-01-01T00:00:00Z"}}'),
    ("netra-root-null", '{"type":"agent_thinking","run_id":null,"seq":null,"payload":{"run_id":"r2","seq":3}}'),
    ("netra-data", '{"type":"tool_executing","data":{"run_id":"r1","tool_call_id":"c1","tool_name":"search"},"seq":3}'),
    ("netra-payload-list", '{"type":"agent_thinking","run_id":"r1","payload":[1,2],"data":"x"}'),
    ("netra-payload-str", '{"type":"agent_thinking","run_id":"r1","payload":"str"}'),
    ("netra-payload-null", '{"type":"agent_thinking","run_id":"r1","payload":null,"data":{"seq":5}}'),
    ("netra-tool", '{"type":"tool_executing","run_id":"r1","seq":3,"payload":{"tool_call_id":"c1","tool_name":"s"}}'),
    ("netra-tool-fallback", '{"type":"tool_executing","run_id":"r1","payload":{"tool_name":"search"}}'),
    ("netra-tool-nokey", '{"type":"tool_completed","run_id":"r1"}'),
    ("netra-tool-int-id", '{"type":"tool_completed","run_id":"r1","payload":{"tool_call_id":5,"tool_name":true}}'),
    ("netra-tool-float-id", '{"type":"tool_completed","run_id":"r1","payload":{"tool_call_id":1.5e300}}'),
    ("netra-tool-long", json.dumps({"type": "tool_executing", "run_id": "r1",
                                    "payload": {"tool_call_id": LONG, "tool_name": LONG}})),
    ("netra-tool-long-fallback", json.dumps({"type": "tool_executing", "run_id": "r1",
                                             "payload": {"tool_name": LONG}})),
    ("netra-tool-dict-id", '{"type":"tool_executing","run_id":"r1","payload":{"tool_call_id":{"k":"v"}}}'),
    ("netra-tool-list-id-long", json.dumps({"type": "tool_executing", "run_id": "r1",
                                            "payload": {"tool_call_id": ["z" * 600, "z" * 600]}})),
    ("netra-chunk", '{"type":"stream_chunk","run_id":"r1","seq":4,"payload":{"content":"hi"}}'),
    ("netra-completed", '{"type":"agent_completed","run_id":"r1","seq":5,"timestamp":1700000001}'),
    ("netra-response", '{"type":"agent_response","run_id":"r1","seq":6}'),
    ("netra-long-ids", json.dumps({"type": "agent_thinking", "run_id": LONG, "thread_id": LONG, "user_id": LONG,
                                   "payload": {"message_id": LONG}, "timestamp": "t" * 65})),
    ("netra-edge-ids", json.dumps({"type": "agent_thinking", "run_id": EDGE, "thread_id": EDGE, "user_id": EDGE,
                                   "payload": {"message_id": EDGE}, "timestamp": "t" * 64})),
    ("netra-int-ids", '{"type":"agent_thinking","run_id":7,"thread_id":7.5,"user_id":false,"message_id":[1]}'),
    ("netra-ts-dict", '{"type":"agent_thinking","run_id":"r1","timestamp":{"at":1}}'),
    ("netra-ts-bool", '{"type":"agent_thinking","run_id":"r1","timestamp":true}'),
    ("netra-ts-list-long", json.dumps({"type": "agent_thinking", "run_id": "r1", "timestamp": list(range(100))})),
    # -- seq --
    ("seq-str", '{"type":"agent_thinking","run_id":"r1","seq":"3"}'),
    ("seq-float", '{"type":"agent_thinking","run_id":"r1","seq":3.0}'),
    ("seq-bool", '{"type":"agent_thinking","run_id":"r1","seq":true}'),
    ("seq-zero", '{"type":"agent_thinking","run_id":"r1","seq":0}'),
    ("seq-negative", '{"type":"agent_thinking","run_id":"r1","seq":-1}'),
    ("seq-huge", '{"type":"agent_thinking","run_id":"r1","seq":1000000000000000000000000000000}'),
    ("seq-nan", '{"type":"agent_thinking","run_id":"r1","seq":NaN}'),
    ("seq-infinity", '{"type":"agent_thinking","run_id":"r1","seq":-Infinity}'),
    ("seq-list", '{"type":"agent_thinking","run_id":"r1","seq":[1]}'),
    ("seq-dict", '{"type":"agent_thinking","run_id":"r1","seq":{"a":1}}'),
    ("seq-long-str", json.dumps({"type": "agent_thinking", "run_id": "r1", "seq": LONG})),
    ("seq-max", '{"type":"agent_thinking","run_id":"r1","seq":18446744073709551615}'),
    ("seq-past-64-bits", '{"type":"agent_thinking","run_id":"r1","seq":-9223372036854775809}'),
    ("seq-overflow", '{"type":"agent_thinking","run_id":"r1","seq":1e400}'),
    ("seq-5000-digits", '{"type":"agent_thinking","run_id":"r1","seq":' + "9" * 5000 + "}"),
    ("numbers-too-large", '{"type":"agent_thinking","run_id":' + "7" * 5000 + ',"thread_id":-1e400,"seq":2,'
                          '"timestamp":' + "1" * 4400 + "}"),
    ("timestamp-overflow", '{"type":"agent_thinking","run_id":"r1","timestamp":1.5e999}'),
    # -- errors --
    ("conn-auth", '{"type":"error_message","error_code":"AUTH_FAILED","error_message":"bad token"}'),
    ("conn-invalid-run", '{"type":"error_message","run_id":"r1","error_code":"INVALID_MESSAGE","message":"no"}'),
    ("conn-resume", '{"type":"error_message","run_id":"r9","error_code":"RESUME_UNKNOWN_RUN"}'),
    ("conn-no-code", '{"type":"error_message","error_message":""}'),
    ("conn-long-message", json.dumps({"type": "error_message", "error_code": "X", "error_message": "m" * 300})),
    ("conn-dict-message", '{"type":"error_message","error_code":"X","error_message":{"a":1}}'),
    ("conn-int-code", '{"type":"error_message","error_code":401}'),
    ("conn-long-code", json.dumps({"type": "error_message", "error_code": LONG, "run_id": "r1"})),
    ("run-error-message", '{"type":"error_message","run_id":"r1","error_code":"TOOL_FAILED","error_message":"x",'
                          '"is_recoverable":true}'),
    ("agent-error-recoverable", '{"type":"agent_error","run_id":"r1","payload":{"is_recoverable":true}}'),
    ("agent-error-truthy", '{"type":"agent_error","run_id":"r1","is_recoverable":"true"}'),
    ("agent-error-one", '{"type":"error","run_id":"r1","is_recoverable":1}'),
    ("agent-error-fatal", '{"type":"error_event","run_id":"r1","is_recoverable":false}'),
    # -- the dotty dialect --
    ("d-begin", '{"kind":"begin","rid":"r1","conv":"c1","who":{"name":"u"},"mid":"m1","n":1,"ts":5,'
                '"parent":"r0"}'),
    ("d-begin-dotted-run", '{"kind":"begin","run":{"id":"r2"},"thread":"c2","env":{"n":2}}'),
    ("d-begin-rid-null", '{"kind":"begin","rid":null,"run":{"id":"r3"}}'),
    ("d-run-not-dict", '{"kind":"begin","run":"r4","who":["name"]}'),
    ("d-body", '{"env":{"kind":"think","body":{"rid":"r1","n":2,"mid":"m1","ts":"now","conv":"c1"}}}'),
    ("d-body-and-meta", '{"kind":"think","meta":{"rid":"meta-run","mid":"m2"},"env":{"body":{"rid":"body-run"}}}'),
    ("d-meta-not-dict", '{"kind":"think","meta":[1],"env":{"body":3},"rid":"r1"}'),
    ("d-env-not-dict", '{"kind":"think","env":"body","rid":"r1","raw":{"key":"rk"}}'),
    ("d-think-raw-key", '{"kind":"think","rid":"r1","raw":{"key":"rk"}}'),
    ("d-think-raw-key-long", json.dumps({"kind": "think", "rid": "r1", "raw": {"key": LONG}})),
    ("d-call", '{"kind":"call","rid":"r1","call":{"id":"c1"},"tool":"t"}'),
    ("d-call-fallback", '{"kind":"call","rid":"r1","call_id":null,"tool":"t"}'),
    ("d-call-id-plain", '{"kind":"call","rid":"r1","call":"notdict","call_id":"c2","meta":{"tool":"m"}}'),
    ("d-called", '{"kind":"called","rid":"r1","env":{"body":{"call_id":"c1"}}}'),
    ("d-chunk", '{"kind":"chunk","rid":"r1","mid":"m1"}'),
    ("d-chunk-nokey", '{"kind":"chunk","rid":"r1"}'),
    ("d-mark", '{"kind":"mark","rid":"r1","raw":{"key":5}}'),
    ("d-stepbeg", '{"kind":"stepbeg","rid":"r1","step":{"name":"s1"},"stepName":"other"}'),
    ("d-stepbeg-plain", '{"kind":"stepbeg","rid":"r1","meta":{"stepName":"s2"}}'),
    ("d-stepend-long", json.dumps({"kind": "stepend", "rid": "r1", "stepName": LONG})),
    ("d-done", '{"kind":"done","rid":"r1","n":"9"}'),
    ("d-oops", '{"kind":"oops","rid":"r1","retry":true}'),
    ("d-err-run", '{"kind":"err","rid":"r1","code":"TOOL","msg":"m","retry":true}'),
    ("d-err-run-bad", '{"kind":"err","rid":"r1","code":"BAD","detail":{"text":"dotted message"}}'),
    ("d-err-noauth", '{"kind":"err","code":"NOAUTH","detail":{"text":"who are you"}}'),
    ("d-err-norun", '{"kind":"err","run":{"id":"r8"},"code":"NORUN"}'),
    ("d-err-norun-no-run", '{"kind":"err","code":"NORUN","msg":null,"detail":{"text":null}}'),
    ("d-hello", '{"kind":"hello","who":{"name":"u9"},"user_id":"ignored"}'),
    ("d-unknown", '{"kind":"zz","rid":"r1"}'),
    ("d-dotted-literal-key", '{"kind":"begin","run.id":"literal","step.name":"literal"}'),
    # -- AG-UI --
    ("a-run-started", '{"type":"RUN_STARTED","threadId":"t1","runId":"r1","timestamp":1700000000000}'),
    ("a-run-started-parent", '{"type":"RUN_STARTED","threadId":"t1","runId":"r2","parentRunId":"r1",'
                             '"input":{"threadId":"t1","runId":"r2","messages":[{"id":"m0","role":"user",'
                             '"content":"hi"}],"tools":[],"context":[],"state":{},"forwardedProps":{}}}'),
    ("a-run-started-bad", '{"type":"RUN_STARTED","threadId":5,"runId":"r1"}'),
    ("a-msg-start", '{"type":"TEXT_MESSAGE_START","messageId":"m1","role":"assistant","timestamp":1}'),
    ("a-msg-content", '{"type":"TEXT_MESSAGE_CONTENT","messageId":"m1","delta":"hi"}'),
    ("a-msg-content-bad", '{"type":"TEXT_MESSAGE_CONTENT","messageId":"m1","delta":5}'),
    ("a-msg-content-empty", '{"type":"TEXT_MESSAGE_CONTENT","messageId":"m1","delta":""}'),
    ("a-msg-end", '{"type":"TEXT_MESSAGE_END","messageId":"m1"}'),
    ("a-msg-start-long", json.dumps({"type": "TEXT_MESSAGE_START", "messageId": LONG, "role": "assistant"})),
    ("a-msg-chunk", '{"type":"TEXT_MESSAGE_CHUNK","messageId":"m1","delta":"x"}'),
    ("a-tool-start", '{"type":"TOOL_CALL_START","toolCallId":"c1","toolCallName":"search","parentMessageId":"m1"}'),
    ("a-tool-args", '{"type":"TOOL_CALL_ARGS","toolCallId":"c1","delta":"{\\"q\\": 1}"}'),
    ("a-tool-end", '{"type":"TOOL_CALL_END","toolCallId":"c1"}'),
    ("a-tool-result", '{"type":"TOOL_CALL_RESULT","toolCallId":"c1","messageId":"m2","content":"42","role":"tool"}'),
    ("a-tool-chunk", '{"type":"TOOL_CALL_CHUNK","toolCallId":"c3","toolCallName":"x","delta":"{}"}'),
    ("a-tool-start-nokey", '{"type":"TOOL_CALL_START","toolCallName":"search"}'),
    ("a-step", '{"type":"STEP_STARTED","stepName":"plan"}'),
    ("a-step-end", '{"type":"STEP_FINISHED","stepName":"plan"}'),
    ("a-reasoning", '{"type":"REASONING_START","messageId":"r1"}'),
    ("a-thinking", '{"type":"THINKING_START"}'),
    ("a-thinking-msg", '{"type":"THINKING_TEXT_MESSAGE_CONTENT","delta":"hm"}'),
    ("a-state-delta", '{"type":"STATE_DELTA","delta":[{"op":"add","path":"/a","value":1}]}'),
    ("a-state-delta-bad", '{"type":"STATE_DELTA","delta":{"op":"add"}}'),
    ("a-raw-wrap", '{"type":"RAW","event":{"type":"RUN_STARTED","threadId":"t","runId":"r"}}'),
    ("a-custom", '{"type":"CUSTOM","name":"n","value":{"deep":[1,2,3]}}'),
    ("a-subagent", '{"type":"SUBAGENT_STARTED","subagentRunId":"s1"}'),
    ("a-run-error", '{"type":"RUN_ERROR","message":"boom","code":"E1","runId":"r1"}'),
    ("a-run-finished", '{"type":"RUN_FINISHED","threadId":"t1","runId":"r1","outcome":{"type":"success"},'
                       '"result":{"a":1}}'),
    ("a-run-finished-long-thread", json.dumps({"type": "RUN_FINISHED", "threadId": LONG, "runId": "r1"})),
    ("a-unknown", '{"type":"MADE_UP","runId":"r1"}'),
    ("a-no-run", '{"type":"TEXT_MESSAGE_CONTENT","messageId":"m1","delta":"hi","runId":null}'),
]


def profiles() -> dict[str, Profile]:
    return {"netra": load_profile("netra"), "ag-ui": load_profile("ag-ui"),
            "dotty": Profile.model_validate(yaml.safe_load(DOTTY)),
            "rootlast": Profile.model_validate(yaml.safe_load(ROOTLAST))}


def decoded(profile: Profile) -> dict[str, str]:
    out = {}
    for label, text in FRAMES:
        result = profile.decode(text, 1.5)
        assert isinstance(result, (Event, Frame))
        out[label] = repr(result)
    return out


def test_labels_unique() -> None:
    labels = [label for label, _ in FRAMES]
    assert len(labels) == len(set(labels))


@pytest.mark.parametrize("name", ["netra", "ag-ui", "dotty", "rootlast"])
def test_decode_is_pinned(name: str) -> None:
    got = decoded(profiles()[name])
    if os.environ.get("CHATPROBE_PIN_REGEN") == "1":
        pinned = json.loads(PINNED.read_text()) if PINNED.exists() else {}
        pinned[name] = got
        PINNED.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
    pinned = json.loads(PINNED.read_text())[name]
    assert set(got) == set(pinned), "a frame was added or removed: regenerate on purpose"
    for label in pinned:
        assert got[label] == pinned[label], label


@pytest.mark.parametrize("name", ["netra", "ag-ui", "dotty", "rootlast"])
def test_decoder_measures_what_the_checker_would(name: str) -> None:
    """The byte budget of a chat's kept events (checker.MAX_KEPT_BYTES) counts what the decoder measured: the same sum
    kept_bytes makes of the finished event, oversized ids cut included."""
    profile = profiles()[name]
    events = [r for _, text in FRAMES if isinstance(r := profile.decode(text, 1.5), Event)]
    assert len(events) > 10
    for ev in events:
        assert ev.nbytes == kept_bytes(ev) > 0, ev


def test_copied_and_pickled_profiles_decode_alike() -> None:
    """The compiled functions do not travel with a copy or a pickle: the copy compiles its own, to the same decode."""
    for profile in profiles().values():
        want = decoded(profile)
        for other in (copy.deepcopy(profile), pickle.loads(pickle.dumps(profile))):
            assert decoded(other) == want
