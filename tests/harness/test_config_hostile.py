"""Hostile scenario files and --objective values exit 2 with one message naming file, line and field, quickly.

Every case runs the real `chatprobe run` as a subprocess. "Quickly" is the CPU time the process used, never the wall
clock, which a loaded machine stretches at will (three seconds of it, the subprocess timeout this was, failed the
interpreter's own start-up under three parallel test workers on two cores): the issue allows two seconds for any file
under the size limit, one more is left for the interpreter (half a second of CPU here). Before these bounds, the deep
files below took 50 s to forever and a 1 MiB list took 18 s, nearly all of it CPU; a process that hangs is stopped
at HANG_SECONDS.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import yamlfile
from harness.scenario import Objectives, apply_overrides, load_scenario
from harness.yamlfile import (
    MAX_ALIASES,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    ConfigError,
)

CHATPROBE = Path(sys.executable).with_name("chatprobe")
# The code under test is the one these tests import (a checkout on PYTHONPATH), not another the environment installed.
PYTHONPATH = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}
BOUND_SECONDS = 3.0  # of CPU
HANG_SECONDS = 60.0
HUGE = "9" * 400


def chatprobe_run(*args: str) -> subprocess.CompletedProcess:
    """`chatprobe run ARGS`, failing "took too long" past BOUND_SECONDS of CPU (what the process and its own children
    used: this test's process runs nothing else meanwhile), or past HANG_SECONDS (TimeoutExpired)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([str(CHATPROBE), "run", *args], capture_output=True, text=True, timeout=HANG_SECONDS,
                          check=False, env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1", **PYTHONPATH})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    assert cpu < BOUND_SECONDS, f"chatprobe run {' '.join(args)[:200]}: {cpu:.2f}s of CPU"
    return proc


def assert_one_clean_message(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr
    assert "Traceback" not in err and "Traceback" not in proc.stdout, err
    assert err.count("\n") == 1, err  # one message, one line
    for needle in needles:
        assert needle in err, (needle, err)


# name: (file text, line, field, a word of the reason)
BAD_VALUES = {
    "users is a boolean": ("name: x\nusers: true\n", 2, "users", "integer"),
    "chats_per_user of 400 digits": (f"name: x\nchats_per_user: {HUGE}\n", 2, "chats_per_user", "less than"),
    "concurrency of 400 digits": (f"name: x\nconcurrency: {HUGE}\n", 2, "concurrency", "less than"),
    "reconnect is a number": ("name: x\nreconnect: 1\n", 2, "reconnect", "boolean"),
    "repeat is a boolean": ("name: x\nsteps:\n  - chat:\n      repeat: true\n", 4, "steps.0.chat.repeat", "integer"),
    "deadline of 400 digits": (f"name: x\nexpect:\n  deadline: {HUGE}\n", 3, "expect.deadline", "too long"),
    "ratio NaN": ("name: x\nobjectives:\n  error_ratio:\n    max: .nan\n", 4, "objectives.error_ratio.max",
                  "finite"),
    "ratio above 1": ("name: x\nobjectives:\n  passed_ratio:\n    min: 1.5\n", 4, "objectives.passed_ratio.min",
                      "less than or equal to 1"),
    "negative ratio": ("name: x\nobjectives:\n  missing_events_ratio: {max: -0.1}\n", 3,
                       "objectives.missing_events_ratio.max", "greater than or equal to 0"),
    "ratio is a boolean": ("name: x\nobjectives:\n  error_ratio: {max: true}\n", 3, "objectives.error_ratio.max",
                           "number"),
    "ratio is a string": ("name: x\nobjectives:\n  error_ratio: {max: '5%'}\n", 3, "objectives.error_ratio.max",
                          "number"),
    "negative count": ("name: x\nobjectives:\n  violations:\n    max: -1\n", 4, "objectives.violations.max",
                       "greater than or equal to 0"),
    "infinite count": ("name: x\nobjectives:\n  violations:\n    max: .inf\n", 4, "objectives.violations.max",
                       "finite"),
    "count of 400 digits": (f"name: x\nobjectives:\n  violations:\n    max: {HUGE}\n", 4,
                            "objectives.violations.max", "number"),
    "min above max": ("name: x\nobjectives:\n  passed_ratio:\n    min: 0.9\n    max: 0.5\n", 4,
                      "objectives.passed_ratio", "no run can meet"),
    "latency NaN": ("name: x\nobjectives:\n  time_to_first_event:\n    p95: .nan\n", 4,
                    "objectives.time_to_first_event.p95", "finite"),
    "latency infinite": ("name: x\nobjectives:\n  chat_duration: {p99: .inf}\n", 3,
                         "objectives.chat_duration.p99", "finite"),
    "latency negative": ("name: x\nobjectives:\n  chat_duration: {max: -2s}\n", 3,
                         "objectives.chat_duration.max", "not a duration"),
    "latency of 400 digits": (f"name: x\nobjectives:\n  chat_duration: {{p50: {HUGE}}}\n", 3,
                              "objectives.chat_duration.p50", "too long"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_impossible_values_exit_2_naming_file_line_field(tmp_path, case):
    text, line, field, reason = BAD_VALUES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    proc = chatprobe_run(str(path))
    assert_one_clean_message(proc, f"{path}:{line}: field '{field}'", reason)
    assert HUGE not in proc.stderr  # a 400-digit value is not echoed whole


def _deep_flow_sequence() -> str:
    n = 300_000
    return "name: x\nsteps: " + "[" * n + "]" * n + "\n"


def _deep_flow_mapping() -> str:
    n = 100_000
    return "name: x\nsteps: " + "{a: " * n + "1" + "}" * n + "\n"


def _deep_block_sequence() -> str:  # `- - - - x`: one line, a new level every two characters
    return "name: x\nsteps:\n  " + "- " * 400_000 + "x\n"


def _deep_block_mapping() -> str:  # the deepest indented mapping that fits in the size limit
    return "name: x\nexpect:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(1_300))


def _many_values() -> str:
    return "name: x\nmessages: [" + ",".join(["a"] * 300_000) + "]\n"


def _alias_doubling() -> str:
    # 18 aliases (under the limit), each level doubling the one before: 2**9 copies of a 5,000-item list; the
    # fourth line (a3, 40,000 values) is the first past the limit.
    lines = ["a0: &a0 [" + ",".join(["x"] * 5_000) + "]"]
    lines += [f"a{i + 1}: &a{i + 1} [*a{i}, *a{i}]" for i in range(9)]
    return "\n".join(lines) + "\nname: x\n"


HOSTILE_STRUCTURES = {
    "flow sequences 300,000 deep": (_deep_flow_sequence, "2: ", "nested too deeply"),
    "flow mappings 100,000 deep": (_deep_flow_mapping, "2: field 'steps.a.a.a…'", "nested too deeply"),
    "block sequences 400,000 deep on one line": (_deep_block_sequence, "3: ", "nested too deeply"),
    "block mappings 1,300 deep": (_deep_block_mapping, f"{MAX_DEPTH + 2}: field 'expect.k0.k1.k2…'",
                                  "nested too deeply"),
    "300,000 values": (_many_values, f"2: field 'messages.{MAX_NODES - 5}': ", f"more than {MAX_NODES} values"),
    "aliases that double a list nine times": (_alias_doubling, "4: field 'a3': ", "aliases are expanded"),
}


@pytest.mark.parametrize("case", list(HOSTILE_STRUCTURES))
def test_hostile_yaml_under_the_size_limit_is_rejected_within_the_bound(tmp_path, case):
    make, where, reason = HOSTILE_STRUCTURES[case]
    text = make()
    assert len(text.encode()) <= MAX_FILE_BYTES, "the case must be under the size limit to mean anything"
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    assert_one_clean_message(chatprobe_run(str(path)), f"{path}:{where}", reason)


def test_a_large_file_within_every_bound_is_read_whole_within_the_bound(tmp_path):
    """Thousands of steps (just under the value limit, a few hundred KiB) are parsed, checked and validated in
    full: the mistake on the last line is found, with its line."""
    steps = (MAX_NODES - 100) // 7  # 7 values per step
    path = tmp_path / "big.yaml"
    path.write_text("name: x\nsteps:\n" + "  - chat: {message: hi, repeat: 2}\n" * steps + "users: true\n")
    assert_one_clean_message(chatprobe_run(str(path)), f"{path}:{steps + 3}: field 'users'")


def test_aliases_past_the_limit_name_the_line(tmp_path):
    path = tmp_path / "aliases.yaml"
    path.write_text("a: &a x\nlist:\n" + "".join("  - *a\n" for _ in range(MAX_ALIASES + 1)) + "name: x\n")
    assert_one_clean_message(chatprobe_run(str(path)), f"{path}:{MAX_ALIASES + 3}: field 'list.{MAX_ALIASES}': ",
                             "aliases")


# name: (file text, line, field, a word of the reason). Each named the file and line but no field (a `!!python/...`
# tag: "not valid YAML: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:...'").
YAML_MISTAKES = {
    "a tag that builds an object": ("name: x\nexpect:\n  deadline: !!python/object/apply:os.system [echo pwned]\n",
                                    3, "expect.deadline", "the tag !!python/object/apply:os.system is not allowed"),
    "a tag on a step": ("name: x\nsteps:\n  - chat: !!python/object:harness.Foo {a: 1}\n", 3, "steps.0.chat",
                        "the tag !!python/object:harness.Foo is not allowed"),
    "a tag in a list": ("name: x\nmessages:\n  - hi\n  - !!python/name:os.system x\n", 4, "messages.1",
                        "!!python/name:os.system is not allowed"),
    "a tag on a key": ("name: x\nexpect:\n  !!python/tuple [a]: 1\n", 3, "expect", "!!python/tuple is not allowed"),
    "a key twice": ("name: x\nexpect:\n  deadline: 5s\n  deadline: 6s\n", 4, "expect.deadline",
                    "duplicate key 'deadline' (first on line 3)"),
    "a tab for indentation": ("name: x\nexpect:\n\tdeadline: 5s\n", 3, "expect", "YAML indents with spaces only"),
    "an alias of nothing": ("name: x\nexpect:\n  deadline: *nope\n", 3, "expect.deadline", "undefined alias"),
    # Named the file only: "a value cannot be read: Exceeds the limit (4300 digits) for integer string conversion…"
    # and "a value cannot be read: day is out of range for month" (PyYAML reads 2001-02-29 as a date, and fails).
    "an integer of 5,000 digits": (f"name: x\nexpect:\n  deadline: {'9' * 5000}\n", 3, "expect.deadline",
                                   "an integer of 5000 digits cannot be read"),
    "a message that is a date that is none": ("name: x\nmessage: 2001-02-29\n", 2, "message",
                                              "read by YAML as a date, and is none (day is out of range for month); "
                                              "if it is text, quote it: '2001-02-29'"),
    "an impossible date in a list": ("name: x\nmessages:\n  - hi\n  - 2024-13-01\n", 4, "messages.1",
                                     "read by YAML as a date"),
    # "nested too deeply to be a configuration", no line nor field: the alias made the value hold itself.
    "an alias inside its own anchor": ("name: x\nexpect: &e\n  deadline: 5s\n  x: [*e]\n", 4, "expect.x.0",
                                       "the alias *e is inside the value its anchor &e names"),
    "a merge of the mapping into itself": ("name: x\nexpect: &e {<<: *e}\n", 2, "expect.<<",
                                           "the alias *e is inside"),
    # Line 1 and field '1' (pydantic locates the key `on` as 1, `~` as 'None', which no key of the file spells).
    "a key YAML reads as a boolean": ("name: x\nexpect:\n  deadline: 5s\n  on: 1\n", 4, "expect.on",
                                      "Keys should be strings (YAML read the key on as the boolean true"),
    "a key YAML reads as null": ("name: x\n~: 1\n", 2, "~", "YAML read the key ~ as null"),
    # Only "Input should be a valid string".
    "a message that is a date": ("name: x\nmessage: 2026-12-05\n", 2, "message",
                                 "YAML read the value as a date: text that looks like one is text only in quotes, "
                                 "e.g. '2026-12-05'"),
    # "field '?': not valid YAML: found unhashable key" (a key with no name shown as '?', in words of PyYAML's).
    "a key that is a list": ("name: x\nexpect:\n  deadline: 5s\n  [a]: x\n", 4, "expect",
                             "found a key that is a list or a mapping"),
    # "the tag !!!secret": a local tag shown with YAML's own prefix before it.
    "a local tag": ("name: x\nmessage: !secret hi\n", 2, "message", "the tag !secret is not allowed"),
}


@pytest.mark.parametrize("case", list(YAML_MISTAKES))
def test_a_yaml_mistake_names_file_line_and_field(tmp_path, case):
    text, line, field, reason = YAML_MISTAKES[case]
    path = tmp_path / "mistake.yaml"
    path.write_text(text)
    proc = chatprobe_run(str(path))
    assert_one_clean_message(proc, f"{path}:{line}: field '{field}': ", reason)
    assert "pwned" not in proc.stdout + proc.stderr


# A target's name the monitor's config refuses, named as written at its own line: each was named at its url's line
# (the value's), and a name YAML reads as no text as 'targets.[key]' (which target?) or as 'targets.1.[key]' (`on`),
# with "Input should be a valid string" for a word such as `on`.
BAD_TARGET_NAMES = {
    "'a b'": ("targets.a b.[key]", "String should match pattern"),
    "on": ("targets.on.[key]", "YAML read the key on as the boolean true"),
    "~": ("targets.~.[key]", "YAML read the key ~ as null"),
    "1": ("targets.1.[key]", "YAML read the key 1 as the number 1"),
    "2024-01-01": ("targets.2024-01-01.[key]", "YAML read the key 2024-01-01 as a date"),
}


@pytest.mark.parametrize("name", list(BAD_TARGET_NAMES))
def test_a_monitor_target_name_that_is_refused_is_named_at_its_own_line(tmp_path, name):
    field, reason = BAD_TARGET_NAMES[name]
    path = tmp_path / "monitor.yaml"
    path.write_text(f"interval: 30s\ntargets:\n  ok:\n    url: ws://127.0.0.1:9/ws\n  {name}:\n"
                    "    url: ws://127.0.0.1:9/ws\n")
    proc = subprocess.run([str(CHATPROBE), "monitor", "--config", str(path), "--once"], capture_output=True,
                          text=True, timeout=HANG_SECONDS, check=False,
                          env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1", **PYTHONPATH})
    assert_one_clean_message(proc, f"{path}:5: field '{field}': ", reason)


BAD_OBJECTIVE_FLAGS = {
    "error_ratio.max=.nan": ("error_ratio.max", "finite"),
    "error_ratio.max=nan": ("error_ratio.max", "number"),
    "passed_ratio.min=2": ("passed_ratio.min", "less than or equal to 1"),
    "missing_events_ratio.max=-0.01": ("missing_events_ratio.max", "greater than or equal to 0"),
    "missing_events_ratio.max=true": ("missing_events_ratio.max", "number"),
    "violations.max=-1": ("violations.max", "greater than or equal to 0"),
    "violations.max=.inf": ("violations.max", "finite"),
    f"violations.max={HUGE}": ("violations.max", "number"),
    "time_to_first_event.p95=.inf": ("time_to_first_event.p95", "finite"),
    "time_to_first_event.p95=-1s": ("time_to_first_event.p95", "duration"),
    f"chat_duration.p99={HUGE}": ("chat_duration.p99", "too long"),
    "passed_ratio.max=0.5": ("passed_ratio", "no run can meet"),  # the default min is 1.0
}


@pytest.mark.parametrize("flag", list(BAD_OBJECTIVE_FLAGS))
def test_impossible_objective_flags_exit_2_naming_the_field(flag):
    field, reason = BAD_OBJECTIVE_FLAGS[flag]
    proc = chatprobe_run("basic", "--objective", flag)
    assert_one_clean_message(proc, f"--objective: field '{field}'", reason)
    assert HUGE not in proc.stderr


def test_possible_objectives_are_still_accepted_as_numbers_and_durations():
    scenario = load_scenario("basic")
    got = apply_overrides(scenario, ["missing_events_ratio.max=0.05", "passed_ratio.min=0", "violations.max=3",
                                     "time_to_first_event.p95=1.5s", "chat_duration.p99=250ms",
                                     "error_ratio.max=1", "passed_ratio.max=1e0"]).objectives
    assert got.missing_events_ratio.max == 0.05 and got.passed_ratio.min == 0 and got.violations.max == 3
    assert got.time_to_first_event.p95 == 1.5 and got.chat_duration.p99 == 0.25 and got.error_ratio.max == 1
    assert got.passed_ratio.max == 1  # 1e0 is text in YAML 1.1, and still a number
    assert Objectives().passed_ratio.min == 1.0  # the defaults themselves pass the checks


def test_boundary_values_in_a_file_are_accepted(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({
        "name": "edge", "users": 1, "chats_per_user": 100000, "reconnect": False,
        "objectives": {"missing_events_ratio": {"max": 0}, "passed_ratio": {"min": 1, "max": 1},
                       "violations": {"max": 0}, "error_ratio": {"max": "0.05"},
                       "time_to_first_event": {"p95": "2s"}},
    }))
    scenario = load_scenario(str(path))
    assert scenario.users == 1 and scenario.objectives.passed_ratio.min == 1.0
    assert scenario.objectives.error_ratio.max == 0.05  # a quoted number is still a number (a boolean is not)


def test_without_libyaml_deep_nesting_is_still_refused(tmp_path, monkeypatch):
    """PyYAML without its C extension (the pure-Python parser) gets the same depth check on its event stream."""
    monkeypatch.setattr(yamlfile, "_LOADER", yaml.SafeLoader)
    path = tmp_path / "deep.yaml"
    path.write_text(_deep_flow_mapping())
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_scenario(str(path))


def test_a_fifo_nobody_writes_to_is_an_error_not_a_hang(tmp_path):
    """A scenario, profile or --token-file that is a FIFO with no writer: open() would wait for one for ever."""
    import os

    fifo = tmp_path / "scenario.yaml"
    os.mkfifo(fifo)
    code = ("import sys\nfrom harness import yamlfile\nyamlfile.PIPE_DEADLINE = 0.5\n"
            "try:\n    yamlfile.read_text_file(sys.argv[1], 'scenario')\nexcept yamlfile.ConfigError as exc:\n"
            "    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=30)
    assert f"scenario {fifo}: no end of text within 0.5s" in proc.stdout, proc.stdout + proc.stderr


def test_a_pipe_that_delivers_its_text_late_is_read(tmp_path):
    """`--token-file <(vault read …)`: the writer comes after the reader opened the pipe; its text is read whole."""
    import os
    import threading

    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    opened = threading.Event()

    def writer() -> None:
        opened.wait(10)
        with open(fifo, "w") as out:  # blocks until the reader has it open
            out.write("first part ")
            out.flush()
            out.write("and the rest\n")

    t = threading.Thread(target=writer)
    t.start()
    try:
        opened.set()
        assert yamlfile.read_text_file(fifo, "--token-file") == "first part and the rest\n"
    finally:
        t.join(10)
    assert yamlfile.read_text_file("/dev/null") == ""
    with pytest.raises(ConfigError, match="larger than 1024 KiB"):
        yamlfile.read_text_file("/dev/zero")
