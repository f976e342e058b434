"""Builds the parts from the config, runs them, and shuts them down in order."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any, Callable

from .bemcom import BemcomSink
from .broker import BrokerError, EmbeddedBroker
from .gc_housekeeping import GcHousekeeping
from .central_system import CentralSystem
from .homeassistant import HomeAssistantSink
from .hub import Hub
from .mqtt_bridge import MqttBridge
from .store import Store

_LOGGER = logging.getLogger(__name__)


def _broker_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


# How long the OCPP port stays closed at start while the broker is being reached: long enough for a
# broker that is up (so a charger's first frames reach MQTT, as with BEMcom's original connector, which
# connected first), short enough that chargers are served while a configured broker is still down.
FIRST_CONNECT_WAIT = 5.0


def check_port_free(host: str, port: int) -> None:
    """Raise the OSError a bind of the OCPP port would raise (e.g. address already in use), without
    keeping it: a second copy of the service must fail before it touches MQTT, where its client id
    would take over the running copy's session."""
    if port == 0:
        return
    for family, kind, proto, _, address in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
            try:
                sock.bind(address)
            except OSError as err:
                raise OSError(err.errno, f"OCPP port {host}:{port}: {err.strerror}") from None


EVENT_LOOP_VARIABLE = "OCPP_ADDON_EVENT_LOOP"


def event_loop_factory() -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """Which event loop to run on: uvloop when it is installed (the optional ``fast`` extra; its
    loop, written in C on libuv, costs less per socket wake-up and per callback than asyncio's),
    else asyncio's own. ``OCPP_ADDON_EVENT_LOOP=asyncio`` forces asyncio's (e.g. to compare, or to
    rule uvloop out); ``=uvloop`` insists on uvloop and says so when it is missing."""
    wanted = os.environ.get(EVENT_LOOP_VARIABLE, "auto").strip().lower() or "auto"
    if wanted not in ("auto", "asyncio", "uvloop"):
        _LOGGER.warning("%s=%r is not one of auto, asyncio, uvloop: using auto", EVENT_LOOP_VARIABLE, wanted)
        wanted = "auto"
    if wanted == "asyncio":
        return "asyncio", None
    try:
        import uvloop
    except ImportError:
        if wanted == "uvloop":
            _LOGGER.warning("%s=uvloop but uvloop is not installed (pip install 'ocpp-addon[fast]'): using asyncio's loop", EVENT_LOOP_VARIABLE)
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop


class App:
    """The running service; ``await start()``, then ``await stop()``."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.store = Store(config["data_dir"])
        self.hub = Hub(config, self.store)
        self.broker: EmbeddedBroker | None = None
        self.mqtt = MqttBridge(config)
        self.homeassistant: HomeAssistantSink | None = None
        if config["mqtt"]["ocpp_topics"]:
            self.homeassistant = HomeAssistantSink(config, self.hub, self.mqtt)
            self.store.on_problem = self.homeassistant.problem_changed
            self.hub.add_sink(self.homeassistant)
        self.bemcom: BemcomSink | None = None
        if config["bemcom"]["enabled"]:
            self.bemcom = BemcomSink(config, self.hub, self.mqtt)
            # Raw frames always: the BEMcom sensor datapoints are the charger's CALLs as sent.
            self.hub.add_sink(self.bemcom, raw_frames=True)
        self.central_system = CentralSystem(config, self.hub)
        # Behind a load balancer: an instance cut off from the broker gets no new chargers.
        self.central_system.health = lambda: None if self.mqtt.connected.is_set() else "MQTT broker not connected"
        self.web: Any = None
        if config["web"]["enabled"]:
            from .web import WebSink  # aiohttp is imported only when the page is on

            self.web = WebSink(config, self.hub)
            self.hub.add_sink(self.web)

    async def start(self) -> None:
        mqtt_cfg = self.config["mqtt"]
        ocpp = self.config["ocpp"]
        await asyncio.to_thread(check_port_free, ocpp["host"], ocpp["port"])
        if (
            mqtt_cfg["embedded_broker"]
            and mqtt_cfg["host"] in ("localhost", "127.0.0.1")
            and not await asyncio.to_thread(_broker_answers, mqtt_cfg["host"], mqtt_cfg["port"])
        ):
            broker = EmbeddedBroker(mqtt_cfg["port"], self.config["data_dir"])
            try:
                await broker.start()
                self.broker = broker
            except BrokerError as err:
                _LOGGER.error("%s", err)
        if self.homeassistant is not None:
            self.homeassistant.start()
        if self.bemcom is not None:
            self.bemcom.start()
        await self.mqtt.start()
        try:
            # subscribed, not just connected: a command published once we say "ready" must reach us
            await asyncio.wait_for(self.mqtt.subscribed.wait(), FIRST_CONNECT_WAIT)
        except asyncio.TimeoutError:
            if self.mqtt.connected.is_set():
                _LOGGER.warning("MQTT broker %s:%d has not confirmed our subscriptions within %.0f s; serving chargers anyway",
                                mqtt_cfg["host"], mqtt_cfg["port"], FIRST_CONNECT_WAIT)
            else:
                _LOGGER.warning("MQTT broker %s:%d not reached yet; serving chargers anyway, their values go out once it is",
                                mqtt_cfg["host"], mqtt_cfg["port"])
        await self.central_system.start()
        if self.web is not None:
            await self.web.start()
        _LOGGER.info(
            "ready: chargers connect to %s://%s:%d%s/<charge_point_id>; MQTT %s:%d%s, %s; event loop %s",
            self.central_system.scheme, ocpp["host"], self.central_system.port, ocpp["path_prefix"],
            mqtt_cfg["host"], mqtt_cfg["port"], " (embedded mosquitto)" if self.broker else "",
            f"base topic '{mqtt_cfg['base_topic']}'" if self.homeassistant is not None
            else f"BEMcom connector '{self.config['bemcom']['connector_name']}' only",
            "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio",
        )

    async def stop(self) -> None:
        _LOGGER.info("stopping")
        connected = list(self.hub.connected)
        if self.web is not None:
            await self.web.stop()
        await self.central_system.close()
        await self.hub.close()
        for charger_id in connected if self.homeassistant is not None else ():  # no stale 'online' for chargers we just dropped
            self.mqtt.publish(f"{self.config['mqtt']['base_topic']}/{charger_id}/availability", "offline", retain=True, qos=1)
        self.store.on_problem = None  # the last save below must not publish after the bridge is gone
        await self.store.close()
        if self.bemcom is not None:
            await self.bemcom.stop()
        await self.mqtt.stop()
        if self.broker is not None:
            await self.broker.stop()
        _LOGGER.info("stopped")


async def run(config: dict[str, Any], stop: asyncio.Event) -> None:
    app = App(config)
    await app.start()
    # The process's collector, so only here: tests that run App inside pytest keep theirs.
    housekeeping = GcHousekeeping()
    housekeeping.start()
    try:
        await stop.wait()
    finally:
        housekeeping.stop()
        await app.stop()
