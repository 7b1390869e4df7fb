"""A scenario key a user misspells, or brings from k6 or Locust, is refused (exit 2, one line) with the key meant."""
from __future__ import annotations

import pytest

from .test_cli_ux import run_cli
from .test_config_refusals import one_error


@pytest.mark.parametrize("line,field,meant", [
    ("chat_per_user: 2", "chat_per_user", "chats_per_user"),
    ("expect: {first_event_limt: 1s}", "expect.first_event_limt", "first_event_limit"),
    ("objectives: {error_rate: {max: 0.01}}", "objectives.error_rate", "error_ratio"),
    ("stages: [{duration: 5s, target: 5}]", "stages.0.target", "users"),  # k6's name for it
    ("thresholds: {}", "thresholds", "objectives"),
])
def test_a_misspelt_or_foreign_key_says_which_key_was_meant(tmp_path, line, field, meant):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"name: s\nusers: 1\n{line}\n")
    one_error(run_cli("run", str(scenario)), f"{scenario}:3: field '{field}'", f"(did you mean '{meant}'?)")


def test_a_key_like_none_gets_no_guess(tmp_path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text("name: s\nusers: 1\nflux_capacitor: 3\n")
    assert "did you mean" not in one_error(run_cli("run", str(scenario)), "field 'flux_capacitor'")
