#!/usr/bin/env bash
# Create ./.venv (Python 3.11+) and install the package into it; the arg goes to pip (e.g. '.[test]').
# Installs only when needed: a stamp in .venv records a hash of pyproject.toml and the package's files
# and what was installed with it, so scripts/run.sh and scripts/test.sh start at once when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SPEC="${1:-.}"
STAMP=.venv/.ocpp_addon_installed
HASH="$(find pyproject.toml ocpp_addon -type f -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16)"
if [ -x .venv/bin/python ] && [ -f "$STAMP" ]; then
  # '.' is part of any extras install; an install for another hash does not count.
  if grep -qxF "$HASH $SPEC" "$STAMP" || { [ "$SPEC" = "." ] && grep -q "^$HASH " "$STAMP"; }; then
    exit 0
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# pip's "Location 'file:///...' is ignored" lines (local index dirs in some machines' pip config) are noise.
quiet_pip() { .venv/bin/python -m pip "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2); }
quiet_pip install -q --upgrade pip >/dev/null
quiet_pip install -q -e "$SPEC"
if [ -f "$STAMP" ] && grep -q "^$HASH " "$STAMP"; then
  echo "$HASH $SPEC" >>"$STAMP"
else
  echo "$HASH $SPEC" >"$STAMP"
fi
