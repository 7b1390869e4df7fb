"""`chatprobe proxy --record`: a client's own credential that reads as words (all lower case, all upper case, digits
only; lower-case hex beside them, which mixes and is pooled too), of any length a header carries, echoed back by
the upstream in its frames, is never in that connection's recording nor in the proxy's log, whole or in part.

A raw websockets upstream on loopback echoes the Authorization header's token (or the `jwt.` subprotocol's) into
frames (as sent, upper-cased, in a URL, every character \\u-escaped) and its close reason; the proxy in-process.
Such a credential is not in the process's pool of users' credentials (redact.SeenCredentials holds only those that
mix two character classes): its own connection's matchers (redact.secrets_of, MIN_RUN_WORDS) are all that scrub it.
Lengths up to and past the bound on a recorded connection's credentials (MAX_RECORDED_CREDENTIALS: 4,092 characters
after `Bearer ` are recorded, 4,093 are not).
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import string
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from harness.checker import Expectations
from harness.events import DEFAULT_REQUIRED
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.redact import credentials_of
from monitors.frontdoor import MAX_RECORDED_CREDENTIALS
from monitors.metrics import ChatMetrics, MetricsSink
from monitors.proxy import LiveChats, Proxy, start_proxy

pytestmark = pytest.mark.timeout(120)

EXP = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=10.0)
ALPHABETS = {"lower": string.ascii_lowercase, "lowerhex": "0123456789abcdef", "upper": string.ascii_uppercase,
             "digits": string.digits}
LENGTHS = (32, 64, 1000, 4092, 4093)


async def _upstream(conn: ServerConnection) -> None:
    """Tells the client its own credential back: the Authorization header's token, or the `jwt.` subprotocol's."""
    auth = conn.request.headers.get("Authorization", "") if conn.request is not None else ""
    token = auth.partition(" ")[2] or (conn.subprotocol or "")[4:]
    await conn.send(json.dumps({"type": "connection_established", "data": {"connection_id": "c", "user_id": "u"}}))
    raw = json.loads(await conn.recv())["payload"]
    run = {"run_id": "r", "thread_id": raw["thread_id"], "user_id": "u"}
    frames = [("agent_started", {"message_id": raw["message_id"]}),
              ("partial_result", {"content": f"your token: {token} (its head: {token[:40]})"}),
              ("partial_result", {"content": f"shouted: {token.upper()}, whispered: {token.lower()}"}),
              ("partial_result", {"content": f"https://example.test/cb?access={token}&x=1"}),
              ("agent_completed", {"result": token})]
    for seq, (kind, payload) in enumerate(frames, 1):
        await conn.send(json.dumps({"type": kind, **run, "seq": seq, "payload": payload}))
    # the same token with every character \u-escaped (a JSON encoder escaping all it writes)
    escaped = "".join(f"\\u{ord(c):04x}" for c in token)
    await conn.send('{"type": "partial_result", "run_id": "r", "thread_id": "t", "user_id": "u", "seq": 9, '
                    '"payload": {"content": "' + escaped + '"}}')
    await conn.close(4000, f"bye {token[:100]}")


async def _chat(port: int, token: str, subprotocol: bool) -> None:
    kwargs: dict = ({"subprotocols": [f"jwt.{token}"]} if subprotocol
                    else {"additional_headers": {"Authorization": f"Bearer {token}"}})
    async with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10, close_timeout=2, max_size=None,
                       **kwargs) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "user_message", "payload": {"content": "hi", "thread_id": "t",
                                                                       "message_id": "m"}}))
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass


def _decoded(directory: Path) -> str:
    """Every recorded record, and each recorded frame with its JSON escapes decoded, lowered."""
    out = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            out.append(line)
            frame = json.loads(line).get("frame")
            if isinstance(frame, str):
                try:
                    out.append(json.dumps(json.loads(frame), ensure_ascii=False))
                except ValueError:
                    pass
    return "\n".join(out).lower()


@pytest.mark.parametrize("subprotocol", [False, True], ids=["authorization", "subprotocol"])
async def test_a_credential_that_reads_as_words_is_never_in_its_own_recording_or_log(tmp_path: Path, caplog,
                                                                                      subprotocol: bool) -> None:
    caplog.set_level(logging.DEBUG)
    rnd = random.Random(25)
    tokens = {(name, n): "".join(rnd.choice(ALPHABETS[name]) for _ in range(n)) for name in ALPHABETS for n in LENGTHS}
    upstream = await serve(_upstream, "127.0.0.1", 0,
                           select_subprotocol=lambda conn, offered: offered[0] if offered else None)
    live = LiveChats(load_profile("netra"), MetricsSink(ChatMetrics(CollectorRegistry()), "up", "live"), EXP, "live",
                     0.05, Recorder(tmp_path / "rec", keep_all=True))
    port_up = upstream.sockets[0].getsockname()[1]
    server = await start_proxy(Proxy(f"ws://127.0.0.1:{port_up}", live), "127.0.0.1", 0)
    try:
        async with asyncio.timeout(90):
            for token in tokens.values():
                await _chat(server.sockets[0].getsockname()[1], token, subprotocol)
            while live.open:  # the proxy is done with the connections: their recordings saved
                await asyncio.sleep(0.02)  # wait-ok: poll interval of a condition wait bounded by the timeout
    finally:
        server.close()
        upstream.close()
        await upstream.wait_closed()
    recorded = _decoded(tmp_path / "rec")
    # Every connection recorded but those whose credentials pass MAX_RECORDED_CREDENTIALS (`Bearer ` and 4,093
    # characters: 8,193 with the token alone; `jwt.` and 4,093: 8,190), which are forwarded and not recorded at all.
    conns = {json.loads(line)["conn"] for path in (tmp_path / "rec").glob("*.jsonl")
             for line in path.read_text().splitlines()}
    within = [t for t in tokens.values()
              if sum(map(len, credentials_of(
                  [] if subprotocol else [("Authorization", f"Bearer {t}")], [f"jwt.{t}"] if subprotocol else [])))
              <= MAX_RECORDED_CREDENTIALS]
    assert len(conns) == len(within) == len(tokens) - (0 if subprotocol else len(ALPHABETS)), (len(conns), len(within))
    # the proxy's own lines (the test's client and upstream log their frames too)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("chatprobe")).lower()
    shown: dict[str, list[tuple[str, int]]] = {}
    for key, token in tokens.items():
        low = token.lower()
        for where, text in (("recording", recorded), ("log", logged)):
            # not whole, and no 40 characters of it in a row anywhere, in any case, its escapes decoded
            run = min(40, len(low))
            if any(low[i:i + run] in text for i in range(0, len(low) - run + 1)):
                shown.setdefault(where, []).append(key)
    assert not shown, shown


async def test_a_credential_past_the_recorded_bound_told_to_another_user_is_not_shown_whole(tmp_path: Path) -> None:
    """A user whose credentials pass MAX_RECORDED_CREDENTIALS (a random token of 4,093 characters after `Bearer `) is
    not recorded; an upstream that tells that token to another, recorded user does not get it into that recording
    whole: its head is held in the process's pool (PAST_BOUND_HEAD), at most its tail stands. FAILED on the code before:
    such a connection's credentials were not held at all, and the whole token stood in the other user's recording."""
    from monitors.proxy import PAST_BOUND_HEAD
    told: list[str] = []

    async def tells_the_first_token(conn: ServerConnection) -> None:
        assert conn.request is not None
        told.append(conn.request.headers["Authorization"].partition(" ")[2])
        try:
            async for message in conn:
                await conn.send(json.dumps({"type": "ping", "said": str(message), "first": told[0]}))
        except ConnectionClosed:
            pass

    rnd = random.Random(93)
    over = "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(4093))
    usual = "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(40))
    upstream = await serve(tells_the_first_token, "127.0.0.1", 0, max_size=None)
    live = LiveChats(load_profile("netra"), MetricsSink(ChatMetrics(CollectorRegistry()), "up", "live"), EXP, "live",
                     0.05, Recorder(tmp_path / "rec", keep_all=True))
    server = await start_proxy(Proxy(f"ws://127.0.0.1:{upstream.sockets[0].getsockname()[1]}", live), "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
    try:
        async with asyncio.timeout(30):
            async with connect(url, additional_headers={"Authorization": f"Bearer {over}"}, max_size=None,
                               open_timeout=10, close_timeout=2):
                async with connect(url, additional_headers={"Authorization": f"Bearer {usual}"}, max_size=None,
                                   open_timeout=10, close_timeout=2) as user:
                    await user.send(json.dumps({"type": "ping", "who": "usual"}))
                    assert json.loads(await user.recv())["first"] == over  # forwarded as it came
            while live.open:  # the proxy is done with the connections: their recordings saved
                await asyncio.sleep(0.02)  # wait-ok: poll interval of a condition wait bounded by the timeout
    finally:
        server.close()
        upstream.close()
        await upstream.wait_closed()
    recorded = _decoded(tmp_path / "rec")
    assert "usual" in recorded, recorded[:300]  # the usual user's connection, recorded
    assert over.lower() not in recorded, "a token past the bound stood whole in another user's recording"
    head = over[:PAST_BOUND_HEAD].lower()
    assert not any(head[i:i + 40] in recorded for i in range(0, len(head) - 39)), "its head stood in clear"
