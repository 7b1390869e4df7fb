"""`chatprobe` as it runs once the two lines proposed in BENCHMARKS.md are in (measured by bench/vs_k6.py as
chatprobe-preview): uvloop's event loop, and every scenario chat with ChatOptions.overlap_settle (the user's next
chat starts while the last one's settle window listens). Bench-only: the product is not patched by this file."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":
    import asyncio

    import uvloop

    from harness import client
    from harness.cli import main

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    play = client.Session.chat

    async def chat(self, content, expectations, options=client.DEFAULTS):  # type: ignore[no-untyped-def]
        return await play(self, content, expectations, dataclasses.replace(options, overlap_settle=True))

    client.Session.chat = chat  # type: ignore[method-assign]
    sys.exit(main())
