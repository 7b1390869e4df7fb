"""`chatprobe proxy` and a user whose own client leaves a chat mid-run and resumes it on a new connection (a page
reload, a browser that saw its network change first: it closes its socket, with a closing handshake or without, then
sends netra's `resume` with `run_id` and `last_seq` on the next one). The chat was judged as the client left it
(abandoned, on the events it had); the run's replay and the rest of it on the new connection are that chat's, not
another user's events. Real agentsim, real sockets on 127.0.0.1, every wait bounded.

FAILED on the code before the LeftRuns patch:
- test_a_user_who_reloads_mid_chat_and_resumes_is_no_isolation_breach[*]: every event the server replayed or sent
  on after the resume was an R8 of the new connection (8 a reload), which pages ChatEventIsolationBreach (critical);
- test_the_resumed_runs_events_are_that_users_only: the same R8s;
- test_a_user_resuming_a_run_whose_end_it_missed_is_no_isolation_breach[*]: 7 R8s each.
FAILED on the code before LiveChats.inherited:
- test_a_resume_of_a_run_the_proxy_never_saw_is_inherited_only_just_after_its_start[just now]: 8 R8s (a deploy of
  the proxy paged ChatEventIsolationBreach); [a deadline ago] checks the window ends (R8 again).
"""
from __future__ import annotations

import asyncio
import json

import pytest

from harness.events import Outcome, Rule
from harness.flow import LeftRuns

from .test_proxy_parked_resume import Proxied, read_until_completed


async def start_and_leave(p: Proxied, user: str, how: str, think: float = 0.2, n: int = 0) -> tuple[str, int]:
    """`user` sends a chat (its `n`th: its message id), reads its first events, and leaves (`how`: a closing
    handshake, or the socket dropped): (its run id, the last seq it had)."""
    ws = await p.connect(user)
    await ws.send(json.dumps({"type": "user_message", "payload": {
        "content": f"Explain tides #think={think} #tools=2", "thread_id": f"t-{user}",
        "message_id": f"m-{user}" + (f"-{n}" if n else "")}}))
    while True:
        frame = json.loads(await ws.recv())
        if "seq" in frame and frame["seq"] >= 2:
            break
    closed = p.live.closed_count
    if how == "close":
        await ws.close(1001)
    else:
        ws.transport.abort()
    while p.live.closed_count == closed:  # the proxy is done with the connection the client left
        p.live.closed.clear()
        await p.live.closed.wait()
    return frame["run_id"], frame["seq"]


@pytest.mark.parametrize("how", ["close", "abort"], ids=["closing-handshake", "dropped"])
async def test_a_user_who_reloads_mid_chat_and_resumes_is_no_isolation_breach(how):
    async with Proxied([], deadline=10.0) as p:
        async with asyncio.timeout(20):
            run_id, last_seq = await start_and_leave(p, "alice", how)
            assert p.outcomes() == {"passed": 1} and p.sink.abandoned == 1  # judged as the client left it
            ws = await p.connect("alice")
            await ws.send(json.dumps({"type": "resume", "payload": {"run_id": run_id, "last_seq": last_seq}}))
            got = await read_until_completed(ws)
            assert got and all(f.get("run_id") == run_id for f in got if "seq" in f)  # the client got its run back
            closed = p.live.closed_count
            await ws.close()
            while p.live.closed_count == closed:
                p.live.closed.clear()
                await p.live.closed.wait()
    # Counted once, as the client left it; the resumed run is no one else's: no R8, no new chat, no second verdict.
    assert p.sample("chatprobe_rule_violations_total", rule="R8") == 0
    assert sum(p.sample("chatprobe_rule_violations_total", rule=r.value) for r in Rule) == 0
    assert p.outcomes() == {"passed": 1} and p.sink.started == 1 and p.sink.abandoned == 1
    assert p.sample("chatprobe_chats_in_flight") == 0


async def test_the_resumed_runs_events_are_that_users_only():
    """Only the user who left the run adopts it: mallory's resume of alice's left run id gets the server's
    RESUME_UNKNOWN_RUN and nothing is skipped for her, and alice's own resume after it still is no breach."""
    async with Proxied([], deadline=10.0) as p:
        async with asyncio.timeout(20):
            run_id, last_seq = await start_and_leave(p, "alice", "close")
            mallory = await p.connect("mallory")
            await mallory.send(json.dumps({"type": "resume", "payload": {"run_id": run_id, "last_seq": 0}}))
            assert json.loads(await mallory.recv()).get("error_code") == "RESUME_UNKNOWN_RUN"
            await mallory.close()
            alice = await p.connect("alice")
            await alice.send(json.dumps({"type": "resume", "payload": {"run_id": run_id, "last_seq": last_seq}}))
            await read_until_completed(alice)
            await alice.close()
            await p.sink.judged.wait()
    assert p.sample("chatprobe_rule_violations_total", rule="R8") == 0
    assert p.outcomes() == {"passed": 1} and p.sink.started == 1 and p.sink.abandoned == 1
    # held to the chat's deadline, alice's resume taken: another resume of hers (the server cut the first's connection)
    # is that judged chat's too
    assert p.live.left.holds(run_id) and len(p.live.left) == 1


def test_left_runs_are_bounded_per_user_and_in_all_and_expire():
    left = LeftRuns(max_all=10, max_each=3)
    for n in range(5):
        left.add("hostile", f"r-{n}", until=100.0, now=0.0)
    assert len(left) == 3 and not left.take("hostile", "r-0", 1.0) and left.take("hostile", "r-4", 1.0)
    for n in range(12):
        left.add(f"user-{n}", "r", until=100.0, now=0.0)
    assert len(left) == 10 and not left.take("hostile", "r-3", 1.0)  # the longest idle forgotten first
    assert left.take("user-11", "r", 1.0) and left.take("user-11", "r", 2.0)  # each resume until its deadline
    assert not left.take("user-11", "r", 101.0) and len(left) == 9  # past it: forgotten
    left.add("late", "r", until=5.0, now=0.0)
    assert not left.take("late", "r", 6.0)  # past its chat's deadline: the resume is read as before
    left.add("late", "r", until=5.0, now=0.0)
    assert left.take("late", "r", 5.0)  # at its deadline itself: still taken
    left.add("edge", "r", until=5.0, now=5.0)  # left at its chat's deadline itself: still kept for a resume
    assert left.take("edge", "r", 5.0)
    alone = LeftRuns(max_all=2, max_each=64)  # one user reaching the bound in all: its own oldest goes
    for n in range(3):
        alone.add("alice", f"r-{n}", until=100.0, now=0.0)
    assert len(alone) == 2 and not alone.holds("r-0") and alone.holds("r-2")
    assert not left.take("mallory", "r", 1.0) and not left.take("user-10", None, 1.0)


def test_a_left_run_past_its_deadline_takes_no_room_from_another_users():
    """A tab open for hours closes: the runs of its finished chats, long past their deadline, are remembered for no
    resume (take refuses them) and take no room: FAILED on the code before, each one counted toward max_all and
    pushed out another user's left run still within its deadline (whose reload then read as R8)."""
    left = LeftRuns(max_all=2, max_each=64)
    left.add("alice", "r-a", until=100.0, now=50.0)
    for n in range(3):
        left.add("old-tab", f"r-{n}", until=10.0, now=50.0)
    assert len(left) == 1 and left.take("alice", "r-a", 51.0)


async def test_check_of_the_recording_judges_the_reload_alike(tmp_path):
    """`chatprobe check` of the proxy's --record-all recording: the same one chat, no R8."""
    from harness.offline import check_files
    from harness.profiles import load_profile

    async with Proxied([], deadline=10.0, record=tmp_path / "rec", record_all=True) as p:
        async with asyncio.timeout(20):
            run_id, last_seq = await start_and_leave(p, "alice", "close")
            ws = await p.connect("alice")
            await ws.send(json.dumps({"type": "resume", "payload": {"run_id": run_id, "last_seq": last_seq}}))
            await read_until_completed(ws)
            await ws.close()
    assert p.sample("chatprobe_rule_violations_total", rule="R8") == 0
    (run,) = check_files([tmp_path / "rec"], load_profile("netra"))
    assert [r.outcome for r in run.results] == [Outcome.PASSED], [(r.outcome, r.note, r.violations) for r in run.results]
    assert not run.connection_violations and not any(r.violations for r in run.results)


@pytest.mark.parametrize("tab", ["reloaded", "second-tab"])
async def test_a_user_resuming_a_run_whose_end_it_missed_is_no_isolation_breach(tmp_path, tab):
    """The run's terminal event was forwarded as the page unloaded (the chat judged passed at the proxy, the page
    never showed it), and the reloaded page resumes the run from the last seq it showed; or a second tab of the same
    user resumes a run that ended in the first, still open: the replay is that judged chat's, no R8, no second chat;
    `chatprobe check` of the recording judges it alike."""
    from harness.offline import check_files
    from harness.profiles import load_profile

    async with Proxied([], deadline=10.0, record=tmp_path / "rec", record_all=True) as p:
        async with asyncio.timeout(20):
            first = await p.connect("alice")
            await first.send(json.dumps({"type": "user_message", "payload": {
                "content": "What is 3 * 4? #tools=1", "thread_id": "t-a", "message_id": "m-a"}}))
            run_id = next(f for f in await read_until_completed(first) if "seq" in f)["run_id"]
            await p.sink.judged.wait()
            if tab == "reloaded":
                closed = p.live.closed_count
                await first.close(1001)
                while p.live.closed_count == closed:
                    p.live.closed.clear()
                    await p.live.closed.wait()
            again = await p.connect("alice")
            await again.send(json.dumps({"type": "resume", "payload": {"run_id": run_id, "last_seq": 1}}))
            await read_until_completed(again)
            await again.close()
            if tab == "second-tab":
                await first.close()
    assert p.sample("chatprobe_rule_violations_total", rule="R8") == 0
    assert p.outcomes() == {"passed": 1} and p.sink.started == 1
    if tab == "reloaded":  # (check tells a second tab's resume of an ended run apart by no open chat: not followed)
        (run,) = check_files([tmp_path / "rec"], load_profile("netra"))
        assert [r.outcome for r in run.results] == [Outcome.PASSED], [
            (r.outcome, r.note, r.violations) for r in run.results]
        assert not run.connection_violations


@pytest.mark.parametrize("started", ["just now", "a deadline ago"])
async def test_a_resume_of_a_run_the_proxy_never_saw_is_inherited_only_just_after_its_start(started):
    """alice's run began on a connection the proxy never carried (the process before it, after a deploy: here one
    straight to the server) and her browser resumes it through the proxy. A proxy started less than a chat's
    deadline ago takes it as a chat of the process before it: not judged, no R8. Past that window every such chat is
    past its deadline, and the run is read as before: a run this client did not start (R8), so a server replaying
    another user's run to a resume is still caught."""
    import websockets.asyncio.client

    async with Proxied([], deadline=10.0) as p:
        if started == "a deadline ago":
            p.live.started_at -= p.exp.deadline
        async with asyncio.timeout(20):
            direct = await websockets.asyncio.client.connect(
                p.sim.url, additional_headers={"Authorization": f"Bearer {p.token['alice']}"}, open_timeout=5)
            await direct.recv()
            await direct.send(json.dumps({"type": "user_message", "payload": {
                "content": "Explain tides #think=0.2 #tools=2", "thread_id": "t-a", "message_id": "m-a"}}))
            while "seq" not in (frame := json.loads(await direct.recv())) or frame["seq"] < 2:
                pass
            await direct.close()
            ws = await p.connect("alice")
            await ws.send(json.dumps({"type": "resume", "payload": {"run_id": frame["run_id"],
                                                                     "last_seq": frame["seq"]}}))
            await read_until_completed(ws)
            closed = p.live.closed_count
            await ws.close()
            while p.live.closed_count == closed:
                p.live.closed.clear()
                await p.live.closed.wait()
    r8 = p.sample("chatprobe_rule_violations_total", rule="R8")
    assert (r8 == 0) if started == "just now" else (r8 > 0), r8
    assert p.outcomes() == {} and p.sink.started == 0


async def test_another_users_resume_in_the_window_hides_no_cross_talk_of_a_run_the_proxy_saw():
    """The window after the proxy's start is for runs it never saw. mallory, just after the start, resumes alice's
    run, which the proxy carries (it saw it start): a server that then sends her alice's events (cross-talk) is R8,
    as past the window. FAILED before LiveChats.saw_run: the resume made alice's run mallory's own moved run, and the
    cross-talk went unseen (R8 0)."""
    async with Proxied(["crosstalk:agent_completed=1.0"], deadline=10.0) as p:
        async with asyncio.timeout(20):
            mallory = await p.connect("mallory")
            alice = await p.connect("alice")
            await alice.send(json.dumps({"type": "user_message", "payload": {
                "content": "Explain tides #think=0.3 #tools=2", "thread_id": "t-a", "message_id": "m-a"}}))
            while "run_id" not in (frame := json.loads(await alice.recv())):
                pass
            await mallory.send(json.dumps({"type": "resume", "payload": {"run_id": frame["run_id"], "last_seq": 0}}))
            assert json.loads(await mallory.recv()).get("error_code") == "RESUME_UNKNOWN_RUN"
            await read_until_completed(alice)
            leak = json.loads(await mallory.recv())  # alice's terminal event, sent to mallory too
            assert leak.get("run_id") == frame["run_id"], leak
            for ws in (mallory, alice):
                closed = p.live.closed_count
                await ws.close()
                while p.live.closed_count == closed:
                    p.live.closed.clear()
                    await p.live.closed.wait()
    assert p.sample("chatprobe_rule_violations_total", rule="R8") > 0


async def test_a_user_who_closes_the_tab_after_the_run_ended_has_the_finished_run_judged_not_abandoned():
    """A client that closes its connection mid-run abandons the chat (nothing owed); one that closes it once the run
    ended, while the proxy still listens out the settle window, left a finished run, judged as one: here agentsim
    dropped its tool_completed, an R2 (and R5) that the tab closed a moment later must not hide as an abandonment."""
    async with Proxied(["drop:tool_completed=1.0"], deadline=10.0) as p:
        async with asyncio.timeout(20):
            ws = await p.connect("alice")
            await ws.send(json.dumps({"type": "user_message", "payload": {
                "content": "Compute 2 + 2 #tools=1", "thread_id": "t-alice", "message_id": "m-alice"}}))
            await read_until_completed(ws)
            closed = p.live.closed_count
            await ws.close(1001)  # at once: within the proxy's 0.1 s settle window
            while p.live.closed_count == closed:
                p.live.closed.clear()
                await p.live.closed.wait()
    assert p.outcomes() == {"failed": 1} and p.sink.abandoned == 0, (p.outcomes(), p.sink.abandoned)
    assert p.sample("chatprobe_rule_violations_total", rule="R2") == 1


async def test_a_users_left_runs_are_held_up_to_the_bound_exactly_over_the_proxy():
    """README: the proxy keeps a user's left runs "64 an identity". A user who leaves one more chat mid-run than that
    (65 reloads) has its oldest left run forgotten and the 64 latest held: a resume of the second oldest is still that
    judged chat's (no R8), while the oldest's is read as any resume of a run the proxy does not hold (the server's
    replay is cross-talk, R8): the bound, not the user, decides, and it is 64."""
    from monitors.proxy import MAX_LEFT_EACH

    async with Proxied([], deadline=30.0) as p:
        async with asyncio.timeout(60):
            left = [await start_and_leave(p, "alice", "close", think=0.01, n=n) for n in range(1, MAX_LEFT_EACH + 2)]
            assert len(p.live.left) == MAX_LEFT_EACH
            assert not p.live.left.holds(left[0][0]) and all(p.live.left.holds(run) for run, _ in left[1:])
            run_id, last_seq = left[1]  # the oldest still held
            ws = await p.connect("alice")
            await ws.send(json.dumps({"type": "resume", "payload": {"run_id": run_id, "last_seq": last_seq}}))
            await read_until_completed(ws)
            closed = p.live.closed_count
            await ws.close()
            while p.live.closed_count == closed:
                p.live.closed.clear()
                await p.live.closed.wait()
    assert p.sample("chatprobe_rule_violations_total", rule="R8") == 0
    assert p.live.left.holds(run_id) and len(p.live.left) == MAX_LEFT_EACH  # held to its deadline, resumed or not


@pytest.mark.parametrize("chats", [64, 65], ids=["at-the-bound", "one-past-it"])
async def test_chats_open_on_one_connection_are_followed_up_to_the_bound_exactly(chats):
    """docs/architecture.md: the proxy follows at most 64 chats open at once on one connection; past it the oldest is
    judged as it stands, as the client's doing (chatprobe_client_rejections_total). Exactly 64 open: none is."""
    from harness.flow import MAX_OPEN_WATCHED

    assert MAX_OPEN_WATCHED == 64
    async with Proxied([], deadline=30.0) as p:
        async with asyncio.timeout(30):
            ws = await p.connect("alice")
            for n in range(chats):  # every run thinks for a second: all open at once
                await ws.send(json.dumps({"type": "user_message", "payload": {
                    "content": "Explain tides #think=1 #tools=1", "thread_id": f"t-{n}", "message_id": f"m-{n}"}}))
            started = 0
            while started < chats:  # the server started every run: each chat is open at the proxy
                started += json.loads(await ws.recv()).get("type") == "agent_started"
            rejected = p.sample("chatprobe_client_rejections_total")
            closed = p.live.closed_count
            ws.transport.abort()
            while p.live.closed_count == closed:
                p.live.closed.clear()
                await p.live.closed.wait()
    assert rejected == chats - MAX_OPEN_WATCHED, rejected
