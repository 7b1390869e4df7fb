"""Both WebSocket clients (picows, websockets) against raw servers written here: the same handshake failures, the
same close codes and R12 details for what a server must not send, fragments joined within the size limit."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import struct

import pytest

from harness.transports import ConnectFailed, make_transport
from harness.transports.base import ConnectSettings

CLIENTS = ["picows", "websockets"]
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One unmasked server frame."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


class RawServer:
    """Accepts one upgrade (or answers `status`), then writes `frames`, then keeps reading until the client leaves."""

    def __init__(self, frames: list[bytes], status: int = 101, hang_up: bool = False) -> None:
        self.frames, self.status, self.hang_up = frames, status, hang_up
        self.request = b""
        self.client_frames: list[tuple[int, bytes]] = []
        self.got_frame = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.request = await reader.readuntil(b"\r\n\r\n")
            if self.hang_up:
                return
            if self.status != 101:
                writer.write(f"HTTP/1.1 {self.status} No\r\nContent-Length: 0\r\n\r\n".encode())
                return
            key = next(line.split(b":", 1)[1].strip() for line in self.request.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            for f in self.frames:
                writer.write(f)
            await writer.drain()
            while True:  # the client's frames, until its close (answered by hanging up, as a server does)
                head = await reader.readexactly(2)
                n = head[1] & 0x7F
                if n == 126:
                    n = struct.unpack("!H", await reader.readexactly(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", await reader.readexactly(8))[0]
                mask = await reader.readexactly(4)
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(n)))
                self.client_frames.append((head[0] & 0x0F, payload))
                self.got_frame.set()
                if head[0] & 0x0F == 8:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def exchange(client: str, server: RawServer, max_size: int = 1024, token: str | None = None,
                   auth: str = "header"):
    """Open, read every frame until the connection ends; (transport, frames) or the ConnectFailed."""
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    settings = ConnectSettings(url=f"ws://127.0.0.1:{port}/ws", token=token, auth=auth, connect_timeout=3,
                               max_size=max_size, client=client)
    transport = make_transport(settings)
    got: list = []
    try:
        async with asyncio.timeout(10):  # a hang fails the test
            try:
                await transport.open()
            except ConnectFailed as exc:
                return None, exc
            await transport.run(lambda message, at: got.append(message))
    finally:
        srv.close()
    return transport, got


@pytest.mark.parametrize("client", CLIENTS)
async def test_frames_arrive_as_text_and_a_server_close_code_is_kept(client):
    server = RawServer([frame(1, b'{"type": "a"}'), frame(1, b'{"type": "b"}'),
                        frame(8, struct.pack("!H", 4001) + b"bye")])
    transport, got = await exchange(client, server)
    assert got == ['{"type": "a"}', '{"type": "b"}']
    assert transport.close_code == 4001 and transport.protocol_error is None


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_fragmented_message_is_joined(client):
    server = RawServer([frame(1, b'{"type": ', fin=False), frame(0, b'"joined"', fin=False), frame(0, b"}"),
                        frame(8, struct.pack("!H", 1000))])
    transport, got = await exchange(client, server)
    assert got == ['{"type": "joined"}'] and transport.close_code == 1000


@pytest.mark.parametrize("client", CLIENTS)
async def test_control_frames_between_a_messages_fragments_neither_break_nor_join_it(client):
    # RFC 6455 5.4: control frames may come in the middle of a fragmented message: a ping (answered, as any: see
    # below), an unsolicited pong (ignored), and the message still joined whole. A guard: picows' fragments are
    # joined by hand (PicowsTransport._join), and a fragment check moved above the control frames' own would fail
    # the connection or lose the message.
    server = RawServer([frame(1, b'{"type": ', fin=False), frame(9, b"mid"), frame(0, b'"joined"', fin=False),
                        frame(10, b"unasked"), frame(0, b"}"), frame(8, struct.pack("!H", 1000))])
    transport, got = await exchange(client, server)
    assert got == ['{"type": "joined"}'] and transport.close_code == 1000 and transport.protocol_error is None


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("frames", [[frame(1, b"x" * 2000)],
                                    [frame(1, b"x" * 600, fin=False), frame(0, b"x" * 600)]],
                         ids=["one frame", "fragments"])
async def test_a_message_over_max_size_closes_with_1009_and_an_r12_detail(client, frames):
    transport, got = await exchange(client, RawServer([frame(1, b'{"ok": 1}'), *frames]))
    assert got == ['{"ok": 1}']
    assert transport.protocol_error == "frame larger than the 1024 byte limit"


@pytest.mark.parametrize("client", CLIENTS)
async def test_text_that_is_not_utf8_closes_with_1007(client):
    transport, got = await exchange(client, RawServer([frame(1, b'{"a": "\xff\xfe"}')]))
    assert got == [] and transport.protocol_error == "text frame that is not valid UTF-8"


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(("server", "kind"), [(RawServer([], status=401), "auth_failed"),
                                              (RawServer([], status=503), "refused"),
                                              (RawServer([], status=404), "protocol_error"),
                                              (RawServer([], hang_up=True), "refused")],
                         ids=["401", "503", "404", "hang up"])
async def test_handshake_failures_are_classified_alike(client, server, kind):
    transport, failure = await exchange(client, server)
    assert transport is None and failure.kind == kind


@pytest.mark.parametrize("client", CLIENTS)
async def test_connection_refused(client):
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    transport = make_transport(ConnectSettings(url=f"ws://127.0.0.1:{port}/ws", connect_timeout=3, client=client))
    with pytest.raises(ConnectFailed) as info:
        async with asyncio.timeout(10):
            await transport.open()
    assert info.value.kind == "refused"


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("auth", ["header", "subprotocol"])
async def test_the_token_reaches_the_server_as_asked(client, auth):
    server = RawServer([frame(8, struct.pack("!H", 1000))])
    await exchange(client, server, token="s3cret", auth=auth)
    head = server.request.decode().lower()
    if auth == "header":
        assert "authorization: bearer s3cret" in head
    else:
        encoded = base64.urlsafe_b64encode(b"s3cret").decode().rstrip("=").lower()
        assert f"jwt.{encoded}" in head and "jwt-auth" in head


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_server_ping_is_answered_with_its_payload(client):
    server = RawServer([frame(9, b"hello")])
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    transport = make_transport(ConnectSettings(url=f"ws://127.0.0.1:{port}/ws", connect_timeout=3, client=client))
    async with asyncio.timeout(10):  # a hang fails the test
        await transport.open()
        reader = asyncio.ensure_future(transport.run(lambda m, at: None))
        await server.got_frame.wait()
        await transport.close()
        await reader
    srv.close()
    assert server.client_frames[0] == (10, b"hello")  # a pong with the ping's payload


def assert_holds_no_token(root: object, encoded: str) -> None:
    """Nothing reachable from `root` holds the test token ("...s3cret...") or its base64 form. Not through the event
    loop: it reaches everything, this test's raw server and what it received too."""
    import gc
    import types
    import weakref

    seen: set[int] = set()
    todo: list = [root]
    while todo:
        obj = todo.pop()
        if type(obj) in weakref.ProxyTypes:
            continue  # a weak proxy (another test's garbage, its referent perhaps gone: any use raises ReferenceError)
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, types.FunctionType, asyncio.AbstractEventLoop)):
            continue
        seen.add(id(obj))
        if isinstance(obj, (str, bytes)):
            text = obj.decode("latin-1") if isinstance(obj, bytes) else obj
            assert "s3cret" not in text and encoded[4:20] not in text, f"{text[:60]!r} is still held"
            continue
        todo.extend(gc.get_referents(obj))
    assert len(seen) > 20  # the walk reached into the client's objects


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("auth", ["header", "subprotocol"])
async def test_an_open_connection_holds_no_copy_of_the_token(client, auth):
    """The upgrade's headers (and the dict of them picows keeps for the connection's life, the request websockets
    keeps) carry the credential; once open, nothing reachable from the transport does (and they are not ~1 KiB of
    every open connection)."""

    token = "tok-" + "s3cret" * 8
    server = RawServer([frame(1, b'{"type": "a"}')])
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    transport = make_transport(ConnectSettings(url=f"ws://127.0.0.1:{port}/ws", token=token, auth=auth,
                                               connect_timeout=3, client=client))
    try:
        async with asyncio.timeout(10):  # a hang fails the test
            await transport.open()
        encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
        assert (token if auth == "header" else encoded) in server.request.decode()  # it was sent
        assert_holds_no_token(transport, encoded)
    finally:
        transport.abort()
        srv.close()


@pytest.mark.parametrize("auth", ["header", "subprotocol"])
def test_an_open_gevent_wire_holds_no_copy_of_the_token(auth):
    """The Locust client's connection (harness/gevent_client.py, websockets' Sans-I/O protocol on a blocking socket):
    once open, its settings and protocol keep no copy of the credential either."""
    import threading

    from harness.gevent_client import _Wire

    token = "tok-" + "s3cret" * 8
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    server = RawServer([frame(1, b'{"type": "a"}')])
    box: dict = {}
    ready = threading.Event()

    def serve() -> None:  # the raw server on a loop of its own: the wire under test blocks
        loop = asyncio.new_event_loop()
        srv = loop.run_until_complete(asyncio.start_server(server.handle, "127.0.0.1", 0))
        box["port"], box["loop"], box["srv"] = srv.sockets[0].getsockname()[1], loop, srv
        ready.set()
        loop.run_forever()
        srv.close()
        loop.run_until_complete(srv.wait_closed())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    wire = _Wire(ConnectSettings(url=f"ws://127.0.0.1:{box['port']}/ws", token=token, auth=auth, connect_timeout=3))
    wire.open()
    try:
        assert (token if auth == "header" else encoded) in server.request.decode()  # it was sent
        assert_holds_no_token(wire, encoded)
    finally:
        wire.close()
        box["loop"].call_soon_threadsafe(box["loop"].stop)
        thread.join(10)
