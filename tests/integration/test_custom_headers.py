"""Headers of the user's own (`--header 'Name: value'`, `--header-env Name=VAR`; a monitor config's `headers:` and
`header_env:`; Locust's `--chatprobe-header`; the pytest plugin's `--chatprobe-header`), as an API gateway in front of
an agent server needs them: every transport sends them (picows, websockets, SSE over httpx, the Locust user's gevent
client), each to a raw server here that records the request head it got and echoes the values back in its frames;
no value shows in the output, the JSON, JUnit and HTML reports or a `--record` recording. Hostile or mistaken
headers are a usage error (exit 2, one line naming the flag or file, line and field) before anything connects.

Every test here failed on the code before this file: chatprobe had no way to send a header of one's own.
"""
from __future__ import annotations

import asyncio
import json
import os
import queue
import sys
import threading
from pathlib import Path

import pytest

from harness.cli import main

from .hostile_ws import (
    Raw,
    Reader,
    Writer,
    frame,
    offered_deflate,
    raw,
    read_until_gone,
    run_frames,
    upgrade,
    welcome_and_message,
)
from .test_sse_attacks import HEAD, RawServer, event

pytestmark = pytest.mark.timeout(150)

SECRET = "hdrEnv-S3cret-4f9c2a7e91"  # given through the environment (--header-env)
LITERAL = "tenantLit3ral-8d2b61c0"  # given on the command line (--header): a secret all the same
HEADERS = ["--header", f"X-Tenant: {LITERAL}", "--header-env", "X-Api-Key=HDR_TEST_KEY",
           "--header", "user-agent: my-agent/1"]
# The two WebSocket clients, as a scenario picks them: picows unless compression is on.
CLIENTS = {"picows": "none", "websockets": "deflate"}
ROOT = Path(__file__).parents[2]


def env() -> dict[str, str]:
    """The test's environment: the secret in HDR_TEST_KEY, and no token (the headers are the credentials)."""
    out = {k: v for k, v in os.environ.items() if k not in ("CHATPROBE_TOKEN", "CHATPROBE_JWT_SECRET")}
    return {**out, "NO_COLOR": "1", "HDR_TEST_KEY": SECRET}


def echo() -> str:
    return f"you sent X-Api-Key={SECRET} and X-Tenant: {LITERAL}"


def sent(head: bytes) -> dict[str, list[str]]:
    """The request head's headers, by lower-case name (every line of each)."""
    out: dict[str, list[str]] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        if line:
            name, _, value = line.partition(":")
            out.setdefault(name.strip().lower(), []).append(value.strip())
    return out


def assert_headers_arrived(head: bytes) -> None:
    got = sent(head)
    assert got.get("x-api-key") == [SECRET] and got.get("x-tenant") == [LITERAL], head
    assert got.get("user-agent") == ["my-agent/1"], head  # the user's replaces chatprobe's, never beside it


def assert_nowhere(tmp_path: Path, text: str, values: tuple[str, ...] = (SECRET, LITERAL)) -> str:
    """Neither value in the output nor in any file the run wrote (reports, recordings); what was written, joined."""
    written = "".join(p.read_text(errors="replace") for p in sorted(tmp_path.rglob("*")) if p.is_file()
                      and p.suffix != ".yaml")
    for value in values:
        assert value not in text and value not in written, value
    assert "Traceback" not in text, text
    return written


async def cli(tmp_path: Path, *args: str) -> tuple[int, str]:
    """`chatprobe ARGS` in a process of its own, bounded: (exit code, stdout + stderr)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "harness", *args, env=env(),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)  # a hang fails here
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, stdout.decode() + stderr.decode()


def write_scenario(tmp_path: Path, compression: str = "none") -> Path:
    scenario = tmp_path / "one.yaml"
    scenario.write_text(f"name: one\ncompression: {compression}\nreconnect: false\n"
                        "expect: {deadline: 20s, settle: 0.1s}\n")
    return scenario


def reports(tmp_path: Path) -> list[str]:
    return ["--json", str(tmp_path / "out" / "r.json"), "--junit", str(tmp_path / "out" / "r.xml"),
            "--html", str(tmp_path / "out" / "r.html"), "--record", str(tmp_path / "out" / "rec")]


async def echoing_ws(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
    """A netra server that echoes the values back: in an event's payload and in a frame that is no JSON."""
    writer.write(upgrade(head, offered_deflate(head)))
    message_id = await welcome_and_message(reader, writer)
    frames = run_frames(message_id)
    thinking = json.loads(frames[1])
    thinking["payload"]["thought"] = echo()
    frames[1] = json.dumps(thinking).encode()
    frames.insert(2, b"not json: " + echo().encode())
    writer.write(b"".join(frame(1, f) for f in frames))
    await writer.drain()
    await read_until_gone(reader)


@pytest.mark.parametrize("client", CLIENTS)
async def test_chatprobe_run_sends_the_headers_over_websocket_and_never_shows_their_values(tmp_path, client):
    scenario = write_scenario(tmp_path, CLIENTS[client])
    (tmp_path / "out").mkdir()
    async with raw(echoing_ws) as srv:
        code, text = await cli(tmp_path, "run", str(scenario), "--target", srv.url, *HEADERS, *reports(tmp_path))
    (head,) = srv.requests
    assert_headers_arrived(head)
    assert (b"permessage-deflate" in head) == (client == "websockets")  # the client the scenario picks
    assert code == 1, text  # the frame that is no JSON fails the chat (R12)
    written = assert_nowhere(tmp_path, text)
    assert "[REDACTED]" in written  # the echo reached what was written, scrubbed (the recording's frames)
    (chat,) = json.loads((tmp_path / "out" / "r.json").read_text())["scenarios"][0]["chats"]
    assert [v["rule"] for v in chat["violations"]] == ["R12"], chat


async def test_sse_sends_the_headers_and_never_shows_what_the_server_echoes(tmp_path):
    """AG-UI over HTTP POST + SSE: the headers on the POST; the stream echoes them in a text message and in a
    RUN_ERROR's message (an error the chat's verdict quotes)."""
    heads: list[bytes] = []

    async def server(reader, writer, head, body):
        heads.append(head)
        inp = json.loads(body)
        thread, run = inp["threadId"], inp["runId"]
        writer.write(HEAD + b"X-Echo: " + SECRET.encode() + b"\r\n\r\n"
                     + event(type="RUN_STARTED", threadId=thread, runId=run)
                     + event(type="TEXT_MESSAGE_START", messageId="a1", role="assistant")
                     + event(type="TEXT_MESSAGE_CONTENT", messageId="a1", delta=echo())
                     + event(type="TEXT_MESSAGE_END", messageId="a1")
                     + event(type="RUN_ERROR", message=f"denied: {echo()}", code="DENIED"))
        await writer.drain()

    scenario = write_scenario(tmp_path)
    (tmp_path / "out").mkdir()
    async with RawServer(server) as srv:
        code, text = await cli(tmp_path, "run", str(scenario), "--target", srv.url, "--profile", "ag-ui", *HEADERS,
                               *reports(tmp_path))
    (head,) = heads
    assert_headers_arrived(head)
    assert code == 1, text  # the RUN_ERROR fails the chat
    written = assert_nowhere(tmp_path, text)
    assert "[REDACTED]" in written


async def test_a_monitor_config_sends_each_targets_headers(tmp_path):
    """`headers:` and `header_env:` per target of `chatprobe monitor --config`, as `run`'s flags."""
    config = tmp_path / "monitor.yaml"
    config.write_text(f"targets:\n  gw:\n    url: URL\n    headers:\n      X-Tenant: {LITERAL}\n"
                      "      user-agent: my-agent/1\n    header_env:\n      X-Api-Key: HDR_TEST_KEY\n"
                      "scenarios: [one.yaml]\n")
    write_scenario(tmp_path)
    async with raw(echoing_ws) as srv:
        config.write_text(config.read_text().replace("URL", srv.url))
        code, text = await cli(tmp_path, "monitor", "--config", str(config), "--once")
    (head,) = srv.requests
    assert_headers_arrived(head)
    assert code == 1, text
    assert_nowhere(tmp_path, text)


async def test_the_locust_users_gevent_client_sends_the_headers(tmp_path):
    """A real headless Locust run (its users on the gevent client), `--chatprobe-header` and
    `--chatprobe-header-env`: every upgrade carries them; Locust's output, its CSV and the recording show neither."""
    scenario = write_scenario(tmp_path)
    locust = Path(sys.executable).parent / "locust"
    (tmp_path / "out").mkdir()
    async with raw(echoing_ws) as srv:
        proc = await asyncio.create_subprocess_exec(
            str(locust), "-f", str(ROOT / "scenarios" / "locustfile.py"), "--headless",
            "-u", "1", "-r", "1", "--run-time", "2s", "--stop-timeout", "5", "--host", srv.url,
            "--chatprobe-scenario", str(scenario), "--csv", str(tmp_path / "out" / "load"),
            "--chatprobe-record", str(tmp_path / "out" / "rec"),
            *[h.replace("--header", "--chatprobe-header") for h in HEADERS],
            env=env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = stdout.decode() + stderr.decode()
    assert srv.requests, text
    for head in srv.requests:
        assert_headers_arrived(head)
    assert proc.returncode == 1, text  # every chat failed its R12
    written = assert_nowhere(tmp_path, text)
    assert "[REDACTED]" in written


def test_the_pytest_plugin_sends_the_headers(pytester, monkeypatch):
    """`pytest --chatprobe-target URL --chatprobe-header … --chatprobe-header-env …`: the fixture's connection
    carries them."""
    heads: list[bytes] = []

    async def serve(ready, stop):
        async with raw(echoing_ws) as srv:
            ready.put_nowait(srv)
            await stop.wait()
            heads.extend(srv.requests)

    ready: queue.Queue = queue.Queue()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(serve(ready, stop)))
    thread.start()
    try:
        srv = ready.get(timeout=30)
        pytester.makepyfile("""
            def test_mine(chatprobe):
                chatprobe.chat("hello")
        """)
        for name, value in env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("CHATPROBE_TOKEN", raising=False)
        monkeypatch.setenv("PYTHONPATH", str(ROOT))  # pytest in a process of its own loads this tree's plugin
        res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--chatprobe-target", srv.url,
                                            *[h.replace("--header", "--chatprobe-header") for h in HEADERS])
        res.assert_outcomes(passed=1)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        if not thread.is_alive():
            loop.close()  # its descriptors (ws_stacks.LoopThread says why)
    (head,) = heads
    assert_headers_arrived(head)


# -- hostile or mistaken headers: exit 2, one line, before anything connects --

BAD = {
    "not a token": (["--header", "X Api Key: v"], "--header 'X Api Key: ...': not an HTTP header name"),
    "a colon-less pasted secret": (["--header", f"x{SECRET}"], "--header #1: expected 'Name: value'"),
    "CR LF injection": (["--header", f"X-A: {LITERAL}\r\nX-Admin: yes"], "--header 'X-A: ...': the value holds a "
                                                                        "line break"),
    "LF alone": (["--header", f"X-A: {LITERAL}\nHost: evil"], "header injection"),
    "NUL": (["--header", f"X-A: {LITERAL}\x00"], "a NUL"),
    "oversized": (["--header", "X-Big: " + "a" * 9000], "over the size bound"),
    "oversized in all": (["--header", "X-A: " + "a" * 8000, "--header", "X-B: " + "b" * 8000, "--header",
                          "X-C: " + "c" * 8000], "--header 'X-C: ...': over the size bound"),
    "duplicate, any case": (["--header", "X-Api-Key: a1b2c3d4", "--header-env", "x-api-key=HDR_TEST_KEY"],
                            "--header-env 'x-api-key=...': given twice"),
    "Host": (["--header", "Host: evil.example"], "chatprobe sends this header itself"),
    "Sec-WebSocket-Key": (["--header", "sec-websocket-key: AAAA"], "itself on a websocket connection"),
    "Transfer-Encoding": (["--header", "Transfer-Encoding: chunked"], "itself"),
    "Authorization while chatprobe sends a token": (["--header", f"Authorization: Basic {LITERAL}"],
                                                    "give --auth none to send an Authorization of your own"),
    "CR LF from the environment": (["--header-env", "X-Api-Key=HDR_CRLF_KEY"], "--header-env 'X-Api-Key=...': the "
                                                                              "value holds a line break"),
    "an unset variable": (["--header-env", "X-Api-Key=HDR_UNSET_VAR"], "the variable HDR_UNSET_VAR is not set"),
    "no variable": (["--header-env", "X-Api-Key="], "names no environment variable"),
    # the flags mixed up: the value pasted where its variable goes is never shown
    "a value in the variable's place": (["--header-env", f"X-Api-Key={LITERAL}-sk/live"],
                                        "the variable named (not shown"),
}


@pytest.mark.parametrize("flags, needle", BAD.values(), ids=BAD.keys())
def test_a_hostile_or_mistaken_header_is_a_usage_error(capsys, monkeypatch, flags, needle):
    monkeypatch.setenv("HDR_TEST_KEY", SECRET)
    monkeypatch.setenv("HDR_CRLF_KEY", f"{SECRET}\r\nX-Admin: yes")
    monkeypatch.delenv("HDR_UNSET_VAR", raising=False)
    assert main(["run", "basic", "--target", "ws://127.0.0.1:9/ws", *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err, err
    assert SECRET not in err and LITERAL not in err, err


async def test_an_authorization_of_ones_own_goes_with_auth_none(tmp_path):
    """With `--auth none` chatprobe sends no token, and the Authorization header is the user's (a gateway's Basic
    credential), sent as given and shown nowhere."""
    (tmp_path / "out").mkdir()
    async with raw(echoing_ws) as srv:
        code, text = await cli(tmp_path, "run", str(write_scenario(tmp_path)), "--target", srv.url, "--auth", "none",
                               "--header", f"Authorization: Basic {LITERAL}", *reports(tmp_path))
    (head,) = srv.requests
    assert sent(head).get("authorization") == [f"Basic {LITERAL}"], head
    assert code == 1, text
    assert_nowhere(tmp_path, text, (LITERAL,))  # the one value this run sent (the server echoes it)


def test_a_monitor_configs_bad_header_names_the_file_line_and_field(tmp_path, capsys):
    config = tmp_path / "monitor.yaml"
    config.write_text("targets:\n  gw:\n    url: ws://127.0.0.1:9/ws\n    headers:\n      X-Ok: fine\n"
                      f"      Host: {LITERAL}\n")
    from monitors.monitor import main as monitor_main

    assert monitor_main(["--config", str(config), "--once"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"{config}:6: field 'targets.gw.headers': 'Host: ...': chatprobe sends this header itself" in err, err
    assert LITERAL not in err
    # --header beside --config would be dropped without a word: refused
    assert monitor_main(["--config", str(config), "--once", "--header", "X-Ok: fine"]) == 2
    assert "--header applies to --target; with --config give each target's headers in the file" in \
        capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--insecure"], ["--ca-file", "ca.pem"], ["--token-env", "T"], ["--profile", "ag-ui"],
                                  ["--auth", "none"], ["--target-name", "x"], ["--jwt-secret-env", "S"],
                                  ["--token-file", "t"], ["--header-env", "X-Key=K"]])
def test_a_target_flag_beside_a_monitor_config_is_refused_not_dropped(tmp_path, capsys, flag):
    """`monitor --config FILE --insecure` probed every target with verification on, the flag dropped without a word
    (and `--ca-file`, `--auth none`, a token... the same): each names the flag and the file's key that says it."""
    config = tmp_path / "monitor.yaml"
    config.write_text("targets:\n  gw:\n    url: ws://127.0.0.1:9/ws\n")
    from monitors.monitor import main as monitor_main

    assert monitor_main(["--config", str(config), "--once", *flag]) == 2
    err = capsys.readouterr().err
    assert f"{flag[0]} applies to --target; with --config give each target's" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_the_locust_user_names_its_own_flag(tmp_path):
    """A bad `--chatprobe-header` ends Locust with exit 2 and one line naming that flag."""
    import subprocess

    locust = Path(sys.executable).parent / "locust"
    proc = subprocess.run([str(locust), "-f", str(ROOT / "scenarios" / "locustfile.py"),
                           "--headless", "-u", "1", "-r", "1", "--run-time", "2s", "--host", "ws://127.0.0.1:9/ws",
                           "--chatprobe-header", f"X-A: {LITERAL}\r\nX-Admin: yes"],
                          capture_output=True, text=True, timeout=120, env=env())
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--chatprobe-header 'X-A: ...': the value holds a line break" in proc.stderr, proc.stderr[-2000:]
    assert LITERAL not in proc.stdout + proc.stderr


def test_the_pytest_plugin_refuses_a_bad_header_naming_its_flag(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile("def test_mine(chatprobe):\n    pass\n")
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--chatprobe-target", "ws://127.0.0.1:9/ws",
                                        "--chatprobe-header", "Host: evil.example")
    assert res.ret == pytest.ExitCode.USAGE_ERROR  # at start-up, as for any other bad --chatprobe-* option
    res.stderr.fnmatch_lines(["ERROR: chatprobe: --chatprobe-header 'Host: ...': chatprobe sends this header "
                              "itself on a websocket connection"])


async def test_an_origin_naming_the_targets_host_leaves_the_target_shown(tmp_path):
    """An `Origin` (what a browser page sends, never a credential) naming the target's own host: the report's target
    label stays host:port, where a secret sharing 8 characters with it would hide it; the real secrets stay hidden."""
    scenario = write_scenario(tmp_path)
    (tmp_path / "out").mkdir()
    async with raw(echoing_ws) as srv:
        host = srv.url.split("//", 1)[1].split("/", 1)[0]
        code, text = await cli(tmp_path, "run", str(scenario), "--target", srv.url, *HEADERS,
                               "--header", f"Origin: http://{host}", "--json", str(tmp_path / "out" / "r.json"))
    (head,) = srv.requests
    assert sent(head).get("origin") == [f"http://{host}"], head
    assert code == 1, text  # the echoing server's frame that is no JSON (R12), as above
    assert_nowhere(tmp_path, text)
    report = json.loads((tmp_path / "out" / "r.json").read_text())
    assert report["scenarios"][0]["target"] == host, report["scenarios"][0]["target"]


@pytest.mark.parametrize("flag,value,said", [
    ("--chatprobe-target-name", "a b", "--chatprobe-target-name 'a b': 1 to 64 letters"),
    ("--chatprobe-profile", "no-such-profile", "--chatprobe-profile 'no-such-profile': no such file"),
])
def test_the_locust_user_names_its_own_flag_for_every_target_option(flag, value, said):
    """Not only a header's: a bad `--chatprobe-target-name` or `--chatprobe-profile` was named as `chatprobe run`
    spells it (`--target-name`, `--profile`), a flag Locust does not have."""
    import subprocess

    locust = Path(sys.executable).parent / "locust"
    proc = subprocess.run([str(locust), "-f", str(ROOT / "scenarios" / "locustfile.py"),
                           "--headless", "-u", "1", "-r", "1", "--run-time", "2s", "--host", "ws://127.0.0.1:9/ws",
                           flag, value], capture_output=True, text=True, timeout=120, env=env())
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"chatprobe: error: {said}" in proc.stderr, proc.stderr[-2000:]


def test_the_pytest_plugin_names_its_own_profile_flag(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile("def test_mine(chatprobe):\n    pass\n")
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--chatprobe-target", "ws://127.0.0.1:9/ws",
                                        "--chatprobe-profile", "no-such-profile")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["ERROR: chatprobe: --chatprobe-profile 'no-such-profile': no such file*"])
