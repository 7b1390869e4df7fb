"""Hostile recordings, streams and flags against a real chatprobe process: each ends in time, in bounded memory
(peak RSS of the process), with a classified verdict or exit 2, never a traceback."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from harness.offline import INTERRUPTED_NOTE
from tests.harness.reports import check_json_report, check_junit_report

ROOT = Path(__file__).resolve().parents[2]


# Runs chatprobe as its only child, its data segment capped at 3 GiB (a regression fails with MemoryError instead of
# taking the machine), and prints the child's peak RSS (KiB) last: the test's own children don't count.
_WRAPPER = ("import resource, subprocess, sys; cap = lambda: resource.setrlimit(resource.RLIMIT_DATA, (3 << 30, 3 << 30)); "
            "r = subprocess.run(sys.argv[1:], preexec_fn=cap); sys.stdout.flush(); "
            "print(f'\\nPEAK_RSS_KIB={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}'); sys.exit(r.returncode)")


def chatprobe(*args: str, timeout: float = 90.0) -> tuple[int, str, int]:
    """(exit code, output, peak RSS in MiB) of `chatprobe ARGS`, killed (its process group) at `timeout`."""
    return chatprobe_env({}, *args, timeout=timeout)


def chatprobe_env(env: dict[str, str], *args: str, timeout: float = 90.0) -> tuple[int, str, int]:
    proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, sys.executable, "-m", "harness", *args], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, **env})
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"chatprobe {' '.join(args)[:200]} still running after {timeout}s") from None
    text = out.decode("utf-8", "replace")
    text, _, rss = text.rpartition("\nPEAK_RSS_KIB=")
    return proc.returncode, text, int(rss) // 1024


def sse(*events: dict) -> str:
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events)


def test_agui_state_delta_copying_the_state_into_itself_is_bounded(tmp_path):
    # 40 copies of the root into itself: 2^40 times the state if applied as sent.
    body = sse({"type": "RUN_STARTED", "threadId": "t", "runId": "r1"},
               {"type": "STATE_SNAPSHOT", "snapshot": {"a": "x" * 1000}},
               {"type": "STATE_DELTA", "delta": [{"op": "copy", "from": "", "path": f"/k{i}"} for i in range(40)]},
               {"type": "ACTIVITY_SNAPSHOT", "messageId": "a1", "activityType": "x", "content": {"a": "x" * 1000}},
               {"type": "ACTIVITY_DELTA", "messageId": "a1", "activityType": "x",
                "patch": [{"op": "copy", "from": "", "path": f"/k{i}"} for i in range(40)]},
               {"type": "RUN_FINISHED", "threadId": "t", "runId": "r1"})
    f = tmp_path / "bomb.sse"
    f.write_text(body)
    code, out, rss = chatprobe("check", "--profile", "ag-ui", str(f), timeout=60)
    assert "Traceback" not in out and code == 0 and rss < 300, (code, rss, out[-2000:])
    assert "STATE_DELTA: state over 1048576 bytes" in out, out[-2000:]
    assert "activity 'a1' over 1048576 bytes" in out, out[-2000:]


# -- run --record DIR --

def test_record_into_a_directory_that_takes_no_file_is_a_usage_error_before_the_run():
    code, out, _ = chatprobe("run", "basic", "--record", "/proc/self", "--quiet", timeout=60)
    assert code == 2 and "Traceback" not in out, out[-3000:]
    assert out.strip().splitlines() == [out.strip().splitlines()[0]] and "--record /proc/self" in out, out


@contextlib.contextmanager
def echoing_server():
    """A WebSocket server on loopback (its own loop in a thread) that sends each client its request's headers back
    in a binary frame, then closes: a server echoing the client's token."""
    from websockets.asyncio.server import serve

    ready: queue.Queue = queue.Queue()
    stop: list = []

    async def handler(ws):
        headers = "\n".join(f"{k}: {v}" for k, v in ws.request.headers.raw_items())
        await ws.send(b"\x00\xff" + headers.encode() + b"\xfe")
        await ws.close()

    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        stop.append(lambda: loop.call_soon_threadsafe(done.set_result, None))
        async with serve(handler, "127.0.0.1", 0) as server:
            ready.put(server.sockets[0].getsockname()[1])
            await done

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    port = ready.get(timeout=10)
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        stop[0]()
        thread.join(timeout=10)


def test_a_token_echoed_in_a_binary_frame_never_reaches_the_recording(tmp_path):
    token = "tok-" + "Zq8" * 12
    directory = tmp_path / "rec"
    with echoing_server() as url:
        env_code, out, _ = chatprobe_env({"ECHO_TOKEN": token}, "run", "basic", "--target", url, "--token-env",
                                         "ECHO_TOKEN", "--record", str(directory), "--quiet", timeout=90)
    assert "Traceback" not in out, out[-3000:]
    files = list(directory.iterdir())
    assert files, out[-2000:]
    frames = []
    for f in files:
        text = f.read_text()
        assert token not in text
        for line in text.splitlines():
            rec = json.loads(line)
            if "frame_b64" in rec:
                frames.append(base64.b64decode(rec["frame_b64"]))
    assert frames and all(token.encode() not in b for b in frames)
    assert any(b"[REDACTED]" in b and b.startswith(b"\x00\xff") for b in frames), frames  # the rest kept as it was


def test_recorder_writes_nothing_outside_dir_whatever_the_label_or_a_planted_symlink(tmp_path):
    from harness.recorder import Recorder

    directory, outside = tmp_path / "rec", tmp_path / "outside"
    directory.mkdir()
    outside.write_text("kept\n")
    # The first connection's part file name is predictable to whoever knows the run id (its start time, 6 random
    # hex digits): someone with write access to DIR plants a link there.
    run = "20260101T000000Z-abcdef"
    (directory / f".{run}-000001-.._.._outside.jsonl.part").symlink_to(outside)
    rec = Recorder(directory, run_id=run)
    for label in ("../../outside", "/etc/passwd", "..", "a/../../b"):
        log = rec.connection(label)
        log.frame("recv", '{"type": "agent_started"}', 1.0)
        rec.save(log)
    assert outside.read_text() == "kept\n"
    assert [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(directory)] == [outside]
    assert all(p.parent == directory and not p.is_symlink() for p in directory.iterdir())


# -- chatprobe check: hostile recordings --

def test_recorded_times_out_of_any_range_are_r12_and_every_report_is_written(tmp_path):
    started = {"type": "agent_started", "run_id": "r1"}
    f = tmp_path / "times.jsonl"
    f.write_text("".join(json.dumps({"t": t, "conn": "c", "frame": started}) + "\n"
                         for t in (-1e308, 1e308, -5, 0, 1e11, -1e11)))
    har = tmp_path / "times.har"
    har.write_text(json.dumps({"log": {"entries": [{"_webSocketMessages": [
        {"type": "receive", "time": t, "opcode": 1, "data": json.dumps(started)} for t in (1e308, -1e308, 5.0)]}]}}))
    reports = [tmp_path / "r.html", tmp_path / "r.json", tmp_path / "r.xml"]
    code, out, _ = chatprobe("check", str(f), str(har), "--html", str(reports[0]), "--json", str(reports[1]),
                             "--junit", str(reports[2]), timeout=60)
    assert code == 1 and "Traceback" not in out, out[-3000:]
    assert ("field 't' must be a time in epoch seconds (or milliseconds), or an ISO 8601 date and time "
            "(times.jsonl:1)") in out and "(times.jsonl:2)" in out
    assert all(r.stat().st_size > 0 for r in reports)
    json.loads(reports[1].read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON report"))


def test_many_chats_open_on_one_connection_with_time_going_backwards_end_in_linear_time(tmp_path):
    # Each line a new run on one connection, each earlier than the last: no deadline ever passes, so every chat stays
    # open; routing each frame past all of them took hours (20,000 lines: 27 s; 100,000: ~11 min).
    f = tmp_path / "backwards.jsonl"
    with f.open("w") as out:
        for i in range(100_000):
            out.write(json.dumps({"t": 1.7e9 - i, "conn": "c", "frame": {"type": "agent_started", "run_id": f"r{i}"}})
                      + "\n")
    report = tmp_path / "r.json"
    code, out, rss = chatprobe("check", str(f), "--quiet", "--json", str(report), timeout=60)
    assert code == 1 and "Traceback" not in out and rss < 300, (code, rss, out[-2000:])
    [run] = json.loads(report.read_text())["scenarios"]
    assert run["stats"]["chats"] == 100_000 and any(e.startswith("100000 chats judged, 1000 listed") for e in run["errors"])


# -- proxy --record: a server echoing a user's opaque credentials --

async def test_the_proxy_never_records_a_users_opaque_token_or_cookie_that_the_server_echoes(tmp_path):
    from prometheus_client import CollectorRegistry
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    from harness.checker import Expectations
    from harness.events import DEFAULT_REQUIRED
    from harness.profiles import load_profile
    from harness.recorder import Recorder
    from monitors.metrics import ChatMetrics, MetricsSink
    from monitors.proxy import LiveChats, Proxy, start_proxy

    token, cookie, sub = "opaque-user-credential-7Hq2", "cookie-value-Zk93m", "subprotocol-token-Pw51x"
    # In the query string (any name: a server's link token) and in a subprotocol of another form than jwt.<token>.
    query_token, link_token, k8s = "QueryAccessTok2222", "OpaqueLinkDDDD3333", "k8sBearerTokenEEEE4444"

    async def echo(ws):  # the upstream: every credential it was given, back in a text and a binary frame
        said = ws.request.path + " " + " ".join(f"{k}={v}" for k, v in ws.request.headers.raw_items())
        await ws.send(json.dumps({"type": "agent_started", "run_id": "r1", "echo": said}))
        await ws.send(said.encode())
        await ws.close()

    upstream = await serve(echo, "127.0.0.1", 0, select_subprotocol=lambda conn, offered: offered[0])
    directory = tmp_path / "rec"
    live = LiveChats(load_profile("netra"), MetricsSink(ChatMetrics(CollectorRegistry()), "up", "live"),
                     Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=10.0), "live", 0.1,
                     Recorder(directory, keep_all=True))
    port = upstream.sockets[0].getsockname()[1]
    proxy = await start_proxy(Proxy(f"ws://127.0.0.1:{port}", live), "127.0.0.1", 0)
    try:
        url = f"ws://127.0.0.1:{proxy.sockets[0].getsockname()[1]}/ws?access_token={query_token}&t={link_token}&v=2"
        async with asyncio.timeout(10):
            async with connect(url, additional_headers={"Authorization": f"Token {token}", "Cookie": f"s={cookie}"},
                               subprotocols=[f"jwt.{sub}",  # type: ignore[list-item]
                                             f"base64url.bearer.authorization.k8s.io.{k8s}"]) as ws:
                frames = [m async for m in ws]
            assert any(token in (m if isinstance(m, str) else m.decode()) for m in frames)  # the echo did pass
            # The chat is left unfinished by the client, not failed: its file is there only because of keep_all
            # (--record-all), which the proxy used to override with keep=False.
            while not any(directory.glob("*.jsonl")):
                await asyncio.sleep(0.02)  # wait-ok: poll interval of a condition wait bounded by the timeout
    finally:
        proxy.close()
        upstream.close()
    for f in directory.glob("*.jsonl"):
        text = f.read_text()
        frames_b64 = [base64.b64decode(json.loads(line)["frame_b64"]).decode() for line in text.splitlines()
                      if "frame_b64" in line]
        for secret in (token, cookie, sub, query_token, link_token, k8s):
            assert secret not in text and all(secret not in b for b in frames_b64), (secret, text)


def test_a_directory_of_files_with_a_4_mib_frame_each_holds_one_copy_of_each_head_while_merged(tmp_path):
    # The files of a directory are merged in time order, the next record of each held meanwhile: it held the line,
    # its text and its JSON too (16 MiB a file: 512 files, 8 GiB); now the frame alone (4 MiB a file).
    directory = tmp_path / "rec"
    directory.mkdir()
    frame = json.dumps({"type": "agent_started", "x": "a" * (4 * 1024 * 1024 - 64)})
    for i in range(24):
        (directory / f"{i:03d}.jsonl").write_text(
            json.dumps({"t": 1.0 + i, "conn": "c", "frame": frame}) + "\n"
            + json.dumps({"t": 1.0 + i, "conn": "c", "frame": {"type": "agent_thinking"}}) + "\n")
    code, out, rss = chatprobe("check", str(directory), "--quiet", timeout=60)
    assert code == 1 and "Traceback" not in out and rss < 300, (code, rss, out[-2000:])


def test_a_har_with_a_50_mb_number_is_cut_short_at_once(tmp_path):
    # ijson's parser rescans a number that spans its reads: quadratic (10 MB 1.3 s, 20 MB 4.3 s, 50 MB ~27 s, 300 MB
    # ~20 min), unbounded by the string limit. Cut at 4 KiB it takes well under a second.
    msg = json.dumps({"type": "send", "time": 1.5, "opcode": 1, "data": "{}"})  # past ijson's first read
    f = tmp_path / "number.har"
    with f.open("wb") as out:
        out.write(b'{"log": {"entries": [{"_webSocketMessages": [' + ",".join([msg] * 2000).encode())
        out.write(b', {"type": "receive", "opcode": 1, "data": "{}", "time": 1')
        for _ in range(50):
            out.write(b"7" * 1_000_000)
        out.write(b"}]}]}}")
    code, out, rss = chatprobe("check", str(f), timeout=10)
    assert code == 1 and "Traceback" not in out and rss < 300, (code, rss, out[-2000:])
    assert "HAR file cut short: a number or literal longer than 4096 bytes" in out, out[-2000:]


def test_a_report_over_a_recording_it_reads_is_refused_and_the_recording_kept(tmp_path):
    f = tmp_path / "chat.jsonl"
    f.write_text(json.dumps({"t": 1.0, "dir": "recv", "conn": "c", "frame": {"type": "agent_started", "run_id": "r"}})
                 + "\n")
    before = f.read_bytes()
    for flag in ("--html", "--json", "--junit"):
        code, out, _ = chatprobe("check", str(tmp_path), flag, str(f), timeout=60)
        assert code == 2 and f"{flag} {f}: that is a recording this command reads" in out, out[-2000:]
        assert f.read_bytes() == before


def test_an_error_naming_a_path_shows_its_control_characters_escaped(tmp_path):
    name = tmp_path / "evil\x1b[2J\x1b]0;owned\x07\u202ename.har"
    code, out, _ = chatprobe("check", str(name), timeout=60)
    assert code == 2 and "\x1b" not in out and "\u202e" not in out, repr(out[-500:])
    assert "evil\\x1b[2J\\x1b]0;owned\\x07\\u202ename.har: no such file or directory" in out, repr(out[-500:])


def test_a_path_that_cannot_be_read_is_named_with_what_is_wrong(tmp_path):
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)  # a symlink to itself: it exists, it cannot be opened
    code, out, _ = chatprobe("check", str(loop), timeout=60)
    assert code == 2 and f"{loop}: too many levels of symbolic links" in out, repr(out[-500:])


@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_check_interrupted_writes_every_report_and_exits_as_run_does(tmp_path, sig, code):
    """The signal arrives mid-recording (sent by the process to itself at its 200th record: no timing guess); the
    chats read so far are judged, every report is written, the exit code says which signal."""
    rec = tmp_path / "r.jsonl"
    lines = []
    for i in range(300):
        for j, role in enumerate(["agent_started", "agent_thinking", "agent_completed"]):
            lines.append(json.dumps({"t": i + j * 0.01, "dir": "recv", "conn": f"c{i}",
                                     "frame": {"type": role, "run_id": f"r{i}", "seq": j + 1}}))
    rec.write_text("\n".join(lines) + "\n")
    probe = tmp_path / "probe.py"
    probe.write_text(f"""
import os, signal, sys
from harness import offline
from harness.cli import main
feed = offline.OfflineCheck.feed
seen = [0]
def counted(self, rec):
    seen[0] += 1
    if seen[0] == 200:
        os.kill(os.getpid(), signal.{sig})
    return feed(self, rec)
offline.OfflineCheck.feed = counted
sys.exit(main(sys.argv[1:]))
""")
    out, junit = tmp_path / "r.json", tmp_path / "r.xml"
    proc = subprocess.run([sys.executable, str(probe), "check", str(rec), "--json", str(out), "--junit", str(junit)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"chatprobe: {sig}: stopping" in proc.stderr and "Traceback" not in proc.stderr
    [doc] = check_json_report(out)["scenarios"]  # valid against the shipped schema, strict JSON
    assert doc["stopped_early"] and 0 < doc["stats"]["chats"] < 300
    assert any(w.startswith("interrupted at record 20") for w in doc["warnings"]), doc["warnings"]
    # The chat the stop cut short says so, not that the recording ends there (it goes on for 700 more records).
    cut = [c for c in doc["chats"] if c["outcome"] == "incomplete"]
    assert cut and all(c["note"] == INTERRUPTED_NOTE for c in cut), cut
    [case] = check_junit_report(junit).iter("testcase")  # valid against the JUnit XSD
    assert "warning: interrupted at record 20" in case.findtext("system-out")


def test_a_signal_while_check_writes_its_reports_changes_nothing_of_what_is_written(tmp_path):
    rec = tmp_path / "r.jsonl"
    rec.write_text("".join(json.dumps({"t": 1.0 + j * 0.01, "dir": "recv", "conn": "c", "frame": {
        "type": role, "run_id": "r1", "seq": j + 1}}) + "\n" for j, role in enumerate(["agent_started", "agent_completed"])))
    probe = tmp_path / "probe.py"
    probe.write_text("""
import os, signal, sys
from harness import report
from harness.cli import main
write_json = report.write_json
def signalled(*a, **k):
    os.kill(os.getpid(), signal.SIGTERM)  # as the first report is written
    return write_json(*a, **k)
report.write_json = signalled
sys.exit(main(sys.argv[1:]))
""")
    out, junit = tmp_path / "r.json", tmp_path / "r.xml"
    proc = subprocess.run([sys.executable, str(probe), "check", str(rec), "--json", str(out), "--junit", str(junit)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, (proc.returncode, proc.stderr[-2000:])
    assert json.loads(out.read_text())["scenarios"] and junit.read_text().startswith("<?xml")
    assert "Traceback" not in proc.stderr
