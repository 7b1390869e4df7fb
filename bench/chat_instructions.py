"""Instructions a chat costs on the checker's path, counted by `valgrind --tool=callgrind` in one process: stable to
±0.3% where whole runs of `chatprobe run` differ by ±10 M under load (timers and reads batch differently).

One process makes N chats of vs_k6's kind with no sockets: a tracker (flow.new_tracker), its request
(Profile.build_request), the tracker added to a ConnectionChecker, eight agentsim frames of netra (the shapes agentsim
sends, the chat's own ids in them) through FrameRouter.on_frame (the profile's decoder, ConnectionChecker.route,
ChatTracker.feed), the verdict (ChatTracker.finish; every chat must pass) and the run's Listing and Tally. The figure
is (instructions with N chats - instructions with none) / N, so start-up and imports cancel out. `--against TREE`
counts another tree's harness/ the same way (a `git worktree` or a copy of the revision to compare with).

    .venv/bin/python bench/chat_instructions.py [--chats 1000] [--against TREE]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The eight frames of an agentsim chat (harness/profiles/netra.yaml's dialect), as agentsim writes them; THREAD, MSG and
# RUN are the chat's ids.
FRAMES = [
    '{"type":"agent_started","run_id":"RUN","thread_id":"THREAD","user_id":"u-1","seq":1,"timestamp":1796514588.3715267,'
    '"payload":{"agent_name":"math_agent","message_id":"MSG"}}',
    '{"type":"agent_thinking","run_id":"RUN","thread_id":"THREAD","user_id":"u-1","seq":2,"timestamp":1796514588.3715646,'
    '"payload":{"thought":"Working out how to answer: \'what is 6*7\'; planning 1 tool call(s).","step_number":1}}',
    '{"type":"tool_executing","run_id":"RUN","thread_id":"THREAD","user_id":"u-1","seq":3,"timestamp":1796514588.3715758,'
    '"payload":{"tool_name":"calculator","tool_call_id":"c-1","parameters":{"expression":"6*7"}}}',
    '{"type":"tool_completed","run_id":"RUN","thread_id":"THREAD","user_id":"u-1","seq":4,"timestamp":1796514588.3716452,'
    '"payload":{"tool_name":"calculator","tool_call_id":"c-1","result":42,"duration_ms":0.064,"success":true}}',
    '{"type":"agent_thinking","run_id":"RUN","thread_id":"THREAD","user_id":"u-1","seq":5,"timestamp":1796514588.3716567,'
    '"payload":{"thought":"Composing the answer from the tool results.","step_number":2}}',
    '{"type":"partial_result","run_id":"RUN","thread_id":"THREAD","user_id":"u-1","seq":6,"timestamp":1796514588.3716729,'
    '"payload":{"content":"Answer to \'what is 6","is_complete":false}}',
    '{"type":"partial_result","run_id":"RUN","thread_id":"THREAD","user_id":"u-1","seq":7,"timestamp":1796514588.3716843,'
    '"payload":{"content":"*7\': calculator: 42.","is_complete":true}}',
    '{"type":"agent_completed","run_id":"RUN","thread_id":"THREAD","user_id":"u-1","seq":8,"timestamp":1796514588.3717027,'
    '"payload":{"result":"Answer to \'what is 6*7\': calculator: 42.","duration_ms":0.177}}',
]

# The process callgrind counts: argv TREE N FRAMES (as JSON).
CHILD = """\
import json, sys
tree, n, FRAMES = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
sys.path.insert(0, tree)
from harness.checker import ConnectionChecker, Expectations
from harness.events import DEFAULT_REQUIRED
from harness.flow import FrameRouter, new_tracker
from harness.profiles import load_profile
from harness.results import Listing
from harness.sinks import Sink
from harness.stats import Tally
exp = Expectations(required=frozenset(DEFAULT_REQUIRED), first_event_limit=2.0, deadline=60.0, stall_limit=30.0)
profile = load_profile("netra")
router = FrameRouter(profile, ConnectionChecker("u-1"), Sink(), "s")
listing, tally = Listing(), Tally()
chats = []
for i in range(n):  # the frames made first: the same text work in both trees
    tracker = new_tracker(exp, "s", 100.0 + i, False)
    chats.append((tracker, [f.replace("THREAD", tracker.thread_id).replace("MSG", tracker.message_id)
                            .replace("RUN", f"r-{i:016x}") for f in FRAMES]))
for i, (tracker, frames) in enumerate(chats):
    profile.build_request(content="what is 6*7", thread_id=tracker.thread_id, run_id=tracker.run_id,
                          message_id=tracker.message_id, user_id="u-1", history=None)
    router.checker.add(tracker)
    t = 100.0 + i
    for frame in frames:
        t += 0.0001
        router.on_frame(frame, t)
    result = tracker.finish(t + 0.1)
    if not result.passed:
        sys.exit(f"chat {i} did not pass: {result.violations}")
    listing.add(result)
    tally.add(result)
"""


def instructions(tree: Path, chats: int) -> int:
    """callgrind's instruction count of the child making `chats` chats with `tree`'s harness."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONHASHSEED"] = "0"
    env["PYTHONPATH"] = str(tree)
    done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", CHILD,
                           str(tree), str(chats), json.dumps(FRAMES)], capture_output=True, text=True, env=env,
                          cwd=tree)
    found = re.search(r"Collected : ([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"the count of {tree} failed: {done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chats", type=int, default=1000)
    p.add_argument("--against", type=Path, default=None, help="another tree's harness/, counted the same way")
    args = p.parse_args()
    trees = [ROOT] + ([args.against.resolve()] if args.against else [])
    for tree in trees:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "harness")], check=True)
    figures = {}
    for tree in trees:
        instructions(tree, 1)  # byte-code written, the profile's decoder compiled once: not counted
        figures[tree] = (instructions(tree, args.chats) - instructions(tree, 0)) / args.chats
        print(f"{tree}: {figures[tree]:,.0f} instructions a chat", flush=True)
    if args.against:
        print(f"this tree / {args.against}: {figures[ROOT] / figures[trees[1]]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
