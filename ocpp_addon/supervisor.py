"""Running as a Home Assistant app (add-on): options from the Supervisor, MQTT from its services API.

When ``SUPERVISOR_TOKEN`` is set, ``python -m ocpp_addon`` reads ``/data/options.json``
(the options the user saved in the app's Configuration tab, already type-checked
by the Supervisor against ``config.yaml``'s schema) and validates them with the
same voluptuous schema as the YAML file. MQTT keys the user left unset are
filled from ``GET http://supervisor/services/mqtt`` (the Mosquitto broker app
announces its host, port and a generated user there); anything the user set
wins. Setting ``mqtt.host`` means "my own broker": the Supervisor is not asked.

The options differ from the YAML file in representation only: the Supervisor
allows one level of nesting below a top-level key, so the deeper sections
(``charging.profile``, ``ocpp.auth``, ...) are lifted to top-level keys
(:data:`LIFTED`), and the keys the app fixes itself (:data:`NOT_OPTIONS`) are
not offered. File paths for TLS may be given relative to ``/ssl``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping

from . import config as config_module
from .config import ConfigError

_LOGGER = logging.getLogger(__name__)

OPTIONS_PATH = "/data/options.json"
SUPERVISOR_URL = "http://supervisor"
SSL_DIR = Path("/ssl")
REQUEST_TIMEOUT = 10.0
RETRY_FIRST = 1.0
RETRY_MAX = 60.0

# App option key -> where it lives in our config (the YAML file's shape).
LIFTED: dict[str, tuple[str, ...]] = {
    "ocpp_auth": ("ocpp", "auth"),
    "ocpp_auth_passwords": ("ocpp", "auth", "passwords"),
    "ocpp_charger_versions": ("ocpp", "charger_versions"),
    "charging_profile": ("charging", "profile"),
    "charging_chargers": ("charging", "chargers"),
    "authorization_id_tags": ("authorization", "id_tags"),
}
# File options that may name a file in the app's /ssl folder by its name alone.
SSL_FILES: tuple[tuple[str, str], ...] = (
    ("ocpp", "ssl_certfile"), ("ocpp", "ssl_keyfile"),
    ("mqtt", "ca_certs"), ("mqtt", "certfile"), ("mqtt", "keyfile"),
)

# Config keys the app sets instead of offering them as options, and why.
NOT_OPTIONS: dict[tuple[str, ...], str] = {
    ("data_dir",): "the app keeps its state next to options.json, in /data (backed up with the app)",
    ("ocpp", "host"): "the container listens on all its interfaces",
    ("ocpp", "port"): "the container always listens on 9000; the host port is set in the Network section",
    ("mqtt", "embedded_broker"): "the broker comes from the Supervisor (the Mosquitto broker app) or mqtt.host",
    ("mqtt", "ocpp_topics"): "the app's ocpp/* topics are what Home Assistant uses; only a BEMcom drop-in turns them off",
    ("bemcom", "drop_in"): "the app is configured by its options, never the BEMcom way (environment only)",
    ("web",): "the chargers page is Home Assistant's ingress panel; nothing in it to choose",
    ("web", "enabled"): "the chargers page is always on, in Home Assistant's sidebar (ingress)",
    ("web", "host"): "the container listens on all its interfaces; only the ingress proxy is let in",
    ("web", "port"): "config.yaml's ingress_port",
    ("web", "password"): "Home Assistant logs the user in; the page takes no password of its own",
    ("web", "ingress"): "always: the page is served through Home Assistant's ingress",
    ("web", "ingress_proxy"): "the Supervisor's ingress proxy is always 172.30.32.2",
    ("web", "frames_per_charger"): "a fixed, bounded buffer",
}
# The chargers page in the add-on: on Home Assistant's ingress port, open only to the ingress proxy.
INGRESS_PORT = 8099
WEB: dict[str, Any] = {"enabled": True, "host": "0.0.0.0", "port": INGRESS_PORT, "ingress": True}

# The mqtt keys the Supervisor's services API can fill (same names in its answer).
SERVICE_KEYS = ("host", "port", "username", "password", "ssl")


class ServiceUnavailable(Exception):
    """The Supervisor did not hand out an MQTT broker (yet); the message says why."""


def options_path(env: Mapping[str, str]) -> Path:
    return Path(env.get("OCPP_ADDON_OPTIONS") or OPTIONS_PATH)


def options_to_config(options: Mapping[str, Any]) -> dict[str, Any]:
    """App options -> raw config data in the YAML file's shape (not yet validated)."""
    data: dict[str, Any] = {}
    for key, value in options.items():
        if key not in LIFTED:
            data[key] = dict(value) if isinstance(value, Mapping) else value
    for key, path in sorted(LIFTED.items(), key=lambda item: len(item[1])):  # outer sections first
        if key not in options:
            continue
        parent: Any = data
        for part in path[:-1]:
            parent = parent.setdefault(part, {}) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            value = options[key]
            parent[path[-1]] = dict(value) if isinstance(value, Mapping) else value
    return data


def read_options(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"app options {path}: cannot read them ({err.strerror})") from None
    try:
        options = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as err:
        raise ConfigError(f"app options {path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(options, dict):
        raise ConfigError(f"app options {path}: expected a JSON object, got {type(options).__name__}")
    return options


def _resolve_ssl_paths(data: dict[str, Any]) -> None:
    """``fullchain.pem`` means ``/ssl/fullchain.pem``, as in Home Assistant's own apps."""
    for section, key in SSL_FILES:
        values = data.get(section)
        value = values.get(key) if isinstance(values, dict) else None
        if isinstance(values, dict) and isinstance(value, str) and value and not value.startswith("/"):
            values[key] = str(SSL_DIR / value)


def load(env: Mapping[str, str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read and validate the app options; returns (raw data, validated config).

    The raw data is kept so :func:`with_mqtt_service` can tell which MQTT keys the
    user left unset. Validation happens here already, so a bad option stops the
    app with one clear line before it waits for the Supervisor.
    """
    env = os.environ if env is None else env
    path = options_path(env)
    data = options_to_config(read_options(path))
    data.setdefault("data_dir", str(path.parent))
    mqtt = data.setdefault("mqtt", {})
    if isinstance(mqtt, dict):
        mqtt.setdefault("embedded_broker", False)
    web = data.setdefault("web", {})
    if isinstance(web, dict):
        for key, value in WEB.items():
            web.setdefault(key, value)
        if env.get("OCPP_ADDON_INGRESS_PORT"):  # tests: several copies on one machine's network
            web["port"] = env["OCPP_ADDON_INGRESS_PORT"]
    _resolve_ssl_paths(data)
    data = config_module.apply_environment(data, env)
    return data, config_module.validate(data)


def unset_mqtt_keys(data: Mapping[str, Any]) -> list[str]:
    """MQTT keys to take from the Supervisor: none when the user names a broker host."""
    mqtt = data.get("mqtt") or {}
    if mqtt.get("host"):
        return []
    return [key for key in SERVICE_KEYS if mqtt.get(key) in (None, "")]


def _error_message(body: bytes) -> str | None:
    try:
        reply = json.loads(body)
    except ValueError:
        return None
    return str(reply.get("message")) if isinstance(reply, dict) and reply.get("message") else None


def fetch_mqtt_service(base_url: str, token: str, timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
    """``GET <base_url>/services/mqtt`` -> our mqtt keys; ServiceUnavailable with the reason otherwise.

    Blocking (urllib): call it through ``asyncio.to_thread``. Proxies from the
    environment are ignored: the Supervisor is always on the app's own network.
    """
    url = f"{base_url.rstrip('/')}/services/mqtt"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as err:
        message = _error_message(err.read()) or err.reason
        raise ServiceUnavailable(f"the Supervisor answered HTTP {err.code}: {message}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise ServiceUnavailable(f"the Supervisor at {base_url} is not reachable ({reason})") from None
    try:
        reply = json.loads(body)
    except ValueError:
        raise ServiceUnavailable("the Supervisor's answer is not JSON") from None
    if not isinstance(reply, dict) or reply.get("result") != "ok":
        said = reply.get("message") if isinstance(reply, dict) else None
        raise ServiceUnavailable(f"the Supervisor answered result: error ({said or 'no message'})")
    service = reply.get("data")
    if not isinstance(service, dict) or not service.get("host"):
        raise ServiceUnavailable("no app provides an MQTT broker")
    try:
        port = int(service.get("port") or 1883)  # the Supervisor may send the port as a string
    except (TypeError, ValueError):
        raise ServiceUnavailable(f"the MQTT service announced port {service.get('port')!r}, not a number") from None
    ssl = service.get("ssl")
    return {
        "host": str(service["host"]),
        "port": port,
        "username": str(service["username"]) if service.get("username") else None,
        "password": str(service["password"]) if service.get("password") else None,
        "ssl": ssl is True or str(ssl).lower() == "true",
    }


def merge_mqtt_service(data: Mapping[str, Any], service: Mapping[str, Any], keys: list[str]) -> dict[str, Any]:
    """Raw config data with ``keys`` of the mqtt section taken from the service answer."""
    merged = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    mqtt = merged.setdefault("mqtt", {})
    for key in keys:
        if service.get(key) is not None:
            mqtt[key] = service[key]
    return merged


async def with_mqtt_service(data: dict[str, Any], stop: asyncio.Event, env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The validated config with unset MQTT keys from the Supervisor; None if ``stop`` is set first.

    Retries with capped exponential backoff until the Supervisor hands out a
    broker. The first failure (and each new reason) is one ERROR line; the
    retries after it log at DEBUG, so the log stays readable for hours.
    """
    env = os.environ if env is None else env
    keys = unset_mqtt_keys(data)
    if not keys:
        _LOGGER.info("using the MQTT broker from the options (mqtt.host); not asking the Supervisor")
        return config_module.validate(data)
    base_url = env.get("SUPERVISOR_URL") or SUPERVISOR_URL
    token = env.get("SUPERVISOR_TOKEN", "")
    delay = RETRY_FIRST
    last_reason: str | None = None
    while not stop.is_set():
        try:
            service = await asyncio.to_thread(fetch_mqtt_service, base_url, token)
            config = config_module.validate(merge_mqtt_service(data, service, keys))
        except (ServiceUnavailable, ConfigError) as err:
            reason = str(err)
            if reason != last_reason:
                _LOGGER.error(
                    "no MQTT broker from the Supervisor: %s. Install and start the Mosquitto broker app, "
                    "or set mqtt.host (with username and password) in this app's configuration; retrying",
                    reason,
                )
                last_reason = reason
            else:
                _LOGGER.debug("still no MQTT broker from the Supervisor (%s); next try in %.0f s", reason, delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, RETRY_MAX)
            continue
        if stop.is_set():
            break
        user = f" as {config['mqtt']['username']}" if "username" in keys and config["mqtt"]["username"] else ""
        _LOGGER.info("MQTT broker from the Supervisor: %s:%d%s", config["mqtt"]["host"], config["mqtt"]["port"], user)
        return config
    return None
