#!/usr/bin/env bash
# Build (or reuse) a cached virtualenv holding a real Home Assistant core for the end-to-end tests.
#
#   scripts/ha_venv.sh [VENV_DIR]
#
# VENV_DIR defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/ocpp_addon/ha-venv (or $OCPP_HA_VENV when set).
# Home Assistant needs Python >= 3.13 while the project itself runs on 3.11, so this script looks for a
# separate interpreter: $HA_PYTHON, python3.13/python3.14 on PATH, pyenv's versions, /usr/bin, /usr/local/bin.
#
# The pin: homeassistant 2025.4.4 is the newest release whose Requires-Python (>=3.13.0) admits the
# CPython 3.13.0 these machines carry through pyenv; 2025.5.0 and later require >=3.13.2.
# Besides the core it installs the exact requirements listed by the manifests of the integrations an
# MQTT-only config loads (mqtt, frontend and their `dependencies`, transitively), under HA's own
# package_constraints.txt, so `hass --skip-pip` starts without reaching for pip at run time.
#
# Idempotent: a venv whose stamp file records this exact pin (and whose hass still imports) is left alone.
# The last line printed is always the venv path.
set -euo pipefail

HA_VERSION="2025.4.4"
HA_MIN_PYTHON="3.13.0"   # Requires-Python of homeassistant==2025.4.4
# Integrations whose manifest requirements (and whose dependencies' requirements) we install.
# Bootstrap's always-loaded integrations (CORE_INTEGRATIONS, DEFAULT_INTEGRATIONS) are added by the
# resolver below; isal only makes aiohttp's compression fast and silences a startup warning.
HA_INTEGRATIONS="${HA_INTEGRATIONS:-mqtt frontend isal}"

VENV_DIR="${1:-${OCPP_HA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ocpp_addon/ha-venv}}"
STAMP="$VENV_DIR/.ocpp_addon_ha_stamp"
WANT_STAMP="homeassistant==$HA_VERSION integrations=$HA_INTEGRATIONS"

log() { echo "ha_venv: $*" >&2; }

# ---- already there? -------------------------------------------------------------------------------
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT_STAMP" && -x "$VENV_DIR/bin/hass" ]] &&
   "$VENV_DIR/bin/python" -c 'import homeassistant.const' >/dev/null 2>&1; then
    log "up to date: $WANT_STAMP in $VENV_DIR"
    echo "$VENV_DIR"
    exit 0
fi

# ---- find a Python >= HA_MIN_PYTHON -------------------------------------------------------------------
version_ok() {  # $1 = interpreter; prints its version when it is >= HA_MIN_PYTHON and can make venvs
    "$1" - "$HA_MIN_PYTHON" <<'EOF' 2>/dev/null
import sys, platform, venv, ensurepip
need = tuple(int(p) for p in sys.argv[1].split("."))
if sys.version_info[:3] >= need and sys.implementation.name == "cpython":
    print(platform.python_version())
else:
    sys.exit(1)
EOF
}

candidates=()
[[ -n "${HA_PYTHON:-}" ]] && candidates+=("$HA_PYTHON")
for name in python3.14 python3.13; do
    p="$(command -v "$name" 2>/dev/null || true)"
    [[ -n "$p" ]] && candidates+=("$p")
done
pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
if command -v pyenv >/dev/null 2>&1; then
    pyenv_root="$(pyenv root 2>/dev/null || echo "$pyenv_root")"
fi
shopt -s nullglob
for p in "$pyenv_root"/versions/3.1[3-9]*/bin/python3 /usr/local/bin/python3.1[3-9] /usr/bin/python3.1[3-9] \
         /opt/python*/bin/python3; do
    candidates+=("$p")
done
shopt -u nullglob

PYTHON=""
PYTHON_VERSION=""
for c in "${candidates[@]}"; do
    [[ -x "$c" ]] || continue
    if v="$(version_ok "$c")"; then
        # keep the highest version found
        if [[ -z "$PYTHON" ]] || [[ "$(printf '%s\n%s\n' "$PYTHON_VERSION" "$v" | sort -V | tail -n1)" == "$v" && "$v" != "$PYTHON_VERSION" ]]; then
            PYTHON="$c"
            PYTHON_VERSION="$v"
        fi
    fi
done

if [[ -z "$PYTHON" ]]; then
    log "ERROR: no CPython >= $HA_MIN_PYTHON (with venv and ensurepip) found."
    log "  Home Assistant $HA_VERSION needs Python >= $HA_MIN_PYTHON; the project itself stays on 3.11."
    log "  Looked at: \$HA_PYTHON, python3.14/python3.13 on PATH, $pyenv_root/versions/3.13*, /usr/bin, /usr/local/bin."
    log "  Install one (e.g. 'pyenv install 3.13') or point HA_PYTHON at it."
    exit 2
fi
log "using Python $PYTHON_VERSION at $PYTHON"

# ---- build -------------------------------------------------------------------------------------------
start=$(date +%s)
if [[ -e "$VENV_DIR" ]]; then
    # Only ever delete something that is a venv (or an empty dir): the path comes from the caller.
    if [[ -f "$VENV_DIR/pyvenv.cfg" ]] || [[ -d "$VENV_DIR" && -z "$(ls -A "$VENV_DIR")" ]]; then
        log "replacing $VENV_DIR (stamp: $(cat "$STAMP" 2>/dev/null || echo none))"
        rm -rf "$VENV_DIR"
    else
        log "ERROR: $VENV_DIR exists and is not a virtualenv; refusing to overwrite it"
        exit 2
    fi
fi
mkdir -p "$(dirname "$VENV_DIR")"
"$PYTHON" -m venv "$VENV_DIR"
VPY="$VENV_DIR/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check --no-input)
# pip's "Location 'file:///...' is ignored" lines (local index dirs in some machines' pip config) are noise.
quiet_pip() { "${PIP[@]}" "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2); }

log "installing homeassistant==$HA_VERSION (this takes a few minutes the first time)"
quiet_pip install --quiet "homeassistant==$HA_VERSION"

# Requirements of the integrations we need, straight from the installed manifests.
REQS_FILE="$VENV_DIR/ha-integration-requirements.txt"
"$VPY" - $HA_INTEGRATIONS >"$REQS_FILE" <<'EOF'
import json, sys
from pathlib import Path
import homeassistant.components as comps

root = Path(comps.__path__[0])
try:  # what HA sets up with any configuration.yaml, even without default_config:
    import homeassistant.bootstrap as bootstrap
    always = set(bootstrap.CORE_INTEGRATIONS) | set(bootstrap.DEFAULT_INTEGRATIONS)
except (ImportError, AttributeError):
    always = set()
todo, seen, reqs = sorted(set(sys.argv[1:]) | always), set(), []
while todo:
    domain = todo.pop()
    if domain in seen:
        continue
    seen.add(domain)
    manifest = json.loads((root / domain / "manifest.json").read_text())
    for req in manifest.get("requirements", []):
        if req not in reqs:
            reqs.append(req)
    todo.extend(manifest.get("dependencies", []))
print("\n".join(sorted(reqs)))
print(f"integrations: {' '.join(sorted(seen))}", file=sys.stderr)
EOF
CONSTRAINTS="$("$VPY" -c 'import homeassistant, pathlib; print(pathlib.Path(homeassistant.__file__).parent / "package_constraints.txt")')"
log "integration requirements: $(tr '\n' ' ' <"$REQS_FILE")"
if [[ -s "$REQS_FILE" ]]; then
    quiet_pip install --quiet -r "$REQS_FILE" -c "$CONSTRAINTS"
fi

"$VPY" -c 'import homeassistant.const as c; assert c.__version__ == "'"$HA_VERSION"'", c.__version__'
echo "$WANT_STAMP" >"$STAMP"
end=$(date +%s)
log "installed homeassistant==$HA_VERSION with Python $PYTHON_VERSION in $((end - start)) s"
echo "$VENV_DIR"
