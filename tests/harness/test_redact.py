"""harness/redact.py: what may leave the process (secrets, URL credentials, control characters)."""
from __future__ import annotations

import json
from importlib.resources import files

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
    assert scrub("cp-given") == REDACTED  # the first PREFIX_LEN characters are enough
    assert scrub("cp-give") == "cp-give"


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


def test_short_or_empty_secrets_are_not_registered():
    for s in (None, "", "   ", "abc"):
        redact.register(s)
    assert scrub("abc and more text") == "abc and more text"


def test_printable_escapes_what_a_terminal_or_xml_must_not_get():
    assert printable("a\x1b[2Jb\x00c\x07\n\t") == "a\\x1b[2Jb\\x00c\\x07\\x0a\\x09"
    assert printable("\u202egnp.exe \ud800 \ufffe \x9b") == "\\u202egnp.exe \\ud800 \\ufffe \\x9b"
    assert printable("über → 2 s ✓") == "über → 2 s ✓"


def test_clean_bounds_length_after_redacting():
    redact.register("a-secret-value-xyz")
    text = clean("x" * 2000 + " a-secret-value-xyz", limit=100)
    assert text.startswith("x" * 100) and text.endswith("chars)") and "secret" not in text
    assert clean("a-secret-value-xyz at the start", limit=12).startswith("[REDACTED]")


def test_the_json_schema_ships_with_the_package():
    schema = json.loads(files("harness").joinpath("schemas/result.schema.json").read_text(encoding="utf-8"))
    assert schema["title"].startswith("chatprobe")
