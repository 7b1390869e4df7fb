"""A chat server that accepts every user and then answers none of them, under Locust: the run's end stops the users
with their chats in flight, which are in no verdict (Locust's default --stop-timeout 0), so the summary counts 0
chats; a line must say that chats were tried and left unanswered, in one process and, through the workers' reports,
at a distributed run's master. Real Locust processes and agentsim, loopback only."""
from __future__ import annotations

import re

import pytest

from .test_locust import LOCUSTFILE, SUMMARY, finish, locust_bin
from .test_locust_distributed import headless_master, start_worker

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

# The run's first event held far past the run's end: every chat is in flight, with no event, when the users stop.
HUNG = ["delay_first=600s@1.0"]
LEFT = re.compile(r"^chatprobe: (\d+) chat\(s\) still in flight when the users stopped were abandoned, (\d+) of them "
                  r"with no event yet: in neither Locust's stats nor the verdict \(--stop-timeout lets chats finish\)$",
                  re.M)


def test_a_server_that_answers_no_user_is_said_not_only_zero_chats(procs, agentsim):
    """FAILED on the old code: the run said only `basic: 0 chats, 0 passed, ... OBJECTIVES FAILED` with every
    objective `n/a`, as if no chat had been tried; the two chats sent and never answered were in no line."""
    _, url, env = agentsim(faults=HUNG)
    proc = procs.start("locust", [locust_bin(), "-f", LOCUSTFILE, "--headless", "-u", "2", "-r", "2", "--run-time",
                                  "4s", "--host", url, "--chatprobe-scenario", "basic"],
                       env={"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]})
    assert finish(proc) == 1, proc.tail(60)
    summary = SUMMARY.search(proc.out())
    assert summary is not None and summary["chats"] == "0" and summary["verdict"] == "OBJECTIVES FAILED", proc.tail()
    left = LEFT.search(proc.out())
    assert left is not None and left.groups() == ("2", "2"), proc.tail(60)


def test_a_distributed_masters_summary_says_the_chats_its_workers_left_unanswered(procs, agentsim):
    """The worker's final report carries the chats it stopped in flight; the master says them. FAILED on the old
    code: the master's summary said 0 chats and nothing more."""
    _, url, env = agentsim(faults=HUNG)
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    master, master_port = headless_master(procs, url, secret, "--chatprobe-scenario", "basic")
    worker = start_worker(procs, master_port, secret)
    assert finish(master) == 1, master.tail(60)
    finish(worker, 30)
    summary = SUMMARY.search(master.out())
    assert summary is not None and summary["chats"] == "0", master.tail(60)
    left = LEFT.search(master.out())
    assert left is not None and left.groups() == ("2", "2"), master.tail(60)
    assert LEFT.search(worker.out()) is None, worker.tail()  # (a worker says no verdict of its own)
