"""The HTML report: one self-contained file per run with each scenario's charts, objectives and the event
timelines of a sample of its failing chats; static SVG drawn at write time, so it needs no script and no network."""
from __future__ import annotations

# Why Vega-Lite (altair) rendered to SVG by vl-convert, and not plotly or pyecharts (measured):
# plotly inlines plotly.min.js (4,815,814 bytes in plotly 7.1) into every report and draws only once that script
# runs; pyecharts ships no echarts.js (its pages load it from a CDN: blank offline); vl-convert renders a chart in
# 15-60 ms to an SVG of 5-60 kB, so the report of a 10,000-chat run (939 failing, 20 drawn) is 438 kB of plain
# HTML+SVG, written in 2-5 s, that opens with scripts off (a mail client, a CI artifact viewer) and has no script
# to fail. The price: a 34 MB wheel (vl-convert bundles V8) and no hover tooltips, so every number a tooltip would
# give is in a table or a caption beside its chart.
import bisect
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import altair as alt
import vl_convert as vlc
from jinja2 import Environment
from markupsafe import Markup

from . import redact
from .events import RULES, Outcome, Role
from .safefile import write_report

if TYPE_CHECKING:
    from .checker import ChatResult
    from .results import ScenarioRun
    from .stats import StageStats

# Failing chats drawn per scenario: a report of a 10,000-chat run stays a few hundred kB.
FAILING_SAMPLE = 20
# Events drawn per chat timeline (a flooding server's chat keeps up to 10,000); the rest are counted in the caption.
TIMELINE_EVENTS = 300
VIOLATIONS_LISTED = 12
TTFE_BINS = 40
TIME_BUCKETS = 60

OUTCOME_COLORS = {Outcome.PASSED: "#2e7d32", Outcome.FAILED: "#c62828", Outcome.INCOMPLETE: "#ef6c00",
                  Outcome.ERROR: "#616161"}
OTHER_LANE = "(no role)"
LANES = [r.value for r in Role] + [OTHER_LANE]
WIDTH = 760
# A string from the server shown in the report, at most this long (the terminal and JSON reports use the same).
FIELD_LIMIT = 1024


def write_html(path: str, runs: list[ScenarioRun]) -> None:
    """The report of these runs at `path` (through safefile, like every report). Raises OSError if it cannot."""
    t0 = time.perf_counter()
    # One anchor a section: runs of one name (`check a/run.jsonl b/run.jsonl`) are s-NAME, s-NAME-2, … in order.
    anchors: set[str] = set()
    sections = []
    for run in runs:
        anchor, n = f"s-{run.scenario.name}", 1
        while anchor in anchors:
            n += 1
            anchor = f"s-{run.scenario.name}-{n}"
        anchors.add(anchor)
        sections.append(_scenario(run, anchor))
    page = _TEMPLATE.render(
        runs=runs, sections=sections, passed=bool(runs) and all(r.passed for r in runs),
        generated=_iso(time.time()), write_seconds=time.perf_counter() - t0,
    )
    write_report(path, page)


# ---- one scenario --------------------------------------------------------------------------------------------

@dataclass
class _Chat:
    """One failing chat as the page shows it: its result, its timeline's SVG, caption and violations listed."""

    result: ChatResult
    svg: Markup
    caption: list[str]
    violations: list[str]
    more_violations: int


@dataclass
class _Section:
    """One scenario's part of the page: its facts, charts, rule table, own violations and failing chats."""

    run: ScenarioRun
    anchor: str
    facts: list[tuple[str, str]]
    partial: str
    ttfe: Markup
    over_time: Markup
    by_rule: Markup
    rule_rows: list[tuple[str, str, int]]
    own: list[str]  # the connections' own violations listed (ScenarioRun.connection_violations), at most VIOLATIONS_LISTED
    own_total: int  # ... of how many (stats.connection_violations)
    failing_total: int
    chats: list[_Chat]
    stages: list[StageStats]
    stage_chart: Markup
    knee: str


def _scenario(run: ScenarioRun, anchor: str) -> _Section:
    limit = float(run.scenario.expect.first_event_limit)
    results = run.results
    failing = [r for r in results if r.outcome is not Outcome.PASSED]
    st = run.stats
    # A recording judged offline or an interrupted run may list fewer chats than it counted: the charts say so.
    partial = (f"The charts are drawn from the {len(results):,} chats listed; the figures above count all "
               f"{st.chats:,}.") if len(results) < st.chats else ""
    facts = [
        ("target", run.target),
        ("started", _iso(run.started_at)),
        ("elapsed", f"{run.elapsed:.1f} s" + run.stop_note),
        ("chats", " · ".join(f"{st.outcomes[o]:,} {o.value}" for o in Outcome) + f" (of {st.chats:,})"),
        ("events", f"{st.events:,}"),
        ("first event", " · ".join(f"{k} {_ms(st.ttfe.get(k))}" for k in ("p50", "p95", "p99", "max"))),
        ("chat duration", " · ".join(f"{k} {_ms(st.duration.get(k))}" for k in ("p50", "p95", "max"))),
        ("missing events", f"{st.missing_chats:,} chats ({st.missing_ratio * 100:.2f}%)"),
    ]
    facts += [("error", e) for e in run.errors]
    rules = sorted(st.violations.items(), key=lambda kv: _rule_key(kv[0]))
    return _Section(
        run=run, anchor=anchor, facts=facts, partial=partial,
        ttfe=_ttfe_chart([r.time_to_first_event for r in results if r.time_to_first_event is not None], limit),
        over_time=_over_time_chart(results),
        by_rule=_rules_chart(rules),
        rule_rows=[(rule, RULES.get(rule, ""), n) for rule, n in rules],
        own=[str(v) for v in run.connection_violations[:VIOLATIONS_LISTED]],
        own_total=max(sum(st.connection_violations.values()), len(run.connection_violations)),
        failing_total=max(len(failing), st.chats - st.outcomes[Outcome.PASSED]),
        chats=[_chat(r, limit) for r in sample_failing(failing, FAILING_SAMPLE)],
        stages=run.stages, stage_chart=_stage_chart(run.stages, run.slo_limit) if run.stages else Markup(""),
        knee=_knee_text(run) if run.stages else "",
    )


def _knee_text(run: ScenarioRun) -> str:
    knee, limit = run.knee, run.slo_limit
    if knee is None:
        return f"First-event p95 stayed within {limit:g} s in every stage."
    at = f"{knee.asked_rate:g} chats/s" if knee.asked_rate is not None else knee.label
    return (f"The knee: first-event p95 crossed {limit:g} s in stage {knee.index + 1} ({at}): "
            f"p95 {_ms(knee.ttfe.get('p95'))}, {knee.dropped:,} chats dropped.")


def _stage_chart(stages: list[StageStats], limit: float) -> Markup:
    """First-event p95 by stage (the load on the x axis, in stage order), red past the limit, the limit a rule."""
    rows = [{"stage": f"{st.index + 1}: {st.label}", "p95": st.ttfe.get("p95"), "order": st.index,
             "side": "over the limit" if (st.ttfe.get("p95") or 0) > limit else "within the limit"}
            for st in stages if st.ttfe.get("p95") is not None]
    if not rows:
        return Markup('<p class="empty">No stage had a chat with a first event.</p>')
    order = [f"{st.index + 1}: {st.label}" for st in stages]
    bars = alt.Chart(alt.Data(values=rows)).mark_bar().encode(
        x=alt.X("stage:N", sort=order, title="stage: load", axis=alt.Axis(labelAngle=0, labelLimit=160)),
        y=alt.Y("p95:Q", title="first event p95 (s)"),
        color=alt.Color("side:N", scale=alt.Scale(domain=["within the limit", "over the limit"],
                                                  range=["#1565c0", "#c62828"]),
                        legend=alt.Legend(title=None, orient="top", labelLimit=300, columnPadding=24)),
    )
    mark = alt.Data(values=[{"y": limit, "label": f"{limit:g} s limit"}])
    rule = alt.Chart(mark).mark_rule(color="#c62828", strokeDash=[6, 3], strokeWidth=2).encode(y="y:Q")
    return _svg((bars + rule).properties(width=WIDTH, height=180))


def sample_failing(failing: list[ChatResult], n: int) -> list[ChatResult]:
    """Up to n chats, round-robin over kinds (outcome and first rule broken) so a rare failure is not crowded out
    by a frequent one; within a kind, in the order the chats finished."""
    kinds: dict[tuple[str, str], list[ChatResult]] = {}
    for r in failing:
        first = min((v.rule for v in r.violations), key=_rule_key, default=r.error_kind or "")
        kinds.setdefault((r.outcome.value, first), []).append(r)
    queues = [iter(q) for q in kinds.values()]
    picked: list[ChatResult] = []
    while queues and len(picked) < n:
        for q in list(queues):
            nxt = next(q, None)
            if nxt is None:
                queues.remove(q)
            elif len(picked) < n:
                picked.append(nxt)
    return picked


# ---- charts: aggregated in Python first, so a chart's data is bounded whatever the number of chats ----------

def _svg(chart: alt.TopLevelMixin) -> Markup:
    # Padding: vl-convert measures text with its own fonts, the browser draws it with the system's, a little wider.
    spec = (chart.properties(padding={"left": 18, "right": 18, "top": 6, "bottom": 6})
            .configure_axis(labelSeparation=6).to_dict(validate=False))
    svg = vlc.vegalite_to_svg(spec)
    # vl-convert escapes every string it draws (labels, aria-labels), so its output is safe to embed as is.
    return Markup(svg)


def _ttfe_chart(values: list[float], limit: float) -> Markup:
    """Chats by time to first event, on log-spaced bins (milliseconds and seconds both resolved), the limit a rule."""
    if not values:
        return Markup('<p class="empty">No chat received a first event.</p>')
    lo = max(min(values), 1e-4)
    hi = max(max(values), limit)
    lo, hi = lo / 1.05, hi * 1.05
    step = (math.log10(hi) - math.log10(lo)) / TTFE_BINS
    edges = [10 ** (math.log10(lo) + i * step) for i in range(TTFE_BINS + 1)]
    counts = [0] * TTFE_BINS
    for v in values:
        counts[min(max(bisect.bisect_right(edges, v) - 1, 0), TTFE_BINS - 1)] += 1
    rows = [{"from": edges[i], "to": edges[i + 1], "chats": n,
             "side": "over the limit" if edges[i + 1] > limit else "within the limit"}
            for i, n in enumerate(counts) if n]
    bars = alt.Chart(alt.Data(values=rows)).mark_bar(stroke="white", strokeWidth=0.5).encode(
        x=alt.X("from:Q", bin="binned", scale=alt.Scale(type="log", domain=[lo, hi]),
                title="time to first event (s, log scale)"),
        x2="to:Q",
        y=alt.Y("chats:Q", title="chats"),
        color=alt.Color("side:N", scale=alt.Scale(domain=["within the limit", "over the limit"],
                                                  range=["#1565c0", "#c62828"]),
                        legend=alt.Legend(title=None, orient="top", labelLimit=300, columnPadding=24)),
    )
    mark = alt.Data(values=[{"x": limit, "label": f"{limit:g} s limit"}])
    rule = alt.Chart(mark).mark_rule(color="#c62828", strokeDash=[6, 3], strokeWidth=2).encode(x="x:Q")
    text = alt.Chart(mark).mark_text(align="left", dx=4, dy=-4, color="#c62828", baseline="top").encode(
        x="x:Q", y=alt.value(0), text="label:N")
    return _svg((bars + rule + text).properties(width=WIDTH, height=180))


def _over_time_chart(results: list[ChatResult]) -> Markup:
    """Chats by the time they were sent (since the first one), stacked by outcome."""
    if not results:
        return Markup('<p class="empty">No chats.</p>')
    t0 = min(r.sent_at for r in results)
    span = max(r.sent_at for r in results) - t0
    width = _nice(span / TIME_BUCKETS) if span > 0 else 1.0
    counts: Counter = Counter()
    for r in results:
        counts[(int((r.sent_at - t0) / width), r.outcome)] += 1
    rows = [{"from": b * width, "to": (b + 1) * width, "outcome": o.value, "chats": n,
             "order": list(Outcome).index(o)} for (b, o), n in sorted(counts.items(), key=lambda kv: kv[0][0])]
    chart = alt.Chart(alt.Data(values=rows)).mark_bar().encode(
        x=alt.X("from:Q", bin="binned", title=f"seconds since the first chat was sent ({_num(width)} s per bar)"),
        x2="to:Q",
        y=alt.Y("sum(chats):Q", title="chats", stack="zero"),
        color=alt.Color("outcome:N", scale=alt.Scale(domain=[o.value for o in Outcome],
                                                     range=[OUTCOME_COLORS[o] for o in Outcome]),
                        legend=alt.Legend(title=None, orient="top", columnPadding=24)),
        order=alt.Order("order:Q"),
    )
    return _svg(chart.properties(width=WIDTH, height=160))


def _rules_chart(rules: list[tuple[str, int]]) -> Markup:
    if not rules:
        return Markup('<p class="empty">No violations.</p>')
    labels = [f"{rule} {RULES.get(rule, '')}".strip() for rule, _ in rules]
    rows = [{"rule": label, "violations": n} for label, (_, n) in zip(labels, rules, strict=True)]
    chart = alt.Chart(alt.Data(values=rows)).mark_bar(color="#c62828").encode(
        y=alt.Y("rule:N", sort=labels, title=None, axis=alt.Axis(labelLimit=260)),
        x=alt.X("violations:Q", title="violations"),
    )
    counts = chart.mark_text(align="left", dx=3, color="#222").encode(text="violations:Q")
    return _svg((chart + counts).properties(width=WIDTH - 160, height=max(22 * len(rows), 40)))


def _chat(r: ChatResult, limit: float) -> _Chat:
    drawn = r.events[:TIMELINE_EVENTS]
    caption = [f"{r.outcome.value}", f"first event {_ms(r.time_to_first_event)}", f"duration {_ms(r.duration)}",
               f"{r.events_received:,} events"]
    if r.events_received > len(drawn):
        caption.append(f"the first {len(drawn):,} drawn")
    if r.run_id:
        caption.append(f"run {r.run_id}")
    if r.missing:
        caption.append("missing " + ", ".join(m.value for m in r.missing))
    if r.reconnects:
        caption.append(f"{len(r.reconnects)} reconnect(s)")
    if r.reconnect_failures:
        caption.append(f"{r.reconnect_attempts} reconnect attempt(s), {r.reconnect_failures} failed")
    if r.error:
        caption.append(f"error ({r.error_kind or 'unknown'}): {r.error}")
    if r.note:
        caption.append(r.note)
    listed = [str(v) for v in r.violations[:VIOLATIONS_LISTED]]
    more = len(r.violations) - len(listed) + sum(r.violations_not_listed.values())
    return _Chat(result=r, svg=_timeline_chart(r, drawn, limit), caption=caption, violations=listed,
                 more_violations=more)


def _timeline_chart(r: ChatResult, drawn: list, limit: float) -> Markup:
    """A waterfall: one lane per role, each event a tick at its receipt time, each lane's span a light bar;
    a violation tied to an event is a red diamond on that event, the others a red rule at the chat's end."""
    if not drawn and not r.violations:
        return Markup('<p class="empty">No events.</p>')
    # Only times and role names reach the chart: the server's own strings are in the HTML around it.
    events = [{"t": (e.received_at - r.sent_at) * 1000, "lane": e.role.value if e.role else OTHER_LANE}
              for e in drawn]
    spans: dict[str, list[float]] = {}
    for ev in events:
        s = spans.setdefault(ev["lane"], [ev["t"], ev["t"]])
        s[1] = max(s[1], ev["t"])
    end_ms = max([ev["t"] for ev in events] + [(r.duration or 0) * 1000])
    placed: dict[int, list[str]] = {}
    unplaced: list[str] = []
    for v in r.violations:
        if v.event_index is not None and v.event_index < len(events):
            placed.setdefault(v.event_index, []).append(v.rule)
        else:
            unplaced.append(v.rule)
    marks = [{**events[i], "rules": " ".join(dict.fromkeys(rules))} for i, rules in placed.items()]
    y = alt.Y("lane:N", scale=alt.Scale(domain=LANES), title=None, axis=alt.Axis(labelLimit=140))
    x_title, x_scale = "ms since the message was sent", alt.Scale(nice=True, zero=True)
    x = alt.X("t:Q", title=x_title, scale=x_scale)
    layers: list[alt.Chart] = [
        alt.Chart(alt.Data(values=[{"lane": k, "from": a, "to": b} for k, (a, b) in spans.items()]))
        .mark_bar(height=12, color="#90caf9", opacity=0.6)
        .encode(x=alt.X("from:Q", title=x_title, scale=x_scale), x2="to:Q", y=y),
        alt.Chart(alt.Data(values=events)).mark_tick(thickness=2, size=14, color="#0d47a1")
        .encode(x=x, y=y),
    ]
    if r.missing:
        gaps = [{"lane": m.value, "t": 0, "text": "missing"} for m in r.missing]
        layers.append(alt.Chart(alt.Data(values=gaps)).mark_text(align="left", dx=2, color="#c62828",
                                                                   fontStyle="italic")
                      .encode(x="t:Q", y=y, text="text:N"))
    if marks:
        base = alt.Chart(alt.Data(values=marks))
        layers.append(base.mark_point(shape="diamond", size=140, filled=True, color="#c62828")
                      .encode(x="t:Q", y=y))
        layers.append(base.mark_text(align="left", dx=8, dy=-8, color="#c62828", fontWeight="bold")
                      .encode(x="t:Q", y=y, text="rules:N"))
    if unplaced:
        end = alt.Data(values=[{"t": end_ms, "rules": " ".join(dict.fromkeys(unplaced))}])
        layers.append(alt.Chart(end).mark_rule(color="#c62828", strokeWidth=2).encode(x="t:Q"))
        layers.append(alt.Chart(end).mark_text(align="right", dx=-4, baseline="top", color="#c62828",
                                               fontWeight="bold").encode(x="t:Q", y=alt.value(0), text="rules:N"))
    if r.time_to_first_event is not None and end_ms >= limit * 500:
        # The first-event limit, only where it fits the chat's scale (a 20 ms chat would shrink to a sliver).
        lim = alt.Data(values=[{"t": limit * 1000, "label": f"{limit:g} s"}])
        layers.append(alt.Chart(lim).mark_rule(color="#9e9e9e", strokeDash=[4, 3]).encode(x="t:Q"))
        layers.append(alt.Chart(lim).mark_text(align="left", dx=3, baseline="bottom", color="#757575")
                      .encode(x="t:Q", y=alt.value(22 * len(LANES)), text="label:N"))
    return _svg(alt.layer(*layers).properties(width=WIDTH - 140, height=22 * len(LANES)))


# ---- formatting ----------------------------------------------------------------------------------------------

def _rule_key(rule: str) -> tuple[int, str]:
    return (int(rule[1:]), rule) if rule[1:].isdigit() else (10**6, rule)


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    ms = v * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:,.0f} ms"


def _num(v: float) -> str:
    return f"{v:g}"


def _nice(x: float) -> float:
    """The smallest 1, 2 or 5 × 10^k at or above x: bucket widths a reader can add up."""
    exp = math.floor(math.log10(x))
    for m in (1, 2, 5, 10):
        if m * 10**exp >= x:
            return m * 10**exp
    return 10 ** (exp + 1)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _finalize(value: Any) -> Any:
    # Every string the template prints is redacted (secrets, credentials in URLs), made printable and bounded
    # before autoescape; the charts' SVG is Markup (its few strings were cleaned before they were drawn).
    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    return redact.clean(value, FIELD_LIMIT)


def _objective_value(o: Any) -> str:
    return "n/a" if o.value is None else f"{o.value:.4g}"


_ENV = Environment(autoescape=True, finalize=_finalize, trim_blocks=True, lstrip_blocks=True)
_ENV.filters["objective_value"] = _objective_value
_ENV.filters["num"] = _num
_ENV.filters["ms"] = _ms
_TEMPLATE = _ENV.from_string("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>chatprobe report</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0; background: #fafafa; }
header, section { max-width: 1000px; margin: 0 auto; padding: 12px 24px; }
header { border-bottom: 1px solid #ddd; }
h1 { font-size: 22px; margin: 8px 0; } h2 { font-size: 19px; margin: 28px 0 6px; border-bottom: 2px solid #ddd; }
h3 { font-size: 15px; margin: 20px 0 4px; } h4 { font-size: 13px; margin: 14px 0 2px; font-family: monospace; }
.verdict { font-weight: 600; padding: 1px 8px; border-radius: 3px; color: #fff; }
.met { background: #2e7d32; } .notmet { background: #c62828; }
table { border-collapse: collapse; margin: 6px 0; } td, th { padding: 3px 10px; border-bottom: 1px solid #e5e5e5; text-align: left; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.stages td { white-space: nowrap; }
.ok { color: #2e7d32; font-weight: 600; } .no { color: #c62828; font-weight: 700; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 6px 0; }
dl.facts dt { color: #666; } dl.facts dd { margin: 0; }
figure.chart { margin: 6px 0 10px; background: #fff; border: 1px solid #e5e5e5; padding: 6px; overflow-x: auto; }
figure.chart svg { display: block; max-width: 100%; height: auto; }
.caption, .empty { color: #555; font-size: 13px; } ul.violations { margin: 4px 0; padding-left: 20px; color: #b71c1c; font-size: 13px; }
.chat { border-left: 3px solid #c62828; padding-left: 10px; margin: 14px 0; }
footer { max-width: 1000px; margin: 24px auto; padding: 0 24px; color: #888; font-size: 12px; }
</style>
</head>
<body>
<header>
<h1>chatprobe report <span class="verdict {{ 'met' if passed else 'notmet' }}">{{ 'all objectives met' if passed else 'objectives not met' }}</span></h1>
<table class="overview">
<tr><th>scenario</th><th>target</th><th>chats</th><th>passed</th><th>failed</th><th>incomplete</th><th>error</th><th>verdict</th></tr>
{% for s in sections %}
<tr><td><a href="#{{ s.anchor }}">{{ s.run.scenario.name }}</a></td><td>{{ s.run.target }}</td>
<td class="num">{{ s.run.stats.chats }}</td>
{% for o in outcomes %}<td class="num">{{ s.run.stats.outcomes[o] }}</td>{% endfor %}
<td>{% if s.run.passed %}<span class="ok">met</span>{% elif s.run.not_run %}<span class="no">NOT RUN</span>{% elif s.run.unreachable %}<span class="no">UNREACHABLE</span>{% else %}<span class="no">FAILED ({{ s.run.failed_objectives|length }})</span>{% endif %}</td></tr>
{% endfor %}
</table>
</header>
{% for s in sections %}
<section id="{{ s.anchor }}" class="scenario">
<h2>{{ s.run.scenario.name }} <span class="verdict {{ 'met' if s.run.passed else 'notmet' }}">{{ 'met' if s.run.passed else ('not run' if s.run.not_run else ('unreachable' if s.run.unreachable else 'not met')) }}</span></h2>
{% if s.run.scenario.description %}<p class="caption">{{ s.run.scenario.description }}</p>{% endif %}
<dl class="facts">
{% for k, v in s.facts %}<dt>{{ k }}</dt><dd>{{ v }}</dd>
{% endfor %}
</dl>
{% if s.partial %}<p class="caption">{{ s.partial }}</p>{% endif %}
{% for w in s.run.warnings %}<p class="caption warning">warning: {{ w }}</p>{% endfor %}
<h3>Objectives</h3>
<table class="objectives">
<tr><th>objective</th><th>value</th><th>must be</th><th>met</th></tr>
{% for o in s.run.objectives %}
<tr><td>{{ o.name }}</td><td class="num">{{ o|objective_value }}</td><td>{{ o.op }} {{ o.limit|num }}</td><td>{% if o.ok %}<span class="ok">yes</span>{% else %}<span class="no">NO</span>{% endif %}</td></tr>
{% endfor %}
</table>
{% if s.stages %}
<h3>By stage</h3>
<p class="caption knee">{{ s.knee }}</p>
<figure class="chart" data-chart="stages">{{ s.stage_chart }}</figure>
<table class="stages">
<tr><th>stage</th><th>time</th><th>load</th>{% if s.stages[0].asked_rate is not none %}<th>achieved/s</th><th>began late</th>{% endif %}<th>chats</th>{% for o in outcomes %}<th>{{ o.value }}</th>{% endfor %}<th>dropped</th><th>1st event p50</th><th>p95</th><th>p99</th></tr>
{% for st in s.stages %}
<tr><td class="num">{{ st.index + 1 }}</td><td>{{ st.start|num }}–{{ st.end|num }} s</td><td>{{ st.label }}</td>
{% if st.asked_rate is not none %}<td class="num">{{ '-' if st.achieved_rate is none else '%.4g'|format(st.achieved_rate) }}</td><td class="num">{{ st.late }}</td>{% endif %}
<td class="num">{{ st.chats }}</td>{% for o in outcomes %}<td class="num">{{ st.outcomes[o] }}</td>{% endfor %}
<td class="num">{{ st.dropped }}</td>{% for k in ('p50', 'p95', 'p99') %}<td class="num">{{ st.ttfe.get(k)|ms }}</td>{% endfor %}</tr>
{% endfor %}
</table>
{% endif %}
<h3>Time to first event</h3>
<figure class="chart" data-chart="ttfe">{{ s.ttfe }}</figure>
<h3>Chats over time, by outcome</h3>
<figure class="chart" data-chart="over-time">{{ s.over_time }}</figure>
<h3>Violations by rule</h3>
<figure class="chart" data-chart="rules">{{ s.by_rule }}</figure>
{% if s.rule_rows %}
<table class="rules"><tr><th>rule</th><th>name</th><th>violations</th></tr>
{% for rule, name, n in s.rule_rows %}<tr><td>{{ rule }}</td><td>{{ name }}</td><td class="num">{{ n }}</td></tr>
{% endfor %}</table>
{% endif %}
{% if s.own_total %}
<h3 class="own">Violations of connections' own, in no chat: {{ s.own_total }}</h3>
<p class="caption">Another user's event (R8) or a malformed frame (R12) after a connection's last chat was judged, with no chat after it: counted with their rule above, in no chat's verdict.</p>
<ul class="violations own">{% for v in s.own %}<li>{{ v }}</li>{% endfor %}
{% if s.own_total > s.own|length %}<li>… and {{ s.own_total - s.own|length }} more</li>{% endif %}</ul>
{% endif %}
{% if s.failing_total %}
<h3>Failing chats: {{ s.chats|length }} of {{ s.failing_total }}</h3>
{% if s.chats|length < s.failing_total %}<p class="caption">A sample: round-robin over each kind of failure (outcome and first rule broken), so a rare one is shown beside a frequent one.</p>{% endif %}
{% for c in s.chats %}
<div class="chat">
<h4>chat {{ c.result.chat_id }}</h4>
<p class="caption">{% for part in c.caption %}{{ part }}{% if not loop.last %} · {% endif %}{% endfor %}</p>
{% if c.violations %}<ul class="violations">{% for v in c.violations %}<li>{{ v }}</li>{% endfor %}
{% if c.more_violations %}<li>… and {{ c.more_violations }} more</li>{% endif %}</ul>{% endif %}
<figure class="chart" data-chart="timeline">{{ c.svg }}</figure>
</div>
{% endfor %}
{% endif %}
</section>
{% endfor %}
<footer>Generated by chatprobe on {{ generated }} in {{ '%.1f'|format(write_seconds) }} s. Rules: R1–R13 of docs/protocol.md.</footer>
</body>
</html>
""", globals={"outcomes": list(Outcome)})
