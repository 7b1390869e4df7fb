"""`chatprobe check`: recorded traffic judged offline on the live road (FrameRouter, ConnectionChecker, ChatTracker)
with the recorded times, one ScenarioRun per file for the same summary, JSON, JUnit and HTML reports.
"""
from __future__ import annotations

import dataclasses
import heapq
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from . import redact
from .backoff import CREDENTIALS_REFUSED, credentials_refusal
from .checker import (
    ChatResult,
    ChatTracker,
    ConnectionChecker,
    Expectations,
    abandon,
    error_result,
    judge_followups,
)
from .errors import MESSAGE_LIMIT
from .events import Event, Outcome, Rule
from .flow import (
    CLEAN_CLOSE_CODES,
    RECONNECT_FAILED_NOTE,
    RESENT_WARNING,
    RESUME_UNKNOWN_NOTE,
    STOPPED_CHAT_NOTE,
    STOPPED_PROBE_NOTE,
    TOO_MANY_OPEN,
    WAKE_ALL,
    FrameRouter,
    LeftRuns,
    ParkedChats,
    PendingResumes,
    Resumes,
    crowded_out,
    resend_key,
    verdict_due,
)
from .profiles import Profile
from .recordings import (
    ASIDES,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_TEXT,
    DUE_SLACK,
    FORMATS,
    SEND_FAILED,
    SILENT,
    Recorded,
    RecordingError,
    frame_bytes,
    part_files,
    parts_note,
    read_recording,
    recorded_runs,
    too_large,
)
from .results import STOPPED_BY, Listing, ListingBudget, ScenarioRun, not_started
from .scenario import Scenario, Stat, expectations_for, invalid_input_expectations
from .sinks import PARKING_FULL, PROXY_STOPPED, UNJUDGED_REASONS, Sink
from .stats import Tally, evaluate

# Connections (or streams) followed at once; past this the least recently seen one is judged as it stands.
MAX_OPEN_CONNS = 10_000
# Chats not yet judged, across connections; past this the oldest is judged as it stands (a recording of endless
# messages never answered must not grow without bound).
MAX_OPEN_CHATS = 10_000
# Chats not yet judged on one connection; past this its oldest is judged as it stands. Each frame's routing looks at a
# connection's open chats: without this bound 10,000 of them on one connection (times going backwards, so that no
# deadline ever passes) cost 10,000 steps per frame, hours for a recording of a million frames.
MAX_OPEN_PER_CONN = 1_000
# Runs whose connection ended mid-run, kept for a resume on another connection of the same user (flow.ParkedChats,
# as the proxy keeps them), and the bytes of events they keep (each chat's own bound is 4 MiB).
MAX_PARKED = 10_000
MAX_PARKED_BYTES = 64 * 1024 * 1024
# The events the open chats keep, in bytes (each chat's own bound is checker.MAX_KEPT_BYTES, 4 MiB: 10,000 open chats
# could hold 40 GB); past it the oldest open chats are judged as they stand. Looked at every BYTES_CHECK_EVERY frames
# (a sum over the open chats: a few steps per frame).
MAX_OPEN_BYTES = 256 * 1024 * 1024
BYTES_CHECK_EVERY = 1024
# What the reports list (results.Listing, as `chatprobe run`): a listed chat's events, the first so many.
MAX_EVENTS_LISTED = 1_000
# Files of one run judged together (each is open while they are merged): as many as `--record` writes for one run.
MAX_FILES_MERGED = DEFAULT_MAX_FILES
# Runs judged by one check (each file named, each run `--record` wrote into a directory named): every run is held until
# the reports are written (its counts, its objectives, ~20 KB) and a directory may hold any number of them (100,000
# one-line files of as many run ids held 2 GB). What the runs list is one budget for all (results.ListingBudget).
MAX_RUNS = 1_000
# The records held while a run's files are merged (one per file, waiting for its turn), in bytes of memory: each file's
# share of this bounds its held frame (a frame over it is an R12 naming the bound) and, for a HAR, the response text
# its reader holds. A run of up to 64 files keeps the 4 MiB default; 1,000 files 256 KiB each.
MAX_MERGED_BYTES = 256 * 1024 * 1024
MIN_MERGED_SHARE = 64 * 1024
SPARE_FILES = 64  # descriptors left for everything else (the reports, the interpreter's own) while a run is merged
# Seconds a connection's recorded time may step back (a capture's clock adjusted) before it is an R12; it is kept in
# order either way.
TIME_BACK_TOLERANCE = 1.0

ENDED_NOTE = "the recording ends before the run's terminal event"
# A check stopped from outside (Ctrl-C, SIGTERM) mid-file: its open chats' end was in the recording, not read.
INTERRUPTED_NOTE = "judged as it stood: the check was interrupted before the rest of the recording was read"
CLOSED_NOTE = "the connection closed mid-run"
NOT_RESUMED_NOTE = "the connection was lost mid-run and no resume of the run was recorded"
DISPLACED_NOTE = "the connection was lost and no resume followed before another chat of the same run id was cut short"
CROWDED_NOTE = "judged as it stood: too many chats open at once in the recording"
HEAVY_NOTE = "judged as it stood: the chats open at once in the recording held too many events"
# A connection whose recorder dropped frames (its file was full): its chats open then are judged as they stood, with
# nothing after the gap held against the server.
DROPPED_NOTE = ("judged as it stood: the recording dropped {what} of this connection here ({where}), {why}; nothing "
                "after that was recorded")
DROPPED_WARNING = ("the recording dropped {what} of connection {conn} from {where} ({why}): the {n} "
                   "chat(s) open there were judged as they stood (incomplete), not held against the server")
# Why a dropped record's frames are missing, when the record does not say (what `--record` writes: its file was full).
DROPPED_WHY = "its file being full"
MAX_DROPPED_WARNINGS = 20
# An event that came this soon after its chat's verdict was due (the settle window's end, or its deadline) is judged
# after the verdict here, as the recorded times say; a live client under load, its timer late by as much, may have
# taken it into the verdict. Not made equal (the recording holds when the frame came, not when the live timer fired):
# said in the run's warnings instead.
LATE_MARGIN = 0.25
LATE_WARNING = ("{n} event(s) came within {margin:g}s after their chat's verdict was due (its settle window's end or "
                "its deadline): judged after the verdict here, by the recorded times (an event of the chat's run is "
                "shown as a warning on it); the live client, its timer late under load, may have taken them into the "
                "verdict (an R3, R4, R7, R8 or R12 more), so this check can differ from the live run there")
# A `send_failed` record that came after its chat was judged: past the chat's deadline, with another record of its
# connection in between (a frame the server sent while the send waited), which judged the chat at its deadline (the
# recording cannot tell a send still waiting from one that left). The live client waited for the send and judged the
# chat `error` (send_failed). With nothing in between, the record fails its chat as live (OfflineCheck.feed).
LATE_SEND_WARNING = ("{n} chat(s) whose message had not left when their deadline passed were judged at the deadline "
                     "(R10): another record of their connection came before their `send_failed` record; live, the "
                     "client waited for the send and judged them `error` (send_failed)")
# Why a recorded run stopped early, when its "client-stop" close records do not say (written before they did).
RECORDED_STOP = "the recorded run was stopped"
# Chats `chatprobe proxy` could not judge, as its recording says (its stop, "by": "proxy-stop"; no room to keep a chat
# the server cut, "parking_full"): counted apart, as the proxy counted them, in no outcome.
UNJUDGED_WARNING = ("{n} chat(s) the proxy could not judge ({reasons}): not counted among the chats (no outcome, in no "
                    "ratio), as `chatprobe proxy` counted them")
NOTHING_JUDGED = ("no chat judged: the {n} chat(s) in the recording are ones the proxy could not judge ({reasons})")
SILENT_NOTE = ("no chat found in the recording: its {n} WebSocket connection(s) list no message (Firefox's HAR export "
               "leaves WebSocket messages out): save the HAR from Chrome or Edge DevTools, or record the traffic with "
               "`chatprobe proxy --record DIR`")
UNTIMED_NOTE = ("no chat has a recorded first-event time (no send and receive times, or no events): first-event time "
                "and chat duration not judged, their objectives left out")


class _Conn:
    """One recorded connection (or SSE stream): the live client's router and checker for it."""

    __slots__ = ("by_resume", "by_send", "checker", "clients", "key", "last_t", "open", "resumes", "router", "sends",
                 "wake")

    def __init__(self, key: str, profile: Profile, sink: Sink, scenario: str) -> None:
        self.key = key
        self.checker = ConnectionChecker(None, events_name_run=profile.events_name_run,
                                         further_runs=profile.further_runs)  # as live and the proxy
        self.router = FrameRouter(profile, self.checker, sink, scenario)
        self.clients = False  # a client frame that opens a chat was recorded on it
        self.last_t: float | None = None
        self.wake = float("inf")  # no chat of it can be judged before this time
        self.open: dict[str, ChatTracker] = {}  # its chats not judged yet, oldest first
        self.resumes: Resumes | None = None  # runs resumed across connections (flow.Resumes), as the proxy
        self.sends = 0  # its send records so far: a `send_failed` record names the one that did not leave ("send")
        self.by_send: dict[int, str] = {}  # the chats its send records opened (or sent again), by their ordinal
        self.by_resume: dict[int, str] = {}  # the chats its resume records brought here, by their ordinal

    def sent_chat(self, chat: ChatTracker) -> None:
        """The send record just read opened (or sent again) `chat`: a `send_failed` record may name it."""
        if len(self.by_send) >= 2 * MAX_OPEN_PER_CONN:  # only the chats still open can fail: the rest let go
            self.by_send = {n: c for n, c in self.by_send.items() if c in self.open}
        self.by_send[self.sends] = chat.chat_id

    def resumed_chat(self, chat: ChatTracker) -> None:
        """The send record just read resumed `chat` here: a close record's `parking_full` may name it."""
        if len(self.by_resume) >= 2 * MAX_OPEN_PER_CONN:
            self.by_resume = {n: c for n, c in self.by_resume.items() if c in self.open}
        self.by_resume[self.sends] = chat.chat_id


class OfflineCheck:
    """Feed it one file's records in order, then `end()`: every chat found is judged as the live client would
    have judged it at the recorded times. A chat opens at each client frame of a request type (its ids from the
    frame, as the proxy does); on a connection with none recorded, at each new run id (on an SSE body, its first);
    with neither, one chat per connection."""

    def __init__(self, profile: Profile, scenario: Scenario, sink: Sink | None = None,
                 listing: ListingBudget | None = None) -> None:
        self.profile = profile
        self.scenario = scenario
        self.name = scenario.name
        self.sink = sink or Sink()
        self.exp: Expectations = scenario.expectations(profile)
        # A step's expectations as its chats' send records carry them (recorder.expect_note), by (error, roles).
        self.step_exp: dict[tuple[str | None, tuple[str, ...] | None], Expectations] = {}
        self.settle = scenario.expect.settle
        self.conns: dict[str, _Conn] = {}
        self.open: dict[str, tuple[ChatTracker, _Conn]] = {}  # chats not judged yet, oldest first
        # Chats whose connection ended mid-run, by user (the connection's label, _user_of) and run id, until a resume
        # or their deadline: flow.ParkedChats, the proxy's too.
        self.parked = ParkedChats(MAX_PARKED, MAX_PARKED, MAX_PARKED_BYTES)
        # Runs whose chat the client left mid-run (judged abandoned), by user: the same user's resume of the run on
        # another connection is that judged chat's (flow.LeftRuns, as the proxy), not followed again.
        self.left = LeftRuns(MAX_PARKED, MAX_PARKED)
        self.parked_wake = float("inf")  # no parked chat's (nor resend's) deadline passes before this time
        self.untimed: set[str] = set()  # chats whose send or receive times are not recorded
        self.timeless = 0  # chats judged with events and no first-event time (their times not recorded)
        self.silent = 0  # a HAR's WebSockets that list no message (recordings.SILENT): why no chat was found, if none
        self.notes: list[str] = []  # what the reader said of the files (recordings.NOTE): among the run's warnings
        # Chats an event without its recorded time reached (it took the last time seen, which may be well before it
        # came): their first-event time and duration are not judged. The connection's other chats keep theirs.
        self.untimed_events: set[str] = set()
        self.resumed = PendingResumes()  # chats resumed whose resume is not judged yet, as the proxy (flow)
        # Chats whose connection the server closed before any event of their run (no id to resume), by message id
        # (flow.resend_key):
        # the message may be sent again on a new connection (flow.ChatFlow: once), and the chat goes on there. With
        # the close's time and whether it was a closing handshake (CLEAN_CLOSE_CODES: the live client warns, R13).
        self.resends: dict[str, tuple[ChatTracker, float, bool]] = {}
        self.resent: set[str] = set()  # chats sent again already (a second loss is judged as any other)
        # A plain connection failure (no "resume") of a user while a message of theirs waited to be sent again, where
        # reconnecting is allowed, by that message's id: the failure's connection, record and time. Live opens that
        # message's connection as a reconnect ("resume" records), so such a failure is another chat's (one that found
        # the connection closed before its message left, or the user's next); a recording written before those
        # retries opened one plain connection for it. Which it was shows later (_held_failure_is_own, _resend_held).
        self.held_failures: dict[str, tuple[str, Recorded, float]] = {}
        self.tally = Tally()
        self.listing = Listing(max_events=MAX_EVENTS_LISTED, budget=listing)  # (shared by a check's runs)
        self.first_t: float | None = None
        self.now = 0.0
        self.n = 0
        self.frames = 0  # received, for the bytes bound
        self.gaps: list[str] = []  # the first MAX_DROPPED_WARNINGS warnings of dropped records
        self.near_late = 0  # events that came within LATE_MARGIN after their chat's verdict was due
        self.late_sends = 0  # send_failed records that came after their chat was judged (LATE_SEND_WARNING)
        self.stopped_by = ""  # why the recorded run stopped early, as a "client-stop" close record says (_run_stopped)
        self.n_gaps = 0

    # -- input --
    def feed(self, rec: Recorded) -> None:
        if rec.direction in ASIDES:  # no frame: what a person should know of the file
            if rec.direction == SILENT:  # a HAR's WebSocket listing no message: no connection of any chat
                self.silent += 1
            elif len(self.notes) < MAX_DROPPED_WARNINGS:
                self.notes.append(rec.detail)
            return
        conn = self.conns.get(rec.conn)
        if conn is None:
            conn = self.conns[rec.conn] = _Conn(rec.conn, self.profile, self.sink, self.name)
            if len(self.conns) > MAX_OPEN_CONNS:
                oldest = next(iter(self.conns.values()))
                self._close(self.conns.pop(oldest.key), oldest.last_t or self.now, None, ENDED_NOTE)
        else:
            # Least recently seen first, for the bound above.
            self.conns[rec.conn] = self.conns.pop(rec.conn)
        if rec.t is not None:
            at = rec.t
            last = conn.last_t
            if last is not None and at < last:
                # The recording's clock went back on this connection: kept in order, so no delay reads negative (a
                # run's events "before" its message made a failing chat pass); a step back past the tolerance is
                # the recording's problem, an R12 on the chats it falls in.
                if last - at > TIME_BACK_TOLERANCE:
                    self._problem(conn, f"recorded time goes back {last - at:.3f}s", rec.where, last)
                at = last
            self.now = at
            if self.first_t is None:
                self.first_t = at
        else:
            at = conn.last_t if conn.last_t is not None else self.now
        conn.last_t = at
        if rec.user is not None and conn.checker.user_from_welcome:
            # The user the live client authenticated as (its token's `sub`): R8 judges the connection's events by it,
            # never by its welcome's user, as live (flow's ConnectionChecker).
            conn.checker.user_id, conn.checker.user_from_welcome = rec.user, False
        direction = rec.direction
        failed_send = direction == "close" and rec.failed == SEND_FAILED
        # A chat's frame never left (the connection goes on): its chat fails before the chats due by now are judged.
        # Live, the chat waited for its send, its deadline unwatched, and is an `error` (send_failed) whenever the
        # send failed (flow.ChatFlow.sent), past its deadline too (a recorder slow to scrub a huge frame on a busy
        # machine, a connect_timeout longer than what was left of the deadline).
        failed_chat = failed_send and self._send_failed(conn, rec)
        # An SSE request no stream came of (refused, or no answer within connect_timeout): live, its chat waited for
        # the answer's head, its deadline unwatched too (client.Session._safe_send), and is an `error` of that kind
        # however late the failure: it fails before the chats due by now are judged, or a connect_timeout longer than
        # the deadline made it an incomplete chat (R9, R10) and an error chat more.
        failed_open = direction == "close" and bool(rec.failed) and not rec.resume and not failed_send
        failed_waiting = failed_open and self._failed_waiting(conn, rec)
        if direction == "close" and rec.failed and rec.resume:
            # A reconnect to resume failed: counted on the user's chat kept for it (lost there without "retry") before
            # the chats due by now are judged. Live, a chat reconnecting is never judged at its deadline mid-attempt:
            # each attempt is bounded by that deadline, and its failure (then recorded at the deadline or just past
            # it) ends the chat, "reconnecting failed", its failed attempt counted (flow.ChatFlow.reconnected).
            self._resume_failed(conn, rec, at, retried=rec.retry)
        if direction == "send" and rec.crowded_out is not None:
            # The proxy let a chat go to make room for this record's (its client had more than MAX_OPEN_WATCHED open
            # on the connection): judged so before the chats due by now, which the proxy, judging them on a timer of
            # its own, had not judged yet when it chose that one (it let go one still open there).
            self._crowded_out(conn, rec.crowded_out, at)
        if rec.t is not None:
            self._judge_ready(conn, at)
            self._judge_parked(at)
        if direction == "recv":
            # A frame without its time (not junk, which carries no event anyway): the chats it reaches are untimed.
            self._received(conn, rec.frame, at, untimed=rec.t is None and isinstance(rec.frame, str)
                           and rec.frame.lstrip().startswith("{"), stream=rec.stream)
        elif direction == "send":
            self._sent(conn, rec, at)
        elif failed_send:
            if not failed_chat:
                self._no_send_waiting(conn, rec, at)
        elif direction == "close":
            if rec.error:  # the client dropped the connection for what the server sent: an R12, as live
                conn.router.on_protocol_error(rec.error, at)
            del self.conns[conn.key]
            if failed_open and not failed_waiting:
                self._failed(conn, rec, at)
            self._close(conn, at, rec, CLOSED_NOTE)
        elif direction == "dropped":
            self._gap(conn, rec, at)
        else:  # a problem: what the recording holds there could not be read
            self._problem(conn, rec.detail, rec.where, at)

    def _crowded_out(self, conn: _Conn, n: int, at: float) -> None:
        """The chat that the connection's send record `n` brought there (its message, its message sent again, or its
        resume), let go by the proxy as the next one came: judged as it stood, an `error` (rejected), the client's doing,
        as the proxy judged it (flow.crowded_out; a resume it had pending as a chat left with one). Nothing when that
        chat is judged already or not on this connection (a record naming none: another tool's, or hand-made)."""
        chat_id = conn.by_send.get(n) or conn.by_resume.get(n)
        chat = conn.open.get(chat_id) if chat_id is not None else None
        if chat is None or chat.judged:
            return
        self.resumed.judge(chat, left=True)
        self._finish(chat, at, note=TOO_MANY_OPEN, crowded=True)

    def _gap(self, conn: _Conn, rec: Recorded, at: float) -> None:
        """The recorder dropped this connection's frames from here on: its chats open now are judged as they stand
        (incomplete, the note says why), before what is missing could read as the server's fault (seq never
        arrived, no terminal event). The chat whose verdict was due already is judged as it was."""
        self._judge_ready(conn, at)
        what, why = rec.detail or "frames", rec.error or DROPPED_WHY
        note = DROPPED_NOTE.format(what=what, where=rec.where, why=why)
        chats = [c for c in conn.open.values() if not c.judged]
        for chat in chats:
            self._finish(chat, at, lost=not chat.done, note=note)
        self.n_gaps += 1
        if len(self.gaps) < MAX_DROPPED_WARNINGS:
            self.gaps.append(DROPPED_WARNING.format(what=what, conn=conn.key, where=rec.where, why=why, n=len(chats)))

    def _problem(self, conn: _Conn, detail: str, where: str, at: float) -> None:
        """Something wrong with the recording itself at `where` (file:line): an R12 on the chats open on `conn`;
        with none open (none yet, or the last judged), the connection's own R12, reported at its end unless a chat comes
        after it (ConnectionChecker.ended), as a malformed frame there is: no chat is made up for it (started =
        outcomes + ..., docs/metrics.md)."""
        # An R12 changes no chat's verdict time (no wake-up: a judging pass over every open chat per faulty record,
        # 1,000 chats x 100,000 records of time going backwards, took minutes).
        conn.router.on_protocol_error(f"{detail} ({where})" if where else detail, at)

    def _received(self, conn: _Conn, frame: str | bytes | None, at: float, untimed: bool = False,
                  stream: bool = False) -> None:
        if frame is None:
            return
        if conn.resumes and conn.resumes.skip(self.profile, frame, at):
            return  # a run followed on another connection since, or an event its chat had, replayed (as the proxy)
        if not conn.clients:
            # No client frame says where chats begin: a new run id begins one; else the connection is one chat.
            decoded = self.profile.decode(frame, at)
            checker = conn.checker
            if isinstance(decoded, Event):
                if (decoded.user_id is not None and checker.user_id is not None
                        and decoded.user_id != checker.user_id):
                    pass  # another user's event (the welcome named this one): cross-talk (R8), never a chat of ours
                elif decoded.run_id is not None:
                    # A chat this run answers (ConnectionChecker's one adoption rule, as live) learns its id when
                    # the router routes the event; else the run is a chat of its own. Except on an SSE response body
                    # (`stream`): one response answers one request, so its first run is its chat, and a later run
                    # start is what the live client makes of it on that stream (a further run, else R1, R4 or R8).
                    if (decoded.run_id not in checker.by_run and checker.waiting_for_run(decoded) is None
                            and not (stream and checker.chats)):
                        self._open(conn, at, run_id=decoded.run_id, thread_id=decoded.thread_id, timed=False)
                elif (not any(not c.done for c in conn.open.values())
                      and (decoded.thread_id is None or decoded.thread_id not in checker.by_thread)
                      and (not checker.chats or checker.chats[-1].judged)):
                    self._open(conn, at, thread_id=decoded.thread_id, timed=False)
        checker = conn.checker
        incidents = checker.foreign + checker.malformed
        # An event without its recorded time: the chats it reaches (their event counts move) are untimed_events.
        reached = {c.chat_id: c.n_events for chat in conn.open.values() for c in (chat, *chat.followups)} \
            if untimed else None
        wake, _reply = conn.router.on_frame(frame, at)
        if reached is not None:
            self.untimed_events.update(c.chat_id for chat in conn.open.values() for c in (chat, *chat.followups)
                                       if c.n_events != reached.get(c.chat_id, 0))
        self.frames += 1
        if self.frames % BYTES_CHECK_EVERY == 0:
            self._bound_bytes(at)
        if wake == WAKE_ALL:
            conn.wake = at  # an error or a malformed frame may have ended a chat: look at them all next time
            for chat in self.resumed.forgotten(conn.router, conn.open.values()):
                key = resend_key(chat.message_id, chat.run_id)
                if self.resumed.send_again(chat) and key and len(self.resends) < MAX_PARKED:
                    # Its message crossed the server's close (no event of its run came): held for the live client's
                    # sending it again, as for a run with no id.
                    self.open.pop(chat.chat_id, None)
                    conn.open.pop(chat.chat_id, None)
                    conn.checker.discard(chat)
                    if (earlier := self.resends.pop(key, None)) is not None and not self._resend_held(key, earlier[0]):
                        self._finish(earlier[0], earlier[1], lost=True, note=CLOSED_NOTE)
                    self.resends[key] = (chat, at, True)
                    self.parked_wake = min(self.parked_wake, chat.wait_deadline())
                    continue
                # The server did not know the run its resume named (RESUME_UNKNOWN_RUN): lost, judged now, as live.
                self._finish(chat, at, lost=True, note=RESUME_UNKNOWN_NOTE)
            if checker.foreign + checker.malformed != incidents:
                # Cross-talk or a malformed frame (R8, R12 on the chats in flight): one that came just after a chat's
                # verdict was due may have been in that chat's verdict live.
                self._late(conn, None, at)
        elif wake is not None:
            entry = self.open.get(wake)
            if entry is None:
                self._late(conn, wake, at)
            elif entry[0].done:
                conn.wake = min(conn.wake, verdict_due(entry[0], self.settle))

    def _late(self, conn: _Conn, wake: str | None, at: float) -> None:
        """An event of a chat judged already (`wake`: ChatTracker shows it as a warning), or a foreign or malformed
        frame (None: R8 or R12 on the chats in flight): counted when it came within LATE_MARGIN after the verdict of
        a chat of the connection was due, where a live client's late timer could have judged otherwise."""
        for chat in conn.checker.chats:
            if (wake is None or chat.wake_id == wake) and chat.judged:
                if 0.0 <= at - verdict_due(chat, self.settle) <= LATE_MARGIN:
                    self.near_late += 1
                    return
                if wake is not None:
                    return

    def _sent(self, conn: _Conn, rec: Recorded, at: float) -> None:
        conn.sends += 1  # as the recorder counts them (ConnectionLog.sends)
        frame = rec.frame
        if frame is None:
            return
        if rec.expect_error == "invalid_input":
            # A `send_raw:` probe (what the frame holds is the server's to reject, whatever it looks like): a chat
            # that waits for the server's error_message on an open connection, as live (R13).
            conn.clients = True
            conn.sent_chat(self._open(conn, at, timed=True, exp=self._step_expectations(rec)))
            return
        sent = self.profile.decode_client(frame)  # the profile tells requests and resumes apart, as for the proxy
        if (sent.kind == "request" and (key := resend_key(sent.message_id, sent.run_id))
                and (again := self.resends.pop(key, None))):
            # The message sent again after its connection closed before any event of its run: the same chat, timed
            # from its first try, as live (flow.ChatFlow._send_again).
            chat, _closed_at, clean = again
            self._held_failure_is_own(key)
            if clean:
                chat._warn(Rule.R13, RESENT_WARNING, None)
            if not conn.clients:
                # The connection's first message: the attempt that opened it was this chat's (a reconnect's, as
                # live counts it: flow.ChatFlow._resend_retries).
                chat.reconnect_tried(True)
            conn.clients = True
            self.resent.add(chat.chat_id)
            conn.checker.add(chat)
            self._track(chat, conn)
            conn.sent_chat(chat)
            conn.wake = min(conn.wake, chat.wait_deadline())
        elif sent.kind == "request":
            conn.clients = True
            if conn.resumes is not None and sent.run_id:
                conn.resumes.started(sent.run_id)  # a run id the client chose anew: its frames are this chat's
            # Timed from when it was due (an open-model chat sent late: its `due`), as live.
            since = rec.due if rec.due is not None and rec.due < at else at
            conn.sent_chat(self._open(conn, since, thread_id=sent.thread_id, run_id=sent.run_id,
                                      message_id=sent.message_id, timed=True, exp=self._step_expectations(rec),
                                      request=sent.request))
        elif sent.kind == "resume":
            run_id, user = sent.run_id, _user_of(conn.key)
            # The run of the same user only (as the proxy matches it, by credentials): another user's resume of that
            # run id adopts nothing (R8).
            tracker = self.parked.take(user, run_id)
            if tracker is None and run_id and self.left.take(user, run_id, at):
                # The client left this run's chat mid-run (judged abandoned then) and resumes it here: that chat's,
                # not judged again, no other user's (R8), as the proxy.
                if conn.resumes is None:
                    conn.resumes = Resumes()
                conn.resumes.ignore(run_id)
            elif tracker is None and run_id:
                entry = next(((t, c) for t, c in self.open.values()
                              if t.run_id == run_id and c is not conn and _user_of(c.key) == user), None)
                if entry is not None:
                    tracker, previous = entry
                    if previous.resumes is None:
                        previous.resumes = Resumes()
                    previous.resumes.let_go(previous.checker, tracker)  # as the proxy: judged here from now on
            # Awaiting the server's answer, followed or not (a RESUME_UNKNOWN_RUN naming no run is about the one
            # awaiting it), as live and as the proxy (FrameRouter.resume_sent).
            conn.router.resume_sent(run_id, tracker)
            if tracker is not None:
                if not conn.by_resume:
                    # The connection's first resume: the attempt that opened it was this chat's (the client's other
                    # chats lost with it found it open), as live counts it (ChatResult.reconnect_attempts).
                    tracker.reconnect_tried(True)
                if conn.resumes is None:
                    conn.resumes = Resumes()
                conn.resumes.resumed_here(tracker, run_id, sent.last_seq)
                conn.clients = True
                conn.checker.add(tracker)  # told what came here before it (R8, R12): in flight, live, when they came
                self._track(tracker, conn)
                conn.resumed_chat(tracker)
                self.resumed.sent(tracker)
                conn.wake = min(conn.wake, tracker.wait_deadline())

    def _step_expectations(self, rec: Recorded) -> Expectations:
        """The expectations of the chat a send record opens: the scenario's, with what the record says its step
        expected (its error, its roles) built as live builds them (scenario.expectations_for)."""
        if rec.expect_error is None and rec.required is None:
            return self.exp
        key = (rec.expect_error, tuple(r.value for r in rec.required) if rec.required is not None else None)
        exp = self.step_exp.get(key)
        if exp is None:
            if rec.expect_error == "invalid_input":
                exp = invalid_input_expectations(self.scenario.expect)
            else:
                exp = expectations_for(self.profile, self.scenario.expect,
                                       required=list(rec.required) if rec.required is not None else None,
                                       expect_error="fatal" if rec.expect_error == "fatal" else
                                       "recoverable" if rec.expect_error == "recoverable" else None)
            self.step_exp[key] = exp
        return exp

    def _failed_waiting(self, conn: _Conn, rec: Recorded) -> bool:
        """The connection never became usable and chats recorded on it wait for their first answer (over SSE, the
        request that no stream came of): each is an `error` chat of the failure's kind, as live. False when none
        waits (over WebSocket no message was sent: _failed counts the chat)."""
        waiting = [c for c in conn.open.values() if not c.judged and c.n_events == 0 and not c.done]
        reason = rec.reason or f"the connection failed ({rec.failed})"
        for chat in waiting:
            self.open.pop(chat.chat_id, None)
            conn.open.pop(chat.chat_id, None)
            self.untimed.discard(chat.chat_id)
            conn.checker.discard(chat)
            self._count(None, error_result(chat.chat_id, self.name, chat.sent_at, rec.failed, reason))
        return bool(waiting)

    def _failed(self, conn: _Conn, rec: Recorded, at: float) -> None:
        """The connection never became usable (refused at the handshake, no welcome, AUTH_FAILED) and no chat
        recorded on it waits (_failed_waiting): the chat that was to use it is an `error` chat of that kind, as live
        (exit 3 when every chat was unreachable, 2 when every one's credentials were refused); over WebSocket no
        message was sent, and the chat is counted here."""
        if (again := self._resend_for(conn.key, at)) is not None:
            if not self.scenario.max_reconnects:
                # The new connection a message was to be sent again on (its own closed before any event), where
                # reconnecting is not allowed: one plain connection, as live (flow.ChatFlow: its Connect failed); the
                # chat is an error of that kind, not a lost chat and an error chat more.
                chat = self.resends.pop(again)[0]
                self._count(None, error_result(chat.chat_id, self.name, chat.sent_at, rec.failed,
                                               rec.reason or f"the connection failed ({rec.failed})"))
                return
            if again not in self.held_failures:
                # Where it is allowed, whose failure this was shows later: the message's own attempts ("resume"
                # records) or its send make it another chat's; none before its deadline, its one plain connection (a
                # recording written before the resend's retries).
                self.held_failures[again] = (conn.key, rec, at)
                return
        self._own_failure(conn.key, rec, at)

    def _own_failure(self, key: str, rec: Recorded, at: float) -> None:
        """A connection that never became usable: the chat that was to use it, an `error` chat of that kind."""
        self.n += 1
        self.sink.chat_started(self.name)
        self._count(None, error_result(f"{key}#{self.n}", self.name, at, rec.failed,
                                       rec.reason or f"the connection failed ({rec.failed})"))

    def _held_failure_is_own(self, message_id: str) -> None:
        """The message waiting to be sent again made an attempt of its own (a "resume" record, or its send): the plain
        failure held for it (held_failures) was another chat's, counted as that chat now."""
        if (held := self.held_failures.pop(message_id, None)) is not None:
            self._own_failure(*held)

    def _resend_held(self, message_id: str, chat: ChatTracker) -> bool:
        """The message waiting to be sent again made no attempt of its own before its deadline, the recording's end or
        the run's stop, and a plain failure of its user was held for it (a recording written before the resend's
        retries): that was its one connection, and the chat an `error` of that kind, as live was then. False when
        none was held."""
        if (held := self.held_failures.pop(message_id, None)) is None:
            return False
        _key, rec, _at = held
        self._count(None, error_result(chat.chat_id, self.name, chat.sent_at, rec.failed,
                                       rec.reason or f"the connection failed ({rec.failed})"))
        return True

    def _resume_failed(self, conn: _Conn, rec: Recorded, at: float, *, retried: bool) -> None:
        """A reconnect to resume a run never became usable (a close record with "resume": true: refused, no welcome,
        …): an attempt that failed, counted on the chat of that user kept for the resume first (the oldest: the chats
        that lost one connection share its reconnect, as live counts it on the oldest still reconnecting). With
        "retry": true the client tried again after a backoff: the chats stay kept. Else that was its last attempt, and
        every chat of the user kept is lost there and then, its reconnect `lost`, "connection lost mid-run and
        reconnecting failed", as live (flow.ChatFlow.reconnected), not kept to its deadline for a resume that cannot
        come."""
        user = _user_of(conn.key)
        chat = self.parked.oldest(user)
        if chat is None:  # judged already (its deadline passed), or not kept (no run id, a bound)
            if (refused := _refusal(rec)) is not None:
                # SSE: the resume's request was the reconnect (the chat it resumed is on this connection), refused for
                # the credentials: the chat an `error`, auth_failed, as live (flow.ChatFlow.sent).
                for resumed in conn.open.values():
                    if not resumed.judged:
                        resumed.credentials_refused(refused)
            self._resend_connect_failed(conn, rec, at, retried=retried)
            return
        chat.reconnect_tried(False)
        if retried:
            return
        # The client's last attempt: every chat of the user kept for a resume is lost (the chats that lost one
        # connection reconnect it together, as live: flow.takes_attempt); an `error`, auth_failed, when the attempt
        # was refused for the credentials (no attempt follows one), as live.
        refused = _refusal(rec)
        for lost in self.parked.of(user):
            lost.reconnected(False)  # counted with its verdict (_count), as every reconnect
            if refused is not None:
                lost.credentials_refused(refused)
            self._finish(lost, at, lost=True, note=RECONNECT_FAILED_NOTE)

    def _resend_connect_failed(self, conn: _Conn, rec: Recorded, at: float, *, retried: bool) -> None:
        """An attempt to open the new connection a message was to be sent again on (its own closed before any event
        of its run) failed: live opens it as a reconnect (flow.ChatFlow._resend_retries), so its close record says
        "resume", and "retry" when the client tried again after a backoff: counted on that chat, kept. Else that was
        its last attempt: the chat is an `error` of that kind, its attempts counted, as live."""
        if (again := self._resend_for(conn.key, at, any_close=True)) is None:
            return
        chat = self.resends[again][0]
        self._held_failure_is_own(again)
        chat.reconnect_tried(False)
        if retried:
            return
        del self.resends[again]
        refused = _refusal(rec)
        result = error_result(chat.chat_id, self.name, chat.sent_at, rec.failed,
                              CREDENTIALS_REFUSED.format(refused) if refused is not None
                              else rec.reason or f"the connection failed ({rec.failed})")
        result.reconnect_attempts, result.reconnect_failures = chat.reconnect_tries
        self._count(None, result)

    def _send_failed(self, conn: _Conn, rec: Recorded) -> bool:
        """A chat's frame did not leave within connect_timeout (the server stopped reading): that chat, the last one a
        send record opened on the connection that nothing has answered (its deadline passed or not), is an `error`
        (send_failed), as live (flow.ChatFlow.sent); the connection, still open, goes on. A record that names its send
        record (`send`, as `--record` writes it) fails the chat that send opened, not one whose send record came in
        between (a chat sent while the first send still waited). False when there is no such chat (_no_send_waiting)."""
        chat: ChatTracker | None
        if rec.send is not None:
            named = conn.by_send.get(rec.send)
            chat = conn.open.get(named) if named is not None else None
            if chat is None or chat.judged:
                return False  # judged already (at its deadline, another record in between), or none: _no_send_waiting
        else:  # a record that names none (a hand-made one, an older recording): the last chat nothing has answered
            chat = next((c for c in reversed(conn.open.values()) if not c.judged and not c.done and c.n_events == 0
                         and c.chat_id not in self.untimed), None)
        if chat is None:
            return False
        if rec.send is not None:
            conn.by_send.pop(rec.send, None)
        self.open.pop(chat.chat_id, None)
        conn.open.pop(chat.chat_id, None)
        conn.checker.discard(chat)
        self._count(None, error_result(chat.chat_id, self.name, chat.sent_at, SEND_FAILED,
                                       rec.reason or "the frame did not leave in time"))
        return True

    def _no_send_waiting(self, conn: _Conn, rec: Recorded, at: float) -> None:
        """A send_failed record with no chat waiting for its send: one judged at its deadline before it (another
        record of the connection came in between) is said (LATE_SEND_WARNING); none at all (a hand-made record) is an
        R12 there."""
        if rec.send is not None:  # the chat its send record opened, if any
            named = conn.by_send.pop(rec.send, None)
            last = next((c for c in conn.checker.chats if c.chat_id == named), None) if named is not None else None
        else:
            last = next((c for c in reversed(conn.checker.chats) if c.chat_id not in self.untimed), None)
        if last is not None and last.judged and last.n_events == 0:
            self.late_sends += 1
        else:
            self._problem(conn, "a send_failed close record with no chat waiting for its send", rec.where, at)

    def _resend_for(self, key: str, at: float, *, any_close: bool = False) -> str | None:
        """The message id of the oldest message waiting to be sent again (`resends`) by the user whose connection `key`
        is: `--record` labels a connection `USER.N` (in a directory's run, `FILE:USER.N`: _merged), and each of a
        user's chats makes its own attempt to connect. Only a message whose connection the server closed with a
        closing handshake: live sends that one again for certain; after a crash (1006) only one that found the
        connection closed is, which the recording cannot tell from one that went (the failure may be another chat's),
        unless the failure says it was a reconnect's (`any_close`: "resume", with no chat of the user kept for one)."""
        user = _user_of(key)
        if not user:
            return None
        for message_id, (chat, closed_at, clean) in self.resends.items():
            if (clean or any_close) and closed_at <= at and _user_of(chat.chat_id.rpartition("#")[0]) == user:
                return message_id
        return None

    # -- chats --
    def _open(self, conn: _Conn, at: float, *, thread_id: str | None = None, run_id: str | None = None,
              message_id: str | None = None, timed: bool, exp: Expectations | None = None,
              request: dict[str, Any] | None = None) -> ChatTracker:
        self.n += 1
        tracker = ChatTracker(f"{conn.key}#{self.n}", exp or self.exp, at, scenario=self.name, thread_id=thread_id,
                              run_id=run_id, message_id=message_id, request=request)
        conn.checker.add(tracker)
        self._track(tracker, conn)
        if not timed:
            self.untimed.add(tracker.chat_id)
        self.sink.chat_started(self.name)
        conn.wake = min(conn.wake, tracker.wait_deadline())
        if len(conn.open) > MAX_OPEN_PER_CONN:
            oldest = next(iter(conn.open.values()))
            self._finish(oldest, at, lost=not oldest.done, note=CROWDED_NOTE)
        if len(self.open) > MAX_OPEN_CHATS:
            oldest, _ = next(iter(self.open.values()))
            self._finish(oldest, at, lost=not oldest.done, note=CROWDED_NOTE)
        return tracker

    def _bound_bytes(self, at: float) -> None:
        """The open chats' kept events within MAX_OPEN_BYTES: the oldest judged as they stand until half of it."""
        total = sum(t.kept_bytes for t, _ in self.open.values())
        if total <= MAX_OPEN_BYTES:
            return
        while total > MAX_OPEN_BYTES // 2 and self.open:
            oldest, _ = next(iter(self.open.values()))
            total -= oldest.kept_bytes
            self._finish(oldest, at, lost=not oldest.done, note=HEAVY_NOTE)

    def _track(self, tracker: ChatTracker, conn: _Conn) -> None:
        """The chat is followed on `conn` (opened there, or resumed there from another connection)."""
        entry = self.open.get(tracker.chat_id)
        if entry is not None:
            entry[1].open.pop(tracker.chat_id, None)
        self.open[tracker.chat_id] = (tracker, conn)
        conn.open[tracker.chat_id] = tracker

    def _judge_ready(self, conn: _Conn, at: float, slack: float = 0.0) -> None:
        """Judge the chats whose verdict was due before `at` (flow.verdict_due, as the live client and the proxy time
        theirs); one whose deadline passed is judged as at its deadline, not at the next recorded frame.

        A frame recorded at the very time a verdict fell due came in the same socket read as what made it due (the
        clients stamp every frame of one read with that read's time): live, the chat's turn comes after the whole
        read, so such a frame reaches the chat before its verdict, here too. That decides for a chat judged at once
        (its message rejected, verdict_due's -inf): the rest of the read that rejected it (a run naming its message)
        is in its verdict, as live, and what a later read brings is not."""
        if at + slack < conn.wake:
            return
        wake = float("inf")
        for chat in list(conn.open.values()):
            if chat.judged:
                continue
            due = verdict_due(chat, self.settle)
            if due == float("-inf"):
                due = chat.last_at  # at once: after the read that rejected it (its time: ChatTracker.rejected)
            if at + slack <= due:
                wake = min(wake, due)
            else:
                self._finish(chat, max(at, due) if chat.done else due)
        conn.wake = wake

    def _judge_parked(self, at: float) -> None:
        if at < self.parked_wake:
            return
        for chat in self.parked.due(at):
            self._finish(chat, chat.wait_deadline(), lost=True, note=NOT_RESUMED_NOTE)
        self.parked_wake = min([self.parked.wake, *(c.wait_deadline() for c, _, _ in self.resends.values()
                                                    if c.wait_deadline() > at)])
        for message_id, (chat, closed_at, _clean) in list(self.resends.items()):
            if at >= chat.wait_deadline():  # never sent again: judged as it stood when its connection closed
                del self.resends[message_id]
                if not self._resend_held(message_id, chat):
                    self._finish(chat, closed_at, lost=True, note=CLOSED_NOTE)

    def _close(self, conn: _Conn, at: float, rec: Recorded | None, note: str) -> None:
        """The connection ended (a close record, or the end of the recording: `rec` None)."""
        # Another user's events (R8) and malformed frames (R12) that came after its last chat was judged (or on a
        # connection that carried none), no chat after them: the connection's own, counted in no chat, as live and
        # the proxy report them (FrameRouter.connection_ended).
        for violation in conn.router.connection_ended():
            self.tally.add_connection_violation(violation)
            self.listing.add_connection_violation(violation)
        if rec is not None and not rec.stream:
            # The server's close of AUTH_CLOSE_CODES (1008, 4401, 4403) before it said anything: the credentials
            # refused, as an AUTH_FAILED frame says it, as live and the proxy judge it (FrameRouter.closed_refusing);
            # never a close the client started (`by`: it left, dropped or stopped; or the proxy stopping).
            conn.router.closed_refusing(rec.code, at, by_client=bool(rec.detail))
        if rec is not None and rec.detail == "client":
            # The client's own close comes after the verdicts it judged before it: a chat whose verdict falls due
            # within DUE_SLACK after the close (its send record up to that much later than the live client's start
            # of its clock: no "due" written for less) was judged at its deadline live, not left by the client.
            self._judge_ready(conn, at, DUE_SLACK)
        else:
            self._judge_ready(conn, at)
        stopped = rec is not None and rec.detail == "proxy-stop"
        if stopped:
            self._proxy_stopped()
        full = {c for n in rec.parking_full if (c := conn.by_send.get(n) or conn.by_resume.get(n))} if rec else set()
        resumable = self.profile.resume is not None
        if rec is not None and rec.detail == "client" and resumable:
            # The client left: its user's client may resume the runs of its chats on another connection (a page
            # reload), those judged here included (their end forwarded as the page unloaded), as the proxy.
            for chat in conn.checker.chats:
                if chat.run_id and (chat.judged or chat.done):
                    self.left.add(_user_of(conn.key), chat.run_id, chat.wait_deadline(), at)
        if (rec is not None and rec.detail == "client" and resumable and not conn.sends and not conn.router.answered
                and not conn.checker.chats):
            # A connection of nothing the client closed: it left (Locust stopping the user) while it reconnected to
            # resume its runs (recorder.open_left): the user's chats kept for that resume are abandoned, as live
            # (ChatFlow.left) and as those open on a connection the client closes.
            for chat in self.parked.of(_user_of(conn.key)):
                self.resumed.judge(chat, left=True)
                if chat.run_id:
                    self.left.add(_user_of(conn.key), chat.run_id, chat.wait_deadline(), at)
                abandon(chat, at)
                self.sink.chat_abandoned(self.name)
                self._finish(chat, at)
        for chat in list(conn.open.values()):  # (not those followed on another connection since a resume)
            if chat.judged:
                continue
            if chat.done:
                if rec is not None and not rec.detail and not rec.stream:
                    # Closed by the server within the chat's settle window: after an expected error (or an invalid
                    # message's answer) it had to stay open (R13), as the live client, still listening, judges it.
                    chat.connection_lost(at)
                self._finish(chat, at)
                continue
            if stopped or chat.chat_id in full:
                # The proxy closed the connection as it stopped, or had no room to keep the chat the server cut for its
                # user's resume or resend: not judged, as the proxy counted it.
                self._unjudged(chat, PROXY_STOPPED if stopped else PARKING_FULL)
                continue
            if rec is not None and rec.detail == "client":
                # The client left on purpose mid-run (abandon_after, a user closing the tab): abandoned, judged only
                # on what arrived, as `chatprobe run` and the proxy judge it; its pending resume too (`resumed` when
                # events came back, else in no count), in its result.
                self.resumed.judge(chat, left=True)
                if resumable and chat.run_id:
                    self.left.add(_user_of(conn.key), chat.run_id, chat.wait_deadline(), at)
                abandon(chat, at)
                self.sink.chat_abandoned(self.name)
                self._finish(chat, at)
                continue
            if rec is None or rec.detail == "stop":
                # The run that recorded it stopped (its max_duration, Ctrl-C: "by": "client-stop"), or the recording
                # ends, mid-run: judged on what arrived, a lost chat (ChatFlow.stopped), not the server's doing; its
                # pending resume as a chat left with one (`resumed` when events came back, else in no count: the
                # server had no time to show whether the run went on), in its result.
                self.resumed.judge(chat, left=True)
                if rec is not None:
                    note = STOPPED_PROBE_NOTE if chat.exp.expect_error == "invalid_input" else STOPPED_CHAT_NOTE
                self._finish(chat, at, lost=True, note=note)
                continue
            clean = rec is not None and rec.code in CLEAN_CLOSE_CODES and not rec.detail
            key = resend_key(chat.message_id, chat.run_id)
            if (rec is not None and not rec.stream and chat.n_events == 0 and key
                    and (chat.run_id is None or (clean and not resumable))
                    and chat.exp.expect_error != "invalid_input" and self.scenario.reconnect
                    and chat.chat_id not in self.resent and len(self.resends) < MAX_PARKED):
                # The server closed the connection before any event of the run, which has no id to resume (or the
                # dialect no resume frame): the live client sends the message again, once, on a new connection (a
                # frame that found the connection closed, or crossed a closing handshake). Held until its deadline for
                # that send.
                self.open.pop(chat.chat_id, None)
                conn.open.pop(chat.chat_id, None)
                if (earlier := self.resends.pop(key, None)) is not None and not self._resend_held(key, earlier[0]):
                    self._finish(earlier[0], earlier[1], lost=True, note=CLOSED_NOTE)
                self.resends[key] = (chat, at, rec.code in CLEAN_CLOSE_CODES)
                self.parked_wake = min(self.parked_wake, chat.wait_deadline())
                continue
            if rec is not None and not rec.detail and not rec.stream:
                # The server's doing (not the client's drop, nor the end of a chat's own event stream): R13 after an
                # expected error, as live.
                chat.connection_lost(at)
            parked, previous = False, None
            if rec is not None and resumable and chat.run_id:
                self.resumed.judge(chat)
                parked, previous = self.parked.park(_user_of(conn.key), chat)
                if (parked and clean and not rec.stream and key and self.scenario.reconnect
                        and chat.chat_id not in self.resent):
                    self.resumed.cut_clean(chat)  # a RESUME_UNKNOWN_RUN answer to its resume: sent again, as live
            if previous is not None:
                # Two chats of a user cut short under one run id: the earlier one is judged, never dropped from the
                # counts.
                self._finish(previous, at, lost=True, note=DISPLACED_NOTE)
            if parked:
                self.open.pop(chat.chat_id, None)
                conn.open.pop(chat.chat_id, None)
                self.parked_wake = min(self.parked_wake, chat.wait_deadline())
            else:
                self._finish(chat, at, lost=True, note=note)
        if rec is not None and rec.detail == "stop":
            self._run_stopped(conn, at, rec)

    def _run_stopped(self, conn: _Conn, at: float, rec: Recorded) -> None:
        """The run that recorded this stopped (a "client-stop" close record: its max_duration, Ctrl-C): the report says
        so, and why (`stop`), as live; and the chats of the connection's user that waited for a new connection then
        (parked for the resume of their run, or their message to be sent again: the reconnect the stop cut short,
        whose record this may be) were in flight, stopped as the run stopped them (ChatFlow.stopped): incomplete,
        "stopped before the chat ended", not lost, not held against the server."""
        self.stopped_by = STOPPED_BY.get(rec.stop, RECORDED_STOP)
        user = _user_of(conn.key)
        for chat in self.parked.of(user):
            self.resumed.judge(chat, left=True)
            note = STOPPED_PROBE_NOTE if chat.exp.expect_error == "invalid_input" else STOPPED_CHAT_NOTE
            self._finish(chat, at, lost=True, note=note)
        for key, (chat, _closed_at, clean) in list(self.resends.items()):
            if _user_of(chat.chat_id.rpartition("#")[0]) == user:
                del self.resends[key]
                if self._resend_held(key, chat):
                    continue
                if clean:  # crossed a closing handshake: the live client said so as it went to send it again
                    chat._warn(Rule.R13, RESENT_WARNING, None)
                self._finish(chat, at, lost=True, note=STOPPED_CHAT_NOTE)

    def _finish(self, tracker: ChatTracker, now: float, *, lost: bool = False, note: str = "",
                crowded: bool = False) -> None:
        """Judge the chat at `now` (ChatTracker.finish) and count its verdict; `crowded`: as one the proxy let go for
        its client's too many chats open at once (flow.crowded_out)."""
        entry = self.open.pop(tracker.chat_id, None)
        if entry is not None:
            entry[1].open.pop(tracker.chat_id, None)
        self.resent.discard(tracker.chat_id)
        self.resumed.judge(tracker)  # whether its last resume brought events back, as live
        self.resumed.ended(tracker.chat_id)
        # Further runs the stream carried first (as live): each reported as a chat of its own, and the chat's verdict
        # is its stream's (checker.fold_further).
        further = [c for c in tracker.followups if not c.judged]
        judge_followups(tracker, now)
        result = tracker.finish(now, lost=lost, note=note)
        if crowded:
            crowded_out(result)
        untimed = tracker.chat_id in self.untimed or tracker.chat_id in self.untimed_events
        self.untimed.discard(tracker.chat_id)
        self.untimed_events.discard(tracker.chat_id)
        if untimed:
            result.time_to_first_event = None
            result.duration = None
        self._count(tracker, result)
        for run in further:
            assert run.result is not None
            if untimed or run.chat_id in self.untimed_events:
                run.result.time_to_first_event = run.result.duration = None
            self._count(run, run.result)
        for run in tracker.followups:
            self.untimed_events.discard(run.chat_id)

    def _proxy_stopped(self) -> None:
        """The proxy's recording says it stopped: the chats parked for a resume or held for a resend then are not
        judged (proxy_stopped), as the proxy counted them (those whose deadline passed before were judged then)."""
        for chat in self.parked.drain():
            self._unjudged(chat, PROXY_STOPPED)
        for key, (chat, _closed_at, _clean) in list(self.resends.items()):
            if not self._resend_held(key, chat):
                self._unjudged(chat, PROXY_STOPPED)
        self.resends.clear()
        self.parked_wake = float("inf")

    def _unjudged(self, tracker: ChatTracker, reason: str) -> None:
        """A chat the proxy could not judge: counted apart (reason, UNJUDGED_REASONS), never as an outcome; its pending
        resume with it, in no count."""
        entry = self.open.pop(tracker.chat_id, None)
        if entry is not None:
            entry[1].open.pop(tracker.chat_id, None)
        self.resent.discard(tracker.chat_id)
        self.resumed.forget(tracker.chat_id)
        self.untimed.discard(tracker.chat_id)
        self.untimed_events.discard(tracker.chat_id)
        self.tally.unjudged[reason] += 1
        self.sink.chat_unjudged(self.name, reason)
        tracker.events = []

    def _count(self, tracker: ChatTracker | None, result: ChatResult) -> None:
        self.tally.add(result)
        for reconnect in result.reconnects:  # each judged with its chat (PendingResumes), counted with its verdict
            self.sink.reconnect(self.name, reconnect)
        if tracker is not None and tracker.n_events and result.time_to_first_event is None:
            self.timeless += 1  # events came, their times were not recorded
        self.sink.chat_finished(result)
        self.listing.add(result)  # a listed chat's events are a copy: the judged chat's own list is let go below
        # The connection remembers the judged chat for late events (shown with it as warnings), not its events: a
        # chat judged to free memory (HEAVY_NOTE) must free it.
        if tracker is not None:
            tracker.events = []

    def end(self, interrupted: bool = False) -> None:
        """The recording ended, or the check was `interrupted` before it did: every chat still open is judged as it
        stands, its note saying which (a chat the stop cut short is not said to end where the recording does)."""
        for conn in list(self.conns.values()):
            self._close(conn, conn.last_t if conn.last_t is not None else self.now, None,
                        INTERRUPTED_NOTE if interrupted else ENDED_NOTE)
        self.conns.clear()
        for chat in self.parked.drain():
            self._finish(chat, self.now, lost=True, note=INTERRUPTED_NOTE if interrupted else NOT_RESUMED_NOTE)
        for key, (chat, closed_at, _clean) in list(self.resends.items()):
            if not self._resend_held(key, chat):
                self._finish(chat, closed_at, lost=True, note=INTERRUPTED_NOTE if interrupted else CLOSED_NOTE)
        self.resends.clear()

    def run(self, target: str, elapsed: float) -> ScenarioRun:
        stats = self.tally.stats()
        objectives = self.scenario.objectives
        errors: list[str] = []
        warnings: list[str] = []
        if not self.tally.ttfe:
            # Nothing timed to judge: a latency objective without a sample would fail for want of one. Left out; when
            # chats got events whose times the recording lacks, said among the warnings (on the terminal beside the
            # objectives), not only in the report's errors.
            objectives = objectives.model_copy(update={"time_to_first_event": Stat(), "chat_duration": Stat()})
            if self.tally.chats:
                (warnings if self.timeless else errors).append(UNTIMED_NOTE)
        unjudged = ", ".join(f"{reason}: {self.tally.unjudged[reason]}" for reason in UNJUDGED_REASONS
                             if self.tally.unjudged[reason])
        if not self.tally.chats:
            errors.append(NOTHING_JUDGED.format(n=sum(self.tally.unjudged.values()), reasons=unjudged) if unjudged
                          else SILENT_NOTE.format(n=self.silent) if self.silent
                          else "no chat found in the recording (is it the profile's dialect?)")
        if (note := self.listing.note(self.tally.chats)) is not None:
            errors.append(note)
        started = self.first_t if self.first_t is not None and self.first_t > 1e9 else time.time()
        warnings += self.notes + self.gaps
        if unjudged:
            warnings.append(UNJUDGED_WARNING.format(n=sum(self.tally.unjudged.values()), reasons=unjudged))
        if self.n_gaps > len(self.gaps):
            warnings.append(f"the recording dropped frames on {self.n_gaps} connections in all")
        if self.near_late:
            warnings.append(LATE_WARNING.format(n=self.near_late, margin=LATE_MARGIN))
        if self.late_sends:
            warnings.append(LATE_SEND_WARNING.format(n=self.late_sends))
        return ScenarioRun(scenario=self.scenario, target=target, results=self.listing.listed, stats=stats,
                           objectives=evaluate(stats, objectives), started_at=started, elapsed=elapsed, errors=errors,
                           warnings=warnings, stopped_by=self.stopped_by,
                           connection_violations=self.listing.connection_violations)


def _refusal(rec: Recorded) -> str | None:
    """How a reconnect's failure record says the credentials were refused (its status, close code, AUTH_FAILED code),
    or None: the one decision the live client made (backoff.credentials_refusal)."""
    return credentials_refusal(rec.status, rec.code, rec.auth_error or None)


def _user_of(key: str) -> str:
    """The user a `--record` connection label names (`USER.N`, `FILE:USER.N` in a merge), else ""."""
    head, colon, label = key.partition(":")
    return (label if colon and head.isdigit() else key).rpartition(".")[0]


def run_name(path: str | Path) -> str:
    """A scenario name (the reports' first column) for a recording file."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).name)[:64] or "recording"


def _merged(paths: list[Path], fmt: str | None, max_frame: int, max_text: int) -> Iterator[Recorded]:
    """The records of several files in recorded-time order (a record without a time keeps its file's place),
    connections named apart by file: what `--record` wrote for one run, where a resumed chat spans connections.

    Every file's next record waits in the merge: each is held to its share of MAX_MERGED_BYTES, so that a directory
    of many files of large frames cannot hold gigabytes (a larger frame is a problem record, an R12 that says so)."""
    if len(paths) == 1:  # one file holds one record at a time: judged as `check FILE` judges it
        share, text_limit = sys.maxsize, max_text
    else:
        share = max(MIN_MERGED_SHARE, MAX_MERGED_BYTES // len(paths))
        text_limit = min(max_text, max(MIN_MERGED_SHARE, share // 8))  # a HAR's SSE body: its text, bytes and parse

    def keyed(i: int, p: Path) -> Iterator[tuple[float, int, int, Recorded]]:
        last, n = float("-inf"), -1
        # Not enumerate(): it keeps its last (index, record) tuple for reuse, which holds the record's frame.
        for rec in read_recording(p, fmt, max_frame=max_frame, max_text=text_limit):
            n += 1
            if rec.t is not None:
                last = rec.t
            if rec.frame is not None and (held := sys.getsizeof(rec.frame)) > share + 256:  # 256: the header
                rec = Recorded("problem", rec.conn, t=rec.t, where=rec.where,
                               detail=f"frame of {frame_bytes(rec.frame)} bytes ({held} in memory), over the {share} "
                                      f"byte share of each of the {len(paths)} files merged (check fewer files at once)")
            yield last, i, n, dataclasses.replace(rec, conn=f"{i}:{rec.conn}")

    for *_, rec in heapq.merge(*(keyed(i, p) for i, p in enumerate(paths))):
        yield rec


def _recording_files(directory: Path) -> list[tuple[str | None, list[Path]]]:
    """A directory's recordings, one group per run `--record` wrote into it (then the other files as one)."""
    runs = recorded_runs(directory)
    if not runs:
        parts = [p for ps in part_files(directory).values() for p in ps]
        raise RecordingError(f"{directory}: no recording file in the directory"
                             + (f"; {parts_note(parts)}" if parts else ""))
    for run_id, files in runs:
        run = f" (run {run_id})" if run_id else ""
        for f in files:
            if (large := too_large(f)) is not None:
                raise RecordingError(large)
        if len(files) > MAX_FILES_MERGED:
            raise RecordingError(f"{directory}{run}: {len(files)} files, more than the {MAX_FILES_MERGED} judged "
                                 "together; check them in parts")
        if not _may_open(len(files) + SPARE_FILES):
            raise RecordingError(f"{directory}{run}: {len(files)} files are judged together (each open while they "
                                 "are merged), more than this process may open (ulimit -n); raise the limit or check "
                                 "them in parts")
    return runs


def _may_open(n: int) -> bool:
    """Whether the process may hold `n` files open, raising its soft limit up to the hard one if need be (a run of
    `--record` writes up to 1,000 files; many systems start processes with a soft limit of 1,024)."""
    try:
        import resource
    except ImportError:  # not on POSIX: no limit to raise here
        return True
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or n <= soft:
        return True
    if hard != resource.RLIM_INFINITY and n > hard:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
    except (ValueError, OSError):
        return False
    return True


class Stop(Protocol):
    """Set from outside (a signal handler) to stop judging: a threading.Event, an asyncio.Event."""

    def is_set(self) -> bool: ...


STOPPED_NOTE = ("interrupted at record {n}: the rest of the recording was not read, and the chats open then were "
                "judged as they stood")

# The names `--record` gave its files before it wrote what `check` needs to judge a run's steps as live: NNNNNN-LABEL
# (no run id: the first recorder), then a run id to the second (until 2026-12-02 05:29 UTC). Every field `check` reads
# beyond t, dir, conn, frame and code came later, so such a recording is judged as a plain one, which its chats of
# steps were not live: said in the run's warnings.
OLD_RECORDING_RE = re.compile(r"^(?:(\d{6})-(.+)|\d{8}T\d{6}Z-[0-9a-f]{6}-\d{6}-.+)\.jsonl$")
OLD_RECORDING_NOTE = (
    "{name}: written by a chatprobe --record of before 2026-12-02 05:29 UTC (its file names carry no run id, or one to "
    "the second), which recorded no step's expectations ('expect'), no close by the client ('by'), no connection that "
    "never opened ('failed'), no send that never left, no due time ('due') nor the token's user ('user'): a step's "
    "expected error or send_raw probe, a chat left with abandon_after, a refused connection are judged here as plain "
    "chats, not as the run judged them live (an error expected is an R13 or an error chat here, a probe no chat, a chat "
    "abandoned incomplete); record the run again with this chatprobe to judge it as live")


def _old_recording(path: Path) -> bool:
    """Whether a file is one an old `--record` wrote (OLD_RECORDING_RE): a run id to the second says so; a name of
    six digits and a label only with its first record's connection, which that recorder named LABEL.N after its file
    NNNNNN-LABEL (a file of a team's own, `202612-prod.jsonl`, is not taken for one)."""
    m = OLD_RECORDING_RE.match(path.name)
    if m is None or m.group(1) is None:
        return m is not None
    try:
        with path.open("rb") as f:
            first = json.loads(f.readline(1 << 16))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(first, dict) and first.get("conn") == f"{m.group(2)}.{int(m.group(1))}"


def _check_each(path: str | Path, profile: Profile, scenario: Scenario | None, fmt: str | None, sink: Sink | None,
                max_frame: int, max_text: int, stop: Stop | None = None, listing: ListingBudget | None = None
                ) -> Iterator[ScenarioRun]:
    """A file judged as one run; a directory as one run per run `--record DIR` wrote into it (each run's files
    merged in time order), named after the directory and the run id when it holds more than one. Once `stop` is set,
    each run not begun is reported as not run (a JUnit <skipped>), not left out of the reports."""
    p = Path(path)
    planned: list[tuple[str, str, list[Path] | None]] = [(run_name(path), str(path), None)]
    left: list[list[Path]] = []  # each planned run's part files left (recordings.part_files)
    if p.is_dir():
        runs = _recording_files(p)
        planned = [(run_name(f"{p.name}-{run_id}"), f"{path} (run {run_id})", files)
                   if len(runs) > 1 and run_id is not None else (run_name(path), str(path), files)
                   for run_id, files in runs]
        if parts := part_files(p):
            # Each run's part files are said in its own warnings; those of a run with no file kept, in the first run's.
            left = [parts.pop(run_id, []) if run_id is not None else [] for run_id, _ in runs]
            left[0] += [f for fs in parts.values() for f in fs]
    for i, (name, target, files) in enumerate(planned):
        if stop is not None and stop.is_set():
            base = scenario or Scenario(name="check")
            yield not_started(base.model_copy(update={"name": name}), target, STOPPED_BY["interrupted"], time.time(),
                              "check")
            continue
        records = (read_recording(p, fmt, max_frame=max_frame, max_text=max_text) if files is None
                   else _merged(files, fmt, max_frame, max_text))
        run = _judge(name, target, records, profile, scenario, sink, stop, listing)
        if old := next((f for f in files or [p] if _old_recording(f)), None):
            run.warnings.insert(0, OLD_RECORDING_NOTE.format(name=old.name))
        if left and left[i]:
            run.warnings.append(parts_note(left[i]))
        yield run


def _judge(name: str, target: str, records: Iterable[Recorded], profile: Profile, scenario: Scenario | None,
           sink: Sink | None, stop: Stop | None = None, listing: ListingBudget | None = None) -> ScenarioRun:
    base = scenario or Scenario(name="check")
    check = OfflineCheck(profile, base.model_copy(update={"name": name}), sink, listing)
    wall = time.monotonic()
    n = 0
    stopped = False
    it = iter(records)
    try:
        for rec in it:
            if stop is not None and stop.is_set():
                stopped = True
                break
            n += 1
            check.feed(rec)
    finally:
        close = getattr(it, "close", None)  # a reader left mid-file lets its file go now
        if close is not None:
            close()
    check.end(interrupted=stopped)
    span = (check.now - check.first_t) if check.first_t is not None else time.monotonic() - wall
    run = check.run(target, max(span, 0.0))
    if stopped:
        run.stopped_by = "interrupted"
        run.warnings.append(STOPPED_NOTE.format(n=n + 1))
    return run


def check_file(path: str | Path, profile: Profile, scenario: Scenario | None = None, fmt: str | None = None, *,
               sink: Sink | None = None, max_frame: int = DEFAULT_MAX_FRAME,
               max_text: int = DEFAULT_MAX_TEXT) -> ScenarioRun:
    """One recording judged: a ScenarioRun named after the file, its target the file's path. A directory is one
    recording: its files merged in time order (what `--record DIR` wrote); one that `--record` wrote several runs
    into is refused (check_files judges each). Raises RecordingError (a ConfigError: exit 2) when a file cannot be
    read as a recording at all."""
    p = Path(path)
    if p.is_dir() and len(runs := _recording_files(p)) > 1:
        ids = ", ".join(run_id or "other files" for run_id, _ in runs[:5])
        raise RecordingError(f"{path}: holds {len(runs)} recorded runs ({ids}{', …' if len(runs) > 5 else ''}); "
                             "`chatprobe check DIR` judges each")
    (run,) = _check_each(path, profile, scenario, fmt, sink, max_frame, max_text)
    return run


def check_files(paths: Iterable[str | Path], profile: Profile, scenario: Scenario | None = None,
                fmt: str | None = None, *, sink: Sink | None = None, max_frame: int = DEFAULT_MAX_FRAME,
                max_text: int = DEFAULT_MAX_TEXT, stop: Stop | None = None) -> list[ScenarioRun]:
    """`chatprobe check PATH...`: one ScenarioRun per file (a directory: one per run `--record` wrote there), for
    print_summary, write_json, write_junit and write_html; exit 0 when every run passed, 1 otherwise. Every path
    and `fmt` are checked before any file is read (RecordingError, a ConfigError: exit 2).

    Once `stop` is set (Ctrl-C, SIGTERM), the recording being read is judged as it stands
    (stopped_early, a warning naming the record it stopped at) and no other is started: each is reported as not run."""
    paths = list(paths)
    if not paths:
        raise RecordingError("chatprobe check: give at least one recording file")
    if fmt is not None and fmt not in FORMATS:
        raise RecordingError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    n_runs = 0
    for i, p in enumerate(paths):
        if not (Path(p).is_file() or Path(p).is_dir()):
            raise RecordingError(_not_a_recording(p))
        if (large := too_large(p)) is not None:  # before any file is read, as every refusal here
            raise RecordingError(large)
        n_runs += len(_recording_files(Path(p))) if Path(p).is_dir() else 1
        if n_runs > MAX_RUNS:
            raise RecordingError(f"{p}: {n_runs} recorded runs{' with the paths before it' if i else ''}, more than "
                                 f"the {MAX_RUNS} one check judges; check them in parts")
    # What the runs list (their first passing and failing chats, with their events): one bound for the whole check.
    listing = ListingBudget("of the whole check") if n_runs > 1 else None
    runs: list[ScenarioRun] = []
    for p in paths:  # once stopped, each run not begun is there as not run
        runs.extend(_check_each(p, profile, scenario, fmt, sink, max_frame, max_text, stop, listing))
    return runs


def check_recording(path: str | Path, profile: str | Profile = "netra",
                    scenario: str | os.PathLike[str] | Scenario | None = None, fmt: str | None = None) -> ScenarioRun:
    """One recording judged, the profile and the scenario given by name or file (a str or a Path: the pytest plugin's
    helper, for browser tests that already save HAR files): `assert_passed(check_recording("run.har"))`."""
    from .profiles import load_profile
    from .scenario import load_scenario

    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    sc = load_scenario(os.fspath(scenario)) if isinstance(scenario, (str, os.PathLike)) else scenario
    if fmt is not None and fmt not in FORMATS:
        raise RecordingError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not (Path(path).is_file() or Path(path).is_dir()):
        raise RecordingError(_not_a_recording(path))
    return check_file(path, prof, sc, fmt)


def _not_a_recording(path: str | Path) -> str:
    """Why a path is no recording: missing, or there but neither a file nor a directory (a device, a pipe)."""
    if os.path.lexists(path):
        return f"{path}: not a regular file or a directory (a device, a pipe or a socket): save the recording to a file"
    return f"{path}: no such recording file"


def assert_passed(run: ScenarioRun, worst: int = 10) -> ScenarioRun:
    """Fail with the unmet objectives and the first non-passing chats' violations, one per line, unless the run
    met its objectives."""
    __tracebackhide__ = True  # under pytest, the traceback ends at the test's own line
    if run.passed:
        return run
    lines = [f"{run.target}: objectives not met"] + [f"  {o.describe()}" for o in run.failed_objectives]
    lines += [f"  {e}" for e in run.errors]
    for r in [r for r in run.results if r.outcome is not Outcome.PASSED][:worst]:
        lines.append(f"  chat {r.chat_id} (run {r.run_id}) {r.outcome.value}: {r.note or r.error or ''}".rstrip())
        lines += [f"    {v}" for v in r.violations[:10]]
    # What pytest prints on a terminal and writes into --junitxml: the recorded server's words redacted, escaped and
    # bounded line by line, as every report shows them (a quoted credential, an escape sequence, a bidi override).
    raise AssertionError("\n".join(redact.clean(line, MESSAGE_LIMIT) for line in lines))
