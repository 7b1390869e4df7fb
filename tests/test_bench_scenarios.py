"""The benchmarks' scenarios are scenarios chatprobe accepts: a stricter rule must not leave a documented bench
command failing at its first step (bench/harness_capacity.py's `first_event_limit: 10` was refused as k6's ms)."""
from __future__ import annotations

import pytest

from bench.harness_capacity import hold_scenario
from harness.scenario import Scenario


@pytest.mark.parametrize("n, think", [(100, 300.0), (15000, 300.0), (1, 2.5)])
def test_capacity_hold_scenario_is_accepted(n: int, think: float) -> None:
    sc = Scenario.model_validate(hold_scenario(n, think))
    assert sc.users == n and sc.chats_per_user == 1
    assert sc.expect.first_event_limit == 10.0
    assert sc.expect.deadline == think + 30
