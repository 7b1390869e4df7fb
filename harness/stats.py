"""A scenario's numbers and its objectives: percentiles, ratios and k6-style threshold verdicts."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .checker import ChatResult
from .events import Outcome
from .scenario import Objectives


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of the values; None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, math.ceil(q / 100 * len(s)) - 1)
    return s[k]


@dataclass
class ObjectiveResult:
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
    chats: int = 0
    outcomes: Counter = field(default_factory=Counter)
    missing_chats: int = 0
    missing_roles: Counter = field(default_factory=Counter)
    violations: Counter = field(default_factory=Counter)
    ttfe: dict[str, float | None] = field(default_factory=dict)
    duration: dict[str, float | None] = field(default_factory=dict)
    events: int = 0

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
            "time_to_first_event": self.ttfe,
            "chat_duration": self.duration,
            "events": self.events,
        }


def _stat(values: list[float]) -> dict[str, float | None]:
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
        "avg": (sum(values) / len(values)) if values else None,
    }


def compute(results: list[ChatResult]) -> ScenarioStats:
    st = ScenarioStats()
    ttfe: list[float] = []
    dur: list[float] = []
    for r in results:
        st.chats += 1
        st.outcomes[r.outcome] += 1
        st.events += len(r.events)
        if r.missing:
            st.missing_chats += 1
            st.missing_roles.update(r.missing)
        for v in r.violations:
            st.violations[v.rule] += 1
        if r.time_to_first_event is not None:
            ttfe.append(r.time_to_first_event)
        if r.duration is not None:
            dur.append(r.duration)
    st.ttfe = _stat(ttfe)
    st.duration = _stat(dur)
    return st


def evaluate(stats: ScenarioStats, objectives: Objectives) -> list[ObjectiveResult]:
    out: list[ObjectiveResult] = []
    for name, source in (("time_to_first_event", stats.ttfe), ("chat_duration", stats.duration)):
        spec = getattr(objectives, name)
        for stat, limit in spec.model_dump().items():
            if limit is None:
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
