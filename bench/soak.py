"""Soak: many chargers for a long time while the broker restarts and chargers drop; is anything lost?

Starts mosquitto (with persistence, like the Mosquitto add-on) and the service as a child
process (``python -m ocpp_addon``), then for ``--minutes``:

* ``--chargers`` simulated chargers (``ocpp_addon.simulator``) send MeterValues every
  ``--meter-interval`` s;
* a Home-Assistant-like MQTT client publishes a new setpoint (QoS 1, an integer 6..32 A
  different from the previous one) to a random charger every ``1 / --setpoint-rate`` s;
* every ``--restart-every`` s the broker is stopped and started again;
* chargers drop at random, on average once per ``--drop-every`` s each, in three ways:
  ``reset`` (TCP reset, redial after 1-10 s, the charger keeps its profile), ``silent``
  (power cut without FIN: nothing for ``--silent-for`` s, found by the service's WebSocket
  pings, then a new connection) and ``reboot`` (clean close, redial, BootNotification,
  its charging profiles are gone).

Then drops and restarts stop, everything reconnects, and it waits up to ``--settle`` s
for every charger to run on the last setpoint published for it. It prints:

* setpoints published (acknowledged by the broker) vs delivered to the charger (a
  SetChargingProfile with that value after it was published), superseded (a newer one
  for the same charger came first) and lost: lost must be 0;
* chargers whose final limit is the last one published, per kind of their last drop:
  must be all of them;
* service MQTT outages (from its "reconnected ... after" lines) against broker downtime;
* charger redial-to-booted times; how long silent drops took to show offline;
* service RSS at start (fleet connected) and end, and its warning/error line counts.

Not a test: a script that prints figures. 127.0.0.1 only.

    python bench/soak.py                 # 3 minutes, broker restarted every minute
    python bench/soak.py --minutes 30    # the full run: restarts every 5 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import websockets
import yaml
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import REPO, ServiceProcess, free_port, git_revision, machine_description, pct_summary, proc_status, raise_nofile  # noqa: E402

from ocpp_addon.broker import EmbeddedBroker, find_mosquitto  # noqa: E402
from ocpp_addon.simulator import SimOptions, SimulatedCharger  # noqa: E402

HOST = "127.0.0.1"
DROP_KINDS = ("reset", "silent", "reboot")


def _now() -> float:
    return time.monotonic()


class SoakSim(SimulatedCharger):
    """A simulated charger that timestamps every SetChargingProfile it is sent."""

    owner: "Charger"

    async def route_message(self, raw_msg: str) -> None:
        try:
            msg = json.loads(raw_msg)
        except ValueError:
            msg = None
        if isinstance(msg, list) and len(msg) == 4 and msg[0] == 2 and msg[2] == "SetChargingProfile":
            try:
                schedule = msg[3]["csChargingProfiles"]["chargingSchedule"]
                limit = float(schedule["chargingSchedulePeriod"][0]["limit"])
                if schedule.get("chargingRateUnit") == "W":
                    limit /= self.options.voltage * self.options.phases
                self.owner.arrivals.append((_now(), round(limit, 1)))
            except (KeyError, IndexError, TypeError, ValueError):
                pass
        await super().route_message(raw_msg)


@dataclass
class Charger:
    """One charge point across all its connections."""

    id: str
    url: str
    limit_amps: float | None = None  # copied into the next connection after a network drop, not after a reboot
    transaction_id: int | None = None
    arrivals: list[tuple[float, float]] = field(default_factory=list)
    sim: SoakSim | None = None
    drops: dict[str, int] = field(default_factory=lambda: {k: 0 for k in DROP_KINDS})
    last_drop: str = "none"
    redial_seconds: list[float] = field(default_factory=list)
    silent_drops: list[float] = field(default_factory=list)
    drop_log: list[tuple[float, str]] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def dial(self, kind: str, meter_interval: float) -> None:
        """Connect until it works (like a real charger); ``kind`` is how the last connection ended."""
        delay = 1.0
        started = _now()
        while True:
            reboot = kind in ("reboot", "first")
            options = SimOptions(meter_interval=meter_interval, send_boot=reboot, start_transaction=reboot)
            try:
                ws = await websockets.connect(f"{self.url}/{self.id}", subprotocols=["ocpp1.6"], open_timeout=20)
            except (OSError, websockets.InvalidHandshake, asyncio.TimeoutError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)
                continue
            sim = SoakSim(self.id, ws, options)
            sim.owner = self
            if not reboot:  # the same charger after a network outage: profile and session kept
                self.remember()  # now, not at the drop: the old socket may have delivered a profile since
                sim.limit_amps, sim.transaction_id = self.limit_amps, self.transaction_id
            self.sim = sim
            task = asyncio.create_task(sim.run())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a call cut off by a drop times out: expected
            try:
                await asyncio.wait_for(sim.booted.wait(), 60)
            except asyncio.TimeoutError:
                ws.transport.abort()
                continue
            self.redial_seconds.append(_now() - started)
            self.connected.set()
            return

    def remember(self) -> None:
        if self.sim is not None:
            self.limit_amps, self.transaction_id = self.sim.limit_amps, self.sim.transaction_id

    async def drop(self, kind: str, silent_for: float, meter_interval: float) -> None:
        sim = self.sim
        assert sim is not None
        self.connected.clear()
        self.drops[kind] += 1
        self.last_drop = kind
        self.drop_log.append((_now(), kind))
        transport = sim._connection.transport
        if kind == "reset":
            transport.abort()
            await asyncio.sleep(random.uniform(1, 10))
        elif kind == "silent":
            for task in sim._tasks:
                task.cancel()
            transport.pause_reading()  # no pong, no FIN
            self.silent_drops.append(_now())
            await asyncio.sleep(silent_for)
            transport.abort()
        else:
            await sim._connection.close()
            await asyncio.sleep(random.uniform(1, 10))
        await self.dial(kind, meter_interval)

    async def close(self) -> None:
        if self.sim is not None:
            self.remember()
            try:
                await asyncio.wait_for(self.sim._connection.close(), 5)
            except (asyncio.TimeoutError, OSError):
                self.sim._connection.transport.abort()


class HomeAssistant:
    """Publishes setpoints like HA's number entity (QoS 1) and watches availability."""

    def __init__(self, port: int, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.published: dict[str, list[tuple[float, float]]] = {}
        self.offline_at: dict[str, list[float]] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"soak-ha-{free_port()}")
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = lambda c, *a: c.subscribe("ocpp/+/availability", 1)
        self.client.on_message = self._on_message
        self.client.connect(HOST, port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.payload == b"offline" and not msg.retain:
            cid = msg.topic.split("/")[1]
            at = _now()
            self.loop.call_soon_threadsafe(lambda: self.offline_at.setdefault(cid, []).append(at))

    async def publish(self, charger_id: str, value: float) -> bool:
        """True when the broker acknowledged it (QoS 1); False if HA is disconnected right now."""
        if not self.client.is_connected():
            return False
        at = _now()
        info = self.client.publish(f"ocpp/{charger_id}/charging_limit/set", f"{value:g}", qos=1)
        try:
            await asyncio.to_thread(info.wait_for_publish, 10)
        except (RuntimeError, ValueError):
            return False
        if not info.is_published():
            return False
        self.published.setdefault(charger_id, []).append((at, value))
        return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def writable_broker_home() -> Path:
    """mosquitto started as root drops to its own user: give it a directory it may write (persistence)."""
    home = Path(tempfile.mkdtemp(prefix="soak-broker-"))
    (home / "mosquitto").mkdir()
    for path in (home, home / "mosquitto"):
        path.chmod(0o777)
    return home


async def soak(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ocpp").setLevel(logging.CRITICAL)  # a dropped charger's pending call times out: expected here
    if find_mosquitto() is None:
        raise SystemExit("mosquitto is not installed: apt-get install -y mosquitto")
    raise_nofile(args.chargers * 4 + 256)
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    broker_home = writable_broker_home()
    broker = EmbeddedBroker(free_port(), broker_home)
    await broker.start()
    ocpp_port = free_port()
    config = {
        "log_level": "info",
        "data_dir": str(work / "data"),
        "ocpp": {"host": HOST, "port": ocpp_port, "ping_interval": args.ping_interval, "ping_timeout": args.ping_interval,
                 "response_timeout": 15, "max_connections": args.chargers * 2 + 50},
        "mqtt": {"host": HOST, "port": broker.port, "embedded_broker": False, "client_id": "soak-service", "keepalive": 10},
    }
    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log_path = work / "service.log"
    service = ServiceProcess([sys.executable, "-m", "ocpp_addon", "--config", str(config_path)], log_path, cwd=REPO)
    service.start()
    loop = asyncio.get_running_loop()
    ha = HomeAssistant(broker.port, loop)
    url = f"ws://{HOST}:{ocpp_port}"
    chargers = [Charger(f"soak-{n:03d}", url) for n in range(1, args.chargers + 1)]
    print(f"soak: {args.chargers} chargers, {args.minutes:g} min, broker restart every {args.restart_every:g} s, "
          f"a drop per charger every {args.drop_every:g} s on average; work dir {work}", flush=True)
    print(f"machine: {machine_description()}; revision {git_revision()}", flush=True)

    started = _now()
    sem = asyncio.Semaphore(50)  # do not dial 200 at once: a real fleet does not either

    async def first_dial(charger: Charger) -> None:
        async with sem:
            await charger.dial("first", args.meter_interval)

    await asyncio.wait_for(asyncio.gather(*(first_dial(c) for c in chargers)), 300)
    rss_start = proc_status(service.pid)["VmRSS"]
    print(f"fleet connected in {_now() - started:.1f} s; service RSS {rss_start / 1024:.1f} MiB", flush=True)

    stop = asyncio.Event()
    restarts: list[tuple[float, float]] = []  # (stopped at, started at)
    rss_samples: list[int] = [rss_start]

    async def restart_broker() -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), args.restart_every)
                return
            except asyncio.TimeoutError:
                pass
            down = _now()
            await broker.stop()
            await broker.start()
            restarts.append((down, _now()))
            print(f"  {_now() - started:6.0f} s: broker restarted (down {_now() - down:.2f} s)", flush=True)

    async def drops() -> None:
        running: set[asyncio.Task[None]] = set()
        rate = args.chargers / args.drop_every  # drops per second, whole fleet
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), random.expovariate(rate))
                break
            except asyncio.TimeoutError:
                pass
            candidates = [c for c in chargers if c.connected.is_set()]
            if not candidates:
                continue
            charger = random.choice(candidates)
            task = asyncio.create_task(charger.drop(random.choice(DROP_KINDS), args.silent_for, args.meter_interval))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.gather(*running, return_exceptions=True)

    async def setpoints() -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), random.expovariate(args.setpoint_rate))
                break
            except asyncio.TimeoutError:
                pass
            charger = random.choice(chargers)
            history = ha.published.get(charger.id)
            previous = history[-1][1] if history else None
            value = float(random.choice([v for v in range(6, 33) if v != previous]))
            await ha.publish(charger.id, value)

    async def memory() -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 30)
            except asyncio.TimeoutError:
                rss_samples.append(proc_status(service.pid)["VmRSS"])

    tasks = [asyncio.create_task(t) for t in (restart_broker(), drops(), setpoints(), memory())]
    try:
        await asyncio.wait_for(stop.wait(), args.minutes * 60)
    except asyncio.TimeoutError:
        pass
    stop.set()
    print(f"  {_now() - started:6.0f} s: stopping faults; waiting for every charger to reconnect and settle", flush=True)
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in chargers)), 300)

    def in_force(charger: Charger) -> bool:
        history = ha.published.get(charger.id)
        if not history:
            return True
        sim = charger.sim
        return sim is not None and sim.limit_amps is not None and abs(sim.limit_amps - history[-1][1]) < 0.05

    settle_deadline = _now() + args.settle
    while _now() < settle_deadline and not all(in_force(c) for c in chargers):
        await asyncio.sleep(1)
    rss_end = proc_status(service.pid)["VmRSS"]
    rss_samples.append(rss_end)

    # -- figures ----------------------------------------------------------------------------------------------
    published = delivered = superseded = lost = 0
    lost_examples: list[str] = []
    for charger in chargers:
        history = ha.published.get(charger.id, [])
        for index, (at, value) in enumerate(history):
            published += 1
            if any(t >= at and abs(v - value) < 0.05 for t, v in charger.arrivals):
                delivered += 1
            elif index + 1 < len(history):
                superseded += 1
            else:
                lost += 1
                lost_examples.append(f"{charger.id}={value:g} (last drop: {charger.last_drop})")
    final_ok = [c for c in chargers if in_force(c)]
    by_kind: dict[str, list[int]] = {}
    for charger in chargers:
        if charger.id in ha.published:
            entry = by_kind.setdefault(charger.last_drop, [0, 0])
            entry[1] += 1
            entry[0] += in_force(charger)
    drops_total = {k: sum(c.drops[k] for c in chargers) for k in DROP_KINDS}
    redials = [s for c in chargers for s in c.redial_seconds[1:]]
    log = log_path.read_text(encoding="utf-8", errors="replace")
    outages = [float(m) for m in re.findall(r"MQTT reconnected to \S+ after ([0-9.]+) s", log)]
    downtime = [b - a for a, b in restarts]
    detections = _silent_detections(chargers, ha)
    print()
    print(f"duration {(_now() - started) / 60:.1f} min; broker restarts {len(restarts)}; drops {sum(drops_total.values())} "
          f"({', '.join(f'{k} {v}' for k, v in drops_total.items())})")
    print(f"setpoints: published {published}, delivered {delivered}, superseded before delivery {superseded}, LOST {lost}"
          + (f"  e.g. {', '.join(lost_examples[:5])}" if lost_examples else ""))
    print(f"final limit in force at the charger: {len(final_ok)}/{len(chargers)}; by last drop: "
          + ", ".join(f"{k} {ok}/{n}" for k, (ok, n) in sorted(by_kind.items())))
    print(f"broker downtime per restart: {_fmt_s(pct_summary(downtime))}")
    print(f"service MQTT outage per restart (loss to reconnect, its log): {_fmt_s(pct_summary(outages))}")
    print(f"charger redial to booted: {_fmt_s(pct_summary(redials))}")
    print(f"silent drop to 'offline' (ping {args.ping_interval:g}+{args.ping_interval:g} s): {_fmt_s(pct_summary(detections))}")
    print(f"service RSS: start {rss_start / 1024:.1f} MiB, end {rss_end / 1024:.1f} MiB, max {max(rss_samples) / 1024:.1f} MiB "
          f"(samples every 30 s: {' '.join(f'{r / 1024:.0f}' for r in rss_samples)})")
    print(f"service log: {service.warnings} warning lines, {service.errors} error/traceback lines; {log_path}")
    for charger in [c for c in chargers if not in_force(c)][:10]:
        history = ha.published.get(charger.id, [])
        print(f"  not in force: {charger.id} last drop {charger.last_drop} ({', '.join(f'{k} {v}' for k, v in charger.drops.items())}); "
              f"charger has {charger.sim.limit_amps if charger.sim else None}; published (s): "
              + " ".join(f"{t - started:.0f}:{v:g}" for t, v in history[-4:])
              + "; received (s): " + " ".join(f"{t - started:.0f}:{v:g}" for t, v in charger.arrivals[-4:])
              + "; drops at (s): " + " ".join(f"{t - started:.0f}:{k}" for t, k in charger.drop_log[-4:]))

    ha.close()
    await asyncio.gather(*(c.close() for c in chargers), return_exceptions=True)
    code = service.stop()
    await broker.stop()
    shutil.rmtree(broker_home, ignore_errors=True)
    print(f"service exit code {code}")
    return 0 if lost == 0 and len(final_ok) == len(chargers) else 1


def _silent_detections(chargers: list[Charger], ha: HomeAssistant) -> list[float]:
    """Seconds from each silent drop to the first 'offline' published for that charger after it."""
    out: list[float] = []
    for charger in chargers:
        for since in charger.silent_drops:
            later = [t - since for t in ha.offline_at.get(charger.id, []) if t >= since]
            if later:
                out.append(min(later))
    return out


def _fmt_s(summary: dict[str, Any]) -> str:
    if not summary.get("n"):
        return "n=0"
    return "n={n} p50={p50:.2f} p90={p90:.2f} max={max:.2f} s".format(**summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/soak.py", description=__doc__.splitlines()[0])
    parser.add_argument("--chargers", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--restart-every", type=float, default=None, help="seconds between broker restarts (default: 300, 60 for runs under 10 min)")
    parser.add_argument("--drop-every", type=float, default=300.0, help="mean seconds between drops of one charger")
    parser.add_argument("--silent-for", type=float, default=45.0, help="seconds a silently dropped charger stays silent")
    parser.add_argument("--setpoint-rate", type=float, default=3.0, help="setpoints per second, whole fleet")
    parser.add_argument("--meter-interval", type=float, default=30.0)
    parser.add_argument("--ping-interval", type=float, default=10.0, help="the service's ping_interval and ping_timeout")
    parser.add_argument("--settle", type=float, default=120.0, help="seconds to wait at the end for the last setpoints")
    args = parser.parse_args(argv)
    if args.restart_every is None:
        args.restart_every = 60.0 if args.minutes < 10 else 300.0
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
