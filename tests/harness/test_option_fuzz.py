"""Hostile values for the Locust user's and the pytest plugin's `--chatprobe-*` options, in real `locust --headless`
and `pytest` subprocesses (bounded in time; nothing listens: an option refused needs no server). Each is taken or
refused with the driver's usage-error exit and one line naming the flag: never a traceback, never a hang, never a
secret echoed. (test_config_fuzz.py does the same for chatprobe's own commands.)"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCUST = Path(sys.executable).with_name("locust")
SECRET = "sk-live-OPTFUZZ0123456789"
HUGE = "x" * 100_000  # Linux takes no single argument over 128 KiB (MAX_ARG_STRLEN): the largest a flag can be
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "CHATPROBE_TOKEN": "t-" + "z" * 20}


def _judge(proc: subprocess.CompletedProcess, flag: str, code: int, prefix: str) -> str:
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    assert "Traceback" not in out, out[-3000:]
    assert SECRET not in out, out[-3000:]
    assert proc.returncode == code, (proc.returncode, out[-3000:])
    lines = [line for line in out.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1 and flag in lines[0] and len(lines[0]) <= 1200, out[-3000:]
    return lines[0]


@pytest.mark.parametrize("flag,value", [
    # FAILED on the old code: OSError ENAMETOOLONG out of Path.is_file/exists, a traceback and exit 1.
    ("--chatprobe-ca-file", HUGE),
    ("--chatprobe-record", HUGE),
    # Taken before as now: refused in one line naming the flag, the value never shown.
    ("--chatprobe-header", f"X-Api-Key: {SECRET}\r\nX-Injected: 1"),
    # FAILED on the old code: taken (Locust's URL flag is its own --host: the line names it, as README says).
    ("--host", f"ws://127.0.0.1:9/ws?token={SECRET}&x=a\r\nX-Injected: 1"),
])
def test_a_hostile_locust_option_exits_2_with_one_line_naming_it(flag, value, refused_port):
    # (a --host given as the value comes later and wins)
    scheme = "wss" if flag == "--chatprobe-ca-file" else "ws"  # (beside a ws:// host any CA file is refused)
    argv = [str(LOCUST), "-f", str(ROOT / "scenarios" / "locustfile.py"), "--headless", "-u", "1", "-r", "1",
            "-t", "2s", "--exit-code-on-error", "1", "--host", f"{scheme}://127.0.0.1:{refused_port()}/ws", flag,
            value]
    proc = subprocess.run(argv, capture_output=True, timeout=60, env=ENV, cwd=ROOT)
    _judge(proc, flag, 2, "chatprobe: error:")


def test_hostile_pytest_plugin_options_are_a_usage_error_naming_the_flag(tmp_path):
    """FAILED on the old code: the plugin checked its options in the fixture, so a mistake was the first test's setup
    ERROR (a traceback of the fixture, exit 1); now pytest's usage error at start-up (exit 4), one line."""
    (tmp_path / "test_mine.py").write_text("def test_x(chatprobe):\n    pass\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for flag, value in [("--chatprobe-profile", HUGE), ("--chatprobe-profile", str(tmp_path)),
                        ("--chatprobe-profile", os.fsdecode(b"\xff\xfe-profile")),
                        ("--chatprobe-target", "http://127.0.0.1:9/\r\nX: 1"),
                        ("--chatprobe-target", f"ws://u:{SECRET}@127.0.0.1:9/ws"),
                        # FAILED on the old code (taken: urlsplit drops the line break the URL sent still had)
                        ("--chatprobe-target", f"ws://127.0.0.1:9/ws?token={SECRET}&x=a\nb"),
                        ("--chatprobe-header", f"X-Api-Key: {SECRET}\r\nX-Injected: 1"),
                        ("--chatprobe-header", SECRET),
                        ("--chatprobe-header-env", f"X-Api-Key={SECRET}")]:
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", "-q",
                "--rootdir", str(tmp_path), str(tmp_path), f"{flag}={value}"]
        proc = subprocess.run([os.fsencode(a) for a in argv], capture_output=True, timeout=60, env=ENV,
                              cwd=tmp_path)
        line = _judge(proc, flag, 4, "ERROR: chatprobe:")
        assert re.match(rf"ERROR: chatprobe: [^\n]*{re.escape(flag)}", line), line


def test_pytest_plugin_token_env_naming_an_unset_variable_is_a_usage_error_as_for_run(tmp_path, refused_port):
    """FAILED on the old code: `--chatprobe-token-env UNSET` was taken and no token sent (the user's tests then failed
    with the server's auth errors, far from the cause). Now as `chatprobe run --target … --token-env UNSET`: a usage
    error at start-up naming the flag and the variable (run: exit 2; pytest's usage error: exit 4). The default
    variable, used implicitly and unset, is no token, as for `run`; with no --chatprobe-target (the embedded agentsim
    mints its own tokens) a variable named that is not set is refused too, as `run` without --target refuses it."""
    from harness.cli import main

    (tmp_path / "test_mine.py").write_text("def test_x(chatprobe):\n    pass\n")
    env = {k: v for k, v in ENV.items() if k not in ("CHATPROBE_TOKEN", "CHATPROBE_JWT_SECRET", "CP_UNSET_TOKEN")}
    target = f"ws://127.0.0.1:{refused_port()}/ws"

    def pytest_run(*flags: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", "-q",
                "--rootdir", str(tmp_path), str(tmp_path), *flags]
        return subprocess.run(argv, capture_output=True, timeout=60, env=env, cwd=tmp_path)

    for var in ("CP_UNSET_TOKEN", "CHATPROBE_TOKEN"):  # the default's name given explicitly is named, so needed
        for where in (["--chatprobe-target", target], []):  # (without a target: the embedded agentsim's)
            line = _judge(pytest_run(*where, "--chatprobe-token-env", var), "--chatprobe-token-env", 4,
                          "ERROR: chatprobe:")
            assert f"--chatprobe-token-env {var}: the variable is not set or empty" in line, line
    # chatprobe run says the same of the same flag (exit 2).
    saved = {k: os.environ.pop(k) for k in ("CHATPROBE_TOKEN", "CHATPROBE_JWT_SECRET") if k in os.environ}
    try:
        assert main(["run", "basic", "-q", "--target", target, "--token-env", "CP_UNSET_TOKEN"]) == 2
    finally:
        os.environ.update(saved)
    # Taken: the implicit default unset (no token), and the named variable set.
    for flags, extra in ((["--chatprobe-target", target], {}),
                         (["--chatprobe-target", target, "--chatprobe-token-env", "CP_UNSET_TOKEN"],
                          {"CP_UNSET_TOKEN": "t-" + "y" * 20})):
        env.update(extra)
        proc = pytest_run(*flags)
        env.pop("CP_UNSET_TOKEN", None)
        assert proc.returncode == 0, (flags, proc.stdout.decode()[-2000:], proc.stderr.decode()[-2000:])
