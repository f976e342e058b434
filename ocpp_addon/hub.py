"""The hub: charger events out to the sinks, commands in from the sinks.

Charge points report state changes here; sinks (Home Assistant, BEMcom) receive
:class:`Event` objects and turn them into MQTT. Commands from sinks come back
through the hub, which owns the rules every sink shares: range checks, keeping a
setpoint for an offline charger, newest-value-wins while a request is in flight,
and honest results (the accepted limit changes only on ``Accepted``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .profiles import SetpointError, check_limit, convert_limit
from .state import ChargerState
from .store import Store

if TYPE_CHECKING:
    from .charge_point import ChargePoint

_LOGGER = logging.getLogger(__name__)

CONNECTED = "connected"
DISCONNECTED = "disconnected"
IDENTIFIED = "identified"  # BootNotification: vendor/model/firmware may have changed
READY = "ready"  # the charger takes commands (booted, or evidently running)
UPDATED = "updated"
RESULT = "result"  # outcome of a command, for the event topic
RAW_FRAME = "raw_frame"
REMOVED = "removed"

# Answers that settle a setpoint: it is not retried on reconnect (a Timeout or a lost connection is).
FINAL_REFUSALS = frozenset({"Rejected", "NotSupported", "CallError", "InvalidResponse", "Invalid"})


@dataclass(slots=True)
class Event:
    kind: str
    charger_id: str
    state: ChargerState | None = None
    changed: tuple[str, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)


class Sink(Protocol):
    def handle(self, event: Event) -> None: ...


class Hub:
    def __init__(self, config: dict[str, Any], store: Store) -> None:
        self.config = config
        self.store = store
        self.sinks: list[Sink] = []
        self.connected: dict[str, ChargePoint] = {}
        self.states: dict[str, ChargerState] = {}
        self.wants_raw_frames = False
        # Every OCPP frame, both directions: (charger id, "in" | "out", text). Set by the chargers page
        # only while a browser has it open, so a frame costs one None check otherwise.
        self.frame_tap: Callable[[str, str, str], None] | None = None
        self._pending_limit: set[str] = set()
        self._force_limit: set[str] = set()  # send even if unchanged: the charger lost it
        self._limit_workers: dict[str, asyncio.Task[None]] = {}
        self._debounce: dict[str, asyncio.TimerHandle] = {}
        self._background: dict[str, asyncio.Task[None]] = {}  # per charger: configure, then periodic read-back
        for charger_id, saved in store.chargers.items():
            self.states[charger_id] = ChargerState(
                id=charger_id,
                vendor=saved.get("vendor"),
                model=saved.get("model"),
                firmware=saved.get("firmware"),
                serial=saved.get("serial"),
                charging_limit=saved.get("charging_limit"),
                charging_limit_unit=saved.get("charging_limit_unit"),
                requested_limit=saved.get("requested_limit"),
                requested_unit=saved.get("requested_unit"),
                strategy=saved.get("strategy"),
            )

    # -- wiring -----------------------------------------------------------------

    def add_sink(self, sink: Sink, raw_frames: bool = False) -> None:
        self.sinks.append(sink)
        self.wants_raw_frames = self.wants_raw_frames or raw_frames

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            try:
                sink.handle(event)
            except Exception:  # one broken sink must not starve the others
                _LOGGER.exception("sink %s failed on %s event for %s", type(sink).__name__, event.kind, event.charger_id)

    def state_for(self, charger_id: str) -> ChargerState:
        state = self.states.get(charger_id)
        if state is None:
            state = self.states[charger_id] = ChargerState(id=charger_id)
        return state

    # -- from charge points -----------------------------------------------------

    def charger_connected(self, cp: ChargePoint) -> None:
        for stale in (self._limit_workers.pop(cp.id, None), self._background.pop(cp.id, None)):
            if stale is not None:  # bound to a replaced connection
                stale.cancel()
        self.connected[cp.id] = cp
        cp.state.connected = True
        self.store.update_charger(cp.id)
        self.emit(Event(CONNECTED, cp.id, cp.state))

    def charger_disconnected(self, cp: ChargePoint) -> None:
        if self.connected.get(cp.id) is not cp:
            return  # replaced by a newer connection: that one owns the state now
        del self.connected[cp.id]
        cp.state.connected = False
        worker = self._limit_workers.pop(cp.id, None)
        interrupted = worker is not None and not worker.done()
        for task in (worker, self._background.pop(cp.id, None)):
            if task is not None:
                task.cancel()
        self.emit(Event(DISCONNECTED, cp.id, cp.state))
        s = cp.state
        if interrupted and s.requested_limit is not None:
            # Every command ends with an event: this one is kept and goes out when the charger is back.
            self.result(cp.id, command="charging_limit", status="Queued", limit=s.requested_limit, unit=s.requested_unit,
                        reason="the charger went offline before it answered; sent when it connects")

    def charger_booted(self, cp: ChargePoint) -> None:
        s = cp.state
        self.store.update_charger(cp.id, vendor=s.vendor, model=s.model, firmware=s.firmware, serial=s.serial)
        self.emit(Event(IDENTIFIED, cp.id, s))

    def charger_ready(self, cp: ChargePoint) -> None:
        """The charger takes commands now: send a setpoint it has not accepted yet."""
        s = cp.state
        self.emit(Event(READY, cp.id, s))
        self._background[cp.id] = asyncio.create_task(self._look_after(cp), name=f"look-after-{cp.id}")
        if s.requested_limit is not None and (s.requested_limit, s.requested_unit) != (s.charging_limit, s.charging_limit_unit):
            _LOGGER.info("%s: sending the setpoint kept while it was away (%g %s)", cp.id, s.requested_limit, s.requested_unit)
            self._pending_limit.add(cp.id)
            self._start_limit_worker(cp)

    async def _look_after(self, cp: ChargePoint) -> None:
        """Per connection: read capabilities, check the charger still has our limit, keep the effective limit fresh."""
        await cp.configure()
        s = cp.state
        if s.charging_limit is not None and cp.id not in self._pending_limit:
            await cp.refresh_effective_limit()
            charging = self.config["charging"]
            ours = convert_limit(s.charging_limit, s.charging_limit_unit or charging["unit"], charging["unit"],
                                 charging["voltage"], charging["phases"])
            if s.effective_limit is None or s.effective_limit > ours + 0.5:
                # A power cycle or a factory reset can wipe charging profiles: the charger
                # enforces more than it accepted from us, so send our limit again.
                _LOGGER.info("%s: enforces %s instead of %g %s; sending the limit again", cp.id,
                             "no limit" if s.effective_limit is None else f"{s.effective_limit:g}", ours, charging["unit"])
                if s.requested_limit is None:
                    s.requested_limit, s.requested_unit = s.charging_limit, s.charging_limit_unit
                self._force_limit.add(cp.id)
                self._pending_limit.add(cp.id)
                self._start_limit_worker(cp)
        interval = self.config["charging"]["composite_interval"]
        while self.connected.get(cp.id) is cp:
            if cp.state.charging_limit is not None or cp.state.strategy:
                await cp.refresh_effective_limit()
            if interval <= 0:
                return
            await asyncio.sleep(interval)

    def capabilities_learned(self, cp: ChargePoint) -> None:
        self.state_changed(cp.state, ("capabilities", "smart_charging"))

    def strategy_learned(self, cp: ChargePoint) -> None:
        """Persist what the charger accepted so the next setpoint goes straight there."""
        self.store.update_charger(cp.id, strategy=cp.state.strategy)
        self.state_changed(cp.state, ("smart_charging",))

    def transaction_started(self, cp: ChargePoint) -> None:
        """A session limit (TxProfile) can only be installed once a transaction runs."""
        s = cp.state
        if self.config["charging"]["profile"]["purpose"] == "TxProfile" and s.requested_limit is not None:
            self._force_limit.add(cp.id)  # the last session's TxProfile ended with it
            self._pending_limit.add(cp.id)
            self._start_limit_worker(cp)

    def state_changed(self, state: ChargerState, changed: tuple[str, ...] | list[str]) -> None:
        self.emit(Event(UPDATED, state.id, state, tuple(changed)))

    def raw_frame(self, charger_id: str, frame: str) -> None:
        self.emit(Event(RAW_FRAME, charger_id, data={"frame": frame}))

    def next_transaction_id(self) -> int:
        return self.store.next_transaction_id()

    # -- commands from sinks ------------------------------------------------------

    def result(self, charger_id: str, **data: Any) -> None:
        self.emit(Event(RESULT, charger_id, self.states.get(charger_id), data=data))

    def set_charging_limit(self, charger_id: str, limit: float, unit: str | None = None,
                           source: str = "mqtt") -> asyncio.Future[bool] | None:
        """Request a charging limit; the outcome arrives as a RESULT event (and UPDATED on Accepted).

        Returns the write of the new setpoint to disk (None when nothing was kept): the MQTT
        message that asked for it is acknowledged once that is done."""
        unit = unit or self.config["charging"]["unit"]
        state = self.states.get(charger_id)
        if state is None:
            _LOGGER.warning("%s: charging limit %g %s refused: unknown charger", charger_id, limit, unit)
            self.result(charger_id, command="charging_limit", status="UnknownCharger", limit=limit, unit=unit, source=source,
                        reason="no charger with this id has ever connected")
            return None
        try:
            check_limit(limit, unit, self.config["charging"])
        except SetpointError as err:
            _LOGGER.warning("%s: charging limit refused: %s", charger_id, err)
            self.result(charger_id, command="charging_limit", status="Invalid", limit=limit, unit=unit, source=source, reason=str(err))
            return None
        state.requested_limit, state.requested_unit = limit, unit
        durable = self.store.update_charger(charger_id, urgent=True, requested_limit=limit, requested_unit=unit)
        cp = self.connected.get(charger_id)
        if cp is None or not cp.ready.is_set():
            _LOGGER.info("%s: charger offline; keeping charging limit %g %s until it connects", charger_id, limit, unit)
            self.result(charger_id, command="charging_limit", status="Queued", limit=limit, unit=unit, source=source,
                        reason="charger offline; sent when it connects")
            return durable
        delay = self.config["charging"]["debounce"]
        loop = asyncio.get_running_loop()
        handle = self._debounce.pop(charger_id, None)
        if delay <= 0 or handle is None:
            # A lone setpoint goes out at once (leading edge) and opens a quiet window.
            self._pending_limit.add(charger_id)
            self._start_limit_worker(cp)
            if delay > 0:
                self._debounce[charger_id] = loop.call_later(delay, self._debounced, charger_id, False)
            return durable
        # Inside the window (a slider drag): the newest value wins once the drag has been quiet
        # for `debounce` seconds, because every profile write wears the charger's flash.
        handle.cancel()
        self._debounce[charger_id] = loop.call_later(delay, self._debounced, charger_id, True)
        return durable

    def _debounced(self, charger_id: str, send: bool) -> None:
        self._debounce.pop(charger_id, None)
        cp = self.connected.get(charger_id)
        if send and cp is not None:
            self._pending_limit.add(charger_id)
            self._start_limit_worker(cp)

    def _start_limit_worker(self, cp: ChargePoint) -> None:
        worker = self._limit_workers.get(cp.id)
        if worker is None or worker.done():
            self._limit_workers[cp.id] = asyncio.create_task(self._apply_limits(cp), name=f"limit-{cp.id}")

    async def _apply_limits(self, cp: ChargePoint) -> None:
        """Send the newest requested limit; values requested meanwhile collapse into one follow-up."""
        state = cp.state
        await cp.configured.wait()  # plan profiles with the charger's capabilities known
        while cp.id in self._pending_limit and self.connected.get(cp.id) is cp:
            self._pending_limit.discard(cp.id)
            limit, unit = state.requested_limit, state.requested_unit
            if limit is None:
                return
            if (limit, unit) == (state.charging_limit, state.charging_limit_unit) and state.strategy and cp.id not in self._force_limit:
                # Unchanged: every profile write wears the charger's flash.
                self.emit(Event(RESULT, cp.id, state, data={"command": "charging_limit", "status": "Unchanged", "limit": limit, "unit": unit}))
                continue
            self._force_limit.discard(cp.id)
            result = await cp.execute_send_charging_profile(limit, unit)
            if result["status"] == "Accepted":
                state.charging_limit, state.charging_limit_unit = limit, unit
                self.store.update_charger(cp.id, charging_limit=limit, charging_limit_unit=unit)
                self.state_changed(state, ("charging_limit", "charging_limit_unit"))
                self._spawn(cp.refresh_effective_limit())
            else:
                _LOGGER.warning("%s: charging limit %g %s not applied: %s %s", cp.id, limit, unit, result["status"], result.get("reason", ""))
                if result["status"] in FINAL_REFUSALS and (state.requested_limit, state.requested_unit) == (limit, unit):
                    # answered: the request is settled, so a reconnect does not send it again
                    state.requested_limit, state.requested_unit = state.charging_limit, state.charging_limit_unit
                    self.store.update_charger(cp.id, requested_limit=state.requested_limit, requested_unit=state.requested_unit)
            self.emit(Event(RESULT, cp.id, state, data=result))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(_log_task_failure)

    def run_command(self, charger_id: str, name: str, **kwargs: Any) -> None:
        """Fire-and-forget :meth:`command` (from MQTT callbacks); the result arrives as an event."""
        self._spawn(self.command(charger_id, name, **kwargs))

    async def command(self, charger_id: str, name: str, **kwargs: Any) -> dict[str, Any]:
        """Run ``ChargePoint.execute_<name>(**kwargs)`` on a connected charger and emit its result.

        Results are ``{"command": ..., "status": ...}`` dicts; an offline or unknown
        charger gives status ``Offline`` / ``UnknownCharger`` without raising.
        """
        cp = self.connected.get(charger_id)
        if cp is None:
            status = "Offline" if charger_id in self.states else "UnknownCharger"
            result: dict[str, Any] = {"command": name, "status": status, "reason": "charger not connected"}
        else:
            method = getattr(cp, f"execute_{name}", None)
            if method is None:
                result = {"command": name, "status": "UnknownCommand", "reason": f"no command {name!r}"}
            else:
                result = await method(**kwargs)
                self._after_command(cp, name, result)
        self.emit(Event(RESULT, charger_id, self.states.get(charger_id), data=result))
        return result

    def _after_command(self, cp: ChargePoint, name: str, result: dict[str, Any]) -> None:
        state = cp.state
        if result["status"] != "Accepted":
            return
        if name == "set_charging_schedule":
            state.charging_limit, state.charging_limit_unit = result.get("limit"), result.get("unit")
            state.requested_limit, state.requested_unit = state.charging_limit, state.charging_limit_unit
            self.store.update_charger(cp.id, charging_limit=state.charging_limit, charging_limit_unit=state.charging_limit_unit,
                                      requested_limit=state.requested_limit, requested_unit=state.requested_unit)
            self.state_changed(state, ("charging_limit",))
            self._spawn(cp.refresh_effective_limit())
        elif name == "clear_charging_limit":
            state.charging_limit = state.requested_limit = None
            self.store.update_charger(cp.id, charging_limit=None, requested_limit=None)
            self.state_changed(state, ("charging_limit",))
            self._spawn(cp.refresh_effective_limit())

    def remove_charger(self, charger_id: str) -> None:
        """Forget a charger: its discovery and retained state are cleared by the sinks."""
        state = self.states.get(charger_id)
        if state is None:
            self.result(charger_id, command="remove", status="UnknownCharger", reason="no charger with this id is known")
            return
        if charger_id not in self.connected:
            del self.states[charger_id]
        self.store.forget_charger(charger_id)
        _LOGGER.info("%s: removed", charger_id)
        self.emit(Event(REMOVED, charger_id, state))
        self.result(charger_id, command="remove", status="Accepted")

    async def close(self) -> None:
        for handle in self._debounce.values():
            handle.cancel()
        tasks = [*self._limit_workers.values(), *self._background.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._limit_workers.clear()
        self._background.clear()


def _log_task_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _LOGGER.error("background command failed", exc_info=task.exception())
