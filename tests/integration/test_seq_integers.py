"""A `seq` that is not a JSON integer is a malformed frame (R12), never an ordering fault (R7): docs/protocol.md's seq
is an integer ("1, 2, 3, …"), and JSON's one number type does not make `1.0` one. Every form (`1.0`, `1e0`, `1.5`,
`-0.0`, `true`, `"1"`) is judged alike by `chatprobe run` (recorded), `chatprobe check` of that recording and
`chatprobe proxy`, over a raw RFC 6455 server on 127.0.0.1; so are the numbers no integer of 64 bits can hold, named
as the server wrote them.

FAILED on the code before it: each was an R7 ("seq '1.0' is not an integer", and the run's seq 1 "never arrived
(lost event)": two ordering faults for one malformed field); `true` was shown as `True`, `"1"` as the number 1.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.checker import ChatTracker
from harness.cli import main
from harness.profiles import load_profile
from harness.scenario import Scenario

from .outside_servers import InThread, RawWsServer, WsConn
from .test_conforming_servers import Server, frame, judged_three_ways, run_frames

pytestmark = pytest.mark.timeout(120)

NETRA = load_profile("netra")
FORMS = ["1.0", "1e0", "1.5", "-0.0", "true", '"1"']


def with_seq(written: str, at: int, field: str = "seq") -> Any:
    """A clean run whose event `at` (from 0) carries its seq (or another `field`) written as `written` (raw JSON
    text)."""
    async def answer(conn: WsConn, p: dict[str, Any], n: int, server: Server) -> None:
        data = b""
        for i, f in enumerate(run_frames(p)):
            raw = json.dumps(f)
            if i == at:
                raw = (raw.replace(f'"seq": {f["seq"]}', f'"seq": {written}') if field == "seq"
                       else raw[:-1] + f', "{field}": {written}}}')
            data += frame(raw.encode())
        conn.writer.write(data)
    return answer


@pytest.mark.parametrize("at", [0, 2])
@pytest.mark.parametrize("written", FORMS)
async def test_a_seq_that_is_no_integer_is_one_r12_everywhere(written, at):
    got = await judged_three_ways(lambda: Server(with_seq(written, at)))
    expected = [("failed", (("R12", 1),), ())]
    assert got == {"run": expected, "check": expected, "proxy": expected}, got


def test_the_r12_names_the_json_value_it_was():
    exp = Scenario(name="t").expectations(NETRA)
    shown = {}
    for written in FORMS:
        chat = ChatTracker("c", exp, 0.0, run_id="r")
        for i, f in enumerate(run_frames({"message_id": "m", "thread_id": "t", "run_id": "r"})):
            raw = json.dumps(f)
            if i == 0:
                raw = raw.replace('"seq": 1', f'"seq": {written}')
            chat.feed(NETRA.decode(raw, 0.01 * (i + 1)))
        [v] = chat.finish(1.0).violations
        shown[written] = v.reason
    assert "seq 1.0, a number with a fraction or an exponent: a seq must be a JSON integer" in shown["1.0"]
    assert "seq 1.0, a number" in shown["1e0"] and "seq -0.0, a number" in shown["-0.0"]
    assert "seq true, a boolean" in shown["true"] and 'seq "1", a string' in shown['"1"']


# Numbers JSON writes and no 64-bit integer holds, with what the R12 says of each. FAILED on the old code: `1e400` and
# a 5,000-digit decimal were "seq Infinity" (json's inf, the server's text lost), a 5,000-digit integer (past Python's
# int-string limit) made the whole frame "not JSON" (and the run an R1, an R2 and an R7 besides), a seq past 64 bits
# was taken and judged by R7 (with its every digit in each reason), and NaN was "a number with a fraction".
HOSTILE = {
    "1e400": "agent_started has seq 1e400, a number with a fraction or an exponent: a seq must be a JSON integer",
    "-1e400": "agent_started has seq -1e400, a number with a fraction or an exponent",
    "9" * 5000: "agent_started has seq 99999999999999999999… (5,000 digits), an integer past 64 bits: a seq must be an "
                "integer of at most 64 bits (1, 2, 3, …)",
    "-" + "9" * 5000: "agent_started has seq -9999999999999999999… (5,000 digits), an integer past 64 bits",
    "9" * 5000 + ".5": "agent_started has seq 99999999999999999999… (5,002 characters), a number with a fraction",
    "18446744073709551616": "agent_started has seq 18446744073709551616, an integer past 64 bits",
    "-" + "1" * 400: "agent_started has seq -1111111111111111111… (400 digits), an integer past 64 bits",
    "NaN": "agent_started has seq NaN, not a JSON number (JSON has no NaN or Infinity)",
    "Infinity": "agent_started has seq Infinity, not a JSON number (JSON has no NaN or Infinity)",
}


@pytest.mark.parametrize("written", list(HOSTILE), ids=lambda w: w if len(w) < 30 else f"{w[:8]}…{len(w)}")
async def test_a_seq_no_64_bit_integer_holds_is_one_r12_everywhere(written):
    got = await judged_three_ways(lambda: Server(with_seq(written, 0)))
    expected = [("failed", (("R12", 1),), ())]
    assert got == {"run": expected, "check": expected, "proxy": expected}, got


SCENARIO = """\
name: numbers
users: 1
chats_per_user: 1
connect_timeout: 2s
expect: {deadline: 3s, settle: 0.1s}
"""


def _violations(doc: dict[str, Any]) -> list[tuple[str, str]]:
    [chat] = doc["scenarios"][0]["chats"]
    return [(v["rule"], v["reason"]) for v in chat["violations"]]


def _run_and_check(tmp_path: Path, answer: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """`chatprobe run --record` against a raw server answering with `answer`, then `chatprobe check` of the
    recording: the chat's violations in each --json report."""
    scenario, live, offline, rec = (tmp_path / "numbers.yaml", tmp_path / "live.json", tmp_path / "offline.json",
                                    tmp_path / "rec")
    scenario.write_text(SCENARIO)
    with InThread(RawWsServer(Server(answer).handler)) as ws:
        code = main(["run", "--target", ws.url, "--auth", "none", str(scenario), "--record", str(rec),
                     "--json", str(live), "-q"])
    assert code == 1
    assert main(["check", str(rec), "--scenario", str(scenario), "--json", str(offline), "-q"]) == 1
    return _violations(json.loads(live.read_text())), _violations(json.loads(offline.read_text()))


@pytest.mark.parametrize("written", ["1e400", "9" * 5000, "-" + "1" * 400, "NaN"],
                         ids=["1e400", "5000-digits", "400-digits-negative", "NaN"])
def test_the_r12_names_the_number_as_sent_and_bounded_live_and_offline(tmp_path, written):
    live, offline = _run_and_check(tmp_path, with_seq(written, 0))
    assert live == offline
    [(rule, reason)] = live
    assert rule == "R12" and reason.startswith(HOSTILE[written]) and len(reason) < 200, reason


@pytest.mark.parametrize("field, written, says", [
    # FAILED on the old code: the frame was "not JSON", the run an R1, an R2 and an R7 besides.
    ("timestamp", "1" * 5000, "agent_started has timestamp over the size limit (kept truncated)"),
    ("message_id", "7" * 4400, "agent_started has message_id over the size limit (kept truncated)"),
])
def test_another_field_past_the_int_string_limit_is_that_field_s_r12_live_and_offline(tmp_path, field, written, says):
    live, offline = _run_and_check(tmp_path, with_seq(written, 0, field))
    assert live == offline == [("R12", says)], live


def test_a_negative_seq_is_an_r7_as_a_zero_one_is():
    """-1 is a JSON integer: not a positive sequence number, one R7 naming it. The event that had it is there: the seq
    1 it took the place of is not a second R7 "never arrived" (docs/protocol.md, R7)."""
    exp = Scenario(name="t").expectations(NETRA)
    chat = ChatTracker("c", exp, 0.0, run_id="r")
    for i, f in enumerate(run_frames({"message_id": "m", "thread_id": "t", "run_id": "r"})):
        raw = json.dumps(f)
        chat.feed(NETRA.decode(raw.replace('"seq": 1,', '"seq": -1,') if i == 0 else raw, 0.01 * (i + 1)))
    assert [(v.rule, v.reason) for v in chat.finish(1.0).violations] == [
        ("R7", "seq -1 is not a positive sequence number")]
