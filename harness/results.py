"""A scenario's run as every sink and driver sees it, and the one mapping from verdicts to a process exit code."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .checker import ChatResult
from .errors import ExitCode
from .events import Outcome, Violation, kept_bytes
from .stats import ObjectiveResult, ScenarioStats, StageStats, compute, evaluate, knee

if TYPE_CHECKING:
    from .scenario import Scenario

# An enum member looked up on its class costs ~0.1 us each time (Python 3.11): the one Listing.add asks of every chat,
# once.
_PASSED = Outcome.PASSED

# Why a run stopped early (ScenarioRun.stopped_by), by the word a recording's "client-stop" close records write for it
# ("stop": Recorder.stopped), which `chatprobe check` reports back.
STOPPED_BY = {"max_duration": "its max_duration", "interrupted": "interrupted"}
# Why `chatprobe run` started no more scenarios: its --max-duration was used up (the run's, not a scenario's).
RUN_OUT_OF_TIME = "past its --max-duration"

# Connection failures that mean the target could not be reached at all (exit 3 when every chat failed so).
UNREACHABLE_KINDS = frozenset({"refused", "timeout", "tls_error"})


def all_unreachable(chats: int, error_kinds: dict[str, int]) -> bool:
    """Every chat ended with a connection failure that means "unreachable" (and there was at least one chat)."""
    return chats > 0 and sum(n for kind, n in error_kinds.items() if kind in UNREACHABLE_KINDS) == chats


# What the reports list of a run, `chatprobe run` and `chatprobe check` alike: every chat is counted (stats.Tally: the
# counts, ratios and latencies), the first MAX_CHATS_LISTED passing and the first MAX_CHATS_LISTED not passing chats
# are listed (the JSON report's `chats`, the worst chats, the HTML report's charts and timelines) with their events,
# up to MAX_LISTED_BYTES of events in all. A run's memory then stays bounded however long it runs: every chat's
# result kept was ~5 KB, so an hour at 500 chats a second would have held 9 GB.
MAX_CHATS_LISTED = 1_000
MAX_LISTED_BYTES = 64 * 1024 * 1024
# Violations of connections' own (an R8 or R12 after a connection's last chat: checker.ConnectionChecker.ended) a run
# lists with their reasons; every one is counted (stats), at most 16 a connection.
MAX_CONNECTION_VIOLATIONS_LISTED = 200


class ListingBudget:
    """What the Listings that draw on it list between them: the first MAX_CHATS_LISTED passing and MAX_CHATS_LISTED
    not passing chats, their events up to MAX_LISTED_BYTES. One per run of `chatprobe run`; one for all the runs of a
    `chatprobe check`, whose directory may hold any number of recorded runs (a budget each let 1,000 runs list 64 GiB
    of events between them)."""

    __slots__ = ("passing", "failing", "bytes", "scope")

    def __init__(self, scope: str = "") -> None:
        self.passing = self.failing = 0
        self.bytes = 0
        self.scope = scope  # what the budget is shared by, for the note ("" for one run: its own)


class Listing:
    """The chats a run lists (above): `add` every judged chat; a chat not listed keeps no events."""

    __slots__ = ("listed", "budget", "max_events", "connection_violations")

    def __init__(self, max_events: int | None = None, budget: ListingBudget | None = None) -> None:
        self.listed: list[ChatResult] = []
        self.budget = budget or ListingBudget()
        self.max_events = max_events  # a listed chat's events kept (a copy of the first so many); None: as judged
        # The run's first violations of connections' own (`add_connection_violation`).
        self.connection_violations: list[Violation] = []

    def add_connection_violation(self, violation: Violation) -> None:
        """A violation of a connection's own (no chat's): listed with its reason, the first
        MAX_CONNECTION_VIOLATIONS_LISTED (the run's stats count them all)."""
        if len(self.connection_violations) < MAX_CONNECTION_VIOLATIONS_LISTED:
            self.connection_violations.append(violation)

    def add(self, result: ChatResult) -> bool:
        """List `result` if there is room; True when it was listed."""
        budget = self.budget
        passing = result.outcome is _PASSED
        if (budget.passing if passing else budget.failing) >= MAX_CHATS_LISTED:
            _let_go(result)  # counted, not listed: nothing keeps its events
            return False
        if budget.bytes > MAX_LISTED_BYTES:
            _let_go(result)
        else:
            if self.max_events is not None:
                if len(result.events) > self.max_events:
                    result.events_bytes = 0  # (those left are summed)
                result.events = result.events[:self.max_events]
            # What the chat's tracker counted as it kept them (each event's kept_bytes), else summed here.
            budget.bytes += result.events_bytes or sum(kept_bytes(ev) for ev in result.events)
        self.listed.append(result)
        if passing:
            budget.passing += 1
        else:
            budget.failing += 1
        return True

    def note(self, chats: int) -> str | None:
        """What a run's report says when it lists fewer chats than it judged."""
        if chats <= len(self.listed):
            return None
        scope = f" {self.budget.scope}" if self.budget.scope else ""
        return (f"{chats} chats judged, {len(self.listed)} listed (the first {MAX_CHATS_LISTED:,} passing and the "
                f"first {MAX_CHATS_LISTED:,} not passing{scope}); the figures count them all")


def _let_go(result: ChatResult) -> None:
    """The chat's events let go: the result's list is the judged chat's own (checker.ChatTracker._make shares it, so
    that late events show in the report), and the connection keeps its latest judged chats for late events
    (checker.KEEP_FINISHED each: a run of many connections held every one's last hundred chats' events). Emptied
    in place, it holds nothing there either, and a late event is no longer added to it (_after_verdict)."""
    events, result.events = result.events, []
    events.clear()
    result.events_bytes = 0


@dataclass
class ScenarioRun:
    """One scenario's run: its chats' results, stats and objectives, when and how long, and why it stopped."""

    scenario: "Scenario"
    target: str
    results: list[ChatResult]
    stats: ScenarioStats
    objectives: list[ObjectiveResult]
    started_at: float
    elapsed: float
    stopped_by: str = ""  # why it stopped before its end: a STOPPED_BY value (a signal: "interrupted"); "": it did not
    errors: list[str] = field(default_factory=list)
    stages: list[StageStats] = field(default_factory=list)  # a shaped run (stages, arrival_rate): per stage
    warnings: list[str] = field(default_factory=list)  # e.g. the rate the load generator could not reach
    # Violations of connections' own, no chat's (another user's event, R8, or a malformed frame, R12, after a
    # connection's last chat was judged, with no chat after it: checker.ConnectionChecker.ended), the first
    # MAX_CONNECTION_VIOLATIONS_LISTED; `stats.connection_violations` counts them all, and `stats.violations` with
    # every other violation (the `violations` objective).
    connection_violations: list[Violation] = field(default_factory=list)
    # Why it never started ("": it did): the run was stopped before its turn came (`not_started`).
    not_run: str = ""

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
        # From the counts of every chat, not the listed ones (Listing).
        return all_unreachable(self.stats.chats, dict(self.stats.error_kinds))

    @property
    def failed_objectives(self) -> list[ObjectiveResult]:
        return [o for o in self.objectives if not o.ok]


def not_started(scenario: "Scenario", target: str, why: str, at: float, what: str = "run") -> ScenarioRun:
    """A scenario the run was stopped before (Ctrl-C, SIGTERM while an earlier one ran): no chat, no objective met,
    and in every report as not run (a JUnit <skipped>), rather than left out, so that a stopped run's reports never
    read as every scenario having passed, and a CI tracking each scenario over time still finds it."""
    stats = compute([])
    reason = f"not run: the {what} was {why} before it started"  # `what`: "run", or "check" of recordings
    return ScenarioRun(scenario=scenario, target=target, results=[], stats=stats,
                       objectives=evaluate(stats, scenario.objectives), started_at=at, elapsed=0.0, stopped_by=why,
                       errors=[reason], not_run=reason)


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
