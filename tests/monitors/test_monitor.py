"""The monitor's pieces in process: config validation, name-only /probe lookup, one probe into a fresh registry,
and PushSink's grouping and last-success handling."""
from __future__ import annotations

import io
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agentsim.server import AgentSim, SimConfig
from harness.yamlfile import ConfigError
from monitors.metrics import ChatMetrics
from monitors.monitor import Monitor, load_config, main, parse_listen, probes_from_config
from monitors.push import PushSink

ROOT = Path(__file__).resolve().parents[2]


def _values(text: str) -> dict:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _get(samples: dict, name: str, **labels) -> float:
    return sum(v for (n, lb), v in samples.items() if n == name and set(labels.items()) <= lb)


def test_config_errors_name_file_line_and_field(tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text("targets:\n  prod:\n    url: ws://a/ws\n    profil: netra\n")
    with pytest.raises(ConfigError, match=rf"{cfg}:4: field 'targets.prod.profil'"):
        load_config(str(cfg))
    cfg.write_text("targets: {}\n")
    with pytest.raises(ConfigError, match="targets"):
        load_config(str(cfg))
    cfg.write_text("targets:\n  'has space':\n    url: ws://a/ws\n")
    with pytest.raises(ConfigError, match=r"m\.yaml:\d+: field 'targets.has space"):
        load_config(str(cfg))


def test_config_targets_and_scenarios(tmp_path, monkeypatch):
    monkeypatch.setenv("PROD_TOKEN", "t0ken")
    cfg = tmp_path / "m.yaml"
    cfg.write_text("scenarios: [probe]\ninterval: 30s\ntargets:\n"
                   "  prod: {url: 'wss://agent.example', token_env: PROD_TOKEN}\n"
                   "  staging: {url: 'ws://staging:8765/ws', auth: none, scenarios: [probe, basic]}\n")
    config = load_config(str(cfg))
    assert config.interval == 30.0
    probes = probes_from_config(str(cfg), config, timeout=10)
    assert [p.key for p in probes] == [("prod", "probe"), ("staging", "probe"), ("staging", "basic")]
    assert probes[0].target.url == "wss://agent.example/ws"  # the profile's path
    assert all(p.scenario.max_duration <= 10 for p in probes)
    monkeypatch.delenv("PROD_TOKEN")
    with pytest.raises(ConfigError, match=rf"{cfg}:4: field 'targets.prod.token_env': PROD_TOKEN: the variable"):
        probes_from_config(str(cfg), config, timeout=10)


@pytest.mark.parametrize("lines,needle", [
    (["url: 'ws://[::1'"], ":6: field 'targets.sim.url': 'ws://[::1': not a valid URL"),
    (["url: 'ws://127.0.0.1:notaport/ws'"], ":6: field 'targets.sim.url'"),
    (["url: 'ws://127.0.0.1:99999/ws'"], ":6: field 'targets.sim.url'"),
    (["url: 'ftp://agent'"], ":6: field 'targets.sim.url'"),
    (["url: ws://a/ws", "profile: nosuch"], ":7: field 'targets.sim.profile': 'nosuch': no such file"),
    (["url: ws://a/ws", "scenarios: [probe, nosuch]"], ":7: field 'targets.sim.scenarios.1': scenario 'nosuch'"),
    (["url: ws://a/ws", "scenarios:", "  - probe", "  - probe"], ":9: field 'targets.sim.scenarios.1': "
                                                                "scenario name 'probe' is given twice"),
    (["url: ws://a/ws", "token_env: CHATPROBE_TEST_UNSET"], ":7: field 'targets.sim.token_env': CHATPROBE_TEST_UNSET"),
    (["url: ws://a/ws", "token_file: no-token"], ":7: field 'targets.sim.token_file'"),
    (["url: ws://a/ws", "ca_file: no-ca.pem"], ":7: field 'targets.sim.ca_file'"),
    # FAILED on the old code: an empty value was taken as not given (CHATPROBE_TOKEN's token, the system's CAs, netra)
    (["url: ws://a/ws", "token_env: ''"], ":7: field 'targets.sim.token_env': an empty variable name"),
    (["url: ws://a/ws", "jwt_secret_env: ' '"], ":7: field 'targets.sim.jwt_secret_env': an empty variable name"),
    (["url: ws://a/ws", "token_file: ''"], ":7: field 'targets.sim.token_file': an empty path"),
    (["url: wss://a/ws", "ca_file: ''"], ":7: field 'targets.sim.ca_file': an empty path"),
    (["url: ws://a/ws", "profile: ''"], ":7: field 'targets.sim.profile': '': no such file"),
    (["url: http://a/run", "profile: ag-ui", "auth: subprotocol"], ":8: field 'targets.sim.auth'"),
])
def test_config_target_errors_name_file_line_and_field(tmp_path, monkeypatch, lines, needle):
    monkeypatch.delenv("CHATPROBE_TEST_UNSET", raising=False)
    cfg = tmp_path / "m.yaml"
    cfg.write_text("scenarios: [probe]\ninterval: 30s\ntargets:\n  other: {url: 'ws://b/ws'}\n  sim:\n"
                   + "".join(f"    {line}\n" for line in lines))
    with pytest.raises(ConfigError) as info:
        probes_from_config(str(cfg), load_config(str(cfg)), timeout=10)
    assert str(info.value).startswith(f"{cfg}:") and needle in str(info.value), str(info.value)


def test_config_top_level_scenario_error_names_its_line(tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text("scenarios:\n  - probe\n  - nosuch.yaml\ntargets:\n  sim: {url: 'ws://b/ws'}\n")
    with pytest.raises(ConfigError, match=rf"{cfg}:3: field 'scenarios.1': .*nosuch.yaml"):
        probes_from_config(str(cfg), load_config(str(cfg)), timeout=10)


@pytest.mark.parametrize("text,needle", [
    ("interval: 0\n", ":1: field 'interval'"),
    ("interval: 0s\n", ":1: field 'interval'"),
    ("timeout: .inf\n", ":1: field 'timeout'"),
    ("timeout: .nan\n", ":1: field 'timeout'"),
    ("timeout: 0\n", ":1: field 'timeout'"),
])
def test_config_interval_and_timeout_must_be_positive_and_finite(tmp_path, capsys, text, needle):
    cfg = tmp_path / "m.yaml"
    cfg.write_text(text + "targets:\n  sim: {url: 'ws://127.0.0.1:9/ws'}\n")
    with pytest.raises(ConfigError, match=rf"{cfg}{needle}"):
        load_config(str(cfg))
    assert main(["--config", str(cfg), "--once"]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}{needle}" in err and "Traceback" not in err


@pytest.mark.parametrize("flag", [["--interval", "0"], ["--timeout", "0s"], ["--timeout", "inf"],
                                  ["--interval", "9" * 400], ["--target", "ws://[::1"],
                                  ["--target", "ws://127.0.0.1:notaport/ws"]])
def test_bad_flags_exit_2_with_one_line(capsys, flag):
    try:
        code = main([*flag, "--once"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert flag[0] in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_sse_probes_do_not_log_every_http_request(tmp_path):
    """httpx logs each request at INFO; the monitor's log carries its own lines only."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/run"
        proc = subprocess.run([sys.executable, "-m", "monitors.monitor", "--once", "--target", url, "--profile", "ag-ui",
                               "--timeout", "5s"], capture_output=True, text=True, timeout=60, cwd=str(ROOT),
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 3, proc.stderr  # every chat refused (HTTP 503): unreachable, as `chatprobe run` says
    assert "HTTP Request" not in proc.stderr and "httpx" not in proc.stderr, proc.stderr
    assert "no verdict" in proc.stdout or "unreachable" in proc.stdout or "failed" in proc.stdout, proc.stdout


def test_parse_listen():
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen(":9464") == ("0.0.0.0", 9464)
    assert parse_listen("metrics.example:9464") == ("metrics.example", 9464)
    for bad in ("9464x", "127.0.0.1:\u0669\u0664\u0666\u0664", "300.1.1.1:9464", "bad host:9464", "[::1:9464", "::1:9464"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


async def test_probe_now_fresh_registry_and_lookup_by_name_only(tmp_path, monkeypatch):
    secret = secrets.token_urlsafe(32)
    sim = AgentSim(SimConfig(port=0, jwt_secret=secret, think=0.001, tool_latency=0.001, seed=1))
    await sim.start()
    try:
        cfg = tmp_path / "m.yaml"
        cfg.write_text(f"targets:\n  sim: {{url: '{sim.url}', jwt_secret_env: SIM_SECRET}}\n")
        monkeypatch.setenv("SIM_SECRET", secret)
        probes = probes_from_config(str(cfg), load_config(str(cfg)), timeout=5)
        mon = Monitor(probes, interval=1, timeout=5, metrics=ChatMetrics(CollectorRegistry()))
        for bad in ("ws://evil/ws", sim.url, "other"):
            with pytest.raises(KeyError):
                mon.lookup(bad, None)
        with pytest.raises(KeyError):
            mon.lookup("sim", "basic")
        first = _values((await mon.probe_now("sim", "probe", 5)).decode())
        second = _values((await mon.probe_now("sim", None, 5)).decode())
        for samples in (first, second):  # each probe counts itself only
            assert _get(samples, "probe_success") == 1
            assert _get(samples, "chatprobe_chats_total", outcome="passed", target="sim", scenario="probe") == 1
        # the continuous metrics are untouched by /probe
        continuous = _values(generate_latest(mon.sinks["sim"].metrics.registry).decode())
        assert _get(continuous, "chatprobe_chats_total") == 0
        rounds = await mon.round()
        assert rounds[0][1] is not None and rounds[0][1].passed
    finally:
        await sim.stop()


class _Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, url, method, timeout, headers, data):
        def send():
            self.calls.append((url, method, data.decode()))
        return send


def test_push_sink_groups_and_keeps_last_success_on_failure():
    rec = _Recorder()
    ok = PushSink("agent.example:443", "basic")
    ok.chat_started("basic")
    ok.run_finished(True)
    assert ok.push("http://pg:9091", "ci", handler=rec)
    url, method, body = rec.calls[-1]
    assert method == "PUT" and "/job/ci/" in url and "/scenario/basic" in url and "/target/" in url
    assert "chatprobe_last_success_timestamp_seconds{" in body

    bad = PushSink("agent.example:443", "basic")
    bad.run_finished(False)
    assert bad.push("http://pg:9091", "ci", handler=rec)
    url, method, body = rec.calls[-1]
    assert method == "POST"
    assert "chatprobe_last_success_timestamp_seconds" not in body
    assert "chatprobe_last_run_timestamp_seconds{" in body


EVIL_STATUS = b"HTTP/1.1 500 \x1b]0;PWNED-TITLE\x07\x1b[2J\x1b[1;1HAll objectives met\x1b]8;;http://evil.example/\x07click\r\n"


def _one_response_server(status_line: bytes) -> tuple[int, threading.Thread]:
    """A raw HTTP server on 127.0.0.1 answering one request (read whole) with the status line given."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)

    def serve() -> None:
        with listener, listener.accept()[0] as conn:
            conn.settimeout(30)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head)[1]) if b"ength" in head else 0
            while len(body) < length:
                body += conn.recv(65536)
            conn.sendall(status_line + b"Content-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


def test_a_pushgateway_s_reason_phrase_cannot_drive_the_terminal():
    """The gateway's reason phrase is its own text: its escape sequences are shown escaped, never sent raw."""
    port, server = _one_response_server(EVIL_STATUS)
    err = io.StringIO()
    sink = PushSink("t:1", "basic", stderr=err)
    sink.run_finished(True)
    assert sink.push(f"http://127.0.0.1:{port}", "ci", timeout=30) is False
    server.join(30)
    line = err.getvalue()
    assert "could not push" in line and "PWNED-TITLE" in line, line
    assert "\x1b" not in line and "\x07" not in line and line.count("\n") == 1, repr(line)
    assert "\\x1b]0;PWNED-TITLE\\x07" in line


@pytest.mark.parametrize("success", [True, False])
def test_a_pushgateway_that_drips_its_answer_is_given_up_at_the_push_timeout(success):
    """urllib's timeout bounds each read, not the answer: a gateway (or a proxy before it) sending its status line a
    byte at a time, each well within the timeout, held `chatprobe run --pushgateway` after its verdict for as long as
    it went on. The push gives up at its timeout, warns in one line and keeps the verdict."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)
    stop = threading.Event()

    def drip() -> None:
        with listener, listener.accept()[0] as conn:
            conn.settimeout(30)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 60_000:
                if stop.wait(0.05):
                    return
                conn.sendall(bytes([byte]))

    server = threading.Thread(target=drip, daemon=True)
    server.start()
    err = io.StringIO()
    sink = PushSink("t:1", "basic", stderr=err)
    sink.run_finished(success)
    pushed: list[bool] = []
    pusher = threading.Thread(target=lambda: pushed.append(sink.push(f"http://127.0.0.1:{listener.getsockname()[1]}",
                                                                      "ci", timeout=1)), daemon=True)
    pusher.start()
    pusher.join(30)  # the whole drip takes 50 minutes: a push waiting on it is still here
    waiting = pusher.is_alive()
    stop.set()
    server.join(30)
    assert not waiting and pushed == [False], "the push still waits on a gateway dripping its answer"
    line = err.getvalue()
    assert "could not push" in line and line.count("\n") == 1, line


def test_usage_errors_show_escape_sequences_escaped(capsys):
    """A ConfigError quotes what it was given (a path, a URL): the monitor's and the proxy's error lines clean it."""
    from monitors.proxy import main as proxy_main

    assert main(["--config", "/nonexistent/evil\x1b[2J\u200b.yaml"]) == 2
    assert proxy_main(["--upstream", "ws://127.0.0.1:1/ws", "--record", "/proc/evil\x1b]0;x\x07"]) == 2
    err = capsys.readouterr().err
    assert "evil\\x1b[2J.yaml" in err and "evil\\x1b]0;x\\x07" in err, err
    assert "\x1b" not in err and "\x07" not in err and "\u200b" not in err


def test_push_failure_is_one_line_and_no_raise(capsys):
    sink = PushSink("t:1", "basic")
    sink.run_finished(True)

    def broken(url, method, timeout, headers, data):
        def send():
            raise OSError("connection refused")
        return send

    assert sink.push("http://user:pw@pg.example:9091", "ci", handler=broken) is False
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not push" in err[0] and "pw" not in err[0]


def test_the_embedded_agentsim_is_the_target_agentsim_as_in_run(capsys):
    """With no --target the monitor probes its embedded agentsim, whose port changes every start: its `target` label
    (and the name /probe?target= looks up) is `agentsim`, as `chatprobe run` calls it, never that host:port."""
    assert main(["--once", "--scenario", "probe"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("agentsim / probe: "), out
    assert "127.0.0.1" not in out


@pytest.mark.timeout(60)
async def test_a_target_that_never_answers_the_handshake_is_an_error_chat_in_every_round(tmp_path):
    """FAILED on the code before it: the probe's deadline capped both the scenario's max_duration and its
    connect_timeout to the same instant, and whichever timer fired first won. When the run's stop came first (the
    connection starts a moment after the run: always so in the first round, with its start-up work, and in others
    by chance) the chat had been neither sent nor refused, so it was counted nowhere: such a round against a server
    that takes the TCP connection and never answers its upgrade (a hung process, a full accept queue behind a
    balancer) added no chat and no connection attempt to any series; every round raced so with a scenario's default
    connect_timeout (10 s) under a monitor's --interval 10s. ChatEventsMissing and ChatsFailing read fewer chats than were
    probed (none at worst: their traffic guard never met) while the target was down."""
    held: list[socket.socket] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def accept_and_hold() -> None:  # the TCP handshake completes; the WebSocket upgrade is never answered
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept_and_hold, daemon=True)
    thread.start()
    try:
        cfg = tmp_path / "m.yaml"
        cfg.write_text(f"targets:\n  hung: {{url: 'ws://127.0.0.1:{listener.getsockname()[1]}/ws', auth: none}}\n")
        timeout = 1.0
        probes = probes_from_config(str(cfg), load_config(str(cfg)), timeout=timeout)
        registry = CollectorRegistry()
        mon = Monitor(probes, interval=timeout, timeout=timeout, metrics=ChatMetrics(registry))
        rounds = 8
        for _ in range(rounds):
            await mon.round()
        samples = _values(generate_latest(registry).decode())
        # Every round's chat: an `error` chat whose connection timed out, each in its series.
        assert _get(samples, "chatprobe_chats_total", outcome="error", target="hung") == rounds, samples
        assert _get(samples, "chatprobe_connections_total", result="timeout", target="hung") == rounds
        assert _get(samples, "chatprobe_chats_in_flight") == 0
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for s in held:
            s.close()


@pytest.mark.timeout(60)
async def test_a_target_whose_chats_hang_neither_halves_its_own_probing_nor_delays_the_other_targets(tmp_path,
                                                                                                   monkeypatch):
    """FAILED on the code before it: the monitor probed every target in one round and waited for the whole round.
    A target whose chats hang (its agent stalls mid-run) holds its probe to the deadline, which is the interval by
    default: the round ended just past the tick, which was then skipped, so every target, the healthy ones too, was
    probed every other interval. At `--interval 1m` that is 2.5 chats in 5 minutes, under the alerts' guard of 4:
    ChatEventsMissing and ChatsFailing could not page for the stalled target, nor for any other of that monitor."""
    import asyncio
    import time

    secret = secrets.token_urlsafe(32)
    healthy = AgentSim(SimConfig(port=0, jwt_secret=secret, think=0.001, tool_latency=0.001, seed=1))
    stalled = AgentSim(SimConfig(port=0, jwt_secret=secret, think=0.001, tool_latency=0.001, seed=1,
                                 faults=["stall=60s@1.0"]))
    await healthy.start()
    await stalled.start()
    stop = asyncio.Event()
    task: asyncio.Task | None = None
    try:
        cfg = tmp_path / "m.yaml"
        cfg.write_text(f"targets:\n  healthy: {{url: '{healthy.url}', jwt_secret_env: SIM_SECRET}}\n"
                       f"  stalled: {{url: '{stalled.url}', jwt_secret_env: SIM_SECRET}}\n")
        monkeypatch.setenv("SIM_SECRET", secret)
        interval = 1.0  # and the deadline, as the monitor's default deadline is its interval
        probes = probes_from_config(str(cfg), load_config(str(cfg)), timeout=interval)
        registry = CollectorRegistry()
        mon = Monitor(probes, interval=interval, timeout=interval, metrics=ChatMetrics(registry))
        started = time.monotonic()
        task = asyncio.create_task(mon.run_forever(stop))

        def chats(target: str) -> float:
            return _get(_values(generate_latest(registry).decode()), "chatprobe_chats_total", target=target)

        want = 8
        # One probe per tick needs `want` intervals; every other tick skipped, twice as long.
        deadline = started + want * interval * 1.4 + 0.5
        while chats("healthy") < want or chats("stalled") < want - 1:
            assert not task.done(), task
            assert time.monotonic() < deadline, (
                f"after {time.monotonic() - started:.1f}s: {chats('healthy'):g} healthy and {chats('stalled'):g} "
                f"stalled chats, probing every {interval:g}s")
            await asyncio.sleep(0.05)  # wait-ok: the poll interval of a deadline loop
        samples = _values(generate_latest(registry).decode())
        assert _get(samples, "chatprobe_chats_total", target="healthy", outcome="passed") == chats("healthy")
        # The stalled target's chats are cut at the deadline: incomplete, each missing its events.
        assert _get(samples, "chatprobe_chats_total", target="stalled", outcome="incomplete") == chats("stalled")
    finally:
        stop.set()
        if task is not None:
            async with asyncio.timeout(10):
                await task
        await healthy.stop()
        await stalled.stop()


@pytest.mark.timeout(60)
async def test_a_server_that_never_answers_the_closing_handshake_is_a_probe_that_ran(tmp_path, caplog):
    """FAILED on the code before it: a server that takes the chat's message, sends nothing and never answers the
    client's close frame holds the probe past its deadline by the close's own wait (2 s, the monitor's grace), so
    the probe was cut and returned no run. Its chat had been judged (`incomplete`), but the run's timestamp never
    moved, so ChatProbeDown paged "the probe stopped, the chat alerts are blind" for a target every one of whose
    chats was counted; and the cut was logged at every interval, where the monitor logs a verdict when it changes."""
    import logging
    import time

    from tests.integration.hostile_ws import raw, read_until_gone, upgrade, welcome_and_message

    async def silent(reader, writer, head, srv) -> None:
        writer.write(upgrade(head))
        await writer.drain()
        await welcome_and_message(reader, writer)
        await read_until_gone(reader)  # the close frame read and never answered

    async with raw(silent) as srv:
        cfg = tmp_path / "m.yaml"
        cfg.write_text(f"targets:\n  silent: {{url: '{srv.url}', auth: none}}\n")
        probes = probes_from_config(str(cfg), load_config(str(cfg)), timeout=1)
        registry = CollectorRegistry()
        mon = Monitor(probes, interval=1, timeout=1, metrics=ChatMetrics(registry))
        rounds = 3
        with caplog.at_level(logging.INFO, logger="chatprobe.monitor"):
            for _ in range(rounds):
                before = time.time()
                await mon.round()
                samples = _values(generate_latest(registry).decode())
                assert _get(samples, "chatprobe_last_run_timestamp_seconds", target="silent") >= before, samples
        assert _get(samples, "chatprobe_chats_total", target="silent", outcome="incomplete") == rounds
        assert _get(samples, "chatprobe_chats_in_flight", target="silent") == 0
        assert _get(samples, "chatprobe_last_success_timestamp_seconds", target="silent") == 0
        cuts = [r for r in caplog.records if "did not wind down" in r.getMessage()]
        assert len(cuts) == 1, [r.getMessage() for r in caplog.records]
