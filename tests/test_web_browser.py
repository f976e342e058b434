"""The chargers page in a real headless Chromium, through a stand-in ingress proxy that serves it
under /api/hassio_ingress/<token>/ (issue 16's "done when"): it lists a simulated charger, shows
its frames within 1 s, a limit set on the page reaches the charger as SetChargingProfile and the
applied value appears, a configuration key is changed, a charger-supplied vendor string runs no
script, and a request from an address other than the ingress proxy is refused.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import aiohttp
import pytest

from ocpp_addon.store import Store

from . import browser
from .conftest import TIMEOUT, Service
from .ingress_proxy import INGRESS_PATH, IngressProxy

EVIL = "<img src=x onerror=alert(1)>"

@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if browser.missing() is not None:
        pytest.fail(browser.missing())
    driver = browser.start_browser(width=1280, height=900)
    yield driver
    driver.quit()


@pytest.fixture
async def page(service_factory: Callable[..., Any], chromium: Any) -> AsyncIterator[tuple[Service, IngressProxy, Any]]:
    svc = await service_factory(web={"enabled": True, "ingress": True, "ingress_proxy": "127.0.0.1", "host": "127.0.0.1", "port": 0})
    proxy = IngressProxy(svc.app.web.port)
    await proxy.start()
    yield svc, proxy, chromium
    await browser.run(chromium.get, "about:blank")  # closes the page's WebSocket before the service stops
    await proxy.stop()


async def open_page(driver: Any, proxy: IngressProxy, charger_id: str) -> None:
    await browser.run(driver.get, proxy.url)
    # The charger is listed, selected, and the page watches its frames (the buffer has arrived).
    await browser.wait_js(driver, "return document.querySelector('#chargers [data-charger-id=\"' + arguments[0] + '\"].selected')",
                          TIMEOUT, charger_id)
    await browser.wait_js(driver, "return document.body.dataset.watching === arguments[0]", TIMEOUT, charger_id)


def frames_shown(action: str, direction: str) -> str:
    """A JS expression: how many frames of this action and direction the page lists."""
    return f"document.querySelectorAll('#frames tr.frame[data-action=\"{action}\"][data-dir=\"{direction}\"]').length"


def count_frames(action: str, direction: str) -> str:
    return f"return {frames_shown(action, direction)}"


async def test_page_lists_the_charger_and_shows_its_frames_within_one_second(page: tuple[Service, IngressProxy, Any]) -> None:
    svc, proxy, driver = page
    sim = await svc.charger("wallbox-1")
    await open_page(driver, proxy, "wallbox-1")
    assert await browser.run(driver.execute_script, "return location.pathname") == INGRESS_PATH + "/"
    assert await browser.run(driver.execute_script, "return document.getElementById('d-id').textContent") == "wallbox-1"
    before = await browser.run(driver.execute_script, count_frames("MeterValues", "in"))
    # Both directions, newest first: the charger's CALL and our answer, within 1 s of the charger sending it.
    sending = asyncio.create_task(sim.send_meter_values())
    await browser.wait_js(driver, f"return {frames_shown('MeterValues', 'in')} > arguments[0] && "
                                  f"{frames_shown('MeterValues', 'out')} > arguments[0]", 1.0, before)
    await sending
    newest = await browser.run(driver.execute_script, "const r = document.querySelector('#frames tr.frame'); return [r.dataset.dir, r.dataset.action, r.cells[2].textContent]")
    assert newest == ["out", "MeterValues", "CALLRESULT"]
    # Paused: new frames wait; the filter shows one action only.
    await browser.run(driver.execute_script, "document.getElementById('frames-pause').click()")
    shown = await browser.run(driver.execute_script, "return document.querySelectorAll('#frames tr.frame').length")
    await sim.send_meter_values()
    await browser.wait_js(driver, "return /new while paused/.test(document.getElementById('frames-count').textContent)", TIMEOUT)
    assert await browser.run(driver.execute_script, "return document.querySelectorAll('#frames tr.frame').length") == shown
    await browser.run(driver.execute_script, "document.getElementById('frames-pause').click()")
    await browser.wait_js(driver, "return document.querySelectorAll('#frames tr.frame').length > arguments[0]", TIMEOUT, shown)
    await browser.run(driver.execute_script, "const s = document.getElementById('frames-filter'); s.value = 'MeterValues'; s.dispatchEvent(new Event('change'))")
    actions = await browser.run(driver.execute_script, "return [...document.querySelectorAll('#frames tr.frame')].map(r => r.dataset.action)")
    assert actions and set(actions) == {"MeterValues"}
    # Written to disk only when asked: Save hands the browser a file of the frames the page holds, oldest first.
    saved = await browser.run(driver.execute_async_script, """
        const done = arguments[arguments.length - 1];
        const real = URL.createObjectURL;
        HTMLAnchorElement.prototype.click = function () { window.__download = this.download; };
        URL.createObjectURL = (blob) => { blob.text().then(done); return real(blob); };
        document.getElementById('frames-save').click();""")
    data = json.loads(saved)
    assert data["charger"] == "wallbox-1" and len(data["frames"]) >= 4
    assert {(f["dir"], f["action"]) for f in data["frames"]} == {("in", "MeterValues"), ("out", "MeterValues")}
    assert data["frames"][0]["t"] <= data["frames"][-1]["t"]
    assert re.fullmatch(r"ocpp-frames-wallbox-1-[0-9TZ-]+\.json", await browser.run(driver.execute_script, "return window.__download"))


async def test_a_limit_set_on_the_page_reaches_the_charger_and_the_applied_value_appears(page: tuple[Service, IngressProxy, Any]) -> None:
    svc, proxy, driver = page
    sim = await svc.charger("wallbox-1")
    await open_page(driver, proxy, "wallbox-1")
    since = len(sim.received)
    await browser.run(driver.execute_script, "const i = document.getElementById('limit-input'); i.value = '13'; document.getElementById('limit-set').click()")
    profile = await sim.wait_for_call("SetChargingProfile", since=since)
    assert profile["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 13
    applied = await browser.wait_js(
        driver, "const t = document.getElementById('d-limit').textContent; return /Applied13 A/.test(t) && t", TIMEOUT)
    assert "Why not applied" not in applied
    await browser.wait_js(driver, "return /charging_limit · Accepted · 13 A/.test(document.getElementById('results').textContent)", TIMEOUT)


async def test_a_configuration_key_is_read_and_changed_from_the_page(page: tuple[Service, IngressProxy, Any]) -> None:
    svc, proxy, driver = page
    sim = await svc.charger("wallbox-1")
    await open_page(driver, proxy, "wallbox-1")
    await browser.run(driver.execute_script, "document.getElementById('config-load').click()")
    await browser.wait_js(driver, "return document.querySelector('#config tr[data-key=\"MeterValueSampleInterval\"] input')", TIMEOUT)
    read_only = await browser.run(driver.execute_script, "const r = document.querySelector('#config tr[data-key=\"NumberOfConnectors\"]'); return [!!r.querySelector('input'), r.textContent]")
    assert read_only[0] is False and "read-only" in read_only[1]
    await browser.run(driver.execute_script, "const r = document.querySelector('#config tr[data-key=\"MeterValueSampleInterval\"]'); r.querySelector('input').value = '45'; r.querySelector('button').click()")
    change = await sim.wait_for_call("ChangeConfiguration", lambda p: p["key"] == "MeterValueSampleInterval")
    assert change["value"] == "45"
    await browser.wait_js(driver, "return document.querySelector('#config tr[data-key=\"MeterValueSampleInterval\"] .outcome')?.textContent === 'Accepted'", TIMEOUT)
    assert sim.changed_configuration["MeterValueSampleInterval"] == "45"


async def test_a_charger_supplied_vendor_runs_no_script(service_factory: Callable[..., Any], chromium: Any, tmp_path: Path) -> None:
    """OCPP 1.6 caps the vendor at 20 characters, so this vendor reaches the page the two ways it can:
    remembered in the state file (as a 2.0.1 charger's 50-character vendorName would be) and inside
    a frame, where the charger's over-long BootNotification is shown before it is refused."""
    store = Store(tmp_path / "data")  # the service's data_dir (conftest.make_config)
    store.update_charger("wallbox-1", vendor=EVIL, model="<script>alert(2)</script>", firmware='" onmouseover="alert(3)')
    await store.close()
    svc = await service_factory(web={"enabled": True, "ingress": True, "ingress_proxy": "127.0.0.1", "host": "127.0.0.1", "port": 0})
    proxy = IngressProxy(svc.app.web.port)
    await proxy.start()
    try:
        sim = await svc.charger("wallbox-1", send_boot=False)  # a boot would replace the remembered vendor
        await open_page(chromium, proxy, "wallbox-1")
        boot = json.dumps([2, "evil-1", "BootNotification", {"chargePointVendor": EVIL, "chargePointModel": "<svg onload=alert(4)>"}])
        await sim._connection.send(boot)  # raw: the simulator's own schema check would stop it
        await browser.wait_js(chromium, count_frames("BootNotification", "in") + " > 0", TIMEOUT)
        await browser.wait_js(chromium, "return document.querySelector('#frames tr.frame[data-dir=\"out\"][data-action=\"BootNotification\"]')", TIMEOUT)
        info = await browser.run(chromium.execute_script, "return document.getElementById('d-info').textContent")
        assert EVIL in info and "<script>alert(2)</script>" in info and 'onmouseover="alert(3)' in info
        listed = await browser.run(chromium.execute_script, "return document.getElementById('chargers').textContent")
        assert EVIL in listed
        frame = await browser.run(chromium.execute_script,
                                  "return document.querySelector('#frames tr.frame[data-action=\"BootNotification\"][data-dir=\"in\"] td.text').textContent")
        assert EVIL in frame and "<svg onload=alert(4)>" in frame
        assert await browser.run(chromium.execute_script, "return document.querySelectorAll('img, svg, script:not([src])').length") == 0
        assert await browser.run(chromium.execute_script, "return window.__ran") == []
    finally:
        await browser.run(chromium.get, "about:blank")
        await proxy.stop()


async def test_a_request_from_another_address_than_the_ingress_proxy_is_refused(page: tuple[Service, IngressProxy, Any]) -> None:
    svc, proxy, driver = page
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as stranger:
        for path in ("/", "/ws", "/static/app.js"):
            async with stranger.get(f"http://127.0.0.1:{svc.app.web.port}{path}") as response:
                assert response.status == 403, path
    # The same page through the proxy (from 127.0.0.1) loads.
    await browser.run(driver.get, proxy.url)
    await browser.wait_js(driver, "return document.getElementById('link').textContent === 'live'", TIMEOUT)
