"""A HAR of AG-UI chats a real headless Chromium ran, over a WebSocket and over HTTP POST + SSE (fetch, as AG-UI's
HttpAgent does), judged by `check_files`, gives the verdicts `chatprobe proxy` gave the same chats live: agentsim
(AG-UI) drops half the runs' tool results behind the proxy. Over the WebSocket Chromium reports each frame with its
time (Network.webSocketFrameSent/Received), written as DevTools' HAR export writes `_webSocketMessages`. Over SSE the
page is the proxy's own origin (no CORS), and Chromium's network events (Network.requestWillBeSent, responseReceived,
loadingFinished, the body from Network.getResponseBody) are written as DevTools' HAR export writes an event stream's
entry (its request's `postData`, the response's `content.text`).

Playwright is not among the dependencies (nor its browsers on this machine): Selenium drives Debian's Chromium, as the
other browser tests do. For a fetch() stream Chromium's network events carry no event of the stream (only byte counts),
so the HAR holds the body, which has no per-event times: first-event time, stalls and the deadline are not judged from
it (docs/recordings.md), and R9/R11 are not compared there."""
from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from harness.offline import check_files
from harness.profiles import load_profile
from harness.scenario import Scenario

from .conftest import chatprobe_bin, chromium, scrape, start_on_free_port, value, wait_for
from .test_har_check import har_from_chromium as ws_har_from_chromium

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CHATS = 10
SETTLE = "0.2s"
# One WebSocket, each chat's RunAgentInput sent once the previous run ended (RUN_FINISHED or RUN_ERROR).
SOCKET_ALL = """
const [url, bodies, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
const ws = new WebSocket(url);
let n = 0, ended = 0;
const next = () => { if (n < bodies.length) ws.send(bodies[n++]); else { ws.close(1000); done(ended); } };
ws.onopen = next;
ws.onmessage = (m) => { const t = JSON.parse(m.data).type; if (t === "RUN_FINISHED" || t === "RUN_ERROR") { ended++; next(); } };
ws.onerror = () => done("socket error");
"""
FETCH_ALL = """
const [url, bodies, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
(async () => {
  const out = [];
  for (const body of bodies) {
    const r = await fetch(url, {method: "POST", body,
                                headers: {"Content-Type": "application/json", "Accept": "text/event-stream"}});
    out.push([r.status, (await r.text()).length]);
  }
  return out;
})().then(done, e => done(String(e)));
"""


def _bodies() -> list[str]:
    return [json.dumps({"threadId": f"t{n}", "runId": f"r{n}", "state": {}, "tools": [], "context": [],
                        "forwardedProps": {}, "messages": [{"id": f"m{n}", "role": "user",
                                                            "content": f"What is {n} * 7? #tools=1"}]})
            for n in range(1, CHATS + 1)]


def _live(metrics: dict) -> tuple[dict, dict]:
    outcomes = {o: value(metrics, "chatprobe_chats_total", outcome=o) for o in ("passed", "failed", "incomplete", "error")}
    rules: dict[str, float] = {}
    for (name, labels), v in metrics.items():
        if name == "chatprobe_rule_violations_total" and v:
            rule = dict(labels)["rule"]
            rules[rule] = rules.get(rule, 0) + v
    return outcomes, rules


@pytest.fixture
def agui_ws_stack(procs):
    """agentsim's AG-UI over WebSocket, dropping half the runs' tool results, behind `chatprobe proxy`."""
    sim = procs.start("agentsim", [sys.executable, "-m", "agentsim", "--port", "0", "--protocol", "ag-ui", "--no-auth",
                                   "--think", "0.005", "--tool-latency", "0.002", "--seed", "5",
                                   "--fault", "drop_result=0.5"])
    upstream = sim.wait_for_line(r"AG-UI events over WebSocket at (ws://\S+)").group(1)
    proxy, _ = start_on_free_port(procs, "proxy", lambda port: [
        chatprobe_bin(), "proxy", "--upstream", upstream.rsplit("/", 1)[0], "--profile", "ag-ui",
        "--listen", "127.0.0.1:0", "--metrics-listen", f"127.0.0.1:{port}", "--settle", SETTLE])
    base = proxy.wait_for_line(r"chatprobe proxy listening on (ws://\S+)").group(1)
    metrics_url = proxy.wait_for_line(r"chatprobe proxy metrics on (http://\S+)").group(1)
    return SimpleNamespace(ws=f"{base}/agent?user=browser", metrics_url=metrics_url,
                           metrics=lambda: scrape(metrics_url),
                           diagnostics=lambda: "\n".join(p.tail() for p in (sim, proxy)))


def test_a_browser_har_of_agui_over_a_websocket_is_judged_offline_as_the_proxy_judged_it_live(agui_ws_stack,
                                                                                               tmp_path):
    """The same chats over AG-UI's WebSocket: Chromium reports each frame (Network.webSocketFrameSent/Received, with
    their times), written as DevTools' HAR export writes `_webSocketMessages`: judged with their times."""
    (tmp_path / "chromium").mkdir()
    with chromium(tmp_path / "chromium", logs={"performance": "ALL"}) as browser:
        browser.get(agui_ws_stack.metrics_url)  # a page to run the script in (a WebSocket has no same-origin rule)
        browser.get_log("performance")
        browser.set_script_timeout(60)
        ended = browser.execute_async_script(SOCKET_ALL, agui_ws_stack.ws, _bodies())
        assert ended == CHATS, ended
        wait_for(lambda: value(agui_ws_stack.metrics(), "chatprobe_chats_total") == CHATS, 10,
                 f"the proxy judged {CHATS} chats", interval=0.1, diagnostics=agui_ws_stack.diagnostics)
        live_outcomes, live_rules = _live(agui_ws_stack.metrics())
        har = ws_har_from_chromium(browser.get_log("performance"))
    assert live_outcomes["passed"] and live_outcomes["failed"] and live_rules.get("R5"), (live_outcomes, live_rules)
    f = tmp_path / "chat.har"
    f.write_text(json.dumps(har, indent=2))
    [run] = check_files([f], load_profile("ag-ui"), Scenario(name="browser", expect={"settle": SETTLE}))
    assert run.stats.chats == CHATS
    assert {o: run.stats.outcomes.get(o, 0) for o in live_outcomes} == live_outcomes
    assert {k: v for k, v in run.stats.violations.items() if v} == live_rules
    assert all(r.time_to_first_event is not None and r.time_to_first_event >= 0 for r in run.results)


@pytest.fixture
def agui_stack(procs):
    """agentsim speaking AG-UI, dropping half the runs' tool results, behind `chatprobe proxy` (subprocesses)."""
    sim = procs.start("agentsim", [sys.executable, "-m", "agentsim", "--port", "0", "--protocol", "ag-ui", "--no-auth",
                                   "--think", "0.005", "--tool-latency", "0.002", "--seed", "5",
                                   "--fault", "drop_result=0.5"])
    upstream = sim.wait_for_line(r"agentsim listening on (http://\S+)").group(1)
    proxy, _ = start_on_free_port(procs, "proxy", lambda port: [
        chatprobe_bin(), "proxy", "--upstream", upstream.rsplit("/", 1)[0], "--profile", "ag-ui",
        "--listen", "127.0.0.1:0", "--metrics-listen", f"127.0.0.1:{port}", "--settle", SETTLE])
    base = proxy.wait_for_line(r"chatprobe proxy listening on (http://\S+)").group(1)
    metrics_url = proxy.wait_for_line(r"chatprobe proxy metrics on (http://\S+)").group(1)
    return SimpleNamespace(base=base, agent=f"{base}/agent?user=browser", metrics=lambda: scrape(metrics_url),
                           diagnostics=lambda: "\n".join(p.tail() for p in (sim, proxy)))


def har_from_chromium(performance_log: list[dict], body_of) -> dict:
    """A HAR 1.2 log of the page's POSTs that got an event stream, from Chromium's network events, each entry as
    DevTools' HAR export writes it: startedDateTime (the request's wall time), request with postData, response
    status, headers and content (mimeType, text: the body Chromium kept, `body_of(requestId)`)."""
    requests: dict[str, dict] = {}
    for entry in performance_log:
        message = json.loads(entry["message"])["message"]
        method, params = message["method"], message.get("params", {})
        rid = params.get("requestId")
        if method == "Network.requestWillBeSent" and params["request"]["method"] == "POST":
            requests[rid] = {"request": params["request"], "wall": params["wallTime"]}
        elif method == "Network.responseReceived" and rid in requests:
            requests[rid]["response"] = params["response"]
        elif method == "Network.loadingFinished" and rid in requests:
            requests[rid]["finished"] = True
    entries = []
    for rid, r in requests.items():
        if "response" not in r or not r.get("finished"):
            continue
        req, resp = r["request"], r["response"]
        entries.append({
            "startedDateTime": datetime.fromtimestamp(r["wall"], UTC).isoformat().replace("+00:00", "Z"),
            "time": 0, "_resourceType": "fetch",
            "request": {"method": "POST", "url": req["url"], "httpVersion": "HTTP/1.1",
                        "headers": [{"name": k, "value": v} for k, v in req["headers"].items()],
                        "queryString": [], "cookies": [], "headersSize": -1, "bodySize": len(req["postData"]),
                        "postData": {"mimeType": "application/json", "text": req["postData"]}},
            "response": {"status": resp["status"], "statusText": resp.get("statusText", ""), "httpVersion": "HTTP/1.1",
                         "headers": [{"name": k, "value": v} for k, v in resp["headers"].items()], "cookies": [],
                         "content": {"size": -1, "mimeType": resp["mimeType"], "text": body_of(rid)},
                         "redirectURL": "", "headersSize": -1, "bodySize": -1},
            "cache": {}, "timings": {"blocked": -1, "dns": -1, "connect": -1, "send": 0, "wait": 0, "receive": 0}})
    return {"log": {"version": "1.2", "creator": {"name": "WebInspector", "version": "537.36"}, "pages": [],
                    "entries": entries}}


def test_a_browser_har_of_agui_over_sse_is_judged_offline_as_the_proxy_judged_it_live(agui_stack, tmp_path):
    (tmp_path / "chromium").mkdir()
    with chromium(tmp_path / "chromium", logs={"performance": "ALL"}) as browser:
        browser.get(agui_stack.base + "/")  # any page of the proxy's origin: the chats' fetches are same-origin
        browser.get_log("performance")  # start from an empty log
        browser.set_script_timeout(60)
        answers = browser.execute_async_script(FETCH_ALL, agui_stack.agent, _bodies())
        assert isinstance(answers, list) and all(status == 200 and size > 0 for status, size in answers), answers
        wait_for(lambda: value(agui_stack.metrics(), "chatprobe_chats_total") == CHATS, 10,
                 f"the proxy judged {CHATS} chats", interval=0.1, diagnostics=agui_stack.diagnostics)
        live = agui_stack.metrics()

        def body_of(request_id: str) -> str:
            return browser.execute_cdp_cmd("Network.getResponseBody", {"requestId": request_id})["body"]

        perf = browser.get_log("performance")
        har = har_from_chromium(perf, body_of)
    # For a fetch() stream Chromium reports the body's bytes as they come (Network.dataReceived: counts, no data) and
    # no Network.eventSourceMessageReceived (an EventSource's, which DevTools saves as `_eventSourceMessages`, timed).
    methods = {json.loads(e["message"])["message"]["method"] for e in perf}
    assert "Network.dataReceived" in methods and "Network.eventSourceMessageReceived" not in methods, methods
    assert len(har["log"]["entries"]) == CHATS

    live_outcomes, live_rules = _live(live)
    assert live_outcomes["passed"] and live_outcomes["failed"], live_outcomes  # the fault hit some chats, not all
    assert live_rules.get("R5"), live_rules  # a tool call left without its result

    f = tmp_path / "chat.har"
    f.write_text(json.dumps(har, indent=2))
    [run] = check_files([f], load_profile("ag-ui"), Scenario(name="browser", expect={"settle": SETTLE}))
    assert run.stats.chats == CHATS
    assert {o: run.stats.outcomes.get(o, 0) for o in live_outcomes} == live_outcomes
    # R9 (first event late) and R11 (stall) are judged live from the clock and never from a body without times.
    assert {k: v for k, v in run.stats.violations.items() if v} == {k: v for k, v in live_rules.items()
                                                                    if k not in ("R9", "R11")}
