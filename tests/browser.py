"""Headless Chromium (Debian's chromium + chromium-driver) driven by selenium, for the chargers page.

Selenium's calls block, and the service runs on the test's event loop: every browser call goes
through :func:`run` (a worker thread) so the loop keeps serving the page meanwhile.
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Any, Callable

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Recorded before any page script runs: a script an attacker got onto the page would call one of these.
TRAP = """
window.__ran = [];
for (const name of ["alert", "confirm", "prompt"]) {
  const real = window[name];
  window[name] = function (...args) { window.__ran.push([name, String(args[0])]); return name === "confirm" ? true : undefined; };
}
"""


def missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            return f"{path} is missing: run scripts/ensure-chromium.sh (scripts/test.sh does)"
    return None


def start_browser(width: int = 1280, height: int = 900, scale: float = 1.0) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", "--disable-sync", "--disable-default-apps",
                f"--window-size={width},{height}", f"--force-device-scale-factor={scale}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": TRAP})
    return driver


async def run(function: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


async def wait_js(driver: Any, script: str, timeout: float, *args: Any) -> Any:
    """Wait until ``script`` (a JS expression's body: ``return ...``) returns something truthy; return it."""
    from selenium.webdriver.support.ui import WebDriverWait

    def until() -> Any:
        return WebDriverWait(driver, timeout, poll_frequency=0.02).until(lambda d: d.execute_script(script, *args))

    return await run(until)
