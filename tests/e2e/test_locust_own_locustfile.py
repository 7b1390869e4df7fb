"""A locustfile of the user's own, as Locust users write them: a ChatUser subclass with its own tasks and weight next
to a plain HttpUser, each class with its own `host` (no --host, which Locust would give every class). Real Locust,
agentsim and a small HTTP server, loopback only."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .conftest import start_on_free_port
from .test_locust import SUMMARY, csv_row, finish, locust_bin

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

LOCUSTFILE = '''
import os
from locust import HttpUser, constant, task
from harness.locust_user import ChatUser

class Chatter(ChatUser):
    host = os.environ["CHAT_HOST"]
    weight = 3

    @task(3)
    def ask(self):
        self.play()

class Site(HttpUser):
    host = os.environ["SITE_HOST"]
    weight = 1
    wait_time = constant(0.2)

    @task
    def page(self):
        self.client.get(os.environ["SITE_PATH"])
'''


class _Site(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/ok" else 500
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok" if status == 200 else b"no")

    def log_message(self, *args) -> None:
        pass


@contextmanager
def site() -> Iterator[str]:
    """An HTTP server on loopback: /ok answers 200, anything else 500 → its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def own_locustfile(tmp_path: Path) -> str:
    path = tmp_path / "mine.py"
    path.write_text(LOCUSTFILE)
    return str(path)


def test_a_chat_user_with_its_own_host_runs_next_to_an_http_user(procs, agentsim, tmp_path: Path):
    """FAILED on the old code: without --host, "chatprobe: error: --host: give the ws:// or wss:// URL", exit 2; and
    --host would have given the HttpUser the ws:// URL too."""
    _, url, env = agentsim()
    prefix = tmp_path / "mixed"
    with site() as base:
        proc = procs.start("locust", [
            locust_bin(), "-f", own_locustfile(tmp_path), "--headless", "-u", "4", "-r", "4", "--run-time", "4s",
            "--csv", str(prefix)],
            env={"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"], "CHAT_HOST": url, "SITE_HOST": base,
                 "SITE_PATH": "/ok"})
        assert finish(proc) == 0, proc.tail(60)
    summary = SUMMARY.search(proc.out())
    assert summary is not None and summary["verdict"] == "objectives met", proc.tail(60)
    chat = csv_row(prefix, "chat", "basic")
    assert int(chat["Request Count"]) == int(summary["chats"]) > 0, (chat, summary[0])
    page = csv_row(prefix, "GET", "/ok")
    assert int(page["Request Count"]) > 0 and int(page["Failure Count"]) == 0, page


def test_failed_requests_of_another_user_class_exit_as_locust_says_when_the_objectives_are_met(procs, agentsim,
                                                                                                tmp_path: Path):
    """The objectives judge the chats; the HttpUser's failed requests are Locust's to judge (--exit-code-on-error).
    FAILED on the old code: exit 0, the failures at the master ignored. Distributed: the worker's user classes have
    their own hosts too."""
    _, url, env = agentsim()
    with site() as base:
        hosts = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"], "CHAT_HOST": url, "SITE_HOST": base,
                 "SITE_PATH": "/broken"}
        locustfile = own_locustfile(tmp_path)
        master, master_port = start_on_free_port(procs, "master", lambda port: [
            locust_bin(), "-f", locustfile, "--master", "--headless", "--expect-workers", "1",
            "--expect-workers-max-wait", "30", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
            "-u", "4", "-r", "4", "--run-time", "4s", "--exit-code-on-error", "4"], env=hosts)
        worker = procs.start("worker", [locust_bin(), "-f", locustfile, "--worker", "--master-host", "127.0.0.1",
                                        "--master-port", str(master_port)], env=hosts)
        assert finish(master) == 4, master.tail(60)
        finish(worker, 30)
    summary = SUMMARY.search(master.out())
    assert summary is not None and summary["verdict"] == "objectives met" and int(summary["chats"]) > 0, \
        master.tail(60)
    assert "request(s) chatprobe does not judge failed" in master.out(), master.tail(60)


HOOKS_LOCUSTFILE = '''
from harness.locust_user import ChatUser

class Mine(ChatUser):
    def on_start(self):  # Locust's own hook, overridden without super() as Locust users do
        self.greeting = "hi"

    def on_stop(self):
        self.greeting = None
'''
# The same hooks from a mixin before ChatUser, as a team shares its login between its user classes.
MIXIN_LOCUSTFILE = '''
from harness.locust_user import ChatUser

class Login:
    def on_start(self):
        self.greeting = "hi"

    def on_stop(self):
        self.greeting = None

class Mine(Login, ChatUser):
    pass
'''


@pytest.mark.parametrize("locustfile", [HOOKS_LOCUSTFILE, MIXIN_LOCUSTFILE], ids=["own", "mixin"])
def test_a_chat_user_whose_class_overrides_on_start_and_on_stop_still_chats(procs, agentsim, tmp_path: Path,
                                                                             locustfile: str):
    """FAILED on the old code: the chat session was set up in ChatUser.on_start, so a subclass's own on_start (no
    super(): Locust's User.on_start does nothing) left none: AttributeError tracebacks, 0 chats, exit 1. The same
    with the hooks from a mixin (FAILED before its fix: only the class's own were wrapped)."""
    _, url, env = agentsim()
    (tmp_path / "hooks.py").write_text(locustfile)
    proc = procs.start("locust", [
        locust_bin(), "-f", str(tmp_path / "hooks.py"), "--headless", "-u", "2", "-r", "2", "--run-time", "3s",
        "--host", url], env={"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]})
    assert finish(proc) == 0, proc.tail(60)
    summary = SUMMARY.search(proc.out())
    assert summary is not None and summary["verdict"] == "objectives met" and int(summary["chats"]) > 0, proc.tail()
    assert "Traceback" not in proc.err(), proc.tail(60)


PATIENT_LOCUSTFILE = '''
from harness.backoff import Backoff
from harness.locust_user import ChatUser

class Patient(ChatUser):
    def on_start(self):
        self.backoff = Backoff(first=20, cap=20)  # 10 to 20 s after the first refused connection
'''


def test_a_user_backing_off_is_stopped_at_once_whatever_the_stop_timeout(procs, refused_port, tmp_path: Path):
    """Locust lets a user finish its task within --stop-timeout but stops one that waits at once. FAILED on the old
    code: the backoff slept inside the task, so the stop waited it out (10 to 20 s here) and the user connected once
    more after the run had ended (2 chats, not 1)."""
    (tmp_path / "patient.py").write_text(PATIENT_LOCUSTFILE)
    proc = procs.start("locust", [
        locust_bin(), "-f", str(tmp_path / "patient.py"), "--headless", "-u", "1", "-r", "1", "--run-time", "2s",
        "--stop-timeout", "60", "--host", f"ws://127.0.0.1:{refused_port()}/ws", "--chatprobe-auth", "none",
        "--exit-code-on-error", "0"])
    assert finish(proc) == 3, proc.tail(60)
    summary = SUMMARY.search(proc.out())
    assert summary is not None and summary["verdict"] == "UNREACHABLE" and summary["chats"] == "1", proc.tail(60)
