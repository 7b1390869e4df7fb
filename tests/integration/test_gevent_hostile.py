"""The Locust user's client (harness/gevent_client.py) against the hostile servers that picows and websockets face
in test_hostile_handshakes.py (the same raw servers, from hostile_ws.py): the same answers. Each chat runs as Locust
runs it: a process of its own with gevent's monkey-patching (socket, ssl, select, threading), the target built as
harness/locust_user.py builds it from a scenario file, one SyncSession chat; the process's peak RSS is measured and
its output must hold no traceback and no token.

Failing on the code before this file: every chat over wss:// was an error before its first event (the client's
sends asked the SSL socket for MSG_DONTWAIT, which it refuses), under gevent and on plain threads; under gevent a
TLS handshake dripped a byte at a time held the connect (and the chat) to the drip's end, far past connect_timeout.
A message in millions of tiny fragments was kept fragment by fragment (hundreds of MB).
The other cases held already and are kept as the parity guard: redirects, unoffered subprotocols and extensions,
malformed upgrade answers, a dripped upgrade, frames refused or a close and then a socket held open, reserved bits.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

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
    answers_nothing,
    bare_lf,
    bomb,
    chooses,
    closes_then_holds,
    drips_the_upgrade,
    floods,
    fragments,
    malformed,
    oversized,
    raw,
    redirect_to,
    refuses_then_holds,
    reserved_bits,
    tls_context,
)

pytestmark = pytest.mark.timeout(150)

# One chat of the scenario file's, as harness/locust_user.py plays it under Locust: gevent's monkey-patching first,
# the target from TargetOptions through make_target (WebSocket only), the scenario's compression and connect_timeout.
# Prints the verdict (ChatResult.to_dict; `chat_seconds`, `close_seconds`: how long the chat and the close took)
# as one JSON line. Without "gevent" as its last argument: on plain threads.
CHAT = """
import sys
if sys.argv[-1] == "gevent":
    from gevent import monkey
    monkey.patch_all()
import json
import time
from harness.gevent_client import SyncSession
from harness.scenario import load_scenario
from harness.sinks import Sink
from harness.targets import TargetOptions, make_target, read_token
scenario = load_scenario(sys.argv[1])
options = TargetOptions(url=sys.argv[2], auth=sys.argv[3], ca_file=sys.argv[4] or None)
target = make_target(options, read_token(options), scenario.profile, transports=("websocket",))
target.compression = scenario.compression
session = SyncSession(target, "u1", scenario.name, Sink(), connect_timeout=scenario.connect_timeout)
call = scenario.user_script(target.profile).chat()
start = time.monotonic()
try:
    result = session.chat(call.content, call.expectations, call.options)
    took = time.monotonic() - start
finally:
    closing = time.monotonic()
    session.close()
print(json.dumps({**result.to_dict(), "chat_seconds": took, "close_seconds": time.monotonic() - closing}))
"""
COMPRESSION = ["none", "deflate"]


async def locust_chat(tmp_path: Path, url: str, compression: str = "none", *, auth: str = "header",
                      connect_timeout: str = "20s", ca_file: str = "", gevent: bool = True,
                      within: float = 120, deadline: str = "30s") -> tuple[dict, int]:
    """One chat of the gevent client (on plain threads with gevent=False), bounded by `within` seconds: (its verdict,
    the process's peak RSS in KiB)."""
    scenario = tmp_path / "one.yaml"
    scenario.write_text(f"name: one\nconnect_timeout: {connect_timeout}\ncompression: {compression}\nreconnect: false\n"
                        f"expect: {{deadline: {deadline}, settle: 0.1s}}\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", MEASURE, sys.executable, "-c", CHAT, str(scenario), url, auth, ca_file,
        "gevent" if gevent else "threads",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1", "CHATPROBE_TOKEN": TOKEN}, start_new_session=True)
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), within)  # a hang fails here
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the chat's process too, not only the one measuring it
            await proc.wait()
    text = stdout.decode() + stderr.decode()
    assert proc.returncode == 0 and "Traceback" not in text and TOKEN not in text, text
    peak_kb = int(stderr.decode().strip().splitlines()[-1].rpartition("peak_kb=")[2])
    return json.loads(stdout.decode().strip().splitlines()[-1]), peak_kb


# -- the handshake --

@pytest.mark.parametrize("auth", ["header", "subprotocol"])
async def test_a_redirect_to_another_origin_is_not_followed(tmp_path, auth):
    """A 302 to another port: nothing reaches it (with `--chatprobe-auth subprotocol` the token would go as a
    subprotocol), and the chat is the protocol_error the asyncio clients give."""
    async with raw(answers_nothing) as elsewhere, raw(redirect_to(elsewhere.port)) as srv:
        chat, _ = await locust_chat(tmp_path, srv.url, auth=auth)
    assert elsewhere.requests == []
    assert (chat["outcome"], chat["error_kind"], chat["error"]) == (
        "error", "protocol_error", "HTTP 302 at the WebSocket handshake"), chat


@pytest.mark.parametrize("chosen", UNOFFERED.values(), ids=UNOFFERED.keys())
@pytest.mark.parametrize("compression", COMPRESSION)
async def test_an_upgrade_choosing_what_the_client_never_offered_fails_the_connection(tmp_path, compression, chosen):
    """RFC 6455 4.1: a subprotocol or an extension the client did not offer fails the connection."""
    async with raw(chooses(chosen)) as srv:
        chat, _ = await locust_chat(tmp_path, srv.url, compression)
    assert (chat["outcome"], chat["error_kind"]) == ("error", "protocol_error"), chat


@pytest.mark.parametrize("header", UPGRADE_BODIES.values(), ids=UPGRADE_BODIES.keys())
@pytest.mark.parametrize("compression", COMPRESSION)
async def test_a_101_that_announces_a_body_fails_the_connection_as_in_the_asyncio_clients(tmp_path, compression,
                                                                                         header):
    """A Content-Length other than 0 or a Transfer-Encoding on the 101: refused, naming the header, as picows and
    the websockets client refuse it (test_hostile_handshakes.py); the chat passed here before."""
    sent, name = header
    async with raw(chooses(sent)) as srv:
        chat, _ = await locust_chat(tmp_path, srv.url, compression)
    assert (chat["outcome"], chat["error_kind"], chat["error"]) == (
        "error", "protocol_error", UPGRADE_BODY_SAID.format(name)), chat


@pytest.mark.parametrize("answer", MALFORMED.values(), ids=MALFORMED.keys())
async def test_an_answer_that_is_no_http_1_1_upgrade_is_a_protocol_error_in_bounded_memory(tmp_path, answer):
    """The server answered, wrongly: a protocol_error, never `refused` or a wait until connect_timeout (20 s)."""
    async with raw(malformed(answer)) as srv:
        chat, peak_kb = await locust_chat(tmp_path, srv.url)
    assert (chat["outcome"], chat["error_kind"]) == ("error", "protocol_error"), chat
    assert peak_kb < LIMIT_KB


async def test_an_upgrade_answer_in_bare_lf_lines_is_a_protocol_error_not_an_unreachable_server(tmp_path):
    """A 101 whose lines end with LF alone: the server answered, wrongly, not `refused` (FAILED on the code before:
    websockets' "line without CRLF" EOFError read as the server's end)."""
    async with raw(malformed(bare_lf)) as srv:
        chat, _ = await locust_chat(tmp_path, srv.url)
    assert (chat["outcome"], chat["error_kind"]) == ("error", "protocol_error"), chat


@pytest.mark.parametrize("answer", REFUSALS.values(), ids=REFUSALS.keys())
async def test_a_refusal_whose_body_never_ends_is_auth_failed_by_its_status_line(tmp_path, answer):
    """A 401 or 403 whose body never ends while the connection stays open (no length, short of its Content-Length,
    500 MB, a transfer coding websockets does not read): `auth_failed` as under `chatprobe run`, not the `timeout` at
    connect_timeout (20 s) or the `protocol_error` the body made it."""
    async with raw(malformed(answer)) as srv:
        chat, _ = await locust_chat(tmp_path, srv.url)
    assert chat["error_kind"] == "auth_failed", chat
    assert chat["error"] in ("HTTP 401 at the WebSocket handshake", "HTTP 403 at the WebSocket handshake"), chat


async def test_an_upgrade_answer_dripped_a_byte_at_a_time_is_bounded_by_connect_timeout(tmp_path):
    """One byte every 0.25 s: connect_timeout (1 s) bounds the whole handshake, not each read; a `timeout`."""
    async with raw(drips_the_upgrade) as srv:
        chat, _ = await locust_chat(tmp_path, srv.url, connect_timeout="1s")
    assert (chat["outcome"], chat["error_kind"]) == ("error", "timeout"), chat


# -- wss:// --

@pytest.mark.parametrize("gevent", [True, False], ids=["gevent", "threads"])
async def test_a_chat_over_wss_passes(tmp_path, gevent):
    """The Locust user over TLS, under gevent and on plain threads: its sends asked an SSL socket for MSG_DONTWAIT,
    which it refuses (ValueError), so every chat over wss:// was an error (send_failed) before the first event."""
    context, ca_file = tls_context(tmp_path)
    async with raw(chooses(b""), context) as srv:
        chat, _ = await locust_chat(tmp_path, srv.url, ca_file=ca_file, gevent=gevent)
    assert (chat["outcome"], chat["events_received"]) == ("passed", 5), chat


async def test_a_wss_server_no_ca_vouches_for_is_a_tls_error(tmp_path):
    """Without --chatprobe-ca-file the test's CA is unknown: the handshake is refused, a tls_error as under `run`."""
    context, _ = tls_context(tmp_path)
    async with raw(chooses(b""), context) as srv:
        chat, _ = await locust_chat(tmp_path, srv.url)
    assert (chat["outcome"], chat["error_kind"]) == ("error", "tls_error"), chat
    assert srv.requests == []


@pytest.mark.parametrize("gevent", [True, False], ids=["gevent", "threads"])
@pytest.mark.parametrize("server", ["silent", "dripped"])
async def test_a_tls_handshake_never_answered_or_dripped_is_a_timeout_at_connect_timeout(tmp_path, server, gevent):
    """A server that never answers the ClientHello, or sends its TLS handshake a byte every 0.25 s (some 6 minutes
    for the whole of it): connect_timeout (1 s) bounds the whole connect, a `timeout` as under `chatprobe run`.
    Under gevent the dripped handshake went on to its end (gevent's SSL socket waits its timeout afresh for each
    read; a plain thread's has one deadline for the whole handshake): the chat held far past its 30 s deadline."""
    context, ca_file = tls_context(tmp_path)
    async with raw(chooses(b""), context) as srv, Drip(srv.port, 1 << 30) as drip, raw(answers_nothing) as silent:
        port = drip.port if server == "dripped" else silent.port
        chat, _ = await locust_chat(tmp_path, f"wss://127.0.0.1:{port}/ws", ca_file=ca_file, connect_timeout="1s",
                                    gevent=gevent, within=40)
    assert (chat["outcome"], chat["error_kind"]) == ("error", "timeout"), chat


# -- the connection's end --

@pytest.mark.parametrize("scheme", ["ws", "wss"])
@pytest.mark.parametrize(("compression", "send"), [("none", oversized), ("deflate", oversized), ("deflate", bomb)],
                         ids=["oversized", "deflate-oversized", "deflate-bomb"])
async def test_a_frame_the_client_refuses_then_a_socket_held_open_is_an_r12_at_once(tmp_path, compression, send,
                                                                                     scheme):
    """After the first event, a frame over max_size (4 MiB), or a deflated one that inflates to 256 MiB, then a
    server that neither reads nor closes: an R12 at once (not the chat's 30 s deadline, an R10), in bounded
    memory; over TLS too (the frame comes in many TLS records, read in parts)."""
    context, ca_file = tls_context(tmp_path) if scheme == "wss" else (None, "")
    async with raw(refuses_then_holds(send), context) as srv:
        chat, peak_kb = await locust_chat(tmp_path, srv.url, compression, ca_file=ca_file)
    rules = {v["rule"]: v["reason"] for v in chat["violations"]}
    assert chat["outcome"] == "incomplete", chat
    assert rules.get("R12") == "malformed frame: frame larger than the 4194304 byte limit", rules
    assert "R10" not in rules, rules
    assert peak_kb < LIMIT_KB


@pytest.mark.parametrize("scheme", ["ws", "wss"])
@pytest.mark.parametrize("compression", COMPRESSION)
async def test_a_close_frame_then_a_socket_held_open_ends_the_chat_at_once(tmp_path, compression, scheme):
    """Mid-run, the server's close frame (1001) and then its socket held open, unread: the chat ends incomplete
    there and then, not at its 30 s deadline (R10)."""
    context, ca_file = tls_context(tmp_path) if scheme == "wss" else (None, "")
    async with raw(closes_then_holds, context) as srv:
        chat, _ = await locust_chat(tmp_path, srv.url, compression, ca_file=ca_file)
    assert chat["outcome"] == "incomplete", chat
    assert chat["events_received"] == 2
    assert "R10" not in {v["rule"] for v in chat["violations"]}, chat["violations"]


@pytest.mark.parametrize("bits", RESERVED.values(), ids=RESERVED.keys())
async def test_a_reserved_bit_no_extension_defines_fails_the_connection(tmp_path, bits):
    """RFC 6455 5.2: no extension negotiated, a frame with a reserved bit set fails the connection (1002, R12)."""
    async with raw(reserved_bits(bits)) as srv:
        chat, _ = await locust_chat(tmp_path, srv.url)
    rules = {v["rule"]: v["reason"] for v in chat["violations"]}
    assert chat["outcome"] != "passed", chat
    assert rules.get("R12") == "malformed frame: WebSocket protocol error", rules
    assert chat["events_received"] == 1


@pytest.mark.parametrize("size", [2, 0], ids=["2-byte", "empty"])
async def test_a_message_in_millions_of_tiny_fragments_is_refused_at_the_fragment_limit(tmp_path, size):
    """One message in 2,000,000 continuation frames of 2 bytes or of none: past websockets' 4,096 fragments the
    connection fails (1009, the R12 of the asyncio clients), in bounded memory. The client kept every fragment (peak
    316 MB for 8 MB of the wire) and waited out the empty ones to the chat's deadline (an R10)."""
    async with raw(fragments(size)) as srv:
        chat, peak_kb = await locust_chat(tmp_path, srv.url)
    rules = {v["rule"]: v["reason"] for v in chat["violations"]}
    assert chat["outcome"] == "incomplete", chat
    assert rules.get("R12") == "malformed frame: message in more than 4096 fragments", rules
    assert "R10" not in rules, rules
    assert peak_kb < LIMIT_KB


@pytest.mark.parametrize("flood", FLOODS.values(), ids=FLOODS.keys())
@pytest.mark.parametrize("compression", COMPRESSION)
async def test_a_server_flooding_control_frames_at_line_rate_does_not_hold_the_chat_past_its_deadline(
        tmp_path, compression, flood):
    """After the first event, pongs (or pings) back to back, so the socket always has bytes to read: the chat ends at
    its deadline (2 s here, an R10). FAILED on the code before: the reader greenlet never waited for the socket, so
    gevent never ran another greenlet, and the chat's deadline (under Locust every other user of the process too)
    waited for the flood to end (40 s of pongs; pings held, their answers' writes let the others run)."""
    async with raw(floods(flood)) as srv:
        chat, peak_kb = await locust_chat(tmp_path, srv.url, compression, deadline="2s", within=FLOOD_FOR * 2)
    assert chat["outcome"] == "incomplete", chat
    assert "R10" in {v["rule"] for v in chat["violations"]}, chat["violations"]
    assert chat["chat_seconds"] < 2 + 1.5, chat["chat_seconds"]
    assert peak_kb < LIMIT_KB


@pytest.mark.parametrize("tiny", TINY_FRAMES.values(), ids=TINY_FRAMES.keys())
async def test_a_server_flooding_tiny_text_frames_does_not_hold_the_chat_past_its_deadline(tmp_path, tiny):
    """After the first event, 2-byte empty text frames (or `{}`, or heartbeats) back to back: one 64 KiB read holds
    tens of thousands, each judged (a malformed frame is an R12). The chat ends at its deadline (2 s), its close at
    once. FAILED on the code before: a read's frames were handed over in one go, no other greenlet running meanwhile,
    and the frames still buffered after the chat's end were judged before the connection let go: the chat took 20 s
    for a 5 s deadline and its close 13 s more."""
    async with raw(floods(tiny)) as srv:
        chat, peak_kb = await locust_chat(tmp_path, srv.url, deadline="2s", within=FLOOD_FOR * 2)
    assert chat["outcome"] == "incomplete", chat
    assert "R10" in {v["rule"] for v in chat["violations"]} | set(chat["violations_not_listed"]), chat["violations"]
    assert chat["chat_seconds"] < 2 + 1.5, chat["chat_seconds"]
    assert chat["close_seconds"] < 1.5, chat["close_seconds"]
    assert peak_kb < LIMIT_KB
