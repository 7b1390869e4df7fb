"""The HTML report: self-contained (no script, no external resource), every server string escaped and redacted,
bounded in size for 10,000 chats, and a failing-chat sample that shows rare failures beside frequent ones."""
from __future__ import annotations

import html.parser
import json
import re
import time

import pytest

from harness import redact
from harness.checker import ChatTracker, Expectations, error_result
from harness.events import DEFAULT_REQUIRED, Event, Outcome, Role
from harness.html_report import (
    FAILING_SAMPLE,
    TIMELINE_EVENTS,
    sample_failing,
    write_html,
)
from harness.scenario import Scenario
from harness.stats import compute, evaluate

from .reports import NASTY, RAW_UNSAFE, TOKEN, hostile_run

try:
    from harness.results import ScenarioRun
except ImportError:  # before the lead's move of ScenarioRun out of the runner
    from harness.runner import ScenarioRun  # type: ignore[no-redef]

EXP = Expectations(required=frozenset(DEFAULT_REQUIRED), first_event_limit=2.0, deadline=30.0, stall_limit=10.0)
FLOW = (Role.AGENT_STARTED, Role.AGENT_THINKING, Role.TOOL_EXECUTING, Role.TOOL_COMPLETED, Role.PARTIAL_RESULT,
        Role.AGENT_COMPLETED)


class _Page(html.parser.HTMLParser):
    """Every start tag and attribute of the page, as a browser's tokenizer would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def chat(i: int, t0: float, *, drop: Role | None = None, first_at: float = 0.01, extra: int = 0) -> ChatTracker:
    """One chat judged by the real checker: the default flow, one role dropped, a late first event, or a flood."""
    sent = t0 + i * 0.002
    tr = ChatTracker(f"c{i}", EXP, sent, scenario="load", run_id=f"r{i}")
    at, seq = sent + first_at, 0
    for role in FLOW:
        seq += 1
        if role is drop:
            continue
        if role is Role.AGENT_COMPLETED:
            for _ in range(extra):  # a flooding server: thousands of partial results before the end
                at += 0.0001
                tr.feed(Event(role=Role.PARTIAL_RESULT, wire_type="partial_result", received_at=at, seq=seq))
                seq += 1
        tr.feed(Event(role=role, wire_type=role.value, received_at=at, seq=seq,
                      tool_call_id="t1" if role in (Role.TOOL_EXECUTING, Role.TOOL_COMPLETED) else None))
        at += 0.004
    return tr


def run_of(results, name: str = "load") -> ScenarioRun:
    scenario = Scenario.model_validate({"name": name})
    stats = compute(results)
    return ScenarioRun(scenario=scenario, target="agentsim", results=results, stats=stats,
                       objectives=evaluate(stats, scenario.objectives), started_at=time.time(), elapsed=20.0)


@pytest.fixture
def token_known():
    redact.register(TOKEN)
    yield
    redact.forget_all()


def test_server_strings_are_escaped_and_redacted(tmp_path, token_known):
    run = hostile_run()
    out = tmp_path / "r.html"
    write_html(str(out), [run])
    text = out.read_text(encoding="utf-8")
    tags = parse(text).tags
    # The chat c2's error detail carries "<script>alert(1)</script>": shown as text, never an element.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert [t for t, _ in tags if t in ("script", "iframe", "object", "embed", "img", "link", "base")] == []
    assert not [(t, k) for t, a in tags for k in a if k.lower().startswith("on")], "an event-handler attribute"
    assert TOKEN not in text and "[REDACTED]" in text
    assert not RAW_UNSAFE.search(text) and "\x1b" not in text
    assert "\\x1b[2J" in text  # the escape sequence is shown, escaped, not dropped
    assert NASTY not in text


def test_the_page_loads_nothing_from_anywhere(tmp_path):
    """Self-contained: no script, stylesheet, image, font or frame is fetched; the charts are inline SVG."""
    results = [chat(i, 100.0, drop=Role.TOOL_COMPLETED if i % 3 == 0 else None).finish(101.0 + i) for i in range(30)]
    out = tmp_path / "r.html"
    write_html(str(out), [run_of(results)])
    text = out.read_text(encoding="utf-8")
    tags = parse(text).tags
    assert not [t for t, _ in tags if t in ("script", "link", "img", "iframe", "object", "embed")]
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text)
    assert "url(" not in text and "@import" not in text
    figures = [a.get("data-chart") for t, a in tags if t == "figure"]
    assert figures.count("ttfe") == figures.count("over-time") == figures.count("rules") == 1
    assert figures.count("timeline") == 10  # every failing chat (10 of 30), under the sample's bound
    assert sum(1 for t, _ in tags if t == "svg") == 13
    assert "R2 required" in text and "2 s limit" in text


def test_the_first_event_limit_marked_is_the_scenarios(tmp_path):
    """The histogram marks the scenario's `expect.first_event_limit` (the README: 2 s by default), not a fixed 2 s."""
    results = [chat(i, 100.0, first_at=3.0 if i == 0 else 0.01).finish(105.0 + i) for i in range(5)]
    scenario = Scenario.model_validate({"name": "slow", "expect": {"first_event_limit": "5s"}})
    stats = compute(results)
    run = ScenarioRun(scenario=scenario, target="agentsim", results=results, stats=stats,
                      objectives=evaluate(stats, scenario.objectives), started_at=time.time(), elapsed=20.0)
    out = tmp_path / "r.html"
    write_html(str(out), [run])
    text = out.read_text(encoding="utf-8")
    assert "5 s limit" in text and "2 s limit" not in text


def test_ten_thousand_chats_give_a_bounded_report(tmp_path):
    t0 = 1000.0
    results = []
    for i in range(10_000):
        if i % 10 == 0:
            tr = chat(i, t0, drop=Role.TOOL_COMPLETED)  # 1,000 chats miss a role (R2, R5, R7)
        elif i == 5_001:
            tr = chat(i, t0, first_at=2.5)  # one chat's first event is late (R9): rare, must be in the sample
        elif i == 3:
            tr = chat(i, t0, drop=Role.TOOL_COMPLETED, extra=9_990)  # and a flood: ~10,000 events in one chat
        else:
            tr = chat(i, t0)
        results.append(tr.finish(t0 + i * 0.002 + 3.0))
    run = run_of(results)
    assert run.stats.outcomes[Outcome.FAILED] == 1_002, run.stats.outcomes
    out = tmp_path / "r.html"
    started = time.perf_counter()
    write_html(str(out), [run])
    took = time.perf_counter() - started
    size = out.stat().st_size
    print(f"\n10,000 chats (1,002 failing, one of ~10,000 events): {size:,} bytes in {took:.2f} s")
    assert size < 1_500_000, f"{size:,} bytes"
    text = out.read_text(encoding="utf-8")
    assert f"Failing chats: {FAILING_SAMPLE} of 1002" in text
    assert text.count('data-chart="timeline"') == FAILING_SAMPLE
    assert "chat c5001</h4>" in text and "R9 first-event time" in text
    assert results[3].events_received > TIMELINE_EVENTS
    assert "chat c3</h4>" in text and f"the first {TIMELINE_EVENTS:,} drawn" in text


def test_sample_is_round_robin_over_kinds_and_bounded():
    t0 = 0.0
    frequent = [chat(i, t0, drop=Role.TOOL_COMPLETED).finish(10.0) for i in range(500)]
    rare = chat(900, t0, first_at=2.5).finish(10.0)
    picked = sample_failing([*frequent, rare], 20)
    assert len(picked) == 20 and rare in picked
    assert picked[0] is frequent[0]  # within a kind, the order chats finished in
    assert sample_failing(frequent[:3], 20) == frequent[:3]
    assert sample_failing([], 20) == []


def test_a_run_with_no_chat_and_an_unreachable_run_still_render(tmp_path):
    empty = run_of([], name="empty")
    unreachable = run_of([error_result("c0", "down", 5.0, "refused", "connection refused")], name="down")
    out = tmp_path / "r.html"
    write_html(str(out), [empty, unreachable])
    text = out.read_text(encoding="utf-8")
    assert text.count("No chat received a first event.") == 2
    assert "No chats." in text and "UNREACHABLE" in text and "connection refused" in text


def test_a_run_listing_fewer_chats_than_it_counted_says_so(tmp_path):
    """`chatprobe check` keeps a bounded list of a recording's chats; the stats count them all."""
    results = [chat(i, 0.0, drop=Role.TOOL_COMPLETED if i % 2 else None).finish(9.0) for i in range(40)]
    run = run_of(results)
    run.results = results[:10]
    out = tmp_path / "r.html"
    write_html(str(out), [run])
    text = out.read_text(encoding="utf-8")
    assert "drawn from the 10 chats listed; the figures above count all 40." in text
    assert "Failing chats: 5 of 20" in text


def test_a_connections_own_violations_are_listed_escaped_and_scrubbed(tmp_path, monkeypatch):
    """`chatprobe run --html` against a server that, after the user's last chat was judged, sends junk carrying markup
    and the user's own token (as the client closes the connection, before answering its close): the connection's own
    R12 (no chat after it). FAILED on the old code: the rules chart counted it, but its reason was nowhere on the
    page. Now it is listed, escaped (no element made of the server's text) and the token scrubbed."""
    from harness.cli import main
    from tests.integration.outside_servers import InThread, RawWsServer, leaks_at_close

    monkeypatch.setenv("HOSTILE_TOKEN", TOKEN)
    scenario = tmp_path / "one.yaml"
    scenario.write_text("name: one\nusers: 1\nchats_per_user: 1\nconnect_timeout: 5s\n"
                        "expect: {settle: 0.05s, deadline: 5s}\n")
    out = tmp_path / "r.html"
    try:
        with InThread(RawWsServer(leaks_at_close(f"<script>alert(1)</script>{TOKEN}"))) as ws:
            code = main(["run", str(scenario), "--target", ws.url, "--token-env", "HOSTILE_TOKEN", "--html", str(out),
                         "-q"])
    finally:
        redact.forget_all()
    assert code == 1  # the violations objective (max 0)
    text = out.read_text(encoding="utf-8")
    section = text[text.index("Violations of connections"):]
    assert "R12" in section and "malformed frame: not JSON" in section
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in section and "[REDACTED]" in section
    assert TOKEN not in text
    assert [t for t, _ in parse(text).tags if t == "script"] == []


def test_a_scenario_a_stop_came_before_reads_not_run_not_failed(tmp_path):
    from harness.results import not_started

    ran = run_of([], name="ran")
    skipped = not_started(Scenario(name="later"), "agentsim", "interrupted", time.time())
    out = tmp_path / "r.html"
    write_html(str(out), [ran, skipped])
    text = out.read_text(encoding="utf-8")
    row = re.search(r'>later</a></td>.*?</tr>', text, re.S)
    assert row is not None and "NOT RUN" in row.group(0) and "FAILED" not in row.group(0), row
    assert ">not run<" in text and "not run: the run was interrupted before it started" in text


def test_recordings_of_one_name_in_two_directories_each_have_their_own_section_link(tmp_path):
    # `chatprobe check a/run.jsonl b/run.jsonl`: two runs named after their file, run.jsonl. Each section had the id
    # s-run.jsonl, so the page held one id twice and the overview's second link led to the first recording's section.
    from harness.offline import check_files
    from harness.profiles import load_profile

    paths = []
    for folder, kind in (("a", "agent_completed"), ("b", "agent_error")):
        (tmp_path / folder).mkdir()
        frames = [{"type": "agent_started", "run_id": "r1", "seq": 1}, {"type": kind, "run_id": "r1", "seq": 2}]
        lines = [{"t": 100.0, "dir": "send", "conn": "c1", "frame": {"type": "user_message", "payload": {}}}]
        lines += [{"t": 100.1 + i / 10, "dir": "recv", "conn": "c1", "frame": f} for i, f in enumerate(frames)]
        (tmp_path / folder / "run.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        paths.append(tmp_path / folder / "run.jsonl")
    runs = check_files(paths, load_profile("netra"))
    assert [r.scenario.name for r in runs] == ["run.jsonl", "run.jsonl"] and [r.target for r in runs] == [
        str(p) for p in paths]
    out = tmp_path / "r.html"
    write_html(str(out), runs)
    page = parse(out.read_text(encoding="utf-8"))
    ids = [attrs["id"] for tag, attrs in page.tags if attrs.get("id")]
    assert len(ids) == len(set(ids)), ids
    sections = [attrs["id"] for tag, attrs in page.tags if tag == "section"]
    links = [attrs["href"] for tag, attrs in page.tags if tag == "a" and (attrs.get("href") or "").startswith("#")]
    assert links == [f"#{s}" for s in sections] and len(sections) == 2
    assert sections[0] == "s-run.jsonl"  # the first of a name keeps the anchor it always had
