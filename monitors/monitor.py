"""`chatprobe monitor`: probe named targets every interval into /metrics, and answer blackbox-style /probe.

One asyncio loop runs the probes; a WSGI server with a fixed pool of threads (monitors.httpserver) serves the
HTTP side and hands each /probe to the loop. Nothing of a probe outlives it but the bounded counters of MetricsSink
and its row among the recent probes (monitors.probes_page: a count per probe, a byte budget for failing details).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

from prometheus_client import CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from harness import redact
from harness.durations import Seconds, parse_duration
from harness.errors import MESSAGE_LIMIT, ExitCode, os_reason, unknown_flag_hint
from harness.events import Outcome
from harness.profiles import load_profile, loaded_once
from harness.report import why_failed
from harness.results import ScenarioRun, exit_code
from harness.runner import run_scenario
from harness.scenario import Bool, Scenario, load_scenario, where_in
from harness.targets import (
    FILES_KEPT,
    FLAGS,
    TARGET_NAME_PATTERN,
    Target,
    TargetOptions,
    TokenProvider,
    add_target_args,
    check_credentials,
    check_scenario_fits,
    check_tls_fits,
    connections_at_once,
    embedded_sim,
    make_target,
    open_files_short,
    options_from_args,
    read_token,
)
from harness.yamlfile import ConfigError, line_of, load_model

from . import httpserver
from .metrics import ChatMetrics, MetricsSink, default_metrics
from .probes_page import RecentProbes

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_LISTEN = "127.0.0.1:9464"
DEFAULT_INTERVAL = 15.0
MAX_TIMEOUT = 60.0
# A short interval must not cut a normal chat short: the default deadline is never below this.
MIN_DEFAULT_TIMEOUT = 10.0
# A probe that overruns its deadline gets this long to wind down (judge its chats, close sockets).
GRACE = 2.0
# How long the /probe runs in flight as the monitor stops get to end (their chats judged, sockets closed) and be
# answered: a closing handshake's bound (3 s) and some.
WIND_DOWN = 5.0
# A probe's connect_timeout ends at most at this share of its deadline: a connection that never completes its
# handshake is then a `timeout` and its chat an `error` before the run's stop, never a chat the stop left uncounted.
CONNECT_SHARE = 0.8
# A round (`--once`) runs this many probes at once at most, the next starting as one ends. All at once, 1,000
# probes' first steps queued on the one event loop for seconds, and a connection refused at once was judged after its
# connect_timeout had run out, a `timeout` (129 to 565 of 1,000 probes of a closed port, by the machine's load), and
# 3,000 ended without a verdict. At most this many, what waits on the loop is a fraction of a second (~3 ms of CPU
# a probe), whatever the number of targets; a round of N targets that all hang takes ceil(N / ROUND_AT_ONCE)
# deadlines.
ROUND_AT_ONCE = 200
# The daemon starts each probe at its own offset into the interval, as Prometheus spreads its scrapes: a share of a
# window of this much per probe, up to the whole interval. Started together, every probe's first steps queued on the
# one event loop at each tick (~3 ms of CPU each, seconds for thousands), and a refusal was seen after the probe's
# connect_timeout; spread, 1,000 probes at an interval of 15 s start ~67 a second. One probe waits 50 ms at most.
SPREAD_STEP = 0.05
# ... and a window of at most this: a restart delays no probe's first run by more (ChatProbeDown pages when a target's
# last run is over 300 s old for 5 minutes), and 4,000 probes (about as many as a config may name) start ~67 a second.
MAX_SPREAD = 60.0

log = logging.getLogger("chatprobe.monitor")

TargetName = Annotated[str, StringConstraints(pattern=TARGET_NAME_PATTERN)]


def quiet_http_loggers() -> None:
    """httpx logs every request at INFO ("HTTP Request: POST ..."): a line per SSE probe drowns the monitor's own
    log, and a URL may carry what a log should not. Their warnings and errors still show."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TargetConfig(_Strict):
    """One named target of `--config`; the fields mirror `chatprobe run`'s target flags."""

    url: str
    profile: str | None = None
    auth: Literal["header", "subprotocol", "none"] = "header"
    token_env: str | None = None
    token_file: str | None = None
    jwt_secret_env: str | None = None
    ca_file: str | None = None
    client_cert: str | None = None  # `--client-cert`: mutual TLS
    client_key: str | None = None  # `--client-key`
    insecure: Bool = False  # as YAML writes it, like a scenario's switches: `insecure: "no"` or 1 is an error
    headers: dict[str, str] = Field(default_factory=dict)  # `--header`: NAME: value
    header_env: dict[str, str] = Field(default_factory=dict)  # `--header-env`: NAME: the variable holding the value
    subprotocols: list[str] | None = None  # `--subprotocol`, each: offered in this order (None: the profile's)
    scenarios: list[str] | None = Field(default=None, min_length=1)


# A deadline or a period: more than 0 and finite (0 would spin, inf would wait forever).
PositiveSeconds = Annotated[Seconds, Field(gt=0, allow_inf_nan=False)]


class MonitorConfig(_Strict):
    targets: dict[TargetName, TargetConfig] = Field(min_length=1)
    scenarios: list[str] = Field(default_factory=lambda: ["probe"], min_length=1)
    interval: PositiveSeconds | None = None
    timeout: PositiveSeconds | None = None


@dataclass(frozen=True)
class Probe:
    """One (target, scenario) pair the monitor runs every interval and /probe can run on demand."""

    target: Target
    scenario: Scenario

    @property
    def key(self) -> tuple[str, str]:
        return (self.target.name, self.scenario.name)


class _Parser(argparse.ArgumentParser):
    given: list[str] = []

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self.given = list(sys.argv[1:] if args is None else args)  # for a usage error to look in (unknown_flag_hint)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        hinted = unknown_flag_hint(self, message, self.given)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {redact.clean(hinted, MESSAGE_LIMIT)}\n")


def _duration_arg(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 and finite")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="chatprobe monitor",
                description="Probe agent chat servers continuously and serve / (the recent probes; a failing one's "
                            "violations and event timeline), /metrics (the probes' counters) and "
                            "/probe?target=NAME&scenario=NAME (one probe now, blackbox_exporter style).")
    add_target_args(p)
    p.add_argument("--scenario", action="append", default=None, metavar="NAME|FILE",
                   help="scenario to probe with, built-in name or YAML file; repeatable (default: probe)")
    p.add_argument("--config", metavar="FILE",
                   help=f"YAML with named targets (targets: {{NAME: {{{', '.join(TargetConfig.model_fields)}}}}}) "
                        f"and {', '.join(k for k in MonitorConfig.model_fields if k != 'targets')}; instead of "
                        "--target (--interval and --timeout override the file's)")
    p.add_argument("--interval", type=_duration_arg, default=None, metavar="DURATION",
                   help=f"time between the starts of one probe's runs (default {DEFAULT_INTERVAL:g}s)")
    p.add_argument("--timeout", type=_duration_arg, default=None, metavar="DURATION",
                   help=f"deadline of one probe (default the interval, within {MIN_DEFAULT_TIMEOUT:g}-{MAX_TIMEOUT:g}s); "
                        "the scenario's connect_timeout is held within 80%% of it; each target and scenario is probed "
                        "on its own schedule, one that overruns the interval again as it ends")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"address of /, /metrics and /probe (default {DEFAULT_LISTEN}; port 0 = any free port)")
    p.add_argument("--once", action="store_true", help="run one probe round, print the verdicts and exit as "
                   "`chatprobe run` does: 0 all passed, 1 failed (or a probe could not run), 2 usage or "
                   "credentials refused, 3 unreachable, 130/143 interrupted by Ctrl-C / SIGTERM (the chats in flight "
                   "judged as they stand, the verdicts printed); serves nothing")
    return p


# -- building the probes ---------------------------------------------------------------------------------------

def _load_scenarios(names: Iterable[str]) -> list[Scenario]:
    out = [load_scenario(name) for name in names]
    seen: set[str] = set()
    for s in out:
        if s.name in seen:
            raise ConfigError(f"scenario name {s.name!r} is given twice: /probe and the labels need unique names")
        seen.add(s.name)
    return out


def _relative_to(name: str, base: Path | None) -> str:
    """A YAML file named in the config is found next to the config; a built-in name is left alone."""
    if base is not None and name.endswith((".yaml", ".yml")) and not Path(name).is_absolute():
        return str(base / name)
    return name


def _cap(scenario: Scenario, timeout: float) -> Scenario:
    """The scenario bounded by the probe's deadline, so the runner itself stops and judges every chat. Its
    connect_timeout ends before that stop (CONNECT_SHARE): capped to the same instant, the two raced, and a target
    that took the TCP connection and never answered the upgrade was counted in no chat whenever the stop won."""
    update: dict[str, Any] = {}
    if scenario.max_duration > timeout:
        update["max_duration"] = timeout
    if scenario.connect_timeout > timeout * CONNECT_SHARE:
        update["connect_timeout"] = timeout * CONNECT_SHARE
    return scenario.model_copy(update=update) if update else scenario


def _fits(scenario: Scenario, source: str, target: Target) -> None:
    """A scenario its target cannot carry (harness.targets.check_scenario_fits: a dialect it was not written for, two
    chats in flight per user or a `send_raw:` step over SSE) refused as `run` refuses it, naming the scenario's file,
    line and field."""
    try:
        check_scenario_fits(scenario, target)
    except ConfigError as exc:
        if exc.field is None:
            raise
        raise ConfigError(f"{where_in(source, (exc.field,))}: {exc}", field=exc.field) from None


def probes_from_args(opts: TargetOptions, scenario_names: list[str] | None, url: str, tokens: TokenProvider,
                     timeout: float) -> list[Probe]:
    names = scenario_names or ["probe"]
    probes = []
    with loaded_once():
        for name, s in zip(names, _load_scenarios(names), strict=True):
            target = make_target(opts, tokens, s.profile, url=url)
            _fits(s, name, target)
            probes.append(Probe(target, _cap(s, timeout)))
    return probes


def load_config(path: str) -> MonitorConfig:
    return load_model(MonitorConfig, path)


def _field_error(path: str, loc: tuple[Any, ...], message: str, line_loc: tuple[Any, ...] = ()) -> ConfigError:
    """A ConfigError as `file:LINE: field 'a.b.c': message`, the line found in the file by the field's location (or
    by `line_loc`, an entry within it)."""
    line = line_of(path, line_loc or loc)
    where = f"{path}:{line}" if line else path
    return ConfigError(f"{where}: field '{'.'.join(map(str, loc))}': {message}")


def _target_error(path: str, name: str, exc: ConfigError) -> ConfigError:
    """A target option's error, named by its field in the file (`targets.prod.ca_file`), not by its flag."""
    if exc.field is not None:
        loc = ("targets", name, exc.field)
        # A header: the line of its name (which the detail shows); a subprotocol: the line of its item.
        return _field_error(path, loc, exc.detail, (*loc, exc.key) if exc.key is not None else ())
    return _field_error(path, ("targets", name), str(exc))


def probes_from_config(path: str, config: MonitorConfig, timeout: float) -> list[Probe]:
    """The probes of a config file; every error names the file, the line and the field it is about. A profile (and
    its compiled decoder) and a scenario are loaded once per name or path, and shared by the targets naming it: per
    target, 1,000 targets cost ~2 s of CPU to start and ~10 ms more each at their first probe (bench/monitor_targets.py)."""
    with loaded_once():
        return _probes_from_config(path, config, timeout)


def _probes_from_config(path: str, config: MonitorConfig, timeout: float) -> list[Probe]:
    base = Path(path).resolve().parent
    probes: list[Probe] = []
    loaded: dict[str, Scenario] = {}  # by the name or path it was loaded from
    capped: dict[int, Scenario] = {}  # by the id of the loaded one (alive in `loaded`)
    for name, tc in config.targets.items():
        ca_file, token_file, client_cert, client_key = (
            str(base / p) if p and not Path(p).is_absolute() else p
            for p in (tc.ca_file, tc.token_file, tc.client_cert, tc.client_key))
        profile = _relative_to(tc.profile, base) if tc.profile else tc.profile  # "": refused by make_target
        if profile is not None:
            try:
                load_profile(profile)
            except ConfigError as exc:
                message = str(exc).removeprefix("--profile ")  # a config has no flags: the field is named
                raise _field_error(path, ("targets", name, "profile"), message) from None
        opts = TargetOptions(url=tc.url, name=name, profile=profile, auth=tc.auth, token_env=tc.token_env,
                             token_file=token_file, jwt_secret_env=tc.jwt_secret_env, ca_file=ca_file,
                             client_cert=client_cert, client_key=client_key, insecure=tc.insecure,
                             headers=tuple(tc.headers.items()),
                             header_env=tuple(tc.header_env.items()),
                             subprotocols=tuple(tc.subprotocols) if tc.subprotocols is not None else None)
        try:
            tokens = read_token(opts)
        except ConfigError as exc:
            raise _target_error(path, name, exc) from None
        names = tc.scenarios or config.scenarios
        prefix: tuple[Any, ...] = ("targets", name, "scenarios") if tc.scenarios else ("scenarios",)
        scenarios: list[Scenario] = []
        for i, scenario_name in enumerate(names):
            where = _relative_to(scenario_name, base)
            try:
                scenarios.append(loaded[where] if where in loaded else loaded.setdefault(where, load_scenario(where)))
            except ConfigError as exc:
                raise _field_error(path, (*prefix, i), str(exc)) from None
            if any(s.name == scenarios[-1].name for s in scenarios[:-1]):
                raise _field_error(path, (*prefix, i), f"scenario name {scenarios[-1].name!r} is given twice: "
                                   "/probe and the labels need unique names")
        for i, (scenario_name, s) in enumerate(zip(names, scenarios, strict=True)):
            try:
                target = make_target(opts, tokens, s.profile)
            except ConfigError as exc:
                raise _target_error(path, name, exc) from None
            try:
                _fits(s, _relative_to(scenario_name, base), target)
            except ConfigError as exc:
                raise _field_error(path, (*prefix, i), str(exc)) from None
            if id(s) not in capped:
                capped[id(s)] = _cap(s, timeout)
            probes.append(Probe(target, capped[id(s)]))
    return probes


def check_open_files(probes: list[Probe], *, embedded: bool, serving: bool, config: str | None) -> int:
    """Probes whose connections at once need more file descriptors than the process may open (`ulimit -n`, raised up to
    the hard limit if need be) are a usage error at start, as `run` refuses such a scenario: each connection past the
    limit failed as the monitor's own `Too many open files`, reported as the target's `refused` connection and
    `probe_success 0`, paging for a target that was never asked. Every probe may be in flight at once (each on its own
    schedule), and while serving, /probe's runs beside them; the embedded agentsim serves its connections from this
    process (two descriptors each). The descriptors they need, with those kept for the process's own: what the HTTP
    side leaves them (its own few connections, at the least, come out of those kept)."""
    if not probes:
        return FILES_KEPT
    each = 2 if embedded else 1
    widest = max(probes, key=lambda p: connections_at_once(p.scenario)[0])
    most = connections_at_once(widest.scenario)[0]
    on_demand = httpserver.MAX_CONCURRENT_PROBES * most if serving else 0
    n = sum(connections_at_once(p.scenario)[0] for p in probes) + on_demand
    need = n * each + FILES_KEPT
    if (limit := open_files_short(need)) is None:
        return need
    alone = f", {most:,} for scenario {widest.scenario.name!r} alone" if most > 1 else ""
    demand = f" with {on_demand:,} for /probe's runs beside them" if on_demand else ""
    served = ", each also served by the embedded agentsim (two files a connection)" if embedded else ""
    message = (f"{len(probes):,} probes (targets x scenarios) hold {n:,} connections at once{demand}{alone}{served}: "
               f"they need {need:,} open files ({FILES_KEPT:,} kept for the process's own), and this process may open "
               f"{limit:,} (`ulimit -n`): probe fewer targets or scenarios, or raise the limit")
    raise _field_error(config, ("targets",), message) if config is not None else ConfigError(message)


# -- probing ---------------------------------------------------------------------------------------------------

class Monitor:
    """Runs probes: every interval into the process-wide metrics, or once into a fresh registry for /probe."""

    def __init__(self, probes: list[Probe], interval: float, timeout: float,
                 metrics: ChatMetrics | None = None) -> None:
        self.probes = probes
        self.by_key = {p.key: p for p in probes}
        self.interval = interval
        self.timeout = timeout
        m = metrics or default_metrics()
        # One sink per target for the life of the process: its label sets are fixed by the config.
        self.sinks = {p.target.name: MetricsSink(m, p.target.name, "synthetic") for p in probes}
        self._state: dict[tuple[str, str], str] = {}
        self.recent = RecentProbes(self.by_key)  # what the / page lists
        self._on_demand: set[asyncio.Task] = set()  # the /probe runs in flight (wind_down)

    async def run_probe(self, probe: Probe, sink: MetricsSink, timeout: float | None = None,
                        stop: asyncio.Event | None = None) -> ScenarioRun | None:
        """One scenario run against one target, bounded by the deadline, or cut short when `stop` is set (its chats
        in flight judged as they stand, as `run` stops); never raises (but for cancellation)."""
        timeout = self.timeout if timeout is None else timeout
        scenario = _cap(probe.scenario, timeout)
        # Said once, when the probe's verdict turns to none, not every interval (a daemon's log stays readable).
        say = log.warning if self._state.get(probe.key) != "no verdict" else log.debug
        try:
            async with asyncio.timeout(timeout + GRACE):
                run = await run_scenario(scenario, probe.target, sink, user_prefix=None, stop=stop)
            if probe.target.websocket_client.note in run.warnings:  # picows refused a valid answer: said once
                log.warning("%s / %s: %s", *probe.key, probe.target.websocket_client.note)
            return run
        except TimeoutError:
            say("%s / %s: the probe did not wind down within its deadline of %gs and %gs more", *probe.key, timeout,
                GRACE)
            # Its chats were judged at the deadline (a server that never answers the closing handshake holds only
            # the close): the probe did run. Without this its run timestamp never moved and ChatProbeDown paged
            # "the probe stopped" for a target whose every chat was counted.
            sink.run_finished(False)
        except Exception as exc:  # a bug in one probe must not stop the monitor, which would go blind
            log.error("%s / %s: the probe failed: %s: %s", *probe.key, type(exc).__name__, redact.clean(exc, 1000))
        return None

    async def _timed(self, probe: Probe, sink: MetricsSink, timeout: float | None = None,
                     stop: asyncio.Event | None = None) -> tuple[ScenarioRun | None, float, float]:
        """The probe's run, its start (epoch seconds) and how long it took."""
        started, t0 = time.time(), time.monotonic()
        run = await self.run_probe(probe, sink, timeout, stop)
        return run, started, time.monotonic() - t0

    async def round(self, stop: asyncio.Event | None = None) -> list[tuple[Probe, ScenarioRun | None]]:
        """Every probe once, ROUND_AT_ONCE of them at a time at most (until `stop` is set: each probe's chats in
        flight then judged as they stand, those not started yet left without a verdict)."""
        slots = asyncio.Semaphore(ROUND_AT_ONCE)

        async def one(p: Probe) -> tuple[ScenarioRun | None, float, float]:
            async with slots:
                if stop is not None and stop.is_set():
                    return None, time.time(), 0.0
                return await self._timed(p, self.sinks[p.target.name], stop=stop)

        timed = await asyncio.gather(*(one(p) for p in self.probes))
        for probe, (run, started, took) in zip(self.probes, timed, strict=True):
            self._note(probe, run, started, took)
        return [(probe, run) for probe, (run, _, _) in zip(self.probes, timed, strict=True)]

    def _note(self, probe: Probe, run: ScenarioRun | None, started: float, took: float,
              via: str = "interval") -> None:
        """Keep the probe for the / page; log its verdict when it changes, not every round: a daemon's log stays
        readable for months."""
        state = verdict(run)
        self.recent.add(*probe.key, run, state, started, took, via=via,
                        first_event_limit=probe.scenario.expect.first_event_limit)
        if via != "interval":
            return
        if self._state.get(probe.key) != state:
            self._state[probe.key] = state
            log.info("%s / %s: %s", *probe.key, redact.clean(state if run is None else describe(run), 1000))

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Every probe on its own schedule (from its offset into the interval), until `stop`: a target whose chats
        hang delays no other target's probes. A probe that overruns its interval (one that takes its whole deadline,
        the interval by default) starts again as it ends, never more than once for the ticks it missed: skipping to
        the next tick instead probed such a target every other interval, under the alerts' traffic guard at an
        interval of 40 s and more."""
        async with asyncio.TaskGroup() as group:
            for probe in self.probes:
                group.create_task(self._every_interval(probe, stop))

    def offset(self, probe: Probe) -> float:
        """How long after the start the daemon first runs `probe` (then every interval): the same for the same target
        and scenario among as many probes (a hash of their names, not Python's, which changes per process), spread
        evenly over SPREAD_STEP a probe, at most the interval and MAX_SPREAD."""
        window = min(self.interval, SPREAD_STEP * len(self.probes), MAX_SPREAD)
        digest = hashlib.blake2b("\0".join(probe.key).encode("utf-8", "surrogatepass"), digest_size=8).digest()
        share = int.from_bytes(digest) / 2**64
        return share * window

    async def _every_interval(self, probe: Probe, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        sink = self.sinks[probe.target.name]
        next_at = loop.time() + self.offset(probe)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(next_at - loop.time()):
                await stop.wait()
        while not stop.is_set():
            run, started, took = await self._timed(probe, sink)
            self._note(probe, run, started, took)
            now = loop.time()
            next_at = max(next_at + self.interval, now)  # overran: at once, the missed ticks dropped
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(next_at - now):
                    await stop.wait()

    async def probe_now(self, target: str, scenario: str | None, timeout: float, *,
                        encode: Callable[[CollectorRegistry], bytes] = generate_latest) -> bytes:
        """One probe into a fresh registry, like blackbox_exporter: probe_success, probe_duration_seconds and
        the chat metrics of this probe only, written by `encode` (the text format unless the scraper asked for
        another)."""
        probe = self.lookup(target, scenario)
        registry = CollectorRegistry()
        metrics = ChatMetrics(registry, probe=True)
        sink = MetricsSink(metrics, probe.target.name, "synthetic")
        task = asyncio.current_task()
        if task is not None:
            self._on_demand.add(task)
        try:
            run, started, took = await self._timed(probe, sink, timeout)
        finally:
            if task is not None:
                self._on_demand.discard(task)
        assert metrics.probe_success is not None and metrics.probe_duration is not None
        metrics.probe_duration.set(took)
        metrics.probe_success.set(1 if run is not None and run.passed else 0)
        self._note(probe, run, started, took, via="/probe")
        return encode(registry)

    async def wind_down(self) -> None:
        """The monitor stops: each /probe in flight is cancelled and awaited (WIND_DOWN at most: its sockets closed),
        so that its scraper gets its answer, a 503 (no verdict: the monitor stopped, not the target, so no
        probe_success 0 to page on), before the HTTP server closes. Stopping the HTTP server first blocked the loop
        while its workers waited on probes that loop ran: the exit took seconds more, the scrape got no answer and
        the log said "thread(s) still running"."""
        tasks = list(self._on_demand)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=WIND_DOWN)

    def lookup(self, target: str, scenario: str | None) -> Probe:
        """The configured probe of that name; KeyError with a message for anything else (never a URL)."""
        names = sorted({p.target.name for p in self.probes})
        if target not in names:
            raise KeyError(f"unknown target {target[:64]!r}; known targets: {', '.join(names)}")
        choices = [p for p in self.probes if p.target.name == target]
        if scenario is None:
            return choices[0]
        for p in choices:
            if p.scenario.name == scenario:
                return p
        raise KeyError(f"unknown scenario {scenario[:64]!r} for target {target!r}; known: "
                       f"{', '.join(p.scenario.name for p in choices)}")


def verdict(run: ScenarioRun | None) -> str:
    if run is None:
        return "no verdict"
    if run.unreachable:
        return "unreachable"
    return "passed" if run.passed else "failed"


def describe(run: ScenarioRun) -> str:
    st = run.stats
    text = f"{verdict(run)}: {st.chats} chats, {st.outcomes[Outcome.PASSED]} passed"
    if run.unreachable:
        text += f" ({run.results[0].error_kind}: {run.results[0].error})"
    elif not run.passed:
        text += f"; failed: {', '.join(o.name for o in run.failed_objectives) or 'unreachable'}"
        if why := why_failed(run):
            text += f"; {why}"
    return text


# -- HTTP ------------------------------------------------------------------------------------------------------

def make_app(monitor: Monitor, loop: asyncio.AbstractEventLoop) -> Callable:
    return httpserver.make_app(monitor, loop, grace=GRACE)


def parse_listen(text: str) -> tuple[str, int]:
    from .frontdoor import listen_host_port

    host, port = listen_host_port(text, "--listen", "127.0.0.1:9464 or [::1]:9464")
    return host or "0.0.0.0", port


def start_http(app: Callable, host: str, port: int, kept: int = httpserver.FD_HEADROOM) -> httpserver.HttpServer:
    """The HTTP server, serving (bounded worker threads, slow clients timed out: see monitors.httpserver), its
    connections held below the open-file limit less `kept`, the descriptors the probes need (check_open_files)."""
    try:
        return httpserver.start_http(app, host, port, max_connections=httpserver.connection_limit(kept))
    except OSError as exc:
        raise ConfigError(f"--listen {host}:{port}: cannot listen: {os_reason(exc)}") from None


# -- main ------------------------------------------------------------------------------------------------------

def _first_set(*values: float | None) -> float:
    return next(v for v in values if v is not None)


# The target flags (harness.targets.FLAGS, the one table of them) by their argparse names, and the config file's key
# of each (the TargetOptions field; `name` is a target's key under `targets:`).
_CONFIG_KEYS = {flag[2:].replace("-", "_"): option for option, flag in FLAGS.items() if option != "url"}
_TARGET_DEFAULTS = {"auth": "header"}


async def _main(args: argparse.Namespace) -> int:
    if args.config and args.target:
        raise ConfigError("give --target or --config, not both")
    if args.config and args.scenario:
        raise ConfigError("--scenario applies to --target; with --config list scenarios in the file")
    if args.config:
        # A target flag beside --config would be dropped silently (an --insecure or a --ca-file the user believes in
        # force): each is refused, naming the key of the file that says it per target.
        for dest, key in _CONFIG_KEYS.items():
            if getattr(args, dest) not in (None, False, _TARGET_DEFAULTS.get(dest)):
                flag = "--" + dest.replace("_", "-")
                raise ConfigError(f"{flag} applies to --target; with --config give each target's {key} in the file")
    config = load_config(args.config) if args.config else None
    # `is not None`, never `or`: a 0 that slipped through must not silently become the default.
    interval = _first_set(args.interval, config.interval if config else None, DEFAULT_INTERVAL)
    timeout = _first_set(args.timeout, config.timeout if config else None,
                         min(max(interval, MIN_DEFAULT_TIMEOUT), MAX_TIMEOUT))
    for what, value in (("interval", interval), ("timeout", timeout)):
        if not (math.isfinite(value) and value > 0):  # the flags and the file check this; a last guard
            raise ConfigError(f"{what} {value!r}: must be more than 0 and finite")

    # Checked before anything starts, with --once too (which serves nothing): a value that cannot be used is never
    # passed over in silence.
    host, port = parse_listen(args.listen)

    async with contextlib.AsyncExitStack() as stack:
        if config is not None:
            probes = probes_from_config(args.config, config, timeout)
        elif args.target is not None:
            opts = options_from_args(args)
            probes = probes_from_args(opts, args.scenario, args.target, read_token(opts), timeout)
        else:
            check_credentials(options_from_args(args))  # as `run`
            check_tls_fits(options_from_args(args), "the embedded agentsim", "give --target wss://… for a server of yours")
            sim, tokens = await stack.enter_async_context(embedded_sim([], None))
            print(f"chatprobe monitor: no --target: probing the embedded agentsim on {sim.url}", file=sys.stderr)
            # A stable `target` label (and /probe?target= name), as `run` gives it: the embedded port changes.
            opts = options_from_args(args)
            opts = dataclasses.replace(opts, name=opts.name or "agentsim")
            probes = probes_from_args(opts, args.scenario, sim.url, tokens, timeout)
        kept = check_open_files(probes, embedded=config is None and args.target is None, serving=not args.once,
                                config=args.config)
        monitor = Monitor(probes, interval, timeout)

        loop = asyncio.get_running_loop()
        if args.once:
            # Stopped as `run` is (Ctrl-C, a CI job's timeout): the probes' chats in flight judged as they stand, the
            # verdicts printed, exit 130 / 143. It was exit 0, "every objective met", and no verdict (SIGINT), or a
            # kill with nothing printed (SIGTERM).
            once = _OnceStop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, once.fire, sig)
            try:
                results = await monitor.round(once.event)
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            for probe, run in results:
                print(f"{probe.target.name} / {probe.scenario.name}: "
                      f"{redact.clean(describe(run), 1000) if run is not None else verdict(run)}")
            if once.code is not None:
                return once.code
            if any(run is None for _, run in results):
                return EXIT_FAILED  # a probe that could not run proves nothing
            return int(exit_code([run for _, run in results if run is not None]))

        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        server = start_http(make_app(monitor, loop), host, port, kept)
        stack.callback(server.server_close)
        stack.callback(server.shutdown)
        bound_host, bound_port = server.server_address[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        print(f"chatprobe monitor listening on http://{shown}:{bound_port}", flush=True)
        log.info("probing %s every %gs (deadline %gs)",
                 ", ".join(f"{t} / {s}" for t, s in monitor.by_key), interval, timeout)
        task = asyncio.create_task(monitor.run_forever(stop))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        task.cancel()
        stopped.cancel()
        winding = asyncio.ensure_future(monitor.wind_down())  # the /probe runs in flight, while the interval's end
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await winding
        if not task.cancelled() and task.exception() is not None:
            log.error("the probe loop crashed: %s", redact.clean(repr(task.exception()), 1000))
            return EXIT_FAILED
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        log.info("stopped")
        return EXIT_OK


class _OnceStop:
    """SIGINT / SIGTERM during `--once`: the round stops (its probes' chats in flight judged as they stand, their
    verdicts printed) and the exit code says which signal, as `chatprobe run`'s does."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.code: int | None = None

    def fire(self, sig: int) -> None:
        if self.code is None:
            self.code = int(ExitCode.INTERRUPTED if sig == signal.SIGINT else ExitCode.TERMINATED)
            print(f"chatprobe monitor: {signal.Signals(sig).name}: stopping; the probes' chats in flight are judged "
                  "as they stand", file=sys.stderr, flush=True)
        self.event.set()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s chatprobe monitor: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S")
    quiet_http_loggers()
    try:
        return asyncio.run(_main(args))
    except ConfigError as exc:
        print(f"chatprobe monitor: error: {redact.clean(exc, MESSAGE_LIMIT)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # a signal before the handlers were installed
        # The daemon stops on Ctrl-C (exit 0); `--once` is a verdict, and an interrupted one is none, as `run` says.
        return int(ExitCode.INTERRUPTED) if args.once else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
