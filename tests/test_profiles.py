"""Pure functions: setpoint/schedule -> SetChargingProfile, A<->W, the fallback ladder."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from ocpp.messages import Call, _validate_payload

from ocpp_addon import config as cfg
from ocpp_addon.profiles import (
    Attempt,
    SetpointError,
    build_set_charging_profile,
    check_limit,
    convert_limit,
    limit_now,
    parse_schedule,
    plan_attempts,
    round_limit,
)

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=timezone.utc)
CHARGING = cfg.validate({})["charging"]
TEMPLATE = CHARGING["profile"]


def library_accepts(payload: dict) -> None:
    """The ocpp library's own jsonschema validation of a SetChargingProfile CALL (raises if invalid)."""
    _validate_payload(Call("1", "SetChargingProfile", payload), "1.6")


def test_default_profile_shape_and_schema() -> None:
    payload = build_set_charging_profile(16, "A", TEMPLATE, now=NOW)
    library_accepts(payload)
    profile = payload["csChargingProfiles"]
    assert payload["connectorId"] == 0
    assert (profile["chargingProfilePurpose"], profile["chargingProfileKind"], profile["stackLevel"]) == ("TxDefaultProfile", "Absolute", 0)
    assert profile["chargingSchedule"] == {
        "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16}], "startSchedule": "2026-11-26T11:59:00Z"}


@pytest.mark.parametrize("purpose", ["TxDefaultProfile", "ChargePointMaxProfile", "TxProfile"])
@pytest.mark.parametrize("kind", ["Absolute", "Relative", "Recurring"])
@pytest.mark.parametrize("unit", ["A", "W"])
def test_every_variant_passes_the_library_schema(purpose: str, kind: str, unit: str) -> None:
    template = {**TEMPLATE, "purpose": purpose, "kind": kind, "connector_id": 1, "number_phases": 3}
    payload = build_set_charging_profile(7.3 if unit == "A" else 11040.7, unit, template, now=NOW, transaction_id=42)
    library_accepts(payload)
    profile = payload["csChargingProfiles"]
    assert ("startSchedule" in profile["chargingSchedule"]) == (kind != "Relative")
    assert ("transactionId" in profile) == (purpose == "TxProfile")
    assert payload["connectorId"] == (0 if purpose == "ChargePointMaxProfile" else 1)


def test_tx_profile_needs_a_transaction() -> None:
    with pytest.raises(SetpointError, match="running transaction"):
        build_set_charging_profile(10, "A", {**TEMPLATE, "purpose": "TxProfile"}, now=NOW)


def test_profile_ids_are_stable_and_distinct_per_connector_and_purpose() -> None:
    ids = {
        build_set_charging_profile(v, "A", {**TEMPLATE, "connector_id": c, "purpose": p}, now=NOW)["csChargingProfiles"]["chargingProfileId"]
        for v in (6, 16) for c in (1, 2) for p in ("TxDefaultProfile", "ChargePointMaxProfile")
    }
    assert len(ids) == 3  # same id for every value; ChargePointMaxProfile is always connector 0


def test_conversion_and_rounding() -> None:
    assert convert_limit(16, "A", "W", 230, 3) == 11040
    assert convert_limit(11040, "W", "A", 230, 3) == 16
    assert convert_limit(7400, "W", "A", 230, 1) == pytest.approx(32.17, abs=0.01)
    assert round_limit(6.25) == 6.2 and round_limit(16.0) == 16 and round_limit(0.3) == 0.3
    library_accepts(build_set_charging_profile(convert_limit(7400, "W", "A", 231.7, 1), "A", TEMPLATE, now=NOW))


def test_range() -> None:
    check_limit(0, "A", CHARGING)
    check_limit(32, "A", CHARGING)
    check_limit(22080, "W", CHARGING)  # = 32 A at 230 V x 3
    for bad, unit in ((33, "A"), (-1, "A"), (30000, "W"), (float("nan"), "A"), (10, "kW")):
        with pytest.raises(SetpointError):
            check_limit(bad, unit, CHARGING)


def test_schedule_periods_are_relative_to_the_first_entry() -> None:
    start, periods = parse_schedule([{"start": 3600, "limit": 8}, {"start": 0, "limit": 16}], NOW)
    assert start == NOW and periods == [(0, 16), (3600, 8)]
    start, periods = parse_schedule([{"start": "2026-11-26T14:00:00Z", "limit": 6}, {"start": "2026-11-26T13:00:00Z", "limit": 10}], NOW)
    assert start == NOW.replace(hour=13) and periods == [(0, 10), (3600, 6)]
    # an entry already in force starts the schedule now, older ones are dropped
    start, periods = parse_schedule([{"start": -7200, "limit": 6}, {"start": -60, "limit": 12}, {"start": 600, "limit": 16}], NOW)
    assert start == NOW and periods == [(0, 12), (600, 16)]
    assert limit_now(periods, start, NOW + timedelta(seconds=700)) == 16
    payload = build_set_charging_profile(periods[0][1], "A", TEMPLATE, periods=periods, start=start)
    library_accepts(payload)
    assert payload["csChargingProfiles"]["chargingSchedule"]["startSchedule"] == "2026-11-26T12:00:00Z"


@pytest.mark.parametrize("entries", [[], {}, [{"start": 0}], [{"start": True, "limit": 6}], [{"start": "soon", "limit": 6}],
                                     [{"start": 0, "limit": -1}], [{"start": 1e12, "limit": 6}],
                                     [{"start": "9999-12-31T23:00:00-14:00", "limit": 16}], [{"start": "0001-01-01T00:00:00+14:00", "limit": 16}]])
def test_bad_schedules(entries: object) -> None:
    with pytest.raises(SetpointError):
        parse_schedule(entries, NOW)


def test_schedule_respects_max_periods() -> None:
    with pytest.raises(SetpointError, match="at most 2"):
        parse_schedule([{"start": i * 60, "limit": 6 + i} for i in range(3)], NOW, max_periods=2)


def test_ladder_order_and_learned_strategy_first() -> None:
    ladder = plan_attempts(TEMPLATE, "A", {}, [1, 2])
    assert ladder[0] == Attempt("TxDefaultProfile", (0,), "Absolute", 0, "A")
    assert ladder[1] == Attempt("TxDefaultProfile", (1, 2), "Absolute", 0, "A")
    assert ladder[2] == Attempt("ChargePointMaxProfile", (0,), "Absolute", 0, "A")
    assert Attempt("TxDefaultProfile", (0,), "Relative", 0, "A") in ladder
    assert ladder[-1].unit == "W"  # the other unit, only because the charger did not say
    learned = Attempt("ChargePointMaxProfile", (0,), "Relative", 0, "A")
    assert plan_attempts(TEMPLATE, "A", {}, [1], learned=learned)[0] == learned
    assert plan_attempts(TEMPLATE, "A", {}, [1], fallback=False) == [ladder[0]]


def test_ladder_uses_capabilities() -> None:
    w_only = plan_attempts(TEMPLATE, "A", {"allowed_units": ["W"]}, [1])
    assert {a.unit for a in w_only} == {"W"}
    capped = plan_attempts({**TEMPLATE, "stack_level": 5}, "A", {"max_stack_level": 2}, [1])
    assert capped[0].stack_level == 2 and capped[-1].stack_level in (0, 2)
    tx = plan_attempts({**TEMPLATE, "purpose": "TxProfile"}, "A", {}, [1, 2], transaction_connector=2)
    assert tx[0].connector_ids == (2,) and all(a.purpose == "TxProfile" for a in tx)
