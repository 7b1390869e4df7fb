"""HTTP/1.1 keep-alive over SSE: a user's next chat is sent on the connection its previous chat's answer came on,
when that answer ended cleanly (its Content-Length or chunked body read to the end, no `Connection: close`, nothing
after it), as a browser, k6 and Locust's HttpUser do; else on a new connection. Both clients (`chatprobe run`'s
asyncio Session, the Locust user's SyncSession on plain threads as in test_sync_sse) meet a raw HTTP/1.1 server
written here that counts the connections it accepts and the requests each carried.

Failing on the code before keep-alive: every chat opened a connection of its own (the first test counted 3
connections for 3 chats, not 1; the stale-connection and cut-head tests saw no second request on any connection).
"""
from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable

import pytest

from harness.checker import ChatResult
from harness.client import Session
from harness.events import Outcome
from harness.flow import ChatOptions
from harness.gevent_client import SyncSession
from harness.scenario import Expect, Scenario

from .test_sse_attacks import AGUI, Collector, LimitedTarget, TokenProvider, whole_run

pytestmark = pytest.mark.timeout(90)

EXP = Scenario(name="t", expect=Expect(deadline=4)).expectations(AGUI)
OPTIONS = ChatOptions(settle=0.05)
CHATS = 3

# What the server does after reading the n-th request (from 1) of a connection: the bytes it answers with, and
# whether it closes the connection afterwards.
Answer = Callable[[int, bytes], Awaitable[tuple[bytes, bool]]]


def sized(body: bytes, extra: bytes = b"") -> bytes:
    """A 200 whose event stream has a Content-Length (its end read by the length)."""
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def chunked(body: bytes) -> bytes:
    """A 200 whose event stream is chunked (one chunk, then the last)."""
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")


class KeepAliveServer:
    """Reads requests one after another on each connection it accepts (head and Content-Length body) and answers
    each as `answer` says; `requests[i]`: how many requests connection i carried."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[int] = []
        self.heads: list[bytes] = []  # each request's head, in the order they came
        self.server: asyncio.Server | None = None
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.requests)
        self.requests.append(0)
        try:
            async with asyncio.timeout(30):
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    self.heads.append(head)
                    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                    body = await reader.readexactly(int(length.group(1))) if length else b""
                    self.requests[index] += 1
                    data, close = await self.answer(self.requests[index], body)
                    writer.write(data)
                    await writer.drain()
                    if close:
                        break
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # the client closed the connection
        finally:
            writer.close()

    async def __aenter__(self) -> KeepAliveServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/agent"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await asyncio.wait_for(self.server.wait_closed(), 10)


def verdicts(results: list[ChatResult]) -> list[tuple[Outcome, str | None, list[str]]]:
    return [(r.outcome, r.error_kind, sorted({v.rule.value for v in r.violations})) for r in results]


async def chats(url: str, client: str, n: int = CHATS) -> list[ChatResult]:
    """`n` chats of one user, back to back, by the asyncio Session or the SyncSession (in a thread)."""
    target = LimitedTarget(url=url, profile=AGUI, name="t", tokens=TokenProvider("tok-123"))
    if client == "asyncio":
        session = Session(target, "u1", "t", Collector(), connect_timeout=3)
        try:
            return [await asyncio.wait_for(session.chat(f"chat {i}", EXP, OPTIONS), 20) for i in range(n)]
        finally:
            await asyncio.wait_for(session.close(), 10)
    sync = SyncSession(target, "u1", "t", Collector(), connect_timeout=3)

    def play() -> list[ChatResult]:
        try:
            out = []
            for i in range(n):
                result = sync.chat(f"chat {i}", EXP, OPTIONS)
                assert result is not None
                out.append(result)
            return out
        finally:
            sync.close()

    return await asyncio.wait_for(asyncio.to_thread(play), 30)


PASSED = [(Outcome.PASSED, None, [])] * CHATS
CLIENTS = pytest.mark.parametrize("client", ["asyncio", "sync"])


@CLIENTS
@pytest.mark.parametrize("frame", [sized, chunked])
async def test_a_users_chats_share_one_kept_connection(client, frame):
    async def answer(n: int, body: bytes) -> tuple[bytes, bool]:
        return frame(whole_run(body)), False

    async with KeepAliveServer(answer) as server:
        results = await chats(server.url, client)
    assert verdicts(results) == PASSED, results
    assert server.requests == [CHATS], server.requests


@CLIENTS
async def test_connection_close_gets_a_new_connection_per_chat(client):
    async def answer(n: int, body: bytes) -> tuple[bytes, bool]:
        return sized(whole_run(body), b"Connection: close\r\n"), True

    async with KeepAliveServer(answer) as server:
        results = await chats(server.url, client)
    assert verdicts(results) == PASSED, results
    assert server.requests == [1] * CHATS, server.requests


@CLIENTS
async def test_a_body_ended_by_the_connections_close_is_not_kept(client):
    """No Content-Length, not chunked: the body ends with the connection (HTTP/1.0-style), nothing to keep."""
    async def answer(n: int, body: bytes) -> tuple[bytes, bool]:
        return b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + whole_run(body), True

    async with KeepAliveServer(answer) as server:
        results = await chats(server.url, client)
    assert verdicts(results) == PASSED, results
    assert server.requests == [1] * CHATS, server.requests


@CLIENTS
async def test_a_kept_connection_closed_by_the_server_is_retried_on_a_new_one(client):
    """The server closes a connection when its second request comes, answering nothing (it closed the idle
    connection as the request crossed it): the request is sent again once, on a new connection, and passes."""
    async def answer(n: int, body: bytes) -> tuple[bytes, bool]:
        if n > 1:
            return b"", True
        return sized(whole_run(body)), False

    async with KeepAliveServer(answer) as server:
        results = await chats(server.url, client)
    assert verdicts(results) == PASSED, results
    # Each later chat's request went first on the kept connection, then again on a new one.
    assert server.requests == [2] * (CHATS - 1) + [1], server.requests


@CLIENTS
async def test_a_kept_connection_closed_while_idle_is_not_used(client):
    """The server closes each connection after its answer, without saying so (no `Connection: close`): the client
    finds it closed before the next request (its socket readable at its end) or by the request, and the chats pass
    on new connections, one request on each (the closed one is never a failure)."""
    async def answer(n: int, body: bytes) -> tuple[bytes, bool]:
        return sized(whole_run(body)), True

    async with KeepAliveServer(answer) as server:
        results = await chats(server.url, client)
    assert verdicts(results) == PASSED, results
    assert server.requests == [1] * CHATS, server.requests


@CLIENTS
async def test_bytes_after_the_body_end_leave_the_connection_unused(client):
    """Junk after the body's end is no answer to anything: the chat it followed passes (its answer was whole), and
    the connection is not used again (the next chat's request goes on a new one)."""
    async def answer(n: int, body: bytes) -> tuple[bytes, bool]:
        return sized(whole_run(body)) + b"HTTP/1.1 200 OK\r\n", False

    async with KeepAliveServer(answer) as server:
        results = await chats(server.url, client)
    assert verdicts(results) == PASSED, results
    assert server.requests == [1] * CHATS, server.requests


@CLIENTS
async def test_a_kept_connection_cut_after_part_of_a_head_is_not_retried(client):
    """Part of an answer came before the connection was cut: the request is not sent again, and the chat fails as
    on a new connection (a protocol error at connect time); the next chat opens a new connection."""
    async def answer(n: int, body: bytes) -> tuple[bytes, bool]:
        if n > 1:
            return b"HTTP/1.1 200 OK\r\nContent-", True
        return sized(whole_run(body)), False

    async with KeepAliveServer(answer) as server:
        results = await chats(server.url, client)
        fresh = await chats(server.url, client, 1)  # (a server cutting the head on a new connection: no retry there)
    got = verdicts(results)
    assert got[0] == got[2] == (Outcome.PASSED, None, []), results
    assert got[1][:2] == (Outcome.ERROR, "protocol_error"), results
    assert verdicts(fresh) == [(Outcome.PASSED, None, [])]
    assert server.requests == [2, 1, 1], server.requests


@CLIENTS
async def test_a_chat_cut_by_its_deadline_leaves_no_connection_kept(client):
    """A chat whose run never ends is cut at its deadline: its connection is closed (the stream unread to its end),
    and the next chat's request goes on a new connection."""
    async def answer(n: int, body: bytes) -> tuple[bytes, bool]:
        inp = json.loads(body)
        if inp["messages"][-1]["content"] == "chat 0":
            # A chunked stream that starts and never ends.
            start = b'data: {"type": "RUN_STARTED", "threadId": "%s", "runId": "%s"}\n\n' % (
                inp["threadId"].encode(), inp["runId"].encode())
            return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + b"%x\r\n" % len(start) + start + b"\r\n"), False
        return sized(whole_run(body)), False

    target_exp = Scenario(name="t", expect=Expect(deadline=0.5)).expectations(AGUI)

    async with KeepAliveServer(answer) as server:
        target = LimitedTarget(url=server.url, profile=AGUI, name="t", tokens=TokenProvider(None))
        if client == "asyncio":
            session = Session(target, "u1", "t", Collector(), connect_timeout=3)
            try:
                results = [await asyncio.wait_for(session.chat(f"chat {i}", target_exp, OPTIONS), 20)
                           for i in range(2)]
            finally:
                await asyncio.wait_for(session.close(), 10)
        else:
            sync = SyncSession(target, "u1", "t", Collector(), connect_timeout=3)

            def play() -> list[ChatResult | None]:
                try:
                    return [sync.chat(f"chat {i}", target_exp, OPTIONS) for i in range(2)]
                finally:
                    sync.close()

            results = await asyncio.wait_for(asyncio.to_thread(play), 30)
    assert [r.outcome if r else None for r in results] == [Outcome.INCOMPLETE, Outcome.PASSED], results
    assert server.requests == [1, 1], server.requests


async def test_chats_judged_at_their_terminal_event_still_keep_the_connection():
    """settle 0: each chat is judged at RUN_FINISHED, and its stream closed then, while the body's end is read in the
    same turn. httpx's aiter_raw closed the response there, in the reading task the chat's end cancels: the close was
    cut, the connection left neither closed nor idle in the user's pool, and every chat opened another (a connection
    and a socket held per chat until the user's end)."""
    async def answer(n: int, body: bytes) -> tuple[bytes, bool]:
        return sized(whole_run(body)), False

    async with KeepAliveServer(answer) as server:
        target = LimitedTarget(url=server.url, profile=AGUI, name="t", tokens=TokenProvider(None))
        session = Session(target, "u1", "t", Collector(), connect_timeout=3)
        try:
            results = [await asyncio.wait_for(session.chat(f"chat {i}", EXP, ChatOptions(settle=0)), 20)
                       for i in range(CHATS)]
        finally:
            await asyncio.wait_for(session.close(), 10)
    assert verdicts(results) == PASSED, results
    assert server.requests == [CHATS], server.requests


def holds(root: object, secret: str, limit: int = 200_000) -> bool:
    """Whether anything reachable from `root` (instances, containers; not classes, modules or functions, which lead to
    every global, nor the event loop, its tasks and selector, which lead to the test server's own buffers) is a str or
    bytes holding `secret`."""
    import gc
    import selectors
    import threading
    import types

    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType, types.FrameType,
            types.CoroutineType, asyncio.AbstractEventLoop, asyncio.Future, selectors.BaseSelector, threading.Thread)
    seen, todo, wanted = {id(root)}, [root], (secret, secret.encode())
    while todo and len(seen) < limit:
        obj = todo.pop()
        if isinstance(obj, str):
            if wanted[0] in obj:
                return True
            continue
        if isinstance(obj, (bytes, bytearray, memoryview)):
            if wanted[1] in bytes(obj):
                return True
            continue
        for ref in gc.get_referents(obj):
            if id(ref) not in seen and not isinstance(ref, skip):
                seen.add(id(ref))
                todo.append(ref)
    return False


@CLIENTS
async def test_the_kept_connection_holds_no_credential(client):
    """Between chats the user's idle connection is kept, never its credential: the token (and a --header value) was
    sent with each request, made from the chat's settings, and is not reachable from what keeps the connection."""
    async def answer(n: int, body: bytes) -> tuple[bytes, bool]:
        return sized(whole_run(body)), False

    secret = "tok-kept-7f3a9c"
    async with KeepAliveServer(answer) as server:
        target = LimitedTarget(url=server.url, profile=AGUI, name="t", tokens=TokenProvider(secret),
                               headers=(("X-Tenant", "hdr-kept-51be"),))
        if client == "asyncio":
            session = Session(target, "u1", "t", Collector(), connect_timeout=3)
            try:
                results = [await asyncio.wait_for(session.chat(f"chat {i}", EXP, OPTIONS), 20) for i in range(2)]
                kept = session._kept
                assert kept is not None and kept.idle is not None  # the connection is kept
                found = holds(kept, secret) or holds(kept, "hdr-kept-51be")
            finally:
                await asyncio.wait_for(session.close(), 10)
        else:
            sync = SyncSession(target, "u1", "t", Collector(), connect_timeout=3)

            def play() -> tuple[list[ChatResult | None], bool]:
                try:
                    out = [sync.chat(f"chat {i}", EXP, OPTIONS) for i in range(2)]
                    keeper = sync._keeper
                    assert keeper is not None and keeper._idle is not None  # the connection is kept
                    return out, holds(keeper, secret) or holds(keeper, "hdr-kept-51be")
                finally:
                    sync.close()

            results, found = await asyncio.wait_for(asyncio.to_thread(play), 30)
    assert [r.outcome if r else None for r in results] == [Outcome.PASSED] * 2, results
    assert server.requests == [2], server.requests
    assert holds(target.tokens, secret)  # (the search finds a token where it is kept)
    assert not found


@CLIENTS
async def test_cookies_the_server_sets_are_not_kept_between_a_users_chats(client):
    """A server setting cookies with each answer (20 of 3 kB, new names each time): the asyncio client's httpx kept
    every one in its cookie jar and sent them all with the user's next chats, a Cookie header growing by 60 kB a chat
    without bound (the third chat's request, 120 kB, was refused by the server: an error) and a session cookie kept
    as no credential is; the Locust user's client kept none. Neither keeps any: a cookie goes with --header."""
    async def answer(n: int, body: bytes) -> tuple[bytes, bool]:
        cookies = b"".join(b"Set-Cookie: c%d_%d=%s; Max-Age=99999; Path=/\r\n" % (n, k, b"v" * 3000)
                           for k in range(20))
        return sized(whole_run(body), cookies), False

    async with KeepAliveServer(answer) as server:
        results = await chats(server.url, client)
    assert verdicts(results) == PASSED, results
    assert len(server.heads) == CHATS and not any(re.search(rb"(?im)^cookie:", h) for h in server.heads), \
        [h[:300] for h in server.heads]
