"""BEMcom contract: the service as a BEMcom OCPP connector, against a real mosquitto.

The tests play the BEMcom API's part (the datapoint_map published retained with
QoS 2, value messages on the mapped topics) and check what a BEMcom installation
would see, payload field by field (reference/bemcom.md), with a simulated charger
on the other side.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from ocpp.v16 import call as ocpp_call

from ocpp_addon import __version__, bemcom, config as cfg
from ocpp_addon.bemcom import PlanItem, controller_value, limit_timeline
from ocpp_addon.hub import UPDATED
from ocpp_addon.simulator import SimOptions, connect

from .conftest import TIMEOUT, MqttProbe, Service, free_port
from .test_bemcom_dropin import Charger, Mqtt5Probe

CN = "ocpp-connector"
MAP = f"{CN}/datapoint_map"
AVAILABLE = f"{CN}/available_datapoints"
LOGS = f"{CN}/logs"
RAW = f"{CN}/raw_message_to_db"
HEARTBEAT = f"{CN}/heartbeat"
LIMIT_KEY = "wallbox-1__execute_send_charging_profile__"
LIMIT_TOPIC = f"{CN}/messages/7/value"
OCPP_PROFILE = {
    "chargingProfileId": 0, "stackLevel": 5, "chargingProfileKind": "Absolute", "chargingProfilePurpose": "TxDefaultProfile",
    "chargingSchedule": {"startSchedule": "now", "chargingRateUnit": "W", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 5000.1}]},
}
ALL_COMMANDS = list(cfg.BEMCOM_COMMANDS)


@pytest.fixture(autouse=True)
def info_logs(caplog: pytest.LogCaptureFixture) -> None:
    """INFO records reach the handlers (as with the CLI's logging setup), so cn/logs carries them."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.WARNING, logger="ocpp")


async def start(service_factory: Callable[..., Any], profile: dict[str, Any] | None = None, **bemcom_options: Any) -> Service:
    options = {"enabled": True, "connector_name": CN, "actuators": ALL_COMMANDS, **bemcom_options}
    sections: dict[str, Any] = {"bemcom": options}
    if profile is not None:
        sections["charging"] = {"profile": cfg.profile_from_ocpp(profile)}
    return await service_factory(**sections)


async def install_map(probe: MqttProbe, sensor: dict[str, str], actuator: dict[str, str]) -> None:
    """Publish a datapoint_map as the BEMcom API does, and wait until the connector has installed it."""
    mark = probe.mark()
    probe.publish(MAP, json.dumps({"sensor": sensor, "actuator": actuator}), retain=True, qos=2)
    expected = f"BEMcom: datapoint_map with {len(sensor)} sensor and {len(actuator)} actuator datapoints"
    await probe.wait_json(LOGS, lambda d: d["msg"] == expected, since=mark)


def value_message(value: Any) -> str:
    return json.dumps({"value": value, "timestamp": int(time.time() * 1000)})


def limit_of(request: dict[str, Any]) -> float:
    return request["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"]


def limits(sim: Any) -> list[float]:
    return [limit_of(p) for p in sim.calls("SetChargingProfile")]


async def retained_payload(probe: MqttProbe, topic: str) -> bytes:
    """What the broker keeps on ``topic`` for a client that subscribes now."""
    late = MqttProbe(probe.client._port, asyncio.get_running_loop())
    try:
        await late.subscribe(topic)
        return await late.wait_for(topic)
    finally:
        late.close()


async def wait_live(probe: MqttProbe, topic: str, payload: bytes) -> None:
    """Wait for a message published after ``probe`` subscribed (retain flag clear), not a retained copy."""
    def seen() -> bool:
        return any(t == topic and p == payload and not r for t, p, r in probe.messages)

    async with probe._arrived:
        await asyncio.wait_for(probe._arrived.wait_for(seen), TIMEOUT)


def is_ms(value: Any) -> bool:
    return isinstance(value, int) and abs(value - time.time() * 1000) < 60_000


# -- pure parts -------------------------------------------------------------------------------


def test_flatten_joins_nested_keys_and_keeps_lists_as_leaves() -> None:
    nested = {"device_1": {"sensor_1": "test", "inner": {"x": 1}, "empty": {}}, "list": [1, {"a": 2}], "top": None}
    assert bemcom.flatten(nested) == {"device_1__sensor_1": "test", "device_1__inner__x": 1, "list": [1, {"a": 2}], "top": None}


def test_meter_values_give_the_original_measurand_keys_with_values_as_sent() -> None:
    meter_value = [
        {"timestamp": "2024-05-01T10:00:10Z", "sampledValue": [
            {"value": "7360.5", "measurand": "Power.Active.Import", "unit": "W"},
            {"value": "16.0", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
            {"value": " 230.1", "measurand": "Voltage", "phase": "L2-N", "unit": "V"},
            {"value": "12345"},  # OCPP defaults: Energy.Active.Import.Register in Wh
            {"value": 49.9, "measurand": "Frequency"},  # no unit in OCPP for it: no unit level
            {"measurand": "SoC", "unit": "Percent"},  # no value: skipped
        ]},
        {"timestamp": "2024-05-01T10:00:00Z", "sampledValue": [{"value": "1", "measurand": "Power.Active.Import", "unit": "W"}]},
    ]
    assert bemcom.meter_datapoints(meter_value) == {
        "Power.Active.Import__W": "7360.5",  # the newest entry, although listed first
        "Current.Import__L1__A": "16.0",
        "Voltage__L2-N__V": " 230.1",
        "Energy.Active.Import.Register__Wh": "12345",
        "Frequency": 49.9,
    }
    assert bemcom.meter_datapoints({"sampledValue": [{"value": "2", "measurand": "Power.Active.Import", "unit": "kW"}]}) == {
        "Power.Active.Import__kW": "2"}  # a single object instead of a list (seen in the field)
    assert bemcom.meter_datapoints("junk") == {}


def test_charger_calls_give_the_original_sensor_messages() -> None:
    boot = {"chargePointVendor": "ACME", "chargePointModel": "Box", "firmwareVersion": "1.2"}
    assert bemcom.sensor_message("BootNotification", boot) == {
        "BootNotification": {"charge_point_vendor": "ACME", "charge_point_model": "Box", "firmware_version": "1.2"}}
    status = {"connectorId": 1, "errorCode": "NoError", "status": "Charging"}
    assert bemcom.flatten(bemcom.sensor_message("StatusNotification", status)) == {
        "StatusNotification__connector_id": 1, "StatusNotification__error_code": "NoError", "StatusNotification__status": "Charging"}
    assert bemcom.sensor_message("Heartbeat", {}) == {"Heartbeat": "alive"}
    assert bemcom.sensor_message("Authorize", {"idTag": "X"}) == {}


def test_command_results_become_datapoints_named_after_the_ocpp_action() -> None:
    composite = {"command": "get_composite_schedule", "status": "Accepted", "connector_id": 1, "response": {
        "connectorId": 1, "scheduleStart": "2024-05-01T10:00:00Z",
        "chargingSchedule": {"chargingRateUnit": "W", "duration": 600, "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11000}]}}}
    assert bemcom.flatten(bemcom.result_message(composite)) == {
        "CompositeSchedule__status": "Accepted",
        "CompositeSchedule__connector_id": 1,
        "CompositeSchedule__schedule_start": "2024-05-01T10:00:00Z",
        "CompositeSchedule__charging_schedule__charging_rate_unit": "W",
        "CompositeSchedule__charging_schedule__duration": 600,
        "CompositeSchedule__charging_schedule__charging_schedule_period": [{"start_period": 0, "limit": 11000}],
    }
    assert bemcom.result_message({"command": "unlock_connector", "status": "Unlocked", "connector_id": 1}) == {
        "UnlockConnector": {"status": "Unlocked", "connector_id": 1}}
    assert bemcom.result_message({"command": "charging_limit", "status": "Accepted", "limit": 11000.0, "unit": "W"}) == {
        "SetChargingProfile": {"status": "Accepted", "limit": 11000.0, "unit": "W"}}
    assert bemcom.result_message({"command": "reset", "status": "Accepted"}) == {}


@pytest.mark.parametrize(
    ("command", "value", "expected"),
    [
        ("execute_send_charging_profile", 11000, ("charging_limit", {"limit": 11000.0, "unit": "W"})),
        ("execute_send_charging_profile", "6900.5", ("charging_limit", {"limit": 6900.5, "unit": "W"})),
        ("execute_trigger_message", 0, ("trigger_message", {"requested_message": "BootNotification", "connector_id": None})),
        ("execute_trigger_message", "4", ("trigger_message", {"requested_message": "MeterValues", "connector_id": 1})),
        ("execute_trigger_message", 5, ("trigger_message", {"requested_message": "StatusNotification", "connector_id": 1})),
        ("execute_trigger_message", "Heartbeat", ("trigger_message", {"requested_message": "Heartbeat", "connector_id": None})),
        ("execute_unlock_connector", "0", ("unlock_connector", {"connector_id": 1})),
        ("execute_unlock_connector", 2, ("unlock_connector", {"connector_id": 2})),
        ("execute_get_composite_schedule", "0", ("get_composite_schedule", {"connector_id": 1, "duration": 3600, "unit": "W"})),
        ("execute_get_composite_schedule", 600, ("get_composite_schedule", {"connector_id": 1, "duration": 600, "unit": "W"})),
    ],
)
def test_actuator_values_become_hub_commands(command: str, value: Any, expected: tuple[str, dict[str, Any]]) -> None:
    assert bemcom.command_call(command, value, "W") == expected


@pytest.mark.parametrize(
    ("command", "value", "message"),
    [
        ("execute_send_charging_profile", "eleven", "is not a number"),
        ("execute_send_charging_profile", None, "is not a number"),
        ("execute_send_charging_profile", True, "is not a number"),
        ("execute_trigger_message", 6, "0..5"),
        ("execute_trigger_message", 1.5, "0..5"),
        ("execute_fly", 1, "unknown command"),
    ],
)
def test_actuator_values_a_command_cannot_take_are_refused(command: str, value: Any, message: str) -> None:
    with pytest.raises(bemcom.BemcomError, match=message):
        bemcom.command_call(command, value, "W")


@pytest.mark.parametrize(
    ("payload", "message"),
    [(b"11000", "has no 'value'"), (b"{value: 1}", "is not JSON"), (b'{"timestamp": 1}', "has no 'value'"), (b"", "is not JSON")],
)
def test_value_messages_need_json_with_a_value(payload: bytes, message: str) -> None:
    with pytest.raises(bemcom.BemcomError, match=message):
        bemcom.parse_value_message(payload)


@pytest.mark.parametrize(
    "payload",
    [b"nope", b'{"sensor": {}}', b'{"sensor": [], "actuator": {}}', b'{"sensor": {"k": "a/+/b"}, "actuator": {}}',
     b'{"sensor": {}, "actuator": {"a/#": "k"}}', b'{"sensor": {"k": 5}, "actuator": {}}'],
)
def test_a_malformed_datapoint_map_is_refused(payload: bytes) -> None:
    with pytest.raises(bemcom.BemcomError):
        bemcom.parse_datapoint_map(payload)


def test_controller_rule() -> None:
    """BEMcom's controller (services/controllers/python/source/code/controller.py, update_actuator_value)."""
    schedule = [PlanItem(None, 2000, 16.0), PlanItem(2000, None, 8.0)]
    flexible = [PlanItem(None, None, 10.0, minimum=6.0, maximum=12.0, continuous=True)]
    discrete = [PlanItem(None, None, 10.0, acceptable=(8.0, 10.0), discrete=True)]
    rigid = [PlanItem(None, None, 10.0)]
    assert controller_value(None, schedule, 1000) == 16.0  # schedule only
    assert controller_value(rigid, None, 1000) == 10.0  # setpoint only: preferred_value
    assert controller_value(rigid, schedule, 3000) == 10.0  # no flexibility: always preferred
    assert controller_value([PlanItem(5000, None, 4.0)], None, 1000) is None  # not yet valid
    # Flexibility is judged on the control group's sensor value, not on the schedule's value:
    assert controller_value(flexible, schedule, 1000, sensor=7.0) == 16.0  # sensor within 6..12: the schedule's
    assert controller_value(flexible, schedule, 1000, sensor=13.0) == 10.0  # outside: preferred
    assert controller_value(discrete, schedule, 3000, sensor=8.0) == 8.0
    assert controller_value(discrete, schedule, 3000, sensor=9.0) == 10.0
    # no sensor value (ours never has one): any flexibility lets the schedule through
    assert controller_value(flexible, schedule, 1000) == 16.0
    assert controller_value(discrete, schedule, 1000) == 16.0
    # one-sided ranges
    assert controller_value([PlanItem(None, None, 10.0, maximum=12.0, continuous=True)], schedule, 1000, sensor=5.0) == 16.0
    assert controller_value([PlanItem(None, None, 10.0, minimum=6.0, continuous=True)], schedule, 1000, sensor=5.0) == 10.0


@pytest.mark.parametrize("flexibility", [
    {"min_value": None, "max_value": None},  # continuous, no bounds
    {"acceptable_values": None},  # discrete, any value
])
def test_flexibility_present_but_null_lets_the_schedule_through(flexibility: dict[str, Any]) -> None:
    """Issue 13: 5000 (preferred) was sent where BEMcom's controller sends the schedule's 9000."""
    setpoint = bemcom.parse_plan("setpoint", json.dumps({"setpoint": [
        {"from_timestamp": None, "to_timestamp": None, "preferred_value": 5000, **flexibility}], "timestamp": 1}).encode())
    schedule = bemcom.parse_plan("schedule", json.dumps({"schedule": [
        {"from_timestamp": None, "to_timestamp": None, "value": 9000}], "timestamp": 1}).encode())
    assert controller_value(setpoint, schedule, 1000, sensor=20000.0) == 9000
    assert controller_value(setpoint, schedule, 1000) == 9000
    # only one of min_value/max_value is no continuous flexibility for BEMcom: preferred
    half = bemcom.parse_plan("setpoint", b'{"setpoint": [{"from_timestamp": null, "to_timestamp": null, "preferred_value": 5000, "min_value": 1}]}')
    assert controller_value(half, schedule, 1000) == 5000


def test_limit_timeline_lists_each_change_and_keeps_the_last_value_through_gaps() -> None:
    schedule = [PlanItem(None, 2000, 16.0), PlanItem(2000, 4000, 16.0), PlanItem(4000, 6000, None), PlanItem(6000, None, 6.0)]
    assert limit_timeline(None, schedule, 1000) == [(1000, 16.0), (6000, 6.0)]
    assert limit_timeline([PlanItem(3000, None, 11.0)], None, 1000) == [(3000, 11.0)]
    assert limit_timeline(None, None, 1000) == []


def test_setpoint_and_schedule_messages_are_parsed_strictly() -> None:
    setpoint = json.dumps({"setpoint": [{"from_timestamp": None, "to_timestamp": 1564489613491, "preferred_value": "19",
                                         "min_value": 6, "max_value": 32}], "timestamp": 1}).encode()
    assert bemcom.parse_plan("setpoint", setpoint) == [PlanItem(None, 1564489613491, 19.0, 6.0, 32.0, continuous=True)]
    assert bemcom.parse_plan("schedule", b'{"schedule": null, "timestamp": 1}') is None
    assert bemcom.parse_plan("schedule", b"") is None  # a retained message being deleted
    for bad in (b"x", b'{"setpoint": []}', b'{"schedule": [{"from_timestamp": "soon", "value": 1}]}',
                b'{"schedule": [{"value": "high"}]}', b'{"schedule": {}}'):
        with pytest.raises(bemcom.BemcomError):
            bemcom.parse_plan("schedule", bad)


@pytest.mark.parametrize("moment", [1e300, 1e17, -1, 2**63])
def test_plan_timestamps_beyond_what_a_date_holds_are_refused(moment: float) -> None:
    """A profile's start is an ISO date: 1e300 ms has none, and raised OverflowError when the plan was applied."""
    with pytest.raises(bemcom.BemcomError, match="from_timestamp .* is outside 0..253402300799999"):
        bemcom.parse_plan("schedule", json.dumps({"schedule": [{"from_timestamp": moment, "value": 16}]}).encode())
    last = bemcom.parse_plan("schedule", json.dumps({"schedule": [{"from_timestamp": bemcom.MAX_TIMESTAMP_MS, "value": 16}]}).encode())
    assert last is not None and bemcom._iso_ms(last[0].start or 0).startswith("9999-12-31T23:59:59")


def test_log_handler_hides_passwords_and_skips_paho_and_debug_records() -> None:
    published: list[tuple[str, dict[str, Any], bool]] = []

    class Recorder:
        def publish(self, topic: str, payload: str, retain: bool = False, qos: int = 0) -> None:
            published.append((topic, json.loads(payload), retain))

    secrets = bemcom._secrets({"mqtt": {"password": "mqtt-pw"}, "ocpp": {"auth": {"passwords": {"cp-1": "cp-pw"}}}})
    handler = bemcom.MqttLogHandler(Recorder(), LOGS, secrets)  # type: ignore[arg-type]
    logger = logging.getLogger("test_bemcom.handler")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        logger.warning("cp-1 sent %s, broker wants %s", "cp-pw", "mqtt-pw")
        logger.debug("not published")
        logging.getLogger("paho.mqtt.client").addHandler(handler)
        logging.getLogger("paho.mqtt.client").error("never published: it could recurse")
    finally:
        logger.removeHandler(handler)
        logging.getLogger("paho.mqtt.client").removeHandler(handler)
    assert len(published) == 1
    topic, message, retain = published[0]
    assert (topic, retain) == (LOGS, True)
    assert message["msg"] == "cp-1 sent ***, broker wants ***" and message["level"] == logging.WARNING
    assert message["emitter"] == "test_log_handler_hides_passwords_and_skips_paho_and_debug_records" and is_ms(message["timestamp"])


# -- configuration: environment variables and .env ---------------------------------------------


def test_ocpp_config_forms_and_the_documented_default() -> None:
    def actuators(env: dict[str, str]) -> list[str]:
        return cfg.load(None, env={"CONNECTOR_NAME": CN, **env})["bemcom"]["actuators"]

    assert actuators({}) == ["execute_send_charging_profile"]  # unset: the documented default
    assert actuators({"OCPP_CONFIG": "  "}) == ["execute_send_charging_profile"]
    assert actuators({"OCPP_CONFIG": '{"execute_unlock_connector": 1, "execute_trigger_message": 2}'}) == [
        "execute_unlock_connector", "execute_trigger_message"]
    assert actuators({"OCPP_CONFIG": '["execute_trigger_message", "execute_trigger_message"]'}) == ["execute_trigger_message"]
    assert actuators({"OCPP_CONFIG": "[]"}) == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("execute_send_charging_profile", "OCPP_CONFIG = 'execute_send_charging_profile': expected a JSON array"),
        ('["execute_send_charging_profile"', "expected a JSON array"),
        ('"execute_send_charging_profile"', "expected a JSON array"),
        ('["execute_fly"]', "OCPP_CONFIG: unknown command 'execute_fly'; allowed: execute_send_charging_profile"),
        ("42", "OCPP_CONFIG = 42"),
    ],
)
def test_a_bad_ocpp_config_is_a_clear_config_error(value: str, message: str) -> None:
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(None, env={"CONNECTOR_NAME": CN, "OCPP_CONFIG": value})
    assert message in str(err.value)


def test_empty_connector_name_gets_the_templates_default() -> None:
    assert cfg.load(None, env={"CONNECTOR_NAME": ""})["bemcom"]["connector_name"] == "unknown-connector"


def test_dotenv_is_read_without_overriding_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text(
        "# BEMcom connector settings\n"
        "export CONNECTOR_NAME=from-dotenv\n"
        "MQTT_BROKER_PORT = 1884   # the broker\n"
        "OCPP_CONFIG='[\"execute_send_charging_profile\", \"execute_trigger_message\"]'\n"
        'OCPP_PROFILE="{\\"stackLevel\\": 3, \\"chargingSchedule\\": {\\"chargingRateUnit\\": \\"A\\"}}"\n'
        "SEND_RAW_MESSAGE_TO_DB=TRUE\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    for name in ("CONNECTOR_NAME", "MQTT_BROKER_HOST", "MQTT_BROKER_PORT", "OCPP_CONFIG", "OCPP_PROFILE", "OCPP_PORT", "DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONNECTOR_NAME", "from-environment")
    monkeypatch.setenv("SEND_RAW_MESSAGE_TO_DB", "FALSE")
    config = cfg.load()
    assert config["bemcom"]["connector_name"] == "from-environment"  # the environment wins
    assert config["bemcom"]["send_raw_message_to_db"] is False
    assert config["mqtt"]["port"] == 1884
    assert config["bemcom"]["actuators"] == ["execute_send_charging_profile", "execute_trigger_message"]
    assert (config["charging"]["profile"]["stack_level"], config["charging"]["profile"]["unit"]) == (3, "A")


def test_dotenv_syntax_and_errors(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("A=1\nB=x#y\nC=${A}-${NOPE:-d}\nD='${A}'\nE=\"a\\nb\"\nF='multi\nline'\n\n   # note\n", encoding="utf-8")
    assert cfg.read_dotenv(path, {"A": "env"}) == {"A": "1", "B": "x#y", "C": "env-d", "D": "${A}", "E": "a\nb", "F": "multi\nline"}
    path.write_text("A=1\nnot a setting\n", encoding="utf-8")
    with pytest.raises(cfg.ConfigError, match="line 2: cannot parse 'not a setting'"):
        cfg.read_dotenv(path, {})
    assert cfg.read_dotenv(tmp_path / "missing", {}) == {}


# -- the connector on a real broker ----------------------------------------------------------------


async def test_available_datapoints_lists_actuators_and_every_sensor_key_once(service_factory, probe: MqttProbe) -> None:
    service = await start(service_factory)
    sim = await service.charger("wallbox-1", vendor="ACME", model="Box 22")
    available = await probe.wait_json(AVAILABLE, lambda d: "wallbox-1__StatusNotification__status" in d["sensor"])
    assert set(available) == {"sensor", "actuator"}
    assert available["actuator"] == {f"wallbox-1__{c}__": "0" for c in ALL_COMMANDS}
    sensor = available["sensor"]
    assert sensor["wallbox-1__BootNotification__charge_point_vendor"] == "ACME"
    assert sensor["wallbox-1__BootNotification__charge_point_model"] == "Box 22"
    assert sensor["wallbox-1__StatusNotification__connector_id"] in (0, 1)
    assert sensor["wallbox-1__state__connected"] is True
    await install_map(probe, {"wallbox-1__Energy.Active.Import.Register__Wh": f"{CN}/messages/1/value"}, {})
    await sim.send_meter_values()
    keys = ("wallbox-1__Power.Active.Import__W", "wallbox-1__Current.Import__L1__A", "wallbox-1__Voltage__L3-N__V",
            "wallbox-1__SoC__Percent", "wallbox-1__Temperature__Celsius", "wallbox-1__state__power", "wallbox-1__state__energy")
    available = await probe.wait_json(AVAILABLE, lambda d: all(k in d["sensor"] for k in keys))
    assert isinstance(available["sensor"]["wallbox-1__Power.Active.Import__W"], str)  # the charger's string
    count = len(probe.received(AVAILABLE))
    mark = probe.mark()
    await sim.send_meter_values()  # new values, no new keys
    await probe.wait_for(f"{CN}/messages/1/value", since=mark)  # published after any available_datapoints update
    assert len(probe.received(AVAILABLE)) == count
    assert "wallbox-1__Power.Active.Import__W" in json.loads(await retained_payload(probe, AVAILABLE))["sensor"]


async def test_only_mapped_sensor_values_are_published_with_value_and_timestamp(service_factory, probe: MqttProbe) -> None:
    service = await start(service_factory)
    sim = await service.charger("wallbox-1", vendor="ACME")
    await probe.wait_json(AVAILABLE, lambda d: "wallbox-1__BootNotification__charge_point_vendor" in d["sensor"])
    sensor = {
        "wallbox-1__BootNotification__charge_point_vendor": f"{CN}/messages/1/value",
        "wallbox-1__Power.Active.Import__W": f"{CN}/messages/2/value",
        "wallbox-1__Current.Import__L2__A": f"{CN}/messages/3/value",
        "wallbox-1__state__energy": f"{CN}/messages/4/value",
    }
    await install_map(probe, sensor, {})
    # A key mapped after its value arrived gets that value at once, with the time it was received.
    vendor = await probe.wait_json(f"{CN}/messages/1/value")
    assert set(vendor) == {"value", "timestamp"} and vendor["value"] == "ACME" and is_ms(vendor["timestamp"])
    await sim.send_meter_values()
    power = await probe.wait_json(f"{CN}/messages/2/value")
    assert set(power) == {"value", "timestamp"} and is_ms(power["timestamp"])
    assert power["value"] == f"{sim.power():.1f}"  # the string the charger sent
    assert (await probe.wait_json(f"{CN}/messages/3/value"))["value"] == "32.0"
    assert (await probe.wait_json(f"{CN}/messages/4/value"))["value"] == round(round(sim.energy_wh) / 1000, 6)  # normalised
    published = {t for t, _, _ in probe.messages if t.startswith(f"{CN}/messages/")}
    assert published == set(sensor.values())  # nothing for the unmapped keys
    assert json.loads(await retained_payload(probe, f"{CN}/messages/2/value")) == power


async def test_actuator_value_sends_the_ocpp_profile_template_with_the_limit_replaced(service_factory, probe: MqttProbe) -> None:
    service = await start(service_factory, profile=OCPP_PROFILE)
    sim = await service.charger("wallbox-1")
    status_topic = f"{CN}/messages/9/value"
    await install_map(probe, {"wallbox-1__SetChargingProfile__status": status_topic}, {LIMIT_TOPIC: LIMIT_KEY})
    probe.publish(LIMIT_TOPIC, value_message(11000), qos=2)
    request = await sim.wait_for_call("SetChargingProfile")
    profile = request["csChargingProfiles"]
    assert request["connectorId"] == 0
    assert (profile["chargingProfilePurpose"], profile["chargingProfileKind"], profile["stackLevel"]) == ("TxDefaultProfile", "Absolute", 5)
    schedule = profile["chargingSchedule"]
    assert schedule["chargingRateUnit"] == "W" and "startSchedule" in schedule
    assert schedule["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 11000}]
    status = await probe.wait_json(status_topic, lambda d: d["value"] == "Accepted")
    assert is_ms(status["timestamp"])
    await probe.wait_json("ocpp/wallbox-1/event", lambda d: d["command"] == "charging_limit" and d["status"] == "Accepted")


async def test_limit_unit_is_the_originals_watts_without_an_ocpp_profile(service_factory, probe: MqttProbe) -> None:
    service = await start(service_factory)
    sim = await service.charger("wallbox-1")
    await install_map(probe, {}, {LIMIT_TOPIC: LIMIT_KEY})
    probe.publish(LIMIT_TOPIC, value_message("7000"), qos=2)
    schedule = (await sim.wait_for_call("SetChargingProfile"))["csChargingProfiles"]["chargingSchedule"]
    assert (schedule["chargingRateUnit"], schedule["chargingSchedulePeriod"][0]["limit"]) == ("W", 7000)


async def test_trigger_unlock_and_composite_schedule_with_results_as_sensor_datapoints(service_factory, probe: MqttProbe) -> None:
    service = await start(service_factory, profile=OCPP_PROFILE)
    sim = await service.charger("wallbox-1")
    actuator = {f"{CN}/messages/{n}/value": f"wallbox-1__{c}__" for n, c in enumerate(ALL_COMMANDS, start=20)}
    topic = {c: t for t, c in ((t, k.split("__")[1]) for t, k in actuator.items())}
    results = {
        "wallbox-1__TriggerMessage__status": f"{CN}/messages/1/value",
        "wallbox-1__TriggerMessage__requested_message": f"{CN}/messages/2/value",
        "wallbox-1__UnlockConnector__status": f"{CN}/messages/3/value",
        "wallbox-1__CompositeSchedule__status": f"{CN}/messages/4/value",
        "wallbox-1__CompositeSchedule__charging_schedule__charging_schedule_period": f"{CN}/messages/5/value",
        "wallbox-1__CompositeSchedule__charging_schedule__duration": f"{CN}/messages/6/value",
        "wallbox-1__Power.Active.Import__W": f"{CN}/messages/7/value",
    }
    await install_map(probe, results, actuator)
    probe.publish(topic["execute_trigger_message"], value_message(4), qos=2)
    trigger = await sim.wait_for_call("TriggerMessage", lambda p: p["requestedMessage"] == "MeterValues")
    assert trigger["connectorId"] == 1
    await probe.wait_json(f"{CN}/messages/1/value", lambda d: d["value"] == "Accepted")
    assert (await probe.wait_json(f"{CN}/messages/2/value"))["value"] == "MeterValues"
    await probe.wait_json(f"{CN}/messages/7/value")  # the triggered MeterValues arrived as a sensor value
    probe.publish(topic["execute_unlock_connector"], value_message("0"), qos=2)
    assert (await sim.wait_for_call("UnlockConnector"))["connectorId"] == 1
    await probe.wait_json(f"{CN}/messages/3/value", lambda d: d["value"] == "Unlocked")
    probe.publish(topic["execute_send_charging_profile"], value_message(11000), qos=2)
    await sim.wait_for_call("SetChargingProfile")
    probe.publish(topic["execute_get_composite_schedule"], value_message(600), qos=2)
    request = await sim.wait_for_call("GetCompositeSchedule", lambda p: p["duration"] == 600)
    assert (request["connectorId"], request["chargingRateUnit"]) == (1, "W")
    await probe.wait_json(f"{CN}/messages/4/value", lambda d: d["value"] == "Accepted")
    periods = await probe.wait_json(f"{CN}/messages/5/value")
    assert isinstance(periods["value"], str)  # a list as its JSON text: the BEMcom API stores float(value) or text
    assert json.loads(periods["value"])[0]["start_period"] == 0 and "limit" in json.loads(periods["value"])[0]
    assert (await probe.wait_json(f"{CN}/messages/6/value"))["value"] == 600


async def test_bad_actuator_payloads_are_logged_and_nothing_reaches_the_charger(service_factory, probe: MqttProbe) -> None:
    service = await start(service_factory)
    sim = await service.charger("wallbox-1")
    unknown_topic = f"{CN}/messages/8/value"
    await install_map(probe, {}, {LIMIT_TOPIC: LIMIT_KEY, unknown_topic: "wallbox-9__execute_send_charging_profile__"})
    bad = [
        (LIMIT_TOPIC, "11000", "has no 'value'"),
        (LIMIT_TOPIC, "{not json", "is not JSON"),
        (LIMIT_TOPIC, json.dumps({"timestamp": 1}), "has no 'value'"),
        (LIMIT_TOPIC, value_message("eleven kW"), "limit 'eleven kW' is not a number"),
        (LIMIT_TOPIC, value_message([11000]), "is not a number"),
        (unknown_topic, value_message(11000), "which is not an actuator of this connector"),
    ]
    for topic, payload, reason in bad:
        mark = probe.mark()
        probe.publish(topic, payload, qos=2)
        log = await probe.wait_json(LOGS, lambda d, r=reason: r in d["msg"], since=mark)
        assert set(log) == {"timestamp", "msg", "emitter", "level"} and log["level"] == logging.WARNING
        assert is_ms(log["timestamp"]) and isinstance(log["emitter"], str)
    probe.publish(LIMIT_TOPIC, value_message(9000), qos=2)  # a valid one as the barrier
    await probe.wait_json("ocpp/wallbox-1/event", lambda d: d.get("status") == "Accepted" and d.get("limit") == 9000)
    assert limits(sim) == [9000]
    invalid = [json.loads(p) for p in probe.received("ocpp/wallbox-1/event") if json.loads(p)["status"] == "Invalid"]
    assert len(invalid) == 5 and all(e["source"] == "bemcom" for e in invalid)


async def test_map_changes_move_subscriptions_and_an_empty_map_stops_everything(service_factory, probe: MqttProbe) -> None:
    service = await start(service_factory)
    sim = await service.charger("wallbox-1")
    old, new = f"{CN}/messages/7/value", f"{CN}/messages/17/value"
    energy = f"{CN}/messages/1/value"
    await install_map(probe, {"wallbox-1__Energy.Active.Import.Register__Wh": energy}, {old: LIMIT_KEY})
    probe.publish(old, value_message(8000), qos=2)
    await sim.wait_for_call("SetChargingProfile", lambda p: limit_of(p) == 8000)
    await install_map(probe, {"wallbox-1__Energy.Active.Import.Register__Wh": energy}, {new: LIMIT_KEY})
    probe.publish(old, value_message(9000), qos=2)  # unsubscribed: never executed
    probe.publish(new, value_message(10000), qos=2)
    await sim.wait_for_call("SetChargingProfile", lambda p: limit_of(p) == 10000)
    await install_map(probe, {}, {})
    probe.publish(new, value_message(11000), qos=2)  # no actuator any more
    mark = probe.mark()
    since = len(service.events)
    await sim.send_meter_values()
    await service.wait_event(UPDATED, "wallbox-1", since=since)
    await install_map(probe, {}, {new: LIMIT_KEY})  # the barrier: everything before it has arrived
    assert not [t for t, _, _ in probe.messages[mark:] if t == energy]
    probe.publish(new, value_message(12000), qos=2)
    await probe.wait_json("ocpp/wallbox-1/event", lambda d: d.get("status") == "Accepted" and d.get("limit") == 12000)
    assert limits(sim) == [8000, 10000, 12000]


async def test_a_malformed_datapoint_map_is_logged_and_the_previous_one_kept(service_factory, probe: MqttProbe) -> None:
    service = await start(service_factory)
    sim = await service.charger("wallbox-1")
    await install_map(probe, {}, {LIMIT_TOPIC: LIMIT_KEY})
    mark = probe.mark()
    probe.publish(MAP, '{"sensor": {}}', retain=True, qos=2)
    log = await probe.wait_json(LOGS, lambda d: "ignored the datapoint_map" in d["msg"], since=mark)
    assert log["level"] == logging.ERROR
    probe.publish(LIMIT_TOPIC, value_message(8000), qos=2)
    await sim.wait_for_call("SetChargingProfile")


async def test_topics_have_the_templates_qos_and_retain_flags(service_factory, broker) -> None:
    """Watched with MQTT 5 retain-as-published: the retain flag is the one we published with, also on live
    deliveries (over MQTT 3.1.1 a live delivery always says 0, so a wrong flag would pass unseen)."""
    watcher = Mqtt5Probe(broker.port, asyncio.get_running_loop())
    await watcher.subscribe("#", qos=2)
    try:
        service = await start(service_factory, send_raw_message_to_db=True, heartbeat_interval=0.2)
        sim = await service.charger("wallbox-1")
        energy = f"{CN}/messages/1/value"
        await install_map(watcher, {"wallbox-1__Energy.Active.Import.Register__Wh": energy}, {LIMIT_TOPIC: LIMIT_KEY})
        await sim.send_meter_values()
        await watcher.wait_for(energy)
        await watcher.wait_for(HEARTBEAT)
        await watcher.wait_for(RAW)  # QoS 2 deliveries take a round trip longer: they may come last
        flags = {topic: {(q, r) for t, q, r in watcher.flags if t == topic} for topic in (RAW, AVAILABLE, LOGS, HEARTBEAT, energy)}
        assert flags[RAW] == {(2, False)} and flags[HEARTBEAT] == {(0, False)}
        assert flags[AVAILABLE] == flags[LOGS] == flags[energy] == {(0, True)}  # kept by the broker for the BEMcom API
        # what we subscribe with: the map at QoS 1, actuator values at QoS 2 (the template's)
        subscriptions = service.app.mqtt._subscriptions
        assert (subscriptions[MAP][0], subscriptions[LIMIT_TOPIC][0]) == (1, 2)
    finally:
        watcher.close()


async def test_raw_messages_go_to_the_raw_message_db_in_the_templates_format(service_factory, probe: MqttProbe) -> None:
    service = await start(service_factory, send_raw_message_to_db=True)
    sim = await service.charger("wallbox-1", vendor="ACME")
    raw = await probe.wait_json(RAW, lambda d: d["payload"]["raw_message"][2] == "BootNotification")
    assert set(raw) == {"payload", "connector_version"} and raw["connector_version"] == __version__
    assert set(raw["payload"]) == {"raw_message", "timestamp"} and is_ms(raw["payload"]["timestamp"])
    frame = raw["payload"]["raw_message"]
    assert frame[0] == 2 and isinstance(frame[1], str) and frame[3]["chargePointVendor"] == "ACME"
    await sim._connection.send("this is not JSON")
    text = await probe.wait_json(RAW, lambda d: isinstance(d["payload"]["raw_message"], str))
    assert text["payload"]["raw_message"] == "this is not JSON"
    # CALLRESULTs the charger sends are raw frames too
    await service.app.hub.command("wallbox-1", "unlock_connector", connector_id=1)
    await probe.wait_json(RAW, lambda d: d["payload"]["raw_message"][0] == 3 and d["payload"]["raw_message"][2] == {"status": "Unlocked"})


async def test_no_raw_messages_unless_asked_for(service_factory, probe: MqttProbe) -> None:
    service = await start(service_factory)
    await service.charger("wallbox-1")
    await install_map(probe, {}, {})  # the barrier: what was published before it has arrived
    assert not probe.received(RAW)


async def test_heartbeat_every_interval_in_the_templates_format(service_factory, probe: MqttProbe) -> None:
    await start(service_factory, heartbeat_interval=0.2)
    first = await probe.wait_json(HEARTBEAT)
    assert set(first) == {"this_heartbeats_timestamp", "next_heartbeats_timestamp"} and is_ms(first["this_heartbeats_timestamp"])
    assert first["next_heartbeats_timestamp"] - first["this_heartbeats_timestamp"] == 200
    second = await probe.wait_json(HEARTBEAT, lambda d: d != first)
    assert first["next_heartbeats_timestamp"] - 20 <= second["this_heartbeats_timestamp"] < first["next_heartbeats_timestamp"] + 2000
    assert cfg.validate({})["bemcom"]["heartbeat_interval"] == 30


async def test_logs_at_info_and_above_in_the_templates_format_without_passwords(
    service_factory, probe: MqttProbe, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ocpp_addon.bemcom")
    service = await service_factory(bemcom={"enabled": True, "connector_name": CN},
                                    mqtt={"username": "bemcom", "password": "hunter2-secret"})
    await service.charger("wallbox-1")
    await install_map(probe, {}, {LIMIT_TOPIC: LIMIT_KEY})
    info = [json.loads(p) for p in probe.received(LOGS) if b"datapoint_map with" in p][-1]
    assert info["level"] == logging.INFO and info["emitter"] == "_on_datapoint_map" and is_ms(info["timestamp"])
    logging.getLogger("ocpp_addon.bemcom").debug("debug marker")
    probe.publish(LIMIT_TOPIC, value_message("hunter2-secret"), qos=2)
    warning = await probe.wait_json(LOGS, lambda d: "is not a number" in d["msg"])
    assert warning["level"] == logging.WARNING and "'***'" in warning["msg"]
    assert not [p for p in probe.received(LOGS) if b"hunter2" in p or b"debug marker" in p]
    assert json.loads(await retained_payload(probe, LOGS))["msg"] == warning["msg"]


async def test_legacy_keys_reproduce_the_original_connectors_datapoints(service_factory, probe: MqttProbe) -> None:
    service = await start(service_factory, legacy_keys=True)
    available = await probe.wait_json(AVAILABLE)
    assert available == {"sensor": {}, "actuator": {f"{c}__": "0" for c in ALL_COMMANDS}}  # offered before any charger
    sim = await service.charger("wallbox-1", vendor="ACME")
    sensor = {
        "BootNotification__charge_point_vendor": f"{CN}/messages/1/value",
        "StatusNotification__status": f"{CN}/messages/2/value",
        "Power.Active.Import__W": f"{CN}/messages/3/value",
        "Heartbeat": f"{CN}/messages/4/value",
    }
    await install_map(probe, sensor, {LIMIT_TOPIC: "execute_send_charging_profile__"})
    assert (await probe.wait_json(f"{CN}/messages/1/value"))["value"] == "ACME"
    assert (await probe.wait_json(f"{CN}/messages/2/value"))["value"] == "Charging"
    await sim.send_meter_values()
    assert (await probe.wait_json(f"{CN}/messages/3/value"))["value"] == f"{sim.power():.1f}"
    await sim.call(ocpp_call.Heartbeat())
    assert (await probe.wait_json(f"{CN}/messages/4/value"))["value"] == "alive"
    available = await probe.wait_json(AVAILABLE, lambda d: "Power.Active.Import__W" in d["sensor"])
    assert not [k for k in available["sensor"] if k.startswith("wallbox-1__")]
    probe.publish(LIMIT_TOPIC, value_message(8000), qos=2)
    assert limit_of(await sim.wait_for_call("SetChargingProfile")) == 8000


async def test_several_chargers_have_their_own_datapoints_and_actuators(service_factory, probe: MqttProbe) -> None:
    service = await start(service_factory)
    a = await service.charger("cp-a")
    b = await service.charger("cp-b")
    available = await probe.wait_json(AVAILABLE, lambda d: "cp-b__execute_send_charging_profile__" in d["actuator"])
    assert {"cp-a__execute_send_charging_profile__", "cp-b__execute_trigger_message__"} <= set(available["actuator"])
    sensor = {f"{cp}__Power.Active.Import__W": f"{CN}/messages/{n}/value" for n, cp in enumerate(("cp-a", "cp-b"), start=1)}
    actuator = {f"{CN}/messages/{n}/value": f"{cp}__execute_send_charging_profile__" for n, cp in enumerate(("cp-a", "cp-b"), start=11)}
    await install_map(probe, sensor, actuator)
    b.options.max_current = 10
    await a.send_meter_values()
    await b.send_meter_values()
    assert (await probe.wait_json(f"{CN}/messages/1/value"))["value"] == f"{a.power():.1f}"
    assert (await probe.wait_json(f"{CN}/messages/2/value"))["value"] == f"{b.power():.1f}" != f"{a.power():.1f}"
    probe.publish(f"{CN}/messages/11/value", value_message(7000), qos=2)
    probe.publish(f"{CN}/messages/12/value", value_message(9000), qos=2)
    assert limit_of(await a.wait_for_call("SetChargingProfile")) == 7000
    assert limit_of(await b.wait_for_call("SetChargingProfile")) == 9000
    await probe.wait_json("ocpp/cp-b/event", lambda d: d.get("status") == "Accepted")
    assert limits(a) == [7000] and limits(b) == [9000]


async def test_a_removed_charger_leaves_the_available_datapoints(service_factory, probe: MqttProbe) -> None:
    service = await start(service_factory)
    sim = await service.charger("wallbox-1")
    await probe.wait_json(AVAILABLE, lambda d: LIMIT_KEY in d["actuator"])
    await sim._connection.close()
    mark = probe.mark()
    probe.publish("ocpp/wallbox-1/remove/set", "remove")
    available = await probe.wait_json(AVAILABLE, lambda d: LIMIT_KEY not in d["actuator"], since=mark)
    assert not [k for k in [*available["sensor"], *available["actuator"]] if k.startswith("wallbox-1__")]


async def test_a_setpoint_sends_its_preferred_value_and_the_controller_rule_picks_schedule_values(
    service_factory, probe: MqttProbe
) -> None:
    service = await start(service_factory, apply_setpoints=True)
    sim = await service.charger("wallbox-1")
    await install_map(probe, {}, {LIMIT_TOPIC: LIMIT_KEY})
    base = LIMIT_TOPIC.removesuffix("value")
    now = int(time.time() * 1000)
    setpoint = {"setpoint": [{"from_timestamp": None, "to_timestamp": None, "preferred_value": "9000",
                              "min_value": 6000, "max_value": 11000}], "timestamp": now}
    probe.publish(base + "setpoint", json.dumps(setpoint), retain=True, qos=2)
    assert limit_of(await sim.wait_for_call("SetChargingProfile")) == 9000
    await probe.wait_json("ocpp/wallbox-1/event", lambda d: d.get("status") == "Accepted" and d.get("limit") == 9000)
    schedule = {"schedule": [{"from_timestamp": None, "to_timestamp": None, "value": 7000}], "timestamp": now}
    probe.publish(base + "schedule", json.dumps(schedule), retain=True, qos=2)  # within 6000..11000: the schedule's
    await sim.wait_for_call("SetChargingProfile", lambda p: limit_of(p) == 7000)
    await probe.wait_json("ocpp/wallbox-1/event", lambda d: d.get("status") == "Accepted" and d.get("limit") == 7000)
    setpoint["setpoint"][0].pop("min_value")  # no flexibility left: the preferred value
    probe.publish(base + "setpoint", json.dumps(setpoint), retain=True, qos=2)
    await probe.wait_json("ocpp/wallbox-1/event", lambda d: d.get("status") == "Accepted" and d.get("limit") == 9000 and limits(sim)[-1] == 9000)
    assert limits(sim) == [9000, 7000, 9000]


async def test_a_schedule_becomes_one_profile_with_several_periods(service_factory, probe: MqttProbe) -> None:
    service = await start(service_factory, apply_setpoints=True)
    sim = await service.charger("wallbox-1")
    status = f"{CN}/messages/9/value"
    await install_map(probe, {"wallbox-1__SetChargingProfile__status": status}, {LIMIT_TOPIC: LIMIT_KEY})
    now = int(time.time() * 1000)
    later = now + 3_600_000
    schedule = {"schedule": [{"from_timestamp": None, "to_timestamp": later, "value": 11000.0},
                             {"from_timestamp": later, "to_timestamp": later + 3_600_000, "value": 6900.0},
                             {"from_timestamp": later + 3_600_000, "to_timestamp": None, "value": None}], "timestamp": now}
    probe.publish(LIMIT_TOPIC.removesuffix("value") + "schedule", json.dumps(schedule), retain=True, qos=2)
    request = await sim.wait_for_call("SetChargingProfile")
    profile = request["csChargingProfiles"]
    assert profile["chargingProfileKind"] == "Absolute" and profile["chargingProfilePurpose"] == "TxDefaultProfile"
    periods = profile["chargingSchedule"]["chargingSchedulePeriod"]
    assert profile["chargingSchedule"]["chargingRateUnit"] == "W"
    assert [p["limit"] for p in periods] == [11000, 6900] and periods[0]["startPeriod"] == 0
    assert 3598 <= periods[1]["startPeriod"] <= 3601
    await probe.wait_json(status, lambda d: d["value"] == "Accepted")
    assert len(sim.calls("SetChargingProfile")) == 1


async def test_the_map_and_its_subscriptions_survive_a_broker_restart(service_factory, broker, probe: MqttProbe) -> None:
    service = await start(service_factory)
    sim = await service.charger("wallbox-1")
    energy, unlock = f"{CN}/messages/1/value", f"{CN}/messages/3/value"
    await install_map(probe, {"wallbox-1__Energy.Active.Import.Register__Wh": energy},
                      {LIMIT_TOPIC: LIMIT_KEY, unlock: "wallbox-1__execute_unlock_connector__"})
    probe.publish(unlock, value_message(1), retain=True, qos=2)  # retained: the broker will hand it out again
    await sim.wait_for_call("UnlockConnector")
    await broker.stop()
    await broker.start()
    fresh = MqttProbe(broker.port, asyncio.get_running_loop())
    try:
        await fresh.subscribe("#")
        await wait_live(fresh, "ocpp/bridge/state", b"online")  # reconnected; its subscriptions went out before this
        fresh.publish(LIMIT_TOPIC, value_message(9000), qos=2)
        await fresh.wait_json("ocpp/wallbox-1/event", lambda d: d.get("status") == "Accepted" and d.get("limit") == 9000)
        assert limits(sim) == [9000]
        assert len(sim.calls("UnlockConnector")) == 1  # the redelivered retained value was not executed again
        await sim.send_meter_values()
        await fresh.wait_for(energy)
    finally:
        fresh.close()


# -- the real CLI, configured the BEMcom way --------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def cli_environment(**variables: str) -> dict[str, str]:
    """Only what a BEMcom container would set (plus what Python needs to run)."""
    return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), **variables}


async def read_until(stream: asyncio.StreamReader, marker: bytes, lines: list[bytes]) -> None:
    while True:
        line = await stream.readline()
        if not line:
            raise AssertionError(f"the service exited before logging {marker!r}: {b''.join(lines).decode()[-2000:]}")
        lines.append(line)
        if marker in line:
            return


async def drain(stream: asyncio.StreamReader, lines: list[bytes]) -> None:
    while line := await stream.readline():
        lines.append(line)


async def test_runs_from_the_bemcom_environment_variables_and_a_dotenv_file(broker, probe: MqttProbe, tmp_path: Path) -> None:
    cn, ocpp_port = "cli-connector", free_port()
    (tmp_path / ".env").write_text(
        "CONNECTOR_NAME=not-this-one\n"  # the environment wins
        "OCPP_CONFIG='[\"execute_send_charging_profile\", \"execute_trigger_message\"]'\n"
        f"OCPP_PROFILE='{json.dumps(OCPP_PROFILE)}'\n",
        encoding="utf-8",
    )
    env = cli_environment(CONNECTOR_NAME=cn, MQTT_BROKER_HOST="127.0.0.1", MQTT_BROKER_PORT=str(broker.port),
                          OCPP_PORT=str(ocpp_port), SEND_RAW_MESSAGE_TO_DB="TRUE")
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "ocpp_addon", cwd=tmp_path, env=env,
                                                   stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert process.stderr is not None
    lines: list[bytes] = []
    draining: asyncio.Task[None] | None = None
    sim_task = None
    try:
        await asyncio.wait_for(read_until(process.stderr, b"ready: chargers connect to", lines), TIMEOUT)
        draining = asyncio.create_task(drain(process.stderr, lines))
        sim, sim_task = await connect(f"ws://127.0.0.1:{ocpp_port}", "wallbox-1", SimOptions(meter_interval=0))
        await asyncio.wait_for(sim.booted.wait(), TIMEOUT)
        # started the BEMcom way: the original connector's keys, its 10 s OCPP heartbeat
        available = await probe.wait_json(f"{cn}/available_datapoints", lambda d: "StatusNotification__status" in d["sensor"])
        assert available["actuator"] == {"execute_send_charging_profile__": "0", "execute_trigger_message__": "0"}
        assert sim.heartbeat_interval == 10
        beat = await probe.wait_json(f"{cn}/heartbeat")
        assert beat["next_heartbeats_timestamp"] - beat["this_heartbeats_timestamp"] == 30_000
        raw = await probe.wait_json(f"{cn}/raw_message_to_db", lambda d: d["payload"]["raw_message"][2] == "BootNotification")
        assert raw["connector_version"] == __version__
        mark = probe.mark()
        topic = f"{cn}/messages/1/value"
        probe.publish(f"{cn}/datapoint_map", json.dumps({"sensor": {}, "actuator": {topic: "execute_send_charging_profile__"}}),
                      retain=True, qos=2)
        await probe.wait_json(f"{cn}/logs", lambda d: "datapoint_map with 0 sensor and 1 actuator" in d["msg"], since=mark)
        probe.publish(topic, value_message(11000), qos=2)
        profile = (await sim.wait_for_call("SetChargingProfile"))["csChargingProfiles"]
        assert (profile["stackLevel"], profile["chargingSchedule"]["chargingRateUnit"], limit_of({"csChargingProfiles": profile})) == (5, "W", 11000)
        assert not [t for t, _, _ in probe.messages if not t.startswith(f"{cn}/")]  # no ocpp/*, no discovery
    finally:
        if sim_task is not None:
            sim_task.cancel()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), TIMEOUT)
        if draining is not None:
            await asyncio.wait_for(draining, TIMEOUT)
    output = b"".join(lines).decode()
    assert code == 0 and "Traceback" not in output, output[-3000:]


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"OCPP_CONFIG": "execute_send_charging_profile"}, "OCPP_CONFIG = 'execute_send_charging_profile': expected a JSON array"),
        ({"OCPP_CONFIG": '["execute_reset"]'}, "OCPP_CONFIG: unknown command 'execute_reset'"),
        ({"OCPP_PROFILE": "{broken"}, "OCPP_PROFILE = '{broken': not valid JSON"),
    ],
)
async def test_a_bad_bemcom_variable_stops_the_cli_with_a_clear_message(variables: dict[str, str], message: str, tmp_path: Path) -> None:
    env = cli_environment(CONNECTOR_NAME=CN, MQTT_BROKER_HOST="127.0.0.1", MQTT_BROKER_PORT="1", **variables)
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "ocpp_addon", cwd=tmp_path, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert process.returncode == 2
    assert f"configuration error: {message}" in stderr.decode() and "Traceback" not in stderr.decode()


async def test_a_schedule_for_an_offline_charger_is_installed_when_it_is_back(service_factory, probe: MqttProbe) -> None:
    service = await start(service_factory, apply_setpoints=True)
    sim = await service.charger("wallbox-1")
    await install_map(probe, {}, {LIMIT_TOPIC: LIMIT_KEY})
    await sim._connection.close()
    await probe.wait_for("ocpp/wallbox-1/availability", lambda p: p == b"offline")
    now = int(time.time() * 1000)
    schedule = {"schedule": [{"from_timestamp": None, "to_timestamp": now + 600_000, "value": 8000},
                             {"from_timestamp": now + 600_000, "to_timestamp": None, "value": 6000}], "timestamp": now}
    mark = probe.mark()
    probe.publish(LIMIT_TOPIC.removesuffix("value") + "schedule", json.dumps(schedule), retain=True, qos=2)
    await probe.wait_json(LOGS, lambda d: "keeping the BEMcom schedule until it connects" in d["msg"], since=mark)
    again = await service.charger("wallbox-1")
    periods = (await again.wait_for_call("SetChargingProfile"))["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"]
    assert [p["limit"] for p in periods] == [8000, 6000]


def two_period_schedule(first: float, second: float) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {"schedule": [{"from_timestamp": None, "to_timestamp": now + 600_000, "value": first},
                         {"from_timestamp": now + 600_000, "to_timestamp": None, "value": second}], "timestamp": now}


async def two_limit_topics_charger_offline(service_factory: Any, probe: MqttProbe) -> tuple[Any, str]:
    """Two BEMcom value topics mapped to the limit of a charger that has gone offline; returns the second."""
    service = await start(service_factory, apply_setpoints=True)
    sim = await service.charger("wallbox-1")
    other = f"{CN}/messages/8/value"
    await install_map(probe, {}, {LIMIT_TOPIC: LIMIT_KEY, other: LIMIT_KEY})
    await sim._connection.close()
    await probe.wait_for("ocpp/wallbox-1/availability", lambda p: p == b"offline")
    return service, other


async def test_a_schedule_with_an_absurd_timestamp_is_refused_and_the_others_still_apply(service_factory, probe: MqttProbe) -> None:
    """from_timestamp 1e300 was taken, then raised OverflowError at every READY, before the plans after it."""
    service, other = await two_limit_topics_charger_offline(service_factory, probe)
    mark = probe.mark()
    absurd = {"schedule": [{"from_timestamp": 1e300, "to_timestamp": None, "value": 7000}], "timestamp": 1}
    probe.publish(LIMIT_TOPIC.removesuffix("value") + "schedule", json.dumps(absurd), retain=True, qos=2)
    await probe.wait_json(LOGS, lambda d: d["msg"] == f"BEMcom: ignored the schedule on {CN}/messages/7/schedule: "
                          "from_timestamp 1e+300 is outside 0..253402300799999 (1970 to 9999-12-31 in milliseconds)", since=mark)
    probe.publish(other.removesuffix("value") + "schedule", json.dumps(two_period_schedule(8000, 6000)), retain=True, qos=2)
    await probe.wait_json(LOGS, lambda d: "keeping the BEMcom schedule until it connects" in d["msg"], since=mark)
    again = await service.charger("wallbox-1")
    periods = (await again.wait_for_call("SetChargingProfile"))["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"]
    assert [p["limit"] for p in periods] == [8000, 6000]


async def test_a_plan_that_fails_to_apply_is_dropped_and_the_others_still_apply(service_factory, probe: MqttProbe,
                                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Whatever makes one stored plan raise, the loop at READY goes on to the next one. The failing plan
    is put in place as a build without the timestamp bound stored it (the parser refuses it now)."""
    service, other = await two_limit_topics_charger_offline(service_factory, probe)
    sink = service.app.bemcom
    assert sink is not None
    sink._plans[LIMIT_TOPIC] = bemcom._Plan(schedule=[bemcom.PlanItem(10**300, None, 7000.0)])  # first in the loop
    mark = probe.mark()
    probe.publish(other.removesuffix("value") + "schedule", json.dumps(two_period_schedule(8000, 6000)), retain=True, qos=2)
    await probe.wait_json(LOGS, lambda d: "keeping the BEMcom schedule until it connects" in d["msg"], since=mark)
    again = await service.charger("wallbox-1")
    periods = (await again.wait_for_call("SetChargingProfile"))["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"]
    assert [p["limit"] for p in periods] == [8000, 6000]
    assert LIMIT_TOPIC not in sink._plans and other in sink._plans
    assert [r.exc_info[0] for r in caplog.records if r.getMessage().startswith("BEMcom: dropped the setpoint/schedule")] == [OverflowError]


# -- issue 13: what an existing BEMcom installation relies on ----------------------------------------


async def test_a_repeated_actuator_value_is_executed_each_time(service_factory, probe: MqttProbe) -> None:
    """The template executes every message: two identical TriggerMessage values are two requests."""
    service = await start(service_factory)
    sim = await service.charger("wallbox-1")
    topic = f"{CN}/messages/21/value"
    await install_map(probe, {}, {topic: "wallbox-1__execute_trigger_message__"})
    message = value_message(3)
    probe.publish(topic, message, qos=2)
    probe.publish(topic, message, qos=2)  # the very same payload
    await sim.wait_for_call("TriggerMessage")
    mark = probe.mark()
    probe.publish(topic, value_message(5), qos=2)  # the barrier: a different one after both
    await probe.wait_json("ocpp/wallbox-1/event", lambda d: d.get("requested_message") == "StatusNotification", since=mark)
    assert [p["requestedMessage"] for p in sim.calls("TriggerMessage")] == ["Heartbeat", "Heartbeat", "StatusNotification"]


async def test_debug_level_sends_debug_records_to_the_logs_topic(service_factory, probe: MqttProbe, caplog: pytest.LogCaptureFixture) -> None:
    """DEBUG=TRUE (log_level debug): the template publishes debug records on cn/logs too."""
    caplog.set_level(logging.DEBUG, logger="ocpp_addon")
    await service_factory(log_level="debug", bemcom={"enabled": True, "connector_name": CN})
    await install_map(probe, {}, {})
    logging.getLogger("ocpp_addon.bemcom").debug("debug marker %d", 7)
    record = await probe.wait_json(LOGS, lambda d: d["msg"] == "debug marker 7")
    assert record["level"] == logging.DEBUG and json.loads(await retained_payload(probe, LOGS))["level"] in (logging.DEBUG, logging.INFO)


async def test_every_datapoint_value_is_one_the_bemcom_api_can_store(service_factory, probe: MqttProbe) -> None:
    """The API saves float(value) if it can, else the text; float() of a list raises a TypeError it does not catch."""
    service = await start(service_factory)
    await service.charger("wallbox-1")
    topic = f"{CN}/messages/20/value"
    key = "wallbox-1__CompositeSchedule__charging_schedule__charging_schedule_period"
    await install_map(probe, {key: f"{CN}/messages/5/value"}, {topic: "wallbox-1__execute_get_composite_schedule__", LIMIT_TOPIC: LIMIT_KEY})
    probe.publish(LIMIT_TOPIC, value_message(11000), qos=2)  # a schedule to report
    await probe.wait_json("ocpp/wallbox-1/event", lambda d: d.get("status") == "Accepted" and d.get("limit") == 11000)
    probe.publish(topic, value_message(600), qos=2)
    periods = await probe.wait_json(f"{CN}/messages/5/value")
    available = await probe.wait_json(AVAILABLE, lambda d: key in d["sensor"])

    def storable(value: Any) -> bool:
        if value is None or isinstance(value, (bool, str)):
            return True
        try:
            float(value)
        except TypeError:
            return False
        return True

    assert storable(periods["value"]) and json.loads(periods["value"])[0]["start_period"] == 0
    assert [k for k, v in available["sensor"].items() if not storable(v)] == []


async def test_setpoints_and_schedules_are_left_to_bemcoms_controller_unless_asked_for(service_factory, probe: MqttProbe) -> None:
    """Off by default: with a BEMcom controller present there would be two writers."""
    service = await start(service_factory)
    sim = await service.charger("wallbox-1")
    trigger = f"{CN}/messages/21/value"
    await install_map(probe, {}, {LIMIT_TOPIC: LIMIT_KEY, trigger: "wallbox-1__execute_trigger_message__"})
    base = LIMIT_TOPIC.removesuffix("value")
    now = int(time.time() * 1000)
    probe.publish(base + "schedule", json.dumps({"schedule": [{"from_timestamp": None, "to_timestamp": None, "value": 9000}],
                                                 "timestamp": now}), retain=True, qos=2)
    probe.publish(base + "setpoint", json.dumps({"setpoint": [{"from_timestamp": None, "to_timestamp": None,
                                                               "preferred_value": 5000}], "timestamp": now}), retain=True, qos=2)
    probe.publish(trigger, value_message(3), qos=2)  # a barrier: handled after both
    await probe.wait_json("ocpp/wallbox-1/event", lambda d: d.get("requested_message") == "Heartbeat")
    probe.publish(LIMIT_TOPIC, value_message(7000), qos=2)  # what a controller would send: the only writer
    await probe.wait_json("ocpp/wallbox-1/event", lambda d: d.get("status") == "Accepted" and d.get("limit") == 7000)
    assert limits(sim) == [7000]


async def test_applied_setpoints_follow_the_controller_rule_with_null_flexibility(service_factory, probe: MqttProbe) -> None:
    """min_value/max_value present but null: BEMcom's controller sends the schedule's 9000, not the preferred 5000."""
    service = await start(service_factory, apply_setpoints=True)
    sim = await service.charger("wallbox-1")
    await install_map(probe, {}, {LIMIT_TOPIC: LIMIT_KEY})
    base = LIMIT_TOPIC.removesuffix("value")
    now = int(time.time() * 1000)
    probe.publish(base + "setpoint", json.dumps({"setpoint": [{"from_timestamp": None, "to_timestamp": None, "preferred_value": 5000,
                                                               "min_value": None, "max_value": None}], "timestamp": now}), retain=True, qos=2)
    await sim.wait_for_call("SetChargingProfile", lambda p: limit_of(p) == 5000)  # setpoint only: preferred_value
    probe.publish(base + "schedule", json.dumps({"schedule": [{"from_timestamp": None, "to_timestamp": None, "value": 9000}],
                                                 "timestamp": now}), retain=True, qos=2)
    await probe.wait_json("ocpp/wallbox-1/event", lambda d: d.get("status") == "Accepted" and d.get("limit") == 9000)
    assert limits(sim) == [5000, 9000]


async def test_the_controller_rule_judges_flexibility_on_the_configured_sensor(service_factory, probe: MqttProbe) -> None:
    """As BEMcom's controller: the schedule's value while the sensor is within the setpoint's range, else preferred."""
    service = await start(service_factory, apply_setpoints=True, controller_sensor="SoC__Percent")
    sim = await service.charger("wallbox-1")
    await install_map(probe, {}, {LIMIT_TOPIC: LIMIT_KEY})
    base = LIMIT_TOPIC.removesuffix("value")
    now = int(time.time() * 1000)
    probe.publish(base + "setpoint", json.dumps({"setpoint": [{"from_timestamp": None, "to_timestamp": None, "preferred_value": 5000,
                                                               "min_value": 20, "max_value": 80}], "timestamp": now}), retain=True, qos=2)
    await sim.wait_for_call("SetChargingProfile", lambda p: limit_of(p) == 5000)
    probe.publish(base + "schedule", json.dumps({"schedule": [{"from_timestamp": None, "to_timestamp": None, "value": 9000}],
                                                 "timestamp": now}), retain=True, qos=2)
    await sim.wait_for_call("SetChargingProfile", lambda p: limit_of(p) == 9000)  # no sensor value yet: the schedule's
    sim.options.soc = 90
    await sim.send_meter_values()  # SoC 90 is outside 20..80: preferred
    await sim.wait_for_call("SetChargingProfile", lambda p: limit_of(p) == 5000 and len(limits(sim)) == 3)
    sim.options.soc = 50
    await sim.send_meter_values()  # back within: the schedule's
    await probe.wait_json("ocpp/wallbox-1/event", lambda d: d.get("status") == "Accepted" and d.get("limit") == 9000 and len(limits(sim)) == 4)
    assert limits(sim) == [5000, 9000, 5000, 9000]


async def test_a_2_0_1_station_gets_datapoints_too(service_factory, probe: MqttProbe) -> None:
    """BEMcom datapoints for a 2.0.1 station: the same state keys as a 1.6 charger's, its own messages' fields,
    and the limit actuator drives it with a 2.0.1 SetChargingProfile."""
    service = await start(service_factory)
    sim = await service.charger("station-1", ocpp="2.0.1")
    await sim.send_meter_values()
    keys = ("station-1__state__power", "station-1__state__energy", "station-1__state__status",
            "station-1__StatusNotification__connector_status", "station-1__BootNotification__reason")
    available = await probe.wait_json(AVAILABLE, lambda d: all(k in d["sensor"] for k in keys))
    assert available["actuator"] == {f"station-1__{c}__": "0" for c in ALL_COMMANDS}
    limit_key = LIMIT_KEY.replace("wallbox-1", "station-1")
    await install_map(probe, {}, {LIMIT_TOPIC: limit_key})
    probe.publish(LIMIT_TOPIC, value_message("7000"), qos=2)
    request = await sim.wait_for_call("SetChargingProfile")
    schedule = request["chargingProfile"]["chargingSchedule"][0]
    assert (schedule["chargingRateUnit"], schedule["chargingSchedulePeriod"][0]["limit"]) == ("W", 7000)


# -- what a charger can make us publish ------------------------------------------------------------

BOOT = {"chargePointVendor": "ACME", "chargePointModel": "Box"}


async def raw_charger(service: Service, charger_id: str = "wallbox-1") -> Charger:
    """A charger sending raw frames (so also ones the simulator's own schema check would stop), booted."""
    charger = await Charger.connect(service.config["ocpp"]["port"], charger_id)
    assert (await charger.call("BootNotification", BOOT))[0] == 3
    return charger


async def test_frames_refused_by_the_schema_make_no_datapoints(service_factory, probe: MqttProbe) -> None:
    """The review's reproduction: StatusNotifications with invented keys, all answered FormationViolation,
    made 60,006 datapoints and 147.5 MB of available_datapoints. Only what the charge point accepts counts."""
    service = await start(service_factory)
    charger = await raw_charger(service)
    try:
        await probe.wait_json(AVAILABLE, lambda d: "wallbox-1__BootNotification__charge_point_vendor" in d["sensor"])
        status = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
        mark = probe.mark()
        for frame in range(3):
            answer = await charger.call("StatusNotification", {**status, **{f"invented_{frame}_{i}": 1 for i in range(100)}})
            assert answer[0] == 4 and answer[2] == "FormationViolation"
        sample = {"value": "1", "measurand": "Invented.Measurand", "phase": "L9", "unit": "furlongs"}
        answer = await charger.call("MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": "2025-01-01T00:00:00Z", "sampledValue": [sample]}]})
        assert answer[0] == 4
        # a valid frame with a new key: its available_datapoints comes after anything the refused ones caused
        assert (await charger.call("StatusNotification", status))[0] == 3
        await probe.wait_json(AVAILABLE, lambda d: "wallbox-1__StatusNotification__status" in d["sensor"], since=mark)
        for payload in [*(p for t, p, _ in probe.messages[mark:] if t == AVAILABLE), await retained_payload(probe, AVAILABLE)]:
            assert b"invented" not in payload and b"Invented" not in payload and b"furlongs" not in payload
        assert not [k for k in service.app.bemcom._sensors if "nvented" in k or "furlongs" in k]
    finally:
        await charger.close()


def every_meter_key() -> list[dict[str, str]]:
    """Schema-valid sampled values, each with its own measurand/phase/unit: 3,960 possible keys."""
    schema = json.loads((Path(ocpp_call.__file__).parent / "schemas" / "MeterValues.json").read_text(encoding="utf-8"))
    fields = schema["properties"]["meterValue"]["items"]["properties"]["sampledValue"]["items"]["properties"]
    return [{"value": "1", "measurand": m, "phase": p, "unit": u}
            for m in fields["measurand"]["enum"] for p in fields["phase"]["enum"] for u in fields["unit"]["enum"]]


async def test_a_charger_gets_at_most_max_datapoints_and_one_warning(service_factory, probe: MqttProbe,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Even schema-valid MeterValues can name thousands of measurand/phase/unit keys."""
    service = await start(service_factory)
    charger = await raw_charger(service)
    samples = every_meter_key()
    mark = probe.mark()
    try:
        for batch in (samples[:300], samples[300:600], samples[600:700]):
            meter_value = [{"timestamp": "2025-01-01T00:00:00Z", "sampledValue": batch}]
            assert (await charger.call("MeterValues", {"connectorId": 1, "meterValue": meter_value}))[0] == 3
        other = await raw_charger(service, "wallbox-2")  # its keys are a barrier: published after wallbox-1's
        await other.close()
        available = await probe.wait_json(AVAILABLE, lambda d: "wallbox-2__BootNotification__charge_point_vendor" in d["sensor"])
        from_frames = [k for k in available["sensor"] if k.startswith("wallbox-1__") and not k.startswith("wallbox-1__state__")]
        assert len(from_frames) == bemcom.MAX_DATAPOINTS
        assert "wallbox-1__state__connected" in available["sensor"]  # our own keys are not the charger's to use up
        # one publish per burst of new keys (a frame, a connect), not one per key: 6 here, 500 uncoalesced
        assert len([t for t, _, _ in probe.messages[mark:] if t == AVAILABLE]) < 20
        warnings = [r.getMessage() for r in caplog.records if "datapoints, the most one charger gets" in r.getMessage()]
        assert len(warnings) == 1 and warnings[0].startswith(f"BEMcom: wallbox-1 reached {bemcom.MAX_DATAPOINTS} datapoints")
    finally:
        await charger.close()
