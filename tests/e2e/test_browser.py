"""A real headless Chromium as the user: a plain-JS chat page (tests/e2e/chat_page.html) talks through
`chatprobe proxy` (subprocess) to agentsim (subprocess), authenticating the way browsers must (JWT in the
`jwt.<base64url>` subprotocol). The page must show each run in order, and the proxy's /metrics must judge
what the browser did: passed chats, a tab closed mid-run (abandoned), a rejected token (auth_failed)."""
from __future__ import annotations

import functools
import http.server
import secrets
import shutil
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import jwt
import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from .conftest import chatprobe_bin, chromium, scrape, start_on_free_port, value, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

PAGE = Path(__file__).with_name("chat_page.html")
SCREENSHOT = Path("/tmp/chatprobe-browser.png")
LIVE = {"source": "live"}
DEFAULT_ROLES = ("agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def page_base(tmp_path_factory):
    """The chat page on a loopback HTTP server, from a directory holding nothing else."""
    root = tmp_path_factory.mktemp("www")
    shutil.copy(PAGE, root / PAGE.name)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{PAGE.name}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


@pytest.fixture
def stack(procs):
    """agentsim and `chatprobe proxy` in front of it, as subprocesses; both stopped by `procs` at teardown."""
    secret = secrets.token_urlsafe(32)
    # The secret by environment, as a user would (not on argv, where `ps` shows it and a leading '-' reads as a flag).
    sim = procs.start("agentsim", [sys.executable, "-m", "agentsim", "--port", "0",
                                   "--think", "0.01", "--tool-latency", "0.005", "--seed", "7"],
                      env={"AGENTSIM_JWT_SECRET": secret})
    sim_url = sim.wait_for_line(r"agentsim listening on (ws://\S+)").group(1)
    upstream = sim_url.rsplit("/", 1)[0]
    proxy, _ = start_on_free_port(procs, "proxy", lambda port: [
        chatprobe_bin(), "proxy", "--upstream", upstream, "--listen", "127.0.0.1:0",
        "--metrics-listen", f"127.0.0.1:{port}", "--settle", "0.2s"])
    proxy_url = proxy.wait_for_line(r"chatprobe proxy listening on (ws://\S+)").group(1)
    metrics_url = proxy.wait_for_line(r"chatprobe proxy metrics on (http://\S+)").group(1)

    def token(user: str, key: str = secret) -> str:
        return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, key, algorithm="HS256")

    def diagnostics() -> str:
        return "\n".join(p.tail() for p in (sim, proxy))

    def metric(name: str, **labels: str) -> float:
        return value(scrape(metrics_url), name, **LIVE, **labels)

    def until_metric(name: str, expected: float, timeout: float = 10.0, **labels: str) -> None:
        wait_for(lambda: metric(name, **labels) == expected, timeout, f"/metrics {name}{labels} == {expected:g}",
                 interval=0.1, diagnostics=lambda: f"last value: {metric(name, **labels)}\n{diagnostics()}")

    return SimpleNamespace(ws=f"{proxy_url}/ws", metrics=metrics_url, token=token, metric=metric,
                           until_metric=until_metric, diagnostics=diagnostics)


# ---- page helpers -------------------------------------------------------------------------------------------

def open_chat(driver, page_base: str, ws_url: str, token: str) -> None:
    # Settings in the fragment: the token never reaches the page's HTTP server. The query makes every call a new
    # document (a fragment-only change would keep the previous page and its socket).
    driver.get(f"{page_base}?load={secrets.token_hex(4)}#ws={quote(ws_url, safe='')}&token={quote(token, safe='')}"
               f"&thread=t-browser-{secrets.token_hex(4)}")


def dataset(driver) -> dict:
    return driver.execute_script("return Object.assign({}, document.body.dataset);")


def rendered(driver) -> list[dict]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#events li')).map(li => Object.assign({}, li.dataset));")


def wait_page(driver, condition, what: str, timeout: float, stack=None):
    """WebDriverWait with a deadline; on expiry, fail saying what the page and the processes showed."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d))
    except TimeoutException:
        extra = stack.diagnostics() if stack is not None else ""
        pytest.fail(f"within {timeout:g}s the page never showed: {what}\nbody: {dataset(driver)}\n"
                    f"events: {rendered(driver)}\n{extra}")


def send_chat(driver, text: str, stack) -> None:
    box = wait_page(driver, lambda d: (lambda el: el if el.is_enabled() else None)(d.find_element(By.ID, "message")),
                    "the message box is enabled (welcome frame received)", 10, stack)
    box.send_keys(text)
    driver.find_element(By.ID, "send").click()


# ---- tests --------------------------------------------------------------------------------------------------

def test_browser_chats_render_in_order_and_the_proxy_counts_them_as_passed(browser, page_base, stack):
    open_chat(browser, page_base, stack.ws, stack.token("u-browser-alice"))
    messages = ["What is 2 * 21?", "Look up the weather in Lima. #tools=2", "Summarise our chat. #tools=1"]
    for n, text in enumerate(messages, start=1):
        send_chat(browser, text, stack)
        wait_page(browser, lambda d, n=n: dataset(d).get("completed") == str(n) or dataset(d).get("state") == "error",
                  f"chat {n} reaches agent_completed", 15, stack)
        assert dataset(browser)["state"] == "done", (dataset(browser), rendered(browser))

    items = rendered(browser)
    runs: dict[str, list[dict]] = {}
    for li in items:
        if li["type"] != "user_message":
            runs.setdefault(li["run"], []).append(li)
    assert len(runs) == len(messages), items
    for run_id, events in runs.items():
        types = [e["type"] for e in events]
        assert types[0] == "agent_started" and types[-1] == "agent_completed", (run_id, types)
        assert types.count("agent_completed") == 1, (run_id, types)
        assert set(DEFAULT_ROLES) <= set(types), (run_id, types)
        assert types.index("agent_thinking") < types.index("tool_executing"), (run_id, types)
        assert types.count("tool_executing") == types.count("tool_completed"), (run_id, types)
        assert [int(e["seq"]) for e in events] == list(range(1, len(events) + 1)), (run_id, events)
    assert [li["type"] for li in items].count("user_message") == len(messages)

    browser.save_screenshot(str(SCREENSHOT))  # a look at the page for a person; not part of the verdict

    stack.until_metric("chatprobe_chats_total", len(messages), outcome="passed")
    assert stack.metric("chatprobe_time_to_first_event_seconds_count") == len(messages)
    assert stack.metric("chatprobe_chats_total") == len(messages)  # no other outcome
    assert stack.metric("chatprobe_chats_in_flight") == 0
    assert stack.metric("chatprobe_connections_total", result="ok") == 1
    assert stack.metric("chatprobe_rule_violations_total") == 0


def test_closing_the_tab_mid_run_is_an_abandoned_chat(browser, page_base, stack):
    home = browser.current_window_handle
    browser.switch_to.new_window("tab")
    try:
        open_chat(browser, page_base, stack.ws, stack.token("u-browser-bob"))
        send_chat(browser, "Plan a three-week trip to Peru. #think=2", stack)
        wait_page(browser, lambda d: any(li["type"] == "agent_started" for li in rendered(d)),
                  "the run's first event (agent_started)", 10, stack)
        stack.until_metric("chatprobe_chats_in_flight", 1)
    finally:
        browser.close()  # the user closes the tab while the agent is still thinking
        browser.switch_to.window(home)
    stack.until_metric("chatprobe_chats_abandoned_total", 1)
    stack.until_metric("chatprobe_chats_in_flight", 0)
    # Judged on what arrived before the user left: nothing wrong, nothing owed (no missing roles, no terminal).
    assert stack.metric("chatprobe_chats_total") == 1  # started = judged + in flight
    assert stack.metric("chatprobe_chats_total", outcome="passed") == 1
    assert stack.metric("chatprobe_chats_missing_events_total") == 0
    assert stack.metric("chatprobe_time_to_first_event_seconds_count") == 1


def test_a_rejected_token_reaches_the_page_and_counts_as_auth_failed(browser, page_base, stack):
    open_chat(browser, page_base, stack.ws, stack.token("u-browser-mallory", key=secrets.token_urlsafe(32)))
    wait_page(browser, lambda d: dataset(d).get("closeCode") is not None, "the WebSocket closes", 10, stack)
    page = dataset(browser)
    assert page["state"] == "error", page
    assert page.get("errorCode") == "AUTH_FAILED", (page, rendered(browser))
    assert page["closeCode"] == "1008", page  # the proxy passes the server's close code on
    assert browser.find_element(By.ID, "message").is_enabled() is False
    stack.until_metric("chatprobe_connections_total", 1, result="auth_failed")
    assert stack.metric("chatprobe_connections_total", result="ok") == 0
    assert stack.metric("chatprobe_chats_total") == 0
