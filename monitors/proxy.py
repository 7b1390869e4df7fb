"""`chatprobe proxy`: a WebSocket reverse proxy in front of an agent chat server that judges real users'
chats as they pass (source="live") and serves /metrics. It forwards every frame first and checks second,
so it never delays a user; what it checks is the same ChatTracker the runner uses.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, NoReturn

from pydantic import ValidationError
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import EXTERNAL_CLOSE_CODES
from websockets.headers import parse_subprotocol
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.uri import parse_uri

from harness import redact
from harness.checker import ChatIndex, ChatResult, ChatTracker, ConnectionChecker, Expectations
from harness.durations import parse_duration, parse_size
from harness.errors import MESSAGE_LIMIT, os_reason, unknown_flag_hint
from harness.events import Event, FrameKind, Outcome, Rule, SessionError
from harness.flow import (
    CLEAN_CLOSE_CODES,
    MAX_OPEN_WATCHED,
    RESENT_WARNING,
    RESUME_UNKNOWN_NOTE,
    TOO_MANY_OPEN,
    WAKE_ALL,
    FrameRouter,
    LeftRuns,
    ParkedChats,
    PassiveChats,
    PendingResumes,
    Resumes,
    crowded_out,
    resend_key,
)
from harness.profiles import ClientFrame, Profile, load_profile
from harness.recorder import ConnectionLog, Recorder
from harness.redact import credentials_of
from harness.scenario import SCENARIO_NAME_PATTERN, Expect, expectations_for
from harness.sinks import PARKING_FULL, PROXY_STOPPED
from harness.targets import (
    TargetOptions,
    check_ca_file,
    check_client_cert,
    check_label,
    check_url,
    flag_named,
    target_label,
)
from harness.transports.base import FRAMES_PER_TURN, ConnectSettings, ssl_context
from harness.transports.websocket import TOO_DENSE, BoundedClientConnection, NoRedirects, classify, failed_for
from harness.yamlfile import ConfigError

from . import httpserver
from .frontdoor import (
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    MAX_RECORDED_CREDENTIALS,
    MAX_REQUEST_HEAD,
    WARN_EVERY,
    BadTarget,
    FrontDoor,
    HeldBack,
    NotesHeldWrites,
    UpstreamTls,
    accept_batch,
    client_address,
    connections_for_fds,
    credentials_identity,  # noqa: F401  (the identity of a connection's credentials, as tests read it from here)
    default_per_address,
    drain_wait,
    identity_of,
    install_accept_errors,
    limit_key,
    listen_host_port,
    open_file_limit,
    parse_trusted,
    upstream_url,
)
from .metrics import MetricsSink, default_metrics

log = logging.getLogger("chatprobe.proxy")
EXIT_OK, EXIT_USAGE = 0, 2
# Headers a client sends that the upstream handshake must see too (auth, origin, cookies); never logged.
FORWARDED_HEADERS = ("authorization", "cookie", "origin", "user-agent", "x-request-id")
# Headers an upgrade request carries at most once (RFC 9110 for Host and the credentials, RFC 6265 for Cookie, RFC 6455
# for the key, version and origin): a request with two of one is refused with 400 (named in the log, no value).
ONCE_HEADERS = ("Host", "Authorization", "Proxy-Authorization", "Cookie", "Origin", "Sec-WebSocket-Key",
                "Sec-WebSocket-Version")
# Subprotocols an upgrade may offer (a browser's app offers one or two, a Kubernetes client half a dozen): each is
# looked at for a credential (redact.credentials_of) and for the user a JWT names, and offered to the upstream. An
# upgrade offering 2,000 (seven 8 KiB header lines of them) held the event loop 30-40 ms, whatever the upstream
# answered. Past it, 400, counted bad_request, no upstream connection opened.
MAX_SUBPROTOCOLS = 32
# A resume looks for its run among this many of the user's latest connections still open (a browser that lost its
# network resumes on its next socket while the old one has not closed yet: one or two).
MAX_RESUME_SEARCH = 64
# A connection whose user is named by a JWT's claim, read without its signature (frontdoor.identity_of: the proxy
# holds no key, and anyone can write a token naming another user), is that user's only once the upstream accepted it:
# until the server spoke on it (a welcome, an event, an error that is no AUTH_FAILED), its client's frames are held
# unjudged (forwarded at once, as ever) and nothing of the user's is touched, neither a parked chat, a message held for
# a resend, a run the user left, nor the user's open connections (LiveConnection.confirm). Refused (AUTH_FAILED, or a
# close of AUTH_CLOSE_CODES before the server spoke), the claim was false: the frames are judged as a connection of
# nobody's (a pseudonym of its own), and its chats are auth_failed, the client's doing. At most this many frames and
# bytes are held so: past either (a client flooding before the server spoke, a server silent on it for a chat's
# deadline) the claim is let go the same way.
MAX_UNCONFIRMED_FRAMES = 64
MAX_UNCONFIRMED_BYTES = 4 * 1024 * 1024
# ... and at most this many bytes across all the connections whose claims await their servers: held for up to a
# chat's deadline, 4 MiB each at --max-connections (a silent or slow upstream, clients sending large frames with a
# token naming anyone) made the proxy keep gigabytes. A frame that takes the total past it lets the claims holding the
# most go, as a connection's own bound does (LiveChats.let_go_largest: a real user's first frames before the server's
# answer are a few kilobytes, and stay held while others fill the budget).
MAX_UNCONFIRMED_TOTAL_BYTES = 32 * 1024 * 1024
# A chat error that is the user's client's doing, not the server's: its message rejected as invalid, or its credentials
# refused (an expired token's AUTH_FAILED once the connection was open, a close of AUTH_CLOSE_CODES before it spoke), or
# its timing the client's (HELD_BACK_MIN). A rejection with a violation of the server's on the chat besides (its error
# frame holding NaN: an R12) is the server's `error` chat, counted with that violation (_clients_doing).
CLIENTS_DOING = frozenset({"rejected", "auth_failed", "client_slow"})
# The proxy stamps the server's events as it reads them from the upstream, and it reads the upstream of a connection
# only as fast as that connection's client takes what it forwards: while its writes to the client are backed up
# (asyncio paused them: the write buffer over WRITE_LIMIT, the kernel's buffers full; either side: HeldBack), the
# relay waits on the client and a healthy server's events reach the proxy late. A chat whose only violations are
# timing rules (R9, R10, R11; `incomplete` at its deadline included) is then the client's doing, counted as one
# (chatprobe_client_rejections_total, error_kind "client_slow"), not one of the server's outcomes, when the proxy was
# held back so for at least this long in all from the chat's message to its verdict: a slow or hostile client (a phone
# on a bad network, a user who stops reading) cannot page the SRE for the server. Not a discount of the paused time
# from the server's: the rules are judged per event in the tracker (a hot path), across connections (a resume, a
# resend), and the proxy cannot know when an event it did not read was sent. A client that reads as it comes holds the
# proxy back for milliseconds at most (a large frame draining), far under it, so a slow server behind it is still
# blamed; a slow server behind a client that held the proxy back this long is not (which of the two made the chat late
# cannot be told), but for a chat with no terminal event only while it still held the proxy back as the chat was judged
# (LiveConnection._finished).
HELD_BACK_MIN = 0.25
HELD_BACK_NOTE = ("the client read slowly: the proxy's writes to it were backed up for {:.3f}s of the chat "
                  "(the upstream not read meanwhile), so its timing is not the server's")
TIMING_RULES = frozenset({Rule.R9.value, Rule.R10.value, Rule.R11.value})
# Messages held for a resend at once (across users): a chat whose connection the server closed before any event of its
# run waits, until its deadline, for its user to send the message again on a new connection. Past it, not judged
# (parking_full: the proxy cannot follow the resend).
MAX_RESENDS = 10_000
# ... and at once per identity (one user's credentials, or all anonymous users'): a user whose requests the server
# keeps cutting cannot take every place from the others (their resends would count as two chats again).
MAX_RESENDS_EACH = 64
CLOSED_NOTE = "the server closed the connection mid-run"
# Chats whose connection the server closed or dropped mid-run (a deploy, a load balancer's timeout), parked for their
# user to resume the run on a new connection, until each chat's deadline (flow.ParkedChats, as `chatprobe check`
# parks them): at most this many in all, this many per identity (anonymous users share one), and this many bytes of
# the events they keep (LIVE_KEPT_BYTES a chat, and the event that crossed it). Past a bound the proxy cannot follow
# the chat's resume (nor its resend, past MAX_RESENDS): it is not judged (chatprobe_chats_unjudged_total{reason=
# "parking_full"}), neither held against the server nor counted passed, and the connection's recording says so.
MAX_PARKED = 10_000
MAX_PARKED_EACH = 64
MAX_PARKED_BYTES = 32 * 1024 * 1024
# Runs whose chat the user's client left mid-run (it closed its connection: a page reload, a browser that saw its network
# change first), remembered per identity until the chat's deadline (flow.LeftRuns): the chat was judged abandoned as the
# client left it, and the same user's resume of the run on a new connection is that judged chat's, not followed again
# (its events are no other user's, R8). At most this many in all (each a run id), this many per identity.
MAX_LEFT = 10_000
MAX_LEFT_EACH = 64
NOT_RESUMED_NOTE = "the server closed the connection mid-run and no resume of the run followed by its deadline"
DISPLACED_NOTE = ("the server closed the connection mid-run and no resume followed before another chat of the same "
                  "run id was cut short")
# The label of the one-record file --record writes as the proxy stops with chats kept for a resume or a resend: `check`
# of the recording then counts them unjudged (proxy_stopped), as the proxy did, instead of judging them at its end.
STOP_LABEL = "proxy-stop"
# A peer that stops reading must not hold a connection (and its chats) forever: a frame not taken within this
# long ends the connection, as if that peer had left.
DEFAULT_SEND_TIMEOUT = 30.0
# What a client's handshake may take beyond the upstream's connect timeout (reading its request, answering it).
HANDSHAKE_SLACK = 5.0
# How long a closing handshake may take before the connection is dropped.
CLOSE_TIMEOUT = 2.0
MAX_CROSSED = 64  # the client's messages that crossed the upstream's close, judged as it closes (_read_out)
# While a side's closing handshake goes on, what that side sent after the relay stopped reading it (messages that
# crossed the close: chats, a protocol's pongs) is read, so that its answer to the close, behind them, is read too: the
# proxy reads one frame ahead (MAX_QUEUE), and a side with two or more frames in flight had its answer left unread
# until CLOSE_TIMEOUT dropped the connection, a reset where a clean close was due. At most this many messages and
# 2 x --max-size bytes a side (a peer that keeps sending past them is dropped at CLOSE_TIMEOUT, as before).
MAX_CLOSING_FRAMES = 256
# The largest frame taken from either side (the harness's WebSocket limit): a bigger one closes that connection
# with 1009, so neither a client nor the upstream can make the proxy buffer more than this per connection.
DEFAULT_MAX_SIZE = 4 * 1024 * 1024
# The per-connection byte budget. Per direction, websockets holds: the frame being read (up to --max-size M), the
# frames queued for the forwarding loop (reading pauses once more than MAX_QUEUE wait, so at most two, the rest
# stays in the kernel), the message the loop is forwarding (as bytes, then as str, then encoded again), and the
# write buffer to the other peer (WRITE_LIMIT, plus the one frame being written on top of it). That is at most
# about 6 M + WRITE_LIMIT per direction, 12 M + 128 KiB per connection: ~50 MiB at the default 4 MiB, ~12 MiB at
# 1 MiB. websockets' default max_queue (16) would let a fast writer facing a slow reader park 16 frames more per
# side (another 128 MiB per connection at 4 MiB). The chats it follows keep LIVE_KEPT_BYTES of events each on top (2 MiB
# at most a connection). Size --max-connections x this budget to the host's memory.
MAX_QUEUE = 1
WRITE_LIMIT = 64 * 1024
# The bytes of events a followed chat keeps (`chatprobe run` keeps 4 MiB a chat for its reports; the proxy reports
# none: its verdicts, counts and times are the same whether events are kept or only counted). A connection holds at
# most 2 x MAX_OPEN_WATCHED chats (the open ones and the judged ones it remembers for late events): an upstream that
# sent a client's chats thousands of events with kilobyte ids made the proxy keep ~4 MiB each, ~512 MiB a connection.
LIVE_KEPT_BYTES = 16 * 1024
# A relay (either direction of a connection) lets the event loop's others run once per FRAMES_PER_TURN frames or this
# many bytes it forwarded, as the harness's clients do (base.FRAMES_PER_TURN, the Locust user's YIELD_BYTES): websockets
# hands over the frames it has read without a yield, and a peer sending faster than the proxy forwards (a read of
# 256 KiB holds 131,072 empty frames, each decoded and judged) never makes a relay wait. One such peer held every other
# user's relay, the chats' deadlines and SIGTERM for seconds (an echo through another connection took 9 s, a SIGTERM
# 19 s). A chat's stream of a few frames a read never yields for it.
BYTES_PER_TURN = 64 * 1024
# ... but websockets parses every frame of a read at once, before any relay has a turn, and queues them all: asyncio
# reads up to 256 KiB of a socket at a time, 131,072 empty frames (43,690 masked ones from a client), a few tenths of
# a second of parsing and ~20 MiB of frame objects held until forwarded, whatever --max-size says (a slow-reading
# client made that last). The proxy reads each peer this many bytes at a time, as picows' READ_CAP reads for the
# harness: a large frame takes a few more reads.
READ_CAP = 16 * 1024


class LiveTracker(ChatTracker):
    """A chat the proxy follows: the same rules, with LIVE_KEPT_BYTES of its events kept (the rest counted)."""

    __slots__ = ()
    keep_bytes = LIVE_KEPT_BYTES


class RunIndex(ChatIndex):
    """A proxied connection's chats by run id (its ConnectionChecker.by_run), each run id it holds also counted in
    the process's `seen` (LiveChats.runs) while the connection is open (until `detach`): LiveChats.saw_run asks there,
    where it scanned every open connection's index, at each resume of a run the process never saw in its first
    deadline, as thousands of users resume theirs after a deploy. A write costs a lookup more, once per run learnt."""

    __slots__ = ("_seen",)

    def __init__(self, seen: dict[str, int]) -> None:
        super().__init__()
        self._seen: dict[str, int] | None = seen

    def __setitem__(self, key: str, chat: ChatTracker) -> None:
        seen = self._seen
        if seen is not None and key not in self:
            seen[key] = seen.get(key, 0) + 1
        super().__setitem__(key, chat)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        if self._seen is not None:
            _uncount(self._seen, key)

    def detach(self) -> None:
        """The connection is closed: its runs no longer counted (the index itself may still be read)."""
        seen, self._seen = self._seen, None
        if seen is not None:
            for key, _chat in self.items():
                _uncount(seen, key)


def _uncount(seen: dict[str, int], key: str) -> None:
    left = seen[key] - 1
    if left:
        seen[key] = left
    else:
        del seen[key]


class _Parser(argparse.ArgumentParser):
    given: list[str] = []

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self.given = list(sys.argv[1:] if args is None else args)  # for a usage error to look in (unknown_flag_hint)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        hinted = unknown_flag_hint(self, message, self.given)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {redact.clean(hinted, MESSAGE_LIMIT)}\n")


def _hostport(value: str, flag: str) -> tuple[str, int]:
    host, port = listen_host_port(value, flag, "127.0.0.1:8780")
    if not host:
        raise ConfigError(f"{flag} {value[:80]!r}: expected HOST:PORT, e.g. 127.0.0.1:8780 or 0.0.0.0:8780")
    return host, port


def _url_host(host: str) -> str:
    """A host as a URL writes it: an IPv6 address in brackets (`ws://[::1]:8780`; `ws://::1:8780` is no URL)."""
    return f"[{host}]" if ":" in host else host


def _is_self(listen: tuple[str, int], upstream_host: str, upstream_port: int) -> bool:
    """Whether the upstream is the proxy's own listening address (the same address, `localhost` for a loopback one,
    or a loopback one where it listens on every address): each client's connection would come back to the proxy,
    and so on, connection upon connection, until the connection limits refused the last."""
    import ipaddress

    def address(host: str) -> str:
        host = host.lower().strip("[]").rstrip(".")
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            return host

    host, port = address(listen[0]), listen[1]
    up = address(upstream_host)
    if port != upstream_port:
        return False
    if up == host:
        return True
    own = {"127.0.0.1", "::1"} if host in ("0.0.0.0", "::", "localhost") else {host}
    return up in own or up == "localhost" and host in ("127.0.0.1", "::1", "0.0.0.0", "::")


# Of a connection's credentials past MAX_RECORDED_CREDENTIALS, the first this many characters of each are held in the
# process's pool (MAX_RECORDED_CREDENTIALS characters in all, as a recorded connection's): a 4,093-character token
# after `Bearer ` (8,193 characters with the header) told to another user shows at most its tail there.
PAST_BOUND_HEAD = 512


def heads_of(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """The head of each credential (PAST_BOUND_HEAD characters), while they come to MAX_RECORDED_CREDENTIALS in all."""
    out: list[str] = []
    left = MAX_RECORDED_CREDENTIALS
    for s in secrets:
        head = s.strip()[:min(PAST_BOUND_HEAD, left)]
        left -= len(head)
        out.append(head)
        if left <= 0:
            break
    return tuple(out)


class LiveChats:
    """Every chat seen through the proxy, for all its connections: what they share (the profile, the expectations,
    the sink, runs open for a resume on another connection of the same user)."""

    def __init__(self, profile: Profile, sink: MetricsSink, expectations: Expectations, scenario: str,
                 settle: float, recorder: Recorder | None = None) -> None:
        # At start-up, before the proxy listens: done by the first connection's FrameRouter (flow), the profile's
        # decoder and what its checks load (AG-UI's schema: ~0.3-0.5 s of imports) held the event loop as the first
        # user connected, every other user's handshake and request stalled behind it (all of them, after a deploy).
        profile.prepare()
        self.profile = profile
        # --record: each connection's frames, kept when a chat on it did not pass (or all, with --record-all).
        self.recorder = recorder
        self.sink = sink
        self.exp = expectations
        self.scenario = scenario
        self.settle = settle
        # The connections open now, by identity, oldest first: where a resume looks for its run (a run is followed
        # across reconnects while the connection that carried it is open; its close judges what is left on it).
        self.open: dict[str, dict[LiveConnection, None]] = {}
        self.runs: dict[str, int] = {}  # run id -> how many of the open connections index a chat by it (RunIndex)
        self._n = 0
        self._strangers = 0
        # The bytes of client and server frames held across all connections whose JWT claims await their servers
        # (LiveConnection._hold; at most MAX_UNCONFIRMED_TOTAL_BYTES).
        self.unconfirmed_bytes = 0
        self.unconfirmed: dict[LiveConnection, None] = {}  # those connections
        # --record's frames not written (a connection's file full), since the last line that said so: at most one
        # such warning a minute (WARN_EVERY), and the rest when the proxy stops.
        self._dropped = (0, 0, 0)
        self._unfiled = 0  # of those connections, the ones refused a file (the recording at its max_files)
        self._dropped_said_at: float | None = None
        self._unrecorded = 0  # connections not recorded for their credentials' size, since the last line said so
        self._unrecorded_said_at: float | None = None
        self._forgotten = redact.seen_credentials().forgotten  # users' credentials forgotten, as the last line said
        self._forgotten_said_at: float | None = None
        # Chats whose connection the server closed before any event of their run (no id to resume), by (identity,
        # message id): the user's client may send the message again on a new connection, and the chat goes on there,
        # timed from its first try, as the harness's own client does it (docs/protocol.md, "Outcomes") and as
        # `chatprobe check` follows it in the recording. Each with when its connection closed, whether with a closing
        # handshake (CLEAN_CLOSE_CODES: an R13 warning when sent again), and the timer that judges it at its deadline.
        self.resends: dict[tuple[str, str], tuple[ChatTracker, float, bool, asyncio.TimerHandle | None]] = {}
        self.resent: set[str] = set()  # chats sent again already: a second loss is judged as any other
        self._held_by: Counter[str] = Counter()  # chats held for a resend, by identity (MAX_RESENDS_EACH)
        # Chats whose connection the server closed mid-run, by (identity, run id), for a resume by the same user on a
        # new connection, until their deadline (one timer for them all, at the earliest).
        self.parked = ParkedChats(MAX_PARKED, MAX_PARKED_EACH, MAX_PARKED_BYTES)
        # Runs whose chat the user's client left mid-run (judged abandoned), by identity: its resume elsewhere is that
        # chat's, never another user's events (R8) on the new connection.
        self.left = LeftRuns(MAX_LEFT, MAX_LEFT_EACH)
        # Until a chat's deadline has passed since the proxy started, a resume of a run it never saw may be of a chat
        # the process before it followed (a deploy, a restart: counted unjudged there, proxy_stopped), whose user's
        # client resumes it here (inherited).
        self.started_at = time.monotonic()
        self._parked_timer: asyncio.TimerHandle | None = None
        self._parked_wake = float("inf")  # when the timer fires
        # Chats resumed whose resume is judged with them (or when lost again): `resumed` when events came back, `lost`
        # otherwise or at once on RESUME_UNKNOWN_RUN, as the live client and `chatprobe check` judge it.
        self.pending = PendingResumes()
        # The proxy drains (begin_stop: SIGTERM; it accepts no connection any more, so no resume or resend can reach
        # it): the chats on open connections run on, to their end or the drain's, and a chat the server cuts
        # meanwhile is counted unjudged (proxy_stopped), as one kept for a resume is. Then it is stopping (cut): it
        # closes the connections left, and every chat it has not judged is counted unjudged (proxy_stopped) as its
        # connection closes; how many, for the line it logs.
        self.draining = False
        self.stopping = False
        self.stopped_unjudged = 0
        # What --record names a connection: "live-" and a pseudonym of its identity, keyed by this process's own
        # random key (never written): `chatprobe check` tells one user's connections from another's by it, as the
        # proxy does (a resume, a resend), and no digest of a credential is in a recording.
        self._label_key = os.urandom(16)

    def connection(self, identity: str = "", secrets: tuple[str, ...] = (), *, stream: bool = False,
                   claimed: bool = False) -> "LiveConnection":
        """A new proxied connection; `identity` stands for its credentials (a resume only picks up a run that a
        connection with the same credentials started), `secrets` are those credentials, kept out of --record;
        `stream`: it is one chat's own event stream (the HTTP side's SSE answer), which ends with its run; `claimed`:
        `identity` is a JWT's unverified claim, the connection's only once the server accepts it (confirm)."""
        conn = LiveConnection(self, identity, secrets, stream=stream, claimed=claimed)
        if not claimed:
            self.open.setdefault(identity, {})[conn] = None
        return conn

    def let_go_largest(self) -> None:
        """Past MAX_UNCONFIRMED_TOTAL_BYTES held for claims awaiting their servers: the claims holding the most are
        let go, until the rest fit (a scan of the connections awaiting, only as the budget overflows; each one let go
        frees at least its share of the budget). The connection that held most pays, not the one whose few bytes came
        last: clients filling the budget with large frames no longer make every real user's first frames let go."""
        while self.unconfirmed_bytes > MAX_UNCONFIRMED_TOTAL_BYTES and self.unconfirmed:
            max(self.unconfirmed, key=LiveConnection.held_bytes).confirm(False)

    def stranger(self) -> str:
        """An identity of one connection's own, matching no user's (a claim not confirmed): its chats resume, are
        resumed by and are sent again by nobody else's."""
        self._strangers += 1
        return f"unconfirmed\0{self._strangers}"

    def recorded(self, now: float) -> None:
        """A connection's recording was saved: say (at most once a minute) what --record could not write."""
        if self.recorder is None:
            return
        conns, frames, size = self.recorder.take_dropped()
        if conns:
            c, f, b = self._dropped
            self._dropped = (c + conns, f + frames, b + size)
        self._unfiled += self.recorder.take_unfiled()
        if self._dropped[0] and (self._dropped_said_at is None or now - self._dropped_said_at >= WARN_EVERY):
            self.say_dropped(now)
        forgotten = redact.seen_credentials().forgotten
        if forgotten > self._forgotten and (self._forgotten_said_at is None
                                            or now - self._forgotten_said_at >= WARN_EVERY):
            log.warning("--record: %d credential(s) of the users seen least recently forgotten past the %s bytes the "
                        "proxy holds of them (redact.MAX_SEEN_BYTES): each is still scrubbed from its own connection's "
                        "recording, but no longer from another user's, should the upstream echo it there",
                        forgotten - self._forgotten, f"{redact.seen_credentials().max_bytes:,}")
            self._forgotten, self._forgotten_said_at = forgotten, now

    def say_dropped(self, now: float) -> None:
        conns, frames, size = self._dropped
        if not conns or self.recorder is None:
            return
        log.warning("--record: %d frames (%s bytes) of %d connection(s) were not recorded, %s; %s, and `chatprobe "
                    "check` judges the chats open there as they stood", frames, f"{size:,}", conns,
                    self.recorder.dropped_why(), self.recorder.gaps_said(self._unfiled))
        self._dropped, self._unfiled, self._dropped_said_at = (0, 0, 0), 0, now

    def too_many_credentials(self) -> None:
        """A connection not recorded for the size of its credentials (MAX_RECORDED_CREDENTIALS): said a line a minute."""
        self._unrecorded += 1
        now = time.monotonic()
        if self._unrecorded_said_at is None or now - self._unrecorded_said_at >= WARN_EVERY:
            log.warning("--record: %d connection(s) not recorded: their credentials (Authorization, cookies, "
                        "subprotocols, query) passed %d characters, more than the proxy scrubs from a recording",
                        self._unrecorded, MAX_RECORDED_CREDENTIALS)
            self._unrecorded, self._unrecorded_said_at = 0, now

    def label(self, identity: str) -> str:
        """The connection label --record writes for connections of `identity` (one per user, this process only)."""
        return "live-" + hmac.new(self._label_key, identity.encode(), hashlib.sha256).hexdigest()[:12]

    def new_chat_id(self) -> str:
        self._n += 1
        return f"live-{self._n}"

    def resumed(self, identity: str, run_id: str | None) -> tuple[ChatTracker, "LiveConnection | None"] | None:
        """The run a resume names and the connection that follows it, when the same user started it: on one of its
        latest MAX_RESUME_SEARCH connections still open, else parked since the server closed its connection (the
        connection then None; no longer parked); another user's resume changes nothing. (The runs were learnt when
        a server frame woke their chat, which an event of a run in progress never does: a resume of a run in
        progress was never followed.)"""
        if not run_id:
            return None
        conns = self.open.get(identity, {})
        for n, conn in enumerate(reversed(conns)):
            if n >= MAX_RESUME_SEARCH:
                break
            chat = conn.checker.by_run.get(run_id)
            if chat is not None and not chat.judged and conn.owns(chat):
                return chat, conn
        parked = self.parked.take(identity, run_id)
        if parked is not None:
            self._time_parked()
            return parked, None
        return None

    def inherited(self, now: float) -> bool:
        """Whether a resume at `now` of a run the proxy never saw may be of a chat the process before it followed: the
        proxy started less than a chat's deadline ago (after that, every such chat is past its deadline)."""
        return now < self.started_at + self.exp.deadline

    def saw_run(self, run_id: str) -> bool:
        """Whether a chat of `run_id` is this process's, any user's: on a connection still open, parked, or left by
        its client. Another user's resume of such a run in the window of `inherited` is no chat of the process before
        this one: what the server sends it of the run is cross-talk (R8), as past the window. Read only in that
        window, and only for a resume the user's own runs did not explain: three lookups (RunIndex, ParkedChats.holds,
        LeftRuns.holds), where it scanned every open connection, parked chat and left run."""
        return run_id in self.runs or self.parked.holds(run_id) or self.left.holds(run_id)

    def judged_run(self, identity: str, run_id: str) -> bool:
        """Whether a chat of `run_id` was judged on one of the user's latest MAX_RESUME_SEARCH connections still open
        (a second tab resuming a run that ended)."""
        conns = self.open.get(identity, {})
        for n, conn in enumerate(reversed(conns)):
            if n >= MAX_RESUME_SEARCH:
                break
            chat = conn.checker.by_run.get(run_id)
            if chat is not None and chat.judged:
                return True
        return False

    def park(self, identity: str, chat: ChatTracker, at: float) -> str:
        """Park a chat whose connection the server closed mid-run, for its user's resume on a new connection, until
        its deadline: "parked"; PARKING_FULL when a bound is reached (the proxy cannot follow its resume: the caller
        counts it unjudged); "" when it cannot be resumed (no run id, a dialect without resume): judge it now."""
        if self.profile.resume is None or chat.root is not chat or chat.followups:
            return ""
        parked, displaced = self.parked.park(identity, chat)
        if displaced is not None:
            self.finished(displaced.finish(at, lost=True, note=DISPLACED_NOTE))
        if parked:
            self._time_parked(at)
            return "parked"
        return PARKING_FULL if chat.run_id else ""  # ParkedChats refuses a chat with a run id for a bound only

    def _time_parked(self, now: float | None = None) -> None:
        """The parked chats' timer set for the earliest deadline among them (none when none is parked)."""
        wake = self.parked.wake if self.parked else float("inf")
        if wake == self._parked_wake:
            return
        if self._parked_timer is not None:
            self._parked_timer.cancel()
            self._parked_timer = None
        self._parked_wake = wake
        if wake == float("inf"):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test of the bookkeeping): counted at stop()
            return
        now = time.monotonic() if now is None else now
        self._parked_timer = loop.call_later(max(wake - now, 0.0), self._parked_due, wake)

    def _parked_due(self, wake: float) -> None:
        """Never resumed by its deadline: each due chat judged as it stood, at its deadline (as `chatprobe check`)."""
        self._parked_timer, self._parked_wake = None, float("inf")
        now = max(time.monotonic(), wake)  # a timer may fire a hair early
        for chat in self.parked.due(now):
            self.finished(chat.finish(chat.wait_deadline(), lost=True, note=NOT_RESUMED_NOTE))
        self._time_parked(now)

    def hold_for_resend(self, identity: str, chat: ChatTracker, at: float, clean: bool, *,
                        resumed: bool = False) -> str:
        """Hold a chat whose connection the server closed before any event of its run, until its deadline, for its
        user's resend: "held"; PARKING_FULL when too many are held (in all, or for this identity: the proxy cannot
        follow its resend); "" when it is not to be held, judge it now: no message id, a run with an id to resume
        (parked instead; a run the dialect cannot resume is held when the close was a closing handshake; `resumed`:
        its resume was answered RESUME_UNKNOWN_RUN, PendingResumes.send_again), or sent again once already."""
        resumable = not resumed and chat.run_id is not None and (self.profile.resume is not None or not clean)
        message = resend_key(chat.message_id, chat.run_id)
        if not message or resumable or chat.chat_id in self.resent or self.draining:  # draining: none can come
            return ""
        if len(self.resends) >= MAX_RESENDS:
            return PARKING_FULL
        key = (identity, message)
        earlier = self._let_go(key)
        if earlier is not None:  # two chats of one message id cut short: the earlier one is judged as it stood
            self._expire(key, earlier)
        if self._held_by[identity] >= MAX_RESENDS_EACH:
            return PARKING_FULL
        self._held_by[identity] += 1
        timer = None
        try:
            timer = asyncio.get_running_loop().call_later(max(chat.wait_deadline() - at, 0.0), self._due, key, chat)
        except RuntimeError:  # no loop (a test of the bookkeeping): counted at stop()
            pass
        self.resends[key] = (chat, at, clean, timer)
        return "held"

    def take_resend(self, identity: str, message_id: str | None,
                    run_id: str | None = None) -> tuple[ChatTracker, bool] | None:
        """The chat held for a resend of this message by this user, if any: (its tracker, whether its connection
        ended with a closing handshake)."""
        message = resend_key(message_id, run_id)
        held = self._let_go((identity, message)) if message else None
        if held is None:
            return None
        chat, _at, clean, timer = held
        if timer is not None:
            timer.cancel()
        self.resent.add(chat.chat_id)
        return chat, clean

    def _due(self, key: tuple[str, str], chat: ChatTracker) -> None:
        held = self.resends.get(key)
        if held is not None and held[0] is chat:
            self._let_go(key)
            self._expire(key, held)

    def _expire(self, key: tuple[str, str],
                held: tuple[ChatTracker, float, bool, asyncio.TimerHandle | None]) -> None:
        """Never sent again by its deadline: judged as it stood when its connection closed (a lost run)."""
        chat, at, _clean, timer = held
        if timer is not None:
            timer.cancel()
        self.finished(chat.finish(at, lost=True, note=CLOSED_NOTE))

    def begin_stop(self) -> None:
        """The proxy begins to stop (SIGTERM: a deploy, a restart) and drains: it closes its listener, so no resume or
        resend can reach it any more. The chats parked for a resume or held for a resend are counted unjudged
        (proxy_stopped) now, while /metrics is still served: nothing showed the server failed them, and a user's
        resume after the restart goes to another process. From here on a chat the server cuts is counted so too, and
        once the drain is over (cut) every chat not judged when its connection closes (LiveConnection.closed). With
        --record, a file of one close record ("by": "proxy-stop") says when, so that `chatprobe check` counts them
        alike."""
        if self.draining:
            return
        self.draining = True
        kept = self.parked.drain()
        self._time_parked()
        while self.resends:
            key = next(iter(self.resends))
            held = self._let_go(key)
            assert held is not None
            if held[3] is not None:
                held[3].cancel()
            kept.append(held[0])
        for chat in kept:
            self.unjudged(chat, PROXY_STOPPED)
        if kept and self.recorder is not None:
            log = self.recorder.connection(STOP_LABEL)
            log.close(time.monotonic(), by_client=STOP_LABEL)
            self.recorder.save(log, keep=True)

    def cut(self) -> None:
        """The drain is over (every chat ended, its deadline passed, or a second signal): the proxy closes the
        connections left, and every chat still in flight on one is counted unjudged (proxy_stopped)."""
        self.begin_stop()
        self.stopping = True

    def stop(self) -> None:
        """The proxy has stopped (its connections closed): whatever it still kept for a resume or a resend is counted
        unjudged (begin_stop, when it was not called first), so the counts add up."""
        self.cut()

    def unjudged(self, chat: ChatTracker, reason: str) -> None:
        """A chat the proxy will not judge (`reason`: PROXY_STOPPED, PARKING_FULL): counted apart, never as an outcome,
        its pending resume let go with it (in no count: no verdict, no reconnect)."""
        self.resent.discard(chat.chat_id)
        self.pending.forget(chat.chat_id)
        if reason == PROXY_STOPPED:
            self.stopped_unjudged += 1
        self.sink.chat_unjudged(self.scenario, reason)

    def _let_go(self, key: tuple[str, str]) -> tuple[ChatTracker, float, bool, asyncio.TimerHandle | None] | None:
        """The chat held for this resend, no longer held (None: none was)."""
        held = self.resends.pop(key, None)
        if held is not None:
            self._held_by[key[0]] -= 1
            if not self._held_by[key[0]]:
                del self._held_by[key[0]]
        return held

    def connection_closed(self, conn: "LiveConnection") -> None:
        """The proxy is done with a connection (its handler's last step); every chat on it is judged."""
        by_run = conn.checker.by_run
        if isinstance(by_run, RunIndex):
            by_run.detach()
        conns = self.open.get(conn.identity)
        if conns is not None:
            conns.pop(conn, None)
            if not conns:
                del self.open[conn.identity]

    def finished(self, result: ChatResult, *, abandoned: bool = False) -> None:
        """A verdict to the sink. A message the server rejected because the client sent something invalid, or under
        credentials it refused (AUTH_FAILED after the welcome: an expired token), is the client's doing: counted apart
        (client_rejected), never as one of the server's outcomes."""
        self.resent.discard(result.chat_id)
        self.pending.ended(result.chat_id)
        for reconnect in result.reconnects:  # each judged with its chat (PendingResumes), counted with its verdict
            self.sink.reconnect(self.scenario, reconnect)
        if abandoned:
            self.sink.chat_abandoned(self.scenario)
        if _clients_doing(result):
            self.sink.client_rejected(result)
        else:
            self.sink.chat_finished(result)


class LiveConnection:
    """One proxied connection on the one road: the client's frames open chats (the profile tells requests and
    resumes apart), the server's go through the FrameRouter to the ChatTrackers, PassiveChats judges them when due."""

    def __init__(self, live: LiveChats, identity: str, secrets: tuple[str, ...] = (), *, stream: bool = False,
                 claimed: bool = False) -> None:
        self.live = live
        # A JWT's unverified claim (`claimed`) is the connection's identity once the server accepts the connection
        # (confirm); until then it is a stranger's, and the frames that came are held here, in order, with their times
        # (None once confirmed: nothing is held per frame after that).
        self._claim: str | None = identity if claimed else None
        self._early: list[tuple[bool, str | bytes, float]] | None = [] if claimed else None
        self._early_bytes = 0
        # When the first chat (a request or a resume) among the held frames came: a chat's deadline after it the claim
        # is let go (its chats judged as they stand); frames that open no chat (the client's own ping) set no deadline.
        self._early_chat: float | None = None
        self.identity = live.stranger() if claimed else identity
        if claimed:
            live.unconfirmed[self] = None
        self._secrets = secrets
        # One chat's own event stream (the HTTP side: an SSE answer to its POST), which ends with its run: a stream
        # the server ended before any event of the run is judged then, never held for a resend (a client sends a new
        # request, a chat of its own: the harness's SSE client sends nothing again), and its recording's close record
        # says "stream": true, so that `chatprobe check` judges it so too (as `run --record` writes an SSE chat's).
        self.stream = stream
        self.checker = ConnectionChecker(None, events_name_run=live.profile.events_name_run,
                                         further_runs=live.profile.further_runs)
        self.checker.by_run = RunIndex(live.runs)  # its run ids counted in the process's (LiveChats.saw_run)
        self.router = FrameRouter(live.profile, self.checker, live.sink, live.scenario)
        self.chats = PassiveChats(self.checker, live.settle, live.pending)
        self._by_id: dict[str, ChatTracker] = {}  # the chats open on this connection, oldest first
        # With --record: the send record (its ordinal on this connection) that brought each of them here (its message,
        # its message sent again, its resume), for the close record to name those the proxy had no room to keep.
        self._sent_as: dict[str, int] = {}
        # How long the proxy's writes to the client have been held back (HeldBack, which the client's connection
        # keeps: either side sets it before the first chat), and its total as each open chat came here (HELD_BACK_MIN).
        self.held: HeldBack | None = None
        self._held_from: dict[str, float] = {}
        self.resumes: Resumes | None = None  # runs resumed across connections (flow.Resumes), from the first one
        self.log: ConnectionLog | None = None
        if not claimed:
            self._open_log()
        self.failing = False  # a chat on this connection did not pass (or was held or sent again): its recording is kept
        self.protocol_error: str | None = None  # what the upstream sent that the proxy failed its connection for
        self.peer = "unknown"  # the client's address, for -v's lines

    def _open_log(self) -> None:
        """--record's file of this connection, labelled by its identity (a pseudonym), once that is known."""
        live, secrets = self.live, self._secrets
        if live.recorder is not None:
            if sum(len(s) for s in secrets) <= MAX_RECORDED_CREDENTIALS:
                self.log = live.recorder.connection(live.label(self.identity), secrets)
            else:
                live.too_many_credentials()

    @property
    def auth_failed(self) -> bool:
        return self.router.auth_failed is not None

    def held_bytes(self) -> int:
        """The bytes of frames held here for a claim awaiting the server."""
        return self._early_bytes

    @property
    def confirmed(self) -> bool:
        """Whether the connection's identity is settled (no claim awaiting the server's acceptance)."""
        return self._early is None

    def confirm(self, accepted: bool) -> None:
        """The server accepted the connection (`accepted`: its claimed user is its own from now on), or refused it
        or never said (the claim let go: the connection stays a stranger's). Either way it joins its user's open
        connections, its recording is opened under that user's label, and the frames held since it opened are taken
        in their order, at their times, as if they had come now."""
        early, self._early = self._early, None
        if early is None:
            return
        self.live.unconfirmed_bytes -= self._early_bytes
        self.live.unconfirmed.pop(self, None)
        self._early_bytes = 0
        if accepted and self._claim is not None:
            self.identity = self._claim
            log.info("connection from %s (user %s): the server accepted its token", self.peer, self.live.label(self.identity))
        self._claim = None
        self.live.open.setdefault(self.identity, {})[self] = None
        self._open_log()
        for sent, text, at in early:
            if sent:
                self.client_frame(text, at)
            else:
                self.server_frame(text, at)

    def _hold(self, sent: bool, text: str | bytes, now: float, decoded: ClientFrame | None = None) -> None:
        """A frame that came before the server accepted the claim: held (bounded; past it the claim is let go).
        `decoded`: a frame of the client's as the profile made it already (Profile.decode_client)."""
        early = self._early
        assert early is not None
        early.append((sent, text, now))
        self._early_bytes += len(text)
        if sent and self._early_chat is None and (
                decoded or self.live.profile.decode_client(text)).kind in ("request", "resume"):
            self._early_chat = now
        live = self.live
        live.unconfirmed_bytes += len(text)
        if len(early) > MAX_UNCONFIRMED_FRAMES or self._early_bytes > MAX_UNCONFIRMED_BYTES:
            self.confirm(False)
        elif live.unconfirmed_bytes > MAX_UNCONFIRMED_TOTAL_BYTES:
            live.let_go_largest()

    def first_server_frames(self, text: str | bytes, now: float) -> bool:
        """A frame from the server while the claim awaits its acceptance (the relay calls this instead of
        server_frame until it returns True, the connection confirmed): an event, a welcome (a control frame before
        any of the client's), or an error other than AUTH_FAILED accepts it; AUTH_FAILED refuses it; a control frame
        after the client's (a pong, an ack), a ping, a stream's end or a malformed frame says neither, and is held
        with the client's frames. The claim may have been let go by another road since the last one (the
        client's flood, the deadline's judge, the budget across connections): then the frame is taken as ever."""
        if self._early is None:
            self.server_frame(text, now)
            return True
        decoded = self.live.profile.decode(text, now)
        if isinstance(decoded, Event):
            accepted: bool | None = True
        elif decoded.kind is FrameKind.CONTROL:
            # A welcome: sent before the client said anything. After a frame of the client's, a control frame may be
            # the answer to it (a pong, an ack) that a server gives before it checks the token: it accepts nothing.
            accepted = True if not any(sent for sent, _text, _at in self._early) else None
        elif decoded.kind is FrameKind.ERROR:
            accepted = decoded.session_error is not SessionError.AUTH_FAILED
        else:
            accepted = None
        if accepted is None:
            self._hold(False, text, now)
            return self.confirmed
        self.confirm(accepted)
        self.server_frame(text, now)
        return True

    def client_frame(self, text: str | bytes, now: float, decoded: ClientFrame | None = None) -> bool:
        """A frame from the user to the server: a new chat, a resume, or anything else (not judged). True when a chat
        came to this connection with it (or it was held for a claim awaiting the server): when one is next due may
        have changed (the relay wakes its judge, which waited for the server's next frame only). `decoded`: what
        the profile made of it already (Profile.decode_client), where the caller had to know (the HTTP side)."""
        if self._early is not None:  # the server has not accepted the connection's claimed user yet: held
            self._hold(True, text, now, decoded)
            return True
        frame = decoded if decoded is not None else self.live.profile.decode_client(text)
        live = self.live
        came: ChatTracker | None = None  # the chat this frame brought here
        crowded: int | None = None  # the send record of the chat let go to make room for it (_make_room)
        if frame.kind == "request" and (again := live.take_resend(self.identity, frame.message_id, frame.run_id)) is not None:
            # The message sent again after the server closed its connection before any event of its run: the same
            # chat, timed from its first try, as the harness's own client and `chatprobe check` count it.
            came, clean = again
            if clean:
                came._warn(Rule.R13, RESENT_WARNING, None)
            crowded = self._make_room(now)
            self.checker.add(came)
            self._by_id[came.chat_id] = came
            # Its recording is kept, as its first try's is: `check` follows the chat across both (the first alone is
            # a chat never sent again), whatever its verdict here.
            self.failing = True
        elif frame.kind == "request":
            crowded = self._make_room(now)
            came = LiveTracker(live.new_chat_id(), live.exp, now, scenario=live.scenario,
                               thread_id=frame.thread_id, run_id=frame.run_id, message_id=frame.message_id,
                               request=frame.request)
            self.checker.add(came)
            self._by_id[came.chat_id] = came
            live.sink.chat_started(live.scenario)
            if self.resumes is not None and frame.run_id:
                self.resumes.started(frame.run_id)  # a run id the client chose anew: its frames are this chat's
        elif frame.kind == "resume":
            found = live.resumed(self.identity, frame.run_id)
            if found is None and frame.run_id and (live.left.take(self.identity, frame.run_id, now)
                                                   or live.judged_run(self.identity, frame.run_id)
                                                   or live.inherited(now) and not live.saw_run(frame.run_id)):
                # The user's client left this run's chat (it closed its connection: judged abandoned then, or judged
                # already), or resumes a run judged on another of its connections still open, or one the process
                # before this one followed (a deploy of the proxy: counted unjudged there), here: what the server
                # replays and sends on is that chat's, not judged again and no other user's (R8).
                if self.resumes is None:
                    self.resumes = Resumes()
                self.resumes.ignore(frame.run_id)
            # Awaiting the server's answer, followed or not: a RESUME_UNKNOWN_RUN naming no run is about the one
            # resume awaiting it, as for the live client and `chatprobe check` (FrameRouter.resume_sent).
            self.router.resume_sent(frame.run_id, found[0] if found is not None else None)
            if found is not None:
                came, previous = found
                if previous is None:
                    # Parked since the server closed its connection mid-run: adopted here, judged once, on all its
                    # events. The recording is kept, as the first connection's is: `check` follows the chat across
                    # both (the first alone is a chat never resumed), whatever its verdict here.
                    crowded = self._make_room(now)
                    self.failing = True
                elif previous is not self:
                    # The chat moves here: the connection it leaves neither routes the run's frames to it any more,
                    # nor counts it among its open chats, nor judges it when it closes (the user did not abandon it,
                    # and the server did not lose it: it goes on here).
                    previous.let_go(came)
                    crowded = self._make_room(now)
                # The server replays what the client says it missed: events the proxy forwarded (and judged)
                # before the client lost them. Judged once, not again as duplicates (R7) of the server's.
                if self.resumes is None:
                    self.resumes = Resumes()
                self.resumes.resumed_here(came, frame.run_id, frame.last_seq)
                # Told what came here before it (another user's events, R8; malformed frames, R12): in flight for its
                # user then, as `chatprobe check` judges it (ConnectionChecker.add).
                self.checker.add(came)
                self._by_id[came.chat_id] = came
                # Judged with the chat (or at its next loss): resumed if events come back, lost if none do or the
                # server does not know the run (RESUME_UNKNOWN_RUN), as the live client judges its own.
                live.pending.sent(came)
        # Written once the proxy knows which chat, if any, it let go for this one (the record names it: "crowded_out"),
        # before any frame the server sends after it (nothing here writes another record of the connection).
        sent = self.log.frame("send", text, now, crowded_out=crowded) if self.log is not None else None
        if came is None:
            return False
        self._sent(came, sent)
        return True

    def _sent(self, chat: ChatTracker, sent: int | None) -> None:
        """`chat` came to this connection with the send record `sent` (None: not recorded). Once a chat."""
        if self.held is not None:
            if len(self._held_from) >= 2 * MAX_OPEN_WATCHED:  # only the chats open here are judged here: the rest let go
                self._held_from = {k: v for k, v in self._held_from.items() if k in self._by_id}
            self._held_from[chat.chat_id] = self.held.upto(time.monotonic())
        if sent is None:
            return
        if len(self._sent_as) >= 2 * MAX_OPEN_WATCHED:  # only the chats open here can be named: the rest let go
            self._sent_as = {k: v for k, v in self._sent_as.items() if k in self._by_id}
        self._sent_as[chat.chat_id] = sent

    def server_frame(self, text: str | bytes, now: float) -> None:
        """A frame from the server to the user, decoded and routed as the harness's own client does."""
        if self.log is not None:
            self.log.frame("recv", text, now)
        resumes = self.resumes
        if resumes and resumes.skip(self.live.profile, text, now):  # only after a resume: a second decode
            return
        wake, _reply = self.router.on_frame(text, now)  # the user's own client answers pings
        if wake == WAKE_ALL:
            pending = self.live.pending
            for chat in pending.forgotten(self.router, self._by_id.values()):
                if pending.send_again(chat) and self.live.hold_for_resend(self.identity, chat, now, True,
                                                                            resumed=True) == "held":
                    # Its message crossed the server's close (no event of its run came): held for the user's client
                    # to send it again, as the harness's own client does and `chatprobe check` follows it.
                    self.checker.discard(chat)
                    self._by_id.pop(chat.chat_id, None)
                    self.failing = True
                    continue
                # The server did not know the run the user's resume named (RESUME_UNKNOWN_RUN): lost, judged now, as
                # the live client and `chatprobe check` judge it.
                pending.judge(chat)
                self._finished(chat.finish(now, lost=True, note=RESUME_UNKNOWN_NOTE))

    def failed(self, detail: str, now: float) -> None:
        """The proxy failed the upstream connection for what the server sent (a frame over --max-size, a message in
        more than MAX_FRAGMENTS frames, text that is not UTF-8, bad framing: `detail`, websocket.failed_for): an R12
        on the chats open, as the harness's clients judge it, and the recording's close record says so (`check`)."""
        self.protocol_error = detail
        if self._early is not None:  # before the server accepted the claim: the claim let go, the held frames first
            self.confirm(False)
        self.router.on_protocol_error(detail, now)

    def judge_due(self, now: float) -> None:
        if self._early is not None and (due := self._unconfirmed_due()) is not None and now >= due:
            self.confirm(False)  # the server said nothing for a chat's deadline: its chats judged as they stand
        for result in self.chats.due(now):
            self._finished(result)

    def next_due(self) -> float | None:
        due = self.chats.next_due()
        if self._early is not None and (held := self._unconfirmed_due()) is not None:
            due = held if due is None else min(due, held)
        return due

    def _unconfirmed_due(self) -> float | None:
        """While the claim awaits the server: the deadline of the first chat among the client's held frames."""
        first = self._early_chat
        return None if first is None else first + self.live.exp.deadline

    def owns(self, chat: ChatTracker) -> bool:
        """The chat is followed here (started here or resumed here, and not resumed elsewhere since)."""
        return chat.chat_id in self._by_id

    def let_go(self, chat: ChatTracker) -> None:
        """The chat was resumed on another connection of the same user: it is that one's to judge now. The server may
        go on sending the run here too until this connection closes (agentsim does): those frames are the same
        events again, neither this chat's (they would be duplicates, R7) nor another user's (R8)."""
        self._by_id.pop(chat.chat_id, None)
        if self.resumes is None:
            self.resumes = Resumes()
        self.resumes.let_go(self.checker, chat)

    def busy(self) -> bool:
        """A chat open here still awaits its terminal event (read as the proxy drains, not per frame), or the client
        sent a chat (a request or a resume) the server has not answered yet (the claim awaiting its acceptance): a
        frame that opens none (the client's own ping) holds no drain up, as on a connection of no claim."""
        if self._early is not None and self._early_chat is not None:
            return True
        return any(not chat.judged and not chat.done for chat in self._by_id.values())

    def closed(self, now: float, *, by_client: bool, code: int | None = None, drained: bool = False) -> None:
        """The connection ended (`code`: the server's close code, 1006 without one, when the server closed it). A chat
        the server cut before any event of its run is held for its user's resend (LiveChats.hold_for_resend; not on
        a chat's own event stream, `stream`, which is judged then, as `check` judges a "stream": true close); one
        whose run has an id is parked for its user's resume on a new connection (LiveChats.park); either way the
        recording is kept (`chatprobe check` follows the chat across both connections). One the proxy has no room to
        keep so is not judged (parking_full), and its send record is named on the close record; as the proxy stops
        (LiveChats.stopping), every chat still open here is not judged (proxy_stopped: the proxy closed it, neither
        the user nor the server), one whose terminal event came excepted, and the close record says "proxy-stop"; so
        too as it drains, when the server closed it (no resume or resend can reach this process: a sidecar's server
        stopping with it), or `drained`: the proxy closed it with no chat in flight (1001, going away)."""
        live = self.live
        if self._early is not None:
            # Closed before the server accepted the claim (refused with a close of AUTH_CLOSE_CODES, dropped, or the
            # client gone): the claim is let go, the frames held judged as a stranger's.
            self.confirm(False)
        # A close of AUTH_CLOSE_CODES (1008, 4401, 4403) before the server said anything: the credentials refused, as
        # an AUTH_FAILED frame says it (the chats waiting are `auth_failed`, the client's doing), as live; never when
        # the client (or the proxy, draining) closed it.
        self.router.closed_refusing(code, now, by_client=by_client or drained)
        stopping = live.stopping or drained or live.draining and not by_client
        by_client = by_client or drained  # a chat whose terminal event came in its settle window: no R13
        full: list[int] = []  # the send records of the chats the proxy had no room to keep (for `check`)
        if not by_client or stopping:
            for chat in list(self.checker.chats):
                if chat.judged or chat.done or chat.chat_id not in self._by_id:
                    continue
                clean = code in CLEAN_CLOSE_CODES
                kept = PROXY_STOPPED if stopping else ""  # the proxy closed it as it stops: not the server, nor the user
                if not kept and chat.n_events == 0 and not self.stream:
                    kept = live.hold_for_resend(self.identity, chat, now, clean)
                if not kept:
                    live.pending.judge(chat)  # lost again: its last resume is judged now, as live
                    kept = live.park(self.identity, chat, now)
                    if kept == "parked" and clean and not self.stream and chat.chat_id not in live.resent:
                        live.pending.cut_clean(chat)  # a RESUME_UNKNOWN_RUN answer: sent again, as live
                if not kept:
                    continue
                if kept in (PROXY_STOPPED, PARKING_FULL):
                    live.unjudged(chat, kept)
                    if kept == PARKING_FULL and (sent := self._sent_as.get(chat.chat_id)) is not None:
                        full.append(sent)
                self.checker.discard(chat)
                self._by_id.pop(chat.chat_id, None)
                self._sent_as.pop(chat.chat_id, None)
                self.failing = True  # its recording is kept: the chat's first connection is in it
        if by_client and not stopping and live.profile.resume is not None:
            # Its user's client may resume the runs of its chats elsewhere (LeftRuns): those left mid-run (judged
            # abandoned below), and those judged here whose end the client may not have shown before it left (the
            # terminal event forwarded as the page unloaded). Not those resumed elsewhere (no longer here).
            for chat in self.checker.chats:
                if chat.run_id and (chat.judged or chat.done or chat.chat_id in self._by_id):
                    live.left.add(self.identity, chat.run_id, chat.wait_deadline(), now)
                    if not (chat.judged or chat.done):
                        # Left mid-run: its recording is kept, as a cut chat's is. A resume of the run on a later
                        # connection is this chat's, and `check` of a recording holding that connection (kept for a
                        # chat of its own that did not pass) without this one read the replay as a chat of its own.
                        self.failing = True
        for result, abandoned in self.chats.closed(now, by_client=by_client):
            self._finished(result, abandoned=abandoned)
        if self.router.connection_ended():
            # Another user's events (R8) or malformed frames (R12) after its last chat was judged, no chat after them:
            # the connection's own violations, counted (the sink) in no chat; its recording is kept for `check`.
            self.failing = True
        if self.log is not None and self.live.recorder is not None:
            self.log.close(now, code, by_client=STOP_LABEL if stopping else by_client, error=self.protocol_error,
                           stream=self.stream, parking_full=full)
            self.live.recorder.save(self.log, keep=True if self.failing else None)  # None: --record-all decides
            self.live.recorded(now)
        self.live.connection_closed(self)

    def _make_room(self, now: float) -> int | None:
        """Room for one more open chat: past MAX_OPEN_WATCHED the oldest is judged as it stands, as the client's doing
        (not the server's). A resumed chat judged on another connection meanwhile just leaves the count. The send
        record (its ordinal) that brought the chat let go here, when one did (for the send record of the chat that
        crowded it out to name: `chatprobe check` judges it alike), else None."""
        if len(self._by_id) < MAX_OPEN_WATCHED:
            return None
        for chat_id, chat in list(self._by_id.items()):
            if chat.judged:
                del self._by_id[chat_id]
        if len(self._by_id) < MAX_OPEN_WATCHED:
            return None
        oldest = next(iter(self._by_id.values()))
        sent = self._sent_as.get(oldest.chat_id)
        # A resume it had pending is judged as one a client left (flow.judge_resume): `resumed` when events came back,
        # else in neither result. Judged `lost`, the proxy's own bound read as a run the server failed to resume.
        self.live.pending.judge(oldest, left=True)
        self._finished(crowded_out(oldest.finish(now, note=TOO_MANY_OPEN)))
        return sent

    def _finished(self, result: ChatResult, *, abandoned: bool = False) -> None:
        # A further run the server carried on the stream is never counted started: the sinks count it in the chat
        # whose stream carried it (checker.fold_further), as the harness's own flow does.
        self._by_id.pop(result.chat_id, None)
        held_from = self._held_from.pop(result.chat_id, None)
        if held_from is not None and self.held is not None and result.error_kind is None and not result.further_run:
            now = time.monotonic()
            held = self.held.upto(now) - held_from
            # A chat with no terminal event (R10, or R9/R11 judged at its verdict) was late for the client only when
            # the proxy was still held back as it was judged: held back earlier and not since, the proxy read all the
            # server had sent by then, so a terminal event it has not read was never sent (a hung server).
            if (held >= HELD_BACK_MIN and _timing_only(result)
                    and (result.duration is not None or self.held.within(now, HELD_BACK_MIN))):
                # Late for the client's slowness, not the server's (HELD_BACK_MIN): the client's doing.
                result.error_kind, result.error = "client_slow", HELD_BACK_NOTE.format(held)
        if result.outcome is not Outcome.PASSED:
            self.failing = True
        self.live.finished(result, abandoned=abandoned)


def _clients_doing(result: ChatResult) -> bool:
    """The chat ended by the client's doing (CLIENTS_DOING), counted apart from the server's outcomes. A message the
    server rejected, or under credentials it refused, with a violation of the server's on the chat besides (the error
    frame itself malformed: NaN in it, an R12) is the server's `error` chat with that violation, as `run` and `check`
    judge it: counted apart, the violation was in no counter. A chat the client crowded out (TOO_MANY_OPEN) stays the
    client's whatever it had received, and a slow client's (client_slow) broke timing rules only by construction."""
    kind = result.error_kind
    if kind not in CLIENTS_DOING:
        return False
    return (kind == "client_slow" or result.error == TOO_MANY_OPEN
            or not (result.violations or result.violations_not_listed))


def _timing_only(result: ChatResult) -> bool:
    """The chat broke timing rules (R9, R10, R11) and no other (read once, at its verdict)."""
    rules = {v.rule.value for v in result.violations} | set(result.violations_not_listed)
    return bool(rules) and rules <= TIMING_RULES


def cap_reads(transport: Any) -> None:
    """Read at most READ_CAP bytes of a socket at a time (asyncio's plain socket transport takes its class's 256 KiB
    per read from `max_size`). A transport of another kind (TLS to a wss:// upstream) is left as it is."""
    if isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = READ_CAP


class UpstreamConnection(BoundedClientConnection):
    """The proxy's connection to --upstream, read READ_CAP bytes at a time from its first byte (the upgrade answer
    and the frames that come with it)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cap_reads(transport)
        super().connection_made(transport)


def _capped(base: type[ServerConnection], clock: Callable[[], float] = time.monotonic) -> type[ServerConnection]:
    """`base` (the front door's connection class), its clients read READ_CAP bytes at a time from their first byte;
    `clock` (the proxy's) times a failure of the client's (failed_at)."""

    class ClientConnection(NotesHeldWrites, base):  # type: ignore[valid-type, misc]
        held: HeldBack
        # When the proxy failed the client for what it sent (a reserved bit, text that is not UTF-8, a message in
        # too many fragments: a close of 1002, 1007 or 1009 it started): the client left its chats then, though its
        # connection ends only once it answers that close or the close timeout drops it (Proxy.handler).
        failed_at: float | None = None
        _close_deadline: float | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.held = HeldBack()
            cap_reads(transport)
            super().connection_made(transport)

        # websockets sets its close deadline once, as a close is first expected (never per frame): the moment a
        # failure of the client's is noted.
        @property
        def close_deadline(self) -> float | None:
            return self._close_deadline

        @close_deadline.setter
        def close_deadline(self, value: float | None) -> None:
            self._close_deadline = value
            if value is not None and self.failed_at is None and failed_for(self.protocol, 0) is not None:
                self.failed_at = clock()

    return ClientConnection


def _close_of(ws: Any) -> tuple[int, str]:
    """The close code and reason `ws`'s peer sent, when one may be sent on (else 1000, "")."""
    rcvd = getattr(getattr(ws, "protocol", None), "close_rcvd", None)
    if rcvd is not None and (rcvd.code in EXTERNAL_CLOSE_CODES or 3000 <= rcvd.code < 5000):
        return rcvd.code, rcvd.reason
    return 1000, ""


def _close_at_once(client: ServerConnection, upstream: Any, max_size: int) -> None:
    """The upstream's close frame, passed on to the client in the turn its last frames were (before the relay's end
    lets another task run): a server that wrote a run's last event and its close in one write is seen so by the client,
    which sends its next message on a new connection, as it does talking to that server. Passed on only after the
    relays had ended (Proxy.handler), the close came to the client a few turns after that event, and the next message
    it sent meanwhile crossed a close its server never had it cross (R13, sent again; an `incomplete` chat after a
    1011), live, at the client and in the recording alike. The close handshake is waited for as ever (_close_within:
    close() once the close frame went only waits). An upstream that closed with no close frame (a drop), or that the
    proxy failed for what it sent (1014 to the client), is closed as ever."""
    rcvd = upstream.protocol.close_rcvd
    if rcvd is None or failed_for(upstream.protocol, max_size) is not None or client.protocol.state is not State.OPEN:
        return
    client.protocol.send_close(*_close_of(upstream))
    client.send_data()


def _fail_dense(client: ServerConnection) -> None:
    """Fail the client's connection for a message too dense to parse (profiles.too_dense) as websockets fails it for
    one over --max-size (RFC 6455 7.1.7): its close (1009, TOO_DENSE) sent at once and nothing more of it read, its
    close deadline (and so failed_at, when its chats were left) set now."""
    client.protocol.fail(1009, TOO_DENSE)
    client.send_data()
    if client.close_deadline is None and client.close_timeout is not None:
        client.close_deadline = client.loop.time() + client.close_timeout


async def _read_out(ws: Any, max_bytes: int, take: Callable[[str | bytes], object] | None = None) -> None:
    """Read what `ws`'s peer sent after its relay stopped reading it, while its closing handshake goes on, until its
    connection closes (its close frame came and the handshake ended, or the proxy dropped it), MAX_CLOSING_FRAMES
    messages or `max_bytes` bytes: `take` is given the first MAX_CROSSED messages (those that crossed the upstream's
    close, for the client's side: chats as its client counts them), the rest are dropped. Once closed, a read waits for
    none: what came already is read, and the reading ends. A connection the proxy failed for what its peer sent (a
    message in too many fragments, text that is not UTF-8) is read no further: websockets reads nothing after that
    (RFC 6455 7.1.7), and the rest of a message it cut short is no message."""
    read = 0
    for n in range(MAX_CLOSING_FRAMES):
        if read >= max_bytes or failed_for(ws.protocol, max_bytes) is not None:
            return
        try:
            message = await ws.recv()
        except ConnectionClosed:
            return
        read += len(message)
        if take is not None and n < MAX_CROSSED:
            take(message)


async def _close_within(ws: Any, code: int, reason: str, timeout: float = CLOSE_TIMEOUT) -> None:
    try:
        async with asyncio.timeout(timeout):
            await ws.close(code, reason)
    except Exception:
        transport = getattr(ws, "transport", None)
        if transport is not None:
            transport.abort()


def _garbage_after(conn: ServerConnection) -> bool:
    """Whether websockets failed the client's connection for bytes after its upgrade request (not for its end: a
    client that hung up is no bad request)."""
    exc = conn.protocol.parser_exc
    return exc is not None and not isinstance(exc, EOFError)


async def _garbled(conn: ServerConnection, door: FrontDoor, sink: MetricsSink, peer: str | None) -> Response:
    """Refuse a client whose bytes after its upgrade request are no WebSocket frame (websockets failed its connection
    and sent its end already): counted bad_request, its socket dropped (and gone before websockets would answer it:
    an answer after that end was an assertion's traceback in the log)."""
    door.refuse(sink, "bad_request", peer)
    if conn.transport is not None:
        conn.transport.abort()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await asyncio.shield(conn.connection_lost_waiter)
    return conn.respond(HTTPStatus.BAD_REQUEST, "bytes after the upgrade request that are no WebSocket frame\n")


class Proxy:
    def __init__(self, upstream: str, live: LiveChats, connect_timeout: float = 10.0,
                 send_timeout: float = DEFAULT_SEND_TIMEOUT, max_size: int = DEFAULT_MAX_SIZE,
                 tls: ConnectSettings | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        # A wss:// upstream's TLS: its CA file (else the system's CAs) and the client certificate the proxy shows it
        # (--upstream-ca-file, --upstream-client-cert/--upstream-client-key), the clients' shared context
        # (transports.base.ssl_context: loaded once, again when a file is rewritten).
        self.tls = tls or ConnectSettings(url=self.upstream)
        self.tls_failure = UpstreamTls()
        self.live = live
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self.max_size = max_size
        self.clock = time.monotonic
        # The connections open now, each with the event that wakes its judge (drain wakes them all), and whether the
        # proxy drains (SIGTERM: no connection accepted, each closed once no chat is in flight on it).
        self.relays: dict[LiveConnection, asyncio.Event] = {}
        self.draining = False
        self._all_closed: asyncio.Event | None = None

    door: FrontDoor | None = None  # admission limits and keepalive; start_proxy sets it

    async def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        """Admit the client (a plain path, a free slot), then open the upstream connection during its handshake, so
        auth and subprotocol mirror it. Only --upstream is ever connected to, whatever the request names."""
        door = self.door or FrontDoor.defaults()
        self.door = door
        sink = self.live.sink
        peer = conn.remote_address[0] if conn.remote_address else None
        try:
            url = upstream_url(self.upstream, request.path)
        except BadTarget as exc:
            door.refuse(sink, "bad_request", peer)
            return conn.respond(HTTPStatus.BAD_REQUEST, f"bad request target: {exc}\n")
        if len(request.path) + sum(len(k) + len(v) + 4 for k, v in request.headers.raw_items()) > MAX_REQUEST_HEAD:
            door.refuse(sink, "bad_request", peer)
            return conn.respond(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                f"the request's headers are over {MAX_REQUEST_HEAD // 1024} KiB\n")
        if "Host" not in request.headers:
            # RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host, as the HTTP side (h11)
            # does; websockets does not ask for one, and such an upgrade was proxied.
            door.refuse(sink, "bad_request", peer)
            return conn.respond(HTTPStatus.BAD_REQUEST, "no Host header\n")
        twice = [name for name in ONCE_HEADERS if len(request.headers.get_all(name)) > 1]
        if twice:
            # Two Host headers (RFC 9110: a 400), two Authorization headers, two keys: which one counts is up to each
            # reader (the upstream got the last Authorization, the identity and the scrubbing knew that one only, and
            # a load balancer in front may have judged the first). Refused, counted, and logged by name, never value.
            door.refuse(sink, "bad_request", peer)
            door.throttle.warn("header_twice", "refused an upgrade (HTTP 400) that sent a header more than once: %s",
                               ", ".join(twice))
            return conn.respond(HTTPStatus.BAD_REQUEST, f"a header sent more than once: {', '.join(twice)}\n")
        try:
            # websockets' own checks of the client's upgrade (its key, version, Upgrade and Connection, and its
            # Sec-WebSocket-Protocol, parsed as the upstream connection would offer it), which it makes only after
            # this: a request it is going to refuse had an upstream connection opened for it first (a whole handshake,
            # with the user's credentials) and its refusal counted nowhere. A malformed Sec-WebSocket-Protocol is the
            # client's fault (400), not the upstream's (it was a 502 and a protocol_error on the upstream's dashboard).
            conn.protocol.process_request(request)
        except InvalidHandshake:
            door.refuse(sink, "bad_request", peer)
            return conn.protocol.accept(request)  # websockets' own answer to it: 400 or 426, and why
        if _garbage_after(conn):
            # What the client sent after its upgrade request, before any answer, is no WebSocket frame (a second
            # request pipelined behind it, a request body, garbage): websockets failed the connection already and
            # answers nothing. An upstream connection was opened for it all the same (a whole handshake, with the
            # user's credentials) and the refusal counted nowhere. (No answer can follow the end websockets sent:
            # the socket is dropped, so that none is tried.)
            return await _garbled(conn, door, sink, peer)
        # The subprotocols offered, read as websockets read them just now (a header it cannot parse was its 400 above).
        offered = [str(p) for h in request.headers.get_all("Sec-WebSocket-Protocol") for p in parse_subprotocol(h)]
        if len(offered) > MAX_SUBPROTOCOLS:
            door.refuse(sink, "bad_request", peer)
            return conn.respond(HTTPStatus.BAD_REQUEST, f"more than {MAX_SUBPROTOCOLS} subprotocols offered\n")
        key = limit_key(client_address(peer, request.headers.get_all("X-Forwarded-For"), door.trusted))
        if door.admit(conn, key, sink) is not None:
            refusal = conn.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections, try again later\n")
            refusal.headers["Retry-After"] = "5"
            return refusal
        headers = {k: v for k, v in request.headers.raw_items() if k.lower() in FORWARDED_HEADERS}
        secrets = credentials_of(headers.items(), offered, request.path)
        if self.live.recorder is not None:
            # The user's credentials held in the process's pool (redact.SeenCredentials) from before the upstream
            # sees them (it may echo them on another connection at once, before this one's handshake is answered)
            # until the client's socket closes, and within the pool's bound after that: scrubbed from every
            # connection's recording, not only this one's. (Without --record the proxy writes no server text anywhere:
            # its logs and labels are its own words.)
            seen = redact.seen_credentials()
            # A connection whose credentials pass MAX_RECORDED_CREDENTIALS is not recorded, but the upstream may still
            # tell them to another user: the head of each is held (heads_of), so that no recording shows one whole.
            pooled = secrets if sum(len(s) for s in secrets) <= MAX_RECORDED_CREDENTIALS else heads_of(secrets)
            # One client address holds at most the share of the pool it has of the connections (a tenth by default).
            held = seen.hold(pooled, owner=key, share=door.max_per_address / max(1, door.max_connections))
            if held:
                conn.connection_lost_waiter.add_done_callback(lambda _: seen.release(held))
        where = parse_uri(url)
        try:
            async with asyncio.timeout(self.connect_timeout):
                tls = ssl_context(self.tls) if where.secure else None  # (ConnectFailed for a file gone bad: a 502)
                # No redirect is followed, to another origin (the credentials would go with it) or the same one: a
                # passive proxy answers what --upstream answered to the path the client asked, a 502 here. Followed,
                # a same-origin 3xx made a 101 from a path the client never asked for (watched under its name; a
                # browser's WebSocket fails on any redirect), and a redirect to itself cost 11 upstream handshakes.
                upstream = await NoRedirects(url, additional_headers=headers, subprotocols=offered or None,  # type: ignore[arg-type]
                                             ssl=tls, host=where.host, port=where.port, open_timeout=None,
                                             ping_interval=door.ping_interval, ping_timeout=door.ping_timeout,
                                             close_timeout=CLOSE_TIMEOUT, compression=None, proxy=None,
                                             max_size=self.max_size, max_queue=MAX_QUEUE, write_limit=WRITE_LIMIT,
                                             user_agent_header=None, create_connection=UpstreamConnection)
        except InvalidStatus as exc:
            status = exc.response.status_code
            self.live.sink.connection_attempt(self.live.scenario, classify(exc)[0])
            if 400 <= status <= 599 and status in HTTPStatus._value2member_map_:
                return conn.respond(HTTPStatus(status), f"upstream answered HTTP {status}\n")
            return conn.respond(HTTPStatus.BAD_GATEWAY, f"upstream answered HTTP {status}\n")
        except TimeoutError:
            self.live.sink.connection_attempt(self.live.scenario, "timeout")
            return conn.respond(HTTPStatus.GATEWAY_TIMEOUT,
                                f"upstream did not answer within {self.connect_timeout:g}s\n")
        except Exception as exc:
            kind, reason = classify(exc)
            self.live.sink.connection_attempt(self.live.scenario, kind)
            self.tls_failure.failed(kind, reason)
            return conn.respond(HTTPStatus.BAD_GATEWAY, "upstream unreachable\n")
        conn.upstream = upstream  # type: ignore[attr-defined]
        door.upstream_opened(upstream)
        if _garbage_after(conn):
            # The same, sent while the upstream answered (the client may have hung up since): the upstream connection
            # closed, the refusal counted.
            await _close_within(upstream, 1001, "the client is gone")
            return await _garbled(conn, door, sink, peer)
        if conn.connection_lost_waiter.done():
            # The client left while the upstream answered: FrontDoor._hold, which closes the upstream of a handshake
            # that fails, ran before there was one to close. Left open, it stayed open for good (the upstream answers
            # its pings), out of every slot: a client connecting and hanging up at once opened one upstream
            # connection each time.
            await _close_within(upstream, 1001, "the client is gone")
            return None
        # Who the user is, and whether only a JWT's claim says so (then the connection is the user's once the server
        # accepted it: LiveConnection.confirm).
        conn.identity, conn.claimed = identity_of(headers, offered, request.path)  # type: ignore[attr-defined]
        conn.secrets = secrets  # type: ignore[attr-defined]
        return None

    def select_subprotocol(self, conn: ServerConnection, offered: Any) -> Any:
        upstream = getattr(conn, "upstream", None)
        return upstream.subprotocol if upstream is not None else None

    async def handler(self, client: ServerConnection) -> None:
        upstream = client.upstream  # type: ignore[attr-defined]
        door = self.door or FrontDoor.defaults()
        identity = getattr(client, "identity", "")
        conn = self.live.connection(identity, getattr(client, "secrets", ()), claimed=getattr(client, "claimed", False))
        conn.held = getattr(client, "held", None)  # how long its writes to the client were backed up (HeldBack)
        # -v: a line at each connection's start and end, naming its peer and its user's pseudonym (--record's label),
        # never its credentials or its request's path (a token may ride in its query). A user named only by a JWT's
        # unverified claim is not yet the connection's (LiveConnection.confirm): the line names the stranger it is
        # until the server accepts it (then a line of its own names the user), never the claimed user before (a forger
        # would otherwise be logged as its victim).
        peer = client.remote_address[0] if client.remote_address else "unknown"
        conn.peer = peer
        log.info("connection from %s (user %s) opened", peer,
                 self.live.label(conn.identity) if conn.confirmed else "unconfirmed: its token's claim awaits the server")
        changed = asyncio.Event()
        closed_by: list[str] = []
        ended: list[float] = []  # when the side that ended the connection was seen to end it (closed_by[0])
        # Servers that read the JWT from a subprotocol accept the handshake and only then reject it (an AUTH_FAILED
        # frame, or a close of AUTH_CLOSE_CODES: 1008, 4401, 4403): the attempt's result is known at the first server
        # frame, or at the close.
        attempt: list[str] = []

        def record(result: str) -> None:
            if not attempt:
                attempt.append(result)
                self.live.sink.connection_attempt(self.live.scenario, result)

        # Who ended the connection is the side whose connection closed: a send to the other side that finds it gone
        # is that side's doing. (A user who dropped while the server streamed was the server closing mid-run, parked and
        # judged lost; a server that dropped while the client sent was the user abandoning the chat.)
        last_from_client = [0.0]  # when the client's last frame was taken (client_to_upstream)

        async def client_to_upstream() -> None:
            side = "client"
            handed = size = 0  # frames and bytes forwarded since this relay last let the others run
            try:
                async for message in client:
                    handed += 1
                    size += len(message)
                    if handed > FRAMES_PER_TURN or size > BYTES_PER_TURN:
                        await asyncio.sleep(0)
                        handed, size = 1, len(message)
                    last_from_client[0] = now = self.clock()
                    sent = self.live.profile.decode_client(message)
                    if sent.kind == "dense":
                        # Too many JSON values to parse (profiles.MAX_CLIENT_STRUCTURE): refused as a frame over
                        # --max-size is, never passed on (1009 to the client, 1001 to the upstream; counted below).
                        _fail_dense(client)
                        break
                    if conn.client_frame(message, now, sent):
                        changed.set()  # a chat came: its deadline is for the judge to wait for, the server silent or not
                    try:
                        async with asyncio.timeout(self.send_timeout):
                            await upstream.send(message)
                    except ConnectionClosed:  # the upstream is gone
                        side = "server"
                        break
                    except TimeoutError:
                        door.throttle.warn("upstream_stuck", "the upstream took no frame for %gs: closing the "
                                           "connection", self.send_timeout)
                        side = "server"
                        break
            except ConnectionClosed:
                pass
            finally:
                closed_by.append(side)
                ended.append(self.clock())
                changed.set()

        async def upstream_to_client() -> None:
            side = "server"
            handed = size = 0  # frames and bytes forwarded since this relay last let the others run
            confirming = not conn.confirmed  # until the server accepts (or refuses) a claimed user: a test per frame
            try:
                async for message in upstream:
                    handed += 1
                    size += len(message)
                    if handed > FRAMES_PER_TURN or size > BYTES_PER_TURN:
                        await asyncio.sleep(0)
                        handed, size = 1, len(message)
                    try:
                        async with asyncio.timeout(self.send_timeout):
                            await client.send(message)
                    except ConnectionClosed:  # the client is gone
                        side = "client"
                        break
                    except TimeoutError:
                        door.throttle.warn("client_stuck", "a client took no frame for %gs: closing its connection",
                                           self.send_timeout)
                        side = "client"
                        break
                    if confirming:
                        confirming = not conn.first_server_frames(message, self.clock())
                    else:
                        conn.server_frame(message, self.clock())
                    record("auth_failed" if conn.auth_failed else "ok")
                    changed.set()
                _close_at_once(client, upstream, self.max_size)
            except ConnectionClosed:
                _close_at_once(client, upstream, self.max_size)
            finally:
                closed_by.append(side)
                ended.append(self.clock())
                changed.set()

        async def judge() -> None:
            while True:
                if self.draining and not conn.busy():
                    return  # drained: no chat in flight any more (a chat in its settle window is judged as it closes)
                wake = conn.next_due()
                changed.clear()
                timeout = None if wake is None else max(0.0, wake - self.clock())
                try:
                    async with asyncio.timeout(timeout):
                        await changed.wait()
                except TimeoutError:
                    pass
                conn.judge_due(self.clock())

        tasks = [asyncio.ensure_future(client_to_upstream()), asyncio.ensure_future(upstream_to_client())]
        judge_task = asyncio.ensure_future(judge())
        self.relays[conn] = changed
        drained = False
        try:
            await asyncio.wait([*tasks, judge_task], return_when=asyncio.FIRST_COMPLETED)
            drained = judge_task.done() and not closed_by
        finally:
            del self.relays[conn]
            if not self.relays and self._all_closed is not None:
                self._all_closed.set()
            for t in tasks:
                t.cancel()
            judge_task.cancel()
            await asyncio.gather(*tasks, judge_task, return_exceptions=True)
            # Give an upstream close to the client and vice versa (same code and reason), within a bound; a peer
            # that does not answer the close in time (it stopped reading) has its connection dropped.
            to_client, to_upstream = _close_of(upstream), _close_of(client)
            if drained:  # both told the proxy is going away: the client reconnects to another one
                to_client = to_upstream = 1001, DRAINED_REASON
            # A side the proxy failed for what it sent (a frame over --max-size, text that is not UTF-8, bad framing)
            # got 1009, 1007 or 1002; the other side is told why it ends, not that code (it sent nothing wrong): the
            # client that the upstream misbehaved (1014, bad gateway; a clean 1000 told it all was well), the
            # upstream that its client is gone (1001). The upstream's is an R12 on the chats open, as the harness's
            # clients judge it (they were judged lost mid-run, and parked for a resume, with no word of why).
            up_failure = failed_for(upstream.protocol, self.max_size)
            if up_failure is not None:
                conn.failed(up_failure, self.clock())
                to_client = 1014, f"upstream {up_failure}"
            client_failure = failed_for(client.protocol, self.max_size)
            if client_failure is not None:
                to_upstream = 1001, f"the client is gone ({client_failure})"
                # A client failed for what it sent after its upgrade (a frame over --max-size, a message too dense to
                # parse, in too many fragments, not UTF-8, bad framing) is refused as a bad upgrade is: counted
                # bad_request (the HTTP side's 413 alike), and said a line a minute, never what it sent.
                door.count_refusal(self.live.sink, "bad_request")
                door.throttle.warn("client_failed", "closed a client's connection for what it sent (from %s): %s",
                                   peer, client_failure)
            # A side failed so got its close already (websockets sent it as it failed the connection, failed_for):
            # that close is the one it gets, and the one -v's line names (it named 1000, a close never sent).
            if up_failure is not None and (sent := upstream.protocol.close_sent) is not None:
                to_upstream = sent.code, sent.reason
            if client_failure is not None and (sent := client.protocol.close_sent) is not None:
                to_client = sent.code, sent.reason
            # The chats are judged as the connection ended, before the close handshakes below (which wait up to
            # CLOSE_TIMEOUT for a peer slow to answer): a user who left is judged as of its leaving (abandoned at that
            # close, docs/protocol.md; an upstream slow to answer its own made a user who left before the first-event
            # limit an R9), and its chats are left as the recording orders it, the close record before the resume its
            # client sends on a new connection meanwhile (that resume found the chat still open here and moved it: one
            # cut again on that connection was judged live on frames of three connections, `check` of the recording
            # on two, the first not kept: R1, R2, R5, R6, R7 where the proxy passed it). Nothing reads the connection's
            # frames any more (the relays have ended); the upstream's close frame, when it sent one, has come.
            by_client = bool(closed_by) and closed_by[0] == "client"
            # When the side that ended the connection was seen to end it: a server's close is judged and recorded as
            # of its coming too, not once the close handshakes are over (a client slow to answer the proxy's close
            # put it up to CLOSE_TIMEOUT late in --record, after a message that had crossed it: `check` saw that
            # message wait on an open connection, an R9, and its resend as a chat of its own, where the proxy saw
            # one chat pass).
            end = ended[0] if ended else self.clock()
            failed_at = getattr(client, "failed_at", None)
            if by_client and failed_at is not None:
                # The proxy failed the client for what it sent: it left its chats then (nothing of it is read after
                # that, RFC 6455 7.1.7), not once it answered the close, or the close timeout dropped it (a client
                # holding its socket open made a prompt server's chat an R9, left 2 s late with no event relayed:
                # a send to a closing client waits for its close). No earlier than its last frame handed on.
                end = min(end, max(failed_at, last_from_client[0]))
            if by_client or drained:
                conn.closed(end if by_client else self.clock(), by_client=by_client, drained=drained)
            # An upstream that dropped the connection (no close frame: a crash, a load balancer cut it) is dropped for
            # the client too, as it came: a clean 1000 in its place told the client the server closed with a handshake,
            # and a client sends again a message that crossed such a close (docs/protocol.md), never one cut by a crash.
            # What each side sent after its relay stopped reading it is read while its closing handshake goes on
            # (_read_out), so that its answer to the close, behind those frames, is read too (the proxy reads one frame
            # ahead: a side with two chats or pongs in flight had its answer left unread, and was dropped at
            # CLOSE_TIMEOUT). What the client sent before the server's close reached it crossed that close: its
            # messages (RFC 6455: the proxy forwards none of them) are chats as the client counts them, judged as a
            # message that crossed such a close (sent again after a clean one) as of the close's coming, as `check`
            # reads them in the recording, sent before the close record. Anything else read so is dropped.
            crossed = not (by_client or drained) and closed_by[:1] == ["server"]
            readers = [asyncio.ensure_future(_read_out(client, 2 * self.max_size,
                                                       (lambda m: conn.client_frame(m, end)) if crossed else None)),
                       asyncio.ensure_future(_read_out(upstream, 2 * self.max_size))]
            try:
                if (closed_by[:1] == ["server"] and up_failure is None and upstream.protocol.state is State.CLOSED
                        and upstream.protocol.close_rcvd is None and upstream.protocol.close_sent is None):
                    if client.transport is not None:
                        client.transport.abort()
                    await _close_within(upstream, *to_upstream)  # (closed already: nothing is sent)
                    # Neither side got a close frame: -v's line says so (it named 1000 to each, closes never sent).
                    to_client = to_upstream = 1006, ""
                else:
                    await asyncio.gather(_close_within(client, *to_client), _close_within(upstream, *to_upstream))
                # Both connections are closed, or dropped (their end comes at the loop's next turn): the readers take
                # what came before it and end.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_TIMEOUT):
                        await asyncio.gather(*readers)
            finally:
                for r in readers:
                    r.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
            if not (by_client or drained):
                rcvd = getattr(getattr(upstream, "protocol", None), "close_rcvd", None)
                conn.closed(end, by_client=False, code=rcvd.code if rcvd is not None else 1006)
            log.info("connection from %s closed by %s (to the client %d, to the upstream %d)", peer,
                     "the proxy (drained)" if drained else closed_by[0] if closed_by else "the proxy", to_client[0],
                     to_upstream[0])
            if not attempt:
                # No frame of the server's came: refused (a close of AUTH_CLOSE_CODES, FrameRouter.closed_refusing
                # decided it at conn.closed, as every driver), else the connection ended before the welcome. The
                # client's close first (a user who left before the welcome) is the client's doing, whatever code the
                # upstream answered it with: a server echoes the code it got (RFC 6455 5.5.1, as websockets does), and
                # a client closing with 1008, 4401 or 4403 was counted the server refusing its credentials.
                record("ok" if drained or by_client else "auth_failed" if conn.auth_failed else "protocol_error")

    async def drain(self, server: Any, timeout: float, interrupted: asyncio.Event | None = None) -> int:
        """SIGTERM's first step: stop accepting connections (the listener closed; a handshake under way is answered
        503), close each open connection once no chat is in flight on it (1001, going away: the client reconnects to
        another replica), and wait for the rest for at most `timeout` seconds, or until `interrupted` is set (a second
        signal). Returns how many connections are still open (stop_proxy closes them)."""
        self.draining = True
        server.server.close()  # the asyncio listener only: the open connections go on
        self._all_closed = asyncio.Event()
        for changed in self.relays.values():
            changed.set()
        if self.relays and timeout > 0:
            await drain_wait(self._all_closed.wait(), timeout, interrupted)
        return len(self.relays)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="chatprobe proxy", description="Judge real users' chats passing through to an agent chat "
                "server (WebSocket, or HTTP POST answered with an SSE event stream), and serve chatprobe's metrics "
                "with source=\"live\".")
    p.add_argument("--upstream", required=True, metavar="URL",
                   help="the real server, e.g. ws://10.0.0.5:8000, or http(s)://10.0.0.5:8000 for a server answering "
                        "chats over HTTP + SSE (a profile spoken over SSE: ag-ui); then clients' HTTP/1.1 requests "
                        "are forwarded and --ping-interval/--ping-timeout do not apply")
    p.add_argument("--upstream-ca-file", metavar="PEM", help="CA bundle to verify a wss:// or https:// --upstream "
                   "(default: the system's CAs; beside a ws:// or http:// one, as the other --upstream-* TLS options, "
                   "a usage error)")
    p.add_argument("--upstream-client-cert", metavar="PEM", help="client certificate the proxy shows an --upstream "
                   "that asks for one (mutual TLS); its private key in the same file or in --upstream-client-key")
    p.add_argument("--upstream-client-key", metavar="PEM", help="the unencrypted private key of "
                   "--upstream-client-cert, when not in its file")
    p.add_argument("--listen", default="127.0.0.1:8780", metavar="HOST:PORT",
                   help="where users connect (default 127.0.0.1:8780)")
    p.add_argument("--metrics-listen", default="127.0.0.1:9465", metavar="HOST:PORT",
                   help="where /metrics is served (default 127.0.0.1:9465; port 0: off)")
    p.add_argument("--profile", default="netra", metavar="NAME|FILE",
                   help="the upstream's wire format: netra (default), ag-ui, or a YAML profile")
    p.add_argument("--target-name", metavar="NAME", help="the `target` label, 1 to 64 of A-Z a-z 0-9 _.:[]- "
                   "(default upstream host:port)")
    p.add_argument("--scenario", default="live", help="the `scenario` label, 1 to 64 of A-Z a-z 0-9 _.- "
                   "(default live)")
    p.add_argument("--first-event-limit", default="2s", metavar="DURATION",
                   help="a chat's first event later than this is an R9 (default 2s)")
    p.add_argument("--deadline", default="60s", metavar="DURATION",
                   help="a chat with no terminal event this long after its message is incomplete, R10 (default 60s)")
    p.add_argument("--stall-limit", default="30s", metavar="DURATION",
                   help="this long without an event mid-run is an R11 (default 30s)")
    p.add_argument("--settle", default="0.5s", metavar="DURATION",
                   help="listen this long after a terminal event for late events before judging (default 0.5s)")
    p.add_argument("--send-timeout", default=f"{DEFAULT_SEND_TIMEOUT:g}s", metavar="DURATION",
                   help="a peer that takes no frame for this long has its connection closed "
                        f"(default {DEFAULT_SEND_TIMEOUT:g}s)")
    p.add_argument("--drain-timeout", default=f"{DEFAULT_DRAIN_TIMEOUT:g}s", metavar="DURATION",
                   help="on SIGTERM, accept no connection and let the chats in flight end for at most this long before "
                        "closing the connections left with 1001 (0: at once; default "
                        f"{DEFAULT_DRAIN_TIMEOUT:g}s, under Kubernetes' 30s grace period)")
    p.add_argument("--max-size", default="4MiB", metavar="SIZE",
                   help="the largest frame taken from a client or from the upstream, e.g. 1048576, 512KiB, 4MiB; "
                        "a bigger one closes that connection with 1009 (default 4MiB). With an http(s):// upstream: "
                        "the largest request body (past it HTTP 413) and the largest event checked (past it an R12, "
                        "the rest relayed unchecked)")
    p.add_argument("--max-connections", metavar="N",
                   help="client connections held at once; past it a new one is answered HTTP 503 (default: what the "
                        "open-file limit carries with headroom, two descriptors a connection)")
    p.add_argument("--max-connections-per-ip", metavar="N",
                   help="connections one client address (an IPv6 /64) may hold, as nginx's limit_conn; past it HTTP "
                        "503 (default a tenth of --max-connections)")
    p.add_argument("--trusted-proxy", action="append", default=[], metavar="CIDR",
                   help="a load balancer in front of the proxy (repeatable): only from these peers is the client "
                        "address taken from X-Forwarded-For")
    p.add_argument("--ping-interval", default=f"{DEFAULT_PING_INTERVAL:g}s", metavar="DURATION",
                   help="keepalive ping to the client and to the upstream this often (0: off; default "
                        f"{DEFAULT_PING_INTERVAL:g}s)")
    p.add_argument("--ping-timeout", default=f"{DEFAULT_PING_TIMEOUT:g}s", metavar="DURATION",
                   help="a peer whose pong does not come within this long is dropped (default "
                        f"{DEFAULT_PING_TIMEOUT:g}s)")
    p.add_argument("--streaming", action="store_true", help="require partial_result in every chat (R2)")
    p.add_argument("--record", metavar="DIR", help="write the frames of connections with a chat that did not pass "
                   "to DIR as JSON Lines (for `chatprobe check`), secrets scrubbed; bounded: 1,000 files, 256 MiB on "
                   "disk with the files of connections still open, 16 MiB a connection, the oldest rotated out")
    p.add_argument("--record-all", action="store_true", help="with --record: keep every connection's frames")
    p.add_argument("-v", "--verbose", action="store_true", help="log each connection's start and end (INFO; over "
                   "HTTP, each request's answer), never a credential or a request's query")
    return p


# A drain beyond this is a typo (an orchestrator's grace period is seconds to minutes).
MAX_DRAIN_SECONDS = 3600.0
# Keepalive settings beyond this are typos (and asyncio timers overflow long before infinity).
MAX_PING_SECONDS = 3600.0
# ... and below this (`--ping-interval 20ms` for 20s): a ping to every client and to the upstream for each of them that
# often (1 ms: two thousand pings a second per connection, the proxy's CPU and the upstream's spent on them), or a pong
# due within it (every user on a link slower than that dropped at the first ping).
MIN_PING_SECONDS = 1.0


def _count(value: str | None, flag: str) -> int | None:
    """A positive whole number of connections from a flag, or None if not given."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or int(text) < 1:
        raise ConfigError(f"{flag} {value[:40]!r}: expected a whole number from 1 to 999999999")
    return int(text)


def front_door(args: argparse.Namespace) -> FrontDoor:
    """The admission settings from the flags; ConfigError names the flag. A --max-connections the open-file limit
    cannot carry is refused here rather than discovered as EMFILE under load."""
    pings = {}
    for flag in ("ping_interval", "ping_timeout"):
        try:
            pings[flag] = parse_duration(getattr(args, flag))
        except ValueError as exc:
            raise ConfigError(f"--{flag.replace('_', '-')}: {exc}") from None
        if pings[flag] > MAX_PING_SECONDS:
            raise ConfigError(f"--{flag.replace('_', '-')}: at most {MAX_PING_SECONDS:g}s")
        if 0 < pings[flag] < MIN_PING_SECONDS:
            raise ConfigError(f"--{flag.replace('_', '-')}: at least {MIN_PING_SECONDS:g}s"
                              + (" (0: no keepalive)" if flag == "ping_interval" else ""))
    if pings["ping_interval"] and not pings["ping_timeout"]:
        raise ConfigError("--ping-timeout: must be more than 0 while --ping-interval is on")
    nofile = open_file_limit()
    fits = connections_for_fds(nofile)
    total = _count(args.max_connections, "--max-connections")
    if total is None:
        if fits < 1:
            raise ConfigError(f"the open-file limit ({nofile}, ulimit -n) is too low to proxy any connection")
        total = fits
    elif total > fits:
        raise ConfigError(f"--max-connections {total}: each connection takes two file descriptors and the open-file "
                          f"limit ({nofile}, ulimit -n) carries at most {fits} with headroom; raise the limit or "
                          "lower the flag")
    per = _count(args.max_connections_per_ip, "--max-connections-per-ip")
    if per is None:
        per = default_per_address(total)
    elif per > total:
        # A cap above the total caps nothing (one address could still take every slot) and says the operator meant
        # something else: a typo, or the two flags swapped.
        given = "" if args.max_connections is not None else " (the default, from the open-file limit)"
        raise ConfigError(f"--max-connections-per-ip {per}: more than --max-connections {total}{given}; one client "
                          "address cannot hold more connections than there are in all")
    try:
        trusted = parse_trusted(args.trusted_proxy)
    except ValueError as exc:
        raise ConfigError(f"--trusted-proxy {exc}") from None
    return FrontDoor(total, per, trusted, ping_interval=pings["ping_interval"] or None,
                     ping_timeout=pings["ping_timeout"] or None)


async def start_proxy(proxy: Proxy, host: str, port: int, door: FrontDoor | None = None) -> Any:
    """Listen (port 0: any free port); returns the websockets Server, to `close()` and `wait_closed()`.
    `door` sets the connection caps and keepalive (default: caps from the open-file limit, pings every 20s)."""
    proxy.door = door or proxy.door or FrontDoor.defaults()
    proxy.door.init_metrics(proxy.live.sink)
    proxy.door.sink = proxy.live.sink
    install_accept_errors(asyncio.get_running_loop(), proxy.door.throttle)

    async def handle(client: ServerConnection) -> None:
        client.handled = True  # type: ignore[attr-defined]  # the handler closes the upstream from here on
        await proxy.handler(client)

    # The client's handshake waits for the upstream's (process_request): its deadline must outlast the upstream's,
    # or a silent upstream ended the client's handshake first, uncounted and unanswered, at the same 10 s.
    return await serve(handle, host, port, process_request=proxy.process_request,
                       open_timeout=proxy.connect_timeout + HANDSHAKE_SLACK,
                       select_subprotocol=proxy.select_subprotocol, compression=None, max_size=proxy.max_size,
                       max_queue=MAX_QUEUE, write_limit=WRITE_LIMIT, ping_interval=proxy.door.ping_interval,
                       ping_timeout=proxy.door.ping_timeout, close_timeout=CLOSE_TIMEOUT,
                       create_connection=_capped(proxy.door.connection_class(), lambda: proxy.clock()),
                       backlog=accept_batch(open_file_limit()))


# On SIGTERM the proxy drains first: it accepts no connection, closes each open one once no chat is in flight on it
# (1001, going away), and waits for the rest this long at most (--drain-timeout). Kubernetes sends SIGKILL 30 s after
# SIGTERM by default (terminationGracePeriodSeconds): this, plus SHUTDOWN_GRACE twice at worst, stays under it.
DEFAULT_DRAIN_TIMEOUT = 15.0
DRAINED_REASON = "the proxy is going away"
# Then connections get 1001 and this long to finish closing; then they are cut. (websockets' close() waits
# for its write buffer to drain before its close timeout starts, so a peer that reads nothing would hold the
# shutdown for good, past any orchestrator's grace period.)
SHUTDOWN_GRACE = 5.0


async def stop_proxy(server: Any, door: FrontDoor, grace: float = SHUTDOWN_GRACE) -> None:
    """Close the listener and every connection (1001), within `grace` seconds; cut what is left after it."""
    server.close()
    try:
        async with asyncio.timeout(grace):
            await server.wait_closed()
        return
    except TimeoutError:
        pass
    door.cut_all()
    try:
        async with asyncio.timeout(grace):
            await server.wait_closed()
    except TimeoutError:
        log.warning("connections still open %gs after shutdown began; exiting anyway", 2 * grace)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("httpx", "httpcore"):  # a line per HTTP request is noise (and may carry what a log should not)
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        profile = load_profile(args.profile)
        host, port = _hostport(args.listen, "--listen")
        mhost, mport = _hostport(args.metrics_listen, "--metrics-listen")
        upstream_parts = check_url(args.upstream, "--upstream", ("ws", "wss", "http", "https"))
        sse = upstream_parts.scheme in ("http", "https")  # the HTTP side (monitors/sse_proxy.py)
        if sse and "sse" not in profile.transports:
            raise ConfigError(f"--upstream {args.upstream[:120]!r}: the {profile.name} profile is not spoken over "
                              "HTTP + SSE (an http(s):// upstream needs one that is, e.g. --profile ag-ui); give its "
                              "ws:// or wss:// URL")
        # The upstream URL is this one's scheme, host, port and path plus each client's path and query: a query of
        # its own would be silently replaced, and credentials belong in the clients' headers, not in argv.
        if upstream_parts.query or upstream_parts.fragment:
            raise ConfigError("--upstream: no query or fragment (each client's own query is forwarded)")
        if upstream_parts.username is not None or upstream_parts.password is not None:
            raise ConfigError("--upstream: no credentials in the URL (clients' Authorization headers are forwarded)")
        if port and _is_self((host, port), upstream_parts.hostname or "",
                             upstream_parts.port or (443 if upstream_parts.scheme in ("wss", "https") else 80)):
            raise ConfigError(f"--upstream {args.upstream[:120]!r}: that is the proxy's own --listen address; give "
                              "the real server's")
        tls = upstream_tls(args, upstream_parts.scheme)
        limits = {}
        for flag in ("settle", "send_timeout", "drain_timeout"):
            try:
                limits[flag] = parse_duration(getattr(args, flag))
            except ValueError as exc:
                raise ConfigError(f"--{flag.replace('_', '-')}: {exc}") from None
        if limits["send_timeout"] <= 0:
            raise ConfigError("--send-timeout: must be more than 0")
        if limits["drain_timeout"] > MAX_DRAIN_SECONDS:
            raise ConfigError(f"--drain-timeout: at most {MAX_DRAIN_SECONDS:g}s")
        try:  # the limits as a scenario's `expect` takes them, as written (0 is refused there, and a bare first-event
            # limit of 10 or more, k6's milliseconds habit, as `expect.first_event_limit: 500` is)
            expect = Expect(streaming=args.streaming, first_event_limit=args.first_event_limit,
                            deadline=args.deadline, stall_limit=args.stall_limit)
        except ValidationError as exc:
            first = exc.errors()[0]
            flag = "--" + str(first["loc"][0]).replace("_", "-")
            raise ConfigError(f"{flag}: {str(first['msg']).removeprefix('Value error, ')}") from None
        try:
            max_size = parse_size(args.max_size)
        except ValueError as exc:
            raise ConfigError(f"--max-size: {exc}") from None
        door = front_door(args)
        check_label(args.target_name, "--target-name")
        check_label(args.scenario, "--scenario", SCENARIO_NAME_PATTERN)
        if args.record is not None and not args.record.strip():  # `--record "$UNSET"`: nothing would be kept
            raise ConfigError("--record: an empty path (an unset shell variable?)")
        if args.record_all and not args.record:
            raise ConfigError("--record-all needs --record DIR")
        recorder = None
        if args.record:
            try:
                recorder = Recorder(args.record, keep_all=args.record_all)
            except OSError as exc:
                raise ConfigError(f"--record {args.record}: {exc.strerror or exc}") from None
    except ConfigError as exc:
        print(f"chatprobe proxy: error: {redact.clean(exc, MESSAGE_LIMIT)}", file=sys.stderr)
        return EXIT_USAGE
    exp = expectations_for(profile, expect)
    sink = MetricsSink(default_metrics(), args.target_name or target_label(args.upstream), "live")
    # Its one scenario's series at zero from the first scrape: chats judged before the second scrape of a proxy
    # started anew (a deploy, on a new address) are an increase for rate(), not a series born above zero.
    sink.declare(args.scenario)
    live = LiveChats(profile, sink, exp, args.scenario, limits["settle"], recorder)
    metrics_server = None
    if mport:
        try:
            # the bounded server the monitor's HTTP side is (see httpserver.METRICS_THREADS)
            metrics_server = httpserver.start_metrics(mhost, mport)
        except OSError as exc:
            return _cannot_listen("--metrics-listen", args.metrics_listen, exc)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            proxy: Any  # either side: its `relays` (the connections open) and `drain` are what the stop below uses
            if sse:
                from .sse_proxy import SSEProxy, start_sse_proxy
                proxy = SSEProxy(args.upstream, live, send_timeout=limits["send_timeout"], max_size=max_size,
                                 tls=tls)
                server: Any = await start_sse_proxy(proxy, host, port, door)
            else:
                proxy = Proxy(args.upstream, live, send_timeout=limits["send_timeout"], max_size=max_size, tls=tls)
                server = await start_proxy(proxy, host, port, door)
        except OSError as exc:
            raise _ListenFailed(exc) from None
        if metrics_server is not None:  # said once the proxy listens too: a --listen it cannot use exits 2 first
            print(f"chatprobe proxy metrics on http://{_url_host(mhost)}:{mport}/metrics", flush=True)
        print(f"chatprobe proxy listening on {'http' if sse else 'ws'}://{_url_host(host)}:"
              f"{server.sockets[0].getsockname()[1]} (at most "
              f"{door.max_connections} connections, {door.max_per_address} per client address)", flush=True)
        await stop.wait()
        live.begin_stop()  # the chats kept for a resume or a resend: unjudged, counted while /metrics is served
        stop.clear()  # a second SIGTERM or Ctrl-C ends the drain at once
        busy = len(proxy.relays)
        if busy and limits["drain_timeout"] > 0:
            log.info("draining: %d connection(s) open, each closed (WebSocket: 1001) once no chat is in flight on it, "
                     "the rest in %gs", busy, limits["drain_timeout"])
        left = await proxy.drain(server, limits["drain_timeout"], stop)
        if left and limits["drain_timeout"] > 0:
            ended = ("when a second signal ended the drain" if stop.is_set()
                     else f"at the end of the drain (--drain-timeout {limits['drain_timeout']:g}s)")
            log.warning("stopping: %d connection(s) still had a chat in flight %s: closing them (WebSocket: 1001)",
                        left, ended)
        live.cut()
        await stop_proxy(server, door)
        live.stop()
        if live.stopped_unjudged:
            # The last scrape may come before these counts, or never: the process says them too.
            log.warning("stopping: %d chat(s) it could not judge (in flight on a connection it closed, or kept for "
                        "their user's resume or resend), counted in chatprobe_chats_unjudged_total{reason="
                        "\"proxy_stopped\"}, not as outcomes", live.stopped_unjudged)
        live.say_dropped(time.monotonic())  # what --record could not write since the last such line

    try:
        asyncio.run(run())
    except _ListenFailed as failed:
        return _cannot_listen("--listen", args.listen, failed.error)
    except OSError as exc:
        # Listening, the host failed under it (out of descriptors or memory outside accept, which asyncio retries):
        # one line, no traceback; not the flag's fault (exit 1).
        print(f"chatprobe proxy: error: {redact.clean(exc.strerror or exc, 200)}", file=sys.stderr)
        return 1
    finally:
        if metrics_server is not None:
            metrics_server.shutdown(timeout=1.0)
    return EXIT_OK


# The upstream's TLS options, by their TargetOptions names (checked as `run` checks --ca-file and --client-cert).
UPSTREAM_TLS = ("ca_file", "client_cert", "client_key")


def upstream_tls(args: argparse.Namespace, scheme: str) -> ConnectSettings:
    """The upstream's TLS settings of --upstream-ca-file, --upstream-client-cert and --upstream-client-key, checked
    (a file that cannot be used, or one given for a ws:// or http:// upstream, which would never read it: a
    ConfigError naming the flag)."""
    opts = TargetOptions(**{f: getattr(args, f"upstream_{f}") for f in UPSTREAM_TLS})
    given = [f for f in UPSTREAM_TLS if getattr(opts, f) is not None]
    if given and scheme not in ("wss", "https"):
        raise ConfigError(f"--upstream-{given[0].replace('_', '-')}: is for a wss:// or https:// --upstream "
                          f"({scheme}:// speaks no TLS)")
    try:
        check_ca_file(opts)
        check_client_cert(opts)
    except ConfigError as exc:
        raise ConfigError(flag_named(exc, "--upstream-", UPSTREAM_TLS), field=exc.field, detail=exc.detail) from None
    return ConnectSettings(url=args.upstream, ca_file=opts.ca_file, client_cert=opts.client_cert,
                           client_key=opts.client_key)


class _ListenFailed(Exception):
    """The proxy could not listen on --listen (raised out of its event loop with the OSError)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


def _cannot_listen(flag: str, value: str, exc: OSError) -> int:
    """An address the proxy cannot listen on (in use, not this host's, a port below 1024 without the right): the
    flag's fault, a usage error, one line naming it, as the monitor's --listen and the Locust user's metrics port."""
    print(f"chatprobe proxy: error: {flag} {redact.clean(value, 100)}: cannot listen: "
          f"{redact.clean(os_reason(exc), 200)}", file=sys.stderr)
    return EXIT_USAGE
