"""BEMcom connector: the topics of BEMcom's Python connector template, fed by the hub.

BEMcom (FZI's building energy management framework) talks to its connectors over
MQTT only, so being a drop-in replacement for its OCPP connector means speaking
these topics exactly (reference/bemcom.md, ``cn`` = the connector name):

* ``cn/available_datapoints`` (retained): every sensor key seen so far and the
  actuator keys; re-sent when a key appears, so the API is not flooded with
  example values.
* ``cn/datapoint_map`` (read): which keys the API wants and on which topics.
  Only mapped sensor keys are published (``{"value", "timestamp"}``, retained);
  mapped actuator topics are subscribed with QoS 2 and dropped when the map drops
  them. Subscriptions live in the MQTT bridge's registry, so they come back after
  a broker reconnect (the original connector lost them).
* ``cn/raw_message_to_db``, ``cn/heartbeat``, ``cn/logs``.

Sensor values are those the original connector published: built from the
charger's own CALLs (so ``Power.Active.Import__W`` carries the string the
charger sent, in its unit), with the original's keys (legacy keys: the default
when started the BEMcom way) or namespaced per charger (``<cp>__``) so that
several chargers fit in one connector. Our normalised readings are published as
well, under ``state__``. Values are ones BEMcom's API can store (lists as JSON text).

Opted in (``bemcom.apply_setpoints``), the BEMcom API's ``/setpoint`` and
``/schedule`` topics of the charging-limit actuator are honoured directly:
BEMcom's controller rule turns them into a time line, installed as one charging
profile the charger enforces itself. Off by default: that is the job of BEMcom's
controller, and two writers would fight.

Commands go through the hub, never to OCPP directly, and never block the loop.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

from ocpp.exceptions import OCPPError

from . import __version__, strict_json, validation
from .charge_point import snake_keys
from .hub import CONNECTED, DISCONNECTED, IDENTIFIED, RAW_FRAME, READY, REMOVED, RESULT, UPDATED, Event, Hub
from .mqtt_bridge import MqttBridge
from .entities import state_values
from .profiles import SetpointError, check_limit
from .state import DEFAULT_MEASURAND, ChargerState, parse_number, parse_timestamp

_LOGGER = logging.getLogger(__name__)

# The unit the original connector sent limits in; used when OCPP_PROFILE names none.
ORIGINAL_UNIT = "W"
ACTUATOR_EXAMPLE = "0"
SEND_CHARGING_PROFILE = "execute_send_charging_profile"
# execute_trigger_message's values, as the original numbered them.
TRIGGER_MESSAGES = (
    "BootNotification",
    "DiagnosticsStatusNotification",
    "FirmwareStatusNotification",
    "Heartbeat",
    "MeterValues",
    "StatusNotification",
)
_CONNECTOR_MESSAGES = ("MeterValues", "StatusNotification")  # the original asked for connector 1
MAIN_CONNECTOR = 1
COMPOSITE_DURATION = 3600  # seconds, when the value gives none
# Charger CALLs whose payload fields become datapoints one to one (snake_case, like the original).
_FIELD_ACTIONS = ("BootNotification", "StatusNotification", "FirmwareStatusNotification", "DiagnosticsStatusNotification")
# Command results -> the OCPP action their datapoints are named after.
_RESULT_ACTIONS = {
    "charging_limit": "SetChargingProfile",
    "charging_schedule": "SetChargingProfile",
    "trigger_message": "TriggerMessage",
    "unlock_connector": "UnlockConnector",
    "get_composite_schedule": "CompositeSchedule",
}
_MAX_TOKEN = 50  # measurand, phase and unit are short enums; longer ones would only bloat the key list
# Sensor datapoints per charger (per connector in legacy mode). A real charger has a few dozen; even
# schema-valid MeterValues could combine measurands, phases and units into thousands, and every new key
# republishes the retained available_datapoints with all of them.
MAX_DATAPOINTS = 500
_EPOCH = datetime.min.replace(tzinfo=timezone.utc)
MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last moment a datetime holds


class BemcomError(ValueError):
    """A BEMcom message we cannot use; the message says what was expected."""


def now_ms() -> int:
    """BEMcom timestamps: integer milliseconds since the Unix epoch, UTC."""
    return round(time.time() * 1000)


# -- sensor datapoints (pure) ---------------------------------------------------------


def flatten(message: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a__b": 1}``: the template's flattening; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in message.items():
        path = f"{prefix}__{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, path))
        else:
            flat[path] = value
    return flat


def meter_datapoints(meter_value: Any) -> dict[str, Any]:
    """A MeterValues ``meterValue`` -> ``{"<measurand>[__<phase>]__<unit>": value as sent}``.

    The original connector's keys. Like it, only one sample set is used: the newest
    (by timestamp, so a replayed older entry does not win). OCPP's defaults fill a
    missing measurand (Energy.Active.Import.Register) and, for energy, a missing
    unit (Wh); other samples without a unit get no unit level.
    """
    entries = [meter_value] if isinstance(meter_value, Mapping) else meter_value if isinstance(meter_value, list) else []
    dated = [(parse_timestamp(e.get("timestamp")) or _EPOCH, i, e) for i, e in enumerate(entries) if isinstance(e, Mapping)]
    if not dated:
        return {}
    newest = max(dated, key=lambda d: (d[0], d[1]))[2]
    samples = newest.get("sampledValue")
    flat: dict[str, Any] = {}
    for sample in samples if isinstance(samples, list) else []:
        if not isinstance(sample, Mapping) or "value" not in sample:
            continue
        measurand = sample.get("measurand") or DEFAULT_MEASURAND
        unit = sample.get("unit") or ("Wh" if isinstance(measurand, str) and measurand.startswith("Energy.") else None)
        parts = [measurand, sample.get("phase") or None, unit]
        if all(p is None or (isinstance(p, str) and len(p) <= _MAX_TOKEN) for p in parts):
            flat["__".join(p for p in parts if p)] = sample["value"]
    return flat


def sensor_message(action: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The original connector's sensor message for a charger CALL (empty when it had none)."""
    if action == "Heartbeat":
        return {"Heartbeat": "alive"}
    if action == "MeterValues":
        return meter_datapoints(payload.get("meterValue"))
    if action in _FIELD_ACTIONS:
        return {action: {k: v for k, v in snake_keys(dict(payload)).items() if not isinstance(v, (dict, list))}}
    return {}


def result_message(data: Mapping[str, Any]) -> dict[str, Any]:
    """A command result -> datapoints named after its OCPP action (``CompositeSchedule__...`` as the original)."""
    action = _RESULT_ACTIONS.get(data.get("command", ""))
    if action is None:
        return {}
    fields: dict[str, Any] = {"status": data.get("status")}
    if action == "SetChargingProfile":
        fields.update(limit=data.get("limit"), unit=data.get("unit"))
    elif action == "TriggerMessage":
        fields["requested_message"] = data.get("requested_message")
    elif action == "UnlockConnector":
        fields["connector_id"] = data.get("connector_id")
    else:
        fields.update(snake_keys(dict(data.get("response") or {})))
    return {action: {k: v for k, v in fields.items() if v is not None}}


def datapoint_value(value: Any) -> Any:
    """A value the BEMcom API can store: it saves ``float(value)`` when that works, else the value as
    text, and ``float()`` of a list raises a TypeError it does not catch. So lists (a composite
    schedule's periods) travel as their JSON text."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return value


def state_message(state: ChargerState, unit: str) -> dict[str, Any]:
    """Our normalised values (the Home Assistant state JSON's keys, from the entity table) under ``state``."""
    values = {k: v for k, v in state_values(state, unit).items() if v is not None and not isinstance(v, dict)}
    return {"state": values}


# -- datapoint_map and actuator values (pure) -------------------------------------------


def _valid_topic(topic: Any) -> bool:
    return isinstance(topic, str) and bool(topic) and not any(c in topic for c in "+#\0")


def parse_datapoint_map(payload: bytes) -> tuple[dict[str, str], dict[str, str]]:
    """``{"sensor": {key: topic}, "actuator": {topic: key}}`` -> (sensor, actuator); BemcomError otherwise."""
    try:
        data = json.loads(payload)
    except ValueError:
        raise BemcomError("not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("sensor"), dict) or not isinstance(data.get("actuator"), dict):
        raise BemcomError('expected {"sensor": {key: topic}, "actuator": {topic: key}} with both keys present')
    sensor, actuator = data["sensor"], data["actuator"]
    bad = [t for t in sensor.values() if not _valid_topic(t)] + [t for t, k in actuator.items() if not _valid_topic(t) or not isinstance(k, str)]
    if bad:
        raise BemcomError(f"topics must be non-empty strings without '+', '#': {bad[:3]!r}")
    return sensor, actuator


def parse_value_message(payload: bytes) -> Any:
    """An actuator value message ``{"value": ..., "timestamp": ...}`` -> the value."""
    text = payload[:60].decode("utf-8", "replace")
    try:
        data = json.loads(payload)
    except ValueError:
        raise BemcomError(f"{text!r} is not JSON; expected {{\"value\": ..., \"timestamp\": <ms>}}") from None
    if not isinstance(data, dict) or "value" not in data:
        raise BemcomError(f"{text!r} has no 'value'; expected {{\"value\": ..., \"timestamp\": <ms>}}")
    return data["value"]


def hub_command(command: str) -> str:
    """The hub command an actuator runs; ``charging_limit`` stands for the hub's set_charging_limit,
    which owns the range check and keeps a limit for an offline charger."""
    return "charging_limit" if command == SEND_CHARGING_PROFILE else command.removeprefix("execute_")


def command_call(command: str, value: Any, unit: str) -> tuple[str, dict[str, Any]]:
    """An actuator command and its value -> (hub command, arguments); BemcomError for a value it cannot take."""
    if command == SEND_CHARGING_PROFILE:
        limit = parse_number(value)
        if limit is None:
            raise BemcomError(f"limit {value!r} is not a number")
        return "charging_limit", {"limit": limit, "unit": unit}
    if command == "execute_trigger_message":
        message = value if value in TRIGGER_MESSAGES else None
        number = parse_number(value)
        if message is None and number is not None and number.is_integer() and 0 <= number < len(TRIGGER_MESSAGES):
            message = TRIGGER_MESSAGES[int(number)]
        if message is None:
            raise BemcomError(f"{value!r} is not a message number 0..5 ({', '.join(f'{i}={m}' for i, m in enumerate(TRIGGER_MESSAGES))})")
        return "trigger_message", {"requested_message": message,
                                   "connector_id": MAIN_CONNECTOR if message in _CONNECTOR_MESSAGES else None}
    if command == "execute_unlock_connector":
        number = parse_number(value)  # the original ignored the value and unlocked connector 1
        connector = int(number) if number is not None and number.is_integer() and number >= 1 else MAIN_CONNECTOR
        return "unlock_connector", {"connector_id": connector}
    if command == "execute_get_composite_schedule":
        number = parse_number(value)
        duration = int(number) if number is not None and number >= 1 else COMPOSITE_DURATION
        return "get_composite_schedule", {"connector_id": MAIN_CONNECTOR, "duration": duration, "unit": unit}
    raise BemcomError(f"unknown command {command!r}")


# -- setpoint and schedule (pure) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanItem:
    """One setpoint or schedule item: valid from ``start`` (ms, None: now) until ``end`` (None: open)."""

    start: int | None
    end: int | None
    value: float | None  # schedule: value; setpoint: preferred_value
    minimum: float | None = None
    maximum: float | None = None
    acceptable: tuple[float, ...] | None = None
    # BEMcom's controller tells flexibility by the keys, not their values: "acceptable_values"
    # present (even null: any value) is discrete, "min_value" and "max_value" both present
    # (even null: no bound) continuous.
    discrete: bool = False
    continuous: bool = False

    def active(self, moment: int) -> bool:
        return (self.start is None or self.start <= moment) and (self.end is None or moment < self.end)

    def lets_schedule_through(self, sensor: float | None) -> bool:
        """BEMcom controller's test of a setpoint against its sensor's last value (None: none received yet)."""
        if self.discrete:
            return self.acceptable is None or sensor is None or any(math.isclose(sensor, a) for a in self.acceptable)
        if self.continuous:
            return sensor is None or ((self.minimum is None or sensor >= self.minimum) and (self.maximum is None or sensor <= self.maximum))
        return False  # no flexibility: the preferred value


def _timestamp(item: Mapping[str, Any], key: str) -> int | None:
    """Milliseconds since the epoch, up to the end of year 9999: a charging profile names its start as
    an ISO date, and ``1e300`` has none (it raised OverflowError long after the message was taken)."""
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BemcomError(f"{key} {value!r} is not a timestamp in milliseconds")
    if not 0 <= value <= MAX_TIMESTAMP_MS:
        raise BemcomError(f"{key} {value!r} is outside 0..{MAX_TIMESTAMP_MS} (1970 to 9999-12-31 in milliseconds)")
    return int(value)


def _number(item: Mapping[str, Any], key: str) -> float | None:
    value = item.get(key)
    if value is None:
        return None
    number = parse_number(value)
    if number is None:
        raise BemcomError(f"{key} {value!r} is not a number")
    return number


def parse_plan(kind: str, payload: bytes) -> list[PlanItem] | None:
    """A ``/setpoint`` or ``/schedule`` message -> its items; None when cleared (null, or an empty retained message)."""
    if not payload.strip():
        return None
    try:
        data = json.loads(payload)
    except ValueError:
        raise BemcomError("not JSON") from None
    if not isinstance(data, dict) or kind not in data:
        raise BemcomError(f"expected a JSON object with a {kind!r} list")
    items = data[kind]
    if items is None:
        return None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise BemcomError(f"{kind!r} must be a list of objects")
    value_key = "preferred_value" if kind == "setpoint" else "value"
    plan = []
    for item in items:
        acceptable = item.get("acceptable_values")
        numbers: tuple[float, ...] | None = None
        if acceptable is not None:
            if not isinstance(acceptable, list):
                raise BemcomError(f"acceptable_values {acceptable!r} is not a list")
            parsed = tuple(parse_number(a) for a in acceptable)
            if None in parsed:
                raise BemcomError(f"acceptable_values {acceptable!r} are not all numbers")
            numbers = parsed  # type: ignore[assignment]
        plan.append(PlanItem(_timestamp(item, "from_timestamp"), _timestamp(item, "to_timestamp"), _number(item, value_key),
                             _number(item, "min_value"), _number(item, "max_value"), numbers,
                             discrete="acceptable_values" in item, continuous="min_value" in item and "max_value" in item))
    return plan


def _first_active(items: Sequence[PlanItem] | None, moment: int) -> PlanItem | None:
    return next((i for i in items or () if i.active(moment)), None)


def controller_value(setpoint: Sequence[PlanItem] | None, schedule: Sequence[PlanItem] | None, moment: int,
                     sensor: float | None = None) -> float | None:
    """BEMcom's controller rule (services/controllers/python, ``update_actuator_value``) at ``moment``.

    Schedule only: its value. Setpoint only: preferred_value. Both: the schedule's
    value while the setpoint's flexibility lets it through, judged on the control
    group's sensor value, else preferred_value; a setpoint without flexibility
    always wins. Without a sensor value (none configured, or none received yet)
    any flexibility lets the schedule through, as in BEMcom's controller.
    None: nothing to send (the actuator keeps its last value).
    """
    point, scheduled = _first_active(setpoint, moment), _first_active(schedule, moment)
    if scheduled is None:
        return point.value if point is not None else None
    if point is None or point.lets_schedule_through(sensor):
        return scheduled.value
    return point.value


def limit_timeline(setpoint: Sequence[PlanItem] | None, schedule: Sequence[PlanItem] | None, now: int,
                   sensor: float | None = None) -> list[tuple[int, float]]:
    """The controller's output from ``now`` on: ``[(from ms, limit)]``, one entry per change.

    Evaluated at ``now`` and at every item boundary; a moment without a value keeps
    the previous one, so the result is what a charging profile with several
    periods has to say.
    """
    items: Iterable[PlanItem] = itertools.chain(setpoint or (), schedule or ())
    boundaries = sorted({t for i in items for t in (i.start, i.end) if t is not None and t > now})
    timeline: list[tuple[int, float]] = []
    for moment in (now, *boundaries):
        value = controller_value(setpoint, schedule, moment, sensor)
        if value is not None and (not timeline or timeline[-1][1] != value):
            timeline.append((moment, value))
    return timeline


def _iso_ms(moment: int) -> str:
    return datetime.fromtimestamp(moment / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- the sink --------------------------------------------------------------------------------


def _secrets(config: Mapping[str, Any], inside: bool = False) -> list[str]:
    """Every configured password (also per-charger ``passwords``), so that no log line published to BEMcom carries one."""
    found: list[str] = []
    for key, value in config.items():
        secret = inside or "password" in str(key)
        if isinstance(value, Mapping):
            found += _secrets(value, secret)
        elif secret and isinstance(value, str) and value:
            found.append(value)
    return found


class MqttLogHandler(logging.Handler):
    """Log records as BEMcom log messages on ``cn/logs`` (retained), like the template's MQTTHandler.

    paho's own records are skipped, and a record logged while publishing one is
    dropped, so a failing publish cannot recurse.
    """

    def __init__(self, mqtt: MqttBridge, topic: str, secrets: Sequence[str], debug: bool = False) -> None:
        # With DEBUG=TRUE the template publishes its debug records too; ours, not every library's frame log.
        super().__init__(logging.DEBUG if debug else logging.INFO)
        self.mqtt = mqtt
        self.topic = topic
        self.secrets = [s for s in secrets if s]
        self._local = threading.local()  # per thread, should a record come from another one (paho runs in the loop since)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("paho") or getattr(self._local, "busy", False):
            return
        if record.levelno < logging.INFO and not record.name.startswith("ocpp_addon"):
            return
        self._local.busy = True
        try:
            msg = record.getMessage()
            for secret in self.secrets:
                msg = msg.replace(secret, "***")
            payload = {"timestamp": round(record.created * 1000), "msg": msg, "emitter": record.funcName, "level": record.levelno}
            self.mqtt.publish(self.topic, strict_json.dumps(payload), retain=True)
        except Exception:
            self.handleError(record)
        finally:
            self._local.busy = False


@dataclass
class _Plan:
    """What the BEMcom API asked of one charging-limit actuator via /setpoint and /schedule."""

    setpoint: list[PlanItem] | None = None
    schedule: list[PlanItem] | None = None
    applied: tuple[tuple[int | None, float], ...] | None = None  # last time line sent, to send changes only


class BemcomSink:
    """Hub events -> BEMcom connector topics; BEMcom actuator messages -> hub commands."""

    def __init__(self, config: dict[str, Any], hub: Hub, mqtt: MqttBridge) -> None:
        bemcom = config["bemcom"]
        self.config = config
        self.hub = hub
        self.mqtt = mqtt
        self.name: str = bemcom["connector_name"]
        self.legacy: bool = bemcom["legacy_keys"]
        self.apply_setpoints: bool = bemcom["apply_setpoints"]
        # The controller rule's sensor datapoint (a key without the <cp>__ prefix), per charger.
        self.controller_sensor: str | None = bemcom["controller_sensor"]
        self._sensor_values: dict[str, float | None] = {}
        self.commands: tuple[str, ...] = tuple(bemcom["actuators"])
        self.raw_to_db: bool = bemcom["send_raw_message_to_db"]
        self.heartbeat_interval: float = bemcom["heartbeat_interval"]
        self.unit: str = config["charging"]["profile"]["unit"] or ORIGINAL_UNIT
        self.topic_logs = f"{self.name}/logs"
        self.topic_heartbeat = f"{self.name}/heartbeat"
        self.topic_available = f"{self.name}/available_datapoints"
        self.topic_map = f"{self.name}/datapoint_map"
        self.topic_raw = f"{self.name}/raw_message_to_db"
        self._sensors: dict[str, tuple[Any, int]] = {}  # key -> (last value, its timestamp)
        self._datapoints: dict[str, int] = {}  # keys learned from charger frames, per prefix ("<cp>__", "" for legacy keys)
        self._datapoints_full: set[str] = set()  # prefixes that reached MAX_DATAPOINTS (warned once)
        self._available_due = False  # an available_datapoints publish is scheduled
        self._actuators: dict[str, tuple[str | None, str]] = {}  # key -> (charger id or None in legacy mode, command)
        self._map_sensor: dict[str, str] = {}
        self._map_actuator: dict[str, str] = {}
        self._listening: dict[str, str] = {}  # subscribed actuator-side topic -> "value" | "setpoint" | "schedule"
        self._last_payload: dict[str, bytes] = {}
        self._plans: dict[str, _Plan] = {}  # by the actuator's /value topic
        self._heartbeat: asyncio.Task[None] | None = None
        self._log_handler = MqttLogHandler(mqtt, self.topic_logs, _secrets(config), debug=config["log_level"] == "debug")

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.mqtt.subscribe(self.topic_map, self._on_datapoint_map, qos=1)
        self.mqtt.on_connect(self._on_connect)
        if self.legacy:
            self._add_actuators(None)
        for charger_id in list(self.hub.states):
            self._add_actuators(charger_id)
        if not self.commands:
            _LOGGER.warning("BEMcom: no actuator commands configured (OCPP_CONFIG / bemcom.actuators is empty)")
        logging.getLogger().addHandler(self._log_handler)

    async def stop(self) -> None:
        self._flush_available()
        logging.getLogger().removeHandler(self._log_handler)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None

    def _on_connect(self) -> None:
        # Also after a reconnect: a broker that lost its retained messages learns the keys again.
        self._publish_available()
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._beat(), name="bemcom-heartbeat")

    async def _beat(self) -> None:
        interval_ms = round(self.heartbeat_interval * 1000)
        while True:
            now = now_ms()
            beat = {"this_heartbeats_timestamp": now, "next_heartbeats_timestamp": now + interval_ms}
            self.mqtt.publish(self.topic_heartbeat, strict_json.dumps(beat))
            await asyncio.sleep(self.heartbeat_interval)

    # -- hub events ------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        kind, charger_id = event.kind, event.charger_id
        if kind == RAW_FRAME:
            self._on_frame(charger_id, event.data["frame"])
        elif kind == RESULT:
            if charger_id in self.hub.states:
                self._sensor_flow(charger_id, result_message(event.data))
        elif kind in (CONNECTED, DISCONNECTED, UPDATED, IDENTIFIED):
            assert event.state is not None
            if kind == CONNECTED:
                self._add_actuators(charger_id)
                if self.legacy and len(self.hub.connected) > 1:
                    _LOGGER.warning("BEMcom legacy keys with %d chargers connected: their datapoints share one set of keys; "
                                    "set KEYS_PER_CHARGER=TRUE (bemcom.legacy_keys: false) for keys per charger", len(self.hub.connected))
            self._sensor_flow(charger_id, state_message(event.state, self.config["charging"]["unit"]), changes_only=True)
        elif kind == READY:  # a schedule that could not be installed while the charger was away
            for value_topic, plan in list(self._plans.items()):
                if plan.applied is None and self._map_actuator.get(value_topic) in self._actuators:
                    self._try_plan(value_topic, only_for=charger_id)
        elif kind == REMOVED and not self.legacy:
            prefix = f"{charger_id}__"
            for keys in (self._sensors, self._actuators):
                for key in [k for k in keys if k.startswith(prefix)]:
                    del keys[key]
            self._datapoints.pop(prefix, None)
            self._datapoints_full.discard(prefix)
            self._publish_available()

    def _on_frame(self, charger_id: str, text: str) -> None:
        received = now_ms()
        try:
            frame: Any = strict_json.loads(text)
        except (ValueError, RecursionError):  # as the charger sent it; NaN/1e400 never become "Infinity"
            frame = text
        if self.raw_to_db:
            message = {"payload": {"raw_message": frame, "timestamp": received}, "connector_version": __version__}
            self.mqtt.publish(self.topic_raw, strict_json.dumps(message), qos=2)
        # Only the charger's CALLs carry sensor data; answers to our commands come back as RESULT events.
        if isinstance(frame, list) and len(frame) == 4 and frame[0] == 2 and isinstance(frame[2], str) and isinstance(frame[3], dict):
            if self._schema_valid(charger_id, frame[2], frame[3]):
                self._sensor_flow(charger_id, sensor_message(frame[2], frame[3]), capped=True)

    def _schema_valid(self, charger_id: str, action: str, payload: dict[str, Any]) -> bool:
        """Whether the charge point accepts this CALL (its schema, or lenient mode's repair).

        Raw frames reach us before the charge point has checked them: a CALL it answers with a
        CALLERROR must not become datapoints, or every invented key in it would."""
        cp = self.hub.connected.get(charger_id)
        version = cp.ocpp_version if cp is not None else "1.6"
        try:
            validation.validate_call(action, payload, version)
        except (OCPPError, ValueError):
            return cp is not None and cp.lenient and cp.repaired_call(action, payload) is not None
        return True

    def _sensor_flow(self, charger_id: str, message: Mapping[str, Any], changes_only: bool = False, capped: bool = False) -> None:
        """Flatten, namespace, learn new keys, publish the mapped ones (the template's run_sensor_flow).

        ``capped``: the keys come from the charger's own frames, so at most MAX_DATAPOINTS of them
        are learned per charger; our state and command results have a fixed set of keys."""
        prefix = "" if self.legacy else f"{charger_id}__"
        flat = {prefix + key: datapoint_value(value) for key, value in flatten(message).items()}
        if changes_only:
            flat = {key: value for key, value in flat.items() if key not in self._sensors or self._sensors[key][0] != value}
        new_keys = [key for key in flat if key not in self._sensors]
        if new_keys and capped:
            count = self._datapoints.get(prefix, 0)
            room = max(0, MAX_DATAPOINTS - count)
            for key in new_keys[room:]:
                del flat[key]
            if len(new_keys) > room and prefix not in self._datapoints_full:
                self._datapoints_full.add(prefix)
                _LOGGER.warning("BEMcom: %s reached %d datapoints, the most one charger gets; new keys from it are dropped (first: %s)",
                                charger_id, MAX_DATAPOINTS, new_keys[room][:100])
            new_keys = new_keys[:room]
            self._datapoints[prefix] = count + len(new_keys)
        timestamp = now_ms()
        self._sensors.update((key, (value, timestamp)) for key, value in flat.items())
        if self.controller_sensor is not None and prefix + self.controller_sensor in flat:
            self._controller_sensor(charger_id, flat[prefix + self.controller_sensor])
        if new_keys:
            self._publish_available()
        for key, value in flat.items():
            topic = self._map_sensor.get(key)
            if topic is not None:
                self._publish_value(topic, value, timestamp)

    def _controller_sensor(self, charger_id: str, value: Any) -> None:
        """A new value of the controller rule's sensor: the time line may change (BEMcom's controller
        recomputes on every sensor message too; only a changed time line is sent)."""
        number = None if isinstance(value, bool) else parse_number(value)
        if self._sensor_values.get(charger_id) == number and charger_id in self._sensor_values:
            return
        self._sensor_values[charger_id] = number
        for value_topic in list(self._plans):
            self._try_plan(value_topic, only_for=charger_id)

    def _publish_value(self, topic: str, value: Any, timestamp: int) -> None:
        if self._available_due:  # a value never arrives before the key list that names it, as in the template
            self._flush_available()
        self.mqtt.publish(topic, strict_json.dumps({"value": value, "timestamp": timestamp}, default=str), retain=True)

    def _add_actuators(self, charger_id: str | None) -> None:
        if self.legacy != (charger_id is None):
            return
        prefix = f"{charger_id}__" if charger_id else ""
        new = {f"{prefix}{command}__": (charger_id, command) for command in self.commands}
        if not new.keys() <= self._actuators.keys():
            self._actuators.update(new)
            self._publish_available()

    def _publish_available(self) -> None:
        """Coalesced: a burst of new keys (a charger's first frames, several chargers connecting) is one
        publish of the whole list, not one per key."""
        if not self._available_due:
            self._available_due = True
            asyncio.get_running_loop().call_soon(self._flush_available)

    def _flush_available(self) -> None:
        if not self._available_due:
            return
        self._available_due = False
        available = {
            "sensor": {key: value for key, (value, _) in self._sensors.items()},
            "actuator": {key: ACTUATOR_EXAMPLE for key in self._actuators},
        }
        self.mqtt.publish(self.topic_available, strict_json.dumps(available, default=str), retain=True)

    # -- datapoint_map ------------------------------------------------------------------------

    def _on_datapoint_map(self, topic: str, payload: bytes) -> None:
        try:
            sensor, actuator = parse_datapoint_map(payload)
        except BemcomError as err:
            _LOGGER.error("BEMcom: ignored the datapoint_map on %s (%s); keeping the previous one", topic, err)
            return
        previous = self._map_sensor
        self._map_sensor, self._map_actuator = sensor, actuator
        wanted: dict[str, str] = {}
        for value_topic, key in actuator.items():
            wanted[value_topic] = "value"
            if self.apply_setpoints and key.endswith(f"{SEND_CHARGING_PROFILE}__") and value_topic.endswith("/value"):
                base = value_topic[: -len("value")]
                wanted[base + "setpoint"] = "setpoint"
                wanted[base + "schedule"] = "schedule"
        for gone in self._listening.keys() - wanted.keys():
            self.mqtt.unsubscribe(gone)
            self._last_payload.pop(gone, None)
        for added in wanted.keys() - self._listening.keys():
            self.mqtt.subscribe(added, self._on_actuator_message, qos=2)
        self._listening = wanted
        self._plans = {t: plan for t, plan in self._plans.items() if wanted.get(t.removesuffix("value") + "schedule") == "schedule"}
        # A newly mapped key gets its last value now rather than at the charger's next message
        # (a BootNotification may be weeks away), with the time it was received.
        for key, value_topic in sensor.items():
            if previous.get(key) != value_topic and key in self._sensors:
                self._publish_value(value_topic, *self._sensors[key])
        _LOGGER.info("BEMcom: datapoint_map with %d sensor and %d actuator datapoints", len(sensor), len(actuator))

    # -- actuators ------------------------------------------------------------------------------

    def _on_actuator_message(self, topic: str, payload: bytes) -> Any:
        """Returns the write of a new setpoint to disk, if any: the message is acknowledged once it is done."""
        kind = self._listening.get(topic)
        if kind is None:
            _LOGGER.warning("BEMcom: ignored a message on %s: the datapoint_map maps no actuator there", topic)
            return None
        # Every live message is executed, as the template does, even the same value twice (a
        # second TriggerMessage is a second request). Only a retained message that the broker
        # hands out again on a re-subscription (a reconnect) is the one executed before:
        # executing it again would e.g. unlock the connector again.
        if self.mqtt.retained and self._last_payload.get(topic) == payload:
            return None
        self._last_payload[topic] = payload
        if kind == "value":
            return self._on_value(topic, payload)
        self._on_plan(topic, kind, payload)
        return None

    def _target(self, topic: str) -> tuple[str, str] | None:
        """The charger and command an actuator topic addresses; None (logged) when there is none."""
        key = self._map_actuator.get(topic)
        if key not in self._actuators:
            _LOGGER.warning("BEMcom: ignored a message on %s: it is mapped to %r, which is not an actuator of this connector "
                            "(actuators: %s)", topic, key, ", ".join(self._actuators) or "none")
            return None
        charger_id, command = self._actuators[key]
        if charger_id is None:
            candidates = list(self.hub.connected) or list(self.hub.states)
            if len(candidates) != 1:
                _LOGGER.warning("BEMcom: ignored %s on %s: legacy keys address the only charger, but %d are %s",
                                command, topic, len(candidates), "connected" if self.hub.connected else "known")
                return None
            charger_id = candidates[0]
        return charger_id, command

    def _on_value(self, topic: str, payload: bytes) -> Any:
        target = self._target(topic)
        if target is None:
            return None
        charger_id, command = target
        try:
            name, kwargs = command_call(command, parse_value_message(payload), self.unit)
        except BemcomError as err:
            _LOGGER.warning("%s: BEMcom %s on %s refused: %s", charger_id, command, topic, err)
            self.hub.result(charger_id, command=hub_command(command), status="Invalid", reason=str(err), source="bemcom")
            return None
        if name == "charging_limit":
            return self.hub.set_charging_limit(charger_id, kwargs["limit"], unit=kwargs["unit"], source="bemcom")
        self.hub.run_command(charger_id, name, **kwargs)
        return None

    def _on_plan(self, topic: str, kind: str, payload: bytes) -> None:
        value_topic = topic[: -len(kind)] + "value"
        try:
            items = parse_plan(kind, payload)
        except BemcomError as err:
            _LOGGER.warning("BEMcom: ignored the %s on %s: %s", kind, topic, err)
            return
        plan = self._plans.setdefault(value_topic, _Plan())
        setattr(plan, kind, items)
        self._try_plan(value_topic)

    def _try_plan(self, value_topic: str, only_for: str | None = None) -> None:
        """_apply_plan, but a plan that fails is dropped with its traceback: it is kept for every later
        READY and sensor value, so it would fail again each time and stop the loop over the other plans."""
        try:
            self._apply_plan(value_topic, only_for)
        except Exception:
            _LOGGER.exception("BEMcom: dropped the setpoint/schedule on %s: applying it failed", value_topic)
            self._plans.pop(value_topic, None)

    def _apply_plan(self, value_topic: str, only_for: str | None = None) -> None:
        """Send the controller's time line: one limit now, or one profile with several periods."""
        plan = self._plans[value_topic]
        target = self._target(value_topic)
        if target is None or (only_for is not None and target[0] != only_for):
            return
        charger_id = target[0]
        now = now_ms()
        timeline = limit_timeline(plan.setpoint, plan.schedule, now, self._sensor_values.get(charger_id))
        if not timeline:
            return  # nothing to send: the charger keeps its limit
        shape = tuple((start if start > now else None, limit) for start, limit in timeline)
        if shape == plan.applied:
            return
        try:
            for _, limit in timeline:
                check_limit(limit, self.unit, self.config["charging"])
        except SetpointError as err:
            _LOGGER.warning("%s: BEMcom setpoint/schedule on %s refused: %s", charger_id, value_topic, err)
            self.hub.result(charger_id, command="charging_schedule", status="Invalid", reason=str(err), source="bemcom")
            return
        if len(timeline) == 1 and timeline[0][0] <= now:
            plan.applied = shape
            self.hub.set_charging_limit(charger_id, timeline[0][1], unit=self.unit, source="bemcom")
        elif charger_id in self.hub.connected:
            plan.applied = shape
            entries = [{"start": _iso_ms(start), "limit": limit} for start, limit in timeline]
            self.hub.run_command(charger_id, "set_charging_schedule", entries=entries, unit=self.unit)
        else:
            plan.applied = None
            _LOGGER.info("%s: charger offline; keeping the BEMcom schedule until it connects", charger_id)
