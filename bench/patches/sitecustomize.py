"""What-if patches for the service under benchmark, never for production.

``bench/latency.py --patch NAME`` / ``bench/throughput.py --patch NAME`` put this directory on
the service's PYTHONPATH and set BENCH_PATCHES=NAME[,NAME...]; Python imports this file at
start-up and applies the named patches, so a recommendation can be measured before anyone
changes ocpp_addon. Unknown names are reported on stderr and ignored.

* ``nodelay``: TCP_NODELAY on paho's MQTT socket (Nagle off), as asyncio already does for
  the chargers' WebSockets.
* ``mqtt_off``: MqttBridge.publish drops everything (a measuring stick for what the MQTT
  output costs; the bridge/state online message is still sent by paho's on_connect).
* ``gc_log``: log every garbage collection of the oldest generation that takes over 50 ms (a stall
  every charger's round trip sees) to stderr: ``bench gc: gen 2 took N ms, T tracked objects``.
* ``gc_freeze``: every 5 s, ``gc.freeze()`` what survived so far (the connected chargers' objects), so
  full collections walk only what is new. A what-if for the tail at 10,000 chargers: frozen objects
  that later become cyclic garbage (a charger that disconnects) are never collected.
* ``gc_default``: the service's GC housekeeping (ocpp_addon/gc_housekeeping.py) off: CPython's
  collector as it comes, to measure what the housekeeping changes.
* ``route_timer``: every 2 s, append to ``/tmp/route_timer.txt`` the frames routed so far, the wall time
  spent inside ``ChargePoint.route_message`` (reading, handling, answering a frame) and the process CPU
  time: what share of a message's CPU is the service's own handling, and what the transport around it.
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


def _route_timer() -> None:
    import threading
    import time

    from ocpp_addon import charge_point

    original = charge_point.ChargePoint.route_message
    totals = [0, 0]

    async def route_message(self, raw_msg):  # type: ignore[no-untyped-def]
        started = time.perf_counter_ns()
        await original(self, raw_msg)
        totals[0] += 1
        totals[1] += time.perf_counter_ns() - started

    charge_point.ChargePoint.route_message = route_message

    def dump() -> None:
        while True:
            time.sleep(2)
            with open("/tmp/route_timer.txt", "a") as handle:
                handle.write(f"{time.time():.1f} {totals[0]} {totals[1]} {time.process_time():.3f}\n")

    threading.Thread(target=dump, daemon=True).start()


_PATCHES = {"nodelay": _nodelay, "mqtt_off": _mqtt_off, "gc_log": _gc_log, "gc_freeze": _gc_freeze, "gc_default": _gc_default,
            "route_timer": _route_timer}

for _name in filter(None, os.environ.get("BENCH_PATCHES", "").split(",")):
    _patch = _PATCHES.get(_name.strip())
    if _patch is None:
        print(f"bench patches: unknown patch {_name!r}; known: {', '.join(_PATCHES)}", file=sys.stderr)
        continue
    _patch()
    print(f"bench patches: applied {_name}", file=sys.stderr)
