"""Smart charging against a simulator that behaves like real chargers (reference/ocpp-smart-charging.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import websockets

from ocpp_addon.hub import READY, RESULT

from .conftest import MqttProbe, Service

LIMIT_SET = "ocpp/wallbox-1/charging_limit/set"
EVENT = "ocpp/wallbox-1/event"
STATE = "ocpp/wallbox-1/state"


def _profile(payload: dict[str, Any]) -> dict[str, Any]:
    return payload["csChargingProfiles"]


def _limit(payload: dict[str, Any]) -> float:
    return _profile(payload)["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"]


async def _accepted(probe: MqttProbe, since: int = 0) -> dict[str, Any]:
    return await probe.wait_json(EVENT, lambda d: d["command"] == "charging_limit" and d["status"] == "Accepted", since=since)


async def test_capabilities_are_read_and_published(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1", max_stack_level=3, allowed_units=("W",))
    request = await sim.wait_for_call("GetConfiguration")
    assert "ChargeProfileMaxStackLevel" in request["key"]
    state = await probe.wait_json(STATE, lambda d: d["capabilities"].get("max_stack_level") == 3)
    assert state["capabilities"]["allowed_units"] == ["W"] and state["capabilities"]["smart_charging"] is True
    assert state["smart_charging"] == "supported"


async def test_w_only_charger_gets_watts_straight_away(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1", allowed_units=("W",))
    await sim.wait_for_call("GetConfiguration")
    probe.publish(LIMIT_SET, "16")
    event = await _accepted(probe)
    assert len(event["attempts"]) == 1
    request = sim.calls("SetChargingProfile")[0]
    assert _profile(request)["chargingSchedule"]["chargingRateUnit"] == "W"
    assert _limit(request) == 16 * 230 * 3
    state = await probe.wait_json(STATE, lambda d: d["charging_limit"] == 16)
    assert state["charging_limit_unit"] == "A"


async def test_charger_rejecting_connector_zero_gets_each_connector_and_it_is_remembered(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1", reject_connector_zero=True, connectors=2)
    probe.publish(LIMIT_SET, "16")
    event = await _accepted(probe)
    assert [(a["connector_ids"], a["status"]) for a in event["attempts"]] == [([0], "Rejected"), ([1, 2], "Accepted")]
    sent = sim.calls("SetChargingProfile")
    assert [p["connectorId"] for p in sent] == [0, 1, 2]
    # one profile per connector: ids differ, or the second would replace the first
    assert _profile(sent[1])["chargingProfileId"] != _profile(sent[2])["chargingProfileId"]
    mark = probe.mark()
    probe.publish(LIMIT_SET, "10")
    second = await _accepted(probe, since=mark)
    assert len(second["attempts"]) == 1  # straight to what worked: no second ladder walk
    assert [p["connectorId"] for p in sim.calls("SetChargingProfile")[3:]] == [1, 2]
    assert service.app.store.chargers["wallbox-1"]["strategy"]["connector_ids"] == [1, 2]


async def test_tx_default_rejected_charge_point_max_accepted(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1", rejected_purposes={"TxDefaultProfile"})
    probe.publish(LIMIT_SET, "16")
    event = await _accepted(probe)
    assert event["purpose"] == "ChargePointMaxProfile"
    assert event["attempts"][-1]["purpose"] == "ChargePointMaxProfile"
    assert all(a["status"] == "Rejected" for a in event["attempts"][:-1])
    mark = probe.mark()
    probe.publish(LIMIT_SET, "12")
    second = await _accepted(probe, since=mark)
    assert [a["purpose"] for a in second["attempts"]] == ["ChargePointMaxProfile"]
    assert _profile(sim.calls("SetChargingProfile")[-1])["chargingProfilePurpose"] == "ChargePointMaxProfile"


async def test_stack_level_is_kept_within_the_chargers_maximum(service_factory, probe: MqttProbe) -> None:
    service = await service_factory(charging={"profile": {"stack_level": 5}})
    sim = await service.charger("wallbox-1", max_stack_level=0)
    await sim.wait_for_call("GetConfiguration")
    probe.publish(LIMIT_SET, "16")
    event = await _accepted(probe)
    assert len(event["attempts"]) == 1 and event["stack_level"] == 0
    assert _profile(sim.calls("SetChargingProfile")[0])["stackLevel"] == 0


async def test_absolute_rejected_relative_accepted(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1", rejected_kinds={"Absolute"})
    probe.publish(LIMIT_SET, "16")
    event = await _accepted(probe)
    assert event["kind"] == "Relative"
    relative = _profile(sim.calls("SetChargingProfile")[-1])
    assert relative["chargingProfileKind"] == "Relative" and "startSchedule" not in relative["chargingSchedule"]


async def test_nothing_works_says_exactly_why(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1", profile_status="Rejected")
    probe.publish(LIMIT_SET, "16")
    event = await probe.wait_json(EVENT, lambda d: d["command"] == "charging_limit" and d["status"] == "Rejected")
    assert len(event["attempts"]) == len(sim.calls("SetChargingProfile")) >= 4
    assert {a["purpose"] for a in event["attempts"]} == {"TxDefaultProfile", "ChargePointMaxProfile"}
    assert service.app.hub.states["wallbox-1"].charging_limit is None


async def test_charger_without_boot_notification_still_gets_the_kept_setpoint(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    await sim._connection.close()
    probe.publish(LIMIT_SET, "13")
    await probe.wait_json(EVENT, lambda d: d["status"] == "Queued")
    # A charger that reconnects silently: no BootNotification, no other message. The boot_wait backstop applies.
    mark = len(service.events)
    ws = await websockets.connect(f"{service.url}/wallbox-1", subprotocols=["ocpp1.6"])
    await service.wait_event(READY, "wallbox-1", since=mark)
    request = json.loads(await ws.recv())
    assert request[2] == "GetConfiguration"
    await ws.send(json.dumps([3, request[1], {"configurationKey": [], "unknownKey": []}]))
    request = json.loads(await ws.recv())
    assert request[2] == "SetChargingProfile" and _limit(request[3]) == 13
    await ws.close()


async def test_duplicate_stop_transaction_is_acknowledged_and_session_recorded(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    sim.energy_wh += 2500
    answers = await sim.stop_transaction(times=2)
    assert len(answers) == 2
    state = await probe.wait_json(STATE, lambda d: d["stop_reason"] == "Local")
    assert state["transaction_id"] is None and state["session_energy"] == 2.5


async def test_below_minimum_current_pauses(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    probe.publish(LIMIT_SET, "3")
    event = await _accepted(probe)
    assert event["note"] == "paused: below 6 A"
    assert _limit(sim.calls("SetChargingProfile")[0]) == 0


async def test_below_minimum_current_rejected_when_configured(service_factory, probe: MqttProbe) -> None:
    service = await service_factory(charging={"below_min": "reject"})
    sim = await service.charger("wallbox-1")
    probe.publish(LIMIT_SET, "3")
    event = await probe.wait_json(EVENT, lambda d: d["status"] == "Invalid")
    assert "minimum charging current" in event["reason"]
    probe.publish(LIMIT_SET, "8")
    await sim.wait_for_call("SetChargingProfile")
    assert [_limit(p) for p in sim.calls("SetChargingProfile")] == [8]


async def test_slider_drag_is_debounced_first_value_at_once_newest_after_quiet_time(service_factory, probe: MqttProbe) -> None:
    service = await service_factory(charging={"debounce": 0.5})
    sim = await service.charger("wallbox-1")
    await service.app.hub.connected["wallbox-1"].configured.wait()
    for value in range(8, 17):
        probe.publish(LIMIT_SET, str(value))
    await probe.wait_json(STATE, lambda d: d["charging_limit"] == 16)
    # the drag's start goes out at once (no added latency for a lone setpoint), the newest after the drag
    sent = [_limit(p) for p in sim.calls("SetChargingProfile")]
    assert 1 <= len(sent) <= 2 and sent[-1] == 16  # nine values, at most two profile writes


async def test_unchanged_limit_is_not_resent(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    probe.publish(LIMIT_SET, "16")
    await _accepted(probe)
    probe.publish(LIMIT_SET, "16")
    await probe.wait_json(EVENT, lambda d: d["status"] == "Unchanged")
    assert len(sim.calls("SetChargingProfile")) == 1


async def test_effective_limit_is_read_back(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    probe.publish(LIMIT_SET, "14")
    state = await probe.wait_json(STATE, lambda d: d["effective_limit"] == 14)
    assert state["charging_limit"] == 14
    await sim.wait_for_call("GetCompositeSchedule")


async def test_schedule_becomes_one_absolute_profile_with_periods(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    probe.publish("ocpp/wallbox-1/charging_schedule/set", json.dumps([{"start": 0, "limit": 16}, {"start": 3600, "limit": 8}]))
    event = await probe.wait_json(EVENT, lambda d: d["command"] == "charging_schedule")
    assert event["status"] == "Accepted" and event["limit"] == 16
    profile = _profile(await sim.wait_for_call("SetChargingProfile"))
    assert profile["chargingProfileKind"] == "Absolute"
    assert [(p["startPeriod"], p["limit"]) for p in profile["chargingSchedule"]["chargingSchedulePeriod"]] == [(0, 16), (3600, 8)]
    assert profile["chargingSchedule"]["startSchedule"].endswith("Z")


async def test_schedule_with_too_many_periods_is_refused(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    await sim.wait_for_call("GetConfiguration")
    entries = [{"start": 60 * i, "limit": 6 + i % 10} for i in range(30)]
    probe.publish("ocpp/wallbox-1/charging_schedule/set", json.dumps(entries))
    event = await probe.wait_json(EVENT, lambda d: d["command"] == "charging_schedule")
    assert event["status"] == "Invalid" and "at most 24" in event["reason"]
    assert sim.calls("SetChargingProfile") == []


async def test_clear_limit_removes_our_profile(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    probe.publish(LIMIT_SET, "10")
    await _accepted(probe)
    installed = _profile(sim.calls("SetChargingProfile")[0])["chargingProfileId"]
    probe.publish("ocpp/wallbox-1/charging_limit/clear", "clear")
    event = await probe.wait_json(EVENT, lambda d: d["command"] == "clear_charging_limit")
    assert event["status"] == "Accepted"
    assert (await sim.wait_for_call("ClearChargingProfile"))["id"] == installed
    await probe.wait_json(STATE, lambda d: d["charging_limit"] is None)


async def test_control_switches_and_buttons(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    transaction = sim.transaction_id
    probe.publish("ocpp/wallbox-1/charging/set", "OFF")
    assert (await sim.wait_for_call("RemoteStopTransaction"))["transactionId"] == transaction
    await probe.wait_json(STATE, lambda d: d["charging"] == "OFF" and d["stop_reason"] == "Remote")
    probe.publish("ocpp/wallbox-1/charging/set", "ON")
    assert (await sim.wait_for_call("RemoteStartTransaction"))["idTag"] == "ocpp-addon"
    await probe.wait_json(STATE, lambda d: d["charging"] == "ON")
    probe.publish("ocpp/wallbox-1/available/set", "OFF")
    assert (await sim.wait_for_call("ChangeAvailability"))["type"] == "Inoperative"
    await probe.wait_json(STATE, lambda d: d["available"] == "OFF")
    probe.publish("ocpp/wallbox-1/reset/set", "Soft")
    assert (await sim.wait_for_call("Reset"))["type"] == "Soft"
    probe.publish("ocpp/wallbox-1/unlock/set", "1")
    assert (await sim.wait_for_call("UnlockConnector"))["connectorId"] == 1
    probe.publish("ocpp/wallbox-1/refresh/set", "refresh")
    await sim.wait_for_call("TriggerMessage", lambda p: p["requestedMessage"] == "StatusNotification")
    refresh = await probe.wait_json(EVENT, lambda d: d["command"] == "refresh")
    assert refresh["status"] == "Accepted"
    probe.publish("ocpp/wallbox-1/reset/set", "sideways")
    bad = await probe.wait_json(EVENT, lambda d: d["command"] == "reset" and d["status"] == "Invalid")
    assert "Soft or Hard" in bad["reason"]


async def test_allow_list_authorization(service_factory, probe: MqttProbe) -> None:
    service = await service_factory(authorization={"mode": "allow_list", "id_tags": [
        {"id_tag": "SIMTAG"}, {"id_tag": "BLOCKED", "status": "Blocked"}, {"id_tag": "OLD", "expiry": "2020-01-01T00:00:00Z"}]})
    sim = await service.charger("wallbox-1")
    assert sim.transaction_id is not None  # SIMTAG is on the list
    from ocpp.v16 import call

    for tag, status in (("SIMTAG", "Accepted"), ("BLOCKED", "Blocked"), ("OLD", "Expired"), ("NOBODY", "Invalid")):
        response = await sim.call(call.Authorize(id_tag=tag))
        assert response.id_tag_info["status"] == status, tag


async def test_energy_register_never_goes_backwards(service: Service, probe: MqttProbe) -> None:
    from ocpp.v16 import call

    sim = await service.charger("wallbox-1")

    async def send(wh: str) -> None:
        await sim.call(call.MeterValues(connector_id=1, meter_value=[{"timestamp": "2026-01-01T00:00:00Z", "sampled_value": [{"value": wh}]}]))

    await send("10000")
    await probe.wait_json(STATE, lambda d: d["energy"] == 10)
    await send("0")  # firmware glitch
    await send("10100")
    state = await probe.wait_json(STATE, lambda d: d["energy"] == 10.1)
    assert all(json.loads(p)["energy"] in (None, 10, 10.1) for p in probe.received(STATE))
    assert state["energy"] == 10.1


async def test_meter_value_settings_are_applied_and_read_back(service_factory, probe: MqttProbe) -> None:
    service = await service_factory(meter_values={"sampled_data": ["Energy.Active.Import.Register", "Power.Active.Import", "Current.Offered"],
                                                   "sample_interval": 30})
    sim = await service.charger("wallbox-1")
    change = await sim.wait_for_call("ChangeConfiguration", lambda p: p["key"] == "MeterValuesSampledData")
    assert change["value"] == "Energy.Active.Import.Register,Power.Active.Import,Current.Offered"
    assert (await sim.wait_for_call("ChangeConfiguration", lambda p: p["key"] == "MeterValueSampleInterval"))["value"] == "30"
    assert sim.options.meter_interval == 30


async def test_two_connectors_get_their_own_entities(service: Service, probe: MqttProbe) -> None:
    from ocpp.v16 import call

    sim = await service.charger("wallbox-1", connectors=2)
    await sim.status(2, "Faulted", "GroundFailure")
    await sim.call(call.MeterValues(connector_id=2, meter_value=[{"timestamp": "2026-01-01T00:00:00Z", "sampled_value": [
        {"value": "3700", "measurand": "Power.Active.Import", "unit": "W"}]}]))
    config = await probe.wait_json("homeassistant/device/wallbox-1/config",
                                   lambda d: "connector_2_power" in d["components"] and "unlock_2" in d["components"])
    assert config["components"]["connector_2_status"]["name"] == "Connector 2 status"
    assert config["components"]["unlock_2"]["payload_press"] == "2"
    state = await probe.wait_json(STATE, lambda d: d.get("connector_2_status") == "Faulted" and "connector_2_power" in d)
    assert state["connector_2_error_code"] == "GroundFailure" and state["connector_2_power"] == 3700


@pytest.mark.parametrize("bad", [b"[]", b"{}", b"not json", b'[{"start": 0}]', b'[{"start": "tomorrow", "limit": 6}]', b'[{"start": 0, "limit": -1}]'])
async def test_bad_schedules_are_refused(service: Service, probe: MqttProbe, bad: bytes) -> None:
    sim = await service.charger("wallbox-1")
    probe.publish("ocpp/wallbox-1/charging_schedule/set", bad)
    event = await probe.wait_json(EVENT, lambda d: d["status"] == "Invalid")
    assert event["reason"]
    await service.wait_event(RESULT, "wallbox-1")
    assert sim.calls("SetChargingProfile") == []


async def test_a_lone_setpoint_is_not_delayed_by_the_debounce(service_factory, probe: MqttProbe) -> None:
    service = await service_factory(charging={"debounce": 30})
    sim = await service.charger("wallbox-1")
    probe.publish(LIMIT_SET, "10")
    await sim.wait_for_call("SetChargingProfile")
    assert service.app.hub.limit("wallbox-1")._debounce is not None  # sent while the 30 s quiet window is still open


async def test_session_limit_is_a_tx_profile_bound_to_the_running_transaction(service_factory, probe: MqttProbe) -> None:
    service = await service_factory(charging={"profile": {"purpose": "TxProfile"}})
    sim = await service.charger("wallbox-1")
    probe.publish(LIMIT_SET, "10")
    profile = _profile(request := await sim.wait_for_call("SetChargingProfile"))
    assert request["connectorId"] == 1
    assert profile["chargingProfilePurpose"] == "TxProfile" and profile["transactionId"] == sim.transaction_id
    await _accepted(probe)
    # after the session ends, the next one gets the limit again when it starts
    await sim.stop_transaction()
    mark = len(sim.received)
    probe.publish("ocpp/wallbox-1/charging/set", "ON")
    second = await sim.wait_for_call("SetChargingProfile", since=mark)
    active = service.app.hub.states["wallbox-1"].active_transaction()
    assert active is not None and _profile(second)["transactionId"] == active[1].transaction_id != profile["transactionId"]
