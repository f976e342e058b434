"""A bare OCPP 1.6J central system on the ``ocpp`` library alone: the yardstick for throughput.py.

``ocpp.v16.ChargePoint`` with ``@on`` handlers for BootNotification, MeterValues, Heartbeat
and StatusNotification, the library's default schema validation (jsonschema, in a thread:
``ocpp.messages.ASYNC_VALIDATION`` stays True), no MQTT, no state, no parsing of meter values.
It is what "just the OCPP plumbing" costs; the service does that plus parsing, state and MQTT.

    python bench/baseline.py --port 9100        # logs 'ready: ...' on stderr, stops on SIGTERM/SIGINT

Run by ``throughput.py --compare-baseline`` / ``--target baseline``; not meant for real chargers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from datetime import datetime, timezone
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint as _ChargePoint
from ocpp.v16 import call_result
from ocpp.v16.enums import Action, RegistrationStatus
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class BaselineChargePoint(_ChargePoint):
    @on(Action.boot_notification)
    def on_boot_notification(self, charge_point_vendor: str, charge_point_model: str, **kwargs: Any) -> Any:
        return call_result.BootNotification(current_time=_now(), interval=300, status=RegistrationStatus.accepted)

    @on(Action.heartbeat)
    def on_heartbeat(self, **kwargs: Any) -> Any:
        return call_result.Heartbeat(current_time=_now())

    @on(Action.status_notification)
    def on_status_notification(self, connector_id: int, error_code: str, status: str, **kwargs: Any) -> Any:
        return call_result.StatusNotification()

    @on(Action.meter_values)
    def on_meter_values(self, connector_id: int, meter_value: list[dict[str, Any]], **kwargs: Any) -> Any:
        return call_result.MeterValues()


async def _handler(ws: Any) -> None:
    charger_id = ws.request.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    cp = BaselineChargePoint(charger_id, ws)
    try:
        await cp.start()
    except ConnectionClosed:
        pass


async def _main(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(_handler, host, port, subprotocols=["ocpp1.6"], ping_interval=20, ping_timeout=20,
                     max_size=65536) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"baseline ready: bare ocpp-library central system on ws://{host}:{bound}/<id>", file=sys.stderr, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9100, help="listen port (default 9100)")
    args = parser.parse_args(argv)
    # The library logs every frame at INFO; the service silences it too, so compare like with like.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    asyncio.run(_main(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
