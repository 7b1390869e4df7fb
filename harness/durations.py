"""Durations and sizes as people write them in YAML and flags ("2s", "250ms", 1.5; "4MiB", "512KiB") parsed to
seconds and bytes."""
from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}
_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|)\s*$")
# Longer than this is a typo, and past about 292 years the OS's timeouts (threading, sockets) overflow.
MAX_SECONDS = 366 * 24 * 3600.0


def _shown(value: Any) -> str:
    """A value as a message shows it: a 400-digit number or a megabyte string is cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        # ValueError, not TypeError: pydantic turns only ValueError into a validation error (file:line:field).
        raise ValueError("a duration like 2s, 250ms or 1.5 is needed, not a boolean")
    try:
        if isinstance(value, (int, float)):
            seconds = float(value)
        elif isinstance(value, str) and len(value) <= 64 and (m := _RE.match(value)):
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
        else:
            raise ValueError(f"{_shown(value)} is not a duration (examples: 2s, 250ms, 1m, 1.5)")
    except OverflowError:  # an integer of hundreds of digits
        raise ValueError(f"{_shown(value)} is too long a duration (at most 366 days)") from None
    if not math.isfinite(seconds):
        raise ValueError(f"{_shown(value)} is not a finite duration")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{_shown(value)} is too long a duration (at most 366 days)")
    return seconds


Seconds = Annotated[float, BeforeValidator(parse_duration)]


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be more than 0 (a limit of 0 fails every chat before it starts)")
    return seconds


# A wait or a limit: 0 would fail every chat on a healthy server (a verdict, not the usage error it is).
PositiveSeconds = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2}


def parse_size(text: str) -> int:
    """A byte count: `1048576`, `512KiB`, `4MiB`, `2MB` (agentsim's size syntax); raises ValueError."""
    m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([a-z]*)", text.strip().lower())
    if not m or m.group(2) not in _SIZE_UNITS:
        raise ValueError(f"bad size {text!r} (use e.g. 4MiB, 512KiB, 1000000)")
    size = float(m.group(1)) * _SIZE_UNITS[m.group(2)]
    if not math.isfinite(size) or size > 2**62:
        raise ValueError(f"bad size {text!r}: too large")
    if int(size) < 1:
        raise ValueError(f"bad size {text!r}: must be at least 1 byte")
    return int(size)
