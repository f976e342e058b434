#!/usr/bin/env bash
# Set up (or reuse) every Home Assistant release the end-to-end tests run against: the one entry point.
#
#   scripts/ha_venv.sh            # all of them (cached: a second run takes seconds)
#   OCPP_HA_RELEASES="2026.11.0" scripts/ha_venv.sh   # only these
#
# The releases:
# - HA_CURRENT below: the release users run today. Following a new release is this one line.
# - the oldest release the add-on declares it supports: `homeassistant:` in config.yaml.
# tests/e2e/ha.py reads the same two places, so the tests run against exactly what is set up here.
#
# Each release is set up by scripts/ha_release.sh into $OCPP_HA_CACHE (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/ocpp_addon)/ha-VERSION/: a venv on this machine's Python where the
# release admits it, else a venv in a Debian unstable root (Home Assistant 2026.4+ needs Python >= 3.14.2).
# A release that cannot be set up does not stop the others; the exit status is then 1 and its e2e
# tests fail quoting ha-VERSION/setup.log. Prints one descriptor path (ha.json) per release set up.
set -uo pipefail

HA_CURRENT="2026.11.0"

HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${OCPP_HA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ocpp_addon}"
HA_OLDEST="$(sed -n 's/^homeassistant:[[:space:]]*["'\'']\{0,1\}\([0-9][0-9.]*\).*/\1/p' "$HERE/../config.yaml")"
if [[ -z "$HA_OLDEST" ]]; then
    echo "ha_venv: config.yaml has no homeassistant: version (the oldest release the add-on supports)" >&2
    exit 2
fi
RELEASES="${OCPP_HA_RELEASES:-$HA_OLDEST $HA_CURRENT}"

setup() {  # one release; its output goes to ha-VERSION/setup.log (kept from the last build) and stderr
    local version="$1" log="$CACHE/ha-$1/setup.log" start
    mkdir -p "$CACHE/ha-$version"
    start=$(date +%s)
    bash "$HERE/ha_release.sh" "$version" 2>&1 >/dev/null | tee "$log.new" >&2
    if [[ ${PIPESTATUS[0]} == 0 ]]; then
        if grep -q "up to date" "$log.new"; then rm -f "$log.new"; else mv "$log.new" "$log"; fi
        echo "ha_venv: homeassistant $version ready ($(($(date +%s) - start)) s)" >&2
    else
        mv "$log.new" "$log"
        echo "ha_venv: homeassistant $version could NOT be set up ($(($(date +%s) - start)) s); see $log" >&2
        return 1
    fi
}

# In parallel: a cold setup is mostly downloads and unpacking, and each release has its own folder.
pids=()
for version in $RELEASES; do
    setup "$version" &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=1
done
for version in $RELEASES; do
    [[ -f "$CACHE/ha-$version/ha.json" ]] && echo "$CACHE/ha-$version/ha.json"
done
exit $status
