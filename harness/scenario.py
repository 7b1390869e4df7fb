"""Scenarios as YAML data: who chats, what they send, which roles are required, and the objectives to meet."""
# No `from __future__ import annotations` here: the models' annotations are objects, which pydantic takes as they
# are; as text it compiled and evaluated each one at import (start-up CPU of every run, tests/test_architecture.py).

import dataclasses
import math
import os
import random
import re
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    GetCoreSchemaHandler,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic import Strict as StrictType
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError, core_schema

from .catalog import SCENARIOS_DIR
from .checker import Expectations, ExpectError
from .durations import LatencySeconds, PositiveLatencySeconds, PositiveSeconds, Seconds, format_duration, seconds_given
from .events import Role
from .flow import ChatOptions, Conversation
from .yamlfile import ConfigError, line_of, load_builtin_or_file, load_scalar

if TYPE_CHECKING:
    from pydantic import GetJsonSchemaHandler
    from pydantic.json_schema import JsonSchemaValue

    from .profiles import Profile


# A scenario's name, which is the `scenario` label of its metrics (the proxy's --scenario is held to it too).
SCENARIO_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StrictLater(Strict):
    """A model only some scenarios use (a field of it, or of the model that holds it, is BuiltWhenUsed): its validator
    is built when first used."""

    model_config = ConfigDict(extra="forbid", defer_build=True)


# Numbers and switches as YAML writes them, never coerced: `users: true` is a mistake, not 1 user; `reconnect: 1`
# is not a boolean; an objective must be a finite number (NaN passes or fails every comparison silently) and
# a ratio a share from 0 to 1.
Int = Annotated[int, StrictType()]
Bool = Annotated[bool, StrictType()]


def _plain_number(value: Any) -> Any:
    # A number written as text ("0.05", 1e3 in YAML 1.1) is still a number; a boolean never is (pydantic makes
    # `true` 1.0). NaN is refused here, before the range checks would call it "not >= 0". ValueError, not
    # TypeError: pydantic reports only ValueError as the field's error.
    if isinstance(value, bool):
        raise ValueError("a number is needed, not a boolean")
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value  # not a number at all: pydantic says so
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"{str(value)[:40]} is not a finite number")
    return value


Count = Annotated[float, BeforeValidator(_plain_number), Field(ge=0, allow_inf_nan=False)]
Ratio = Annotated[float, BeforeValidator(_plain_number), Field(ge=0, le=1, allow_inf_nan=False)]


# Chats per second one process may be asked for: above it no Python process keeps up (BENCHMARKS.md, "arrival
# rate"), so it is a usage error; below it a rate the machine still cannot generate is a warning with the rate
# achieved.
MAX_RATE = 5000.0
Rate = Annotated[float, BeforeValidator(_plain_number), Field(ge=0, le=MAX_RATE, allow_inf_nan=False)]


def _field_error(loc: tuple[int | str, ...], message: str, value: Any) -> ValidationError:
    """A validation error at `loc` under the field being validated, so the message names its line and field."""
    return ValidationError.from_exception_data("Scenario", [InitErrorDetails(
        type=PydanticCustomError("shape", message), loc=loc, input=value)])


class BuiltWhenUsed:
    """A field whose type's models only some scenarios use (steps, stages, a think time): its validator is built from
    the type the first time a file gives the field, not at import (pydantic builds a model's validator as its class is
    made: start-up CPU of every run, BENCHMARKS.md). The value is validated by that type as a field of it would be: the
    same errors, each at its place under the field (pydantic prefixes a ValidationError raised by a field's validator
    with the field's location); the type's own models are made with `defer_build`, so none is built before."""

    __slots__ = ("tp", "adapter")

    def __init__(self, tp: Any) -> None:
        self.tp = tp
        self.adapter: Any = None

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(self._validate)

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: "GetJsonSchemaHandler") -> "JsonSchemaValue":
        """The JSON Schema of the type (not of a plain function): `Scenario.model_json_schema()` describes the field
        as the file gives it, its models under the document's own `$defs`."""
        return handler(self._adapter().core_schema)

    def _adapter(self) -> Any:
        if self.adapter is None:
            from pydantic import TypeAdapter  # (its module too: loaded by a scenario that gives such a field)

            self.adapter = TypeAdapter(self.tp)
        return self.adapter

    def _validate(self, value: Any) -> Any:
        return self._adapter().validate_python(value)


class ThinkTime(StrictLater):
    """A user's pause between two chats: `2s` (fixed) or `{min: 1s, max: 3s}` (uniform)."""

    min: Seconds
    max: Seconds

    @model_validator(mode="before")
    @classmethod
    def _scalar(cls, value: Any) -> Any:
        return {"min": value, "max": value} if not isinstance(value, dict) else value

    @model_validator(mode="after")
    def _ordered(self) -> "ThinkTime":
        if self.min > self.max:
            raise ValueError(f"min {self.min:g}s is above max {self.max:g}s")
        return self

    def sample(self, rng: random.Random) -> float:
        return self.min if self.min == self.max else rng.uniform(self.min, self.max)


class Stage(StrictLater):
    """One stage of the load, like k6's stages: for `duration` (or `until` that time since the start, as Locust's
    stages example writes it), ramp linearly from the previous stage's target to `users` (closed model) or `rate`
    (chats per second, open model); `ramp: false` holds the target for the whole stage (a step)."""

    duration: Seconds | None = None
    until: Seconds | None = None
    users: Int | None = Field(default=None, ge=0, le=100000)
    rate: Rate | None = None
    ramp: Bool = True

    @model_validator(mode="after")
    def _one_of_each(self) -> "Stage":
        if (self.duration is None) == (self.until is None):
            raise ValueError("a stage has either `duration` (its length) or `until` (its end, since the start)")
        if (self.users is None) == (self.rate is None):
            raise ValueError("a stage has either `users` (closed model) or `rate` (chats per second, open model)")
        if self.duration is not None and self.duration <= 0:
            raise ValueError("a stage's duration must be more than 0")
        return self

    @property
    def target(self) -> float:
        return float(self.users if self.users is not None else self.rate or 0.0)


class Expect(Strict):
    """Per-chat expectations; any left out come from the profile and docs/protocol.md's defaults."""

    required: list[Role] | None = None
    streaming: Bool = False  # adds partial_result to the required roles
    first_event_limit: PositiveLatencySeconds = 2.0  # a latency: a bare number of 10 or more is refused
    deadline: PositiveSeconds = 60.0
    stall_limit: PositiveSeconds = 30.0
    thinking_before_tool: Bool | None = None
    # After the terminal event, listen this long for late events (R3/R4/R7) before judging.
    settle: Seconds = 0.1


class ChatStep(StrictLater):
    message: str | None = Field(default=None, min_length=1)
    expect_error: Literal["recoverable", "fatal"] | None = None
    # Drop the socket after this many events of the run, reconnect and resume (no event lost or duplicated).
    disconnect_after: Int | None = Field(default=None, ge=1, le=1_000_000)
    # Leave for good after this many events: the server must stay healthy for the next chat.
    abandon_after: Int | None = Field(default=None, ge=0, le=1_000_000)
    required: list[Role] | None = None
    repeat: Int = Field(default=1, ge=1, le=10000)
    # The pause after each chat of this step (the scenario's think_time when left out).
    think_time: ThinkTime | None = None
    # A turn of the user's conversation: `new` starts a thread, `continue` goes on with the previous chat step's
    # thread (and, where the dialect's requests carry it, the conversation so far: AG-UI).
    thread: Literal["new", "continue"] = "new"


class RawStep(StrictLater):
    """Send a frame the server must reject with an error_message while keeping the connection open."""

    send_raw: str
    repeat: Int = Field(default=1, ge=1, le=1000)


class ChatStepWrapper(StrictLater):
    chat: ChatStep


def _step_kind(v: Any) -> str | None:
    if isinstance(v, dict):
        return "chat" if "chat" in v else "send_raw" if "send_raw" in v else None
    return "chat" if isinstance(v, ChatStepWrapper) else "send_raw" if isinstance(v, RawStep) else None


Step = Annotated[
    Annotated[ChatStepWrapper, Tag("chat")] | Annotated[RawStep, Tag("send_raw")],
    Discriminator(_step_kind, custom_error_type="step", custom_error_message="a step is either `chat:` or `send_raw:`"),
]


def _not_null(value: Any) -> Any:
    # `max:` with nothing after it (a template's unset variable) is YAML's null: it would remove the gate, quietly.
    if value is None:
        raise ValueError("a value is needed (a null would remove this bound quietly; write the bound)")
    return value


class Stat(StrictLater):
    """Upper bounds of a latency's statistics; a bare number of 10 or more is refused (durations.BARE_LATENCY_MAX)."""


    p50: LatencySeconds | None = None
    p90: LatencySeconds | None = None
    p95: LatencySeconds | None = None
    p99: LatencySeconds | None = None
    max: LatencySeconds | None = None
    avg: LatencySeconds | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _given(cls, value: Any) -> Any:
        return _not_null(value)


class Bound(StrictLater):
    """A count that must stay within [min, max] (either may be left out)."""

    max: Count | None = None
    min: Count | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _given(cls, value: Any) -> Any:
        return _not_null(value)

    @model_validator(mode="after")
    def _meetable(self) -> "Bound":
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}: no run can meet both")
        return self


class RatioBound(Bound):
    """A share of chats, from 0 to 1."""

    max: Ratio | None = None
    min: Ratio | None = None


# k6's threshold expressions as a k6 user pastes them into an objective (`p(95)<500`, `['rate<0.05']`) and k6's
# statistic names as keys (`med:`, `p(95):`, `rate:`): refused with the objective as chatprobe writes it, never read
# as something else (k6's numbers of a latency are milliseconds).
# (Text, compiled by re where it is used: only a refusal's hint reads it.)
_K6_EXPR = r"\s*(avg|min|med|max|p\(\s*[0-9.]+\s*\)|rate|count|value)\s*(<=|<|>=|>|===|==|!=)\s*(\S+?)\s*"
_K6_LATENCY = {"avg": "avg", "med": "p50", "max": "max", "p(50)": "p50", "p(90)": "p90", "p(95)": "p95",
               "p(99)": "p99"}
_K6_BOUND = ("rate", "count", "value")


def _k6_stat(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _k6_no_such(name: str, latency: bool, stat: str) -> str | None:
    """Why objective `name` has no equivalent of k6's statistic `stat`, or None when it has one."""
    if latency and stat not in _K6_LATENCY:
        return f"{name} has no {stat}: its statistics are p50, p90, p95, p99, max and avg, upper bounds"
    if not latency and stat not in _K6_BOUND:
        return (f"{name} is a {'count' if name == 'violations' else 'share'} with a min and a max, no {stat} "
                "(k6's rate<0.05 is {max: 0.05})")
    return None


def k6_threshold_hint(name: str, value: Any, flag: bool = False) -> str | None:
    """What to write for objective `name` instead of k6's threshold syntax in `value`, or None when it is none; with
    `flag`, as `--objective` takes it."""

    def written(stat: str, number: str) -> str:
        return f"{name}.{stat}={number}" if flag else f"{name}: {{{stat}: {number}}}"

    field = Objectives.model_fields.get(name)
    texts = value if isinstance(value, list) else [value]
    if field is None or not texts or not all(isinstance(t, str) for t in texts):
        return None
    latency = field.annotation is Stat
    for text in texts:
        m = re.fullmatch(_K6_EXPR, text[:200])
        if m is None:
            continue
        stat, op, number = _k6_stat(m.group(1)), m.group(2), m.group(3)
        said = f"{text[:60]!r} is k6's threshold syntax"
        if (no_such := _k6_no_such(name, latency, stat)) is not None:
            return f"{said}, and {no_such}"
        if latency:
            if op not in ("<", "<="):
                return f"{said}, and {name}'s statistics are upper bounds (<=), not {op}"
            if not re.fullmatch(r"[0-9.]+", number):  # `p(95)<2s`: its unit already
                return f"{said}; write {written(_K6_LATENCY[stat], number)} (the bound is <=)"
            return (f"{said}; write {written(_K6_LATENCY[stat], number + 'ms')} (k6's numbers of a latency are "
                    "milliseconds; the bound is <=)")
        bound = "max" if op in ("<", "<=") else "min" if op in (">", ">=") else None
        if bound is None:
            return f"{said}; {name} takes a min and a max (write both for {op})"
        return f"{said}; write {written(bound, number)}"
    return None


class Objectives(StrictLater):
    """Pass/fail criteria for the whole scenario, like k6 thresholds: a CI reads them as the exit code."""

    # Its models are built when a scenario (or an --objective) first gives objectives: a run by the defaults builds
    # none (the docstring above is the JSON Schema's description, so this is a comment). The defaults are made without
    # validation (model_construct), each as validating made it (`Bound(max=0)` held 0.0).
    time_to_first_event: Stat = Stat.model_construct(p95=2.0)
    chat_duration: Stat = Stat.model_construct()
    missing_events_ratio: RatioBound = RatioBound.model_construct(max=0.0)
    violations: Bound = Bound.model_construct(max=0.0)
    passed_ratio: RatioBound = RatioBound.model_construct(min=1.0)
    error_ratio: RatioBound = RatioBound.model_construct(max=0.0)

    @field_validator("*", mode="before")
    @classmethod
    def _not_k6_syntax(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name or ""
        hint = k6_threshold_hint(name, value)
        if hint is not None:
            raise ValueError(hint)
        if isinstance(value, dict):
            fields = cls.model_fields[name].annotation.model_fields  # type: ignore[union-attr]
            latency = cls.model_fields[name].annotation is Stat
            for key, number in value.items():
                stat = _k6_stat(key) if isinstance(key, str) else ""
                if stat in fields or not (stat in _K6_LATENCY or stat in _K6_BOUND or stat[:2] == "p(" or
                                          stat == "min" or (re.fullmatch(r"p\d+(\.\d+)?", stat)
                                                            # p59: a typo of p95, told as one (did you mean)
                                                            and not any(sorted(stat) == sorted(f) for f in fields))):
                    continue
                meant = _K6_LATENCY.get(stat) if latency else "max (an upper bound) or min" if stat in _K6_BOUND \
                    else None
                raise _field_error((key,), f"{stat} is k6's name of a statistic; write {meant}" if meant else
                                   _k6_no_such(name, latency, stat) or "", number)
        return value


class Scenario(Strict):
    name: str = Field(pattern=SCENARIO_NAME_PATTERN)
    description: str = ""
    profile: str | None = None
    # The dialects (profile names) a server can carry this scenario in; None: any. A built-in scenario that needs a
    # dialect's own features (netra's resume, its invalid-input answer) lists only the dialects that have them.
    dialects: list[Annotated[str, Field(pattern=SCENARIO_NAME_PATTERN)]] | None = None
    # The scenario makes the server fail on purpose with agentsim's directives (#fail-tool, #fail-agent): `chatprobe
    # run --target URL` with no scenario named leaves it out (another server has no such switch: its chats would fail
    # for what the scenario asked, not for what the server did); named, it runs against any target.
    agentsim_only: bool = False
    users: Int = Field(default=1, ge=1, le=100000)
    chats_per_user: Int = Field(default=1, ge=1, le=100000)
    concurrency: Int | None = Field(default=None, ge=1, le=100000)
    ramp_up: Seconds = 0.0
    parallel_chats: Int = Field(default=1, ge=1, le=1000)
    message: str = Field(default="What is 17 * 23? Then look up the capital of France.", min_length=1)
    messages: list[Annotated[str, Field(min_length=1)]] | None = None
    client_run_id: Bool = False
    reconnect: Bool = True
    max_reconnects: Int = Field(default=3, ge=0, le=100)
    # Each lost connection is reconnected with capped, jittered exponential backoff (harness/backoff.py): at most this
    # many attempts, none starting past reconnect_timeout after the loss (nor past the chat's deadline).
    max_reconnect_attempts: Int = Field(default=10, ge=1, le=1000)
    reconnect_timeout: PositiveSeconds = 30.0
    connect_timeout: PositiveSeconds = 10.0
    # Offer permessage-deflate on WebSocket connections (as browsers do) or not. "none" by default: on loopback and
    # a LAN it costs both ends more CPU than it saves in bytes (BENCHMARKS.md), and chatprobe's lean client does
    # without it; "deflate" tests a server as browsers reach it. SSE ignores it.
    compression: Literal["none", "deflate"] = "none"
    max_duration: PositiveSeconds = 600.0
    expect: Expect = Expect()
    steps: Annotated[list[Step] | None, BuiltWhenUsed(list[Step] | None)] = None
    objectives: Annotated[Objectives, BuiltWhenUsed(Objectives)] = Objectives.model_construct()
    # Load shape: a user's pause between chats; stages of users (closed model) or of chats per second (open model);
    # a constant `arrival_rate` for `duration`; at most `max_in_flight` chats at once in the open model (a chat due
    # when that many are in flight is dropped and counted, never delayed).
    think_time: Annotated[ThinkTime | None, BuiltWhenUsed(ThinkTime | None)] = None
    stages: Annotated[list[Stage] | None, BuiltWhenUsed(
        Annotated[list[Stage], Field(min_length=1, max_length=1000)] | None)] = None
    arrival_rate: Rate | None = None
    duration: Seconds | None = None
    max_in_flight: Int = Field(default=100, ge=1, le=100000)

    @field_validator("stages")
    @classmethod
    def _stages_in_order(cls, stages: list[Stage] | None) -> list[Stage] | None:
        if not stages:
            return stages
        kind = "users" if stages[0].users is not None else "rate"
        end = 0.0
        for i, st in enumerate(stages):
            if (st.users is not None) != (kind == "users"):
                raise _field_error((i, "rate" if kind == "users" else "users"),
                                   f"every stage gives `{kind}` as the first one does (a shape is either users or a "
                                   "rate of chats)", st.target)
            if st.until is not None:
                if st.until <= end:
                    raise _field_error((i, "until"), f"stages out of order: until {st.until:g}s is not after the "
                                       f"previous stage's end at {end:g}s", st.until)
                end = st.until
            else:
                end += st.duration or 0.0
        return stages

    @field_validator("steps")
    @classmethod
    def _continues_a_chat(cls, steps: list[Any] | None) -> list[Any] | None:
        chats = 0
        for i, step in enumerate(steps or ()):
            if isinstance(step, ChatStepWrapper):
                if step.chat.thread == "continue" and not chats:
                    raise _field_error((i, "chat", "thread"), "`continue` goes on with the thread of a chat step "
                                       "before it, and there is none (the first chat step starts a thread: `new`)",
                                       step.chat.thread)
                chats += 1
        return steps

    @property
    def converses(self) -> bool:
        """Whether a step continues a thread: each user then keeps its conversation (flow.Conversation)."""
        return any(isinstance(s, ChatStepWrapper) and s.chat.thread == "continue" for s in self.steps or ())

    @model_validator(mode="after")
    def _steps_or_messages(self) -> "Scenario":
        if self.messages is not None and not self.messages:
            raise ValueError("messages: give at least one message, or leave it out")
        given = self.model_fields_set
        # A key given and never read would be a default the file seems to change: refused, as an unknown key is.
        if "message" in given and self.messages is not None:
            raise _field_error(("message",), "give either message or messages: with messages, message is never sent",
                               self.message)
        if self.steps is not None:
            for name in ("chats_per_user", "parallel_chats"):
                if getattr(self, name) != 1:  # (1, as a program may write it, is what steps do)
                    raise _field_error((name,), f"steps are each user's chats, one at a time, instead of {name}; "
                                       "leave it out (a step's `repeat` plays it more times)", getattr(self, name))
        if self.arrival_rate is not None:
            if self.stages:
                raise _field_error(("arrival_rate",), "give either arrival_rate (constant) or stages with `rate`",
                                   self.arrival_rate)
            if self.duration is None:
                raise _field_error(("arrival_rate",), "arrival_rate needs a duration (how long to hold the rate)",
                                   self.arrival_rate)
            if self.duration <= 0:
                raise _field_error(("duration",), "must be more than 0", self.duration)
        elif self.duration is not None:
            # k6's `vus` + `duration` (users held for a time) is a stage here; never read as something else.
            held = f"stages: [{{duration: {format_duration(self.duration)}, users: {self.users}, ramp: false}}]"
            raise _field_error(("duration",), "duration goes with arrival_rate (stages have their own); users held "
                               f"for a time, as k6's vus with duration, are {held}", self.duration)
        if self.open_model:
            closed_only = ("users", "chats_per_user", "concurrency", "ramp_up", "parallel_chats", "steps",
                           "think_time")
            for name in closed_only:
                if name in given:
                    raise _field_error((name,), "an open-model scenario (arrival_rate, or stages with `rate`) "
                                       "starts single chats at a rate; leave out " + name, getattr(self, name))
        elif self.stages:
            for name in ("users", "concurrency", "ramp_up"):
                if name in given:
                    raise _field_error((name,), f"the stages give the number of users; leave out {name}",
                                       getattr(self, name))
        elif "max_in_flight" in given:
            raise _field_error(("max_in_flight",), "max_in_flight goes with an open model (arrival_rate, or "
                               "stages with `rate`)", self.max_in_flight)
        if not self.reconnect or not self.max_reconnects:
            for name in ("max_reconnect_attempts", "reconnect_timeout"):
                if name in given:
                    why = "reconnect: false" if not self.reconnect else "max_reconnects: 0"
                    raise _field_error((name,), f"with {why} the client never reconnects; leave out {name}",
                                       getattr(self, name))
        return self

    @property
    def open_model(self) -> bool:
        """Chats start at a rate (k6's arrival-rate executors), not when a user's previous chat ended."""
        return self.arrival_rate is not None or bool(self.stages and self.stages[0].rate is not None)

    def shape(self) -> "Shape | None":
        """The stages as times and targets (a constant arrival_rate is one held stage); None without stages."""
        if self.arrival_rate is not None:
            return Shape("rate", [Stage(duration=self.duration, rate=self.arrival_rate, ramp=False)])
        if self.stages:
            return Shape("users" if self.stages[0].users is not None else "rate", self.stages)
        return None

    def expectations(self, profile: "Profile", step: ChatStep | None = None) -> Expectations:
        """What each chat of this scenario (or of one of its steps) must show, against a target speaking `profile`."""
        return expectations_for(profile, self.expect, required=step.required if step else None,
                                expect_error=step.expect_error if step else None)

    def carried_by(self, dialect: str) -> bool:
        """Whether a server speaking `dialect` (a profile name) can carry this scenario (its `dialects`, else any)."""
        return self.dialects is None or dialect in self.dialects

    def message_for(self, n: int) -> str:
        if self.messages:
            return self.messages[n % len(self.messages)]
        return self.message

    def invalid_input_expectations(self) -> Expectations:
        """What a `send_raw:` step expects: an error_message answer on an open connection (R13), within 10 s."""
        return invalid_input_expectations(self.expect)

    def planned_chats(self) -> int | None:
        """How many chats (and invalid-input probes) the scenario plays, for progress; None when open-ended."""
        shape = self.shape()
        if shape is not None:
            # Open model: the chats due (some may be dropped); stages of users play until the last stage ends.
            return sum(round(w.mean * w.length) for w in shape.windows) if shape.kind == "rate" else None
        if self.steps:
            per_user = sum(s.chat.repeat if isinstance(s, ChatStepWrapper) else s.repeat for s in self.steps)
        else:
            per_user = self.chats_per_user
        return self.users * per_user

    def user_script(self, profile: "Profile") -> "UserScript":
        """What each virtual user does, against a target speaking `profile`."""
        return UserScript(self, profile)

    def shared_by_users(self, profile: "Profile") -> tuple[Expectations, ChatOptions]:
        """The default chat's expectations and options: the same for every user of this scenario against `profile`,
        so built once (per user they were ~1 KB of every open chat held by `chatprobe run`). A model_copy with other
        settings builds its own (see _SHARED)."""
        key = id(self)
        cached = _SHARED.get(key)
        if cached is not None and cached[0]() is self and cached[1] is profile:
            return cached[2], cached[3]
        expectations = self.expectations(profile)
        # overlap_settle: a user who does not think between chats starts the next one while the last one's settle
        # window still listens (the asyncio Session does it where events name their run; the runner never reads
        # chat()'s provisional result; the Locust user does it too). A user who thinks waits the window out first,
        # under both engines, so one scenario file gives the same load under both.
        options = ChatOptions(client_run_id=self.client_run_id, reconnect=self.reconnect,
                              max_reconnects=self.max_reconnects,
                              max_reconnect_attempts=self.max_reconnect_attempts,
                              reconnect_timeout=self.reconnect_timeout, settle=self.expect.settle,
                              overlap_settle=self.think_time is None)
        _SHARED[key] = (weakref.ref(self, lambda ref: _forget_shared(key, ref)), profile, expectations, options)
        return expectations, options


# Scenario.shared_by_users, by the scenario's id, with a weak reference to it: an id is reused once its scenario is
# freed, and the entry goes with it. Not a private attribute: model_copy copies those (and an id-keyed one got to a
# copy of a copy made where a freed scenario was: its options), and pydantic's == compares them.
_SHARED: dict[int, tuple[weakref.ref[Scenario], Any, Expectations, ChatOptions]] = {}


def _forget_shared(key: int, ref: weakref.ref[Scenario]) -> None:
    entry = _SHARED.get(key)
    if entry is not None and entry[0] is ref:
        del _SHARED[key]


def expectations_for(profile: "Profile", expect: Expect | None = None, *, required: list[Role] | None = None,
                     expect_error: ExpectError = None) -> Expectations:
    """The one place a chat's Expectations are built, from the profile and the scenario's `expect` (the runner, the
    Locust user, the pytest plugin and the proxy all come here): required roles (the step's, else the scenario's,
    else the profile's, plus partial_result when streaming), limits, R6, and the spans that must close."""
    e = expect or Expect()
    roles = set(required if required is not None else (e.required or profile.required))
    if e.streaming:
        roles.add(Role.PARTIAL_RESULT)
    return Expectations(
        required=frozenset(roles),
        first_event_limit=e.first_event_limit,
        deadline=e.deadline,
        stall_limit=e.stall_limit,
        thinking_before_tool=profile.thinking_before_tool if e.thinking_before_tool is None else e.thinking_before_tool,
        expect_error=expect_error,
        spans_must_close=profile.spans_must_close,
        checks=tuple(profile.checks),
        offered_tools=profile.offered_tools,
        step_required=frozenset(required) if required is not None else None,
        seq_start=profile.seq_start,
        after_error=frozenset(profile.after_error),
    )


def invalid_input_expectations(expect: Expect | None = None) -> Expectations:
    """What an invalid-input probe expects: an error_message answer on an open connection (R13), within 10 s."""
    e = expect or Expect()
    return Expectations(required=frozenset(), first_event_limit=e.first_event_limit,
                        deadline=min(e.deadline, 10.0), stall_limit=e.stall_limit, expect_error="invalid_input")


@dataclass(frozen=True, slots=True)
class StageWindow:
    """One stage on the clock of its run: from `start` to `end` seconds, its target going from `begin` to `target`
    (users, or chats per second)."""

    index: int
    start: float
    end: float
    begin: float
    target: float
    ramp: bool

    @property
    def length(self) -> float:
        return self.end - self.start

    @property
    def mean(self) -> float:
        """The stage's average target: chats per second asked over the stage, in the open model."""
        return (self.begin + self.target) / 2

    def at(self, t: float) -> float:
        if self.length <= 0:
            return self.target
        return self.begin + (self.target - self.begin) * min(max((t - self.start) / self.length, 0.0), 1.0)

    def label(self, kind: str) -> str:
        unit = " users" if kind == "users" else "/s"
        span = f"{self.begin:g}→{self.target:g}" if self.begin != self.target else f"{self.target:g}"
        return f"{span}{unit}"


class Shape:
    """A scenario's stages as a schedule, the same for every driver: how many users at time t (closed model), when
    each chat is due (open model), which stage a time falls in, and what Locust's LoadTestShape.tick returns."""

    def __init__(self, kind: str, stages: list[Stage]) -> None:
        self.kind = kind  # "users" or "rate"
        self.windows: list[StageWindow] = []
        prev = start = 0.0
        for i, st in enumerate(stages):
            end = st.until if st.until is not None else start + (st.duration or 0.0)
            self.windows.append(StageWindow(i, start, end, prev if st.ramp else st.target, st.target, st.ramp))
            prev, start = st.target, end
        self.total = start

    def stage_at(self, t: float) -> StageWindow | None:
        """The stage running at `t` seconds since the start, None before the start or after the end."""
        for w in self.windows:
            if w.start <= t < w.end:
                return w
        return None

    def at(self, t: float) -> float:
        w = self.stage_at(t)
        return w.at(t) if w is not None else 0.0

    def users_at(self, t: float) -> int:
        """Users wanted at `t` (a ramp adds a user as soon as the line passes the next whole user, as Locust does)."""
        return math.ceil(self.at(t) - 1e-9)

    def arrivals(self) -> Iterator[float]:
        """When each chat is due, in seconds since the start: the k-th when the rate's integral passes k + 0.5, so a
        held rate r over T seconds starts r*T chats, spaced 1/r apart (a ramp's spacing follows the line)."""
        done = 0.0  # the integral of the rate up to the current stage's start
        k = 0
        for w in self.windows:
            a, b, length = w.begin, w.target, w.length
            area = (a + b) / 2 * length
            while k + 0.5 <= done + area:
                x = k + 0.5 - done  # chats into this stage
                if abs(b - a) < 1e-12:
                    s = x / a
                else:
                    slope = (b - a) / length
                    s = (-a + math.sqrt(max(a * a + 2 * slope * x, 0.0))) / slope
                yield w.start + min(max(s, 0.0), length)
                k += 1
            done += area

    def tick(self, t: float) -> tuple[int, float] | None:
        """Locust's LoadTestShape.tick at `t`: (users, spawn rate); None once the last stage is over (Locust stops).

        Locust asks once a second and spawns in per-second batches, so a ramp handed over as (target, slope) runs
        up to a second ahead of the line. Each tick asks instead for the line's users at the middle of the coming
        second, all at once: Locust's user count then averages the ramp over each second, as `users_at` does."""
        if self.stage_at(t) is None:
            return None
        # Ticks fall on whole seconds (plus the worker's few milliseconds): sample on that grid, not at t + 0.5,
        # where a ramp's ceiling would flip on those milliseconds.
        users = self.users_at(min(round(t / TICK) * TICK + TICK / 2, self.total - 1e-9))
        return users, float(max(users, 1))


# Locust's shape worker calls tick() about once a second.
TICK = 1.0


@dataclass(frozen=True, slots=True)
class ChatCall:
    """One chat of a user: `session.chat(call.content, call.expectations, call.options)`."""

    content: str
    expectations: Expectations
    options: ChatOptions
    think: ThinkTime | None = None  # the pause after it


@dataclass(frozen=True, slots=True)
class RawCall:
    """One invalid-input probe of a user: `session.send_invalid(call.raw, call.expectations)`."""

    raw: str
    expectations: Expectations
    think: ThinkTime | None = None


@dataclass(frozen=True, slots=True)
class ChatGroup:
    """`count` chats with at most `parallel` in flight; each takes its ChatCall from `UserScript.chat()` as it starts."""

    count: int
    parallel: int
    think: ThinkTime | None = None


# Think times are drawn from one generator for every user (unseeded, as each user's own was; a Random is ~2.9 KB,
# which every open chat held by `chatprobe run` paid).
_THINK_RNG = random.Random()
# A process forked after this module loaded (locust --processes) draws its own think times, as its users' own
# generators did: without a new seed every child would draw the parent's sequence, the same pauses in step.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_THINK_RNG.seed)


class UserScript:
    """One virtual user's script, the same for every driver (asyncio runner, Locust): its steps, or chats_per_user
    chats with parallel_chats in flight. Chats are numbered across plays, to cycle through the scenario's messages."""

    __slots__ = ("_default", "_left", "_options", "chats", "conversation", "profile", "scenario")

    def __init__(self, scenario: Scenario, profile: "Profile") -> None:
        self.scenario = scenario
        self.profile = profile
        self.chats = 0
        self._left = 0
        self._default, self._options = scenario.shared_by_users(profile)
        # The user's thread across its chat steps, when one continues it (`thread: continue`).
        self.conversation = Conversation() if scenario.converses else None

    def chat(self, step: ChatStep | None = None) -> ChatCall:
        """The next chat: the step's message and options, else the scenario's."""
        sc = self.scenario
        n, self.chats = self.chats, self.chats + 1
        if step is None:
            return ChatCall(sc.message_for(n), self._default, self._options, sc.think_time)
        options = self._options
        if step.disconnect_after is not None or step.abandon_after is not None:
            options = dataclasses.replace(options, disconnect_after=step.disconnect_after,
                                          abandon_after=step.abandon_after)
        if self.conversation is not None:  # every chat step is a turn: `new` ones start the thread the next continue
            options = dataclasses.replace(options, conversation=self.conversation,
                                          continues=step.thread == "continue")
        return ChatCall(step.message or sc.message_for(n), sc.expectations(self.profile, step), options,
                        step.think_time or sc.think_time)

    def pause(self, item: ChatCall | RawCall | ChatGroup | None) -> float:
        """Seconds to think after `item` (the scenario's or its step's think_time), before the user's next chat."""
        think = item.think if item is not None else self.scenario.think_time
        return think.sample(_THINK_RNG) if think is not None else 0.0

    def plan(self) -> Iterator[ChatCall | RawCall | ChatGroup]:
        """One play of the script, item by item (a ChatCall is made when the previous item is done)."""
        sc = self.scenario
        if not sc.steps and sc.parallel_chats == 1:
            # The common script, chats_per_user chats one after another: the script is its own iterator (a generator
            # frame is ~256 bytes of every open chat held by `chatprobe run`).
            self._left = sc.chats_per_user
            return self
        return self._items()

    def __iter__(self) -> "UserScript":
        return self

    def __next__(self) -> ChatCall:
        if self._left <= 0:
            raise StopIteration
        self._left -= 1
        return self.chat()

    def _items(self) -> Iterator[ChatCall | RawCall | ChatGroup]:
        sc = self.scenario
        if sc.steps:
            for step in sc.steps:
                if isinstance(step, RawStep):
                    for _ in range(step.repeat):
                        yield RawCall(step.send_raw, sc.invalid_input_expectations(), sc.think_time)
                else:
                    for _ in range(step.chat.repeat):
                        yield self.chat(step.chat)
        else:
            yield ChatGroup(sc.chats_per_user, sc.parallel_chats, sc.think_time)


BUILTIN_DIR = SCENARIOS_DIR
# `knee` is built in but not in the suite: it drives the process to saturation on purpose.


# Scripts of the tools a load tester comes from, given where a scenario goes: named for what they are, not parsed as
# YAML (a k6 script read as YAML said "mapping values are not allowed in this context" at an `import` line).
_SCRIPTS = {
    ".js": "a k6 script (JavaScript)", ".mjs": "a k6 script (JavaScript)", ".cjs": "a k6 script (JavaScript)",
    ".ts": "a k6 script (TypeScript)", ".py": "a Python file (a locustfile?)",
}


def _script_refusal(name_or_path: str) -> str | None:
    what = _SCRIPTS.get(Path(name_or_path).suffix.lower())
    if what is None or not Path(name_or_path).is_file():
        return None
    how = ("k6's vus, duration, stages and thresholds are its users, stages and objectives (docs/scenarios.md, "
           "'Coming from k6')" if "k6" in what else
           "to load-test under Locust: locust -f scenarios/locustfile.py --chatprobe-scenario FILE.yaml")
    return (f"{name_or_path}: {what}, not a chatprobe scenario, which is a YAML file of users, chats and objectives; "
            f"{how}")


def load_scenario(name_or_path: str) -> Scenario:
    """A built-in scenario by name ("basic", …) or a user's YAML file by path."""
    if (refusal := _script_refusal(name_or_path)) is not None:
        raise ConfigError(refusal)
    scenario = load_builtin_or_file(Scenario, name_or_path, BUILTIN_DIR, "scenarios", "scenario")
    if scenario.profile is not None:
        from .profiles import load_profile

        try:
            load_profile(scenario.profile)
        except ConfigError as exc:
            raise ConfigError(f"{where_in(name_or_path, ('profile',))}: field 'profile': {exc}") from None
    return scenario


def where_in(name_or_path: str, loc: tuple[str, ...]) -> str:
    """"FILE:LINE" of a field of a scenario loaded by `load_scenario(name_or_path)` (a built-in's own file)."""
    if Path(name_or_path).exists():
        return f"{name_or_path}:{line_of(name_or_path, loc) or 1}"
    builtin = BUILTIN_DIR / f"{name_or_path}.yaml"
    text = builtin.read_text(encoding="utf-8") if builtin.is_file() else ""
    return f"scenarios/{name_or_path}.yaml:{line_of(builtin.name, loc, text) or 1}"


def apply_overrides(scenario: Scenario, overrides: list[str]) -> Scenario:
    """`--objective time_to_first_event.p95=1.5s` style overrides, validated like the file (the value is read as a
    YAML scalar, so `0.05` is a number, `1.5s` a duration and `.nan` or `true` are refused as they would be there)."""
    if not overrides:  # the file's objectives were validated as it was read
        return scenario
    data: dict[str, Any] = scenario.objectives.model_dump()
    stat_names = {name: list(stats) for name, stats in data.items()}
    for name, stats in data.items():
        # The bounds set (a null is no bound, and is refused as a value). A latency's: seconds already, validated
        # again with their unit, as a bare number of 10 or more is refused (a person's `p95: 500`, not the 60.0 a
        # scenario's `max: 60s` became). Decimal: 1e-05 as 0.00001. Below that bound the number itself, as a bare
        # number is taken there (1e-320 written out is no duration).
        latency = Objectives.model_fields[name].annotation is Stat
        data[name] = {k: seconds_given(v) if latency else v for k, v in stats.items() if v is not None}
    given: dict[tuple[str, ...], tuple[str, Any]] = {}  # each bound overridden: the flag and its value
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        k6ish = not sep or len(parts) == 1 or parts[0] not in data or "<" in key or ">" in key
        hint = _k6_flag_hint(item, data) if k6ish else None
        if hint is not None:
            raise ConfigError(f"--objective {item[:80]!r}: {hint}")
        if not sep or len(parts) != 2 or parts[0] not in data:
            raise ConfigError(
                f"--objective {item[:80]!r}: expected NAME.STAT=VALUE with NAME one of {', '.join(data)} "
                "(e.g. time_to_first_event.p95=1.5s, missing_events_ratio.max=0.05)"
            )
        if parts[1] not in stat_names[parts[0]]:
            raise ConfigError(f"--objective {item[:80]!r}: {parts[0]} has no {parts[1]!r} "
                              f"(it has {', '.join(stat_names[parts[0]])})")
        try:
            parsed = _flag_scalar(value.strip())
        except ConfigError as exc:  # `violations.max=010`: read as a file reads it, so refused as there
            raise ConfigError(f"--objective {item[:80]!r}: {exc}") from None
        if parsed is None:
            # An unset $VAR in CI (`passed_ratio.min=`) must not quietly remove the gate, defaults included.
            raise ConfigError(f"--objective {item[:80]!r}: a value is needed (an empty or null value would remove "
                              "the objective; a scenario file can leave one out)")
        # One bound given twice with two values (a CI config's and the command line's): the last one quietly won,
        # a gate loosened or tightened with no word, where a scenario file refuses a key given twice.
        earlier = given.setdefault(tuple(parts), (item, parsed))
        if earlier[0] is not item and (earlier[1] != parsed or type(earlier[1]) is not type(parsed)):
            raise ConfigError(f"--objective {item[:80]!r}: {key.strip()} is given twice (also {earlier[0][:80]!r}): "
                              "one bound, one value")
        data[parts[0]][parts[1]] = parsed
    try:
        objectives = Objectives.model_validate(data)
    except ValidationError as exc:  # name the flag and the field, not a traceback
        first = exc.errors()[0]
        raise ConfigError(f"--objective: field '{'.'.join(map(str, first['loc']))}': {first['msg']}") from None
    return scenario.model_copy(update={"objectives": objectives})


def _k6_flag_hint(item: str, objectives: dict[str, Any]) -> str | None:
    """What to write instead of k6's habits in an --objective: its threshold syntax (`time_to_first_event.p95<500`,
    `time_to_first_event=p(95)<500`) or its metrics' names (`http_req_duration.p95=500ms`); None for none of them."""
    key, sep, value = item.partition("=")
    name = re.split(r"[.<>]", key.strip())[0].strip()
    if name not in objectives:
        from .yamlfile import did_you_mean

        meant = did_you_mean(name, Objectives)
        return f"no objective {name!r}{meant}; the objectives: {', '.join(objectives)}" if meant else None
    if sep and "." not in key:  # `NAME=p(95)<500`
        return k6_threshold_hint(name, value.strip(), flag=True)
    m = re.fullmatch(r"\s*(\w+)\.([\w()]+)\s*(<=|<|>=|>)\s*([^\s=]+)\s*", item)
    if m is not None:  # `NAME.STAT<VALUE`, `NAME.STAT<=VALUE`
        name, stat, op, number = m.groups()
        latency = Objectives.model_fields[name].annotation is Stat
        if latency and op[0] == ">":
            return f"k6's threshold syntax, and {name}'s statistics are upper bounds: NAME.STAT=VALUE, not {op}"
        stat = _K6_LATENCY.get(_k6_stat(stat), stat) if latency else \
            ("max" if op[0] == "<" else "min") if stat in _K6_BOUND else stat
        unit = "ms" if latency and re.fullmatch(r"[0-9.]+", number) else ""
        return (f"k6's threshold syntax; write {name}.{stat}={number}{unit} (NAME.STAT=VALUE: the statistic gives "
                "the direction" + ("; k6's numbers of a latency are milliseconds)" if unit else ")"))
    return None


def _flag_scalar(text: str) -> Any:
    """A flag's value as the same text would be in a scenario file (a number, a string, null); anything that is not
    one scalar stays the text, for the model to refuse; a number no file may write so (an octal `010`) is a
    ConfigError."""
    try:
        value = load_scalar(text)
    except (yaml.YAMLError, ValueError, OverflowError):
        return text
    return value if isinstance(value, (int, float, str, bool)) or value is None else text
