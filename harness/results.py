"""A scenario's run as every sink and driver sees it, and the one mapping from verdicts to a process exit code."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .checker import ChatResult
from .errors import ExitCode
from .events import Outcome
from .stats import ObjectiveResult, ScenarioStats, StageStats, knee

if TYPE_CHECKING:
    from .scenario import Scenario

# Connection failures that mean the target could not be reached at all (exit 3 when every chat failed so).
UNREACHABLE_KINDS = frozenset({"refused", "timeout", "tls_error"})


def all_unreachable(chats: int, error_kinds: dict[str, int]) -> bool:
    """Every chat ended with a connection failure that means "unreachable" (and there was at least one chat)."""
    return chats > 0 and sum(n for kind, n in error_kinds.items() if kind in UNREACHABLE_KINDS) == chats


@dataclass
class ScenarioRun:
    scenario: "Scenario"
    target: str
    results: list[ChatResult]
    stats: ScenarioStats
    objectives: list[ObjectiveResult]
    started_at: float
    elapsed: float
    stopped_by: str = ""  # why it stopped before its end: "its max_duration" or "interrupted" (a signal); "": it did not
    errors: list[str] = field(default_factory=list)
    stages: list[StageStats] = field(default_factory=list)  # a shaped run (stages, arrival_rate): per stage
    warnings: list[str] = field(default_factory=list)  # e.g. the rate the load generator could not reach

    @property
    def stopped_early(self) -> bool:
        return bool(self.stopped_by)

    @property
    def stop_note(self) -> str:
        """" (stopped early: why)" for a run that was, "" otherwise: what every report says after its elapsed time."""
        return f" (stopped early: {self.stopped_by})" if self.stopped_by else ""

    @property
    def slo_limit(self) -> float:
        """The first-event limit a stage's p95 is held to: the p95 objective, else the chats' first_event_limit."""
        p95 = self.scenario.objectives.time_to_first_event.p95
        return p95 if p95 is not None else self.scenario.expect.first_event_limit

    @property
    def knee(self) -> StageStats | None:
        """The first stage whose first-event p95 broke the SLO (`slo_limit`), None when every stage held it."""
        return knee(self.stages, self.slo_limit)

    @property
    def passed(self) -> bool:
        return all(o.ok for o in self.objectives) and not self.unreachable

    @property
    def unreachable(self) -> bool:
        kinds: dict[str, int] = {}
        for r in self.results:
            if r.outcome is Outcome.ERROR and r.error_kind:
                kinds[r.error_kind] = kinds.get(r.error_kind, 0) + 1
        if self.results:
            return all_unreachable(len(self.results), kinds)
        return all_unreachable(self.stats.chats, dict(self.stats.error_kinds))

    @property
    def failed_objectives(self) -> list[ObjectiveResult]:
        return [o for o in self.objectives if not o.ok]


def credentials_refused(runs: Iterable[ScenarioRun]) -> bool:
    """The server rejected the credentials of every chat: a configuration error, not a failing server."""
    chats = sum(r.stats.chats for r in runs)
    return chats > 0 and sum(r.stats.error_kinds.get("auth_failed", 0) for r in runs) == chats


def exit_code(runs: Iterable[ScenarioRun]) -> ExitCode:
    """The verdict of a whole command: credentials refused everywhere (usage), unreachable, failed, ok."""
    runs = list(runs)
    if credentials_refused(runs):
        return ExitCode.USAGE
    if any(r.unreachable for r in runs):
        return ExitCode.UNREACHABLE
    return ExitCode.OK if runs and all(r.passed for r in runs) else ExitCode.FAILED
