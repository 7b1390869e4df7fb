"""agentsim's fault grammar reads a duration as chatprobe does (`chatprobe run --sim-fault delay_first=1m30s@0.5`
means what a scenario's `1m30s` means): the two parsers, kept apart (agentsim imports nothing of the harness), are
held to one table; a bad duration is refused naming the fault."""
from __future__ import annotations

import pytest

from agentsim import faults
from harness import durations
from harness.cli import main

# text -> seconds, or None: refused
TABLE = {
    "2s": 2.0, "250ms": 0.25, "2.5": 2.5, ".5s": 0.5, "1.5m": 90.0, "2 s": 2.0, " 3s ": 3.0,
    "1m30s": 90.0, "2h45m": 9900.0, "1h 30m": 5400.0, "1h2m3.5s": 3723.5, "1m500ms": 60.5, "0": 0.0,
    "30s1m": None, "1m1m": None, "5us": None, "1d": None, "": None, "  ": None, "-1s": None, "2.": None,
    "1:30": None, "2S": None, "٢s": None, "s": None, "1 m 30 s x": None, "9" * 70: None, "8784h1s": None,
}


@pytest.mark.parametrize(("text", "seconds"), TABLE.items())
def test_agentsim_reads_a_duration_as_chatprobe_does(text, seconds):
    try:
        ours: float | None = durations.parse_duration(text)
    except ValueError:
        ours = None
    try:
        sims: float | None = faults.parse_duration(text)
    except faults.FaultSpecError:
        sims = None
    assert ours == sims == (pytest.approx(seconds) if seconds is not None else None), (text, ours, sims)


def test_a_fault_takes_a_compound_duration_and_refuses_a_bad_one_naming_the_fault():
    # `delay_first=1m30s` was "bad duration '1m30s'", while every duration of chatprobe takes it.
    assert faults.parse_fault("delay_first=1m30s@0.5").value == 90.0
    assert faults.parse_fault("stall=1h 30m@0.1").value == 5400.0
    with pytest.raises(faults.FaultSpecError, match=r"^'stall=30s1m@0.1': fault stall: bad duration '30s1m'"):
        faults.parse_fault("stall=30s1m@0.1")


def test_a_sim_fault_with_a_bad_duration_exits_2_naming_it(capsys):
    assert main(["run", "basic", "--sim-fault", "delay_first=1m1m@1"]) == 2
    err = capsys.readouterr().err
    assert "--sim-fault" in err and "fault delay_first: bad duration '1m1m'" in err and len(err.splitlines()) == 1, err
