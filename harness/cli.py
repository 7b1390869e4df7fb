"""The composition root: `chatprobe run | sim | monitor | proxy`, wiring drivers, sinks and servers together.

Exit codes of `run`: 0 all objectives met, 1 an objective failed, 2 usage or configuration error,
3 target unreachable.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import re
import sys
import time
from pathlib import Path
from typing import NoReturn

from rich.console import Console

from .durations import parse_duration
from .events import Outcome
from .report import LiveView, print_summary, write_html, write_json, write_junit
from .results import ExitCode, ScenarioRun, exit_code
from .runner import run_scenario
from .scenario import BUILTIN_SUITE, apply_overrides, builtin_scenarios, load_scenario
from .sinks import Fanout, Sink
from .targets import TokenProvider, add_target_args, embedded_sim, make_target, options_from_args, read_token
from .yamlfile import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = (ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE,
                                                      ExitCode.UNREACHABLE)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="chatprobe", description="Prove that an agent chat server streams every event, in order, "
                "to the right user, fast — and keep proving it in production.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run scenarios once and exit with their verdict (the CI gate)",
                       description="Run scenarios against a target (default: the built-in suite against the "
                                   "embedded agentsim). Exit 0 objectives met, 1 failed, 2 usage, 3 unreachable.")
    r.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"built-in name or YAML file "
                   f"(built-ins: {', '.join(builtin_scenarios())}); default: {' '.join(BUILTIN_SUITE)}")
    add_target_args(r)
    r.add_argument("--objective", action="append", default=[], metavar="NAME.STAT=VALUE",
                   help="override an objective, like a k6 threshold (e.g. time_to_first_event.p95=1.5s)")
    r.add_argument("--json", metavar="FILE", help="write the full result, one record per chat")
    r.add_argument("--junit", metavar="FILE", help="write JUnit XML, one test case per scenario")
    r.add_argument("--html", metavar="FILE", help="write a self-contained HTML report")
    r.add_argument("--pushgateway", metavar="URL", help="push the run's metrics to a Prometheus Pushgateway")
    r.add_argument("--job", default="chatprobe", help="Pushgateway job name (default chatprobe)")
    r.add_argument("--sim-fault", action="append", default=[], metavar="SPEC",
                   help="inject a fault into the embedded agentsim (see `chatprobe sim --help`)")
    r.add_argument("--sim-seed", type=int, default=None, help="seed of the embedded agentsim")
    r.add_argument("--max-duration", metavar="DURATION", default=None,
                   help="bound on the whole run (e.g. 10m): each scenario gets at most what is left")
    r.add_argument("--quiet", "-q", action="store_true", help="print only the verdict table")

    s = sub.add_parser("sim", help="run agentsim, the reference agent chat server", add_help=False)
    s.add_argument("sim_args", nargs=argparse.REMAINDER)

    m = sub.add_parser("monitor", help="probe continuously and serve /metrics and /probe", add_help=False)
    m.add_argument("monitor_args", nargs=argparse.REMAINDER)

    x = sub.add_parser("proxy", help="watch real users' chats passing through and serve /metrics", add_help=False)
    x.add_argument("proxy_args", nargs=argparse.REMAINDER)

    sub.add_parser("list", help="list built-in scenarios and profiles")
    return p


def check_writable(path: str | None, flag: str) -> None:
    """Fail before the run, not after it, when a report cannot be written there."""
    if not path:
        return
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise ConfigError(f"{flag} {path}: is a directory")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise ConfigError(f"{flag} {path}: cannot write there ({probe} is not a writable directory)")
    if p.exists() and not os.access(p, os.W_OK):
        raise ConfigError(f"{flag} {path}: the file is not writable")


async def _run(args: argparse.Namespace, console: Console) -> int:
    names = args.scenarios or list(BUILTIN_SUITE)
    for flag, path in (("--json", args.json), ("--junit", args.junit), ("--html", args.html)):
        check_writable(path, flag)
    scenarios = [apply_overrides(load_scenario(n), args.objective) for n in names]
    run_deadline = None
    if args.max_duration is not None:
        try:
            max_duration = parse_duration(args.max_duration)
        except ValueError as exc:
            raise ConfigError(f"--max-duration: {exc}") from None
        if max_duration <= 0:
            raise ConfigError("--max-duration: must be more than 0")
        run_deadline = time.monotonic() + max_duration
    opts = options_from_args(args)
    if opts.url is not None and args.sim_fault:
        raise ConfigError("--sim-fault applies to the embedded agentsim only; leave out --target to use it")
    if args.job and args.pushgateway is None and args.job != "chatprobe":
        raise ConfigError("--job needs --pushgateway")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", args.job or ""):
        raise ConfigError(f"--job {args.job!r}: a job name is 1-128 letters, digits, '_', '.', ':' or '-'")

    async with contextlib.AsyncExitStack() as stack:
        if opts.url is not None:
            tokens = read_token(opts)
            url = opts.url
        else:
            # Checked before the server starts: a wrong --profile is a usage error, not a run.
            for scenario in scenarios:
                make_target(opts, TokenProvider(), scenario.profile, url="ws://127.0.0.1:1")
            sim, tokens = await stack.enter_async_context(embedded_sim(args.sim_fault, args.sim_seed))
            url = sim.url
            # A stable `target` label: the embedded server's port changes every run.
            opts = dataclasses.replace(opts, name=opts.name or "agentsim")
            if not args.quiet:
                console.print(f"[dim]embedded agentsim on {url}[/dim]")
        runs: list[ScenarioRun] = []
        metrics_sinks = []
        for scenario in scenarios:
            if run_deadline is not None:
                left = max(0.0, run_deadline - time.monotonic())
                scenario = scenario.model_copy(update={"max_duration": min(scenario.max_duration, left)})
            target = make_target(opts, tokens, scenario.profile, url=url)
            sinks: list[Sink] = []
            if args.pushgateway:
                from monitors.push import PushSink

                ps = PushSink(target.name, scenario.name)
                metrics_sinks.append(ps)
                sinks.append(ps)
            live = LiveView(console)
            sinks.append(live)
            with live if not args.quiet else contextlib.nullcontext():
                run = await run_scenario(scenario, target, Fanout(sinks))
            runs.append(run)
            if not args.quiet and not console.is_terminal:
                st = run.stats
                console.print(f"{scenario.name}: {st.chats} chats, {st.outcomes[Outcome.PASSED]} passed, "
                              f"{'objectives met' if run.passed else 'OBJECTIVES FAILED'} in {run.elapsed:.1f}s")
    print_summary(console, runs)
    for flag, path, write in (("--json", args.json, write_json), ("--junit", args.junit, write_junit),
                              ("--html", args.html, write_html)):
        if path:
            try:
                write(path, runs)
            except OSError as exc:
                # The verdict is printed above; a CI that asked for the file must not pass without it.
                raise ConfigError(f"{flag} {path}: could not write the report: {exc.strerror or exc}") from None
    if args.pushgateway:
        for ps in metrics_sinks:
            ps.push(args.pushgateway, args.job)
    return int(exit_code(runs))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if argv and argv[0] in ("sim", "monitor", "proxy"):
        # argparse.REMAINDER drops a sub-command's leading --options: hand them over untouched.
        rest = list(argv[1:])
        args = argparse.Namespace(command=argv[0], sim_args=rest, monitor_args=rest, proxy_args=rest)
    else:
        args = parser.parse_args(argv)
    console = Console(highlight=False, no_color=bool(os.environ.get("NO_COLOR")) or None,
                      width=None if sys.stdout.isatty() else 160)
    try:
        if args.command == "sim":
            from agentsim.cli import main as sim_main

            return sim_main(args.sim_args)
        if args.command == "monitor":
            from monitors.monitor import main as monitor_main

            return monitor_main(args.monitor_args)
        if args.command == "proxy":
            from monitors.proxy import main as proxy_main

            return proxy_main(args.proxy_args)
        if args.command == "list":
            from .profiles import builtin_profiles

            console.print("scenarios: " + ", ".join(builtin_scenarios()))
            console.print("profiles:  " + ", ".join(builtin_profiles()))
            return EXIT_OK
        return asyncio.run(_run(args, console))
    except ConfigError as exc:
        print(f"chatprobe: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("chatprobe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
