"""What may leave the process: known secrets, bearer credentials and the values of credential keys (CREDENTIAL_KEYS:
`"password": …`, `Cookie: …`, `X-Api-Key: …`) replaced by [REDACTED], URLs stripped of credentials, and control
characters shown as escapes, so a hostile server can neither leak a token nor drive a terminal through a report or a
console line."""
from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import sys
import threading
import time
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterable
from itertools import accumulate, compress, pairwise, product, repeat
from urllib.parse import quote, unquote, unquote_plus

import ahocorasick

from .errors import ConfigError

REDACTED = "[REDACTED]"
# A secret this short would turn every report into noise (each "abc" replaced); it is not a real credential.
MIN_SECRET_LEN = 4
# Tokens minted per virtual user are remembered up to this many (the newest); older ones are still caught by
# their JWT shape (but an older one's signature alone no more), so a long monitor run does not grow the registry
# without bound.
MAX_MINTED = 1024
# The other secrets (the token given, the JWT secret, --header values, the credentials of the HAR files `check`
# reads) are held for the whole process, every one of them until the last report is written: at most this many, of
# at most this many UTF-8 bytes in all (their matchers take ~500 bytes of memory per byte of secret). A secret past
# either bound is refused (SecretsFull), never dropped: one not registered could be echoed into a report.
MAX_SECRETS = 4096
MAX_SECRET_BYTES = 256 * 1024

_lock = threading.Lock()
_fixed: set[str] = set()  # the token given, the JWT secret: searched in every string
_fixed_bytes = 0  # their UTF-8 bytes, held to MAX_SECRET_BYTES
_minted: OrderedDict[str, tuple[str, ...]] = OrderedDict()  # minted JWT -> its forms: searched in strings holding "eyJ"
# The signature of each minted JWT (its third part) on its own, in every string: a server that echoes a token's
# payload without its "eyJ" and its signature apart gives the token away (its HS256 header is standard). Indexed by
# each of its pieces of _SIG_PIECE characters (kept with the registry, not compiled: a new token's signature is
# searched for at once), so a string is looked up once every _SIG_PIECE characters: any 2 * _SIG_PIECE - 1
# characters hold a piece that starts at such a multiple. re would try 1024 alternatives at every character.
_SIG_PIECE = 22
_minted_sigs: dict[str, tuple[str, int]] = {}  # piece -> (signature, where the piece is in it)
_fixed_matcher: Secrets | None = None
_minted_re: re.Pattern[str] | None = None
_dirty = False  # a fixed secret came: recompile before the next scrub
_minted_dirty = False  # a minted token came: recompile at most once a second (its JWT shape catches it meanwhile)
_minted_compiled_at = 0.0


class _Lazy:
    """A regular expression compiled on its first use (`.compiled`). Compiling the patterns below took ~3.5 ms of
    every command's start-up (`chatprobe --help` included), and a run may use none of them: each is tried only where
    a substring test says it could match (BENCHMARKS.md, issue 10)."""

    __slots__ = ("_pattern", "_flags", "_compiled")

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self._pattern, self._flags = pattern, flags
        self._compiled: re.Pattern[str] | None = None

    @property
    def compiled(self) -> re.Pattern[str]:
        compiled = self._compiled
        if compiled is None:  # two threads may both compile it: the same pattern either way
            compiled = self._compiled = re.compile(self._pattern, self._flags)
        return compiled

# Any compact JWS (base64url of '{"' starts "eyJ"): a bearer credential whoever minted it.
# A JWT cut short by a field's size bound is caught too (the shape, not the three parts, decides).
_JWT_RE = _Lazy(r"eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*){0,2}")
# The same shape with any character \u- or %-escaped (a server's JSON encoder, a URL): only the escapes of the
# base64url alphabet and the dot continue it, so a run never backtracks.
_B64URL_HEX = "(?:3[0-9]|4[1-9A-Fa-f]|5[0-9Aa]|6[1-9A-Fa-f]|7[0-9Aa]|2[Dd]|5[Ff])"
# An escape's backslash, doubled any number of times (a JSON string inside JSON, a repr in a message): a whole run
# of them, tried only from the run's start and never given back (a hostile run of backslashes costs linear time,
# not quadratic); it starts with a literal backslash, which lets the engine skip ahead to each.
_BACKSLASHES = r"\\(?<!\\\\)\\*+"
_JWT_CHAR = rf"(?:[A-Za-z0-9_-]|{_BACKSLASHES}u00{_B64URL_HEX}|%{_B64URL_HEX})"
_JWT_DOT = rf"(?:\.|{_BACKSLASHES}u002[Ee]|%2[Ee])"
_JWT_DISGUISED_RE = _Lazy(
    rf"(?:e|{_BACKSLASHES}u0065|%65)(?:y|{_BACKSLASHES}u0079|%79)(?:J|{_BACKSLASHES}u004[Aa]|%4[Aa])"
    rf"{_JWT_CHAR}{{8,}}(?:{_JWT_DOT}{_JWT_CHAR}*){{0,2}}"
)
# A JWT inside base64 text holds one of these (how "eyJ" reads in base64 at each byte alignment): such a run is
# decoded at each of its four character offsets, and redacted whole if a JWT is inside.
_B64_RUN_RE = _Lazy(r"[A-Za-z0-9+/_-]{16,}={0,2}")
_B64_JWT_MARKS = ("ZXlK", "V5S", "leU")
# Only the runs holding a mark are looked at (found from the marks: _redact_base64_runs), so that a frame of many
# base64-like words without one (ids, hashes: a 4 MB frame of random ones has half a million) costs no Python call
# per word: each was one, ~1.3 s of a 4 MB frame on the proxy's event loop.
_B64_MARK_RE = _Lazy("ZXlK|V5S|leU")
_B64_CHARS_RE = _Lazy(r"[A-Za-z0-9+/_-]*")
_B64_PAD_RE = _Lazy(r"={0,2}")
_B64_MIN_RUN = 16
# A secret shown in part (a field's size bound cut it short, a server cut or masked its first characters or put a
# character inside it) must not show either: any run of at least this many consecutive characters of a secret, or
# of one of its literal forms, wherever it starts in the secret, is redacted.
MIN_RUN = 8
# A secret that reads as words (it does not mix two of lower case, upper case and digits: a passphrase such as
# "chatprobe-dev-secret") shares runs of 8 with everyday text ("chatprobe"): its runs (and those of its other forms)
# count from this length. A random token mixes classes and keeps MIN_RUN.
MIN_RUN_WORDS = 12
# The matcher looks for pieces of this many characters of each form, one every (run length + 1 - _PIECE)
# characters: any run of the run length holds one of them whole.
_PIECE = 4
_BEARER_RE = _Lazy(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]{8,}")
# An Authorization header's credential whatever its scheme (Basic user:password, Token, Digest…), as a header line, a
# JSON member or a repr: the scheme stays, the credential goes.
_AUTHZ_RE = _Lazy(r"(?i)\b((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:[A-Za-z][A-Za-z0-9_-]*\s+)?)"
                  r"[^\s\"',;]{4,}")
# A token offered as a WebSocket subprotocol (`jwt.<token>`, as browsers must send one), opaque or not.
_SUBPROTOCOL_TOKEN_RE = _Lazy(r"(?i)\b(jwt\.)[A-Za-z0-9._~+/=-]{8,}")
# A compact JWS whose header JSON does not start '{"' (a space or a line break after the brace): eyAi…, ewo…, ew0K…,
# ewk…; only in the whole three-part shape (these prefixes alone are too common to mean a token).
_JWS_OTHER_RE = _Lazy(r"\b(?:eyA[gi]|ewo|ew0K|ewk)[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
# Keys that name a credential (CREDENTIAL_KEYS): a JSON member (`"password": "…"`, `\"apiKey\": \"…\"`, a repr's
# `'client_secret': '…'`), a header line (`X-Api-Key: …`, `Cookie: sid=…`) or a `name=value` pair (`passwd=…`) under
# one of them has its value redacted, whatever the value reads as. A key is matched case-insensitively with `-`, `_` or
# nothing between its words (`access_token`, `accessToken`, `Access-Token`, `ACCESSTOKEN`), alone or after a prefix
# that ends in `-`, `_` or a change from lower to upper case (`x-api-key`, `DB_PASSWORD`, `newPassword`,
# `aws_secret_access_key`), never inside a longer word (`passwordless`, `password_hint`, `paidToken`). No key that
# streaming frames carry as content is among them (`token`, `text`, `content`, `delta`, `key`, `id`, `secret`,
# `session_id`): scrubbing an event's own content would change what `check` judges of it.
CREDENTIAL_KEYS = ("password", "passwd", "passphrase", "access_token", "refresh_token", "id_token", "auth_token",
                   "oauth_token", "session_token", "client_secret", "api_secret", "api_key", "secret_key",
                   "secret_access_key", "private_key", "cookie", "set_cookie")
# Of those, the keys whose value is redacted only when it reads as cookies (`name=value`…): "cookie" is also a word.
_COOKIE_KEYS = frozenset({"cookie", "setcookie"})
# A name of CREDENTIAL_KEYS as it may be spelled (longest first: `secret_access_key` before `secret_key`), in a text
# whose lowered copy does not keep its length (a character that lowers to two): in every other text they are found by
# one pass of an automaton over the lowered copy (_credential_marks), ~25 times cheaper than this pattern.
_KEY_NAME_RE = _Lazy("(?i)" + "|".join("[-_]?".join(k.split("_")) for k in sorted(CREDENTIAL_KEYS, key=len,
                                                                                   reverse=True)))
_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_KEY_PREFIX_MAX = 64  # a longer name before one of the keys is no key of ours (and bounds the look back)
_KEY_SEP_RE = _Lazy(r"[ \t]*[:=][ \t]*")
_QUOTED_KEY_SEP_RE = _Lazy(r"\s*[:=]\s*")
# A value in quotes, up to its closing quote (or the text's end: a string cut short): as JSON or a repr escapes it, or
# (its quote escaped: JSON inside a JSON string) up to the escaped quote that ends it.
_QUOTED_VALUE_RES = {
    ('"', False): _Lazy(r'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL), ("'", False): _Lazy(r"[^'\\]*(?:\\.[^'\\]*)*", re.DOTALL),
    ('"', True): _Lazy(r'[^"\\]*(?:\\++(?!")[^"\\]*)*'), ("'", True): _Lazy(r"[^'\\]*(?:\\++(?!')[^'\\]*)*"),
}
# A value not in quotes: after `:` (a header line, a `key: value` line) to the line's end, after `=` to the next space
# or separator; never past a quote, nor an escape's backslash before one (the string around it goes on).
_LINE_VALUE_RE = _Lazy(r'[^\r\n"\\]*(?:\\[^\r\n"\\][^\r\n"\\]*)*')
_PAIR_VALUE_RE = _Lazy(r"""[^\s"'\\&;,]*""")
# What a cookie header's value starts with: a cookie's name and its `=` (RFC 6265's token characters).
_COOKIE_VALUE_RE = _Lazy(r"\s*[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}=")
# An HTTP Basic credential without its header (`Basic dXNlcjpodW50ZXIy`): redacted when it decodes to `user:password`.
_BASIC_RE = _Lazy(r"(?i)\b(basic\s+)([A-Za-z0-9+/]{4,}={0,2})(?![A-Za-z0-9+/=._~-])")
# A PEM private key's body, between its BEGIN and END lines (RSA, EC, OPENSSH, ENCRYPTED…).
_PEM_BEGIN_RE = _Lazy(r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----")
_URL_RE = _Lazy(r"[A-Za-z][A-Za-z0-9+.-]{0,30}://[^\s\"'<>`]+")
_USERINFO_RE = _Lazy(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")
# A parameter: after ?, &, ;, # (a matrix parameter `;jsessionid=` too), or a second ? (`url + "?token="` on a URL
# that had a query already).
_ESCAPED_AMP_RE = _Lazy(r"(\\u0026|%26)", re.IGNORECASE)
# A value ends at a backslash (an escape's start: the \" that closes a JSON string around the URL must survive), unless
# it escapes a slash (\/ as PHP's JSON encoder writes one; doubled inside nested JSON): the value goes on after it.
_PARAM_RE = _Lazy(r"([?&;#])([^=&;#?]*)=((?:[^&;#?\\]|\\++/)*)")
_SENSITIVE_PARAM = _Lazy(r"(?i)token|key|secret|pass|pwd|sig|auth|jwt|session|cred|bearer|code")
# A parameter value that reads as a credential whatever its name says (`?t=8fK2q…`): 12 or more URL-safe characters
# mixing at least two of lower case, upper case and digits. Words and slugs (`installation-guide-linux`), numbers,
# dates and short ids stay readable; a random-looking value goes, as a signed link's token would.
_OPAQUE_VALUE = _Lazy(r"[A-Za-z0-9._~+/=%-]{12,}")
_LOWER, _UPPER, _DIGITS = frozenset("abcdefghijklmnopqrstuvwxyz"), frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), frozenset(
    "0123456789")

# Unicode format characters (category Cf) that show nothing: zero-width spaces and joiners, the soft hyphen, the word
# joiner and invisible operators, the deprecated format controls, the BOM (a zero-width no-break space), the
# Egyptian, shorthand and musical format controls, and the tag characters (which spell hidden text: "IGNORE
# PREVIOUS INSTRUCTIONS" for whatever reads a report). clean() drops them before redacting, so a token with one
# after each character is a token again; printable() escapes any it is given.
_INVISIBLE = (
    "\u00ad\u180e\u200b-\u200d\u2060-\u2064\u206a-\u206f\ufeff"
    "\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f"
)
# The variation selectors show nothing either (category Mn, so printable to Python): each picks a glyph of the character
# before it, and the 256 of them spell any byte, so a run of them after an emoji is hidden text as the tag characters
# are ("emoji smuggling"), and a token with one after each character reads as the token. clean() drops them with the
# invisible format characters; scrub() and printable() leave them (an emoji's own selector, a frame's bytes as sent)
# but in a secret's run (_UNSEEN).
_SELECTORS = "\ufe00-\ufe0f\U000e0100-\U000e01ef"
_SELECTOR_RE = _Lazy(f"[{_SELECTORS}]")
_HIDDEN_RE = _Lazy(f"[{_INVISIBLE}{_SELECTORS}]+")
# The control characters but the line's own whitespace (tab, line feed, carriage return): C0, DEL and C1. A report
# shows each as an escape (printable), and a token with one after each character (`t\x07o\x07k…`) reads as the token
# there. Neither they nor the characters above split a secret: the matchers (Secrets, SeenCredentials) look for the
# secrets in the text without them too (_UNSEEN), and redact a run found so in the text as it stands, these characters
# inside it with it; everything else stays as it came (a recorded frame keeps its bytes: an emoji's own selector, a
# control character of its own). Tab, line feed and carriage return are left out: they are in most multi-line texts,
# which would each be searched twice. So is a variation selector after anything but a visible ASCII character (or
# another of these): an emoji's own (❤️, ⚠️) splits no token, and a chat's answer with one was searched twice; a token
# (ASCII) with one after each character is found.
_CONTROLS = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_SPLITTERS = f"{_INVISIBLE}{_CONTROLS}"
_UNSEEN = f"[{_SPLITTERS}]+|(?<=[\x21-\x7e{_SPLITTERS}])[{_SELECTORS}]+"
_UNSEEN_RE = _Lazy(_UNSEEN)
# Any character _UNSEEN may take: a search for one of a set is ~4 times cheaper than _UNSEEN's (an alternation, a look
# behind), and most texts that are not printable (a line break) hold none.
_UNSEEN_MARK_RE = _Lazy(f"[{_SPLITTERS}{_SELECTORS}]")
# Characters a terminal or an XML 1.0 parser must never get raw: C0/C1 controls and DEL (escape sequences,
# NUL), bidi overrides and isolates (text that reads other than it is), line/paragraph separators, lone
# surrogates (not encodable, forbidden in XML), U+FFFE/U+FFFF (forbidden in XML), the invisible format characters
# above and the other format characters (interlinear annotation, the Arabic, Syriac and Kaithi number signs that
# merge with the digits after them): every character of category Cf is here (tests walk them all).
_UNSAFE_RE = _Lazy(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufff9-\ufffb"
    "\ud800-\udfff\ufffe\uffff\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\U000110bd\U000110cd"
    f"{_INVISIBLE}]"
)


def _base64_forms(secret: str) -> set[str]:
    """What the secret looks like inside any standard or urlsafe base64 text: at each of the three byte alignments,
    the characters that depend on the secret's bytes alone (those at its edges also depend on its neighbours)."""
    data = secret.encode("utf-8", "surrogatepass")
    out = set()
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + data).decode("ascii")
        core = encoded[-(-8 * k // 6): 8 * (k + len(data)) // 6]
        if len(core) >= MIN_SECRET_LEN:
            out |= {core, core.replace("+", "-").replace("/", "_")}
    return out


def _html_forms(secret: str) -> set[str]:
    """The secret HTML-escaped as encoders write it, when it holds a character they escape (`&<>"'`, and `+` for Go's
    html/template): Python's (`&#x27;`), Go's (`&#39;`, `&#34;`, `&#43;`) and XML's (`&apos;`). Its runs between
    the entities could be shorter than a run redacted; one reference on its own is not decoded (_ENTITY_RUN_SPLIT)."""
    if not any(c in secret for c in "&<>\"'+"):
        return set()
    # (html.escape's replacements, written here: importing the html module loads its 2,231 named entities, 1.3 ms
    # of every command's start-up, measured)
    bare = secret.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    escaped = bare.replace('"', "&quot;").replace("'", "&#x27;")
    go = escaped.replace("&#x27;", "&#39;").replace("&quot;", "&#34;").replace("+", "&#43;")
    return {escaped, bare, go, escaped.replace("&#x27;", "&apos;")} - {secret}


def literal_forms(secret: str) -> set[str]:
    """The secret as it may be echoed: as is, URL-encoded, JSON-escaped, HTML-escaped, and inside base64 text."""
    return {secret, quote(secret, safe=""), json.dumps(secret)[1:-1]} | _html_forms(secret) | _base64_forms(secret)


def _mixes(text: str) -> int:
    """How many of lower case, upper case and digits (ASCII) the text holds: set tests in C, no pattern."""
    return (not _LOWER.isdisjoint(text)) + (not _UPPER.isdisjoint(text)) + (not _DIGITS.isdisjoint(text))


def _run_lengths(secrets: Iterable[str], literal: bool = True) -> dict[str, int]:
    """Each form of each secret (all its literal_forms and its hex, or its _disguised_forms) and the shortest run of
    it that is redacted: MIN_RUN, or MIN_RUN_WORDS for a secret that reads as words; never more than the form. A run
    of its hex (`token.encode().hex()`, Go's `%x`: a debug dump of the bytes) counts two characters a byte."""
    out: dict[str, int] = {}
    for secret in secrets:
        run = MIN_RUN if _mixes(secret) >= 2 else MIN_RUN_WORDS
        forms = {form: run for form in (literal_forms(secret) if literal else _disguised_forms(secret))}
        if literal:
            forms[secret.encode("utf-8", "surrogatepass").hex()] = 2 * run
        for form, length in forms.items():
            out[form] = min(length, len(form), out.get(form, length))
    return out


def _folded(text: str) -> str:
    """The text in lower case, each character where it stood: U+0130 (`İ`), the one character whose lower case is
    two, lowered as `I`. Secrets are matched in it, their forms lowered too: a server that upper- or lower-cases
    what it echoes (an error message normalized, a hex dump in capitals) gives the token away all but its letters'
    case: 2 to the number of its letters guesses, checked offline against any token a JWT secret signed."""
    low = text.lower()
    return low if len(low) == len(text) else text.replace("\u0130", "I").lower()


def _disguised_forms(secret: str) -> set[str]:
    """The forms of a secret looked for in a text with its escapes decoded (_decode): the secret and its base64 forms,
    and what the secret itself reads as there when it holds what decoding changes. A secret holding a %-escape
    (`C%18F29kN`) or a backslash (`P5b\\T1+ZfF`) that a server escaped character by character (`\\u0043\\u0025…`,
    `\\u0050\\u0035\\u0062\\\\\\u0054…`, its backslash as `\\\\`) read as `C\\x18F29kN` or `P5bT1+ZfF` decoded,
    neither the secret nor any of its literal forms: it went into the recording whole."""
    forms = {secret, *_base64_forms(secret)}
    for variant in (_decode(secret), secret.replace("\\", "")):
        if len(variant.strip()) >= MIN_SECRET_LEN:
            forms.add(variant)
    return forms


class Budget:
    """The work finding secrets' runs (_Runs.spans) may take on one text, or on the texts of one frame scrubbed in parts
    (a recorded JSON frame: whole, then its strings a batch at a time), shared by them: `hits`, a piece of a secret
    found (4096 + an eighth of the size: far above what ordinary text holds, a frame listing a hundred "chat_id"s
    keeps every "chat" of the registered chatprobe-dev-secret), and `grown`, a hit that the text went on from as the
    secret does (1024 + a 128th of the size: a real run of a secret is rare, a few echoes of a token). Past either,
    each further text is redacted piece by piece (_Runs.blunt). Every part of a frame had the whole bound again
    (4096 hits of its own), and every hit was followed: a frame of 250,000 strings each holding a run of the
    connection's token took the proxy's event loop for seconds."""

    __slots__ = ("hits", "grown", "lazy")

    def __init__(self, size: int, *, lazy: bool = False) -> None:
        self.hits = 4096 + size // 8
        self.grown = 1024 + size // 128
        # Past a bound, leave the text as it is: the caller scrubs it again in parts, and takes `spent` for a change
        # (a recorded JSON frame: its strings, a batch at a time), so redacting it whole piece by piece is work lost.
        self.lazy = lazy

    @property
    def spent(self) -> bool:
        """Past a bound: a text dense with a secret's pieces was met."""
        return self.hits < 0 or self.grown < 0

    def again(self, size: int) -> Budget:
        """The budget of a second pass over the same frame, in parts (never lazy): nothing left when this one was
        spent, else twice the frame's allowance (a key's value is scrubbed after the key, in both)."""
        after = Budget(2 * size)
        if self.spent:
            after.hits = after.grown = -1
        return after


class _Runs:
    """Finds every run of at least its form's run length of consecutive characters of any of the forms, wherever in
    the form it starts, in any mix of upper and lower case. Each form is cut into pieces of _PIECE characters, one
    every (run length + 1 - _PIECE) characters, so that any such run holds a piece whole: every piece of every form is
    found in one pass over the text (an Aho-Corasick automaton, built once per set of forms), and each hit is followed
    left and right while the text goes on as the form does at that offset (a piece may occur at several offsets of a
    repetitive form)."""

    def __init__(self, forms: dict[str, int]) -> None:
        # Matched without regard to case (_folded): the forms lowered, the text too, where it stands.
        folded: dict[str, int] = {}
        originals: dict[str, list[str]] = {}
        for form, run in forms.items():
            low = _folded(form)
            folded[low] = min(run, folded.get(low, run))
            originals.setdefault(low, []).append(form)
        forms = folded
        self.forms = list(forms)
        # The forms as given, by folded form: a run in another case is told from one as the secret has it (_kept).
        self.originals = [originals[form] for form in self.forms]
        pieces: dict[str, list[tuple[int, int]]] = {}  # piece -> (form index, offset in the form)
        for n, (form, run) in enumerate(forms.items()):
            step = max(1, run + 1 - _PIECE)
            for off in range(0, len(form) - _PIECE + 1, step):
                pieces.setdefault(form[off:off + _PIECE], []).append((n, off))
        self.runs = list(forms.values())
        # Each piece's value: its number (for the hit count below) and where it is in the forms.
        self.automaton = ahocorasick.Automaton()
        for k, (piece, places) in enumerate(pieces.items()):
            self.automaton.add_word(piece, (k, tuple(places)))
        self.automaton.make_automaton()

    def spans(self, text: str, budget: Budget | None = None) -> list[tuple[int, int]] | None:
        """The [start, end) of each such run in the text, sorted, overlapping ones merged; None for a text too dense
        with the forms' pieces to follow each (see `blunt`), past `budget` (the text's own when None: Budget)."""
        # A bound on the work a hostile text can cause (a secret's piece repeated a million times, or a million runs of
        # it): past it, each piece found is redacted as it stands, which cuts every run of every form as surely, only
        # less exactly. A hit is a piece's occurrence (counted as str.count does, without overlaps) times the places it
        # has in the forms; the pass stops as soon as their count, or that of the hits that grew, is over the bound.
        if budget is None:
            budget = Budget(len(text))
        given, text = text, _folded(text)
        found: list[tuple[int, int]] = []
        forms, runs = self.forms, self.runs
        hits, grown = budget.hits, budget.grown
        counted_to: dict[int, int] = {}  # piece -> where its last occurrence counted ends, plus _PIECE - 1
        # (form, where it starts in the text) -> where the run last followed there ends: a hit of another of the
        # form's pieces inside it is that run again (the hits come from left to right).
        reach: dict[tuple[int, int], int] = {}
        for last, (k, places) in self.automaton.iter(text):
            if last >= counted_to.get(k, 0):
                counted_to[k] = last + _PIECE
                hits -= len(places)
                if hits < 0:
                    budget.hits = -1
                    return None
            at = last + 1 - _PIECE
            for n, off in places:
                key = (n, at - off)
                if reach.get(key, -1) > last:
                    continue
                start, end = _grown(text, at, last + 1, forms[n], off, off + _PIECE)
                reach[key] = end
                if end - start > _PIECE:
                    grown -= 1
                    if grown < 0:
                        budget.grown = -1
                        return None
                if end - start >= runs[n] and self._kept(given, start, end, n, at - off):
                    found.append((start, end))
        budget.hits, budget.grown = hits, grown
        return _merged(found) if found else []

    def _kept(self, given: str, start: int, end: int, n: int, base: int) -> bool:
        """Whether a run found without regard to case (given[start:end], where form n starts at `base`) is redacted:
        always as one of the forms has it, and in another case unless it is a word of the secret: letters alone
        that the secret writes as a word is written (`Password` of `Password2024`, `Internat` of `InternationalSecret`:
        lower, upper or title case), shorter than twice its run length and not the whole form. Everyday text holds
        such a word in lower case, a frame's type among it (`password_reset` made `[REDACTED]_reset`, an R12 in the
        recording judged). A secret echoed upper- or lower-cased is still redacted whole, and by its runs holding a
        digit or a sign or letters the secret mixes the case of (a random token's). (Per run found, never per piece.)"""
        seg = given[start:end]
        at = start - base
        forms = self.originals[n]
        if any(form[at:at + len(seg)] == seg for form in forms):
            return True
        if not seg.isalpha() or len(seg) >= 2 * self.runs[n] or len(seg) == len(self.forms[n]):
            return True
        mine = forms[0][at:at + len(seg)]
        return not (mine.islower() or mine.isupper() or mine.istitle())

    def blunt(self, text: str) -> str:
        """A text too dense with pieces to follow each: every piece found redacted as it stands, from the left, the
        next one looked for after it (as an alternation of them would), which cuts every run of every form as
        surely, only less exactly; pieces side by side are one [REDACTED] (a hostile frame of a million pieces made
        ten megabytes of them). (The pieces have one length: the longest match is the leftmost one.)"""
        out: list[str] = []
        i = 0
        for end in [last + 1 for last, _ in self.automaton.iter_long(_folded(text))]:
            start = end - _PIECE
            if start > i or not out:
                out += [text[i:start], REDACTED]
            i = end
        out.append(text[i:])
        return "".join(out)


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _grown(text: str, at: int, end: int, form: str, off: int, j: int) -> tuple[int, int]:
    """The run of `text` that agrees with `form` around a piece found: text[at:end] is form[off:j]; grown right and
    left as far as both go on alike, the first character compared here, the rest in C, a slice at a time (a character
    at a time, in Python, was most of a hostile frame's cost)."""
    start, size = at, len(text)
    if end < size and j < len(form) and text[end] == form[j]:
        end += _agree(text, end, form, j, min(size - end, len(form) - j))
    if at and off and text[at - 1] == form[off - 1]:
        start -= _agree_back(text, at, form, off, min(at, off))
    return start, end


def _agree(a: str, i: int, b: str, j: int, most: int) -> int:
    """How many characters of `a` from i on are those of `b` from j on, at most `most`, the first one known to be:
    slices compared in C, halving."""
    if a[i:i + most] == b[j:j + most]:
        return most
    lo, hi = 1, most  # a[i:i + lo] agrees, a[i:i + hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[i:i + mid] == b[j:j + mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _agree_back(a: str, i: int, b: str, j: int, most: int) -> int:
    """How many characters of `a` before i are those of `b` before j, at most `most`, the first one known to be."""
    if a[i - most:i] == b[j - most:j]:
        return most
    lo, hi = 1, most
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[i - mid:i] == b[j - mid:j]:
            lo = mid
        else:
            hi = mid
    return lo


def _redacted_spans(text: str, spans: list[tuple[int, int]]) -> str:
    out: list[str] = []
    i = 0
    for start, end in spans:
        out += [text[i:start], REDACTED]
        i = end
    out.append(text[i:])
    return "".join(out)


# A JSON escape after a run of backslashes (a `\u0065`, `\"` or `\/`, its backslash doubled any number of times), the
# run taken whole from its start (never given back: _BACKSLASHES): a `\uXXXX` (its hex digits kept; a surrogate pair's
# two escapes as one, `\ud83d\ude00` one emoji), or a `\"` or `\/` (the character kept). Each decodes to one
# character, and the escapes of a text are decoded all at once, in C: re.split hands the kept parts back as a list,
# the hex digits of all the `\uXXXX` are read as one UTF-16 text, and the whole is joined. A Python call per escape
# (or per run of `\uXXXX`) cost a legal frame of prose full of quotes, backslashes and emoji 0.26 s a megabyte, each
# way through the proxy, on its one event loop.
_UNICODE_ESCAPE = (rf"{_BACKSLASHES}u([Dd][89ABab][0-9A-Fa-f]{{2}}{_BACKSLASHES}u[Dd][C-Fc-f][0-9A-Fa-f]{{2}}"
                   r"|[0-9A-Fa-f]{4})")
_CHAR_ESCAPE = rf'{_BACKSLASHES}([/"])'
_UNICODE_ESCAPE_SPLIT = _Lazy(_UNICODE_ESCAPE)
_CHAR_ESCAPE_SPLIT = _Lazy(_CHAR_ESCAPE)
# The same, each escape kept whole too (group 1): where a decoded character starts in the text (_Positions).
_UNICODE_ESCAPE_SPLIT_AT = _Lazy(f"({_UNICODE_ESCAPE})")
_CHAR_ESCAPE_SPLIT_AT = _Lazy(f"({_CHAR_ESCAPE})")
_PAIR_JOIN = _Lazy(r"\\+u")  # between the two halves of a surrogate pair kept
# A run of `\uXXXX` escapes (each its backslashes): what a text decoded without its positions is split into. One
# backslash each first (almost every run: twice as fast as _BACKSLASHES at each).
_UNICODE_RUN_SPLIT = _Lazy(rf"((?<!\\)(?:\\u[0-9A-Fa-f]{{4}})+(?:{_BACKSLASHES}u[0-9A-Fa-f]{{4}})*"
                           rf"|(?:{_BACKSLASHES}u[0-9A-Fa-f]{{4}})+)")
# An escaped surrogate (any `\uD800`…`\uDFFF` is one: an escape ends every run of backslashes before a `u` and 4 hex
# digits): the pairs of the decoded text are joined then (all of them).
_ESCAPED_SURROGATE_RE = _Lazy(r"\\u[Dd][89A-Fa-f][0-9A-Fa-f]{2}")
# Spelled to start with "%" inside its group, which lets the engine skip ahead to each "%".
_PERCENT_RUN_SPLIT = _Lazy("(%[0-9A-Fa-f]{2}(?:%[0-9A-Fa-f]{2})*)")
# A run of at least 4 (MIN_SECRET_LEN) HTML/XML numeric character references, decimal or hex (`&#88;&#x6b;&#X39;…`): an
# encoder that writes every character so (an HTML error page, an attacker's). One on its own, as prose holds them
# (`agent&#39;s`, a template's `&#43;` for a `+`), is left: decoding each cost a Python call (0.13 s a megabyte of
# HTML text), and the plain characters around it are matched as they stand. Spelled to start with "&" inside its
# group, which lets the engine skip ahead to each "&" (its first reference outside the repeat: 5 times faster).
# Any number of digits (possessive: one way to read them), as browsers take them: leading zeros (`&#0000000107;`)
# and a reference past U+10FFFF (which reads as U+FFFD: _entity_run) are part of the run, not the end of it.
_ENTITY_RUN_SPLIT = _Lazy("(&#(?:[0-9]++|[xX][0-9A-Fa-f]++);(?:&#(?:[0-9]++|[xX][0-9A-Fa-f]++);){3,})")
# What such a run holds: the quick test before the pattern, after a test for "&" (a search for one character is
# ~60 times faster than for three: 0.01 ms a megabyte, not 0.6).
_ENTITY_MARK = ";&#"


def _has_escapes(text: str) -> bool:
    """Whether the text may hold a JSON escape, a %-escape or a run of numeric character references: what _decode
    reads (the test for "&" first: a search for one character is ~60 times faster than for three)."""
    return "\\" in text or "%" in text or ("&" in text and _ENTITY_MARK in text)


_SURROGATE_PAIR_SPLIT = _Lazy("([\ud800-\udbff][\udc00-\udfff])")
_UNSEEN_SPLIT = _Lazy(f"({_UNSEEN})")


def _has_unseen(text: str) -> bool:
    """Whether the text may hold characters that split no secret (_UNSEEN): a control or format character (none is
    printable: one C scan), or a variation selector after a visible ASCII character (printable, never ASCII: a text
    of ASCII costs nothing more; any selector is searched for, the cheaper search, and only those _UNSEEN names are
    dropped)."""
    return not text.isprintable() or (not text.isascii() and _SELECTOR_RE.compiled.search(text) is not None)


def _without_unseen(text: str) -> str:
    """The text without the characters that split no secret (_UNSEEN)."""
    if _has_unseen(text) and _UNSEEN_MARK_RE.compiled.search(text) is not None:
        return _UNSEEN_RE.compiled.sub("", text)
    return text


# A piece a span's end falls in is measured from its start once, in strides of this many characters (see _Prefix).
_STRIDE = 256


class _Prefix:
    """`measure(text[:off])` for any `off`, at the cost of one stride: the measures of the text's strides, added up once
    when the first position in it is asked for. A span's end was measured from the piece's start each time: a frame
    of one escaped run holding the token a thousand times had the whole run decoded and scanned for each of them
    (0.9 MB of escapes, 26 s of the proxy's event loop)."""

    __slots__ = ("text", "measure", "marks")

    def __init__(self, text: str, measure: Callable[[str], int]) -> None:
        self.text, self.measure = text, measure
        self.marks = array("q", accumulate((measure(text[i:i + _STRIDE]) for i in range(0, len(text), _STRIDE)),
                                           initial=0))

    def __call__(self, off: int) -> int:
        k = off // _STRIDE
        return self.marks[k] + self.measure(self.text[k * _STRIDE:off])


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def _in_percent_run(piece: str, decoded: str) -> Callable[[int], int]:
    """Where the `off`th character a %-run decodes to (`decoded`) starts in it: 3 characters a byte before it (a byte
    UTF-8 could not decode comes back as one of U+DC80…U+DCFF, one byte)."""
    size = _Prefix(decoded, _utf8_size)
    return lambda off: 3 * size(off)


def _entity_run(run: str) -> str:
    """A run of numeric character references decoded, one character each (all decimal or all hex: in C, no Python
    call per reference); one that names no character (past U+10FFFF, or of more digits than int() reads) as U+FFFD,
    as a browser reads it: the references around it are still decoded."""
    try:
        if "x" not in run and "X" not in run:
            return "".join(map(chr, map(int, run[2:-1].split(";&#"))))
        refs = run[3:-1].replace("X", "x").split(";&#x")
        if "&" not in "".join(refs):  # all hex
            return "".join(map(chr, map(int, refs, repeat(16))))
    except (ValueError, OverflowError):
        pass
    return "".join(map(_entity_char, run[2:-1].split(";&#")))


def _entity_char(ref: str) -> str:
    """One numeric character reference's number (`107`, `x6b`) decoded; U+FFFD for one that names no character."""
    try:
        return chr(int(ref[1:], 16) if ref[0] in "xX" else int(ref))
    except (ValueError, OverflowError):
        return "\ufffd"


def _in_entity_run(piece: str, decoded: str) -> Callable[[int], int]:
    """Where the `off`th character a run of numeric character references decodes to starts in it: after the widths
    of the references before it (`&#`, the number, `;`)."""
    if decoded == piece:  # a run left as it was (_entity_run)
        return lambda off: off
    starts = array("q", accumulate((len(ref) + 3 for ref in piece[2:-1].split(";&#")), initial=0))
    return lambda off: starts[off]


def _percent_run(run: str) -> str:
    return bytes.fromhex(run.replace("%", "")).decode("utf-8", "surrogateescape")


# Where in a piece its `off`th decoded character starts, made for a piece (as sent, decoded) when first asked.
Locator = Callable[[str, str], Callable[[int], int]]


class _Positions:
    """Where each position of a decoded text starts in the text it was decoded from (the text's length for the
    decoded text's end): each decoding step keeps the cumulative lengths of its parts (plain text and pieces decoded,
    alternately), in and out, and a position is looked up through the steps, latest first, by bisection (only a
    span's ends are ever asked for); a piece's own locator is made once, when a position in it is first asked for."""

    __slots__ = ("steps",)

    def __init__(self) -> None:
        self.steps: list[tuple[array[int], array[int], list[str], list[str], Locator | None,
                               dict[int, Callable[[int], int]]]] = []

    def step(self, parts_in: list[str], parts_out: list[str], inside: Locator | None) -> None:
        """`parts_in` became `parts_out`; `inside(piece, decoded)`: where in a piece its `off`th decoded character
        starts, as a function of `off` (None: every piece decodes to at most one character)."""
        ins = array("q", accumulate(map(len, parts_in), initial=0))
        outs = array("q", accumulate(map(len, parts_out), initial=0))
        self.steps.append((outs, ins, parts_in, parts_out, inside, {}))

    def __getitem__(self, pos: int) -> int:
        for outs, ins, parts_in, parts_out, inside, located in reversed(self.steps):
            i = bisect_right(outs, pos) - 1
            off = pos - outs[i]
            if off and i % 2:  # inside a piece that decoded to several characters
                if inside is None:
                    off = 0
                else:
                    if (locate := located.get(i)) is None:
                        locate = located[i] = inside(parts_in[i], parts_out[i])
                    off = locate(off)
            pos = ins[i] + off
        return pos


def _decode_step(text: str, parts: list[str], decoded: list[str], positions: _Positions | None,
                 inside: Locator | None = None) -> str:
    """`parts` (plain text and pieces, alternately: re.split's) with the pieces replaced by `decoded`, joined; the
    step noted in `positions`."""
    out = parts if positions is None else parts.copy()
    out[1::2] = decoded
    if positions is not None:
        positions.step(parts, out, inside)
    return "".join(out)


def _chars(kept: list[str]) -> list[str]:
    return kept


def _code_units(kept: list[str]) -> list[str]:
    """The characters of `\\uXXXX` escapes by their hex digits (a surrogate pair's 8, the escape between them), one
    each, in C: read as one UTF-16 text. A surrogate on its own stays one (it is no character: read as it is); two of
    them that the text does not hold side by side joined there (a high one, then a low one elsewhere), each is read
    on its own."""
    joined = "".join(kept)
    if "\\" in joined:  # (one backslash a half, as almost always: str.replace, ~10 times faster than the pattern)
        joined = _PAIR_JOIN.compiled.sub("", joined) if "\\\\" in joined else joined.replace("\\u", "")
    out = bytes.fromhex(joined).decode("utf-16-be", "surrogatepass")
    if len(out) == len(kept):
        return list(out)
    return [bytes.fromhex(_PAIR_JOIN.compiled.sub("", k)).decode("utf-16-be", "surrogatepass") for k in kept]


def _decode_escapes(text: str, split: _Lazy, split_at: _Lazy, decode: Callable[[list[str]], list[str]],
                    positions: _Positions | None) -> str:
    """The text with each escape `split` finds replaced by the one character `decode` makes of what its group kept,
    all at once (no Python call per escape); the step noted in `positions` (`split_at` keeps each escape whole)."""
    if positions is None:
        parts = split.compiled.split(text)
        if len(parts) > 1:
            parts[1::2] = decode(parts[1::2])
            text = "".join(parts)
        return text
    parts = split_at.compiled.split(text)
    if len(parts) > 1:
        kept = parts[2::3]
        del parts[2::3]
        text = _decode_step(text, parts, decode(kept), positions)
    return text


def _decode_unicode_runs(text: str) -> str:
    """The text with its `\\uXXXX` escapes decoded, a run of them at a time (a CJK answer as `json.dumps` writes it is
    a few runs, not a list item an escape): the hex digits of all the runs read as one UTF-16 text, U+FFFF (a
    noncharacter) between them, and cut there. A run that holds `\\uffff` itself: an escape at a time."""
    parts = _UNICODE_RUN_SPLIT.compiled.split(text)
    if len(parts) == 1:
        return text
    runs = parts[1::2]
    joined = "\\uFFFF".join(runs)
    joined = _PAIR_JOIN.compiled.sub("", joined) if "\\\\" in joined else joined.replace("\\u", "")
    decoded = bytes.fromhex(joined).decode("utf-16-be", "surrogatepass").split("\uffff")
    if len(decoded) != len(runs):
        return _decode_escapes(text, _UNICODE_ESCAPE_SPLIT, _UNICODE_ESCAPE_SPLIT_AT, _code_units, None)
    parts[1::2] = decoded
    return "".join(parts)


def _decode(text: str, positions: _Positions | None = None, invisible: bool = False) -> str:
    """The text with its JSON escapes (however often their backslash is doubled), %-escapes and runs of numeric
    character references (_ENTITY_RUN_SPLIT) decoded: what a disguised secret reads as; `invisible`: without
    the characters that split no secret (_UNSEEN) too; `positions`: where each decoded character starts in the text
    is noted there."""
    if "\\" in text:
        surrogates = _ESCAPED_SURROGATE_RE.compiled.search(text) is not None
        if '\\"' in text or "\\/" in text:  # (what a run of backslashes before either ends with)
            text = _decode_escapes(text, _CHAR_ESCAPE_SPLIT, _CHAR_ESCAPE_SPLIT_AT, _chars, positions)
        if positions is None:
            text = _decode_unicode_runs(text)
        else:
            text = _decode_escapes(text, _UNICODE_ESCAPE_SPLIT, _UNICODE_ESCAPE_SPLIT_AT, _code_units, positions)
        if surrogates:
            parts = _SURROGATE_PAIR_SPLIT.compiled.split(text)
            if len(parts) > 1:  # each pair one character: all of them at once, in C
                pairs = "".join(parts[1::2]).encode("utf-16-le", "surrogatepass").decode("utf-16-le")
                text = _decode_step(text, parts, list(pairs), positions)
    if "%" in text:
        parts = _PERCENT_RUN_SPLIT.compiled.split(text)
        if len(parts) > 1:
            text = _decode_step(text, parts, list(map(_percent_run, parts[1::2])), positions, _in_percent_run)
    if "&" in text and _ENTITY_MARK in text:
        parts = _ENTITY_RUN_SPLIT.compiled.split(text)
        if len(parts) > 1:
            text = _decode_step(text, parts, list(map(_entity_run, parts[1::2])), positions, _in_entity_run)
    if invisible and _has_unseen(text) and _UNSEEN_MARK_RE.compiled.search(text) is not None:
        parts = _UNSEEN_SPLIT.compiled.split(text)
        if len(parts) > 1:
            text = _decode_step(text, parts, [""] * (len(parts) // 2), positions)
    return text


def _unescaped(text: str) -> str:
    """The text with its JSON escapes (however often their backslash is doubled) and %-escapes decoded: what a
    disguised secret reads as."""
    return _decode(text)


# A text whose positions are asked for (_unescaped_at) is decoded in chunks of about this many characters, each cut
# before a character no escape holds and that is none of _UNSEEN (_PLAIN_CHAR): decoded alike, alone or in the text
# (no escape, run of escapes, surrogate pair or run of _UNSEEN spans the cut, and no selector is cut from the
# character before it), and only a chunk a span's end falls in is decoded again, its positions kept. Lists
# of a few items an escape, kept for the whole text, cost a frame that echoes a secret more than decoding it did.
# (A text holding a raw surrogate pair, which no frame received as UTF-8 does, may read otherwise by chunks than
# whole: the callers compare the two and search the one by chunks again when they differ.)
_CHUNK = 64 * 1024
# Or before a `\uXXXX` of one backslash that reads as a CJK character (U+4000…U+9FFF: part of no escape of any kind,
# no surrogate, no invisible character), as between two escapes of a CJK answer, every character escaped (it has no
# other place to cut).
_PLAIN_CHAR = _Lazy(f"[^\\\\%&#;/\"0-9A-Fa-fuxX\ud800-\udfff{_SPLITTERS}{_SELECTORS}]"
                    "|(?<!\\\\)\\\\u(?=[4-9][0-9A-Fa-f]{3})")


class _ChunkPositions:
    """Where each position of a text decoded by chunks (see _CHUNK) starts in the text (the text's length for the
    decoded text's end): the chunk it falls in found by bisection, then its place there (_Positions, made for the
    chunk when first asked)."""

    __slots__ = ("text", "cuts", "starts", "located", "unseen")

    def __init__(self, text: str, cuts: list[int], decoded: list[str], unseen: bool) -> None:
        self.text, self.cuts, self.unseen = text, cuts, unseen
        self.starts = array("q", accumulate(map(len, decoded), initial=0))
        self.located: dict[int, _Positions] = {}

    def __getitem__(self, pos: int) -> int:
        if pos >= self.starts[-1]:
            return len(self.text)
        i = bisect_right(self.starts, pos) - 1
        if (located := self.located.get(i)) is None:
            located = self.located[i] = _Positions()
            _decode(self.text[self.cuts[i]:self.cuts[i + 1]], located, invisible=self.unseen)
        return self.cuts[i] + located[pos - self.starts[i]]


def _unescaped_at(text: str, unseen: bool = True) -> tuple[str, _ChunkPositions]:
    """_unescaped(text) without the characters that split no secret (_UNSEEN), and where in the text each of its
    characters starts (then len(text)): a run found in the decoded text is redacted in the text as its escapes spell
    it (a secret with a zero-width space, a variation selector or a control character after each character too: the
    span redacted holds them, nothing else is dropped). `unseen` False: the caller knows the text decodes to none of
    them (no chunk is searched for them)."""
    cuts = [0]
    plain = _PLAIN_CHAR.compiled
    while (m := plain.search(text, cuts[-1] + _CHUNK)) is not None:
        cuts.append(m.start())
    cuts.append(len(text))
    decoded = [_decode(text[a:b], invisible=unseen) for a, b in pairwise(cuts)]
    return "".join(decoded), _ChunkPositions(text, cuts, decoded, unseen)


class Secrets:
    """Matchers for a set of secrets in all their forms: literal ones (as is, URL-encoded, JSON-escaped, inside
    base64) and any mix of \\u- and %-escapes; any run of at least MIN_RUN (MIN_RUN_WORDS) characters of one, too."""

    def __init__(self, secrets: Iterable[str]) -> None:
        secrets = {s for s in secrets if isinstance(s, str) and len(s.strip()) >= MIN_SECRET_LEN}
        self.literal = _Runs(_run_lengths(secrets)) if secrets else None
        # The secret and its base64 forms, any character escaped (base64 holds '/' a JSON encoder may write as \/):
        # found in the text with its escapes decoded; the URL-encoded and JSON-escaped forms are among the
        # secret's disguises already.
        self.disguised = _Runs(_run_lengths(secrets, literal=False)) if secrets else None

    def sub(self, text: str, decoded: str | None = None, budget: Budget | None = None) -> str:
        """The text without these secrets; `decoded`: the text's _unescaped form, when the caller has it; `budget`:
        the hits it may take (see Budget)."""
        if self.literal is None:
            return text
        if self.disguised is not None and (_has_escapes(text) or _has_unseen(text)):
            plain = _unescaped(text) if decoded is None else decoded
            decoded = _without_unseen(plain)  # raw or escaped, a control or invisible character splits no secret
            # Where the decoded text's characters start in the text, only for a text that does hold a run of a secret.
            if decoded != text and (spans := self.disguised.spans(decoded, budget)) != []:
                if spans is None:  # escaped text dense with a secret's pieces (hostile): nothing of it is shown
                    return REDACTED
                mapped, at = _unescaped_at(text, decoded is not plain and decoded != plain)
                if mapped != decoded:  # (the same decoding: found again only if it ever differed)
                    spans = self.disguised.spans(mapped, budget)
                    if spans is None:
                        return REDACTED
                text = _redacted_spans(text, _merged([(at[a], at[e]) for a, e in spans]))
        # One pass of the automaton: cheap when (as almost always) no piece of a secret is there.
        spans = self.literal.spans(text, budget)
        if spans is None:
            return text if budget is not None and budget.lazy else self.literal.blunt(text)
        return _redacted_spans(text, spans) if spans else text


# The matchers of the latest users' own credentials, kept for their next connections: at most this many sets, of at
# most this many characters in all. A matcher takes ~650 bytes of memory per character of its secrets (their forms:
# escaped, URL-encoded, base64), ~5 MB for a set of 8,000 (the proxy records up to MAX_RECORDED_CREDENTIALS): kept by
# count alone, 256 users' sets of 8 KB cookies held ~1.4 GB of the proxy's memory after their connections closed.
OWN_CACHED = 256
OWN_CACHED_CHARS = 64 * 1024
_own_lock = threading.Lock()
_own: OrderedDict[tuple[str, ...], Secrets] = OrderedDict()
_own_chars = 0


def secrets_of(secrets: tuple[str, ...]) -> Secrets:
    """The matchers of a connection's own credentials (the proxy's users'), compiled once per distinct set while the
    cache has room (OWN_CACHED, OWN_CACHED_CHARS: the least recently used set goes first)."""
    global _own_chars
    with _own_lock:
        if (cached := _own.get(secrets)) is not None:
            _own.move_to_end(secrets)
            return cached
    matcher = Secrets(secrets)
    size = sum(len(s) for s in secrets)
    if size > OWN_CACHED_CHARS:
        return matcher
    with _own_lock:
        if secrets not in _own:
            _own[secrets] = matcher
            _own_chars += size
        while len(_own) > OWN_CACHED or _own_chars > OWN_CACHED_CHARS:
            _own_chars -= sum(len(s) for s in _own.popitem(last=False)[0])
    return matcher


def own_cached_chars() -> int:
    """The characters of the secrets whose matchers secrets_of keeps (tests)."""
    with _own_lock:
        return _own_chars


# Every user's credentials the proxy has seen (each connection's, credentials_of), scrubbed by scrub() from every
# output of the process, not only from their own connection's recording: an upstream that echoes user A's token on
# user B's connection (a shared cache, a server mixing sessions) put A's token in clear in B's recording.
#
# Indexed as the minted JWTs' signatures are (_minted_sigs), nothing compiled: each credential held by every piece of
# _SEEN_PIECE characters it has (at every offset), a dict from piece to the credential(s) holding it; a text is looked
# up once every _SEEN_PIECE characters (its pieces at 0, 8, 16…, cut in one C call), and a piece found is followed
# left and right while the text goes on as the credential does there. Holding a user costs one dict insert per
# character of its credentials; scrubbing a text, len/_SEEN_PIECE lookups whatever the number of users held (and a
# little work per piece found, within the text's Budget). Pieces of 8, not 4: a 1 KB event cost ~16 µs more to scrub
# with users held, not ~46 (bench/scrub.py --users 0,1500), at the price of the shortest credentials (below).
#
# What is caught, in every text scrub() sees (a recorded frame, a close reason, an error, a log line): any run of at
# least 2 * _SEEN_PIECE - 1 (15) characters of a held credential that mixes two of lower case, upper case and digits,
# the whole credential included (a shorter run is caught where it holds a piece that starts at a multiple of
# _SEEN_PIECE, and is at least MIN_RUN long), as it stands or as scrub() decodes the text (its JSON escapes however
# often their backslash is doubled, its %-escapes, the characters of _UNSEEN dropped: `\u0041bc…`, `abc%2Bdef`, a
# `\"` inside it). A credential is held only from SEEN_MIN_LEN characters and when it reads as a token (one word,
# mixing two of those classes), so it is always found whole.
# Any client chooses its credentials, and the pool scrubs them from every user's text: a run that does not mix (a
# word, `agent_completed`, `TEXT_MESSAGE_CONTENT`) is never redacted from a text, not even bluntly past its budget,
# and a credential that reads as words or holds a space is not held, so that a hostile user cannot have another
# user's recorded event types, ids or words redacted (its recording judged otherwise by `check` than live). What it
# still can: a run that mixes and that it guesses in another user's text (a date and hour, a sequential id).
# What is not caught: a credential shorter than SEEN_MIN_LEN (a short Basic password: scrubbed from its own
# connection only), one that reads as words or repeats a piece (a passphrase: alike), a run of a held one that does
# not mix, a run whose pieces are each held by more than _SEEN_SHARED credentials,
# a fragment shorter than 15 characters (the last 7 characters of another user's token), a credential inside base64
# text (a registered secret's base64 forms are matched, a held credential's are not: an echoed `Basic` header is caught
# by its credential, held as sent), one in another case or as hex (a registered secret's and a connection's own are
# matched so: _Runs; the pool's dict of exact pieces is not), a credential past the pool's bound (forgotten: see
# below). Of a JWT only its signature is held: its header and payload are caught by their `eyJ` shape wherever they
# are.
_SEEN_PIECE = 8
SEEN_MIN_LEN = 2 * _SEEN_PIECE - 1  # found whole
_SEEN_PIECES = _Lazy("(?s)" + "." * _SEEN_PIECE)
# A piece held by more credentials than this is not followed (nor redacted bluntly): no random token shares a piece
# of 8 with another, a hostile client's made-up ones do (a thousand `agent_co…`), and each holder of a piece found in
# a text is a hit: every user's frame spent its budget on them.
_SEEN_SHARED = 8
# The pool's memory, bounded: past it the least recently seen credential whose connections have all closed is
# forgotten first, then the one of the oldest connection still open; and one client address's share of it (see
# SEEN_SHARE): past that, its own least recently seen credential. A forgotten credential is still scrubbed from its
# own connection's frames (the connection's own secrets, secrets_of) and caught by its shape where it has one (a JWT,
# `Bearer …`), but an echo of it on another user's connection no longer is; `forgotten` counts them (the proxy warns).
# A credential counts what holding it takes in memory at most (_seen_cost: its pieces' keys and dict slots): 6,052
# bytes for an opaque 43-character token (~3.5 KB measured with tracemalloc: tests/harness/test_seen_credentials.py
# holds the measure to the bound), so 16 MiB holds ~2,770 of them, ~10 MB in fact.
MAX_SEEN_BYTES = 16 * 1024 * 1024
# One client address's share of the pool, at most (the proxy gives the share of connections an address may hold:
# --max-connections-per-ip over --max-connections, a tenth by default): past
# it, its own least recently seen credentials are forgotten, never another address's. Without it a client of 15
# connections, each with 8 KB of made-up cookies, pushed every other user's credentials out of the pool, those of
# connections still open included: one of theirs echoed on a third user's connection went into its recording.
SEEN_SHARE = 10
# A dict's share of memory for each str key it holds, at most: 16-byte entries (a table of str keys) and 4-byte
# indices, the table just grown (a third of it used): 88 bytes (32 to 77 measured, under churn too).
_DICT_SLOT_BYTES = 88
# What the pool keeps of a credential besides its pieces (its place in the recency order and its holding, its run
# length): ~230 bytes measured with tracemalloc, 320 with the dicts' tables just grown.
_SEEN_ENTRY_BYTES = 320


def _seen_cost(credential: str) -> int:
    """The memory holding a credential takes (an upper bound): the credential, a dict key and slot per piece, and its
    entries in the pool's order."""
    pieces = len(credential) - _SEEN_PIECE + 1
    widest = sys.getsizeof(max(credential) * _SEEN_PIECE)  # a piece of its widest characters (a str's kind)
    return sys.getsizeof(credential) + pieces * (widest + _DICT_SLOT_BYTES) + _SEEN_ENTRY_BYTES


class SeenCredentials:
    """The credentials of the users a process has seen (the proxy's), matched by scrub() in every text as soon as they
    are held (see above for what is and is not caught), bounded in memory (max_bytes: the least recently seen
    forgotten first, those of closed connections before those of open ones; one client address's own past its
    SEEN_SHARE). `hold` a connection's credentials as it opens, `release` what hold returned as it closes."""

    def __init__(self, max_bytes: int = MAX_SEEN_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        # piece -> the credential holding it, or the credentials (several hold it): what scrub() reads, unlocked
        # (each change is one dict operation; a credential is indexed whole before hold() returns).
        self._index: dict[str, str | tuple[str, ...]] = {}
        self._runs: dict[str, int] = {}  # credential held -> the shortest run of it redacted
        # Credentials with connections open: how many, and which holding (a credential forgotten and held again is
        # another holding: the older connection's close does not count down the new one's), least recently seen first.
        self._open: OrderedDict[str, list[int]] = OrderedDict()
        self._closed: OrderedDict[str, None] = OrderedDict()  # credentials whose connections all closed, oldest first
        self._holding = 0
        self._bytes = 0
        # Who pays for each credential (the client address that held it first, `hold`'s owner), what each pays, and
        # its credentials, least recently seen first (held by any owner).
        self._owner: dict[str, str] = {}
        self._owned: dict[str, OrderedDict[str, None]] = {}
        self._owner_bytes: dict[str, int] = {}
        self.forgotten = 0  # credentials forgotten past max_bytes
        self.unheld = 0  # credentials not held: one alone past max_bytes

    @staticmethod
    def pooled(credentials: Iterable[str]) -> tuple[str, ...]:
        """What is held of a connection's credentials: each one but a scheme's credential whole (`Bearer X`, `jwt.X`:
        X is, and its runs are redacted wherever they stand), and of a JWT its signature alone (its header and payload
        are caught by their shape wherever they are echoed: eyJ…, as text, escaped or inside base64; the signature is
        not). Each at least SEEN_MIN_LEN characters, one word, mixing two of lower case, upper case and digits.
        Linear in their length."""
        creds = {c.strip() for c in credentials if isinstance(c, str) and len(c.strip()) >= SEEN_MIN_LEN}
        held: list[str] = []
        # Only what reads as a token: one word (no whitespace) mixing two of lower case, upper case and digits. Any
        # client chooses its credentials, and the pool scrubs them from every user's recording: a cookie of
        # `Xagent_completed_partial_result` made another user's recorded `agent_completed` a `[REDACTED]` type, a
        # chat `check` failed (R12) that passed live. (What is not held is still scrubbed from its own connection.)
        creds = {c for c in creds if _mixes(c) >= 2 and len(c.split()) == 1}
        # Nor one that repeats a piece of its own (no random token does): each place a piece is found costs a hit per
        # time its credential holds it, and one cookie of `Q0agent_co…` repeated 140 times made every user's 1 KB
        # frame spend its whole budget, ~6 ms each (41 µs with 1,500 users' tokens held).
        creds = {c for c in creds if len({c[i:i + _SEEN_PIECE] for i in range(len(c) - _SEEN_PIECE + 1)})
                 == len(c) - _SEEN_PIECE + 1}
        for c in sorted(creds):
            if (m := _SCHEME_PREFIX.compiled.match(c)) is not None and c[m.end():] in creds:
                continue
            parts = c.split(".")
            if len(parts) == 3 and parts[0].startswith("eyJ") and parts[1].startswith("eyJ"):
                if len(parts[2]) >= SEEN_MIN_LEN:
                    held.append(parts[2])
                continue
            held.append(c)
        return tuple(dict.fromkeys(held))

    def hold(self, credentials: Iterable[str], owner: str | None = None,
             share: float = 1 / SEEN_SHARE) -> tuple[tuple[str, int], ...]:
        """A connection's credentials held: matched by scrub() from now on. Returns what to `release` as it closes.
        `owner`: the client address it came from (the proxy's limit_key), which may hold at most `share` of the pool
        (its own least recently seen credentials forgotten past that: the proxy gives its connections' share, one
        address's cap over the whole); None: no share (one user's tests)."""
        own = int(self.max_bytes * min(1.0, share))
        creds = self.pooled(credentials)
        out = []
        with self._lock:
            for c in creds:
                if (payer := self._owner.get(c)) is not None:
                    self._owned[payer].move_to_end(c)
                if (holding := self._open.get(c)) is not None:
                    holding[0] += 1
                    self._open.move_to_end(c)  # the most recently seen now
                    out.append((c, holding[1]))
                    continue
                if c not in self._closed:
                    cost = _seen_cost(c)
                    if cost > self.max_bytes or (owner is not None and cost > own):
                        self.unheld += 1
                        continue
                    self._bytes += cost
                    self._add(c)
                    if owner is not None:
                        self._owner[c] = owner
                        self._owned.setdefault(owner, OrderedDict())[c] = None
                        self._owner_bytes[owner] = self._owner_bytes.get(owner, 0) + cost
                else:
                    del self._closed[c]
                self._holding += 1
                self._open[c] = [1, self._holding]
                out.append((c, self._holding))
                if owner is not None:
                    self._evict_own(owner, own, keep=c)
                self._evict(keep=c)
        return tuple(out)

    def release(self, held: Iterable[tuple[str, int]]) -> None:
        """A connection that held these closed: each one whose connections are all closed goes to the closed ones
        (forgotten first past the bound), the most recently seen of them."""
        with self._lock:
            for c, holding in held:
                entry = self._open.get(c)
                if entry is None or entry[1] != holding:
                    continue  # forgotten since (and maybe held again by another connection)
                entry[0] -= 1
                if entry[0] <= 0:
                    del self._open[c]
                    self._closed[c] = None

    def _evict(self, keep: str) -> None:
        while self._bytes > self.max_bytes:
            if self._closed:
                c = next(iter(self._closed))
            else:
                c = next(iter(self._open))
                if c == keep:  # (fits alone: cost <= max_bytes)
                    return
            self._forget(c)

    def _evict_own(self, owner: str, share: int, keep: str) -> None:
        """The owner's least recently seen credentials forgotten while it holds more than its share (bytes)."""
        owned = self._owned.get(owner)
        while owned and self._owner_bytes.get(owner, 0) > share:
            c = next(iter(owned))
            if c == keep:  # (fits alone: cost <= share)
                return
            self._forget(c)
            owned = self._owned.get(owner)

    def _forget(self, c: str) -> None:
        self._open.pop(c, None)
        self._closed.pop(c, None)
        self._remove(c)
        cost = _seen_cost(c)
        self._bytes -= cost
        if (owner := self._owner.pop(c, None)) is not None:
            owned = self._owned[owner]
            del owned[c]
            self._owner_bytes[owner] -= cost
            if not owned:
                del self._owned[owner], self._owner_bytes[owner]
        self.forgotten += 1

    def _add(self, c: str) -> None:
        self._runs[c] = min(len(c), MIN_RUN if _mixes(c) >= 2 else MIN_RUN_WORDS)
        index = self._index
        for i in range(len(c) - _SEEN_PIECE + 1):
            piece = c[i:i + _SEEN_PIECE]
            held = index.get(piece)
            if held is None:
                index[piece] = c
            elif isinstance(held, str):
                if held != c:  # (a piece twice in one credential: held once)
                    index[piece] = (held, c)
            elif c not in held:
                index[piece] = (*held, c)

    def _remove(self, c: str) -> None:
        del self._runs[c]
        index = self._index
        for i in range(len(c) - _SEEN_PIECE + 1):
            piece = c[i:i + _SEEN_PIECE]
            held = index.get(piece)
            if held is None:
                continue
            if isinstance(held, str):
                if held == c:
                    del index[piece]
            elif c in held:
                rest = tuple(h for h in held if h != c)
                index[piece] = rest[0] if len(rest) == 1 else rest

    def held(self) -> set[str]:
        """The credentials held now (tests)."""
        with self._lock:
            return set(self._open) | set(self._closed)

    def held_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def spans(self, text: str, budget: Budget) -> list[tuple[int, int]] | None:
        """The [start, end) of each run of a held credential in the text (see above), merged; None past `budget` (as
        _Runs.spans: a piece found is a hit, a hit the text went on from a grown one)."""
        index = self._index
        if not index or len(text) < SEEN_MIN_LEN:
            return []
        pieces = _SEEN_PIECES.compiled.findall(text)
        if index.keys().isdisjoint(pieces):  # (in C: nearly every text)
            return []
        # Where the pieces found are (in C too): a piece of a random 43-character token is in ordinary text now and
        # then (a 4-letter piece of one in 250 is all lower case), at about one place a KB with 1,500 tokens held.
        places = list(compress(range(0, len(pieces) * _SEEN_PIECE, _SEEN_PIECE), map(index.__contains__, pieces)))
        found: list[tuple[int, int]] = []
        run_of = self._runs
        hits, grown = budget.hits, budget.grown
        reach: dict[tuple[str, int], int] = {}  # (credential, where it starts in the text) -> where its run ends
        for at in places:
            piece = text[at:at + _SEEN_PIECE]
            held = index.get(piece)
            if held is None or (held.__class__ is tuple and len(held) > _SEEN_SHARED):
                continue
            for c in (held,) if isinstance(held, str) else held:
                off = c.find(piece)
                while off >= 0:
                    hits -= 1
                    if hits < 0:
                        budget.hits = -1
                        return None
                    key = (c, at - off)
                    if reach.get(key, -1) < at + _SEEN_PIECE:
                        start, end = _grown(text, at, at + _SEEN_PIECE, c, off, off + _SEEN_PIECE)
                        reach[key] = end
                        if end - start > _SEEN_PIECE:
                            grown -= 1
                            if grown < 0:
                                budget.grown = -1
                                return None
                        if end - start >= run_of.get(c, len(c)) and _mixes(text[start:end]) >= 2:
                            found.append((start, end))
                    off = c.find(piece, off + 1)
        budget.hits, budget.grown = hits, grown
        return _merged(found) if found else []

    def blunt(self, text: str) -> str:
        """A text too dense with held pieces to follow each: every piece looked up and found that mixes two of lower
        case, upper case and digits redacted as it stands (side by side, one [REDACTED]), which cuts every run of every
        credential held as surely where such a piece of it stands, less exactly. A piece that does not mix is left:
        a client holding a credential of repeated words (each found piece hundreds of hits) spent every frame's
        budget, and its words were redacted from every user's frame."""
        index = self._index
        out: list[str] = []
        i = 0
        for k, piece in enumerate(_SEEN_PIECES.compiled.findall(text)):
            held = index.get(piece)
            if held is not None and (held.__class__ is str or len(held) <= _SEEN_SHARED) and _mixes(piece) >= 2:
                start = k * _SEEN_PIECE
                if start > i or not out:
                    out += [text[i:start], REDACTED]
                i = start + _SEEN_PIECE
        out.append(text[i:])
        return "".join(out)

    def sub(self, text: str, decoded: str | None = None, budget: Budget | None = None,
            also: Secrets | None = None) -> str:
        """The text without any held credential's runs, nor `also`'s secrets (a connection's own), found in the same
        pass as Secrets.sub finds them, as the text stands and as its escapes decode, and redacted at once (one
        redaction before the other made the second decode the text again, the redactions cutting its escape runs);
        `decoded`: the text's _unescaped form, when the caller has it; `budget`: see Budget."""
        if also is not None and also.literal is None:
            also = None
        if not self._index:
            return also.sub(text, decoded, budget) if also is not None else text
        if budget is None:
            budget = Budget(len(text))
        if _has_escapes(text) or _has_unseen(text):
            plain = _unescaped(text) if decoded is None else decoded
            decoded = _without_unseen(plain)
            if decoded != text and (spans := self._spans_with(also, decoded, budget, disguised=True)) != []:
                if spans is None:
                    return REDACTED
                mapped, at = _unescaped_at(text, decoded is not plain and decoded != plain)
                if mapped != decoded:
                    spans = self._spans_with(also, mapped, budget, disguised=True)
                    if spans is None:
                        return REDACTED
                text = _redacted_spans(text, _merged([(at[a], at[e]) for a, e in spans]))
        spans = self._spans_with(also, text, budget, disguised=False)
        if spans is None:
            if budget.lazy:
                return text
            if also is not None and also.literal is not None:
                text = also.literal.blunt(text)
            return self.blunt(text)
        return _redacted_spans(text, spans) if spans else text

    def _spans_with(self, also: Secrets | None, text: str, budget: Budget, *, disguised: bool
                    ) -> list[tuple[int, int]] | None:
        """The held credentials' runs in the text and those of `also`'s forms (its disguised ones, in a decoded
        text), merged; None past the budget."""
        found = self.spans(text, budget)
        if found is None:
            return None
        runs = None if also is None else also.disguised if disguised else also.literal
        if runs is not None:
            more = runs.spans(text, budget)
            if more is None:
                return None
            if more:
                found = _merged(found + more)
        return found


# A scheme before a credential (`Bearer X`, `jwt.X`): X alone is held.
_SCHEME_PREFIX = _Lazy(r"[A-Za-z][A-Za-z0-9_-]*\s+|jwt\.", re.IGNORECASE)
_seen = SeenCredentials()


def seen_credentials() -> SeenCredentials:
    """The process's pool of its users' credentials (the proxy's), that scrub() matches in every text."""
    return _seen


class SecretsFull(ConfigError):
    """A secret that would take the registry past MAX_SECRETS or MAX_SECRET_BYTES: refused, so the caller stops
    before anything that could echo it is read or shown (exit 2)."""


def register(secret: str | None, *, minted: bool = False) -> None:
    """Remember a secret the process holds, so that no output shows it (nor its URL-, JSON- or base64-encoded
    form). Raises SecretsFull for a secret (not minted) past the process's bounds: nothing is registered then."""
    global _dirty, _minted_dirty, _fixed_bytes
    if not isinstance(secret, str) or len(secret.strip()) < MIN_SECRET_LEN:
        return
    with _lock:
        if minted:
            # Minted tokens are JWTs: their disguised forms are caught by the JWT shape rules.
            if secret not in _minted:
                _index_signature(secret, add=True)
            _minted[secret] = (secret, quote(secret, safe=""), json.dumps(secret)[1:-1])
            _minted.move_to_end(secret)
            while len(_minted) > MAX_MINTED:
                _index_signature(_minted.popitem(last=False)[0], add=False)
            _minted_dirty = True
        elif secret not in _fixed:
            size = len(secret.encode("utf-8", "surrogatepass"))
            if len(_fixed) >= MAX_SECRETS or _fixed_bytes + size > MAX_SECRET_BYTES:
                raise SecretsFull(f"{len(_fixed):,} secrets of {_fixed_bytes:,} bytes are registered already, and one "
                                  f"of {size:,} bytes more would pass the bound of {MAX_SECRETS:,} secrets and "
                                  f"{MAX_SECRET_BYTES:,} bytes one process holds")
            _fixed.add(secret)
            _fixed_bytes += size
            _dirty = True


def registered() -> tuple[int, int]:
    """How many secrets (not minted) the process holds, and their UTF-8 bytes."""
    with _lock:
        return len(_fixed), _fixed_bytes


def _signature(token: str) -> str | None:
    """A JWT's signature, when it is long enough to be found by its pieces (HS256's 43 characters, or more)."""
    parts = token.split(".")
    return parts[2] if len(parts) == 3 and len(parts[2]) >= 2 * _SIG_PIECE - 1 else None


def _index_signature(token: str, *, add: bool) -> None:
    if (sig := _signature(token)) is None:
        return
    for i in range(len(sig) - _SIG_PIECE + 1):
        if add:
            _minted_sigs[sig[i:i + _SIG_PIECE]] = (sig, i)
        elif _minted_sigs.get(sig[i:i + _SIG_PIECE], ("", 0))[0] == sig:
            del _minted_sigs[sig[i:i + _SIG_PIECE]]


def _signature_spans(text: str) -> list[tuple[int, int]]:
    """Where the signature of a minted JWT the registry holds is in the text."""
    spans = []
    for i in range(0, len(text) - _SIG_PIECE + 1, _SIG_PIECE):
        if (hit := _minted_sigs.get(text[i:i + _SIG_PIECE])) is not None:
            sig, at = hit
            start = i - at
            if start >= 0 and text.startswith(sig, start):
                spans.append((start, start + len(sig)))
    return spans


def _redact_signatures(text: str) -> str:
    """The text without the signature of any minted JWT the registry holds."""
    spans = _signature_spans(text)
    return _redacted_spans(text, _merged(spans)) if spans else text


def _redact_referenced_jwts(text: str) -> str:
    """The text without any JWT, nor a minted one's signature, written as HTML numeric character references (in part
    or whole: `&#101;&#121;&#74;…`): found in the text decoded, redacted where their references stand. (JSON and
    %-escapes are _JWT_DISGUISED_RE's.)"""
    mapped, at = _unescaped_at(text)
    spans = [m.span() for m in _JWT_RE.compiled.finditer(mapped)] if "eyJ" in mapped else []
    if _minted_sigs:
        spans += _signature_spans(mapped)
    return _redacted_spans(text, _merged([(at[a], at[e]) for a, e in spans])) if spans else text


# A run of hex digits, from a JWT's "eyJ" in hex (65794a, either case) on.
# A JWT in hex (either case): its "eyJ" (65794a), 8 bytes of the base64url alphabet (as _JWT_RE), and the rest of
# the run of hex digits. Each byte told by its own two digits: a "65794a" that goes on otherwise (a key named
# `keyJar`) fails within 22 digits and the search goes on from its next digit, where a JWT may start.
_HEX_JWT_RE = _Lazy("(?i)65794a(?:2d|3[0-9]|4[1-9a-f]|5[0-9af]|6[1-9a-f]|7[0-9a]){8}[0-9a-f]*")


def _redact_hex_jwts(text: str) -> str:
    """The text without any JWT written as the hex of its bytes (a debug dump of a request, Go's `%x`): from its
    "65794a" to the end of its run of hex digits."""
    return _HEX_JWT_RE.compiled.sub(REDACTED, text)


def forget_all() -> None:
    """Drop every registered secret (tests; a process that reloads its credentials)."""
    global _dirty, _minted_dirty, _fixed_bytes
    with _lock:
        _fixed.clear()
        _fixed_bytes = 0
        _minted.clear()
        _minted_sigs.clear()
        _dirty = _minted_dirty = True


def _alternation(items: set[str]) -> re.Pattern[str] | None:
    if not items:
        return None
    # Longest first, so a secret that contains another is replaced whole.
    pattern = re.compile("|".join(re.escape(s) for s in sorted(items, key=len, reverse=True)))
    # re keeps every pattern it compiles in its cache (512 of them), and this one is made anew from the tokens minted
    # meanwhile, up to once a second (~1 MB for MAX_MINTED of them): a run minting a token per user and scrubbing as it
    # goes (--record) grew by a megabyte a second. Emptied, the cache holds none of them; the pattern is ours alone.
    re.purge()
    return pattern


def _patterns() -> tuple[Secrets | None, re.Pattern[str] | None]:
    global _fixed_matcher, _minted_re, _dirty, _minted_dirty, _minted_compiled_at
    # Compiled lazily: tokens are minted per connection, outputs are written far less often; a thousand minted
    # tokens take ~0.1 s to compile, so a live view redrawn 4 times a second never recompiles more than once a
    # second (until then the JWT shape rule redacts a new token just as well).
    if _dirty or (_minted_dirty and time.monotonic() - _minted_compiled_at >= 1.0):
        with _lock:
            if _dirty:
                _fixed_matcher = Secrets(_fixed) if _fixed else None
                _dirty = False
            if _minted_dirty:
                _minted_re = _alternation({form for forms in _minted.values() for form in forms})
                _minted_dirty = False
                _minted_compiled_at = time.monotonic()
    return _fixed_matcher, _minted_re


def _end(pattern: re.Pattern[str], text: str, at: int) -> int:
    """Where `pattern` (one that matches the empty string too) ends, matched at `at`."""
    m = pattern.match(text, at)
    return m.end() if m is not None else at


def _redact_base64_runs(text: str) -> str:
    """The text with each base64 run (a _B64_RUN_RE match) that holds a JWT redacted whole (_redact_base64_run):
    only the runs holding one of _B64_JWT_MARKS can, and only those are taken out, each from its start (found in the
    text reversed, once) to its end, at C speed."""
    pieces: list[str] = []
    done, n, backwards = 0, len(text), ""
    for m in _B64_MARK_RE.compiled.finditer(text):
        at = m.start()
        if at < done:  # in the run just looked at
            continue
        if not backwards:
            backwards = text[::-1]
        start = n - _end(_B64_CHARS_RE.compiled, backwards, n - at)
        end = _end(_B64_CHARS_RE.compiled, text, at)
        if end - start < _B64_MIN_RUN:
            continue
        end = _end(_B64_PAD_RE.compiled, text, end)
        pieces += [text[done:start], _redact_base64_run(text[start:end])]
        done = end
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


def _redact_base64_run(run: str) -> str:
    run_std = run.rstrip("=").replace("-", "+").replace("_", "/")
    for offset in range(4):
        chunk = run_std[offset:]
        chunk = chunk[: len(chunk) - len(chunk) % 4]
        try:
            decoded = binascii.a2b_base64(chunk).decode("latin-1")
        except binascii.Error:
            continue
        if "eyJ" in decoded and _JWT_RE.compiled.search(decoded):
            return REDACTED
    return run


def _key_value_end(text: str, start: int, end: int) -> tuple[int, int] | None:
    """Where the value of the credential key whose name is at [start, end) is: (its start, its end),
    or None when the name is not such a key's (inside a longer word, a key not quoted as it opened, no separator, a
    quoted key's value not a string, an empty value, a cookie key's value that is no cookie)."""
    if end < len(text) and text[end] in _KEY_CHARS:  # `password_hint`, `passwordless`
        return None
    key_start = start
    while key_start > 0 and text[key_start - 1] in _KEY_CHARS:
        key_start -= 1
        if start - key_start > _KEY_PREFIX_MAX:
            return None
    if key_start < start:  # a prefix ends in `-`, `_` or a change from lower to upper case (`x-api-key`, `newPassword`)
        last = text[start - 1]
        if last not in "-_" and not ((last.islower() or last.isdigit()) and text[start].isupper()):
            return None
    # The key's quote (escaped or not: JSON inside a JSON string), when it has one and it closes after the name.
    quote_at = key_start - 1
    quote = text[quote_at] if quote_at >= 0 and text[quote_at] in "\"'" else ""
    while quote and quote_at > 0 and text[quote_at - 1] == "\\" and key_start - quote_at < 64:
        quote_at -= 1
    quote = text[quote_at:key_start] if quote else ""
    quoted = bool(quote) and text.startswith(quote, end)
    at = end + len(quote) if quoted else end
    sep = (_QUOTED_KEY_SEP_RE if quoted else _KEY_SEP_RE).compiled.match(text, at)
    if sep is None:
        return None
    at = opening = sep.end()
    while at < len(text) and text[at] == "\\" and at - opening < 64:  # the value's quote may be escaped as the key's
        at += 1
    if at < len(text) and text[at] in "\"'":
        at += 1
        pattern = _QUOTED_VALUE_RES[text[at - 1], at - 1 > opening]
    elif quoted:  # a JSON number, true, null, an object: not a string, not ours to change
        return None
    else:
        at = opening
        pattern = _LINE_VALUE_RE if "=" not in sep.group(0) else _PAIR_VALUE_RE
    # "cookie" is also a word (`my favourite cookie: oatmeal`): a cookie header reads `name=value`. Told before the
    # value is read to its end: a value not taken is not read again and again (a line of a million "cookie: x").
    if (text[start:end].lower().replace("-", "").replace("_", "") in _COOKIE_KEYS
            and _COOKIE_VALUE_RE.compiled.match(text, at) is None):
        return None
    value_end = _end(pattern.compiled, text, at)
    value = text[at:value_end]
    # Blank, or of no letter or digit (`...`, `***`, a message's own elision): no credential, left as written.
    if value == REDACTED or not any(c.isalnum() for c in value):
        return None
    return at, value_end


class _Marks:
    """What scrub()'s case-insensitive rules look for, found in one pass of an Aho-Corasick automaton over the text
    lowered (built on first use): each spelling of each credential key (CREDENTIAL_KEYS, with `-`, `_` or nothing
    between its words), "basic" (a Basic credential without its header), "private key-----" (a PEM private key),
    "earer", "thoriz" and "jwt." (a bearer credential, an Authorization header's, a `jwt.` subprotocol's), "65794a"
    (a JWT's "eyJ" in hex: _redact_hex_jwts). One pass
    costs about 6 substring tests (~6 ns a byte): a test per spelling was ~130 ns each on a 164-byte frame, and a
    case-insensitive pattern of the keys ~50 µs on 322 bytes."""

    automaton: ahocorasick.Automaton | None = None

    @classmethod
    def get(cls) -> ahocorasick.Automaton:
        automaton = cls.automaton
        if automaton is None:  # two threads may both build it: the same automaton either way
            automaton = ahocorasick.Automaton()
            for key in CREDENTIAL_KEYS:
                first, *rest = key.split("_")
                for seps in product(("", "-", "_"), repeat=len(rest)):
                    spelling = first + "".join(sep + word for sep, word in zip(seps, rest, strict=True))
                    automaton.add_word(spelling, ("key", len(spelling)))
            for word, kind in (("basic", "basic"), ("private key-----", "pem"), ("earer", "bearer"),
                               ("thoriz", "authorization"), ("jwt.", "jwt"), ("65794a", "hexjwt")):
                automaton.add_word(word, (kind, len(word)))
            automaton.make_automaton()
            cls.automaton = automaton
        return automaton


def _credential_marks(low: str) -> set[str]:
    """Which of _Marks' kinds the text (lowered) holds."""
    return {kind for _, (kind, _) in _Marks.get().iter(low)}


def _credential_keys_at(text: str) -> Iterable[tuple[int, int]]:
    """Where a credential key's name may be in the text: [start, end), leftmost-longest, not overlapping."""
    low = text.lower()
    if len(low) != len(text):  # a character that lowers to two: the automaton's places are not the text's
        return (m.span() for m in _KEY_NAME_RE.compiled.finditer(text))
    return ((last + 1 - size, last + 1) for last, (kind, size) in _Marks.get().iter_long(low) if kind == "key")


def _redact_credential_keys(text: str) -> str:
    """The text with the value of each credential key (CREDENTIAL_KEYS) redacted: each name found once, and each value
    taken out once (a name inside a value redacted is not looked at): linear in the text."""
    spans: list[tuple[int, int]] = []
    done = 0
    for start, end in _credential_keys_at(text):
        if start < done:
            continue
        if (value := _key_value_end(text, start, end)) is not None:
            spans.append(value)
            done = value[1]
    return _redacted_spans(text, spans) if spans else text


def _redact_credential_shapes(text: str, marks: set[str], given: str, decoded: str) -> str:
    """scrub()'s rules for the credentials no registry knows: a credential key's value (_redact_credential_keys), a
    Basic credential without its header, a PEM private key's body. `marks`: the text's (_credential_marks); `decoded`:
    what the text it was given (`given`) reads as, its escapes decoded. A key spelled with escapes (`pass\\u0077ord`) is
    found in the text decoded: then the text is shown decoded, the value redacted."""
    if "basic" in marks:
        text = _BASIC_RE.compiled.sub(_basic_credential, text)
    if "pem" in marks:
        text = _redact_private_keys(text)
    spelled = ("\\u" in given or "%" in given) and decoded != given  # letters escaped may spell a key's name
    if "key" in marks:
        keyed = _redact_credential_keys(text)
        if keyed != text or not spelled:
            return keyed
    elif not spelled:
        return text
    if "key" not in _credential_marks(decoded.lower()):
        return text
    plain = _unescaped(text)
    keyed = _redact_credential_keys(plain)
    return keyed if keyed != plain else text


def _basic_credential(m: re.Match[str]) -> str:
    """A `Basic <base64>` credential without its header, redacted when it decodes to `user:password`."""
    try:
        pair = base64.b64decode(m.group(2), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return m.group(0)
    return m.group(1) + REDACTED if ":" in pair and pair.isprintable() else m.group(0)


def _redact_private_keys(text: str) -> str:
    """The text with the body of each PEM private key (from its BEGIN line to its END line, or to the text's end when it
    has none) redacted: each part of the text looked at once."""
    out: list[str] = []
    done = 0
    while (m := _PEM_BEGIN_RE.compiled.search(text, done)) is not None:
        end = text.find("-----END", m.end())
        out += [text[done:m.end()], REDACTED]
        if end < 0:
            return "".join(out)
        done = end
    out.append(text[done:])
    return "".join(out)


def credential_like(name: str, value: str) -> bool:
    """A URL parameter that carries a credential: a token-, key-, secret-like name (percent-encoded or not), or a
    value that reads as one."""
    return bool(value) and (_SENSITIVE_PARAM.compiled.search(unquote(name)) is not None or _opaque(value))


def plain_word(value: str) -> bool:
    """A value no credential looks like: one word of lower-case letters (`assistant`, `anonymous`), under 20."""
    return value.isalpha() and value.islower() and len(value) < 20


# A header named as a credential is (X-Api-Key, X-Auth-Token, Api-Key, X-Session-Token): by how its name ends, so
# that Content-Encoding, :authority or Sec-WebSocket-Key (a nonce) are not taken for one.
_CREDENTIAL_HEADER = _Lazy(r"(?i)(?:token|api[-_]?key|secret|password|session)$")


def query_credentials(url: str) -> list[tuple[str, str]]:
    """(as sent, decoded) values of a request's query parameters that carry a credential: a credential-like name
    or an opaque value, and never a plain word (`?session_type=assistant` made every "assistant" in a recording
    [REDACTED], AG-UI's roles with it). `&` and `;` separate them."""
    out = []
    for pair in re.split("[&;]", url.partition("?")[2].partition("#")[0]):
        name, _, raw = pair.partition("=")
        value = unquote_plus(raw)
        if credential_like(name, value) and not plain_word(value):
            out.append((raw, value))
    return out


def _basic_credentials(credential: str) -> list[str]:
    """What an HTTP Basic credential encodes (RFC 7617: base64 of `user:password`), as a server may echo it: the pair
    and the password (not a plain word: see plain_word); nothing when it does not decode."""
    try:
        pair = base64.b64decode(credential, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return []
    password = pair.partition(":")[2]
    return [pair] + ([password] if password and not plain_word(password) else [])


_JWT_SHAPE = _Lazy(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
MAX_ENCODED_JWT = 24 * 1024  # a 16 KiB JWT (harness.targets.MAX_JWT_CHARS) base64url-encoded


def subprotocol_jwt(value: str) -> str | None:
    """The JWT a `jwt.<base64url(JWT)>` subprotocol carries (docs/protocol.md's form for browsers, and what chatprobe's
    clients send with `--auth subprotocol`), decoded; None when `value` is no such encoding (a JWT as it is, among
    others)."""
    if "." in value or not 10 < len(value) <= MAX_ENCODED_JWT:
        return None
    try:
        decoded = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    return decoded if _JWT_SHAPE.compiled.fullmatch(decoded) else None


def credentials_of(headers: Iterable[tuple[str, str]], subprotocols: Iterable[str], url: str = "") -> tuple[str, ...]:
    """A connection's credentials as a server might echo them (the proxy's users', a HAR's requests): the
    Authorization value and its credential (for Basic, also the `user:password` it encodes and the password), each
    cookie's value (not a plain word, nor the Cookie header whole: `consent=accepted` made every "accepted"
    [REDACTED]), the value of a header named as a credential is
    (`X-Api-Key`, `X-Auth-Token`), a `jwt.<token>` subprotocol's token and the parts of any other subprotocol that
    read as a credential (`base64url.bearer.authorization.k8s.io.<token>`), and the values of the query parameters
    that carry one (`?access_token=`, a link's opaque `?t=`) and the URL's `user:password@`, as sent and decoded.
    Only what reads as a credential:
    a subprotocol's `messages` or a `?view=conversation` made secrets would erase those words from every recorded
    frame (and AG-UI's `messages` key with them)."""
    out: list[str] = []
    for k, v in headers:
        name = k.lower()
        if name in ("authorization", "proxy-authorization"):
            scheme, _, credential = v.strip().partition(" ")
            out += [v, credential.strip()]
            if scheme.lower() == "basic":
                out += _basic_credentials(credential.strip())
        elif name == "cookie":
            # Each cookie's value, never the header whole: any 8 characters of a registered secret are redacted,
            # and a browser's Cookie header holds words (`consent=accepted; theme=darkmode`) beside its session.
            out += [c for c in (c.partition("=")[2].strip() for c in v.split(";")) if not plain_word(c)]
        elif name == "set-cookie":
            out += [c for c in [v.partition(";")[0].partition("=")[2].strip()] if not plain_word(c)]
        elif _CREDENTIAL_HEADER.compiled.search(name) and not plain_word(v):
            out.append(v)
    for p in subprotocols:
        if p.lower().startswith("jwt."):
            out += [p, p[4:]]
            if (token := subprotocol_jwt(p[4:])) is not None:  # the token itself, as the server decodes it
                out.append(token)
            continue
        parts = [part for part in p.split(".") if credential_like("", part)]
        out += [p, *parts] if parts else []
    for raw, value in query_credentials(url):
        out += [raw, value]
    if userinfo := _USERINFO_RE.compiled.match(url):  # `wss://user:password@host/`: as sent, and decoded
        pair = url[len(userinfo.group(1)):userinfo.end() - 1]
        for form in dict.fromkeys((pair, unquote(pair))):
            password = form.partition(":")[2]
            out += [form] + ([password] if password and not plain_word(password) else [])
    # Shorter is no credential, and would redact common words; each form once.
    return tuple(dict.fromkeys(s for s in out if len(s) >= 8))


def _opaque(value: str) -> bool:
    return value != REDACTED and _OPAQUE_VALUE.compiled.fullmatch(value) is not None and _mixes(value) >= 2


def redact_url(url: str) -> str:
    """The URL without credentials: userinfo and the values of token-, key-, secret-, password-like query or
    fragment parameters become [REDACTED], and so does any value that reads as a credential (_OPAQUE_VALUE)."""
    out = _USERINFO_RE.compiled.sub(lambda m: m.group(1) + REDACTED + "@", url, count=1)
    scheme_end = out.find("://")
    cut = min((i for i in (out.find("?"), out.find("#"), out.find(";", scheme_end + 3 if scheme_end >= 0 else 0))
               if i >= 0), default=-1)
    if cut < 0:
        return out
    head, tail = out[:cut], out[cut:]

    def param(m: re.Match[str]) -> str:
        sep, name, value = m.groups()
        rest = ""
        if sep == ";" and "/" in value:  # a matrix parameter ends with its path segment: the path goes on after it
            value, rest = value.split("/", 1)
            rest = "/" + rest
        if credential_like(name, value):
            return f"{sep}{name}={REDACTED}{rest}"
        return m.group(0)

    if _ESCAPED_AMP_RE.compiled.search(tail) is None:
        return head + _PARAM_RE.compiled.sub(param, tail)
    # An `&` JSON-escaped (Go's encoding/json writes \u0026) or percent-encoded (a URL nested in a value): each
    # piece is a parameter of its own.
    first, *rest = _ESCAPED_AMP_RE.compiled.split(tail)
    pieces = [_PARAM_RE.compiled.sub(param, first)]
    for i in range(0, len(rest), 2):
        pieces += [rest[i], _PARAM_RE.compiled.sub(param, "&" + rest[i + 1])[1:]]
    return head + "".join(pieces)


def scrub(text: str, also: Secrets | None = None, budget: Budget | None = None) -> str:
    """The text with every registered secret, any JWT, any bearer credential, every URL's credentials, the value of
    any credential key (CREDENTIAL_KEYS), a Basic credential without its header and a PEM private key's body replaced
    by [REDACTED]; then `also`'s secrets (a connection's own credentials, secrets_of). Cheap when there is nothing to
    find (substring tests before any pattern runs). `budget`: the hits of secrets' pieces the text may take, shared
    with the other parts of its frame (see Budget)."""
    if not text:
        return text
    fixed, minted = _patterns()
    # Escapes decoded once, for both sets of secrets: what a secret or JWT disguised as \u0065yJ… or %65yJ… reads as.
    given = text
    # (Redacting never makes one: "[REDACTED]" neither starts nor ends with one's characters.)
    decoded = _unescaped(text) if _has_escapes(text) else text
    if fixed is not None:
        text = fixed.sub(text, decoded, budget)
    disguised_jwt = "eyJ" in decoded and decoded != text
    if "eyJ" in text or disguised_jwt:
        if minted is not None:
            text = minted.sub(REDACTED, text)
        if disguised_jwt:  # the whole disguised token first: the plain rule would cut it at its first plain "eyJ"
            text = _JWT_DISGUISED_RE.compiled.sub(REDACTED, text)
        text = _JWT_RE.compiled.sub(REDACTED, text)
    if _minted_sigs and len(text) >= 2 * _SIG_PIECE - 1:
        text = _redact_signatures(text)
    if "&" in given and _ENTITY_MARK in given and ("eyJ" in decoded or _minted_sigs):
        text = _redact_referenced_jwts(text)
    if "ZXlK" in text or "V5S" in text or "leU" in text:
        text = _redact_base64_runs(text)
    if "://" in text:
        text = _URL_RE.compiled.sub(lambda m: redact_url(m.group(0)), text)
    # These patterns ignore case, and so must their quick tests ("BeArEr x" is a bearer credential too): one lowered
    # copy, its marks found in one pass (_Marks).
    marks = _credential_marks(text.lower())
    if "bearer" in marks:
        text = _BEARER_RE.compiled.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    if "authorization" in marks:
        text = _AUTHZ_RE.compiled.sub(lambda m: m.group(1) + REDACTED, text)
    if "jwt" in marks:
        text = _SUBPROTOCOL_TOKEN_RE.compiled.sub(lambda m: m.group(1) + REDACTED, text)
    if "hexjwt" in marks:
        text = _redact_hex_jwts(text)
    if marks:
        text = _redact_credential_shapes(text, marks, given, decoded)
    elif ("\\u" in given or "%" in given) and decoded != given and "key" in _credential_marks(decoded.lower()):
        # a key's name spelled with escapes (only \u- and %-escapes spell letters)
        text = _redact_credential_shapes(text, marks, given, decoded)
    # The pattern's own prefixes (scrub sees every recorded frame, and "ew" alone is in most text).
    if "eyA" in text or "ewo" in text or "ew0K" in text or "ewk" in text:
        text = _JWS_OTHER_RE.compiled.sub(REDACTED, text)
    # Every user's credentials the process holds (SeenCredentials: the proxy's users'), another user's echoed on this
    # connection too (len/_SEEN_PIECE dict lookups whatever their number), with `also`'s in the same pass.
    seen = _seen
    if seen._index:
        text = seen.sub(text, decoded if text == given else None, budget, also)
    elif also is not None:
        text = also.sub(text, decoded if text == given else None, budget)
    return text


def _escape_char(m: re.Match[str]) -> str:
    c = ord(m.group(0))
    return f"\\x{c:02x}" if c <= 0xFF else f"\\u{c:04x}" if c <= 0xFFFF else f"\\U{c:08x}"


def printable(text: str) -> str:
    """The text with control characters, escape sequences, bidi overrides, lone surrogates and XML-forbidden
    characters shown as `\\x1b`, `\\u202e`…: one visible line, safe on a terminal and in XML 1.0."""
    if text.isprintable():  # none of the characters above is printable: the common case costs one C scan
        return text
    return _UNSAFE_RE.compiled.sub(_escape_char, text)


def clean(value: object, limit: int | None = None) -> str:
    """A value from the server (or anywhere) made fit to show: invisible format characters and variation selectors
    dropped, scrubbed, printable, at most `limit` characters. (scrub() itself drops nothing: the recorder scrubs a
    frame's raw text, where a character dropped could make an invalid frame valid.)"""
    text = value if isinstance(value, str) else str(value)
    # Neither is ASCII, no format character is printable: the common case costs one look at the string's kind, text
    # with "✓" or "→" two C scans.
    if not text.isascii() and (not text.isprintable() or _SELECTOR_RE.compiled.search(text)):
        text = _HIDDEN_RE.compiled.sub("", text)
    text = printable(scrub(text))
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}…(+{len(text) - limit} chars)"
    return text


# The loggers chatprobe's clients log on: httpx's (the SSE transport's), httpcore's under it and websockets' client
# (the WebSocket transport without picows, and the Locust user's). Each by its own name: a logger's filter is asked only
# for the records logged on that logger, never for its children's ("httpcore" itself logs nothing; httpcore.http11's
# DEBUG line holds each response's headers, a credential the server echoes among them), and websockets' DEBUG lines
# hold the upgrade request's headers (`Authorization: Bearer …`) and path.
CLIENT_LOGGERS = ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy",
                  "httpcore.socks", "websockets.client")


def scrub_record(record: logging.LogRecord) -> bool:
    """A log record's message cleaned in place (a logging filter: `logger.addFilter(scrub_record)`), as a report's
    text is (clean: a server's words reach these lines, websockets' DEBUG line of a close frame holds its reason as
    it came, escape sequences and all); one that cannot be formatted is dropped, never written raw."""
    try:
        said = record.getMessage()
    except Exception:  # (a record no handler could write either)
        return False
    record.msg, record.args = clean(said), None
    return True
