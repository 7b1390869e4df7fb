"""A HAR of what a real headless Chromium exchanged over its WebSocket, judged by `check_files`, gives the verdicts
the proxy gave live: the chat page (tests/e2e/chat_page.html) talks through `chatprobe proxy` to agentsim with a
fault on; Chromium reports every frame (DevTools protocol, Network.webSocketFrame*), which is written as DevTools'
own HAR export writes it (`_webSocketMessages`), then checked offline and compared with the proxy's /metrics."""
from __future__ import annotations

import json
import secrets
import sys
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import jwt
import pytest

from harness.offline import check_files
from harness.profiles import load_profile
from harness.scenario import Scenario

from . import test_browser
from .conftest import chatprobe_bin, chromium, scrape, start_on_free_port, value, wait_for
from .test_browser import dataset, open_chat, send_chat, wait_page

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CHATS = 8
SETTLE = "0.2s"
page_base = test_browser.page_base  # the chat page on a loopback HTTP server (a module fixture)


@pytest.fixture(scope="module")
def recording_browser(tmp_path_factory):
    """Chromium with its network events logged (what DevTools records a HAR from)."""
    with chromium(tmp_path_factory.mktemp("chromium-har"), logs={"performance": "ALL"}) as driver:
        yield driver


@pytest.fixture
def faulty_stack(procs):
    """agentsim losing half the runs' tool_completed, behind `chatprobe proxy` (subprocesses)."""
    secret = secrets.token_urlsafe(32)
    # The secret by environment (on argv a leading '-' reads as a flag, and `ps` shows it).
    sim = procs.start("agentsim", [sys.executable, "-m", "agentsim", "--port", "0",
                                   "--think", "0.01", "--tool-latency", "0.005", "--seed", "7",
                                   "--fault", "drop:tool_completed=0.5"], env={"AGENTSIM_JWT_SECRET": secret})
    upstream = sim.wait_for_line(r"agentsim listening on (ws://\S+)").group(1).rsplit("/", 1)[0]
    proxy, _ = start_on_free_port(procs, "proxy", lambda port: [
        chatprobe_bin(), "proxy", "--upstream", upstream, "--listen", "127.0.0.1:0",
        "--metrics-listen", f"127.0.0.1:{port}", "--settle", SETTLE])
    proxy_url = proxy.wait_for_line(r"chatprobe proxy listening on (ws://\S+)").group(1)
    metrics_url = proxy.wait_for_line(r"chatprobe proxy metrics on (http://\S+)").group(1)
    token = jwt.encode({"sub": "u-har", "exp": int(time.time()) + 600}, secret, algorithm="HS256")
    return SimpleNamespace(ws=f"{proxy_url}/ws", token=token, metrics=lambda: scrape(metrics_url),
                           diagnostics=lambda: "\n".join(p.tail() for p in (sim, proxy)))


def har_from_chromium(performance_log: list[dict]) -> dict:
    """A HAR 1.2 log of the page's WebSockets, from Chromium's own network events, written as DevTools' HAR export
    writes `_webSocketMessages`: type send/receive, time in epoch seconds (the handshake's wall time plus the
    frame's offset on the monotonic clock), opcode, data."""
    sockets: dict[str, dict] = {}
    for entry in performance_log:
        message = json.loads(entry["message"])["message"]
        method, params = message["method"], message.get("params", {})
        if method == "Network.webSocketCreated":
            sockets[params["requestId"]] = {"url": params["url"], "messages": []}
        elif method == "Network.webSocketWillSendHandshakeRequest" and params["requestId"] in sockets:
            sockets[params["requestId"]].update(wall=params["wallTime"], mono=params["timestamp"])
        elif method in ("Network.webSocketFrameSent", "Network.webSocketFrameReceived"):
            sock = sockets[params["requestId"]]
            frame = params["response"]
            sock["messages"].append({"type": "send" if method.endswith("Sent") else "receive",
                                     "time": sock["wall"] + (params["timestamp"] - sock["mono"]),
                                     "opcode": frame["opcode"], "data": frame["payloadData"]})
    entries = [{
        "startedDateTime": datetime.fromtimestamp(s["wall"], UTC).isoformat().replace("+00:00", "Z"),
        "time": 0, "request": {"method": "GET", "url": s["url"], "httpVersion": "HTTP/1.1", "headers": [],
                               "queryString": [], "cookies": [], "headersSize": -1, "bodySize": 0},
        "response": {"status": 101, "statusText": "Switching Protocols", "httpVersion": "HTTP/1.1", "headers": [],
                     "cookies": [], "content": {"size": 0, "mimeType": "x-unknown"}, "redirectURL": "",
                     "headersSize": -1, "bodySize": 0},
        "cache": {}, "timings": {"blocked": -1, "dns": -1, "connect": -1, "send": 0, "wait": 0, "receive": 0},
        "_resourceType": "websocket", "_webSocketMessages": s["messages"],
    } for s in sockets.values()]
    return {"log": {"version": "1.2", "creator": {"name": "WebInspector", "version": "537.36"}, "pages": [],
                    "entries": entries}}


def test_a_browser_har_is_judged_offline_as_the_proxy_judged_it_live(recording_browser, page_base, faulty_stack,
                                                                      tmp_path):
    browser = recording_browser
    browser.get_log("performance")  # start from an empty log
    open_chat(browser, page_base, faulty_stack.ws, faulty_stack.token)
    for n in range(1, CHATS + 1):
        send_chat(browser, f"What is {n} * 7? #tools=1", faulty_stack)
        wait_page(browser, lambda d, n=n: dataset(d).get("completed") == str(n) or dataset(d).get("state") == "error",
                  f"chat {n} reaches agent_completed", 15, faulty_stack)
    wait_for(lambda: value(faulty_stack.metrics(), "chatprobe_chats_total") == CHATS, 10,
             f"the proxy judged {CHATS} chats", interval=0.1, diagnostics=faulty_stack.diagnostics)
    live = faulty_stack.metrics()
    live_outcomes = {o: value(live, "chatprobe_chats_total", outcome=o) for o in ("passed", "failed", "incomplete")}
    live_rules: dict[str, float] = {}
    for (name, labels), v in live.items():
        if name == "chatprobe_rule_violations_total" and v:  # every rule broken (an R9 too, on a slow machine)
            rule = dict(labels)["rule"]
            live_rules[rule] = live_rules.get(rule, 0) + v
    assert live_outcomes["passed"] and live_outcomes["failed"], live_outcomes  # the fault hit some chats, not all
    assert live_rules.get("R2"), live_rules

    har = tmp_path / "chat.har"
    har.write_text(json.dumps(har_from_chromium(browser.get_log("performance")), indent=2))
    [run] = check_files([har], load_profile("netra"), Scenario(name="browser", expect={"settle": SETTLE}))

    assert run.stats.chats == CHATS
    assert {o: run.stats.outcomes.get(o, 0) for o in live_outcomes} == live_outcomes
    assert {k: v for k, v in run.stats.violations.items() if v} == live_rules
    assert value(live, "chatprobe_rule_violations_total") == sum(run.stats.violations.values())
    # Times from the browser's clock: each chat has its first-event time (over the limit where live had an R9 too).
    assert all(r.time_to_first_event is not None and r.time_to_first_event >= 0 for r in run.results)
