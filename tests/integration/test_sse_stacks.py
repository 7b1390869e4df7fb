"""AG-UI over HTTP POST + SSE served by third-party stacks (tests/integration/sse_stacks.py): sse-starlette on uvicorn
and on hypercorn (its pings, CRLF or LF, `id:`/`event:`/`retry:`, JSON over several `data:` lines), aiohttp-sse and
aiohttp's own StreamResponse (gzip too), Flask under werkzeug (HTTP/1.1 chunked, HTTP/1.0 to the close) and waitress,
and a raw asyncio server for the wire variants (one-byte chunks cutting an event anywhere: inside `data:`, a UTF-8
character, a CRLF; lone-CR line ends; chunk extensions and trailers; gzip a byte at a time; an odd-cased content
type). Each is judged by every road: `chatprobe run --profile ag-ui` (the AG-UI payload checks included), recorded,
and `chatprobe check` of the recording, and for conforming agents a body saved by hand and `chatprobe check --format
sse` of it; every road must give each chat the verdict docs/protocol.md gives it, the counts adding up.

FAILED on the code before this file, with what was wrong:
- test_a_chat_with_no_event_by_a_deadline_equal_to_the_first_event_limit_is_r9_by_every_road: a chat that got no
  event (the server only sent ping comments) with `deadline` equal to `first_event_limit` was R9 + R10 live (its
  verdict a moment past the deadline) but R10 alone in `chatprobe check`, which judges it at the deadline exactly:
  `elapsed > limit` was false there, or true or false by the rounding of `sent + deadline - sent`.
"""
from __future__ import annotations

from typing import Any

import pytest

from .sse_stacks import (
    Action,
    Comment,
    Crash,
    Raw,
    Wait,
    Wire,
    lively,
    run_events,
    serve_aiohttp,
    serve_hypercorn,
    serve_raw,
    serve_sse_starlette,
    serve_waitress,
    serve_werkzeug,
)
from .sse_stacks import judge as judged

pytestmark = pytest.mark.timeout(60)

PASS = ("passed", ())

# stack -> (how it serves the agent, how its body ends: "chunked" (a crash breaks the framing), "close" (HTTP/1.0: a
# crash is a clean end), "buffered" (gzip held until the response ends))
STACKS: dict[str, tuple[Any, str]] = {
    "sse-starlette-uvicorn-crlf-pings": (lambda a: serve_sse_starlette(a, ping=0.005), "chunked"),
    "sse-starlette-uvicorn-lf-multiline": (lambda a: serve_sse_starlette(a, sep="\n", pretty=True, ping=0.01),
                                           "chunked"),
    "sse-starlette-hypercorn": (lambda a: serve_hypercorn(a, ping=0.01), "chunked"),
    "aiohttp-sse-pings": (lambda a: serve_aiohttp(a, style="sse"), "chunked"),
    "aiohttp-stream": (lambda a: serve_aiohttp(a, style="stream"), "chunked"),
    "flask-werkzeug": (serve_werkzeug, "chunked"),
    "flask-werkzeug-http10": (lambda a: serve_werkzeug(a, http10=True), "close"),
    "flask-waitress": (serve_waitress, "chunked"),
    "raw-http10-close": (lambda a: serve_raw(a, Wire(framing="close", piece=3)), "close"),
    "raw-length-crlf": (lambda a: serve_raw(a, Wire(framing="length", sep="\r\n")), "length"),
    "raw-1-byte-chunks-crlf": (lambda a: serve_raw(a, Wire(sep="\r\n", piece=1)), "chunked"),
    "raw-1-byte-chunks-lone-cr-multiline": (lambda a: serve_raw(a, Wire(sep="\r", piece=1, pretty=True)), "chunked"),
    "raw-gzip-1-byte-chunks": (lambda a: serve_raw(a, Wire(gzip=True, piece=1)), "chunked"),
    "raw-chunk-extensions-trailer-odd-content-type": (lambda a: serve_raw(a, Wire(
        piece=40, chunk_ext=b";x=1", trailer=b"X-Checksum: 1\r\n", content_type="TEXT/Event-Stream;Charset=UTF-8")),
        "chunked"),
}


@pytest.mark.parametrize("stack", list(STACKS))
def test_a_conforming_agent_on_each_stack_passes_every_chat_by_every_road(tmp_path, stack):
    # two users at once, three chats each: every chat its own POST and stream
    got = judged(tmp_path, STACKS[stack][0], lively, ["one", "two", "three"], body=True, users=2)
    assert got == {road: [PASS] * 6 for road in ("run", "check", "body")}, got


def misbehaving(inp: dict[str, Any], text: str) -> list[Action]:
    ev = run_events(inp)
    if "#linger" in text:  # the stream kept open (pinging) after RUN_FINISHED: judged at its settle, never waited for
        return [*ev, Comment("ping"), Wait(2.5)]
    if "#crash-mid" in text:  # the handler raises after four events
        return [*ev[:4], Comment("x"), Crash()]
    if "#crash-after" in text:  # ... after RUN_FINISHED, before the body's end
        return [*ev, Crash()]
    if "#silent" in text:  # ping comments only, past the deadline
        return [Comment("ping"), Wait(2.5)]
    if "#stall" in text:
        return [*ev[:4], Wait(1.0), *ev[4:]]  # twice the stall limit: a loaded machine's pause is no stall
    if "#bad-utf8" in text:
        return [*ev[:4], Raw(b"data: \xff\xfe\n\n"), *ev[4:]]
    if "#no-data-field" in text:  # an event sent without its `data:`
        return [*ev[:4], Raw(b'{"type":"STEP_STARTED","stepName":"x"}\n\n'), *ev[4:]]
    if "#unpaired" in text:  # TOOL_CALL_END missing
        return [*ev[:4], *ev[5:]]
    if "#after-terminal" in text:
        return [*ev, ev[2]]
    return lively(inp, text)


MISBEHAVIOURS = ["#linger", "#crash-mid", "#crash-after", "#silent", "#stall", "#bad-utf8", "#no-data-field",
                 "#unpaired", "#after-terminal", "ok"]
R12, LOST = ("failed", ("R12",)), ("incomplete", ("R10", "R9"))
VERDICTS = {  # by how the stack's body ends
    "chunked": [PASS, ("incomplete", ("R12",)), R12, LOST, ("failed", ("R11",)), R12, R12, ("failed", ("R5",)),
                ("failed", ("R4",)), PASS],
    # HTTP/1.0: the crash is the body's end, a truncated run, and after RUN_FINISHED none at all
    "close": [PASS, ("incomplete", ()), PASS, LOST, ("failed", ("R11",)), R12, R12, ("failed", ("R5",)),
              ("failed", ("R4",)), PASS],
}


# (not the Content-Length body: written whole at the run's end, a crash leaves no answer at all)
@pytest.mark.parametrize("stack", [s for s, (_, ending) in STACKS.items() if ending != "length"])
def test_each_misbehaviour_gets_one_verdict_by_every_road(tmp_path, stack):
    serve, ending = STACKS[stack]
    got = judged(tmp_path, serve, misbehaving, MISBEHAVIOURS,
                 expect={"deadline": "2s", "first_event_limit": "1s", "stall_limit": "0.5s"})
    want = list(zip(MISBEHAVIOURS, VERDICTS[ending], strict=True))
    assert {road: list(zip(MISBEHAVIOURS, v, strict=True)) for road, v in got.items()} == {"run": want, "check": want}, got


@pytest.mark.parametrize("deadline", ["2s", "1.3s"])
def test_a_chat_with_no_event_by_a_deadline_equal_to_the_first_event_limit_is_r9_by_every_road(tmp_path, deadline):
    """No event came (only ping comments) before the deadline, which equals the first-event limit: no event within
    the limit, R9, besides the R10, live and in `check` alike (check judged the chat at the deadline exactly and
    found `elapsed > limit` false)."""
    got = judged(tmp_path, lambda a: serve_sse_starlette(a, ping=0.01), lambda inp, text: [Wait(2.5)], ["quiet"],
                 expect={"deadline": deadline, "first_event_limit": deadline})
    assert got == {"run": [LOST], "check": [LOST]}, got


def test_aiohttp_gzip_holds_the_run_until_the_response_ends_and_every_road_says_so(tmp_path):
    """What a stack does: aiohttp's `enable_compression` never flushes its gzip stream before the response ends, so
    the client sees no event until then. A stall inside the run is invisible (the chat passes), and a run whose
    stream stays open after RUN_FINISHED reaches the client only when it closes: past the deadline, no event at all
    (R9, R10). Every road says the same."""
    got = judged(tmp_path, lambda a: serve_aiohttp(a, style="gzip"), misbehaving, ["#stall", "#linger", "ok"],
                 expect={"deadline": "1.5s", "first_event_limit": "1.5s", "stall_limit": "0.5s"})
    want = [PASS, LOST, PASS]
    assert got == {"run": want, "check": want}, got
