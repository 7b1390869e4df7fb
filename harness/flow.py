"""The sans-I/O core of a chat client: what a connection does with a frame (FrameRouter) and what a chat does next
(ChatFlow), decided from data only; the asyncio Session and the threaded SyncSession perform the actions.
"""
from __future__ import annotations

import copy
import enum
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from .backoff import CREDENTIALS_REFUSED, AttemptAnswer, ReconnectRetries
from .checker import ChatResult, ChatTracker, ConnectionChecker, Expectations, abandon, error_result, judge_followups
from .events import Event, Frame, FrameKind, Outcome, Role, Rule, SessionError, Violation
from .profiles import Profile
from .sinks import Fanout, Sink

if TYPE_CHECKING:
    from .targets import Target

_chat_ids = itertools.count(1)
# The OS's randomness for chats' ids, read for ID_BATCH chats at once (a getrandom(2) per chat was a system call of
# each): 44 hex digits (22 bytes) a chat, each string taken once (list.pop: atomic, so threads share the list safely).
ID_BATCH = 128
_random_ids: list[str] = []
if hasattr(os, "register_at_fork"):  # a forked child reads its own: never the ids its parent had read ahead
    os.register_at_fork(after_in_child=_random_ids.clear)


def _read_ids() -> str:
    """One chat's random digits, the next ID_BATCH - 1 chats' kept for them."""
    digits = os.urandom(22 * ID_BATCH).hex()
    ids = [digits[i:i + 44] for i in range(0, len(digits), 44)]
    mine = ids.pop()
    _random_ids.extend(ids)
    return mine


def new_tracker(expectations: Expectations, scenario: str, now: float, client_run_id: bool,
                thread_id: str | None = None) -> ChatTracker:
    """A chat with fresh thread (unless it continues `thread_id`), message and (when the client names runs) run ids."""
    n = next(_chat_ids)
    # The four ids from one chat's 22 random bytes (48 random bits each, as before), not four uuid4() calls.
    try:
        r = _random_ids.pop()
    except IndexError:
        r = _read_ids()
    return ChatTracker(  # (by position: see ChatTracker.__init__)
        f"c{n}-{r[36:44]}", expectations, now, scenario,
        thread_id or f"t-{r[:12]}",  # thread_id
        f"r-{r[24:36]}" if client_run_id else None,  # run_id
        f"m-{r[12:24]}",  # message_id
    )


def resume_frame(profile: Profile, tracker: ChatTracker) -> dict[str, Any] | None:
    """The frame that resumes a chat's run after a reconnect, or None when it cannot be resumed."""
    if profile.resume is None or tracker.run_id is None:
        return None
    start = tracker.exp.seq_start
    # The highest seq had; with none seen, the events' count as if numbered from the dialect's first (none: start - 1,
    # -1 for a dialect counting from 0: its server replays from seq 0, not past it).
    seen = tracker.max_seq >= start
    return profile.build_resume(tracker.run_id, tracker.max_seq if seen else len(tracker.events) + start - 1)


# Why a chat whose resume the server answered with RESUME_UNKNOWN_RUN (it forgot the run: a restart, a deploy that lost
# its state) ended: lost, judged at once, by the live client, the proxy and `chatprobe check` alike.
RESUME_UNKNOWN_NOTE = "the server did not know the run when resuming (RESUME_UNKNOWN_RUN)"
# Why a chat whose connection was lost mid-run is incomplete when the reconnect to resume its run failed: live
# (ChatFlow.reconnected) and in `chatprobe check` of the recording (its close record of the failed reconnect,
# "resume": true), alike.
RECONNECT_FAILED_NOTE = "connection lost mid-run and reconnecting failed"
# Chats one connection `chatprobe proxy` watches may have open at once (a chat UI has one or a few). Past it the proxy
# judges the oldest as it stands, as the client's doing (crowded_out): a client that sent 40,000 messages on one
# connection had made 40,000 trackers wait for their deadline, and every message rebuilt an index of them all. Its
# `--record` names that chat on the send record that crowded it out ("crowded_out"), so that `chatprobe check` of the
# recording judges the same chat so, at the same record: which chat it was is the proxy's to say, not the records',
# since the proxy judges the chats whose verdict fell due on a timer of its own, and one due a moment before a new
# message came may still have been open there.
MAX_OPEN_WATCHED = 64
TOO_MANY_OPEN = f"the client had more than {MAX_OPEN_WATCHED} chats open at once on the connection"


def crowded_out(result: ChatResult) -> ChatResult:
    """The verdict of a chat judged as it stood because its client had more than MAX_OPEN_WATCHED open on the
    connection (its note TOO_MANY_OPEN): an `error`, `rejected`, the client's doing (the proxy counts it in
    chatprobe_client_rejections_total, `check` of its recording among the `error` chats of that kind), whatever the
    chat had received. One verdict for the proxy and `chatprobe check`."""
    result.outcome, result.error_kind, result.error = Outcome.ERROR, "rejected", TOO_MANY_OPEN
    return result


def judge_resume(tracker: ChatTracker, events_before: int, *, left: bool = False) -> str | None:
    """Whether a resume brought events back since it was sent (`events_before`: the chat's events then): `resumed`,
    else `lost`, recorded on the chat. `left`: the client left the chat with the resume still pending (abandoned it,
    or the run stopped it: its max_duration, Ctrl-C; or the recording ends there): `resumed` when events came back,
    else None and nothing recorded (the client left before the server could show whether the run went on: neither
    counted, the server not blamed for what it had no time to show). One judgement for the live client (ChatFlow),
    the proxy and `chatprobe check` (PendingResumes)."""
    came_back = tracker.n_events > events_before
    if left and not came_back:
        return None
    tracker.reconnected(came_back)
    return tracker.reconnects[-1]


def forgot_run(router: "FrameRouter", tracker: ChatTracker) -> bool:
    """The server answered a resume of the chat's run on the router's connection with RESUME_UNKNOWN_RUN."""
    unknown = router.resume_unknown
    return unknown is not None and tracker.run_id is not None and tracker.run_id in unknown


def resend_key(message_id: str | None, run_id: str | None) -> str | None:
    """What tells a watcher (the proxy, `chatprobe check`) that a client's request sends again a message it held for a
    resend: its message id, else the run id the client named (an AG-UI request names its run, and no message id the
    profile reads); None: nothing does."""
    return message_id or (f"\x00run {run_id}" if run_id else None)


# What a WebSocket close code the server ended a connection with says (RFC 6455 7.4.1, the IANA registry; 4401 and
# 4403, application codes, as graphql-ws and many agent servers use them).
CLOSE_CODE_MEANINGS = {1000: "a normal close", 1001: "going away", 1002: "protocol error", 1003: "unsupported data",
                       1006: "dropped without a close frame", 1007: "invalid data", 1008: "policy violation",
                       1009: "message too big", 1011: "the server's internal error", 1012: "service restart",
                       1013: "try again later", 4401: "unauthorized", 4403: "forbidden"}
# The close codes that refuse the credentials when they answer a connection (before its welcome): the policy-violation
# close (1008) and the de-facto application codes for "unauthorized" and "forbidden" (4401, 4403: graphql-ws, many
# agent servers), as an AUTH_FAILED frame or an HTTP 401/403 at the handshake; only when the server sent no frame
# before it. Read in one place, FrameRouter.closed_refusing, which every driver calls at a close (welcome_outcome and
# the proxy's count of its upstream's answer read what it decided).
AUTH_CLOSE_CODES = frozenset({1008, 4401, 4403})


def lost_note_for(ended_note: str, can_resume: bool, *, dialect_resumes: bool = True,
                  close_code: int | None = None) -> str:
    """Why a chat ended without its terminal event when the connection went and was not resumed: the transport's note
    (a truncated event stream), else the WebSocket close code the server ended it with (never its close reason: text
    of the server's, which may echo anything) and why the run was not resumed (a dialect with no `resume`, AG-UI's, or
    a run with no id yet)."""
    if ended_note:
        return ended_note
    note = "connection lost mid-run"
    if close_code is not None:
        meaning = CLOSE_CODE_MEANINGS.get(close_code)
        note += f" (WebSocket close code {close_code}{': ' + meaning if meaning else ''})"
    if not can_resume:
        note += " before the run had an id to resume" if dialect_resumes else "; the dialect has no resume"
    return note


# What a conversation keeps of its turns for a dialect whose requests carry them (AG-UI): at most this many bytes,
# counting each message's text (UTF-8) and id and MESSAGE_OVERHEAD, the oldest turns dropped first, a reply cut
# short past it. Every continued request carries it all and every conversing user holds it: 32 KiB keeps a request
# well under the 1 MiB body limit common in front of servers (nginx's default) and agentsim's frame limit, and 1,000
# conversing users under 40 MB; a server naming a new message id per delta, or streaming a reply in one-byte deltas,
# cannot make it more (the reply being heard is one buffer of its UTF-8, not a string per delta).
MAX_HISTORY_BYTES = 32 * 1024
# A kept message beyond its text and id: what it holds in memory (a dict of three keys, two strings, a list slot and
# its cost: ~310 bytes in CPython 3.11), which also covers the JSON around it in a request.
MESSAGE_OVERHEAD = 320


def _utf8(text: str) -> bytes:
    """A reply's text as UTF-8, a lone surrogate (which JSON can carry) kept as its three bytes, never refused."""
    return text.encode("utf-8", "surrogatepass")


def _cut(data: bytes, room: int) -> bytes:
    """UTF-8 `data` cut to at most `room` bytes, on a character boundary."""
    if len(data) <= room:
        return data
    room = max(room, 0)
    while room and (data[room] & 0xC0) == 0x80:  # never inside a character
        room -= 1
    return data[:room]


class Conversation:
    """One virtual user's thread across its chat steps (a step's `thread: continue`, docs/scenarios.md): the thread
    id the next turn reuses and, for a dialect whose request carries the conversation so far (a `{history}` item in
    the profile's request: AG-UI), its messages: each turn's user message and the assistant's text of its run as
    assembled from the partial_result events (`fields.reply_text`, one assistant message per `fields.reply_id`),
    bounded by MAX_HISTORY_BYTES. The latest turn's messages are never dropped to make room for its own reply: a
    longer reply is cut short; a user message longer than the bound is not kept (never sent altered under its id).
    A turn continues whatever the previous one's verdict: what arrived of its reply is what a user saw. Pure: the
    flow tells it what was sent and what was heard."""

    __slots__ = ("thread_id", "messages", "costs", "nbytes", "chat_id", "_turn", "_reply_id", "_reply",
                 "_reply_cost")

    def __init__(self) -> None:
        self.thread_id: str | None = None
        self.messages: list[dict[str, str]] = []  # the turns so far, as the request's messages
        self.costs: list[int] = []  # what each of them counts against the bound
        self.nbytes = 0  # the sum of `costs`, and of the reply being heard
        self.chat_id: str | None = None  # the chat of the latest turn, whose reply is heard
        self._turn = 0  # how many of `messages` are the latest turn's (its user message, its reply's closed ones)
        self._reply_id: str | None = None  # the reply being heard (its id), None while none is
        self._reply = bytearray()  # its text so far, as UTF-8 (a string per delta would cost ~50 bytes each)
        self._reply_cost = 0  # what the reply being heard counts in `nbytes`

    def turn(self, chat_id: str, thread_id: str, message_id: str | None, content: str, *, continues: bool,
             keep: bool) -> list[dict[str, str]] | None:
        """A new turn (`continues`: on the thread so far, else a new conversation): the messages before it, which a
        request that carries history (`keep`) sends, None when there are none."""
        self._close_reply()
        self._turn = 0
        if not continues:
            self.messages, self.costs, self.nbytes = [], [], 0
        history = list(self.messages) if keep and self.messages else None
        self.thread_id, self.chat_id = thread_id, chat_id
        if keep:
            mid = message_id or f"{chat_id}-user"
            cost = len(_utf8(content)) + len(mid) + MESSAGE_OVERHEAD
            # A message past the bound is sent whole in its own request and left out of the later ones: cut short it
            # would be another text under the same id, an edit (ag-ui-langgraph reruns the thread from an edited
            # user message, and the new one never reaches the model).
            if cost <= MAX_HISTORY_BYTES:
                self._make_room(cost)
                self.messages.append({"id": mid, "role": "user", "content": content})
                self.costs.append(cost)
                self.nbytes += cost
                self._turn = 1
        return history

    def heard(self, chat_id: str, reply_id: str | None, text: str | None) -> None:
        """A piece of the reply of chat `chat_id` (kept only while that chat is the latest turn; a piece naming the
        reply message of an earlier turn is a late one of that turn, not kept)."""
        if chat_id != self.chat_id or not text or (self.nbytes >= MAX_HISTORY_BYTES and len(self.messages) == self._turn):
            return  # full of the latest turn: the rest of its reply costs nothing more
        data = _utf8(text[:MAX_HISTORY_BYTES])  # never more encoded than could be kept
        if self._reply_id is None or (reply_id is not None and reply_id != self._reply_id):
            earlier = len(self.messages) - self._turn
            if reply_id is not None and any(m["id"] == reply_id for m in self.messages[:earlier]):
                return
            self._close_reply()
            rid = reply_id or f"{chat_id}-reply-{len(self.messages)}"
            cost = len(_utf8(rid)) + MESSAGE_OVERHEAD
            self._make_room(cost + len(data))
            if self.nbytes + cost >= MAX_HISTORY_BYTES:
                return  # no room for a byte of it: this piece is not kept
            self._reply_id, self._reply_cost = rid, cost
            self.nbytes += self._reply_cost
        else:
            self._make_room(len(data))
        data = _cut(data, MAX_HISTORY_BYTES - self.nbytes)  # past the bound: cut short, never held past it
        self._reply += data
        self.nbytes += len(data)
        self._reply_cost += len(data)

    def _close_reply(self) -> None:
        """The reply heard so far becomes an assistant message of the conversation (its cost is counted already)."""
        rid = self._reply_id
        if rid is not None:
            content = self._reply.decode("utf-8", "surrogatepass")
            # A string holds each character in the width of its widest (4 bytes for all once one is past U+FFFF):
            # ASCII with one emoji held 4 times its UTF-8. Its cost is the larger of the two.
            top = max(content, default="")
            width = 4 if top > "\uffff" else 2 if top > "\xff" else 1
            counted = len(self._reply)
            if len(content) * width > counted:
                self._make_room(len(content) * width - counted)
                room = (MAX_HISTORY_BYTES - self.nbytes + counted) // width
                content = content[:max(room, 0)]  # the latest turn alone past the bound: cut short
                self.nbytes += len(content) * width - counted
                self._reply_cost += len(content) * width - counted
            self.messages.append({"id": rid, "role": "assistant", "content": content})
            self.costs.append(self._reply_cost)
            self._turn += 1
        self._reply_id, self._reply, self._reply_cost = None, bytearray(), 0

    def _make_room(self, size: int) -> None:
        """Drop the oldest messages of the turns before the latest until `size` more bytes fit (the latest turn's
        are kept: its reply is cut short instead)."""
        drop = 0
        while self.nbytes + size > MAX_HISTORY_BYTES and drop < len(self.messages) - self._turn:
            self.nbytes -= self.costs[drop]
            drop += 1
        if drop:
            del self.messages[:drop], self.costs[:drop]


WAKE_ALL = "*"
NO_IDS: frozenset[str] = frozenset()  # the id sets of a FrameRouter until their first member (memory per connection)
# Shortest time between two answers to a server's pings (real servers ping every few seconds at most).
PONG_INTERVAL = 0.5
# Run ids a connection remembers the server did not know on resume (each at most MAX_ID_BYTES); past it the oldest go.
MAX_RESUME_UNKNOWN = 256
_NEVER = float("-inf")  # one float for every connection's "no pong yet" (24 bytes each otherwise)


class FrameRouter:
    """The sans-I/O half of a client connection, shared by the asyncio Session and the threaded SyncSession.

    `on_frame` decodes one frame with the profile, routes events to their chats through the ConnectionChecker and
    says what the I/O layer must do: which chat to wake (a chat id, WAKE_ALL or None) and what to reply (a ping).
    """

    __slots__ = ("profile", "checker", "sink", "scenario", "answered", "spoke", "said", "last_pong", "auth_failed",
                 "resume_unknown", "awaiting", "every_event", "conversations", "resumes", "reconnecting", "_decode",
                 "_on_event", "refused_by_close")

    def __init__(self, profile: Profile, checker: ConnectionChecker, sink: Sink, scenario: str) -> None:
        profile.prepare()  # before any chat of the connection is timed (a no-op once done)
        self.profile = profile
        self.checker = checker
        self.sink = sink
        self.scenario = scenario
        self.answered = False  # the server answered the opening of this connection (welcome, event or AUTH_FAILED)
        # The server sent a frame on this connection that is no event (an event sets `answered`): set at the first
        # such frame, once a connection. With `answered`, whether the server said anything at all (closed_refusing).
        self.spoke = False
        # The code of the last connection-level error the server sent on this connection (not AUTH_FAILED): what a
        # connection that closes before its welcome says it heard (welcome_outcome).
        self.said: str | None = None
        self.last_pong = _NEVER
        self.auth_failed: Frame | None = None
        self.refused_by_close = False  # `auth_failed` is the close's (closed_refusing), not a frame the server sent
        # The run ids the server answered RESUME_UNKNOWN_RUN for on the current connection, oldest first; None until
        # the first. A resume is answered on the connection that carried it: a new connection starts with none.
        self.resume_unknown: dict[str, None] | None = None
        # The resumes sent on the current connection (`resume_sent`) that no answer named yet: run id ("" for a resume
        # naming none) -> the chat resumed (None: one the driver follows no chat of) and its events when the resume
        # went; None until the first. What a RESUME_UNKNOWN_RUN that names no run is about (`_unnamed_unknown`).
        self.awaiting: dict[str, tuple[ChatTracker | None, int]] | None = None
        # Chats whose flow acts on a count of events (disconnect_after, abandon_after): woken on every event. Any
        # other chat is woken when its run is done (or the connection says something to everyone): a wake per
        # event would cost each chat a task switch per event for nothing.
        self.every_event: set[str] | frozenset[str] = NO_IDS
        # Chats whose reply a conversation keeps for its next turn (a dialect whose requests carry the conversation),
        # by chat id; None while there are none (nothing per event then but this test).
        self.conversations: dict[str, Conversation] | None = None
        # The runs this client resumed on the current connection (`resumed`): the replay's exact copies of events its
        # chats had are left unjudged, as the proxy and `chatprobe check` leave them (Resumes). None until a resume.
        self.resumes: Resumes | None = None
        # The reconnect attempts the chats that lost the last lost connection share (ChatFlow), None until a loss.
        self.reconnecting: ReconnectRetries | None = None
        # The compiled decoder, bound once: pydantic's private-attribute lookup on every frame costs more than JSON.
        self._decode = profile._decoder.decode
        # The sink's per-event hook, or None when no sink listens to events (a call per event saved).
        self._on_event = sink.event_received if listens_to_events(sink) else None

    def new_connection(self) -> None:
        self.connection_ended()  # (reported at the last one's end already: nothing is left but for a driver that forgot)
        self.checker.new_connection()
        self.answered = self.spoke = False
        self.said = None
        self.auth_failed = None
        self.refused_by_close = False
        # The pong bound is a connection's: a new connection's first ping is answered, however soon after the last
        # connection's (a reconnect within PONG_INTERVAL left it unanswered, and a server that drops a connection whose
        # ping goes unanswered dropped the resumed one).
        self.last_pong = _NEVER
        self.resumes = None  # a replay is the connection's that carried it
        self.resume_unknown = None  # so is the answer to a resume
        self.awaiting = None  # and the resumes awaiting one

    def connection_ended(self) -> list[Violation]:
        """The connection ended, or its driver stops (a run's stop, the proxy's, the end of a recording): what no chat
        was told (another user's events, R8, malformed frames, R12, after the last chat was judged: ConnectionChecker.
        ended) is the connection's own violation, reported to the sink now, never dropped; returned, for a driver
        that counts them itself (`chatprobe check`). Every driver's one way to report them."""
        told = self.checker.ended()
        for violation in told:
            self.sink.connection_violation(self.scenario, violation)
        return told

    def resume_sent(self, run_id: str | None, chat: ChatTracker | None) -> None:
        """A resume of `run_id` went on this connection, of `chat` (None: a resume the driver follows no chat of, as
        the proxy may see one): awaited until an answer names its run, its chat has events back or is judged.
        Bounded: past MAX_RESUME_UNKNOWN the oldest goes."""
        awaiting = self.awaiting
        if awaiting is None:
            awaiting = self.awaiting = {}
        else:  # the answered ones go (a few resumes a connection: this walk is no cost per frame)
            for run, (had, before) in list(awaiting.items()):
                if had is not None and (had.judged or had.n_events > before):
                    del awaiting[run]
        key = run_id or ""
        awaiting.pop(key, None)
        if len(awaiting) >= MAX_RESUME_UNKNOWN:
            del awaiting[next(iter(awaiting))]
        awaiting[key] = (chat, chat.n_events if chat is not None else 0)

    def resumed(self, chat: ChatTracker, frame: dict[str, Any] | None) -> None:
        """`chat`'s run is resumed on this connection with `frame`: what the client says it had is read from the frame
        as a watcher reads it (`Profile.decode_client`: its `last_seq`, none when the template has no `{last_seq}`),
        and the replay followed as the proxy and `chatprobe check` follow it (Resumes.resumed_here)."""
        if frame is None:
            return
        self.resume_sent(chat.run_id, chat)
        if self.resumes is None:
            self.resumes = Resumes()
        sent = self.profile.decode_client(json.dumps(frame, ensure_ascii=False))
        self.resumes.resumed_here(chat, chat.run_id, sent.last_seq)

    def on_frame(self, message: str | bytes, at: float) -> tuple[str | None, dict[str, Any] | None]:
        """(whom to wake, what to send back) for one received frame."""
        decoded = self._decode(message, at)
        if decoded.__class__ is Event:  # (an Event or a Frame, neither subclassed: no isinstance call per frame)
            if self.resumes is not None and self.resumes.skips(decoded):
                return None, None  # an exact copy of an event its chat had, replayed as asked (Resumes)
            chat = self.checker.route(decoded)
            if self.conversations is not None and chat is not None and decoded.role is Role.PARTIAL_RESULT:
                self._heard(chat, decoded, message)
            if self._on_event is not None:
                self._on_event(self.scenario, decoded)
            self.answered = True
            if chat is None:
                return WAKE_ALL, None
            # chat.done and chat.root, read without their property calls for the events before the terminal one
            # (done needs a terminal event or a connection error; `_root` is set only on a further run).
            if (((chat.terminal_index is not None or chat.connection_error is not None) and chat.done)
                    or chat._root is not None or chat.wake_id in self.every_event):
                return chat.wake_id, None
            return None, None
        assert isinstance(decoded, Frame)  # (for the type checker: not an event frame's cost)
        kind = decoded.kind
        if not self.spoke:
            self.spoke = True  # the server said something (once a connection: never a refusal by close, below)
        if decoded.problem:
            # Read, but malformed (NaN or Infinity: a browser's JSON.parse refuses it): its R12 on the chats on screen,
            # as any malformed frame's, before what it says is taken (an error still ends the chat it answers).
            self.checker.on_malformed(Frame(FrameKind.MALFORMED, detail=decoded.problem), at)
        if kind is FrameKind.PING:
            # At most one reply per PONG_INTERVAL: a server flooding pings must not make the client flood back
            # (or pile up sends on a socket it never reads).
            if at - self.last_pong < PONG_INTERVAL:
                return None, None
            self.last_pong = at
            return None, self.profile.ping_reply()
        # A stream-end marker (FrameKind.STREAM_END: `[DONE]`) falls through: no run's, no violation, and no welcome
        # (a server that says only that a stream is over has not greeted the connection: still awaited, live and
        # offline alike, and the frame after it is still the connection's first).
        if kind is FrameKind.CONTROL:
            self.checker.welcome(decoded, first=not self.answered)
            self.answered = True
        elif kind is FrameKind.ERROR:
            if decoded.session_error is SessionError.AUTH_FAILED:
                self.auth_failed = decoded
                self.answered = True
            else:
                self.said = decoded.error_code or decoded.wire_type
                if decoded.session_error is SessionError.RESUME_UNKNOWN:
                    self._unknown_run(decoded.run_id or self._unnamed_unknown() or "*")
            self.checker.on_error(decoded, at)
            return WAKE_ALL, None
        elif kind is FrameKind.MALFORMED:
            self.checker.on_malformed(decoded, at)
            return WAKE_ALL, None
        return None, None

    def _unnamed_unknown(self) -> str | None:
        """The run a RESUME_UNKNOWN_RUN that names none is about: the one resume on this connection still awaiting an
        answer (no event back since it went, its chat not judged; or one the driver follows no chat of), when there
        is exactly one, as there usually is (a client resumes the run it lost). With several awaiting, the answer
        could be about any of them: it is about none (each is judged by its own events, or lost at its chat's
        verdict); a server that names the run tells them apart."""
        awaiting = self.awaiting
        if not awaiting:
            return None
        waiting = [run for run, (chat, before) in awaiting.items()
                   if chat is None or (not chat.judged and chat.n_events == before)]
        if len(waiting) != 1:
            return None
        del awaiting[waiting[0]]
        return waiting[0] or None  # a resume that named no run: no chat can be told by it

    def _unknown_run(self, run_id: str) -> None:
        """The server did not know `run_id` when it was resumed on this connection. Bounded: a server flooding such
        answers makes the oldest go, never the newest (the one a chat resuming now waits for)."""
        if self.awaiting:
            self.awaiting.pop(run_id, None)  # answered
        unknown = self.resume_unknown
        if unknown is None:
            unknown = self.resume_unknown = {}
        elif len(unknown) >= MAX_RESUME_UNKNOWN and run_id not in unknown:
            del unknown[next(iter(unknown))]
        unknown[run_id] = None

    def forget_unknown(self, chat: ChatTracker) -> None:
        """The server's RESUME_UNKNOWN_RUN for `chat`'s run is answered: its message goes again under that run id, a
        new run the server may start (a chat sent again after its resume was refused, ChatFlow._on_the_way)."""
        if self.resume_unknown is not None and chat.run_id is not None:
            self.resume_unknown.pop(chat.run_id, None)

    def _heard(self, chat: ChatTracker, event: Event, message: str | bytes) -> None:
        """A piece of a reply to a chat whose conversation goes on: kept for the next turn's request (a further run the
        stream carried is part of the same reply). Not an event that is not of the chat's run as a client sees it:
        one naming another thread (an R8: another conversation's words), or one before the run started (R1: a late
        event of the turn before, which an AG-UI client refuses too)."""
        assert self.conversations is not None
        if not chat.saw_started or (event.thread_id is not None and event.thread_id != chat.thread_id):
            return
        root = chat.root
        conversation = self.conversations.get(root.chat_id)
        if conversation is not None:
            text, reply_id = self.profile.reply_of(message)
            conversation.heard(root.chat_id, reply_id, text)

    def listen_for_reply(self, chat_id: str, conversation: Conversation) -> None:
        if self.conversations is None:
            self.conversations = {}
        self.conversations[chat_id] = conversation

    def reply_heard(self, chat_id: str) -> None:
        """The chat is judged: its reply is what its conversation keeps."""
        if self.conversations is not None:
            self.conversations.pop(chat_id, None)
            if not self.conversations:
                self.conversations = None

    def closed_refusing(self, close_code: int | None, at: float, *, by_client: bool) -> bool:
        """The server closed the connection with a code of AUTH_CLOSE_CODES before it said anything on it (no frame at
        all: no welcome, no event, no error, no ping): the credentials refused, as an AUTH_FAILED frame refuses them
        (the same road: the chats waiting on the connection are `error` chats, `auth_failed`, and the connection,
        awaiting its welcome, is an `auth_failed` one). Every driver calls it at the connection's end, before it marks
        the connection closed (live clients, the proxy, `chatprobe check`): the one place this is decided
        (welcome_outcome reads `auth_failed`). True when it was such a close. Once the server spoke (an error frame
        rejecting a message, then 1008: that message's policy, not the credentials), a close is judged as any cut
        run's; and a close the client started (`by_client`: it left, dropped or stopped; a server answers a close
        with the code it got, or its own) is never the server refusing."""
        if (by_client or close_code not in AUTH_CLOSE_CODES or self.answered or self.spoke
                or self.auth_failed is not None):
            return False
        frame = Frame(FrameKind.ERROR, error_code=f"close code {close_code}", session_error=SessionError.AUTH_FAILED)
        self.auth_failed = frame
        self.refused_by_close = True
        self.checker.on_error(frame, at)
        return True

    def failure_answer(self, close_code: int | None) -> dict[str, Any]:
        """What the server answered a connection that never became usable, as ConnectFailed's fields for the retry
        decision (backoff.ReconnectRetries.failed): the close code it ended the connection with, and the code of the
        AUTH_FAILED session error it sent (not one closed_refusing made of a close: the close code says that)."""
        frame = self.auth_failed
        by_frame = frame is not None and not self.refused_by_close
        return {"close_code": close_code,
                "auth_frame": (frame.error_code or frame.wire_type or "AUTH_FAILED") if by_frame and frame else None}

    def welcome_outcome(self, in_time: bool, closed: bool, close_code: int | None, timeout: float) -> tuple[str, str]:
        """How opening the connection went once the welcome was awaited (`in_time`: the server answered or the
        connection closed within `timeout`), reported to the sink: ("ok", "") or a ConnectFailed's (kind, reason)."""
        if not in_time:
            # The server accepted the WebSocket and said nothing it could be understood by: reachable, wrong dialect
            # or stuck (a handshake that never completes is the transport's `timeout`).
            outcome = "protocol_error", (f"no welcome frame within {timeout:g}s (does the profile list the server's "
                                         "welcome type under control?)")
        elif self.auth_failed is not None:
            # The code the server said it with (the profile's `session_errors.auth_failed`: AUTH_FAILED, or a
            # dialect's own), or the close code that refused them (closed_refusing, which every driver calls at the
            # close before the connection counts as closed here: a close of AUTH_CLOSE_CODES is decided there alone).
            outcome = "auth_failed", ("the server rejected the credentials "
                                          f"({self.auth_failed.error_code or self.auth_failed.wire_type})")
        elif closed:
            # A welcome and the close read together (one write of the server's) is a welcome: the connection still
            # ended before it could carry a chat, and the reason says which of the two came first (and the error the
            # server sent before it closed, if any: a 1008 after it is about that, not the credentials).
            when = "right after" if self.answered else "before"
            after = f", after the server's error {self.said}" if self.said is not None else ""
            outcome = "protocol_error", f"closed {when} the welcome frame (code {close_code}{after})"
        else:
            outcome = "ok", ""
        self.sink.connection_attempt(self.scenario, outcome[0])
        return outcome

    def on_protocol_error(self, detail: str, at: float) -> None:
        """The transport closed because of what the server sent (oversized frame, bad UTF-8): an R12."""
        self.checker.on_malformed(Frame(FrameKind.MALFORMED, detail=detail), at)


def listens_to_events(sink: Sink) -> bool:
    """Whether a sink does anything with each event (most count verdicts only)."""
    if isinstance(sink, Fanout):
        return any(listens_to_events(s) for s in sink.sinks)
    return type(sink).event_received is not Sink.event_received


class VirtualUser:
    """What both clients (the asyncio Session and the threaded SyncSession) keep for one virtual user: its target,
    its name, where results go, and the sans-I/O half of its connection (the checker and the FrameRouter). The user
    the checker knows is the one the token says (its `sub`), so another user's events are R8 even when the server's
    welcome names nobody."""

    __slots__ = ("target", "profile", "user_id", "scenario", "sink", "connect_timeout", "clock", "checker", "router")

    def __init__(self, target: Target, user_id: str, scenario: str, sink: Sink, *, connect_timeout: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.profile = target.profile
        self.user_id = user_id
        self.scenario = scenario
        self.sink = sink
        self.connect_timeout = connect_timeout
        self.clock = clock
        self.checker = ConnectionChecker(target.tokens.subject(user_id), events_name_run=self.profile.events_name_run,
                                         further_runs=self.profile.further_runs)
        self.router = FrameRouter(self.profile, self.checker, sink, scenario)

    def open_timeout(self, by: float | None) -> float:
        """How long opening a connection may take (the TCP, TLS and WebSocket handshakes): connect_timeout, and no
        later than `by`, the deadline of the chat that opens it (a server that accepts and never answers held a chat
        of a 3 s deadline for the whole connect_timeout); a moment at least, so that a chat past it fails as a timeout
        of its connection, as before."""
        if by is None:
            return self.connect_timeout
        return min(self.connect_timeout, max(by - self.clock(), MIN_OPEN_TIMEOUT))


# Opening a connection for a chat whose deadline has (all but) passed: long enough to fail as a timeout, not an error.
MIN_OPEN_TIMEOUT = 0.05


# -- what a chat asks its I/O layer to do --

class Connect(NamedTuple):
    """Make sure the connection is open (chats in parallel share it: open it only when closed), then report
    `flow.connected()` or `flow.connect_failed(kind, message)`."""


class Send(NamedTuple):
    """Send this frame, then report `flow.sent(ok, failure_kind, failure_message)`. `what` is "message" (the chat's
    request: on a transport that connects on send it opens the chat's own stream), "raw" or "resume"."""

    frame: object
    what: str


class Wait(NamedTuple):
    """Wait until something arrives for this chat or the connection ends, at most until `until` (clock time)."""

    until: float


class Drop(NamedTuple):
    """Drop the socket without a closing handshake, as a lost network would (disconnect_after), and wait a bounded
    time for the reader to notice."""


class Close(NamedTuple):
    """Close the connection: the chat leaves for good (abandon_after)."""


class Reconnect(NamedTuple):
    """Reconnect unless another chat already replaced connection `generation` (its opening and welcome awaited until
    `by` at the latest, clock time), then report `flow.reconnected(ok, now, attempted=...)`. A failed attempt is
    retried with backoff (ReconnectRetries): `will_retry(now, answer)` says, at the failure (`answer`: the ConnectFailed,
    whose status, close code and Retry-After decide too), whether the chat tries again (what a recording's close
    record of the failure says, asked before the flow is told)."""

    generation: int
    by: float
    will_retry: Callable[[float, AttemptAnswer | None], bool]
    # The attempts every chat that lost connection `generation` shares, and how many had started when this chat
    # asked: one made since (by another chat) was this one's too (`takes_attempt`).
    retries: ReconnectRetries
    seen: int


def takes_attempt(action: Reconnect, generation: int, closed: bool) -> bool | None:
    """What a driver does with a Reconnect, under its one-opening-at-a-time claim, its connection at `generation`:
    None: another chat reconnected it already (resume on it, no attempt of this chat's); False: another chat of the
    connection made an attempt since this chat asked, which failed: that is this chat's outcome too (no attempt of its
    own: the chats that lost one connection reconnect it together, not once each); True: make the attempt."""
    if generation != action.generation:
        if not closed:
            return None
        action.retries.attempt()  # (that connection lost too: tried, counted with the attempts it started from)
        return True
    return action.retries.take(action.seen)


class Finish(NamedTuple):
    """The chat is judged (and reported to the sink): return this result."""

    result: ChatResult


Action = Connect | Send | Wait | Drop | Close | Reconnect | Finish
CONNECT, DROP, CLOSE = Connect(), Drop(), Close()
# The actions of every chat's steps are made as the tuples they are (`_action(Wait, (until,))`): a NamedTuple's own
# constructor is a Python function (its generated `__new__`) on top, four times a chat.
_action: Any = tuple.__new__
_NO_WAIT = Wait(0.0)  # a new chat's, until it has a deadline (one for all)


# A normal close (1000), going away (1001) and a close frame with no status code (1005, RFC 6455 7.1.5: what a browser's
# or Node's `ws` `close()` called without a code sends): what a server closing an idle connection on purpose sends;
# and service restart (1012) and try again later (1013): what a server going down under a rolling deploy, or shedding
# load, sends, asking the client to come back (Link.closed_clean). A message that crossed one is sent again on a new
# connection. A connection that ended with no close frame is 1006, never one of these.
CLEAN_CLOSE_CODES = frozenset({1000, 1001, 1005, 1012, 1013})
# The advice (R13) on a chat whose message was sent again because the server's closing handshake crossed it.
RESENT_WARNING = ("the server closed the connection on purpose (a closing handshake: a normal close, going away or a "
                  "restart) as the message went, before any event of its run: sent again on a new connection")


class Link(Protocol):
    """The connection as the I/O layer sees it: which one it is (a new generation on every connect) and whether it
    ended; `ended_note` says why it ended when the transport knows (a truncated event stream)."""

    @property
    def generation(self) -> int: ...

    @property
    def closed(self) -> bool: ...

    @property
    def ended_note(self) -> str: ...

    @property
    def stream_per_chat(self) -> bool:
        """Whether the connection is the chat's own event stream (SSE: it ends with the run), not a connection the
        server must keep open after an error (R13)."""
        ...

    @property
    def closed_clean(self) -> bool:
        """Whether the server ended the connection with a closing handshake of CLEAN_CLOSE_CODES: a server closing an
        idle connection on purpose, not one that crashed or dropped it (1006, 1011)."""
        ...

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code the connection ended with (1006: dropped without a close frame); None while it is
        open or when unknown."""
        ...

    @property
    def closed_by_client(self) -> bool:
        """Whether this client closed or dropped the connection on purpose (a chat's abandon_after or
        disconnect_after, the session's end): not the server failing to keep it open (R13)."""
        ...

    @property
    def closed_at(self) -> float:
        """When (clock time) the client saw the connection end: the time its close record carries (--record). A
        settle window is judged against it, not against when the chat was next stepped: on a busy machine that can be
        long after both."""
        ...


@dataclass(frozen=True, slots=True)
class ChatOptions:
    """How a chat is played, the same for every driver: name the run from the client (`client_run_id`), drop the
    socket after N events (then reconnect and resume, at most max_reconnects times, when `reconnect`: each lost
    connection tried again with backoff, at most max_reconnect_attempts times within reconnect_timeout seconds and
    the chat's deadline), leave for good after N events, listen `settle` seconds after the terminal event. `due_at`
    (clock time): when an open-model chat was due; its times (first event, duration, deadline) count from then, so a
    saturated client or server cannot hide the queueing before the message left (coordinated omission)."""

    client_run_id: bool = False
    disconnect_after: int | None = None
    abandon_after: int | None = None
    reconnect: bool = True
    max_reconnects: int = 3
    max_reconnect_attempts: int = 10
    reconnect_timeout: float = 30.0
    settle: float = 0.1
    # Listen out the settle window in the background: the asyncio Session returns at the terminal event with the
    # verdict as it stands (`ChatFlow.provisional`) and judges the chat, to the sink, when the window ends, so the
    # user's next chat starts at once; a late event still fails the chat it belongs to (R3, R4, R7). Only where
    # every event names its run (else a late event could not be told from the next chat's); the SyncSession
    # does it when chat() is given a verdict callback (the Locust user); probes always wait the window out.
    overlap_settle: bool = False
    due_at: float | None = None
    # The user's conversation (a scenario whose steps continue a thread): this chat is a turn of it, continuing the
    # thread so far (`continues`) or starting it anew.
    conversation: Conversation | None = None
    continues: bool = False


DEFAULTS = ChatOptions()

# States of a ChatFlow.
class ChatState(enum.IntEnum):
    """Where a ChatFlow is in a chat's life (named, so an error says "state SENDING", not "state 3")."""

    NEW = 0
    CONNECTING = 1
    CONNECTED = 2
    SENDING = 3
    FOLLOWING = 4
    RECONNECTING = 5
    RESUMING = 6
    ABANDONING = 7
    ENDING = 8
    SETTLING = 9
    FINISHED = 10
    BACKING_OFF = 11  # the connection was lost, or a reconnect attempt failed: the next is due at ReconnectRetries.retry_at

    def __str__(self) -> str:
        return self.name


(NEW, CONNECTING, CONNECTED, SENDING, FOLLOWING, RECONNECTING, RESUMING, ABANDONING, ENDING, SETTLING,
 FINISHED, BACKING_OFF) = tuple(ChatState)

STOPPED_NOTE = "stopped by the load generator before the chat ended"
# Why a chat the run itself cut short (its max_duration, Ctrl-C) is incomplete (ChatFlow.stopped), live and in
# `chatprobe check` of the run's recording (a close record "by": "client-stop").
STOPPED_CHAT_NOTE = "stopped before the chat ended"
STOPPED_PROBE_NOTE = "stopped before the answer"


class ChatFlow:
    """One chat's life as a state machine: count it started, have it connected and registered, send its message,
    follow its run to a verdict (drop, abandon, reconnect and resume as asked), listen for late events, judge it.

    The I/O layer loops: `action = flow.next(now, link)`, performs the action and reports its outcome where the action
    asks for one, until a Finish. Every Wait has a deadline; a chat stopped from outside is still judged (`stopped`,
    `left`), so the sink's counters add up: started = judged + in flight.
    """

    __slots__ = ("router", "tracker", "frame", "options", "probe", "chat_id", "state", "result", "generation",
                 "reconnects", "dropped_on_purpose", "events_at_reconnect", "lost_note", "_until", "_wait", "resend",
                 "content", "user_id", "history", "crossed", "retries")

    def __init__(self, router: FrameRouter, tracker: ChatTracker, frame: object, options: ChatOptions = DEFAULTS, *,
                 probe: bool = False) -> None:
        self.router, self.tracker, self.frame, self.options = router, tracker, frame, options
        # A chat's message, while an unanswered one may have to be sent again (the server closed the connection as it
        # went): the frame is rebuilt from it and the tracker's ids, so that an open chat keeps two shared strings,
        # not its request frame (~1 KiB a chat: BENCHMARKS.md, 15,000 open chats). None: never sent again.
        self.content: str | None = None
        self.user_id = ""
        self.history: list[dict[str, str]] | None = None  # a continued turn's earlier messages, for a rebuilt frame
        self.probe = probe  # an invalid-input probe: the answer is an error_message on an open connection (R13)
        self.chat_id = tracker.chat_id
        self.state: ChatState = NEW
        self.result: ChatResult | None = None
        self.generation = self.reconnects = 0  # the connection the chat is on; reconnects so far
        self.dropped_on_purpose = False
        self.events_at_reconnect: int | None = None  # events when the last resume was sent, until it is judged
        self.lost_note = ""
        self._until = 0.0
        self._wait = _NO_WAIT
        # The message found the connection closed before it left (the server closed it between chats): 1 while the
        # client reconnects to send it again, 2 once it did (once per chat).
        self.resend = 0
        # The server closed the connection with a closing handshake before any event of a run the client resumes (it
        # has an id): if the server answers the resume with RESUME_UNKNOWN_RUN, it never took the message, which
        # crossed its close, and the message is sent again (`_on_the_way`).
        self.crossed = False
        # The attempts to reconnect after the connection was lost, while the chat reconnects (None otherwise).
        self.retries: ReconnectRetries | None = None

    @classmethod
    def chat(cls, router: FrameRouter, content: str, expectations: Expectations, *, user_id: str, now: float,
             options: ChatOptions = DEFAULTS) -> "ChatFlow":
        """A chat sending `content`, played as `options` say."""
        profile = router.profile
        conversation = options.conversation
        # An open-model chat begun after it was due is timed (and so placed in its stage) from then, also when it ends
        # before its message leaves (a connection refused, a connect timeout); set again when the message is sent.
        due = options.due_at
        tracker = new_tracker(expectations, router.scenario, now if due is None or due > now else due,
                              options.client_run_id or profile.client_run_id,
                              conversation.thread_id if conversation is not None and options.continues else None)
        history = None
        if conversation is not None:
            keep = profile.carries_history
            history = conversation.turn(tracker.chat_id, tracker.thread_id or "", tracker.message_id, content,
                                        continues=options.continues, keep=keep)
            if keep:
                router.listen_for_reply(tracker.chat_id, conversation)
        request = profile.build_request(content=content, thread_id=tracker.thread_id, run_id=tracker.run_id,
                                        message_id=tracker.message_id, user_id=user_id, history=history)
        flow = cls(router, tracker, request, options)
        flow.content, flow.user_id, flow.history = content, user_id, history
        return flow

    @classmethod
    def invalid_input(cls, router: FrameRouter, raw: str, expectations: Expectations, *, now: float) -> "ChatFlow":
        """A frame the server must answer with an error_message, keeping the connection open (R13)."""
        return cls(router, new_tracker(expectations, router.scenario, now, False), raw, probe=True)

    # -- the next action --
    def next(self, now: float, link: Link) -> Action:
        state = self.state
        if state == FOLLOWING:
            return self._follow(now, link)
        if state == SETTLING:
            verdict_at = verdict_due(self.tracker, self.options.settle)  # later when a further run started
            if link.closed or now >= verdict_at:
                if self._closed_within(link, verdict_at):
                    self._lost(now, link)  # within the window: after an expected error it had to stay open (R13)
                return self._judge(now)
            if verdict_at != self._until:
                self._until, self._wait = verdict_at, Wait(verdict_at)
            return self._wait
        if state == NEW:
            if link.closed:
                # A message the server's clean close crossed (it left; `crossed`) is sent again on a connection
                # opened with the reconnect's retries, where reconnecting is allowed; one that found the connection
                # closed before a byte left (`sent`, closed) never reached the server: one Connect, as a chat that
                # finds it closed here (nothing in a recording tells the two apart, and `check` reads neither as a
                # reconnect).
                if self.resend and self.crossed and self.options.reconnect and self.options.max_reconnects:
                    return self._resend_retries(now, link)
                self.state = CONNECTING
                return CONNECT
            state = CONNECTED
        if state == CONNECTED:
            tracker = self.tracker
            self.router.checker.add(tracker)
            if self.options.abandon_after is not None or self.options.disconnect_after is not None:
                self.router.every_event = self.router.every_event | {tracker.wake_id}
            if self.resend:
                self.resend = 2  # once
            else:  # a message sent again is timed from its first try: the user waited all along
                # A chat from here on: its message goes (or its connection failed: connect_failed). One the run
                # stopped before either is none (`stopped`): nothing of it reached the server, nor a recording.
                self.router.sink.chat_started(self.router.scenario)
                due = self.options.due_at
                tracker.sent_at = tracker.last_at = now if due is None or due > now else due
                self._until = tracker.wait_deadline()
                self._wait = _action(Wait, (self._until,))
            self.generation = link.generation
            self.state = SENDING
            # Kept until sent (a message that found the connection closed is sent again on a new one), not for the
            # chat's life (memory per open chat).
            if self.frame is None and self.content is not None:  # sent again: rebuilt as it was
                tracker = self.tracker
                self.frame = self.router.profile.build_request(
                    content=self.content, thread_id=tracker.thread_id, run_id=tracker.run_id,
                    message_id=tracker.message_id, user_id=self.user_id, history=self.history)
            send: Send = _action(Send, (self.frame, "raw" if self.probe else "message"))
            return send
        if state == RESUMING:
            self.generation = link.generation
            self.router.checker.add(self.tracker)
            self.events_at_reconnect = self.tracker.n_events
            self.state = FOLLOWING
            frame = resume_frame(self.router.profile, self.tracker)
            self.router.resumed(self.tracker, frame)
            return Send(frame, "resume")
        if state == ABANDONING:
            self._judge_resume(left=True)  # in the chat's result and counted, as the proxy and `check` count it
            self.router.sink.chat_abandoned(self.router.scenario)
            return self._finish(abandon(self.tracker, now), now)
        if state == ENDING:
            return self._end(now, link)
        if state == BACKING_OFF:
            return self._back_off(now, link)
        if state == FINISHED:
            assert self.result is not None
            return Finish(self.result)
        raise RuntimeError(f"ChatFlow.next in state {state}: report the outcome of the last action first")

    def _follow(self, now: float, link: Link) -> Action:
        tracker = self.tracker
        if self.probe:
            if tracker.done and not link.closed:
                return self._end(now, link)  # answered: listen out the settle window, the connection must stay open
            if tracker.done or link.closed or now >= self._until:
                if link.closed and (not tracker.done
                                    or self._closed_within(link, verdict_due(tracker, self.options.settle))):
                    self._lost(now, link)
                return self._finish(tracker.finish(now))
            return self._wait
        if not tracker.done and (action := self._on_the_way(now, link)) is not None:
            return action
        return self._end(now, link)

    def _on_the_way(self, now: float, link: Link) -> Action | None:
        """While the run goes on: what to do about it, or None when following it is over (lost, or out of time)."""
        tracker, options = self.tracker, self.options
        events = len(tracker.events)
        if options.abandon_after is not None and events >= options.abandon_after:
            self.state = ABANDONING
            return CLOSE
        if options.disconnect_after is not None and not self.dropped_on_purpose and events >= options.disconnect_after:
            self.dropped_on_purpose = True
            if not link.closed:
                return DROP
        if events and self.content is not None:
            self.content = self.history = None  # answered: never sent again
        if link.closed or self.generation != link.generation:
            can_resume = resume_frame(self.router.profile, tracker) is not None
            crossed = (self.content is not None and not self.resend and not link.closed_by_client
                       and options.reconnect and not link.stream_per_chat and link.closed_clean)
            if crossed and not can_resume:
                # The server closed the connection on purpose (a closing handshake, CLEAN_CLOSE_CODES) before a single event
                # of the run, which has no id to resume (or the dialect no resume frame): the message crossed the
                # server's close (a server that closes after each run or when idle; RFC 6455: nothing after its close
                # frame is read). Sent again, once, on a new connection, timed from its first try, and said (a server
                # that closes on a message without answering it shows). A crash or a dropped connection (1006, 1011)
                # is judged as it stands, and so is an SSE stream that ended: the server took its request (it
                # answered with the stream). A run with an id is resumed first: the server may have taken it.
                tracker._warn(Rule.R13, RESENT_WARNING, None)
                self.crossed = True  # its new connection is opened with the reconnect's retries (`_resend_retries`)
                self._send_again()
                return self.next(now, link)
            self.crossed = crossed
            self._judge_resume()
            self._lost(now, link)
            if not (options.reconnect and can_resume and self.reconnects < options.max_reconnects):
                self.lost_note = lost_note_for(link.ended_note, can_resume,
                                               dialect_resumes=self.router.profile.resume is not None,
                                               close_code=None if link.stream_per_chat else link.close_code)
                return None
            self.reconnects += 1
            # Tried again with backoff until connected, out of attempts, or out of time: the chat's own deadline bounds
            # every attempt and every wait, and so does the scenario's reconnect_timeout from this loss on. The
            # attempts are shared by every chat that lost this connection (parallel_chats): one attempt for all. The
            # first waits a jittered moment too (ReconnectRetries.retry_at): users a restarting server dropped at one
            # instant come back spread out, not all at that instant.
            shared = self.router.reconnecting
            if shared is None or shared.generation != self.generation:
                shared = ReconnectRetries(options.max_reconnect_attempts, now + options.reconnect_timeout,
                                          self.generation, now)
                if self.router.reconnecting is None or self.router.reconnecting.generation < self.generation:
                    self.router.reconnecting = shared
            shared.join(self, self._until)
            self.retries = shared
            if shared.gave_up:  # the others' last attempt failed before this chat noticed the loss
                self._give_up()
                return self.next(now, link)
            self.state = BACKING_OFF  # until the first attempt is due (at once if one is under way or due already)
            return self._back_off(now, link)
        if forgot_run(self.router, tracker):
            if self.crossed and self.content is not None and not self.resend:
                # The resume of a run the server closed the connection on before any event was answered with
                # RESUME_UNKNOWN_RUN: the server never took the message (it crossed the server's close), which is
                # sent again as a run with no id would be (the resume was no reconnect of a run: not counted one).
                self.events_at_reconnect = None
                self.router.forget_unknown(tracker)
                tracker._warn(Rule.R13, RESENT_WARNING, None)
                self._send_again()
                return self.next(now, link)
            self.lost_note = RESUME_UNKNOWN_NOTE
            return None
        if now >= self._until:
            return None
        return self._wait

    def _end(self, now: float, link: Link) -> Action:
        """The run ended, the deadline passed or the connection is gone for good: settle, then judge."""
        self._judge_resume()
        tracker = self.tracker
        if tracker.done and not link.closed:
            # Listen a little longer for late events (R3, R4, R7): an observation window, not a wait for a condition.
            self._until = verdict_due(tracker, self.options.settle)
            if now < self._until:
                self.state = SETTLING
                self._wait = _action(Wait, (self._until,))
                return self._wait
        elif tracker.done and self._closed_within(link, verdict_due(tracker, self.options.settle)):
            # The run ended and the connection closed within its settle window before the chat was next stepped (in
            # the same read, or on a busy machine): the window was not listened out open (R13), as when it was.
            self._lost(now, link)
        return self._judge(now)

    @staticmethod
    def _closed_within(link: Link, verdict_at: float) -> bool:
        """Whether the connection ended by `verdict_at` (a settle window's end), by when the client saw it end: not
        by when the chat was next stepped, which a busy machine makes late (its timer, and the close, both past the
        window's end). `chatprobe check` judges the recorded close time so."""
        return link.closed and link.closed_at <= verdict_at

    def _lost(self, now: float, link: Link) -> None:
        """The connection ended under the chat: held against the server (R13, for a chat that expected an error)
        unless the client closed or dropped it on purpose, or it was the chat's own event stream (SSE ends with its
        run)."""
        if not link.closed_by_client and not link.stream_per_chat:
            self.tracker.connection_lost(now)

    def _judge_resume(self, *, left: bool = False) -> None:
        """Whether the last resume brought events back: resumed or lost (`left`: the chat abandoned, judge_resume),
        on the tracker and to the sink."""
        if self.events_at_reconnect is not None:
            reconnect = judge_resume(self.tracker, self.events_at_reconnect, left=left)
            self.events_at_reconnect = None
            if reconnect is not None:
                self.router.sink.reconnect(self.router.scenario, reconnect)

    def _judge(self, now: float) -> Finish:
        tracker = self.tracker
        lost = bool(self.lost_note) and not tracker.done
        judge_followups(tracker, now)  # first: the chat's verdict is its stream's (fold_further)
        return self._finish(tracker.finish(now, lost=lost, note=self.lost_note), now)

    def _finish(self, result: ChatResult, now: float | None = None) -> Finish:
        self.result = result
        self.state = FINISHED
        if self.router.resumes is not None:
            self.router.resumes.ended(self.tracker)
        if self.router.every_event:
            self.router.every_event = self.router.every_event - {self.tracker.wake_id}
        if self.router.conversations is not None:
            self.router.reply_heard(self.chat_id)
        sink = self.router.sink
        sink.chat_finished(result)
        if now is not None and self.tracker.followups:
            # Further runs the stream carried: reported as chats of their own, counted in this one (fold_further),
            # never as chats the client started.
            for run in judge_followups(self.tracker, now):
                sink.chat_finished(run)
        finish: Finish = _action(Finish, (result,))
        return finish

    def _error(self, kind: str, message: str) -> None:
        tracker = self.tracker
        self._finish(error_result(tracker.chat_id, self.router.scenario, tracker.sent_at, kind, message))

    @property
    def connect_by(self) -> float | None:
        """Until when (clock time) the connection this chat waits for may take to open and welcome: its deadline
        while its message is to be sent again (the user has waited since the first try, R9/R10), else None (the
        connection's own connect_timeout bounds it)."""
        return self._until if self.resend else None

    @property
    def backing_off(self) -> bool:
        """Between two attempts to reconnect: no connection of the chat is open or opening."""
        return self.state == BACKING_OFF

    @property
    def settling(self) -> bool:
        """The run ended and the chat listens out its settle window (the next action is a Wait or its Finish)."""
        return self.state == SETTLING

    def provisional(self, now: float) -> ChatResult:
        """The verdict as it stands while the settle window still listens: what it will be unless a late event comes.
        Judged on a copy, so the chat itself is judged (and counted) once, when the window ends."""
        return copy.copy(self.tracker).finish(now)

    # -- outcomes of actions --
    def connected(self) -> None:
        self._expect(CONNECTING)
        self.state = CONNECTED

    def connect_failed(self, kind: str, message: str) -> None:
        self._expect(CONNECTING)
        if not self.resend:
            self.router.sink.chat_started(self.router.scenario)  # a chat the server's failure to connect ended
        self._error(kind, message)

    def sent(self, ok: bool, failure_kind: str | None = None, failure_message: str = "", *,
             closed: bool = False, answer: AttemptAnswer | None = None) -> None:
        """The outcome of a Send: `failure_kind` when sending was connecting and that failed (SSE), classified;
        `closed` when the connection was found closed before a byte of the frame left (the server closed it
        between chats, or as the message went): a chat's message is then sent again, once, on a new connection, as a
        chat UI reconnects and sends; the server never saw it, so nothing is held against it. `answer`: the failure
        (SSE: what the server answered the request)."""
        if self.state != SENDING:  # a resume frame: a failure shows as the connection's end
            if (not ok and answer is not None and self.events_at_reconnect is not None
                    and (refused := answer.refusal) is not None):
                # SSE: the resume's request is the reconnect, refused for the credentials: not tried again, the chat
                # an `error`, auth_failed (as a WebSocket reconnect so refused: `reconnected`).
                self.tracker.credentials_refused(refused)
            return
        if ok:
            # Sent: not kept for the chat's life (memory per open chat); rebuilt if sent again (its text is kept until
            # the run's first event: a message that crossed the server's close is sent again).
            self.frame = None
            self.state = FOLLOWING
            return
        if closed:
            self._incidents_to_connection()
        if closed and not self.probe and failure_kind is None and not self.resend:
            self._send_again()
        elif self.probe:
            self._error("send_failed", failure_message or "the connection closed before the frame could be sent")
        elif failure_kind is not None:
            self.router.checker.discard(self.tracker)  # never reached the server: not a chat to route events to
            self.router.sink.connection_attempt(self.router.scenario, failure_kind)
            self._error(failure_kind, failure_message)
        else:  # why, when the client knows (a frame that did not leave in time: the server read nothing)
            self._error("send_failed", failure_message or "the connection closed before the message could be sent")

    def _incidents_to_connection(self) -> None:
        """The message found the connection closed before a byte of it left: what the chat was told on that connection
        meanwhile (a malformed frame, R12, such as the frame over the size limit the client closed it for; another
        user's event, R8) came before the server could have seen the message, so it is the connection's own violation
        (`Sink.connection_violation`), as `chatprobe check` judges the recording (no send record there: no chat open),
        never held in the verdict of the message sent again on a new connection, nor lost with a chat that fails."""
        tracker = self.tracker
        if tracker.n_events or not tracker.violations:
            return
        told, tracker.violations = tracker.violations, []
        for violation in told:
            self.router.sink.connection_violation(self.router.scenario, violation)

    def _send_again(self) -> None:
        """The message goes again, once, on a new connection: the chat leaves the old one's routing (added again once
        connected) and starts over from NEW, which opens one unless another chat has: for a message the server's
        clean close crossed (`crossed`), as a lost connection is reconnected (`_resend_retries`; with `reconnect` off or
        `max_reconnects` 0, one Connect), for one that found the connection closed before it left, one Connect (a
        failure classified as any connection's); timed from its first try."""
        self.resend = 1
        self.router.checker.discard(self.tracker)
        self.state = NEW

    def _resend_retries(self, now: float, link: Link) -> Action:
        """The new connection a message goes again on is opened as a lost connection is reconnected: tried again with
        backoff (ReconnectRetries: at most max_reconnect_attempts, within reconnect_timeout and the chat's deadline, the
        first after a jittered moment), each attempt counted as a reconnect's; a server restarting under a rolling
        deploy refuses a connection or two before it serves. The chat's own attempts (each of a user's chats waiting to
        send again makes its own, as one would connect); out of them, the chat is an `error` of the last failure's kind
        (`reconnected`)."""
        options = self.options
        retries = ReconnectRetries(options.max_reconnect_attempts, now + options.reconnect_timeout, self.generation, now)
        retries.join(self, self._until)
        self.retries = retries
        self.state = BACKING_OFF
        return self._back_off(now, link)

    def _reconnect(self) -> Reconnect:
        """An attempt to reconnect, bounded by the give-up time (ReconnectRetries), or the outcome of the one another
        chat sharing them has under way."""
        retries = self.retries
        assert retries is not None
        self.state = RECONNECTING
        return Reconnect(self.generation, min(retries.give_up_at, self._until), retries.failed, retries,
                         retries.attempts - 1 if retries.pending else retries.attempts)

    def _back_off(self, now: float, link: Link) -> Action:
        """Between attempts: the next one when it is due, or at once when another chat of the connection has
        reconnected it meanwhile (the attempt then finds it open)."""
        retries = self.retries
        assert retries is not None
        if link.generation != self.generation and not link.closed:
            return self._reconnect()
        if retries.gave_up or (retries.retry_at >= self._until and (retries.attempts or self.resend != 1)):
            # Another chat sharing the attempts saw the last one fail, or the next is due past this chat's deadline (a
            # message waiting to be sent again makes its first attempt whatever is left: it fails as a timeout, as it
            # did when its new connection was opened at once).
            self._give_up()
            return self.next(now, link)
        if now >= retries.retry_at or retries.pending:
            return self._reconnect()
        if retries.retry_at != self._wait.until:
            self._wait = Wait(retries.retry_at)  # (the chat's deadline wait is set again when it resumes)
        return self._wait

    def reconnected(self, ok: bool, now: float, *, attempted: bool = True, failure_kind: str = "refused",
                    failure_message: str = "", answer: AttemptAnswer | None = None) -> None:
        """The outcome of a Reconnect: connected or not; `attempted`: this chat's attempt opened (or failed to open) a
        connection (False: another chat had reconnected it already); `failure_kind` and `failure_message`: why the
        attempt failed, classified, and `answer` what the server answered (the ConnectFailed: its status, close code,
        Retry-After). A failed attempt is tried again after a backoff while ReconnectRetries allows, else the chat is
        lost there (RECONNECT_FAILED_NOTE), or, for a message to be sent again, an `error` of that kind; one whose
        answer refused the credentials is tried no more, and the chat ends with the auth outcome (`auth_failed`)."""
        self._expect(RECONNECTING)
        retries = self.retries
        assert retries is not None
        if ok:
            if attempted:
                retries.pending = False
                self.tracker.reconnect_tried(True)
            if self.router.reconnecting is retries:
                self.router.reconnecting = None
            self.retries = None
            if self.resend == 1:
                # The message waiting to be sent again goes on it. Only then: a chat whose message went again (2) and
                # whose connection was lost later (a drop, the server's close mid-run) resumes its run as any other,
                # never sends its message a second time (its frame is gone by then: it was sent as `null`).
                self.state = CONNECTED
                return
            self._wait = Wait(self._until)
            self.state = RESUMING
            return
        if attempted:
            # Counted on the oldest chat still reconnecting after that loss, as `chatprobe check` counts it.
            oldest = min((f for f in retries.members if f.state in (RECONNECTING, BACKING_OFF)),
                         key=lambda f: f.tracker.sent_at, default=self)
            oldest.tracker.reconnect_tried(False)
        if retries.failed(now, answer) and retries.retry_at < self._until:
            self.state = BACKING_OFF
            return
        self._give_up(failure_kind, failure_message)

    def _give_up(self, failure_kind: str = "timeout", failure_message: str = "") -> None:
        """Out of attempts or time: the chat is lost (RECONNECT_FAILED_NOTE), its reconnect `lost`; a message to be
        sent again never left again: an `error` of the last attempt's failure (a connection that failed), its attempts
        counted (only while the message waits to be sent again: a later loss of a chat whose message went again is
        lost as any other)."""
        retries = self.retries
        refused = retries.refused if retries is not None else None
        if self.resend == 1:
            self.retries = None
            tracker = self.tracker
            if refused is not None:  # (another chat's attempt was refused so: this chat's outcome too)
                failure_kind, failure_message = "auth_failed", CREDENTIALS_REFUSED.format(refused)
            result = error_result(tracker.chat_id, self.router.scenario, tracker.sent_at, failure_kind,
                                  failure_message or "the message was to be sent again on a new connection, and none "
                                  "opened before the chat's deadline")
            result.reconnect_attempts, result.reconnect_failures = tracker.reconnect_tries
            self._finish(result)
            return
        if self.retries is not None and self.retries.gave_up:
            self.retries.members.clear()  # (no attempt follows to count: the router keeps no chat through them)
        self.retries = None
        self.lost_note = RECONNECT_FAILED_NOTE
        self.tracker.reconnected(False)
        if refused is not None:
            # The credentials were refused: no attempt follows, and the chat is an `error`, auth_failed, as a chat
            # whose credentials an AUTH_FAILED refused on its open connection (its events and violations kept).
            self.tracker.credentials_refused(refused)
        self.router.sink.reconnect(self.router.scenario, "lost")
        self.state = ENDING

    def _expect(self, state: ChatState) -> None:
        if self.state != state:
            raise RuntimeError(f"ChatFlow: outcome reported in state {self.state}, expected {state}")

    # -- stopped from outside --
    def _no_chat(self) -> None:
        """Stopped before its message left: over, with no verdict (the conversation's reply it awaited goes too)."""
        self.state = FINISHED
        if self.router.conversations is not None:
            self.router.reply_heard(self.chat_id)

    @property
    def unsent(self) -> bool:
        """Its message never left and its connection did not fail: no chat yet (not counted started)."""
        return self.state in (NEW, CONNECTING) and not self.resend and self.result is None

    def stopped(self, now: float) -> ChatResult | None:
        """Cut short by the run itself (its max_duration, Ctrl-C): judged on what arrived, a lost chat (a message
        waiting to be sent again too: it went once). A resume it had pending is judged as a chat left with one
        (judge_resume, `left`): `resumed` when events came back, else in no count (the run stopped before the server
        could show whether it went on). None when its message never left (`unsent`): no chat, counted nowhere, as
        nothing of it is in a recording of the run either."""
        if self.result is not None or self.state == FINISHED:
            return self.result
        if self.unsent:
            self._no_chat()
            return None
        tracker = self.tracker
        if self.state in (NEW, CONNECTING):  # its message to be sent again (its connection closed before any event)
            self._finish(tracker.finish(now, lost=True, note=STOPPED_CHAT_NOTE), now)
        else:
            self._judge_resume(left=True)  # in its result and counted, as `check` of the run's recording counts it
            if self.probe:
                self._finish(tracker.finish(now, lost=True, note=STOPPED_PROBE_NOTE))
            else:
                stopped = not tracker.done
                judge_followups(tracker, now)
                self._finish(tracker.finish(now, lost=stopped, note=STOPPED_CHAT_NOTE if stopped else ""), now)
        assert self.result is not None
        return self.result

    def left(self, now: float) -> ChatResult | None:
        """Interrupted by the load generator (Locust stopping the user): judged on what arrived, as an abandonment,
        since the load generator left and the server is not to blame. None when its message never left (`unsent`):
        no chat, as for `stopped`."""
        if self.result is not None or self.state == FINISHED:
            return self.result
        if self.unsent:
            self._no_chat()
            return None
        self._judge_resume(left=True)
        result = abandon(self.tracker, now)
        result.note = STOPPED_NOTE
        self.router.sink.chat_abandoned(self.router.scenario)
        self._finish(result, now)
        return result


# -- chats the harness watches rather than plays (the proxy, recordings) --

def verdict_due(tracker: ChatTracker, settle: float) -> float:
    """When a chat is judged (clock time): `settle` after its terminal event (an invalid-input probe: its answer),
    listening for late events (R3, R4, R7) and for the connection's end (R13); at once when its message was rejected
    (nothing more will come); else at its deadline. ChatFlow and PassiveChats both time their verdicts by this."""
    last = tracker.last_run()  # a stream that carried further runs: its latest one decides
    if last.done:
        if last.terminal_at is not None:
            return last.terminal_at + settle
        # An invalid message answered: listen out the window too (the connection must stay open after it, R13).
        return last.last_at + settle if last.exp.expect_error == "invalid_input" else float("-inf")
    return last.wait_deadline()


def _further_first(chats: list[ChatTracker]) -> list[ChatTracker]:
    """The chats with further runs ahead of the chats whose streams carried them: a chat's verdict folds in its further
    runs' (checker.fold_further), so they are judged first when both fall due at once."""
    return sorted(chats, key=lambda c: c.root is c)


# Runs a watched connection remembers were resumed elsewhere, or are being replayed to it (each bounded in count).
MAX_RESUMES_FOLLOWED = 64


class Resumes:
    """What a connection does about runs resumed across connections: the connection a chat leaves while it is still
    open (`chatprobe proxy`, a recording) ignores that run's frames from then on (the server may go on sending it
    there: the same events again, neither the chat's duplicates, R7, nor another user's, R8), and the one it moves to
    does not judge again the exact copies of events the chat already had that the resume replays, when the client did
    not say it had them (it asked for them, or its resume names no last seq: the server sent what it was asked). One
    implementation for the live clients (`FrameRouter.resumes`), the proxy and `chatprobe check`, so they judge the
    same traffic alike. Empty (None) until the first resume: nothing per frame before it."""

    __slots__ = ("moved", "replay")

    def __init__(self) -> None:
        self.moved: dict[str, None] = {}  # runs resumed on another connection since
        # Runs resumed here whose replay of seen events may be under way: the chat, the seq its client said it had,
        # and the highest seq the chat had when it resumed (the replay ends past it).
        self.replay: dict[str, tuple[ChatTracker, int, int]] = {}

    def let_go(self, checker: ConnectionChecker, chat: ChatTracker) -> None:
        """`chat` was resumed on another connection: this one routes its run to it no more."""
        checker.discard(chat)
        if chat.run_id:
            if len(self.moved) >= MAX_RESUMES_FOLLOWED:
                del self.moved[next(iter(self.moved))]
            self.moved[chat.run_id] = None

    def ignore(self, run_id: str) -> None:
        """`run_id`'s chat was judged on a connection its client left (LeftRuns): the run resumed here is not judged
        again, its frames no one's violation."""
        if len(self.moved) >= MAX_RESUMES_FOLLOWED:
            del self.moved[next(iter(self.moved))]
        self.moved[run_id] = None

    def started(self, run_id: str) -> None:
        """A new chat here names `run_id`: its frames are its own again."""
        self.moved.pop(run_id, None)

    def resumed_here(self, chat: ChatTracker, run_id: str | None, last_seq: int | None = None) -> None:
        """`chat`'s run `run_id` was resumed on this connection: its frames are its own again, past the replay. The
        resume's `last_seq` (when the profile's resume frame carries one) is what the client said it had: the server
        replays only what is past it, so a replay of an event at or below it is a duplicate the server sent (R7),
        judged as the client judged it. None: the client said nothing of what it had (a `resume` template without
        `{last_seq}`), and the server replaying the run from its first event did what it was asked."""
        if not run_id:
            return
        self.moved.pop(run_id, None)
        if chat.max_seq >= chat.exp.seq_start and (last_seq is None or last_seq < chat.max_seq):
            if len(self.replay) >= MAX_RESUMES_FOLLOWED:
                del self.replay[next(iter(self.replay))]
            # No `last_seq`: the client said it had none (below the dialect's first seq, 0 or 1).
            self.replay[run_id] = (chat, chat.exp.seq_start - 1 if last_seq is None else last_seq, chat.max_seq)

    def ended(self, chat: ChatTracker) -> None:
        """`chat` was judged: a replay of its run still expected is not (its chat is let go)."""
        entry = self.replay.get(chat.run_id or "")
        if entry is not None and entry[0] is chat:
            del self.replay[chat.run_id or ""]

    def skip(self, profile: Profile, frame: str | bytes, at: float) -> bool:
        """Whether a received frame is to be left unjudged (`skips`), for a watcher that has not decoded it."""
        return self.skips(profile.decode(frame, at))

    def skips(self, decoded: Event | Frame) -> bool:
        """Whether a decoded frame is to be left unjudged: an event of a run followed elsewhere, or an exact copy
        (`ChatTracker.copy_of_had`) of an event the chat had, replayed past what the client said it had. Another
        event under a seq the chat had is judged (R7, and every rule), and so is one it lacked (a gap the replay
        fills); the replay ends at the first event past the highest seq the chat had."""
        if not isinstance(decoded, Event) or (run := decoded.run_id) is None:
            return False
        if run in self.moved:
            return True
        entry = self.replay.get(run)
        if entry is None:
            return False
        chat, had, top = entry
        seq = decoded.seq
        if isinstance(seq, int) and not isinstance(seq, bool) and chat.exp.seq_start <= seq <= top:
            # At or below what the client said it had: the server's duplicate (R7), judged; past it, a copy of what
            # the chat had is what the client asked for.
            return seq > had and chat.copy_of_had(decoded)
        del self.replay[run]  # the replay ends at the first event past what the chat had
        return False

    def __bool__(self) -> bool:
        return bool(self.moved or self.replay)


class PendingResumes:
    """Chats a watcher saw resumed (`chatprobe proxy`, `chatprobe check`), each with its events when its resume was
    sent, until the resume is judged as the live client judges its own (ChatFlow, `judge_resume`): at the chat's
    verdict, or when its connection is lost again, `resumed` when events came back, else `lost`; a resume the server
    answered with RESUME_UNKNOWN_RUN (`forgotten`) is lost, and its chat judged, at once (RESUME_UNKNOWN_NOTE). One
    entry per chat resumed and not yet judged (bounded by the chats a watcher follows)."""

    __slots__ = ("events", "crossed")

    def __init__(self) -> None:
        self.events: dict[str, int] = {}  # chat id -> its events when its (latest) resume was sent
        # Chats (ids) whose connection the server closed with a closing handshake before any event of their run, parked
        # for a resume: a RESUME_UNKNOWN_RUN answer to it says the message crossed that close (`send_again`). Only
        # parked or resumed chats, each let go with its verdict (`ended`).
        self.crossed: set[str] = set()

    def sent(self, chat: ChatTracker) -> None:
        """`chat`'s run was resumed: an earlier resume of it not yet judged is judged first."""
        self.judge(chat)
        self.events[chat.chat_id] = chat.n_events

    def judge(self, chat: ChatTracker, *, left: bool = False) -> str | None:
        """The chat's pending resume judged (`resumed` or `lost`, recorded on the chat; `left`: the chat abandoned,
        judge_resume); None when none is pending (or none is told)."""
        before = self.events.pop(chat.chat_id, None)
        return None if before is None else judge_resume(chat, before, left=left)

    def cut_clean(self, chat: ChatTracker) -> None:
        """The server closed `chat`'s connection with a closing handshake (CLEAN_CLOSE_CODES) before any event of its run,
        which is parked for a resume (it has an id): its message may have crossed that close."""
        if chat.n_events == 0:
            self.crossed.add(chat.chat_id)

    def send_again(self, chat: ChatTracker) -> bool:
        """Whether `chat`, whose resume the server answered with RESUME_UNKNOWN_RUN (`forgotten`), is to be sent again,
        as the live client sends it (ChatFlow: the server never took a message that crossed its close, and still no
        event came): its pending resume is then let go unjudged, as the live client counts no reconnect for it."""
        if chat.chat_id not in self.crossed:
            return False
        self.crossed.discard(chat.chat_id)
        if chat.n_events:
            return False
        self.events.pop(chat.chat_id, None)
        return True

    def ended(self, chat_id: str) -> None:
        """The chat was judged."""
        self.crossed.discard(chat_id)

    def forget(self, chat_id: str) -> None:
        """The chat will not be judged (a watcher could not follow it: `chatprobe_chats_unjudged_total`): its pending
        resume goes with it, in no count."""
        self.events.pop(chat_id, None)
        self.crossed.discard(chat_id)

    def forgotten(self, router: FrameRouter, chats: Iterable[ChatTracker]) -> list[ChatTracker]:
        """Those of `chats` (a connection's) whose pending resume the server answered there with RESUME_UNKNOWN_RUN:
        a list made before the caller judges any (`chats` may be a view of what judging changes); none made unless the
        server said so (on every error frame of a connection)."""
        if not router.resume_unknown or not self.events:
            return []
        return [c for c in chats if c.chat_id in self.events and not c.judged and forgot_run(router, c)]

    def __len__(self) -> int:
        return len(self.events)


class LeftRuns:
    """Runs whose chat the user's client left mid-run (it closed its connection: a page reload, a network change the
    browser saw first), kept by (user, run id) until the chat's deadline: the chat was judged as the client left it
    (abandoned), so when the same user's client resumes the run on a new connection, the server's replay and the rest
    of the run are that judged chat's, neither a new chat nor another user's events (R8) on the new connection
    (`Resumes.ignore`). Another user's resume of that run id finds nothing. Bounded: `max_each` runs a user (its
    oldest forgotten first), `max_all` in all (the longest kept first); a run forgotten so is one whose resume the
    watcher reads as it did before (R8 on the events it then gets). Pure: times come in as arguments."""

    __slots__ = ("max_all", "max_each", "_by", "_n", "_runs")

    def __init__(self, max_all: int, max_each: int) -> None:
        self.max_all, self.max_each = max_all, max_each
        self._by: dict[str, dict[str, float]] = {}  # user -> run id -> until when a resume is taken, oldest first
        self._n = 0
        self._runs: dict[str, int] = {}  # run id -> how many users hold it (holds: a lookup, not a scan)

    def _forget(self, run_id: str) -> None:
        """One user's entry of `run_id` gone (the caller removed it): its count in `_runs` with it."""
        self._n -= 1
        left = self._runs[run_id] - 1
        if left:
            self._runs[run_id] = left
        else:
            del self._runs[run_id]

    def __len__(self) -> int:
        return self._n

    def add(self, user: str, run_id: str, until: float, now: float) -> None:
        if until < now:  # past its chat's deadline: no resume is taken for it (take), so it takes no room
            return
        runs = self._by.pop(user, None) or {}  # put back last: the longest idle users are forgotten first
        if run_id in runs:
            del runs[run_id]
            self._forget(run_id)
        for old, when in list(runs.items()):  # the user's expired ones, and past max_each its oldest
            if when >= now and len(runs) < self.max_each:
                break
            del runs[old]
            self._forget(old)
        while self._n >= self.max_all and self._by:
            first = next(iter(self._by))
            others = self._by[first]
            oldest = next(iter(others))
            del others[oldest]
            self._forget(oldest)
            if not others:
                del self._by[first]
        if self._n >= self.max_all and runs:
            oldest = next(iter(runs))
            del runs[oldest]
            self._forget(oldest)
        runs[run_id] = until
        self._n += 1
        self._runs[run_id] = self._runs.get(run_id, 0) + 1
        self._by[user] = runs

    def take(self, user: str, run_id: str | None, now: float) -> bool:
        """Whether `user` left a chat of `run_id` whose deadline has not passed. Kept until that deadline (forgotten
        once past it): the server may cut the connection a resume of it came on (a keepalive timeout, a deploy) and
        the client resume it again elsewhere, and that resume is the judged chat's too (forgetting the run at its first
        resume made the second one's replay a chat of its own: R1, R2, R5, R6, R7 at `check`, an R12 at the proxy)."""
        runs = self._by.get(user) if run_id else None
        if not runs or run_id not in runs:
            return False
        until = runs[run_id]
        if now <= until:
            return True
        del runs[run_id]
        self._forget(run_id)
        if not runs:
            del self._by[user]
        return False

    def holds(self, run_id: str) -> bool:
        """Whether any user's left run is `run_id` (a lookup: every user's were scanned, at each resume of a run the
        process never saw in its first deadline, thousands of them after a deploy)."""
        return run_id in self._runs


class ParkedChats:
    """Chats whose connection ended mid-run under them (the server closed or dropped it: a deploy, a load balancer's
    timeout), each kept for its user to resume its run on another connection, until the chat's own deadline
    (`ChatTracker.wait_deadline`). A resume adopts the chat only when it comes from the same user and names the
    same run (`take`): another user's resume of that run id finds nothing, so one user's chat is never handed to
    another (R8). Bounded in count (`max_chats` in all, `max_each` a user) and in the bytes the chats hold (`max_bytes`,
    `ChatTracker.held_bytes`: their kept events, their payload checks' ids and state): past a bound a chat is not
    parked, and is judged at once as it stands.
    One implementation for `chatprobe check` (offline.OfflineCheck: the user is the recorded connection's) and
    `chatprobe proxy` (LiveChats: the user is the connection's credentials). Pure: times come in as arguments, the
    chats to judge go out as return values; what is judged, and with which note, is the caller's."""

    __slots__ = ("max_chats", "max_each", "max_bytes", "chats", "nbytes", "wake", "_each", "_weights", "_runs")

    def __init__(self, max_chats: int, max_each: int, max_bytes: int) -> None:
        self.max_chats, self.max_each, self.max_bytes = max_chats, max_each, max_bytes
        self.chats: dict[tuple[str, str], ChatTracker] = {}  # (user, run id) -> the chat, oldest first
        self.nbytes = 0  # what the chats parked hold
        self._weights: dict[tuple[str, str], int] = {}  # what each held when it was parked
        self.wake = float("inf")  # no parked chat's deadline passes before this time
        self._each: dict[str, int] = {}  # chats parked, by user
        self._runs: dict[str, int] = {}  # chats parked, by run id (holds: a lookup, not a scan)

    def park(self, user: str, chat: ChatTracker) -> tuple[bool, ChatTracker | None]:
        """Keep `chat` for a resume by `user`: (whether it is parked, an earlier chat of the same user and run id
        that was parked and is not any more: two chats cut short under one run id, the earlier judged now, never
        dropped from the counts). Not parked: no run id to resume (judge it now), or, for a chat with a run id, a
        bound reached (the caller's to say: the proxy counts it unjudged, parking_full)."""
        run_id = chat.run_id
        if not run_id:
            return False, None
        displaced = self._take((user, run_id))
        held = chat.held_bytes
        if (len(self.chats) >= self.max_chats or self._each.get(user, 0) >= self.max_each
                or self.nbytes + held > self.max_bytes):
            return False, displaced
        self.chats[(user, run_id)] = chat
        self._weights[(user, run_id)] = held
        self._each[user] = self._each.get(user, 0) + 1
        self._runs[run_id] = self._runs.get(run_id, 0) + 1
        self.nbytes += held
        self.wake = min(self.wake, chat.wait_deadline())
        return True, displaced

    def take(self, user: str, run_id: str | None) -> ChatTracker | None:
        """The chat `user` parked under `run_id`, no longer parked (its run resumed on another connection of that
        user); None when there is none (another user's run id, an unknown one, or one judged at its deadline)."""
        return self._take((user, run_id)) if run_id else None

    def due(self, now: float) -> list[ChatTracker]:
        """The parked chats whose deadline has passed at `now`, no longer parked: judge each as it stood, at its
        deadline."""
        if now < self.wake:
            return []
        out = [c for key, c in list(self.chats.items()) if now >= c.wait_deadline() and self._take(key) is c]
        self.wake = min((c.wait_deadline() for c in self.chats.values()), default=float("inf"))
        return out

    def next_due(self) -> float | None:
        """When the earliest parked chat's deadline passes; None when none is parked."""
        return self.wake if self.chats else None

    def of(self, user: str) -> list[ChatTracker]:
        """Every chat `user` parked, no longer parked (the run that recorded them stopped while that user reconnected):
        judge each as it stood."""
        if user not in self._each:
            return []
        return [c for key, c in list(self.chats.items()) if key[0] == user and self._take(key) is c]

    def oldest(self, user: str) -> ChatTracker | None:
        """The chat `user` parked first, still parked (a reconnect of that user to resume a run failed: its failure is
        counted on the oldest of the chats that share the reconnect); None when none is."""
        if user not in self._each:
            return None
        return next(chat for (owner, _), chat in self.chats.items() if owner == user)

    def drain(self) -> list[ChatTracker]:
        """Every parked chat, no longer parked (the recording or the proxy ends): judge each as it stood."""
        out = list(self.chats.values())
        self.chats.clear()
        self._weights.clear()
        self._each.clear()
        self._runs.clear()
        self.nbytes, self.wake = 0, float("inf")
        return out

    def _take(self, key: tuple[str, str]) -> ChatTracker | None:
        chat = self.chats.pop(key, None)
        if chat is not None:
            self.nbytes -= self._weights.pop(key)
            for counts, name in ((self._each, key[0]), (self._runs, key[1])):
                left = counts[name] - 1
                if left:
                    counts[name] = left
                else:
                    del counts[name]
        return chat

    def holds(self, run_id: str) -> bool:
        """Whether any user's parked chat is of `run_id`."""
        return run_id in self._runs

    def __len__(self) -> int:
        return len(self.chats)


class PassiveChats:
    """The chats of one connection the harness only watches (`chatprobe proxy`, a recording): each judged when its
    verdict is due, or when the connection ends (the user leaving mid-run is an abandonment, the server closing is a
    lost run). Pure: times come in as arguments; results go out as return values, never to a sink."""

    def __init__(self, checker: ConnectionChecker, settle: float, pending: PendingResumes | None = None) -> None:
        self.checker = checker
        self.settle = settle
        self.pending = pending  # chats resumed whose resume is judged with them (PendingResumes)

    def due(self, now: float) -> list[ChatResult]:
        """Judge every chat whose verdict is due at `now`."""
        out = []
        for chat in _further_first(self.checker.chats):
            if not chat.judged and now >= verdict_due(chat, self.settle):
                if self.pending is not None:
                    self.pending.judge(chat)
                out.append(chat.finish(now))
        return out

    def next_due(self) -> float | None:
        """The earliest time a chat's verdict falls due, None when no chat waits for one."""
        times = [verdict_due(c, self.settle) for c in self.checker.chats if not c.judged]
        return min(times) if times else None

    def closed(self, now: float, *, by_client: bool) -> list[tuple[ChatResult, bool]]:
        """The connection ended: every chat not yet judged is, now; (result, abandoned by the client) pairs."""
        out = []
        for chat in _further_first(self.checker.chats):
            if chat.judged:
                continue
            if by_client and not chat.done:
                # Left on purpose: judged on what arrived, its pending resume too (`resumed` in its result, and
                # counted with it, when events came back; else in no count), as the live client and `check` judge it.
                if self.pending is not None:
                    self.pending.judge(chat, left=True)
                out.append((abandon(chat, now), True))
                continue
            if self.pending is not None:
                self.pending.judge(chat)
            if chat.done:
                out.append((chat.finish(now), False))
            else:
                out.append((chat.finish(now, lost=True, note="the server closed the connection mid-run"), False))
        return out
