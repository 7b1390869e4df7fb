"""chatprobe under Locust, as a library: `ChatUser` (abstract, like locust.contrib's users) plays a scenario's chats
over and over, every chat judged; importing this module adds the chatprobe options and listeners to Locust.

    # locustfile.py
    from harness.locust_user import ChatUser

    class ScenarioUser(ChatUser):
        pass

    locust -f locustfile.py --headless -u 50 -r 10 --run-time 5m \\
        --host wss://chat.example.com/ws --chatprobe-scenario basic

Each chat is a Locust request (type "chat", name = scenario; failed when the verdict is not `passed`) and a
"first_event" request timed to the first event, recorded with the final verdict: without think time a user's next
chat starts at the run's end while the last one's settle window still listens, as under `chatprobe run`. Every
verdict goes to the chatprobe metrics (source="load"), served on --chatprobe-metrics-port by each process that runs
users (each worker on port + its index: scrape them all and sum, like any replicated service; the master runs no
chats and serves none). Workers send the master their verdicts as counts and samples each stats interval; at the end
the master (or the single process) judges the scenario's objectives on the whole run (since Locust's last stats reset:
--reset-stats, the web UI's button) and sets the exit code: 0 met,
1 an objective failed, 2 a usage error (bad --host scheme, unknown scenario or profile; a worker that cannot use the
master's options exits 2 and so does the master), 3 the target was unreachable; objectives met but failed requests of
another kind (a mixed-in HttpUser's) or a task's exception: Locust's --exit-code-on-error. Without --host, the chat
server is the `host` of the ChatUser subclasses (so that an HttpUser with its own http:// host can run beside them).

A user whose connections fail backs off (exponential with jitter, capped at BACKOFF_CAP, reset by a chat that
connects), whatever wait_time a subclass sets: an unreachable host costs a few attempts a second, not thousands.
Locust prints `--help` before it imports any locustfile (locustio/locust#2917), so the chatprobe flags show with
`--chatprobe-help` instead.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import logging
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from .transports.base import environment_problem

if (_problem := environment_problem()) is not None:
    # websockets (imported below, by the client) reads these numbers at its import and raises a traceback for one
    # that is none: a usage error here, as for `chatprobe run`, one line and exit 2.
    print(f"chatprobe: error: {_problem}", file=sys.stderr, flush=True)
    sys.exit(2)

try:
    import gevent
    import locust  # noqa: F401
except ModuleNotFoundError as exc:
    # Locust is the `load` extra: a plain `pip install chatprobe` has neither it nor gevent (a locustfile of the
    # team's imported by their own tooling, a `python -m locust` of another virtualenv's Python).
    print(f"chatprobe: error: the Locust user needs Locust ({exc.name} is not installed): "
          "pip install 'chatprobe[load]'", file=sys.stderr, flush=True)
    sys.exit(2)
import gevent.event
import gevent.pool
from locust import User, events, task
from locust import stats as locust_stats
from locust.exception import StopUser
from locust.runners import (
    STATE_INIT,
    STATE_MISSING,
    STATE_RUNNING,
    STATE_SPAWNING,
    STATE_STOPPED,
    MasterRunner,
    WorkerRunner,
)
from locust.user.task import LOCUST_STATE_RUNNING, LOCUST_STATE_STOPPING, LOCUST_STATE_WAITING
from rich.console import Console

from . import redact
from .backoff import Backoff
from .catalog import builtin_scenarios
from .checker import ChatResult
from .collector import tune_collector
from .errors import ExitCode, closest, os_reason, tolerant
from .events import RULES, Outcome, Violation
from .gevent_client import STOPPED_NOTE, SyncSession
from .results import ScenarioRun, exit_code
from .scenario import ChatCall, ChatGroup, RawCall, Scenario, load_scenario
from .sinks import Fanout, Sink
from .stats import StageTallies, Tally, evaluate
from .targets import (
    Target,
    TargetOptions,
    check_scenario_fits,
    flag_named,
    make_target,
    parse_header_flags,
    read_token,
)
from .yamlfile import ConfigError

if TYPE_CHECKING:
    from monitors.httpserver import HttpServer

    from .recorder import Recorder

logger = logging.getLogger("chatprobe.locust")
# The target options this user has a --chatprobe-* flag for (its messages name those flags; the URL is Locust's --host).
LOCUST_FIELDS = ("name", "profile", "auth", "ca_file", "client_cert", "client_key", "headers", "header_env", "subprotocols")
# A worker's verdicts since its last report, in the stats report Locust sends its master (one message with Locust's
# own stats: the master merges both at once, so a reset of its stats between two messages cannot split them).
TALLY_KEY = "chatprobe_tally"
# The Locust request types chatprobe fires and judges by the scenario's objectives.
CHAT_REQUESTS = frozenset({"chat", "first_event"})
USAGE_ERROR_MESSAGE = "chatprobe_usage_error"
# A worker saying who it is once it connected (its process id and host name), so that the master can name it: in the
# line a master that gave up waiting for its --expect-workers prints, and when a worker is lost during a test.
WORKER_HELLO_MESSAGE = "chatprobe_worker_hello"
# The master asking its workers to stop their users and send what they did before it quits, and a worker saying it did
# (Locust's own quit waits half a second for the workers' final reports: a chat still in flight, which --stop-timeout
# lets end, made a worker's report later than that, and everything it did since its last stats report was lost).
STOP_WORKERS_MESSAGE = "chatprobe_stop_workers"
WORKER_STOPPED_MESSAGE = "chatprobe_worker_stopped"
# How much longer than --stop-timeout the master waits for a worker to say it stopped (the network, a slow worker).
WORKER_STOP_SLACK = 10.0
# Connection failures that mean the server never took the chat (the handshake or the welcome failed): the user
# backs off (harness/backoff.py) until one of its chats connects again.
CONNECT_FAILURES = frozenset({"refused", "timeout", "tls_error", "auth_failed"})
# The recording's run id the master puts in the options it sends its workers at each test's start (Locust sends
# every custom option to them), so that every worker's --chatprobe-record files carry it.
RECORD_RUN = "chatprobe_record_run"
# What the master loaded for the test, in the options it sends its workers at each test's start: a digest of its
# scenario and one of its profile, which a worker compares with what it loaded from its own disk (the same path or
# built-in name can hold another file on another machine, or in another chatprobe version).
MASTER_DIGESTS = "chatprobe_master_digests"
# The users' clients log the upgrade request at DEBUG (websockets: `Authorization: Bearer <the user's token>`, a query's
# credential): under Locust's --loglevel DEBUG each was written to the console and --logfile as it was. Added on import,
# before any user runs (a worker that joins a running test starts its users before Locust's init event).
for _name in redact.CLIENT_LOGGERS:
    logging.getLogger(_name).addFilter(redact.scrub_record)  # (once: a filter added again is not added)

# The chatprobe options given to this process (its command line; Locust's config file and LOCUST_* variables are read
# as if given there), as parsed, before a master's are set over them: a worker's must be the master's, but for its
# metrics port and host, which each process reads for itself.
_given: dict[str, object] = {}
PER_PROCESS_OPTIONS = frozenset({"chatprobe_metrics_port", "chatprobe_metrics_host"})
# The options whose value is a path: a worker given the master's file or directory by another path (relative from
# another working directory, through a symlink) plays with it, at its own path. The master sends the real path of
# each of its own (MASTER_DIGESTS' "paths"); a scenario or profile given by another path is judged by its content
# (the digests), as one given by the same path is: the same content at two paths on two machines is the same one.
PATH_OPTIONS = ("chatprobe_scenario", "chatprobe_profile", "chatprobe_ca_file", "chatprobe_client_cert",
                "chatprobe_client_key", "chatprobe_record")
CONTENT_OPTIONS = {"chatprobe_scenario": "scenario", "chatprobe_profile": "profile"}


class _Given(argparse._StoreAction):
    """Stores the option, and notes it in `_given`."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        super().__call__(parser, namespace, values, option_string)
        _given[self.dest] = getattr(namespace, self.dest)


class _GivenAll(argparse._AppendAction):
    """Appends the option's value (a repeatable option), and notes them all in `_given`."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        super().__call__(parser, namespace, values, option_string)
        _given[self.dest] = list(getattr(namespace, self.dest))


class _HelpAction(argparse.Action):
    """`--chatprobe-help`: Locust's whole help with the chatprobe group, which plain --help cannot show."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.print_help()
        parser.exit(0)


# Locust's parser of this process's options (configargparse: it notes which config file set each option).
_parser: argparse.ArgumentParser | None = None
# The option a ConfigError's field is about (its TargetOptions or chatprobe name), as Locust's parser stores it.
_FIELD_DESTS = {"url": "host", "scenario": "chatprobe_scenario", "profile": "chatprobe_profile",
                "auth": "chatprobe_auth", "name": "chatprobe_target_name", "ca_file": "chatprobe_ca_file",
                "client_cert": "chatprobe_client_cert", "client_key": "chatprobe_client_key",
                "headers": "chatprobe_header", "header_env": "chatprobe_header_env",
                "subprotocols": "chatprobe_subprotocol", "record": "chatprobe_record"}


def config_file_line(field: str | None) -> str | None:
    """"locust.conf:6 (chatprobe-scenario)": where Locust's config file (--config, ./locust.conf, pyproject.toml's
    [tool.locust], …) set the option a ConfigError is about, when one did (not the command line nor a LOCUST_
    variable): the message then names the file, the line and the key, not only a flag nobody typed. The value is not
    shown (a header's is a secret)."""
    dest = _FIELD_DESTS.get(field or "")
    sources = getattr(_parser, "_source_to_settings", None)
    if dest is None or not isinstance(sources, dict):
        return None
    for source, settings in sources.items():
        if not str(source).startswith("config_file|") or not isinstance(settings, dict):
            continue
        for key, setting in settings.items():
            if getattr(setting[0] if isinstance(setting, tuple) else None, "dest", None) != dest:
                continue
            path = str(source).split("|", 1)[1]
            line = 1
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    line = next((n for n, text in enumerate(f, 1)
                                 if re.match(rf"\s*{re.escape(key)}\s*[=:\s]", text)), 1)
            except OSError:
                pass
            return f"{redact.clean(path, 200)}:{line} ({redact.clean(key, 100)})"
    return None


@events.init_command_line_parser.add_listener
def _arguments(parser: "argparse.ArgumentParser") -> None:
    global _parser
    _parser = parser
    g = parser.add_argument_group("chatprobe", "Locust prints --help before it reads the locustfile: "
                                  "`locust -f scenarios/locustfile.py --chatprobe-help` shows these.")
    g.add_argument("--chatprobe-help", action=_HelpAction, help="show this help, the chatprobe flags included, and exit")
    g.add_argument("--chatprobe-scenario", action=_Given, default="basic", metavar="NAME|FILE",
                   help=f"chatprobe scenario to play (built-ins: {', '.join(builtin_scenarios())})")
    g.add_argument("--chatprobe-profile", action=_Given, default=None, metavar="NAME|FILE",
                   help="wire-format profile (default: the scenario's, else netra)")
    g.add_argument("--chatprobe-auth", action=_Given, choices=AUTH_MODES, default="header",
                   help="token as an Authorization header (default), as the jwt.<base64url(token)> subprotocol, or "
                        "none (an Authorization --chatprobe-header of your own); the token comes from "
                        "CHATPROBE_TOKEN, or is minted per user from CHATPROBE_JWT_SECRET")
    g.add_argument("--chatprobe-target-name", action=_Given, default=None, metavar="NAME",
                   help="the `target` label (default host:port)")
    g.add_argument("--chatprobe-ca-file", action=_Given, default=None, metavar="PEM",
                   help="CA bundle to verify a wss:// or https:// target (beside a ws:// or http:// one, a "
                        "usage error: those speak no TLS)")
    g.add_argument("--chatprobe-client-cert", action=_Given, default=None, metavar="PEM",
                   help="client certificate to show a target that asks for one (mutual TLS); its private key in the "
                        "same file or in --chatprobe-client-key")
    g.add_argument("--chatprobe-client-key", action=_Given, default=None, metavar="PEM",
                   help="the unencrypted private key of --chatprobe-client-cert, when not in its file")
    g.add_argument("--chatprobe-header", action=_GivenAll, metavar="'NAME: VALUE'",
                   help="send this HTTP header with every connection's request, the WebSocket upgrade or each SSE "
                        "POST (repeatable); the value is a secret, but a command line shows in `ps`: give a secret "
                        "with --chatprobe-header-env")
    g.add_argument("--chatprobe-header-env", action=_GivenAll, metavar="NAME=VAR",
                   help="send the header NAME with the value of the environment variable VAR, read by each process "
                        "that runs users (repeatable)")
    g.add_argument("--chatprobe-subprotocol", action=_GivenAll, metavar="NAME",
                   help="offer this WebSocket subprotocol at the upgrade (repeatable, in order of preference; "
                        "overrides the profile's); with --chatprobe-auth subprotocol the token's jwt-auth pair follows")
    g.add_argument("--chatprobe-metrics-port", action=_Given, type=int, default=0, metavar="PORT",
                   help="serve chatprobe /metrics on this port (workers: PORT + worker index); 0: off")
    g.add_argument("--chatprobe-metrics-host", action=_Given, default="127.0.0.1", metavar="HOST",
                   help="address /metrics listens on (0.0.0.0 to let a remote Prometheus scrape)")
    g.add_argument("--chatprobe-record", action=_Given, default=None, metavar="DIR",
                   help="write every connection's frames to DIR as JSON Lines, secrets scrubbed, for `chatprobe check "
                        "DIR` (as `chatprobe run --record`); distributed: give it to the master, each worker writes "
                        "to DIR on its own machine, all under the master's run id (the master writes nothing)")
    _refuse_misspelt(parser, sys.argv[1:])


def _refuse_misspelt(parser: "argparse.ArgumentParser", argv: list[str]) -> None:
    """A misspelt chatprobe flag on the command line is one line naming the flag it most looks like, exit 2, as
    `chatprobe run` says it (Locust's own error is "unrecognized arguments" with its "Did you mean" on a line of its
    own). Checked here, as the chatprobe flags are added, right before Locust parses the command line: nothing of
    Locust's is changed. Only a flag that no option known by now begins (argparse takes a flag's unambiguous start)
    and that looks like a chatprobe flag; any other mistake stays Locust's to report."""
    known = [o for action in parser._actions for o in action.option_strings]  # (argparse's list, as Locust reads it)
    ours = [o for o in known if o.startswith("--chatprobe-") and o != "--chatprobe-help"]
    for arg in argv:
        if arg == "--":
            break
        name = arg.partition("=")[0]
        if not name.startswith("--") or " " in name or any(o.startswith(name) for o in known):
            continue
        meant = closest(name, ours)
        if meant is not None:
            print(f"chatprobe: error: unrecognized option {redact.clean(name, 100)} (did you mean {meant}?)",
                  file=sys.stderr, flush=True)
            sys.exit(int(ExitCode.USAGE))


def _names(value: list[str] | str | None) -> tuple[str, ...] | None:
    """A repeatable option's values as given: None when not given (Locust's web UI gives an empty field as "", and a
    filled one as one string)."""
    if not value:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


AUTH_MODES = ("header", "subprotocol", "none")


class _Worker:
    """Master: what it knows of one worker (by Locust's client id): who it is, and what it reported in this test."""

    def __init__(self, client_id: str, index: int) -> None:
        self.client_id = client_id
        self.index = index
        self.pid: int | None = None  # (its hello: a worker of another chatprobe version sends none)
        self.host = ""
        self.chats = 0  # chats it reported in this test (since the last stats reset)
        self.last_report: float | None = None  # time.monotonic() of its last report in this test
        self.stopped: bool | None = None  # its last report in this test came after its users stopped; None: no report

    def named(self) -> str:
        """"w1 (pid 4242 on host, id host_0c1f…)": the worker's index (as the summary counts it), process and id."""
        who = f"pid {self.pid} on {redact.clean(self.host, 100)}, " if self.pid is not None else ""
        return f"w{self.index} ({who}id {redact.clean(self.client_id, 120)})"


class _Run:
    """This process's part of the load test: the scenario, the target, the metrics sink and the verdict tally."""

    def __init__(self, environment) -> None:
        self.environment = environment
        self.scenario: Scenario | None = None
        self.target: Target | None = None
        self.metrics_sink: Sink = Sink()  # the chatprobe metrics once a scenario is loaded
        self.tally = Tally()  # single process: the whole run; worker: since the last report; master: merged
        self.stages: StageTallies | None = None  # the same, per stage of a staged scenario
        self.by_worker: Counter = Counter()  # master: chats each worker reported
        # Chats still in flight when Locust stopped their users (left, in no verdict), and those of them that had no
        # event yet: single process, the whole run; worker, since the last report; master, merged.
        self.left = Left()
        self.workers: dict[str, _Worker] = {}  # master: every worker that said hello or reported, by client id
        self.tests = 0  # master: tests started (none: it quits while it waits for its workers)
        self.said_no_test = False  # master: the line saying no test ran is printed
        self.quitting = False  # Locust's quitting event fired (its shutdown: the verdict is said there)
        self.in_test = False  # worker: it took part in a test (its reports say whether its users stopped)
        self.own: dict[str, str] = {}  # worker: path options of its own, used over the master's (check_own_options)
        self.stopping_workers: set[str] = set()  # master: workers asked to stop that have not said they did
        self.workers_stopped = gevent.event.Event()  # master: set when the last of them did
        self.usage_error: str | None = None  # master: a worker could not use the options (exit 2)
        # Worker that joined a running test: why it cannot play the master's test, found at its test start (before
        # Locust set its runner), said and sent to the master at its init; its users play nothing meanwhile.
        self.refused: str | None = None
        self.refused_by: set[str] = set()  # master: the workers that said they cannot play its test (they quit)
        self.started = time.monotonic()
        self.user_prefix = f"lc-{uuid.uuid4().hex[:6]}"
        self.recorder: Recorder | None = None  # --chatprobe-record: this process's users' connections

    def start_recording(self) -> None:
        """--chatprobe-record DIR: a Recorder for this test's connections, under the run id the master chose (RECORD_RUN
        in the options it sends its workers: `chatprobe check` judges every worker's files as the one run the master
        judged), else one of its own (a single process); every connection the users open is then recorded (the
        target's recorder, as `chatprobe run --record` sets it). Raises ConfigError for a DIR that cannot be used."""
        opts = self.options()
        path = getattr(opts, "chatprobe_record", None) if opts is not None else None
        from .recorder import open_recorder

        self.recorder = open_recorder(path, "--chatprobe-record", run_id=getattr(opts, RECORD_RUN, None) or None)
        if self.target is not None:
            self.target.recorder = self.recorder

    def warn_unrecorded(self) -> None:
        """Frames this process's recording dropped (a connection's file full), said as `chatprobe run` says it."""
        if self.recorder is not None and (dropped := self.recorder.take_dropped())[0]:
            conns, frames, size = dropped
            logger.warning("--chatprobe-record: %d frames (%s bytes) of %d connection(s) were not recorded, %s; %s, and "
                           "`chatprobe check` judges the chats open there as they stood", frames, f"{size:,}", conns,
                           self.recorder.dropped_why(), self.recorder.gaps_said(self.recorder.take_unfiled()))

    def load(self) -> None:
        """Scenario and target from the options (on a worker, the master's options arrive with the first spawn)."""
        scenario, target = self.prepare(self.options(), self.environment.host)
        target.recorder = self.recorder
        if self.target is None or self.target.name != target.name:
            from monitors.metrics import MetricsSink, default_metrics

            self.metrics_sink = MetricsSink(default_metrics(), target.name, "load")
        self.scenario, self.target = scenario, target
        shape = scenario.shape()
        if shape is not None and (self.stages is None or self.stages.shape.windows != shape.windows):
            self.stages = StageTallies(shape)

    def prepare(self, opts: argparse.Namespace, host: str | None) -> tuple[Scenario, Target]:
        """The scenario and target these options and host mean; ConfigError naming the flag for options that cannot
        be used. Nothing of this run's is changed (the web UI's form is checked with it before a test starts)."""
        try:
            scenario = load_scenario(opts.chatprobe_scenario)
        except ConfigError as exc:
            if exc.field is not None:
                raise
            raise ConfigError(str(exc), field="scenario") from None  # (the option it is about: config_file_line)
        if scenario.open_model:
            raise ConfigError(f"--chatprobe-scenario {opts.chatprobe_scenario}: an open-model scenario (arrival_rate, "
                              "or stages with `rate`) runs under `chatprobe run` only; under Locust give stages of "
                              "`users` and a think_time", field="scenario")
        host, source = host or getattr(opts, "host", None), "--host"
        if not host:
            host, source = class_host(self.environment.user_classes)
        if not host:
            raise ConfigError("--host: give the ws://, wss:// or http(s):// (SSE) URL of the chat server (or set "
                              "`host` on your ChatUser subclass)")
        if opts.chatprobe_auth not in AUTH_MODES:  # (argparse's choices: not applied to the web UI's form)
            raise ConfigError(f"--chatprobe-auth {redact.clean(str(opts.chatprobe_auth), 100)!r}: one of "
                              f"{', '.join(AUTH_MODES)}", field="auth")
        try:
            options = TargetOptions(
                # Locust's web UI gives an option left empty in its form as "" (not None): not given, as before.
                url=host, name=opts.chatprobe_target_name, profile=opts.chatprobe_profile or None,
                auth=opts.chatprobe_auth, ca_file=opts.chatprobe_ca_file or None,
                client_cert=getattr(opts, "chatprobe_client_cert", None) or None,
                client_key=getattr(opts, "chatprobe_client_key", None) or None,
                headers=parse_header_flags(list(_names(opts.chatprobe_header) or ()), "headers"),
                header_env=parse_header_flags(list(_names(opts.chatprobe_header_env) or ()), "header_env"),
                subprotocols=_names(getattr(opts, "chatprobe_subprotocol", None)))
            target = make_target(options, read_token(options), scenario.profile)
            target.compression = scenario.compression  # offer permessage-deflate or not, as the scenario says
            check_scenario_fits(scenario, target)  # (a dialect or transport that cannot carry it: as `run` says)
        except ConfigError as exc:
            if exc.field == "url":  # Locust's flag for the URL is --host (or the user class's `host`)
                raise ConfigError(f"{source} {exc.detail}", field="url", detail=exc.detail) from None
            raise ConfigError(flag_named(exc, "--chatprobe-", LOCUST_FIELDS), field=exc.field, detail=exc.detail,
                              key=exc.key) from None
        return scenario, target

    def digests(self) -> dict[str, str]:
        """What this process loaded for the test, as MASTER_DIGESTS carries it: a digest of the scenario and one of
        the profile, each of its whole content."""
        assert self.scenario is not None and self.target is not None
        return {"scenario": hashlib.sha256(self.scenario.model_dump_json().encode()).hexdigest(),
                "profile": hashlib.sha256(self.target.profile.model_dump_json().encode()).hexdigest()}

    def options(self) -> argparse.Namespace:
        """The options this process plays with: Locust's (on a worker, the master's), a worker's own paths over them."""
        opts = self.environment.parsed_options
        if not self.own or opts is None:
            return opts
        return argparse.Namespace(**{**vars(opts), **self.own})

    def check_own_options(self, opts: argparse.Namespace) -> None:
        """Worker, at a test's start: the master's options (Locust sets them over the worker's own, silently) must be
        those the worker was given on its command line; else ConfigError naming the flag. Without this the worker
        played what its operator did not ask for. A path given here that names the master's file or directory (its
        real path, the master's "paths") is the master's, used at this worker's own path; a scenario or profile
        given by another path is used too, and judged by its content once loaded (check_master_digests)."""
        digests = getattr(opts, MASTER_DIGESTS, None)
        master_paths = digests.get("paths") if isinstance(digests, dict) else None
        master_paths = master_paths if isinstance(master_paths, dict) else {}
        self.own = {}
        for dest, given in _given.items():
            master = getattr(opts, dest, None)
            if master != given and dest not in PER_PROCESS_OPTIONS:
                if dest in PATH_OPTIONS and isinstance(given, str) and given and isinstance(master, str) and master:
                    if dest in CONTENT_OPTIONS or master_paths.get(dest) == os.path.realpath(given):
                        self.own[dest] = given
                        continue
                flag = "--" + dest.replace("_", "-")
                shown = "" if dest == "chatprobe_header" else \
                    f" ({redact.clean(repr(given), 200)} here, {redact.clean(repr(master), 200)} at the master)"
                raise ConfigError(f"{flag}: this worker was given another value than the master{shown}; a worker "
                                  "plays the master's chatprobe options: give them to the master only", field=dest)

    def check_master_digests(self, opts: argparse.Namespace) -> None:
        """Worker, once it loaded the test's scenario: the scenario and profile must be the master's (MASTER_DIGESTS),
        the one it judges the run by; else ConfigError naming which differs."""
        master_digests = getattr(opts, MASTER_DIGESTS, None)
        if not isinstance(master_digests, dict):
            return  # (a master without chatprobe's check)
        mine = self.digests()
        assert self.scenario is not None and self.target is not None
        for what, flag, name in (("scenario", "--chatprobe-scenario", opts.chatprobe_scenario),
                                 ("profile", "--chatprobe-profile", self.target.profile.name)):
            if master_digests.get(what) != mine[what]:
                dest = flag[2:].replace("-", "_")
                if dest in self.own:  # (given here by another path than the master's: name both)
                    raise ConfigError(f"{flag}: this worker was given another value than the master "
                                      f"({redact.clean(repr(self.own[dest]), 200)} here, "
                                      f"{redact.clean(repr(getattr(opts, dest)), 200)} at the master), another {what} "
                                      f"than the master's: a worker plays the master's {what}: give every machine the "
                                      f"same {what}, or give it to the master only", field=what)
                raise ConfigError(f"{flag} {redact.clean(str(name), 200)}: the {what} this worker loaded differs from "
                                  f"the master's (another file at that path, or another chatprobe version): give every "
                                  f"machine the same {what}", field=what)

    # -- verdicts --
    def record(self, result: ChatResult, elapsed: float) -> None:
        """One verdict into Locust's stats (a chat request and a first_event request) and the tally."""
        assert self.scenario is not None
        self.tally.add(result)
        if result.further_run:
            return  # a run the server added to a chat's stream: counted in that chat (checker.fold_further)
        if self.stages is not None:
            self.stages.add(result, result.sent_at - self.started)
        request = self.environment.events.request
        name = self.scenario.name
        ms = (result.duration if result.duration is not None else elapsed) * 1000
        request.fire(request_type="chat", name=name, response_time=ms, response_length=result.events_received,
                     exception=None if result.outcome is Outcome.PASSED else ChatNotPassed(reason(result)),
                     context={})
        if result.time_to_first_event is not None:
            slow = next((v for v in result.violations if v.rule == "R9"), None)
            request.fire(request_type="first_event", name=name, response_time=result.time_to_first_event * 1000,
                         response_length=0, exception=ChatNotPassed(f"R9 {RULES['R9']}") if slow else None,
                         context={})

    def session_sink(self) -> Sink:
        """Where a user's session reports: the chatprobe metrics, and this process's tally for what the sessions'
        connections report as their own (an R8 or R12 after a connection's last chat: in the objectives, in no chat).
        Chats' verdicts come to the tally through `record`."""
        return Fanout([self.metrics_sink, _ConnectionTally(self)])

    def reset(self) -> None:
        """The verdicts so far forgotten, as Locust resets its stats (a test's start, --reset-stats once the users
        are spawned, the web UI's Reset Stats): the verdict judges the chats Locust's stats and reports count."""
        self.tally = Tally()
        if self.stages is not None:
            self.stages.by_stage = {}
        self.by_worker.clear()
        self.left = Left()
        for worker in self.workers.values():
            worker.chats = 0

    def take(self) -> tuple[Tally, dict[int, Tally]]:
        """The verdicts since the last report, forgotten here (a worker's report carries them; `left` too)."""
        tally, self.tally = self.tally, Tally()
        stages: dict[int, Tally] = {}
        if self.stages is not None:
            stages, self.stages.by_stage = self.stages.by_stage, {}
        return tally, stages

    # -- the end --
    def verdict(self) -> int:
        """Judge the objectives on the whole run, print the summary, return the exit code."""
        if self.usage_error is not None:
            print(f"chatprobe: error: {self.usage_error}", file=sys.stderr, flush=True)
            return int(ExitCode.USAGE)
        if self.scenario is None:
            print("chatprobe: no scenario ran", flush=True)
            return 1
        if not self.tests:  # (the web UI's process quit before a test was started from it)
            runner = self.environment.runner
            if isinstance(runner, MasterRunner):
                _say_no_test(runner, "it quit before a test was started")
            else:
                print(f"chatprobe: no test ran: it quit before a test was started; {self.what()} was not played, "
                      "nothing judged: exit 1", file=sys.stderr, flush=True)
            return int(ExitCode.FAILED)
        stats = self.tally.stats()
        objectives = evaluate(stats, self.scenario.objectives)
        run = ScenarioRun(scenario=self.scenario, target=self.target.name if self.target else "", results=[],
                          stats=stats, objectives=objectives, started_at=time.time(),
                          elapsed=time.monotonic() - self.started)
        if self.stages is not None:
            run.stages = self.stages.stats()
        code = exit_code([run])
        ok, unreachable = code is ExitCode.OK, code is ExitCode.UNREACHABLE
        from harness.report import print_summary

        print_summary(Console(highlight=False, width=160, file=tolerant(sys.stdout)), [run])
        workers = ""
        if self.by_worker:
            workers = " (workers: " + ", ".join(f"{w}={n}" for w, n in sorted(self.by_worker.items())) + ")"
        missing = f", {stats.missing_chats} missing events"
        print(f"{self.scenario.name}: {stats.chats} chats, {stats.outcomes[Outcome.PASSED]} passed{missing}, "
              f"{'objectives met' if ok else 'UNREACHABLE' if unreachable else 'OBJECTIVES FAILED'} "
              f"in {run.elapsed:.1f}s{workers}", flush=True)
        self.say_left()
        self.say_lost_workers()
        if self.metrics_sink is not None:
            self.metrics_sink.run_finished(ok)
        return int(code)

    def say_left(self) -> None:
        """A line for the chats Locust stopped in flight at the run's end: they are in no verdict, and without this
        line a server that hung for every user showed `0 chats` and objectives `n/a`, as if no chat had been tried."""
        if not self.left.chats:
            return
        silent = f", {self.left.silent} of them with no event yet" if self.left.silent else ""
        print(f"chatprobe: {self.left.chats} chat(s) still in flight when the users stopped were abandoned{silent}: "
              "in neither Locust's stats nor the verdict (--stop-timeout lets chats finish)", flush=True)

    def what(self) -> str:
        """"scenario basic against host:port": what a test of this process plays."""
        if self.scenario is None or self.target is None:
            return "no scenario"
        return f"scenario {redact.clean(self.scenario.name, 100)} against {redact.clean(self.target.name, 200)}"

    def say_lost_workers(self) -> None:
        """Master: a line for each worker whose last stats did not arrive (killed, its machine or network gone, or
        too slow to stop): which worker (index, process, host, Locust client id), what Locust made of it, how many
        of its chats are counted and up to when. The chats it played after its last report are in neither Locust's
        stats nor the verdict, and the summary's count alone did not say so."""
        runner = self.environment.runner
        if not isinstance(runner, MasterRunner):
            return
        missing = {c.id for c in runner.clients.all if c.state == STATE_MISSING}
        for worker in sorted(self.workers.values(), key=lambda w: w.index):
            if worker.stopped is not False and worker.client_id not in missing:
                continue
            node = runner.clients.get(worker.client_id)
            if node is None:
                fate = "it left the run before its users stopped"
            elif node.state == STATE_MISSING:
                fate = "it stopped sending heartbeats (Locust marked it missing)"
            else:
                fate = "it did not send them within --stop-timeout and the slack"
            counted = f"{worker.chats} of its chats counted"
            if worker.last_report is not None:
                counted += f", up to its last report {max(worker.last_report - self.started, 0):.1f}s into the test"
            print(f"chatprobe: worker {worker.named()} was lost: its last stats never arrived, {fate}; {counted}: "
                  "what it did after that is in neither Locust's stats nor the verdict", flush=True)


def class_host(user_classes) -> tuple[str | None, str]:
    """Without --host, Locust gives each user class its own `host` attribute (an HttpUser's http:// next to a
    ChatUser's ws://): the chat server is the `host` of the ChatUser subclasses run → (URL, where it was set) or
    (None, ""). They run one scenario against one target, so two that name different hosts are a usage error."""
    hosts = {cls.host: cls.__name__ for cls in user_classes
             if isinstance(cls, type) and issubclass(cls, ChatUser) and cls.host}
    if len(hosts) > 1:
        raise ConfigError("the ChatUser classes set different hosts (" + ", ".join(
            f"{name}.host {redact.clean(host, 200)!r}" for host, name in sorted(hosts.items())) +
            "): chatprobe plays one scenario against one chat server; give --host", field="url")
    for host, name in hosts.items():
        return host, f"{name}.host"
    return None, ""


class Left:
    """The chats Locust stopped in flight (ChatFlow.left): how many, and how many of them had no event yet."""

    def __init__(self, chats: int = 0, silent: int = 0) -> None:
        self.chats = chats
        self.silent = silent

    def to_dict(self) -> dict[str, int]:
        return {"chats": self.chats, "silent": self.silent}

    def merge(self, data: object) -> None:
        """A worker's report's counts added (what is not two counts, from a worker of another version: ignored)."""
        if isinstance(data, dict):
            chats, silent = data.get("chats"), data.get("silent")
            if type(chats) is int and type(silent) is int and 0 <= silent <= chats:
                self.chats += chats
                self.silent += silent


class _ConnectionTally(Sink):
    """A connection's own violations (FrameRouter.connection_ended) into the run's tally, as `chatprobe run` counts
    them: with their rule among every violation (the `violations` objective), in no chat; and the chats Locust
    stopped in flight, counted for the line that says so."""

    def __init__(self, run: _Run) -> None:
        self.run = run

    def connection_violation(self, scenario: str, violation: Violation) -> None:
        self.run.tally.add_connection_violation(violation)

    def chat_finished(self, result: ChatResult) -> None:
        if result.note == STOPPED_NOTE and not result.further_run:
            self.run.left.chats += 1
            if not result.events_received:
                self.run.left.silent += 1


def connect_failed(result: ChatResult) -> bool:
    """The chat never reached the server's agent: its connection (handshake, credentials, welcome) failed."""
    return result.outcome is Outcome.ERROR and result.error_kind in CONNECT_FAILURES


class ChatNotPassed(Exception):
    """A chat's verdict as a Locust failure: outcome and rules, short enough to group failures by."""


def reason(result: ChatResult) -> str:
    if result.outcome is Outcome.ERROR:
        return f"error: {result.error_kind or 'unknown'}"
    rules = sorted({v.rule for v in result.violations}, key=lambda r: int(r[1:]))
    text = f"{result.outcome.value}: " + (", ".join(f"{r} {RULES.get(r, '')}".strip() for r in rules) or result.note)
    if result.missing:
        text += " (missing " + ", ".join(r.value for r in result.missing) + ")"
    return text


_run: _Run | None = None
_user_numbers = itertools.count(1)


def current() -> _Run:
    assert _run is not None, "the chatprobe locustfile's init listener has not run"
    return _run


def _run_of(environment) -> _Run:
    """This process's run, made at its first need: Locust's init event, or a worker's test start, which comes first
    when the worker joins a running test (the master's answer to its hello and its spawn message arrive together,
    and the worker handles both before Locust fires init)."""
    global _run
    if _run is None or _run.environment is not environment:
        _run = _Run(environment)
    return _run


def _load_or_exit(run: _Run, *, record: bool = False) -> None:
    """A usage error (bad host scheme, unknown scenario, with `record` a --chatprobe-record DIR that cannot be used)
    ends the process with exit 2, as `chatprobe run` does."""
    try:
        run.load()
        if record:
            run.start_recording()
    except ConfigError as exc:
        where = config_file_line(exc.field)
        print(f"chatprobe: error: {where + ': ' if where else ''}{redact.clean(exc)}", file=sys.stderr, flush=True)
        sys.exit(int(ExitCode.USAGE))


@events.init.add_listener
def _init(environment, runner=None, web_ui=None, **_kw) -> None:
    run = _run_of(environment)
    if web_ui is not None:
        web_ui.app.before_request(lambda: _check_swarm_form(environment))
        web_ui.app.after_request(_scrub_web_report)
    if isinstance(runner, MasterRunner):
        environment.events.worker_report.add_listener(_on_worker_report)
        runner.register_message(USAGE_ERROR_MESSAGE, _on_usage_error)
        runner.register_message(WORKER_STOPPED_MESSAGE, _on_worker_stopped)
        runner.register_message(WORKER_HELLO_MESSAGE, _on_worker_hello)
        quit_ = runner.quit

        def quit_after_the_workers_reported() -> None:
            opts = environment.parsed_options
            wait = getattr(opts, "expect_workers_max_wait", 0)
            if (runner.state == STATE_INIT and not run.tests and not run.quitting and wait
                    and (getattr(opts, "headless", False) or getattr(opts, "autostart", False))):
                # Locust's wait for --expect-workers gave up: it quits the runner and exits 1, nothing else said (its
                # quitting event, where the verdict is said, does not fire there: run.quitting is not set).
                _say_no_test(runner, f"{_expected_workers(runner)} within --expect-workers-max-wait {wait:g}s")
            _stop_workers(runner)
            quit_()

        # Every way the master quits: the shape's end, --run-time's, SIGTERM's, the web UI's.
        runner.quit = quit_after_the_workers_reported  # type: ignore[method-assign]
        _load_or_exit(run)  # fail early on a bad scenario or host
        _stop_on_sigterm(environment)  # the master ends the shape; its workers are stopped and quit as at its end
        return
    if isinstance(runner, WorkerRunner):
        # Added after Locust's own quitting listener, which tells the master this worker quit: quitting fires its
        # listeners last-added first, so this one reports before that.
        environment.events.quitting.add_listener(_worker_quitting)
        # Run beside the worker's message loop (its heartbeats go on while the users finish their chats).
        runner.register_message(STOP_WORKERS_MESSAGE, _on_stop_asked, concurrent=True)
        runner.send_message(WORKER_HELLO_MESSAGE, {"pid": os.getpid(), "host": socket.gethostname()})
        if run.refused is not None:
            _refuse(runner, run.refused)
    else:
        _load_or_exit(run, record=True)
        _stop_on_sigterm(environment)
    opts = environment.parsed_options
    port = opts.chatprobe_metrics_port if opts is not None else 0
    host = opts.chatprobe_metrics_host if opts is not None else "127.0.0.1"
    if isinstance(runner, WorkerRunner):
        # Its own flags': a worker that joined a running test has the master's options over its own by now.
        port = int(_given.get("chatprobe_metrics_port", 0))  # type: ignore[call-overload]
        host = str(_given.get("chatprobe_metrics_host", "127.0.0.1"))
    if port:
        if isinstance(runner, WorkerRunner):
            port += max(runner.worker_index, 0)
        serve_metrics(host, port)
    _clock()  # (a master's run time starts after it waited for its workers: its clock is read by then)


def _clock() -> None:
    """gevent's timers count from the time its loop last read the clock, which nothing updates while the process
    works without yielding at its start (a locustfile's heavy imports, Locust's start-up and chatprobe's init: seconds
    on a loaded machine): the --run-time timer that Locust arms right after the init event then fired that much early
    (a 3 s run ended after 0.3 s, no chat played, exit 1). Read the clock at the end of chatprobe's init (an init
    listener the locustfile adds after importing this module runs after it: its own blocking work is not covered)."""
    gevent.get_hub().loop.update_now()


def _form_value(current, form, key: str):
    """A form field's value as Locust's /swarm sets it into the options (web.py: the type of the option's value)."""
    value = form[key]
    if isinstance(current, bool):
        return value == "true"
    if current is None:
        return value
    if isinstance(current, list):
        return value.split(",") if "," in value else form.getlist(key)
    return type(current)(value)


def _check_swarm_form(environment):
    """The web UI starts a test from its form (POST /swarm), after this process checked its options at its start: a
    host or chatprobe option from the form that cannot be used is refused there, as Locust refuses a bad value of its
    own ({"success": false, "message": ...}, which the UI shows), and logged. Without this the test started, stopped at
    once (a master's workers quit), nothing said until the process's exit 2, even after a good test from the form."""
    from flask import jsonify, request

    if request.method != "POST" or not request.path.endswith("/swarm"):
        return None
    opts = argparse.Namespace(**vars(environment.parsed_options))
    host = environment.host
    if "host" in request.form:  # as Locust's /swarm takes it
        host = opts.host = str(request.form["host"]).replace("<", "").replace(">", "")
    try:
        # Every chatprobe option the form carries (Locust shows each custom option there and sets whichever the
        # form gives, a repeatable one given once as one string), as Locust will set it.
        for key in request.form:
            if key.startswith("chatprobe_") and hasattr(opts, key):
                try:
                    setattr(opts, key, _form_value(getattr(opts, key), request.form, key))
                except ValueError:
                    flag = "--" + key.replace("_", "-")
                    raise ConfigError(f"{flag} {redact.clean(str(request.form[key]), 100)!r}: not a number",
                                      field=key) from None
        current().prepare(opts, host)
        if request.form.get("chatprobe_record") and not isinstance(environment.runner, MasterRunner):
            # The test's start opens its recording (a master's workers open theirs, on their own disks): a DIR that
            # cannot be used is refused here, not at that start, where it ended the process with exit 2.
            from .recorder import open_recorder

            open_recorder(opts.chatprobe_record, "--chatprobe-record")
    except ConfigError as exc:
        message = f"chatprobe: error: {redact.clean(str(exc), 1000)}"
        logger.error(message)
        return jsonify({"success": False, "message": message, "host": environment.host})
    return None


def serve_metrics(host: str, port: int) -> "HttpServer":
    """--chatprobe-metrics-port: /metrics on the bounded server `chatprobe proxy --metrics-listen` uses (a fixed pool
    of workers, a capped number of connections, slow or silent scrapers cut after 10 s; see monitors.httpserver), so
    that no scraper can take this process's descriptors or keep Prometheus out. A port it cannot listen on is a usage
    error: one line, exit 2."""
    from monitors import httpserver

    try:
        if not 0 < port < 65536:
            raise OSError("a port is 1 to 65535 (0: off; a worker listens on the flag's port plus its index)")
        server = httpserver.start_metrics(host, port)
    except OSError as exc:
        print(f"chatprobe: error: --chatprobe-metrics-port {port} on --chatprobe-metrics-host "
              f"{redact.clean(host, 100)!r}: cannot listen: {redact.clean(os_reason(exc), 200)}",
              file=sys.stderr, flush=True)
        sys.exit(int(ExitCode.USAGE))
    logger.info("chatprobe metrics on http://%s:%d/metrics", host, server.server_address[1])
    return server


def _stop_on_sigterm(environment) -> None:
    """Headless with a shape (scenarios/locustfile.py always has one), Locust waits for the shape to end before it
    installs its SIGTERM handler: a `kill`, a pod's termination or a CI job's cancel ended the process at once (143),
    no summary, no exit code, no CSV or HTML (and a master's workers ran on). Stop the run as its end would: the users
    first (their verdicts recorded), then Locust's shutdown, this verdict and exit code, its reports. (Without a
    shape Locust's own handler shuts down: `_quitting` then stops the users and writes the report itself.)"""
    if environment.shape_class is not None and getattr(environment.parsed_options, "headless", False):
        gevent.signal_handler(signal.SIGTERM, _on_sigterm, environment)


def _on_sigterm(environment) -> None:
    """End the shape, which is what Locust's headless run waits on: it then stops the users and shuts down as at the
    shape's own end (quitting the runner from here as well raced that: verdicts came after the summary)."""
    logger.info("Got SIGTERM signal: stopping the run")
    runner = environment.runner
    if isinstance(runner, MasterRunner) and runner.state == STATE_INIT and not current().tests:
        # Still waiting for its --expect-workers: no shape, no run to end. Quitting the runner alone left Locust's
        # wait going on (for ever, without --expect-workers-max-wait): say what came, tell them to quit, exit 1.
        try:
            _say_no_test(runner, f"stopped (SIGTERM) while waiting for workers, {_expected_workers(runner)}")
        finally:  # (a stderr that cannot be written, its pipe's reader gone, must not keep the process waiting)
            runner.quit()
            sys.exit(int(ExitCode.FAILED))
    shape = getattr(runner, "shape_greenlet", None)
    if shape is not None:
        shape.kill(block=False)
    elif runner is not None:
        gevent.spawn(runner.quit)


@events.test_start.add_listener
def _test_start(environment, **_kw) -> None:
    run = _run_of(environment)
    run.reset()
    run.started = time.monotonic()
    opts = environment.parsed_options
    run.tests += 1
    if isinstance(environment.runner, MasterRunner):
        for worker in run.workers.values():  # (what each reports in this test)
            worker.last_report = worker.stopped = None
        try:
            # The options this test runs with: the web UI's form may have changed them since the master loaded its
            # own at its start (the form is checked before a test starts). The workers load the same; the master
            # judges by this scenario's objectives and its shape ramps the users by its stages.
            run.load()
        except ConfigError as exc:
            run.usage_error = redact.clean(str(exc), 1000)
            gevent.spawn(environment.runner.quit)
            return
        if opts is not None:
            # Sent with the spawn messages that follow: what the master loaded, and the real paths of its own path
            # options (a scenario or profile: when it is a file, not a built-in's name).
            paths = {dest: os.path.realpath(value) for dest in PATH_OPTIONS
                     if isinstance(value := getattr(opts, dest, None), str) and value
                     and (dest not in CONTENT_OPTIONS or Path(value).is_file())}
            setattr(opts, MASTER_DIGESTS, {**run.digests(), "paths": paths})
        if opts is not None and getattr(opts, "chatprobe_record", None):
            # Sent to the workers with the spawn messages that follow: one run id for all of this test's files.
            from .recorder import new_run_id

            setattr(opts, RECORD_RUN, new_run_id())
    else:
        tune_collector()
        run.in_test = True
        is_worker = _is_worker(environment)
        try:
            if is_worker:
                run.check_own_options(opts)
            run.load()  # a worker has the master's options now
            if is_worker:
                run.check_master_digests(opts)
            run.start_recording()  # a new run id for each test (the master's, on a worker)
        except ConfigError as exc:
            # The master checked the same options at its start: what fails here is this worker's own view of them
            # (a scenario file it cannot read, a --chatprobe-record DIR it cannot write, ...). A usage error all the
            # same: exit 2 here and at the master.
            environment.process_exit_code = int(ExitCode.USAGE)
            runner = environment.runner
            if not is_worker:
                run.usage_error = redact.clean(str(exc), 1000)  # a single process: its verdict says it, exit 2
                gevent.spawn(runner.quit)
            elif runner is None:
                run.refused = redact.clean(str(exc), 1000)  # (a worker joining a running test: said at its init)
            else:
                _refuse(runner, redact.clean(str(exc), 1000))


def _is_worker(environment) -> bool:
    """Whether this process is a worker, also at the test start of a worker that joins a running test: Locust hands
    it the master's spawn message inside its runner's constructor, before `environment.runner` is set (the options'
    checks were skipped there, and a worker with another scenario than the master's played and was judged)."""
    runner = environment.runner
    return isinstance(runner, WorkerRunner) or (runner is None and bool(getattr(environment.parsed_options, "worker",
                                                                                  False)))


def _refuse(runner, error: str) -> None:
    """Worker: it cannot play the master's test: say why, tell the master (which exits 2 too), quit with exit 2."""
    print(f"chatprobe: error: {error}", file=sys.stderr, flush=True)
    runner.send_message(USAGE_ERROR_MESSAGE, {"worker": runner.worker_index, "error": error})
    gevent.spawn(runner.quit)  # not from inside the spawn message's handler, which quit() kills


@events.spawning_complete.add_listener
def _spawning_complete(**_kw) -> None:
    """--reset-stats: Locust resets this process's stats once the users are spawned (a master's once all its
    workers' are, a worker's as its own options say); the ramp-up's verdicts go with them. (A worker's tally is what it
    has not reported yet, as its Locust stats are.)"""
    if _run is not None and _run.environment.reset_stats:
        _run.reset()


@events.reset_stats.add_listener
def _reset_stats(**_kw) -> None:
    """The web UI's Reset Stats (on the process that serves it: a single process or the master)."""
    if _run is not None:
        _run.reset()


@events.test_stop.add_listener
def _test_stop(environment, **_kw) -> None:
    current().warn_unrecorded()


@events.report_to_master.add_listener
def _report(client_id, data, **_kw) -> None:
    """Each stats interval (and the final report), a worker adds the verdicts since the last one to its report; once it
    took part in a test, every report says whether its users had stopped (all it did is then reported: the master
    knows whether a worker's last stats arrived)."""
    run = current()
    tally, stages = run.take()
    left, run.left = run.left, Left()
    if tally.chats or tally.connection_violations or left.chats or run.in_test:
        runner = run.environment.runner
        data[TALLY_KEY] = {"worker": runner.worker_index, "tally": tally.to_dict(),
                           "stages": {str(i): t.to_dict() for i, t in stages.items()},
                           "stopped": runner.state == STATE_STOPPED, "left": left.to_dict()}


def _on_usage_error(environment, msg, **_kw) -> None:
    """A worker could not use the options: the run is a usage error (exit 2); stop it rather than run short."""
    run = current()
    run.refused_by.add(msg.node_id)  # (it quits: no word that it stopped will come from it)
    if run.usage_error is None:
        run.usage_error = redact.clean(f"worker {msg.data.get('worker')}: {msg.data.get('error')}", 1000)
        gevent.spawn(environment.runner.quit)


def _on_worker_report(client_id, data, **_kw) -> None:
    """Master: a worker's stats report, with its verdicts since its last one (TALLY_KEY) when it has any."""
    report = data.get(TALLY_KEY)
    if not report:
        return
    run = current()
    tally = Tally.from_dict(report["tally"])
    run.tally.merge(tally)
    run.left.merge(report.get("left"))
    if run.stages is not None:
        run.stages.merge({int(i): Tally.from_dict(t) for i, t in report.get("stages", {}).items()})
    run.by_worker[f"w{report['worker']}"] += tally.chats
    worker = _worker_seen(run.environment.runner, client_id)
    worker.chats += tally.chats
    worker.last_report = time.monotonic()
    worker.stopped = bool(report.get("stopped", True))  # (a worker of an older chatprobe: not said, not judged)


def _on_worker_hello(environment, msg, **_kw) -> None:
    """Master: a worker said who it is (sent at its init, right after it connected)."""
    data = msg.data if isinstance(msg.data, dict) else {}
    worker = _worker_seen(environment.runner, msg.node_id)
    pid, host = data.get("pid"), data.get("host")
    worker.pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
    worker.host = host[:100] if isinstance(host, str) else ""


def _worker_seen(runner, client_id: str) -> _Worker:
    """Master: the record of this worker, made at its first hello or report."""
    run = current()
    worker = run.workers.get(client_id)
    if worker is None:
        index = runner.get_worker_index(client_id) if hasattr(runner, "get_worker_index") else len(run.workers)
        worker = run.workers[client_id] = _Worker(client_id, index)
    return worker


def _say_no_test(runner, why: str) -> None:
    """Master: it quits before any test started (it was waiting for its --expect-workers): say so in one line, with
    the workers that came and what would have run. Locust's own line, "Gave up waiting for workers to connect", said
    neither, and no summary came (Locust exits 1 there without its quitting event)."""
    run = current()
    if run.said_no_test or run.tests:
        return
    run.said_no_test = True
    came = [run.workers.get(c.id) or _Worker(c.id, runner.get_worker_index(c.id)) for c in runner.clients.all
            if c.state != STATE_MISSING]
    workers = ("; connected: " + ", ".join(w.named() for w in sorted(came, key=lambda w: w.index))) if came else ""
    print(f"chatprobe: no test ran: {why}{workers}; {run.what()} was not played, nothing judged: exit 1",
          file=sys.stderr, flush=True)


def _expected_workers(runner) -> str:
    """"1 of the 2 workers --expect-workers asks for": how many of them connected."""
    opts = runner.environment.parsed_options
    expected = getattr(opts, "expect_workers", 1) or 1
    came = sum(1 for c in runner.clients.all if c.state != STATE_MISSING)
    return f"{came} of the {expected} worker(s) --expect-workers asks for connected"


def _stop_workers(runner) -> None:
    """Master: before it quits, each worker still running users stops them (their chats end within --stop-timeout)
    and sends what they did; waited for up to --stop-timeout and WORKER_STOP_SLACK. Locust's quit only tells the
    workers to quit and waits half a second for their final reports: a worker whose users were still in a chat sent
    its report later, when the master no longer read it, and every chat since its last stats report (up to 3 s of
    them, and those that --stop-timeout let end) was in neither Locust's stats nor the verdict, though in its
    --chatprobe-record recording."""
    run = current()
    workers = {c.id for c in runner.clients.all if c.state in (STATE_RUNNING, STATE_SPAWNING)} - run.refused_by
    if not workers or not runner.greenlet.greenlets:  # (none: the runner quit already, it reads no message)
        return
    run.stopping_workers = workers
    run.workers_stopped.clear()
    for worker in workers:
        runner.send_message(STOP_WORKERS_MESSAGE, None, client_id=worker)
    if not run.workers_stopped.wait((runner.environment.stop_timeout or 0) + WORKER_STOP_SLACK):
        logger.warning("chatprobe: %d worker(s) did not say they stopped within --stop-timeout and %gs; what they "
                       "did since their last stats report is not counted", len(run.stopping_workers),
                       WORKER_STOP_SLACK)
    run.stopping_workers = set()


def _on_worker_stopped(environment, msg, **_kw) -> None:
    """Master: a worker stopped its users and sent its report (which came before this message)."""
    run = current()
    run.stopping_workers.discard(msg.node_id)
    if not run.stopping_workers:
        run.workers_stopped.set()


def _on_stop_asked(environment, msg, **_kw) -> None:
    """Worker: the master is about to quit. Stop the users (within --stop-timeout, their verdicts recorded), send
    the report now (the report_to_master listeners, _report among them, then Locust's stats), then say so."""
    runner = environment.runner
    if runner.state in (STATE_RUNNING, STATE_SPAWNING):
        runner.stop()
    runner._send_stats()
    runner.send_message(WORKER_STOPPED_MESSAGE, None)


def _worker_quitting(environment, **_kw) -> None:
    """A worker that quits on its own (SIGTERM: a pod's scale-down, a `kill`; Ctrl-C) while its users run: Locust
    would tell the master it quit and stop the users after, never sending what they did since the last stats report,
    so its last seconds of chats, in Locust's stats and in the verdict alike, were lost. Stop the users first (the
    master's --stop-timeout lets their chats end, their verdicts recorded), then send the final report, as the worker
    does when the master tells it to quit."""
    runner = environment.runner
    if runner is None or runner.state not in (STATE_RUNNING, STATE_SPAWNING):
        return  # stopped already (by the master: its final report is sent)
    runner.stop()
    runner._send_stats()  # (Locust's own final report: the report_to_master listeners, _report among them, then stats)


@events.quitting.add_listener
def _quitting(environment, **_kw) -> None:
    # The master judges here, not at test_stop: its test_stop fires before the workers' final reports arrive.
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        return
    current().quitting = True
    # Still running: Locust's own SIGTERM handler (a run without a shape, or the web UI's) or another shutdown that
    # came before the run's end. Locust judged the run here before it stopped the users, and wrote no --html: the
    # verdict, the CSV and the printed stats each held another number of chats. Stop the users first, as the run's
    # end does (their chats end within --stop-timeout, their verdicts recorded), and write the report after.
    cut_short = runner is not None and runner.state in (STATE_RUNNING, STATE_SPAWNING)
    if isinstance(runner, MasterRunner):
        _stop_workers(runner)  # SIGTERM: Locust's shutdown judges before it quits the runner
    elif cut_short:
        runner.stop()
    code = current().verdict()
    if code == int(ExitCode.OK) and runner is not None:
        code = _unjudged_exit_code(environment)
    environment.process_exit_code = code
    if getattr(environment.parsed_options, "csv_prefix", None):
        # Locust rewrites its CSV once per CSV_STATS_INTERVAL_SEC and not at exit: give it one more turn, so
        # the CSV holds the same final numbers as the verdict above.
        gevent.sleep(locust_stats.CSV_STATS_INTERVAL_SEC + 0.2)
    if cut_short and getattr(environment.parsed_options, "html_file", None):
        _save_html_report(environment)
    elif getattr(environment.parsed_options, "html_file", None):
        _scrub_html_file(environment.parsed_options.html_file)  # (Locust wrote it at the run's end, before this)


# The line of Locust's HTML report (its template, webui/dist/report.html) that holds the report's data as JSON.
_TEMPLATE_ARGS = re.compile(r"(window\.templateArgs = )(\{.*\})[ \t]*$", re.M)


def scrub_report(html: str) -> str:
    """Locust's HTML report (its --html file, the web UI's report) without the credentials of the target URL it
    shows as "Target Host" (`--host wss://…/ws?token=…`, a user:password@): the report's data is one JSON line, whose
    host is redacted as every URL chatprobe shows is. The rest of the report (its failures: chatprobe's reasons,
    which hold no server text) is left as Locust wrote it."""
    found = _TEMPLATE_ARGS.search(html)
    if found is None:
        return html
    try:
        args = json.loads(found[2])
    except ValueError:
        return html
    host = args.get("host") if isinstance(args, dict) else None
    if not isinstance(host, str) or (shown := redact.scrub(redact.redact_url(host))) == host:
        return html
    from jinja2.utils import htmlsafe_json_dumps  # (Locust's template writes it with Jinja's tojson: the same)

    args["host"] = shown
    return html[:found.start(2)] + str(htmlsafe_json_dumps(args)) + html[found.end(2):]


def _scrub_html_file(path: str) -> None:
    try:
        text = Path(path).read_text(encoding="utf-8")
        scrubbed = scrub_report(text)
        if scrubbed != text:
            from .safefile import write_report

            write_report(path, scrubbed)
    except OSError as exc:
        logger.error("chatprobe: --html %s: cannot scrub the report of the host's credentials: %s",
                     redact.clean(path, 200), redact.clean(os_reason(exc), 200))


def _scrub_web_report(response):
    """The web UI's report (/stats/report, and its download) scrubbed as the --html file is."""
    from flask import request

    if request.path.endswith("/stats/report") and response.mimetype == "text/html" and not response.direct_passthrough:
        response.set_data(scrub_report(response.get_data(as_text=True)))
    return response


def _save_html_report(environment) -> None:
    """--html, written as Locust writes it at a run's end (which its shutdown on SIGTERM skips)."""
    from locust.html import get_html_report, process_html_filename

    opts = environment.parsed_options
    report = scrub_report(get_html_report(environment, show_download_link=False))
    process_html_filename(opts)
    try:
        path = Path(opts.html_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report, encoding="utf-8")
    except OSError as exc:
        logger.error("chatprobe: --html %s: cannot write the report: %s", redact.clean(opts.html_file, 200),
                     redact.clean(os_reason(exc), 200))


def _unjudged_exit_code(environment) -> int:
    """The objectives judge the chats only: requests of another kind that failed (a mixed-in HttpUser's) or
    exceptions raised in tasks are judged by Locust's own rule, its --exit-code-on-error (default 1)."""
    runner = environment.runner
    failed = sum(e.occurrences for e in runner.errors.values() if e.method not in CHAT_REQUESTS)
    raised = sum(row["count"] for row in runner.exceptions.values())
    if not failed and not raised:
        return int(ExitCode.OK)
    code = getattr(environment.parsed_options, "exit_code_on_error", 1)
    print(f"chatprobe: the objectives are met, but {failed} request(s) chatprobe does not judge failed and {raised} "
          f"exception(s) were raised in tasks: exit {code} (Locust's --exit-code-on-error)", flush=True)
    return int(code)


class ChatUser(User):
    """One virtual user: a connection that plays the scenario's per-user chats (or steps), again and again.

    Abstract, as locust.contrib's users are: a locustfile subclasses it (scenarios/locustfile.py)."""

    abstract = True

    def __init_subclass__(cls, **kwargs) -> None:
        """A subclass's own on_start and on_stop (Locust's hooks for a user's setup, which Locust users override
        without super(): User's do nothing) are wrapped so that the chat session is still opened before the one and
        closed after the other."""
        super().__init_subclass__(**kwargs)
        # As the class resolves them: its own, or a mixin's before ChatUser (`class U(Login, ChatUser)`).
        own_start, own_stop = getattr(cls, "on_start", None), getattr(cls, "on_stop", None)
        if own_start is ChatUser.__dict__["on_start"]:
            own_start = None
        if own_stop is ChatUser.__dict__["on_stop"]:
            own_stop = None
        if callable(own_start) and not getattr(own_start, "_chatprobe", False):
            @functools.wraps(own_start)
            def on_start(self) -> None:
                ChatUser._open(self)
                own_start(self)

            on_start._chatprobe = True  # type: ignore[attr-defined]
            cls.on_start = on_start  # type: ignore[method-assign]
        if callable(own_stop) and not getattr(own_stop, "_chatprobe", False):
            @functools.wraps(own_stop)
            def on_stop(self) -> None:
                try:
                    own_stop(self)
                finally:
                    ChatUser._close(self)

            on_stop._chatprobe = True  # type: ignore[attr-defined]
            cls.on_stop = on_stop  # type: ignore[method-assign]

    def on_start(self) -> None:
        self._open()

    def on_stop(self) -> None:
        self._close()

    def _close(self) -> None:
        """Close the chat session (once: a subclass's on_stop may call super().on_stop() too)."""
        if getattr(self, "_session_open", False):
            self._session_open = False
            self.session.close()

    def _open(self) -> None:
        """The user's chat session and script (once: a subclass's on_start may call super().on_start() too)."""
        if getattr(self, "_session_open", False):
            return
        run = current()
        if run.refused is not None:
            return  # (a worker that cannot play the master's test: `play` stops the user)
        if run.scenario is None:
            run.load()
        assert run.scenario is not None and run.target is not None
        self.chatprobe = run
        worker = max(getattr(self.environment.runner, "worker_index", 0), 0)
        user_id = f"{run.user_prefix}-w{worker}-u{next(_user_numbers)}"
        self.session = SyncSession(run.target, user_id, run.scenario.name, run.session_sink(),
                                   connect_timeout=run.scenario.connect_timeout)
        self.script = run.scenario.user_script(run.target.profile)
        self._plan = self.script.plan()
        self._last: ChatCall | RawCall | ChatGroup | None = None
        self.backoff = Backoff()
        self._retry_at = 0.0  # time.monotonic() before which the user does not connect again (the backoff)
        self._connected = self._refused = False  # of the current script item's chats
        self._session_open = True

    def wait_time(self) -> float:
        """The scenario's think_time (a step's own after its chats): Locust waits this between the user's chats. A
        subclass may set its own, as any Locust user's; the backoff after failed connections is `play`'s either way."""
        return self.script.pause(self._last) if self._last is not None else 0.0

    def _chat(self, call: ChatCall | None = None) -> None:
        call = call or self.script.chat()
        # Without think time the verdict comes when the settle window ends, while the next chat already plays
        # (overlap_settle, as under `chatprobe run`): recorded then, by _verdict; None here means the run ended.
        result = self.session.chat(call.content, call.expectations, call.options, self._verdict)
        if result is not None and connect_failed(result):
            self._refused = True
        else:
            self._connected = True

    def _verdict(self, result: ChatResult) -> None:
        """A chat's final verdict into Locust's stats and the tally; its time when it has none (an error): from
        when the chat began (sent_at, on the session's monotonic clock) to now."""
        self.chatprobe.record(result, time.monotonic() - result.sent_at)

    def _record(self, result: ChatResult, t0: float) -> None:
        self.chatprobe.record(result, time.monotonic() - t0)
        if connect_failed(result):
            self._refused = True
        else:
            self._connected = True

    def _back_off(self, seconds: float) -> None:
        """Wait out the backoff as Locust's own wait (TaskSet.wait) waits: a user stopped meanwhile stops at once
        (StopUser), whatever --stop-timeout gives a task to finish. A plain sleep here held the run's stop for up to
        BACKOFF_CAP, and the user then connected once more after the run had ended."""
        if self._state == LOCUST_STATE_STOPPING:
            raise StopUser()
        self._state = LOCUST_STATE_WAITING
        gevent.sleep(seconds)
        if self._state == LOCUST_STATE_STOPPING:
            raise StopUser()
        self._state = LOCUST_STATE_RUNNING

    @task
    def play(self) -> None:
        """The next item of the scenario's user script (its steps, or chats_per_user chats with parallel_chats in
        flight), played again and again; Locust's wait_time (the think time) comes between items. After chats whose
        connection failed, the next item waits out the backoff first (from when they ended: the think time counts
        towards it), whatever wait_time the class sets, so that an unreachable host is not hammered."""
        if current().refused is not None:
            raise StopUser()  # (a worker that cannot play the master's test: it quits)
        if (backoff := self._retry_at - time.monotonic()) > 0:
            self._back_off(backoff)
        item = next(self._plan, None)
        if item is None:
            self._plan = self.script.plan()
            item = next(self._plan)
        self._last = item
        self._connected = self._refused = False
        try:
            if isinstance(item, ChatCall):
                self._chat(item)
            elif isinstance(item, RawCall):
                t0 = time.monotonic()
                self._record(self.session.send_invalid(item.raw, item.expectations), t0)
            else:
                pool = gevent.pool.Pool(item.parallel)
                try:
                    for _ in range(item.count):
                        pool.spawn(self._chat)
                    pool.join(raise_error=True)
                finally:
                    pool.kill()
        finally:
            if self._connected:
                self.backoff.succeeded()
                self._retry_at = 0.0
            elif self._refused:
                self.backoff.failed()
                self._retry_at = time.monotonic() + self.backoff.delay()
