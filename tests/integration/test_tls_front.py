"""The TLS tests' own server (tls_front.TlsFront): a relayed connection is not cut for being quiet, whatever its
waits' bound; under a load of 10-15 on 2 cores a chat through it may be quiet longer than that bound."""
from __future__ import annotations

import socket
import ssl
import threading

import pytest
import trustme

from . import tls_front
from .tls_front import TlsFront

pytestmark = pytest.mark.timeout(60)


def test_a_quiet_connection_through_the_front_is_relayed_past_its_waits_bound(monkeypatch):
    """FAILED on the front before: each direction's relay read with the socket's 10 s timeout and ended the
    connection at it (`incomplete chunked read` for an SSE chat whose client had nothing more to send)."""
    monkeypatch.setattr(tls_front, "TIMEOUT", 0.2)
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    echo = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = echo.accept()
        with conn:
            conn.settimeout(30)
            while data := conn.recv(65536):
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with TlsFront(server, echo.getsockname()[1]) as front:
            with socket.create_connection(("127.0.0.1", front.port), timeout=30) as raw, \
                    client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"first")
                assert tls.recv(100) == b"first"
                # Quiet for several of the front's waits (0.2 s here), as a client reading a stream is.
                threading.Event().wait(1.0)  # wait-ok: the quiet that is what is tested
                tls.sendall(b"again")
                assert tls.recv(100) == b"again"
        assert front.handshakes == ["ok"]
    finally:
        echo.close()
        thread.join(30)
