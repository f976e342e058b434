"""What we expose per charger, as data: one row per entity.

A row carries everything about one entity: its Home Assistant metadata, how its value is read
from :class:`ChargerState` (``value``), when it exists (``available``: a single-phase charger
gets no empty L2/L3 entities, a second connector gets its own rows) and, for controls, the
command it takes. Home Assistant discovery, the state JSON, the per-connector entities and the
BEMcom datapoints are all generated from these rows, so adding a sensor (say the firmware
status) is one row here (the Home Assistant core "EntityDescription" pattern).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Callable, Iterator, Mapping

from .limits import shown
from .state import CHARGING_STATUSES, MEASURANDS, ChargerState, Connector

Value = Callable[[ChargerState], Any]


def _always(state: ChargerState) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class EntityDescription:
    key: str
    name: str
    platform: str = "sensor"
    device_class: str | None = None
    state_class: str | None = None
    unit: str | None = None
    category: str | None = None  # "diagnostic" | "config" | None (main dashboard)
    icon: str | None = None
    precision: int | None = None
    value: Value | None = None  # None: the reading of the same key
    available: Callable[[ChargerState], bool] = _always  # announced (and in the state JSON) only when true
    command: str | None = None  # command topic: <base>/<cp>/<command>
    payload: str | None = None  # button press payload
    attributes: str | None = None  # state-JSON key shown as this entity's attributes
    in_state: bool = True  # False: buttons, which have no value

    def read(self, state: ChargerState) -> Any:
        return state.readings.get(self.key) if self.value is None else self.value(state)


def _reported(key: str) -> Callable[[ChargerState], bool]:
    def available(state: ChargerState) -> bool:
        return key in state.readings
    return available


def _reading(key: str, name: str, device_class: str | None, unit: str | None, precision: int | None,
             state_class: str | None = "measurement", dynamic: bool = True) -> EntityDescription:
    return EntityDescription(key, name, device_class=device_class, state_class=state_class, unit=unit, precision=precision,
                             available=_reported(key) if dynamic else _always)


def _power(key: str, name: str, dynamic: bool = True) -> EntityDescription:
    return _reading(key, name, "power", "W", 0, dynamic=dynamic)


def _current(key: str, name: str, dynamic: bool = True) -> EntityDescription:
    return _reading(key, name, "current", "A", 1, dynamic=dynamic)


def _voltage(key: str, name: str, dynamic: bool = True) -> EntityDescription:
    return _reading(key, name, "voltage", "V", 0, dynamic=dynamic)


def _main(state: ChargerState) -> Connector | None:
    return state.main_connector


def _session(state: ChargerState) -> Connector | None:
    """The running transaction's connector, else the main one (its last session)."""
    active = state.active_transaction()
    return active[1] if active else state.main_connector


def _charging(state: ChargerState) -> str:
    main = state.main_connector
    return "ON" if state.active_transaction() or (main and main.status in CHARGING_STATUSES) else "OFF"


def _available(state: ChargerState) -> str:
    return "OFF" if any(c.status == "Unavailable" for c in state.connectors.values()) else "ON"


def _attr(get: Callable[[ChargerState], Any], name: str) -> Value:
    def value(state: ChargerState) -> Any:
        obj = get(state)
        return getattr(obj, name) if obj is not None else None
    return value


SENSORS: tuple[EntityDescription, ...] = (
    EntityDescription("status", "Status", icon="mdi:ev-station", value=_attr(_main, "status"), attributes="connected"),
    EntityDescription("error_code", "Error code", category="diagnostic", icon="mdi:alert-circle-outline", value=_attr(_main, "error_code")),
    _power("power", "Power", dynamic=False),
    _reading("energy", "Energy", "energy", "kWh", 2, state_class="total_increasing", dynamic=False),
    _current("current", "Current", dynamic=False),
    _voltage("voltage", "Voltage", dynamic=False),
    _reading("soc", "State of charge", "battery", "%", 0, dynamic=False),
    _reading("temperature", "Temperature", "temperature", "°C", 1, dynamic=False),
    _current("current_offered", "Current offered", dynamic=False),
    EntityDescription("last_heartbeat", "Last heartbeat", device_class="timestamp", category="diagnostic", value=lambda s: s.last_heartbeat),
    EntityDescription("transaction_id", "Transaction", category="diagnostic", icon="mdi:identifier",
                      value=lambda s: (a[1].transaction_id if (a := s.active_transaction()) else None)),
    *(_current(f"current_{p}", f"Current {p.upper()}") for p in ("l1", "l2", "l3", "n")),
    *(_voltage(f"voltage_{p}", f"Voltage {p.upper()}") for p in ("l1", "l2", "l3")),
    *(_voltage(f"voltage_{a}_{b}", f"Voltage {a.upper()}-{b.upper()}") for a, b in (("l1", "l2"), ("l2", "l3"), ("l3", "l1"))),
    *(_power(f"power_{p}", f"Power {p.upper()}") for p in ("l1", "l2", "l3")),
    _power("power_offered", "Power offered"),
    _power("power_export", "Power export"),
    _current("current_export", "Current export"),
    _reading("energy_export", "Energy export", "energy", "kWh", 2, state_class="total_increasing"),
    _reading("energy_interval", "Energy interval", "energy", "kWh", 2, state_class="total"),
    _reading("energy_reactive", "Reactive energy", None, "kvarh", 2, state_class="total_increasing"),
    _reading("power_reactive", "Reactive power", "reactive_power", "var", 0),
    _reading("frequency", "Frequency", "frequency", "Hz", 1),
    _reading("power_factor", "Power factor", "power_factor", None, None),
    _reading("rpm", "Fan speed", None, "rpm", 0),
    EntityDescription("session_energy", "Session energy", device_class="energy", state_class="total_increasing", unit="kWh", precision=2,
                      value=_attr(_session, "session_energy")),
    EntityDescription("session_duration", "Session duration", device_class="duration", state_class="measurement", unit="s", precision=0,
                      value=_attr(_session, "session_duration")),
    EntityDescription("id_tag", "Id tag", category="diagnostic", icon="mdi:card-account-details-outline", value=_attr(_session, "id_tag")),
    EntityDescription("stop_reason", "Stop reason", category="diagnostic", icon="mdi:stop-circle-outline", value=_attr(_session, "stop_reason")),
    EntityDescription("firmware_status", "Firmware update", category="diagnostic", icon="mdi:update", value=lambda s: s.firmware_status),
    EntityDescription("diagnostics_status", "Diagnostics upload", category="diagnostic", icon="mdi:file-upload-outline",
                      value=lambda s: s.diagnostics_status),
    EntityDescription("smart_charging", "Smart charging", category="diagnostic", icon="mdi:tune-variant",
                      value=lambda s: smart_charging_summary(s), attributes="capabilities"),
    # In the unit it was asked in (requested_limit_unit), which need not be the slider's.
    EntityDescription("requested_limit", "Requested limit", category="diagnostic", icon="mdi:target",
                      value=lambda s: s.requested_limit, attributes="requested_limit_unit"),
    EntityDescription("charging_limit_reason", "Limit note", category="diagnostic", icon="mdi:information-outline",
                      value=lambda s: s.applied.reason if s.applied else None),
)

CONTROLS: tuple[EntityDescription, ...] = (
    EntityDescription("charging", "Charging", platform="switch", icon="mdi:ev-station", command="charging/set", value=_charging),
    EntityDescription("available", "Available", platform="switch", category="config", icon="mdi:power-plug", command="available/set",
                      value=_available),
    EntityDescription("reset", "Reset", platform="button", device_class="restart", category="config", command="reset/set", payload="Soft",
                      in_state=False),
    EntityDescription("unlock", "Unlock connector", platform="button", icon="mdi:lock-open-variant", category="config", command="unlock/set",
                      payload="1", in_state=False),
    EntityDescription("refresh", "Refresh", platform="button", icon="mdi:refresh", category="diagnostic", command="refresh/set",
                      payload="refresh", in_state=False),
    EntityDescription("clear_limit", "Clear charging limit", platform="button", icon="mdi:close-octagon-outline", category="config",
                      command="charging_limit/clear", payload="clear", in_state=False),
)

# Their unit is the slider's (charging.unit): filled in by the discovery builder and limit_values.
CHARGING_LIMIT = EntityDescription("charging_limit", "Charging limit", platform="number", icon="mdi:ev-plug-type2",
                                   command="charging_limit/set", attributes="charging_limit_unit")
EFFECTIVE_LIMIT = EntityDescription("effective_limit", "Effective limit", state_class="measurement", icon="mdi:speedometer",
                                    value=lambda s: s.effective_limit)

# State-JSON keys that are no entity of their own but the attributes of one (``attributes`` above).
ATTRIBUTE_KEYS = frozenset(d.attributes for d in (*SENSORS, CHARGING_LIMIT) if d.attributes)

_BY_KEY = {d.key: d for d in (*SENSORS, *CONTROLS, CHARGING_LIMIT, EFFECTIVE_LIMIT)}
_MEASURAND_KEYS = {key for key, _ in MEASURANDS.values()}
_MEASURAND_KEYS_LONGEST_FIRST = tuple(sorted(_MEASURAND_KEYS, key=len, reverse=True))
_SENSOR_KEYS = frozenset(d.key for d in SENSORS)


def smart_charging_summary(state: ChargerState) -> str | None:
    strategy = state.strategy
    if strategy and strategy.get("unsupported"):
        return "not supported (every profile answered NotSupported)"
    if strategy:
        connectors = ",".join(str(c) for c in strategy["connector_ids"])
        return f"{strategy['purpose']} on connector {connectors}, {strategy['kind']}, stack {strategy['stack_level']}, {strategy['unit']}"
    supported = state.capabilities.get("smart_charging")
    if supported is None:
        return None
    return "supported" if supported else "not supported"


@lru_cache(maxsize=1024)  # keys are measurands x phases x connectors: few, and asked per message
def reading_entity(key: str) -> EntityDescription | None:
    """The row of a reading key, also for per-phase variants of a measurand (``energy_l1``: Energy L1)."""
    row = _BY_KEY.get(key)
    if row is not None:
        return row
    for base in _MEASURAND_KEYS_LONGEST_FIRST:
        if key.startswith(base + "_"):
            parent = _BY_KEY.get(base)
            suffix = key[len(base) + 1:]
            if parent is None or not suffix.replace("_", "").isalnum():
                return None
            return replace(parent, key=key, name=f"{parent.name} {suffix.upper().replace('_', '-')}", available=_reported(key), value=None)
    return None


def _connector(connector_id: int) -> Callable[[ChargerState], Connector | None]:
    def get(state: ChargerState) -> Connector | None:
        return state.connectors.get(connector_id)
    return get


def _multi_outlet(state: ChargerState) -> bool:
    return len([c for c in state.connectors if c > 0]) > 1


def connector_rows(state: ChargerState) -> Iterator[EntityDescription]:
    """Per-connector rows of a multi-outlet charger: status and error code of each, its own readings."""
    for connector_id in sorted(state.connectors):
        if connector_id > 1 or (connector_id == 1 and _multi_outlet(state)):
            for name in ("status", "error_code"):
                base = _BY_KEY[name]
                yield replace(base, key=f"connector_{connector_id}_{name}", name=f"Connector {connector_id} {base.name[0].lower()}{base.name[1:]}",
                              value=_attr(_connector(connector_id), name))
    for key in state.readings:
        if key.startswith("connector_"):
            row = connector_entity(key)
            if row is not None:
                yield row


def connector_entity(key: str) -> EntityDescription | None:
    """``connector_2_power`` -> the Power row renamed for connector 2 (multi-outlet chargers)."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "connector" or not parts[1].isdigit():
        return None
    base = reading_entity(parts[2])
    if base is None or base.value is not None:
        return None
    return replace(base, key=key, name=f"Connector {parts[1]} {base.name[0].lower()}{base.name[1:]}", available=_reported(key))


def sensor_rows(state: ChargerState) -> list[EntityDescription]:
    """Every sensor this charger has now: the table's available rows, readings of other phases, per-connector rows."""
    rows = [d for d in SENSORS if d.available is _always or d.available(state)]  # identity first: this runs per message
    for key in state.readings:
        if key not in _SENSOR_KEYS and not key.startswith("connector_"):  # a table row's reading is in rows already
            row = reading_entity(key)
            if row is not None:
                rows.append(row)
    rows.extend(connector_rows(state))
    return rows


def state_values(state: ChargerState, slider_unit: str) -> dict[str, Any]:
    """The state JSON's values: one per entity (and the attribute keys of those entities)."""
    readings = state.readings
    values = {d.key: readings.get(d.key) if d.value is None else d.value(state) for d in sensor_rows(state)}  # d.read, inlined
    for control in CONTROLS:
        if control.in_state:
            values[control.key] = control.read(state)
    values["charging_limit"] = shown(state.applied, slider_unit)
    values["charging_limit_unit"] = slider_unit
    values["requested_limit_unit"] = state.requested_unit
    values["effective_limit"] = state.effective_limit
    values["capabilities"] = state.capabilities
    values["connected"] = state.connected
    return values


def is_entity_key(key: str) -> bool:
    """A key a state change can carry that may need a new entity announced."""
    return key in _BY_KEY or key.startswith("connector_") or reading_entity(key) is not None


def attribute_template(key: str) -> str:
    return "{{ {'%s': value_json.%s} | tojson }}" % (key, key) if key != "capabilities" else "{{ value_json.capabilities | tojson }}"


def by_key(key: str) -> EntityDescription | None:
    return _BY_KEY.get(key)


def rows_by_key(rows: list[EntityDescription]) -> Mapping[str, EntityDescription]:
    return {d.key: d for d in rows}
