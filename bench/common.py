"""Shared benchmark helpers: broker, service subprocess, /proc accounting, a light charger fleet.

Everything talks to 127.0.0.1 only. Nothing here is a test: the scripts that use it
print figures.

* :func:`start_broker` - Debian mosquitto on a free port (``ocpp_addon.broker.EmbeddedBroker``).
* :class:`ServiceProcess` - ``python -m ocpp_addon --config <tmp yaml>`` (or any command that
  logs a ready line) as a child process; time to the ready line, CPU seconds and RSS from
  ``/proc/<pid>/stat`` and ``/proc/<pid>/status``, WARNING/ERROR lines counted.
* :class:`FakeCharger` - one charger on raw ``websockets`` (not the ocpp library, so the
  generator stays cheap): BootNotification, StatusNotification, MeterValues with 9 sampled
  values, round trip per CALL, answers SetChargingProfile with Accepted and records arrival.
* :class:`Fleet` - many FakeChargers spread over worker processes (multiprocessing, spawn),
  driven in phases: connect+boot -> go (MeterValues for a duration or until stop) ->
  results -> release (close).
* :class:`MqttWatch` - a paho subscriber that counts messages and can hand them to asyncio.
* :func:`summarize_pyspy_raw` - top functions by own and cumulative time from py-spy's raw
  (collapsed stacks) output.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import gc
import json
import multiprocessing as mp
import os
import queue as queue_module
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# small utilities


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), int(-(-pct * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def pct_summary(values: list[float]) -> dict[str, Any]:
    s = sorted(values)
    if not s:
        return {"n": 0}
    return {
        "n": len(s),
        "min": s[0],
        "p50": percentile(s, 50),
        "p90": percentile(s, 90),
        "p99": percentile(s, 99),
        "max": s[-1],
        "mean": sum(s) / len(s),
    }


def fmt_ms(summary: dict[str, Any]) -> str:
    if not summary.get("n"):
        return "n=0"
    return ("n={n}  p50={p50:.2f}  p90={p90:.2f}  p99={p99:.2f}  max={max:.2f}  mean={mean:.2f} ms"
            .format(**summary))


def machine_description() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import platform

    return (f"{os.cpu_count()} cores ({cpu}), {mem_gb:.1f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def git_revision() -> str:
    """Commit of the work tree, with '+dirty' when uncommitted changes are being measured."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "ocpp_addon"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{'+dirty (uncommitted ocpp_addon changes)' if dirty else ''}"


def raise_nofile(wanted: int) -> int:
    """Raise the soft open-files limit towards ``wanted`` (capped by the hard limit); return it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


# ---------------------------------------------------------------------------------------------
# /proc accounting


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (children excluded), in seconds."""
    with open(f"/proc/{pid}/stat") as handle:
        text = handle.read()
    fields = text[text.rindex(")") + 2:].split()  # the comm field may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (kB), Threads from /proc/<pid>/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads", "RssAnon"):
                out[key] = int(value.split()[0])
    return out


def system_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores, from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return (total - idle) / CLK_TCK, total / CLK_TCK


def wait_for_quiet(max_wait: float, threshold_pct: float = 25.0, sample: float = 2.0) -> float:
    """Wait (up to ``max_wait`` s) until the machine is nearly idle; return its busy % (of one core, summed) last seen.

    The bench machine may be shared (test runs, other profilers): figures taken while
    something else burns CPU are not comparable, so every script reports this.
    """
    deadline = time.monotonic() + max_wait
    while True:
        b0, _ = system_cpu()
        w0 = time.monotonic()
        time.sleep(sample)
        b1, _ = system_cpu()
        busy = 100 * (b1 - b0) / (time.monotonic() - w0)
        if busy <= threshold_pct or time.monotonic() >= deadline:
            return busy


def proc_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


# ---------------------------------------------------------------------------------------------
# broker


async def start_broker(workdir: Path, nodelay: bool = False) -> Any:
    """Start mosquitto on a free loopback port (the service's own EmbeddedBroker class).

    ``nodelay`` adds ``set_tcp_nodelay true`` to its config (a what-if: mosquitto leaves Nagle on
    by default); for that the config file is rewritten and mosquitto restarted once.
    """
    from ocpp_addon.broker import EmbeddedBroker, find_mosquitto

    if find_mosquitto() is None:
        raise SystemExit("mosquitto is not installed: apt-get install -y mosquitto (or bash scripts/ensure-mosquitto.sh)")
    broker = EmbeddedBroker(free_port(), workdir / "broker")
    await broker.start()
    if nodelay:
        conf = broker.dir / "mosquitto.conf"
        await broker.stop()
        text = conf.read_text(encoding="utf-8") + "set_tcp_nodelay true\n"
        original_write = Path.write_text
        # EmbeddedBroker.start() writes its fixed config; keep ours for this one start.
        try:
            Path.write_text = lambda self, data, *a, **k: original_write(self, text if self == conf else data, *a, **k)  # type: ignore[method-assign]
            await broker.start()
        finally:
            Path.write_text = original_write  # type: ignore[method-assign]
    return broker


# ---------------------------------------------------------------------------------------------
# the service as a subprocess


def _config_accepts(section: str, key: str, value: Any) -> bool:
    """Does this version of the service know ``section.key``? (The bench runs against a moving tree.)"""
    from ocpp_addon import config as config_module

    try:
        config_module.validate({section: {key: value}})
    except Exception:  # noqa: BLE001 - ConfigError, or anything an older/newer validate raises
        return False
    return True


def write_service_config(workdir: Path, broker_port: int, ocpp_port: int, log_level: str = "info",
                         extra: dict[str, Any] | None = None) -> Path:
    config: dict[str, Any] = {
        "log_level": log_level,
        "data_dir": str(workdir / "data"),
        "ocpp": {"host": HOST, "port": ocpp_port},
        "mqtt": {"host": HOST, "port": broker_port, "embedded_broker": False, "client_id": f"ocpp-addon-bench-{ocpp_port}"},
    }
    if _config_accepts("ocpp", "max_connections", 100000):
        config["ocpp"]["max_connections"] = 100000  # the default (500) would refuse big fleets with 503
    for section, values in (extra or {}).items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def service_command(config_path: Path, cprofile_out: Path | None = None, window_profile: bool = False) -> list[str]:
    """The service's command line; ``cprofile_out`` runs it under cProfile: the whole run, or with
    ``window_profile`` only between SIGUSR1 and SIGUSR2 and in main-thread CPU time (profile_service.py)."""
    if cprofile_out is not None and window_profile:
        return [sys.executable, str(Path(__file__).with_name("profile_service.py")), "--out", str(cprofile_out),
                "--", "--config", str(config_path)]
    if cprofile_out is not None:
        return [sys.executable, "-m", "cProfile", "-o", str(cprofile_out), "-m", "ocpp_addon", "--config", str(config_path)]
    return [sys.executable, "-m", "ocpp_addon", "--config", str(config_path)]


class ServiceProcess:
    """A child process whose stderr is logged to a file and watched for a ready line."""

    def __init__(self, command: list[str], log_path: Path, ready_marker: str = " ready: ", cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.command = command
        self.env = env or {}
        self.log_path = log_path
        self.ready_marker = ready_marker
        self.cwd = cwd or REPO
        self.process: subprocess.Popen[bytes] | None = None
        self.ready = threading.Event()
        self.startup_seconds: float | None = None
        self.event_loop: str | None = None  # from the service's ready line ("; event loop uvloop")
        self.warnings = 0
        self.errors = 0
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self._reader: threading.Thread | None = None
        self._t0 = 0.0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 60.0) -> float:
        """Spawn and wait for the ready line; return seconds from spawn to ready."""
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self._t0 = time.monotonic()
        self.process = subprocess.Popen(self.command, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        self._reader = threading.Thread(target=self._read, name="service-stderr", daemon=True)
        self._reader.start()
        if not self.ready.wait(timeout) or self.startup_seconds is None:
            self.stop()
            raise RuntimeError(f"{self.command[1:4]} did not log its ready line within {timeout}s; "
                               f"last lines:\n" + "\n".join(self.tail))
        return self.startup_seconds

    def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        with open(self.log_path, "w", encoding="utf-8") as log:
            for raw in self.process.stderr:
                line = raw.decode("utf-8", "replace")
                log.write(line)
                self.tail.append(line.rstrip())
                if not self.ready.is_set() and self.ready_marker in line:
                    self.startup_seconds = time.monotonic() - self._t0
                    if "event loop " in line:
                        self.event_loop = line.rsplit("event loop ", 1)[1].strip()
                    self.ready.set()
                if " WARNING " in line:
                    self.warnings += 1
                elif " ERROR " in line or "Traceback" in line:
                    self.errors += 1
        self.ready.set()  # died: wake start()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def status(self) -> dict[str, int]:
        return proc_status(self.pid)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (the service shuts down cleanly, cProfile writes its file), SIGKILL after timeout."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._reader is not None:
            self._reader.join(5)
        return self.process.returncode


def patch_env(patches: list[str] | None) -> dict[str, str]:
    """Environment that makes bench/patches/sitecustomize.py apply ``patches`` in the child."""
    if not patches:
        return {}
    path = str(Path(__file__).with_name("patches"))
    existing = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": f"{path}:{existing}" if existing else path, "BENCH_PATCHES": ",".join(patches)}


def start_service(workdir: Path, broker_port: int, log_level: str = "info", cprofile_out: Path | None = None,
                  extra: dict[str, Any] | None = None, patches: list[str] | None = None,
                  window_profile: bool = False) -> tuple[ServiceProcess, int]:
    """Start ``python -m ocpp_addon`` on a free OCPP port; return (process, ocpp port)."""
    ocpp_port = free_port()
    config = write_service_config(workdir, broker_port, ocpp_port, log_level, extra)
    service = ServiceProcess(service_command(config, cprofile_out, window_profile), workdir / "service.log", env=patch_env(patches))
    service.start()
    return service, ocpp_port


def pin_process(pid: int, cpus: set[int]) -> None:
    """Pin every thread of a running process (sched_setaffinity on a pid moves only its main thread)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except (ProcessLookupError, OSError):
            pass  # a thread that just ended


def start_baseline(workdir: Path, mode: str = "default") -> tuple[ServiceProcess, int]:
    """Start bench/baseline.py (a bare central system, no MQTT; ``mode`` as its --mode) on a free port."""
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).with_name("baseline.py")), "--host", HOST, "--port", str(port), "--mode", mode]
    service = ServiceProcess(cmd, workdir / f"baseline-{mode}.log", ready_marker="ready:")
    service.start()
    return service, port


# ---------------------------------------------------------------------------------------------
# MQTT


class MqttWatch:
    """paho subscriber on loopback: counts messages per subscription, optional callback."""

    def __init__(self, port: int, topics: list[str], on_message: Callable[[str, bytes], None] | None = None,
                 qos: int = 0, client_id: str | None = None) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.count = 0
        self.bytes = 0
        self._user_cb = on_message
        self._subscribed = threading.Event()
        self._topics = topics
        self._qos = qos
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"bench-{os.getpid()}-{id(self)}")
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        # Nagle off on our side, or a PUBACK followed by a publish waits for a delayed ACK (40 ms).
        self.client.on_socket_open = lambda client, userdata, sock: _set_nodelay(sock)
        self.client.connect(HOST, port)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        client.subscribe([(t, self._qos) for t in self._topics])

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.count += 1
        self.bytes += len(msg.payload)
        if self._user_cb is not None:
            self._user_cb(msg.topic, msg.payload)

    def wait_subscribed(self, timeout: float = 10.0) -> bool:
        return self._subscribed.wait(timeout)

    def publish(self, topic: str, payload: str | bytes, qos: int = 0, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _set_nodelay(sock: Any) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


def wait_bridge_online(broker_port: int, base: str = "ocpp", timeout: float = 20.0) -> float:
    """Wait for the service's retained ``<base>/bridge/state`` = online (its subscriptions are live then)."""
    online = threading.Event()
    t0 = time.monotonic()
    watch = MqttWatch(broker_port, [f"{base}/bridge/state"], lambda t, p: online.set() if p == b"online" else None)
    try:
        if not online.wait(timeout):
            raise RuntimeError("the service did not publish bridge/state=online")
    finally:
        watch.close()
    return time.monotonic() - t0


# ---------------------------------------------------------------------------------------------
# the fake charger (raw websockets)

_SAMPLE = ("Sample.Periodic", "Outlet")


def utc_iso() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def meter_values_payload(energy_wh: float, power_w: float, currents: tuple[float, float, float],
                         voltages: tuple[float, float, float], soc: float) -> dict[str, Any]:
    """A MeterValues.req with 9 sampled values (energy, power, 3 currents, 3 voltages, SoC), ~1 kB."""
    ctx, loc = _SAMPLE
    sampled = [
        {"value": f"{energy_wh:.1f}", "context": ctx, "measurand": "Energy.Active.Import.Register", "location": loc, "unit": "Wh"},
        {"value": f"{power_w:.1f}", "context": ctx, "measurand": "Power.Active.Import", "location": loc, "unit": "W"},
    ]
    for phase, amps in zip(("L1", "L2", "L3"), currents):
        sampled.append({"value": f"{amps:.2f}", "context": ctx, "measurand": "Current.Import", "phase": phase, "location": loc, "unit": "A"})
    for phase, volts in zip(("L1-N", "L2-N", "L3-N"), voltages):
        sampled.append({"value": f"{volts:.1f}", "context": ctx, "measurand": "Voltage", "phase": phase, "location": loc, "unit": "V"})
    sampled.append({"value": f"{soc:.0f}", "context": ctx, "measurand": "SoC", "location": "EV", "unit": "Percent"})
    return {"connectorId": 1, "meterValue": [{"timestamp": utc_iso(), "sampledValue": sampled}]}


def transaction_event_payload(meter: dict[str, Any], transaction_id: str, seq_no: int) -> dict[str, Any]:
    """The same 9 readings as a 2.0.1 TransactionEvent(Updated): numbers, unitOfMeasure, ~1.1 kB."""
    sampled = []
    for item in meter["meterValue"][0]["sampledValue"]:
        value = {k: v for k, v in item.items() if k not in ("value", "unit")}
        value["value"] = float(item["value"])
        value["unitOfMeasure"] = {"unit": item["unit"]}
        sampled.append(value)
    return {"eventType": "Updated", "timestamp": utc_iso(), "triggerReason": "MeterValuePeriodic", "seqNo": seq_no,
            "transactionInfo": {"transactionId": transaction_id, "chargingState": "Charging"},
            "evse": {"id": 1, "connectorId": 1},
            "meterValue": [{"timestamp": meter["meterValue"][0]["timestamp"], "sampledValue": sampled}]}


@dataclass
class FleetStats:
    """Counters of one worker (or merged over workers)."""

    connected: int = 0
    connect_failed: int = 0
    booted: int = 0
    sent: int = 0  # MeterValues CALLs sent during the measured window
    ok: int = 0  # ... answered with a CALLRESULT
    call_errors: int = 0  # ... answered with a CALLERROR
    timeouts: int = 0  # ... unanswered within the timeout
    send_failed: int = 0  # connection closed under us
    late_ticks: int = 0  # a send started more than half an interval after it was due (generator or service behind)
    disconnects: int = 0  # connections closed by the other side during the run
    profiles: int = 0  # SetChargingProfile CALLs received
    other_calls: int = 0  # any other CALL from the central system
    connect_seconds: float = 0.0  # wall time to connect and boot this worker's chargers
    worker_cpu: float = 0.0  # CPU seconds of the worker process during the measured window
    window: float = 0.0  # seconds the measured window lasted (this worker)
    rtt_ms: list[float] = field(default_factory=list)
    boot_rtt_ms: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    def merge(self, other: "FleetStats") -> None:
        for name in ("connected", "connect_failed", "booted", "sent", "ok", "call_errors", "timeouts", "send_failed",
                     "late_ticks", "disconnects", "profiles", "other_calls", "worker_cpu"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.connect_seconds = max(self.connect_seconds, other.connect_seconds)
        self.window = max(self.window, other.window)
        self.rtt_ms.extend(other.rtt_ms)
        self.boot_rtt_ms.extend(other.boot_rtt_ms)
        self.error_samples.extend(other.error_samples[: max(0, 10 - len(self.error_samples))])


class FakeCharger:
    """One charger on a raw websocket. ``call()`` waits for the CALLRESULT and records the round trip."""

    def __init__(self, charger_id: str, url: str, stats: FleetStats, timeout: float = 30.0,
                 on_profile: Callable[[float, dict[str, Any]], None] | None = None, deflate: bool = False,
                 interval: float = 10.0, ocpp: str = "1.6") -> None:
        self.id = charger_id
        self.ocpp = ocpp  # "1.6" or "2.0.1": what it offers, sends and answers
        self.seq_no = 0
        self.interval = interval  # reported as MeterValueSampleInterval
        self._schedule: dict[str, Any] | None = None  # the last SetChargingProfile schedule, for GetCompositeSchedule
        self.url = f"{url.rstrip('/')}/{charger_id}"
        self.stats = stats
        self.timeout = timeout
        self.on_profile = on_profile
        self.deflate = deflate
        self.ws: Any = None
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[tuple[int, float, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.closed = False
        self.energy = random.uniform(1000, 50000)
        self.soc = random.uniform(10, 80)

    async def connect(self, open_timeout: float = 60.0) -> None:
        from websockets.asyncio.client import connect

        self.ws = await connect(self.url, subprotocols=[f"ocpp{self.ocpp}"], ping_interval=None, open_timeout=open_timeout,
                                compression="deflate" if self.deflate else None, max_size=2**20)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        ws = self.ws
        try:
            async for raw in ws:
                now = time.monotonic()
                try:
                    msg = json.loads(raw)
                    kind = msg[0]
                except (ValueError, IndexError, KeyError, TypeError):
                    self.stats.error_samples.append(f"{self.id}: unparseable frame {str(raw)[:80]}")
                    continue
                if kind in (3, 4):
                    fut = self._pending.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result((kind, now, msg))
                elif kind == 2:
                    uid, action, payload = msg[1], msg[2], msg[3]
                    if action == "SetChargingProfile":
                        self.stats.profiles += 1
                        if self.on_profile is not None:
                            self.on_profile(now, payload)
                        profile = payload.get("csChargingProfiles") or payload.get("chargingProfile") or {}
                        schedule = profile.get("chargingSchedule")
                        self._schedule = schedule[0] if isinstance(schedule, list) and schedule else schedule
                    else:
                        self.stats.other_calls += 1
                    answer = self._answer(action, payload)
                    frame = [3, uid, answer] if answer is not None else [4, uid, "NotSupported", f"{action}: not in the bench charger", {}]
                    await ws.send(json.dumps(frame, separators=(",", ":")))
        except ConnectionClosed:
            pass
        finally:
            if not self.closed:
                self.stats.disconnects += 1
            self.closed = True
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_result((0, time.monotonic(), None))
            self._pending.clear()

    def _answer(self, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """A plausible smart-charging wallbox's CALLRESULT payload (None: answer NotSupported)."""
        if action == "SetChargingProfile":
            return {"status": "Accepted"}
        if self.ocpp == "2.0.1":
            return self._answer_201(action, payload)
        if action == "GetConfiguration":
            config = {
                "SupportedFeatureProfiles": "Core,SmartCharging,RemoteTrigger", "NumberOfConnectors": "1",
                "ChargeProfileMaxStackLevel": "8", "ChargingScheduleAllowedChargingRateUnit": "Current,Power",
                "ChargingScheduleMaxPeriods": "24", "MaxChargingProfilesInstalled": "8",
                "MeterValuesSampledData": "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage,SoC",
                "MeterValueSampleInterval": str(int(self.interval)), "ConnectorSwitch3to1PhaseSupported": "false",
            }
            wanted = payload.get("key") or list(config)
            known = [{"key": k, "readonly": False, "value": config[k]} for k in wanted if k in config]
            unknown = [k for k in wanted if k not in config]
            return {"configurationKey": known, **({"unknownKey": unknown} if unknown else {})}
        if action == "GetCompositeSchedule":
            if not self._schedule:
                return {"status": "Rejected"}
            schedule = {"chargingRateUnit": self._schedule.get("chargingRateUnit", "A"),
                        "chargingSchedulePeriod": self._schedule.get("chargingSchedulePeriod", []),
                        "duration": payload.get("duration", 300), "startSchedule": utc_iso()}
            return {"status": "Accepted", "connectorId": payload.get("connectorId", 0), "scheduleStart": utc_iso(),
                    "chargingSchedule": schedule}
        if action in ("ChangeConfiguration", "ClearChargingProfile", "RemoteStartTransaction", "RemoteStopTransaction",
                      "ChangeAvailability", "Reset", "TriggerMessage"):
            return {"status": "Accepted"}
        if action == "UnlockConnector":
            return {"status": "Unlocked"}
        return None

    def _answer_201(self, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        if action == "GetVariables":
            model = {("SmartChargingCtrlr", "Enabled"): "true", ("SmartChargingCtrlr", "RateUnit"): "A,W",
                     ("SmartChargingCtrlr", "ProfileStackLevel"): "8", ("SmartChargingCtrlr", "PeriodsPerSchedule"): "24",
                     ("SampledDataCtrlr", "TxUpdatedInterval"): str(int(self.interval)),
                     ("SampledDataCtrlr", "TxUpdatedMeasurands"): "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage,SoC",
                     ("EVSE", "SupplyPhases"): "3"}
            results = []
            for item in payload.get("getVariableData", []):
                value = model.get((item["component"]["name"], item["variable"]["name"]))
                results.append({"component": item["component"], "variable": item["variable"],
                                **({"attributeStatus": "Accepted", "attributeValue": value} if value is not None
                                   else {"attributeStatus": "UnknownVariable"})})
            return {"getVariableResult": results}
        if action == "GetCompositeSchedule":
            if not self._schedule:
                return {"status": "Rejected"}
            return {"status": "Accepted", "schedule": {
                "evseId": payload.get("evseId", 0), "duration": payload.get("duration", 300), "scheduleStart": utc_iso(),
                "chargingRateUnit": self._schedule.get("chargingRateUnit", "A"),
                "chargingSchedulePeriod": self._schedule.get("chargingSchedulePeriod", [])}}
        if action in ("ClearChargingProfile", "RequestStartTransaction", "RequestStopTransaction", "ChangeAvailability",
                      "Reset", "TriggerMessage"):
            return {"status": "Accepted"}
        if action == "UnlockConnector":
            return {"status": "Unlocked"}
        return None

    async def call(self, action: str, payload: dict[str, Any]) -> tuple[str, float]:
        """Send a CALL; return (outcome, round trip ms): outcome 'ok' | 'error' | 'timeout' | 'closed'."""
        from websockets.exceptions import ConnectionClosed

        if self.closed:
            return "closed", 0.0
        uid = str(next(self._ids))
        fut: asyncio.Future[tuple[int, float, Any]] = asyncio.get_running_loop().create_future()
        self._pending[uid] = fut
        frame = json.dumps([2, uid, action, payload], separators=(",", ":"))
        t0 = time.monotonic()
        try:
            await self.ws.send(frame)
            kind, t1, msg = await asyncio.wait_for(fut, self.timeout)
        except asyncio.TimeoutError:
            self._pending.pop(uid, None)
            return "timeout", 0.0
        except ConnectionClosed:
            self._pending.pop(uid, None)
            return "closed", 0.0
        if kind == 3:
            return "ok", (t1 - t0) * 1000
        if kind == 4:
            if len(self.stats.error_samples) < 10:
                self.stats.error_samples.append(f"{self.id}: {action} -> {msg[2:4]}")
            return "error", (t1 - t0) * 1000
        return "closed", 0.0

    async def boot(self) -> bool:
        if self.ocpp == "2.0.1":
            return await self._boot_201()
        outcome, rtt = await self.call("BootNotification", {
            "chargePointVendor": "Bench", "chargePointModel": "Fleet-22", "firmwareVersion": "1.0", "chargePointSerialNumber": self.id[-25:]})
        if outcome != "ok":
            return False
        self.stats.boot_rtt_ms.append(rtt)
        outcome, _ = await self.call("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging"})
        return outcome == "ok"

    async def _boot_201(self) -> bool:
        outcome, rtt = await self.call("BootNotification", {"reason": "PowerUp", "chargingStation": {
            "vendorName": "Bench", "model": "Fleet-22", "firmwareVersion": "1.0", "serialNumber": self.id[-25:]}})
        if outcome != "ok":
            return False
        self.stats.boot_rtt_ms.append(rtt)
        outcome, _ = await self.call("StatusNotification", {"timestamp": utc_iso(), "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1})
        if outcome != "ok":
            return False
        self.seq_no += 1
        started = transaction_event_payload(self.next_meter_payload(0.0), f"tx-{self.id}"[-36:], self.seq_no)
        started.update(eventType="Started", triggerReason="CablePluggedIn", idToken={"idToken": "BENCH", "type": "Central"})
        outcome, _ = await self.call("TransactionEvent", started)
        return outcome == "ok"

    def next_message(self, interval: float) -> tuple[str, dict[str, Any]]:
        """The periodic reading: MeterValues (1.6) or TransactionEvent(Updated) with the same values (2.0.1)."""
        payload = self.next_meter_payload(interval)
        if self.ocpp == "2.0.1":
            self.seq_no += 1
            return "TransactionEvent", transaction_event_payload(payload, f"tx-{self.id}"[-36:], self.seq_no)
        return "MeterValues", payload

    def next_meter_payload(self, interval: float) -> dict[str, Any]:
        amps = random.uniform(6, 32)
        currents = (amps, amps * random.uniform(0.97, 1.0), amps * random.uniform(0.97, 1.0))
        voltages = (random.uniform(225, 235), random.uniform(225, 235), random.uniform(225, 235))
        power = sum(c * v for c, v in zip(currents, voltages))
        self.energy += power * max(interval, 0.1) / 3600
        self.soc = min(100.0, self.soc + 0.01)
        return meter_values_payload(self.energy, power, currents, voltages, self.soc)

    async def meter_loop(self, start: float, end: float, interval: float, flags: dict[str, bool]) -> None:
        """MeterValues every ``interval`` s (0: back to back) from a random phase, until ``end`` or flags['stop']."""
        stats = self.stats
        due = start + (random.uniform(0, interval) if interval > 0 else 0.0)
        while not flags["stop"] and not self.closed:
            now = time.monotonic()
            if due >= end:
                break
            if due > now:
                await asyncio.sleep(due - now)
                if flags["stop"]:
                    break
            elif interval > 0 and now - due > interval / 2:
                stats.late_ticks += 1
            stats.sent += 1
            outcome, rtt = await self.call(*self.next_message(interval))
            if outcome == "ok":
                stats.ok += 1
                stats.rtt_ms.append(rtt)
            elif outcome == "error":
                stats.call_errors += 1
            elif outcome == "timeout":
                stats.timeouts += 1
            else:
                stats.send_failed += 1
            due = due + interval if interval > 0 else time.monotonic()
            if interval > 0 and time.monotonic() - due > interval:
                due = time.monotonic()  # do not burst to catch up: late ticks are counted, no backlog is sent

    async def close(self) -> None:
        self.closed = True
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.ws.close(), 5)
            except Exception:
                pass
        if self._reader is not None:
            self._reader.cancel()


async def connect_many(ids: list[str], url: str, stats: FleetStats, concurrency: int = 50, boot: bool = True,
                       timeout: float = 30.0, deflate: bool = False, interval: float = 10.0, ocpp: str = "1.6") -> list[FakeCharger]:
    """Connect (and boot) chargers with at most ``concurrency`` handshakes in flight."""
    gate = asyncio.Semaphore(concurrency)
    chargers: list[FakeCharger] = []

    async def one(cid: str) -> None:
        charger = FakeCharger(cid, url, stats, timeout=timeout, deflate=deflate, interval=interval, ocpp=ocpp)
        async with gate:
            try:
                await charger.connect()
            except Exception as err:  # noqa: BLE001 - counted and sampled
                stats.connect_failed += 1
                if len(stats.error_samples) < 10:
                    stats.error_samples.append(f"{cid}: connect failed: {type(err).__name__}: {err}")
                return
            stats.connected += 1
            if boot:
                if await charger.boot():
                    stats.booted += 1
        chargers.append(charger)

    await asyncio.gather(*(one(cid) for cid in ids))
    return chargers


# ---------------------------------------------------------------------------------------------
# the fleet in worker processes


@dataclass
class FleetSpec:
    url: str
    count: int
    interval: float = 1.0  # seconds between MeterValues per charger; 0 = back to back (saturation)
    duration: float = 30.0  # cap on the MeterValues phase, seconds
    workers: int = 0  # 0 = auto
    prefix: str = "cp"
    concurrency: int = 50  # handshakes in flight per worker
    timeout: float = 30.0  # seconds to wait for a CALLRESULT
    deflate: bool = False  # offer permessage-deflate (most real chargers do not)
    ocpp: str = "1.6"  # "2.0.1": stations that report in TransactionEvent(Updated)
    cpus: tuple[int, ...] | None = None  # pin the generator's processes to these CPUs (throughput.py --pin)

    def worker_count(self) -> int:
        if self.workers > 0:
            return min(self.workers, max(1, self.count))
        return 1 if self.count <= 200 else 2


def _worker_entry(index: int, ids: list[str], spec: FleetSpec, out: Any, go: Any, start_at: Any, stop: Any, release: Any) -> None:
    raise_nofile(len(ids) + 200)
    if spec.cpus:
        os.sched_setaffinity(0, spec.cpus)
    try:
        asyncio.run(_worker(index, ids, spec, out, go, start_at, stop, release))
    except KeyboardInterrupt:
        pass


async def _worker(index: int, ids: list[str], spec: FleetSpec, out: Any, go: Any, start_at: Any, stop: Any, release: Any) -> None:
    stats = FleetStats()
    t0 = time.monotonic()
    chargers = await connect_many(ids, spec.url, stats, spec.concurrency, timeout=spec.timeout, deflate=spec.deflate,
                                  interval=spec.interval, ocpp=spec.ocpp)
    stats.connect_seconds = time.monotonic() - t0
    # The fleet's connections live until the end: out of the collector's sight, so a full collection in
    # the generator (0.5 s and more with 5,000 chargers per worker) does not show up as the service's round trip.
    gc.freeze()
    out.put(("ready", index, stats.connected, stats.booted, stats.connect_failed, stats.connect_seconds))

    while not await asyncio.to_thread(go.wait, 0.5):
        if release.is_set():
            break
    flags = {"stop": False}
    if go.is_set():
        start = start_at.value
        end = start + spec.duration

        async def watch_stop() -> None:
            while not flags["stop"]:
                if stop.is_set():
                    flags["stop"] = True
                    return
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch_stop())
        delay = start - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        cpu0 = time.process_time()
        w0 = time.monotonic()
        await asyncio.gather(*(c.meter_loop(start, end, spec.interval, flags) for c in chargers))
        stats.window = time.monotonic() - w0
        stats.worker_cpu = time.process_time() - cpu0
        flags["stop"] = True
        watcher.cancel()
    out.put(("result", index, stats))
    await asyncio.to_thread(release.wait)
    await asyncio.gather(*(c.close() for c in chargers), return_exceptions=True)
    out.put(("closed", index))


class Fleet:
    """Chargers in worker processes. Call start(), wait_ready(), go(), then results(), release()."""

    def __init__(self, spec: FleetSpec) -> None:
        self.spec = spec
        self.ctx = mp.get_context("spawn")
        self.out = self.ctx.Queue()
        self.go_event = self.ctx.Event()
        self.stop_event = self.ctx.Event()
        self.release_event = self.ctx.Event()
        self.start_at = self.ctx.Value("d", 0.0)
        self.processes: list[Any] = []
        self.ready_info: list[tuple[Any, ...]] = []
        self.ramp_seconds = 0.0
        self.go_time = 0.0

    def start(self) -> None:
        n = self.spec.worker_count()
        ids = [f"{self.spec.prefix}{i:05d}" for i in range(self.spec.count)]
        self._t0 = time.monotonic()
        for w in range(n):
            chunk = ids[w::n]
            p = self.ctx.Process(target=_worker_entry, name=f"fleet-{w}",
                                 args=(w, chunk, self.spec, self.out, self.go_event, self.start_at, self.stop_event, self.release_event),
                                 daemon=True)
            p.start()
            self.processes.append(p)

    def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while len(self.ready_info) < len(self.processes):
            try:
                msg = self.out.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue_module.Empty:
                raise RuntimeError(f"fleet not connected within {timeout}s ({len(self.ready_info)}/{len(self.processes)} workers ready)") from None
            if msg[0] == "ready":
                self.ready_info.append(msg)
        self.ramp_seconds = time.monotonic() - self._t0
        return {
            "connected": sum(m[2] for m in self.ready_info),
            "booted": sum(m[3] for m in self.ready_info),
            "connect_failed": sum(m[4] for m in self.ready_info),
            "ramp_seconds": self.ramp_seconds,
            "slowest_worker_connect_seconds": max(m[5] for m in self.ready_info),
        }

    def go(self, delay: float = 0.3) -> float:
        """Start the MeterValues phase ``delay`` s from now; return that monotonic start time."""
        self.go_time = time.monotonic() + delay
        self.start_at.value = self.go_time
        self.go_event.set()
        return self.go_time

    def stop(self) -> None:
        self.stop_event.set()

    def results(self, timeout: float = 120.0) -> FleetStats:
        merged = FleetStats()
        got = 0
        deadline = time.monotonic() + timeout
        while got < len(self.processes):
            try:
                msg = self.out.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue_module.Empty:
                raise RuntimeError(f"fleet results missing after {timeout}s ({got}/{len(self.processes)})") from None
            if msg[0] == "result":
                merged.merge(msg[2])
                got += 1
        return merged

    def release(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        self.go_event.set()  # in case go() was never called
        self.release_event.set()
        deadline = time.monotonic() + timeout
        for p in self.processes:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()
                p.join(5)


# ---------------------------------------------------------------------------------------------
# profiles


def summarize_pyspy_raw(path: Path, top: int = 15) -> str:
    """Own and cumulative time per function from py-spy ``--format raw`` (collapsed stacks)."""
    own: collections.Counter[str] = collections.Counter()
    cum: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        parts = stack.split(";")
        thread = next((f for f in parts if f.startswith("thread ")), None)
        if thread is not None:
            threads[thread] += count
        frames = [_frame_name(f) for f in parts if f and not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        own[frames[-1]] += count
        for name in set(frames):
            cum[name] += count
    if not total:
        return "no samples"
    lines = [f"{total} samples", "samples per thread: " + ", ".join(f"{t} {100 * c / total:.0f}%" for t, c in threads.most_common()),
             "", f"top {top} by own time:"]
    lines += [f"  {100 * c / total:5.1f}%  {name}" for name, c in own.most_common(top)]
    lines += ["", f"top {top} by cumulative time (event loop, runner and thread frames left out):"]
    lines += [f"  {100 * c / total:5.1f}%  {name}" for name, c in
              [(n, c) for n, c in cum.most_common() if not _is_plumbing(n)][:top]]
    return "\n".join(lines)


_PLUMBING = ("(asyncio/", "(<frozen", "(threading.py", "(ocpp_addon/__main__.py", "(ocpp_addon/app.py", "(asyncio/runners.py",
             "(asyncio/server.py", "(mqtt/client.py)")


def _is_plumbing(name: str) -> bool:
    """Frames that contain everything (event loop, runners); paho's loop_forever is kept by its callees."""
    if name.startswith(("_run_module_as_main ", "_run_code ", "loop_forever ", "_thread_main ")):
        return True
    return any(p in name for p in _PLUMBING[:6]) or name.startswith(("Handle._run", "protocol_handler", "serve.<locals>"))


def _frame_name(frame: str) -> str:
    """'func (path/to/file.py:123)' -> 'func (file.py)' (lines merged per function)."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else file
    return f"{name} ({short})"


def summarize_cprofile(path: Path, top: int = 15) -> str:
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    out.write("== by own time (tottime) ==\n")
    stats.sort_stats("tottime").print_stats(top)
    out.write("== by cumulative time, service and library code only ==\n")
    stats.sort_stats("cumulative").print_stats(r"ocpp_addon/(?!__main__|app\.py)|websockets/|/ocpp/|paho/|json/", top)
    text = out.getvalue()
    return "\n".join(line for line in text.splitlines() if line.strip())


def pyspy_binary() -> str | None:
    """py-spy on PATH, or installed into the venv running this script (``pip install py-spy``)."""
    beside = str(Path(sys.executable).with_name("py-spy"))
    return shutil.which("py-spy") or next((p for p in (beside, "/tmp/pyspy/bin/py-spy") if os.path.exists(p)), None)


def start_pyspy(pid: int, duration: float, out: Path, rate: int = 100, idle: bool = False) -> subprocess.Popen[bytes] | None:
    """py-spy record on a running process (raw collapsed stacks); ``idle`` also samples waiting threads."""
    binary = pyspy_binary()
    if binary is None:
        return None
    cmd = [binary, "record", "--pid", str(pid), "--duration", str(max(1, int(duration))), "--rate", str(rate),
           "--format", "raw", "--nonblocking", "--threads", "-o", str(out)]
    if idle:
        cmd.append("--idle")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"ocpp-bench-{prefix}-"))
