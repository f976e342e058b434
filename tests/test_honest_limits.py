"""Issue 12: the slider shows what the charger accepted, on every kind of charger.

Each test is one of the issue's findings 1-7, against a real mosquitto and real WebSocket chargers
(the simulator with the quirks of a DC station, a single-phase wallbox, a charger without the
SmartCharging feature profile and a two-outlet charger).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import websockets

from ocpp_addon import hub
from ocpp_addon.hub import READY, Event

from .conftest import TIMEOUT, MqttProbe, Service

STATE = "ocpp/wallbox-1/state"
EVENT = "ocpp/wallbox-1/event"
LIMIT_SET = "ocpp/wallbox-1/charging_limit/set"
DISCOVERY = "homeassistant/device/wallbox-1/config"
BOOT_REFUSED = getattr(hub, "BOOT_REFUSED", "boot_refused")  # getattr: this file also runs against the code before issue 12


def _limit(payload: dict[str, Any]) -> float:
    return payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"]


def _rate_unit(payload: dict[str, Any]) -> str:
    return payload["csChargingProfiles"]["chargingSchedule"]["chargingRateUnit"]


async def _limit_result(probe: MqttProbe, since: int, command: str = "charging_limit") -> dict[str, Any]:
    return await probe.wait_json(EVENT, lambda d: d["command"] == command and d["status"] not in ("Queued", "Unchanged"), since=since)


async def _readings(sim: Any, probe: MqttProbe, key: str = "voltage") -> dict[str, Any]:
    """Let the charger report meter values, so the service learns its voltage and phases."""
    mark = probe.mark()
    await sim.send_meter_values()
    return await probe.wait_json(STATE, lambda d: d.get(key) is not None, since=mark)


# 1 ----------------------------------------------------------------------------------------------

async def test_1_the_slider_shows_what_was_sent_and_a_pause_shows_zero_with_the_reason(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1", allowed_units=("A",))
    await sim.wait_for_call("GetConfiguration")
    mark = probe.mark()
    probe.publish(LIMIT_SET, json.dumps({"limit": 7400, "unit": "W"}))
    assert (await _limit_result(probe, mark))["status"] == "Accepted"
    sent = sim.calls("SetChargingProfile")[-1]
    assert (_rate_unit(sent), _limit(sent)) == ("A", 10.7)
    state = await probe.wait_json(STATE, lambda d: d.get("requested_limit", 7400) == 7400 and d["charging_limit"] is not None, since=mark)
    assert state["charging_limit"] == 10.7  # not 10.725: exactly what the charger got
    assert state["requested_limit_unit"] == "W" and state.get("charging_limit_reason") is None

    mark = probe.mark()
    probe.publish(LIMIT_SET, "3")
    result = await _limit_result(probe, mark)
    assert result["status"] == "Accepted"
    assert _limit(sim.calls("SetChargingProfile")[-1]) == 0
    state = await probe.wait_json(STATE, lambda d: d.get("requested_limit", 3) == 3 and d["charging_limit"] != 10.7, since=mark)
    assert state["charging_limit"] == 0
    assert state["charging_limit_reason"] == "paused: below 6 A"


# 2 ----------------------------------------------------------------------------------------------

async def test_2_a_dc_charger_is_converted_with_its_own_voltage_and_has_no_minimum_current(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1", dc=True, voltage=400.0, max_current=125.0, allowed_units=("A",))
    await sim.wait_for_call("GetConfiguration")
    await _readings(sim, probe)
    mark = probe.mark()
    probe.publish(LIMIT_SET, json.dumps({"limit": 7000, "unit": "W"}))
    assert (await _limit_result(probe, mark))["status"] == "Accepted"
    assert _limit(sim.calls("SetChargingProfile")[-1]) == 17.5  # 7000 W / 400 V, not 5.8 A -> paused
    state = await probe.wait_json(STATE, lambda d: d.get("requested_limit") == 7000 and d["charging_limit"] is not None, since=mark)
    assert state["charging_limit"] == 17.5

    mark = probe.mark()
    probe.publish(LIMIT_SET, "5")  # below 6 A: a limit for an AC wallbox, not for a DC station
    assert (await _limit_result(probe, mark))["status"] == "Accepted"
    assert _limit(sim.calls("SetChargingProfile")[-1]) == 5
    state = await probe.wait_json(STATE, lambda d: d.get("requested_limit") == 5 and d["charging_limit"] != 17.5, since=mark)
    assert state["charging_limit"] == 5 and state.get("charging_limit_reason") is None


async def test_what_the_readings_prove_is_logged_once_not_per_sample(service: Service, probe: MqttProbe, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="ocpp_addon.charge_point")
    sim = await service.charger("wallbox-1", phases=1)
    await sim.wait_for_call("GetConfiguration")
    for _ in range(3):  # the simulator's voltage moves by up to 2 V each sample
        await _readings(sim, probe, "current")
    lines = [r for r in caplog.records if "its readings show" in r.getMessage()]
    assert len(lines) == 1 and "1-phase AC" in lines[0].getMessage()
    assert service.app.hub.states["wallbox-1"].supply is not None


async def test_2_a_single_phase_charger_gets_watts_for_one_phase(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1", phases=1, allowed_units=("W",))
    await sim.wait_for_call("GetConfiguration")
    state = await _readings(sim, probe)
    volts = state["voltage"]
    mark = probe.mark()
    probe.publish(LIMIT_SET, "16")
    assert (await _limit_result(probe, mark))["status"] == "Accepted"
    sent = sim.calls("SetChargingProfile")[-1]
    assert _rate_unit(sent) == "W"
    assert abs(_limit(sent) - 16 * volts) <= 0.1  # one phase, its measured voltage; not 11,040 W
    state = await probe.wait_json(STATE, lambda d: d.get("requested_limit") == 16 and d["charging_limit"] is not None, since=mark)
    assert abs(state["charging_limit"] - 16) < 0.01


# 3 ----------------------------------------------------------------------------------------------

async def test_3_a_charger_without_smart_charging_gets_no_profile_and_no_trigger(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1", feature_profiles="Core,FirmwareManagement")
    await sim.wait_for_call("GetConfiguration")
    await probe.wait_json(STATE, lambda d: d["capabilities"].get("smart_charging") is False)
    for value in ("16", "10"):
        mark = probe.mark()
        probe.publish(LIMIT_SET, value)
        result = await _limit_result(probe, mark)
        assert result["status"] == "NotSupported"
        assert "SmartCharging" in result["reason"]
    assert sim.calls("SetChargingProfile") == []

    mark = probe.mark()
    probe.publish("ocpp/wallbox-1/refresh/set", "refresh")
    result = await _limit_result(probe, mark, command="refresh")
    assert result["status"] == "NotSupported" and "RemoteTrigger" in result["reason"]
    assert sim.calls("TriggerMessage") == []


async def test_3_a_full_ladder_of_not_supported_is_learned_and_kept(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1", profile_status="NotSupported")
    await sim.wait_for_call("GetConfiguration")
    mark = probe.mark()
    probe.publish(LIMIT_SET, "16")
    assert (await _limit_result(probe, mark))["status"] == "NotSupported"
    walked = len(sim.calls("SetChargingProfile"))
    assert walked > 1
    assert service.app.store.chargers["wallbox-1"]["strategy"] == {"unsupported": True}
    for value in ("10", "12"):
        mark = probe.mark()
        probe.publish(LIMIT_SET, value)
        assert (await _limit_result(probe, mark))["status"] == "NotSupported"
    assert len(sim.calls("SetChargingProfile")) <= walked + 2  # at most one write per later setpoint


# 4 ----------------------------------------------------------------------------------------------

async def test_4_a_second_connector_is_announced_when_its_status_comes_before_meter_values(service: Service, probe: MqttProbe) -> None:
    await service.charger("wallbox-1", connectors=2)
    discovery = await probe.wait_json(DISCOVERY, lambda d: "connector_2_status" in d["components"])
    assert discovery["components"]["connector_2_status"]["value_template"] == "{{ value_json.connector_2_status }}"
    state = await probe.wait_json(STATE, lambda d: d.get("connector_2_status") == "Available")
    assert all(key in discovery["components"] for key in ("connector_1_status", "connector_2_error_code")), state


# 5 ----------------------------------------------------------------------------------------------

async def test_5_a_schedule_outside_the_range_is_invalid_and_never_sent(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    await sim.wait_for_call("GetConfiguration")
    mark = probe.mark()
    probe.publish("ocpp/wallbox-1/charging_schedule/set", json.dumps([{"start": 0, "limit": 500}]))
    result = await _limit_result(probe, mark, command="charging_schedule")
    assert result["status"] == "Invalid"
    assert "500" in result["reason"] and "32" in result["reason"]
    assert sim.calls("SetChargingProfile") == []


# 6 ----------------------------------------------------------------------------------------------

async def test_6_readings_of_a_stopped_transaction_are_not_shown_as_live(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    state = await _readings(sim, probe, "power")
    assert state["power"] > 1000 and state["current"] > 6
    mark = probe.mark()
    await sim.stop_transaction()
    await sim.status(1, "Available")
    state = await probe.wait_json(STATE, lambda d: d["status"] == "Available", since=mark)
    assert state["power"] == 0 and state["current"] == 0
    assert all(state.get(f"current_{p}") in (0, None) for p in ("l1", "l2", "l3"))
    assert state["energy"] is not None  # the register is a total, not a live reading: kept


# 7 ----------------------------------------------------------------------------------------------

async def test_7_a_charger_whose_boot_we_refused_is_not_commanded_and_not_shown_online(service: Service, probe: MqttProbe) -> None:
    service.app.hub.store.update_charger("wallbox-1", requested_limit=16.0, requested_unit="A")
    service.app.hub.state_for("wallbox-1").requested_limit = 16.0
    service.app.hub.state_for("wallbox-1").requested_unit = "A"
    since = len(service.events)
    ws = await websockets.connect(f"{service.url}/wallbox-1", subprotocols=["ocpp1.6"])
    try:
        await ws.send(json.dumps([2, "boot-1", "BootNotification", {"chargePointVendor": "Acme"}]))  # no model
        answer = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert answer[0] == 4 and answer[1] == "boot-1"

        def settled(e: Event) -> bool:
            return e.kind in (READY, BOOT_REFUSED) and e.charger_id == "wallbox-1"

        # boot_wait is 2 s in the tests: whichever comes first says what the service made of it
        async with service._event_arrived:
            await asyncio.wait_for(service._event_arrived.wait_for(lambda: any(settled(e) for e in service.events[since:])), TIMEOUT)
        event = next(e for e in service.events[since:] if settled(e))
        assert event.kind == BOOT_REFUSED
        await probe.wait_for("ocpp/wallbox-1/availability", lambda p: p == b"offline", since=0)
        assert probe.received("ocpp/wallbox-1/availability")[-1] == b"offline"
        # a Heartbeat is answered but does not make it a working charger
        await ws.send(json.dumps([2, "hb-1", "Heartbeat", {}]))
        frames = [json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))]
        assert frames[-1][:2] == [3, "hb-1"]
        assert not any(f[0] == 2 for f in frames)  # no GetConfiguration, no SetChargingProfile
        assert "wallbox-1" not in service.app.hub.connected or not service.app.hub.connected["wallbox-1"].ready.is_set()

        # a BootNotification we accept makes it a working charger after all
        mark = probe.mark()
        await ws.send(json.dumps([2, "boot-2", "BootNotification", {"chargePointVendor": "Acme", "chargePointModel": "X"}]))
        answer = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert answer[:2] == [3, "boot-2"] and answer[2]["status"] == "Accepted"
        await service.wait_event(READY, "wallbox-1", since=since)
        await probe.wait_for("ocpp/wallbox-1/availability", lambda p: p == b"online", since=mark)
    finally:
        await ws.close()


# The per-charger override --------------------------------------------------------------------------

async def test_a_per_charger_override_says_what_the_charger_cannot(service_factory: Any, probe: MqttProbe) -> None:
    """A single-phase charger that sends no meter values: only the override tells us its phases."""
    service = await service_factory(charging={"debounce": 0, "chargers": [{"id": "wallbox-1", "phases": 1, "voltage": 240}]})
    sim = await service.charger("wallbox-1", phases=1, allowed_units=("W",))
    await sim.wait_for_call("GetConfiguration")
    mark = probe.mark()
    probe.publish(LIMIT_SET, "10")
    result = await _limit_result(probe, mark)
    assert result["status"] == "Accepted" and "override" in result["electrical"]
    assert _limit(sim.calls("SetChargingProfile")[-1]) == 2400  # 10 A x 240 V x 1 phase
    state = await probe.wait_json(STATE, lambda d: d.get("requested_limit") == 10 and d["charging_limit"] is not None, since=mark)
    assert state["charging_limit"] == 10


async def test_what_the_readings_proved_survives_a_restart(broker: Any, probe: MqttProbe, tmp_path: Any) -> None:
    """After a restart, before the charger charges again, a setpoint is converted for the supply it proved, not the config's."""
    from .conftest import make_config

    first = Service(make_config(broker.port, tmp_path))
    await first.start()
    try:
        sim = await first.charger("wallbox-1", phases=1, allowed_units=("W",))
        await sim.wait_for_call("GetConfiguration")
        await _readings(sim, probe, "current")
        proved = first.app.hub.states["wallbox-1"].supply
        assert proved is not None and (proved.dc, proved.phases) == (False, 1)
    finally:
        await first.stop()
    stored = json.loads((tmp_path / "data" / "state.json").read_text())["chargers"]["wallbox-1"]["supply"]
    assert stored == {"dc": False, "phases": 1, "voltage": proved.voltage}
    second = Service(make_config(broker.port, tmp_path))
    await second.start()
    try:
        again = await second.charger("wallbox-1", phases=1, allowed_units=("W",))
        await again.wait_for_call("GetConfiguration")
        assert second.app.hub.states["wallbox-1"].readings == {}  # nothing measured in this run
        mark = probe.mark()
        probe.publish(LIMIT_SET, "16")
        result = await _limit_result(probe, mark)
        assert result["status"] == "Accepted" and "measured" in result["electrical"]
        assert abs(_limit(again.calls("SetChargingProfile")[-1]) - 16 * proved.voltage) <= 0.1  # one phase, not 11,040 W
    finally:
        await second.stop()


def test_per_charger_overrides_are_checked_and_errors_name_key_value_and_allowed() -> None:
    import pytest

    from ocpp_addon.config import ConfigError, validate

    config = validate({"charging": {"chargers": [{"id": "dc-1", "dc": True, "voltage": 800}]}})
    assert config["charging"]["chargers"] == [{"id": "dc-1", "dc": True, "voltage": 800.0}]
    assert validate({})["charging"]["chargers"] == []
    for bad, words in (
        ({"id": "wallbox-1", "phases": 4}, ("charging.chargers.0.phases", "4", "at most 3")),
        ({"id": "a/b"}, ("charging.chargers.0.id", "'a/b'", "[A-Za-z0-9._:-]")),
        ({"id": "wallbox-1", "volts": 230}, ("charging.chargers.0.volts", "allowed keys here")),
    ):
        with pytest.raises(ConfigError) as err:
            validate({"charging": {"chargers": [bad]}})
        assert all(w in str(err.value) for w in words), str(err.value)
    with pytest.raises(ConfigError, match=r"charging.chargers.1.id = 'x': given twice"):
        validate({"charging": {"chargers": [{"id": "x"}, {"id": "x"}]}})


# The entity table ----------------------------------------------------------------------------------

def _value_key(component: dict[str, Any]) -> str | None:
    import re

    match = re.fullmatch(r"\{\{ value_json\.(\w+) \}\}", component.get("value_template", ""))
    return match.group(1) if match else None


async def test_every_state_key_has_an_entity_and_every_entity_a_value(service: Service, probe: MqttProbe) -> None:
    """One table: the state JSON and discovery are generated from the same rows, on a two-outlet charger."""
    from ocpp_addon.entities import ATTRIBUTE_KEYS

    sim = await service.charger("wallbox-1", connectors=2, allowed_units=("A",))
    await sim.wait_for_call("GetConfiguration")
    await _readings(sim, probe, "current_l3")
    mark = probe.mark()
    probe.publish(LIMIT_SET, "3")  # a pause, so the limit note has a value too
    await _limit_result(probe, mark)
    state = await probe.wait_json(STATE, lambda d: d.get("charging_limit_reason") is not None, since=mark)
    # Discovery goes out before the state that needs it: the newest one so far is the one to check.
    components = json.loads(probe.received(DISCOVERY)[-1])["components"]
    assert "connector_2_status" in components and "current_l3" in components
    valued = {_value_key(c): key for key, c in components.items() if _value_key(c)}
    attributes = {key for key in ATTRIBUTE_KEYS}
    without_entity = sorted(k for k in state if k not in valued and k not in attributes)
    assert not without_entity, f"state keys with no entity: {without_entity}"
    buttons = {k for k, c in components.items() if c["platform"] == "button"}
    without_value = sorted(k for k, c in components.items() if k not in buttons and _value_key(c) not in state)
    assert not without_value, f"entities whose value is not in the state JSON: {without_value}"
