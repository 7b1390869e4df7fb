"""The built-in scenarios and profiles by name: read from the package's folders, nothing parsed (cheap at start-up)."""
from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable

SCENARIOS_DIR: Traversable = resources.files("scenarios")
PROFILES_DIR: Traversable = resources.files("harness") / "profiles"
# What `chatprobe run` plays when no scenario is named.
BUILTIN_SUITE = ("basic", "concurrent", "errors", "reconnection", "performance", "abandonment")


def builtin_names(folder: Traversable) -> list[str]:
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def builtin_scenarios() -> list[str]:
    return builtin_names(SCENARIOS_DIR)


def builtin_profiles() -> list[str]:
    return builtin_names(PROFILES_DIR)
