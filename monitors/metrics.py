"""Every chatprobe metric of docs/metrics.md, declared once, and the sink that records harness results into them.

`ChatMetrics(registry)` builds the whole set on one registry (a fresh one per `/probe`, like blackbox_exporter);
`default_metrics()` is the process-wide set on prometheus_client's default registry.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from harness.events import ALL_ROLES, RULES, Outcome
from harness.sinks import CONNECTION_RESULTS, RECONNECT_ATTEMPT_RESULTS, RECONNECT_RESULTS, UNJUDGED_REASONS, Sink
from harness.targets import target_label  # re-exported: one definition for every driver

_C = TypeVar("_C")

if TYPE_CHECKING:
    from harness.checker import ChatResult
    from harness.events import Event, Violation

# prometheus_client exports a `_created` timestamp series beside every counter and histogram child: as many
# series again, that no dashboard, rule or alert of chatprobe reads. Off for the whole process.
disable_created_metrics()

PREFIX = "chatprobe"
SOURCES = ("synthetic", "live", "load")
OUTCOMES: tuple[str, ...] = tuple(o.value for o in Outcome)
ROLES: tuple[str, ...] = tuple(r.value for r in ALL_ROLES)
RULE_IDS: tuple[str, ...] = tuple(RULES)

COMMON_LABELS = ("target", "scenario", "source")
# Freshness is per driver, not per scenario: a run covers all of its scenarios.
RUN_LABELS = ("target", "source")

# Servers answer in milliseconds to tens of seconds: the buckets resolve both (a first event at 8 ms and one at
# 40 ms must not fall into one bucket). 2 s must be a boundary: the "first event within 2 s" SLO reads the le="2"
# bucket. The top boundaries follow the checker's default limits (30 s stall, 60 s deadline); beyond them is +Inf.
TIME_TO_FIRST_EVENT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0,
)
# A whole run: tens of milliseconds (agentsim) to minutes (real tools); 60 s is the default deadline, 120 s and
# 300 s hold scenarios that raise it.
CHAT_DURATION_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0,
)
# The "first event within 2 s" SLO's line (a bucket boundary above): a chat its client left before any event and
# before this long is in no side of that SLI (chats_abandoned_before_first_event).
FIRST_EVENT_SLO_SECONDS = 2.0
EVENT_DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)

# A scenario name comes from a file, but a proxy or a careless caller could feed anything: past this many
# distinct values per sink, further scenarios are recorded as OVERFLOW_SCENARIO.
MAX_SCENARIOS = 64
OVERFLOW_SCENARIO = "other"
MAX_LABEL_LENGTH = 64
# Scenario names remembered as given (each maps to its label's children), so a hot path looks a name up once.
MAX_LOOKUPS = 4 * MAX_SCENARIOS


class ChatMetrics:
    """The full set of chatprobe metrics on one registry. Attribute names follow the metric names."""

    def __init__(self, registry: CollectorRegistry, *, probe: bool = False) -> None:
        self.registry = registry
        c = COMMON_LABELS

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, c + extra, registry=registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...], extra: tuple[str, ...] = ()) -> Histogram:
            return Histogram(f"{PREFIX}_{name}", doc, c + extra, buckets=buckets, registry=registry)

        self.chats = counter("chats", "Chats that reached a verdict, by outcome.", ("outcome",))
        self.chats_missing_events = counter(
            "chats_missing_events", "Chats that ended without a role their scenario requires."
        )
        self.missing_events = counter("missing_events", "Required roles missing from finished chats.", ("event",))
        self.events = counter("events", "Events received, by canonical role.", ("event",))
        self.rule_violations = counter("rule_violations", "Protocol rule violations, by rule id.", ("rule",))
        self.time_to_first_event = histogram(
            "time_to_first_event_seconds", "Time from sending the message to the first event.",
            TIME_TO_FIRST_EVENT_BUCKETS,
        )
        self.chat_duration = histogram(
            "chat_duration_seconds", "Time from sending the message to the terminal event.", CHAT_DURATION_BUCKETS
        )
        self.event_delay = histogram(
            "event_delay_seconds", "Time from sending the message to each role's first arrival.",
            EVENT_DELAY_BUCKETS, ("event",),
        )
        self.connections = counter("connections", "Connection attempts, by result.", ("result",))
        self.reconnects = counter("reconnects", "Reconnections and whether the flow continued.", ("result",))
        self.reconnect_attempts = counter(
            "reconnect_attempts", "Connections opened to reconnect a chat (retries with backoff included), whether "
            "each connected; counted with the chat's verdict.", ("result",))
        self.chats_abandoned = counter("chats_abandoned", "Chats the user left before the terminal event.")
        self.chats_abandoned_before_first_event = counter(
            "chats_abandoned_before_first_event", "Abandoned chats the user left before any event came and within "
            "2 s of sending: in chatprobe_chats_total, but neither slow nor fast for the first-event-within-2s SLI.")
        self.chats_dropped = counter(
            "chats_dropped", "Open-model chats not started because max_in_flight chats were in flight (like k6's "
            "dropped_iterations); not in chatprobe_chats_total.")
        self.client_rejections = counter(
            "client_rejections", "(proxy) Chats the server rejected with an error_message (any code: an invalid "
            "message, a quota, SERVER_BUSY) or under credentials it refused, chats let go because the client had "
            "more than 64 open on one connection, or whose timing rules broke only while the client read too "
            "slowly: the client's doing; not in chatprobe_chats_total.")
        self.chats_unjudged = counter(
            "chats_unjudged", "Chats the proxy could not judge, by reason: it stopped with them in flight or kept for "
            "a resume (proxy_stopped), or its bounds on chats kept for a resume were full (parking_full); not in "
            "chatprobe_chats_total.", ("reason",))
        self.chats_in_flight = Gauge(
            f"{PREFIX}_chats_in_flight", "Chats started and not yet judged.", c, registry=registry,
            multiprocess_mode="livesum",
        )
        self.last_run_timestamp = Gauge(
            f"{PREFIX}_last_run_timestamp_seconds", "Unix time the last run finished.", RUN_LABELS,
            registry=registry, multiprocess_mode="max",
        )
        self.last_success_timestamp = Gauge(
            f"{PREFIX}_last_success_timestamp_seconds",
            "Unix time the last scenario run that met its objectives finished.", RUN_LABELS,
            registry=registry, multiprocess_mode="max",
        )
        # The proxy's own front door (source="live" only): refusals by why, and connections open now, so an SRE
        # sees a proxy at its cap (or one address hogging it) apart from the upstream's connection results.
        self.proxy_refused = Counter(
            f"{PREFIX}_proxy_refused_connections", "Client connections the proxy refused, by reason.",
            ("target", "source", "reason"), registry=registry,
        )
        self.proxy_connections = Gauge(
            f"{PREFIX}_proxy_connections", "Client connections the proxy holds open now.", ("target", "source"),
            registry=registry, multiprocess_mode="livesum",
        )
        # blackbox_exporter's names, only on a /probe registry, unlabelled like blackbox's.
        self.probe_success: Gauge | None = None
        self.probe_duration: Gauge | None = None
        if probe:
            self.probe_success = Gauge("probe_success", "1 when the probe met its scenario's objectives.", registry=registry)
            self.probe_duration = Gauge(
                "probe_duration_seconds", "How long the probe took, in seconds.", registry=registry
            )


_default: ChatMetrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> ChatMetrics:
    """The process-wide metrics on the default registry, created on first use (so importing costs nothing)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ChatMetrics(REGISTRY)
        return _default


def metric_names(metrics: ChatMetrics | None = None) -> set[str]:
    """Every series name the metrics expose (with _total, _bucket, …), for checking dashboards and rules."""
    m = metrics or ChatMetrics(CollectorRegistry(), probe=True)
    names: set[str] = set()
    for family in m.registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
    return names


def _clean(value: str) -> str:
    """A label value as given, cut to a bounded length."""
    return value[:MAX_LABEL_LENGTH]


class _Children:
    """One scenario's label children of every metric, looked up once. A closed set's children are keyed by its
    strings and, for roles and outcomes, by the enum members too (a str enum hashes by its name, not its value)."""

    __slots__ = ("in_flight", "chats", "chats_error", "chats_missing_events", "missing_events", "events",
                 "rule_violations", "time_to_first_event", "chat_duration", "event_delay", "connections", "reconnects",
                 "reconnect_attempts", "chats_abandoned", "chats_abandoned_before_first_event", "chats_dropped",
                 "client_rejections", "chats_unjudged")

    def __init__(self, m: ChatMetrics, base: tuple[str, str, str]) -> None:
        self.in_flight = m.chats_in_flight.labels(*base)
        self.chats = _keyed(tuple(Outcome), lambda o: m.chats.labels(*base, o))
        self.chats_error = self.chats["error"]
        self.chats_missing_events = m.chats_missing_events.labels(*base)
        self.missing_events = _keyed(ALL_ROLES, lambda r: m.missing_events.labels(*base, r))
        self.events = _keyed(ALL_ROLES, lambda r: m.events.labels(*base, r))
        self.rule_violations = {r: m.rule_violations.labels(*base, r) for r in RULE_IDS}
        self.time_to_first_event = m.time_to_first_event.labels(*base)
        self.chat_duration = m.chat_duration.labels(*base)
        self.event_delay = _keyed(ALL_ROLES, lambda r: m.event_delay.labels(*base, r))
        self.connections = {r: m.connections.labels(*base, r) for r in CONNECTION_RESULTS}
        self.reconnects = {r: m.reconnects.labels(*base, r) for r in RECONNECT_RESULTS}
        self.reconnect_attempts = {r: m.reconnect_attempts.labels(*base, r) for r in RECONNECT_ATTEMPT_RESULTS}
        self.chats_abandoned = m.chats_abandoned.labels(*base)
        self.chats_abandoned_before_first_event = m.chats_abandoned_before_first_event.labels(*base)
        self.chats_dropped = m.chats_dropped.labels(*base)
        self.client_rejections = m.client_rejections.labels(*base)
        self.chats_unjudged = {r: m.chats_unjudged.labels(*base, r) for r in UNJUDGED_REASONS}


def _keyed(members: tuple[Enum, ...], child: Callable[[str], _C]) -> dict[object, _C]:
    out: dict[object, _C] = {}
    for member in members:
        out[member] = out[member.value] = child(member.value)
    return out


class MetricsSink(Sink):
    """Records a driver's verdicts and connection outcomes into a ChatMetrics for one target and source."""

    def __init__(
        self,
        metrics: ChatMetrics,
        target: str,
        source: str = "synthetic",
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
        if not target:
            raise ValueError("target must be a non-empty short name")
        # A URL given as a target would put a path, a query or a token into a label.
        if "://" in target or "@" in target or "/" in target or "?" in target:
            target = target_label(target)
        self.metrics = metrics
        self.target = _clean(target)
        self.source = source
        self.clock = clock
        self._named: dict[str, _Children] = {}  # by label value: at most MAX_SCENARIOS + the overflow
        self._lookup: dict[str, _Children] = {}  # by the name a driver gave (uncut, or past the bound)
        self._lock = threading.Lock()

    # -- labels --
    def _scenario(self, scenario: str) -> _Children:
        """The label children of a scenario, every fixed label combination initialised and looked up on its first
        use: `.labels(...)` takes a lock and hashes a tuple per call, about a tenth of a Locust chat's CPU when a
        verdict ran it some twenty times."""
        children = self._lookup.get(scenario)
        return children if children is not None else self._add(scenario)

    def _add(self, scenario: str) -> _Children:
        name = _clean(scenario or "default")
        with self._lock:
            if name not in self._named and len(self._named) >= MAX_SCENARIOS:
                name = OVERFLOW_SCENARIO
            children = self._named.get(name)
            if children is None:
                children = self._named[name] = _Children(self.metrics, (self.target, name, self.source))
            if len(self._lookup) < MAX_LOOKUPS:  # past it, further names take this path each time: bounded memory
                self._lookup[scenario] = children
        return children

    def declare(self, scenario: str) -> None:
        """Every series of `scenario` exported at zero now, before its first chat: for a process that knows its one
        scenario from its start (the proxy), so that its first scrape after a restart on a new address (a new
        `instance`) already holds them and rate() counts the chats judged before the next one."""
        self._scenario(scenario)

    # -- hooks --
    def chat_started(self, scenario: str) -> None:
        self._scenario(scenario).in_flight.inc()

    def event_received(self, scenario: str, event: Event) -> None:
        # Events are counted once, from the verdict (chat_finished), so a chat is never counted twice.
        pass

    def chat_finished(self, result: ChatResult) -> None:
        c = self._scenario(result.scenario)
        if result.further_run:
            # A run a server added to a chat's stream: its events count; as a chat it counts in the chat whose stream
            # carried it (checker.fold_further), so runs nobody asked for never dilute chatprobe_chats_total.
            for role, count in result.event_counts.items():
                c.events[role].inc(count)
            return
        c.in_flight.dec()
        c.chats.get(result.outcome, c.chats_error).inc()
        if result.missing:
            c.chats_missing_events.inc()
            for role in result.missing:
                c.missing_events[role].inc()
        for role, count in result.event_counts.items():
            c.events[role].inc(count)
        if result.violations or result.violations_not_listed:
            for rule, count in result.rule_counts().items():
                child = c.rule_violations.get(rule)
                if child is None:
                    raise ValueError(f"{rule!r} is not one of {', '.join(RULE_IDS)}")
                child.inc(count)
        if result.time_to_first_event is not None:
            c.time_to_first_event.observe(result.time_to_first_event)
        elif result.abandoned_at is not None and result.abandoned_at - result.sent_at < FIRST_EVENT_SLO_SECONDS:
            # The user left before the server was late: not held against it by the first-event SLI (the rules take
            # it out of the denominator), as an abandoned chat is not by the outcomes.
            c.chats_abandoned_before_first_event.inc()
        if result.duration is not None:
            c.chat_duration.observe(result.duration)
        for role, delay in result.event_delays.items():
            c.event_delay[role].observe(delay)
        if result.reconnect_attempts:
            c.reconnect_attempts["connected"].inc(result.reconnect_attempts - result.reconnect_failures)
            c.reconnect_attempts["failed"].inc(result.reconnect_failures)

    def chat_abandoned(self, scenario: str) -> None:
        self._scenario(scenario).chats_abandoned.inc()

    def chat_dropped(self, scenario: str) -> None:
        self._scenario(scenario).chats_dropped.inc()

    def client_rejected(self, result: ChatResult) -> None:
        c = self._scenario(result.scenario)
        c.in_flight.dec()
        c.client_rejections.inc()

    def chat_unjudged(self, scenario: str, reason: str) -> None:
        c = self._scenario(scenario)
        child = c.chats_unjudged.get(reason)
        if child is None:
            raise ValueError(f"{reason!r} is not one of {', '.join(UNJUDGED_REASONS)}")
        c.in_flight.dec()
        child.inc()

    def connection_attempt(self, scenario: str, result: str) -> None:
        c = self._scenario(scenario)
        c.connections.get(result, c.connections["protocol_error"]).inc()

    def connection_violation(self, scenario: str, violation: Violation) -> None:
        # In chatprobe_rule_violations_total with its rule (ChatEventIsolationBreach reads R8 there), in no chat count.
        rule = str(violation.rule)  # Rule's str is its id
        child = self._scenario(scenario).rule_violations.get(rule)
        if child is None:
            raise ValueError(f"{rule!r} is not one of {', '.join(RULE_IDS)}")
        child.inc()

    def reconnect(self, scenario: str, result: str) -> None:
        c = self._scenario(scenario)
        c.reconnects.get(result, c.reconnects["lost"]).inc()

    def run_finished(self, success: bool) -> None:
        now = self.clock()
        self.metrics.last_run_timestamp.labels(self.target, self.source).set(now)
        if success:
            self.metrics.last_success_timestamp.labels(self.target, self.source).set(now)

