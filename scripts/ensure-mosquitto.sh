#!/usr/bin/env bash
# Make sure Debian's mosquitto broker (the tests and the embedded quick-start broker use it) and
# mosquitto-clients (mosquitto_pub/mosquitto_sub, used by the README's demo) are installed.
set -euo pipefail
packages=()
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  packages+=(mosquitto)
fi
if ! command -v mosquitto_pub >/dev/null 2>&1 || ! command -v mosquitto_sub >/dev/null 2>&1; then
  packages+=(mosquitto-clients)
fi
if [ "${#packages[@]}" -eq 0 ]; then
  exit 0
fi
bash "$(dirname "$0")/apt-install.sh" "${packages[@]}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
# The package enables a system-wide broker on :1883; we start our own where needed.
if [[ " ${packages[*]} " == *" mosquitto "* ]]; then
  (command -v systemctl >/dev/null 2>&1 && $SUDO systemctl disable --now mosquitto >/dev/null 2>&1) || true
fi
