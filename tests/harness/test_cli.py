"""`chatprobe run` as a CI gate: exit codes, reports, and clear answers to bad files and flags."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from harness.cli import main

CHATPROBE = [sys.executable, "-m", "harness"]


def run_cli(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*CHATPROBE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "NO_COLOR": "1", **(env or {})})


def passed_but_for_time(proc: subprocess.CompletedProcess, doc: dict) -> bool:
    """Every chat of every scenario passed, or failed by its first-event time alone (R9: over the scenario's 2 s,
    which the built-in suite's 50 users at once take on a machine as busy as a parallel test suite on two cores makes
    it, with the feature intact), and the exit code says which → whether every chat passed."""
    for s in doc["scenarios"]:
        stats = s["stats"]
        broken = {rule for rule, n in stats["violations"].items() if n}
        assert broken <= {"R9"} and stats["outcomes"]["passed"] + stats["outcomes"]["failed"] == stats["chats"], \
            (s["scenario"], stats, proc.stdout[-3000:])
    passed = all(s["passed"] for s in doc["scenarios"])
    assert proc.returncode == (0 if passed else 1), proc.stdout + proc.stderr
    return passed


def test_builtin_suite_passes_against_embedded_agentsim(tmp_path):
    out, junit = tmp_path / "r.json", tmp_path / "r.xml"
    proc = run_cli("run", "--json", str(out), "--junit", str(junit))
    doc = json.loads(out.read_text())
    passed = passed_but_for_time(proc, doc)
    names = [s["scenario"] for s in doc["scenarios"]]
    assert names == ["basic", "concurrent", "errors", "reconnection", "performance", "abandonment"]
    for s in doc["scenarios"]:
        assert s["stats"]["chats"] == len(s["chats"]) > 0
    concurrent = next(s for s in doc["scenarios"] if s["scenario"] == "concurrent")
    assert concurrent["stats"]["chats"] == 200
    reconnection = next(s for s in doc["scenarios"] if s["scenario"] == "reconnection")
    assert sum(c["reconnects"] == ["resumed"] for c in reconnection["chats"]) == 10
    cases = ET.parse(junit).getroot().findall(".//testcase")
    assert [c.get("name") for c in cases] == names
    assert bool(ET.parse(junit).getroot().findall(".//failure")) is not passed
    assert not passed or "objectives met" in proc.stdout


@pytest.mark.parametrize("profile, scheme, says", [
    ("ag-ui", "http", "left out of the built-in suite for profile ag-ui: concurrent, errors, reconnection (written "
                      "for netra)\n"),
    ("mine", "ws", "left out of the built-in suite for profile mynetra: concurrent, errors, reconnection (written for "
                   "netra; a profile of your own that varies netra says so, `dialect: netra`, docs/profiles.md)\n"),
])
def test_the_builtin_suite_says_which_scenarios_the_profile_leaves_out(tmp_path, capsys, refused_port, profile,
                                                                       scheme, says):
    """FAILED on the old code: `run --profile ag-ui` (or a copy of netra.yaml under a name of its own) played 3 of
    the suite's 6 scenarios with no word of the others, where the agentsim-only `errors` is said on stderr."""
    from harness.catalog import PROFILES_DIR

    if profile == "mine":
        mine = tmp_path / "mynetra.yaml"
        mine.write_text((PROFILES_DIR / "netra.yaml").read_text().replace("name: netra", "name: mynetra", 1))
        profile = str(mine)
    code = main(["run", "--target", f"{scheme}://127.0.0.1:{refused_port()}/x", "--profile", profile, "-q"])
    err = capsys.readouterr().err
    assert code == 3 and says in err, err


@pytest.mark.parametrize("protocol", ["netra", "ag-ui"])
def test_a_404_at_the_targets_path_says_the_path_may_be_wrong(tmp_path, monkeypatch, protocol):
    """FAILED on the old code: a --target at a path the server does not serve was "HTTP 404 at the WebSocket
    handshake" (or "from the SSE endpoint") and nothing more, exit 1, where a 403 says the path may be wrong."""
    from agentsim.agui import AguiSim
    from agentsim.server import SimConfig, run_in_thread

    config = SimConfig(host="127.0.0.1", port=0, no_auth=True, think=0.001, tool_latency=0.001, protocol=protocol)
    handle = run_in_thread(server=AguiSim(config)) if protocol == "ag-ui" else run_in_thread(config)
    monkeypatch.delenv("CHATPROBE_TOKEN", raising=False)
    monkeypatch.delenv("CHATPROBE_JWT_SECRET", raising=False)
    try:
        base = handle.url.rsplit("/", 1)[0]
        out = tmp_path / "r.json"
        code = main(["run", "basic", "--target", f"{base}/not-the-chat", "--profile", protocol, "--auth", "none",
                     "--json", str(out), "-q"])
    finally:
        handle.stop()
    chat = json.loads(out.read_text())["scenarios"][0]["chats"][0]
    assert code == 1 and chat["outcome"] == "error", chat
    assert "HTTP 404" in chat["error"] and "nothing is served at the URL's path" in chat["error"], chat["error"]


def test_builtin_suite_against_a_target_leaves_out_what_needs_agentsims_directives(tmp_path):
    """`errors` makes the server fail on purpose (#fail-tool, #fail-agent): against a server of one's own, which has no
    such switch, it would fail for what it asked. Left out of the suite, and said; named, it runs."""
    from agentsim.server import SimConfig, run_in_thread

    secret = "test-secret-" + os.urandom(8).hex()  # a user per token, so a reconnected user resumes its run
    handle = run_in_thread(SimConfig(host="127.0.0.1", port=0, jwt_secret=secret, think=0.002, tool_latency=0.001))
    env = {"CHATPROBE_JWT_SECRET": secret}
    try:
        out = tmp_path / "r.json"
        proc = run_cli("run", "--target", handle.url, "--json", str(out), env=env)
        doc = json.loads(out.read_text())
        passed_but_for_time(proc, doc)
        names = [s["scenario"] for s in doc["scenarios"]]
        assert names == ["basic", "concurrent", "reconnection", "performance", "abandonment"]
        assert "left out of the built-in suite against --target: errors" in proc.stderr
        named = run_cli("run", "errors", "--target", handle.url, "--json", str(out), env=env)
        doc = json.loads(out.read_text())
        passed_but_for_time(named, doc)
        assert [s["scenario"] for s in doc["scenarios"]] == ["errors"]
        assert "left out" not in named.stderr
    finally:
        handle.stop()


def test_fault_makes_the_gate_fail_with_reasons(tmp_path):
    junit, html = tmp_path / "r.xml", tmp_path / "r.html"
    proc = run_cli("run", "basic", "--sim-fault", "drop:tool_completed=1", "--junit", str(junit), "--html", str(html))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    page = html.read_text()
    assert "<title>chatprobe report</title>" in page and "missing tool_completed" in page
    assert "missing_events_ratio.max" in page and "timeline" in page
    assert "missing_events_ratio" in proc.stdout and "R2" in proc.stdout
    failure = ET.parse(junit).getroot().find(".//failure")
    assert failure is not None and "missing tool_completed" in failure.text


def test_the_oversized_fault_by_default_is_past_the_clients_frame_limit(tmp_path):
    """`--sim-fault oversized@1` with no size is a frame no client with the default max_size (4 MiB) takes: each chat
    it strikes is an R12 and the gate fails (a default under the limit, 2 MiB, injected a fault that passed)."""
    out = tmp_path / "r.json"
    proc = run_cli("run", "basic", "--sim-fault", "oversized@1", "--json", str(out), "-q")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (scenario,) = json.loads(out.read_text())["scenarios"]
    assert scenario["stats"]["chats"] > 0 and scenario["stats"]["violations"].get("R12") == scenario["stats"]["chats"]


def test_objective_override_on_the_command_line():
    # 0 ms is impossible: the override must make the gate fail.
    proc = run_cli("run", "basic", "--objective", "time_to_first_event.p95=0ms")
    assert proc.returncode == 1
    assert "time_to_first_event.p95" in proc.stdout


def test_unreachable_target_exits_3(refused_port):
    port = refused_port()
    proc = run_cli("run", "basic", "--target", f"ws://127.0.0.1:{port}/ws")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "unreachable" in proc.stdout.lower()
    assert "Traceback" not in proc.stderr


def test_token_never_printed_or_written(tmp_path, refused_port):
    secret_token = "tok-SECRET-1234567890"
    out = tmp_path / "r.json"
    port = refused_port()
    proc = run_cli("run", "basic", "--target", f"ws://127.0.0.1:{port}/ws", "--token-env", "MY_TOKEN",
                   "--json", str(out), env={"MY_TOKEN": secret_token})
    assert proc.returncode == 3
    assert secret_token not in proc.stdout + proc.stderr + out.read_text()


BAD_SCENARIOS = {
    "users: zero": ("name: x\nusers: 0\n", "line 2", "users"),
    "unknown field": ("name: x\nuserz: 3\n", "line 2", "userz"),
    "bad duration": ("name: x\nexpect:\n  deadline: soon\n", "line 3", "expect.deadline"),
    "bad role": ("name: x\nexpect:\n  required: [agent_started, agent_dancing]\n", "line 3", "expect.required.1"),
    "not yaml": ("name: x\nusers: [1,\n", "line 3", "YAML"),
    "bad step": ("name: x\nsteps:\n  - chat: {message: hi, disconnect_after: 0}\n", "line 3", "steps.0"),
    "duplicate key": ("name: x\nusers: 2\nusers: 3\n", "line 3", "duplicate key 'users'"),
    "nan duration": ("name: x\nexpect:\n  deadline: .nan\n", "line 3", "expect.deadline"),
    "infinite duration": ("name: x\nexpect:\n  stall_limit: .inf\n", "line 3", "expect.stall_limit"),
    "empty message": ("name: x\nmessage: ''\n", "line 2", "message"),
    "unknown profile": ("name: x\nprofile: nosuch\n", "line 2", "profile"),
    # Two typos: the one higher in the file first (pydantic lists the misspelt top-level key after expect's).
    "two typos": ("name: x\nmesage: hi\nexpect: {streming: true}\n", "line 2", "field 'mesage'"),
    # Two letters swapped in a short key: difflib finds no close match for 'p59' among p50, p90, p95, p99.
    "swapped letters": ("name: x\nobjectives:\n  time_to_first_event: {p59: 2s}\n", "line 3",
                        "field 'objectives.time_to_first_event.p59': Extra inputs are not permitted (did you mean 'p95'?)"),
}


@pytest.mark.parametrize("case", list(BAD_SCENARIOS))
def test_bad_scenario_file_exits_2_naming_file_line_field(tmp_path, capsys, case):
    text, line, field = BAD_SCENARIOS[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one message
    assert str(path) in err and f":{line.split()[1]}:" in err and field in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv, needle", [
    (["run", "no-such-scenario"], "no-such-scenario"),
    (["run", "basic", "--objective", "time_to_first_event.p77=1s"], "p77"),
    (["run", "basic", "--objective", "nonsense"], "NAME.STAT=VALUE"),
    (["run", "basic", "--objective", "time_to_first_event.p95=fast"], "time_to_first_event.p95"),
    (["run", "basic", "--target", "ftp://x"], "--target"),
    (["run", "basic", "--profile", "no-such-profile"], "no-such-profile"),
    (["run", "basic", "--sim-fault", "explode=1"], "--sim-fault"),
    (["run", "basic", "--token-env", "CHATPROBE_SURELY_UNSET_VAR", "--target", "ws://127.0.0.1:1/ws"],
     "CHATPROBE_SURELY_UNSET_VAR"),
    (["run", "--bogus-flag"], "--bogus-flag"),
    (["run", "basic", "--target", "ws://127.0.0.1:notaport/ws"], "not a valid URL"),
    (["run", "basic", "--target", "ws://[::1"], "not a valid URL"),
    (["run", "basic", "--json", "/etc/hostname/x.json"], "--json"),
    (["run", "basic", "--junit", ""], "--junit: an empty path"),
    (["run", "basic", "--html", " "], "--html: an empty path"),
    (["run", "basic", "--record", ""], "--record: an empty path"),
    (["check", "--json", "", "/etc/hostname"], "--json: an empty path"),
    (["run", "basic", "--max-duration", "forever"], "--max-duration"),
    (["run", "basic", "--profile", "ag-ui", "--auth", "subprotocol", "--target", "ws://127.0.0.1:1/ws",
      "--token-env", "PATH"], "auth_subprotocol"),
])
def test_bad_flags_exit_2_with_one_message(capsys, argv, needle):
    with pytest.raises(SystemExit) if "--bogus-flag" in argv else _nullcontext() as exc:
        code = main(argv)
    if exc is not None and hasattr(exc, "value"):
        code = exc.value.code
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def test_list_shows_builtins(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "concurrent" in out and "netra" in out


def test_non_utf8_scenario_file_exits_2(tmp_path, capsys):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe name: x")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "UTF-8" in err and "Traceback" not in err


@pytest.mark.parametrize("text, needle", [
    ("a: &a [x, x, x]\n" + "".join(f"b{i}: &b{i} [*a, *a, *a]\n" for i in range(30)) + "name: x\n", "aliases"),
    ("name: x\nusers: " + "9" * 5000 + "\n", "cannot be read"),
    ("name: x\nmessages: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
])
def test_hostile_scenario_files_exit_2_quickly(tmp_path, capsys, text, needle):
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(path) in err and "Traceback" not in err


@pytest.mark.parametrize("argv, needle", [
    (["run", "/dev/zero"], "larger than"),
    (["run", "basic", "--target", "ws://127.0.0.1:1/ws", "--token-file", "/dev/zero"], "--token-file"),
    (["run", "basic", "--max-duration", "0s"], "--max-duration"),
    (["run", "basic", "--pushgateway", "http://127.0.0.1:1", "--job", "a/b"], "--job"),
    (["run", "basic", "--target", "wss://127.0.0.1:1/ws", "--ca-file", "/etc/hostname"], "--ca-file"),
])
def test_more_bad_inputs_exit_2(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


@pytest.mark.parametrize("variable, value", [("WEBSOCKETS_MAX_FRAGMENTS", "4k"), ("WEBSOCKETS_MAX_FRAGMENTS", ""),
                                             ("WEBSOCKETS_MAX_LINE_LENGTH", "8 KiB"),
                                             ("WEBSOCKETS_BACKOFF_FACTOR", "fast")])
def test_a_websockets_bound_in_the_environment_that_is_no_number_is_a_usage_error(variable, value):
    """docs/protocol.md names WEBSOCKETS_MAX_FRAGMENTS, the fragment bound every client holds, read from the environment
    as websockets reads it (int()): a value that is no number was a traceback at import, of every command, `--help`
    too; websockets' own bounds of that kind were a traceback at its import, in the middle of a run. A usage error
    now, in one line naming the variable; --help still works."""
    for args, code in ((["run", "basic", "-q"], 2), (["sim"], 2),
                       (["--help"], 0)):
        proc = run_cli(*args, env={variable: value}, timeout=60)
        out = proc.stdout + proc.stderr
        assert proc.returncode == code and "Traceback" not in out, out[-2000:]
        if code == 2 and args[0] == "run":
            assert proc.stderr.count("\n") == 1 and variable in proc.stderr, proc.stderr


@pytest.mark.parametrize("url, says", [
    # A traceback (exit 1) after the whole run: the warning's own shortening of the URL raised on it.
    ("http://[::1", "not a URL"),
    ("http://127.0.0.1:99999", "port"),
    # A warning after the whole run, the run's exit code unchanged: no push could ever have gone.
    ("ftp://127.0.0.1:1/", "http:// or https://"),
    ("file:///etc/passwd", "http:// or https://"),
    ("http://", "no host"),
    ("http://127.0.0.1:1/\r\nX-Injected: 1", "control character"),
    ("http://127.0.0.1:1/?x=1", "query"),
    ("http://ci:pw-PUSHSECRET-1@127.0.0.1:1", "credentials"),
])
def test_a_pushgateway_url_no_push_could_use_is_refused_before_the_run(capsys, url, says):
    """`--pushgateway` was only used after the run: a URL no push could use was a warning there (the run's verdict
    and exit code unchanged, so a CI job never learnt its metrics went nowhere), or a traceback. A usage error now,
    before the run, in one line naming the flag; a password in it is never shown."""
    assert main(["run", "basic", "-q", "--pushgateway", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("chatprobe: error: --pushgateway") and says in err, err
    assert "PUSHSECRET" not in err and "Traceback" not in err


@pytest.mark.parametrize("url", [
    # A password that urlsplit reads no userinfo from, nor redact's URL pattern: a '/', '#', '?' or space unencoded
    # in it (urlsplit's own error then quoted the password's head as the port), a scheme missing or mistyped, a
    # full-width '#' that NFKC makes a '#' (urlsplit's error quoted the whole netloc).
    "ws://ci:pw-TARGET/SECRET-1@127.0.0.1:1/ws",
    "ws://ci:pw-TARGET#SECRET-1@127.0.0.1:1/ws",
    "ws://ci:pw-TARGET?SECRET-1@127.0.0.1:1/ws",
    "ws://ci:pw-TARGET SECRET-1@127.0.0.1:99999/ws",
    "ws://ci:pw-TARGET\uff03SECRET-1@127.0.0.1:1/ws",
    "ci:pw-TARGETSECRET-1@127.0.0.1:1",
    "wss:/ci:pw-TARGETSECRET-1@127.0.0.1:1/ws",
    "//ci:pw-TARGETSECRET-1@127.0.0.1:1/ws",
])
@pytest.mark.parametrize("command", [["run", "basic", "-q", "--target"], ["proxy", "--upstream"]])
def test_a_server_url_refused_never_shows_its_password(capsys, command, url):
    """A --target (or --upstream) that cannot be read is refused naming the flag, the URL and what is wrong, but
    never the password in it: the message goes to a CI job's log."""
    assert main([*command, url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: {command[-1]} " in err and "[REDACTED]@" in err, err
    assert "TARGET" not in err and "SECRET" not in err and "Traceback" not in err, err


@pytest.mark.parametrize("url", ["127.0.0.1:1", "pushgateway:9091", "http://127.0.0.1:1", "https://127.0.0.1:1/gw/",
                                 "http://[::1]:1"])
def test_a_pushgateway_given_as_prometheus_client_takes_it_is_taken(capsys, url):
    """HOST:PORT (prometheus_client adds http://), a URL with a path prefix, an IPv6 address: nothing listens, so
    the push is a warning after the run, whose verdict stands."""
    assert main(["run", "basic", "-q", "--pushgateway", url]) == 0
    assert "could not push" in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["proxy"], "the following arguments are required: --upstream"),
    (["proxy", "--zzz"], "the following arguments are required: --upstream"),  # nothing it looks like
    (["check"], "the following arguments are required: FILE"),
    (["check", "--jun", "x.xml"], "the following arguments are required: FILE"),  # argparse's prefix of --junit
    (["proxy", "--upstream", "ws://127.0.0.1:1", "--", "--listn"], "unrecognized arguments: -- --listn"),
])
def test_a_missing_argument_without_a_misspelt_flag_is_said_as_argparse_says_it(capsys, argv, says):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and says in err and "did you mean" not in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, hint", [
    (["run", "slow"], "scenario 'slow': no such file and no built-in of that name (did you mean 'slow.yaml'?"),
    (["run", "--profile", "mynetra", "basic"], "--profile 'mynetra': no such file and no built-in of that name "
                                               "(did you mean 'mynetra.yml'?"),  # (not the built-in netra)
    (["check", "--scenario", "slow", "rec.jsonl"], "(did you mean 'slow.yaml'?"),
])
def test_a_scenario_or_profile_named_without_its_suffix_is_answered_with_the_file(tmp_path, monkeypatch, capsys,
                                                                                  argv, hint):
    """FAILED on the old code: `chatprobe run slow` beside slow.yaml listed the built-ins (or named the built-in
    netra for mynetra), not the file the user wrote."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "slow.yaml").write_text("name: slow\n")
    (tmp_path / "mynetra.yml").write_text("name: mynetra\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert hint in err and err.count("\n") == 1, err


def test_a_directory_named_as_a_built_in_profile_or_scenario_leaves_the_built_in_in_use(tmp_path, monkeypatch,
                                                                                     capsys):
    """FAILED on the old code: a directory of recordings named after a profile (`chatprobe run --record netra`, or
    `--profile ag-ui --record ag-ui`) made every later command in that directory refuse the built-in, "--profile
    netra: cannot read: Is a directory", `chatprobe run` with the default profile too: a name of a built-in that is a
    directory is the built-in; a file of that name is still the user's."""
    monkeypatch.chdir(tmp_path)
    rec = tmp_path / "netra"
    rec.mkdir()
    roles = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"]
    frames = [{"type": "connection_established", "user_id": "u1"},
              *({"type": role, "run_id": "r1", "thread_id": "t1", "seq": i + 1}
                | ({"tool_call_id": "c1", "tool_name": "calc"} if role.startswith("tool_") else {})
                for i, role in enumerate(roles))]
    (rec / "rec.jsonl").write_text(
        json.dumps({"t": 1000.0, "dir": "send", "conn": "u1.1", "frame": json.dumps(
            {"type": "user_message", "payload": {"content": "hi", "thread_id": "t1"}})}) + "\n"
        + "".join(json.dumps({"t": 1000.1 + i / 10, "dir": "recv", "conn": "u1.1", "frame": json.dumps(f)}) + "\n"
                  for i, f in enumerate(frames)))
    (tmp_path / "basic").mkdir()
    assert main(["check", "netra", "-q"]) == 0
    assert main(["check", "netra", "--profile", "netra", "--scenario", "basic", "-q"]) == 1  # judged: basic's roles
    assert "Is a directory" not in capsys.readouterr().err
    (tmp_path / "netra.d").mkdir()
    assert main(["check", "netra", "--profile", "netra.d", "-q"]) == 2  # no built-in of that name: the path, refused


@pytest.mark.parametrize("argv, hint", [
    (["chek", "rec/"], "invalid choice: 'chek'"),
    (["chek", "rec/"], "(did you mean 'check'?)"),
    (["Run"], "(did you mean 'run'?)"),
    (["basic"], "(to run a scenario: chatprobe run basic)"),
    (["my-scenario.yaml"], "(to run a scenario: chatprobe run my-scenario.yaml)"),
    (["session.har"], "(to judge a recording: chatprobe check session.har)"),
    (["ws://127.0.0.1:1/ws"], "(a server's URL goes after run's --target: chatprobe run --target URL)"),
    (["--target", "ws://127.0.0.1:1/ws", "basic"], "(--target is a flag of `chatprobe run` and `chatprobe monitor`: "
                                                   "name the command first, chatprobe run --target …)"),
    (["-q"], "(-q is a flag of `chatprobe run` and `chatprobe check`: name the command first"),
    (["--upstream", "ws://127.0.0.1:1"], "(--upstream is a flag of `chatprobe proxy`"),
    (["--port", "0"], "(--port is a flag of `chatprobe sim`"),
])
def test_a_command_line_that_names_no_command_says_what_to_type(capsys, argv, hint):
    """FAILED on the old code: a misspelt command, or a scenario, a recording, a URL or a command's flag given
    without its command, was argparse's bare "invalid choice: 'ws://…'" (for `chatprobe --target URL`, the URL taken
    for the command) or "unrecognized arguments: -q": the line says now what was meant, as for a misspelt flag."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and hint in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv", [["--jwt-secret", "s3cr3t-VALUE"], ["--jwt-secret=s3cr3t-VALUE"],
                                  ["--token", "s3cr3t-VALUE"], ["--header", "X-Api-Key:s3cr3t-VALUE"]])
def test_a_flag_given_before_any_command_is_answered_without_its_value(capsys, argv):
    """FAILED on the old code: argparse took the flag's value for the command and echoed it ("invalid choice:
    's3cr3t-VALUE'"), or echoed `--flag=value` whole, the hint naming the flag (--jwt-secret: sim's) beside it: a
    secret given to the wrong place went to the terminal and the CI log."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "s3cr3t" not in err and err.count("\n") == 1, err
    flag = argv[0].partition("=")[0]
    assert f"the value given to {flag}" in err or f"{flag}=…" in err, err


def test_a_word_after_a_flag_that_takes_no_value_is_still_shown(capsys):
    with pytest.raises(SystemExit):
        main(["-q", "basic"])
    err = capsys.readouterr().err
    assert "invalid choice: 'basic'" in err and "(-q is a flag of" in err, err


def test_a_command_line_with_nothing_it_looks_like_says_no_more_than_argparse(capsys):
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    err = capsys.readouterr().err
    assert "invalid choice: 'frobnicate'" in err and "did you mean" not in err and " is a flag of " not in err, err
    assert "(to " not in err and err.count("\n") == 1, err


def test_two_reports_naming_one_file_are_refused_before_the_run(tmp_path, capsys):
    same = tmp_path / "report"
    assert main(["run", "basic", "--json", str(same), "--junit", str(same)]) == 2
    assert f"--json and --junit both name {same}: one report would overwrite the other" in capsys.readouterr().err
    assert not same.exists()
    assert main(["check", "--json", "/dev/null", "--junit", "/dev/null", str(tmp_path / "none.jsonl")]) == 2
    assert "overwrite" not in capsys.readouterr().err  # a device twice is fine (the recording is what is missing)


@pytest.mark.parametrize("argv", [["sim", "--jwt-secrt", "S3cret-typed-value"], ["sim", "--jwt-secrt=S3cret-typed-value"],
                                  ["run", "basic", "--tokn=S3cret-typed-value"],
                                  ["monitor", "--header-evn", "S3cret-typed-value", "--target", "ws://127.0.0.1:1/ws"]])
def test_a_misspelt_flags_value_is_never_echoed(capsys, argv):
    """FAILED on the old code: "unrecognized arguments: --jwt-secrt S3cret-typed-value": the value a misspelt flag was
    meant to carry (a secret, for sim's --jwt-secret) was echoed to the terminal and the CI log. Its flag is named,
    its value said as `…`."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's error
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "unrecognized arguments: --" in err and "…" in err, err
    assert "S3cret" not in err, err


@pytest.mark.parametrize("argv, hint", [
    (["run", "basic", "--jnuit", "out.xml"], "unrecognized arguments: --jnuit … (did you mean --junit?)"),
    (["run", "basic", "--objectve=passed_ratio.min=1"], "(did you mean --objective?)"),
    (["check", "--scenaro", "basic", "rec"], "(did you mean --scenario?)"),
    (["run", "basci"], "scenario 'basci': no such file and no built-in of that name (did you mean 'basic'?"),
    (["run", "basic", "--profile", "ag_ui"], "(did you mean 'ag-ui'?"),
    (["monitor", "--intervl", "5s", "--target", "ws://127.0.0.1:1/ws"], "(did you mean --interval?)"),
    # FAILED on the old code: `sim` named no flag ("unrecognized arguments: --seeed 3"), and a misspelt flag where a
    # required one is missing was "the following arguments are required: --upstream" (or FILE), the typo unnamed.
    (["sim", "--seeed", "3"], "chatprobe sim: error: unrecognized arguments: --seeed … (did you mean --seed?)"),
    (["sim", "--fualt", "drop:agent_started=1"], "(did you mean --fault?)"),
    (["proxy", "--upstrem", "ws://127.0.0.1:1"], "chatprobe proxy: error: unrecognized arguments: --upstrem (did you "
                                                 "mean --upstream?)"),
    (["proxy", "--upstrem=ws://127.0.0.1:1", "--listen", "127.0.0.1:0"], "--upstrem (did you mean --upstream?)"),
    (["check", "--jnuit"], "chatprobe check: error: unrecognized arguments: --jnuit (did you mean --junit?)"),
])
def test_a_typo_in_a_flag_or_a_name_is_answered_with_what_was_meant(capsys, argv, hint):
    """A misspelt flag was 'unrecognized arguments: --jnuit' (no word of --junit, and for `run` from the parser
    that knows only --version), a misspelt scenario or profile name listed every built-in: now the one it most
    looks like is named, as a scenario file's misspelt key is; for every command (`sim` too), and when argparse would
    first report a required option or argument missing (the misspelt flag was probably meant for it)."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's error
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert hint in err and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("value", [" ", "\t \n", "\n"])
def test_a_token_variable_of_only_blanks_is_refused_as_an_empty_one(monkeypatch, capsys, value):
    """--token-env naming a variable that holds only blanks (a secret store's empty value with its line break) is
    refused as an empty variable, exit 2 naming it, as an empty --token-file is; it was sent as `Bearer  `, and every
    chat ended refused by the server."""
    monkeypatch.setenv("CHATPROBE_BLANK_TOKEN", value)
    assert main(["run", "basic", "--target", "ws://127.0.0.1:1/ws", "--token-env", "CHATPROBE_BLANK_TOKEN"]) == 2
    err = capsys.readouterr().err
    assert "--token-env CHATPROBE_BLANK_TOKEN: the variable is not set or empty" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_token_variable_is_stripped_as_a_token_file_is(monkeypatch):
    """A token from a variable ending in a line break (a secret pasted with its newline) is sent without it, as a
    --token-file's is, not refused as a token holding a line break."""
    from harness.targets import TargetOptions, read_token

    monkeypatch.setenv("CHATPROBE_PASTED_TOKEN", "  tok-abc.def.ghi\n")
    assert read_token(TargetOptions(token_env="CHATPROBE_PASTED_TOKEN")).for_user("u") == "tok-abc.def.ghi"
