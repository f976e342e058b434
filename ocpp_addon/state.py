"""Charger state and meter-value parsing: pure data, no I/O.

A charger's readings are kept as a flat mapping of sensor keys (``power``,
``energy``, ``current_l1`` ...) in SI-ish units Home Assistant expects (W, kWh, A,
V, %, °C), so that the Home Assistant state JSON, BEMcom datapoints and the
entity table all read the same values.
"""

from __future__ import annotations

import logging
import math
import re
from math import isfinite
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    from .limits import Applied, Supply

_LOGGER = logging.getLogger(__name__)

DEFAULT_MEASURAND = "Energy.Active.Import.Register"

# measurand -> (sensor key, unit we publish)
MEASURANDS: dict[str, tuple[str, str]] = {
    "Energy.Active.Import.Register": ("energy", "kWh"),
    "Energy.Active.Export.Register": ("energy_export", "kWh"),
    "Energy.Reactive.Import.Register": ("energy_reactive", "kvarh"),
    "Energy.Active.Import.Interval": ("energy_interval", "kWh"),
    "Power.Active.Import": ("power", "W"),
    "Power.Active.Export": ("power_export", "W"),
    "Power.Reactive.Import": ("power_reactive", "var"),
    "Power.Offered": ("power_offered", "W"),
    "Power.Factor": ("power_factor", ""),
    "Current.Import": ("current", "A"),
    "Current.Export": ("current_export", "A"),
    "Current.Offered": ("current_offered", "A"),
    "Voltage": ("voltage", "V"),
    "Frequency": ("frequency", "Hz"),
    "SoC": ("soc", "%"),
    "Temperature": ("temperature", "°C"),
    "RPM": ("rpm", "rpm"),
}

# Unit conversions to the unit we publish: (their unit lower-cased) -> factor / function.
_SCALE = {
    ("kwh", "kWh"): 1.0, ("wh", "kWh"): 0.001,
    ("kvarh", "kvarh"): 1.0, ("varh", "kvarh"): 0.001,
    ("w", "W"): 1.0, ("kw", "W"): 1000.0,
    ("var", "var"): 1.0, ("kvar", "var"): 1000.0,
    ("a", "A"): 1.0, ("v", "V"): 1.0,
}


def _phase_suffix(phase: str | None) -> str:
    """'L1' and 'L1-N' are the same conductor for current/power; 'L1-L2' is a line-to-line voltage."""
    if not phase:
        return ""
    p = phase.strip().upper()
    if p in ("L1", "L2", "L3", "N"):
        return "_" + p.lower()
    match = re.fullmatch(r"(L[123])-N", p)
    if match:
        return "_" + match.group(1).lower()
    match = re.fullmatch(r"(L[123])-(L[123])", p)
    if match:
        return f"_{match.group(1).lower()}_{match.group(2).lower()}"
    return "_" + re.sub(r"[^a-z0-9]+", "_", p.lower()).strip("_")


_DEFAULT_UNIT = {"kWh": "wh", "kvarh": "varh", "W": "w", "var": "var", "A": "a", "V": "v"}


def _convert(value: float, unit: str | None, target: str) -> float | None:
    """Convert to the unit we publish; None for a unit we do not understand."""
    if target == "°C":
        u = (unit or "Celsius").strip().lower()
        if u in ("celsius", "celcius", "c", "°c"):
            return value
        if u in ("fahrenheit", "f"):
            return (value - 32) * 5 / 9
        if u in ("k", "kelvin"):
            return value - 273.15
        return None
    if target in _DEFAULT_UNIT:
        factor = _SCALE.get(((unit or _DEFAULT_UNIT[target]).strip().lower(), target))
        return None if factor is None else value * factor
    return value  # %, Hz, rpm, power factor: no unit variants in OCPP 1.6


# A plain decimal number, ASCII only: float() would also take '1_9' (19), Arabic-Indic digits, 'nan' and 'inf'.
_NUMBER_RE = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*", re.ASCII)


def parse_number(value: Any) -> float | None:
    """A finite number from a charger or an MQTT payload, or None.

    OCPP sends values as strings; real chargers also send numbers and ' 12.3'. One
    parser for every number we accept from outside, so each path refuses the same things.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an integer with hundreds of digits
            return None
        return number if math.isfinite(number) else None
    if not isinstance(value, str) or len(value) > 100 or not _NUMBER_RE.fullmatch(value):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def parse_timestamp(value: Any) -> datetime | None:
    """ISO 8601 from a charger; missing timezones are taken as UTC (a common firmware bug)."""
    if type(value) is str and value[-1:] == "Z":  # what nearly every charger sends: read as it is (0.1 instead of 0.5 µs)
        try:
            return datetime.fromisoformat(value)  # Python 3.11 reads 'Z' as UTC, as below
        except ValueError:
            pass  # e.g. surrounding blanks: the general path decides
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


def sample_number(value: Any) -> float | None:
    """A sample's value as :func:`parse_sampled_values` reads it: a finite number, or None."""
    if type(value) is str and len(value) <= 100 and value.isascii() and value.isprintable() and "_" not in value:
        # parse_number's common case without the pattern: on printable ASCII without '_', float()
        # takes what _NUMBER_RE takes plus nan/inf spellings, which isfinite refuses.
        try:
            number = float(value)
        except ValueError:
            return None
        return number if isfinite(number) else None
    return parse_number(value)


def parse_sampled_values(sampled: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """One meterValue's sampledValue list -> {sensor key: value in our units}.

    Unknown measurands and units are skipped (logged at debug), never fatal.
    Per-phase values get a suffix (``current_l1``). When a charger sends only
    per-phase values we derive the total: power is the sum, current the highest
    phase (what a limit in amps applies to), voltage the mean.
    """
    readings: dict[str, float] = {}
    from_boundary: set[str] = set()  # keys read from a Transaction.Begin/End sample
    for sample in sampled:
        if not isinstance(sample, dict):
            continue
        measurand = sample.get("measurand") or DEFAULT_MEASURAND
        unit = sample.get("unit")
        reading = _reading(measurand, unit, sample.get("phase"))
        if reading is None:
            if measurand in MEASURANDS:  # the same debug lines as before the cache
                if parse_number(sample.get("value")) is not None:
                    _LOGGER.debug("skipping %s with unknown unit %r", measurand, unit)
            else:
                _LOGGER.debug("skipping unknown measurand %r", measurand)
            continue
        value: Any = sample.get("value")
        number = sample_number(value)
        if number is None:
            continue
        full_key, factor, temperature_unit = reading
        # Some chargers repeat the Transaction.Begin reading inside every periodic sample:
        # a live reading of the same quantity wins over a session-boundary one.
        if sample.get("context") in BOUNDARY_CONTEXTS:
            if full_key in readings and full_key not in from_boundary:
                continue
            from_boundary.add(full_key)
        elif from_boundary:
            from_boundary.discard(full_key)
        if temperature_unit is None:
            if factor == 1.0 and type(value) is str and len(value) <= 7 and "e" not in value and "E" not in value:
                # At most 7 characters and no exponent: at most 6 decimals and 7 digits, a decimal a double holds
                # so exactly that round(number, 6) == number. round() costs ~0.3 µs, a third of reading a sample.
                readings[full_key] = number
            else:
                readings[full_key] = round(number * factor, 6)
        else:
            readings[full_key] = round(_convert(number, temperature_unit, "°C"), 6)  # type: ignore[arg-type]
    if "current" not in readings:
        currents = [readings[k] for k in _CURRENT_KEYS if k in readings]
        if currents:
            readings["current"] = max(currents)  # the per-phase current a limit in A is compared with
        elif "current_n" in readings:
            readings["current"] = readings["current_n"]  # single-phase chargers that label their phase N
    if "power" not in readings:
        powers = [readings[k] for k in _POWER_KEYS if k in readings]
        if powers:
            readings["power"] = round(sum(powers), 6)
    if "voltage" not in readings:
        volts = [readings[k] for k in _VOLTAGE_KEYS if k in readings]
        if volts:
            readings["voltage"] = round(sum(volts) / len(volts), 3)
    # "1e308" kW is a finite string but not a finite reading. Every value is finite when their sum is
    # (one sum in C instead of a test per value); an overflowing sum only sends us to the test per value.
    if not isfinite(sum(readings.values())):
        readings = {k: v for k, v in readings.items() if isfinite(v)}
    return readings


_CURRENT_KEYS = ("current_l1", "current_l2", "current_l3")
_POWER_KEYS = ("power_l1", "power_l2", "power_l3")
_VOLTAGE_KEYS = ("voltage_l1", "voltage_l2", "voltage_l3")


@lru_cache(maxsize=1024)
def _reading(measurand: Any, unit: Any, phase: Any) -> tuple[str, float, str | None] | None:
    """How to read one kind of sample: (sensor key, factor, temperature unit), None if we cannot.

    A charger sends the same few (measurand, unit, phase) in every MeterValues, so this runs
    once per kind instead of per sample; charger-chosen strings, hence the bounded cache.
    The value is ``number * factor`` as in :func:`_convert`, or for a temperature
    ``_convert(number, unit, "°C")``."""
    known = MEASURANDS.get(measurand)
    if known is None:
        return None
    key, target = known
    if _convert(1.0, unit, target) is None:
        return None
    full_key = key + _phase_suffix(phase)
    if target == "°C":
        return full_key, 1.0, unit
    if target in _DEFAULT_UNIT:
        return full_key, _SCALE[((unit or _DEFAULT_UNIT[target]).strip().lower(), target)], None
    return full_key, 1.0, None


BOUNDARY_CONTEXTS = frozenset({"Transaction.Begin", "Transaction.End"})
_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


def parse_meter_values(meter_value: Any, newer_than: datetime | None = None) -> dict[str, float]:
    """A MeterValues/StopTransaction ``meterValue`` list -> latest reading per key.

    Entries are applied in timestamp order, and entries older than ``newer_than``
    are skipped, so queued samples a charger replays hours late do not overwrite
    current ones. A single object instead of a list (seen in the field) is accepted.
    """
    return latest_meter_values(meter_value, newer_than)[0]


def latest_meter_values(meter_value: Any, newer_than: datetime | None = None) -> tuple[dict[str, float], datetime | None]:
    """Like :func:`parse_meter_values`, also returning the newest sample time (future times count as now)."""
    if isinstance(meter_value, dict):
        meter_value = [meter_value]
    if not isinstance(meter_value, list):
        return {}, None
    now = datetime.now(timezone.utc)
    if len(meter_value) == 1:  # what nearly every MeterValues carries: nothing to order
        entry = meter_value[0]
        if not isinstance(entry, dict):
            return {}, None
        moment = parse_timestamp(entry.get("timestamp"))
        if moment is not None and moment > now:
            moment = now
        if newer_than is not None and moment is not None and moment < newer_than:
            return {}, None
        return parse_sampled_values(entry.get("sampled_value") or entry.get("sampledValue") or []), moment
    dated = []
    for entry in meter_value:
        if isinstance(entry, dict):
            moment = parse_timestamp(entry.get("timestamp"))
            dated.append((min(moment, now) if moment else None, entry))
    dated.sort(key=lambda pair: pair[0] or _EPOCH)
    readings: dict[str, float] = {}
    newest = None
    for moment, entry in dated:
        if newer_than is not None and moment is not None and moment < newer_than:
            continue
        readings.update(parse_sampled_values(entry.get("sampled_value") or entry.get("sampledValue") or []))
        if moment is not None:
            newest = moment
    return readings, newest


#: A value beyond this may overflow when scaled to our unit (kW -> W multiplies by 1000): read, not replaced.
_SAFE_MAGNITUDE = 1e300


def reading_kinds(meter_value: Any) -> tuple[tuple[Any, ...], datetime] | None:
    """What a MeterValues' ``meterValue`` would be read as, to compare it with another: how each sample
    reads (its key, factor and unit, as :func:`parse_sampled_values` resolves them), in order, and
    its time; None when it cannot stand for another (not one entry, no time, a value that is not a
    number).

    Of two with equal kinds, the later gives every reading the earlier gives (:func:`kinds_supersede`).
    Only the new message is looked at: the kinds of the held one are kept beside it, a tuple of
    the resolver's cached tuples compared by identity, so comparing touches no memory gone cold.
    """
    if type(meter_value) is not list or len(meter_value) != 1:
        return None
    entry = meter_value[0]
    if type(entry) is not dict:
        return None
    sampled = entry.get("sampledValue")
    if type(sampled) is not list:
        return None
    kinds = []
    for sample in sampled:
        if type(sample) is not dict:
            return None
        number = sample_number(sample.get("value"))
        if number is None or not -_SAFE_MAGNITUDE <= number <= _SAFE_MAGNITUDE:
            return None
        measurand, unit, phase = sample.get("measurand") or DEFAULT_MEASURAND, sample.get("unit"), sample.get("phase")
        kinds.append(_reading(measurand, unit, phase) or (measurand, unit, phase))  # unknown kinds: as sent
    moment = parse_timestamp(entry.get("timestamp"))
    return None if moment is None else (tuple(kinds), moment)


def kinds_supersede(newer: tuple[tuple[Any, ...], datetime] | None, older: tuple[tuple[Any, ...], datetime] | None) -> bool:
    """Whether reading the MeterValues of ``older`` kinds and then those of ``newer`` leaves what reading ``newer`` alone leaves.

    True when both could be compared (:func:`reading_kinds`), their samples read as the same kinds in
    the same order and ``newer`` is not older: every reading ``older`` gives, ``newer`` gives again.
    False whenever in doubt (then both are read)."""
    return newer is not None and older is not None and newer[0] == older[0] and newer[1] >= older[1]


def utc_now_iso() -> str:
    """UTC ISO 8601 with 'Z': some chargers choke on '+00:00'."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def iso_z(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Connector:
    status: str | None = None
    error_code: str | None = None
    info: str | None = None
    vendor_error_code: str | None = None
    transaction_id: int | None = None
    id_tag: str | None = None
    meter_start: float | None = None  # Wh, from StartTransaction
    session_start: datetime | None = None
    session_energy: float | None = None  # kWh of the running (or last) session
    session_duration: float | None = None  # seconds, last computed
    stop_reason: str | None = None


@dataclass
class ChargerState:
    """Everything we know about one charger, connected or not."""

    id: str
    connected: bool = False
    vendor: str | None = None
    model: str | None = None
    firmware: str | None = None
    serial: str | None = None
    readings: dict[str, Any] = field(default_factory=dict)
    connectors: dict[int, Connector] = field(default_factory=dict)
    last_heartbeat: str | None = None
    firmware_status: str | None = None
    diagnostics_status: str | None = None
    # The last request the charger accepted, in the user's unit (to tell an unchanged setpoint);
    # what it accepted on the wire, and so what the slider shows, is ``applied``.
    charging_limit: float | None = None
    charging_limit_unit: str | None = None
    requested_limit: float | None = None  # what the user asked for last, in their unit
    requested_unit: str | None = None
    applied: Applied | None = None
    supply: Supply | None = None  # phases/voltage/DC its readings proved (limits.learn_supply); kept on disk (store)
    effective_limit: float | None = None  # what GetCompositeSchedule says the charger enforces
    effective_limit_unit: str | None = None
    capabilities: dict[str, Any] = field(default_factory=dict)
    strategy: dict[str, Any] | None = None  # the Attempt that the charger last accepted

    def connector(self, connector_id: int) -> Connector:
        return self.connectors.setdefault(connector_id, Connector())

    @property
    def main_connector(self) -> Connector | None:
        """Connector 1 (what a single-outlet wallbox means by 'status'), else connector 0."""
        return self.connectors.get(1) or self.connectors.get(0)

    @property
    def connector_ids(self) -> list[int]:
        """Physical connectors: those reported (>0), or NumberOfConnectors, or just 1."""
        known = sorted(c for c in self.connectors if c > 0)
        count = self.capabilities.get("number_of_connectors")
        if isinstance(count, int) and count > 0:
            known = sorted(set(known) | set(range(1, count + 1)))
        return known or [1]

    def active_transaction(self) -> tuple[int, Connector] | None:
        """The lowest-numbered connector with a transaction (asked several times per state message: no sort)."""
        found: tuple[int, Connector] | None = None
        for connector_id, connector in self.connectors.items():
            if connector.transaction_id is not None and (found is None or connector_id < found[0]):
                found = connector_id, connector
        return found

    def end_live_readings(self, connector_id: int) -> list[str]:
        """A transaction ended: the power and currents it drew are over (the energy register is a total and stays).

        Without this the state keeps showing the last sample (6,340 W beside status Available)
        until the charger happens to send MeterValues again, which many do only while charging."""
        prefix = f"connector_{connector_id}_" if connector_id > 1 else ""
        changed = []
        for key, value in self.readings.items():
            base = key[len(prefix):] if prefix and key.startswith(prefix) else (key if not prefix and not key.startswith("connector_") else None)
            if base in LIVE_FLOWS and value != 0:
                self.readings[key] = 0.0
                changed.append(key)
        return changed


# Readings that only flow during a transaction: zeroed when it stops.
LIVE_FLOWS = frozenset({"power", "power_l1", "power_l2", "power_l3", "current", "current_l1", "current_l2", "current_l3", "current_n"})
CHARGING_STATUSES = ("Charging", "SuspendedEV", "SuspendedEVSE")


# GetConfiguration keys that tell us how to talk smart charging to a charger.
CAPABILITY_KEYS = (
    "SupportedFeatureProfiles", "NumberOfConnectors", "ChargeProfileMaxStackLevel",
    "ChargingScheduleAllowedChargingRateUnit", "ChargingScheduleMaxPeriods", "MaxChargingProfilesInstalled",
    "MeterValuesSampledData", "MeterValueSampleInterval", "ConnectorSwitch3to1PhaseSupported",
)
_INT_KEYS = {
    "NumberOfConnectors": "number_of_connectors", "ChargeProfileMaxStackLevel": "max_stack_level",
    "ChargingScheduleMaxPeriods": "max_periods", "MaxChargingProfilesInstalled": "max_profiles",
    "MeterValueSampleInterval": "meter_value_sample_interval",
}


def split_list(value: Any) -> list[str]:
    """'Core, SmartCharging' / 'Current,Power' / 'A W' -> items (chargers disagree on separators)."""
    return [item.strip() for item in re.split(r"[,;\s]+", str(value or "")) if item.strip()]


def parse_configuration(configuration_key: Any) -> dict[str, Any]:
    """GetConfiguration.conf ``configurationKey`` -> our capabilities (values may be numbers: seen in the field)."""
    raw: dict[str, Any] = {}
    for item in configuration_key or []:
        if isinstance(item, Mapping) and isinstance(item.get("key"), str):
            raw[item["key"]] = item.get("value")
    caps: dict[str, Any] = {}
    if "SupportedFeatureProfiles" in raw:
        profiles = split_list(raw["SupportedFeatureProfiles"])
        caps["feature_profiles"] = profiles
        caps["smart_charging"] = any(p.lower() == "smartcharging" for p in profiles)
    for key, ours in _INT_KEYS.items():
        number = parse_number(raw.get(key)) if key in raw else None
        if number is not None and number == int(number) and number >= 0:  # counts and levels: whole, not negative
            caps[ours] = int(number)
    if "ChargingScheduleAllowedChargingRateUnit" in raw:
        units = {"current": "A", "a": "A", "power": "W", "w": "W"}
        allowed = [units[u.lower()] for u in split_list(raw["ChargingScheduleAllowedChargingRateUnit"]) if u.lower() in units]
        if allowed:
            caps["allowed_units"] = sorted(set(allowed))
    if "MeterValuesSampledData" in raw:
        caps["meter_values_sampled_data"] = split_list(raw["MeterValuesSampledData"])
    if "ConnectorSwitch3to1PhaseSupported" in raw:
        caps["phase_switching"] = str(raw["ConnectorSwitch3to1PhaseSupported"]).strip().lower() == "true"
    return caps
