"""An ASGI app (Starlette, FastAPI, an AG-UI framework's) served by uvicorn for a test: one way for every test that
stands a third-party web stack up on loopback."""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


@contextmanager
def uvicorn_on_loopback(app: Any, *, force_exit: bool = False, **config: Any) -> Iterator[int]:
    """`app` under uvicorn in a thread of its own, on a loopback socket that listens before the server starts (a
    client's connection waits in the backlog: nothing to poll for); its port. `config`: uvicorn.Config's settings
    (the WebSocket backend, deflate, pings...); `force_exit`: stop without waiting for open connections (WebSockets a
    test left open). Stopped at the end, and checked stopped."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(uvicorn.Config(app, **{"log_level": "warning", "lifespan": "off", **config}))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        server.force_exit = force_exit
        thread.join(15)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"
