"""End-to-end fixtures: real subprocesses (agentsim, `chatprobe monitor`, Prometheus, Pushgateway) on free loopback
ports with their own temp dirs, never the system's daemons; each one is stopped in teardown."""
from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
T = TypeVar("T")


def chatprobe_bin() -> str:
    exe = VENV_BIN / "chatprobe"
    if not exe.exists():
        exe = ROOT / ".venv" / "bin" / "chatprobe"
    return str(exe)


def system_binary(name: str) -> str:
    """A Debian-installed server binary; missing is a failure, not a skip (the test command installs them)."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/install-system-deps.sh (or apt-get install {name})")
    return path


def free_port() -> int:
    """A loopback port nothing listened on a moment ago. Another process (a parallel worker's) can take it before the
    process it is meant for binds it: only for a process that must be told its port (start_on_free_port); a server that
    can bind port 0 itself and say which port it got is started so (agentsim, the monitor, Prometheus, Pushgateway), and
    a port where connections must be refused is a held `refused_port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.2,
             diagnostics: Callable[[], str] | None = None) -> T:
    """Poll `condition` until it returns something truthy, within the deadline; fail saying what never happened."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            extra = f"\nlast error: {last_exc!r}" if last_exc else ""
            if diagnostics is not None:
                extra += "\n" + diagnostics()
            pytest.fail(f"within {timeout:g}s: {what}{extra}")
        time.sleep(interval)  # wait-ok: the poll interval of a deadline loop, not a wait for a condition


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    stdout: Path
    stderr: Path
    info: dict = field(default_factory=dict)

    def out(self) -> str:
        return self.stdout.read_text(errors="replace") if self.stdout.exists() else ""

    def err(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""

    def tail(self, n: int = 30) -> str:
        lines = (self.out() + self.err()).splitlines()[-n:]
        return f"--- {self.name} (exit {self.popen.poll()}) ---\n" + "\n".join(lines)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_for_line(self, pattern: str, timeout: float = 20.0, stderr: bool = False) -> re.Match:
        rx = re.compile(pattern)

        def found() -> re.Match | None:
            m = rx.search(self.err() if stderr else self.out())
            if m is None and not self.alive():
                pytest.fail(f"{self.name} exited before printing {pattern!r}\n{self.tail()}")
            return m

        return wait_for(found, timeout, f"{self.name} prints {pattern!r}", diagnostics=self.tail)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


class ProcGroup:
    """`start(name, argv, env=..., cwd=...)` → Proc, its output in `workdir` (its working directory too, unless `cwd`
    says another: a "machine" of its own, for relative paths); `stop_all()` stops every one started."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Proc] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Proc:
        # This checkout's code, not whichever one the virtualenv's editable install points at (a worktree's
        # tests otherwise ran the main checkout's harness in every child started from tmp_path).
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "PYTHONPATH": path, **(env or {})}
        out, err = self.workdir / f"{name}.out", self.workdir / f"{name}.err"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            popen = subprocess.Popen(argv, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, env=full_env,
                                     cwd=cwd or self.workdir, start_new_session=True)
        proc = Proc(name, popen, out, err)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


PORT_ATTEMPTS = 5


def port_taken_first(proc: Proc, port: int, timeout: float = 30.0) -> bool:
    """Wait until `proc` itself listens on `port` (False) or exits: True when it says the address was in use (another
    process took the port between free_port() and its bind), False when it exited otherwise (the test judges that).
    Whose the port is comes from the process's own sockets, never from a request to the port, which another process
    may be answering."""
    def settled() -> str | None:
        if not proc.alive():
            return "exited"
        try:
            sockets = psutil.Process(proc.popen.pid).net_connections("tcp")
        except psutil.NoSuchProcess:
            return "exited"
        return "listens" if any(s.status == psutil.CONN_LISTEN and s.laddr.port == port for s in sockets) else None

    if wait_for(settled, timeout, f"{proc.name} listens on port {port}", interval=0.05,
                diagnostics=proc.tail) == "listens":
        return False
    return "address already in use" in (proc.out() + proc.err()).lower()


def start_on_free_port(procs: ProcGroup, name: str, argv: Callable[[int], list[str]],
                       env: dict[str, str] | None = None) -> tuple[Proc, int]:
    """A process that must be told its port up front (Locust's master port and --chatprobe-metrics-port, the proxy's
    --metrics-listen: port 0 is off for the last two) → (Proc, port) once it listens there, or once it exited for a
    reason of its own. When another process took the port first it exits saying so, and is started again on another
    port, at most PORT_ATTEMPTS times."""
    for _ in range(PORT_ATTEMPTS):
        port = free_port()
        proc = procs.start(name, argv(port), env=env)
        if not port_taken_first(proc, port):
            return proc, port
    pytest.fail(f"{name}: {PORT_ATTEMPTS} ports found free were each taken before it could listen there")


# What Prometheus and the Pushgateway log (at level info) once they listen: the port they got for port 0.
LISTENING_ON = r'msg="Listening on" address=127\.0\.0\.1:(\d+)'


@pytest.fixture
def procs(tmp_path: Path):
    """`procs.start(name, argv, env=...)` → Proc; every process started here is stopped at teardown."""
    group = ProcGroup(tmp_path)
    yield group
    group.stop_all()


def start_agentsim(procs: ProcGroup, faults: list[str] = (), seed: int = 11, think: str = "0.002-0.01",
                   tool_latency: str = "0.001-0.005", ground_truth: Path | None = None):
    """agentsim as a subprocess → (Proc, ws URL, secret env); `ground_truth`: its JSON Lines of what it did."""
    secret = secrets.token_urlsafe(32)
    argv = [sys.executable, "-m", "agentsim", "--port", "0", "--seed", str(seed), "--think", think,
            "--tool-latency", tool_latency]
    if ground_truth is not None:
        argv += ["--ground-truth", str(ground_truth)]
    for f in faults:
        argv += ["--fault", f]
    proc = procs.start("agentsim", argv, env={"AGENTSIM_JWT_SECRET": secret})
    url = proc.wait_for_line(r"agentsim listening on (ws://\S+)").group(1)
    return proc, url, {"E2E_JWT_SECRET": secret}


@pytest.fixture
def agentsim(procs):
    """`agentsim(faults=[...], seed=N)` → (Proc, ws URL, secret env)."""
    return functools.partial(start_agentsim, procs)


def start_monitor(procs: ProcGroup, *args: str, env: dict[str, str] | None = None):
    """`chatprobe monitor` as a subprocess → (Proc, base http URL) once it printed its listening line."""
    proc = procs.start("monitor", [chatprobe_bin(), "monitor", "--listen", "127.0.0.1:0", *args], env=env)
    base = proc.wait_for_line(r"chatprobe monitor listening on (http://\S+)").group(1)
    return proc, base


@pytest.fixture
def monitor(procs):
    """`monitor(*args, env=...)` → (Proc, base http URL) once it printed its listening line."""
    return functools.partial(start_monitor, procs)


def start_prometheus(procs: ProcGroup, scrape_targets: list[str], rule_file: Path | None = None,
                     scrape_configs: list[dict] | None = None):
    """Prometheus (its config and data in the group's workdir) → (Proc, base URL), ready to answer queries. It scrapes
    `scrape_targets` as the job `chatprobe`, or, given `scrape_configs`, those jobs as written (an operator's own
    config: its jobs, relabelling, timeouts), every second by default."""
    import yaml

    binary = system_binary("prometheus")
    cfg = procs.workdir / "prometheus.yml"
    config: dict[str, Any] = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}}
    if rule_file is not None:
        config["rule_files"] = [str(rule_file)]
    config["scrape_configs"] = scrape_configs if scrape_configs is not None else [
        {"job_name": "chatprobe", "static_configs": [{"targets": list(scrape_targets)}]}]
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    data = procs.workdir / "tsdb"
    data.mkdir()
    proc = procs.start("prometheus", [binary, f"--config.file={cfg}", f"--storage.tsdb.path={data}",
                                       "--web.listen-address=127.0.0.1:0", "--log.level=info"])
    base = f"http://127.0.0.1:{proc.wait_for_line(LISTENING_ON, 30, stderr=True).group(1)}"

    def ready() -> bool:
        if not proc.alive():
            pytest.fail(f"prometheus exited\n{proc.tail()}")
        return httpx.get(f"{base}/-/ready", timeout=2).status_code == 200

    wait_for(ready, 30, "prometheus is ready", diagnostics=proc.tail)
    return proc, base


@pytest.fixture
def prometheus(procs):
    """`prometheus(scrape_targets, rule_file)` → (Proc, base URL), ready to answer queries."""
    return functools.partial(start_prometheus, procs)


@pytest.fixture
def pushgateway(procs):
    def start():
        binary = system_binary("prometheus-pushgateway")
        # An empty --persistence.file keeps metrics in memory only: the packaged default
        # (/var/lib/prometheus/pushgateway.data) would carry groups from one run, or a system service, to the next.
        proc = procs.start("pushgateway", [binary, "--web.listen-address=127.0.0.1:0", "--log.level=info",
                                           "--persistence.file="])
        base = f"http://127.0.0.1:{proc.wait_for_line(LISTENING_ON, 20, stderr=True).group(1)}"

        def ready() -> bool:
            if not proc.alive():
                pytest.fail(f"pushgateway exited\n{proc.tail()}")
            return httpx.get(f"{base}/-/ready", timeout=2).status_code == 200

        wait_for(ready, 20, "the pushgateway is ready", diagnostics=proc.tail)
        groups = httpx.get(f"{base}/api/v1/metrics", timeout=5).json()["data"]
        assert groups == [], f"the pushgateway did not start empty: {len(groups)} groups"
        return proc, base

    return start


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """A /metrics page as {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url, timeout=5).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples named `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lb), v in samples.items() if n == name and want <= lb)


# Debian's Chromium, headless, with the flags that keep it off this machine's closed network.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync")


@contextlib.contextmanager
def chromium(workdir: Path, *, window: str = "1000,800", logs: dict[str, str] | None = None,
             page_load_timeout: float = 15) -> Iterator[Any]:
    """Debian's Chromium + ChromeDriver, headless, its profile and driver log under `workdir`; `logs` are
    goog:loggingPrefs (browser console, performance events). Missing binaries fail the test (never a skip, never a
    download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = system_binary("chromium")
    for flag in (*CHROMIUM_FLAGS, f"--window-size={window}", f"--user-data-dir={workdir / 'chromium-profile'}"):
        options.add_argument(flag)
    if logs:
        options.set_capability("goog:loggingPrefs", logs)
    service = Service(executable_path=system_binary("chromedriver"), log_output=str(workdir / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(page_load_timeout)
        yield driver
    finally:
        driver.quit()


def query(prom: str, expr: str) -> list[dict]:
    """A PromQL instant query against Prometheus at `prom` → its result vector (or matrix)."""
    import httpx

    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]
