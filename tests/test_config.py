"""Config validation: defaults, precise errors, BEMcom environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from ocpp_addon import config as cfg


def test_defaults_fill_everything() -> None:
    config = cfg.validate({})
    assert config["ocpp"]["port"] == 9000 and config["ocpp"]["host"] == "0.0.0.0"
    assert config["mqtt"]["host"] == "localhost" and config["mqtt"]["port"] == 1883
    assert config["mqtt"]["base_topic"] == "ocpp" and config["mqtt"]["discovery_prefix"] == "homeassistant"
    assert config["charging"]["unit"] == "A" and (config["charging"]["max"], config["charging"]["step"]) == (32, 1)
    assert config["charging"]["profile"]["purpose"] == "TxDefaultProfile"
    assert config["charging"]["profile"]["kind"] == "Absolute"


def test_watt_unit_gets_watt_defaults() -> None:
    charging = cfg.validate({"charging": {"unit": "W"}})["charging"]
    assert (charging["max"], charging["step"]) == (22000, 100)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"mqtt": {"port": 70000}}, "mqtt.port = 70000: value must be at most 65535"),
        ({"mqtt": {"port": "abc"}}, "mqtt.port = 'abc'"),
        ({"ocpp": {"port": 0}}, "ocpp.port = 0"),
        ({"charging": {"unit": "kW"}}, "charging.unit = 'kW': value must be one of ['A', 'W']"),
        ({"charging": {"profile": {"purpose": "Max"}}}, "charging.profile.purpose = 'Max'"),
        ({"charging": {"profile": {"stack_level": -1}}}, "charging.profile.stack_level = -1"),
        ({"log_level": "loud"}, "log_level = 'loud'"),
        ({"mqtt": {"base_topic": "ocpp/#"}}, "mqtt.base_topic = 'ocpp/#'"),
        ({"mqtt": {"prot": 1}}, "mqtt.prot: unknown key; allowed keys here:"),
        ({"charging": {"min": 20, "max": 10}}, "charging.min = 20.0: must be below charging.max"),
        ({"charging": {"max": "nan"}}, "charging.max = 'nan'"),
        ({"ocpp": {"ssl_certfile": "/ssl/cert.pem"}}, "ocpp.ssl_certfile/ssl_keyfile"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_errors_name_key_value_and_allowed(data: object, expected: str) -> None:
    with pytest.raises(cfg.ConfigError) as err:
        cfg.validate(data)  # type: ignore[arg-type]
    assert expected in str(err.value)


def test_broken_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("ocpp:\n  port: 9000\n mqtt: [\n", encoding="utf-8")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path, env={})
    assert str(path) in str(err.value) and "line 3" in str(err.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(cfg.ConfigError, match="cannot read"):
        cfg.load(tmp_path / "nope.yaml", env={})


def test_bemcom_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("mqtt: {host: broker.lan, port: 1883}\n", encoding="utf-8")
    env = {
        "CONNECTOR_NAME": "ocpp-connector", "MQTT_BROKER_HOST": "mqtt.example", "MQTT_BROKER_PORT": "1884",
        "DEBUG": "TRUE", "OCPP_PORT": "9100", "SEND_RAW_MESSAGE_TO_DB": "TRUE",
        "OCPP_CONFIG": '["execute_send_charging_profile", "execute_trigger_message"]',
        "OCPP_PROFILE": '{"chargingProfileId":0,"stackLevel":5,"chargingProfileKind":"Absolute","chargingProfilePurpose":"TxDefaultProfile",'
                        '"chargingSchedule":{"startSchedule":"now","chargingRateUnit":"W","chargingSchedulePeriod":[{"startPeriod":0,"limit":5000.1}]}}',
    }
    config = cfg.load(path, env=env)
    assert (config["mqtt"]["host"], config["mqtt"]["port"], config["ocpp"]["port"]) == ("mqtt.example", 1884, 9100)
    assert config["log_level"] == "debug"
    assert config["bemcom"]["enabled"] and config["bemcom"]["connector_name"] == "ocpp-connector"
    assert config["bemcom"]["send_raw_message_to_db"] is True
    assert config["bemcom"]["actuators"] == ["execute_send_charging_profile", "execute_trigger_message"]
    profile = config["charging"]["profile"]
    assert (profile["stack_level"], profile["unit"], profile["kind"], profile["purpose"]) == (5, "W", "Absolute", "TxDefaultProfile")
    assert profile["profile_id"] is None  # BEMcom's placeholder 0 -> our stable id


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OCPP_CONFIG": "execute_send_charging_profile"}, "OCPP_CONFIG = 'execute_send_charging_profile': expected a JSON array"),
        ({"OCPP_CONFIG": '[1, 2]'}, "OCPP_CONFIG = [1, 2]"),
        ({"OCPP_PROFILE": "{not json"}, "OCPP_PROFILE = '{not json': not valid JSON"),
        ({"OCPP_PROFILE": '"TxDefaultProfile"'}, "OCPP_PROFILE: expected a JSON object"),
        ({"OCPP_PROFILE": '{"stackLevel": -2}'}, "OCPP_PROFILE.stack_level = -2"),
        ({"MQTT_BROKER_PORT": "x"}, "mqtt.port = 'x'"),
    ],
)
def test_bad_environment_variables_name_the_variable(env: dict[str, str], expected: str) -> None:
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(None, env=env)
    assert expected in str(err.value)


def test_redacted_hides_passwords() -> None:
    config = cfg.validate({"mqtt": {"username": "u", "password": "hunter2"}})
    assert "hunter2" not in repr(cfg.redacted(config))
