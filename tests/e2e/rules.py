"""Generate a test copy of the shipped rules with shorter windows: the alerts of minutes, checked in seconds.

Only three things change, each divided by the same factor: the groups' evaluation `interval`, every rule's
`for:` and every range window `[5m]` (and subquery range) in an expression. Thresholds, label matchers, names,
annotations and `offset`s stay exactly as shipped, so the test exercises the real rules.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

SHIPPED = Path(__file__).resolve().parents[2] / "monitors" / "rules" / "chatprobe.rules.yml"

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
# [5m] or a subquery's [1h:1m]: a range, optionally with a resolution
_RANGE = re.compile(r"\[(\s*(?:\d+(?:ms|s|m|h|d|w|y))+\s*)(:\s*(?:(?:\d+(?:ms|s|m|h|d|w|y))+)?\s*)?\]")


def parse_prom_duration(text: str) -> float:
    text = text.strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNITS[u] for n, u in parts)


def format_prom_duration(seconds: float) -> str:
    ms = max(1000, round(seconds * 1000))  # never below 1s: the test scrapes and evaluates every second
    if ms % 1000:
        return f"{ms}ms"
    s = ms // 1000
    for unit, size in (("h", 3600), ("m", 60)):
        if s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def _scale(text: str, factor: float) -> str:
    return format_prom_duration(parse_prom_duration(text) / factor)


def shorten_expr(expr: str, factor: float) -> str:
    def repl(m: re.Match) -> str:
        out = "[" + _scale(m.group(1), factor)
        if m.group(2):
            step = m.group(2)[1:].strip()
            out += ":" + (_scale(step, factor) if step else "")
        return out + "]"

    return _RANGE.sub(repl, expr)


def shortened_rules(factor: float, interval: str = "1s", source: Path = SHIPPED) -> dict:
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    for group in data["groups"]:
        group["interval"] = interval
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = _scale(str(rule["for"]), factor)
            rule["expr"] = shorten_expr(rule["expr"], factor)
    return data


def write_shortened_rules(dest: Path, factor: float, interval: str = "1s", source: Path = SHIPPED) -> Path:
    dest.write_text(yaml.safe_dump(shortened_rules(factor, interval, source), sort_keys=False, width=1000),
                    encoding="utf-8")
    return dest
