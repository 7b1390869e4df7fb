"""What a person or a CI reads: the live view, the end-of-run tables, and JSON and JUnit XML files."""
from __future__ import annotations

import json
import math
import re
import time
from collections import Counter, deque
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import redact
from .events import Outcome
from .safefile import write_report
from .sinks import Sink
from .stats import percentile

if TYPE_CHECKING:
    from rich.live import Live

    from .checker import ChatResult
    from .events import Violation
    from .results import ScenarioRun
    from .stats import ObjectiveResult


# A string from the server shown in a report or on the terminal: reports stay proportional to what they show.
FIELD_LIMIT = 1024
# Past this many chats in all, --json is written compact rather than indented.
INDENT_MAX_CHATS = 2000
# Integers past this are shown as strings: JSON parsers that read numbers as doubles would change them.
_MAX_JSON_INT = 2**53


def _c(value: object, limit: int | None = FIELD_LIMIT) -> str:
    """Any text that reaches a report or the terminal: secrets redacted, controls escaped, length bounded."""
    return redact.clean(value if type(value) is str else str(value), limit)


def _t(value: object, style: str = "") -> Text:
    # Text, never a str: rich would read `[...]` in a server's string as markup.
    return Text(_c(value), style)


def json_safe(obj: Any) -> Any:
    """The value as strict JSON can carry it, clean: strings through `_c`, NaN and ±Infinity as null, huge
    integers as strings, anything else as its cleaned text."""
    if isinstance(obj, str):
        return _c(obj)
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        return obj if -_MAX_JSON_INT <= obj <= _MAX_JSON_INT else _c(obj, 64)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {_c(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return _c(obj)


def iso(epoch: float) -> str:
    """Epoch seconds as ISO 8601 in UTC, to the millisecond: 2026-12-02T01:33:15.123Z."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    ms = v * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:,.0f} ms"


class LiveView(Sink):
    """Progress of one scenario as it runs, like k6's: elapsed time, chats done / planned, in flight, the live p95
    first-event time and failures by rule. A rich live line on a terminal; `progress_line()` for a plain log."""

    RECENT = 1000  # first-event times the live p95 is taken over (the latest ones)

    def __init__(self, console: Console, scenario: str = "", planned: int | None = None) -> None:
        self.console = console
        self.scenario = scenario
        self.planned = planned
        self.outcomes: Counter[str] = Counter()
        self.rules: Counter[str] = Counter()
        self.recent_ttfe: deque[float] = deque(maxlen=self.RECENT)
        self.events = 0
        self.started = 0
        self.t0 = time.monotonic()
        self._live: Live | None = None

    def __enter__(self) -> Self:
        if self.console.is_interactive:
            from rich.live import Live  # a terminal's only: not imported by a run in CI or with -q

            self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=True,
                              get_renderable=self._render)
            self._live.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)

    def snapshot(self) -> dict[str, Any]:
        done = sum(self.outcomes.values())
        p95 = percentile(list(self.recent_ttfe), 95) if self.recent_ttfe else None
        return {"elapsed": time.monotonic() - self.t0, "done": done, "planned": self.planned,
                "in_flight": self.started - done, "p95": p95, "failed": done - self.outcomes[Outcome.PASSED],
                "rules": sorted(self.rules.items(), key=lambda kv: _rule_order(kv[0]))}

    def progress_line(self, final: bool = False) -> str:
        """One line with no escape codes, for a log that is not a terminal."""
        s = self.snapshot()
        planned = f"/{s['planned']}" if s["planned"] else ""
        rules = " ".join(f"{k}:{v}" for k, v in s["rules"]) or "none"
        return (f"{redact.printable(self.scenario)[:80]} {'done' if final else 'running'} {s['elapsed']:.0f}s: "
                f"chats {s['done']}{planned}, in flight {s['in_flight']}, first event p95 {_ms(s['p95'])}, "
                f"failed {s['failed']} (rules {rules})")

    def _render(self) -> Text:
        s = self.snapshot()
        planned = f"/{s['planned']}" if s["planned"] else ""
        rules = " ".join(f"{k}:{v}" for k, v in s["rules"])
        return Text.assemble(
            # The scenario's name is config, not the server's: escaped only (no secret search 4 times a second).
            (f"{redact.printable(self.scenario)[:80]} ", "bold"), f"{s['elapsed']:.0f}s  ",
            f"chats {s['done']}{planned}  in flight {s['in_flight']}  ", f"1st event p95 {_ms(s['p95'])}  ",
            ("failed " + str(s["failed"]) + (f" ({rules})" if rules else ""), "red" if s["failed"] else "green"),
        )

    def chat_started(self, scenario: str) -> None:
        self.scenario = self.scenario or scenario
        self.started += 1

    def chat_finished(self, result: ChatResult) -> None:
        if result.further_run:  # counted in its chat (checker.fold_further), never started as one
            return
        self.outcomes[result.outcome] += 1
        self.events += result.events_received
        if result.time_to_first_event is not None:
            self.recent_ttfe.append(result.time_to_first_event)
        if result.violations or result.violations_not_listed:  # a clean chat (most) makes no Counter to read
            for rule, n in result.rule_counts().items():
                self.rules[rule] += n

    def connection_violation(self, scenario: str, violation: Violation) -> None:
        self.rules[str(violation.rule)] += 1  # a connection's own: in the rules, in no chat


def _timeline(result: ChatResult, limit: int = 14) -> str:
    parts = []
    for e in result.events[:limit]:
        role = e.role.value if e.role else _c(e.wire_type, 64)
        seq = f"#{_c(e.seq, 24)}" if e.seq is not None else ""
        parts.append(f"{(e.received_at - result.sent_at) * 1000:.0f}ms {role}{seq}")
    if result.events_received > limit:
        parts.append(f"… +{result.events_received - limit}")
    return " → ".join(parts) or "(no events)"


def print_summary(console: Console, runs: list[ScenarioRun], worst: int = 3, *, table_only: bool = False) -> None:
    """The verdict table, then (unless `table_only`, the CLI's -q) every objective in effect and, for each failed
    scenario, its unmet objectives and worst chats. Every string that came from the server (reasons, wire types,
    errors, notes) is redacted and escaped before it is printed."""
    table = Table(title="chatprobe results", show_lines=False)
    for col in ("scenario", "chats", "passed", "failed", "incompl.", "error", "missing %", "1st ev p50",
                "p95", "p99", "dur p95", "violations", "objectives"):
        table.add_column(col, justify="right" if col not in ("scenario", "violations", "objectives") else "left")
    for run in runs:
        st = run.stats
        viol = " ".join(f"{k}:{v}" for k, v in sorted(st.violations.items(), key=lambda kv: _rule_order(kv[0]))) or "-"
        verdict = Text("met", "green") if run.passed else Text("NOT RUN", "yellow") if run.not_run else Text(
            "UNREACHABLE" if run.unreachable else f"FAILED ({len(run.failed_objectives)})", "bold red")
        table.add_row(
            _t(run.scenario.name), str(st.chats), str(st.outcomes[Outcome.PASSED]), str(st.outcomes[Outcome.FAILED]),
            str(st.outcomes[Outcome.INCOMPLETE]), str(st.outcomes[Outcome.ERROR]), f"{st.missing_ratio * 100:.1f}",
            _ms(st.ttfe["p50"]), _ms(st.ttfe["p95"]), _ms(st.ttfe["p99"]), _ms(st.duration["p95"]), _t(viol), verdict,
        )
    console.print(table)
    if table_only:
        return
    # Every objective in effect, the defaults included: what "met" was measured against.
    for run in runs:
        marks = "  ".join(("✓ " if o.ok else "✗ ") + _objective(o) for o in run.objectives)
        console.print(_t(f"{_c(run.scenario.name)} objectives: {marks or 'none'}"))
    for run in runs:
        if run.stages:
            print_stages(console, run)  # with the run's warnings
        else:
            for warning in run.warnings:
                console.print(Text(f"{_c(run.scenario.name)}: warning: {_c(warning)}", "yellow"))
    for run in runs:  # advice apart from the contract (docs/profiles.md): shown, never a failure
        advice = Counter(w.reason for r in run.results for w in r.warnings)
        if advice:
            chats = sum(1 for r in run.results if r.warnings)
            console.print(Text(f"\n{_c(run.scenario.name)}: advice in {chats} chat(s) (warnings, not failures)",
                               style="yellow"))
            for reason, n in advice.most_common(3):
                console.print(_t(f"  ! {_c(reason)}" + (f" (x{n})" if n > 1 else "")))
    for run in runs:  # violations of connections' own: a leak after the last chat is shown, failing or not
        if run.stats.connection_violations:
            console.print(Text(f"\n{_c(run.scenario.name)}: {_connection_line(run)}", style="bold red"))
            for v in run.connection_violations[:6]:
                console.print(_t(f"  ! {_c(v)}"))
    for run in runs:
        if run.passed:
            continue
        console.print(Text(f"\n{_c(run.scenario.name)}: objectives not met", style="bold red"))
        if run.not_run:  # no chat, so no objective could be met: that says nothing more
            console.print(Text(f"  {run.not_run}"))
            continue
        if not run.results:  # no chat to list: why there is none (a recording with no chat of the profile)
            for error in run.errors[:3]:
                console.print(_t(f"  {_c(error)}"))
        if run.stopped_early:
            console.print(Text(f"  stopped early: {run.stopped_by}; chats in flight were judged as they stood"))
        if run.unreachable:
            first = run.results[0].error if run.results else ""
            console.print(_t(f"  target unreachable: {dict(run.stats.error_kinds)} — {_c(first)}"))
        for o in run.failed_objectives:
            console.print(_t(f"  ✗ {o.describe()}"))
        for r in _worst(run, worst):
            console.print(_t(f"  chat {_c(r.chat_id)} [{r.outcome.value}] {_c(r.note or r.error or '')}".rstrip()))
            for v in r.violations[:6]:
                console.print(_t(f"      {_c(v)}"))
            if r.events:
                console.print(_t(f"      timeline: {_timeline(r)}"))


def _connection_line(run: ScenarioRun) -> str:
    """What a run says of its connections' own violations (ScenarioRun.connection_violations)."""
    counts = run.stats.connection_violations
    rules = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: _rule_order(kv[0])))
    return (f"violations on connections after their last chat ({rules}): another user's events or malformed frames "
            "that no chat was on screen for, in no chat's verdict")


def print_stages(console: Console, run: ScenarioRun) -> None:
    """A shaped run, stage by stage: the load asked (and, open model, achieved), chats, outcomes, first-event
    percentiles and dropped chats; then where the first-event SLO broke, and any rate the generator missed."""
    rate = run.stages[0].kind == "rate"
    table = Table(title=f"{_c(run.scenario.name)} by stage", show_lines=False)
    cols = ["stage", "time", "load", *(["achieved/s", "late"] if rate else []), "chats", "passed", "failed",
            "incompl.", "error", "dropped", "1st ev p50", "p95", "p99"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("time", "load") else "right")
    limit = run.slo_limit
    for st in run.stages:
        p95 = st.ttfe.get("p95")
        row = [str(st.index + 1), f"{st.start:g}-{st.end:g}s", st.label]
        if rate:
            row += ["-" if st.achieved_rate is None else f"{st.achieved_rate:.4g}", str(st.late)]
        row += [str(st.chats), str(st.outcomes[Outcome.PASSED]), str(st.outcomes[Outcome.FAILED]),
                str(st.outcomes[Outcome.INCOMPLETE]), str(st.outcomes[Outcome.ERROR]), str(st.dropped),
                _ms(st.ttfe.get("p50"))]
        cells: list[str | Text] = [*row, Text(_ms(p95), "bold red" if p95 is not None and p95 > limit else ""),
                                   _ms(st.ttfe.get("p99"))]
        table.add_row(*cells)
    console.print(table)
    knee = run.knee
    slo = f"first-event p95 <= {limit:g} s"
    if knee is None:
        console.print(Text(f"{_c(run.scenario.name)}: {slo} held through every stage"))
    else:
        at = f" at {knee.asked_rate:g} chats/s" if knee.asked_rate is not None else f" at {knee.label}"
        console.print(Text(f"{_c(run.scenario.name)}: the knee: {slo} broke in stage {knee.index + 1}{at} "
                           f"(p95 {_ms(knee.ttfe.get('p95'))}, {knee.dropped} dropped)", "bold"))
    if run.stats.dropped:
        console.print(Text(f"{_c(run.scenario.name)}: {run.stats.dropped} chats dropped (due while max_in_flight "
                           f"{run.scenario.max_in_flight} were in flight; never started)", "yellow"))
    for warning in run.warnings:
        console.print(Text(f"{_c(run.scenario.name)}: warning: {_c(warning)}", "yellow"))


def knee_to_dict(run: ScenarioRun) -> dict[str, Any] | None:
    knee = run.knee
    if knee is None:
        return None
    return {"stage": knee.index + 1, "label": knee.label, "rate": knee.asked_rate, "limit": run.slo_limit,
            "p95": knee.ttfe.get("p95")}


def _objective(o: ObjectiveResult) -> str:
    seconds = o.name.startswith(("time_to_first_event", "chat_duration"))
    value = "n/a" if o.value is None else _ms(o.value) if seconds else f"{o.value:.4g}"
    limit = (f"{o.limit:g} s" if o.limit >= 1 else _ms(o.limit)) if seconds else f"{o.limit:g}"
    return f"{o.name} {o.op} {limit} ({value})"


def _rule_order(rule: str) -> tuple[int, str]:
    return (int(rule[1:]), rule) if rule[1:].isdigit() else (10**6, rule)


def why_failed(run: ScenarioRun) -> str:
    """One line of why a run that reached its target failed, for a log line (`chatprobe monitor`): its violations by
    rule and the most telling chat's first violation (else its note or error), or "" when no chat says more."""
    parts = []
    if run.stats.violations:
        counts = sorted(run.stats.violations.items(), key=lambda kv: _rule_order(kv[0]))
        parts.append("violations " + ", ".join(f"{k} x{v}" for k, v in counts))
    for r in _worst(run, 1):
        why = str(r.violations[0]) if r.violations else (r.note or r.error or "")
        parts.append(f"chat {r.outcome.value}" + (f": {why}" if why else ""))
    return "; ".join(parts)


def _worst(run: ScenarioRun, n: int) -> list[ChatResult]:
    """The `n` chats most worth reading: incomplete ones first, then those with the most violations."""
    bad = [r for r in run.results if r.outcome is not Outcome.PASSED]
    bad.sort(key=lambda r: (r.outcome is not Outcome.INCOMPLETE, -len(r.violations)))
    return bad[:n]


def write_html(path: str, runs: list[ScenarioRun]) -> None:
    """A self-contained HTML page (harness/html_report.py): per scenario the charts, the objectives and the event
    timelines of a sample of its failing chats, drawn at write time as static SVG (no script, works offline)."""
    # Imported only when asked: altair and vl-convert take a while to load.
    from .html_report import write_html as write_charts

    write_charts(path, runs)


def run_to_dict(run: ScenarioRun, include_chats: bool = True) -> dict[str, Any]:
    """One scenario's run as strict, clean JSON values (see docs/json-report.md and the schema it names)."""
    finished = run.started_at + run.elapsed
    d: dict[str, Any] = {
        "scenario": run.scenario.name,
        "target": run.target,
        "passed": run.passed,
        "unreachable": run.unreachable,
        "started_at": run.started_at,
        "started_at_iso": iso(run.started_at),
        "finished_at": finished,
        "finished_at_iso": iso(finished),
        "elapsed_seconds": run.elapsed,
        "stopped_early": run.stopped_early,
        "errors": list(run.errors),
        "warnings": list(run.warnings),
        "stats": run.stats.to_dict(),
        "objectives": [
            {"name": o.name, "op": o.op, "limit": o.limit, "value": o.value, "ok": o.ok} for o in run.objectives
        ],
    }
    # Violations of connections' own (no chat's): what came after a connection's last chat, counted in
    # stats.violations and stats.connection_violations.
    d["connection_violations"] = [{"rule": v.rule, "reason": v.reason} for v in run.connection_violations]
    if run.stages:
        d["stages"] = [st.to_dict() for st in run.stages]
        d["knee"] = knee_to_dict(run)
    if include_chats:
        d["chats"] = [r.to_dict() for r in run.results]
    safe: dict[str, Any] = json_safe(d)
    return safe


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("chatprobe")
    except PackageNotFoundError:
        return "unknown"


def write_json(path: str, runs: list[ScenarioRun]) -> None:
    """The whole run as one JSON document, valid against harness/schemas/result.schema.json: strict JSON (no NaN
    or Infinity), every server string redacted and escaped."""
    now = time.time()
    doc = {
        "chatprobe": 1, "version": _version(), "generated_at": now, "generated_at_iso": iso(now),
        "passed": bool(runs) and all(r.passed for r in runs), "scenarios": [run_to_dict(r) for r in runs],
    }
    # Indented for a person up to a few thousand chats; past that compact, so that json's C encoder does the work
    # (the indenting encoder is pure Python: seconds for 10,000 chats). `jq .` indents it on demand.
    indent = 1 if sum(len(r.results) for r in runs) <= INDENT_MAX_CHATS else None
    _atomic_write(path, json.dumps(doc, indent=indent, allow_nan=False, ensure_ascii=False) + "\n")


def _classname(target: str) -> str:
    """A JUnit class name from the target's label: CIs split class names at dots (package.Class), so the host's
    dots and the port's colon must not reach it."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", redact.scrub(target)).strip("_")[:100] or "target"


def _could_not_run(run: ScenarioRun) -> str | None:
    """Why the scenario could not be judged at all (a JUnit <error>, not a <failure>), or None."""
    # From the counts of every chat (run.stats); the listed chats (results.Listing) give the first error's text.
    kinds = run.stats.error_kinds
    first = next((r.error for r in run.results if r.error), "")
    if run.unreachable:
        return f"target unreachable ({', '.join(f'{k} x{n}' for k, n in kinds.most_common())}): {first}"
    if run.errors and not run.results:
        return f"the scenario could not run: {run.errors[0]}"
    if not run.results and not run.stats.chats:
        return "the scenario could not run: no chat was started"
    if run.stats.chats and run.stats.outcomes[Outcome.ERROR] == run.stats.chats:
        return f"no chat could be held ({', '.join(f'{k} x{n}' for k, n in kinds.most_common())}): {first}"
    return None


def _notes(run: ScenarioRun, limit: int) -> list[str]:
    """A run's errors and warnings as lines, the first `limit` of each: what was not judged and why (a recording
    without times, a check interrupted mid-file, chats counted but not listed, frames not recorded)."""
    lines = []
    for kind, notes in (("error", run.errors), ("warning", run.warnings)):
        lines += [f"{kind}: {note}" for note in notes[:limit]]
        if len(notes) > limit:
            lines.append(f"… and {len(notes) - limit} more {kind}s")
    return lines


def _run_text(run: ScenarioRun, worst: int = 10) -> str:
    """What a person reads in the CI's test view: counts, latencies, violations, objectives, the worst chats."""
    st = run.stats
    lines = [
        f"scenario {run.scenario.name} against {run.target}: {st.chats} chats in {run.elapsed:.1f}s"
        + run.stop_note,
        *_notes(run, worst),
        "outcomes: " + ", ".join(f"{o.value} {st.outcomes[o]}" for o in Outcome),
        (f"time to first event: p50 {_ms(st.ttfe.get('p50'))}, p95 {_ms(st.ttfe.get('p95'))}, "
         f"p99 {_ms(st.ttfe.get('p99'))}; chat duration p95 {_ms(st.duration.get('p95'))}"),
        "violations: " + (", ".join(f"{k} x{v}" for k, v in sorted(st.violations.items(),
                                                                    key=lambda kv: _rule_order(kv[0]))) or "none"),
        "objectives:",
    ]
    lines += [f"  {'ok  ' if o.ok else 'FAIL'} {o.describe()}" for o in run.objectives]
    if st.connection_violations:
        lines.append(_connection_line(run) + ":")
        lines += [f"  {v}" for v in run.connection_violations[:worst]]
    bad = _worst(run, worst)
    if bad:
        n_bad = st.chats - st.outcomes[Outcome.PASSED]
        lines.append(f"chats not passed (the {len(bad)} worst of {n_bad}):")
        for r in bad:
            lines.append(f"  chat {r.chat_id} [{r.outcome.value}] {r.note or r.error or ''}".rstrip())
            lines += [f"    {v}" for v in r.violations[:5]]
            if r.events:
                lines.append(f"    timeline: {_timeline(r)}")
    return "\n".join(_c(line, 4 * FIELD_LIMIT) for line in lines)


def write_junit(path: str, runs: list[ScenarioRun]) -> None:
    """JUnit XML valid against the usual JUnit XSD (Jenkins xunit's junit-10.xsd): one <testsuite> per target,
    one <testcase> per scenario; an unreachable target or a scenario that could not run is an <error>, an unmet
    objective a <failure>; <properties> on the suite (the only place the schema allows them); every string
    redacted and escaped, so the XML always parses."""
    import platform
    import xml.etree.ElementTree as ET  # only with --junit

    groups: dict[str, list[ScenarioRun]] = {}
    for run in runs:
        groups.setdefault(run.target, []).append(run)
    # A scenario the run was stopped before is a <skipped> (in neither count); one that could not be judged an <error>.
    verdicts = {id(run): ("" if run.not_run else _could_not_run(run), run.passed) for run in runs}
    n_errors = sum(1 for e, _ in verdicts.values() if e)
    n_failures = sum(1 for r in runs if not r.not_run and not verdicts[id(r)][0] and not r.passed)
    root = ET.Element("testsuites", name="chatprobe", tests=str(len(runs)), failures=str(n_failures),
                      errors=str(n_errors), time=f"{sum(r.elapsed for r in runs):.3f}")
    host = _c(platform.node(), 255) or "localhost"
    for i, (target, truns) in enumerate(groups.items()):
        cls = f"chatprobe.{_classname(target)}"
        errors = sum(1 for r in truns if verdicts[id(r)][0])
        failures = sum(1 for r in truns if not r.not_run and not verdicts[id(r)][0] and not verdicts[id(r)][1])
        skipped = sum(1 for r in truns if r.not_run)
        suite = ET.SubElement(
            root, "testsuite", name=cls, tests=str(len(truns)), failures=str(failures), errors=str(errors),
            skipped=str(skipped), time=f"{sum(r.elapsed for r in truns):.3f}",
            # Ant's form (no zone, UTC): what Jenkins, GitLab and the Ant schema all read.
            timestamp=datetime.fromtimestamp(min(r.started_at for r in truns), UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            hostname=host, id=str(i), package="chatprobe",
        )
        props = ET.SubElement(suite, "properties")
        prop_items: list[tuple[str, object]] = [("target", target), ("chatprobe.version", _version())]
        for run in truns:
            st = run.stats
            name = run.scenario.name
            prop_items += [
                (f"{name}.chats", st.chats), (f"{name}.passed", st.outcomes[Outcome.PASSED]),
                (f"{name}.missing_events_ratio", f"{st.missing_ratio:.4f}"),
                (f"{name}.time_to_first_event.p95", "" if st.ttfe.get("p95") is None else f"{st.ttfe['p95']:.4f}"),
            ]
        for k, v in prop_items:
            ET.SubElement(props, "property", name=_c(k, 200), value=_c(v, FIELD_LIMIT))
        for run in truns:
            error, passed = verdicts[id(run)]
            case = ET.SubElement(suite, "testcase", name=_c(run.scenario.name, 200), classname=cls,
                                 time=f"{run.elapsed:.3f}")
            if run.not_run:
                ET.SubElement(case, "skipped", message=_c(run.not_run, 500))
            elif error:
                el = ET.SubElement(case, "error", type="Unreachable" if run.unreachable else "CouldNotRun",
                                   message=_c(error, 500))
                el.text = _c(error, 4 * FIELD_LIMIT) + "\n\n" + _run_text(run)
            elif not passed:
                failed = run.failed_objectives
                lines = [f"objective failed: {o.describe()}" for o in failed]
                lines += [f"connection, after its last chat: {v}" for v in run.connection_violations[:10]]
                for r in _worst(run, 10):
                    reasons = "; ".join(str(v) for v in r.violations[:5]) or (r.note or r.error or "")
                    lines.append(f"chat {r.chat_id} {r.outcome.value}: {reasons}")
                el = ET.SubElement(case, "failure", type="ObjectiveFailed",
                                   message=_c(lines[0] if lines else "objectives not met", 500))
                el.text = "\n".join(_c(line, 4 * FIELD_LIMIT) for line in lines)
            out = ET.SubElement(case, "system-out")
            out.text = _run_text(run)
    ET.indent(root)
    _atomic_write(path, ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")


def _atomic_write(path: str, text: str) -> None:
    """Every report writer's one way out: see `harness.safefile.write_report` (symlinks followed, FIFOs and
    devices written in place, regular files replaced atomically)."""
    write_report(path, text)
