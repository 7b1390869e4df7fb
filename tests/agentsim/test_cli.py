"""agentsim's command line: listening line, signals, exit faults, and exit 2 on bad flags or config."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import websockets.sync.client

from agentsim import cli
from agentsim.faults import FAULTS
from agentsim.server import SimConfig, run_in_thread

from .wsclient import connect, is_terminal, read_gt, recv, send

ROOT = Path(__file__).resolve().parents[2]


async def start_cli(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentsim", "--port", "0", "--no-auth", "--think", "0", "--tool-latency", "0", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=str(ROOT))
    async with asyncio.timeout(15):
        line = (await proc.stdout.readline()).decode()
    assert line.startswith("agentsim listening on ws://127.0.0.1:"), line
    return proc, line.split()[-1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_cli_serves_and_stops_cleanly(sig):
    proc, url = await start_cli()
    ws, _ = await connect(url, "alice")
    async with ws:
        await send(ws, {"type": "user_message", "payload": {"content": "hi"}})
        while not is_terminal(await recv(ws)):
            pass
    proc.send_signal(sig)
    async with asyncio.timeout(15):
        assert await proc.wait() == 0


async def test_exit_fault_kills_process_mid_run(tmp_path):
    gt = tmp_path / "gt.jsonl"
    proc, url = await start_cli("--fault", "exit=1", "--ground-truth", str(gt), "--seed", "1")
    ws, _ = await connect(url, "alice")
    await send(ws, {"type": "user_message", "payload": {"content": "hi #tools=2"}})
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            frame = await recv(ws)
            assert not is_terminal(frame)
    async with asyncio.timeout(15):
        assert await proc.wait() == 3
    assert [r["fault"] for r in read_gt(gt) if r["kind"] == "fault"] == ["exit"]


async def test_exit_after_n_chats(tmp_path):
    gt = tmp_path / "gt.jsonl"
    proc, url = await start_cli("--fault", "exit_after=2", "--ground-truth", str(gt))
    ws, _ = await connect(url, "alice")
    completed = 0
    with pytest.raises(websockets.ConnectionClosed):
        for _ in range(3):
            await send(ws, {"type": "user_message", "payload": {"content": "hi"}})
            while not is_terminal(frame := await recv(ws)):
                pass
            completed += frame["type"] == "agent_completed"
    async with asyncio.timeout(15):
        assert await proc.wait() == 3
    assert completed == 2
    records = read_gt(gt)
    assert sum(r["kind"] == "run_finished" for r in records) == 2
    assert records[-1]["kind"] == "fault" and records[-1]["fault"] == "exit_after"


@pytest.mark.parametrize("flag,needle", [
    (["--fault", "drop:tool_complet=0.1"], "--fault"),
    (["--fault", "teleport=0.1"], "unknown fault"),
    (["--fault", "drop=1.5"], "between 0 and 1"),
    (["--fault", "stall=soon@0.1"], "bad duration"),
    (["--think", "fast"], "--think"),
    (["--port", "99999"], "argument --port: port 99999 is not between 0 and 65535"),
    (["--port", "-1"], "argument --port"),
    (["--resume-ttl", "-1"], "argument --resume-ttl"),
    (["--resume-ttl", "nan"], "argument --resume-ttl"),
    (["--resume-ttl", "inf"], "argument --resume-ttl"),
    (["--max-size", "0"], "argument --max-size"),
    (["--max-size", "9" * 400], "argument --max-size"),
    (["--max-live-runs-per-user", "0"], "argument --max-live-runs-per-user"),
])
def test_bad_flag_exits_2_with_one_line(capsys, flag, needle):
    with pytest.raises(SystemExit) as info:
        cli.main(flag)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv,hint", [
    (["--seeed", "3"], "unrecognized arguments: --seeed … (did you mean --seed?)"),
    (["--sede=3"], "unrecognized arguments: --sede=… (did you mean --seed?)"),
    (["--jwt-secrit", "s"], "(did you mean --jwt-secret?)"),
    (["--no-auth", "--tool-latncy", "0"], "(did you mean --tool-latency?)"),
])
def test_a_misspelt_flag_exits_2_naming_the_flag_meant(argv, hint):
    """FAILED on the old code: `agentsim --seeed 3` (and `chatprobe sim`) said "unrecognized arguments: --seeed 3",
    where `chatprobe run` names the flag a typo most looks like. The real entry point, `python -m agentsim`."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "agentsim", *argv], capture_output=True, text=True, timeout=30,
                          env=env, cwd=str(ROOT))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("agentsim: error: ") and hint in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


SECRET = "S3CRET-jwt-01"


@pytest.mark.parametrize("command", [["-m", "agentsim"], ["-m", "harness", "sim"]], ids=["agentsim", "chatprobe-sim"])
@pytest.mark.parametrize("argv, said", [
    ([f"--t={SECRET}"], "ambiguous option: --t=… could match --think, --tool-latency"),
    (["--no-auth", f"--co={SECRET}"], "ambiguous option: --co=… could match --config, --compression"),
    (["--jwt-secrt", SECRET], "unrecognized arguments: --jwt-secrt … (did you mean --jwt-secret?)"),
    ([f"--jwt-secrt={SECRET}"], "unrecognized arguments: --jwt-secrt=… (did you mean --jwt-secret?)"),
])
def test_the_secret_given_to_a_mistyped_flag_is_never_shown(command, argv, said):
    """FAILED on the old code (the ambiguous ones): "ambiguous option: --t=S3CRET-jwt-01 could match --think,
    --tool-latency": the value given to a flag abbreviated past telling (a --jwt-secret's secret, mistyped) was
    echoed to the terminal and the CI log, by `agentsim` and `chatprobe sim` alike. Now said as `…`, exit 2, one line."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, *command, *argv], capture_output=True, text=True, timeout=60, env=env,
                          cwd=str(ROOT))
    prog = "agentsim" if command[-1] == "agentsim" else "chatprobe sim"
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"{prog}: error: {said}\n", proc.stderr
    assert SECRET not in proc.stdout + proc.stderr


def test_a_usage_error_is_said_as_chatprobe_says_it():
    """agentsim's unknown_flag_hint is harness.errors.unknown_flag_hint written again (agentsim imports nothing of
    harness): of agentsim's own parser, the two say every misspelt or ambiguous flag alike."""
    from harness.errors import unknown_flag_hint

    parser = cli.build_parser()
    messages = [
        f"ambiguous option: --t={SECRET} could match --think, --tool-latency",
        "ambiguous option: --co could match --config, --compression",
        f"ambiguous option: --ma={SECRET}=x could match --max-size, --max-live-runs-per-user",
        f"unrecognized arguments: --jwt-secrt {SECRET}",
        f"unrecognized arguments: --jwt-secrt={SECRET} extra",
        "unrecognized arguments: --seeed 3 --fualt x",
        f"unrecognized arguments: {SECRET}",
        "unrecognized arguments: -x",
        "argument --seed: invalid int value: 'x'",
    ]
    for message in messages:
        assert cli.unknown_flag_hint(parser, message) == unknown_flag_hint(parser, message), message
        if message.startswith(("ambiguous", "unrecognized arguments: --")):
            assert SECRET not in cli.unknown_flag_hint(parser, message), message


@pytest.mark.parametrize("protocol", ["netra", "ag-ui"])
def test_a_port_in_use_exits_2_with_one_line_naming_the_address_and_the_reason(protocol, tmp_path):
    """FAILED on the old code: exit 1, with asyncio's wrapping of the reason ("cannot listen on 127.0.0.1:P: error while
    attempting to bind on address ('127.0.0.1', P): address already in use"). An address agentsim cannot listen on is
    its flags' or config's fault: exit 2 and one line, the address and the system's reason, as `chatprobe proxy
    --listen` says it; the ground truth file is closed, not left half-written."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    gt = tmp_path / "gt.jsonl"
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "agentsim", "--port", str(port), "--protocol", protocol,
                               "--ground-truth", str(gt)], capture_output=True, text=True, timeout=30, env=env,
                              cwd=str(ROOT))
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "warning" not in line]
    assert lines == [f"agentsim: error: 127.0.0.1:{port}: cannot listen: {os.strerror(errno.EADDRINUSE)}"], proc.stderr
    assert proc.stdout == ""  # never "listening"


def test_an_address_that_is_no_host_s_exits_2_in_one_line(capsys):
    """An IPv6 address in brackets, as a URL writes it, and a host name that does not resolve, as the resolver says it."""
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as busy:
        port = busy.getsockname()[1]
        assert cli.main(["--host", "::1", "--port", str(port)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" not in line]
    assert err == [f"agentsim: error: [::1]:{port}: cannot listen: {os.strerror(errno.EADDRINUSE)}"], err
    assert cli.main(["--host", "no-such-host.invalid", "--port", "0"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" not in line]
    assert len(err) == 1 and err[0].startswith("agentsim: error: no-such-host.invalid:0: cannot listen: "), err


def test_the_reason_is_said_as_chatprobe_says_it():
    """agentsim's os_reason is harness.errors.os_reason written again (agentsim imports nothing of harness): the two
    say every kind of listening failure alike, in the system's own words."""
    from harness.errors import os_reason

    in_use = os.strerror(errno.EADDRINUSE)
    errors = [
        OSError(errno.EADDRINUSE, f"error while attempting to bind on address ('127.0.0.1', 1): {in_use.lower()}"),
        OSError(errno.EADDRINUSE, f"{in_use} (while attempting to bind on address ('127.0.0.1', 1))"),
        OSError(errno.EACCES, os.strerror(errno.EACCES)),
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        OSError("a port is 1 to 65535"),
        OSError(errno.EADDRINUSE, "something else entirely"),
    ]
    said = [os_reason(exc) for exc in errors]
    assert said == [cli.os_reason(exc) for exc in errors]
    assert said[:5] == [in_use, in_use, os.strerror(errno.EACCES), "Name or service not known", "a port is 1 to 65535"]
    assert said[5] == "something else entirely"


def test_a_flag_s_prefix_is_still_that_flag():
    """argparse takes an unambiguous prefix of a flag for it: the suggestion is only for flags no parse took."""
    args = cli.build_parser().parse_args(["--se", "3", "--verb", "--tool-lat", "0.5"])
    assert (args.seed, args.verbose, args.tool_latency) == (3, True, (0.5, 0.5))


def test_a_typo_is_matched_as_chatprobe_matches_it():
    """agentsim's `closest` is harness.errors.closest written again (agentsim imports nothing of harness): the two
    choose alike."""
    from harness.errors import closest

    flags = [f for a in cli.build_parser()._actions for f in a.option_strings]
    words = ["--seeed", "--sede", "--prot", "--fualt", "--hots", "--verbos", "--jwt", "--config-file", "--x", "",
             "--max-sise", "--compresion", "-V", "--max-live-run-per-user", "--ground_truth", "x" * 200]
    for word in words:
        assert cli.closest(word, flags) == closest(word, flags), word
    for key in ["thinc", "prot", "max_run", "fault", "colour", "allow-no-exp", "seeds"]:
        assert cli.closest(key, cli._CONFIG_FIELDS) == closest(key, cli._CONFIG_FIELDS), key


@pytest.mark.parametrize("text,needle", [
    ("seed: 1\nfaults:\n  - drop=0.1\n  - nonsense=0.2\n", ":4: field 'faults': 'nonsense=0.2': unknown fault"),
    ("seed: 1\nthinc: 0\n", ":2: field 'thinc': unknown field (did you mean 'think'?)"),
    ("max_size_x: 1\n", ":1: field 'max_size_x': unknown field (did you mean 'max_size'?)"),
    ("colour: 1\n", ":1: field 'colour': unknown field (known: host, port,"),  # like nothing: no guess
    ("port: eighty\n", ":1: field 'port': expected a whole number"),
    ("think: 0.2-0.1\n", ":1: field 'think': bad latency"),
    ("faults: [\n", "invalid YAML"),
    ("- just\n- a list\n", ":1: the config must be a mapping"),
    ("seed: 1\nport: 99999\n", ":2: field 'port': port 99999 is not between 0 and 65535"),
    ("port: -1\n", ":1: field 'port'"),
    ("max_runs: 0\n", ":1: field 'max_runs': expected a whole number of at least 1"),
    ("max_runs_per_user: 0\n", ":1: field 'max_runs_per_user': expected a whole number of at least 1"),
    ("allow_no_exp: 1\n", ":1: field 'allow_no_exp': expected true or false"),
    ("max_events_per_run: -3\n", ":1: field 'max_events_per_run'"),
    ("think: .nan\n", ":1: field 'think': bad latency"),
    ("think: .inf\n", ":1: field 'think': bad latency"),
    ("tool_latency: [0, .inf]\n", ":1: field 'tool_latency': bad latency"),
    ("resume_ttl: .nan\n", ":1: field 'resume_ttl'"),
    ("resume_ttl: .inf\n", ":1: field 'resume_ttl'"),
    ("resume_ttl: -1\n", ":1: field 'resume_ttl'"),
])
def test_bad_config_exits_2_naming_file_line_field(tmp_path, capsys, text, needle):
    path = tmp_path / "agentsim.yaml"
    path.write_text(text)
    assert cli.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and needle in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("text,needle", [
    # FAILED on the old code, each taken as YAML 1.1 reads it: octal (port 8, 8 runs) and base-60 (90 s, 1.5 h?).
    ("seed: 1\nport: 010\n", ":2: field 'port': 010 has a leading 0: YAML 1.1 reads it as octal"),
    ("max_runs: 0_10\n", ":1: field 'max_runs': 0_10 has a leading 0"),
    ("max_size: 010\n", ":1: field 'max_size': 010 has a leading 0"),
    ("tool_latency:\n  - 0\n  - 010\n", ":3: field 'tool_latency': 010 has a leading 0"),
    ("resume_ttl: 1:30\n", ":1: field 'resume_ttl': 1:30 is YAML 1.1's base-60 number"),
    ("resume_ttl: !!int 1:30\n", ":1: field 'resume_ttl': 1:30 is YAML 1.1's base-60 number"),
    ("think: 0:30.5\n", ":1: field 'think': 0:30.5 is YAML 1.1's base-60 number"),
])
def test_a_yaml_1_1_octal_or_base_60_number_exits_2_naming_file_line_field(tmp_path, capsys, text, needle):
    path = tmp_path / "agentsim.yaml"
    path.write_text(text)
    with socket.create_server(("127.0.0.1", 0)) as busy:  # a config taken (the old code) cannot listen
        assert cli.main(["--config", str(path), "--port", str(busy.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and needle in err, err
    assert len(err.strip().splitlines()) == 1


def test_yaml_1_1_numbers_are_read_as_written_or_refused_never_guessed(tmp_path):
    """A text field takes its plain scalar as written (FAILED on the old code: `jwt_secret: 01234567` was the octal
    342391, `1:30` the base-60 90); hexadecimal, binary and digits grouped with `_` are the numbers they plainly
    are; a decimal point makes no octal."""
    path = tmp_path / "agentsim.yaml"
    path.write_text("jwt_secret: 01234567\nseed: 0x1A\nmax_runs: 1_000\nmax_events_per_run: 0b101\n"
                    "resume_ttl: 010.5\n")
    assert cli.load_config(str(path)) == {"jwt_secret": "01234567", "seed": 26, "max_runs": 1000,
                                          "max_events_per_run": 5, "resume_ttl": 10.5}
    path.write_text("jwt_secret: 1:30\n")
    assert cli.load_config(str(path)) == {"jwt_secret": "1:30"}


def test_ground_truth_that_cannot_be_written_exits_2(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    bad = afile / "gt.jsonl"  # its parent is a file
    with pytest.raises(SystemExit) as info:
        cli.main(["--port", "0", "--ground-truth", str(bad)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --ground-truth" in err and "is not a directory" in err and len(err.strip().splitlines()) == 1
    for target, needle in ((bad, "is not a directory"), (tmp_path / "no" / "gt.jsonl", "does not exist"),
                           (tmp_path, "is a directory")):
        path = tmp_path / "agentsim.yaml"
        path.write_text(f"port: 0\nground_truth: '{target}'\n")
        assert cli.main(["--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"{path}:2: field 'ground_truth'" in err and needle in err, err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "no").exists()


# One command's main in a process of its own, the wait for a FIFO's reader shortened (60 s in use): the subprocess's
# timeout is the test's "hangs".
_SHORT_READER_WAIT = """
import sys
from agentsim import server
server.READER_DEADLINE = 1.0
if sys.argv[1] == "agentsim":
    from agentsim.cli import main
    sys.exit(main(sys.argv[2:]))
from harness.cli import main
sys.exit(main(["sim", *sys.argv[2:]]))
"""


@pytest.mark.parametrize("protocol", ["netra", "ag-ui"])
@pytest.mark.parametrize("given", ["flag", "config"])
@pytest.mark.parametrize("command", ["agentsim", "chatprobe-sim"])
def test_a_ground_truth_fifo_nobody_reads_exits_2_never_a_hang(tmp_path, command, given, protocol):
    """FAILED on the old code (killed at the timeout): `--ground-truth FIFO` (or the config's ground_truth) with no
    reader waited at open() for ever, before listening, with no word. Now the answer chatprobe's reports give a FIFO
    nobody reads: the server waits READER_DEADLINE for a reader, then exit 2, one line naming the file."""
    fifo = tmp_path / "gt.jsonl"
    os.mkfifo(fifo)
    args = ["--ground-truth", str(fifo)]
    if given == "config":
        config = tmp_path / "agentsim.yaml"
        config.write_text(f"ground_truth: '{fifo}'\n")
        args = ["--config", str(config)]
    proc = subprocess.run([sys.executable, "-c", _SHORT_READER_WAIT, command, "--port", "0", "--protocol", protocol,
                           *args], capture_output=True, text=True, timeout=30, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "warning" not in line]
    assert lines == [f"agentsim: error: cannot open the ground truth file {fifo}: no reader opened the FIFO within "
                     "1s"], proc.stderr
    assert proc.stdout == "" and stat.S_ISFIFO(os.lstat(fifo).st_mode)  # never "listening"; still the FIFO


def test_a_ground_truth_fifo_read_after_the_start_gets_every_line(tmp_path):
    """`mkfifo gt; agentsim --ground-truth gt & cat gt`: a reader that comes after the server started waiting for it
    gets the ground truth, from server_started to server_stopped."""
    fifo = tmp_path / "gt.jsonl"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "agentsim", "--port", "0", "--ground-truth", str(fifo)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdin=subprocess.DEVNULL)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the reader, now: the server may be waiting for it
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "no listening line within 30 s"
        assert proc.stdout.readline().startswith("agentsim listening on ws://127.0.0.1:")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        data = b""
        while chunk := os.read(reader, 1 << 16):  # the writer is gone: what it wrote, then the end
            data += chunk
    finally:
        os.close(reader)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    kinds = [json.loads(line)["kind"] for line in data.decode().splitlines()]
    assert kinds[0] == "server_started" and kinds[-1] == "server_stopped", kinds


def test_non_utf8_config_names_the_file(tmp_path, capsys):
    path = tmp_path / "agentsim.yaml"
    path.write_bytes(b"seed: 1\nhost: \xff\xfe\n")
    assert cli.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: not UTF-8" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("field,value", [("port", 99999), ("port", -1), ("max_runs", 0), ("max_events_per_run", -3),
                                         ("resume_ttl", float("nan")), ("resume_ttl", float("inf")),
                                         ("max_size", 0), ("think", float("nan")), ("tool_latency", float("inf"))])
def test_sim_config_rejects_out_of_range_settings(field, value):
    with pytest.raises(ValueError):
        SimConfig(**{field: value})


def test_config_file_and_flags_merge(tmp_path):
    path = tmp_path / "agentsim.yaml"
    path.write_text("seed: 5\nthink: 0.02-0.2\nno_auth: true\nfaults:\n  - drop:tool_completed=0.08\n"
                    "resume_ttl: 30\nmax_size: 2MiB\n")
    args = cli.build_parser().parse_args(["--config", str(path), "--fault", "delay_first=2.5s@0.1", "--seed", "6"])
    config = cli.config_from_args(args)
    assert config.seed == 6 and config.think == (0.02, 0.2) and config.no_auth and config.resume_ttl == 30
    assert config.max_size == 2 * 1024 * 1024
    assert [(f.name, f.arg, f.value, f.rate) for f in config.faults] == [
        ("drop", "tool_completed", None, 0.08), ("delay_first", None, 2.5, 0.1)]


def test_help_documents_every_fault(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name in FAULTS:
        assert name in out
    for flag in ("--host", "--port", "--no-auth", "--jwt-secret", "--think", "--tool-latency", "--seed",
                 "--fault", "--config", "--ground-truth", "--resume-ttl", "--max-size", "--max-live-runs-per-user",
                 "--allow-no-exp"):
        assert flag in out


def test_run_in_thread_with_sync_client():
    handle = run_in_thread(SimConfig(port=0, no_auth=True, think=0, tool_latency=0))
    try:
        assert handle.url.startswith("ws://127.0.0.1:") and handle.url.endswith("/ws")
        with websockets.sync.client.connect(handle.url + "?user=sync", open_timeout=5) as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "connection_established"
            ws.send(json.dumps({"type": "user_message", "payload": {"content": "hi"}}))
            types = []
            while not types or types[-1] != "agent_completed":
                types.append(json.loads(ws.recv(timeout=5))["type"])
        assert types[0] == "agent_started"
    finally:
        handle.stop()
    assert not handle.thread.is_alive()


@pytest.mark.parametrize("text, needle", [
    ("a: &a [x, x]\n" + "".join(f"b{i}: &b{i} [*a, *a]\n" for i in range(30)), "aliases"),
    ("seed: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
])
def test_hostile_config_exits_2_quickly(tmp_path, capsys, text, needle):
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    assert cli.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


@pytest.mark.parametrize("text, needle", [
    # 200,000 levels in flow style (PyYAML's composer would recurse per level; its scanner works per open level).
    ("seed: 1\nthink: " + "[" * 200_000 + "]" * 200_000 + "\n", ":2: field 'think': nested too deeply"),
    ("seed: 1\nthink:\n" + "".join(" " * i + "-\n" for i in range(40)), ": field 'think': nested too deeply"),
    ("seed: 1\nfaults: [" + ", ".join(["drop=0.1"] * 20_000) + "]\n", ":2: field 'faults': more than 10000 values"),
    ("seed: 1\nfaults:\n" + "  - drop=0.1\n" * 100_000, ": field 'faults': larger than 1024 KiB"),
    ("a: &a [x, x]\n" + "".join(f"b{i}: &b{i} [*a, *a]\n" for i in range(30)), ":12: field 'b10': more than 20 YAML aliases"),
])
def test_a_huge_or_deep_config_is_refused_at_once_by_a_real_agentsim(tmp_path, text, needle):
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "agentsim", "--config", str(path), "--port", "0"],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert err.startswith(f"agentsim: error: {path}:") and needle in err, err[:2000]
    assert len(err.splitlines()) == 1 and "Traceback" not in err and not proc.stdout
