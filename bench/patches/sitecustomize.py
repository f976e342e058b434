"""What-if patches for the service under benchmark, never for production.

``bench/latency.py --patch NAME`` / ``bench/throughput.py --patch NAME`` put this directory on
the service's PYTHONPATH and set BENCH_PATCHES=NAME[,NAME...]; Python imports this file at
start-up and applies the named patches, so a recommendation can be measured before anyone
changes ocpp_addon. Unknown names are reported on stderr and ignored.

* ``nodelay``: TCP_NODELAY on paho's MQTT socket (Nagle off), as asyncio already does for
  the chargers' WebSockets.
* ``paho_asyncio``: paho driven by the asyncio loop (add_reader/add_writer + loop_misc every
  second) instead of its network thread.
* ``mqtt_off``: MqttBridge.publish drops everything (a measuring stick for what the MQTT
  output costs; the bridge/state online message is still sent by paho's on_connect).
* ``gc_log``: log every garbage collection of the oldest generation that takes over 50 ms (a stall
  every charger's round trip sees) to stderr: ``bench gc: gen 2 took N ms, T tracked objects``.
* ``gc_freeze``: every 5 s, ``gc.freeze()`` what survived so far (the connected chargers' objects), so
  full collections walk only what is new. A what-if for the tail at 10,000 chargers: frozen objects
  that later become cyclic garbage (a charger that disconnects) are never collected.
* ``gc_default``: the service's GC housekeeping (ocpp_addon/gc_housekeeping.py) off: CPython's
  collector as it comes, to measure what the housekeeping changes.
"""

from __future__ import annotations

import os
import socket
import sys


def _nodelay() -> None:
    import paho.mqtt.client as client

    original = client.Client._create_socket_connection

    def create_socket_connection(self):  # type: ignore[no-untyped-def]
        sock = original(self)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return sock

    client.Client._create_socket_connection = create_socket_connection


def _paho_asyncio() -> None:
    """Run paho inside the asyncio loop (its documented external-loop API) instead of its own thread.

    Threaded paho costs, per publish, a wake-up byte on a socketpair (a syscall in the loop
    thread), a select() return and a send in the network thread, and GIL hand-offs between
    the two. In the loop, publish() writes straight to the socket when it can.
    Reconnects are simplified (every second while disconnected); fine for a benchmark.
    """
    import asyncio

    import paho.mqtt.client as mqtt
    from ocpp_addon import mqtt_bridge

    async def misc(self) -> None:  # type: ignore[no-untyped-def]
        client = self.client
        while True:
            await asyncio.sleep(1.0)
            if client.loop_misc() == mqtt.MQTT_ERR_NO_CONN:
                connect(self)

    def connect(self) -> None:  # type: ignore[no-untyped-def]
        try:
            self.client.reconnect()
        except OSError:
            self._on_connect_fail(self.client, None)

    async def start(self) -> None:  # type: ignore[no-untyped-def]
        loop = self._loop = self._loop or asyncio.get_running_loop()
        client = self.client

        def on_open(c, userdata, sock):  # type: ignore[no-untyped-def]
            loop.add_reader(sock, c.loop_read, 100)  # drain up to 100 packets per readiness (PUBACK bursts)

        def on_close(c, userdata, sock):  # type: ignore[no-untyped-def]
            loop.remove_reader(sock)
            loop.remove_writer(sock)

        def on_register_write(c, userdata, sock):  # type: ignore[no-untyped-def]
            loop.add_writer(sock, c.loop_write)

        def on_unregister_write(c, userdata, sock):  # type: ignore[no-untyped-def]
            loop.remove_writer(sock)

        client.on_socket_open = on_open
        client.on_socket_close = on_close
        client.on_socket_register_write = on_register_write
        client.on_socket_unregister_write = on_unregister_write
        client.connect_async(self.host, self.port, keepalive=self._keepalive)
        connect(self)
        self._bench_misc = asyncio.ensure_future(misc(self))

    async def stop(self) -> None:  # type: ignore[no-untyped-def]
        if self.client.is_connected():
            info = self.client.publish(self.state_topic, "offline", qos=1, retain=True)
            for _ in range(300):
                if info.is_published():
                    break
                await asyncio.sleep(0.01)
        self.client.disconnect()
        await asyncio.sleep(0.05)  # let loop_write send DISCONNECT
        self._bench_misc.cancel()

    mqtt_bridge.MqttBridge.start = start
    mqtt_bridge.MqttBridge.stop = stop


def _mqtt_off() -> None:
    """Drop every publish (the connection and subscriptions stay): what MQTT output costs in all."""
    from ocpp_addon import mqtt_bridge

    mqtt_bridge.MqttBridge.publish = lambda self, topic, payload, retain=False, qos=0: None


def _gc_log() -> None:
    """Time full collections: with thousands of connections each one walks every tracked object."""
    import gc
    import time

    started: list[float] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            took = 1000 * (time.perf_counter() - started[0])
            if took > 50:
                print(f"bench gc: gen 2 took {took:.0f} ms, {len(gc.get_objects())} tracked objects", file=sys.stderr, flush=True)

    gc.callbacks.append(callback)


def _gc_freeze() -> None:
    import gc
    import threading

    def freeze() -> None:  # from a timer thread: gc.freeze is a pointer move under the GIL
        gc.freeze()
        timer = threading.Timer(5.0, freeze)
        timer.daemon = True
        timer.start()

    freeze()


def _gc_default() -> None:
    from ocpp_addon import gc_housekeeping

    gc_housekeeping.GcHousekeeping.start = lambda self: None


_PATCHES = {"nodelay": _nodelay, "paho_asyncio": _paho_asyncio, "mqtt_off": _mqtt_off, "gc_log": _gc_log, "gc_freeze": _gc_freeze, "gc_default": _gc_default}

for _name in filter(None, os.environ.get("BENCH_PATCHES", "").split(",")):
    _patch = _PATCHES.get(_name.strip())
    if _patch is None:
        print(f"bench patches: unknown patch {_name!r}; known: {', '.join(_PATCHES)}", file=sys.stderr)
        continue
    _patch()
    print(f"bench patches: applied {_name}", file=sys.stderr)
