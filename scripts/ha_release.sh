#!/usr/bin/env bash
# Set up (or reuse) one Home Assistant release for the end-to-end tests; scripts/ha_venv.sh calls this
# for every release the tests run against.
#
#   scripts/ha_release.sh VERSION
#
# Where it lives: $OCPP_HA_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/ocpp_addon)/ha-VERSION/.
# ha.json in that folder says how to launch it (tests/e2e/ha.py reads it) and is written last, so its
# presence means "complete"; setup.log keeps the output of the last attempt (the tests quote it when a
# release is missing).
#
# Two ways, the first that fits:
# - a venv on a Python of this machine (pyenv's, python3.1x on PATH, $HA_PYTHON) whose version the
#   release's Requires-Python admits: HA 2025.4.4 on CPython 3.13.0;
# - otherwise a venv inside a Debian unstable root (debootstrap; its python3 is newer than any Python
#   here: HA 2026.4+ needs >= 3.14.2), shared by every release that needs it and started as
#   `unshare -m` + `chroot` (private mounts that vanish with the process; the host's network, so
#   loopback works).
# Besides the core it installs the exact requirements of the integrations an MQTT-only config loads
# (scripts/ha_requirements.py), under HA's own package_constraints.txt, so `hass --skip-pip` never
# reaches for pip at run time.
set -euo pipefail

VERSION="${1:?usage: ha_release.sh VERSION}"
# hassio: its aiohasupervisor is imported by the MQTT config flow of 2026.x (else the flow is "Invalid
# handler"); isal only makes aiohttp's compression fast and silences a startup warning.
HA_INTEGRATIONS="${HA_INTEGRATIONS:-mqtt frontend hassio isal}"
DEBIAN_SUITE="sid"
# g++ and python3-dev: a few requirements of the integrations HA always sets up have no wheels for the
# root's Python (2026.11: pymicro-vad and pyspeex-noise, needed by assist_pipeline) and are compiled.
DEBIAN_PACKAGES="python3,python3-venv,ca-certificates,g++,python3-dev"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${OCPP_HA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ocpp_addon}"
DIR="$CACHE/ha-$VERSION"
DESCRIPTOR="$DIR/ha.json"
ROOT="$CACHE/debian-$DEBIAN_SUITE"
STAMP_WANT="homeassistant==$VERSION integrations=$HA_INTEGRATIONS"

log() { echo "ha_release[$VERSION]: $*" >&2; }

# One setup of a release at a time (CI and developers on one machine share the cache); a second one
# waits, then finds it done.
mkdir -p "$CACHE"
exec 8>"$CACHE/.ha-$VERSION.lock"
flock 8

# ---- already there? -------------------------------------------------------------------------------
# The descriptor records what was installed; the release still has to import (a cache can be pruned).
descriptor_ok() {
    [[ -f "$DESCRIPTOR" && -f "$DIR/stamp" && "$(cat "$DIR/stamp")" == "$STAMP_WANT" ]] || return 1
    local kind
    kind="$(sed -n 's/.*"kind": "\([a-z]*\)".*/\1/p' "$DESCRIPTOR")"
    case "$kind" in
        venv) "$DIR/venv/bin/python" -c 'import homeassistant.const' >/dev/null 2>&1 ;;
        chroot) [[ -x "$ROOT/opt/ha-$VERSION/bin/hass" && -f "$ROOT/.ocpp_addon_root_ok" ]] ;;
        *) return 1 ;;
    esac
}
if descriptor_ok; then
    log "up to date: $(cat "$DESCRIPTOR")"
    echo "$DESCRIPTOR"
    exit 0
fi

mkdir -p "$DIR"
rm -f "$DESCRIPTOR" "$DIR/stamp"
start=$(date +%s)
# pip's "Location 'file:///...' is ignored" lines (local index dirs in some machines' pip config) are noise.
quiet() { "$@" 2> >(grep -v "^WARNING: Location '" >&2); }

# ---- a Python of this machine that the release admits? ----------------------------------------------
host_candidates() {
    [[ -n "${HA_PYTHON:-}" ]] && echo "$HA_PYTHON"
    local name p root="${PYENV_ROOT:-$HOME/.pyenv}"
    for name in python3.15 python3.14 python3.13; do
        p="$(command -v "$name" 2>/dev/null || true)"
        [[ -n "$p" ]] && echo "$p"
    done
    command -v pyenv >/dev/null 2>&1 && root="$(pyenv root 2>/dev/null || echo "$root")"
    shopt -s nullglob
    for p in "$root"/versions/3.1[3-9]*/bin/python3 /usr/local/bin/python3.1[3-9] /usr/bin/python3.1[3-9]; do
        echo "$p"
    done
    shopt -u nullglob
}

pick_host_python() {  # prints the newest host CPython whose pip would install homeassistant==VERSION
    local c v best="" best_v=""
    while read -r c; do
        [[ -x "$c" ]] || continue
        v="$("$c" -c 'import sys, venv, ensurepip, platform; assert sys.implementation.name == "cpython"; print(platform.python_version())' 2>/dev/null)" || continue
        [[ -n "$best_v" && "$(printf '%s\n%s\n' "$best_v" "$v" | sort -V | tail -n1)" == "$best_v" ]] && continue
        best="$c" best_v="$v"
    done < <(host_candidates | awk '!seen[$0]++')
    [[ -n "$best" ]] || return 1
    # Requires-Python decides: pip's resolver reads it from the index's metadata (no wheel download).
    if "$best" -m pip install --quiet --dry-run --no-deps --ignore-installed "homeassistant==$VERSION" >/dev/null 2>&1; then
        echo "$best"
        return 0
    fi
    log "pip on Python $best_v ($best) will not install homeassistant==$VERSION (its Requires-Python is higher)"
    return 1
}

install_release() {  # $1 = the venv's path as the command sees it, then how to run a command there (or nothing)
    local venv="$1"
    shift
    local -a run=("$@")
    quiet "${run[@]}" "$venv/bin/python" -m pip install --disable-pip-version-check --no-input --quiet \
        "homeassistant==$VERSION"
    local reqs constraints
    # shellcheck disable=SC2086  # one argument per integration
    reqs="$("${run[@]}" "$venv/bin/python" - $HA_INTEGRATIONS <"$HERE/ha_requirements.py")"
    constraints="$("${run[@]}" "$venv/bin/python" -c 'import homeassistant, pathlib; print(pathlib.Path(homeassistant.__file__).parent / "package_constraints.txt")')"
    log "integration requirements: ${reqs//$'\n'/ }"
    if [[ -n "$reqs" ]]; then
        # shellcheck disable=SC2086
        quiet "${run[@]}" "$venv/bin/python" -m pip install --disable-pip-version-check --no-input --quiet \
            -c "$constraints" $reqs
    fi
    "${run[@]}" "$venv/bin/python" -c 'import homeassistant.const as c, sys; assert c.__version__ == sys.argv[1], c.__version__' "$VERSION"
}

# ---- way 1: a venv on this machine's Python ---------------------------------------------------------
if PYTHON="$(pick_host_python)"; then
    log "using $("$PYTHON" -V) at $PYTHON"
    rm -rf "$DIR/venv"
    "$PYTHON" -m venv "$DIR/venv"
    install_release "$DIR/venv"
    pyver="$("$DIR/venv/bin/python" -c 'import platform; print(platform.python_version())')"
    printf '{"version": "%s", "kind": "venv", "hass": "%s", "python": "%s"}\n' \
        "$VERSION" "$DIR/venv/bin/hass" "$pyver" >"$DESCRIPTOR.tmp"
else
    # ---- way 2: a venv in a Debian unstable root --------------------------------------------------------
    # shellcheck disable=SC2016  # $0 and $@ belong to the inner sh
    in_root() {  # run a command inside the root: /dev and /proc mounted in a private mount namespace
        env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
            PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-180}" \
            ${HTTPS_PROXY:+HTTPS_PROXY="$HTTPS_PROXY"} ${HTTP_PROXY:+HTTP_PROXY="$HTTP_PROXY"} \
            ${https_proxy:+https_proxy="$https_proxy"} ${http_proxy:+http_proxy="$http_proxy"} \
            unshare -m -- sh -c 'mount --rbind /dev "$0/dev" && mount -t proc proc "$0/proc" && exec chroot "$0" "$@"' \
            "$ROOT" "$@"
    }
    # One release at a time in the root (scripts/ha_venv.sh sets releases up in parallel).
    exec 9>"$CACHE/.debian-$DEBIAN_SUITE.lock"
    flock 9
    if [[ "$(cat "$ROOT/.ocpp_addon_root_ok" 2>/dev/null)" != "$DEBIAN_PACKAGES" ]]; then
        if ! command -v debootstrap >/dev/null 2>&1; then
            log "installing debootstrap (apt-get)"
            if ! apt-get install -y -q debootstrap >/dev/null 2>&1; then
                apt-get update -q >/dev/null 2>&1 || true
                apt-get install -y -q debootstrap >/dev/null || {
                    log "ERROR: debootstrap is needed to run homeassistant==$VERSION (it needs a newer Python than this machine has) and could not be installed"
                    exit 2
                }
            fi
        fi
        log "building a Debian $DEBIAN_SUITE root in $ROOT (debootstrap, a few minutes)"
        rm -rf "$ROOT.tmp"
        debootstrap --variant=minbase --include="$DEBIAN_PACKAGES" \
            "$DEBIAN_SUITE" "$ROOT.tmp" "$DEBIAN_MIRROR" >"$DIR/debootstrap.log" 2>&1 || {
            log "ERROR: debootstrap failed; last lines of $DIR/debootstrap.log:"
            tail -n 20 "$DIR/debootstrap.log" >&2
            exit 2
        }
        rm -rf "$ROOT"
        mv "$ROOT.tmp" "$ROOT"
        echo "$DEBIAN_PACKAGES" >"$ROOT/.ocpp_addon_root_ok"
    fi
    # Registries may be reached through a TLS-inspecting proxy whose CA only the host's bundle has;
    # pip inside also needs the host's resolver. Refreshed on every install.
    for f in /etc/ssl/certs/ca-certificates.crt /etc/resolv.conf; do
        if [[ -f "$f" ]]; then
            mkdir -p "$ROOT$(dirname "$f")"
            cp -L "$f" "$ROOT$f"
        fi
    done
    log "using $(in_root python3 -V) in $ROOT"
    in_root rm -rf "/opt/ha-$VERSION"
    in_root python3 -m venv "/opt/ha-$VERSION"
    install_release "/opt/ha-$VERSION" in_root
    pyver="$(in_root "/opt/ha-$VERSION/bin/python" -c 'import platform; print(platform.python_version())')"
    printf '{"version": "%s", "kind": "chroot", "root": "%s", "hass": "%s", "python": "%s"}\n' \
        "$VERSION" "$ROOT" "/opt/ha-$VERSION/bin/hass" "$pyver" >"$DESCRIPTOR.tmp"
fi

echo "$STAMP_WANT" >"$DIR/stamp"
mv "$DESCRIPTOR.tmp" "$DESCRIPTOR"
log "installed homeassistant==$VERSION in $(($(date +%s) - start)) s: $(cat "$DESCRIPTOR")"
echo "$DESCRIPTOR"
