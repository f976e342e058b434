"""One connected OCPP 2.0.1 charging station: its handlers and the commands we send it.

Beside :class:`charge_point.ChargePoint` (1.6J) behind one interface: the same receive path,
rate limit, validation (with the 2.0.1 schemas) and ``call()``, the same :class:`ChargerState`
and hub calls, so the hub, the limit controller and the sinks do not know the version. What
differs is translated by the pure functions of :mod:`ocpp201`:

- an EVSE is what a connector is to 1.6 (``state.connectors`` is keyed by EVSE id), so per-EVSE
  entities are the per-connector ones; the one status shown joins the connector status and the
  transaction's charging state;
- transactions are the station's (TransactionEvent Started/Updated/Ended, string ids), and their
  meter values arrive inside TransactionEvent;
- capabilities come from the device model (GetVariables: SmartChargingCtrlr, SampledDataCtrlr,
  each EVSE's SupplyPhases), not GetConfiguration; the chargers page's configuration list is the
  device model's full report (GetBaseReport, NotifyReport) and a change is a SetVariables.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from datetime import datetime, timezone
from typing import Any

from ocpp.routing import after, on
from ocpp.v16 import call as call16
from ocpp.v201 import call, call_result
from ocpp.v201.enums import Action

from . import ocpp201, validation
from .charge_point import ChargePoint, InvalidResponse, _camel, camel_keys
from .results import Status
from .state import parse_timestamp, utc_now_iso

_LOGGER = logging.getLogger(__name__)

# 1.6 TriggerMessage names the hub and sinks use -> 2.0.1 MessageTrigger.
_TRIGGERS = {"MeterValues": "MeterValues", "StatusNotification": "StatusNotification", "Heartbeat": "Heartbeat",
             "BootNotification": "BootNotification", "TransactionEvent": "TransactionEvent",
             "FirmwareStatusNotification": "FirmwareStatusNotification"}


class ChargePoint201(ChargePoint):
    """A connected OCPP 2.0.1 station. Created per WebSocket connection by the central system.

    Handlers whose payloads 2.0.1 shares with 1.6 (Heartbeat, FirmwareStatusNotification, the after-boot
    step) are inherited; the route map keeps only actions 2.0.1 defines.
    """

    ocpp_version = "2.0.1"
    results: Any = call_result
    shallow_actions = frozenset({"MeterValues", "TransactionEvent"})  # the periodic messages: no deep key conversion

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The 1.6 handlers this class inherits answer 1.6 actions only: a 2.0.1 station sending
        # StartTransaction gets NotImplemented like any other action 2.0.1 does not define.
        routes: dict[str, Any] = self.route_map  # type: ignore[has-type]  # set by the library's untyped __init__
        self.route_map = {action: handlers for action, handlers in routes.items()
                          if validation.known_action(action, self.ocpp_version)}
        self._connector_status: dict[int, str] = {}  # EVSE -> 2.0.1 connector status
        self._charging_state: dict[int, str | None] = {}  # EVSE -> charging state of its transaction
        self._ended: set[int] = set()  # EVSEs whose transaction ended with the cable still in
        self._reports: dict[int, list[Any]] = {}  # requestId -> reportData items so far (tbc)
        self._report_waiters: dict[int, asyncio.Future[list[Any]]] = {}
        self._request_ids = itertools.count(int(time.time()) % 1_000_000_000)  # not reused across reconnects
        self.device_model: dict[str, ocpp201.DeviceVariable] = {}  # the last full report, by key

    def repaired_call(self, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        return None  # the lenient repairs known are 1.6 firmware quirks

    def repaired_result(self, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        return None

    # -- handlers (station -> us) ---------------------------------------------------------

    @on(Action.boot_notification)
    def on_boot_notification(self, charging_station: dict[str, Any], reason: str, **kwargs: Any) -> Any:  # type: ignore[override]
        state = self.state
        state.vendor = charging_station.get("vendor_name") or None
        state.model = charging_station.get("model") or None
        state.firmware = charging_station.get("firmware_version")
        state.serial = charging_station.get("serial_number")
        _LOGGER.info("%s: booted, OCPP 2.0.1 (%s %s, firmware %s, reason %s)", self.id, state.vendor or "?",
                     state.model or "?", state.firmware or "?", reason)
        self.hub.charger_booted(self)
        return call_result.BootNotification(current_time=utc_now_iso(), interval=self.config["ocpp"]["heartbeat_interval"],
                                            status="Accepted")

    @on(Action.status_notification)
    def on_status_notification(self, timestamp: str, connector_status: str, evse_id: int, connector_id: int,  # type: ignore[override]
                               **kwargs: Any) -> Any:
        self._connector_status[evse_id] = connector_status
        if connector_status != "Occupied":
            self._ended.discard(evse_id)
        self._show_status(evse_id)
        return call_result.StatusNotification()

    def _show_status(self, evse_id: int) -> None:
        connector = self.state.connector(evse_id)
        shown = ocpp201.connector_status(self._connector_status.get(evse_id, "Available"), self._charging_state.get(evse_id),
                                         evse_id in self._ended)
        error = "OtherError" if shown == "Faulted" else "NoError"  # 2.0.1 reports the fault itself in NotifyEvent
        if (connector.status, connector.error_code) != (shown, error):
            connector.status, connector.error_code = shown, error
            _LOGGER.info("%s: EVSE %d is %s", self.id, evse_id, shown)
            self.hub.state_changed(self.state, ("status", "error_code"))

    @on(Action.meter_values)
    def on_meter_values(self, evse_id: int, meter_value: list[dict[str, Any]], **kwargs: Any) -> Any:  # type: ignore[override]
        self._meter_values(evse_id, meter_value)
        return call_result.MeterValues()

    def _meter_values(self, evse_id: int, meter_value: Any) -> None:
        readings, newest = ocpp201.readings(meter_value, self._newest_sample.get(evse_id))
        if newest is not None:
            self._newest_sample[evse_id] = newest
        if readings:
            self._apply_readings(readings, evse_id)

    @on(Action.transaction_event)
    def on_transaction_event(self, **kwargs: Any) -> Any:
        update = ocpp201.parse_transaction_event({_camel(k): v for k, v in kwargs.items()})  # nested keys are camelCase
        evse_id = update.evse_id or self._evse_of(update.transaction_id) or 1
        connector = self.state.connector(evse_id)
        changed: list[str] = []
        if update.event_type == "Started" or (connector.transaction_id != update.transaction_id and update.event_type == "Updated"):
            # An Updated for a transaction we have not seen start (we were down): adopt it.
            connector.transaction_id = update.transaction_id  # type: ignore[assignment]  # 2.0.1 ids are strings
            connector.id_tag = update.id_token or None
            connector.session_start = parse_timestamp(kwargs.get("timestamp")) or datetime.now(timezone.utc)
            energy = update.readings.get("energy")
            connector.meter_start = energy * 1000 if energy is not None else None
            connector.session_energy, connector.session_duration, connector.stop_reason = 0.0, 0, None
            self._ended.discard(evse_id)
            changed += ["transaction_id", "session_energy", "id_tag"]
            _LOGGER.info("%s: transaction %s started on EVSE %d (%s)", self.id, update.transaction_id, evse_id, update.trigger_reason)
        if update.id_token and connector.id_tag != update.id_token:
            connector.id_tag = update.id_token
            changed.append("id_tag")
        if update.charging_state is not None:
            self._charging_state[evse_id] = update.charging_state
        if update.readings:
            newest = self._newest_sample.get(evse_id)
            if newest is None or update.sampled_at is None or update.sampled_at >= newest:
                if update.sampled_at is not None:
                    self._newest_sample[evse_id] = update.sampled_at
                self._apply_readings(dict(update.readings), evse_id)
        if update.event_type == "Ended":
            if connector.transaction_id == update.transaction_id:
                connector.transaction_id = None
            connector.stop_reason = update.stopped_reason or "Local"
            self._charging_state.pop(evse_id, None)
            if self._connector_status.get(evse_id) == "Occupied":
                self._ended.add(evse_id)
            changed += ["transaction_id", "stop_reason"]
            _LOGGER.info("%s: transaction %s ended on EVSE %d (%s)", self.id, update.transaction_id, evse_id, connector.stop_reason)
        if changed:
            self.hub.state_changed(self.state, changed)
        self._show_status(evse_id)
        answer: dict[str, Any] = {}
        if update.id_token is not None:  # required whenever the request carried an idToken, the empty one too
            answer["id_token_info"] = self._id_token_info(update.id_token, update.id_token_type)
        return call_result.TransactionEvent(**answer)

    @after(Action.transaction_event)
    def after_transaction_event(self, event_type: str, **kwargs: Any) -> None:
        if event_type == "Started":
            self.hub.transaction_started(self)

    def _evse_of(self, transaction_id: str) -> int | None:
        return next((evse for evse, c in self.state.connectors.items() if c.transaction_id == transaction_id), None)  # type: ignore[comparison-overlap]

    def _id_token_info(self, id_token: str, token_type: str | None = None) -> dict[str, Any]:
        if token_type == "NoAuthorization":
            return {"status": "Accepted"}  # C02.FR.02: a start button; there is no one to look up
        info = self._id_tag_info(id_token)  # the same allow list as 1.6 id tags
        out: dict[str, Any] = {"status": str(info["status"])}
        if info.get("expiry_date"):
            out["cache_expiry_date_time"] = info["expiry_date"]
        return out

    @on(Action.authorize)
    def on_authorize(self, id_token: dict[str, Any], **kwargs: Any) -> Any:  # type: ignore[override]
        return call_result.Authorize(id_token_info=self._id_token_info(id_token.get("id_token", ""), id_token.get("type")))

    @on(Action.notify_report)
    def on_notify_report(self, request_id: int, generated_at: str, seq_no: int, **kwargs: Any) -> Any:
        items = self._reports.setdefault(request_id, [])
        while len(self._reports) > 2:  # unfinished reports of ids nobody asked for: keep the newest
            self._reports.pop(next(iter(self._reports)))
        room = ocpp201.MAX_REPORT_ITEMS - len(items)
        for item in camel_keys((kwargs.get("report_data") or [])[:max(room, 0)]):
            slim = ocpp201.slim_report_item(item)
            if slim is not None:
                items.append(slim)
        if not kwargs.get("tbc"):
            del self._reports[request_id]
            self._learn(list(ocpp201.report_rows(items)), complete=True)
            waiter = self._report_waiters.get(request_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(items)
        return call_result.NotifyReport()

    @on(Action.notify_event)
    def on_notify_event(self, generated_at: str, seq_no: int, event_data: list[dict[str, Any]], **kwargs: Any) -> Any:
        for event in event_data[:20]:
            _LOGGER.debug("%s: event %s %s.%s = %s", self.id, event.get("trigger"), (event.get("component") or {}).get("name"),
                          (event.get("variable") or {}).get("name"), event.get("actual_value"))
        return call_result.NotifyEvent()

    @on(Action.security_event_notification)
    def on_security_event_notification(self, type: str, timestamp: str, **kwargs: Any) -> Any:
        _LOGGER.info("%s: security event %s", self.id, type)
        return call_result.SecurityEventNotification()

    @on(Action.log_status_notification)
    def on_log_status_notification(self, status: str, **kwargs: Any) -> Any:
        return call_result.LogStatusNotification()

    @on(Action.notify_charging_limit)
    def on_notify_charging_limit(self, charging_limit: dict[str, Any], **kwargs: Any) -> Any:
        _LOGGER.info("%s: a limit from %s applies (EVSE %s)", self.id, charging_limit.get("charging_limit_source"), kwargs.get("evse_id"))
        return call_result.NotifyChargingLimit()

    @on(Action.report_charging_profiles)
    def on_report_charging_profiles(self, **kwargs: Any) -> Any:
        return call_result.ReportChargingProfiles()

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **kwargs: Any) -> Any:
        _LOGGER.info("%s: DataTransfer from vendor %r (message %r) not handled", self.id, vendor_id, kwargs.get("message_id"))
        return call_result.DataTransfer(status="UnknownVendorId")

    # -- capabilities ----------------------------------------------------------------------

    def _learn(self, rows: list[ocpp201.Row], complete: bool = False) -> None:
        """``complete``: a whole report, so the EVSEs in it are all there are (GetVariables asks only known ones)."""
        caps = ocpp201.capabilities(rows)
        if not complete:
            caps.pop("evse_ids", None)
            caps.pop("number_of_connectors", None)
        if caps:
            self.state.capabilities.update(caps)
            _LOGGER.info("%s: capabilities %s", self.id, self.state.capabilities)
            self.hub.capabilities_learned(self)

    async def configure(self) -> None:
        """Read the device model's smart-charging and sampling variables (GetVariables), once per connection."""
        try:
            wanted: list[dict[str, Any]] = [{"component": {"name": c}, "variable": {"name": v}} for c, v in ocpp201.CAPABILITY_VARIABLES]
            wanted += [{"component": {"name": "EVSE", "evse": {"id": evse}}, "variable": {"name": "SupplyPhases"}}
                       for evse in self.state.connector_ids]
            outcome = await self.call_status(call.GetVariables(get_variable_data=wanted))
            results = outcome.get("response", {}).get("getVariableResult")
            if results is not None:
                self._learn(list(ocpp201.variable_rows(results)))
                await self._configure_sampling()
        finally:
            self.configured.set()

    async def _set_variable(self, component: str, variable: str, value: str) -> str:
        """One SetVariables; the attribute status (Accepted, Rejected, RebootRequired, ...) or the call's failure."""
        outcome = await self.call_status(call.SetVariables(set_variable_data=[
            {"component": {"name": component}, "variable": {"name": variable}, "attribute_value": value}]))
        results = outcome.get("response", {}).get("setVariableResult") or []
        return str(results[0].get("attributeStatus")) if results and isinstance(results[0], dict) else outcome["status"]

    async def _configure_sampling(self) -> None:
        """TxUpdatedInterval / TxUpdatedMeasurands from ``meter_values`` where they differ, read back.

        As for 1.6 (ABB boot-looped on blanket configuration): change only what differs; a refused
        measurand list is narrowed to the measurands the station accepts one by one, never to none.
        """
        wanted = self.config["meter_values"]
        caps = self.state.capabilities
        ok = ("Accepted", "RebootRequired")
        changed = False
        interval = wanted["sample_interval"]
        if interval is not None and caps.get("meter_value_sample_interval") != interval:
            changed = await self._set_variable("SampledDataCtrlr", "TxUpdatedInterval", str(interval)) in ok or changed
        measurands, current = wanted["sampled_data"], caps.get("meter_values_sampled_data")
        if measurands and current is not None and set(measurands) != set(current):
            if await self._set_variable("SampledDataCtrlr", "TxUpdatedMeasurands", ",".join(measurands)) not in ok:
                accepted = [m for m in measurands if await self._set_variable("SampledDataCtrlr", "TxUpdatedMeasurands", m) in ok]
                kept = ",".join(accepted) or ",".join(current) or "Energy.Active.Import.Register"
                await self._set_variable("SampledDataCtrlr", "TxUpdatedMeasurands", kept)
                _LOGGER.warning("%s: station refused TxUpdatedMeasurands %s; kept %s", self.id, ",".join(measurands), kept)
            changed = True
        if changed:
            readback = await self.call_status(call.GetVariables(get_variable_data=[
                {"component": {"name": "SampledDataCtrlr"}, "variable": {"name": name}}
                for name in ("TxUpdatedMeasurands", "TxUpdatedInterval")]))
            self._learn(list(ocpp201.variable_rows(readback.get("response", {}).get("getVariableResult"))))

    # -- commands (us -> station) ----------------------------------------------------------

    async def execute_trigger_message(self, requested_message: str, connector_id: int | None = None) -> dict[str, Any]:
        trigger = _TRIGGERS.get(requested_message)
        if trigger is None:
            return {"command": "trigger_message", "requested_message": requested_message, "status": "NotSupported",
                    "reason": f"OCPP 2.0.1 has no TriggerMessage for {requested_message}"}
        evse = {"id": connector_id} if connector_id else None
        return {"command": "trigger_message", "requested_message": requested_message,
                **await self.call_status(call.TriggerMessage(requested_message=trigger, evse=evse))}

    async def execute_unlock_connector(self, connector_id: int = 1) -> dict[str, Any]:
        return {"command": "unlock_connector", "connector_id": connector_id,
                **await self.call_status(call.UnlockConnector(evse_id=connector_id, connector_id=1))}

    async def execute_reset(self, kind: str = "Soft") -> dict[str, Any]:
        # 1.6 Soft (stop transactions gracefully, then restart) is 2.0.1 OnIdle; Hard is Immediate.
        return {"command": "reset", "type": kind,
                **await self.call_status(call.Reset(type="Immediate" if kind == "Hard" else "OnIdle"))}

    async def execute_remote_start_transaction(self, id_tag: str, connector_id: int | None = 1) -> dict[str, Any]:
        remote_start_id = self.hub.next_transaction_id()
        return {"command": "remote_start_transaction", **await self.call_status(call.RequestStartTransaction(
            id_token={"id_token": id_tag, "type": "Central"}, remote_start_id=remote_start_id, evse_id=connector_id))}

    async def execute_remote_stop_transaction(self, transaction_id: Any) -> dict[str, Any]:
        return {"command": "remote_stop_transaction", "transaction_id": transaction_id,
                **await self.call_status(call.RequestStopTransaction(transaction_id=str(transaction_id)))}

    async def execute_change_availability(self, operative: bool, connector_id: int = 0) -> dict[str, Any]:
        kind = "Operative" if operative else "Inoperative"
        evse = {"id": connector_id} if connector_id else None
        outcome = await self.call_status(call.ChangeAvailability(operational_status=kind, evse=evse))
        return {"command": "change_availability", "type": kind, "connector_id": connector_id, **outcome}

    async def execute_get_configuration(self, keys: list[str] | None = None) -> dict[str, Any]:
        """The device model in GetConfiguration's shape: GetBaseReport(FullInventory), then its NotifyReports.

        Each variable becomes a key (:func:`ocpp201.variable_key`) with its Actual value and whether it
        is ReadOnly, so the chargers page lists a 2.0.1 station as it lists a 1.6 charger.
        """
        request_id = next(self._request_ids)
        waiter: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._report_waiters[request_id] = waiter
        try:
            outcome = await self.call_status(call.GetBaseReport(request_id=request_id, report_base="FullInventory"))
            if outcome["status"] != Status.ACCEPTED:
                return {"command": "get_configuration", **outcome}
            wait = 3 * self._response_timeout
            try:
                items = await asyncio.wait_for(waiter, wait)
            except asyncio.TimeoutError:
                _LOGGER.warning("%s: GetBaseReport accepted, but no complete NotifyReport within %g s", self.id, wait)
                return {"command": "get_configuration", "status": Status.TIMEOUT,
                        "reason": f"the station accepted GetBaseReport but sent no complete report within {wait:g} s"}
        finally:
            self._report_waiters.pop(request_id, None)
        self.device_model = ocpp201.device_variables(items)
        wanted = set(keys) if keys else None
        listed = [v for v in self.device_model.values() if wanted is None or v.key in wanted]
        response: dict[str, Any] = {"configurationKey": [{"key": v.key, "readonly": v.readonly, "value": v.value} for v in listed]}
        if wanted is not None and wanted - self.device_model.keys():
            response["unknownKey"] = sorted(wanted - self.device_model.keys())
        return {"command": "get_configuration", "status": Status.ACCEPTED, "response": response}

    async def execute_change_configuration(self, key: str, value: str) -> dict[str, Any]:
        """SetVariables for a key of the last report; the answer in ChangeConfiguration's statuses."""
        target = self.device_model.get(key)
        if target is None:
            return {"command": "change_configuration", "key": key, "status": Status.NOT_SUPPORTED,
                    "reason": "not a variable of the station's last device-model report (read the configuration first)"}
        outcome = await self.call_status(call.SetVariables(set_variable_data=[
            {"component": target.component, "variable": target.variable, "attribute_value": value}]))
        results = outcome.get("response", {}).get("setVariableResult") or []
        if outcome["status"] != Status.ACCEPTED or not results or not isinstance(results[0], dict):
            return {"command": "change_configuration", "key": key, **outcome}
        answer = str(results[0].get("attributeStatus"))
        result: dict[str, Any] = {"command": "change_configuration", "key": key,
                                  "status": ocpp201.SET_VARIABLE_STATUS.get(answer, Status.REJECTED)}
        if answer != result["status"]:
            result["reason"] = f"the station answered {answer}"
        return result

    async def execute_get_composite_schedule(self, connector_id: int = 0, duration: int = 3600, unit: str | None = None) -> dict[str, Any]:
        outcome = await self.call_status(call.GetCompositeSchedule(evse_id=connector_id, duration=duration, charging_rate_unit=unit))
        schedule = outcome.get("response", {}).get("schedule")
        if schedule:  # the 1.6 shape refresh_effective_limit reads
            outcome["response"] = {"scheduleStart": schedule.get("scheduleStart"), "chargingSchedule": schedule}
        return {"command": "get_composite_schedule", "connector_id": connector_id, **outcome}

    async def execute_clear_charging_profile(self, profile_id: int | None = None, connector_id: int | None = None,
                                             purpose: str | None = None, stack_level: int | None = None) -> dict[str, Any]:
        criteria: dict[str, Any] = {}
        if connector_id is not None:
            criteria["evse_id"] = connector_id
        if purpose is not None:
            criteria["charging_profile_purpose"] = ocpp201.PURPOSES.get(purpose, purpose)
        if stack_level is not None:
            criteria["stack_level"] = stack_level
        return {"command": "clear_charging_profile", **await self.call_status(call.ClearChargingProfile(
            charging_profile_id=profile_id, charging_profile_criteria=criteria or None))}

    async def call_status(self, request: Any) -> dict[str, Any]:
        """As for 1.6; a SetChargingProfile the limit controller built (1.6 message class) goes out re-shaped."""
        if isinstance(request, call16.SetChargingProfile):
            return await self.send_charging_profile(camel_keys({"connectorId": request.connector_id,
                                                                "csChargingProfiles": request.cs_charging_profiles}))
        return await super().call_status(request)

    async def send_charging_profile(self, request_16: dict[str, Any]) -> dict[str, Any]:
        """One SetChargingProfile, built by the 1.6 builder and re-shaped: the numbers are computed once."""
        active = self.state.active_transaction()
        try:
            request = ocpp201.set_charging_profile_request(
                request_16, transaction_id=str(active[1].transaction_id) if active else None)
        except ValueError as err:
            return {"status": "Invalid", "reason": str(err)}
        profile = request["chargingProfile"]
        return await super().call_status(call.SetChargingProfile(evse_id=request["evseId"], charging_profile=profile))


__all__ = ["ChargePoint201", "InvalidResponse"]
