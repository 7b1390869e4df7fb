"""`LiveChats.saw_run`, which the proxy asks in its first deadline for each resume of a run its user's own runs do not
explain (after a deploy of the proxy, every user resuming a chat the process before it followed): the same answers as
the scan of every open connection, parked chat and left run it was, at a cost that does not grow with them.

The proxy's own bookkeeping, driven by the netra frames a client and a server send (LiveConnection.client_frame and
server_frame, the same calls the relay makes for each frame), its connections ended as the relay ends them."""
from __future__ import annotations

import json
import random
import sys

from prometheus_client import CollectorRegistry

from harness.checker import Expectations
from harness.events import DEFAULT_REQUIRED
from harness.profiles import load_profile
from monitors.metrics import ChatMetrics, MetricsSink
from monitors.proxy import LiveChats, LiveConnection


def live_chats() -> LiveChats:
    exp = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=60.0)
    return LiveChats(load_profile("netra"), MetricsSink(ChatMetrics(CollectorRegistry()), "up", "live"), exp, "live",
                     0.1)


def scanned(live: LiveChats, run_id: str) -> bool:
    """saw_run as it was: a scan of every open connection's chats, every parked chat and every user's left runs."""
    return (any(run_id in conn.checker.by_run for conns in live.open.values() for conn in conns)
            or any(key[1] == run_id for key in live.parked.chats)
            or any(run_id in runs for runs in live.left._by.values()))


def start_chat(conn: LiveConnection, n: int, now: float, events: int) -> None:
    """The user sends a message; the server answers with `events` events of run r-n (0: none yet)."""
    conn.client_frame(json.dumps({"type": "user_message", "payload": {
        "content": "hi", "thread_id": f"t-{n}", "message_id": f"m-{n}"}}), now)
    roles = [("agent_started", {"message_id": f"m-{n}"}), ("agent_thinking", {"thought": "t"}),
             ("agent_completed", {"result": "ok"})]
    for seq, (kind, payload) in enumerate(roles[:events]):
        conn.server_frame(json.dumps({"type": kind, "run_id": f"r-{n}", "thread_id": f"t-{n}", "seq": seq + 1,
                                      "payload": payload}), now)


def test_saw_run_answers_as_the_scan_did_through_chats_resumes_parking_leaving_and_closing():
    """Seeded random users open connections, start chats (some answered, some finished, some not), resume runs (their
    own, another's, unknown ones), leave mid-run, have the server cut them (parked), and close: after every step,
    saw_run gives the scan's answer for every run id so far and some never seen."""
    rng = random.Random(23)
    live = live_chats()
    conns: list[LiveConnection] = []
    now, n = 1000.0, 0
    for step in range(1500):
        now += 0.01
        action = rng.random()
        if action < 0.25 or not conns:
            conns.append(live.connection(f"user-{rng.randrange(12)}"))
        elif action < 0.6:
            n += 1
            start_chat(rng.choice(conns), n, now, rng.choice([0, 1, 2, 3]))
        elif action < 0.75 and n:
            conn = rng.choice(conns)
            conn.client_frame(json.dumps({"type": "resume", "payload": {"run_id": f"r-{rng.randint(1, n + 3)}",
                                                                       "last_seq": 0}}), now)
        else:
            conn = conns.pop(rng.randrange(len(conns)))
            if rng.random() < 0.5:
                conn.closed(now, by_client=True)
            else:
                conn.closed(now, by_client=False, code=1006)
        for r in range(1, n + 4):
            assert live.saw_run(f"r-{r}") == scanned(live, f"r-{r}"), (step, r)
    # The walk went through every state it was to check: open, parked and left runs, and closed connections.
    assert any(conn.checker.by_run for conns in live.open.values() for conn in conns)
    assert live.parked and len(live.left) and n > 300


class Calls:
    """A profile hook counting the Python calls made while it is set: work measured without a clock."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, frame, event, arg) -> None:
        if event == "call":
            self.n += 1


def test_saw_run_costs_the_same_few_calls_however_many_connections_chats_and_left_runs_there_are():
    """FAILED on the code before: saw_run scanned every open connection's index (a Python call each), every parked chat
    and every left run, at each resume of a run the process never saw within its first deadline: thousands of users
    resuming after a deploy made it quadratic. Now three lookups."""
    counts = []
    for users in (10, 2000):
        live = live_chats()
        for n in range(users):
            conn = live.connection(f"user-{n}")
            start_chat(conn, n, 1000.0, 2)
            if n % 2:
                conn.closed(1000.0, by_client=n % 4 == 1, code=1006)  # left (by the client) or parked (the server)
        assert len(live.parked) >= users // 8 and len(live.left) >= users // 8
        calls = Calls()
        sys.setprofile(calls)
        try:
            seen = live.saw_run("r-unknown")
        finally:
            sys.setprofile(None)
        assert not seen
        counts.append(calls.n)
    assert counts[1] == counts[0] and counts[1] <= 6, counts
