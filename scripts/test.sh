#!/usr/bin/env bash
# Set up everything the tests need, then run the whole suite: bash scripts/test.sh [pytest args]
# Steps (each cached, each timed): mosquitto (Debian), haproxy and graphviz (Debian) for the cluster test,
# headless Chromium and chromium-driver (Debian, for the chargers page tests), .venv with the package and
# test deps, the Home Assistant venv for the ha_e2e tests, buildah and the stand-in base image for the image
# test. A step that fails does not stop the run: the tests that need it fail and say why.
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
exec .venv/bin/python -m pytest "$@"
