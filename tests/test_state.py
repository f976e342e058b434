"""Meter-value parsing: units, phases, quirks seen in real chargers."""

from __future__ import annotations

from ocpp_addon.state import parse_meter_values, parse_number, parse_sampled_values, parse_timestamp


def sv(value: object, measurand: str | None = None, unit: str | None = None, phase: str | None = None) -> dict:
    sample: dict = {"value": value}
    for key, v in (("measurand", measurand), ("unit", unit), ("phase", phase)):
        if v is not None:
            sample[key] = v
    return sample


def test_defaults_are_energy_register_in_wh() -> None:
    assert parse_sampled_values([sv("12345")]) == {"energy": 12.345}


def test_units_are_normalised() -> None:
    readings = parse_sampled_values([
        sv("7.4", "Power.Active.Import", "kW"), sv("3.2", "Energy.Active.Import.Register", "kWh"),
        sv("77", "Temperature", "Fahrenheit"), sv("55", "SoC", "Percent"),
    ])
    assert readings["power"] == 7400 and readings["energy"] == 3.2 and readings["soc"] == 55
    assert abs(readings["temperature"] - 25.0) < 1e-6


def test_phases_and_derived_totals() -> None:
    readings = parse_sampled_values([
        sv("16", "Current.Import", "A", "L1"), sv("15", "Current.Import", "A", "L2-N"), sv("14", "Current.Import", "A", "L3"),
        sv("230", "Voltage", "V", "L1-N"), sv("232", "Voltage", "V", "L2-N"), sv("400", "Voltage", "V", "L1-L2"),
        sv("3680", "Power.Active.Import", "W", "L1"), sv("3450", "Power.Active.Import", "W", "L2"),
    ])
    assert (readings["current_l1"], readings["current_l2"], readings["current_l3"]) == (16, 15, 14)
    assert readings["current"] == 16  # highest phase: what a limit in A applies to
    assert readings["voltage_l1_l2"] == 400 and readings["voltage"] == 231
    assert readings["power"] == 7130


def test_quirks_survive() -> None:
    readings = parse_sampled_values([
        sv(" 12.5", "Current.Offered", "A"),  # leading space
        sv(21.5, "Temperature", "Celcius"),  # number, misspelt unit
        sv("x", "Power.Active.Import", "W"),  # not a number: skipped
        sv("1", "Power.Active.Import", "parsecs"),  # unknown unit: skipped
        sv("1", "Something.Vendor"),  # unknown measurand: skipped
        sv("nan", "Voltage", "V"),
    ])
    assert readings == {"current_offered": 12.5, "temperature": 21.5}


def test_entries_are_applied_in_time_order_and_object_form_accepted() -> None:
    newer = {"timestamp": "2024-05-01T10:00:10Z", "sampled_value": [sv("2000")]}
    older = {"timestamp": "2024-05-01T10:00:00Z", "sampled_value": [sv("1000")]}
    assert parse_meter_values([newer, older]) == {"energy": 2.0}
    assert parse_meter_values(older) == {"energy": 1.0}
    assert parse_meter_values("garbage") == {}


def test_number_and_timestamp_parsing() -> None:
    assert parse_number("1e3") == 1000 and parse_number(True) is None and parse_number("inf") is None
    assert parse_timestamp("2024-05-01T10:00:00").tzinfo is not None  # no zone: UTC
    assert parse_timestamp("2024-05-01T10:00:00+02:00").hour == 10
    assert parse_timestamp("yesterday") is None
