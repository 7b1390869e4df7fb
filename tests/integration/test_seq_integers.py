"""A `seq` that is not a JSON integer is a malformed frame (R12), never an ordering fault (R7): docs/protocol.md's seq
is an integer ("1, 2, 3, …"), and JSON's one number type does not make `1.0` one. Every form (`1.0`, `1e0`, `1.5`,
`-0.0`, `true`, `"1"`) is judged alike by `chatprobe run` (recorded), `chatprobe check` of that recording and
`chatprobe proxy`, over a raw RFC 6455 server on 127.0.0.1.

FAILED on the code before it: each was an R7 ("seq '1.0' is not an integer", and the run's seq 1 "never arrived
(lost event)": two ordering faults for one malformed field); `true` was shown as `True`, `"1"` as the number 1.
"""
from __future__ import annotations

import json
from typing import Any

import pytest

from harness.checker import ChatTracker
from harness.profiles import load_profile
from harness.scenario import Scenario

from .outside_servers import WsConn
from .test_conforming_servers import Server, frame, judged_three_ways, run_frames

pytestmark = pytest.mark.timeout(120)

NETRA = load_profile("netra")
FORMS = ["1.0", "1e0", "1.5", "-0.0", "true", '"1"']


def with_seq(written: str, at: int) -> Any:
    """A clean run whose event `at` (from 0) carries its seq written as `written` (raw JSON text)."""
    async def answer(conn: WsConn, p: dict[str, Any], n: int, server: Server) -> None:
        data = b""
        for i, f in enumerate(run_frames(p)):
            raw = json.dumps(f)
            if i == at:
                raw = raw.replace(f'"seq": {f["seq"]}', f'"seq": {written}')
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
