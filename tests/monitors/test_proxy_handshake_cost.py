"""What one request's head may cost the proxy's event loop, both sides, over real sockets: the credentials a hostile
client packs into its 64 KiB of head (a thousand `jwt.` subprotocols, a query of a thousand tokens) are each looked
at, but not each decoded as a JWT. Measured as Python calls into PyJWT (the same count on any machine, however
loaded), not with a clock."""
from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import sys

from prometheus_client import CollectorRegistry
from websockets.utils import accept_key

from harness.profiles import load_profile
from harness.scenario import Expect, expectations_for
from monitors.frontdoor import credentials_identity
from monitors.metrics import ChatMetrics, MetricsSink
from monitors.proxy import LiveChats
from monitors.sse_proxy import SSEProxy, start_sse_proxy

from .test_proxy_security import in_process_proxy, upgrade_request

HEAD = 60 * 1024  # under the proxy's 64 KiB bound on a request's head: the request is taken
FEW = 8  # JWTs a client's own credentials hold: its Authorization, a subprotocol, a query token or two
LINE = 8000  # under websockets' 8 KiB bound on a line of the upgrade request


def _b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).rstrip(b"=").decode()


def jwt_of(n: int) -> str:
    """A distinct (unsigned) JWT naming a user: what the proxy reads a user from."""
    return f"{_b64({'alg': 'HS256'})}.{_b64({'sub': f'u{n}'})}.c2ln"


def jwts(prefix: str, sep: str, budget: int) -> str:
    """As many distinct JWTs, each after `prefix`, joined by `sep`, as fit in `budget` characters."""
    out, n, size = [], 0, 0
    while size + len(prefix) + len(jwt_of(n)) + len(sep) < budget:
        out.append(f"{prefix}{jwt_of(n)}")
        size += len(out[-1]) + len(sep)
        n += 1
    return sep.join(out)


class JwtDecodes:
    """A profile hook counting PyJWT's decodes while it is set."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    def __call__(self, frame, event, arg) -> None:
        if event == "call" and frame.f_code.co_name == "decode" and frame.f_code.co_filename.endswith("api_jwt.py"):
            self.calls["decode"] += 1

    @contextlib.contextmanager
    def counting(self):
        previous = sys.getprofile()
        sys.setprofile(self)
        try:
            yield self
        finally:
            sys.setprofile(previous)


async def _accepting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A WebSocket upstream that takes an upgrade of any size (websockets' own refuses a line over 8 KiB, and the
    proxy offers the client's subprotocols on one line), then holds the connection until the proxy closes it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, OSError):
        writer.transport.abort()
        return
    key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: %s\r\n\r\n" % accept_key(key.decode()).encode())
    with contextlib.suppress(OSError):
        await reader.read()
    writer.transport.abort()


async def _ws_handshake(extra: list[tuple[str, str]], target: str = "/ws") -> tuple[int, int]:
    """One upgrade with the `extra` header lines through an in-process proxy to an upstream that accepts it: (its status,
    the JWT decodes it cost the proxy)."""
    upstream = await asyncio.start_server(_accepting, "127.0.0.1", 0, limit=1 << 20)
    server, port, _ = await in_process_proxy(f"ws://127.0.0.1:{upstream.sockets[0].getsockname()[1]}")
    hook = JwtDecodes()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            with hook.counting():
                head = upgrade_request(target, f"127.0.0.1:{port}")
                writer.write(head[:-2] + "".join(f"{k}: {v}\r\n" for k, v in extra).encode() + b"\r\n")
                async with asyncio.timeout(10):
                    head = await reader.readuntil(b"\r\n\r\n")
        finally:
            writer.transport.abort()
    finally:
        server.close()
        upstream.close()
    return int(head.split(b" ", 2)[1]), hook.calls["decode"]


async def test_a_thousand_jwt_subprotocols_are_not_each_decoded_by_the_websocket_side():
    lines = [("Sec-WebSocket-Protocol", jwts("jwt.", ", ", LINE)) for _ in range(HEAD // LINE - 1)]
    status, decodes = await _ws_handshake(lines)
    assert status == 400  # more than 32 subprotocols: refused (below), none of them decoded
    assert sum(v.count("jwt.") for _, v in lines) > 500
    assert decodes == 0, decodes  # it was one per subprotocol, ~130 ms of the event loop


async def test_jwt_subprotocols_within_the_bound_are_decoded_at_most_four_times():
    status, decodes = await _ws_handshake([("Sec-WebSocket-Protocol", ", ".join(f"jwt.{jwt_of(n)}" for n in range(32)))])
    assert status == 101  # the upgrade is passed on (the upstream picks no subprotocol)
    assert decodes <= FEW, decodes


async def test_a_query_of_a_thousand_tokens_is_not_each_decoded_by_the_websocket_side():
    query = jwts("access_token=", "&", LINE - 100)  # (the request line: under websockets' bound on a line)
    status, decodes = await _ws_handshake([], f"/ws?{query}")
    assert status == 101
    assert decodes <= FEW, decodes


async def test_a_query_of_a_thousand_tokens_is_not_each_decoded_by_the_http_side():
    """A chat's POST on the HTTP side (`--upstream http://`): its identity is read from its query too."""
    body = json.dumps({"threadId": "t1", "runId": "r1", "state": {}, "tools": [], "context": [],
                       "forwardedProps": {}, "messages": [{"id": "m1", "role": "user", "content": "hi"}]}).encode()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        await reader.readexactly(length)
        events = b"".join(b"data: %s\n\n" % json.dumps(e).encode() for e in (
            {"type": "RUN_STARTED", "threadId": "t1", "runId": "r1"},
            {"type": "RUN_FINISHED", "threadId": "t1", "runId": "r1"}))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(events), events))
        await writer.drain()
        writer.close()

    agui = load_profile("ag-ui")
    sink = MetricsSink(ChatMetrics(CollectorRegistry()), "up", "live")
    live = LiveChats(agui, sink, expectations_for(agui, Expect(deadline="5s")), "live", 0.05)
    up = await asyncio.start_server(upstream, "127.0.0.1", 0)
    server = await start_sse_proxy(SSEProxy(f"http://127.0.0.1:{up.sockets[0].getsockname()[1]}", live),
                                   "127.0.0.1", 0)
    hook = JwtDecodes()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            with hook.counting():
                writer.write(b"POST /run?%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (jwts("access_token=", "&", HEAD - 200).encode(), len(body), body))
                async with asyncio.timeout(10):
                    answer = await reader.read()
        finally:
            writer.transport.abort()
    finally:
        server.close()
        async with asyncio.timeout(10):
            await server.wait_closed()
        up.close()
        live.stop()
    assert answer.startswith(b"HTTP/1.1 200") and b"RUN_FINISHED" in answer
    assert hook.calls["decode"] <= FEW, hook.calls


def test_the_user_a_jwt_names_is_still_who_a_connection_is():
    """The bound takes nothing from a client's own few credentials: a refreshed JWT (another token naming the same
    user) is the same identity, in the Authorization header, a subprotocol or the query, beside other credentials."""
    def token(sub: str, iat: int) -> str:
        return f"{_b64({'alg': 'HS256'})}.{_b64({'sub': sub, 'iat': iat})}.c2ln"

    ann1 = ({"Authorization": f"Bearer {token('ann', 1)}"}, ["jwt." + token("ann", 1)], f"/ws?t={token('ann', 1)}")
    ann2 = ({"Authorization": f"Bearer {token('ann', 2)}"}, ["jwt." + token("ann", 2)], f"/ws?t={token('ann', 2)}")
    bob = ({"Authorization": f"Bearer {token('bob', 1)}"}, ann1[1], ann1[2])
    assert credentials_identity(*ann1) == credentials_identity(*ann2)
    assert credentials_identity(*bob) != credentials_identity(*ann1)


async def test_an_upgrade_offering_more_than_32_subprotocols_is_refused_before_they_are_looked_at():
    """Each subprotocol offered is looked at for a credential and offered to the upstream: 2,000 of them (seven 8 KiB
    lines of `xxxx.yyyy`, each part credential-like) held the proxy's event loop 30-40 ms a handshake, whether the
    upstream took it or not. Past 32, a 400 counted bad_request, no upstream connection opened; 32 still pass."""
    from .test_proxy_security import Recorded, refused, status_of

    upstream = await Recorded().start()
    server, port, metrics = await in_process_proxy(f"ws://127.0.0.1:{upstream.port}")
    part = "aB3dE5gH7jK9.mN1pQ3rS5tU7"
    try:
        assert await status_of(port, "/ws", extra={"Sec-WebSocket-Protocol": ", ".join([part] * 32)}) == 101
        assert len(upstream.requests) == 1
        for offered in ([part] * 33, [f"{part}{i}" for i in range(200)]):
            assert await status_of(port, "/ws", extra={"Sec-WebSocket-Protocol": ", ".join(offered)}) == 400
        assert len(upstream.requests) == 1 and refused(metrics, "bad_request") == 2
    finally:
        server.close()
        upstream.server.close()
