"""The decode's fast path (a text frame read into a msgspec Struct of the profile's names, harness/profiles.py
`_generate_fast`) against the decode without it (`Decoder.decode_exact`, the generated decode the pinned tests hold):
the same Event or Frame for every frame, normal or hostile, over every built-in and documented profile; and the fast
path does serve the common frame (not a comparison of one function with itself).
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import given

from harness.events import Event, Frame, Role
from harness.profiles import MAX_ID_BYTES, MAX_TIME_BYTES, Decoder, Profile, _split_names, load_profile

from .test_decode_differential import FRAMES as GENERATED_FRAMES
from .test_decode_differential import SETTINGS, _same
from .test_decode_pinned import DOTTY, profiles
from .test_decode_pinned import FRAMES as PINNED_FRAMES

DOCS = Path(__file__).parents[2] / "docs" / "profiles"



def _field_names(decoded: Event | Frame) -> tuple[str, ...]:
    """Every field of an Event (a msgspec Struct) or a Frame (a dataclass)."""
    if isinstance(decoded, Event):
        return decoded.__struct_fields__
    return tuple(f.name for f in dataclasses.fields(decoded))

def _all_profiles() -> dict[str, Profile]:
    out = dict(profiles())
    for path in sorted(DOCS.glob("*.yaml")):
        out[path.stem] = load_profile(str(path))
    # DOTTY with unknown types an R12 (as ignored, they are Frames that keep the dict: no fast path), so that nested
    # containers, dotted paths and span owners go through the fast path too.
    strict = yaml.safe_load(DOTTY)
    strict.update(name="dotty-strict", unknown_types="violation")
    strict["spans"].append({"name": "owned", "open": ["think"], "close": [], "key": "mid", "owner": "who.name"})
    out["dotty-strict"] = Profile.model_validate(strict)
    return out


PROFILES = _all_profiles()
FAST = {name for name, p in PROFILES.items() if p._decoder.decode is not p._decoder.decode_exact}
DECLINED = object()


def _fast_only(dec: Decoder) -> Any:
    """The fast path alone: what it hands on to the exact decode is DECLINED instead."""
    assert dec._fast is not None
    source, namespace = dec._fast
    ns = dict(namespace, _exact=lambda text, received_at: DECLINED)
    exec(compile(source, "<fast path alone>", "exec"), ns)
    return ns["decode"]


def _check(profile: Profile, text: Any) -> Event | Frame:
    dec = profile._decoder
    got, want = dec.decode(text, 2.5), dec.decode_exact(text, 2.5)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))  # (repr and == of a frame of 1,000 levels; the decodes ran as ever)
    try:
        _same(got, want)
        # Every field, those repr leaves out too (nbytes, error_detail, raw).
        assert [repr(getattr(got, name)) for name in _field_names(got)] == \
            [repr(getattr(want, name)) for name in _field_names(want)]
        if isinstance(want, Frame):
            assert isinstance(got, Frame) and got.raw == want.raw and type(got.raw) is type(want.raw)
    finally:
        sys.setrecursionlimit(limit)
    return got


def test_the_fast_path_is_where_it_pays() -> None:
    """netra (the common case) has it; a profile whose frames it would often hand on has none (ag-ui: payload checks
    read the dict; `where` matches walk it; unknown types ignored keep it)."""
    assert {"netra", "rootlast", "dotty-strict"} <= FAST
    assert not FAST & {"ag-ui", "dotty", "openai-chat-completions", "langgraph-astream-events", "anthropic-messages"}


def netra_chat(i: int) -> list[str]:
    """One chat as agentsim writes it (agentsim/server.py `_frame`)."""
    from bench.decode_frames import netra_chat as chat

    return chat(i)


def test_the_fast_path_serves_the_common_netra_frames() -> None:
    profile = PROFILES["netra"]
    fast = _fast_only(profile._decoder)
    welcome = '{"type":"connection_established","data":{"connection_id":"c-1","user_id":"anon-1"},"timestamp":1.5}'
    error = ('{"type":"agent_error","run_id":"r","seq":9,"payload":{"error_code":"TOOL_FAILED","error_message":"no",'
             '"is_recoverable":true}}')
    for text in [*netra_chat(0), *netra_chat(7), error]:
        got = fast(text, 2.5)
        assert isinstance(got, Event), text
        _same(got, profile._decoder.decode_exact(text, 2.5))
    assert fast(welcome, 2.5) is DECLINED and fast('{"type":"ping"}', 2.5) is DECLINED


def _span_keys(profile: Profile) -> list[str]:
    return [k for sp in profile.spans for k in (sp.key, sp.key_fallback, sp.owner) if k]


def _leaf_names(dec: Decoder, field: str) -> list[list[str]]:
    """Where a field (or a span's key) may be: each plain name in each lookup container, each dotted path (as paths
    of keys)."""
    out: list[list[str]] = []
    for step in dec.names.get(field) or _split_names([field]):
        if isinstance(step, tuple):
            out += [[*path, name] for path in dec.containers for name in step]
        else:
            out.append(list(step))
    return out


def _put(frame: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    at = frame
    for key in path[:-1]:
        below = at.get(key)
        if not isinstance(below, dict):
            below = at[key] = {}
        at = below
    at[path[-1]] = value
    return frame


# Values written into the text as they are (the JSON the server sent), in place of a field's value.
HOSTILE = [
    "null", "true", "false", "0", "-0", "-0.0", "1", "1.0", "1e5", "1E-400", "-1", "3.5",
    str(2**63 - 1), str(2**63), str(-(2**63)), str(-(2**63) - 1), str(2**64 - 1), str(2**64), str(-(2**64)),
    "123456789012345678901234567890", "1" * 4301, "1" * 5000, "1e400", "-1e400", "1.5e308",
    "NaN", "Infinity", "-Infinity", "[]", "[1]", "{}", '{"a":1}', '""', '"x"', json.dumps("x" * MAX_ID_BYTES),
    json.dumps("x" * (MAX_ID_BYTES + 1)), json.dumps("é" * MAX_ID_BYTES), json.dumps("\U0001F600" * (MAX_ID_BYTES + 1)),
    json.dumps("t" * MAX_TIME_BYTES), json.dumps("t" * (MAX_TIME_BYTES + 1)), '"\\ud800"', '"\\udc00\\ud800"',
    '"\\ud83d\\ude00"', '"a\\u0000b"', '"\\u00e9"', '"\x7f"', '"\x01"', '"tab\\there"', '"\\x41"',
    "[" * 200 + "]" * 200, "[" * 1100 + "]" * 1100, '{"a":' * 990 + "1" + "}" * 990,
]
FIELDS = ["type", "run_id", "seq", "thread_id", "user_id", "message_id", "timestamp", "tool_call_id", "tool_name",
          "recoverable", "error_code", "error_message", "parent_run_id"]
MARK = "\x00MARK\x00"


def _bases(profile: Profile) -> list[dict[str, Any]]:
    """An event frame of each kind of the profile's types (plain, with a span or tool fields, an error), every field
    at its first place, with regular values."""
    dec = profile._decoder
    kinds: dict[str, str] = {}
    for t, role in dec.always.items():
        kind = "error" if role is Role.ERROR_EVENT else "span" if t in dec.span_of or role.value in dec.span_of \
            else "tool" if role in (Role.TOOL_EXECUTING, Role.TOOL_COMPLETED) else "plain"
        kinds.setdefault(kind, t)
    types = list(kinds.values()) + [t for t in dec.unmapped if not t.endswith("*")][:1]
    bases = []
    for t in types:
        frame: dict[str, Any] = {}
        for field, value in (("run_id", "r-1"), ("seq", 3), ("thread_id", "t-1"), ("user_id", "u-1"),
                             ("message_id", "m-1"), ("timestamp", 1796471465.5871427), ("tool_call_id", "c-1"),
                             ("tool_name", "lookup"), ("recoverable", True), ("error_code", "E"),
                             ("error_message", "went wrong"), ("parent_run_id", "r-0")):
            paths = _leaf_names(dec, field)
            if paths:
                _put(frame, paths[0], value)
        for key in _span_keys(profile):
            if key not in dec.names:
                _put(frame, _leaf_names(dec, key)[0], "k-1")
        for path in _leaf_names(dec, "type")[:1]:
            _put(frame, path, t)
        bases.append(frame)
    return bases


def _variants(profile: Profile) -> list[str]:
    """Each base frame with each field, in each place it may be, given each hostile value; the base frames with a
    duplicate key, a container that is no object, a deep or odd value in a key nobody reads, text around them."""
    dec = profile._decoder
    out: list[str] = []
    for base in _bases(profile):
        text = json.dumps(base)
        out.append(text)
        for field in [*FIELDS, *_span_keys(profile)]:
            for path in _leaf_names(dec, field):
                marked = _put(json.loads(text), path, MARK)
                template = json.dumps(marked)
                if json.dumps(MARK) not in template:
                    continue
                out += [template.replace(json.dumps(MARK), value) for value in HOSTILE]
        body = text[1:-1]
        out += [
            "{" + body + "," + body + "}",  # every key twice, the same
            '{"zz":' + "[" * 990 + "]" * 990 + "," + body + "}",
            '{"zz":' + "[" * 1020 + "]" * 1020 + "," + body + "}",
            '{"zz":' + "[" * 5000 + "]" * 5000 + "," + body + "}",
            '{"zz":1e400,' + body + "}", '{"zz":' + "9" * 5000 + "," + body + "}", '{"zz":NaN,' + body + "}",
            '{"zz":"\\ud800",' + body + "}", '{"zz":"' + "\udcff" + '",' + body + "}",
            " \n\t" + text + " \r\n", "\ufeff" + text, text + "x", text + "{}", text + "\x0c", text + "\u00a0",
            "[" + text + "]", text.replace(":", " : "),
        ]
        for key in base:  # a key again, last: its value wins (orjson's dicts and the Struct alike)
            for value in ("null", '"other"', "3", "[]", '{"type":"x"}', json.dumps(base[key])):
                out.append("{" + body + f",{json.dumps(key)}:{value}" + "}")
                out.append("{" + f"{json.dumps(key)}:{value}," + body + "}")
        for path in dec.containers:  # a lookup container that is not an object, or twice
            if path:
                for value in ("3", '"s"', "[]", "[{}]", "null", "true", "{}"):
                    out.append(json.dumps(_put(json.loads(text), path, MARK)).replace(json.dumps(MARK), value))
    return out


NON_OBJECTS = ["[]", "[1, 2]", "3", "-1e400", '"agent_started"', "null", "true", "", " ", "{}", '{"type":""}',
               '{"type":null}', '{"type":5}', '{"type":"zz_unknown"}', '{"type":"' + "t" * 1025 + '"}',
               b'{"type":"agent_started","run_id":"r"}', bytearray(b"{}"), b"\xff\xfe", "[" * 3000 + "]" * 3000]


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_fast_and_exact_agree_on_hostile_frames(name: str) -> None:
    profile = PROFILES[name]
    for text in [*_variants(profile), *NON_OBJECTS, *(text for _label, text in PINNED_FRAMES)]:
        _check(profile, text)


@pytest.mark.parametrize("name", sorted(FAST))
def test_the_hostile_frames_reach_the_fast_path(name: str) -> None:
    """Not vacuous: for each profile with a fast path, the corpus has frames it serves and frames it hands on."""
    profile = PROFILES[name]
    fast = _fast_only(profile._decoder)
    served = [text for text in _variants(profile) if fast(text, 2.5) is not DECLINED]
    assert len(served) > 20
    assert any(fast(text, 2.5) is DECLINED for text in _variants(profile))


def test_nesting_at_the_interpreters_limit() -> None:
    """Nesting near the recursion limit, where msgspec, orjson and json each give up at their own depth: one answer,
    in a key nobody reads and in one that is read, called from shallow and from deep in the stack."""
    profile = PROFILES["netra"]
    limit = sys.getrecursionlimit()

    def deep(depth: int) -> None:
        if depth > 0:
            deep(depth - 1)
            return
        for n in range(limit - 40, limit + 40, 3):
            for key in ("zz", "run_id", "payload"):
                _check(profile, f'{{"type":"agent_started","seq":1,"{key}":' + "[" * n + "]" * n + "}")
                _check(profile, f'{{"type":"agent_started","seq":1,"{key}":' + '{"a":' * n + "1" + "}" * n + "}")

    deep(0)
    deep(limit // 3)


def test_floats_read_alike() -> None:
    """A timestamp is kept as the float the text is: msgspec's parse of it is orjson's, digit for digit."""
    import random

    rng = random.Random(25)
    profile = PROFILES["netra"]
    texts = ["0.1", "1796471465.5871427", "5e-324", "2.2250738585072014e-308", "1.7976931348623157e308",
             "9007199254740993.0", "0.30000000000000004", "1e23", "8.98846567431158e307"]
    texts += [repr(rng.uniform(-1e20, 1e20)) for _ in range(300)]
    texts += [f"{rng.randrange(10**17)}.{rng.randrange(10**20):020d}e{rng.randrange(-330, 310)}" for _ in range(300)]
    for t in texts:
        got = _check(profile, '{"type":"agent_started","run_id":"r","seq":1,"timestamp":' + t + "}")
        if math.isfinite(float(t)):  # (past a double's range: json's HugeNumber, as ever)
            assert isinstance(got, Event) and repr(got.server_time) == repr(orjson.loads(t))


@SETTINGS
@given(frame=GENERATED_FRAMES)
def test_fast_and_exact_agree_on_generated_frames(frame: dict[str, Any]) -> None:
    texts = [json.dumps(frame)]  # NaN and integers past 64 bits too
    try:
        texts.append(orjson.dumps(frame).decode())
    except TypeError:  # an integer past 64 bits
        pass
    for profile in PROFILES.values():
        for text in texts:
            _check(profile, text)


@pytest.mark.parametrize("key", ['say "hi"', "back\\slash", "nul\x00", "tab\there", "line\nfeed", "\x1f",
                                 "lone\ud800"])
def test_a_name_msgspec_will_not_take_is_read_by_the_exact_decode(key: str) -> None:
    """A profile's name with a '"', a backslash or a control character (a JSON key may hold any, escaped): msgspec
    takes none for a Struct field's name, and the fast path's defstruct raised ValueError at the first frame's decode
    (a traceback mid-run). Such a profile has no fast path; its frames read as ever, the key found."""
    profile = Profile.model_validate({
        "name": "odd-keys", "request": {"kind": "ask"}, "lookup": ["", "env"], "unknown_types": "violation",
        "fields": {"type": ["kind"], "run_id": [key], "seq": ["n"], "message_id": [f"deep.{key}"]},
        "roles": {"agent_started": ["begin"], "agent_completed": ["done"], "error_event": ["oops"]}})
    dec = profile._decoder
    frame = json.dumps({"kind": "begin", "n": 2, "env": {key: "r-1"}, "deep": {key: "m-1"}})
    got = _check(profile, frame)
    assert isinstance(got, Event) and (got.run_id, got.message_id, got.seq) == ("r-1", "m-1", 2)
    assert dec.decode is dec.decode_exact  # no fast path for this profile; netra's keeps its own
    assert PROFILES["netra"]._decoder.decode is not PROFILES["netra"]._decoder.decode_exact


def test_a_span_keyed_by_the_empty_name_is_read_as_the_exact_decode_reads_it(tmp_path: Path) -> None:
    """`key: ""` (a span keyed by the frame's field named "", which JSON allows) loaded and passed every check, then
    the fast path's compile failed at the first connection: a ValueError traceback from `chatprobe run` and `check`
    where the profile was accepted. The fast path reads the key as the exact decode does (its fallback when the
    frame has no such field), and a run with the profile against agentsim is judged as with netra's own."""
    import subprocess

    text = (Path(__file__).parents[2] / "harness" / "profiles" / "netra.yaml").read_text()
    assert "    key: tool_call_id\n" in text
    path = tmp_path / "empty-key.yaml"
    path.write_text(text.replace("    key: tool_call_id\n", '    key: ""\n'))
    profile = Profile.model_validate(yaml.safe_load(path.read_text()))
    assert profile._decoder.decode is not profile._decoder.decode_exact  # a fast path, and it agrees
    for frame in ({"type": "tool_executing", "run_id": "r", "seq": 3, "": "call-1", "tool_name": "calc"},
                  {"type": "tool_executing", "run_id": "r", "seq": 3, "payload": {"": "call-2"}},
                  {"type": "tool_completed", "run_id": "r", "seq": 4, "tool_name": "calc"},
                  {"type": "tool_completed", "run_id": "r", "seq": 4, "": 5},
                  {"type": "tool_completed", "run_id": "r", "seq": 4, "": "x" * (MAX_ID_BYTES + 1)}):
        _check(profile, json.dumps(frame))
    assert _check(profile, json.dumps({"type": "tool_executing", "run_id": "r", "": "c1"})).span == \
        ("tool call", "open", "c1")
    proc = subprocess.run([sys.executable, "-m", "harness", "run", "basic", "--profile", str(path), "-q",
                           "--sim-seed", "1"], cwd=Path(__file__).parents[2], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
