"""The pool of users' credentials a process has seen (redact.SeenCredentials: the proxy's users'), matched by scrub()
in every text: each credential (and any run of MIN_RUN of its characters) caught the moment it is held, in the forms
scrub() decodes, with nothing compiled to hold a user or to scrub a text; bounded in memory (what it counts holds
what tracemalloc measures), the least recently seen forgotten first, those of closed connections before those of open
ones.

FAILED on the code before: there was no pool (each recording was scrubbed of its own connection's credentials only).
"""
from __future__ import annotations

import base64
import gc
import json
import secrets
import string
import tracemalloc
import weakref
from urllib.parse import quote

import pytest

from harness import redact
from harness.redact import REDACTED, Budget, SeenCredentials, credentials_of, scrub

USERS = 1000


def opaque_token(nbytes: int = 32) -> str:
    """A random token (token_urlsafe) whose every 4 characters hold a digit and a letter: any run of it that a test
    says is caught mixes two classes, as a pool's run must (a random one's 9 characters are all lower case now and
    then)."""
    t = list(secrets.token_urlsafe(nbytes))
    for i in range(0, len(t), 4):
        t[i] = secrets.choice(string.digits)
    for i in range(2, len(t), 4):
        t[i] = secrets.choice(string.ascii_letters)
    return "".join(t)


def bearer(token: str) -> tuple[str, ...]:
    return credentials_of([("Authorization", f"Bearer {token}")], [])


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many Aho-Corasick matchers (redact._Runs, what Secrets compiles) are built while the test runs. The
    process's registered secrets compiled first: a secret registered before the test (another test's on this worker,
    its registry put back with its matcher still to build) is compiled at the next scrub, whatever the pool does."""
    redact.scrub("warm up")
    built = [0]
    base = redact._Runs

    class Counted(base):  # type: ignore[misc,valid-type]
        def __init__(self, *args: object) -> None:
            built[0] += 1
            super().__init__(*args)

    monkeypatch.setattr(redact, "_Runs", Counted)
    return built


def test_a_thousand_users_tokens_are_each_caught_once_held_and_nothing_is_compiled(compiled):
    tokens = [opaque_token() for _ in range(USERS)]
    pool = redact.seen_credentials()
    for n, token in enumerate(tokens):
        pool.hold(bearer(token))
        # Caught at once, whole and a run of it, in an event frame as a user's connection records it.
        frame = json.dumps({"type": "partial_result", "payload": {"content": f"hi {token} and {token[3:20]} ({n})"}})
        out = scrub(frame)
        assert token not in out and token[3:20] not in out and f"({n})" in out
    # Every one still is, with the last one's neighbours: nothing was forgotten, nothing depends on when it came.
    for token in tokens[::97]:
        assert scrub(f"another user's token: {token}.") == f"another user's token: {REDACTED}."
    assert compiled[0] == 0, "a matcher was compiled to hold a user or to scrub a text"
    assert pool.forgotten == 0 and len(pool.held()) == USERS


def test_each_form_scrub_decodes_is_caught_and_what_is_not():
    token = opaque_token()
    odd = "pa%2Fss\"w0rd+Zk9q"  # a cookie value holding a %-escape, a quote and a plus
    pool = redact.seen_credentials()
    pool.hold(bearer(token) + credentials_of([("Cookie", f"sid={odd}")], []))
    escaped = "".join(f"\\u{ord(c):04x}" for c in token)  # a JSON encoder escaping every character
    doubled = escaped.replace("\\", "\\\\")  # that inside another JSON string
    forms = {"as is": token, "JSON-escaped": escaped, "escaped twice": doubled, "URL-encoded": quote(token, safe=""),
             "a zero-width space inside": token[:10] + "\u200b" + token[10:],
             "the cookie JSON-escaped": json.dumps(odd)[1:-1], "the cookie URL-encoded": quote(odd, safe=""),
             "cut short": token[:30], "its tail": token[-9:]}
    for what, form in forms.items():
        out = scrub(f'{{"text": "echo: {form} (end)"}}')
        assert form not in out and REDACTED in out and "(end)" in out, what
    # A fragment shorter than MIN_RUN is not caught (scrub's own rules may catch it by its shape: not here).
    short = token[5:5 + redact.MIN_RUN - 1]
    assert short in scrub(f"a fragment: {short}.")


def test_what_is_held_of_a_connections_credentials():
    head = base64.urlsafe_b64encode(b'{"alg":"HS256"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(b'{"sub":"ana"}').rstrip(b"=").decode()
    sig = opaque_token()
    jwt = f"{head}.{body}.{sig}"
    # `Bearer X` holds X: X alone; of a JWT, its signature (its two other parts are caught by their shape).
    assert SeenCredentials.pooled(bearer(jwt)) == (sig,)
    assert SeenCredentials.pooled(credentials_of([], [f"jwt.{jwt}"])) == (sig,)
    opaque = secrets.token_urlsafe(24)
    assert SeenCredentials.pooled([f"Bearer {opaque}", opaque]) == (opaque,)
    basic = base64.b64encode(b"ana:s3cret-Pw9").decode()
    # Its user:password and password are shorter than SEEN_MIN_LEN: scrubbed from their own connection only.
    assert set(SeenCredentials.pooled(credentials_of([("Authorization", f"Basic {basic}")], []))) == {basic}
    longer = base64.b64encode(b"ana:a-longer-passphrase").decode()
    mixed = base64.b64encode(b"ana:a-longer-Passphrase-42").decode()
    # A password that reads as words is not held (any client could have its words redacted from every recording):
    # scrubbed from its own connection only. One that reads as a token is.
    assert set(SeenCredentials.pooled(credentials_of([("Authorization", f"Basic {longer}")], []))) == {longer}
    assert set(SeenCredentials.pooled(credentials_of([("Authorization", f"Basic {mixed}")], []))) == {
        mixed, "ana:a-longer-Passphrase-42", "a-longer-Passphrase-42"}
    pool = redact.seen_credentials()
    pool.hold(bearer(jwt))
    assert pool.held() == {sig}
    assert sig not in scrub(f"the signature alone: {sig}") and sig[4:20] not in scrub(f"a run of it: {sig[4:20]}")
    assert head not in scrub(f"the header alone: {head}") and body not in scrub(f"the payload alone: {body}")


def test_past_its_bound_the_pool_forgets_closed_connections_credentials_first(monkeypatch):
    tokens = [secrets.token_urlsafe(30) for _ in range(7)]  # 40 characters each
    cost = redact._seen_cost(tokens[0])
    pool = SeenCredentials(max_bytes=4 * cost)
    monkeypatch.setattr(redact, "_seen", pool)
    held = [pool.hold(bearer(t)) for t in tokens[:4]]
    pool.release(held[1])  # its connection closed
    pool.hold(bearer(tokens[0]))  # a user seen again: the most recently seen now
    pool.hold(bearer(tokens[4]))
    assert pool.forgotten == 1 and pool.held_bytes() == 4 * cost
    assert pool.held() == {tokens[0], tokens[2], tokens[3], tokens[4]}
    # The forgotten one is no longer caught on another user's connection; the others are.
    assert tokens[1] in scrub(f"echo {tokens[1]}") and tokens[2] not in scrub(f"echo {tokens[2]}")
    pool.hold(bearer(tokens[5]))  # every one's connection is open: the least recently seen goes
    assert pool.forgotten == 2 and pool.held() == {tokens[0], tokens[3], tokens[4], tokens[5]}
    pool.release(held[1])  # a forgotten one's connection closing changes nothing
    pool.release(held[2])  # nor does one whose credential was forgotten while it was open
    assert pool.held_bytes() == 4 * cost
    first = pool.hold(bearer(tokens[2]))  # held again by a new connection: tokens[3], the least recently seen, goes
    assert pool.held() == {tokens[0], tokens[2], tokens[4], tokens[5]} and pool.forgotten == 3
    pool.release(pool.hold(bearer(tokens[2])))  # a second connection of tokens[2]'s, closed: the first is open still
    pool.hold(bearer(tokens[6]))  # all open: the least recently seen of them goes (tokens[0], not tokens[2])
    assert pool.held() == {tokens[2], tokens[4], tokens[5], tokens[6]} and pool.forgotten == 4
    pool.release(first)  # its last connection closes: it goes first, before any open one
    pool.hold(bearer(tokens[3]))
    assert pool.held() == {tokens[3], tokens[4], tokens[5], tokens[6]} and pool.forgotten == 5

def test_the_memory_the_pool_takes_is_within_its_bound():
    bound = 2 * 1024 * 1024
    tokens = [secrets.token_urlsafe(32) for _ in range(1500)]
    creds = [bearer(t) for t in tokens]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        pool = SeenCredentials(max_bytes=bound)
        open_ = []
        for c in creds:
            open_.append(pool.hold(c))
            if len(open_) > 100:  # users coming and going: a hundred connections open at a time
                pool.release(open_.pop(0))
        taken = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert pool.forgotten > 0 and pool.held_bytes() <= bound
    # What it counts is an upper bound of what it takes, and not a loose one.
    assert pool.held_bytes() // 3 <= taken <= bound, (taken, pool.held_bytes())


def test_a_credential_alone_past_the_bound_is_not_held_and_counted():
    token = secrets.token_urlsafe(60)
    pool = SeenCredentials(max_bytes=redact._seen_cost(token))
    assert pool.hold([token]) != ()
    assert pool.hold([token + "x"]) == () and pool.unheld == 1 and pool.held() == {token}


def test_a_text_dense_with_held_pieces_is_scrubbed_within_its_budget(compiled):
    # Credentials that share their pieces (a hostile client's), and a frame made of those pieces: the work is bounded
    # by the text's Budget, then every piece found is redacted as it stands; no run of any credential is left.
    pool = redact.seen_credentials()
    creds = [f"aB3cD4eF{n:07d}" for n in range(8)]  # a piece shared by 8 (past that it is not followed: below)
    for c in creds:
        pool.hold([c])
    text = "aB3cD4eF" * 20_000 + " and one 000123 plain"
    out = scrub(text)
    assert "aB3cD4eF" not in out and out.endswith("000123 plain")
    assert compiled[0] == 0


def test_credentials_spelling_event_text_redact_none_of_it_and_cost_it_nothing():
    """Any client picks its credentials, and the pool scrubs them from every user's text: a cookie spelling the
    protocol's words (`Xagent_completed…`) redacted another user's `agent_completed`; one repeating them (each piece
    found in a frame a hit per time the cookie holds it) spent every user's frame's budget (~6 ms a 1 KB frame, 41 µs
    with 1,500 users' tokens held), after which every held piece in it was redacted bluntly, words and all; a
    thousand made-up ones sharing `agent_co…` did alike. Only a run that mixes two of lower case, upper case and
    digits is redacted from a text now, bluntly too; a credential that reads as words, holds a space or repeats a piece
    is not held; a piece held by more than 8 credentials is not followed.

    FAILED on the code before: `agent_completed` and the other types came out [REDACTED], every frame's budget spent."""
    pool = redact.seen_credentials()
    words = "agent_completed_partial_result_tool_executing_"
    pool.hold(credentials_of([("Cookie", f"a=X{words}; b=agent_completed partial_result Xy1Zw2")], []))
    for n in range(12):  # 12 users, each its 8 KB of the same words
        pool.hold(credentials_of([("Cookie", f"s=Q{n}" + words * 170)], []))
    assert pool.held() == {f"X{words}"}
    for n in range(100):  # made-up credentials, each its own, sharing the words
        pool.hold(credentials_of([("Cookie", f"s=Q{n}{words}{secrets.token_hex(4)}")], []))
    assert len(pool.held()) == 101
    frames = [json.dumps({"type": kind, "run_id": "r-1", "seq": 3, "payload": {"content": f"{kind} done " * 20}})
              for kind in ("agent_completed", "partial_result", "tool_executing")]
    for frame in frames:
        budget = Budget(len(frame))
        full = budget.hits
        assert scrub(frame, budget=budget) == frame
        assert full - budget.hits < 50, full - budget.hits  # a few hits, not the budget
        budget.hits = 0  # past it, bluntly: the words stay too
        assert scrub(frame, budget=budget) == frame
    # A token among the words is still caught, past the budget too.
    token = opaque_token()
    pool.hold(bearer(token))
    frame = json.dumps({"type": "agent_completed", "payload": {"content": f"agent_completed {token}"}})
    out = scrub(frame, budget=Budget(len(frame)))
    assert token not in out and '"type": "agent_completed"' in out
    budget = Budget(len(frame))
    budget.hits = 0
    out = scrub(frame, budget=budget)
    assert token not in out and '"type": "agent_completed"' in out


def test_the_matchers_kept_for_users_next_connections_take_bounded_memory():
    """secrets_of keeps each user's compiled credentials for its next connection, ~650 bytes of memory per character
    (their forms: escaped, URL-encoded, base64). Kept by count alone (256 sets), users with 8 KB cookies (what the
    proxy records, MAX_RECORDED_CREDENTIALS) held ~1.4 GB of the proxy's memory after their connections closed (RSS
    measured through a real proxy, 300 users one after the other); at most 64 Ki characters' worth now (~40 MB).

    FAILED on the code before: every one of 20 users' 4,000 characters was kept, 80,000 characters (~50 MB)."""
    sets = [credentials_of([("Cookie", f"a={secrets.token_urlsafe(1500)}; b={secrets.token_urlsafe(1500)}")], [])
            for _ in range(20)]
    assert all(sum(map(len, s)) == 4000 for s in sets)
    kept = []
    for s in sets:
        matcher = redact.secrets_of(s)
        assert redact.secrets_of(s) is matcher  # (compiled once while it is kept)
        kept.append(weakref.ref(matcher))
        del matcher
    gc.collect()
    alive = sum(sum(map(len, s)) for s, ref in zip(sets, kept, strict=True) if ref() is not None)
    assert 0 < alive <= 64 * 1024, alive
    assert kept[-1]() is not None  # the latest user's kept (the least recently used go first)


def test_one_client_address_holds_at_most_its_share_of_the_pool(monkeypatch):
    tokens = [opaque_token(30) for _ in range(40)]
    cost = redact._seen_cost(tokens[0])
    pool = SeenCredentials(max_bytes=redact.SEEN_SHARE * 3 * cost)  # a share: 3 tokens
    monkeypatch.setattr(redact, "_seen", pool)
    ana = pool.hold(bearer(tokens[0]), owner="10.0.0.1")
    for t in tokens[1:]:  # another address's, each connection open
        pool.hold(bearer(t), owner="10.0.0.2")
    assert pool.held() == {tokens[0], *tokens[-3:]} and pool.forgotten == 36
    assert tokens[0] not in scrub(f"echo {tokens[0]}") and tokens[1] in scrub(f"echo {tokens[1]}")
    # Its oldest goes first; one seen again is the most recently seen; a closed connection's is forgotten alike.
    pool.hold(bearer(tokens[-3]), owner="10.0.0.2")
    pool.hold(bearer(tokens[1]), owner="10.0.0.2")
    assert pool.held() == {tokens[0], tokens[-3], tokens[-1], tokens[1]}
    pool.release(ana)
    assert pool.held_bytes() == 4 * cost and pool._owner_bytes == {"10.0.0.1": cost, "10.0.0.2": 3 * cost}
    # The whole pool's bound still holds across addresses: the least recently seen closed one goes first.
    for n, t in enumerate(tokens[2:30]):
        pool.hold(bearer(t), owner=f"10.1.0.{n}")
    assert tokens[0] not in pool.held() and pool.held_bytes() <= pool.max_bytes
    assert sum(pool._owner_bytes.values()) == pool.held_bytes()
    # The share given (a proxy whose one address may hold every connection: a load balancer) is the address's.
    lone = SeenCredentials(max_bytes=10 * cost)
    for t in tokens[:10]:
        lone.hold(bearer(t), owner="10.0.0.9", share=1.0)
    assert lone.held() == set(tokens[:10]) and lone.forgotten == 0


@pytest.mark.parametrize("sep", ["\x07", "\x1b", "\x9b", "\ufe0f", "\U000e0100"])
def test_a_held_credential_with_a_control_or_selector_after_each_character_is_redacted(sep):
    """The pool (the proxy's users' credentials, looked for in every text) reads past control characters and
    variation selectors as it does past invisible characters. FAILED on the old code: such a credential was left whole
    in a recorded frame and in a report."""
    token = opaque_token()
    pool = SeenCredentials()
    pool.hold([token])
    assert pool.sub(f"echo {sep.join(token)} end") == f"echo {REDACTED} end"
    frame = json.dumps({"echo": sep.join(token)})
    assert json.loads(pool.sub(frame)) == {"echo": REDACTED}
