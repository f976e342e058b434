"""An OCPP 2.0.1 charging station simulator built on the ``ocpp`` library.

The 2.0.1 sibling of :mod:`ocpp_addon.simulator` (``python -m ocpp_addon.simulator --ocpp 2.0.1``),
with the same options and quirk switches where they apply: W-only, no smart charging, refuses a
purpose, several EVSEs, never boots. It keeps a small device model (SmartChargingCtrlr,
SampledDataCtrlr, one EVSE component per EVSE) that GetBaseReport, GetVariables and SetVariables
read and write, so a central system can learn the station's capabilities the 2.0.1 way; it starts a
transaction with TransactionEvent and reports its meter values in TransactionEvent(Updated).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import websockets
from websockets.typing import Subprotocol
from ocpp.exceptions import NotSupportedError
from ocpp.routing import after, on
from ocpp.v201 import ChargePoint as _OcppChargePoint
from ocpp.v201 import call, call_result
from ocpp.v201.enums import Action

from .simulator import RecordsCalls, SimOptions

_LOGGER = logging.getLogger(__name__)

SUBPROTOCOL = "ocpp2.0.1"
PHASES = ("L1", "L2", "L3")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Variable:
    """One device-model variable: its value as text, whether it may be written, its data type."""

    value: str
    mutability: str = "ReadOnly"  # ReadOnly | ReadWrite | WriteOnly
    data_type: str = "string"  # string | decimal | integer | boolean | MemberList | OptionList ...
    values_list: str | None = None
    reboot_required: bool = False


Key = tuple[str, int | None, str]  # (component name, EVSE id or None, variable name)


class SimulatedStation(RecordsCalls, _OcppChargePoint):
    """A 2.0.1 station; every CALL it receives is recorded in ``received`` for tests and demos."""

    def __init__(self, station_id: str, connection: Any, options: SimOptions | None = None) -> None:
        super().__init__(station_id, connection, response_timeout=10)
        self.options = options or SimOptions()
        self._start_recording()
        self.limit_amps: float | None = None  # from the last accepted profile
        self.energy_wh = random.uniform(1000, 5000)
        self.transaction_id: str | None = None
        self.seq_no = 0
        self.heartbeat_interval = 300
        self.available = True
        self._tasks: list[asyncio.Task[Any]] = []
        self.booted = asyncio.Event()
        self.device_model = self._device_model()

    # -- device model ------------------------------------------------------------------

    @property
    def smart_charging(self) -> bool:
        return bool(getattr(self.options, "smart_charging", True)) and self.options.profile_status != "NotSupported"

    def _device_model(self) -> dict[Key, Variable]:
        o = self.options
        units = ",".join(o.allowed_units)
        model: dict[Key, Variable] = {
            ("SmartChargingCtrlr", None, "Enabled"): Variable("true" if self.smart_charging else "false", "ReadWrite", "boolean"),
            ("SmartChargingCtrlr", None, "RateUnit"): Variable(units, "ReadOnly", "MemberList", "A,W"),
            ("SmartChargingCtrlr", None, "PeriodsPerSchedule"): Variable("24", "ReadOnly", "integer"),
            ("SmartChargingCtrlr", None, "ProfileStackLevel"): Variable(str(o.max_stack_level), "ReadOnly", "integer"),
            ("SmartChargingCtrlr", None, "Entries"): Variable("0", "ReadOnly", "integer"),
            ("SampledDataCtrlr", None, "TxUpdatedMeasurands"): Variable(
                "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage,SoC", "ReadWrite", "MemberList",
                "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Current.Offered,Voltage,SoC,Temperature"),
            ("SampledDataCtrlr", None, "TxUpdatedInterval"): Variable(str(int(o.meter_interval)), "ReadWrite", "integer"),
            ("OCPPCommCtrlr", None, "HeartbeatInterval"): Variable(str(self.heartbeat_interval), "ReadWrite", "integer"),
            ("ChargingStation", None, "Model"): Variable(o.model),
            ("ChargingStation", None, "VendorName"): Variable(o.vendor),
        }
        for evse in range(1, o.connectors + 1):
            model[("EVSE", evse, "AvailabilityState")] = Variable("Available")
            model[("EVSE", evse, "Power")] = Variable(f"{o.max_current * o.voltage * self.conductors():.0f}", "ReadOnly", "decimal")
            model[("EVSE", evse, "SupplyPhases")] = Variable(str(0 if getattr(o, "dc", False) else o.phases), "ReadOnly", "integer")
        return model

    def report_data(self) -> list[dict[str, Any]]:
        """The device model as NotifyReport's reportData."""
        rows = []
        for (component, evse, name), var in self.device_model.items():
            comp: dict[str, Any] = {"name": component}
            if evse is not None:
                comp["evse"] = {"id": evse}
            characteristics: dict[str, Any] = {"data_type": var.data_type, "supports_monitoring": False}
            if var.values_list:
                characteristics["values_list"] = var.values_list
            rows.append({"component": comp, "variable": {"name": name},
                         "variable_attribute": [{"type": "Actual", "value": var.value, "mutability": var.mutability}],
                         "variable_characteristics": characteristics})
        return rows

    @staticmethod
    def _key(component: dict[str, Any], variable: dict[str, Any]) -> Key:
        return component["name"], (component.get("evse") or {}).get("id"), variable["name"]

    async def boot(self, reason: str = "PowerUp") -> None:
        o = self.options
        if o.send_boot:
            response = await self.call(call.BootNotification(
                charging_station={"vendor_name": o.vendor, "model": o.model, "firmware_version": o.firmware,
                                  "serial_number": o.serial or f"SIM-{self.id}"},
                reason=reason,
            ))
            self.heartbeat_interval = response.interval
            if response.status != "Accepted":
                return  # a Pending or Rejected station sends nothing else until it is accepted
        for evse in range(1, o.connectors + 1):
            await self.status(evse, "Available")
        if o.start_transaction:
            await self.start_transaction(1, "CablePluggedIn")
        self.booted.set()

    async def status(self, evse: int, status: str, connector: int = 1) -> None:
        await self.call(call.StatusNotification(timestamp=_now(), connector_status=status, evse_id=evse, connector_id=connector))

    async def start_transaction(self, evse: int, trigger: str, id_token: str = "SIMTAG", remote_start_id: int | None = None) -> None:
        self.transaction_id = uuid.uuid4().hex[:16]
        await self.status(evse, "Occupied")
        info: dict[str, Any] = {"transaction_id": self.transaction_id, "charging_state": "Charging"}
        if remote_start_id is not None:
            info["remote_start_id"] = remote_start_id
        await self.transaction_event("Started", trigger, evse, info, id_token={"id_token": id_token, "type": "ISO14443"})

    async def stop_transaction(self, reason: str = "Local", trigger: str = "StopAuthorized", evse: int = 1) -> None:
        assert self.transaction_id is not None
        info = {"transaction_id": self.transaction_id, "charging_state": "EVConnected", "stopped_reason": reason}
        await self.transaction_event("Ended", trigger, evse, info, context="Transaction.End")
        self.transaction_id = None
        await self.status(evse, "Available")

    async def transaction_event(self, event_type: str, trigger: str, evse: int, info: dict[str, Any],
                                context: str | None = None, **extra: Any) -> Any:
        self.seq_no += 1
        context = context or {"Started": "Transaction.Begin", "Updated": "Sample.Periodic"}.get(event_type, "Transaction.End")
        return await self.call(call.TransactionEvent(
            event_type=event_type, timestamp=_now(), trigger_reason=trigger, seq_no=self.seq_no,
            transaction_info=info, evse={"id": evse, "connector_id": 1},
            meter_value=[{"timestamp": _now(), "sampled_value": self.sampled_values(context)}], **extra,
        ))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            await self.call(call.Heartbeat())

    async def _meter_loop(self) -> None:
        while True:
            interval = float(self.device_model[("SampledDataCtrlr", None, "TxUpdatedInterval")].value) or self.options.meter_interval
            await asyncio.sleep(interval)
            self.energy_wh += self.power() * interval / 3600
            await self.send_meter_values()

    async def send_meter_values(self, evse: int = 1) -> None:
        """TransactionEvent(Updated) during a transaction (how 2.0.1 reports it), else MeterValues."""
        if self.transaction_id is not None:
            await self.transaction_event("Updated", "MeterValuePeriodic", evse,
                                         {"transaction_id": self.transaction_id, "charging_state": "Charging"})
        else:
            await self.call(call.MeterValues(evse_id=evse, meter_value=[{"timestamp": _now(), "sampled_value": self.sampled_values("Sample.Periodic")}]))

    def sampled_values(self, context: str) -> list[dict[str, Any]]:
        o = self.options
        amps = self.current()
        values: list[dict[str, Any]] = [
            {"value": round(self.energy_wh), "measurand": "Energy.Active.Import.Register", "context": context,
             "unit_of_measure": {"unit": "Wh"}},
            {"value": round(self.power(), 1), "measurand": "Power.Active.Import", "context": context,
             "unit_of_measure": {"unit": "W"}},
        ]
        if getattr(o, "dc", False):
            values.append({"value": round(amps, 1), "measurand": "Current.Import", "context": context, "unit_of_measure": {"unit": "A"}})
            values.append({"value": round(o.voltage, 1), "measurand": "Voltage", "context": context, "unit_of_measure": {"unit": "V"}})
        for phase in PHASES[: 0 if getattr(o, "dc", False) else o.phases]:
            values.append({"value": round(amps, 1), "measurand": "Current.Import", "phase": phase, "context": context,
                           "unit_of_measure": {"unit": "A"}})
            values.append({"value": round(o.voltage + random.uniform(-2, 2), 1), "measurand": "Voltage", "phase": f"{phase}-N",
                           "context": context, "unit_of_measure": {"unit": "V"}})
        values.append({"value": round(o.soc), "measurand": "SoC", "location": "EV", "context": context,
                       "unit_of_measure": {"unit": "Percent"}})
        return values

    # -- handlers for central system commands -------------------------------------------

    def profile_verdict(self, evse_id: int, profile: dict[str, Any]) -> str:
        """Accepted, or Rejected for a quirk this station has (2.0.1 has no NotSupported status)."""
        o = self.options
        schedule = profile["charging_schedule"][0]
        purpose = profile["charging_profile_purpose"]
        if (
            (evse_id == 0 and o.reject_connector_zero and purpose != "ChargingStationMaxProfile")
            or purpose in o.rejected_purposes
            or profile["charging_profile_kind"] in o.rejected_kinds
            or profile["stack_level"] > o.max_stack_level
            or schedule["charging_rate_unit"] not in o.allowed_units
            or evse_id > o.connectors
            or (purpose == "TxProfile" and profile.get("transaction_id") != self.transaction_id)
        ):
            return "Rejected"
        return "Rejected" if o.profile_status == "Rejected" else "Accepted"

    @on(Action.set_charging_profile)
    def on_set_charging_profile(self, evse_id: int, charging_profile: dict[str, Any], **kwargs: Any) -> Any:
        if not self.smart_charging:
            raise NotSupportedError(description="SmartChargingCtrlr is not enabled")
        status = self.profile_verdict(evse_id, charging_profile)
        if status == "Accepted":
            schedule = charging_profile["charging_schedule"][0]
            limit = float(schedule["charging_schedule_period"][0]["limit"])
            if schedule["charging_rate_unit"] == "W":
                limit = limit / (self.options.voltage * self.conductors())
            self.limit_amps = limit
        return call_result.SetChargingProfile(status=status)

    @on(Action.clear_charging_profile)
    def on_clear_charging_profile(self, **kwargs: Any) -> Any:
        if not self.smart_charging:
            raise NotSupportedError(description="SmartChargingCtrlr is not enabled")
        self.limit_amps = None
        return call_result.ClearChargingProfile(status="Accepted")

    @on(Action.get_composite_schedule)
    def on_get_composite_schedule(self, evse_id: int, duration: int, **kwargs: Any) -> Any:
        if self.limit_amps is None or not self.smart_charging:
            return call_result.GetCompositeSchedule(status="Rejected")
        return call_result.GetCompositeSchedule(status="Accepted", schedule={
            "evse_id": evse_id, "duration": duration, "schedule_start": _now(), "charging_rate_unit": "A",
            "charging_schedule_period": [{"start_period": 0, "limit": round(self.limit_amps, 1)}]})

    @on(Action.get_base_report)
    def on_get_base_report(self, request_id: int, report_base: str, **kwargs: Any) -> Any:
        return call_result.GetBaseReport(status="Accepted")

    @after(Action.get_base_report)
    async def after_get_base_report(self, request_id: int, report_base: str, **kwargs: Any) -> None:
        rows = self.report_data()
        chunks = [rows[i:i + 8] for i in range(0, len(rows), 8)]  # several NotifyReports, as real stations send
        for seq, chunk in enumerate(chunks):
            await self.call(call.NotifyReport(request_id=request_id, generated_at=_now(), seq_no=seq,
                                              tbc=seq < len(chunks) - 1, report_data=chunk))

    @on(Action.get_variables)
    def on_get_variables(self, get_variable_data: list[dict[str, Any]], **kwargs: Any) -> Any:
        results = []
        for item in get_variable_data:
            var = self.device_model.get(self._key(item["component"], item["variable"]))
            known_component = any(k[0] == item["component"]["name"] for k in self.device_model)
            result: dict[str, Any] = {"component": item["component"], "variable": item["variable"]}
            if var is None:
                result["attribute_status"] = "UnknownVariable" if known_component else "UnknownComponent"
            else:
                result.update(attribute_status="Accepted", attribute_value=var.value)
            results.append(result)
        return call_result.GetVariables(get_variable_result=results)

    @on(Action.set_variables)
    def on_set_variables(self, set_variable_data: list[dict[str, Any]], **kwargs: Any) -> Any:
        results = []
        for item in set_variable_data:
            key = self._key(item["component"], item["variable"])
            var = self.device_model.get(key)
            result: dict[str, Any] = {"component": item["component"], "variable": item["variable"]}
            if var is None:
                result["attribute_status"] = "UnknownVariable" if any(k[0] == key[0] for k in self.device_model) else "UnknownComponent"
            elif var.mutability == "ReadOnly" or not self._value_allowed(var, item["attribute_value"]):
                result["attribute_status"] = "Rejected"
            else:
                var.value = item["attribute_value"]
                result["attribute_status"] = "RebootRequired" if var.reboot_required else "Accepted"
            results.append(result)
        return call_result.SetVariables(set_variable_result=results)

    @staticmethod
    def _value_allowed(var: Variable, value: str) -> bool:
        if var.data_type == "MemberList" and var.values_list:
            return all(v in var.values_list.split(",") for v in value.split(",") if v)
        if var.data_type == "integer":
            return value.isdigit()
        return True

    @on(Action.trigger_message)
    def on_trigger_message(self, requested_message: str, **kwargs: Any) -> Any:
        known = {"MeterValues", "StatusNotification", "Heartbeat", "BootNotification", "TransactionEvent"}
        return call_result.TriggerMessage(status="Accepted" if requested_message in known else "NotImplemented")

    @after(Action.trigger_message)
    async def after_trigger_message(self, requested_message: str, **kwargs: Any) -> None:
        if requested_message in ("MeterValues", "TransactionEvent"):
            if requested_message == "TransactionEvent" and self.transaction_id is not None:
                await self.transaction_event("Updated", "Trigger", 1, {"transaction_id": self.transaction_id, "charging_state": "Charging"})
            else:
                await self.call(call.MeterValues(evse_id=1, meter_value=[{"timestamp": _now(), "sampled_value": self.sampled_values("Trigger")}]))
        elif requested_message == "StatusNotification":
            await self.status(1, "Occupied" if self.transaction_id else "Available")
        elif requested_message == "Heartbeat":
            await self.call(call.Heartbeat())
        elif requested_message == "BootNotification":
            await self.boot("Triggered")

    @on(Action.request_start_transaction)
    def on_request_start_transaction(self, id_token: dict[str, Any], remote_start_id: int, **kwargs: Any) -> Any:
        return call_result.RequestStartTransaction(status="Accepted" if self.transaction_id is None else "Rejected")

    @after(Action.request_start_transaction)
    async def after_request_start_transaction(self, id_token: dict[str, Any], remote_start_id: int, **kwargs: Any) -> None:
        if self.transaction_id is None:
            await self.start_transaction(kwargs.get("evse_id") or 1, "RemoteStart", id_token["id_token"], remote_start_id)

    @on(Action.request_stop_transaction)
    def on_request_stop_transaction(self, transaction_id: str, **kwargs: Any) -> Any:
        return call_result.RequestStopTransaction(status="Accepted" if transaction_id == self.transaction_id else "Rejected")

    @after(Action.request_stop_transaction)
    async def after_request_stop_transaction(self, transaction_id: str, **kwargs: Any) -> None:
        if transaction_id == self.transaction_id:
            await self.stop_transaction(reason="Remote", trigger="RemoteStop")

    @on(Action.reset)
    def on_reset(self, type: str, **kwargs: Any) -> Any:
        return call_result.Reset(status="Accepted")

    @on(Action.unlock_connector)
    def on_unlock_connector(self, evse_id: int, connector_id: int, **kwargs: Any) -> Any:
        return call_result.UnlockConnector(status="Unlocked" if evse_id <= self.options.connectors else "UnknownConnector")

    @on(Action.change_availability)
    def on_change_availability(self, operational_status: str, evse: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        if (evse is None or evse.get("id") == 0) and self.options.reject_connector_zero:
            return call_result.ChangeAvailability(status="Rejected")
        return call_result.ChangeAvailability(status="Accepted")

    @after(Action.change_availability)
    async def after_change_availability(self, operational_status: str, evse: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if (evse is None or evse.get("id") == 0) and self.options.reject_connector_zero:
            return
        self.available = operational_status == "Operative"
        targets = [evse["id"]] if evse and evse.get("id") else range(1, self.options.connectors + 1)
        for target in targets:
            await self.status(target, ("Occupied" if self.transaction_id and target == 1 else "Available") if self.available else "Unavailable")


async def connect(url: str, station_id: str, options: SimOptions | None = None, **connect_kwargs: Any) -> tuple[SimulatedStation, asyncio.Task[None]]:
    """Connect one simulated 2.0.1 station; returns it and the task running it."""
    ws = await websockets.connect(f"{url.rstrip('/')}/{station_id}", subprotocols=[Subprotocol(SUBPROTOCOL)], **connect_kwargs)
    station = SimulatedStation(station_id, ws, options)
    return station, asyncio.create_task(station.run(), name=f"sim201-{station_id}")
