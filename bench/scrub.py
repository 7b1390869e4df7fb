"""Time of `harness.redact.scrub` on one large frame (a JSON text of chat events, 3.2 MB by default) with 0, 10 and
100 registered secrets (random 32-character tokens, as `--token` and `--header` values are): median of N rounds.
The frame holds one of the secrets (its first) cut short, so the redacting path runs too; the output is checked.

    .venv/bin/python bench/scrub.py [--mb 3.2] [--secrets 0,10,100] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's harness, wherever it is run from

from harness import redact

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=3.2)
    p.add_argument("--secrets", default="0,10,100")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    rng = random.Random(1)
    text = frame(int(args.mb * 1_000_000), rng)
    print(f"frame: {len(text):,} characters; median of {args.rounds} rounds")
    print(f"{'secrets':>8} {'scrub (s)':>10}")
    for count in (int(c) for c in args.secrets.split(",")):
        redact.forget_all()
        secrets = ["".join(rng.choices(_ALPHABET, k=32)) for _ in range(count)]
        for secret in secrets:
            redact.register(secret)
        shown = text if not secrets else text[:-2] + f', "echo": "{secrets[0][3:20]}"' + text[-2:]
        redact.scrub("warm up")  # the matchers are compiled at the first scrub after a register
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            out = redact.scrub(shown)
            times.append(time.perf_counter() - start)
        assert out == text if not secrets else out == text[:-2] + f', "echo": "{redact.REDACTED}"' + text[-2:]
        print(f"{count:>8} {statistics.median(times):>10.3f}")


if __name__ == "__main__":
    main()
