"""scripts/setup-venv.sh, run for real in a copy of the checkout, with a stand-in for the virtualenv's python that
writes down the pip commands it is given (no package is installed): it installs when what was installed is not what
this checkout's pyproject.toml asks for, and not otherwise. Every test command runs it first, so a needless install
is half a minute of each."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checkout(where: Path) -> tuple[Path, Path]:
    """A checkout at `where` (the script and pyproject.toml) with a .venv whose python logs its arguments → (the
    checkout, the log)."""
    (where / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "setup-venv.sh", where / "scripts" / "setup-venv.sh")
    shutil.copy2(ROOT / "pyproject.toml", where / "pyproject.toml")
    log = where / "pip.log"
    python = where / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\necho "$*" >> "$(dirname "$0")/../../pip.log"\n')
    python.chmod(0o755)
    return where, log


def setup(tree: Path, *args: str) -> None:
    subprocess.run([str(tree / "scripts" / "setup-venv.sh"), *args], check=True, timeout=60,
                   env={"PATH": os.environ["PATH"]})


def installs(log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return [line for line in lines if " -e " in line]


def test_an_installed_virtualenv_is_not_installed_again_for_a_pyproject_of_the_same_content(tmp_path):
    tree, log = checkout(tmp_path / "repo")
    setup(tree, "dev")
    assert installs(log) == ["-m pip install -q --disable-pip-version-check -e .[dev]"]
    setup(tree, "dev")
    assert installs(log) == []
    # A fresh clone, a checkout of another branch: pyproject.toml newer than the stamp, its content the same.
    stamp = tree / ".venv" / ".chatprobe-installed"
    os.utime(tree / "pyproject.toml", (stamp.stat().st_mtime + 60,) * 2)
    setup(tree, "dev")
    setup(tree)
    assert installs(log) == []


def test_a_changed_pyproject_another_checkout_or_dev_after_base_installs_again(tmp_path):
    tree, log = checkout(tmp_path / "repo")
    setup(tree)
    assert installs(log) == ["-m pip install -q --disable-pip-version-check -e ."]
    setup(tree, "dev")  # base installed, dev wanted
    assert installs(log) == ["-m pip install -q --disable-pip-version-check -e .[dev]"]
    with open(tree / "pyproject.toml", "a") as f:
        f.write("\n# a dependency added\n")
    setup(tree)  # dev stays dev
    assert installs(log) == ["-m pip install -q --disable-pip-version-check -e .[dev]"]
    # The same .venv moved under another checkout (the editable install points at the old one).
    moved = tmp_path / "other"
    shutil.copytree(tree, moved, symlinks=True)
    setup(moved, "dev")
    assert installs(moved / "pip.log") == ["-m pip install -q --disable-pip-version-check -e .[dev]"]
