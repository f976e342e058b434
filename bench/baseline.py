"""Bare OCPP 1.6J central systems, the yardsticks for throughput.py.

``--mode default``: ``ocpp.v16.ChargePoint`` with ``@on`` handlers for BootNotification, MeterValues,
Heartbeat and StatusNotification, the library's default schema validation (jsonschema, in a thread:
``ocpp.messages.ASYNC_VALIDATION`` stays True), no MQTT, no state, no parsing of meter values.
It is what "just the OCPP plumbing" costs; the service does that plus parsing, state and MQTT.
``--mode inline``: the same with ``ASYNC_VALIDATION = False`` (validation in the loop, no thread hop).
``--mode off``: the same with ``skip_schema_validation=True`` on every handler.
``--mode transport``: no ``ocpp`` library at all: ``websockets`` + ``json``, a fixed CALLRESULT per
CALL. The transport floor: what any Python central system on this stack pays per message.
Every mode runs on the event loop the service would pick (``OCPP_ADDON_EVENT_LOOP``: uvloop when
installed, or asyncio), so a yardstick and the service are compared on the same loop.

    python bench/baseline.py --port 9100        # logs 'ready: ...' on stderr, stops on SIGTERM/SIGINT

Run by ``throughput.py --compare-baseline`` / ``--target baseline``; not meant for real chargers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from datetime import datetime, timezone
from typing import Any

import ocpp.messages
from ocpp.routing import on
from ocpp.v16 import ChargePoint as _ChargePoint
from ocpp.v16 import call_result
from ocpp.v16.enums import Action, RegistrationStatus
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from ocpp_addon.app import event_loop_factory


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def charge_point_class(skip_validation: bool) -> type[_ChargePoint]:
    class BaselineChargePoint(_ChargePoint):
        @on(Action.boot_notification, skip_schema_validation=skip_validation)
        def on_boot_notification(self, charge_point_vendor: str, charge_point_model: str, **kwargs: Any) -> Any:
            return call_result.BootNotification(current_time=_now(), interval=300, status=RegistrationStatus.accepted)

        @on(Action.heartbeat, skip_schema_validation=skip_validation)
        def on_heartbeat(self, **kwargs: Any) -> Any:
            return call_result.Heartbeat(current_time=_now())

        @on(Action.status_notification, skip_schema_validation=skip_validation)
        def on_status_notification(self, connector_id: int, error_code: str, status: str, **kwargs: Any) -> Any:
            return call_result.StatusNotification()

        @on(Action.meter_values, skip_schema_validation=skip_validation)
        def on_meter_values(self, connector_id: int, meter_value: list[dict[str, Any]], **kwargs: Any) -> Any:
            return call_result.MeterValues()

    return BaselineChargePoint


def library_handler(skip_validation: bool) -> Any:
    cls = charge_point_class(skip_validation)

    async def handler(ws: Any) -> None:
        charger_id = ws.request.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        cp = cls(charger_id, ws)
        try:
            await cp.start()
        except ConnectionClosed:
            pass

    return handler


async def transport_handler(ws: Any) -> None:
    """websockets + json only: parse the CALL, answer a fixed CALLRESULT (the payloads the library would send)."""
    try:
        async for raw in ws:
            try:
                message = json.loads(raw)
                kind, unique_id, action = message[0], message[1], message[2]
            except (ValueError, IndexError, KeyError, TypeError):
                continue
            if kind != 2:
                continue
            if action == "BootNotification":
                payload: dict[str, Any] = {"currentTime": _now(), "interval": 300, "status": "Accepted"}
            elif action == "Heartbeat":
                payload = {"currentTime": _now()}
            else:
                payload = {}
            await ws.send(json.dumps([3, unique_id, payload], separators=(",", ":")))
    except ConnectionClosed:
        pass


MODES = ("default", "inline", "off", "transport")


async def _main(host: str, port: int, mode: str = "default") -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if mode == "inline":
        ocpp.messages.ASYNC_VALIDATION = False
    handler = transport_handler if mode == "transport" else library_handler(skip_validation=mode == "off")
    async with serve(handler, host, port, subprotocols=["ocpp1.6"], ping_interval=20, ping_timeout=20,
                     max_size=65536) as server:
        bound = server.sockets[0].getsockname()[1]
        kind = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
        print(f"baseline ready: bare central system ({mode}) on ws://{host}:{bound}/<id>; event loop {kind}", file=sys.stderr, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9100, help="listen port (default 9100)")
    parser.add_argument("--mode", choices=MODES, default="default",
                        help="default: library, validation in a thread; inline: ASYNC_VALIDATION off; off: validation skipped; "
                             "transport: websockets + json, no library (default: default)")
    args = parser.parse_args(argv)
    # The library logs every frame at INFO; the service silences it too, so compare like with like.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    _, loop_factory = event_loop_factory()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_main(args.host, args.port, args.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
