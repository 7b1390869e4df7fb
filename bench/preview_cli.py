"""`chatprobe` on uvloop's event loop, as it runs once the change to harness/cli.py proposed in BENCHMARKS.md is in
(measured by bench/vs_k6.py as chatprobe-preview). Bench-only: the product is not patched by this file."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":
    import asyncio

    import uvloop

    from harness.cli import main

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.exit(main())
