"""GC housekeeping (ocpp_addon/gc_housekeeping.py): freeze what survived, thaw and collect once an hour."""

from __future__ import annotations

import asyncio
import gc

from ocpp_addon.gc_housekeeping import GcHousekeeping, GcOps


class FakeCollector:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def ops(self) -> GcOps:
        return GcOps(freeze=lambda: self.calls.append("freeze"), unfreeze=lambda: self.calls.append("unfreeze"),
                     collect=lambda: self.calls.append("collect") or 0, frozen=lambda: 0)


def test_freezes_every_tick_and_thaws_and_collects_once_per_thaw_interval() -> None:
    now = [0.0]
    collector = FakeCollector()
    housekeeping = GcHousekeeping(freeze_interval=10, thaw_interval=3600, ops=collector.ops(), clock=lambda: now[0])
    for _ in range(360):  # one hour of ticks
        housekeeping.tick()
        now[0] += 10
    assert collector.calls == ["freeze"] * 360
    housekeeping.tick()  # 3600 s after the first
    assert collector.calls[360:] == ["unfreeze", "collect", "freeze"]
    now[0] += 10
    housekeeping.tick()
    assert collector.calls[363:] == ["freeze"]


def test_stop_thaws_so_nothing_stays_frozen() -> None:
    collector = FakeCollector()
    housekeeping = GcHousekeeping(ops=collector.ops())
    housekeeping.tick()
    housekeeping.stop()
    assert collector.calls == ["freeze", "unfreeze"]


async def test_runs_on_the_event_loop_with_the_real_collector() -> None:
    """With the interpreter's own gc: objects alive at a tick are frozen, and stop() puts them back."""
    housekeeping = GcHousekeeping(freeze_interval=0.01)
    ticked = asyncio.Event()
    original_run = housekeeping._run

    def run() -> None:
        original_run()
        ticked.set()

    housekeeping._run = run  # type: ignore[method-assign]
    housekeeping.start()
    try:
        await asyncio.wait_for(ticked.wait(), 5)
        assert gc.get_freeze_count() > 0
    finally:
        housekeeping.stop()
    assert gc.get_freeze_count() == 0
