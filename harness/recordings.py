"""Recorded traffic (JSON Lines, an SSE body, a browser's HAR) read as a stream of frames with their recorded times.

Pure and bounded: files are read piece by piece, every line, frame and string has a size limit, and what cannot
be read becomes a `problem` record (judged as an R12 where it falls), never an exception mid-file.

The JSON Lines form (what `--record` writes; one UTF-8 JSON object per line, `\\n` or `\\r\\n` ended)::

    {"t": 1764639000.125, "dir": "send", "conn": "u1", "frame": {"type": "user_message", "payload": {...}}}
    {"t": 1764639000.131, "dir": "recv", "conn": "u1", "frame": "{\\"type\\": \\"agent_started\\", ...}"}
    {"t": 1764639000.900, "dir": "dropped", "conn": "u1", "frames": 3, "bytes": 3145728}
    {"t": 1764639001.002, "dir": "close", "conn": "u1", "code": 1000}

  t       the time the frame was sent or received, in epoch seconds (a float; any clock whose differences are
          seconds will do: only differences are judged); epoch milliseconds (a number past 1e11) and an ISO 8601
          string (without an offset: UTC), as other tools' logs write them, are read too; optional: a record
          without one takes the last time seen; one that is none of these is an R12, and a file where no record's
          t is read (two or more having one) is refused (RecordingError), as is one where no record's dir is
  dir     "recv" (server to client), "send" (client to server), "close" (the connection ended: its chats still
          waiting are judged then) or "dropped" (the recorder dropped the connection's frames from this time on:
          its file was full; `frames` and `bytes` say how many); "receive" and "sent" are accepted too; default "recv"
  conn    the connection (or SSE stream) the frame travelled on, any string; default "-"
  frame   the frame: its text as a JSON string (as it was on the wire), or the JSON value itself
  frame_b64  instead of frame, a binary frame, base64
  code, reason  on a close record, optional
  by      on a close record, optional: "client" when the client closed the connection on purpose (a user who left
          mid-run: the chats still open are abandoned, judged only on what arrived, as `chatprobe run` judges them);
          "client-drop" when it dropped it on purpose to reconnect and resume (a step's disconnect_after): the chats
          are resumed as after any lost connection, and its end is not held against the server (R13); "client-stop"
          when the run stopped (its max_duration, Ctrl-C) with chats of it open: those are judged as the run judged
          them (ChatFlow.stopped: incomplete, "stopped before the chat ended", a pending resume `resumed` when events
          came back, else in no count), not held against the server (R13); "proxy-stop" (`chatprobe proxy`) when the
          proxy closed it as it stopped: its chats still open, and every chat kept then for a resume or a resend, are
          not judged (counted unjudged, proxy_stopped), as the proxy counted them
  parking_full  on a close record, optional (`chatprobe proxy`): the send records (their ordinals, from 1, among
          the connection's send records) of the chats the server cut on it that the proxy had no room to keep for a
          resume or a resend: not judged (counted unjudged, parking_full), as the proxy counted them
  crowded_out  on a send record, optional (`chatprobe proxy`): the send record (its ordinal, from 1) of the chat
          the proxy let go to make room for the one this record brought, its client having more than 64 open on
          the connection: judged as it stood there, an `error` (rejected), the client's doing, as the proxy judged it
  error   on a close record, optional: why the client dropped the connection (a frame over the size limit, text
          that is not UTF-8; that frame is not recorded): an R12 on the chats open then, as live
  failed  on a close record, optional: the connection never became usable, and why, as a connections_total result
          (refused, auth_failed, timeout, tls_error, protocol_error), with `status` (the HTTP status answered, when
          there was one), `code` (the close code the server ended it with before it was usable, when it did),
          `auth_error` (the code of the AUTH_FAILED session error that refused it, when one did) and `reason`: the chat
          that was to use it is an `error` chat, as live; with "resume": true it
          was a reconnect to resume a run, and fails no chat of its own: the user's oldest chat kept for a resume
          is lost there, as live ("reconnecting failed"), unless "retry": true says the client tried again after
          it (a backoff: the chat stays kept, its failed attempt counted); a last attempt refused for the credentials
          (`status` 401/403, `code` 4401/4403, or `auth_error`: no attempt follows one) ends those chats `error`,
          auth_failed, as live; "send_failed": a chat's WebSocket frame did
          not leave within connect_timeout (the server stopped reading), that chat (the last one a send record opened
          on the connection and nothing answered yet) is an `error` chat of that kind, as live, and the connection
          goes on
  due     on a send record, optional: when the chat was due, in epoch seconds, when that is before `t` (an
          open-model chat the load generator got to late): its first-event time and deadline count from then, as live
  expect  on a send record, optional: what the client expected of the chat this frame sends beyond the scenario's
          `expect:` (a scenario step's): {"error": "recoverable"|"fatal"|"invalid_input", "required": [roles]};
          "invalid_input" marks a `send_raw:` probe, a frame the server must answer with an error_message
  stream  on a close record, optional: true when the connection was a chat's own event stream (SSE), which ends
          with its run (the end of such a stream after an expected error is no R13)
  frames, bytes  on a dropped record, optional

A record is an object with `frame` (or `frame_b64`) and at least one of t, dir, conn (or a close record); other
keys are ignored. Any other line that is JSON is a bare frame (received, no time); a line that is not JSON is a
frame as received too (the profile's decode calls it malformed: R12). Blank lines are skipped.
"""
from __future__ import annotations

import base64
import binascii
import functools
import io
import json
import math
import os
import re
import stat
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from . import redact
from .events import Role
from .eventstream import EventStreamParser, EventTooLarge, StreamProblem
from .results import STOPPED_BY
from .sinks import AGUI_PROTO, CONNECTION_RESULTS, refused_response, refused_upgrade
from .yamlfile import ConfigError

# A chat whose times count from this much before its message was recorded as sent (ChatOptions.due_at: an open-model
# chat due before the load generator got to it) has its send record say so ("due"); within it, the record's own time
# stands for the chat's start, so a chat's deadline read from a recording may fall up to this much after the live one.
DUE_SLACK = 0.001
# The files one `--record` run keeps in its directory (harness/recorder.py), which `check` merges as one run.
DEFAULT_MAX_FILES = 1000
# One frame (the harness's WebSocket frame limit); a JSON Lines line may be about twice that (a frame's escaping).
DEFAULT_MAX_FRAME = 4 * 1024 * 1024
# One string inside a HAR: a WebSocket message, or a whole SSE response body.
DEFAULT_MAX_TEXT = 64 * 1024 * 1024
# HAR nesting deeper than this is refused (real HAR files nest about 6 deep; a bracket bomb must cost nothing).
MAX_HAR_DEPTH = 64
MAX_LEADING_SPACE = 1 << 20  # blank bytes read before a recording's first record, to tell its format
# The largest recording file one check reads: refused from its size before a byte is read (a sparse file of a
# terabyte, `truncate -s 1T`, read as zeros for an hour), and no more of it read should it grow while read. `check`
# reads about 25 MB/s of recorded frames: some three minutes for this much. `--record` writes at most 256 MiB a run.
MAX_RECORDING_BYTES = 4 << 30
MAX_HAR_TOKEN = 4096  # bytes of one number or literal (true, false, null) in a HAR
# Bytes of one object key in a HAR (field and header names: a few dozen). ijson's prefix of a value joins every key
# above it, made anew for each event: 16 nested keys of 15 MB each had taken 2.6 GB.
MAX_HAR_KEY = 4096
# Entries of a chat's traffic (WebSocket, event stream) in a HAR file sorted by their start when the file has them out
# of order (three numbers each are held; other entries cost nothing).
MAX_SORTED_ENTRIES = 100_000
CHUNK = 1 << 16
# The largest read the HAR parser is given at once (_BoundedJSON.read doubles its reads up to it while a string runs
# on): 64 MiB (DEFAULT_MAX_TEXT) in reads of 8 MiB.
MAX_READ = 8 << 20
# A recorded time (seconds) further from 0 than this is no time (year 5138): differences of such times overflow
# to infinity (1e308 - -1e308) and no report can place them.
MAX_TIME = 1e11
FORMATS = ("jsonl", "sse", "har")
DIRECTIONS = {"recv": "recv", "receive": "recv", "send": "send", "sent": "send", "close": "close",
              "dropped": "dropped"}
# A record has `frame` (or `frame_b64`) and one of these; other keys are ignored (room for later fields).
ENVELOPE_MARKS = frozenset({"t", "dir", "conn"})
DEFAULT_CONN = "-"
EVENT_STREAM = "text/event-stream"
# A send record's `expect.error`, and a close record's `failed` (what a connection that never opened failed of).
EXPECTED_ERRORS = ("recoverable", "fatal", "invalid_input")
CONNECT_FAILURES = tuple(r for r in CONNECTION_RESULTS if r != "ok")
# A close record's `failed` for a chat's WebSocket frame that did not leave within connect_timeout (the server stopped
# reading): not a connection result (the connection stays open: the record ends none), the chat the last send record
# opened is an `error` of this kind, as live (flow.ChatFlow.sent).
SEND_FAILED = "send_failed"
FAILED_KINDS = (*CONNECT_FAILURES, SEND_FAILED)
_ROLES = {r.value: r for r in Role}
MAX_DUE_BEFORE = 86400.0  # a send record's `due`: at most a day before it was sent


def frame_bytes(frame: str | bytes) -> int:
    """A frame's size in bytes as it went over the wire (UTF-8): the limits are in bytes, and a str of characters
    outside Latin-1 takes 2-4 bytes of memory per character (a len() limit let 4 MiB characters hold 16 MiB)."""
    if isinstance(frame, (bytes, bytearray)) or frame.isascii():  # isascii() is O(1) on a str
        return len(frame)
    return len(frame.encode("utf-8", "surrogatepass"))


def _cut(text: str, limit: int) -> str:
    """The text's first `limit` bytes (UTF-8), whole characters only."""
    if frame_bytes(text) <= limit:
        return text
    return text.encode("utf-8", "surrogatepass")[:limit].decode("utf-8", "ignore")


# The files `--record DIR` writes (harness/recorder.py): RUN-NNNNNN-LABEL.jsonl, RUN the run id (UTC start time to
# the microsecond, or to the second in the first recordings; 6 random hex digits). A directory holds one group of them
# per run; other files there are a recording of their own.
# A recording's run id (recorder.new_run_id makes them), and a file of a run: RUN-NNNNNN-LABEL.jsonl.
RUN_ID_PATTERN = r"\d{8}T\d{6}(?:\d{6})?Z-[0-9a-f]{6}"
RUN_ID_RE = re.compile(RUN_ID_PATTERN)
RECORDED_RUN_RE = re.compile(rf"^({RUN_ID_PATTERN})-\d{{6}}-.*\.jsonl$")


def recorded_runs(directory: Path) -> list[tuple[str | None, list[Path]]]:
    """The recordings in a directory: one group per run `--record` wrote there (its run id and files, oldest run
    first), then every other file as one group (run id None). Hidden files (a recorder's part files) are skipped, and
    so are symbolic links (as `find` does): a link may lead anywhere (a private key, a device that never ends), and
    a directory of recordings holds files; a file named on the command line is read as named."""
    runs: dict[str | None, list[Path]] = {}
    for p in sorted(directory.iterdir()):
        if p.name.startswith(".") or p.is_symlink() or not p.is_file():
            continue
        m = RECORDED_RUN_RE.match(p.name)
        runs.setdefault(m.group(1) if m else None, []).append(p)
    return sorted(runs.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))


# A connection's part file (harness/recorder.py): hidden while its connection is open, renamed when it is kept. One left
# in a directory is the recording of a connection that was open when its recorder stopped without closing it (killed,
# or still running): never read (it may be growing), but said (offline).
PART_FILE_RE = re.compile(rf"^\.({RUN_ID_PATTERN})-\d{{6}}-.*\.jsonl\.part$")


def part_files(directory: Path) -> dict[str, list[Path]]:
    """The part files left in a directory, by run id (each run's, in name order)."""
    parts: dict[str, list[Path]] = {}
    for p in sorted(directory.iterdir()):
        if (m := PART_FILE_RE.match(p.name)) is not None and not p.is_symlink() and p.is_file():
            parts.setdefault(m.group(1), []).append(p)
    return parts


def parts_note(parts: list[Path]) -> str:
    """What the part files left by one run's recorder are, and how to judge them."""
    return (f"{len(parts)} part file(s) of connections open when their recorder stopped without closing them "
            f"({parts[0]}{', …' if len(parts) > 1 else ''}: the recording process was killed, or still runs) are "
            "not read: their chats are in no count here; each holds its connection's frames up to its last write: name "
            "one to check it alone, or rename each without its leading '.' and its '.part' to judge it with its run")


class RecordingError(ConfigError):
    """A file that cannot be read as a recording at all (missing, empty, not the format asked): exit 2."""


# A close record's "by" (who closed the connection on purpose) as a Recorded close's `detail`: the client left ("client":
# its open chats abandoned), dropped it to resume ("drop") or the run stopped ("stop": its open chats judged as the run
# judged them, ChatFlow.stopped). Any other value: the server's doing ("").
CLOSED_BY = {"client": "client", "client-drop": "drop", "client-stop": "stop", "proxy-stop": "proxy-stop"}
# The send records one close record's `parking_full` may name (a proxied connection has at most 64 chats open, each
# brought there by one send record).
MAX_PARKING_FULL = 1024


MAX_USER = 1024  # a recorded `user` (the client's token's `sub`): ids over it are an R12 live (docs/protocol.md)


@dataclass(frozen=True, slots=True)
class Recorded:
    """One thing a recording holds, in file order.

    direction: "recv" / "send" (a frame), "close" (the connection ended), "dropped" (the recorder dropped the
    connection's frames from here on: `detail` says how many), "problem" (something that could not be read: `detail`
    says what, as an R12 detail). `where` locates it in the file for a person ("chat.jsonl:17").
    """

    direction: str
    conn: str
    t: float | None = None
    frame: str | bytes | None = None
    detail: str = ""
    where: str = ""
    error: str = ""  # on a close record: what the client dropped the connection for (an R12 on its open chats)
    # On a close record: the connection never became usable (a CONNECT_FAILURES kind, and why); `resume`: it was a
    # reconnect to resume a run (no chat of its own failed).
    failed: str = ""
    reason: str = ""
    resume: bool = False
    retry: bool = False  # (with `resume`) the client tried that reconnect again: the chat is not lost at this failure
    # On a failure's close record: the HTTP status answered, and the code of the AUTH_FAILED session error that
    # refused the connection (with `code`, what says the credentials were refused: backoff.credentials_refusal).
    status: int | None = None
    auth_error: str = ""
    # On a close record: the connection was a chat's own event stream (SSE), ending with its run. On a recv record: it
    # came in an SSE response body (a saved body, a HAR entry's), one response to one request whether or not the
    # request was recorded: the runs it carries after its first are that stream's, never chats of their own.
    stream: bool = False
    code: int | None = None  # on a close record: the WebSocket close code, when recorded
    # On a send record: what a scenario step expected of the chat (the `expect` field): the error, and the roles.
    expect_error: str | None = None
    required: tuple[Role, ...] | None = None
    due: float | None = None  # on a send record: the earlier time the chat's times count from (the `due` field)
    # On a `send_failed` close record: which of the connection's send records (its ordinal, from 1) did not leave.
    send: int | None = None
    # On a "client-stop" close record: why the run stopped (a results.STOPPED_BY key: the `stop` field), when it says.
    stop: str = ""
    # On a close record the proxy wrote: the send records (ordinals) of the chats it had no room to keep for a resume.
    parking_full: tuple[int, ...] = ()
    # On a send record the proxy wrote: the send record (ordinal) of the chat it let go to make room for this one's
    # (more than flow.MAX_OPEN_WATCHED open on the connection), judged as it stood, the client's doing.
    crowded_out: int | None = None
    # On a connection's first frame record (`chatprobe run --record`): the user its client authenticated as (its
    # token's `sub`), by which R8 judges its events, as live (the `user` field).
    user: str | None = None


def detect_format(head: bytes) -> str:
    """"har", "sse" or "jsonl" from the first bytes of a file."""
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if re.match(rb'\{\s*"log"\s*:\s*\{', text):
        return "har"
    if _HTTP_STATUS.match(text):
        return "sse"  # `curl -i` (or -D -): the response's status line and headers, then its body
    if re.match(rb"(data|event|id|retry)?:", text) or re.match(rb"(data|event|id|retry)[ \t]*\r?\n", text):
        return "sse"
    if text[:1] != b"{" and re.search(rb"(?m)^data:", text):
        return "sse"  # a field of its own first (`x-trace: …`), which SSE ignores; no JSON line starts `data:`
    return "jsonl"


def read_recording(path: str | Path, fmt: str | None = None, *, max_frame: int = DEFAULT_MAX_FRAME,
                   max_text: int = DEFAULT_MAX_TEXT) -> Iterator[Recorded]:
    """The records of one file, in order; `fmt` forces a format (one of FORMATS), else it is told from content.

    Raises RecordingError (before any record) when the file cannot be opened, is empty or the format is unknown.
    """
    p = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise RecordingError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    try:
        # Never blocks: a file that waits for data (a /proc file such as kmsg, a device) ends where it has none now,
        # instead of hanging the command (a regular file reads as ever).
        with os.fdopen(os.open(p, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            if (large := too_large(p, os.fstat(f.fileno()))) is not None:  # the file opened, not one named before
                raise RecordingError(large)
            head = f.read(4096) or b""
            bom = 3 if head.startswith(b"\xef\xbb\xbf") else 0
            if bom:  # a BOM (Windows tools write one): no format's content
                head = head[3:]
            # Leading blank space (bounded): the format is told from the first bytes that are not.
            while head and not head.strip() and len(head) < MAX_LEADING_SPACE:
                more = f.read(CHUNK)
                if not more:
                    break
                head += more
            if not head.strip():
                raise RecordingError(f"{p}: the recording is empty" if len(head) < MAX_LEADING_SPACE else
                                     f"{p}: more than {MAX_LEADING_SPACE >> 20} MiB of blank space before anything")
            if fmt is None and (packed := _archive(head)):
                raise RecordingError(f"{p}: {packed}, not a recording: unpack it and check the file inside")
            if binary := _binary(head, bom):
                raise RecordingError(f"{p}: {binary}")
            kind = fmt or detect_format(head)
            if fmt is None and kind == "jsonl" and p.suffix.lower() == ".har":
                # A HAR is told from its first key, "log"; one whose root has a custom field first (HAR 1.2 allows
                # `_name` fields anywhere: `{"_comment": …, "log": {…}}`), or a file named .har that is no HAR, is
                # read as what its name says: the HAR reader reads the first, and refuses the second as no HAR
                # (exit 2), where JSON Lines judged a lone line as a frame (exit 1) or said "no JSON" of a pretty one.
                kind = "har"
            if fmt is None and kind == "jsonl":
                whole = stat.S_ISREG((st := os.fstat(f.fileno())).st_mode) and st.st_size <= len(head) + bom
                if _a_scenario(head, whole):
                    raise RecordingError(f"{p}: a scenario, not a recording: run it with `chatprobe run {p}` (or judge "
                                         f"a recording by it: chatprobe check RECORDING --scenario {p})")
                if prose := _not_json_lines(head):
                    raise RecordingError(f"{p}:{prose}")
            source = _Prefixed(head, f, MAX_RECORDING_BYTES - bom)
            stream = io.BufferedReader(source, CHUNK)
            if kind == "jsonl":
                yield from read_jsonl(stream, p.name, max_frame, path=str(p), refuse_prose=fmt is None)
            elif kind == "sse":
                if first := _skip_response_head(stream, p):  # the body's first line, read to see it was no head
                    stream = io.BufferedReader(_Prefixed(first, stream), CHUNK)
                yield from read_sse(stream, p.name, max_frame)
            elif (order := har_order(f.fileno(), max_text)) is not None:
                yield from read_har_sorted(f.fileno(), order, p.name, max_frame, max_text, base_dir=p.parent, path=str(p))
            else:
                yield from read_har(stream, p.name, max_frame, max_text, base_dir=p.parent, path=str(p))
            if source.capped:
                yield Recorded("problem", DEFAULT_CONN, where=f"{p.name}: byte {MAX_RECORDING_BYTES}",
                               detail=f"the file grew past the {MAX_RECORDING_BYTES >> 30} GiB one check reads of a "
                                      "recording while it was read: the rest was not read")
    except OSError as exc:
        raise RecordingError(f"{p}: cannot read the recording ({exc.strerror or exc.__class__.__name__})") from None


_HTTP_STATUS = re.compile(rb"HTTP/[0-9.]{1,3} +([0-9]{3})\b")
_BARE_CR = re.compile(rb"\r(?!\n)")
MAX_RESPONSE_HEAD = 64 << 10  # bytes of status lines and headers before a saved body (a server's are ~1 KiB)


def _skip_response_head(stream: io.BufferedReader[Any], p: Path) -> bytes:
    """A body saved with `curl -i` (or `-D -`) starts with the response's status line and headers, after any interim
    `1xx` response's: read past them to the body, and return what was read of the body's first line (b"" when none).
    curl writes the head of each response it got for the request, the final one's last: an interim response, and a
    head another status line follows (a proxy's `200 Connection established` to curl's CONNECT, unless
    --suppress-connect-headers; a redirect followed with -L, an auth challenge answered with --digest: curl writes
    none of their bodies). A final response that is no event stream (a status other than 2xx, a Content-Type other
    than text/event-stream) has nothing to judge: RecordingError naming what it was."""
    got = n = 0
    pending = b""  # the status line of the next response, read past a head's end
    # The file's first bytes, buffered whole (a fresh buffer's peek): a body saved without its head has no status line.
    # After an interim response the final one's status line is read as a line, never peeked: a peek returns only what
    # is left in the buffer, and a status line across its end was taken for the body (a 500 after a 100 judged).
    if not _HTTP_STATUS.match(stream.peek(64).lstrip()):
        return b""
    while True:
        status_line, pending = pending.strip(), b""
        content_type = None
        while True:
            line = stream.readline(MAX_RESPONSE_HEAD - got + 1)
            got += len(line)
            n += 1
            if _BARE_CR.search(line, 0, len(line) - line.endswith(b"\r")):  # (a CR the limit cut from its LF: not bare)
                # Line ends of CR alone (a file whose line ends were converted so): the whole head, and the body after
                # it, read as one header line, the body never judged ("no chat found"). HTTP has no bare CR
                # (RFC 9112 2.2: such an element is invalid), so no header line is guessed out of it.
                raise RecordingError(f"{p}: line {n} of the saved HTTP response head holds a CR not followed by LF "
                                     "(line ends of CR alone?): HTTP ends header lines with CRLF, as curl -i saves "
                                     "them; convert the file's line ends (tr '\\r' '\\n') or save the body alone "
                                     "(curl -N without -i)")
            if got > MAX_RESPONSE_HEAD:
                raise RecordingError(f"{p}: more than {MAX_RESPONSE_HEAD >> 10} KiB of HTTP response headers before "
                                     "the body: save the body alone (curl -N without -i)")
            if not line:
                break  # the file's end
            if not status_line:
                status_line = line.strip()
            elif not line.strip():
                break  # the empty line that ends the head
            elif line.lower().startswith(b"content-type:"):
                content_type = line.partition(b":")[2].strip().lower()
        shown = status_line.decode("ascii", "replace")[:80]
        if (m := _HTTP_STATUS.match(status_line)) is None:
            if not status_line:
                raise RecordingError(f"{p}: the saved response ends after an interim (1xx) response: no body to judge")
            raise RecordingError(f"{p}: {shown!r} where an HTTP status line was expected")
        status = int(m.group(1))
        if 100 <= status < 200:
            continue  # an interim response (100 Continue): the final one follows
        # Read as a line, never peeked (a peek returns only what is left in the read buffer, see above).
        first = stream.readline(MAX_RESPONSE_HEAD)
        if _HTTP_STATUS.match(first):  # no body follows this head, but another response's: that one is the final one
            got += len(first)
            n += 1
            pending = first
            continue
        if not 200 <= status < 300:
            raise RecordingError(f"{p}: the saved response is {shown!r}, not an event stream: nothing to judge")
        if content_type is not None and not content_type.startswith(b"text/event-stream"):
            raise RecordingError(f"{p}: the saved response's Content-Type is "
                                 f"{content_type.decode('ascii', 'replace')[:80]!r}, not text/event-stream: nothing "
                                 "to judge")
        return first


def too_large(path: str | Path, st: os.stat_result | None = None) -> str | None:
    """Why a recording file is too large to check (its size, before a byte is read), or None. A file that is not
    there or no regular file is left to the reading to name."""
    try:
        st = st or os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size <= MAX_RECORDING_BYTES:
        return None
    return (f"{path}: {st.st_size:,} bytes, more than the {MAX_RECORDING_BYTES >> 30} GiB one check reads of a "
            "recording file; check it in parts (a JSON Lines file splits at its lines: split -C 1G FILE part-)")


def _binary(head: bytes, offset: int = 0) -> str:
    """Why a file whose first line holds a NUL byte is no recording ("" when it holds none). Every format is UTF-8
    text, JSON at that, where a NUL is never written bare (RFC 8259: U+0000 only escaped): a file of NULs (a sparse
    or preallocated file, a disk image) or UTF-16 text is told at once instead of read to its end as lines of junk.
    (NULs after a first whole line, as a crash may leave at a file's end, are read as the junk they are: an R12.)"""
    head = head[:_HEAD]
    nul = head.find(b"\0")
    if nul < 0:
        return ""
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(head) >= 8 and any(head[:64])
                                                  and (not any(head[1:64:2]) or not any(head[0:64:2]))):
        return ("UTF-16 text (a NUL byte in every other place), not UTF-8 as a recording is: save it as UTF-8 "
                "(iconv -f UTF-16 -t UTF-8)")
    if not any(head):
        return (f"nothing but NUL bytes in its first {len(head) + offset} bytes (a sparse or preallocated file?), "
                "not a recording")
    line_end = head.find(b"\n")
    if line_end < 0 or nul < line_end:
        if _agui_protobuf(head):
            return (f"AG-UI's protobuf encoding ({AGUI_PROTO}: each event a 4-byte length and its bytes), not a "
                    "recording: chatprobe reads AG-UI as SSE; save the body the server sends for 'Accept: "
                    "text/event-stream'")
        return f"binary data (a NUL byte at byte {nul + offset}, in its first line), not a recording"
    return ""


def _agui_protobuf(head: bytes) -> bool:
    """Whether a file begins as an AG-UI body in its protobuf encoding (@ag-ui/encoder's `encodeBinary`, what a server
    sends for an `Accept` that admits AGUI_PROTO, `*/*` included): frames of a 4-byte big-endian length and that many
    bytes, each an `Event` message whose one field is the event, a length-delimited field (wire type 2). Two such
    frames, or one that is the whole file, or frames up to one running past the head when `head` is the file's first
    _HEAD bytes only (a RUN_STARTED echoing its input, the conversation so far, is kilobytes)."""
    capped = len(head) >= _HEAD
    at = 0
    for _ in range(2):
        if at and at == len(head):
            return True
        if len(head) < at + 5:
            return bool(at) and capped  # (a first frame, then the head's end amid the next one's length)
        n = int.from_bytes(head[at:at + 4], "big")
        if not 2 <= n <= 1 << 24 or head[at + 4] & 7 != 2:
            return False
        if at + 4 + n > len(head):
            return capped
        at += 4 + n
    return True


_HEAD = 4096  # the bytes of a file _binary is given


# What a first line that is no JSON says the file is: a transcript of a command-line WebSocket client, not a recording.
_TRANSCRIPTS = (
    (re.compile(r"Connected \(press CTRL\+C to quit\)|[<>] [\[{]"),
     "a wscat transcript (`> ` sent, `< ` received, no times), which chatprobe does not read: record the traffic with "
     "`chatprobe proxy --record DIR`"),
    (re.compile(r"\[(?:TRACE|DEBUG|INFO|WARN|ERROR) +websocat::"),
     "websocat's log (-v writes it to stderr): save websocat's output alone (each line a frame received, read as "
     "such) or record the traffic with `chatprobe proxy --record DIR`"),
)
_PRETTY = ("a JSON document written over several lines (pretty-printed, as `jq .` writes it, or an array of records), "
           "not JSON Lines, which holds one record a line: `jq -c .` rewrites it so (an array: `jq -c '.[]'`)")
_PROSE = ("text, not a recording (JSON Lines, an SSE body or a HAR: docs/recordings.md); a directory's files are all "
          "read as recordings: move other files out (--format sse reads an SSE body whose first lines are no event's, "
          "--format jsonl judges each line as a frame received)")


def _not_json_lines(head: bytes) -> str:
    """Why a file told to be JSON Lines is none (its first line and why; "" when it may be one): a first line that is
    whole in `head` and no JSON (a wscat transcript, websocat's -v log saved with its output, a README in a directory
    of recordings) would make every line an R12 held against the server and "no chat found". A later line that is no
    JSON stays a frame received (an R12 where it falls); `--format jsonl` reads the first one so too."""
    text = head.lstrip(b" \t\r\n")
    line_no = head[:len(head) - len(text)].count(b"\n") + 1
    line, newline, _ = text.partition(b"\n")
    # JSON has no raw CR inside a string: one outside is a line's end, of CR alone (not CRLF's, nor one the read cut
    # from its LF, nor a CR before the line's end, which is JSON's white space: `\r\r\n`, a CRLF file converted again)
    if _BARE_CR.search(line.rstrip(b" \t\r")):
        return (f"{line_no}: a CR not followed by LF (line ends of CR alone?): JSON Lines ends each line with LF or "
                "CRLF; convert the file's line ends (tr '\\r' '\\n')")
    if not newline and len(head) >= 4096:  # the first line goes on past what was read: left to the reader
        return ""
    try:
        first = line.decode("utf-8").strip()
        json.loads(first)
    except UnicodeDecodeError:
        return ""  # the reader says so (read_jsonl's refusal, naming the byte)
    except (ValueError, RecursionError) as exc:
        return _first_line_why(first, line_no, bool(newline), exc)
    return ""


# Keys a scenario shares with many a JSON record: these alone are no sign of a scenario.
_COMMON_KEYS = frozenset({"name", "description", "message", "profile", "duration", "compression"})


def _a_scenario(head: bytes, whole: bool) -> bool:
    """Whether a file told to be JSON Lines, whose first bytes are `head` (all of it when `whole`), is plainly a
    scenario (docs/scenarios.md): one mapping of a scenario's keys, `name` and one a JSON record seldom has among them,
    and nothing else; a scenario given to `check` where a recording goes. One line of JSON was judged as a recording
    of one frame (a verdict of nothing); a scenario in YAML, or in JSON over several lines, was refused as "text, not a
    recording". A recording is never such a file: its records carry keys no scenario has (`t`, `dir`, `conn`, an
    event's `type`), and it is more than one mapping. The top-level keys are read by PyYAML's event parser (JSON is
    YAML), which builds nothing, so an alias or a deep value costs no more than its bytes; a head that is not the
    whole file may end mid-value: a parse error there is its cut, one before it no scenario."""
    import yaml

    from .scenario import Scenario

    text = head.decode("utf-8", "replace")
    cut_from = len(text) if whole else text.rfind("\n") + 1  # (the head's last line may be cut short)
    keys: set[str] = set()
    depth = 0  # 1 inside the top-level mapping
    want_key = ended = False
    try:
        for event in yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if isinstance(event, (yaml.StreamStartEvent, yaml.DocumentStartEvent, yaml.DocumentEndEvent,
                                  yaml.StreamEndEvent)):
                continue
            if ended or depth == 0 and not isinstance(event, yaml.MappingStartEvent):
                return False  # no mapping, or more after it (a second record or document)
            if depth == 1 and want_key:
                if isinstance(event, yaml.MappingEndEvent):
                    ended, depth = True, 0
                elif isinstance(event, yaml.ScalarEvent):
                    keys.add(event.value)
                    want_key = False
                else:
                    return False  # a key that is a mapping, a list or an alias: no scenario's
                continue
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            want_key = depth == 1
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        if whole or mark is None or mark.index < cut_from:
            return False  # a file that is no YAML (nor JSON) before where the head ends
    known = Scenario.model_fields.keys()
    return "name" in keys and keys <= known and not keys <= _COMMON_KEYS


_DIGITS = re.compile(r"Exceeds the limit \(\d+ digits\) for integer string conversion.*?(\d+) digits")


def _first_line_why(first: str, line_no: int, ended: bool, exc: Exception) -> str:
    """Why a file whose first line, `first`, is no JSON (json.loads raised `exc`) is no recording: cut inside its
    first record (no line end), a transcript or log of another tool, or text."""
    first = first.strip()
    if not ended and first.startswith("{") and "\0" not in first:  # the whole file, one line begun as a record
        return (f"{line_no}: the file ends inside its first record, which is not whole ({CUT_WHY}): nothing was "
                "recorded to judge")
    what = next((what for pattern, what in _TRANSCRIPTS if pattern.match(first)), "")
    if not what and ended and first in ("{", "[", "[{"):  # the line opens a JSON document that the next lines go on
        what = _PRETTY
    if not what and isinstance(exc, RecursionError):
        what = "JSON nested too deeply to read; no record of a recording is"
    elif not what and (digits := _DIGITS.search(str(exc))) is not None:  # Python reads at most 4,300 digits
        what = f"it holds an integer of {digits.group(1)} digits, too long to read; no value of a recording is"
    shown = json.dumps(first[:60], ensure_ascii=False)
    return f"{line_no}: {shown} is no JSON: {what or _PROSE}"


def _archive(head: bytes) -> str:
    """What packed file a recording's first bytes say it is ("" when none): a zip (Playwright's recordHar to a .zip
    path: the HAR and its bodies inside), gzip, or zlib (mitmproxy's hardump to a .zhar path)."""
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (Playwright's recordHar to a .zip path writes one)"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed"
    if len(head) >= 2 and head[0] == 0x78 and head[1] in (0x01, 0x5E, 0x9C, 0xDA) and (head[0] << 8 | head[1]) % 31 == 0:
        return "zlib-compressed (mitmproxy's hardump to a .zhar path writes it so)"
    return ""


class _Prefixed(io.RawIOBase):
    """A binary file whose first bytes were already read for format detection; with a `limit`, it ends there (then
    `capped` is set: the file went on)."""

    def __init__(self, head: bytes, rest: IO[bytes] | io.RawIOBase, limit: int | None = None) -> None:
        self._head = head
        self._rest = rest
        self._left = limit
        self.capped = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            if self._left is not None:
                self._left -= n
            return n
        want = len(b)
        if self._left is not None:
            if self._left <= 0:
                self.capped = bool(self._rest.read(1))  # the end, unless the file went on past the limit
                return 0
            want = min(want, self._left)
        data = self._rest.read(want) or b""  # None: nothing to read without waiting (see read_recording)
        n = len(data)
        b[:n] = data
        if self._left is not None:
            self._left -= n
        return n


# -- JSON Lines --

_NOT_JSON = object()  # a line json.loads did not read (None is the JSON null)
_END, _LINE, _UNENDED = 0, 1, 2  # what _next_line read: nothing (the end), a line, the file's last line with no end


def _next_line(f: IO[bytes], limit: int) -> tuple[int, bytes | None]:
    """(_END, None) at the end; (_LINE, None) for a line over `limit` bytes (skipped in pieces: never more than
    `limit` bytes held); else (_LINE, the line without its end), or (_UNENDED, the line) for a last line the file ends
    without its line end (what a writer stopped mid-line leaves). A function, not a generator: a suspended generator
    would hold the last line while the caller goes on."""
    line = f.readline(limit + 1)
    if not line:
        return _END, None
    if len(line) > limit and not line.endswith(b"\n"):
        while line and not line.endswith(b"\n"):
            line = f.readline(CHUNK)
        return _LINE, None
    return (_LINE if line.endswith(b"\n") else _UNENDED), line.rstrip(b"\r\n")


# The cut record's connection, when its cut left that field whole.
_CUT_CONN = re.compile(r'"conn"\s*:\s*("(?:[^"\\]|\\.)*")')
CUT_WHY = "its writer stopped mid-line, crashed or killed, or the file was copied while written"
CUT_RECORD = f"the file ends inside a record that is not whole: {CUT_WHY}"


def _cut_character(exc: UnicodeDecodeError, data: bytes | bytearray) -> bool:
    """Whether `data` failed to decode only because it ends inside a UTF-8 character (its first bytes, the rest
    missing): what a file cut between two bytes of one ends with, not bytes that are no UTF-8."""
    return exc.reason == "unexpected end of data" and exc.end == len(data)


def _cut_record(text: str, conn: str, where: str) -> Recorded:
    """A dropped record for the file's last line, cut mid-record: no frame the server sent (an R12 held against it
    would say the server sent broken JSON), the end of what was recorded of its connection (named in what the cut
    left, else the last one seen): its open chats are judged as they stood there, as at an SSE body's cut event."""
    if (named := _CUT_CONN.search(text)) is not None:
        try:
            conn = str(json.loads(named.group(1)))
        except ValueError:
            pass
    return Recorded("dropped", conn, detail="the rest of a record", where=where, error=CUT_RECORD)


def read_jsonl(f: IO[bytes], name: str, max_frame: int = DEFAULT_MAX_FRAME, *, path: str | None = None,
               refuse_prose: bool = False) -> Iterator[Recorded]:
    """The JSON Lines form (module docstring): one record per line; a line that is not one is an R12 problem or,
    when it is text, a frame as received (the profile's decode calls it malformed), on the last connection seen.

    With `refuse_prose` (the format was told from the content, not forced), a first line that is no JSON is
    RecordingError (exit 2), as read_recording refuses one whole in the file's first 4 KiB: a longer one (a README's
    long first paragraph, a first record cut past 4 KiB) was judged line by line as frames the server sent.

    A file in which no record's `t` (or `dir`) can be read, two or more having one (or its first MAX_UNREAD), is
    no recording chatprobe reads: RecordingError naming the first (exit 2), not an R12 on every record."""
    conn = DEFAULT_CONN
    times, ways = _Unread("t"), _Unread("dir")
    untimed = True  # no record with a `t` yet: one that names its time otherwise is said once (_time_elsewhere)
    first = True  # the first JSON line, which tells another tool's form of record
    max_line = 2 * max_frame + 4096
    # The line, its text, its JSON and the record are dropped before each yield: a suspended generator keeps its
    # locals, and a directory's files are merged with one record of each held at once (offline._merged bounds those).
    n = 0
    while True:
        more, line = _next_line(f, max_line)
        if more == _END:
            break
        n += 1
        where = f"{name}:{n}"
        if line is None:
            refuse_prose = False  # (what it is was not read)
            yield Recorded("problem", conn, detail=f"line {n} longer than the {max_line} byte limit", where=where)
            continue
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            if not (more == _UNENDED and _cut_character(exc, line)):
                if refuse_prose:  # the file's first line: no JSON (RFC 8259: JSON text is UTF-8), so no recording
                    raise RecordingError(f"{path or name}:{n}: not UTF-8 (byte {exc.start + 1} of the line, "
                                         f"0x{line[exc.start]:02x}), so no JSON: a recording is UTF-8 text; "
                                         "convert it (iconv -f WINDOWS-1252 -t UTF-8, or the encoding it was "
                                         "written in); a directory's files are all read as recordings: move other "
                                         "files out") from None
                refuse_prose = False
                yield Recorded("problem", conn, detail=f"line {n} is not UTF-8", where=where)
                continue
            # The file's last line ends inside a character (a writer killed, or a copy taken, between its bytes):
            # what came before it is read as the rest of the line is, a record cut there.
            text = line[:exc.start].decode("utf-8")
        line = None
        if n == 1:
            text = text.removeprefix("\ufeff")  # a byte order mark some editors and tools write first
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:
            obj = _NOT_JSON
            if refuse_prose:  # the file's first line (read_recording saw none of it end in the first 4 KiB)
                raise RecordingError(f"{path or name}:{_first_line_why(text, n, more == _LINE, exc)}") from None
            if text.startswith("\ufeff"):  # a byte order mark where files were joined (`cat a.jsonl b.jsonl`)
                try:
                    obj, text = json.loads(text[1:]), text[1:]
                except (ValueError, RecursionError):
                    pass
        refuse_prose = False
        if obj is _NOT_JSON:
            if more == _UNENDED and text.lstrip().startswith("{") and "\0" not in text:
                # The file's last line, begun as a record (or a JSON frame) and ending with neither its JSON nor its
                # line end: cut there, not a frame that came so.
                held, text = [_cut_record(text, conn, where)], ""
                yield held.pop()
                continue
            # Not JSON: what a server sent that is not a frame of any profile; judged as received.
            held, text = [Recorded("recv", conn, frame=_cut(text, max_frame), where=where)], ""
            yield held.pop()  # popped: the suspended generator holds no reference to the frame
            continue
        if first:
            first = False
            if foreign := _foreign_record(obj):
                raise RecordingError(f"{path or name}:{n}: {foreign}")
        held = [_envelope(obj, text, conn, where, max_frame)]
        if untimed and isinstance(obj, dict):
            if "t" in obj:
                untimed = False
            elif elsewhere := _time_elsewhere(obj):
                untimed = False
                yield Recorded(NOTE, held[0].conn, detail=f"{where}: {elsewhere}", where=where)
        if not (times.read and ways.read):  # (once each was read in a record, no refusal can come: not counted)
            detail = held[0].detail
            if detail is T_UNREAD or held[0].t is not None:
                times.saw(detail is not T_UNREAD, f"{path or name}:{n}", obj["t"])
            if detail is DIR_UNREAD or (detail is not T_UNREAD and isinstance(obj, dict) and "dir" in obj
                                        and _is_envelope(obj)):
                ways.saw(detail is not DIR_UNREAD, f"{path or name}:{n}", obj["dir"])
        conn, text, obj = held[0].conn, "", None
        yield held.pop()
    times.end()
    ways.end()


# Another tool's log record: which way the frame went and the frame, under names of its own. Which way "in" and "out"
# go is that tool's to say (a server's "in" is a client's "out"), so no name is guessed: the file is refused, saying so.
_FOREIGN_DIRECTIONS = ("direction", "dir", "type")
_FOREIGN_FRAMES = ("data", "payload", "message", "msg", "body", "text", "content")
_FOREIGN_DIRECTION_VALUES = frozenset({"in", "out", "incoming", "outgoing", "inbound", "outbound", "sent", "send",
                                       "received", "receive", "recv", "client", "server", "up", "down"})


def _foreign_record(obj: Any) -> str:
    """Why a JSON Lines file's first record is another tool's form (a direction and a frame under other names, no
    `frame`), or "" when it is none: each line was judged as a bare frame received, an R12 ("JSON object without a
    'type'") held against the server, and "no chat found". A frame of a profile has no direction field (`type`
    counts as one only with such a value: a WebSocket client's `{"type": "incoming", "data": …}`)."""
    if not isinstance(obj, dict) or "frame" in obj or "frame_b64" in obj or obj.get("dir") in ("close", "dropped"):
        return ""
    way = next((k for k in _FOREIGN_DIRECTIONS if k in obj and (k != "type" or (
        isinstance(obj[k], str) and obj[k].lower() in _FOREIGN_DIRECTION_VALUES))), None)
    data = next((k for k in _FOREIGN_FRAMES if k in obj), None)
    if way is None or data is None:
        return ""
    return (f"field {way!r} beside {data!r} and no 'frame': another tool's log, not chatprobe's JSON Lines, whose "
            'records are {"t": <time>, "dir": "send"|"recv", "conn": <connection>, "frame": <the frame>} '
            "(docs/recordings.md): rename its fields so (which way is send, which recv, is that tool's to say)")


# A JSON Lines file with no `t` (or `dir`) read in as many records as this (or in every one of two or more) is no
# recording chatprobe reads (another tool's log, its own form of time, `"12:00:01"`, or of direction, `"in"`): exit 2.
MAX_UNREAD = 1000
T_UNREAD = "field 't' must be a time in epoch seconds (or milliseconds), or an ISO 8601 date and time"
DIR_UNREAD = "field 'dir' must be recv, send or close"
_UNREAD_HELP = {
    "t": ("is no time", "chatprobe reads epoch seconds, epoch milliseconds or an ISO 8601 date and time "
                        "(2025-12-02T01:00:00.123Z); convert the field, or leave it out (a record without t has no time)"),
    "time": ("is no time", "chatprobe reads epoch seconds (a number, as Chromium writes it), epoch milliseconds or an "
                           "ISO 8601 date and time (2025-12-02T01:00:00.123Z), never a number written as a string; "
                           "convert the field, or leave it out (a message without time has no time)"),
    "dir": ("is no direction", "chatprobe reads recv (the server's frame), send (the client's), close and dropped; "
                               "rename its values so (which way is in, which out, is the writing tool's to say)"),
}


class _Unread:
    """A JSON Lines field (`t`, `dir`) in the records that have it, or a HAR WebSocket message's `time` in the messages
    that have one: when none of them can be read, the file is no recording chatprobe reads, said once (RecordingError
    naming where the first is, its line or its entry and message, and its value: exit 2) instead of an R12 on every
    record; a record's own field that cannot be read among others that can is that record's R12."""

    __slots__ = ("field", "first", "noun", "read", "unread")

    def __init__(self, field: str, noun: str = "records") -> None:
        self.field, self.noun = field, noun
        self.read = self.unread = 0
        self.first: tuple[str, str] | None = None  # where the first not read is (its file and line) and its value

    def saw(self, ok: bool, at: str, value: Any) -> None:
        if ok:
            self.read += 1
            return
        self.unread += 1
        if self.first is None:
            self.first = (at, json.dumps(value)[:40])
        if not self.read and self.unread >= MAX_UNREAD:
            raise self._error("first ")

    def end(self) -> None:
        if not self.read and self.unread >= 2:
            raise self._error("")

    def _error(self, which: str) -> RecordingError:
        at, value = self.first or ("", "")
        what, help_ = _UNREAD_HELP[self.field]
        return RecordingError(f"{at}: field {self.field!r}: {value} {what}, nor is the {self.field} of any of the "
                              f"{which}{self.unread} {self.noun} that have one: {help_}")


_TIME_FIELDS = ("ts", "time", "timestamp", "@timestamp", "date", "datetime", "at")


def _time_elsewhere(obj: dict[str, Any]) -> str:
    """What to say of a record without `t` that names a time under another name (another tool's `ts`, `timestamp`),
    else "": it is read without a time (t is optional), so first-event times, stalls and deadlines go unjudged, and the
    user should know why."""
    field = next((k for k in _TIME_FIELDS if k in obj), None) if _is_envelope(obj) else None
    if field is None:
        return ""
    return (f"field {field!r} is not read as a record's time, which is 't' (epoch seconds, epoch milliseconds or ISO "
            "8601): the records are judged without their times; rename the field to judge first-event times, stalls "
            "and deadlines")


def _is_envelope(obj: dict[str, Any]) -> bool:
    """Whether a JSON object is a record (`frame` or `frame_b64`, or a close or dropped one, and one of t, dir, conn),
    not a bare frame."""
    return (("frame" in obj or "frame_b64" in obj or obj.get("dir") in ("close", "dropped"))
            and not obj.keys().isdisjoint(ENVELOPE_MARKS))


def _envelope(obj: Any, text: str, conn: str, where: str, max_frame: int) -> Recorded:
    if not isinstance(obj, dict) or not _is_envelope(obj):
        return Recorded("recv", conn, frame=text, where=where)  # a bare frame
    raw_conn = obj.get("conn", DEFAULT_CONN)
    if isinstance(raw_conn, (str, int)) and not isinstance(raw_conn, bool):
        conn = str(raw_conn)[:200]
    else:
        return Recorded("problem", conn, detail="field 'conn' must be a string", where=where)
    t = obj.get("t")
    if t is not None and (t := _record_time(t)) is None:
        return Recorded("problem", conn, detail=T_UNREAD, where=where)
    direction = DIRECTIONS.get(obj.get("dir", "recv")) if isinstance(obj.get("dir", "recv"), str) else None
    if direction is None:
        return Recorded("problem", conn, t=t, detail=DIR_UNREAD, where=where)
    if direction == "close":  # "by": "client": the client left on purpose (its chats are abandoned, as live)
        error = obj.get("error")
        failed, reason = obj.get("failed"), obj.get("reason")
        if failed is not None and failed not in FAILED_KINDS:
            return Recorded("problem", conn, t=t, detail=f"field 'failed' must be one of {', '.join(FAILED_KINDS)}",
                            where=where)
        send = obj.get("send")
        if send is not None and (failed != SEND_FAILED or isinstance(send, bool) or not isinstance(send, int)
                                 or not 1 <= send < 10**18):
            return Recorded("problem", conn, t=t, detail=f"field 'send' must be the ordinal (from 1) of the send "
                            f"record a '{SEND_FAILED}' close record names", where=where)
        full = obj.get("parking_full", [])
        if not (isinstance(full, list) and len(full) <= MAX_PARKING_FULL
                and all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n < 10**18 for n in full)):
            return Recorded("problem", conn, t=t, detail=f"field 'parking_full' must be a list of at most "
                            f"{MAX_PARKING_FULL} ordinals (from 1) of the connection's send records", where=where)
        by = obj.get("by")
        stop = obj.get("stop")
        if stop is not None and (by != "client-stop" or not isinstance(stop, str) or stop not in STOPPED_BY):
            return Recorded("problem", conn, t=t, detail=f"field 'stop' must be one of {', '.join(STOPPED_BY)}, on a "
                            "'client-stop' close record", where=where)
        return Recorded("close", conn, t=t, detail=CLOSED_BY.get(by, "") if isinstance(by, str) else "",
                        where=where, send=send, stop=stop or "", parking_full=tuple(full),
                        error=error[:1024] if isinstance(error, str) else "", failed=failed or "",
                        reason=reason[:1024] if failed and isinstance(reason, str) else "",
                        resume=bool(failed) and obj.get("resume") is True,
                        retry=bool(failed) and obj.get("resume") is True and obj.get("retry") is True,
                        status=status if failed and isinstance(status := obj.get("status"), int)
                        and not isinstance(status, bool) and 100 <= status < 600 else None,
                        auth_error=auth[:64] if failed and isinstance(auth := obj.get("auth_error"), str) else "",
                        stream=obj.get("stream") is True,
                        code=code if isinstance(code := obj.get("code"), int) and not isinstance(code, bool)
                        and 0 <= code < 65536 else None)
    if direction == "dropped":
        counts = [f"{v} {k}" for k in ("frames", "bytes") if isinstance(v := obj.get(k), int) and not isinstance(v, bool)
                  and 0 <= v < 10**18]
        return Recorded("dropped", conn, t=t, detail=", ".join(counts), where=where)
    frame: str | bytes
    if "frame_b64" in obj:
        try:
            frame = base64.b64decode(str(obj["frame_b64"]), validate=True)
        except (binascii.Error, ValueError):
            return Recorded("problem", conn, t=t, detail="field 'frame_b64' is not base64", where=where)
    elif isinstance(obj["frame"], str):
        # "problem": what the live SSE parser found wrong in the stream (data not UTF-8, a line of no field), judged
        # as live judged it, not as a frame of that text the server sent
        frame = StreamProblem(obj["frame"]) if obj.get("problem") is True and direction == "recv" else obj["frame"]
    else:
        frame = json.dumps(obj["frame"], separators=(",", ":"))
    if frame_bytes(frame) > max_frame:
        return Recorded("problem", conn, t=t, detail=f"frame larger than the {max_frame} byte limit", where=where)
    user = obj.get("user")
    if user is not None and (not isinstance(user, str) or not 0 < len(user) <= MAX_USER):
        return Recorded("problem", conn, t=t, detail=f"field 'user' must be a user id of 1 to {MAX_USER} characters",
                        where=where)
    if direction == "send" and ("expect" in obj or "due" in obj or "crowded_out" in obj):
        expect = _expectation(obj["expect"]) if "expect" in obj else (None, None)
        if isinstance(expect, str):
            return Recorded("problem", conn, t=t, detail=expect, where=where)
        due = obj.get("due")
        if due is not None and (isinstance(due, bool) or not isinstance(due, (int, float)) or t is None
                                or not t - MAX_DUE_BEFORE <= due <= t):
            return Recorded("problem", conn, t=t, detail="field 'due' must be a time in epoch seconds, at most "
                            f"{MAX_DUE_BEFORE:g}s before the record's t", where=where)
        crowded = obj.get("crowded_out")
        if crowded is not None and (isinstance(crowded, bool) or not isinstance(crowded, int)
                                    or not 1 <= crowded < 10**18):
            return Recorded("problem", conn, t=t, detail="field 'crowded_out' must be the ordinal (from 1) of an "
                            "earlier send record of the connection", where=where)
        return Recorded(direction, conn, t=t, frame=frame, where=where, expect_error=expect[0], required=expect[1],
                        due=due, user=user, crowded_out=crowded)
    return Recorded(direction, conn, t=t, frame=frame, where=where, user=user)


def _expectation(value: Any) -> tuple[str | None, tuple[Role, ...] | None] | str:
    """A send record's `expect` as (error, required roles), or what is wrong with it (a problem record's detail)."""
    if not isinstance(value, dict):
        return "field 'expect' must be an object"
    error, required = value.get("error"), value.get("required")
    if error is not None and error not in EXPECTED_ERRORS:
        return f"field 'expect.error' must be one of {', '.join(EXPECTED_ERRORS)}"
    roles: tuple[Role, ...] | None = None
    if required is not None:
        if (not isinstance(required, list) or len(required) > len(_ROLES)
                or not all(isinstance(r, str) and r in _ROLES for r in required)):
            return f"field 'expect.required' must be a list of roles ({', '.join(_ROLES)})"
        roles = tuple(_ROLES[r] for r in required)
    return error, roles


# -- an SSE response body --

def read_sse(f: IO[bytes], name: str, max_frame: int = DEFAULT_MAX_FRAME, conn: str = "sse") -> Iterator[Recorded]:
    """Each event's data of a `text/event-stream` body, parsed by the harness's own SSE parser (the one the live
    transport uses); a body has no times. A line or event over the limit ends the stream with a problem record,
    as the live transport drops such a stream."""
    parser = EventStreamParser(max_frame)
    n = 0
    chunk = f.read(CHUNK)
    while True:
        after = f.read(CHUNK) if chunk else b""
        if chunk and not after:
            # The body's last bytes: a character begun and not finished there is where the file was cut (curl
            # stopped, a copy taken while written, between two bytes of one), not bytes the server sent broken.
            chunk = chunk[:len(chunk) - _partial_character(chunk)]
        ended = not chunk
        try:
            # At the body's end: the event it left without its empty line, as the live transport takes it at a
            # clean end, when it is whole.
            events = parser.end() if ended else parser.feed(chunk)
        except EventTooLarge as exc:
            yield Recorded("problem", conn, detail=str(exc), where=f"{name}: after event {n}")
            return
        if ended and events and not _whole_json(events[-1]):
            # An event cut mid-way (curl stopped, a capture saved while the stream ran, a connection that broke):
            # a saved body cannot tell a clean end from a cut one, and live a cut stream's last event is no frame.
            # Its chat is judged as it stood there, never held against the server for what the file lacks.
            events.pop()
            yield Recorded("dropped", conn, detail="the rest of an event", where=f"{name}: event {n + 1}",
                           error="the body ends inside an event that is not whole: the recording was cut there")
        events.reverse()
        while events:  # popped: the suspended generator holds no yielded frame
            n += 1
            yield Recorded("recv", conn, frame=events.pop(), where=f"{name}: event {n}", stream=True)
        if ended:
            return
        chunk = after


def _partial_character(data: bytes) -> int:
    """How many bytes at the end of `data` begin a UTF-8 character whose other bytes are not there (0 to 3)."""
    for back in range(1, min(4, len(data)) + 1):
        lead = data[-back]
        if lead & 0xC0 != 0x80:  # not a continuation byte: ASCII or the character's first byte
            need = 2 if 0xC2 <= lead <= 0xDF else 3 if 0xE0 <= lead <= 0xEF else 4 if 0xF0 <= lead <= 0xF4 else 0
            return back if need > back else 0
    return 0


def _whole_json(data: str) -> bool:
    """Whether an event's data, begun as a JSON object, is one whole JSON value (an event cut mid-way never is). Data
    that is no JSON object at all (a profile's `stream_end` marker, `[DONE]`, left without its empty line) is the
    profile's to judge, as it is live."""
    if not data.lstrip().startswith("{"):
        return True
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return False
    return True


# -- HAR 1.2 --

class _Reads:
    """A file that has only `read`: ijson reads with `readinto` when a file has it, one buffer's size at a time,
    which would leave _BoundedJSON.read's growing reads unused."""

    __slots__ = ("read",)

    def __init__(self, guard: "_BoundedJSON") -> None:
        self.read = guard.read


_SEPARATORS = frozenset(b' \t\n\r\f\v[]{}:,"')  # the bytes outside a number or literal (_BoundedJSON._TOKEN)


# Brackets nested this deep inside an entry (depth 4 and more) are skipped with the rest (_skipper): Chrome's deepest
# (an initiator's call frames) are four below the entry.
SKIP_NESTING = 4
SKIP_RUN = 16  # bytes (an escape is 2)


@functools.lru_cache(maxsize=16)
def _skipper(units: int, nesting: int) -> re.Pattern[bytes]:
    """A run, outside strings, of what cannot change _BoundedJSON's state but its position, matched in C where a loop
    in Python had taken a few steps per string and bracket: separators, whole strings of at most `units` bytes (over
    neither the string limit nor MAX_HAR_KEY: in one run without escapes, or in escapes and runs of at most SKIP_RUN
    bytes, `units // SKIP_RUN` of them), whole tokens of at most MAX_HAR_TOKEN bytes followed by a byte outside them,
    and (`nesting` > 0) whole bracketed groups of the same nested at most `nesting` deep (the run ends at the depth
    it starts at). It stops before a bracket it cannot close, a longer string, a string the data ends in and a
    longer token (or one the data ends in), which _BoundedJSON._scan reads as before."""
    short_string = rb'"[^"\\]{0,%d}+"|"(?:[^"\\]{1,%d}+|\\.){0,%d}+"' % (units, SKIP_RUN, units // SKIP_RUN)
    atom = rb'%s|[\s:,]++|[^\s\[\]{}:,"]{1,%d}+(?=[\s\[\]{}:,"])' % (short_string, MAX_HAR_TOKEN)
    run = rb"(?:%s)*+" % atom
    for _ in range(nesting):
        run = rb"(?:%s|[\[{]%s[\]}])*+" % (atom, run)
    return re.compile(run, re.DOTALL)


class HarTooLarge(Exception):
    """A string or a nesting level in a HAR file over its limit (ijson itself has no bound on either)."""


class _BoundedJSON(io.RawIOBase):
    """Passes a JSON file's bytes through, raising HarTooLarge as soon as a string grows past `max_string` bytes or
    arrays and objects nest deeper than `max_depth`: ijson would build any string whole, and its prefixes grow
    with depth, so without this a hostile HAR could take all memory. A lexer of strings and brackets only (the
    parsing proper is ijson's); outside a string a stray backslash is invalid JSON, which ijson reports."""

    # A string's body up to its closing quote (or the chunk's end), escapes included, matched in C. Possessive (`*+`):
    # the plain `*` kept a backtracking point for each escape, ~100 bytes each (78 MB for a read of 786 KB of `\"x`).
    _BODY = re.compile(rb'(?:[^"\\]+|\\.)*+', re.DOTALL)
    _OUTSIDE = re.compile(rb'["\[\]{}]')
    # A number or literal (what lies outside strings between separators): ijson's parser rescans a token that spans
    # its reads, so a 300 MB number took hours; HAR numbers are short.
    _TOKEN = re.compile(rb'[^\s\[\]{}:,"]+')
    _SPACE = re.compile(rb'[ \t\n\r]*')
    # More token bytes in a row than MAX_HAR_TOKEN: the leftmost such run starts the first token over the limit.
    _LONG_TOKEN = re.compile(rb'[^\s\[\]{}:,"]{%d}' % (MAX_HAR_TOKEN + 1))

    def __init__(self, raw: IO[bytes], max_string: int, max_depth: int) -> None:
        self.raw = raw
        self.max_string = max_string
        self.max_depth = max_depth
        self.offset = 0
        self.in_string = False
        self.string_len = 0
        self.string_at = 0  # the byte the string being read starts at (its opening quote), named when it is too long
        self.escape_pending = False  # the last chunk ended inside a string on a backslash
        self.depth = 0
        self.token_len = 0  # a number or literal running up to the last chunk's end
        self.long_string = 0  # the bytes of the string just closed, when over MAX_HAR_KEY: a key if a ':' follows
        # Where each object directly inside an array three deep starts (log.entries' items among them), by that
        # array's ordinal among the containers three deep: read_har's first pass finds the entries with them.
        self.kinds = bytearray()  # the open containers up to 3 deep: b"[" or b"{"
        self.third = -1  # ordinal of the current container three deep
        self.item_starts: list[tuple[int, int]] | None = None  # None: not recorded (past MAX_SORTED_ENTRIES)
        self.last_read = 0  # the size of the last read (read: doubled while a string runs past it)
        # By the nesting a skipped group may add (_skipper): none above an entry's own level (4: where item starts
        # are noted), none past max_depth.
        self._skips = [_skipper(min(max_string, MAX_HAR_KEY), k) for k in range(SKIP_NESTING + 1)]

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.raw.read(len(b))
        n = len(data)
        b[:n] = data
        self._scan(data)
        self.offset += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        """What ijson asks for, in reads of its buffer's size, but twice the last read's while a string runs past the
        last read (up to MAX_READ): its parser lexes a string that spans two reads again from its start at each
        read, so a 30 MB message read 64 KiB at a time cost half a minute (quadratic); growing reads make it a few
        passes. Only then: ijson holds a read's events until it has parsed all of it, so a large read of many small
        messages would hold them all (the streaming's memory)."""
        if size is None or size < 0:
            return super().read(-1)
        want = size
        if self.in_string and self.string_len >= self.last_read:
            want = min(max(size, 2 * self.last_read), MAX_READ)
        self.last_read = want
        data = self.raw.read(want)
        self._scan(data)
        self.offset += len(data)
        return data

    def _scan(self, data: bytes) -> None:
        pos, end = 0, len(data)
        if self.escape_pending and end:
            self.escape_pending = False
            self._grow(1)
            pos = 1
        while pos < end:
            if self.in_string:
                stop = self._BODY.match(data, pos).end()  # type: ignore[union-attr]  # matches the empty string
                self._grow(stop - pos)
                if stop == end:
                    return
                if data[stop] == 0x22:  # the closing quote
                    self.in_string = False
                    if self.string_len > MAX_HAR_KEY:
                        self.long_string = self.string_len
                    pos = stop + 1
                    continue
                # A backslash as the chunk's last byte: the byte it escapes starts the next chunk.
                self.escape_pending = True
                self._grow(1)
                return
            if self.long_string:
                pos = self._SPACE.match(data, pos).end()  # type: ignore[union-attr]  # matches the empty string
                if pos == end:
                    return  # what follows it is in the next chunk
                if data[pos] == 0x3A:  # ':' - it was a key
                    raise HarTooLarge(f"an object key of {self.long_string} bytes (over {MAX_HAR_KEY}) at byte "
                                      f"{self.offset + pos}")
                self.long_string = 0
            if not self.token_len:  # (a token the last chunk ended in: _tokens counts it on)
                nesting = min(SKIP_NESTING, self.max_depth - self.depth) if self.depth >= 4 else 0
                pos = self._skips[nesting].match(data, pos).end()  # type: ignore[union-attr]  # matches the empty string
            m = self._OUTSIDE.search(data, pos)
            self._tokens(data, pos, end if m is None else m.start())
            if m is None:
                return
            self.token_len = 0
            c = m.group()
            if c == b'"':
                self.in_string, self.string_len, self.string_at = True, 0, self.offset + m.start()
            elif c in (b"[", b"{"):
                self.depth += 1
                if self.depth > self.max_depth:
                    raise HarTooLarge(f"nested more than {self.max_depth} deep at byte {self.offset + m.start()}")
                if self.depth <= 3:
                    del self.kinds[self.depth - 1:]
                    self.kinds += c
                    self.third += self.depth == 3
                elif self.depth == 4 and c == b"{" and self.kinds[2:3] == b"[" and self.item_starts is not None:
                    self.item_starts.append((self.third, self.offset + m.start()))
                    if len(self.item_starts) > MAX_SORTED_ENTRIES:
                        self.item_starts = None
            else:
                self.depth -= 1
            pos = m.end()

    def _tokens(self, data: bytes, start: int, stop: int) -> None:
        """Raises HarTooLarge at the first token in data[start:stop] over MAX_HAR_TOKEN bytes (the first counting the
        `token_len` the last chunk ended in), and keeps the length of a token running to `stop` in `token_len`."""
        carried, self.token_len = self.token_len, 0
        if start == stop:
            return
        if carried:
            first = self._TOKEN.match(data, start, stop)
            if first is not None:
                n = carried + first.end() - start
                if n > MAX_HAR_TOKEN:
                    raise HarTooLarge(f"a number or literal longer than {MAX_HAR_TOKEN} bytes at byte {self.offset + start}")
                if first.end() == stop:
                    self.token_len = n
                    return
                start = first.end()
        long = self._LONG_TOKEN.search(data, start, stop)
        if long is not None:  # the leftmost run of so many token bytes starts the first token over the limit
            raise HarTooLarge(f"a number or literal longer than {MAX_HAR_TOKEN} bytes at byte {self.offset + long.start()}")
        if data[stop - 1] not in _SEPARATORS:  # a token runs to `stop`
            last = stop - 1
            while last > start and data[last - 1] not in _SEPARATORS:
                last -= 1
            self.token_len = stop - last

    def _grow(self, n: int) -> None:
        self.string_len += n
        if self.string_len > self.max_string:
            raise HarTooLarge(f"a string longer than the {self.max_string} byte limit at byte {self.string_at}")


_B64_SPACE = {ord(c): None for c in " \t\r\n"}


def _base64(text: str) -> bytes:
    """A HAR's base64 (a binary WebSocket message, a body with `encoding: base64`): RFC 4648's alphabet, its lines
    wrapped or not; binascii.Error for anything else. base64.b64decode without validate drops every character outside
    the alphabet and decodes the rest: a body that was not base64 read as one."""
    return base64.b64decode(text.translate(_B64_SPACE), validate=True)


def _epoch(v: Any) -> float | None:
    """A HAR message time: epoch seconds (Chromium), or milliseconds when the number is too big to be seconds."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, int) and not -MAX_TIME * 1000 <= v <= MAX_TIME * 1000:
        return None  # (an integer of hundreds of digits is no float: math.isfinite raised OverflowError)
    if not math.isfinite(v):
        return None
    t = v / 1000.0 if v > 1e11 else float(v)
    return t if abs(t) <= MAX_TIME else None


def _record_time(v: Any) -> float | None:
    """A JSON Lines record's `t` in epoch seconds, or None when it is no time. Epoch seconds as `--record` writes
    them; what other tools' logs write is read too: epoch milliseconds (JavaScript's Date.now(), a number past 1e11,
    as _epoch reads a HAR's) and an ISO 8601 date and time (`2025-12-02T01:00:00.123Z`, an offset, nanoseconds; one
    without an offset is UTC: a log's own clock, never this machine's zone)."""
    if isinstance(v, str):
        if len(v) > 64 or len(v) < 16:  # (a date alone is no time of a frame)
            return None
        t = _iso(v)
        return t if t is not None and abs(t) <= MAX_TIME else None
    return _epoch(v)


def _iso(v: Any) -> float | None:
    """An ISO 8601 date and time in epoch seconds; one without an offset is UTC (a recording's own clock, never this
    machine's zone: HAR 1.2 asks for an offset, and a message's time beside it is epoch seconds)."""
    if not isinstance(v, str):
        return None
    try:
        # (RFC 3339 5.6: the "T" and "Z" may be written in lower case; a long text, no time, is not copied)
        when = datetime.fromisoformat(v.upper() if len(v) <= 64 else v)
    except ValueError:
        return None
    return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()


class _Entry:
    """What is kept of one HAR entry while it is parsed: small fields, and an SSE body and request (bounded)."""

    __slots__ = ("accept", "closed", "content_type", "encoding", "encoding_other", "events", "events_bytes",
                 "events_cut", "events_missing", "failure", "frames", "held_error", "http_version", "index", "messages",
                 "mime", "post", "post_file", "resource_type", "started", "status", "text", "text_file", "upgrade")

    def __init__(self, index: int) -> None:
        self.index = index
        self.started: float | None = None
        self.mime = ""
        self.content_type = ""
        self.text: str | None = None
        self.encoding = ""
        self.encoding_other = ""  # an `encoding` that is no string, as its JSON shows it (no encoding HAR defines)
        self.post: str | None = None
        # A body or request body Playwright attached as a file beside the HAR (`_file`; its text is absent or "").
        self.text_file = ""
        self.post_file = ""
        self.messages = 0
        self.closed = False  # a WebSocket message of type "error" ended the connection
        # What tells a request for an event stream that got none (_stream_refused): its Accept header, Chromium's
        # `_resourceType` ("eventsource"), the response's status (0: none came) and Chromium's `_error` (why not).
        self.accept = ""
        self.upgrade = ""  # the request's Upgrade header: a WebSocket's handshake
        self.resource_type = ""
        self.frames = 0  # the data frames (send, receive) of its `_webSocketMessages` read so far
        # The browser's failing of a socket before any data frame (a message of type "error"), held to the entry's end:
        # a handshake the server refused (its status is read after the messages) is a connection that failed.
        self.held_error: Recorded | None = None
        self.status: int | None = None
        self.failure = ""
        self.http_version = ""  # the response's: over HTTP/2 or 3 a WebSocket opens with a 2xx (RFC 8441, 9220)
        # Chromium's `_eventSourceMessages` (time, data), held until the entry ends (its request may come after
        # them), bounded as an SSE body is: each counts its data's bytes and HAR_EVENT_COST (an empty one too).
        self.events: list[tuple[float | None, str]] = []
        self.events_bytes = 0
        self.events_cut = 0  # the byte limit the events went past (they are dropped then), else 0
        # Events the export left the data out of (a sanitized HAR): counted only, and none is held from the first
        # (the stream cannot be judged at its events' times then).
        self.events_missing = 0


_ENTRY = "log.entries.item"
_ENCODING = "log.entries.item.response.content.encoding"
# HAR 1.2's one `encoding` of a body's text ("e.g. base64"; left out for text decoded to UTF-8). Compared without case,
# as MIME's Content-Transfer-Encoding values it follows are.
HAR_BASE64 = "base64"
# What holding one of an entry's `_eventSourceMessages` costs beyond its data's bytes (its tuple, time and string
# objects, its place in the list): counted against the entry's byte limit, so that a file of millions of empty
# messages (`{}` is two bytes) cannot hold memory the limit does not see.
HAR_EVENT_COST = 128
_MSG = "log.entries.item._webSocketMessages.item"
_SSE_MSG = "log.entries.item._eventSourceMessages.item"
# ijson's events of a value that is no string (null is no value: no encoding), and how a message shows a container.
_NOT_TEXT = {"number": "", "integer": "", "boolean": "", "start_map": "{…}", "start_array": "[…]"}
_ENTRY_FIELDS = {
    "log.entries.item.startedDateTime": "started",
    "log.entries.item.response.content.mimeType": "mime",
    "log.entries.item.response.content.text": "text",
    "log.entries.item.response.content.encoding": "encoding",
    "log.entries.item.request.postData.text": "post",
    "log.entries.item.response.content._file": "text_file",
    "log.entries.item.request.postData._file": "post_file",
    "log.entries.item._resourceType": "resource_type",
    "log.entries.item.response._error": "failure",
    "log.entries.item.response._failureText": "failure",  # Playwright's recordHar: the browser's reason, status -1
    "log.entries.item.response.httpVersion": "http_version",
}
_RESOURCE_TYPE = "log.entries.item._resourceType"
EVENT_SOURCE = "eventsource"  # Chromium's `_resourceType` of an EventSource's request
WEBSOCKET = "websocket"  # Chromium's `_resourceType` of a WebSocket, and the Upgrade header's value
_STATUS = "log.entries.item.response.status"
SWITCHING_PROTOCOLS = 101
# A Recorded direction: a HAR's WebSocket that lists no message (no frame, no chat; offline counts them).
SILENT = "silent"
# A Recorded direction: something about the file a person should know that changes no record (its detail: a warning).
NOTE = "note"
ASIDES = frozenset({SILENT, NOTE})
# The lists of a request (and its response) whose items may carry a credential, by the header they stand for.
_CREDENTIAL_LISTS = {
    "log.entries.item.request.headers.item": "",
    "log.entries.item.request.cookies.item": "cookie",
    "log.entries.item.request.queryString.item": "query",
    "log.entries.item.response.headers.item": "",
    "log.entries.item.response.cookies.item": "cookie",
}
_REQUEST_HEADER = "log.entries.item.request.headers.item"
_REQUEST_ENDS = frozenset({"log.entries.item.request", "log.entries.item.response"})
MAX_CREDENTIAL = 16 * 1024  # bytes of a header value or URL looked at for credentials (a longer one is none)


class _HarSecrets:
    """The credentials a HAR's requests carried, registered as secrets (redact.register) so that no report, JUnit,
    JSON, HTML or terminal line shows one a server echoed: what `chatprobe proxy` keeps out of its recordings for
    each connection (redact.credentials_of), here for each entry."""

    __slots__ = ("headers", "registered", "subprotocols", "urls")

    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.subprotocols: list[str] = []
        self.urls: list[str] = []
        self.registered: set[str] = set()

    def add(self, kind: str, pair: dict[str, str]) -> None:
        name, value = pair.get("name", ""), pair.get("value", "")
        if not value or len(self.headers) >= 256:
            return
        if kind == "cookie":
            self.headers.append(("cookie", f"{name}={value}"))
        elif kind == "query":
            self.urls.append(f"?{name}={value}")
        elif name.lower() == "sec-websocket-protocol":
            self.subprotocols += [p.strip() for p in value.split(",")][:16]
        else:
            self.headers.append((name, value))

    def url(self, url: str) -> None:
        self.urls.append(url)

    def register(self, where: str) -> None:
        """Every credential read since the last call registered; `where` (the file and byte) names the entry when the
        process holds as many secrets as it may (redact.MAX_SECRETS, MAX_SECRET_BYTES): then the check ends, exit 2,
        before any frame that could echo the credential is judged (one not registered could reach a report)."""
        found = redact.credentials_of(self.headers, self.subprotocols, "")
        for url in self.urls:
            found += redact.credentials_of((), (), url)
        self.headers, self.subprotocols, self.urls = [], [], []
        for secret in found:
            if secret not in self.registered:
                try:
                    redact.register(secret)
                except redact.SecretsFull as exc:
                    raise RecordingError(f"{where}: a credential of this HAR entry's request is not registered as "
                                         f"a secret: {exc}; check fewer HAR files at once") from None
                self.registered.add(secret)


class _At(io.RawIOBase):
    """A file read from byte `at` on by position (os.pread), never by the descriptor's own offset: another reader of
    the same open file (the other pass over a HAR) moves nothing here, and the file read is the one opened, however
    its name is reused meanwhile (a file replaced, a FIFO put in its place)."""

    def __init__(self, fd: int, at: int = 0) -> None:
        self._fd = fd
        self._at = at

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = os.pread(self._fd, len(b), self._at)
        n = len(data)
        b[:n] = data
        self._at += n
        return n


def har_order(fd: int, max_text: int = DEFAULT_MAX_TEXT) -> list[tuple[int, int]] | None:
    """The entries of a HAR file as (index, byte offset) sorted by startedDateTime, when they are not in that order
    in the file (HAR 1.2: "the reader application should always make sure the array is sorted"): a resumed chat's
    connections must be read in the order they were opened. None when they are in order already, or the file is no
    regular file, holds more than MAX_SORTED_ENTRIES entries of a chat's traffic (WebSocket, event stream) or cannot
    be parsed whole (then it is read as it is, and the reading says what is wrong with it). A first pass over the file
    opened (`fd`), holding three numbers per such entry and none per other entry (a browser's images, scripts and
    calls: most of a long session's entries), whose byte offsets are taken from the guard as each entry ends."""
    import ijson

    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # (a pipe or a device is read once, as it comes)
            return None
        # The file opened (`fd`), read by position: its offset is the other pass's.
        raw = _At(fd, 3 if os.pread(fd, 3, 0) == b"\xef\xbb\xbf" else 0)
        capped = _Prefixed(b"", raw, MAX_RECORDING_BYTES)  # (a file that grew past it: read as it is)
        guard = _BoundedJSON(io.BufferedReader(capped, CHUNK), max_text, MAX_HAR_DEPTH)
        guard.item_starts = []
        taken = 0  # the guard's item starts read so far (those before it are dropped now and then)
        depth, third, entries_third = 0, -1, -1
        # Of each entry of a chat's traffic: its ordinal among the entries, its start (an entry without a time keeps
        # its place after the one before it) and its byte offset.
        indices, keys, offsets = array("q"), array("d"), array("q")
        n_entries, last = 0, float("-inf")
        started: float | None = None
        chat = in_entry = False  # (chat: the entry holds WebSocket messages or an SSE response, a chat's traffic)
        for prefix, event, value in ijson.parse(_Reads(guard), buf_size=CHUNK, use_float=True):
            if event in ("start_map", "start_array"):
                depth += 1
                if depth == 3:
                    third += 1
                    if prefix == "log.entries" and event == "start_array":
                        entries_third = third
            elif event in ("end_map", "end_array"):
                depth -= 1
            elif prefix == "log.entries.item.startedDateTime" and depth == 4 and in_entry:
                started = _iso(value)
            elif in_entry and event == "string" and prefix in _SSE_TYPE_FIELDS and value.lower().startswith(EVENT_STREAM):
                chat = True
            elif in_entry and event == "string" and prefix == _RESOURCE_TYPE and value.lower() in (EVENT_SOURCE, WEBSOCKET):
                chat = True
            elif in_entry and prefix == _STATUS and value == SWITCHING_PROTOCOLS:  # (a socket listing no message: SILENT)
                chat = True
            if prefix == _ENTRY and event == "start_map":
                started, chat, in_entry = None, False, True
            elif prefix == _ENTRY and event == "end_map":
                # This entry's start is among the guard's (which reads ahead of the parser): the next one in log.entries.
                starts = guard.item_starts
                if starts is None:
                    return None
                while taken < len(starts) and starts[taken][0] != entries_third:
                    taken += 1
                if taken == len(starts):
                    return None
                last = started if started is not None else last
                if chat:
                    if len(indices) >= MAX_SORTED_ENTRIES:
                        return None
                    indices.append(n_entries)
                    keys.append(last)
                    offsets.append(starts[taken][1])
                taken += 1
                if taken >= 4096:
                    del starts[:taken]
                    taken = 0
                n_entries += 1
                in_entry = False
            elif prefix in _MESSAGE_LISTS and event == "start_array" and in_entry:
                chat = True
    except (OSError, HarTooLarge, ValueError, UnicodeDecodeError, ijson.JSONError):
        return None
    if guard.item_starts is None or capped.capped:
        return None
    order = sorted(range(len(keys)), key=keys.__getitem__)  # only these entries are read again
    if all(i == n for n, i in enumerate(order)):
        return None
    return [(indices[i], offsets[i]) for i in order]


def read_har_sorted(fd: int, order: list[tuple[int, int]], name: str, max_frame: int = DEFAULT_MAX_FRAME,
                    max_text: int = DEFAULT_MAX_TEXT, *, base_dir: Path | None = None, path: str | None = None
                    ) -> Iterator[Recorded]:
    """A HAR file's entries read in the order given (har_order): each parsed alone from its offset in the file opened
    (`fd`, by position: never opened again by its name, which may name another file by then)."""
    secrets = _HarSecrets()  # one bound on the credentials registered for the whole file
    times = _Unread("time", "WebSocket messages")  # (none of the file's message times read: exit 2, as read_har)
    for index, offset in order:
        stream = io.BufferedReader(_Prefixed(_ENTRIES_OPEN, _At(fd, offset)), ONE_ENTRY_BUFFER)
        yield from read_har(stream, name, max_frame, max_text, first_index=index, one_entry=True,
                            base_offset=offset - len(_ENTRIES_OPEN), base_dir=base_dir, secrets=secrets, path=path,
                            times=times)
    times.end()


_ENTRIES_OPEN = b'{"log": {"entries": ['
# HAR 1.2's one rule on where the entries are (an empty array is a HAR with no request in it: "no chat found").
_HAR_ENTRIES = "(HAR 1.2 requires log.entries to be an array of the requests)"
# What a JSON value is, by ijson's first event of it (a value other than an array where one is required).
_JSON_KINDS = {"start_map": "an object", "string": "a string", "number": "a number", "integer": "a number",
               "boolean": "true or false", "null": "null"}
_MESSAGE_LISTS = frozenset({"log.entries.item._webSocketMessages", "log.entries.item._eventSourceMessages"})
# Where an entry says it is (or asked for) an event stream: a request for one that got none is a chat that failed.
_SSE_TYPE_FIELDS = frozenset({"log.entries.item.response.content.mimeType", "log.entries.item.response.headers.item.value",
                              "log.entries.item.request.headers.item.value"})
ONE_ENTRY_BUFFER = 8192  # an entry read alone from its offset: what is read past its end is read for nothing


def read_har(f: IO[bytes], name: str, max_frame: int = DEFAULT_MAX_FRAME,
             max_text: int = DEFAULT_MAX_TEXT, *, first_index: int = 0, one_entry: bool = False,
             base_offset: int = 0, base_dir: Path | None = None, secrets: _HarSecrets | None = None,
             path: str | None = None, times: _Unread | None = None
             ) -> Iterator[Recorded]:
    """WebSocket messages (`_webSocketMessages`, Chromium's and Firefox's form: type send/receive, time in epoch
    seconds, opcode 1 text / 2 binary base64, data; type "error": the browser failed the connection) on connection
    "ws<entry>", closed at the end of the entry; and SSE responses (content.mimeType text/event-stream) as stream
    "sse<entry>": the request body as the client frame sent at startedDateTime, then the events: Chromium's
    `_eventSourceMessages` at their times when each has its data, else the body's (no times). Streamed with ijson:
    one WebSocket message at a time (an SSE response's events are held until its entry ends, bounded). A body or
    request a writer attached as a file (Playwright's `_file`) is read from `base_dir` (the HAR's own directory), a
    plain file name only. A request for an event stream that got none, and a WebSocket whose handshake failed, is a
    `failed` close record (an `error` chat, as live); a socket that lists no message a SILENT record (counted, so a
    check that finds no chat can say why). The credentials each request carried (its Authorization, cookies,
    credential-like headers and query parameters, a `jwt.` subprotocol) are registered as secrets (harness/redact.py)
    as they are read: a server that echoes one shows it in no report."""
    import ijson  # a compiled streaming parser; imported here so the JSON Lines path needs no extra package

    guard = _BoundedJSON(f, max_text, MAX_HAR_DEPTH)
    shown = path or name  # the file as the command named it, in what ends the check (exit 2)
    guard.offset = base_offset  # where `f` starts in the file: the offsets said are the file's
    entry: _Entry | None = None
    msg: dict[str, Any] | None = None
    # An entry read alone (read_har_sorted) follows a `{"log":` of our own, the whole file having been parsed as a HAR
    # by the first pass: what stops it is the file cut short there (an R12), never "not a HAR file" (exit 2), entries
    # judged already, should the file have been written over in place since.
    seen_log = seen_entries = one_entry
    judged = False  # a record to judge was read (a message, an entry's chat): a file cut before that holds none
    n_entries = first_index
    pair: dict[str, str] | None = None  # a request's header, cookie or query parameter being read (name, value)
    secrets = secrets or _HarSecrets()
    own_times = times is None  # (entries read alone share their file's, read_har_sorted)
    times = times or _Unread("time", "WebSocket messages")
    try:
        for prefix, event, value in ijson.parse(_Reads(guard), buf_size=ONE_ENTRY_BUFFER if one_entry else CHUNK,
                                                use_float=True):
            if entry is not None and prefix in _CREDENTIAL_LISTS:
                if event == "start_map":
                    pair = {}
                elif event == "end_map" and pair is not None:
                    secrets.add(_CREDENTIAL_LISTS[prefix], pair)
                    if prefix == _REQUEST_HEADER and pair.get("name", "").lower() in ("accept", "upgrade"):
                        setattr(entry, pair["name"].lower(), pair.get("value", "")[:200])
                    pair = None
                continue
            if pair is not None and event == "string" and prefix.rpartition(".")[0] in _CREDENTIAL_LISTS:
                field = prefix.rpartition(".")[2]
                if field in ("name", "value") and len(value) <= MAX_CREDENTIAL:
                    pair[field] = value
            if prefix == _MSG:
                if event == "start_map":
                    msg = {}
                elif event == "end_map" and msg is not None and entry is not None:
                    entry.messages += 1
                    if (got := _ws_message(msg, entry, name, max_frame)) is not None:
                        judged = True
                        if not times.read and (got.t is not None or got.detail is HAR_TIME_UNREAD):
                            times.saw(got.detail is not HAR_TIME_UNREAD,
                                      f"{shown}: entry {entry.index} message {entry.messages}", msg.get("time"))
                        yield got
                    msg = got = None
            elif msg is not None and prefix.startswith(_MSG + ".") and event in ("string", "number", "integer"):
                key = prefix[len(_MSG) + 1:]
                if key in ("type", "time", "opcode", "data"):
                    msg[key] = value
            elif prefix == _SSE_MSG:
                if event == "start_map":
                    msg = {}
                elif event == "end_map" and msg is not None and entry is not None:
                    _sse_message(msg, entry, max_text)
                    msg = None
            elif msg is not None and prefix.startswith(_SSE_MSG + ".") and event in ("string", "number", "integer"):
                key = prefix[len(_SSE_MSG) + 1:]
                if key in ("time", "data"):
                    msg[key] = value
            elif prefix == _ENTRY:
                if event == "start_map":
                    entry = _Entry(n_entries)
                    n_entries += 1
                elif event == "end_map" and entry is not None:
                    secrets.register(f"{shown}: byte {guard.offset}")
                    for got in _entry_end(entry, name, max_frame, base_dir=base_dir, max_text=max_text):
                        judged = judged or got.direction not in ASIDES
                        yield got
                    entry = None
                    if one_entry:
                        return
            elif entry is not None and prefix == _ENCODING and event in _NOT_TEXT:
                # No string at all: no encoding HAR defines (an R12 where the body is read, _entry_end).
                entry.encoding_other = _NOT_TEXT[event] if event in ("start_map", "start_array") else json.dumps(value)
            elif entry is not None and prefix == _STATUS and event in ("number", "integer"):
                entry.status = int(value) if isinstance(value, int) or (isinstance(value, float) and value.is_integer()
                                                                         and abs(value) < 1000) else None
                if entry.status is not None and not 100 <= entry.status <= 999:
                    entry.status = 0  # no HTTP status (a writer's -1 for "none", as HAR writes unknown sizes): no answer
            elif entry is not None and prefix in _ENTRY_FIELDS and event == "string":
                attr = _ENTRY_FIELDS[prefix]
                setattr(entry, attr, _iso(value) if attr == "started" else value)
            elif entry is not None and prefix == "log.entries.item.request.url" and event == "string":
                if len(value) <= MAX_CREDENTIAL:
                    secrets.url(value)
            elif entry is not None and prefix in _REQUEST_ENDS and event == "end_map":
                secrets.register(f"{shown}: byte {guard.offset}")  # before any of the entry's frames is judged
            elif entry is not None and prefix == "log.entries.item.response.headers.item.value" and event == "string":
                if value.lower().startswith(EVENT_STREAM):
                    entry.content_type = EVENT_STREAM
            elif prefix == "log" and event == "start_map":
                seen_log = True
            elif prefix == "log.entries" and seen_log and not seen_entries:
                if event != "start_array":  # (an object's entries would be read as none: "no chat found")
                    raise RecordingError(f"{shown}: not a HAR 1.2 file: field log.entries is {_JSON_KINDS[event]}, "
                                         f"not an array {_HAR_ENTRIES}")
                seen_entries = True
    except HarTooLarge as exc:
        secrets.register(f"{shown}: byte {guard.offset}")
        conn = _conn_of(entry)
        if not seen_log:
            raise RecordingError(f"{shown}: not a HAR file ({exc})") from None
        if entry is not None:  # what came of it is judged as it stood (an SSE body past the limit: its request)
            yield from _entry_end(entry, name, max_frame, complete=False, base_dir=base_dir, max_text=max_text,
                                  cut=f"the HAR was read no further: {exc}")
        yield Recorded("problem", conn, detail=f"HAR file cut short: {exc}", where=f"{name}: byte {guard.offset}")
        return
    except (ijson.JSONError, ValueError, UnicodeDecodeError) as exc:
        if not seen_log:
            raise RecordingError(f"{shown}: not a HAR file (invalid JSON near byte {guard.offset})") from None
        secrets.register(f"{shown}: byte {guard.offset}")
        # The parser's own words only: its message goes on to quote the file's bytes around the error, and a HAR
        # broken inside a request's headers (their credentials not registered yet) would show a credential there.
        # yajl's message may be bytes, whose repr is one line, the quoted bytes and all: decoded first.
        said = exc.args[0] if exc.args and isinstance(exc.args[0], bytes | bytearray) else None
        text = bytes(said).decode("utf-8", "replace") if said is not None else str(exc)
        message = " ".join((text.strip().splitlines() or [exc.__class__.__name__])[0].split())[:120]
        what = "truncated" if "premature eof" in message.lower() or "incomplete" in message.lower() else "invalid JSON"
        tail = [] if entry is None else list(_entry_end(
            entry, name, max_frame, complete=False, base_dir=base_dir, max_text=max_text,
            cut=f"the HAR file is cut short (or broken) in this entry, near byte {guard.offset}"))
        if not judged and not one_entry and all(got.direction in ASIDES for got in tail):
            # Cut (or broken) before any message or chat of it was read: nothing to judge, as a JSON Lines file cut
            # inside its first record (never "no chat found" and an R12 held against no server).
            raise RecordingError(f"{shown}: the HAR file is {what} near byte {guard.offset} ({message}), before any "
                                 "of its WebSocket messages or requests was read: nothing to judge") from None
        yield from tail
        yield Recorded("problem", _conn_of(entry), detail=f"HAR file {what} near byte {guard.offset}: {message}",
                       where=f"{name}: byte {guard.offset}")
        return
    if not seen_log:
        raise RecordingError(f"{shown}: not a HAR file (no \"log\" object)")
    if not seen_entries:
        raise RecordingError(f"{shown}: not a HAR 1.2 file: field log.entries is missing {_HAR_ENTRIES}")
    if own_times:
        times.end()


def _conn_of(entry: _Entry | None) -> str:
    if entry is None:
        return DEFAULT_CONN
    return f"ws{entry.index}" if entry.messages else f"sse{entry.index}"


# WebSocket control frames (RFC 6455: close, ping, pong), which some writers list among the messages beside Chromium's
# data frames (opcode 1 text, 2 binary): no frame of any chat. The connection's end is the entry's end.
WS_CONTROL_OPCODES = frozenset({8, 9, 10})


def _opcode(value: Any) -> int | None:
    """A WebSocket message's `opcode` as the number it names: Chromium writes a number, other writers (a HAR built by a
    script, a converter) the same number as a string ("8", "2") or a float (2.0); a control frame or a binary one
    written so is the same frame. None for anything else (judged as a text frame, as a message without `opcode`)."""
    if isinstance(value, str):
        value = value.strip()
        return int(value) if value.isascii() and value.isdigit() and len(value) <= 3 else None
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 1000 else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


HAR_TIME_UNREAD = ("field 'time' must be a time in epoch seconds (or milliseconds), or an ISO 8601 date and time, never a "
                   "number written as a string")


def _ws_message(msg: dict[str, Any], entry: _Entry, name: str, max_frame: int) -> Recorded | None:
    conn = f"ws{entry.index}"
    where = f"{name}: entry {entry.index} message {entry.messages}"
    raw_time = msg.get("time")
    t = _record_time(raw_time) if raw_time is not None else None  # (the rule of a JSON Lines record's `t`)
    kind = msg.get("type")
    if kind == "error":
        # Chromium's record of the browser failing the connection ("Invalid frame header", "Could not decode a text
        # frame as UTF-8."): no frame, the end of the connection, for what the server sent: an R12, as live.
        entry.closed = True
        data = msg.get("data")
        why = data[:1024] if isinstance(data, str) and data else "no reason given"
        failed = Recorded("close", conn, t=t, where=where, error=f"the browser failed the WebSocket connection: {why}")
        if not entry.frames:  # perhaps its handshake (_socket_refused): told at the entry's end
            entry.held_error = failed
            return None
        return failed
    opcode = _opcode(msg.get("opcode"))
    if opcode in WS_CONTROL_OPCODES and kind in ("send", "receive"):
        return None
    direction = {"send": "send", "receive": "recv"}.get(kind) if isinstance(kind, str) else None
    if direction is None:
        return Recorded("problem", conn, t=t, detail=f"WebSocket message type {str(kind)[:20]!r} is not send or "
                        "receive", where=where)
    if raw_time is not None and t is None:
        return Recorded("problem", conn, detail=HAR_TIME_UNREAD, where=where)
    data = msg.get("data")
    if not isinstance(data, str):
        return Recorded("problem", conn, t=t, detail="WebSocket message without data", where=where)
    frame: str | bytes = data
    if opcode == 2:  # a binary frame, base64 in the HAR
        try:
            frame = _base64(data)
        except (binascii.Error, ValueError):
            return Recorded("problem", conn, t=t, detail="binary WebSocket message not in base64", where=where)
    entry.frames += 1
    if frame_bytes(frame) > max_frame:
        return Recorded("problem", conn, t=t, detail=f"frame larger than the {max_frame} byte limit", where=where)
    return Recorded(direction, conn, t=t, frame=frame, where=where)


def _sse_message(msg: dict[str, Any], entry: _Entry, max_text: int) -> None:
    """One of Chromium's `_eventSourceMessages` (time, eventName, eventId, data: the event's data lines joined, as
    the harness's SSE parser gives them; no data in a sanitized export), kept for the entry's end."""
    if entry.events_cut:
        return
    data = msg.get("data")
    if not isinstance(data, str) or entry.events_missing:
        entry.events_missing += not isinstance(data, str)
        entry.events = []  # not judged at their times (_entry_end): nothing of them is kept
        return
    entry.events_bytes += frame_bytes(data) + HAR_EVENT_COST
    if entry.events_bytes > max_text:
        entry.events_cut, entry.events = max_text, []  # said at the entry's end (an R12)
        return
    entry.events.append((_epoch(msg.get("time")), data))


def _sse_events(entry: _Entry, conn: str, where: str, max_frame: int, timed: bool) -> Iterator[Recorded]:
    """An SSE response's events from Chromium's `_eventSourceMessages`, each at its time; or, when the HAR holds no
    event data (a sanitized export leaves it out, a browser may keep no body of an EventSource), a dropped record:
    the stream's chat is judged as it stood there, never held against the server for what the file lacks."""
    if entry.events_cut:
        yield Recorded("problem", conn, t=entry.started, where=where,
                       detail=f"the response's events are larger than the {entry.events_cut} byte limit of one HAR body")
        return
    if not timed:
        missing = entry.events_missing
        if missing:
            yield Recorded("dropped", conn, t=entry.started, detail=f"the data of {missing} event(s)", where=where,
                           error="a sanitized HAR export leaves event data out: save the HAR unsanitized")
        else:
            yield Recorded("dropped", conn, t=entry.started, detail="the response body", where=where,
                           error="the browser kept no body of this text/event-stream response")
        return
    events = entry.events
    entry.events = []
    events.reverse()
    n = 0
    while events:  # popped: the suspended generator holds no yielded frame
        t, data = events.pop()
        n += 1
        if frame_bytes(data) > max_frame:
            yield Recorded("problem", conn, t=t, detail=f"frame larger than the {max_frame} byte limit",
                           where=f"{where} event {n}")
        else:
            yield Recorded("recv", conn, t=t, frame=data, where=f"{where} event {n}", stream=True)


def _attached(base_dir: Path | None, file: str, limit: int) -> bytes | str:
    """The bytes of a file a HAR writer attached beside the HAR (Playwright's `_file`), or why they are not read. Only
    a plain file name in the HAR's own directory: a HAR may be anyone's, and a name with a path (`../`, `/etc/…`), a
    link or anything but a regular file is refused, never followed. At most `limit` bytes, as a body in the HAR."""
    if (base_dir is None or not file or file in (".", "..") or "/" in file or "\\" in file or "\0" in file
            or file != file.strip() or os.path.isabs(file) or (len(file) > 1 and file[1] == ":")):
        return f"_file {file[:200]!r} is not a file name next to the HAR (only such a file is read)"
    try:
        fd = os.open(base_dir / file, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        return f"_file {file[:200]!r} cannot be read next to the HAR ({(exc.strerror or 'error').lower()})"
    try:
        # fstat before any file object: os.fdopen refuses a directory with an OSError that would end the whole
        # check (exit 2, "cannot read the recording") for one entry's attachment.
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return f"_file {file[:200]!r} is not a regular file"
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1) or b""
    except OSError as exc:
        return f"_file {file[:200]!r} cannot be read next to the HAR ({(exc.strerror or 'error').lower()})"
    finally:
        os.close(fd)
    if len(data) > limit:
        return f"_file {file[:200]!r} is larger than the {limit} byte limit of one HAR body"
    return data


def _is_socket(entry: _Entry) -> bool:
    """Whether an entry is a WebSocket's: Chromium's `_resourceType`, the request's `Upgrade`, or messages listed."""
    return (entry.resource_type.lower() == WEBSOCKET or entry.upgrade.strip().lower() == WEBSOCKET
            or entry.messages > 0)


NO_SOCKET_ANSWER = ("a WebSocket handshake the HAR holds no answer to and no reason for: the browser failed, blocked "
                    "or cancelled it (Firefox's HAR export names no reason, status 0 with no error field; Chrome's and "
                    "Edge's write `_error`), or it was still pending when the HAR was saved; no message was sent on "
                    "it, so no chat is judged for it")


def _socket_opened(entry: _Entry) -> bool:
    """Whether an entry's answer opened a WebSocket: 101 Switching Protocols, or over HTTP/2 or HTTP/3 (extended
    CONNECT, RFC 8441 and 9220: Firefox's, Chromium's where the server offers it) a 2xx, which over HTTP/1.1 is a
    server that ignored the upgrade."""
    status = entry.status or 0
    if status == SWITCHING_PROTOCOLS:
        return True
    version = entry.http_version.strip().lower()
    return 200 <= status < 300 and version.startswith(("h2", "h3", "http/2", "http/3"))


def _socket_refused(entry: _Entry, name: str, held: Recorded | None) -> Recorded:
    """A WebSocket whose handshake failed (an answer other than 101, or none: Chromium's `_error`, or its message of
    type "error" before any frame): a connection that failed, as a live client counts it (transports: 401/403
    auth_failed, 503 refused, another status protocol_error; no answer by Chromium's net error), the chat that was to
    use it an `error` chat, never "no chat found" nor an R12 on no chat."""
    conn, where = f"ws{entry.index}", f"{name}: entry {entry.index}"
    t = held.t if held is not None and held.t is not None else entry.started
    if entry.status:
        kind, reason = refused_upgrade(entry.status)
    else:
        error = " ".join(entry.failure.split())[:200]
        why = held.error if held is not None else f"the browser failed the WebSocket connection: {error}"
        kind, reason = _browser_failure(f"{error} {why}"), why
    return Recorded("close", conn, t=t, where=where, failed=kind, reason=reason)


def _wants_stream(entry: _Entry) -> bool:
    """Whether an entry's request asked for an event stream and nothing else: an EventSource's (Chromium's
    `_resourceType`), or one whose Accept names text/event-stream alone (EventSource's, AG-UI's HttpAgent's). A request
    that also accepts JSON (an MCP client's `application/json, text/event-stream`) may be answered with JSON: no chat."""
    if entry.resource_type.lower() == EVENT_SOURCE:
        return True
    ranges = [r.partition(";")[0].strip().lower() for r in entry.accept.split(",")]
    ranges = [r for r in ranges if r]
    return bool(ranges) and all(r == EVENT_STREAM for r in ranges)


def _browser_failure(error: str) -> str:
    """The browser's error for a request that got no response (Chromium's `_error`, `net::ERR_…`; Playwright's
    `_failureText`, that or Firefox's `NS_ERROR_…` by the browser it drove) as a connections_total result, as the live
    client classifies its own failure to connect (transports/sse.classify_http)."""
    code = error.upper()
    if "TIMED_OUT" in code or "NET_TIMEOUT" in code:
        return "timeout"
    if "CERT" in code or "SSL" in code or "SEC_ERROR" in code:
        return "tls_error"
    if any(k in code for k in ("CONNECTION_", "NAME_", "ADDRESS_", "INTERNET_DISCONNECTED", "EMPTY_RESPONSE",
                                "NETWORK_", "UNKNOWN_HOST", "NET_RESET", "NET_INTERRUPT")):
        return "refused"
    return "protocol_error"  # blocked (CORS's ERR_FAILED, a client's blocker), a response the browser refused


def _stream_refused(entry: _Entry, name: str, max_frame: int) -> Iterator[Recorded]:
    """A request for an event stream that got none (_wants_stream): the chat it was is an `error` chat of the kind a
    live client would have counted (a `failed` close record: HTTP 401/403 auth_failed, 503 refused, another status or
    a content type that is no event stream protocol_error, `net::ERR_CONNECTION_REFUSED` refused, …), never "no chat
    found". A request the page cancelled before any response (`net::ERR_ABORTED`: the user left, the page aborted
    it), or with no response and no reason (pending when the HAR was saved, or failed in a Firefox HAR: Firefox's
    export writes status 0 and nothing of why, har-builder.js), is judged as it stood (incomplete, the note saying
    why), never held against the server. A redirect the browser followed is no chat: where it led is an
    entry of its own."""
    if entry.status is not None and 300 <= entry.status < 400:
        return  # the browser followed the redirect: where it led is an entry of its own
    conn = f"sse{entry.index}"
    where = f"{name}: entry {entry.index}"
    if entry.post:
        yield Recorded("send", conn, t=entry.started, frame=_cut(entry.post, max_frame), where=f"{where} request")
    if entry.status:
        failure = refused_response(entry.status, entry.mime)
        kind, reason = failure or ("protocol_error", f"HTTP {entry.status} with no event stream")
        yield Recorded("close", conn, t=entry.started, where=where, failed=kind, reason=reason, stream=True)
        return
    error = " ".join(entry.failure.split())[:200]
    if not error:
        yield Recorded("dropped", conn, t=entry.started, detail="the response", where=where,
                       error="the HAR holds no response to this request for an event stream and no reason: the "
                             "browser failed, blocked or cancelled it (Firefox's HAR export names no reason, status 0 "
                             "with no error field; Chrome's and Edge's write `_error`), or it was still pending when "
                             "the HAR was saved")
        yield Recorded("close", conn, t=entry.started, where=where, stream=True)
    elif "ERR_ABORTED" in error.upper() or "NS_BINDING_ABORTED" in error.upper():
        yield Recorded("dropped", conn, t=entry.started, detail="the response", where=where,
                       error=f"the page cancelled its request for an event stream before any response ({error})")
        yield Recorded("close", conn, t=entry.started, where=where, stream=True)
    else:
        yield Recorded("close", conn, t=entry.started, where=where, failed=_browser_failure(error),
                       reason=f"the browser failed the request for an event stream: {error}", stream=True)


def _entry_end(entry: _Entry, name: str, max_frame: int, complete: bool = True, *, base_dir: Path | None = None,
               max_text: int = DEFAULT_MAX_TEXT, cut: str = "") -> Iterator[Recorded]:
    """What an entry holds, once read (`complete`), or as far as it was read: `cut` says why the rest was not (a
    string past the limit, the file's end): an SSE response whose body was not reached is judged as it stood there."""
    held, entry.held_error = entry.held_error, None
    opened = _socket_opened(entry)
    if complete and not entry.frames and not opened and (
            entry.status or entry.failure or held) and _is_socket(entry):
        yield _socket_refused(entry, name, held)
        return
    if complete and not entry.messages and not opened and not entry.status and _is_socket(entry):
        # No answer and no reason (status 0, no `_error`): what Firefox's export writes for a handshake the browser
        # failed, blocked or cancelled, and for one still pending. No frame left: no chat to judge, but said.
        where = f"{name}: entry {entry.index}"
        yield Recorded(NOTE, f"ws{entry.index}", t=entry.started, where=where, detail=f"{where}: {NO_SOCKET_ANSWER}")
        return
    if held is not None:
        yield held
    if not entry.messages and opened and complete:
        # A WebSocket whose messages the HAR does not list (Firefox's export lists none; a socket that carried
        # nothing): no chat, counted, so that a check that finds none can say why. (An entry the file was cut or
        # broken in may have listed them: the R12 that follows says where it stopped.)
        yield Recorded(SILENT, f"ws{entry.index}", t=entry.started, where=f"{name}: entry {entry.index}")
        return
    if entry.messages:
        if complete and not entry.closed:  # the socket's messages are all there: its chats still waiting are judged
            yield Recorded("close", f"ws{entry.index}", where=f"{name}: entry {entry.index}")
        return
    has_events = bool(entry.events) or bool(entry.events_cut) or bool(entry.events_missing)
    is_sse = (entry.mime.partition(";")[0].strip().lower() == EVENT_STREAM or entry.content_type == EVENT_STREAM
              or has_events)
    # Chromium's `_eventSourceMessages` carry each event's time: judged from them when every one has its data;
    # else from the body (no times); a response with neither is judged as the recording left it.
    timed = has_events and not entry.events_missing
    if not is_sse and _wants_stream(entry):
        if complete:  # (an entry the file ends inside has no whole answer to judge)
            yield from _stream_refused(entry, name, max_frame)
        return
    if not is_sse or (entry.text is None and not entry.text_file and not has_events and not entry.post
                      and not entry.post_file):
        return
    conn = f"sse{entry.index}"
    where = f"{name}: entry {entry.index}"
    body: bytes | None = None
    if entry.post_file and not entry.post:  # Playwright's content: "attach" writes postData.text "" and `_file`
        post = _attached(base_dir, entry.post_file, max_frame)
        if isinstance(post, str):  # no chat can be told from its stream without it: none is judged, saying why
            yield Recorded("dropped", conn, t=entry.started, detail="the request body", where=f"{where} request",
                           error=f"the request's {post}")
            if complete:
                yield Recorded("close", conn, where=where, stream=True)
            return
        entry.post = post.decode("utf-8", "replace")
    if entry.text is None and entry.text_file and not has_events:
        attached = _attached(base_dir, entry.text_file, max_text)
        if isinstance(attached, str):
            if entry.post:
                yield Recorded("send", conn, t=entry.started, frame=_cut(entry.post, max_frame), where=f"{where} request")
            yield Recorded("dropped", conn, t=entry.started, detail="the response body", where=where,
                           error=f"the response's {attached}")
            if complete:
                yield Recorded("close", conn, where=where, stream=True)
            return
        body = attached
    if entry.post:
        yield Recorded("send", conn, t=entry.started, frame=_cut(entry.post, max_frame), where=f"{where} request")
    if cut and not timed and entry.text is None and body is None:
        yield Recorded("dropped", conn, t=entry.started, detail="the response body", where=where, error=cut)
        return
    if timed or (entry.text is None and body is None):
        yield from _sse_events(entry, conn, where, max_frame, timed)
        if complete:
            yield Recorded("close", conn, where=where, stream=True)
        return
    encoding = entry.encoding.lower()
    if body is None and (entry.encoding_other or encoding not in ("", HAR_BASE64)):
        shown = entry.encoding_other or repr(entry.encoding[:40])
        yield Recorded("problem", conn, detail=f"SSE body in encoding {shown}: HAR 1.2 defines only base64 (and no "
                       "encoding for text), so the body cannot be read", where=f"{name}: entry {entry.index}")
        return
    if body is None and encoding == HAR_BASE64:
        try:
            body = _base64(entry.text or "")
        except (binascii.Error, ValueError):
            yield Recorded("problem", conn, detail="SSE body not in base64", where=f"{name}: entry {entry.index}")
            return
    elif body is None:
        body = (entry.text or "").encode("utf-8", "surrogatepass")
    yield from read_sse(io.BytesIO(body), f"{name}: entry {entry.index}", max_frame, conn)
    if complete:
        yield Recorded("close", conn, where=f"{name}: entry {entry.index}", stream=True)
