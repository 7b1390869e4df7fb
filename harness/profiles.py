"""Protocol profiles as data: how one wire dialect's frames map onto the seven canonical roles.

A profile is a YAML file (see harness/profiles/netra.yaml). `Profile.decode` turns one text frame into an
Event (an agent event of some run) or a Frame (welcome, ping, connection-level error, malformed): the only
place where wire-format details live.
"""
# No `from __future__ import annotations` here: the models' annotations are objects, which pydantic takes as they
# are; as text it compiled and evaluated each one at import (start-up CPU of every run, tests/test_architecture.py).

import contextvars
import functools
import json
import math
import re
import string
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from .catalog import PROFILES_DIR
from .checksets import CHECKS, CheckSet
from .checksets import NAMES as CHECK_NAMES
from .events import DEFAULT_REQUIRED, EVENT_OVERHEAD, Event, Frame, FrameKind, Role, SessionError
from .eventstream import StreamProblem
from .subprotocols import names_problem
from .yamlfile import load_builtin_or_file

_MISSING = object()


# Names of fields and containers: each becomes lines of the profile's generated decoder (a dotted path one per part),
# so a short file must not make a decoder of millions of lines. Far above any real wire format.
MAX_NAMES = 32  # names tried for one field, containers looked up
MAX_NAME_PARTS = 8  # parts of one dotted path
MAX_NAME_CHARS = 256


def _bounded_names(names: list[str]) -> list[str]:
    if len(names) > MAX_NAMES:
        raise ValueError(f"at most {MAX_NAMES} names")
    for name in names:
        if len(name) > MAX_NAME_CHARS or name.count(".") >= MAX_NAME_PARTS:
            raise ValueError(f"{name[:40]!r}…: a name is at most {MAX_NAME_CHARS} characters and "
                             f"{MAX_NAME_PARTS} dotted parts")
    return names


def _path_names(names: list[str]) -> list[str]:
    """Names of fields (and `where` paths, span keys, containers): bounded, and each dotted one a path that can name
    something: no empty part (`a..b`, `.a`, `a.` looked up a key "" no frame has), and a part of digits only in its
    canonical form (`parent_ids.01` indexed item 1: only 0, 1, 2… index a list)."""
    for name in _bounded_names(names):
        if "." not in name:
            continue
        for part in name.split("."):
            if not part:
                raise ValueError(f"{name[:40]!r}: an empty part in a dotted path (write a.b: each part a key or an "
                                 "index)")
            if _index(part) and part != str(int(part)):
                raise ValueError(f"{name[:40]!r}: list index {part[:20]!r} has a leading zero (write "
                                 f"{int(part)}: only 0, 1, 2… index a list)")
    return names


def _canonical(value: Any) -> Any:
    """A `where` value as `_same` compares it: an integral float as its integer (`1.0` is `1`), a boolean kept apart
    (`true` is no `1`), at any depth; two matches equal here can never tell a frame apart."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


class RoleMatch(BaseModel):
    """A wire type mapped to a role, optionally only when the frame names a run (`when: run`) and only when fields of
    the frame have given values (`where: {path: value}`: LangGraph's root `on_chain_start`, `parent_ids: []`)."""

    model_config = ConfigDict(extra="forbid")
    type: str
    when: Literal["always", "run"] = "always"
    where: dict[str, Any] | None = None

    @field_validator("where")
    @classmethod
    def _where_bounded(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return v if v is None else _where_checked(v)

    @property
    def condition(self) -> str:
        """What the match hangs on, to tell two matches of one wire type apart: values as they are compared (`1` and
        `1.0` are one condition)."""
        return self.when if self.where is None else \
            f"{self.when} where {json.dumps(_canonical(self.where), sort_keys=True)}"


def _role_types(roles: dict[Role, list[str | RoleMatch]]) -> dict[str, str]:
    """Each wire type a profile maps to a role, and (the first) role it is mapped to."""
    out: dict[str, str] = {}
    for role, matches in roles.items():
        for m in matches:
            out.setdefault(m if isinstance(m, str) else m.type, role.value)
    return out


def _run_types(info: ValidationInfo) -> set[str] | None:
    """The wire types of a run a profile names (mapped to a role, or in `unmapped`), for a later field's check of the
    names it gives; None when `roles` did not validate (its own error is told)."""
    roles = info.data.get("roles")
    return None if roles is None else {*_role_types(roles), *info.data.get("unmapped", ())}


def _where_checked(v: dict[str, Any]) -> dict[str, Any]:
    if not v:
        raise ValueError("where: at least one path: value")
    _path_names(list(v))
    for path, value in v.items():
        _json_value(value, path)
    return v


class ControlMatch(BaseModel):
    """A wire type that belongs to no run when fields of the frame have given values (`where`), as a role's match:
    OpenAI Chat Completions' usage chunk (`choices: []`) after the run's last chunk, of the type of every chunk."""

    model_config = ConfigDict(extra="forbid")
    type: str
    where: dict[str, Any]

    @field_validator("where")
    @classmethod
    def _where_bounded(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _where_checked(v)

    @property
    def condition(self) -> str:
        return f"always where {json.dumps(_canonical(self.where), sort_keys=True)}"


def _json_value(value: Any, path: str) -> None:
    """Refuse a `where` value no JSON frame can hold: YAML's dates, binaries and sets, NaN and the infinities, an
    object's key that is not a string (it could never match; it was a traceback where the match is told apart)."""
    stack = [value]
    while stack:  # the YAML loader bounds the nesting and the size
        v = stack.pop()
        if isinstance(v, dict):
            if any(not isinstance(k, str) for k in v):
                raise ValueError(f"{path}: an object's key is a string in JSON")
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{path}: {v!r} is no JSON value (it matches no frame)")
        elif v is not None and not isinstance(v, (str, int, float)):
            raise ValueError(f"{path}: a {type(v).__name__} is no JSON value (it matches no frame)")


# A role's entry: a wire type's name, or a match (an object): an error in a match names its key (`roles.
# error_event.0.match.where`), not that the entry is no string.
RoleEntry = Annotated[Annotated[str, Tag("str")] | Annotated[RoleMatch, Tag("match")],
                      Discriminator(lambda v: "match" if isinstance(v, (dict, RoleMatch)) else "str")]
ControlEntry = Annotated[Annotated[str, Tag("str")] | Annotated[ControlMatch, Tag("match")],
                         Discriminator(lambda v: "match" if isinstance(v, (dict, ControlMatch)) else "str")]


class Span(BaseModel):
    """Wire types (or roles) that open, continue and close something by key, e.g. a tool call (R5)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    open: list[str]
    close: list[str]
    inner: list[str] = []
    key: str
    key_fallback: str | None = None
    # A field naming whose span this is (AG-UI's subagentRunId): the same key open under two owners is two spans.
    owner: str | None = None

    @field_validator("key", "key_fallback", "owner")
    @classmethod
    def _bounded_key(cls, v: str | None) -> str | None:
        return v if v is None else _path_names([v])[0]
    # Whether a span still open at the terminal event is a violation.
    must_close: bool = True


class Fields(BaseModel):
    """For each canonical field, the wire names to try, in order (a dotted name is a path from the root)."""

    model_config = ConfigDict(extra="forbid")
    type: list[str] = ["type"]
    run_id: list[str] = ["run_id"]
    # On the event that starts a run: the finished run it continues, so a new run on the same stream is its own chat.
    # None by default: a dialect whose server may start further runs on its own names the field (AG-UI's parentRunId);
    # elsewhere a run the client did not start is not its chat.
    parent_run_id: list[str] = []
    thread_id: list[str] = ["thread_id"]
    user_id: list[str] = ["user_id"]
    message_id: list[str] = ["message_id"]
    seq: list[str] = ["seq"]
    tool_call_id: list[str] = ["tool_call_id"]
    tool_name: list[str] = ["tool_name"]
    recoverable: list[str] = ["is_recoverable"]
    timestamp: list[str] = ["timestamp"]
    error_code: list[str] = ["error_code"]
    error_message: list[str] = ["error_message", "message"]
    # Where a partial_result event carries the reply's text, and which reply message it belongs to: read only for a
    # chat whose conversation goes on (a scenario step's `thread: continue`) on a dialect whose request carries the
    # conversation so far (a `{history}` item in `request`: AG-UI), to send the assistant's words back next turn.
    reply_text: list[str] = []
    reply_id: list[str] = []
    extra: dict[str, list[str]] = {}

    @field_validator("*")
    @classmethod
    def _bounded(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, dict):
            if len(v) > MAX_NAMES:
                raise ValueError(f"at most {MAX_NAMES} extra fields")
            for names in v.values():
                _path_names(names)
            return v
        return _path_names(v)


class SessionErrors(BaseModel):
    """Error codes of a connection_error frame that answer the session rather than a chat's message."""

    model_config = ConfigDict(extra="forbid")
    auth_failed: list[str] = ["AUTH_FAILED"]  # the credentials were refused
    resume_unknown: list[str] = ["RESUME_UNKNOWN_RUN"]  # a resume named a run the server does not know


class Ping(BaseModel):
    model_config = ConfigDict(extra="forbid")
    types: list[str] = ["ping"]
    reply: dict[str, Any] | None = {"type": "pong"}


TransportName = Literal["websocket", "sse"]


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    # The dialect whose scenarios (their `dialects:`) a server speaking this profile can carry: a profile of one's own
    # that varies netra (a path, a control frame of its own) keeps netra's scenarios with `dialect: netra`.
    dialect: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # The transport(s) this dialect is spoken over, the first being its usual one; the target URL's scheme picks
    # one (ws/wss: websocket, http/https: sse), and a scheme the profile does not list is a usage error.
    transport: TransportName | list[TransportName] = "websocket"
    # Paths for the transports: the WebSocket path or the SSE endpoint path appended to the target URL.
    path: str = ""
    # Whether the server greets a new WebSocket connection with a frame (welcome, control, or an event) before any
    # chat; false when it stays silent until asked (AG-UI). SSE never has one: its stream opens with the request.
    welcome: bool = True
    # Whether every request carries a run id the client chooses (AG-UI's RunAgentInput.runId is required), whatever
    # the scenario's client_run_id says.
    client_run_id: bool = False
    # The chat message a client sends; "{content}", "{thread_id}", "{run_id}", "{message_id}", "{user_id}"
    # are filled in, and a key whose whole value is a placeholder with no value is left out. A list item "{history}"
    # is replaced by the conversation's earlier messages (a continued turn of a stateless dialect: AG-UI).
    request: dict[str, Any]
    # Client frame types that start a run (what the proxy watches for); default: the request's own type.
    request_types: list[str] = []
    # Client frame types that resume a run; default: the resume template's own type.
    resume_types: list[str] = []
    resume: dict[str, Any] | None = None
    # Containers searched for each field, in order: "" is the frame's root.
    lookup: list[str] = [""]
    fields: Fields = Fields()
    roles: dict[Role, list[RoleEntry]]
    # Wire types that belong to a run but map to no role (span markers, raw chunks…); one ending in `*` names every
    # type that begins with what is before it (the Vercel AI SDK's custom `data-*` parts).
    unmapped: list[str] = []
    # Wire types that belong to no run (welcome, pong, heartbeat…), or `{type: NAME, where: {PATH: VALUE}}`: frames of a
    # type that belong to no run when those fields hold those values (tried after the roles' `where` entries of it).
    control: list[ControlEntry] = []
    # Frames that are not JSON and say the stream is over (`data: [DONE]`, the OpenAI Chat Completions' and the Vercel
    # AI SDK's last SSE event): matched as the whole text of a frame, they belong to no run, as a control frame.
    stream_end: list[str] = []
    # A frame whose type the profile does not know: an R12 (well-formed means a type of this dialect), or ignored
    # for servers that add types of their own freely.
    unknown_types: Literal["violation", "ignore"] = "violation"
    ping: Ping = Ping()
    connection_error: list[str] = []
    # Keys whose presence at a frame's root is its type when `fields.type` names none (OpenAI Chat Completions' mid-stream
    # `{"error": {…}}` is the wire type `error`), in order: the first present (not null) wins. A dotted path names a key
    # below the root, the path as written its type (A2A 1.0's `result.statusUpdate`: protobuf's oneof as JSON).
    # Checked when absent too: a profile with no `fields.type` tells every frame by these (A2A 1.0), and one with
    # neither tells none (no name, no event ever).
    type_keys: list[str] = Field(default=[], validate_default=True)
    # Error codes of a connection_error frame that never end a run, even when the frame names one.
    connection_error_codes: list[str] = ["AUTH_FAILED", "INVALID_MESSAGE", "RESUME_UNKNOWN_RUN"]
    # Which of those codes mean "bad credentials" and "unknown run on resume".
    session_errors: SessionErrors = SessionErrors()
    # What opens, continues and closes by a key (R5).
    spans: list[Span] = []
    # Wire types the dialect still sends after a fatal error event, to close what the error cut short (the Vercel AI
    # SDK's finish-step and finish after an error part): not R3 or R4 after an error_event, judged as ever otherwise.
    after_error: list[str] = []
    required: list[Role] = list(DEFAULT_REQUIRED)
    thinking_before_tool: bool = True
    # The `seq` of a run's first event: 1 (netra), or 0 for a dialect that counts from 0 (OpenAI Responses'
    # sequence_number). R7 wants seq_start, seq_start + 1, … with no gap.
    seq_start: Literal[0, 1] = 1
    # Every agent event of this dialect names its run (netra): one that names none is not this client's (R8).
    events_name_run: bool = False
    # Whether the server takes the token as a `jwt.<token>` WebSocket subprotocol (`--auth subprotocol`).
    auth_subprotocol: bool = True
    # WebSocket subprotocols a server of this dialect needs offered at the upgrade (`graphql-transport-ws`), in order of
    # preference; `--subprotocol` replaces them.
    subprotocols: list[str] = []
    # Named payload check sets (harness/checksets.py; AG-UI's: payload_checks.py) run on every event: schema, ids, state.
    checks: list[str] = []

    _decoder: "Decoder" = PrivateAttr()

    @field_validator("request", "resume")
    @classmethod
    def _templates_plain(cls, v: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        _check_template(v)
        # The conversation so far is one list's items, once: each more "{history}" would send it all again (a file
        # of thousands of them, every turn's request thousands of times the bound); a resume sends none.
        n = _names_history(v)
        if n > (1 if info.field_name == "request" else 0):
            raise ValueError(f"{HISTORY} is the conversation's earlier messages, spliced into the chat request once: "
                             + (f"it is {n} items here" if info.field_name == "request" else "a resume carries none"))
        return v

    @field_validator("path")
    @classmethod
    def _url_path(cls, v: str) -> str:
        # Appended to the target URL as written: anything but an absolute path (`http://host/x`, `ws`) made another
        # URL (a traceback from its port), and a space or control character a request line of its own.
        if v and (not v.startswith("/") or any(c <= " " or c == "\x7f" or not c.isascii() for c in v) or "#" in v):
            shown = repr(v) if len(v) <= 40 else repr(v[:40]) + "…"
            raise ValueError(f"{shown}: a URL path, \"\" or one that starts with / (e.g. /ws), of printable ASCII with "
                             "no space and no #fragment (percent-encode the rest)")
        return v

    @field_validator("lookup")
    @classmethod
    def _lookup_nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("lookup needs at least one container ('' for the root)")
        return _path_names(v)

    @field_validator("transport", mode="before")
    @classmethod
    def _transport_known(cls, v: Any) -> Any:
        names = v if isinstance(v, list) else [v]
        if not names or len(set(map(str, names))) != len(names) or any(n not in ("websocket", "sse") for n in names):
            raise ValueError(f"expected websocket, sse, or a list of them without repeats, got {v!r}")
        return v

    # Checks across entries are field validators, so that an error names the field and its line in the file.
    @field_validator("roles")
    @classmethod
    def _roles_once(cls, roles: dict[Role, list[str | RoleMatch]]) -> dict[Role, list[str | RoleMatch]]:
        seen: dict[tuple[str, str], str] = {}
        for role, matches in roles.items():
            for m in matches:
                t = m if isinstance(m, str) else m.type
                if not t.strip():  # no frame has an empty type: the role could never be seen
                    raise ValueError(f"{role.value}: an empty wire type")
                cond = "always" if isinstance(m, str) else m.condition
                if (t, cond) in seen:
                    if isinstance(m, RoleMatch) and m.where is not None:
                        # JSON equality: `where: {a: 1}` and `{a: 1.0}` hold for the same frames, always.
                        both = role.value if seen[(t, cond)] == role.value else f"{seen[(t, cond)]} and {role.value}"
                        raise ValueError(f"wire type {t!r} is mapped to {both} twice by one condition ({cond}; 1 "
                                         "and 1.0 are one JSON number, so the frames they hold for are the same): "
                                         "the second never applies")
                    raise ValueError(f"wire type {t!r} is mapped to both {seen[(t, cond)]} and {role.value}")
                seen[(t, cond)] = role.value
        return roles

    @field_validator("spans")
    @classmethod
    def _spans_disjoint(cls, spans: list[Span], info: ValidationInfo) -> list[Span]:
        if len(spans) > MAX_NAMES:  # each span's keys are lines of the generated decoder
            raise ValueError(f"at most {MAX_NAMES} spans")
        span_types: set[str] = set()
        # What a span may name: a role, or a wire type the profile maps to a role or lists in `unmapped` (a type named
        # only here is never an event: a misspelt close left every span open at every terminal event, an R5 each).
        known = _run_types(info)
        if known is not None:
            known.update(r.value for r in info.data["roles"])
        for span in spans:
            for t in span.open + span.inner + span.close:
                if t in span_types:
                    raise ValueError(f"wire type or role {t!r} belongs to more than one span")
                if known is not None and t not in known:
                    raise ValueError(f"span {span.name!r}: {t!r} is no role and no wire type of `roles` or `unmapped` "
                                     "(a type named only in a span is never an event of a run)")
                span_types.add(t)
        return spans

    @field_validator("after_error")
    @classmethod
    def _after_error_known(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if (known := _run_types(info)) is not None:
            for t in _bounded_names(v):
                if t not in known:
                    raise ValueError(f"{t[:40]!r} is no wire type of `roles` or `unmapped` (only an event of a run "
                                     "comes after its error)")
        return v

    @field_validator("unmapped")
    @classmethod
    def _unmapped_patterns(cls, v: list[str]) -> list[str]:
        for t in v:
            if "*" in t[:-1] or t == "*":
                raise ValueError(f"{t[:40]!r}: a pattern is a prefix and one `*` at its end (`data-*`)")
        return v

    @model_validator(mode="after")
    def _type_named(self) -> Self:
        """A frame's type must have a name: `fields.type`, or `type_keys` when frames are told by the key they have.
        Said of `fields.type`, the line a profile empties it on (said of `type_keys`, it named a key never written)."""
        if not self.fields.type and not self.type_keys:
            raise ValidationError.from_exception_data("Profile", [InitErrorDetails(
                type=PydanticCustomError("no_type", "no name for the frame's type: give `fields.type`, or `type_keys` "
                                                    "when frames are told by the key they have"),
                loc=("fields", "type"), input=self.fields.type)])
        return self

    @field_validator("type_keys")
    @classmethod
    def _type_keys_named(cls, v: list[str], info: ValidationInfo) -> list[str]:
        known = _run_types(info)
        if known is not None:
            known.update(info.data.get("connection_error", ()),
                         (c if isinstance(c, str) else c.type for c in info.data.get("control", ())))
        for key in _path_names(v):
            if not key:
                raise ValueError("'': a key of the frame's root, or a dotted path to one (not empty)")
            if known is not None and key not in known:
                raise ValueError(f"{key[:40]!r} is the type of no list (roles, unmapped, control, connection_error): "
                                 "its frames would be outside the dialect")
        return v

    @field_validator("control")
    @classmethod
    def _control_matches_apart(cls, control: list[str | ControlMatch], info: ValidationInfo
                               ) -> list[str | ControlMatch]:
        # A `where` entry tells a type's frames apart from its frames of a role: one whose condition a role's entry of
        # the type has too could never apply (the role's is tried first), nor could two alike.
        roles = info.data.get("roles") or {}
        seen = {(m.type, m.condition) for ms in roles.values() for m in ms if isinstance(m, RoleMatch)}
        mapped = _role_types(roles)
        for m in control:
            if isinstance(m, str) and m in mapped:  # a control frame is told before any role: the role never applies
                raise ValueError(f"wire type {m!r} is mapped to {mapped[m]}: listed in control too, its frames would "
                                 "belong to no run (a control entry with `where` takes only some of them)")
            if isinstance(m, ControlMatch):
                if not m.type.strip():
                    raise ValueError("an empty wire type")
                if (m.type, m.condition) in seen:
                    raise ValueError(f"wire type {m.type!r} has this condition ({m.condition}) twice: the control entry "
                                     "never applies")
                seen.add((m.type, m.condition))
        return control

    @field_validator("ping")
    @classmethod
    def _ping_not_mapped(cls, ping: Ping, info: ValidationInfo) -> Ping:
        # A ping is told before anything else: a type mapped to a role or listed in control would never be that.
        mapped = _role_types(info.data.get("roles") or {})
        control = {c if isinstance(c, str) else c.type for c in info.data.get("control") or ()}
        for t in ping.types:
            if t in mapped or t in control:
                raise ValueError(f"wire type {t!r} is a ping and "
                                 f"{'mapped to ' + mapped[t] if t in mapped else 'in control'}: as a ping, it never "
                                 "would be that")
        return ping

    @field_validator("seq_start", mode="before")
    @classmethod
    def _seq_start_integer(cls, v: Any) -> Any:
        if isinstance(v, (bool, float)):  # pydantic's Literal takes `true` for 1 and 0.0 for 0
            raise ValueError(f"Input should be 0 or 1, not {v!r}")
        return v

    @field_validator("stream_end")
    @classmethod
    def _stream_end_not_json(cls, v: list[str]) -> list[str]:
        for marker in _bounded_names(v):
            if not marker.strip():
                raise ValueError("an empty marker: an SSE event with no data is never handed over")
            try:
                json.loads(marker)
            except ValueError:
                continue
            raise ValueError(f"{marker[:40]!r} is JSON: a JSON frame is told by its type (list that in `control`); "
                             "stream_end is for a frame that is not JSON, such as [DONE]")
        return v

    @field_validator("subprotocols")
    @classmethod
    def _subprotocol_names(cls, v: list[str]) -> list[str]:
        if (found := names_problem(v)) is not None:
            raise ValueError(found[1])
        return v

    @field_validator("checks")
    @classmethod
    def _checks_known(cls, v: list[str]) -> list[str]:
        unknown = [n for n in v if n not in CHECK_NAMES]
        if unknown:
            raise ValueError(f"unknown check set {unknown[0]!r} (known: {', '.join(CHECK_NAMES)})")
        return v

    @property
    def offered_tools(self) -> frozenset[str]:
        """The names of the tools the request offers the agent (AG-UI's RunAgentInput.tools)."""
        tools = self.request.get("tools")
        return frozenset(t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)) \
            if isinstance(tools, list) else frozenset()

    def model_post_init(self, __context: Any) -> None:
        self._decoder = Decoder(self)

    @property
    def further_runs(self) -> bool:
        """A server may start further runs on a chat's stream (the dialect names `parent_run_id`: AG-UI, whose spec 1.1
        lets a stream carry several runs in sequence, with or without parentRunId)."""
        return bool(self.fields.parent_run_id)

    @property
    def spans_must_close(self) -> frozenset[str]:
        """Names of the spans a completed run must have closed (R5)."""
        return frozenset(s.name for s in self.spans if s.must_close)

    @property
    def carries(self) -> str:
        """The dialect whose scenarios this profile's servers carry (a scenario's `dialects` names it): `dialect`,
        else the profile's own name."""
        return self.dialect or self.name

    @property
    def transports(self) -> list[str]:
        """The transports this profile may be spoken over, its usual one first."""
        return list(self.transport) if isinstance(self.transport, list) else [self.transport]

    # -- the one decode (the compiled Decoder does the work) --
    def decode(self, text: str | bytes, received_at: float) -> Event | Frame:
        """One frame from the server: an agent event of some run, or a Frame (control, ping, error, malformed)."""
        return _decoder_of(self).decode(text, received_at)

    def decode_obj(self, frame: Any, received_at: float) -> Event | Frame:
        return _decoder_of(self).decode_obj(frame, received_at)

    def decode_client(self, text: str | bytes) -> "ClientFrame":
        """One frame from the client (what the proxy and recordings see): a chat request, a resume, or other."""
        return _decoder_of(self).decode_client(text)

    def field(self, frame: dict[str, Any], name: str) -> Any:
        """A canonical field (`run_id`, …) of a decoded JSON frame, looked up as the profile says."""
        return _decoder_of(self).field(frame, name)

    # -- building what the client sends --
    def build_request(self, **values: Any) -> dict[str, Any]:
        filled: dict[str, Any] = _decoder_of(self).filler(self.request)(values)
        return filled

    @property
    def carries_history(self) -> bool:
        """Whether this dialect's request carries the conversation so far (a `{history}` item in `request`: AG-UI's
        stateless RunAgentInput), rather than the server keeping it by thread (netra)."""
        return _decoder_of(self).carries_history

    def reply_of(self, frame: str | bytes) -> tuple[str | None, str | None]:
        """(the reply's text, the reply message's id) a partial_result frame carries (`fields.reply_text`,
        `fields.reply_id`), (None, None) where it names none or is not a JSON object."""
        dec = _decoder_of(self)
        if not dec.names["reply_text"]:
            return None, None
        try:
            obj = _fast_loads(frame)
        except ValueError:
            return None, None
        if not isinstance(obj, dict):
            return None, None
        text, rid = dec.field(obj, "reply_text"), dec.field(obj, "reply_id")
        return (text if isinstance(text, str) else None), (rid if isinstance(rid, str) and len(rid) <= MAX_ID_BYTES
                                                           else None)

    def build_resume(self, run_id: str, last_seq: int) -> dict[str, Any] | None:
        if self.resume is None:
            return None
        filled: dict[str, Any] = _decoder_of(self).filler(self.resume)({"run_id": run_id, "last_seq": last_seq})
        return filled

    def ping_reply(self) -> dict[str, Any] | None:
        return self.ping.reply

    def prepare(self) -> None:
        """Do now what judging this profile's frames would do on its first frame: compile the decoder, load what its
        checks need (AG-UI's schema: about a second of imports). Every driver calls it before a chat is timed
        (`flow.FrameRouter`): done inside the event loop while chats were in flight, it stalled them, and their
        events' receipt times with them (a false R9, R11), at the start of every run."""
        decoder = _decoder_of(self)
        decoder.decode  # noqa: B018 - compiled on first use
        for check in decoder.checks:
            check.load()


def _decoder_of(profile: Profile) -> "Decoder":
    """profile._decoder without pydantic's private-attribute __getattr__ (about 1.5 us a call: more than a decode)."""
    private = profile.__pydantic_private__
    assert private is not None
    decoder: Decoder = private["_decoder"]
    return decoder


# Longest id (run, thread, user, message, tool call, tool name, wire type) and server timestamp kept as sent; longer
# ones are an R12 and kept truncated, so a server cannot make the harness hold megabytes per event.
MAX_ID_BYTES = 1024
MAX_TIME_BYTES = 64

# A field's names as the steps of its lookup, in the order the profile wrote them: a tuple of plain names (each looked
# up in every `lookup` container, container by container) or a list (a dotted path from the frame's root).
Names = tuple[tuple[str, ...] | list[str], ...]


# The most JSON structural characters (`,` `:` `[` `{` outside the frame's strings) a frame the client sent may hold
# to be parsed (decode_client). A client's frame is parsed to find its chat, and the parse costs per value, not per
# byte: a frame of --max-size (4 MiB) made of millions of tiny values (`[0,0,…]`, `{"a":[[],[],…]}`, `[0.5,0.5,…]`,
# `["","",…]`) held the proxy's event loop, every other user's relay with it, 0.3-0.7 s per frame. No JSON library
# offers a bound on the values it reads (json, orjson and msgspec parse the whole text, or give up at an error), so
# they are counted here before the parse, with str methods (C speed, a few ms for 4 MiB, and only for a frame longer
# than the bound itself). 65,536 of them, past what a chat's request holds (an AG-UI run's whole history, its tools'
# schemas and its state: thousands), cost the parse ~5-30 ms at worst (floats, the dearest values). What a string
# holds does not count: a user's pasted CSV, code or JSON document is one string, as cheap to parse as prose, and
# must not get a real user's connection refused. A frame past the bound is "dense": not parsed, no chat; the proxy
# refuses it as it refuses a frame over --max-size (docs/protocol.md).
MAX_CLIENT_STRUCTURE = 65_536
STRUCTURE_CHARACTERS = (",", ":", "[", "{")


def too_dense(text: str, limit: int = MAX_CLIENT_STRUCTURE) -> bool:
    """Whether `text` holds more than `limit` JSON structural characters outside its strings
    (MAX_CLIENT_STRUCTURE), or more than 4 x `limit` quotes (each string is a value, and two strings stand apart by
    a structural character)."""
    if len(text) <= limit:
        return False
    if "\\" in text:
        # Every escape pair dropped first, left to right as a JSON reader pairs them (`\\` before `\"`: in `\\"` the
        # quote ends its string): each quote left opens or closes a string. (Text that is not JSON gets a count
        # that means nothing, and fails its parse.)
        text = text.replace("\\\\", "").replace('\\"', "")
    quotes = text.count('"')
    if quotes > 4 * limit:
        return True
    if quotes:
        text = "".join(text.split('"')[::2])  # what stands outside the strings: every other piece between quotes
        if len(text) <= limit:
            return False
    count = 0
    for mark in STRUCTURE_CHARACTERS:
        count += text.count(mark)
        if count > limit:
            return True
    return False


@dataclass(frozen=True, slots=True)
class ClientFrame:
    """What a profile made of a frame the client sent: a chat request, a resume, or anything else; "dense": a text
    frame of more than MAX_CLIENT_STRUCTURE structural characters, not parsed."""

    kind: Literal["request", "resume", "other", "malformed", "dense"]
    wire_type: str | None = None
    run_id: str | None = None
    thread_id: str | None = None
    message_id: str | None = None
    last_seq: int | None = None  # a resume's: the highest seq the client says it had
    # A request's frame as decoded (what the user's own client sent, for the proxy and `chatprobe check`): the payload
    # checks read what it says of the chat (AG-UI: the tools it offers, its history, a resume), then let it go.
    request: dict[str, Any] | None = field(default=None, compare=False, repr=False)


_COMPILED = ("_source", "_decode_obj", "_decode", "_fillers", "_fast")


class Decoder:
    """A profile compiled once for the per-frame hot path: `decode_obj` is Python source generated from the profile
    (every wire name in it a repr() literal, never code), so a frame costs a few dict lookups, not a walk of tables."""

    __slots__ = ("profile", "always", "with_run", "where", "unmapped", "unmapped_prefixes", "control", "ping",
                 "conn_error", "span_of",
                 "containers", "names", "session_errors", "request_types", "request_keys", "resume_types", "checks",
                 "check_fields", "carries_history", "last_seq_path", "request_paths", "resume_paths", "request_fixed",
                 *_COMPILED)

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.always: dict[str, Role] = {}
        self.with_run: dict[str, Role] = {}
        # Wire types whose role hangs on the frame's fields: (the paths and values, only with a run, role), in order; a
        # `control` match's role is CONTROL_MATCH (the frame belongs to no run).
        self.where: dict[str, list[tuple[tuple[tuple[list[str], Any], ...], bool, Role | str]]] = {}
        for role, matches in profile.roles.items():
            for m in matches:
                if isinstance(m, str):
                    self.always[m] = role
                elif m.where is not None:
                    conds = tuple((path.split("."), value) for path, value in m.where.items())
                    self.where.setdefault(m.type, []).append((conds, m.when == "run", role))
                elif m.when == "run":
                    self.with_run[m.type] = role
                else:
                    self.always[m.type] = role
        self.span_of: dict[str, tuple[Span, str]] = {}
        for span in profile.spans:
            for kind, types in (("open", span.open), ("inner", span.inner), ("close", span.close)):
                for t in types:
                    self.span_of[t] = (span, kind)
        self.unmapped = frozenset(profile.unmapped)
        self.unmapped_prefixes = tuple(t[:-1] for t in profile.unmapped if t.endswith("*"))
        self.control = frozenset(c for c in profile.control if isinstance(c, str))
        for c in profile.control:
            if isinstance(c, ControlMatch):  # tried after the roles' matches of its type (CONTROL_MATCH: no role)
                conds = tuple((path.split("."), value) for path, value in c.where.items())
                self.where.setdefault(c.type, []).append((conds, False, CONTROL_MATCH))
        self.ping = frozenset(profile.ping.types)
        self.conn_error = frozenset(profile.connection_error)
        self.containers = [c.split(".") if c else [] for c in profile.lookup]
        # Each field's names split once into plain keys (looked up in every container) and dotted paths.
        self.names: dict[str, Names] = {
            name: _split_names(getattr(profile.fields, name)) for name in Fields.model_fields if name != "extra"}
        self.names.update({name: _split_names(names) for name, names in profile.fields.extra.items()})
        self.session_errors: dict[str, SessionError] = {}
        for code in profile.session_errors.auth_failed:
            self.session_errors[code] = SessionError.AUTH_FAILED
        for code in profile.session_errors.resume_unknown:
            self.session_errors[code] = SessionError.RESUME_UNKNOWN
        request_type = self.find(profile.request, self.scopes(profile.request), self.names["type"])
        self.request_types = frozenset(profile.request_types or ([request_type] if isinstance(request_type, str) else []))
        # A request template with no type (AG-UI's RunAgentInput): a client frame with no type that holds every key
        # the template fills from the chat (`threadId`, `runId`: what any client of the dialect must send; else every
        # key of the template) is a request, as the client sent it; else `chatprobe check` and the proxy would see no
        # chat begin where the client began one.
        keys = [k for k in profile.request if k not in _plain_names(self.names["type"])]
        # (a dict or list is never a placeholder: no filler of it made, a generated function for a dict)
        placeholders = [k for k in keys if not isinstance(v := profile.request[k], (dict, list))
                        and _entry(v)[0] == _PLACEHOLDER]
        self.request_keys = frozenset(() if self.request_types else placeholders or keys)
        # Such a request is told by what makes it a chat's stream too, where the template's root fixes it: a JSON-RPC
        # call's `method` (`jsonrpc` beside it: A2A's message/stream) and `stream: true` (OpenAI's and Anthropic's
        # APIs). Every call of the dialect has the keys, and a client's `tasks/get`, or a completion asked with
        # `stream: false`, through the proxy was a chat: its JSON answer a protocol_error connection of the server's.
        method = profile.request.get("method") if "jsonrpc" in profile.request else None
        fixed: list[tuple[str, str | bool]] = [("method", method)] if isinstance(method, str) and "{" not in method else []
        if profile.request.get("stream") is True:
            fixed.append(("stream", True))
        self.request_fixed = tuple(fixed) if self.request_keys else ()
        resume_type = (self.find(profile.resume, self.scopes(profile.resume), self.names["type"])
                       if profile.resume else None)
        self.resume_types = frozenset(profile.resume_types or ([resume_type] if isinstance(resume_type, str) else []))
        # Where the resume template puts `{last_seq}`: a watcher (the proxy, `chatprobe check`) reads what the client
        # said it had, so that a replay of it is told from a replay of what only the watcher saw.
        self.last_seq_path = _placeholder_path(profile.resume, "{last_seq}") if profile.resume else None
        # Where the templates put the chat's ids: a watcher reads a client frame's run, thread and message there when
        # the profile's `fields` (the events' places) find none in it (A2A's `params.message.contextId`, under no
        # container the events use), so `chatprobe check` and the proxy know a chat's ids as the live client does.
        self.request_paths = _id_paths(profile.request)
        self.resume_paths = _id_paths(profile.resume) if profile.resume else ()
        self.checks: tuple[CheckSet, ...] = tuple(CHECKS[name] for name in profile.checks)
        self.check_fields = tuple(dict.fromkeys(f for c in self.checks for f in c.fields))
        self.carries_history = _names_history(profile.request) > 0
        # Compiled on first use (a few ms a profile): loading profiles to list or filter them compiles nothing.
        self._source = ""
        self._decode_obj: Callable[[Any, float], Event | Frame] | None = None
        self._decode: Callable[[str | bytes, float], Event | Frame] | None = None
        self._fillers: dict[int, tuple[Any, Filler]] = {}
        # The fast path's source and namespace (_generate_fast), None for a profile it cannot serve.
        self._fast: tuple[str, dict[str, Any]] | None = None

    # Functions made by exec do not pickle: a copy or an unpickled decoder compiles again on first use.
    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__ if name not in _COMPILED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)
        self._source, self._decode_obj, self._decode, self._fillers, self._fast = "", None, None, {}, None

    # -- frames from the server: the compiled functions (bind them once: each is the whole per-frame work) --
    @property
    def decode(self) -> Callable[[str | bytes, float], Event | Frame]:
        """(text frame, receipt time) -> the Event or Frame it is."""
        return self._decode or self._compile()[0]

    @property
    def decode_obj(self) -> Callable[[Any, float], Event | Frame]:
        """(parsed JSON frame, receipt time) -> the Event or Frame it is (compiled on its own first use: a live run's
        frames are text, `decode`'s, and its source is half the decoder's)."""
        return self._decode_obj or self._compile_obj()

    @property
    def decode_exact(self) -> Callable[[str | bytes, float], Event | Frame]:
        """`decode` without its fast path (what the fast path hands every other frame to): the same results, for the
        tests that hold them equal and bench/decode_frames.py."""
        decode = self.decode
        return decode if self._fast is None else self._fast[1]["_exact"]

    @property
    def source(self) -> str:
        """The generated Python of both functions (for reading; each is exec'd once, when first used)."""
        return self._source or self._compile()[1]

    def _compile(self) -> tuple[Callable[[str | bytes, float], Event | Frame], str]:
        """`decode`, the text path: all a live run's frames take (`decode_obj` is compiled apart, when first used)."""
        obj_source, text_source, namespace = _generate(self)
        # orjson reads an integer past 64 bits as a float (it does not refuse it), so two ids sent as huge numbers
        # could read as one: the text path runs with an _id that gives up on an integral float that large, and the
        # generated decode then hands the frame, parsed by json (which keeps the integer), to the plain decode_obj.
        # Nothing changes for strings or ordinary numbers, and no call is added per frame.
        wide = dict(namespace, _id=_id_or_wide, _seq_text=_seq_text_or_wide, _plain_obj=self._decode_wide)
        exec(compile(text_source, f"<decoder of profile {self.profile.name[:60]!r}>", "exec"), wide)
        decode = wide["decode"]
        source = obj_source + "\n" + text_source
        # The common frame read from a msgspec Struct, the rest by `decode` as above (_generate_fast).
        self._fast = _generate_fast(self, namespace)
        if self._fast is not None:
            fast_source, fast_ns = self._fast
            fast_ns["_exact"] = decode
            exec(compile(fast_source, f"<fast decoder of profile {self.profile.name[:60]!r}>", "exec"), fast_ns)
            decode = fast_ns["decode"]
            source += "\n# The text path's fast path (decode above is its _exact)\n" + fast_source.replace(
                "def decode(", "def decode_fast(", 1)
        self._source, self._decode = source, decode
        return decode, source

    def _compile_obj(self) -> Callable[[Any, float], Event | Frame]:
        obj_source, _, namespace = _generate(self)
        exec(compile(obj_source, f"<decoder of profile {self.profile.name[:60]!r}>", "exec"), namespace)
        decode_obj: Callable[[Any, float], Event | Frame] = namespace["decode_obj"]
        self._decode_obj = decode_obj
        return decode_obj

    def _decode_wide(self, frame: Any, received_at: float) -> Event | Frame:
        """A text frame that holds an integer past 64 bits, parsed by json (`_plain_obj` of the text path)."""
        return self.decode_obj(frame, received_at)

    def filler(self, template: dict[str, Any]) -> "Filler":
        """The function filling this template (the request or resume) with values, made once per template object."""
        known = self._fillers.get(id(template))
        if known is not None and known[0] is template:
            return known[1]
        if len(self._fillers) >= 8:  # a profile has two templates: a caller passing others must not grow this
            self._fillers.clear()
        filler = _filler(template)
        self._fillers[id(template)] = (template, filler)
        return filler

    # -- field lookup: containers resolved once per frame, names split once --
    def scopes(self, frame: dict[str, Any]) -> list[dict[str, Any]]:
        scopes = []
        for path in self.containers:
            container: Any = frame
            for p in path:
                container = container.get(p) if isinstance(container, dict) else None
            if isinstance(container, dict):
                scopes.append(container)
        return scopes

    @staticmethod
    def find(frame: dict[str, Any], scopes: list[dict[str, Any]], names: Names) -> Any:
        for step in names:
            if isinstance(step, tuple):  # plain names, in each container in turn
                for container in scopes:
                    for name in step:
                        v = container.get(name)
                        if v is not None:
                            return v
                continue
            v = _walk(frame, step)
            if v is not None:
                return v
        return None

    def field(self, frame: dict[str, Any], name: str) -> Any:
        names = self.names.get(name) or _split_names([name])
        return self.find(frame, self.scopes(frame), names)

    # -- frames from the client --
    def decode_client(self, text: str | bytes) -> ClientFrame:
        if not isinstance(text, str):
            return ClientFrame("malformed")
        if too_dense(text):  # (parsed, it could hold the event loop for most of a second)
            return ClientFrame("dense")
        try:
            frame = _json_exact(text)
        except (ValueError, RecursionError):
            return ClientFrame("malformed")
        if not isinstance(frame, dict):
            return ClientFrame("malformed")
        scopes = self.scopes(frame)
        n = self.names
        wire_type = _id(self.find(frame, scopes, n["type"]))[0]
        kind: Literal["request", "resume", "other"] = (
            "request" if wire_type in self.request_types else "resume" if wire_type in self.resume_types else "other")
        if kind == "other" and wire_type is None and self.request_keys and self.request_keys <= frame.keys() and all(
                (v := frame.get(key)) == value and v.__class__ is value.__class__ for key, value in self.request_fixed):
            kind = "request"
        if kind == "other":
            return ClientFrame("other", wire_type)
        last_seq = None
        if kind == "resume" and self.last_seq_path is not None:
            value: Any = frame
            for step in self.last_seq_path:
                value = value.get(step) if isinstance(value, dict) else None
            if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 20:
                value = int(value)
            last_seq = (value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SEQ_MAX
                        else None)
        ids = {name: _id(self.find(frame, scopes, n[name]))[0] for name in ("run_id", "thread_id", "message_id")}
        for name, path in self.request_paths if kind == "request" else self.resume_paths:
            if ids[name] is None:
                at: Any = frame
                for step in path:
                    at = at.get(step) if isinstance(at, dict) else None
                ids[name] = _id(at)[0]
        return ClientFrame(kind, wire_type, run_id=ids["run_id"], thread_id=ids["thread_id"],
                           message_id=ids["message_id"], last_seq=last_seq,
                           request=frame if kind == "request" and self.checks else None)


def _id_paths(template: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(field, the keys that lead to its placeholder) for each chat id a template carries in nested objects."""
    return tuple((name, path) for name in ("run_id", "thread_id", "message_id")
                 if (path := _placeholder_path(template, "{" + name + "}")) is not None)


def _placeholder_path(template: Any, placeholder: str) -> tuple[str, ...] | None:
    """The keys that lead to `placeholder` in a template of nested objects, None when it is not there."""
    if not isinstance(template, dict):
        return None
    for key, value in template.items():
        if value == placeholder:
            return (key,)
        if (below := _placeholder_path(value, placeholder)) is not None:
            return (key, *below)
    return None


try:  # about 3x json.loads on event frames; the decode of every frame is the client's largest single cost
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson is a dependency; json is the fallback of a stripped install
    _fast_loads = json.loads  # type: ignore[assignment]


class HugeNumber(float):
    """A JSON number too large to hold as the number it is: an integer past the interpreter's digits limit (4,300; an
    integer of 5,000 digits is JSON all the same), or one with a fraction or an exponent past a double's range
    (`1e400`). It reads as ±Infinity, as JavaScript's JSON.parse reads both, and keeps the text the server wrote, so
    that what names it (a seq's R12, an id, a timestamp) names what was sent, never `inf`."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, value: float, text: str) -> "HugeNumber":
        number = super().__new__(cls, value)
        number.text = text
        return number

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__

    def __reduce__(self) -> "tuple[type[HugeNumber], tuple[float, str]]":
        return HugeNumber, (float(self), self.text)


_MAX_INT_DIGITS = sys.int_info.default_max_str_digits  # what int() converts unless an interpreter is told otherwise


def _json_int(text: str) -> int | HugeNumber:
    # Bounded here, not by the interpreter's setting: with the limit lifted, int() of a frame's megabyte of digits
    # takes quadratic time.
    if len(text) > _MAX_INT_DIGITS:
        return HugeNumber(-math.inf if text[0] == "-" else math.inf, text)
    return int(text)


def _json_float(text: str) -> float:
    number = float(text)
    return HugeNumber(number, text) if math.isinf(number) else number


# json for the frames orjson refuses or reads loosely (Decoder._compile): every number JSON can write is read, none
# refuses the frame as "not JSON" (json's int() refused an integer of 4,301 digits) or turns into an anonymous inf.
_json_exact = json.JSONDecoder(parse_int=_json_int, parse_float=_json_float).decode
_json_exact_raw = json.JSONDecoder(parse_int=_json_int, parse_float=_json_float).raw_decode


def _id(v: Any, name: str = "", oversized: list[str] | None = None, limit: int = MAX_ID_BYTES) -> tuple[str | None, bool]:
    """A field as a string, cut to `limit` characters (then its name goes to `oversized`, an R12)."""
    if v is None:
        return None, False
    text = v if isinstance(v, str) else str(v) if isinstance(v, (int, float, bool)) else _short_repr(v, limit)
    if len(text) > limit:
        if oversized is not None:
            oversized.append(name)
        return text[:limit] + "…", True
    return text, False


class _WideInt(Exception):
    """An integral float past 64 bits where orjson parsed the frame: it may have been an integer (see _compile)."""


_WIDE = float(2**63)


def _id_or_wide(v: Any, name: str = "", oversized: list[str] | None = None,
                limit: int = MAX_ID_BYTES) -> tuple[str | None, bool]:
    if v.__class__ is float and (v >= _WIDE or v <= -_WIDE) and v.is_integer():
        raise _WideInt
    return _id(v, name, oversized, limit)


# How much of a `seq` that is not an integer a violation shows (its JSON text).
MAX_SEQ_SHOWN = 40
# A seq is an integer a 64-bit counter holds, signed or not (orjson's own range for integers): one past it counts no
# run's events, and a report naming it would be as long as the server made it (JSON sets numbers no bound).
SEQ_MIN, SEQ_MAX = -(2**63), 2**64 - 1
_NOT_INTEGER = "a seq must be a JSON integer (1, 2, 3, …)"
_TOO_WIDE = "a seq must be an integer of at most 64 bits (1, 2, 3, …)"


def _error_detail(code: Any, message: Any) -> str:
    """An error event's code and message as one short line (`code: message`); a value that is no string or number
    is named by its JSON type, never written out (an error object of a megabyte)."""
    parts = []
    for v, limit in ((code, 60), (message, 200)):
        if v is None:
            continue
        if v.__class__ is not str:
            v = str(v) if isinstance(v, (int, float)) else f"(a JSON {'array' if isinstance(v, list) else 'object'})"
        parts.append(v if len(v) <= limit else v[:limit] + "…")
    return ": ".join(parts)


def _seq_text(v: Any) -> str | None:
    """A `seq` that is not an integer of at most 64 bits: its JSON text (`1.0`, `true`, `"1"`, `[1]`, `1e400`; a long
    one cut, with its length) and what it is, for the checker's R12 (str() would show `True`, `"1"` like the number
    1, and 1e400 as `inf`). None for an int subclass in range (a seq after all; JSON makes none but booleans)."""
    if v.__class__ is HugeNumber:
        text = v.text
        if text.lstrip("-").isdigit():
            return f"{_number_shown(text)}, an integer past 64 bits: {_TOO_WIDE}"
        return f"{_number_shown(text)}, a number with a fraction or an exponent: {_NOT_INTEGER}"
    if isinstance(v, bool):
        return f"{json.dumps(v)}, a boolean: {_NOT_INTEGER}"
    if isinstance(v, int):
        if SEQ_MIN <= v <= SEQ_MAX:
            return None
        try:
            text = str(int(v))
        except ValueError:  # past the interpreter's digits limit (a frame built by a program, not parsed)
            return f"an integer of about {int(v.bit_length() * 0.30103) + 1} digits, past 64 bits: {_TOO_WIDE}"
        return f"{_number_shown(text)}, an integer past 64 bits: {_TOO_WIDE}"
    if isinstance(v, float):
        if not math.isfinite(v):  # JavaScript's NaN / Infinity, which json reads and JSON (RFC 8259) does not have
            return f"{json.dumps(v)}, not a JSON number (JSON has no NaN or Infinity): {_NOT_INTEGER}"
        return f"{_number_shown(json.dumps(v))}, a number with a fraction or an exponent: {_NOT_INTEGER}"
    if isinstance(v, str):
        text = json.dumps(v[:MAX_SEQ_SHOWN], ensure_ascii=False)
        kind = "a string"
    else:
        text = _short_repr(v, MAX_SEQ_SHOWN)
        kind = "an array" if isinstance(v, list) else "an object" if isinstance(v, dict) else "not a JSON integer"
    return f"{text if len(text) <= MAX_SEQ_SHOWN else text[:MAX_SEQ_SHOWN] + '…'}, {kind}: {_NOT_INTEGER}"


def _number_shown(text: str) -> str:
    """A number's JSON text, cut past MAX_SEQ_SHOWN characters to its first digits and its length."""
    if len(text) <= MAX_SEQ_SHOWN:
        return text
    digits = text.lstrip("-")
    return f"{text[:20]}… ({f'{len(digits):,} digits' if digits.isdigit() else f'{len(text):,} characters'})"


def _seq_text_or_wide(v: Any) -> str | None:
    if v.__class__ is float and (v >= _WIDE or v <= -_WIDE) and v.is_integer():
        raise _WideInt  # maybe an integer past 64 bits that orjson read as a float: json reads the frame again
    return _seq_text(v)


def _short_repr(v: Any, limit: int) -> str:
    """A container where a scalar was expected: its JSON, cut to a little over the limit before it is built whole."""
    try:
        return json.dumps(v)[: limit + 1]
    except (TypeError, ValueError, RecursionError):
        return type(v).__name__


def _split_names(names: list[str]) -> Names:
    """The names as lookup steps, in their order: consecutive plain names one step, each dotted path one."""
    steps: list[tuple[str, ...] | list[str]] = []
    for name in names:
        if "." in name:
            steps.append(name.split("."))
        elif steps and steps[-1].__class__ is tuple:
            steps[-1] = (*steps[-1], name)
        else:
            steps.append((name,))
    return tuple(steps)


# What a `control` entry's `where` match gives a frame instead of a role.
CONTROL_MATCH = "control"


def _where_role(frame: dict[str, Any], run_id: Any,
                matches: list[tuple[tuple[tuple[list[str], Any], ...], bool, Role | str]]) -> Role | str | None:
    """The role of the first `where` match whose paths hold their values (a JSON value equal to it, a boolean only
    to a boolean; null: the field is absent or null), and, for `when: run`, whose frame names a run."""
    for conds, needs_run, role in matches:
        if needs_run and run_id is None:
            continue
        for path, want in conds:
            if not _same(_walk(frame, path), want):
                break
        else:
            return role
    return None


def _same(got: Any, want: Any) -> bool:
    """JSON equality: 1 equals 1.0, a boolean only a boolean, at any depth (`[1]` is no `[true]`). The work is bounded
    by `want` (the profile's value): a frame's huge list against a short one costs a length compare."""
    if want.__class__ is bool or got.__class__ is bool:
        return got is want
    if isinstance(want, dict):
        return (isinstance(got, dict) and len(got) == len(want)
                and all(k in got and _same(got[k], w) for k, w in want.items()))
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(_same, got, want))
    if isinstance(want, (int, float)):
        return isinstance(got, (int, float)) and got == want
    return bool(got == want) and got.__class__ is want.__class__  # a string, or null (an absent field)


def _index(part: str) -> bool:
    """Whether a path's part may index a list: ASCII digits only (`str.isdigit` takes '²', which int() refuses)."""
    return part.isascii() and part.isdigit()


def _plain_names(names: Names) -> tuple[str, ...]:
    return tuple(name for step in names if step.__class__ is tuple for name in step)


def _walk(frame: Any, path: list[str]) -> Any:
    """The value at a dotted path from the root: a part is an object's key, or (all digits) a list's index."""
    v = frame
    for p in path:
        if isinstance(v, dict):
            v = v.get(p)
        elif isinstance(v, list) and _index(p) and int(p) < len(v):
            v = v[int(p)]
        else:
            return None
    return v


Filler = Callable[[dict[str, Any]], Any]
_CONSTANT, _PLACEHOLDER, _NESTED = 0, 1, 2


def _filler(template: Any) -> Filler:
    """The template filled with values, its shape read once: a string that is one "{name}" becomes that value (a key
    or item whose value is missing is left out), other strings with braces are formatted (unknown names blank), dicts
    and lists are new ones, anything else is kept as it is."""
    if isinstance(template, dict):
        generated = _generated_dict_filler(template)
        if generated is not None:
            return generated
        # Each entry as (key, how, what): a constant and a whole placeholder are filled in line, no call.
        entries = [(k, *_entry(v)) for k, v in template.items()]

        def fill_dict(values: dict[str, Any]) -> Any:
            out = {}
            for k, how, what in entries:
                if how == _CONSTANT:
                    out[k] = what
                elif how == _PLACEHOLDER:
                    v = values.get(what)
                    if v is not None:
                        out[k] = v
                else:
                    v = what(values)
                    if v is not _MISSING:
                        out[k] = v
            return out

        return fill_dict
    if isinstance(template, list):
        items = [_filler(v) for v in template]
        if HISTORY not in template:
            return lambda values: [x for x in (f(values) for f in items) if x is not _MISSING]
        # "{history}" as an item: the conversation's earlier messages, spliced in (none: no item).
        splice = [v == HISTORY for v in template]

        def fill_list(values: dict[str, Any]) -> Any:
            out: list[Any] = []
            for f, spliced in zip(items, splice, strict=True):
                x = f(values)
                if x is _MISSING:
                    continue
                if spliced and isinstance(x, list):
                    out.extend(x)
                else:
                    out.append(x)
            return out

        return fill_list
    how, what = _entry(template)
    if how == _PLACEHOLDER:
        return lambda values: _MISSING if (v := values.get(what)) is None else v
    if how == _CONSTANT:
        return lambda values: what
    return what  # type: ignore[no-any-return]


# Entries (of a dict template and the dicts inside it) past which a template is filled by the loop of _filler instead
# of a generated function: a request is a handful; this bounds the source a profile's file can make.
_GENERATED_ENTRIES_MAX = 64


def _generated_dict_filler(template: dict[str, Any]) -> Filler | None:
    """A dict template's filler as one generated function, per chat the request's: each entry a statement in the
    template's order (a constant stored, a "{name}" looked up and stored unless None, a dict inside built in line,
    anything else by its _filler), no loop over (key, how, what) entries and no call per dict inside (~100 bytecodes
    of a netra request). The same dicts as the loop makes (tests/profiles/test_request_fill.py); None past
    _GENERATED_ENTRIES_MAX entries (then the loop fills it)."""
    ns: dict[str, Any] = {"_MISSING": _MISSING}
    lines = ["def fill_dict(values):"]
    entries = 0

    def name_of(value: Any) -> str:
        """A name in the namespace holding `value` (keys and constants are never pasted into the source)."""
        name = f"_c{len(ns)}"
        ns[name] = value
        return name

    def build(tmpl: dict[str, Any]) -> str | None:
        nonlocal entries
        out = f"_d{len(lines)}"
        lines.append(f"    {out} = {{}}")
        for k, v in tmpl.items():
            entries += 1
            if entries > _GENERATED_ENTRIES_MAX:
                return None
            key = name_of(k)
            if isinstance(v, dict):
                inner = build(v)
                if inner is None:
                    return None
                lines.append(f"    {out}[{key}] = {inner}")
                continue
            how, what = _entry(v)
            if how == _CONSTANT:
                lines.append(f"    {out}[{key}] = {name_of(what)}")
            elif how == _PLACEHOLDER:
                lines.extend((f"    v = values.get({name_of(what)})", f"    if v is not None: {out}[{key}] = v"))
            else:
                lines.extend((f"    v = {name_of(what)}(values)", f"    if v is not _MISSING: {out}[{key}] = v"))
        return out

    top = build(template)
    if top is None:
        return None
    lines.append(f"    return {top}")
    exec(compile("\n".join(lines) + "\n", "<request filler>", "exec"), ns)
    fill: Filler = ns["fill_dict"]
    return fill


def _entry(v: Any) -> tuple[int, Any]:
    """How a template value is filled: (_CONSTANT, the value), (_PLACEHOLDER, the name) or (_NESTED, its filler)."""
    if isinstance(v, (dict, list)):
        return _NESTED, _filler(v)
    if isinstance(v, str) and "{" in v:
        if v.startswith("{") and v.endswith("}") and v.count("{") == 1:
            return _PLACEHOLDER, v[1:-1]
        return _NESTED, functools.partial(_format, v)
    return _CONSTANT, v


# What a request or resume template may name: plain "{name}" placeholders, nothing else of str.format's language (an
# attribute, an index, a conversion or a format spec such as {content:>900000000} runs per chat, at any cost).
TEMPLATE_NAMES = frozenset({"content", "thread_id", "run_id", "message_id", "user_id", "last_seq", "history"})
# The conversation so far (a continued turn's earlier messages): only ever a whole item of a list.
HISTORY = "{history}"


def _names_history(template: Any) -> int:
    """How many "{history}" items a template's lists have."""
    stack, n = [template], 0
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            n += sum(1 for x in v if x == HISTORY)
            stack.extend(v)
    return n


def _check_template(template: Any) -> None:
    """Refuse a template whose strings are not text with plain placeholders (ValueError: the file, line and field)."""
    stack = [template]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(x for x in v if x != HISTORY)  # "{history}" stands alone as a list's item, nowhere else
        elif isinstance(v, str) and ("{" in v or "}" in v):
            try:
                parts = list(string.Formatter().parse(v))
            except ValueError as exc:
                raise ValueError(f"{v[:60]!r}: {exc} (write a literal brace as {{{{ or }}}})") from None
            for _literal, name, spec, conversion in parts:
                if name == "history":
                    raise ValueError(f"{v[:60]!r}: {HISTORY} stands alone as an item of a list (the conversation's "
                                     "earlier messages are spliced in there)")
                if name is not None and (name not in TEMPLATE_NAMES or spec or conversion):
                    raise ValueError(f"{v[:60]!r}: a placeholder is one of "
                                     f"{', '.join('{' + n + '}' for n in sorted(TEMPLATE_NAMES))}, with no format "
                                     "spec, conversion, attribute or index")


def _format(template: str, values: dict[str, Any]) -> Any:
    try:
        return template.format_map(_Blank(values))
    except (ValueError, IndexError):
        return template


class _Blank(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return ""


def parses_as_json(text: str) -> bool:
    """Whether a text frame is JSON as `decode` reads it (orjson, then json for what orjson refuses): what
    `--record` keeps true of every frame it scrubs (harness/recorder.py)."""
    try:
        _fast_loads(text)
    except ValueError:
        return not isinstance(_loads_or_malformed(text), Frame)
    return True


class _NotJSONNumber:
    """A frame json read that holds JavaScript's NaN, Infinity or -Infinity as a value (json reads them, JSON has no
    such numbers): the value as read and what the R12 says (_with_not_json)."""

    __slots__ = ("value", "reason")

    def __init__(self, value: Any, reason: str) -> None:
        self.value, self.reason = value, reason


_CONSTANTS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
# A JSON string (skipped whole: a "NaN" in one is text) or one of the constants json reads outside strings.
_CONSTANT_AT = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|(-?Infinity|NaN)', re.S)


def _json_noting_constants(text: str) -> Any:
    """json's reading of a text that may hold NaN or Infinity outside its strings: a _NotJSONNumber if it does."""
    seen: list[str] = []

    def constant(name: str) -> float:
        if not seen:  # the first one only: a frame of a million NaN holds no list of them
            seen.append(name)
        return _CONSTANTS[name]

    value = json.JSONDecoder(parse_int=_json_int, parse_float=_json_float, parse_constant=constant).decode(text)
    if not seen:
        return value
    at = next((m.start(1) for m in _CONSTANT_AT.finditer(text) if m.start(1) >= 0), -1)
    where = f" at character {at}" if at >= 0 else ""
    return _NotJSONNumber(value, f"{seen[0]}{where}: {_NOT_A_NUMBER}")


_NOT_A_NUMBER = "not a JSON number (JSON has no NaN or Infinity; a browser's JSON.parse refuses the frame)"
# What a seq of NaN or Infinity already says (_seq_text): that frame's one R12.
_CONSTANT_SEQ = tuple(f"{name}, not a JSON number" for name in _CONSTANTS)


def _with_not_json(decoded: "Event | Frame", reason: str) -> "Event | Frame":
    """An event of a frame holding NaN or Infinity, with the R12 that says so (first of its problems), unless its
    seq's R12 already does; any other frame (control, ping, error, an unknown type ignored) with that R12 as its
    `problem` (FrameRouter.on_frame reports it, then takes the frame for what it says). A frame already malformed
    keeps its own one R12."""
    if isinstance(decoded, Event):
        bad_seq = decoded.bad_seq
        if not (bad_seq.__class__ is str and bad_seq.startswith(_CONSTANT_SEQ)):
            reason = f"{decoded.wire_type[:60]} holds {reason}"
            decoded.problems = (reason, *decoded.problems)
    elif decoded.kind is not FrameKind.MALFORMED:
        decoded.problem = f"{str(decoded.wire_type)[:60]} holds {reason}"
    return decoded


def _loads_or_malformed(text: str) -> Any:
    """A text frame orjson refused, as json reads it, or the MALFORMED Frame it is (a _NotJSONNumber: one holding NaN
    or Infinity, read all the same)."""
    # orjson refuses what json accepts (NaN, depth past 1024): json decides, so a frame means what it always meant,
    # and one holding NaN or Infinity is an R12 besides (a browser's JSON.parse refuses it). Only a text that has the
    # words is read with the hook that notes them. (Integers past 64 bits orjson reads as floats: Decoder._compile.)
    try:
        if "NaN" in text or "Infinity" in text:
            return _json_noting_constants(text)
        return _json_exact(text)
    except (ValueError, RecursionError) as exc:
        if isinstance(text, StreamProblem):  # what the transport found wrong in the stream itself
            return Frame(FrameKind.MALFORMED, detail=str(text))
        if isinstance(exc, json.JSONDecodeError) and exc.msg == "Extra data":
            return Frame(FrameKind.MALFORMED, detail=_extra_data(text, exc.pos))
        if isinstance(exc, RecursionError):  # JSON it may well be, but nested past what a parser reads
            return Frame(FrameKind.MALFORMED, detail=f"JSON nested too deeply to read (over {_MAX_NESTING:,} levels of "
                                                     f"arrays and objects): {text[:60]!r}")
        return Frame(FrameKind.MALFORMED, detail=f"not JSON: {text[:60]!r}")


_MAX_NESTING = 1000  # about what json reads (Python's recursion limit) after orjson refused past 1,024


def _extra_data(text: str, at: int) -> str:
    """What a frame that is JSON up to character `at`, then more, is: two values in one frame (a server that writes
    two events in one WebSocket message, back to back or a line each, as NDJSON), or JSON and junk. The first 60
    characters alone made it read as a frame cut short, "not JSON: '{"seq": 2, …'", which it is not."""
    rest = text[at:].lstrip(" \t\r\n")
    try:
        _json_exact_raw(rest)
    except (ValueError, RecursionError):
        return f"not JSON: a JSON value, then other text at character {at}: {text[:60]!r}"
    return (f"not one JSON value: a second one at character {at} (one event per frame: were two events sent in one "
            f"message?): {text[:60]!r}")


# A field looked up in more (container, name) pairs than this is looked up in a loop (_find_plain), not unrolled.
_UNROLL_MAX = 32


def _find_plain(scopes: tuple[dict[str, Any] | None, ...], names: tuple[str, ...]) -> Any:
    """The first non-null value of the names in each container in turn (None: a container the frame lacks)."""
    for container in scopes:
        if container is not None:
            for name in names:
                v = container.get(name)
                if v is not None:
                    return v
    return None


class _Source:
    """Lines of the generated decoder. Whatever comes from the profile (wire names, field names, container paths) is
    written only as a repr() literal; every identifier is one of this module's."""

    def __init__(self, containers: list[list[str]]) -> None:
        self.lines: list[str] = []
        self.depth = 1
        # The variable holding each lookup container, in the profile's order ("frame" is the root, never None).
        self.scopes: list[str] = []
        for i, path in enumerate(containers):
            if not path:
                self.scopes.append("frame")
                continue
            var = f"c{i}"
            self.emit(f"{var} = frame.get({path[0]!r})")
            for key in path[1:]:
                self.emit(f"{var} = {var}.get({key!r}) if isinstance({var}, dict) else None")
            self.emit(f"if {var}.__class__ is not dict and not isinstance({var}, dict):")
            self.emit(f"    {var} = None")
            self.scopes.append(var)
        # Where `_scopes` (all containers in one tuple) goes once a lookup too large to unroll needs it.
        self.scopes_at: int | None = len(self.lines)

    def emit(self, line: str) -> None:
        self.lines.append("    " * self.depth + line)

    @contextmanager
    def block(self, header: str | None) -> Iterator[None]:
        """An indented block under `header` (with a `pass` when nothing was written in it); None: no block."""
        if header is None:
            yield
            return
        self.emit(header)
        self.depth += 1
        start = len(self.lines)
        yield
        if len(self.lines) == start:
            self.emit("pass")
        self.depth -= 1

    def find(self, var: str, names: Names) -> bool:
        """`var` = the first non-null value of the names, step by step in the profile's order (plain names in each
        container, a dotted path from the root), as Decoder.find; False when the field has no names (then it is
        always None)."""
        first = True
        for step in names:
            if isinstance(step, tuple):
                first = self._find_plain(var, step, first)
                continue
            path = step
            if first:
                self.emit(f"{var} = None")
                first = False
            self.emit(f"if {var} is None:")
            if len(path) == 1:
                self.emit(f"    {var} = frame.get({path[0]!r})")
                continue
            # Flat, one line a key: a profile's path of any depth must not nest the source (Python's indent limit).
            self.emit(f"    _w = frame.get({path[0]!r})")
            for key in path[1:]:
                get = f"_w.get({key!r}) if isinstance(_w, dict) else None"
                if _index(key):  # an object's key, or a list's index
                    get = f"_w.get({key!r}) if isinstance(_w, dict) else _w[{int(key)}] " \
                          f"if isinstance(_w, list) and len(_w) > {int(key)} else None"
                self.emit(f"    _w = {get}")
            self.emit(f"    {var} = _w")
        if first:
            self.emit(f"{var} = None")
            return False
        return True

    def _find_plain(self, var: str, plain: tuple[str, ...], first: bool) -> bool:
        """A step of plain names, looked up in each container in turn; whether `var` is still unset after it."""
        if len(self.scopes) * len(plain) > _UNROLL_MAX:
            # Unrolled, containers x names lines: a profile within the YAML bounds (1,000 of each) made a million
            # lines, gigabytes and a MemoryError at compile time; a loop costs a call per frame, only for it.
            if self.scopes_at is not None:
                self.lines.insert(self.scopes_at, f"    _scopes = ({', '.join(self.scopes)},)")
                self.scopes_at = None
            call = f"_find_plain(_scopes, {tuple(plain)!r})"
            self.emit(f"{var} = {call}" if first else f"if {var} is None: {var} = {call}")
            return False
        for scope in self.scopes:
            for name in plain:
                get = f"{scope}.get({name!r})"
                if scope == "frame":
                    self.emit(f"{var} = {get}" if first else f"if {var} is None: {var} = {get}")
                elif first:
                    self.emit(f"{var} = {get} if {scope} is not None else None")
                else:
                    self.emit(f"if {var} is None and {scope} is not None: {var} = {get}")
                first = False
        return first

    def find_id(self, var: str, names: Names, name: str | None, sized: bool = False) -> bool:
        """`var` as _id makes it: a string cut to MAX_ID_BYTES (then `name` goes to the oversized list `ov`); `sized`:
        its length added to `nbytes`, what keeping the event costs (events.kept_bytes)."""
        if not self.find(var, names):
            return False
        extra = "" if name is None else f", {name!r}, ov"
        if not sized:
            self.emit(f"if {var} is not None and ({var}.__class__ is not str or len({var}) > {MAX_ID_BYTES}):")
            self.emit(f"    {var} = _id({var}{extra})[0]")
            return True
        self.size_id(var, extra)
        return True

    def size_id(self, var: str, extra: str) -> None:
        with self.block(f"if {var} is not None:"):
            self.emit(f"if {var}.__class__ is str and (length := len({var})) <= {MAX_ID_BYTES}:")
            self.emit("    nbytes += length")
            self.emit("else:")
            self.emit(f"    {var} = _id({var}{extra})[0]")
            self.emit(f"    nbytes += len({var})")


@functools.cache
def _builtin_types() -> dict[str, frozenset[str]]:
    """The wire types each built-in profile knows (events, spans, control, ping and error frames), as its Decoder
    reads them (the decoder is not compiled for this)."""
    from .catalog import builtin_profiles

    out: dict[str, frozenset[str]] = {}
    for name in builtin_profiles():
        dec = _decoder_of(load_profile(name))
        out[name] = frozenset({*dec.always, *dec.with_run, *dec.where, *dec.span_of, *dec.unmapped, *dec.control, *dec.ping,
                               *dec.conn_error})
    return out


def unknown_type_suffix(profile: Profile) -> Callable[[str], str]:
    """What an R12 says after `type 'X'` for a type `profile` does not know: in general, or, for a type another
    built-in profile knows (a recording of an AG-UI server checked as netra, the default), that the fix is --profile.
    The other profiles are read on the first unknown type, not at start-up (~18 ms of YAML for every run)."""
    general = f" is not in profile {profile.name!r} (add it to control or unmapped)"
    name = profile.name

    def suffix(wire_type: str) -> str:
        return _other_dialects(name).get(wire_type, general)

    return suffix


@functools.cache
def _other_dialects(name: str) -> dict[str, str]:
    """For the types the built-in profiles other than `name` know: what an R12 says of them under `name`."""
    other: dict[str, str] = {}
    for other_name, types in _builtin_types().items():
        if other_name != name:
            for t in sorted(types):
                other.setdefault(t, f" is not in profile {name!r} but is a type of profile {other_name!r} "
                                    f"(--profile {other_name}?)")
    return other


def _event_call(**given: str) -> str:
    """`return Event(...)` of the generated decoders: each field from the variable of its name, or the expression
    `given` names."""
    args = {name: name for name in (
        "role", "wire_type", "received_at", "run_id", "thread_id", "user_id", "message_id", "seq", "tool_call_id",
        "tool_name", "recoverable", "span", "server_time", "bad_seq", "oversized", "parent_run_id", "payload",
        "problems", "advice", "nbytes", "error_detail")}
    args.update(given)
    # Positional while the fields come in the order known here, by keyword after that (a field added to Event later
    # keeps its default).
    positional, keyword, in_order = [], [], True
    for name in Event.__struct_fields__:
        if name not in args:
            in_order = False
            continue
        if in_order:
            positional.append(args.pop(name))
        else:
            keyword.append(f"{name}={args.pop(name)}")
    if args:
        raise AssertionError(f"Event has no field {next(iter(args))}")
    return f"return Event({', '.join(positional + keyword)})"


def _generate(dec: Decoder) -> tuple[str, str, dict[str, Any]]:
    """The sources of `decode_obj` (a parsed frame) and `decode` (a text frame) for one profile, and the namespace they
    run in: the same Event or Frame for every frame as the table-driven lookups (Decoder.find) give, each field looked
    up only where the frame needs it."""
    profile, n = dec.profile, dec.names
    ns: dict[str, Any] = {
        "Event": Event, "Frame": Frame, "_id": _id, "_seq_text": _seq_text, "_find_plain": _find_plain, "_walk": _walk,
        "_error_detail": _error_detail, "HugeNumber": HugeNumber,
        "MALFORMED": FrameKind.MALFORMED, "PING_KIND": FrameKind.PING,
        "CONTROL_KIND": FrameKind.CONTROL, "ERROR_KIND": FrameKind.ERROR, "UNKNOWN_KIND": FrameKind.UNKNOWN,
        "MARKER_KIND": FrameKind.STREAM_END,
        "PING": dec.ping, "CONTROL": dec.control, "CONN_ERROR": dec.conn_error, "WITH_RUN": dec.with_run,
        "UNMAPPED": dec.unmapped, "UNMAPPED_PREFIXES": dec.unmapped_prefixes, "SESSION_ERRORS": dec.session_errors,
        "CONN_CODES": frozenset(profile.connection_error_codes), "CHECK_FRAMES": tuple(c.frame for c in dec.checks),
        "UNKNOWN_SUFFIX": unknown_type_suffix(profile), "STREAM_END": frozenset(profile.stream_end),
        "R_TOOL_EXECUTING": Role.TOOL_EXECUTING, "R_TOOL_COMPLETED": Role.TOOL_COMPLETED,
        "R_ERROR_EVENT": Role.ERROR_EVENT, "R_AGENT_STARTED": Role.AGENT_STARTED, "CONTROL_MATCH": CONTROL_MATCH,
    }
    # Spans by wire type or role: (name, kind, which key lookup), the lookups shared by spans keyed alike.
    keys: list[tuple[str, str | None, str | None]] = []
    span_of: dict[str, tuple[str, str, int]] = {}
    for t, (sp, kind) in dec.span_of.items():
        if (sp.key, sp.key_fallback, sp.owner) not in keys:
            keys.append((sp.key, sp.key_fallback, sp.owner))
        span_of[t] = (sp.name, kind, keys.index((sp.key, sp.key_fallback, sp.owner)))
    ns["SPAN_OF"] = span_of
    ns["SPAN_KEYS"] = tuple(keys)
    span_of_role = {role: span_of[role.value] for role in Role if role.value in span_of}
    ns["SPAN_OF_ROLE"] = span_of_role
    # Wire types whose role does not hang on the frame (all but `when: run` ones): role, span and whether the tool
    # fields are read, in one lookup.
    known: dict[str, tuple[Role | None, tuple[str, str, int] | None, bool]] = {}
    for t in dec.unmapped:
        if t not in dec.with_run and t not in dec.where:
            known[t] = (None, span_of.get(t), t in span_of)
    for t, role in dec.always.items():
        if t not in dec.where:
            known[t] = (role, span_of.get(t) or span_of_role.get(role),
                        role is Role.TOOL_EXECUTING or role is Role.TOOL_COMPLETED or t in span_of)
    ns["KNOWN"] = known
    # A type with `where` matches: its first match whose fields hold, else its plain mapping, else `when: run`'s.
    ns.update(WHERE=dec.where, WHERE_ROLE=_where_role, FALLBACK={t: dec.always[t] for t in dec.where if t in dec.always})

    src = _Source(dec.containers)
    emit = src.emit
    src.find("wire_type", n["type"])
    with src.block("if not isinstance(wire_type, str) or not wire_type:"):
        if profile.type_keys:
            # A frame told by a key it has (only here: a frame with a type costs nothing more).
            emit("if wire_type is None:")
            for i, key in enumerate(profile.type_keys):
                has = f"frame.get({key!r})" if "." not in key else f"_walk(frame, {key.split('.')!r})"
                emit(f"    {'if' if i == 0 else 'elif'} {has} is not None:")
                emit(f"        wire_type = {key!r}")
            emit("if wire_type.__class__ is not str or not wire_type:")
            emit("    return Frame(MALFORMED, detail=\"JSON object without a 'type'\", raw=frame)")
        else:
            emit("return Frame(MALFORMED, detail=\"JSON object without a 'type'\", raw=frame)")
    emit("nbytes = len(wire_type)")
    emit(f"if nbytes > {MAX_ID_BYTES}:")
    emit(f"    return Frame(MALFORMED, detail=f'type of {{nbytes}} characters (over {MAX_ID_BYTES})')")
    if dec.ping:
        emit("if wire_type in PING:")
        emit("    return Frame(PING_KIND, wire_type=wire_type, raw=frame)")
    if dec.control:
        with src.block("if wire_type in CONTROL:"):
            src.find_id("user_id", n["user_id"], None)
            emit("return Frame(CONTROL_KIND, wire_type=wire_type, raw=frame, user_id=user_id)")
    src.find("run_id", n["run_id"])
    if dec.conn_error:
        with src.block("if wire_type in CONN_ERROR:"):
            src.find_id("code", n["error_code"], None)
            # A connection-level answer (bad input, auth, resume) even when it names a run.
            with src.block("if run_id is None or code in CONN_CODES:"):
                src.find("message", n["error_message"])
                emit(f"if run_id is not None and (run_id.__class__ is not str or len(run_id) > {MAX_ID_BYTES}):")
                emit("    run_id = _id(run_id)[0]")
                # The message it answers, when it names one (a server that answers out of order says which).
                for var, name in (("err_message_id", "message_id"), ("err_thread_id", "thread_id")):
                    if not src.find_id(var, n[name], None):
                        emit(f"{var} = None")
                emit("return Frame(ERROR_KIND, wire_type=wire_type, error_code=code, detail=str(message or '')[:200], "
                     "raw=frame, run_id=run_id, session_error=SESSION_ERRORS.get(code or ''), "
                     "message_id=err_message_id, thread_id=err_thread_id)")
    emit("known = KNOWN.get(wire_type)")
    emit("if known is not None:")
    emit("    role, sp, tools = known")
    with src.block("else:"):
        if dec.where:
            emit("role = None")
            emit("where = WHERE.get(wire_type)")
            emit("if where is not None:")
            emit("    role = WHERE_ROLE(frame, run_id, where) or FALLBACK.get(wire_type)")
            if any(isinstance(c, ControlMatch) for c in profile.control):
                src.depth += 1
                with src.block("if role is CONTROL_MATCH:"):
                    src.find_id("user_id", n["user_id"], None)
                    emit("return Frame(CONTROL_KIND, wire_type=wire_type, raw=frame, user_id=user_id)")
                src.depth -= 1
            emit("if role is None and run_id is not None:")
            emit("    role = WITH_RUN.get(wire_type)")
        else:
            emit("role = WITH_RUN.get(wire_type) if run_id is not None else None")
        emit("if role is None and wire_type not in UNMAPPED"
             + (" and not wire_type.startswith(UNMAPPED_PREFIXES):" if dec.unmapped_prefixes else ":"))
        if profile.unknown_types == "violation":
            emit("    return Frame(MALFORMED, wire_type=wire_type, raw=frame, detail='type ' + repr(wire_type[:60]) + "
                 "UNKNOWN_SUFFIX(wire_type))")
        else:
            emit("    return Frame(UNKNOWN_KIND, wire_type=wire_type, raw=frame)")
        emit("sp = SPAN_OF.get(wire_type)")
        emit("if sp is None and role is not None:")
        emit("    sp = SPAN_OF_ROLE.get(role)")
        emit("tools = role is R_TOOL_EXECUTING or role is R_TOOL_COMPLETED or wire_type in SPAN_OF")
    emit("bad_seq = None")
    if src.find("seq", n["seq"]):
        # Not an integer, or one past 64 bits (json reads any; orjson none past them): an R12, judged without a seq.
        emit(f"if seq is not None and (seq.__class__ is not int or not {SEQ_MIN} <= seq <= {SEQ_MAX}) "
             "and (bad_seq := _seq_text(seq)) is not None:")
        emit("    seq = None")
    emit("ov = []")
    # What keeping the event costs the checker's byte budget (events.kept_bytes): the event, its type, its ids and a
    # timestamp kept as text, measured here while the lengths are at hand.
    emit(f"nbytes += {EVENT_OVERHEAD}")
    # The fields in the order the R12's list names them (oversized).
    src.size_id("run_id", ", 'run_id', ov")
    for name in ("thread_id", "user_id", "message_id"):
        src.find_id(name, n[name], name, sized=True)
    if src.find("server_time", n["timestamp"]):
        with src.block("if server_time is not None and server_time.__class__ is not float "
                       "and server_time.__class__ is not int:"):
            # (a HugeNumber as the text the server wrote, over MAX_TIME_BYTES an R12 as a string's)
            emit("if not isinstance(server_time, (int, float)) or server_time.__class__ is HugeNumber:")
            emit(f"    server_time = _id(server_time, 'timestamp', ov, {MAX_TIME_BYTES})[0]")
            emit("if isinstance(server_time, str):")
            emit("    nbytes += len(server_time)")
    emit("tool_call_id = tool_name = parent_run_id = None")
    emit("recoverable = False")
    with src.block("if tools:"):
        for name in ("tool_call_id", "tool_name"):
            src.find_id(name, n[name], name, sized=True)
    emit("error_detail = None")
    with src.block("if role is R_ERROR_EVENT:"):
        if n["recoverable"]:
            src.find("recoverable", n["recoverable"])
            emit("recoverable = recoverable is True")
        # What the server says went wrong, for the R13 an unexpected one is.
        if not src.find("code", n["error_code"]):
            emit("code = None")
        if not src.find("message", n["error_message"]):
            emit("message = None")
        emit("if code is not None or message is not None:")
        emit("    error_detail = _error_detail(code, message)")
        emit("    nbytes += len(error_detail)")
    if n["parent_run_id"]:
        with src.block("elif role is R_AGENT_STARTED:"):
            src.find_id("parent_run_id", n["parent_run_id"], "parent_run_id")
    if dec.checks:
        # The payload checks: the stateless ones now, and the fields the checker's ones will read.
        emit("problems = advice = ()")
        emit("for check in CHECK_FRAMES:")
        emit("    p, a = check(frame)")
        emit("    problems, advice = problems + p, advice + a")
        emit("payload = {}")
        for name in dec.check_fields:
            src.find("v", ((name,), ()))
            emit("if v is not None:")
            emit(f"    payload[{name!r}] = v")
    else:
        emit("problems = advice = ()")
        emit("payload = None")
    emit("span = None")
    if span_of:
        with src.block("if sp is not None:"):
            for i, (key, fallback, owner) in enumerate(keys):
                # One lookup per key the spans use (the span's index picks it).
                with src.block(f"{'if' if i == 0 else 'elif'} sp[2] == {i}:" if len(keys) > 1 else None):
                    src.find("key", n.get(key) or _split_names([key]))
                    if fallback:
                        with src.block("if key is None:"):
                            src.find("key", n.get(fallback) or _split_names([fallback]))
                    emit(f"if key is not None and (key.__class__ is not str or len(key) > {MAX_ID_BYTES}):")
                    emit(f"    key = _id(key, {key!r}, ov)[0]")
                    if owner:
                        # Whose span: (key, owner) when the frame names an owner (events.span_key_text shows it).
                        src.find("owner", n.get(owner) or _split_names([owner]))
                        with src.block("if owner is not None:"):
                            emit(f"if owner.__class__ is not str or len(owner) > {MAX_ID_BYTES}:")
                            emit(f"    owner = _id(owner, {owner!r}, ov)[0]")
                            emit("nbytes += len(owner)")
                            emit("key = (key, owner)")
            emit("span = (sp[0], sp[1], key)")
    emit(_event_call(oversized="tuple(ov) if ov else ()"))
    body = ["    if not isinstance(frame, dict):",
            "        return Frame(MALFORMED, detail=f'a JSON {type(frame).__name__}, not an object')", *src.lines]
    # The same body twice: after the JSON parse of a text frame (a call fewer per frame), and for a parsed frame.
    ns.update(_loads=_fast_loads, _loads_or_malformed=_loads_or_malformed, _WideInt=_WideInt,
              _NotJSONNumber=_NotJSONNumber, _with_not_json=_with_not_json, _json_loads=_json_exact,
              _plain_obj=None)
    parse = ["def decode(text, received_at):",
             "    if text.__class__ is not str and isinstance(text, (bytes, bytearray)):",
             "        return Frame(MALFORMED, detail=f'binary frame of {len(text)} bytes where JSON text was expected')",
             "    try:",
             "        frame = _loads(text)",
             "    except ValueError:",
             *(["        if text in STREAM_END:",  # not JSON, by the profile's check: only where a parse failed
                "            return Frame(MARKER_KIND, wire_type=str(text))"] if profile.stream_end else []),
             "        frame = _loads_or_malformed(text)",
             "        if frame.__class__ is Frame:",
             "            return frame",
             "        if frame.__class__ is _NotJSONNumber:",  # NaN or Infinity: read by the plain decode_obj, an R12
             "            return _with_not_json(_plain_obj(frame.value, received_at), frame.reason)"]
    # The text path's body inside a try (free in Python 3.11 until it raises): see Decoder._compile for _WideInt.
    guarded = ["    try:", *("    " + line for line in body),
               "    except _WideInt:", "        return _plain_obj(_json_loads(text), received_at)"]
    return "\n".join(["def decode_obj(frame, received_at):", *body]) + "\n", "\n".join([*parse, *guarded]) + "\n", ns


# What msgspec refuses in a struct field's (renamed) name: defstruct raised ValueError at the decoder's compile (and
# UnicodeEncodeError for a lone surrogate, which no YAML file holds but a profile built in Python may).
_NO_STRUCT_NAME = re.compile(r'["\\\x00-\x1f\ud800-\udfff]')


class _StructTree:
    """The keys the fast path reads, as a tree: a leaf is a field's value, of the kinds of the fields that read it, an
    inner node an object (a lookup container, or a step of a dotted path). A key both (or a list index) makes no tree:
    no fast path; nor does a key msgspec will not take for a field's name (one with a '"', a backslash or a control
    character: the exact decode reads it as any other)."""

    def __init__(self) -> None:
        self.children: dict[str, _StructTree] = {}
        self.kinds: set[str] = set()

    def node(self, path: tuple[str, ...] | list[str], kind: str | None) -> bool:
        """Add a path, a leaf of `kind` (None: an object); False when a struct cannot tell it (a key both a value and
        an object, a list index)."""
        at = self
        for i, key in enumerate(path):
            if _index(key) or at.kinds or _NO_STRUCT_NAME.search(key):
                return False
            at = at.children.setdefault(key, _StructTree())
            if i < len(path) - 1 and at.kinds:
                return False
        if kind is not None and at.children or kind is None and at.kinds:
            return False
        if kind is not None:
            at.kinds.add(kind)
        return True

    def struct(self, types: dict[str, Any], made: list[Any]) -> Any:
        """The msgspec Struct of this object (every field None when absent); attribute `a{i}` is its i-th key, of its
        kind's type (a value of another type is a ValidationError: the frame is not the common one), `object` when
        fields of two kinds read it."""
        import msgspec

        fields: list[tuple[str, Any, None]] = []
        for i, child in enumerate(self.children.values()):
            kind = (types[next(iter(child.kinds))] if len(child.kinds) == 1 else object) if child.kinds \
                else child.struct(types, made) | None
            fields.append((f"a{i}", kind, None))
        cls = msgspec.defstruct(f"S{len(made)}", fields, rename=dict(zip((f[0] for f in fields), self.children,
                                                                       strict=True)), gc=False)
        made.append(cls)
        return cls

    def at(self, path: tuple[str, ...] | list[str]) -> "_StructTree":
        at = self
        for key in path:
            at = at.children[key]
        return at

    def attr(self, path: tuple[str, ...] | list[str]) -> str:
        at, out = self, []
        for key in path:
            out.append(f"a{list(at.children).index(key)}")
            at = at.children[key]
        return ".".join(out)


def _generate_fast(dec: Decoder, ns: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The source of a `decode` of text frames that reads the common frame (an event of a known type whose fields are
    short strings and an integer seq) from a msgspec Struct made of the profile's names: no dict for the keys it does
    not read, an attribute for each it does, its type checked by msgspec. Anything else (not a struct's shape, a value
    not of the common kind, a frame that is not an event, any error) is `_exact`'s, the decode of `_generate`: the
    same Event for every frame. None for a profile it cannot serve (payload checks read the whole frame; a list index,
    a key both an object and a value; a field of more names than is unrolled) or whose frames it would often hand on,
    each parsed twice then (`where` matches walk the frame's dict; unknown types ignored are Frames that keep it, as
    many as a server likes)."""
    if dec.checks or dec.where or dec.profile.unknown_types == "ignore":
        return None
    try:
        import msgspec
    except ImportError:  # pragma: no cover - msgspec is a dependency
        return None
    n = dec.names
    span_keys: tuple[tuple[str, str | None, str | None], ...] = ns["SPAN_KEYS"]

    def names_of(key: str) -> Names:
        return n.get(key) or _split_names([key])

    # What a field's value must be for the common frame (whatever else it is, _exact reads the frame): an id a string
    # within the bound, a seq an integer of 64 bits (signed: one of 2**63 and more is _exact's), a timestamp a number
    # (an integer orjson reads as one) or a short string, an error's code and message strings.
    int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
    types = {"id": Annotated[str, msgspec.Meta(max_length=MAX_ID_BYTES)] | None, "seq": int64 | None,
             "time": float | int64 | Annotated[str, msgspec.Meta(max_length=MAX_TIME_BYTES)] | None,
             "text": str | None, "any": object}
    kinds = {"type": "id", "run_id": "id", "seq": "seq", "thread_id": "id", "user_id": "id", "message_id": "id",
             "timestamp": "time", "tool_call_id": "id", "tool_name": "id", "recoverable": "any", "error_code": "text",
             "error_message": "text", "parent_run_id": "id"}
    lookups: list[tuple[str, Names]] = [(kind, n[f]) for f, kind in kinds.items()]
    for key, fallback, owner in span_keys:
        # The key always (`key: ""` reads the frame's field "", as the exact decode does); a fallback or owner when named.
        lookups += [("id", names_of(k)) for k in (key, fallback, owner) if k or k is key]

    def leaves(names: Names) -> list[tuple[str, ...] | list[str]]:
        return [path for step in names
                for path in ([(*c, name) for c in dec.containers for name in step] if step.__class__ is tuple
                             else [step])]

    tree = _StructTree()
    for path in dec.containers:
        if path and not tree.node(path, None):
            return None
    for kind, names in lookups:
        if any(step.__class__ is tuple and len(dec.containers) * len(step) > _UNROLL_MAX for step in names):
            return None
        if not all(tree.node(path, kind) for path in leaves(names)):
            return None
    root = tree.struct(types, [])

    def typed(names: Names, kind: str) -> bool:
        """Whether msgspec checked every value these names find (else a check of the value is written)."""
        return all(tree.at(path).kinds == {kind} for path in leaves(names))

    lines: list[str] = []
    depth = [1]

    def emit(line: str) -> None:
        lines.append("    " * depth[0] + line)

    scopes: list[tuple[str, tuple[str, ...]]] = []
    emit("if text.__class__ is not str:")
    emit("    return _exact(text, received_at)")
    emit("try:")
    emit("    f = _struct(text)")
    emit("except Exception:")  # not JSON, not the struct's shape, nesting past the stack: as ever
    emit("    return _exact(text, received_at)")
    for i, path in enumerate(dec.containers):
        if not path:
            scopes.append(("f", ()))
            continue
        var = f"c{i}"
        emit(f"{var} = f.{tree.attr(path[:1])}")
        for j in range(2, len(path) + 1):
            emit(f"if {var} is not None: {var} = {var}.{tree.attr(path[:j]).rsplit('.', 1)[-1]}")
        scopes.append((var, tuple(path)))

    def find(var: str, names: Names) -> bool:
        """`var` found by `names`, the first place that holds it; the places after the first are looked at under one
        `if var is None:` (a field at its first place, as most are, costs one test, not one for each other place)."""
        first, opened, fresh = True, False, False

        def another() -> None:  # before each look-up after the first
            nonlocal opened, fresh
            fresh = not opened  # the first look-up in the block: `var` is None there
            if not opened:
                emit(f"if {var} is None:")
                depth[0] += 1
                opened = True

        for step in names:
            if step.__class__ is tuple:
                for scope, path in scopes:
                    for name in step:
                        get = f"{scope}.{tree.attr((*path, name)).rsplit('.', 1)[-1]}"
                        if first:
                            emit(f"{var} = {get}" if scope == "f" else f"{var} = {get} if {scope} is not None else None")
                            first = False
                            continue
                        another()
                        if scope == "f":
                            emit(f"{var} = {get}" if fresh else f"if {var} is None: {var} = {get}")
                        else:
                            emit(f"if {scope} is not None: {var} = {get}" if fresh
                                 else f"if {var} is None and {scope} is not None: {var} = {get}")
                continue
            if first:
                emit(f"{var} = None")
                first = False
            another()
            attrs = tree.attr(step).split(".")
            pad = "" if fresh else "    "
            if not fresh:
                emit(f"if {var} is None:")
            emit(f"{pad}_w = f.{attrs[0]}")
            for a in attrs[1:]:
                emit(f"{pad}if _w is not None: _w = _w.{a}")
            emit(f"{pad}{var} = _w")
        if opened:
            depth[0] -= 1
        if first:
            emit(f"{var} = None")
            return False
        return True

    def plain_id(var: str, sized: bool, *names: Names) -> None:
        """An id: a string within the bound (msgspec's check, or one written here), its length counted if `sized`."""
        checked = all(typed(ns, "id") for ns in names)
        if checked and not sized:
            return
        emit(f"if {var} is not None:")
        if not checked:
            emit(f"    if {var}.__class__ is not str or len({var}) > {MAX_ID_BYTES}:")
            emit("        return _exact(text, received_at)")
        if sized:
            emit(f"    nbytes += len({var})")

    # The event types the fast path serves: those whose role hangs on nothing but the type, never a Frame's.
    frame_types = dec.ping | dec.control | dec.conn_error
    ns = dict(ns, FAST_KNOWN={t: v for t, v in ns["KNOWN"].items()
                              if t not in frame_types and 0 < len(t) <= MAX_ID_BYTES},
              _struct=msgspec.json.Decoder(root).decode, SEQ_MIN=SEQ_MIN, SEQ_MAX=SEQ_MAX)
    find("wire_type", n["type"])
    emit("known = FAST_KNOWN.get(wire_type)" + ("" if typed(n["type"], "id") else " if wire_type.__class__ is str else None"))
    emit("if known is None:")
    emit("    return _exact(text, received_at)")
    emit("role, sp, tools = known")
    emit(f"nbytes = len(wire_type) + {EVENT_OVERHEAD}")
    find("run_id", n["run_id"])
    plain_id("run_id", True, n["run_id"])
    if find("seq", n["seq"]) and not typed(n["seq"], "seq"):
        emit("if seq is not None and (seq.__class__ is not int or not SEQ_MIN <= seq <= SEQ_MAX):")
        emit("    return _exact(text, received_at)")
    for name in ("thread_id", "user_id", "message_id"):
        if find(name, n[name]):
            plain_id(name, True, n[name])
    if find("server_time", n["timestamp"]) and typed(n["timestamp"], "time"):
        emit("if server_time.__class__ is str:")
        emit("    nbytes += len(server_time)")
    elif n["timestamp"]:
        # A float or an integer of 64 bits reads the same in both parsers (orjson's float for a wider integer is not
        # msgspec's int: that one is _exact's); a short string is kept as sent.
        emit("if server_time is not None and server_time.__class__ is not float:")
        emit("    if server_time.__class__ is int and SEQ_MIN <= server_time <= SEQ_MAX:")
        emit("        pass")
        emit(f"    elif server_time.__class__ is str and len(server_time) <= {MAX_TIME_BYTES}:")
        emit("        nbytes += len(server_time)")
        emit("    else:")
        emit("        return _exact(text, received_at)")
    emit("tool_call_id = tool_name = parent_run_id = error_detail = None")
    emit("recoverable = False")
    emit("if tools:")
    depth[0] += 1
    emit("pass")
    for name in ("tool_call_id", "tool_name"):
        if find(name, n[name]):
            plain_id(name, True, n[name])
    depth[0] -= 1
    emit("if role is R_ERROR_EVENT:")
    depth[0] += 1
    if n["recoverable"]:
        find("recoverable", n["recoverable"])
        emit("recoverable = recoverable is True")
    for var, name in (("code", "error_code"), ("message", "error_message")):
        if find(var, n[name]) and not typed(n[name], "text"):  # (what _error_detail makes of others is _exact's)
            emit(f"if {var} is not None and {var}.__class__ is not str:")
            emit("    return _exact(text, received_at)")
    emit("if code is not None or message is not None:")
    emit("    error_detail = _error_detail(code, message)")
    emit("    nbytes += len(error_detail)")
    depth[0] -= 1
    if n["parent_run_id"]:
        emit("elif role is R_AGENT_STARTED:")
        depth[0] += 1
        find("parent_run_id", n["parent_run_id"])
        plain_id("parent_run_id", False, n["parent_run_id"])
        depth[0] -= 1
    emit("span = None")
    if span_keys:
        emit("if sp is not None:")
        depth[0] += 1
        for i, (key, fallback, owner) in enumerate(span_keys):
            if len(span_keys) > 1:
                emit(f"{'if' if i == 0 else 'elif'} sp[2] == {i}:")
                depth[0] += 1
            find("key", names_of(key))
            if fallback:
                emit("if key is None:")
                depth[0] += 1
                emit("pass")
                find("key", names_of(fallback))
                depth[0] -= 1
            plain_id("key", False, names_of(key), *([names_of(fallback)] if fallback else []))
            if owner:
                find("owner", names_of(owner))
                plain_id("owner", True, names_of(owner))
                emit("if owner is not None:")
                emit("    key = (key, owner)")
            if len(span_keys) > 1:
                depth[0] -= 1
        emit("span = (sp[0], sp[1], key)")
        depth[0] -= 1
    emit(_event_call(bad_seq="None", oversized="()", payload="None",
                     problems="()", advice="()"))
    return "\n".join(["def decode(text, received_at):", *lines]) + "\n", ns


BUILTIN_DIR = PROFILES_DIR


# The profiles loaded within `loaded_once()`, by the name or path they were asked for; None outside it.
_LOADED: contextvars.ContextVar[dict[str, Profile] | None] = contextvars.ContextVar("_LOADED", default=None)


@contextmanager
def loaded_once() -> Iterator[None]:
    """Within the block, each profile is read, checked and compiled once per name or path it is asked for, and the
    one Profile shared by all that ask: what builds many targets at once (`chatprobe monitor`'s config) loaded it per
    target, its YAML and its decoder's compile (~10 ms of CPU each), 1,000 times for 1,000 targets of one profile. A
    Profile is shared among targets as one target's users share it. Outside
    the block every call reads the file again (an edited profile is seen by the next run)."""
    token = _LOADED.set({})
    try:
        yield
    finally:
        _LOADED.reset(token)


def load_profile(name_or_path: str) -> Profile:
    """A built-in profile by name ("netra", "ag-ui") or a user's YAML file by path (once per name within
    `loaded_once()`)."""
    memo = _LOADED.get()
    if memo is not None and (loaded := memo.get(name_or_path)) is not None:
        return loaded
    profile = load_builtin_or_file(Profile, name_or_path, BUILTIN_DIR, "harness/profiles", "--profile")
    if memo is not None:
        memo[name_or_path] = profile
    return profile
