"""The pure 2.0.1 translations: readings, status, transactions, capabilities, profile shape."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jsonschema
import ocpp.v201
import pytest
from ocpp.charge_point import snake_to_camel_case

from ocpp_addon import ocpp201
from ocpp_addon.profiles import build_set_charging_profile
from ocpp_addon.simulator import SimOptions
from ocpp_addon.simulator_v201 import SimulatedStation

SCHEMAS = Path(ocpp.v201.__file__).parent / "schemas"


def schema_errors(action: str, payload: dict[str, Any]) -> list[str]:
    schema = json.loads((SCHEMAS / f"{action}Request.json").read_text())
    return [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(payload)]


def test_sampled_values_are_scaled_by_their_multiplier_and_read_like_16() -> None:
    meter_value = [{"timestamp": "2025-12-07T12:00:00Z", "sampledValue": [
        {"value": 12.5, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "Wh", "multiplier": 3}},
        {"value": 7.4, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "kW"}},
        {"value": 16.02, "measurand": "Current.Import", "phase": "L1"},
        {"value": 15.9, "measurand": "Current.Import", "phase": "L2"},
        {"value": 80, "measurand": "SoC", "unitOfMeasure": {"unit": "Percent"}},
        {"value": 1, "measurand": "Voltage", "unitOfMeasure": {"unit": "V", "multiplier": 1e400}},  # refused
    ]}]
    values, newest = ocpp201.readings(json.loads(json.dumps(meter_value)))
    assert values["energy"] == pytest.approx(12.5)  # 12.5 * 10^3 Wh = 12.5 kWh
    assert values["power"] == pytest.approx(7400)
    assert values["current"] == pytest.approx(16.02) and values["current_l2"] == pytest.approx(15.9)
    assert values["soc"] == 80
    assert "voltage" not in values
    assert newest == datetime(2025, 12, 7, 12, tzinfo=timezone.utc)


def test_a_value_without_measurand_is_the_energy_register_as_in_16() -> None:
    values, _ = ocpp201.readings([{"timestamp": "2026-12-07T12:00:00Z", "sampledValue": [{"value": 4321}]}])
    assert values == {"energy": pytest.approx(4.321)}


@pytest.mark.parametrize(("connector", "charging", "ended", "shown"), [
    ("Available", None, False, "Available"),
    ("Faulted", "Charging", False, "Faulted"),
    ("Occupied", None, False, "Preparing"),
    ("Occupied", "EVConnected", False, "Preparing"),
    ("Occupied", "Charging", False, "Charging"),
    ("Occupied", "SuspendedEV", False, "SuspendedEV"),
    ("Occupied", "Charging", True, "Finishing"),
])
def test_connector_status_joins_status_and_charging_state(connector: str, charging: str | None, ended: bool, shown: str) -> None:
    assert ocpp201.connector_status(connector, charging, ended) == shown


def test_transaction_event_is_read_with_its_meter_values() -> None:
    update = ocpp201.parse_transaction_event({
        "eventType": "Ended", "timestamp": "2026-12-07T12:00:00Z", "triggerReason": "EVCommunicationLost", "seqNo": 9,
        "transactionInfo": {"transactionId": "tx-1", "chargingState": "EVConnected", "stoppedReason": "EVDisconnected"},
        "evse": {"id": 2, "connectorId": 1}, "idToken": {"idToken": "TAG-1", "type": "ISO14443"}, "offline": True,
        "meterValue": [{"timestamp": "2026-12-07T12:00:00Z", "sampledValue": [
            {"value": 5000, "context": "Transaction.End", "unitOfMeasure": {"unit": "Wh"}}]}],
    })
    assert (update.event_type, update.transaction_id, update.evse_id, update.stopped_reason) == ("Ended", "tx-1", 2, "EVDisconnected")
    assert update.id_token == "TAG-1" and update.offline and update.seq_no == 9
    assert update.readings == {"energy": 5.0}


@pytest.mark.parametrize(("options", "expected"), [
    (SimOptions(connectors=2, phases=3), {"smart_charging": True, "allowed_units": ["A", "W"], "number_of_connectors": 2,
                                          "evse_ids": [1, 2], "phases": 3, "dc": False, "max_stack_level": 8}),
    (SimOptions(phases=1, allowed_units=("W",), profile_status="NotSupported"),
     {"smart_charging": False, "allowed_units": ["W"], "number_of_connectors": 1, "phases": 1, "dc": False}),
])
def test_capabilities_from_the_simulators_report(options: SimOptions, expected: dict[str, Any]) -> None:
    station = SimulatedStation("s", None, options)
    caps = ocpp201.capabilities(ocpp201.report_rows(snake_to_camel_case(station.report_data())))  # camelCase, as it travels
    assert {k: caps[k] for k in expected} == expected
    assert caps["meter_values_sampled_data"][0] == "Energy.Active.Import.Register"


def test_a_dc_station_reports_supply_phases_zero() -> None:
    rows = [("EVSE", 1, "SupplyPhases", "0"), ("SmartChargingCtrlr", None, "Enabled", "True")]
    caps = ocpp201.capabilities(rows)
    assert caps["dc"] is True and "phases" not in caps and caps["smart_charging"] is True


def test_get_variables_results_only_accepted_ones_count() -> None:
    rows = list(ocpp201.variable_rows([
        {"attributeStatus": "Accepted", "attributeValue": "A", "component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "RateUnit"}},
        {"attributeStatus": "UnknownVariable", "component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "Entries"}},
    ]))
    assert rows == [("SmartChargingCtrlr", None, "RateUnit", "A")]
    assert ocpp201.capabilities(rows) == {"allowed_units": ["A"]}


TEMPLATE = {"purpose": "TxDefaultProfile", "kind": "Absolute", "stack_level": 1, "connector_id": 0}


@pytest.mark.parametrize(("template", "transaction"), [
    (TEMPLATE, None),
    ({**TEMPLATE, "purpose": "ChargePointMaxProfile"}, None),
    ({**TEMPLATE, "purpose": "TxProfile", "connector_id": 1}, "tx-9"),
    ({**TEMPLATE, "kind": "Recurring", "recurrency_kind": "Daily", "number_phases": 1}, None),
    ({**TEMPLATE, "kind": "Relative"}, None),
])
def test_the_16_request_reshaped_is_a_valid_201_request_with_the_same_numbers(template: dict[str, Any], transaction: str | None) -> None:
    request_16 = build_set_charging_profile(10.7, "A", template, transaction_id=1 if transaction else None,
                                            periods=[(0, 10.7), (3600, 6.0)])
    request = ocpp201.set_charging_profile_request(request_16, transaction_id=transaction)
    assert schema_errors("SetChargingProfile", request) == []
    profile = request["chargingProfile"]
    assert request["evseId"] == request_16["connectorId"]
    assert profile["chargingSchedule"][0]["chargingSchedulePeriod"] == request_16["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"]
    assert profile["chargingProfilePurpose"] == {"ChargePointMaxProfile": "ChargingStationMaxProfile"}.get(template["purpose"], template["purpose"])
    assert profile.get("transactionId") == transaction


def test_a_txprofile_without_the_stations_transaction_id_is_refused() -> None:
    request_16 = build_set_charging_profile(10, "A", {**TEMPLATE, "purpose": "TxProfile", "connector_id": 1}, transaction_id=1)
    with pytest.raises(ValueError):
        ocpp201.set_charging_profile_request(request_16)


def test_device_model_keys_name_every_part_and_only_identifier_strings() -> None:
    key = ocpp201.variable_key
    assert key({"name": "SampledDataCtrlr"}, {"name": "TxUpdatedInterval"}) == "SampledDataCtrlr.TxUpdatedInterval"
    assert key({"name": "EVSE", "evse": {"id": 2}}, {"name": "SupplyPhases"}) == "EVSE@2.SupplyPhases"
    assert key({"name": "Connector", "evse": {"id": 1, "connectorId": 2}}, {"name": "ConnectorType"}) == "Connector@1/2.ConnectorType"
    assert key({"name": "OCPPCommCtrlr", "instance": "Main"}, {"name": "MessageTimeout", "instance": "Default"}) == \
        "OCPPCommCtrlr[Main].MessageTimeout[Default]"
    # A vendor string that is not an identifierString (spaces, markup, quotes, too long) is not offered as a key.
    for component, variable in (({"name": "Meter Ctrl"}, {"name": "X"}), ({"name": "<b>"}, {"name": "X"}),
                                ({"name": "A"}, {"name": "x\"y"}), ({"name": "A" * 51}, {"name": "X"}),
                                ({"name": "EVSE", "evse": {"id": "1"}}, {"name": "X"}), ({"name": 5}, {"name": "X"})):
        assert key(component, variable) is None


def test_the_simulators_full_report_becomes_keys_with_values_and_mutability() -> None:
    sim = SimulatedStation("station-1", connection=None, options=SimOptions(connectors=2, phases=1))
    report = [json.loads(json.dumps(snake_to_camel_case(row))) for row in sim.report_data()]
    variables = ocpp201.device_variables(report + ["junk", {"component": {"name": "X"}}])
    assert len(variables) == len(sim.device_model)
    interval = variables["SampledDataCtrlr.TxUpdatedInterval"]
    assert (interval.value, interval.readonly) == (str(int(sim.options.meter_interval)), False)
    phases = variables["EVSE@2.SupplyPhases"]
    assert (phases.value, phases.readonly, phases.component) == ("1", True, {"name": "EVSE", "evse": {"id": 2}})


def test_only_the_names_the_station_sent_go_back_in_set_variables() -> None:
    item = {"component": {"name": "EVSE", "evse": {"id": 1, "connectorId": 1, "extra": "x"}, "customData": {"vendorId": "v"}},
            "variable": {"name": "Power", "customData": {"vendorId": "v"}},
            "variableAttribute": [{"type": "Target", "value": "1"}, {"type": "Actual", "value": "7400", "mutability": "ReadOnly"}]}
    only_target = {"component": {"name": "A"}, "variable": {"name": "B"}, "variableAttribute": [{"type": "MaxSet", "value": "3"}]}
    variables = ocpp201.device_variables([item, only_target])
    assert list(variables) == ["EVSE@1/1.Power"]
    power = variables["EVSE@1/1.Power"]
    assert power.component == {"name": "EVSE", "evse": {"id": 1, "connectorId": 1}} and power.variable == {"name": "Power"}
    assert (power.value, power.readonly) == ("7400", True)


def _corpus_payloads(vendor: str, action: str) -> list[dict[str, Any]]:
    path = Path(__file__).parent / "data" / "charger-traces-201" / "frames.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    frames = [line.get("frame") or line.get("reconstructed_frame") for line in lines
              if line["vendor"] == vendor and line["action"] == action and line["direction"] == "cp->cs"]
    return [frame[3] for frame in frames if frame]


def test_keba_signed_kwh_repeats_and_plus_0000_offsets_read_as_the_wh_register() -> None:
    """KEBA P30 (m-hegele/notes): the register in Wh, then again OCMF-signed in kWh without a unit, '+0000' stamps."""
    started, ended = (ocpp201.parse_transaction_event(p) for p in _corpus_payloads("KEBA", "TransactionEvent"))
    assert started.readings["energy"] == pytest.approx(2114.1356)  # 2,114,135.6 Wh, no unit given: Wh by default
    assert started.sampled_at == datetime(2025, 8, 21, 7, 3, 36, 481000, tzinfo=timezone.utc)
    # Not the signed 2133.8543 (kWh, read as Wh: 2.13 kWh), not a sum: the newest Wh register.
    assert ended.readings["energy"] == pytest.approx(2133.8543)
    assert (ended.event_type, ended.stopped_reason, ended.transaction_id) == ("Ended", "EVDisconnected", "SERIAL-1250821070333100549825004")
