"""Durable before acknowledged: kill the service with SIGKILL right after the broker took a setpoint.

Each round publishes a new setpoint (QoS 1) for an offline, known charger, kills the service
0-200 ms later (half the rounds in the first 4 ms, while the write is under way), reads the state
file, restarts the service and waits for a barrier setpoint. A setpoint counts as kept when it was
on disk at the kill or the broker delivered it again after the restart; otherwise it was lost.

    .venv/bin/python bench/kill_loop.py [--kills 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import free_port, git_revision, machine_description, start_broker, workdir  # noqa: E402

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from ocpp_addon.simulator import SimOptions, connect  # noqa: E402


class Probe:
    def __init__(self, port: int, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.messages = loop, []
        self.arrived = asyncio.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"kill-loop-{time.time_ns()}")
        self.client.on_message = lambda c, u, m: loop.call_soon_threadsafe(self._add, m.topic, m.payload)
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("ocpp/#", 1)
        self.client.loop_start()

    def _add(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))
        self.arrived.set()

    async def wait(self, topic: str, match, since: int, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            if any(t == topic and match(p) for t, p in self.messages[since:]):
                return
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), max(0.01, deadline - time.monotonic()))

    def publish(self, topic: str, payload: str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)


async def start(config: Path, cwd: Path) -> tuple[asyncio.subprocess.Process, float]:
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ocpp_addon", "--config", str(config),
                                                stderr=asyncio.subprocess.PIPE, cwd=cwd)
    assert proc.stderr is not None
    while b"ready:" not in await asyncio.wait_for(proc.stderr.readline(), 20):
        pass
    asyncio.ensure_future(proc.stderr.read())
    return proc, time.monotonic() - t0


def stored(data: Path) -> float | None:
    try:
        return json.loads((data / "state.json").read_text())["chargers"].get("wallbox-1", {}).get("requested_limit")
    except FileNotFoundError:
        return None


def queued(payload: bytes, limit: float) -> bool:
    data = json.loads(payload)
    return data.get("status") == "Queued" and data.get("limit") == limit


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=200)
    args = parser.parse_args()
    work = workdir("kill-loop")
    broker = await start_broker(work)
    ocpp_port = free_port()
    config = work / "config.yaml"
    import yaml
    config.write_text(yaml.safe_dump({"data_dir": str(work / "data"), "ocpp": {"host": "127.0.0.1", "port": ocpp_port},
                                      "mqtt": {"host": "127.0.0.1", "port": broker.port}}))
    probe = Probe(broker.port, asyncio.get_running_loop())
    try:
        proc, _ = await start(config, work)
        for cid in ("wallbox-1", "sentinel"):
            sim, task = await connect(f"ws://127.0.0.1:{ocpp_port}", cid, SimOptions(meter_interval=0))
            await asyncio.wait_for(sim.booted.wait(), 20)
            await sim._connection.close()
            await task
        rng = random.Random(7)
        on_disk = redelivered = 0
        lost: list[float] = []
        starts: list[float] = []
        for n in range(args.kills):
            value = 6 + n % 25 + (0.5 if n % 2 else 0.0)
            probe.publish("ocpp/wallbox-1/charging_limit/set", str(value))
            await asyncio.sleep(rng.uniform(0, 0.004) if n % 2 else rng.uniform(0, 0.2))
            mark = len(probe.messages)
            proc.kill()
            await proc.wait()
            kept = stored(work / "data") == value
            await probe.wait("ocpp/bridge/state", lambda p: p == b"offline", mark)
            proc, took = await start(config, work)
            starts.append(took)
            sentinel = 6 + n % 10
            probe.publish("ocpp/sentinel/charging_limit/set", str(sentinel))
            await probe.wait("ocpp/sentinel/event", lambda p, s=sentinel: queued(p, s), mark)
            if kept:
                on_disk += 1
            elif any(t == "ocpp/wallbox-1/event" and queued(p, value) for t, p in probe.messages[mark:]):
                redelivered += 1
            else:
                lost.append(value)
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        print(f"machine: {machine_description()}; code: {git_revision()}")
        print(f"kills: {args.kills}; setpoint on disk at the kill: {on_disk}; delivered again after the restart: {redelivered}; "
              f"lost: {len(lost)}")
        print(f"restart to ready: p50 {sorted(starts)[len(starts) // 2]:.2f} s, max {max(starts):.2f} s")
    finally:
        probe.client.loop_stop()
        await broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
