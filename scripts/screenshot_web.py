"""Make docs/ingress.png: the chargers page in a real headless Chromium, with simulated chargers.

    .venv/bin/python scripts/screenshot_web.py [--out docs/ingress.png] [--width 1280] [--height 1800] [--phone PNG]

Everything runs on 127.0.0.1: a mosquitto for the run, the service with the page in ingress mode
(the "ingress proxy" is 127.0.0.1 here), two simulated chargers, Debian's chromium + chromium-driver
(scripts/ensure-chromium.sh). ``--phone`` also writes a 390 px wide view, to check the phone layout.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ocpp_addon import config as config_module  # noqa: E402
from ocpp_addon.app import App  # noqa: E402
from ocpp_addon.broker import EmbeddedBroker  # noqa: E402
from ocpp_addon.hub import READY, RESULT, Event  # noqa: E402
from ocpp_addon.simulator import SimOptions, connect  # noqa: E402
from tests import browser  # noqa: E402

TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Waiter:
    """A hub sink: wait for an event instead of sleeping."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.changed = asyncio.Condition()

    def handle(self, event: Event) -> None:
        self.events.append(event)

        async def notify() -> None:
            async with self.changed:
                self.changed.notify_all()

        asyncio.ensure_future(notify())

    async def wait(self, kind: str, charger_id: str, since: int = 0) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(
                lambda: any(e.kind == kind and e.charger_id == charger_id for e in self.events[since:])), TIMEOUT)


async def shoot(args: argparse.Namespace, workdir: Path) -> None:
    broker = EmbeddedBroker(free_port(), workdir / "broker")
    await broker.start()
    config = config_module.validate({
        "data_dir": str(workdir / "data"),
        "ocpp": {"host": "127.0.0.1", "port": free_port(), "boot_wait": 2},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "embedded_broker": False},
        "charging": {"debounce": 0},
        "web": {"enabled": True, "ingress": True, "ingress_proxy": "127.0.0.1", "host": "127.0.0.1", "port": 0},
    })
    app = App(config)
    waiter = Waiter()
    app.hub.add_sink(waiter)
    await app.start()
    url = f"ws://127.0.0.1:{config['ocpp']['port']}"
    running: list[Any] = []
    driver = None
    try:
        for cid, options in (("carport", SimOptions(vendor="Wallbox", model="Pulsar Plus", firmware="6.2.14", phases=1,
                                                      meter_interval=0, profile_status="Rejected", start_transaction=False)),
                             ("garage", SimOptions(vendor="ABB", model="Terra AC W22", firmware="1.8.21", meter_interval=0))):
            since = len(waiter.events)
            sim, task = await connect(url, cid, options)
            running.append((sim, task))
            await waiter.wait(READY, cid, since)
            await asyncio.wait_for(sim.booted.wait(), TIMEOUT)
        garage = running[1][0]
        since = len(waiter.events)
        app.hub.set_charging_limit("carport", 10)  # refused by this charger: the page shows why
        await waiter.wait(RESULT, "carport", since)
        driver = browser.start_browser(width=args.width, height=args.height)
        page = f"http://127.0.0.1:{app.web.port}/"
        await browser.run(driver.get, page)
        await browser.wait_js(driver, "return document.querySelector('#chargers [data-charger-id=\"garage\"]')", TIMEOUT)
        await browser.run(driver.execute_script, "document.querySelector('#chargers [data-charger-id=\"garage\"]').click()")
        await browser.wait_js(driver, "return document.body.dataset.watching === 'garage'", TIMEOUT)
        await browser.run(driver.execute_script,
                          "const i = document.getElementById('limit-input'); i.value = '16'; document.getElementById('limit-set').click()")
        await garage.wait_for_call("SetChargingProfile", timeout=TIMEOUT)
        await browser.wait_js(driver, "return /Applied16 A/.test(document.getElementById('d-limit').textContent)", TIMEOUT)
        for _ in range(2):
            await garage.send_meter_values()
        await browser.run(driver.execute_script, "document.getElementById('config-load').click()")
        await browser.wait_js(driver, "return document.querySelectorAll('#config tbody tr').length > 3", TIMEOUT)
        await browser.wait_js(driver, "return document.querySelectorAll('#frames tr.frame[data-action=\"MeterValues\"]').length >= 4", TIMEOUT)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        await browser.run(driver.save_screenshot, str(args.out))
        print(f"wrote {args.out}")
        if args.phone:
            await browser.run(driver.set_window_size, 390, 2400)
            await browser.wait_js(driver, "return window.innerWidth <= 400", TIMEOUT)
            await browser.run(driver.save_screenshot, str(args.phone))
            print(f"wrote {args.phone}")
    finally:
        if driver is not None:
            await browser.run(driver.quit)
        for sim, task in running:
            await sim._connection.close()
            task.cancel()
        await asyncio.gather(*(t for _, t in running), return_exceptions=True)
        await app.stop()
        await broker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "ingress.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1800)  # the whole page of docs/ingress.png
    parser.add_argument("--phone", type=Path, help="also write a phone-width view here")
    args = parser.parse_args()
    problem = browser.missing()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="ocpp-screenshot-") as workdir:
        asyncio.run(shoot(args, Path(workdir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
