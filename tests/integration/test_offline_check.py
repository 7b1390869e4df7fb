"""Recorded traffic judged offline gives the verdicts the live run gave: the real harness against agentsim with a
fault on, its frames recorded on the way (harness/recorder.py around each real transport), then `check_files`
on the recording; AG-UI SSE bodies saved from a real server, and the same in a HAR, against the live chats."""
from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from harness import client
from harness.events import Outcome
from harness.offline import check_files
from harness.profiles import load_profile
from harness.recorder import Recorder, RecordingTransport
from harness.recordings import read_recording
from harness.runner import run_scenario
from harness.scenario import Scenario

from ..profiles.servers import AguiSSEServer
from ..profiles.test_agui import FAULTS, chat, full_run
from .conftest import faults_by_run, scenario

# fault -> scenario overrides; each fault's live verdicts must come out the same offline.
CASES = {
    "drop:tool_completed=0.5": {"message": "What is 2 * 3? #tools=1"},
    "duplicate=0.5": {},
    "after_terminal=0.5": {"expect": {"streaming": True, "settle": "0.3s", "deadline": "10s"}},
    "malformed:notjson=0.5": {},
    "malformed:binary=0.5": {},
    "delay_first=0.4s@0.5": {"expect": {"first_event_limit": "0.2s", "settle": "0.05s", "deadline": "10s"}},
    "stall=0.6s@0.5": {"expect": {"stall_limit": "0.3s", "settle": "0.05s", "deadline": "10s"}},
    "close:clean=0.5": {"users": 3, "chats_per_user": 3},
    "crosstalk=0.5": {"users": 6, "chats_per_user": 4},
}


def verdicts(results) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each chat's outcome, rules (with their counts) and reconnects, by run id."""
    out = {}
    for r in results:
        assert r.run_id, r
        counts = Counter(r.rule_counts())
        out[r.run_id] = (r.outcome.value, tuple(sorted(f"{k}x{v}" for k, v in counts.items())), tuple(r.reconnects))
    return out


@pytest.fixture
def record_runs(tmp_path, monkeypatch):
    """Every transport the runner opens is wrapped in a RecordingTransport writing to tmp_path/rec (the hook
    `chatprobe run --record DIR` uses); yields the directory."""
    directory = tmp_path / "rec"
    recorder = Recorder(directory)
    real = client.make_transport
    monkeypatch.setattr(client, "make_transport",
                        lambda settings: RecordingTransport(real(settings), recorder.connection("agentsim")))
    return directory


@pytest.mark.parametrize("spec", list(CASES))
async def test_recorded_run_is_judged_offline_as_it_was_live(sim_factory, record_runs, spec):
    sc = scenario(**CASES[spec])
    async with sim_factory(faults=[spec], think=0.01) as (_sim, target, gt):
        live = await run_scenario(sc, target)
    faulted = faults_by_run(gt)
    if spec.startswith("close"):  # the client resumes the run on a new connection: a chat spanning two files
        assert any(r.run_id in faulted and r.reconnects == ["resumed"] for r in live.results)
    elif spec.startswith("crosstalk"):
        # The faulted run's own chat passes: the chat that fails is whichever of another user's was open when the
        # event reached its connection (a faulted run of its own or not, as the scheduling fell), with an R8.
        assert any("R8" in r.rule_counts() and r.outcome is not Outcome.PASSED for r in live.results), spec
    else:
        assert any(r.run_id in faulted and r.outcome is not Outcome.PASSED for r in live.results), spec
    files = sorted(record_runs.iterdir())
    assert files and all(f.suffix == ".jsonl" for f in files)
    [offline] = check_files([record_runs], target.profile, sc)
    assert verdicts(offline.results) == verdicts(live.results)
    assert offline.stats.outcomes == live.stats.outcomes
    assert offline.stats.violations == live.stats.violations
    assert offline.passed is live.passed
    # Judged from the recorded times: the first-event times are the live ones, to the recorder's clock.
    live_ttfe = {r.run_id: r.time_to_first_event for r in live.results}
    for r in offline.results:
        if r.time_to_first_event is not None and live_ttfe[r.run_id] is not None:
            assert abs(r.time_to_first_event - live_ttfe[r.run_id]) < 0.05


async def test_a_clean_recorded_run_passes_offline_and_one_file_alone_is_a_run(sim_factory, record_runs):
    sc = scenario(users=2, chats_per_user=3)
    async with sim_factory() as (_sim, target, _gt):
        live = await run_scenario(sc, target)
    assert live.passed
    files = sorted(record_runs.iterdir())
    runs = check_files(files, target.profile, sc)
    assert [r.scenario.name for r in runs] == [f.name for f in files]
    assert sum(r.stats.chats for r in runs) == 6 and all(r.passed for r in runs)
    # Tokens never reach a recording: the client's JWT travels in the handshake, and is scrubbed from frames.
    text = "".join(f.read_text() for f in files)
    assert "eyJ" not in text
    sends = [r for f in files for r in read_recording(f) if r.direction == "send"]
    assert len([s for s in sends if json.loads(s.frame)["type"] == "user_message"]) == 6


def _save_body(url: str, path: Path) -> dict:
    """POST a RunAgentInput and save the text/event-stream body as curl -o would; returns the request."""
    request = {"threadId": "t-1", "runId": "r-1", "state": {}, "messages": [{"id": "m1", "role": "user",
               "content": "What is 6 * 7?"}], "tools": [], "context": [], "forwardedProps": {}}
    with httpx.stream("POST", url, json=request, headers={"Accept": "text/event-stream"}, timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        path.write_bytes(b"".join(response.iter_bytes()))
    return request


def _har(entries: list[tuple[dict, bytes]], started: float) -> dict:
    """A HAR 1.2 log of SSE exchanges, as a browser's export has them."""
    iso = datetime.fromtimestamp(started, UTC).isoformat().replace("+00:00", "Z")
    return {"log": {"version": "1.2", "creator": {"name": "WebInspector", "version": "537.36"}, "pages": [],
                    "entries": [{
                        "startedDateTime": iso, "time": 12.5,
                        "request": {"method": "POST", "url": "http://127.0.0.1/agent", "httpVersion": "HTTP/1.1",
                                    "headers": [], "queryString": [], "cookies": [], "headersSize": -1,
                                    "bodySize": 10, "postData": {"mimeType": "application/json",
                                                                 "text": json.dumps(req)}},
                        "response": {"status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1",
                                     "headers": [{"name": "Content-Type", "value": "text/event-stream"}],
                                     "cookies": [], "redirectURL": "", "headersSize": -1, "bodySize": len(body),
                                     "content": {"size": len(body), "mimeType": "text/event-stream",
                                                 **({"text": base64.b64encode(body).decode(), "encoding": "base64"}
                                                    if i % 2 else {"text": body.decode()})}},
                        "cache": {}, "timings": {"send": 0, "wait": 10, "receive": 2.5}, "_resourceType": "fetch",
                    } for i, (req, body) in enumerate(entries)]}}


AGUI_CASES = {"full run": (full_run, True)} | {name: (script, False) for name, (script, _rule, _r) in FAULTS.items()}


@pytest.mark.parametrize("case", list(AGUI_CASES))
async def test_saved_agui_sse_body_and_har_are_judged_as_live(tmp_path, case):
    script, streaming = AGUI_CASES[case]
    profile = load_profile("ag-ui")
    sc = Scenario(name="t", expect={"streaming": streaming, "settle": "0.05s"})
    async with AguiSSEServer(script) as server:
        live = await chat(server.url, streaming=streaming)
        body_file = tmp_path / "body.sse"
        request = await asyncio.to_thread(_save_body, server.url, body_file)
    expected = (live.outcome.value, sorted(v.rule for v in live.violations))
    assert (live.outcome is Outcome.PASSED) == (case == "full run")

    [run] = check_files([body_file], profile, sc)
    [chat_offline] = run.results
    assert (chat_offline.outcome.value, sorted(v.rule for v in chat_offline.violations)) == expected
    assert chat_offline.run_id == "r-1" and run.passed is (case == "full run")

    har = tmp_path / "page.har"
    har.write_text(json.dumps(_har([(request, body_file.read_bytes())] * 2, 1764637200.0), indent=2))
    [run] = check_files([har], profile, sc)
    assert [(r.outcome.value, sorted(v.rule for v in r.violations)) for r in run.results] == [expected] * 2
    assert run.stats.chats == 2


def _chrome_sse_har(recording: Path, *, sanitized: bool = False) -> dict:
    """A recorded AG-UI run as Chrome's DevTools saves it ("Save all as HAR"): one `fetch` entry per stream, its
    request in postData, no body (an open or EventSource stream keeps none), each event in `_eventSourceMessages`
    with its time in epoch seconds; "Save as HAR (sanitized)" leaves each event's data out."""
    streams: dict[str, list[dict]] = {}
    for f in sorted(recording.iterdir()):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            streams.setdefault(f"{f.name}/{rec['conn']}", []).append(rec)
    entries = []
    for recs in streams.values():
        [sent] = [r for r in recs if r["dir"] == "send"]
        events = [{"time": r["t"], "eventName": "message", "eventId": ""} | ({} if sanitized else {"data": r["frame"]})
                  for r in recs if r["dir"] == "recv"]
        entries.append({
            "_initiator": {"type": "script"}, "_priority": "High", "_resourceType": "fetch", "cache": {},
            "request": {"method": "POST", "url": "http://127.0.0.1/agent", "httpVersion": "HTTP/1.1", "headers": [],
                        "queryString": [], "cookies": [], "headersSize": -1, "bodySize": len(sent["frame"]),
                        "postData": {"mimeType": "application/json", "text": sent["frame"]}},
            "response": {"status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1",
                         "headers": [{"name": "content-type", "value": "text/event-stream"}], "cookies": [],
                         "content": {"size": 0, "mimeType": "text/event-stream"}, "redirectURL": "",
                         "headersSize": -1, "bodySize": -1, "_transferSize": 0, "_error": None},
            "serverIPAddress": "127.0.0.1",
            "startedDateTime": datetime.fromtimestamp(sent["t"], UTC).isoformat().replace("+00:00", "Z"),
            "time": 1.0, "timings": {"blocked": -1, "dns": -1, "ssl": -1, "connect": -1, "send": 0, "wait": 1,
                                     "receive": 0},
            "_eventSourceMessages": events})
    entries.sort(key=lambda e: e["startedDateTime"])  # DevTools sorts by the time each request was issued
    return {"log": {"version": "1.2", "creator": {"name": "WebInspector", "version": "537.36"}, "pages": [],
                    "entries": entries}}


async def test_chrome_har_of_agui_sse_is_judged_by_its_event_times_as_live(tmp_path, record_runs):
    """Chrome saves an SSE response's events in `_eventSourceMessages`, each with its time (for EventSource and for
    fetch alike, body or no body): a stall or a late first event is judged from them as live; a sanitized export,
    which leaves the events' data out, judges each chat as it stood (incomplete), saying why, never passing it."""
    from .test_agui_faults_vs_ground_truth import AguiSimCtx

    sc = scenario(users=3, chats_per_user=3,
                  expect={"streaming": True, "settle": "0.05s", "deadline": "10s", "stall_limit": "0.3s"})
    async with AguiSimCtx(tmp_path, faults=["stall=0.6s@0.5"], think=0.01) as (_sim, target, _gt):
        live = await run_scenario(sc, target)
    assert any("R11" in r.rule_counts() for r in live.results) and any(r.outcome is Outcome.PASSED
                                                                       for r in live.results)
    har = tmp_path / "chrome.har"
    har.write_text(json.dumps(_chrome_sse_har(record_runs), indent=2))
    [offline] = check_files([har], target.profile, sc)
    assert verdicts(offline.results) == verdicts(live.results)
    assert offline.stats.violations == live.stats.violations and offline.passed is live.passed
    live_ttfe = {r.run_id: r.time_to_first_event for r in live.results}
    assert all(r.time_to_first_event is not None and abs(r.time_to_first_event - live_ttfe[r.run_id]) < 0.05
               for r in offline.results)

    har.write_text(json.dumps(_chrome_sse_har(record_runs, sanitized=True), indent=2))
    [offline] = check_files([har], target.profile, sc)
    assert offline.stats.chats == live.stats.chats and not offline.passed
    assert {r.outcome for r in offline.results} == {Outcome.INCOMPLETE}
    assert all(not r.violations and "a sanitized HAR export leaves event data out" in (r.note or "")
               for r in offline.results)


def _ws_har(recording: Path, order) -> dict:
    """A recorded run as a HAR of WebSocket entries (`_webSocketMessages`, as DevTools writes them), one per
    connection, in the order `order` puts them."""
    conns: dict[str, list[dict]] = {}
    for f in sorted(recording.iterdir()):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            conns.setdefault(f"{f.name}/{rec['conn']}", []).append(rec)
    entries = []
    for recs in conns.values():
        messages = [{"type": "send" if r["dir"] == "send" else "receive", "time": r["t"],
                     "opcode": 2 if "frame_b64" in r else 1, "data": r.get("frame_b64", r.get("frame"))}
                    for r in recs if r["dir"] in ("send", "recv")]
        entries.append({"startedDateTime": datetime.fromtimestamp(recs[0]["t"] - 0.001, UTC).isoformat(), "time": 1,
                        "request": {"method": "GET", "url": "ws://127.0.0.1/ws", "headers": []},
                        "response": {"status": 101, "headers": [], "content": {"size": 0, "mimeType": "x-unknown"}},
                        "cache": {}, "timings": {"send": 0, "wait": 1, "receive": 0}, "_resourceType": "websocket",
                        "_webSocketMessages": messages})
    return {"log": {"version": "1.2", "creator": {"name": "har-merge", "version": "1"}, "pages": [],
                    "entries": order(entries)}}


async def test_a_har_with_its_entries_out_of_order_is_judged_in_the_order_they_started(sim_factory, record_runs,
                                                                                        tmp_path):
    """HAR 1.2 leaves the entries' order to the writer ("the reader application should always make sure the array
    is sorted"): a chat resumed on a new connection, that connection's entry first, is judged as live (it was
    counted twice, failed on the new connection and incomplete on the old)."""
    sc = scenario(users=3, chats_per_user=3)
    async with sim_factory(faults=["close:clean=0.5"], think=0.01) as (_sim, target, _gt):
        live = await run_scenario(sc, target)
    assert any(r.reconnects == ["resumed"] for r in live.results)
    har = tmp_path / "page.har"
    for order in (lambda es: sorted(es, key=lambda e: e["startedDateTime"], reverse=True),
                  lambda es: sorted(es, key=lambda e: (len(e["_webSocketMessages"]), e["startedDateTime"]))):
        har.write_bytes(b"\xef\xbb\xbf" + json.dumps(_ws_har(record_runs, order), indent=2).replace("\n", "\r\n")
                        .encode())
        [offline] = check_files([har], target.profile, sc)
        assert verdicts(offline.results) == verdicts(live.results)
        assert offline.stats.chats == live.stats.chats and offline.passed is live.passed
