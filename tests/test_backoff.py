"""The Locust user's backoff policy: doubling from the first delay, capped, jittered within [half, all], and reset
by a success."""
from __future__ import annotations

import random

import pytest

from harness.backoff import Backoff, ReconnectRetries


def test_doubles_caps_and_resets():
    b = Backoff(first=0.1, cap=2.0, rng=random.Random(7))
    assert b.delay() == 0.0  # no failure yet: no wait
    ceilings = []
    for _ in range(10):
        b.failed()
        ceilings.append(b.ceiling())
        for _ in range(50):
            d = b.delay()
            assert ceilings[-1] / 2 <= d <= ceilings[-1]
    assert ceilings[:5] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])
    assert ceilings[5:] == [2.0] * 5
    b.succeeded()
    assert b.delay() == 0.0 and b.ceiling() == 0.0
    b.failed()
    assert b.ceiling() == pytest.approx(0.1)  # starts over


def test_jitter_spreads_users_that_failed_together():
    users = [Backoff(first=1.0, cap=5.0, rng=random.Random(seed)) for seed in range(20)]
    for u in users:
        u.failed()
        u.failed()
    delays = {round(u.delay(), 3) for u in users}
    assert len(delays) > 10  # not in step


def test_a_long_outage_does_not_overflow():
    b = Backoff(first=0.1, cap=3.0)
    b.failures = 10_000
    assert b.ceiling() == 3.0


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        Backoff(first=0, cap=1)
    with pytest.raises(ValueError):
        Backoff(first=2, cap=1)


def test_a_reconnects_retry_is_decided_once_per_attempt_and_bounded_by_count_and_time():
    """The recording asks first, the flow after it, later: one answer per attempt, so the close record of a failed
    attempt says what the client did (`retry`); no attempt past max_attempts, none starting at or past give_up_at."""
    retries = ReconnectRetries(max_attempts=3, give_up_at=100.0)
    retries.attempt()
    assert retries.failed(1.0) is True and 1.05 <= retries.retry_at <= 1.1
    at = retries.retry_at
    assert retries.failed(99.0) is True and retries.retry_at == at  # asked again later: the same answer
    retries.attempt()
    assert retries.failed(2.0) is True and 2.1 <= retries.retry_at <= 2.2
    retries.attempt()
    assert retries.failed(3.0) is False  # the third of 3

    retries = ReconnectRetries(max_attempts=10, give_up_at=1.0)
    retries.attempt()
    assert retries.failed(0.85) is True  # the next at 0.9-0.95: before the give-up time
    retries = ReconnectRetries(max_attempts=10, give_up_at=1.0)
    retries.attempt()
    assert retries.failed(0.96) is False  # the next would start at 1.01 or later


def test_the_first_attempt_after_a_loss_is_fully_jittered_within_the_time_the_attempts_have():
    """Full jitter: anywhere in [0, first) after the loss, not at once for every user (a thundering herd on a server
    that dropped them all); never at or past the give-up time (a reconnect_timeout shorter than `first`)."""
    waits = [ReconnectRetries(max_attempts=3, give_up_at=110.0, lost_at=100.0).retry_at - 100.0 for _ in range(200)]
    assert all(0 <= w < 0.1 for w in waits)
    assert max(waits) - min(waits) > 0.05  # spread over the window (200 draws: below half of it ~never)
    short = [ReconnectRetries(max_attempts=3, give_up_at=100.01, lost_at=100.0).retry_at for _ in range(200)]
    assert all(100.0 <= at < 100.01 for at in short)


def test_the_first_attempt_falls_before_the_deadline_of_every_chat_that_lost_the_connection():
    """A chat whose deadline is less than the window away (its connection lost 0.01 s before it) gets its first
    attempt before that deadline, however its sharers' deadlines (parallel_chats) fall: drawn past it, the chat gave up
    without a single attempt (flow.ChatFlow._back_off), "reconnecting failed" with none made. FAILED on the code
    before: the wait was drawn over [0, 0.1 s) whatever the chat's deadline."""
    for first_until in (100.01, 130.0):  # the chat that noticed the loss first: this one, or one with a later deadline
        draws = []
        for _ in range(200):
            retries = ReconnectRetries(max_attempts=3, give_up_at=130.0, lost_at=100.0)
            retries.join(object(), first_until)
            retries.join(object(), 100.01)
            draws.append(retries.retry_at)
        assert all(100.0 <= at < 100.01 for at in draws), max(draws)
    retries = ReconnectRetries(max_attempts=3, give_up_at=130.0, lost_at=100.0)
    retries.attempt()  # an attempt under way: a chat that notices the loss only now takes that one (no new draw)
    retries.join(object(), 100.01)
    assert retries.pending and retries.attempts == 1


def test_an_answer_refusing_the_credentials_is_never_retried_and_a_plain_1008_is():
    # The decision is by codes (HTTP status, close code, the AUTH_FAILED frame), never a close reason's text.
    from harness.transports import ConnectFailed

    refusals = {ConnectFailed("auth_failed", "x", status=401): "HTTP 401",
                ConnectFailed("auth_failed", "x", status=403): "HTTP 403",
                ConnectFailed("auth_failed", "x", close_code=4401): "close code 4401",
                ConnectFailed("auth_failed", "x", close_code=4403): "close code 4403",
                ConnectFailed("auth_failed", "x", close_code=1008, auth_frame="AUTH_FAILED"): "AUTH_FAILED"}
    for answer, how in refusals.items():
        r = ReconnectRetries(max_attempts=10, give_up_at=100.0)
        r.attempt()
        assert r.failed(1.0, answer) is False and r.gave_up and r.refused == how
        assert r.failed(1.0, None) is False  # decided once per attempt
    for answer in (ConnectFailed("auth_failed", "unauthorized", close_code=1008), ConnectFailed("refused", "x", status=503),
                   ConnectFailed("protocol_error", "forbidden 4401", status=400), None):
        r = ReconnectRetries(max_attempts=10, give_up_at=100.0)
        r.attempt()
        assert r.failed(1.0, answer) is True and r.refused is None


def test_retry_after_puts_the_next_attempt_no_sooner_and_past_the_bound_gives_up_without_waiting():
    from harness.transports import ConnectFailed

    r = ReconnectRetries(max_attempts=10, give_up_at=100.0)
    r.attempt()
    assert r.failed(1.0, ConnectFailed("refused", "x", status=503, retry_after=7.0)) is True
    assert r.retry_at >= 8.0
    r.attempt()
    assert r.failed(9.0, ConnectFailed("protocol_error", "x", status=429, retry_after=200.0)) is False
    assert r.gave_up and r.refused is None
