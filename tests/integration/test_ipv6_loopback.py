"""IPv6 loopback ([::1]) targets for `chatprobe run`, `monitor` and `proxy`, over WebSocket and SSE, plain and over
TLS (a certificate for the address ::1, a client certificate asked for), as real processes.

FAILED on the code before: the proxy listening on [::1] said it listened on `ws://::1:PORT`, which is no URL (a
script that read its address from that line connected nowhere); the rest held and is kept as the guard."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import pytest

from agentsim.agui import AguiSim
from agentsim.server import SimConfig

from .conftest import chatprobe_cli
from .test_mutual_tls import make_pki
from .tls_front import TlsFront

pytestmark = pytest.mark.timeout(240)
SCENARIO = ("name: v6\nusers: 1\nchats_per_user: 1\nconnect_timeout: 10s\n"
            "expect: {first_event_limit: 20s, deadline: 20s, settle: 0.05s}\nobjectives: {time_to_first_event: {p95: 20s}}\n")


@pytest.fixture
async def sim_v6():
    sim = AguiSim(SimConfig(host="::1", port=0, no_auth=True, protocol="ag-ui", think=0.001, tool_latency=0.001))
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def test_run_and_monitor_reach_ipv6_loopback_plain_and_over_mutual_tls(tmp_path, sim_v6):
    assert sim_v6.url.startswith("http://[::1]:") and sim_v6.ws_url.startswith("ws://[::1]:")
    scenario = tmp_path / "v6.yaml"
    scenario.write_text(SCENARIO)
    pki = make_pki(tmp_path, host="::1")  # the server's certificate for the address ::1
    with TlsFront(pki.server, sim_v6.ws_port, host="::1") as ws_front, \
            TlsFront(pki.server, sim_v6.port, host="::1") as http_front:
        tls = ["--ca-file", pki.ca_file, "--client-cert", pki.cert, "--client-key", pki.key]
        for url, flags in ((sim_v6.ws_url, []), (sim_v6.url, []),
                           (f"wss://[::1]:{ws_front.port}/agent", tls), (f"https://[::1]:{http_front.port}/agent", tls)):
            report = tmp_path / "run.json"
            code, out = await chatprobe_cli("run", str(scenario), "--target", url, "--profile", "ag-ui", *flags,
                                            "--json", str(report))
            assert code == 0 and "Traceback" not in out, (url, out[-2000:])
            port = url.rsplit(":", 1)[1].split("/")[0]
            assert f'"[::1]:{port}"' in report.read_text()  # the target's name, as a URL writes the address
        assert set(ws_front.handshakes) == {"ok"} and set(http_front.handshakes) == {"ok"}
        code, out = await chatprobe_cli("monitor", "--target", f"wss://[::1]:{ws_front.port}/agent", "--profile",
                                        "ag-ui", "--once", *tls)
        assert code == 0 and "passed" in out and "Traceback" not in out, out[-2000:]


@pytest.mark.parametrize("side", ["ws", "http"])
async def test_the_proxy_listens_on_and_forwards_to_ipv6_loopback(tmp_path, sim_v6, side):
    upstream = (sim_v6.ws_url if side == "ws" else sim_v6.url).rsplit("/", 1)[0]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "harness", "proxy", "--upstream", upstream, "--profile", "ag-ui", "--listen", "[::1]:0",
        "--metrics-listen", "[::1]:0", env={**os.environ, "NO_COLOR": "1"}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()  # type: ignore[union-attr]
        found = re.search(r"listening on (\S+)", line)
        assert found and found.group(1).startswith(f"{side}://[::1]:"), line
        scenario = tmp_path / "v6.yaml"
        scenario.write_text(SCENARIO)
        code, out = await chatprobe_cli("run", str(scenario), "--target", f"{found.group(1)}/agent", "--profile",
                                        "ag-ui")
        assert code == 0, out[-2000:]
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0 and b"Traceback" not in err, err[-2000:]
