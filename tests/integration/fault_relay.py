"""A hostile network between a client and a well-behaved server: an asyncio TCP relay on 127.0.0.1 that forwards
bytes both ways and, on request, misbehaves as networks do (the server behind it does nothing wrong).

`relay(upstream_port, *faults)` serves until its block ends; each connection it accepts is relayed to the upstream
with the faults applied. A `Fault` strikes one direction (`UP`: client to server, `DOWN`: server to client) once its
trigger has passed: `after` bytes of that direction forwarded, or the first `at` pattern seen in it (the fault then
strikes in the middle of the pattern: mid-frame). What it does:

- `latency`: every chunk waits this long before it is forwarded (a slow link; the order is kept);
- `split`: every chunk goes a byte at a time, each its own TCP segment (TCP_NODELAY, drained one by one);
- `hole`: nothing more is forwarded that way; what comes is read and dropped, the connection stays open (a black hole:
  a NAT that lost the mapping, a firewall dropping packets);
- `half_close`: the receiving side of that direction is sent a FIN (shutdown of the write side), the rest stays open;
- `rst`: both sockets are reset (SO_LINGER 0: an RST, not a FIN), the client's first;
- `stall`: the relay stops reading from the sender (its kernel buffers fill, and then the sender's writes wait);
  set on `UP` with a tiny receive buffer, it is a server that never reads what a client sends;
- `drop`: both connections closed (FIN) once the trigger passed;
- `silent` (no direction): the relay accepts the client and never connects upstream, never answers, reads nothing.

TCP never duplicates nor reorders: the relay does neither. Every wait of the relay's own ends with its block (each
connection's tasks are cancelled and their sockets aborted); `stats` counts what it did, for a test to assert on.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

UP, DOWN = "up", "down"
Direction = Literal["up", "down"]
Kind = Literal["latency", "split", "hole", "half_close", "rst", "stall", "drop", "silent"]


@dataclass(frozen=True)
class Fault:
    kind: Kind
    direction: Direction = DOWN
    after: int = 0  # bytes of that direction forwarded before it strikes
    at: bytes | None = None  # or: strikes in the middle of the first occurrence of this pattern
    mid: bool = True  # (with `at`) in its middle; False: right after it
    seconds: float = 0.0  # latency's
    connections: frozenset[int] | None = None  # the relayed connections it strikes (0 the first), None: all


@dataclass
class Stats:
    accepted: int = 0
    struck: list[tuple[int, str, str]] = field(default_factory=list)  # (connection, kind, direction)
    up_bytes: int = 0
    down_bytes: int = 0


class _Pipe:
    """One direction of one relayed connection."""

    def __init__(self, n: int, direction: Direction, faults: list[Fault], stats: Stats) -> None:
        self.n = n
        self.direction = direction
        self.faults = [f for f in faults if f.direction == direction and f.kind != "silent"
                       and (f.connections is None or n in f.connections)]
        self.stats = stats
        self.forwarded = 0
        self.seen = b""  # the tail of what went, for a pattern cut across reads

    def trigger(self, chunk: bytes) -> tuple[int, Fault] | None:
        """(bytes of `chunk` to forward before the first pending fault strikes, that fault), or None. A pattern cut
        across two reads is found in the tail of what went before (its middle may then be past: it strikes at once)."""
        best: tuple[int, Fault] | None = None
        for f in self.faults:
            if f.kind in ("latency", "split") and f.after == 0 and f.at is None:
                continue  # in force from the start
            if f.at is not None:
                window = self.seen + chunk
                i = window.find(f.at)
                if i < 0:
                    continue
                cut = i + (max(len(f.at) // 2, 1) if f.mid else len(f.at)) - len(self.seen)
            else:
                cut = f.after - self.forwarded
                if cut > len(chunk):
                    continue
            cut = max(cut, 0)
            if best is None or cut < best[0]:
                best = (cut, f)
        return best

    def active(self, kind: str) -> Fault | None:
        for f in self.faults:
            if f.kind == kind and f.after == 0 and f.at is None:
                return f
        return None


async def _write(writer: asyncio.StreamWriter, data: bytes, pipe: _Pipe) -> None:
    if not data:
        return
    latency = pipe.active("latency")
    if latency is not None:
        await asyncio.sleep(latency.seconds)  # wait-ok: the fault is a slow link
    if pipe.active("split") is not None:
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            await writer.drain()
    else:
        writer.write(data)
        await writer.drain()
    pipe.forwarded += len(data)
    pipe.seen = (pipe.seen + data)[-256:]
    if pipe.direction == UP:
        pipe.stats.up_bytes += len(data)
    else:
        pipe.stats.down_bytes += len(data)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER on, 0 s), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Connection:
    def __init__(self, n: int, client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 server: tuple[asyncio.StreamReader, asyncio.StreamWriter], faults: list[Fault], stats: Stats) -> None:
        self.n = n
        self.client = client
        self.server = server
        self.stats = stats
        self.up = _Pipe(n, UP, faults, stats)
        self.down = _Pipe(n, DOWN, faults, stats)
        for pipe in (self.up, self.down):
            for f in pipe.faults:
                if f.kind in ("latency", "split") and f.after == 0 and f.at is None:
                    stats.struck.append((n, f.kind, f.direction))  # in force from the start
        self.holed: set[str] = set()
        self.client_gone = asyncio.Event()  # the client's side of the connection ended (EOF, reset)
        self.released = asyncio.Event()  # Relay.release(): a stalled direction reads (and drops) again

    def _strike(self, fault: Fault) -> None:
        self.stats.struck.append((self.n, fault.kind, fault.direction))

    async def pump(self, pipe: _Pipe, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Forward src to dst with pipe's faults, until src ends or a fault ends the connection."""
        try:
            while True:
                if pipe.direction in self.holed:
                    if not await src.read(65536):
                        return
                    continue
                chunk = await src.read(65536)
                if not chunk:
                    if pipe.direction not in self.holed:
                        with contextlib.suppress(OSError, RuntimeError):
                            dst.write_eof()  # a FIN passed on as a FIN
                    return
                while chunk:
                    hit = pipe.trigger(chunk)
                    if hit is None:
                        await _write(dst, chunk, pipe)
                        break
                    cut, fault = hit
                    await _write(dst, chunk[:cut], pipe)
                    chunk = chunk[cut:]
                    pipe.faults.remove(fault)
                    self._strike(fault)
                    if await self.apply(fault, pipe, src, dst):
                        return
                    if pipe.direction in self.holed:
                        break
        except (ConnectionError, OSError):
            return
        finally:
            if pipe.direction == UP and not asyncio.current_task().cancelling():  # type: ignore[union-attr]
                self.client_gone.set()

    async def apply(self, fault: Fault, pipe: _Pipe, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> bool:
        """Do what the fault does; True when this direction is over."""
        kind = fault.kind
        if kind in ("latency", "split"):
            pipe.faults.append(Fault(kind, fault.direction, seconds=fault.seconds))  # in force from now on
            return False
        if kind == "hole":
            self.holed.add(pipe.direction)
            return False
        if kind == "half_close":
            with contextlib.suppress(OSError, RuntimeError):
                dst.write_eof()
            self.holed.add(pipe.direction)  # what still comes that way is dropped
            return False
        if kind == "stall":
            await self.released.wait()  # reads nothing until released (or the relay stops)
            self.holed.add(pipe.direction)  # then reads again, and drops what it reads
            return False
        if kind == "rst":
            reset(self.client[1])
            reset(self.server[1])
            return True
        if kind == "drop":
            self.client[1].close()
            self.server[1].close()
            return True
        return False

    def abort(self) -> None:
        for _, w in (self.client, self.server):
            w.transport.abort()


class Relay:
    def __init__(self, upstream_port: int, faults: list[Fault]) -> None:
        self.upstream_port = upstream_port
        self.faults = faults
        self.stats = Stats()
        self.port = 0
        self._tasks: set[asyncio.Task] = set()
        self._connections: list[_Connection] = []
        self._held: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def address(self, scheme: str = "ws", path: str = "/ws") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        silent = any(f.kind == "silent" for f in self.faults)
        stall_up = any(f.kind == "stall" and f.direction == UP for f in self.faults)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=65536)
        for sock in self._server.sockets:
            if stall_up or silent:
                # A small receive buffer (inherited by accepted sockets): the client's send buffer fills soon.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = self.stats.accepted
        self.stats.accepted += 1
        silent = [f for f in self.faults if f.kind == "silent" and (f.connections is None or n in f.connections)]
        if silent:
            self.stats.struck.append((n, "silent", ""))
            writer.transport.pause_reading()
            self._held.append(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        for w in (writer, up_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(n, (reader, writer), (up_reader, up_writer), self.faults, self.stats)
        self._connections.append(conn)
        up = asyncio.create_task(conn.pump(conn.up, reader, up_writer))
        down = asyncio.create_task(conn.pump(conn.down, up_reader, writer))
        for t in (up, down):
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        await asyncio.gather(up, down, return_exceptions=True)
        for w in (writer, up_writer):
            if conn.holed:
                continue  # a black hole keeps the connection open until the relay stops
            w.close()

    def connection(self, n: int) -> _Connection:
        """The `n`th relayed connection (0 the first)."""
        return self._connections[n]

    def release(self) -> None:
        """Every stalled direction reads again, dropping what it reads (a test then sees the client's end)."""
        for conn in self._connections:
            conn.released.set()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in self._connections:
            conn.abort()
        for w in self._held:
            w.transport.abort()


@contextlib.asynccontextmanager
async def relay(upstream_port: int, *faults: Fault) -> AsyncIterator[Relay]:
    r = Relay(upstream_port, list(faults))
    await r.start()
    try:
        yield r
    finally:
        await r.stop()
