"""`chatprobe monitor` over many targets: what the targets have in common is loaded once, and a probe's verdict does
not depend on how many others run beside it."""
from __future__ import annotations

import collections
import re
import socket
import subprocess
import sys
from pathlib import Path

from monitors.monitor import load_config, probes_from_config

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


def _closed_ports(n: int) -> list[int]:
    """Loopback ports nothing listens on (bound, then closed): a connection to one is refused at once."""
    ports = []
    for _ in range(n):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return ports


def test_once_over_a_thousand_closed_ports_reports_every_one_refused(tmp_path):
    """Started all at once, 1,000 probes' first steps held the one event loop for seconds, and connections refused at
    once were judged after their connect_timeout ran out: `timeout` (a different alert, a different page), and at
    3,000 targets no verdict at all. A probe's verdict is the target's, however many run beside it."""
    n = 1000
    ports = _closed_ports(20)
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

