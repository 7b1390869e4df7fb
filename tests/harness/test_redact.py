"""harness/redact.py: what may leave the process (secrets, URL credentials, control characters)."""
from __future__ import annotations

import base64
import binascii
import contextlib
import html
import json
import re
import unicodedata
from importlib.resources import files
from urllib.parse import quote

import jwt
import pytest

from harness import redact
from harness.redact import REDACTED, clean, printable, redact_url, scrub


@pytest.fixture(autouse=True)
def fresh_registry():
    redact.forget_all()
    yield
    redact.forget_all()


@pytest.mark.parametrize(("url", "shown"), [
    ("wss://user:pa55@host:8443/ws", "wss://[REDACTED]@host:8443/ws"),
    ("wss://tok3n@host/ws", "wss://[REDACTED]@host/ws"),
    ("https://h/ws?token=abc&user=bob", "https://h/ws?token=[REDACTED]&user=bob"),
    ("https://h/cb#access_token=abc&state=x", "https://h/cb#access_token=[REDACTED]&state=x"),
    ("https://h/?api_key=1;apiKey=2&X-Amz-Signature=3&page=4",
     "https://h/?api_key=[REDACTED];apiKey=[REDACTED]&X-Amz-Signature=[REDACTED]&page=4"),
    ("https://h/ws?user=bob", "https://h/ws?user=bob"),
    # a value that reads as a credential, whatever its parameter is called
    ("wss://h/ws?t=8fK2qLz9Xw4mRt7B&v=2", "wss://h/ws?t=[REDACTED]&v=2"),
    ("wss://h/ws?ref=Ab3dEf6hIj9k#frag", "wss://h/ws?ref=[REDACTED]#frag"),
    ("wss://h/ws?x=3f9a0c7e5b1d2e4f6a8b", "wss://h/ws?x=[REDACTED]"),
    # an & JSON-escaped as Go writes it still separates parameters
    ("https://h/p?a=1\\u0026access_token=S3cr3tValue99\\u0026b=2", "https://h/p?a=1\\u0026access_token=[REDACTED]\\u0026b=2"),
    # a second ? (url + "?token="), a matrix parameter, a percent-encoded name
    ("https://h/a?x=1?access_token=Summer2024xyz", "https://h/a?x=1?access_token=[REDACTED]"),
    ("https://h/a?next=https://b/cb?token=hunter2hunter2", "https://h/a?next=https://b/cb?token=[REDACTED]"),
    ("https://h/app;jsessionid=0123456789ABCDEF", "https://h/app;jsessionid=[REDACTED]"),
    ("https://h/app;jsessionid=0123456789ABCDEF/x?view=1", "https://h/app;jsessionid=[REDACTED]/x?view=1"),
    ("https://h/a?next=a:b%26token=secret-value-here%26v=2", "https://h/a?next=a:b%26token=[REDACTED]%26v=2"),
    ("https://h/a?p%61ssword=hunter2", "https://h/a?p%61ssword=[REDACTED]"),
    # words, slugs, numbers, dates and short ids stay readable
    ("https://h/ws?profile=netra&page=12&since=2026-12-02&id=c1-ab12",
     "https://h/ws?profile=netra&page=12&since=2026-12-02&id=c1-ab12"),
    ("https://h/docs?q=kubernetes-deployment-rollback&section=installation-guide-linux",
     "https://h/docs?q=kubernetes-deployment-rollback&section=installation-guide-linux"),
    ("ws://127.0.0.1:8765/ws", "ws://127.0.0.1:8765/ws"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown
    assert scrub(f"connect to {url} failed") == f"connect to {shown} failed"


def test_registered_secret_in_every_form():
    secret = 'se"cret/with spaces+'
    redact.register(secret)
    assert scrub(f"a {secret} b") == f"a {REDACTED} b"
    assert secret not in scrub(json.dumps({"echo": secret}))  # JSON-escaped form
    assert scrub("x=se%22cret%2Fwith%20spaces%2B") == f"x={REDACTED}"  # URL-encoded form


def test_a_secret_cut_short_by_a_size_bound_is_still_redacted():
    redact.register("cp-given-token-7f3a9c2e41b8d605")
    assert scrub("invalid token 'cp-given-token-7f3a…'") == f"invalid token '{REDACTED}…'"
    assert scrub("cp-given") == REDACTED  # MIN_RUN characters are enough
    assert scrub("cp-give") == "cp-give"


TOKEN = "sk_live_9fK2qZx7LmP4vR8tWb3NcY6hJd1Q"


@pytest.mark.parametrize("echo", [
    TOKEN[1:],  # its first character cut
    "********" + TOKEN[8:],  # its first 8 characters masked
    TOKEN[:7] + "\x01" + TOKEN[7:],  # a character put inside it
    TOKEN[:7] + "\u200b" + TOKEN[7:],
    TOKEN[12:20],  # any 8 of its characters, from anywhere in it
    TOKEN[3:30] + "!" + TOKEN[30:],
])
def test_any_run_of_min_run_characters_of_a_secret_is_redacted_wherever_it_starts(echo):
    redact.register(TOKEN)
    for shown in (f"bad token {echo} end", json.dumps({"error": "bad token " + echo}),  # a frame: \u0001, \u200b
                  "bad token " + _u(echo, 2), "x=" + quote(echo, safe="")):
        text = scrub(shown)
        assert REDACTED in text, text
        assert not _runs_of(TOKEN, redact._unescaped(text), redact.MIN_RUN), text
    assert scrub(TOKEN[12:19]) == TOKEN[12:19]  # 7 characters are not a run


def test_a_run_of_a_secret_inside_base64_is_redacted():
    redact.register(TOKEN)
    for pre in (b"", b"x", b"xy"):
        blob = base64.b64encode(pre + TOKEN.encode()).decode()
        for cut in (blob[6:], blob[6:-9]):  # the first characters cut, both ends cut
            text = scrub(f"blob {cut} end")
            assert REDACTED in text and not _runs_of(TOKEN, _decoded_runs(text), redact.MIN_RUN), (pre, cut, text)


def test_a_secret_that_reads_as_words_needs_a_longer_run():
    """A passphrase shares words with everyday text: its runs count from MIN_RUN_WORDS characters, not MIN_RUN."""
    redact.register("chatprobe-dev-secret")
    assert scrub("chatprobe run: 3 chats passed") == "chatprobe run: 3 chats passed"
    assert scrub("the dev-secret scenario") == "the dev-secret scenario"
    assert scrub("key hatprobe-dev-s!") == f"key {REDACTED}!"  # 12 of its characters
    assert scrub("key chatprobe-dev-secret") == f"key {REDACTED}"
    assert scrub("short abcd") == "short abcd"


def test_a_secret_repeated_through_a_hostile_frame_costs_linear_work_and_leaves_no_run():
    secret = "x" + "a" * 26 + "y7Q"
    redact.register(secret)
    for text in ("a" * (1 << 20), (secret + " ") * 30_000):
        out = scrub(text)
        assert out != text and not _runs_of(secret, out, redact.MIN_RUN)


def _runs_of(secret: str, text: str, n: int) -> list[str]:
    """The runs of n characters of the secret that the text holds."""
    return [secret[i:i + n] for i in range(len(secret) - n + 1) if secret[i:i + n] in text]


def test_any_jwt_is_redacted_minted_or_not():
    token = jwt.encode({"sub": "someone-else"}, "not-our-secret-0123456789abcdef0123", algorithm="HS256")
    assert scrub(f"user {token} ok") == f"user {REDACTED} ok"
    assert scrub(f"cut {token[:40]}") == f"cut {REDACTED}"
    assert scrub("Authorization: Bearer abcdefgh12345") == f"Authorization: Bearer {REDACTED}"


def test_minted_tokens_are_remembered_within_a_bound():
    for i in range(redact.MAX_MINTED + 50):
        redact.register(f"minted-token-{i:06d}", minted=True)
    assert len(redact._minted) <= redact.MAX_MINTED
    assert "minted-token-000000" not in redact._minted  # the oldest went first
    assert f"minted-token-{redact.MAX_MINTED + 49:06d}" in redact._minted


def test_the_minted_tokens_matcher_made_anew_is_not_kept_by_re():
    """A token minted per virtual user, and something scrubbed meanwhile (--record scrubs every frame): the matcher of
    the minted tokens is compiled anew up to once a second, and re's own cache kept each one (512 of them, ~1 MB each
    with MAX_MINTED tokens): a long run with a new user per chat grew by a megabyte a second. Only the matcher in use
    is held now, however many were made."""
    import weakref

    made = []
    for i in range(40):
        for j in range(3):
            redact.register(f"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1{i:04d}{j}.c2lnbmF0dXJlLW9mLXRoZS10b2tlbi0{i:04d}{j}",
                            minted=True)
        redact._minted_compiled_at = float("-inf")  # a second has passed since the last one was compiled
        assert redact.scrub(f"a eyJzdWIiOiJ1{i:04d}0 b") == "a [REDACTED] b"
        assert redact._minted_re is not None
        made.append(weakref.ref(redact._minted_re))
    held = [ref for ref in made[:-1] if ref() is not None]
    assert len(made) == 40 and not held, f"{len(held)} earlier matchers still held"


def test_the_signature_of_a_minted_jwt_is_redacted_on_its_own():
    """A server echoing a minted token's payload without its "eyJ" and its signature apart gives the whole token
    away (the HS256 header is standard): the signature is redacted wherever it stands, at once (no recompile)."""
    tokens = [jwt.encode({"sub": f"vu-{i}", "iat": 1767225600}, "chatprobe-dev-secret-0123456789abcdef",
                         algorithm="HS256") for i in range(3)]
    for token in tokens:
        redact.register(token, minted=True)
    for token in tokens:
        _, payload, sig = token.split(".")
        for shown in (f"JWTTAIL:{payload[3:]}.{sig}", f"sig={sig}", f"x{sig}y", f'{{"s": "{sig}"}}', sig):
            text = scrub(shown)
            assert sig not in text and REDACTED in text, text
        assert scrub(f"tail {payload[3:]}") == f"tail {payload[3:]}"  # the payload alone is no credential
        assert scrub(sig[:-1]) == sig[:-1]  # the whole signature, as a literal
    other = jwt.encode({"sub": "x"}, "another-secret-0123456789abcdef0123", algorithm="HS256").split(".")[2]
    assert scrub(f"sig={other}") == f"sig={other}"


def test_minted_signatures_are_forgotten_with_their_token():
    tokens = [jwt.encode({"sub": f"vu-{i}"}, "chatprobe-dev-secret-0123456789abcdef", algorithm="HS256")
              for i in range(redact.MAX_MINTED + 5)]
    for token in tokens:
        redact.register(token, minted=True)
    first, last = tokens[0].split(".")[2], tokens[-1].split(".")[2]
    assert scrub(last) == REDACTED and scrub(first) == first  # the oldest went first, its pieces with it
    assert len(redact._minted_sigs) <= redact.MAX_MINTED * (43 - redact._SIG_PIECE + 1)


def test_short_or_empty_secrets_are_not_registered():
    for s in (None, "", "   ", "abc"):
        redact.register(s)
    assert scrub("abc and more text") == "abc and more text"


def test_printable_escapes_what_a_terminal_or_xml_must_not_get():
    assert printable("a\x1b[2Jb\x00c\x07\n\t") == "a\\x1b[2Jb\\x00c\\x07\\x0a\\x09"
    assert printable("\u202egnp.exe \ud800 \ufffe \x9b") == "\\u202egnp.exe \\ud800 \\ufffe \\x9b"
    assert printable("über → 2 s ✓") == "über → 2 s ✓"


def test_every_unicode_format_character_is_dropped_or_escaped():
    """Every character of category Cf this Python knows: clean() drops it (an invisible one) or shows it escaped, and
    printable() escapes it: none reaches a terminal or a report raw."""
    format_chars = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf"]
    assert len(format_chars) > 150
    for c in format_chars:
        shown = clean(f"a{c}b")
        assert shown == "ab" or re.fullmatch(r"a\\(u[0-9a-f]{4}|U[0-9a-f]{8})b", shown), (hex(ord(c)), shown)
        assert c not in printable(f"a{c}b"), hex(ord(c))
    hidden = "".join(chr(0xE0000 + ord(c)) for c in "IGNORE PREVIOUS INSTRUCTIONS")
    assert clean(f"call-1{hidden}\u200b\u2060") == "call-1"
    # hidden text spelt in variation selectors after an emoji, one a byte ("emoji smuggling"): dropped, the emoji kept
    smuggled = "".join(chr(0xFE00 + b) if b < 16 else chr(0xE0100 + b - 16) for b in b"IGNORE PREVIOUS INSTRUCTIONS")
    assert clean(f"call-1 \U0001f600{smuggled} done") == "call-1 \U0001f600 done"
    assert clean("über 2 s → ok ✓ 中文") == "über 2 s → ok ✓ 中文"
    assert clean("\u202egnp.exe \u0600 1") == "\\u202egnp.exe \\u0600 1"  # bidi and number signs: escaped


def test_a_token_with_invisible_characters_inside_is_redacted_when_shown():
    redact.register(TOKEN)
    for sep in ("\u200b", "\u2060", "\u00ad", "\ufeff", "\U000e0020", "\ufe0f", "\U000e0100", "\U000e01ef"):
        assert clean(f"echo {sep.join(TOKEN)} end") == f"echo {REDACTED} end", sep
    # scrub() itself drops nothing: a recorded frame keeps its bytes (dropping one can make a bad frame good)
    assert scrub("a\u200bb") == "a\u200bb"
    assert scrub("\ufeff{\"a\": \"x\u200by\"}") == "\ufeff{\"a\": \"x\u200by\"}"
    # but a secret split by them is found all the same, in a frame raw or JSON-escaped: the span redacted holds them
    for ensure_ascii in (True, False):
        frame = json.dumps({"echo": "\u200b".join(TOKEN), "n": 1}, ensure_ascii=ensure_ascii)
        text = scrub(frame)
        assert json.loads(text) == {"echo": REDACTED, "n": 1}, text


@pytest.mark.parametrize("sep", ["\x07", "\x1b", "\x00", "\x0b", "\x7f", "\x85", "\x9b", "\x1b\x07"])
def test_a_token_with_control_characters_inside_is_redacted(sep):
    """A token with a control character (or two) after each of its characters. FAILED on the old code: clean()
    showed it escaped (`s\\x07k\\x07_…`), the token there to read, and scrub() (a recorded frame) left it whole. Now
    the matchers read past them, as past invisible characters; a control character of the text's own stays."""
    redact.register(TOKEN)
    assert clean(f"echo {sep.join(TOKEN)} end \x1b[0m") == f"echo {REDACTED} end \\x1b[0m"
    assert scrub(f"echo {sep.join(TOKEN)} end\x07") == f"echo {REDACTED} end\x07"
    for ensure_ascii in (True, False):  # a recorded frame, raw or JSON-escaped (\u0007)
        frame = json.dumps({"echo": sep.join(TOKEN), "bell": "ding\x07"}, ensure_ascii=ensure_ascii)
        assert json.loads(scrub(frame)) == {"echo": REDACTED, "bell": "ding\x07"}, scrub(frame)
    # A line break after each: left (ordinary multi-line text would each be searched twice); shown escaped.
    assert scrub("a\x07b\tc\nd") == "a\x07b\tc\nd"


def test_a_token_with_a_variation_selector_after_each_character_is_redacted_by_scrub():
    """scrub() keeps variation selectors (a recorded frame is the bytes as sent), and FAILED on the old code to find a
    token with one after each of its characters: written so into a recording. Now the run is redacted where it stands,
    the selectors inside it with it; an emoji's own selector stays."""
    redact.register(TOKEN)
    for vs in ("\ufe0f", "\ufe00", "\U000e0100", "\U000e01ef"):
        assert scrub(f"echo {vs.join(TOKEN)} \u2764\ufe0f") == f"echo {REDACTED} \u2764\ufe0f", vs
        for ensure_ascii in (True, False):
            frame = json.dumps({"echo": vs.join(TOKEN), "love": "\u2764\ufe0f"}, ensure_ascii=ensure_ascii)
            assert json.loads(scrub(frame)) == {"echo": REDACTED, "love": "\u2764\ufe0f"}, vs
    assert scrub("\u2764\ufe0f ok") == "\u2764\ufe0f ok"


def test_clean_bounds_length_after_redacting():
    redact.register("a-secret-value-xyz")
    text = clean("x" * 2000 + " a-secret-value-xyz", limit=100)
    assert text.startswith("x" * 100) and text.endswith("chars)") and "secret" not in text
    assert clean("a-secret-value-xyz at the start", limit=12).startswith("[REDACTED]")


def test_the_json_schema_ships_with_the_package():
    schema = json.loads(files("harness").joinpath("schemas/result.schema.json").read_text(encoding="utf-8"))
    assert schema["title"].startswith("chatprobe")


# -- a secret in disguise: JSON \u escapes (backslash doubled or not), \/, %-encoded, base64 --

def _u(s: str, every: int = 1, upper: bool = False) -> str:
    return "".join((f"\\u{ord(c):04X}" if upper else f"\\u{ord(c):04x}") if i % every == 0 else c
                   for i, c in enumerate(s))


@pytest.mark.parametrize("shown", [
    _u("pa55/w0rd+user-secret"),  # every character
    _u("pa55/w0rd+user-secret", 3, upper=True),  # some, upper-case hex
    "pa55\\/w0rd+user-secret",  # JSON's optional \/
    _u("pa55/w0rd+user-secret", 2).replace("\\", "\\\\"),  # a JSON string inside JSON, or a repr
    "pa55%2Fw0rd%2Buser-secret",  # a URL's quote
    "%70%61%35%35%2f%77%30%72%64%2b%75%73%65%72%2d%73%65%63%72%65%74",  # every byte
    "p\\u0061%355\\/w0rd+user-secret",  # mixed
    _u("pa55/w0rd+user-secret")[:60],  # cut short by a field's bound (10 characters)
])
def test_a_secret_in_disguise_is_redacted(shown):
    redact.register("pa55/w0rd+user-secret")
    text = scrub(f"echo: {shown} end")
    assert text.startswith(f"echo: {REDACTED}") and text.endswith(" end"), text
    assert "w0rd" not in redact._unescaped(text)


@pytest.mark.parametrize("shown", [
    "PA55/W0RD+USER-SECRET",  # upper case (an error message normalized)
    "pa55/w0rd+user-secret".title(),  # any mix of cases
    b"Pa55/w0rd+user-secret".hex(),  # hex of its bytes (a debug dump, Go's %x)
    b"Pa55/w0rd+user-secret".hex().upper(),
    "".join(f"&#{ord(c)};" for c in "pa55/w0rd+user-secret"),  # HTML numeric character references
    "".join(f"&#x{ord(c):x};" if i % 2 else f"&#X{ord(c):02X};" for i, c in enumerate("pa55/w0rd+user-secret")),
    "pa55" + "".join(f"&#{ord(c)};" for c in "/w0rd+us") + "er-secret",  # some
    _u("PA55/W0RD+USER-SECRET", 2),  # escaped and upper case
])
def test_a_secret_in_another_case_in_hex_or_as_html_references_is_redacted(shown):
    redact.register("Pa55/w0rd+user-secret")
    text = scrub(f"echo: {shown} end &#39;quoted&#39; &amp; &#9999999;&#1;&#2;&#3; DEADBEEF")
    assert text == f"echo: {REDACTED} end &#39;quoted&#39; &amp; &#9999999;&#1;&#2;&#3; DEADBEEF", text


def test_a_word_of_a_secret_in_another_case_is_left_and_the_secret_is_not():
    # Matching without regard to case made every "password" of a secret Password2024 a run of it: a frame's type
    # `password_reset` was recorded as `[REDACTED]_reset` (an R12 when the recording is judged), and any
    # "international" of InternationalSecret went. A word of the secret is matched as the secret writes it.
    redact.register("Password2024")
    redact.register("InternationalSecret")
    redact.register("XkQmZpLwRtBvYu")  # letters alone, their case mixed: a token, not a word
    frame = '{"type": "password_reset", "text": "enter your password, international users"}'
    assert scrub(frame) == frame
    for shown in ("PASSWORD2024", "password2024", "Password2024", "INTERNATIONALSECRET", "internationalsecret",
                  "XKQMZPLWRTBVYU", "xkqmzplw", "XKQMZPLW", "PASSWORD20"):
        assert scrub(f"echo {shown} end") == f"echo {REDACTED} end", shown


@pytest.mark.parametrize("shown", [
    "".join(f"&#{ord(c):010d};" for c in "Pa55/w0rd+user-secret"),  # leading zeros, as browsers read them
    "".join(f"&#x{ord(c):08x};" for c in "Pa55/w0rd+user-secret"),
    # one reference naming no character (U+FFFD in a browser) left the whole run undecoded: both halves showed
    "".join(f"&#x{ord(c):x};" for c in "Pa55/w0rd+") + "&#x110000;" + "".join(f"&#x{ord(c):x};" for c in "user-secret"),
    "".join(f"&#{ord(c)};" for c in "Pa55/w0rd+") + "&#" + "9" * 5000 + ";" + "".join(f"&#{ord(c)};" for c in "user-sec"),
])
def test_a_secret_as_references_with_leading_zeros_or_beside_a_bad_one_is_redacted(shown):
    redact.register("Pa55/w0rd+user-secret")
    text = scrub(f"echo: {shown} end")
    assert "&#" not in text.replace("&#x110000;", "").replace("&#" + "9" * 5000 + ";", ""), text
    assert text.startswith(f"echo: {REDACTED}") and text.endswith(f"{REDACTED} end"), text


@pytest.mark.parametrize("escape", [
    html.escape,  # Python's: &amp; &lt; &gt; &quot; &#x27;
    lambda s: html.escape(s, quote=False),
    lambda s: html.escape(s).replace("&#x27;", "&#39;").replace("&quot;", "&#34;").replace("+", "&#43;"),  # Go's
    lambda s: html.escape(s).replace("&#x27;", "&apos;"),  # XML's
])
def test_a_secret_html_escaped_shows_no_run_between_its_entities(escape):
    # each entity on its own is not decoded: the runs between them (Q2pL, 7mN4…) were shorter than MIN_RUN
    secret = "Xk9f&Q2pL<7mN4>rT8v\"W1y'Zb+c0d"
    redact.register(secret)
    text = scrub(f"<p>bad token {escape(secret)}</p>")
    assert text == f"<p>bad token {REDACTED}</p>", text


def test_a_short_run_of_a_secrets_hex_is_left():
    # hex counts two characters a byte: a run of 8 characters of the secret is 16 of its hex
    secret = "pa55/w0rd+user-secret"
    redact.register(secret)
    short = secret.encode().hex()[2:17]
    assert scrub(f"id {short} ok") == f"id {short} ok"
    assert scrub(f"id {secret.encode().hex()[2:18]} ok") == f"id {REDACTED} ok"


def test_a_secret_inside_base64_is_redacted_at_each_alignment():
    secret = "pa55/w0rd+user-secret"
    redact.register(secret)
    for pre in (b"", b"x", b"xy", b"xyz"):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            text = scrub(f"blob {enc(pre + secret.encode() + b'!').decode()} end")
            assert REDACTED in text and secret not in _decoded_runs(text), (pre, enc, text)


def test_a_jwt_in_disguise_is_redacted_whoever_minted_it():
    token = jwt.encode({"sub": "someone-else"}, "not-our-secret-0123456789abcdef0123", algorithm="HS256")
    for shown in (_u(token, 2), "%65" + token[1:], _u(token).replace("\\", "\\\\"),
                  base64.b64encode(b"Bearer " + token.encode()).decode(),
                  base64.urlsafe_b64encode(b"t=" + token.encode()).decode()):
        assert scrub(f"user {shown} ok") == f"user {REDACTED} ok", shown


def test_a_jwt_as_html_references_or_hex_is_redacted_minted_or_not():
    def refs(s: str) -> str:
        return "".join(f"&#{ord(c)};" if i % 3 else f"&#x{ord(c):X};" for i, c in enumerate(s))

    other = jwt.encode({"sub": "someone-else"}, "not-our-secret-0123456789abcdef0123", algorithm="HS256")
    minted = jwt.encode({"sub": "u1"}, "our-secret-for-minting-0123456789abcdef", algorithm="HS256")
    redact.register(minted, minted=True)
    sig = minted.rsplit(".", 1)[1]
    for token in (other, minted):
        for shown in (refs(token), "eyJ" + refs(token[3:]), refs(token.split(".")[1]), token.encode().hex(),
                      f"Bearer {token}".encode().hex().upper()):
            out = scrub(f"user {shown} ok &#39;q&#39;")
            assert REDACTED in out and out.endswith(" ok &#39;q&#39;"), shown
            assert token.split(".")[1][:8] not in redact._unescaped(out) and token.encode().hex()[:20] not in out
    assert scrub(f"sig {refs(sig)} ok") == f"sig {REDACTED} ok"  # a minted one's signature alone, too
    # hex that is no JWT stays
    for text in (b'{"a": 1}'.hex(), "65794a", "deadbeef65794a20"):
        assert scrub(f"x {text} y") == f"x {text} y"


@pytest.mark.parametrize("before", ["keyJar ", "eyJ! ", "\x06\x57\x94\xa0"])
def test_a_jwt_in_hex_after_an_eyj_that_is_none_is_redacted(before):
    # the first "65794a" of the run (a key named keyJar, bytes holding it across two) took the whole run with it
    token = jwt.encode({"sub": "someone-else"}, "not-our-secret-0123456789abcdef0123", algorithm="HS256")
    dump = f'{before}{{"token": "{token}"}}'.encode("latin-1").hex()
    out = scrub(f"dump {dump} end")
    assert out == f"dump {dump[:dump.index('65794a', 8)]}{REDACTED} end", out


def test_escapes_that_hold_no_secret_are_left_as_they_are():
    redact.register("pa55/w0rd+user-secret")
    for text in ('{"msg": "caf\\u00e9 50% off \\/ \\\\"}', "%41%42 \\u0041", "\\" * 10_000 + "u0070a55",
                 "ZXlKaGVsbG8gd29ybGQ= leU V5S plain base64"):
        assert scrub(text) == text


def test_a_long_text_s_positions_found_by_chunks_are_those_of_the_whole_text():
    """A text a secret was found in decoded is mapped back by chunks (redact._CHUNK characters, each cut before a
    character no escape holds): every position agrees with the whole text decoded at once, escapes of every kind
    (JSON, a surrogate pair, %-runs, references, an invisible character, a run of escaped CJK characters, a %-escape
    spelled with a JSON one) on both sides of many cuts."""
    pieces = ["\\u0041", "\\ud83d\\ude00", '\\"', "\\\\/", "%e4%b8%ad", "&#65;&#66;&#67;&#68;", "\\u200b", " ", "g",
              "\u00e9", "\U0001f600", "abc", "\\\\u0042", "z", "\\u4e2d\\u6587" * 3, "%e", "\\u0025"]
    text = "".join(pieces[i * 5 % len(pieces)] + pieces[i * 3 % len(pieces)] for i in range(30_000))
    whole = redact._Positions()
    decoded = redact._decode(text, whole, invisible=True)
    mapped, at = redact._unescaped_at(text)
    assert len(text) > 4 * redact._CHUNK and mapped == decoded
    assert [at[i] for i in range(len(mapped) + 1)] == [whole[i] for i in range(len(decoded) + 1)]


def test_a_connection_s_own_credentials_are_kept_out_of_its_recording_in_disguise(tmp_path):
    from harness.recorder import Recorder

    own = "opaque-user-credential-7Hq2"
    recorder = Recorder(tmp_path)
    log = recorder.connection("live", [own])
    for shown in (_u(own, 2), own.replace("-", "%2D"), base64.b64encode(b"u:" + own.encode()).decode()):
        log.frame("recv", f'{{"echo": "{shown}"}}', 1.0)
        log.frame("recv", f"echo {shown}".encode(), 1.0)
    path = recorder.save(log)
    assert path is not None
    text = path.read_text()
    frames = [json.loads(line) for line in text.splitlines()]
    shown_all = text + "".join(base64.b64decode(f["frame_b64"]).decode() for f in frames if "frame_b64" in f)
    assert shown_all.count(REDACTED) == 6
    assert own not in _decoded_runs(redact._unescaped(shown_all.replace("\\\\", "\\")))
    assert REDACTED not in scrub(f"echo {_u(own)}")  # another connection's (or the process's) outputs don't know it


def _decoded_runs(text: str) -> str:
    out = [text]
    for run in re.findall(r"[A-Za-z0-9+/_-]{8,}", text):
        run = run.replace("-", "+").replace("_", "/")
        for offset in range(4):
            chunk = run[offset:]
            with contextlib.suppress(binascii.Error):
                out.append(base64.b64decode(chunk[: len(chunk) - len(chunk) % 4]).decode("latin-1"))
    return "\n".join(out)


@pytest.mark.parametrize(("text", "shown"), [
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "Authorization: Basic [REDACTED]"),
    ('{"authorization": "Token abcdef123456"}', '{"authorization": "Token [REDACTED]"}'),
    ("proxy-authorization=Digest username=x", "proxy-authorization=Digest [REDACTED]"),
    ("Authorization: opaque-credential-7Hq2", "Authorization: [REDACTED]"),
    ("Sec-WebSocket-Protocol: jwt.b3BhcXVlLXRva2VuLXZhbHVl", "Sec-WebSocket-Protocol: jwt.[REDACTED]"),
    # any case: the patterns ignore it, and so do their quick tests
    ("AuThOrIzAtIoN: Basic dXNlcjpwYXNzd29yZA==", "AuThOrIzAtIoN: Basic [REDACTED]"),
    ("bEaReR opaque-credential-7Hq2", "bEaReR [REDACTED]"),
    ("protocol Jwt.b3BhcXVlLXRva2VuLXZhbHVl", "protocol Jwt.[REDACTED]"),
    # a JWT whose header JSON has a space after the brace: base64url "eyAi…", not "eyJ…"
    ("run eyAiYWxnIjogIkhTMjU2IiB9.eyAic3ViIjogInUxIiB9.S1gN4tur3abc done", "run [REDACTED] done"),
    ("run ewogImFsZyI6ICJIUzI1NiIKfQ.ewogInN1YiI6ICJ1MSIKfQ.c2lnbmF0dXJl done", "run [REDACTED] done"),
    # prose and names stay
    ("the token validation failed", "the token validation failed"),
    ("scenario basic passed; Authorization header missing", "scenario basic passed; Authorization header missing"),
    ("ewok.example.com", "ewok.example.com"),
])
def test_credentials_of_any_authorization_scheme_subprotocol_tokens_and_other_jws_headers(text, shown):
    assert scrub(text) == shown


def test_a_secrets_common_piece_many_times_over_is_no_secret():
    """A frame listing many chats holds "chat" (a piece of chatprobe-dev-secret) a hundred times and no run of the
    secret: it is shown whole (a bound on the work once redacted every piece, keys of recorded frames included)."""
    redact.register("chatprobe-dev-secret")
    frame = json.dumps({"type": "system_message", "data": {"chats": [{"chat_id": f"chat-{i}"} for i in range(300)]}})
    assert scrub(frame) == frame and clean(frame) == printable(frame)
    assert REDACTED in scrub(frame + " chatprobe-dev-se")  # a run of it still goes


def test_a_text_dense_with_a_secrets_pieces_shows_no_run_of_it():
    secret = "Zq9xKp2LmW7vRt4s"
    redact.register(secret)
    for text in ((secret[:6] + "\n") * 100_000, json.dumps(secret[3:9] * 200_000 + secret),
                 (secret[2:10] + "\\n") * 50_000):
        out = scrub(text)
        assert all(secret[i:i + 8] not in out for i in range(len(secret) - 7)), text[:40]


def test_a_hundred_secrets_in_a_multi_megabyte_frame_each_run_redacted_and_nothing_else():
    """All the pieces of all the forms of a hundred secrets are looked for in one pass: each secret shown (whole, cut
    to a run, URL-encoded, JSON-escaped, \\u-escaped, in base64) is redacted where it stands, and nothing else is,
    not even 7 of a secret's characters."""
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    secrets = ["".join(alphabet[(i * 7 + k * k * 13 + k) % len(alphabet)] for k in range(24)) + f"{i:02d}"
               for i in range(99)] + ['Tk/9"qZ+w8Lm3Vx&Pr7']
    assert len(set(secrets)) == 100
    for secret in secrets:
        redact.register(secret)
    filler = "".join(f'{{"type": "partial_result", "data": {{"text": "the weather in paris is mild today, {i}"}}}}\n'
                     for i in range(40_000))
    shown: list[str] = []
    expected: list[str] = []
    for n, at in enumerate(range(0, len(filler), 100_000)):
        chunk = filler[at:at + 100_000]
        secret = secrets[n * 37 % 100] if n % 5 else secrets[-1]
        for echo, redacted in ((secret, REDACTED), (secret[3:15], REDACTED), (quote(secret, safe=""), REDACTED),
                               (json.dumps(secret)[1:-1], REDACTED), (f"\\u{ord(secret[0]):04x}{secret[1:]}", REDACTED),
                               (base64.b64encode(secret[:18].encode()).decode(), REDACTED),
                               (secret[:7], secret[:7]), (secret[9:16], secret[9:16])):
            shown.append(f" {echo} ")
            expected.append(f" {redacted} ")
        shown.append(chunk)
        expected.append(chunk)
    text = "".join(shown)
    assert len(text) > 3_000_000
    assert scrub(text) == "".join(expected)


def test_base64_runs_holding_a_jwt_are_found_from_their_marks_as_a_scan_of_every_run_finds_them():
    """_redact_base64_runs looks only at the runs holding a mark (it was a Python call per run of 16 or more base64
    characters: a frame of ids paid one per id). It redacts exactly what scanning every run did."""
    import base64
    import random

    from harness.redact import _B64_JWT_MARKS, _B64_RUN_RE, _redact_base64_run, _redact_base64_runs

    def every_run(text: str) -> str:
        return _B64_RUN_RE.compiled.sub(lambda m: _redact_base64_run(m.group(0)) if any(
            mark in m.group(0) for mark in _B64_JWT_MARKS) else m.group(0), text)

    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJl"
    pieces = [base64.b64encode(f"{pad}{jwt} x".encode()).decode() for pad in ("", "a", "ab", "abc")]
    pieces += [base64.urlsafe_b64encode(f"k{jwt}".encode()).decode().rstrip("="), "ZXlK", "V5S", "leU", "=", "==",
               "===", " ", ".", "-", "_", "+/", "AAAA", "ZXlKaGJHY2lPaUpJVXpJMU5pSjk", "a" * 15, "b" * 16, "\u00e9"]
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert _redact_base64_runs(text) == every_run(text), text
    assert _redact_base64_runs(f"id {pieces[0]} end") == "id [REDACTED] end"
