"""Inputs a careless or hostile user, CI config or checked-in file gives: each is a usage error (exit 2, one line
naming the file, line and field, or the flag) before any traffic is sent, and never a traceback."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .test_cli_ux import run_cli, sim  # noqa: F401  (sim: a fixture)
from .test_config_refusals import one_error

NETRA = Path(__file__).parents[2] / "harness" / "profiles" / "netra.yaml"


class Listener:
    """A loopback port that takes connections and never answers: what connected to it is counted at the end."""

    def __enter__(self) -> Listener:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        return self

    def accepted(self) -> int:
        n = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return n
            conn.close()
            n += 1

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


@pytest.mark.parametrize("path", ["http://evil.example/x", "ws", "/ws\\x00", "/w s", "/ws#top", "/wß"])
def test_a_profile_path_that_is_no_url_path_exits_2_naming_the_field_before_connecting(tmp_path, path):
    # FAILED on the old code: the profile's `path` was appended to a --target URL without a path as written, so
    # `path: http://evil.example/x` made `ws://127.0.0.1:PORThttp://…`, a traceback out of the port, and a NUL or a
    # space went onto the request line (the chat an error, exit 1), a connection made for nothing.
    text = NETRA.read_text().replace("path: /ws", f'path: "{path}"')
    assert f'path: "{path}"' in text
    profile = tmp_path / "p.yaml"
    profile.write_text(text)
    line = text[:text.index("path: ")].count("\n") + 1
    with Listener() as server:
        proc = run_cli("run", "basic", "--target", f"ws://127.0.0.1:{server.port}", "--profile", str(profile),
                       "--auth", "none", timeout=60)
        one_error(proc, f"p.yaml:{line}: field 'path'", "starts with /")
        assert server.accepted() == 0


@pytest.mark.parametrize("argv, flag", [
    (["run", "basic", "--target", "ws://127.0.0.1:0/ws"], "--target"),
    (["run", "basic", "--target", "http://127.0.0.1:00"], "--target"),
    (["run", "basic", "--pushgateway", "127.0.0.1:0"], "--pushgateway"),
    (["proxy", "--upstream", "ws://127.0.0.1:0", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
     "--upstream"),
])
def test_port_0_in_a_server_url_exits_2_naming_the_flag(argv, flag):
    # FAILED on the old code: a connection to port 0 fails (ECONNREFUSED or EADDRNOTAVAIL), so a typo'd or templated
    # port (`:${PORT:-0}`) was every chat `unreachable`, exit 3, the proxy's every user's connection, the push a warning.
    one_error(run_cli(*argv, timeout=60), flag, "port 0")


def test_port_0_in_a_monitor_configs_url_exits_2_naming_file_line_and_field(tmp_path):
    config = tmp_path / "m.yaml"
    config.write_text("targets:\n  a:\n    url: ws://127.0.0.1:0/ws\n")
    one_error(run_cli("monitor", "--config", str(config), "--once", timeout=60),
              "m.yaml:3: field 'targets.a.url'", "port 0")


CREDENTIALS = [
    (["--token-file", "{tmp}/no-such-token"], "--token-file", "No such file"),
    (["--token-file", "{tmp}"], "--token-file", "Is a directory"),
    (["--token-env", "CHATPROBE_ATTACK_UNSET"], "--token-env", "not set"),
    (["--token-file", "{tmp}/token", "--jwt-secret-env", "CHATPROBE_ATTACK_SECRET"], "--jwt-secret-env",
     "one source"),
]


@pytest.mark.parametrize("command", ["run", "monitor"])
@pytest.mark.parametrize("flags, flag, says", CREDENTIALS)
def test_a_credentials_flag_that_cannot_be_used_is_refused_without_target_too(tmp_path, command, flags, flag, says):
    # FAILED on the old code: without --target (the embedded agentsim mints its own tokens) only an empty value was
    # refused, so a token file that is not there, a variable that is not set or two sources ran the suite and passed:
    # a CI job whose --target was left out by mistake never learnt its credentials were wrong.
    (tmp_path / "token").write_text("a-token-of-the-test\n")
    argv = {"run": ["run", "basic", "-q"], "monitor": ["monitor", "--once"]}[command]
    env = {"CHATPROBE_ATTACK_SECRET": "a-secret-of-the-test"}
    proc = run_cli(*argv, *(f.format(tmp=tmp_path) for f in flags), env=env, timeout=60)
    line = one_error(proc, flag, says)
    assert "a-token-of-the-test" not in line and "a-secret-of-the-test" not in line


def test_the_pytest_plugin_refuses_a_token_file_that_is_not_there_without_target_too(tmp_path):
    # FAILED on the old code: as above, the embedded agentsim's tests ran with the flag never read.
    (tmp_path / "test_mine.py").write_text("def test_x(chatprobe):\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CHATPROBE_TOKEN", "CHATPROBE_JWT_SECRET")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rootdir", str(tmp_path),
                           str(tmp_path), "--chatprobe-token-file", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 4, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert "--chatprobe-token-file" in proc.stderr and "No such file" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("flag, name", [("--json", "result.json"), ("--junit", "junit.xml"), ("--html", "r.html")])
def test_a_report_into_the_recording_directory_check_reads_is_refused(tmp_path, flag, name):
    # FAILED on the old code: the report was written among the recording's files, and the next `chatprobe check DIR`
    # (every file of a directory is read as a recording) was exit 2 on it, "… is no JSON: not a recording".
    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "a.jsonl").write_text('{"t": 0, "dir": "recv", "conn": "c", "frame": "{\\"type\\": \\"ack\\"}"}\n')
    one_error(run_cli("check", str(rec), flag, str(rec / name), "-q", timeout=60), flag, "recording directory")
    assert sorted(p.name for p in rec.iterdir()) == ["a.jsonl"]


def test_a_report_into_the_directory_run_records_into_is_refused_before_the_run(tmp_path):
    # FAILED on the old code: `run --record out --json out/result.json` (a CI job's one output folder) wrote the
    # report among the run's recording, and `chatprobe check out` then refused the recording for it.
    out = tmp_path / "out"
    one_error(run_cli("run", "basic", "--record", str(out), "--json", str(out / "result.json"), "-q", timeout=60),
              "--json", "recording directory")
    assert not out.exists()  # refused before the run: nothing recorded


@pytest.mark.parametrize("argv", [
    ["run", "basic", "--sim-fault", "oversized=65MiB@1"],
    ["sim", "--port", "0", "--fault", "oversized=65MiB@1"],
])
def test_an_oversized_fault_past_64mib_is_refused_before_the_server_starts(argv):
    # FAILED on the old code: no bound, so `oversized=4000MB@1` built a 4 GB frame for each chat it struck (the run
    # was still at it, gigabytes in, when stopped 40 s later); 65MiB here ran (exit 1), and `sim` started and listened.
    one_error(run_cli(*argv, timeout=30), "oversized", "64MiB")


RECORD = '{"t": 0, "dir": "recv", "conn": "c", "frame": "{\\"type\\": \\"ack\\"}"}\n'


@pytest.mark.parametrize("paths, says", [
    (["rec", "rec"], "given twice"),
    (["rec", "./rec/"], "given twice"),
    (["rec/a.jsonl", "rec/../rec/a.jsonl"], "given twice"),
    (["rec", "rec/a.jsonl"], "in the directory rec, also given"),
])
def test_a_recording_given_twice_to_check_is_refused(tmp_path, paths, says):
    # FAILED on the old code: `check rec rec` (or a file and its directory) judged its chats twice, counted twice in
    # the objectives, two runs of one name in every report (for scenarios `run` refuses a name given twice).
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "a.jsonl").write_text(RECORD)
    proc = subprocess.run([sys.executable, "-m", "harness", "check", *paths], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    one_error(proc, says, "judged once")


@pytest.mark.parametrize("in_file", [False, True])
def test_sim_refuses_a_ground_truth_file_that_is_its_config(tmp_path, in_file):
    # FAILED on the old code: the sim started and appended a JSON line per event to its own config file, which the
    # next `chatprobe sim --config` refused as no YAML.
    config = tmp_path / "sim.yaml"
    text = "port: 0\n" + (f"ground_truth: {config}\n" if in_file else "")
    config.write_text(text)
    flags = [] if in_file else ["--ground-truth", str(tmp_path / "." / "sim.yaml")]
    line = one_error(run_cli("sim", "--config", str(config), *flags, timeout=20), "is the --config file")
    assert ("sim.yaml:2: field 'ground_truth'" if in_file else "--ground-truth") in line
    assert config.read_text() == text


@pytest.mark.parametrize("listen", ["127.0.0.1:99999", "nowhere", ""])
def test_monitor_once_still_refuses_a_listen_address_that_cannot_be_used(listen):
    # FAILED on the old code: --once serves nothing, so --listen was never read and the probe round ran (exit 0),
    # where the same command without --once is exit 2: a CI smoke test of the monitor's flags proved nothing.
    one_error(run_cli("monitor", "--once", "--listen", listen, timeout=60), "--listen")


@pytest.mark.parametrize("upstream", ["ws://127.0.0.1:{port}/ws", "ws://localhost:{port}", "ws://127.0.0.1:{port}"])
def test_the_proxy_refuses_an_upstream_that_is_its_own_listen_address(upstream):
    # FAILED on the old code: the proxy started, and each client's connection would have come back to it, connection
    # upon connection, until its connection limits refused the last.
    with Listener() as free:  # a port nobody else holds: closed below, before the proxy would take it
        port = free.port
    proc = run_cli("proxy", "--upstream", upstream.format(port=port), "--listen", f"127.0.0.1:{port}",
                   "--metrics-listen", "127.0.0.1:0", timeout=20)
    one_error(proc, "--upstream", "own --listen address")


@pytest.mark.parametrize("flag", ["--json", "--junit", "--html"])
@pytest.mark.parametrize("path", ["/proc/version", "/sys/devices/system/cpu/online"])
def test_a_report_onto_a_kernel_file_is_refused_before_the_run(flag, path):
    # FAILED on the old code: a procfs or sysfs file is a regular file to stat and writable to root (CI containers
    # run as root), so the run went ahead and the report was written into it (/proc/sys/kernel/hostname would have
    # been set to the report's text); these two only answer the write with an error, after the run.
    proc = run_cli("run", "basic", flag, path, "-q", timeout=60)
    one_error(proc, f"{flag} {path}", "kernel setting")
    assert proc.stdout == ""  # refused before the run: no verdict table


@pytest.mark.parametrize("second", ["passed_ratio.min=0", " passed_ratio.min = 0.5"])
def test_one_objective_given_twice_with_two_values_is_refused(second):
    # FAILED on the old code: the last one quietly won (a CI config's gate, `passed_ratio.min=1`, loosened to 0 by a
    # second flag with no word), where a scenario file refuses a key given twice.
    proc = run_cli("run", "basic", "--objective", "passed_ratio.min=1", "--objective", second, "-q", timeout=60)
    one_error(proc, "--objective", "passed_ratio.min is given twice", "'passed_ratio.min=1'")
    assert proc.stdout == ""  # before the run


def test_one_objective_given_twice_with_one_value_is_taken():
    proc = run_cli("run", "basic", "--objective", "passed_ratio.min=1", "--objective", "passed_ratio.min=1", "-q",
                   timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_a_token_file_saved_with_a_byte_order_mark_is_read_as_the_token(tmp_path, sim):  # noqa: F811
    # FAILED on the old code: Windows Notepad's "UTF-8 with BOM" put U+FEFF before the token, which was refused as a
    # character pasted with it (exit 2), where every other file chatprobe reads (YAML, recordings, HAR) ignores it.
    import time
    import warnings

    import jwt

    proc, hint = sim
    url = hint.split("--target ")[1].split()[0]
    secret = hint.split("CHATPROBE_JWT_SECRET=")[1].split()[0]
    with warnings.catch_warnings():  # the sim's development secret is short: PyJWT says so
        warnings.simplefilter("ignore")
        token = jwt.encode({"sub": "bom-user", "exp": int(time.time()) + 600}, secret, algorithm="HS256")
    token_file = tmp_path / "token"
    token_file.write_bytes(b"\xef\xbb\xbf" + token.encode() + b"\r\n")
    done = run_cli("run", "basic", "--target", url, "--token-file", str(token_file), "-q", timeout=60)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert token not in done.stdout + done.stderr


@pytest.mark.parametrize("every", ["1ms", "0.0001", "99ms"])
def test_a_progress_interval_below_100ms_is_refused(every):
    # FAILED on the old code: `--progress-interval 0.0001` printed a line every 0.1 ms, 184 for a one-chat run of
    # 0.2 s, millions into a CI log for a run of minutes, on the run's own CPU.
    proc = run_cli("run", "basic", "--progress-interval", every, "-q", timeout=60)
    one_error(proc, "--progress-interval", "at least 100ms")


@pytest.mark.parametrize("url", ["http://" + "x" * 300 + ":9091", "http://gw." + "y" * 64 + ".example:9091",
                                 "x" * 100_000])
def test_a_pushgateway_host_no_resolver_takes_is_refused_before_the_run(url):
    # FAILED on the old code: the host went unchecked, the run went on to its end, and the push's warning after it
    # echoed the whole URL (a 100 KB line for a 100 KB value), exit 3, the metrics gone nowhere.
    with Listener() as server:
        proc = run_cli("run", "probe", "--target", f"ws://127.0.0.1:{server.port}", "--pushgateway", url, timeout=60)
        err = one_error(proc, "--pushgateway", "not a valid host name")
        assert server.accepted() == 0 and len(err) < 1000


def test_a_sim_seed_beside_a_target_is_refused_as_a_sim_fault_is():
    # FAILED on the old code: `--sim-seed` beside --target was dropped without a word (the run against the server
    # named its users at random), where `--sim-fault` there is a usage error: a run believed repeatable was not.
    with Listener() as server:
        proc = run_cli("run", "probe", "--target", f"ws://127.0.0.1:{server.port}", "--sim-seed", "5", timeout=60)
        one_error(proc, "--sim-seed", "embedded agentsim only")
        assert server.accepted() == 0


@pytest.mark.parametrize("protocol", ["netra", "ag-ui"])
def test_a_sim_ground_truth_file_that_takes_no_write_exits_2_naming_it(protocol):
    # FAILED on the old code: `sim --ground-truth /dev/full` opened, then its first line (server_started) failed to
    # be written: a traceback, twice over (stop() wrote once more), exit 1.
    proc = run_cli("sim", "--port", "0", "--protocol", protocol, "--ground-truth", "/dev/full", timeout=60)
    one_error(proc, "ground truth file /dev/full", "No space left on device")


@pytest.mark.parametrize("argv", [
    ["run", "probe", "--jwt-secret", "S3CRET-jwt-01"],  # agentsim's own flag, typed to `run`
    ["run", "probe", "--jwt-secret=S3CRET-jwt-01"],
    ["monitor", "--once", "--jwt-secret", "S3CRET-jwt-01"],
    ["run", "probe", "--jwt-secre=S3CRET-jwt-01"],
    ["run", "probe", "--token=S3CRET-jwt-01"],  # curl's and many a client's flag: ambiguous here
    ["monitor", "--once", "--tok=S3CRET-jwt-01"],
    # The secret pasted where its variable's name goes (FAILED on the old code: "--token-env S3CRET…: the variable
    # is not set or empty"); named only when it reads as a variable's name, as --header-env's is.
    ["run", "probe", "--token-env", "S3CRET-jwt-01"],
    ["run", "probe", "--jwt-secret-env=S3CRET.jwt/01+x"],
    ["monitor", "--once", "--token-env", "eyJhbGciOiJIUzI1NiJ9.S3CRET.sig"],
])
def test_a_secret_given_on_the_command_line_is_refused_and_never_shown(argv):
    # FAILED on the old code: argparse took `--jwt-secret` for the start of --jwt-secret-env, so the secret was a
    # variable's name, shown whole in "--jwt-secret-env S3CRET…: the variable is not set or empty"; and an ambiguous
    # `--token=S3CRET…` was echoed whole in argparse's "ambiguous option" message.
    with Listener() as server:
        proc = run_cli(*argv, "--target", f"ws://127.0.0.1:{server.port}", timeout=60)
        err = one_error(proc, "--")
        assert "S3CRET" not in err + proc.stdout and server.accepted() == 0
        assert "--jwt-secret-env" in err or "--token-env" in err, err


RECORDING = Path(__file__).parent / "old_recordings" / "8afd7b8-abandonment"


@pytest.mark.parametrize("size, says", [("٣", "bad size"), ("٣MiB", "bad size"), ("2GiB", "at most 1GiB")])
def test_a_check_max_size_of_other_digits_or_past_the_bound_exits_2_naming_the_flag(size, says):
    # FAILED on the old code: `٣` (an Arabic-Indic three) was read as 3 bytes, every frame of the recording then too
    # large (exit 1, the chats failed for the flag's typo); and the bound was said as "at most 1GiB" in a unit the
    # flag did not take (`2GiB` was a "bad size").
    one_error(run_cli("check", str(RECORDING), "--scenario", "abandonment", "--max-size", size, timeout=60),
              "--max-size", says)


def test_a_check_max_size_in_gib_is_taken():
    # FAILED on the old code: `--max-size 1GiB`, the bound the flag states, was a "bad size".
    # (the recording's verdict is its own, 0 or 1, as with the default --max-size)
    proc = run_cli("check", str(RECORDING), "--scenario", "abandonment", "--max-size", "1GiB", "-q", timeout=60)
    assert proc.returncode in (0, 1) and "max-size" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("name, text", [
    ("mine.json", '{"name": "mine", "users": 2, "message": "hi", "objectives": {"violations": {"max": 0}}}\n'),
    ("mine.json", '{\n  "name": "mine",\n  "users": 2,\n  "steps": [{"chat": {"message": "hi"}}]\n}\n'),
    ("mine.yaml", "# my scenario\nname: mine\nusers: 2\nsteps:\n- chat:\n    message: hi\nobjectives:\n  violations: "
                  "{max: 0}\n"),
    ("mine.jsonl", "name: mine\nchats_per_user: 3\n"),  # told by what it holds, not by its name
])
def test_a_scenario_given_to_check_is_refused_naming_run(tmp_path, name, text):
    # FAILED on the old code: a scenario in one line of JSON was judged as a recording of one frame (exit 1, "R12",
    # an objective failed: a verdict of nothing), and one in YAML or pretty-printed JSON was "text, not a recording",
    # never said to be the scenario it is.
    path = tmp_path / name
    path.write_text(text)
    one_error(run_cli("check", str(path), timeout=60), f"{path}: a scenario, not a recording",
              f"`chatprobe run {path}`")


def test_a_built_in_scenario_file_given_to_check_is_refused_naming_run():
    path = Path(__file__).parents[2] / "scenarios" / "basic.yaml"
    one_error(run_cli("check", str(path), timeout=60), f"{path}: a scenario, not a recording",
              f"`chatprobe run {path}`")


@pytest.mark.parametrize("text", [
    '{"name": "x", "message": "hi"}\n',  # keys any record may have
    '{"name": "x", "users": 2, "type": "agent_started"}\n',  # an event's key besides
    '{"name": "x", "users": 2}\n{"name": "y", "users": 1}\n',  # two records
])
def test_a_json_line_that_is_no_plain_scenario_is_still_judged_as_a_recording(tmp_path, text):
    path = tmp_path / "rec.jsonl"
    path.write_text(text)
    proc = run_cli("check", str(path), "-q", timeout=60)
    assert proc.returncode == 1 and "a scenario" not in proc.stderr, proc.stderr[-2000:]


def test_a_scenario_longer_than_the_head_read_is_refused_naming_run(tmp_path):
    # Only the file's first 4 KiB are looked at: a scenario of many steps is told by the keys its head holds, the
    # value the head ends in cut short.
    steps = "".join(f"- chat:\n    message: question number {i} about the weather in a long sentence\n"
                    for i in range(200))
    path = tmp_path / "long.yaml"
    path.write_text(f"name: long\nusers: 2\nsteps:\n{steps}objectives:\n  violations: {{max: 0}}\n")
    assert path.stat().st_size > 3 * 4096
    one_error(run_cli("check", str(path), timeout=60), f"{path}: a scenario, not a recording",
              f"`chatprobe run {path}`")


def test_a_long_recording_whose_first_record_has_a_scenarios_keys_is_still_judged_as_a_recording(tmp_path):
    # A record with keys a scenario has, then more records past the head's 4 KiB: records, not a scenario.
    lines = ['{"name": "x", "users": 2}'] + [
        json.dumps({"t": 1700000000 + i, "dir": "recv", "conn": "c1", "frame": {"type": "thinking", "i": i}})
        for i in range(200)]
    path = tmp_path / "rec.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size > 3 * 4096
    proc = run_cli("check", str(path), "-q", timeout=60)
    assert proc.returncode == 1 and "a scenario" not in proc.stderr, proc.stderr[-2000:]
