"""`chatprobe run` and `chatprobe monitor` as a user runs them (a scenario file and `--target`) against WebSocket
servers that abuse the opening handshake or the connection's end, over both WebSocket clients: picows (the default)
and websockets (`compression: deflate` takes it). The raw servers are in hostile_ws.py, shared with the Locust user's
gevent client (test_gevent_hostile.py): a redirect to another origin, a subprotocol or an extension the client never
offered, an answer that is not HTTP/1.1, a head that never ends or comes a byte at a time, a deflated frame that
inflates to 256 MiB, a close frame and then a socket held open, a reserved bit no extension defines.

Each test has cases that failed on the code before it (the others hold the two clients to one answer): the
websockets client followed a redirect, to another port with the token as a subprotocol; picows took a subprotocol
and an extension it never offered and frames with a reserved bit set, and called an answer it could not parse
`refused` (exit 3, "unreachable"); the websockets client waited out the connect timeout on a head it had already
refused and, having failed a connection (a frame over max_size, inflated or not) or answered a close, waited for the
server to hang up until the chat's deadline: an R10 instead of the R12; picows kept a message's fragments without a
bound on their count (a message of millions of tiny ones). The dripped upgrade, and a TLS handshake never
answered or dripped, hold both clients to connect_timeout as a deadline on the whole handshake (they passed before
they were added: guards of the parity with the Locust user's client, test_gevent_hostile.py).
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

from harness.checker import ChatResult
from harness.client import Session
from harness.events import Outcome
from harness.flow import ChatOptions
from harness.profiles import load_profile
from harness.scenario import Expect, Scenario
from harness.sinks import Sink
from harness.targets import Target, TokenProvider
from harness.transports.picows_ws import HEAD_PAST_PICOWS
from harness.transports.websocket import UPGRADE_TOO_LARGE

from .hostile_ws import (
    FLOOD_FOR,
    FLOODS,
    LIMIT_KB,
    MALFORMED,
    MEASURE,
    REFUSALS,
    RESERVED,
    TINY_FRAMES,
    TOKEN,
    UNOFFERED,
    UPGRADE_BODIES,
    UPGRADE_BODY_SAID,
    Drip,
    Raw,
    Reader,
    Writer,
    answers_nothing,
    bare_lf,
    bomb,
    chooses,
    closes_then_holds,
    drips_the_upgrade,
    floods,
    fragments,
    frame,
    malformed,
    offered_deflate,
    oversized,
    raw,
    read_until_gone,
    redirect_to,
    refuses_then_holds,
    reserved_bits,
    run_frames,
    tls_context,
    upgrade,
    welcome_and_message,
)

# The two WebSocket clients, as a scenario picks them: picows unless compression is on.
CLIENTS = {"picows": "none", "websockets": "deflate"}
NETRA = load_profile("netra")


async def chatprobe(tmp_path: Path, url: str, compression: str, *, auth: str = "header", deadline: str = "30s",
                    connect_timeout: str = "20s", command: str = "run", ca_file: str | None = None,
                    reconnect: bool = False) -> tuple[int, dict, str, int]:
    """`chatprobe run SCENARIO --target URL` (or `monitor --once`), bounded: (exit code, the one chat of --json
    (run) or {} (monitor), stdout + stderr, peak RSS in KiB)."""
    scenario = tmp_path / "one.yaml"
    scenario.write_text(f"name: one\nconnect_timeout: {connect_timeout}\ncompression: {compression}\n"
                        f"reconnect: {str(reconnect).lower()}\n"
                        f"expect: {{deadline: {deadline}, settle: 0.1s}}\n")
    out = tmp_path / "r.json"
    if command == "run":
        args = ["run", str(scenario), "--target", url, "--json", str(out), "-q"]
    else:
        args = ["monitor", "--once", "--target", url, "--scenario", str(scenario)]
    if ca_file is not None:
        args += ["--ca-file", ca_file]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", MEASURE, sys.executable, "-m", "harness", *args, "--auth", auth,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1", "CHATPROBE_TOKEN": TOKEN})
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)  # a hang fails here
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = stdout.decode() + stderr.decode()
    peak_kb = int(stderr.decode().strip().splitlines()[-1].rpartition("peak_kb=")[2])
    assert "Traceback" not in text and TOKEN not in text, text
    if command != "run":
        return proc.returncode or 0, {}, text, peak_kb
    (scenario_doc,) = json.loads(out.read_text())["scenarios"]
    (chat,) = scenario_doc["chats"]
    return proc.returncode or 0, chat, text, peak_kb


# -- the handshake --

@pytest.mark.parametrize("auth", ["header", "subprotocol"])
@pytest.mark.parametrize("client", CLIENTS)
async def test_a_redirect_to_another_origin_is_followed_by_neither_client(tmp_path, client, auth):
    """A 302 to another port: no connection is made there (the websockets client went, and with `--auth
    subprotocol` the token went with it); the handshake failed with the server's answer, as picows says it."""
    async with raw(answers_nothing) as elsewhere, raw(redirect_to(elsewhere.port)) as server:
        code, chat, _, _ = await chatprobe(tmp_path, server.url, CLIENTS[client], auth=auth)
    assert elsewhere.requests == []
    assert (code, chat["outcome"], chat["error_kind"]) == (1, "error", "protocol_error")
    assert chat["error"] == "HTTP 302 at the WebSocket handshake"


async def test_the_monitor_follows_no_redirect_either(tmp_path):
    """`chatprobe monitor --once` carries the same client: the probe fails, nothing reaches the other origin."""
    async with raw(answers_nothing) as elsewhere, raw(redirect_to(elsewhere.port, "307 Temporary Redirect")) as srv:
        code, _, text, _ = await chatprobe(tmp_path, srv.url, "deflate", auth="subprotocol", command="monitor")
    assert elsewhere.requests == []
    assert code == 1, text


@pytest.mark.parametrize("chosen", UNOFFERED.values(), ids=UNOFFERED.keys())
@pytest.mark.parametrize("client", CLIENTS)
async def test_an_upgrade_choosing_what_the_client_never_offered_fails_the_connection(tmp_path, client, chosen):
    """RFC 6455 4.1: a subprotocol or an extension the client did not offer MUST fail the connection (the token goes
    as a header here: no subprotocol is offered). picows took both and the chat passed."""
    async with raw(chooses(chosen)) as srv:
        code, chat, _, _ = await chatprobe(tmp_path, srv.url, CLIENTS[client])
    assert (code, chat["outcome"], chat["error_kind"]) == (1, "error", "protocol_error"), chat


@pytest.mark.parametrize("header", UPGRADE_BODIES.values(), ids=UPGRADE_BODIES.keys())
@pytest.mark.parametrize("client", CLIENTS)
async def test_a_101_that_announces_a_body_fails_the_connection_alike_in_both_clients(tmp_path, client, header):
    """picows refuses such an answer ("invalid upgrade response", naming nothing), where the websockets client took
    it and the chat passed: one server, two verdicts by the scenario's `compression`. Both refuse it now, naming the
    header (its value never shown)."""
    sent, name = header
    async with raw(chooses(sent)) as srv:
        code, chat, _, _ = await chatprobe(tmp_path, srv.url, CLIENTS[client])
    assert (code, chat["outcome"], chat["error_kind"]) == (1, "error", "protocol_error"), chat
    assert chat["error"] == UPGRADE_BODY_SAID.format(name), chat


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_101_whose_head_cannot_be_parsed_is_called_so_alike_by_both_clients(tmp_path, client):
    """A header line folded onto the next (obs-fold, which RFC 9112 5.2 no longer allows): picows said "invalid
    upgrade response" and the websockets client "InvalidMessage", its exception's class name."""
    async with raw(chooses(b"X-Folded: a\r\n b\r\n")) as srv:
        code, chat, _, _ = await chatprobe(tmp_path, srv.url, CLIENTS[client])
    assert (code, chat["outcome"], chat["error_kind"]) == (1, "error", "protocol_error"), chat
    assert chat["error"] == "WebSocket handshake failed: malformed upgrade response", chat


# 101 answers past both clients' bounds on a head: picows' 16 KiB in all, and websockets' (the one picows falls back
# to for a 101 it refuses) 128 header fields, or a line of 8 KiB.
TOO_LARGE = {"200 header fields": b"".join(b"X-Junk-%d: " % i + b"a" * 90 + b"\r\n" for i in range(200)),
             "a 20,000-byte header line": b"X-Junk: " + b"a" * 20000 + b"\r\n"}


@pytest.mark.parametrize("head", TOO_LARGE.values(), ids=TOO_LARGE.keys())
@pytest.mark.parametrize("client", CLIENTS)
async def test_a_101_whose_head_is_past_the_clients_bounds_is_called_too_large_alike_by_both_clients(tmp_path, client,
                                                                                                     head):
    """FAILED before: both clients said "malformed upgrade response" (a well-formed head, only too large), and picows'
    fall-back to the websockets client said it refused "a reason phrase that is not UTF-8", of a status line that had
    none."""
    async with raw(chooses(head)) as srv:
        code, chat, text, _ = await chatprobe(tmp_path, srv.url, CLIENTS[client])
    assert (code, chat["outcome"], chat["error_kind"]) == (1, "error", "protocol_error"), chat
    assert chat["error"] == f"WebSocket handshake failed: {UPGRADE_TOO_LARGE}", chat
    (warnings,) = [scenario["warnings"] for scenario in json.loads((tmp_path / "r.json").read_text())["scenarios"]]
    said = " ".join([text, *warnings])
    assert "UTF-8" not in said and "malformed" not in said, said
    if client == "picows":
        assert any(HEAD_PAST_PICOWS in w for w in warnings), warnings  # the run's word on why it took websockets


async def test_picows_refuses_permessage_deflate_it_never_offered(tmp_path):
    """The brief's own case for the lean client, which offers no extension: a server answering permessage-deflate
    and then sending deflated frames is refused at the handshake, not read as garbage."""
    async def server(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
        assert b"permessage-deflate" not in head.lower()
        writer.write(upgrade(head, b"Sec-WebSocket-Extensions: permessage-deflate\r\n"))
        await read_until_gone(reader)

    async with raw(server) as srv:
        code, chat, _, _ = await chatprobe(tmp_path, srv.url, "none")
    assert (code, chat["outcome"], chat["error_kind"]) == (1, "error", "protocol_error"), chat
    assert chat["error"] == "WebSocket handshake failed: the server chose an extension the client did not offer"


@pytest.mark.parametrize("answer", MALFORMED.values(), ids=MALFORMED.keys())
@pytest.mark.parametrize("client", CLIENTS)
async def test_an_answer_that_is_no_http_1_1_upgrade_is_a_protocol_error_in_bounded_memory(tmp_path, client, answer):
    """The server answered, wrongly: a protocol_error (exit 1), not `refused` (picows: exit 3, "unreachable") nor a
    wait until connect_timeout (20 s here) for a head the websockets client had already refused (`timeout`)."""
    async with raw(malformed(answer)) as srv:
        code, chat, _, peak_kb = await chatprobe(tmp_path, srv.url, CLIENTS[client])
    assert (code, chat["outcome"], chat["error_kind"]) == (1, "error", "protocol_error"), chat
    assert peak_kb < LIMIT_KB


async def test_an_upgrade_answer_in_bare_lf_lines_is_a_protocol_error_not_an_unreachable_server(tmp_path):
    """A 101 whose lines end with LF alone: websockets gives up on it with an EOFError ("line without CRLF"), which
    the client took for the server's end, `refused` (exit 3, "unreachable"): the server answered, wrongly.
    (picows, the default client, waits for a CRLF CRLF that never comes until connect_timeout: a `timeout`; its
    HTTP parser is its own, in C, and is left as it is.)

    FAILED on the code before: (3, 'error', 'refused')."""
    async with raw(malformed(bare_lf)) as srv:
        code, chat, _, _ = await chatprobe(tmp_path, srv.url, CLIENTS["websockets"])
    assert (code, chat["outcome"], chat["error_kind"]) == (1, "error", "protocol_error"), chat
    assert "LF alone" in chat["error"], chat


@pytest.mark.parametrize("answer", REFUSALS.values(), ids=REFUSALS.keys())
@pytest.mark.parametrize("client", CLIENTS)
async def test_a_refusal_whose_body_never_ends_is_auth_failed_by_its_status_line(tmp_path, client, answer):
    """A 401 or 403 whose body has no length (the server keeps the connection open), falls short of its
    Content-Length, weighs 500 MB or comes in a transfer coding websockets does not read: `auth_failed` (exit 2, the
    credentials refused), as picows says it. The websockets client read the body first: it waited out connect_timeout
    (20 s here), a `timeout` (exit 3, "unreachable"), or refused the body, a `protocol_error`."""
    async with raw(malformed(answer)) as srv:
        code, chat, _, peak_kb = await chatprobe(tmp_path, srv.url, CLIENTS[client])
    assert chat["error_kind"] == "auth_failed", chat
    assert chat["error"] in ("HTTP 401 at the WebSocket handshake", "HTTP 403 at the WebSocket handshake"), chat
    assert code == 2
    assert peak_kb < LIMIT_KB


# Refusals whose status line picows could not read, though HTTP allows them: (the line, exit code, result, error).
ODD_STATUS_LINES = {
    "cdn 520": (b"HTTP/1.1 520 Unknown Error", 1, "protocol_error", "HTTP 520 at the WebSocket handshake"),
    "nginx 499": (b"HTTP/1.1 499 Client Closed Request", 1, "protocol_error", "HTTP 499 at the WebSocket handshake"),
    "latin-1 reason": (b"HTTP/1.1 401 Non autoris\xe9", 2, "auth_failed", "HTTP 401 at the WebSocket handshake"),
}


@pytest.mark.parametrize("odd", ODD_STATUS_LINES.values(), ids=ODD_STATUS_LINES.keys())
@pytest.mark.parametrize("client", CLIENTS)
async def test_a_refusal_whose_status_python_names_not_or_reason_is_latin_1_is_said_by_its_status(tmp_path, client,
                                                                                                  odd):
    """A status no HTTPStatus member names (a CDN's 520, nginx's 499) or a reason phrase in Latin-1 (RFC 9112's
    obs-text): websockets reads the status, picows called the answer "malformed upgrade response" (a 401 then a
    protocol_error, exit 1, not the credentials refused, exit 2)."""
    line, exit_code, kind, error = odd

    async def answer(writer: Writer, head: bytes) -> None:
        writer.write(line + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with raw(malformed(answer)) as srv:
        code, chat, _, _ = await chatprobe(tmp_path, srv.url, CLIENTS[client])
    assert (code, chat["outcome"], chat["error_kind"], chat["error"]) == (exit_code, "error", kind, error), chat


@pytest.mark.parametrize("client", CLIENTS)
async def test_an_upgrade_whose_reason_phrase_is_latin_1_opens_alike(tmp_path, client):
    """A 101 whose reason phrase is in Latin-1 (RFC 9112's obs-text), then a whole run: websockets takes it, picows
    refused it as a "malformed upgrade response" (an error chat, exit 1); the websockets client now carries the
    target from picows' refusal on, as for the other answers RFC 6455 allows and picows refuses."""
    async def server(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
        writer.write(upgrade(head, offered_deflate(head), status=b"HTTP/1.1 101 Protocoles chang\xe9s"))
        message_id = await welcome_and_message(reader, writer)
        writer.writelines(frame(1, f) for f in run_frames(message_id))
        await read_until_gone(reader)

    async with raw(server) as srv:
        code, chat, _, _ = await chatprobe(tmp_path, srv.url, CLIENTS[client])
    assert (code, chat["outcome"], chat["error"]) == (0, "passed", None), chat


@pytest.mark.parametrize("client", CLIENTS)
async def test_an_upgrade_answer_dripped_a_byte_at_a_time_is_bounded_by_connect_timeout(tmp_path, client):
    """A valid 101 that comes one byte every 0.25 s (some 30 s for the whole head): connect_timeout (1 s) bounds the
    whole handshake, not each read, so the chat is a `timeout` error, not a pass once the drip is done."""
    async with raw(drips_the_upgrade) as srv:
        code, chat, _, _ = await chatprobe(tmp_path, srv.url, CLIENTS[client], connect_timeout="1s")
    assert (code, chat["outcome"], chat["error_kind"]) == (3, "error", "timeout"), chat


SLOW_UPGRADE = 3.0  # seconds before a reconnect's upgrade is answered: past the chat's deadline, within connect_timeout


async def closes_as_the_message_comes_then_answers_late(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
    """The first connection: a welcome, the chat's message read, then a normal close (1000) before any event (a
    server closing an idle connection as the message crossed). The next: its upgrade answered SLOW_UPGRADE seconds
    late, then a welcome and a valid run."""
    if len(srv.requests) == 1:
        writer.write(upgrade(head, offered_deflate(head)))
        await welcome_and_message(reader, writer)
        writer.write(frame(8, (1000).to_bytes(2, "big")))
        await read_until_gone(reader)
        return
    await asyncio.sleep(SLOW_UPGRADE)  # wait-ok: the server's own slowness
    writer.write(upgrade(head, offered_deflate(head)))
    message_id = await welcome_and_message(reader, writer)
    writer.writelines(frame(1, f) for f in run_frames(message_id))
    await read_until_gone(reader)


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_resend_whose_new_connection_is_unanswered_at_the_chats_deadline_ends_then(tmp_path, client):
    """A message that crossed the server's close is sent again on a new connection, timed from its first try: its
    deadline (1 s) bounds the wait for that connection's welcome, and now its opening too: a `timeout` of that
    connection at the deadline, by either client. The upgrade was waited for up to connect_timeout (20 s); answered at
    3 s, the chat was then an R9/R10 (picows) or a "no welcome frame within 0s" protocol_error (websockets)."""
    async with raw(closes_as_the_message_comes_then_answers_late) as srv:
        code, chat, _, _ = await chatprobe(tmp_path, srv.url, CLIENTS[client], deadline="1s", reconnect=True)
    assert (code, chat["outcome"], chat["error_kind"], chat["error"]) == (
        3, "error", "timeout", "timed out while connecting"), chat
    assert len(srv.requests) == 2


@pytest.mark.parametrize("server", ["silent", "dripped"])
@pytest.mark.parametrize("client", CLIENTS)
async def test_a_tls_handshake_never_answered_or_dripped_is_a_timeout_at_connect_timeout(tmp_path, client, server):
    """wss://: a server that never answers the ClientHello, or sends its TLS handshake a byte every 0.25 s, is a
    `timeout` at connect_timeout (1 s), as the Locust user's client says it (test_gevent_hostile.py)."""
    context, ca_file = tls_context(tmp_path)
    async with raw(chooses(b""), context) as srv, Drip(srv.port, 1 << 30) as drip, raw(answers_nothing) as silent:
        port = drip.port if server == "dripped" else silent.port
        code, chat, _, _ = await chatprobe(tmp_path, f"wss://127.0.0.1:{port}/ws", CLIENTS[client],
                                           connect_timeout="1s", ca_file=ca_file)
    assert (code, chat["outcome"], chat["error_kind"]) == (3, "error", "timeout"), chat


# -- the connection's end --

@pytest.mark.parametrize(("client", "send"), [("picows", oversized), ("websockets", oversized),
                                              ("websockets", bomb)],
                         ids=["picows-oversized", "websockets-oversized", "websockets-deflate-bomb"])
async def test_a_frame_the_client_refuses_then_a_socket_held_open_is_an_r12_at_once(tmp_path, client, send):
    """After the first event, a frame over max_size (4 MiB), or a deflated one that inflates to 256 MiB, and then the
    server neither reads nor closes: the client closes with 1009 and drops the socket within its close timeout, so
    the chat is judged on the R12 (not held to its 30 s deadline, an R10), in bounded memory."""
    async with raw(refuses_then_holds(send)) as srv:
        code, chat, _, peak_kb = await chatprobe(tmp_path, srv.url, CLIENTS[client])
    rules = {v["rule"]: v["reason"] for v in chat["violations"]}
    assert code == 1 and chat["outcome"] == "incomplete"
    assert rules.get("R12") == "malformed frame: frame larger than the 4194304 byte limit", rules
    assert "R10" not in rules, rules
    assert peak_kb < LIMIT_KB


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_close_frame_then_a_socket_held_open_ends_the_chat_at_once(tmp_path, client):
    """Mid-run, the server sends its close frame (1001) and then keeps the TCP connection open without reading: the
    connection is over (RFC 6455 reads nothing after a close frame), so the chat ends incomplete there and then,
    not at its 30 s deadline (R10)."""
    async with raw(closes_then_holds) as srv:
        code, chat, _, _ = await chatprobe(tmp_path, srv.url, CLIENTS[client])
    assert code == 1 and chat["outcome"] == "incomplete", chat
    assert chat["events_received"] == 2
    assert "R10" not in {v["rule"] for v in chat["violations"]}, chat["violations"]


@pytest.mark.parametrize("bits", RESERVED.values(), ids=RESERVED.keys())
async def test_a_reserved_bit_no_extension_defines_fails_the_connection(tmp_path, bits):
    """RFC 6455 5.2: with no extension negotiated, a frame with a reserved bit set MUST fail the connection. picows
    (which offers none) read it as a frame like any other: a run of such frames passed."""
    async with raw(reserved_bits(bits)) as srv:
        code, chat, _, _ = await chatprobe(tmp_path, srv.url, "none")
    rules = {v["rule"]: v["reason"] for v in chat["violations"]}
    assert code == 1 and chat["outcome"] != "passed", chat
    assert rules.get("R12") == "malformed frame: WebSocket protocol error", rules
    assert chat["events_received"] == 1


@pytest.mark.parametrize("size", [2, 0], ids=["2-byte", "empty"])
@pytest.mark.parametrize("client", CLIENTS)
async def test_a_message_in_millions_of_tiny_fragments_is_refused_at_the_fragment_limit(tmp_path, client, size):
    """Mid-run, one message in 2,000,000 continuation frames of 2 bytes (4 MB, under max_size) or of none: every
    client fails the connection past websockets' 4,096 fragments (1009, an R12 saying so), in bounded memory. picows
    kept each fragment as an object (peak 312 MB for 8 MB of the wire) and waited out the empty ones to the chat's
    deadline (an R10); websockets' client refused it already, with the 1009 of an oversized frame."""
    async with raw(fragments(size)) as srv:
        code, chat, _, peak_kb = await chatprobe(tmp_path, srv.url, CLIENTS[client])
    rules = {v["rule"]: v["reason"] for v in chat["violations"]}
    assert code == 1 and chat["outcome"] == "incomplete", chat
    assert rules.get("R12") == "malformed frame: message in more than 4096 fragments", rules
    assert "R10" not in rules, rules
    assert peak_kb < LIMIT_KB


@pytest.mark.parametrize("flood", FLOODS.values(), ids=FLOODS.keys())
@pytest.mark.parametrize("client", CLIENTS)
async def test_a_server_flooding_control_frames_at_line_rate_does_not_hold_the_chat_past_its_deadline(
        tmp_path, client, flood):
    """After the first event, pongs (or pings) back to back for 40 s: the chat ends at its deadline (2 s, an R10), and
    the run soon after. The parity guard of the Locust user's client, which this held (test_gevent_hostile.py)."""
    loop = asyncio.get_running_loop()
    async with raw(floods(flood)) as srv:
        start = loop.time()
        code, chat, _, peak_kb = await chatprobe(tmp_path, srv.url, CLIENTS[client], deadline="2s")
        took = loop.time() - start
    assert (code, chat["outcome"]) == (1, "incomplete"), chat
    assert "R10" in {v["rule"] for v in chat["violations"]}, chat["violations"]
    assert took < FLOOD_FOR / 2, took
    assert peak_kb < LIMIT_KB


async def timed_chat(url: str, compression: str, deadline: float, ca_file: str | None = None,
                     sink: Sink | None = None) -> tuple[ChatResult, float, float]:
    """One chat in this process (the clock is the test's own), against `url`: (its verdict, how long the chat took,
    how long its session's close took), each bounded. A TurnCounter `sink` stops counting at the chat's end."""
    target = Target(url=url, profile=NETRA, name="t", tokens=TokenProvider(TOKEN))
    target.compression = compression
    target.ca_file = ca_file
    session = Session(target, "u1", "t", sink or Sink(), connect_timeout=5)
    expectations = Scenario(name="t", expect=Expect(deadline=deadline)).expectations(NETRA)
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        result = await asyncio.wait_for(session.chat("hi", expectations, ChatOptions(settle=0.1)), FLOOD_FOR * 2)
    finally:
        chatted = loop.time()
        if isinstance(sink, TurnCounter):
            sink.counting = False  # (what the close drains is no chat's)
        await asyncio.wait_for(session.close(), FLOOD_FOR)
    return result, chatted - start, loop.time() - chatted


@pytest.mark.parametrize("tiny", TINY_FRAMES.values(), ids=TINY_FRAMES.keys())
@pytest.mark.parametrize("client", CLIENTS)
async def test_a_server_flooding_tiny_text_frames_does_not_hold_the_chat_past_its_deadline(client, tiny):
    """After the first event, 2-byte empty text frames (or `{}`, or heartbeats) back to back, each judged (a
    malformed frame is an R12): the chat ends at its deadline (2 s), the close within its own 2 s. FAILED on the
    code before: every frame of a read was handed over before the event loop's next turn, and picows' reads grew
    to megabytes (it doubles its buffer whenever a read fills it), so the chat's deadline, and every other chat of
    the loop, waited: picows 6.7 s for the 2 s deadline and 20 s for the close, websockets about twice the deadline."""
    async with raw(floods(tiny)) as srv:
        result, chat_took, close_took = await timed_chat(srv.url, CLIENTS[client], 2)
    assert result.outcome is Outcome.INCOMPLETE, result
    assert chat_took < 2 + 1.5, chat_took
    assert close_took < 2 + 1.5, close_took


class TurnCounter(Sink):
    """The events handed to the sink in each turn of the loop while `counting`: `tick` is a task that steps once a
    turn (a zero-length pause, marked below, yields to the next turn), so the events between two of its steps are one turn's."""

    def __init__(self) -> None:
        self.turn = 0
        self.counting = True
        self.per_turn: Counter[int] = Counter()

    def event_received(self, scenario: str, event: object) -> None:
        if self.counting:
            self.per_turn[self.turn] += 1

    async def tick(self) -> None:
        while True:
            self.turn += 1
            await asyncio.sleep(0)  # wait-ok: one turn of the loop, no time (what the counter counts)


# 28 bytes a frame (2 of header): an event each, counted by a sink as it is judged.
TINY_EVENT = frame(1, b'{"type": "agent_thinking"}')


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_a_flood_of_tiny_frames_ends_the_chat_at_its_deadline_on_uvloop(tls, tmp_path):
    """The tiny-frame flood above on uvloop, the loop `chatprobe run` uses: libuv reads a socket up to 32 times a
    turn while it has bytes, so picows' 8 KiB reads alone let one turn hand over 32 of them (131,072 empty frames,
    each judged). No turn of the loop is held long, so the chat ends at its deadline: on the code before (plain ws) a
    turn of 0.44-0.52 s, the 2 s deadline ended at 2.9 s.

    What is checked is what a turn hands over, counted (frames of an event each, so that a sink counts them): at most
    a few of picows' reads (READ_CAP) a turn. FAILED on the code before, ws and wss alike: 11-14 reads a turn (3,200
    to 4,000 events). How long a turn or the chat takes is the machine's as much as the code's (a 2 s chat on a loaded
    machine ended at 2.75 s, past a bound of 2.6 s): the chat's end is bounded against a hang only."""
    import uvloop

    from harness.transports.picows_ws import READ_CAP

    counter = TurnCounter()

    async def main() -> tuple[ChatResult, float]:
        context, ca_file = tls_context(tmp_path) if tls else (None, None)
        async with raw(floods(TINY_EVENT), context) as srv:
            ticker = asyncio.ensure_future(counter.tick())
            try:
                result, took, _ = await timed_chat(srv.url, "none", 2, ca_file, counter)
            finally:
                ticker.cancel()
        return result, took

    result, took = uvloop.run(main())
    assert result.outcome is Outcome.INCOMPLETE, result
    assert took < 2 + 10, took  # (the deadline, and no hang)
    per_read = READ_CAP // len(TINY_EVENT)
    worst = max(counter.per_turn.values())
    assert sum(counter.per_turn.values()) > 10 * per_read, counter.per_turn  # (the flood was read)
    assert worst <= 4 * per_read, (worst, per_read)  # (the first turns take the frames read before the chat's own)
