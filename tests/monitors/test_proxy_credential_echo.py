"""`chatprobe proxy --record`: an upstream that echoes one user's credentials on another user's connection (in a frame,
a close reason, a handshake header) never gets them into a recording, the proxy's log or its metrics. A real proxy
process in front of a raw RFC 6455 server on loopback, two users: one with an opaque bearer token, one with a JWT.

FAILED on the code before: each connection's recording was scrubbed of the registered secrets and of that connection's
own user's credentials only; the other user's opaque token (and the JWT's signature, which no shape rule catches on
its own) stood in clear in the recording.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import html
import json
import re
import secrets
import struct
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from harness import redact
from harness.events import Outcome
from harness.offline import check_files
from harness.profiles import load_profile
from tests.integration.outside_servers import GUID, WsConn

from .procs import agentsim_process, proxy_process

pytestmark = pytest.mark.timeout(60)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_for(user: str) -> str:
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps({"sub": user}).encode())
    sig = b64url(hmac.new(secrets.token_bytes(32), f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


class EchoesTheOtherUser:
    """A netra server that knows each connection's bearer credential (its handshake) and, once two users are
    connected, tells each the other's: in the 101's headers (the second one), in a partial result (whole, the JWT's
    signature alone, a run of 17 characters of it) and in the close frame's reason. The second user's credential is
    told to the first user before the second's handshake is answered: the first connection's whole chat, to its
    closing handshake, while the proxy still waits for the second's 101 (the proxy must hold a user's credentials
    from before it sends them upstream, not from when the upstream accepted them)."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.conns: list[WsConn] = []
        self.both = asyncio.Event()
        self.first_done = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def other(self, me: int) -> str:
        return self.tokens[1 - me]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(20):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
            me = len(self.tokens)
            self.tokens.append(headers["authorization"].partition(" ")[2])
            if me == 1:
                self.both.set()
                await self.first_done.wait()
            accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest()).decode()
            echo = "".join(f"X-Echo: {t}\r\nSet-Cookie: seen={t}\r\n" for t in self.tokens[:me])
            writer.write((f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Accept: {accept}\r\n{echo}\r\n").encode())
            conn = WsConn(reader, writer, head[0].split(" ")[1])
            self.conns.append(conn)
            await conn.send({"type": "connection_established", "data": {"connection_id": f"c{me}", "user_id": f"u{me}"}})
            raw = await conn.recv()
            assert raw is not None
            p = json.loads(raw)["payload"]
            await self.both.wait()
            other = self.other(me)
            sig = other.rsplit(".", 1)[-1]
            run = {"run_id": f"run-{me}", "thread_id": p["thread_id"], "user_id": f"u{me}"}
            frames = [("agent_started", {"message_id": p["message_id"]}), ("agent_thinking", {"thought": "t"}),
                      ("partial_result", {"content": f"the other user's credential: {other}; its tail alone: {sig}; "
                                                     f"a piece: {sig[5:22]}"}),
                      ("agent_completed", {"result": f"Bearer {other}"})]
            for seq, (kind, fields) in enumerate(frames, 1):
                await conn.send({"type": kind, **run, "seq": seq, "payload": fields})
            # The close frame's reason (at most 123 bytes) holds the other user's credential.
            reason = f"bye, {other}".encode()[:123]
            async with conn.lock:
                await conn._frame(0x8, struct.pack("!H", 4000) + reason)
                await writer.drain()
            conn.closed = True
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await reader.read()
            writer.close()
            self.first_done.set()  # (the proxy closed its side: the first connection's frames are behind it)


async def chat(port: int, token: str, tag: str, connected: asyncio.Event | None = None) -> list[str]:
    """One user's chat through the proxy: what it received, to its end (the close reason last)."""
    got: list[str] = []
    async with connect(f"ws://127.0.0.1:{port}/ws", additional_headers={"Authorization": f"Bearer {token}"},
                       open_timeout=10, close_timeout=2) as ws:
        got.append(str(await ws.recv()))
        if connected is not None:
            connected.set()
        await ws.send(json.dumps({"type": "user_message", "payload": {"content": "hi", "thread_id": f"t-{tag}",
                                                                       "message_id": f"m-{tag}"}}))
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                got.append(str(message))
        got.append(ws.close_reason or "")
    return got


async def test_a_credential_the_upstream_echoes_to_another_user_is_in_no_recording_log_or_metric(tmp_path):
    opaque = secrets.token_urlsafe(32)
    jwt = jwt_for("bob")
    server = EchoesTheOtherUser()
    upstream = await server.start()
    rec = tmp_path / "rec"
    try:
        async with proxy_process(upstream, tmp_path, "--record", str(rec), "--record-all", "-v",
                                 metrics=True) as proxy:
            async with asyncio.timeout(30):
                first = asyncio.Event()
                ana = asyncio.ensure_future(chat(proxy.port, opaque, "ana", first))
                await first.wait()  # ana's credentials are the server's first
                bob_got = await chat(proxy.port, jwt, "bob")
                ana_got = await ana
                metrics = await proxy.scrape()
            assert metrics is not None
            async with asyncio.timeout(10):
                reader, writer = await asyncio.open_connection("127.0.0.1", proxy.metrics_port)
                writer.write(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                exposition = (await reader.read()).decode()
                writer.close()
    finally:
        assert server.server is not None
        server.server.close()
    # The server did echo each one's credential to the other (the users' clients got them: a passive proxy forwards).
    assert opaque in "".join(bob_got) and bob_got[-1] == f"bye, {opaque}"
    assert jwt.rsplit(".", 1)[-1] in "".join(ana_got) and ana_got[-1] == f"bye, {jwt}"[:123]
    files = sorted(p for p in rec.iterdir() if p.is_file())
    assert len(files) == 2, files
    recorded = "\n".join(p.read_text() for p in files)
    assert recorded.count('"dir": "recv"') >= 10 and "[REDACTED]" in recorded
    outputs = {"recordings": recorded, "log": Path(proxy.err).read_text(), "metrics": exposition}
    sig = jwt.rsplit(".", 1)[-1]
    for name, text in outputs.items():
        for what, secret in {"opaque token": opaque, "its run": opaque[5:22], "JWT": jwt, "JWT signature": sig,
                             "signature run": sig[5:22]}.items():
            assert secret not in text, f"{what} in the {name}"


# A hostile user's "credentials": the netra event types, in one cookie value that mixes cases (X), in another with
# spaces, and a words-only one, each long enough to be held.
POISON = {"Cookie": "sid=Xagent_completed_agent_started_partial_result_tool_executing_tool_completed; "
                    "b=agent_completed agent_started partial_result Xy1; w=zagent_completedzagent_thinking"}


async def test_a_users_credentials_chosen_as_event_text_redact_nothing_from_another_users_recording(tmp_path):
    """A hostile user connects with a cookie that spells the protocol's event types and stays connected; another
    user chats. The pool of every user's credentials scrubs every recording, so the victim's recorded
    `{"type": "agent_completed"}` became `{"type": "[REDACTED]"}`: `check` of the recording failed (R12) a chat the
    victim's client got whole. Only what reads as a token is held now, and only a run of it that does is redacted
    from another user's text: the victim's recording holds every event as it came, and `check` passes the chat.

    FAILED on the code before: the victim's recording had `[REDACTED]` types and check judged the chat failed."""
    rec = tmp_path / "rec"
    async with agentsim_process() as sim, proxy_process(sim, tmp_path, "--record", str(rec), "--record-all") as p:
        async with asyncio.timeout(30):
            async with connect(f"ws://127.0.0.1:{p.port}/ws?user=mallory", additional_headers=POISON,
                               open_timeout=10, close_timeout=2) as hostile:
                assert json.loads(await hostile.recv())["type"] == "connection_established"  # held from here
                got = []
                async with connect(f"ws://127.0.0.1:{p.port}/ws?user=ana", open_timeout=10, close_timeout=2) as ws:
                    await ws.recv()
                    await ws.send(json.dumps({"type": "user_message", "payload": {
                        "content": "hi", "thread_id": "t-ana", "message_id": "m-ana"}}))
                    async for message in ws:
                        got.append(json.loads(message)["type"])
                        if got[-1] in ("agent_completed", "error"):
                            break
    assert got[-1] == "agent_completed", got
    frames = [json.loads(line) for f in rec.glob("*.jsonl") for line in f.read_text().splitlines()]
    received = [json.loads(r["frame"])["type"] for r in frames
                if r.get("dir") == "recv" and "ana" in r["frame"] and "connection_established" not in r["frame"]]
    assert received == got and not any("[REDACTED]" in r.get("frame", "") for r in frames), received
    (run,) = check_files([rec], load_profile("netra"))
    assert [(r.outcome, [v.rule for v in r.violations]) for r in run.results] == [(Outcome.PASSED, [])]


POOL = 1024 * 1024  # the child's pool bound (16 MiB by default): what a hostile client must push out, made small


async def test_a_client_of_many_made_up_credentials_cannot_push_another_users_out_of_the_pool(tmp_path):
    """A hostile client (another address: 127.0.0.2) opens connection after connection, each with a made-up token,
    until its tokens outweigh the pool; user ana's connection is open meanwhile. Then the upstream echoes ana's token
    on bob's connection. The pool forgot the least recently seen first, ana's among them, so bob's recording had ana's
    token in clear. One client address holds at most its share of the connections of the pool now: the hostile
    client's own oldest tokens are forgotten, ana's is not, and bob's recording holds none of it.

    FAILED on the code before: ana's token stood in bob's recording."""
    tokens: dict[str, str] = {}

    async def upstream_handler(ws) -> None:
        user = ws.request.path.partition("user=")[2]
        tokens[user] = ws.request.headers["Authorization"].partition(" ")[2]
        await ws.send(json.dumps({"type": "connection_established", "data": {"connection_id": user}}))
        if user == "bob":
            await ws.send(json.dumps({"type": "partial_result", "run_id": "r-1", "seq": 1,
                                      "payload": {"content": f"ana's token: {tokens['ana']}."}}))
        with contextlib.suppress(ConnectionClosed):
            await ws.wait_closed()

    upstream = await serve(upstream_handler, "127.0.0.1", 0)
    rec = tmp_path / "rec"
    ana_token = secrets.token_urlsafe(32)
    made_up = [secrets.token_urlsafe(150) for _ in range(60)]  # 200 characters: ~30 KB of the pool each
    assert 60 * redact._seen_cost(made_up[0]) > POOL
    try:
        async with proxy_process(f"ws://127.0.0.1:{upstream.sockets[0].getsockname()[1]}", tmp_path, "--record",
                                 str(rec), "--record-all", "--max-connections", "1000",
                                 "--max-connections-per-ip", "100",
                                 pool_bytes=POOL) as proxy:
            url = f"ws://127.0.0.1:{proxy.port}/ws?user="
            async with asyncio.timeout(30), contextlib.AsyncExitStack() as stack:
                ana = await stack.enter_async_context(connect(
                    url + "ana", additional_headers={"Authorization": f"Bearer {ana_token}"}, open_timeout=10))
                await ana.recv()
                for n, token in enumerate(made_up):
                    ws = await stack.enter_async_context(connect(
                        url + f"m{n}", additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10,
                        local_addr=("127.0.0.2", 0)))
                    await ws.recv()
                async with connect(url + "bob", additional_headers={"Authorization": f"Bearer {secrets.token_urlsafe(32)}"},
                                   open_timeout=10) as bob:
                    await bob.recv()
                    assert ana_token in str(await bob.recv())  # the upstream echoed it: the client got it
    finally:
        upstream.close()
    recorded = "\n".join(p.read_text() for p in rec.iterdir() if p.is_file())
    assert "ana's token: [REDACTED]." in recorded
    assert not any(ana_token[i:i + 15] in recorded for i in range(len(ana_token) - 14))


def encoded(secret: str) -> list[str]:
    """A credential as an upstream may echo it by accident or on purpose: upper or lower case, the hex of its bytes,
    HTML numeric character references (decimal and hex)."""
    return [secret.upper(), secret.lower(), secret.encode().hex(), secret.encode().hex().upper(),
            "".join(f"&#{ord(c)};" for c in secret), "".join(f"&#x{ord(c):x};" for c in secret)]


async def test_a_users_own_credentials_echoed_in_another_case_in_hex_or_as_html_references_are_in_no_recording(
        tmp_path):
    """A user's bearer token, its `?access_token=` and its session cookie, echoed by the upstream upper-cased, as hex,
    as HTML references, in the welcome frame, an event and the close reason: the proxy's recording of that connection
    (and its log) shows none of them. FAILED before: a connection's own credentials were matched as they were sent
    (and escaped, encoded), case and all: the upper-cased token and its hex stood in the recording."""
    token, query, cookie = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    own = [token, query, cookie]

    async def handler(ws):
        every = " | ".join(f for s in own for f in encoded(s))
        await ws.send(json.dumps({"type": "connection_established", "data": {"connection_id": every}}))
        p = json.loads(await ws.recv())["payload"]
        run = {"run_id": "run-1", "thread_id": p["thread_id"]}
        await ws.send(json.dumps({"type": "agent_started", **run, "seq": 1, "payload": {"message_id": p["message_id"]}}))
        await ws.send(json.dumps({"type": "agent_thinking", **run, "seq": 2, "payload": {"thought": every}}))
        await ws.close(4000, f"{token.upper()} {cookie.encode().hex()}"[:123])

    rec = tmp_path / "rec"
    async with serve(handler, "127.0.0.1", 0, compression=None) as upstream:
        port = upstream.sockets[0].getsockname()[1]
        async with proxy_process(f"ws://127.0.0.1:{port}", tmp_path, "--record", str(rec), "--record-all",
                                 "-v") as proxy, asyncio.timeout(30):
            got: list[str] = []
            async with connect(f"ws://127.0.0.1:{proxy.port}/ws?access_token={query}", open_timeout=10,
                               close_timeout=2, additional_headers={"Authorization": f"Bearer {token}",
                                                                    "Cookie": f"sid={cookie}; theme=dark"}) as ws:
                got.append(str(await ws.recv()))
                await ws.send(json.dumps({"type": "user_message", "payload": {
                    "content": "hi", "thread_id": "t1", "message_id": "m1"}}))
                with contextlib.suppress(ConnectionClosed):
                    async for message in ws:
                        got.append(str(message))
                got.append(ws.close_reason or "")
    assert token.upper() in "".join(got)  # the upstream did echo them (a passive proxy forwards)
    files = sorted(p for p in rec.iterdir() if p.is_file())
    assert files
    recorded = "\n".join(p.read_text() for p in files)
    assert "[REDACTED]" in recorded
    for name, text in {"recording": recorded, "log": Path(proxy.err).read_text()}.items():
        shown = html.unescape(text).lower()
        shown += "\n".join(bytes.fromhex(run[: len(run) // 2 * 2]).decode("latin-1").lower()
                           for run in re.findall(r"[0-9a-fA-F]{16,}", shown))
        for secret in own:
            runs = [secret[i:i + 8].lower() for i in range(len(secret) - 7)]
            assert not [r for r in runs if r in shown], f"the {name} shows part of a credential"
