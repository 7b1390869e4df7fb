"""The compiled decoder of a user's profile at the size the YAML bounds allow: its source grows with the profile, not
with containers x names (a 1,000 x 1,000 profile made a million lines and a MemoryError), and it decodes as the
reference does."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.profiles import MAX_NAMES, load_profile

from .test_decode_differential import _same, reference_decode, reference_decode_obj

NETRA = Path(__file__).parents[2] / "harness" / "profiles" / "netra.yaml"


def _big_profile(tmp_path: Path, n: int) -> Path:
    out: list[str] = []
    for line in NETRA.read_text(encoding="utf-8").splitlines():
        if line.startswith("lookup:"):
            # Odd container names too: the root, a path, unicode, names of the source's variables (dots only, '...', is
            # no path: refused, an empty part).
            out += ["lookup:", "  - ''", "  - 'frame.frame'", "  - frame", "  - _w.c0", "  - 'ünï'"]
            out += [f"  - c{i}" for i in range(n)]
        elif line.startswith("  run_id:"):
            out += ["  run_id:", "    - __class__", "    - nbytes", "    - ov", "    - 'ov.ov'"]
            out += [f"    - r{i}" for i in range(n)]
        else:
            out.append(line)
    path = tmp_path / "big.yaml"
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def test_a_profile_at_the_bounds_compiles_small_and_decodes_as_the_reference(tmp_path: Path) -> None:
    n = MAX_NAMES - 5  # the odd names below, and numbered ones up to the bound
    profile = load_profile(str(_big_profile(tmp_path, n)))
    dec = profile._decoder
    assert len(dec.source.splitlines()) < 3_000  # linear in the profile, never containers x names
    last = n - 1
    frames = [
        {"type": "agent_started", f"c{last}": {f"r{last}": "deep"}},
        {"type": "agent_started", "c3": [1], "c4": {"r0": "first", "nbytes": "later name"}},
        {"type": "agent_started", "frame": {"__class__": "odd"}, "c0": {"r5": "container order"}},
        {"type": "agent_started", "": {"ov": {"x": 1}}, "_w": {"c0": {"r1": 10**30}}},
        {"type": "agent_started", "ünï": {".": float("nan")}},
        {"type": "agent_started", "run_id": "root names come last here"},
        {"type": "agent_started", "c1": None, "c2": "str", "r3": "root"},
    ]
    for frame in frames:
        _same(profile.decode_obj(frame, 1.5), reference_decode_obj(dec, frame, 1.5))
        _same(profile.decode(json.dumps(frame), 1.5), reference_decode(dec, json.dumps(frame), 1.5))
    assert profile.decode_obj(frames[0], 1.5).run_id == "deep"


def test_a_profile_past_the_bounds_is_refused_before_any_decoder_is_made(tmp_path: Path) -> None:
    """A 1,000 x 1,000 profile made a million lines (a MemoryError); a 100 KB dotted path 700 MB: names are bounded
    (harness/profiles.py MAX_NAMES, MAX_NAME_PARTS), a usage error naming the file, line and field."""
    with pytest.raises(ConfigError, match="field 'lookup'"):
        load_profile(str(_big_profile(tmp_path, 1000)))
