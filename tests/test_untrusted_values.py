"""Values the OCPP schemas allow but nothing should believe: ids, registers, readings and report items
that drove unbounded work, a crash or a wrong value (found by a review that reproduced each against
the service). Real service, mosquitto and WebSocket; the charger is a raw client, so it can send what
the simulators never would.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timezone
from typing import Any, Callable

import pytest
import websockets

from ocpp_addon import ocpp201

from .conftest import TIMEOUT, MqttProbe, Service


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class RawCharger:
    """Sends CALLs and waits for their answers; answers the service's CALLs with ``answer``."""

    def __init__(self, ws: Any, answer: Callable[[str, dict[str, Any]], dict[str, Any]]) -> None:
        self.ws, self.answer = ws, answer
        self.pending: dict[str, asyncio.Future[list[Any]]] = {}
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.count = 0
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, service: Service, cid: str, version: str = "ocpp1.6",
                      answer: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None) -> "RawCharger":
        ws = await websockets.connect(f"{service.url}/{cid}", subprotocols=[version])  # type: ignore[list-item]
        return cls(ws, answer or (lambda action, payload: {"configurationKey": []} if action == "GetConfiguration" else {"status": "Accepted"}))

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if msg[0] == 2:
                self.received.append((msg[2], msg[3]))
                await self.ws.send(json.dumps([3, msg[1], self.answer(msg[2], msg[3])]))
            elif msg[1] in self.pending:
                self.pending.pop(msg[1]).set_result(msg)

    async def call(self, action: str, payload: dict[str, Any]) -> list[Any]:
        self.count += 1
        uid = f"m{self.count}"
        self.pending[uid] = asyncio.get_running_loop().create_future()
        await self.ws.send(json.dumps([2, uid, action, payload]))
        return await asyncio.wait_for(self.pending[uid], TIMEOUT)

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


BOOT_16 = {"chargePointVendor": "V", "chargePointModel": "M"}
BOOT_201 = {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}}


def status_201(evse_id: int, connector_id: int = 1, status: str = "Available") -> dict[str, Any]:
    return {"timestamp": now(), "connectorStatus": status, "evseId": evse_id, "connectorId": connector_id}


async def test_every_id_field_is_checked_and_negative_ids_are_refused(service: Service) -> None:
    """A 2.0.1 StatusNotification's evseId (beside a small connectorId) became a connector; -1 read as the main one."""
    station = await RawCharger.connect(service, "station-1", "ocpp2.0.1")
    charger = await RawCharger.connect(service, "wallbox-1")
    try:
        assert (await station.call("BootNotification", BOOT_201))[0] == 3
        assert (await charger.call("BootNotification", BOOT_16))[0] == 3
        for evse in (9, 1000, 5000):
            assert (await station.call("StatusNotification", status_201(evse)))[:3] == [4, f"m{station.count}", "PropertyConstraintViolation"]
        assert (await station.call("StatusNotification", status_201(2)))[0] == 3  # within ocpp.max_connectors: served
        assert max(service.app.hub.states["station-1"].connectors) == 2
        power = {"connectorId": -1, "meterValue": [{"timestamp": now(), "sampledValue": [{"value": "123456", "measurand": "Power.Active.Import", "unit": "W"}]}]}
        assert (await charger.call("MeterValues", power))[2] == "PropertyConstraintViolation"
        unavailable = {"connectorId": -1, "errorCode": "NoError", "status": "Unavailable"}
        assert (await charger.call("StatusNotification", unavailable))[2] == "PropertyConstraintViolation"
        state = service.app.hub.states["wallbox-1"]
        assert "power" not in state.readings and -1 not in state.connectors
    finally:
        await station.close()
        await charger.close()


async def test_a_reading_that_overflows_is_dropped_and_the_state_still_published(service: Service, probe: MqttProbe) -> None:
    """'1e308' kW is a finite string and an infinite reading: it stopped every later state message of the charger."""
    charger = await RawCharger.connect(service, "wallbox-1")
    try:
        await charger.call("BootNotification", BOOT_16)
        huge = [{"value": "1e308", "measurand": "Power.Active.Import", "unit": "kW"},
                {"value": "1e308", "measurand": "Power.Active.Import", "unit": "W", "phase": "L1"},
                {"value": "1.7e308", "measurand": "Power.Active.Import", "unit": "W", "phase": "L2"},
                {"value": "231", "measurand": "Voltage", "unit": "V"}]
        assert (await charger.call("MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": now(), "sampledValue": huge}]}))[0] == 3
        state = await probe.wait_json("ocpp/wallbox-1/state", lambda d: d.get("voltage") == 231)
        assert state.get("power") is None  # L1 + L2 overflow too: no sum of them
        mark = probe.mark()
        fine = [{"value": "7000", "measurand": "Power.Active.Import", "unit": "W"}]
        await charger.call("MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": now(), "sampledValue": fine}]})
        await probe.wait_json("ocpp/wallbox-1/state", lambda d: d.get("power") is not None, since=mark)
    finally:
        await charger.close()


async def test_an_effective_limit_that_overflows_in_watts_is_no_limit(service_factory: Any, probe: MqttProbe) -> None:
    def answer(action: str, payload: dict[str, Any]) -> dict[str, Any]:
        if action == "GetConfiguration":
            return {"configurationKey": [{"key": "SupportedFeatureProfiles", "readonly": True, "value": "Core,SmartCharging"}]}
        if action == "GetCompositeSchedule":
            return {"status": "Accepted", "connectorId": 1, "scheduleStart": now(),
                    "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 1e306}]}}
        return {"status": "Accepted"}

    service = await service_factory(charging={"unit": "W", "debounce": 0})
    charger = await RawCharger.connect(service, "wallbox-1", answer=answer)
    try:
        await charger.call("BootNotification", BOOT_16)
        mark = probe.mark()
        probe.publish("ocpp/wallbox-1/charging_limit/set", "7000")
        await probe.wait_json("ocpp/wallbox-1/event", lambda d: d.get("command") == "charging_limit" and d["status"] == "Accepted", since=mark)
        state = await probe.wait_json("ocpp/wallbox-1/state", lambda d: d.get("charging_limit") == 7000, since=mark)
        assert state.get("effective_limit") is None
        mark = probe.mark()  # and later states still go out
        fine = [{"value": "230", "measurand": "Voltage", "unit": "V"}]
        await charger.call("MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": now(), "sampledValue": fine}]})
        await probe.wait_json("ocpp/wallbox-1/state", lambda d: d.get("voltage") == 230, since=mark)
    finally:
        await charger.close()


async def test_a_meter_register_beyond_a_float_does_not_break_the_transaction(service: Service, probe: MqttProbe,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    """meterStart of 400 digits ('integer' in the schema): every later MeterValues raised OverflowError."""
    charger = await RawCharger.connect(service, "wallbox-1")
    try:
        await charger.call("BootNotification", BOOT_16)
        started = await charger.call("StartTransaction", {"connectorId": 1, "idTag": "TAG", "meterStart": 10**400, "timestamp": now()})
        assert started[0] == 3 and started[2]["idTagInfo"]["status"] == "Accepted"
        transaction = started[2]["transactionId"]
        energy = [{"value": "5000", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]
        answer = await charger.call("MeterValues", {"connectorId": 1, "transactionId": transaction,
                                                    "meterValue": [{"timestamp": now(), "sampledValue": energy}]})
        assert answer[0] == 3
        await probe.wait_json("ocpp/wallbox-1/state", lambda d: d.get("energy") == 5)
        stopped = await charger.call("StopTransaction", {"transactionId": transaction, "meterStop": -(10**400), "timestamp": now()})
        assert stopped[0] == 3
        await probe.wait_json("ocpp/wallbox-1/state", lambda d: d.get("transaction_id") is None and d.get("stop_reason") == "Local")
        assert "Traceback" not in caplog.text and "OverflowError" not in caplog.text
    finally:
        await charger.close()


def test_an_unfinished_report_keeps_only_what_is_read() -> None:
    """NotifyReport parts are kept until the last one: customData and characteristics of any size are not."""
    item = {"component": {"name": "EVSE", "evse": {"id": 1, "connectorId": 2, "customData": {"vendorId": "v", "x": "y" * 60_000}},
                          "customData": {"vendorId": "v", "blob": "z" * 60_000}},
            "variable": {"name": "Power", "instance": "Max", "customData": {"vendorId": "v"}},
            "variableAttribute": [{"type": "Actual", "value": "v" * 2500, "mutability": "ReadOnly", "persistent": True}] * 10,
            "variableCharacteristics": {"dataType": "decimal", "supportsMonitoring": False, "valuesList": "w" * 1000}}
    slim = ocpp201.slim_report_item(item)
    assert slim is not None and len(json.dumps(slim)) < 5000
    assert slim["component"] == {"name": "EVSE", "evse": {"id": 1, "connectorId": 2}}
    assert slim["variable"] == {"name": "Power", "instance": "Max"}
    assert len(slim["variableAttribute"]) == 4 and slim["variableAttribute"][0] == {"type": "Actual", "value": "v" * 1000, "mutability": "ReadOnly"}
    assert ocpp201.device_variables([slim])["EVSE@1/2.Power[Max]"].readonly is True
    assert ocpp201.slim_report_item({"component": "EVSE", "variable": {}}) is None


async def test_a_report_that_never_ends_holds_a_bounded_amount(service: Service, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    station = await RawCharger.connect(service, "station-1", "ocpp2.0.1")
    try:
        await station.call("BootNotification", BOOT_201)
        padding = {"vendorId": "v", "blob": "z" * 20_000}
        for request_id in range(6):
            report = [{"component": {"name": "Ctrlr", "customData": padding}, "variable": {"name": f"V{n}"},
                       "variableAttribute": [{"value": "1"}]} for n in range(3)]
            answer = await station.call("NotifyReport", {"requestId": request_id, "generatedAt": now(), "seqNo": 0, "tbc": True, "reportData": report})
            assert answer[0] == 3
        cp = service.app.hub.connected["station-1"]
        kept = cp._reports  # type: ignore[attr-defined]
        assert len(kept) <= 2 and len(json.dumps(kept)) < 2000
    finally:
        await station.close()
