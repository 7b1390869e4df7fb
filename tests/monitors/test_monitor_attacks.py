"""`chatprobe monitor` against a hostile configuration and hostile clients: more probes than the open-file limit
carries, or a scenario its target cannot carry, is exit 2 at start, as `run` says it; idle connections to its port
never take the descriptors its probes need. Real processes and real loopback sockets, every wait with a deadline."""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fdlimit import room_for_files

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 10.0


def _closed_port() -> int:
    """A loopback port nothing listens on (a probe there is refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _monitor(*args: str, nofile: int) -> subprocess.CompletedProcess[str]:
    """`chatprobe monitor ARGS` from this checkout, its open-file limit `nofile` (soft and hard), within a deadline."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return subprocess.run([sys.executable, "-m", "monitors.monitor", *args], capture_output=True, text=True,
                          timeout=120, cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)), preexec_fn=limit)


def test_more_probes_than_the_open_file_limit_carries_is_exit_2_naming_the_file_line_and_field(tmp_path):
    """FAILED on the code before it: 60 targets under `ulimit -n 64` were probed, and every connection past the limit
    failed as the monitor's own EMFILE, reported as that target's: `unreachable (refused: network error: Too many
    open files)`, a `refused` connection and probe_success 0, paging for targets that were never asked. Refused at
    start instead, as `run` refuses a scenario past the limit: the file, the line and the field, the limit, what to
    change."""
    port = _closed_port()
    cfg = tmp_path / "m.yaml"
    cfg.write_text("interval: 30s\ntargets:\n" + "".join(
        f"  t{i}: {{url: 'ws://127.0.0.1:{port}/ws', auth: none}}\n" for i in range(60)))
    for once in (["--once"], ["--listen", "127.0.0.1:0"]):
        proc = _monitor("--config", str(cfg), *once, nofile=64)
        assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
        err = proc.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith(f"chatprobe monitor: error: {cfg}:3: field 'targets': 60 probes"), err
        assert "may open 64 (`ulimit -n`)" in err and "raise the limit" in err, err
        assert "listening" not in proc.stdout, proc.stdout  # nothing was served, nothing probed
    # What the limit carries runs: the same targets under a limit that holds them are probed (refused, exit 3).
    proc = _monitor("--config", str(cfg), "--once", nofile=1024)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "Too many open files" not in proc.stdout + proc.stderr


@pytest.fixture
def files_for_a_flood():
    """Room in this process for both ends of the flood's and the probes' sockets, under a low default limit."""
    with room_for_files(4096):
        yield


async def _scrape(port: int) -> dict[str, float]:
    """The monitor's chatprobe_connections_total by `result`, summed over its targets."""
    async with asyncio.timeout(DEADLINE):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        data = await reader.read()
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == "chatprobe_connections_total":
                out[s.labels["result"]] = out.get(s.labels["result"], 0) + s.value
    return out


@pytest.mark.timeout(120)
async def test_idle_connections_to_the_monitor_take_no_descriptor_its_probes_need(tmp_path, files_for_a_flood):
    """FAILED on the code before it: the monitor's HTTP side held connections up to the open-file limit less 256,
    whatever its probes hold. 5 targets probed by 50 users each (250 connections a round, within a limit of 1,024)
    and 768 idle connections to its port: the probes' sockets past the limit failed as the monitor's own EMFILE,
    counted as the targets' `refused` connections. Now the HTTP side keeps every descriptor the probes (and /probe's
    runs) may hold: past that, a new connection closes the one that has waited longest, and no probe is refused."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # the TCP connection taken, the upgrade never answered: each probe holds its socket
        with contextlib.suppress(OSError):
            while await reader.read(4096):
                pass
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0, backlog=1024)
    users, targets, nofile = 50, 5, 1024
    (tmp_path / "wide.yaml").write_text(f"name: wide\nusers: {users}\nchats_per_user: 1\nmessage: hi\n")
    cfg = tmp_path / "m.yaml"
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
    cfg.write_text("interval: 2s\ntimeout: 2s\nscenarios: [wide.yaml]\ntargets:\n" + "".join(
        f"  t{i}: {{url: '{url}', auth: none}}\n" for i in range(targets)))
    err = tmp_path / "monitor.stderr"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    flood: list[socket.socket] = []
    with err.open("wb") as err_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "monitors.monitor", "--config", str(cfg), "--listen", "127.0.0.1:0",
            stdout=asyncio.subprocess.PIPE, stderr=err_file, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
            preexec_fn=limit)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        assert match, line + err.read_text()
        port = int(match[1])
        # As many idle connections as the HTTP side held before: the open-file limit less 256.
        for _ in range(nofile - 256):
            sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
            flood.append(sock)
        before = await _scrape(port)  # answered once every connection before it was accepted
        # Two rounds of every probe's connections since the flood, each past the monitor's connect deadline.
        async with asyncio.timeout(60):
            while (now := await _scrape(port)).get("timeout", 0) < before.get("timeout", 0) + 2 * targets * users:
                assert now.get("refused", 0) == before.get("refused", 0), (now, err.read_text()[-2000:])
                await asyncio.sleep(0.2)  # wait-ok: the poll interval of a deadline loop
        assert now.get("refused", 0) == 0, (now, err.read_text()[-2000:])
        assert "Too many open files" not in err.read_text()
    finally:
        for sock in flood:
            sock.close()
        if proc.returncode is None:
            proc.terminate()
            async with asyncio.timeout(30):
                await proc.wait()
        server.close()
        for writer in held:
            writer.close()


@pytest.mark.parametrize("scenario,field,line", [
    ("name: par\nparallel_chats: 2\nmessage: hi\n", "parallel_chats", 2),
    ("name: rawy\nsteps:\n  - send_raw: hello\n", "steps", 3)])
def test_a_scenario_its_target_cannot_carry_is_exit_2_as_run_says_it(tmp_path, scenario, field, line):
    """FAILED on the code before it: the monitor never asked whether a target can carry its scenario, which `run`
    and the Locust user refuse (exit 2, naming the scenario's field): two chats in flight per user, or a `send_raw:`
    step, over an SSE target (one stream per chat) were probed as if they could be, every interval. Refused at start,
    from a config file (its file, line and field, and the scenario's) and from --target alike."""
    (tmp_path / "s.yaml").write_text(scenario)
    url = f"http://127.0.0.1:{_closed_port()}/run"
    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"targets:\n  ok: {{url: '{url}', profile: ag-ui, auth: none}}\n"
                   f"  sse:\n    url: '{url}'\n    profile: ag-ui\n    auth: none\n    scenarios: [probe, s.yaml]\n")
    for args, where in ((["--config", str(cfg)], f"{cfg}:7: field 'targets.sse.scenarios.1': "),
                        (["--target", url, "--profile", "ag-ui", "--auth", "none", "--scenario", "probe",
                          "--scenario", str(tmp_path / "s.yaml")], "")):
        proc = _monitor(*args, "--once", nofile=1024)
        err = proc.stderr.strip()
        assert proc.returncode == 2, (proc.returncode, proc.stdout, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith(f"chatprobe monitor: error: {where}{tmp_path / 's.yaml'}:{line}: scenario "), err
        assert f"field '{field}'" in err and "SSE" in err, err
