"""Mutual TLS: a server that requires a client certificate, met by every client chatprobe connects with (picows,
websockets, SSE, and the Locust user's WebSocket and SSE clients), with `--client-cert`/`--client-key` and without."""
from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from agentsim.agui import AguiSim
from agentsim.server import SimConfig
from harness.profiles import load_profile
from harness.results import ChatResult
from harness.runner import run_scenario
from harness.scenario import Scenario
from harness.sinks import Sink
from harness.targets import Target

from .tls_front import TlsFront

pytestmark = pytest.mark.timeout(120)

# client: (scheme, compression, driver). websockets is the client of a connection that offers deflate.
CLIENTS = {"picows": ("wss", "none", "run"), "websockets": ("wss", "deflate", "run"), "sse": ("https", "none", "run"),
           "gevent-ws": ("wss", "none", "locust"), "gevent-sse": ("https", "none", "locust")}


def scenario(compression: str = "none") -> Scenario:
    """One chat; `compression: deflate` makes `chatprobe run` take the websockets client (the scenario's compression
    is the run's, whatever the Target says). What is tested is the certificate, not how fast a chat is: its waits are
    bounds against a hang, wide for a busy machine (the default 2 s first-event limit failed a chat as an R9, and a
    5 s deadline ended one `incomplete`, under a load of 10-15 on 2 cores); a chat that passes ends at its last
    event, not at these."""
    return Scenario.model_validate({"name": "mtls", "connect_timeout": "20s", "reconnect": False,
                                    "compression": compression,
                                    "expect": {"first_event_limit": "30s", "deadline": "30s", "settle": "0.05s"}})


SCENARIO = scenario()


@dataclass
class Pki:
    ca_file: str  # the server's CA, for --ca-file
    cert: str  # a client certificate the server trusts, its key in `key`
    key: str
    combined: str  # the same certificate and key in one file
    server: ssl.SSLContext  # requires a client certificate of the client CA


def make_pki(tmp_path: Path, host: str = "127.0.0.1") -> Pki:
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ca.issue_cert(host).configure_cert(server)
    server.verify_mode = ssl.CERT_REQUIRED
    client_ca.configure_trust(server)
    leaf = client_ca.issue_cert("probe@example.com")
    paths = {name: str(tmp_path / f"{name}.pem") for name in ("ca", "cert", "key", "combined")}
    server_ca.cert_pem.write_to_path(paths["ca"])
    leaf.cert_chain_pems[0].write_to_path(paths["cert"])
    leaf.private_key_pem.write_to_path(paths["key"])
    leaf.private_key_and_cert_chain_pem.write_to_path(paths["combined"])
    return Pki(paths["ca"], paths["cert"], paths["key"], paths["combined"], server)


@asynccontextmanager
async def agui_behind(context: ssl.SSLContext) -> AsyncIterator[tuple[str, str, TlsFront, TlsFront]]:
    """agentsim in AG-UI (no auth) behind two TLS fronts: (its wss:// URL, its https:// URL, the fronts)."""
    sim = AguiSim(SimConfig(host="127.0.0.1", port=0, no_auth=True, protocol="ag-ui", think=0.001,
                            tool_latency=0.001))
    await sim.start()
    try:
        assert sim.ws_port is not None and sim.port is not None
        with TlsFront(context, sim.ws_port) as ws, TlsFront(context, sim.port) as http:
            yield f"wss://127.0.0.1:{ws.port}/agent", f"https://127.0.0.1:{http.port}/agent", ws, http
    finally:
        await sim.stop()


def locust_chat(target: Target) -> ChatResult:
    """One chat of the Locust user's client (harness/gevent_client.py), on this thread."""
    from harness.gevent_client import SyncSession

    session = SyncSession(target, "u1", SCENARIO.name, Sink(), connect_timeout=SCENARIO.connect_timeout)
    call = SCENARIO.user_script(target.profile).chat()
    try:
        return session.chat(call.content, call.expectations, call.options)
    finally:
        session.close()


async def one_chat(client: str, wss: str, https: str, **tls: str | None) -> ChatResult:
    scheme, compression, driver = CLIENTS[client]
    target = Target(url=wss if scheme == "wss" else https, profile=load_profile("ag-ui"), name="mtls",
                    compression=compression, **tls)  # type: ignore[arg-type]
    if driver == "locust":
        return await asyncio.wait_for(asyncio.to_thread(locust_chat, target), 60)
    (result,) = (await asyncio.wait_for(run_scenario(scenario(compression), target), 60)).results
    return result


@pytest.mark.parametrize("key_beside", [True, False], ids=["key-file", "one-file"])
@pytest.mark.parametrize("client", CLIENTS)
async def test_a_server_that_requires_a_client_certificate_accepts_the_one_given(tmp_path, client, key_beside):
    """`--client-cert PEM [--client-key PEM]`: every client shows it, and the chat passes (there was no way to give
    one: every chat with such a server failed)."""
    pki = make_pki(tmp_path)
    tls = {"client_cert": pki.cert, "client_key": pki.key} if key_beside else {"client_cert": pki.combined}
    async with agui_behind(pki.server) as (wss, https, ws_front, http_front):
        result = await one_chat(client, wss, https, ca_file=pki.ca_file, **tls)
    assert (result.outcome.value, result.error) == ("passed", None), result.violations
    fronts = ws_front.handshakes + http_front.handshakes
    assert fronts and set(fronts) == {"ok"}, fronts
    assert "probe@example.com" in " ".join(ws_front.peer_certs + http_front.peer_certs)


def test_the_client_certificate_is_loaded_once_and_again_when_rewritten(tmp_path):
    """One shared context per certificate and key as for the CA file (loaded once, not per connection), made anew
    when either file is rewritten (a rotated certificate is shown at the next connection); a file that turned bad
    under a run (emptied, a FIFO put in its place) fails the connection as a tls_error naming it, never opened."""
    import os

    from harness.transports.base import ConnectFailed, ConnectSettings, ssl_context

    pki = make_pki(tmp_path)
    settings = ConnectSettings(url="wss://127.0.0.1:1/agent", ca_file=pki.ca_file, client_cert=pki.cert,
                               client_key=pki.key)
    first = ssl_context(settings)
    assert first is not None and ssl_context(settings) is first
    assert ssl_context(ConnectSettings(url="wss://127.0.0.1:1/agent", ca_file=pki.ca_file)) is not first
    stat = os.stat(pki.key)
    os.utime(pki.key, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert ssl_context(settings) is not first
    Path(pki.key).write_bytes(b"")
    with pytest.raises(ConnectFailed) as failed:
        ssl_context(settings)
    assert failed.value.kind == "tls_error" and "the client key 'key.pem' cannot be loaded" in str(failed.value)
    os.unlink(pki.cert)
    os.mkfifo(pki.cert)
    with pytest.raises(ConnectFailed) as failed:
        ssl_context(settings)
    assert str(failed.value) == "TLS: the client certificate 'cert.pem' cannot be loaded: not a regular file"


def test_a_client_certificate_rotated_within_one_tick_of_the_clock_gives_a_new_context(tmp_path):
    """A certificate and key rotated in place (another pair renamed over them, as a secret manager does) within one
    tick of the file system's clock keep their modification time: the shared context was keyed on it alone, and the
    old pair was shown until the next rewrite or the hour's end. Its inode and size tell it now."""
    import os

    from harness.transports.base import ConnectSettings, ssl_context

    pki = make_pki(tmp_path)
    settings = ConnectSettings(url="wss://127.0.0.1:1/agent", ca_file=pki.ca_file, client_cert=pki.cert,
                               client_key=pki.key)
    first = ssl_context(settings)
    assert first is not None and ssl_context(settings) is first
    for path in (pki.cert, pki.key):
        before = os.stat(path)
        rotated = Path(path).with_suffix(".new")
        rotated.write_bytes(Path(path).read_bytes() + b"\n")  # the same pair, another file of another size
        os.utime(rotated, ns=(before.st_atime_ns, before.st_mtime_ns))  # within the same tick of the clock
        os.replace(rotated, path)
        assert os.stat(path).st_mtime_ns == before.st_mtime_ns
        fresh = ssl_context(settings)
        assert fresh is not None and fresh is not first, path
        first = fresh


async def test_the_pytest_plugin_shows_its_client_certificate(pytester, tmp_path):
    """`--chatprobe-client-cert` (and `--chatprobe-client-key`) as `run`'s: the chat passes; without it the test
    fails with the TLS failure's reason (the plugin had no way to give one)."""
    pki = make_pki(tmp_path)
    # (waits wide, as SCENARIO's: a first event past the default 2 s failed the chat on a busy machine, and the
    # failure's captured output showed the second run's refusal, not the first run's R9)
    pytester.makepyfile(test_mtls="def test_chat(chatprobe):\n"
                                  "    chatprobe.check(chatprobe.chat('hi', first_event_limit='30s', deadline=30))\n")
    async with agui_behind(pki.server) as (_, https, _ws_front, http_front):
        flags = ["-p", "no:cacheprovider", "-rA", "--chatprobe-target", https, "--chatprobe-profile", "ag-ui",
                 "--chatprobe-ca-file", pki.ca_file]
        shown = await asyncio.to_thread(pytester.runpytest_subprocess, *flags, "--chatprobe-client-cert", pki.cert,
                                        "--chatprobe-client-key", pki.key, timeout=60)
        refused = await asyncio.to_thread(pytester.runpytest_subprocess, *flags, timeout=60)
        untrusted = await asyncio.to_thread(pytester.runpytest_subprocess, *flags[:-2], timeout=60)
    shown.assert_outcomes(passed=1)
    refused.assert_outcomes(failed=1)
    # The advice names the plugin's own flags (it said run's --client-cert, --ca-file and --insecure, which pytest
    # does not take: the plugin has no --insecure at all).
    refused.stdout.fnmatch_lines(["*TLSV13_ALERT_CERTIFICATE_REQUIRED: the server requires a client certificate: "
                                  "give one with --chatprobe-client-cert, at https://*"])
    untrusted.assert_outcomes(failed=1)
    untrusted.stdout.fnmatch_lines(["*CERTIFICATE_VERIFY_FAILED (unable to get local issuer certificate): give the "
                                    "server's CA with --chatprobe-ca-file, at https://*"])
    assert "--insecure" not in untrusted.stdout.str() and " --client-cert" not in refused.stdout.str()
    assert http_front.handshakes[0] == "ok" and "probe@example.com" in http_front.peer_certs[0]


def test_a_client_certificate_rewritten_past_its_bound_under_a_run_fails_the_connection_unread(tmp_path):
    """FAILED on the old code: a certificate file rewritten under a run into one PEM block of megabytes of base64 was
    loaded by OpenSSL at the next connection, on the event loop, its memory the file's and more; now it is a
    tls_error naming it, never read (and so is a CA file so rewritten)."""
    from harness.transports.base import MAX_PEM_FILE, ConnectFailed, ConnectSettings, ssl_context

    pki = make_pki(tmp_path)
    settings = ConnectSettings(url="wss://127.0.0.1:1/agent", ca_file=pki.ca_file, client_cert=pki.cert,
                               client_key=pki.key)
    assert ssl_context(settings) is not None
    for path, what in ((pki.cert, "client certificate"), (pki.ca_file, "CA file")):
        kept = Path(path).read_bytes()
        with open(path, "wb") as f:
            f.write(b"-----BEGIN CERTIFICATE-----\n" + (b"A" * 64 + b"\n") * (MAX_PEM_FILE // 65 + 1))
        with pytest.raises(ConnectFailed) as failed:
            ssl_context(settings)
        assert failed.value.kind == "tls_error", failed.value
        assert str(failed.value).startswith(f"TLS: the {what} {Path(path).name!r} cannot be loaded: "), failed.value
        assert "over the 16 MiB a PEM file may be" in str(failed.value), failed.value
        Path(path).write_bytes(kept)
