"""`chatprobe` on asyncio's own event loop, as it runs where uvloop is not installed (measured by bench/vs_k6.py as
chatprobe-asyncio). Bench-only: uvloop is hidden from this process, the product is not patched."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":
    sys.modules["uvloop"] = None  # type: ignore[assignment]  # `import uvloop` raises ImportError: asyncio's loop

    from harness.cli import main

    sys.exit(main())
