"""One connected charger: OCPP 1.6J handlers and the commands we send it.

Built on ``ocpp.v16.ChargePoint`` (routing, ``call()``, message dataclasses), with
the receive path replaced so that

* malformed frames get the CALLERROR OCPP-J prescribes (or are dropped when they
  carry no message id) with one log line, instead of a traceback;
* every CALL is still schema-checked, by a compiled validator (``validation.py``);
* error codes use the OCPP 1.6 spelling and meaning (``FormationViolation``,
  ``NotImplemented`` for an unknown action, ``NotSupported`` for a known one we
  do not handle);
* a CALLRESULT nobody waits for is dropped rather than queued to confuse the
  next ``call()``.

Charge points never touch MQTT: they update :class:`ChargerState` and tell the hub.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ocpp.charge_point import remove_nones, serialize_as_dict
from ocpp.exceptions import (
    FormationViolationError,
    InternalError,
    NotImplementedError as OcppNotImplemented,
    NotSupportedError,
    OCPPError,
)
from ocpp.messages import Call, CallError, CallResult
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as _OcppChargePoint
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action, AuthorizationStatus, DataTransferStatus, RegistrationStatus
from websockets.exceptions import ConnectionClosed

from . import validation
from .profiles import SetpointError, build_set_charging_profile, convert_limit
from .state import ChargerState, parse_meter_values, parse_number, utc_now_iso

if TYPE_CHECKING:
    from .hub import Hub

_LOGGER = logging.getLogger(__name__)
_LOG_FRAME_CHARS = 200

# OCPP 1.6-J §4.2.3 spells these differently from the library's 2.x-era classes.
_WIRE_CODES = {"FormatViolation": "FormationViolation", "OccurrenceConstraintViolation": "OccurenceConstraintViolation"}


@lru_cache(maxsize=4096)
def _snake(key: str) -> str:
    """camelCase -> snake_case, the library's rule, computed once per key."""
    s1 = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", key)
    return re.sub("([a-z0-9])([A-Z])(?=\\S)", r"\1_\2", s1).lower()


@lru_cache(maxsize=4096)
def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def snake_keys(data: Any) -> Any:
    if isinstance(data, dict):
        return {_snake(k): snake_keys(v) for k, v in data.items()}
    if isinstance(data, list):
        return [snake_keys(v) for v in data]
    return data


def camel_keys(data: Any) -> Any:
    if isinstance(data, dict):
        return {_camel(k): camel_keys(v) for k, v in data.items()}
    if isinstance(data, list):
        return [camel_keys(v) for v in data]
    return data


def _short(frame: Any) -> str:
    text = frame if isinstance(frame, str) else repr(frame)
    return text if len(text) <= _LOG_FRAME_CHARS else text[:_LOG_FRAME_CHARS] + "..."


class ChargePoint(_OcppChargePoint):
    """A connected charger. Created per WebSocket connection by the central system."""

    def __init__(self, charger_id: str, connection: Any, hub: Hub, config: dict[str, Any]) -> None:
        super().__init__(charger_id, connection, response_timeout=config["ocpp"]["response_timeout"])
        self.hub = hub
        self.config = config
        self.state: ChargerState = hub.state_for(charger_id)
        self.ready = asyncio.Event()  # booted (or evidently running): CS-initiated calls may go out
        self._after_tasks: set[asyncio.Task[Any]] = set()

    # -- receive path -------------------------------------------------------

    async def start(self) -> None:
        """Receive until the connection closes; never raises on a closed socket."""
        try:
            while True:
                frame = await self._connection.recv()
                if isinstance(frame, bytes):
                    _LOGGER.warning("%s: ignored a binary frame (%d bytes); OCPP-J uses text frames", self.id, len(frame))
                    continue
                if self.hub.wants_raw_frames:
                    self.hub.raw_frame(self.id, frame)
                await self.route_message(frame)
        except ConnectionClosed:
            return

    async def route_message(self, raw_msg: str) -> None:
        try:
            msg = json.loads(raw_msg)
        except ValueError:
            _LOGGER.warning("%s: dropped a frame that is not JSON: %s", self.id, _short(raw_msg))
            return
        if not isinstance(msg, list) or not msg:
            _LOGGER.warning("%s: dropped a frame that is not an OCPP-J array: %s", self.id, _short(raw_msg))
            return
        type_id = msg[0]
        unique_id = msg[1] if len(msg) > 1 and isinstance(msg[1], str) and 0 < len(msg[1]) <= 36 else None
        if type_id == 2:
            if len(msg) == 4 and unique_id and isinstance(msg[2], str) and isinstance(msg[3], dict):
                await self._handle_call(Call(unique_id, msg[2], msg[3]))
                return
            await self._reject_frame(unique_id, "a CALL must be [2, \"<id>\", \"<Action>\", {payload}]", raw_msg)
        elif type_id in (3, 4):
            self._route_response(msg, unique_id, raw_msg)
        else:
            await self._reject_frame(unique_id, f"unknown MessageTypeId {type_id!r} (2 CALL, 3 CALLRESULT, 4 CALLERROR)", raw_msg)

    async def _reject_frame(self, unique_id: str | None, cause: str, raw_msg: str) -> None:
        if unique_id is None:
            _LOGGER.warning("%s: dropped a malformed frame without a usable message id (%s): %s", self.id, cause, _short(raw_msg))
            return
        _LOGGER.warning("%s: answered a malformed frame with FormationViolation (%s): %s", self.id, cause, _short(raw_msg))
        await self._send_error(unique_id, FormationViolationError(details={"cause": cause}))

    def _route_response(self, msg: list[Any], unique_id: str | None, raw_msg: str) -> None:
        if not self._call_lock.locked():
            _LOGGER.warning("%s: dropped a response to no outstanding request: %s", self.id, _short(raw_msg))
            return
        if msg[0] == 3 and len(msg) == 3 and unique_id and isinstance(msg[2], dict):
            self._response_queue.put_nowait(CallResult(unique_id, msg[2]))
        elif msg[0] == 4 and len(msg) in (4, 5) and unique_id and isinstance(msg[2], str):
            details = msg[4] if len(msg) == 5 and isinstance(msg[4], dict) else {}
            self._response_queue.put_nowait(CallError(unique_id, msg[2], str(msg[3]), details))
        else:
            _LOGGER.warning("%s: dropped a malformed response: %s", self.id, _short(raw_msg))

    async def _handle_call(self, msg: Call) -> None:
        handlers = self.route_map.get(msg.action)
        if not handlers or "_on_action" not in handlers:
            if validation.known_action(msg.action):
                error: OCPPError = NotSupportedError(
                    "Requested Action is recognized but not supported by the receiver",
                    details={"cause": f"{msg.action} is not supported by this central system"})
            else:
                error = OcppNotImplemented(
                    "Requested Action is not known by receiver", details={"cause": f"{msg.action} is not an OCPP 1.6 action"})
            _LOGGER.warning("%s: answered %s with %s", self.id, _short(msg.action), _WIRE_CODES.get(error.code, error.code))
            await self._send_error(msg.unique_id, error)
            return
        try:
            validation.validate_call(msg.action, msg.payload)
        except OCPPError as err:
            cause = (err.details or {}).get("cause", err.description)
            _LOGGER.warning("%s: %s rejected with %s: %s", self.id, msg.action, _WIRE_CODES.get(err.code, err.code), cause)
            await self._send_error(msg.unique_id, err)
            return
        kwargs = snake_keys(msg.payload)
        try:
            response = handlers["_on_action"](**kwargs)
            if inspect.isawaitable(response):
                response = await response
            payload = camel_keys(remove_nones(serialize_as_dict(response)))
        except Exception:  # a bug of ours must not cost the charger its connection
            _LOGGER.exception("%s: internal error while handling %s", self.id, msg.action)
            await self._send_error(msg.unique_id, InternalError(details={"cause": f"internal error handling {msg.action}"}))
            return
        await self._send(json.dumps([3, msg.unique_id, payload], separators=(",", ":")))
        after_handler = handlers.get("_after_action")
        if after_handler is not None:
            result = after_handler(**kwargs)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._after_tasks.add(task)
                task.add_done_callback(self._after_tasks.discard)
        if msg.action != Action.boot_notification and not self.ready.is_set():
            self._mark_ready("it is evidently running (sent %s)" % msg.action)

    async def _send_error(self, unique_id: str, error: OCPPError) -> None:
        code = _WIRE_CODES.get(error.code, error.code)
        await self._send(json.dumps([4, unique_id, code, error.description, error.details or {}], separators=(",", ":")))

    async def _send(self, message: str) -> None:
        if _LOGGER.isEnabledFor(logging.DEBUG):
            _LOGGER.debug("%s: send %s", self.id, message)
        await self._connection.send(message)

    def _mark_ready(self, why: str) -> None:
        if not self.ready.is_set():
            _LOGGER.debug("%s: ready for commands: %s", self.id, why)
            self.ready.set()
            self.hub.charger_ready(self)

    async def wait_for_boot(self) -> None:
        """Backstop for chargers that never send BootNotification after a reconnect."""
        try:
            await asyncio.wait_for(self.ready.wait(), self.config["ocpp"]["boot_wait"])
        except asyncio.TimeoutError:
            self._mark_ready("no BootNotification within ocpp.boot_wait")

    # -- handlers (charger -> us) -------------------------------------------

    @on(Action.boot_notification)
    def on_boot_notification(self, charge_point_vendor: str, charge_point_model: str, **kwargs: Any) -> Any:
        state = self.state
        state.vendor = charge_point_vendor or None  # some firmware sends ""; accept, a refusal boot-loops it
        state.model = charge_point_model or None
        state.firmware = kwargs.get("firmware_version")
        state.serial = kwargs.get("charge_point_serial_number") or kwargs.get("charge_box_serial_number")
        _LOGGER.info("%s: booted (%s %s, firmware %s)", self.id, state.vendor or "?", state.model or "?", state.firmware or "?")
        self.hub.charger_booted(self)
        return call_result.BootNotification(
            current_time=utc_now_iso(),
            interval=self.config["ocpp"]["heartbeat_interval"],
            status=RegistrationStatus.accepted,
        )

    @after(Action.boot_notification)
    def after_boot_notification(self, **kwargs: Any) -> None:
        self._mark_ready("BootNotification accepted")

    @on(Action.heartbeat)
    def on_heartbeat(self, **kwargs: Any) -> Any:
        self.state.last_heartbeat = utc_now_iso()
        self.hub.state_changed(self.state, ("last_heartbeat",))
        return call_result.Heartbeat(current_time=self.state.last_heartbeat)

    @on(Action.status_notification)
    def on_status_notification(self, connector_id: int, error_code: str, status: str, **kwargs: Any) -> Any:
        connector = self.state.connector(connector_id)
        connector.status = status
        connector.error_code = error_code
        connector.info = kwargs.get("info")
        connector.vendor_error_code = kwargs.get("vendor_error_code")
        _LOGGER.info("%s: connector %d is %s (%s)", self.id, connector_id, status, error_code)
        self.hub.state_changed(self.state, ("status", "error_code"))
        return call_result.StatusNotification()

    @on(Action.meter_values)
    def on_meter_values(self, connector_id: int, meter_value: list[dict[str, Any]], **kwargs: Any) -> Any:
        self._apply_readings(parse_meter_values(meter_value))
        return call_result.MeterValues()

    def _apply_readings(self, readings: dict[str, float]) -> None:
        changed = [k for k, v in readings.items() if self.state.readings.get(k) != v]
        if changed:
            self.state.readings.update(readings)
            self.hub.state_changed(self.state, changed)

    @on(Action.start_transaction)
    def on_start_transaction(self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **kwargs: Any) -> Any:
        transaction_id = self.hub.next_transaction_id()
        connector = self.state.connector(connector_id)
        connector.transaction_id = transaction_id
        connector.id_tag = id_tag
        connector.meter_start = meter_start
        _LOGGER.info("%s: transaction %d started on connector %d", self.id, transaction_id, connector_id)
        self.hub.state_changed(self.state, ("transaction_id",))
        return call_result.StartTransaction(
            transaction_id=transaction_id, id_tag_info={"status": AuthorizationStatus.accepted}
        )

    @on(Action.stop_transaction)
    def on_stop_transaction(self, meter_stop: int, timestamp: str, transaction_id: int, **kwargs: Any) -> Any:
        # Idempotent: a duplicate or unknown StopTransaction is still acknowledged, or the
        # charger keeps it queued and replays it forever.
        for connector in self.state.connectors.values():
            if connector.transaction_id == transaction_id:
                connector.transaction_id = None
                _LOGGER.info("%s: transaction %d stopped (%s)", self.id, transaction_id, kwargs.get("reason") or "Local")
                self.hub.state_changed(self.state, ("transaction_id",))
        if kwargs.get("transaction_data"):
            self._apply_readings(parse_meter_values(kwargs["transaction_data"]))
        return call_result.StopTransaction(id_tag_info={"status": AuthorizationStatus.accepted})

    @on(Action.authorize)
    def on_authorize(self, id_tag: str, **kwargs: Any) -> Any:
        return call_result.Authorize(id_tag_info={"status": AuthorizationStatus.accepted})

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **kwargs: Any) -> Any:
        _LOGGER.info("%s: DataTransfer from vendor %r (message %r) not handled", self.id, vendor_id, kwargs.get("message_id"))
        return call_result.DataTransfer(status=DataTransferStatus.unknown_vendor_id)

    @on(Action.firmware_status_notification)
    def on_firmware_status_notification(self, status: str, **kwargs: Any) -> Any:
        self.state.firmware_status = status
        self.hub.state_changed(self.state, ("firmware_status",))
        return call_result.FirmwareStatusNotification()

    @on(Action.diagnostics_status_notification)
    def on_diagnostics_status_notification(self, status: str, **kwargs: Any) -> Any:
        self.state.diagnostics_status = status
        self.hub.state_changed(self.state, ("diagnostics_status",))
        return call_result.DiagnosticsStatusNotification()

    # -- commands (us -> charger) ---------------------------------------------

    def _voltage(self) -> float:
        measured = parse_number(self.state.readings.get("voltage"))
        return measured if measured is not None and 50 <= measured <= 500 else self.config["charging"]["voltage"]

    async def execute_send_charging_profile(self, limit: float, unit: str | None = None, template: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a SetChargingProfile carrying ``limit`` and report what the charger answered.

        ``unit`` is the unit of ``limit`` (default: ``charging.unit``); the profile is
        sent in the template's unit (converted with the measured voltage, or the
        configured one, and phase count). Returns ``{"status": "Accepted" |
        "Rejected" | "NotSupported" | "Timeout" | "CallError" | "Invalid", ...}``.
        """
        charging = self.config["charging"]
        template = template or charging["profile"]
        unit = unit or charging["unit"]
        wire_unit = template["unit"] or unit
        result: dict[str, Any] = {"command": "charging_limit", "limit": limit, "unit": unit}
        try:
            wire_limit = convert_limit(limit, unit, wire_unit, self._voltage(), template["number_phases"] or charging["phases"])
            main = self.state.main_connector
            payload = build_set_charging_profile(
                wire_limit, wire_unit, template, transaction_id=main.transaction_id if main else None
            )
        except SetpointError as err:
            return {**result, "status": "Invalid", "reason": str(err)}
        profile = payload["csChargingProfiles"]
        result.update(
            sent_limit=profile["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"],
            sent_unit=wire_unit,
            connector_id=payload["connectorId"],
            purpose=profile["chargingProfilePurpose"],
            stack_level=profile["stackLevel"],
            profile_id=profile["chargingProfileId"],
        )
        request = call.SetChargingProfile(connector_id=payload["connectorId"], cs_charging_profiles=profile)
        return {**result, **await self._call_status(request)}

    async def execute_trigger_message(self, requested_message: str, connector_id: int | None = None) -> dict[str, Any]:
        """Ask the charger to send a message now (BootNotification, MeterValues, StatusNotification, ...)."""
        return {"command": "trigger_message", "requested_message": requested_message,
                **await self._call_status(call.TriggerMessage(requested_message=requested_message, connector_id=connector_id))}

    async def execute_unlock_connector(self, connector_id: int = 1) -> dict[str, Any]:
        return {"command": "unlock_connector", "connector_id": connector_id,
                **await self._call_status(call.UnlockConnector(connector_id=connector_id))}

    async def execute_get_composite_schedule(self, connector_id: int = 0, duration: int = 3600, unit: str | None = None) -> dict[str, Any]:
        """The schedule the charger will really apply (the minimum of all its active profiles)."""
        return {"command": "get_composite_schedule", "connector_id": connector_id,
                **await self._call_status(call.GetCompositeSchedule(connector_id=connector_id, duration=duration, charging_rate_unit=unit))}

    async def execute_clear_charging_profile(self, profile_id: int | None = None, connector_id: int | None = None,
                                             purpose: str | None = None, stack_level: int | None = None) -> dict[str, Any]:
        return {"command": "clear_charging_profile", **await self._call_status(call.ClearChargingProfile(
            id=profile_id, connector_id=connector_id, charging_profile_purpose=purpose, stack_level=stack_level))}

    async def execute_reset(self, kind: str = "Soft") -> dict[str, Any]:
        return {"command": "reset", "type": kind, **await self._call_status(call.Reset(type=kind))}

    async def execute_remote_start_transaction(self, id_tag: str, connector_id: int | None = 1) -> dict[str, Any]:
        return {"command": "remote_start_transaction", **await self._call_status(
            call.RemoteStartTransaction(id_tag=id_tag, connector_id=connector_id))}

    async def execute_remote_stop_transaction(self, transaction_id: int) -> dict[str, Any]:
        return {"command": "remote_stop_transaction", "transaction_id": transaction_id,
                **await self._call_status(call.RemoteStopTransaction(transaction_id=transaction_id))}

    async def execute_change_availability(self, operative: bool, connector_id: int = 0) -> dict[str, Any]:
        kind = "Operative" if operative else "Inoperative"
        return {"command": "change_availability", "type": kind, "connector_id": connector_id,
                **await self._call_status(call.ChangeAvailability(connector_id=connector_id, type=kind))}

    async def execute_get_configuration(self, keys: list[str] | None = None) -> dict[str, Any]:
        return {"command": "get_configuration", **await self._call_status(call.GetConfiguration(key=keys))}

    async def execute_change_configuration(self, key: str, value: str) -> dict[str, Any]:
        return {"command": "change_configuration", "key": key,
                **await self._call_status(call.ChangeConfiguration(key=key, value=value))}

    async def _call_status(self, request: Any) -> dict[str, Any]:
        """Run a CALL and express its outcome as ``{"status": ...}`` (never raises for charger faults)."""
        action = type(request).__name__
        try:
            response = await self.call(request, suppress=False)
        except asyncio.TimeoutError:
            _LOGGER.warning("%s: no answer to %s within %ss", self.id, action, self._response_timeout)
            return {"status": "Timeout", "reason": f"no answer within {self._response_timeout:g} s"}
        except OCPPError as err:
            _LOGGER.warning("%s: %s answered with CALLERROR %s", self.id, action, err.code)
            return {"status": "CallError", "reason": f"{err.code}: {err.description}"}
        status = getattr(response, "status", None)
        _LOGGER.info("%s: %s -> %s", self.id, action, status)
        outcome: dict[str, Any] = {"status": str(status) if status is not None else "Accepted"}
        details = camel_keys(remove_nones(serialize_as_dict(response)))
        details.pop("status", None)
        if details:
            outcome["response"] = details
        return outcome

