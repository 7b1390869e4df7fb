"""Every TLS failure a wss:// or https:// target can meet, on every client chatprobe connects with (picows, websockets,
SSE, the Locust user's WebSocket and SSE clients): a classified connection failure within the connect deadline, in
words of its own that say what to do (docs/protocol.md, "TLS failures"), never a traceback.

FAILED on the code before: an expired certificate said only "certificate has expired"; a server requiring a client
certificate that was not given was `refused`, "the server closed the connection during the handshake" (picows,
websockets) or "network error" (SSE); one refusing the certificate shown, likewise; a plain-HTTP server at a wss://
URL was `refused` on picows and websockets and "TLS: UNEXPECTED_EOF_WHILE_READING" on the others; the Locust user's
SSE client said h11's "can't handle event type ConnectionClosed" of a server that closed without an answer, and no
client said what a close without an answer at a ws:// or http:// URL may be (a TLS server's)."""
from __future__ import annotations

import asyncio
import datetime
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trustme

from agentsim.agui import AguiSim
from agentsim.server import SimConfig
from harness.transports.base import TLS_CUT

from .test_mutual_tls import CLIENTS, one_chat
from .tls_front import TlsFront

pytestmark = pytest.mark.timeout(180)
CONNECT_TIMEOUT = 5.0  # the scenario's connect_timeout (test_mutual_tls.scenario)
# A TLS server at a ws:// or http:// URL: it closes without a word, as any server's close reads (the kind stays the
# transport's), with what it may be said.
NO_ANSWER = {"wss": ("refused", "the server closed the connection during the handshake (a TLS server does so at a "
                                "ws:// URL: is it wss://?)"),
             "https": ("protocol_error", "HTTP protocol error: Server disconnected without sending a response. (a TLS "
                                         "server does so at an http:// URL: is it https://?)")}


def server_context(ca: trustme.CA, *names: str, expired: bool = False,
                   client_ca: trustme.CA | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    dates = {"not_before": datetime.datetime(2020, 1, 1), "not_after": datetime.datetime(2021, 1, 1)} if expired \
        else {}
    ca.issue_cert(*names, **dates).configure_cert(context)  # type: ignore[arg-type]
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        client_ca.configure_trust(context)
    return context


@asynccontextmanager
async def answers_400() -> AsyncIterator[int]:
    """A plain-HTTP server that answers anything with a 400, as nginx answers a TLS ClientHello: its port."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def servers(tmp_path):
    """AG-UI agentsim, plain, and behind TLS fronts that fail each way: {case: (wss URL, https URL)}, and the files
    of the server's CA and of a client certificate its client CA does not trust."""
    ca, client_ca, stranger = trustme.CA(), trustme.CA(), trustme.CA()
    ca_file = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    untrusted = str(tmp_path / "untrusted.pem")
    stranger.issue_cert("probe@example.com").private_key_and_cert_chain_pem.write_to_path(untrusted)
    sim = AguiSim(SimConfig(host="127.0.0.1", port=0, no_auth=True, protocol="ag-ui", think=0.001,
                            tool_latency=0.001))
    await sim.start()
    contexts = {"unknown_ca": server_context(stranger, "127.0.0.1"),
                "other_name": server_context(ca, "chat.example.com"),
                "expired": server_context(ca, "127.0.0.1", expired=True),
                "client_cert": server_context(ca, "127.0.0.1", client_ca=client_ca)}
    fronts = [TlsFront(context, port) for context in contexts.values() for port in (sim.ws_port, sim.port)]
    try:
        async with answers_400() as plain400:
            for front in fronts:
                front.__enter__()
            urls = {case: (f"wss://127.0.0.1:{fronts[2 * i].port}/agent", f"https://127.0.0.1:{fronts[2 * i + 1].port}"
                                                                          "/agent")
                    for i, case in enumerate(contexts)}
            urls["plain_server"] = (f"wss://127.0.0.1:{sim.ws_port}/agent", f"https://127.0.0.1:{sim.port}/agent")
            urls["plain_400"] = (f"wss://127.0.0.1:{plain400}/agent", f"https://127.0.0.1:{plain400}/agent")
            ws, http = urls["client_cert"]
            urls["tls_at_plain"] = (ws.replace("wss:", "ws:"), http.replace("https:", "http:"))
            yield urls, ca_file, untrusted
    finally:
        for front in fronts:
            front.__exit__()
        await sim.stop()


# case: (the result, words the reason holds), `untrusted` given as the client certificate where asked
CASES = {
    "unknown_ca": ("tls_error", "give the server's CA with --ca-file"),
    "other_name": ("tls_error", "connect by a name or address the certificate is for"),
    "expired": ("tls_error", "(certificate has expired): the server's certificate is out of its validity dates"),
    "client_cert": ("tls_error", "the server requires a client certificate"),
    "client_cert_refused": ("tls_error", "the server refused the client certificate shown (--client-cert)"),
    "plain_server": ("tls_error", TLS_CUT),
    "plain_400": ("tls_error", "the server answered in plain text, not TLS (is it a ws:// or http:// one?)"),
    "tls_at_plain": (None, None),  # NO_ANSWER, by transport
}


@pytest.mark.parametrize("client", CLIENTS)
async def test_each_tls_failure_is_its_own_classified_outcome_on_every_client(servers, client):
    urls, ca_file, untrusted = servers
    reasons = {}
    for case, (kind, words) in CASES.items():
        wss, https = urls["client_cert" if case == "client_cert_refused" else case]
        tls = {"ca_file": None if case == "unknown_ca" else ca_file,
               "client_cert": untrusted if case == "client_cert_refused" else None}
        start = time.monotonic()
        result = await one_chat(client, wss, https, **tls)
        took = time.monotonic() - start
        if kind is None:
            kind, words = NO_ANSWER[CLIENTS[client][0]]
        assert (result.outcome.value, result.error_kind) == ("error", kind), (case, result.error_kind, result.error)
        assert words in (result.error or ""), (case, result.error)
        assert took < CONNECT_TIMEOUT, (case, took)
        reasons[case] = result.error
    assert len(set(reasons.values())) == len(reasons), reasons  # each its own words
