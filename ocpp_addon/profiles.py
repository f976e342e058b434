"""Setpoints and schedules -> SetChargingProfile requests, and the fallback ladder (pure).

The profile shape comes from the template (``charging.profile`` in the config, or
BEMcom's ``OCPP_PROFILE``); only the limit changes per setpoint. Profile ids are
stable per (purpose, connector, stack level), so each new setpoint *replaces* our
previous profile on the charger instead of piling up new ones (OCPP 1.6 §3.13.2:
a profile with the same id replaces the old one).

Real chargers reject perfectly valid profiles for their own reasons (connector 0,
a purpose, a kind, a stack level, a unit: see reference/ocpp-smart-charging.md).
:func:`plan_attempts` orders the variants to try, most faithful to the template
first; the charge point walks them until one is accepted and remembers it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping, Sequence

from .state import iso_z, parse_number, parse_timestamp

PROFILE_ID_BASE = 42000  # a recognisable range, clear of ids other systems use
_PURPOSE_INDEX = {"TxDefaultProfile": 0, "ChargePointMaxProfile": 1, "TxProfile": 2}
START_SCHEDULE_OFFSET = timedelta(minutes=1)
UNITS = ("A", "W")


class SetpointError(ValueError):
    """A setpoint that must not reach a charger: the message says why and what is allowed."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One way of installing a limit: purpose, connectors, kind, stack level, unit."""

    purpose: str
    connector_ids: tuple[int, ...]
    kind: str
    stack_level: int
    unit: str

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["connector_ids"] = list(self.connector_ids)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attempt:
        return cls(data["purpose"], tuple(data["connector_ids"]), data["kind"], int(data["stack_level"]), data["unit"])


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
    if unit not in UNITS:
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


def profile_id(purpose: str, connector_id: int, stack_level: int, fixed: int | None = None) -> int:
    """Stable id per purpose, connector and stack level (unless the template fixes one)."""
    if fixed:
        return int(fixed) + (connector_id - 1 if connector_id > 1 else 0)
    return PROFILE_ID_BASE + _PURPOSE_INDEX.get(purpose, 3) * 1000 + min(connector_id, 9) * 100 + min(stack_level, 99)


def preferred_units(template_unit: str | None, slider_unit: str, allowed: Sequence[str] | None) -> list[str]:
    """Units to try, best first: the template's if fixed, else one the charger allows, slider's unit first."""
    if template_unit:
        return [template_unit]
    if allowed:
        ordered = [slider_unit] + [u for u in UNITS if u != slider_unit]
        return [u for u in ordered if u in allowed] or [slider_unit]
    return [slider_unit] + [u for u in UNITS if u != slider_unit]


def plan_attempts(
    template: Mapping[str, Any],
    slider_unit: str,
    capabilities: Mapping[str, Any],
    connectors: Iterable[int],
    learned: Attempt | None = None,
    fallback: bool = True,
    transaction_connector: int | None = None,
) -> list[Attempt]:
    """The fallback ladder, most faithful first; a strategy learned earlier goes to the front.

    Ladder (each step changes one thing from the template): each connector instead
    of connector 0; ChargePointMaxProfile instead of TxDefaultProfile; Relative
    instead of Absolute; stack level 0; the other unit (only when the charger did
    not say which it allows).
    """
    purpose = template["purpose"]
    units = preferred_units(template.get("unit"), slider_unit, capabilities.get("allowed_units"))
    stack = int(template["stack_level"])
    max_stack = capabilities.get("max_stack_level")
    if max_stack is not None:
        stack = min(stack, int(max_stack))
    connector = int(template["connector_id"])
    if purpose == "ChargePointMaxProfile":
        connector = 0
    elif purpose == "TxProfile":
        connector = transaction_connector if transaction_connector is not None else max(connector, 1)
    base = Attempt(purpose, (connector,), template["kind"], stack, units[0])
    steps = [base]
    if fallback:
        each = tuple(sorted(c for c in connectors if c > 0)) or (1,)
        if connector == 0 and purpose != "ChargePointMaxProfile":
            steps.append(replace(base, connector_ids=each))
        if purpose == "TxDefaultProfile":
            steps.append(replace(base, purpose="ChargePointMaxProfile", connector_ids=(0,)))
        if base.kind == "Absolute":
            steps.append(replace(base, kind="Relative"))
            if connector == 0:
                steps.append(replace(base, kind="Relative", connector_ids=each))
        if stack != 0:
            steps.append(replace(base, stack_level=0))
        for unit in units[1:]:
            steps.append(replace(base, unit=unit))
    if learned is not None:
        if template.get("unit") or units[0] in (capabilities.get("allowed_units") or ()):
            learned = replace(learned, unit=units[0])  # the unit is a choice when the charger allows it
        steps.insert(0, learned)
    unique: list[Attempt] = []
    for step in steps:
        if step not in unique:
            unique.append(step)
    return unique


def build_set_charging_profile(
    limit: float,
    unit: str,
    template: Mapping[str, Any],
    now: datetime | None = None,
    transaction_id: int | None = None,
    periods: Sequence[tuple[int, float]] | None = None,
    start: datetime | None = None,
) -> dict[str, Any]:
    """Return the SetChargingProfile.req payload (camelCase, ready for the wire).

    ``limit`` must already be in ``unit``, the unit sent to the charger. Absolute
    profiles start one minute in the past so that a charger whose clock lags
    slightly still applies the limit immediately. ``periods`` (seconds from
    ``start``, limit) replaces the single period for schedules.
    """
    now = now or datetime.now(timezone.utc)
    purpose, kind = template["purpose"], template["kind"]
    connector_id = 0 if purpose == "ChargePointMaxProfile" else int(template["connector_id"])
    stack_level = int(template["stack_level"])
    period_list = [{"startPeriod": int(s), "limit": round_limit(v)} for s, v in (periods or [(0, limit)])]
    if template.get("number_phases"):
        for period in period_list:
            period["numberPhases"] = int(template["number_phases"])
    schedule: dict[str, Any] = {"chargingRateUnit": unit, "chargingSchedulePeriod": period_list}
    if kind in ("Absolute", "Recurring"):
        schedule["startSchedule"] = iso_z(start or now - START_SCHEDULE_OFFSET)
    if kind == "Recurring":
        schedule["duration"] = 86400 if template.get("recurrency_kind", "Daily") == "Daily" else 7 * 86400
    profile: dict[str, Any] = {
        "chargingProfileId": profile_id(purpose, connector_id, stack_level, template.get("profile_id")),
        "stackLevel": stack_level,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": kind,
        "chargingSchedule": schedule,
    }
    if kind == "Recurring":
        profile["recurrencyKind"] = template.get("recurrency_kind", "Daily")
    if purpose == "TxProfile":
        if transaction_id is None:
            raise SetpointError("a TxProfile (session limit) needs a running transaction; none is active")
        profile["transactionId"] = transaction_id
    return {"connectorId": connector_id, "csChargingProfiles": profile}


def attempt_template(template: Mapping[str, Any], attempt: Attempt, connector_id: int) -> dict[str, Any]:
    return {**template, "purpose": attempt.purpose, "kind": attempt.kind, "stack_level": attempt.stack_level,
            "connector_id": connector_id, "unit": attempt.unit}


def parse_schedule(entries: Any, now: datetime, max_periods: int | None = None) -> tuple[datetime, list[tuple[int, float]]]:
    """``[{"start": ISO time or seconds from now, "limit": number}, ...]`` -> (start, [(offset s, limit)]).

    Entries are sorted by start; the schedule starts at the first entry (or now
    when that lies in the past, keeping the limit in force).
    """
    if not isinstance(entries, list) or not entries:
        raise SetpointError('expected a non-empty JSON list like [{"start": 0, "limit": 16}, {"start": "2026-01-01T22:00:00Z", "limit": 6}]')
    points: list[tuple[datetime, float]] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "start" not in entry or "limit" not in entry:
            raise SetpointError(f"entry {index}: expected an object with 'start' and 'limit'")
        raw_start, raw_limit = entry["start"], entry["limit"]
        if isinstance(raw_start, bool):
            raise SetpointError(f"entry {index}: start {raw_start!r} is not a time")
        if isinstance(raw_start, (int, float)):
            if not math.isfinite(raw_start) or not -366 * 86400 < raw_start < 366 * 86400:
                raise SetpointError(f"entry {index}: start {raw_start!r} seconds is out of range")
            moment = now + timedelta(seconds=raw_start)
        else:
            parsed = parse_timestamp(raw_start)
            if parsed is None:
                raise SetpointError(f"entry {index}: start {str(raw_start)[:40]!r} is not an ISO 8601 time or a number of seconds")
            if abs(parsed - now) >= timedelta(days=366):  # as for seconds; year 9999 cannot even be written in UTC
                raise SetpointError(f"entry {index}: start {str(raw_start)[:40]!r} is more than a year from now")
            moment = parsed
        limit = parse_number(raw_limit) if not isinstance(raw_limit, bool) else None
        if limit is None or limit < 0:
            raise SetpointError(f"entry {index}: limit {raw_limit!r} is not a non-negative number")
        points.append((moment, limit))
    points.sort(key=lambda p: p[0])
    # Entries already over are dropped, the one in force now starts the schedule.
    current = [p for p in points if p[0] <= now]
    future = [p for p in points if p[0] > now]
    if current:
        start = now.replace(microsecond=0)
        points = [(start, current[-1][1])] + future
    else:
        start = points[0][0].replace(microsecond=0)
    periods: list[tuple[int, float]] = []
    for moment, limit in points:
        offset = max(0, int((moment - start).total_seconds()))
        if periods and offset == periods[-1][0]:
            periods[-1] = (offset, limit)
        else:
            periods.append((offset, limit))
    if max_periods is not None and len(periods) > max_periods:
        raise SetpointError(f"{len(periods)} periods, but this charger accepts at most {max_periods} (ChargingScheduleMaxPeriods)")
    return start, periods


def limit_now(periods: Sequence[tuple[int, float]], start: datetime, now: datetime) -> float | None:
    """The limit a schedule applies at ``now`` (None before it starts)."""
    elapsed = (now - start).total_seconds()
    current = None
    for offset, limit in periods:
        if offset <= elapsed:
            current = limit
    return current
