"""An OCPP 2.0.1 station through the real service: negotiation, state on MQTT, the slider, commands.

The station is ocpp_addon.simulator_v201 (built on the ``ocpp`` library's 2.0.1 classes, which
validate both directions); the service, mosquitto and the WebSocket are real.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import websockets

from ocpp_addon.hub import READY
from ocpp_addon.simulator import SimOptions, connect as connect_16
from ocpp_addon.simulator_v201 import SimulatedStation, connect

from .conftest import TIMEOUT, MqttProbe, Service

STATE = "ocpp/station-1/state"
EVENT = "ocpp/station-1/event"


async def station(service: Service, station_id: str = "station-1", **options: Any) -> SimulatedStation:
    options.setdefault("meter_interval", 0)
    since = len(service.events)
    sim, task = await connect(service.url, station_id, SimOptions(**options))
    service.chargers.append((sim, task))  # type: ignore[arg-type]  # closed like 1.6 chargers at the end
    await service.wait_event(READY, station_id, since=since)
    await asyncio.wait_for(sim.booted.wait(), TIMEOUT)
    return sim


async def test_both_versions_side_by_side_on_one_port(service: Service, probe: MqttProbe) -> None:
    sim = await station(service)
    assert sim._connection.subprotocol == "ocpp2.0.1"
    old = await service.charger("wallbox-1")
    assert old._connection.subprotocol == "ocpp1.6"
    both = await websockets.connect(f"{service.url}/dual-1", subprotocols=["ocpp1.6", "ocpp2.0.1"])
    assert both.subprotocol == "ocpp2.0.1"  # the newer one, when offered
    await both.close()
    state = await probe.wait_json(STATE, lambda d: d.get("status") == "Preparing" or d.get("transaction_id"))
    assert state is not None
    config = await probe.wait_json("homeassistant/device/station-1/config", lambda d: d["device"].get("manufacturer") == "Simulated")
    assert config["device"]["model"] == "SimCharger 22" and "charging_limit" in config["components"]


async def test_a_station_can_be_held_to_1_6(service_factory: Any) -> None:
    service = await service_factory(ocpp={"charger_versions": {"dual-1": "1.6"}, "versions": ["2.0.1", "1.6"]})
    held = await websockets.connect(f"{service.url}/dual-1", subprotocols=["ocpp2.0.1", "ocpp1.6"])
    assert held.subprotocol == "ocpp1.6"
    await held.close()
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(f"{service.url}/dual-1", subprotocols=["ocpp2.0.1"])
    assert refused.value.response.status_code == 400


async def test_transaction_and_meter_values_reach_the_state_topic(service: Service, probe: MqttProbe) -> None:
    sim = await station(service, phases=1)
    started = await probe.wait_json(STATE, lambda d: d.get("transaction_id") == sim.transaction_id)
    assert started["status"] == "Charging" and started["id_tag"] == "SIMTAG"
    await sim.send_meter_values()
    state = await probe.wait_json(STATE, lambda d: d.get("power") is not None and d["power"] > 0)
    assert state["energy"] == pytest.approx(round(sim.energy_wh) / 1000)
    assert state["current"] == 32.0 and "current_l2" not in state
    assert state["soc"] == 40
    await sim.stop_transaction()
    ended = await probe.wait_json(STATE, lambda d: d.get("transaction_id") is None and d.get("stop_reason") == "Local")
    assert ended["status"] == "Finishing"  # ended, cable still in: until the station says Available
    await probe.wait_json(STATE, lambda d: d.get("status") == "Available" and d.get("stop_reason") == "Local")


async def test_the_slider_sends_a_2_0_1_profile_and_shows_what_was_accepted(service: Service, probe: MqttProbe) -> None:
    sim = await station(service)
    mark = len(sim.received)
    probe.publish("ocpp/station-1/charging_limit/set", "10")
    event = await probe.wait_json(EVENT, lambda d: d.get("command") == "charging_limit" and d.get("status") == "Accepted")
    request = await sim.wait_for_call("SetChargingProfile", since=mark)
    period = request["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]
    assert period["limit"] == 10 and request["chargingProfile"]["chargingSchedule"][0]["chargingRateUnit"] == "A"
    assert sim.limit_amps == 10 and event["limit"] == 10
    state = await probe.wait_json(STATE, lambda d: d.get("charging_limit") == 10)
    assert state["charging_limit_unit"] == "A"


async def test_capabilities_come_from_the_device_model(service: Service, probe: MqttProbe) -> None:
    sim = await station(service, allowed_units=("W",), connectors=2)
    await sim.wait_for_call("GetVariables")
    state = await probe.wait_json(STATE, lambda d: d.get("smart_charging") not in (None,))
    assert state["smart_charging"] in ("supported", "not supported") or "on connector" in state["smart_charging"]
    cp = service.app.hub.connected["station-1"]
    await asyncio.wait_for(cp.configured.wait(), TIMEOUT)
    assert cp.state.capabilities["allowed_units"] == ["W"] and cp.state.capabilities["phases"] == 3
    assert sim.calls("SetVariables") == []  # nothing configured, nothing written
    await probe.wait_json(STATE, lambda d: d.get("connector_2_status") == "Available")
    mark = len(sim.received)
    probe.publish("ocpp/station-1/charging_limit/set", "16")
    await probe.wait_json(EVENT, lambda d: d.get("command") == "charging_limit" and d.get("status") == "Accepted")
    request = await sim.wait_for_call("SetChargingProfile", since=mark)
    assert request["chargingProfile"]["chargingSchedule"][0]["chargingRateUnit"] == "W"


async def test_commands_speak_2_0_1(service: Service, probe: MqttProbe) -> None:
    sim = await station(service)
    for topic, payload, action in [("reset/set", "Soft", "Reset"), ("unlock/set", "1", "UnlockConnector"),
                                   ("refresh/set", "now", "TriggerMessage"), ("available/set", "OFF", "ChangeAvailability")]:
        mark = len(sim.received)
        probe.publish(f"ocpp/station-1/{topic}", payload)
        await sim.wait_for_call(action, since=mark)
    reset = [p for a, p in sim.received if a == "Reset"][-1]
    assert reset["type"] == "OnIdle"
    unavailable = await probe.wait_json(STATE, lambda d: d.get("available") == "OFF")
    assert unavailable["status"] == "Unavailable"
    mark = len(sim.received)
    probe.publish("ocpp/station-1/charging/set", "OFF")
    stop = await sim.wait_for_call("RequestStopTransaction", since=mark)
    assert stop["transactionId"] == sim.transaction_id or sim.transaction_id is None


async def test_a_1_6_action_from_a_2_0_1_station_is_not_implemented(service: Service) -> None:
    ws = await websockets.connect(f"{service.url}/raw-201", subprotocols=["ocpp2.0.1"])
    await ws.send(json.dumps([2, "m1", "StartTransaction", {"connectorId": 1, "idTag": "X", "meterStart": 0, "timestamp": "2026-12-07T12:00:00Z"}]))
    answer = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert answer[:3] == [4, "m1", "NotImplemented"]
    await ws.send(json.dumps([2, "m2", "NotifyEVChargingNeeds", {"evseId": 1, "chargingNeeds": {"requestedEnergyTransfer": "AC_three_phase"}}]))
    answer = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert answer[:3] == [4, "m2", "NotSupported"]
    await ws.send(json.dumps([2, "m3", "Heartbeat", {"extra": 1}]))
    answer = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert answer[:3] == [4, "m3", "FormatViolation"]  # the 2.0.1 spelling (1.6: FormationViolation)
    await ws.close()


async def test_a_1_6_charger_still_gets_1_6_spellings(service: Service) -> None:
    sim, task = await connect_16(service.url, "old-1", SimOptions(meter_interval=0))
    try:
        assert sim._connection.subprotocol == "ocpp1.6"
    finally:
        await sim._connection.close()
        task.cancel()


@pytest.mark.parametrize(("ocpp", "error"), [
    ({"versions": []}, "ocpp.versions = []: name at least one of 2.0.1, 1.6"),
    ({"versions": ["2.0"]}, "2.0"),
    ({"charger_versions": {"wb/1": "1.6"}}, "is not a charge point id"),
    ({"charger_versions": {"wb-1": "1.5"}}, "wb-1: OCPP version '1.5' is not one of 2.0.1, 1.6"),
    ({"charger_versions": [{"id": "wb-1"}]}, "entry 0: expected {id: <charge point id>, version: 1.6 or 2.0.1}"),
])
def test_version_settings_are_checked(ocpp: dict[str, Any], error: str) -> None:
    from ocpp_addon import config

    with pytest.raises(config.ConfigError) as raised:
        config.validate({"ocpp": ocpp})
    assert error in str(raised.value)


CORPUS = Path(__file__).parent / "data" / "charger-traces-201" / "frames.jsonl"


def corpus_calls() -> list[Any]:
    cases = []
    for number, line in enumerate(CORPUS.read_text(encoding="utf-8").splitlines(), 1):
        record = json.loads(line)
        frame = record["frame"] or record.get("reconstructed_frame")
        if record["direction"] == "cp->cs" and frame and frame[0] == 2:
            cases.append(pytest.param(frame, record["compliant"], id=f"{number}-{record['vendor']}-{record['action']}"))
    return cases


async def exchange(ws: Any, frame: list[Any]) -> list[Any]:
    """Send a CALL and return its answer; the service's own CALLs meanwhile are refused as a bare station would."""
    await ws.send(json.dumps(frame))
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if msg[0] == 2:
            await ws.send(json.dumps([4, msg[1], "NotSupported", "", {}]))
        elif msg[1] == frame[1]:
            return msg


@pytest.mark.parametrize(("frame", "compliant"), corpus_calls())
async def test_real_stations_frames_are_answered_and_the_connection_kept(service: Service, frame: list[Any], compliant: bool) -> None:
    ws = await websockets.connect(f"{service.url}/real-201", subprotocols=["ocpp2.0.1"])
    boot = await exchange(ws, [2, "b", "BootNotification", {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}}])
    assert boot[0] == 3 and boot[2]["status"] == "Accepted"
    answer = await exchange(ws, frame)
    # Every frame of the corpus passes the 2.0.1 schemas (the ones marked non-compliant break only the
    # RFC 3339 rule the library does not check): each gets a CALLRESULT.
    assert answer[0] == 3, answer
    if frame[2] == "TransactionEvent" and "idToken" in frame[3]:
        # idTokenInfo is required whenever the request carried an idToken, the empty NoAuthorization one too.
        assert "idTokenInfo" in answer[2], answer
    alive = await exchange(ws, [2, "h", "Heartbeat", {}])
    assert alive[0] == 3
    await ws.close()


async def test_a_start_button_transaction_is_accepted_under_an_allow_list(service_factory: Any) -> None:
    """Use case C02 (lorenzodonini/ocpp-go#223): a station started by a button sends idToken "" of type
    NoAuthorization. The CSMS SHALL answer idTokenInfo Accepted (C02.FR.02) whatever its allow list says:
    there is no one to look up, and an Invalid answer makes the station stop the session."""
    service = await service_factory(authorization={"mode": "allow_list", "id_tags": [{"id_tag": "CARD1"}]})
    ws = await websockets.connect(f"{service.url}/button-1", subprotocols=["ocpp2.0.1"])
    boot = await exchange(ws, [2, "b", "BootNotification", {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}}])
    assert boot[2]["status"] == "Accepted"
    started = {"eventType": "Started", "timestamp": "2023-09-11T02:55:05.407Z", "triggerReason": "CablePluggedIn", "seqNo": 0,
               "transactionInfo": {"transactionId": "318a67d6", "chargingState": "EVConnected"}, "evse": {"id": 1, "connectorId": 1},
               "idToken": {"idToken": "", "type": "NoAuthorization"}}
    answer = await exchange(ws, [2, "t1", "TransactionEvent", started])
    assert answer[0] == 3 and answer[2]["idTokenInfo"]["status"] == "Accepted"
    authorize = await exchange(ws, [2, "a1", "Authorize", {"idToken": {"idToken": "", "type": "NoAuthorization"}}])
    assert authorize[2]["idTokenInfo"]["status"] == "Accepted"
    # A real token still goes through the allow list.
    stranger = await exchange(ws, [2, "a2", "Authorize", {"idToken": {"idToken": "STRANGER", "type": "ISO14443"}}])
    assert stranger[2]["idTokenInfo"]["status"] == "Invalid"
    await ws.close()


async def test_sampling_is_set_where_it_differs_and_a_refused_list_is_narrowed(service_factory: Any) -> None:
    service = await service_factory(meter_values={"sample_interval": 15,
                                                  "sampled_data": ["Energy.Active.Import.Register", "Power.Active.Import", "RPM"]})
    sim = await station(service)
    cp = service.app.hub.connected["station-1"]
    await asyncio.wait_for(cp.configured.wait(), TIMEOUT)
    model = sim.device_model
    assert model[("SampledDataCtrlr", None, "TxUpdatedInterval")].value == "15"
    # RPM is not in this station's valuesList: the list is refused, then narrowed to what it accepts.
    assert model[("SampledDataCtrlr", None, "TxUpdatedMeasurands")].value == "Energy.Active.Import.Register,Power.Active.Import"
    assert cp.state.capabilities["meter_values_sampled_data"] == ["Energy.Active.Import.Register", "Power.Active.Import"]
    assert cp.state.capabilities["meter_value_sample_interval"] == 15


async def test_a_station_without_smart_charging_that_never_boots(service: Service, probe: MqttProbe) -> None:
    sim = await station(service, send_boot=False, profile_status="NotSupported")  # READY after ocpp.boot_wait
    cp = service.app.hub.connected["station-1"]
    await asyncio.wait_for(cp.configured.wait(), TIMEOUT)
    assert cp.state.capabilities["smart_charging"] is False
    mark = len(sim.received)
    probe.publish("ocpp/station-1/charging_limit/set", "10")
    event = await probe.wait_json(EVENT, lambda d: d.get("command") == "charging_limit" and d.get("status") not in ("Queued",))
    assert event["status"] != "Accepted" and "NotSupported" in json.dumps(event)
    assert len([a for a, _ in sim.received[mark:] if a == "SetChargingProfile"]) <= 1  # no ladder walk
    state = await probe.wait_json(STATE, lambda d: "charging_limit" in d)
    assert state["charging_limit"] is None  # nothing accepted, nothing shown


async def test_a_dc_station_is_known_from_its_device_model(service: Service, probe: MqttProbe) -> None:
    """SupplyPhases 0: DC, before any reading proves it: 4 A is sent as 4 A (an AC guess pauses it at 0 A: below
    the 6 A AC minimum). Its 400 V reading is then a DC voltage: 7000 W on a station that takes A only is
    7000 / 400 V = 17.5 A."""
    sim = await station(service, dc=True, voltage=400.0, phases=1, allowed_units=("A",), start_transaction=False)
    cp = service.app.hub.connected["station-1"]
    await asyncio.wait_for(cp.configured.wait(), TIMEOUT)
    assert cp.state.capabilities["dc"] is True and "voltage" not in cp.state.readings
    mark = len(sim.received)
    probe.publish("ocpp/station-1/charging_limit/set", "4")
    request = await sim.wait_for_call("SetChargingProfile", since=mark)
    assert request["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"] == 4
    await sim.start_transaction(1, "CablePluggedIn")
    await sim.send_meter_values()
    await probe.wait_json(STATE, lambda d: d.get("voltage") == 400.0)
    mark = len(sim.received)
    probe.publish("ocpp/station-1/charging_limit/set", json.dumps({"limit": 7000, "unit": "W"}))
    request = await sim.wait_for_call("SetChargingProfile", since=mark)
    schedule = request["chargingProfile"]["chargingSchedule"][0]
    assert (schedule["chargingRateUnit"], schedule["chargingSchedulePeriod"][0]["limit"]) == ("A", 17.5)
