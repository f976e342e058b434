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
bash "$(dirname "$0")/apt-install.sh" "${packages[@]}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
# The package enables a system-wide HAProxy; the tests start their own.
if [[ " ${packages[*]} " == *" haproxy "* ]]; then
  (command -v systemctl >/dev/null 2>&1 && $SUDO systemctl disable --now haproxy >/dev/null 2>&1) || true
fi
