"""Load YAML data files into pydantic models with errors that name the file, line and field."""
from __future__ import annotations

import datetime
import json
import os
import re
import select
import stat
import time
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .catalog import builtin_names
from .errors import ConfigError, closest

__all__ = ["ConfigError", "did_you_mean"]

M = TypeVar("M", bound=BaseModel)


_NO_KEY = object()


def _key_value(key_node: yaml.Node) -> Any:
    """The value a mapping's key is read as (`true` the boolean, `~` None), or _NO_KEY."""
    loader = _LOADER("")
    try:
        return loader.construct_object(key_node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError):
        return _NO_KEY
    finally:
        loader.dispose()


def _resolve(node: yaml.Node | None, loc: tuple[Any, ...], at_key: bool = False,
             bad_key: Any = _NO_KEY) -> tuple[int | None, list[str]]:
    """Follow a pydantic error location through the YAML node tree: the line it points at (with `at_key`, the
    line of the last key itself, not of its value: a key not taken) and the field path as the file spells it
    (union tags and model names, which are not in the file, are dropped). With `bad_key`, the last part is a key
    that is no text (pydantic's "Keys should be strings": `true:` is located as 1, `~:` as 'None'): the key read as
    that value, at its own line and as the file writes it."""
    line = node.start_mark.line + 1 if node is not None else None
    shown: list[str] = []
    for i, part in enumerate(loc):
        nxt = key_at = None
        if isinstance(node, yaml.MappingNode) and bad_key is not _NO_KEY and i == len(loc) - 1:
            for key_node, _ in node.value:
                value = _key_value(key_node)
                if type(value) is type(bad_key) and value == bad_key:
                    shown.append(key_node.value if isinstance(key_node, yaml.ScalarNode) else "?")
                    return key_node.start_mark.line + 1, shown
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    nxt, key_at = value_node, key_node
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            nxt = node.value[part]
        if nxt is None:
            # A field missing from a mapping: named, though not in the file; `[key]`: the mapping key is what is wrong.
            # Not a union's tag after a value that is no mapping (steps.0.chat.chat: the step's value is wrong).
            # An empty file (no node at all): the field it lacks, as an empty mapping would.
            if i == len(loc) - 1 and (part == "[key]" or (isinstance(node, yaml.MappingNode) or node is None and i == 0)
                                      and not (isinstance(part, str) and part[:1].isupper())):
                shown.append(str(part))
            continue
        shown.append(str(part))
        node = nxt
        line = (key_at if at_key and key_at is not None and i == len(loc) - 1 else node).start_mark.line + 1
    return line, shown


# Keys of k6 and Locust that users bring along, and what they are called here: k6's options, its arrival-rate
# executors' keys (a rate per second here, its dropped iterations our max_in_flight) and its metrics' names as
# thresholds name them (an SSE chat's whole response, or a WebSocket session, is a chat; its waiting, the first event).
_FOREIGN_KEYS = {"target": "users", "vus": "users", "iterations": "chats_per_user", "thresholds": "objectives",
                 "rampup": "ramp_up", "spawn_rate": "ramp_up", "wait_time": "think_time",
                 "rate": "arrival_rate", "maxVUs": "max_in_flight", "preAllocatedVUs": "max_in_flight",
                 "http_req_duration": "chat_duration", "ws_session_duration": "chat_duration",
                 "iteration_duration": "chat_duration", "http_req_waiting": "time_to_first_event",
                 "http_req_failed": "error_ratio", "checks": "passed_ratio"}
# k6's keys with no one key meant: what to write instead.
_FOREIGN_NOTES = {
    "timeUnit": "k6's timeUnit: arrival_rate and a stage's rate are chats per second (k6's rate 30 per timeUnit 1m "
                "is arrival_rate: 0.5)",
    "executor": "k6's executor: the keys give the load model, users and chats_per_user (closed), stages, or "
                "arrival_rate with duration (open); docs/scenarios.md",
    # Locust's -t / run-time (a locust.conf key): its users held for a time.
    "run_time": "Locust's run_time: users held for a time are stages: [{duration: 5m, users: N, ramp: false}] "
                "(max_duration bounds the whole scenario)",
}
_FOREIGN_NOTES["run-time"] = _FOREIGN_NOTES["run_time"]


def _model_keys(model: type[BaseModel]) -> set[str]:
    """Every key the model and the models under it take (a misspelt key is matched against them all)."""
    keys: set[str] = set()
    seen: set[type] = set()
    todo: list[Any] = [model]
    while todo:
        tp = todo.pop()
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp in seen:
                continue
            seen.add(tp)
            for name, info in tp.model_fields.items():
                keys.add(info.alias or name)
                todo.append(info.annotation)
        else:
            todo.extend(getattr(tp, "__args__", ()))
    return keys


def did_you_mean(key: Any, model: type[BaseModel] | None) -> str:
    if model is None or not isinstance(key, str):
        return ""
    known = _model_keys(model)
    if key in _FOREIGN_KEYS and _FOREIGN_KEYS[key] in known:
        return f" (did you mean '{_FOREIGN_KEYS[key]}'?)"
    if key in _FOREIGN_NOTES and "arrival_rate" in known:
        return f" ({_FOREIGN_NOTES[key]})"
    # Not the key itself: it is a key of another mapping (a stage's `rate`, a latency's `p95` under a ratio).
    meant = closest(key, known)
    return f" (did you mean '{meant}'?)" if meant else ""


def format_validation_error(path: str, err: ValidationError, node: yaml.Node | None,
                            model: type[BaseModel] | None = None) -> str:
    errors = err.errors()
    # The problem the file shows first: pydantic lists a misspelt key (`mesage:` on line 3) after the fields'
    # own errors (`expect:` on line 4), and one fix at a time should go down the file, not up.
    def place(e: Any) -> tuple[int | None, list[str]]:
        loc = tuple(e["loc"])
        if loc[-1:] == ("[key]",):
            # A key a mapping's key type refuses (`targets: {a b: …}`, `targets: {on: …}`): pydantic locates it as
            # (…, key, "[key]"), the key mangled when it is no text (1 for true, 'None' for null); named as written
            # (`[key]` after it: the key is what is wrong), at its own line, not at its value's.
            line, shown = _resolve(node, loc[:-1], bad_key=e.get("input"))
            return line, [*shown, "[key]"]
        return _resolve(node, loc, at_key=e["type"] == "extra_forbidden",
                        bad_key=e.get("input") if e["type"] == "invalid_key" else _NO_KEY)

    first = min(errors, key=lambda e: place(e)[0] or 0)
    if any(e["type"] == "missing" for e in errors):
        # A misspelt required key is two errors, the key missing and the key not taken: the misspelling is the one
        # to name, with the key meant, rather than "Field required" for a key the user believes they wrote.
        first = next((e for e in errors if e["type"] == "extra_forbidden" and e["loc"]
                      and did_you_mean(e["loc"][-1], model)), first)
    line, shown = place(first)
    field = ".".join(_part_text(part) for part in shown) or "(top level)"
    where = f"{path}:{line}" if line else path
    more = len(errors) - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    hint = did_you_mean(first["loc"][-1], model) if first["type"] == "extra_forbidden" and first["loc"] else ""
    is_key = first["type"] == "invalid_key" or tuple(first["loc"])[-1:] == ("[key]",)
    if first["type"] == "string_type" and isinstance(first.get("input"), bool) and not is_key:
        # YAML 1.1's booleans: `message: no`, `name: on`, `user: yes` are read as false/true, not as the word written.
        hint = (f" (YAML read the value as the boolean {str(first['input']).lower()}: a word such as no, yes, on or off "
                "is text only in quotes, e.g. 'no')")
    if is_key and shown and not isinstance(first.get("input"), str):
        # `true:`, `no:`, `null:`, `1:` as a key: YAML 1.1 reads it as a boolean, null or number, not as the name.
        written = shown[-2] if shown[-1] == "[key]" and len(shown) > 1 else shown[-1]
        value = first.get("input")
        read = ("null" if value is None else f"the boolean {str(value).lower()}" if isinstance(value, bool) else
                "a date" if isinstance(value, datetime.date) else f"the number {value!r}")
        hint = f" (YAML read the key {written} as {read}: a key that is a name such as no, on or 1 is text only in quotes)"
    elif first["type"] == "string_type" and isinstance(first.get("input"), datetime.date) and not is_key:
        example = "" if isinstance(first["input"], datetime.datetime) else f", e.g. '{first['input']}'"
        hint = f" (YAML read the value as a date: text that looks like one is text only in quotes{example})"
    return f"{where}: field '{field}': {first['msg']}{hint}{tail}"


# A configuration file is small: these bound what a hostile or mistaken file (a device, an alias bomb, deep
# nesting, a flood of values) can cost before it is rejected. Every config of chatprobe nests fewer than ten levels.
MAX_FILE_BYTES = 1024 * 1024
PIPE_DEADLINE = 30.0  # seconds a file that is not a regular one (a pipe, a device) has to deliver its text
MAX_ALIASES = 20
MAX_DEPTH = 64
# Values in the file, and again with its aliases expanded: real configurations hold hundreds; this many take
# PyYAML (libyaml) and pydantic about half a second.
MAX_NODES = 25_000
# libyaml when PyYAML has it (its wheels do): the pure-Python parser needs tens of seconds for a 1 MiB file.
_BASE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# YAML 1.1's base-60 numbers (PyYAML reads `deadline: 1:30` as the integer 90, `1:30:00` as 5400): a plain scalar of
# that form stays the text it is (as YAML 1.2 reads it), for the field to take or refuse by its own grammar; a
# duration says what it is (durations.parse_duration), never 90 s of what may have meant 1h30m.
SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")


class ValueProblem(yaml.MarkedYAMLError):
    """A scalar YAML resolved to a type whose value cannot be built: an integer of more digits than Python converts
    (`users: 999…` past 4,300 digits), a date that is none (`message: 2001-02-29`, read as a date). Marked with the
    scalar's place, so the message names its line and field, as every other mistake in a file is named."""


class _Loader(_BASE_LOADER):  # type: ignore[misc]
    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode and implicit[0] and SEXAGESIMAL.fullmatch(value):
            return "tag:yaml.org,2002:str"
        return super().resolve(kind, value, implicit)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # (at the scalar itself: a collection's values are built inside)
            raise ValueProblem(problem=_value_problem(node, exc), problem_mark=node.start_mark) from None


def _value_problem(node: yaml.Node, exc: Exception) -> str:
    """Why a scalar YAML typed cannot be built, in words: never the scalar whole (it may be a megabyte of digits)."""
    text = node.value if isinstance(node, yaml.ScalarNode) else ""
    shown = text if len(text) <= 40 else text[:37] + "..."
    if node.tag == _INT_TAG:
        digits = sum(c.isdigit() for c in text)
        return f"an integer of {digits} digits cannot be read; too long to be a value of a configuration"
    if node.tag == _TIMESTAMP_TAG:
        return (f"{shown} is read by YAML as a date, and is none ({exc}); if it is text, quote it: "
                + "'" + shown.replace("'", "''") + "'")
    return f"{shown} cannot be read as {node.tag.rsplit(':', 1)[-1]}: {str(exc)[:120]}"


_LOADER: Any = _Loader
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
# YAML 1.1's other readings of a number that its writer may well not have meant: an integer with a leading 0 is octal
# (PyYAML reads `deadline: 010` as 8, YAML 1.2 and most people as 10), and an explicit `!!int 1:30` (or `!!float`)
# tag still asks for base-60 (90), which the plain form is kept from above. Neither is guessed: the file is refused,
# naming the line and field (number_problem). Hexadecimal (`0x1A`), binary (`0b101`) and digits grouped with `_`
# (`1_000`) say plainly what they are, as in Python, and are read so.
LEADING_ZERO = re.compile(r"[-+]?0[0-9_]+")


# What a field takes, for the advice on a number YAML 1.1 misreads (number_problem): a number (write the number
# meant), text (quote what was written: an id such as `thread_id: 0042` is the text 0042, never 34 nor 42), or either
# (a template's value, sent as written: both ways said).
NUMBER, TEXT, EITHER = "number", "text", "either"


def number_problem(node: yaml.Node | None, kind: str = NUMBER) -> str | None:
    """Why a scalar that YAML 1.1 reads as a number must not be read so (above), or None; the advice is for a field
    that takes `kind` (NUMBER, TEXT or EITHER)."""
    if not isinstance(node, yaml.ScalarNode) or node.tag not in (_INT_TAG, _FLOAT_TAG):
        return None
    text = node.value.strip()
    shown = text if len(text) <= 40 else text[:37] + "..."
    quoted = "'" + shown.replace("'", "''") + "'"
    if ":" in text:
        if kind == TEXT:
            return (f"{shown} is tagged as YAML 1.1's base-60 number (1:30 is 90), but this field is text: write it "
                    f"in quotes without the tag, {quoted}")
        return (f"{shown} is YAML 1.1's base-60 number (1:30 is 90), which may as well mean hours:minutes; write "
                "the number meant (a duration with its units: 1m30s, 1h30m)")
    if node.tag != _INT_TAG or not LEADING_ZERO.fullmatch(text):
        return None
    sign, digits = ("-" if text[0] == "-" else ""), text.lstrip("+-").replace("_", "")
    octal = f"{sign}{int(digits, 8)}" if len(digits) <= 30 and set(digits) <= set("01234567") else None
    if kind == TEXT:
        read = f"the number {octal} (octal)" if octal is not None else "an octal number"
        return (f"{shown} has a leading 0: YAML 1.1 reads it as {read}, not the text {shown}; this field is text: "
                f"quote it, {quoted}")
    if len(digits) > 30:  # (no int() of a megabyte of digits)
        return f"{shown} has a leading 0: YAML 1.1 reads such an integer as octal; write it without the leading 0"
    decimal = f"{sign}{int(digits)}"
    if kind == EITHER:
        return (f"{shown} has a leading 0: YAML 1.1 reads it as octal{f' {octal}' if octal is not None else ''}; "
                f"write {decimal} for the number, or quote it, {quoted}, for the text")
    if octal is not None:
        if octal == decimal:
            return f"{shown} has a leading 0: YAML 1.1 reads it as octal; write {decimal} without it"
        return (f"{shown} has a leading 0: YAML 1.1 reads it as octal {octal}, YAML 1.2 as {decimal}; write {decimal} "
                f"(or {octal}) without the leading 0")
    return f"{shown} has a leading 0: YAML 1.1 reads such an integer as octal; write {decimal} without it"


def field_kind(model: type[BaseModel] | None, parts: list[Any], key: bool = False) -> str:
    """What the field at `parts` (keys and indexes from the top of the file) of `model` takes: TEXT when only text,
    EITHER when it takes anything (a template's value), else NUMBER (a number field, or one the model does not
    tell: the advice is then the number's, as ever). With `key`, what the last part, a mapping's key, must be."""
    if model is None:
        return NUMBER
    kinds = _kinds(model, parts[:-1], key_of=True) if key else _kinds(model, parts)
    if kinds == {TEXT}:
        return TEXT
    return EITHER if kinds == {EITHER} else NUMBER


def _kinds(tp: Any, parts: list[Any], key_of: bool = False) -> set[str]:
    """The kinds of scalar the annotation `tp` takes at `parts` below it (TEXT, NUMBER, EITHER, or "other"); with
    `key_of`, the kinds of the keys of the mapping there. Empty where the model says nothing of that place."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _kinds(typing.get_args(tp)[0], parts, key_of)
    if origin in (typing.Union, types.UnionType):
        found: set[str] = set()
        for member in typing.get_args(tp):
            if member is not type(None):
                found |= _kinds(member, parts, key_of)
        return found
    args = typing.get_args(tp)
    if tp is Any:  # a template's value: sent as written, whatever it is (the keys of its objects are text)
        return {TEXT} if key_of and not parts else {EITHER}
    if not parts:
        if key_of:
            return _kinds(args[0], []) if origin in (dict, Mapping) and args else set()
        if tp is str:
            return {TEXT}
        if origin is typing.Literal:
            return {TEXT} if all(isinstance(a, str) for a in args) else {NUMBER}
        if tp is not bool and isinstance(tp, type) and issubclass(tp, (int, float)):
            return {NUMBER}
        return {"other"}
    part, rest = parts[0], parts[1:]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for name, info in tp.model_fields.items():
            if part in (name, info.alias):
                return _kinds(info.annotation, rest, key_of)
        return set()
    if origin in (list, tuple, set, frozenset, Sequence) and isinstance(part, int):
        return _kinds(args[0] if args else Any, rest, key_of)
    if origin in (dict, Mapping):
        return _kinds(args[1] if len(args) > 1 else Any, rest, key_of)
    return set()


def load_scalar(text: str) -> Any:
    """One value's text (a flag's) as a configuration file reads it (`1:30` stays text there too); a number written
    as a file may not write it (number_problem) is a ConfigError with the reason."""
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        problem = number_problem(node)
        if problem is not None:
            raise ConfigError(problem)
        return loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()


def _part_text(part: Any) -> str:
    """A key as a message shows it: a key may be a megabyte long."""
    text = str(part)
    return text if len(text) <= 40 else text[:40] + "…"


def _path_text(parts: list[Any]) -> str:
    shown = ".".join(str(p)[:40] for p in parts[:4])  # a key may be a megabyte long
    return shown + ("…" if len(parts) > 4 else "") or "(top level)"


def _check_events(text: str, path: str) -> None:
    """One pass over the event stream, before anything is composed: depth, value count and aliases are checked as
    they come, so a file nested 500,000 levels deep is refused at level 65 instead of costing minutes (PyYAML's
    scanner works per open level on every token, and its composer recurses)."""
    # Per open collection: [is_mapping, children so far, last key]; the path shown names where it went wrong.
    stack: list[list[Any]] = []
    anchors: list[str | None] = []  # the anchor of each open collection: an alias of one is the collection in itself
    nodes = aliases = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.CollectionEndEvent):
            stack.pop()
            anchors.pop()
            continue
        if not isinstance(event, yaml.NodeEvent):
            continue
        line = event.start_mark.line + 1 if event.start_mark is not None else 0
        if stack:
            top = stack[-1]
            if top[0] and top[1] % 2 == 0:  # a mapping's key
                top[2] = event.value if isinstance(event, yaml.ScalarEvent) else "?"
            top[1] += 1
        nodes += 1
        if nodes > MAX_NODES:
            raise ConfigError(f"{path}:{line}:{_field_text(_open_parts(stack))} more than {MAX_NODES} values; too "
                              "large to be a configuration")
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise ConfigError(f"{path}:{line}:{_field_text(_open_parts(stack))} more than {MAX_ALIASES} YAML "
                                  "aliases; refusing to expand them")
            if event.anchor in anchors:  # `a: &x [*x]`: a value that holds itself, endless to any reader
                raise ConfigError(f"{path}:{line}:{_field_text(_open_parts(stack))} the alias *{_part_text(event.anchor)}"
                                  f" is inside the value its anchor &{_part_text(event.anchor)} names (a value that "
                                  "holds itself, without end); no configuration is recursive")
        elif isinstance(event, yaml.CollectionStartEvent):
            if len(stack) >= MAX_DEPTH:
                field = _path_text([top[2] if top[0] else top[1] - 1 for top in stack])
                raise ConfigError(f"{path}:{line}: field '{field}': nested too deeply (more than {MAX_DEPTH} "
                                  "levels) to be a configuration")
            stack.append([isinstance(event, yaml.MappingStartEvent), 0, None])
            anchors.append(event.anchor)


def _check_nodes(node: yaml.Node | None, path: str, model: type[BaseModel] | None = None) -> None:
    """Duplicate keys (YAML lets a later key silently replace an earlier one; in a config that is always a mistake),
    numbers YAML 1.1 reads otherwise than they were likely meant (number_problem), and the size with aliases expanded
    (20 aliases that each double a list still make a million values)."""
    sizes: dict[int, int] = {}

    # at: (the parent's `at`, this node's key or index); is_key: the node is that key itself
    def visit(n: yaml.Node, at: tuple[Any, ...], is_key: bool = False) -> int:
        known = sizes.get(id(n))
        if known is not None:  # an alias of a node already checked: only its size counts again
            return known
        problem = number_problem(n)
        if problem is not None and model is not None:  # the advice for what the field takes
            problem = number_problem(n, field_kind(model, _parts(at), is_key))
        if problem is not None:
            parts = _parts(at)
            shown = ".".join(_part_text(p) for p in parts[:12]) + ("…" if len(parts) > 12 else "")
            raise ConfigError(f"{path}:{n.start_mark.line + 1}: field '{shown or '(top level)'}': {problem}")
        size = 1
        if isinstance(n, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in n.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                if isinstance(key_node, yaml.ScalarNode):
                    if key in seen:
                        raise ConfigError(f"{path}:{key_node.start_mark.line + 1}:{_field_text(_parts((at, key)))} "
                                          f"duplicate key {_part_text(key)!r} (first on line {seen[key]}): YAML "
                                          "would keep only the last one")
                    seen[key] = key_node.start_mark.line + 1
                size += visit(key_node, (at, key), True) + visit(value_node, (at, key))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                size += visit(item, (at, i))
        sizes[id(n)] = size
        if size > MAX_NODES:
            raise ConfigError(f"{path}:{n.start_mark.line + 1}:{_field_text(_parts(at))} more than {MAX_NODES} "
                              "values once its aliases are expanded; too large to be a configuration")
        return size

    if node is not None:
        visit(node, ())  # recursion at most MAX_DEPTH deep: _check_events ran first


def _field_text(parts: list[Any]) -> str:
    """" field 'a.b.c':" for a message after "path:line:", or "" at the top level (no field to name)."""
    if not parts:
        return ""
    shown = ".".join(_part_text(p) for p in parts[:12]) + ("…" if len(parts) > 12 else "")
    return f" field '{shown}':"


def _open_parts(stack: list[list[Any]]) -> list[Any]:
    """The field a node just begun is at (`_check_events`'s stack: per open collection [is_mapping, children so far,
    last key], counted with that node): each mapping's last key, each sequence's last index."""
    return [key if is_mapping else children - 1 for is_mapping, children, key in stack]


def _next_parts(stack: list[list[Any]], event: Any = None) -> list[Any]:
    """The field of what comes next in an event stream (`event`, not yet counted; None: unknown, the scanner stopped
    before it): the innermost mapping's key whose value is awaited, or the key `event` is; the innermost sequence's
    next index (when there is an event)."""
    if not stack:
        return []
    parts = _open_parts(stack[:-1])
    is_mapping, children, key = stack[-1]
    if is_mapping and children % 2 == 1:
        parts.append(key)
    elif is_mapping and event is not None:
        parts.append(event.value if isinstance(event, yaml.ScalarEvent) else "?")
    elif not is_mapping and event is not None:
        parts.append(children)
    return parts


def _field_at(text: str, index: int) -> list[Any]:
    """The field (keys and indexes from the top) at the character `index` of the text, where PyYAML found a mistake:
    the key a value at that place sits under, the key itself when the mistake is a key; as far as the file can be
    read up to there (a mistake the scanner meets ends the walk: the field then is the one it was reading)."""
    stack: list[list[Any]] = []
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            if event.start_mark is not None and event.start_mark.index >= index and isinstance(event, yaml.NodeEvent):
                return _next_parts(stack, event)
            if isinstance(event, yaml.CollectionEndEvent):
                stack.pop()
                continue
            if not isinstance(event, yaml.NodeEvent):
                continue
            if stack:
                top = stack[-1]
                if top[0] and top[1] % 2 == 0:
                    top[2] = event.value if isinstance(event, yaml.ScalarEvent) else "?"
                top[1] += 1
            if isinstance(event, yaml.CollectionStartEvent):
                if len(stack) >= MAX_DEPTH:
                    break
                stack.append([isinstance(event, yaml.MappingStartEvent), 0, None])
    except yaml.YAMLError:
        pass
    return _next_parts(stack)


def _yaml_problem(exc: yaml.YAMLError, text: str, mark: Any) -> str:
    """PyYAML's problem in words a person acts on: a tag that would build an object (`!!python/object/apply:…`,
    which a safe loader never does) named as written; a tab where YAML wants spaces said so."""
    problem = getattr(exc, "problem", None) or str(exc)
    tag = re.search(r"constructor for the tag '(tag:yaml\.org,2002:)?([^']{0,200})'", problem)
    if tag is not None:
        # As written: `!!python/…` (YAML's own prefix), a local `!foo` as it is, any other URI in YAML's verbatim form.
        name = tag.group(2)
        shown = f"!!{name}" if tag.group(1) else name if name.startswith("!") else f"!<{name}>"
        return (f"the tag {shown} is not allowed: chatprobe reads plain YAML data (no tag that builds an "
                "object); write the value itself")
    if "unhashable key" in problem:  # `[a]: x`, `{a: 1}: x`, `? [a, b]`
        return ("found a key that is a list or a mapping (`[a]: x`, `? [a, b]`); a key is a name: write it as text "
                "(in quotes if it holds [ ] { } or a comma)")
    if "tab character" in problem:
        return f"{problem}; YAML indents with spaces only"
    if mark is not None and 0 <= mark.index < len(text) and text[mark.index] == "\t":
        return "found a tab character that cannot start any token; YAML indents with spaces only"
    return problem


def _parts(at: tuple[Any, ...]) -> list[Any]:
    """A node's place in the file (_check_nodes's nested `at` pairs) as its keys and indexes from the top."""
    parts: list[Any] = []
    while at:
        at, part = at
        parts.insert(0, part)
    return parts


def _compose_checked(text: str, path: str, model: type[BaseModel] | None = None) -> tuple[yaml.Node | None, Any]:
    """The node tree (for lines in messages) and the data of a file that passed every check; `model`, the fields'
    types, makes the advice on a misread number fit the field (number_problem)."""
    _check_events(text, path)
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        _check_nodes(node, path, model)
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def read_text_file(path: str | Path, what: str = "", limit: int = MAX_FILE_BYTES) -> str:
    """A UTF-8 text file of at most `limit` bytes, or a ConfigError naming it: never a hang, on /dev/zero (the size
    bound) or on a pipe (a FIFO nobody writes to, a terminal): a regular file is read as it is; anything else (`--token-file
    <(vault read …)`, /dev/stdin) must deliver its text within PIPE_DEADLINE seconds."""
    label = f"{what} {path}" if what else str(path)
    try:
        # Non-blocking: opening a FIFO for reading would otherwise wait for a writer, for ever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read: {exc.strerror or exc}") from None
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        raw = _read_bounded(fd, limit + 1, None if regular else time.monotonic() + PIPE_DEADLINE)
    except TimeoutError:
        raise ConfigError(f"{label}: no end of text within {PIPE_DEADLINE:g}s (a pipe or device nobody writes "
                          "to?)") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(raw) > limit:
        raise ConfigError(f"{label}: larger than {limit // 1024} KiB; is this the right file?")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1  # the line to fix, as every other mistake in a file is named
        raise ConfigError(f"{label}:{line}: not UTF-8 text (byte {exc.start}): {exc.reason}") from None


def _read_bounded(fd: int, most: int, deadline: float | None) -> bytes:
    """Up to `most` bytes to the end of the file. With a `deadline` (a pipe, a device), each read waits for data
    first, and past the deadline TimeoutError: a FIFO with no writer yet reads as its end at once, and poll() is what
    waits for one."""
    chunks: list[bytes] = []
    got = 0
    poller = None
    if deadline is not None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
    while got < most:
        if poller is not None and deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise TimeoutError
        try:
            data = os.read(fd, min(most - got, 1 << 16))
        except BlockingIOError:  # woken with nothing to read after all
            continue
        if not data:
            break
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def _reader_problem(exc: Exception) -> str:
    """PyYAML's reader error (a character YAML forbids) in one line: the character as U+XXXX and the reason."""
    c = getattr(exc, "character", None)
    code = c if isinstance(c, int) else ord(c) if isinstance(c, str) and len(c) == 1 else None
    shown = f"U+{code:04X}" if code is not None else "a character"
    return f"{shown} is not allowed in YAML ({getattr(exc, 'reason', '') or 'a control character'})"


# A character past U+FFFF escaped as JSON escapes it (`json.dump`'s default, ensure_ascii): a UTF-16 surrogate pair,
# `\ud83d\ude00`, which RFC 8259 allows and YAML's double-quoted escapes do not pair ("invalid Unicode character escape
# code"). An odd number of backslashes before it: an escape, not an escaped backslash followed by text.
# (Text, compiled by re where it is used: only a file YAML refused an escape of reads it, or a refusal's line.)
_SURROGATE_PAIR = r"(?<!\\)((?:\\\\)*)\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})"


def _json_pairs_joined(text: str) -> str | None:
    r"""A JSON file's text with each escaped surrogate pair written as YAML's one escape of that character
    (`\U0001f600`, on the same line: lines in messages stay right), or None when `text` is no JSON or has no pair.
    JSON only: every string of a JSON text is double-quoted, where `\u` is an escape; in YAML a single-quoted, plain
    or block scalar holds `\ud83d\ude00` as twelve characters of text (and YAML itself does not pair the escapes)."""
    if not re.search(_SURROGATE_PAIR, text):
        return None
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return None

    def one(m: re.Match[str]) -> str:
        code = 0x10000 + ((int(m.group(2), 16) - 0xD800) << 10) + (int(m.group(3), 16) - 0xDC00)
        return f"{m.group(1)}\\U{code:08x}"
    return re.sub(_SURROGATE_PAIR, one, text)


def load_model(model: type[M], path: str | Path, text: str | None = None) -> M:
    path = str(path)
    if text is None:
        text = read_text_file(path)
    try:
        try:
            node, data = _compose_checked(text, path, model)
        except yaml.YAMLError as exc:
            # A scenario or profile written by json.dump: JSON's surrogate-pair escapes read as the characters they
            # are (a file YAML reads as it is never gets here).
            if "escape code" not in str(getattr(exc, "problem", "")) or (joined := _json_pairs_joined(text)) is None:
                raise
            text = joined  # (a mark of an error further on is one of the text composed)
            node, data = _compose_checked(text, path, model)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        position = getattr(exc, "position", None)  # a reader error (a forbidden character) has only an offset
        where = (f"{path}:{mark.line + 1}" if mark else
                 f"{path}:{text.count(chr(10), 0, position) + 1}" if isinstance(position, int) else path)
        if isinstance(exc, ValueProblem):  # a plain value that cannot be built: no mistake of YAML's syntax
            field = _field_text(_field_at(text, mark.index)) if mark else ""
            raise ConfigError(f"{where}:{field} {exc.problem}") from None
        if isinstance(position, int) and not mark:
            problem = _reader_problem(exc)
        else:
            problem = _yaml_problem(exc, text, mark)
        if "maximum nesting depth" in problem:  # libyaml's own limit, met while it reads ahead of our check
            raise ConfigError(f"{where}: nested too deeply (more than {MAX_DEPTH} levels) to be a configuration") from None
        # The field the mistake is in, as every other message names it (the key a `!!python/…` tag sits under).
        parts = _field_at(text, mark.index) if mark else []
        if "unhashable key" in str(getattr(exc, "problem", "")) and parts[-1:] == ["?"]:
            parts = parts[:-1]  # the key has no name to show ("?"): the mapping it is in is the field
        raise ConfigError(f"{where}:{_field_text(parts)} not valid YAML: {problem}") from None
    except RecursionError:  # not expected past _check_events; kept so that no parser change brings a traceback
        raise ConfigError(f"{path}: nested too deeply to be a configuration") from None
    except (ValueError, OverflowError) as exc:  # e.g. an integer of thousands of digits
        raise ConfigError(f"{path}: a value cannot be read: {str(exc)[:120]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(path, err, node, model)) from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a configuration") from None


def line_of(path: str | Path, loc: tuple[Any, ...], text: str | None = None) -> int | None:
    """The line of a field (as a location like ("targets", "prod", "url")) in a YAML file, for messages that
    are found after validation (a URL that will not parse, a profile that does not exist)."""
    try:
        text = text if text is not None else read_text_file(path)
        node, _ = _compose_checked(_json_pairs_joined(text) or text, str(path))
    except (ConfigError, yaml.YAMLError, RecursionError, ValueError, OverflowError):
        return None
    return _resolve(node, loc)[0]


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except OSError:  # a name longer than the system takes is no file (ENAMETOOLONG): no traceback
        return False


def load_builtin_or_file(model: type[M], name_or_path: str, folder: Path, shown_folder: str, what: str) -> M:
    """A built-in data file by name (from a package folder) or the user's own YAML file by path."""
    p = Path(name_or_path)
    # A directory of a built-in's name is no file of that name: the built-in (`chatprobe run --record netra` leaves
    # one in the working directory, which then refused every `--profile netra`, the default, as "Is a directory").
    if name_or_path.strip() and (p.suffix in (".yaml", ".yml") or _exists(p)) and not (
            name_or_path in builtin_names(folder) and p.is_dir()):
        return load_model(model, p)
    shown = repr(name_or_path) if len(name_or_path) <= 80 else repr(name_or_path[:80]) + "…"
    # A name is a built-in's file name: never a path, an empty text (the current directory) or a name past the
    # system's limit (an OSError out of is_file()).
    builtins = builtin_names(folder)
    if name_or_path not in builtins:
        # `chatprobe run slow` beside slow.yaml: the file meant, its suffix left out; else the built-in it looks like.
        meant = next((f"{name_or_path}{suffix}" for suffix in (".yaml", ".yml")
                      if name_or_path.strip() and "\0" not in name_or_path
                      and _exists(Path(f"{name_or_path}{suffix}"))), None) or closest(name_or_path, builtins)
        hint = f"did you mean {meant!r}? " if meant else ""
        raise ConfigError(f"{what} {shown}: no such file and no built-in of that name ({hint}built-ins: "
                          f"{', '.join(builtins)})")
    candidate = folder / f"{name_or_path}.yaml"
    return load_model(model, f"{shown_folder}/{name_or_path}.yaml", candidate.read_text(encoding="utf-8"))
