"""The documents SREs are sent to exist where they are cited: every docs/*.md#anchor in the runbook, the alert rules
and the dashboard names a real heading, nothing cites the old shared contract, and docs/metrics.md shows the
buckets the code declares."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from monitors import metrics

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CITING = [DOCS / "runbook.md", DOCS / "protocol.md", DOCS / "metrics.md", ROOT / "monitors/rules/chatprobe.rules.yml",
          ROOT / "dashboards/chatprobe-overview.json", ROOT / "dashboards/generate.py"]
LINK = re.compile(r"(?:docs/)?\b(protocol|metrics|runbook)\.md#([\w-]+)")


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", doc.read_text(), re.MULTILINE)}


def test_the_anchor_rule_matches_githubs():
    assert github_anchor("R9 first-event time") == "r9-first-event-time"
    assert github_anchor("Changes from the first contract") == "changes-from-the-first-contract"
    assert github_anchor("ChatEventsMissing") == "chateventsmissing"


@pytest.mark.parametrize("path", CITING, ids=lambda p: p.name)
def test_every_cited_anchor_exists(path):
    text = path.read_text(encoding="utf-8")
    cited = LINK.findall(text)
    for doc, anchor in cited:
        assert anchor in anchors(DOCS / f"{doc}.md"), f"{path.name} cites {doc}.md#{anchor}, which has no such heading"


def test_runbook_rules_and_dashboard_cite_the_repository_docs():
    for path in (DOCS / "runbook.md", ROOT / "monitors/rules/chatprobe.rules.yml",
                 ROOT / "dashboards/chatprobe-overview.json", ROOT / "dashboards/generate.py"):
        text = path.read_text(encoding="utf-8")
        assert "shared/" not in text and not re.search(r"(?<![\w/])(PROTOCOL|METRICS)\.md", text), path.name
    assert LINK.search((ROOT / "dashboards/chatprobe-overview.json").read_text())
    assert "protocol.md#r8-isolation" in (DOCS / "runbook.md").read_text()


def test_metrics_doc_lists_the_buckets_the_code_declares():
    text = (DOCS / "metrics.md").read_text()
    for name, declared in (("chatprobe_time_to_first_event_seconds", metrics.TIME_TO_FIRST_EVENT_BUCKETS),
                           ("chatprobe_chat_duration_seconds", metrics.CHAT_DURATION_BUCKETS),
                           ("chatprobe_event_delay_seconds", metrics.EVENT_DELAY_BUCKETS)):
        row = re.search(rf"^\| `{name}` \| ([^|]+) \|$", text, re.MULTILINE)
        assert row, name
        shown = tuple(float(v.strip("* ")) for v in row.group(1).split(","))
        assert shown == declared, name
