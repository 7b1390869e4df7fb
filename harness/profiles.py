"""Protocol profiles as data: how one wire dialect's frames map onto the seven canonical roles.

A profile is a YAML file (see harness/profiles/netra.yaml). `Profile.decode` turns one text frame into an
Event (an agent event of some run) or a Frame (welcome, ping, connection-level error, malformed): the only
place where wire-format details live.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, field_validator

from .catalog import PROFILES_DIR
from .events import DEFAULT_REQUIRED, Event, Frame, FrameKind, Role, SessionError
from .eventstream import StreamProblem
from .payload_checks import CHECKS, CheckSet
from .yamlfile import load_builtin_or_file

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
    # On the event that starts a run: the finished run it continues, so a new run on the same stream is its own chat.
    parent_run_id: list[str] = ["parent_run_id"]
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
    # Client frame types that resume a run; default: the resume template's own type.
    resume_types: list[str] = []
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
    # Which of those codes mean "bad credentials" and "unknown run on resume".
    session_errors: SessionErrors = SessionErrors()
    # Fields whose presence marks a frame as a welcome / control frame even when its type is unknown.
    spans: list[Span] = []
    required: list[Role] = list(DEFAULT_REQUIRED)
    thinking_before_tool: bool = True
    # Every agent event of this dialect names its run (netra): one that names none is not this client's (R8).
    events_name_run: bool = False
    # A terminal error is recoverable only when the recoverable field says so.
    auth_subprotocol: bool = True
    # Named payload check sets (harness/payload_checks.py) run on every event: the schema, ids, arguments, state.
    checks: list[str] = []

    _decoder: "Decoder" = PrivateAttr()

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

    @field_validator("checks")
    @classmethod
    def _checks_known(cls, v: list[str]) -> list[str]:
        unknown = [n for n in v if n not in CHECKS]
        if unknown:
            raise ValueError(f"unknown check set {unknown[0]!r} (known: {', '.join(CHECKS)})")
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
    def spans_must_close(self) -> frozenset[str]:
        """Names of the spans a completed run must have closed (R5)."""
        return frozenset(s.name for s in self.spans if s.must_close)

    @property
    def transports(self) -> list[str]:
        """The transports this profile may be spoken over, its usual one first."""
        return list(self.transport) if isinstance(self.transport, list) else [self.transport]

    # -- the one decode (the compiled Decoder does the work) --
    def decode(self, text: str | bytes, received_at: float) -> Event | Frame:
        """One frame from the server: an agent event of some run, or a Frame (control, ping, error, malformed)."""
        return self._decoder.decode(text, received_at)

    def decode_obj(self, frame: Any, received_at: float) -> Event | Frame:
        return self._decoder.decode_obj(frame, received_at)

    def decode_client(self, text: str | bytes) -> ClientFrame:
        """One frame from the client (what the proxy and recordings see): a chat request, a resume, or other."""
        return self._decoder.decode_client(text)

    def field(self, frame: dict[str, Any], name: str) -> Any:
        """A canonical field (`run_id`, …) of a decoded JSON frame, looked up as the profile says."""
        return self._decoder.field(frame, name)

    # -- building what the client sends --
    def build_request(self, **values: Any) -> dict[str, Any]:
        filled: dict[str, Any] = _fill(self.request, values)
        return filled

    def build_resume(self, run_id: str, last_seq: int) -> dict[str, Any] | None:
        if self.resume is None:
            return None
        filled: dict[str, Any] = _fill(self.resume, {"run_id": run_id, "last_seq": last_seq})
        return filled

    def ping_reply(self) -> dict[str, Any] | None:
        return self.ping.reply


# Longest id (run, thread, user, message, tool call, tool name, wire type) and server timestamp kept as sent; longer
# ones are an R12 and kept truncated, so a server cannot make the harness hold megabytes per event.
MAX_ID_BYTES = 1024
MAX_TIME_BYTES = 64

Names = tuple[tuple[str, ...], tuple[list[str], ...]]


@dataclass(frozen=True, slots=True)
class ClientFrame:
    """What a profile made of a frame the client sent: a chat request, a resume, or anything else."""

    kind: Literal["request", "resume", "other", "malformed"]
    wire_type: str | None = None
    run_id: str | None = None
    thread_id: str | None = None
    message_id: str | None = None


class Decoder:
    """A profile compiled once into lookup tables for the per-frame hot path (decode and the field lookups)."""

    __slots__ = ("profile", "always", "with_run", "unmapped", "control", "ping", "conn_error", "span_of",
                 "containers", "names", "session_errors", "request_types", "resume_types", "checks", "check_fields")

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.always: dict[str, Role] = {}
        self.with_run: dict[str, Role] = {}
        for role, matches in profile.roles.items():
            for m in matches:
                if isinstance(m, str):
                    self.always[m] = role
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
        self.control = frozenset(profile.control)
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
        resume_type = (self.find(profile.resume, self.scopes(profile.resume), self.names["type"])
                       if profile.resume else None)
        self.resume_types = frozenset(profile.resume_types or ([resume_type] if isinstance(resume_type, str) else []))
        self.checks: tuple[CheckSet, ...] = tuple(CHECKS[name] for name in profile.checks)
        self.check_fields = tuple(dict.fromkeys(f for c in self.checks for f in c.fields))

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
        plain, dotted = names
        for container in scopes:
            for name in plain:
                v = container.get(name)
                if v is not None:
                    return v
        for path in dotted:
            v = frame
            for p in path:
                v = v.get(p) if isinstance(v, dict) else None
            if v is not None:
                return v
        return None

    def field(self, frame: dict[str, Any], name: str) -> Any:
        names = self.names.get(name) or _split_names([name])
        return self.find(frame, self.scopes(frame), names)

    # -- frames from the server --
    def decode(self, text: str | bytes, received_at: float) -> Event | Frame:
        if isinstance(text, (bytes, bytearray)):
            return Frame(FrameKind.MALFORMED, detail=f"binary frame of {len(text)} bytes where JSON text was expected")
        try:
            frame = _fast_loads(text)
        except ValueError:
            # orjson refuses what json accepts (NaN, integers past 64 bits, depth past 1024): json decides, so a
            # frame means what it always meant.
            try:
                frame = json.loads(text)
            except (ValueError, RecursionError):
                if isinstance(text, StreamProblem):  # what the transport found wrong in the stream itself
                    return Frame(FrameKind.MALFORMED, detail=str(text))
                return Frame(FrameKind.MALFORMED, detail=f"not JSON: {text[:60]!r}")
        return self.decode_obj(frame, received_at)

    def decode_obj(self, frame: Any, received_at: float) -> Event | Frame:
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
                             run_id=_id(run_id)[0], session_error=self.session_errors.get(code or ""))
        role = self.always.get(wire_type)
        if role is None and run_id is not None:
            role = self.with_run.get(wire_type)
        if role is None and wire_type not in self.unmapped:
            if profile.unknown_types == "violation":
                return Frame(FrameKind.MALFORMED, wire_type=wire_type, raw=frame,
                             detail=f"type {wire_type[:60]!r} is not in profile {profile.name!r} (add it to control or unmapped)")
            return Frame(FrameKind.UNKNOWN, wire_type=wire_type, raw=frame)
        seq = find(frame, scopes, n["seq"])
        bad_seq = None
        if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
            bad_seq, seq = _id(seq)[0], None
        oversized: list[str] = []
        rid, thread_id, user_id, message_id = (
            _id(run_id, "run_id", oversized)[0], _id(find(frame, scopes, n["thread_id"]), "thread_id", oversized)[0],
            _id(find(frame, scopes, n["user_id"]), "user_id", oversized)[0],
            _id(find(frame, scopes, n["message_id"]), "message_id", oversized)[0])
        server_time = find(frame, scopes, n["timestamp"])
        if server_time is not None and not isinstance(server_time, (int, float)):
            server_time, _ = _id(server_time, "timestamp", oversized, MAX_TIME_BYTES)
        ev = Event(role=role, wire_type=wire_type, received_at=received_at, run_id=rid, thread_id=thread_id,
                   user_id=user_id, message_id=message_id, seq=seq, bad_seq=bad_seq, server_time=server_time)
        if role is Role.TOOL_EXECUTING or role is Role.TOOL_COMPLETED or wire_type in self.span_of:
            ev.tool_call_id = _id(find(frame, scopes, n["tool_call_id"]), "tool_call_id", oversized)[0]
            ev.tool_name = _id(find(frame, scopes, n["tool_name"]), "tool_name", oversized)[0]
        if role is Role.ERROR_EVENT:
            ev.recoverable = find(frame, scopes, n["recoverable"]) is True
        elif role is Role.AGENT_STARTED:
            ev.parent_run_id = _id(find(frame, scopes, n["parent_run_id"]), "parent_run_id", oversized)[0]
        if self.checks:
            self._check(frame, scopes, ev)
        span = self.span_of.get(wire_type) or (self.span_of.get(role.value) if role else None)
        if span is not None:
            sp, kind = span
            key = find(frame, scopes, n.get(sp.key) or _split_names([sp.key]))
            if key is None and sp.key_fallback:
                key = find(frame, scopes, n.get(sp.key_fallback) or _split_names([sp.key_fallback]))
            ev.span = (sp.name, kind, _id(key, sp.key, oversized)[0])
        if oversized:
            ev.oversized = tuple(oversized)
        return ev

    def _check(self, frame: dict[str, Any], scopes: list[dict[str, Any]], ev: Event) -> None:
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

    # -- frames from the client --
    def decode_client(self, text: str | bytes) -> ClientFrame:
        if not isinstance(text, str):
            return ClientFrame("malformed")
        try:
            frame = json.loads(text)
        except (ValueError, RecursionError):
            return ClientFrame("malformed")
        if not isinstance(frame, dict):
            return ClientFrame("malformed")
        scopes = self.scopes(frame)
        n = self.names
        wire_type = _id(self.find(frame, scopes, n["type"]))[0]
        kind: Literal["request", "resume", "other"] = (
            "request" if wire_type in self.request_types else "resume" if wire_type in self.resume_types else "other")
        if kind == "other":
            return ClientFrame("other", wire_type)
        return ClientFrame(kind, wire_type, run_id=_id(self.find(frame, scopes, n["run_id"]))[0],
                           thread_id=_id(self.find(frame, scopes, n["thread_id"]))[0],
                           message_id=_id(self.find(frame, scopes, n["message_id"]))[0])


try:  # about 3x json.loads on event frames; the decode of every frame is the client's largest single cost
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson is a dependency; json is the fallback of a stripped install
    _fast_loads = json.loads  # type: ignore[assignment]


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


def _short_repr(v: Any, limit: int) -> str:
    """A container where a scalar was expected: its JSON, cut to a little over the limit before it is built whole."""
    try:
        return json.dumps(v)[: limit + 1]
    except (TypeError, ValueError, RecursionError):
        return type(v).__name__


def _split_names(names: list[str]) -> tuple[tuple[str, ...], tuple[list[str], ...]]:
    return tuple(x for x in names if "." not in x), tuple(x.split(".") for x in names if "." in x)


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


class _Blank(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return ""


BUILTIN_DIR = PROFILES_DIR




def load_profile(name_or_path: str) -> Profile:
    """A built-in profile by name ("netra", "ag-ui") or a user's YAML file by path."""
    return load_builtin_or_file(Profile, name_or_path, BUILTIN_DIR, "harness/profiles", "--profile")
