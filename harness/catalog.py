"""The built-in scenarios and profiles by name: read from the package's folders, nothing parsed (cheap at start-up).

The folders are the packages' own directories on disk (pathlib), not importlib.resources: that module and what it
loads (tempfile, zipfile, its readers) cost every command's start-up ~4 ms, `--help` included, for what a path does."""
from __future__ import annotations

from pathlib import Path

import scenarios

SCENARIOS_DIR = Path(scenarios.__file__).parent
PROFILES_DIR = Path(__file__).parent / "profiles"
# What `chatprobe run` plays when no scenario is named.
BUILTIN_SUITE = ("basic", "concurrent", "errors", "reconnection", "performance", "abandonment")


def builtin_names(folder: Path) -> list[str]:
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def builtin_scenarios() -> list[str]:
    return builtin_names(SCENARIOS_DIR)


def builtin_profiles() -> list[str]:
    return builtin_names(PROFILES_DIR)
