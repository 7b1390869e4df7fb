"""A server frame holding JavaScript's NaN, Infinity or -Infinity as a value (not in a string) is one R12 that says
so: JSON (RFC 8259) has no such numbers, and a browser's JSON.parse refuses the whole frame, so the user's UI loses
that event. Python's json reads them (the exact fallback the fast decoder hands such a frame to), so the event is
otherwise read as any: one R12, no cascade of R7s. Judged alike by `chatprobe run` (picows and the websockets
client), `chatprobe check` of its recording and `chatprobe proxy`, over a raw RFC 6455 server on 127.0.0.1, and over
SSE (AG-UI, live and a saved body). A seq of NaN keeps its own R12 (one per frame, not two). A frame that is no
event (a heartbeat, a ping, an error_message rejecting the message) holding one is that R12 too, and still what it
says: the ping answered, the chat ended as the error reports.

FAILED on the code before it: each run passed (a NaN or Infinity outside `seq` went unflagged); then, with events
flagged, a control, ping or error frame holding one still passed unflagged.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.checker import ChatTracker
from harness.events import Event, Outcome
from harness.offline import check_files
from harness.profiles import _decoder_of, load_profile
from harness.scenario import Scenario

from .outside_servers import WsConn
from .test_agui_wire_variants import _run, answer, framed
from .test_conforming_servers import Server, frame, judged_three_ways, run_frames, text
from .test_seq_integers import _run_and_check, with_seq

pytestmark = pytest.mark.timeout(120)

NETRA = load_profile("netra")
AGUI = load_profile("ag-ui")
CONSTANTS = ["NaN", "Infinity", "-Infinity"]
SAYS = "not a JSON number (JSON has no NaN or Infinity; a browser's JSON.parse refuses the frame)"


@pytest.mark.parametrize("compression", ["none", "deflate"])  # picows, the websockets client
@pytest.mark.parametrize("at", [0, 2])
@pytest.mark.parametrize("written", CONSTANTS)
async def test_nan_or_infinity_in_a_field_is_one_r12_everywhere(written, at, compression):
    got = await judged_three_ways(lambda: Server(with_seq(f'{{"score": {written}, "note": "NaN"}}', at, "data")),
                                  compression=compression)
    expected = [("failed", (("R12", 1),), ())]
    assert got == {"run": expected, "check": expected, "proxy": expected}, got


@pytest.mark.parametrize("written", CONSTANTS)
def test_the_r12_names_the_constant_and_where_live_and_offline(tmp_path, written):
    live, offline = _run_and_check(tmp_path, with_seq(f"[1, {written}]", 0, "data"))
    assert live == offline
    [(rule, reason)] = live
    assert rule == "R12" and reason.startswith(f"agent_started holds {written} at character ") and SAYS in reason, reason


def _judged(frames: list[str]) -> list[tuple[str, str]]:
    exp = Scenario(name="t").expectations(NETRA)
    chat = ChatTracker("c", exp, 0.0, run_id="r")
    for i, raw in enumerate(frames):
        chat.feed(NETRA.decode(raw, 0.01 * (i + 1)))
    return [(v.rule, v.reason) for v in chat.finish(1.0).violations]


def _frames() -> list[str]:
    return [json.dumps(f) for f in run_frames({"message_id": "m", "thread_id": "t", "run_id": "r"})]


def test_the_character_is_where_the_constant_is_and_one_in_a_string_is_text():
    frames = _frames()
    raw = frames[1][:-1] + ', "data": {"NaN": "Infinity", "x": [-Infinity, NaN]}}'
    frames[1] = raw
    [(rule, reason)] = _judged(frames)
    at = raw.index("-Infinity")
    assert (rule, reason) == ("R12", f"{json.loads(raw)['type']} holds -Infinity at character {at}: {SAYS}")
    # Only text: a string that says NaN is no R12.
    clean = _frames()
    clean[1] = clean[1][:-1] + ', "data": "NaN and Infinity, \\"NaN\\""}'
    assert _judged(clean) == []


def test_a_nan_seq_is_the_frame_s_one_r12_with_its_own_words():
    frames = _frames()
    frames[0] = frames[0].replace('"seq": 1', '"seq": NaN')[:-1] + ', "data": Infinity}'
    [(rule, reason)] = _judged(frames)
    assert rule == "R12" and reason.startswith("agent_started has seq NaN, not a JSON number"), reason


def test_the_fast_and_exact_decoders_agree():
    raw = _frames()[2][:-1] + ', "data": {"a": NaN}}'
    fast, exact = NETRA.decode(raw, 1.0), _decoder_of(NETRA).decode_exact(raw, 1.0)
    assert isinstance(fast, Event) and fast == exact and len(fast.problems) == 1, (fast, exact)


def _sse_body(body: bytes, written: str) -> bytes:
    events = _run(body, {"type": "STATE_SNAPSHOT", "snapshot": {"a": 0}},
                  {"type": "TEXT_MESSAGE_CHUNK", "messageId": "m1", "delta": "42"})
    text = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return text.replace(b'"a": 0', b'"a": ' + written.encode())


@pytest.mark.parametrize("written", CONSTANTS)
async def test_over_sse_a_state_snapshot_with_nan_is_one_r12(written):
    result = await answer(lambda body: framed("chunked", _sse_body(body, written)))
    assert result.outcome is Outcome.FAILED, result.violations
    [v] = result.violations
    assert v.rule.value == "R12" and v.reason.startswith(f"STATE_SNAPSHOT holds {written} at character "), v


def test_check_of_a_saved_sse_body_with_infinity_is_one_r12(tmp_path: Path):
    path = tmp_path / "body.sse"
    path.write_bytes(_sse_body(b'{"threadId": "t1", "runId": "r1"}', "Infinity"))
    [run] = check_files([path], AGUI, Scenario(name="t"))
    [result] = run.results
    assert [(v.rule.value, v.reason.split(" at ")[0]) for v in result.violations] == [
        ("R12", "STATE_SNAPSHOT holds Infinity")], result.violations




# -- frames that are no event: a control frame, a ping, a connection-level error ---------------------------------------

def _not_an_event(kind: str, written: str) -> Server:
    """A netra server whose answer holds one frame that is no event of the run, holding `written` as a value: a
    heartbeat (control) or a ping among the run's events, or, instead of a run, the error_message rejecting the
    message (`written` None: the same frames, plain JSON)."""
    def raw(obj: dict[str, Any]) -> bytes:
        data = json.dumps(obj)
        return frame((data[:-1] + f', "score": {written}}}' if written else data).encode())

    async def answer(conn: WsConn, p: dict[str, Any], n: int, server: Server) -> None:
        if kind == "error":
            conn.writer.write(raw({"type": "error_message", "error_code": "INVALID_MESSAGE",
                                   "error_message": "no such tool"}))
            return
        frames = [text(f) for f in run_frames(p)]
        frames.insert(2, raw({"type": "heartbeat", "data": {}} if kind == "control" else {"type": "ping"}))
        conn.writer.write(b"".join(frames))
    return Server(answer)


class PongsSeen(Server):
    """The server above, counting the client's answers to its ping."""

    pongs = 0

    async def handler(self, conn: WsConn) -> None:
        recv = conn.recv

        async def counting() -> str | None:
            raw = await recv()
            if raw is not None and json.loads(raw).get("type") == "pong":
                PongsSeen.pongs += 1
            return raw

        conn.recv = counting  # type: ignore[method-assign]
        await super().handler(conn)


@pytest.mark.parametrize("kind", ["control", "ping", "error"])
@pytest.mark.parametrize("written", ["NaN", "-Infinity"])
async def test_a_control_ping_or_error_frame_holding_nan_is_its_r12_and_still_what_it_says(kind, written):
    # FAILED on the code before: such a frame was no R12 at all (an event's was), judged as if it were JSON.
    clean = await judged_three_ways(lambda: _not_an_event(kind, ""))
    got = await judged_three_ways(lambda: _not_an_event(kind, written))
    # What the frame says stands (the error still ends its chat as the error it reports: `error`, not a deadline's
    # R10), with one R12 besides. (The proxy counts a plain rejection as the client's doing, in no verdict of the
    # server's; a rejection holding NaN is the server's `error` chat with its R12, as run and check judge it:
    # test_proxy_rejected_chat.)
    expected = {road: [("failed" if outcome == "passed" else outcome, tuple(sorted({**dict(rules), "R12": 1}.items())),
                        warnings) for outcome, rules, warnings in verdicts] for road, verdicts in clean.items()}
    if kind == "error":
        assert clean["proxy"] == [], clean
        expected["proxy"] = expected["run"]
    assert got == expected, (clean, got)
    assert clean["run"] == [("error", (), ())] if kind == "error" else [("passed", (), ())], clean


@pytest.mark.parametrize("kind", ["control", "ping", "error"])
def test_the_frame_s_r12_names_what_it_holds_and_where_live_and_offline(tmp_path, kind):
    async def answer(conn: WsConn, p: dict[str, Any], n: int, server: Server) -> None:
        await _not_an_event(kind, "Infinity").answer(conn, p, n, server)

    live, offline = _run_and_check(tmp_path, answer)
    assert live == offline
    [(rule, reason)] = [(r, why) for r, why in live if r == "R12"]
    name = {"control": "heartbeat", "ping": "ping", "error": "error_message"}[kind]
    assert reason.startswith(f"malformed frame: {name} holds Infinity at character ") and SAYS in reason, reason


async def test_a_ping_holding_nan_is_still_answered():
    PongsSeen.pongs = 0
    got = await judged_three_ways(lambda: PongsSeen(_not_an_event("ping", "NaN").answer))
    assert got["run"] == [("failed", (("R12", 1),), ())], got
    assert PongsSeen.pongs >= 2, PongsSeen.pongs  # `run`'s client and the one playing through the proxy answered
