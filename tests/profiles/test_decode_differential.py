"""The compiled Decoder against the table-driven decode it replaced (kept here verbatim as the reference): the same
Event or Frame, byte for byte, for generated frames over every profile's names, containers and dotted paths.
"""
from __future__ import annotations

import json
import re
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.events import Event, Frame, FrameKind, Role, kept_bytes
from harness.eventstream import StreamProblem
from harness.profiles import (
    MAX_ID_BYTES,
    MAX_NAME_PARTS,
    MAX_TIME_BYTES,
    SEQ_MAX,
    SEQ_MIN,
    Decoder,
    HugeNumber,
    Profile,
    _error_detail,
    _id,
    _id_or_wide,
    _json_exact,
    _seq_text,
    _seq_text_or_wide,
    _split_names,
    _WideInt,
    unknown_type_suffix,
)

from .test_decode_pinned import FRAMES as PINNED_FRAMES
from .test_decode_pinned import profiles

PROFILES = profiles()


# -- the reference: Decoder.decode_obj and Decoder._check as they were before the decoder was compiled --
def reference_decode_obj(self: Decoder, frame: Any, received_at: float) -> Event | Frame:
    if not isinstance(frame, dict):
        return Frame(FrameKind.MALFORMED, detail=f"a JSON {type(frame).__name__}, not an object")
    n = self.names
    scopes = self.scopes(frame)
    find = self.find
    wire_type = find(frame, scopes, n["type"])
    if not isinstance(wire_type, str) or not wire_type:
        return Frame(FrameKind.MALFORMED, detail="JSON object without a 'type'", raw=frame)
    if len(wire_type) > MAX_ID_BYTES:
        return Frame(FrameKind.MALFORMED, detail=f"type of {len(wire_type)} characters (over {MAX_ID_BYTES})")
    if wire_type in self.ping:
        return Frame(FrameKind.PING, wire_type=wire_type, raw=frame)
    if wire_type in self.control:
        return Frame(FrameKind.CONTROL, wire_type=wire_type, raw=frame,
                     user_id=_id(find(frame, scopes, n["user_id"]))[0])
    run_id = find(frame, scopes, n["run_id"])
    profile = self.profile
    if wire_type in self.conn_error:
        code = _id(find(frame, scopes, n["error_code"]))[0]
        # A connection-level answer (bad input, auth, resume) even when it names a run.
        if run_id is None or code in profile.connection_error_codes:
            return Frame(FrameKind.ERROR, wire_type=wire_type, error_code=code,
                         detail=str(find(frame, scopes, n["error_message"]) or "")[:200], raw=frame,
                         run_id=_id(run_id)[0], session_error=self.session_errors.get(code or ""),
                         # the message it answers, when it names one (added with the compiled decoder's)
                         message_id=_id(find(frame, scopes, n["message_id"]))[0],
                         thread_id=_id(find(frame, scopes, n["thread_id"]))[0])
    role = self.always.get(wire_type)
    if role is None and run_id is not None:
        role = self.with_run.get(wire_type)
    if role is None and wire_type not in self.unmapped:
        if profile.unknown_types == "violation":
            return Frame(FrameKind.MALFORMED, wire_type=wire_type, raw=frame,
                         detail=f"type {wire_type[:60]!r}" + unknown_type_suffix(profile)(wire_type))
        return Frame(FrameKind.UNKNOWN, wire_type=wire_type, raw=frame)
    seq = find(frame, scopes, n["seq"])
    bad_seq = None
    # (one rule added since, tested on its own in test_seq_integers: a seq past 64 bits is no seq either)
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool) or not SEQ_MIN <= seq <= SEQ_MAX):
        bad_seq, seq = _seq_text(seq), None
    oversized: list[str] = []
    rid, thread_id, user_id, message_id = (
        _id(run_id, "run_id", oversized)[0], _id(find(frame, scopes, n["thread_id"]), "thread_id", oversized)[0],
        _id(find(frame, scopes, n["user_id"]), "user_id", oversized)[0],
        _id(find(frame, scopes, n["message_id"]), "message_id", oversized)[0])
    server_time = find(frame, scopes, n["timestamp"])
    # (and a number too large to hold as one is kept as the text the server wrote, as a string timestamp is)
    if server_time is not None and (not isinstance(server_time, (int, float)) or isinstance(server_time, HugeNumber)):
        server_time, _ = _id(server_time, "timestamp", oversized, MAX_TIME_BYTES)
    ev = Event(role=role, wire_type=wire_type, received_at=received_at, run_id=rid, thread_id=thread_id,
               user_id=user_id, message_id=message_id, seq=seq, bad_seq=bad_seq, server_time=server_time)
    if role is Role.TOOL_EXECUTING or role is Role.TOOL_COMPLETED or wire_type in self.span_of:
        ev.tool_call_id = _id(find(frame, scopes, n["tool_call_id"]), "tool_call_id", oversized)[0]
        ev.tool_name = _id(find(frame, scopes, n["tool_name"]), "tool_name", oversized)[0]
    if role is Role.ERROR_EVENT:
        ev.recoverable = find(frame, scopes, n["recoverable"]) is True
        code, message = find(frame, scopes, n["error_code"]), find(frame, scopes, n["error_message"])
        if code is not None or message is not None:
            ev.error_detail = _error_detail(code, message)
    elif role is Role.AGENT_STARTED:
        ev.parent_run_id = _id(find(frame, scopes, n["parent_run_id"]), "parent_run_id", oversized)[0]
    if self.checks:
        _reference_check(self, frame, scopes, ev)
    span = self.span_of.get(wire_type) or (self.span_of.get(role.value) if role else None)
    if span is not None:
        sp, kind = span
        key = find(frame, scopes, n.get(sp.key) or _split_names([sp.key]))
        if key is None and sp.key_fallback:
            key = find(frame, scopes, n.get(sp.key_fallback) or _split_names([sp.key_fallback]))
        key = _id(key, sp.key, oversized)[0]
        owner = find(frame, scopes, n.get(sp.owner) or _split_names([sp.owner])) if sp.owner else None
        ev.span = (sp.name, kind, key if owner is None else (key, _id(owner, sp.owner, oversized)[0]))
    if oversized:
        ev.oversized = tuple(oversized)
    return ev

def _reference_check(self: Decoder, frame: dict[str, Any], scopes: list[dict[str, Any]], ev: Event) -> None:
    """The profile's payload checks: the stateless ones now, and the fields the checker's ones will read."""
    problems: tuple[str, ...] = ()
    advice: tuple[str, ...] = ()
    for check in self.checks:
        p, a = check.frame(frame)
        problems, advice = problems + p, advice + a
    ev.problems, ev.advice = problems, advice
    payload = {}
    for name in self.check_fields:
        v = self.find(frame, scopes, ((name,), ()))
        if v is not None:
            payload[name] = v
    ev.payload = payload


CONSTANTS = ("NaN", "Infinity", "-Infinity")


def _constant_outside_strings(text: str) -> tuple[str, int] | None:
    """The first NaN, Infinity or -Infinity of a JSON text outside its strings, and its character, by counting the
    unescaped quotes before each occurrence (slow and plain)."""
    for m in re.finditer(r"-?Infinity|NaN", text):
        inside, i = False, 0
        while i < m.start():
            c = text[i]
            if c == "\\" and inside:
                i += 2
                continue
            if c == '"':
                inside = not inside
            i += 1
        if not inside:
            return m.group(), m.start()
    return None


def reference_decode(self: Decoder, text: str | bytes, received_at: float) -> Event | Frame:
    if isinstance(text, (bytes, bytearray)):
        return Frame(FrameKind.MALFORMED, detail=f"binary frame of {len(text)} bytes where JSON text was expected")
    try:
        frame = orjson.loads(text)
    except ValueError:
        # orjson refuses what json accepts (NaN, integers past 64 bits, depth past 1024): json decides, so a
        # frame means what it always meant (reading every number JSON can write: _json_exact, one rule added since).
        try:
            frame = _json_exact(text)
        except (ValueError, RecursionError) as exc:
            if isinstance(text, StreamProblem):  # what the transport found wrong in the stream itself
                return Frame(FrameKind.MALFORMED, detail=str(text))
            if isinstance(exc, RecursionError):  # (one rule added since: said so, not "not JSON")
                return Frame(FrameKind.MALFORMED, detail="JSON nested too deeply to read (over 1,000 levels of arrays "
                                                         f"and objects): {text[:60]!r}")
            return Frame(FrameKind.MALFORMED, detail=f"not JSON: {text[:60]!r}")
        # One rule added since (tested on its own in tests/integration/test_nan_frames.py): a frame holding NaN or
        # Infinity outside its strings is an event with an R12 saying where, first of its problems, unless its seq's
        # R12 already says it.
        found = _constant_outside_strings(text)
        if found is not None:
            got = reference_decode_obj(self, frame, received_at)
            if isinstance(got, Event) and not (isinstance(got.bad_seq, str) and got.bad_seq.split(",")[0] in CONSTANTS):
                name, at = found
                got.problems = (f"{got.wire_type[:60]} holds {name} at character {at}: not a JSON number (JSON has no "
                                "NaN or Infinity; a browser's JSON.parse refuses the frame)", *got.problems)
            return got
    # One rule added since (tested on its own in test_integers_past_64_bits_stay_integers): an integral float past 64
    # bits that the decoder reads as an id or seq, where orjson parsed the text, means json parses the frame again.
    global _id, _seq_text
    plain, _id = _id, _id_or_wide
    plain_seq, _seq_text = _seq_text, _seq_text_or_wide
    try:
        return reference_decode_obj(self, frame, received_at)
    except _WideInt:
        _id, _seq_text = plain, plain_seq
        return reference_decode_obj(self, _json_exact(text), received_at)
    finally:
        _id, _seq_text = plain, plain_seq


# -- frames made of every profile's own names, so that containers, dotted paths and alternatives are all hit --
def _vocabulary() -> tuple[list[str], list[str]]:
    keys: set[str] = {"zz", ""}
    types: set[str] = {"zz_unknown"} | {r.value for r in Role}
    for p in PROFILES.values():
        d = p._decoder
        for names in d.names.values():
            for step in names:
                keys.update(step)
        for path in d.containers:
            keys.update(path)
        keys.update(d.check_fields)
        for sp in p.spans:
            keys.update(sp.key.split("."))
            keys.update((sp.key_fallback or "").split("."))
            keys.update((sp.owner or "").split("."))
        types.update(d.always, d.with_run, d.unmapped, d.control, d.ping, d.conn_error, d.session_errors,
                     p.connection_error_codes)
    return sorted(keys), sorted(types)


KEYS, TYPES = _vocabulary()
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.sampled_from(TYPES)
           | st.text(max_size=4) | st.sampled_from(["x" * MAX_ID_BYTES, "x" * (MAX_ID_BYTES + 1), "t" * MAX_TIME_BYTES,
                                                   "t" * (MAX_TIME_BYTES + 1)]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner,
                                                                                            max_size=4), max_leaves=10)
TYPE_KEYS = st.sampled_from(["type", "kind"])
TYPED = (st.dictionaries(TYPE_KEYS, st.sampled_from(TYPES), min_size=1, max_size=2)
         | st.dictionaries(TYPE_KEYS, VALUES, max_size=2))
FRAMES = st.tuples(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=8), TYPED).map(lambda ab: {**ab[0], **ab[1]})
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _same(got: Event | Frame, want: Event | Frame) -> None:
    assert type(got) is type(want)
    assert repr(got) == repr(want)  # repr: a NaN seq or timestamp equals itself
    if isinstance(got, Event):
        assert got.nbytes == kept_bytes(got)


@SETTINGS
@given(frame=FRAMES | VALUES)
def test_compiled_decode_obj_is_the_reference(frame: Any) -> None:
    for profile in PROFILES.values():
        _same(profile.decode_obj(frame, 2.5), reference_decode_obj(profile._decoder, frame, 2.5))


@SETTINGS
@given(frame=FRAMES)
def test_compiled_decode_of_text_is_the_reference(frame: dict[str, Any]) -> None:
    text = json.dumps(frame)  # NaN and integers past 64 bits take the json fallback
    for profile in PROFILES.values():
        _same(profile.decode(text, 2.5), reference_decode(profile._decoder, text, 2.5))


def test_the_reference_is_exercised() -> None:
    """Guard against a vacuous comparison: the generated frames reach events, spans, checks and R12 cuts."""
    seen: set[str] = set()

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(frame=FRAMES)
    def collect(frame: dict[str, Any]) -> None:
        for name, profile in PROFILES.items():
            got = profile.decode_obj(frame, 2.5)
            if isinstance(got, Event):
                seen.add(f"{name}:event")
                seen.update({f"{name}:span"} if got.span else set())
                seen.update({f"{name}:oversized"} if got.oversized else set())
                seen.update({f"{name}:bad_seq"} if got.bad_seq is not None else set())
                seen.update({f"{name}:tool"} if got.tool_call_id or got.tool_name else set())
            else:
                seen.add(f"{name}:{got.kind.value}")

    collect()
    for name in PROFILES:
        assert {f"{name}:event", f"{name}:malformed"} <= seen, sorted(seen)
    assert {"ag-ui:span", "dotty:unknown", "dotty:error"} <= seen, sorted(seen)


def test_pinned_table_is_the_reference() -> None:
    """Every hand-picked tricky frame (binary, not JSON, NaN, deep, oversized…) decodes as the reference does."""
    for profile in PROFILES.values():
        for _label, text in PINNED_FRAMES:
            _same(profile.decode(text, 2.5), reference_decode(profile._decoder, text, 2.5))


def test_profile_strings_are_data_never_code() -> None:
    """Names a user's profile gives (quotes, backslashes, newlines, code) enter the compiled decoder as literals: the
    frame's keys of those exact spellings are found, and nothing in them runs."""
    q, d, b, n, c, u = "'); raise SystemExit(3) #", '"\n__import__(\'os\')_exit(3)\n', "\\", "a\nb", "{type}", "é\u2028"
    profile = Profile.model_validate({
        "name": "x'\"\n\\", "request": {q: "go"}, "lookup": ["", f"{d}.{b}"],
        "fields": {"type": [q], "run_id": [n, f"{c}.{u}"], "thread_id": [b], "extra": {u: [c]}},
        "roles": {"agent_started": [n], "agent_thinking": [{"type": d, "when": "run"}]},
        "unmapped": [b], "control": [c],
        "spans": [{"name": q, "open": [b], "close": [], "key": u}],
    })
    got = profile.decode(json.dumps({q: n, d: {b: {b: "thread", n: "run-in-container"}}}), 1.0)
    assert isinstance(got, Event) and got.role is Role.AGENT_STARTED and got.wire_type == n
    assert (got.run_id, got.thread_id) == ("run-in-container", "thread")
    got = profile.decode(json.dumps({q: d, c: {u: "dotted-run"}}), 1.0)
    assert isinstance(got, Event) and got.role is Role.AGENT_THINKING and got.run_id == "dotted-run"
    got = profile.decode(json.dumps({q: b, c: "span-key"}), 1.0)
    assert isinstance(got, Event) and got.role is None and got.span == (q, "open", "span-key") and got.run_id is None
    got = profile.decode(json.dumps({q: "nope"}), 1.0)
    assert isinstance(got, Frame) and got.kind is FrameKind.MALFORMED and repr(profile.name) in got.detail
    got = profile.decode(json.dumps({q: c}), 1.0)
    assert isinstance(got, Frame) and got.kind is FrameKind.CONTROL


def test_deep_paths_compile_flat() -> None:
    """A profile's dotted field and container paths as deep as a name may be (MAX_NAME_PARTS) compile and find what
    the reference finds."""
    deep = [f"k{i}" for i in range(MAX_NAME_PARTS - 1)]
    profile = Profile.model_validate({
        "name": "deep", "request": {"type": "go"}, "lookup": ["", ".".join(deep)],
        "fields": {"type": ["type"], "run_id": ["rid", ".".join(deep + ["run"])]},
        "roles": {"agent_started": ["start"]},
    })
    nested: dict[str, Any] = {"run": "deep-run", "rid": "container-run"}
    for key in reversed(deep):
        nested = {key: nested}
    frame = {"type": "start", **nested}
    for text in (json.dumps(frame), json.dumps({**frame, "rid": None})):
        got = profile.decode(text, 1.0)
        _same(got, reference_decode(profile._decoder, text, 1.0))
        assert isinstance(got, Event) and got.run_id == "container-run"
    bare = {"type": "start", **{deep[0]: {deep[1]: "not a dict all the way"}}}
    got = profile.decode(json.dumps(bare), 1.0)
    _same(got, reference_decode(profile._decoder, json.dumps(bare), 1.0))


def test_integers_past_64_bits_stay_integers() -> None:
    """orjson reads an integer past 64 bits as a float: two run ids sent as huge numbers would read as one, and a seq
    of 2**64 as "not an integer". The text path hands such a frame to json, which keeps the integer; a float the
    server wrote as one stays a float. (A seq past 64 bits is an R12 all the same, said as the integer it is.)"""
    profile = PROFILES["netra"]
    a = profile.decode('{"type":"agent_started","run_id":123456789012345678901234567890,"seq":18446744073709551616}', 1.0)
    b = profile.decode('{"type":"agent_started","run_id":123456789012345678901234567891,"seq":1}', 1.0)
    assert isinstance(a, Event) and isinstance(b, Event)
    assert (a.run_id, b.run_id) == ("123456789012345678901234567890", "123456789012345678901234567891")
    assert a.seq is None and a.bad_seq.startswith("18446744073709551616, an integer past 64 bits: ")
    top = profile.decode('{"type":"agent_started","run_id":"r","seq":18446744073709551615}', 1.0)
    assert isinstance(top, Event) and top.seq == 2**64 - 1 and top.bad_seq is None
    ctl = profile.decode('{"type":"connection_established","data":{"user_id":-92233720368547758090}}', 1.0)
    assert isinstance(ctl, Frame) and ctl.user_id == "-92233720368547758090"
    c = profile.decode('{"type":"agent_started","run_id":1e30,"seq":1}', 1.0)
    assert isinstance(c, Event) and c.run_id == "1e+30"
    small = '{"type":"agent_started","run_id":42,"seq":3}'
    _same(profile.decode(small, 1.0), reference_decode(profile._decoder, small, 1.0))


def test_the_decoder_is_compiled_once() -> None:
    """Compiling is milliseconds: the functions are made on first use and kept, not made again per frame."""
    dec = Profile.model_validate(PROFILES["netra"].model_dump())._decoder
    assert dec.decode is dec.decode and dec.decode_obj is dec.decode_obj and dec.source is dec.source


def test_a_text_frame_compiles_the_text_path_alone() -> None:
    """Start-up of every run (BENCHMARKS.md, issue 10): a live run's frames are text, so `prepare()` and the text
    frames compile `decode` alone, not `decode_obj` (half the generated source, ~2 ms of `compile()`). A frame with an
    integer past 64 bits, which the text path hands to `decode_obj`, compiles it then and decodes as the reference;
    the source read whole is both functions, as before."""
    profile = Profile.model_validate(PROFILES["netra"].model_dump())
    dec = profile._decoder
    profile.prepare()
    text = '{"type":"agent_started","run_id":"r","seq":1}'
    _same(profile.decode(text, 1.0), reference_decode(dec, text, 1.0))
    assert dec._decode_obj is None
    wide = '{"type":"agent_started","run_id":123456789012345678901234567890,"seq":1}'
    _same(profile.decode(wide, 1.0), reference_decode(dec, wide, 1.0))
    assert dec._decode_obj is not None and dec.decode_obj is dec._decode_obj
    assert dec.source.startswith("def decode_obj(frame, received_at):") and "\ndef decode(text, received_at):" in dec.source
