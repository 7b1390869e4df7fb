"""A netra server another team wrote from docs/protocol.md and README.md alone (tests/integration/docs_server28.py),
judged on every road: `chatprobe run --target` (recorded), `chatprobe check` of that recording, `chatprobe proxy` in
front of it with a `run` through it, and `check` of the proxy's `--record`. Correct in each of its legal variants it
passes everywhere; each bug a real server ships is the rule the docs name for it, on every road alike."""
from __future__ import annotations

import asyncio
import json
import secrets
import threading
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.scenario import Scenario, load_scenario
from monitors.proxy import LiveChats, Proxy, start_proxy

from .docs_server28 import DocsServer
from .test_independent_servers import KeptSink, Verdict, chat_verdicts

pytestmark = pytest.mark.timeout(120)

SECRET_ENV = "DOCS28_JWT_SECRET"
PASS: Verdict = ("passed", ())


class InThread:
    """The server on an event loop of its own thread; start and stop bounded."""

    def __init__(self, server: DocsServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> InThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.__aenter__(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(asyncio.wait_for(self.server.__aexit__(), 5), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    value = secrets.token_urlsafe(32)
    monkeypatch.setenv(SECRET_ENV, value)
    return value


def scenario_file(tmp_path: Path, scenario: dict[str, Any] | str) -> str:
    if isinstance(scenario, str):
        return scenario
    sc = {"name": "docs28", "users": 1, "connect_timeout": "3s", **scenario}
    sc["expect"] = {"deadline": "4s", "settle": "0.2s", **scenario.get("expect", {})}
    path = tmp_path / "scenario.yaml"
    path.write_text(json.dumps(sc))
    return str(path)


def roads(tmp_path: Path, secret: str, scenario: dict[str, Any] | str, *, variants: tuple[str, ...] = (),
          bug: str | None = None, extra: tuple[str, ...] = (), **knobs: Any) -> dict[str, list[Verdict]]:
    """Each chat's (outcome, rules) on the four roads; `run` and `check` of its recording exit alike."""
    named = scenario_file(tmp_path, scenario)
    live, offline, rec = tmp_path / "live.json", tmp_path / "offline.json", tmp_path / "rec"
    with InThread(DocsServer(secret, variants=variants, bug=bug, **knobs)) as hosted:
        code = main(["run", "--target", hosted.server.url, "--jwt-secret-env", SECRET_ENV, named, *extra,
                     "--record", str(rec), "--json", str(live), "-q"])
    assert code in (0, 1), code
    code2 = main(["check", str(rec), "--scenario", named, "--json", str(offline), "-q"])
    assert code2 == code, (code, code2)
    out: dict[str, list[Verdict]] = {}
    out["run"], stats = chat_verdicts(json.loads(live.read_text()))
    out["check"], _ = chat_verdicts(json.loads(offline.read_text()))
    out["proxy"] = behind_proxy(tmp_path, secret, named, stats["chats"], variants, bug, extra, knobs)
    proxy_rec = tmp_path / "proxy-rec"
    judged_again = tmp_path / "proxy-check.json"
    main(["check", str(proxy_rec), "--scenario", named, "--json", str(judged_again), "-q"])
    out["proxy-check"], _ = chat_verdicts(json.loads(judged_again.read_text()))
    return out


def behind_proxy(tmp_path: Path, secret: str, named: str, chats: int, variants: tuple[str, ...], bug: str | None,
                 extra: tuple[str, ...], knobs: dict[str, Any]) -> list[Verdict]:
    profile = load_profile("netra")
    if named.endswith(".yaml"):
        doc = json.loads(Path(named).read_text())
        sc = Scenario.model_validate(doc)
        # the user behind the proxy waits a little longer than the proxy's deadline (no tab closed first)
        doc["expect"]["deadline"] = sc.expect.deadline + 1
        played = tmp_path / "player.yaml"
        played.write_text(json.dumps(doc))
        player = str(played)
    else:
        sc = load_scenario(named)
        player = named
    kept = KeptSink()
    with InThread(DocsServer(secret, variants=variants, bug=bug, **knobs)) as hosted:
        live = LiveChats(profile, kept, sc.expectations(profile), "live", sc.expect.settle,
                         recorder=Recorder(tmp_path / "proxy-rec", keep_all=True))
        front = asyncio.run_coroutine_threadsafe(
            start_proxy(Proxy(hosted.server.url.rsplit("/", 1)[0], live), "127.0.0.1", 0), hosted.loop).result(10)
        try:
            port = front.sockets[0].getsockname()[1]
            code = main(["run", "--target", f"ws://127.0.0.1:{port}/ws", "--jwt-secret-env", SECRET_ENV, player,
                         *extra, "-q", "--json", str(tmp_path / "played.json")])
            assert code in (0, 1), code
            results = kept.wait_for(chats, 15)
        finally:
            hosted.loop.call_soon_threadsafe(front.close)
    return sorted((r.outcome.value, tuple(sorted(r.rule_counts()))) for r in results)


ALL = ("run", "check", "proxy", "proxy-check")

# -- the correct server, in each of its legal variants --------------------------------------------------------------

CORRECT = {
    "plain": (),
    "fragments_pings": ("fragment", "pings", "ws_pings"),
    "system_welcome_data_iso": ("system_welcome", "data_layout", "iso_time", "uuid_ids"),
    "flat_extra_fields": ("flat_layout", "extra_fields", "interleave_tools"),
    "unicode_escaped": ("unicode", "escaped_json", "fragment"),
    "big_frames": ("big", "unicode"),
    "close_after_terminal": ("close_after_terminal",),
    "idle_close": ("idle_close", "pings"),
}


@pytest.mark.parametrize("variant", sorted(CORRECT))
def test_a_correct_server_passes_on_every_road(tmp_path, secret, variant):
    got = roads(tmp_path, secret, {"chats_per_user": 3, "expect": {"streaming": True}}, variants=CORRECT[variant])
    assert got == {way: [PASS] * 3 for way in ALL}, got


@pytest.mark.parametrize("name", ["basic", "probe", "abandonment", "reconnection", "concurrent"])
def test_the_built_in_scenarios_pass_on_every_road(tmp_path, secret, name):
    variants = ("fragment", "pings", "interleave_tools", "unicode", "escaped_json", "uuid_ids", "extra_fields")
    got = roads(tmp_path, secret, name, variants=variants, extra=("--auth", "subprotocol"))
    n = len(got["run"])
    assert got == {way: [PASS] * n for way in ALL}, got


def test_chats_interleaved_on_one_connection_pass_on_every_road(tmp_path, secret):
    got = roads(tmp_path, secret, {"chats_per_user": 4, "parallel_chats": 2, "users": 2},
                variants=("interleave_tools", "pings", "close_after_terminal", "flat_layout"))
    assert got == {way: [PASS] * 8 for way in ALL}, got


# -- the bugs real servers ship, one at a time: the rule the docs name, on every road -------------------------------

BUGGY = {
    # a tool_completed never sent (its seq used): a lost seq, and a tool call left open at completion
    "drop_event": ("failed", ("R5", "R7")),
    # tool_completed before its tool_executing: out of order, and a close of a call not open (then one never closed)
    "reorder": ("failed", ("R5", "R7")),
    # another user's run's event on this connection
    "other_user": ("failed", ("R8",)),
    # the first event past first_event_limit (0.5 s here)
    "late_first": ("failed", ("R9",)),
    # one event sent twice under its seq
    "dup_seq": ("failed", ("R7",)),
    # a partial_result after agent_completed
    "after_terminal": ("failed", ("R4",)),
    # a fatal error_message naming the run, without an error_code; a fatal agent_error without one
    "error_no_code": ("failed", ("R13",)),
    "fatal_no_code": ("failed", ("R13",)),
    # an event in a binary frame: an R12, and the event missing from its run
    "binary_event": ("failed", ("R12", "R5", "R7")),
    # the connection dropped mid-run, and the run forgotten: the resume answered RESUME_UNKNOWN_RUN, no rule broken
    "drop_no_resume": ("incomplete", ()),
}


@pytest.mark.parametrize("bug", sorted(BUGGY))
def test_each_bug_is_the_rule_the_docs_name_on_every_road(tmp_path, secret, bug):
    outcome, rules = BUGGY[bug]
    got = roads(tmp_path, secret, {"expect": {"first_event_limit": "0.5s", "streaming": True}},
                variants=("fragment", "uuid_ids"), bug=bug, late_first=0.8)
    assert got == {way: [(outcome, tuple(sorted(rules)))] for way in ALL}, got
