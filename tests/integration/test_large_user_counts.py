"""A scenario with a user count far past what the machine carries: the users playing at once (and so their tasks,
sessions and connections) never pass `concurrency`, a count beyond the open-file limit is refused before anything
connects (exit 2, naming the file, line and field and the limit), and a run of many users answers SIGTERM, a second
one at once. Real sockets on loopback, every wait with a deadline."""
from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import sys
from pathlib import Path

from harness.profiles import load_profile
from harness.runner import USER_TASK, run_scenario
from harness.targets import FILES_KEPT, Target, TokenProvider

from .conftest import scenario

# The soft open-file limit each CLI run below is started with (as `ulimit -n`), and the hard one it may raise to.
NOFILE = 256


class Silent:
    """A TCP server that accepts every connection and never answers (a server too busy to handshake): each connection
    counted while it is open, `opened` set at the `want`-th."""

    def __init__(self, want: int = 1) -> None:
        self.open = self.most = self.accepted = 0
        self.want = want
        self.opened = asyncio.Event()
        self.ended = asyncio.Event()  # set whenever a connection ends
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.accepted += 1
        self.most = max(self.most, self.open)
        self.writers.append(writer)
        if self.accepted >= self.want:
            self.opened.set()
        try:
            while await reader.read(4096):
                pass
        finally:
            self.open -= 1
            self.ended.set()
            writer.close()


async def test_users_past_concurrency_wait_as_no_task_and_no_connection() -> None:
    """5,000 users, 20 at once, against a server that never answers: at no time more than 20 user tasks nor 20 open
    connections (the 5,000 were made as tasks at once, each waiting for a slot, ~1 KB each before its first chat)."""
    silent = Silent(want=20)
    server = await asyncio.start_server(silent.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    target = Target(url=f"ws://127.0.0.1:{port}", profile=load_profile("netra"), name="silent",
                    tokens=TokenProvider(jwt_secret="s" * 32))
    stop = asyncio.Event()
    sc = scenario(users=5000, concurrency=20, chats_per_user=1, connect_timeout=30.0, max_duration=60.0)
    try:
        run = asyncio.ensure_future(run_scenario(sc, target, stop=stop))
        async with asyncio.timeout(30):
            await silent.opened.wait()
        users = sum(1 for t in asyncio.all_tasks() if t.get_name() == USER_TASK)
        stop.set()
        async with asyncio.timeout(30):
            result = await run
    finally:
        server.close()
        for w in silent.writers:
            w.close()
    assert users <= 20, users
    assert silent.most <= 20, silent.most
    assert result.stopped_by and result.stats.chats <= 20


async def test_a_connect_cut_during_the_upgrade_leaves_no_connection_open() -> None:
    """One user, ten chats, against a server that accepts and never answers the upgrade: each chat's connect times
    out (connect_timeout), and its connection is closed, not left open to the end of the run (picows, cut while it
    waited for the answer, kept it: ten users' worth of sockets for one user, growing with every chat)."""
    silent = Silent()
    server = await asyncio.start_server(silent.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    target = Target(url=f"ws://127.0.0.1:{port}", profile=load_profile("netra"), name="silent",
                    tokens=TokenProvider(jwt_secret="s" * 32))
    try:
        async with asyncio.timeout(60):
            run = await run_scenario(scenario(users=1, chats_per_user=10, connect_timeout=0.2), target)
            while silent.open:
                silent.ended.clear()
                await silent.ended.wait()
    finally:
        server.close()
        for w in silent.writers:
            w.close()
    assert run.stats.chats == 10 and silent.accepted == 10
    assert silent.most < 10, silent.most


def _limited(nofile: int, hard: bool = False) -> None:
    """A CLI run's open-file limit, as `ulimit -n` would set it (the hard one left as it is, or with `hard` set to it
    too, as `ulimit -Hn`), and its address space bounded (3 GB: a run that grows past it fails here, never the
    machine)."""
    resource.setrlimit(resource.RLIMIT_NOFILE,
                       (nofile, nofile if hard else resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))


async def _cli(*args: str, nofile: int = NOFILE, hard: bool = False,
               signals: tuple[int, ...] = ()) -> tuple[int, str]:
    """`chatprobe ARGS` in a process of its own under an open-file limit; `signals` sent, one after the other, once a
    progress line says chats are in flight. The exit code and stderr, awaited with a deadline (a hang
    fails here)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CHATPROBE_TOKEN", "CHATPROBE_JWT_SECRET")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "harness", *args, env={**env, "NO_COLOR": "1"}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, preexec_fn=lambda: _limited(nofile, hard))
    assert proc.stdout is not None and proc.stderr is not None
    out = b""
    try:
        async with asyncio.timeout(60):
            if signals:
                while not re.search(rb"in flight [1-9]", out):
                    line = await proc.stdout.readline()
                    assert line, (out + await proc.stderr.read()).decode()
                    out += line
                for sig in signals:
                    proc.send_signal(sig)
            rest, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, err.decode()


async def test_users_past_the_open_file_limit_are_refused_naming_the_field(tmp_path: Path) -> None:
    """`users: 100000` with no `concurrency` asks for 100,000 connections at once: past `ulimit -n`, each past it
    failed as the client's own EMFILE (against the embedded agentsim the run grew to gigabytes and held a SIGTERM
    for minutes). Refused before anything connects, naming the file, line and field, the limit and what fits."""
    path = tmp_path / "huge.yaml"
    path.write_text("name: huge\nusers: 100000\nchats_per_user: 100000\n")
    code, err = await _cli("run", str(path), "-q")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = NOFILE if hard == resource.RLIM_INFINITY else max(NOFILE, hard)
    assert code == 2, err
    assert f"{path}:2:" in err and "field 'users'" in err and f"may open {limit:,}" in err, err
    assert f"concurrency: {(limit - FILES_KEPT) // 2:,}" in err, err


async def test_a_recording_run_is_not_refused_for_files_it_never_holds_open(tmp_path: Path) -> None:
    """`--record` under a hard limit of 1,024 open files (a common default): the recorder opens a recording's file
    for each write and closes it, so a run of 2 users records as it runs without it. It was refused, as if the
    recorder held its 1,000 files open at once, telling the user to set `concurrency: 0`."""
    path = tmp_path / "two.yaml"
    path.write_text("name: two\nusers: 2\n")
    record = tmp_path / "rec"
    code, err = await _cli("run", str(path), "-q", "--record", str(record), nofile=1024, hard=True)
    assert code == 0, err
    assert list(record.glob("*.jsonl")), err


async def test_no_connection_fitting_the_limit_is_told_to_raise_it(tmp_path: Path) -> None:
    """A limit that leaves no descriptor for one connection once the process's own are kept: the answer is to raise
    the limit, never `concurrency: 0`, a value the scenario refuses."""
    path = tmp_path / "one.yaml"
    path.write_text("name: one\nusers: 1\n")
    code, err = await _cli("run", str(path), "-q", nofile=FILES_KEPT, hard=True)
    assert code == 2, err
    assert f"{path}:2:" in err and "raise the limit" in err and "concurrency: 0" not in err, err


async def test_a_run_of_many_users_answers_sigterm(tmp_path: Path) -> None:
    """Many users against the embedded agentsim, SIGTERM once their chats are in flight: the run stops, its chats
    judged and summed up, exit 143."""
    path = tmp_path / "many.yaml"
    path.write_text("name: many\nusers: 100000\nconcurrency: 60\nchats_per_user: 100000\n")
    code, err = await _cli("run", str(path), "--progress-interval", "100ms", signals=(signal.SIGTERM,))
    assert code == 143, err
    assert "SIGTERM: stopping" in err and "ending now" not in err and "Traceback" not in err, err


async def test_a_second_signal_ends_the_run_at_once(tmp_path: Path) -> None:
    """Ctrl-C and SIGTERM together, before the stop was done (two signals of one kind sent together arrive as one; of
    two kinds, in either order): the second ends the process at once with the first one's code, as k6's second
    Ctrl-C does."""
    path = tmp_path / "many.yaml"
    path.write_text("name: many\nusers: 100000\nconcurrency: 60\nchats_per_user: 100000\n")
    code, err = await _cli("run", str(path), "--progress-interval", "100ms", signals=(signal.SIGINT, signal.SIGTERM))
    first = re.search(r"chatprobe: (SIGINT|SIGTERM): stopping", err)
    assert first is not None, err
    second = "SIGTERM" if first[1] == "SIGINT" else "SIGINT"
    assert code == (130 if first[1] == "SIGINT" else 143), err
    assert f"{second} again: ending now" in err and "Traceback" not in err, err


def test_a_second_signal_shows_the_terminals_cursor_again(tmp_path: Path) -> None:
    """On a terminal the live view hides the cursor while the run goes on and shows it as it ends: a second signal,
    ending the process at once (os._exit), left the user's shell with no cursor."""
    import pty
    import select
    import subprocess
    import time

    path = tmp_path / "many.yaml"
    path.write_text("name: many\nusers: 100000\nconcurrency: 20\nchats_per_user: 100000\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("CHATPROBE_TOKEN", "CHATPROBE_JWT_SECRET", "NO_COLOR", "CI")}
    main, side = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(path)], stdin=side, stdout=side,
                            stderr=side, env={**env, "TERM": "xterm", "COLUMNS": "120"},
                            preexec_fn=lambda: _limited(NOFILE))
    os.close(side)
    out = b""
    deadline = time.monotonic() + 60
    sent = False
    try:
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([main], [], [], left)[0]:
                continue
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the process ended, the terminal closed
                break
            if not chunk:
                break
            out += chunk
            if not sent and b"\x1b[?25l" in out:  # the live view is up, the cursor hidden
                proc.send_signal(signal.SIGINT)
                proc.send_signal(signal.SIGTERM)
                sent = True
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode(errors="replace")
    assert sent and code in (130, 143), text
    assert "again: ending now" in text and "Traceback" not in text, text
    assert out.rfind(b"\x1b[?25h") > out.rfind(b"\x1b[?25l"), text[-400:]
