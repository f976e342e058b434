#!/usr/bin/env bash
# Set up and run the whole test suite: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-mosquitto.sh
bash scripts/venv.sh '.[test]'
exec .venv/bin/python -m pytest "$@"
