"""The per-frame decode of a profile's text frames, in frames per second: `Decoder.decode` (the fast path that reads
the common frame from a msgspec Struct, harness/profiles.py `_generate_fast`) against `Decoder.decode_exact` (the
same decoder without it: orjson and the generated dict lookups), in alternating rounds (each
round the thread's CPU time: other work on the machine stalls it less than the clock); medians of the rounds are
printed, nothing is asserted.

Frames: one netra chat as agentsim writes it (agent_started, thinking, a tool call, thinking, two partial results,
agent_completed), by default; `--profile ag-ui` decodes AG-UI events (its payload checks read the whole frame, so it
has no fast path: both figures are one decoder's).

    .venv/bin/python bench/decode_frames.py [--rounds 15] [--frames 20000] [--profile netra]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.events import Event  # noqa: E402
from harness.profiles import load_profile  # noqa: E402


def netra_chat(i: int) -> list[str]:
    """One chat's eight event frames, as agentsim's `_frame` writes them (orjson, compact)."""
    run, thread, user, t = f"r-{i:08d}", f"t-{i:08d}", "anon-6e5fca9745a4", 1796471465.5871427 + i
    steps = [
        ("agent_started", {"agent_name": "research_agent", "message_id": f"m-{i}"}),
        ("agent_thinking", {"thought": f"Working out how to answer: 'question {i}'; planning 1 tool call(s).",
                            "step_number": 1}),
        ("tool_executing", {"tool_name": "lookup", "tool_call_id": "c-1", "parameters": {"query": "hi"}}),
        ("tool_completed", {"tool_name": "lookup", "tool_call_id": "c-1",
                            "result": {"query": "hi", "found": False, "answer": "no entry for 'hi'"},
                            "duration_ms": 0.016, "success": True}),
        ("agent_thinking", {"thought": "Composing the answer from the tool results.", "step_number": 2}),
        ("partial_result", {"content": f"Answer to 'question {i}': lookup: {{'query': 'hi', 'fo", "is_complete": False}),
        ("partial_result", {"content": "und': False, 'answer': \"no entry for 'hi'\"}.", "is_complete": True}),
        ("agent_completed", {"result": f"Answer to 'question {i}': no entry.", "duration_ms": 0.134}),
    ]
    return [orjson.dumps({"type": role, "run_id": run, "thread_id": thread, "user_id": user, "seq": seq,
                          "timestamp": t + seq / 1e5, "payload": payload}).decode()
            for seq, (role, payload) in enumerate(steps, 1)]


def agui_chat(i: int) -> list[str]:
    run, thread, msg = f"r-{i}", f"t-{i}", f"m-{i}"
    frames = [{"type": "RUN_STARTED", "threadId": thread, "runId": run},
              {"type": "TEXT_MESSAGE_START", "messageId": msg, "role": "assistant"},
              *({"type": "TEXT_MESSAGE_CONTENT", "messageId": msg, "delta": f"word {k} "} for k in range(5)),
              {"type": "TEXT_MESSAGE_END", "messageId": msg},
              {"type": "RUN_FINISHED", "threadId": thread, "runId": run}]
    return [orjson.dumps(f).decode() for f in frames]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--frames", type=int, default=20_000, help="frames decoded per round and decoder")
    p.add_argument("--profile", default="netra", choices=["netra", "ag-ui"])
    args = p.parse_args()
    profile = load_profile(args.profile)
    profile.prepare()
    dec = profile._decoder
    chat = netra_chat if args.profile == "netra" else agui_chat
    frames: list[str] = []
    i = 0
    while len(frames) < args.frames:
        frames += chat(i)
        i += 1
    frames = frames[:args.frames]
    decoders = {"exact": dec.decode_exact, "fast": dec.decode}
    # Both see every frame as an event, the same one (else the figures compare different work).
    if not all(isinstance(dec.decode(f, 1.0), Event) and repr(dec.decode(f, 1.0)) == repr(dec.decode_exact(f, 1.0))
               for f in frames):
        raise SystemExit("the two decoders disagree on a frame: tests/profiles/test_decode_fast.py says where")
    rates: dict[str, list[float]] = {name: [] for name in decoders}
    ratios: list[float] = []
    for r in range(args.rounds):
        order = list(decoders) if r % 2 == 0 else list(reversed(decoders))
        took: dict[str, float] = {}
        for name in order:
            decode = decoders[name]
            t0 = time.thread_time()
            for f in frames:
                decode(f, 1.0)
            took[name] = time.thread_time() - t0
            rates[name].append(len(frames) / took[name])
        ratios.append(took["fast"] / took["exact"])
    for name in decoders:
        med = statistics.median(rates[name])
        print(f"{name:6s} {med:12,.0f} frames/s  {1e6 / med:6.3f} us/frame  (profile {args.profile}, "
              f"{args.rounds} rounds of {len(frames):,} frames)")
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    print(f"fast/exact time per frame: median {statistics.median(ratios):.3f} (quartiles {q[0]:.3f}..{q[2]:.3f}); "
          f"fast path {'on' if dec.decode is not dec.decode_exact else 'off (both figures are one decoder)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
