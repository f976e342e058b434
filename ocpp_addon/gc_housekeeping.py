"""Garbage collection for thousands of long-lived connections.

CPython's full collection walks every object it tracks. Most of them belong to the chargers'
connections, which live for days: at 10,000 chargers about 1.65 million objects, 1.2-1.4 s per full
collection, about every 15 s under load, and no charger is answered meanwhile (measured with
``bench/throughput.py --patch gc_log``). So every ``freeze_interval`` what survived so far moves to
the permanent generation (``gc.freeze``), which collections skip: they walk only what is new. Frozen
objects that later become cyclic garbage (the connection of a charger that left) would never be
freed, so every ``thaw_interval`` they are put back and collected once: one long pause an hour instead
of four a minute, and garbage held at most that long.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

_LOGGER = logging.getLogger(__name__)

FREEZE_INTERVAL = 2.0
THAW_INTERVAL = 3600.0


@dataclass
class GcOps:
    """The interpreter's collector; replaced by fakes in tests."""

    freeze: Callable[[], None] = gc.freeze
    unfreeze: Callable[[], None] = gc.unfreeze
    collect: Callable[[], int] = gc.collect
    frozen: Callable[[], int] = gc.get_freeze_count


@dataclass
class GcHousekeeping:
    freeze_interval: float = FREEZE_INTERVAL
    thaw_interval: float = THAW_INTERVAL
    ops: GcOps = field(default_factory=GcOps)
    clock: Callable[[], float] = time.monotonic
    _thawed_at: float | None = None
    _handle: asyncio.TimerHandle | None = None

    def tick(self) -> None:
        """Freeze what survived; once per ``thaw_interval`` first thaw and collect everything."""
        now = self.clock()
        if self._thawed_at is None:
            self._thawed_at = now
        elif now - self._thawed_at >= self.thaw_interval:
            self._thawed_at = now
            frozen = self.ops.frozen()
            self.ops.unfreeze()
            started = time.perf_counter()
            freed = self.ops.collect()
            _LOGGER.debug("garbage collection of %d long-lived objects: %d freed in %.0f ms", frozen, freed,
                          1000 * (time.perf_counter() - started))
        self.ops.freeze()

    def start(self) -> None:
        self._schedule()

    def _schedule(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(self.freeze_interval, self._run)

    def _run(self) -> None:
        self.tick()
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.ops.unfreeze()
