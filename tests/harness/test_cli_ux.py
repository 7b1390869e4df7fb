"""The command line as users meet it, as real processes: help and version, progress in a CI log, Ctrl-C and SIGTERM
keeping the results, usage errors caught before the run, `sim` saying how to connect, `--record` then `check`."""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

CHATPROBE = [sys.executable, "-m", "harness"]
ENV = {**os.environ, "NO_COLOR": "1", "CHATPROBE_TOKEN": "", "CHATPROBE_JWT_SECRET": ""}


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CHATPROBE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**ENV, **(env or {})})


def read_until(proc: subprocess.Popen, pattern: str, timeout: float = 30) -> tuple[str, re.Match]:
    """Lines from the process's stdout until one matches, within a deadline (a reader thread: a pipe's buffered
    lines are not seen by select)."""
    lines: queue.Queue[str] = getattr(proc, "_lines", None) or queue.Queue()
    if not hasattr(proc, "_lines"):
        proc._lines = lines  # type: ignore[attr-defined]
        reader = threading.Thread(target=lambda: [lines.put(x) for x in iter(proc.stdout.readline, "")], daemon=True)
        reader.start()
        proc._reader = reader  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    seen = ""
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        seen += line
        if m := re.search(pattern, line):
            return seen, m
    raise AssertionError(f"no line matching {pattern!r} within {timeout}s; got:\n{seen}")


def test_version_and_bare_help():
    proc = run_cli("--version")
    assert proc.returncode == 0 and re.fullmatch(r"chatprobe \S+\n", proc.stdout)
    bare = run_cli()
    assert bare.returncode == 0 and "usage: chatprobe" in bare.stdout and "check" in bare.stdout


def test_sim_help_names_the_command_it_was_given_as():
    proc = run_cli("sim", "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: chatprobe sim")


def test_ci_log_gets_plain_progress_lines(tmp_path):
    scenario = tmp_path / "slow.yaml"
    scenario.write_text("name: slow\nusers: 4\nchats_per_user: 3\nmessage: 'What is 2 * 3? #think=0.3'\n")
    proc = run_cli("run", str(scenario), "--progress-interval", "0.2s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("slow running")]
    assert lines, proc.stdout
    assert all("\x1b" not in line for line in proc.stdout.splitlines())
    assert re.search(r"chats \d+/12, in flight \d+, first event p95 [\d.,]+ ms, failed 0", lines[-1]), lines[-1]
    assert "slow: 12 chats, 12 passed, objectives met" in proc.stdout


def _drain(proc: subprocess.Popen) -> list[str]:
    """The rest of an ended process's stdout: its reader thread ends at end of file."""
    proc._reader.join(10)  # type: ignore[attr-defined]
    lines: queue.Queue[str] = proc._lines  # type: ignore[attr-defined]
    return [lines.get_nowait() for _ in range(lines.qsize())]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_judges_chats_in_flight_and_writes_every_report(tmp_path, sig, code):
    scenario = tmp_path / "long.yaml"
    scenario.write_text("name: long\nusers: 5\nchats_per_user: 50\nmessage: 'Think hard. #think=0.5'\n"
                        "expect: {deadline: 30s}\n")
    out, junit, html = tmp_path / "r.json", tmp_path / "r.xml", tmp_path / "r.html"
    proc = subprocess.Popen([*CHATPROBE, "run", str(scenario), "--json", str(out), "--junit", str(junit),
                             "--html", str(html), "--progress-interval", "0.1s"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        seen, _ = read_until(proc, r"long running .* in flight [1-9]")
        proc.send_signal(sig)
        proc.wait(60)
        stdout = seen + "".join(_drain(proc))
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stdout + stderr
    assert "stopping" in stderr and "Traceback" not in stderr
    assert "chatprobe results" in stdout  # the summary is printed
    doc = json.loads(out.read_text())
    (run,) = doc["scenarios"]
    chats = run["chats"]
    assert 0 < len(chats) < 250 and run["stats"]["chats"] == len(chats)
    # The chats that were in flight are judged as they stood: stopped, not passed, not lost from the counts.
    assert any(c["outcome"] in ("incomplete", "error") and "stopped" in (c["note"] + str(c["error"])) for c in chats)
    assert junit.read_text().startswith("<?xml") and html.stat().st_size > 0


def test_scenarios_a_signal_came_before_are_reported_as_not_run_not_left_out(tmp_path):
    """Stopped during its first scenario, a run's JUnit had one test case: the scenarios after it were in no report
    (a CI tracking them saw them vanish), and a stop between two scenarios left reports reading as all passed."""
    from tests.harness.reports import check_json_report, check_junit_report

    long, after = tmp_path / "long.yaml", tmp_path / "after.yaml"
    long.write_text("name: long\nusers: 5\nchats_per_user: 50\nmessage: 'Think hard. #think=0.5'\n"
                    "expect: {deadline: 30s}\n")
    after.write_text("name: after\nusers: 1\nchats_per_user: 1\n")
    out, junit = tmp_path / "r.json", tmp_path / "r.xml"
    proc = subprocess.Popen([*CHATPROBE, "run", str(long), str(after), "--json", str(out), "--junit", str(junit),
                             "--progress-interval", "0.1s"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        seen, _ = read_until(proc, r"long running .* in flight [1-9]")
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        stdout = seen + "".join(_drain(proc))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stdout
    assert re.search(r"│ after +│ +0 │.*NOT RUN", stdout), stdout

    doc = check_json_report(out)
    assert doc["passed"] is False and [s["scenario"] for s in doc["scenarios"]] == ["long", "after"]
    not_run = doc["scenarios"][1]
    assert not_run["stopped_early"] and not_run["passed"] is False and not_run["stats"]["chats"] == 0
    assert not_run["errors"] == ["not run: the run was interrupted before it started"]

    root = check_junit_report(junit)
    (suite,) = root.findall("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert list(cases) == ["long", "after"]
    skipped = cases["after"].find("skipped")
    assert skipped is not None and cases["after"].find("error") is None and cases["after"].find("failure") is None
    assert skipped.get("message") == "not run: the run was interrupted before it started"
    # The counts add up: tests = failures + errors + skipped + passed, the suite's and the whole file's.
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("2", "1", "0", "1")
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("2", "1", "0")


def test_a_transport_that_cannot_carry_the_scenario_is_a_usage_error_before_the_run(tmp_path):
    # Port 1 refuses: were the run attempted, this would be "unreachable" (exit 3), not a usage error.
    scenario = tmp_path / "par.yaml"
    scenario.write_text("name: par\nusers: 2\nchats_per_user: 4\nparallel_chats: 2\n")
    proc = run_cli("run", str(scenario), "--target", "http://127.0.0.1:1/agent", "--profile", "ag-ui")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "parallel_chats" in proc.stderr and "SSE" in proc.stderr
    raw = tmp_path / "raw.yaml"
    raw.write_text("name: raw\nsteps:\n  - chat: {}\n  - send_raw: 'not json'\n")
    probe = run_cli("run", str(raw), "--target", "http://127.0.0.1:1/agent", "--profile", "ag-ui")
    assert probe.returncode == 2 and "send_raw" in probe.stderr, probe.stderr
    builtin = run_cli("run", "concurrent", "--target", "http://127.0.0.1:1/agent", "--profile", "ag-ui")
    assert builtin.returncode == 2 and "field 'dialects'" in builtin.stderr


def test_an_empty_target_is_a_usage_error_never_a_run_against_the_embedded_server():
    proc = run_cli("run", "basic", "--target", "")
    assert proc.returncode == 2 and "--target" in proc.stderr and "embedded agentsim on" not in proc.stdout


def test_a_dialect_the_embedded_server_does_not_speak_fails_fast(tmp_path):
    profile = tmp_path / "acme.yaml"
    profile.write_text((Path(__file__).parents[2] / "harness" / "profiles" / "netra.yaml").read_text()
                       .replace("name: netra", "name: acme"))
    proc = run_cli("run", "basic", "--profile", str(profile), timeout=20)
    assert proc.returncode == 2 and "--profile acme" in proc.stderr and "--target" in proc.stderr
    # An SSE-only example profile of docs/profiles/ was refused as "--target ws:// means websocket", a flag never given.
    sse = run_cli("run", "basic", "--profile", str(Path(__file__).parents[2] / "docs/profiles/ai-sdk-ui-stream.yaml"))
    assert sse.returncode == 2 and "ws://" not in sse.stderr, sse.stderr
    assert "--profile ai-sdk-ui: the embedded agentsim speaks" in sse.stderr, sse.stderr


def test_ag_ui_runs_against_the_embedded_ag_ui_server_and_only_what_it_can_carry():
    proc = run_cli("run", "--profile", "ag-ui", "--json", "/dev/stdout", "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The embedded server on chatprobe's loop (uvloop) wrote to clients that had gone: tracebacks, not verdicts.
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr[-2000:]
    assert "embedded agentsim on http://" not in proc.stdout  # -q
    names = re.findall(r'"scenario": "(\w+)"', proc.stdout)
    assert "basic" in names and "concurrent" not in names  # the suite, less what an AG-UI server cannot carry
    named = run_cli("run", "errors", "--profile", "ag-ui")
    assert named.returncode == 2 and "field 'dialects'" in named.stderr


@pytest.fixture
def sim():
    """`chatprobe sim` as a user starts it, on a free port; yields (process, the connect line it printed)."""
    proc = subprocess.Popen([*CHATPROBE, "sim", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    try:
        _, m = read_until(proc, r"agentsim: connect with: (.*)$")
        yield proc, m.group(1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_sim_says_how_to_connect_and_that_command_passes(sim):
    _, hint = sim
    env_part, _, command = hint.partition(" chatprobe ")
    assert env_part.startswith("CHATPROBE_JWT_SECRET=")
    name, _, value = env_part.partition("=")
    proc = run_cli(*command.split(), "basic", env={name: value})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The README's second line printed PyJWT's InsecureKeyLengthWarning (a site-packages path and a source line)
    # for the development secret: the secret is the server's, which a client cannot lengthen.
    assert "Warning" not in proc.stderr and "site-packages" not in proc.stderr, proc.stderr


def test_sim_given_its_secret_on_the_command_line_says_a_command_that_passes():
    """FAILED on the old code: `chatprobe sim --jwt-secret S` printed `chatprobe run … --jwt-secret-env
    AGENTSIM_JWT_SECRET`, a variable the user's shell did not hold (exit 2, "not set"). Followed as printed, the
    placeholder filled with the secret given, the command passes; the secret is never printed."""
    secret = "sim-secret-" + os.urandom(8).hex()
    env = {k: v for k, v in ENV.items() if k != "AGENTSIM_JWT_SECRET"}
    proc = subprocess.Popen([*CHATPROBE, "sim", "--port", "0", "--jwt-secret", secret], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        seen, m = read_until(proc, r"agentsim: connect with: (.*)$")
        assert secret not in seen
        hint = m.group(1)
        assignment, _, command = hint.partition(" chatprobe ") if not hint.startswith("chatprobe ") else (
            "", "", hint.removeprefix("chatprobe "))
        name, _, value = assignment.partition("=")
        given = {name: secret} if "<the secret given to --jwt-secret" in value else {}
        done = subprocess.run([*CHATPROBE, *command.split("  (")[0].split(), "basic"], capture_output=True, text=True,
                              timeout=120, env={**env, **given})
        assert done.returncode == 0, hint + "\n" + done.stdout + done.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_credentials_refused_for_every_chat_is_a_configuration_error(sim):
    _, hint = sim
    url = re.search(r"--target (\S+)", hint).group(1)
    proc = run_cli("run", "basic", "--target", url, env={"CHATPROBE_TOKEN": "not-a-valid-token"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "rejected the credentials of every chat" in proc.stderr
    assert "not-a-valid-token" not in proc.stdout + proc.stderr
    assert "no token was sent" not in proc.stderr  # one was: the server refused it


def test_credentials_refused_when_none_were_given_says_none_were(sim):
    # A first run against one's own server without --token-env: the message listed the flags but not that no token
    # had gone at all (CHATPROBE_TOKEN unset).
    _, hint = sim
    url = re.search(r"--target (\S+)", hint).group(1)
    proc = run_cli("run", "basic", "--target", url)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no token was sent" in proc.stderr and "CHATPROBE_TOKEN" in proc.stderr, proc.stderr


def test_a_credentials_flag_given_outranks_the_default_variable_and_two_are_refused(sim):
    """FAILED on the old code: with CHATPROBE_TOKEN exported (a CI's environment), `--jwt-secret-env VAR` on the
    command line was ignored and CHATPROBE_TOKEN's token sent instead (every chat refused, exit 2, the flag given
    named as a suspect); two sources given (`--token-env` and `--jwt-secret-env`) were taken silently, the token
    first."""
    _, hint = sim
    url = re.search(r"--target (\S+)", hint).group(1)
    secret = re.search(r"CHATPROBE_JWT_SECRET=(\S+)", hint).group(1)
    proc = run_cli("run", "basic", "-q", "--target", url, "--jwt-secret-env", "SIM_SECRET",
                   env={"CHATPROBE_TOKEN": "a-token-of-another-environment", "SIM_SECRET": secret})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run_cli("run", "basic", "-q", "--target", url, "--token-env", "SIM_TOKEN", "--jwt-secret-env", "SIM_SECRET",
                   env={"SIM_TOKEN": "a-token-of-another-environment", "SIM_SECRET": secret})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--jwt-secret-env" in lines[0] and "--token-env" in lines[0], proc.stderr
    assert "a-token-of-another-environment" not in proc.stderr and secret not in proc.stderr


def test_record_then_check_gives_the_same_verdicts(tmp_path):
    rec, live, offline = tmp_path / "rec", tmp_path / "live.json", tmp_path / "offline.json"
    proc = run_cli("run", "concurrent", "--sim-fault", "drop:tool_completed=0.3", "--sim-seed", "3",
                   "--record", str(rec), "--json", str(live))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    files = sorted(Path(rec).iterdir())
    assert files and all(f.suffix == ".jsonl" for f in files)
    check = run_cli("check", str(rec), "--scenario", "concurrent", "--json", str(offline))
    assert check.returncode == 1, check.stdout + check.stderr

    def verdicts(path: Path) -> dict[str, tuple[str, list[str]]]:
        doc = json.loads(path.read_text())
        return {c["run_id"]: (c["outcome"], sorted(v["rule"] for v in c["violations"]))
                for s in doc["scenarios"] for c in s["chats"]}

    assert verdicts(offline) == verdicts(live)
    bad = run_cli("check", str(tmp_path / "nothing-here"))
    assert bad.returncode == 2 and "nothing-here" in bad.stderr
    not_a_dir = run_cli("run", "basic", "--record", str(live))
    assert not_a_dir.returncode == 2 and "--record" in not_a_dir.stderr and "not a directory" in not_a_dir.stderr


def test_the_same_sim_seed_gives_the_same_run(tmp_path):
    """README: `--sim-seed N` seeds the embedded agentsim's random choices, for a repeatable run. FAILED on the old
    code: agentsim draws a run's faults from its seed and the run's user, and the users were named at random each
    run (`cp-<random>-uN`), so the same seed struck other chats (28 failed, then 34)."""
    def verdicts(n: int) -> dict[str, tuple[str, list[str]]]:
        out = tmp_path / f"run{n}.json"
        proc = run_cli("run", "basic", "concurrent", "-q", "--sim-fault", "drop:tool_completed=0.2", "--sim-seed", "5",
                       "--json", str(out))
        assert proc.returncode == 1, proc.stdout + proc.stderr
        doc = json.loads(out.read_text())
        return {f'{s["scenario"]}/{c["run_id"]}': (c["outcome"], sorted(v["rule"] for v in c["violations"]))
                for s in doc["scenarios"] for c in s["chats"]}

    first = verdicts(1)
    assert len(first) == 201 and any(outcome != "passed" for outcome, _ in first.values())
    assert verdicts(2) == first


def test_every_flag_of_every_command_has_help_text():
    import argparse

    from agentsim.cli import build_parser as sim_parser
    from harness.cli import build_parser
    from monitors.monitor import build_parser as monitor_parser
    from monitors.proxy import build_parser as proxy_parser

    root = build_parser()
    sub = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    parsers = {"run": sub.choices["run"], "check": sub.choices["check"], "monitor": monitor_parser(),
               "proxy": proxy_parser(), "sim": sim_parser()}
    missing = [f"{name} {a.option_strings[0]}" for name, p in parsers.items() for a in p._actions
               if a.option_strings and not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert missing == []


def test_quiet_prints_only_the_verdict_table():
    proc = run_cli("run", "basic", "-q", "--sim-fault", "drop:tool_completed=1.0")
    assert proc.returncode == 1
    out = proc.stdout
    assert "chatprobe results" in out and "basic" in out
    assert "objectives:" not in out and "timeline" not in out and "embedded agentsim" not in out
    loud = run_cli("run", "basic", "--sim-fault", "drop:tool_completed=1.0")
    assert "objectives not met" in loud.stdout and "basic objectives:" in loud.stdout


def test_a_netra_variant_of_your_own_carries_netra_scenarios_when_it_says_so(sim, tmp_path):
    # A copy of netra.yaml renamed for one's own server (docs/profiles.md: "Start from a copy") lost every netra-only
    # scenario (concurrent, errors, reconnection) with no way to get them back but naming the profile `netra`.
    _, hint = sim
    env_part, _, command = hint.partition(" chatprobe ")
    name, _, value = env_part.partition("=")
    netra = (Path(__file__).parents[2] / "harness" / "profiles" / "netra.yaml").read_text()
    own = tmp_path / "acme.yaml"
    own.write_text(netra.replace("name: netra", "name: acme"))
    refused = run_cli(*command.split(), "--profile", str(own), "errors", env={name: value})
    assert refused.returncode == 2 and "`dialect: netra`" in refused.stderr, refused.stderr
    own.write_text(netra.replace("name: netra", "name: acme\ndialect: netra"))
    proc = run_cli(*command.split(), "--profile", str(own), "errors", "-q", env={name: value})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"│ errors\s+│\s+18 │\s+18 │", proc.stdout), proc.stdout


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_run_writes_its_reports_changes_nothing_written_and_the_exit_code_is_the_stops(tmp_path, sig,
                                                                                                     code):
    """FAILED on the old code: a signal that came while `run` wrote its reports (a CI job's timeout as a large run's
    HTML is written) was seen only when the event loop next turned, after the exit code was decided: exit 0 after
    "stopping" was said, where `check` exits 143 (tests/integration/test_hostile_inputs.py). The signal is sent by
    the process to itself as the first report is written: no timing guess."""
    from tests.harness.reports import check_json_report, check_junit_report

    probe = tmp_path / "probe.py"
    probe.write_text(f"""
import os, signal, sys
from harness import report
from harness.cli import main
write_json = report.write_json
def signalled(*a, **k):
    os.kill(os.getpid(), signal.{signal.Signals(sig).name})  # as the first report is written
    return write_json(*a, **k)
report.write_json = signalled
sys.exit(main(sys.argv[1:]))
""")
    out, junit = tmp_path / "r.json", tmp_path / "r.xml"
    proc = subprocess.run([sys.executable, str(probe), "run", "basic", "--json", str(out), "--junit", str(junit), "-q"],
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    # The run had ended: its reports are whole and say what it did (all its chats, not stopped early).
    (run,) = check_json_report(out)["scenarios"]
    assert run["stats"]["chats"] == len(run["chats"]) > 0 and not run["stopped_early"]
    check_junit_report(junit)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe.py", "r.json", "r.xml"]  # no temporary file left


def test_ctrl_c_mid_chat_against_the_embedded_ag_ui_server_prints_no_traceback(tmp_path):
    """FAILED on the old code (Python 3.11): Ctrl-C while the embedded AG-UI server streamed its runs printed one
    "Exception in callback … CancelledError" traceback per chat in flight on standard error: the server's stop left
    each HTTP connection's handler waiting between two events, cancelled at the loop's end, and asyncio's streams log
    a handler that ends cancelled. The signal is sent once a chat in flight has had an event (the server mid-run)."""
    scenario = tmp_path / "long.yaml"
    scenario.write_text("name: long\nusers: 3\nchats_per_user: 20\nmessage: 'Think hard. #think=0.5'\n"
                        "expect: {deadline: 30s}\n")
    out = tmp_path / "r.json"
    proc = subprocess.Popen([*CHATPROBE, "run", str(scenario), "--profile", "ag-ui", "--json", str(out),
                             "--progress-interval", "0.1s"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        read_until(proc, r"long running .* in flight [1-9]\d*, first event p95 [\d.,]+ ms")
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Exception in callback" not in stderr, stderr
    (run,) = json.loads(out.read_text())["scenarios"]
    assert run["stopped_early"] and any(c["note"] == "stopped before the chat ended" for c in run["chats"])


def _waits_on(proc: subprocess.Popen, path: Path, timeout: float = 30) -> None:
    """Until the process holds `path` open (its /proc fd table: its state, not a guess of time), within a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if any(os.readlink(f"/proc/{proc.pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{proc.pid}/fd")):
                return
        except OSError:  # an fd closed while listed
            pass
        time.sleep(0.01)  # wait-ok: poll interval of a state wait bounded by its deadline
    raise AssertionError(f"the process never opened {path} (exit {proc.poll()})")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_the_token_pipe_has_not_delivered_stops_the_run_at_once(tmp_path, sig, code):
    """FAILED on the old code: `--token-file <(vault read …)` has 30 s to deliver, and Ctrl-C (or a CI job's
    SIGTERM) meanwhile was seen only once that wait was over: 30 s later, exit 2 "no end of text within 30s" and no
    report. Now the signal breaks the wait: exit 130 / 143 at once, every scenario in the reports as not run."""
    from tests.harness.reports import check_json_report, check_junit_report

    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    out, junit = tmp_path / "r.json", tmp_path / "r.xml"
    proc = subprocess.Popen([*CHATPROBE, "run", "basic", "--target", "ws://127.0.0.1:9/ws", "--token-file", str(fifo),
                             "--json", str(out), "--junit", str(junit)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        _waits_on(proc, fifo)
        sent = time.monotonic()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, stdout[-2000:] + stderr[-2000:]
    assert took < 15, took  # not the pipe's 30 s
    assert "Traceback" not in stderr and "no end of text" not in stderr, stderr
    (run,) = check_json_report(out)["scenarios"]
    assert run["errors"] == ["not run: the run was interrupted before it started"] and run["stats"]["chats"] == 0
    assert run["target"] == "127.0.0.1:9"
    (case,) = check_junit_report(junit).iter("testcase")
    assert case.find("skipped") is not None
