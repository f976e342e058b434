"""Run a real Home Assistant core (and a real mosquitto) on loopback for end-to-end tests.

Each Home Assistant release lives in its own venv, set up by ``scripts/ha_venv.sh``: on a Python of this
machine when the release admits it, else inside a Debian unstable root (2026.4+ needs Python >= 3.14.2)
that it runs in through ``unshare -m`` + ``chroot``. The tests themselves run on the project's Python and
drive HA over its REST and websocket APIs, the same way for every release.

    with Mosquitto() as broker, HomeAssistant(release="2026.11.0") as ha:  # default: the current release
        ha.setup_mqtt(broker.host, broker.port)
        ha.wait_for_state("sensor.x", lambda s: s is not None and s["state"] == "1")

Everything stays on 127.0.0.1: no ``default_config:``, no zeroconf/ssdp/cloud, the ``core_config``
onboarding step (which sets up integrations that reach the internet) is never run, and HA's network
adapters are pinned to ``lo`` before its first start. Every wait polls with a deadline; a timeout or an
early exit of HA raises with the tail of HA's log in the message.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[2]
HA_VENV_SCRIPT = REPO_ROOT / "scripts" / "ha_venv.sh"
MOSQUITTO_BIN_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto")

DEFAULT_LOG_LEVELS = {
    # Discovery problems (invalid values, missing keys, missing origin) are logged by these loggers;
    # debug also shows every discovery payload HA received and what it did with it.
    "homeassistant.components.mqtt": "debug",
}

# HA log line: "2025-04-20 12:00:00.123 ERROR (MainThread) [homeassistant.components.mqtt] message";
# 2026.x adds the UTC offset: "2026-12-03 17:15:37.878+00:00 ERROR (MainThread) [...] message".
LOG_LINE_RE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:?\d\d|Z)? (?P<level>[A-Z]+) \((?P<thread>[^)]*)\) "
    r"\[(?P<logger>[^\]]+)\] (?P<message>.*)$"
)
LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


# Loopback only: never route through an HTTP(S)_PROXY from the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class HaVenvMissing(RuntimeError):
    """A Home Assistant release the tests need has not been set up (or its setup failed)."""


class HomeAssistantError(RuntimeError):
    """An HA API call failed or HA died."""


# --------------------------------------------------------------------------------------------------
# small helpers


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def cache_dir() -> Path:
    """Where scripts/ha_venv.sh keeps each release (ha-VERSION/) and the Debian root some of them need."""
    if os.environ.get("OCPP_HA_CACHE"):
        return Path(os.environ["OCPP_HA_CACHE"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "ocpp_addon"


def current_release() -> str:
    """HA_CURRENT in scripts/ha_venv.sh: the release users run today."""
    m = re.search(r'^HA_CURRENT="?([0-9][0-9.]*)"?', HA_VENV_SCRIPT.read_text(), re.M)
    if not m:
        raise RuntimeError(f"{HA_VENV_SCRIPT} sets no HA_CURRENT")
    return m.group(1)


def oldest_release() -> str:
    """``homeassistant:`` in config.yaml: the oldest release the add-on says it supports."""
    m = re.search(r"""^homeassistant:\s*["']?([0-9][0-9.]*)""", (REPO_ROOT / "config.yaml").read_text(), re.M)
    if not m:
        raise RuntimeError("config.yaml has no homeassistant: version")
    return m.group(1)


def releases() -> list[str]:
    """The releases the e2e tests run against: $OCPP_HA_RELEASES, else the oldest supported and the current."""
    if os.environ.get("OCPP_HA_RELEASES"):
        return os.environ["OCPP_HA_RELEASES"].split()
    return list(dict.fromkeys([oldest_release(), current_release()]))


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


@dataclass(frozen=True)
class HaInstall:
    """One Home Assistant release as scripts/ha_release.sh set it up (its ha.json).

    ``kind`` "venv": ``hass`` is a path on this machine. "chroot": ``hass`` is a path inside the Debian
    root ``root``; it runs under ``unshare -m`` + ``chroot`` with /dev, /proc and the config dir mounted
    in a private mount namespace (gone with the process), on the host's network (loopback works).
    """

    version: str
    kind: str
    hass: str
    python: str = ""
    root: str | None = None

    def command(self, config_dir: Path, *args: str) -> list[str]:
        hass = [self.hass, "--skip-pip", "-c", str(config_dir), *args]
        if self.kind == "venv":
            return hass
        # The config dir appears at the same path inside (under a private tmpfs when it is in /tmp).
        script = ('R=$1; C=$2; shift 2; mount --rbind /dev "$R/dev" && mount -t proc proc "$R/proc" && '
                  'mount -t tmpfs tmpfs "$R/tmp" && mkdir -p "$R$C" && mount --bind "$C" "$R$C" && '
                  'exec chroot "$R" "$@"')
        return ["unshare", "-m", "--", "sh", "-c", script, "sh", str(self.root), str(config_dir), *hass]

    def env(self) -> dict[str, str]:
        bin_dir = str(Path(self.hass).parent)
        if self.kind == "venv":
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
            env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        else:  # nothing of this machine's Python setup belongs inside the root
            env = {"PATH": f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   "HOME": "/root", "LANG": "C.UTF-8"}
        env["VIRTUAL_ENV"] = str(Path(bin_dir).parent)
        env["PYTHONUNBUFFERED"] = "1"
        return env


def find_ha_install(version: str | None = None) -> HaInstall:
    """The release set up by scripts/ha_venv.sh; raises HaVenvMissing (saying why, and how) when absent."""
    version = version or current_release()
    where = cache_dir() / f"ha-{version}"
    descriptor = where / "ha.json"
    if descriptor.exists():
        info = json.loads(descriptor.read_text())
        install = HaInstall(version=info["version"], kind=info["kind"], hass=info["hass"],
                            python=info.get("python", ""), root=info.get("root"))
        exe = Path(install.root or "/") / install.hass.lstrip("/")
        if exe.exists():
            return install
        why = f"{descriptor} names {exe}, which is gone"
    else:
        why = f"{descriptor} is missing"
    setup_log = where / "setup.log"
    log = (f"\n--- last lines of {setup_log} (its latest setup) ---\n{_tail(setup_log, 25)}"
           if setup_log.exists() else "\n(no setup was attempted: no setup.log)")
    raise HaVenvMissing(
        f"Home Assistant {version} is not set up ({why}). Set it up with "
        f"`bash {HA_VENV_SCRIPT.relative_to(REPO_ROOT)}` (cold: a few minutes per release; cached in "
        f"{cache_dir()}).{log}"
    )


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log yet)"
    return "\n".join(text.splitlines()[-lines:])


def wait_for_port(host: str, port: int, timeout: float, what: str = "server") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not accept connections on {host}:{port} within {timeout} s")
            time.sleep(0.1)


# --------------------------------------------------------------------------------------------------
# mosquitto


class Mosquitto:
    """A throw-away mosquitto broker on a free loopback port (anonymous, no persistence)."""

    def __init__(self, port: int | None = None, workdir: str | os.PathLike[str] | None = None,
                 binary: str | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.binary = binary or next((b for b in MOSQUITTO_BIN_CANDIDATES if os.path.exists(b)),
                                     shutil.which("mosquitto"))
        if not self.binary:
            raise RuntimeError("mosquitto not found; install it with `apt-get install -y mosquitto`")
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self.log_path = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10) -> "Mosquitto":
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stdout\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "connection_messages true\n"
        )
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        try:
            wait_for_port(self.host, self.port, timeout, "mosquitto")
        except TimeoutError as err:
            self.stop()
            raise TimeoutError(f"{err}\n--- mosquitto log ---\n{_tail(self.log_path)}") from None
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


# --------------------------------------------------------------------------------------------------
# Home Assistant


class HomeAssistant:
    """A real Home Assistant core in a subprocess, onboarded and driven over its APIs.

    ``start()`` writes the config dir (first time only), launches ``hass --skip-pip -c <dir>``, waits
    for the HTTP API, completes onboarding (first time only; the user and a long-lived access token
    persist in ``<dir>/.storage``) and waits until HA reports ``RUNNING``. ``restart()`` keeps the dir.
    """

    USERNAME = "e2e"
    PASSWORD = "e2e-password-not-secret"

    def __init__(
        self,
        config_dir: str | os.PathLike[str] | None = None,
        *,
        release: "str | HaInstall | None" = None,
        port: int | None = None,
        log_levels: dict[str, str] | None = None,
        default_log_level: str = "warning",
        extra_config: str = "",
        startup_timeout: float = 180,
    ) -> None:
        self.install = release if isinstance(release, HaInstall) else find_ha_install(release)
        self.version = self.install.version
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.base_url = f"http://{self.host}:{self.port}"
        self.client_id = f"{self.base_url}/"
        self._own_dir = config_dir is None
        self.config_dir = Path(config_dir) if config_dir else Path(tempfile.mkdtemp(prefix="ha-e2e-"))
        self.log_path = self.config_dir / "hass-console.log"  # stdout+stderr of every run, appended
        self.log_levels = dict(DEFAULT_LOG_LEVELS if log_levels is None else log_levels)
        self.default_log_level = default_log_level
        self.extra_config = extra_config
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.token: str | None = None
        self.mqtt_entry_id: str | None = None
        self.startup_seconds: list[float] = []  # one figure per start(): launch → RUNNING
        self._log_offset = 0  # log_text(since_start=True) reads from here

    # ---- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> "HomeAssistant":
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def start(self, timeout: float | None = None) -> "HomeAssistant":
        """Start HA and return once it is onboarded and RUNNING."""
        if self.proc and self.proc.poll() is None:
            raise HomeAssistantError("Home Assistant is already running")
        timeout = timeout or self.startup_timeout
        self._write_config()
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.install.command(self.config_dir, "--log-file", str(self.config_dir / "home-assistant.log")),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.install.env(),
            cwd=str(self.config_dir), start_new_session=True,
        )
        log.close()
        deadline = t0 + timeout
        try:
            # Any HTTP answer means the server is up: /auth/providers needs no token (200, or 400 before
            # onboarding). Not /api/ (a 401 there is logged as an invalid login attempt) and not
            # /api/onboarding (only served until onboarding is complete).
            self._poll(lambda: self._get_status("/auth/providers") is not None, deadline,
                       "HA's HTTP API to answer")
            self._onboard()
            self._poll(lambda: (self.get("/api/config") or {}).get("state") == "RUNNING", deadline,
                       "HA to reach state RUNNING")
            self._confirm_http_config()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds.append(time.monotonic() - t0)
        return self

    def stop(self, timeout: float = 60) -> None:
        """Stop HA (SIGTERM, then SIGKILL after ``timeout``)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def restart(self, timeout: float | None = None) -> "HomeAssistant":
        """Stop and start again with the same config dir, port and stored auth."""
        self.stop()
        return self.start(timeout)

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir and not os.environ.get("OCPP_HA_KEEP"):
            shutil.rmtree(self.config_dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ---- config dir ------------------------------------------------------------------------------

    def _write_config(self) -> None:
        storage = self.config_dir / ".storage"
        storage.mkdir(parents=True, exist_ok=True)
        logs = "\n".join(f"    {name}: {level}" for name, level in self.log_levels.items())
        (self.config_dir / "configuration.yaml").write_text(
            "# Written by tests/e2e/ha.py. Deliberately no default_config: (zeroconf, ssdp, cloud, ...).\n"
            "homeassistant:\n"
            "  name: ocpp_addon e2e\n"
            "  unit_system: metric\n"
            "  time_zone: UTC\n"
            "  country: DE\n"
            "  currency: EUR\n"
            "  language: en\n"
            "  latitude: 52.52\n"
            "  longitude: 13.40\n"
            "  elevation: 34\n"
            f"  internal_url: {self.base_url}\n"
            "http:\n"
            "  server_host: 127.0.0.1\n"
            f"  server_port: {self.port}\n"
            "logger:\n"
            f"  default: {self.default_log_level}\n"
            + (f"  logs:\n{logs}\n" if logs else "")
            + self.extra_config
        )
        # Pin HA's network adapters to loopback before the first start (otherwise the network
        # integration auto-enables the machine's real interface and joins multicast groups on it).
        network = storage / "core.network"
        if not network.exists():
            network.write_text(json.dumps({
                "version": 1, "minor_version": 1, "key": "core.network",
                "data": {"configured_adapters": ["lo"]},
            }))
        # core_config is the onboarding step that sets up met, radio_browser, google_translate and
        # shopping_list (all reach the internet): mark it done up front; location etc. come from YAML.
        onboarding = storage / "onboarding"
        if not onboarding.exists():
            onboarding.write_text(json.dumps({
                "version": 4, "minor_version": 1, "key": "onboarding",
                "data": {"done": ["core_config"]},
            }))

    # ---- onboarding and auth ---------------------------------------------------------------------

    @property
    def _token_file(self) -> Path:
        return self.config_dir / "e2e-access-token"

    def _onboard(self) -> None:
        """Create the owner and a long-lived token (first start only); later starts reuse the token."""
        if self._token_file.exists():
            self.token = self._token_file.read_text().strip()
            return
        done = {s["step"]: s["done"] for s in self._request("GET", "/api/onboarding", auth=False)}
        if done.get("user"):
            raise HomeAssistantError(f"{self.config_dir} is onboarded but has no {self._token_file.name}")
        auth_code = self._request("POST", "/api/onboarding/users", {
            "client_id": self.client_id, "name": "E2E Owner", "username": self.USERNAME,
            "password": self.PASSWORD, "language": "en",
        }, auth=False)["auth_code"]
        tokens = self._request("POST", "/auth/token", form={
            "grant_type": "authorization_code", "code": auth_code, "client_id": self.client_id,
        }, auth=False)
        self.token = tokens["access_token"]  # valid 30 min, tied to the user's credentials
        # The remaining steps only mark themselves done (analytics stays disabled; integration
        # validates client_id/redirect_uri locally since both are on the same host, and needs a token
        # that carries credentials, so it runs before the swap below).
        if not done.get("analytics"):
            self._request("POST", "/api/onboarding/analytics", {})
        if not done.get("integration"):
            self._request("POST", "/api/onboarding/integration", {
                "client_id": self.client_id, "redirect_uri": f"{self.base_url}/?auth_callback=1",
            })
        # A long-lived token survives restarts (it is stored in .storage/auth with its refresh token).
        self.token = self.ws("auth/long_lived_access_token", client_name="ocpp_addon e2e", lifespan=30)
        self._token_file.write_text(self.token)

    def http_config(self) -> dict[str, Any] | None:
        """http/config (2026.x: the stored HTTP server settings), or None on releases without it."""
        try:
            return self.ws("http/config")
        except HomeAssistantError as err:
            if "unknown_command" in str(err):
                return None
            raise

    def _confirm_http_config(self) -> None:
        """Confirm our loopback-only HTTP settings where HA asks for it.

        From 2026.x on HA moves ``http:`` from configuration.yaml into storage as a trial that, unless
        confirmed within 5 minutes, is reverted with a restart to the defaults (port 8123 on every
        interface). A user confirms it in the UI; we do it over the websocket API."""
        config = self.http_config()
        if config and config.get("pending") and not config["pending"].get("error"):
            self.ws("http/config/promote")

    # ---- REST ------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None, *, form: dict[str, str] | None = None,
                 auth: bool = True, timeout: float = 30) -> Any:
        headers = {}
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth:
            if not self.token:
                raise HomeAssistantError("no access token yet (HA not started/onboarded)")
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            with _NO_PROXY.open(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:2000]
            raise HomeAssistantError(f"{method} {path} -> HTTP {err.code}: {detail}") from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def _get_status(self, path: str) -> int | None:
        try:
            with _NO_PROXY.open(self.base_url + path, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            return None

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self._request("POST", path, body if body is not None else {})

    def states(self) -> list[dict[str, Any]]:
        """GET /api/states."""
        return self.get("/api/states")

    def state(self, entity_id: str) -> dict[str, Any] | None:
        """GET /api/states/<entity_id>, or None when HA has no such entity."""
        try:
            return self.get(f"/api/states/{entity_id}")
        except HomeAssistantError as err:
            if "HTTP 404" in str(err):
                return None
            raise

    def call_service(self, domain: str, service: str, data: dict[str, Any] | None = None) -> Any:
        """POST /api/services/<domain>/<service>; returns the states HA says changed."""
        return self.post(f"/api/services/{domain}/{service}", data or {})

    def config_entries(self, domain: str | None = None) -> list[dict[str, Any]]:
        query = f"?domain={urllib.parse.quote(domain)}" if domain else ""
        return self.get(f"/api/config/config_entries/entry{query}")

    # ---- websocket -------------------------------------------------------------------------------

    def ws(self, type_: str, timeout: float = 30, **payload: Any) -> Any:
        """Send one websocket command (own connection) and return its ``result``."""
        from websockets.sync.client import connect  # the project's Python has websockets >= 12

        url = f"ws://{self.host}:{self.port}/api/websocket"
        kwargs: dict[str, Any] = {"open_timeout": timeout, "close_timeout": 5, "max_size": None}
        try:  # websockets >= 15 reads proxy settings from the environment unless told not to
            conn_cm = connect(url, proxy=None, **kwargs)
        except TypeError:
            conn_cm = connect(url, **kwargs)
        with conn_cm as conn:
            first = json.loads(conn.recv(timeout))
            if first.get("type") != "auth_required":
                raise HomeAssistantError(f"unexpected websocket greeting: {first}")
            conn.send(json.dumps({"type": "auth", "access_token": self.token}))
            auth = json.loads(conn.recv(timeout))
            if auth.get("type") != "auth_ok":
                raise HomeAssistantError(f"websocket auth failed: {auth}")
            conn.send(json.dumps({"id": 1, "type": type_, **payload}))
            deadline = time.monotonic() + timeout
            while True:
                msg = json.loads(conn.recv(max(0.1, deadline - time.monotonic())))
                if msg.get("id") == 1 and msg.get("type") == "result":
                    if not msg.get("success"):
                        raise HomeAssistantError(f"websocket {type_} failed: {msg.get('error')}")
                    return msg.get("result")

    def entity_registry(self) -> list[dict[str, Any]]:
        """config/entity_registry/list (the compact entries: entity_id, unique_id, device_id, ...)."""
        return self.ws("config/entity_registry/list")

    def entity_registry_entry(self, entity_id: str) -> dict[str, Any]:
        """config/entity_registry/get: the full entry (original_device_class, capabilities, ...)."""
        return self.ws("config/entity_registry/get", entity_id=entity_id)

    def entity_registry_entries(self, entity_ids: list[str]) -> dict[str, dict[str, Any] | None]:
        """config/entity_registry/get_entries: full entries for many entities in one call (None: unknown)."""
        return self.ws("config/entity_registry/get_entries", entity_ids=list(entity_ids))

    def device_registry(self) -> list[dict[str, Any]]:
        """config/device_registry/list."""
        return self.ws("config/device_registry/list")

    def entity_id_for(self, unique_id: str, platform: str = "mqtt") -> str | None:
        for entry in self.entity_registry():
            if entry.get("unique_id") == unique_id and entry.get("platform") == platform:
                return entry["entity_id"]
        return None

    # ---- MQTT integration ------------------------------------------------------------------------

    def setup_mqtt(self, broker: str = "127.0.0.1", port: int = 1883, username: str | None = None,
                   password: str | None = None, timeout: float = 60) -> str:
        """Add the MQTT integration (config flow, broker step) unless present; wait until loaded."""
        existing = self.config_entries("mqtt")
        if existing:
            self.mqtt_entry_id = existing[0]["entry_id"]
        else:
            # 2026.x puts required TLS/transport choices in a section ("other_settings"); plain TCP.
            answers: dict[str, Any] = {"broker": broker, "port": port, "set_client_cert": False,
                                       "set_ca_cert": "off", "transport": "tcp"}
            if username is not None:
                answers["username"] = username
            if password is not None:
                answers["password"] = password
            result = self.post("/api/config/config_entries/flow", {"handler": "mqtt",
                                                                    "show_advanced_options": False})
            for _ in range(5):
                kind = result.get("type")
                if kind == "create_entry":
                    self.mqtt_entry_id = result["result"]["entry_id"]
                    break
                if kind == "menu":  # only offered with a Supervisor: pick the manual broker form
                    if "broker" not in result.get("menu_options", []):
                        raise HomeAssistantError(f"MQTT flow menu without a broker option: {result}")
                    body: dict[str, Any] = {"next_step_id": "broker"}
                elif kind == "form":
                    if result.get("errors"):
                        raise HomeAssistantError(f"MQTT flow step {result.get('step_id')!r} errors: "
                                                 f"{result['errors']}\n{self.log_tail()}")
                    body = _form_answers(result.get("data_schema", []), answers)
                else:
                    raise HomeAssistantError(f"MQTT config flow ended with {result}\n{self.log_tail()}")
                result = self.post(f"/api/config/config_entries/flow/{result['flow_id']}", body)
            else:
                raise HomeAssistantError(f"MQTT config flow did not finish: {result}")
        self._poll(lambda: any(e["entry_id"] == self.mqtt_entry_id and e["state"] == "loaded"
                               for e in self.config_entries("mqtt")),
                   time.monotonic() + timeout, "the MQTT config entry to be loaded")
        return self.mqtt_entry_id

    # ---- waiting ---------------------------------------------------------------------------------

    def _poll(self, check: Callable[[], Any], deadline: float, what: str, interval: float = 0.25) -> Any:
        last_err: Exception | None = None
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise HomeAssistantError(f"Home Assistant exited with code {self.proc.returncode} while "
                                         f"waiting for {what}\n{self.log_tail()}")
            try:
                value = check()
                if value:
                    return value
                last_err = None
            except (HomeAssistantError, OSError) as err:
                last_err = err
            if time.monotonic() > deadline:
                extra = f" (last error: {last_err})" if last_err else ""
                raise TimeoutError(f"timed out waiting for {what}{extra}\n{self.log_tail()}")
            time.sleep(interval)

    def wait_for_state(self, entity_id: str, predicate: Callable[[dict[str, Any] | None], bool],
                       timeout: float = 60) -> dict[str, Any] | None:
        """Poll state(entity_id) until predicate(state_or_None) holds; returns that state."""
        seen: list[Any] = [None]

        def check() -> bool:
            seen[0] = self.state(entity_id)
            return bool(predicate(seen[0]))

        try:
            self._poll(check, time.monotonic() + timeout, f"{entity_id} to match the predicate")
        except TimeoutError as err:
            raise TimeoutError(f"{err}\nlast state of {entity_id}: {seen[0]}") from None
        return seen[0]

    def wait_for(self, check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
        """Poll any check (exceptions from HA's API count as 'not yet') until it returns truthy."""
        return self._poll(check, time.monotonic() + timeout, what)

    # ---- logs ------------------------------------------------------------------------------------

    def log_mark(self) -> int:
        """A position in HA's console log (it spans restarts); pass it as ``since`` to read only what follows."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_text(self, since_start: bool = False, since: int | None = None) -> str:
        """HA's console output (all runs, only since the last start(), or since a log_mark())."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            if since is not None:
                f.seek(since)
            elif since_start:
                f.seek(self._log_offset)
            return f.read().decode(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return f"--- last {lines} lines of {self.log_path} ---\n{_tail(self.log_path, lines)}"

    def log_records(self, min_level: str = "WARNING", logger_prefix: str = "",
                    since_start: bool = False, since: int | None = None) -> list[dict[str, str]]:
        """Parsed log lines at or above ``min_level`` whose logger starts with ``logger_prefix``.

        A record's message includes its continuation lines (tracebacks)."""
        records: list[dict[str, str]] = []
        current: dict[str, str] | None = None
        for line in self.log_text(since_start, since).splitlines():
            m = LOG_LINE_RE.match(line)
            if m:
                current = m.groupdict()
                if (LEVELS.get(current["level"], 0) >= LEVELS[min_level.upper()]
                        and current["logger"].startswith(logger_prefix)):
                    records.append(current)
                else:
                    current = None
            elif current is not None:
                current["message"] += "\n" + line
        return records


def _form_answers(schema: list[dict[str, Any]], answers: dict[str, Any]) -> dict[str, Any]:
    """A config-flow form's body: our answers for the fields it has, recursing into sections
    ("expandable"), and a required field's default where we have no answer."""
    body: dict[str, Any] = {}
    for field_ in schema:
        name = field_["name"]
        if field_.get("type") == "expandable":
            body[name] = _form_answers(field_.get("schema", []), answers)
        elif name in answers:
            body[name] = answers[name]
        elif field_.get("required") and "default" in field_:
            body[name] = field_["default"]
    return body


class AsyncHomeAssistant:
    """The same API, awaitable: every method of the wrapped :class:`HomeAssistant` runs in a worker thread.

    For tests whose event loop also runs our service and the simulated chargers: HA's blocking calls
    (REST, websocket, the polling waits) must not stall that loop.

        ha = AsyncHomeAssistant(home_assistant)
        await ha.call_service("number", "set_value", {...})
        ha.sync.version  # attributes and the wrapped object stay reachable
    """

    def __init__(self, ha: HomeAssistant) -> None:
        self.sync = ha

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.sync, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(attr, *args, **kwargs)

        return call
