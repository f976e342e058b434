"""MQTT transport: one paho-mqtt 2.x client (callback API v2) beside the asyncio loop.

paho's network thread handles sockets, keepalive and reconnects (capped
exponential backoff); every callback hops into the event loop with
``call_soon_threadsafe``, so the rest of the service is single-threaded.
Subscriptions live in a registry and are restored on every (re)connect, and the
bridge state topic carries a last will so Home Assistant sees us go offline even
when the process dies.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .config import bridge_topic

_LOGGER = logging.getLogger(__name__)

MessageCallback = Callable[[str, bytes], None]
RETRY_LOG_INTERVAL = 60.0


class MqttBridge:
    def __init__(self, config: dict[str, Any], loop: asyncio.AbstractEventLoop | None = None) -> None:
        cfg = config["mqtt"]
        self.host: str = cfg["host"]
        self.port: int = cfg["port"]
        self.base: str = cfg["base_topic"]
        self.state_topic = bridge_topic(config)
        self._keepalive: int = cfg["keepalive"]
        self._loop = loop
        self._subscriptions: dict[str, tuple[int, MessageCallback]] = {}
        self._connect_callbacks: list[Callable[[], None]] = []
        self.connected = asyncio.Event()
        self._last_failure_log = 0.0
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg["client_id"], clean_session=True)
        if cfg["username"]:
            client.username_pw_set(cfg["username"], cfg["password"])
        if cfg["ssl"]:
            client.tls_set(cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.will_set(self.state_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client

    # -- public API (call from the event loop) ----------------------------------

    def on_connect(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` in the loop after every successful (re)connect."""
        self._connect_callbacks.append(callback)

    def subscribe(self, topic: str, callback: MessageCallback, qos: int = 1) -> None:
        self._subscriptions[topic] = (qos, callback)
        if self.connected.is_set():
            self.client.subscribe(topic, qos)

    def unsubscribe(self, topic: str) -> None:
        if self._subscriptions.pop(topic, None) is not None and self.connected.is_set():
            self.client.unsubscribe(topic)

    def publish(self, topic: str, payload: str | bytes, retain: bool = False, qos: int = 0) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)

    async def start(self) -> None:
        self._loop = self._loop or asyncio.get_running_loop()
        self.client.connect_async(self.host, self.port, keepalive=self._keepalive)
        self.client.loop_start()

    async def stop(self) -> None:
        """Publish 'offline' (a clean stop does not fire the last will), then disconnect."""
        if self.connected.is_set():
            info = self.client.publish(self.state_topic, "offline", qos=1, retain=True)
            await asyncio.get_running_loop().run_in_executor(None, _wait_published, info, 3.0)
        self.client.disconnect()
        await asyncio.get_running_loop().run_in_executor(None, self.client.loop_stop)

    # -- paho callbacks (network thread) ------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            _LOGGER.error("MQTT broker %s:%d refused the connection: %s", self.host, self.port, reason_code)
            return
        for topic, (qos, _) in list(self._subscriptions.items()):
            client.subscribe(topic, qos)
        client.publish(self.state_topic, "online", qos=1, retain=True)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._connected_in_loop)

    def _connected_in_loop(self) -> None:
        _LOGGER.info("MQTT connected to %s:%d", self.host, self.port)
        self.connected.set()
        for callback in self._connect_callbacks:
            try:
                callback()
            except Exception:
                _LOGGER.exception("MQTT on-connect callback failed")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        now = time.monotonic()
        if now - self._last_failure_log >= RETRY_LOG_INTERVAL:
            self._last_failure_log = now
            _LOGGER.warning("MQTT broker %s:%d is not reachable; retrying in the background", self.host, self.port)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.connected.clear)
        if reason_code != 0:
            _LOGGER.warning("MQTT connection to %s:%d lost (%s); reconnecting", self.host, self.port, reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        assert self._loop is not None
        try:
            topic = message.topic
        except UnicodeDecodeError:
            _LOGGER.warning("ignored an MQTT message whose topic is not UTF-8")
            return
        self._loop.call_soon_threadsafe(self._dispatch, topic, message.payload)

    def _dispatch(self, topic: str, payload: bytes) -> None:
        for pattern, (_, callback) in list(self._subscriptions.items()):
            if mqtt.topic_matches_sub(pattern, topic):
                try:
                    callback(topic, payload)
                except Exception:
                    _LOGGER.exception("handling MQTT message on %s failed", topic)


def _wait_published(info: mqtt.MQTTMessageInfo, timeout: float) -> None:
    try:
        info.wait_for_publish(timeout)
    except (RuntimeError, ValueError):
        pass  # not connected any more: the last will covers us
