"""Attacks on `chatprobe proxy` found by an attacker pass, each over real sockets on 127.0.0.1 against the real proxy
process (or its real server objects): a hostile scraper of its /metrics, a hostile upstream that makes it keep what
it judges, and more. Every wait has a deadline; memory is measured in bytes (the child's RSS)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import socket
import sys
from pathlib import Path

import pytest
import websockets
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from agentsim.server import AgentSim, SimConfig
from harness.checker import Expectations
from harness.events import DEFAULT_REQUIRED, Outcome
from harness.profiles import load_profile
from harness.targets import TokenProvider
from monitors.metrics import ChatMetrics, MetricsSink
from monitors.proxy import LiveChats, Proxy, start_proxy

from .procs import ROOT, SLOW_CUT, SLOW_CUT_MAIN, proxy_process


def status_of(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def rss(pid: int) -> int:
    return int(status_of(pid)["VmRSS"].split()[0]) * 1024


def threads(pid: int) -> int:
    return int(status_of(pid)["Threads"])


async def until(cond, timeout=10.0):
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)  # wait-ok: poll interval of a condition wait bounded by the timeout


async def scrape(port: int, path: str = "/metrics", timeout: float = 5.0) -> tuple[int, bytes]:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
        writer.close()
    return int(data.split(b" ", 2)[1]), data


# -- 1. a hostile scraper: idle and trickling connections to the proxy's /metrics --

SLOW_SCRAPERS = 150


async def test_idle_scrapers_cannot_hold_a_thread_each_of_the_proxys_metrics_server_forever(tmp_path):
    """FAILED on the original code: the proxy served /metrics with prometheus_client's start_http_server, a thread
    per connection and no timeout. Each connection that sends half a request and waits held a thread (and its stack)
    for ever: 150 of them made 150 threads that were still there 15 s later (a few hundred left the metrics port
    accepting about one connection a second, so Prometheus' own scrape timed out). Now the same bounded HTTP server
    as the monitor's: a fixed pool of threads, and a connection silent or unfinished for 10 s (here SLOW_CUT) is
    closed."""
    upstream = await serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, ping_interval=None)
    up_port = upstream.sockets[0].getsockname()[1]
    writers = []
    try:
        async with proxy_process(f"ws://127.0.0.1:{up_port}/ws", tmp_path, metrics=True,
                                 slow_cut=True) as proxy:
            pid, err, mport = proxy.pid, proxy.err, proxy.metrics_port
            await until(lambda: _accepts(mport), 10)
            base_threads, base_rss = threads(pid), rss(pid)
            for _ in range(SLOW_SCRAPERS):
                async with asyncio.timeout(5):
                    reader, writer = await asyncio.open_connection("127.0.0.1", mport)
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never the blank line that ends the head
                await writer.drain()
                writers.append((reader, writer))
            # A scrape still gets its answer while they wait.
            status, body = await scrape(mport)
            assert status == 200 and b"chatprobe_proxy_connections" in body
            assert threads(pid) - base_threads < 32, (threads(pid), base_threads)
            # ...and the slow ones are cut within a deadline (SLOW_CUT of silence, checked every second).
            async with asyncio.timeout(SLOW_CUT + 10):
                for reader, _w in writers:
                    with contextlib.suppress(ConnectionError):
                        assert await reader.read() is not None
            assert threads(pid) - base_threads < 32
            assert rss(pid) - base_rss < 16 * 1024 * 1024
            assert (await scrape(mport))[0] == 200
        assert "Traceback" not in err.read_text()
    finally:
        for _, w in writers:
            w.transport.abort()
        upstream.close()


async def test_the_proxys_metrics_port_answers_a_burst_of_pipelined_requests_once(tmp_path):
    """FAILED on the original code: every `GET /metrics` a connection pipelined was rendered (about 230 from one
    8 KiB read): a few connections that read none of the answers kept the proxy's two metrics workers rendering
    for seconds. Now a connection gets one answer, with `Connection: close`, and is closed."""
    upstream = await serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, ping_interval=None)
    try:
        async with proxy_process(f"ws://127.0.0.1:{upstream.sockets[0].getsockname()[1]}/ws", tmp_path,
                                 metrics=True) as proxy:
            mport = proxy.metrics_port
            await until(lambda: _accepts(mport), 10)
            async with asyncio.timeout(10):
                reader, writer = await asyncio.open_connection("127.0.0.1", mport)
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
                answers = await reader.read()
                writer.close()
            assert answers.count(b"HTTP/1.1 ") == 1, answers.count(b"HTTP/1.1 ")
            assert b"HTTP/1.1 200 OK" in answers and b"Connection: close" in answers
    finally:
        upstream.close()


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- 2. a hostile upstream: events the proxy keeps for each chat it follows --

CHATS = 12  # 48 MiB kept at 4 MiB a chat, twice the bound below (24 chats ran twice as long for the same verdict)
EVENTS_PER_CHAT = 3600  # ~1.2 KB each: past the checker's 4 MiB of kept events per chat
FAT = 1000  # under the decoder's 1 KiB per id: kept whole, no R12


async def test_a_hostile_upstream_cannot_make_the_proxy_keep_megabytes_per_chat(tmp_path):
    """FAILED on the original code: the proxy's trackers kept each chat's events as `chatprobe run` does, up to 4 MiB
    a chat (10,000 events), for the 64 open chats and the 64 judged ones a connection remembers: ~512 MiB for one
    connection, whatever --max-size says (the documented budget is about 12 x max-size + 128 KiB). An upstream
    sending each of a client's 24 chats 3,600 events with a distinct 1,000-byte id grew the proxy by ~100 MB at
    --max-size 64KiB. The proxy keeps only a small number of bytes of events per chat now (the verdict, counts and
    times stay exact: events past those kept are counted, not kept). 12 chats now: with LIVE_KEPT_BYTES set back to
    4 MiB the proxy grows by ~56 MiB, and fails the bound as it did."""
    sent = {"frames": 0}

    async def upstream_handler(ws):
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in ws:
                run = json.loads(message)["payload"]["run_id"]
                await ws.send(json.dumps({"type": "agent_started", "run_id": run, "seq": 1}))
                for i in range(EVENTS_PER_CHAT):
                    await ws.send(json.dumps({"type": "agent_thinking", "run_id": run, "seq": i + 2,
                                              "message_id": f"{run}-{i:06d}-" + "m" * FAT}))
                    sent["frames"] += 1

    upstream = await serve(upstream_handler, "127.0.0.1", 0, ping_interval=None, max_size=None)
    up_port = upstream.sockets[0].getsockname()[1]
    try:
        async with proxy_process(f"ws://127.0.0.1:{up_port}", tmp_path, "--max-size", "64KiB",
                                 "--deadline", "120s", "--stall-limit", "120s") as proxy:
            port, pid, err = proxy.port, proxy.pid, proxy.err
            before = rss(pid)
            got = 0
            async with connect(f"ws://127.0.0.1:{port}/ws", ping_interval=None, open_timeout=10,
                               close_timeout=1) as client:
                for n in range(CHATS):
                    await client.send(json.dumps({"type": "user_message",
                                                  "payload": {"content": "hi", "run_id": f"run-{n}"}}))
                async with asyncio.timeout(60):
                    while got < CHATS * (EVENTS_PER_CHAT + 1):
                        await client.recv()
                        got += 1
                grown = rss(pid) - before
            # The documented budget at 64 KiB is under 1 MiB a connection; 24 MiB is a generous margin for the
            # interpreter's own arenas (the original code grew by ~100 MB for 24 chats, ~56 MiB for 12).
            assert grown < 24 * 1024 * 1024, grown
        assert "Traceback" not in err.read_text()
    finally:
        upstream.close()


# -- 3. a hostile scraper that pipelines requests and reads none of the answers (the monitor's HTTP side, which the
#    proxy's /metrics now shares) --

NON_READERS = 4


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


@contextlib.asynccontextmanager
async def monitor_process(tmp_path: Path, down: int):
    """`chatprobe monitor` probing `down`, a port nobody listens on (it keeps running and serving), its HTTP server's
    slow-client timeout SLOW_CUT; yields (HTTP port, pid)."""
    err_path = tmp_path / "monitor.stderr"
    with err_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SLOW_CUT_MAIN + "import sys; from harness.cli import main; sys.exit(main())",
            "monitor", "--target", f"ws://127.0.0.1:{down}/ws",
            "--listen", "127.0.0.1:0", "--interval", "5s", stdout=asyncio.subprocess.PIPE, stderr=err, cwd=ROOT)
    try:
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        assert match, (line, err_path.read_text())
        yield int(match.group(1)), proc.pid
        assert "Traceback" not in err_path.read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("requests", [150, 100], ids=["answers-left-to-write", "answers-all-in-the-kernel"])
async def test_a_scraper_that_pipelines_requests_and_reads_no_answer_is_cut_and_its_answers_freed(tmp_path,
                                                                                                  refused_port,
                                                                                                  requests):
    """FAILED on the original code: each connection sending a burst of pipelined `GET /metrics` and reading nothing
    made the monitor render ~200 answers (~6 MB) into that connection's buffer, and waitress never closed it: its
    idle sweep skips a connection with output still to send (it marks it to close once flushed, which never comes)
    and one whose worker waits for the buffer to drain. 12 such connections held ~55 MB and 12 descriptors 30 s
    later, with no deadline (thousands are allowed). Now a connection with answers waiting and nothing taken for
    10 s (here SLOW_CUT) is closed, its buffers freed.
    FAILED before the deflake patch [answers-all-in-the-kernel], and now and then [answers-left-to-write] on a busy
    machine (whose /metrics page is smaller): when every answer asked for fitted in the kernel's send buffer, none was
    left to write, so the cut skipped the connection, and waitress's own sweep only marked it to close once its
    socket became writable, which it never did again: held for good."""
    async with monitor_process(tmp_path, refused_port()) as (port, pid):
        await until(lambda: _accepts(port), 10)
        assert (await scrape(port))[0] == 200
        base_fds, base_rss = open_fds(pid), rss(pid)
        burst = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * requests
        socks = []
        try:
            for _ in range(NON_READERS):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # reads nothing: a small window fills at once
                s.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    s.connect(("127.0.0.1", port))
                await until(lambda s=s: s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 and _connected(s), 5)
                with contextlib.suppress(BlockingIOError):
                    s.send(burst)
                socks.append(s)
            # Others are still served meanwhile (before the cut or after it)...
            assert (await scrape(port))[0] == 200
            # ...and within the slow-client timeout (SLOW_CUT, swept every second) of the last byte taken, the
            # non-readers are cut: their descriptors and the bytes queued to them are freed (the interpreter's own
            # heap may keep the pages it had: RSS is only checked loosely).
            await until(lambda: open_fds(pid) <= base_fds + 1 and queued_to(port) == 0, SLOW_CUT + 20)
            assert rss(pid) - base_rss < 128 * 1024 * 1024, rss(pid) - base_rss
            assert (await scrape(port))[0] == 200
            # Each non-reader was answered before it was cut: what it can read now is what the kernel held, whole
            # answers, then the end. Read after the cut, not watched for before it: the cut comes SLOW_CUT after a
            # connection's last byte taken, and on a busy machine it came before the test had seen all four
            # connections open and their answers piled up at one moment.
            for s in socks:
                answered = complete_answers(await read_to_the_end(s))
                assert 1 <= answered <= requests, answered
        finally:
            for s in socks:
                s.close()


async def read_to_the_end(s: socket.socket, limit: int = 64 * 1024 * 1024) -> bytes:
    """What a non-blocking socket still yields until its end (or a reset), within 30 s and `limit` bytes."""
    loop = asyncio.get_running_loop()
    got = bytearray()
    async with asyncio.timeout(30):
        while len(got) < limit:
            try:
                chunk = await loop.sock_recv(s, 256 * 1024)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
    assert len(got) < limit, "no end to the answers"
    return bytes(got)


def complete_answers(data: bytes) -> int:
    """How many whole HTTP answers (head and Content-Length body) `data` begins with, all of them 200."""
    n = pos = 0
    while (end := data.find(b"\r\n\r\n", pos)) != -1:
        head = data[pos:end].decode("latin-1")
        assert head.startswith("HTTP/1.1 200"), head[:100]
        match = re.search(r"(?im)^content-length:\s*(\d+)", head)
        assert match, head
        stop = end + 4 + int(match.group(1))
        if stop > len(data):
            break
        n, pos = n + 1, stop
    return n


def queued_to(port: int) -> int:
    """Bytes the kernel holds unsent on the server side of connections to 127.0.0.1:`port` (/proc/net/tcp)."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "01":  # local address, ESTABLISHED
            total += int(fields[4].split(":")[0], 16)
    return total


def _connected(s: socket.socket) -> bool:
    try:
        s.getpeername()
    except OSError:
        return False
    return True


# -- 4. a user who resumes a run on a new connection while the old one is still open (a browser's new socket after a
#    network change; the old one closes later) --

@pytest.mark.parametrize("lost", [False, True], ids=["nothing-lost", "events-lost-in-transit"])
async def test_a_run_resumed_on_a_new_connection_is_judged_there_not_abandoned_with_the_old_one(lost):
    """FAILED on the original code: the proxy learnt a run's id for a resume only when a server frame woke its chat,
    which an ordinary event of a run in progress never does, so a resume of a run in progress was never followed;
    and the old connection's close judged the chat as the user abandoning it. A run that went on and completed on
    the new connection was counted passed on its first event alone and abandoned, and its remaining events (where a
    server that breaks after a resume breaks) were judged by nothing. Now the resume is followed (counted in
    reconnects{result="resumed"}), the old connection lets the chat go, and it is judged once, on all its events.
    `events-lost-in-transit`: the proxy forwarded events on the old connection that the client never got (its network
    went away), so the client resumes from its first event and the server replays the rest: events the chat already
    had, not duplicates of the server's (R7), and not a second copy of each tool call (R5)."""
    secret = secrets.token_urlsafe(32)
    # Slow enough that the resume (tens of ms) lands before the run's next event.
    sim = AgentSim(SimConfig(port=0, jwt_secret=secret, think=0.5, tool_latency=0.5, seed=5))
    await sim.start()
    metrics = ChatMetrics(CollectorRegistry())
    results = []

    class Watched(MetricsSink):  # the real sink, its verdicts kept for the test to read
        def chat_finished(self, result):
            results.append(result)
            super().chat_finished(result)

    sink = Watched(metrics, "up", "live")
    live = LiveChats(load_profile("netra"), sink, Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=10.0),
                     "live", 0.1)
    server = await start_proxy(Proxy(sim.url.rsplit("/", 1)[0], live), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    headers = {"Authorization": f"Bearer {TokenProvider(jwt_secret=secret).for_user('alice')}"}
    url = f"ws://127.0.0.1:{port}/ws"

    def value(name, **labels):
        return metrics.registry.get_sample_value(name, {"target": "up", "source": "live", "scenario": "live",
                                                        **labels}) or 0.0

    try:
        old = await connect(url, additional_headers=headers, ping_interval=None, open_timeout=10, close_timeout=1)
        await old.send(json.dumps({"type": "user_message", "payload": {"content": "What is 2 * 21?"}}))
        async with asyncio.timeout(10):
            while (frame := json.loads(await old.recv())).get("type") != "agent_started":
                pass
            run_id, last_seq = frame.get("run_id") or frame["payload"]["run_id"], frame.get("seq", 1)
            while lost and json.loads(await old.recv()).get("type") != "tool_executing":
                pass  # seen by the proxy, forwarded, and (as far as the client will say) lost
        new = await connect(url, additional_headers=headers, ping_interval=None, open_timeout=10, close_timeout=1)
        async with asyncio.timeout(10):
            assert json.loads(await new.recv())["type"] == "connection_established"
        await new.send(json.dumps({"type": "resume", "payload": {"run_id": run_id, "last_seq": last_seq}}))
        async with asyncio.timeout(10):
            # the resume is under way: the new connection gets the run's events
            assert json.loads(await new.recv()).get("run_id") == run_id
        await old.close()
        await until(lambda: value("chatprobe_proxy_connections") == 1 or not value("chatprobe_proxy_connections"), 10)
        async with asyncio.timeout(15):
            while json.loads(await new.recv()).get("type") not in ("agent_completed", "agent_error"):
                pass
        await until(lambda: len(results) >= 1, 10)
        await new.close()
        await until(lambda: value("chatprobe_chats_in_flight") == 0, 10)
        assert value("chatprobe_reconnects_total", result="resumed") == 1
        assert value("chatprobe_chats_abandoned_total") == 0
        assert [r.outcome for r in results] == [Outcome.PASSED], [(r.outcome, r.violations) for r in results]
        assert results[0].events_received > 1 and not results[0].missing
        assert value("chatprobe_chats_total", outcome="passed") == 1
    finally:
        server.close()
        await server.wait_closed()
        await sim.stop()


async def test_one_identity_cannot_take_every_place_held_for_a_resend():
    """A chat the server cut before any event is held for its user's resend (one chat, as `check` counts it); a user
    whose chats the server keeps cutting holds at most MAX_RESENDS_EACH of them, so another user's resend is still
    held (past the cap the proxy cannot follow the chat's resend: PARKING_FULL, its connection counts it unjudged).
    The chats held when the proxy stops are counted unjudged (proxy_stopped), never judged."""
    from harness.sinks import PARKING_FULL
    from monitors.proxy import MAX_RESENDS_EACH, LiveTracker

    results: list = []

    class Kept(MetricsSink):
        def chat_finished(self, result):
            results.append(result)
            super().chat_finished(result)

    exp = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=10.0)
    metrics = ChatMetrics(CollectorRegistry())
    live = LiveChats(load_profile("netra"), Kept(metrics, "up", "live"), exp, "live", 0.05)

    def cut(identity: str, n: int) -> str:
        chat = LiveTracker(f"c-{identity}-{n}", exp, 0.0, scenario="live", thread_id="t", message_id=f"m-{n}")
        return live.hold_for_resend(identity, chat, 0.0, True)

    held = [cut("hostile", n) for n in range(MAX_RESENDS_EACH + 20)]
    assert held == ["held"] * MAX_RESENDS_EACH + [PARKING_FULL] * 20
    assert cut("someone-else", 1) == "held"  # still a place for another user
    again = live.take_resend("hostile", "m-0")
    assert again is not None and cut("hostile", 10_000) == "held"  # a place given back is a place again
    live.stop()
    assert not results and not live.resends  # none judged: each held chat counted once, unjudged
    assert not live._held_by  # no identity's count kept once it holds nothing (one key a user ever cut, for good)
    unjudged = metrics.registry.get_sample_value(
        "chatprobe_chats_unjudged_total", {"target": "up", "scenario": "live", "source": "live",
                                           "reason": "proxy_stopped"})
    assert unjudged == MAX_RESENDS_EACH + 1


def test_the_chats_held_for_a_resend_are_bounded_in_all(monkeypatch):
    """Past MAX_RESENDS chats held at once (across users), the next is not held (PARKING_FULL: its connection counts it
    unjudged), whoever's it is; a place let go is a place again."""
    from harness.sinks import PARKING_FULL
    from monitors import proxy
    from monitors.proxy import LiveTracker

    monkeypatch.setattr(proxy, "MAX_RESENDS", 5)
    exp = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=10.0)
    live = LiveChats(load_profile("netra"), MetricsSink(ChatMetrics(CollectorRegistry()), "up", "live"), exp, "live",
                     0.05)

    def cut(identity: str) -> str:
        chat = LiveTracker(f"c-{identity}", exp, 0.0, scenario="live", thread_id="t", message_id="m")
        return live.hold_for_resend(identity, chat, 0.0, True)

    assert [cut(f"user-{n}") for n in range(7)] == ["held"] * 5 + [PARKING_FULL] * 2
    assert live.take_resend("user-0", "m") is not None and cut("user-7") == "held"
    live.stop()
