"""The proxy prepares its profile (the decoder, what its checks load: AG-UI's schema, a few tenths of a second of
imports) and what reads a user's JWT (PyJWT, as long again) as it starts, not on its first user's connection, when the
event loop it held was every other user's too."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# In a fresh interpreter (this one may have imported the schema for another test already): what the proxy's state of
# chats (LiveChats, made before it listens) has loaded, and whether the first connection (a user with a JWT) still
# loads anything.
PROBE = """
import sys
from prometheus_client import CollectorRegistry
from harness.profiles import load_profile
from harness.scenario import Expect, expectations_for
from monitors.metrics import ChatMetrics, MetricsSink
from monitors.proxy import LiveChats

agui = load_profile("ag-ui")
before = set(sys.modules)
live = LiveChats(agui, MetricsSink(ChatMetrics(CollectorRegistry()), "up", "live"),
                 expectations_for(agui, Expect()), "live", 0.05)
started = set(sys.modules)
live.connection("someone")
from monitors.frontdoor import credentials_identity
credentials_identity({"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJl"})
print("ag_ui.core" in started - before, sorted(set(sys.modules) - started))
"""


def test_the_profile_and_the_jwt_reader_are_loaded_as_the_proxy_starts_not_on_its_first_connection():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=True).stdout.strip()
    assert out == "True []", out  # loaded as it started; nothing more on the first user's connection
