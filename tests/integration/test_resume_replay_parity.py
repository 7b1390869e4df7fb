"""A resume that names no last seq (a profile whose `resume` template has `{run_id}` only): the server, asked to resume
a run, replays it from its first event, as it was asked. The same traffic judged several ways must agree: live
(`chatprobe run`, whose server drops the connection mid-run), `chatprobe check` of that run's recording, the Locust
user's client (SyncSession) against the same server, `chatprobe proxy` in front of it (a browser whose network went
resumes on a new socket) and `check` of the proxy's recording. Exact copies of what the chat had are not held against
the server; a copy that differs from what came, an event missing after the replay, and (with `{last_seq}` in the
template) a replay at or below the last seq the client named still are (R7). For dialects counting from 1 and from 0
(`seq_start`).

Failed on the code before the resumeparity patch:
- test_live_check_and_proxy_agree_on_a_replayed_resume[*-copies]: live R7 x3 (exit 1), check and proxy passed (exit 0)
- test_live_check_and_proxy_agree_on_a_replayed_resume[*-differs]: live R7 x3, check and proxy passed (the proxy and
  check skipped any replayed seq the chat had, a different event under it too)
- test_live_check_and_proxy_agree_on_a_replayed_resume[*-gap]: live R7 x4, check and proxy R7 x1
"""
from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.scenario import load_scenario

from .conftest import Kept
from .outside_servers import InThread, RawWsServer, WsConn

PROFILE = """\
name: replaying
transport: websocket
welcome: false
request: {{type: chat, run_id: "{{run_id}}", text: "{{content}}"}}
client_run_id: true
resume: {resume}
fields: {{type: [type], run_id: [run_id], seq: [seq]}}
roles: {{agent_started: [s], agent_thinking: [th], partial_result: [p], agent_completed: [done]}}
required: [agent_started, agent_completed]
thinking_before_tool: false
seq_start: {start}
"""
RESUME_RUN_ONLY = '{type: resume, run_id: "{run_id}"}'
RESUME_WITH_LAST_SEQ = '{type: resume, run_id: "{run_id}", last_seq: "{last_seq}"}'

SCENARIO = """\
name: replays
users: 1
chats_per_user: 1
messages: ["hi"]
expect:
  deadline: 4s
  settle: 0.2s
"""

RUN = ["s", "th", "p", "p", "done"]  # the run's events, seq start .. start + 4
HAD = 3  # events the first connection carries before it goes

# What the server sends on a resume (each an event type and its offset from seq_start), by variant:
REPLAYS: dict[str, list[tuple[str, int]]] = {
    # the whole run again, from its first event: three exact copies, then what the client had not had
    "copies": [(t, i) for i, t in enumerate(RUN)],
    # seq start + 1 again, but another event than the one that came under it
    "differs": [("s", 0), ("p", 1), ("p", 2), ("p", 3), ("done", 4)],
    # the copies, then the run goes on without seq start + 3 (lost)
    "gap": [("s", 0), ("th", 1), ("p", 2), ("done", 4)],
    # the template names the last seq (start + 2): the whole run again is three duplicates at or below it
    "last_seq": [(t, i) for i, t in enumerate(RUN)],
}
EXPECTED = {"copies": ("passed", ()), "differs": ("failed", (("R7", 1),)), "gap": ("failed", (("R7", 1),)),
            "last_seq": ("failed", (("R7", 3),))}


def replaying_server(start: int, variant: str, *, drop: bool) -> RawWsServer:
    """The dialect's server: a chat's first HAD events, then the connection drops (`drop`, for `chatprobe run`) or
    goes silent (a browser's network gone, which it notices; the proxy's case); a resume gets REPLAYS[variant]."""

    async def handle(conn: WsConn) -> None:
        while (text := await conn.recv()) is not None:
            msg = json.loads(text)
            if msg["type"] == "chat":
                for i, t in enumerate(RUN[:HAD]):
                    await conn.send({"type": t, "run_id": msg["run_id"], "seq": start + i})
                if drop:
                    conn.closed = True
                    conn.writer.close()  # no closing handshake: a lost connection (1006), the client resumes
                    return
            elif msg["type"] == "resume":
                for t, i in REPLAYS[variant]:
                    await conn.send({"type": t, "run_id": msg["run_id"], "seq": start + i})

    return RawWsServer(handle)


def verdict_of(outcome: str, rules: Counter) -> tuple[str, tuple[tuple[str, int], ...]]:
    return outcome, tuple(sorted(rules.items()))


def report_verdicts(path: Path) -> list[tuple[str, tuple[tuple[str, int], ...]]]:
    (scenario,) = json.loads(path.read_text())["scenarios"]
    return [verdict_of(c["outcome"], Counter(v["rule"] for v in c["violations"])) for c in scenario["chats"]]


def run_then_check(tmp_path: Path, url: str, scenario: Path, profile: Path) -> tuple[list, int, list, int]:
    """`chatprobe run --record` against the dropping server, then `chatprobe check` of its recording."""
    live, offline, rec = tmp_path / "live.json", tmp_path / "offline.json", tmp_path / "rec"
    code = main(["run", "--target", url, "--profile", str(profile), "--auth", "none", str(scenario),
                 "--record", str(rec), "--json", str(live), "-q"])
    code2 = main(["check", str(rec), "--profile", str(profile), "--scenario", str(scenario), "--json", str(offline),
                  "-q"])
    return report_verdicts(live), code, report_verdicts(offline), code2


async def browse_through_proxy(upstream: str, scenario: Path, profile: Path, rec: Path, start: int,
                               with_last_seq: bool) -> list:
    """A browser's chat through `chatprobe proxy`: its message, HAD events, then its network goes; it resumes the run
    on a new socket (saying the last seq it had when the dialect's resume carries one) while the old one is still
    open, reads the run to its end and leaves. The proxy's verdicts."""
    from prometheus_client import CollectorRegistry
    from websockets.asyncio.client import connect

    from monitors.metrics import ChatMetrics
    from monitors.proxy import LiveChats, Proxy, start_proxy

    prof = load_profile(str(profile))
    sc = load_scenario(str(scenario))
    kept = Kept(ChatMetrics(CollectorRegistry()), "up", "live")
    live = LiveChats(prof, kept, sc.expectations(prof), "live",
                     sc.expect.settle, recorder=Recorder(rec, keep_all=True))
    proxy = await start_proxy(Proxy(upstream, live), "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{proxy.sockets[0].getsockname()[1]}/ws"
    try:
        async with asyncio.timeout(15):  # a hang fails the test
            old = await connect(url, ping_interval=None, close_timeout=1)
            await old.send(json.dumps({"type": "chat", "run_id": "r-1", "text": "hi"}))
            for _ in range(HAD):
                await old.recv()
            new = await connect(url, ping_interval=None, close_timeout=1)
            resume: dict[str, Any] = {"type": "resume", "run_id": "r-1"}
            if with_last_seq:
                resume["last_seq"] = str(start + HAD - 1)
            await new.send(json.dumps(resume))
            while json.loads(await new.recv())["type"] != "done":
                pass
            await old.close()
            await kept.judged.wait()
            await new.close()
    finally:
        proxy.close()
        await proxy.wait_closed()
    return [verdict_of(r.outcome.value, Counter(r.rule_counts())) for r in kept.results]


def play_sync(url: str, scenario: Path, profile: Path) -> list:
    """The same chat played by the Locust user's client (gevent_client.SyncSession, the same ChatFlow): its verdict."""
    from harness.flow import ChatOptions
    from harness.gevent_client import SyncSession
    from harness.sinks import Sink
    from harness.targets import Target

    prof = load_profile(str(profile))
    sc = load_scenario(str(scenario))
    session = SyncSession(Target(url=url, profile=prof, name="raw"), "u", "sync", Sink(), connect_timeout=5)
    try:
        result = session.chat("hi", sc.expectations(prof), ChatOptions(settle=sc.expect.settle))
    finally:
        session.close()
    assert result is not None
    return [verdict_of(result.outcome.value, Counter(result.rule_counts()))]


@pytest.mark.parametrize("variant", list(REPLAYS))
@pytest.mark.parametrize("start", [1, 0])
def test_live_check_and_proxy_agree_on_a_replayed_resume(tmp_path, start, variant):
    with_last_seq = variant == "last_seq"
    scenario, profile = tmp_path / "chats.yaml", tmp_path / "profile.yaml"
    scenario.write_text(SCENARIO)
    profile.write_text(PROFILE.format(resume=RESUME_WITH_LAST_SEQ if with_last_seq else RESUME_RUN_ONLY, start=start))

    with InThread(replaying_server(start, variant, drop=True)) as ws:
        live, live_code, offline, offline_code = run_then_check(tmp_path, ws.url, scenario, profile)
        locust = play_sync(ws.url, scenario, profile)
    with InThread(replaying_server(start, variant, drop=False)) as ws:
        proxied = asyncio.run(browse_through_proxy(ws.url, scenario, profile, tmp_path / "proxy-rec", start,
                                                   with_last_seq))
    proxied_code = main(["check", str(tmp_path / "proxy-rec"), "--profile", str(profile), "--scenario",
                         str(scenario), "--json", str(tmp_path / "proxy-offline.json"), "-q"])
    proxy_offline = report_verdicts(tmp_path / "proxy-offline.json")

    expected = EXPECTED[variant]
    assert live == [expected], (live, offline, proxied, proxy_offline)
    assert offline == live, (live, offline)
    assert locust == live, (live, locust)
    assert proxied == live, (live, proxied)
    assert proxy_offline == live, (live, proxy_offline)
    assert live_code == offline_code == proxied_code == (0 if expected[0] == "passed" else 1)
