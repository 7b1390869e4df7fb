"""The built-in scenarios and profiles by name: read from the package's folders, nothing parsed (cheap at start-up).

The folders are the packages' own directories on disk (pathlib), not importlib.resources: that module and what it
loads (tempfile, zipfile, its readers) cost every command's start-up ~4 ms, `--help` included, for what a path does.

The built-in scenarios are the `scenarios` folder beside this package (so in the repository, in site-packages from
the wheel, and in an editable install), found by path, never by importing `scenarios`: a user's own `scenarios`
package (a load-testing project's usual name) imported first, or first on sys.path (`python -m pytest`, pytest's
`pythonpath`, PYTHONPATH), would be taken for chatprobe's, and chatprobe's, imported first by the pytest plugin,
would hide the user's from their own tests."""
from __future__ import annotations

from pathlib import Path

SCENARIOS_DIR = Path(__file__).parent.parent / "scenarios"
PROFILES_DIR = Path(__file__).parent / "profiles"
# What `chatprobe run` plays when no scenario is named.
BUILTIN_SUITE = ("basic", "concurrent", "errors", "reconnection", "performance", "abandonment")


def builtin_names(folder: Path) -> list[str]:
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def builtin_scenarios() -> list[str]:
    return builtin_names(SCENARIOS_DIR)


def builtin_profiles() -> list[str]:
    return builtin_names(PROFILES_DIR)
