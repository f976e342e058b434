"""MQTT transport: one paho-mqtt 2.x client (callback API v2) driven by the asyncio loop.

paho's documented external-loop API (``loop_read``/``loop_write``/``loop_misc``) runs
in the event loop: the socket is read when the loop sees it readable, a publish is
written at once (a writer is registered only while the kernel's buffer is full), and a
supervisor task sends keepalives and reconnects with capped exponential backoff. Only
the blocking connect (DNS, TCP, TLS handshake) runs in a daemon thread. paho's own
network thread would cost, per publish, a wake-up byte on a socketpair, a select()
return and a GIL hand-off between two busy threads (in process, ~45 -> ~38-40 µs of CPU
per MeterValues with a closed loop's state messages; README "Performance"). Subscriptions live in a registry and are restored on every
(re)connect, and the bridge state topic carries a last will so Home Assistant sees us
go offline even when the process dies.

Faults, and what covers them:

* broker down at start or restarted: reconnect with capped backoff (1 s doubling
  to 10 s, HA's own reconnect interval), then every on-connect callback runs and
  re-publishes discovery, availability and state from scratch. Publishes while
  disconnected are therefore dropped rather than queued in paho without bound;
* a command published while we are away: with ``mqtt.persistent_session`` (the
  default) the broker keeps our subscriptions and queues QoS 1 commands (Home
  Assistant publishes with the discovery's ``qos: 1``) until we are back;
* a setpoint acknowledged and then lost to ``kill -9``: messages are acknowledged
  by hand (paho's ``manual_ack``). A callback may return an awaitable (the
  store's write of the new setpoint); the PUBACK goes out only once it is done,
  so until the setpoint is on disk the broker keeps the message for our
  persistent session and delivers it again after a restart;
* a topic built from untrusted data that the broker would refuse (it drops the
  whole connection for one bad topic): every topic is checked by
  :func:`.topics.publish_topic_problem` here, refused with one log line;
* TLS (``mqtt.ssl`` or ``ca_certs``/``certfile``): TLS 1.2+, the broker's
  certificate and host name checked unless ``tls_insecure``. The password is
  handed to paho only, which never logs it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from typing import Any, Awaitable, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .config import bridge_topic
from .topics import printable, publish_topic_problem

_LOGGER = logging.getLogger(__name__)

# A callback may return an awaitable: the message is acknowledged once it completes (see above).
MessageCallback = Callable[[str, bytes], "Awaitable[Any] | None"]
RETRY_LOG_INTERVAL = 60.0
RECONNECT_MIN_DELAY = 1
RECONNECT_MAX_DELAY = 10
CONNECT_TIMEOUT = 5.0  # TCP connect and TLS handshake (paho), in the connect thread


def tls_context(cfg: dict[str, Any]) -> ssl.SSLContext | None:
    """The client TLS context from ``mqtt.ssl``/``ca_certs``/``certfile``/``keyfile``/``tls_insecure``; None for plain TCP."""
    if not (cfg["ssl"] or cfg.get("ca_certs") or cfg.get("certfile")):
        return None
    context = ssl.create_default_context(cafile=cfg.get("ca_certs"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.get("certfile"):
        context.load_cert_chain(cfg["certfile"], cfg.get("keyfile"))
    if cfg.get("tls_insecure"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class MqttBridge:
    def __init__(self, config: dict[str, Any], loop: asyncio.AbstractEventLoop | None = None) -> None:
        cfg = config["mqtt"]
        self.host: str = cfg["host"]
        self.port: int = cfg["port"]
        self.base: str = cfg["base_topic"]
        # Without our ocpp/* topics (BEMcom drop-in mode) there is no bridge state and no last will.
        self.state_topic: str | None = bridge_topic(config) if cfg.get("ocpp_topics", True) else None
        self.retained = False  # the retain flag of the message being dispatched
        self._keepalive: int = cfg["keepalive"]
        self._loop = loop
        self._subscriptions: dict[str, tuple[int, MessageCallback]] = {}
        self._stale: set[str] = set()  # unsubscribed while disconnected
        self._connect_callbacks: list[Callable[[], None]] = []
        self.connected = asyncio.Event()
        # Set once the broker confirmed every subscription of the current connection (SUBACK): a command
        # published after CONNACK but before that is dropped by the broker, so "ready" waits for this.
        self.subscribed = asyncio.Event()
        self._sub_pending: dict[int, str] = {}  # paho thread: message id -> topic of a connect-time SUBSCRIBE
        self._sub_names: dict[int, str] = {}  # message id -> topic of a later SUBSCRIBE (for the refusal's log line)
        self.disconnected = asyncio.Event()  # set while not connected after a connection was up
        self._last_failure_log = 0.0
        self._lost_at: float | None = None
        self._up = False  # paho thread: the current connection got a CONNACK
        self.dropped = 0  # publishes dropped while disconnected (re-published on connect)
        self.refused_topics = 0
        self._generation = 0  # paho thread: counts connections, so an ack never goes to a later one
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg["client_id"],
                             clean_session=not cfg.get("persistent_session", False), manual_ack=True)
        if cfg["username"]:
            client.username_pw_set(cfg["username"], cfg["password"])
        context = tls_context(cfg)
        if context is not None:
            client.tls_set_context(context)
        if self.state_topic is not None:
            client.will_set(self.state_topic, "offline", qos=1, retain=True)
        client.connect_timeout = CONNECT_TIMEOUT
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        # No Nagle: the state message and the command result go out back to back, and the second
        # small write would wait ~40 ms for the broker's delayed ACK (measured in bench/latency.py).
        client.on_socket_open = _no_delay
        client.on_socket_close = self._on_socket_close
        self.client = client
        self._loop_thread: int | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._connecting: asyncio.Future[None] | None = None  # the blocking connect, in its own thread
        self._reading: int | None = None  # the socket's file descriptor while the loop reads it
        self._writing = False  # a writer is registered: the socket's send buffer was full
        self._closed = asyncio.Event()  # the socket was closed (connection lost or refused): reconnect
        self._backoff: float | None = None  # the next reconnect delay; None right after a CONNACK
        self._acked: dict[int, asyncio.Future[None]] = {}  # message id -> waiter for its PUBACK (stop())

    # -- public API (call from the event loop) ----------------------------------

    def on_connect(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` in the loop after every successful (re)connect."""
        self._connect_callbacks.append(callback)

    def subscribe(self, topic: str, callback: MessageCallback, qos: int = 1) -> None:
        if self._refused(topic, wildcards=True):
            return
        self._subscriptions[topic] = (qos, callback)
        # paho's state, not ours: between its CONNACK and our on-connect callbacks a new
        # subscription would otherwise be in neither the restored set nor sent.
        if self.client.is_connected():
            _, mid = self.client.subscribe(topic, qos)
            if mid is not None:
                self._sub_names[mid] = topic
            self._flush()

    def unsubscribe(self, topic: str) -> None:
        if self._subscriptions.pop(topic, None) is None:
            return
        if self.client.is_connected():
            self.client.unsubscribe(topic)
            self._flush()
        else:  # a persistent session would keep it at the broker: drop it when we are back
            self._stale.add(topic)

    def publish(self, topic: str, payload: str | bytes, retain: bool = False, qos: int = 0) -> None:
        """Publish now, or drop it while disconnected: every (re)connect re-publishes the whole state.
        From another thread (a log record published by BEMcom's log handler) it is handed to the loop,
        which alone drives paho's socket."""
        if self._loop_thread is not None and threading.get_ident() != self._loop_thread:
            try:
                self._loop.call_soon_threadsafe(self.publish, topic, payload, retain, qos)  # type: ignore[union-attr]
            except RuntimeError:  # the loop has ended (shutdown): nothing publishes any more
                self.dropped += 1
            return
        if self._refused(topic):
            return
        if not self.client.is_connected():
            self.dropped += 1
            return
        self.client.publish(topic, payload, qos=qos, retain=retain)  # written now when the socket takes it
        self._flush()

    def _refused(self, topic: str, wildcards: bool = False) -> bool:
        problem = publish_topic_problem(topic, wildcards)
        if problem is None:
            return False
        self.refused_topics += 1
        _LOGGER.error("refused to use MQTT topic %s (%s): the broker would drop the connection for it", printable(topic, 120), problem)
        return True

    async def start(self) -> None:
        """Connect in the background (and keep reconnecting); :attr:`connected` tells when it is up."""
        self._loop = self._loop or asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.client.connect_async(self.host, self.port, keepalive=self._keepalive)
        self._supervisor = asyncio.ensure_future(self._supervise())

    async def stop(self) -> None:
        """Publish 'offline' (a clean stop does not fire the last will), then disconnect."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        connecting = self._connecting
        if connecting is not None:  # a connect under way in its thread: let it end, then close that connection cleanly
            await asyncio.wait([connecting], timeout=CONNECT_TIMEOUT + 1)
            # its outcome does not matter any more (a failure was logged, or the lookup still hangs): retrieved, unread
            connecting.add_done_callback(lambda future: future.cancelled() or future.exception())
        if self.client.is_connected() and self.state_topic is not None:  # not our event: it may lag paho's CONNACK by a loop turn
            # Only now: with an on_publish callback paho builds a ReasonCode and Properties for every QoS 0 publish.
            self.client.on_publish = self._on_publish
            info = self.client.publish(self.state_topic, "offline", qos=1, retain=True)
            self._flush()
            if info.rc == mqtt.MQTT_ERR_SUCCESS and not info.is_published():
                acked = self._acked[info.mid] = asyncio.get_running_loop().create_future()
                await asyncio.wait([acked], timeout=3.0)
        self.client.disconnect()  # written at once; paho closes the socket once DISCONNECT is out
        self._flush()
        if self.client.socket() is not None and self._reading is not None:
            closed = asyncio.ensure_future(self._closed.wait())
            await asyncio.wait([closed], timeout=1.0)
            closed.cancel()
        self._stop_reading()

    # -- driving paho from the loop ------------------------------------------------

    async def _supervise(self) -> None:
        """Connect, keep the connection alive (PINGREQ, paho's keepalive check) and reconnect after a
        loss: 1 s, doubling to 10 s while attempts fail (Home Assistant's own interval), as paho did."""
        loop = asyncio.get_running_loop()
        while True:
            connecting = self._connecting = self._connect_in_thread()
            try:
                await asyncio.shield(connecting)  # stop() waits for a connect under way, so a cancel must not orphan it
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - refused, unreachable, DNS, TLS: log (rate-limited) and retry
                self._connecting = None
                self._on_connect_fail(err)
            else:
                self._connecting = None
                sock = self.client.socket()
                self._closed.clear()  # from here on only the loop closes this socket (paho, in loop_read/loop_misc)
                if sock is not None:
                    self._reading = sock.fileno()
                    loop.add_reader(self._reading, self._read)
                    self._flush()
                    while not self._closed.is_set():
                        try:
                            await asyncio.wait_for(self._closed.wait(), 1.0)
                        except asyncio.TimeoutError:
                            self.client.loop_misc()  # PINGREQ when due; closes a connection the broker stopped answering
                            self._flush()
            self._stop_reading()
            self._backoff = RECONNECT_MIN_DELAY if self._backoff is None else min(self._backoff * 2, RECONNECT_MAX_DELAY)
            await asyncio.sleep(self._backoff)

    def _connect_in_thread(self) -> asyncio.Future[None]:
        """paho's blocking connect (DNS, TCP, TLS handshake) in a daemon thread of its own. Not the loop's
        executor: its threads are joined when the loop closes, so a DNS lookup that hangs would hold up
        the exit after SIGTERM; stop() waits for a connect under way only a bounded time."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(error: Exception | None) -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        def connect() -> None:
            error: Exception | None = None
            try:
                self.client.reconnect()
            except Exception as err:  # noqa: BLE001 - handed to the loop, which logs it
                error = err
            try:
                loop.call_soon_threadsafe(settle, error)
            except RuntimeError:
                pass  # the loop has ended: nobody waits for this connect any more

        threading.Thread(target=connect, name="mqtt-connect", daemon=True).start()
        return done

    def _read(self) -> None:
        """The socket is readable: paho reads a packet (a lost connection is closed and reported by paho).
        More packets in the kernel's buffer keep the socket readable; what TLS already decrypted does not."""
        client = self.client
        for _ in range(1000):
            if client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                break
            sock = client.socket()
            if not isinstance(sock, ssl.SSLSocket) or not sock.pending():
                break
        self._flush()

    def _flush(self) -> None:
        """Write what paho queued inside its callbacks (SUBSCRIBE, PUBACK); wait for the socket only while it is full."""
        client = self.client
        if client.want_write():
            client.loop_write()
        if client.want_write() and self._reading is not None and self._loop is not None:
            if not self._writing:
                self._loop.add_writer(self._reading, self._flush)
                self._writing = True
        elif self._writing:
            self._stop_writing()

    def _stop_writing(self) -> None:
        if self._writing and self._reading is not None and self._loop is not None:
            self._loop.remove_writer(self._reading)
        self._writing = False

    def _stop_reading(self) -> None:
        self._stop_writing()
        if self._reading is not None and self._loop is not None:
            self._loop.remove_reader(self._reading)
        self._reading = None

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # paho closes the socket right after this: stop watching its descriptor before the number is reused.
        # In the connect thread paho only closes a socket the loop no longer watches (see _supervise).
        if threading.get_ident() == self._loop_thread:
            self._stop_reading()
            self._closed.set()

    def _soon(self, callback: Callable[..., None], *args: Any) -> None:
        """Run in the loop after paho's callback returns; paho calls back from the connect thread only on a failed connect."""
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            self._loop.call_soon(callback, *args)
        else:
            self._loop.call_soon_threadsafe(callback, *args)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        waiter = self._acked.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- paho callbacks (in the loop, from loop_read/loop_misc) -----------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            now = time.monotonic()
            if now - self._last_failure_log >= RETRY_LOG_INTERVAL:
                self._last_failure_log = now
                _LOGGER.error("MQTT broker %s:%d refused the connection: %s; retrying in the background", self.host, self.port, reason_code)
            return
        self._up = True
        self._generation += 1
        for topic in list(self._stale):
            self._stale.discard(topic)
            if topic not in self._subscriptions:
                client.unsubscribe(topic)
        pending: dict[int, str] = {}
        for topic, (qos, _) in list(self._subscriptions.items()):
            _, mid = client.subscribe(topic, qos)
            if mid is not None:
                pending[mid] = topic
        self._sub_pending, self._sub_names = pending, {}  # a new connection: earlier SUBACKs will not come
        if self.state_topic is not None:
            client.publish(self.state_topic, "online", qos=1, retain=True)
        self._backoff = None  # connected: the next loss retries after the shortest delay
        self._soon(self._connected_in_loop)
        if not pending:
            self._soon(self._subscribed_in_loop, self._generation)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        topic = self._sub_pending.pop(mid, None)
        name = topic or self._sub_names.pop(mid, None) or f"message {mid}"
        for code in reason_codes:
            if getattr(code, "is_failure", False):
                # An ACL that denies a topic: without this line commands would silently never arrive.
                _LOGGER.error("MQTT broker %s:%d refused the subscription to %s (%s): check the broker's ACL for this user",
                              self.host, self.port, printable(name, 120), code)
        if topic is not None and not self._sub_pending:
            self._soon(self._subscribed_in_loop, self._generation)

    def _subscribed_in_loop(self, generation: int) -> None:
        if generation == self._generation and self.connected.is_set():
            self.subscribed.set()

    def _connected_in_loop(self) -> None:
        if self._lost_at is None:
            _LOGGER.info("MQTT connected to %s:%d", self.host, self.port)
        else:
            _LOGGER.info("MQTT reconnected to %s:%d after %.1f s", self.host, self.port, time.monotonic() - self._lost_at)
        self._lost_at = None
        self._last_failure_log = 0.0
        self.disconnected.clear()
        self.connected.set()
        for callback in self._connect_callbacks:
            try:
                callback()
            except Exception:
                _LOGGER.exception("MQTT on-connect callback failed")

    def _on_connect_fail(self, err: Exception) -> None:
        now = time.monotonic()
        if now - self._last_failure_log >= RETRY_LOG_INTERVAL:
            self._last_failure_log = now
            if self.client._ssl:  # noqa: SLF001 - whether TLS was asked for
                _LOGGER.warning("cannot connect to the MQTT broker %s:%d over TLS (not reachable, or its certificate is not trusted: "
                                "see mqtt.ca_certs and mqtt.tls_insecure); retrying in the background", self.host, self.port)
            else:
                _LOGGER.warning("MQTT broker %s:%d is not reachable (%s); retrying in the background", self.host, self.port,
                                printable(str(err) or type(err).__name__, 120))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._soon(self._disconnected_in_loop)
        was_up, self._up = self._up, False
        if reason_code != 0 and was_up:  # a refused attempt was logged (rate-limited) by _on_connect
            _LOGGER.warning("MQTT connection to %s:%d lost (%s); reconnecting", self.host, self.port, reason_code)

    def _disconnected_in_loop(self) -> None:
        if self.connected.is_set():
            self._lost_at = time.monotonic()
        self.connected.clear()
        self.subscribed.clear()
        self.disconnected.set()
        for waiter in self._acked.values():  # no PUBACK comes on a lost connection
            if not waiter.done():
                waiter.set_result(None)
        self._acked.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        ack = _Ack(client, message.mid, message.qos, self._generation, self)
        try:
            topic = message.topic
        except UnicodeDecodeError:
            _LOGGER.warning("ignored an MQTT message whose topic is not UTF-8")
            ack()
            return
        self._soon(self._dispatch, topic, message.payload, ack, message.retain)

    def _dispatch(self, topic: str, payload: bytes, ack: Callable[[], None] = lambda: None, retain: bool = False) -> None:
        self.retained = bool(retain)  # the message being dispatched is a retained copy (callbacks may ask)
        pending: list[Awaitable[Any]] = []
        for pattern, (_, callback) in list(self._subscriptions.items()):
            if mqtt.topic_matches_sub(pattern, topic):
                try:
                    durable = callback(topic, payload)
                except Exception:
                    _LOGGER.exception("handling MQTT message on %s failed", printable(topic, 120))
                    continue
                if durable is not None:
                    pending.append(durable)
        if not pending:
            ack()
            return
        # Acknowledged when what the message asked for is safe (on disk), failed or not: an
        # unacknowledged message holds one of the broker's in-flight slots for us until we reconnect.
        asyncio.ensure_future(asyncio.gather(*pending, return_exceptions=True)).add_done_callback(lambda _: ack())


class _Ack:
    """Sends the PUBACK (QoS 1) or PUBCOMP (QoS 2) of one received message, once, on the
    connection that received it: after a reconnect the broker sends the message again itself."""

    __slots__ = ("client", "mid", "qos", "generation", "bridge", "done")

    def __init__(self, client: mqtt.Client, mid: int, qos: int, generation: int, bridge: MqttBridge) -> None:
        self.client, self.mid, self.qos, self.generation, self.bridge = client, mid, qos, generation, bridge
        self.done = qos == 0

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        if self.generation == self.bridge._generation and self.client.is_connected():  # noqa: SLF001
            self.client.ack(self.mid, self.qos)
            self.bridge._flush()  # noqa: SLF001


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # not a TCP socket (e.g. a Unix socket): nothing to tune
