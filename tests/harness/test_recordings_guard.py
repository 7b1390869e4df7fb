"""The HAR guard (recordings._BoundedJSON) against the byte-by-byte lexer it replaced, kept here as the reference:
over HAR-like and hostile bytes cut into chunks at random and adversarial places, both end alike (the same
HarTooLarge message, or the same state after every chunk: depth, item starts, string and token carried on)."""
from __future__ import annotations

import io
import json
import random
import re
from typing import Any

import pytest

from harness.recordings import MAX_HAR_KEY, MAX_HAR_TOKEN, MAX_SORTED_ENTRIES, HarTooLarge, _BoundedJSON


class _Reference:
    """_BoundedJSON's lexer as it was before it skipped runs of short strings and tokens in C (commit f41f90b)."""

    _BODY = re.compile(rb'(?:[^"\\]+|\\.)*+', re.DOTALL)
    _OUTSIDE = re.compile(rb'["\[\]{}]')
    _TOKEN = re.compile(rb'[^\s\[\]{}:,"]+')
    _SPACE = re.compile(rb'[ \t\n\r]*')

    def __init__(self, max_string: int, max_depth: int) -> None:
        self.max_string = max_string
        self.max_depth = max_depth
        self.offset = 0
        self.in_string = False
        self.string_len = 0
        self.string_at = 0
        self.escape_pending = False
        self.depth = 0
        self.token_len = 0
        self.long_string = 0
        self.kinds = bytearray()
        self.third = -1
        self.item_starts: list[tuple[int, int]] | None = None

    def _scan(self, data: bytes) -> None:
        pos, end = 0, len(data)
        if self.escape_pending and end:
            self.escape_pending = False
            self._grow(1)
            pos = 1
        while pos < end:
            if self.in_string:
                stop = self._BODY.match(data, pos).end()  # type: ignore[union-attr]
                self._grow(stop - pos)
                if stop == end:
                    return
                if data[stop] == 0x22:
                    self.in_string = False
                    if self.string_len > MAX_HAR_KEY:
                        self.long_string = self.string_len
                    pos = stop + 1
                    continue
                self.escape_pending = True
                self._grow(1)
                return
            if self.long_string:
                pos = self._SPACE.match(data, pos).end()  # type: ignore[union-attr]
                if pos == end:
                    return
                if data[pos] == 0x3A:
                    raise HarTooLarge(f"an object key of {self.long_string} bytes (over {MAX_HAR_KEY}) at byte "
                                      f"{self.offset + pos}")
                self.long_string = 0
            m = self._OUTSIDE.search(data, pos)
            self._tokens(data, pos, end if m is None else m.start())
            if m is None:
                return
            self.token_len = 0
            c = m.group()
            if c == b'"':
                self.in_string, self.string_len, self.string_at = True, 0, self.offset + m.start()
            elif c in (b"[", b"{"):
                self.depth += 1
                if self.depth > self.max_depth:
                    raise HarTooLarge(f"nested more than {self.max_depth} deep at byte {self.offset + m.start()}")
                if self.depth <= 3:
                    del self.kinds[self.depth - 1:]
                    self.kinds += c
                    self.third += self.depth == 3
                elif self.depth == 4 and c == b"{" and self.kinds[2:3] == b"[" and self.item_starts is not None:
                    self.item_starts.append((self.third, self.offset + m.start()))
                    if len(self.item_starts) > MAX_SORTED_ENTRIES:
                        self.item_starts = None
            else:
                self.depth -= 1
            pos = m.end()

    def _tokens(self, data: bytes, start: int, stop: int) -> None:
        carried, self.token_len = self.token_len, 0
        for t in self._TOKEN.finditer(data, start, stop):
            n = t.end() - t.start() + (carried if t.start() == start else 0)
            if n > MAX_HAR_TOKEN:
                raise HarTooLarge(f"a number or literal longer than {MAX_HAR_TOKEN} bytes at byte {self.offset + t.start()}")
            if t.end() == stop:
                self.token_len = n

    def _grow(self, n: int) -> None:
        self.string_len += n
        if self.string_len > self.max_string:
            raise HarTooLarge(f"a string longer than the {self.max_string} byte limit at byte {self.string_at}")


def _state(g: Any) -> tuple[Any, ...]:
    """What a lexer carries from one chunk to the next (a closed string's length is never read again)."""
    return (g.offset, g.depth, g.in_string, g.string_len if g.in_string else None, g.escape_pending, g.token_len,
            g.long_string, bytes(g.kinds), g.third, g.item_starts)


def _run(g: Any, chunks: list[bytes]) -> list[Any]:
    """The state after each chunk, then the message the lexer stopped with (or None), as readinto feeds it."""
    seen: list[Any] = []
    try:
        for chunk in chunks:
            g._scan(chunk)
            g.offset += len(chunk)
            seen.append(_state(g))
    except HarTooLarge as exc:
        seen.append(str(exc))
    else:
        seen.append(None)
    return seen


def _same(data: bytes, cuts: list[int], max_string: int, max_depth: int) -> None:
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    new = _BoundedJSON(io.BytesIO(), max_string, max_depth)
    old = _Reference(max_string, max_depth)
    new.item_starts, old.item_starts = [], []
    want = _run(old, chunks)
    assert _run(new, chunks) == want, (data[:200], bounds[:20], max_string, max_depth)


def _har(rng: random.Random, entries: int) -> bytes:
    """A Chrome-like HAR: entries with headers, timings and WebSocket messages of escaped JSON."""
    out = []
    for i in range(entries):
        messages = [{"type": rng.choice(["send", "receive"]), "time": 1.7e9 + i + k / 7, "opcode": 1,
                     "data": json.dumps({"type": "partial_result", "seq": k, "text": "w\u00e9\"\\" * rng.randrange(9)})}
                    for k in range(rng.randrange(4))]
        out.append({"startedDateTime": f"2026-12-06T0{rng.randrange(10)}:00:00.000Z", "time": rng.random() * 100,
                    "request": {"method": "GET", "url": f"wss://x/{i}", "headers": [
                        {"name": "Upgrade", "value": "websocket"}, {"name": "k" * rng.randrange(50), "value": "v"}]},
                    "response": {"status": 101, "headers": [], "content": {"size": 0, "mimeType": "x"}},
                    "timings": {"wait": -1, "receive": 0.5, "_blocked_queueing": 1e-3},
                    "_resourceType": "websocket", "_webSocketMessages": messages})
    return json.dumps({"log": {"version": "1.2", "creator": {"name": "WebInspector", "version": "537.36"},
                               "pages": [{"id": "p", "title": "t"}], "entries": out}},
                      indent=rng.choice([None, 1, 2]), ensure_ascii=rng.random() < 0.5).encode()


# Pieces of hostile bytes: stray escapes and quotes, brackets, every separator, tokens and strings at and around
# each limit (the short-string run the scanner skips is at most MAX_HAR_KEY // 2 characters or escapes).
_PIECES = [b'"', b"\\", b'\\"', b"\\\\", b"[", b"]", b"{", b"}", b":", b",", b" ", b"\t", b"\n", b"\r", b"\x0c",
           b"\x0b", b"1", b"-2.5e3", b"true", b"null", b"\xc3\xa9", b"\x00", b"a", b"\xff", b'"k": ', b'{"a": [',
           b'"x"', b'""', b'"\\\\"']


def _hostile(rng: random.Random) -> bytes:
    out = bytearray()
    for _ in range(rng.randrange(1, 60)):
        r = rng.random()
        if r < 0.06:
            out += b"7" * rng.choice([MAX_HAR_TOKEN - 1, MAX_HAR_TOKEN, MAX_HAR_TOKEN + 1, rng.randrange(1, 9000)])
        elif r < 0.12:
            size = rng.choice([MAX_HAR_KEY // 2 - 1, MAX_HAR_KEY // 2, MAX_HAR_KEY // 2 + 1, MAX_HAR_KEY - 1,
                               MAX_HAR_KEY, MAX_HAR_KEY + 1, rng.randrange(0, 9000)])
            body = rng.choice([b"s" * size, b"\\n" * (size // 2) + b"s" * (size % 2), b"\\" * size])
            out += b'"' + body + b'"' + rng.choice([b"", b" ", b" : ", b":", b"\n\n:", b",", b" 1"])
        elif r < 0.16:
            n = rng.randrange(1, 80)
            out += rng.choice([b"[", b"{"]) * n + rng.choice([b"]", b"}"]) * rng.randrange(n + 1)
        else:
            out += rng.choice(_PIECES)
    return bytes(out)


def _cuts(rng: random.Random, data: bytes) -> list[int]:
    """Cut points: random, every byte, or right before and after each special byte (a chunk's edge in a string,
    on an escape, in a token)."""
    how = rng.randrange(4)
    if how == 0 or len(data) < 2:
        return [rng.randrange(len(data) + 1) for _ in range(rng.randrange(0, 12))]
    if how == 1 and len(data) < 3000:
        return list(range(1, len(data)))
    if how == 2:
        special = [i for i, b in enumerate(data) if b in b'"\\[]{}:'][:400]
        return [i + rng.choice([0, 1, 2]) for i in special]
    step = rng.choice([1, 2, 3, 7, 64, 4096, 4097, 8192])
    return list(range(rng.randrange(1, step + 1), len(data), step))


LIMITS = [(64 << 20, 64), (1 << 20, 6), (MAX_HAR_KEY, 64), (MAX_HAR_KEY - 1, 64), (100, 64), (3, 9), (0, 64), (1, 4)]


@pytest.mark.parametrize("seed", range(12))
def test_the_guard_ends_as_the_byte_exact_lexer_on_har_like_files(seed):
    rng = random.Random(seed)
    data = _har(rng, rng.randrange(1, 30))
    for max_string, max_depth in LIMITS:
        for _ in range(6):
            _same(data, _cuts(rng, data), max_string, max_depth)


@pytest.mark.parametrize("seed", range(40))
def test_the_guard_ends_as_the_byte_exact_lexer_on_hostile_bytes(seed):
    rng = random.Random(1000 + seed)
    for _ in range(25):
        data = _hostile(rng)
        max_string, max_depth = rng.choice(LIMITS)
        _same(data, _cuts(rng, data), max_string, max_depth)


def test_the_guard_ends_as_the_byte_exact_lexer_at_each_limit():
    """Each bound just met and just passed, every chunking of a few bytes around it."""
    cases = [b'[' + b"1" * MAX_HAR_TOKEN + b', ' + b"2" * (MAX_HAR_TOKEN + 1) + b"]",
             b'{"' + b"k" * MAX_HAR_KEY + b'": 1, "' + b"k" * (MAX_HAR_KEY + 1) + b'" \n : 2}',
             b'["' + b"\\u00e9" * (MAX_HAR_KEY // 6 + 1) + b'", "' + b"k" * (MAX_HAR_KEY + 1) + b'", 3]',
             b'{"log": {"entries": [' + b'{"a": "\\""}, ' * 50 + b'{"b": [[[[{}]]]]}]}}',
             b"[" * 64 + b"]" * 64 + b"[" * 65]
    for data in cases:
        for at in range(0, len(data), max(1, len(data) // 40)):
            for width in (1, 2, 5):
                cuts = [at, at + width]
                for max_string, max_depth in LIMITS:
                    _same(data, cuts, max_string, max_depth)
