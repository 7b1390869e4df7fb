"""The netra dialect served by third-party WebSocket stacks (tests/integration/ws_stacks.py): FastAPI on uvicorn with
its websockets and wsproto backends (deflate on and off, uvicorn's own pings), the websockets library's asyncio
server (deflate with a 9-bit window and no context takeover, a 600-byte max_size, a ping every 10 ms), wsproto on raw
asyncio (every message in fragments with pings between them, deflate) and trio-websocket. Each is judged by every
road (`chatprobe run` with picows, recorded, and `chatprobe check` of it; `chatprobe run` with the websockets client;
`chatprobe proxy` in front of the server), and every road must give each chat the verdict docs/protocol.md gives it.

FAILED on the code before this file, each with what was wrong:
- test_a_server_that_closes_for_its_own_reasons_is_no_r12_of_its_frames[*]: a close the server started with 1009
  (its `max_size` refusing the client's message, as websockets, uvicorn and Node's ws do), 1007 or 1002 was echoed by
  the client and then read as the client's own failure: an R12 "frame larger than the 4194304 byte limit" (or "text
  frame that is not valid UTF-8") on its chats, though the server sent no such frame, live and in `check`, while the
  proxy, which passes a close the upstream starts on as it came, gave none.
"""
from __future__ import annotations

from typing import Any

import pytest
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

from .ws_stacks import Action, Close, NetraApp, judge, run_events, serve_trio, serve_websockets

pytestmark = pytest.mark.timeout(60)

PASS = ("passed", ())
ROADS = ("run", "check", "websockets", "proxy")


def odd_websockets(app: NetraApp) -> Any:
    """Deflate with a 9-bit window both ways and no context takeover, a 600-byte max_size, a ping every 10 ms."""
    deflate = ServerPerMessageDeflateFactory(server_max_window_bits=9, client_max_window_bits=9,
                                             server_no_context_takeover=True, client_no_context_takeover=True)
    return serve_websockets(app, compression=None, extensions=[deflate], max_size=600, ping_interval=0.01,
                            ping_timeout=5)


def closes_mid_run(code: int) -> Any:
    def answer(p: dict[str, Any], n: int) -> list[Action]:
        events: list[Action] = list(run_events(p))
        return [*events[:3], Close(code), *events[3:]] if n == 1 else events  # the rest kept for a resume
    return answer


@pytest.mark.parametrize("server, verdict", [
    # websockets' max_size refuses the client's message: close 1009 ("message too big") before any event, a close
    # code that sends no message again: the chat is lost as it stands, incomplete, and no rule of the server's frames
    pytest.param(lambda: serve_websockets(NetraApp(), max_size=64), ("incomplete", ()), id="max-size-1009"),
    # a server that says the client's text was not UTF-8 (1007) or broke the protocol (1002) mid-run: the client
    # resumes the run on a new connection, as after any lost connection, and the chat passes
    pytest.param(lambda: serve_websockets(NetraApp(closes_mid_run(1007))), PASS, id="mid-run-1007"),
    pytest.param(lambda: serve_trio(NetraApp(closes_mid_run(1002))), PASS, id="mid-run-1002"),
])
def test_a_server_that_closes_for_its_own_reasons_is_no_r12_of_its_frames(tmp_path, server, verdict):
    got = judge(tmp_path, server, {"chats_per_user": 1})
    assert got == {road: [verdict] for road in ROADS}, got
