"""A TLS server in front of a plain one, on 127.0.0.1, for the TLS tests: `TlsFront(context, upstream_port)` accepts
connections, does the TLS handshake with `context` (a server context of a trustme CA: it may require a client
certificate), and relays the decrypted bytes to the plain server at `upstream_port` (on the same `host`) and back.

It runs on threads of its own (a thread per connection, every wait bounded by TIMEOUT), so that a client under test
on the asyncio loop, on plain threads or under gevent meets the same server. One thread relays both ways: an SSL
object used by two threads at once (one reading, one writing) is not safe in OpenSSL. A relayed connection is not cut
for being quiet (a chat on a busy machine may be quiet for longer than any wait here): it ends when either side
closes, or when the front is left (its sockets are shut then, which wakes the relay). A handshake that fails ends as a TLS server
ends it: the alert OpenSSL wrote (`certificate required`, `unknown ca`, ...) goes out, then the connection's write
side is shut and what the client still sends is read and dropped until it closes (a lingering close, as nginx's):
the client reads the alert, not a reset that would have lost it. `handshakes` lists each handshake's outcome ("ok",
or OpenSSL's reason); `peer_certs` the subject of each client certificate verified.
"""
from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import threading

TIMEOUT = 10.0


class TlsFront:
    def __init__(self, context: ssl.SSLContext, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.context, self.upstream_port, self.host = context, upstream_port, host
        self.handshakes: list[str] = []
        self.peer_certs: list[str] = []
        self._sock = socket.create_server((host, 0), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.port = self._sock.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> TlsFront:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # (wakes the accept: a close alone does not, on Linux)
        self._sock.close()
        with self._lock:
            for s in list(self._open):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
        self._thread.join(TIMEOUT)

    def _keep(self, s: socket.socket) -> socket.socket:
        with self._lock:
            self._open.add(s)
        return s

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(self._keep(conn),), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT)
        tls = self._keep(self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False))
        try:
            tls.do_handshake()
            # TLS 1.3: the client's certificate (or its absence) is judged once the client's last flight is read.
            first = tls.recv(65536)
        except (ssl.SSLError, OSError) as exc:
            self.handshakes.append(getattr(exc, "reason", None) or exc.__class__.__name__)
            with contextlib.suppress(OSError):
                tls.shutdown(socket.SHUT_WR)  # (drops the TLS layer: what follows reads the raw socket)
                while tls.recv(65536):
                    pass
            tls.close()
            return
        self.handshakes.append("ok")
        peer = tls.getpeercert()
        if peer:
            self.peer_certs.append(str(peer.get("subjectAltName") or peer.get("subject")))
        upstream = self._keep(socket.create_connection((self.host, self.upstream_port), timeout=TIMEOUT))
        try:
            upstream.sendall(first)
            self._relay(tls, upstream)
        except OSError:
            pass
        finally:
            for s in (tls, upstream):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _relay(tls: ssl.SSLSocket, upstream: socket.socket) -> None:
        """Bytes both ways until either side closes; each read is of a socket found readable (or of the TLS record
        already read), each write bounded by the sockets' TIMEOUT."""
        with selectors.DefaultSelector() as sel:
            sel.register(tls, selectors.EVENT_READ, (tls, upstream))
            sel.register(upstream, selectors.EVENT_READ, (upstream, tls))
            while True:
                # (decrypted bytes OpenSSL holds already are not the socket's: select would not see them)
                ready = [(tls, upstream)] if tls.pending() else [key.data for key, _ in sel.select(TIMEOUT)]
                for src, dst in ready:
                    try:
                        data = src.recv(65536)
                    except ssl.SSLWantReadError:  # (a part of a TLS record: the rest comes)
                        continue
                    if not data:
                        return
                    dst.sendall(data)
