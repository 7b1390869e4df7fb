"""`chatprobe run --pushgateway URL --job NAME`: one scenario's metrics in their own registry, pushed after the run.

Follows the Pushgateway's advice for batch jobs: one group per job + scenario + target, replaced by each run,
with `chatprobe_last_run_timestamp_seconds`, and `chatprobe_last_success_timestamp_seconds` kept from the last
successful run when this one failed.
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, push_to_gateway, pushadd_to_gateway

from harness.redact import clean
from harness.sinks import Sink

from .metrics import PREFIX, ChatMetrics, MetricsSink

if TYPE_CHECKING:
    from harness.checker import ChatResult
    from harness.events import Event, Violation

PUSH_TIMEOUT = 10.0
LAST_SUCCESS = f"{PREFIX}_last_success_timestamp_seconds"


class _Without:
    """A registry view without some metric families (what pushadd must leave untouched on the gateway)."""

    def __init__(self, registry: CollectorRegistry, names: set[str]) -> None:
        self._registry = registry
        self._names = names

    def collect(self) -> Iterable:
        return (family for family in self._registry.collect() if family.name not in self._names)


def _within(seconds: float, call: Callable[[], None]) -> None:
    """`call()` given `seconds` in all, or TimeoutError. urllib's timeout bounds each read and write, not the
    exchange: a gateway (or a proxy before it) answering a byte at a time, each within it, would hold the run
    after its verdict for as long as it went on. The call runs on a daemon thread, left behind past the deadline
    (the process is about to exit; its socket goes with it)."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the caller
            failed.append(exc)

    thread = threading.Thread(target=run, name="chatprobe-push", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no whole answer within {seconds:g}s")
    if failed:
        raise failed[0]


def _redacted(url: str) -> str:
    try:
        parts = urlsplit(url if "://" in url else "http://" + url)
        host = parts.hostname or url
        return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"
    except ValueError:  # (`run` checks --pushgateway before the run: a caller of its own may not have)
        return "(a URL that does not parse)"


class PushSink(Sink):
    """Records one scenario of a `chatprobe run` (source `synthetic`) and pushes it to a Pushgateway."""

    def __init__(self, target_name: str, scenario_name: str, *, stderr: TextIO | None = None) -> None:
        self.registry = CollectorRegistry()
        self.metrics = ChatMetrics(self.registry)
        self.sink = MetricsSink(self.metrics, target_name, "synthetic")
        self.target = self.sink.target  # the bounded label value, also used in the grouping key
        self.scenario = scenario_name
        self.success: bool | None = None
        self._stderr = stderr

    # -- Sink: record through the one MetricsSink --
    def chat_started(self, scenario: str) -> None:
        self.sink.chat_started(scenario)

    def event_received(self, scenario: str, event: "Event") -> None:
        self.sink.event_received(scenario, event)

    def chat_finished(self, result: "ChatResult") -> None:
        self.sink.chat_finished(result)

    def chat_abandoned(self, scenario: str) -> None:
        self.sink.chat_abandoned(scenario)

    def chat_dropped(self, scenario: str) -> None:
        self.sink.chat_dropped(scenario)

    def connection_attempt(self, scenario: str, result: str) -> None:
        self.sink.connection_attempt(scenario, result)

    def connection_violation(self, scenario: str, violation: "Violation") -> None:
        self.sink.connection_violation(scenario, violation)

    def reconnect(self, scenario: str, result: str) -> None:
        self.sink.reconnect(scenario, result)

    def run_finished(self, success: bool) -> None:
        self.success = success
        self.sink.run_finished(success)

    # -- pushing --
    def grouping_key(self) -> dict[str, str]:
        return {"scenario": self.scenario, "target": self.target}

    def push(self, url: str, job: str, *, timeout: float = PUSH_TIMEOUT,
             handler: Callable | None = None) -> bool:
        """Push this run's group; a failure prints one line to stderr and returns False, never raises.

        `timeout` bounds the whole push (connection, request, answer). A successful run replaces the whole group
        (PUT). A failed one replaces every metric but the last-success timestamp (POST without that family), so the
        gateway keeps the time of the last run that passed.
        """
        kwargs: dict[str, Any] = {"handler": handler} if handler is not None else {}

        def send() -> None:
            if self.success:
                push_to_gateway(url, job=job, registry=self.registry, grouping_key=self.grouping_key(),
                                timeout=timeout, **kwargs)
            else:
                pushadd_to_gateway(url, job=job, registry=_Without(self.registry, {LAST_SUCCESS}),
                                   grouping_key=self.grouping_key(), timeout=timeout, **kwargs)

        try:
            _within(timeout, send)  # the timeout bounds the whole push, not each read of it
        except Exception as exc:  # URLError, HTTPError, OSError, ValueError: the run's verdict must stand
            # The reason phrase is the gateway's own text (anything, escape sequences included): cleaned.
            reason = getattr(exc, "reason", None) or exc
            print(f"chatprobe: warning: could not push scenario {clean(repr(self.scenario))} to the Pushgateway at "
                  f"{clean(_redacted(url), 300)}: {clean(reason, 300)} (the run's verdict and exit code are unchanged)",
                  file=self._stderr or sys.stderr)
            return False
        return True


def push_all(sinks: list[PushSink], url: str, job: str, *, timeout: float | None = None,
             stderr: TextIO | None = None) -> int:
    """Push every scenario's group within `timeout` in all (PUSH_TIMEOUT): each push has what the ones before it left,
    so a gateway that takes connections and never answers holds a run of many scenarios after its verdict no longer
    than a run of one (it held it PUSH_TIMEOUT per scenario). A failed push warns in one line; the groups left when
    the time is up are not tried, and one more line says how many. → the number of groups pushed."""
    total = PUSH_TIMEOUT if timeout is None else timeout
    deadline = time.monotonic() + total
    pushed = 0
    for i, sink in enumerate(sinks):
        left = deadline - time.monotonic()
        if left <= 0:
            names = ", ".join(clean(repr(s.scenario), 80) for s in sinks[i:i + 5])
            more = f" and {len(sinks) - i - 5} more" if len(sinks) - i > 5 else ""
            print(f"chatprobe: warning: {len(sinks) - i} scenario(s) not pushed to the Pushgateway at "
                  f"{clean(_redacted(url), 300)}: no time left of the {total:g}s for pushes ({names}{more}; the run's "
                  "verdict and exit code are unchanged)", file=stderr or sys.stderr)
            break
        pushed += sink.push(url, job, timeout=left)
    return pushed
