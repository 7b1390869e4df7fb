"""The committed Grafana dashboard is what the generator builds, and it only queries metrics that exist."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from dashboards import generate
from monitors.metrics import metric_names

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "chatprobe-overview.json"
RULES = ROOT / "monitors" / "rules" / "chatprobe.rules.yml"

# Series the Pushgateway itself exposes per group; the rules use it to tell pushed batch runs from the monitor.
EXTERNAL = {"push_time_seconds"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
            "group_right", "inf", "nan", "Inf", "NaN"}


def promql_metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (not functions, keywords, labels or strings)."""
    e = re.sub(r"#[^\n]*", "", expr)
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', e)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    names = set()
    for m in re.finditer(r"(?<![\w.:$])[A-Za-z_:][\w:]*", e):
        if e[m.end():].lstrip().startswith("(") or m.group() in KEYWORDS:
            continue
        names.add(m.group())
    return names


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def _known_names() -> set[str]:
    return metric_names() | {r["record"] for r in _rules() if "record" in r}


def _panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p["type"] != "row"]


def _exprs(board: dict) -> list[str]:
    return [t["expr"] for p in _panels(board) for t in p.get("targets", [])]


@pytest.fixture(scope="module")
def board() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def test_committed_json_is_what_the_generator_builds():
    assert DASHBOARD.read_text(encoding="utf-8") == generate.render(), (
        "dashboards/chatprobe-overview.json is stale: run `python -m dashboards.generate`"
    )


def test_the_name_extractor_sees_metrics_and_only_metrics():
    expr = ('histogram_quantile(0.95, sum by (le, event) (rate(chatprobe_x_bucket{le=~"2|2\\\\.0",a="b c"}[5m])))'
            ' / on (target) group_left sum(x:y:z offset 5m) > bool 0.5 or vector(1) and time() - up')
    assert promql_metric_names(expr) == {"chatprobe_x_bucket", "x:y:z", "up"}


def test_every_dashboard_query_uses_only_defined_metrics(board):
    known = _known_names()
    used = set()
    for expr in _exprs(board):
        names = promql_metric_names(expr)
        assert names, expr
        assert names <= known, f"unknown metric in {expr!r}: {names - known}"
        used |= names
    # every metric of METRICS.md (except the /probe ones) has a panel
    for name in ("chatprobe_chats_total", "chatprobe_chats_missing_events_total", "chatprobe_missing_events_total",
                 "chatprobe_events_total", "chatprobe_rule_violations_total",
                 "chatprobe_time_to_first_event_seconds_bucket", "chatprobe_chat_duration_seconds_bucket",
                 "chatprobe_event_delay_seconds_bucket", "chatprobe_connections_total", "chatprobe_reconnects_total",
                 "chatprobe_chats_abandoned_total", "chatprobe_chats_in_flight",
                 "chatprobe_last_run_timestamp_seconds", "chatprobe_last_success_timestamp_seconds"):
        assert name in used, name


def test_every_rule_expression_uses_only_defined_metrics():
    known = _known_names()
    for rule in _rules():
        names = promql_metric_names(rule["expr"])
        assert names <= known | EXTERNAL, f"{rule.get('record') or rule.get('alert')}: unknown {names - known}"


def test_dashboard_identity_variables_and_filters(board):
    assert board["uid"] == "chatprobe-overview"
    assert board["title"] == "chatprobe — agent chat events"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"datasource", "target", "scenario", "source"}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _panels(board):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert 'target=~"$target"' in expr and 'source=~"$source"' in expr, (panel["title"], expr)
            if "timestamp" not in expr:  # run freshness is per target and source, not per scenario
                assert 'scenario=~"$scenario"' in expr, (panel["title"], expr)


def test_alert_lines_are_drawn_where_the_alerts_are(board):
    def red_line(title: str) -> float:
        (panel,) = [p for p in _panels(board) if p["title"] == title]
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        return [s["value"] for s in steps if s["color"] == "red"][0]

    assert red_line("Missing-events ratio") == 0.05
    assert red_line("Time to first event") == 2
    assert red_line("Share of chats with a first event within 2 s") == 0.95
    assert red_line("Probe freshness") == 300
    titles = {p["title"] for p in _panels(board)}
    assert {"Chats by outcome", "Which events are missing", "Event delay per role (p95)", "Rule violations by rule",
            "Isolation breaches (R8)", "Connections by result", "Reconnects and abandoned chats",
            "Chats in flight"} <= titles
    share = [p for p in _panels(board) if p["title"].startswith("Share of chats")][0]["targets"][0]["expr"]
    assert 'le=~"2|2\\\\.0"' in share
