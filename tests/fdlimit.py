"""Room for a test's sockets under a low default open-file limit: one helper for every test that opens many."""
from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def room_for_files(want: int) -> Iterator[None]:
    """This process's soft open-file limit raised to `want` (up to its hard limit) while the block runs, then put
    back; the test fails, naming the limit, when the hard limit is below `want`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.fail(f"the open-file limit ({hard}) is below the {want} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
