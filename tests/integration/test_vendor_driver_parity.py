"""Every driver that can carry a vendor's example profile judges the same stream the same way: the profile features
those examples use (`type_keys`, `control` entries with `where`, `unmapped` prefix patterns such as `data-*`,
`after_error`) in `chatprobe run` (picows and websockets clients, the SSE transport), alone and with 20 users,
`chatprobe check` of its `--record` recording, the Locust user's client (over SSE too), the pytest plugin and
`chatprobe proxy`. The raw servers are tests/integration/test_vendor_streams.py's; over a WebSocket, the same frames
one message each (the profile with `transport: websocket`), for the driver that speaks WebSocket only (the proxy).
A master and a worker under real Locust: tests/e2e/test_locust_vendor_parity.py.

Guards: these held when written (the one driver found to depart, Locust distributed, is fixed and tested there).
"""
from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from harness.checker import ChatResult
from harness.cli import main
from harness.client import Session
from harness.flow import ChatOptions
from harness.gevent_client import SyncSession
from harness.profiles import Profile, load_profile
from harness.pytest_plugin import ChatProbe
from harness.scenario import Expect, expectations_for
from harness.sinks import Sink
from harness.targets import Target
from monitors.metrics import ChatMetrics, MetricsSink
from monitors.proxy import LiveChats, Proxy, start_proxy

from . import test_vendor_streams as vendor
from .outside_servers import InThread, RawSseServer, RawWsServer, WsConn

pytestmark = pytest.mark.timeout(180)

Verdict = tuple[str, tuple[str, ...]]
DEADLINE = 1.5
SETTLE = 0.1
SCENARIO = """\
name: parity
users: {users}
chats_per_user: {n}
messages: {messages}
think_time: 0
expect:
  deadline: {deadline}s
  settle: {settle}s
{extra}"""
USAGE = ("request: {model: gpt-4.1, stream: true,",
         "request: {model: gpt-4.1, stream: true, stream_options: {include_usage: true},")

# (profile, the chats' messages, the stream of each message, the message's text in the request, the SSE script)
CASES: dict[str, tuple[str, list[str], Callable[[str], list[Any]], Callable[[dict[str, Any]], str], Any]] = {
    # data-* parts, after_error (finish-step, finish after an error part), an error part alone
    "ai-sdk": (vendor.AI_SDK, ["w #good", "w #badinput", "w #error", "w #thrown", "w #truncated", "w #unfinished",
                               "w #hang", "w #swapped"],
               vendor.ai_sdk_chunks, lambda r: r["messages"][-1]["parts"][0]["text"], vendor.ai_sdk_script),
    # type_keys (the mid-stream {"error": …}), a control entry with where (the usage chunk after the finish)
    "chat-completions": (vendor.CHAT_COMPLETIONS, ["w #good", "w #tools", "w #error", "w #length", "w #truncated",
                                                   "w #hang", "w #swapped"],
                         lambda m: vendor.chat_chunks(m, usage=True), lambda r: r["messages"][-1]["content"],
                         vendor.chat_script),
    # after_error (message_stop after a max_tokens stop)
    "anthropic": (vendor.ANTHROPIC, ["w #good", "w #error", "w #maxtokens", "w #truncated", "w #hang", "w #unstopped",
                                     "w #swapped"],
                  vendor.anthropic_events, lambda r: r["messages"][-1]["content"], vendor.anthropic_script),
}
# How each stream is judged (as tests/integration/test_vendor_streams.py has it): over SSE a stream cut short ends
# with its response (incomplete); over a WebSocket the connection stays open, and the chat waits out its deadline.
CUT = {"sse": ("incomplete", ()), "websocket": ("incomplete", ("R10",))}
EXPECTED: dict[str, dict[str, Verdict]] = {
    "ai-sdk": {"good": ("passed", ()), "badinput": ("passed", ()), "error": ("failed", ("R13",)),
               "thrown": ("failed", ("R13",)), "unfinished": ("failed", ("R5",)), "hang": ("incomplete", ("R10",)),
               "swapped": ("failed", ("R5",))},
    "chat-completions": {"good": ("passed", ()), "tools": ("passed", ()), "error": ("failed", ("R13",)),
                         "length": ("failed", ("R13",)), "hang": ("incomplete", ("R10",)),
                         "swapped": ("failed", ("R4",))},
    "anthropic": {"good": ("passed", ()), "error": ("failed", ("R13",)), "maxtokens": ("failed", ("R13",)),
                  "hang": ("incomplete", ("R10",)), "unstopped": ("failed", ("R5",)), "swapped": ("failed", ("R5",))},
}
RUN_ID = re.compile(r"(?:msg_01|chatcmpl-|msg-)([a-z]+)")


def expected(case: str, transport: str) -> dict[str, Verdict]:
    return {**EXPECTED[case], "truncated": CUT[transport]}


def profile_file(tmp_path: Path, case: str, transport: str) -> Path:
    """The shipped example (Chat Completions asking for usage: the chunk after the finish), over `transport`."""
    text = Path(CASES[case][0]).read_text(encoding="utf-8").replace(*USAGE)
    if transport == "websocket":
        text = text.replace("transport: sse\n", "transport: websocket\nwelcome: false\n")
    path = tmp_path / f"{case}-{transport}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def ws_server(case: str) -> RawWsServer:
    """The vendor's frames over a WebSocket, one message each; a stream that never ends stops sending (the next
    message is the next chat's). Each chat's run id unique on the server (as a vendor's are)."""
    _, _, stream, text_of, _ = CASES[case]
    count = [0]

    async def handle(conn: WsConn) -> None:
        while (text := await conn.recv()) is not None:
            count[0] += 1
            for ev in stream(text_of(json.loads(text))):
                if ev is None:
                    break
                if isinstance(ev, dict):
                    ev = json.loads(json.dumps(ev).replace("-Xq2", f"-Xq2n{count[0]}")
                                    .replace("-B9x", f"-B9xn{count[0]}"))
                await conn.send(ev)

    return RawWsServer(handle)


def rules(result: ChatResult) -> Verdict:
    return result.outcome.value, tuple(sorted({v.rule.value for v in result.violations}))


def by_tag(report: Path) -> dict[str, set[Verdict]]:
    (scenario,) = json.loads(report.read_text())["scenarios"]
    out: dict[str, set[Verdict]] = {}
    for chat in scenario["chats"]:
        found = RUN_ID.search(chat.get("run_id") or "")
        broke = tuple(sorted({v["rule"] for v in chat["violations"]}))
        if not found:  # no run of the server's: what the chat says of why (a failure says what went wrong)
            broke += (f"{chat.get('error_kind')}: {chat.get('error')}", f"note: {chat.get('note')}",
                      f"events: {chat.get('events_received')}")
        out.setdefault(found.group(1) if found else "?", set()).add((chat["outcome"], broke))
    return out


def run_and_check(tmp_path: Path, url: str, profile: Path, messages: list[str], users: int = 1, extra: str = ""
                  ) -> tuple[dict[str, set[Verdict]], dict[str, set[Verdict]], int]:
    """`chatprobe run --record`, then `chatprobe check` of the recording: each tag's verdicts live and offline, and
    how many chats were judged live."""
    name = f"u{users}{'-ws' if extra else ''}"
    scenario = tmp_path / f"{name}.yaml"
    scenario.write_text(SCENARIO.format(users=users, n=len(messages), messages=json.dumps(messages),
                                        deadline=DEADLINE, settle=SETTLE, extra=extra))
    live, offline, rec = tmp_path / f"{name}-live.json", tmp_path / f"{name}-offline.json", tmp_path / f"{name}-rec"
    code = main(["run", "--target", url, "--profile", str(profile), "--auth", "none", str(scenario),
                 "--record", str(rec), "--json", str(live), "-q"])
    assert code in (0, 1), code
    assert main(["check", str(rec), "--profile", str(profile), "--scenario", str(scenario), "--json", str(offline),
                 "-q"]) == code
    return by_tag(live), by_tag(offline), len(json.loads(live.read_text())["scenarios"][0]["chats"])


def exp_of(profile: Profile) -> Any:
    return expectations_for(profile, Expect(deadline=DEADLINE, settle=SETTLE))


def sync_client(url: str, profile: Profile, messages: list[str]) -> dict[str, Verdict]:
    session = SyncSession(Target(url=url, profile=profile, name="raw"), "u", "sync", Sink(), connect_timeout=3)
    try:
        return {vendor.tag(m): rules(session.chat(m, exp_of(profile), ChatOptions(settle=SETTLE))) for m in messages}
    finally:
        session.close()


def pytest_plugin(url: str, profile: Profile, messages: list[str]) -> dict[str, Verdict]:
    probe = ChatProbe(Target(url=url, profile=profile, name="raw"), "u")
    try:
        return {vendor.tag(m): rules(probe.chat(m, deadline=DEADLINE, options=ChatOptions(settle=SETTLE)))
                for m in messages}
    finally:
        probe.close()


class Verdicts(MetricsSink):
    def __init__(self) -> None:
        super().__init__(ChatMetrics(CollectorRegistry()), "raw", "live")
        self.results: list[ChatResult] = []
        self.all_in = asyncio.Event()
        self.expected = 0

    def chat_finished(self, result: ChatResult) -> None:
        super().chat_finished(result)
        self.results.append(result)
        if len(self.results) >= self.expected:
            self.all_in.set()


def through_proxy(url: str, profile: Profile, messages: list[str]) -> tuple[dict[str, Verdict], list[Verdict]]:
    """A user's client through `chatprobe proxy` to the server: the client's verdicts by tag, the proxy's in order."""
    async def play() -> tuple[dict[str, Verdict], list[Verdict]]:
        sink = Verdicts()
        sink.expected = len(messages)
        server = await start_proxy(Proxy(url.rsplit("/", 1)[0], LiveChats(profile, sink, exp_of(profile), "live",
                                                                          SETTLE)), "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            session = Session(Target(url=f"ws://127.0.0.1:{port}/ws", profile=profile, name="p"), "u", "x", Sink(),
                              connect_timeout=3)
            client = {vendor.tag(m): rules(await session.chat(m, exp_of(profile), ChatOptions(settle=SETTLE)))
                      for m in messages}
            await session.close()
            async with asyncio.timeout(10):
                await sink.all_in.wait()
            return client, [rules(r) for r in sink.results]
        finally:
            server.close()

    return asyncio.run(asyncio.wait_for(play(), 60))


@pytest.mark.parametrize("case", ["ai-sdk", "chat-completions"])
def test_every_websocket_driver_judges_a_vendors_stream_alike(tmp_path, case):
    profile_path = profile_file(tmp_path, case, "websocket")
    profile = load_profile(str(profile_path))
    messages = CASES[case][1]
    want = expected(case, "websocket")
    want_sets = {t: {v} for t, v in want.items()}
    with InThread(ws_server(case)) as server:
        picows, picows_checked, _ = run_and_check(tmp_path, server.url, profile_path, messages)
        websockets, websockets_checked, _ = run_and_check(tmp_path, server.url, profile_path, messages,
                                                          extra="compression: deflate\n")  # the websockets client
        sync = sync_client(server.url, profile, messages)
        plugin = pytest_plugin(server.url, profile, messages)
        client, proxy = through_proxy(server.url, profile, messages)
    assert picows == picows_checked == websockets == websockets_checked == want_sets, (picows, websockets)
    assert sync == plugin == client == want, (sync, plugin, client)
    assert proxy == [want[vendor.tag(m)] for m in messages], proxy


@pytest.mark.parametrize("case", ["ai-sdk", "chat-completions", "anthropic"])
def test_the_sse_drivers_judge_a_vendors_stream_alike_with_twenty_users(tmp_path, case):
    profile_path = profile_file(tmp_path, case, "sse")
    messages = CASES[case][1]
    want = {t: {v} for t, v in expected(case, "sse").items()}
    with InThread(RawSseServer(CASES[case][4])) as server:
        plugin = pytest_plugin(server.url, load_profile(str(profile_path)), messages)
        sync = sync_client(server.url, load_profile(str(profile_path)), messages)  # the Locust user's, over SSE
        live, offline, n = run_and_check(tmp_path, server.url, profile_path, messages, users=20)
    assert {t: {v} for t, v in plugin.items()} == want and sync == plugin, (plugin, sync)
    assert live == offline == want, (live, offline)
    assert n == 20 * len(messages)


def test_websocket_drivers_judge_a_vendors_stream_alike_with_twenty_users(tmp_path):
    profile_path = profile_file(tmp_path, "chat-completions", "websocket")
    messages = CASES["chat-completions"][1]
    want = {t: {v} for t, v in expected("chat-completions", "websocket").items()}
    with InThread(ws_server("chat-completions")) as server:
        picows = run_and_check(tmp_path, server.url, profile_path, messages, users=20)
        websockets = run_and_check(tmp_path, server.url, profile_path, messages, users=20,
                                   extra="compression: deflate\n")
    assert picows[0] == picows[1] == websockets[0] == websockets[1] == want, (picows, websockets)
