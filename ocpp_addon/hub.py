"""The hub: charger events out to the sinks, commands in from the sinks.

Charge points report state changes here; sinks (Home Assistant, BEMcom) receive
:class:`Event` objects and turn them into MQTT. Commands from sinks come back
through the hub, which owns the rules every sink shares: range checks, keeping a
setpoint for an offline charger, newest-value-wins while a request is in flight,
and honest results (the accepted limit changes only on ``Accepted``). The charging
limit itself is owned per charger by :class:`limits.LimitController`.

Nothing here touches a socket: a charge point is anything with the few methods the
hub calls (``configure``, ``refresh_effective_limit``, ``call_status``, ``execute_*``),
so the hub is tested with a fake charger too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Protocol

from .limits import Applied, LimitController, Supply, shown
from .results import FINAL_REFUSALS, Status
from .state import ChargerState
from .store import Store

__all__ = ["FINAL_REFUSALS", "Status", "EventKind", "Event", "Hub"]

if TYPE_CHECKING:
    from .charge_point import ChargePoint

_LOGGER = logging.getLogger(__name__)

# Commands waiting for one charger (each holds a task waiting for its one-at-a-time call lock, up to
# response_timeout per CALL): beyond this they are answered Busy at once. Unbounded, 5,000 MQTT
# refresh messages to a silent charger were 5,001 tasks and ~83 h of queue at the default 30 s.
MAX_PENDING_COMMANDS = 16
BUSY_LOG_INTERVAL = 60.0  # s: one line per charger per interval while its commands are refused Busy


class EventKind(StrEnum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    IDENTIFIED = "identified"  # BootNotification: vendor/model/firmware may have changed
    READY = "ready"  # the charger takes commands (booted, or evidently running)
    BOOT_REFUSED = "boot_refused"  # boot_wait passed and the only BootNotification was refused: not a working charger
    UPDATED = "updated"
    RESULT = "result"  # outcome of a command, for the event topic
    RAW_FRAME = "raw_frame"
    REMOVED = "removed"


CONNECTED, DISCONNECTED, IDENTIFIED, READY, BOOT_REFUSED, UPDATED, RESULT, RAW_FRAME, REMOVED = EventKind


@dataclass(slots=True)
class Event:
    kind: EventKind
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
        self.limits: dict[str, LimitController] = {}
        self.wants_raw_frames = False
        # Every OCPP frame, both directions: (charger id, "in" | "out", text). Set by the chargers page
        # only while a browser has it open, so a frame costs one None check otherwise.
        self.frame_tap: Callable[[str, str, str], None] | None = None
        self._background: dict[str, asyncio.Task[None]] = {}  # per charger: configure, then periodic read-back
        self._pending: dict[str, int] = {}  # per charger: commands started and not finished
        self._refreshing: set[str] = set()  # chargers with a refresh pending: another one adds nothing
        self._busy_log: dict[str, list[float]] = {}  # per charger: [time of the last Busy line, refusals since]
        # Chargers kept when they disconnect without having told us anything: configured, or in the state
        # file from an earlier run, or booted in this one. Any other id is forgotten on disconnect.
        ocpp = config["ocpp"]
        self._known: set[str] = {*store.chargers, *(ocpp["chargers"] or ()), *ocpp["auth"]["passwords"],
                                 *(entry["id"] for entry in config["charging"]["chargers"])}
        charging = config["charging"]
        for charger_id, saved in store.chargers.items():
            applied = Applied.from_dict(saved.get("applied"))
            if applied is None and saved.get("charging_limit") is not None:
                # a state file from before issue 12: the accepted limit was sent as it was, converted with the config
                unit = saved.get("charging_limit_unit") or charging["unit"]
                applied = Applied(saved["charging_limit"], unit, charging["voltage"], charging["phases"])
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
                applied=applied,
                strategy=saved.get("strategy"),
                supply=Supply(**saved["supply"]) if saved.get("supply") else None,
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

    def limit(self, charger_id: str) -> LimitController:
        """The charger's limit controller: every path that sets its limit goes through it."""
        controller = self.limits.get(charger_id)
        if controller is None:
            controller = self.limits[charger_id] = LimitController(self, charger_id)
        return controller

    # -- from charge points -----------------------------------------------------

    def charger_connected(self, cp: ChargePoint) -> None:
        self.limit(cp.id).disconnected()  # a task bound to a replaced connection
        stale = self._background.pop(cp.id, None)
        if stale is not None:
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
        task = self._background.pop(cp.id, None)
        if task is not None:
            task.cancel()
        self.emit(Event(DISCONNECTED, cp.id, cp.state))
        self.limit(cp.id).disconnected()
        if not self._worth_keeping(cp.state):
            _LOGGER.info("%s: forgotten: it disconnected without a BootNotification or any other message, and is not configured", cp.id)
            self._forget(cp.id, cp.state)

    def _worth_keeping(self, state: ChargerState) -> bool:
        """A WebSocket handshake alone made a charger with a retained Home Assistant device, forever: 1,000
        connect-and-close cycles with new ids left 1,000 chargers and 9.4 MB of retained discovery. A
        charger that booted once, sent any message (one running since before a reconnect may never boot
        again), or was given a setpoint is kept; a connection that did none of that is not a charger."""
        return (state.id in self._known or state.last_heartbeat is not None or bool(state.connectors) or bool(state.readings)
                or state.requested_limit is not None or state.applied is not None)

    def _forget(self, charger_id: str, state: ChargerState) -> None:
        """Drop the charger here and on disk; the sinks clear its discovery and retained topics (REMOVED)."""
        self.states.pop(charger_id, None)
        self.limits.pop(charger_id, None)
        self._busy_log.pop(charger_id, None)
        self._known.discard(charger_id)
        self.store.forget_charger(charger_id)
        self.emit(Event(REMOVED, charger_id, state))

    def supply_learned(self, cp: ChargePoint) -> None:
        """Kept on disk, so that after a restart a setpoint is converted for the supply the charger proved, not the config's."""
        supply = cp.state.supply
        if supply is not None:
            self.store.update_charger(cp.id, supply={"dc": supply.dc, "phases": supply.phases, "voltage": supply.voltage})

    def charger_booted(self, cp: ChargePoint) -> None:
        s = cp.state
        self._known.add(cp.id)
        self.store.update_charger(cp.id, vendor=s.vendor, model=s.model, firmware=s.firmware, serial=s.serial)
        self.emit(Event(IDENTIFIED, cp.id, s))

    def boot_refused(self, cp: ChargePoint) -> None:
        """boot_wait passed after we refused its BootNotification: no commands, and not shown as working."""
        self.emit(Event(BOOT_REFUSED, cp.id, cp.state))

    def charger_ready(self, cp: ChargePoint) -> None:
        """The charger takes commands now: send a setpoint it has not accepted yet."""
        s = cp.state
        self.emit(Event(READY, cp.id, s))
        self._background[cp.id] = asyncio.create_task(self._look_after(cp), name=f"look-after-{cp.id}")
        limits = self.limit(cp.id)
        if limits.unsettled:
            assert s.requested_limit is not None
            _LOGGER.info("%s: sending the setpoint kept while it was away (%g %s)", cp.id, s.requested_limit, s.requested_unit)
            limits.kick()

    async def _look_after(self, cp: ChargePoint) -> None:
        """Per connection: read capabilities, check the charger still has our limit, keep the effective limit fresh."""
        await cp.configure()
        s = cp.state
        limits = self.limit(cp.id)
        if s.applied is not None and not limits.unsettled:
            await cp.refresh_effective_limit()
            unit = self.config["charging"]["unit"]
            ours = shown(s.applied, unit)
            if ours is not None and (s.effective_limit is None or s.effective_limit > ours + 0.5):
                # A power cycle or a factory reset can wipe charging profiles: the charger
                # enforces more than it accepted from us, so send our limit again.
                _LOGGER.info("%s: enforces %s instead of %g %s; sending the limit again", cp.id,
                             "no limit" if s.effective_limit is None else f"{s.effective_limit:g}", ours, unit)
                if s.requested_limit is None:
                    s.requested_limit, s.requested_unit = s.charging_limit, s.charging_limit_unit
                limits.kick(force=True)
        interval = self.config["charging"]["composite_interval"]
        while self.connected.get(cp.id) is cp:
            if cp.state.applied is not None or cp.state.strategy:
                await cp.refresh_effective_limit()
            if interval <= 0:
                return
            await asyncio.sleep(interval)

    def capabilities_learned(self, cp: ChargePoint) -> None:
        """Both versions' capabilities pass here: the connector count is held to ``ocpp.max_connectors``.

        Every connector becomes entities and is iterated per message; a charger claiming a billion
        (NumberOfConnectors, or a device model listing thousands of EVSEs) must not get them.
        """
        caps, most = cp.state.capabilities, self.config["ocpp"]["max_connectors"]
        count = caps.get("number_of_connectors")
        if isinstance(count, int) and count > most:
            _LOGGER.warning("%s: reports %d connectors; using the first %d (ocpp.max_connectors)", cp.id, count, most)
            caps["number_of_connectors"] = most
        if isinstance(caps.get("evse_ids"), list):
            caps["evse_ids"] = [e for e in caps["evse_ids"] if e <= most]
        self.state_changed(cp.state, ("capabilities", "smart_charging"))

    def transaction_started(self, cp: ChargePoint) -> None:
        """A session limit (TxProfile) can only be installed once a transaction runs."""
        if self.config["charging"]["profile"]["purpose"] == "TxProfile" and cp.state.requested_limit is not None:
            self.limit(cp.id).kick(force=True)  # the last session's TxProfile ended with it

    def state_changed(self, state: ChargerState, changed: tuple[str, ...] | list[str]) -> None:
        self.emit(Event(UPDATED, state.id, state, tuple(changed)))

    def raw_frame(self, charger_id: str, frame: str) -> None:
        self.emit(Event(RAW_FRAME, charger_id, data={"frame": frame}))

    def next_transaction_id(self) -> int:
        return self.store.next_transaction_id()

    # -- commands from sinks ------------------------------------------------------

    def result(self, charger_id: str, **data: Any) -> None:
        self.emit(Event(RESULT, charger_id, self.states.get(charger_id), data=data))

    def emit_result(self, charger_id: str, data: dict[str, Any]) -> None:
        self.emit(Event(RESULT, charger_id, self.states.get(charger_id), data=data))

    def set_charging_limit(self, charger_id: str, limit: float, unit: str | None = None,
                           source: str = "mqtt") -> asyncio.Future[bool] | None:
        """Request a charging limit; the outcome arrives as a RESULT event (and UPDATED on Accepted).

        Returns the write of the new setpoint to disk (None when nothing was kept): the MQTT
        message that asked for it is acknowledged once that is done."""
        if charger_id not in self.states:
            unit = unit or self.config["charging"]["unit"]
            _LOGGER.warning("%s: charging limit %g %s refused: unknown charger", charger_id, limit, unit)
            self.result(charger_id, command="charging_limit", status=Status.UNKNOWN_CHARGER, limit=limit, unit=unit, source=source,
                        reason="no charger with this id has ever connected")
            return None
        return self.limit(charger_id).request(limit, unit, source)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(_log_task_failure)

    def run_command(self, charger_id: str, name: str, **kwargs: Any) -> None:
        """Fire-and-forget :meth:`command` (from MQTT callbacks); the result arrives as an event."""
        self.spawn(self.command(charger_id, name, **kwargs))

    async def command(self, charger_id: str, name: str, **kwargs: Any) -> dict[str, Any]:
        """Run ``ChargePoint.execute_<name>(**kwargs)`` on a connected charger and emit its result.

        Results are ``{"command": ..., "status": ...}`` dicts; an offline or unknown
        charger gives status ``Offline`` / ``UnknownCharger`` without raising.
        A schedule goes through the charger's limit controller like every other limit.
        """
        cp = self.connected.get(charger_id)
        if cp is None:
            status = Status.OFFLINE if charger_id in self.states else Status.UNKNOWN_CHARGER
            result: dict[str, Any] = {"command": name, "status": status, "reason": "charger not connected"}
        elif name == "refresh" and charger_id in self._refreshing:
            result = {"command": name, "status": Status.QUEUED, "reason": "a refresh is already waiting for the charger; its result follows"}
        elif self._pending.get(charger_id, 0) >= MAX_PENDING_COMMANDS:
            self._log_busy(charger_id, name)
            result = {"command": name, "status": Status.BUSY,
                      "reason": f"{MAX_PENDING_COMMANDS} commands already wait for this charger; try again when they are answered"}
        else:
            self._pending[charger_id] = self._pending.get(charger_id, 0) + 1
            if name == "refresh":
                self._refreshing.add(charger_id)
            try:
                result = await self._run(cp, name, kwargs)
            finally:
                self._pending[charger_id] -= 1
                if not self._pending[charger_id]:
                    del self._pending[charger_id]
                if name == "refresh":
                    self._refreshing.discard(charger_id)
        self.emit(Event(RESULT, charger_id, self.states.get(charger_id), data=result))
        return result

    async def _run(self, cp: ChargePoint, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        if name == "set_charging_schedule":
            result = await self.limit(cp.id).schedule(cp, **kwargs)
            if result["status"] == Status.ACCEPTED:
                self.spawn(cp.refresh_effective_limit())
            return result
        method = getattr(cp, f"execute_{name}", None)
        if method is None:
            return {"command": name, "status": Status.UNKNOWN_COMMAND, "reason": f"no command {name!r}"}
        result = await method(**kwargs)
        if name == "clear_charging_limit" and result["status"] == Status.ACCEPTED:
            self.limit(cp.id).cleared()
            self.spawn(cp.refresh_effective_limit())
        return result

    def _log_busy(self, charger_id: str, name: str) -> None:
        now = time.monotonic()
        last = self._busy_log.get(charger_id)
        if last is not None and now - last[0] < BUSY_LOG_INTERVAL:
            last[1] += 1
            return
        held_back = int(last[1]) if last is not None else 0
        self._busy_log[charger_id] = [now, 0]
        _LOGGER.warning("%s: %s refused (Busy): %d commands already wait for the charger%s", charger_id, name, MAX_PENDING_COMMANDS,
                        f" ({held_back} more refused since the last such line)" if held_back else "")

    def remove_charger(self, charger_id: str) -> None:
        """Forget a charger: its discovery and retained state are cleared by the sinks."""
        state = self.states.get(charger_id)
        if state is None:
            self.result(charger_id, command="remove", status="UnknownCharger", reason="no charger with this id is known")
            return
        _LOGGER.info("%s: removed", charger_id)
        if charger_id in self.connected:
            self.store.forget_charger(charger_id)
            self.emit(Event(REMOVED, charger_id, state))
        else:
            self._forget(charger_id, state)
        self.result(charger_id, command="remove", status=Status.ACCEPTED)

    async def close(self) -> None:
        tasks = list(self._background.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(limits.close() for limits in self.limits.values()), return_exceptions=True)
        self._background.clear()


def _log_task_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _LOGGER.error("background command failed", exc_info=task.exception())
