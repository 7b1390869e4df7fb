"""A bounded, deterministic fuzz of every configuration chatprobe reads: valid files of each kind (the built-in
scenarios and profiles, the README's monitor config, an agentsim config) and valid flag values, mutated the ways a
mistaken or hostile user mutates them. Each mutation must be answered by exit 2 and one line naming the file (and,
in a file with lines, the line), or be a configuration the command takes: never a traceback, a hang, an exit 1.

Nothing here runs a load: each command is given a last, deliberately wrong flag ("the sentinel") that it checks only
after everything else it read was taken, so "the sentinel's message" is the command's own proof that the mutated
input validated, and any other exit 2 must be about the input. The commands run in-process (harness.cli.main,
agentsim.cli.main), stdout and stderr captured; the hang cases (a FIFO, /dev/zero, a directory) run as subprocesses
with a timeout in test_config_hostile.py's manner, below.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentsim import cli as sim_cli
from harness import cli, redact

ROOT = Path(__file__).resolve().parents[2]
# Fixed and derandomized: the same examples on every run (CI). CHATPROBE_FUZZ_EXAMPLES=2000 CHATPROBE_FUZZ_RANDOM=1
# explores further by hand.
FUZZ = settings(max_examples=int(os.environ.get("CHATPROBE_FUZZ_EXAMPLES", 60)),
                derandomize=not os.environ.get("CHATPROBE_FUZZ_RANDOM"),
                deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
MAX_MESSAGE = 1200  # characters of the one line: a megabyte value is never echoed whole

# -- the valid files ----------------------------------------------------------------------------------------------

MONITOR_SEED = """\
targets:
  chat-prod:
    url: wss://chat.example.com/ws
    token_env: FUZZ_CHAT_TOKEN
    header_env: {X-Api-Key: FUZZ_API_KEY}
  chat-staging:
    url: ws://10.0.0.7:8765/ws
    jwt_secret_env: FUZZ_JWT_SECRET
    scenarios: [probe, fatal.yaml]
    insecure: false
    headers: {X-Tenant: acme}
scenarios: [probe]
interval: 30s
timeout: 10s
"""
FATAL_SCENARIO = "name: fatal\nmessage: \"#fail-agent What is 17 * 23?\"\n"
AGENTSIM_SEED = """\
host: 127.0.0.1
port: 8765
no_auth: false
jwt_secret: a-secret-of-the-fuzz
think: 0.01-0.05
tool_latency: [0.001, 0.002]
seed: 7
faults: [drop:tool_completed=0.1, delay_first=2.5s@0.1]
resume_ttl: 30
max_size: 1MiB
max_runs: 1000
max_live_runs_per_user: 4
compression: true
protocol: netra
"""
ENV = {"FUZZ_CHAT_TOKEN": "tok-" + "x" * 20, "FUZZ_API_KEY": "key-" + "y" * 20, "FUZZ_JWT_SECRET": "s" * 32}


# The monitor's sentinel: an address of TEST-NET-1 (RFC 5737), no host's own, so binding it fails: checked when the
# monitor starts serving, after its config and probes are built (a --listen that is no HOST:PORT is refused first).
NOT_HERE = "192.0.2.1:9464"


def _seeds(folder: Path) -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.yaml"))]


def _readme_scenario() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return next(block for block in re.findall(r"```yaml\n(.*?)```", readme, re.S) if block.startswith("name:"))


# -- running a command in-process ---------------------------------------------------------------------------------

def invoke(main: Callable[[list[str]], int], argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of a command's main in this process; a traceback is an exception out of here."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return code, err.getvalue()


def one_line(code: int, err: str, expected: int = 2) -> str:
    assert code == expected, (code, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip() and not re.match(r"[\w ]+: warning: ", line)]
    assert len(lines) == 1, err[-3000:]
    assert len(lines[0]) <= MAX_MESSAGE, lines[0][:300]
    return lines[0]


class Kind:
    """A kind of configuration file: its valid seeds, how a command reads it, and the sentinel that proves it was
    taken."""

    def __init__(self, name: str, seeds: list[str], argv: Callable[[str], list[str]], sentinel: str,
                 main: Callable[[list[str]], int] = cli.main, sentinel_code: int = 2) -> None:
        self.name, self.seeds, self.argv, self.sentinel = name, seeds, argv, sentinel
        self.main, self.sentinel_code = main, sentinel_code

    def __repr__(self) -> str:
        return self.name


def _busy_port() -> int:
    """A loopback port something listens on: agentsim's listen fails there, after its config was taken (its
    sentinel; agentsim checks nothing after the config it could fail on before it listens)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    _HELD.append(s)
    return s.getsockname()[1]


_HELD: list[socket.socket] = []


def kinds(tmp: Path) -> list[Kind]:
    recording = tmp / "empty.jsonl"
    recording.write_text("")
    (tmp / "fatal.yaml").write_text(FATAL_SCENARIO)
    port = str(_busy_port())
    return [
        # run: the scenario loaded, overridden, fitted to the embedded target; then --sim-fault is parsed.
        Kind("scenario", [*_seeds(ROOT / "scenarios"), _readme_scenario()],
             lambda p: ["run", p, "--sim-fault", "no-such-fault"], "--sim-fault: "),
        # check: the profile (and a scenario) loaded; then --max-size is parsed.
        Kind("profile", [*_seeds(ROOT / "harness" / "profiles"), *_seeds(ROOT / "docs" / "profiles")],
             lambda p: ["check", str(recording), "--profile", p, "--max-size", "0"], "--max-size: "),
        # monitor: the config and every probe it makes built; then --listen is parsed.
        Kind("monitor", [MONITOR_SEED], lambda p: ["monitor", "--config", p, "--listen", NOT_HERE], "--listen"),
        Kind("agentsim", [AGENTSIM_SEED], lambda p: ["--config", p, "--host", "127.0.0.1", "--port", port],
             ": cannot listen: ", main=sim_cli.main),
    ]


# -- mutations ----------------------------------------------------------------------------------------------------

def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, (*prefix, i))
    return out


def _get(data: Any, path: tuple) -> Any:
    for part in path:
        data = data[part]
    return data


# Text that YAML cannot carry as data (tags, aliases, nesting) goes in as a placeholder, replaced after dumping.
_PLACEHOLDERS = {
    "@@TAG@@": "!!python/object/apply:os.system [echo pwned]",
    "@@TAG2@@": "!!binary AAAA",
    "@@TAG3@@": "!custom {a: 1}",
    "@@BOMB@@": "[" + ", ".join(f"&l{i} [" + ", ".join([f"*l{i - 1}" if i else "lol"] * 9) + "]"
                                for i in range(9)) + "]",
    "@@SMALLBOMB@@": "[&b0 [x, x, x, x, x], &b1 [*b0, *b0, *b0, *b0], &b2 [*b1, *b1, *b1, *b1], [*b2, *b2, *b2]]",
    "@@DEEP@@": "[" * 70 + "]" * 70,
    "@@DEEPMAP@@": "{a: " * 70 + "1" + "}" * 70,
    "@@MERGE@@": "{<<: {x: 1}, y: 2}",
    "@@SET@@": "!!set {a, b}",
    "@@TIMESTAMP@@": "2001-12-14t21:59:43.10-05:00",
    "@@OCTAL@@": "0o17",
    "@@SEXAGESIMAL@@": "1:30",
}

HOSTILE_VALUES = st.sampled_from([
    None, [], {}, "", " ", "x", 0, -1, 1, 2**63, 10**400, -10**400, 0.0, -0.0, 1e308, -1e308, math.inf, -math.inf,
    math.nan, 1e-320, True, False, "1e309", "-1e309", "nan", "inf", "-5s", "0s", "1m1m", "500", "1.5", "2s",
    "a" * 200_000, "\u202e\u200b\ufeff", "é" * 50, "\U0001F600", "x\ty", "\x1b[31mred", "line\nbreak", "nul\x00",
    "\x7f\x85\u2028", "{placeholder}", "%s%n", "../../../../etc/passwd", "/dev/zero", "~", "null", "yes", "no",
    "on", [None], [[[]]], {"x": None}, {"": 1}, {None: 1}, {1: 2}, {"k" * 5000: 1}, [1] * 5000,
    *_PLACEHOLDERS,
])


@st.composite
def mutated(draw: st.DrawFn, kind: Kind) -> tuple[str, bytes]:
    """(what was done, the file's bytes) from one of the kind's seeds, one to three mutations deep."""
    seed = draw(st.sampled_from(kind.seeds))
    data = yaml.safe_load(seed)
    done: list[str] = []
    text_ops: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(data)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "replace", "replace", "drop", "wrap", "unknown", "retype", "text"]))
        parent = _get(data, path[:-1]) if path else None
        if op == "text":
            text_ops.append(draw(st.sampled_from(["bom", "bad-utf8", "control", "two-docs", "dup-key", "empty",
                                                  "crlf", "tabs", "truncate", "nul", "only-comment", "scalar-doc"])))
            done.append(text_ops[-1])
            continue
        if not path:
            if op in ("replace", "retype"):
                data = copy.deepcopy(draw(HOSTILE_VALUES))
                done.append(f"top level := {str(data)[:60]!r}")
            continue
        if op == "drop" and isinstance(parent, dict):
            del parent[path[-1]]
            done.append(f"drop {'.'.join(map(str, path))}")
        elif op == "drop" and isinstance(parent, list):
            del parent[path[-1]]
            done.append(f"drop {'.'.join(map(str, path))}")
        elif op == "unknown" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["vus", "nmae", "extra", "Users", "users ", "__class__"]))] = 1
            done.append(f"unknown key beside {'.'.join(map(str, path))}")
        elif op == "wrap":
            value = _get(data, path)
            parent[path[-1]] = copy.deepcopy(draw(st.sampled_from([[value], {"value": value}, {path[-1]: value}])))
            done.append(f"wrap {'.'.join(map(str, path))}")
        elif op == "retype":
            value = _get(data, path)
            parent[path[-1]] = (str(value) if not isinstance(value, str) else
                                draw(st.sampled_from([[value], {value: value}, None, 1])))
            done.append(f"retype {'.'.join(map(str, path))}")
        else:
            value = copy.deepcopy(draw(HOSTILE_VALUES))
            parent[path[-1]] = value
            done.append(f"{'.'.join(map(str, path))} := {str(value)[:60]!r}")
    try:
        text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=4096)
    except yaml.YAMLError:
        text = yaml.safe_dump(data, allow_unicode=False, sort_keys=False, width=4096)
    for placeholder, replacement in _PLACEHOLDERS.items():
        text = text.replace(f"'{placeholder}'", replacement).replace(placeholder, replacement)
    raw = text.encode("utf-8", "surrogatepass")
    for op in text_ops:
        raw = _text_op(op, raw, draw)
    return "; ".join(done), raw


def _text_op(op: str, raw: bytes, draw: st.DrawFn) -> bytes:
    at = draw(st.integers(0, len(raw))) if raw else 0
    if op == "bom":
        return b"\xef\xbb\xbf" + raw
    if op == "bad-utf8":
        return raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\x80"])) + raw[at:]
    if op == "control":
        return raw[:at] + draw(st.sampled_from([b"\x01", b"\x07", b"\x1b", b"\x7f", b"\xc2\x85", b"\xe2\x80\xa8"])) \
            + raw[at:]
    if op == "nul":
        return raw[:at] + b"\x00" + raw[at:]
    if op == "two-docs":
        return raw + b"---\n" + raw
    if op == "dup-key":
        lines = [line for line in raw.split(b"\n") if re.match(rb"[A-Za-z_]", line)]
        return raw + (draw(st.sampled_from(lines)) + b"\n" if lines else b"")
    if op == "empty":
        return b""
    if op == "crlf":
        return raw.replace(b"\n", b"\r\n")
    if op == "tabs":
        return raw.replace(b"  ", b"\t")
    if op == "truncate":
        return raw[:at]
    if op == "only-comment":
        return b"# nothing here\n"
    if op == "scalar-doc":
        return draw(st.sampled_from([b"just a string\n", b"- a\n- list\n", b"42\n", b"~\n", b"!!null\n"]))
    raise AssertionError(op)


# -- the properties -----------------------------------------------------------------------------------------------

def judge(kind: Kind, path: Path, what: str) -> None:
    with _environment(ENV):
        code, err = invoke(kind.main, kind.argv(str(path)))
    if kind.sentinel in err and code == kind.sentinel_code:
        return  # taken: the command went on to the sentinel
    line = one_line(code, err)
    assert str(path) in line, (what, line)
    if _has_document(path.read_bytes()) and "larger than" not in line:  # a file with lines: the line is named
        assert re.search(re.escape(str(path)) + r":\d+", line), (what, line)


def _has_document(raw: bytes) -> bool:
    """Whether the file holds anything but blanks and comments (an empty file has no line to name)."""
    try:
        return yaml.compose(raw.decode("utf-8"), Loader=yaml.SafeLoader) is not None
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return True  # not even YAML: where it broke is a line


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(autouse=True)
def _no_secret_left_behind():
    """The commands run in this process register the mutated values they read as secrets (a header's, a token's):
    the registry is the process's, so each test forgets them, or the next test file's output would be scrubbed."""
    yield
    redact.forget_all()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


KIND_NAMES = ["scenario", "profile", "monitor", "agentsim"]


@pytest.mark.parametrize("kind_name", KIND_NAMES)
def test_a_mutated_config_is_taken_or_refused_in_one_line_naming_file_and_line(fuzz_dir, kind_name):
    kind = next(k for k in kinds(fuzz_dir) if k.name == kind_name)
    for i, seed in enumerate(kind.seeds):  # every seed is valid: the sentinel is reached
        path = fuzz_dir / f"seed-{kind.name}-{i}.yaml"
        path.write_text(seed)
        with _environment(ENV):
            code, err = invoke(kind.main, kind.argv(str(path)))
        assert code == kind.sentinel_code and kind.sentinel in err, (path, err[-2000:])

    @settings(FUZZ, max_examples=FUZZ.max_examples * 2)
    @given(mutated(kind))
    def check(case: tuple[str, bytes]) -> None:
        what, raw = case
        path = fuzz_dir / f"{kind.name}.yaml"
        path.write_bytes(raw)
        judge(kind, path, what)

    check()


# -- flags --------------------------------------------------------------------------------------------------------

# Values a flag meets: the forms it takes, near misses and hostile text (a flag's value may hold anything argv can).
FLAG_VALUES = st.one_of(
    st.sampled_from([
        "", " ", "0", "-1", "1", "1.5", "2s", "250ms", "1m30s", "10m", "1e309", "-1e309", "nan", "inf", ".nan", "~",
        "null", "true", "1s1s", "30s1m", "9" * 400, "4MiB", "0B", "1e3", "x" * 100_000, "\x00", "a\nb", "\x1b[2J",
        "é", "\U0001F600", "\ud800", "time_to_first_event.p95=1.5s", "passed_ratio.min=", "violations.max=-1",
        "error_ratio.max=.nan", "chat_duration.p99=" + "9" * 400, "p(95)<500", "X-Api-Key: k" + "k" * 20,
        "X-Api-Key:", ": v", "Host: evil", "X-A: b\r\nX-B: c", "X-Key=FUZZ_API_KEY", "X-Key=", "=VAR",
        "ws://127.0.0.1:9/ws", "ws://[::1", "ws://127.0.0.1:99999/ws", "wss://" + "a" * 300 + "/ws", "http://x#f",
        "127.0.0.1:0", "[::1]:0", "0.0.0.0:70000", ":", "10.0.0.0/8", "10.0.0.0/33", "::/0", "drop:tool_completed=0.1",
        "delay_first=2.5s@0.1", "close:abort=2", "exit_after=0@1", "nope=0.5", "0.02-0.2", "0.2-0.02",
    ]),
    st.text(max_size=30),
)

# (command, flag, argv before, argv after (the sentinel), the sentinel's text): each flag's value is checked before
# the sentinel, which the command checks last before it would run.
_RUN = (["run", "basic"], ["--sim-fault", "sentinel"], "--sim-fault: 'sentinel'")
_PROXY = (["proxy", "--upstream", "ws://127.0.0.1:9/ws"], ["--record-all"], "--record-all needs --record")
_MONITOR = (["monitor", "--target", "ws://127.0.0.1:9/ws"], ["--listen", NOT_HERE], "--listen")
FLAGS = {
    "run --objective": (*_RUN, "--objective"), "run --header": (*_RUN, "--header"),
    "run --header-env": (*_RUN, "--header-env"), "run --max-duration": (*_RUN, "--max-duration"),
    "run --progress-interval": (*_RUN, "--progress-interval"), "run --sim-fault": (*_RUN, "--sim-fault"),
    "run --target-name": (*_RUN, "--target-name"), "run --profile": (*_RUN, "--profile"),
    "proxy --upstream": (["proxy"], _PROXY[1], _PROXY[2], "--upstream"),
    **{f"proxy {flag}": (*_PROXY, flag) for flag in (
        "--listen", "--metrics-listen", "--first-event-limit", "--deadline", "--stall-limit", "--settle",
        "--send-timeout", "--max-size", "--max-connections", "--max-connections-per-ip", "--trusted-proxy",
        "--ping-interval", "--ping-timeout")},
    "monitor --target": (["monitor"], _MONITOR[1], _MONITOR[2], "--target"),
    **{f"monitor {flag}": (*_MONITOR, flag) for flag in ("--interval", "--timeout", "--header", "--scenario")},
}


@pytest.mark.parametrize("name", list(FLAGS))
def test_a_hostile_flag_value_is_taken_or_refused_in_one_line_naming_the_flag(name):
    before, after, sentinel, flag = FLAGS[name]

    @settings(FUZZ, max_examples=max(10, FUZZ.max_examples // 4))
    @given(FLAG_VALUES)
    def check(value: str) -> None:
        with _environment(ENV):
            code, err = invoke(cli.main, [*before, f"{flag}={value}", *after])
        if code == 2 and sentinel in err and "Traceback" not in err:
            return
        line = one_line(code, err)
        assert flag in line or flag.lstrip("-").replace("-", "_") in line, (value[:80], line)

    check()


SIM_FLAGS = ("--fault", "--think", "--tool-latency", "--max-size", "--resume-ttl", "--max-live-runs-per-user",
             "--seed", "--jwt-secret", "--ground-truth", "--protocol")


@pytest.mark.parametrize("flag", SIM_FLAGS)
def test_a_hostile_agentsim_flag_is_taken_or_refused_in_one_line_naming_the_flag(flag, tmp_path, monkeypatch):
    port = str(_busy_port())
    monkeypatch.chdir(tmp_path)  # a --ground-truth taken is created where it is named

    @settings(FUZZ, max_examples=max(10, FUZZ.max_examples // 4))
    @given(FLAG_VALUES)
    def check(value: str) -> None:
        code, err = invoke(sim_cli.main, [f"{flag}={value}", "--host", "127.0.0.1", "--port", port])
        if code == 2 and ": cannot listen: " in err:
            return
        line = one_line(code, err)
        assert flag in line, (value[:80], line)

    check()


# -- files that are no files: never a hang ------------------------------------------------------------------------

# Runs one command's main in a process of its own, its pipe deadline shortened (30 s in use: a FIFO nobody writes to
# is an error after it, never a hang); the subprocess's timeout is the test's "hangs".
_RUNNER = """
import sys
from agentsim import cli as sim_cli
from harness import cli, yamlfile
yamlfile.PIPE_DEADLINE = sim_cli.PIPE_DEADLINE = 0.5
main = sim_cli.main if sys.argv[1] == "agentsim" else cli.main
sys.exit(main(sys.argv[2:]))
"""


def _special(kind: str, tmp: Path) -> str:
    if kind == "fifo":
        path = tmp / "fifo.yaml"
        os.mkfifo(path)
        return str(path)
    if kind == "directory":
        (tmp / "dir.yaml").mkdir()
        return str(tmp / "dir.yaml")
    if kind == "empty":
        (tmp / "empty.yaml").write_bytes(b"")
        return str(tmp / "empty.yaml")
    return "/dev/zero"


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "directory", "empty"])
@pytest.mark.parametrize("kind_name", KIND_NAMES)
def test_a_file_that_is_no_regular_file_is_refused_in_one_line_never_a_hang(tmp_path, kind_name, special):
    kind = next(k for k in kinds(tmp_path) if k.name == kind_name)
    path = _special(special, tmp_path)
    if special in ("fifo", "/dev/zero"):  # where a hang would be: a process of its own, with a timeout
        proc = subprocess.run([sys.executable, "-c", _RUNNER, "agentsim" if kind.main is sim_cli.main else "chatprobe",
                               *kind.argv(path)], capture_output=True, text=True, timeout=20, cwd=ROOT,
                              env={**os.environ, **ENV, "NO_COLOR": "1"})
        code, err = proc.returncode, proc.stderr
    else:
        with _environment(ENV):
            code, err = invoke(kind.main, kind.argv(path))
    if special == "empty" and kind.sentinel in err and code == kind.sentinel_code:
        return  # agentsim's settings are all optional: an empty config is its defaults
    line = one_line(code, err)
    assert path in line, line


# -- what the fuzz found, each a plain test ------------------------------------------------------------------------

def _run_file(tmp_path: Path, text: str | bytes, *argv: str) -> tuple[Path, str]:
    path = tmp_path / "s.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path, one_line(*invoke(cli.main, ["run", str(path), *argv, "--sim-fault", "sentinel"]))


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_scenario_names_the_field_it_lacks(tmp_path, text):
    # Was: "field '(top level)': Field required".
    path, line = _run_file(tmp_path, text)
    assert f"{path}: field 'name': Field required" in line, line


def test_a_byte_that_is_not_utf8_is_named_with_its_line(tmp_path):
    path, line = _run_file(tmp_path, b"name: x\nusers: 1\nmessage: caf\xe9\n")
    assert f"{path}:3: not UTF-8 text" in line, line  # was: no line


def test_a_key_of_kilobytes_is_not_echoed_whole(tmp_path):
    path, line = _run_file(tmp_path, f"name: x\nexpect:\n  ? {'k' * 5000}\n  : 1\n")  # (an explicit key: no limit)
    assert f"{path}:3: field 'expect.{'k' * 40}…'" in line and len(line) < 400, line  # was: 5 KB


def test_a_tiny_latency_bound_in_a_file_is_not_blamed_on_an_objective_flag(tmp_path):
    # Was: "--objective: field 'time_to_first_event.p95': '0.0000…' is not a duration", with no --objective given
    # (the file's objectives were written out and read back, and 1e-320 written out is 300 characters).
    text = "name: x\nobjectives:\n  time_to_first_event: {p95: 1.0e-320, max: 20s}\n"
    assert "--sim-fault: 'sentinel'" in _run_file(tmp_path, text)[1]
    assert "--sim-fault: 'sentinel'" in _run_file(tmp_path, text, "--objective", "chat_duration.p95=3s")[1]


@pytest.mark.parametrize("stat", ["violations: {max: null}", "error_ratio:\n    max:",
                                  "time_to_first_event: {p95: ~}"])
def test_a_null_bound_in_a_file_is_refused_not_a_gate_removed(tmp_path, stat):
    # `max:` with nothing after it (a template's unset variable) removed the gate and the run passed.
    path, line = _run_file(tmp_path, f"name: x\nobjectives:\n  {stat}\n")
    assert re.search(re.escape(str(path)) + r":[34]: field 'objectives\.\w+\.\w+'", line), line
    assert "a value is needed" in line, line


def test_a_monitor_url_of_a_megabyte_is_not_echoed_whole(tmp_path):
    config = tmp_path / "m.yaml"
    config.write_text(f"targets:\n  a:\n    url: {'a' * 200_000}\n")
    line = one_line(*invoke(cli.main, ["monitor", "--config", str(config), "--listen", NOT_HERE]))
    assert f"{config}:3: field 'targets.a.url'" in line and len(line) < 400, line  # was: 200 KB


@pytest.mark.parametrize("flag", ["--deadline", "--first-event-limit", "--stall-limit"])
def test_a_proxy_limit_of_zero_is_a_usage_error_not_a_traceback(flag):
    # Was: pydantic's ValidationError out of main once the flags were taken (exit 1, a traceback).
    line = one_line(*invoke(cli.main, ["proxy", "--upstream", "ws://127.0.0.1:9/ws", flag, "0", "--record-all"]))
    assert f"{flag}: must be more than 0" in line, line


@pytest.mark.parametrize("argv", [["run", "x" * 300], ["run", "basic", "--profile", "x" * 300],
                                  ["check", "/dev/null", "--scenario", "y" * 300]])
def test_a_name_too_long_for_a_file_is_a_usage_error_not_a_traceback(argv):
    line = one_line(*invoke(cli.main, argv))  # was: OSError (File name too long) out of Path.exists()
    assert "no such file and no built-in of that name" in line and len(line) < 400, line


def test_an_empty_scenario_name_is_named_as_one(tmp_path):
    line = one_line(*invoke(cli.main, ["monitor", "--target", "ws://127.0.0.1:9/ws", "--scenario", "",
                                       "--listen", NOT_HERE]))
    assert "scenario '': no such file and no built-in" in line, line  # was: ".: cannot read: Is a directory"


AGENTSIM_FINDINGS = {
    # config text: (line, field, a word of the reason); each was a traceback, a silent acceptance or a message
    # without file and line.
    "port: !!python/object/apply:os.system [true]\n": (1, "port", "constructor"),
    "port: 1\nport: 2\n": (2, "port", "given twice (first on line 1)"),
    "seed: 1\nthink: " + "9" * 400 + "\n": (2, "think", "finite"),
    "tool_latency: [" + "9" * 400 + ", 1]\n": (1, "tool_latency", "finite"),
    "tool_latency: [null, 1]\n": (1, "tool_latency", "bad latency"),
    'ground_truth: "a\\0b"\n': (1, "ground_truth", "NUL"),
    "ground_truth: new/\n": (1, "ground_truth", "is a directory"),
    'host: "a\\0b"\n': (1, "host", "not an IP address or a host name"),
    f"host: {'h' * 300}\n": (1, "host", "not an IP address or a host name"),
    "protocol: grpc\n": (1, "protocol", "expected one of"),
    "jwt_secret: ''\n": (1, "jwt_secret", "empty secret"),
    "seed: 1\n\x07: 2\n": (2, "", "U+0007 is not allowed in YAML"),
}


@pytest.mark.parametrize("text", list(AGENTSIM_FINDINGS))
def test_an_agentsim_config_mistake_is_one_line_naming_file_line_and_field(tmp_path, text):
    line_no, field, reason = AGENTSIM_FINDINGS[text]
    config = tmp_path / "sim.yaml"
    config.write_text(text)
    # (the port something listens on: a config taken is "cannot listen", exit 2, never a server left running)
    line = one_line(*invoke(sim_cli.main, ["--config", str(config), "--port", str(_busy_port())]))
    assert f"{config}:{line_no}:" in line and (f"field '{field}'" in line or not field) and reason in line, line
