"""A Locust master with a worker judging a vendor's stream (the Vercel AI SDK UI message stream of the example profile
docs/profiles/ai-sdk-ui-stream.yaml, carried over a WebSocket by a raw server written here) as `chatprobe check` judges
the worker's recording of it: the same chats, the same verdicts, with `--stop-timeout` letting the chats in flight at
the run's end (its run time, or a SIGTERM to the master) finish (as README.md says to give for equal counts).

Failing on the code before the fix (marked `# FAILED before the fix`): Locust's quit tells the workers to quit and waits
half a second for their final reports; a worker whose users were still in a chat (a chat lasting its deadline, which
`--stop-timeout` lets end) sent its report later, unread, and every chat since its last stats report (up to 3 s of
them) was in neither Locust's stats nor the verdict, though in the recording (30 chats judged of the 65 played).
"""
from __future__ import annotations

import csv
import json
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from tests.integration.outside_servers import InThread, RawWsServer, WsConn
from tests.integration.test_vendor_streams import AI_SDK, ai_sdk_chunks

from .conftest import ROOT, start_on_free_port
from .test_locust import SUMMARY, finish, locust_bin

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

LOCUSTFILE = str(ROOT / "scenarios" / "locustfile.py")
# A good stream, a tool input the SDK could not parse, an error part followed by the SDK's own close (after_error), an
# error part alone, a stream that says [DONE] before its finish, a tool call left open, one that never ends (its
# deadline), parts out of order; `data-*` parts in each.
MESSAGES = ["weather? #good", "weather? #badinput", "weather? #error", "weather? #thrown", "weather? #truncated",
            "weather? #unfinished", "weather? #hang", "weather? #swapped"]
SCENARIO = f"""\
name: sdk
users: 4
chats_per_user: 8
messages: {json.dumps(MESSAGES)}
think_time: 0
expect:
  deadline: 1.5s
  settle: 0.1s
"""


def websocket_variant(tmp_path: Path) -> Path:
    """The shipped SSE profile over a WebSocket (the same frames, one a message; `[DONE]` a text message)."""
    text = Path(AI_SDK).read_text(encoding="utf-8")
    assert text.count("transport: sse\n") == 1
    path = tmp_path / "ai-sdk-ws.yaml"
    path.write_text(text.replace("transport: sse\n", "transport: websocket\nwelcome: false\n"), encoding="utf-8")
    return path


def serve() -> Any:
    """Each message answered with the stream its tag asks for, its message id unique to the chat (a run id the
    connection saw before would be a late event of that run)."""
    count = [0]

    async def handle(conn: WsConn) -> None:
        while (text := await conn.recv()) is not None:
            count[0] += 1
            for ev in ai_sdk_chunks(json.loads(text)["messages"][-1]["parts"][0]["text"]):
                if ev is None:
                    break  # the stream never ends: the next message is the next chat's
                if isinstance(ev, dict) and "messageId" in ev:
                    ev = {**ev, "messageId": f"{ev['messageId']}-{count[0]}"}
                await conn.send(ev)

    return RawWsServer(handle)


def verdict(chat: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    return chat["outcome"], tuple(sorted({v["rule"] for v in chat["violations"]}))


# FAILED before the fix (both): the master judged 48 chats of the 60 the recording held at the run time's end, 20 of 35
# at a SIGTERM to the master (which Locust's shutdown judged before it even told the workers to quit).
@pytest.mark.parametrize("end", ["run_time", "sigterm"])
def test_a_master_and_a_worker_judge_every_chat_of_a_vendors_stream_as_check_judges_its_recording(procs,
                                                                                                     tmp_path: Path,
                                                                                                     end: str):
    profile = websocket_variant(tmp_path)
    scenario = tmp_path / "sdk.yaml"
    scenario.write_text(SCENARIO)
    rec, prefix = tmp_path / "rec", tmp_path / "lc"
    common = ["-f", LOCUSTFILE, "--chatprobe-scenario", str(scenario), "--chatprobe-profile", str(profile),
              "--chatprobe-auth", "none"]
    with InThread(serve()) as server:
        master, port = start_on_free_port(procs, "master", lambda port: [
            locust_bin(), *common, "--master", "--headless", "--expect-workers", "1", "--expect-workers-max-wait", "30",
            "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port), "-u", "4", "-r", "4",
            "--run-time", "5s" if end == "run_time" else "60s", "--stop-timeout", "5", "--host", server.url, "--csv", str(prefix),
            "--exit-code-on-error", "0", "--chatprobe-record", str(rec)])
        worker = procs.start("worker", [locust_bin(), *common, "--worker", "--master-host", "127.0.0.1",
                                        "--master-port", str(port)])
        if end == "sigterm":
            master.wait_for_line(r"chat\s+sdk\s+[1-9]", 30, stderr=True)  # the worker's chats are being judged
            master.popen.send_signal(signal.SIGTERM)
        code = finish(master, 60)
        finish(worker, 30)
    assert code == 1, master.tail(60)
    summary = SUMMARY.search(master.out())
    assert summary is not None, master.tail(60)

    out = tmp_path / "check.json"
    assert main(["check", str(rec), "--profile", str(profile), "--scenario", str(scenario), "--json", str(out),
                 "-q"]) == code
    (checked,) = json.loads(out.read_text())["scenarios"]
    offline: dict[str, set[tuple[str, tuple[str, ...]]]] = {}
    for chat in checked["chats"]:
        found = re.search(r"msg-([a-z]+)-", chat["run_id"] or "")
        offline.setdefault(found.group(1) if found else "?", set()).add(verdict(chat))
    # Each stream judged one way, as `chatprobe run` judges it (tests/integration/test_vendor_streams.py; over a
    # WebSocket, a stream cut short by [DONE] waits out its deadline: the connection stays open).
    want = {"good": {("passed", ())}, "badinput": {("passed", ())}, "error": {("failed", ("R13",))},
            "thrown": {("failed", ("R13",))}, "truncated": {("incomplete", ("R10",))},
            "unfinished": {("failed", ("R5",))}, "hang": {("incomplete", ("R10",))}, "swapped": {("failed", ("R5",))}}
    # (A SIGTERM may come before each user reached every stream.)
    assert (offline == want) if end == "run_time" else ({t: want.get(t) for t in offline} == offline), offline

    # The master judged every chat the worker played, as check did: the count, the passed, the failures by reason.
    chats = len(checked["chats"])
    assert (int(summary["chats"]), int(summary["passed"])) == (chats, sum(
        verdict(c) == ("passed", ()) for c in checked["chats"])), (summary[0], chats)
    with open(f"{prefix}_stats.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["Type"] == "chat")
    assert int(row["Request Count"]) == chats, row
    with open(f"{prefix}_failures.csv", newline="") as f:
        failures = Counter({r["Error"]: int(r["Occurrences"]) for r in csv.DictReader(f) if r["Method"] == "chat"})
    by_rules = Counter(verdict(c) for c in checked["chats"] if c["outcome"] != "passed")
    assert sum(failures.values()) == sum(by_rules.values()), (failures, by_rules)
    assert sum(n for e, n in failures.items() if "R13" in e) == sum(n for (_, r), n in by_rules.items() if "R13" in r)
