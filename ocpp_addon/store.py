"""Persisted facts under the data directory: known chargers, their requested and
accepted limits, the transaction id counter.

One JSON file, written atomically (temp file + fsync + rename) by one writer
thread, so writes land in the order their snapshots were taken. Ordinary changes
are coalesced (a reconnect storm of thousands of chargers costs a few writes); a
new setpoint is *urgent*: written at once, and :meth:`Store.update_charger`
returns a future that completes when it is on disk, which is when the MQTT
bridge acknowledges the message that carried it.

The file is untrusted input like any other: it is read with the same discipline
as the config (:data:`STATE_SCHEMA`). A file that is not a state object at all
(random bytes, absurd nesting, wrong shape) is moved aside with a warning and
the service starts fresh: losing remembered setpoints is bad, refusing to start
is worse. A single bad charger entry (an id that fails today's check, a NaN
limit) is dropped with a warning; the rest is kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import voluptuous as vol

from .topics import is_charger_id, printable

_LOGGER = logging.getLogger(__name__)
SAVE_DELAY = 1.0  # coalesces a reconnect storm of thousands of chargers into a few writes
MAX_STATE_BYTES = 64 * 1024 * 1024  # ~10,000 chargers take about 3 MB


class StateFileError(ValueError):
    """The state file is not a state object; the message says why."""


def _finite_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise vol.Invalid("expected a finite number >= 0")
    return float(value)


def _text(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 500:
        raise vol.Invalid("expected a string of at most 500 characters")
    return value


_UNIT = vol.Any(None, vol.In(("A", "W")))
_LIMIT = vol.Any(None, _finite_number)
_STRATEGY = vol.Schema({
    vol.Required("purpose"): vol.In(("TxDefaultProfile", "ChargePointMaxProfile", "TxProfile")),
    vol.Required("connector_ids"): vol.All([vol.All(int, vol.Range(min=0, max=1000))], vol.Length(max=100)),
    vol.Required("kind"): vol.In(("Absolute", "Relative", "Recurring")),
    vol.Required("stack_level"): vol.All(int, vol.Range(min=0, max=1000)),
    vol.Required("unit"): vol.In(("A", "W")),
})
_APPLIED = vol.Schema({
    vol.Required("value"): _finite_number,
    vol.Required("unit"): vol.In(("A", "W")),
    vol.Required("voltage"): vol.All(_finite_number, vol.Range(min=1, max=2000)),
    vol.Required("phases"): vol.All(int, vol.Range(min=1, max=3)),
    vol.Optional("reason"): vol.Any(None, _text),
})
_SUPPLY = vol.Schema({  # limits.Supply: what the charger's readings proved
    vol.Required("dc"): bool,
    vol.Required("phases"): vol.All(int, vol.Range(min=1, max=3)),
    vol.Required("voltage"): vol.All(_finite_number, vol.Range(min=50, max=1000)),
})
CHARGER_SCHEMA = vol.Schema({
    vol.Optional("vendor"): vol.Any(None, _text),
    vol.Optional("model"): vol.Any(None, _text),
    vol.Optional("firmware"): vol.Any(None, _text),
    vol.Optional("serial"): vol.Any(None, _text),
    vol.Optional("charging_limit"): _LIMIT,
    vol.Optional("charging_limit_unit"): _UNIT,
    vol.Optional("requested_limit"): _LIMIT,
    vol.Optional("requested_unit"): _UNIT,
    # what the charger accepted on the wire (limits.Applied)
    vol.Optional("applied"): vol.Any(None, _APPLIED),
    # what worked, or {"unsupported": True} after a whole ladder of NotSupported
    vol.Optional("strategy"): vol.Any(None, _STRATEGY, vol.Schema({vol.Required("unsupported"): True})),
    vol.Optional("supply"): vol.Any(None, _SUPPLY),
}, extra=vol.REMOVE_EXTRA)  # keys of newer versions are dropped, not fatal


def _reject_constant(name: str) -> Any:
    raise StateFileError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise StateFileError(f"{text[:20]} is out of range")
    return number


def parse_state(raw: bytes) -> tuple[dict[str, Any], list[str]]:
    """The state file's bytes -> (state, warnings about dropped entries). Raises StateFileError.

    Pure: the whole check of the untrusted file lives here and has unit tests.
    """
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float)
    except UnicodeDecodeError:
        raise StateFileError("not UTF-8 text") from None
    except RecursionError:
        raise StateFileError("nested too deeply") from None
    except ValueError as err:
        raise StateFileError(str(err)[:120]) from None
    if not isinstance(data, dict) or not isinstance(data.get("chargers"), dict):
        raise StateFileError("not a state object")
    warnings: list[str] = []
    chargers: dict[str, dict[str, Any]] = {}
    for charger_id, entry in data["chargers"].items():
        if not is_charger_id(charger_id):
            warnings.append(f"dropped charger {printable(charger_id, 80)}: not a valid charge point id")
            continue
        if not isinstance(entry, dict):
            warnings.append(f"dropped charger {charger_id}: its entry is not an object")
            continue
        try:
            chargers[charger_id] = CHARGER_SCHEMA(entry)
        except vol.MultipleInvalid as err:
            where = ".".join(str(p) for p in err.path) or "entry"
            warnings.append(f"dropped charger {charger_id}: {where}: {err.msg}")
    next_id = data.get("next_transaction_id", 1)
    if isinstance(next_id, bool) or not isinstance(next_id, int) or not 1 <= next_id < 2**31:
        warnings.append("next_transaction_id is not a positive 32-bit integer; starting at 1")
        next_id = 1
    return {"version": 1, "chargers": chargers, "next_transaction_id": next_id}, warnings


class Store:
    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / "state.json"
        self.data: dict[str, Any] = {"version": 1, "chargers": {}, "next_transaction_id": 1}
        self.problem: str | None = None  # why the state cannot be saved right now; None when it can
        self.on_problem: Callable[[str | None], None] | None = None  # called in the loop when problem changes
        self._save_handle: asyncio.TimerHandle | None = None
        self._writing: asyncio.Future[bool] | None = None
        self._dirty = False  # changed since the last snapshot was taken
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._load()

    def _load(self) -> None:
        try:
            with self.path.open("rb") as handle:
                raw = handle.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError as err:
            _LOGGER.warning("cannot read %s (%s); starting with no remembered chargers", self.path, err.strerror)
            return
        try:
            if len(raw) > MAX_STATE_BYTES:
                raise StateFileError(f"larger than {MAX_STATE_BYTES // (1024 * 1024)} MiB")
            data, warnings = parse_state(raw)
        except StateFileError as err:
            aside = self.path.with_name(f"state.corrupt-{int(time.time())}.json")
            try:
                os.replace(self.path, aside)
                where = f"moved it to {aside.name}"
            except OSError as move_err:
                where = f"could not move it aside ({move_err.strerror})"
            _LOGGER.warning("state file %s is corrupt (%s); %s and started fresh", self.path, err, where)
            return
        for warning in warnings:
            _LOGGER.warning("state file %s: %s", self.path, warning)
        self.data = data

    @property
    def chargers(self) -> dict[str, dict[str, Any]]:
        return self.data["chargers"]

    def update_charger(self, charger_id: str, urgent: bool = False, **fields: Any) -> asyncio.Future[bool] | None:
        """Change a charger's entry. ``urgent``: write now rather than coalesced (a new setpoint a
        SIGKILL must not lose); the returned future completes once the entry is on disk."""
        entry = self.chargers.setdefault(charger_id, {})
        if any(entry.get(k) != v for k, v in fields.items()):
            entry.update(fields)
            self._dirty = True
        if urgent:
            return self.save_now()
        if self._dirty:
            self.schedule_save()
        return None

    def forget_charger(self, charger_id: str) -> None:
        if self.chargers.pop(charger_id, None) is not None:
            self._dirty = True
            self.schedule_save()

    def next_transaction_id(self) -> int:
        """Unique across connectors and restarts (time-based ids collide: lbbrhzn/ocpp#2110)."""
        value = int(self.data.get("next_transaction_id", 1))
        self.data["next_transaction_id"] = value + 1
        self._dirty = True
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

    def save_now(self) -> asyncio.Future[bool]:
        """Write the current state at once (off the loop); the future completes when it is on disk.

        Nothing new since the last snapshot: the write in flight (or none) already holds it."""
        loop = asyncio.get_running_loop()
        if not self._dirty:
            if self._writing is not None and not self._writing.done():
                return self._writing
            done: asyncio.Future[bool] = loop.create_future()
            done.set_result(self.problem is None)
            return done
        if self._save_handle is not None:  # this write includes what the timer would have written
            self._save_handle.cancel()
            self._save_handle = None
        return self._submit()

    def save(self) -> None:
        """Write now, on this thread (at shutdown, or without an event loop)."""
        if self._save_handle is not None:
            self._save_handle.cancel()
            self._save_handle = None
        self._dirty = False
        self._write(self._snapshot())

    def _save_soon(self) -> None:
        """Timer callback."""
        self._save_handle = None
        self._submit()

    def _submit(self) -> asyncio.Future[bool]:
        """Snapshot on the loop (consistent), write and fsync off it, in submission order."""
        self._loop = asyncio.get_running_loop()
        self._dirty = False
        self._writing = self._loop.run_in_executor(self._writer, self._write, self._snapshot())
        return self._writing

    async def close(self) -> None:
        """Final save: after any write still in flight, so an older snapshot cannot land last."""
        if self._writing is not None:
            await asyncio.shield(self._writing)  # FIFO writer: the last submitted is the last to land
            self._writing = None
        self.save()
        self._writer.shutdown(wait=True)

    def _snapshot(self) -> str:
        # The C encoder: indent/sort_keys would fall back to the slow pure-Python one.
        return json.dumps(self.data, separators=(",", ":"), allow_nan=False)

    def _write(self, text: str) -> bool:
        tmp: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".state.", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            tmp = None
        except OSError as err:
            self._set_problem(f"cannot write {self.path} ({err.strerror or err}); setpoints will not survive a restart")
            return False
        finally:
            if tmp is not None:  # a full or read-only disk must not collect one temp file per attempt
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        self._set_problem(None)
        return True

    def _set_problem(self, problem: str | None) -> None:
        """From the writer thread: log a change once, and tell the loop (the bridge publishes it)."""
        if problem == self.problem:
            return
        self.problem = problem
        if problem is None:
            _LOGGER.warning("state file %s is writable again", self.path)
        else:
            _LOGGER.error("%s", problem)
        callback, loop = self.on_problem, self._loop
        if callback is None:
            return
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(callback, problem)
        else:
            callback(problem)
