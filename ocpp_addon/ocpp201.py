"""OCPP 2.0.1 message shapes and capability reading, as pure functions.

The hub, the limit controller and the sinks do not know the protocol version (DESIGN.md). What
differs in 2.0.1 is translated here, in both directions, so one set of rules serves both versions:

- readings: a 2.0.1 ``sampledValue`` carries numbers and ``unitOfMeasure {unit, multiplier}``;
  it is re-shaped into the 1.6 form and read by :func:`state.latest_meter_values`, so units,
  phases, replayed samples and Transaction.Begin repeats are handled by the same code;
- status: 2.0.1 splits the 1.6 status into a connector status (Available/Occupied/...) and a
  transaction charging state (Charging/SuspendedEV/...); :func:`connector_status` joins them back
  into the one status our entities show;
- capabilities: the device model (NotifyReport rows or GetVariables results) gives the same
  capability keys as a 1.6 GetConfiguration (:func:`state.parse_configuration`);
- charging profiles: :func:`profiles.build_set_charging_profile` builds the request and
  :func:`set_charging_profile_request` re-shapes it, so the value sent is computed once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Iterator, Mapping

from .state import latest_meter_values, parse_number, split_list

SUBPROTOCOL = "ocpp2.0.1"

# 1.6 purposes -> 2.0.1 purposes (TxDefaultProfile and TxProfile keep their names).
PURPOSES = {"ChargePointMaxProfile": "ChargingStationMaxProfile"}


# -- readings --------------------------------------------------------------------------------


def sampled_value_as_16(sample: Mapping[str, Any]) -> dict[str, Any] | None:
    """One 2.0.1 sampledValue -> the 1.6 shape :func:`state.parse_sampled_values` reads.

    The value is scaled by ``10 ** multiplier`` here (a charger reporting kWh as Wh with
    multiplier 3 is common); a value or multiplier that is not a finite number drops the sample.
    """
    value = parse_number(sample.get("value"))
    if value is None:
        return None
    unit_of_measure = sample.get("unitOfMeasure") or sample.get("unit_of_measure") or {}
    if not isinstance(unit_of_measure, Mapping):
        return None
    multiplier = parse_number(unit_of_measure.get("multiplier", 0))
    if multiplier is None or multiplier != int(multiplier) or abs(multiplier) > 9:
        return None
    out: dict[str, Any] = {"value": repr(value * 10 ** int(multiplier))}
    for key in ("measurand", "phase", "location", "context"):
        if isinstance(sample.get(key), str):
            out[key] = sample[key]
    if isinstance(unit_of_measure.get("unit"), str):
        out["unit"] = unit_of_measure["unit"]
    return out


def meter_value_as_16(meter_value: Any) -> list[dict[str, Any]]:
    """A 2.0.1 ``meterValue`` list -> the 1.6 shape (a single object, seen in 1.6, is accepted too)."""
    if isinstance(meter_value, Mapping):
        meter_value = [meter_value]
    if not isinstance(meter_value, list):
        return []
    entries = []
    for entry in meter_value:
        if not isinstance(entry, Mapping):
            continue
        sampled = entry.get("sampledValue") or entry.get("sampled_value") or []
        values = [v for v in (sampled_value_as_16(s) for s in sampled if isinstance(s, Mapping)) if v is not None]
        entries.append({"timestamp": entry.get("timestamp"), "sampledValue": values})
    return entries


def readings(meter_value: Any, newer_than: datetime | None = None) -> tuple[dict[str, float], datetime | None]:
    """Latest reading per sensor key from a 2.0.1 meterValue list, and the newest sample time."""
    return latest_meter_values(meter_value_as_16(meter_value), newer_than)


# -- status and transactions -------------------------------------------------------------------

# 2.0.1 ChargingStateEnumType -> the 1.6 status it corresponds to while the connector is Occupied.
_CHARGING_STATES = {
    "Charging": "Charging", "SuspendedEV": "SuspendedEV", "SuspendedEVSE": "SuspendedEVSE",
    "EVConnected": "Preparing", "Idle": "Preparing",
}


def connector_status(connector: str, charging_state: str | None = None, ended: bool = False) -> str:
    """The status our entities show (the 1.6 vocabulary, which users and automations know).

    An Occupied connector is Charging/SuspendedEV/SuspendedEVSE during a transaction (from its
    charging state), Preparing before one, and Finishing after one ended with the cable still in.
    """
    if connector != "Occupied":
        return connector  # Available, Reserved, Unavailable, Faulted: the same word in both versions
    if ended:
        return "Finishing"
    return _CHARGING_STATES.get(charging_state or "", "Preparing")


@dataclass(frozen=True)
class TransactionUpdate:
    """What a TransactionEvent tells, in the terms the hub and the state use."""

    event_type: str  # Started | Updated | Ended
    transaction_id: str
    trigger_reason: str
    seq_no: int | None
    evse_id: int | None
    connector_id: int | None
    charging_state: str | None
    stopped_reason: str | None
    id_token: str | None  # None: no idToken sent; "" is the NoAuthorization token (use case C02, a start button)
    id_token_type: str | None
    offline: bool
    readings: dict[str, float] = field(default_factory=dict)
    sampled_at: datetime | None = None


def parse_transaction_event(payload: Mapping[str, Any], newer_than: datetime | None = None) -> TransactionUpdate:
    """A schema-valid TransactionEvent request (camelCase) -> :class:`TransactionUpdate`."""
    info = payload.get("transactionInfo") or {}
    evse = payload.get("evse") or {}
    token = payload.get("idToken") or {}
    values, newest = readings(payload.get("meterValue"), newer_than)
    seq_no = payload.get("seqNo")
    return TransactionUpdate(
        event_type=payload["eventType"],
        transaction_id=info["transactionId"],
        trigger_reason=payload.get("triggerReason", ""),
        seq_no=seq_no if isinstance(seq_no, int) else None,
        evse_id=evse.get("id"),
        connector_id=evse.get("connectorId"),
        charging_state=info.get("chargingState"),
        stopped_reason=info.get("stoppedReason"),
        id_token=token.get("idToken"),
        id_token_type=token.get("type"),
        offline=bool(payload.get("offline")),
        readings=values,
        sampled_at=newest,
    )


# -- capabilities from the device model -----------------------------------------------------

Row = tuple[str, int | None, str, str]  # component, EVSE id (None: the station), variable, Actual value


def report_rows(report_data: Any) -> Iterator[Row]:
    """NotifyReport ``reportData`` -> (component, evse, variable, Actual value) rows."""
    for item in report_data or []:
        if not isinstance(item, Mapping):
            continue
        component, variable = item.get("component") or {}, item.get("variable") or {}
        attributes = item.get("variableAttribute") or []
        actual = next((a for a in attributes if isinstance(a, Mapping) and a.get("type", "Actual") == "Actual"), None)
        if isinstance(component.get("name"), str) and isinstance(variable.get("name"), str) and actual is not None:
            value = actual.get("value")
            if isinstance(value, str):
                yield component["name"], (component.get("evse") or {}).get("id"), variable["name"], value


def variable_rows(get_variable_result: Any) -> Iterator[Row]:
    """GetVariables ``getVariableResult`` -> rows of the Accepted ones."""
    for item in get_variable_result or []:
        if isinstance(item, Mapping) and item.get("attributeStatus") == "Accepted" and isinstance(item.get("attributeValue"), str):
            component, variable = item.get("component") or {}, item.get("variable") or {}
            yield component.get("name", ""), (component.get("evse") or {}).get("id"), variable.get("name", ""), item["attributeValue"]


# -- the device model as configuration keys (the chargers page) --------------------------------

# A key names one variable: ``Component[instance]@evse/connector.Variable[instance]``, parts absent when
# absent. Names are OCPP identifierStrings (letters, digits, * - _ = : + | @ .); a key that would hold
# anything else, or run longer than a page may send back, is not offered.
KEY_RE = re.compile(r"[A-Za-z0-9*\-_=:+|@.\[\]/]{1,160}", re.ASCII)
_NAME_RE = re.compile(r"[A-Za-z0-9*\-_=:+|@.]{1,50}", re.ASCII)
MAX_REPORT_ITEMS = 5000  # a station's whole device model; a larger report is cut here, not kept growing


@dataclass(frozen=True)
class DeviceVariable:
    """One variable of a station's device model, as the chargers page lists it and SetVariables names it."""

    key: str
    component: dict[str, Any]  # camelCase, as OCPP sends it back in SetVariables
    variable: dict[str, Any]
    value: str | None  # the Actual attribute's value; None when the station did not report one
    readonly: bool


def variable_key(component: Mapping[str, Any], variable: Mapping[str, Any]) -> str | None:
    """The key a page shows for one component/variable pair, or None when a part is not an identifierString."""
    parts = [component.get("name"), component.get("instance"), variable.get("name"), variable.get("instance")]
    evse = component.get("evse") if isinstance(component.get("evse"), Mapping) else None
    if not all(p is None or (isinstance(p, str) and _NAME_RE.fullmatch(p)) for p in parts) or parts[0] is None or parts[2] is None:
        return None
    key = str(component["name"]) + (f"[{component['instance']}]" if component.get("instance") is not None else "")
    if evse is not None:
        evse_id, connector = evse.get("id"), evse.get("connectorId")
        if type(evse_id) is not int or (connector is not None and type(connector) is not int):
            return None
        key += f"@{evse_id}" + (f"/{connector}" if connector is not None else "")
    key += "." + str(variable["name"]) + (f"[{variable['instance']}]" if variable.get("instance") is not None else "")
    return key if KEY_RE.fullmatch(key) else None


def slim_report_item(item: Any) -> dict[str, Any] | None:
    """One NotifyReport ``reportData`` item cut to what :func:`report_rows` and :func:`device_variables` read.

    A station's unfinished report is kept until its last part arrives; ``customData`` and
    characteristics could make each item tens of kilobytes, so only names, the EVSE and the
    attributes' type, value (at most 1,000 characters, as SetVariables takes) and mutability stay.
    """
    if not isinstance(item, Mapping) or not isinstance(item.get("component"), Mapping) or not isinstance(item.get("variable"), Mapping):
        return None
    component = {k: item["component"][k] for k in ("name", "instance") if isinstance(item["component"].get(k), str)}
    evse = item["component"].get("evse")
    if isinstance(evse, Mapping):
        component["evse"] = {k: evse[k] for k in ("id", "connectorId") if type(evse.get(k)) is int}
    variable = {k: item["variable"][k] for k in ("name", "instance") if isinstance(item["variable"].get(k), str)}
    attributes = [{k: a[k][:1000] if k == "value" else a[k] for k in ("type", "value", "mutability") if isinstance(a.get(k), str)}
                  for a in (item.get("variableAttribute") or [])[:4] if isinstance(a, Mapping)]
    return {"component": component, "variable": variable, "variableAttribute": attributes}


def device_variables(report_data: Iterable[Any]) -> dict[str, DeviceVariable]:
    """NotifyReport ``reportData`` items (camelCase) -> the station's variables by key.

    Only the names a key is made of are kept from the station's component and variable, so a
    SetVariables built from them carries nothing else the station sent.
    """
    out: dict[str, DeviceVariable] = {}
    for item in report_data:
        if not isinstance(item, Mapping) or not isinstance(item.get("component"), Mapping) or not isinstance(item.get("variable"), Mapping):
            continue
        key = variable_key(item["component"], item["variable"])
        if key is None:
            continue
        attributes = [a for a in item.get("variableAttribute") or [] if isinstance(a, Mapping)]
        actual = next((a for a in attributes if a.get("type", "Actual") == "Actual"), None)
        if actual is None:
            continue  # only Target/MinSet/MaxSet: not what a configuration list shows
        component = {k: item["component"][k] for k in ("name", "instance") if item["component"].get(k) is not None}
        evse = item["component"].get("evse")
        if isinstance(evse, Mapping):
            component["evse"] = {k: evse[k] for k in ("id", "connectorId") if evse.get(k) is not None}
        variable = {k: item["variable"][k] for k in ("name", "instance") if item["variable"].get(k) is not None}
        value = actual.get("value")
        out[key] = DeviceVariable(key=key, component=component, variable=variable,
                                  value=value if isinstance(value, str) else None,
                                  readonly=actual.get("mutability", "ReadWrite") == "ReadOnly")
    return out


# 2.0.1 SetVariableStatus -> the 1.6 ChangeConfiguration status the page and MQTT already know.
SET_VARIABLE_STATUS = {"Accepted": "Accepted", "Rejected": "Rejected", "RebootRequired": "RebootRequired",
                       "UnknownComponent": "NotSupported", "UnknownVariable": "NotSupported",
                       "NotSupportedAttributeType": "NotSupported"}


# What we ask GetVariables for when a station answers GetBaseReport with NotSupported or sends nothing.
CAPABILITY_VARIABLES: tuple[tuple[str, str], ...] = (
    ("SmartChargingCtrlr", "Enabled"), ("SmartChargingCtrlr", "RateUnit"), ("SmartChargingCtrlr", "PeriodsPerSchedule"),
    ("SmartChargingCtrlr", "ProfileStackLevel"), ("SmartChargingCtrlr", "Entries"),
    ("SampledDataCtrlr", "TxUpdatedMeasurands"), ("SampledDataCtrlr", "TxUpdatedInterval"),
)

_INT_VARIABLES = {
    ("SmartChargingCtrlr", "PeriodsPerSchedule"): "max_periods",
    ("SmartChargingCtrlr", "ProfileStackLevel"): "max_stack_level",
    ("SmartChargingCtrlr", "Entries"): "max_profiles",
    ("SampledDataCtrlr", "TxUpdatedInterval"): "meter_value_sample_interval",
}


def capabilities(rows: Iterable[Row]) -> dict[str, Any]:
    """Device-model rows -> the capability keys a 1.6 GetConfiguration gives (state.parse_configuration).

    Beside those: ``evse_ids`` (the EVSEs the station reported) and ``phases`` / ``dc`` from the
    EVSEs' SupplyPhases (0 means DC), which 1.6 leaves to be learned from meter values.
    """
    caps: dict[str, Any] = {}
    evses: set[int] = set()
    phases: set[int] = set()
    for component, evse, variable, value in rows:
        if isinstance(evse, int) and evse > 0:
            evses.add(evse)
        key = (component, variable)
        if key == ("SmartChargingCtrlr", "Enabled"):
            caps["smart_charging"] = value.strip().lower() == "true"
        elif key == ("SmartChargingCtrlr", "RateUnit"):
            allowed = sorted({u.upper() for u in split_list(value) if u.upper() in ("A", "W")})
            if allowed:
                caps["allowed_units"] = allowed
        elif key in _INT_VARIABLES:
            number = parse_number(value)
            if number is not None and number == int(number) and number >= 0:
                caps[_INT_VARIABLES[key]] = int(number)
        elif key == ("SampledDataCtrlr", "TxUpdatedMeasurands"):
            caps["meter_values_sampled_data"] = split_list(value)
        elif key == ("EVSE", "SupplyPhases"):
            number = parse_number(value)
            if number is not None and number in (0, 1, 2, 3):
                phases.add(int(number))
    if evses:
        caps["evse_ids"] = sorted(evses)
        caps["number_of_connectors"] = len(evses)
    if len(phases) == 1:
        only = phases.pop()
        caps["dc"] = only == 0
        if only:
            caps["phases"] = only
    return caps


# -- charging profiles -------------------------------------------------------------------------


def set_charging_profile_request(request_16: Mapping[str, Any], transaction_id: str | None = None,
                                 schedule_id: int = 1) -> dict[str, Any]:
    """A SetChargingProfile.req built by profiles.build_set_charging_profile -> its 2.0.1 shape.

    Same limits, periods, units, stack level and start: only the names and nesting change
    (connectorId -> evseId, csChargingProfiles -> chargingProfile with an ``id``, one
    chargingSchedule in a list with its own ``id``, ChargePointMaxProfile ->
    ChargingStationMaxProfile, transactionId as the station's string id).
    """
    profile = dict(request_16["csChargingProfiles"])
    schedule = dict(profile.pop("chargingSchedule"))
    schedule["id"] = schedule_id
    out: dict[str, Any] = {
        "id": profile.pop("chargingProfileId"),
        "stackLevel": profile.pop("stackLevel"),
        "chargingProfilePurpose": PURPOSES.get(profile["chargingProfilePurpose"], profile["chargingProfilePurpose"]),
        "chargingProfileKind": profile["chargingProfileKind"],
        "chargingSchedule": [schedule],
    }
    profile.pop("chargingProfilePurpose")
    profile.pop("chargingProfileKind")
    if "recurrencyKind" in profile:
        out["recurrencyKind"] = profile.pop("recurrencyKind")
    if "transactionId" in profile:
        profile.pop("transactionId")
        if transaction_id is None:
            raise ValueError("a 2.0.1 TxProfile needs the station's transaction id")
        out["transactionId"] = transaction_id
    return {"evseId": request_16["connectorId"], "chargingProfile": out}
