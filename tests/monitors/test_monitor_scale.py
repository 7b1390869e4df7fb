"""`chatprobe monitor` over many targets: what the targets have in common is loaded once, and a probe's verdict does
not depend on how many others run beside it."""
from __future__ import annotations

import asyncio
import collections
import re
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

from bench.monitor_targets import closed_ports
from monitors.metrics import ChatMetrics
from monitors.monitor import SPREAD_STEP, Monitor, load_config, probes_from_config

ROOT = Path(__file__).resolve().parents[2]


def test_targets_share_the_profile_and_the_scenario_they_name(tmp_path):
    """Loaded per target, 1,000 targets of one profile read its YAML and compiled its decoder 1,000 times (~10 ms of CPU
    each, the event loop's at their first probe): one Profile and one (capped) Scenario per name or path now."""
    (tmp_path / "mine.yaml").write_text("name: mine\nusers: 1\nchats_per_user: 1\nmessage: hi\n")
    cfg = tmp_path / "m.yaml"
    cfg.write_text("scenarios: [probe, mine.yaml]\ntargets:\n"
                   + "".join(f"  t{i}: {{url: 'ws://127.0.0.1:{9000 + i}/ws', auth: none}}\n" for i in range(3))
                   + "  ag: {url: 'http://127.0.0.1:9100/agent', profile: ag-ui, auth: none, scenarios: [probe]}\n")
    probes = probes_from_config(str(cfg), load_config(str(cfg)), timeout=5)
    netra = [p for p in probes if p.target.name != "ag"]
    assert len(netra) == 6 and len({id(p.target.profile) for p in netra}) == 1
    assert probes[-1].target.profile.name == "ag-ui"
    for name in ("probe", "mine"):
        same = [p.scenario for p in netra if p.scenario.name == name]
        assert len(same) == 3 and all(s is same[0] for s in same)
        assert same[0].max_duration <= 5
    # Two builds are two loads: an edited file is read again.
    again = probes_from_config(str(cfg), load_config(str(cfg)), timeout=5)
    assert again[0].target.profile is not probes[0].target.profile


def test_once_over_a_thousand_closed_ports_reports_every_one_refused(tmp_path):
    """Started all at once, 1,000 probes' first steps held the one event loop for seconds, and connections refused at
    once were judged after their connect_timeout ran out: `timeout` (a different alert, a different page), and at
    3,000 targets no verdict at all. A probe's verdict is the target's, however many run beside it."""
    n = 1000
    ports = closed_ports(20)
    cfg = tmp_path / "m.yaml"
    cfg.write_text("targets:\n" + "".join(f"  t{i}: {{url: 'ws://127.0.0.1:{ports[i % len(ports)]}/ws', auth: none}}\n"
                                          for i in range(n)))
    out = subprocess.run([sys.executable, "-m", "harness", "monitor", "--config", str(cfg), "--once"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    lines = [line for line in out.stdout.splitlines() if " / probe: " in line]
    assert len(lines) == n, out.stderr[-2000:]
    kinds = collections.Counter(m.group(1) if (m := re.search(r"passed \((\w+):", line)) else line.split(": ", 1)[-1][:40]
                                  for line in lines)
    assert kinds == {"refused": n}, kinds.most_common(5)
    assert out.returncode == 3  # unreachable, as `run` says it


def _monitor(tmp_path, urls: list[str], interval: float) -> Monitor:
    cfg = tmp_path / "m.yaml"
    cfg.write_text("targets:\n" + "".join(f"  t{i}: {{url: '{url}', auth: none}}\n" for i, url in enumerate(urls)))
    probes = probes_from_config(str(cfg), load_config(str(cfg)), timeout=min(interval, 10))
    return Monitor(probes, interval=interval, timeout=min(interval, 10), metrics=ChatMetrics(CollectorRegistry()))


def test_the_daemon_spreads_its_probes_over_the_interval(tmp_path):
    """Each probe starts at its own offset into the interval, as Prometheus spreads its scrapes: the same for the same
    target and scenario, all within the interval, as many in each part of it."""
    interval = 15.0
    mon = _monitor(tmp_path, ["ws://127.0.0.1:9/ws"] * 1000, interval)
    offsets = [mon.offset(p) for p in mon.probes]
    assert all(0 <= o < interval for o in offsets)
    per_second = collections.Counter(int(o) for o in offsets)
    assert len(per_second) == 15 and all(40 <= n <= 100 for n in per_second.values()), per_second  # ~67 each
    again = _monitor(tmp_path, ["ws://127.0.0.1:9/ws"] * 1000, interval)
    assert [again.offset(p) for p in again.probes] == offsets
    # A few probes wait a few steps at most, whatever the interval: a lone target is probed at once.
    few = _monitor(tmp_path, ["ws://127.0.0.1:9/ws"] * 3, 3600)
    assert all(few.offset(p) < 3 * SPREAD_STEP for p in few.probes)


async def test_the_daemon_does_not_start_every_probe_at_once(tmp_path):
    """Stopped as the first probe's connection arrives, the daemon has started no other probe: each waits for its
    offset (it started all 20 together, each running to its end after the stop)."""
    accepted: list[int] = []
    first = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        first.set()
        writer.close()  # no upgrade: the probe fails at once

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    n = 20
    mon = _monitor(tmp_path, [f"ws://127.0.0.1:{port}/ws"] * n, 3600)
    stop = asyncio.Event()
    try:
        async with asyncio.timeout(60):
            task = asyncio.create_task(mon.run_forever(stop))
            await first.wait()
            stop.set()
            await task
    finally:
        server.close()
        await server.wait_closed()
    assert 1 <= len(accepted) < n
