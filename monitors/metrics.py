"""Every chatprobe metric of docs/metrics.md, declared once, and the sink that records harness results into them.

`ChatMetrics(registry)` builds the whole set on one registry (a fresh one per `/probe`, like blackbox_exporter);
`default_metrics()` is the process-wide set on prometheus_client's default registry.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from harness.events import ALL_ROLES, RULES, Outcome
from harness.sinks import CONNECTION_RESULTS, RECONNECT_RESULTS, Sink
from harness.targets import target_label  # re-exported: one definition for every driver

if TYPE_CHECKING:
    from harness.checker import ChatResult
    from harness.events import Event

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
EVENT_DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)

# A scenario name comes from a file, but a proxy or a careless caller could feed anything: past this many
# distinct values per sink, further scenarios are recorded as OVERFLOW_SCENARIO.
MAX_SCENARIOS = 64
OVERFLOW_SCENARIO = "other"
MAX_LABEL_LENGTH = 64



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
        self.chats_abandoned = counter("chats_abandoned", "Chats the user left before the terminal event.")
        self.chats_dropped = counter(
            "chats_dropped", "Open-model chats not started because max_in_flight chats were in flight (like k6's "
            "dropped_iterations); not in chatprobe_chats_total.")
        self.client_rejections = counter(
            "client_rejections", "Chats the server rejected because the client sent an invalid message "
            "(proxy: the user's client, not the server, is at fault); not in chatprobe_chats_total.")
        self.chats_in_flight = Gauge(
            f"{PREFIX}_chats_in_flight", "Chats started and not yet judged.", c, registry=registry,
            multiprocess_mode="livesum",
        )
        self.last_run_timestamp = Gauge(
            f"{PREFIX}_last_run_timestamp_seconds", "Unix time the last run finished.", RUN_LABELS,
            registry=registry, multiprocess_mode="max",
        )
        self.last_success_timestamp = Gauge(
            f"{PREFIX}_last_success_timestamp_seconds", "Unix time the last successful run finished.", RUN_LABELS,
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
            self.probe_success = Gauge("probe_success", "1 when every chat of the probe passed.", registry=registry)
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
        self._scenarios: set[str] = set()
        self._lock = threading.Lock()

    # -- labels --
    def _scenario(self, scenario: str) -> str:
        """The scenario label value, initialising every fixed label combination on its first use."""
        name = _clean(scenario or "default")
        if name in self._scenarios:
            return name
        with self._lock:
            if name in self._scenarios:
                return name
            if len(self._scenarios) >= MAX_SCENARIOS:
                name = OVERFLOW_SCENARIO
                if name in self._scenarios:
                    return name
            self._init(name)
            self._scenarios.add(name)
        return name

    def _init(self, scenario: str) -> None:
        m = self.metrics
        base = (self.target, scenario, self.source)
        for outcome in OUTCOMES:
            m.chats.labels(*base, outcome)
        for result in CONNECTION_RESULTS:
            m.connections.labels(*base, result)
        for result in RECONNECT_RESULTS:
            m.reconnects.labels(*base, result)
        for rule in RULE_IDS:
            m.rule_violations.labels(*base, rule)
        for role in ROLES:
            m.missing_events.labels(*base, role)
            m.events.labels(*base, role)
            m.event_delay.labels(*base, role)
        m.chats_missing_events.labels(*base)
        m.chats_abandoned.labels(*base)
        m.chats_dropped.labels(*base)
        m.client_rejections.labels(*base)
        m.chats_in_flight.labels(*base)
        m.time_to_first_event.labels(*base)
        m.chat_duration.labels(*base)

    def _base(self, scenario: str) -> tuple[str, str, str]:
        return (self.target, self._scenario(scenario), self.source)

    # -- hooks --
    def chat_started(self, scenario: str) -> None:
        self.metrics.chats_in_flight.labels(*self._base(scenario)).inc()

    def event_received(self, scenario: str, event: Event) -> None:
        # Events are counted once, from the verdict (chat_finished), so a chat is never counted twice.
        pass

    def chat_finished(self, result: ChatResult) -> None:
        m = self.metrics
        base = self._base(result.scenario)
        m.chats_in_flight.labels(*base).dec()
        m.chats.labels(*base, _known(str(result.outcome), OUTCOMES, "error")).inc()
        if result.missing:
            m.chats_missing_events.labels(*base).inc()
            for role in result.missing:
                m.missing_events.labels(*base, str(role)).inc()
        for role, count in result.event_counts.items():
            m.events.labels(*base, str(role)).inc(count)
        for rule, count in result.rule_counts().items():
            m.rule_violations.labels(*base, _known(rule, RULE_IDS, None)).inc(count)
        if result.time_to_first_event is not None:
            m.time_to_first_event.labels(*base).observe(result.time_to_first_event)
        if result.duration is not None:
            m.chat_duration.labels(*base).observe(result.duration)
        for role, delay in result.event_delays.items():
            m.event_delay.labels(*base, str(role)).observe(delay)

    def chat_abandoned(self, scenario: str) -> None:
        self.metrics.chats_abandoned.labels(*self._base(scenario)).inc()

    def chat_dropped(self, scenario: str) -> None:
        self.metrics.chats_dropped.labels(*self._base(scenario)).inc()

    def client_rejected(self, result: ChatResult) -> None:
        base = self._base(result.scenario)
        self.metrics.chats_in_flight.labels(*base).dec()
        self.metrics.client_rejections.labels(*base).inc()

    def connection_attempt(self, scenario: str, result: str) -> None:
        self.metrics.connections.labels(*self._base(scenario), _known(result, CONNECTION_RESULTS, "protocol_error")).inc()

    def reconnect(self, scenario: str, result: str) -> None:
        self.metrics.reconnects.labels(*self._base(scenario), _known(result, RECONNECT_RESULTS, "lost")).inc()

    def run_finished(self, success: bool) -> None:
        now = self.clock()
        self.metrics.last_run_timestamp.labels(self.target, self.source).set(now)
        if success:
            self.metrics.last_success_timestamp.labels(self.target, self.source).set(now)


def _known(value: str, allowed: tuple[str, ...], fallback: str | None) -> str:
    """Keep label values to the contract's closed sets; an unknown value never becomes a new series."""
    if value in allowed:
        return value
    if fallback is None:
        raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
    return fallback
