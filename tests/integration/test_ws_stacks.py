"""The netra dialect served by third-party WebSocket stacks (tests/integration/ws_stacks.py): FastAPI on uvicorn with
its websockets and wsproto backends (deflate on and off, uvicorn's own pings), the websockets library's asyncio
server (deflate with a 9-bit window and no context takeover, a 600-byte max_size, a ping every 10 ms), wsproto on raw
asyncio (every message in fragments with pings between them, deflate) and trio-websocket. Each is judged by every
road (`chatprobe run` with picows, recorded, and `chatprobe check` of it; `chatprobe run` with the websockets client;
`chatprobe proxy` in front of the server), and every road must give each chat the verdict docs/protocol.md gives it.

FAILED on the code before this file, each with what was wrong:
- test_a_server_that_closes_for_its_own_reasons_is_no_r12_of_its_frames[*]: a close the server started with 1009
  (its `max_size` refusing the client's message, as websockets, uvicorn and Node's ws do), 1007 or 1002 was echoed by
  the client and then read as the client's own failure: an R12 "frame larger than the 4194304 byte limit" (or "text
  frame that is not valid UTF-8") on its chats, though the server sent no such frame, live and in `check`, while the
  proxy, which passes a close the upstream starts on as it came, gave none.
- test_a_server_that_drops_the_connection_before_any_event_is_a_lost_chat_by_every_road: the proxy closed its user's
  connection with a clean 1000 where the upstream had dropped it (no close frame), so the user's client sent the
  message again and the proxy judged the chat passed, where `run` and `check` judged it incomplete.
- test_a_close_frame_with_no_status_code_before_any_event_sends_the_message_again_by_every_road: a close frame with no
  status code (1005, Node's `ws` `close()`) was taken for a crash: the message that crossed it was never sent again
  and the chat was `incomplete` by `run`, `check` and the websockets client.
- test_monitor_once_says_which_rule_failed_and_why: `chatprobe monitor --once` named the objectives a probe missed,
  not the rule the server broke nor why.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

from .ws_stacks import (
    PING,
    USER,
    Action,
    Binary,
    Close,
    NetraApp,
    Text,
    Wait,
    judge,
    run_events,
    serve_trio,
    serve_uvicorn,
    serve_websockets,
    serve_wsproto,
)

pytestmark = pytest.mark.timeout(60)

PASS = ("passed", ())
ROADS = ("run", "check", "websockets", "proxy")


def odd_websockets(app: NetraApp) -> Any:
    """Deflate with a 9-bit window both ways and no context takeover, a 600-byte max_size, a ping every 10 ms."""
    deflate = ServerPerMessageDeflateFactory(server_max_window_bits=9, client_max_window_bits=9,
                                             server_no_context_takeover=True, client_no_context_takeover=True)
    return serve_websockets(app, compression=None, extensions=[deflate], max_size=600, ping_interval=0.01,
                            ping_timeout=5)


def closes_mid_run(code: int) -> Any:
    def answer(p: dict[str, Any], n: int) -> list[Action]:
        events: list[Action] = list(run_events(p))
        return [*events[:3], Close(code), *events[3:]] if n == 1 else events  # the rest kept for a resume
    return answer


@pytest.mark.parametrize("server, verdict", [
    # websockets' max_size refuses the client's message: close 1009 ("message too big") before any event, a close
    # code that sends no message again: the chat is lost as it stands, incomplete, and no rule of the server's frames
    pytest.param(lambda: serve_websockets(NetraApp(), max_size=64), ("incomplete", ()), id="max-size-1009"),
    # a server that says the client's text was not UTF-8 (1007) or broke the protocol (1002) mid-run: the client
    # resumes the run on a new connection, as after any lost connection, and the chat passes
    pytest.param(lambda: serve_websockets(NetraApp(closes_mid_run(1007))), PASS, id="mid-run-1007"),
    pytest.param(lambda: serve_trio(NetraApp(closes_mid_run(1002))), PASS, id="mid-run-1002"),
])
def test_a_server_that_closes_for_its_own_reasons_is_no_r12_of_its_frames(tmp_path, server, verdict):
    got = judge(tmp_path, server, {"chats_per_user": 1})
    assert got == {road: [verdict] for road in ROADS}, got


STACKS = {
    "uvicorn-websockets": lambda app: serve_uvicorn(app, ws="websockets"),
    "uvicorn-websockets-deflate-pings": lambda app: serve_uvicorn(app, ws="websockets", deflate=True,
                                                                  ping_interval=0.02),
    "uvicorn-wsproto": lambda app: serve_uvicorn(app, ws="wsproto"),
    "uvicorn-wsproto-deflate": lambda app: serve_uvicorn(app, ws="wsproto", deflate=True),
    "websockets-9-bit-window-tiny-max-size": odd_websockets,
    "wsproto": lambda app: serve_wsproto(app),
    "wsproto-deflate": lambda app: serve_wsproto(app, deflate=True),
    "trio-websocket": lambda app: serve_trio(app),
}


def lively(p: dict[str, Any], n: int) -> list[Action]:
    """Think time between events, a WebSocket ping after each (where the stack can send one), the server's own JSON
    ping and heartbeat, every other message in 3 fragments (where the stack can cut one) with a trailing newline or
    pretty-printed with CRLF."""
    out: list[Action] = []
    for i, ev in enumerate(run_events(p)):
        text = json.dumps(ev, ensure_ascii=False) + "\n" if i % 2 else json.dumps(ev, indent=1) + "\r\n"
        out += [Text(text, 3 if i % 2 else 1), Wait(0.01), PING]
        if i == 2:
            out += [{"type": "ping"}, {"type": "heartbeat", "data": {"user_id": USER}}]
    return out


@pytest.mark.parametrize("stack", list(STACKS))
def test_a_conforming_server_on_each_stack_passes_every_chat_by_every_road(tmp_path, stack):
    # three chats in flight at once on one connection, interleaved
    got = judge(tmp_path, lambda: STACKS[stack](NetraApp(lively)),
                {"chats_per_user": 3, "parallel_chats": 3, "expect": {"streaming": True}})
    assert got == {road: [PASS] * 3 for road in ROADS}, got


def _renumber(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for i, ev in enumerate(events, 1):
        ev["seq"] = i
    return events


FATAL = {"error_message": "model down", "error_type": "Upstream", "is_recoverable": False, "severity": "critical"}
# rule -> (what the second chat's run becomes, the scenario's expect beyond streaming)
FAULTS: dict[str, tuple[Callable[[list[dict[str, Any]]], list[Action]], dict[str, str]]] = {
    "R1": (lambda ev: list(_renumber([ev[1], ev[0], *ev[2:]])), {}),
    "R2": (lambda ev: list(_renumber([e for e in ev if e["type"] != "partial_result"])), {}),
    "R3": (lambda ev: [*ev, {**ev[-1], "seq": len(ev) + 1}], {}),
    "R4": (lambda ev: [*ev, {**ev[4], "seq": len(ev) + 1}], {}),
    "R5": (lambda ev: [*ev[:3], {**ev[3], "payload": {**ev[3]["payload"], "tool_call_id": "c-other"}}, *ev[4:]], {}),
    "R6": (lambda ev: list(_renumber([ev[0], ev[2], ev[3], ev[1], *ev[4:]])), {}),
    "R7": (lambda ev: [*ev[:3], *({**e, "seq": e["seq"] + 1} for e in ev[3:])], {}),
    "R8": (lambda ev: [*ev[:4], {**ev[4], "thread_id": "t-someone-else"}, *ev[5:]], {}),
    "R9": (lambda ev: [Wait(0.8), *ev], {"first_event_limit": "0.3s"}),
    "R10": (lambda ev: list(ev[:-1]), {"deadline": "1s"}),
    "R11": (lambda ev: [*ev[:3], Wait(0.8), *ev[3:]], {"stall_limit": "0.3s"}),
    "R12": (lambda ev: [*ev[:2], {**ev[2], "timestamp": "2026-12-04T00:00:00Z" + "+" * 60}, *ev[3:]], {}),
    "R13": (lambda ev: [*ev[:-1], {**ev[-1], "type": "agent_error", "payload": FATAL}], {}),
}


@pytest.mark.parametrize("rule", list(FAULTS))
def test_each_broken_rule_is_that_rule_on_that_chat_only(tmp_path, rule):
    fault, expect = FAULTS[rule]
    stack = list(STACKS)[int(rule[1:]) % len(STACKS)]  # the rules spread over the stacks

    def answer(p: dict[str, Any], n: int) -> list[Action]:
        return fault(run_events(p)) if n == 2 else list(run_events(p))

    got = judge(tmp_path, lambda: STACKS[stack](NetraApp(answer)),
                {"chats_per_user": 3, "parallel_chats": 3, "expect": {"streaming": True, **expect}})
    culprit = ("incomplete" if rule == "R10" else "failed", (rule,))
    assert got == {road: sorted([culprit, PASS, PASS]) for road in ROADS}, (stack, got)


def one_of_three(change: Callable[[list[dict[str, Any]]], list[Action]]) -> Any:
    def answer(p: dict[str, Any], n: int) -> list[Action]:
        return change(run_events(p)) if n == 2 else list(run_events(p))
    return answer


@pytest.mark.parametrize("stack, change, culprit, parallel", [
    # seq written as 1.0 (a Python server's float): R12, that event's chat only (docs/protocol.md R12)
    pytest.param("wsproto-deflate", lambda ev: [{**ev[0], "seq": 1.0}, *ev[1:]], ("failed", ("R12",)), 3,
                 id="float-seq"),
    # a closing handshake mid-run (a deploy: 1001; a crash the server still says: 1011): the chats resume
    pytest.param("uvicorn-wsproto", lambda ev: [*ev[:3], Close(1001), *ev[3:]], PASS, 3,
                 id="close-1001-mid-run"),
    # (one chat at a time: after a 1011, unlike 1000/1001, a message that crossed the close before any event of its
    # run is judged as it stands, never sent again; with chats in parallel, whether one did so is timing's)
    pytest.param("websockets-9-bit-window-tiny-max-size", lambda ev: [*ev[:3], Close(1011), *ev[3:]], PASS, 1,
                 id="close-1011-mid-run"),
])
def test_what_a_stack_lets_a_server_do(tmp_path, stack, change, culprit, parallel):
    got = judge(tmp_path, lambda: STACKS[stack](NetraApp(one_of_three(change))),
                {"chats_per_user": 3, "parallel_chats": parallel})
    assert got == {road: sorted([culprit, PASS, PASS]) for road in ROADS}, got


@pytest.mark.parametrize("stack, change", [
    # FastAPI's send_json(mode="binary"), or send_bytes: one JSON event in a binary frame
    pytest.param("uvicorn-websockets", lambda ev: [*ev[:5], Binary(json.dumps(ev[5]).encode()), *ev[6:]], id="binary"),
    # a UTF-8 byte order mark before the JSON (RFC 8259 8.1: MUST NOT add one; JSON.parse refuses it)
    pytest.param("trio-websocket", lambda ev: [*ev[:5], Text("\ufeff" + json.dumps(ev[5])), *ev[6:]], id="bom"),
])
def test_a_frame_that_is_no_json_event_is_r12_on_the_chats_in_flight(tmp_path, stack, change):
    # A malformed frame belongs to no run: an R12 on every chat in flight (docs/protocol.md R12), and the event it
    # carried is missing from its own run (R7: its seq never came). One chat at a time, so which chats were in
    # flight does not depend on timing.
    got = judge(tmp_path, lambda: STACKS[stack](NetraApp(one_of_three(change))), {"chats_per_user": 3})
    assert got == {road: sorted([("failed", ("R12", "R7")), PASS, PASS]) for road in ROADS}, got


def test_a_403_from_a_path_no_websocket_route_takes_says_the_path_may_be_wrong(capsys):
    """FastAPI/Starlette on uvicorn answer 403 to an upgrade at a path no WebSocket route takes, whatever the
    credentials: the error said only "rejected the credentials" (check the token), never the path."""
    from harness.cli import main

    with serve_uvicorn(NetraApp()) as url:
        code = main(["run", "--target", url.removesuffix("/ws") + "/chat", "--auth", "none", "probe", "-q"])
    assert code == 2
    err = capsys.readouterr().err
    assert "rejected the credentials of every chat" in err and "no WebSocket endpoint at --target's path" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_a_server_that_drops_the_connection_before_any_event_is_a_lost_chat_by_every_road(tmp_path):
    """The server drops the TCP connection (no closing handshake: a crash) after reading the message, before any
    event of its run: the chat is judged as it stands, `incomplete`, never sent again (docs/protocol.md), live and in
    `check`. The proxy closed its user's connection with a clean 1000 in place of the drop, so the user's client
    sent the message again, as after a closing handshake, and the proxy judged the chat passed."""
    def answer(p: dict[str, Any], n: int) -> list[Action]:
        events: list[Action] = list(run_events(p))
        return [Close(1006), *events] if n == 1 else events

    got = judge(tmp_path, lambda: serve_websockets(NetraApp(answer)), {"chats_per_user": 1},
                ways=("run", "check", "proxy"))
    assert got == {road: [("incomplete", ())] for road in ("run", "check", "proxy")}, got


def test_a_close_frame_with_no_status_code_before_any_event_sends_the_message_again_by_every_road(tmp_path):
    """A server that closes a connection with a close frame carrying no status code (Node's `ws` and a browser's
    `close()` called without one; RFC 6455 7.1.5 reports it as 1005) closes it on purpose, as with 1000: a message
    that crossed that close before any event of its run is sent again on a new connection (docs/protocol.md,
    Outcomes), and the chat passes. It was judged as a crash's, `incomplete`, live and in `check`."""
    def answer(p: dict[str, Any], n: int) -> list[Action]:
        events: list[Action] = list(run_events(p))
        return [Close(1005)] if n == 1 else events

    got = judge(tmp_path, lambda: serve_wsproto(NetraApp(answer)), {"chats_per_user": 1})
    assert got == {road: [PASS] for road in ROADS}, got


def test_monitor_once_says_which_rule_failed_and_why(capsys):
    """`chatprobe monitor --once` (and the daemon's log line when a probe's verdict changes) named only the objectives
    a failing probe missed ("failed: missing_events_ratio.max, violations.max, passed_ratio.min"): not which rule the
    server broke nor why, which `chatprobe run` prints. It says both now: the violations by rule and the worst chat's
    first violation."""
    from harness.cli import main

    def answer(p: dict[str, Any], n: int) -> list[Action]:
        events: list[Action] = list(run_events(p))
        return [events[0], events[2], events[1], *events[3:]]  # a tool call before any thinking: R6

    with serve_websockets(NetraApp(answer)) as url:
        code = main(["monitor", "--once", "--target", url, "--auth", "none", "--target-name", "t"])
    out = capsys.readouterr().out
    assert code == 1, out
    line = next(line for line in out.splitlines() if line.startswith("t / probe: failed"))
    assert "violations R6 x1" in line and "chat failed: R6 order: tool_executing before any agent_thinking" in line, line


def test_a_token_whose_sub_the_server_does_not_name_is_judged_alike_live_and_in_check(tmp_path, monkeypatch):
    """A team's own token (not minted by chatprobe) whose `sub` is not the user id its server names in the welcome
    and in every event: R8 judges events by the token's `sub` (docs/protocol.md R8), so `chatprobe run` flagged every
    event as another user's, while `chatprobe check` of its recording, which held no `sub`, took the welcome's user
    and passed every chat. The recording now says which user the client authenticated as, and both judge alike; the
    R8 says the event names the welcome's user, not the token's sub, where it said only "another user"."""
    import jwt

    from harness.cli import main

    from .test_independent_servers import chat_verdicts

    token = jwt.encode({"sub": "idp|4711", "exp": 4102444800}, "k" * 32, algorithm="HS256")
    monkeypatch.setenv("TEAM_TOKEN", token)
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(json.dumps({"name": "sub", "connect_timeout": "3s", "expect": {"deadline": "1s"}}))
    rec = tmp_path / "rec"
    with serve_websockets(NetraApp()) as url:
        code = main(["run", "--target", url, "--token-env", "TEAM_TOKEN", str(scenario), "--record", str(rec),
                     "--json", str(tmp_path / "run.json"), "-q"])
    assert code == 1
    assert main(["check", str(rec), "--scenario", str(scenario), "--json", str(tmp_path / "check.json"), "-q"]) == 1
    live, _ = chat_verdicts(json.loads((tmp_path / "run.json").read_text()))
    offline, _ = chat_verdicts(json.loads((tmp_path / "check.json").read_text()))
    assert live == offline and "R8" in live[0][1], (live, offline)
    assert token not in "".join(p.read_text() for p in rec.iterdir())
    for doc in ("run.json", "check.json"):  # and the reason says why, not only "another user"
        [chat] = json.loads((tmp_path / doc).read_text())["scenarios"][0]["chats"]
        assert chat["violations"][0]["reason"] == ("received agent_started of the user the welcome named, not the "
                                                   "token's sub (a connection is its token's sub): cross-talk"), chat
