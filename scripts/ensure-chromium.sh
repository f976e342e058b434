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
bash "$(dirname "$0")/apt-install.sh" "${packages[@]}"
