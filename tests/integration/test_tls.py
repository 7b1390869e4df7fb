"""wss:// with a custom CA on the client side: verified with --ca-file, refused without it, classified."""
from __future__ import annotations

import asyncio
import json
import os
import ssl
import threading
from typing import Any

import pytest
import trustme
from websockets.asyncio.server import serve

from harness.events import Outcome
from harness.profiles import load_profile
from harness.runner import run_scenario
from harness.scenario import Scenario
from harness.sinks import Sink
from harness.targets import Target

ROLES = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"]


async def handler(ws):
    await ws.send(json.dumps({"type": "connection_established", "data": {"user_id": "u"}}))
    msg = json.loads(await ws.recv())
    mid = msg["payload"]["message_id"]
    for i, kind in enumerate(ROLES, start=1):
        await ws.send(json.dumps({"type": kind, "run_id": "r1", "seq": i,
                                  "payload": {"message_id": mid, "tool_call_id": "c"}}))
    await ws.wait_closed()


async def run_tls(tmp_path, compression: str = "none", cert_for: tuple[str, ...] = ("127.0.0.1", "localhost"),
                  **target_kw):
    ca = trustme.CA()
    cert = ca.issue_cert(*cert_for)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    sc = Scenario.model_validate({"name": "tls", "connect_timeout": "3s", "compression": compression,
                                  "expect": {"deadline": "3s", "settle": "0.05s"}})
    async with serve(handler, "127.0.0.1", 0, ssl=server_ctx) as server:
        port = server.sockets[0].getsockname()[1]
        kw = {k: (str(ca_file) if v == "CA" else v) for k, v in target_kw.items()}
        target = Target(url=f"wss://127.0.0.1:{port}/ws", profile=load_profile("netra"), name="tls", **kw)
        return await run_scenario(sc, target)


async def test_wss_with_custom_ca_file_passes(tmp_path):
    run = await run_tls(tmp_path, ca_file="CA")
    assert [r.outcome for r in run.results] == [Outcome.PASSED], run.results[0].violations


@pytest.mark.parametrize("compression", ["none", "deflate"])  # picows, and the websockets client
async def test_wss_with_an_unknown_ca_is_a_tls_error(tmp_path, compression):
    run = await run_tls(tmp_path, compression)
    (r,) = run.results
    assert r.outcome is Outcome.ERROR and r.error_kind == "tls_error"
    assert run.unreachable
    # why the certificate was not verified, and what to give (it said only "TLS: CERTIFICATE_VERIFY_FAILED")
    assert r.error == ("TLS: CERTIFICATE_VERIFY_FAILED (unable to get local issuer certificate): give the server's CA "
                       "with --ca-file, or --insecure"), r.error


async def test_a_certificate_for_another_name_says_so_not_to_give_a_ca(tmp_path):
    """A certificate of a trusted CA issued for another host: the reason says so and what helps (a CA file does
    not: the server's CA was given)."""
    run = await run_tls(tmp_path, ca_file="CA", cert_for=("chat.example.com",))
    (r,) = run.results
    assert r.outcome is Outcome.ERROR and r.error_kind == "tls_error"
    assert r.error.startswith("TLS: CERTIFICATE_VERIFY_FAILED (") and "--ca-file" not in r.error, r.error
    assert r.error.endswith("): connect by a name or address the certificate is for, or --insecure"), r.error


async def test_wss_insecure_skips_verification(tmp_path):
    run = await run_tls(tmp_path, insecure=True)
    assert run.results[0].outcome is Outcome.PASSED


def _contexts() -> set[int]:
    import gc
    # type(), not isinstance(): a dead weak proxy among the objects raises ReferenceError when asked its class
    return {id(o) for o in gc.get_objects() if issubclass(type(o), ssl.SSLContext)}


def _contexts_with_cas() -> set[int]:
    import gc
    return {id(o) for o in gc.get_objects()
            if issubclass(type(o), ssl.SSLContext) and o.cert_store_stats()["x509_ca"]}


def test_connections_share_one_tls_context_until_the_ca_file_changes(tmp_path):
    """Every wss:// connection (and https SSE chat) loaded the CA bundle again (~26 ms of CPU each): one context per CA
    file now, built again when the file is rewritten (a rotated CA is trusted at the next connection)."""
    import os

    from harness.transports.base import ConnectSettings, ssl_context
    ca_file = tmp_path / "ca.pem"
    first = trustme.CA()
    first.cert_pem.write_to_path(str(ca_file))
    settings = ConnectSettings(url="wss://127.0.0.1:1/ws", ca_file=str(ca_file))
    a = ssl_context(settings)
    assert a is not None and ssl_context(settings) is a
    assert ssl_context(ConnectSettings(url="wss://127.0.0.1:2/x", ca_file=str(ca_file))) is a  # per CA file, not URL
    insecure = ssl_context(ConnectSettings(url="wss://127.0.0.1:1/ws", ca_file=str(ca_file), insecure=True))
    assert insecure is not a and insecure is not None and insecure.verify_mode is ssl.CERT_NONE
    assert a.verify_mode is ssl.CERT_REQUIRED and a.check_hostname
    second = trustme.CA()
    second.cert_pem.write_to_path(str(ca_file))
    stat = ca_file.stat()
    os.utime(ca_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    b = ssl_context(settings)
    assert b is not a and b.get_ca_certs() != a.get_ca_certs()
    assert ssl_context(ConnectSettings(url="ws://127.0.0.1:1/ws", ca_file=str(ca_file))) is None


async def test_a_run_after_the_ca_is_rotated_trusts_the_new_ca(tmp_path):
    run = await run_tls(tmp_path, ca_file="CA")
    assert [r.outcome for r in run.results] == [Outcome.PASSED]
    run = await run_tls(tmp_path, ca_file="CA")  # a new CA written to the same file, the server's cert from it
    assert [r.outcome for r in run.results] == [Outcome.PASSED], run.results[0].violations


async def test_sse_over_plain_http_loads_no_ca_bundle():
    """httpx's default loaded certifi's bundle into a context of every SSE client (~29 ms of CPU a chat), for a
    connection that never speaks TLS; even a bare context is ~1 ms to make: one is shared."""
    from harness.transports.base import ConnectSettings
    from harness.transports.sse import SSETransport
    before, contexts_before = _contexts_with_cas(), _contexts()
    transports = [SSETransport(ConnectSettings(url="http://127.0.0.1:1/agent")) for _ in range(3)]
    try:
        for t in transports:
            await t.open()
        assert _contexts_with_cas() - before == set()
        assert len(_contexts() - contexts_before) <= 1  # one context shared by every chat (≈1 ms each to make)
    finally:
        for t in transports:
            await t.close()


# A CA file rewritten under a long run (a monitor, a load test): its content is read again at the next connection.
# What a rewrite may leave there for a moment (the file emptied before it is written, or removed before it is put
# back) or a hostile one for good (a FIFO, a device).
BROKEN_CA = {"emptied": lambda path: path.write_bytes(b""), "deleted": lambda path: None,
             "fifo": lambda path: os.mkfifo(path),
             "device": lambda path: path.symlink_to("/dev/zero")}
CLIENTS = {"sse": ("https", "ag-ui", "none"), "picows": ("wss", "netra", "none"),
           "websockets": ("wss", "netra", "deflate")}


@pytest.mark.parametrize("broken", BROKEN_CA)
@pytest.mark.parametrize("client", CLIENTS)
def test_a_ca_file_that_turned_bad_under_a_run_is_a_tls_error_on_every_client(tmp_path, refused_port, client, broken):
    """The CA file checked at start (`--ca-file`: a regular file, a PEM bundle) is read again when it changes: an
    SSE chat raised OpenSSL's error out of the run (a monitor's probe "failed" uncounted, as a bug), where the
    WebSocket clients say `tls_error` (but `refused`, "unreachable", for a file removed); and a FIFO or a device there
    was opened, and read, on the event loop: every client hung for good. A `tls_error` now, on every client, counted
    as a connection attempt; nothing is opened."""
    scheme, profile, compression = CLIENTS[client]
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    ca_file.unlink()
    BROKEN_CA[broken](ca_file)
    sc = Scenario.model_validate({"name": "tls", "connect_timeout": "3s", "compression": compression,
                                  "expect": {"deadline": "3s", "settle": "0.05s"}})
    target = Target(url=f"{scheme}://127.0.0.1:{refused_port()}/agent", profile=load_profile(profile), name="tls",
                    ca_file=str(ca_file))
    target.compression = compression
    sink = Counted()
    done: dict[str, Any] = {}

    def chat() -> None:
        try:
            done["run"] = asyncio.run(run_scenario(sc, target, sink))
        except BaseException as exc:  # what the run raised, for the assertion below
            done["raised"] = exc

    worker = threading.Thread(target=chat, daemon=True)
    worker.start()
    worker.join(60)  # a hang fails here
    if worker.is_alive() and broken == "fifo":
        os.close(os.open(ca_file, os.O_WRONLY | os.O_NONBLOCK))  # the reader blocked in open(): let it go
    assert not worker.is_alive(), "the chat hung on the CA file"
    assert "raised" not in done, repr(done.get("raised"))
    (result,) = done["run"].results
    assert (result.outcome, result.error_kind) == (Outcome.ERROR, "tls_error"), (result.error_kind, result.error)
    assert "CA file" in (result.error or ""), result.error
    assert sink.attempts == ["tls_error"]


class Counted(Sink):
    def __init__(self) -> None:
        self.attempts: list[str] = []

    def connection_attempt(self, scenario: str, result: str) -> None:
        self.attempts.append(result)
