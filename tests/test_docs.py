"""What the docs say that the code can check, checked against the code: the commands and flags they show, the
metrics table, the labels alerts and panels filter on, the rules table, the profile and scenario keys with their
defaults, the JSON report's layout, the bounds. A doc that drifts from the code fails here, naming the line.

(The cited anchors, the histogram buckets and the dashboard's metric names are checked in
tests/monitors/test_doc_links.py and tests/monitors/test_dashboard.py.)
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel

from agentsim.cli import build_parser as sim_parser
from harness import checker, cli
from harness.backoff import BACKOFF_FIRST
from harness.cli import build_parser as chatprobe_parser
from harness.events import ALL_ROLES, RULES, Outcome
from harness.flow import AUTH_CLOSE_CODES, CLEAN_CLOSE_CODES, MAX_RESUMES_FOLLOWED
from harness.profiles import Fields, Profile, Span, load_profile
from harness.scenario import ChatStep, Expect, Objectives, RawStep, Scenario, load_scenario
from harness.sinks import CONNECTION_RESULTS, RECONNECT_ATTEMPT_RESULTS, RECONNECT_RESULTS, UNJUDGED_REASONS
from harness.transports.base import MAX_UNSENT_SEND
from monitors import metrics
from monitors.frontdoor import MAX_HEAD_READ, MAX_JWT_USERS, MAX_REQUEST_HEAD, REFUSAL_REASONS
from monitors.monitor import build_parser as monitor_parser
from monitors.proxy import MAX_CLOSING_FRAMES, MAX_SUBPROTOCOLS
from monitors.proxy import build_parser as proxy_parser
from monitors.sse_proxy import MAX_HEADERS, PARSE_SLICE

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
USER_DOCS = [ROOT / "README.md", *DOCS]
SUBCOMMANDS = {"monitor": monitor_parser, "proxy": proxy_parser, "sim": sim_parser}
# Locust's own flags, which the README's Locust commands use beside chatprobe's (Locust is not imported here: it
# monkey-patches the process).
LOCUST_FLAGS = {"--headless", "--master", "--worker", "--master-host", "--expect-workers", "--run-time", "--csv",
                "--stop-timeout", "--host", "--html", "--exit-code-on-error", "--reset-stats", "--expect-workers-max-wait",
                "--processes", "--loglevel", "--logfile"}


def _fences(path: Path) -> list[tuple[str, int, list[str]]]:
    """(language, first line number, lines) of every fenced code block."""
    out: list[tuple[str, int, list[str]]] = []
    current: tuple[str, int, list[str]] | None = None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            if current is None:
                current = (line[3:].strip(), n + 1, [])
            else:
                out.append(current)
                current = None
        elif current is not None:
            current[2].append(line)
    return out


def _table(text: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped, header and rule left out) of the first table under `heading`."""
    section = text.split(heading, 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        if line.startswith("|") and not line.startswith("| ---"):
            rows.append([c.strip() for c in line.strip()[1:-1].split("|")])
    return rows[1:]


def _code(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


# --- commands and flags ----------------------------------------------------------------------------------------

def _shown_commands() -> list[tuple[str, list[str]]]:
    """Every `chatprobe COMMAND …` of a shell block of the user docs, as (where, argv)."""
    found = []
    for path in USER_DOCS:
        for lang, first, lines in _fences(path):
            if lang not in ("", "bash", "sh", "console"):
                continue
            text = "\n".join(lines).replace("\\\n", " ")
            for n, line in enumerate(text.splitlines()):
                line = re.split(r"\s#\s", " " + line)[0]
                for part in line.split("&&"):
                    m = re.search(r"(?:^|\s)chatprobe ((?:run|check|monitor|proxy|sim|list)\b.*)", part)
                    if m:
                        found.append((f"{path.name}:{first + n}", shlex.split(m.group(1).replace("…", "x"))))
    return found


SHOWN = _shown_commands()


def test_the_docs_show_commands():
    assert len(SHOWN) >= 20, SHOWN
    assert any(argv[0] == "proxy" for _, argv in SHOWN) and any(argv[0] == "check" for _, argv in SHOWN)


@pytest.mark.parametrize(("where", "argv"), SHOWN, ids=[f"{w}:{a[0]}" for w, a in SHOWN])
def test_every_command_the_docs_show_parses(where, argv):
    try:
        if argv[0] in SUBCOMMANDS:
            SUBCOMMANDS[argv[0]]().parse_args(argv[1:])
        else:
            chatprobe_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: `chatprobe {' '.join(argv)}` is refused by its parser (exit {exc.code})")


def _options(parser: Any) -> set[str]:
    found: set[str] = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action.choices, dict):  # the sub-commands
            for sub in action.choices.values():
                found |= _options(sub)
    return found


def _registered(path: str, call: str) -> set[str]:
    return set(re.findall(rf'{call}\(\s*"(--[a-z0-9-]+)"', (ROOT / path).read_text()))


def test_every_flag_the_docs_name_exists():
    known = (_options(chatprobe_parser()) | _options(monitor_parser()) | _options(proxy_parser())
             | _options(sim_parser()) | _registered("harness/locust_user.py", "add_argument")
             | _registered("harness/pytest_plugin.py", "addoption") | LOCUST_FLAGS
             | set(cli._K6_FLAGS) | set(cli._K6_OUTPUT_FLAGS))  # k6's, which `run` answers with its own
    assert "--chatprobe-scenario" in known and "--chatprobe-target" in known and "--upstream" in known
    unknown = []
    for path in USER_DOCS:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            unknown += [f"{path.name}:{n}: {flag}" for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line)
                        if flag not in known]
    assert unknown == [], "flags no parser knows:\n" + "\n".join(unknown)


@pytest.mark.parametrize("command", ["run", "check", "monitor", "proxy", "sim", "list"])
def test_every_flag_of_the_commands_is_documented(command):
    """The other way round: each long flag a command takes is named in the README or a doc (a flag only its --help
    knows is one nobody finds). `monitor` and `proxy` parse their own flags (chatprobe hands them over)."""
    parser = SUBCOMMANDS[command]() if command in SUBCOMMANDS else _subparser(command)
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*",
                           "\n".join(path.read_text(encoding="utf-8") for path in USER_DOCS)))
    flags = {flag for action in parser._actions for flag in action.option_strings
             if flag.startswith("--") and flag != "--help"}
    assert flags or command == "list", f"chatprobe {command} shows no flags"  # list takes none
    assert flags <= named, f"chatprobe {command}: flags no doc names: {sorted(flags - named)}"


@pytest.mark.parametrize(("path", "call"), [("harness/locust_user.py", "add_argument"),
                                          ("harness/pytest_plugin.py", "addoption")])
def test_every_flag_of_the_locust_user_and_the_pytest_plugin_is_documented(path, call):
    """The Locust user's and the pytest plugin's `--chatprobe-*` options, as the commands' flags above: each is named
    in the README or a doc (their own --help is Locust's or pytest's, where few look)."""
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*",
                           "\n".join(doc.read_text(encoding="utf-8") for doc in USER_DOCS)))
    flags = _registered(path, call)
    assert len(flags) >= 12, f"{path}: no options found: {flags}"
    assert flags <= named, f"{path}: options no doc names: {sorted(flags - named)}"


def test_the_proxys_defaults_the_readme_states_are_its_parsers():
    """The proxy's judging, keepalive and size defaults as README.md states them, and as `chatprobe proxy --help` does."""
    from harness.durations import parse_duration, parse_size

    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    parser = proxy_parser()
    args = parser.parse_args(["--upstream", "ws://127.0.0.1:1"])
    helps = {action.dest: action.help or "" for action in parser._actions}
    for flag, said in (("--first-event-limit", "(2 s;"), ("--deadline", "(60 s)"), ("--stall-limit", "(30 s)"),
                       ("--settle", "(0.5 s)"), ("--send-timeout", "(30 s)"), ("--drain-timeout", "(15 s,"),
                       ("--max-size", "(4 MiB)"), ("--ping-interval`/`--ping-timeout", "(20 s each,")):
        assert f"`{flag}` {said}" in readme, f"README.md does not say `{flag}` {said}"
        value = said.strip("(;,)").removesuffix(" each")
        for name in flag.split("`/`"):
            dest = name[2:].replace("-", "_")
            default = getattr(args, dest)
            if name == "--max-size":
                assert parse_size(default) == parse_size(value.replace(" ", "")), (name, default, said)
            else:
                assert parse_duration(default) == parse_duration(value.replace(" ", "")), (name, default, said)
            assert f"default {default}" in helps[dest], f"chatprobe proxy --help: {name} does not say its default"


# --- metrics ---------------------------------------------------------------------------------------------------

METRICS_DOC = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")


def _declared() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every metric of a /probe registry (the fullest set): name -> (type, label names)."""
    m = metrics.ChatMetrics(CollectorRegistry(), probe=True)
    out = {}
    # prometheus_client has no public view of a metric's label names: its own attributes are read.
    for collector in vars(m).values():
        if isinstance(collector, MetricWrapperBase):
            out[collector._name] = (collector._type, tuple(collector._labelnames))
    return out


def _documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    out = {}
    for row in _table(METRICS_DOC, "## Metrics"):
        names, kind, extra = _code(row[0]), row[1], row[2]
        if extra == "none":
            labels: tuple[str, ...] = ()
        elif extra.startswith("only "):
            labels = tuple(_code(extra.split(" = ")[0] if "=" in extra else extra))
        else:
            labels = (*metrics.COMMON_LABELS, *_code(extra))
        for name in names:
            out[name.removesuffix("_total") if kind == "counter" else name] = (kind, labels)
    return out


def test_the_metrics_table_is_what_the_code_declares():
    declared, documented = _declared(), _documented()
    assert set(documented) == set(declared), (
        f"in docs/metrics.md only: {set(documented) - set(declared)}; in the code only: {set(declared) - set(documented)}")
    for name, (kind, labels) in declared.items():
        assert documented[name][0] == kind, f"{name}: docs/metrics.md says {documented[name][0]}, the code {kind}"
        assert set(documented[name][1]) == set(labels), f"{name}: docs/metrics.md says labels {documented[name][1]}, " \
                                                        f"the code {labels}"


def test_the_label_values_the_metrics_doc_lists_are_the_codes():
    labels = {row[0].strip("`"): row[1] for row in _table(METRICS_DOC, "## Labels")}
    assert _code(re.sub(r"\([^)]*\)", "", labels["source"])) == list(metrics.SOURCES)
    assert _code(labels["outcome"])[: len(metrics.OUTCOMES)] == list(metrics.OUTCOMES)
    connections, reconnects = labels["result"].split("; reconnects:")
    reconnects, attempts = reconnects.split("; reconnect attempts:")
    assert _code(connections) == list(CONNECTION_RESULTS) and _code(reconnects) == list(RECONNECT_RESULTS)
    assert _code(attempts) == list(RECONNECT_ATTEMPT_RESULTS)
    refused = next(r for r in _table(METRICS_DOC, "## Metrics") if "proxy_refused" in r[0])
    assert _code(refused[2].split("`reason` = ")[1]) == list(REFUSAL_REASONS)
    unjudged = next(r for r in _table(METRICS_DOC, "## Metrics") if "chats_unjudged" in r[0])
    assert _code(unjudged[3].split("`reason` = ")[1].split(":")[0]) == list(UNJUDGED_REASONS)
    assert str(metrics.MAX_LABEL_LENGTH) in labels["target"] and str(metrics.MAX_SCENARIOS) in labels["scenario"]


def test_every_metric_the_docs_name_is_exported():
    # The pytest plugin's fixtures (`chatprobe_url`) share the prefix and are no series.
    fixtures = re.findall(r"@pytest\.fixture[^\n]*\ndef (\w+)", (ROOT / "harness/pytest_plugin.py").read_text())
    known = {*metrics.metric_names(), *fixtures}
    unknown = [f"{path.name}:{n}: {m}" for path in (*USER_DOCS, ROOT / "BENCHMARKS.md")
               for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
               for m in re.findall(r"(?<![\w:])chatprobe_[a-z_]+\b", line) if m not in known]
    assert unknown == [], "series no code exports:\n" + "\n".join(unknown)


def _rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((ROOT / "monitors/rules/chatprobe.rules.yml").read_text())
    return [r for g in rules["groups"] for r in g["rules"]]


def test_the_alerts_table_and_the_readme_are_the_rules_files():
    """docs/metrics.md's Alerts table: every alert of the rules file, with its `for` and severity (a second rule of a
    name, the Pushgateway one, says "(pushed: …)"); the README's list of the rules names every alert too."""
    shipped: dict[str, list[tuple[str, str]]] = {}
    for rule in _rules():
        if "alert" in rule:
            shipped.setdefault(rule["alert"], []).append((rule.get("for", "none"), rule["labels"]["severity"]))
    table = {row[0].split("]")[0].lstrip("["): (row[2], row[3]) for row in _table(METRICS_DOC, "## Alerts")}
    assert set(table) == set(shipped), f"docs/metrics.md's alerts differ from the rules file: {set(table) ^ set(shipped)}"
    for name, rules in shipped.items():
        every_for, severity = table[name]
        pushed = re.search(r"\(pushed: (\w+)\)", every_for)
        shown = {every_for.split(" (")[0]} | ({pushed.group(1)} if pushed else set())
        assert shown == {f for f, _ in rules} and {severity} == {s for _, s in rules}, (
            f"docs/metrics.md: {name} is for {every_for}, {severity}; the rules file says {rules}")
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    listed = readme.split("Alert and recording rules: `monitors/rules/chatprobe.rules.yml`", 1)[1].split("- Grafana", 1)[0]
    left_out = set(shipped) - set(_code(listed)) - {"ChatsCompleteBudgetBurnFast", "ChatsCompleteBudgetBurnSlow"}
    assert not left_out, f"README.md's list of the alert rules leaves out {left_out}"  # (the burn pair: "the pair")


def test_the_alerts_tables_thresholds_are_the_rules_files():
    """Each percentage docs/metrics.md's Alerts table says an alert fires past (`> 5%`, `< 95%`, `> 72%`) is a bound
    of its rule's expression, on the same side, and its traffic guard (`≥ 4 chats in 5 m`) is the rule's `>= 4 / 300`:
    a threshold tuned in the rules file and not in the doc misleads whoever reads why it paged."""
    exprs: dict[str, list[str]] = {}
    for rule in _rules():
        if "alert" in rule:  # (a name's second rule: the Pushgateway one, of the same threshold)
            exprs.setdefault(rule["alert"], []).append(re.sub(r"#[^\n]*", "", rule["expr"]))
    checked = 0
    for row in _table(METRICS_DOC, "## Alerts"):
        name, fires = row[0].split("]")[0].lstrip("["), row[1]
        for op, percent in re.findall(r"([<>]) (\d+)%", fires):
            for expr in exprs[name]:
                said = [float(n) for n in re.findall(rf"{re.escape(op)} (\d+(?:\.\d+)?)(?!\s*/)", expr)]
                assert said and set(said) == {float(percent) / 100}, (
                    f"docs/metrics.md: {name} fires at {op} {percent}%, its rule's bounds are {op} {said}")
            checked += 1
        guard = re.search(r"≥ (\d+) (?:such )?chats in 5 m", fires)
        if guard:
            assert any(f">= {guard.group(1)} / 300" in expr for expr in exprs[name]), (
                f"docs/metrics.md: {name}'s guard of {guard.group(1)} chats in 5 m is not its rule's")
            checked += 1
    assert checked >= 10, checked


def _recorded() -> set[str]:
    return {r["record"] for r in _rules() if "record" in r}


def test_the_recording_rules_table_is_the_rules_file():
    """docs/metrics.md's Recording rules table names every record of the rules file and no other (`…` standing for
    `target_scenario:chatprobe_chats`, `{5m,1h}` for one name per window); a query of the docs or the dashboard
    that reads a record names one the rules file has (a renamed record leaves a panel or a runbook query empty)."""
    shown: set[str] = set()
    for row in _table(METRICS_DOC, "## Recording rules"):
        for name in _code(row[0]):
            name = name.replace("…", "target_scenario:chatprobe_chats", 1)
            base, _, windows = name.partition("{")
            shown |= {base + w for w in windows.rstrip("}").split(",")} if windows else {name}
    assert shown == _recorded(), (f"docs/metrics.md's Recording rules only: {shown - _recorded()}; "
                                  f"the rules file only: {_recorded() - shown}")
    for where, expr in _queries():
        for name in re.findall(r"\b[a-z_]+:chatprobe_[a-z_0-9:]+", expr):
            assert name in _recorded(), f"{where}: reads {name}, which no recording rule records"


# Values each closed label may take; a selector matching anything else selects nothing, silently.
CLOSED = {"outcome": set(metrics.OUTCOMES), "rule": set(metrics.RULE_IDS), "event": set(metrics.ROLES),
          "source": set(metrics.SOURCES)}
# `result` and `reason` take other values on each metric that has them (a connection is never `resumed`).
CLOSED_OF = {"chatprobe_connections": {"result": set(CONNECTION_RESULTS)},
             "chatprobe_reconnects": {"result": set(RECONNECT_RESULTS)},
             "chatprobe_reconnect_attempts": {"result": set(RECONNECT_ATTEMPT_RESULTS)},
             "chatprobe_proxy_refused_connections": {"reason": set(REFUSAL_REASONS)},
             "chatprobe_chats_unjudged": {"reason": set(UNJUDGED_REASONS)}}


def _closed(series: str) -> dict[str, set[str]]:
    return {**CLOSED, **CLOSED_OF.get(series.removesuffix("_total"), {})}
# Labels Prometheus adds to every scraped or pushed series.
SCRAPE_LABELS = {"job", "instance"}


def _queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load((ROOT / "monitors/rules/chatprobe.rules.yml").read_text())
    out = [(r.get("record") or r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]
    board = json.loads((ROOT / "dashboards/chatprobe-overview.json").read_text())
    out += [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]
    for path in DOCS:
        out += [(f"{path.name}:{first}", "\n".join(lines)) for lang, first, lines in _fences(path) if lang == "promql"]
    return out


def _labels_of(series: str, declared: dict[str, tuple[str, tuple[str, ...]]]) -> set[str] | None:
    for name, (kind, labels) in declared.items():
        if series in (name, f"{name}_total") or (kind == "histogram" and series in (
                f"{name}_bucket", f"{name}_count", f"{name}_sum")):
            return set(labels) | ({"le"} if series.endswith("_bucket") else set())
    return None


@pytest.mark.parametrize(("where", "expr"), _queries(), ids=lambda v: v if len(v) < 60 else None)
def test_queries_filter_on_labels_their_metrics_have_with_values_they_take(where, expr):
    declared = _declared()
    for series, matchers in re.findall(r"\b(chatprobe_[a-z_]+)\{([^}]*)\}", expr):
        labels = _labels_of(series, declared)
        assert labels is not None, f"{where}: {series} is no chatprobe metric"
        for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', matchers):
            assert label in labels | SCRAPE_LABELS, f"{where}: {series} has no label {label!r} (it has {labels})"
            closed = _closed(series)
            if label in closed and "$" not in value:
                shown = value.split("|") if op in ("=~", "!~") else [value]
                assert set(shown) <= closed[label], f"{where}: {series}'s {label} never takes {set(shown) - closed[label]}"
    grouped = {"target", "scenario"} | SCRAPE_LABELS  # what the recording rules keep
    for name in re.findall(r"\bchatprobe_[a-z_]+\b", expr):
        grouped |= _labels_of(name, declared) or set()
    for clause in re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", expr):
        for label in filter(None, (s.strip() for s in clause.split(","))):
            assert label in grouped, f"{where}: groups by {label!r}, a label none of its metrics has"


def test_every_dashboard_panel_the_runbook_names_is_one():
    """The runbook sends an SRE to dashboard panels by their titles ("Connections by result"): each quoted title
    outside code is a panel of the dashboard, or a section a doc has (a renamed panel is one nobody finds at 3 am)."""
    board = json.loads((ROOT / "dashboards/chatprobe-overview.json").read_text())
    titles = {panel["title"] for panel in board["panels"]}
    headings = {line.lstrip("#").strip() for path in USER_DOCS
                for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")}
    text = re.sub(r"`[^`]*`", "", " ".join((ROOT / "docs" / "runbook.md").read_text(encoding="utf-8").split()))
    named = re.findall(r'"([A-Z][^"]{3,80})"', text)
    assert len([n for n in named if n in titles]) >= 8, named
    unknown = [n for n in named if n not in titles | headings]
    assert unknown == [], f"runbook.md names panels the dashboard has not: {unknown} (it has {sorted(titles)})"


# --- rules -----------------------------------------------------------------------------------------------------

PROTOCOL_DOC = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")


def test_the_rules_table_is_the_codes():
    table = {row[0].split("]")[0].lstrip("["): row[1] for row in _table(PROTOCOL_DOC, "## Rules")}
    assert table == RULES
    for rule, caption in RULES.items():
        assert f"\n### {rule} {caption}\n" in PROTOCOL_DOC, f"docs/protocol.md has no '### {rule} {caption}' section"


def test_the_bounds_protocol_md_states_are_the_checkers():
    bounds = PROTOCOL_DOC.split("## Bounds", 1)[1].split("\n## ", 1)[0]
    for shown in (f"{checker.MAX_EVENTS_KEPT:,} events", f"{checker.MAX_KEPT_BYTES // 2**20} MiB of events",
                  f"{checker.MAX_VIOLATIONS_KEPT} violations", f"{checker.MAX_OPEN_SPANS:,} spans",
                  f"{checker.MAX_SEQS_AHEAD:,} `seq`", f"{checker.KEEP_FINISHED} latest judged chats",
                  f"{checker.MAX_WARNINGS_KEPT} warnings", f"at most {checker.MAX_FOLLOWUP_RUNS} further runs",
                  f"its {MAX_RESUMES_FOLLOWED} latest runs resumed away from it and {MAX_RESUMES_FOLLOWED} replays"):
        assert shown in " ".join(bounds.split()), f"docs/protocol.md, Bounds, does not say {shown!r}"


def _kib(n: int) -> str:
    return f"{n // 1024} KiB"


def test_the_close_codes_and_bounds_of_the_connection_the_docs_state_are_the_codes():
    """The close codes that refuse credentials or ask for a resend, the reconnect's first wait, the unsent-bytes bound
    and the proxy's bounds on a request's head, as the docs a user reads state them."""
    protocol = " ".join(PROTOCOL_DOC.split())
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    metrics_doc = " ".join((ROOT / "docs" / "metrics.md").read_text(encoding="utf-8").split())
    scenarios = " ".join(SCENARIOS_DOC.split())
    auth = sorted(AUTH_CLOSE_CODES)
    said = f"{', '.join(map(str, auth[:-1]))} or {auth[-1]}"  # "1008, 4401 or 4403"
    for where, text in (("README.md", readme), ("docs/metrics.md", metrics_doc), ("docs/protocol.md", protocol)):
        assert f"close {said}" in text or f"close of {said}" in text, f"{where} does not name the close codes {said}"
    assert "1008 (policy violation), or 4401 / 4403" in protocol and auth == [1008, 4401, 4403]
    clean = sorted(CLEAN_CLOSE_CODES)
    assert f"{', '.join(map(str, clean[:3]))}, and {clean[3]} or {clean[4]}" in protocol, (
        f"docs/protocol.md's changes do not list the resend's close codes {clean}")
    assert f"the first 0–{BACKOFF_FIRST:g} s after the loss" in scenarios
    assert f"random in 0–{BACKOFF_FIRST:g} s after the loss" in protocol
    assert MAX_UNSENT_SEND == 2**20 and "more than 1 MiB the server has not read" in protocol
    assert f"past the {MAX_UNSENT_SEND // 1024:,} KiB bound" in protocol
    for shown in (f"more than {MAX_SUBPROTOCOLS} offered", f"as its bytes pass {_kib(MAX_HEAD_READ)}",
                  f"{_kib(MAX_REQUEST_HEAD)} and {MAX_HEADERS} header fields",
                  f"checked {PARSE_SLICE // 1024} KiB at a time", f"the first {MAX_JWT_USERS} JWTs a request carries",
                  f"at most {MAX_CLOSING_FRAMES} messages and 2 × `--max-size` bytes a side"):
        assert shown in readme, f"README.md does not say {shown!r}"


def test_the_open_chats_bounds_of_the_proxy_and_check_the_docs_state_are_the_codes():
    """The chats the proxy follows open at once on a connection (its client's doing past it, named on the recording for
    `check`), and `check`'s own bound, as protocol.md, recordings.md and metrics.md state them."""
    from harness.flow import MAX_OPEN_WATCHED, TOO_MANY_OPEN
    from harness.offline import MAX_OPEN_PER_CONN

    protocol = " ".join(PROTOCOL_DOC.split())
    recordings = " ".join((ROOT / "docs" / "recordings.md").read_text(encoding="utf-8").split())
    metrics_doc = " ".join((ROOT / "docs" / "metrics.md").read_text(encoding="utf-8").split())
    assert f"at most {MAX_OPEN_WATCHED} chats open at once on one connection" in protocol
    assert f'"{TOO_MANY_OPEN}"' in protocol and f'"{TOO_MANY_OPEN}"' in recordings
    assert f"the proxy follows at most {MAX_OPEN_WATCHED} chats open at once on a connection" in recordings
    assert f"{MAX_OPEN_PER_CONN:,} of them on one connection" in recordings
    assert f"`check`'s own bound being {MAX_OPEN_PER_CONN:,} a connection" in protocol
    assert f"than {MAX_OPEN_WATCHED} chats open on the connection" in metrics_doc
    # and the counter's HELP, as /metrics shows it to whoever reads the series
    from prometheus_client import CollectorRegistry

    from monitors.metrics import ChatMetrics

    help_text = ChatMetrics(CollectorRegistry()).client_rejections._documentation
    assert f"more than {MAX_OPEN_WATCHED} open on one connection" in help_text, help_text


def test_the_default_limits_the_docs_state_are_the_codes():
    expect = Expect()
    flat = " ".join(PROTOCOL_DOC.split())
    assert f"`expect.first_event_limit` (default {expect.first_event_limit:g} s)" in flat
    assert f"`expect.deadline` (default {expect.deadline:g} s)" in flat
    assert f"longer than `expect.stall_limit` (default {expect.stall_limit:g} s)" in flat
    assert f"`expect.settle` (default {expect.settle:g} s)" in flat


# --- profiles and scenarios ------------------------------------------------------------------------------------

def _default_cell(cell: str) -> Any:
    """A table's default as a value, when it is one YAML literal in backticks (else None: prose)."""
    shown = _code(cell)
    if len(shown) != 1 or not cell.startswith("`") or not re.fullmatch(r"`[^`]*`( \(.*\))?", cell):
        return None
    return yaml.safe_load(shown[0])


def _check_keys(doc: str, heading: str, model: Any, where: str) -> None:
    rows = _table(doc, heading)
    shown: dict[str, str] = {}
    for row in rows:
        for name in _code(row[0]):
            shown[name] = row[1]
    fields = model.model_fields
    assert set(shown) == set(fields), (
        f"{where}: listed, not in {model.__name__}: {set(shown) - set(fields)}; "
        f"in {model.__name__}, not listed: {set(fields) - set(shown)}")
    for name, cell in shown.items():
        field = fields[name]
        if cell == "required":
            assert field.is_required(), f"{where}: {name} is not required in {model.__name__}"
            continue
        value = _default_cell(cell)
        default = field.default.model_dump() if hasattr(field.default, "model_dump") else field.default
        if value is not None and (not isinstance(default, (dict, list)) or value in ([], {}, [""]) or
                                  isinstance(field.default, BaseModel)):
            assert default == value, f"{where}: {name}'s default is {default!r}, the doc says {cell}"


PROFILES_DOC = (ROOT / "docs" / "profiles.md").read_text(encoding="utf-8")
SCENARIOS_DOC = (ROOT / "docs" / "scenarios.md").read_text(encoding="utf-8")


def test_the_profile_keys_tables_are_the_model():
    _check_keys(PROFILES_DOC, "## Keys", Profile, "docs/profiles.md, Keys")
    _check_keys(PROFILES_DOC, "### `fields`", Fields, "docs/profiles.md, fields")
    for row in _table(PROFILES_DOC, "### `fields`"):  # "[a, b]"-style defaults, pairs included
        for name, default in zip(_code(row[0]), _code(row[1]), strict=False):
            assert Fields.model_fields[name].default == yaml.safe_load(default), name
    spans = next(yaml.safe_load("\n".join(lines)) for lang, _, lines in _fences(ROOT / "docs" / "profiles.md")
                 if lang == "yaml" and lines and lines[0] == "spans:")
    assert set(spans["spans"][0]) == set(Span.model_fields), "docs/profiles.md's `spans` example shows every key"


@pytest.mark.parametrize(("heading", "model"), [("## Top level", Scenario), ("## `expect`", Expect),
                                                ("### `chat:`", ChatStep), ("### `send_raw:`", RawStep)])
def test_the_scenario_keys_tables_are_the_model(heading, model):
    _check_keys(SCENARIOS_DOC, heading, model, f"docs/scenarios.md, {heading}")
    for row in _table(SCENARIOS_DOC, heading):
        seconds = re.fullmatch(r"`([\d.]+)` \(s\)", row[1])
        if seconds:
            assert model.model_fields[row[0].strip("`")].default == float(seconds.group(1)), row


def test_the_objective_defaults_are_the_models():
    rows = {row[0].strip("`"): row[1] for row in _table(SCENARIOS_DOC, "## `objectives`")}
    assert set(rows) == set(Objectives.model_fields)
    defaults = Objectives().model_dump()
    for name, cell in rows.items():
        set_now = {k: v for k, v in defaults[name].items() if v is not None}
        shown = {} if cell == "none" else {k: float(str(v).rstrip("s")) for k, v in
                                           yaml.safe_load(cell.strip("`")).items()}
        assert shown == set_now, f"docs/scenarios.md: objective {name} defaults to {set_now}, the doc says {cell}"
    readme = " ".join((ROOT / "README.md").read_text().split())
    for name, stats in defaults.items():
        for stat, value in stats.items():
            if value is not None:
                assert f"`{name}.{stat}`" in readme, f"README.md does not list the default {name}.{stat}"


def test_a_set_objective_replaces_its_defaults_statistics_and_an_override_one(tmp_path):
    """An objective a scenario sets has only the statistics written there (its default's are not merged in: `{}` is no
    bound at all, as `knee` judges by its stages' table), while `--objective` overrides one statistic and keeps the
    others, as docs/scenarios.md and README.md say."""
    from harness.scenario import apply_overrides

    path = tmp_path / "set.yaml"
    path.write_text("name: set\nobjectives:\n  time_to_first_event: {p99: 3s}\n  passed_ratio: {}\n")
    scenario = load_scenario(str(path))
    assert scenario.objectives.time_to_first_event.model_dump(exclude_none=True) == {"p99": 3.0}
    assert scenario.objectives.passed_ratio.model_dump(exclude_none=True) == {}
    overridden = apply_overrides(load_scenario("basic"), ["time_to_first_event.p99=3s"])
    assert overridden.objectives.time_to_first_event.model_dump(exclude_none=True) == {"p95": 2.0, "p99": 3.0, "max": 2.0}
    flat = " ".join(SCENARIOS_DOC.split())
    assert "`time_to_first_event: {p99: 3s}` leaves no `p95` bound" in flat and "`{}` sets none" in flat
    assert "`--objective NAME.STAT=VALUE` overrides one statistic, the objective's others kept" in flat
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert "(`time_to_first_event: {p99: 3s}` drops the default p95), while `--objective` overrides one statistic" in readme


def _yaml_blocks() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in USER_DOCS:
        for lang, first, lines in _fences(path):
            if lang == "yaml":
                data = yaml.safe_load("\n".join(lines))
                if isinstance(data, dict) and ("roles" in data or "objectives" in data or "users" in data):
                    out.append((f"{path.name}:{first}", data))
    return out


@pytest.mark.parametrize(("where", "data"), _yaml_blocks(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_profile_and_scenario_the_docs_show_loads(where, data, tmp_path):
    path = tmp_path / "shown.yaml"
    path.write_text(yaml.safe_dump(data))
    if "roles" in data:
        load_profile(str(path))
    else:
        load_scenario(str(path))


def test_every_example_profile_is_linked_from_profiles_md_and_loads():
    """docs/profiles/*.yaml: each is linked from docs/profiles.md (where a user looks for their format) and loads."""
    shown = set(re.findall(r"\(profiles/([\w.-]+\.yaml)\)", PROFILES_DOC))
    there = {p.name for p in (ROOT / "docs" / "profiles").glob("*.yaml")}
    assert there <= shown, f"docs/profiles.md links no {sorted(there - shown)}"
    for name in sorted(there):
        load_profile(str(ROOT / "docs" / "profiles" / name))


def test_the_checks_key_names_every_check_set():
    """docs/profiles.md's `checks` row names each set of harness/checksets.py's registry, and where sets are kept."""
    from harness.checksets import MODULES

    row = next(r for r in _table(PROFILES_DOC, "## Keys") if r[0] == "`checks`")
    for name, module in MODULES.items():
        assert f"`{name}`" in row[2], f"docs/profiles.md's `checks` row does not name the set {name}"
        assert f"`{module.replace('.', '/')}.py`" in row[2], f"docs/profiles.md's `checks` row does not name {module}"
    assert "`harness/checksets.py`" in row[2], "docs/profiles.md's `checks` row does not name the registry"


def test_every_dependency_says_why():
    """pyproject.toml's runtime dependencies: each has a comment saying what it is for, on its line or just above
    (a dependency nobody can account for is one nobody dares remove)."""
    lines = (ROOT / "pyproject.toml").read_text(encoding="utf-8").splitlines()
    start = lines.index("dependencies = [") + 1
    end = lines.index("]", start)
    said_above = False
    for n in range(start, end):
        line = lines[n].strip()
        if line.startswith("#"):
            said_above = True
            continue
        assert "#" in line or said_above, f"pyproject.toml:{n + 1}: {line} says not what it is for"
        said_above = False


def test_the_readmes_setup_stamp_is_the_scripts():
    """README.md says when scripts/setup-venv.sh installs again, naming its stamp: the one the script writes, and
    what the script compares (pyproject.toml's content and the checkout's path, not a modification time)."""
    script = (ROOT / "scripts" / "setup-venv.sh").read_text(encoding="utf-8")
    stamp = re.search(r"^stamp=(\S+)$", script, re.M)
    assert stamp is not None
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert f"`{stamp.group(1)}`" in readme, f"README.md does not name setup-venv.sh's stamp {stamp.group(1)}"
    assert "sha256sum pyproject.toml" in script and "pwd -P" in script and " -nt " not in script
    assert "`pyproject.toml`'s content or the checkout's path" in readme


# --- the JSON report -------------------------------------------------------------------------------------------

def test_the_json_report_layout_is_the_schema():
    doc = (ROOT / "docs" / "json-report.md").read_text(encoding="utf-8")
    layout = doc.split("## Layout", 1)[1].split("\n## ", 1)[0]
    shown = set(re.findall(r'"([a-z_0-9]+)":', layout))
    values = {r.value for r in ALL_ROLES} | {o.value for o in Outcome} | set(CONNECTION_RESULTS)
    schema = json.loads((ROOT / "harness/schemas/result.schema.json").read_text())
    fields: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            fields.update(node.get("properties", {}))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    # Keys of the example's maps (by role, outcome, error kind, rule) are values, not fields.
    shown -= (values | set(RULES)) - fields
    assert shown == fields, f"in the layout only: {shown - fields}; in the schema only: {fields - shown}"


def test_the_json_reports_listing_and_indent_bounds_are_the_codes():
    from harness.report import INDENT_MAX_CHATS
    from harness.results import MAX_CHATS_LISTED, MAX_LISTED_BYTES

    doc = " ".join((ROOT / "docs" / "json-report.md").read_text(encoding="utf-8").split())
    assert f"Up to {INDENT_MAX_CHATS:,} listed chats in all" in doc
    assert f"at most {2 * MAX_CHATS_LISTED:,} a scenario" in doc
    assert (f"the first {MAX_CHATS_LISTED:,} passing and the first {MAX_CHATS_LISTED:,} not passing chats, with their "
            f"events up to {MAX_LISTED_BYTES // 2**20} MiB") in doc
    # a chat's events and violations, and the run's connection violations, as the layout's notes bound them
    from harness.results import MAX_CONNECTION_VIOLATIONS_LISTED

    assert f"in no chat (the first {MAX_CONNECTION_VIOLATIONS_LISTED})" in doc
    assert f"the first {MAX_CONNECTION_VIOLATIONS_LISTED} of a run are listed" in doc
    assert f"At most {checker.INCIDENTS_EACH} a connection" in doc
    assert f"per rule, past the {checker.MAX_VIOLATIONS_KEPT} listed" in doc
    assert f"the first {checker.MAX_EVENTS_KEPT:,}" in doc


# --- help texts --------------------------------------------------------------------------------------------------

def _subparser(name: str) -> Any:
    action = next(a for a in chatprobe_parser()._actions if isinstance(a.choices, dict))
    return action.choices[name]


@pytest.mark.parametrize(("where", "text", "codes"), [
    ("chatprobe run --help", lambda: _subparser("run").description, ("0", "1", "2", "3", "130/143")),
    ("chatprobe check --help", lambda: _subparser("check").description, ("0", "1", "2", "3", "130/143")),
    ("chatprobe monitor --once", lambda: next(a.help for a in monitor_parser()._actions if "--once" in a.option_strings),
     ("0", "1", "2", "3", "130/143")),
], ids=lambda v: v if isinstance(v, str) else None)
def test_the_help_names_every_exit_code_the_command_returns(where, text, codes):
    said = re.split(r"\b[Ee]xit ", text(), maxsplit=1)[1]
    shown = re.findall(r"\b(\d+(?:/\d+)?) (?:\w)", said)
    assert tuple(shown) == codes, f"{where} states exit codes {shown}, the command returns {codes}"


def test_the_warning_the_readme_quotes_for_a_check_without_times_is_the_codes():
    """README.md quotes what `check` warns of a recording with no times (in the JUnit's <system-out> too): words a
    user greps the report for."""
    from harness.offline import UNTIMED_NOTE

    said = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    quoted = re.search(r'such as a check\'s "([^"]+)"', said)
    assert quoted and quoted.group(1) in UNTIMED_NOTE, (quoted and quoted.group(1), UNTIMED_NOTE)


def test_the_html_report_the_readme_describes_marks_the_scenarios_first_event_limit():
    """The HTML report's first-event histogram marks `expect.first_event_limit` (harness/html_report.py), which the
    README names, with its default."""
    said = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert (f"the first-event histogram with its first-event limit marked (`expect.first_event_limit`, "
            f"{Expect().first_event_limit:g} s by default)") in said
    assert "run.scenario.expect.first_event_limit" in (ROOT / "harness/html_report.py").read_text(encoding="utf-8")


def test_the_readmes_exit_codes_are_the_codes():
    """README's "Exit codes of `chatprobe run`" names each ExitCode, in order, and no other."""
    from harness.errors import ExitCode

    said = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    said = said.split("Exit codes of `chatprobe run`", 1)[1].split(". A stopped run", 1)[0]
    assert [int(n) for n in re.findall(r"\*\*(\d+)\*\*", said)] == [int(c) for c in ExitCode]


def test_the_readmes_sim_table_is_agentsims_flags_and_defaults():
    """README's `chatprobe sim` table: one row per flag of `sim`, each default the one SimConfig starts with."""
    import dataclasses

    from agentsim.faults import parse_size
    from agentsim.server import DEFAULT_JWT_SECRET, SimConfig

    parser = sim_parser()
    dests = {flag: action.dest for action in parser._actions for flag in action.option_strings}
    defaults = {f.name: f.default for f in dataclasses.fields(SimConfig)}
    rows = _table((ROOT / "README.md").read_text(encoding="utf-8"), "### The reference server: `chatprobe sim`")
    shown: set[str] = set()
    for row in rows:
        flags = [code.split()[0] for code in _code(row[0])]
        shown.update(flags)
        if row[1] in ("off", "none", "none (random)"):
            for flag in flags:
                assert defaults.get(dests[flag], None) in (False, None, []), f"README.md: sim {flag} is no {row[1]}"
        elif flags == ["--jwt-secret"]:
            assert "$AGENTSIM_JWT_SECRET" in row[1] and f"`{DEFAULT_JWT_SECRET}`" in row[1], row
        else:
            values = _code(row[1])
            assert len(values) == len(flags), row
            for flag, value in zip(flags, values, strict=True):
                default = defaults[dests[flag]]
                said = parse_size(value) if flag == "--max-size" else yaml.safe_load(value)
                assert said == default, f"README.md: sim {flag} defaults to {default!r}, the table says {value}"
    flags = {flag for flag in dests if flag.startswith("--") and flag != "--help"}
    shown.discard("-v")  # --verbose's short form
    assert shown == flags, f"README.md's sim table: not flags of sim: {shown - flags}; not in it: {flags - shown}"


def test_the_listen_interval_and_job_defaults_the_docs_state_are_the_codes():
    """Where the monitor and the proxy listen unless told (loopback: an SRE must know to widen it), the monitor's
    interval and timeout, and the Pushgateway job `run` pushes under."""
    from monitors import monitor

    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    said = readme.split("Both listen on loopback unless told otherwise:", 1)[1].split(" give ", 1)[0]
    mon, prox = monitor_parser().parse_args([]), proxy_parser().parse_args(["--upstream", "ws://127.0.0.1:1"])
    assert f"the monitor's `--listen` defaults to `{mon.listen}`" in said
    assert f"`--interval` to {monitor.DEFAULT_INTERVAL:g} s" in said
    assert f"`--timeout` to the interval within {monitor.MIN_DEFAULT_TIMEOUT:g}–{monitor.MAX_TIMEOUT:g} s" in said
    assert f"the proxy's `--listen` to `{prox.listen}`" in said and f"`--metrics-listen` to `{prox.metrics_listen}`" in said
    job = chatprobe_parser().parse_args(["run"]).job
    assert f"--job NAME` (default `{job}`)" in " ".join(METRICS_DOC.split())


def test_the_locust_names_scenarios_md_maps_are_the_loaders():
    from harness.yamlfile import _FOREIGN_KEYS, _FOREIGN_NOTES

    said = " ".join(SCENARIOS_DOC.split()).split("Locust's names, in a scenario file,", 1)[1].split(" k6's load flags", 1)[0]
    pairs = re.findall(r"`(\w+)` is `(\w+)`", said)
    assert pairs and all(_FOREIGN_KEYS.get(locust) == ours for locust, ours in pairs), pairs
    assert "`run_time`" in said and "stages" in _FOREIGN_NOTES["run_time"]


def test_the_ag_ui_faults_profiles_md_lists_are_agentsims():
    from agentsim.faults import AGUI_ONLY

    said = " ".join(PROFILES_DOC.split()).split("and a fault for each AG-UI rule:", 1)[1].split("(the list", 1)[0]
    assert _code(said) == list(AGUI_ONLY), f"docs/profiles.md lists {_code(said)}, agentsim has {AGUI_ONLY}"


def test_agentsims_help_lists_every_config_key():
    import dataclasses

    from agentsim.server import SimConfig

    text = " ".join(sim_parser().format_help().split("Config file keys (YAML mapping):", 1)[1].split(".", 1)[0].split())
    assert text.split(", ") == [f.name for f in dataclasses.fields(SimConfig)]


def test_the_readmes_pytest_example_passes(pytester):
    readme = ROOT / "README.md"
    example = next("\n".join(lines) for lang, _, lines in _fences(readme) if lang == "python" and "def test_" in "\n".join(lines))
    pytester.makepyfile(example)
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)


def test_the_monitor_config_keys_the_readme_and_help_list_are_the_models():
    from monitors.monitor import MonitorConfig, TargetConfig

    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    said = readme.split("A `--config` file has `targets:`", 1)[1].split("override these", 1)[0]
    per_target, top = said.split("; beside it", 1)
    assert set(_code(per_target)) - {"target", "run"} == set(TargetConfig.model_fields)  # "its `target` label"
    assert set(_code(top)) - {"[probe]", "--interval", "--timeout"} == set(MonitorConfig.model_fields) - {"targets"}
    assert MonitorConfig.model_fields["scenarios"].default_factory() == ["probe"]  # type: ignore[misc]
    shown = next(a.help for a in monitor_parser()._actions if "--config" in a.option_strings)
    assert all(key in shown for key in (*TargetConfig.model_fields, *MonitorConfig.model_fields))


def test_the_readmes_monitor_config_and_its_failing_scenario_load(tmp_path, monkeypatch):
    """The README's `--config` example is a file the monitor takes as it stands (with the failing scenario it
    describes beside it), and its Prometheus snippet loads the rules file that exists."""
    from monitors.monitor import load_config, probes_from_config

    readme = ROOT / "README.md"
    blocks = ["\n".join(lines) for lang, _, lines in _fences(readme) if lang == "yaml"]
    config_text = next(b for b in blocks if "targets:" in b and "url:" in b)
    prom = yaml.safe_load(next(b for b in blocks if "rule_files:" in b))
    assert [Path(f).name for f in prom["rule_files"]] == ["chatprobe.rules.yml"]
    assert (ROOT / "monitors" / "rules" / "chatprobe.rules.yml").is_file()
    said = " ".join(readme.read_text(encoding="utf-8").split())
    message = re.search(r'`message: "([^"]+)"`', said)
    assert message and "#fail-agent" in message.group(1)
    probe = (ROOT / "scenarios" / "probe.yaml").read_text(encoding="utf-8")
    (tmp_path / "fatal.yaml").write_text(probe.replace("name: probe", "name: fatal").replace(
        'message: "What is 17 * 23?"', f'message: "{message.group(1)}"'))
    config = tmp_path / "monitor.yaml"
    config.write_text(config_text)
    for name in re.findall(r"(?:token_env|jwt_secret_env|header_env: \{[\w-]+): (\w+)", config_text):
        monkeypatch.setenv(name, "a-secret-of-32-bytes-or-more-for-hs256")
    probes = probes_from_config(str(config), load_config(str(config)), 10.0)
    assert {p.key for p in probes} == {("chat-prod", "probe"), ("chat-staging", "probe"), ("chat-staging", "fatal")}
    assert next(p.scenario for p in probes if p.key[1] == "fatal").message.startswith("#fail-agent")


# --- TLS failures --------------------------------------------------------------------------------------------------

# The verification errors of the table's rows, as OpenSSL numbers them (X509_V_ERR_*).
VERIFY_CODES = {"unable to get local issuer certificate": 20, "IP address mismatch": 64, "certificate has expired": 10}


def test_the_tls_failures_table_is_what_every_client_says():
    """docs/protocol.md's TLS failures: each row's reason is the one `base.tls_reason` gives for OpenSSL's error of
    that row (every client's words; `…` stands for the rest of OpenSSL's message)."""
    import ssl

    from harness.transports.base import tls_reason

    rows = _table(PROTOCOL_DOC, "### TLS failures")
    assert len(rows) >= 7, rows
    for what, cell in rows:
        said = "TLS: " + "".join(_code(cell))
        name = re.split(r"[ :(]", said.removeprefix("TLS: "), maxsplit=1)[0]
        if said.startswith("TLS: the server closed the connection"):
            exc: ssl.SSLError = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
            exc.reason = "UNEXPECTED_EOF_WHILE_READING"
        elif name == "CERTIFICATE_VERIFY_FAILED":
            message = re.search(r"\(([^)]*)\)", said).group(1)
            cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
            cert.reason = name
            cert.verify_message = message.replace(", …", ", for 127.0.0.1")
            cert.verify_code = next(code for text, code in VERIFY_CODES.items() if message.startswith(text))
            exc = cert
        else:
            exc = ssl.SSLError(1, "alert")
            exc.reason = name
        pattern = re.escape(said).replace("…", ".*")
        got = tls_reason(exc)
        assert re.fullmatch(pattern, got), f"docs/protocol.md, TLS failures, {what!r}: says {said!r}, the code {got!r}"
