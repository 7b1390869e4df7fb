"""The netra dialect served by more WebSocket stacks (tests/integration/ws_stacks.py): aiohttp's WebSocketResponse
(its permessage-deflate, its `heartbeat` pings, an idle `receive_timeout`, extra headers in its 101 answer) and
Hypercorn (wsproto underneath, deflate whenever offered, its own pings), and the websockets library's server where it
takes a deflate parameter a browser takes. Each is judged by every road (`chatprobe run` with picows, recorded, and
`chatprobe check` of it; `chatprobe run` with the websockets client, which `compression: deflate` picks; `chatprobe
proxy` in front of the server), and every road must give each chat the verdict docs/protocol.md gives it.

FAILED on the code before this file, each with what was wrong:
- test_a_server_that_limits_the_clients_deflate_window_to_8_bits_is_taken_as_browsers_take_it and
  test_the_locust_users_client_takes_an_8_bit_deflate_window_too: a server answering
  permessage-deflate with `client_max_window_bits=8` (RFC 7692's smallest; Node's `ws` `clientMaxWindowBits: 8`,
  the websockets library's own server) failed every connection of the websockets client and of the Locust user's
  ("WebSocket handshake failed: NegotiationError"): websockets refuses 8, which Chromium takes (compressing with
  zlib's 9-bit window, whose back-references stay within 256 bytes).
- test_a_close_frame_whose_code_or_reason_rfc_6455_forbids_fails_the_connection_with_every_client: the picows
  client (`chatprobe run`'s default, `monitor`) took a close frame with code 1006 or 0 on the wire (aiohttp sends
  whatever `ws.close(code=...)` is given) for the server's close, where websockets, the proxy and the Locust user's
  client fail the connection (RFC 6455 7.4): 0 was read as a closing handshake with no status code, so a message that
  crossed it was sent again and the chat passed with no R12; and when picows' own parser refused a close frame (1004,
  1015, 2999, a reason not UTF-8) and answered it with 1002, the server's 1000 answer to that was read as the
  server's clean close, and the message was sent again. Verdicts differed by client; `check` of picows' recording
  followed picows'. (Its 1015 and reason-not-UTF-8 cases, where aiohttp answers nothing, held already: parity guards.)
- test_monitor_once_fails_a_probe_whose_server_closes_with_a_code_no_close_frame_may_carry: `chatprobe monitor`
  (picows) passed a probe whose server closed mid-run with code 0 or 1006 (the fix above).
- test_an_empty_subprotocol_or_extensions_header_fails_the_handshake_with_every_client: a 101 answer with an empty
  `Sec-WebSocket-Protocol` (a server echoing the request's header whatever it held) or `Sec-WebSocket-Extensions`
  passed with picows (`chatprobe run`'s default, `monitor`), where websockets and the Locust user's client (and a
  browser) fail the connection; the websockets clients called the extensions one `InvalidHeaderFormat`, and an
  extension answer they did not offer `NegotiationError`.
- test_a_repeated_upgrade_or_accept_header_fails_the_handshake_with_every_client: a 101 answer with a second `Upgrade:
  websocket` or `Sec-WebSocket-Accept` (an application's or a proxy's added to the server's own) passed with picows,
  where websockets, the Locust user's client and browsers fail the connection; the websockets clients said only
  `InvalidUpgrade` / `InvalidHeader`.
- test_a_connection_header_listing_upgrade_among_tokens_is_named_for_what_it_is: picows' refusal of `Connection:
  keep-alive, Upgrade` (a valid answer websockets takes) said only "invalid upgrade response" (and, later, failed the
  chat naming picows' limit, where the websockets client now carries it).
"""
from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

from .test_gevent_hostile import locust_chat
from .test_ws_stacks import FAULTS, PASS, ROADS, closes_mid_run, lively
from .ws_stacks import Action, Close, NetraApp, Wait, judge, run_events, serve_aiohttp, serve_hypercorn, serve_websockets

pytestmark = pytest.mark.timeout(60)

# aiohttp's `heartbeat`: a ping once the client has sent nothing for HEARTBEAT, its pong owed within half of it (past
# that aiohttp drops the connection, and the chats whose messages crossed the drop are lost, as docs/protocol.md says).
# The window is one a loaded machine's client keeps (a 0.1 s heartbeat owed its pong within 50 ms: a client on a
# loaded machine missed it now and then, while an unloaded run was pinged hardly at all, the lively runs' own pings
# answered keeping the client from ever going quiet). Every run on that stack holds QUIET after its first event, so
# each connection is pinged by the heartbeat and answers it mid-run.
HEARTBEAT = 1.0
QUIET = Wait(HEARTBEAT + 0.3)


def quiet_mid_run(app: NetraApp) -> NetraApp:
    """`app`, each of its runs quiet for QUIET after its first action (HEARTBEAT with nothing from the client)."""
    answer = app.answer

    def quiet(p: dict[str, Any], n: int) -> list[Action]:
        first, *rest = answer(p, n)
        return [first, QUIET, *rest]

    app.answer = quiet
    return app


STACKS = {
    "aiohttp": lambda app: serve_aiohttp(app),
    # its heartbeat pings (above), and a 9-bit deflate window of its own
    "aiohttp-heartbeat-deflate-9": lambda app: serve_aiohttp(quiet_mid_run(app), heartbeat=HEARTBEAT, compress=9),
    "aiohttp-no-deflate-odd-headers": lambda app: serve_aiohttp(app, compress=False, headers={
        "X-Empty": "", "Set-Cookie": "lb=a1; Path=/; HttpOnly", "X-Long": "y" * 4000, "Sec-WebSocket-Version": "13"}),
    "hypercorn": lambda app: serve_hypercorn(app),
    "hypercorn-pings-extra-headers": lambda app: serve_hypercorn(app, ping_interval=0.02,
                                                                 headers=[(b"x-request-id", b"r-1"), (b"x-empty", b"")]),
}


@pytest.mark.parametrize("stack", list(STACKS))
def test_a_conforming_server_on_each_stack_passes_every_chat_by_every_road(tmp_path, stack):
    # three chats in flight at once on one connection, interleaved
    got = judge(tmp_path, lambda: STACKS[stack](NetraApp(lively)),
                {"chats_per_user": 3, "parallel_chats": 3, "expect": {"streaming": True}})
    assert got == {road: [PASS] * 3 for road in ROADS}, got


# The rules of time (R9, R10, R11) are judged alike whatever the stack: tests/integration/test_ws_stacks.py has them.
@pytest.mark.parametrize("rule", [rule for rule in FAULTS if rule not in ("R9", "R10", "R11")])
def test_each_broken_rule_is_that_rule_on_that_chat_only(tmp_path, rule):
    fault, expect = FAULTS[rule]
    stack = list(STACKS)[int(rule[1:]) % len(STACKS)]  # the rules spread over the stacks

    def answer(p: dict[str, Any], n: int) -> list[Action]:
        return fault(run_events(p)) if n == 2 else list(run_events(p))

    got = judge(tmp_path, lambda: STACKS[stack](NetraApp(answer)),
                {"chats_per_user": 3, "parallel_chats": 3, "expect": {"streaming": True, **expect}})
    culprit = ("incomplete" if rule == "R10" else "failed", (rule,))
    assert got == {road: sorted([culprit, PASS, PASS]) for road in ROADS}, (stack, got)


@pytest.mark.parametrize("server", [
    # a close mid-run: 4000-range (the application's own), no close frame at all (the TCP connection dropped), a
    # closing handshake with no status code (1005): each chat resumes its run on a new connection and passes
    pytest.param(lambda: serve_aiohttp(NetraApp(closes_mid_run(4001))), id="aiohttp-4001-mid-run"),
    pytest.param(lambda: serve_aiohttp(NetraApp(closes_mid_run(1006))), id="aiohttp-no-close-frame-mid-run"),
    pytest.param(lambda: serve_hypercorn(NetraApp(closes_mid_run(1011))), id="hypercorn-1011-mid-run"),
    # a clean close before any event of the run (the message crossed it): sent again, once, and the chat passes
    pytest.param(lambda: serve_aiohttp(NetraApp(lambda p, n: [Close(1000)] if n == 1 else list(run_events(p)))),
                 id="aiohttp-1000-before-any-event"),
    pytest.param(lambda: serve_hypercorn(NetraApp(lambda p, n: [Close(1001)] if n == 1 else list(run_events(p)))),
                 id="hypercorn-1001-before-any-event"),
])
def test_a_server_closing_a_connection_mid_chat_is_judged_as_the_docs_say(tmp_path, server):
    got = judge(tmp_path, server, {"chats_per_user": 1})
    assert got == {road: [PASS] for road in ROADS}, got


def test_a_server_that_closes_idle_connections_passes(tmp_path):
    """aiohttp's `receive_timeout`: a connection that carries nothing for 0.1 s is closed by the server, between the
    chats of a user who reads each answer for 0.25 s: each next chat goes on a new connection and passes."""
    got = judge(tmp_path, lambda: serve_aiohttp(NetraApp(), receive_timeout=0.1),
                {"chats_per_user": 3, "think_time": "0.25s"})
    assert got == {road: [PASS] * 3 for road in ROADS}, got


# a message of 3,000 characters whose repeats lie further apart than 256 bytes: what the client compresses must
# inflate in the 8-bit window the server keeps for it
LONG = " ".join(f"w{(i * 7919) % 1000:03d}" for i in range(600))


def window_of_8_bits(app: NetraApp) -> Any:
    return serve_websockets(app, compression=None, extensions=[ServerPerMessageDeflateFactory(client_max_window_bits=8)])


def test_a_server_that_limits_the_clients_deflate_window_to_8_bits_is_taken_as_browsers_take_it(tmp_path):
    got = judge(tmp_path, lambda: window_of_8_bits(NetraApp()), {"chats_per_user": 2, "message": LONG})
    assert got == {road: [PASS] * 2 for road in ROADS}, got


async def test_the_locust_users_client_takes_an_8_bit_deflate_window_too(tmp_path):
    with window_of_8_bits(NetraApp()) as url:
        chat, _ = await locust_chat(tmp_path, url, "deflate", auth="none", deadline="3s")
    assert (chat["outcome"], chat["violations"]) == ("passed", []), chat


@pytest.mark.parametrize("code, reason, before", [
    # aiohttp's WSCloseCode.ABNORMAL_CLOSURE given to ws.close(): a code RFC 6455 7.4.1 says MUST NOT be sent
    pytest.param(1006, b"", False, id="1006-mid-run"),
    pytest.param(1006, b"", True, id="1006-before-any-event"),
    pytest.param(0, b"", True, id="0-before-any-event"),
    pytest.param(1015, b"", True, id="1015-before-any-event"),
    pytest.param(1000, b"\xff\xfe", True, id="reason-not-utf-8-before-any-event"),
    # one that picows' own parser refuses (1004), and then aiohttp's clean 1000 answering the client's 1002
    pytest.param(1004, b"", True, id="1004-then-the-servers-1000-before-any-event"),
])
def test_a_close_frame_whose_code_or_reason_rfc_6455_forbids_fails_the_connection_with_every_client(
        tmp_path, code, reason, before):
    """Such a close frame is no closing handshake: the client fails the connection (1002, or 1007 for the reason), an
    R12 on the chat in flight (docs/protocol.md), and a message that crossed it before any event of its run is judged
    as after a crash, never sent again (`incomplete`); mid-run, the run is resumed on a new connection (the R12 stays:
    `failed`). Every road alike."""
    def answer(p: dict[str, Any], n: int) -> list[Action]:
        events: list[Action] = list(run_events(p))
        return ([Close(code)] if before else [*events[:3], Close(code), *events[3:]]) if n == 1 else events

    # (a deadline of 1 s: the proxy keeps a chat cut before its end for a resume until then)
    got = judge(tmp_path, lambda: serve_aiohttp(NetraApp(answer), close_reason=reason, written_close=code == 1004),
                {"chats_per_user": 1, "expect": {"deadline": "1s"}})
    verdict = ("incomplete" if before else "failed", ("R12",))
    assert got == {road: [verdict] for road in ROADS}, got


EMPTY_HEADER = {
    "Sec-WebSocket-Protocol": "WebSocket handshake failed: the server chose a subprotocol the client did not offer",
    "Sec-WebSocket-Extensions": "WebSocket handshake failed: the server's Sec-WebSocket-Extensions header is malformed",
}


@pytest.mark.parametrize("header", list(EMPTY_HEADER))
def test_an_empty_subprotocol_or_extensions_header_fails_the_handshake_with_every_client(tmp_path, header):
    """RFC 6455 4.1: a Sec-WebSocket-Protocol header that names none of the subprotocols offered (here none was)
    fails the connection, and Sec-WebSocket-Extensions names one extension at least (9.1): each client, picows (the
    default) and websockets (`compression: deflate`), says so alike, the user's own subprotocol offered or not."""
    from harness.cli import main

    got = []
    for compression in ("none", "deflate"):
        for extra in ([], ["--subprotocol", "netra.v1"]):
            scenario = tmp_path / "scenario.yaml"
            scenario.write_text(json.dumps({"name": "h", "connect_timeout": "3s", "compression": compression}))
            with serve_aiohttp(NetraApp(), compress=False, headers={header: ""}) as url:
                code = main(["run", "--target", url, "--auth", "none", str(scenario), "-q", "--json",
                             str(tmp_path / "run.json"), *extra])
            [chat] = json.loads((tmp_path / "run.json").read_text())["scenarios"][0]["chats"]
            got.append((code, chat["outcome"], chat["error_kind"], chat["error"]))
    assert got == [(1, "error", "protocol_error", EMPTY_HEADER[header])] * 4, got


async def test_the_locust_users_client_refuses_an_empty_extensions_header_saying_why(tmp_path):
    with serve_aiohttp(NetraApp(), compress=False, headers={"Sec-WebSocket-Extensions": ""}) as url:
        chat, _ = await locust_chat(tmp_path, url, "deflate", auth="none", deadline="3s")
    assert (chat["outcome"], chat["error_kind"], chat["error"]) == (
        "error", "protocol_error", EMPTY_HEADER["Sec-WebSocket-Extensions"]), chat



@pytest.mark.parametrize("header", ["Upgrade", "Sec-WebSocket-Accept"])
@pytest.mark.parametrize("value", [None, ""], ids=["copy", "empty"])
def test_a_repeated_upgrade_or_accept_header_fails_the_handshake_with_every_client(tmp_path, header, value):
    """RFC 6455 4.1 (and browsers): one Upgrade, websocket, and one Sec-WebSocket-Accept; here the server's own twice
    (the same value: an application's or a proxy's copy beside it), or an empty one beside it. Each client says so
    alike. The empty one FAILED on the code before: picows counted only the headers' non-empty values, so it passed the
    chat where the websockets client failed the connection."""
    from harness.cli import main

    got = []
    for compression in ("none", "deflate"):
        scenario = tmp_path / "scenario.yaml"
        scenario.write_text(json.dumps({"name": "h", "connect_timeout": "3s", "compression": compression}))
        with serve_aiohttp(NetraApp(), compress=False, headers={header: value}) as url:
            code = main(["run", "--target", url, "--auth", "none", str(scenario), "-q", "--json",
                         str(tmp_path / "run.json")])
        [chat] = json.loads((tmp_path / "run.json").read_text())["scenarios"][0]["chats"]
        got.append((code, chat["outcome"], chat["error_kind"], chat["error"]))
    malformed = f"WebSocket handshake failed: the server's {header} header is malformed"
    assert got == [(1, "error", "protocol_error", malformed)] * 2, got


def test_a_connection_header_listing_upgrade_among_tokens_is_named_for_what_it_is(tmp_path):
    """`Connection: keep-alive, Upgrade` holds the token RFC 6455 4.1 asks for: websockets takes it (the chat passes),
    picows wants the value `Upgrade` alone (its own check, compiled: it cannot be told otherwise) and its refusal said
    only "invalid upgrade response", then named picows' limit in an `error` chat. With the default settings the chat
    now passes too (the websockets client carries the target from picows' refusal on), the run's warning saying what
    picows refused (docs/profiles.md)."""
    from harness.cli import main

    got = []
    for compression in ("none", "deflate"):
        scenario = tmp_path / "scenario.yaml"
        scenario.write_text(json.dumps({"name": "h", "connect_timeout": "3s", "compression": compression}))
        with serve_aiohttp(NetraApp(), compress=False, headers={"=Connection": "keep-alive, Upgrade"}) as url:
            main(["run", "--target", url, "--auth", "none", str(scenario), "-q", "--json", str(tmp_path / "run.json")])
        [report] = json.loads((tmp_path / "run.json").read_text())["scenarios"]
        [chat] = report["chats"]
        got.append((chat["outcome"], chat["error"], [w for w in report["warnings"] if "Connection header" in w]))
    told = ("the server's upgrade answer lists Upgrade among other tokens in its Connection header, which RFC 6455 "
            "allows and picows (the default WebSocket client) refuses: this target's connections went over the "
            "websockets client from then on")
    assert got == [("passed", None, [told]), ("passed", None, [])], got


@pytest.mark.parametrize("code", [0, 1006])
def test_monitor_once_fails_a_probe_whose_server_closes_with_a_code_no_close_frame_may_carry(capsys, code):
    """`chatprobe monitor --once` (picows) against aiohttp closing mid-run with `ws.close(code=0 or 1006)`: the probe
    resumes its run and is judged `failed`, R12, as `chatprobe run` with either client judges it. It passed."""
    from harness.cli import main

    with serve_aiohttp(NetraApp(closes_mid_run(code)), close_reason=b"") as url:
        exit_code = main(["monitor", "--once", "--target", url, "--auth", "none", "--target-name", "t"])
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("t / probe: "))
    assert exit_code == 1 and line.startswith("t / probe: failed") and "violations R12 x1" in line, out
