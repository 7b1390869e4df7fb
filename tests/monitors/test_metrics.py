"""The metrics sink: conservation of chats, the label contract, pre-initialised series, target_label."""
from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from harness.checker import ChatResult
from harness.events import Event, Outcome, Role, Rule, Violation
from monitors import metrics as metrics_module
from monitors.metrics import (
    MAX_SCENARIOS,
    OVERFLOW_SCENARIO,
    TIME_TO_FIRST_EVENT_BUCKETS,
    ChatMetrics,
    MetricsSink,
    default_metrics,
    metric_names,
    target_label,
)

RUN_ID = "run-7f3a9c2e-5b1d-4e8f-a0c6-123456789abc"
CHAT_ID = "chat-0c1d2e3f-4a5b-6c7d-8e9f-abcdef012345"
THREAD_ID = "thread-99aa88bb77cc"
USER_ID = "user-4242-secret"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl"


def _sink(target: str = "agent:443", source: str = "synthetic", now: float = 1_700_000_000.0):
    reg = CollectorRegistry()
    m = ChatMetrics(reg)
    return reg, MetricsSink(m, target, source, clock=lambda: now)


def _samples(reg: CollectorRegistry) -> list:
    text = generate_latest(reg).decode()
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def _value(reg: CollectorRegistry, name: str, **labels: str) -> float:
    """Sum of the samples named `name` whose labels include `labels`."""
    return sum(
        s.value for s in _samples(reg) if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _event(role: Role | None, t: float, wire: str | None = None) -> Event:
    return Event(
        role=role, wire_type=wire or (role.value if role else "TEXT_MESSAGE_START"), received_at=t,
        run_id=RUN_ID, thread_id=THREAD_ID, user_id=USER_ID, message_id="msg-" + CHAT_ID, seq=None,
        tool_call_id="call-" + RUN_ID,
    )


def _result(
    outcome: Outcome = Outcome.PASSED,
    *,
    scenario: str = "basic",
    missing: tuple[Role, ...] = (),
    rules: tuple[str, ...] = (),
    ttfe: float | None = 0.4,
    duration: float | None = 3.0,
) -> ChatResult:
    sent = 100.0
    roles = [r for r in (Role.AGENT_STARTED, Role.AGENT_THINKING, Role.TOOL_EXECUTING, Role.TOOL_COMPLETED,
                         Role.AGENT_COMPLETED) if r not in missing]
    events = [_event(r, sent + 0.4 + i * 0.5) for i, r in enumerate(roles)]
    events.insert(1, _event(None, sent + 0.5))  # a wire type with no role: never counted
    return ChatResult(
        chat_id=CHAT_ID, scenario=scenario, outcome=outcome,
        violations=[Violation(Rule(r), f"broken in run {RUN_ID} token {TOKEN}", 0) for r in rules],
        missing=list(missing), events=events, sent_at=sent, time_to_first_event=ttfe, duration=duration,
        event_delays={e.role: e.received_at - sent for e in events if e.role is not None},
        run_id=RUN_ID, thread_id=THREAD_ID, error=f"token={TOKEN}", error_kind="auth_failed",
        note=f"chat {CHAT_ID}",
        events_received=len(events),
        event_counts={r: sum(1 for e in events if e.role is r) for r in roles},
    )


def test_conservation_started_equals_outcomes_plus_in_flight():
    reg, sink = _sink()
    plan = [
        ("basic", Outcome.PASSED), ("basic", Outcome.FAILED), ("basic", Outcome.INCOMPLETE),
        ("basic", Outcome.ERROR), ("tools", Outcome.PASSED), ("tools", Outcome.PASSED),
    ]
    started = {"basic": 0, "tools": 0}
    for scenario, _ in plan:
        sink.chat_started(scenario)
        started[scenario] += 1
    # three still in flight: one per scenario never judged, plus one more started later
    for scenario in ("basic", "tools", "tools"):
        sink.chat_started(scenario)
        started[scenario] += 1
    for scenario, outcome in plan:
        sink.chat_finished(_result(outcome, scenario=scenario))

    for scenario, n in started.items():
        judged = _value(reg, "chatprobe_chats_total", scenario=scenario)
        in_flight = _value(reg, "chatprobe_chats_in_flight", scenario=scenario)
        assert judged + in_flight == n, scenario
    assert _value(reg, "chatprobe_chats_in_flight", scenario="basic") == 1
    assert _value(reg, "chatprobe_chats_in_flight", scenario="tools") == 2
    for outcome in ("passed", "failed", "incomplete", "error"):
        assert _value(reg, "chatprobe_chats_total", scenario="basic", outcome=outcome) == 1


def test_the_proxys_conservation_counts_its_client_rejections_and_the_chats_it_could_not_judge():
    """started = outcomes + in flight + client rejections + unjudged (by reason), and an unjudged chat is in no
    outcome, missing-events count or histogram: no ratio's numerator or denominator. FAILED before
    chatprobe_chats_unjudged_total existed (the sink had no chat_unjudged)."""
    reg, sink = _sink(source="live")
    for _ in range(7):
        sink.chat_started("live")
    sink.chat_finished(_result(Outcome.PASSED, scenario="live"))
    sink.chat_finished(_result(Outcome.INCOMPLETE, scenario="live", missing=(Role.AGENT_COMPLETED,)))
    sink.client_rejected(_result(Outcome.ERROR, scenario="live"))
    sink.chat_unjudged("live", "proxy_stopped")
    sink.chat_unjudged("live", "proxy_stopped")
    sink.chat_unjudged("live", "parking_full")
    with pytest.raises(ValueError):
        sink.chat_unjudged("live", "a-reason-of-its-own")  # a closed set: never a new series, nor a chat lost
    judged = _value(reg, "chatprobe_chats_total", scenario="live")
    in_flight = _value(reg, "chatprobe_chats_in_flight", scenario="live")
    rejected = _value(reg, "chatprobe_client_rejections_total", scenario="live")
    unjudged = _value(reg, "chatprobe_chats_unjudged_total", scenario="live")
    assert (judged, in_flight, rejected, unjudged) == (2, 1, 1, 3)
    assert judged + in_flight + rejected + unjudged == 7
    assert _value(reg, "chatprobe_chats_unjudged_total", reason="proxy_stopped") == 2
    assert _value(reg, "chatprobe_chats_unjudged_total", reason="parking_full") == 1
    assert _value(reg, "chatprobe_chats_missing_events_total") == 1
    assert _value(reg, "chatprobe_time_to_first_event_seconds_count") == 2
    reasons = {s.labels["reason"] for s in _samples(reg) if s.name == "chatprobe_chats_unjudged_total"}
    assert reasons == {"proxy_stopped", "parking_full"}


def test_chat_started_touches_only_in_flight():
    reg, sink = _sink()
    sink.chat_started("basic")
    nonzero = {(s.name, tuple(sorted(s.labels.items()))) for s in _samples(reg) if s.value}
    assert nonzero == {("chatprobe_chats_in_flight",
                        (("scenario", "basic"), ("source", "synthetic"), ("target", "agent:443")))}


def test_chat_finished_records_every_part_of_the_verdict():
    reg, sink = _sink()
    sink.chat_started("basic")
    sink.event_received("basic", _event(Role.AGENT_STARTED, 1.0))  # a no-op: counted from the verdict
    sink.chat_finished(_result(Outcome.FAILED, missing=(Role.TOOL_COMPLETED, Role.AGENT_THINKING),
                               rules=("R2", "R8", "R8"), ttfe=2.5, duration=7.0))
    def v(name, **kw):
        return _value(reg, name, scenario="basic", **kw)

    assert v("chatprobe_chats_total", outcome="failed") == 1
    assert v("chatprobe_chats_missing_events_total") == 1
    assert v("chatprobe_missing_events_total", event="tool_completed") == 1
    assert v("chatprobe_missing_events_total", event="agent_thinking") == 1
    assert v("chatprobe_missing_events_total", event="agent_started") == 0
    assert v("chatprobe_events_total") == 3  # the role-less event and the missing roles are not counted
    assert v("chatprobe_events_total", event="agent_started") == 1
    assert v("chatprobe_events_total", event="tool_completed") == 0
    assert v("chatprobe_rule_violations_total", rule="R8") == 2
    assert v("chatprobe_rule_violations_total", rule="R2") == 1
    assert v("chatprobe_time_to_first_event_seconds_count") == 1
    assert v("chatprobe_time_to_first_event_seconds_bucket", le="2.0") == 0
    assert v("chatprobe_time_to_first_event_seconds_bucket", le="3.0") == 1
    assert v("chatprobe_chat_duration_seconds_sum") == 7.0
    assert v("chatprobe_event_delay_seconds_count", event="agent_started") == 1
    assert v("chatprobe_event_delay_seconds_count", event="agent_completed") == 1
    assert v("chatprobe_event_delay_seconds_count", event="tool_completed") == 0
    assert v("chatprobe_chats_in_flight") == 0


def test_chat_without_first_event_or_terminal_observes_no_time():
    reg, sink = _sink()
    sink.chat_started("basic")
    sink.chat_finished(_result(Outcome.ERROR, ttfe=None, duration=None))
    assert _value(reg, "chatprobe_time_to_first_event_seconds_count") == 0
    assert _value(reg, "chatprobe_chat_duration_seconds_count") == 0
    assert _value(reg, "chatprobe_chats_total", outcome="error") == 1


def test_connections_reconnects_abandoned_and_freshness():
    reg, sink = _sink(now=1234.5)
    sink.connection_attempt("basic", "ok")
    sink.connection_attempt("basic", "auth_failed")
    sink.connection_attempt("basic", "auth_failed")
    sink.reconnect("basic", "resumed")
    sink.chat_abandoned("basic")
    assert _value(reg, "chatprobe_connections_total", result="auth_failed") == 2
    assert _value(reg, "chatprobe_connections_total", result="ok") == 1
    assert _value(reg, "chatprobe_reconnects_total", result="resumed") == 1
    assert _value(reg, "chatprobe_reconnects_total", result="lost") == 0
    assert _value(reg, "chatprobe_chats_abandoned_total") == 1

    sink.run_finished(False)
    assert _value(reg, "chatprobe_last_run_timestamp_seconds") == 1234.5
    assert not [s for s in _samples(reg) if s.name == "chatprobe_last_success_timestamp_seconds"]
    sink.clock = lambda: 2000.0
    sink.run_finished(True)
    assert _value(reg, "chatprobe_last_run_timestamp_seconds", target="agent:443", source="synthetic") == 2000.0
    assert _value(reg, "chatprobe_last_success_timestamp_seconds") == 2000.0


def test_label_combinations_exist_from_zero_on_first_use():
    reg, sink = _sink(source="live")
    sink.chat_abandoned("basic")
    by_name: dict[str, set] = {}
    for s in _samples(reg):
        if s.labels.get("scenario") == "basic":
            assert s.labels["source"] == "live"
            by_name.setdefault(s.name, set()).add(
                s.labels.get("outcome") or s.labels.get("result") or s.labels.get("rule") or s.labels.get("event")
            )
    assert by_name["chatprobe_chats_total"] == {"passed", "failed", "incomplete", "error"}
    assert by_name["chatprobe_connections_total"] == {
        "ok", "refused", "auth_failed", "timeout", "tls_error", "protocol_error"}
    assert by_name["chatprobe_reconnects_total"] == {"resumed", "lost"}
    assert by_name["chatprobe_reconnect_attempts_total"] == {"connected", "failed"}
    unjudged = {s.labels["reason"] for s in _samples(reg) if s.name == "chatprobe_chats_unjudged_total"}
    assert unjudged == {"proxy_stopped", "parking_full"}
    assert by_name["chatprobe_rule_violations_total"] == {f"R{i}" for i in range(1, 14)}
    roles = {r.value for r in Role}
    assert by_name["chatprobe_missing_events_total"] == roles
    assert by_name["chatprobe_events_total"] == roles
    assert by_name["chatprobe_event_delay_seconds_count"] == roles
    for name in ("chatprobe_chats_missing_events_total", "chatprobe_chats_in_flight",
                 "chatprobe_time_to_first_event_seconds_count", "chatprobe_chat_duration_seconds_count"):
        assert name in by_name
    buckets = {s.labels["le"] for s in _samples(reg) if s.name == "chatprobe_time_to_first_event_seconds_bucket"}
    assert "2.0" in buckets


def test_cardinality_is_bounded():
    reg, sink = _sink()
    for i in range(MAX_SCENARIOS + 20):
        sink.chat_started(f"scenario-{i}")
    scenarios = {s.labels["scenario"] for s in _samples(reg) if "scenario" in s.labels}
    assert len(scenarios) == MAX_SCENARIOS + 1
    assert OVERFLOW_SCENARIO in scenarios
    sink.connection_attempt("basic", "something-new")
    sink.reconnect("basic", "weird")
    results = {s.labels["result"] for s in _samples(reg) if s.name == "chatprobe_connections_total"}
    assert results == {"ok", "refused", "auth_failed", "timeout", "tls_error", "protocol_error"}
    with pytest.raises(ValueError):
        sink.chat_finished(_result(rules=("R99",)))


def test_no_label_value_carries_a_token_or_an_id():
    reg = CollectorRegistry()
    m = ChatMetrics(reg)
    url = f"wss://bot:{TOKEN}@Agent.Example.com:8443/ws/{USER_ID}?token={TOKEN}&run={RUN_ID}#x"
    sinks = [MetricsSink(m, url, "synthetic"), MetricsSink(m, "staging", "live")]
    for sink in sinks:
        for outcome in Outcome:
            sink.chat_started("basic")
            sink.connection_attempt("basic", "ok")
            sink.reconnect("basic", "resumed")
            sink.chat_finished(_result(outcome, missing=(Role.TOOL_COMPLETED,), rules=("R8", "R2")))
        sink.chat_abandoned("basic")
        sink.run_finished(True)
    text = generate_latest(reg).decode()
    for secret in (TOKEN, RUN_ID, CHAT_ID, THREAD_ID, USER_ID, "bot", "/ws", "token", "run-", "chat-", "msg-"):
        assert secret not in text
    values = {v for s in _samples(reg) for v in s.labels.values()}
    assert "agent.example.com:8443" in values
    for v in values:
        assert re.fullmatch(r"[A-Za-z0-9_.:+\-\[\]]{1,64}", v), v


@pytest.mark.parametrize(
    ("url", "label"),
    [
        ("wss://user:pw@Chat.Example.com/ws?token=abc", "chat.example.com:443"),
        ("ws://localhost:8765/ws/run-1", "localhost:8765"),
        ("http://10.0.0.7/x", "10.0.0.7:80"),
        ("https://[::1]:9000/path", "[::1]:9000"),
        ("agent.internal:7000", "agent.internal:7000"),
        ("ws://agent/#frag", "agent:80"),
    ],
)
def test_target_label_keeps_only_host_and_port(url, label):
    assert target_label(url) == label


def test_target_label_rejects_what_has_no_host():
    with pytest.raises(ValueError):
        target_label("wss:///only/a/path")


def test_sink_rejects_an_unknown_source():
    with pytest.raises(ValueError):
        _sink(source="prod")


def test_each_metric_is_declared_once_and_on_the_given_registry():
    reg_a, reg_b = CollectorRegistry(), CollectorRegistry()
    ChatMetrics(reg_a)
    ChatMetrics(reg_b, probe=True)  # a fresh registry per /probe: no duplicate-registration error
    names = metric_names()
    for name in ("chatprobe_chats_total", "chatprobe_chats_missing_events_total", "chatprobe_missing_events_total",
                 "chatprobe_events_total", "chatprobe_rule_violations_total",
                 "chatprobe_time_to_first_event_seconds_bucket", "chatprobe_chat_duration_seconds_bucket",
                 "chatprobe_event_delay_seconds_bucket", "chatprobe_connections_total", "chatprobe_reconnects_total",
                 "chatprobe_chats_abandoned_total", "chatprobe_chats_in_flight",
                 "chatprobe_last_run_timestamp_seconds", "chatprobe_last_success_timestamp_seconds",
                 "probe_success", "probe_duration_seconds"):
        assert name in names
    assert 2.0 in TIME_TO_FIRST_EVENT_BUCKETS


def _cumulative(reg: CollectorRegistry, name: str) -> dict[float, float]:
    return {float(s.labels["le"]): s.value for s in _samples(reg) if s.name == name and s.labels.get("scenario") == "basic"}


def test_first_event_buckets_resolve_milliseconds_and_split_at_2s():
    """Latencies of 4, 8, 20 and 40 ms land in four different buckets; 2.0 s exactly counts as within 2 s, 2.001 s
    does not; 59 s is still below the last finite bucket (not lumped into +Inf)."""
    reg, sink = _sink()
    observed = (0.004, 0.008, 0.02, 0.04, 2.0, 2.001, 59.0)
    for ttfe in observed:
        sink.chat_started("basic")
        sink.chat_finished(_result(ttfe=ttfe))
    le = _cumulative(reg, "chatprobe_time_to_first_event_seconds_bucket")
    assert min(TIME_TO_FIRST_EVENT_BUCKETS) <= 0.005
    small = [le[b] for b in sorted(le) if b <= 0.05]
    assert small[:4] == [1, 2, 3, 4], le  # one more observation per bucket: each one resolved
    assert le[2.0] == 5 and le[3.0] == 6
    assert max(TIME_TO_FIRST_EVENT_BUCKETS) >= 60 and le[60.0] == len(observed)


def test_chat_duration_buckets_span_agentsim_runs_to_the_default_deadline():
    reg, sink = _sink()
    for duration in (0.03, 0.08, 0.3, 59.0):
        sink.chat_started("basic")
        sink.chat_finished(_result(duration=duration))
    le = _cumulative(reg, "chatprobe_chat_duration_seconds_bucket")
    bounds = metrics_module.CHAT_DURATION_BUCKETS
    assert list(bounds) == sorted(set(bounds))
    assert le[0.05] == 1 and le[0.1] == 2 and le[0.5] == 3  # a fast run is not lumped with a 0.5 s one
    assert le[60.0] == 4 and max(bounds) >= 120  # the default 60 s deadline, with room for raised ones


def test_no_created_series_are_exported():
    """prometheus_client's `_created` series would double the series for nothing: they are off."""
    reg, sink = _sink()
    sink.chat_started("basic")
    sink.chat_finished(_result())
    text = generate_latest(reg).decode()
    assert "chatprobe_chats_total{" in text and "chatprobe_chat_duration_seconds_bucket{" in text
    assert "_created" not in text
    assert not {n for n in metric_names() if n.endswith("_created")}


def test_default_metrics_is_created_once_and_lazily(monkeypatch):
    reg = CollectorRegistry()
    monkeypatch.setattr(metrics_module, "REGISTRY", reg)
    monkeypatch.setattr(metrics_module, "_default", None)
    first = default_metrics()
    assert first is default_metrics()
    assert first.registry is reg
    MetricsSink(first, "t", "synthetic").chat_started("basic")
    assert "chatprobe_chats_in_flight" in generate_latest(reg).decode()
