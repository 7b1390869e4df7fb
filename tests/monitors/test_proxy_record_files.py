"""`chatprobe proxy --record`: the files bound (Recorder.max_files) counts the part files of open connections, so
users who hold connections open (idle, or a hostile client's) can take every file: a failing user's chat, whose
recording the proxy keeps, then gets no file at all. Counted among the frames not recorded, as before, and said for
what it is: no file says where that connection's gap begins, nothing of its chats is in the recording. A real proxy
(in this process) in front of agentsim on loopback, the real client.

FAILED on the code before: the warning said "each file says where its gap begins" of a connection that had no file.
"""
from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from agentsim.server import AgentSim, SimConfig
from harness.client import Session
from harness.events import Outcome
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.targets import Target, TokenProvider
from monitors.metrics import ChatMetrics, MetricsSink
from monitors.proxy import Proxy, start_proxy

from .test_proxy import EXP, Recorder_, WatchedChats, until

pytestmark = pytest.mark.timeout(60)

FILES = 2


async def test_a_failing_chat_past_the_files_bound_is_said_to_have_no_file(tmp_path, caplog):
    secret = "a-jwt-secret-for-this-test-only-0123456789"
    sim = AgentSim(SimConfig(port=0, jwt_secret=secret, think=0.005, tool_latency=0.002,
                             faults=["drop:tool_completed=1.0"], seed=5))
    await sim.start()
    rec = tmp_path / "rec"
    live = WatchedChats(load_profile("netra"), MetricsSink(ChatMetrics(CollectorRegistry()), "sim", "live"), EXP,
                        "live", 0.05, Recorder(rec, keep_all=False, max_files=FILES))
    server = await start_proxy(Proxy(sim.url.rsplit("/", 1)[0], live), "127.0.0.1", 0)
    target = Target(url=f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws", profile=load_profile("netra"),
                    name="proxy", tokens=TokenProvider(jwt_secret=secret))
    caplog.set_level(logging.WARNING, logger="chatprobe.proxy")
    idle = [Session(target, f"idle{i}", "user", Recorder_()) for i in range(FILES)]
    try:
        for s in idle:  # connected, their welcome recorded: each holds a part file, open
            await s.connect()
        await until(lambda: live.recorder is not None and live.recorder._parts_files == FILES)
        victim = Session(target, "victim", "user", Recorder_())
        result = await victim.chat("What is 1 + 1? #tools=1", EXP)
        await victim.close()
        assert result.outcome is Outcome.FAILED  # its tool_completed dropped: a recording the proxy keeps
        await until(lambda: live.closed_count == 1)
        said = [r.getMessage() for r in caplog.records if "were not recorded" in r.getMessage()]
        assert len(said) == 1, said
        assert "of 1 connection(s)" in said[0] and f"1 of those connection(s) got no file (the recording at its " \
            f"{FILES} files" in said[0] and "nothing of their chats is recorded" in said[0], said[0]
        assert len(list(rec.iterdir())) <= FILES
    finally:
        for s in idle:
            await s.close()
        server.close()
        await sim.stop()
