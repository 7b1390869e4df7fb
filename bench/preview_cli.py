"""`chatprobe` with uvloop's event loop: what bench/vs_k6.py measures as chatprobe-uvloop (the CLI runs
`asyncio.run`, which then uses uvloop's policy; see BENCHMARKS.md for the change proposed to harness/cli.py)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":
    import asyncio

    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from harness.cli import main

    sys.exit(main())
