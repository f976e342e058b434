"""The 2.0.1 simulator against a central system made from the ``ocpp`` library itself.

Before our own 2.0.1 server exists, this proves the simulator speaks schema-valid 2.0.1: the library
validates every frame in both directions, so a malformed request or answer fails these tests.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import pytest
import websockets
from ocpp.routing import on
from ocpp.v201 import ChargePoint, call, call_result
from ocpp.v201.enums import Action

from ocpp_addon.simulator import SimOptions
from ocpp_addon.simulator_v201 import SUBPROTOCOL, SimulatedStation, connect

pytestmark = pytest.mark.asyncio


class Csms(ChargePoint):
    """The central system side: answers what a station sends and records it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.changed = asyncio.Condition()

    async def _note(self, action: str, payload: dict[str, Any]) -> None:
        async with self.changed:
            self.seen.append((action, payload))
            self.changed.notify_all()

    async def wait(self, action: str, predicate: Any = lambda p: True, timeout: float = 10) -> dict[str, Any]:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: any(a == action and predicate(p) for a, p in self.seen)), timeout)
        return next(p for a, p in self.seen if a == action and predicate(p))

    @on(Action.boot_notification)
    async def on_boot(self, **kw: Any) -> Any:
        await self._note("BootNotification", kw)
        return call_result.BootNotification(current_time="2026-12-07T12:00:00Z", interval=300, status="Accepted")

    @on(Action.status_notification)
    async def on_status(self, **kw: Any) -> Any:
        await self._note("StatusNotification", kw)
        return call_result.StatusNotification()

    @on(Action.transaction_event)
    async def on_tx(self, **kw: Any) -> Any:
        await self._note("TransactionEvent", kw)
        return call_result.TransactionEvent()

    @on(Action.meter_values)
    async def on_meter(self, **kw: Any) -> Any:
        await self._note("MeterValues", kw)
        return call_result.MeterValues()

    @on(Action.heartbeat)
    async def on_heartbeat(self, **kw: Any) -> Any:
        return call_result.Heartbeat(current_time="2026-12-07T12:00:00Z")

    @on(Action.notify_report)
    async def on_report(self, **kw: Any) -> Any:
        await self._note("NotifyReport", kw)
        return call_result.NotifyReport()


@pytest.fixture
async def csms() -> AsyncIterator[tuple[str, asyncio.Queue[Csms]]]:
    sessions: asyncio.Queue[Csms] = asyncio.Queue()

    async def handler(ws: Any) -> None:
        assert ws.subprotocol == SUBPROTOCOL
        cp = Csms(ws.request.path.strip("/"), ws)
        await sessions.put(cp)
        try:
            await cp.start()
        except websockets.ConnectionClosed:
            pass

    async with websockets.serve(handler, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL]) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}", sessions


async def _station(csms: tuple[str, asyncio.Queue[Csms]], options: SimOptions) -> tuple[SimulatedStation, Csms, asyncio.Task[None]]:
    url, sessions = csms
    station, task = await connect(url, "station-1", options)
    central = await asyncio.wait_for(sessions.get(), 10)
    await asyncio.wait_for(station.booted.wait(), 10)
    return station, central, task


async def test_boots_starts_a_transaction_and_reports_meter_values(csms: Any) -> None:
    station, central, task = await _station(csms, SimOptions(meter_interval=0, connectors=2, phases=1))
    boot = await central.wait("BootNotification")
    assert boot["charging_station"]["vendor_name"] == "Simulated" and boot["reason"] == "PowerUp"
    statuses = [(p["evse_id"], p["connector_status"]) for a, p in central.seen if a == "StatusNotification"]
    assert (1, "Available") in statuses and (2, "Available") in statuses and (1, "Occupied") in statuses
    started = await central.wait("TransactionEvent", lambda p: p["event_type"] == "Started")
    assert started["transaction_info"]["transaction_id"] == station.transaction_id
    await station.send_meter_values()
    updated = await central.wait("TransactionEvent", lambda p: p["event_type"] == "Updated")
    measurands = [v.get("measurand") for v in updated["meter_value"][0]["sampled_value"]]
    assert measurands.count("Current.Import") == 1  # one phase: one current reading
    assert updated["seq_no"] == started["seq_no"] + 1
    await station.stop_transaction()
    ended = await central.wait("TransactionEvent", lambda p: p["event_type"] == "Ended")
    assert ended["transaction_info"]["stopped_reason"] == "Local"
    task.cancel()


async def test_device_model_report_and_variables(csms: Any) -> None:
    station, central, task = await _station(csms, SimOptions(meter_interval=0, allowed_units=("W",)))
    answer = await central.call(call.GetBaseReport(request_id=7, report_base="FullInventory"))
    assert answer.status == "Accepted"
    last = await central.wait("NotifyReport", lambda p: not p.get("tbc"))
    rows = [row for a, p in central.seen if a == "NotifyReport" for row in p["report_data"]]
    assert last["request_id"] == 7
    rate_unit = next(r for r in rows if r["variable"]["name"] == "RateUnit")
    assert rate_unit["variable_attribute"][0]["value"] == "W"
    got = await central.call(call.GetVariables(get_variable_data=[
        {"component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "Enabled"}},
        {"component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "Nope"}},
        {"component": {"name": "Nope"}, "variable": {"name": "Enabled"}},
    ]))
    assert [r["attribute_status"] for r in got.get_variable_result] == ["Accepted", "UnknownVariable", "UnknownComponent"]
    assert got.get_variable_result[0]["attribute_value"] == "true"
    put = await central.call(call.SetVariables(set_variable_data=[
        {"component": {"name": "SampledDataCtrlr"}, "variable": {"name": "TxUpdatedInterval"}, "attribute_value": "15"},
        {"component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "RateUnit"}, "attribute_value": "A"},
        {"component": {"name": "SampledDataCtrlr"}, "variable": {"name": "TxUpdatedMeasurands"}, "attribute_value": "Bogus"},
    ]))
    assert [r["attribute_status"] for r in put.set_variable_result] == ["Accepted", "Rejected", "Rejected"]
    assert station.device_model[("SampledDataCtrlr", None, "TxUpdatedInterval")].value == "15"
    task.cancel()


def _profile(purpose: str, unit: str, limit: float, transaction_id: str | None = None) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "id": 1, "stack_level": 0, "charging_profile_purpose": purpose, "charging_profile_kind": "Absolute",
        "charging_schedule": [{"id": 1, "charging_rate_unit": unit, "start_schedule": "2026-12-07T12:00:00Z",
                               "charging_schedule_period": [{"start_period": 0, "limit": limit}]}],
    }
    if transaction_id:
        profile["transaction_id"] = transaction_id
    return profile


async def test_charging_profiles_and_quirks(csms: Any) -> None:
    station, central, task = await _station(csms, SimOptions(meter_interval=0, rejected_purposes={"TxDefaultProfile"}))
    refused = await central.call(call.SetChargingProfile(evse_id=1, charging_profile=_profile("TxDefaultProfile", "A", 10)))
    assert refused.status == "Rejected" and station.limit_amps is None
    accepted = await central.call(call.SetChargingProfile(
        evse_id=1, charging_profile=_profile("TxProfile", "A", 10, station.transaction_id)))
    assert accepted.status == "Accepted" and station.limit_amps == 10
    composite = await central.call(call.GetCompositeSchedule(evse_id=1, duration=60))
    assert composite.schedule["charging_schedule_period"][0]["limit"] == 10
    stop = await central.call(call.RequestStopTransaction(transaction_id=station.transaction_id))
    assert stop.status == "Accepted"
    await central.wait("TransactionEvent", lambda p: p["event_type"] == "Ended" and p["trigger_reason"] == "RemoteStop")
    task.cancel()


async def test_a_station_without_smart_charging_answers_not_supported(csms: Any) -> None:
    from ocpp.exceptions import NotSupportedError

    station, central, task = await _station(csms, SimOptions(meter_interval=0, profile_status="NotSupported"))
    with pytest.raises(NotSupportedError):
        await central.call(call.SetChargingProfile(evse_id=0, charging_profile=_profile("ChargingStationMaxProfile", "A", 10)),
                           suppress=False)
    got = await central.call(call.GetVariables(get_variable_data=[
        {"component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "Enabled"}}]))
    assert got.get_variable_result[0]["attribute_value"] == "false"
    task.cancel()


async def test_the_command_line_speaks_2_0_1(csms: Any) -> None:
    import sys

    url, sessions = csms
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ocpp_addon.simulator", "--ocpp", "2.0.1", "--url", url,
                                                "--id", "cli-station", "--meter-interval", "0")
    try:
        central = await asyncio.wait_for(sessions.get(), 20)
        assert central.id == "cli-station"
        boot = await central.wait("BootNotification", timeout=20)
        assert boot["charging_station"]["model"] == "SimCharger 22"
    finally:
        proc.terminate()
        await proc.wait()
