"""The pytest plugin's `chatprobe` fixture, as a user's own tests would use it (embedded agentsim)."""
from __future__ import annotations

import pytest

from harness.events import Outcome, Role


def test_fixture_chat_passes_and_reports_timings(chatprobe):
    result = chatprobe.check(chatprobe.chat("What is 6 * 7?", streaming=True))
    assert result.outcome is Outcome.PASSED
    assert result.event_delays[Role.AGENT_STARTED] <= result.event_delays[Role.AGENT_COMPLETED]
    assert result.run_id


def test_fixture_check_explains_a_failure(chatprobe):
    result = chatprobe.chat("Compute 1 + 1. #fail-agent")
    assert result.outcome is Outcome.FAILED
    with pytest.raises(AssertionError, match="R13"):
        chatprobe.check(result)


def test_fixture_expected_error_passes(chatprobe):
    chatprobe.check(chatprobe.chat("Compute 1 + 1. #fail-agent", expect_error="fatal"))
    chatprobe.check(chatprobe.chat("What time is it?"))  # the connection is still usable


def test_plugin_in_a_users_own_test_file(pytester):
    pytester.makepyfile(
        """
        def test_mine(chatprobe):
            chatprobe.check(chatprobe.chat("Look up the capital of France."))

        def test_broken(chatprobe):
            chatprobe.check(chatprobe.chat("Look up the capital of France.", required=["agent_started", "error_event"]))
        """
    )
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    res.assert_outcomes(passed=1, failed=1)
    res.stdout.fnmatch_lines(["*R2 required: missing error_event*"])
