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
# The stamp names what was installed ("base" or "dev"); dev includes base. Reinstalled when pyproject.toml changes.
stamp=.venv/.chatprobe-installed
have=$(cat "$stamp" 2>/dev/null || true)
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || { [ "$want" = dev ] && [ "$have" != dev ]; }; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  if [ "$want" = dev ] || [ "$have" = dev ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
    echo dev > "$stamp"
  else
    .venv/bin/python -m pip install -q --disable-pip-version-check -e .
    echo base > "$stamp"
  fi
fi
