"""The request and resume templates filled by fillers made once per template: the same frames as the recursive fill
they replaced (kept here as the reference), for the built-in profiles and for generated templates and values."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.profiles import _GENERATED_ENTRIES_MAX, _MISSING, _Blank, _filler, load_profile


def reference_fill(template: Any, values: dict[str, Any]) -> Any:
    if isinstance(template, dict):
        out = {}
        for k, v in template.items():
            filled = reference_fill(v, values)
            if filled is _MISSING:
                continue
            out[k] = filled
        return out
    if isinstance(template, list):
        return [x for x in (reference_fill(v, values) for v in template) if x is not _MISSING]
    if isinstance(template, str) and "{" in template:
        if template.startswith("{") and template.endswith("}") and template.count("{") == 1:
            name = template[1:-1]
            v = values.get(name)
            return _MISSING if v is None else v
        try:
            return template.format_map(_Blank(values))
        except (ValueError, IndexError):
            return template
    return template


NAMES = ["content", "thread_id", "run_id", "message_id", "user_id", "last_seq", "x"]
STRINGS = (st.sampled_from([f"{{{n}}}" for n in NAMES] + ["{content} and {x}", "{0}", "{", "}", "{{x}}", "{a}{b}",
                                                         "plain", "", "{content", "content}"]) | st.text(max_size=6))
LEAVES = STRINGS | st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
TEMPLATES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                            max_size=4), max_leaves=12)
VALUES = st.dictionaries(st.sampled_from(NAMES), st.none() | st.text(max_size=4) | st.integers(), max_size=len(NAMES))


@settings(max_examples=300, deadline=None)
@given(template=TEMPLATES, values=VALUES)
def test_filler_is_the_recursive_fill(template: Any, values: dict[str, Any]) -> None:
    assert _outcome(lambda: _filler(template)(values)) == _outcome(lambda: reference_fill(template, values))


def _outcome(fill: Callable[[], Any]) -> str:
    try:
        return repr(fill())
    except Exception as exc:  # "{a.b}": str.format's own error, raised by both alike
        return type(exc).__name__


def test_built_in_requests_and_resumes() -> None:
    values = {"content": "hi {there}", "thread_id": "t1", "run_id": None, "message_id": "m1", "user_id": "u1"}
    for name in ("netra", "ag-ui"):
        profile = load_profile(name)
        first = profile.build_request(**values)
        assert first == reference_fill(profile.request, values)
        again = profile.build_request(**values)
        assert again == first and again is not first  # a new frame each time: a caller may change it
        if profile.resume is not None:
            assert profile.build_resume("r1", 7) == reference_fill(profile.resume, {"run_id": "r1", "last_seq": 7})
    netra = load_profile("netra")
    assert netra.build_request(**values) == {"type": "user_message", "payload": {
        "content": "hi {there}", "thread_id": "t1", "message_id": "m1"}}  # no run id: the key is left out


def test_a_replaced_template_is_filled_as_it_is_now() -> None:
    profile = load_profile("netra")
    profile.build_request(content="a")
    profile.request = {"type": "chat", "text": "{content}"}
    assert profile.build_request(content="b") == {"type": "chat", "text": "b"}


def test_templates_about_the_generated_fillers_bound_fill_as_the_recursive_fill() -> None:
    """A dict template's filler is generated up to _GENERATED_ENTRIES_MAX entries (nested dicts counted), filled by the
    loop past it: the same frames either side, keys in the template's order, odd keys and constants as they are."""
    values = {"content": "hi", "thread_id": None, "run_id": "r1"}
    for n in (_GENERATED_ENTRIES_MAX - 1, _GENERATED_ENTRIES_MAX, _GENERATED_ENTRIES_MAX + 1, 3 * _GENERATED_ENTRIES_MAX):
        inner = {f'k"{i}\n': ["{content}", i, None, 1.5, float("inf"), True][i % 6] for i in range(n - 3)}
        template = {"type": "chat", "payload": inner, "thread": "{thread_id}", "run": "id {run_id}"}  # n + 1 entries
        generated = _filler(template).__code__.co_filename == "<request filler>"
        assert generated == (n + 1 <= _GENERATED_ENTRIES_MAX)
        assert repr(_filler(template)(values)) == repr(reference_fill(template, values))
        again = _filler(template)(values)
        assert again == _filler(template)(values) and again["payload"] is not _filler(template)(values)["payload"]
