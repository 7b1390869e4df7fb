"""What may leave the process: known secrets and bearer credentials replaced by [REDACTED], URLs stripped of
credentials, and control characters shown as escapes, so a hostile server can neither leak a token nor drive a
terminal through a report or a console line."""
from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from urllib.parse import quote

REDACTED = "[REDACTED]"
# A secret this short would turn every report into noise (each "abc" replaced); it is not a real credential.
MIN_SECRET_LEN = 4
# Tokens minted per virtual user are remembered up to this many (the newest); older ones are still caught by
# their JWT shape, so a long monitor run does not grow the registry without bound.
MAX_MINTED = 1024

_lock = threading.Lock()
_fixed: set[str] = set()  # the token given, the JWT secret: searched in every string
_minted: OrderedDict[str, None] = OrderedDict()  # minted JWTs: searched only in strings holding "eyJ"
_fixed_re: re.Pattern[str] | None = None
_fixed_list: list[str] = []
_minted_re: re.Pattern[str] | None = None
_dirty = False  # a fixed secret came: recompile before the next scrub
_minted_dirty = False  # a minted token came: recompile at most once a second (its JWT shape catches it meanwhile)
_minted_compiled_at = 0.0

# Any compact JWS (base64url of '{"' starts "eyJ"): a bearer credential whoever minted it.
# A JWT cut short by a field's size bound is caught too (the shape, not the three parts, decides).
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*){0,2}")
# A secret that a field's size bound cut short still must not show: a run of at least this many of its first
# characters is redacted too.
PREFIX_LEN = 8
_BEARER_RE = re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]{8,}")
_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,30}://[^\s\"'<>`]+")
_USERINFO_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")
_PARAM_RE = re.compile(r"([?&;#])([^=&;#]*)=([^&;#]*)")
_SENSITIVE_PARAM = re.compile(r"(?i)token|key|secret|pass|pwd|sig|auth|jwt|session|cred|bearer|code")

# Characters a terminal or an XML 1.0 parser must never get raw: C0/C1 controls and DEL (escape sequences,
# NUL), bidi overrides and isolates (text that reads other than it is), line/paragraph separators, the BOM, lone
# surrogates (not encodable, forbidden in XML) and U+FFFE/U+FFFF (forbidden in XML).
_UNSAFE_RE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff\ufff9-\ufffb"
    "\ud800-\udfff\ufffe\uffff]"
)


def register(secret: str | None, *, minted: bool = False) -> None:
    """Remember a secret the process holds, so that no output shows it (nor its URL- or JSON-escaped form)."""
    global _dirty, _minted_dirty
    if not isinstance(secret, str) or len(secret.strip()) < MIN_SECRET_LEN:
        return
    forms = {secret, quote(secret, safe=""), json.dumps(secret)[1:-1]}
    with _lock:
        if minted:
            for f in forms:
                _minted[f] = None
                _minted.move_to_end(f)
            while len(_minted) > MAX_MINTED:
                _minted.popitem(last=False)
            _minted_dirty = True
        elif not forms <= _fixed:
            _fixed.update(forms)
            _dirty = True


def forget_all() -> None:
    """Drop every registered secret (tests; a process that reloads its credentials)."""
    global _dirty, _minted_dirty
    with _lock:
        _fixed.clear()
        _minted.clear()
        _dirty = _minted_dirty = True


def _alternation(items: set[str] | OrderedDict[str, None]) -> re.Pattern[str] | None:
    if not items:
        return None
    # Longest first, so a secret that contains another is replaced whole.
    return re.compile("|".join(re.escape(s) for s in sorted(items, key=len, reverse=True)))


def _patterns() -> tuple[re.Pattern[str] | None, re.Pattern[str] | None]:
    global _fixed_re, _minted_re, _dirty, _minted_dirty, _minted_compiled_at
    # Compiled lazily: tokens are minted per connection, outputs are written far less often; a thousand minted
    # tokens take ~0.1 s to compile, so a live view redrawn 4 times a second never recompiles more than once a
    # second (until then the JWT shape rule redacts a new token just as well).
    if _dirty or (_minted_dirty and time.monotonic() - _minted_compiled_at >= 1.0):
        with _lock:
            if _dirty:
                _fixed_re = _alternation(_fixed)
                _fixed_list[:] = sorted(_fixed, key=len, reverse=True)
                _dirty = False
            if _minted_dirty:
                _minted_re = _alternation(_minted)
                _minted_dirty = False
                _minted_compiled_at = time.monotonic()
    return _fixed_re, _minted_re


def _redact_prefix_runs(text: str, secret: str) -> str:
    """Replace each run of text that matches the start of `secret` for at least PREFIX_LEN characters."""
    head = secret[:PREFIX_LEN]
    out: list[str] = []
    i = 0
    while (at := text.find(head, i)) >= 0:
        j, k = at + len(head), len(head)
        while j < len(text) and k < len(secret) and text[j] == secret[k]:
            j += 1
            k += 1
        out += [text[i:at], REDACTED]
        i = j
    out.append(text[i:])
    return "".join(out)


def redact_url(url: str) -> str:
    """The URL without credentials: userinfo and the values of token-, key-, secret-, password-like query or
    fragment parameters become [REDACTED]."""
    out = _USERINFO_RE.sub(lambda m: m.group(1) + REDACTED + "@", url, count=1)
    cut = min((i for i in (out.find("?"), out.find("#")) if i >= 0), default=-1)
    if cut < 0:
        return out
    head, tail = out[:cut], out[cut:]

    def param(m: re.Match[str]) -> str:
        if m.group(3) and _SENSITIVE_PARAM.search(m.group(2)):
            return f"{m.group(1)}{m.group(2)}={REDACTED}"
        return m.group(0)

    return head + _PARAM_RE.sub(param, tail)


def scrub(text: str) -> str:
    """The text with every registered secret, any JWT, any bearer credential and every URL's credentials replaced
    by [REDACTED]. Cheap when there is nothing to find (substring tests before any pattern runs)."""
    if not text:
        return text
    fixed, minted = _patterns()
    if fixed is not None:
        text = fixed.sub(REDACTED, text)
        for secret in _fixed_list:
            if secret[:PREFIX_LEN] in text:
                text = _redact_prefix_runs(text, secret)
    if "eyJ" in text:
        if minted is not None:
            text = minted.sub(REDACTED, text)
        text = _JWT_RE.sub(REDACTED, text)
    if "://" in text:
        text = _URL_RE.sub(lambda m: redact_url(m.group(0)), text)
    if "earer" in text or "EARER" in text:
        text = _BEARER_RE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    return text


def _escape_char(m: re.Match[str]) -> str:
    c = ord(m.group(0))
    return f"\\x{c:02x}" if c <= 0xFF else f"\\u{c:04x}"


def printable(text: str) -> str:
    """The text with control characters, escape sequences, bidi overrides, lone surrogates and XML-forbidden
    characters shown as `\\x1b`, `\\u202e`…: one visible line, safe on a terminal and in XML 1.0."""
    if text.isprintable():  # none of the characters above is printable: the common case costs one C scan
        return text
    return _UNSAFE_RE.sub(_escape_char, text)


def clean(value: object, limit: int | None = None) -> str:
    """A value from the server (or anywhere) made fit to show: scrubbed, printable, at most `limit` characters."""
    text = printable(scrub(value if isinstance(value, str) else str(value)))
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}…(+{len(text) - limit} chars)"
    return text
