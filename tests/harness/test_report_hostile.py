"""Reports stay valid and clean whatever the server sends: escapes, NULs, the token, NaN and Infinity."""
from __future__ import annotations

import io

import pytest
from rich.console import Console

from harness import redact
from harness.report import LiveView, print_summary, write_html, write_json, write_junit

from .reports import (
    NASTY,
    RAW_UNSAFE,
    TOKEN,
    check_json_report,
    check_junit_report,
    hostile_run,
    strings,
)


@pytest.fixture
def token_known():
    redact.register(TOKEN)
    yield
    redact.forget_all()


@pytest.fixture
def run():
    r = hostile_run()
    # The fixture is only worth something if the checker kept the server's strings: make sure it did.
    assert any(NASTY in v.reason for c in r.results for v in c.violations)
    assert any(TOKEN in (c.error or "") for c in r.results)
    return r


def test_json_is_strict_schema_valid_and_clean(tmp_path, run, token_known):
    out = tmp_path / "r.json"
    write_json(str(out), [run])
    text = out.read_text(encoding="utf-8")
    doc = check_json_report(out)  # strict parse (no NaN/Infinity) and the shipped schema
    assert "NaN" not in text and "Infinity" not in text
    assert TOKEN not in text and not RAW_UNSAFE.search(text)
    assert not any(RAW_UNSAFE.search(s) for s in strings(doc))
    chats = doc["scenarios"][0]["chats"]
    events = chats[0]["events"]
    assert events[0]["wire_type"].startswith("agent_started\\x1b[2J\\x1b]0;pwned\\x07")  # escaped, still readable
    assert "[REDACTED]" in events[0]["wire_type"]
    assert events[1]["server_time"] is None and events[2]["server_time"] is None  # NaN, Infinity
    assert events[1]["seq"] == str(10**30)  # past what a double holds exactly
    objective = doc["scenarios"][0]["objectives"][-1]
    assert objective["limit"] is None and objective["value"] is None and objective["ok"] is False


def test_junit_parses_validates_and_is_clean(tmp_path, run, token_known):
    out = tmp_path / "r.xml"
    write_junit(str(out), [run])
    text = out.read_text(encoding="utf-8")
    root = check_junit_report(out)
    assert TOKEN not in text and not RAW_UNSAFE.search(text)
    failure = root.find(".//testcase/failure")
    assert failure is not None and "\\x1b[2J" in failure.text and "<script>" in failure.text  # escaped by XML
    assert "\\x1b" in root.find(".//testcase/system-out").text


def test_console_output_escapes_server_strings(run, token_known):
    plain = io.StringIO()
    print_summary(Console(file=plain, width=200, color_system=None, force_terminal=False), [run], worst=5)
    text = plain.getvalue()
    assert "\x1b" not in text and not RAW_UNSAFE.search(text)
    assert "\\x1b[2J" in text and TOKEN not in text and "[REDACTED]" in text

    tty = io.StringIO()  # a real terminal: rich's own colours are there, the server's sequences are not
    print_summary(Console(file=tty, width=200, force_terminal=True, color_system="truecolor"), [run], worst=5)
    text = tty.getvalue()
    for seq in ("\x1b[2J", "\x1b]0;", "\x07", "\x00", "\x9b", "\u202e", "\x1b[5m"):
        assert seq not in text
    assert TOKEN not in text


def test_live_view_line_is_clean(run, token_known):
    view = LiveView(Console(file=io.StringIO()))
    view.chat_started(f"hostile{NASTY}")
    for r in run.results:
        view.chat_finished(r)
    line = view._render().plain
    assert not RAW_UNSAFE.search(line) and "\x1b" not in line


def test_html_report_is_clean(tmp_path, run, token_known):
    out = tmp_path / "r.html"
    write_html(str(out), [run])
    text = out.read_text(encoding="utf-8")
    assert TOKEN not in text and "\x1b" not in text and "\x00" not in text


def test_clean_is_identity_for_ordinary_text():
    for s in ("agent_started", "R2 required: missing tool_completed (event #4)", "über 2 s → ok", ""):
        assert redact.clean(s) == s


def test_a_big_run_is_written_compact_and_still_valid(tmp_path, run, token_known):
    import copy

    from harness.report import INDENT_MAX_CHATS
    from harness.stats import compute

    run.results = [copy.copy(run.results[i % len(run.results)]) for i in range(INDENT_MAX_CHATS + 1)]
    run.stats = compute(run.results)
    out = tmp_path / "r.json"
    write_json(str(out), [run])
    assert out.read_text().count("\n") == 1  # compact: one line
    doc = check_json_report(out)
    assert len(doc["scenarios"][0]["chats"]) == INDENT_MAX_CHATS + 1
