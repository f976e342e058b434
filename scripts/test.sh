#!/usr/bin/env bash
# Set up everything the tests need, then run the whole suite: bash scripts/test.sh [pytest args]
# Steps (each cached, each timed): mosquitto (Debian), haproxy and graphviz (Debian) for the cluster test,
# headless Chromium and chromium-driver (Debian, for the chargers page tests), .venv with the package and
# test deps (ruff and mypy run before the tests), the Home Assistant venv for the ha_e2e tests, buildah and
# the stand-in base image for the image test. A step that fails does not stop the run: the tests that need
# it fail and say why.
set -uo pipefail
cd "$(dirname "$0")/.."

step() {  # step NAME COMMAND...: run it, print its wall time
    local name=$1 start status took
    shift
    start=$EPOCHREALTIME
    "$@" >&2
    status=$?
    took=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    if [ "$status" -eq 0 ]; then
        printf 'setup: %-10s %6s s\n' "$name" "$took" >&2
    else
        printf 'setup: %-10s %6s s  FAILED (exit %d): the tests that need it will fail\n' "$name" "$took" "$status" >&2
    fi
    return 0
}

step mosquitto bash scripts/ensure-mosquitto.sh
step cluster bash scripts/ensure-cluster.sh
step chromium bash scripts/ensure-chromium.sh
step venv bash scripts/venv.sh '.[test,fast]'
step ha-venv bash scripts/ha_venv.sh
step image-base bash scripts/image_base.sh
if [ ! -x .venv/bin/python ]; then
    echo "test: .venv could not be made; see the venv step above" >&2
    exit 1
fi
# Lint and types first (seconds, cached): a finding fails the run, but the tests still run and report.
lint=0
check() {  # check NAME COMMAND...: run it; a failure marks the run failed
    local name=$1
    shift
    if "$@" >&2; then
        printf 'check: %-6s ok\n' "$name" >&2
    else
        printf 'check: %-6s FAILED: see above\n' "$name" >&2
        lint=1
    fi
}
check ruff .venv/bin/ruff check ocpp_addon tests bench scripts
check mypy .venv/bin/mypy ocpp_addon
.venv/bin/python -m pytest "$@"
status=$?
if [ "$lint" -ne 0 ] && [ "$status" -eq 0 ]; then
    echo "test: ruff or mypy found problems (see the checks above)" >&2
    status=1
fi
exit "$status"
