"""Durations and sizes as people write them in YAML and flags ("2s", "250ms", "1m30s", 1.5; "4MiB", "512KiB")
parsed to seconds and bytes."""
from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_N = r"([0-9]*\.?[0-9]+)"
# A bare number (seconds), or numbers with units, Go's compound form as k6 and Prometheus write it ("250ms", "2 s",
# "1m30s", "2h45m", "1h 30m"): each unit at most once, largest first, so "30s1m" or "1m1m" is refused rather than
# summed. A regular expression of our own rather than a dependency (durationpy parses Go's syntax): it is this one
# expression, and Go's other units (ns, us, µs) and signs are nothing a chat harness can honour anyway.
_RE = re.compile(rf"\s*(?:{_N}|(?:{_N}\s*h\s*)?(?:{_N}\s*m(?!s)\s*)?(?:{_N}\s*s\s*)?(?:{_N}\s*ms\s*)?)\s*")
# A clock-like text (`1:30`, `1:30:00`): YAML 1.1's base-60 number, left as text by the loader (yamlfile.SEXAGESIMAL).
# (Text, compiled by re where it is used: only a refusal reads it, and a run compiles none at import.)
_CLOCK = r"\s*[-+]?[0-9][0-9_]*(?::[0-9]+)+(?:\.[0-9_]*)?\s*"
# Longer than this is a typo, and past about 292 years the OS's timeouts (threading, sockets) overflow.
MAX_SECONDS = 366 * 24 * 3600.0


def _shown(value: Any) -> str:
    """A value as a message shows it: a 400-digit number or a megabyte string is cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        # ValueError, not TypeError: pydantic turns only ValueError into a validation error (file:line:field).
        raise ValueError("a duration like 2s, 250ms, 1m30s or 1.5 is needed, not a boolean")
    try:
        if isinstance(value, (int, float)):
            seconds = float(value)
        elif isinstance(value, str) and len(value) <= 64 and (seconds_of := _seconds_of(value)) is not None:
            seconds = seconds_of
        elif isinstance(value, str) and re.fullmatch(_CLOCK, value):
            raise ValueError(f"{_shown(value.strip())} is no duration: YAML 1.1 reads it as a base-60 number "
                             f"(1:30 as 90) and it may as well mean hours:minutes; write it with units "
                             "(1m30s, 1h30m)")
        else:
            raise ValueError(f"{_shown(value)} is not a duration (examples: 2s, 250ms, 1m30s, 1.5)")
    except OverflowError:  # an integer of hundreds of digits
        raise ValueError(f"{_shown(value)} is too long a duration (at most 366 days)") from None
    if not math.isfinite(seconds):
        raise ValueError(f"{_shown(value)} is not a finite duration")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{_shown(value)} is too long a duration (at most 366 days)")
    return seconds


def _seconds_of(text: str) -> float | None:
    m = _RE.fullmatch(text)
    if m is None or not any(m.groups()):  # (no number at all: an empty or blank text)
        return None
    bare, *parts = m.groups()
    if bare is not None:
        return float(bare)
    return sum(float(n) * _UNITS[u] for n, u in zip(parts, ("h", "m", "s", "ms"), strict=True) if n is not None)


def format_duration(seconds: float) -> str:
    """Seconds as a person reads them and as parse_duration takes them back: 500 -> "8m20s", 0.25 -> "250ms"."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    whole = int(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    frac = seconds - whole
    return (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s + frac:g}s" if s or frac else "")


Seconds = Annotated[float, BeforeValidator(parse_duration)]


# A bare number in a latency objective (`p95: 500`, `--objective time_to_first_event.p95=500`) is seconds, as every
# duration of chatprobe and as Prometheus, whose base unit it is, writes latencies. But k6 writes its latency
# thresholds in milliseconds (`http_req_duration: ['p(95)<500']`), and such a number read as seconds makes a gate
# that cannot fail (500 s is 8m20s). A chat's latencies in seconds are small numbers (R9's first-event limit is 2 s,
# the default deadline 60 s), k6's in milliseconds almost never are (100, 250, 500, 2000): from this bound on, a
# bare number is refused with both readings spelt out, and below it it is seconds. Between 10 and a few hundred
# either reading is plausible (`p95: 30` may be 30 s of an agent's answer or 30 ms of its first event), so it is
# refused as well: writing the unit costs a keystroke, reading the other unit costs a gate that means nothing.
BARE_LATENCY_MAX = 10.0


def parse_latency_bound(value: Any) -> float:
    """A latency objective's bound: a duration, but a bare number of BARE_LATENCY_MAX or more is refused (above)."""
    seconds = parse_duration(value)
    bare = isinstance(value, (int, float)) or isinstance(value, str) and (m := _RE.fullmatch(value)) is not None \
        and m.group(1) is not None
    if bare and seconds >= BARE_LATENCY_MAX:
        number = value.strip() if isinstance(value, str) else str(int(seconds)) if seconds.is_integer() else repr(value)
        raise ValueError(f"{number} would be read as seconds ({format_duration(seconds)}), while k6 writes latencies in "
                         f"milliseconds: write {number}ms or {number}s (a number without a unit is taken only "
                         f"below {BARE_LATENCY_MAX:g})")
    return seconds


LatencySeconds = Annotated[float, BeforeValidator(parse_latency_bound)]


def seconds_given(value: Any) -> Any:
    """Seconds a program holds (a float, never a person's bare `500`) as a latency bound takes them again: from
    BARE_LATENCY_MAX on with their unit (Decimal: 1e-05 as 0.00001), below it the number itself (1e-320 written out
    is no duration); anything else as it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= BARE_LATENCY_MAX:
        return value
    return f"{Decimal(repr(float(value))):f}s" if math.isfinite(value) else value


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be more than 0 (a limit of 0 fails every chat before it starts)")
    return seconds


# A wait or a limit: 0 would fail every chat on a healthy server (a verdict, not the usage error it is).
PositiveSeconds = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]
# A latency's limit (a chat's first-event limit, R9): as a latency objective's bound, a bare number of
# BARE_LATENCY_MAX or more is refused (`first_event_limit: 500` is k6's 500 ms habit, or 8m20s). A deadline or a wait
# (`deadline: 120`, `stall_limit: 30`) is no latency k6 writes in milliseconds: a bare number there stays seconds.
PositiveLatencySeconds = Annotated[float, BeforeValidator(parse_latency_bound), AfterValidator(_positive)]


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
               "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str) -> int:
    """A byte count: `1048576`, `512KiB`, `4MiB`, `2MB`, `1GiB` (agentsim's size syntax, and the unit `check --max-size`
    states its bound in); raises ValueError. Digits are ASCII ones, as a duration's are: `٣` (an Arabic-Indic three)
    was read as 3 bytes, every frame then too large."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?)\s*([a-z]*)", text.strip().lower())
    if not m or m.group(2) not in _SIZE_UNITS:
        raise ValueError(f"bad size {text!r} (use e.g. 4MiB, 512KiB, 1000000)")
    size = float(m.group(1)) * _SIZE_UNITS[m.group(2)]
    if not math.isfinite(size) or size > 2**62:
        raise ValueError(f"bad size {text!r}: too large")
    if int(size) < 1:
        raise ValueError(f"bad size {text!r}: must be at least 1 byte")
    return int(size)
