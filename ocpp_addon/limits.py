"""The charging limit of one charger, owned in one place.

Every path that sets a limit (the Home Assistant slider, the MQTT topic, schedules, BEMcom
actuators, the re-apply after a reconnect or a restart) goes through the charger's
:class:`LimitController`:

validate (one range check, in the user's unit) -> persist (durably: the MQTT message that asked
is acknowledged once the setpoint is on disk) -> debounce -> plan against what we *know* of the
charger (:func:`electrical`: phases and DC learned from its meter values, the per-charger
override, the minimum current for AC only; the units and feature profiles it advertises) -> send
(the fallback ladder, :func:`install`) -> settle -> publish.

The state keeps two things apart: ``requested`` (what the user asked, in the user's unit) and
``applied`` (:class:`Applied`: exactly the value and unit the charger accepted, after rounding,
conversion and the minimum-current pause, with the voltage and phases used to convert it and a
reason such as "paused: below 6 A"). The slider shows ``applied``, converted for display by
:func:`shown`, the same conversion that made the value sent.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from math import isfinite
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, Sequence

from .results import FINAL_REFUSALS, Status
from .profiles import (
    Attempt,
    SetpointError,
    attempt_template,
    build_set_charging_profile,
    check_limit,
    convert_limit,
    limit_now,
    parse_schedule,
    plan_attempts,
    round_limit,
)
from .state import ChargerState, parse_number

if TYPE_CHECKING:
    from .charge_point import ChargePoint
    from .hub import Hub

_LOGGER = logging.getLogger(__name__)

UNSUPPORTED = {"unsupported": True}  # the learned strategy of a charger that answered NotSupported to the whole ladder


@dataclass(frozen=True, slots=True)
class Electrical:
    """What a limit in A or W means on this charger."""

    voltage: float
    phases: int
    dc: bool
    min_current: float  # 0 on DC: the IEC 61851 minimum is a rule of AC charging
    known_from: str  # "measured", "override", "declared", "config": said in the logs and the README

    def describe(self) -> str:
        kind = "DC" if self.dc else f"{self.phases}-phase AC"
        return f"{kind}, {self.voltage:g} V ({self.known_from})"


def override_for(charging: Mapping[str, Any], charger_id: str) -> Mapping[str, Any]:
    """The ``charging.chargers`` entry for this charger (empty when there is none)."""
    for entry in charging.get("chargers") or ():
        if entry.get("id") == charger_id:
            return entry
    return {}


@dataclass(frozen=True, slots=True)
class Supply:
    """What a charger's own readings prove about its supply, taken while current flows."""

    dc: bool
    phases: int
    voltage: float  # per phase (line to neutral) on AC


def learn_supply(readings: Mapping[str, Any]) -> Supply | None:
    """Phases, voltage and DC from one sample where power, voltage and current all flow; None if unproven.

    P / (U x I) says it: about 1 on DC or one AC phase, 3 on three phases measured line to neutral,
    about 1.73 on three phases whose one voltage is line to line (400 V). A lone 400 V reading
    proves nothing (DC, or an AC charger labelling no phase), so without current it stays unproven:
    mistaking such an AC charger for DC would convert watts with one phase and triple its current.
    """
    # Readings are floats already (state.parse_sampled_values); anything else (a state file's int) is parsed.
    power, volts, amps = readings.get("power"), readings.get("voltage"), readings.get("current")
    if type(power) is not float or not isfinite(power):
        power = parse_number(power)
    if type(volts) is not float or not isfinite(volts):
        volts = parse_number(volts)
    if type(amps) is not float or not isfinite(amps):
        amps = parse_number(amps)
    if power is None or volts is None or amps is None or amps < 1 or power < 100 or not 50 <= volts <= 1000:
        return None
    ratio = power / (volts * amps)
    if volts >= 300:
        if 0.8 <= ratio <= 1.25:
            return Supply(True, 1, volts)
        if 1.5 <= ratio <= 1.95:
            return Supply(False, 3, round(volts / 3 ** 0.5, 1))
        return None
    phases = round(ratio)
    if not 1 <= phases <= 3 or abs(ratio - phases) > 0.35:
        return None  # unbalanced or inconsistent: phase labels and the config decide
    return Supply(False, phases, volts)


def electrical(state: ChargerState, charging: Mapping[str, Any], template: Mapping[str, Any] | None = None) -> Electrical:
    """Phases, voltage and DC, in this order of trust: the per-charger override, the charger's own readings, what
    it declares (an OCPP 2.0.1 station's EVSE SupplyPhases, 0 meaning DC), the config.

    Readings: what :func:`learn_supply` proved while current flowed, else the phases a charger
    reports readings for (L1..L3) and a voltage up to 300 V. A profile template that fixes
    ``number_phases`` wins over what was measured, because that is what the charger is told to use.
    """
    override = override_for(charging, state.id)
    declared = state.capabilities  # 2.0.1 device model: "dc" and "phases" when its EVSEs agree
    supply: Supply | None = state.supply
    readings = state.readings
    phases_seen = [p for p in ("l1", "l2", "l3") if f"current_{p}" in readings or f"voltage_{p}" in readings or f"power_{p}" in readings]
    measured = parse_number(readings.get("voltage"))
    if measured is not None and not 50 <= measured < (1000 if declared.get("dc") else 300):
        measured = None  # above 300 V unproven: DC, or line to line (unless the station declared DC)
    known_from = "measured" if supply is not None or measured is not None or phases_seen else \
        "declared" if "dc" in declared else "config"
    dc = override.get("dc")
    if dc is None:
        dc = supply.dc if supply is not None else bool(declared.get("dc", False))
    else:
        known_from = "override"
    phases = override.get("phases") or (template or {}).get("number_phases")
    if phases:
        known_from = "override"
    elif dc:
        phases = 1
    else:
        phases = (supply.phases if supply is not None and not supply.dc else 0) or declared.get("phases") or len(phases_seen) \
            or charging["phases"]
    voltage = override.get("voltage")
    if voltage:
        known_from = "override"
    else:
        voltage = (supply.voltage if supply is not None and supply.dc == dc else None) or measured or charging["voltage"]
    minimum = override.get("min_current")
    if minimum is None:
        minimum = 0.0 if dc else charging["min_current"]
    return Electrical(float(voltage), int(phases), bool(dc), float(minimum), known_from)


@dataclass(frozen=True, slots=True)
class Applied:
    """A limit as the charger accepted it: value and unit on the wire, and how it was converted."""

    value: float
    unit: str
    voltage: float
    phases: int
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Applied | None:
        if not data:
            return None
        return cls(float(data["value"]), data["unit"], float(data["voltage"]), int(data["phases"]), data.get("reason"))


def to_wire(limit: float, unit: str, wire_unit: str, elec: Electrical, below_min: str = "pause") -> tuple[float, str | None]:
    """A limit in the user's unit -> the value sent in ``wire_unit``, and why it differs when it is not just converted.

    Below the minimum charging current (AC only) an EV cannot charge: pause (0) or refuse,
    never round up. Rounded down to the 0.1 OCPP allows, so the charger never gets more than asked.
    """
    if limit > 0 and elec.min_current > 0:
        amps = convert_limit(limit, unit, "A", elec.voltage, elec.phases)
        if amps + 1e-9 < elec.min_current:
            if below_min == "reject":
                raise SetpointError(f"{limit:g} {unit} is below the minimum charging current of {elec.min_current:g} A; send 0 to pause")
            return 0.0, f"paused: below {elec.min_current:g} A"
    return round_limit(convert_limit(limit, unit, wire_unit, elec.voltage, elec.phases)), None


def shown(applied: Applied | None, unit: str) -> float | None:
    """What the slider shows: the applied value in the slider's unit, by the conversion used to send it."""
    if applied is None:
        return None
    return round(convert_limit(applied.value, applied.unit, unit, applied.voltage, applied.phases), 3)


def check_schedule(periods: Sequence[tuple[int, float]], unit: str, charging: Mapping[str, Any]) -> None:
    """Every period of a schedule passes the same range check as a single setpoint."""
    for offset, value in periods:
        try:
            check_limit(value, unit, charging)
        except SetpointError as err:
            raise SetpointError(f"period at +{offset} s: {err}") from None


CallStatus = Callable[[Any], Awaitable[dict[str, Any]]]


async def install(call_status: CallStatus, state: ChargerState, charging: Mapping[str, Any], periods: Sequence[tuple[int, float]],
                  unit: str, template: Mapping[str, Any] | None = None, start: datetime | None = None,
                  now: datetime | None = None) -> tuple[dict[str, Any], Applied | None, dict[str, Any] | None]:
    """Install ``periods`` (limits in ``unit``) through ``call_status``, walking the fallback ladder.

    Returns (result for the event, what was applied or None, the strategy to remember or None).
    A charger that does not list SmartCharging gets no write at all; one that answered
    NotSupported to the whole ladder before gets only the first step (one write), so a
    firmware update that adds smart charging is still noticed.
    """
    from ocpp.v16 import call  # the message classes; imported here to keep this module's import light

    template = template or charging["profile"]
    caps = state.capabilities
    if caps.get("smart_charging") is False:
        return ({"status": Status.NOT_SUPPORTED,
                 "reason": "the charger does not list SmartCharging in SupportedFeatureProfiles", "attempts": []}, None, None)
    elec = electrical(state, charging, template)
    active = state.active_transaction()
    unsupported = state.strategy == UNSUPPORTED
    learned = Attempt.from_dict(state.strategy) if state.strategy and not unsupported else None
    attempts = plan_attempts(template, unit, caps, state.connector_ids, learned, charging["fallback"], active[0] if active else None)
    if start is not None:  # schedules need an absolute time line
        attempts = [a for a in attempts if a.kind == "Absolute"] or attempts
    if unsupported:
        attempts = attempts[:1]
    tried: list[dict[str, Any]] = []
    final: dict[str, Any] = {"status": Status.REJECTED}
    applied: Applied | None = None
    remember: dict[str, Any] | None = None
    for attempt in attempts:
        try:
            planned = [(offset, *to_wire(value, unit, attempt.unit, elec, charging["below_min"])) for offset, value in periods]
        except SetpointError as err:
            final = {"status": Status.INVALID, "reason": str(err)}
            break
        wire = [(offset, value) for offset, value, _ in planned]
        outcome: dict[str, Any] = {"status": Status.ACCEPTED}
        profile_ids = []
        for connector_id in attempt.connector_ids:
            try:
                payload = build_set_charging_profile(
                    wire[0][1], attempt.unit, attempt_template(template, attempt, connector_id), now=now,
                    transaction_id=active[1].transaction_id if active else None, periods=wire, start=start)
            except SetpointError as err:
                outcome = {"status": Status.INVALID, "reason": str(err)}
                break
            profile_ids.append(payload["csChargingProfiles"]["chargingProfileId"])
            outcome = await call_status(call.SetChargingProfile(connector_id=payload["connectorId"],
                                                                cs_charging_profiles=payload["csChargingProfiles"]))
            if outcome["status"] != Status.ACCEPTED:
                break
        tried.append({**attempt.as_dict(), "limit": wire[0][1], "profile_ids": profile_ids, "status": outcome["status"],
                      **({"reason": outcome["reason"]} if "reason" in outcome else {})})
        final = outcome
        if outcome["status"] == Status.ACCEPTED:
            if state.strategy != attempt.as_dict():
                remember = attempt.as_dict()
            applied = Applied(wire[0][1], attempt.unit, elec.voltage, elec.phases, planned[0][2])
            final = {"status": Status.ACCEPTED, "sent_limit": wire[0][1], "sent_unit": attempt.unit, "purpose": attempt.purpose,
                     "connector_ids": list(attempt.connector_ids), "stack_level": attempt.stack_level, "kind": attempt.kind,
                     "electrical": elec.describe()}
            if planned[0][2]:
                final["note"] = planned[0][2]
            break
        if outcome["status"] in (Status.TIMEOUT, Status.INVALID, Status.DISCONNECTED) or \
                str(outcome.get("reason", "")).startswith(("NotImplemented", "NotSupported")):
            break  # no ladder step can help: the charger is silent or has no smart charging at all
    else:
        if tried and all(t["status"] == Status.NOT_SUPPORTED for t in tried) and not unsupported:
            # Every way of installing a limit answered NotSupported: later setpoints try one step only.
            remember = dict(UNSUPPORTED)
    if len(tried) > 1:
        _LOGGER.info("%s: charging profile attempts: %s", state.id,
                     "; ".join(f"{t['purpose']}@{t['connector_ids']}/{t['kind']}/s{t['stack_level']}/{t['unit']}={t['status']}" for t in tried))
    if final["status"] == Status.NOT_SUPPORTED and "reason" not in final:
        final["reason"] = "the charger answered NotSupported to every way of installing a charging profile"
    return {**final, "attempts": tried}, applied, remember


class LimitController:
    """The charging limit of one charger: every path that sets it calls this object."""

    def __init__(self, hub: Hub, charger_id: str) -> None:
        self.hub = hub
        self.id = charger_id
        self.state = hub.state_for(charger_id)
        self.charging: Mapping[str, Any] = hub.config["charging"]
        self._pending = False
        self._force = False  # send even if unchanged: the charger lost it
        self._worker: asyncio.Task[None] | None = None
        self._debounce: asyncio.TimerHandle | None = None

    # -- requests ------------------------------------------------------------------------------

    def request(self, limit: float, unit: str | None = None, source: str = "mqtt") -> asyncio.Future[bool] | None:
        """A new setpoint: checked, kept durably, then sent (debounced). The outcome arrives as an event.

        Returns the write of the setpoint to disk (None when nothing was kept): the MQTT message
        that asked for it is acknowledged once that is done."""
        unit = unit or self.charging["unit"]
        try:
            check_limit(limit, unit, self.charging)
        except SetpointError as err:
            _LOGGER.warning("%s: charging limit refused: %s", self.id, err)
            self._result(Status.INVALID, limit=limit, unit=unit, source=source, reason=str(err))
            return None
        state = self.state
        state.requested_limit, state.requested_unit = limit, unit
        durable = self.hub.store.update_charger(self.id, urgent=True, requested_limit=limit, requested_unit=unit)
        self.hub.state_changed(state, ("requested_limit",))
        cp = self.hub.connected.get(self.id)
        if cp is None or not cp.ready.is_set():
            _LOGGER.info("%s: charger offline; keeping charging limit %g %s until it connects", self.id, limit, unit)
            self._result(Status.QUEUED, limit=limit, unit=unit, source=source, reason="charger offline; sent when it connects")
            return durable
        delay = self.charging["debounce"]
        loop = asyncio.get_running_loop()
        if delay <= 0 or self._debounce is None:
            # A lone setpoint goes out at once (leading edge) and opens a quiet window.
            self.kick()
            if delay > 0:
                self._debounce = loop.call_later(delay, self._debounced, False)
            return durable
        # Inside the window (a slider drag): the newest value wins once the drag has been quiet
        # for `debounce` seconds, because every profile write wears the charger's flash.
        self._debounce.cancel()
        self._debounce = loop.call_later(delay, self._debounced, True)
        return durable

    def _debounced(self, send: bool) -> None:
        self._debounce = None
        if send:
            self.kick()

    def kick(self, force: bool = False) -> None:
        """Send the requested limit now (``force``: even if the charger has it, it may have lost it)."""
        cp = self.hub.connected.get(self.id)
        if cp is None:
            return
        self._pending = True
        self._force = self._force or force
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._apply(cp), name=f"limit-{self.id}")

    @property
    def unsettled(self) -> bool:
        """A requested limit the charger has not accepted yet."""
        s = self.state
        return s.requested_limit is not None and (s.requested_limit, s.requested_unit) != (s.charging_limit, s.charging_limit_unit)

    async def schedule(self, cp: Any, entries: Any, unit: str | None = None) -> dict[str, Any]:
        """A schedule (``[{"start": ..., "limit": ...}]``) as one Absolute profile the charger enforces itself.

        Every period passes the range check of a single setpoint and the same planning."""
        unit = unit or self.charging["unit"]
        result: dict[str, Any] = {"command": "charging_schedule", "unit": unit}
        now = datetime.now(timezone.utc)
        try:
            start, periods = parse_schedule(entries, now, self.state.capabilities.get("max_periods"))
            check_schedule(periods, unit, self.charging)
        except SetpointError as err:
            return {**result, "status": Status.INVALID, "reason": str(err)}
        template = {**self.charging["profile"], "kind": "Absolute"}
        result.update(start=start.strftime("%Y-%m-%dT%H:%M:%SZ"), periods=[{"start_period": o, "limit": v} for o, v in periods])
        await cp.configured.wait()
        outcome, applied, remember = await install(cp.call_status, self.state, self.charging, periods, unit, template, start)
        self._learn(remember)
        if applied is not None:
            current = limit_now(periods, start, now)
            self._settle(current if current is not None else periods[0][1], unit, applied, requested=True)
            outcome["limit"] = current
        return {**result, **outcome}

    def cleared(self) -> None:
        """Our profiles were removed from the charger: no limit is requested or applied."""
        s = self.state
        s.charging_limit = s.requested_limit = None
        s.applied = None
        self.hub.store.update_charger(self.id, charging_limit=None, requested_limit=None, applied=None)
        self.hub.state_changed(s, ("charging_limit", "requested_limit"))

    # -- the charger's life ----------------------------------------------------------------------

    def disconnected(self) -> bool:
        """Stop sending; True when a setpoint was in flight (it is sent again on reconnect)."""
        worker, self._worker = self._worker, None
        if self._debounce is not None:
            self._debounce.cancel()
            self._debounce = None
        interrupted = worker is not None and not worker.done()
        if worker is not None:
            worker.cancel()
        if interrupted and self.state.requested_limit is not None:
            # Every command ends with an event: this one is kept and goes out when the charger is back.
            self._result(Status.QUEUED, limit=self.state.requested_limit, unit=self.state.requested_unit,
                         reason="the charger went offline before it answered; sent when it connects")
        return interrupted

    async def close(self) -> None:
        if self._debounce is not None:
            self._debounce.cancel()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    # -- internals -------------------------------------------------------------------------------

    async def _apply(self, cp: ChargePoint) -> None:
        """Send the newest requested limit; values requested meanwhile collapse into one follow-up."""
        state = self.state
        await cp.configured.wait()  # plan profiles with the charger's capabilities known
        while self._pending and self.hub.connected.get(self.id) is cp:
            self._pending = False
            limit, unit = state.requested_limit, state.requested_unit
            if limit is None or unit is None:
                return
            if not self.unsettled and state.strategy and not self._force:
                # Unchanged: every profile write wears the charger's flash.
                self._result(Status.UNCHANGED, limit=limit, unit=unit)
                continue
            self._force = False
            outcome, applied, remember = await install(cp.call_status, state, self.charging, [(0, limit)], unit)
            self._learn(remember)
            result = {"command": "charging_limit", "limit": limit, "unit": unit, **outcome}
            if applied is not None:
                self._settle(limit, unit, applied)
                self.hub.spawn(cp.refresh_effective_limit())
            else:
                _LOGGER.warning("%s: charging limit %g %s not applied: %s %s", self.id, limit, unit, outcome["status"], outcome.get("reason", ""))
                if outcome["status"] in FINAL_REFUSALS and (state.requested_limit, state.requested_unit) == (limit, unit):
                    # answered: the request is settled, so a reconnect does not send it again
                    state.requested_limit, state.requested_unit = state.charging_limit, state.charging_limit_unit
                    self.hub.store.update_charger(self.id, requested_limit=state.requested_limit, requested_unit=state.requested_unit)
                    self.hub.state_changed(state, ("requested_limit",))
            self.hub.emit_result(self.id, result)

    def _settle(self, limit: float, unit: str, applied: Applied, requested: bool = False) -> None:
        """The charger accepted ``limit``: it becomes the accepted one (and, for a schedule, the requested one).

        A setpoint's own request is left alone: a newer one may have arrived while this one was
        on the wire, and it must still be sent."""
        s = self.state
        s.charging_limit, s.charging_limit_unit = limit, unit
        s.applied = applied
        kept: dict[str, Any] = {}
        if requested:
            s.requested_limit, s.requested_unit = limit, unit
            kept = {"requested_limit": limit, "requested_unit": unit}
        self.hub.store.update_charger(self.id, charging_limit=limit, charging_limit_unit=unit, applied=applied.as_dict(), **kept)
        self.hub.state_changed(s, ("charging_limit", "requested_limit") if requested else ("charging_limit",))

    def _learn(self, strategy: dict[str, Any] | None) -> None:
        """Persist what the charger accepted (or that it supports nothing) so the next setpoint goes straight there."""
        if strategy is not None and strategy != self.state.strategy:
            self.state.strategy = strategy
            self.hub.store.update_charger(self.id, strategy=strategy)
            self.hub.state_changed(self.state, ("smart_charging",))

    def _result(self, status: Status, **data: Any) -> None:
        self.hub.emit_result(self.id, {"command": "charging_limit", "status": status, **data})
