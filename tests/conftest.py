"""Shared fixtures: a real mosquitto on a free loopback port, the real service, real simulated chargers."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ocpp_addon import config as config_module
from ocpp_addon.app import App
from ocpp_addon.hub import READY, Event
from ocpp_addon.broker import BrokerError, EmbeddedBroker, find_mosquitto
from ocpp_addon.simulator import SimOptions, SimulatedCharger, connect

TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run 'apt-get install -y mosquitto' (bash .ci/run does it)")
    yield (server := await start_broker_on_a_free_port(tmp_path / "broker"))
    await server.stop()


async def start_broker_on_a_free_port(directory: Path, attempts: int = 3) -> EmbeddedBroker:
    """mosquitto cannot bind port 0 and report it: a port is picked first, and if something took it
    before mosquitto bound it (seen with the OCPP port in CI), another one is tried."""
    for attempt in range(attempts):
        server = EmbeddedBroker(free_port(), directory)
        try:
            await server.start()
            return server
        except BrokerError:
            await server.stop()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


class MqttProbe:
    """A real MQTT client for tests: records every message, waits on arrivals (never sleeps)."""

    def __init__(self, port: int, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.messages: list[tuple[str, bytes, bool]] = []
        self._arrived = asyncio.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{id(self)}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.loop.call_soon_threadsafe(self._record, msg.topic, msg.payload, bool(msg.retain))

    def _record(self, topic: str, payload: bytes, retain: bool) -> None:
        self.messages.append((topic, payload, retain))

        async def notify() -> None:
            async with self._arrived:
                self._arrived.notify_all()

        asyncio.ensure_future(notify())

    async def subscribe(self, topic: str = "#", qos: int = 1) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic, qos)
        await asyncio.to_thread(self._subscribed.wait, TIMEOUT)

    def publish(self, topic: str, payload: str | bytes, retain: bool = False, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(TIMEOUT)

    def received(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.messages if t == topic]

    async def wait_for(self, topic: str, predicate: Callable[[bytes], bool] = lambda p: True,
                       timeout: float = TIMEOUT, since: int = 0) -> bytes:
        def find() -> bytes | None:
            for t, p, _ in self.messages[since:]:
                if t == topic and predicate(p):
                    return p
            return None

        async with self._arrived:
            try:
                await asyncio.wait_for(self._arrived.wait_for(lambda: find() is not None), timeout)
            except asyncio.TimeoutError:
                seen = sorted({t for t, _, _ in self.messages})
                raise AssertionError(f"no matching message on {topic} within {timeout}s; topics seen: {seen}") from None
        result = find()
        assert result is not None
        return result

    async def wait_json(self, topic: str, predicate: Callable[[Any], bool] = lambda d: True,
                        timeout: float = TIMEOUT, since: int = 0) -> Any:
        def matches(payload: bytes) -> bool:
            try:
                return bool(predicate(json.loads(payload)))
            except (ValueError, KeyError, TypeError):
                return False

        return json.loads(await self.wait_for(topic, matches, timeout, since))

    def mark(self) -> int:
        """Index to pass as ``since`` to wait only for messages arriving after now."""
        return len(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
async def probe(broker: EmbeddedBroker) -> AsyncIterator[MqttProbe]:
    client = MqttProbe(broker.port, asyncio.get_running_loop())
    await client.subscribe("#")
    yield client
    client.close()


def make_config(broker_port: int, tmp_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "ocpp": {"host": "127.0.0.1", "response_timeout": 3, "boot_wait": 2},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "embedded_broker": False, "client_id": f"ocpp-addon-test-{free_port()}"},
        "charging": {"debounce": 0},  # tests send setpoints one by one; the debounce has its own test
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(name, {}).update(values)
        else:
            raw[name] = values
    config = config_module.validate(raw)
    if "port" not in raw["ocpp"]:
        # The OS picks the OCPP port when the server binds it (Service.start writes it back): a port picked
        # here and bound later was once taken in between (EADDRINUSE in CI). Users configure a fixed port.
        config["ocpp"]["port"] = 0
    return config


class Service:
    """The real service plus helpers to attach simulated chargers to it."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.app = App(config)
        self.chargers: list[tuple[SimulatedCharger, asyncio.Task[None]]] = []
        self.events: list[Event] = []
        self._event_arrived = asyncio.Condition()
        self.app.hub.add_sink(self)

    def handle(self, event: Event) -> None:
        """A hub sink recording every event, so tests wait on events instead of sleeping."""
        self.events.append(event)

        async def notify() -> None:
            async with self._event_arrived:
                self._event_arrived.notify_all()

        asyncio.ensure_future(notify())

    async def wait_event(self, kind: str, charger_id: str, predicate: Callable[[Event], bool] = lambda e: True,
                         since: int = 0, timeout: float = TIMEOUT) -> Event:
        def find() -> Event | None:
            return next((e for e in self.events[since:] if e.kind == kind and e.charger_id == charger_id and predicate(e)), None)

        async with self._event_arrived:
            await asyncio.wait_for(self._event_arrived.wait_for(lambda: find() is not None), timeout)
        event = find()
        assert event is not None
        return event

    @property
    def url(self) -> str:
        central = self.app.central_system  # the bound port: a test may start the app without Service.start
        port = central.port if central.server is not None else self.config["ocpp"]["port"]
        return f"ws://127.0.0.1:{port}{self.config['ocpp']['path_prefix']}"

    async def start(self) -> None:
        await self.app.start()
        self.config["ocpp"]["port"] = self.app.central_system.port  # bound now (0 = picked by the OS): a restart keeps it
        # as a user's "ready" line: the broker confirmed our subscriptions, so a command published now arrives
        await asyncio.wait_for(self.app.mqtt.subscribed.wait(), TIMEOUT)

    async def charger(self, charger_id: str = "wallbox-1", **options: Any) -> SimulatedCharger:
        """Connect a simulated charger and wait until the service has it ready for commands."""
        options.setdefault("meter_interval", 0)
        since = len(self.events)
        dial = connect
        if options.pop("ocpp", "1.6") == "2.0.1":  # an OCPP 2.0.1 station (simulator_v201), same interface
            from ocpp_addon.simulator_v201 import connect as dial  # type: ignore[assignment]
        sim, task = await dial(self.url, charger_id, SimOptions(**options))
        self.chargers.append((sim, task))
        await self.wait_event(READY, charger_id, since=since)
        await asyncio.wait_for(sim.booted.wait(), TIMEOUT)
        return sim

    async def stop(self) -> None:
        for sim, task in self.chargers:
            await sim._connection.close()
            task.cancel()
        await asyncio.gather(*(t for _, t in self.chargers), return_exceptions=True)
        await self.app.stop()


@pytest.fixture
async def service_factory(broker: EmbeddedBroker, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    services: list[Service] = []

    async def start(**sections: dict[str, Any]) -> Service:
        svc = Service(make_config(broker.port, tmp_path, **sections))
        await svc.start()
        services.append(svc)
        return svc

    yield start
    for svc in services:
        await svc.stop()


@pytest.fixture
async def service(service_factory: Callable[..., Any]) -> Service:
    return await service_factory()
