"""The garbage collector around `chatprobe run`: held off while start-up loads, let go before the first chat, and
never left off when start-up fails or main() returns into a process that goes on."""
from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest

from harness import collector
from harness.cli import main


@pytest.fixture
def collector_restored():
    """tune_collector() changes the process's thresholds and freezes what exists: put both back."""
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    (gc.enable if enabled else gc.disable)()
    collector._paused = False


def test_pause_holds_collections_until_tune_collector(collector_restored):
    with collector.paused_for_startup():
        assert not gc.isenabled()
        collector.tune_collector()
        assert gc.isenabled()  # the chats run with the collector on
        assert gc.get_threshold()[0] >= collector.YOUNG_COLLECTION
    assert gc.isenabled()


def test_pause_ends_when_start_up_fails(collector_restored):
    with pytest.raises(RuntimeError), collector.paused_for_startup():
        assert not gc.isenabled()
        raise RuntimeError("a usage error before the chats")
    assert gc.isenabled()


def test_pause_leaves_a_collector_someone_else_disabled_alone(collector_restored):
    gc.disable()
    with collector.paused_for_startup():
        collector.tune_collector()
        assert not gc.isenabled()  # not ours to enable
    assert not gc.isenabled()


def test_main_returns_with_the_collector_on_after_a_usage_error(tmp_path, capsys, collector_restored):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nusers: many\n")
    assert main(["run", str(bad)]) == 2
    assert gc.isenabled()


def test_no_collection_during_run_start_up_and_on_during_the_chats(tmp_path):
    """In a real `chatprobe run` against the embedded agentsim: no collection between main() and the first chat,
    the collector on (with the tuned threshold) when the chats start, and the run passing."""
    probe = tmp_path / "probe.py"
    out = tmp_path / "seen.json"
    probe.write_text(f"""
import gc, json, sys
from harness import collector
from harness.cli import main
seen = {{}}
tune = collector.tune_collector
def observed():
    seen["collections_before"] = sum(g["collections"] for g in gc.get_stats()) - start
    tune()
    seen["enabled_after"] = gc.isenabled()
    seen["young"] = gc.get_threshold()[0]
collector.tune_collector = observed
start = sum(g["collections"] for g in gc.get_stats())
code = main(["run", "basic", "--quiet"])
seen["code"] = code
seen["enabled_at_exit"] = gc.isenabled()
open({str(out)!r}, "w").write(json.dumps(seen))
""")
    proc = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(out.read_text())
    assert seen == {"collections_before": 0, "enabled_after": True, "young": collector.YOUNG_COLLECTION,
                    "code": 0, "enabled_at_exit": True}


def test_commands_that_run_no_chats_run_with_the_collector_on(tmp_path):
    """`check` (like sim, monitor and proxy) can run for long: the pause ends before it starts its work."""
    recording = tmp_path / "r.jsonl"
    recording.write_text('{"t": 1.0, "conn": "c1", "dir": "in", "frame": {"type": "agent_started"}}\n')
    probe = tmp_path / "probe.py"
    probe.write_text("""
import gc, sys
from harness import offline
from harness.cli import main
check_files = offline.check_files
def observed(*a, **k):
    print("collector on while checking:", gc.isenabled(), file=sys.stderr)
    return check_files(*a, **k)
offline.check_files = observed
sys.exit(main(sys.argv[1:]))
""")
    proc = subprocess.run([sys.executable, str(probe), "check", str(recording)], capture_output=True, text=True,
                          timeout=120)
    assert "collector on while checking: True" in proc.stderr, proc.stderr
