"""agentsim's WebSocket server: auth, chat runs, isolation, resume, fault injection and ground truth."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import ipaddress
import json
import logging
import math
import os
import random
import re
import sys
import threading
import time
import uuid
import warnings
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Self, TextIO
from urllib.parse import parse_qs, urlsplit

import jwt
import jwt.warnings
import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.typing import Subprotocol

from .agent import build_script, parse_latency
from .faults import AGUI_ONLY, FaultSpec, FaultSpecError, PlannedFault, parse_fault, plan_run_faults

if TYPE_CHECKING:
    from .agui import AguiSim

logger = logging.getLogger("agentsim")
# websockets logs request headers (the Authorization token) at DEBUG: keep its server log above that.
ws_logger = logging.getLogger("agentsim.websockets")
ws_logger.setLevel(logging.WARNING)
warnings.filterwarnings("ignore", category=jwt.warnings.InsecureKeyLengthWarning)

DEFAULT_JWT_SECRET = "chatprobe-dev-secret"
PROTOCOLS = ("netra", "ag-ui")
WS_PATHS = ("/ws", "/websocket")
CHAT_TYPES = ("user_message", "start_agent", "chat")
IGNORED_TYPES = ("pong", "heartbeat", "heartbeat_ack", "ack")
EXIT_CODE_FAULT = 3
# Longest a run waits to hand one event to one connection before it drops that connection.
SEND_TIMEOUT = 10.0
# Frames are queued on a connection without waiting while its transport holds less than this unsent; past it a
# send waits (within SEND_TIMEOUT) for the client to read, as websockets' own send() does past its write limit.
QUEUE_LIMIT = 64 * 1024
# A chat over a user's live-run quota, or while the server holds max_runs live runs, is refused with these.
QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
SERVER_BUSY = "SERVER_BUSY"


def _default_secret() -> str:
    return os.environ.get("AGENTSIM_JWT_SECRET") or DEFAULT_JWT_SECRET


# -- range checks of settings, shared with the command line (ValueError: a one-line reason) ----------------

def check_port(value: int) -> int:
    if not 0 <= value <= 65535:
        raise ValueError(f"port {value} is not between 0 and 65535")
    return value


# A host to bind: an IP address (an IPv6 one with its %scope), a host name, or "" (every interface). Checked up front:
# a NUL, a control character or a 300-character "name" is otherwise a traceback out of the resolver.
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")


def check_host(value: str) -> str:
    try:
        ipaddress.ip_address(value.strip("[]").partition("%")[0])
        return value
    except ValueError:
        pass
    if value == "" or len(value) <= 253 and _HOST_NAME.fullmatch(value):
        return value
    shown = repr(value) if len(value) <= 60 else repr(value[:60]) + "…"
    raise ValueError(f"{shown} is not an IP address or a host name")


def check_secret(value: str) -> str:
    if not value:  # HS256 with an empty key: anyone can mint a token for any user
        raise ValueError("an empty secret lets anyone mint a token; give a secret (or --no-auth)")
    return value


def check_protocol(value: str) -> str:
    if value not in PROTOCOLS:
        shown = repr(value) if len(value) <= 60 else repr(value[:60]) + "…"
        raise ValueError(f"expected one of {', '.join(PROTOCOLS)}, got {shown}")
    return value


def check_seconds(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"expected a finite, non-negative number of seconds, got {value!r}")
    return value


def check_positive(value: int) -> int:
    if value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value!r}")
    return value


def check_size(value: int) -> int:
    if value < 1:
        raise ValueError(f"expected a size of at least 1 byte, got {value!r}")
    return value


@dataclass
class SimConfig:
    """Everything agentsim can be told; the CLI and the YAML config both fill this."""

    host: str = "127.0.0.1"
    port: int = 8765
    no_auth: bool = False
    jwt_secret: str = field(default_factory=_default_secret)
    think: Any = 0.05  # seconds, "lo-hi" or (lo, hi)
    tool_latency: Any = 0.02
    seed: int | None = None
    faults: list[Any] = field(default_factory=list)  # FaultSpec or spec strings
    ground_truth: str | None = None
    resume_ttl: float = 300.0
    max_size: int = 1024 * 1024  # largest frame accepted from a client
    max_runs: int = 10000  # runs kept in all (live ones are never evicted; finished ones go oldest first)
    max_live_runs_per_user: int = 100  # one user's flood is refused past this, never paid for by other users
    max_runs_per_user: int = 1000  # runs one user keeps; past it that user's own oldest finished run goes
    max_events_per_run: int = 1000
    compression: bool = False
    allow_no_exp: bool = False  # accept tokens without an exp claim (tests only: such a token never expires)
    protocol: str = "netra"  # the wire dialect: netra (WebSocket) or ag-ui (HTTP POST + SSE, and WebSocket)

    def __post_init__(self) -> None:
        self.think = parse_latency(self.think)
        self.tool_latency = parse_latency(self.tool_latency)
        self.faults = [f if isinstance(f, FaultSpec) else parse_fault(f) for f in self.faults]
        for name, check in (("host", check_host), ("protocol", check_protocol), ("jwt_secret", check_secret),
                            ("port", check_port), ("resume_ttl", check_seconds), ("max_size", check_size),
                            ("max_runs", check_positive), ("max_live_runs_per_user", check_positive),
                            ("max_runs_per_user", check_positive), ("max_events_per_run", check_positive)):
            try:
                check(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost, or "" (every interface): may be reachable from afar
        return False


def security_warnings(config: SimConfig) -> list[str]:
    """One line per setting that makes this agentsim unsafe to expose, for the command line to print at start."""
    out = []
    if config.no_auth:
        out.append("--no-auth: any client can connect as any user (?user=NAME); use it only on a trusted machine")
    elif config.jwt_secret == DEFAULT_JWT_SECRET:
        out.append(f"the JWT secret is the built-in development secret {DEFAULT_JWT_SECRET!r}: anyone can mint a "
                   "token for any user; set --jwt-secret or AGENTSIM_JWT_SECRET")
    if config.allow_no_exp and not config.no_auth:
        out.append("--allow-no-exp: tokens without an exp claim are accepted and never expire; for tests only")
    if not _is_loopback(config.host):
        out.append(f"--host {config.host or '(every interface)'} is not loopback: agentsim, a test server, is "
                   "reachable from other machines")
    return out


def verify_token(config: SimConfig, token: str) -> tuple[str | None, str]:
    """(the token's user, "") or (None, why not); never puts the token in the reason."""
    # A token without exp is valid forever once leaked: refused unless a test asked for it.
    required = ["sub"] if config.allow_no_exp else ["sub", "exp"]
    try:
        claims = jwt.decode(token, config.jwt_secret, algorithms=["HS256"], options={"require": required})
    except jwt.ExpiredSignatureError:
        return None, "token expired"
    except jwt.MissingRequiredClaimError as exc:
        if exc.claim == "exp":
            return None, "token has no exp claim: a token that never expires is refused"
        return None, f"token has no {exc.claim} claim"
    except jwt.InvalidSignatureError:
        return None, "invalid token signature"
    except jwt.InvalidTokenError as exc:
        return None, f"invalid token ({type(exc).__name__})"
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        return None, "token has no usable sub claim"
    return sub, ""


# Seconds a ground truth file that is a FIFO may go without a reader before the server gives up starting: the
# answer chatprobe's reports give a FIFO nobody reads (harness/safefile.py STALL_TIMEOUT), said in the same words.
READER_DEADLINE = 60.0


def open_to_append(path: str) -> TextIO:
    """`path` opened to append text to, as open(path, "a") does, but never waiting for ever: a FIFO is opened
    without blocking, again until a reader has opened it (`mkfifo gt; agentsim --ground-truth gt & cat gt`), and an
    OSError (ENXIO) once READER_DEADLINE passes without one. Its writes then block as a file's do."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    deadline = time.monotonic() + READER_DEADLINE
    while True:
        try:
            fd = os.open(path, flags, 0o666)
            break
        except OSError as exc:  # ENXIO: a FIFO no process has open for reading (there is no call that waits for one)
            if exc.errno != errno.ENXIO:
                raise
            if time.monotonic() >= deadline:
                raise OSError(errno.ENXIO, f"no reader opened the FIFO within {READER_DEADLINE:g}s", path) from None
            time.sleep(0.05)
    try:
        os.set_blocking(fd, True)
        return open(fd, "a", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


class GroundTruth:
    """Append-only JSON-lines record of what the server really did, flushed per line."""

    def __init__(self, path: str | None) -> None:
        # Open for the server's whole life, closed by close(): no single block to put a `with` around.
        self._file = open_to_append(path) if path else None
        self.path = path
        # Why a write failed (a full disk, /dev/full, an I/O error): the file is closed then, and nothing more is
        # written; said once on stderr, and at start-up a usage error (_serve). It was a traceback out of every
        # connection's handler, and out of stop() too, which wrote once more.
        self.failed: OSError | None = None
        self._written = False  # (the first line is server_started: its failure is said by _serve, as a usage error)

    @property
    def enabled(self) -> bool:
        return self._file is not None

    def write(self, record: dict) -> None:
        if self._file is None:
            return
        record.setdefault("t", time.time())
        try:
            self._file.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
            self._file.flush()
        except OSError as exc:
            self.failed = exc
            self.close()
            if self._written:
                print(f"agentsim: warning: cannot write the ground truth file {self.path}: {exc.strerror or exc}; "
                      "nothing more is written to it", file=sys.stderr, flush=True)
        else:
            self._written = True

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):  # (what was buffered, when the write itself failed)
                file.close()


class Conn:
    __slots__ = ("connection_id", "open", "queued", "runs", "user_id", "ws")

    def __init__(self, ws: ServerConnection, connection_id: str, user_id: str) -> None:
        self.ws = ws
        self.connection_id = connection_id
        self.user_id = user_id
        self.runs: set[Run] = set()
        self.open = True
        self.queued = 0  # bytes of frames waiting in the protocol's buffer for flush()

    def queue(self, data: str | bytes) -> bool:
        """Put one frame on the connection without writing it yet; False when the connection is not open or the
        client is behind (the caller then sends with a deadline). websockets' send() writes every frame with its
        own send(2) and costs an asyncio.timeout per frame: at zero think time that was half of agentsim's CPU
        per chat. Queued on websockets' Sans-I/O protocol, a burst of frames leaves in one write (flush)."""
        ws = self.ws
        # What waits in the protocol's buffer counts too: the transport does not see it until flush(), and a
        # client that floods resumes and reads nothing would have every replay of a read queued at once.
        transport = ws.transport
        if (ws.protocol.state is not State.OPEN or transport.is_closing()
                or transport.get_write_buffer_size() + self.queued >= QUEUE_LIMIT):
            return False
        if isinstance(data, str):
            data = data.encode()
            ws.protocol.send_text(data)
        else:
            ws.protocol.send_binary(data)
        self.queued += len(data)
        return True

    def flush(self) -> None:
        """Write what queue() left in the protocol's buffer, in one write. (websockets writes whatever is pending
        itself too, whenever it sends a frame of its own, e.g. a pong; the order of frames is the buffer's.)"""
        self.queued = 0
        ws = self.ws
        chunks = ws.protocol.data_to_send()
        if not chunks or ws.transport.is_closing():
            return
        if all(chunks):
            ws.transport.write(b"".join(chunks))
            return
        # An empty chunk is the protocol asking for the end of the stream (after a close frame): what websockets'
        # send_data() does with it, in order.
        for chunk in chunks:
            if chunk:
                ws.transport.write(chunk)
            elif ws.transport.can_write_eof():
                try:
                    ws.transport.write_eof()
                except Exception:  # write_eof documents no exceptions; uvloop raises RuntimeError
                    pass
            else:
                ws.transport.close()


class Run:
    def __init__(self, run_id: str, user_id: str, thread_id: str, message_id: str, max_events: int) -> None:
        self.run_id = run_id
        self.user_id = user_id
        self.thread_id = thread_id
        self.message_id = message_id
        self.events: deque[tuple[int, str, str]] = deque(maxlen=max_events)  # (seq, role, frame)
        self.subscribers: list[Conn] = []
        self.lock = asyncio.Lock()
        self.last_seq = 0
        self.finished_at: float | None = None

    def __hash__(self) -> int:
        return id(self)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _error(code: str, message: str, **extra: Any) -> str:
    frame = {"type": "error_message", "error_code": code, "error_message": message, "timestamp": time.time()}
    frame.update(extra)
    return json.dumps(frame)


def _field(obj: dict, name: str) -> Any:
    """Look a field up under payload, then at the root, then under data."""
    for where in (obj.get("payload"), obj, obj.get("data")):
        if isinstance(where, dict) and where.get(name) is not None:
            return where[name]
    return None


class AgentSim:
    """The reference agent chat server; ``async with AgentSim(SimConfig(port=0)) as sim: sim.url``."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.seed = self.config.seed if self.config.seed is not None else random.SystemRandom().getrandbits(48)
        self._server: Server | None = None
        self.port: int | None = None
        self.conns: dict[str, Conn] = {}
        # Runs are keyed by (user, run id): a run id means something only to its owner, so another user can
        # neither collide with it nor learn that it exists.
        self.runs: dict[tuple[str, str], Run] = {}
        self._finished: deque[Run] = deque()  # in finishing order; may hold runs evicted since (skipped)
        self._user_finished: dict[str, dict[str, Run]] = {}  # per user, finished runs still kept, oldest first
        self._live: dict[str, int] = {}  # per user, runs not finished yet
        self._live_total = 0
        self._tasks: set[asyncio.Task] = set()
        self._user_chats: dict[str, int] = {}
        self._conn_counter = 0
        self._unflushed: set[Conn] = set()  # connections with frames queued and not yet written
        self.chats_started = 0
        self.chats_finished = 0
        self.gt = GroundTruth(self.config.ground_truth)
        for f in self.config.faults:
            if f.name in AGUI_ONLY:
                raise FaultSpecError(f"{f.text or f.name!r}: fault {f.name!r} is for --protocol ag-ui only")
        self._run_faults = [f for f in self.config.faults if f.name not in ("refuse", "exit_after")]
        self._refuse = [f for f in self.config.faults if f.name == "refuse"]
        self._exit_after = [f for f in self.config.faults if f.name == "exit_after"]

    # ---- lifecycle -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host = self.config.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self.port}/ws"

    async def start(self) -> None:
        self._server = await serve(
            self._handler,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            select_subprotocol=lambda conn, protos: Subprotocol("jwt-auth") if "jwt-auth" in protos else None,
            max_size=self.config.max_size,
            compression="deflate" if self.config.compression else None,
            logger=ws_logger,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.gt.write({"kind": "server_started", "url": self.url, "seed": self.seed,
                       "faults": [str(f) for f in self.config.faults], "pid": os.getpid()})

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=5)
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout=10)
            except TimeoutError:
                logger.warning("connections did not close within 10 s")
            self._server = None
            self.gt.write({"kind": "server_stopped"})
        self.gt.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    # ---- handshake -------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Any) -> Any:
        path = urlsplit(request.path).path
        if path not in WS_PATHS:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found (agentsim serves /ws and /websocket)\n")
        self._conn_counter += 1
        for spec in self._refuse:
            rng = random.Random(f"{self.seed}|conn|{self._conn_counter}|{spec.text}")
            if rng.random() < spec.rate:
                self.gt.write({"kind": "fault", "fault": "refuse", "arg": None, "run_id": None,
                               "user_id": None, "seq": None, "connection_number": self._conn_counter})
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "agentsim fault: refuse\n")
        return None

    def _authenticate(self, ws: ServerConnection) -> tuple[str | None, str]:
        """Returns (user_id, "") or (None, reason). Never puts the token in the reason."""
        request = ws.request
        assert request is not None
        if self.config.no_auth:
            query = parse_qs(urlsplit(request.path).query)
            name = (query.get("user") or [""])[0].strip()
            return (name[:128] if name else f"anon-{uuid.uuid4().hex[:12]}"), ""
        token = None
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
        else:
            for header in request.headers.get_all("Sec-WebSocket-Protocol"):
                for proto in header.split(","):
                    proto = proto.strip()
                    if proto.startswith("jwt.") and len(proto) > 4:
                        raw = proto[4:]
                        try:
                            decoded = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("ascii")
                            token = decoded if decoded.count(".") == 2 else raw
                        except (ValueError, UnicodeDecodeError):
                            token = raw
        if not token:
            return None, "missing token (send Authorization: Bearer <JWT> or subprotocol jwt.<base64url(JWT)>)"
        return verify_token(self.config, token)

    # ---- connection ------------------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        connection_id = f"c-{uuid.uuid4().hex[:16]}"
        user_id, reason = self._authenticate(ws)
        if user_id is None:
            logger.info("connection %s rejected: %s", connection_id, reason)
            self.gt.write({"kind": "auth_failed", "connection_id": connection_id, "reason": reason})
            try:
                await ws.send(_error("AUTH_FAILED", f"authentication failed: {reason}"))
                await ws.close(1008, "authentication failed")
            except ConnectionClosed:
                pass
            return
        conn = Conn(ws, connection_id, user_id)
        self.conns[connection_id] = conn
        self.gt.write({"kind": "connection_opened", "connection_id": connection_id, "user_id": user_id})
        try:
            await ws.send(json.dumps({
                "type": "connection_established",
                "data": {"connection_id": connection_id, "user_id": user_id, "server_time": _now_iso()},
                "timestamp": time.time(),
            }))
            async for message in ws:
                await self._on_message(conn, message)
        except ConnectionClosed:
            pass
        finally:
            conn.open = False
            self.conns.pop(connection_id, None)
            for run in conn.runs:
                if conn in run.subscribers:
                    run.subscribers.remove(conn)
            conn.runs.clear()
            self.gt.write({"kind": "connection_closed", "connection_id": connection_id, "user_id": user_id})

    async def _on_message(self, conn: Conn, message: str | bytes) -> None:
        ws = conn.ws
        if isinstance(message, bytes):
            await ws.send(_error("INVALID_MESSAGE", "binary frames are not supported; send JSON text"))
            return
        try:
            obj = json.loads(message)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than json's parser recurses
            await ws.send(_error("INVALID_MESSAGE", "frame is not valid JSON"))
            return
        if not isinstance(obj, dict):
            await ws.send(_error("INVALID_MESSAGE", "frame is not a JSON object"))
            return
        mtype = obj.get("type")
        if not isinstance(mtype, str) or not mtype:
            await ws.send(_error("INVALID_MESSAGE", "frame has no type"))
        elif mtype == "ping":
            await ws.send(json.dumps({"type": "pong", "data": {"timestamp": time.time()}}))
        elif mtype in IGNORED_TYPES:
            return
        elif mtype in CHAT_TYPES:
            await self._on_chat(conn, mtype, obj)
        elif mtype == "resume":
            await self._on_resume(conn, obj)
        else:
            await ws.send(_error("INVALID_MESSAGE", f"unknown message type {mtype[:64]!r}"))

    # ---- chats -----------------------------------------------------------------------------
    async def _on_chat(self, conn: Conn, mtype: str, obj: dict) -> None:
        content = _field(obj, "user_request") if mtype == "start_agent" else None
        if content is None:
            content = _field(obj, "content")
        if content is None:
            content = _field(obj, "message")
        if not isinstance(content, str) or not content.strip():
            await conn.ws.send(_error("INVALID_MESSAGE", "empty message: no content to send to the agent"))
            return
        ids = {}
        for name in ("thread_id", "run_id", "message_id"):
            value = _field(obj, name)
            if value is not None and (not isinstance(value, (str, int)) or len(str(value)) > 200):
                await conn.ws.send(_error("INVALID_MESSAGE", f"{name} must be a short string"))
                return
            ids[name] = str(value) if value is not None and str(value) else None
        user_id = conn.user_id
        run_id = ids["run_id"]
        refused = self._over_quota(user_id)
        if refused is not None:
            logger.info("chat of %s refused: %s", user_id, refused[1])
            await conn.ws.send(_error(*refused))
            return
        if run_id is not None:
            if (user_id, run_id) in self.runs:
                await conn.ws.send(_error("INVALID_MESSAGE", f"run_id {run_id!r} is already in use"))
                return
            key = f"run|{run_id}"
        else:
            n = self._user_chats.get(user_id, 0) + 1
            if len(self._user_chats) > 100_000:
                self._user_chats.clear()
            self._user_chats[user_id] = n
            key = f"user|{user_id}|{n}"
        rng = random.Random(f"{self.seed}|{key}")
        if run_id is None:
            run_id = f"r-{rng.getrandbits(64):016x}"
            while (user_id, run_id) in self.runs:
                run_id = f"r-{uuid.uuid4().hex[:16]}"
        thread_id = ids["thread_id"] or f"t-{rng.getrandbits(48):012x}"
        message_id = ids["message_id"] or f"m-{rng.getrandbits(48):012x}"

        script = build_script(content, message_id, self.config.think, self.config.tool_latency, rng)
        planned = plan_run_faults(self._run_faults, script.roles, rng)
        run = Run(run_id, user_id, thread_id, message_id, self.config.max_events_per_run)
        self._register(run)
        run.subscribers.append(conn)
        conn.runs.add(run)
        self.chats_started += 1
        self.gt.write({"kind": "run_started", "run_id": run_id, "user_id": user_id, "thread_id": thread_id,
                       "message_id": message_id, "connection_id": conn.connection_id,
                       "roles": script.roles, "faults": [p.spec.name for p in planned]})
        task = asyncio.create_task(self._execute(run, script, planned, rng))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _over_quota(self, user_id: str) -> tuple[str, str] | None:
        """Why a new chat of this user is refused, as (error code, message), or None. Live runs are never
        evicted to make room: a flood is refused, and only its sender sees that."""
        limit = self.config.max_live_runs_per_user
        if self._live.get(user_id, 0) >= limit:
            return QUOTA_EXCEEDED, (f"this user already has {limit} runs in progress (the per-user limit); "
                                    "send the next message when one has finished")
        if self._live_total >= self.config.max_runs:
            return SERVER_BUSY, f"the server already runs {self.config.max_runs} chats; try again later"
        return None

    def _evict(self, run: Run) -> None:
        key = (run.user_id, run.run_id)
        if self.runs.get(key) is run:
            del self.runs[key]
        mine = self._user_finished.get(run.user_id)
        if mine is not None and mine.get(run.run_id) is run:
            del mine[run.run_id]
            if not mine:
                del self._user_finished[run.user_id]

    def _kept(self, run: Run) -> bool:
        return self.runs.get((run.user_id, run.run_id)) is run

    def _register(self, run: Run) -> None:
        now = time.monotonic()
        ttl = self.config.resume_ttl
        finished = self._finished
        while finished and (not self._kept(finished[0]) or (finished[0].finished_at or 0.0) + ttl < now):
            self._evict(finished.popleft())
        # A user past their own allowance makes room from their own finished runs, never from anyone else's.
        mine = self._user_finished.get(run.user_id)
        while mine and len(mine) + self._live.get(run.user_id, 0) >= self.config.max_runs_per_user:
            self._evict(next(iter(mine.values())))
        while finished and len(self.runs) >= self.config.max_runs:
            self._evict(finished.popleft())
        if len(finished) > 2 * self.config.max_runs:  # runs a user's allowance evicted: drop them in one pass
            self._finished = deque(r for r in finished if self._kept(r))
        self.runs[(run.user_id, run.run_id)] = run
        self._live[run.user_id] = self._live.get(run.user_id, 0) + 1
        self._live_total += 1

    def _finish(self, run: Run) -> None:
        run.finished_at = time.monotonic()
        left = self._live.get(run.user_id, 1) - 1
        if left > 0:
            self._live[run.user_id] = left
        else:
            self._live.pop(run.user_id, None)
        self._live_total -= 1
        if self._kept(run):
            self._finished.append(run)
            self._user_finished.setdefault(run.user_id, {})[run.run_id] = run

    def _find_run(self, user_id: str, run_id: str) -> Run | None:
        run = self.runs.get((user_id, run_id))
        if run is not None and run.finished_at is not None and run.finished_at + self.config.resume_ttl < time.monotonic():
            return None
        return run

    def _frame(self, run: Run, role: str, seq: int, payload: dict) -> str:
        obj = {"type": role, "run_id": run.run_id, "thread_id": run.thread_id, "user_id": run.user_id,
               "seq": seq, "timestamp": time.time(), "payload": payload}
        try:
            # orjson: a tenth of json's cost per frame; compact, UTF-8 rather than \u escapes, and an infinite
            # number is null (json wrote Infinity, which is not JSON).
            return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except orjson.JSONEncodeError:  # e.g. an integer past 64 bits, which json writes as it is
            return json.dumps(obj, separators=(",", ":"), default=str)

    def _fault_record(self, run: Run, pf: PlannedFault, seq: int | None, **extra: Any) -> None:
        rec = {"kind": "fault", "fault": pf.spec.name, "arg": pf.spec.arg, "value": pf.spec.value,
               "run_id": run.run_id, "user_id": run.user_id, "thread_id": run.thread_id, "seq": seq}
        rec.update(extra)
        self.gt.write(rec)

    async def _deliver(self, run: Run, seq: int, role: str, frame: str, to: list[Conn] | None = None,
                       replay: bool = False) -> None:
        targets = run.subscribers if to is None else to
        for conn in list(targets):
            if not await self._send_to(conn, frame):
                if conn in run.subscribers:
                    run.subscribers.remove(conn)
                continue
            if self.gt.enabled:
                rec = {"kind": "event", "run_id": run.run_id, "user_id": run.user_id, "thread_id": run.thread_id,
                       "role": role, "seq": seq, "t": time.time(), "connection_id": conn.connection_id}
                if replay:
                    rec["replay"] = True
                if conn.user_id != run.user_id:
                    rec["to_user_id"] = conn.user_id
                self.gt.write(rec)

    async def _send_to(self, conn: Conn, data: str | bytes) -> bool:
        """One frame to one connection, within SEND_TIMEOUT. A client that stops reading must not hold a run
        forever: it is dropped like a lost network (the run goes on buffering, so it can still resume).
        The frame is queued (Conn.queue) and leaves with the burst's flush: before the run waits, acts out a
        fault or ends, and at the latest when the event loop comes round (the flush scheduled here)."""
        if conn.queue(data):
            if conn not in self._unflushed:
                self._unflushed.add(conn)
                if len(self._unflushed) == 1:
                    asyncio.get_running_loop().call_soon(self._flush_all)
            return True
        self._flush(conn)
        if conn.ws.transport.is_closing():
            # Reset (the close:abort fault, a dropped client) while websockets has not yet heard: its send() would
            # drop the frame in silence, and the ground truth would log it as delivered.
            return False
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                await conn.ws.send(data)
            return True
        except (ConnectionClosed, TimeoutError):
            conn.ws.transport.abort()
            return False

    def _flush(self, conn: Conn) -> None:
        self._unflushed.discard(conn)
        if conn.queued:
            conn.flush()

    def _flush_run(self, run: Run) -> None:
        for conn in run.subscribers:
            if conn.queued:
                self._flush(conn)

    def _flush_all(self) -> None:
        conns, self._unflushed = self._unflushed, set()
        for conn in conns:
            if conn.queued:
                conn.flush()

    async def _send_and_buffer(self, run: Run, seq: int, role: str, frame: str) -> None:
        async with run.lock:
            run.events.append((seq, role, frame))
            await self._deliver(run, seq, role, frame)

    async def _execute(self, run: Run, script: Any, planned: list[PlannedFault], rng: random.Random) -> None:
        ctx: dict[str, Any] = {"t0": time.monotonic()}
        at: dict[int, list[PlannedFault]] = {}
        for pf in planned:
            at.setdefault(pf.position, []).append(pf)
        held: tuple[int, str, str] | None = None
        outcome = "cancelled"
        steps = script.steps
        try:
            for i, step in enumerate(steps):
                here = at.get(i, ())
                delay = step.delay
                for pf in here:
                    if pf.spec.name == "delay_first":
                        delay += float(pf.spec.value or 0)
                        self._fault_record(run, pf, run.last_seq + 1, duration=pf.spec.value)
                if delay > 0:
                    self._flush_run(run)
                    await asyncio.sleep(delay)
                payload = step.build(ctx)
                run.last_seq += 1
                seq = run.last_seq
                frame = self._frame(run, step.role, seq, payload)
                names = {pf.spec.name: pf for pf in here}
                if "drop" in names:
                    self._fault_record(run, names["drop"], seq, role=step.role)
                elif "swap" in names and held is None and i < len(steps) - 1:
                    held = (seq, step.role, frame)
                    self._fault_record(run, names["swap"], seq, role=step.role, swapped_with=seq + 1)
                    continue
                else:
                    await self._send_and_buffer(run, seq, step.role, frame)
                    if "duplicate" in names:
                        self._fault_record(run, names["duplicate"], seq, role=step.role)
                        await self._deliver(run, seq, step.role, frame)
                    if "crosstalk" in names:
                        await self._crosstalk(run, names["crosstalk"], seq, step.role, frame, rng)
                if held is not None:
                    await self._send_and_buffer(run, *held)
                    held = None
                for pf in here:
                    self._flush_run(run)  # what was sent before a fault reaches the client before it acts
                    await self._mid_run_fault(run, pf, seq)
            if held is not None:
                await self._send_and_buffer(run, *held)
            outcome = "failed" if steps[-1].role == "agent_error" else "completed"
            for pf in at.get(-1, ()):
                run.last_seq += 1
                seq = run.last_seq
                self._fault_record(run, pf, seq, role="partial_result")
                frame = self._frame(run, "partial_result", seq,
                                    {"content": "late chunk after the terminal event", "is_complete": True})
                await self._send_and_buffer(run, seq, "partial_result", frame)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("run %s crashed", run.run_id)
            outcome = "crashed"
        finally:
            self._flush_run(run)
            self._finish(run)
            self.chats_finished += 1
            self.gt.write({"kind": "run_finished", "run_id": run.run_id, "user_id": run.user_id,
                           "thread_id": run.thread_id, "outcome": outcome, "last_seq": run.last_seq})
            for conn in run.subscribers:
                conn.runs.discard(run)
            run.subscribers = []
        for spec in self._exit_after:
            if self.chats_finished == int(spec.value or 0):
                self._exit(run, spec.name, run.last_seq, spec.arg, spec.value)

    async def _crosstalk(self, run: Run, pf: PlannedFault, seq: int, role: str, frame: str,
                         rng: random.Random) -> None:
        others = sorted((c for c in self.conns.values() if c.user_id != run.user_id and c.open),
                        key=lambda c: c.connection_id)
        target = others[rng.randrange(len(others))] if others else None
        self._fault_record(run, pf, seq, role=role,
                           target_connection_id=target.connection_id if target else None,
                           target_user_id=target.user_id if target else None, delivered=target is not None)
        if target is not None:
            await self._deliver(run, seq, role, frame, to=[target])

    async def _mid_run_fault(self, run: Run, pf: PlannedFault, seq: int) -> None:
        name = pf.spec.name
        if name == "stall":
            self._fault_record(run, pf, seq, duration=pf.spec.value)
            await asyncio.sleep(float(pf.spec.value or 0))
        elif name == "close":
            conns = list(run.subscribers)
            self._fault_record(run, pf, seq, connection_ids=[c.connection_id for c in conns])
            for conn in conns:
                run.subscribers.remove(conn)
                conn.runs.discard(run)
                if pf.spec.arg == "abort":
                    conn.ws.transport.abort()
                else:
                    task = asyncio.create_task(conn.ws.close(1001, "agentsim fault: close"))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        elif name in ("malformed", "oversized"):
            if name == "oversized":
                size = int(pf.spec.value or 0)
                head = '{"type":"system_message","data":{"event":"oversized","padding":"'
                data: str | bytes = head + "x" * max(0, size - len(head) - 3) + '"}}'
            else:
                malformed: dict[str, str | bytes] = {
                    "notjson": '{"type": "agent_thinking", "payload": {"thought": unterminated',
                    "binary": b"\x00\xffagentsim binary frame\x00",
                    "notype": json.dumps({"payload": {"note": "agentsim malformed frame: no type"}}),
                    "unknowntype": json.dumps({"type": "zz_agentsim_unknown", "payload": {}}),
                }
                data = malformed[pf.spec.arg or "notjson"]
            conns = list(run.subscribers)
            self._fault_record(run, pf, seq, connection_ids=[c.connection_id for c in conns])
            for conn in conns:
                await self._send_to(conn, data)
        elif name == "exit":
            self._exit(run, name, seq, pf.spec.arg, pf.spec.value)

    def _exit(self, run: Run, name: str, seq: int, arg: Any, value: Any) -> None:
        self.gt.write({"kind": "fault", "fault": name, "arg": arg, "value": value, "run_id": run.run_id,
                       "user_id": run.user_id, "thread_id": run.thread_id, "seq": seq})
        self.gt.close()
        logger.warning("agentsim fault: exiting the process (%s)", name)
        self._flush_all()
        os._exit(EXIT_CODE_FAULT)

    # ---- resume ----------------------------------------------------------------------------
    async def _on_resume(self, conn: Conn, obj: dict) -> None:
        run_id = _field(obj, "run_id")
        last_seq = _field(obj, "last_seq")
        if last_seq is None:
            last_seq = 0
        if not isinstance(run_id, str) or not run_id or not isinstance(last_seq, int) or isinstance(last_seq, bool):
            await conn.ws.send(_error("INVALID_MESSAGE", "resume needs payload.run_id (string) and last_seq (integer)"))
            return
        run = self._find_run(conn.user_id, run_id)
        if run is None:
            # Looked up under the asking user only: another user's run is unknown here, not forbidden.
            await conn.ws.send(_error("RESUME_UNKNOWN_RUN", f"unknown or expired run {run_id[:64]!r}",
                                      run_id=run_id))
            return
        async with run.lock:
            missed = [e for e in run.events if e[0] > last_seq]
            self.gt.write({"kind": "resume", "run_id": run_id, "user_id": run.user_id,
                           "connection_id": conn.connection_id, "last_seq": last_seq, "replayed": len(missed),
                           "finished": run.finished_at is not None})
            for seq, role, frame in missed:
                await self._deliver(run, seq, role, frame, to=[conn], replay=True)
            if run.finished_at is None and conn.open and conn not in run.subscribers:
                run.subscribers.append(conn)
                conn.runs.add(run)


class ThreadHandle:
    """An AgentSim (or its AG-UI AguiSim) running on its own event loop in a daemon thread (for Locust / gevent
    code, the pytest plugin); `url` is where a client of its protocol connects."""

    def __init__(self, sim: AgentSim | AguiSim, loop: asyncio.AbstractEventLoop, thread: threading.Thread,
                 stop_event: asyncio.Event) -> None:
        self.sim = sim
        self.loop = loop
        self.thread = thread
        self._stop_event = stop_event

    @property
    def url(self) -> str:
        return self.sim.url

    @property
    def port(self) -> int | None:
        return self.sim.port

    def stop(self, timeout: float = 15.0) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop_event.set)
            self.thread.join(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_in_thread(config: SimConfig | None = None, timeout: float = 10.0, *,
                  server: AgentSim | AguiSim | None = None) -> ThreadHandle:
    """Start `server` (default an AgentSim of `config`) in a daemon thread; returns once it listens (or raises after
    ``timeout``). An AguiSim is given built (agentsim.agui imports this module)."""
    sim = server if server is not None else AgentSim(config or SimConfig(port=0))
    ready = threading.Event()
    box: dict[str, Any] = {}

    def main() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        box["loop"] = loop

        async def runner() -> None:
            stop_event = asyncio.Event()
            box["stop"] = stop_event
            try:
                await sim.start()
            except BaseException as exc:
                box["error"] = exc
                ready.set()
                return
            ready.set()
            try:
                await stop_event.wait()
            finally:
                await sim.stop()

        try:
            loop.run_until_complete(runner())
        finally:
            loop.close()

    thread = threading.Thread(target=main, name="agentsim", daemon=True)
    thread.start()
    if not ready.wait(timeout):
        raise TimeoutError(f"agentsim did not start listening within {timeout} s")
    if "error" in box:
        raise box["error"]
    return ThreadHandle(sim, box["loop"], thread, box["stop"])
