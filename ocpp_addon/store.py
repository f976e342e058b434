"""Persisted facts under the data directory: known chargers, their requested and
accepted limits, the transaction id counter.

One JSON file, written atomically (temp file + fsync + rename) and coalesced so
a burst of changes costs one write. A corrupt file is moved aside with a warning:
losing remembered setpoints is bad, refusing to start is worse.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

_LOGGER = logging.getLogger(__name__)
SAVE_DELAY = 1.0  # coalesces a reconnect storm of thousands of chargers into a few writes


class Store:
    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / "state.json"
        self.data: dict[str, Any] = {"version": 1, "chargers": {}, "next_transaction_id": 1}
        self._save_handle: asyncio.TimerHandle | None = None
        self._writing: asyncio.Future[None] | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._load()

    def _load(self) -> None:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as err:
            _LOGGER.warning("cannot read %s (%s); starting with no remembered chargers", self.path, err.strerror)
            return
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or not isinstance(data.get("chargers"), dict):
                raise ValueError("not a state object")
        except ValueError as err:
            aside = self.path.with_name(f"state.corrupt-{int(time.time())}.json")
            os.replace(self.path, aside)
            _LOGGER.warning("state file %s is corrupt (%s); moved it to %s and started fresh", self.path, err, aside.name)
            return
        self.data.update(data)

    @property
    def chargers(self) -> dict[str, dict[str, Any]]:
        return self.data["chargers"]

    def update_charger(self, charger_id: str, urgent: bool = False, **fields: Any) -> None:
        """``urgent``: write now (off the loop) rather than coalesced, e.g. a new setpoint a SIGKILL must not lose."""
        entry = self.chargers.setdefault(charger_id, {})
        if any(entry.get(k) != v for k, v in fields.items()):
            entry.update(fields)
            if urgent and self._save_handle is None:
                try:
                    asyncio.get_running_loop()
                except RuntimeError:
                    self.save()
                    return
                self._save_soon()
            else:
                self.schedule_save()

    def forget_charger(self, charger_id: str) -> None:
        if self.chargers.pop(charger_id, None) is not None:
            self.schedule_save()

    def next_transaction_id(self) -> int:
        """Unique across connectors and restarts (time-based ids collide: lbbrhzn/ocpp#2110)."""
        value = int(self.data.get("next_transaction_id", 1))
        self.data["next_transaction_id"] = value + 1
        self.schedule_save()
        return value

    def schedule_save(self) -> None:
        if self._save_handle is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.save()
            return
        self._save_handle = loop.call_later(SAVE_DELAY, self._save_soon)

    def save(self) -> None:
        """Write now, on this thread (at shutdown, or without an event loop)."""
        if self._save_handle is not None:
            self._save_handle.cancel()
            self._save_handle = None
        self._write(self._snapshot())

    def _save_soon(self) -> None:
        """Timer callback: snapshot on the loop (consistent), write and fsync off it."""
        self._save_handle = None
        # One writer thread: writes land in the order their snapshots were taken.
        self._writing = asyncio.get_running_loop().run_in_executor(self._writer, self._write, self._snapshot())

    async def close(self) -> None:
        """Final save: after any write still in flight, so an older snapshot cannot land last."""
        if self._writing is not None:
            await asyncio.shield(self._writing)  # FIFO writer: the last submitted is the last to land
            self._writing = None
        self.save()
        self._writer.shutdown(wait=True)

    def _snapshot(self) -> str:
        # The C encoder: indent/sort_keys would fall back to the slow pure-Python one.
        return json.dumps(self.data, separators=(",", ":"))

    def _write(self, text: str) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".state.", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except OSError as err:
            _LOGGER.error("cannot write %s (%s); setpoints will not survive a restart", self.path, err.strerror)
