#!/usr/bin/env bash
# Create ./.venv (Python 3.11+) and install the package into it; extra args go to pip (e.g. '.[test]').
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e "${1:-.}"
