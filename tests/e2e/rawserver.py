"""A raw TCP server for hostile-server tests of the Locust user: a thread accepts on 127.0.0.1, a thread per
connection runs the subclass's `serve`, and leaving the `with` stops accepting and joins every thread (bounded)."""
from __future__ import annotations

import socket
import threading
from typing import Self


class ThreadedRawServer:
    def __init__(self, scheme: str, path: str) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.url = f"{scheme}://127.0.0.1:{self.listener.getsockname()[1]}{path}"
        self.stopped = threading.Event()
        self.threads: list[threading.Thread] = []
        self.connections = 0

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    @staticmethod
    def read_head(conn: socket.socket) -> bytes | None:
        """A request's bytes up to the end of its head (and what came with it), None if the client left first."""
        got = b""
        while b"\r\n\r\n" not in got:
            data = conn.recv(65536)
            if not data:
                return None
            got += data
        return got

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                self.serve(conn)
            except OSError:
                pass  # the client went away

    def __enter__(self) -> Self:
        thread = threading.Thread(target=self._accept, daemon=True)
        self.threads.append(thread)
        thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.listener.close()
        for thread in self.threads:
            thread.join(10)
