"""End to end: simulated charger -> service -> real mosquitto -> (Home Assistant's side of) MQTT, and back."""

from __future__ import annotations

import asyncio
import json

from ocpp_addon.hub import DISCONNECTED, RESULT

from .conftest import MqttProbe, Service

DISCOVERY = "homeassistant/device/wallbox-1/config"
STATE = "ocpp/wallbox-1/state"
EVENT = "ocpp/wallbox-1/event"
LIMIT_SET = "ocpp/wallbox-1/charging_limit/set"


def _limit(payload: dict) -> float:
    return payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"]


async def test_discovery_announces_device_sensors_and_slider(service: Service, probe: MqttProbe) -> None:
    await service.charger("wallbox-1", vendor="ACME", model="Wallbox 11", firmware="2.3.4", serial="SN-77")
    config = await probe.wait_json(DISCOVERY, lambda d: d["device"].get("manufacturer") == "ACME")
    assert config["device"] == {
        "identifiers": ["ocpp_wallbox-1"], "name": "wallbox-1", "via_device": "ocpp_bridge",
        "manufacturer": "ACME", "model": "Wallbox 11", "sw_version": "2.3.4", "serial_number": "SN-77",
    }
    assert config["origin"]["name"] == "ocpp_addon"
    assert config["availability"] == [{"topic": "ocpp/bridge/state"}, {"topic": "ocpp/wallbox-1/availability"}]
    assert config["availability_mode"] == "all"
    assert config["state_topic"] == STATE
    cmps = config["components"]
    assert {"status", "error_code", "power", "energy", "current", "voltage", "soc", "temperature",
            "current_offered", "last_heartbeat", "charging_limit"} <= set(cmps)
    assert cmps["power"].items() >= {"platform": "sensor", "device_class": "power", "unit_of_measurement": "W", "state_class": "measurement"}.items()
    assert cmps["energy"]["device_class"] == "energy" and cmps["energy"]["state_class"] == "total_increasing"
    assert cmps["energy"]["unit_of_measurement"] == "kWh"
    assert cmps["last_heartbeat"]["device_class"] == "timestamp" and cmps["last_heartbeat"]["entity_category"] == "diagnostic"
    limit = cmps["charging_limit"]
    assert limit["platform"] == "number" and limit["mode"] == "slider" and "entity_category" not in limit
    assert limit["command_topic"] == LIMIT_SET
    assert (limit["min"], limit["max"], limit["step"], limit["unit_of_measurement"], limit["device_class"]) == (0, 32, 1, "A", "current")
    assert len({c["unique_id"] for c in cmps.values()}) == len(cmps)
    bridge = json.loads(await probe.wait_for("homeassistant/device/ocpp_bridge/config"))
    assert bridge["device"]["identifiers"] == ["ocpp_bridge"]
    assert await probe.wait_for("ocpp/wallbox-1/availability", lambda p: p == b"online")
    assert await probe.wait_for("ocpp/bridge/state", lambda p: p == b"online")


async def test_meter_values_reach_the_state_topic(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    await sim.send_meter_values()
    state = await probe.wait_json(STATE, lambda d: d["energy"] is not None)
    assert state["energy"] == round(round(sim.energy_wh) / 1000, 6)
    assert state["power"] == round(sim.power(), 1)
    assert state["current_l1"] == 32.0 and state["soc"] == 40.0 and state["status"] == "Charging"
    # per-phase sensors are announced once reported
    config = await probe.wait_json(DISCOVERY, lambda d: "current_l3" in d["components"])
    assert config["components"]["voltage_l2"]["unit_of_measurement"] == "V"


async def test_setpoint_is_sent_and_accepted_state_published(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    probe.publish(LIMIT_SET, "16")
    request = await sim.wait_for_call("SetChargingProfile")
    assert request["connectorId"] == 0
    profile = request["csChargingProfiles"]
    assert profile["chargingProfilePurpose"] == "TxDefaultProfile" and profile["chargingProfileKind"] == "Absolute"
    assert profile["stackLevel"] == 0 and profile["chargingSchedule"]["chargingRateUnit"] == "A"
    assert _limit(request) == 16
    state = await probe.wait_json(STATE, lambda d: d["charging_limit"] == 16)
    assert state["charging_limit_unit"] == "A"
    event = await probe.wait_json(EVENT, lambda d: d["status"] == "Accepted")
    assert event["command"] == "charging_limit" and event["limit"] == 16


async def test_json_setpoint_with_unit_and_stable_profile_id(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    probe.publish(LIMIT_SET, json.dumps({"limit": 11000, "unit": "W"}))
    first = await sim.wait_for_call("SetChargingProfile")
    assert first["csChargingProfiles"]["chargingSchedule"]["chargingRateUnit"] == "W"
    assert _limit(first) == 11000
    state = await probe.wait_json(STATE, lambda d: d["charging_limit"] is not None)
    assert abs(state["charging_limit"] - 11000 / (230 * 3)) < 0.01  # shown in the slider's unit
    probe.publish(LIMIT_SET, json.dumps({"limit": 10, "unit": "A"}))
    second = await sim.wait_for_call("SetChargingProfile", lambda p: _limit(p) == 10)
    # the same id replaces our profile on the charger instead of piling up profiles
    assert second["csChargingProfiles"]["chargingProfileId"] == first["csChargingProfiles"]["chargingProfileId"]


async def test_rejected_setpoint_keeps_previous_value_and_says_why(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    probe.publish(LIMIT_SET, "16")
    await probe.wait_json(STATE, lambda d: d["charging_limit"] == 16)
    sim.options.profile_status = "Rejected"
    mark = probe.mark()
    probe.publish(LIMIT_SET, "10")
    event = await probe.wait_json(EVENT, lambda d: d["status"] == "Rejected", since=mark)
    assert event["limit"] == 10
    assert service.app.hub.states["wallbox-1"].charging_limit == 16
    assert json.loads(probe.received(STATE)[-1])["charging_limit"] == 16


async def test_unanswered_setpoint_times_out_and_state_stays(service_factory, probe: MqttProbe) -> None:
    service = await service_factory(ocpp={"response_timeout": 1})
    await service.charger("wallbox-1", profile_status="ignore")
    probe.publish(LIMIT_SET, "12")
    event = await probe.wait_json(EVENT, lambda d: d["status"] == "Timeout")
    assert event["limit"] == 12 and "no answer" in event["reason"]
    assert service.app.hub.states["wallbox-1"].charging_limit is None


async def test_offline_setpoint_is_kept_and_sent_on_reconnect(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    mark = len(service.events)
    await sim._connection.close()
    await service.wait_event(DISCONNECTED, "wallbox-1", since=mark)
    assert await probe.wait_for("ocpp/wallbox-1/availability", lambda p: p == b"offline")
    probe.publish(LIMIT_SET, "20")
    queued = await probe.wait_json(EVENT, lambda d: d["status"] == "Queued")
    assert queued["limit"] == 20
    again = await service.charger("wallbox-1")
    request = await again.wait_for_call("SetChargingProfile")
    assert _limit(request) == 20
    await probe.wait_json(STATE, lambda d: d["charging_limit"] == 20)


async def test_setpoint_survives_a_service_restart(service_factory, probe: MqttProbe) -> None:
    first = await service_factory()
    sim = await first.charger("wallbox-1")
    await sim._connection.close()
    await first.wait_event(DISCONNECTED, "wallbox-1")
    probe.publish(LIMIT_SET, "14")
    await probe.wait_json(EVENT, lambda d: d["status"] == "Queued")
    await first.stop()
    second = await service_factory(mqtt={"client_id": "second-run"}, data_dir=first.config["data_dir"])
    again = await second.charger("wallbox-1")
    assert _limit(await again.wait_for_call("SetChargingProfile")) == 14


async def test_newest_setpoint_wins_while_one_is_in_flight(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    for value in ("8", "9", "10", "11", "12"):
        probe.publish(LIMIT_SET, value)
    await probe.wait_json(STATE, lambda d: d["charging_limit"] == 12)
    sent = [_limit(p) for p in sim.calls("SetChargingProfile")]
    assert sent[-1] == 12 and len(sent) <= 5


async def test_charger_gone_makes_entities_unavailable(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    assert await probe.wait_for("ocpp/wallbox-1/availability", lambda p: p == b"online")
    mark = probe.mark()
    sim._connection.transport.abort() if hasattr(sim._connection, "transport") else await sim._connection.close()
    assert await probe.wait_for("ocpp/wallbox-1/availability", lambda p: p == b"offline", since=mark)
    info = await probe.wait_json("ocpp/bridge/info", lambda d: d["connected_chargers"] == 0, since=mark)
    assert info["chargers"] == ["wallbox-1"]


async def test_home_assistant_birth_republishes_discovery(service: Service, probe: MqttProbe) -> None:
    await service.charger("wallbox-1")
    await probe.wait_for(DISCOVERY)
    mark = probe.mark()
    probe.publish("homeassistant/status", "online")
    await probe.wait_for(DISCOVERY, since=mark)
    await probe.wait_for(STATE, since=mark)


async def test_remove_clears_discovery(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    await probe.wait_for(DISCOVERY)
    await sim._connection.close()
    await service.wait_event(DISCONNECTED, "wallbox-1")
    mark = probe.mark()
    probe.publish("ocpp/wallbox-1/remove/set", "remove")
    assert await probe.wait_for(DISCOVERY, lambda p: p == b"", since=mark) == b""
    assert "wallbox-1" not in service.app.store.chargers


async def test_newer_connection_with_same_id_replaces_the_old(service: Service, probe: MqttProbe) -> None:
    old = await service.charger("wallbox-1")
    new = await service.charger("wallbox-1")
    await asyncio.wait_for(old._connection.wait_closed(), 10)
    assert old._connection.close_code == 1001
    probe.publish(LIMIT_SET, "7")
    assert _limit(await new.wait_for_call("SetChargingProfile")) == 7
    assert old.calls("SetChargingProfile") == []
    assert service.app.hub.states["wallbox-1"].connected


async def test_two_chargers_are_independent(service: Service, probe: MqttProbe) -> None:
    a = await service.charger("cp-a")
    b = await service.charger("cp-b", profile_status="Rejected")
    probe.publish("ocpp/cp-a/charging_limit/set", "10")
    probe.publish("ocpp/cp-b/charging_limit/set", "11")
    assert _limit(await a.wait_for_call("SetChargingProfile")) == 10
    assert _limit(await b.wait_for_call("SetChargingProfile")) == 11
    await probe.wait_json("ocpp/cp-a/event", lambda d: d["status"] == "Accepted")
    await probe.wait_json("ocpp/cp-b/event", lambda d: d["status"] == "Rejected")
    await service.wait_event(RESULT, "cp-b")
    assert service.app.hub.states["cp-a"].charging_limit == 10
    assert service.app.hub.states["cp-b"].charging_limit is None


async def test_commands_reach_the_charger_and_report_results(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    hub = service.app.hub
    result = await hub.command("wallbox-1", "trigger_message", requested_message="MeterValues")
    assert result["status"] == "Accepted"
    await sim.wait_for_call("TriggerMessage", lambda p: p["requestedMessage"] == "MeterValues")
    await probe.wait_json(STATE, lambda d: d["energy"] is not None)  # the triggered MeterValues arrived
    probe.publish(LIMIT_SET, "16")
    await probe.wait_json(STATE, lambda d: d["charging_limit"] == 16)
    schedule = await hub.command("wallbox-1", "get_composite_schedule", connector_id=1, duration=600)
    assert schedule["status"] == "Accepted"
    assert schedule["response"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 16
    assert (await hub.command("nobody", "reset"))["status"] == "UnknownCharger"
    assert (await hub.command("wallbox-1", "fly"))["status"] == "UnknownCommand"


async def test_a_rejected_setpoint_is_settled_and_not_resent_on_reconnect(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1", profile_status="Rejected")
    probe.publish(LIMIT_SET, "10")
    await probe.wait_json(EVENT, lambda d: d["status"] == "Rejected")
    await sim._connection.close()
    await service.wait_event(DISCONNECTED, "wallbox-1")
    again = await service.charger("wallbox-1")
    await again.wait_for_call("GetConfiguration")  # the service talked to it: a resend would have come first
    probe.publish("ocpp/wallbox-1/refresh/set", "x")
    await again.wait_for_call("TriggerMessage")
    assert again.calls("SetChargingProfile") == []
    assert service.app.store.chargers["wallbox-1"].get("requested_limit") is None
