"""A second team's netra server (tests/integration/indep_server.py: the `websockets` library's asyncio server, written
from README.md and docs/protocol.md alone, its own field order, ids, fragments split across time, JWT auth and
resume), judged by `chatprobe run` (the CLI, `--target`, recorded), `chatprobe check` of that recording, `chatprobe proxy` in
front of it and `check` of the proxy's own `--record`: correct, it passes the built-in suite; each bug it can be
switched to is the same verdict on every road, with the rule docs/protocol.md names for it.

What tests/integration/test_independent_servers.py (a raw RFC 6455 server that knows no tokens) already pins is not
repeated; this module is about what a server of its own brings: real token checking (its users are the tokens'
`sub`), its own resume, runs that go on while the client is away, and bugs as whole runs of such a server ship them.
"""
from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from harness.checker import ChatResult
from harness.cli import main
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.scenario import Scenario
from monitors.proxy import LiveChats, Proxy, start_proxy

from .indep_server import FAULTS, Hosted, IndepServer
from .test_independent_servers import KeptSink, Verdict, chat_verdicts

pytestmark = pytest.mark.timeout(120)

SECRET_ENV = "INDEP25_JWT_SECRET"
PASS: Verdict = ("passed", ())


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    value = secrets.token_urlsafe(32)
    monkeypatch.setenv(SECRET_ENV, value)
    return value


def judged(tmp_path: Path, secret: str, faults: frozenset[str], scenario: dict[str, Any] | str,
           *, proxy: bool = True, extra: tuple[str, ...] = (), kept: Kept | None = None,
           server_secret: str | None = None, exit_code: tuple[int, ...] = (0, 1)) -> dict[str, list[Verdict]]:
    """Each chat's (outcome, rules) by `run` (recorded), `check` of its recording and the proxy (a fresh server behind
    it, a `run` through it); `run` and `check` exit alike."""
    if isinstance(scenario, dict):
        sc = {"name": "indep", "users": 1, "connect_timeout": "3s", **scenario}
        sc["expect"] = {"deadline": "3s", "settle": "0.2s", **scenario.get("expect", {})}
        path = tmp_path / "scenario.yaml"
        path.write_text(json.dumps(sc))
        named = str(path)
    else:
        named = scenario
    live, offline, rec = tmp_path / "live.json", tmp_path / "offline.json", tmp_path / "rec"
    with Hosted(IndepServer(server_secret or secret, faults)) as server:
        code = main(["run", "--target", server.url, "--jwt-secret-env", SECRET_ENV, named, *extra,
                     "--record", str(rec), "--json", str(live), "-q"])
    assert code in exit_code, code
    code2 = main(["check", str(rec), "--scenario", named, "--json", str(offline), "-q"])
    assert code2 == code, (code, code2)
    out: dict[str, list[Verdict]] = {}
    out["run"], stats = chat_verdicts(json.loads(live.read_text()))
    out["check"], _ = chat_verdicts(json.loads(offline.read_text()))
    if proxy:
        out["proxy"] = behind_proxy(tmp_path, server_secret or secret, faults, named, stats["chats"], extra, kept)
        # the proxy's own --record, judged by `check`: it keeps the connections with a chat that did not pass
        kept_rec = tmp_path / "proxy-rec"
        if any(v != PASS for v in out["proxy"]) and kept_rec.exists():
            judged_again = tmp_path / "proxy-check.json"
            main(["check", str(kept_rec), "--scenario", named, "--json", str(judged_again), "-q"])
            out["proxy-check"], _ = chat_verdicts(json.loads(judged_again.read_text()))
    return out


class Kept(KeptSink):
    """The proxy's verdicts, and the chats it counted as the client's doing (`client_rejected`) as verdicts too."""

    def __init__(self) -> None:
        super().__init__()
        self.clients_doing: list[ChatResult] = []

    def client_rejected(self, result: ChatResult) -> None:
        self.clients_doing.append(result)
        self.chat_finished(result)


def behind_proxy(tmp_path: Path, secret: str, faults: frozenset[str], named: str, chats: int,
                 extra: tuple[str, ...], kept: Kept | None = None,
                 player_secret: str | None = None) -> list[Verdict]:
    profile = load_profile("netra")
    if named.endswith(".yaml"):
        doc = json.loads(Path(named).read_text())
        sc = Scenario.model_validate(doc)
        # the user behind the proxy waits a second longer than the proxy's deadline: one who closes the tab first
        # leaves the chat (abandoned, judged on what arrived), which is not what is tested here
        doc["expect"]["deadline"] = sc.expect.deadline + 1
        played = tmp_path / "player.yaml"
        played.write_text(json.dumps(doc))
        player = str(played)
    else:
        from harness.scenario import load_scenario
        sc = load_scenario(named)
        player = named
    kept = kept if kept is not None else Kept()
    hosted = Hosted(IndepServer(secret, faults))
    with hosted as server:
        live = LiveChats(profile, kept, sc.expectations(profile), "live", sc.expect.settle,
                         recorder=Recorder(tmp_path / "proxy-rec"))
        front = asyncio.run_coroutine_threadsafe(
            start_proxy(Proxy(server.url.rsplit("/", 1)[0], live), "127.0.0.1", 0), hosted.loop).result(10)
        try:
            port = front.sockets[0].getsockname()[1]
            code = main(["run", "--target", f"ws://127.0.0.1:{port}/ws", "--jwt-secret-env", SECRET_ENV, player,
                         *extra, "-q", "--json", str(tmp_path / "played.json")])
            assert code in (0, 1, 2), code
            results = kept.wait_for(chats, 15)
        finally:
            hosted.loop.call_soon_threadsafe(front.close)
    return sorted((r.outcome.value, tuple(sorted(r.rule_counts()))) for r in results)


# -- the correct server -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("auth", ["header", "subprotocol"])
def test_the_correct_server_passes_the_built_in_suite_on_every_road(tmp_path, secret, auth):
    got = judged(tmp_path, secret, frozenset(), "basic", extra=("--auth", auth))
    assert got == {way: [PASS] for way in ("run", "check", "proxy")}, got


@pytest.mark.parametrize("server", ["lazy-auth", "lazy-auth-stays-open"])
def test_credentials_refused_after_the_welcome_are_auth_failed_on_every_road(tmp_path, secret, server):
    # docs/protocol.md: AUTH_FAILED (then close 1008) is an `auth_failed` connection, and README: `run` exits 2 when
    # the server rejected the credentials of every chat. A server that welcomes every connection and checks the token
    # at each message (or finds it expired on a connection that outlived it) says so after the welcome: the chat
    # waiting for its run was judged at the close as a lost run, `incomplete` with no rule and no word of the
    # credentials, exit 1 (and, with a server that keeps the connection open, R9 + R10 at the deadline). Now it is
    # `error`, `auth_failed`, at once, exit 2, by `run` and `check`; the proxy counts it as the client's doing. A
    # server that keeps the connection open gets the next chat on it: refused too. (One that closes gets each chat on
    # a connection of its own here: a message the client sends after the AUTH_FAILED, before the 1008 close reaches
    # it, crosses that close, and is judged as any message that crossed a close that is no clean one: `incomplete`.)
    kept = Kept()
    scenario = {"chats_per_user": 2} if server == "lazy-auth-stays-open" else {"users": 2, "chats_per_user": 1}
    got = judged(tmp_path, secret, frozenset({server}), scenario, kept=kept,
                 server_secret=secret + "-not-the-clients", exit_code=(2,))
    assert got == {way: [("error", ())] * 2 for way in ("run", "check", "proxy", "proxy-check")}, got
    for doc in ("live.json", "offline.json"):
        (sc,) = json.loads((tmp_path / doc).read_text())["scenarios"]
        assert [(c["error_kind"], c["error"]) for c in sc["chats"]] == [
            ("auth_failed", "the server rejected the credentials (AUTH_FAILED)")] * 2, (doc, sc["chats"])
    assert [r.error_kind for r in kept.clients_doing] == ["auth_failed"] * 2


# -- what a correct server may do ----------------------------------------------------------------------------

@pytest.mark.parametrize("conduct", ["drops-mid-run", "goes-away-mid-run", "numeric-run-ids",
                                     "closes-after-each-run", "pings-often"])
def test_a_server_that_drops_or_deploys_mid_run_or_names_runs_by_number_passes(tmp_path, secret, conduct):
    # the built-in reconnection scenario (the client drops the socket after the 3rd event and resumes) against a server
    # that also cuts each run's connection itself after its 3rd event (TCP, or a 1001 close), names its runs by JSON
    # integers (docs/protocol.md R12: an id written as a number is its text), closes after each run, or pings every
    # 20 ms and drops a connection whose pong is late: its resume picks each run up
    got = judged(tmp_path, secret, frozenset({conduct}), "reconnection")
    assert got == {way: [PASS] * 15 for way in ("run", "check", "proxy")}, got


@pytest.mark.parametrize("conduct", ["selects-no-subprotocol", "selects-token-subprotocol"])
def test_a_server_taking_the_token_from_the_subprotocols_its_own_way_passes(tmp_path, secret, conduct):
    # README: a server that chose none of the subprotocols offered is accepted, as browsers do; one choosing the
    # token's own `jwt.<...>` chose one offered (RFC 6455 4.1)
    got = judged(tmp_path, secret, frozenset({conduct}), "basic", extra=("--auth", "subprotocol"))
    assert got == {way: [PASS] for way in ("run", "check", "proxy")}, got


@pytest.mark.parametrize("client_run_id", [False, True])
def test_a_server_that_goes_away_as_the_first_message_arrives_passes(tmp_path, secret, client_run_id):
    # docs/protocol.md: a message that crossed the server's clean close (1001, a deploy) before any event of its run is
    # sent again once (an R13 warning), or, when the client named the run, resumed: this server took the message and
    # goes on with the run, so the resume gets it all and nothing is sent twice
    got = judged(tmp_path, secret, frozenset({"goes-away-at-once"}),
                 {"chats_per_user": 2, "client_run_id": client_run_id, **MESSAGE})
    assert got == {way: [PASS] * 2 for way in ("run", "check", "proxy")}, got
    for doc in ("live.json", "offline.json"):
        first = json.loads((tmp_path / doc).read_text())["scenarios"][0]["chats"][0]
        said = ([w["rule"] for w in first["warnings"]], first["reconnects"])
        assert said == (([], ["resumed"]) if client_run_id else (["R13"], [])), (doc, said)


def test_a_run_id_given_again_once_its_run_ended_passes(tmp_path, secret):
    # docs/protocol.md: ids are unique only among runs in progress; this server gives every run on a connection the
    # same id, one run at a time
    got = judged(tmp_path, secret, frozenset({"run-id-per-connection"}), {"chats_per_user": 3, **MESSAGE})
    assert got == {way: [PASS] * 3 for way in ("run", "check", "proxy")}, got


# -- its bugs ------------------------------------------------------------------------------------------------------

MESSAGE: dict[str, Any] = {"message": "What is 6 * 7? #tools=2 #chunks=2"}
ONE: dict[str, Any] = {"chats_per_user": 1, **MESSAGE}
TWO_AT_ONCE: dict[str, Any] = {"chats_per_user": 2, "parallel_chats": 2, **MESSAGE}
DROPPED: frozenset[str] = frozenset({"drops-mid-run"})  # the server cuts the run's connection: the client resumes

# bug: (switched on with it, scenario, the chats' verdicts on every road)
BUGS: dict[str, tuple[frozenset[str], dict[str, Any], list[Verdict]]] = {
    "event-after-completed": (frozenset(), ONE, [("failed", ("R4",))]),
    # no tool_executing in the run at all: a required role missing (R2), and a close of a call not open (R5)
    "completed-without-executing": (frozenset(), ONE, [("failed", ("R2", "R5"))]),
    # its seq was taken: the call never closed (R5) and a seq never arrived (R7)
    "lost-tool-completed": (frozenset(), ONE, [("failed", ("R5", "R7"))]),
    "seq-gap": (frozenset(), ONE, [("failed", ("R7",))]),
    # an event under a used seq that is not a copy is judged by every rule: the tool call still pairs
    "seq-repeat": (frozenset(), ONE, [("failed", ("R7",))]),
    "first-event-late": (frozenset(), ONE, [("failed", ("R9",))]),
    "other-users-event": (frozenset(), ONE, [("failed", ("R8",))]),
    # two runs in progress under one id: the second start names another thread inside the first chat's run (R8) and
    # repeats its seqs (R7); the second chat never sees a run of its own
    "run-id-per-connection": (frozenset(), TWO_AT_ONCE, [("failed", ("R7", "R8")), ("incomplete", ("R10", "R9"))]),
    # the unexpected fatal error (R13), and a second terminal event (R3)
    "error-then-completed": (frozenset(), ONE, [("failed", ("R13", "R3"))]),
    "completed-twice": (frozenset(), ONE, [("failed", ("R3",))]),
    # the same frame again (a retried send): a duplicate is R7 alone
    "completed-resent": (frozenset(), ONE, [("failed", ("R7",))]),
    "thinking-after-completed": (frozenset(), ONE, [("failed", ("R4",))]),
    # after the server's own drop, the resume skips the event after last_seq (a tool_completed): R5 and R7
    "resume-skips-one": (DROPPED, ONE, [("failed", ("R5", "R7"))]),
    "resume-from-last": (DROPPED, ONE, [("failed", ("R7",))]),
    # the resume finds the run, which sends nothing more: a lost run, `incomplete`, no rule (docs/protocol.md, "When
    # the network misbehaves": no resume brings events back)
    "close-without-completed": (frozenset(), ONE, [("incomplete", ())]),
    # the message is no JSON object (R12); the two events in it are lost: the first thinking (R6), the first call's
    # start (R5 at its completion), their seqs (R7)
    "two-events-concatenated": (frozenset(), ONE, [("failed", ("R12", "R5", "R6", "R7"))]),
    "two-events-newline": (frozenset(), ONE, [("failed", ("R12", "R5", "R6", "R7"))]),
    "never-answers": (frozenset(), ONE, [("incomplete", ("R10", "R9"))]),
    # two users at once, each run's events sent to both users' sockets: every chat sees the other user's (R8)
    "broadcast": (frozenset(), {"users": 2, "chats_per_user": 2, "message": "What is 6 * 7? #tools=2 #chunks=5"},
                  [("failed", ("R8",))] * 4),
    # the second run on the connection starts at the seq the first one ended at: its seqs from 1 never arrived
    "seq-per-connection": (frozenset(), {"chats_per_user": 2, **MESSAGE}, [PASS, ("failed", ("R7",))]),
}


@pytest.mark.parametrize("bug", list(BUGS))
def test_each_bug_is_one_verdict_on_every_road(tmp_path, secret, bug):
    also, scenario, verdicts = BUGS[bug]
    got = judged(tmp_path, secret, frozenset({bug}) | also, scenario)
    assert got == {way: sorted(verdicts) for way in ("run", "check", "proxy", "proxy-check")}, got


@pytest.mark.parametrize("bug", ["two-events-concatenated", "two-events-newline"])
def test_two_events_in_one_message_are_named_so_on_every_road(tmp_path, secret, bug):
    # The R12 said "malformed frame: not JSON: '{"seq": 2, "payload": {"step_number": 1, "thought": "Reading'": the
    # frame's first 60 characters, read as a frame cut short, while the frame was two whole events. It says what it is.
    kept = Kept()
    judged(tmp_path, secret, frozenset({bug}), ONE, kept=kept)
    said = {"proxy": [v.reason for r in kept.results for v in r.violations if v.rule.value == "R12"]}
    for way, doc in (("run", "live.json"), ("check", "offline.json")):
        (sc,) = json.loads((tmp_path / doc).read_text())["scenarios"]
        said[way] = [v["reason"] for c in sc["chats"] for v in c["violations"] if v["rule"] == "R12"]
    for way, reasons in said.items():
        assert len(reasons) == 1 and reasons[0].startswith(
            "malformed frame: not one JSON value: a second one at character "), (way, reasons)
        assert "were two events sent in one message?" in reasons[0], (way, reasons)


# -- errors as README's directives ask for them (run and check: the proxy watches a client's frames, not its steps) --

def test_the_built_in_errors_scenario_passes(tmp_path, secret):
    # this server honours README's #fail-tool and #fail-agent, and answers every invalid frame INVALID_MESSAGE
    got = judged(tmp_path, secret, frozenset(), "errors", proxy=False)
    assert got == {way: [PASS] * 18 for way in ("run", "check")}, got


def error_steps(last: dict[str, Any]) -> dict[str, Any]:
    return {"users": 1, "steps": [{"chat": {"message": "What is 9 * 9?"}}, last]}


FATAL_STEP = {"chat": {"message": "Compute 1 + 1. #fail-agent", "expect_error": "fatal"}}
PROBE_STEP = {"send_raw": "this is not json"}
ERROR_BUGS: dict[str, tuple[dict[str, Any], Verdict]] = {
    "closes-after-fatal-error": (error_steps(FATAL_STEP), ("failed", ("R13",))),
    "closes-after-invalid": (error_steps(PROBE_STEP), ("failed", ("R13",))),
    "ignores-invalid": (error_steps(PROBE_STEP), ("failed", ("R13",))),
}


@pytest.mark.parametrize("bug", list(ERROR_BUGS))
def test_each_error_handling_bug_is_r13_live_and_offline(tmp_path, secret, bug):
    scenario, verdict = ERROR_BUGS[bug]
    got = judged(tmp_path, secret, frozenset({bug}), scenario, proxy=False)
    assert got == {way: sorted([PASS, verdict]) for way in ("run", "check")}, got


def test_every_bug_is_judged():
    assert set(BUGS) | set(ERROR_BUGS) == set(FAULTS)
