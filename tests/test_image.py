"""The app image, built and run here: the project's Dockerfile as the Supervisor builds it, run as it runs it.

No container registry is reachable on our machines, so the Dockerfile is built (unchanged) with buildah on a
stand-in for Home Assistant's Python base image made from Debian packages (``scripts/image_base.sh``; it
passes as ``BUILD_FROM`` like the Supervisor passes the real one). The image then runs with what the
Supervisor gives an app: ``/data`` holding ``options.json`` with config.yaml's defaults, ``SUPERVISOR_TOKEN``
and a services API handing out the MQTT broker (a fake on loopback; a real mosquitto that lets in only that
user). What the Alpine base would add over the stand-in (musl wheels) is proved separately: every locked
dependency exists as a musllinux wheel for both architectures and the base image's Python.

Everything talks over 127.0.0.1 (the container shares the host's network, as ``host_network`` would; it
listens on 9000 like the real app).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from ocpp_addon.simulator import SimOptions, connect
from ocpp_addon.supervisor import INGRESS_PORT

from .conftest import TIMEOUT, MqttProbe
from .test_addon import MANIFEST, FakeSupervisor, PasswordBroker, mqtt_service
from .test_install import app_folder_files

pytestmark = pytest.mark.image

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ocpp_addon"
BASE_TAG = os.environ.get("OCPP_IMAGE_BASE", "localhost/ocpp-addon-base:bookworm")
BUILDAH = ["buildah", "--storage-driver", "vfs"]
APP_PORT = 9000  # fixed in app mode (supervisor.NOT_OPTIONS) and in the HEALTHCHECK
# The app reaches the Supervisor at its default, http://supervisor (port 80): the container resolves that
# name to 127.0.0.1 (buildah from --add-host, as the Supervisor's network's DNS does), where the fake listens.
SUPERVISOR_PORT = 80
START_TIMEOUT = 60.0  # first start of a fresh container: Python compiles the package's bytecode
# The Supervisor's arch names -> the machine names in musllinux wheel tags.
WHEEL_MACHINE = {"amd64": "x86_64", "aarch64": "aarch64"}


def base_python_version() -> str:
    """The Python of the real base image, from the Dockerfile's ``ARG BUILD_FROM=...base-python:3.13-alpine...``."""
    match = re.search(r"^ARG BUILD_FROM=\S+/base-python:(\d+\.\d+)-alpine[\d.]+$", DOCKERFILE, re.M)
    assert match, "the Dockerfile's ARG BUILD_FROM names no Home Assistant base-python image"
    return match.group(1)


def locked_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.strip().partition("==")
            pins[re.sub(r"[-_.]+", "_", name.lower())] = version
    return pins


# -- the real base: every locked wheel exists for Alpine (musl) on both architectures ----------------------------


@pytest.mark.timeout(600)
@pytest.mark.parametrize("arch", sorted(WHEEL_MACHINE))
def test_every_locked_dependency_has_a_musllinux_wheel_for_the_base_images_python(arch: str) -> None:
    """``pip install`` in the Supervisor's build on Alpine must not need a compiler (the base has none)."""
    assert arch in MANIFEST["arch"]
    python = base_python_version()
    target = CACHE / "musllinux-wheels" / f"cp{python.replace('.', '')}-{arch}"
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input", "--quiet",
         "--only-binary=:all:", "--no-deps", "--implementation", "cp", "--python-version", python,
         "--platform", f"musllinux_1_2_{WHEEL_MACHINE[arch]}", "--platform", f"musllinux_1_1_{WHEEL_MACHINE[arch]}",
         "-r", str(ROOT / "requirements.lock"), "-d", str(target)],
        capture_output=True, text=True, timeout=540,
    )
    assert result.returncode == 0, f"pip found no binary wheel for {arch} / CPython {python}:\n{result.stderr[-3000:]}"
    wheels: dict[str, set[str]] = {}
    for wheel in target.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        wheels.setdefault(re.sub(r"[-_.]+", "_", name.lower()), set()).add(version)
    for name, version in locked_pins().items():
        assert version in wheels.get(name, set()), f"no {arch} wheel of {name}=={version} for CPython {python}"


# -- build and run the image ----------------------------------------------------------------------------------------


def buildah(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*BUILDAH, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"buildah {' '.join(args[:2])} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def preflight() -> None:
    """Fail (never skip) with what to do when this machine cannot build images."""
    if shutil.which("buildah") is None:
        pytest.fail("buildah is not installed: run 'bash scripts/image_base.sh' (scripts/test.sh does), "
                    "or 'apt-get install -y buildah'")
    info = subprocess.run([*BUILDAH, "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        pytest.fail(f"buildah cannot run here (buildah info: {info.stderr.strip()[-800:]})")
    if buildah("inspect", "--type", "image", BASE_TAG, check=False).returncode != 0:
        pytest.fail(f"the stand-in base image {BASE_TAG} is missing: run 'bash scripts/image_base.sh' (scripts/test.sh does)")
    for port, who in ((APP_PORT, "the app listens there, as in Home Assistant"),
                      (SUPERVISOR_PORT, "the fake Supervisor answers there, as http://supervisor does")):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no user
            try:
                sock.bind(("0.0.0.0" if port == APP_PORT else "127.0.0.1", port))
            except OSError as err:
                pytest.fail(f"port {port} is taken ({err.strerror}); {who}. "
                            "Stop what uses it (e.g. scripts/run.sh) and run the image test again")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The app image built from the app folder on the stand-in base; yields its config (Cmd, Healthcheck, Env)."""
    preflight()
    context = tmp_path_factory.mktemp("app-folder")
    for name in app_folder_files():
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, context / name)
    if (ROOT / ".dockerignore").exists():
        shutil.copy2(ROOT / ".dockerignore", context / ".dockerignore")
    tag = f"localhost/ocpp-addon-test:{os.getpid()}"
    # What the Supervisor passes (apps/build.py get_docker_args): BUILD_FROM, BUILD_VERSION, BUILD_ARCH.
    # --format docker keeps HEALTHCHECK (the OCI image format has no field for it).
    buildah("bud", "--isolation", "chroot", "--format", "docker", "--layers=false", "--quiet",
            "--build-arg", f"BUILD_FROM={BASE_TAG}", "--build-arg", f"BUILD_VERSION={MANIFEST['version']}",
            "--build-arg", "BUILD_ARCH=amd64", "-t", tag, str(context), timeout=540)
    try:
        inspected = json.loads(buildah("inspect", "--type", "image", tag).stdout)
        config = inspected["Docker"]["config"]
        yield {"tag": tag, **config}
    finally:
        buildah("rmi", "-f", tag, check=False)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Container:
    """One ``buildah run`` of the image's CMD, as the Supervisor starts the app; its log is read as it comes."""

    def __init__(self, image: dict[str, Any], data: Path, env: dict[str, str]) -> None:
        self.image, self.data, self.env = image, data, env
        self.name = buildah("from", "--quiet", "--add-host", "supervisor:127.0.0.1", image["tag"]).stdout.strip()
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self._eof = False
        self.proc: asyncio.subprocess.Process | None = None

    def _run_args(self, command: list[str]) -> list[str]:
        args = [*BUILDAH, "run", "--isolation", "chroot", "--network", "host", "-v", f"{self.data}:/data"]
        for key, value in self.env.items():
            args += ["--env", f"{key}={value}"]
        return [*args, self.name, "--", *command]

    async def start(self) -> Container:
        command = [*(self.image.get("Entrypoint") or []), *(self.image.get("Cmd") or [])]
        assert command, "the image has neither ENTRYPOINT nor CMD"
        self.proc = await asyncio.create_subprocess_exec(
            *self._run_args(command), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            async with self._changed:
                self.lines.append(line.decode(errors="replace"))
                self._changed.notify_all()
        async with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    async def wait_line(self, needle: str, timeout: float = TIMEOUT) -> str:
        def found() -> str | None:
            return next((line for line in self.lines if needle in line), None)

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: found() is not None or self._eof), timeout)
            except asyncio.TimeoutError:
                raise AssertionError(f"no log line with {needle!r} within {timeout}s:\n{self.log}") from None
        line = found()
        if line is None:
            assert self.proc is not None
            code = await asyncio.wait_for(self.proc.wait(), TIMEOUT)
            raise AssertionError(f"the container exited ({code}) before logging {needle!r}:\n{self.log}")
        return line

    async def run(self, *command: str) -> tuple[int, str]:
        """Run a command inside the container (beside the app); its exit code and output."""
        proc = await asyncio.create_subprocess_exec(*self._run_args(list(command)), stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), START_TIMEOUT)
        return (proc.returncode if proc.returncode is not None else -1), out.decode(errors="replace")

    async def healthcheck(self) -> int:
        """The image's HEALTHCHECK command, run inside the container as Docker runs it; its exit code."""
        health = self.image.get("Healthcheck") or {}
        test = health.get("Test") or []
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"the image has no HEALTHCHECK command: {health}"
        command = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
        timeout = (health.get("Timeout") or 30 * 10**9) / 10**9
        proc = await asyncio.create_subprocess_exec(*self._run_args(command), stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        try:  # Docker counts a check that outlives its timeout as failed; so do we (plus buildah's own start-up)
            out, _ = await asyncio.wait_for(proc.communicate(), timeout + TIMEOUT)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return -1
        self.health_output = out.decode(errors="replace")
        return proc.returncode if proc.returncode is not None else -1

    def service_pids(self) -> list[int]:
        """The container's main process (what Docker signals as PID 1; with s6-overlay, what /init signals)."""
        assert self.proc is not None
        command = [*(self.image.get("Entrypoint") or []), *(self.image.get("Cmd") or [])]
        want = [os.path.basename(command[0]).encode(), *(part.encode() for part in command[1:])]
        # Below buildah run are its chroot helpers (buildah-chroot-runtime, buildah-chroot-exec), then the command
        # (argv[0] resolved through the image's PATH).
        found = []
        for pid in _descendants(self.proc.pid):
            argv = _cmdline(pid).split(b"\0")[:-1]
            if argv and [os.path.basename(argv[0]), *argv[1:]] == want:
                found.append(pid)
        return found[:1]

    async def stop(self, grace: float) -> int:
        """SIGTERM to the service as ``docker stop`` delivers it; its exit code within the grace time."""
        assert self.proc is not None
        pids = self.service_pids()
        assert pids, f"no ocpp_addon process in the container:\n{self.log}"
        os.kill(pids[0], signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), grace)
        except asyncio.TimeoutError:
            raise AssertionError(f"the app did not exit within the {grace:.0f} s grace time after SIGTERM:\n{self.log}") from None
        await self._reader
        return code

    async def remove(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            for pid in _descendants(self.proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            await self.proc.wait()
        await asyncio.to_thread(buildah, "rm", self.name, check=False)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _grace_seconds(image: dict[str, Any]) -> float:
    """How long the app may take to stop: s6-overlay's S6_KILL_GRACETIME (ms) from the image, else Docker's 10 s."""
    env = dict(item.split("=", 1) for item in image.get("Env") or [])
    return int(env.get("S6_KILL_GRACETIME", "10000")) / 1000


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def _limit(request: dict[str, Any]) -> float:
    return request["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"]


@pytest.fixture
async def containers(image: dict[str, Any]) -> AsyncIterator[list[Container]]:
    started: list[Container] = []
    yield started
    for container in started:  # a failed test may leave one running
        await container.remove()


@pytest.mark.timeout(900)
async def test_the_image_runs_under_a_supervisor_healthcheck_passes_sigterm_is_clean_and_setpoints_survive(
    image: dict[str, Any], containers: list[Container], tmp_path: Path
) -> None:
    assert image["Labels"]["io.hass.version"] == MANIFEST["version"]
    assert image["Labels"]["io.hass.type"] == "app"
    assert f"{APP_PORT}/tcp" in (image.get("ExposedPorts") or {})

    broker = PasswordBroker(tmp_path / "broker", "addons", "Pw-from-the-Supervisor-7")
    broker.start()
    loop = asyncio.get_running_loop()
    fake = FakeSupervisor(loop, mqtt_service(broker.app_port, broker.username, broker.password), port=SUPERVISOR_PORT)
    probe = MqttProbe(broker.probe_port, loop)
    data = tmp_path / "data"  # the app's /data: what the Supervisor writes before the first start
    data.mkdir()
    (data / "options.json").write_text(json.dumps(MANIFEST["options"]), encoding="utf-8")
    env = {"SUPERVISOR_TOKEN": "test-token"}  # what the Supervisor sets; the URL is the app's default
    url = f"ws://127.0.0.1:{APP_PORT}"
    try:
        await probe.subscribe("#")
        app = Container(image, data, env)
        containers.append(app)
        await app.start()
        await app.wait_line("MQTT broker from the Supervisor: 127.0.0.1", START_TIMEOUT)
        ready = await app.wait_line("ready:", START_TIMEOUT)
        assert ready.rstrip().endswith("event loop uvloop"), ready  # the image installs the [fast] extra
        await probe.wait_for("ocpp/bridge/state", lambda p: p == b"online")
        assert await app.healthcheck() == 0, app.health_output
        # The chargers page (ingress): its files are in the installed package, and only the Supervisor's
        # proxy (172.30.32.2) is let in, so this host's request is refused.
        assert f"chargers page on port {INGRESS_PORT} for Home Assistant's ingress (only 172.30.32.2" in app.log
        code, out = await app.run("python3", "-c", "from ocpp_addon import web; print(sorted(p.name for p in web.STATIC.iterdir()))")
        assert code == 0 and all(f"'{name}'" in out for name in ("index.html", "app.js", "style.css")), out
        assert await asyncio.to_thread(_http_status, f"http://127.0.0.1:{INGRESS_PORT}/") == 403

        sim, task = await connect(url, "wallbox-1", SimOptions(meter_interval=0))
        await asyncio.wait_for(sim.booted.wait(), TIMEOUT)
        await probe.wait_json("homeassistant/device/wallbox-1/config", lambda d: "charging_limit" in d["components"])
        await probe.wait_for("ocpp/wallbox-1/availability", lambda p: p == b"online")
        probe.publish("ocpp/wallbox-1/charging_limit/set", "16")
        assert _limit(await sim.wait_for_call("SetChargingProfile")) == 16
        await probe.wait_json("ocpp/wallbox-1/state", lambda d: d["charging_limit"] == 16)
        await sim._connection.close()
        await asyncio.wait_for(task, TIMEOUT)
        await probe.wait_for("ocpp/wallbox-1/availability", lambda p: p == b"offline")
        probe.publish("ocpp/wallbox-1/charging_limit/set", "10")  # the charger is away: kept in /data for later
        await probe.wait_json("ocpp/wallbox-1/event", lambda d: d["status"] == "Queued" and d["limit"] == 10)

        mark = probe.mark()
        assert await app.stop(_grace_seconds(image)) == 0, app.log
        await probe.wait_for("ocpp/bridge/state", lambda p: p == b"offline", since=mark)
        saved = json.loads((data / "state.json").read_text(encoding="utf-8"))["chargers"]["wallbox-1"]
        assert saved["requested_limit"] == 10  # in /data, which outlives the container
        assert await app.healthcheck() != 0, "the HEALTHCHECK passes with the app stopped: it checks nothing"
        await app.remove()

        again = Container(image, data, env)  # a restart: a new container from the image, the same /data
        containers.append(again)
        await again.start()
        await again.wait_line("ready:", START_TIMEOUT)
        sim2, task2 = await connect(url, "wallbox-1", SimOptions(meter_interval=0))
        assert _limit(await sim2.wait_for_call("SetChargingProfile")) == 10
        await probe.wait_json("ocpp/wallbox-1/state", lambda d: d["charging_limit"] == 10, since=mark)
        await asyncio.wait_for(sim2.booted.wait(), TIMEOUT)
        await sim2._connection.close()
        await asyncio.wait_for(task2, TIMEOUT)
        assert await again.stop(_grace_seconds(image)) == 0, again.log
        assert {r["path"] for r in fake.requests} == {"/services/mqtt"}
        assert broker.password not in app.log + again.log
    finally:
        probe.close()
        fake.close()
        broker.stop()
