"""The Prometheus rules are valid and their promtool unit tests pass (promtool comes from the `prometheus` package)."""
from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "monitors" / "rules"
RULES = RULES_DIR / "chatprobe.rules.yml"
RULE_TESTS = sorted((RULES_DIR / "tests").glob("*.yml"))
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_BASE = "https://github.com/chatprobe/chatprobe/blob/main/docs/runbook.md#"


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: run scripts/install-system-deps.sh (Debian package `prometheus`)"
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_promtool(), *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=120)


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_promtool_check_rules():
    proc = _run("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_test_rules():
    assert RULE_TESTS, "no promtool test files"
    proc = _run("test", "rules", *map(str, RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_promtool_cases_annotations_and_a_runbook_section():
    tested = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for alert_test in case.get("alert_rule_test", []):
                tested.add(alert_test["alertname"])
    runbook = RUNBOOK.read_text()
    anchors = {line[3:].strip().lower() for line in runbook.splitlines() if line.startswith("## ")}
    alerts = [r for r in _rules() if "alert" in r]
    assert {a["alert"] for a in alerts} >= {
        "ChatEventsMissing", "ChatTimeToFirstEventSlow", "ChatEventIsolationBreach", "ChatProbeDown",
        "ChatsCompleteBudgetBurnFast", "ChatsCompleteBudgetBurnSlow",
    }
    for rule in alerts:
        name = rule["alert"]
        assert name in tested, f"{name} has no promtool test"
        ann = rule["annotations"]
        assert set(ann) >= {"summary", "description", "runbook_url", "dashboard"}, name
        assert ann["runbook_url"] == RUNBOOK_BASE + name.lower(), name
        assert name.lower() in anchors, f"docs/runbook.md has no '## {name}' section"
        assert ann["dashboard"].startswith("/d/chatprobe-overview"), name
        assert rule["labels"]["severity"] in {"page", "ticket", "critical"}, name


def test_recording_rules_are_named_level_metric_operations():
    for rule in _rules():
        if "record" in rule:
            level, metric, ops = rule["record"].split(":")
            assert level == "target_scenario" and metric.startswith("chatprobe_") and ops, rule["record"]
            assert "by (target, scenario)" in rule["expr"], rule["record"]


async def test_a_failing_probe_scrape_pages_chat_probe_failing_with_its_target_and_scenario(tmp_path):
    """What a real /probe scrape returns, as Prometheus stores it (plus the job and instance it adds), run through
    the shipped rules: ChatProbeFailing takes target and scenario from the scrape's own chat series."""
    from prometheus_client.parser import text_string_to_metric_families

    from monitors.monitor import Monitor, load_config, probes_from_config

    with socket.socket() as s:  # a port nothing listens on: every probe is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"targets:\n  down: {{url: 'ws://127.0.0.1:{port}/ws'}}\n")
    probes = probes_from_config(str(cfg), load_config(str(cfg)), timeout=3)
    text = (await Monitor(probes, interval=1, timeout=3).probe_now("down", None, 3)).decode()

    scrape = 'job="chatprobe-probe",instance="down/probe"'
    series = []
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            labels = ",".join([scrape, *(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))])
            series.append({"series": f"{sample.name}{{{labels}}}", "values": f"{sample.value!r}x20"})
    assert any(s["series"].startswith("probe_success{") and s["values"].startswith("0.0") for s in series), text
    case = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "30s",
            "input_series": series,
            "promql_expr_test": [{
                "expr": 'ALERTS{alertname="ChatProbeFailing"}',
                "eval_time": "10m",
                "exp_samples": [{"labels": 'ALERTS{alertname="ChatProbeFailing",alertstate="firing",severity="page",'
                                           f'{scrape},target="down",scenario="probe"}}', "value": 1}],
            }],
        }],
    }
    (tmp_path / "case.yml").write_text(yaml.safe_dump(case))
    proc = _run("test", "rules", str(tmp_path / "case.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
