"""Chargers that stay connected, for tests/test_cluster.py: worker processes (so the test's own loop is
not the bottleneck) running bench/common.py's raw-websocket chargers, each reconnecting after a random
1-3 s when its connection drops, as a real charger does. Every connection attempt, every connection and
every SetChargingProfile is reported to the test through a queue."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
import random
import sys
import threading
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
RECONNECT_DELAY = (1.0, 3.0)  # seconds a charger waits before it reconnects


def profile_limit(payload: dict[str, Any]) -> float | None:
    try:
        return float(payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _worker_entry(ids: list[str], url: str, out: Any, stop: Any) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    asyncio.run(_worker(ids, url, out, stop))


async def _worker(ids: list[str], url: str, out: Any, stop: Any) -> None:
    from common import FakeCharger, FleetStats  # bench/common.py

    stats = FleetStats()
    stopping = asyncio.Event()
    live: dict[str, Any] = {}

    async def keep_connected(cid: str) -> None:
        connects = attempts = 0
        await asyncio.sleep(random.uniform(0, 2))  # chargers do not all power up in the same millisecond
        while not stopping.is_set():
            attempts += 1
            out.put(("attempt", cid, attempts))
            charger = FakeCharger(cid, url, stats, timeout=20,
                                  on_profile=lambda _t, payload: out.put(("profile", cid, profile_limit(payload))))
            live[cid] = charger
            try:
                await charger.connect(open_timeout=10)
                booted = await charger.boot()
            except Exception:  # noqa: BLE001 - refused or dropped during the handshake: try again later
                booted = False
            if booted:
                connects += 1
                out.put(("up", cid, connects))
                if charger._reader is not None:  # noqa: SLF001 - ends when the connection does
                    await asyncio.wait([charger._reader, asyncio.ensure_future(stopping.wait())],
                                       return_when=asyncio.FIRST_COMPLETED)
            await charger.close()
            if stopping.is_set():
                break
            out.put(("down", cid, connects))
            try:  # the charger's own reconnect back-off, not a synchronisation
                await asyncio.wait_for(stopping.wait(), random.uniform(*RECONNECT_DELAY))
            except asyncio.TimeoutError:
                pass

    async def watch_stop() -> None:
        await asyncio.to_thread(stop.wait)
        stopping.set()

    watcher = asyncio.ensure_future(watch_stop())
    await asyncio.gather(*(keep_connected(cid) for cid in ids))
    watcher.cancel()
    out.put(("closed", None, None))


class ClusterFleet:
    """``count`` chargers ``cp000``... in ``workers`` processes. ``on_report(kind, cid, value)`` runs in
    the caller's event loop for every report."""

    def __init__(self, url: str, count: int, on_report: Callable[[str, str, Any], None],
                 loop: asyncio.AbstractEventLoop, workers: int = 2) -> None:
        self.ids = [f"cp{i:03d}" for i in range(count)]
        ctx = mp.get_context("spawn")
        self.out = ctx.Queue()
        self.stop_event = ctx.Event()
        self.processes = [ctx.Process(target=_worker_entry, args=(self.ids[w::workers], url, self.out, self.stop_event),
                                      name=f"cluster-fleet-{w}", daemon=True) for w in range(workers)]
        self.loop = loop
        self.on_report = on_report
        self._closed = 0
        self._drain = threading.Thread(target=self._drain_queue, name="cluster-fleet-drain", daemon=True)

    def start(self) -> None:
        for process in self.processes:
            process.start()
        self._drain.start()

    def _drain_queue(self) -> None:
        while self._closed < len(self.processes):
            try:
                kind, cid, value = self.out.get(timeout=0.5)
            except queue.Empty:
                if not any(p.is_alive() for p in self.processes):
                    return
                continue
            if kind == "closed":
                self._closed += 1
                continue
            self.loop.call_soon_threadsafe(self.on_report, kind, cid, value)

    def stop(self) -> None:
        self.stop_event.set()
        for process in self.processes:
            process.join(20)
            if process.is_alive():
                process.terminate()
                process.join(5)
        self._drain.join(5)
