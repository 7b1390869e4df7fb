"""What a person or a CI reads: the live view, the end-of-run tables, and JSON and JUnit XML files."""
from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .events import Outcome
from .sinks import Sink

if TYPE_CHECKING:
    from .checker import ChatResult
    from .runner import ScenarioRun


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    ms = v * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:,.0f} ms"


class LiveView(Sink):
    """Counts as chats finish; on a terminal, a rich live line (chats done, events/s, failures so far)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.outcomes: Counter = Counter()
        self.events = 0
        self.started = 0
        self.scenario = ""
        self.t0 = time.monotonic()
        self._live: Live | None = None

    def __enter__(self) -> "LiveView":
        if self.console.is_terminal:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=True,
                              get_renderable=self._render)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def _render(self) -> Text:
        done = sum(self.outcomes.values())
        rate = self.events / max(time.monotonic() - self.t0, 1e-6)
        bad = done - self.outcomes[Outcome.PASSED]
        return Text.assemble(
            (f"{self.scenario} ", "bold"), f"chats {done}/{self.started}  ", f"events/s {rate:,.0f}  ",
            ("failures " + str(bad), "red" if bad else "green"),
        )

    def chat_started(self, scenario: str) -> None:
        self.scenario = scenario
        self.started += 1

    def chat_finished(self, result: "ChatResult") -> None:
        self.outcomes[result.outcome] += 1
        self.events += result.events_received


def _timeline(result: "ChatResult", limit: int = 14) -> str:
    parts = []
    for i, e in enumerate(result.events[:limit]):
        role = e.role.value if e.role else e.wire_type
        seq = f"#{e.seq}" if e.seq is not None else ""
        parts.append(f"{(e.received_at - result.sent_at) * 1000:.0f}ms {role}{seq}")
    if result.events_received > limit:
        parts.append(f"… +{result.events_received - limit}")
    return " → ".join(parts) or "(no events)"


def print_summary(console: Console, runs: list["ScenarioRun"], worst: int = 3) -> None:
    table = Table(title="chatprobe results", show_lines=False)
    for col in ("scenario", "chats", "passed", "failed", "incompl.", "error", "missing %", "1st ev p50",
                "p95", "p99", "dur p95", "violations", "objectives"):
        table.add_column(col, justify="right" if col not in ("scenario", "violations", "objectives") else "left")
    for run in runs:
        st = run.stats
        viol = " ".join(f"{k}:{v}" for k, v in sorted(st.violations.items(), key=lambda kv: int(kv[0][1:]))) or "-"
        verdict = Text("met", "green") if run.passed else Text(
            "UNREACHABLE" if run.unreachable else f"FAILED ({len(run.failed_objectives)})", "bold red")
        table.add_row(
            run.scenario.name, str(st.chats), str(st.outcomes[Outcome.PASSED]), str(st.outcomes[Outcome.FAILED]),
            str(st.outcomes[Outcome.INCOMPLETE]), str(st.outcomes[Outcome.ERROR]), f"{st.missing_ratio * 100:.1f}",
            _ms(st.ttfe["p50"]), _ms(st.ttfe["p95"]), _ms(st.ttfe["p99"]), _ms(st.duration["p95"]), viol, verdict,
        )
    console.print(table)
    for run in runs:
        if run.passed:
            continue
        console.print(Text(f"\n{run.scenario.name}: objectives not met", style="bold red"))
        if run.stopped_early:
            console.print(escape(f"  stopped at its max_duration ({run.scenario.max_duration:g}s); chats in flight were judged as they stood"))
        if run.unreachable:
            kinds = Counter(r.error_kind for r in run.results)
            first = run.results[0].error if run.results else ""
            console.print(escape(f"  target unreachable: {dict(kinds)} — {first}"))
        for o in run.failed_objectives:
            console.print(escape(f"  ✗ {o.describe()}"))
        bad = [r for r in run.results if r.outcome is not Outcome.PASSED]
        bad.sort(key=lambda r: (r.outcome is not Outcome.INCOMPLETE, -len(r.violations)))
        for r in bad[:worst]:
            console.print(escape(f"  chat {r.chat_id} [{r.outcome.value}] {r.note or r.error or ''}".rstrip()))
            for v in r.violations[:6]:
                console.print(escape(f"      {v}"))
            if r.events:
                console.print(escape(f"      timeline: {_timeline(r)}"))


def write_html(path: str, runs: list["ScenarioRun"]) -> None:
    """A self-contained HTML page: the summary table, every objective, and each non-passing chat's violations
    and event timeline (rich's own HTML export of what a terminal would show, with more chats)."""
    from rich.terminal_theme import MONOKAI

    console = Console(record=True, width=160, file=open(os.devnull, "w"), force_terminal=True)
    print_summary(console, runs, worst=50)
    for run in runs:
        table = Table(title=f"{run.scenario.name}: objectives", title_justify="left")
        for col in ("objective", "value", "limit", "met"):
            table.add_column(col)
        for o in run.objectives:
            table.add_row(o.name, "n/a" if o.value is None else f"{o.value:.4g}", f"{o.op} {o.limit:g}",
                          Text("yes", "green") if o.ok else Text("NO", "bold red"))
        console.print(table)
    html = console.export_html(theme=MONOKAI, inline_styles=True)
    _atomic_write(path, html.replace("<head>", "<head>\n<title>chatprobe report</title>", 1))


def run_to_dict(run: "ScenarioRun", include_chats: bool = True) -> dict[str, Any]:
    d: dict[str, Any] = {
        "scenario": run.scenario.name,
        "target": run.target,
        "passed": run.passed,
        "unreachable": run.unreachable,
        "started_at": run.started_at,
        "elapsed_seconds": run.elapsed,
        "stopped_early": run.stopped_early,
        "stats": run.stats.to_dict(),
        "objectives": [
            {"name": o.name, "op": o.op, "limit": o.limit, "value": o.value, "ok": o.ok} for o in run.objectives
        ],
    }
    if include_chats:
        d["chats"] = [r.to_dict() for r in run.results]
    return d


def write_json(path: str, runs: list["ScenarioRun"]) -> None:
    doc = {"chatprobe": 1, "passed": all(r.passed for r in runs), "scenarios": [run_to_dict(r) for r in runs]}
    _atomic_write(path, json.dumps(doc, indent=1, default=str))


def write_junit(path: str, runs: list["ScenarioRun"]) -> None:
    """One test case per scenario; a failure lists the unmet objectives and the worst chats' reasons."""
    suites = ET.Element("testsuites", name="chatprobe")
    suite = ET.SubElement(
        suites, "testsuite", name="chatprobe", tests=str(len(runs)),
        failures=str(sum(1 for r in runs if not r.passed)), errors="0",
        time=f"{sum(r.elapsed for r in runs):.3f}",
    )
    for run in runs:
        case = ET.SubElement(suite, "testcase", classname=f"chatprobe.{run.target}", name=run.scenario.name,
                             time=f"{run.elapsed:.3f}")
        st = run.stats
        props = ET.SubElement(case, "properties")
        for k, v in (("chats", st.chats), ("passed", st.outcomes[Outcome.PASSED]),
                     ("missing_events_ratio", f"{st.missing_ratio:.4f}")):
            ET.SubElement(props, "property", name=k, value=str(v))
        if not run.passed:
            lines = [f"objective failed: {o.describe()}" for o in run.failed_objectives]
            if run.unreachable:
                lines.insert(0, "target unreachable")
            for r in [r for r in run.results if r.outcome is not Outcome.PASSED][:10]:
                reasons = "; ".join(str(v) for v in r.violations[:5]) or (r.note or r.error or "")
                lines.append(f"chat {r.chat_id} {r.outcome.value}: {reasons}")
            failure = ET.SubElement(case, "failure", message=lines[0] if lines else "objectives not met",
                                    type="ObjectiveFailed")
            failure.text = "\n".join(lines)
        out = ET.SubElement(case, "system-out")
        out.text = (f"chats={st.chats} outcomes={ {o.value: st.outcomes[o] for o in Outcome} } "
                    f"violations={dict(st.violations)}")
    ET.indent(suites)
    _atomic_write(path, ET.tostring(suites, encoding="unicode", xml_declaration=True))


def _atomic_write(path: str, text: str) -> None:
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(p)
