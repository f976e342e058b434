#!/usr/bin/env bash
# Make sure Debian's mosquitto broker is installed (the tests and the embedded quick-start broker use it).
set -euo pipefail
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
  echo "mosquitto is missing; install it with: apt-get install -y mosquitto" >&2
  exit 1
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
echo "installing mosquitto (Debian package)..." >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
# The package enables a system-wide broker on :1883; we start our own where needed.
(command -v systemctl >/dev/null 2>&1 && $SUDO systemctl disable --now mosquitto >/dev/null 2>&1) || true
