"""What ends a command early, and how it exits: the configuration error (file, line, field) and the exit codes.

Light on purpose (no pydantic, no YAML): the command line imports it before anything else.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from enum import IntEnum
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import argparse

# A usage error is one line of at most this many characters: a megabyte value, key or path is never echoed whole.
MESSAGE_LIMIT = 1000


class ConfigError(Exception):
    """A user's file or flag is wrong: the message names the file, the line and the field. Exit code 2.

    `field` (when set) is the option the error is about, by its TargetOptions / config name (`ca_file`), and
    `detail` the message without it, so a caller names it its own way (`--ca-file`, `targets.prod.ca_file`); `key`
    (when set) the entry of a mapping option it is about (a header's name: `targets.prod.headers.X-Api-Key`), or of
    a list option (a subprotocol's place: `targets.prod.subprotocols.1`).
    """

    def __init__(self, message: str, *, field: str | None = None, detail: str | None = None,
                 key: str | int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.detail = detail if detail is not None else message
        self.key = key


class ExitCode(IntEnum):
    """What `chatprobe run`, `check`, `monitor --once` and Locust exit with."""

    OK = 0  # every objective met
    FAILED = 1  # an objective failed
    USAGE = 2  # usage or configuration error (the message names the file, line and field)
    UNREACHABLE = 3  # the target could not be reached
    INTERRUPTED = 130  # SIGINT (128 + 2)
    TERMINATED = 143  # SIGTERM (128 + 15)


def os_reason(exc: OSError) -> str:
    """What the operating system said of a failed call, in its own words ("Address already in use"), without what
    asyncio or socket.create_server wrapped around a bind's error ("error while attempting to bind on address
    ('127.0.0.1', 8780): address already in use"): the reason of a "cannot listen" line. A resolver's error (a host
    name that is no host's) is said as the resolver says it."""
    text = exc.strerror or str(exc)
    if isinstance(exc.errno, int) and exc.errno > 0:  # (a resolver's codes are no errno: on Linux they are negative)
        own = os.strerror(exc.errno)
        if own.lower() in text.lower():
            return own
    return text


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate a misspelt `word` most looks like, if one is close enough to be what was meant."""
    import difflib  # loaded only for a message

    others = sorted(set(candidates) - {word})
    # Two letters swapped (p59 for p95): in a short word that is too far for difflib's ratio, and plainly meant.
    swapped = [c for c in others if len(c) == len(word) and sorted(c) == sorted(word)
               and sum(a != b for a, b in zip(c, word, strict=True)) == 2]
    if len(swapped) == 1:
        return swapped[0]
    close = difflib.get_close_matches(word[:64], others, n=1, cutoff=0.75)
    return close[0] if close else None


def unknown_flag_hint(parser: argparse.ArgumentParser, message: str, given: Sequence[str] = ()) -> str:
    """argparse's 'unrecognized arguments: --jnuit x.xml' with the parser's flag the first unknown one most looks
    like: ' (did you mean --junit?)'. argparse reports a required option or argument missing before the flags it did
    not know (`proxy --upstrem URL`: "the following arguments are required: --upstream"): then, with the arguments
    the parser was `given`, the first misspelt long flag among them is what is reported, as if nothing were missing."""
    flags = [flag for action in parser._actions for flag in action.option_strings]
    # The flags --help shows: a hidden one (`run --jwt-secret`, there only to refuse a secret) is never suggested.
    shown = [flag for action in parser._actions if action.help != "==SUPPRESS==" for flag in action.option_strings]
    if message.startswith("ambiguous option: ") and " could match " in message:
        # argparse shows the word given whole: `--to=VALUE` (a token, a secret) said as `--to=…`.
        word, _, matches = message.removeprefix("ambiguous option: ").rpartition(" could match ")
        name, eq, _ = word.partition("=")
        listed = ", ".join(m for m in matches.split(", ") if m in shown) or matches
        return f"ambiguous option: {name}{'=…' if eq else ''} could match {listed}"
    if message.startswith("the following arguments are required:"):
        for arg in given:
            if arg == "--":  # what follows is positional
                break
            name = arg.partition("=")[0]
            # A long flag the parser does not know, not even as the prefix argparse would take for one of its own.
            if name.startswith("--") and len(name) > 2 and not any(f.startswith(name) for f in flags):
                meant = closest(name, shown)
                if meant:
                    return f"unrecognized arguments: {name} (did you mean {meant}?)"
        return message
    if not message.startswith("unrecognized arguments:"):
        return message
    words = message.partition(":")[2].split()
    first = next((a.partition("=")[0] for a in words if a.startswith("-")), None)
    meant = closest(first, shown) if first else None
    message = "unrecognized arguments: " + " ".join(_unshown(words))
    return f"{message} (did you mean {meant}?)" if meant else message


def _unshown(words: Sequence[str]) -> Iterable[str]:
    """The words of a command line argparse did not know, each value said as `…`: a misspelt flag's value may be the
    secret it was meant to carry (`sim --jwt-secrt S`, `--header-evn=X-Key=…`), and no flag of this parser takes it."""
    after_flag = False
    for word in words:
        if word.startswith("-"):
            name, eq, _ = word.partition("=")
            yield f"{name}=…" if eq else name
            after_flag = not eq
        else:
            yield "…" if after_flag else word
            after_flag = False


def tolerant(stream: TextIO) -> TextIO:
    """`stream` (the terminal or CI log a command prints to) made to write a character its encoding lacks as an
    escape (`\\u2713`) rather than raise: a Windows code page (cp1252 on a CI runner), `PYTHONIOENCODING=ascii` or a
    Latin-1 locale cannot encode the summary's ✓ and →, and the UnicodeEncodeError ended a passing run with a
    traceback, exit 1 and no report written. Python's stderr already writes so."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None and getattr(stream, "errors", "") == "strict":
        try:
            reconfigure(errors="backslashreplace")
        except (ValueError, OSError):  # (not a text stream Python opened, or closed: left as it is)
            pass
    return stream


# chatprobe's top-level packages that a command imports only when it needs them (`monitor`, `proxy`, `sim`, `run
# --pushgateway`, the embedded agentsim of `run` and of the pytest fixture): each the folder of that name beside
# `harness`, in the repository and in site-packages alike.
LATE_PACKAGES = ("monitors", "agentsim")


def hidden_package(exc: ImportError) -> str | None:
    """What to tell of `exc` when it is one of chatprobe's own LATE_PACKAGES hidden by another package of that name
    earlier on sys.path (a team's own `monitors` package, on PYTHONPATH or in the current directory under `python
    -m`): the import found the team's and missed chatprobe's module in it. None for any other import error."""
    import sys
    from pathlib import Path

    top = (exc.name or "").partition(".")[0]
    found = sys.modules.get(top)
    if top not in LATE_PACKAGES or found is None:
        return None
    ours = Path(__file__).resolve().parent.parent / top
    where = getattr(found, "__file__", None) or next(iter(getattr(found, "__path__", ()) or ()), None)
    if where is None or Path(where).resolve().is_relative_to(ours):
        return None
    shown = Path(where).parent if Path(where).name == "__init__.py" else Path(where)
    return (f"the package {top!r} at {shown} hides chatprobe's own ({ours}), which this needs: it is first on "
            "sys.path (PYTHONPATH, or the current directory under `python -m`); run chatprobe without that directory "
            "on the path, or rename that package")
