"""`chatprobe proxy` in front of an upstream over TLS with a private CA that requires a client certificate: on the
WebSocket side (wss://) and the HTTP + SSE side (https://), --upstream-ca-file verifies it and
--upstream-client-cert/--upstream-client-key answer its request for a certificate (the proxy trusted the system's
CAs only, and had no certificate to show: every chat through it was a 502)."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from prometheus_client import CollectorRegistry

from harness.profiles import load_profile
from harness.runner import run_scenario
from harness.scenario import Expect, expectations_for
from harness.targets import Target
from monitors.metrics import ChatMetrics, MetricsSink
from monitors.proxy import LiveChats, Proxy, build_parser, start_proxy, upstream_tls
from monitors.sse_proxy import SSEProxy, start_sse_proxy

from .conftest import chatprobe_cli as run_cli
from .test_mutual_tls import SCENARIO, agui_behind, make_pki

pytestmark = pytest.mark.timeout(120)
AGUI = load_profile("ag-ui")


@asynccontextmanager
async def proxy_for(upstream: str, *flags: str) -> AsyncIterator[tuple[str, ChatMetrics]]:
    """The proxy of `chatprobe proxy --upstream UPSTREAM FLAGS…` on a free port: (its URL, its metrics)."""
    args = build_parser().parse_args(["--upstream", upstream, *flags])
    tls = upstream_tls(args, upstream.split(":", 1)[0])
    metrics = ChatMetrics(CollectorRegistry())
    sink = MetricsSink(metrics, "upstream", "live")
    live = LiveChats(AGUI, sink, expectations_for(AGUI, Expect(deadline="5s")), "live", 0.05)
    sse = upstream.startswith("https")
    if sse:
        server = await start_sse_proxy(SSEProxy(upstream, live, tls=tls), "127.0.0.1", 0)
    else:
        server = await start_proxy(Proxy(upstream, live, tls=tls), "127.0.0.1", 0)
    try:
        yield f"{'http' if sse else 'ws'}://127.0.0.1:{server.sockets[0].getsockname()[1]}/agent", metrics
    finally:
        server.close()
        async with asyncio.timeout(10):
            await server.wait_closed()
        live.stop()


def attempts(metrics: ChatMetrics) -> dict[str, float]:
    out = {}
    for result in ("ok", "refused", "timeout", "tls_error", "auth_failed", "protocol_error"):
        value = metrics.registry.get_sample_value("chatprobe_connections_total",
                                                  {"target": "upstream", "scenario": "live", "source": "live",
                                                   "result": result})
        if value:
            out[result] = value
    return out


async def chat_through(url: str) -> str:
    (result,) = (await asyncio.wait_for(run_scenario(SCENARIO, Target(url=url, profile=AGUI, name="p")), 60)).results
    return result.outcome.value


@pytest.mark.parametrize("side", ["wss", "https"])
async def test_the_proxy_verifies_its_upstream_with_its_ca_and_shows_its_client_certificate(tmp_path, side, caplog):
    pki = make_pki(tmp_path)
    async with agui_behind(pki.server) as (wss, https, ws_front, http_front):
        upstream = (wss if side == "wss" else https).removesuffix("/agent")
        front = ws_front if side == "wss" else http_front
        flags = ["--upstream-ca-file", pki.ca_file, "--upstream-client-cert", pki.cert, "--upstream-client-key",
                 pki.key]
        async with proxy_for(upstream, *flags) as (url, metrics):
            assert await chat_through(url) == "passed"
            assert attempts(metrics) == {"ok": 1.0}
        assert "probe@example.com" in " ".join(front.peer_certs)
        # Without the upstream's CA: the system's CAs do not know it; without the certificate: the upstream refuses.
        caplog.set_level(logging.WARNING, logger="chatprobe.proxy")
        async with proxy_for(upstream, "--upstream-client-cert", pki.combined) as (url, metrics):
            assert await chat_through(url) == "error"
            assert attempts(metrics) == {"tls_error": 1.0}
        # why, once, in the proxy's own flags (a 502 and a count said only that it failed)
        (said,) = [r.getMessage() for r in caplog.records if "TLS failed" in r.getMessage()]
        assert "give the server's CA with --upstream-ca-file" in said and "--insecure" not in said, said
        caplog.clear()
        async with proxy_for(upstream, "--upstream-ca-file", pki.ca_file) as (url, metrics):
            assert await chat_through(url) == "error"
            assert attempts(metrics) == {"tls_error": 1.0}  # the upstream's alert (certificate required), read
        (said,) = [r.getMessage() for r in caplog.records if "TLS failed" in r.getMessage()]
        assert "the server requires a client certificate: give one with --upstream-client-cert" in said, said


@pytest.mark.parametrize("flags, needles", [
    (["--upstream", "ws://127.0.0.1:9", "--upstream-ca-file", "CA"], ["--upstream-ca-file", "wss:// or https://"]),
    (["--upstream", "wss://127.0.0.1:9", "--upstream-client-cert", "CERT", "--upstream-client-key", "ENCRYPTED"],
     ["--upstream-client-key", "encrypted.pem", "passphrase-protected"]),
    (["--upstream", "https://127.0.0.1:9", "--upstream-client-key", "KEY"],
     ["--upstream-client-key", "give the certificate with --upstream-client-cert"]),
    (["--upstream", "https://127.0.0.1:9", "--upstream-ca-file", "KEY"], ["--upstream-ca-file", "not a PEM bundle"]),
])
async def test_an_upstream_tls_file_it_cannot_use_is_a_usage_error(tmp_path, flags, needles):
    from tests.harness.test_client_cert_refusals import pems

    p = pems(tmp_path)
    files = {"CA": p["cert"], "CERT": p["cert"], "KEY": p["key"], "ENCRYPTED": p["encrypted"]}
    code, out = await run_cli("proxy", "--profile", "ag-ui", "--metrics-listen", "127.0.0.1:0",
                              *[files.get(f, f) for f in flags])
    assert code == 2 and "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    for needle in needles:
        assert needle in out, out
