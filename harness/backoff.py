"""How long a load user waits after its connections failed: exponential, capped, jittered, reset by a success."""
from __future__ import annotations

import os
import random
import time
from typing import Any, Protocol

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

    def first_delay(self, within: float = float("inf")) -> float:
        """The wait before the first attempt after a connection that worked was lost, less than `within` (the time
        the attempts have): "full jitter" (AWS, "Exponential Backoff And Jitter"), anywhere in [0, first). Users
        whose connections a restarting server dropped at one instant all lose them together: an attempt at once (no
        wait) sent them all back at that same instant, a thundering herd on a server that is coming up. Full jitter
        spreads them over the whole window, so the widest spread for the ceiling, and the shortest wait on average
        (first / 2) for the lone user whose connection a load balancer's idle timeout cut, which one attempt fixes.
        Equal jitter ([first / 2, first], as `delay` draws after a failed attempt: the server has just refused, and
        the floor keeps the retry from coming straight back) would make every lost connection wait half the window
        for nothing."""
        return min(self.first, within) * self.rng.random()


# The answers to a reconnect (or a resend's new connection) that refuse the client's credentials: retrying with the
# same credentials only hammers the auth service, so the chat ends at once with the auth outcome, no further attempt.
# Decided by the codes, never by a close reason's text (the server's, which may say anything): HTTP 401/403 at the
# handshake (or the SSE request), the application close codes "unauthorized" and "forbidden" (4401, 4403), and an
# AUTH_FAILED session error frame. A plain 1008 (policy violation) says nothing of credentials: retried as any.
CREDENTIAL_STATUSES = frozenset({401, 403})
CREDENTIAL_CLOSE_CODES = frozenset({4401, 4403})
# The HTTP statuses whose Retry-After header the next attempt honours (RFC 9110 10.2.3), and the longest wait it may
# ask for: past it the value is capped (an absurd one, a date years ahead). The wait is bounded by the chat's deadline
# and reconnect_timeout anyway: one past them ends the chat as running out of attempts does, without waiting.
RETRY_AFTER_STATUSES = frozenset({429, 503})
MAX_RETRY_AFTER = 600.0


# What a chat whose reconnect was refused for the credentials is told (its `error`, auth_failed), live and in `check`.
CREDENTIALS_REFUSED = "the server rejected the credentials ({})"


def credentials_refusal(status: int | None, close_code: int | None, auth_frame: str | None) -> str | None:
    """How a failed attempt's answer refused the credentials ("HTTP 401", "close code 4401", the AUTH_FAILED frame's
    code), or None when it did not (it is retried): the one decision for every driver and for `chatprobe check` of a
    recording (its failure record's status, close code and session error)."""
    if status in CREDENTIAL_STATUSES:
        return f"HTTP {status}"
    if close_code in CREDENTIAL_CLOSE_CODES:
        return f"close code {close_code}"
    return auth_frame or None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header's value as seconds to wait (RFC 9110 10.2.3: delta-seconds, or an HTTP-date, read with
    email.utils against `now`, the wall clock): at most MAX_RETRY_AFTER, 0 for a date past; None when absent or
    unreadable (then the backoff alone decides)."""
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > 64:
        return None
    if text.isascii() and text.isdigit():  # (RFC 9110's DIGIT: str.isdigit alone takes "²" or "٣", float() not all)
        return min(float(text), MAX_RETRY_AFTER)
    import email.utils  # (only for a date: most answers give none, or seconds)

    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # (-0000: RFC 2822's "unknown zone"; an HTTP-date is GMT)
        return None
    wait = when.timestamp() - (time.time() if now is None else now)
    return min(max(wait, 0.0), MAX_RETRY_AFTER)


class AttemptAnswer(Protocol):
    """What a failed attempt's answer says for retrying it (transports.ConnectFailed carries it)."""

    @property
    def refusal(self) -> str | None: ...

    @property
    def retry_after(self) -> float | None: ...


# Every chat's reconnect retries draw their jitter from one generator, not one each (a Random's state is ~2.5 KB).
# Unseeded, as the think times (scenario._THINK_RNG); seeded anew in a forked child (Locust's --processes), or every
# worker would draw the parent's sequence: the same waits in step across workers.
_RETRY_RNG = random.Random()
os.register_at_fork(after_in_child=_RETRY_RNG.seed)


class ReconnectRetries:
    """One lost connection's reconnect attempts, decided from data only: when the first is due (a fully jittered
    wait after the loss, Backoff.first_delay), and after a failed attempt, whether another follows and when (Backoff's
    capped, jittered exponential delay), until one connects, `max_attempts` were made, or
    the next would start at or past `give_up_at` (clock time: the chat's own deadline or the scenario's
    reconnect_timeout after the loss, the earlier). The one decision for every driver (flow.ChatFlow plays it for the
    asyncio Session and the Locust user's SyncSession alike); a recording asks it at the failure it records, so the
    close record says whether the client tried again (`chatprobe check` judges the chat as live did).

    Shared by every chat that lost connection `generation` (parallel_chats): one attempt at a time for all of them,
    not one each (`take`), one count, one schedule; `members` are their flows, each attempt's failure counted on the
    oldest still reconnecting (as `chatprobe check` counts it on the oldest chat it keeps for that user's resume)."""

    __slots__ = ("max_attempts", "give_up_at", "backoff", "attempts", "retry_at", "_decided", "generation",
                 "members", "pending", "_limit", "_latest", "_lost_at", "refused")

    def __init__(self, max_attempts: int, give_up_at: float, generation: int = 0, lost_at: float = 0.0) -> None:
        self.max_attempts = max_attempts
        self.give_up_at = give_up_at
        self.backoff = Backoff(rng=_RETRY_RNG)
        self.attempts = 0
        # When the next attempt is due: the first, a fully jittered wait after the loss (`lost_at`,
        # Backoff.first_delay) within the time the attempts have (reconnect_timeout, and each member's deadline:
        # `join`); after a failed one that is retried, its backoff.
        self._lost_at = lost_at
        self.retry_at = lost_at + self.backoff.first_delay(give_up_at - lost_at)
        self._decided: bool | None = None  # the current attempt failed: whether another follows
        self.pending = False  # an attempt is under way (started, not yet known to have failed or connected)
        self.generation = generation  # the connection lost
        self.members: list[Any] = []  # the flows (flow.ChatFlow) reconnecting after it, in the order they noticed
        self._limit = give_up_at  # reconnect_timeout after the loss
        # How the last attempt's answer refused the credentials (credentials_refusal): none follows, and the chats
        # end with the auth outcome, not as lost for want of a reconnect. None: not refused so.
        self.refused: str | None = None
        self._latest = float("-inf")  # the latest deadline of a member

    def join(self, flow: Any, until: float) -> None:
        """A chat that lost the connection reconnects with these attempts; `until`: its deadline. Attempts go on while
        a member's deadline allows (each member gives up at its own), within reconnect_timeout of the loss."""
        self.members.append(flow)
        self._latest = max(self._latest, until)
        self.give_up_at = min(self._limit, self._latest)
        if self.attempts == 0 and not self.pending and self.retry_at >= until > self._lost_at:
            # The first wait was drawn past this chat's deadline (less than the window was left of it): drawn again
            # within what is left, or the chat gave up without a single attempt, "reconnecting failed" with none made,
            # against a server that would have resumed its run. (Uniform over what is left, as the first draw was.)
            self.retry_at = self._lost_at + self.backoff.first_delay(until - self._lost_at)

    def attempt(self) -> None:
        """An attempt starts."""
        self.attempts += 1
        self._decided = None
        self.pending = True

    def take(self, seen: int) -> bool:
        """Whether a chat that asked to reconnect when `seen` attempts had been made makes the next one (it starts);
        False when another chat made one since (it failed: the connection is still lost), which is its outcome too."""
        if self.attempts != seen:
            return False
        self.attempt()
        return True

    @property
    def gave_up(self) -> bool:
        """The last attempt failed and none follows."""
        return self._decided is False

    def failed(self, now: float, answer: AttemptAnswer | None = None) -> bool:
        """The current attempt failed at `now`, answered `answer` (None: no answer known): True when another follows
        (at `retry_at`). None follows an answer that refused the credentials (`refused`); an answer's Retry-After puts
        the next no earlier than that (past the give-up time: none follows, without waiting). Decided once per
        attempt: asked again (the recording asked first, another chat sharing it), the answer is the same."""
        if self._decided is None:
            self.pending = False
            if answer is not None and (refused := answer.refusal) is not None:
                self.refused = refused
                self._decided = False
                return False
            self.backoff.failed()
            self.retry_at = now + self.backoff.delay()
            if answer is not None and (after := answer.retry_after) is not None:
                self.retry_at = max(self.retry_at, now + after)
            self._decided = self.attempts < self.max_attempts and self.retry_at < self.give_up_at
        return self._decided
