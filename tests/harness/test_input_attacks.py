"""Inputs a careless or hostile user, CI config or checked-in file gives: each is a usage error (exit 2, one line
naming the file, line and field, or the flag) before any traffic is sent, and never a traceback."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from .test_cli_ux import run_cli
from .test_config_refusals import one_error

NETRA = Path(__file__).parents[2] / "harness" / "profiles" / "netra.yaml"


class Listener:
    """A loopback port that takes connections and never answers: what connected to it is counted at the end."""

    def __enter__(self) -> Listener:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        return self

    def accepted(self) -> int:
        n = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return n
            conn.close()
            n += 1

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


@pytest.mark.parametrize("path", ["http://evil.example/x", "ws", "/ws\\x00", "/w s", "/ws#top", "/wß"])
def test_a_profile_path_that_is_no_url_path_exits_2_naming_the_field_before_connecting(tmp_path, path):
    # FAILED on the old code: the profile's `path` was appended to a --target URL without a path as written, so
    # `path: http://evil.example/x` made `ws://127.0.0.1:PORThttp://…`, a traceback out of the port, and a NUL or a
    # space went onto the request line (the chat an error, exit 1), a connection made for nothing.
    text = NETRA.read_text().replace("path: /ws", f'path: "{path}"')
    assert f'path: "{path}"' in text
    profile = tmp_path / "p.yaml"
    profile.write_text(text)
    line = text[:text.index("path: ")].count("\n") + 1
    with Listener() as server:
        proc = run_cli("run", "basic", "--target", f"ws://127.0.0.1:{server.port}", "--profile", str(profile),
                       "--auth", "none", timeout=60)
        one_error(proc, f"p.yaml:{line}: field 'path'", "starts with /")
        assert server.accepted() == 0


@pytest.mark.parametrize("argv, flag", [
    (["run", "basic", "--target", "ws://127.0.0.1:0/ws"], "--target"),
    (["run", "basic", "--target", "http://127.0.0.1:00"], "--target"),
    (["run", "basic", "--pushgateway", "127.0.0.1:0"], "--pushgateway"),
    (["proxy", "--upstream", "ws://127.0.0.1:0", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
     "--upstream"),
])
def test_port_0_in_a_server_url_exits_2_naming_the_flag(argv, flag):
    # FAILED on the old code: a connection to port 0 fails (ECONNREFUSED or EADDRNOTAVAIL), so a typo'd or templated
    # port (`:${PORT:-0}`) was every chat `unreachable`, exit 3, the proxy's every user's connection, the push a warning.
    one_error(run_cli(*argv, timeout=60), flag, "port 0")


def test_port_0_in_a_monitor_configs_url_exits_2_naming_file_line_and_field(tmp_path):
    config = tmp_path / "m.yaml"
    config.write_text("targets:\n  a:\n    url: ws://127.0.0.1:0/ws\n")
    one_error(run_cli("monitor", "--config", str(config), "--once", timeout=60),
              "m.yaml:3: field 'targets.a.url'", "port 0")
