"""Meter-value parsing: units, phases, quirks seen in real chargers."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocpp_addon.state import (
    BOUNDARY_CONTEXTS,
    DEFAULT_MEASURAND,
    MEASURANDS,
    _convert,
    _phase_suffix,
    kinds_supersede,
    parse_meter_values,
    parse_number,
    parse_sampled_values,
    parse_timestamp,
    reading_kinds,
)


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


# --- the cached reading path gives what the straightforward one gave ------------------------------

def reference_parse_sampled_values(sampled: list) -> dict:
    """parse_sampled_values before the per-kind cache (commit 992471c): the oracle."""
    readings: dict = {}
    from_boundary: set = set()
    for sample in sampled:
        if not isinstance(sample, dict):
            continue
        known = MEASURANDS.get(sample.get("measurand") or DEFAULT_MEASURAND)
        if known is None:
            continue
        key, target = known
        number = parse_number(sample.get("value"))
        if number is None:
            continue
        converted = _convert(number, sample.get("unit"), target)
        if converted is None:
            continue
        full_key = key + _phase_suffix(sample.get("phase"))
        boundary = sample.get("context") in BOUNDARY_CONTEXTS
        if boundary and full_key in readings and full_key not in from_boundary:
            continue
        if boundary:
            from_boundary.add(full_key)
        else:
            from_boundary.discard(full_key)
        readings[full_key] = round(converted, 6)
    currents = [readings[f"current_{p}"] for p in ("l1", "l2", "l3") if f"current_{p}" in readings]
    if "current" not in readings and currents:
        readings["current"] = max(currents)
    elif "current" not in readings and "current_n" in readings:
        readings["current"] = readings["current_n"]
    powers = [readings[f"power_{p}"] for p in ("l1", "l2", "l3") if f"power_{p}" in readings]
    if "power" not in readings and powers:
        readings["power"] = round(sum(powers), 6)
    volts = [readings[f"voltage_{p}"] for p in ("l1", "l2", "l3") if f"voltage_{p}" in readings]
    if "voltage" not in readings and volts:
        readings["voltage"] = round(sum(volts) / len(volts), 3)
    return readings


def maybe(values: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), values)


VALUES = st.one_of(
        st.floats(-1e6, 1e6).map(lambda x: f"{x:.3f}"), st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.booleans(),
        st.sampled_from(["", " 12.5 ", "1_9", "nan", "inf", "1e400", "\u0661\u0662", "+.5", "5.", "-0", "1e3", "x" * 101,
                         "\x1c5", "5\x1f", "\t7\n", "Infinity", "-nan", "1e", ".", "0x10", "5\u00a0",
                         # around the 7 characters read without round(): exponents, 6 and 7 decimals, 7 digits
                         "1e-7", "5E-7", "1e5", ".123456", "0.1234567", "1.00001", "9999999", "-999999", "1234567.", "0.000001",
                         "0.0000001", "-0.0000005", " 1.5e-9", "\t1e-7"]),
        st.text(max_size=6), st.text(alphabet="0123456789.eE+- ", max_size=9),
        st.decimals(allow_nan=False, allow_infinity=False, places=7).map(str))
SAMPLES = st.lists(st.one_of(st.fixed_dictionaries({}, optional={
    "value": VALUES,
    "measurand": maybe(st.one_of(st.sampled_from(sorted(MEASURANDS)), st.just(""), st.text(max_size=5))),
    "unit": maybe(st.one_of(st.sampled_from(["Wh", "kWh", " KWH ", "W", "kW", "A", "V", "varh", "kvar", "var", "Percent", "Celsius", "Fahrenheit",
                                             "K", "Kelvin", "c", "", "mA"]), st.text(max_size=4))),
    "phase": maybe(st.one_of(st.sampled_from(["L1", "L2", "L3", "N", "L1-N", "l2-n", "L1-L2", "L3-L1", " L1 ", "L1-L4", ""]), st.text(max_size=5))),
    "context": maybe(st.sampled_from(["Sample.Periodic", "Transaction.Begin", "Transaction.End", "Sample.Clock"])),
}), st.none(), st.just("x")), max_size=12)


@settings(max_examples=500, deadline=None)
@given(sampled=SAMPLES)
def test_cached_readings_equal_the_straightforward_ones(sampled: list) -> None:
    expected = reference_parse_sampled_values(sampled)
    got = parse_sampled_values(sampled)
    assert got == expected and list(got) == list(expected)


def reference_parse_timestamp(value: Any) -> Any:
    """parse_timestamp before its fast path for '...Z' (commit 5407d07): the oracle."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


TIMESTAMPS = st.one_of(
    st.datetimes(timezones=st.one_of(st.none(), st.timezones())).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"),
    st.lists(st.sampled_from(["2024", "-05", "-01", "T", "10", ":00", ".5", "Z", "z", "+02:00", " ", "+00:00", "24", "\u0661"]), max_size=9).map("".join),
    st.text(max_size=30).map(lambda t: t + "Z"), st.integers(), st.none())


@settings(max_examples=1000, deadline=None)
@given(value=TIMESTAMPS)
def test_timestamps_read_as_before_the_fast_path(value: Any) -> None:
    got, expected = parse_timestamp(value), reference_parse_timestamp(value)
    assert got == expected and (got is None or (got.utcoffset(), got.tzinfo is not None) == (expected.utcoffset(), True))


@pytest.mark.parametrize("value", ["1e-7", "1E-7", "5e-7", "5E-7", ".1234567", "0.1234567", "1234567.1", "1.5e-9"])
def test_values_that_need_rounding_are_rounded(value: str) -> None:
    """Values of up to 7 characters are read without round() unless an exponent or a 7th decimal needs it."""
    sampled = [{"value": value, "measurand": "Current.Import"}, {"value": value, "measurand": "Power.Active.Import", "unit": "W"}]
    assert parse_sampled_values(sampled) == reference_parse_sampled_values(sampled)


def supersedes(newer: Any, older: Any) -> bool:
    """Whether reading MeterValues ``older`` and then ``newer`` may be left to reading ``newer`` alone."""
    return kinds_supersede(reading_kinds(newer), reading_kinds(older))


def meter_value(sampled: list, timestamp: str = "2026-12-07T10:00:00Z") -> list:
    return [{"timestamp": timestamp, "sampledValue": sampled}]


@settings(max_examples=2000, deadline=None)
@given(older=SAMPLES, data=st.data())
def test_a_superseding_meter_value_gives_again_every_reading_the_older_one_gave(older: list, data: st.DataObject) -> None:
    """What holding readings relies on (ChargePoint.on_meter_values): reading the older one first changes nothing."""
    newer = [dict(s, value=data.draw(VALUES)) if isinstance(s, dict) and data.draw(st.booleans()) else s for s in older]
    if supersedes(meter_value(newer), meter_value(older)):
        new_readings = parse_sampled_values(newer)
        assert {**parse_sampled_values(older), **new_readings} == new_readings


def test_supersedes_needs_the_same_kinds_in_order_and_a_time_not_older() -> None:
    power, energy = sv("7000", "Power.Active.Import", "kW"), sv("1000", "Energy.Active.Import.Register", "Wh")
    older = meter_value([power, energy])
    assert supersedes(meter_value([dict(power, value="7100"), dict(energy, value="1001")]), older)
    assert not supersedes(meter_value([energy, power]), older)  # another order
    assert not supersedes(meter_value([power]), older)  # fewer
    assert not supersedes(meter_value([dict(power, unit="W"), energy]), older)  # another unit may not read where kW did
    assert not supersedes(meter_value([dict(power, value="n/a"), energy]), older)  # the older power would be lost
    assert not supersedes(meter_value([dict(power, value="1e308"), energy]), older)  # x 1000 W/kW: not finite
    assert not supersedes(meter_value([dict(power, phase="L1"), energy]), older)  # another key
    assert not supersedes(meter_value([power, energy], "2026-12-07T09:59:59Z"), older)  # an older time: a replay
    assert not supersedes(meter_value([power, energy], "soon"), older)
    assert not supersedes(meter_value([power, energy]) * 2, older)  # two entries: read in time order
    assert not supersedes({"timestamp": "2026-12-07T10:00:00Z", "sampledValue": [power, energy]}, older)
