"""BEMcom drop-in: an existing BEMcom deployment swaps the image and nothing else changes (issue 13).

The connector is started exactly as BEMcom's docker-compose starts one
(environment variables only, no config file, no test-only settings) and
compared with a recorded run of the original connector 0.2.2
(``fixtures/bemcom_original/run-0.2.2.json``, made by ``record.py`` beside it:
see its ``provenance``). Every MQTT message is watched with MQTT 5
retain-as-published, so the retain flags asserted are the ones the connector
set, not the 0 a live MQTT 3.1.1 delivery always carries.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any, AsyncIterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions
from websockets.asyncio.client import ClientConnection, connect as ws_connect

from ocpp_addon import config as cfg
from ocpp_addon.broker import EmbeddedBroker

from .conftest import TIMEOUT, MqttProbe, free_port

REPO = Path(__file__).resolve().parent.parent
RECORDED = json.loads((REPO / "tests/fixtures/bemcom_original/run-0.2.2.json").read_text(encoding="utf-8"))
CN = RECORDED["provenance"]["environment"]["CONNECTOR_NAME"]


class Mqtt5Probe(MqttProbe):
    """Subscribes with MQTT 5 retain-as-published and QoS 2: records each message's QoS and retain flag as published."""

    def __init__(self, port: int, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.messages: list[tuple[str, bytes, bool]] = []
        self.flags: list[tuple[str, int, bool]] = []
        self._arrived = asyncio.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe5-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.loop.call_soon_threadsafe(self._flag, msg.topic, msg.qos, bool(msg.retain))
        super()._on_message(client, userdata, msg)

    def _flag(self, topic: str, qos: int, retain: bool) -> None:
        self.flags.append((topic, qos, retain))

    async def subscribe(self, topic: str = "#", qos: int = 2) -> None:
        subscribed = asyncio.Event()
        self.client.on_subscribe = lambda *a: self.loop.call_soon_threadsafe(subscribed.set)
        self.client.subscribe(topic, options=SubscribeOptions(qos=qos, retainAsPublished=True))
        await asyncio.wait_for(subscribed.wait(), TIMEOUT)


@pytest.fixture
async def probe5(broker: EmbeddedBroker) -> AsyncIterator[Mqtt5Probe]:
    client = Mqtt5Probe(broker.port, asyncio.get_running_loop())
    await client.subscribe("#")
    yield client
    client.close()


def kind(topic: str) -> str:
    """The template's topic kinds: cn/logs, cn/heartbeat, ... and the per-datapoint cn/messages/<id>/value."""
    return "messages" if "/messages/" in topic else topic.split("/", 1)[1]


def bemcom_environment(cn: str, broker_port: int, ocpp_port: int, **more: str) -> dict[str, str]:
    """What BEMcom's docker-compose sets for a connector (plus what Python needs to run)."""
    return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "CONNECTOR_NAME": cn, "MQTT_BROKER_HOST": "127.0.0.1",
            "MQTT_BROKER_PORT": str(broker_port), "OCPP_PORT": str(ocpp_port), **more}


class Connector:
    """``python -m ocpp_addon`` as a BEMcom container runs it: its own working directory, environment only."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.lines: list[bytes] = []
        self.process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    async def start(self, marker: bytes = b"ready: chargers connect to") -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = await asyncio.create_subprocess_exec(sys.executable, "-m", "ocpp_addon", cwd=self.workdir, env=self.env,
                                                            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        assert self.process.stderr is not None
        while marker not in (self.lines[-1] if self.lines else b""):
            line = await asyncio.wait_for(self.process.stderr.readline(), TIMEOUT)
            if not line:
                raise AssertionError(f"the connector exited before logging {marker!r}: {self.output[-2000:]}")
            self.lines.append(line)
        self._drain = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.lines.append(line)

    @property
    def output(self) -> str:
        return b"".join(self.lines).decode("utf-8", "replace")

    async def stop(self) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), TIMEOUT)
        if self._drain is not None:
            await asyncio.wait_for(self._drain, TIMEOUT)
        return code


class Charger:
    """A charger speaking raw OCPP-J frames (the fixture's), answering the connector's CALLs with Accepted."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, port: int, charger_id: str) -> "Charger":
        return cls(await ws_connect(f"ws://127.0.0.1:{port}/{charger_id}", subprotocols=["ocpp1.6"]))

    async def _read(self) -> None:
        async for text in self.ws:
            frame = json.loads(text)
            if frame[0] == 2:
                self.calls.append((frame[2], frame[3]))
                self._changed.set()
                await self.ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
            elif frame[1] in self._pending:
                self._pending.pop(frame[1]).set_result(frame)

    async def call(self, action: str, payload: dict[str, Any]) -> Any:
        message_id = str(uuid.uuid4())
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        await self.ws.send(json.dumps([2, message_id, action, payload]))
        return await asyncio.wait_for(future, TIMEOUT)

    async def wait_calls(self, count: int, actions: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
        """The first ``count`` CALLs of these actions (ours also reads the charger's configuration at connect)."""
        def matching() -> list[tuple[str, dict[str, Any]]]:
            return [c for c in self.calls if c[0] in actions]

        async def enough() -> None:
            while len(matching()) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(enough(), TIMEOUT)
        return matching()[:count]

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


def value_message(value: Any) -> str:
    return json.dumps({"value": value, "timestamp": int(time.time() * 1000)})


# -- a recorded run of the original connector, replayed against ours ------------------------------


async def test_started_the_bemcom_way_it_matches_a_recorded_run_of_the_original_connector(
    broker: EmbeddedBroker, probe5: Mqtt5Probe, tmp_path: Path
) -> None:
    """The original's keys and values, its actuator keys, QoS and retain flags, its 10 s OCPP heartbeat,
    every actuator message executed, DEBUG records on cn/logs, and nothing outside cn/ on BEMcom's broker."""
    ocpp_port = free_port()
    connector = Connector(tmp_path / "connector", bemcom_environment(CN, broker.port, ocpp_port, **RECORDED["provenance"]["environment"]))
    await connector.start()
    charger: Charger | None = None
    try:
        charger = await Charger.connect(ocpp_port, RECORDED["charger"])
        responses = [await charger.call(f["action"], f["payload"]) for f in RECORDED["frames"]]
        boot = next(r["response"][2] for r in RECORDED["responses"] if r["action"] == "BootNotification")
        assert responses[0][2]["interval"] == boot["interval"] == 10  # item 7

        recorded_available = [m["payload"] for m in RECORDED["mqtt"] if m["topic"] == f"{CN}/available_datapoints"][-1]
        available = await probe5.wait_json(f"{CN}/available_datapoints",
                                           lambda d: recorded_available["sensor"].keys() <= d["sensor"].keys())
        assert available["actuator"] == recorded_available["actuator"]  # item 2: the original's actuator keys
        for key, value in recorded_available["sensor"].items():  # item 2: the original's sensor keys, with its values
            assert available["sensor"][key] == value, key

        # the same datapoint_map as in the recorded run, then the same frames again
        mark = probe5.mark()
        probe5.publish(f"{CN}/datapoint_map", json.dumps(RECORDED["datapoint_map"]), retain=True, qos=2)
        await probe5.wait_json(f"{CN}/logs", lambda d: "datapoint_map with" in d["msg"], since=mark)
        mark = probe5.mark()
        for frame in RECORDED["frames"]:
            await charger.call(frame["action"], frame["payload"])
        recorded_values: dict[str, list[Any]] = defaultdict(list)
        map_published = next(i for i, m in enumerate(RECORDED["mqtt"]) if m["topic"] == f"{CN}/datapoint_map")
        for message in RECORDED["mqtt"][map_published:]:
            if message["topic"] in RECORDED["datapoint_map"]["sensor"].values():
                recorded_values[message["topic"]].append(message["payload"]["value"])
        for topic, values in recorded_values.items():
            await probe5.wait_for(topic, since=mark)
        await probe5.wait_json(RECORDED["datapoint_map"]["sensor"]["StatusNotification__status"], lambda d: d["value"] == "Charging", since=mark)
        ours: dict[str, list[Any]] = defaultdict(list)
        for topic, payload, _ in probe5.messages[mark:]:
            if topic in recorded_values:
                ours[topic].append(json.loads(payload)["value"])
        assert ours == recorded_values  # the same value messages, in the same order per datapoint

        # actuator values as in the recorded run: each message executed, also a repeated one (item 5)
        topic_of = {key: topic for topic, key in RECORDED["datapoint_map"]["actuator"].items()}
        for sent in RECORDED["actuator_values"]:
            probe5.publish(topic_of[sent["key"]], value_message(sent["value"]), qos=2)
        calls = await charger.wait_calls(len(RECORDED["calls_received"]), ("TriggerMessage", "SetChargingProfile"))
        assert [a for a, _ in calls] == [c["action"] for c in RECORDED["calls_received"]]
        assert [p["requestedMessage"] for a, p in calls if a == "TriggerMessage"] == ["Heartbeat", "Heartbeat"]
        limit = next(p for a, p in calls if a == "SetChargingProfile")["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]
        assert limit["limit"] == 11000

        await probe5.wait_for(f"{CN}/heartbeat")
        await probe5.wait_json(f"{CN}/logs", lambda d: d["level"] == 10)  # item 6: DEBUG=TRUE publishes debug records
        await probe5.wait_for(f"{CN}/raw_message_to_db")
    finally:
        if charger is not None:
            await charger.close()
        code = await connector.stop()
    assert code == 0 and "Traceback" not in connector.output, connector.output[-3000:]

    # QoS and retain flags per topic kind, as the original set them
    recorded_flags: dict[str, set[tuple[int, bool]]] = defaultdict(set)
    for message in RECORDED["mqtt"]:
        if message["topic"].startswith(f"{CN}/") and not message["topic"].endswith("datapoint_map"):
            if message["topic"] not in RECORDED["datapoint_map"]["actuator"]:  # those are the recorder's own
                recorded_flags[kind(message["topic"])].add((message["qos"], message["retain"]))
    ours_flags: dict[str, set[tuple[int, bool]]] = defaultdict(set)
    actuator_topics = set(RECORDED["datapoint_map"]["actuator"])
    for topic, qos, retain in probe5.flags:
        if topic != f"{CN}/datapoint_map" and topic not in actuator_topics:
            ours_flags[kind(topic)].add((qos, retain))
    assert ours_flags == recorded_flags
    assert recorded_flags["available_datapoints"] == recorded_flags["logs"] == recorded_flags["messages"] == {(0, True)}
    assert recorded_flags["heartbeat"] == {(0, False)} and recorded_flags["raw_message_to_db"] == {(2, False)}
    # item 9: nothing but the connector's own topics on BEMcom's broker (no ocpp/*, no discovery)
    assert {t for t, _, _ in probe5.messages if not t.startswith(f"{CN}/")} == set()


# -- several connectors on one broker ------------------------------------------------------------------


def assert_never_kicked(connector: Connector) -> None:
    """Connected once and stayed: a client with the same id would have closed our session (the broker
    hands a client id to the newest connection), which paho reports as a lost connection."""
    output = connector.output
    assert output.count("MQTT connected to") == 1 and "lost" not in output and "reconnected" not in output, output[-3000:]


async def test_two_connectors_on_one_broker_started_the_bemcom_way(broker: EmbeddedBroker, probe5: Mqtt5Probe, tmp_path: Path) -> None:
    """Item 1: each connector has its own client id, so neither takes over the other's session."""
    names = ("ocpp-garage", "ocpp-office")
    ports = {cn: free_port() for cn in names}
    connectors = {cn: Connector(tmp_path / cn, bemcom_environment(cn, broker.port, ports[cn], OCPP_CONFIG='["execute_trigger_message"]'))
                  for cn in names}
    chargers: dict[str, Charger] = {}
    try:
        for cn in names:
            await connectors[cn].start()
        for cn in names:
            chargers[cn] = await Charger.connect(ports[cn], f"cp-{cn}")
            await chargers[cn].call("BootNotification", {"chargePointVendor": cn, "chargePointModel": "Box"})
        for cn in names:
            available = await probe5.wait_json(f"{cn}/available_datapoints", lambda d: "BootNotification__charge_point_vendor" in d["sensor"])
            assert available["sensor"]["BootNotification__charge_point_vendor"] == cn
            mark = probe5.mark()
            probe5.publish(f"{cn}/datapoint_map", json.dumps({"sensor": {}, "actuator": {f"{cn}/messages/1/value": "execute_trigger_message__"}}),
                           retain=True, qos=2)
            await probe5.wait_json(f"{cn}/logs", lambda d: "datapoint_map with" in d["msg"], since=mark)
        # Connected and working side by side: every command reaches its own charger
        for round_ in range(3):
            for cn in names:
                probe5.publish(f"{cn}/messages/1/value", value_message(4), qos=2)
            for cn in names:
                await chargers[cn].wait_calls(round_ + 1, ("TriggerMessage",))
        for cn in names:
            await probe5.wait_for(f"{cn}/heartbeat")
    finally:
        for charger in chargers.values():
            await charger.close()
        codes = [await c.stop() for c in connectors.values()]
    assert codes == [0, 0], [c.output[-2000:] for c in connectors.values()]
    for connector in connectors.values():
        assert_never_kicked(connector)
    assert {t.split("/")[0] for t, _, _ in probe5.messages} == set(names)


async def test_a_second_copy_fails_on_the_ocpp_port_before_touching_mqtt(broker: EmbeddedBroker, probe5: Mqtt5Probe, tmp_path: Path) -> None:
    """Item 1: started by mistake with the same settings, a second copy must not bump the running one off MQTT."""
    env = bemcom_environment("ocpp-connector", broker.port, free_port())
    first = Connector(tmp_path / "first", env)
    await first.start()
    try:
        await probe5.wait_for("ocpp-connector/heartbeat")
        second = await asyncio.create_subprocess_exec(sys.executable, "-m", "ocpp_addon", cwd=tmp_path, env=env,
                                                      stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, stderr = await asyncio.wait_for(second.communicate(), TIMEOUT)
        assert second.returncode == 1
        assert "cannot start:" in stderr.decode() and "address already in use" in stderr.decode().lower()
        mark = probe5.mark()
        probe5.publish("ocpp-connector/datapoint_map", json.dumps({"sensor": {}, "actuator": {}}), retain=True, qos=2)
        await probe5.wait_json("ocpp-connector/logs", lambda d: "datapoint_map with" in d["msg"], since=mark)  # the first is still there
    finally:
        assert await first.stop() == 0
    assert_never_kicked(first)


# -- a configured broker is waited for, never replaced ---------------------------------------------------


async def test_a_configured_broker_that_is_not_up_yet_is_waited_for(tmp_path: Path) -> None:
    """Item 4: MQTT_BROKER_HOST=127.0.0.1 with nothing listening yet: no embedded mosquitto, connect once it is up."""
    port = free_port()
    connector = Connector(tmp_path / "connector", bemcom_environment("ocpp-connector", port, free_port()))
    await connector.start()
    broker = EmbeddedBroker(port, tmp_path / "broker")
    probe: MqttProbe | None = None
    try:
        assert "embedded mosquitto" not in connector.output
        assert not (tmp_path / "connector" / "data" / "mosquitto").exists()
        await broker.start()  # the port is still free: the connector did not take it
        probe = MqttProbe(port, asyncio.get_running_loop())
        await probe.subscribe("ocpp-connector/#")
        await probe.wait_json("ocpp-connector/available_datapoints", timeout=30)  # paho's backoff is at most 10 s
    finally:
        if probe is not None:
            probe.close()
        code = await connector.stop()
        await broker.stop()
    assert code == 0, connector.output[-2000:]


def test_a_broker_in_a_file_or_the_environment_turns_the_embedded_broker_off(tmp_path: Path) -> None:
    assert cfg.load(None, env={})["mqtt"]["embedded_broker"] is True  # quick start: nothing configured
    assert cfg.load(None, env={"MQTT_BROKER_HOST": "localhost"})["mqtt"]["embedded_broker"] is False
    assert cfg.load(None, env={"CONNECTOR_NAME": "cn", "MQTT_BROKER_PORT": "1884"})["mqtt"]["embedded_broker"] is False
    path = tmp_path / "config.yaml"
    path.write_text("mqtt:\n  host: localhost\n", encoding="utf-8")
    assert cfg.load(path, env={})["mqtt"]["embedded_broker"] is False
    path.write_text("mqtt:\n  host: localhost\n  embedded_broker: true\n", encoding="utf-8")
    assert cfg.load(path, env={})["mqtt"]["embedded_broker"] is True  # asked for in so many words


# -- what the drop-in mode changes, and how to opt out of it ------------------------------------------------


def test_drop_in_defaults_and_their_opt_ins(tmp_path: Path) -> None:
    env = {"CONNECTOR_NAME": "ocpp-garage", "MQTT_BROKER_HOST": "broker", "MQTT_BROKER_PORT": "1883"}
    drop_in = cfg.load(None, env=env)
    assert drop_in["bemcom"]["drop_in"] is True
    assert drop_in["bemcom"]["legacy_keys"] is True  # item 2
    assert drop_in["bemcom"]["apply_setpoints"] is False  # item 3
    assert drop_in["ocpp"]["heartbeat_interval"] == 10  # item 7
    assert drop_in["mqtt"]["ocpp_topics"] is False and drop_in["mqtt"]["discovery"] is False  # item 9
    assert drop_in["mqtt"]["client_id"] == "ocpp-addon-ocpp-garage"  # item 1
    opted = cfg.load(None, env={**env, "KEYS_PER_CHARGER": "TRUE", "APPLY_SETPOINTS": "TRUE", "OCPP_TOPICS": "TRUE"})
    assert opted["bemcom"]["legacy_keys"] is False and opted["bemcom"]["apply_setpoints"] is True
    assert opted["mqtt"]["ocpp_topics"] is True and opted["mqtt"]["discovery"] is True
    # configured with a file, the service keeps its own defaults
    path = tmp_path / "config.yaml"
    path.write_text("bemcom:\n  enabled: true\n  connector_name: ocpp-office\ninstance_id: b\n", encoding="utf-8")
    own = cfg.load(path, env={})
    assert own["bemcom"]["drop_in"] is False and own["bemcom"]["legacy_keys"] is False
    assert own["ocpp"]["heartbeat_interval"] == 300 and own["mqtt"]["ocpp_topics"] is True
    assert own["mqtt"]["client_id"] == "ocpp-addon-ocpp-office-b"
    assert cfg.load(None, env={})["mqtt"]["client_id"] == "ocpp-addon"  # unchanged for Home Assistant users
    with pytest.raises(cfg.ConfigError, match="mqtt.ocpp_topics = False: with the BEMcom connector off nothing would reach MQTT"):
        cfg.validate({"mqtt": {"ocpp_topics": False}})
