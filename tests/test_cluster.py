"""Beyond one machine, on real parts: 3 instances behind HAProxy on a 2-node mosquitto cluster, 300 chargers.

Everything is real and started here: two mosquitto nodes bridged into one cluster, HAProxy balancing
the chargers' WebSocket connections by charge point id (consistent hashing, health checks) and giving
each instance a preferred broker node with fail-over, three ``python -m ocpp_addon`` processes configured
exactly as DOCS.md's example, and 300 raw-websocket chargers in worker processes that reconnect like
real ones. Home Assistant's view is a subscriber on node 1. Faults are SIGKILLs.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from .cluster import Cluster, haproxy_binary, mosquitto_binary
from .cluster_fleet import ClusterFleet

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]

CHARGERS = 300
INSTANCES = {"a": "node1", "b": "node2", "c": "node1"}  # instance -> the broker node it prefers
NODES = ["node1", "node2"]
SETTLE = 120.0  # upper bound for any phase to complete; the measured times are printed


class BrokerView:
    """A subscriber to ``#`` on one node: the latest payload of every topic, and waits on changes."""

    def __init__(self, name: str, port: int, loop: asyncio.AbstractEventLoop, subscribe: bool = True) -> None:
        self.name = name
        self.loop = loop
        self.latest: dict[str, bytes] = {}
        self.counts: dict[str, int] = {}
        self.discoveries: dict[str, list[bytes]] = {}  # every discovery message, not only the latest
        self._changed = asyncio.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-view-{name}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if subscribe:
            self.client.subscribe("#", 1)

    async def ready(self) -> None:
        assert await asyncio.to_thread(self._subscribed.wait, 10), f"{self.name}: no SUBACK"

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.loop.call_soon_threadsafe(self._record, msg.topic, msg.payload)

    def _record(self, topic: str, payload: bytes) -> None:
        self.latest[topic] = payload
        self.counts[topic] = self.counts.get(topic, 0) + 1
        if topic.startswith("homeassistant/device/"):
            self.discoveries.setdefault(topic, []).append(payload)
        asyncio.ensure_future(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def json(self, topic: str) -> Any:
        try:
            return json.loads(self.latest[topic])
        except (KeyError, ValueError):
            return None

    def publish(self, topic: str, payload: str, retain: bool = True) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=1, retain=retain)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Charges:
    """What the chargers reported: connections, and the limit of the last SetChargingProfile each got."""

    def __init__(self) -> None:
        self.limits: dict[str, float | None] = {}
        self.connects: dict[str, int] = {}
        self.attempts: dict[str, int] = {}  # connection attempts, failed ones included
        self.up: set[str] = set()
        self._changed = asyncio.Condition()

    def report(self, kind: str, cid: str, value: Any) -> None:
        if kind == "profile":
            self.limits[cid] = value
        elif kind == "attempt":
            self.attempts[cid] = value
        elif kind == "up":
            self.connects[cid] = value
            self.up.add(cid)
        elif kind == "down":
            self.up.discard(cid)
        asyncio.ensure_future(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


async def wait_until(conditions: list[asyncio.Condition], predicate: Callable[[], bool], what: Callable[[], str],
                     timeout: float = SETTLE) -> float:
    """Wait (on arrivals, never sleeping) until ``predicate()``; return the seconds it took."""
    start = time.monotonic()
    while not predicate():
        waits = [asyncio.ensure_future(_wait_once(c)) for c in conditions]
        done, pending = await asyncio.wait(waits, timeout=max(0.0, timeout - (time.monotonic() - start)),
                                           return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if not done and not predicate():
            raise AssertionError(f"not within {timeout:.0f}s: {what()}")
    return time.monotonic() - start


async def _wait_once(condition: asyncio.Condition) -> None:
    async with condition:
        await condition.wait()


def setpoint(phase: int, index: int) -> float:
    """Distinct per phase and spread over chargers, all within 6-32 A."""
    return float((10, 16, 24)[phase] + index % 5)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    missing = [name for name, found in (("haproxy", haproxy_binary()), ("mosquitto", mosquitto_binary())) if not found]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not installed: bash scripts/ensure-cluster.sh installs them (scripts/test.sh does)")
    deployment = Cluster(tmp_path)
    deployment.plan(list(INSTANCES), NODES)
    try:
        deployment.start_nodes()
        deployment.start_haproxy()
        for instance_id, node in INSTANCES.items():
            deployment.start_instance(instance_id, node)
        for process in deployment.instances.values():
            await asyncio.to_thread(process.wait_for_line, " ready: ", 60)
        yield deployment
    finally:
        deployment.stop()


async def test_instances_behind_haproxy_on_a_broker_cluster(cluster: Cluster) -> None:
    loop = asyncio.get_running_loop()
    ha = BrokerView("ha-node1", cluster.node_ports["node1"], loop)  # Home Assistant's subscriber, on node 1
    other = BrokerView("pub-node2", cluster.node_ports["node2"], loop, subscribe=False)
    await ha.ready()
    charges = Charges()
    fleet = ClusterFleet(cluster.url, CHARGERS, charges.report, loop)
    ids = fleet.ids
    index = {cid: i for i, cid in enumerate(ids)}
    both = [ha._changed, charges._changed]  # noqa: SLF001
    timings: dict[str, float] = {}

    def owner(cid: str) -> str | None:
        data = ha.json(f"ocpp/{cid}/connection")
        return data.get("instance") if isinstance(data, dict) else None

    def discovery(cid: str) -> Any:
        return ha.json(f"homeassistant/device/{cid}/config")

    def available(cid: str) -> bool:
        """As Home Assistant decides it: every availability topic of the charger's discovery says online."""
        disco = discovery(cid)
        if not isinstance(disco, dict):
            return False
        topics = [entry["topic"] for entry in disco.get("availability", [])]
        return bool(topics) and all(ha.latest.get(t) == b"online" for t in topics)

    def accepted(cid: str) -> float | None:
        state = ha.json(f"ocpp/{cid}/state")
        return state.get("charging_limit") if isinstance(state, dict) else None

    def publish_setpoints(phase: int, chargers: list[str], on_both_nodes: bool) -> None:
        infos = []
        for cid in chargers:
            view = other if on_both_nodes and index[cid] % 2 else ha  # "published on any node"
            infos.append(view.publish(f"ocpp/{cid}/charging_limit/set", f"{setpoint(phase, index[cid]):g}"))
        for info in infos:
            info.wait_for_publish(10)

    def reached(phase: int, chargers: list[str]) -> Callable[[], bool]:
        return lambda: all(charges.limits.get(c) == setpoint(phase, index[c]) and accepted(c) == setpoint(phase, index[c])
                           for c in chargers)

    def missing(phase: int, chargers: list[str]) -> Callable[[], str]:
        def describe() -> str:
            wrong = [(c, charges.limits.get(c), accepted(c), owner(c)) for c in chargers
                     if not (charges.limits.get(c) == setpoint(phase, index[c]) and accepted(c) == setpoint(phase, index[c]))]
            return f"{len(wrong)} chargers without setpoint {phase} (charger got, HA shows, owner): {wrong[:8]}"
        return describe

    fleet.start()
    try:
        # -- every charger connected through HAProxy, discovered once, online, owned by one instance
        timings["connect+discover 300"] = await wait_until(
            both, lambda: all(available(c) and owner(c) in INSTANCES for c in ids) and len(charges.up) == CHARGERS,
            lambda: f"{sum(available(c) for c in ids)} available, {sum(owner(c) in INSTANCES for c in ids)} owned, "
                    f"{len(charges.up)} connected; instance logs:\n"
                    + "\n".join(p.tail(5) for p in cluster.instances.values()))
        devices = sorted(t.split("/")[2] for t in ha.latest if t.startswith("homeassistant/device/") and not t.split("/")[2].startswith("ocpp_bridge"))
        assert devices == ids  # one device per charger, no duplicates under other names
        # announced by the instance that holds it only (an instance re-sends its own discovery when the
        # charger's boot adds device facts); no other instance and no broker node announced it again
        announcers = {c: {entry["topic"] for payload in ha.discoveries[f"homeassistant/device/{c}/config"]
                          for entry in json.loads(payload)["availability"] if entry["topic"].startswith("ocpp/bridge/")}
                      for c in ids}
        assert all(announcers[c] == {f"ocpp/bridge/{owner(c)}/state"} for c in ids), \
            {c: a for c, a in announcers.items() if a != {f"ocpp/bridge/{owner(c)}/state"}}
        unique_ids = [comp["unique_id"] for c in ids for comp in discovery(c)["components"].values()]
        assert len(unique_ids) == len(set(unique_ids))
        spread = {i: sum(owner(c) == i for c in ids) for i in INSTANCES}
        assert all(spread.values()), spread  # the hash put chargers on every instance
        for instance_id in INSTANCES:
            assert ha.latest.get(f"ocpp/bridge/{instance_id}/state") == b"online"

        # -- a setpoint published on either node reaches the right charger and comes back accepted
        publish_setpoints(0, ids, on_both_nodes=True)
        timings["setpoints on both nodes -> 300 chargers"] = await wait_until(both, reached(0, ids), missing(0, ids))

        # -- kill instance a: its chargers move to b and c, setpoints sent meanwhile arrive, nothing stale
        victims = [c for c in ids if owner(c) == "a"]
        stayed = [c for c in ids if owner(c) != "a"]
        attempts_before = {c: charges.attempts[c] for c in victims}
        kill_at = time.monotonic()
        cluster.instances["a"].kill()
        publish_setpoints(1, victims, on_both_nodes=True)
        timings[f"instance a killed -> its {len(victims)} chargers moved"] = await wait_until(
            both, lambda: all(owner(c) in ("b", "c") and available(c) for c in victims),
            lambda: f"{sum(owner(c) in ('b', 'c') for c in victims)}/{len(victims)} moved, "
                    f"{sum(available(c) for c in victims)} available")
        timings["... and got the setpoint sent during the move"] = await wait_until(both, reached(1, victims), missing(1, victims))
        timings["... total since the kill"] = time.monotonic() - kill_at
        assert ha.latest.get("ocpp/bridge/a/state") == b"offline"  # its last will
        assert not [c for c in ids if "ocpp/bridge/a/state" in json.dumps(discovery(c)["availability"])]
        assert all(available(c) for c in ids)  # no charger left pointing at the dead instance
        assert all(charges.connects.get(c) == 1 for c in stayed)  # consistent hashing moved only a's chargers
        # within the chargers' reconnect time: each one's first attempt after the drop was taken (HAProxy
        # redispatches a connection the dead instance refuses), no charger had to wait for a second back-off
        retried = {c: charges.attempts[c] - attempts_before[c] for c in victims if charges.attempts[c] - attempts_before[c] != 1}
        assert not retried, f"chargers that needed more than one reconnect attempt to move: {retried}"

        # -- kill broker node 2: its instance fails over to node 1; setpoints published there all arrive
        on_node2 = [c for c in ids if INSTANCES[owner(c) or "a"] == "node2"]
        kill_at = time.monotonic()
        cluster.nodes["node2"].kill()
        publish_setpoints(2, ids, on_both_nodes=False)
        timings[f"node2 killed -> setpoints reached all 300 ({len(on_node2)} via the failed-over instance)"] = \
            await wait_until(both, reached(2, ids), missing(2, ids))
        assert all(available(c) for c in ids)
        assert all(owner(c) in ("b", "c") for c in ids)
        assert all(charges.connects.get(c) == 1 for c in stayed)  # a broker fault does not drop chargers

        # -- stop instance c as an operator does (SIGTERM, e.g. an update): its chargers move to b and
        # none is left 'offline' by c's goodbye after b has announced it online
        leaving = [c for c in ids if owner(c) == "c"]
        await asyncio.to_thread(cluster.instances["c"].stop)
        timings[f"instance c stopped -> its {len(leaving)} chargers on b"] = await wait_until(
            both, lambda: all(owner(c) == "b" and available(c) and charges.limits.get(c) == setpoint(2, index[c]) for c in leaving),
            lambda: f"{sum(owner(c) == 'b' for c in leaving)}/{len(leaving)} on b, {sum(available(c) for c in leaving)} available")
        assert ha.latest.get("ocpp/bridge/c/state") == b"offline"
        assert all(available(c) for c in ids)
    finally:
        fleet.stop()
        ha.close()
        other.close()
        print("\ncluster timings (s): " + ", ".join(f"{k}: {v:.1f}" for k, v in timings.items()))
