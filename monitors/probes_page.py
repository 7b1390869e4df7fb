"""The monitor's recent probes, kept bounded (a count per probe, a byte budget for details) and served as plain HTML
at / and /probes/ID, like blackbox_exporter's recent-probes page: no script, nothing fetched, every string cleaned."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jinja2 import Environment
from markupsafe import Markup

from harness import redact
from harness.events import ALL_ROLES, Outcome

if TYPE_CHECKING:
    from harness.checker import ChatResult
    from harness.results import ScenarioRun

# The last probes listed per (target, scenario), and the bytes that failing probes' details may hold in all: past
# it the oldest details are dropped (their row stays, saying so). A detail is bounded by the limits below.
MAX_PER_PROBE = 50
MAX_DETAIL_BYTES = 4 * 1024 * 1024
MAX_CHATS_SHOWN = 5  # the failing chats of one probe that get a timeline: the worst first
MAX_EVENTS_DRAWN = 150
MAX_EVENTS_LISTED = 60
MAX_VIOLATIONS_SHOWN = 20
FIELD_LIMIT = 300  # one string from the server, after redaction
OTHER_LANE = "other"  # a wire type the profile maps to no role
LANES = (*(r.value for r in ALL_ROLES), OTHER_LANE)
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


@dataclass
class ProbeRecord:
    """One probe as the page lists it; `detail` is the rendered HTML of a failing one until the budget drops it."""

    id: int
    target: str
    scenario: str
    started_at: float  # epoch seconds
    duration: float
    verdict: str  # passed, failed, unreachable, no verdict
    chats: int
    passed: int
    via: str  # "interval" (the monitor's own rounds) or "/probe" (one asked for over HTTP)
    summary: str  # what failed, one line
    detail: str | None = None
    detail_dropped: bool = False

    @property
    def failing(self) -> bool:
        return self.verdict != "passed"


class RecentProbes:
    """The last `per_probe` probes of each (target, scenario), newest last; safe to read from the HTTP threads while
    the probe loop adds."""

    def __init__(self, keys: Iterable[tuple[str, str]] = (), per_probe: int = MAX_PER_PROBE,
                 detail_budget: int = MAX_DETAIL_BYTES) -> None:
        self.per_probe = per_probe
        self.detail_budget = detail_budget
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, str], deque[ProbeRecord]] = {k: deque() for k in keys}
        self._by_id: dict[int, ProbeRecord] = {}
        self._details: OrderedDict[int, ProbeRecord] = OrderedDict()  # records holding a detail, oldest first
        self.detail_bytes = 0
        self._next_id = 1

    def add(self, target: str, scenario: str, run: ScenarioRun | None, verdict: str, started_at: float,
            duration: float, via: str = "interval", first_event_limit: float = 2.0) -> ProbeRecord:
        chats = run.stats.chats if run is not None else 0
        passed = run.stats.outcomes[Outcome.PASSED] if run is not None else 0
        summary = redact.clean(_summary(run, verdict), 4 * FIELD_LIMIT)  # held for hours: bounded and clean
        with self._lock:
            record = ProbeRecord(id=self._next_id, target=target, scenario=scenario, started_at=started_at,
                                 duration=duration, verdict=verdict, chats=chats, passed=passed, via=via,
                                 summary=summary)
            self._next_id += 1
        if record.failing:
            # Rendered once, outside the lock: the page serves it as it is, and its size is what the budget counts.
            record.detail = render_detail(record, run, first_event_limit)
        with self._lock:
            kept = self._by_key.setdefault((target, scenario), deque())
            kept.append(record)
            self._by_id[record.id] = record
            while len(kept) > self.per_probe:
                self._forget(kept.popleft())
            if record.detail is not None:
                self._details[record.id] = record
                self.detail_bytes += len(record.detail)
                while self.detail_bytes > self.detail_budget and self._details:
                    _, oldest = self._details.popitem(last=False)
                    self._drop_detail(oldest)
        return record

    def _forget(self, record: ProbeRecord) -> None:
        self._by_id.pop(record.id, None)
        if self._details.pop(record.id, None) is not None:
            self._drop_detail(record)

    def _drop_detail(self, record: ProbeRecord) -> None:
        if record.detail is not None:
            self.detail_bytes -= len(record.detail)
            record.detail = None
            record.detail_dropped = True

    def get(self, probe_id: int) -> ProbeRecord | None:
        with self._lock:
            return self._by_id.get(probe_id)

    def groups(self) -> list[tuple[str, list[tuple[str, list[ProbeRecord]]]]]:
        """[(target, [(scenario, records newest first)])] in the order the probes were configured."""
        with self._lock:
            by_target: dict[str, list[tuple[str, list[ProbeRecord]]]] = {}
            for (target, scenario), records in self._by_key.items():
                by_target.setdefault(target, []).append((scenario, list(reversed(records))))
        return list(by_target.items())


# -- what a probe shows ------------------------------------------------------------------------------------------

def _summary(run: ScenarioRun | None, verdict: str) -> str:
    if run is None:
        return "no verdict: the probe did not finish within its deadline or failed (see the monitor's log)"
    if run.unreachable:
        first = run.results[0] if run.results else None
        return f"unreachable: {first.error_kind}: {first.error}" if first is not None else "unreachable"
    if verdict == "passed":
        return ""
    failed = [o.describe() for o in run.failed_objectives]
    rules = sorted(run.stats.violations.items(), key=lambda kv: _rule_key(kv[0]))
    text = "; ".join(failed)
    if rules:
        text += " — violations " + " ".join(f"{rule}:{n}" for rule, n in rules)
    return text


def _rule_key(rule: str) -> tuple[int, str]:
    return (int(rule[1:]), rule) if rule[1:].isdigit() else (10**6, rule)


def _worst(results: list[ChatResult], n: int) -> list[ChatResult]:
    """The failing chats most worth reading: incomplete and errored ones first, then those with most violations."""
    failing = [r for r in results if r.outcome is not Outcome.PASSED]
    order = {Outcome.INCOMPLETE: 0, Outcome.ERROR: 1, Outcome.FAILED: 2}
    return sorted(failing, key=lambda r: (order.get(r.outcome, 3), -len(r.violations)))[:n]


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:,.0f} ms"


def _chat_view(r: ChatResult, limit: float) -> dict[str, Any]:
    """A failing chat as the template draws it: caption, violations, and a timeline in percent of its length."""
    drawn = r.events[:MAX_EVENTS_DRAWN]
    times = [(e.received_at - r.sent_at) * 1000 for e in drawn]
    end_ms = max([*times, (r.duration or 0) * 1000, 1.0])
    marks: dict[int, list[str]] = {}
    at_end: list[str] = []
    for v in r.violations:
        if v.event_index is not None and v.event_index < len(drawn):
            marks.setdefault(v.event_index, []).append(str(v.rule))
        else:
            at_end.append(str(v.rule))
    lanes: dict[str, dict[str, Any]] = {name: {"name": name, "events": [], "from": None, "to": None}
                                        for name in LANES}
    for i, (e, t) in enumerate(zip(drawn, times, strict=True)):
        lane = lanes[e.role.value if e.role else OTHER_LANE]
        x = round(100 * t / end_ms, 2)
        lane["from"] = x if lane["from"] is None else lane["from"]
        lane["to"] = x
        seq = f" #{e.seq}" if e.seq is not None else ""
        rules = " ".join(dict.fromkeys(marks.get(i, [])))
        lane["events"].append({"x": x, "rules": rules, "flip": x > 85,  # a label near the end reads leftwards
                               "title": f"#{i} {t:.0f} ms {e.wire_type}{seq}" + (f" — {rules}" if rules else "")})
    caption = [r.outcome.value, f"first event {_ms(r.time_to_first_event)}", f"duration {_ms(r.duration)}",
               f"{r.events_received:,} events" + (f" (the first {len(drawn)} drawn)" if r.events_received > len(drawn)
                                                  else "")]
    if r.missing:
        caption.append("missing " + ", ".join(m.value for m in r.missing))
    if r.error:
        caption.append(f"error ({r.error_kind or 'unknown'}): {r.error}")
    if r.note:
        caption.append(r.note)
    shown = r.violations[:MAX_VIOLATIONS_SHOWN]
    more = len(r.violations) - len(shown) + sum(r.violations_not_listed.values())
    limit_x = round(100 * limit * 1000 / end_ms, 2) if r.time_to_first_event is not None else None
    return {
        "id": r.chat_id, "outcome": r.outcome.value, "caption": caption,
        "violations": [{"rule": str(v.rule), "text": str(v)} for v in shown], "more": more,
        "lanes": [lane for lane in lanes.values() if lane["events"] or lane["name"] in (m.value for m in r.missing)],
        "missing": {m.value for m in r.missing}, "end_ms": f"{end_ms:,.0f} ms", "at_end": " ".join(dict.fromkeys(at_end)),
        "limit_x": limit_x if limit_x is not None and limit_x <= 100 else None, "limit": f"{limit:g} s",
        "events": [{"i": i, "t": f"{t:,.0f} ms", "role": e.role.value if e.role else "-", "wire": e.wire_type,
                    "seq": "" if e.seq is None else str(e.seq), "bad": i in marks}
                   for i, (e, t) in enumerate(zip(drawn[:MAX_EVENTS_LISTED], times, strict=False))],
        "events_more": r.events_received - min(len(drawn), MAX_EVENTS_LISTED),
    }


def render_detail(record: ProbeRecord, run: ScenarioRun | None, first_event_limit: float) -> str:
    chats = [_chat_view(r, first_event_limit) for r in _worst(run.results, MAX_CHATS_SHOWN)] if run else []
    failing = sum(1 for r in run.results if r.outcome is not Outcome.PASSED) if run else 0
    objectives = [o.describe() for o in run.failed_objectives] if run else []
    return str(_DETAIL.render(p=record, chats=chats, failing=failing, objectives=objectives))


# -- pages -------------------------------------------------------------------------------------------------------

def _finalize(value: Any) -> Any:
    # Every string the templates print is redacted (secrets, credentials in URLs), made printable and bounded
    # before autoescape; Markup is HTML these templates rendered themselves.
    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    return redact.clean(value, FIELD_LIMIT)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


_ENV = Environment(autoescape=True, finalize=_finalize, trim_blocks=True, lstrip_blocks=True)
_ENV.filters["iso"] = _iso
_ENV.filters["ms"] = _ms

_PAGE = _ENV.from_string("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0 auto;
       max-width: 1200px; padding: 12px 20px 40px; background: #fafafa; }
h1 { font-size: 20px; margin: 8px 0 4px; } h2 { font-size: 17px; margin: 22px 0 6px; }
h3 { font-size: 15px; margin: 16px 0 4px; }
nav, .muted { color: #666; } a { color: #0d47a1; }
table { border-collapse: collapse; width: 100%; background: #fff; margin: 4px 0 12px; }
th, td { border-bottom: 1px solid #e0e0e0; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; font-weight: 600; } td.num, td.time { text-align: right; white-space: nowrap; }
.verdict { font-weight: 600; white-space: nowrap; }
.v-passed { color: #2e7d32; } .v-failed, .v-unreachable { color: #c62828; } .v-no-verdict { color: #757575; }
.chat { background: #fff; border: 1px solid #e0e0e0; border-radius: 4px; padding: 8px 12px; margin: 10px 0; }
.violations li { color: #b71c1c; }
.tl { position: relative; margin: 10px 0 4px; }
.lane { display: flex; align-items: center; height: 22px; }
.lane .name { width: 130px; flex: none; font-size: 12px; color: #444; }
.lane.missing .name { color: #c62828; font-style: italic; }
.track { position: relative; flex: 1; height: 16px; background: #f5f5f5; border-left: 1px solid #bbb; }
.span { position: absolute; top: 4px; height: 8px; background: #90caf9; opacity: .6; }
.ev { position: absolute; top: 0; width: 2px; height: 16px; margin-left: -1px; background: #0d47a1; }
.ev.bad { width: 10px; height: 10px; top: 3px; margin-left: -5px; background: #c62828; transform: rotate(45deg); }
.rule { position: absolute; top: -12px; margin-left: 6px; font-size: 11px; font-weight: 700; color: #c62828;
        white-space: nowrap; }
.rule.flip { transform: translateX(-100%); margin-left: -8px; }
.limit { position: absolute; top: 0; bottom: 18px; border-left: 1px dashed #9e9e9e; }
.endmark { position: absolute; top: 0; bottom: 18px; right: 0; border-right: 2px solid #c62828; }
.endmark span { position: absolute; right: 4px; top: -14px; font-size: 11px; font-weight: 700; color: #c62828; }
.axis { position: relative; margin-left: 130px; height: 16px; font-size: 11px; color: #666; }
.axis span { position: absolute; top: 0; } .axis .end { right: 0; }
.events td { font: 12px/1.3 ui-monospace, monospace; padding: 1px 6px; } .events tr.bad td { color: #c62828; }
details summary { cursor: pointer; color: #0d47a1; }
</style>
</head>
<body>
<nav><a href="/">recent probes</a> · <a href="/metrics">/metrics</a> ·
/probe?target=NAME&amp;scenario=NAME (one probe now, blackbox_exporter style)</nav>
{{ body }}
</body>
</html>
""")

_INDEX = _ENV.from_string("""<h1>chatprobe monitor: recent probes</h1>
<p class="muted">The last {{ per_probe }} probes of each target and scenario, newest first (times UTC). A failing
probe links to its violations and event timeline. Page generated {{ now | iso }} UTC.</p>
{% for target, scenarios in groups %}
<section class="target" id="target-{{ loop.index }}" data-target="{{ target }}">
<h2>{{ target }}</h2>
{% for scenario, records in scenarios %}
<h3>{{ scenario }}</h3>
{% if records %}
<table class="probes" data-scenario="{{ scenario }}">
<thead><tr><th>time</th><th>verdict</th><th>duration</th><th>chats passed</th><th>via</th><th>what failed</th>
<th></th></tr></thead>
<tbody>
{% for p in records %}
<tr class="probe" data-verdict="{{ p.verdict }}" id="probe-{{ p.id }}">
<td class="time">{{ p.started_at | iso }}</td>
<td class="verdict v-{{ p.verdict | replace(' ', '-') }}">{{ p.verdict }}</td>
<td class="num">{{ p.duration | ms }}</td>
<td class="num">{{ p.passed }} / {{ p.chats }}</td>
<td>{{ p.via }}</td>
<td>{{ p.summary }}</td>
<td>{% if p.detail is not none %}<a class="detail" href="/probes/{{ p.id }}">events</a>
{% elif p.detail_dropped %}<span class="muted">detail dropped (memory bound)</span>{% endif %}</td>
</tr>
{% endfor %}
</tbody>
</table>
{% else %}
<p class="muted">No probe has run yet.</p>
{% endif %}
{% endfor %}
</section>
{% endfor %}
""")

_DETAIL = _ENV.from_string("""<h1>{{ p.target }} / {{ p.scenario }}: probe {{ p.id }}</h1>
<p><span class="verdict v-{{ p.verdict | replace(' ', '-') }}">{{ p.verdict }}</span> · {{ p.started_at | iso }} UTC ·
{{ p.duration | ms }} · {{ p.passed }} of {{ p.chats }} chats passed · via {{ p.via }}</p>
{% if objectives %}
<h2>Objectives not met</h2>
<ul class="objectives">{% for o in objectives %}<li>{{ o }}</li>{% endfor %}</ul>
{% elif p.summary %}
<p>{{ p.summary }}</p>
{% endif %}
{% if chats %}
<h2>Failing chats{% if failing > chats | length %} (the {{ chats | length }} worst of {{ failing }}){% endif %}</h2>
{% for c in chats %}
<div class="chat" data-outcome="{{ c.outcome }}">
<div><b>chat {{ c.id }}</b> <span class="muted">{{ c.caption | join(" · ") }}</span></div>
{% if c.violations %}
<ul class="violations">{% for v in c.violations %}<li data-rule="{{ v.rule }}">{{ v.text }}</li>{% endfor %}
{% if c.more %}<li class="muted">… and {{ c.more }} more</li>{% endif %}</ul>
{% endif %}
<div class="tl" role="img" aria-label="events of chat {{ c.id }} by role against time">
{% for lane in c.lanes %}
<div class="lane{% if lane.name in c.missing %} missing{% endif %}" data-lane="{{ lane.name }}">
<span class="name"{% if lane.name in c.missing %} title="missing: never received"{% endif %}>{{ lane.name }}</span>
<div class="track">
{% if lane.events | length > 1 %}
<div class="span" style="left: {{ lane.from }}%; width: {{ lane.to - lane.from }}%"></div>
{% endif %}
{% for e in lane.events %}
<i class="ev{% if e.rules %} bad{% endif %}" style="left: {{ e.x }}%" title="{{ e.title }}"></i>
{% if e.rules %}<b class="rule{% if e.flip %} flip{% endif %}" style="left: {{ e.x }}%">{{ e.rules }}</b>{% endif %}
{% endfor %}
</div></div>
{% endfor %}
{% if c.limit_x is not none %}<div class="limit" style="left: calc(130px + (100% - 130px) * {{ c.limit_x / 100 }})"
 title="first-event limit {{ c.limit }}"></div>{% endif %}
{% if c.at_end %}<div class="endmark"><span>{{ c.at_end }}</span></div>{% endif %}
<div class="axis"><span>0 ms</span><span class="end">{{ c.end_ms }}</span></div>
</div>
<details><summary>events</summary>
<table class="events"><tbody>
{% for e in c.events %}<tr{% if e.bad %} class="bad"{% endif %}><td>#{{ e.i }}</td><td>{{ e.t }}</td><td>{{ e.role }}</td>
<td>{{ e.wire }}</td><td>{{ e.seq }}</td></tr>
{% endfor %}
{% if c.events_more > 0 %}<tr><td colspan="5" class="muted">… {{ c.events_more }} more</td></tr>{% endif %}
</tbody></table>
</details>
</div>
{% endfor %}
{% endif %}
""")


def index_page(recent: RecentProbes) -> bytes:
    body = Markup(_INDEX.render(groups=recent.groups(), per_probe=recent.per_probe, now=time.time()))
    return _PAGE.render(title="chatprobe monitor", body=body).encode()


def detail_page(record: ProbeRecord) -> bytes | None:
    """The page of a kept failing probe; None when it passed or its detail was dropped."""
    detail = record.detail
    if detail is None:
        return None
    title = f"{record.target} / {record.scenario}: probe {record.id}"
    return _PAGE.render(title=title, body=Markup(detail)).encode()
