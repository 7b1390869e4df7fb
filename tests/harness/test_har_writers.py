"""HAR files as the tools that write them write them, judged by `chatprobe check` (the command, its exit code and its
JSON report): Chrome/Edge DevTools' export of WebSockets and of an SSE fetch, Firefox's, mitmproxy's (its `save.har`
command and `hardump` addon, mitmproxy/addons/savehar.py), Charles' (HAR 1.2 as the spec has it) and Playwright's
`recordHar` (packages/playwright-core/src/server/har/harTracer.ts: `content: "embed"` and `"attach"`, whose bodies
are files beside the HAR). Each writer's shape is built here from what that writer emits, never from chatprobe's
reader; each with a good chat and one that breaks a rule. A HAR carries its users' credentials: no output shows one."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
T0 = 1764637200.0
ROLES = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"]


def chatprobe_check(*args: str | Path, cwd: Path) -> tuple[int, str, dict]:
    """`chatprobe check ARGS --json report.json`: its exit code, its terminal output and its JSON report."""
    report = cwd / "report.json"
    report.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-m", "harness", "check", *map(str, args), "--json", str(report)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})
    doc = json.loads(report.read_text()) if report.exists() else {}
    return proc.returncode, proc.stdout + proc.stderr, doc


def chats(doc: dict) -> list[tuple[str | None, str, list[str]]]:
    """Each chat's run id, outcome and the rules it broke (sorted), as the JSON report has them."""
    return sorted((c.get("run_id"), c["outcome"], sorted({v["rule"] for v in c.get("violations", [])}))
                  for s in doc["scenarios"] for c in s.get("chats", []))


def iso(t: float, tz: timezone = UTC, micro: bool = False) -> str:
    """startedDateTime as each writer formats it: DevTools and Playwright `…123Z` (JavaScript's toISOString),
    Firefox and Charles with the local offset, mitmproxy Python's isoformat (microseconds, `+00:00`)."""
    text = datetime.fromtimestamp(t, tz).isoformat(timespec="microseconds" if micro else "milliseconds")
    return text.replace("+00:00", "Z") if tz is UTC and not micro else text


# -- WebSocket --

def netra_messages(run: str, thread: str, t0: float, *, drop: tuple[str, ...] = (),
                   extra: list[tuple[str, float, int, str]] = ()) -> list[dict]:
    """One netra chat over a WebSocket as `_webSocketMessages` (type send/receive, time in epoch seconds, opcode,
    data): the welcome, the user's message, the run's events (those in `drop` left out), then `extra` ones."""
    msgs = [("receive", t0, 1, json.dumps({"type": "connection_established", "user_id": "u1"})),
            ("send", t0 + 0.01, 1, json.dumps({"type": "user_message",
                                               "payload": {"content": "hi", "thread_id": thread}}))]
    for i, role in enumerate(ROLES):
        frame = {"type": role, "run_id": run, "thread_id": thread, "seq": i + 1}
        if role.startswith("tool_"):
            frame |= {"tool_call_id": f"{run}-c1", "tool_name": "calc"}
        if role not in drop:
            msgs.append(("receive", t0 + 0.1 + i * 0.01, 1, json.dumps(frame)))
    msgs = sorted([*msgs, *extra], key=lambda m: m[1])  # as a socket's messages are kept: in time order
    return [{"type": kind, "time": t, "opcode": opcode, "data": data} for kind, t, opcode, data in msgs]


def devtools_ws_entry(messages: list[dict] | None, started: float, url: str = "wss://chat.example.com/ws",
                      headers: list[dict] = ()) -> dict:
    """A WebSocket entry as Chrome/Edge DevTools' "Save all as HAR with content" writes it (its keys in its order)."""
    entry = {
        "_connectionId": "48213", "_initiator": {"type": "script", "stack": {"callFrames": [
            {"functionName": "connect", "scriptId": "12", "url": "https://chat.example.com/app.js", "lineNumber": 80,
             "columnNumber": 14}]}},
        "_priority": None, "_resourceType": "websocket", "cache": {}, "connection": "48213", "pageref": "page_1",
        "request": {"method": "GET", "url": url, "httpVersion": "HTTP/1.1",
                    "headers": [{"name": "Host", "value": "chat.example.com"},
                                {"name": "Upgrade", "value": "websocket"}, *headers],
                    "queryString": [], "cookies": [], "headersSize": 512, "bodySize": 0},
        "response": {"status": 101, "statusText": "Switching Protocols", "httpVersion": "HTTP/1.1",
                     "headers": [{"name": "Upgrade", "value": "websocket"}], "cookies": [],
                     "content": {"size": 0, "mimeType": "x-unknown"}, "redirectURL": "", "headersSize": 129,
                     "bodySize": 0, "_transferSize": 129, "_error": None, "_fetchedViaServiceWorker": False},
        "serverIPAddress": "127.0.0.1", "startedDateTime": iso(started), "time": 1.42,
        "timings": {"blocked": 0.65, "dns": -1, "ssl": -1, "connect": -1, "send": 0, "wait": 0.77, "receive": 0,
                    "_blocked_queueing": -1},
    }
    if messages is not None:  # a socket that never carried a message has no `_webSocketMessages`
        entry["_webSocketMessages"] = messages
    return entry


def devtools_har(entries: list[dict]) -> dict:
    return {"log": {"version": "1.2", "creator": {"name": "WebInspector", "version": "537.36"},
                    "pages": [{"startedDateTime": iso(T0 - 5), "id": "page_1", "title": "https://chat.example.com/",
                               "pageTimings": {"onContentLoad": 300.1, "onLoad": 420.9}}],
                    "entries": entries}}


def test_a_devtools_har_of_several_websockets_is_judged_socket_by_socket(tmp_path):
    """Two tabs and a reconnect, saved by DevTools out of time order, one socket with no message at all, a binary
    message (opcode 2, base64): each socket's chats are judged on their own, at their recorded times."""
    binary = b'\x00\x01audio'
    tab1 = netra_messages("r1", "t1", T0)
    tab2 = netra_messages("r2", "t2", T0 + 1, drop=("agent_completed",),
                          extra=[("receive", T0 + 1.2, 2, base64.b64encode(binary).decode())])
    reconnect = netra_messages("r3", "t3", T0 + 3)
    har = tmp_path / "devtools.har"
    har.write_text(json.dumps(devtools_har([
        devtools_ws_entry(reconnect, T0 + 2.999), devtools_ws_entry(tab2, T0 + 0.999),
        devtools_ws_entry(None, T0 + 0.5), devtools_ws_entry([], T0 + 0.6), devtools_ws_entry(tab1, T0 - 0.001)]),
        indent=2))
    code, out, doc = chatprobe_check(har, cwd=tmp_path)
    assert code == 1, out
    assert chats(doc) == [("r1", "passed", []), ("r2", "incomplete", ["R12"]), ("r3", "passed", [])]
    [r2] = [c for s in doc["scenarios"] for c in s["chats"] if c["run_id"] == "r2"]
    # the base64 was decoded: the frame judged is the 7 bytes sent, not their 12 characters of base64
    assert any(f"binary frame of {len(binary)} bytes" in v["reason"] for v in r2["violations"]), r2["violations"]
    assert doc["scenarios"][0]["stats"]["chats"] == 3


def test_a_long_sessions_har_of_many_other_entries_still_has_its_chats_read_in_start_order(tmp_path):
    """A browser's HAR of a long session holds an entry for each image, script and call beside a chat's few sockets.
    Past 100,000 entries in all the first pass gave up (after parsing that many) and the file was read in its own
    order: a chat resumed on a new connection, the later socket saved first, was two chats (the resume's an R1, the
    first "no resume of the run was recorded"). Only the entries of a chat's traffic count toward the bound."""
    from harness.offline import check_files
    from harness.profiles import load_profile
    from harness.scenario import Scenario

    messages = netra_messages("r1", "t1", T0)
    resume = {"type": "send", "time": T0 + 1.01, "opcode": 1,
              "data": json.dumps({"type": "resume", "payload": {"run_id": "r1", "last_seq": 2}})}
    first = devtools_ws_entry(messages[:4], T0)
    second = devtools_ws_entry([messages[0] | {"time": T0 + 1}, resume,
                                *(m | {"time": m["time"] + 1} for m in messages[4:])], T0 + 1)
    other = json.dumps({"startedDateTime": iso(T0 - 60)})  # (an image's, a script's: only its start is read)
    har = tmp_path / "session.har"
    with har.open("w") as out:
        out.write('{"log": {"version": "1.2", "creator": {"name": "WebInspector", "version": "537.36"}, "entries": [')
        out.write(",".join([other] * 100_001))
        out.write(f",{json.dumps(second)},{json.dumps(first)}]}}}}")
    [run] = check_files([har], load_profile("netra"), Scenario(name="t"))
    assert [(c.outcome.value, c.violations) for c in run.results] == [("passed", [])], [
        (c.outcome, c.note, c.violations) for c in run.results]


def mitmproxy_ws_entries(messages: list[dict], started: float, *, hardump: bool) -> list[dict]:
    """A WebSocket flow as mitmproxy's savehar writes it: `save.har` one entry; the `hardump` addon one at the
    handshake's response (no message yet) and one more at the socket's end. Timings may be null."""
    def entry(msgs: list[dict]) -> dict:
        return {"startedDateTime": iso(started, micro=True), "time": 3.1,
                "request": {"method": "GET", "url": "https://chat.example.com/ws", "httpVersion": "HTTP/1.1",
                            "cookies": [], "headers": [{"name": "Host", "value": "chat.example.com"},
                                                       {"name": "Connection", "value": "Upgrade"}],
                            "queryString": [], "headersSize": 230, "bodySize": 0},
                "response": {"status": 101, "statusText": "Switching Protocols", "httpVersion": "HTTP/1.1",
                             "cookies": [], "headers": [{"name": "Upgrade", "value": "websocket"}],
                             "content": {"size": 0, "compression": 0, "mimeType": "", "text": ""},
                             "redirectURL": "", "headersSize": 98, "bodySize": 0},
                "cache": {}, "timings": {"connect": None, "ssl": None, "send": 0.4, "receive": 0.0, "wait": 2.7},
                "serverIPAddress": "127.0.0.1", "_resourceType": "websocket", "_webSocketMessages": msgs}
    return [entry([]), entry(messages)] if hardump else [entry(messages)]


@pytest.mark.parametrize("hardump", [False, True], ids=["save.har", "hardump"])
def test_a_mitmproxy_har_of_websockets_is_judged_as_devtools_is(tmp_path, hardump):
    good = netra_messages("r1", "t1", T0)
    bad = netra_messages("r2", "t2", T0 + 1, drop=("tool_completed",))
    entries = mitmproxy_ws_entries(good, T0 - 0.01, hardump=hardump) + mitmproxy_ws_entries(bad, T0 + 0.99,
                                                                                           hardump=hardump)
    har = tmp_path / "flows.har"
    har.write_text(json.dumps({"log": {"version": "1.2", "creator": {
        "name": "mitmproxy exporthar", "version": "0.1", "comment": "mitmproxy version 11.0.0"}, "pages": [],
        "entries": entries}}, indent=4))
    code, out, doc = chatprobe_check(har, cwd=tmp_path)
    assert code == 1, out
    assert chats(doc) == [("r1", "passed", []), ("r2", "failed", ["R2", "R5", "R7"])]


def test_websocket_control_frames_listed_among_the_messages_are_no_frames_of_a_chat(tmp_path):
    """A writer that lists a socket's control frames beside its data frames (RFC 6455's opcodes: 9 ping, 10 pong,
    8 close, its data the close code and reason or nothing): each was judged as a text frame the server sent, an R12
    ("malformed frame") on a chat that passed, and a socket of pings alone an R12 of its own. They carry no frame of
    any chat: the chats are judged on their data frames, as live."""
    close = base64.b64encode(b"\x03\xe8bye").decode()
    good = netra_messages("r1", "t1", T0, extra=[
        ("receive", T0 + 0.05, 9, ""), ("send", T0 + 0.051, 10, ""), ("send", T0 + 0.121, 9, "hb"),
        ("receive", T0 + 0.122, 10, "hb"), ("receive", T0 + 0.5, 8, close), ("send", T0 + 0.501, 8, close)])
    pings = [{"type": kind, "time": T0 + 2 + i, "opcode": op, "data": ""}
             for i, (kind, op) in enumerate([("receive", 9), ("send", 10)])]
    har = tmp_path / "control.har"
    har.write_text(json.dumps(devtools_har([devtools_ws_entry(good, T0 - 0.001), devtools_ws_entry(pings, T0 + 1.9)])))
    code, out, doc = chatprobe_check(har, cwd=tmp_path)
    assert code == 0, out
    assert chats(doc) == [("r1", "passed", [])]
    assert not doc["scenarios"][0].get("connection_violations"), doc["scenarios"][0]["connection_violations"]


def test_an_opcode_written_as_a_string_or_a_float_is_the_frame_it_names(tmp_path):
    """A HAR built by a script or a converter may write `opcode` as a string ("8", "2") or a float (9.0): the close,
    ping and pong frames were judged as text frames the server sent (an R12 on a chat that passed), and a binary
    frame's base64 as its text. Each is the frame its number names, as Chromium's number is."""
    binary = b"\x00\x01audio"
    close = base64.b64encode(b"\x03\xe8bye").decode()
    messages = netra_messages("r1", "t1", T0, extra=[
        ("receive", T0 + 0.05, "9", ""), ("send", T0 + 0.051, " 10 ", ""), ("receive", T0 + 0.052, 9.0, "hb"),
        ("receive", T0 + 0.5, "8", close), ("send", T0 + 0.501, "8", close)])
    bad = netra_messages("r2", "t2", T0 + 1, extra=[("receive", T0 + 1.2, "2", base64.b64encode(binary).decode())])
    for m in (*messages, *bad):
        if m["opcode"] == 1:
            m["opcode"] = "1"
    har = tmp_path / "strings.har"
    har.write_text(json.dumps(devtools_har([devtools_ws_entry(messages, T0 - 0.001),
                                            devtools_ws_entry(bad, T0 + 0.999)])))
    code, out, doc = chatprobe_check(har, cwd=tmp_path)
    assert code == 1, out
    assert chats(doc) == [("r1", "passed", []), ("r2", "failed", ["R12"])], out
    [r2] = [c for s in doc["scenarios"] for c in s["chats"] if c["run_id"] == "r2"]
    # the base64 was decoded: the frame judged is the 7 bytes sent, not their 12 characters of base64
    assert any(f"binary frame of {len(binary)} bytes" in v["reason"] for v in r2["violations"]), r2["violations"]
    assert not doc["scenarios"][0].get("connection_violations"), doc["scenarios"][0]["connection_violations"]


def test_a_har_whose_sockets_list_no_message_says_on_the_terminal_that_no_chat_was_found(tmp_path):
    """An export that keeps a socket's handshake but none of its messages (no `_webSocketMessages`) holds no chat:
    the terminal showed 0 chats and a failed objective, never why; the reason the report has is shown with them."""
    har = tmp_path / "nomessages.har"
    har.write_text(json.dumps(devtools_har([devtools_ws_entry(None, T0), devtools_ws_entry([], T0 + 1)])))
    code, out, doc = chatprobe_check(har, cwd=tmp_path)
    assert code == 1 and chats(doc) == [], out
    assert [e for e in doc["scenarios"][0]["errors"] if e.startswith("no chat found in the recording: its 2 WebSocket "
                                                                     "connection(s) list no message")], doc
    assert "no chat found in the recording" in out, out


def test_a_firefox_har_of_a_websocket_chat_says_its_messages_are_not_in_it(tmp_path):
    """Firefox's "Save All As HAR" keeps a WebSocket's handshake (101 Switching Protocols) and none of its messages:
    the check said "no chat found in the recording (is it the profile's dialect?)", sending the user after the
    profile. It says the sockets list no message, and where a HAR that lists them comes from. Saved out of order
    (the entries sorted by their start), the same."""
    entry = devtools_ws_entry(None, T0)
    for key in ("_connectionId", "_initiator", "_priority", "_resourceType"):
        del entry[key]
    page = {"startedDateTime": iso(T0 - 1, timezone(timedelta(hours=1))), "time": 20.0,
            "request": {"method": "GET", "url": "https://chat.example.com/", "httpVersion": "HTTP/1.1", "headers": [],
                        "queryString": [], "cookies": [], "headersSize": 100, "bodySize": 0},
            "response": {"status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1", "headers": [], "cookies": [],
                         "content": {"mimeType": "text/html", "size": 5, "text": "<p>hi"}, "redirectURL": "",
                         "headersSize": 100, "bodySize": 5},
            "cache": {}, "timings": {"send": 0, "wait": 10, "receive": 10}}
    for entries in ([page, entry], [entry, page]):
        har = tmp_path / "firefox.har"
        har.write_text(json.dumps({"log": {"version": "1.2", "creator": {"name": "Firefox", "version": "133.0"},
                                           "browser": {"name": "Firefox", "version": "133.0"}, "entries": entries}}))
        code, out, doc = chatprobe_check(har, cwd=tmp_path)
        assert code == 1 and chats(doc) == [], out
        assert "its 1 WebSocket connection(s) list no message (Firefox's HAR export leaves WebSocket messages out)" in \
            " ".join(out.split()), out


@pytest.mark.parametrize(("status", "error", "message", "code", "said"), [
    (0, "net::ERR_CONNECTION_REFUSED", "Error in connection establishment: net::ERR_CONNECTION_REFUSED", 3,
     "the browser failed the WebSocket connection: Error in connection establishment: net::ERR_CONNECTION_REFUSED"),
    (0, "net::ERR_CONNECTION_REFUSED", None, 3, "the browser failed the WebSocket connection: net::ERR_CONNECTION_REFUSED"),
    (403, None, "Error during WebSocket handshake: Unexpected response code: 403", 2,
     "HTTP 403 at the WebSocket handshake"),
    (502, None, "Error during WebSocket handshake: Unexpected response code: 502", 1,
     "HTTP 502 at the WebSocket handshake"),
], ids=["refused", "refused-no-message", "403", "502"])
def test_a_websocket_whose_handshake_failed_is_an_error_chat_as_live(tmp_path, status, error, message, code, said):
    """DevTools keeps a WebSocket whose handshake failed: status 0 and `_error` when nothing answered, else the
    answer's status, and a message of type "error" saying so. It was an R12 on no chat ("the browser failed the
    WebSocket connection" among the connection's violations) or no chat at all: the chat that was to use it is an
    `error` chat of the kind a live client counts (refused: exit 3 when no chat reached the server; 403: exit 2), and
    the page's reconnect that passed is judged beside it. A socket that opened (101) and then failed stays an R12."""
    messages = None if message is None else [{"type": "error", "time": T0, "opcode": -1, "data": message}]
    failed = devtools_ws_entry(messages, T0 - 0.5)
    failed["response"] |= {"status": status, "statusText": "", "headers": [], "_error": error}
    har = tmp_path / "refused.har"
    har.write_text(json.dumps(devtools_har([failed])))
    got, out, doc = chatprobe_check(har, cwd=tmp_path)
    assert got == code, out
    [chat] = [c for s in doc["scenarios"] for c in s["chats"]]
    assert chat["outcome"] == "error" and said in json.dumps(chat), chat
    assert not doc["scenarios"][0].get("connection_violations"), out
    har.write_text(json.dumps(devtools_har([devtools_ws_entry(netra_messages("r1", "t1", T0 + 1), T0 + 1), failed])))
    got, out, doc = chatprobe_check(har, cwd=tmp_path)
    assert got == 1 and sorted(c["outcome"] for s in doc["scenarios"] for c in s["chats"]) == ["error", "passed"], out
    opened = devtools_ws_entry([{"type": "error", "time": T0, "opcode": -1,
                                 "data": "Could not decode a text frame as UTF-8."}], T0 - 0.5)
    har.write_text(json.dumps(devtools_har([opened])))
    got, out, doc = chatprobe_check(har, cwd=tmp_path)
    assert got == 1 and chats(doc) == [], out
    assert "Could not decode a text frame as UTF-8." in json.dumps(doc["scenarios"][0]["connection_violations"])


@pytest.mark.parametrize("version", ["h2", "HTTP/2.0", "h3"])
def test_a_websocket_over_http2_or_3_that_opened_with_200_is_not_a_refused_handshake(tmp_path, version):
    """Over HTTP/2 and HTTP/3 a WebSocket opens with a 2xx to its extended CONNECT (RFC 8441, 9220; Firefox's, and
    Chromium's where the server offers it), not 101: such a socket that then failed before any frame was an `error`
    chat "HTTP 200 at the WebSocket handshake" held against the server's handshake, and one that carried nothing the
    same. As a socket opened over HTTP/1.1: the failure an R12 on no chat, the silent socket no chat, said so. A 200
    over HTTP/1.1 (the upgrade ignored) is still a refused handshake."""
    def entry(messages):
        e = devtools_ws_entry(messages, T0)
        e["response"] |= {"status": 200, "statusText": "", "httpVersion": version}
        return e

    har = tmp_path / "h2.har"
    har.write_text(json.dumps(devtools_har([entry([{"type": "error", "time": T0, "opcode": -1,
                                                    "data": "Could not decode a text frame as UTF-8."}])])))
    got, out, doc = chatprobe_check(har, cwd=tmp_path)
    assert got == 1 and chats(doc) == [], out
    assert "Could not decode a text frame as UTF-8." in json.dumps(doc["scenarios"][0]["connection_violations"])
    har.write_text(json.dumps(devtools_har([entry([])])))
    got, out, doc = chatprobe_check(har, cwd=tmp_path)
    assert got == 1 and chats(doc) == [] and "list no message" in " ".join(out.split()), out
    ignored = devtools_ws_entry([], T0)
    ignored["response"] |= {"status": 200, "statusText": "OK"}
    har.write_text(json.dumps(devtools_har([ignored])))
    got, out, doc = chatprobe_check(har, cwd=tmp_path)
    [chat] = [c for s in doc["scenarios"] for c in s["chats"]]
    assert chat["outcome"] == "error" and "HTTP 200 at the WebSocket handshake" in json.dumps(chat), out


# -- SSE (AG-UI) --

REQUEST = {"threadId": "t1", "runId": "r1", "state": {}, "tools": [], "context": [], "forwardedProps": {},
           "messages": [{"id": "m1", "role": "user", "content": "hi"}]}


def agui_body(good: bool) -> bytes:
    """An AG-UI run's text/event-stream body; the bad one finishes with its text message still open (R5)."""
    events = [{"type": "RUN_STARTED", "threadId": "t1", "runId": "r1"},
              {"type": "TEXT_MESSAGE_START", "messageId": "a1", "role": "assistant"},
              {"type": "TEXT_MESSAGE_CONTENT", "messageId": "a1", "delta": "hello"},
              {"type": "TEXT_MESSAGE_END", "messageId": "a1"},
              {"type": "RUN_FINISHED", "threadId": "t1", "runId": "r1"}]
    if not good:
        del events[3]
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode()


def http_entry(started: str, content: dict, post: dict, response_headers: list[dict] = ()) -> dict:
    return {"startedDateTime": started, "time": 48.2,
            "request": {"method": "POST", "url": "https://agent.example.com/agent", "httpVersion": "HTTP/1.1",
                        "headers": [{"name": "Content-Type", "value": "application/json"},
                                    {"name": "Accept", "value": "text/event-stream"}],
                        "queryString": [], "cookies": [], "headersSize": -1, "bodySize": 180, "postData": post},
            "response": {"status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1",
                         "headers": [{"name": "Content-Type", "value": "text/event-stream; charset=utf-8"},
                                     *response_headers],
                         "cookies": [], "content": content, "redirectURL": "", "headersSize": -1, "bodySize": -1},
            "cache": {}, "timings": {"blocked": -1, "dns": -1, "connect": -1, "send": 0.1, "wait": 12.0,
                                     "receive": 36.1}}


MIME = "text/event-stream; charset=utf-8"


def chrome_sse(body: bytes, tmp: Path) -> dict:
    """DevTools' export of a fetch it kept the body of: the body in content.text, `_transferSize`, `compression`."""
    entry = http_entry(iso(T0), {"size": len(body), "mimeType": MIME, "compression": -12, "text": body.decode()},
                       {"mimeType": "application/json", "text": json.dumps(REQUEST)})
    entry |= {"_initiator": {"type": "script"}, "_priority": "High", "_resourceType": "fetch",
              "serverIPAddress": "203.0.113.7", "connection": "443", "pageref": "page_1"}
    entry["response"] |= {"_transferSize": len(body) + 210, "_error": None}
    return devtools_har([entry])


def chrome_sse_base64(body: bytes, tmp: Path) -> dict:
    har = chrome_sse(body, tmp)
    content = har["log"]["entries"][0]["response"]["content"]
    content |= {"text": base64.b64encode(body).decode(), "encoding": "base64"}
    return har


def firefox_sse(body: bytes, tmp: Path) -> dict:
    """Firefox's "Save All As HAR": the local offset in startedDateTime, the body in content.text."""
    entry = http_entry(iso(T0, timezone(timedelta(hours=1))), {"mimeType": MIME, "size": len(body),
                                                                 "text": body.decode()},
                       {"mimeType": "application/json", "params": [], "text": json.dumps(REQUEST)})
    entry |= {"connection": "443", "pageref": "page_1", "serverIPAddress": "203.0.113.7"}
    return {"log": {"version": "1.2", "creator": {"name": "Firefox", "version": "133.0"},
                    "browser": {"name": "Firefox", "version": "133.0"},
                    "pages": [{"startedDateTime": iso(T0, timezone(timedelta(hours=1))), "id": "page_1",
                               "title": "chat", "pageTimings": {"onContentLoad": 100, "onLoad": 200}}],
                    "entries": [entry]}}


def mitmproxy_sse(body: bytes, tmp: Path) -> dict:
    """mitmproxy's savehar: mimeType is the Content-Type header, the body as text, `compression`, null timings."""
    entry = http_entry(iso(T0, micro=True), {"size": len(body), "compression": 0, "mimeType": MIME,
                                             "text": body.decode()},
                       {"mimeType": "application/json", "text": json.dumps(REQUEST), "params": []})
    entry["timings"] = {"connect": None, "ssl": None, "send": 0.2, "receive": 30.5, "wait": 11.9}
    entry["serverIPAddress"] = "203.0.113.7"
    return {"log": {"version": "1.2", "creator": {"name": "mitmproxy exporthar", "version": "0.1",
                                                  "comment": "mitmproxy version 11.0.0"}, "pages": [],
                    "entries": [entry]}}


def charles_sse(body: bytes, tmp: Path) -> dict:
    """A proxy's HAR 1.2 export as the spec has it (Charles' File > Export Session > HTTP Archive): the local offset,
    `comment` fields, the body as text."""
    entry = http_entry(iso(T0, timezone(timedelta(hours=10))), {"size": len(body), "mimeType": MIME,
                                                                  "text": body.decode(), "comment": ""},
                       {"mimeType": "application/json", "text": json.dumps(REQUEST), "comment": ""})
    entry |= {"serverIPAddress": "203.0.113.7", "comment": ""}
    return {"log": {"version": "1.2", "creator": {"name": "Charles Proxy", "version": "4.6.6"}, "comment": "",
                    "entries": [entry]}}


def playwright_sse(body: bytes, tmp: Path, *, attach: bool = False) -> dict:
    """Playwright's recordHar: embed puts a textual body in content.text; attach writes `<sha1>.<ext>` files beside
    the HAR, content._file and postData._file naming them (postData.text ""), as harTracer.ts does."""
    post = json.dumps(REQUEST).encode()
    if attach:
        body_file = hashlib.sha1(body).hexdigest() + ".dat"
        post_file = hashlib.sha1(post).hexdigest() + ".json"
        (tmp / body_file).write_bytes(body)
        (tmp / post_file).write_bytes(post)
        content = {"size": len(body), "mimeType": MIME, "_file": body_file}
        post_data = {"mimeType": "application/json", "text": "", "params": [], "_file": post_file}
    else:
        content = {"size": len(body), "mimeType": MIME, "text": body.decode()}
        post_data = {"mimeType": "application/json", "text": post.decode(), "params": []}
    entry = http_entry(iso(T0), content, post_data)
    entry |= {"pageref": "page@1f2e", "serverIPAddress": "[::1]", "_serverPort": 8000,
              "_securityDetails": {}}
    entry["response"] |= {"_transferSize": len(body) + 180}
    return {"log": {"version": "1.2", "creator": {"name": "Playwright", "version": "1.49.0"},
                    "browser": {"name": "chromium", "version": "131.0.6778.33"},
                    "pages": [{"startedDateTime": iso(T0 - 1), "id": "page@1f2e", "title": "chat",
                               "pageTimings": {"onContentLoad": 80, "onLoad": 95}}],
                    "entries": [entry]}}


def playwright_attach(body: bytes, tmp: Path) -> dict:
    return playwright_sse(body, tmp, attach=True)


WRITERS = {"chrome": chrome_sse, "chrome-base64": chrome_sse_base64, "firefox": firefox_sse,
           "mitmproxy": mitmproxy_sse, "charles": charles_sse, "playwright-embed": playwright_sse,
           "playwright-attach": playwright_attach}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_an_sse_har_of_each_writer_is_judged_from_its_body(tmp_path, writer):
    for good in (True, False):
        folder = tmp_path / ("good" if good else "bad")
        folder.mkdir()
        har = folder / "stream.har"
        har.write_text(json.dumps(WRITERS[writer](agui_body(good), folder), indent=2))
        code, out, doc = chatprobe_check(har, "--profile", "ag-ui", cwd=tmp_path)
        assert code == (0 if good else 1), out
        assert chats(doc) == [("r1", "passed", [])] if good else [("r1", "failed", ["R5"])], out


@pytest.mark.parametrize("junk", ["!!!!", "data: ", "*"])
def test_an_sse_body_said_to_be_base64_that_is_not_is_an_r12_never_read_as_base64(tmp_path, junk):
    """`encoding: base64` on a body that is not base64 (characters outside its alphabet before or inside it): an R12
    saying so. base64.b64decode without validate dropped those characters and decoded the rest: the chat passed on a
    body no browser wrote. Base64 whose lines are wrapped (76 characters, CRLF) is still read."""
    har = chrome_sse_base64(agui_body(True), tmp_path)
    content = har["log"]["entries"][0]["response"]["content"]
    text = content["text"]
    content["text"] = junk + text if junk != "*" else "*".join(text[i:i + 4] for i in range(0, len(text), 4))
    (tmp_path / "junk.har").write_text(json.dumps(har))
    code, out, doc = chatprobe_check(tmp_path / "junk.har", "--profile", "ag-ui", cwd=tmp_path)
    assert code == 1 and chats(doc) == [("r1", "incomplete", ["R12"])], out
    assert "SSE body not in base64" in out, out
    content["text"] = "\r\n".join(text[i:i + 76] for i in range(0, len(text), 76))
    (tmp_path / "wrapped.har").write_text(json.dumps(har))
    code, out, doc = chatprobe_check(tmp_path / "wrapped.har", "--profile", "ag-ui", cwd=tmp_path)
    assert code == 0 and chats(doc) == [("r1", "passed", [])], out


def _checked(path: Path) -> list[tuple[str | None, str, list[str]]]:
    """What `chatprobe check PATH --profile ag-ui` judges of each chat (in process: check_files is the command's)."""
    from harness.offline import check_files
    from harness.profiles import load_profile

    [run] = check_files([path], load_profile("ag-ui"))
    return [(r.run_id, r.outcome.value, sorted({v.rule.value for v in r.violations})) for r in run.results]


@pytest.mark.parametrize("encoding", ["hex", "utf-8", "quoted-printable", 7, True, {"name": "gzip"}])
def test_an_sse_body_in_an_encoding_har_does_not_define_is_an_r12(tmp_path, encoding):
    """FAILED-ON-ORIGINAL (read as text, passed): as below, for other encodings and for values that are no string."""
    har = chrome_sse(agui_body(True), tmp_path)
    har["log"]["entries"][0]["response"]["content"]["encoding"] = encoding
    (tmp_path / "enc.har").write_text(json.dumps(har))
    assert _checked(tmp_path / "enc.har") == [("r1", "incomplete", ["R12"])]


def test_an_sse_body_said_to_be_gzip_is_an_r12_naming_the_entry_and_base64_or_none_read_as_before(tmp_path):
    """FAILED-ON-ORIGINAL (read as text, passed): HAR 1.2 defines one `encoding` of a body, base64, and none for text
    decoded to UTF-8 (a browser unpacks gzip before it writes the body). A body said to be in another (`gzip`, `hex`)
    is not that text: reading it as text judged bytes the file says are something else. It is an R12 naming the
    entry and the encoding, as a body said to be base64 that is not. Base64 in any case (`BASE64`) and an empty or
    null encoding (none) are read as before."""
    har = chrome_sse(agui_body(True), tmp_path)
    content = har["log"]["entries"][0]["response"]["content"]
    content["encoding"] = "gzip"
    (tmp_path / "enc.har").write_text(json.dumps(har))
    code, out, doc = chatprobe_check(tmp_path / "enc.har", "--profile", "ag-ui", cwd=tmp_path)
    assert code == 1 and chats(doc) == [("r1", "incomplete", ["R12"])], out
    [reason] = [v["reason"] for sc in doc["scenarios"] for c in sc["chats"] for v in c["violations"]]
    assert reason.startswith("malformed frame: SSE body in encoding 'gzip': HAR 1.2 defines only base64"), reason
    assert reason.endswith("(enc.har: entry 0)"), reason
    for fine in ("", None):
        content["encoding"] = fine
        (tmp_path / "fine.har").write_text(json.dumps(har))
        assert _checked(tmp_path / "fine.har") == [("r1", "passed", [])]
    b64 = chrome_sse_base64(agui_body(True), tmp_path)
    b64["log"]["entries"][0]["response"]["content"]["encoding"] = "BASE64"
    (tmp_path / "upper.har").write_text(json.dumps(b64))
    assert _checked(tmp_path / "upper.har") == [("r1", "passed", [])]


@pytest.mark.parametrize("name", ["../outside.dat", "/tmp/outside.dat", "sub/inner.dat", "link.dat", "missing.dat",
                                  "..", "sub", "fifo.dat"])
def test_a_playwright_attachment_is_read_only_beside_the_har(tmp_path, name):
    """An attacker's HAR may name any path as `_file`: only a regular file of that name in the HAR's own directory is
    read, never one through a path or a link, nor a directory or a FIFO (a directory ended the whole check, exit 2,
    naming the HAR as unreadable). Another is not read (a good body is there to be found): the stream's
    chat is judged as it stood, incomplete, never passed, with a warning that names the field."""
    outside = tmp_path / "outside.dat"
    outside.write_bytes(agui_body(True))
    folder = tmp_path / "har"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "inner.dat").write_bytes(agui_body(True))
    (folder / "link.dat").symlink_to(outside)
    os.mkfifo(folder / "fifo.dat")  # no writer: a read would wait for ever
    har = folder / "stream.har"
    doc = playwright_sse(agui_body(True), folder, attach=True)
    doc["log"]["entries"][0]["response"]["content"]["_file"] = name
    har.write_text(json.dumps(doc))
    code, out, report = chatprobe_check(har, "--profile", "ag-ui", cwd=tmp_path)
    assert code == 1, out
    assert chats(report) == [("r1", "incomplete", [])]
    [warning] = report["scenarios"][0]["warnings"]
    assert f"the response's _file {name!r} " in warning and "judged as they stood" in warning, warning
    assert "Traceback" not in out


def test_a_playwright_request_attachment_that_is_not_there_judges_no_chat_and_says_why(tmp_path):
    """Without its request (postData._file not beside the HAR) a stream's chat cannot be told: none is judged, the
    run fails its objectives and the warning names the file, never a pass nor an R12 held against the server."""
    doc = playwright_sse(agui_body(True), tmp_path, attach=True)
    post_file = doc["log"]["entries"][0]["request"]["postData"]["_file"]
    (tmp_path / post_file).unlink()
    har = tmp_path / "stream.har"
    har.write_text(json.dumps(doc))
    code, out, report = chatprobe_check(har, "--profile", "ag-ui", cwd=tmp_path)
    assert code == 1 and chats(report) == [], out
    [warning] = report["scenarios"][0]["warnings"]
    assert f"the request's _file {post_file!r} cannot be read next to the HAR" in warning, warning


def test_a_playwright_har_zip_is_refused_saying_what_it_is(tmp_path):
    """recordHar to a .zip path writes the HAR and its bodies into a zip: exit 2 naming the file and what to do."""
    archive = tmp_path / "run.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("har.har", json.dumps(playwright_sse(agui_body(True), tmp_path)))
    code, out, _doc = chatprobe_check(archive, "--profile", "ag-ui", cwd=tmp_path)
    assert code == 2, out
    assert "run.zip" in out and "zip archive" in out and "unpack it" in out and len(out.strip().splitlines()) == 1


# -- secrets --

TOKEN = "sk_live_9fK2qZx81LmPq7Rt"  # opaque: no JWT, no "Bearer" in the frame that echoes it
COOKIE = "Qw8eRt5yUi0pAs2dFgH"
URL_TOKEN = "Zx9cVb7nMa3sDf5gHj1k"
API_KEY = "ak-7Hq2Lm9Zp4Xw1Rv8"
SUBPROTOCOL = "c3ViLXRva2VuLTk4NzY1NDMyMQ"


def test_the_credentials_a_har_carries_are_in_no_output_even_when_the_server_echoes_them(tmp_path):
    """A HAR holds the user's Authorization header, cookies, a `?token=` in the URL, an API key header and a
    `jwt.` subprotocol; the server echoes each back in its frames (a malformed frame's text is quoted in its R12,
    an event's payload is listed). None of them is in the terminal output, the JSON, JUnit or HTML report."""
    secrets = [TOKEN, COOKIE, URL_TOKEN, API_KEY, SUBPROTOCOL]
    echo = " ".join(secrets)
    messages = netra_messages("r1", "t1", T0, extra=[
        ("receive", T0 + 0.121, 1, f"not json: your credentials are {echo}"),
        ("receive", T0 + 0.122, 1, json.dumps({"type": f"debug {echo}", "run_id": "r1"}))])
    entry = devtools_ws_entry(messages, T0 - 0.001, url=f"wss://chat.example.com/ws?token={URL_TOKEN}&v=2",
                              headers=[{"name": "Authorization", "value": f"Bearer {TOKEN}"},
                                       {"name": "Cookie", "value": f"theme=dark; sid={COOKIE}"},
                                       {"name": "X-Api-Key", "value": API_KEY},
                                       {"name": "Sec-WebSocket-Protocol", "value": f"chat.v1, jwt.{SUBPROTOCOL}"}])
    entry["request"]["queryString"] = [{"name": "token", "value": URL_TOKEN}, {"name": "v", "value": "2"}]
    entry["request"]["cookies"] = [{"name": "theme", "value": "dark"}, {"name": "sid", "value": COOKIE}]
    har = tmp_path / "secret.har"
    # an earlier socket listed after it: the entries are read in the order they started (each parsed alone)
    har.write_text(json.dumps(devtools_har([entry, devtools_ws_entry([], T0 - 1)]), indent=2))
    junit, html = tmp_path / "check.xml", tmp_path / "check.html"
    code, out, doc = chatprobe_check(har, "--junit", junit, "--html", html, cwd=tmp_path)
    assert code == 1, out
    assert chats(doc) == [("r1", "failed", ["R12"])]  # judged as ever: the echoes are what fails the chat
    assert "[REDACTED]" in out
    written = {"terminal": out, "json": (tmp_path / "report.json").read_text(), "junit": junit.read_text(),
               "html": html.read_text()}
    for where, text in written.items():
        for secret in secrets:
            assert secret not in text and secret[:10] not in text, (where, secret)


def test_a_password_in_a_hars_url_is_in_no_output_even_when_the_server_echoes_it(tmp_path):
    """A request's URL with its credentials in it (`wss://user:password@host/ws`, as a page or a tool's HAR may name
    a socket): the password, as sent (%-escaped) and decoded, was never registered and every report quoted the
    server's echo of it."""
    password = "Hj4kLm7n@Op0qRs3tUv"
    sent = password.replace("@", "%40")
    messages = netra_messages("r1", "t1", T0, extra=[
        ("receive", T0 + 0.121, 1, f"not json: welcome alice, {password} / {sent}")])
    har = tmp_path / "userinfo.har"
    har.write_text(json.dumps(devtools_har([devtools_ws_entry(
        messages, T0 - 0.001, url=f"wss://alice:{sent}@chat.example.com/ws")])))
    junit, html = tmp_path / "check.xml", tmp_path / "check.html"
    code, out, doc = chatprobe_check(har, "--junit", junit, "--html", html, cwd=tmp_path)
    assert code == 1, out
    assert chats(doc) == [("r1", "failed", ["R12"])]
    assert "welcome alice, [REDACTED] / [REDACTED]" in " ".join(out.split()), out
    for where, text in {"terminal": out, "json": (tmp_path / "report.json").read_text(), "junit": junit.read_text(),
                        "html": html.read_text()}.items():
        assert password[:8] not in text and "Op0qRs3tUv" not in text, where


def test_a_cookie_of_a_plain_word_or_a_short_value_erases_no_word_of_the_report(tmp_path):
    """A browser's HAR carries cookies that are no credential (`consent=accepted`, `theme=darkmode`, `a=1`): their
    values are not registered as secrets, else every "accepted" or "darkmode" a server says was [REDACTED] in the
    report (the session cookie beside them still is)."""
    messages = netra_messages("r1", "t1", T0, extra=[
        ("receive", T0 + 0.121, 1, f"plan accepted, darkmode dismissed 1 {COOKIE}")])
    entry = devtools_ws_entry(messages, T0 - 0.001, headers=[
        {"name": "Cookie", "value": f"a=1; consent=accepted; theme=darkmode; sid={COOKIE}"}])
    entry["request"]["cookies"] = [{"name": "a", "value": "1"}, {"name": "consent", "value": "accepted"},
                                   {"name": "theme", "value": "darkmode"}, {"name": "sid", "value": COOKIE}]
    entry["response"]["headers"] = [{"name": "Set-Cookie", "value": "banner=dismissed; Path=/"}]
    har = tmp_path / "cookies.har"
    har.write_text(json.dumps(devtools_har([entry])))
    code, out, doc = chatprobe_check(har, cwd=tmp_path)
    assert code == 1, out
    assert chats(doc) == [("r1", "failed", ["R12"])]
    assert "plan accepted, darkmode dismissed 1 [REDACTED]" in " ".join(out.split()), out
    assert COOKIE not in out


@pytest.mark.parametrize("cut", ["after", "inside"])
def test_a_har_broken_at_a_credential_quotes_none_of_it(tmp_path, cut):
    """A HAR made invalid right at a request's credential (hand-edited, or spliced from two exports): the entry's
    headers never end, so the credential is not registered, and the parser's error quoted the file's bytes around
    the error into the R12 that says where the file broke: the API key, in every report. The R12 says what broke and
    the byte, never the file's text."""
    entry = devtools_ws_entry(netra_messages("r1", "t1", T0), T0 - 0.001,
                              headers=[{"name": "X-Api-Key", "value": API_KEY}])
    first = devtools_ws_entry(netra_messages("r0", "t0", T0 - 1), T0 - 1.001)
    text = json.dumps(devtools_har([first, entry]))
    at = text.index(API_KEY) + (len(API_KEY) + 1 if cut == "after" else len(API_KEY) // 2)
    har = tmp_path / "broken.har"
    har.write_text(text[:at] + (" NaN" if cut == "after" else "\x01") + text[at:])  # a control character unescaped
    junit, html = tmp_path / "check.xml", tmp_path / "check.html"
    code, out, doc = chatprobe_check(har, "--junit", junit, "--html", html, cwd=tmp_path)
    assert code == 1, out
    assert chats(doc) == [("r0", "passed", [])]  # the entry before it, judged as ever
    assert "HAR file invalid JSON near byte" in out, out
    for where, text in {"terminal": out, "json": (tmp_path / "report.json").read_text(), "junit": junit.read_text(),
                        "html": html.read_text()}.items():
        assert API_KEY[:6] not in text, where


def test_a_har_refused_is_named_by_its_path_not_its_file_name(tmp_path):
    """Browsers name every export alike (`page.har`, `localhost.har`): of two runs' exports checked together, the one
    that is no HAR was refused as "page.har: not a HAR file", which of the two left to guess. It is named as the
    command named it, as every other refusal is."""
    for run in ("run1", "run2"):
        (tmp_path / run).mkdir()
    good, bad = tmp_path / "run1" / "page.har", tmp_path / "run2" / "page.har"
    good.write_text(json.dumps(devtools_har([devtools_ws_entry(netra_messages("r1", "t1", T0), T0 - 0.001)])))
    bad.write_text('{"log": {"entries": [{"x": ' + "[" * 100 + "]" * 100 + "}]}}")
    code, out, _doc = chatprobe_check(good, bad, cwd=tmp_path)
    assert code == 2, out
    assert f"{bad}: not a HAR file (nested more than 64 deep" in " ".join(out.split()), out
    assert "Traceback" not in out


def test_check_over_many_hars_holds_the_secrets_registry_to_its_bound_and_shows_no_credential(tmp_path, monkeypatch,
                                                                                            capsys):
    """`check` over many HAR files, each carrying credentials of its own (a bearer token, a session cookie) that the
    server echoes in its frames. Every credential read is registered for the whole process (each report is written
    after the last file is judged): the registry grew by each file's, without bound. Now the process holds at most
    redact.MAX_SECRETS secrets of MAX_SECRET_BYTES bytes: a check whose HAR would pass either bound is exit 2 naming
    the file (nothing is judged for a report then), and no credential is in any output, below the bound or at it."""
    from harness import redact
    from harness.cli import main

    def har(i: int) -> tuple[Path, list[str]]:
        token, cookie = f"sk_live_{i:04d}fK2qZx81LmPq7Rt", f"Qw8eRt5y{i:04d}Ui0pAs2dFgH"
        messages = netra_messages("r1", "t1", T0, extra=[
            ("receive", T0 + 0.121, 1, f"not json: your credentials are {token} {cookie}")])
        entry = devtools_ws_entry(messages, T0 - 0.001, headers=[{"name": "Authorization", "value": f"Bearer {token}"},
                                                                 {"name": "Cookie", "value": f"sid={cookie}"}])
        path = tmp_path / f"page{i:03d}.har"
        path.write_text(json.dumps(devtools_har([entry])))
        return path, [token, cookie]

    files = [har(i) for i in range(40)]
    credentials = [c for _, cs in files for c in cs]
    # Small bounds, so that 40 files pass them (raising=False: the bounds the old code did not have)
    monkeypatch.setattr(redact, "MAX_SECRETS", 24, raising=False)
    monkeypatch.setattr(redact, "MAX_SECRET_BYTES", 64 * 1024, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")

    outputs: list[str] = []

    def check(paths: list[Path], name: str) -> tuple[int, dict[str, str]]:
        redact.forget_all()
        json_at, junit_at = tmp_path / f"{name}.json", tmp_path / f"{name}.xml"
        code = main(["check", *map(str, paths), "--json", str(json_at), "--junit", str(junit_at)])
        out, err = capsys.readouterr()
        written = {"terminal": out + err}
        written.update((what, p.read_text()) for what, p in [("json", json_at), ("junit", junit_at)] if p.exists())
        outputs.extend(written.values())
        return code, written

    try:
        # Below the bound: judged as ever, every echo redacted.
        code, written = check([p for p, _ in files[:4]], "few")
        assert code == 1 and set(written) == {"terminal", "json", "junit"}, written["terminal"]
        assert chats(json.loads(written["json"])) == [("r1", "failed", ["R12"])] * 4
        assert "[REDACTED]" in written["json"] and "[REDACTED]" in written["junit"]
        # Past the bound (the count): exit 2 naming the file whose credential passes it, the registry held to it.
        code, written = check([p for p, _ in files], "many")
        count, size = len(redact._fixed), sum(len(s.encode()) for s in redact._fixed)
        assert count <= 24 and size <= 64 * 1024, (count, size)
        assert code == 2, written["terminal"]
        assert set(written) == {"terminal"}  # no report of a check that did not end
        message = written["terminal"].strip()
        assert message.startswith("chatprobe: error: ") and "page" in message and ".har: byte " in message, message
        assert "check fewer HAR files at once" in message and "\n" not in message, message
        # Past the bound in bytes (3 files: 9 secrets, under the count, of ~250 bytes): the second file is refused.
        monkeypatch.setattr(redact, "MAX_SECRET_BYTES", 160, raising=False)
        code, written = check([p for p, _ in files[:3]], "bytes")
        count, size = len(redact._fixed), sum(len(s.encode()) for s in redact._fixed)
        assert size <= 160 and code == 2, (count, size, written["terminal"])
        assert "page001.har: byte " in written["terminal"] and "160 bytes" in written["terminal"], written["terminal"]
        for text in outputs:  # terminal, JSON and JUnit, below the bound and at it
            assert not [c for c in credentials if c in text or c[-12:] in text], text
    finally:
        redact.forget_all()


def chrome_failed_request(started: float, status: int, error: str | None, *, mime: str = "x-unknown",
                          accept: str = "text/event-stream", post: bool = True) -> dict:
    """A request DevTools saved with no stream: status 0 and `response._error` (Chromium's net error) when no
    response came, else the answer's status; an EventSource's is a GET of `_resourceType` eventsource."""
    entry = http_entry(iso(started), {"size": 0, "mimeType": mime},
                       {"mimeType": "application/json", "text": json.dumps(REQUEST)})
    entry["request"]["headers"][1]["value"] = accept
    if not post:
        del entry["request"]["postData"]
        entry["request"]["method"] = "GET"
    entry["response"] |= {"status": status, "statusText": "", "headers": [], "_transferSize": 0, "_error": error}
    entry |= {"_initiator": {"type": "script"}, "_priority": "High", "_resourceType": "fetch" if post else "eventsource"}
    if 300 <= status < 400:
        entry["response"]["redirectURL"] = "https://agent.example.com/agent/"
    return entry


@pytest.mark.parametrize(("failed", "code", "outcome", "said"), [
    (dict(status=0, error="net::ERR_CONNECTION_REFUSED"), 3, "error",
     "the browser failed the request for an event stream: net::ERR_CONNECTION_REFUSED"),
    (dict(status=0, error="net::ERR_CONNECTION_REFUSED", post=False), 3, "error", "ERR_CONNECTION_REFUSED"),
    (dict(status=0, error="net::ERR_CERT_AUTHORITY_INVALID"), 3, "error", "ERR_CERT_AUTHORITY_INVALID"),
    (dict(status=0, error="net::ERR_FAILED"), 1, "error", "net::ERR_FAILED"),
    (dict(status=401, error=None, mime="application/json"), 2, "error", "HTTP 401 from the SSE endpoint"),
    (dict(status=200, error=None, mime="text/html"), 1, "error", "content type 'text/html', not text/event-stream"),
    (dict(status=0, error="net::ERR_ABORTED"), 1, "incomplete", "the page cancelled its request"),
    (dict(status=0, error=None), 1, "incomplete", "the HAR holds no response to this request"),
    # -1, HAR's "none" for what it does not know, is no status either (it was "HTTP -1 from the SSE endpoint", exit 3)
    (dict(status=-1, error=None), 1, "incomplete", "the HAR holds no response to this request"),
], ids=["refused", "eventsource-refused", "tls", "cors", "401", "html", "aborted", "pending", "pending-minus-one"])
def test_a_request_for_an_event_stream_that_got_none_is_a_chat_told_as_live_would_tell_it(tmp_path, failed, code,
                                                                                          outcome, said):
    """DevTools saves a fetch or EventSource the browser could not complete with status 0 and `_error`, a refused one
    with its status: neither is an event stream, so the entry was skipped, "no chat found" and exit 1, never why. A
    request that asked for an event stream alone and got none is the chat it was, judged as a live client counts it
    (connection refused: `error`, exit 3 when no chat reached the server; 401: exit 2; the page cancelling it, or no
    response kept: judged as it stood). Saved out of order, it is still read."""
    har = tmp_path / "failed.har"
    entry = chrome_failed_request(T0 + 5, **failed)
    har.write_text(json.dumps(devtools_har([entry])))
    code_got, out, doc = chatprobe_check(har, "--profile", "ag-ui", cwd=tmp_path)
    assert code_got == code, out
    [chat] = [c for s in doc["scenarios"] for c in s["chats"]]
    assert chat["outcome"] == outcome and said in json.dumps(chat) + out, out
    assert "no chat found" not in out
    # beside a stream that passed, saved after it though it started before: both are judged
    good = chrome_sse(agui_body(True), tmp_path)["log"]["entries"][0]
    good["startedDateTime"] = iso(T0 + 10)
    har.write_text(json.dumps(devtools_har([good, chrome_failed_request(T0 + 1, **failed)])))
    code_got, out, doc = chatprobe_check(har, "--profile", "ag-ui", cwd=tmp_path)
    assert code_got == 1 and sorted(c["outcome"] for s in doc["scenarios"] for c in s["chats"]) == sorted(
        ["passed", outcome]), out


def firefox_failed_request(started: float) -> dict:
    """A request Firefox's "Save All As HAR" kept with no response (devtools/client/netmonitor/src/har/har-builder.js:
    `status: 0` "if it's aborted", statusText and httpVersion "", no headers, content of size -1 and no mimeType,
    sizes -1, `_securityState`): what it writes for a request the browser failed (refused, blocked, cancelled) and for
    one still pending alike, with no error field of any kind."""
    entry = http_entry(iso(started, timezone(timedelta(hours=1))), {"size": -1},
                       {"mimeType": "application/json", "params": [], "text": json.dumps(REQUEST)})
    entry["response"] = {"status": 0, "statusText": "", "httpVersion": "", "headers": [], "cookies": [],
                         "content": {"size": -1}, "redirectURL": "", "headersSize": -1, "bodySize": -1}
    entry |= {"time": 0, "timings": {"blocked": -1, "dns": -1, "connect": -1, "ssl": -1, "send": -1, "wait": -1,
                                     "receive": -1}, "_securityState": "insecure", "pageref": "page_1"}
    return entry


def test_a_firefox_request_for_an_event_stream_that_got_none_says_the_har_does_not_tell_why(tmp_path):
    """Firefox writes a request the browser failed (a refused connection, a CORS block, the page's abort) as status 0
    and nothing of why, as it writes one still pending: the note said only "pending when the HAR was saved?", where
    the user's stream may well have been refused. The chat is judged as it stood (the HAR tells no more), the note
    saying what the HAR cannot tell and where to save one that does."""
    har = tmp_path / "firefox.har"
    har.write_text(json.dumps({"log": {"version": "1.2", "creator": {"name": "Firefox", "version": "133.0"},
                                       "browser": {"name": "Firefox", "version": "133.0"}, "pages": [],
                                       "entries": [firefox_failed_request(T0)]}}, indent=2))
    code, out, doc = chatprobe_check(har, "--profile", "ag-ui", cwd=tmp_path)
    assert code == 1, out
    [chat] = [c for s in doc["scenarios"] for c in s["chats"]]
    assert chat["outcome"] == "incomplete" and not chat.get("violations"), chat
    said = json.dumps(chat)
    assert "the browser failed, blocked or cancelled it" in said and "Firefox's HAR export names no reason" in said, said


def test_a_firefox_websocket_that_got_no_answer_is_said_among_the_warnings(tmp_path):
    """Firefox writes a WebSocket handshake the browser failed as status 0, no headers and no reason (its request's
    `Upgrade: websocket` says what it was): read as nothing at all, the check said only "no chat found (is it the
    profile's dialect?)", never that the user's socket had no answer. No message left on it, so no chat is judged,
    but the run's warnings name the entry and what the HAR cannot tell."""
    entry = firefox_failed_request(T0)
    entry["request"] |= {"method": "GET", "url": "wss://chat.example.com/ws",
                         "headers": [{"name": "Upgrade", "value": "websocket"},
                                     {"name": "Connection", "value": "keep-alive, Upgrade"}]}
    del entry["request"]["postData"]
    har = tmp_path / "firefox-ws.har"
    har.write_text(json.dumps({"log": {"version": "1.2", "creator": {"name": "Firefox", "version": "133.0"},
                                       "browser": {"name": "Firefox", "version": "133.0"}, "pages": [],
                                       "entries": [entry]}}, indent=2))
    code, out, doc = chatprobe_check(har, cwd=tmp_path)
    assert code == 1 and chats(doc) == [], out
    said = " ".join(out.split())
    assert "firefox-ws.har: entry 0: a WebSocket handshake the HAR holds no answer to and no reason for" in said, out
    assert "Firefox's HAR export names no reason" in said, out


def playwright_failed_request(failure: str) -> dict:
    """A request the browser could not complete as Playwright's recordHar writes it (harTracer.ts: the response
    createHarEntry leaves, status -1 and content `x-unknown`; `_onRequestFailed` adds `response._failureText`, the
    browser's reason: Chromium's `net::ERR_…`, Firefox's `NS_ERROR_…`)."""
    return {"startedDateTime": iso(T0), "time": -1,
            "request": {"method": "POST", "url": "http://127.0.0.1:8000/agent", "httpVersion": "HTTP/1.1",
                        "cookies": [], "headers": [{"name": "accept", "value": "text/event-stream"},
                                                   {"name": "content-type", "value": "application/json"}],
                        "queryString": [], "headersSize": -1, "bodySize": 180,
                        "postData": {"mimeType": "application/json", "text": json.dumps(REQUEST), "params": []}},
            "response": {"status": -1, "statusText": "", "httpVersion": "HTTP/1.1", "cookies": [], "headers": [],
                         "content": {"size": -1, "mimeType": "x-unknown"}, "headersSize": -1, "bodySize": -1,
                         "redirectURL": "", "_transferSize": -1, "_failureText": failure},
            "cache": {}, "timings": {"send": -1, "wait": -1, "receive": -1}, "pageref": "page@1f2e"}


@pytest.mark.parametrize(("failure", "code", "outcome", "kind"), [
    ("net::ERR_CONNECTION_REFUSED", 3, "error", "refused"),
    ("NS_ERROR_CONNECTION_REFUSED", 3, "error", "refused"),
    ("net::ERR_TIMED_OUT", 3, "error", "timeout"),
    ("NS_ERROR_NET_TIMEOUT", 3, "error", "timeout"),
    ("SEC_ERROR_UNKNOWN_ISSUER", 3, "error", "tls_error"),
    ("NS_ERROR_UNKNOWN_HOST", 3, "error", "refused"),
    ("net::ERR_ABORTED", 1, "incomplete", None),
    ("NS_BINDING_ABORTED", 1, "incomplete", None),
])
def test_a_playwright_request_for_an_event_stream_that_failed_is_told_by_its_failure_text(tmp_path, failure, code,
                                                                                          outcome, kind):
    """Playwright's recordHar names why a request got no response in `response._failureText` (not Chromium's
    `_error`): it was read as no reason at all, "pending when the HAR was saved?", an incomplete chat and exit 1 where
    the live client counted a connection refused (exit 3). Read as DevTools' `_error` is, Firefox's names too."""
    har = tmp_path / "pw.har"
    har.write_text(json.dumps({"log": {"version": "1.2", "creator": {"name": "Playwright", "version": "1.49.0"},
                                       "browser": {"name": "chromium", "version": "131.0.6778.33"}, "pages": [],
                                       "entries": [playwright_failed_request(failure)]}}, indent=2))
    code_got, out, doc = chatprobe_check(har, "--profile", "ag-ui", cwd=tmp_path)
    assert code_got == code, out
    [chat] = [c for s in doc["scenarios"] for c in s["chats"]]
    assert chat["outcome"] == outcome and failure in json.dumps(chat), chat
    assert "pending when the HAR was saved" not in out
    if kind is not None:
        assert doc["scenarios"][0]["stats"]["error_kinds"] == {kind: 1}, doc["scenarios"][0]["stats"]


def test_a_redirect_followed_or_a_request_that_also_accepts_json_is_no_chat(tmp_path):
    """The browser follows a redirect (the stream it led to is an entry of its own), and a request that accepts JSON
    as well as an event stream (an MCP client's `application/json, text/event-stream`) may well be answered so:
    neither is a chat that failed."""
    good = chrome_sse(agui_body(True), tmp_path)["log"]["entries"][0]
    good["startedDateTime"] = iso(T0 + 1)
    har = tmp_path / "other.har"
    har.write_text(json.dumps(devtools_har([
        chrome_failed_request(T0, 307, None, mime="text/html"), good,
        chrome_failed_request(T0 + 2, 200, None, mime="application/json", accept="application/json, text/event-stream"),
        chrome_failed_request(T0 + 3, 400, None, mime="application/json", accept="application/json, text/event-stream")])))
    code, out, doc = chatprobe_check(har, "--profile", "ag-ui", cwd=tmp_path)
    assert code == 0 and chats(doc) == [("r1", "passed", [])], out


@pytest.mark.parametrize("cut", ["limit", "end"])
def test_an_sse_body_past_the_limit_or_the_files_end_judges_its_request_as_it_stood(tmp_path, cut):
    """A HAR whose SSE body is larger than one HAR body may be (64 MiB; here a smaller limit), or whose file ends
    inside it: the entry was dropped whole (only the R12 "HAR file cut short"), "no chat found in the recording (is it
    the profile's dialect?)", or judged as a body the browser kept none of. Its request is the chat it was, judged as
    it stood (incomplete, the note saying why the body was not read), never held against the server."""
    from harness.offline import check_files
    from harness.profiles import load_profile
    from harness.scenario import Scenario

    body = agui_body(True) + b"".join(
        b'data: {"type": "TEXT_MESSAGE_CONTENT", "messageId": "a2", "delta": "' + b"x" * 900 + b'"}\n\n'
        for _ in range(120))
    text = json.dumps(chrome_sse(body, tmp_path), indent=2)
    har = tmp_path / "cut.har"
    har.write_text(text if cut == "limit" else text[:text.index("TEXT_MESSAGE_CONTENT") + 400])
    [run] = check_files([har], load_profile("ag-ui"), Scenario(name="t"), max_text=64 * 1024)
    [chat] = run.results
    assert chat.outcome.value == "incomplete" and not chat.violations, (chat.note, chat.violations)
    assert ("the HAR was read no further: a string longer than the 65536 byte limit" if cut == "limit"
            else "the HAR file is cut short (or broken) in this entry") in chat.note, chat.note
    assert [v.rule.value for v in run.connection_violations] == ["R12"]
    assert not any("no chat found" in e for e in run.errors), run.errors


@pytest.mark.parametrize("indent", [None, 2])
def test_a_har_whose_root_has_a_custom_field_before_log_is_read_as_a_har(tmp_path, indent):
    """HAR 1.2 allows custom fields (`_name`) in any object, the root too. A HAR whose root had one before `log` was
    told from its content as JSON Lines: compact, one line judged as a frame (an R12, exit 1, no chat); indented,
    exit 2 saying the file was no JSON. A file named .har is read as a HAR: judged as the same HAR with `log` first."""
    log = devtools_har([devtools_ws_entry(netra_messages("r1", "t1", T0), T0 - 0.001)])
    plain, custom = tmp_path / "plain.har", tmp_path / "custom.har"
    plain.write_text(json.dumps(log, indent=indent))
    custom.write_text(json.dumps({"_comment": "exported by a tool of our own", **log}, indent=indent))
    code, out, doc = chatprobe_check(plain, cwd=tmp_path)
    assert code == 0 and chats(doc) == [("r1", "passed", [])], out
    code, out, doc = chatprobe_check(custom, cwd=tmp_path)
    assert code == 0 and chats(doc) == [("r1", "passed", [])], out


@pytest.mark.parametrize("text", ["[]", '{"log": 5}', '{"entries": []}'])
def test_a_file_named_har_that_is_no_har_exits_2_saying_so(tmp_path, text):
    """It was read as JSON Lines, its one line a frame received: an R12 and exit 1, as if a server had sent it."""
    har = tmp_path / "page.har"
    har.write_text(text)
    code, out, _ = chatprobe_check(har, cwd=tmp_path)
    assert code == 2 and "Traceback" not in out, out
    assert f"{har}: not a HAR file" in out and len(out.strip().splitlines()) == 1, out
