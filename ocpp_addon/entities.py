"""What we expose per charger, as data: one row per entity.

Home Assistant discovery and the state JSON are both generated from this
table, so adding a sensor is one line here (the Home Assistant core
"EntityDescription" pattern).
"""

from __future__ import annotations

from dataclasses import dataclass


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
    # Announced only once the charger has reported a value (per-phase readings,
    # extras): a single-phase charger gets no empty L2/L3 entities.
    dynamic: bool = False
    command: str | None = None  # command topic: <base>/<cp>/<command>
    payload: str | None = None  # button press payload


def _power(key: str, name: str, dynamic: bool = True) -> EntityDescription:
    return EntityDescription(key, name, device_class="power", state_class="measurement", unit="W", precision=0, dynamic=dynamic)


def _current(key: str, name: str, dynamic: bool = True) -> EntityDescription:
    return EntityDescription(key, name, device_class="current", state_class="measurement", unit="A", precision=1, dynamic=dynamic)


def _voltage(key: str, name: str, dynamic: bool = True) -> EntityDescription:
    return EntityDescription(key, name, device_class="voltage", state_class="measurement", unit="V", precision=0, dynamic=dynamic)


SENSORS: tuple[EntityDescription, ...] = (
    EntityDescription("status", "Status", icon="mdi:ev-station"),
    EntityDescription("error_code", "Error code", category="diagnostic", icon="mdi:alert-circle-outline"),
    _power("power", "Power", dynamic=False),
    EntityDescription("energy", "Energy", device_class="energy", state_class="total_increasing", unit="kWh", precision=2),
    _current("current", "Current", dynamic=False),
    _voltage("voltage", "Voltage", dynamic=False),
    EntityDescription("soc", "State of charge", device_class="battery", state_class="measurement", unit="%", precision=0),
    EntityDescription("temperature", "Temperature", device_class="temperature", state_class="measurement", unit="°C", precision=1),
    _current("current_offered", "Current offered", dynamic=False),
    EntityDescription("last_heartbeat", "Last heartbeat", device_class="timestamp", category="diagnostic"),
    EntityDescription("transaction_id", "Transaction", category="diagnostic", icon="mdi:identifier"),
    *(_current(f"current_{p}", f"Current {p.upper()}") for p in ("l1", "l2", "l3", "n")),
    *(_voltage(f"voltage_{p}", f"Voltage {p.upper()}") for p in ("l1", "l2", "l3")),
    *(_voltage(f"voltage_{a}_{b}", f"Voltage {a.upper()}-{b.upper()}") for a, b in (("l1", "l2"), ("l2", "l3"), ("l3", "l1"))),
    *(_power(f"power_{p}", f"Power {p.upper()}") for p in ("l1", "l2", "l3")),
    _power("power_offered", "Power offered"),
    _power("power_export", "Power export"),
    EntityDescription("energy_export", "Energy export", device_class="energy", state_class="total_increasing", unit="kWh", precision=2, dynamic=True),
    EntityDescription("frequency", "Frequency", device_class="frequency", state_class="measurement", unit="Hz", precision=1, dynamic=True),
    EntityDescription("power_factor", "Power factor", device_class="power_factor", state_class="measurement", dynamic=True),
    EntityDescription("session_energy", "Session energy", device_class="energy", state_class="total_increasing", unit="kWh", precision=2),
    EntityDescription("session_duration", "Session duration", device_class="duration", state_class="measurement", unit="s", precision=0),
    EntityDescription("id_tag", "Id tag", category="diagnostic", icon="mdi:card-account-details-outline"),
    EntityDescription("stop_reason", "Stop reason", category="diagnostic", icon="mdi:stop-circle-outline"),
    EntityDescription("smart_charging", "Smart charging", category="diagnostic", icon="mdi:tune-variant"),
)

CONTROLS: tuple[EntityDescription, ...] = (
    EntityDescription("charging", "Charging", platform="switch", icon="mdi:ev-station", command="charging/set"),
    EntityDescription("available", "Available", platform="switch", category="config", icon="mdi:power-plug", command="available/set"),
    EntityDescription("reset", "Reset", platform="button", device_class="restart", category="config", command="reset/set", payload="Soft"),
    EntityDescription("unlock", "Unlock connector", platform="button", icon="mdi:lock-open-variant", category="config", command="unlock/set", payload="1"),
    EntityDescription("refresh", "Refresh", platform="button", icon="mdi:refresh", category="diagnostic", command="refresh/set", payload="refresh"),
    EntityDescription("clear_limit", "Clear charging limit", platform="button", icon="mdi:close-octagon-outline", category="config",
                      command="charging_limit/clear", payload="clear"),
)

CHARGING_LIMIT = EntityDescription("charging_limit", "Charging limit", platform="number", icon="mdi:ev-plug-type2",
                                   command="charging_limit/set")
EFFECTIVE_LIMIT = EntityDescription("effective_limit", "Effective limit", state_class="measurement", icon="mdi:speedometer")

_BY_KEY = {d.key: d for d in SENSORS}


def connector_entity(key: str) -> EntityDescription | None:
    """``connector_2_power`` -> the Power row renamed for connector 2 (multi-outlet chargers)."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "connector" or not parts[1].isdigit():
        return None
    base = {"status": SENSORS[0], "error_code": SENSORS[1]}.get(parts[2]) or _BY_KEY.get(parts[2])
    if base is None:
        return None
    return EntityDescription(key, f"Connector {parts[1]} {base.name[0].lower()}{base.name[1:]}", base.platform, base.device_class,
                             base.state_class, base.unit, base.category, base.icon, base.precision, dynamic=True)

SENSOR_KEYS = frozenset(d.key for d in SENSORS)
STATIC_KEYS = tuple(d.key for d in SENSORS if not d.dynamic)
