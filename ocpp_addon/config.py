"""Configuration: one voluptuous schema, several sources.

Sources, lowest precedence first: schema defaults < YAML file (or the add-on's
options.json) < BEMcom environment variables. Every error names the key path,
the value that was given and what is allowed, so a user can fix it without
reading code; loading fails before any port is opened.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

import voluptuous as vol
import yaml

from .auth import check_stored
from .state import MEASURANDS
from .topics import CHARGER_ID_PATTERN, CHARGER_ID_RE, is_charger_id  # noqa: F401 - re-exported

LOG_LEVELS = ("debug", "info", "warning", "error")
UNITS = ("A", "W")
PURPOSES = ("TxDefaultProfile", "ChargePointMaxProfile", "TxProfile")
KINDS = ("Absolute", "Relative", "Recurring")
# The original BEMcom OCPP connector's actuator commands (OCPP_CONFIG), all of which we serve.
BEMCOM_COMMANDS = ("execute_send_charging_profile", "execute_trigger_message", "execute_unlock_connector", "execute_get_composite_schedule")
DOTENV = ".env"  # read from the working directory, as BEMcom's connector template does
# Per-unit slider defaults: 6-32 A is the IEC 61851 range, 22 kW a three-phase 32 A wallbox.
UNIT_DEFAULTS = {"A": {"max": 32.0, "step": 1.0}, "W": {"max": 22000.0, "step": 100.0}}
# BEMcom drop-in mode: what the original OCPP connector did, for every key not set otherwise.
DROP_IN_DEFAULTS: dict[str, dict[str, Any]] = {
    "ocpp": {"heartbeat_interval": 10},  # the interval it answered every BootNotification with
    "mqtt": {"ocpp_topics": False, "discovery": False},  # it published nothing outside its connector's topics
    "bemcom": {"legacy_keys": True},  # its datapoint keys, which existing datapoint maps name
}


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key and why."""


def _topic_level(value: Any) -> str:
    """An MQTT topic prefix: no wildcards, no empty levels, no leading/trailing slash."""
    text = vol.Coerce(str)(value)
    if not text or any(c in text for c in "+#\0") or text.startswith("/") or text.endswith("/") or "//" in text:
        raise vol.Invalid("expected an MQTT topic prefix without '+', '#', empty levels or leading/trailing '/'")
    return text


def _path_prefix(value: Any) -> str:
    text = vol.Coerce(str)(value).strip("/")
    if text and not re.fullmatch(r"[A-Za-z0-9._~/-]+", text):
        raise vol.Invalid("expected a URL path such as 'ocpp' (letters, digits, '.', '_', '~', '-', '/')")
    return f"/{text}" if text else ""


def _ip_address(value: Any) -> str:
    text = vol.Coerce(str)(value).strip()
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise vol.Invalid("expected an IP address such as 172.30.32.2") from None
    return text


def _finite(value: Any) -> float:
    number = vol.Coerce(float)(value)
    if not math.isfinite(number):
        raise vol.Invalid("expected a finite number")
    return number


def _charger_id(value: Any) -> str:
    text = vol.Coerce(str)(value)
    if not is_charger_id(text):
        raise vol.Invalid(f"expected a charge point id matching {CHARGER_ID_PATTERN}")
    return text


def _optional_text(value: Any) -> str | None:
    """Paths and secrets: an empty string (as the add-on UI stores an unset field) means unset.

    Only text and numbers: a YAML list or mapping (``password: []``) or a bare ``yes`` would
    otherwise become the literal text ``[]`` or ``True``."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise vol.Invalid(f"expected text, got a {_yaml_kind(value)} (quote the value if it is meant as text)")
    return str(value)


def _yaml_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "mapping"
    return type(value).__name__


def _stored_password(value: Any) -> str | None:
    """A password as given: plain, ``sha256:<hex>`` or ``pbkdf2_sha256$...`` (see auth.py). Messages never echo it."""
    text = _optional_text(value)
    if text is not None:
        try:
            check_stored(text)
        except ValueError as err:
            raise vol.Invalid(str(err)) from None
    return text


def _charger_pairs(value: Any, field: str, shape: str, what: str) -> list[tuple[str, Any]]:
    """``{charge point id: x}`` or the add-on's list form ``[{id: ..., <field>: x}]`` -> (id, x) pairs, ids checked.

    The Supervisor has no free-key mappings, so per-charger options come as lists of sections there.
    """
    if value is None:
        return []
    if isinstance(value, list):
        pairs = []
        for index, item in enumerate(value):
            if not isinstance(item, Mapping) or set(item) != {"id", field}:
                raise vol.Invalid(f"entry {index}: expected {{id: <charge point id>, {field}: {shape}}}")
            pairs.append((item["id"], item[field]))
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        raise vol.Invalid(f"expected a mapping of charge point id to {what}")
    for charger_id, _ in pairs:
        if not is_charger_id(charger_id):
            raise vol.Invalid(f"{str(charger_id)[:70]!r} is not a charge point id matching {CHARGER_ID_PATTERN}")
    return pairs


def _password_map(value: Any) -> dict[str, str]:
    """``{charge point id: password}``, or the add-on's list form ``[{id: ..., password: ...}]``."""
    result: dict[str, str] = {}
    for charger_id, password in _charger_pairs(value, "password", "<password>", "password"):
        stored = _stored_password(password)
        if stored is None:
            raise vol.Invalid(f"{charger_id}: empty password")
        result[charger_id] = stored
    return result


OCPP_VERSIONS = ("2.0.1", "1.6")


def _version_map(value: Any) -> dict[str, str]:
    """``{charge point id: "1.6" | "2.0.1"}``, or the add-on's list form ``[{id: ..., version: ...}]``."""
    result: dict[str, str] = {}
    for charger_id, version in _charger_pairs(value, "version", "1.6 or 2.0.1", "OCPP version"):
        if str(version) not in OCPP_VERSIONS:
            raise vol.Invalid(f"{charger_id}: OCPP version {str(version)[:20]!r} is not one of {', '.join(OCPP_VERSIONS)}")
        result[charger_id] = str(version)
    return result


PORT = vol.All(vol.Coerce(int), vol.Range(min=1, max=65535))
POSITIVE_SECONDS = vol.All(_finite, vol.Range(min=0.1, max=86400))

PROFILE_SCHEMA = vol.Schema(
    {
        vol.Optional("purpose", default="TxDefaultProfile"): vol.In(PURPOSES),
        vol.Optional("kind", default="Absolute"): vol.In(KINDS),
        vol.Optional("recurrency_kind", default="Daily"): vol.In(("Daily", "Weekly")),
        vol.Optional("stack_level", default=0): vol.All(vol.Coerce(int), vol.Range(min=0, max=1000)),
        vol.Optional("connector_id", default=0): vol.All(vol.Coerce(int), vol.Range(min=0, max=100)),
        vol.Optional("profile_id", default=None): vol.Any(None, vol.All(vol.Coerce(int), vol.Range(min=1))),
        # Unit sent to the charger; None means "the slider's unit".
        vol.Optional("unit", default=None): vol.Any(None, vol.In(UNITS)),
        vol.Optional("number_phases", default=None): vol.Any(None, vol.All(vol.Coerce(int), vol.Range(min=1, max=3))),
    }
)

# One entry of charging.chargers. Unset keys are learned from the charger's meter values (phases it
# reports, its voltage; one voltage of 300 V or more and no phase is DC) or taken from charging.*.
CHARGER_OVERRIDE_SCHEMA = vol.Schema(
    {
        vol.Required("id"): _charger_id,
        vol.Optional("phases"): vol.All(vol.Coerce(int), vol.Range(min=1, max=3)),
        vol.Optional("voltage"): vol.All(_finite, vol.Range(min=50, max=1000)),
        vol.Optional("dc"): vol.Boolean(),
        # AC only by default: 0 on a DC charger, which has no IEC 61851 minimum.
        vol.Optional("min_current"): vol.All(_finite, vol.Range(min=0, max=80)),
    }
)

SCHEMA = vol.Schema(
    {
        vol.Optional("log_level", default="info"): vol.All(vol.Lower, vol.In(LOG_LEVELS)),
        vol.Optional("data_dir", default="data"): vol.Coerce(str),
        # Several instances on one broker (behind a load balancer): each gets its own bridge
        # device and last will, and subscribes only to the commands of its own chargers.
        vol.Optional("instance_id", default=None): vol.Any(None, vol.All(vol.Coerce(str), vol.Match(
            r"^[a-z0-9_-]{1,32}$", msg="expected 1-32 characters of a-z, 0-9, '_' and '-'"))),
        vol.Optional("ocpp", default={}): {
            vol.Optional("host", default="0.0.0.0"): vol.Coerce(str),
            vol.Optional("port", default=9000): PORT,
            vol.Optional("path_prefix", default=""): _path_prefix,
            vol.Optional("heartbeat_interval", default=300): vol.All(vol.Coerce(int), vol.Range(min=10, max=86400)),
            vol.Optional("response_timeout", default=30): POSITIVE_SECONDS,
            vol.Optional("ping_interval", default=20): POSITIVE_SECONDS,
            vol.Optional("ping_timeout", default=20): POSITIVE_SECONDS,
            # Seconds to wait for a BootNotification before talking to a charger that never sends one.
            vol.Optional("boot_wait", default=5): POSITIVE_SECONDS,
            vol.Optional("require_subprotocol", default=False): vol.Boolean(),
            # OCPP versions spoken, in order of preference: a station offering several gets the first it offers.
            vol.Optional("versions", default=list(OCPP_VERSIONS)): [vol.In(OCPP_VERSIONS)],
            # Per charge point: the one version it is spoken to in (firmware whose 2.0.1 is worse than its 1.6).
            vol.Optional("charger_versions", default={}): _version_map,
            # Charge point ids ("*": all) whose known firmware quirks are repaired instead of refused.
            vol.Optional("lenient", default=[]): [vol.Any("*", _charger_id)],
            vol.Optional("max_message_size", default=65536): vol.All(vol.Coerce(int), vol.Range(min=1024, max=16 * 2**20)),
            vol.Optional("ssl_certfile", default=None): vol.Any(None, vol.Coerce(str)),
            vol.Optional("ssl_keyfile", default=None): vol.Any(None, vol.Coerce(str)),
            # Seconds a client gets to finish the TLS and WebSocket handshakes.
            vol.Optional("open_timeout", default=10): POSITIVE_SECONDS,
            # Open charger connections (and handshakes) beyond this are refused with HTTP 503.
            vol.Optional("max_connections", default=10000): vol.All(vol.Coerce(int), vol.Range(min=1, max=100000)),
            # Connector ids above this are refused (PropertyConstraintViolation): each one costs entities.
            vol.Optional("max_connectors", default=8): vol.All(vol.Coerce(int), vol.Range(min=1, max=100)),
            # Frames per second one charger may send (after a burst of message_burst); faster ones are read
            # more slowly, and a charger held back for flood_disconnect_after seconds is disconnected.
            vol.Optional("max_message_rate", default=20): vol.All(_finite, vol.Range(min=1, max=100000)),
            vol.Optional("message_burst", default=200): vol.All(vol.Coerce(int), vol.Range(min=1, max=1000000)),
            vol.Optional("flood_disconnect_after", default=30): POSITIVE_SECONDS,
            # With allow_unknown_chargers false, only these ids (and ids with a password) may connect.
            vol.Optional("allow_unknown_chargers", default=True): vol.Boolean(),
            vol.Optional("chargers", default=[]): vol.Any(None, [_charger_id]),
            # OCPP Security Profile 1: HTTP Basic auth, username = charge point id.
            vol.Optional("auth", default={}): {
                vol.Optional("mode", default="none"): vol.In(("none", "basic")),
                vol.Optional("password", default=None): _stored_password,
                vol.Optional("passwords", default={}): _password_map,
            },
        },
        vol.Optional("mqtt", default={}): {
            vol.Optional("host", default="localhost"): vol.Coerce(str),
            vol.Optional("port", default=1883): PORT,
            vol.Optional("username", default=None): _optional_text,
            vol.Optional("password", default=None): _optional_text,
            # None: derived from the BEMcom connector name and instance_id, so that instances sharing
            # a broker never take over each other's (persistent) session.
            vol.Optional("client_id", default=None): vol.Any(None, vol.All(vol.Coerce(str), vol.Length(min=1, max=64))),
            vol.Optional("base_topic", default="ocpp"): _topic_level,
            # Our ocpp/* topics and the Home Assistant sink (off in BEMcom drop-in mode: BEMcom's broker).
            vol.Optional("ocpp_topics", default=True): vol.Boolean(),
            vol.Optional("discovery", default=True): vol.Boolean(),
            vol.Optional("discovery_prefix", default="homeassistant"): _topic_level,
            # A charger's state message when only its readings changed: at most once per this many
            # seconds (the newest values); status, transaction and limit changes go out at once. 0: every time.
            vol.Optional("readings_interval", default=0.25): vol.All(_finite, vol.Range(min=0, max=60)),
            vol.Optional("keepalive", default=60): vol.All(vol.Coerce(int), vol.Range(min=5, max=3600)),
            vol.Optional("ssl", default=False): vol.Boolean(),
            # TLS details (any of ca_certs/certfile also turns TLS on); tls_insecure skips certificate checks.
            vol.Optional("ca_certs", default=None): _optional_text,
            vol.Optional("certfile", default=None): _optional_text,
            vol.Optional("keyfile", default=None): _optional_text,
            vol.Optional("tls_insecure", default=False): vol.Boolean(),
            # Keep our subscriptions and queued QoS 1 commands at the broker while we are away.
            vol.Optional("persistent_session", default=True): vol.Boolean(),
            # Start Debian's mosquitto on localhost when no broker answers (standalone quick start).
            # None: only when no broker was configured (mqtt.host/port, MQTT_BROKER_HOST/PORT).
            vol.Optional("embedded_broker", default=None): vol.Any(None, vol.Boolean()),
        },
        vol.Optional("charging", default={}): {
            vol.Optional("unit", default="A"): vol.In(UNITS),
            vol.Optional("min", default=0): _finite,
            vol.Optional("max", default=None): vol.Any(None, _finite),
            vol.Optional("step", default=None): vol.Any(None, vol.All(_finite, vol.Range(min=0.1))),
            vol.Optional("voltage", default=230): vol.All(_finite, vol.Range(min=50, max=500)),
            vol.Optional("phases", default=3): vol.All(vol.Coerce(int), vol.Range(min=1, max=3)),
            vol.Optional("profile", default={}): PROFILE_SCHEMA,
            # Below this current (per phase) an EV cannot charge (IEC 61851): pause (send 0) or refuse.
            vol.Optional("min_current", default=6): vol.All(_finite, vol.Range(min=0, max=80)),
            vol.Optional("below_min", default="pause"): vol.In(("pause", "reject")),
            # Quiet time before a setpoint is sent, so a slider drag becomes one profile write.
            vol.Optional("debounce", default=0.3): vol.All(_finite, vol.Range(min=0, max=60)),
            # Walk the fallback ladder when the charger rejects a profile, and remember what worked.
            vol.Optional("fallback", default=True): vol.Boolean(),
            # Read the effective limit back with GetCompositeSchedule every N seconds (0: only after changes).
            vol.Optional("composite_interval", default=300): vol.All(vol.Coerce(int), vol.Range(min=0, max=86400)),
            vol.Optional("id_tag", default="ocpp-addon"): vol.All(vol.Coerce(str), vol.Length(min=1, max=20)),
            # Per charger, what it cannot tell us (or tells wrongly): phases, voltage, DC, minimum current.
            vol.Optional("chargers", default=[]): [CHARGER_OVERRIDE_SCHEMA],
        },
        vol.Optional("meter_values", default={}): {
            # Measurands to configure on the charger (MeterValuesSampledData); empty: leave the charger's own.
            vol.Optional("sampled_data", default=[]): [vol.In(tuple(MEASURANDS))],
            vol.Optional("sample_interval", default=None): vol.Any(None, vol.All(vol.Coerce(int), vol.Range(min=0, max=3600))),
        },
        vol.Optional("authorization", default={}): {
            vol.Optional("mode", default="accept_all"): vol.In(("accept_all", "allow_list")),
            vol.Optional("id_tags", default=[]): [
                {
                    vol.Required("id_tag"): vol.All(vol.Coerce(str), vol.Length(min=1, max=20)),
                    vol.Optional("name", default=None): vol.Any(None, vol.Coerce(str)),
                    vol.Optional("status", default="Accepted"): vol.In(("Accepted", "Blocked", "Expired", "Invalid")),
                    vol.Optional("expiry", default=None): vol.Any(None, vol.Coerce(str)),
                }
            ],
        },
        vol.Optional("bemcom", default={}): {
            vol.Optional("enabled", default=False): vol.Boolean(),
            vol.Optional("connector_name", default="ocpp-connector"): _topic_level,
            vol.Optional("send_raw_message_to_db", default=False): vol.Boolean(),
            vol.Optional("actuators", default=["execute_send_charging_profile"]): [
                vol.In(BEMCOM_COMMANDS, msg=f"expected one of {', '.join(BEMCOM_COMMANDS)}")
            ],
            # Started the BEMcom way (environment only, no config file): the original connector's
            # defaults (DROP_IN_DEFAULTS); set in a file to get them there too.
            vol.Optional("drop_in", default=False): vol.Boolean(),
            vol.Optional("legacy_keys", default=False): vol.Boolean(),
            # Turn the API's /setpoint and /schedule messages into limits ourselves (BEMcom's
            # controller's job): opt-in, so that a controller and we never both write.
            vol.Optional("apply_setpoints", default=False): vol.Boolean(),
            # The sensor datapoint of BEMcom's controller rule (a key without the <cp>__ prefix,
            # e.g. "SoC__Percent"): whether the setpoint's flexibility lets the schedule through.
            vol.Optional("controller_sensor", default=None): _optional_text,
            vol.Optional("heartbeat_interval", default=30): POSITIVE_SECONDS,
        },
        # The chargers page (ocpp_addon/web.py). Standalone: off unless enabled, then behind a password.
        # The add-on serves it through Home Assistant's ingress instead (supervisor.py sets ingress).
        vol.Optional("web", default={}): {
            vol.Optional("enabled", default=False): vol.Boolean(),
            vol.Optional("host", default="127.0.0.1"): vol.Coerce(str),
            vol.Optional("port", default=8099): vol.All(vol.Coerce(int), vol.Range(min=0, max=65535)),
            vol.Optional("password", default=None): _stored_password,
            # Accept only the Supervisor's ingress proxy (which has logged the user in) instead of a password.
            vol.Optional("ingress", default=False): vol.Boolean(),
            vol.Optional("ingress_proxy", default="172.30.32.2"): _ip_address,
            # Newest frames kept per charger while a page is open (memory only; the page holds 1000 at most).
            vol.Optional("frames_per_charger", default=500): vol.All(vol.Coerce(int), vol.Range(min=10, max=1000)),
        },
    }
)


def bridge_topic(config: Mapping[str, Any], leaf: str = "state") -> str:
    """``<base>/bridge/<leaf>``, or ``<base>/bridge/<instance_id>/<leaf>`` when several instances share a broker."""
    base = config["mqtt"]["base_topic"]
    instance = config.get("instance_id")
    return f"{base}/bridge/{instance}/{leaf}" if instance else f"{base}/bridge/{leaf}"


def _describe(error: vol.Invalid, data: Any, prefix: str = "") -> str:
    path = [prefix] if prefix else []
    path += [str(p) for p in error.path]
    key = ".".join(path) or "<top level>"
    value: Any = data
    found = True
    for part in error.path:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            found = False
            break
    message = error.msg
    if "extra keys not allowed" in message:
        parent = _allowed_keys(error.path[:-1])
        allowed = f"; allowed keys here: {', '.join(parent)}" if parent else ""
        return f"{key}: unknown key{allowed}"
    secret = any("password" in str(part) for part in path)  # never echo a password into a log
    given = f" = {value!r}" if found and not secret else ""
    return f"{key}{given}: {message}"


def _allowed_keys(path: list[Any]) -> list[str]:
    schema: Any = SCHEMA.schema
    for part in path:
        if isinstance(part, int) and isinstance(schema, list) and schema:
            schema = schema[0].schema if isinstance(schema[0], vol.Schema) else schema[0]  # an entry of a list
            continue
        match = next((v for k, v in schema.items() if str(k) == str(part)), None) if isinstance(schema, dict) else None
        if match is None:
            return []
        schema = match.schema if isinstance(match, vol.Schema) else match
    return sorted(str(k) for k in schema) if isinstance(schema, dict) else []


def validate(data: Any) -> dict[str, Any]:
    """Validate a raw mapping and return the config with every default filled in."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config: expected a mapping of keys at the top level, got {type(data).__name__}")
    data = _with_drop_in_defaults(data)
    try:
        config = SCHEMA(dict(data))
    except vol.MultipleInvalid as err:
        raise ConfigError("; ".join(_describe(e, data) for e in err.errors)) from None
    charging = config["charging"]
    defaults = UNIT_DEFAULTS[charging["unit"]]
    if charging["max"] is None:
        charging["max"] = defaults["max"]
    if charging["step"] is None:
        charging["step"] = defaults["step"]
    if not charging["min"] < charging["max"]:
        raise ConfigError(f"charging.min = {charging['min']!r}: must be below charging.max ({charging['max']!r})")
    if charging["min"] < 0:
        raise ConfigError(f"charging.min = {charging['min']!r}: must be 0 or more")
    seen: set[str] = set()
    for index, entry in enumerate(charging["chargers"]):
        if entry["id"] in seen:
            raise ConfigError(f"charging.chargers.{index}.id = {entry['id']!r}: given twice; allowed: one entry per charge point id")
        seen.add(entry["id"])
    ocpp = config["ocpp"]
    if bool(ocpp["ssl_certfile"]) != bool(ocpp["ssl_keyfile"]):
        raise ConfigError("ocpp.ssl_certfile/ssl_keyfile: give both for TLS (wss), or neither")
    ocpp["chargers"] = ocpp["chargers"] or []
    if not ocpp["versions"]:
        raise ConfigError(f"ocpp.versions = []: name at least one of {', '.join(OCPP_VERSIONS)}")
    ocpp["versions"] = list(dict.fromkeys(ocpp["versions"]))
    auth = ocpp["auth"]
    has_password = bool(auth["password"] or auth["passwords"])
    if auth["mode"] == "basic" and not has_password:
        raise ConfigError("ocpp.auth.mode = 'basic': set ocpp.auth.password (shared) or ocpp.auth.passwords (per charge point)")
    if auth["mode"] == "none" and has_password:
        raise ConfigError("ocpp.auth.mode = 'none' but passwords are set: set ocpp.auth.mode to 'basic' to require them")
    web = config["web"]
    if web["enabled"] and not web["ingress"] and not web["password"]:
        raise ConfigError("web.enabled: set web.password (the chargers page controls your chargers), "
                          "or leave web.enabled off")
    mqtt = config["mqtt"]
    if mqtt["keyfile"] and not mqtt["certfile"]:
        raise ConfigError("mqtt.keyfile: give mqtt.certfile (the client certificate) with it")
    if not mqtt["ocpp_topics"] and not config["bemcom"]["enabled"]:
        raise ConfigError("mqtt.ocpp_topics = False: with the BEMcom connector off nothing would reach MQTT; "
                          "set bemcom.enabled (or CONNECTOR_NAME), or leave mqtt.ocpp_topics on")
    _resolve_defaults(config, data)
    return config


def default_client_id(config: Mapping[str, Any]) -> str:
    """``ocpp-addon[-<connector name>][-<instance_id>]``: stable across restarts (so a persistent
    session is found again) and different for each connector or instance on one broker."""
    parts = ["ocpp-addon"]
    if config["bemcom"]["enabled"]:
        parts.append(config["bemcom"]["connector_name"].replace("/", "-"))
    if config.get("instance_id"):
        parts.append(config["instance_id"])
    return "-".join(parts)


def _with_drop_in_defaults(data: Mapping[str, Any]) -> Mapping[str, Any]:
    bemcom = data.get("bemcom")
    try:
        drop_in = isinstance(bemcom, Mapping) and vol.Boolean()(bemcom.get("drop_in", False))
    except vol.Invalid:
        return data  # the schema reports it
    if not drop_in:
        return data
    merged = dict(data)
    for section, defaults in DROP_IN_DEFAULTS.items():
        given = merged.get(section)
        merged[section] = {**defaults, **given} if isinstance(given, Mapping) else (given if section in merged else dict(defaults))
    return merged


def _resolve_defaults(config: dict[str, Any], data: Mapping[str, Any]) -> None:
    """Defaults that depend on other settings (None in the schema)."""
    mqtt = config["mqtt"]
    if mqtt["embedded_broker"] is None:
        section = data.get("mqtt")
        given: Mapping[str, Any] = section if isinstance(section, Mapping) else {}
        mqtt["embedded_broker"] = "host" not in given and "port" not in given
    if mqtt["client_id"] is None:
        mqtt["client_id"] = default_client_id(config)


def profile_from_ocpp(value: Any, source: str = "OCPP_PROFILE") -> dict[str, Any]:
    """Turn an OCPP_PROFILE (a csChargingProfiles object, as BEMcom documents it) into our profile keys.

    Only the shape is taken (purpose, kind, stack level, unit, id, recurrency); the
    limit in the template is replaced by each setpoint.
    """
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: expected a JSON object like {{\"chargingProfilePurpose\": \"TxDefaultProfile\", ...}}, got {value!r}")
    schedule = value.get("chargingSchedule") or {}
    if not isinstance(schedule, Mapping):
        raise ConfigError(f"{source}.chargingSchedule = {schedule!r}: expected a JSON object")
    mapping = {
        "chargingProfilePurpose": "purpose",
        "chargingProfileKind": "kind",
        "recurrencyKind": "recurrency_kind",
        "stackLevel": "stack_level",
        "chargingProfileId": "profile_id",
        "connectorId": "connector_id",
    }
    profile: dict[str, Any] = {ours: value[theirs] for theirs, ours in mapping.items() if theirs in value}
    if profile.get("profile_id") == 0:
        profile["profile_id"] = None  # 0 is BEMcom's placeholder; we pick a stable id
    if "chargingRateUnit" in schedule:
        profile["unit"] = schedule["chargingRateUnit"]
    periods = schedule.get("chargingSchedulePeriod") or []
    if periods and isinstance(periods, list) and isinstance(periods[0], Mapping) and "numberPhases" in periods[0]:
        profile["number_phases"] = periods[0]["numberPhases"]
    try:
        return PROFILE_SCHEMA(profile)
    except vol.MultipleInvalid as err:
        raise ConfigError("; ".join(_describe(e, profile, source) for e in err.errors)) from None


def _json_env(env: Mapping[str, str], name: str) -> Any:
    try:
        return json.loads(env[name])
    except json.JSONDecodeError as err:
        raise ConfigError(f"{name} = {env[name]!r}: not valid JSON ({err.msg} at column {err.colno})") from None


def ocpp_config_actuators(value: Any) -> list[str]:
    """BEMcom's OCPP_CONFIG: a JSON array (or object whose keys are) command names starting with 'execute_'."""
    if isinstance(value, Mapping):
        value = list(value)
    if isinstance(value, str):
        raise ConfigError(
            f"OCPP_CONFIG = {value!r}: expected a JSON array of command names, e.g. "
            '["execute_send_charging_profile", "execute_trigger_message"]'
        )
    if not isinstance(value, list) or not all(isinstance(v, str) and v.startswith("execute_") for v in value):
        raise ConfigError(f"OCPP_CONFIG = {value!r}: expected a JSON array of strings starting with 'execute_'")
    unknown = [v for v in value if v not in BEMCOM_COMMANDS]
    if unknown:
        raise ConfigError(f"OCPP_CONFIG: unknown command {unknown[0]!r}; allowed: {', '.join(BEMCOM_COMMANDS)}")
    return list(dict.fromkeys(value))


def apply_environment(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Overlay the BEMcom connector's environment variables onto raw (unvalidated) config data."""
    data = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    for section in ("ocpp", "mqtt", "charging", "bemcom"):
        data.setdefault(section, {})
    if "CONNECTOR_NAME" in env:
        data["bemcom"]["connector_name"] = env["CONNECTOR_NAME"] or "unknown-connector"  # the template's default
        data["bemcom"]["enabled"] = True
    if "MQTT_BROKER_HOST" in env:
        data["mqtt"]["host"] = env["MQTT_BROKER_HOST"]
    if "MQTT_BROKER_PORT" in env:
        data["mqtt"]["port"] = env["MQTT_BROKER_PORT"]
    if "OCPP_PORT" in env:
        data["ocpp"]["port"] = env["OCPP_PORT"]
    if "DEBUG" in env:
        data["log_level"] = "debug" if env["DEBUG"] == "TRUE" else data.get("log_level", "info")
    if "SEND_RAW_MESSAGE_TO_DB" in env:
        data["bemcom"]["send_raw_message_to_db"] = env["SEND_RAW_MESSAGE_TO_DB"] == "TRUE"
    if "LEGACY_KEYS" in env:  # ours: the original connector's datapoint keys, for existing single-charger mappings
        data["bemcom"]["legacy_keys"] = env["LEGACY_KEYS"] == "TRUE"
    if "KEYS_PER_CHARGER" in env:  # ours: <cp>__ keys, for several chargers (a migration, see docs/bemcom.md)
        data["bemcom"]["legacy_keys"] = env["KEYS_PER_CHARGER"] != "TRUE"
    if "APPLY_SETPOINTS" in env:  # ours: act as BEMcom's controller for the charging limit
        data["bemcom"]["apply_setpoints"] = env["APPLY_SETPOINTS"] == "TRUE"
    if "CONTROLLER_SENSOR" in env:  # ours: the sensor datapoint key of that controller rule
        data["bemcom"]["controller_sensor"] = env["CONTROLLER_SENSOR"]
    if "OCPP_TOPICS" in env:  # ours: the ocpp/* topics and Home Assistant discovery beside BEMcom's
        data["mqtt"]["ocpp_topics"] = data["mqtt"]["discovery"] = env["OCPP_TOPICS"] == "TRUE"
    if "OCPP_PROFILE" in env and env["OCPP_PROFILE"].strip():
        data["charging"]["profile"] = profile_from_ocpp(_json_env(env, "OCPP_PROFILE"))
    if "OCPP_CONFIG" in env and env["OCPP_CONFIG"].strip():
        try:
            parsed = json.loads(env["OCPP_CONFIG"])
        except json.JSONDecodeError:
            parsed = env["OCPP_CONFIG"]  # a bare string gets the clear message below
        data["bemcom"]["actuators"] = ocpp_config_actuators(parsed)
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file; syntax errors name the file, line and column."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"config file {path}: cannot read it ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"config file {path}:{where}: invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


_DOTENV_SKIP = re.compile(r"[ \t]*(?:#[^\r\n]*)?(?:\r?\n|\Z)")
_DOTENV_ENTRY = re.compile(
    r"""[ \t]*(?:export[ \t]+)?(?P<key>[A-Za-z_][A-Za-z0-9_.]*)[ \t]*=[ \t]*
    (?: '(?P<single>[^']*)'[ \t]*(?:\#[^\r\n]*)?
      | "(?P<double>(?:\\.|[^"\\])*)"[ \t]*(?:\#[^\r\n]*)?
      | (?P<bare>[^\r\n]*?)(?:[ \t]+\#[^\r\n]*)?[ \t]*
    )(?:\r?\n|\Z)""",
    re.VERBOSE,
)
_DOTENV_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v", '"': '"', "'": "'", "\\": "\\"}
_DOTENV_EXPAND = re.compile(r"\$\{(?P<name>[^}:]+)(?::-(?P<default>[^}]*))?\}")


def read_dotenv(path: str | Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of a ``.env`` file, in python-dotenv's syntax (how BEMcom's template reads it).

    ``NAME=value`` lines with an optional ``export``, ``#`` comments, '...' taken
    literally, "..." with backslash escapes (both may span lines), and ``${NAME}`` /
    ``${NAME:-default}`` expanded outside single quotes, the environment first. A
    missing file gives nothing; a line that is none of these is an error, not a
    silently dropped setting.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
    values: dict[str, str] = {}

    def expand(value: str) -> str:
        return _DOTENV_EXPAND.sub(lambda m: environ.get(m["name"], values.get(m["name"], m["default"] or "")), value)

    pos = 0
    while pos < len(text):
        skip = _DOTENV_SKIP.match(text, pos)
        if skip is not None and skip.end() > pos:
            pos = skip.end()
            continue
        entry = _DOTENV_ENTRY.match(text, pos)
        if entry is None:
            line = text[pos:].splitlines()[0]
            raise ConfigError(f"{path} line {text.count(chr(10), 0, pos) + 1}: cannot parse {line[:60]!r}; expected NAME=value")
        if entry["single"] is not None:
            values[entry["key"]] = entry["single"]
        elif entry["double"] is not None:
            unescaped = re.sub(r"\\(.)", lambda m: _DOTENV_ESCAPES.get(m[1], m[0]), entry["double"], flags=re.DOTALL)
            values[entry["key"]] = expand(unescaped)
        else:
            values[entry["key"]] = expand(entry["bare"])
        pos = entry.end()
    return values


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Load and validate the configuration from a file (optional) and the environment.

    Without ``env``: the process environment, over a ``.env`` file in the working
    directory (which never overrides a variable that is set).
    """
    if env is None:
        env = {**read_dotenv(DOTENV, os.environ), **os.environ}
    data = apply_environment(read_yaml(path) if path else {}, env)
    if not path and "CONNECTOR_NAME" in env:
        data["bemcom"].setdefault("drop_in", True)  # started the way BEMcom starts its connectors
    return validate(data)


def redacted(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy that is safe to log: passwords replaced."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if "password" in key and value:
            out[key] = "***"  # also a {charge point id: password} mapping, as a whole
        elif isinstance(value, Mapping):
            out[key] = redacted(value)
        else:
            out[key] = value
    return out
