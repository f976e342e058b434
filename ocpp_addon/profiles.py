"""Setpoint -> SetChargingProfile request (pure).

The profile shape comes from the template (``charging.profile`` in the config,
or BEMcom's ``OCPP_PROFILE``); only the limit changes per setpoint. The profile id
is stable per (purpose, stack level), so each new setpoint *replaces* our previous
profile on the charger instead of piling up new ones (OCPP 1.6 §3.13.2: a profile
with the same id replaces the old one).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from .state import iso_z

# Our profile ids live in a recognisable range so that they never collide with
# profiles installed by another central system or the manufacturer.
PROFILE_ID_BASE = 4200
_PURPOSE_OFFSET = {"TxDefaultProfile": 0, "ChargePointMaxProfile": 100, "TxProfile": 200}
START_SCHEDULE_OFFSET = timedelta(minutes=1)


class SetpointError(ValueError):
    """A setpoint that must not reach a charger: the message says why and what is allowed."""


def convert_limit(limit: float, unit: str, target: str, voltage: float, phases: int) -> float:
    """Convert between amps (per phase) and watts (total) with P = U x I x phases."""
    if unit == target:
        return limit
    if unit == "A" and target == "W":
        return limit * voltage * phases
    if unit == "W" and target == "A":
        return limit / (voltage * phases)
    raise SetpointError(f"cannot convert {unit!r} to {target!r}; allowed units are A and W")


def check_limit(limit: float, unit: str, charging: Mapping[str, Any]) -> None:
    """Refuse a setpoint outside the configured range. 0 is always allowed: it pauses charging.

    The range is in the slider's unit (``charging.unit``); a setpoint in the other
    unit is converted with the configured voltage and phase count first.
    """
    if unit not in ("A", "W"):
        raise SetpointError(f"unit {unit!r} is not allowed; use 'A' or 'W'")
    if not math.isfinite(limit):
        raise SetpointError(f"{limit!r} is not a finite number")
    if limit == 0:
        return
    in_slider_unit = convert_limit(limit, unit, charging["unit"], charging["voltage"], charging["phases"])
    low, high = charging["min"], charging["max"]
    if in_slider_unit < low - 1e-9 or in_slider_unit > high + 1e-9:
        raise SetpointError(
            f"{limit:g} {unit} is out of range; allowed: 0 (pause) or {low:g}..{high:g} {charging['unit']}"
        )


def round_limit(limit: float) -> float:
    """OCPP 1.6 limits are decimals with one digit after the point (the schema's multipleOf 0.1).

    Rounded down so a converted limit never exceeds what the user asked for.
    """
    return math.floor(limit * 10 + 1e-9) / 10


def profile_id(template: Mapping[str, Any]) -> int:
    """Stable id per purpose and stack level, unless the template fixes one."""
    if template.get("profile_id"):
        return int(template["profile_id"])
    return PROFILE_ID_BASE + _PURPOSE_OFFSET.get(template["purpose"], 300) + int(template["stack_level"])


def build_set_charging_profile(
    limit: float,
    unit: str,
    template: Mapping[str, Any],
    now: datetime | None = None,
    transaction_id: int | None = None,
) -> dict[str, Any]:
    """Return the SetChargingProfile.req payload (camelCase, ready for the wire).

    ``limit`` must already be in ``unit``, the unit sent to the charger.
    Absolute profiles start one minute in the past so that a charger whose clock
    lags slightly still applies the limit immediately.
    """
    now = now or datetime.now(timezone.utc)
    schedule: dict[str, Any] = {
        "chargingRateUnit": unit,
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": round_limit(limit)}],
    }
    if template.get("number_phases"):
        schedule["chargingSchedulePeriod"][0]["numberPhases"] = int(template["number_phases"])
    kind = template["kind"]
    if kind in ("Absolute", "Recurring"):
        schedule["startSchedule"] = iso_z(now - START_SCHEDULE_OFFSET)
    if kind == "Recurring":
        schedule["duration"] = 86400 if template["recurrency_kind"] == "Daily" else 7 * 86400
    profile: dict[str, Any] = {
        "chargingProfileId": profile_id(template),
        "stackLevel": int(template["stack_level"]),
        "chargingProfilePurpose": template["purpose"],
        "chargingProfileKind": kind,
        "chargingSchedule": schedule,
    }
    if kind == "Recurring":
        profile["recurrencyKind"] = template["recurrency_kind"]
    if template["purpose"] == "TxProfile":
        if transaction_id is None:
            raise SetpointError("a TxProfile needs a running transaction; none is active")
        profile["transactionId"] = transaction_id
    connector_id = int(template["connector_id"])
    if template["purpose"] == "ChargePointMaxProfile":
        connector_id = 0  # the spec allows this purpose on connector 0 only
    return {"connectorId": connector_id, "csChargingProfiles": profile}
