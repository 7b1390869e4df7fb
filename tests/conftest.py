"""What every test shares. The suite runs on several pytest-xdist workers (scripts/test) on a machine shared with other
jobs: nothing here may depend on being alone on the loopback interface or on how fast the CPU is today."""
from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings

from harness import redact

pytest_plugins = ["pytester"]

# Hypothesis times two things by default: each example (`deadline`) and the first examples' generation (the `too_slow`
# health check). Both fail a property on a loaded machine whatever the code does; neither is part of what a property
# checks. Off for the whole suite; every other health check (data too large, too much filtering, ...) stays on.
settings.register_profile("chatprobe", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("chatprobe")


# Every pytest a test starts (pytester's, a team's project's, the README's example) autoloads the plugins of this
# virtualenv. LangSmith's, there with the AG-UI LangGraph server the integration tests serve, imports LangSmith's client
# at start-up: 1.3 s of such a run's 2.9 s (0.45 s of its 1 s of CPU), for the few dozen runs of the suite. No test is
# about it; chatprobe's own plugin loads as before. PYTEST_ADDOPTS for the runs started from this process's
# environment; pytester drops that variable, so its runs are told by `pytester.plugins` (below).
NO_LANGSMITH = "no:langsmith_plugin"


def pytest_configure(config: pytest.Config) -> None:
    addopts = os.environ.get("PYTEST_ADDOPTS", "")
    if f"-p {NO_LANGSMITH}" not in addopts:
        os.environ["PYTEST_ADDOPTS"] = f"{addopts} -p {NO_LANGSMITH}".strip()


@pytest.fixture
def pytester(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.plugins.append(NO_LANGSMITH)  # runpytest_subprocess passes each as `-p NAME`
    return pytester


# The process's secret registry (harness.redact): what one test registers (a token, a JWT secret) is scrubbed from
# whatever a later test on the same worker writes, pieces of it included. A test whose frames held a run of "x" lost it
# to an earlier test's "not-the-secret-xxxx…" JWT secret (its recording shrank to nothing, and its bound was never
# reached): the order the workers happened to run the tests in decided the outcome.
_REGISTRY = ("_fixed", "_fixed_bytes", "_minted", "_minted_sigs", "_fixed_matcher", "_minted_re", "_dirty",
             "_minted_dirty", "_minted_compiled_at")


@pytest.fixture(autouse=True)
def _secrets_registered_by_this_test_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the secrets registered before it (its fixtures' included) and leaves no other behind:
    the registry's containers are copies for the test's time, and every name is put back after it."""
    with redact._lock:
        for name in _REGISTRY:
            value = getattr(redact, name)
            monkeypatch.setattr(redact, name, value.copy() if isinstance(value, (set, dict)) else value)
    # The users' credentials a proxy in the test's process held (redact.SeenCredentials): a pool of the test's own.
    monkeypatch.setattr(redact, "_seen", redact.SeenCredentials())


@pytest.fixture
def refused_port() -> Iterator[Callable[[], int]]:
    """`refused_port()` → a loopback port where every connection is refused, for the whole test. A socket bound to it
    and never listening holds it: no other process can listen there (a port bound and released at once could be
    taken by another worker's server before the test connected, which then reached that server)."""
    held: list[socket.socket] = []

    def take() -> int:
        sock = socket.socket()  # no SO_REUSEADDR: no one else may bind the port while it is held
        held.append(sock)
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

    yield take
    for sock in held:
        sock.close()
