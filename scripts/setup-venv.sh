#!/usr/bin/env bash
# Create .venv (if needed) and install chatprobe into it, editable. Idempotent.
#   scripts/setup-venv.sh        what `chatprobe` needs (scripts/run)
#   scripts/setup-venv.sh dev    that and the test suite's tools (scripts/test): pytest, Locust, the AG-UI
#                                frameworks the tests serve, selenium, ruff, mypy
set -euo pipefail
cd "$(dirname "$0")/.."
want=${1:-}
case "$want" in
  ""|dev) ;;
  *) echo "usage: scripts/setup-venv.sh [dev]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "chatprobe needs Python 3.11 or newer ($PY is $("$PY" --version 2>&1))" >&2; exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# The stamp names what was installed ("base" or "dev"; dev includes base), then for what: pyproject.toml's content
# (its hash) and this checkout's path (the editable install points at it). Reinstalled when either differs. Not its
# modification time: a fresh clone's, or a checkout's of another branch, is newer than a kept .venv's stamp whatever
# it holds, and that reinstall took half a minute of every test command on a machine where all was installed.
stamp=.venv/.chatprobe-installed
have=$(sed -n 1p "$stamp" 2>/dev/null || true)
installed_for=$(sed -n 2p "$stamp" 2>/dev/null || true)
for_this="$(sha256sum pyproject.toml | cut -d' ' -f1) $(pwd -P)"
if [ "$installed_for" != "$for_this" ] || { [ "$want" = dev ] && [ "$have" != dev ]; }; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  if [ "$want" = dev ] || [ "$have" = dev ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
    kind=dev
  else
    .venv/bin/python -m pip install -q --disable-pip-version-check -e .
    kind=base
  fi
  printf '%s\n%s\n' "$kind" "$for_this" > "$stamp"
fi
