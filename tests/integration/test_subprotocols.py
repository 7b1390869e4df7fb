"""Subprotocols of the user's own (`--subprotocol NAME`, a monitor config target's `subprotocols:`, the Locust user's
`--chatprobe-subprotocol`, a profile's `subprotocols:`), as a k6 user offers them with `new WebSocket(url,
protocols)`: a real `websockets` server on loopback that refuses every upgrade not offering `agent.v1` (its 400) and
plays netra runs to one that does, reached by both `chatprobe run` clients (picows, and websockets with compression
deflate), `chatprobe monitor` and the Locust user's gevent client. RFC 6455 4.1: a server that picks a subprotocol
nobody offered fails the connection (protocol_error, the same reason from every client); one that picks none of those
offered is accepted, as browsers accept it. A name that is no RFC 6455 token exits 2 with one line naming the flag,
or the file, line and field.

Every test here failed on the code before this file: chatprobe offered only the token's `jwt-auth` pair, had no
such flag, key or option, and the websockets clients called an unoffered subprotocol `NegotiationError`.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request

from harness.cli import main

from .hostile_ws import (
    WELCOME,
    chooses,
    frame,
    offered_deflate,
    raw,
    read_until_gone,
    run_frames,
    upgrade,
    welcome_and_message,
)

pytestmark = pytest.mark.timeout(150)

ROOT = Path(__file__).parents[2]
TOKEN = "subproto-T0ken-that-stays-home-7c1e"
# The two WebSocket clients of `chatprobe run`, as a scenario picks them: picows unless compression is on.
CLIENTS = {"picows": "none", "websockets": "deflate"}
REFUSED = "HTTP 400 at the WebSocket handshake"  # websockets' answer to an upgrade offering none it speaks
UNOFFERED = "WebSocket handshake failed: the server chose a subprotocol the client did not offer"


class AgentServer:
    """A `websockets` server speaking netra under the subprotocol `agent.v1` only (`required`; None: any offer,
    and it picks none): every upgrade's offered subprotocols are kept, in the order offered."""

    def __init__(self, required: str | None = "agent.v1") -> None:
        self.required = required
        self.offered: list[list[str]] = []
        self.chosen: list[str | None] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def _request(self, conn: ServerConnection, request: Request) -> None:
        headers: Headers = request.headers
        self.offered.append([p.strip() for h in headers.get_all("Sec-WebSocket-Protocol") for p in h.split(",")])

    async def _handler(self, ws: ServerConnection) -> None:
        self.chosen.append(ws.subprotocol)
        await ws.send(WELCOME.decode())
        message = json.loads(await ws.recv())
        for data in run_frames(message["payload"]["message_id"]):
            await ws.send(data.decode())
        async for _ in ws:  # until the client goes
            pass

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[AgentServer]:
        protocols = [self.required] if self.required else None
        async with serve(self._handler, "127.0.0.1", 0, subprotocols=protocols,  # type: ignore[list-item]
                         process_request=self._request) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            yield self


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("CHATPROBE_TOKEN", "CHATPROBE_JWT_SECRET")}
    return {**out, "NO_COLOR": "1", "PYTHONPATH": str(ROOT), **extra}


async def cli(*args: str, token: bool = False) -> tuple[int, str]:
    """`chatprobe ARGS` in a process of its own, bounded: (exit code, stdout + stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "harness", *args, env=env(**({"CHATPROBE_TOKEN": TOKEN} if token else {})),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)  # a hang fails here
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = stdout.decode() + stderr.decode()
    assert "Traceback" not in text and TOKEN not in text, text
    return proc.returncode or 0, text


def write_scenario(tmp_path: Path, compression: str = "none") -> Path:
    scenario = tmp_path / "one.yaml"
    scenario.write_text(f"name: one\ncompression: {compression}\nreconnect: false\nconnect_timeout: 20s\n"
                        "expect: {deadline: 20s, settle: 0.1s}\n")
    return scenario


async def run_one(tmp_path: Path, url: str, compression: str, *flags: str, token: bool = False,
                  ) -> tuple[int, dict, str]:
    """`chatprobe run` of one chat with --json and --record: (exit code, the chat, output); `chatprobe check` of the
    recording must give the same exit code (what --record wrote of the handshake judged as live)."""
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    out.mkdir()
    code, text = await cli("run", str(write_scenario(tmp_path, compression)), "--target", url, "-q",
                           "--json", str(out / "r.json"), "--record", str(out / "rec"), *flags, token=token)
    (scenario,) = json.loads((out / "r.json").read_text())["scenarios"]
    (chat,) = scenario["chats"]
    checked, check_text = await cli("check", str(out / "rec"), "--scenario", str(tmp_path / "one.yaml"), "-q")
    assert checked == code, (text, check_text)
    written = "".join(p.read_text(errors="replace") for p in sorted(out.rglob("*")) if p.is_file())
    assert TOKEN not in written
    return code, chat, text


# -- on the wire --

@pytest.mark.parametrize("client", CLIENTS)
async def test_run_offers_the_subprotocol_the_server_requires(tmp_path, client):
    """Without `--subprotocol agent.v1` the server refuses the upgrade (a protocol_error naming its 400); with it the
    chat passes, and the server chose it."""
    async with AgentServer().serving() as srv:
        code, chat, text = await run_one(tmp_path, srv.url, CLIENTS[client])
        assert (code, chat["outcome"], chat["error_kind"], chat["error"]) == (
            1, "error", "protocol_error", REFUSED), text
        code, chat, text = await run_one(tmp_path, srv.url, CLIENTS[client], "--subprotocol", "agent.v1")
    assert (code, chat["outcome"]) == (0, "passed"), text
    assert srv.offered == [[], ["agent.v1"]] and srv.chosen == ["agent.v1"], (srv.offered, srv.chosen)


@pytest.mark.parametrize("client", CLIENTS)
async def test_with_auth_subprotocol_the_users_names_come_first_then_the_tokens_pair(tmp_path, client):
    """`--subprotocol agent.v1 --subprotocol agent.v0 --auth subprotocol`: offered agent.v1, agent.v0, jwt-auth,
    jwt.<token> (the user's in their order of preference, then the token's pair as before); the token is in no
    output, report or recording."""
    async with AgentServer().serving() as srv:
        code, chat, text = await run_one(tmp_path, srv.url, CLIENTS[client], "--subprotocol", "agent.v1",
                                         "--subprotocol", "agent.v0", "--auth", "subprotocol", token=True)
    assert (code, chat["outcome"]) == (0, "passed"), text
    ((first, second, auth, jwt),) = srv.offered
    assert (first, second, auth) == ("agent.v1", "agent.v0", "jwt-auth") and jwt.startswith("jwt."), srv.offered
    assert srv.chosen == ["agent.v1"]


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_subprotocol_the_client_did_not_offer_fails_the_connection(tmp_path, client):
    """The user offered agent.v1; the server chose agent.v2: RFC 6455 4.1, the connection fails, a protocol_error
    saying why (the websockets client said `NegotiationError`), live and in `chatprobe check` alike."""
    async with raw(chooses(b"Sec-WebSocket-Protocol: agent.v2\r\n")) as srv:
        code, chat, text = await run_one(tmp_path, srv.url, CLIENTS[client], "--subprotocol", "agent.v1")
    assert b"agent.v1" in srv.requests[0]
    assert (code, chat["outcome"], chat["error_kind"], chat["error"]) == (1, "error", "protocol_error", UNOFFERED)


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_server_that_picks_none_of_those_offered_is_accepted(tmp_path, client):
    """As a browser does: a server speaking no subprotocol answers the upgrade without one, and the chat passes."""
    async with AgentServer(required=None).serving() as srv:
        code, chat, text = await run_one(tmp_path, srv.url, CLIENTS[client], "--subprotocol", "agent.v1")
    assert (code, chat["outcome"]) == (0, "passed"), text
    assert srv.offered == [["agent.v1"]] and srv.chosen == [None]


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_credential_carried_in_a_subprotocol_of_the_users_is_never_written(tmp_path, client):
    """Kubernetes takes its bearer token as the subprotocol `base64url.bearer.authorization.k8s.io.<token>`, which only
    `--subprotocol` can offer. A server that echoes what it was offered (an error frame quoting the upgrade) had the
    token written to the recording as it came: the credential-like part of a name of the user's is a secret, as the
    proxy and a HAR's offered subprotocols are read, and no report, recording or terminal line shows it."""
    encoded = base64.urlsafe_b64encode(TOKEN.encode()).decode().rstrip("=")

    async def quotes_the_offer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, srv: object,
                               ) -> None:
        offered = re.search(rb"(?im)^sec-websocket-protocol:[ \t]*([^\r\n]*)", head)
        writer.write(upgrade(head, offered_deflate(head)))
        await welcome_and_message(reader, writer)
        writer.write(frame(1, json.dumps({
            "type": "agent_error", "run_id": "r1", "seq": 1, "error_code": "forbidden",
            "error_message": f"not allowed: {offered.group(1).decode() if offered else ''}"}).encode()))
        await read_until_gone(reader)

    async with raw(quotes_the_offer) as srv:
        out = tmp_path / "out"
        code, text = await cli("run", str(write_scenario(tmp_path, CLIENTS[client])), "--target", srv.url,
                               "--subprotocol", f"base64url.bearer.authorization.k8s.io.{encoded}",
                               "--json", str(out / "r.json"), "--html", str(out / "r.html"), "--record",
                               str(out / "rec"))
    assert encoded.encode() in srv.requests[0]  # offered, and echoed
    assert code == 1 and encoded not in text, text
    written = [p for p in sorted(out.rglob("*")) if p.is_file()]
    assert len(written) >= 3 and "not allowed: [REDACTED]" in "".join(
        p.read_text() for p in written if p.suffix == ".jsonl")  # the echo, recorded with its token scrubbed
    for p in written:
        assert encoded not in p.read_text(errors="replace"), p


async def test_a_profiles_subprotocols_are_offered_and_the_flag_replaces_them(tmp_path):
    """A profile of one's own names the subprotocol its dialect needs (`subprotocols: [agent.v1]`): offered without a
    flag; `--subprotocol agent.v0` replaces it (the server, which wants agent.v1, refuses that)."""
    profile = tmp_path / "acme.yaml"
    netra = (ROOT / "harness" / "profiles" / "netra.yaml").read_text()
    profile.write_text(netra.replace("name: netra\n", "name: acme\ndialect: netra\n", 1) + "subprotocols: [agent.v1]\n")
    async with AgentServer().serving() as srv:
        code, chat, text = await run_one(tmp_path, srv.url, "none", "--profile", str(profile))
        assert (code, chat["outcome"]) == (0, "passed"), text
        code, chat, text = await run_one(tmp_path, srv.url, "none", "--profile", str(profile),
                                         "--subprotocol", "agent.v0")
    assert (code, chat["error"]) == (1, REFUSED), text
    assert srv.offered == [["agent.v1"], ["agent.v0"]]


def test_a_profiles_bad_subprotocol_names_the_file_line_and_field(tmp_path, capsys):
    profile = tmp_path / "acme.yaml"
    netra = (ROOT / "harness" / "profiles" / "netra.yaml").read_text()
    profile.write_text(netra.replace("name: netra\n", "name: acme\n", 1) + "subprotocols: [agent.v1, 'agent v2']\n")
    line = profile.read_text().count("\n")
    assert main(["run", "basic", "--target", "ws://127.0.0.1:9/ws", "--profile", str(profile)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"{profile}:{line}: field 'subprotocols'" in err and "not a subprotocol name" in err, err


# -- the monitor --

async def test_a_monitor_config_targets_subprotocols_are_offered(tmp_path):
    """`subprotocols: [agent.v1]` under a target of `--config`: its probe passes; the same target without it fails."""
    write_scenario(tmp_path)
    async with AgentServer().serving() as srv:
        for key, expected in (("    subprotocols: [agent.v1]\n", 0), ("", 1)):
            config = tmp_path / "monitor.yaml"
            config.write_text(f"targets:\n  agent:\n    url: {srv.url}\n{key}scenarios: [one.yaml]\n")
            code, text = await cli("monitor", "--config", str(config), "--once")
            assert code == expected, text
    assert srv.offered == [["agent.v1"], []]


async def test_monitor_with_target_takes_the_flag(tmp_path):
    async with AgentServer().serving() as srv:
        code, text = await cli("monitor", "--once", "--target", srv.url, "--scenario",
                               str(write_scenario(tmp_path)), "--subprotocol", "agent.v1")
    assert code == 0, text
    assert srv.offered == [["agent.v1"]]


@pytest.mark.parametrize("items, line, said", [
    ("[agent.v1, 'agent v2']", 5, "field 'targets.gw.subprotocols': 'agent v2': not a subprotocol name"),
    ("\n      - agent.v1\n      - 'a,b'", 7, "field 'targets.gw.subprotocols': 'a,b': not a subprotocol name"),
    ("[agent.v1, agent.v1]", 5, "field 'targets.gw.subprotocols': 'agent.v1': given twice"),
    ("['jwt.abc']", 5, "field 'targets.gw.subprotocols': 'jwt.abc': the token's subprotocols"),
])
def test_a_monitor_configs_bad_subprotocol_names_the_file_line_and_field(tmp_path, capsys, items, line, said):
    config = tmp_path / "monitor.yaml"
    config.write_text(f"targets:\n  gw:\n    url: ws://127.0.0.1:9/ws\n    insecure: false\n    subprotocols: {items}\n")
    from monitors.monitor import main as monitor_main

    assert monitor_main(["--config", str(config), "--once"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"{config}:{line}: {said}" in err, err


def test_the_flag_beside_a_monitor_config_is_refused_not_dropped(tmp_path, capsys):
    config = tmp_path / "monitor.yaml"
    config.write_text("targets:\n  gw:\n    url: ws://127.0.0.1:9/ws\n")
    from monitors.monitor import main as monitor_main

    assert monitor_main(["--config", str(config), "--once", "--subprotocol", "agent.v1"]) == 2
    err = capsys.readouterr().err
    assert "--subprotocol applies to --target; with --config give each target's subprotocols in the file" in err, err


# -- usage errors --

BAD = {
    "a space": (["--subprotocol", "agent v1"], "--subprotocol 'agent v1': not a subprotocol name"),
    "a comma list": (["--subprotocol", "agent.v1,agent.v2"], "--subprotocol 'agent.v1,agent.v2': not a subprotocol"),
    "a separator": (["--subprotocol", "agent/v1"], "--subprotocol 'agent/v1': not a subprotocol name"),
    "a line break": (["--subprotocol", "a\r\nX-Admin: yes"], "not a subprotocol name"),
    "not ASCII": (["--subprotocol", "agént"], "not a subprotocol name"),
    "empty": (["--subprotocol", ""], "--subprotocol '': an empty name"),
    "too long": (["--subprotocol", "a" * 129], "a subprotocol name of 129 characters (at most 128)"),
    "given twice": (["--subprotocol", "agent.v1", "--subprotocol", "agent.v1"], "'agent.v1': given twice"),
    "too many": ([x for n in range(17) for x in ("--subprotocol", f"p{n}")], "more than 16 subprotocols"),
    "the token's own": (["--subprotocol", "jwt-auth"], "offered by --auth subprotocol"),
    "a token pasted": (["--subprotocol", "jwt.eyJhbGciOi"], "offered by --auth subprotocol"),
    "an SSE target": (["--target", "http://127.0.0.1:9/agent", "--profile", "ag-ui", "--subprotocol", "agent.v1"],
                      "--subprotocol is for WebSocket targets (ws://, wss://): http:// is SSE"),
    "the header": (["--header", "Sec-WebSocket-Protocol: agent.v1"],
                   "chatprobe sends this header itself on a websocket connection; offer a subprotocol with "
                   "--subprotocol NAME"),
}


@pytest.mark.parametrize("flags, needle", BAD.values(), ids=BAD.keys())
def test_a_bad_subprotocol_is_a_usage_error_in_one_line(capsys, flags, needle):
    assert main(["run", "basic", "--target", "ws://127.0.0.1:9/ws", *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err, err


def test_the_locust_user_names_its_own_flag():
    """A bad `--chatprobe-subprotocol` ends Locust with exit 2 and one line naming that flag."""
    import subprocess

    locust = Path(sys.executable).parent / "locust"
    proc = subprocess.run([str(locust), "-f", str(ROOT / "scenarios" / "locustfile.py"), "--headless", "-u", "1",
                           "-r", "1", "--run-time", "2s", "--host", "ws://127.0.0.1:9/ws",
                           "--chatprobe-subprotocol", "agent v1"], capture_output=True, text=True, timeout=120,
                          env=env())
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "chatprobe: error: --chatprobe-subprotocol 'agent v1': not a subprotocol name" in proc.stderr, \
        proc.stderr[-2000:]


# -- the Locust user's gevent client --

# One chat as harness/locust_user.py plays it under Locust (gevent's monkey-patching first, the target from its
# --chatprobe-* options through _Run.load); prints the verdict as one JSON line.
CHAT = """
import sys
from gevent import monkey
monkey.patch_all()
import json
from types import SimpleNamespace
from harness.gevent_client import SyncSession
from harness.locust_user import _Run
from harness.sinks import Sink
options = SimpleNamespace(chatprobe_scenario=sys.argv[1], chatprobe_target_name=None, chatprobe_profile=None,
                          chatprobe_auth=sys.argv[3], chatprobe_ca_file=None, chatprobe_header=None,
                          chatprobe_header_env=None, chatprobe_subprotocol=sys.argv[4:] or None)
run = _Run(SimpleNamespace(parsed_options=options, host=sys.argv[2]))
run.load()
scenario, target = run.scenario, run.target
session = SyncSession(target, "u1", scenario.name, Sink(), connect_timeout=scenario.connect_timeout)
call = scenario.user_script(target.profile).chat()
try:
    result = session.chat(call.content, call.expectations, call.options)
finally:
    session.close()
print(json.dumps(result.to_dict()))
"""


async def locust_chat(tmp_path: Path, url: str, compression: str, *names: str, auth: str = "header") -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHAT, str(write_scenario(tmp_path, compression)), url, auth, *names,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env(CHATPROBE_TOKEN=TOKEN),
        start_new_session=True)
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)  # a hang fails here
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    text = stdout.decode() + stderr.decode()
    assert proc.returncode == 0 and "Traceback" not in text and TOKEN not in text, text
    return json.loads(stdout.decode().strip().splitlines()[-1])


@pytest.mark.parametrize("compression", ["none", "deflate"])
async def test_the_locust_users_client_offers_the_subprotocols(tmp_path, compression):
    async with AgentServer().serving() as srv:
        refused = await locust_chat(tmp_path, srv.url, compression)
        passed = await locust_chat(tmp_path, srv.url, compression, "agent.v1", auth="subprotocol")
    assert (refused["error_kind"], refused["error"]) == ("protocol_error", REFUSED), refused
    assert passed["outcome"] == "passed", passed
    assert srv.offered[1][:2] == ["agent.v1", "jwt-auth"] and srv.chosen == ["agent.v1"], srv.offered


async def test_the_locust_users_client_fails_a_subprotocol_it_did_not_offer(tmp_path):
    async with raw(chooses(b"Sec-WebSocket-Protocol: agent.v2\r\n")) as srv:
        chat = await locust_chat(tmp_path, srv.url, "none", "agent.v1")
    assert (chat["outcome"], chat["error_kind"], chat["error"]) == ("error", "protocol_error", UNOFFERED), chat
