#!/usr/bin/env bash
# Make sure Debian's headless Chromium and its WebDriver (chromium-driver) are installed: the web page
# tests (tests/test_web_browser.py) and scripts/screenshot_web.py drive a real browser through them.
set -euo pipefail
packages=()
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
command -v chromedriver >/dev/null 2>&1 || packages+=(chromium-driver)
if [ "${#packages[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
  echo "${packages[*]} missing; install with: apt-get install -y ${packages[*]}" >&2
  exit 1
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
echo "installing ${packages[*]} (Debian packages)..." >&2
# Another apt-get (a parallel setup) may hold the dpkg lock for a while: wait for it instead of failing.
$SUDO apt-get update -qq -o DPkg::Lock::Timeout=600
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends \
  "${packages[@]}" >/dev/null
