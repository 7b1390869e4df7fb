"""Build the Grafana dashboard "chatprobe — agent chat events" (uid chatprobe-overview) with grafana-foundation-sdk.

Run `python -m dashboards.generate` to rewrite dashboards/chatprobe-overview.json; a test checks it is up to date.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    from grafana_foundation_sdk.builders import common as common_b
    from grafana_foundation_sdk.builders import dashboard as dash_b
    from grafana_foundation_sdk.builders import prometheus as prom_b
    from grafana_foundation_sdk.builders import stat as stat_b
    from grafana_foundation_sdk.builders import timeseries as ts_b
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models import dashboard as dash_m
except ModuleNotFoundError:
    # A maintainer's tool (the dev extra has it): a plain `pip install chatprobe` ships the dashboard it wrote.
    print("python -m dashboards.generate: error: it needs grafana-foundation-sdk, which is not installed: "
          "pip install 'chatprobe[dev]', or pip install grafana-foundation-sdk", file=sys.stderr, flush=True)
    raise SystemExit(2) from None

UID = "chatprobe-overview"
TITLE = "chatprobe — agent chat events"
OUTPUT = Path(__file__).with_name(f"{UID}.json")

DATASOURCE = dash_m.DataSourceRef(type_val="prometheus", uid="${datasource}")
# Every chat panel filters on the three common labels (docs/metrics.md#labels).
SEL = 'target=~"$target",scenario=~"$scenario",source=~"$source"'
RUN_SEL = 'target=~"$target",source=~"$source"'
RATE = "$__rate_interval"
# le is "2.0" from client_python and Prometheus 3, "2" from Go clients.
LE_2S = 'le=~"2|2\\\\.0"'
# As every rate() of the rules: Pushgateway groups (a push_time_seconds of the same job, target and scenario) hold
# one run's totals, replaced by the next run, so rate() over them reads increases and resets that never happened;
# and blackbox-style /probe scrapes of the monitor (a probe_success of the same job and instance): a fresh registry
# each scrape, whose counters flip between 0 and 1.
NOT_PUSHED = "unless on (job, target, scenario) push_time_seconds unless on (job, instance) probe_success"

MISSING_EVENTS_LIMIT = 0.05  # ChatEventsMissing: more than 5% of chats
FIRST_EVENT_LIMIT_SECONDS = 2.0
FIRST_EVENT_OBJECTIVE = 0.95  # ChatTimeToFirstEventSlow: fewer than 95% within 2 s
PROBE_STALE_SECONDS = 300  # ChatProbeDown
# Panels added after the first layout, by title: their ids follow every first-layout id, in this order.
LATER_PANELS = ("Dropped chats (open model)", "Client rejections (proxy)", "Proxy client connections",
                "Proxy refused connections by reason", "Chats the proxy could not judge")


def _query(expr: str, legend: str, ref: str = "A") -> prom_b.Dataquery:
    return prom_b.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


def _thresholds(*steps: tuple[float | None, str]) -> dash_b.ThresholdsConfig:
    return (
        dash_b.ThresholdsConfig()
        .mode(dash_m.ThresholdsMode.ABSOLUTE)
        .steps([dash_m.Threshold(value=v, color=c) for v, c in steps])
    )


def _timeseries(
    title: str,
    description: str,
    queries: list[prom_b.Dataquery],
    *,
    unit: str = "short",
    line: float | None = None,
    bars: bool = False,
    stacked: bool = False,
    width: int = 12,
    max_value: float | None = None,
    low_is_bad: bool = False,
) -> ts_b.Panel:
    panel = (
        ts_b.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .span(width)
        .height(8)
        .legend(
            common_b.VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
        )
    )
    if max_value is not None:
        panel = panel.max(max_value)
    for q in queries:
        panel = panel.with_target(q)
    if bars:
        panel = panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(80)
    if stacked:
        panel = panel.stacking(common_b.StackingConfig().mode(common.StackingMode.NORMAL))
    if line is not None:
        # The alert's line, drawn on the graph: red on the side where the alert fires.
        steps = ((None, "red"), (line, "green")) if low_is_bad else ((None, "green"), (line, "red"))
        panel = panel.thresholds(_thresholds(*steps)).thresholds_style(
            common_b.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.DASHED)
        )
    return panel


def _stat(
    title: str, description: str, query: prom_b.Dataquery, *, unit: str, steps: list[tuple[float | None, str]],
    width: int = 6,
) -> stat_b.Panel:
    return (
        stat_b.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(query)
        .unit(unit)
        .span(width)
        .height(8)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .thresholds(_thresholds(*steps))
    )


def _variables() -> list:
    def label_variable(name: str, label: str, query: str) -> dash_b.QueryVariable:
        return (
            dash_b.QueryVariable(name)
            .label(label)
            .datasource(DATASOURCE)
            .query(query)
            .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dash_m.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(dash_m.VariableOption(selected=True, text="All", value="$__all"))
        )

    return [
        dash_b.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        label_variable("target", "Target", "label_values(chatprobe_chats_total, target)"),
        label_variable("scenario", "Scenario", 'label_values(chatprobe_chats_total{target=~"$target"}, scenario)'),
        label_variable("source", "Source", "label_values(chatprobe_chats_total, source)"),
    ]


def _quantiles(metric: str, by: str = "", legend_prefix: str = "") -> list[prom_b.Dataquery]:
    group = f"{by}, le" if by else "le"
    return [
        _query(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[{RATE}])))",
            f"{legend_prefix}p{round(q * 100)}",
            ref,
        )
        for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]


def build() -> dash_m.Dashboard:
    chats_row = [
        _timeseries(
            "Chats by outcome",
            "Chats that reached a verdict, per second: passed, failed (a rule was broken), incomplete (no terminal "
            "event by the deadline, or connection lost), error (could not connect or send).",
            [_query(f"sum by (outcome) (rate(chatprobe_chats_total{{{SEL}}}[{RATE}]))", "{{outcome}}")],
            unit="reqps", stacked=True,
        ),
        _timeseries(
            "Missing-events ratio",
            "Share of chats that ended without a role their scenario requires, or as `error` (could not connect "
            "or send: no event at all); ChatEventsMissing pages above the 5% line (over 5 m, for 5 m, with at "
            "least 4 chats in 5 m; docs/metrics.md#chateventsmissing). As the alert's ratio, it leaves out runs pushed "
            "to a Pushgateway (batch totals, not rates).",
            [_query(
                f"sum by (target, scenario) (\n  (rate(chatprobe_chats_missing_events_total{{{SEL}}}[5m]) or "
                f'rate(chatprobe_chats_total{{{SEL},outcome="error"}}[5m]))\n  {NOT_PUSHED}\n)\n/\n'
                f"sum by (target, scenario) (\n  rate(chatprobe_chats_total{{{SEL}}}[5m]) {NOT_PUSHED}\n)",
                "{{target}} {{scenario}}",
            )],
            unit="percentunit", line=MISSING_EVENTS_LIMIT,
        ),
        _timeseries(
            "Which events are missing",
            "Required roles missing from finished chats, per second, by role.",
            [_query(f"sum by (event) (rate(chatprobe_missing_events_total{{{SEL}}}[{RATE}]))", "{{event}}")],
            unit="reqps", bars=True, stacked=True,
        ),
        _timeseries(
            "Chats in flight",
            "Chats started and not yet judged. Started = judged (all outcomes) + in flight (+ the proxy's client "
            "rejections and the chats it could not judge).",
            [_query(f"sum by (target, scenario) (chatprobe_chats_in_flight{{{SEL}}})", "{{target}} {{scenario}}")],
        ),
        _timeseries(
            "Dropped chats (open model)",
            "Chats an arrival-rate load shape had due while max_in_flight chats were in flight, so never started "
            "(like k6's dropped_iterations), per second; not in \"Chats by outcome\". A rising rate means the load "
            "generator's cap, not the server, set the load (docs/metrics.md#metrics).",
            [_query(f"sum by (target, scenario) (rate(chatprobe_chats_dropped_total{{{SEL}}}[{RATE}]))",
                    "{{target}} {{scenario}}")],
            unit="reqps",
        ),
        _timeseries(
            "Client rejections (proxy)",
            "Chats whose message the server rejected because the user's client sent something invalid, per "
            "second: the client's fault, so not in \"Chats by outcome\" and no alert (docs/metrics.md#metrics).",
            [_query(f"sum by (target, scenario) (rate(chatprobe_client_rejections_total{{{SEL}}}[{RATE}]))",
                    "{{target}} {{scenario}}")],
            unit="reqps",
        ),
        _timeseries(
            "Chats the proxy could not judge",
            "Chats the proxy gave no verdict, per second, by reason: proxy_stopped (it stopped, a deploy or a "
            "restart, with them in flight or kept for their user's resume) and parking_full (the server cut them and "
            "the proxy had no room to keep them for a resume). Not in \"Chats by outcome\" nor in any ratio; "
            "ChatsUnjudged opens a ticket when parking_full stays above 5% of the chats (docs/metrics.md#alerts).",
            [_query(f"sum by (reason) (rate(chatprobe_chats_unjudged_total{{{SEL}}}[{RATE}]))", "{{reason}}")],
            unit="reqps", stacked=True,
        ),
    ]
    timing_row = [
        _timeseries(
            "Time to first event",
            "Time from sending the message to the first event (p50, p95, p99); the line is the 2 s limit of R9.",
            _quantiles("chatprobe_time_to_first_event_seconds"),
            unit="s", line=FIRST_EVENT_LIMIT_SECONDS, width=8,
        ),
        _timeseries(
            "Share of chats with a first event within 2 s",
            "Of the chats that received a first event, the share that received it within 2 s: the le=2 bucket over "
            "the _count of the same histogram, so it never exceeds 100%. Green at or above the 95% objective, red "
            "below it. ChatTimeToFirstEventSlow (docs/metrics.md#alerts) also counts chats that saw no event at all "
            "as slow; those show as incomplete in \"Chats by outcome\".",
            [_query(
                "clamp_max(\n"
                f"  sum by (target, scenario) (rate(chatprobe_time_to_first_event_seconds_bucket{{{SEL},{LE_2S}}}[5m]))"
                f"\n  /\n  sum by (target, scenario) (rate(chatprobe_time_to_first_event_seconds_count{{{SEL}}}[5m])),"
                "\n  1\n)",
                "{{target}} {{scenario}}",
            )],
            unit="percentunit", line=FIRST_EVENT_OBJECTIVE, low_is_bad=True, max_value=1, width=8,
        ),
        _timeseries(
            "Chat duration",
            "Time from sending the message to the terminal event (p50, p95, p99).",
            _quantiles("chatprobe_chat_duration_seconds"),
            unit="s", width=8,
        ),
        _timeseries(
            "Event delay per role (p95)",
            "Time from sending the message to each role's first arrival, 95th percentile per role: the event "
            "timing distribution.",
            [_query(
                f"histogram_quantile(0.95, sum by (event, le) "
                f"(rate(chatprobe_event_delay_seconds_bucket{{{SEL}}}[{RATE}])))",
                "{{event}}",
            )],
            unit="s", width=12,
        ),
        _timeseries(
            "Events received by role",
            "Events received per second, by canonical role.",
            [_query(f"sum by (event) (rate(chatprobe_events_total{{{SEL}}}[{RATE}]))", "{{event}}")],
            unit="reqps", width=12,
        ),
    ]
    r8 = f'chatprobe_rule_violations_total{{{SEL},rule="R8"}}'
    rules_row = [
        _timeseries(
            "Rule violations by rule",
            "Violations of the protocol rules R1–R13 (docs/protocol.md#rules) per interval.",
            [_query(f"sum by (rule) (increase(chatprobe_rule_violations_total{{{SEL}}}[{RATE}]))", "{{rule}}")],
            bars=True, stacked=True, width=18,
        ),
        _stat(
            "Isolation breaches (R8)",
            "Events of a run this client did not start (R8, docs/protocol.md#r8-isolation), over the selected time "
            "range: cross-talk between users, a security failure. ChatEventIsolationBreach is critical on the first one. "
            "A series that first appeared within the range counts its whole value, as the alert does (a breach in the "
            "monitor's first probe round, before Prometheus's first scrape; a pushed run), which increase() misses.",
            _query(
                f"sum(\n  (increase({r8}[$__range]) and {r8} offset $__range)\n  or\n"
                f"  (max_over_time({r8}[$__range]) unless {r8} offset $__range)\n) or vector(0)",
                "R8",
            ),
            unit="short", steps=[(None, "green"), (1, "red")],
        ),
    ]
    connections_row = [
        _timeseries(
            "Connections by result",
            "Connection attempts per second: ok, refused, auth_failed, timeout, tls_error, protocol_error.",
            [_query(f"sum by (result) (rate(chatprobe_connections_total{{{SEL}}}[{RATE}]))", "{{result}}")],
            unit="reqps", stacked=True, width=8,
        ),
        _timeseries(
            "Reconnects and abandoned chats",
            "Reconnections (resumed: the run continued; lost: it could not), the connections opened to reconnect "
            "(each retry after a backoff included: connected or failed; failed attempts with no lost reconnects are "
            "a server restarting that clients got back to) and, from the proxy, chats the user left before the "
            "terminal event.",
            [
                _query(f"sum by (result) (rate(chatprobe_reconnects_total{{{SEL}}}[{RATE}]))", "reconnect {{result}}"),
                _query(f"sum(rate(chatprobe_chats_abandoned_total{{{SEL}}}[{RATE}]))", "abandoned", "B"),
                _query(f"sum by (result) (rate(chatprobe_reconnect_attempts_total{{{SEL}}}[{RATE}]))",
                       "reconnect attempt {{result}}", "C"),
            ],
            unit="reqps", width=8,
        ),
        _timeseries(
            "Probe freshness",
            "Seconds since the last run (and the last successful run) finished; ChatProbeDown pages when the "
            "synthetic probe's last run is more than 5 minutes old for 5 minutes.",
            [
                _query(
                    f"time() - max by (target, source) (chatprobe_last_run_timestamp_seconds{{{RUN_SEL}}})",
                    "last run {{target}} {{source}}",
                ),
                _query(
                    f"time() - max by (target, source) (chatprobe_last_success_timestamp_seconds{{{RUN_SEL}}})",
                    "last success {{target}} {{source}}",
                    "B",
                ),
            ],
            unit="s", line=PROBE_STALE_SECONDS, width=8,
        ),
        # The proxy's front door: per target and source only (a connection has no scenario yet).
        _timeseries(
            "Proxy client connections",
            "Client connections `chatprobe proxy` holds open now (docs/metrics.md#metrics).",
            [_query(f"sum by (target, source) (chatprobe_proxy_connections{{{RUN_SEL}}})",
                    "{{target}} {{source}}")],
            width=12,
        ),
        _timeseries(
            "Proxy refused connections by reason",
            "Client connections `chatprobe proxy` refused per second: bad_request (4xx), over_capacity and "
            "per_address_limit (503) (docs/metrics.md#metrics).",
            [_query(f"sum by (reason) (rate(chatprobe_proxy_refused_connections_total{{{RUN_SEL}}}[{RATE}]))",
                    "{{reason}}")],
            unit="reqps", bars=True, stacked=True, width=12,
        ),
    ]

    builder = (
        dash_b.Dashboard(TITLE)
        .uid(UID)
        .description("Agent chat servers as chatprobe sees them: verdicts, missing events, timing, rule "
                     "violations, connections and probe health. Runbook: docs/runbook.md; metrics and alerts: "
                     "docs/metrics.md.")
        .tags(["chatprobe", "agents", "websocket"])
        .editable()
        .time("now-6h", "now")
        .refresh("1m")
        .timezone("browser")
        .tooltip(dash_m.DashboardCursorSync.CROSSHAIR)
        .variables(_variables())
    )
    rows = (
        ("Chats", chats_row),
        ("Timing", timing_row),
        ("Rule violations", rules_row),
        ("Connections and probe", connections_row),
    )
    # Fixed, unique ids keep panel links (viewPanel=…) stable across regenerations: the first layout's rows and
    # panels are numbered in order, panels added later take the next ids in the order of LATER_PANELS.
    ids: dict[str, int] = {}
    for title, panels in rows:
        ids[f"row {title}"] = len(ids) + 1
        for panel in panels:
            name = panel.build().title or ""
            if name not in LATER_PANELS:
                ids[name] = len(ids) + 1
    first_layout = len(ids)
    ids |= {name: first_layout + i + 1 for i, name in enumerate(LATER_PANELS)}
    for title, panels in rows:
        builder = builder.with_row(dash_b.Row(title).id(ids[f"row {title}"]))
        for panel in panels:
            builder = builder.with_panel(panel.id(ids[panel.build().title or ""]))  # type: ignore[attr-defined]
    return builder.build()


def render() -> str:
    """The dashboard JSON exactly as committed."""
    return json.dumps(build(), cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.generate",
                                     description="Write the Grafana dashboard chatprobe-overview as JSON.")
    parser.add_argument("out", nargs="?", type=Path, default=OUTPUT, metavar="FILE",
                        help="where to write it (default dashboards/chatprobe-overview.json)")
    out = parser.parse_args(sys.argv[1:] if argv is None else argv).out
    out.write_text(render(), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
