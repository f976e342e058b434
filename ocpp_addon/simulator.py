"""An OCPP 1.6J charge point simulator built on the ``ocpp`` library.

For demos (``python -m ocpp_addon.simulator --url ws://127.0.0.1:9000 --id wallbox-1``),
for trying a setup before the real charger is installed, and as the charger in
our tests. It boots, reports status, starts a transaction, sends heartbeats and
MeterValues (energy, power, current and voltage per phase, SoC, temperature),
applies the charging profiles it receives to its simulated power, and answers
SetChargingProfile with a configurable status (or not at all).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import websockets
from websockets.typing import Subprotocol
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as _OcppChargePoint
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action

_LOGGER = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class SimOptions:
    vendor: str = "Simulated"
    model: str = "SimCharger 22"
    firmware: str = "1.0.0"
    serial: str | None = None
    connectors: int = 1
    phases: int = 3
    voltage: float = 230.0
    max_current: float = 32.0
    meter_interval: float = 10.0  # 0 disables periodic MeterValues
    send_boot: bool = True
    start_transaction: bool = True
    # SetChargingProfile answer: Accepted | Rejected | NotSupported | "ignore" (never answer)
    profile_status: str = "Accepted"
    soc: float = 40.0
    extra_ignored_actions: set[str] = field(default_factory=set)
    # Quirks of real chargers (reference/ocpp-smart-charging.md), for testing the fallback ladder:
    allowed_units: tuple[str, ...] = ("A", "W")  # e.g. ("W",) for a W-only charger
    reject_connector_zero: bool = False
    rejected_purposes: set[str] = field(default_factory=set)  # e.g. {"TxDefaultProfile"}
    rejected_kinds: set[str] = field(default_factory=set)  # e.g. {"Absolute"}
    max_stack_level: int = 8
    # Kinds of charger seen in the field (issue 12):
    dc: bool = False  # a DC station: one voltage (~400 V DC) and one current, no phases
    feature_profiles: str = "Core,FirmwareManagement,SmartCharging,RemoteTrigger"  # SupportedFeatureProfiles
    configuration: dict[str, str] = field(default_factory=dict)  # GetConfiguration values reported as given (odd firmware)

    @property
    def smart_charging(self) -> bool:
        return "SmartCharging" in self.feature_profiles.split(",")

    @property
    def remote_trigger(self) -> bool:
        return "RemoteTrigger" in self.feature_profiles.split(",")


# Keys real chargers report as read-only: a ChangeConfiguration of one is Rejected.
READ_ONLY_KEYS = frozenset({"SupportedFeatureProfiles", "NumberOfConnectors", "ChargeProfileMaxStackLevel",
                            "ChargingScheduleAllowedChargingRateUnit", "ChargingScheduleMaxPeriods", "MaxChargingProfilesInstalled"})


class RecordsCalls:
    """What both simulators (1.6 here, 2.0.1 in simulator_v201) share: every CALL the central system sends is
    recorded in ``received`` for tests and demos, ``run`` is the receive loop plus the charger's own
    behaviour, and ``current``/``power`` its electrical model. It comes before the version's library
    ChargePoint in the bases."""

    options: SimOptions
    _tasks: list[asyncio.Task[Any]]

    def _start_recording(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._arrived = asyncio.Condition()

    async def route_message(self, raw_msg: str) -> None:
        try:
            msg = json.loads(raw_msg)
        except ValueError:
            msg = None
        if isinstance(msg, list) and len(msg) == 4 and msg[0] == 2:
            async with self._arrived:
                self.received.append((msg[2], msg[3]))
                self._arrived.notify_all()
            ignored = self.options.extra_ignored_actions | ({"SetChargingProfile"} if self.options.profile_status == "ignore" else set())
            if msg[2] in ignored:
                return  # simulate a charger that never answers
        await super().route_message(raw_msg)  # type: ignore[misc]  # the library's ChargePoint, next in the bases

    async def wait_for_call(self, action: str, predicate: Callable[[dict[str, Any]], bool] = lambda p: True,
                            timeout: float = 10.0, since: int = 0) -> dict[str, Any]:
        """Wait until a CALL ``action`` (the ``since``-th message or later) matching ``predicate`` arrives."""
        def find() -> dict[str, Any] | None:
            for name, payload in self.received[since:]:
                if name == action and predicate(payload):
                    return payload
            return None

        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: find() is not None), timeout)
        found = find()
        assert found is not None
        return found

    def calls(self, action: str) -> list[dict[str, Any]]:
        return [payload for name, payload in self.received if name == action]

    def current(self) -> float:
        """The current it draws: the last accepted limit, at most its maximum, 0 without a transaction."""
        if self.transaction_id is None:  # type: ignore[attr-defined]
            return 0.0
        limit = self.options.max_current if self.limit_amps is None else self.limit_amps  # type: ignore[attr-defined]
        return max(0.0, min(self.options.max_current, limit))

    def power(self) -> float:
        return self.current() * self.options.voltage * self.conductors()

    def conductors(self) -> int:
        """Phases an AC charger draws on; a DC station has one current and one voltage."""
        return 1 if self.options.dc else self.options.phases

    async def run(self) -> None:
        """Receive loop plus the charger's own behaviour; returns when the connection closes."""
        receiver = asyncio.create_task(self.start())  # type: ignore[attr-defined]
        try:
            await self.boot()  # type: ignore[attr-defined]
            if self.options.meter_interval > 0:
                self._tasks.append(asyncio.create_task(self._meter_loop()))  # type: ignore[attr-defined]
            self._tasks.append(asyncio.create_task(self._heartbeat_loop()))  # type: ignore[attr-defined]
            await receiver
        except websockets.ConnectionClosed:
            pass
        finally:
            for task in self._tasks:
                task.cancel()
            receiver.cancel()


class SimulatedCharger(RecordsCalls, _OcppChargePoint):
    """A charge point; every CALL it receives is recorded in ``received`` for tests and demos."""

    def __init__(self, charger_id: str, connection: Any, options: SimOptions | None = None) -> None:
        super().__init__(charger_id, connection, response_timeout=10)
        self.options = options or SimOptions()
        self._start_recording()
        self.limit_amps: float | None = None  # from the last accepted profile
        self.energy_wh = random.uniform(1000, 5000)
        self.transaction_id: int | None = None
        self.heartbeat_interval = 300
        self._tasks: list[asyncio.Task[Any]] = []
        self.booted = asyncio.Event()  # its start-up sequence (boot, status, transaction) is done
        self.changed_configuration: dict[str, str] = {}  # ChangeConfiguration values it accepted

    async def boot(self) -> None:
        o = self.options
        if o.send_boot:
            response = await self.call(call.BootNotification(
                charge_point_vendor=o.vendor, charge_point_model=o.model,
                firmware_version=o.firmware, charge_point_serial_number=o.serial or f"SIM-{self.id}",
            ))
            self.heartbeat_interval = response.interval
        for connector in range(0, o.connectors + 1):
            await self.status(connector, "Available")
        if o.start_transaction:
            await self.status(1, "Preparing")
            response = await self.call(call.StartTransaction(connector_id=1, id_tag="SIMTAG", meter_start=int(self.energy_wh), timestamp=_now()))
            self.transaction_id = response.transaction_id
            await self.status(1, "Charging")
        self.booted.set()

    async def status(self, connector: int, status: str, error_code: str = "NoError") -> None:
        await self.call(call.StatusNotification(connector_id=connector, error_code=error_code, status=status, timestamp=_now()))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            await self.call(call.Heartbeat())

    async def _meter_loop(self) -> None:
        while True:
            await self.send_meter_values()
            await asyncio.sleep(self.options.meter_interval)
            self.energy_wh += self.power() * self.options.meter_interval / 3600

    def sampled_values(self) -> list[dict[str, Any]]:
        o = self.options
        amps = self.current()
        values = [
            {"value": f"{self.energy_wh:.0f}", "measurand": "Energy.Active.Import.Register", "unit": "Wh", "context": "Sample.Periodic"},
            {"value": f"{self.power():.1f}", "measurand": "Power.Active.Import", "unit": "W", "context": "Sample.Periodic"},
        ]
        if o.dc:
            values.append({"value": f"{amps:.1f}", "measurand": "Current.Import", "unit": "A", "context": "Sample.Periodic"})
            values.append({"value": f"{o.voltage:.1f}", "measurand": "Voltage", "unit": "V", "context": "Sample.Periodic"})
        else:
            for phase in ("L1", "L2", "L3")[: o.phases]:
                values.append({"value": f"{amps:.1f}", "measurand": "Current.Import", "phase": phase, "unit": "A", "context": "Sample.Periodic"})
            for phase in ("L1-N", "L2-N", "L3-N")[: o.phases]:
                values.append({"value": f"{o.voltage + random.uniform(-2, 2):.1f}", "measurand": "Voltage", "phase": phase, "unit": "V",
                               "context": "Sample.Periodic"})
        values.append({"value": f"{o.soc:.0f}", "measurand": "SoC", "unit": "Percent", "location": "EV", "context": "Sample.Periodic"})
        values.append({"value": "31.5", "measurand": "Temperature", "unit": "Celsius", "location": "Body", "context": "Sample.Periodic"})
        values.append({"value": f"{o.max_current if self.limit_amps is None else self.limit_amps:.1f}", "measurand": "Current.Offered", "unit": "A", "context": "Sample.Periodic"})
        return values

    async def stop_transaction(self, reason: str = "Local", times: int = 1) -> list[Any]:
        """StopTransaction (``times`` > 1 replays it, as a popular simulator does on shutdown)."""
        assert self.transaction_id is not None
        request = call.StopTransaction(meter_stop=int(self.energy_wh), timestamp=_now(), transaction_id=self.transaction_id, reason=reason)
        answers = [await self.call(request) for _ in range(times)]
        self.transaction_id = None
        await self.status(1, "Finishing")
        return answers

    async def send_meter_values(self, connector: int = 1) -> None:
        await self.call(call.MeterValues(
            connector_id=connector,
            transaction_id=self.transaction_id,
            meter_value=[{"timestamp": _now(), "sampled_value": self.sampled_values()}],
        ))

    # -- handlers for central system commands -------------------------------------------

    def profile_verdict(self, connector_id: int, profile: dict[str, Any]) -> str:
        """What this simulated charger answers: its configured status, or Rejected for a quirk it has."""
        o = self.options
        schedule = profile["charging_schedule"]
        if not o.smart_charging:
            return "NotSupported"
        if (
            (connector_id == 0 and o.reject_connector_zero and profile["charging_profile_purpose"] != "ChargePointMaxProfile")
            or profile["charging_profile_purpose"] in o.rejected_purposes
            or profile["charging_profile_kind"] in o.rejected_kinds
            or profile["stack_level"] > o.max_stack_level
            or schedule["charging_rate_unit"] not in o.allowed_units
            or connector_id > o.connectors
        ):
            return "Rejected"
        return o.profile_status

    @on(Action.set_charging_profile)
    def on_set_charging_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any], **kwargs: Any) -> Any:
        status = self.profile_verdict(connector_id, cs_charging_profiles)
        if status == "Accepted":
            schedule = cs_charging_profiles["charging_schedule"]
            limit = float(schedule["charging_schedule_period"][0]["limit"])
            if schedule["charging_rate_unit"] == "W":
                limit = limit / (self.options.voltage * self.conductors())
            self.limit_amps = limit
            self._composite = schedule
        return call_result.SetChargingProfile(status=status)

    @on(Action.clear_charging_profile)
    def on_clear_charging_profile(self, **kwargs: Any) -> Any:
        self.limit_amps = None
        return call_result.ClearChargingProfile(status="Accepted")

    @on(Action.get_composite_schedule)
    def on_get_composite_schedule(self, connector_id: int, duration: int, **kwargs: Any) -> Any:
        if self.limit_amps is None:
            return call_result.GetCompositeSchedule(status="Rejected")
        return call_result.GetCompositeSchedule(
            status="Accepted", connector_id=connector_id, schedule_start=_now(),
            charging_schedule={"charging_rate_unit": "A", "duration": duration,
                               "charging_schedule_period": [{"start_period": 0, "limit": round(self.limit_amps, 1)}]},
        )

    @on(Action.get_configuration)
    def on_get_configuration(self, key: list[str] | None = None, **kwargs: Any) -> Any:
        o = self.options
        config = {
            "SupportedFeatureProfiles": o.feature_profiles,
            "NumberOfConnectors": str(o.connectors),
            "ChargeProfileMaxStackLevel": str(o.max_stack_level),
            "ChargingScheduleAllowedChargingRateUnit": ",".join({"A": "Current", "W": "Power"}[u] for u in o.allowed_units),
            "ChargingScheduleMaxPeriods": "24",
            "MaxChargingProfilesInstalled": "8",
            "MeterValuesSampledData": "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage,SoC",
            "MeterValueSampleInterval": str(int(o.meter_interval)),
            "HeartbeatInterval": str(self.heartbeat_interval),
        }
        config.update(o.configuration)
        config.update(self.changed_configuration)
        wanted = key or list(config)
        known = [{"key": k, "readonly": k in READ_ONLY_KEYS, "value": config[k]} for k in wanted if k in config]
        unknown = [k for k in wanted if k not in config]
        return call_result.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on(Action.change_configuration)
    def on_change_configuration(self, key: str, value: str, **kwargs: Any) -> Any:
        if key in READ_ONLY_KEYS:
            return call_result.ChangeConfiguration(status="Rejected")
        self.changed_configuration[key] = value
        if key == "MeterValueSampleInterval":
            self.options.meter_interval = float(value)
        return call_result.ChangeConfiguration(status="Accepted")

    @on(Action.trigger_message)
    def on_trigger_message(self, requested_message: str, **kwargs: Any) -> Any:
        return call_result.TriggerMessage(status="Accepted" if self.options.remote_trigger else "NotImplemented")

    @after(Action.trigger_message)
    async def after_trigger_message(self, requested_message: str, **kwargs: Any) -> None:
        if not self.options.remote_trigger:
            return
        if requested_message == "MeterValues":
            await self.send_meter_values()
        elif requested_message == "StatusNotification":
            await self.status(1, "Charging" if self.transaction_id else "Available")
        elif requested_message == "Heartbeat":
            await self.call(call.Heartbeat())
        elif requested_message == "BootNotification":
            await self.boot()

    @on(Action.remote_start_transaction)
    def on_remote_start_transaction(self, id_tag: str, **kwargs: Any) -> Any:
        return call_result.RemoteStartTransaction(status="Accepted")

    @after(Action.remote_start_transaction)
    async def after_remote_start_transaction(self, id_tag: str, **kwargs: Any) -> None:
        if self.transaction_id is None:
            response = await self.call(call.StartTransaction(connector_id=kwargs.get("connector_id") or 1, id_tag=id_tag,
                                                             meter_start=int(self.energy_wh), timestamp=_now()))
            if response.id_tag_info["status"] == "Accepted":
                self.transaction_id = response.transaction_id
                await self.status(1, "Charging")

    @on(Action.remote_stop_transaction)
    def on_remote_stop_transaction(self, transaction_id: int, **kwargs: Any) -> Any:
        return call_result.RemoteStopTransaction(status="Accepted" if transaction_id == self.transaction_id else "Rejected")

    @after(Action.remote_stop_transaction)
    async def after_remote_stop_transaction(self, transaction_id: int, **kwargs: Any) -> None:
        if transaction_id == self.transaction_id:
            await self.stop_transaction(reason="Remote")

    @on(Action.reset)
    def on_reset(self, type: str, **kwargs: Any) -> Any:
        return call_result.Reset(status="Accepted")

    @on(Action.unlock_connector)
    def on_unlock_connector(self, connector_id: int, **kwargs: Any) -> Any:
        return call_result.UnlockConnector(status="Unlocked")

    @on(Action.change_availability)
    def on_change_availability(self, connector_id: int, type: str, **kwargs: Any) -> Any:
        if connector_id == 0 and self.options.reject_connector_zero:
            return call_result.ChangeAvailability(status="Rejected")
        return call_result.ChangeAvailability(status="Accepted")

    @after(Action.change_availability)
    async def after_change_availability(self, connector_id: int, type: str, **kwargs: Any) -> None:
        if not (connector_id == 0 and self.options.reject_connector_zero):
            await self.status(connector_id, "Available" if type == "Operative" else "Unavailable")


async def connect(url: str, charger_id: str, options: SimOptions | None = None, **connect_kwargs: Any) -> tuple[SimulatedCharger, asyncio.Task[None]]:
    """Connect one simulated charger; returns it and the task running it."""
    ws = await websockets.connect(f"{url.rstrip('/')}/{charger_id}", subprotocols=[Subprotocol("ocpp1.6")], **connect_kwargs)
    charger = SimulatedCharger(charger_id, ws, options)
    return charger, asyncio.create_task(charger.run(), name=f"sim-{charger_id}")


async def _run_forever(url: str, charger_id: str, options: SimOptions, ocpp_version: str = "1.6") -> None:
    """Run one charger and redial with backoff when the connection drops, like real chargers do."""
    if ocpp_version == "2.0.1":
        from .simulator_v201 import connect as connect_v201

        dial: Callable[..., Any] = connect_v201
    else:
        dial = connect
    delay = 1.0
    while True:
        try:
            charger, task = await dial(url, charger_id, options)
            _LOGGER.info("%s: connected to %s", charger_id, url)
            delay = 1.0
            await task
            _LOGGER.warning("%s: connection closed; redialling", charger_id)
        except (OSError, websockets.InvalidHandshake, websockets.InvalidURI) as err:
            _LOGGER.warning("%s: cannot connect to %s (%s); retrying in %.0f s", charger_id, url, err, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ocpp_addon.simulator", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:9000", help="central system URL without the id")
    parser.add_argument("--ocpp", default="1.6", choices=("1.6", "2.0.1"), help="protocol version (subprotocol ocpp1.6 or ocpp2.0.1)")
    parser.add_argument("--id", default="wallbox-1", help="charge point id (with --count N: ID-1 .. ID-N)")
    parser.add_argument("--count", type=int, default=1, help="number of chargers to simulate")
    parser.add_argument("--meter-interval", type=float, default=10.0, help="seconds between MeterValues (0: none)")
    parser.add_argument("--connectors", type=int, default=1, help="connectors (with --ocpp 2.0.1: EVSEs, one connector each)")
    parser.add_argument("--phases", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--profile-status", default="Accepted", choices=("Accepted", "Rejected", "NotSupported", "ignore"),
                        help="how to answer SetChargingProfile")
    parser.add_argument("--no-boot", action="store_true", help="never send BootNotification (some chargers after a reconnect)")
    parser.add_argument("--vendor", default="Simulated")
    parser.add_argument("--model", default="SimCharger 22")
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("ocpp").setLevel(logging.INFO if args.verbose else logging.WARNING)
    ids = [args.id] if args.count == 1 else [f"{args.id}-{n}" for n in range(1, args.count + 1)]

    async def run_all() -> None:
        await asyncio.gather(*(
            _run_forever(args.url, cid, SimOptions(
                vendor=args.vendor, model=args.model, connectors=args.connectors, phases=args.phases,
                meter_interval=args.meter_interval, send_boot=not args.no_boot, profile_status=args.profile_status,
            ), args.ocpp) for cid in ids
        ))

    try:
        asyncio.run(run_all())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
