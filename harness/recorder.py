"""`--record DIR`: each connection's frames written to DIR in the JSON Lines form `chatprobe check` reads
(harness/recordings.py), secrets scrubbed, bounded per file, in file count and in bytes (the oldest rotated out).
Each Recorder (one run, one proxy process) names its files after a run id of its own, so a second run into the same
DIR neither overwrites the first one's files nor is merged with them: `chatprobe check DIR` judges each run.

Hooks: a driver wraps each transport it opens in `recorder.wrap(transport, label)`, a RecordingTransport, which
overrides the transport's no-op RecordingHooks (transports/base.py) that the client calls (the runner); a client that
is no Transport (the Locust user's SyncSession) takes `recorder.recording(label)`, the ConnectionRecording that a
RecordingTransport also writes through, and calls it at the same moments; or it calls
`log.frame(...)` for what it forwards and `recorder.save(log, keep)` when the connection ends (the proxy: keep only
connections with a failing chat, or one held for a resend).
"""
from __future__ import annotations

import base64
import json
import os
import re
import secrets as random_ids
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring, encode_basestring_ascii
from pathlib import Path
from typing import Any

from .checker import Expectations
from .eventstream import StreamProblem
from .profiles import parses_as_json
from .recordings import DEFAULT_MAX_FILES, DUE_SLACK, RUN_ID_RE, SEND_FAILED
from .redact import MIN_SECRET_LEN, Budget, scrub, secrets_of
from .transports import ConnectFailed, FrameCallback, LeanClientRefused, RecordingHooks, Transport

# All recordings in DIR written by one process, at any moment: the files kept and the part files of the connections
# still open (each charged what it has written and buffered, and the room kept for its last lines).
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_FILE_BYTES = 16 * 1024 * 1024  # one connection's file; frames past it are not written
MIN_LINE = 64  # bytes of the shortest frame's line ({"t": …, "dir": "recv", "conn": …, "frame": ""})
# Bytes of a file kept for its last two lines: the dropped record (when frames were) and the close record (a label
# is at most ~90 characters, each line ~200 bytes); a quarter of a file under 2 KiB.
RESERVED = 512
FLUSH_BYTES = 64 * 1024  # a connection's lines are buffered this much, then appended to its part file
# A JSON string literal in a text that is JSON (where no quote stands outside a string), and the colon after it when
# it is an object's key.
_LITERAL_RE = re.compile(r'("[^"\\]*(?:\\.[^"\\]*)*")(\s*:\s*)?', re.DOTALL)
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
SCRUB_BATCH = 1024  # a JSON frame's strings scrubbed at once
# Noncharacters (U+FDD0…U+FDEF), one of which, on a line of its own, joins a batch of strings to scrub them at once:
# characters no rule reads past, nor the secrets' matchers drop (a control character, which they do drop, made every
# batch's joined text differ from what they search, and searched twice).
_SEPARATORS = "".join(chr(c) for c in range(0xFDD0, 0xFDF0))
# Added to a frame that was not JSON as received and that scrubbing made read as JSON (a credential cut out of an
# unterminated string can end it): the recording keeps it malformed, an R12 offline as it was live.
NOT_JSON_MARK = " [chatprobe --record: this frame was not JSON as received]"
# An HTTP status in a connection failure's reason, as the transports word it ("HTTP 503: …", "HTTP 401 at the …").
_HTTP_STATUS_RE = re.compile(r"\bHTTP ([1-5]\d\d)\b")


def expect_note(exp: Expectations) -> dict[str, Any] | None:
    """What a chat's send record carries beyond its frame: what a scenario step expected of the chat that the
    scenario's top-level `expect:` does not say (its `expect_error`; "invalid_input" for a `send_raw:` probe; its
    `required` roles), so that `chatprobe check` judges the chat as live (harness/offline.py reads it back through
    scenario.expectations_for, the one place Expectations are built). None for a plain chat: nothing is written."""
    if exp.expect_error is None and exp.step_required is None:
        return None
    note: dict[str, Any] = {}
    if exp.expect_error is not None:
        note["error"] = exp.expect_error
    if exp.step_required is not None:
        note["required"] = sorted(role.value for role in exp.step_required)
    return note


def connect_failure(kind: str, reason: str, *, resume: bool, retry: bool = False,
                    answer: ConnectFailed | None = None) -> dict[str, Any]:
    """The fields a close record gets for a connection that never became usable (refused at the handshake, HTTP
    401/403/503, closed during the upgrade, no welcome, AUTH_FAILED): `failed` (the connections_total result label),
    `status` (the HTTP status answered, when there was one), `reason`, and `resume` when it was a reconnect to resume
    a run (whose chat is judged lost, not failed: no chat of its own), with `retry` when the client tries that
    reconnect again (after a backoff: the chat is not lost at this failure). From the `answer` (the ConnectFailed)
    what decided that with the status: `code`, the close code the server ended the connection with before it was
    usable, and `auth_error`, the code of the AUTH_FAILED session error that refused it (`chatprobe check` reads a
    refusal of the credentials from them as live did: backoff.credentials_refusal)."""
    fields: dict[str, Any] = {"failed": kind}
    m = _HTTP_STATUS_RE.search(reason)
    if answer is not None and answer.status is not None:
        fields["status"] = answer.status
    elif m is not None:
        fields["status"] = int(m.group(1))
    if answer is not None and answer.close_code is not None:
        fields["code"] = answer.close_code
    if answer is not None and answer.auth_frame:
        fields["auth_error"] = answer.auth_frame[:64]
    fields["reason"] = reason[:1024]
    if resume:
        fields["resume"] = True
        if retry:
            fields["retry"] = True
    return fields


class ConnectionLog:
    """One connection's frames, as JSON Lines: buffered, then appended to a part file that `Recorder.save` keeps
    (renamed) or deletes. From the first frame that does not fit the file's byte limit on, frames are counted in
    `dropped` (and `dropped_bytes`), not written, and the file says so: a `dropped` record, stamped with the first
    dropped frame's time, before the close record (nothing else is written after the gap: the gap is one, at its
    place in time)."""

    def __init__(self, recorder: Recorder, label: str, part: Path, secrets: tuple[str, ...] = (),
                 user: str | None = None) -> None:
        self.recorder = recorder
        self.label = label
        # The user the client authenticated as (its token's `sub`: flow's ConnectionChecker judges R8 by it), written
        # as "user" on the connection's first record, so `chatprobe check` judges its events by the same user.
        self.user = user
        self.part = part
        # This connection's own credentials (the proxy's users'): matched in every form redact knows (escaped,
        # URL-encoded, base64) as the process's registered secrets are.
        self.secrets = secrets_of(secrets) if secrets else None
        self.size = 0
        self.sends = 0  # send records written: a `send_failed` record names its send by this ordinal ("send")
        self.dropped = 0
        self.dropped_bytes = 0
        self.dropped_at: float | None = None  # the first dropped frame's time (epoch seconds)
        self.noted = -1  # the Recorder's take_dropped() count when this connection's drops were last counted
        self.unwritten = 0  # lines lost because DIR took no more (unwritable, disk full)
        self.closed = False
        self.ended = False  # a failure record (`failed`) was the last line: the connection's end is written
        self.gone = False  # saved and deleted (not kept, or rotated out): nothing more is written
        self.saved = False  # saved (kept): a line written later takes the room kept for the last lines, or is lost
        self.unfiled = False  # refused a file (the recorder at max_files): its frames are in no file
        # Bytes the recorder granted this log of its bound (Recorder.max_bytes): what it wrote or buffered, and `tail`
        # bytes kept for its last lines (the dropped and close records), granted with its first line.
        self.held = 0
        self.tail = 0
        self._buffer: list[str] = []
        self._buffered = 0

    def frame(self, direction: str, frame: Any, at: float, expect: dict[str, Any] | None = None,
              due: float | None = None, crowded_out: int | None = None) -> int | None:
        """A frame sent ("send") or received ("recv") at `at` (the recorder's clock, time.monotonic by default);
        `expect`: what the client expected of the chat this frame sends (expect_note), written as "expect"; `due`:
        the earlier time the chat's times count from (an open-model chat due before it could be sent), as "due";
        `crowded_out` (the proxy): the send record (its ordinal) of the chat the proxy let go to make room for the one
        this frame brought (flow.MAX_OPEN_WATCHED), written as "crowded_out".
        A send record written: its ordinal among the connection's send records (from 1), else None."""
        self.ended = False
        raw = len(frame) * 4 // 3 if isinstance(frame, (bytes, bytearray)) else len(frame) if isinstance(frame, str) else 0
        if self.dropped or self.size + MIN_LINE + raw > self.recorder.frame_room:
            # No room for it: dropped before it is scrubbed (a peer sending frame after frame once the file was full
            # had every one scrubbed, up to 0.7 s of CPU for a 4 MiB frame, only to be thrown away). Measured as
            # received: a frame that scrubbing would have shortened enough to fit is dropped too. So is every frame
            # after it, even one that would fit: the recording has one gap, from here to the close.
            self._drop(frame, at)
            return None
        record: dict[str, Any] = {"t": round(self.recorder.epoch(at), 6), "dir": direction, "conn": self.label}
        if self.user is not None:
            record["user"] = self._scrub(self.user)
            self.user = None
        if expect:
            record["expect"] = expect
        if due is not None:
            record["due"] = round(self.recorder.epoch(due), 6)
        if crowded_out is not None:
            record["crowded_out"] = crowded_out
        if isinstance(frame, (bytes, bytearray)):
            # A token a server echoes in a binary frame is scrubbed too (its text as UTF-8, other bytes kept).
            data = self._scrub(bytes(frame).decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
            record["frame_b64"] = base64.b64encode(data).decode("ascii")
        else:
            text = frame if isinstance(frame, str) else json.dumps(frame)
            record["frame"] = self._scrub_frame(text)  # a token a client put in a frame never reaches a file
            if isinstance(frame, StreamProblem):  # what the SSE parser found wrong in the stream, not data it carried
                record["problem"] = True
        if not self._write(json.dumps(record, ensure_ascii=False)):
            self._drop(frame, at)
            return None
        if direction != "send":
            return None
        self.sends += 1
        return self.sends

    def _drop(self, frame: Any, at: float) -> None:
        if not self.dropped:
            self.dropped_at = round(self.recorder.epoch(at), 6)
        self.dropped += 1
        n = 0
        if isinstance(frame, str):
            n = len(frame) if frame.isascii() else len(frame.encode("utf-8", "surrogatepass"))
        elif isinstance(frame, (bytes, bytearray)):
            n = len(frame)
        self.dropped_bytes += n
        # Told as it happens, not at the close: a run's warning is taken when its chats are judged, and a connection
        # still closing then (its closing handshake not answered yet) was left out of it.
        self.recorder.note_dropped(self, n)

    def _scrub(self, text: str, budget: Budget | None = None) -> str:
        return scrub(text, self.secrets, budget)

    def _scrub_frame(self, text: str) -> str:
        """A text frame scrubbed without changing what `chatprobe check` reads in it: whether it is JSON, and its
        structure. Nothing to scrub: the frame as it came, byte for byte. A JSON frame: each of its strings (keys
        and values) scrubbed as text and written back as a JSON string, everything else as it came (scrubbing the
        raw text may cut an escape in two: `?keyword=shoes\\"` lost its backslash, and the frame its end). A frame
        that is not JSON: scrubbed as text, and marked (NOT_JSON_MARK) if that made it read as JSON. The work is
        bounded for the frame, not per part (Budget): a frame dense with a secret's pieces has its strings redacted
        piece by piece, as the whole text was."""
        json_frame = parses_as_json(text)
        budget = Budget(len(text), lazy=json_frame)
        out = self._scrub(text, budget)
        if out == text and not budget.spent:
            return text
        if json_frame:
            return self._scrub_json(text, budget.again(len(text)))
        return out + NOT_JSON_MARK if parses_as_json(out) else out

    def _scrub_json(self, text: str, budget: Budget) -> str:
        """A JSON text with each string literal scrubbed as what it decodes to, SCRUB_BATCH at a time (decoded and
        scrubbed a batch at once: a 4 MiB frame of short strings costs about what scrubbing it whole did, and
        holds one batch); a value is scrubbed after its key (`"Authorization": "Basic dXNlcjpwdw=="` is a
        credential by its key alone, as the raw text showed it)."""
        out: list[str] = []
        done = 0
        batch: list[tuple[int, int, bool]] = []  # each literal's span, and whether it is the value of the one before
        key_end = -1  # where the value of the last key starts
        for m in _LITERAL_RE.finditer(text):
            start, end = m.span(1)
            batch.append((start, end, start == key_end))
            if m.group(2) is not None:  # a key: its value goes in its batch (no batch ends with a key)
                key_end = m.end()
            elif len(batch) >= SCRUB_BATCH:
                done = self._scrub_batch(text, batch, out, done, budget)
                batch.clear()
        done = self._scrub_batch(text, batch, out, done, budget)
        out.append(text[done:])
        return "".join(out)

    def _scrub_batch(self, text: str, batch: list[tuple[int, int, bool]], out: list[str], done: int,
                     budget: Budget) -> int:
        """The batch's strings scrubbed; each one changed is written to `out` as a JSON string, the text between
        as it came. Returns where in `text` the next piece starts."""
        if not batch:
            return done
        # One parse for the batch (the text is JSON: each literal is a valid JSON string).
        values: list[str] = json.loads("[" + ",".join([text[start:end] for start, end, _ in batch]) + "]")
        texts = [f"{values[i - 1]}: {value}" if batch[i][2] and i else value for i, value in enumerate(values)]
        for i, ((start, end, in_context), value, new) in enumerate(zip(batch, values, self._scrub_each(texts, budget),
                                                                         strict=True)):
            if in_context and i:
                head = f"{values[i - 1]}: "
                new = new[len(head):] if new.startswith(head) else self._scrub(value, budget)
            if new != value:
                # (json.dumps(new, ensure_ascii=...) without its per-call overhead: a frame may change 250,000 strings)
                out += [text[done:start], (encode_basestring_ascii if _SURROGATE_RE.search(new) else encode_basestring)(new)]
                done = end
        return done

    def _scrub_each(self, texts: list[str], budget: Budget) -> list[str]:
        """Each text scrubbed: in one scrub, joined by a line holding a noncharacter none of them holds (no
        rule matches across it; a match that did would take a separator with it, and then each is scrubbed
        alone)."""
        if len(texts) > 1:
            joined = "".join(texts)
            sep = next((f"\n{c}\n" for c in _SEPARATORS if c not in joined), None)
            if sep is not None:
                parts = self._scrub(sep.join(texts), budget).split(sep)
                if len(parts) == len(texts):
                    return parts
        return [self._scrub(t, budget) for t in texts]

    def failed(self, at: float, failure: dict[str, Any], *, ends: bool = True) -> None:
        """A request that was to open the connection's stream failed (SSE: the POST refused, HTTP 503…), or the
        connection ended before it became usable (the server closed it before or after its AUTH_FAILED, before the
        client knew the welcome would not come): a close record with the failure (connect_failure) now, in its place,
        appended to the saved file when the connection was saved already. Until it is saved the log goes on (the
        next chat's request opens a stream again), and its final close record is written only if anything follows;
        not `ends` (a WebSocket send that stalled: the connection is still open), the final close record is written
        whatever follows."""
        if self.gone:
            return
        record: dict[str, Any] = {"t": round(self.recorder.epoch(at), 6), "dir": "close", "conn": self.label}
        record.update(failure)
        record["reason"] = self._scrub(str(record.get("reason", "")))
        if "auth_error" in record:
            record["auth_error"] = self._scrub(str(record["auth_error"]))
        if self._write(json.dumps(record), force=True) and ends:
            self.ended = True
        if self.closed:
            self.flush()  # the file is saved: appended to it now

    def close(self, at: float, code: int | None = None, *, by_client: bool | str | None = False,
              error: str | None = None, failure: dict[str, Any] | None = None, stream: bool = False,
              parking_full: list[int] | None = None) -> None:
        """The connection ended; `by_client`: the client closed it on purpose (a user leaving mid-run: its chats are
        abandoned, judged on what arrived, as live), written as "by": "client" (or "client-drop", given as such: it
        dropped the connection on purpose to reconnect and resume; its chats are not abandoned; or "client-stop": the
        run stopped, its chats judged as the run judged them, ChatFlow.stopped); `error`: what the
        client dropped the connection for (a frame over the size limit, text that is not UTF-8: the transport's
        protocol_error, an R12 live on the chats open then, and the frame itself never reached the recorder), written
        as "error";
        `failure`: it never became usable (connect_failure: refused at the handshake, no welcome, AUTH_FAILED), so
        the chat that was to use it failed (`error`, as live); `stream`: the connection was a chat's own event
        stream (SSE), which ends with its run, written as "stream": true. `by_client` "proxy-stop" (the proxy): the
        proxy closed it as it stopped, and its chats not judged then are counted unjudged; `parking_full` (the
        proxy): the send records (ordinals) of the chats the server cut on it that the proxy had no room to keep for
        a resume or a resend, counted unjudged too, written as "parking_full"."""
        if self.closed:
            return
        if self.ended and not self.dropped and failure is None:
            self.closed = True  # the failure record said how it ended, and nothing came after it
            return
        if self.dropped:
            # Where the gap begins (no frame was written after it) and what it holds.
            self._write(json.dumps({"t": self.dropped_at, "dir": "dropped", "conn": self.label,
                                    "frames": self.dropped, "bytes": self.dropped_bytes}), force=True)
        record: dict[str, Any] = {"t": round(self.recorder.epoch(at), 6), "dir": "close", "conn": self.label}
        if code is not None:
            record["code"] = code
        if by_client:
            record["by"] = by_client if isinstance(by_client, str) else "client"
            if by_client == "client-stop" and self.recorder.stop is not None:
                record["stop"] = self.recorder.stop
        if stream:
            record["stream"] = True
        if parking_full:
            record["parking_full"] = sorted(parking_full)
        if error:
            record["error"] = self._scrub(str(error)[:1024])
        if failure:
            record.update(failure)
            record["reason"] = self._scrub(str(record.get("reason", "")))
            if "auth_error" in record:
                record["auth_error"] = self._scrub(str(record["auth_error"]))
        self._write(json.dumps(record), force=True)
        self.closed = True

    def _write(self, line: str, force: bool = False) -> bool:
        """The line buffered (False: it does not fit the file's limit, less the room kept for the last lines, or the
        recorder's bound for all its files, those kept and those being written). A forced line (the last ones) takes
        the room kept for it, else what the bound has left."""
        n = len(line.encode("utf-8", "surrogatepass")) + 1
        if force and n <= self.tail:
            self.tail -= n
        elif (self.size + n > self.recorder.frame_room and not force) or not self._grant(n):
            return False
        self.size += n
        self._buffer.append(line)
        self._buffered += n
        if self._buffered >= FLUSH_BYTES:
            self.flush()
        return True

    def _grant(self, n: int) -> bool:
        """`n` more bytes of the recorder's bound for this file (with the room for its last lines, the first time)."""
        if self.saved or self.gone:
            return False
        first = not self.held  # its first line: the file it is to be written to takes one of the recorder's files
        tail = self.recorder.tail if first else 0
        if first and not self.recorder.take_file():
            if not self.unfiled:
                self.unfiled = True
                self.recorder.note_unfiled()
            return False
        if not self.recorder.grant(n + tail):
            if first:
                self.recorder.release_file()
            return False
        self.held += n + tail
        self.tail += tail
        return True

    def flush(self) -> None:
        if not self._buffer:
            return
        data = ("\n".join(self._buffer) + "\n").encode("utf-8", "surrogatepass")
        dropped = len(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        try:
            # O_NOFOLLOW: a symlink planted at the part file's (predictable) name must not carry the frames out of DIR.
            fd = os.open(self.part, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "ab") as f:
                f.write(data)
        except OSError:
            # DIR became unwritable or full mid-run: the recording loses these frames, the run goes on.
            self.unwritten += dropped


def new_run_id() -> str:
    """A run id for file names: the UTC start time to the microsecond (so names sort by run, even two runs started
    in one second) and 6 random hex digits (two recorders started at once). harness/recordings.py's RECORDED_RUN_RE
    reads it back."""
    now = time.time()
    micros = int(now * 1_000_000) % 1_000_000
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}{micros:06d}Z-{random_ids.token_hex(3)}"


class Recorder:
    """Where recordings go: DIR, at most `max_files` files and `max_bytes` bytes written by this process (the
    oldest deleted first), each file at most `max_file_bytes`, named `RUN-NNNNNN-LABEL.jsonl` (RUN: `run_id`, new
    for each Recorder). `keep_all`: keep every connection (run); else only those `save` is told to keep (the proxy:
    connections with a failing chat).

    `max_bytes` bounds what is on disk at any moment: the files kept, and the part files of the connections still
    open, each holding what it wrote (`grant`). A part that needs room takes it from the oldest files kept (deleted),
    but never below half the bound, so that connections in progress, most of which the proxy does not keep, cannot
    erase every recording kept; past that, the part stops growing: its connection's later frames are dropped (the
    file says so, and the run warns), never blocking or failing a chat. `max_files` bounds the files on disk alike:
    a connection takes one with its first line (`take_file`), deleting the oldest file kept while more than half
    `max_files` are kept; past that it starts no file, and its frames are dropped and counted (no file says so: it
    has none), never failing a chat."""

    def __init__(self, directory: str | Path, *, keep_all: bool = True, max_files: int = DEFAULT_MAX_FILES,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 clock: Callable[[], float] = time.monotonic, run_id: str | None = None) -> None:
        if run_id is not None and not RUN_ID_RE.fullmatch(run_id):
            # A run id names files in DIR (a Locust worker's comes from its master): never a path, and always one
            # `check` reads back (recordings.RECORDED_RUN_RE).
            raise ValueError(f"not a recording run id: {run_id[:80]!r}")
        self.run_id = run_id or new_run_id()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # A directory that exists but takes no file (read-only, /proc/self) fails here, before the run (OSError).
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=self.directory)
        os.close(fd)
        os.unlink(probe)
        self.keep_all = keep_all
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.max_file_bytes = max_file_bytes
        self.tail = min(RESERVED, max_file_bytes // 4)  # a file's room kept for its last lines
        self.frame_room = max_file_bytes - self.tail
        self.clock = clock
        # Recorded times are epoch seconds; the transports stamp frames with the monotonic clock.
        self._offset = time.time() - clock()
        self._lock = threading.Lock()
        self._n = 0
        self._saved: deque[tuple[Path, int]] = deque()
        self._saved_bytes = 0
        self._parts_bytes = 0  # granted to the connections' logs not saved yet (ConnectionLog.held)
        self._parts_files = 0  # files of those logs (one each from its first line: take_file)
        self._dropped = [0, 0, 0]  # connections, frames, bytes dropped since take_dropped() last said
        self._unfiled = 0  # connections refused a file (max_files) since take_unfiled() last said
        self._taken = 0  # how many times take_dropped() said (a log's `noted`: in which of them it was counted)
        # Why the run stopped early (a results.STOPPED_BY key: "max_duration", "interrupted"), once it did (`stopped`): the
        # "client-stop" close records written from then on say it ("stop"), and `chatprobe check` reports it.
        self.stop: str | None = None

    def stopped(self, why: str) -> None:
        """The run stops early (the runner, before it cuts its chats short): `why`, a results.STOPPED_BY key."""
        self.stop = why

    def note_dropped(self, log: ConnectionLog, nbytes: int) -> None:
        """A frame of `log` not recorded: counted for the next take_dropped (its connection once in each)."""
        with self._lock:
            conns = self._dropped[0]
            if log.noted != self._taken:
                log.noted, conns = self._taken, conns + 1
            self._dropped = [conns, self._dropped[1] + 1, self._dropped[2] + nbytes]

    def grant(self, n: int) -> bool:
        """Whether a connection's part file may grow by `n` bytes within `max_bytes` (then they are its own until it
        is saved): room made by deleting the oldest files kept while they hold more than half the bound."""
        with self._lock:
            if self._saved_bytes + self._parts_bytes + n > self.max_bytes:
                self._rotate(n, self.max_bytes // 2)
                if self._saved_bytes + self._parts_bytes + n > self.max_bytes:
                    return False
            self._parts_bytes += n
            return True

    def _rotate(self, n: int, floor: int, files: int = 0) -> None:
        """The oldest files kept deleted until `n` more bytes (and `files` more files) fit the bounds, or those left
        hold `floor` bytes (half `max_files` files, for a new file); at most `max_files` files are on disk, kept or
        being written. Under the lock."""
        while self._saved and (
                len(self._saved) + self._parts_files > self.max_files
                or (files and len(self._saved) > self.max_files // 2
                    and len(self._saved) + self._parts_files + files > self.max_files)
                or (self._saved_bytes > floor and self._saved_bytes + self._parts_bytes + n > self.max_bytes)):
            old, size = self._saved.popleft()
            self._saved_bytes -= size
            old.unlink(missing_ok=True)

    def take_file(self) -> bool:
        """Whether a connection may start a file within `max_files` (the files kept and those being written): room
        made by deleting the oldest files kept while they are more than half the bound. Past it the connection's
        frames are dropped and counted, as past `max_bytes`: its chats go on, unrecorded."""
        with self._lock:
            if len(self._saved) + self._parts_files + 1 > self.max_files:
                self._rotate(0, self.max_bytes, files=1)
                if len(self._saved) + self._parts_files + 1 > self.max_files:
                    return False
            self._parts_files += 1
            return True

    def release_file(self) -> None:
        with self._lock:
            self._parts_files -= 1

    def _release(self, n: int, *, file: bool = False) -> None:
        with self._lock:
            self._parts_bytes -= n
            if file:
                self._parts_files -= 1

    def dropped_why(self) -> str:
        """Why frames were not recorded, as the warnings say it."""
        return (f"their file being full ({self.max_file_bytes:,} bytes) or the recording at its bound "
                f"({self.max_bytes:,} bytes or {self.max_files:,} files on disk, the files of connections still open "
                "included)")

    def note_unfiled(self) -> None:
        with self._lock:
            self._unfiled += 1

    def take_unfiled(self) -> int:
        """Connections refused a file since the last call (the recording at `max_files`): counted among the dropped
        ones, but no file of theirs says where their gap begins, and nothing of their chats is recorded."""
        with self._lock:
            out, self._unfiled = self._unfiled, 0
        return out

    def gaps_said(self, unfiled: int) -> str:
        """Where the warnings say the gaps are, `unfiled` of the connections having no file (take_unfiled)."""
        if not unfiled:
            return "each file says where its gap begins"
        return (f"each file says where its gap begins, but {unfiled} of those connection(s) got no file (the recording "
                f"at its {self.max_files:,} files, those of connections still open included): nothing of their chats "
                "is recorded")

    def take_dropped(self) -> tuple[int, int, int]:
        """(connections, frames, bytes) whose frames did not fit their file since the last call, for a warning."""
        with self._lock:
            out = (self._dropped[0], self._dropped[1], self._dropped[2])
            self._dropped = [0, 0, 0]
            self._taken += 1
        return out

    def epoch(self, at: float) -> float:
        return at + self._offset

    def connection(self, label: str, secrets: Iterable[str] = (), user: str | None = None) -> ConnectionLog:
        """A connection's log; `secrets`: credentials of this connection alone (not registered process-wide, as a
        proxy's users' tokens are many and not the process's own), scrubbed from its frames with the global ones;
        `user`: the user its client authenticated as (ConnectionLog.user)."""
        own = tuple(sorted({s for s in secrets if len(s.strip()) >= MIN_SECRET_LEN}))
        with self._lock:
            self._n += 1
            n = self._n
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", scrub(label))[:80] or "conn"
        return ConnectionLog(self, f"{safe}.{n}", self.directory / f".{self.run_id}-{n:06d}-{safe}.jsonl.part", own,
                             user)

    def wrap(self, transport: Transport, label: str, *, resume: bool = False,
             retry: Callable[[ConnectFailed | None], bool] | None = None,
             user: str | None = None) -> RecordingTransport:
        """`transport` recorded as connection `label` (the runner's hook: every connection a client opens);
        `resume`: a reconnect to resume a run (its failure fails no chat of its own); `retry`: asked once it failed,
        whether the client tries that reconnect again; `user`: the user the client authenticated as (its token's
        `sub`), when the token names one."""
        return RecordingTransport(transport, self.connection(label, user=user), resume=resume, retry=retry)

    def recording(self, label: str, *, resume: bool = False, retry: Callable[[ConnectFailed | None], bool] | None = None,
                  user: str | None = None) -> ConnectionRecording:
        """Connection `label`'s recording for a client that is no Transport (the Locust user's SyncSession), which
        calls it at the moments the asyncio client calls a RecordingTransport's hooks; `resume`, `retry`, `user` as
        for wrap()."""
        return ConnectionRecording(self.connection(label, user=user), resume=resume, retry=retry)

    def save(self, log: ConnectionLog, keep: bool | None = None) -> Path | None:
        """The connection ended: its file kept (when `keep`, or always with keep_all) or deleted; returns the path."""
        if not log.closed:
            log.close(self.clock())
        log.flush()
        held, log.held = log.held, 0
        if not (self.keep_all if keep is None else keep) or not log.part.exists() or log.part.is_symlink():
            log.part.unlink(missing_ok=True)
            log.gone, log.tail = True, 0
            self._release(held, file=held > 0)
            return None
        final = log.part.with_name(log.part.name[1:].removesuffix(".part"))
        try:
            os.replace(log.part, final)
        except OSError:
            log.part.unlink(missing_ok=True)
            log.gone, log.tail = True, 0
            self._release(held, file=held > 0)
            return None
        log.part = final  # a failure found after the connection ended is appended to it (ConnectionLog.failed)
        log.saved = True
        with self._lock:
            # Kept with what it was granted: its size, and the room left for a failure record appended to it later.
            self._parts_bytes -= held
            self._parts_files -= 1
            self._saved.append((final, held))
            self._saved_bytes += held
            self._rotate(0, 0)
        if not final.exists():
            log.gone = True  # rotated out at once (a file larger than the run's whole budget)
            return None
        return final


class ConnectionRecording:
    """One connection's recording as a client keeps it: its frames both ways and what the frames do not say (a chat's
    expectations and due time, a connection or a send that failed, a close or a drop on purpose), written to its
    ConnectionLog and saved when the connection ends. The one implementation of those records for every client:
    `RecordingTransport` (the asyncio clients, through the transports' RecordingHooks) and the Locust user's
    `gevent_client.SyncSession` (`Recorder.recording`) call it at the same moments. Thread-safe (the sync client's
    reader and its chats write to one connection from different threads or greenlets)."""

    def __init__(self, log: ConnectionLog, clock: Callable[[], float] = time.monotonic, *, resume: bool = False,
                 retry: Callable[[ConnectFailed | None], bool] | None = None) -> None:
        self.log = log
        self._clock = clock
        self._lock = threading.Lock()
        self._saved = False
        self._by_client = False
        self._resume = resume  # a reconnect to resume a run: its failure fails no chat of its own
        self._retry = retry  # asked at its failure: whether the client tries that reconnect again
        self._dropped = False  # the client dropped it on purpose (disconnect_after), to reconnect and resume
        self._stopped = False  # the run stopped with a chat of it open: the client's close is that stop
        self._failure: dict[str, Any] | None = None

    def sent(self, obj: Any, expectations: Expectations | None = None, since: float | None = None) -> int | None:
        """A frame about to be sent, now; for a chat's message (or probe) with what its step expected (expect_note)
        and `since`, when the chat's times count from, written as "due" when that is before now (an open-model chat
        due earlier: its first-event time counts from then). Its send record's ordinal (None: not written), which
        names it if it fails (`send_failed`)."""
        now = self._clock()
        due = since if since is not None and now - since > DUE_SLACK else None
        with self._lock:
            return self.log.frame("send", obj, now, None if expectations is None else expect_note(expectations), due)

    def received(self, message: str | bytes, at: float) -> None:
        with self._lock:
            self.log.frame("recv", message, at)

    def connect_failed(self, kind: str, reason: str, answer: ConnectFailed | None = None) -> None:
        """The connection opened but never became usable (no welcome, AUTH_FAILED, closed before the welcome): its
        close record says so (the client drops it next), or, when the server closed it first, a close record of the
        failure follows the one written then. `answer`: the failure, with what the server answered (its status,
        close code, AUTH_FAILED code, Retry-After), which the retry decision reads."""
        retry = self._resume and self._retry is not None and self._retry(answer)
        with self._lock:
            self._failure = connect_failure(kind, reason, resume=self._resume, retry=retry, answer=answer)
            if self._saved:
                self.log.failed(self._clock(), self._failure)

    def open_failed(self, kind: str, reason: str, answer: ConnectFailed | None = None) -> None:
        """Refused at the handshake (HTTP 401/403/503, closed during the upgrade, nothing listening, a timeout): the
        file keeps the attempt, so that `chatprobe check` counts the chat it failed as live did."""
        self.connect_failed(kind, reason, answer)
        self.end(keep=True)

    def discard(self) -> None:
        """Opening was cancelled: nothing passed, no file."""
        self.end(keep=False)

    def open_stopped(self) -> None:
        """Opening was cut short by the run's stop (its max_duration, Ctrl-C: the client's task cancelled): a file of
        one close record, "by": "client-stop", so that `chatprobe check` knows the run stopped there, and that the
        user's chat waiting for this connection (to resume its run, or to send its message again) was stopped, not
        lost."""
        self.stopped_by_client()
        self.end(keep=True)

    def open_left(self) -> None:
        """The client left (Locust stopping the user) while reconnecting to resume a run, its connection not open or
        its opening cut short: a file of one close record, "by": "client", so that `chatprobe check` judges the
        user's chats waiting for that resume abandoned, as live (ChatFlow.left), not lost for want of a resume."""
        self.closed_by_client()
        self.end(keep=True)

    def send_failed(self, kind: str, reason: str, send: int | None = None, answer: ConnectFailed | None = None) -> None:
        """SSE: the request is the stream's connection, and no stream came of it (refused, an HTTP status, or no
        answer within connect_timeout, which the client times): a close record of the failure, in its place.
        WebSocket (`send_failed`): the chat's frame did not leave within connect_timeout (the server stopped reading),
        or could not be sent: a close record saying so, in its place, naming the send record of that frame (`send`,
        its ordinal: another chat's send record may have come in between), after which the connection goes on (its
        other chats, its end)."""
        resume = self._resume and kind != SEND_FAILED
        failure = connect_failure(kind, reason, resume=resume,
                                  retry=resume and self._retry is not None and self._retry(answer), answer=answer)
        if kind == SEND_FAILED and send is not None:
            failure["send"] = send
        with self._lock:
            self.log.failed(self._clock(), failure, ends=kind != SEND_FAILED)

    def closed_by_client(self) -> None:
        """The client closes the connection on purpose (a chat abandoned, the session's end): "by": "client"."""
        self._by_client = True

    def dropped_by_client(self) -> None:
        """The client is about to drop the connection on purpose, as a lost network would (a step's disconnect_after),
        to reconnect and resume: its close record says "by": "client-drop" (not the server's doing: no R13, as live;
        its chats are resumed, not abandoned)."""
        self._dropped = True

    def stopped_by_client(self) -> None:
        """The run stopped (its max_duration, Ctrl-C) with a chat of the connection open, which the client judged as
        it stood (ChatFlow.stopped): its close record says "by": "client-stop", and `check` judges the chats it cuts
        so (not abandoned by a user, as "by": "client" would say)."""
        self._stopped = True

    def end(self, close_code: int | None = None, protocol_error: str | None = None, *, stream: bool = False,
            keep: bool | None = None, at: float | None = None) -> float | None:
        """The connection ended (once; later calls do nothing): its close record (the close code, who closed it, the
        protocol error the client dropped it for, the failure that made it unusable), and the file saved.

        Saved under the lock, as the close record is written: a failure another thread records meanwhile (the sync
        client's chat learning that the connection its reader just saw end never became usable: connect_failed) waits
        for the file to be in its final place, then is appended to it. Appended while the file was being renamed, it
        went to the part file's old name, which it created again (a hidden `.part` that `check` never reads), and the
        chat that connection failed was missing from the recording.

        `at`: when the client saw it end (its clock), else now. Returns the close record's time (that clock; None when
        it was written before): the client judges a settle window against it, as `check` does (flow.Link.closed_at)."""
        with self._lock:
            if self._saved:
                return None
            self._saved = True
            if at is None:
                at = self._clock()
            self.log.close(at, close_code,
                           by_client="client-stop" if self._stopped else "client" if self._by_client
                           else "client-drop" if self._dropped else None,
                           error=protocol_error, failure=self._failure, stream=stream)
            self.log.recorder.save(self.log, keep)
            return at


class RecordingTransport(RecordingHooks):
    """A Transport that writes what passes both ways to a ConnectionLog (through a ConnectionRecording), and saves it
    when the connection ends; it overrides the transports' no-op RecordingHooks, through which the client tells the
    recording what the frames do not say (a chat's expectations, a connection or a send that failed, a drop on
    purpose)."""

    def __init__(self, inner: Transport, log: ConnectionLog, clock: Callable[[], float] = time.monotonic, *,
                 resume: bool = False, retry: Callable[[ConnectFailed | None], bool] | None = None) -> None:
        self._inner = inner
        self._rec = ConnectionRecording(log, clock, resume=resume, retry=retry)
        # The send record of the chat's frame whose send just failed (its ordinal), for the `send_failed` record the
        # client writes next (Session._safe_send): other chats' frames may have been recorded since it was.
        self._failed_send: int | None = None
        self.ended_at: float | None = None  # the close record's time, once written (Session.closed_at)

    def __getattr__(self, name: str) -> Any:  # connects_on_send, close_code, ended_note, protocol_error…
        return getattr(self._inner, name)

    async def open(self) -> None:
        try:
            await self._inner.open()
        except LeanClientRefused:
            self._rec.discard()  # the client's limit, not the server's answer: opened again by the other client
            raise
        except ConnectFailed as exc:
            self._rec.open_failed(exc.kind, str(exc), exc)
            raise
        except BaseException:
            self._rec.open_stopped()
            raise

    def connect_failed(self, kind: str, reason: str, answer: ConnectFailed | None = None) -> None:
        self._rec.connect_failed(kind, reason, answer)

    async def send(self, obj: Any) -> None:
        """The frame recorded, then sent."""
        self._rec.sent(obj)
        await self._send(obj)

    async def send_chat(self, obj: Any, expectations: Expectations, since: float) -> None:
        """A chat's message (or probe) recorded with what its step expected and when its times count from; then
        sent."""
        send = self._rec.sent(obj, expectations, since)
        try:
            await self._send(obj)
        except (ConnectionError, ConnectFailed):  # found closed (sent again), or SSE's request refused (recorded)
            raise
        except BaseException:  # a timeout (cancelled) or an error: the client records the failure next
            self._failed_send = send
            raise

    async def _send(self, obj: Any) -> None:
        try:
            await self._inner.send(obj)
        except ConnectFailed as exc:
            self._rec.send_failed(exc.kind, str(exc), answer=exc)
            raise

    def send_failed(self, kind: str, reason: str) -> None:
        send, self._failed_send = self._failed_send, None
        self._rec.send_failed(kind, reason, send)

    async def run(self, on_frame: FrameCallback) -> None:
        received = self._rec.received

        def tap(message: str | bytes, at: float) -> None:
            received(message, at)
            on_frame(message, at)

        try:
            await self._inner.run(tap)
        finally:
            self.ended_at = self._rec.end(getattr(self._inner, "close_code", None),
                                          getattr(self._inner, "protocol_error", None),
                                          stream=getattr(self._inner, "connects_on_send", False) is True)

    async def close(self) -> None:
        self._rec.closed_by_client()  # the client closed it (a chat abandoned, the session's end); not abort(): a
        await self._inner.close()  # drop on purpose stands for a lost network, and the run resumes elsewhere

    def abort(self) -> None:
        self._inner.abort()

    def dropped_by_client(self) -> None:
        self._rec.dropped_by_client()

    def stopped_by_client(self) -> None:
        self._rec.stopped_by_client()


def open_recorder(path: str | None, flag: str, run_id: str | None = None) -> Recorder | None:
    """The Recorder of a `--record DIR` flag (`chatprobe run`'s, the Locust user's `--chatprobe-record`), None when not
    given; a DIR that cannot be used (empty, not a directory, a name too long, not writable) is a ConfigError naming
    `flag`, field "record", in one line."""
    from .redact import clean
    from .yamlfile import ConfigError

    if path is not None and not path.strip():
        raise ConfigError(f"{flag}: an empty path", field="record")
    if not path:
        return None
    shown = clean(path, 200)
    try:
        if Path(path).exists() and not Path(path).is_dir():
            raise ConfigError(f"{flag} {shown}: not a directory", field="record")
        return Recorder(path, run_id=run_id)
    except OSError as exc:
        raise ConfigError(f"{flag} {shown}: {exc.strerror or exc}", field="record") from None
    except ValueError as exc:  # a run id that is no run id (never a path in DIR)
        raise ConfigError(f"{flag} {shown}: {exc}", field="record") from None
