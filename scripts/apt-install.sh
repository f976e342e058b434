#!/usr/bin/env bash
# Install Debian packages for the setup steps (scripts/ensure-*.sh): bash scripts/apt-install.sh PACKAGE...
# Without root and without sudo it says what to run instead and fails.
set -euo pipefail
if [ "$#" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
  echo "$* missing; install with: apt-get install -y $*" >&2
  exit 1
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
echo "installing $* (Debian packages)..." >&2
# Another apt-get (a parallel setup) may hold the dpkg lock for a while: wait for it instead of failing.
$SUDO apt-get update -qq -o DPkg::Lock::Timeout=600
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "$@" >/dev/null
