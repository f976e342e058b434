"""The deployment of DOCS.md's "several instances", on real parts, for tests/test_cluster.py.

* Two mosquitto nodes (Debian's package) made one cluster by a bridge: node 2 bridges ``#`` both ways
  to node 1, so subscriptions on either node see every message and retained messages reach both.
* HAProxy (Debian's package) in front of the instances: HTTP mode, ``balance uri`` with consistent
  hashing (the path is ``/<charge point id>``), health checks on ``GET /-/health``; and one TCP
  frontend per broker node that fails over to the other node, so an instance whose node dies reconnects
  to the surviving one with its own unchanged ``mqtt.host``.
* Instances are ``python -m ocpp_addon --config <yaml>`` with the YAML that DOCS.md shows an operator:
  ``instance_id``, ``data_dir``, ``ocpp`` listen address, ``mqtt`` host and port. Nothing else.

The configuration texts are the ones in docs/cluster/ with the addresses filled in (the test checks).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "docs" / "cluster"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


def render(template: str, values: dict[str, object]) -> str:
    """The docs' config files use ``${NAME}`` for what differs between deployments."""
    text = (TEMPLATES / template).read_text()
    for key, value in values.items():
        text = text.replace("${" + key + "}", str(value))
    unfilled = [line for line in text.splitlines() if "${" in line and not line.lstrip().startswith("#")]
    if unfilled:
        raise ValueError(f"{template}: unfilled placeholder in {unfilled[0]!r}")
    return text


class Process:
    """A child process whose output goes to a log file; ``wait_for_line`` waits on what it printed."""

    def __init__(self, name: str, command: list[str], log: Path, cwd: Path | None = None) -> None:
        self.name = name
        self.log = log
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self._file = log.open("w")
        self.popen = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      cwd=cwd, start_new_session=True)
        threading.Thread(target=self._read, name=f"log-{name}", daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._file.write(line)
            self._file.flush()
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for_line(self, marker: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((line for line in self._lines if marker in line), None)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    break
                self._changed.wait(remaining)
        raise RuntimeError(f"{self.name}: no line with {marker!r} within {timeout:.0f}s; its log ends:\n{self.tail()}")

    def lines(self, marker: str) -> list[str]:
        with self._changed:
            return [line for line in self._lines if marker in line]

    def tail(self, n: int = 30) -> str:
        with self._changed:
            return "".join(self._lines[-n:])

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no last words (the broker's last will speaks for an instance)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._file.close()


@dataclass
class Cluster:
    """Addresses and processes of one deployment under ``workdir``."""

    workdir: Path
    host: str = "127.0.0.1"
    instances: dict[str, Process] = field(default_factory=dict)
    nodes: dict[str, Process] = field(default_factory=dict)
    haproxy: Process | None = None
    node_ports: dict[str, int] = field(default_factory=dict)  # node name -> its own MQTT port
    mqtt_frontends: dict[str, int] = field(default_factory=dict)  # node name -> HAProxy port preferring that node
    instance_ports: dict[str, int] = field(default_factory=dict)
    ocpp_port: int = 0  # HAProxy's WebSocket frontend: what the chargers are given

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.ocpp_port}"

    def plan(self, instance_ids: list[str], node_names: list[str]) -> None:
        self.node_ports = {name: free_port(self.host) for name in node_names}
        self.mqtt_frontends = {name: free_port(self.host) for name in node_names}
        self.instance_ports = {name: free_port(self.host) for name in instance_ids}
        self.ocpp_port = free_port(self.host)

    def start_nodes(self) -> None:
        first, *others = list(self.node_ports)
        for name, port in self.node_ports.items():
            values = {"LISTEN_ADDRESS": self.host, "LISTEN_PORT": port, "NODE": name,
                      "PEER_ADDRESS": f"{self.host}:{self.node_ports[first]}"}
            template = "mosquitto-node1.conf" if name == first else "mosquitto-node2.conf"
            conf = self.workdir / f"{name}.conf"
            conf.write_text(render(template, values))
            self.nodes[name] = Process(name, [mosquitto_binary() or "mosquitto", "-c", str(conf)], self.workdir / f"{name}.log")
        for name, process in self.nodes.items():
            wait_port(self.host, self.node_ports[name], process)
        for name in others:
            wait_bridged(self.host, self.node_ports[name], self.node_ports[first], self.nodes[name])

    def start_haproxy(self) -> None:
        names = list(self.node_ports)
        servers = "\n".join(f"    server {name} {self.host}:{port} check"
                            for name, port in self.instance_ports.items())
        values = {"OCPP_BIND": f"{self.host}:{self.ocpp_port}", "INSTANCE_SERVERS": servers.lstrip(),
                  "NODE1": f"{self.host}:{self.node_ports[names[0]]}", "NODE2": f"{self.host}:{self.node_ports[names[1]]}",
                  "MQTT_NODE1_BIND": f"{self.host}:{self.mqtt_frontends[names[0]]}",
                  "MQTT_NODE2_BIND": f"{self.host}:{self.mqtt_frontends[names[1]]}"}
        conf = self.workdir / "haproxy.cfg"
        conf.write_text(render("haproxy.cfg", values))
        check = subprocess.run([haproxy_binary() or "haproxy", "-c", "-f", str(conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c: {check.stdout}{check.stderr}")
        self.haproxy = Process("haproxy", [haproxy_binary() or "haproxy", "-db", "-f", str(conf)], self.workdir / "haproxy.log")
        wait_port(self.host, self.ocpp_port, self.haproxy)

    def instance_config(self, instance_id: str, node: str) -> dict[str, object]:
        """Exactly the keys DOCS.md's compose example gives each instance."""
        return {
            "instance_id": instance_id,
            "data_dir": str(self.workdir / f"data-{instance_id}"),
            "ocpp": {"host": self.host, "port": self.instance_ports[instance_id]},
            "mqtt": {"host": self.host, "port": self.mqtt_frontends[node]},
        }

    def start_instance(self, instance_id: str, node: str) -> Process:
        path = self.workdir / f"instance-{instance_id}.yaml"
        path.write_text(yaml.safe_dump(self.instance_config(instance_id, node)))
        process = Process(f"instance-{instance_id}", [sys.executable, "-m", "ocpp_addon", "--config", str(path)],
                          self.workdir / f"instance-{instance_id}.log", cwd=self.workdir)
        self.instances[instance_id] = process
        return process

    def stop(self) -> None:
        for process in [*self.instances.values(), *([self.haproxy] if self.haproxy else []), *self.nodes.values()]:
            try:
                process.stop()
            except Exception:  # noqa: BLE001 - tear down the rest
                pass


def wait_bridged(host: str, from_port: int, to_port: int, process: Process, timeout: float = 20.0) -> None:
    """Until a message published on one node reaches a subscriber on the other (the bridge is up)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    arrived, subscribed = threading.Event(), threading.Event()
    listener = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bridge-check-{to_port}")
    listener.on_message = lambda *args: arrived.set()
    listener.on_subscribe = lambda *args: subscribed.set()
    listener.connect(host, to_port)
    listener.loop_start()
    talker = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bridge-check-{from_port}")
    talker.connect(host, from_port)
    talker.loop_start()
    try:
        listener.subscribe("cluster-check/bridge", 1)
        subscribed.wait(10)
        deadline = time.monotonic() + timeout
        while not arrived.is_set():  # publishes before the bridge is up are not forwarded: repeat them
            if time.monotonic() > deadline:
                raise RuntimeError(f"{process.name}: its bridge forwards nothing after {timeout:.0f}s; its log ends:\n{process.tail()}")
            talker.publish("cluster-check/bridge", "1", qos=1)
            arrived.wait(0.2)
    finally:
        for client in (listener, talker):
            client.disconnect()
            client.loop_stop()


def wait_port(host: str, port: int, process: Process, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if process.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{process.name} does not listen on {host}:{port}; its log ends:\n{process.tail()}") from None
            time.sleep(0.05)  # polling a port that has no event to wait on
