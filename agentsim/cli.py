"""Command line of agentsim: flags and the YAML config file become a SimConfig, then serve until a signal."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import re
import signal
import sys
from collections.abc import Iterable, Iterator
from typing import Any, NoReturn

import yaml

from . import faults as faults_mod
from .agent import parse_latency
from .agui import AguiSim
from .faults import FaultSpecError, parse_fault, parse_size
from .server import (
    DEFAULT_JWT_SECRET,
    PROTOCOLS,
    READER_DEADLINE,
    AgentSim,
    SimConfig,
    check_host,
    check_port,
    check_positive,
    check_protocol,
    check_seconds,
    check_secret,
    check_size,
    security_warnings,
)

EXIT_USAGE = 2

_EPILOG = (
    "Fault grammar (repeat --fault; all off by default):\n"
    + "\n".join("  " + line for line in faults_mod.__doc__.split("Faults (all off by default):", 1)[1]
                .split("Every decision")[0].strip("\n").splitlines())
    + "\n\n  Forms: NAME[:ARG]=RATE  or  NAME[:ARG][=VALUE]@RATE; RATE in [0,1], per chat unless stated."
    + "\n  Example: --fault drop:tool_completed=0.08 --fault delay_first=2.5s@0.1 --fault close:abort=0.02"
    + "\n\nMessage directives: #fail-tool #fail-agent #tools=N #chunks=N #think=SECONDS #tool-latency=SECONDS"
    + "\n\n"
)


MAX_MESSAGE = 500  # characters of an error line: a megabyte value in a flag or a file is not echoed whole


def _one_line(message: object) -> str:
    text = " ".join(str(message).split("\n"))
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "…"


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate a misspelt `word` most looks like, if one is close enough to be what was meant: the same choice
    as chatprobe's own (harness/errors.py closest), written here again: agentsim imports nothing of harness."""
    import difflib  # loaded only for a message

    others = sorted(set(candidates) - {word})
    # Two letters swapped (--sede for --seed): in a short word that is too far for difflib's ratio, and plainly meant.
    swapped = [c for c in others if len(c) == len(word) and sorted(c) == sorted(word)
               and sum(a != b for a, b in zip(c, word, strict=True)) == 2]
    if len(swapped) == 1:
        return swapped[0]
    close = difflib.get_close_matches(word[:64], others, n=1, cutoff=0.75)
    return close[0] if close else None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_one_line(unknown_flag_hint(self, message))}\n")


def unknown_flag_hint(parser: argparse.ArgumentParser, message: str) -> str:
    """argparse's usage error said without the values it echoes, with the flag a misspelt one most looks like, as
    `chatprobe run` says it: 'unrecognized arguments: --jwt-secrt … (did you mean --jwt-secret?)', and 'ambiguous
    option: --t=… could match --think, --tool-latency'. Either word may carry the secret meant for --jwt-secret.
    harness/errors.py's `unknown_flag_hint` written again (agentsim imports nothing of harness), a test holding the
    two alike; agentsim has no required argument, nor a hidden flag."""
    if message.startswith("ambiguous option: ") and " could match " in message:
        # argparse shows the word given whole: `--t=VALUE` (a secret) said as `--t=…`.
        word, _, matches = message.removeprefix("ambiguous option: ").rpartition(" could match ")
        name, eq, _ = word.partition("=")
        return f"ambiguous option: {name}{'=…' if eq else ''} could match {matches}"
    if not message.startswith("unrecognized arguments:"):
        return message
    flags = [flag for action in parser._actions for flag in action.option_strings]
    words = message.partition(":")[2].split()
    first = next((a.partition("=")[0] for a in words if a.startswith("-")), None)
    meant = closest(first, flags) if first else None
    message = "unrecognized arguments: " + " ".join(_unshown(words))
    return f"{message} (did you mean {meant}?)" if meant else message


def _unshown(words: list[str]) -> Iterator[str]:
    """The words argparse did not know, each value said as `…`: a misspelt flag's value may be the secret it was meant
    to carry (`--jwt-secrt S`). harness/errors.py's `_unshown` written again (agentsim imports nothing of harness)."""
    after_flag = False
    for word in words:
        if word.startswith("-"):
            name, eq, _ = word.partition("=")
            yield f"{name}=…" if eq else name
            after_flag = not eq
        else:
            yield "…" if after_flag else word
            after_flag = False


class ConfigError(Exception):
    """A bad config file; the message names file, line and field."""


def os_reason(exc: OSError) -> str:
    """What the operating system said of a failed call in its own words ("Address already in use"), without what
    asyncio wrapped around a bind's error: harness.errors.os_reason written again (agentsim imports nothing of
    harness), a test holding the two alike."""
    text = exc.strerror or str(exc)
    if isinstance(exc.errno, int) and exc.errno > 0:  # (a resolver's codes are no errno: on Linux they are negative)
        own = os.strerror(exc.errno)
        if own.lower() in text.lower():
            return own
    return text


def _fault_arg(text: str) -> Any:
    try:
        return parse_fault(text)
    except FaultSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _latency_arg(text: str) -> Any:
    try:
        return parse_latency(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size_arg(text: str) -> int:
    try:
        return check_size(parse_size(text))
    except (FaultSpecError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- value checks shared by the flags and the config file (ValueError: a one-line reason) ----------------------

def check_writable(path: str) -> str:
    """A file agentsim can append to, checked without creating it: a clear message now rather than a traceback
    when the server opens it."""
    if not path:
        raise ValueError("expected a file path")
    if "\0" in path:  # no file has one in its name: open() would raise ValueError
        raise ValueError("a file path has no NUL character")
    try:
        os.stat(path)
    except OSError as exc:  # a name past the system's limit: what open() would say later, said now
        if exc.errno == errno.ENAMETOOLONG:
            raise ValueError(f"cannot use that path: {exc.strerror}") from None
    if os.path.isdir(path) or path.endswith(os.sep):  # ("new/": a directory's name, not a file's)
        raise ValueError(f"{path} is a directory")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise ValueError(f"{path} is not writable")
        return path
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(parent):
        raise ValueError(f"cannot create {path}: the directory {parent} does not exist")
    if not os.path.isdir(parent):
        raise ValueError(f"cannot create {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot create {path}: the directory {parent} is not writable")
    return path


def _checked(parse: Any, check: Any) -> Any:
    def convert(text: str) -> Any:
        value = parse(text)  # a ValueError here reads "invalid int value: 'x'", as argparse says it
        try:
            return check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc) or f"invalid value {text!r}") from None
    convert.__name__ = getattr(parse, "__name__", "value")  # argparse names the type in its messages
    return convert


def _config_keys() -> str:
    """The --config paragraph of the help, naming every key load_config takes (so the two cannot drift)."""
    import textwrap

    return textwrap.fill(f"Config file keys (YAML mapping): {', '.join(_CONFIG_FIELDS)}. Command-line flags override "
                         "the file; --fault adds to its faults (a list of fault specs). A key given twice, an unknown "
                         "one or a bad value is exit 2 naming the file, line and field; a pipe as the file has "
                         f"{PIPE_DEADLINE:g}s to deliver it.", 104, subsequent_indent="  ")


def build_parser(prog: str = "agentsim") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="agentsim: the reference agent chat server of chatprobe "
                "(netra or AG-UI wire format, JWT auth, resume, seeded fault injection).",
                epilog=_EPILOG + _config_keys(),
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", type=_checked(str, check_host), default=None, help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_checked(int, check_port), default=None, help="port to bind, 0 = any free port (default 8765)")
    p.add_argument("--no-auth", action="store_true", default=None,
                   help="accept connections without a JWT; ?user=NAME names the user")
    p.add_argument("--jwt-secret", type=_checked(str, check_secret), default=None, metavar="SECRET",
                   help=f"HS256 secret (default $AGENTSIM_JWT_SECRET or {DEFAULT_JWT_SECRET!r})")
    p.add_argument("--think", type=_latency_arg, default=None, metavar="SECONDS",
                   help="think time per thinking step: 0, 0.05 or a uniform range 0.02-0.2 (default 0.05)")
    p.add_argument("--tool-latency", type=_latency_arg, default=None, metavar="SECONDS",
                   help="tool call latency, same forms as --think (default 0.02)")
    p.add_argument("--protocol", choices=PROTOCOLS, default=None,
                   help="the wire dialect: netra (WebSocket, the default) or ag-ui (HTTP POST + SSE at the URL printed, "
                        "and the same events over WebSocket at a second port)")
    p.add_argument("--seed", type=int, default=None, metavar="N", help="seed of every random choice, for repeatable runs")
    p.add_argument("--fault", type=_fault_arg, action="append", default=[], metavar="SPEC",
                   help="inject a fault, e.g. drop:tool_completed=0.08 (repeatable; grammar below)")
    p.add_argument("--config", default=None, metavar="FILE", help="YAML file with the same settings")
    p.add_argument("--ground-truth", type=_checked(str, check_writable), default=None, metavar="FILE.jsonl",
                   help="append a JSON line per event sent, fault injected, run and connection (a FIFO's reader has "
                        f"{READER_DEADLINE:g}s to open it)")
    p.add_argument("--resume-ttl", type=_checked(float, check_seconds), default=None, metavar="SECONDS",
                   help="seconds a finished run stays resumable (default 300)")
    p.add_argument("--max-size", type=_size_arg, default=None, metavar="SIZE",
                   help="largest frame accepted from a client, e.g. 1MiB (default 1MiB)")
    p.add_argument("--max-live-runs-per-user", type=_checked(int, check_positive), default=None, metavar="N",
                   help="runs one user may have in progress; a chat past it gets error QUOTA_EXCEEDED (default 100)")
    p.add_argument("--allow-no-exp", action="store_true", default=None,
                   help="accept tokens without an exp claim (refused by default: they never expire); for tests")
    p.add_argument("--compression", action="store_true", default=None, help="offer permessage-deflate")
    p.add_argument("-v", "--verbose", action="store_true", help="log connections and runs to stderr")
    return p


_CONFIG_FIELDS: dict[str, Any] = {
    "host": str, "port": int, "no_auth": bool, "jwt_secret": str, "think": "latency",
    "tool_latency": "latency", "seed": int, "faults": "faults", "ground_truth": str, "resume_ttl": float,
    "max_size": "size", "max_runs": int, "max_live_runs_per_user": int, "max_runs_per_user": int,
    "max_events_per_run": int, "compression": bool, "allow_no_exp": bool, "protocol": str,
}
# Range checks of a field, after its type: the same as the flag's.
_CONFIG_CHECKS: dict[str, Any] = {
    "host": check_host, "protocol": check_protocol, "jwt_secret": check_secret, "port": check_port, "resume_ttl": check_seconds,
    "max_size": check_size, "max_runs": check_positive,
    "max_live_runs_per_user": check_positive, "max_runs_per_user": check_positive,
    "max_events_per_run": check_positive, "ground_truth": check_writable,
}


# A config file is small (a flat mapping; its faults a list of strings): bounds on what a hostile or mistaken file
# (a device, deep nesting, a flood of values, an alias bomb) can cost before it is rejected. agentsim imports
# nothing of harness, so these are its own, in the manner of harness/yamlfile.py.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_ALIASES = 20
MAX_DEPTH = 16
MAX_NODES = 10_000
# libyaml when PyYAML has it (its wheels do): the pure-Python parser needs tens of seconds for a 1 MiB file.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


_TOP_KEY_RE = re.compile(rb"^([A-Za-z_][A-Za-z0-9_-]*)[ \t]*:", re.MULTILINE)

# YAML 1.1's readings of a number its writer may well not have meant: an integer with a leading 0 is octal (`port:
# 010` is 8), and `1:30` (or `!!int 1:30`) is base-60 (90; `resume_ttl: 1:30` may as well mean an hour and a half).
# A number field refuses them naming the line; a text field (`jwt_secret: 0123`) takes its plain scalar as written.
# Hexadecimal (`0x1A`), binary (`0b101`) and digits grouped with `_` (`1_000`) say plainly what they are and are read
# so. The same choice as chatprobe's own files (harness/yamlfile.py number_problem), written here again: agentsim
# imports nothing of harness.
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_LEADING_ZERO = re.compile(r"[-+]?0[0-9_]+")


def _number_problem(node: yaml.Node) -> tuple[int, str] | None:
    """The line and the reason of the first scalar in `node` that YAML 1.1 reads as a number not meant (above)."""
    todo = [node]
    while todo:  # at most MAX_DEPTH deep and MAX_NODES values: _check_events ran first
        n = todo.pop()
        if isinstance(n, yaml.SequenceNode):
            todo.extend(reversed(n.value))
        elif isinstance(n, yaml.MappingNode):
            todo.extend(v for pair in reversed(n.value) for v in reversed(pair))
        elif n.tag in _NUMBER_TAGS:
            text = str(n.value).strip()
            shown = text if len(text) <= 40 else text[:37] + "..."
            if ":" in text:
                return n.start_mark.line + 1, (f"{shown} is YAML 1.1's base-60 number (1:30 is 90), which may as well "
                                               "mean hours:minutes; write the number meant")
            if n.tag == _NUMBER_TAGS[0] and _LEADING_ZERO.fullmatch(text):
                return n.start_mark.line + 1, (f"{shown} has a leading 0: YAML 1.1 reads it as octal; write the "
                                               "number without it")
    return None


def _field_before(raw: bytes, end: int | None = None) -> str:
    """" field 'KEY':" for the last top-level key in raw[:end] (where a parser stopped), or ""."""
    keys = _TOP_KEY_RE.findall(raw, 0, len(raw) if end is None else end)
    return f" field {keys[-1][:40].decode('utf-8', 'replace')!r}:" if keys else ""


def _check_events(text: str, path: str) -> None:
    """One pass over the YAML event stream, before anything is composed: depth, values and aliases are counted as
    they come, so a file nested 500,000 levels deep is refused at level MAX_DEPTH + 1, not after minutes (the
    composer recurses per level). The message names the top-level field the problem is in."""
    depth = nodes = aliases = 0
    field: str | None = None
    expect_key = False  # the next node at depth 1 is a top-level key
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            expect_key = depth == 1
            continue
        if not isinstance(event, yaml.NodeEvent):
            continue
        line = event.start_mark.line + 1 if event.start_mark is not None else 0
        if depth == 1:
            if expect_key:
                field = str(event.value)[:40] if isinstance(event, yaml.ScalarEvent) else "?"
            expect_key = not expect_key
        where = f"{path}:{line}: field {field!r}" if field is not None else f"{path}:{line}"
        nodes += 1
        if nodes > MAX_NODES:
            raise ConfigError(f"{where}: more than {MAX_NODES} values; too large to be a configuration")
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise ConfigError(f"{where}: more than {MAX_ALIASES} YAML aliases; refusing to expand them")
        elif isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(f"{where}: nested too deeply (more than {MAX_DEPTH} levels) to be a "
                                  "configuration")
            expect_key = depth == 1


PIPE_DEADLINE = 30.0  # seconds a config that is no regular file (`--config <(...)`, a FIFO) has to deliver its text


def _read_bounded(path: str, most: int) -> bytes:
    """Up to `most` bytes of a file. A regular file is read as it is; anything else (a pipe, a device) must deliver
    its text within PIPE_DEADLINE, each read waiting for data first (opened non-blocking: opening a FIFO would
    otherwise wait for a writer for ever)."""
    import select
    import stat
    import time

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise IsADirectoryError(21, "Is a directory")
        poller = None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            poller = select.poll()
            poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + PIPE_DEADLINE
        chunks: list[bytes] = []
        got = 0
        while got < most:
            if poller is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not poller.poll(left * 1000):
                    raise TimeoutError
            try:
                data = os.read(fd, min(most - got, 1 << 16))
            except BlockingIOError:  # woken with nothing to read after all
                continue
            if not data:
                break
            chunks.append(data)
            got += len(data)
        return b"".join(chunks)
    finally:
        os.close(fd)


def load_config(path: str) -> dict[str, Any]:
    """Read and validate a YAML config file; raises ConfigError naming file:line and field."""
    try:
        raw = _read_bounded(path, MAX_CONFIG_BYTES + 1)  # never a hang on /dev/zero or a FIFO nobody writes to
    except TimeoutError:
        raise ConfigError(f"{path}: no end of text within {PIPE_DEADLINE:g}s (a pipe or device nobody writes "
                          "to?)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        # Where the bound was crossed, and the last top-level key before it: the field that made it too large.
        line = raw.count(b"\n", 0, MAX_CONFIG_BYTES) + 1
        raise ConfigError(f"{path}:{line}:{_field_before(raw[:MAX_CONFIG_BYTES])} larger than "
                          f"{MAX_CONFIG_BYTES // 1024} KiB; too large to be a configuration")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset "
                          f"{exc.start})") from None
    try:
        _check_events(text, path)
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.reader.ReaderError as exc:  # a character YAML forbids: its line, in one line
        line = text.count("\n", 0, exc.position) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError(f"{path}:{line}: U+{code:04X} is not allowed in YAML ({exc.reason})") from None
    except RecursionError:  # not expected past _check_events; kept so that no parser change brings a traceback
        raise ConfigError(f"{path}: nested too deeply to be a configuration") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        problem = getattr(exc, "problem", None) or str(exc)
        if "maximum nesting depth" in problem:  # libyaml's own limit, met while it reads ahead of our check
            field = _field_before(raw, mark.index if mark else len(raw))
            raise ConfigError(f"{where}:{field} nested too deeply (more than {MAX_DEPTH} levels) to be a "
                              "configuration") from None
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}:{root.start_mark.line + 1}: the config must be a mapping of settings")
    out: dict[str, Any] = {}
    first_line: dict[str, int] = {}
    for key_node, value_node in root.value:
        line = key_node.start_mark.line + 1
        key = str(key_node.value).replace("-", "_")
        if key == "fault":
            key = "faults"
        shown = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
        where = f"{path}:{line}: field {shown if len(shown) <= 40 else shown[:40] + '…'!r}"
        if key not in _CONFIG_FIELDS:
            meant = closest(key, _CONFIG_FIELDS) if isinstance(key_node, yaml.ScalarNode) else None
            hint = f" (did you mean '{meant}'?)" if meant else ""
            raise ConfigError(f"{where}: unknown field{hint} (known: {', '.join(_CONFIG_FIELDS)})")
        if key in first_line:  # YAML would let the later one silently replace the first
            raise ConfigError(f"{where}: given twice (first on line {first_line[key]})")
        first_line[key] = line
        kind = _CONFIG_FIELDS[key]
        problem = _number_problem(value_node) if kind not in (str, "faults") else None
        if problem is not None:
            raise ConfigError(f"{path}:{problem[0]}: field {shown if len(shown) <= 40 else shown[:40] + '…'!r}: "
                              f"{problem[1]}")
        try:
            if kind is str and isinstance(value_node, yaml.ScalarNode) and value_node.tag in _NUMBER_TAGS:
                value = value_node.value  # the text as written, never YAML 1.1's number (`jwt_secret: 0123` is no 83)
            else:
                value = yaml.load(yaml.serialize(value_node), Loader=_LOADER)
        except yaml.YAMLError as exc:  # a tag no safe loader constructs (!!python/object...)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{where}: {problem[:120]}") from None
        except (ValueError, OverflowError) as exc:  # an integer of thousands of digits
            raise ConfigError(f"{where}: a value cannot be read: {str(exc)[:120]}") from None
        try:
            if kind == "faults":
                items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                specs = []
                for item in items:
                    if not isinstance(item, yaml.ScalarNode):
                        raise ConfigError(f"{path}:{item.start_mark.line + 1}: field 'faults': "
                                          "each fault is a string like drop:tool_completed=0.08")
                    try:
                        specs.append(parse_fault(str(item.value)))
                    except FaultSpecError as exc:
                        raise ConfigError(f"{path}:{item.start_mark.line + 1}: field 'faults': {exc}") from None
                value = specs
            elif kind == "latency":
                value = parse_latency(value)
            elif kind == "size":
                value = parse_size(str(value))
            elif kind is bool:
                if not isinstance(value, bool):
                    raise ValueError(f"expected true or false, got {value!r}")
            elif kind is int:
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ValueError(f"expected a whole number, got {value!r}")
            elif kind is float:
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise ValueError(f"expected a non-negative number, got {value!r}")
                value = float(value)
            elif kind is str:
                if not isinstance(value, (str, int)) or isinstance(value, bool):
                    raise ValueError(f"expected a string, got {value!r}")
                value = str(value)
            if key in _CONFIG_CHECKS:
                value = _CONFIG_CHECKS[key](value)
            if key == "ground_truth":
                _not_the_config(value, path)
        except (ValueError, FaultSpecError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        out[key] = value
    return out


def _not_the_config(ground_truth: str, config: str | None) -> None:
    """The ground truth is appended to: appended to the config file, it would make that file no YAML the next start
    reads (a JSON line after the settings)."""
    if config and os.path.realpath(ground_truth) == os.path.realpath(config):
        raise ValueError(f"{ground_truth} is the --config file, which the ground truth would be appended to; write "
                         "it elsewhere")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    settings: dict[str, Any] = load_config(args.config) if args.config else {}
    if args.ground_truth is not None:
        try:
            _not_the_config(args.ground_truth, args.config)
        except ValueError as exc:
            raise ConfigError(f"--ground-truth: {exc}") from None
    for name in ("host", "port", "no_auth", "think", "tool_latency", "seed", "ground_truth", "resume_ttl",
                 "max_size", "compression", "max_live_runs_per_user", "allow_no_exp", "protocol"):
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    if args.jwt_secret is not None:
        settings["jwt_secret"] = args.jwt_secret
    elif os.environ.get("AGENTSIM_JWT_SECRET"):
        settings["jwt_secret"] = os.environ["AGENTSIM_JWT_SECRET"]
    settings["faults"] = list(settings.get("faults", [])) + list(args.fault)
    return SimConfig(**settings)


async def _serve(config: SimConfig) -> int:
    try:
        sim: AgentSim | AguiSim = AguiSim(config) if config.protocol == "ag-ui" else AgentSim(config)
    except FaultSpecError as exc:
        print(f"agentsim: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # the ground truth file, checked up front, went away or turned read-only since
        print(f"agentsim: error: cannot open the ground truth file {config.ground_truth}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        await sim.start()
    except OSError as exc:
        # An address it cannot listen on (in use, not this host's, a port below 1024 without the right) is the
        # flags' or the config's fault: a usage error, one line, as `chatprobe proxy --listen` says it.
        await sim.stop()  # (the AG-UI server's first listener, when its second one failed)
        host = f"[{config.host}]" if ":" in config.host else config.host
        print(f"agentsim: error: {_one_line(host)}:{config.port}: cannot listen: {_one_line(os_reason(exc))}",
              file=sys.stderr)
        return EXIT_USAGE
    if sim.gt.failed is not None:  # its first line, server_started: the file given takes nothing (/dev/full)
        await sim.stop()
        print(f"agentsim: error: cannot write the ground truth file {config.ground_truth}: "
              f"{sim.gt.failed.strerror or sim.gt.failed}", file=sys.stderr)
        return EXIT_USAGE
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    for warning in security_warnings(config):
        print(f"agentsim: warning: {warning}", file=sys.stderr, flush=True)
    print(f"agentsim listening on {sim.url}", flush=True)
    if isinstance(sim, AguiSim):
        print(f"agentsim: the same AG-UI events over WebSocket at {sim.ws_url}", flush=True)
    print(f"agentsim: connect with: {connect_hint(config, sim.url)}", flush=True)
    try:
        await stop.wait()
    finally:
        await sim.stop()
    return 0


def connect_hint(config: SimConfig, url: str) -> str:
    """The command that runs chatprobe against this server as it is configured (never a secret of the user's)."""
    profile = " --profile ag-ui" if config.protocol == "ag-ui" else ""
    if config.no_auth:
        return f"chatprobe run --target '{url}?user=demo'{profile} --auth none"
    if config.jwt_secret == DEFAULT_JWT_SECRET:  # the public development secret: safe to show
        return f"CHATPROBE_JWT_SECRET={DEFAULT_JWT_SECRET} chatprobe run --target {url}{profile}"
    if os.environ.get("AGENTSIM_JWT_SECRET") == config.jwt_secret:  # a variable the user's shell holds already
        return (f"chatprobe run --target {url}{profile} --jwt-secret-env AGENTSIM_JWT_SECRET  "
                "(the variable this server read its secret from)")
    # Given as --jwt-secret or a config file's jwt_secret: no variable holds it, and it is never shown.
    return (f"CHATPROBE_JWT_SECRET='<the secret given to --jwt-secret or jwt_secret>' chatprobe run --target "
            f"{url}{profile}")


def main(argv: list[str] | None = None, prog: str = "agentsim") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except (ConfigError, ValueError, FaultSpecError) as exc:
        print(f"agentsim: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s agentsim %(levelname)s %(message)s")
    if args.verbose:
        logging.getLogger("agentsim.websockets").setLevel(logging.INFO)
    try:
        return asyncio.run(_serve(config))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
