"""Time of `harness.redact.scrub` on one large frame (a JSON text of chat events, 3.2 MB by default) with 0, 10 and
100 registered secrets (random 32-character tokens, as `--token` and `--header` values are): median of N rounds.
The frame holds one of the secrets (its first) cut short, so the redacting path runs too; the output is checked.

`--shape` picks other frames: `escaped`, a CJK answer as `json.dumps` writes it (every character a `\\uXXXX`
escape) echoing the secret once; `dense`, a JSON frame of strings each holding a run of the secret (a hostile
client's); `html`, an answer of HTML text (numeric character references: `&#39;`) echoing the secret once, every
character a reference; `prose`, an answer of prose full of quotes, backslashes and emoji as `json.dumps` writes it
(`\\"`, `\\\\`, `\\ud83d\\ude00`: an escape every 5 characters) echoing the secret once. `--record` times what
`chatprobe proxy --record` does with the frame instead (`ConnectionLog.frame`, the secrets a connection's own
credentials, as the proxy's users' are). `--users` holds that many other users' tokens
(random 43-character ones) in the pool the proxy keeps of its users' credentials (redact.SeenCredentials), which
scrub() looks for in every text. A frame under 1 MB is scrubbed as many times as make 1 MB a round (its time per frame
printed too). CPU seconds of this process.

    .venv/bin/python bench/scrub.py [--mb 3.2] [--secrets 0,10,100] [--users 0] [--rounds 3]
                                    [--shape events|escaped|dense|html|prose] [--record]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's harness, wherever it is run from

from harness import redact
from harness.recorder import Recorder

_ALPHABET = string.ascii_letters + string.digits


def frame(size: int, rng: random.Random) -> str:
    """A JSON frame of `size` characters or a little more: chat events with ids, words and numbers."""
    words = ["the", "agent", "tool", "result", "weather", "forecast", "chat", "token", "search", "query", "done"]
    events: list[dict[str, object]] = []
    n = 0
    while n < size:
        event = {"type": rng.choice(["agent_thinking", "tool_executing", "partial_result"]),
                 "chat_id": "".join(rng.choices(_ALPHABET, k=12)),
                 "data": {"text": " ".join(rng.choices(words, k=30)), "step": rng.randrange(1000)}}
        events.append(event)
        n += len(json.dumps(event)) + 2
    return json.dumps({"events": events})


def shaped(shape: str, size: int, secret: str | None, rng: random.Random) -> tuple[str, str]:
    """The frame to scrub and what of the secret it shows (to be gone from the output: a run of it)."""
    if shape == "events":
        text = frame(size, rng)
        return (text, "") if secret is None else (text[:-2] + f', "echo": "{secret[3:20]}"' + text[-2:], secret[3:20])
    if shape == "escaped":
        answer = "".join(rng.choices([chr(c) for c in range(0x4E00, 0x4E00 + 3000)], k=size // 6))
        return json.dumps({"type": "partial_result", "data": {"text": answer + (f" {secret}" if secret else "")}}), (
            secret or "")
    if shape == "html":
        # an answer of HTML text (a few numeric character references a line: `&#39;`, `&#x2F;`, `&#8221;&#8212;`), the secret once
        # with every character a reference
        words = ["the", "agent&#39;s", "tool", "a&#x2F;b", "weather", "&#8220;forecast&#8221;&#8212;", "chat", "done"]
        answer = " ".join(rng.choices(words, k=size // 7))
        echo = "".join(f"&#{ord(c)};" for c in secret) if secret else ""
        return json.dumps({"type": "partial_result", "data": {"text": answer + f" {echo}"}}), secret or ""
    if shape == "prose":
        words = ['"', "\\", "\U0001f600", "\U0001f44d\U0001f3fd", ' he said "hi" ', "C:\\dir\\", "\u00e9", "/"]
        answer = "".join(rng.choices(words, k=size // 9))
        return json.dumps({"type": "partial_result", "data": {"text": answer + (f" {secret}" if secret else "")}}), (
            secret or "")
    # dense: a string per run of 10 characters of the secret, numbered
    piece = (secret or "".join(rng.choices(_ALPHABET, k=32)))[:10]
    return json.dumps([f"{piece}{i}" for i in range(size // 16)]), piece if secret else ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=3.2)
    p.add_argument("--secrets", default="0,10,100")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--shape", choices=("events", "escaped", "dense", "html", "prose"), default="events")
    p.add_argument("--record", action="store_true", help="time the proxy's --record of the frame")
    p.add_argument("--users", default="0", help="other users' tokens held in the proxy's pool (comma-separated counts)")
    args = p.parse_args()
    rng = random.Random(1)
    size = int(args.mb * 1_000_000)
    repeat = max(1, 1_000_000 // max(size, 1))
    print(f"{args.shape} frame of {args.mb:g} MB; {'--record' if args.record else 'scrub'} x{repeat} a round; CPU "
          f"seconds, median of {args.rounds} rounds")
    print(f"{'secrets':>8} {'users':>6} {'seconds':>10} {'µs/frame':>10}")
    for count, users in ((int(c), int(u)) for c in args.secrets.split(",") for u in args.users.split(",")):
        redact._seen = pool = redact.SeenCredentials()  # each row its own pool (this process is the bench's)
        for _ in range(users):
            pool.hold(["".join(rng.choices(_ALPHABET, k=43))])
        redact.forget_all()
        secrets = ["".join(rng.choices(_ALPHABET, k=32)) for _ in range(count)]
        text, shown = shaped(args.shape, int(args.mb * 1_000_000), secrets[0] if secrets else None, rng)
        recorder = Recorder(tempfile.mkdtemp(prefix="scrub-bench-"), keep_all=True) if args.record else None
        if recorder is None:
            for secret in secrets:
                redact.register(secret)
        redact.scrub("warm up")  # the matchers are compiled at the first scrub after a register
        times = []
        for _ in range(args.rounds):
            if recorder is not None:
                took = 0.0
                for _ in range(repeat):  # each its own connection, saved before the next (the recorder's bounds)
                    log = recorder.connection("bench", secrets)
                    start = time.process_time()
                    log.frame("recv", text, 0.0)
                    took += time.process_time() - start
                    log.close(0.0, 1000, by_client=True)
                    path = recorder.save(log, keep=True)
                    assert path is not None
                    out = json.loads(path.read_text().splitlines()[0])["frame"]
                times.append(took)
            else:
                start = time.process_time()
                for _ in range(repeat):
                    out = redact.scrub(text)
                times.append(time.process_time() - start)
        # (with many secrets, a random chat_id may share a run with one of them, and is redacted too)
        assert (redact.REDACTED in out and shown[:8] not in out) if shown else out == text
        took = statistics.median(times)
        print(f"{count:>8} {users:>6} {took:>10.3f} {took / repeat * 1e6:>10.1f}")


if __name__ == "__main__":
    main()
