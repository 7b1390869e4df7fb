"""An AG-UI run that fails mid-stream (`RUN_ERROR` with the `code` and `message` an agent framework sends when its
model or tool raises) is R13 by every road, and the violation says what the server said went wrong: a team reading
the report learns why its run failed without digging the stream out of a recording. A server's own error value that
is no string (an object, a megabyte of text) is named or cut, never written out whole. The server is a raw asyncio
HTTP/1.1 chunked server on loopback (sse_stacks.serve_raw), judged by `chatprobe run`, `chatprobe check` of its
recording and of the body saved by hand.

FAILED on the code before this file, with what was wrong:
- test_an_unexpected_run_error_says_the_servers_code_and_message: the R13 said only "unexpected fatal error event
  (RUN_ERROR)", by every road; the server's code and message were in no report.
"""
from __future__ import annotations

import json
from typing import Any

import pytest

from .sse_stacks import Action, Wire, serve_raw
from .sse_stacks import judge as judged

pytestmark = pytest.mark.timeout(60)


def failing(code: Any, message: Any) -> Any:
    def answer(inp: dict[str, Any], text: str) -> list[Action]:
        t, r = inp["threadId"], inp["runId"]
        error: dict[str, Any] = {"type": "RUN_ERROR", "message": message}
        if code is not None:
            error["code"] = code
        return [
            {"type": "RUN_STARTED", "threadId": t, "runId": r},
            {"type": "TEXT_MESSAGE_START", "messageId": "m1", "role": "assistant"},
            {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m1", "delta": "Let me "},
            error,
        ]
    return answer


@pytest.mark.parametrize(("code", "message", "said"), [
    ("rate_limit_exceeded", "The model is overloaded, retry later",
     "unexpected fatal error event (RUN_ERROR): rate_limit_exceeded: The model is overloaded, retry later"),
    (None, "tool 'search' raised TimeoutError", "unexpected fatal error event (RUN_ERROR): tool 'search' raised "
                                                  "TimeoutError"),
    # (a number is no `code` in the schema: its R12 besides)
    (429, "x" * 5000, f"unexpected fatal error event (RUN_ERROR): 429: {'x' * 200}…"),
], ids=["code-and-message", "message-only", "numeric-code-long-message"])
def test_an_unexpected_run_error_says_the_servers_code_and_message(tmp_path, code, message, said):
    got = judged(tmp_path, lambda a: serve_raw(a, Wire()), failing(code, message), ["Go"], body=True)
    rules = ("R13",) if isinstance(code, (str, type(None))) else ("R12", "R13")
    assert got == {road: [("failed", rules)] for road in ("run", "check", "body")}, got
    for report in ("live.json", "check.json", "body.json"):
        (doc,) = json.loads((tmp_path / report).read_text())["scenarios"]
        (chat,) = doc["chats"]
        assert [v["reason"] for v in chat["violations"] if v["rule"] == "R13"] == [said], report


def test_an_error_value_that_is_no_string_is_named_not_written_out(tmp_path):
    """The `message` field is the schema's string: an object there is also the schema's R12, and the R13 names its
    JSON type rather than a megabyte of it."""
    blob = {"trace": ["frame"] * 100_000}
    judged(tmp_path, lambda a: serve_raw(a, Wire()), failing("E", blob), ["Go"])
    (doc,) = json.loads((tmp_path / "live.json").read_text())["scenarios"]
    (chat,) = doc["chats"]
    r13 = [v["reason"] for v in chat["violations"] if v["rule"] == "R13"]
    assert r13 == ["unexpected fatal error event (RUN_ERROR): E: (a JSON object)"], chat["violations"]
