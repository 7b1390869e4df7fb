"""The composition root: `chatprobe run | check | sim | monitor | proxy | list`, wiring drivers, sinks and servers.

Exit codes (harness/results.py ExitCode): 0 every objective met, 1 an objective failed, 2 usage or configuration
error (also: the server rejected the credentials of every chat), 3 target unreachable, 130 / 143 interrupted by
SIGINT / SIGTERM (the chats in flight judged, every report written).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import signal
import stat
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, cast

# Only what --help, `list` and every command need is imported here; the rest loads with the command that uses it,
# so that `chatprobe --help` or `list` costs no pydantic models, no asyncio client, no reports (start-up CPU).
from .catalog import BUILTIN_SUITE, builtin_profiles, builtin_scenarios
from .errors import MESSAGE_LIMIT, ConfigError, ExitCode, closest, hidden_package, tolerant, unknown_flag_hint
from .targets import add_target_args, options_from_args

if TYPE_CHECKING:
    import asyncio

    from rich.console import Console

    from .results import ScenarioRun
    from .sinks import Sink

# A line of progress this often when the output is not a terminal (a CI log), so the run is seen to be alive.
PROGRESS_EVERY = 5.0
REPORT_FLAGS = ("json", "junit", "html")
MAX_FRAME_LIMIT = 1 << 30  # `check --max-size`
MIN_PROGRESS_INTERVAL = 0.1  # seconds: `run --progress-interval`


# k6's load flags, as a k6 user types them after `run`: the load is the scenario file's here, one way to give it.
_K6_FLAGS = {
    "--vus": "users: N", "-u": "users: N",
    "--iterations": "chats_per_user: N (each user's chats)", "-i": "chats_per_user: N (each user's chats)",
    "--duration": "stages: [{duration: 30s, users: N, ramp: false}] (users held for a time)",
    "-d": "stages: [{duration: 30s, users: N, ramp: false}] (users held for a time)",
    "--stage": "stages: [{duration: 30s, users: N}] (a ramp to N)", "-s": "stages: [{duration: 30s, users: N}]",
    "--rps": "arrival_rate: N with duration: 1m (chats per second)",
}
# k6's flags for where results go and how TLS is checked: the whole advice each.
_K6_OUTPUT_FLAGS = {
    "--out": "chatprobe writes --json FILE, --junit FILE and --html FILE, and pushes metrics with --pushgateway URL",
    "-o": "chatprobe writes --json FILE, --junit FILE and --html FILE, and pushes metrics with --pushgateway URL",
    "--summary-export": "chatprobe writes the run's summary with --json FILE",
    "--insecure-skip-tls-verify": "chatprobe's is --insecure (or --ca-file PEM to trust a private CA)",
}


class _Parser(argparse.ArgumentParser):
    commands: Mapping[str, argparse.ArgumentParser]  # the top-level parser's sub-commands (build_parser)
    given: list[str] = []  # the arguments of its last parse

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self.given = list(sys.argv[1:] if args is None else args)  # for a usage error to look in (unknown_flag_hint)
        return super().parse_known_args(args, namespace)

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        """As argparse's, but a flag no parser took is reported by the sub-command's parser, which knows the flags
        a typo may have meant (the top-level one knows only --version)."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(self, "commands", {}).get(getattr(ns, "command", None) or "", self)
            command.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):
            given = message.partition(":")[2].split()
            flag = next((a.partition("=")[0] for a in given
                         if a.partition("=")[0] in _K6_FLAGS or a.partition("=")[0] in _K6_OUTPUT_FLAGS), None)
            if flag in _K6_FLAGS:
                message += (f" (k6's {flag}: chatprobe takes the load from the scenario file, "
                            f"{_K6_FLAGS[flag]}; docs/scenarios.md)")
            elif flag is not None:
                message += f" (k6's {flag}: {_K6_OUTPUT_FLAGS[flag]})"
            else:
                message = unknown_flag_hint(self, message, self.given)
        else:  # a required argument missing: a misspelt flag may be why (unknown_flag_hint)
            message = unknown_flag_hint(self, message, self.given)
        if getattr(self, "commands", None) is not None and "(did you mean" not in message:
            message = _unechoed(message, self.commands, self.given) + _command_hint(self.commands, self.given)
        from .redact import clean

        self.exit(ExitCode.USAGE, f"{self.prog}: error: {clean(message, MESSAGE_LIMIT)}\n")


_RECORDING_SUFFIXES = (".har", ".jsonl", ".sse", ".ndjson", ".log")
_SCENARIO_SUFFIXES = (".yaml", ".yml", ".json")


def _command_hint(commands: Mapping[str, argparse.ArgumentParser], given: list[str]) -> str:
    """What the first word of a command line that names no command was likely meant as: a misspelt command
    (`chek`), a scenario or a recording given without its command (`chatprobe basic`, `chatprobe session.har` or a
    directory of them), a server's URL, or a command's flag given before any command (`chatprobe --target URL`,
    where argparse took the URL for the command). Said as what to type; "" when nothing fits. Only a usage error
    comes here."""
    if not given:
        return ""
    first = given[0]
    if first.startswith("-"):
        flag = first.partition("=")[0]
        takers = [name for name in ("run", "check", "monitor", "proxy", "sim") if flag in _command_flags(commands, name)]
        if not takers:
            return ""
        which = " and ".join(f"`chatprobe {name}`" for name in takers)
        return f" ({flag} is a flag of {which}: name the command first, chatprobe {takers[0]} {flag} …)"
    meant = closest(first, [name for name in commands if name != first])
    if meant is None and first.lower() in commands:
        meant = first.lower()
    if meant is not None:
        return f" (did you mean {meant!r}?)"
    if "://" in first:
        return " (a server's URL goes after run's --target: chatprobe run --target URL)"
    lowered = first.lower()
    if lowered.endswith(_RECORDING_SUFFIXES) or os.path.isdir(first):
        return f" (to judge a recording: chatprobe check {first})"
    if first in builtin_scenarios() or lowered.endswith(_SCENARIO_SUFFIXES):
        return f" (to run a scenario: chatprobe run {first})"
    return ""


def _unechoed(message: str, commands: Mapping[str, argparse.ArgumentParser], given: list[str]) -> str:
    """`message` without the value of a flag given before any command: argparse took it for the command (`invalid
    choice: '…'`) or echoed `--flag=value` whole, and the flag may be one whose value is a secret (`chatprobe
    --jwt-secret S`, a mistyped `--token T`): said as the flag's value, never shown. A word after a flag that takes no
    value (`-q basic`) is no value of it, and is shown."""
    if not given or not given[0].startswith("-"):
        return message
    flag, eq, value = given[0].partition("=")
    if eq:
        return message.replace(given[0], f"{flag}=…") if value else message
    if len(given) < 2 or any(_command_flags(commands, name).get(flag) is False
                             for name in ("run", "check", "monitor", "proxy", "sim")):
        return message
    return message.replace(f"invalid choice: {given[1]!r}", f"invalid choice: the value given to {flag}")


def _command_flags(commands: Mapping[str, argparse.ArgumentParser], name: str) -> dict[str, bool]:
    """The flags of command `name`, each with whether it takes a value (sim, monitor and proxy parse their own: their
    parsers are built here, on a usage error only)."""
    if name == "sim":
        from agentsim.cli import build_parser as sim_parser

        parser = sim_parser()
    elif name == "monitor":
        from monitors.monitor import build_parser as monitor_parser

        parser = monitor_parser()
    elif name == "proxy":
        from monitors.proxy import build_parser as proxy_parser

        parser = proxy_parser()
    else:
        parser = commands[name]
    return {flag: action.nargs != 0 for action in parser._actions for flag in action.option_strings
            if flag not in ("-h", "--help") and action.help != argparse.SUPPRESS}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("chatprobe")
    except PackageNotFoundError:
        return "unknown"


class _VersionAction(argparse.Action):
    """--version, reading the package metadata only when asked (importlib.metadata costs every other command
    ~8 ms of start-up)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"chatprobe {_version()}")  # on stdout, as argparse's own version action
        parser.exit()


def _add_report_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reports")
    g.add_argument("--json", metavar="FILE", help="write the full result, one record per chat (docs/json-report.md); "
                   "- for standard output")
    g.add_argument("--junit", metavar="FILE", help="write JUnit XML, one test case per scenario")
    g.add_argument("--html", metavar="FILE", help="write a self-contained HTML report with charts")
    g.add_argument("--quiet", "-q", action="store_true", help="print only the verdict table")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="chatprobe", description="Prove that an agent chat server streams every event, in order, "
                "to the right user, fast — and keep proving it in production.")
    p.add_argument("--version", action=_VersionAction)
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    p.commands = sub.choices

    r = sub.add_parser("run", help="run scenarios once and exit with their verdict (the CI gate)",
                       description="Run scenarios against a target (default: the built-in suite against the "
                                   "embedded agentsim). Exit 0 objectives met, 1 failed, 2 usage (or the server rejected "
                                   "the credentials of every chat), 3 unreachable, "
                                   "130/143 interrupted (reports still written).")
    r.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"built-in name or YAML file "
                   f"(built-ins: {', '.join(builtin_scenarios())}); default: {' '.join(BUILTIN_SUITE)}")
    add_target_args(r)
    r.add_argument("--objective", action="append", default=[], metavar="NAME.STAT=VALUE",
                   help="override an objective, like a k6 threshold (e.g. time_to_first_event.p95=1.5s)")
    _add_report_args(r)
    r.add_argument("--record", metavar="DIR", help="write every connection's frames to DIR as JSON Lines, secrets "
                   "scrubbed, for `chatprobe check`; each run's files are named after a run id of its own, so runs "
                   "recorded into one DIR are kept and judged apart (bounded per run: 1,000 files, 256 MiB on disk "
                   "with the files of connections still open, oldest rotated out)")
    r.add_argument("--pushgateway", metavar="URL", help="push the run's metrics to a Prometheus Pushgateway")
    r.add_argument("--job", default="chatprobe", help="Pushgateway job name (default chatprobe)")
    r.add_argument("--sim-fault", action="append", default=[], metavar="SPEC",
                   help="inject a fault into the embedded agentsim (see `chatprobe sim --help`)")
    r.add_argument("--sim-seed", type=int, default=None, metavar="N",
                   help="seed of the embedded agentsim's random choices, for a repeatable run")
    r.add_argument("--max-duration", metavar="DURATION", default=None,
                   help="bound on the whole run (e.g. 10m): each scenario gets at most what is left")
    r.add_argument("--progress-interval", metavar="DURATION", default=f"{PROGRESS_EVERY:g}s",
                   help="when the output is not a terminal (CI), print a progress line this often "
                        f"(default {PROGRESS_EVERY:g}s)")

    c = sub.add_parser("check", help="judge recorded traffic offline (JSON Lines, SSE bodies, HAR)",
                       description="Judge recordings with the same profiles, rules and reports as `run`: JSON Lines "
                                   "(what --record writes), text/event-stream bodies, or HAR 1.2 files from a "
                                   "browser; a directory is one recording (one per run when --record wrote several runs "
                                   "into it). Exit 0 passed, 1 failed, 2 usage (or the recording says the server rejected "
                                   "the credentials of every chat), 3 the recording says no chat reached the target, "
                                   "130/143 interrupted (reports still written).")
    c.add_argument("paths", nargs="+", metavar="FILE", help="recording files or directories")
    c.add_argument("--profile", default="netra", metavar="NAME|FILE", help="wire-format profile (default netra)")
    c.add_argument("--scenario", default=None, metavar="NAME|FILE",
                   help="the expectations and objectives to judge by (default: the profile's defaults)")
    c.add_argument("--format", choices=("jsonl", "sse", "har"), default=None,
                   help="the recordings' format (default: told from the content)")
    c.add_argument("--max-size", default="4MiB", metavar="SIZE", help="the largest frame taken (default 4MiB)")
    c.add_argument("--objective", action="append", default=[], metavar="NAME.STAT=VALUE",
                   help="override an objective of the scenario")
    _add_report_args(c)

    s = sub.add_parser("sim", help="run agentsim, the reference agent chat server", add_help=False)
    s.add_argument("sim_args", nargs=argparse.REMAINDER)

    m = sub.add_parser("monitor", help="probe continuously and serve /metrics, /probe and recent probes at /",
                       add_help=False)
    m.add_argument("monitor_args", nargs=argparse.REMAINDER)

    x = sub.add_parser("proxy", help="watch real users' chats passing through and serve /metrics", add_help=False)
    x.add_argument("proxy_args", nargs=argparse.REMAINDER)

    sub.add_parser("list", help="list built-in scenarios and profiles")
    return p


# What names standard output as a report's path: `-`, as for most tools that write a file (`--json - | jq`), and the
# names of the process's own standard output (written in place, as any device is). The summary table and every other
# line chatprobe prints go to standard error then, so that standard output is the report alone.
STDOUT_NAMES = frozenset({"-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"})
# The standard streams this process was started without (`>&-`, a daemon's): main() gives each /dev/null.
_CLOSED_AT_START: set[str] = set()


def report_to_stdout(args: argparse.Namespace) -> bool:
    """Whether a report flag of this command names standard output (`--json -`)."""
    return any(getattr(args, flag, None) in STDOUT_NAMES for flag in REPORT_FLAGS)


def check_reports(args: argparse.Namespace) -> None:
    """Every report flag given names a writable place, and no two the same file (one would overwrite the other)."""
    seen: dict[str, str] = {}
    to_stdout: str | None = None
    for flag in REPORT_FLAGS:
        path = getattr(args, flag)
        if path in STDOUT_NAMES:
            if "stdout" in _CLOSED_AT_START:
                # (the run would pass with its report gone to /dev/null: a CI that asked for it must not)
                raise ConfigError(f"--{flag} {path}: standard output is closed (started with it closed, `>&-`): the "
                                  "report would go nowhere; give it a file")
            if to_stdout is not None:
                raise ConfigError(f"--{to_stdout} and --{flag} both write to standard output ({path}): one report "
                                  "would be mixed into the other; give one of them a file")
            to_stdout = flag
            continue
        check_writable(path, f"--{flag}")
        if path and not _is_device(path):  # (two reports to /dev/null or a terminal are fine)
            real = os.path.realpath(path)
            if real in seen:
                raise ConfigError(f"--{seen[real]} and --{flag} both name {path}: one report would overwrite the other")
            seen[real] = flag
    if to_stdout is not None and seen:
        # Standard output redirected to a file another report names (`--json - --junit r.xml > r.xml`): that report
        # replaces the file, and the one written to standard output went with the file it replaced (exit 0).
        try:
            out = os.fstat(sys.stdout.fileno())
        except (OSError, ValueError):
            return
        if stat.S_ISREG(out.st_mode):
            for real, flag in seen.items():
                with contextlib.suppress(OSError):
                    if os.path.samestat(os.stat(real), out):
                        raise ConfigError(f"--{to_stdout} {getattr(args, to_stdout)} writes to standard output, which "
                                          f"is the file --{flag} names ({getattr(args, flag)}): one report would "
                                          "overwrite the other; give one of them another file")


def _is_device(path: str) -> bool:
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def check_writable(path: str | None, flag: str) -> None:
    """Fail before the run, not after it, when a report cannot be written there."""
    if path is None:
        return
    if not path.strip():  # `--junit ''` or `--json "$UNSET"`: a CI that asked for the file must not pass without it
        raise ConfigError(f"{flag}: an empty path")
    from .safefile import writable_problem

    problem = writable_problem(path)
    if problem is not None:
        raise ConfigError(f"{flag} {path}: {problem}")


def check_pushgateway(url: str) -> None:
    """`--pushgateway` as the push will use it (prometheus_client: HOST:PORT or an http(s):// URL, a path prefix
    allowed, `/metrics/job/…` appended), checked before the run: a URL no push could use was only a warning after it
    (a CI job never learnt its metrics went nowhere), or a traceback. The URL is never shown (it may hold a password)."""
    def refuse(problem: str) -> NoReturn:
        raise ConfigError(f"--pushgateway: {problem}; give HOST:PORT or http(s)://HOST:PORT[/PATH]")

    if any(c <= " " or c == "\x7f" for c in url) or not url.isascii():
        refuse("the URL holds a space, a control character or a character that is not ASCII")
    scheme, sep, _ = url.partition("://")
    if sep and scheme.lower() not in ("http", "https"):
        refuse("the scheme is not http:// or https://")
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url if sep else f"http://{url}")
        parts.port  # noqa: B018  (raises ValueError for a port out of range or not a number)
    except ValueError as exc:
        if "port" in str(exc).lower():
            refuse("the port is not a number from 1 to 65535")
        refuse("not a URL")
    if parts.port == 0:
        refuse("port 0 is no server's port")
    if parts.username is not None or parts.password is not None:
        refuse("the URL holds credentials, which the push never sends")
    if not parts.hostname:
        refuse("the URL names no host")
    from .targets import host_name_fits

    if not host_name_fits(parts.hostname):  # (a push to it fails only after the run, its warning echoing the name)
        refuse("not a valid host name (labels of 1 to 63 characters, 253 in all)")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        refuse("the URL has a query or a fragment (the push appends /metrics/job/… to it)")


def _max_duration(text: str | None) -> float | None:
    from .durations import parse_duration

    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"--max-duration: {exc}") from None
    if seconds <= 0:
        raise ConfigError("--max-duration: must be more than 0")
    return seconds


class _Stopped(Exception):
    """A signal broke a wait before the run started (_Interrupt.breaking)."""


class _Interrupt:
    """SIGINT / SIGTERM while a run (or a check) goes on: stop starting chats (reading records), judge those in
    flight (open) as they stand, write the reports; exit 130 / 143."""

    def __init__(self, event: Any = None, what: str = "the chats in flight") -> None:
        if event is None:
            import asyncio  # loaded by the commands that run something, not by --help or list

            event = asyncio.Event()
        self.event = event
        self.what = what
        self.signal: int | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._fire, sig)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """The handlers for a command without an event loop (`check`), or for synchronous work on the loop (`run`'s
        reports), the previous ones back after it."""
        previous = {sig: signal.signal(sig, lambda s, _frame: self._fire(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextlib.contextmanager
    def breaking(self) -> Iterator[None]:
        """The handlers for a blocking wait on the event loop's thread before any chat starts (a `--token-file` pipe,
        which has 30 s to deliver): the signal is taken at once and breaks the wait (_Stopped raised), where the loop's
        handler would have seen it only once the wait was over (Ctrl-C ignored for 30 s, then exit 2)."""
        def fire(sig: int, _frame: Any) -> None:
            self._fire(sig)
            raise _Stopped

        previous = {sig: signal.signal(sig, fire) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _fire(self, sig: int) -> None:
        if self.signal is None:
            self.signal = sig
            print(f"\nchatprobe: {signal.Signals(sig).name}: stopping; {self.what} are judged as they stand "
                  "(again to end at once)", file=sys.stderr, flush=True)
        else:
            # A second signal: the process ends now, as k6's second Ctrl-C does, with the first signal's code; what
            # the stop had not judged or written yet is not (a report is written whole or not at all, safefile.py).
            print(f"\nchatprobe: {signal.Signals(sig).name} again: ending now, unjudged and unreported",
                  file=sys.stderr, flush=True)
            if (safefile := sys.modules.get("harness.safefile")) is not None:  # a report half-written is not left
                safefile.discard_unfinished()
            for stream in (sys.stdout, sys.stderr):  # the live view hid a terminal's cursor: shown again, as it ends
                with contextlib.suppress(Exception):
                    if stream.isatty():
                        stream.write("\x1b[?25h")
                        stream.flush()
            os._exit(int(self.exit_code or ExitCode.TERMINATED))
        self.event.set()

    @property
    def exit_code(self) -> ExitCode | None:
        if self.signal is None:
            return None
        return ExitCode.INTERRUPTED if self.signal == signal.SIGINT else ExitCode.TERMINATED


async def _progress(view: Any, console: Console, every: float) -> None:
    """One plain line every `every` seconds (no escape codes): a CI log shows the run is alive and how it goes."""
    import asyncio

    while True:
        await asyncio.sleep(every)  # the reporting period itself, not a wait for a condition
        console.print(view.progress_line(), markup=False, highlight=False)


async def _run(args: argparse.Namespace, console: Console, interrupt: _Interrupt) -> int:
    import asyncio

    from .collector import tune_collector
    from .durations import parse_duration
    from .events import Outcome
    from .profiles import load_profile
    from .report import LiveView
    from .results import RUN_OUT_OF_TIME, STOPPED_BY, not_started
    from .runner import run_scenario
    from .scenario import Scenario, apply_overrides, load_scenario, where_in
    from .sinks import Fanout
    from .targets import (
        EMBEDDED_DIALECTS,
        Target,
        TokenProvider,
        check_credentials,
        check_open_files,
        check_scenario_fits,
        check_tls_fits,
        embedded_sim,
        make_target,
        read_token,
        target_label,
        target_profile,
    )

    names = args.scenarios or list(BUILTIN_SUITE)
    check_reports(args)
    _reports_apart_from(args, [], [*names, args.profile, args.token_file], args.record)
    scenarios = [apply_overrides(load_scenario(n), args.objective) for n in names]
    sources = {id(s): n for s, n in zip(scenarios, names, strict=True)}
    first_named: dict[str, Scenario] = {}
    for s in scenarios:
        # Every report and metric tells scenarios apart by name: a JUnit test case's identity, a --json reader's key,
        # the `scenario` label and the Pushgateway group (where the second run's push replaced the first's).
        if (earlier := first_named.setdefault(s.name, s)) is not s:
            raise ConfigError(f"{where_in(sources[id(s)], ('name',))}: field 'name': scenario name {s.name!r} is "
                              f"given twice (also {where_in(sources[id(earlier)], ('name',))}): the reports, the "
                              "metrics and the Pushgateway groups need a name of its own for each scenario")

    def fits(scenario: Scenario, target: Target) -> None:  # a misfit names the scenario's file and line
        try:
            check_scenario_fits(scenario, target)
            check_open_files(scenario, embedded=opts.url is None)
        except ConfigError as exc:
            if exc.field is None:
                raise
            raise ConfigError(f"{where_in(sources[id(scenario)], (exc.field,))}: {exc}", field=exc.field) from None

    opts = options_from_args(args)
    if not args.scenarios:
        # The built-in suite: the scenarios a server of the target's dialect can carry (its `dialects`), and against a
        # server of one's own not those that need agentsim's directives to fail on purpose (said, not silent).
        carried = {id(s): load_profile(opts.profile or s.profile or "netra") for s in scenarios}
        if other := [s for s in scenarios if not s.carried_by(carried[id(s)].carries)]:
            # Said, as the agentsim-only ones are: a suite of 3 where 6 were expected, with no word, reads as all.
            profile = carried[id(other[0])]
            written = sorted({d for s in other for d in s.dialects or ()})
            own = "" if profile.name in builtin_profiles() else (
                f"; a profile of your own that varies {written[0]} says so, `dialect: {written[0]}`, docs/profiles.md")
            print(f"chatprobe: left out of the built-in suite for profile {profile.name}: "
                  f"{', '.join(s.name for s in other)} (written for {', '.join(written)}{own})", file=sys.stderr)
            left_out = {id(s) for s in other}
            scenarios = [s for s in scenarios if id(s) not in left_out]
        if opts.url is not None and (sim_only := [s.name for s in scenarios if s.agentsim_only]):
            scenarios = [s for s in scenarios if not s.agentsim_only]
            print(f"chatprobe: left out of the built-in suite against --target: {', '.join(sim_only)} (it makes the "
                  "server fail on purpose with agentsim's #fail-tool / #fail-agent; name it to run it anyway)",
                  file=sys.stderr)
    max_duration = _max_duration(args.max_duration)
    try:
        progress_every = parse_duration(args.progress_interval)
    except ValueError as exc:
        raise ConfigError(f"--progress-interval: {exc}") from None
    if not 0 < progress_every < float("inf"):
        raise ConfigError("--progress-interval: must be more than 0")
    if progress_every < MIN_PROGRESS_INTERVAL:  # `1ms` or `0.0001`: a thousand lines a second into a CI log
        raise ConfigError(f"--progress-interval: at least {MIN_PROGRESS_INTERVAL * 1000:g}ms (a line more often "
                          "floods the log and takes the run's CPU)")
    run_deadline = None if max_duration is None else time.monotonic() + max_duration
    if opts.url is not None and args.sim_fault:
        raise ConfigError("--sim-fault applies to the embedded agentsim only; leave out --target to use it")
    if opts.url is not None and args.sim_seed is not None:  # (it was ignored: a run believed repeatable was not)
        raise ConfigError("--sim-seed applies to the embedded agentsim only; leave out --target to use it")
    if args.job and args.pushgateway is None and args.job != "chatprobe":
        raise ConfigError("--job needs --pushgateway")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", args.job or ""):
        raise ConfigError(f"--job {args.job!r}: a job name is 1-128 letters, digits, '_', '.', ':' or '-'")
    if args.pushgateway is not None:
        check_pushgateway(args.pushgateway)
    recorder = None
    if args.record is not None:  # the recorder's modules (~17 ms of imports) load only for a run that records
        from .recorder import open_recorder

        recorder = open_recorder(args.record, "--record")

    read: TokenProvider | None = None
    try:
        with interrupt.breaking():
            # Everything is checked before the embedded server starts: a credentials flag that could not be used (an
            # unset "$VAR", a token file that is not there) is a usage error, which its own tokens would hide.
            if opts.url is not None:
                read = read_token(opts)
            else:
                check_credentials(opts)
    except _Stopped:
        # Stopped while the credentials were read (a --token-file pipe that has not delivered yet): no chat was
        # started, and every scenario is in the reports as not run, as for a stop between two scenarios.
        name = opts.name or (target_label(opts.url) if opts.url is not None else "agentsim")
        stopped = [not_started(s, name, STOPPED_BY["interrupted"], time.time()) for s in scenarios]
        with interrupt.installed():
            return _finish(args, console, stopped, [], interrupt)

    async with contextlib.AsyncExitStack() as stack:
        if opts.url is not None:
            assert read is not None
            tokens = read
            url = opts.url
        else:
            check_tls_fits(opts, "the embedded agentsim", "give --target wss://… for a server of yours")
            dialects = set()
            for scenario in scenarios:
                profile = target_profile(opts, scenario.profile)
                if profile.name not in EMBEDDED_DIALECTS:
                    raise ConfigError(f"--profile {profile.name}: the embedded agentsim speaks "
                                      f"{', '.join(sorted(EMBEDDED_DIALECTS))}; give --target URL, the "
                                      f"address of a server that speaks {profile.name}")
                probe_url = "http://127.0.0.1:1" if profile.transports[0] == "sse" else "ws://127.0.0.1:1"
                fits(scenario, make_target(opts, TokenProvider(), scenario.profile, url=probe_url, stand_in=True))
                dialects.add(profile.name)
            if len(dialects) > 1:
                raise ConfigError(f"the embedded agentsim speaks one dialect per run; these scenarios need "
                                  f"{', '.join(sorted(dialects))}: run them apart, or give --target")
            protocol = dialects.pop() if dialects else "netra"
            sim, tokens = await stack.enter_async_context(embedded_sim(args.sim_fault, args.sim_seed,
                                                                       protocol=protocol))
            url = sim.url
            # A stable `target` label: the embedded server's port changes every run.
            opts = dataclasses.replace(opts, name=opts.name or "agentsim")
            if not args.quiet:
                console.print(f"[dim]embedded agentsim on {url}[/dim]")
        targets = []
        for scenario in scenarios:
            target = make_target(opts, tokens, scenario.profile, url=url)
            fits(scenario, target)
            targets.append(dataclasses.replace(target, recorder=recorder))
        # What start-up built is frozen out of the collector's sight (a full collection during the run then walks
        # only what the run allocated: its pauses delay every chat due meanwhile; BENCHMARKS.md, arrival rate), and
        # the youngest generation is collected less often.
        tune_collector()
        runs: list[ScenarioRun] = []
        push_sinks = []
        # agentsim draws a run's faults from its seed and the run's user and chat number: with --sim-seed the
        # users are named from the seed too (not at random), so the same seed gives the same chats the same
        # faults, run after run.
        seed = args.sim_seed if opts.url is None else None
        for i, (scenario, target) in enumerate(zip(scenarios, targets, strict=True)):
            left = None if run_deadline is None else max(0.0, run_deadline - time.monotonic())
            if interrupt.event.is_set() or left == 0:
                # The scenarios the stop, or the end of --max-duration, came before are reported as not run (in
                # JUnit a <skipped> saying why), not left out of the reports, nor run for no time: that was an
                # <error>, "the scenario could not run: no chat was started".
                why = STOPPED_BY["interrupted"] if interrupt.event.is_set() else RUN_OUT_OF_TIME
                runs += [not_started(s, t.name, why, time.time())
                         for s, t in zip(scenarios[i:], targets[i:], strict=True)]
                break
            if left is not None:
                scenario = scenario.model_copy(update={"max_duration": min(scenario.max_duration, left)})
            sinks: list[Sink] = []
            if args.pushgateway:
                from monitors.push import PushSink

                ps = PushSink(target.name, scenario.name)
                push_sinks.append(ps)
                sinks.append(ps)
            live = LiveView(console, scenario.name, planned=scenario.planned_chats())
            if not args.quiet:  # -q shows no progress: nothing would read what it counts, per chat
                sinks.append(live)
            ticker = None
            if not args.quiet and not console.is_interactive:
                ticker = asyncio.ensure_future(_progress(live, console, progress_every))
            try:
                with live if not args.quiet else contextlib.nullcontext():
                    prefix = None if seed is None else f"cp-seed{seed}-s{i + 1}"
                    run = await run_scenario(scenario, target, Fanout(sinks), user_prefix=prefix, stop=interrupt.event)
            finally:
                if ticker is not None:
                    ticker.cancel()
            if recorder is not None and (dropped := recorder.take_dropped())[0]:
                conns, frames, size = dropped
                run.warnings.append(
                    f"--record: {frames} frames ({size:,} bytes) of {conns} connection(s) were not recorded, "
                    f"{recorder.dropped_why()}; {recorder.gaps_said(recorder.take_unfiled())}, and `chatprobe check` "
                    "judges the chats open there as they stood")
            runs.append(run)
            if not args.quiet and not console.is_interactive:
                st = run.stats
                verdict = "UNREACHABLE" if run.unreachable else "objectives met" if run.passed else "OBJECTIVES FAILED"
                console.print(f"{scenario.name}: {st.chats} chats, {st.outcomes[Outcome.PASSED]} passed, {verdict} in "
                              f"{run.elapsed:.1f}s", markup=False, highlight=False)
    # Credentials refused when none were given (no token, none in the URL's query or a header): the message says so.
    no_token = not tokens.configured and "?" not in url and not (opts.headers or opts.header_env)
    # Through the summary and the reports, the signal is taken as it comes, not when the loop next turns (after the
    # exit code was decided): a stop then changes nothing of what is written, and the exit code is the stop's, as
    # `check`'s is. A SIGTERM while a large run's reports were written exited 0.
    with interrupt.installed():
        return _finish(args, console, runs, push_sinks, interrupt, no_token=no_token)


def _finish(args: argparse.Namespace, console: Console, runs: list[ScenarioRun], push_sinks: list[Any],
            interrupt: _Interrupt | None, *, no_token: bool = False) -> int:
    """The summary, every report asked for, the Pushgateway; then the exit code."""
    from .report import print_summary, write_html, write_json, write_junit
    from .results import exit_code

    print_summary(console, runs, table_only=args.quiet)
    writers: dict[str, Callable[[str, list[ScenarioRun]], None]] = {
        "json": write_json, "junit": write_junit, "html": write_html}
    for flag in REPORT_FLAGS:
        path = getattr(args, flag)
        if path:
            try:
                writers[flag](path, runs)
            except OSError as exc:
                # The verdict is printed above; a CI that asked for the file must not pass without it.
                raise ConfigError(f"--{flag} {path}: could not write the report: {exc.strerror or exc}") from None
    if push_sinks:
        from monitors.push import push_all

        push_all(push_sinks, args.pushgateway, args.job)
    code = exit_code(runs)
    if code is ExitCode.USAGE:
        none_given = "" if not no_token else (
            "; no token was sent: no --token-env, --token-file or --jwt-secret-env, and CHATPROBE_TOKEN and "
            "CHATPROBE_JWT_SECRET are not set")
        # Starlette and FastAPI (under uvicorn) answer 403 to an upgrade that no WebSocket route takes, credentials or
        # not: a 403 also says the path may be wrong.
        forbidden = any("HTTP 403" in (r.error or "") for run in runs for r in run.results)
        path_too = "; an HTTP 403 at the upgrade may also mean no WebSocket endpoint at --target's path" if forbidden else ""
        print("chatprobe: error: the server rejected the credentials of every chat (AUTH_FAILED / HTTP 401/403): "
              f"check --token-env, --token-file or --jwt-secret-env, and --auth{none_given}{path_too}", file=sys.stderr)
    if interrupt is not None and interrupt.exit_code is not None:
        return int(interrupt.exit_code)
    return int(code)


def _check(args: argparse.Namespace, console: Console) -> int:
    from .durations import parse_size
    from .offline import check_files
    from .profiles import load_profile
    from .scenario import apply_overrides, load_scenario

    check_reports(args)
    profile = load_profile(args.profile)
    scenario = apply_overrides(load_scenario(args.scenario), args.objective) if args.scenario else None
    if scenario is None and args.objective:
        raise ConfigError("--objective needs --scenario (the objectives it overrides)")
    try:
        max_frame = parse_size(args.max_size)
    except ValueError as exc:
        raise ConfigError(f"--max-size: {exc}") from None
    if max_frame > MAX_FRAME_LIMIT:  # the reader asks for lines of twice this: past it no read size is valid
        raise ConfigError(f"--max-size: at most {MAX_FRAME_LIMIT >> 30}GiB (a frame larger than that is no event)")
    given: dict[str, str] = {}  # each path's real one: the path as given
    for path in args.paths:
        try:
            st = os.stat(path)
        except OSError as exc:  # what is wrong, as the system says it: no such file, a symlink loop, no permission...
            raise ConfigError(f"{path}: {(exc.strerror or str(exc)).lower()}") from None
        # Given twice (`check rec rec`, a shell glob and a name), or a file and its directory: its chats were judged
        # twice, counted twice in the objectives, two rows of one name in every report.
        real = os.path.realpath(path)
        if real in given:
            raise ConfigError(f"{path}: given twice (also as {given[real]}): each recording is judged once")
        given[real] = path
        if stat.S_ISDIR(st.st_mode):
            given[real + os.sep] = path  # (its files, below)
    for path in args.paths:
        folder = given.get(os.path.dirname(os.path.realpath(path)) + os.sep)
        if folder is not None and not os.path.islink(path) and os.path.isfile(path):
            raise ConfigError(f"{path}: in the directory {folder}, also given, whose files are all read: each "
                              "recording is judged once")
    _reports_apart_from(args, args.paths, [args.scenario, args.profile])
    import threading

    interrupt = _Interrupt(threading.Event(), "the chats open in the recording")
    with interrupt.installed():  # through the reports too: a signal then changes nothing of what is written
        runs = check_files(args.paths, profile, scenario, args.format, max_frame=max_frame, stop=interrupt.event)
        return _finish(args, console, runs, [], interrupt)


def _reports_apart_from(args: argparse.Namespace, inputs: list[str], configs: list[str | None],
                        record: str | None = None) -> None:
    """A report written over a recording it judges would destroy the evidence, and one written over the scenario,
    profile or token file it runs with would destroy the user's file; one written into a recording's directory (one
    `check` reads, or the one `--record` writes) would be read by the next `chatprobe check DIR` as a recording, and
    refused there as no recording: each is refused before anything is read or run."""
    read: dict[str, str] = {}
    folders: dict[str, str] = {}
    for path in inputs:
        p = Path(path)
        if p.is_dir():
            folders[os.path.realpath(p)] = path
        files = list(p.iterdir()) if p.is_dir() else [p]
        read.update((os.path.realpath(q), "a recording") for q in files)
    if record:  # (made by the run when it is not there yet)
        folders[os.path.realpath(record)] = record
    for name in configs:  # a scenario, profile or token file given by path (a built-in's name is no file here)
        if name and os.path.isfile(name):
            read[os.path.realpath(name)] = "a file (a scenario, profile or token)"
    for flag in REPORT_FLAGS:
        target = getattr(args, flag)
        if not target or target in STDOUT_NAMES:
            continue
        if what := read.get(os.path.realpath(target)):
            raise ConfigError(f"--{flag} {target}: that is {what} this command reads; write the report elsewhere")
        if folder := folders.get(os.path.dirname(os.path.realpath(target))):
            raise ConfigError(f"--{flag} {target}: in the recording directory {folder}, whose files `chatprobe check "
                              f"{folder}` reads all as recordings (a report is none); write the report elsewhere")


class _Output:
    """The console's stream as rich writes to it: a write that fails for what is behind the stream (a full disk or
    `/dev/full`, an I/O error of a terminal gone) is said once on standard error and the rest is dropped, as when the
    reader left (the console's on_broken_pipe): the run goes on to its verdict, its reports and its exit code. It was
    a traceback, exit 1 and no report. (rich handles a broken pipe alone, and offers no hook for other errors.)"""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lost = False

    def write(self, text: str) -> int:
        if not self._lost:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                raise  # the console's on_broken_pipe
            except OSError as exc:
                self._lose(exc)
        return len(text)

    def flush(self) -> None:
        if not self._lost:
            try:
                self._stream.flush()
            except BrokenPipeError:
                raise
            except OSError as exc:
                self._lose(exc)

    def _lose(self, exc: OSError) -> None:
        self._lost = True
        with contextlib.suppress(OSError, ValueError):
            # What Python's buffer still holds goes nowhere at exit, not into one more failed write (exit 120).
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        if self._stream is not sys.stderr:
            with contextlib.suppress(OSError, ValueError):
                print(f"chatprobe: warning: standard output: {exc.strerror or exc.__class__.__name__}: the rest of "
                      "what this command prints there is dropped; its verdict, reports and exit code are not",
                      file=sys.stderr, flush=True)

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding...: the stream's own
        return getattr(self._stream, name)


def _console(*, to_stderr: bool = False) -> Console:
    """The console of `run` and `check`: standard output's, or standard error's when a report goes to standard output
    (`--json -`)."""
    from rich.console import Console

    out = sys.stderr if to_stderr else sys.stdout

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            """Whoever read the output left (`| head`, `| grep -m1`, a log shipper that died): the rest of it goes
            nowhere, as rich does, but the run goes on to its verdict, its reports and its exit code. rich's own
            raised SystemExit(1) there: the run stopped mid-way, silent, exit 1 as if an objective had failed, and no
            report written."""
            self.quiet = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
            os.close(devnull)

    # No `:name:` emoji codes: nothing chatprobe prints is written with them, and rich's table of them (~2.5 ms of
    # every run's start-up) loads with the first text that could hold one (a column title). The live line is for a
    # terminal: FORCE_COLOR (set in CI for colours) made rich take a log for one, redrawn four times a second, with
    # no progress line. On a terminal rich decides (not a dumb one), and rich's TTY_INTERACTIVE when it is set.
    tty = out.isatty()
    return _Console(file=cast(TextIO, _Output(out)), highlight=False, emoji=False,
                    no_color=bool(os.environ.get("NO_COLOR")) or None, width=None if tty else 160,
                    force_interactive=None if tty or os.environ.get("TTY_INTERACTIVE") else False)


def main(argv: list[str] | None = None) -> int:
    from .collector import paused_for_startup

    # pydantic looks for plugins of its own (entry points of every installed distribution, importlib.metadata with
    # the email package) when the first model is built: ~20 ms of every command's start-up that uses a model, for
    # plugins chatprobe does not use. Its documented switch, unless the user set it (`PYDANTIC_DISABLE_PLUGINS`).
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            # Started with it closed (`>&-`, a daemon's): Python gives None, which took the console down with an
            # AttributeError (exit 1, no report). What it prints goes nowhere; the run, its reports and exit code
            # are the same.
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # for the process's life
            _CLOSED_AT_START.add(name)
    tolerant(sys.stdout)  # a console that cannot encode a character gets its escape, never a traceback

    with paused_for_startup(), _without_aiofastnet():  # `run` ends the pause when its chats start (tune_collector)
        return _main(argv)


@contextlib.contextmanager
def _without_aiofastnet() -> Iterator[None]:
    """picows imports aiofastnet at its top when it is installed (`try: import aiofastnet`, an optional accelerator
    its connections use by default; ~9 ms of a one-chat run's start-up, BENCHMARKS.md). chatprobe connects with
    `use_aiofastnet=False`: the command's process never uses it. While a command runs, an import of it finds None in
    sys.modules and raises ImportError, which picows takes as not installed; the entry goes when the command returns
    (main() called in a process that goes on), and is not made when aiofastnet is already loaded."""
    if "aiofastnet" in sys.modules:
        yield
        return
    sys.modules["aiofastnet"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if "aiofastnet" in sys.modules and sys.modules["aiofastnet"] is None:
            del sys.modules["aiofastnet"]


def _main(argv: list[str] | None) -> int:
    from .collector import end_startup_pause

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if argv and argv[0] in ("sim", "monitor", "proxy"):
        # argparse.REMAINDER drops a sub-command's leading --options: hand them over untouched.
        rest = list(argv[1:])
        args = argparse.Namespace(command=argv[0], sim_args=rest, monitor_args=rest, proxy_args=rest)
    else:
        args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return int(ExitCode.OK)
    if args.command != "run":
        end_startup_pause()  # a server, a monitor or `check` runs for long: with the collector as Python has it
    try:
        from .transports.base import environment_problem

        if (problem := environment_problem()) is not None:
            raise ConfigError(problem)
        if args.command == "sim":
            from agentsim.cli import main as sim_main

            return sim_main(args.sim_args, prog="chatprobe sim")
        if args.command == "monitor":
            from monitors.monitor import main as monitor_main

            return monitor_main(args.monitor_args)
        if args.command == "proxy":
            from monitors.proxy import main as proxy_main

            return proxy_main(args.proxy_args)
        if args.command == "list":
            print("scenarios: " + ", ".join(builtin_scenarios()))
            print("profiles:  " + ", ".join(builtin_profiles()))
            return int(ExitCode.OK)
        console = _console(to_stderr=report_to_stdout(args))
        if args.command == "check":
            return _check(args, console)
        return _event_loop_run()(_run_interruptible(args, console))
    except ConfigError as exc:
        from .redact import clean

        print(f"chatprobe: error: {clean(str(exc), MESSAGE_LIMIT)}", file=sys.stderr)
        return int(ExitCode.USAGE)
    except ImportError as exc:
        if (told := hidden_package(exc)) is None:
            raise
        from .redact import clean

        # (the paths are the directories' names: a checkout's, anything, escape sequences included)
        print(f"chatprobe: error: {clean(told, MESSAGE_LIMIT)}", file=sys.stderr)
        return int(ExitCode.USAGE)
    except KeyboardInterrupt:  # before the signal handlers were installed
        print("chatprobe: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)


def _event_loop_run() -> Callable[[Coroutine[Any, Any, int]], int]:
    """uvloop's asyncio.run where it is installed (Linux and macOS CPython): its timers and callbacks are C, ~8% of
    a chat's CPU on vs_k6's workload (BENCHMARKS.md); asyncio's own loop elsewhere."""
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run
    return uvloop.run


async def _run_interruptible(args: argparse.Namespace, console: Console) -> int:
    import asyncio

    interrupt = _Interrupt()
    interrupt.install(asyncio.get_running_loop())
    return await _run(args, console, interrupt)


if __name__ == "__main__":
    sys.exit(main())
