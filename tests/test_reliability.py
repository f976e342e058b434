"""Nothing lost under faults: restart the broker, Home Assistant, a charger or the service
itself at any time; setpoints still arrive, no entity stays stale, no state gets crossed."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import yaml
from ocpp.v16 import call

from ocpp_addon.broker import EmbeddedBroker
from ocpp_addon.hub import DISCONNECTED, READY
from ocpp_addon.mqtt_bridge import RECONNECT_MAX_DELAY
from ocpp_addon.simulator import SimOptions, SimulatedCharger, connect

from .conftest import TIMEOUT, MqttProbe, Service, free_port, make_config

DISCOVERY = "homeassistant/device/wallbox-1/config"
STATE = "ocpp/wallbox-1/state"
AVAILABILITY = "ocpp/wallbox-1/availability"
LIMIT_SET = "ocpp/wallbox-1/charging_limit/set"
BRIDGE = "ocpp/bridge/state"
SLOW = 30.0  # reconnects with backoff on a loaded 2-core machine


def _limit(payload: dict) -> float:
    return payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"]


@pytest.fixture
async def fresh_probe(broker: EmbeddedBroker) -> AsyncIterator[Any]:
    """Probes made after a broker (re)start; closed at the end."""
    made: list[MqttProbe] = []

    async def make() -> MqttProbe:
        probe = MqttProbe(broker.port, asyncio.get_running_loop())
        await probe.subscribe("#")
        made.append(probe)
        return probe

    yield make
    for probe in made:
        probe.close()


@pytest.fixture
async def persistent_broker() -> AsyncIterator[EmbeddedBroker]:
    """A mosquitto that really persists sessions and retained messages across restarts, like the
    Mosquitto add-on. (Run as root, mosquitto drops to its own user, which cannot write into
    pytest's private tmp_path, so it gets a directory it may write to.)"""
    home = Path(tempfile.mkdtemp(prefix="ocpp-broker-"))
    (home / "mosquitto").mkdir()
    for path in (home, home / "mosquitto"):
        path.chmod(0o777)
    server = EmbeddedBroker(free_port(), home)
    await server.start()
    yield server
    await server.stop()
    shutil.rmtree(home, ignore_errors=True)


async def wait_until(predicate: Any, timeout: float = TIMEOUT, what: str = "condition") -> None:
    """Poll a condition that has no event of its own (a file on disk, a socket slot)."""
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"{what} not reached within {timeout}s") from None


# -- the broker ------------------------------------------------------------------------------------------------


async def test_broker_down_at_start(broker: EmbeddedBroker, fresh_probe: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    await broker.stop()
    service = Service(make_config(broker.port, tmp_path))
    await service.app.start()  # does not wait for MQTT
    try:
        # the OCPP side serves chargers without a broker: boot accepted, readings kept as latest state
        sim = await service.charger("wallbox-1", vendor="ACME")
        await sim.send_meter_values()
        energy = service.app.hub.states["wallbox-1"].readings["energy"]
        assert not service.app.mqtt.connected.is_set()
        loop = asyncio.get_running_loop()
        await broker.start()
        up_at = loop.time()
        probe = await fresh_probe()
        await asyncio.wait_for(service.app.mqtt.connected.wait(), SLOW)
        assert loop.time() - up_at <= RECONNECT_MAX_DELAY + 5  # the backoff is capped
        # once connected: discovery and the current state of every charger
        await probe.wait_for(BRIDGE, lambda p: p == b"online", timeout=SLOW)
        await probe.wait_json(DISCOVERY, lambda d: d["device"].get("manufacturer") == "ACME")
        await probe.wait_for(AVAILABILITY, lambda p: p == b"online")
        await probe.wait_json(STATE, lambda d: d["energy"] == energy and d["connected"] is True)
        await probe.wait_json("ocpp/bridge/info", lambda d: d["connected_chargers"] == 1)
        probe.publish(LIMIT_SET, "13")
        assert _limit(await sim.wait_for_call("SetChargingProfile", lambda p: _limit(p) == 13)) == 13
        unreachable = [r for r in caplog.records if "not reachable" in r.getMessage()]
        assert len(unreachable) == 1  # retried several times, said once
    finally:
        await service.stop()


async def test_broker_restart_setpoint_published_right_after_it_returns(persistent_broker: EmbeddedBroker, tmp_path: Path) -> None:
    broker = persistent_broker
    service = Service(make_config(broker.port, tmp_path))
    await service.start()
    probes: list[MqttProbe] = []
    try:
        sim = await service.charger("wallbox-1")
        await broker.stop()
        assert (broker.dir / "mosquitto.db").exists()  # our session and subscriptions went to disk
        await broker.start()
        after = MqttProbe(broker.port, asyncio.get_running_loop())
        probes.append(after)
        await after.subscribe("#")
        after.publish(LIMIT_SET, "11")  # at once: we may well not be reconnected yet
        assert _limit(await sim.wait_for_call("SetChargingProfile", lambda p: _limit(p) == 11, timeout=SLOW)) == 11
        await after.wait_json(STATE, lambda d: d["charging_limit"] == 11, timeout=SLOW)
        await after.wait_for(BRIDGE, lambda p: p == b"online")
        await after.wait_for(AVAILABILITY, lambda p: p == b"online")
    finally:
        for probe in probes:
            probe.close()
        await service.stop()


async def test_broker_restart_that_lost_everything_gets_it_all_back(service: Service, broker: EmbeddedBroker,
                                                                    probe: MqttProbe, fresh_probe: Any) -> None:
    sim = await service.charger("wallbox-1", vendor="ACME")
    await sim.send_meter_values()
    await probe.wait_json(STATE, lambda d: d["energy"] is not None)
    await broker.stop()
    for stored in broker.dir.glob("*.db"):
        stored.unlink()  # no retained messages, no sessions: a broker without persistence
    await broker.start()
    after = await fresh_probe()
    # only we can bring these back
    await after.wait_for(BRIDGE, lambda p: p == b"online", timeout=SLOW)
    await after.wait_json(DISCOVERY, lambda d: d["device"].get("manufacturer") == "ACME")
    await after.wait_for(AVAILABILITY, lambda p: p == b"online")
    await after.wait_json(STATE, lambda d: d["energy"] is not None and d["status"] == "Charging")
    await after.wait_for("homeassistant/device/ocpp_bridge/config")
    # and only our re-subscription can route this: the broker forgot our session
    after.publish(LIMIT_SET, "12")
    assert _limit(await sim.wait_for_call("SetChargingProfile", lambda p: _limit(p) == 12, timeout=SLOW)) == 12


async def test_setpoint_published_while_we_are_away_is_delivered_on_return(broker: EmbeddedBroker, probe: MqttProbe,
                                                                           tmp_path: Path) -> None:
    first = Service(make_config(broker.port, tmp_path, mqtt={"client_id": "persistent-1"}))
    await first.start()
    sim = await first.charger("wallbox-1")
    await probe.wait_for(AVAILABILITY, lambda p: p == b"online")
    await sim._connection.close()
    await first.stop()
    probe.publish(LIMIT_SET, "9")  # QoS 1, nobody subscribed right now: the broker queues it for our session
    second = Service(make_config(broker.port, tmp_path, mqtt={"client_id": "persistent-1"}, data_dir=first.config["data_dir"]))
    await second.start()
    try:
        again = await second.charger("wallbox-1")
        assert _limit(await again.wait_for_call("SetChargingProfile", lambda p: _limit(p) == 9)) == 9
        await probe.wait_json(STATE, lambda d: d["charging_limit"] == 9)
    finally:
        await second.stop()


# -- Home Assistant ----------------------------------------------------------------------------------------------


async def _settled(service: Service, probe: MqttProbe, charger_ids: list[str]) -> None:
    """Let the chargers' own start-up (capability discovery, read-backs) finish and reach the broker."""
    for cid in charger_ids:
        configured = getattr(service.app.hub.connected[cid], "configured", None)
        if configured is not None:
            await asyncio.wait_for(configured.wait(), TIMEOUT)
    mark = probe.mark()
    probe.publish("ocpp/nobody/charging_limit/set", "1")
    await probe.wait_for("ocpp/nobody/event", since=mark)


async def test_home_assistant_restart_republishes_everything_once(service: Service, probe: MqttProbe) -> None:
    await service.charger("cp-a")
    await service.charger("cp-b")
    for cid in ("cp-a", "cp-b"):
        await probe.wait_for(f"homeassistant/device/{cid}/config")
    await _settled(service, probe, ["cp-a", "cp-b"])
    mark = probe.mark()
    probe.publish("homeassistant/status", "offline")  # HA going down: nothing to do
    probe.publish("homeassistant/status", "online")
    topics = ["homeassistant/device/cp-a/config", "homeassistant/device/cp-b/config", "homeassistant/device/ocpp_bridge/config",
              "ocpp/cp-a/state", "ocpp/cp-b/state", "ocpp/cp-a/availability", "ocpp/cp-b/availability", "ocpp/bridge/info"]
    for topic in topics:
        await probe.wait_for(topic, since=mark)
    # barrier: our publishes arrive in order, so once this event is here the re-publish is complete
    probe.publish("ocpp/nobody/charging_limit/set", "10")
    await probe.wait_json("ocpp/nobody/event", since=mark)
    later = probe.messages[mark:]
    for topic in topics[:3]:
        assert sum(1 for t, _, _ in later if t == topic) == 1, topic  # once, not once per event
    assert all(p == b"online" for t, p, _ in later if t.endswith("/availability"))
    latest: dict[str, dict] = {}
    for t, p, _ in probe.messages:
        if t.startswith("homeassistant/device/") and p:
            latest[t] = json.loads(p)
    unique_ids = [c["unique_id"] for d in latest.values() for c in d["components"].values()]
    assert len(unique_ids) == len(set(unique_ids))


# -- a charger ---------------------------------------------------------------------------------------------------


async def test_silent_charger_is_found_by_ping_timeout(service_factory, probe: MqttProbe) -> None:
    service = await service_factory(ocpp={"ping_interval": 0.5, "ping_timeout": 0.5})
    sim = await service.charger("wallbox-1")
    await probe.wait_for(AVAILABILITY, lambda p: p == b"online")
    mark, since = probe.mark(), len(service.events)
    loop = asyncio.get_running_loop()
    gone_at = loop.time()
    sim._connection.transport.pause_reading()  # power cut: no close frame, no FIN, no pong
    await service.wait_event(DISCONNECTED, "wallbox-1", since=since)
    assert loop.time() - gone_at < 0.5 + 2 * 0.5 + 5  # ping_interval + 2 x ping_timeout, and the rest is slack
    await probe.wait_for(AVAILABILITY, lambda p: p == b"offline", since=mark)
    await probe.wait_json(STATE, lambda d: d["connected"] is False, since=mark)
    sim._connection.transport.abort()


async def test_tcp_reset_marks_the_charger_offline_and_it_resumes_on_reconnect(service_factory, probe: MqttProbe) -> None:
    service = await service_factory(ocpp={"ping_interval": 1, "ping_timeout": 1})
    sim = await service.charger("wallbox-1")
    probe.publish(LIMIT_SET, "14")
    await probe.wait_json(STATE, lambda d: d["charging_limit"] == 14)
    transaction = service.app.hub.states["wallbox-1"].main_connector.transaction_id
    mark, since = probe.mark(), len(service.events)
    sim._connection.transport.abort()  # TCP reset, no close frame
    await service.wait_event(DISCONNECTED, "wallbox-1", since=since)
    await probe.wait_for(AVAILABILITY, lambda p: p == b"offline", since=mark)
    # it comes back without a new boot (a charger that just lost its network) and picks up where it was
    again, task = await connect(service.url, "wallbox-1", SimOptions(meter_interval=0, send_boot=False, start_transaction=False))
    service.chargers.append((again, task))
    await service.wait_event(READY, "wallbox-1", since=since)
    await probe.wait_for(AVAILABILITY, lambda p: p == b"online", since=mark)
    assert service.app.hub.states["wallbox-1"].main_connector.transaction_id == transaction
    probe.publish(LIMIT_SET, "15")
    assert _limit(await again.wait_for_call("SetChargingProfile", lambda p: _limit(p) == 15)) == 15


async def test_two_connections_with_one_id_newer_wins_without_crossed_state(service: Service, probe: MqttProbe) -> None:
    old = await service.charger("wallbox-1", vendor="OLD")
    await old.status(1, "Charging")
    mark, since = probe.mark(), len(service.events)
    old._connection.transport.pause_reading()  # it will not even see our close frame
    new = await service.charger("wallbox-1", vendor="NEW", start_transaction=False)
    # the old socket still talks: nothing it says may reach the charger's state any more
    await old._connection.send(json.dumps([2, "late-1", "StatusNotification", {"connectorId": 1, "errorCode": "GroundFailure", "status": "Faulted"}]))
    await old._connection.send(json.dumps([2, "late-2", "BootNotification", {"chargePointVendor": "OLD-AGAIN", "chargePointModel": "x"}]))
    old._connection.transport.resume_reading()
    await asyncio.wait_for(old._connection.wait_closed(), TIMEOUT)
    assert old._connection.close_code == 1001
    await new.call(call.Heartbeat())  # barriers: OCPP, then MQTT
    probe.publish("ocpp/nobody/charging_limit/set", "1")
    await probe.wait_for("ocpp/nobody/event", since=mark)
    state = service.app.hub.states["wallbox-1"]
    assert state.vendor == "NEW" and state.main_connector.status == "Available" and state.main_connector.error_code == "NoError"
    assert state.connected and service.app.hub.connected["wallbox-1"] is not None
    assert not [e for e in service.events[since:] if e.kind == DISCONNECTED]
    published = [json.loads(p) for t, p, _ in probe.messages[mark:] if t == STATE and p]
    assert not [d for d in published if d.get("status") == "Faulted" or d.get("error_code") == "GroundFailure"]
    assert probe.received(AVAILABILITY)[-1] == b"online"
    probe.publish(LIMIT_SET, "7")
    assert _limit(await new.wait_for_call("SetChargingProfile")) == 7
    assert old.calls("SetChargingProfile") == []


# -- our service -------------------------------------------------------------------------------------------------


class ServiceProcess:
    """``python -m ocpp_addon`` as a child process with a YAML config."""

    def __init__(self, config: dict, tmp_path: Path, name: str) -> None:
        self.config = config
        self.path = tmp_path / f"{name}.yaml"
        self.path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.cwd = tmp_path
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("CONNECTOR_NAME", "SUPERVISOR_TOKEN")}
        self.proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ocpp_addon", "--config", str(self.path),
                                                         stderr=asyncio.subprocess.PIPE, env=env, cwd=self.cwd)
        self._reader = asyncio.create_task(self._read())
        await self.wait_line("ready:")

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode())

    async def wait_line(self, marker: str) -> None:
        await wait_until(lambda: any(marker in line for line in self.lines) or (self.proc is not None and self.proc.returncode is not None),
                         TIMEOUT, f"log line {marker!r}")
        assert any(marker in line for line in self.lines), "".join(self.lines)

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), TIMEOUT)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, TIMEOUT)
        return code


async def _charger(url: str, charger_id: str, **options: Any) -> tuple[SimulatedCharger, asyncio.Task[None]]:
    options.setdefault("meter_interval", 0)
    sim, task = await connect(url, charger_id, SimOptions(**options))
    await asyncio.wait_for(sim.booted.wait(), TIMEOUT)
    return sim, task


async def _retained(port: int, topics: list[str]) -> dict[str, bytes]:
    """What a newcomer (Home Assistant starting now) would be told, retained, per topic."""
    probe = MqttProbe(port, asyncio.get_running_loop())
    try:
        await probe.subscribe("#")
        probe.publish("probe/barrier", "x")
        await probe.wait_for("probe/barrier")  # retained messages come before anything published after subscribing
        return {t: next((p for tt, p, r in probe.messages if tt == t and r), b"<none>") for t in topics}
    finally:
        probe.close()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
async def test_service_restart_keeps_retained_state_consistent_and_reapplies_setpoints(
        broker: EmbeddedBroker, probe: MqttProbe, tmp_path: Path, sig: int) -> None:
    port = free_port()
    config = {
        "data_dir": str(tmp_path / "data"),
        "ocpp": {"host": "127.0.0.1", "port": port, "boot_wait": 2, "response_timeout": 5},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "embedded_broker": False, "keepalive": 5, "client_id": "restart-me"},
        "charging": {"debounce": 0},
    }
    url = f"ws://127.0.0.1:{port}"
    service = ServiceProcess(config, tmp_path, "run1")
    await service.start()
    tasks: list[asyncio.Task[None]] = []
    try:
        a, task = await _charger(url, "cp-a")
        tasks.append(task)
        b, task = await _charger(url, "cp-b")
        tasks.append(task)
        probe.publish("ocpp/cp-a/charging_limit/set", "16")
        await probe.wait_json("ocpp/cp-a/state", lambda d: d["charging_limit"] == 16)
        await b._connection.close()
        await probe.wait_for("ocpp/cp-b/availability", lambda p: p == b"offline")
        probe.publish("ocpp/cp-b/charging_limit/set", "12")  # kept for an offline charger
        await probe.wait_json("ocpp/cp-b/event", lambda d: d["status"] == "Queued")
        state_file = Path(config["data_dir"]) / "state.json"

        def persisted() -> bool:
            try:
                chargers = json.loads(state_file.read_text())["chargers"]
            except (OSError, ValueError, KeyError):
                return False
            return chargers.get("cp-a", {}).get("charging_limit") == 16 and chargers.get("cp-b", {}).get("requested_limit") == 12

        await wait_until(persisted, what="setpoints written to state.json")
        mark = probe.mark()
        code = await service.stop(sig)
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        await probe.wait_for(BRIDGE, lambda p: p == b"offline", since=mark)  # clean 'offline', or the last will
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), TIMEOUT + 12)

        service = ServiceProcess(config, tmp_path, "run2")
        await service.start()
        await probe.wait_for(BRIDGE, lambda p: p == b"online", since=mark)
        # no stale 'online' for chargers that are not connected, discovery and last state still there
        await probe.wait_for("ocpp/cp-a/availability", lambda p: p == b"offline", since=mark)
        retained = await _retained(broker.port, ["ocpp/cp-a/availability", "ocpp/cp-b/availability", "ocpp/cp-a/state",
                                                 "homeassistant/device/cp-a/config", "homeassistant/device/cp-b/config"])
        assert retained["ocpp/cp-a/availability"] == b"offline" and retained["ocpp/cp-b/availability"] == b"offline"
        assert json.loads(retained["ocpp/cp-a/state"])["charging_limit"] == 16
        assert json.loads(retained["homeassistant/device/cp-b/config"])["device"]["identifiers"] == ["ocpp_cp-b"]

        # the setpoint kept for cp-b is sent when it comes back
        b2, task = await _charger(url, "cp-b")
        tasks.append(task)
        assert _limit(await b2.wait_for_call("SetChargingProfile", lambda p: _limit(p) == 12, timeout=SLOW)) == 12
        await probe.wait_json("ocpp/cp-b/state", lambda d: d["charging_limit"] == 12, since=mark)
        await probe.wait_for("ocpp/cp-b/availability", lambda p: p == b"online", since=mark)
        mark = probe.mark()
        assert await service.stop(signal.SIGTERM) == 0
        await probe.wait_for("ocpp/cp-b/availability", lambda p: p == b"offline", since=mark)
    finally:
        if service.proc is not None and service.proc.returncode is None:
            service.proc.kill()
            await service.proc.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_charger_that_lost_its_profile_gets_the_limit_again(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    probe.publish(LIMIT_SET, "16")
    await probe.wait_json(STATE, lambda d: d["charging_limit"] == 16)
    since = len(service.events)
    await sim._connection.close()
    await service.wait_event(DISCONNECTED, "wallbox-1", since=since)
    rebooted = await service.charger("wallbox-1")  # a power cycle: its charging profiles are gone
    assert _limit(await rebooted.wait_for_call("SetChargingProfile", timeout=TIMEOUT)) == 16
    await service.wait_event(READY, "wallbox-1", since=since)
    assert rebooted.limit_amps == 16


class SubackGate:
    """A TCP relay in front of the real mosquitto that holds the broker's SUBACKs until released:
    the window in which a command published after CONNACK is dropped, made as long as a test needs."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.held = asyncio.Event()  # a SUBACK arrived and is being held
        self.release = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.broker_port)

        async def upstream() -> None:
            while data := await client_r.read(65536):
                broker_w.write(data)
                await broker_w.drain()
            broker_w.close()

        async def downstream() -> None:
            while True:  # packet by packet: fixed header, remaining length (varint), body
                first = await broker_r.readexactly(1)
                length_bytes, length, shift = b"", 0, 0
                while True:
                    byte = await broker_r.readexactly(1)
                    length_bytes += byte
                    length |= (byte[0] & 0x7F) << shift
                    shift += 7
                    if not byte[0] & 0x80:
                        break
                body = await broker_r.readexactly(length)
                if first[0] >> 4 == 9:  # SUBACK
                    self.held.set()
                    await self.release.wait()
                client_w.write(first + length_bytes + body)
                await client_w.drain()

        try:
            await asyncio.gather(upstream(), downstream())
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            client_w.close()
            broker_w.close()

    async def stop(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.close()


async def test_ready_waits_until_the_broker_confirmed_our_subscriptions(broker: EmbeddedBroker, probe: MqttProbe, tmp_path: Path) -> None:
    """Between CONNACK and SUBACK the broker drops a command published to us: CI lost a setpoint that way
    on a loaded machine. 'Ready' (the OCPP port open, the ready line) now waits for the SUBACKs."""
    gate = SubackGate(broker.port)
    await gate.start()
    config = make_config(gate.port, tmp_path)
    service = Service(config)
    starting = asyncio.ensure_future(service.app.start())
    try:
        await asyncio.wait_for(gate.held.wait(), TIMEOUT)
        await asyncio.wait_for(service.app.mqtt.connected.wait(), TIMEOUT)
        assert not service.app.mqtt.subscribed.is_set()  # connected, but a command could still be dropped
        assert not starting.done()  # and so not ready: chargers are not let in yet
        gate.release.set()
        await asyncio.wait_for(starting, TIMEOUT)
        assert service.app.mqtt.subscribed.is_set()
        charger = await service.charger("wallbox-1")
        mark = probe.mark()
        probe.publish(LIMIT_SET, "10")
        await probe.wait_json("ocpp/wallbox-1/event", lambda d: d.get("status") == "Accepted", since=mark)
        assert _limit(await charger.wait_for_call("SetChargingProfile", lambda p: _limit(p) == 10)) == 10
    finally:
        await service.stop()
        await gate.stop()


async def test_a_subscription_the_broker_refuses_is_named_in_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A broker ACL that denies our command topics (mosquitto's dynamic security here, as an operator
    would set it): without a log line, setpoints would silently never arrive."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    plugins = sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so")) + sorted(Path("/usr/lib").glob("mosquitto_dynamic_security.so"))
    assert plugins, "Debian's mosquitto package ships mosquitto_dynamic_security.so; it is missing"
    port = free_port()
    rules = tmp_path / "dynsec.json"
    rules.write_text(json.dumps({
        "defaultACLAccess": {"publishClientSend": True, "publishClientReceive": True, "subscribe": False, "unsubscribe": True},
        "clients": [], "groups": [{"groupname": "anonymous", "roles": [{"rolename": "ha"}], "clients": []}],
        "roles": [{"rolename": "ha", "acls": [{"acltype": "subscribePattern", "topic": "homeassistant/#", "priority": 0, "allow": True}]}],
        "anonymousGroup": "anonymous"}), encoding="utf-8")
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nplugin {plugins[0]}\n"
                    f"plugin_opt_config_file {rules}\n" + ("user root\n" if os.geteuid() == 0 else ""), encoding="utf-8")
    process = await asyncio.create_subprocess_exec(binary, "-c", str(conf), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)

    async def answers() -> None:
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            except OSError:
                assert process.returncode is None, "mosquitto with dynamic security did not start"
                await asyncio.sleep(0.05)

    service = Service(make_config(port, tmp_path))
    try:
        await asyncio.wait_for(answers(), TIMEOUT)
        await service.start()  # every SUBACK came, refusals included: ready
        refused = [r.getMessage() for r in caplog.records if "refused the subscription" in r.getMessage()]
        assert any("ocpp/+/+/set" in line for line in refused), refused
        assert not any("homeassistant/status" in line for line in refused), refused
    finally:
        await service.stop()
        process.terminate()
        await process.wait()


class StallingRelay:
    """A TCP relay in front of the real mosquitto that can stop reading what we send (a broker that
    reads slowly: our socket's send buffer fills up) or stop forwarding both ways (a broker that froze
    without closing the connection: only the MQTT keepalive can tell)."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.upstream = asyncio.Event()  # clear: what the client sends is not read
        self.downstream = asyncio.Event()  # clear: nothing the broker sends is passed on
        self.upstream.set()
        self.downstream.set()
        self.server: asyncio.Server | None = None
        self.port = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.broker_port)

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event) -> None:
            while True:
                await flowing.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await flowing.wait()
                writer.write(data)
                await writer.drain()
            writer.close()

        try:
            await asyncio.gather(pump(client_r, broker_w, self.upstream), pump(broker_r, client_w, self.downstream))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            client_w.close()
            broker_w.close()

    async def stop(self) -> None:
        self.upstream.set()
        self.downstream.set()
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):
            task.cancel()


async def test_a_broker_that_reads_slowly_stalls_no_charger_and_loses_nothing(broker: EmbeddedBroker, probe: MqttProbe, tmp_path: Path) -> None:
    """paho runs in the event loop: a publish the kernel cannot take at once waits in paho's queue and is
    written when the socket drains, while the loop keeps serving chargers (nothing blocks on the broker)."""
    relay = StallingRelay(broker.port)
    await relay.start()
    service = Service(make_config(relay.port, tmp_path))
    try:
        await service.start()
        relay.upstream.clear()  # the broker stops reading us
        bulk = 300  # 300 x 64 kB: more than the kernel's socket buffers on both sides of the relay hold
        for i in range(bulk):
            service.app.mqtt.publish(f"ocpp/bulk/{i}", f"{i:05d}".encode() + b"x" * 65531)
        assert service.app.mqtt.client.want_write()  # not all of it could be written: paho holds the rest,
        assert service.app.mqtt._writing  # and the loop writes it when the socket drains (not on the next keepalive tick)
        await service.charger("wallbox-1")  # booted and answered while the broker reads nothing: the loop is free
        assert "wallbox-1" in service.app.hub.connected
        mark = probe.mark()
        relay.upstream.set()
        last = await probe.wait_for(f"ocpp/bulk/{bulk - 1}", since=mark, timeout=60)
        assert last.startswith(f"{bulk - 1:05d}".encode()) and len(last) == 65536
        arrived = [topic for topic, _, _ in probe.messages if topic.startswith("ocpp/bulk/")]
        assert arrived == [f"ocpp/bulk/{i}" for i in range(bulk)]  # every one, in the order published
        assert not service.app.mqtt.client.want_write()
    finally:
        await service.stop()
        await relay.stop()


async def test_a_broker_that_stops_answering_is_left_and_rejoined(broker: EmbeddedBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A frozen broker (the connection stays open, nothing comes back): the keepalive (PINGREQ without
    PINGRESP, paho's check run by our loop every second) ends the connection; once the broker answers
    again we reconnect and subscribe anew."""
    relay = StallingRelay(broker.port)
    await relay.start()
    service = Service(make_config(relay.port, tmp_path, mqtt={"keepalive": 5}))
    bridge = service.app.mqtt
    try:
        await service.start()
        relay.upstream.clear()
        relay.downstream.clear()
        await asyncio.wait_for(bridge.disconnected.wait(), 2 * 5 + TIMEOUT)  # a PINGREQ goes out after 5 s, unanswered for 5 s
        assert not bridge.connected.is_set()
        assert any("MQTT connection to" in r.getMessage() and "lost" in r.getMessage() for r in caplog.records)
        relay.upstream.set()
        relay.downstream.set()
        await asyncio.wait_for(bridge.subscribed.wait(), RECONNECT_MAX_DELAY + TIMEOUT)
        assert bridge.connected.is_set()
    finally:
        await service.stop()
        await relay.stop()


async def test_a_publish_from_another_thread_goes_out_through_the_loop(service: Service, probe: MqttProbe) -> None:
    """Only the event loop drives paho's socket now; a record published from another thread (BEMcom's
    log handler sees records of every thread) is handed to the loop, not written beside it."""
    client = service.app.mqtt.client
    real_publish = client.publish
    writers: list[int] = []

    def publish(topic: str, *args: Any, **kwargs: Any) -> Any:  # paho's own publish, noting the thread it runs in
        if topic == "ocpp/thread/test":
            writers.append(threading.get_ident())
        return real_publish(topic, *args, **kwargs)

    client.publish = publish  # type: ignore[method-assign]
    mark = probe.mark()
    await asyncio.to_thread(service.app.mqtt.publish, "ocpp/thread/test", b"from a worker thread")
    assert await probe.wait_for("ocpp/thread/test", since=mark) == b"from a worker thread"
    assert writers == [threading.get_ident()]  # the loop's thread (this test runs in it), not the worker


async def test_a_stop_does_not_wait_for_a_dns_lookup_that_hangs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker name whose lookup never returns (a DNS server that does not answer; stood in for here by a
    resolver that waits, so nothing leaves the machine): the connect waits in a daemon thread of its own,
    stop() returns after its bounded wait, and the lookup cannot hold up the process exit after SIGTERM
    (the loop's executor threads are joined when the loop closes; this one is not)."""
    release = threading.Event()
    lookups: list[threading.Thread] = []
    real_lookup = socket.getaddrinfo

    def lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "broker.invalid":
            lookups.append(threading.current_thread())
            release.wait(60)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    service = Service(make_config(1883, tmp_path, mqtt={"host": "broker.invalid"}))
    try:
        await service.app.start()  # serves chargers after the first-connect wait, the lookup still hanging
        assert lookups and lookups[0].daemon
        await asyncio.wait_for(service.app.stop(), TIMEOUT)
    finally:
        release.set()
        for thread in lookups:  # let the connect end before the test does (it then only finds the loop gone)
            await asyncio.to_thread(thread.join, TIMEOUT)
