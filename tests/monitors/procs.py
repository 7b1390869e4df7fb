"""The proxy tests' child processes: `chatprobe proxy` (ProxyProc: its port, pid, stderr and /metrics) and agentsim, each
started from this checkout and waited for on its own listening line, with a deadline; stopped (killed if need be)
when the test leaves it."""
from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
PROXY_MAIN = "import sys; from monitors.proxy import main; sys.exit(main(sys.argv[1:]))"
# The HTTP servers' slow-client timeout (10 s) set to SLOW_CUT in the child, so that a test of the cut need not wait
# out the default; what is cut, and when, is the same code.
SLOW_CUT = 2
SLOW_CUT_MAIN = f"from monitors import httpserver; httpserver.SLOW_CLIENT_TIMEOUT = {SLOW_CUT}; "
PORT_ATTEMPTS = 5
LISTENING = re.compile(r"listening on (?:ws|http)://127\.0\.0\.1:(\d+)")


def free_port() -> int:
    """A port nothing listened on a moment ago: for a process that must be told its port (0 is off for the proxy's
    --metrics-listen), which another process, a parallel worker's, may take first (see proxy_process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProxyProc:
    """A `chatprobe proxy` child: `port` its WebSocket port, `pid` (for /proc), `err` its stderr file, `line` the line
    it said it listens with (its bounds), `metrics_port` its /metrics (0: off), `proc` the process to signal."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, metrics_port: int, err: Path, line: str) -> None:
        self.proc, self.port, self.metrics_port, self.err, self.line = proc, port, metrics_port, err, line

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def scrape(self) -> dict[tuple[str, frozenset], float] | None:
        """Every sample of its /metrics, by name and its `outcome` and `reason` labels; None once nothing answers there
        (it exited)."""
        try:
            async with asyncio.timeout(5):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.metrics_port)
                writer.write(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                await writer.drain()
                data = await reader.read()
                writer.close()
        except (OSError, TimeoutError):
            return None
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.0 200") and not head.startswith(b"HTTP/1.1 200"):
            return None
        return {(s.name, frozenset((k, v) for k, v in s.labels.items() if k in ("outcome", "reason"))): s.value
                for family in text_string_to_metric_families(body.decode()) for s in family.samples}


@contextlib.asynccontextmanager
async def proxy_process(upstream: str, tmp_path: Path, *flags: str, metrics: bool = False, slow_cut: bool = False,
                        nofile: int | None = None, stop: bool = True, pool_bytes: int | None = None,
                        handshakes: int | None = None) -> AsyncIterator[ProxyProc]:
    """`chatprobe proxy` in a child process, once it listens. `metrics`: its /metrics on a free port (else off, 0); the
    proxy cannot pick one itself (0 is off), so one found free is given to it, and when another process took that port
    first the proxy exits saying so and is started again on another, at most PORT_ATTEMPTS times. `slow_cut`: its
    metrics server's slow-client timeout is SLOW_CUT. `nofile`: its open-file limit. `handshakes`: the sockets it holds
    at once still to send their request (frontdoor.handshake_budget), so that a test can make it run out of
    descriptors. `pool_bytes`: the bound of its pool
    of users' credentials (redact.MAX_SEEN_BYTES), so that a test fills it with a few connections. `stop`: at the end of the block
    it is stopped with SIGTERM and must exit 0 within its drain (--drain-timeout 1s unless `flags` give one) and
    shutdown grace (else the test stops it itself); killed if it still runs."""
    err_path = tmp_path / "proxy.stderr"
    # A test stopping the proxy with chats in flight waits out its drain (15 s by default): a second unless it says.
    drain = () if any(f.startswith("--drain-timeout") for f in flags) else ("--drain-timeout", "1s")

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    for _ in range(PORT_ATTEMPTS):
        metrics_port, match = (free_port() if metrics else 0), None
        with err_path.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", (SLOW_CUT_MAIN if slow_cut else "") + (
                    f"from harness import redact; redact._seen.max_bytes = {pool_bytes}; " if pool_bytes else ""
                ) + (
                    f"from monitors import frontdoor; frontdoor.handshake_budget = lambda nofile: {handshakes}; "
                    if handshakes else ""
                ) + PROXY_MAIN, "--upstream", upstream,
                "--listen", "127.0.0.1:0", "--metrics-listen", f"127.0.0.1:{metrics_port}", *drain, *flags,
                stdout=asyncio.subprocess.PIPE, stderr=err, cwd=ROOT, preexec_fn=limit if nofile is not None else None)
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(30):
                while line := (await proc.stdout.readline()).decode():
                    if match := LISTENING.search(line):
                        break
                else:  # it exited: the metrics port was taken (another try), or a failure of the test's own
                    await proc.wait()
                    text = err_path.read_text()
                    assert metrics and "--metrics-listen" in text and "Address already in use" in text, text
                    continue
            break
        finally:
            if proc.returncode is None and match is None:
                proc.kill()
                await proc.wait()
    else:
        pytest.fail(f"{PORT_ATTEMPTS} metrics ports found free were each taken before the proxy listened there")
    try:
        yield ProxyProc(proc, int(match.group(1)), metrics_port, err_path, line)
        if stop:
            # SIGTERM ends it within its shutdown grace (5 s, then connections are cut), even with a stuck peer.
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                assert await proc.wait() == 0, err_path.read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def agentsim_process(*args: str) -> AsyncIterator[str]:
    """agentsim in a child process (no auth: `?user=NAME`); yields its ws:// base URL."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentsim", "--port", "0", "--no-auth", "--seed", "3", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd=ROOT)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            while line := (await proc.stdout.readline()).decode():
                if match := re.search(r"listening on (ws://127\.0\.0\.1:\d+)", line):
                    break
            else:
                raise AssertionError(f"agentsim exited {await proc.wait()} before listening")
        yield match.group(1)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
