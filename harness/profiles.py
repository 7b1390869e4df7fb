"""Protocol profiles as data: how one wire dialect's frames map onto the seven canonical roles.

A profile is a YAML file (see harness/profiles/netra.yaml). `Profile.decode` turns one text frame into an
Event (an agent event of some run) or a Frame (welcome, ping, connection-level error, malformed): the only
place where wire-format details live.
"""
from __future__ import annotations

import json
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from .events import DEFAULT_REQUIRED, Event, Frame, Role
from .yamlfile import builtin_names, load_builtin_or_file

_MISSING = object()


class RoleMatch(BaseModel):
    """A wire type mapped to a role, optionally only when the frame names a run (`when: run`)."""

    model_config = ConfigDict(extra="forbid")
    type: str
    when: Literal["always", "run"] = "always"


class Span(BaseModel):
    """Wire types (or roles) that open, continue and close something by key, e.g. a tool call (R5)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    open: list[str]
    close: list[str]
    inner: list[str] = []
    key: str
    key_fallback: str | None = None
    # Whether a span still open at the terminal event is a violation.
    must_close: bool = True


class Fields(BaseModel):
    """For each canonical field, the wire names to try, in order (a dotted name is a path from the root)."""

    model_config = ConfigDict(extra="forbid")
    type: list[str] = ["type"]
    run_id: list[str] = ["run_id"]
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
    extra: dict[str, list[str]] = {}


class Ping(BaseModel):
    model_config = ConfigDict(extra="forbid")
    types: list[str] = ["ping"]
    reply: dict[str, Any] | None = {"type": "pong"}


TransportName = Literal["websocket", "sse"]


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
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
    # are filled in, and a key whose whole value is a placeholder with no value is left out.
    request: dict[str, Any]
    # Client frame types that start a run (what the proxy watches for); default: the request's own type.
    request_types: list[str] = []
    resume: dict[str, Any] | None = None
    # Containers searched for each field, in order: "" is the frame's root.
    lookup: list[str] = [""]
    fields: Fields = Fields()
    roles: dict[Role, list[str | RoleMatch]]
    # Wire types that belong to a run but map to no role (span markers, raw chunks…).
    unmapped: list[str] = []
    control: list[str] = []
    # A frame whose type the profile does not know: an R12 (well-formed means a type of this dialect), or ignored
    # for servers that add types of their own freely.
    unknown_types: Literal["violation", "ignore"] = "violation"
    ping: Ping = Ping()
    connection_error: list[str] = []
    # Error codes of a connection_error frame that never end a run, even when the frame names one.
    connection_error_codes: list[str] = ["AUTH_FAILED", "INVALID_MESSAGE", "RESUME_UNKNOWN_RUN"]
    # Fields whose presence marks a frame as a welcome / control frame even when its type is unknown.
    spans: list[Span] = []
    required: list[Role] = list(DEFAULT_REQUIRED)
    thinking_before_tool: bool = True
    # A terminal error is recoverable only when the recoverable field says so.
    auth_subprotocol: bool = True

    @field_validator("lookup")
    @classmethod
    def _lookup_nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("lookup needs at least one container ('' for the root)")
        return v

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
                cond = "always" if isinstance(m, str) else m.when
                if (t, cond) in seen:
                    raise ValueError(f"wire type {t!r} is mapped to both {seen[(t, cond)]} and {role.value}")
                seen[(t, cond)] = role.value
        return roles

    @field_validator("spans")
    @classmethod
    def _spans_disjoint(cls, spans: list[Span]) -> list[Span]:
        span_types: set[str] = set()
        for span in spans:
            for t in span.open + span.inner + span.close:
                if t in span_types:
                    raise ValueError(f"wire type or role {t!r} belongs to more than one span")
                span_types.add(t)
        return spans

    @model_validator(mode="after")
    def _check(self) -> "Profile":
        self._compile()
        return self

    @property
    def spans_must_close(self) -> frozenset[str]:
        """Names of the spans a completed run must have closed (R5)."""
        return frozenset(s.name for s in self.spans if s.must_close)

    @property
    def transports(self) -> list[str]:
        """The transports this profile may be spoken over, its usual one first."""
        return list(self.transport) if isinstance(self.transport, list) else [self.transport]

    # -- compiled lookup tables (built once; decode is the per-frame hot path) --
    def _compile(self) -> None:
        always: dict[str, Role] = {}
        with_run: dict[str, Role] = {}
        for role, matches in self.roles.items():
            for m in matches:
                if isinstance(m, str):
                    always[m] = role
                elif m.when == "run":
                    with_run[m.type] = role
                else:
                    always[m.type] = role
        span_of: dict[str, tuple[Span, str]] = {}
        for span in self.spans:
            for kind, names in (("open", span.open), ("inner", span.inner), ("close", span.close)):
                for n in names:
                    span_of[n] = (span, kind)
        object.__setattr__(self, "_always", always)
        object.__setattr__(self, "_with_run", with_run)
        object.__setattr__(self, "_unmapped", frozenset(self.unmapped))
        object.__setattr__(self, "_control", frozenset(self.control))
        object.__setattr__(self, "_ping", frozenset(self.ping.types))
        object.__setattr__(self, "_conn_error", frozenset(self.connection_error))
        object.__setattr__(self, "_span_of", span_of)
        object.__setattr__(self, "_containers", [c.split(".") if c else [] for c in self.lookup])
        # Each field's names split once into plain keys (looked up in every container) and dotted paths.
        compiled = {name: _split_names(getattr(self.fields, name)) for name in Fields.model_fields if name != "extra"}
        compiled.update({name: _split_names(names) for name, names in self.fields.extra.items()})
        object.__setattr__(self, "_names", compiled)

    # -- field lookup (the per-frame hot path: containers resolved once per frame, names split once) --
    def _scopes(self, frame: dict[str, Any]) -> list[dict[str, Any]]:
        scopes = []
        for path in self._containers:  # type: ignore[attr-defined]
            container: Any = frame
            for p in path:
                container = container.get(p) if isinstance(container, dict) else None
            if isinstance(container, dict):
                scopes.append(container)
        return scopes

    @staticmethod
    def _find(frame: dict[str, Any], scopes: list[dict[str, Any]], names: tuple[tuple[str, ...], tuple[list[str], ...]]) -> Any:
        plain, dotted = names
        for container in scopes:
            for name in plain:
                v = container.get(name)
                if v is not None:
                    return v
        for path in dotted:
            v: Any = frame
            for p in path:
                v = v.get(p) if isinstance(v, dict) else None
            if v is not None:
                return v
        return None

    def _get(self, frame: dict[str, Any], names: list[str]) -> Any:
        return self._find(frame, self._scopes(frame), _split_names(names))

    def field(self, frame: dict[str, Any], name: str) -> Any:
        names = self._names.get(name)  # type: ignore[attr-defined]
        if names is None:
            return self._get(frame, [name])
        return self._find(frame, self._scopes(frame), names)

    # -- the one decode --
    def decode(self, text: str | bytes, received_at: float) -> Event | Frame:
        if isinstance(text, (bytes, bytearray)):
            return Frame("malformed", detail=f"binary frame of {len(text)} bytes where JSON text was expected")
        try:
            frame = json.loads(text)
        except (ValueError, RecursionError):
            return Frame("malformed", detail=f"not JSON: {text[:60]!r}")
        return self.decode_obj(frame, received_at)

    def decode_obj(self, frame: Any, received_at: float) -> Event | Frame:
        if not isinstance(frame, dict):
            return Frame("malformed", detail=f"a JSON {type(frame).__name__}, not an object")
        n = self._names  # type: ignore[attr-defined]
        scopes = self._scopes(frame)
        find = self._find
        wire_type = find(frame, scopes, n["type"])
        if not isinstance(wire_type, str) or not wire_type:
            return Frame("malformed", detail="JSON object without a 'type'", raw=frame)
        if wire_type in self._ping:  # type: ignore[attr-defined]
            return Frame("ping", wire_type=wire_type, raw=frame)
        if wire_type in self._control:  # type: ignore[attr-defined]
            return Frame("control", wire_type=wire_type, raw=frame)
        run_id = find(frame, scopes, n["run_id"])
        if wire_type in self._conn_error:  # type: ignore[attr-defined]
            code = _str(find(frame, scopes, n["error_code"]))
            # A connection-level answer (bad input, auth, resume) even when it names a run.
            if run_id is None or code in self.connection_error_codes:
                return Frame("error", wire_type=wire_type, error_code=code,
                             detail=str(find(frame, scopes, n["error_message"]) or "")[:200], raw=frame)
        role = self._always.get(wire_type)  # type: ignore[attr-defined]
        if role is None and run_id is not None:
            role = self._with_run.get(wire_type)  # type: ignore[attr-defined]
        if role is None and wire_type not in self._unmapped:  # type: ignore[attr-defined]
            if self.unknown_types == "violation":
                return Frame("malformed", wire_type=wire_type, raw=frame,
                             detail=f"type {wire_type[:60]!r} is not in profile {self.name!r} (add it to control or unmapped)")
            return Frame("unknown", wire_type=wire_type, raw=frame)
        seq = find(frame, scopes, n["seq"])
        bad_seq = None
        if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
            bad_seq, seq = seq, None
        ev = Event(
            role=role,
            wire_type=wire_type,
            received_at=received_at,
            run_id=_str(run_id),
            thread_id=_str(find(frame, scopes, n["thread_id"])),
            user_id=_str(find(frame, scopes, n["user_id"])),
            message_id=_str(find(frame, scopes, n["message_id"])),
            seq=seq,
            bad_seq=bad_seq,
            server_time=find(frame, scopes, n["timestamp"]),
        )
        if role is Role.TOOL_EXECUTING or role is Role.TOOL_COMPLETED or wire_type in self._span_of:  # type: ignore[attr-defined]
            ev.tool_call_id = _str(find(frame, scopes, n["tool_call_id"]))
            ev.tool_name = _str(find(frame, scopes, n["tool_name"]))
        if role is Role.ERROR_EVENT:
            ev.recoverable = find(frame, scopes, n["recoverable"]) is True
        span = self._span_of.get(wire_type) or (self._span_of.get(role.value) if role else None)  # type: ignore[attr-defined]
        if span is not None:
            sp, kind = span
            key = find(frame, scopes, n.get(sp.key) or _split_names([sp.key]))
            if key is None and sp.key_fallback:
                key = find(frame, scopes, n.get(sp.key_fallback) or _split_names([sp.key_fallback]))
            ev.span = (sp.name, kind, _str(key))
        return ev

    # -- building what the client sends --
    def build_request(self, **values: Any) -> dict[str, Any]:
        return _fill(self.request, values)

    def build_resume(self, run_id: str, last_seq: int) -> dict[str, Any] | None:
        if self.resume is None:
            return None
        return _fill(self.resume, {"run_id": run_id, "last_seq": last_seq})

    def ping_reply(self) -> dict[str, Any] | None:
        return self.ping.reply


def _split_names(names: list[str]) -> tuple[tuple[str, ...], tuple[list[str], ...]]:
    return tuple(x for x in names if "." not in x), tuple(x.split(".") for x in names if "." in x)


def _str(v: Any) -> str | None:
    if v is None:
        return None
    return v if isinstance(v, str) else str(v)


def _fill(template: Any, values: dict[str, Any]) -> Any:
    if isinstance(template, dict):
        out = {}
        for k, v in template.items():
            filled = _fill(v, values)
            if filled is _MISSING:
                continue
            out[k] = filled
        return out
    if isinstance(template, list):
        return [x for x in (_fill(v, values) for v in template) if x is not _MISSING]
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


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return ""


BUILTIN_DIR = resources.files("harness") / "profiles"


def builtin_profiles() -> list[str]:
    return builtin_names(BUILTIN_DIR)


def load_profile(name_or_path: str) -> Profile:
    """A built-in profile by name ("netra", "ag-ui") or a user's YAML file by path."""
    return load_builtin_or_file(Profile, name_or_path, BUILTIN_DIR, "harness/profiles", "--profile")
