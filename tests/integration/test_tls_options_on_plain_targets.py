"""A TLS option (`--ca-file`, `--client-cert`, `--insecure`, or a monitor config's `ca_file`, `client_cert`,
`insecure`) beside a target that speaks no TLS (ws://, http://): a user who typed ws:// for wss:// believed the
server's certificate verified while nothing was. Refused before any connection, exit 2, one line naming the option
and the target (a config file's line and field), as the proxy refuses --upstream-ca-file beside a ws:// upstream;
the Locust user's and the pytest plugin's namesakes alike (tests/harness/test_pytest_plugin.py).

FAILED on the code before: every driver took the option and ran against the plain server (which these servers
count), exit 0 or 1 with the option silently ignored.

A raw WebSocket server on 127.0.0.1 that answers a chat (tests/integration/hostile_ws.py); the commands as
subprocesses, bounded in time.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from .hostile_ws import (
    TOKEN,
    Raw,
    Reader,
    Writer,
    frame,
    raw,
    read_until_gone,
    run_frames,
    tls_context,
    upgrade,
    welcome_and_message,
)

ROOT = Path(__file__).resolve().parents[2]
LOCUST = Path(sys.executable).with_name("locust")


async def answers(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
    """A plain-WebSocket chat server: the run answered, then the connection held until the client goes."""
    writer.write(upgrade(head))
    message_id = await welcome_and_message(reader, writer)
    writer.writelines(frame(1, f) for f in run_frames(message_id))
    await writer.drain()
    await read_until_gone(reader)


async def command(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "NO_COLOR": "1", "CHATPROBE_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)},
        start_new_session=True)
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 90)  # a hang fails here
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    return proc.returncode or 0, stdout.decode() + stderr.decode()


def one_error(text: str, prefix: str) -> str:
    assert "Traceback" not in text and TOKEN not in text, text[-3000:]
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, text[-3000:]
    return lines[0]


@pytest.mark.parametrize("option", ["--ca-file", "--client-cert", "--insecure"])
@pytest.mark.parametrize("command_name", ["run", "monitor"])
async def test_a_tls_flag_beside_a_ws_target_is_a_usage_error_before_any_connection(tmp_path, option, command_name):
    _, ca_file = tls_context(tmp_path)  # a real PEM: the file itself is fine, the target is what cannot use it
    value = [] if option == "--insecure" else [ca_file]
    async with raw(answers) as srv:
        args = ["run", "basic"] if command_name == "run" else ["monitor", "--once", "--scenario", "probe"]
        code, text = await command(sys.executable, "-m", "harness", *args, "--target", srv.url, option, *value)
        requests, url = len(srv.requests), srv.url
    line = one_error(text, f"chatprobe{' monitor' if command_name == 'monitor' else ''}: error:")
    assert (code, requests) == (2, 0), (code, requests, text[-2000:])
    assert line.endswith(f"error: {option}: is for a wss:// or https:// target; {url} speaks no TLS "
                         "(did you mean wss://?)"), line


@pytest.mark.parametrize("field", ["ca_file", "insecure"])
async def test_a_monitor_config_naming_tls_for_a_ws_target_is_refused_with_its_file_line_and_field(tmp_path, field):
    _, ca_file = tls_context(tmp_path)
    value = ca_file if field == "ca_file" else "true"
    async with raw(answers) as srv:
        config = tmp_path / "monitor.yaml"
        config.write_text(f"targets:\n  prod:\n    url: {srv.url}\n    {field}: {value}\nscenarios: [probe]\n")
        code, text = await command(sys.executable, "-m", "harness", "monitor", "--once", "--config", str(config))
        requests, url = len(srv.requests), srv.url
    line = one_error(text, "chatprobe monitor: error:")
    assert (code, requests) == (2, 0), (code, requests, text[-2000:])
    assert line == (f"chatprobe monitor: error: {config}:4: field 'targets.prod.{field}': is for a wss:// or https:// "
                    f"target; {url} speaks no TLS (did you mean wss://?)"), line


async def test_run_with_a_tls_flag_and_the_embedded_agentsim_is_refused_too(tmp_path):
    """No --target: the embedded agentsim speaks plain ws:// (or http://); a TLS flag there is as unread."""
    code, text = await command(sys.executable, "-m", "harness", "run", "basic", "--insecure")
    line = one_error(text, "chatprobe: error:")
    assert code == 2 and line == ("chatprobe: error: --insecure: is for a wss:// or https:// target; the embedded "
                                  "agentsim speaks no TLS (give --target wss://… for a server of yours)"), text[-2000:]


@pytest.mark.parametrize("option", ["--chatprobe-ca-file", "--chatprobe-client-cert"])
async def test_the_locust_user_refuses_its_namesakes_beside_a_ws_host(tmp_path, option):
    _, ca_file = tls_context(tmp_path)
    async with raw(answers) as srv:
        code, text = await command(
            str(LOCUST), "-f", str(ROOT / "scenarios" / "locustfile.py"), "--headless", "-u", "1", "-r", "1", "-t",
            "3s", "--exit-code-on-error", "1", "--host", srv.url, option, ca_file)
        requests, url = len(srv.requests), srv.url
    line = one_error(text, "chatprobe: error:")
    assert (code, requests) == (2, 0), (code, requests, text[-2000:])
    assert line == (f"chatprobe: error: {option}: is for a wss:// or https:// target; {url} speaks no TLS "
                    "(did you mean wss://?)"), line
