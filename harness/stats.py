"""A scenario's numbers and its objectives: percentiles, ratios and k6-style threshold verdicts."""
from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .checker import ChatResult
from .events import Outcome, Role, Violation
from .scenario import Objectives, Shape
from .sinks import UNJUDGED_REASONS

# An enum member looked up on its class costs ~0.1 us each time (Python 3.11): the one Tally.add asks of every chat, once.
_ERROR = Outcome.ERROR


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of the values; None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, math.ceil(q / 100 * len(s)) - 1)
    return s[k]


@dataclass
class ObjectiveResult:
    """One objective judged: its name, limit and comparison, the value measured (None: none), met or not."""

    name: str  # e.g. "time_to_first_event.p95"
    limit: float
    op: str  # "<=" or ">="
    value: float | None
    ok: bool

    def describe(self) -> str:
        v = "n/a" if self.value is None else f"{self.value:.4g}"
        return f"{self.name} = {v} (must be {self.op} {self.limit:g})"


@dataclass
class ScenarioStats:
    """A scenario's chats summed up: counts by outcome, rule and error kind, and the latency percentiles."""

    chats: int = 0
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    missing_chats: int = 0
    missing_roles: Counter[Role] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)  # every violation by rule, connections' own included
    ttfe: dict[str, float | None] = field(default_factory=dict)
    duration: dict[str, float | None] = field(default_factory=dict)
    events: int = 0
    error_kinds: Counter[str] = field(default_factory=Counter)  # error_kind of chats with outcome error
    dropped: int = 0  # open model: chats due while max_in_flight were in flight, never started (not in `chats`)
    # `chatprobe check` of a proxy's recording: chats the proxy could not judge, by reason (sinks.UNJUDGED_REASONS;
    # not in `chats`, in no outcome and no ratio).
    unjudged: Counter[str] = field(default_factory=Counter)
    # Of `violations`, those of connections' own (an R8 or R12 after a connection's last chat, no chat to tell:
    # checker.ConnectionChecker.ended), in no chat's count.
    connection_violations: Counter[str] = field(default_factory=Counter)

    @property
    def judged(self) -> int:
        return self.chats - self.outcomes[Outcome.ERROR]

    @property
    def missing_ratio(self) -> float:
        return self.missing_chats / self.judged if self.judged else 0.0

    @property
    def passed_ratio(self) -> float:
        return self.outcomes[Outcome.PASSED] / self.chats if self.chats else 0.0

    @property
    def error_ratio(self) -> float:
        return self.outcomes[Outcome.ERROR] / self.chats if self.chats else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "chats": self.chats,
            "outcomes": {o.value: self.outcomes[o] for o in Outcome},
            "missing_events_chats": self.missing_chats,
            "missing_events_ratio": self.missing_ratio,
            "missing_roles": {k.value: v for k, v in self.missing_roles.items()},
            "violations": dict(sorted(self.violations.items(), key=lambda kv: int(kv[0][1:]))),
            "connection_violations": dict(sorted(self.connection_violations.items(), key=lambda kv: int(kv[0][1:]))),
            "error_kinds": dict(sorted(self.error_kinds.items())),
            "time_to_first_event": self.ttfe,
            "chat_duration": self.duration,
            "events": self.events,
            "dropped_chats": self.dropped,
            "unjudged_chats": {reason: self.unjudged[reason] for reason in UNJUDGED_REASONS},
        }


def _stat(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
        "avg": (sum(values) / len(values)) if values else None,
    }


@dataclass
class Tally:
    """Verdicts reduced to counts and samples: what a scenario's stats are computed from, and what processes merge.

    A Locust worker sends its tally of an interval to the master, which merges them and computes the same stats
    `chatprobe run` prints; `to_dict`/`from_dict` are the wire form (plain JSON types, msgpack-safe).
    """

    chats: int = 0
    outcomes: Counter[Outcome] = field(default_factory=Counter)  # Outcome -> chats
    error_kinds: Counter[str] = field(default_factory=Counter)  # error_kind of chats with outcome error
    missing_chats: int = 0
    missing_roles: Counter[Role] = field(default_factory=Counter)  # Role -> chats missing it
    violations: Counter[str] = field(default_factory=Counter)  # rule id -> violations (connections' own included)
    connection_violations: Counter[str] = field(default_factory=Counter)  # rule id -> those of connections' own
    events: int = 0
    # Every chat's first-event time and duration, as C doubles: 8 bytes each (16 a chat), where a list of floats
    # held 32 (a float object and its pointer) and a long run grew by 64 bytes a chat, twice that with stages.
    ttfe: array[float] = field(default_factory=lambda: array("d"))
    duration: array[float] = field(default_factory=lambda: array("d"))
    dropped: int = 0  # open model: chats never started because max_in_flight were in flight
    begun: int = 0  # open model: chats (and drops) the load generator got to on time (within LATE of due)
    late: int = 0  # open model: chats that began more than LATE after they were due (the process lagged)
    lag_max: float = 0.0  # the latest a chat began after it was due, in seconds
    unjudged: Counter[str] = field(default_factory=Counter)  # chats a proxy could not judge, by reason (not in chats)

    def add(self, r: ChatResult) -> None:
        if r.further_run:
            # A run the server added to a chat's stream: counted in that chat's verdict (checker.fold_further), not
            # as a chat of its own, so runs nobody asked for never dilute a ratio.
            self.events += r.events_received
            return
        self.chats += 1
        self.outcomes[r.outcome] += 1
        if r.outcome is _ERROR:
            self.error_kinds[r.error_kind or "unknown"] += 1
        self.events += r.events_received
        if r.missing:
            self.missing_chats += 1
            self.missing_roles.update(r.missing)
        if r.violations or r.violations_not_listed:  # a clean chat (most) makes no Counter to merge
            self.violations.update(r.rule_counts())
        if r.time_to_first_event is not None:
            self.ttfe.append(r.time_to_first_event)
        if r.duration is not None:
            self.duration.append(r.duration)

    def add_connection_violation(self, violation: Violation) -> None:
        """A violation of a connection's own (checker.ConnectionChecker.ended): counted with its rule, among every
        violation (the `violations` objective reads them, as chatprobe_rule_violations_total counts them), in no
        chat."""
        rule = str(violation.rule)  # Rule's str is its id
        self.violations[rule] += 1
        self.connection_violations[rule] += 1

    def merge(self, other: "Tally") -> None:
        self.chats += other.chats
        self.outcomes.update(other.outcomes)
        self.error_kinds.update(other.error_kinds)
        self.missing_chats += other.missing_chats
        self.missing_roles.update(other.missing_roles)
        self.violations.update(other.violations)
        self.connection_violations.update(other.connection_violations)
        self.events += other.events
        self.ttfe.extend(other.ttfe)
        self.duration.extend(other.duration)
        self.dropped += other.dropped
        self.begun += other.begun
        self.late += other.late
        self.lag_max = max(self.lag_max, other.lag_max)
        self.unjudged.update(other.unjudged)

    def stats(self) -> ScenarioStats:
        return ScenarioStats(
            chats=self.chats, outcomes=Counter(self.outcomes), missing_chats=self.missing_chats,
            missing_roles=Counter(self.missing_roles), violations=Counter(self.violations),
            ttfe=_stat(self.ttfe), duration=_stat(self.duration), events=self.events,
            error_kinds=Counter(self.error_kinds), dropped=self.dropped, unjudged=Counter(self.unjudged),
            connection_violations=Counter(self.connection_violations),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "chats": self.chats,
            "outcomes": {str(k): v for k, v in self.outcomes.items()},
            "error_kinds": dict(self.error_kinds),
            "missing_chats": self.missing_chats,
            "missing_roles": {str(k): v for k, v in self.missing_roles.items()},
            "violations": dict(self.violations),
            "connection_violations": dict(self.connection_violations),
            "events": self.events,
            "ttfe": self.ttfe.tolist(),
            "duration": self.duration.tolist(),
            "dropped": self.dropped,
            "begun": self.begun,
            "late": self.late,
            "lag_max": self.lag_max,
            "unjudged": dict(self.unjudged),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Tally":
        return cls(
            chats=int(d["chats"]),
            outcomes=Counter({Outcome(k): int(v) for k, v in d["outcomes"].items()}),
            error_kinds=Counter({str(k): int(v) for k, v in d.get("error_kinds", {}).items()}),
            missing_chats=int(d["missing_chats"]),
            missing_roles=Counter({Role(k): int(v) for k, v in d["missing_roles"].items()}),
            violations=Counter({str(k): int(v) for k, v in d["violations"].items()}),
            connection_violations=Counter({str(k): int(v) for k, v in d.get("connection_violations", {}).items()}),
            events=int(d["events"]),
            ttfe=array("d", (float(x) for x in d["ttfe"])),
            duration=array("d", (float(x) for x in d["duration"])),
            dropped=int(d.get("dropped", 0)),
            begun=int(d.get("begun", 0)),
            late=int(d.get("late", 0)),
            lag_max=float(d.get("lag_max", 0.0)),
            unjudged=Counter({k: int(v) for k, v in d.get("unjudged", {}).items() if k in UNJUDGED_REASONS}),
        )


@dataclass
class StageStats:
    """One stage's share of a run: the chats sent (or due) in it, their outcomes and first-event times, the chats
    dropped, and in the open model the rate asked and the rate the load generator achieved."""

    index: int
    kind: str  # "users" or "rate"
    label: str  # e.g. "0→10 users", "40/s"
    start: float  # seconds since the run's start
    end: float
    target: float  # the users, or chats per second, at the stage's end
    asked_rate: float | None  # open model: the stage's mean rate
    achieved_rate: float | None  # open model: chats begun on time (or dropped) in the stage, per second
    chats: int
    outcomes: Counter[Outcome]
    ttfe: dict[str, float | None]
    dropped: int
    late: int = 0  # open model: chats that began more than LATE after they were due
    lag_max: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.index + 1, "kind": self.kind, "label": self.label, "start": self.start, "end": self.end,
            "target": self.target, "asked_rate": self.asked_rate, "achieved_rate": self.achieved_rate,
            "chats": self.chats, "outcomes": {o.value: self.outcomes[o] for o in Outcome},
            "time_to_first_event": {k: self.ttfe.get(k) for k in ("p50", "p95", "p99")}, "dropped_chats": self.dropped,
            "late_chats": self.late, "max_lag": self.lag_max,
        }


# An open-model chat that began more than this after it was due was late: the process could not keep the schedule.
LATE = 0.1


class StageTallies:
    """A Tally per stage of a shaped run: each chat goes to the stage its sending (or, open model, its due time)
    fell in, `t` seconds since the run's start; what a Locust worker sends with its tally, keyed by stage."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.by_stage: dict[int, Tally] = {}

    def _at(self, t: float) -> Tally | None:
        w = self.shape.stage_at(t)
        if w is None and self.shape.windows and t >= self.shape.total:
            w = self.shape.windows[-1]  # sent the instant the last stage ended: still its chat
        if w is None:
            return None
        return self.by_stage.setdefault(w.index, Tally())

    def add(self, result: ChatResult, t: float) -> None:
        if (tally := self._at(t)) is not None:
            tally.add(result)

    def dropped(self, t: float) -> None:
        if (tally := self._at(t)) is not None:
            tally.dropped += 1
            tally.begun += 1

    def begun(self, t: float, lag: float) -> None:
        """An open-model chat due `t` seconds since the start began `lag` seconds after that."""
        if (tally := self._at(t)) is not None:
            if lag <= LATE:
                tally.begun += 1
            else:
                tally.late += 1
            tally.lag_max = max(tally.lag_max, lag)

    def merge(self, other: dict[int, Tally]) -> None:
        for i, tally in other.items():
            self.by_stage.setdefault(i, Tally()).merge(tally)

    def stats(self) -> list[StageStats]:
        out = []
        for w in self.shape.windows:
            tally = self.by_stage.get(w.index, Tally())
            st = _stat(tally.ttfe)
            rate = self.shape.kind == "rate"
            out.append(StageStats(
                index=w.index, kind=self.shape.kind, label=w.label(self.shape.kind), start=w.start, end=w.end,
                target=w.target, asked_rate=w.mean if rate else None,
                achieved_rate=(tally.begun / w.length if w.length > 0 else None) if rate else None,
                chats=tally.chats, outcomes=Counter(tally.outcomes),
                ttfe={k: st[k] for k in ("p50", "p95", "p99")}, dropped=tally.dropped, late=tally.late,
                lag_max=tally.lag_max,
            ))
        return out


def knee(stages: list[StageStats], limit: float) -> StageStats | None:
    """The first stage whose first-event p95 is over `limit` (the SLO broke there), or None when none is. A chat
    dropped (never started) waited forever: more than 5% of a stage's chats dropped breaks it too."""
    for st in stages:
        p95 = st.ttfe.get("p95")
        if (p95 is not None and p95 > limit) or st.dropped > 0.05 * (st.chats + st.dropped):
            return st
    return None


def generator_warnings(stages: list[StageStats], tolerance: float = 0.05) -> list[str]:
    """Open model: a stage whose load generator began fewer chats on time than asked (by more than `tolerance`,
    and by more than one chat) means this process could not generate the rate; say so with the rate achieved."""
    out = []
    for st in stages:
        if st.asked_rate is None or st.achieved_rate is None or st.asked_rate <= 0:
            continue
        short = st.asked_rate - st.achieved_rate
        if short > tolerance * st.asked_rate and short * (st.end - st.start) > 1:
            late = f"; {st.late} chats began up to {st.lag_max:.2g} s late" if st.late else ""
            out.append(f"stage {st.index + 1} asked {st.asked_rate:g} chats/s and the load generator achieved "
                       f"{st.achieved_rate:.4g}/s on time{late}: this process cannot generate the rate (run fewer "
                       "chats per process, or several processes)")
    return out


def compute(results: list[ChatResult]) -> ScenarioStats:
    tally = Tally()
    for r in results:
        tally.add(r)
    return tally.stats()


def evaluate(stats: ScenarioStats, objectives: Objectives) -> list[ObjectiveResult]:
    out: list[ObjectiveResult] = []
    for name, source in (("time_to_first_event", stats.ttfe), ("chat_duration", stats.duration)):
        spec = getattr(objectives, name)
        for stat in type(spec).model_fields:  # (not model_dump: a run by the default objectives builds no serializer)
            if (limit := getattr(spec, stat)) is None:
                continue
            value = source.get(stat)
            # No sample at all (e.g. no chat got a first event) fails a latency objective: nothing was proven.
            out.append(ObjectiveResult(f"{name}.{stat}", limit, "<=", value, value is not None and value <= limit))
    ratios = {
        "missing_events_ratio": stats.missing_ratio,
        "violations": float(sum(stats.violations.values())),
        "passed_ratio": stats.passed_ratio,
        "error_ratio": stats.error_ratio,
    }
    for name, value in ratios.items():
        bound = getattr(objectives, name)
        if bound.max is not None:
            out.append(ObjectiveResult(f"{name}.max", bound.max, "<=", value, value <= bound.max + 1e-12))
        if bound.min is not None:
            out.append(ObjectiveResult(f"{name}.min", bound.min, ">=", value, value >= bound.min - 1e-12))
    return out
