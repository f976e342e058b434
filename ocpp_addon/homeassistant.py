"""Home Assistant: MQTT discovery, state and command topics, birth handling.

Pure builders (``device_discovery``, ``state_payload``, ``parse_limit_payload``)
make the payloads; :class:`HomeAssistantSink` publishes them. Topics follow
Zigbee2MQTT's shape: ``<base>/<cp>/state`` JSON, ``<base>/<cp>/<command>/set``,
``<base>/<cp>/availability`` and ``<base>/bridge/state`` with a last will.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import re
from typing import Any, Callable, Mapping

from . import __version__, strict_json
from .config import bridge_topic
from .topics import is_charger_id, printable
from .entities import CHARGING_LIMIT, CONTROLS, EFFECTIVE_LIMIT, EntityDescription, attribute_template, is_entity_key, sensor_rows, state_values
from .hub import BOOT_REFUSED, CONNECTED, DISCONNECTED, IDENTIFIED, READY, REMOVED, RESULT, UPDATED, Event, Hub
from .results import FINAL_REFUSALS, Status
from .mqtt_bridge import MqttBridge
from .profiles import SetpointError
from .state import ChargerState, parse_number, utc_now_iso

CONTROLS_BY_KEY = {d.key: d for d in CONTROLS}

_LOGGER = logging.getLogger(__name__)

BRIDGE_ID = "ocpp_bridge"


def bridge_id(config: Mapping[str, Any]) -> str:
    return f"{BRIDGE_ID}_{config['instance_id']}" if config.get("instance_id") else BRIDGE_ID
ORIGIN = {"name": "ocpp_addon", "sw_version": __version__}
MAX_COMMAND_PAYLOAD = 256
BRIDGE_INFO_DELAY = 1.0
BIRTH_DELAY_MAX = 2.0  # seconds; Home Assistant asks for a small random delay after its birth message


def object_id(charger_id: str) -> str:
    """Charge point id -> the entity id part Home Assistant allows ([a-z0-9_])."""
    return re.sub(r"[^a-z0-9_]", "_", charger_id.lower())


def discovery_node_id(charger_id: str) -> str:
    """Charge point id -> a discovery topic level ([a-zA-Z0-9_-]).

    Ids with '.' or ':' get a short hash so 'wb.1' and 'wb_1' stay distinct devices.
    """
    node = re.sub(r"[^a-zA-Z0-9_-]", "_", charger_id)
    if node != charger_id:
        node += "_" + hashlib.sha1(charger_id.encode()).hexdigest()[:6]
    return node


def discovery_topic(prefix: str, charger_id: str) -> str:
    return f"{prefix}/device/{discovery_node_id(charger_id)}/config"


def _component(desc: EntityDescription, charger_id: str) -> dict[str, Any]:
    comp: dict[str, Any] = {
        "platform": desc.platform,
        "unique_id": f"ocpp_{charger_id}_{desc.key}",
        "default_entity_id": f"{desc.platform}.{object_id(charger_id)}_{desc.key}",
        "name": desc.name,
        "value_template": "{{ value_json.%s }}" % desc.key,
        "qos": 1,  # HA does not pass the device-level qos on to entities (seen in 2025.4)
    }
    for key, value in (
        ("device_class", desc.device_class),
        ("state_class", desc.state_class),
        ("unit_of_measurement", desc.unit),
        ("entity_category", desc.category),
        ("icon", desc.icon),
        ("suggested_display_precision", desc.precision),
    ):
        if value is not None:
            comp[key] = value
    return comp


def announced_keys(state: ChargerState) -> list[str]:
    """Sensor keys to announce: the entity table's rows this charger has now."""
    return [d.key for d in sensor_rows(state)]


def _command_component(desc: EntityDescription, base: str, cid: str) -> dict[str, Any]:
    comp = _component(desc, cid)
    comp["command_topic"] = f"{base}/{cid}/{desc.command}"
    if desc.platform == "button":
        del comp["value_template"]
        comp["payload_press"] = desc.payload
    elif desc.platform == "switch":
        comp.update(payload_on="ON", payload_off="OFF", state_on="ON", state_off="OFF")
    return comp


def device_discovery(state: ChargerState, config: Mapping[str, Any]) -> dict[str, Any]:
    """The device-based discovery payload for one charger (HA 2024.11+)."""
    base = config["mqtt"]["base_topic"]
    charging = config["charging"]
    cid = state.id
    device: dict[str, Any] = {"identifiers": [f"ocpp_{cid}"], "name": cid, "via_device": bridge_id(config)}
    for key, value in (("manufacturer", state.vendor), ("model", state.model), ("sw_version", state.firmware), ("serial_number", state.serial)):
        if value:
            device[key] = value
    limit_class = "current" if charging["unit"] == "A" else "power"
    components: dict[str, Any] = {}
    for desc in sensor_rows(state):
        components[desc.key] = _component(desc, cid)
        if desc.attributes:
            components[desc.key].update(json_attributes_topic=f"{base}/{cid}/state", json_attributes_template=attribute_template(desc.attributes))
    effective = _component(EFFECTIVE_LIMIT, cid)
    effective.update(unit_of_measurement=charging["unit"], device_class=limit_class)
    components["effective_limit"] = effective
    limit = _command_component(CHARGING_LIMIT, base, cid)
    limit.update(min=charging["min"], max=charging["max"], step=charging["step"], mode="slider",
                 unit_of_measurement=charging["unit"], device_class=limit_class)
    if CHARGING_LIMIT.attributes:
        limit.update(json_attributes_topic=f"{base}/{cid}/state", json_attributes_template=attribute_template(CHARGING_LIMIT.attributes))
    if config.get("instance_id"):
        # Several instances: the broker keeps the desired limit (retained), so whichever
        # instance a charger connects to next is handed the last setpoint.
        limit["retain"] = True
    components["charging_limit"] = limit
    for desc in CONTROLS:
        components[desc.key] = _command_component(desc, base, cid)
    for connector_id in state.connector_ids[1:]:
        unlock = _command_component(CONTROLS_BY_KEY["unlock"], base, cid)
        unlock.update(unique_id=f"ocpp_{cid}_unlock_{connector_id}", name=f"Unlock connector {connector_id}",
                      default_entity_id=f"button.{object_id(cid)}_unlock_{connector_id}", payload_press=str(connector_id))
        components[f"unlock_{connector_id}"] = unlock
    return {
        "device": device,
        "origin": ORIGIN,
        "state_topic": f"{base}/{cid}/state",
        "availability": [{"topic": bridge_topic(config)}, {"topic": f"{base}/{cid}/availability"}],
        "availability_mode": "all",
        "components": components,
        "qos": 1,
    }


def bridge_model(config: Mapping[str, Any]) -> str:
    """The bridge device's model: the OCPP versions this instance speaks (``ocpp.versions``), e.g. "OCPP 2.0.1 and 1.6J central system"."""
    names = {"1.6": "1.6J", "2.0.1": "2.0.1"}
    return "OCPP " + " and ".join(names.get(v, v) for v in config["ocpp"]["versions"]) + " central system"


def bridge_discovery(config: Mapping[str, Any]) -> dict[str, Any]:
    ident = bridge_id(config)
    instance = config.get("instance_id")
    components = {}
    for key, name, extra in (
        ("connected_chargers", "Connected chargers", {"state_class": "measurement", "icon": "mdi:ev-station"}),
        ("version", "Version", {"entity_category": "diagnostic", "icon": "mdi:information-outline"}),
    ):
        components[key] = {"platform": "sensor", "unique_id": f"{ident}_{key}", "default_entity_id": f"sensor.{ident}_{key}",
                           "name": name, "value_template": "{{ value_json.%s }}" % key, "qos": 1, **extra}
    # On while the bridge cannot do its job fully (e.g. the state file cannot be written); the reason is an attribute.
    components["problem"] = {"platform": "binary_sensor", "unique_id": f"{ident}_problem", "default_entity_id": f"binary_sensor.{ident}_problem",
                             "name": "Problem", "device_class": "problem", "entity_category": "diagnostic", "qos": 1,
                             "value_template": "{{ 'ON' if value_json.problem else 'OFF' }}",
                             "json_attributes_topic": bridge_topic(config, "info"),
                             "json_attributes_template": "{{ {'reason': value_json.problem} | tojson }}"}
    return {
        "device": {"identifiers": [ident], "name": f"OCPP bridge {instance}" if instance else "OCPP bridge",
                   "manufacturer": "ocpp_addon", "model": bridge_model(config), "sw_version": __version__},
        "origin": ORIGIN,
        "state_topic": bridge_topic(config, "info"),
        "availability": [{"topic": bridge_topic(config)}],
        "components": components,
        "qos": 1,
    }


def state_payload(state: ChargerState, config: Mapping[str, Any]) -> dict[str, Any]:
    """The retained state JSON: one value per entity (null when unknown) and the attributes of some.

    ``charging_limit`` is what the charger accepted (``applied``), in the slider's unit, converted
    by the function that made the value sent (limits.shown); a pause is 0 with its reason in
    ``charging_limit_reason``; ``requested_limit`` is what the user asked for."""
    return state_values(state, config["charging"]["unit"])


def parse_limit_payload(payload: bytes, default_unit: str) -> tuple[float, str]:
    """``16``, ``16.5`` or ``{"limit": 16, "unit": "A"}`` -> (limit, unit); SetpointError otherwise."""
    if len(payload) > MAX_COMMAND_PAYLOAD:
        raise SetpointError(f"payload of {len(payload)} bytes is too large (at most {MAX_COMMAND_PAYLOAD})")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SetpointError("payload is not UTF-8 text") from None
    if not text:
        raise SetpointError("payload is empty; send a number such as 16 or {\"limit\": 16, \"unit\": \"A\"}")
    unit = default_unit
    value = parse_number(text)
    if value is None:
        try:
            data = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise SetpointError(f"{printable(text, 40)!r} is not a number; send e.g. 16 or {{\"limit\": 16, \"unit\": \"A\"}}") from None
        if not isinstance(data, dict) or "limit" not in data:
            raise SetpointError(f"{printable(text, 40)!r}: expected a number or a JSON object with a 'limit' key")
        raw, unit = data["limit"], data.get("unit", default_unit)
        value = parse_number(raw) if isinstance(raw, (str, int, float)) else None
        if value is None:
            raise SetpointError(f"limit {printable(raw, 20)!r} is not a plain finite number")
        if not isinstance(unit, str) or unit not in ("A", "W"):
            raise SetpointError(f"unit {printable(unit, 20)!r} is not allowed; use 'A' or 'W'")
    return value, unit


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


# Derived from the readings (the energy register, the clock): as unhurried as the readings themselves.
SESSION_KEYS = frozenset({"session_energy", "session_duration"})


class HomeAssistantSink:
    """Publishes discovery, availability, state and events; turns command topics into hub calls."""

    def __init__(self, config: dict[str, Any], hub: Hub, mqtt: MqttBridge) -> None:
        self.config = config
        self.hub = hub
        self.mqtt = mqtt
        self.base = config["mqtt"]["base_topic"]
        self.prefix = config["mqtt"]["discovery_prefix"]
        self.discovery_enabled = config["mqtt"]["discovery"]
        self._published_discovery: dict[str, bytes] = {}
        self._announced: dict[str, frozenset[str]] = {}  # component keys in the last discovery, per charger
        self._dirty: set[str] = set()
        self._flush_scheduled = False
        # Readings alone go out at most once per readings_interval per charger (the newest values then);
        # anything else (status, transaction, limits) at once. See _flush.
        self._readings_interval: float = config["mqtt"]["readings_interval"]
        self._urgent: set[str] = set()
        self._last_state: dict[str, float] = {}  # charger -> loop time of its last state publish
        self._held: set[str] = set()
        self._held_handle: asyncio.TimerHandle | None = None
        self._birth_handle: asyncio.TimerHandle | None = None
        self._bridge_info_handle: asyncio.TimerHandle | None = None
        self.instance: str | None = config.get("instance_id")
        self._owners: dict[str, str] = {}  # charger -> instance that holds its connection (multi-instance)

    def _command_topics(self, cid: str) -> tuple[str, str]:
        return f"{self.base}/{cid}/+/set", f"{self.base}/{cid}/charging_limit/clear"

    def _subscribe_commands(self, cid: str) -> None:
        for topic in self._command_topics(cid):
            self.mqtt.subscribe(topic, self._on_command)

    def _on_connection(self, topic: str, payload: bytes) -> None:
        cid = topic[len(self.base) + 1 :].split("/")[0]
        try:
            self._owners[cid] = json.loads(payload)["instance"]
        except (ValueError, KeyError, TypeError):
            self._owners.pop(cid, None)

    def start(self) -> None:
        self.mqtt.on_connect(self.publish_all)
        if self.instance is None:
            self._subscribe_commands("+")
        else:
            # Several instances: commands route themselves, each instance listens to its own chargers only;
            # who owns a charger is published retained, so a late 'offline' cannot hide a moved charger.
            self.mqtt.subscribe(f"{self.base}/+/connection", self._on_connection)
        if self.discovery_enabled:
            self.mqtt.subscribe(f"{self.prefix}/status", self._on_ha_status)

    # -- hub events --------------------------------------------------------------

    def handle(self, event: Event) -> None:
        kind, cid = event.kind, event.charger_id
        if kind == UPDATED:
            assert event.state is not None
            changed = event.changed
            if self.discovery_enabled:
                announced = self._announced.get(cid, frozenset())
                if not announced.issuperset(changed) and any(k not in announced and is_entity_key(k) for k in changed):
                    self._publish_discovery(event.state)  # a new per-phase or per-connector value: announce it
            readings = event.state.readings
            urgent = False
            for key in changed:  # a plain loop: this runs for every MeterValues
                if key not in readings and key not in SESSION_KEYS:
                    urgent = True
                    break
            self._mark_dirty(cid, urgent=urgent)
        elif kind == RESULT:
            self._publish_event(cid, event.data)
            if self.instance is not None and event.data.get("command") == "charging_limit" and event.data.get("status") in FINAL_REFUSALS:
                # keep the broker's retained desired limit equal to what the charger accepted
                state = self.hub.states.get(cid)
                if state is not None and state.charging_limit is not None:
                    self.mqtt.publish(f"{self.base}/{cid}/charging_limit/set", json.dumps(
                        {"limit": state.charging_limit, "unit": state.charging_limit_unit}), retain=True, qos=1)
        elif kind in (READY, BOOT_REFUSED):
            # A charger whose BootNotification we refused is connected but not a working device.
            if self.instance is None or self._owners.get(cid, self.instance) == self.instance:
                self.mqtt.publish(f"{self.base}/{cid}/availability", "online" if kind == READY else "offline", retain=True, qos=1)
        elif kind in (CONNECTED, DISCONNECTED):
            assert event.state is not None
            if self.instance is not None:
                if kind == CONNECTED:
                    self._owners[cid] = self.instance
                    self.mqtt.publish(f"{self.base}/{cid}/connection", json.dumps({"instance": self.instance}), retain=True, qos=1)
                    self._subscribe_commands(cid)
                else:
                    for command_topic in self._command_topics(cid):
                        self.mqtt.unsubscribe(command_topic)
                    if self._owners.get(cid, self.instance) != self.instance:
                        return  # the charger already moved to another instance: not ours to mark offline
            self.mqtt.publish(f"{self.base}/{cid}/availability", "online" if kind == CONNECTED else "offline", retain=True, qos=1)
            if kind == CONNECTED:
                self._publish_discovery(event.state)
            self._mark_dirty(cid)
            self._schedule_bridge_info()
        elif kind == IDENTIFIED:
            assert event.state is not None
            self._publish_discovery(event.state)
            self._mark_dirty(cid)
        elif kind == REMOVED:
            self._published_discovery.pop(cid, None)
            self._last_state.pop(cid, None)
            self._held.discard(cid)
            self.mqtt.publish(discovery_topic(self.prefix, cid), "", retain=True, qos=1)
            # also the retained desired setpoint, or a new charger with this id would inherit it
            for topic in ("state", "availability", "connection", "charging_limit/set"):
                self.mqtt.publish(f"{self.base}/{cid}/{topic}", "", retain=True, qos=1)

    def _mark_dirty(self, charger_id: str, urgent: bool = True) -> None:
        """Coalesce: a MeterValues with ten readings becomes one state publish."""
        self._dirty.add(charger_id)
        if urgent:
            self._urgent.add(charger_id)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Publish each changed charger's state; one whose only news is readings waits out its interval.

        A charger reporting every 10 s is published at once, every time. One flooding MeterValues
        (a closed-loop benchmark, a firmware stuck in a loop) gets one state per ``readings_interval``
        with its newest values, not one per message: the MQTT output was ~40 µs of ~170 µs per message.
        A change of anything but readings (status, transaction, limits) goes out at once, so no
        transition an automation may trigger on is merged away.
        """
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        urgent, self._urgent = self._urgent, set()
        now = asyncio.get_running_loop().time()
        for cid in dirty:
            last = self._last_state.get(cid)
            if cid not in urgent and last is not None and now - last < self._readings_interval:
                self._held.add(cid)
                continue
            self._held.discard(cid)
            self._publish_state(cid, now)
        if self._held and self._held_handle is None:
            self._held_handle = asyncio.get_running_loop().call_later(self._readings_interval, self._release_held)

    def _release_held(self) -> None:
        self._held_handle = None
        held, self._held = self._held, set()
        now = asyncio.get_running_loop().time()
        for cid in held:
            self._publish_state(cid, now)

    def _publish_state(self, cid: str, now: float) -> None:
        state = self.hub.states.get(cid)
        if state is None:
            return
        try:
            payload = strict_json.dumps_bytes(state_payload(state, self.config))
        except ValueError as err:  # a value JSON cannot carry: this charger's state waits, the others' do not
            _LOGGER.error("%s: state not published: %s", cid, err)
            return
        self._last_state[cid] = now
        self.mqtt.publish(f"{self.base}/{cid}/state", payload, retain=True)

    def _publish_discovery(self, state: ChargerState, force: bool = False) -> None:
        if not self.discovery_enabled:
            return
        discovery = device_discovery(state, self.config)
        self._announced[state.id] = frozenset(discovery["components"])
        payload = strict_json.dumps(discovery)
        digest = hashlib.blake2b(payload.encode(), digest_size=16).digest()  # 16 bytes, not ~10 kB, per charger
        if force or self._published_discovery.get(state.id) != digest:
            self._published_discovery[state.id] = digest
            self.mqtt.publish(discovery_topic(self.prefix, state.id), payload, retain=True, qos=1)

    def _publish_event(self, charger_id: str, data: dict[str, Any]) -> None:
        if not is_charger_id(charger_id):
            return
        self.mqtt.publish(f"{self.base}/{charger_id}/event", strict_json.dumps({**data, "timestamp": utc_now_iso()}, default=str), qos=1)

    def _schedule_bridge_info(self) -> None:
        """At most one bridge/info per second: it lists every charger, and reconnect storms come in thousands."""
        if self._bridge_info_handle is None:
            self._bridge_info_handle = asyncio.get_running_loop().call_later(BRIDGE_INFO_DELAY, self._publish_bridge_info)

    def problem_changed(self, problem: str | None) -> None:
        """The store (or another part) reports a problem, or that it is gone: tell Home Assistant now."""
        self._publish_bridge_info()

    def _publish_bridge_info(self) -> None:
        if self._bridge_info_handle is not None:
            self._bridge_info_handle.cancel()
            self._bridge_info_handle = None
        info = {"version": __version__, "instance_id": self.instance, "connected_chargers": len(self.hub.connected),
                "chargers": sorted(self.hub.states), "problem": self.hub.store.problem}
        self.mqtt.publish(bridge_topic(self.config, "info"), json.dumps(info), retain=True, qos=1)

    def publish_all(self) -> None:
        """After a broker (re)connect or Home Assistant's birth: everything, from scratch."""
        if self.discovery_enabled:
            self.mqtt.publish(f"{self.prefix}/device/{bridge_id(self.config)}/config", json.dumps(bridge_discovery(self.config)), retain=True, qos=1)
        self._publish_bridge_info()
        for cid, state in self.hub.states.items():
            if self.instance is not None and not state.connected:
                continue  # another instance may hold it; whoever does publishes it
            self._publish_discovery(state, force=True)
            self.mqtt.publish(f"{self.base}/{cid}/availability", "online" if state.connected else "offline", retain=True, qos=1)
            self._mark_dirty(cid)

    # -- MQTT input ----------------------------------------------------------------

    def _on_ha_status(self, topic: str, payload: bytes) -> None:
        if payload.strip().lower() != b"online":
            return
        if self._birth_handle is not None:
            self._birth_handle.cancel()
        delay = random.uniform(0, BIRTH_DELAY_MAX)
        _LOGGER.info("Home Assistant came online; re-publishing discovery and state in %.1f s", delay)
        self._birth_handle = asyncio.get_running_loop().call_later(delay, self.publish_all)

    def _on_command(self, topic: str, payload: bytes) -> Any:
        cid, command, verb = topic[len(self.base) + 1 :].split("/")  # <base>/<cp>/<command>/set|clear
        if not is_charger_id(cid):
            _LOGGER.warning("ignored command on %r: not a valid charge point id", topic)
            return
        if verb == "clear":
            command = "clear_limit"
        if not payload.strip():
            # An empty retained message is how MQTT deletes one: it must never unlock or reset anything.
            if cid in self.hub.states:
                _LOGGER.info("%s: ignored an empty %s payload; commands need an explicit payload (see the README's topic table)", cid, command)
            return None
        handler = COMMANDS.get(command)
        if handler is None:
            _LOGGER.warning("%s: unknown command %r on %s", cid, command, topic)
            self.hub.result(cid, command=command, status=Status.UNKNOWN_COMMAND, reason=f"no command {command!r}; see the README's topic table")
            return
        try:
            return handler(self.hub, self.config, cid, payload, "mqtt")  # the store's write of a setpoint: acknowledged once done
        except SetpointError as err:
            _LOGGER.warning("%s: %s refused: %s", cid, command, err)
            self.hub.result(cid, command=command, status="Invalid", reason=str(err))
        return None


# -- commands -------------------------------------------------------------------------------
# One function per ``<base>/<cp>/<command>/set`` topic, from the payload to the hub call. The
# chargers page (web.py) sends its controls through the same table, so a payload is parsed and
# checked the same way wherever it comes from. A refused payload raises SetpointError.


def _charging_limit(hub: Hub, config: Mapping[str, Any], cid: str, payload: bytes, source: str) -> Any:
    limit, unit = parse_limit_payload(payload, config["charging"]["unit"])
    return hub.set_charging_limit(cid, limit, unit, source=source)


def _charging_schedule(hub: Hub, config: Mapping[str, Any], cid: str, payload: bytes, source: str) -> None:
    entries = _json_payload(payload)
    hub.run_command(cid, "set_charging_schedule", entries=entries)


def _charging(hub: Hub, config: Mapping[str, Any], cid: str, payload: bytes, source: str) -> None:
    if parse_switch(payload):
        hub.run_command(cid, "remote_start_transaction", id_tag=config["charging"]["id_tag"], connector_id=1)
        return
    state = hub.states.get(cid)
    active = state.active_transaction() if state else None
    if active is None:
        hub.result(cid, command="remote_stop_transaction", status="NoTransaction", reason="no transaction is running")
        return
    hub.run_command(cid, "remote_stop_transaction", transaction_id=active[1].transaction_id)


def _available(hub: Hub, config: Mapping[str, Any], cid: str, payload: bytes, source: str) -> None:
    hub.run_command(cid, "change_availability", operative=parse_switch(payload))


def _reset(hub: Hub, config: Mapping[str, Any], cid: str, payload: bytes, source: str) -> None:
    kind = payload.decode("utf-8", "replace").strip().capitalize()
    if kind not in ("Soft", "Hard"):
        raise SetpointError(f"reset type {printable(kind, 20)!r} is not allowed; use Soft or Hard")
    hub.run_command(cid, "reset", kind=kind)


def _unlock(hub: Hub, config: Mapping[str, Any], cid: str, payload: bytes, source: str) -> None:
    text = payload.decode("utf-8", "replace").strip()
    if not re.fullmatch(r"[0-9]{1,3}", text, re.ASCII) or not 1 <= int(text) <= config["ocpp"]["max_connectors"]:
        raise SetpointError(f"connector {printable(text, 20)!r} is not a connector number (1 to {config['ocpp']['max_connectors']})")
    hub.run_command(cid, "unlock_connector", connector_id=int(text))


def _refresh(hub: Hub, config: Mapping[str, Any], cid: str, payload: bytes, source: str) -> None:
    hub.run_command(cid, "refresh")


def _clear_limit(hub: Hub, config: Mapping[str, Any], cid: str, payload: bytes, source: str) -> None:
    hub.run_command(cid, "clear_charging_limit")


def _remove(hub: Hub, config: Mapping[str, Any], cid: str, payload: bytes, source: str) -> None:
    hub.remove_charger(cid)


Command = Callable[[Hub, Mapping[str, Any], str, bytes, str], Any]
COMMANDS: dict[str, Command] = {
    "charging_limit": _charging_limit,
    "charging_schedule": _charging_schedule,
    "charging": _charging,
    "available": _available,
    "reset": _reset,
    "unlock": _unlock,
    "refresh": _refresh,
    "clear_limit": _clear_limit,
    "remove": _remove,
}


def parse_switch(payload: bytes) -> bool:
    text = payload.decode("utf-8", "replace").strip().lower()
    if text in ("on", "true", "1", "start"):
        return True
    if text in ("off", "false", "0", "stop"):
        return False
    raise SetpointError(f"{text[:20]!r} is not ON or OFF")


def _json_payload(payload: bytes) -> Any:
    if len(payload) > 16384:
        raise SetpointError(f"payload of {len(payload)} bytes is too large (at most 16384)")
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise SetpointError("payload is not JSON (or nested too deeply)") from None
