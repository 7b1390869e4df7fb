"""The committed Grafana dashboard is what the generator builds, and it only queries metrics that exist."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
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


def _without_scenario() -> set[str]:
    """The metrics docs/metrics.md says carry "only `target`, `source`" (no scenario label), as the series names a
    query selects (a counter's with _total)."""
    names = set()
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 4 and cells[3].startswith("only `target`, `source`"):
            name = cells[1].strip("`")
            names.add(name if cells[2] != "counter" or name.endswith("_total") else f"{name}_total")
    return names


WITHOUT_SCENARIO = _without_scenario()


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
        assert names <= known | EXTERNAL, f"unknown metric in {expr!r}: {names - known}"
        used |= names
    # every metric of docs/metrics.md has a panel (a metric added without one is a series no one looks at: the
    # runbook sends an SRE to the dashboard for it)
    for name in _charted():
        assert name in used, f"{name}: no panel of the dashboard queries it"


# Metrics with no panel of their own, and why.
UNCHARTED = {
    "probe_success", "probe_duration_seconds",  # /probe's, which blackbox-style scrapes read (probe_success: in `unless`)
    # the first-event ratio's denominator correction, read by the recording rules only
    "chatprobe_chats_abandoned_before_first_event",
}


def _charted() -> set[str]:
    """The series a panel must query for each metric the code declares: a counter's _total, a histogram's _bucket,
    a gauge itself; from the metrics' registry, not a list kept by hand (chatprobe_reconnect_attempts_total came
    without a panel)."""
    from prometheus_client import CollectorRegistry

    from monitors.metrics import ChatMetrics

    out = set()
    for family in ChatMetrics(CollectorRegistry(), probe=True).registry.collect():
        if family.name not in UNCHARTED:
            out.add(family.name + {"counter": "_total", "histogram": "_bucket"}.get(family.type, ""))
    return out


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
            # Run freshness and the proxy's front door are per target and source, not per scenario.
            if not promql_metric_names(expr) <= WITHOUT_SCENARIO:
                assert 'scenario=~"$scenario"' in expr, (panel["title"], expr)


def test_alert_lines_are_drawn_where_the_alerts_are(board):
    def red_line(title: str) -> float:
        (panel,) = [p for p in _panels(board) if p["title"] == title]
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        return next(s["value"] for s in steps if s["color"] == "red")

    assert red_line("Missing-events ratio") == 0.05
    assert red_line("Time to first event") == 2
    assert red_line("Probe freshness") == 300
    titles = {p["title"] for p in _panels(board)}
    assert {"Chats by outcome", "Which events are missing", "Event delay per role (p95)", "Rule violations by rule",
            "Isolation breaches (R8)", "Connections by result", "Reconnects and abandoned chats",
            "Chats in flight"} <= titles


SHARE = "Share of chats with a first event within 2 s"


def _panel(board: dict, title: str) -> dict:
    (panel,) = [p for p in _panels(board) if p["title"] == title]
    return panel


def test_share_within_2s_is_green_above_the_objective_and_red_below(board):
    panel = _panel(board, SHARE)
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps == [{"color": "red", "value": None}, {"color": "green", "value": 0.95}]
    assert panel["fieldConfig"]["defaults"]["max"] == 1 and panel["fieldConfig"]["defaults"]["unit"] == "percentunit"


def _instant(expr: str, series: dict[str, str], tmp_path: Path) -> float:
    """Evaluate a dashboard query with Prometheus's own engine (promtool) at 10m over the given input series."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: run scripts/install-system-deps.sh (Debian package `prometheus`)"
    expr = (expr.replace('"$target"', '".*"').replace('"$scenario"', '".*"').replace('"$source"', '".*"')
            .replace("$__rate_interval", "5m"))
    (tmp_path / "none.rules.yml").write_text("groups: []\n")
    # promtool compares with the expected value: a sentinel that never matches makes it print the actual one.
    case = {
        "rule_files": ["none.rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series.items()],
            "promql_expr_test": [{"expr": expr, "eval_time": "10m",
                                  "exp_samples": [{"labels": "{}", "value": -12345}]}],
        }],
    }
    (tmp_path / "case.yml").write_text(yaml.safe_dump(case))
    proc = subprocess.run([promtool, "test", "rules", "case.yml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=False)  # it fails on purpose: the sentinel value
    got = re.findall(r"got:\s*\{[^}]*\}\s*(\S+)", proc.stdout + proc.stderr)
    assert len(got) == 1, proc.stdout + proc.stderr  # one series (target, scenario), one value
    return float(got[0])


LBL = 'target="agent:443",scenario="basic",source="synthetic"'


def test_share_within_2s_is_bucket_over_count_of_the_same_histogram(board, tmp_path):
    expr = _panel(board, SHARE)["targets"][0]["expr"]
    assert 'le=~"2|2\\\\.0"' in expr
    # 18 of 20 chats per second within 2 s; 30 more chats per second ended in `error` after a first event
    # (counted by chats_total, not by the histogram): the share is 90%, whatever chats_total says.
    series = {
        f'chatprobe_time_to_first_event_seconds_bucket{{{LBL},le="2.0"}}': "0+1080x20",
        f'chatprobe_time_to_first_event_seconds_bucket{{{LBL},le="+Inf"}}': "0+1200x20",
        f"chatprobe_time_to_first_event_seconds_count{{{LBL}}}": "0+1200x20",
        f'chatprobe_chats_total{{{LBL},outcome="passed"}}': "0+600x20",
    }
    assert _instant(expr, series, tmp_path) == pytest.approx(0.9)


def test_share_within_2s_never_exceeds_100_percent(board, tmp_path):
    """Even when the bucket series runs ahead of its _count (a scrape that caught one but not the other, a reset
    of one series), the panel shows at most 100%."""
    expr = _panel(board, SHARE)["targets"][0]["expr"]
    series = {
        f'chatprobe_time_to_first_event_seconds_bucket{{{LBL},le="2"}}': "0+1300x20",
        f"chatprobe_time_to_first_event_seconds_count{{{LBL}}}": "0+1200x20",
    }
    assert _instant(expr, series, tmp_path) == 1


# -- every panel's query run by Prometheus's own engine --

# One series of each metric the dashboard reads, with the labels docs/metrics.md gives it (a scenario unless the
# metric has "only target, source"): a query that names a metric or a label wrongly, or does not parse, finds nothing.
TS = 'target="agent:443",source="synthetic"'
SERIES = {
    f'chatprobe_chats_total{{{LBL},outcome="passed"}}': "0+60x20",
    f"chatprobe_chats_missing_events_total{{{LBL}}}": "0+6x20",
    f'chatprobe_missing_events_total{{{LBL},event="tool_completed"}}': "0+6x20",
    f'chatprobe_events_total{{{LBL},event="agent_started"}}': "0+60x20",
    f'chatprobe_rule_violations_total{{{LBL},rule="R8"}}': "0+1x20",
    **{f'chatprobe_{h}_bucket{{{LBL},{extra}le="{le}"}}': "0+60x20"
       for h, extra in (("time_to_first_event_seconds", ""), ("chat_duration_seconds", ""),
                        ("event_delay_seconds", 'event="agent_started",'))
       for le in ("2.0", "+Inf")},
    f"chatprobe_time_to_first_event_seconds_count{{{LBL}}}": "0+60x20",
    f'chatprobe_connections_total{{{LBL},result="ok"}}': "0+60x20",
    f'chatprobe_reconnects_total{{{LBL},result="resumed"}}': "0+6x20",
    f'chatprobe_reconnect_attempts_total{{{LBL},result="failed"}}': "0+6x20",
    f"chatprobe_chats_abandoned_total{{{LBL}}}": "0+6x20",
    f"chatprobe_chats_in_flight{{{LBL}}}": "3x20",
    f"chatprobe_chats_dropped_total{{{LBL}}}": "0+60x20",
    f"chatprobe_client_rejections_total{{{LBL}}}": "0+30x20",
    f'chatprobe_chats_unjudged_total{{{LBL},reason="proxy_stopped"}}': "0+6x20",
    f"chatprobe_last_run_timestamp_seconds{{{TS}}}": "0+60x20",
    f"chatprobe_last_success_timestamp_seconds{{{TS}}}": "0+60x20",
    f"chatprobe_proxy_connections{{{TS}}}": "7x20",
    f'chatprobe_proxy_refused_connections_total{{{TS},reason="over_capacity"}}': "0+60x20",
}


def _evaluate_all(exprs: list[str], series: dict[str, str], tmp_path: Path) -> list[str]:
    """What Prometheus's engine (promtool) gives for each query at 10m over the series: its samples as promtool
    prints them ("nil" for none), or "err: …"."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: run scripts/install-system-deps.sh (Debian package `prometheus`)"
    (tmp_path / "none.rules.yml").write_text("groups: []\n")
    tests = [{"expr": _concrete(e), "eval_time": "10m", "exp_samples": [{"labels": "{}", "value": -12345}]}
             for e in exprs]
    case = {"rule_files": ["none.rules.yml"], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": [{"series": k, "values": v} for k, v in series.items()],
                       "promql_expr_test": tests}]}
    (tmp_path / "all.yml").write_text(yaml.safe_dump(case))
    proc = subprocess.run([promtool, "test", "rules", "all.yml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=False)  # every query fails on purpose: the sentinel value
    out = proc.stdout + proc.stderr
    got = re.findall(r'expr: "(?:[^"\\]|\\.)*", time: [^,]+,(?:\s*(err: [^\n]*)|\s*exp: [^\n]*\n\s*got: ([^\n]*))', out)
    assert len(got) == len(exprs), out
    return [err or samples for err, samples in got]


def _concrete(expr: str) -> str:
    """The query as Grafana sends it with one target, scenario and source picked (not "All": `.*` would match a
    label the series lacks, hiding a filter on a label the metric does not have)."""
    return (expr.replace('"$target"', '"agent:443"').replace('"$scenario"', '"basic"')
            .replace('"$source"', '"synthetic"').replace("$__rate_interval", "5m").replace("$__range", "10m"))


def test_every_panel_query_runs_on_prometheus_and_finds_its_series(board, tmp_path):
    queries = [(p["title"], t["expr"]) for p in _panels(board) for t in p.get("targets", [])]
    # push_time_seconds and probe_success: only in `unless` (Pushgateway groups, /probe scrapes left out)
    used = set().union(*(promql_metric_names(e) for _, e in queries)) - EXTERNAL - {"probe_success"}
    assert used <= set(SERIES_NAMES := {k.split("{")[0] for k in SERIES}), used - SERIES_NAMES  # a series for each
    results = _evaluate_all([e for _, e in queries], SERIES, tmp_path)
    for (title, expr), got in zip(queries, results, strict=True):
        assert not got.startswith("err") and got != "nil", (title, expr, got)


@pytest.mark.parametrize(("title", "series", "value"), [
    ("Dropped chats (open model)", {f"chatprobe_chats_dropped_total{{{LBL}}}": "0+60x20"}, 1.0),
    ("Client rejections (proxy)", {f"chatprobe_client_rejections_total{{{LBL}}}": "0+30x20"}, 0.5),
    # By reason (one series here): 1/s the proxy had no room to keep for a resume.
    ("Chats the proxy could not judge",
     {f'chatprobe_chats_unjudged_total{{{LBL},reason="parking_full"}}': "0+60x20"}, 1.0),
    # Summed over the proxy's processes (a gauge per process, livesum) per target and source.
    ("Proxy client connections", {f'chatprobe_proxy_connections{{{TS},instance="a"}}': "7x20",
                                  f'chatprobe_proxy_connections{{{TS},instance="b"}}': "5x20"}, 12.0),
    # Per reason, over targets: 1/s refused at one, 2/s at another.
    ("Proxy refused connections by reason",
     {f'chatprobe_proxy_refused_connections_total{{{TS},reason="over_capacity"}}': "0+60x20",
      'chatprobe_proxy_refused_connections_total{target="b:443",source="synthetic",reason="over_capacity"}':
          "0+120x20"}, 3.0),
])
def test_the_front_door_and_load_generator_panels_show_their_rates(board, tmp_path, title, series, value):
    (expr,) = [t["expr"] for t in _panel(board, title)["targets"]]
    assert _instant(expr, series, tmp_path) == pytest.approx(value)


def test_missing_events_ratio_counts_error_chats_as_the_alert_does(board, tmp_path):
    """A target that refuses connections makes `error` chats, none missing a role: the panel shows them as the
    page's numerator does (monitors/rules/chatprobe.rules.yml), not a healthy 0%."""
    (expr,) = [t["expr"] for t in _panel(board, "Missing-events ratio")["targets"]]
    series = {
        f'chatprobe_chats_total{{{LBL},outcome="passed"}}': "0+48x20",
        f'chatprobe_chats_total{{{LBL},outcome="failed"}}': "0+6x20",
        f'chatprobe_chats_total{{{LBL},outcome="error"}}': "0+6x20",
        f"chatprobe_chats_missing_events_total{{{LBL}}}": "0+6x20",
    }
    assert _instant(expr, series, tmp_path) == pytest.approx(0.2)


def test_missing_events_ratio_leaves_out_pushgateway_groups_as_the_rule_does(board, tmp_path):
    """A CI run pushed to a Pushgateway for the same target and scenario is replaced by the next run: rate() over
    its group reads an increase that never happened. The recording rule leaves such groups out; so does the panel,
    and both read the same ratio from the monitor's own chats."""
    (expr,) = [t["expr"] for t in _panel(board, "Missing-events ratio")["targets"]]
    (rule,) = [r["expr"] for r in _rules()
               if r.get("record") == "target_scenario:chatprobe_chats_missing_events_per_chats:ratio_rate5m"]
    mon = f'job="monitor",{LBL}'
    ci = f'job="ci",{LBL}'
    series = {
        # the monitor: 1 chat/s, 1 in 10 without its events
        f'chatprobe_chats_total{{{mon},outcome="passed"}}': "0+54x20",
        f'chatprobe_chats_total{{{mon},outcome="failed"}}': "0+6x20",
        f'chatprobe_chats_total{{{mon},outcome="error"}}': "0x20",
        f"chatprobe_chats_missing_events_total{{{mon}}}": "0+6x20",
        # CI pushes of 100 chats: none missing at 2m, replaced at 8m by a run with 40 missing
        f'chatprobe_chats_total{{{ci},outcome="passed"}}': "_x2 100x6 60x12",
        f'chatprobe_chats_total{{{ci},outcome="failed"}}': "_x2 0x6 40x12",
        f'chatprobe_chats_total{{{ci},outcome="error"}}': "_x2 0x18",
        f"chatprobe_chats_missing_events_total{{{ci}}}": "_x2 0x6 40x12",
        'push_time_seconds{job="ci",target="agent:443",scenario="basic"}': "_x2 120x6 480x12",
    }
    assert _instant(expr, series, tmp_path) == pytest.approx(0.1)
    assert _instant(rule, series, tmp_path) == pytest.approx(0.1)


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["--out", "x.json"]])
def test_the_generator_takes_help_and_refuses_a_flag_rather_than_writing_a_file_of_its_name(tmp_path, monkeypatch,
                                                                                        capsys, argv):
    """`python -m dashboards.generate --help` wrote the dashboard to a file named `--help` in the current folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        generate.main(argv)
    assert exc.value.code == (0 if argv[0] in ("--help", "-h") else 2)
    assert list(tmp_path.iterdir()) == []
    out = capsys.readouterr()
    assert "usage:" in out.out + out.err


def test_the_generator_writes_to_the_path_given(tmp_path):
    out = tmp_path / "d.json"
    assert generate.main([str(out)]) == 0
    assert out.read_text(encoding="utf-8") == generate.render()
