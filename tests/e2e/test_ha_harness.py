"""Proves the Home Assistant harness with a discovery message published by the test itself.

A real HA core (scripts/ha_venv.sh) and a real mosquitto, both on 127.0.0.1. The test plays the part
our service will play: device-based discovery with one sensor and one number, a retained state
topic, and a command topic it listens on.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Iterator

import paho.mqtt.client as mqtt
import pytest

from .ha import HomeAssistant, Mosquitto

pytestmark = [pytest.mark.ha_e2e, pytest.mark.timeout(900)]

DEVICE_ID = "test_dev"
DISCOVERY_TOPIC = f"homeassistant/device/{DEVICE_ID}/config"
STATE_TOPIC = f"{DEVICE_ID}/state"
COMMAND_TOPIC = f"{DEVICE_ID}/limit/set"
SENSOR_UID = f"{DEVICE_ID}_power"
NUMBER_UID = f"{DEVICE_ID}_limit"

DISCOVERY = {
    "dev": {
        "ids": [DEVICE_ID],
        "name": "Test Device",
        "mf": "ocpp_addon tests",
        "mdl": "harness probe",
        "sw": "0.0.1",
    },
    "o": {"name": "ocpp_addon e2e", "sw": "0.0.1", "url": "https://example.invalid/ocpp_addon"},
    "cmps": {
        "power": {
            "p": "sensor",
            "unique_id": SENSOR_UID,
            "name": "Power",
            "device_class": "power",
            "state_class": "measurement",
            "unit_of_measurement": "W",
            "state_topic": STATE_TOPIC,
            "value_template": "{{ value_json.power }}",
        },
        "limit": {
            "p": "number",
            "unique_id": NUMBER_UID,
            "name": "Charging limit",
            "device_class": "current",
            "unit_of_measurement": "A",
            "min": 6,
            "max": 32,
            "step": 1,
            "mode": "slider",
            "state_topic": STATE_TOPIC,
            "value_template": "{{ value_json.limit }}",
            "command_topic": COMMAND_TOPIC,
        },
    },
    "qos": 1,
}


class Probe:
    """A paho-mqtt client that records every message on the topics it subscribed to."""

    def __init__(self, broker: Mosquitto, name: str) -> None:
        self.messages: queue.Queue[tuple[str, str]] = queue.Queue()
        self._subscribed = threading.Event()
        self._connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"e2e-{name}-{time.time_ns()}")
        self.client.on_connect = lambda c, u, f, rc, p: self._connected.set()
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = lambda c, u, msg: self.messages.put((msg.topic, msg.payload.decode()))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._connected.wait(10), "probe could not connect to mosquitto"

    def subscribe(self, topic: str) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self._subscribed.wait(10), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published(), f"publish to {topic} not acknowledged"

    def expect(self, topic: str, timeout: float = 30) -> str:
        """The payload of the next message on ``topic`` (others are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no message on {topic} within {timeout} s")
            try:
                got_topic, payload = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            if got_topic == topic:
                return payload

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def probe(e2e_broker: Mosquitto) -> Iterator[Probe]:
    p = Probe(e2e_broker, "probe")
    try:
        yield p
    finally:
        p.close()


def mqtt_problems(ha: HomeAssistant) -> list[str]:
    return [f"{r['level']} [{r['logger']}] {r['message']}"
            for r in ha.log_records("WARNING", "homeassistant.components.mqtt")]


def _entity_ids(ha: HomeAssistant) -> tuple[str, str]:
    def both():
        ids = ha.entity_id_for(SENSOR_UID), ha.entity_id_for(NUMBER_UID)
        return ids if all(ids) else None

    return ha.wait_for(both, timeout=60, what=f"entities {SENSOR_UID} and {NUMBER_UID} in the registry")


def test_device_discovery_states_registries_and_command(home_assistant: HomeAssistant, probe: Probe) -> None:
    ha = home_assistant
    probe.subscribe(COMMAND_TOPIC)
    probe.publish(STATE_TOPIC, json.dumps({"power": 1234.5, "limit": 16}), retain=True)
    probe.publish(DISCOVERY_TOPIC, json.dumps(DISCOVERY), retain=True)

    sensor_id, number_id = _entity_ids(ha)
    assert sensor_id.startswith("sensor.") and number_id.startswith("number.")

    # State machine (REST /api/states).
    sensor = ha.wait_for_state(sensor_id, lambda s: s is not None and s["state"] == "1234.5")
    assert sensor["attributes"]["device_class"] == "power"
    assert sensor["attributes"]["unit_of_measurement"] == "W"
    assert sensor["attributes"]["state_class"] == "measurement"
    number = ha.wait_for_state(number_id, lambda s: s is not None and s["state"] not in ("unknown", "unavailable"))
    assert float(number["state"]) == 16
    attrs = number["attributes"]
    assert attrs["device_class"] == "current"
    assert attrs["unit_of_measurement"] == "A"
    assert (attrs["min"], attrs["max"], attrs["step"], attrs["mode"]) == (6, 32, 1, "slider")
    assert {s["entity_id"] for s in ha.states()} >= {sensor_id, number_id}

    # Registries (websocket API).
    devices = [d for d in ha.device_registry() if ["mqtt", DEVICE_ID] in d["identifiers"]]
    assert len(devices) == 1, devices
    device = devices[0]
    assert (device["name"], device["manufacturer"], device["model"], device["sw_version"]) == (
        "Test Device", "ocpp_addon tests", "harness probe", "0.0.1")
    compact = {e["entity_id"]: e for e in ha.entity_registry()}
    for entity_id, device_class in ((sensor_id, "power"), (number_id, "current")):
        assert compact[entity_id]["device_id"] == device["id"]
        assert compact[entity_id]["platform"] == "mqtt"
        full = ha.entity_registry_entry(entity_id)
        assert full["original_device_class"] == device_class
        assert full["entity_category"] is None
    assert ha.entity_registry_entry(sensor_id)["capabilities"] == {"state_class": "measurement"}

    # A service call on the number publishes on its command topic; the state follows only the echo.
    ha.call_service("number", "set_value", {"entity_id": number_id, "value": 20})
    assert float(probe.expect(COMMAND_TOPIC)) == 20
    assert float(ha.state(number_id)["state"]) == 16
    probe.publish(STATE_TOPIC, json.dumps({"power": 0, "limit": 20}), retain=True)
    ha.wait_for_state(number_id, lambda s: s is not None and s["state"] not in ("unknown", "unavailable")
                      and float(s["state"]) == 20)

    # HA read the device discovery payload and had nothing to complain about.
    assert DISCOVERY_TOPIC in ha.log_text(), "HA's debug log never mentions the discovery topic"
    assert mqtt_problems(ha) == []


def test_invalid_discovery_is_visible_in_the_log(home_assistant: HomeAssistant, probe: Probe) -> None:
    """The 'no MQTT discovery error' check above can see errors: a number without command_topic."""
    ha = home_assistant
    topic = "homeassistant/device/bad_dev/config"
    bad = {
        "dev": {"ids": ["bad_dev"], "name": "Bad Device"},
        "o": {"name": "ocpp_addon e2e"},
        "cmps": {"limit": {"p": "number", "unique_id": "bad_dev_limit", "state_topic": "bad_dev/state"}},
    }
    before = len(mqtt_problems(ha))
    probe.publish(topic, json.dumps(bad), retain=True)
    try:
        problems = ha.wait_for(lambda: mqtt_problems(ha)[before:], timeout=30,
                               what="HA to log the invalid discovery payload")
        assert any("command_topic" in p for p in problems), problems
        assert ha.entity_id_for("bad_dev_limit") is None
    finally:
        probe.publish(topic, b"", retain=True)  # remove the retained config again


def test_restart_keeps_auth_and_rediscovers(home_assistant: HomeAssistant, probe: Probe) -> None:
    ha = home_assistant
    # Self-contained: (re)publish the retained config and state (a no-op after the first test).
    probe.publish(STATE_TOPIC, json.dumps({"power": 0, "limit": 20}), retain=True)
    probe.publish(DISCOVERY_TOPIC, json.dumps(DISCOVERY), retain=True)
    sensor_id, number_id = _entity_ids(ha)
    ha.wait_for_state(sensor_id, lambda s: s is not None and s["state"] == "0")
    probe.subscribe("homeassistant/status")
    starts = len(ha.startup_seconds)
    ha.restart()
    assert len(ha.startup_seconds) == starts + 1
    # HA says goodbye on a graceful stop and publishes its birth message after reconnecting
    # (about 5 s after discovery subscriptions go quiet); retained discovery and state come back.
    assert probe.expect("homeassistant/status", timeout=30) == "offline"
    assert probe.expect("homeassistant/status", timeout=90) == "online"
    ha.wait_for_state(sensor_id, lambda s: s is not None and s["state"] == "0")
    ha.wait_for_state(number_id, lambda s: s is not None and s["state"] not in ("unknown", "unavailable")
                      and float(s["state"]) == 20)
    assert ha.entity_id_for(SENSOR_UID) == sensor_id
    assert ha.config_entries("mqtt")[0]["state"] == "loaded"
    # 2026.x keeps the HTTP settings in storage: ours (loopback, our port) are confirmed, with no revert to
    # HA's defaults (every interface, port 8123) pending
    http = ha.http_config()
    if http is not None:
        assert (http["pending"], http["revert_at"]) == (None, None), http
        assert (http["stable"]["server_host"], http["stable"]["server_port"]) == (["127.0.0.1"], ha.port), http
    problems = [f"{r['level']} [{r['logger']}] {r['message']}"
                for r in ha.log_records("WARNING", "homeassistant.components.mqtt", since_start=True)]
    assert problems == []
