"""The sinks every chat's verdict goes through: what they do per chat, which `chatprobe run` pays 5,000 times a run."""
from __future__ import annotations

import io

from rich.console import Console

from harness.checker import ChatResult
from harness.events import Outcome, Rule, Violation
from harness.report import LiveView
from harness.sinks import Fanout, Sink
from harness.stats import Tally


class _Seen(Sink):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def chat_started(self, scenario: str) -> None:
        self.log.append(f"{self.name} started {scenario}")

    def chat_finished(self, result: ChatResult) -> None:
        self.log.append(f"{self.name} finished {result.chat_id}")


def _result(chat_id: str = "c1", violations: list[Violation] | None = None) -> ChatResult:
    return ChatResult(chat_id=chat_id, scenario="s", outcome=Outcome.FAILED if violations else Outcome.PASSED,
                      violations=violations or [], missing=[], events=[], sent_at=0.0, time_to_first_event=0.01,
                      duration=0.02, event_delays={})


def test_a_fanout_of_fanouts_is_one_flat_list_in_the_same_order():
    log: list[str] = []
    a, b, c = _Seen("a", log), _Seen("b", log), _Seen("c", log)
    out = Fanout([Fanout([a, None, b]), None, c])  # type: ignore[list-item]
    assert out.sinks == [a, b, c]  # one loop per hook, not one per level
    out.chat_started("s")
    out.chat_finished(_result())
    assert log == ["a started s", "b started s", "c started s", "a finished c1", "b finished c1", "c finished c1"]


def test_a_clean_chats_verdict_makes_no_counter_of_its_rules(monkeypatch):
    """Tally and the live view merge a chat's violations by rule: a chat with none (most) builds no Counter for it."""
    def no_counter(self: ChatResult) -> None:
        raise AssertionError("rule_counts() asked of a chat with no violation")

    tally, live = Tally(), LiveView(Console(file=io.StringIO()), "s")
    clean, failed = _result("c1"), _result("c2", [Violation(Rule.R1, "first event is x", 0)])
    with monkeypatch.context() as m:
        m.setattr(ChatResult, "rule_counts", no_counter)
        tally.add(clean)
        live.chat_finished(clean)
    tally.add(failed)
    live.chat_finished(failed)
    assert tally.chats == 2 and dict(tally.violations) == {"R1": 1} and dict(live.rules) == {"R1": 1}
