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


def test_capacity_census_runs_as_documented(tmp_path) -> None:
    """`bench/harness_capacity.py --census` (BENCHMARKS.md) holds the chats it is asked for and prints a figure."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench" / "harness_capacity.py"), "--census", "--steps", "20", "60",
                          "--think", "30", "--bound", "60"], capture_output=True, text=True, timeout=120, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    m = re.search(r"held (\d+) and (\d+) chats: ([\d,]+) B of Python heap", out.stdout)
    assert m and (m[1], m[2]) == ("20", "60"), out.stdout
    assert int(m[3].replace(",", "")) > 1000  # a held chat costs kilobytes (its socket's objects alone)
