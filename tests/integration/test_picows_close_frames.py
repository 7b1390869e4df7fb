"""What a server's close frame says, read by the picows transport as the websockets one reads it: an empty close is
1005 (picows' NO_INFO 0 was recorded and echoed on the wire as code 0), a code of 5000 or more is a protocol error.
Real sockets: a raw server written here."""
from __future__ import annotations

import asyncio
import struct

import pytest

from harness.transports.base import ConnectSettings
from harness.transports.picows_ws import PicowsTransport

from .test_picows_listen import Listener, frame, read_frame, serve, until, upgrade


async def _closed_by(payload: bytes) -> tuple[PicowsTransport, list[tuple[int, bytes]]]:
    """The server answers the client's first frame with a close frame carrying `payload`: the client's transport and
    the frames it sent back."""
    transport, echoed, _ = await _ended_by(frame(8, payload))
    return transport, echoed


async def _ended_by(written: bytes) -> tuple[PicowsTransport, list[tuple[int, bytes]], list[object]]:
    """The server answers the client's first frame with `written` (one write) and reads until the client's close:
    the client's transport, the frames it sent back and the messages it took."""
    echoed: list[tuple[int, bytes]] = []
    got: list[object] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await upgrade(reader, writer)
            await read_frame(reader)
            writer.write(written)
            async with asyncio.timeout(5):
                while not echoed or echoed[-1][0] != 8:
                    echoed.append(await read_frame(reader))
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    srv, url = await serve(handler)
    ends: list[object] = []
    transport = PicowsTransport(ConnectSettings(url=url, connect_timeout=3))
    try:
        async with asyncio.timeout(10):  # a hang fails the test
            await transport.open()
            transport.listen(Listener(lambda message, at: got.append(message), ends.append))
            transport.send_now("start")
            await until(lambda: bool(ends))
            await until(lambda: bool(echoed) and echoed[-1][0] == 8)
    finally:
        srv.close()
    return transport, echoed, got


async def test_an_empty_close_frame_is_1005_and_answered_with_a_code_a_peer_may_send() -> None:
    transport, echoed = await _closed_by(b"")
    assert transport.close_code == 1005 and transport.protocol_error is None
    assert transport.close_reason == ""
    code = struct.unpack("!H", echoed[-1][1][:2])[0]
    assert code == 1000  # not 0 (RFC 6455 7.4: never sent)


@pytest.mark.parametrize("code", [5000, 65535])
async def test_a_close_code_past_4999_is_a_protocol_error(code: int) -> None:
    transport, echoed = await _closed_by(struct.pack("!H", code) + b"bye")
    assert transport.protocol_error == "WebSocket protocol error"
    assert struct.unpack("!H", echoed[-1][1][:2])[0] == 1002


async def test_an_application_close_code_is_kept() -> None:
    transport, echoed = await _closed_by(struct.pack("!H", 4000) + b"bye")
    assert (transport.close_code, transport.close_reason, transport.protocol_error) == (4000, "bye", None)
    assert struct.unpack("!H", echoed[-1][1][:2])[0] == 4000


@pytest.mark.parametrize("first", [
    frame(8, struct.pack("!H", 1000) + b"bye"),  # a close frame
    frame(1, b"\xff\xfe not UTF-8"),  # a frame that fails the connection (1007)
], ids=["close-frame", "invalid-utf8"])
async def test_nothing_after_a_close_or_a_failing_frame_in_the_same_read_is_taken(first: bytes) -> None:
    """A server writes a frame that ends the connection and an event behind it in one write: the event is not
    the client's (RFC 6455 7.1.7: no more data after the connection is failed or closed)."""
    transport, echoed, got = await _ended_by(first + frame(1, b'{"type":"agent_completed"}'))
    assert got == []
    assert transport.close_code is not None


@pytest.mark.parametrize(("refused", "error"), [
    (frame(8, struct.pack("!H", 1004)), "WebSocket protocol error"),  # a close code RFC 6455 7.4 forbids
    (frame(8, struct.pack("!H", 1000) + b"\xff\xfe"), "text frame that is not valid UTF-8"),  # a reason not UTF-8
], ids=["close-code-1004", "close-reason-not-utf8"])
async def test_nothing_the_server_sends_after_a_frame_picows_refuses_is_taken(refused: bytes, error: str) -> None:
    """picows' parser refuses such a close frame past it, answers with its own close and drops the socket 10 ms
    later: the frames of the reads that came meanwhile were handed over and judged as the run's events (a chat whose
    run ended there passed, its R12 the connection's, with `settle: 0`; the websockets client takes none of them).
    RFC 6455 7.1.7: nothing more is processed once the client has failed the connection."""
    got: list[object] = []
    ends: list[object] = []
    late = frame(1, b'{"type":"agent_completed"}')

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await upgrade(reader, writer)
            await read_frame(reader)
            writer.write(frame(1, b'{"type":"agent_started"}') + refused)
            async with asyncio.timeout(5):
                while (await read_frame(reader))[0] != 8:  # until the client's close: it has failed the connection
                    pass
                while not reader.at_eof():  # then events, each in a read of its own, until it hangs up
                    writer.write(late)
                    await writer.drain()
                    await asyncio.sleep(0.001)  # wait-ok: spaces the writes, so each comes in a read of its own
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    srv, url = await serve(handler)
    transport = PicowsTransport(ConnectSettings(url=url, connect_timeout=3))
    try:
        async with asyncio.timeout(10):  # a hang fails the test
            await transport.open()
            transport.listen(Listener(lambda message, at: got.append(message), ends.append))
            transport.send_now("start")
            await until(lambda: bool(ends))
    finally:
        srv.close()
    assert got == ['{"type":"agent_started"}']
    assert transport.protocol_error == error
