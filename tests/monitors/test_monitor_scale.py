"""`chatprobe monitor` over many targets: what the targets have in common is loaded once, and a probe's verdict does
not depend on how many others run beside it."""
from __future__ import annotations

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
