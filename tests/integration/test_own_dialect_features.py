"""docs/profiles.md's session features, driven for a dialect of a user's own that is neither netra nor AG-UI: the type in
`event`, every field under `data`, the run id named `run`, a server heartbeat `hb` the client must answer with
`{event: hb.ack}`, a resume template of its own (`{last_seq}` nested under `data`) and error codes of its own
(`DENIED` refuses the credentials, `NO_SUCH_RUN` a resume). A real WebSocket server on loopback speaks it."""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from harness.cli import main
from tests.profiles.servers import InThread, Served

ZETA = """\
name: zeta
transport: websocket
path: /rt
request: {event: chat.send, data: {text: "{content}", session: "{thread_id}", msg: "{message_id}"}}
resume: {event: chat.resume, data: {run: "{run_id}", after: "{last_seq}"}}
lookup: ["", data]
fields:
  type: [event]
  run_id: [run]
  thread_id: [session]
  message_id: [msg]
  seq: [n]
  tool_call_id: [data.call.id]
  tool_name: [data.call.name]
  error_code: [code]
  error_message: [text]
roles:
  agent_started: [run.begin]
  agent_thinking: [run.think]
  tool_executing: [tool.start]
  tool_completed: [tool.end]
  partial_result: [run.delta]
  agent_completed: [run.end]
  error_event: [run.fail]
control: [ready]
ping: {types: [hb], reply: {event: hb.ack}}
connection_error: [fault]
connection_error_codes: [BAD_INPUT, DENIED, NO_SUCH_RUN]
session_errors: {auth_failed: [DENIED], resume_unknown: [NO_SUCH_RUN]}
spans:
  - {name: tool call, open: [tool.start], close: [tool.end], key: tool_call_id}
"""

# The first chat's connection is dropped by the client after its 3rd event (the server holds the rest until then),
# then resumed on a new connection; the second chat runs on that one.
SCENARIO = """\
name: zeta-resume
expect: {streaming: true, deadline: 5s, settle: 0.05s}
connect_timeout: 5s
steps:
  - chat: {message: "Compute 3 * 5 #hold", disconnect_after: 3}
  - chat: {message: "again"}
"""


class ZetaServer(Served):
    """The zeta dialect over WebSocket: every connection opens with `ready` and a heartbeat `hb`."""

    def __init__(self, *, deny: bool = False, forget: bool = False) -> None:
        self.deny, self.forget = deny, forget
        self.runs: dict[str, list[dict[str, Any]]] = {}
        self.received: list[list[dict[str, Any]]] = []  # per connection, in order
        self.paths: list[str] = []
        self.server: Any = None
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"ws://{host}:{port}"  # no path: the profile's `path` is appended

    def _run(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        run = f"run-{next(self._ids)}"
        call = {"id": "k1", "name": "calc"}
        kinds = [("run.begin", {"msg": data["msg"]}), ("run.think", {}), ("tool.start", {"call": call}),
                 ("tool.end", {"call": call}), ("run.delta", {"text": "15"}), ("run.end", {})]
        return [{"event": kind, "data": {"run": run, "session": data["session"], "n": n, **extra}}
                for n, (kind, extra) in enumerate(kinds, 1)]

    async def _handler(self, ws: ServerConnection) -> None:
        self.paths.append(ws.request.path if ws.request else "")
        got: list[dict[str, Any]] = []
        self.received.append(got)
        if self.deny:
            await ws.send(json.dumps({"event": "fault", "data": {"code": "DENIED", "text": "bad token"}}))
            await ws.close(4401)
            return
        await ws.send(json.dumps({"event": "ready"}))
        await ws.send(json.dumps({"event": "hb"}))
        try:
            async for message in ws:
                await self._answer(ws, json.loads(message), got)
        except ConnectionClosed:  # the client's drop (disconnect_after), no closing handshake
            pass

    async def _answer(self, ws: ServerConnection, frame: dict[str, Any], got: list[dict[str, Any]]) -> None:
        got.append(frame)
        data = frame.get("data", {})
        if frame["event"] == "chat.send":
            events = self.runs[data["session"]] = self._run(data)
            # `#hold`: the rest of the run waits for the client to drop the connection (disconnect_after: 3)
            for event in events[:3] if "#hold" in data["text"] else events:
                await ws.send(json.dumps(event))
        elif frame["event"] == "chat.resume":
            run = next((e for e in self.runs.values() if e[0]["data"]["run"] == data["run"]), None)
            if run is None or self.forget:
                await ws.send(json.dumps({"event": "fault", "data": {"code": "NO_SUCH_RUN", "run": data["run"]}}))
                return
            for event in run[int(data["after"]):]:
                await ws.send(json.dumps(event))



def run(tmp_path: Path, server: ZetaServer) -> tuple[int, list[tuple[str, str | None, list[str], list[str]]]]:
    (tmp_path / "zeta.yaml").write_text(ZETA)
    (tmp_path / "s.yaml").write_text(SCENARIO)
    out = tmp_path / "out.json"
    with InThread(server) as s:
        code = main(["run", "--target", s.url, "--profile", str(tmp_path / "zeta.yaml"), str(tmp_path / "s.yaml"),
                     "--json", str(out), "-q"])
    [sc] = json.loads(out.read_text())["scenarios"]
    return code, [(c["outcome"], c.get("error_kind"), [v["rule"] for v in c["violations"]], c["reconnects"])
                  for c in sc["chats"]]


def test_every_connection_has_its_heartbeat_answered_and_the_run_resumed_by_the_dialects_templates(tmp_path):
    # profiles.md, `ping`: the server's pings are answered with the profile's reply (protocol.md: at most twice a
    # second). The bound was the user's, not the connection's: a reconnect's first ping, within 0.5 s of the previous
    # connection's, went unanswered (a server that drops a connection whose heartbeat is not answered dropped the
    # resumed run).
    server = ZetaServer()
    code, chats = run(tmp_path, server)
    assert code == 0 and chats == [("passed", None, [], ["resumed"]), ("passed", None, [], [])], chats
    assert server.paths == ["/rt", "/rt"]
    # (the first connection's answer may still be unsent when the client drops it: the resumed one's is the case)
    assert [f["event"] for f in server.received[1]].count("hb.ack") == 1, server.received[1]
    resume = next(f for f in server.received[1] if f["event"] == "chat.resume")
    assert resume == {"event": "chat.resume", "data": {"run": "run-1", "after": 3}}


def test_the_dialects_own_codes_answer_the_session(tmp_path):
    # session_errors: `DENIED` is refused credentials (the chat an `auth_failed` error, exit 2 as for a 401) and
    # `NO_SUCH_RUN` a resume of a run the server forgot (the chat lost at once, incomplete, not held to its deadline).
    code, chats = run(tmp_path, ZetaServer(deny=True))
    assert code == 2 and chats == [("error", "auth_failed", [], [])] * 2, chats
    # said with the dialect's own code, not netra's
    errors = [c["error"] for s in json.loads((tmp_path / "out.json").read_text())["scenarios"] for c in s["chats"]]
    assert all("rejected the credentials (DENIED)" in e for e in errors), errors
    code, chats = run(tmp_path, ZetaServer(forget=True))
    assert code == 1 and chats == [("incomplete", None, [], ["lost"]), ("passed", None, [], [])], chats
