"""The `text/event-stream` format (WHATWG HTML, "Server-sent events") parsed from bytes, bounded in size.

Pure: the SSE transport feeds it a response's chunks as they come, `chatprobe check` a recorded body.
"""
from __future__ import annotations

import re

_BOM = b"\xef\xbb\xbf"
_FIELDS = (b"data", b"event", b"id", b"retry")
# A field name that reads as one (`x-trace`, `ping`): a field the specification does not define, which a consumer
# ignores (WHATWG; AG-UI 1.1, HTTP + SSE: "A consumer MUST ignore SSE fields other than data"). The name is all
# before the first colon, blank space included: `event : x` is the field `event ` and `data : x` the field `data `,
# neither a field the specification defines, so ignored alike (a `data ` line adds nothing to the event's data). A
# line whose name is no such word (`{"type":…`, `data {"type":…`, blank space alone) or whose value is JSON
# (`Data: {…}`, `data : {…}`) carried content: an event sent without its `data:`, lost, which is a StreamProblem.
_FIELD_NAME = re.compile(rb"[ \t]*[A-Za-z0-9_.-]+[ \t]*")
# Problems (lines that carried content but are not SSE fields) kept between two feeds; more are counted in one last problem.
MAX_PROBLEMS = 20


class StreamProblem(str):
    """A line of the stream that carried content but is not an SSE field, handed on in order among the events' data:
    never valid JSON, so a decoder that does not know this type reports it as a malformed frame (an R12), never drops
    it."""


class EventTooLarge(Exception):
    """What the server sent does not fit the size limit; the message is the R12's detail."""


def _data_text(data: bytes | bytearray) -> str:
    """An event's data as text; data that is not UTF-8 is a StreamProblem saying where, its text as a browser reads
    it (U+FFFD in place of the bad bytes) for a person to see."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        shown = data[:60].decode("utf-8", "replace")
        return StreamProblem(f"event data is not valid UTF-8 (byte {exc.start} of {len(data)}): {shown!r}")


# A line's field name and separator are framing, as a WebSocket frame's header is: an event whose data is `limit`
# bytes, sent as `data: {…}` on one line, fits (over WebSocket the same event in one frame does).
_LINE_FRAMING = len(b"data: ")


class EventStreamParser:
    """The `text/event-stream` format (WHATWG HTML, "Server-sent events"), fed bytes, giving each event's data.

    `\n`, `\r\n` and `\r` end a line; an empty line dispatches the event; `data:` lines join with a newline;
    comments, `event:`, `id:`, `retry:` and other fields are ignored; an event with empty data is not handed over; a
    line that carried content but is no SSE field (the spec ignores it, but the event it carried is lost: JSON sent
    without `data:`) is handed over as a StreamProblem;
    a leading byte-order mark is dropped. When the stream has ended cleanly, `end` hands over the event its end cut
    before the empty line that would have dispatched it (the WHATWG parser discards it; AG-UI's reference client,
    `HttpAgent`, dispatches it: a server that closes right after its last event's data line is no truncated run).
    A line longer than `limit` bytes plus a field name's `data: `, or an event whose data is longer than `limit`,
    raises EventTooLarge: at most about `limit` bytes (plus one chunk) are ever buffered. An event whose data is not
    UTF-8 is handed over as a StreamProblem
    (an R12, as a WebSocket text frame that is not UTF-8 is), and the stream goes on (a browser's EventSource reads
    U+FFFD in place of the bad bytes and goes on too); elsewhere (an ignored field, a comment) bad bytes are replaced.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._partial = bytearray()  # the current line, until its end comes
        # The event's data lines joined so far, in one buffer: a list of each line's bytes cost some 40 bytes of
        # overhead a line, so `data:xy` lines up to the limit held 15 times the limit.
        self._data = bytearray()
        self._has_data = False  # a data line came (its value may be empty)
        self._pending_cr = False  # the last chunk ended with \r: a \n that starts the next one belongs to it
        self._started = False
        self._problems = 0  # in the current feed

    def feed(self, chunk: bytes) -> list[str]:
        """The data of the events this chunk completes, in order."""
        if not self._started:
            if self._partial:
                chunk = bytes(self._partial) + chunk
                self._partial.clear()
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._partial += chunk  # too short to tell yet whether the stream starts with a byte-order mark
                return []
            self._started = True
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM):]
        if self._pending_cr:
            self._pending_cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if chunk.endswith(b"\r"):
            self._pending_cr = True  # the line ends here; whether \r\n or \r is known with the next chunk
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        rest = lines.pop()  # the start of a line whose end has not come yet (b"" after a line end)
        events: list[str] = []
        self._problems = 0
        if lines:
            if self._partial:
                lines[0] = bytes(self._partial) + lines[0]
                self._partial.clear()
            for line in lines:
                self._line(line, events)
        if len(self._partial) + len(rest) > self.limit + _LINE_FRAMING:
            raise EventTooLarge(f"event stream line longer than the {self.limit} byte limit")
        self._partial += rest
        return events

    def end(self) -> list[str]:
        """The data of the event the stream's clean end left without its empty line (its last line may lack its line
        end too), as `feed` hands over a dispatched one; [] when nothing was pending. Called once, at a clean end
        only: a stream cut by a broken connection or HTTP framing holds no event to trust."""
        events: list[str] = []
        self._problems = 0
        if self._partial:
            line, self._partial = bytes(self._partial), bytearray()
            if not self._started and _BOM.startswith(line):
                line = b""  # (a stream of a lone BOM's first bytes)
            if line:
                self._line(line, events)
        self._line(b"", events)  # the empty line the stream lacked
        return events

    def _line(self, line: bytes, events: list[str]) -> None:
        if len(line) > self.limit + _LINE_FRAMING:
            raise EventTooLarge(f"event stream line longer than the {self.limit} byte limit")
        if not line:  # dispatch
            if self._data:
                events.append(_data_text(self._data))
            self._data.clear()
            self._has_data = False
            return
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if name != b"data":
            if name not in _FIELDS and (_FIELD_NAME.fullmatch(name) is None or value.lstrip()[:1] in (b"{", b"[")):
                self._problem(line, events)
            return
        if value.startswith(b" "):
            value = value[1:]
        if len(self._data) + self._has_data + len(value) > self.limit:
            raise EventTooLarge(f"event larger than the {self.limit} byte limit")
        if self._has_data:
            self._data += b"\n"
        self._has_data = True
        self._data += value

    def _problem(self, line: bytes, events: list[str]) -> None:
        self._problems += 1
        if self._problems < MAX_PROBLEMS:
            text = line[:80].decode("utf-8", "replace")
            events.append(StreamProblem(f"event stream line is not an SSE field (its content is lost): {text!r}"))
        elif self._problems == MAX_PROBLEMS:
            events.append(StreamProblem(f"more than {MAX_PROBLEMS - 1} event stream lines that are not SSE fields in "
                                        "one read: the rest are not reported one by one"))
