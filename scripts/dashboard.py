#!/usr/bin/env python3
"""Render Home Assistant's entity overview with a simulated charger on it: docs/dashboard.png.

    .venv/bin/python scripts/dashboard.py [--out docs/dashboard.png] [--width 1400] [--height 1000] [--no-fit]
                                          [--release VERSION]

The same setup as tests/e2e/test_ha_ocpp.py, plus HA's frontend: a throw-away mosquitto and a real Home
Assistant core (by default the release users run today, HA_CURRENT in scripts/ha_venv.sh, which sets it
up), both on 127.0.0.1; our service in-process with one simulated charger sending meter values; a
charging limit of 16 A set through HA (number.set_value). Then headless Chromium (Debian's ``chromium``;
``apt-get install -y chromium``) opens the entity overview (the default dashboard up to 2025.x; on 2026.x,
whose default is an area summary, an added "Chargers" dashboard of the same kind) as the logged-in owner
and takes the screenshot; the window grows taller when the charger's
card would be cut off (--no-fit keeps it). For the picture the harness's owner is renamed "Home owner"
and its person entity (no device tracker, always "Unknown") is removed.

Logging in: the frontend keeps its tokens in localStorage (``hassTokens``). Over the DevTools protocol
the script opens a page of HA's origin, stores the harness's long-lived access token there (with an
expiry far ahead, so the frontend never tries to refresh it), then navigates to the dashboard and
waits until the charger's cards (and the slider) are rendered. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import websockets  # noqa: E402

from tests.conftest import Service, make_config  # noqa: E402
from tests.e2e.ha import AsyncHomeAssistant, HomeAssistant, Mosquitto, current_release, free_port, version_tuple  # noqa: E402

CHARGER = "wallbox-1"
CHARGER_OPTIONS = {"vendor": "ACME", "model": "Wallbox 22", "firmware": "2.3.4", "serial": "ACME-0001", "meter_interval": 5.0}
LIMIT = 16
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-proxy-server", "--hide-scrollbars", "--remote-debugging-address=127.0.0.1",
)
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Text of the whole page, shadow roots included (HA's frontend is web components all the way down),
# and whether the number row's slider exists.
PAGE_PROBE_JS = r"""
(() => {
  const texts = [], tags = new Set();
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      tags.add(el.localName);
      if (el.shadowRoot) walk(el.shadowRoot);
    }
    texts.push(((root.body || root).textContent || '').replace(/\s+/g, ' '));
  };
  walk(document);
  return JSON.stringify({text: texts.join(' '), tags: [...tags], url: location.href});
})()
"""

# Where the dashboard's cards end (page coordinates), to size the window to the content.
VIEW_BOTTOM_JS = r"""
(() => {
  const find = (root, tag) => {
    for (const el of root.querySelectorAll('*')) {
      if (el.localName === tag) return el;
      if (el.shadowRoot) { const hit = find(el.shadowRoot, tag); if (hit) return hit; }
    }
    return null;
  };
  const cards = find(document, 'hui-masonry-view');
  if (!cards) return null;
  let bottom = 0;
  const walk = (root) => {
    for (const el of root.querySelectorAll('ha-card')) bottom = Math.max(bottom, el.getBoundingClientRect().bottom);
    for (const el of root.querySelectorAll('*')) if (el.shadowRoot) walk(el.shadowRoot);
  };
  walk(cards.shadowRoot || cards);
  return bottom + window.scrollY;
})()
"""
MAX_HEIGHT = 2000


def log(message: str) -> None:
    print(f"dashboard: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Chromium over the DevTools protocol


class DevTools:
    """One CDP session on a page target: ``await cdp("Page.navigate", url=...)`` returns the result."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0

    async def __call__(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        msg_id = self.next_id
        await self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        async with asyncio.timeout(timeout):
            while True:
                msg = json.loads(await self.ws.recv())
                if msg.get("id") == msg_id:  # everything else is an event we did not ask about
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def navigate(self, url: str, timeout: float = 30) -> None:
        await self("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while await self.evaluate("document.readyState") != "complete" or \
                (await self.evaluate("location.href")).rstrip("/") != url.rstrip("/"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not load within {timeout} s")
            await asyncio.sleep(0.2)


def _http_json(url: str, timeout: float = 2) -> Any:
    with _NO_PROXY.open(url, timeout=timeout) as resp:
        return json.loads(resp.read())


async def screenshot_dashboard(ha: HomeAssistant, width: int, height: int, must_show: list[str],
                               fit: bool = True, timeout: float = 90, path: str = "/lovelace/0",
                               need_slider: bool = True) -> bytes:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: install Debian's package with `apt-get install -y chromium`")
    port = free_port()
    profile = tempfile.mkdtemp(prefix="dashboard-chromium-")
    chromium_log = Path(profile) / "chromium.log"
    with open(chromium_log, "wb") as out:
        proc = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                pages = [t for t in _http_json(f"http://127.0.0.1:{port}/json/list") if t.get("type") == "page"]
                if pages:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium's DevTools endpoint never came up:\n{chromium_log.read_text(errors='replace')[-3000:]}")
            await asyncio.sleep(0.2)
        async with websockets.connect(pages[0]["webSocketDebuggerUrl"], max_size=None, proxy=None) as ws:
            cdp = DevTools(ws)
            await cdp("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
            # 1. A page of HA's origin that needs no login, to write the frontend's token store.
            await cdp.navigate(f"{ha.base_url}/auth/providers")
            tokens = {
                "hassUrl": ha.base_url, "clientId": ha.client_id, "access_token": ha.token, "token_type": "Bearer",
                "refresh_token": "", "expires_in": 10 * 365 * 86400,
                "expires": int((time.time() + 10 * 365 * 86400) * 1000),
            }
            await cdp.evaluate(f"localStorage.setItem('hassTokens', {json.dumps(json.dumps(tokens))}); 'ok'")
            # 2. The default dashboard (Overview), as the logged-in owner sees it.
            await cdp("Page.navigate", url=f"{ha.base_url}{path}")
            deadline = time.monotonic() + timeout
            while True:
                page = json.loads(await cdp.evaluate(PAGE_PROBE_JS))
                if "ha-authorize" in page["tags"] or "/auth/authorize" in page["url"]:
                    raise RuntimeError(f"the frontend shows its login page ({page['url']}): the token was not accepted")
                missing = [t for t in must_show if t not in page["text"]]
                has_slider = "ha-slider" in page["tags"] or "ha-control-slider" in page["tags"]
                if not missing and (has_slider or not need_slider):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the dashboard never showed {missing} (slider: {has_slider}); at {page['url']}: "
                                       f"{page['text'][:1500]}")
                await asyncio.sleep(0.5)
            await asyncio.sleep(2)  # let cards finish their first layout and the slider its animation
            if fit:  # grow the window so the charger's card is not cut off at the bottom
                bottom = await cdp.evaluate(VIEW_BOTTOM_JS)
                if bottom and bottom + 16 > height:
                    height = min(int(bottom) + 16, MAX_HEIGHT)
                    await cdp("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
                    await asyncio.sleep(1)
            shot = await cdp("Page.captureScreenshot", format="png", captureBeyondViewport=False)
            return base64.b64decode(shot["data"])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(profile, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# the setup


ENTITY_DASHBOARD = "ocpp-chargers"


def entity_dashboard_path(ha: HomeAssistant) -> str:
    """A dashboard of every device's entities in cards: where the picture is taken.

    Up to 2025.x the default dashboard (Overview) showed exactly that by itself (the ``original-states``
    strategy). 2026.x opens on a summary of areas that lists no entities, so the script adds a dashboard
    with that strategy, as a user does with "Add dashboard" and the entity overview."""
    if version_tuple(ha.version) < (2025, 12):
        return "/lovelace/0"
    ha.ws("lovelace/dashboards/create", url_path=ENTITY_DASHBOARD, title="Chargers", icon="mdi:ev-station",
          mode="storage", show_in_sidebar=True, require_admin=False)
    ha.ws("lovelace/config/save", url_path=ENTITY_DASHBOARD, config={"strategy": {"type": "original-states"}})
    return f"/{ENTITY_DASHBOARD}/0"


def tidy_up_owner(ha: HomeAssistant) -> None:
    """The harness's owner: a friendlier name, and no person card (no device tracker: always 'Unknown')."""
    user = ha.ws("auth/current_user")
    ha.ws("config/auth/update", user_id=user["id"], name="Home owner")
    for person in ha.ws("person/list").get("storage", []):
        ha.ws("person/delete", person_id=person["id"])


async def run(out: Path, width: int, height: int, fit: bool, release: str) -> None:
    t0 = time.monotonic()
    with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="dashboard-ocpp-") as data:
        # The harness's minimal config plus the UI; HA's MQTT debug log is not needed here.
        ha = HomeAssistant(release=release, extra_config="frontend:\n", log_levels={})
        try:
            await asyncio.to_thread(ha.start)
            log(f"Home Assistant {ha.version} running at {ha.base_url} ({ha.startup_seconds[-1]:.1f} s)")
            await asyncio.to_thread(ha.setup_mqtt, broker.host, broker.port)
            aha = AsyncHomeAssistant(ha)
            service = Service(make_config(broker.port, Path(data)))
            await service.start()
            try:
                sim = await service.charger(CHARGER, **CHARGER_OPTIONS)
                await sim.send_meter_values()
                limit_id = await aha.wait_for(lambda: ha.entity_id_for(f"ocpp_{CHARGER}_charging_limit"), 60,
                                              "the charging-limit entity in HA's registry")
                # HA skips service calls on an entity that is not available yet (availability arrives just after discovery)
                await aha.wait_for_state(limit_id, lambda s: s is not None and s["state"] != "unavailable", 30)
                await aha.call_service("number", "set_value", {"entity_id": limit_id, "value": LIMIT})
                await aha.wait_for_state(limit_id, lambda s: s is not None and s["state"] not in ("unknown", "unavailable")
                                         and float(s["state"]) == LIMIT, 30)
                await sim.send_meter_values()  # the simulated charger now draws the limited current
                power_id = ha.entity_id_for(f"ocpp_{CHARGER}_power")
                await aha.wait_for_state(power_id, lambda s: s is not None and s["state"] not in ("unknown", "unavailable")
                                         and abs(float(s["state"]) - sim.power()) < 1, 30)
                log(f"{CHARGER}: limit {LIMIT} A accepted, {sim.power():.0f} W; rendering the dashboard")
                await asyncio.to_thread(tidy_up_owner, ha)
                path = await asyncio.to_thread(entity_dashboard_path, ha)
                png = await screenshot_dashboard(ha, width, height, [CHARGER, "Charging limit", "Power", "Energy"], fit,
                                                 path=path)
            finally:
                await service.stop()
        finally:
            ha.cleanup()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)
    log(f"wrote {out} ({len(png) // 1024} KiB) in {time.monotonic() - t0:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "dashboard.png")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000, help="window height (grown to fit the cards unless --no-fit)")
    parser.add_argument("--no-fit", dest="fit", action="store_false", help="keep the window height even if cards are cut off")
    parser.add_argument("--release", default=current_release(), help="Home Assistant release (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
    logging.getLogger("ocpp_addon").setLevel(logging.INFO)
    asyncio.run(run(args.out, args.width, args.height, args.fit, args.release))
    return 0


if __name__ == "__main__":
    sys.exit(main())
