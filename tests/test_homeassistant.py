"""Pure discovery and payload builders (what Home Assistant receives)."""

from __future__ import annotations

import pytest

from ocpp_addon import config as cfg
from ocpp_addon.limits import Applied
from ocpp_addon.homeassistant import (
    bridge_discovery,
    device_discovery,
    discovery_topic,
    object_id,
    parse_limit_payload,
    parse_switch,
    state_payload,
)
from ocpp_addon.profiles import SetpointError
from ocpp_addon.state import ChargerState, Connector

CONFIG = cfg.validate({})


def charger(**readings: float) -> ChargerState:
    state = ChargerState(id="Garage.Box:1", vendor="ACME", model="W11", firmware="1.2", serial="S1", connected=True)
    state.readings.update(readings)
    state.connectors[1] = Connector(status="Charging", error_code="NoError", transaction_id=7)
    return state


def test_ids_and_topics_are_safe_for_home_assistant() -> None:
    assert object_id("Garage.Box:1") == "garage_box_1"
    topic = discovery_topic("homeassistant", "Garage.Box:1")
    assert topic.startswith("homeassistant/device/Garage_Box_1_") and topic.endswith("/config")
    assert discovery_topic("homeassistant", "Garage_Box_1") != topic  # no collision after slugging
    assert discovery_topic("homeassistant", "wallbox-1") == "homeassistant/device/wallbox-1/config"


def test_device_discovery_payload() -> None:
    payload = device_discovery(charger(), CONFIG)
    assert payload["device"]["identifiers"] == ["ocpp_Garage.Box:1"] and payload["device"]["via_device"] == "ocpp_bridge"
    assert payload["origin"]["name"] == "ocpp_addon"
    comps = payload["components"]
    assert all(c["unique_id"] == f"ocpp_Garage.Box:1_{key}" for key, c in comps.items() if key != "unlock")
    assert all(c["qos"] == 1 for c in comps.values())
    assert comps["energy"]["state_class"] == "total_increasing" and comps["energy"]["unit_of_measurement"] == "kWh"
    assert comps["charging_limit"]["default_entity_id"] == "number.garage_box_1_charging_limit"
    assert comps["charging"]["payload_on"] == "ON" and comps["reset"]["payload_press"] == "Soft"
    assert comps["clear_limit"]["command_topic"] == "ocpp/Garage.Box:1/charging_limit/clear"
    assert "current_l2" not in comps  # per-phase entities only once reported
    assert "current_l2" in device_discovery(charger(current_l2=16.0), CONFIG)["components"]
    assert "retain" not in comps["charging_limit"]


def test_watt_slider_and_multi_instance() -> None:
    config = cfg.validate({"charging": {"unit": "W"}, "instance_id": "b"})
    payload = device_discovery(charger(), config)
    limit = payload["components"]["charging_limit"]
    assert (limit["unit_of_measurement"], limit["device_class"], limit["max"], limit["retain"]) == ("W", "power", 22000, True)
    assert payload["availability"][0] == {"topic": "ocpp/bridge/b/state"} and payload["device"]["via_device"] == "ocpp_bridge_b"
    assert bridge_discovery(config)["device"]["name"] == "OCPP bridge b"


def test_state_payload_has_every_announced_key_and_the_accepted_limit_in_slider_units() -> None:
    state = charger(power=7360.0, energy=12.5)
    state.charging_limit, state.charging_limit_unit = 11040.0, "W"
    state.applied = Applied(11040.0, "W", 230.0, 3)  # what the charger accepted: shown in the slider's unit
    payload = state_payload(state, CONFIG)
    announced = set(device_discovery(state, CONFIG)["components"])
    sensors = {k for k in announced if k not in ("charging_limit", "charging", "available", "reset", "unlock", "refresh", "clear_limit")}
    assert sensors <= set(payload)
    assert payload["charging_limit"] == 16 and payload["charging_limit_unit"] == "A"
    assert (payload["status"], payload["transaction_id"], payload["charging"]) == ("Charging", 7, "ON")


@pytest.mark.parametrize(("raw", "expected"), [
    (b"16", (16.0, "A")), (b" 16.5 ", (16.5, "A")), (b'{"limit": 7400, "unit": "W"}', (7400.0, "W")),
    (b'{"limit": "10"}', (10.0, "A")), (b"0", (0.0, "A")),
])
def test_limit_payloads(raw: bytes, expected: tuple[float, str]) -> None:
    assert parse_limit_payload(raw, "A") == expected


@pytest.mark.parametrize("raw", [b"", b"x", b"nan", b"inf", b'{"limit": true}', b'{"limit": 1, "unit": "mA"}', b"\xff", b"[1]", b"9" * 300])
def test_bad_limit_payloads(raw: bytes) -> None:
    with pytest.raises(SetpointError):
        parse_limit_payload(raw, "A")


def test_switch_payloads() -> None:
    assert parse_switch(b"ON") and parse_switch(b"true") and not parse_switch(b"off")
    with pytest.raises(SetpointError):
        parse_switch(b"maybe")
