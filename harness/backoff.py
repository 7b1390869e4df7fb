"""How long a load user waits after its connections failed: exponential, capped, jittered, reset by a success."""
from __future__ import annotations

import random

# The first wait after a failed connection, doubled per failure in a row up to the cap.
BACKOFF_FIRST = 0.1
BACKOFF_CAP = 5.0


class Backoff:
    """Failures in a row → a delay: between half and all of first * 2^(failures-1), capped. The jitter keeps users
    that failed together from retrying in step. (Two lines of arithmetic: a retry library would want to own the
    call being retried, and under Locust, Locust owns the loop.)"""

    def __init__(self, first: float = BACKOFF_FIRST, cap: float = BACKOFF_CAP,
                 rng: random.Random | None = None) -> None:
        if not (0 < first <= cap):
            raise ValueError("backoff: need 0 < first <= cap")
        self.first, self.cap = first, cap
        self.failures = 0
        self.rng = rng or random.Random()

    def failed(self) -> None:
        self.failures += 1

    def succeeded(self) -> None:
        self.failures = 0

    def ceiling(self) -> float:
        """The longest the next delay can be (0 after a success)."""
        if not self.failures:
            return 0.0
        return min(self.cap, self.first * 2.0 ** min(self.failures - 1, 64))

    def delay(self) -> float:
        ceiling = self.ceiling()
        return ceiling * self.rng.uniform(0.5, 1.0) if ceiling else 0.0
