"""A line of an SSE stream that is not an SSE field is reported (R12), never dropped without a word: the parser hands
it on among the events' data, the decoder makes it a malformed frame, the checker an R12 of the chat on screen."""
from __future__ import annotations

import json

import pytest
from ag_ui.core import RunAgentInput

from harness.client import Session
from harness.events import Outcome, Rule
from harness.eventstream import EventStreamParser, StreamProblem
from harness.flow import ChatOptions
from harness.profiles import load_profile
from harness.scenario import Scenario
from harness.sinks import Sink
from harness.targets import Target

from .servers import AguiSSEServer

AGUI = load_profile("ag-ui")


def frames(inp: RunAgentInput, middle: bytes) -> list[bytes]:
    ts = 1_700_000_000_000
    start = {"type": "RUN_STARTED", "threadId": inp.thread_id, "runId": inp.run_id, "timestamp": ts}
    end = {"type": "RUN_FINISHED", "threadId": inp.thread_id, "runId": inp.run_id, "timestamp": ts}
    return [f"data: {json.dumps(start)}\n\n".encode(), middle, f"data: {json.dumps(end)}\n\n".encode()]


async def chat(middle: bytes):
    async with AguiSSEServer(lambda inp: frames(inp, middle), chunk_size=7) as server:
        target = Target(url=server.url, profile=AGUI, name="t")
        session = Session(target, "u1", "t", Sink(), connect_timeout=5)
        try:
            return await session.chat("hi", Scenario(name="t").expectations(AGUI), ChatOptions(settle=0.05))
        finally:
            await session.close()


async def test_a_json_line_without_data_prefix_is_an_r12_naming_the_line():
    result = await chat(b'{"type":"CUSTOM","name":"n","value":1}\n\n')
    assert result.outcome is Outcome.FAILED
    assert [v.rule for v in result.violations] == [Rule.R12], result.violations
    assert "not an SSE field" in result.violations[0].reason and '{"type":"CUSTOM"' in result.violations[0].reason
    assert [e.wire_type for e in result.events] == ["RUN_STARTED", "RUN_FINISHED"]  # the lost event is not made up


async def test_the_fields_the_spec_names_and_comments_pass():
    result = await chat(b': keep-alive\nevent: message\nid: 4\nretry: 100\ndata: {"type":"CUSTOM","name":"n","value":1,'
                        b'"timestamp":1}\n\n')
    assert result.outcome is Outcome.PASSED, result.violations
    assert len(result.events) == 3


def test_the_parser_hands_problems_on_in_order_and_bounded():
    parser = EventStreamParser(1 << 20)
    out = parser.feed(b'data: a\n\n{"nonsense": 1}\ndata: b\n\n')
    assert out[0] == "a" and isinstance(out[1], StreamProblem) and out[2] == "b"
    assert "nonsense" in out[1]
    flood = parser.feed(b"{x\n" * 1000)
    assert len(flood) == 20 and all(isinstance(p, StreamProblem) for p in flood) and "more than 19" in flood[-1]


@pytest.mark.parametrize("line", [b"x-trace: 4bf92f35", b"ping", b"heartbeat:", b"event-type: message", b"Retry: 1"])
async def test_a_field_the_spec_does_not_define_is_ignored(line):
    """FAILED-ON-ORIGINAL (R12 "not an SSE field"): a field of the server's own is an SSE field that carries nothing
    of the stream, which a consumer MUST ignore (AG-UI 1.1, HTTP + SSE: "A consumer MUST ignore SSE fields other than
    data"; WHATWG: "Otherwise: the field is ignored")."""
    result = await chat(line + b"\n" + b'data: {"type":"CUSTOM","name":"n","value":1}\n' + line + b"\n\n")
    assert result.outcome is Outcome.PASSED, result.violations
    assert [e.wire_type for e in result.events] == ["RUN_STARTED", "CUSTOM", "RUN_FINISHED"]


@pytest.mark.parametrize("line", [b'Data: {"type":"CUSTOM","name":"n","value":1}', b'data {"type":"CUSTOM"}',
                                  b'event_data: [1, 2]', b"   "])
async def test_a_line_that_carried_content_is_still_an_r12(line):
    """What a misspelled `data` field or a JSON line without one carried is lost: said, never dropped silently. (A
    line of blank space is no empty line: the events either side of it would be joined.)"""
    result = await chat(line + b"\n\n")
    assert [v.rule for v in result.violations] == [Rule.R12], result.violations
    assert "not an SSE field" in result.violations[0].reason


def test_a_problem_never_decodes_as_an_event():
    problem = StreamProblem('event stream line is not an SSE field (its content is lost): \'{"type":"RUN_STARTED"}\'')
    frame = AGUI.decode(problem, 0.0)
    assert frame.kind.value == "malformed" and "not an SSE field" in frame.detail  # type: ignore[union-attr]


BAD_UTF8 = b'data: {"type":"CUSTOM","name":"n","value":"hel\xff\xfelo","timestamp":1}\n\n'


async def test_an_event_whose_data_is_not_utf8_is_an_r12_and_the_stream_goes_on():
    """As a WebSocket text frame that is not UTF-8 is an R12 ("not valid UTF-8"), so is an SSE event: it was read
    with U+FFFD in place of the bad bytes and passed. The stream is read on (a browser's EventSource does too)."""
    result = await chat(BAD_UTF8)
    assert result.outcome is Outcome.FAILED
    assert [v.rule for v in result.violations] == [Rule.R12], result.violations
    assert "not valid UTF-8" in result.violations[0].reason and "(byte 40 of 60)" in result.violations[0].reason
    assert [e.wire_type for e in result.events] == ["RUN_STARTED", "RUN_FINISHED"]  # read on to the end
    # Valid UTF-8 cut across the server's writes (chunk_size=7) is no problem.
    ok = await chat('data: {"type":"CUSTOM","name":"n","value":"héllo ✓ 𝄞","timestamp":1}\n\n'.encode())
    assert ok.outcome is Outcome.PASSED, ok.violations


def test_a_saved_sse_body_with_data_that_is_not_utf8_is_an_r12_offline(tmp_path):
    from harness.offline import check_files

    inp = RunAgentInput(thread_id="t1", run_id="r1", state={}, messages=[], tools=[], context=[], forwarded_props={})
    body = tmp_path / "body.sse"
    body.write_bytes(b"".join(frames(inp, BAD_UTF8)))
    [run] = check_files([body], AGUI, Scenario(name="t"))
    [chat_result] = run.results
    assert [v.rule for v in chat_result.violations] == [Rule.R12] and "not valid UTF-8" in chat_result.violations[0].reason


def test_a_saved_body_that_opens_with_a_field_of_its_own_is_read_as_an_event_stream(tmp_path):
    """FAILED-ON-ORIGINAL: `chatprobe check` told a body opening with `x-trace: …` from its first bytes as JSON Lines
    (no SSE field name it knew), and every line of it was a malformed frame."""
    from harness.offline import check_files

    inp = RunAgentInput(thread_id="t1", run_id="r1", state={}, messages=[], tools=[], context=[], forwarded_props={})
    body = tmp_path / "body.txt"
    body.write_bytes(b"x-trace: 4bf92f35\n\n" + b"".join(frames(inp, b"")))
    [run] = check_files([body], AGUI, Scenario(name="t"))
    assert [r.outcome for r in run.results] == [Outcome.PASSED], [r.violations for r in run.results]


CUSTOM = b'{"type":"CUSTOM","name":"n","value":1}'


@pytest.mark.parametrize("line", [b"event : message", b"event\t: message", b"id : 4", b"retry : 100", b" event: x",
                                  b"data : hello", b"data :", b"data\t: 5"])
async def test_a_field_name_with_blank_space_around_it_is_an_undefined_field_ignored(line, tmp_path):
    """FAILED-ON-ORIGINAL (R12 "not an SSE field"): WHATWG takes the field name as everything before the first colon,
    so `event : x` is the field `event ` (with its space), which the spec does not define: ignored, as `x-trace` is.
    `data : x` is no `data` field either: its value is no event data, and an event that has no other data line is not
    dispatched (WHATWG: "If the data buffer is an empty string, set the data buffer and the event type buffer to the
    empty string and return"), live and in `chatprobe check` of the saved body alike. A `data : {…}` whose value is an
    event's JSON is ignored too (nothing is dispatched of it), and, as for `Data: {…}`, the event it carried is lost:
    an R12 says so, never a silent loss that would show only as a missing event."""
    from harness.offline import check_files

    middle = b"data: " + CUSTOM + b"\n" + line + b"\n\n" + line + b"\n\n"  # one event with it, one of it alone
    result = await chat(middle)
    assert result.outcome is Outcome.PASSED, result.violations
    assert [e.wire_type for e in result.events] == ["RUN_STARTED", "CUSTOM", "RUN_FINISHED"]
    inp = RunAgentInput(thread_id="t1", run_id="r1", state={}, messages=[], tools=[], context=[], forwarded_props={})
    body = tmp_path / "body.sse"
    body.write_bytes(b"".join(frames(inp, middle)))
    [run] = check_files([body], AGUI, Scenario(name="t"))
    assert [r.outcome for r in run.results] == [Outcome.PASSED], [r.violations for r in run.results]
    assert EventStreamParser(1 << 20).feed(middle) == [CUSTOM.decode()]
    if line.startswith(b"data"):
        lost = await chat(line.partition(b":")[0] + b": " + CUSTOM + b"\n\n")
        assert [v.rule for v in lost.violations] == [Rule.R12], lost.violations
        assert "not an SSE field" in lost.violations[0].reason and ': {"type":"CUSTOM"' in lost.violations[0].reason
        assert [e.wire_type for e in lost.events] == ["RUN_STARTED", "RUN_FINISHED"]
