"""Load shapes as data: think time, stages and arrival rates read from YAML (a bad shape is exit 2 naming the file,
line and field), the schedule a Shape gives every driver, per-stage tallies and the knee."""
from __future__ import annotations

import itertools
import random
import subprocess
import sys
from collections import Counter

import pytest

from harness.checker import ChatResult
from harness.events import Outcome
from harness.scenario import MAX_RATE, Scenario, load_scenario
from harness.stats import StageTallies, generator_warnings, knee
from harness.yamlfile import ConfigError


def scenario_file(tmp_path, text: str):
    path = tmp_path / "shape.yaml"
    path.write_text("name: shape\n" + text)
    return str(path)


# -- reading shapes --

def test_think_time_fixed_range_and_per_step(tmp_path):
    sc = load_scenario(scenario_file(tmp_path, "think_time: {min: 1s, max: 3s}\nsteps:\n"
                                               "  - chat: {message: a, think_time: 250ms}\n  - chat: {message: b}\n"))
    assert (sc.think_time.min, sc.think_time.max) == (1.0, 3.0)
    script = sc.user_script(_profile())
    first, second = list(script.plan())
    assert script.pause(first) == 0.25  # the step's own
    rng_draws = [script.pause(second) for _ in range(200)]
    assert all(1.0 <= d <= 3.0 for d in rng_draws) and max(rng_draws) - min(rng_draws) > 1.0  # uniform, not fixed
    fixed = Scenario.model_validate({"name": "f", "think_time": "2s"})
    assert fixed.think_time.sample(random.Random(1)) == 2.0


def test_stages_by_duration_or_until_make_one_schedule():
    sc = Scenario.model_validate({"name": "s", "stages": [
        {"duration": "10s", "users": 10}, {"until": "30s", "users": 10, "ramp": False}, {"duration": 5, "users": 0}]})
    shape = sc.shape()
    assert shape.kind == "users" and shape.total == 35
    assert [(w.start, w.end, w.begin, w.target) for w in shape.windows] == [
        (0, 10, 0, 10), (10, 30, 10, 10), (30, 35, 10, 0)]
    assert [shape.users_at(t) for t in (0.01, 0.99, 1.01, 5, 9.95, 20, 30.01, 34.99)] == [1, 1, 2, 5, 10, 10, 10, 1]
    # Locust's tick (once a second): the line's users half a second on, all at once; None after the end.
    assert [shape.tick(t)[0] for t in (0, 1, 2, 9, 12, 30, 31, 34)] == [1, 2, 3, 10, 10, 9, 7, 1]
    assert shape.tick(34.9) == (1, 1.0) and shape.tick(35) is None and shape.tick(35.5) is None
    assert shape.tick(0.004)[0] == 1 and shape.tick(1.003)[0] == 2  # a tick a few ms late asks the same


def test_arrivals_hold_a_rate_and_follow_a_ramp():
    held = Scenario.model_validate({"name": "a", "arrival_rate": 10, "duration": "20s"}).shape()
    times = list(held.arrivals())
    assert len(times) == 200 and times[0] == pytest.approx(0.05)
    assert all(b - a == pytest.approx(0.1) for a, b in itertools.pairwise(times))
    ramp = Scenario.model_validate({"name": "r", "stages": [{"duration": 10, "rate": 20}]}).shape()
    times = list(ramp.arrivals())
    assert len(times) == 100  # the area under 0 -> 20/s over 10 s
    per_second = Counter(int(t) for t in times)
    assert [per_second[s] for s in range(10)] == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]  # linear


@pytest.mark.parametrize("text, where, words", [
    ("arrival_rate: -5\nduration: 10s\n", ":2: field 'arrival_rate'", "greater than or equal to 0"),
    (f"arrival_rate: {MAX_RATE * 2:g}\nduration: 10s\n", ":2: field 'arrival_rate'", "less than or equal to"),
    ("arrival_rate: 5\n", ":2: field 'arrival_rate'", "arrival_rate needs a duration"),
    ("arrival_rate: 5\nduration: 0s\n", ":3: field 'duration'", "must be more than 0"),
    ("stages:\n  - {until: 20s, rate: 5}\n  - {until: 10s, rate: 8}\n", ":4: field 'stages.1.until'",
     "stages out of order: until 10s is not after the previous stage's end at 20s"),
    ("stages:\n  - {duration: 5s, rate: -1}\n", ":3: field 'stages.0.rate'", "greater than or equal to 0"),
    ("stages:\n  - {duration: 0s, users: 3}\n", ":3: field 'stages.0'", "duration must be more than 0"),
    ("stages:\n  - {duration: 5s, users: 3}\n  - {duration: 5s, rate: 3}\n", ":4: field 'stages.1.rate'",
     "every stage gives `users`"),
    ("stages:\n  - {duration: 5s}\n", ":3: field 'stages.0'", "either `users`"),
    ("arrival_rate: 5\nduration: 5s\nusers: 4\n", ":4: field 'users'", "open-model scenario"),
    ("stages:\n  - {duration: 5s, users: 3}\nusers: 4\n", ":4: field 'users'", "the stages give the number of users"),
    ("max_in_flight: 5\n", ":2: field 'max_in_flight'", "goes with an open model"),
    ("think_time: {min: 3s, max: 1s}\n", ":2: field 'think_time'", "min 3s is above max 1s"),
    # The value written is what is wrong (a scalar is no {min, max} mapping): the field as the file has it, not
    # think_time.min, which names a key the file does not hold (yamlfile._resolve, as for steps.0.chat).
    ("think_time: -1s\n", ":2: field 'think_time'", "'-1s' is not a duration"),
])
def test_a_bad_shape_names_file_line_and_field(tmp_path, text, where, words):
    path = scenario_file(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_scenario(path)
    assert f"{path}{where}" in str(exc.value) and words in str(exc.value), str(exc.value)


def test_a_bad_shape_is_exit_2_from_the_command_line(tmp_path):
    path = scenario_file(tmp_path, "stages:\n  - {until: 20s, rate: 5}\n  - {until: 10s, rate: 8}\n")
    proc = subprocess.run([sys.executable, "-m", "harness", "run", path], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{path}:4: field 'stages.1.until'" in proc.stderr and "Traceback" not in proc.stderr


def test_the_builtin_knee_scenario_is_bounded_and_open():
    sc = load_scenario("knee")
    assert sc.open_model and sc.shape().total < 45 and sc.max_duration < 60
    rates = [w.target for w in sc.shape().windows]
    assert rates == sorted(rates) and rates[-1] >= 1000
    assert sc.planned_chats() == len(list(sc.shape().arrivals())) == 45400  # the live view's "done/planned"
    staged = Scenario.model_validate({"name": "u", "stages": [{"duration": 5, "users": 3}]})
    assert staged.planned_chats() is None  # users play until the last stage ends: open-ended


# -- results by stage --

def _result(sent_at: float, ttfe: float | None, outcome=Outcome.PASSED) -> ChatResult:
    return ChatResult(chat_id="c", scenario="s", outcome=outcome, violations=[], missing=[], events=[],
                      sent_at=sent_at, time_to_first_event=ttfe, duration=None, event_delays={})


def test_stage_tallies_knee_and_the_rate_achieved():
    shape = Scenario.model_validate({"name": "k", "stages": [
        {"duration": 10, "rate": 10, "ramp": False}, {"duration": 10, "rate": 20, "ramp": False},
        {"duration": 10, "rate": 40, "ramp": False}]}).shape()
    tallies = StageTallies(shape)
    for i in range(100):
        tallies.add(_result(i * 0.1, 0.01), i * 0.1)
        tallies.begun(i * 0.1, 0.002)
    for i in range(200):
        tallies.add(_result(10 + i * 0.05, 2.5 if i % 10 == 0 else 0.02), 10 + i * 0.05)  # 10% over 2 s
        tallies.begun(10 + i * 0.05, 0.002)
    for i in range(400):  # the generator fell behind: 20 dropped, 280 begun on time, 100 up to 0.5 s late
        t = 20 + i * 0.025
        if i < 20:
            tallies.dropped(t)
            continue
        tallies.add(_result(t, 0.05), t)
        tallies.begun(t, 0.5 if i >= 300 else 0.01)
    stats = tallies.stats()
    assert [s.chats for s in stats] == [100, 200, 380] and [s.dropped for s in stats] == [0, 0, 20]
    assert [s.achieved_rate for s in stats] == [10, 20, 30] and [s.asked_rate for s in stats] == [10, 20, 40]
    assert stats[2].late == 100 and stats[2].lag_max == 0.5
    assert stats[1].ttfe["p95"] == 2.5 and stats[0].ttfe["p95"] == 0.01
    assert knee(stats, 2.0) is stats[1]
    assert knee(stats[:1], 2.0) is None
    assert knee([stats[2]], 2.0) is None  # 20 of 400 dropped: 5% is not over 5%
    stats[2].dropped = 21
    assert knee([stats[2]], 2.0) is stats[2]  # over 5% dropped: broken though every chat was fast
    warnings = generator_warnings(stats)
    assert len(warnings) == 1 and "stage 3 asked 40 chats/s" in warnings[0], warnings
    assert "achieved 30/s on time; 100 chats began up to 0.5 s late" in warnings[0], warnings


def test_stage_tallies_travel_as_plain_data():
    shape = Scenario.model_validate({"name": "t", "stages": [{"duration": 5, "users": 2}]}).shape()
    a, b = StageTallies(shape), StageTallies(shape)
    a.add(_result(1, 0.1), 1)
    b.add(_result(2, 0.3), 2)
    from harness.stats import Tally

    wire = {str(i): t.to_dict() for i, t in b.by_stage.items()}
    assert wire["0"]["ttfe"] == [0.3] and type(wire["0"]["ttfe"]) is list  # msgpack's and JSON's own type
    a.merge({int(i): Tally.from_dict(t) for i, t in wire.items()})
    assert a.stats()[0].chats == 2 and a.stats()[0].ttfe["p95"] == 0.3


def test_a_run_long_as_it_may_be_costs_its_tallies_16_bytes_a_chat_each():
    """Every chat's first-event time and duration stay (the percentiles are exact), in the run's tally and its stage's:
    as a list of float objects that was 32 bytes a value and 80 bytes a chat with stages (the float objects shared),
    a long run's largest per-chat cost. Kept as C doubles: 8 bytes a value, 16 a chat in each tally."""
    import tracemalloc

    from harness.stats import Tally

    shape = Scenario.model_validate({"name": "t", "stages": [{"duration": 60, "users": 2}]}).shape()
    tally, stages = Tally(), StageTallies(shape)

    def judge(i: int) -> None:  # a chat's result, let go once counted (as the run's listing does)
        r = _result(i * 0.001, 0.25 + i * 1e-6)
        r.duration = 0.5 + i * 1e-6
        tally.add(r)
        stages.add(r, r.sent_at)

    judge(0)
    n = 20_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1, n + 1):
            judge(i)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert tally.chats == n + 1 and stages.stats()[0].chats == n + 1
    assert tally.stats().ttfe["max"] == 0.25 + n * 1e-6
    assert grown <= 40 * n, grown / n  # 2 tallies x 2 values x 8 bytes, and the arrays' spare room


def _profile():
    from harness.profiles import load_profile

    return load_profile("netra")


def _shaped_run(tmp_path):
    from harness.results import ScenarioRun
    from harness.stats import compute, evaluate

    sc = Scenario.model_validate({"name": "steps", "stages": [
        {"duration": 5, "rate": 10, "ramp": False}, {"duration": 5, "rate": 40, "ramp": False}], "max_in_flight": 50})
    tallies = StageTallies(sc.shape())
    results = [_result(i * 0.1, 0.02) for i in range(50)] + [_result(5 + i * 0.025, 3.0) for i in range(150)]
    for r in results:
        tallies.add(r, r.sent_at)
        tallies.begun(r.sent_at, 0.001)
    for i in range(50):
        tallies.dropped(5 + i * 0.1)
    stats = compute(results)
    stats.dropped = 50
    run = ScenarioRun(scenario=sc, target="sim", results=results, stats=stats,
                      objectives=evaluate(stats, sc.objectives), started_at=1.7e9, elapsed=10.5)
    run.stages = tallies.stats()
    return run


def test_the_reports_show_each_stage_and_the_knee(tmp_path):
    import json

    import jsonschema
    from rich.console import Console

    from harness.report import print_summary, write_html, write_json

    run = _shaped_run(tmp_path)
    console = Console(record=True, width=200)
    print_summary(console, [run])
    text = console.export_text()
    assert "steps by stage" in text and "10/s" in text and "40/s" in text
    assert "the knee: first-event p95 <= 2 s broke in stage 2 at 40 chats/s (p95 3,000 ms, 50 dropped)" in text
    assert "50 chats dropped (due while max_in_flight 50 were in flight" in text

    write_json(str(tmp_path / "r.json"), [run])
    doc = json.loads((tmp_path / "r.json").read_text())
    schema = json.loads(open("harness/schemas/result.schema.json").read())
    jsonschema.validate(doc, schema)
    scenario = doc["scenarios"][0]
    assert [s["chats"] for s in scenario["stages"]] == [50, 150]
    assert [s["dropped_chats"] for s in scenario["stages"]] == [0, 50] and scenario["stats"]["dropped_chats"] == 50
    assert scenario["stages"][1]["time_to_first_event"]["p95"] == 3.0
    assert scenario["knee"] == {"stage": 2, "label": "40/s", "rate": 40.0, "limit": 2.0, "p95": 3.0}

    write_html(str(tmp_path / "r.html"), [run])
    page = (tmp_path / "r.html").read_text()
    assert "<h3>By stage</h3>" in page and 'data-chart="stages"' in page and "<svg" in page
    assert "The knee: first-event p95 crossed 2 s in stage 2 (40 chats/s): p95 3,000 ms, 50 chats dropped." in page
    table = page[page.index('<table class="stages">'):]
    table = table[:table.index("</table>")]
    assert table.count("<tr>") == 3 and "10/s" in table and "40/s" in table
