#!/usr/bin/env bash
# Make sure HAProxy (the load balancer of tests/test_cluster.py and of DOCS.md's deployment) and
# graphviz (bench and docs scripts draw the deployment with dot) are installed, from Debian's packages.
set -euo pipefail
packages=()
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
  packages+=(haproxy)
fi
if ! command -v dot >/dev/null 2>&1; then
  packages+=(graphviz)
fi
if [ "${#packages[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
  echo "${packages[*]} missing; install with: apt-get install -y ${packages[*]}" >&2
  exit 1
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
echo "installing ${packages[*]} (Debian packages)..." >&2
$SUDO apt-get update -qq -o DPkg::Lock::Timeout=600
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends \
  "${packages[@]}" >/dev/null
# The package enables a system-wide HAProxy; the tests start their own.
if [[ " ${packages[*]} " == *" haproxy "* ]]; then
  (command -v systemctl >/dev/null 2>&1 && $SUDO systemctl disable --now haproxy >/dev/null 2>&1) || true
fi
