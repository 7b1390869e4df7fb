"""The Locust user's backoff policy: doubling from the first delay, capped, jittered within [half, all], and reset
by a success."""
from __future__ import annotations

import random

import pytest

from harness.backoff import Backoff


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
