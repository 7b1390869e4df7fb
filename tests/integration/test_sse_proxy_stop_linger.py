"""`chatprobe proxy --upstream http://…` stopped (SIGTERM) while it closes a client's connection lingering (its answer
sent, the connection ended on its side, the client's end still to come, CLOSE_TIMEOUT at most): it exits 0 with no
traceback. The lingering close was no connection the stop waited for, and Python 3.11's asyncio logs the handler task
it then cancelled as "Exception in callback ... CancelledError", a traceback at every such stop."""
from __future__ import annotations

import asyncio
import signal

from .test_sse_proxy import _proxy_cli


async def test_a_stop_while_a_connection_closes_lingering_leaves_no_traceback():
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with __import__("contextlib").suppress(OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    up = await asyncio.start_server(upstream, "127.0.0.1", 0)
    proc = _proxy_cli("--upstream", f"http://127.0.0.1:{up.sockets[0].getsockname()[1]}", "--profile", "ag-ui",
                      "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--drain-timeout", "1s")
    writer = None
    try:
        assert proc.stdout is not None
        line = b""
        async with asyncio.timeout(30):
            while b"listening on" not in line:
                line = await asyncio.to_thread(proc.stdout.readline)
                assert line, proc.stderr.read() if proc.stderr else b""
        port = int(line.decode().split("listening on http://127.0.0.1:", 1)[1].split(" ", 1)[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(10):
            answer = await reader.read()  # to the proxy's end of it; this side stays open (the proxy lingers)
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok")
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if writer is not None:
            writer.transport.abort()
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        up.close()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err and b"Exception in callback" not in err, err.decode()[-2000:]
