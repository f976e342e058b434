"""One connected charger: OCPP 1.6J handlers and the commands we send it.

Built on ``ocpp.v16.ChargePoint`` (routing, ``call()``, message dataclasses), with
the receive path replaced so that

* malformed frames get the CALLERROR OCPP-J prescribes (or are dropped when they
  carry no message id) with one log line, instead of a traceback;
* every CALL is still schema-checked, by a compiled validator (``validation.py``);
* error codes use the OCPP 1.6 spelling and meaning (``FormationViolation``,
  ``NotImplemented`` for an unknown action, ``NotSupported`` for a known one we
  do not handle);
* a CALLRESULT nobody waits for is dropped rather than queued to confuse the
  next ``call()``.

Charge points never touch MQTT: they update :class:`ChargerState` and tell the hub.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import math
import re
import time
from collections.abc import Awaitable
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from types import GeneratorType
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Mapping

from ocpp.charge_point import remove_nones, serialize_as_dict
from ocpp.exceptions import (
    FormationViolationError,
    InternalError,
    NotImplementedError as OcppNotImplemented,
    NotSupportedError,
    OCPPError,
    PropertyConstraintViolationError,
    TypeConstraintViolationError,
)
from ocpp.messages import CallError, CallResult
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as _OcppChargePoint
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action, AuthorizationStatus, DataTransferStatus, RegistrationStatus
from websockets.exceptions import ConnectionClosed

from . import framing, validation
from .logs import LogBudget
from .topics import printable
from .limits import UNSUPPORTED, electrical, learn_supply
from .results import CONFIG_TAKEN, Status
from .profiles import Attempt, convert_limit, limit_now, profile_id
from .state import (
    CAPABILITY_KEYS,
    ChargerState,
    kinds_supersede,
    latest_meter_values,
    parse_configuration,
    parse_meter_values,
    parse_number,
    parse_timestamp,
    reading_kinds,
    utc_now_iso,
)

if TYPE_CHECKING:
    from .hub import Hub

_LOGGER = logging.getLogger(__name__)
_LOG_FRAME_CHARS = 200

# OCPP 1.6-J §4.2.3 spells these differently from the library's 2.x-era classes.
_WIRE_CODES = framing.WIRE_CODES


@lru_cache(maxsize=4096)
def _snake(key: str) -> str:
    """camelCase -> snake_case, the library's rule, computed once per key."""
    s1 = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", key)
    return re.sub("([a-z0-9])([A-Z])(?=\\S)", r"\1_\2", s1).lower()


@lru_cache(maxsize=4096)
def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def snake_keys(data: Any) -> Any:
    if isinstance(data, dict):
        return {_snake(k): snake_keys(v) for k, v in data.items()}
    if isinstance(data, list):
        return [snake_keys(v) for v in data]
    return data


def camel_keys(data: Any) -> Any:
    if isinstance(data, dict):
        return {_camel(k): camel_keys(v) for k, v in data.items()}
    if isinstance(data, list):
        return [camel_keys(v) for v in data]
    return data


_AWAITABLE: dict[type, bool] = {}  # result types of our handlers: a handful


def _is_awaitable(value: Any) -> bool:
    """inspect.isawaitable, decided once per type for what cannot be awaited (a handler's result
    dataclass, None): the ABC check cost ~0.5 µs per frame. Generators are asked every time."""
    kind = type(value)
    maybe = _AWAITABLE.get(kind)
    if maybe is None:
        maybe = _AWAITABLE[kind] = kind is GeneratorType or issubclass(kind, Awaitable)
    return maybe and inspect.isawaitable(value)


_FIELDLESS: dict[type, bool] = {}  # keyed by the result classes our handlers return: a handful


def _fieldless(kind: type) -> bool:
    """A result dataclass without fields, whose payload is always ``{}`` (serialize_as_dict costs ~3 µs)."""
    known = _FIELDLESS.get(kind)
    if known is None:
        known = _FIELDLESS[kind] = dataclasses.is_dataclass(kind) and not dataclasses.fields(kind)
    return known


def _short(frame: Any) -> str:
    """A charger-sent string for one log line: bounded, control characters escaped."""
    return printable(frame, _LOG_FRAME_CHARS)


def _looks_like_answer(frame: str | bytes) -> bool:
    """A CALLRESULT or CALLERROR by its first characters (``[3`` / ``[4``), without parsing it."""
    if not isinstance(frame, str):
        return False
    head = frame[:16].lstrip()
    return head[:1] == "[" and head[1:].lstrip()[:1] in ("3", "4")


_METER_VALUES_ANSWER = call_result.MeterValues()  # fieldless, never changed: one for every MeterValues


class InvalidResponse(Exception):
    """A charger's CALLRESULT that breaks the OCPP 1.6 schema; the message names the field."""


def _stringify_values(meter_value: Any) -> Any:
    entries = [meter_value] if isinstance(meter_value, dict) else meter_value
    if not isinstance(entries, list):
        return meter_value
    for entry in entries:
        for sample in entry.get("sampledValue", []) if isinstance(entry, dict) else []:
            if isinstance(sample, dict) and isinstance(sample.get("value"), (int, float)) and not isinstance(sample["value"], bool):
                sample["value"] = str(sample["value"])
    return entries


def normalize_call(action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
    """Repair quirks seen in real firmware (lenient mode); None when the result still breaks the schema.

    meterValue sent as an object, sampled values as JSON numbers, an idTag longer than 20
    characters in StopTransaction (the charger would replay it forever if refused).
    """
    fixed = json.loads(json.dumps(payload))
    for key in ("meterValue", "transactionData"):
        if key in fixed:
            fixed[key] = _stringify_values(fixed[key])
    if action == "StopTransaction" and isinstance(fixed.get("idTag"), str):
        fixed["idTag"] = fixed["idTag"][:20]
    try:
        validation.validate_call(action, fixed)
    except (OCPPError, ValueError):
        return None
    return fixed


def normalize_result(action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
    """Lenient mode for answers: GetConfiguration values as numbers or booleans become strings."""
    fixed = json.loads(json.dumps(payload))
    for item in fixed.get("configurationKey", []) if action == "GetConfiguration" else []:
        if isinstance(item, dict) and "value" in item and not isinstance(item["value"], str):
            item["value"] = json.dumps(item["value"]) if isinstance(item["value"], bool) else str(item["value"])
    try:
        validation.validate_result(action, fixed)
    except (OCPPError, ValueError):
        return None
    return fixed


def meter_register(value: Any) -> float | None:
    """meterStart/meterStop (Wh; the schema says only "integer"): None beyond 1 TWh, where a float
    division of a 400-digit integer would raise on every later MeterValues of the transaction."""
    return float(value) if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= 10**15 else None


def out_of_range_id(payload: Mapping[str, Any], most: int) -> int | None:
    """The first connector or EVSE id in a CALL outside 0..``most``, or None.

    Every field that names one is checked (1.6 ``connectorId``; 2.0.1 ``evseId`` beside ``connectorId``,
    and ``evse.id``): a 2.0.1 StatusNotification carries a small connectorId and the evseId that
    becomes the connector; a negative id would read as the main connector.
    """
    evse = payload.get("evse")
    for value in (payload.get("connectorId"), payload.get("evseId"), evse.get("id") if isinstance(evse, dict) else None):
        if isinstance(value, int) and not 0 <= value <= most:
            return value
    return None


class ChargePoint(_OcppChargePoint):
    """A connected charger. Created per WebSocket connection by the central system.

    The receive path, rate limit, validation and ``call()`` serve every OCPP version: a
    version's subclass sets ``ocpp_version`` and ``results`` (its call_result module) and
    brings its own handlers (charge_point_v201.ChargePoint201).
    """

    ocpp_version = "1.6"
    results: Any = call_result
    shallow_actions: frozenset[str] = frozenset({"MeterValues"})  # handlers that read nested camelCase keys

    def __init__(self, charger_id: str, connection: Any, hub: Hub, config: dict[str, Any]) -> None:
        super().__init__(charger_id, connection, response_timeout=config["ocpp"]["response_timeout"])
        self.hub = hub
        self.config = config
        self.state: ChargerState = hub.state_for(charger_id)
        lenient = config["ocpp"]["lenient"]
        self.lenient = "*" in lenient or charger_id in lenient  # repair known firmware quirks instead of refusing
        self.ready = asyncio.Event()  # booted (or evidently running): CS-initiated calls may go out
        self.configured = asyncio.Event()  # capabilities read (or given up on): profiles may be planned
        # Its last BootNotification got a CALLERROR: not registered, so it gets no command until it boots again.
        self.boot_refused = False
        self._handling_boot: str | None = None
        self._after_tasks: set[asyncio.Task[Any]] = set()
        self._energy_drops = 0
        self._newest_sample: dict[int, datetime] = {}
        ocpp = config["ocpp"]
        self._max_connectors: int = ocpp["max_connectors"]
        self._bad_frame_log = LogBudget(lines=10, interval=60.0)  # a malformed-frame flood must not flood the log
        self._rate: float = ocpp["max_message_rate"]
        self._burst: float = float(ocpp["message_burst"])
        self._tokens = self._burst
        self._tokens_at = time.monotonic()
        self._held_since: float | None = None  # when we started reading this charger more slowly
        self._flood_limit: float = ocpp["flood_disconnect_after"]
        self._answer_due = False  # we sent a CALL: its answer is ours, not the charger's traffic
        # MeterValues faster than this are held and read together (the newest of each kind): see on_meter_values.
        self._readings_interval: float = config["mqtt"]["readings_interval"]
        self._readings_at = -math.inf  # loop time the readings were last read
        self._held: list[tuple[int, Any, Any]] = []  # (connector id, meterValue, its reading_kinds) in the order they came
        self._held_handle: asyncio.TimerHandle | None = None

    # -- receive path -------------------------------------------------------

    async def start(self) -> None:
        """Receive until the connection closes; never raises on a closed socket."""
        try:
            while True:
                frame = await self._connection.recv()
                if self._answer_due and _looks_like_answer(frame):
                    self._answer_due = False  # one free frame per CALL of ours: answering us is not flooding
                elif not self._take_token() and not await self._over_rate():
                    return
                if isinstance(frame, bytes):
                    self._warn("%s: ignored a binary frame (%d bytes); OCPP-J uses text frames", self.id, len(frame))
                    continue
                if self.hub.wants_raw_frames:
                    self.hub.raw_frame(self.id, frame)
                if self.hub.frame_tap is not None:
                    self.hub.frame_tap(self.id, "in", frame)
                await self.route_message(frame)
        except ConnectionClosed:
            return
        finally:
            self.read_held_readings()  # what it sent last counts, also when it leaves

    def _take_token(self) -> bool:
        """Fairness: one charger's frames are read at most ``ocpp.max_message_rate`` per second
        (after a burst of ``message_burst``), so a flood from one cannot slow every other one.

        Takes this frame's token; True when the charger is within its rate and was not held
        back (every frame of a charger that obeys OCPP), else :meth:`_over_rate` decides.
        Not a coroutine: the common case costs no await.
        """
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._tokens_at) * self._rate)
        self._tokens_at = now
        self._tokens -= 1.0
        return self._tokens >= 0 and self._held_since is None

    async def _over_rate(self) -> bool:
        """After :meth:`_take_token` said no: wait for the token, or end a flood.

        Waiting here leaves the frames in websockets' queue and then the kernel's buffers: TCP
        flow control slows the sender, and none of its frames cost us CPU until their turn.
        A charger that obeys OCPP (one CALL, then wait for the answer) only ever gets slower;
        one that keeps a backlog of unread frames for ``flood_disconnect_after`` seconds is
        disconnected (1008). False when the connection was closed here.
        """
        now = self._tokens_at
        if self._tokens >= 0:
            if self._held_since is not None:
                self._held_since = None
                _LOGGER.info("%s: back under %g frames/s", self.id, self._rate)
            return True
        if self._held_since is None:
            self._held_since = now
            _LOGGER.warning("%s: sends more than %g frames/s (ocpp.max_message_rate); reading its frames more slowly", self.id, self._rate)
        elif now - self._held_since >= self._flood_limit and self._backlog() > 0:
            _LOGGER.warning("%s: disconnected: flooding for %.0f s without waiting for answers (ocpp.flood_disconnect_after)",
                            self.id, now - self._held_since)
            await self._connection.close(1008, "message rate limit exceeded")
            return False
        await asyncio.sleep(-self._tokens / self._rate)
        return True

    def _backlog(self) -> int:
        """Frames received but not read yet (a charger waiting for our answers has none)."""
        backlog = getattr(self._connection, "backlog", None)
        return backlog() if callable(backlog) else 0

    def _warn(self, msg: str, *args: Any) -> None:
        """A warning about a charger's bad input, within this charger's log budget."""
        ok, held = self._bad_frame_log.take()
        if ok:
            if held:
                msg += " (%d similar lines held back)"
                args = (*args, held)
            _LOGGER.warning(msg, *args)

    async def route_message(self, raw_msg: str) -> None:
        """Act on one frame as framing.parse classifies it (the OCPP-J rules live there, pure)."""
        frame = framing.parse(raw_msg)
        if isinstance(frame, framing.Call):
            await self._handle_call(frame.unique_id, frame.action, frame.payload)
        elif isinstance(frame, (framing.Result, framing.Error)):
            if not self._call_lock.locked():
                self._warn("%s: dropped a response to no outstanding request: %s", self.id, _short(raw_msg))
            elif isinstance(frame, framing.Result):
                self._response_queue.put_nowait(CallResult(frame.unique_id, frame.payload))
            else:
                self._response_queue.put_nowait(CallError(frame.unique_id, frame.code, frame.description, frame.details))
        elif isinstance(frame, framing.Reject):
            error = TypeConstraintViolationError if frame.code == "TypeConstraintViolation" else FormationViolationError
            answer = error(details={"cause": frame.cause})
            self._warn("%s: answered a malformed frame with %s (%s): %s", self.id, self._wire_code(answer.code), frame.cause, _short(raw_msg))
            await self._send_error(frame.unique_id, answer)
        else:
            self._warn("%s: dropped %s: %s", self.id, frame.why, _short(raw_msg))

    async def _send_error(self, unique_id: str, error: OCPPError) -> None:
        if unique_id == self._handling_boot:
            self.boot_refused = True  # answered with a CALLERROR: the charger is not registered
        await self._send(framing.call_error(unique_id, error.code, error.description, error.details, self.ocpp_version))

    async def _handle_call(self, unique_id: str, action: str, payload: dict[str, Any]) -> None:
        if self._held and action != "MeterValues":
            self.read_held_readings()  # readings it sent before this message count before it
        self._handling_boot = unique_id if action == Action.boot_notification else None
        handlers = self.route_map.get(action)
        if not handlers or "_on_action" not in handlers:
            if validation.known_action(action, self.ocpp_version):
                error: OCPPError = NotSupportedError(
                    "Requested Action is recognized but not supported by the receiver",
                    details={"cause": f"{action} is not supported by this central system"})
            else:
                error = OcppNotImplemented(
                    "Requested Action is not known by receiver", details={"cause": f"{action} is not an OCPP {self.ocpp_version} action"})
            self._warn("%s: answered %s with %s", self.id, _short(action), self._wire_code(error.code))
            await self._send_error(unique_id, error)
            return
        try:
            validation.validate_call(action, payload, self.ocpp_version, wire=True)
        except OCPPError as err:
            cause = (err.details or {}).get("cause", err.description)
            fixed = self.repaired_call(action, payload) if self.lenient else None
            if fixed is None:
                self._warn("%s: %s rejected with %s: %s", self.id, action, self._wire_code(err.code), _short(cause))
                await self._send_error(unique_id, err)
                return
            _LOGGER.info("%s: accepted a non-compliant %s (lenient mode): %s", self.id, action, _short(cause))
            payload = fixed
        bad_id = out_of_range_id(payload, self._max_connectors)
        if bad_id is not None:
            # Every connector id becomes entities and state keys: a charger inventing thousands must not.
            self._warn("%s: %s for connector %d rejected: outside 0..ocpp.max_connectors (%d)", self.id, action, bad_id, self._max_connectors)
            await self._send_error(unique_id, PropertyConstraintViolationError(
                details={"cause": f"connector/EVSE id {bad_id} is outside this central system's range 0..{self._max_connectors}"}))
            return
        if action in self.shallow_actions:
            # Hot path: only the top-level keys become snake_case; the handler reads the nested
            # camelCase as it is (state.parse_meter_values reads 'sampledValue').
            kwargs = {_snake(k): v for k, v in payload.items()}
        else:
            kwargs = snake_keys(payload)
        try:
            response = handlers["_on_action"](**kwargs)
            if _is_awaitable(response):
                response = await response
            if _fieldless(type(response)):  # MeterValues, StatusNotification, ...: the answer is {}
                frame = f"[3,{encode_basestring_ascii(unique_id)},{{}}]"  # json.dumps of a str, without its overhead
            else:
                frame = json.dumps([3, unique_id, camel_keys(remove_nones(serialize_as_dict(response)))], separators=(",", ":"))
        except Exception:  # a bug of ours must not cost the charger its connection
            _LOGGER.exception("%s: internal error while handling %s", self.id, action)
            await self._send_error(unique_id, InternalError(details={"cause": f"internal error handling {action}"}))
            return
        await self._send(frame)
        after_handler = handlers.get("_after_action")
        if after_handler is not None:
            result = after_handler(**kwargs)
            if _is_awaitable(result):
                task = asyncio.ensure_future(result)
                self._after_tasks.add(task)
                task.add_done_callback(self._after_tasks.discard)
        if action != Action.boot_notification and not self.ready.is_set() and not self.boot_refused:
            self._mark_ready("it is evidently running (sent %s)" % action)

    async def call(self, payload: Any, suppress: bool = True, unique_id: str | None = None,
                   skip_schema_validation: bool = False) -> Any:
        """Send a CALL and return the charger's answer as the library's result dataclass.

        Replaces the library's ``call()`` to use the compiled validator and to tell
        a charger's CALLERROR (:class:`ocpp.exceptions.OCPPError`) apart from a
        CALLRESULT that breaks the schema (:class:`InvalidResponse`, naming the field).
        """
        action = type(payload).__name__
        request = camel_keys(remove_nones(serialize_as_dict(payload)))
        if not skip_schema_validation:
            validation.validate_call(action, request, self.ocpp_version)
        unique_id = unique_id or str(self._unique_id_generator())
        async with self._call_lock:
            self._answer_due = True
            try:
                await self._send(json.dumps([2, unique_id, action, request], separators=(",", ":")))
                response = await self._get_specific_response(unique_id, self._response_timeout)
            except asyncio.TimeoutError:
                raise asyncio.TimeoutError(f"no answer to {action} within {self._response_timeout:g} s") from None
            finally:
                self._answer_due = False
        if response.message_type_id == 4:
            if suppress:
                return None
            raise response.to_exception()
        answer = response.payload
        if not skip_schema_validation:
            try:
                validation.validate_result(action, answer, self.ocpp_version, wire=True)
            except OCPPError as err:
                lenient = self.repaired_result(action, answer) if self.lenient else None
                if lenient is None:
                    raise InvalidResponse((err.details or {}).get("cause", err.description)) from None
                _LOGGER.info("%s: accepted a non-compliant %s answer (lenient mode): %s", self.id, action,
                             (err.details or {}).get("cause", err.description))
                answer = lenient
        return getattr(self.results, action)(**snake_keys(answer))

    def _wire_code(self, code: str) -> str:
        """OCPP 1.6-J spells two error codes differently from 2.0.1 (and the library)."""
        return _WIRE_CODES.get(code, code) if self.ocpp_version == "1.6" else code

    def repaired_call(self, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """Lenient mode: the repaired payload, or None (the repairs known are 1.6 firmware quirks)."""
        return normalize_call(action, payload)

    def repaired_result(self, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        return normalize_result(action, payload)

    def _send(self, message: str) -> Awaitable[None]:
        """The connection's send, for the caller to await (not a coroutine of its own: one frame less per answer)."""
        if _LOGGER.isEnabledFor(logging.DEBUG):
            _LOGGER.debug("%s: send %s", self.id, message)
        if self.hub.frame_tap is not None:
            self.hub.frame_tap(self.id, "out", message)
        return self._connection.send(message)  # type: ignore[no-any-return]

    def _mark_ready(self, why: str) -> None:
        if not self.ready.is_set():
            _LOGGER.debug("%s: ready for commands: %s", self.id, why)
            self.ready.set()
            self.hub.charger_ready(self)

    async def wait_for_boot(self) -> None:
        """Backstop for chargers that never send BootNotification after a reconnect."""
        try:
            await asyncio.wait_for(self.ready.wait(), self.config["ocpp"]["boot_wait"])
        except asyncio.TimeoutError:
            if self.boot_refused:
                _LOGGER.warning("%s: its BootNotification was refused and no valid one came within ocpp.boot_wait; "
                                "no commands until it boots again", self.id)
                self.hub.boot_refused(self)
            else:
                self._mark_ready("no BootNotification within ocpp.boot_wait")

    # -- handlers (charger -> us) -------------------------------------------

    @on(Action.boot_notification)
    def on_boot_notification(self, charge_point_vendor: str, charge_point_model: str, **kwargs: Any) -> Any:
        state = self.state
        state.vendor = charge_point_vendor or None  # some firmware sends ""; accept, a refusal boot-loops it
        state.model = charge_point_model or None
        state.firmware = kwargs.get("firmware_version")
        state.serial = kwargs.get("charge_point_serial_number") or kwargs.get("charge_box_serial_number")
        _LOGGER.info("%s: booted (%s %s, firmware %s)", self.id, state.vendor or "?", state.model or "?", state.firmware or "?")
        self.hub.charger_booted(self)
        return call_result.BootNotification(
            current_time=utc_now_iso(),
            interval=self.config["ocpp"]["heartbeat_interval"],
            status=RegistrationStatus.accepted,
        )

    @after(Action.boot_notification)
    def after_boot_notification(self, **kwargs: Any) -> None:
        self.boot_refused = False
        self._mark_ready("BootNotification accepted")

    @on(Action.heartbeat)
    def on_heartbeat(self, **kwargs: Any) -> Any:
        self.state.last_heartbeat = utc_now_iso()
        self.hub.state_changed(self.state, ("last_heartbeat",))
        return call_result.Heartbeat(current_time=self.state.last_heartbeat)

    @on(Action.status_notification)
    def on_status_notification(self, connector_id: int, error_code: str, status: str, **kwargs: Any) -> Any:
        connector = self.state.connector(connector_id)
        connector.status = status
        connector.error_code = error_code
        connector.info = kwargs.get("info")
        connector.vendor_error_code = kwargs.get("vendor_error_code")
        _LOGGER.info("%s: connector %d is %s (%s)", self.id, connector_id, status, error_code)
        # The keys the entity table names this connector's status by: a new one is announced.
        changed = ["status", "error_code"]
        if connector_id > 1 or (connector_id == 1 and len(self.state.connector_ids) > 1):
            changed += [f"connector_{connector_id}_status", f"connector_{connector_id}_error_code"]
        self.hub.state_changed(self.state, changed)
        return call_result.StatusNotification()

    @on(Action.meter_values)
    def on_meter_values(self, connector_id: int, meter_value: list[dict[str, Any]], **kwargs: Any) -> Any:
        """Read its readings at once, or, within ``mqtt.readings_interval`` of the last read, hold them.

        A charger reporting every few seconds is read at once, every time. One sending faster
        (a firmware in a loop, a closed-loop benchmark) is read once per interval, when the
        interval ends: a MeterValues that gives again every reading of the one held before it
        replaces it unread (:func:`state.kinds_supersede`, decided on the kinds kept beside the held
        one, so that its samples, long gone from the CPU's caches, are not touched again), any
        other is kept, and all are read in the order they came. Anything else the charger sends,
        and its leaving, reads what is held first, so every other message sees the readings sent
        before it. Nothing shown changes: state messages of readings go out at most once per
        interval anyway (homeassistant.py). A replaced message is dropped at once: kept, thousands
        of them would live long enough to make every garbage collection walk them.
        """
        interval = self._readings_interval
        if interval > 0:
            loop = asyncio.get_running_loop()
            now = loop.time()
            if self._held or now - self._readings_at < interval:
                held = self._held
                kinds = reading_kinds(meter_value)
                last = held[-1] if held else None
                if last is not None and last[0] == connector_id and kinds_supersede(kinds, last[2]):
                    held[-1] = (connector_id, meter_value, kinds)  # it gives every reading the held one gives
                else:
                    held.append((connector_id, meter_value, kinds))
                if self._held_handle is None:
                    self._held_handle = loop.call_at(max(now, self._readings_at + interval), self.read_held_readings)
                return _METER_VALUES_ANSWER
            self._readings_at = now
        self._read_meter_values(connector_id, meter_value)
        return _METER_VALUES_ANSWER

    def _read_meter_values(self, connector_id: int, meter_value: Any) -> None:
        # Samples older than the newest already applied for this connector are replays of a
        # charger's offline queue: acknowledged, but they must not overwrite live readings.
        readings, newest = latest_meter_values(meter_value, self._newest_sample.get(connector_id))
        if newest is not None:
            self._newest_sample[connector_id] = newest
        if readings:
            self._apply_readings(readings, connector_id)

    def read_held_readings(self) -> None:
        """Read the MeterValues :meth:`on_meter_values` held back, in the order they came."""
        if self._held_handle is not None:
            self._held_handle.cancel()
            self._held_handle = None
        held, self._held = self._held, []
        if not held:
            return
        self._readings_at = asyncio.get_running_loop().time()
        if self.hub.connected.get(self.id) is not self:
            return  # a newer connection of this charger took over: its frames count, not these
        for connector_id, meter_value, _ in held:
            try:
                self._read_meter_values(connector_id, meter_value)
            except Exception:  # a bug of ours must not cost the other readings
                _LOGGER.exception("%s: internal error while reading MeterValues of connector %s", self.id, connector_id)

    def _apply_readings(self, readings: dict[str, float], connector_id: int = 0) -> None:
        state = self.state
        if connector_id > 1:  # a second outlet: its own keys beside the main ones
            readings = {f"connector_{connector_id}_{k}": v for k, v in readings.items()}
        elif "energy" in readings:
            readings["energy"] = self._checked_energy(readings["energy"])
        changed = [k for k, v in readings.items() if state.readings.get(k) != v]
        if changed:
            state.readings.update(readings)
            supply = learn_supply(state.readings) if connector_id <= 1 else None
            if supply is not None:
                known, state.supply = state.supply, supply
                if known is None or (known.dc, known.phases) != (supply.dc, supply.phases):
                    # Once per change of kind, not per sample: the voltage moves a little with every one.
                    _LOGGER.info("%s: its readings show %s", self.id, "DC" if supply.dc else f"{supply.phases}-phase AC at {supply.voltage:g} V")
                    self.hub.supply_learned(self)
        active = state.active_transaction()
        if active and active[0] == max(connector_id, 1) and "energy" in readings:
            changed += self._update_session(active[1])
        if changed:
            self.hub.state_changed(state, changed)

    def _checked_energy(self, energy: float) -> float:
        """A total_increasing register that drops (to 0, or backwards) would corrupt the energy dashboard.

        Keep the last good value; only a drop confirmed by 3 readings in a row (a
        replaced meter) is accepted.
        """
        last = self.state.readings.get("energy")
        if last is None or energy >= last:
            self._energy_drops = 0
            return energy
        self._energy_drops += 1
        if self._energy_drops >= 3:
            _LOGGER.warning("%s: energy register reset from %.3f to %.3f kWh (3 readings in a row); accepting it", self.id, last, energy)
            self._energy_drops = 0
            return energy
        _LOGGER.warning("%s: energy register went backwards (%.3f -> %.3f kWh); keeping %.3f", self.id, last, energy, last)
        return last

    def _update_session(self, connector: Any) -> list[str]:
        energy = self.state.readings.get("energy")
        changed = []
        if energy is not None and connector.meter_start is not None:
            session_energy = round(max(0.0, energy - connector.meter_start / 1000), 3)
            if session_energy != connector.session_energy:
                connector.session_energy = session_energy
                changed.append("session_energy")
        if connector.session_start is not None:
            connector.session_duration = round((datetime.now(timezone.utc) - connector.session_start).total_seconds())
            changed.append("session_duration")
        return changed

    def _id_tag_info(self, id_tag: str) -> dict[str, Any]:
        """Authorize from ``authorization``: accept everyone, or only the allow list (with status and expiry)."""
        auth = self.config["authorization"]
        if auth["mode"] == "accept_all":
            return {"status": AuthorizationStatus.accepted}
        for entry in auth["id_tags"]:
            if entry["id_tag"] == id_tag:
                expiry = parse_timestamp(entry["expiry"]) if entry["expiry"] else None
                if expiry is not None and expiry < datetime.now(timezone.utc):
                    return {"status": AuthorizationStatus.expired, "expiry_date": entry["expiry"]}
                info: dict[str, Any] = {"status": entry["status"]}
                if entry["expiry"]:
                    info["expiry_date"] = entry["expiry"]
                return info
        _LOGGER.info("%s: id tag %r is not on the allow list", self.id, id_tag)
        return {"status": AuthorizationStatus.invalid}

    @on(Action.start_transaction)
    def on_start_transaction(self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **kwargs: Any) -> Any:
        transaction_id = self.hub.next_transaction_id()
        id_tag_info = self._id_tag_info(id_tag)
        connector = self.state.connector(connector_id)
        if id_tag_info["status"] == AuthorizationStatus.accepted:
            connector.transaction_id = transaction_id
            connector.id_tag = id_tag
            connector.meter_start = meter_register(meter_start)
            connector.session_start = parse_timestamp(timestamp) or datetime.now(timezone.utc)
            connector.session_energy = 0.0
            connector.session_duration = 0
            connector.stop_reason = None
            _LOGGER.info("%s: transaction %d started on connector %d", self.id, transaction_id, connector_id)
            self.hub.state_changed(self.state, ("transaction_id", "session_energy", "id_tag"))
        else:
            _LOGGER.info("%s: transaction refused for id tag %r (%s)", self.id, id_tag, id_tag_info["status"])
        return call_result.StartTransaction(transaction_id=transaction_id, id_tag_info=id_tag_info)

    @after(Action.start_transaction)
    def after_start_transaction(self, **kwargs: Any) -> None:
        self.hub.transaction_started(self)

    @on(Action.stop_transaction)
    def on_stop_transaction(self, meter_stop: int, timestamp: str, transaction_id: int, **kwargs: Any) -> Any:
        # Idempotent: a duplicate or unknown StopTransaction is still acknowledged, or the
        # charger keeps it queued and replays it forever.
        if kwargs.get("transaction_data"):
            self._apply_readings(parse_meter_values(kwargs["transaction_data"]))
        for connector_id, connector in self.state.connectors.items():
            if connector.transaction_id == transaction_id:
                connector.transaction_id = None
                connector.stop_reason = kwargs.get("reason") or "Local"
                stop = meter_register(meter_stop)
                if connector.meter_start is not None and stop is not None:
                    connector.session_energy = round(max(0.0, (stop - connector.meter_start) / 1000), 3)
                if connector.session_start is not None:
                    end = parse_timestamp(timestamp) or datetime.now(timezone.utc)
                    connector.session_duration = max(0, round((end - connector.session_start).total_seconds()))
                _LOGGER.info("%s: transaction %d stopped (%s)", self.id, transaction_id, connector.stop_reason)
                changed = ["transaction_id", "session_energy", "stop_reason"]
                changed += self.state.end_live_readings(connector_id)
                self.hub.state_changed(self.state, changed)
        id_tag = kwargs.get("id_tag")
        return call_result.StopTransaction(id_tag_info=self._id_tag_info(id_tag) if id_tag else None)

    @on(Action.authorize)
    def on_authorize(self, id_tag: str, **kwargs: Any) -> Any:
        return call_result.Authorize(id_tag_info=self._id_tag_info(id_tag))

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **kwargs: Any) -> Any:
        _LOGGER.info("%s: DataTransfer from vendor %r (message %r) not handled", self.id, vendor_id, kwargs.get("message_id"))
        return call_result.DataTransfer(status=DataTransferStatus.unknown_vendor_id)

    @on(Action.firmware_status_notification)
    def on_firmware_status_notification(self, status: str, **kwargs: Any) -> Any:
        self.state.firmware_status = status
        self.hub.state_changed(self.state, ("firmware_status",))
        return call_result.FirmwareStatusNotification()

    @on(Action.diagnostics_status_notification)
    def on_diagnostics_status_notification(self, status: str, **kwargs: Any) -> Any:
        self.state.diagnostics_status = status
        self.hub.state_changed(self.state, ("diagnostics_status",))
        return call_result.DiagnosticsStatusNotification()

    # -- commands (us -> charger) ---------------------------------------------

    async def configure(self) -> None:
        """Read the charger's smart-charging capabilities once per connection; apply our meter-value settings."""
        try:
            outcome = await self.call_status(call.GetConfiguration(key=list(CAPABILITY_KEYS)))
            keys = outcome.get("response", {}).get("configurationKey") if outcome["status"] == Status.ACCEPTED else None
            if keys is not None:
                self.state.capabilities = parse_configuration(keys)
                _LOGGER.info("%s: capabilities %s", self.id, self.state.capabilities)
                self.hub.capabilities_learned(self)
                await self._configure_meter_values()
        finally:
            self.configured.set()

    async def _configure_meter_values(self) -> None:
        """Set MeterValueSampleInterval / MeterValuesSampledData from config when they differ.

        A charger may reject a measurand list; then we try the measurands one by one
        and set the subset it accepts, never leaving it with none (ABB Terra boot-looped
        on automatic configuration: change only what differs, read back, keep what works).
        """
        wanted = self.config["meter_values"]
        caps = self.state.capabilities
        changed = False
        interval = wanted["sample_interval"]
        if interval is not None and caps.get("meter_value_sample_interval") != interval:
            result = await self.execute_change_configuration("MeterValueSampleInterval", str(interval))
            changed = changed or result["status"] in CONFIG_TAKEN
        measurands = wanted["sampled_data"]
        current = caps.get("meter_values_sampled_data")
        if measurands and current is not None and set(measurands) != set(current):
            result = await self.execute_change_configuration("MeterValuesSampledData", ",".join(measurands))
            if result["status"] not in CONFIG_TAKEN:
                accepted = []
                for measurand in measurands:
                    single = await self.execute_change_configuration("MeterValuesSampledData", measurand)
                    if single["status"] in CONFIG_TAKEN:
                        accepted.append(measurand)
                if accepted:
                    result = await self.execute_change_configuration("MeterValuesSampledData", ",".join(accepted))
                if not accepted or result["status"] not in CONFIG_TAKEN:
                    await self.execute_change_configuration("MeterValuesSampledData", ",".join(current) or "Energy.Active.Import.Register")
                _LOGGER.warning("%s: charger refused MeterValuesSampledData %s; kept %s", self.id, ",".join(measurands),
                                ",".join(accepted) or ",".join(current))
            changed = True
        if changed:
            readback = await self.call_status(call.GetConfiguration(key=["MeterValuesSampledData", "MeterValueSampleInterval"]))
            keys = readback.get("response", {}).get("configurationKey")
            if keys is not None:
                caps.update(parse_configuration(keys))
                self.hub.capabilities_learned(self)

    async def execute_clear_charging_limit(self) -> dict[str, Any]:
        """Remove the profiles we installed (ClearChargingProfile by id; by purpose/stack level as a fallback)."""
        state = self.state
        strategy = Attempt.from_dict(state.strategy) if state.strategy and state.strategy != UNSUPPORTED else None
        if strategy is None:
            template = self.config["charging"]["profile"]
            result = await self.execute_clear_charging_profile(purpose=template["purpose"], stack_level=template["stack_level"])
        else:
            result = {"status": Status.ACCEPTED}
            fixed = self.config["charging"]["profile"]["profile_id"]
            for connector_id in strategy.connector_ids:
                ours = profile_id(strategy.purpose, connector_id, strategy.stack_level, fixed)
                result = await self.execute_clear_charging_profile(profile_id=ours)
                if result["status"] != Status.ACCEPTED:
                    result = await self.execute_clear_charging_profile(purpose=strategy.purpose, stack_level=strategy.stack_level)
        return {**result, "command": "clear_charging_limit"}

    async def refresh_effective_limit(self) -> None:
        """Ask the charger what it really enforces now (GetCompositeSchedule) and publish it."""
        state = self.state
        slider_unit = self.config["charging"]["unit"]
        allowed = state.capabilities.get("allowed_units")
        unit = slider_unit if allowed and slider_unit in allowed else (allowed[0] if allowed else None)
        result = await self.execute_get_composite_schedule(connector_id=state.connector_ids[0], duration=300, unit=unit)
        effective: float | None = None
        response = result.get("response", {})
        schedule = response.get("chargingSchedule") if result["status"] == Status.ACCEPTED else None
        if schedule:
            periods = [(int(start), limit) for p in schedule.get("chargingSchedulePeriod", [])
                       if (limit := parse_number(p.get("limit"))) is not None and (start := parse_number(p.get("startPeriod", 0))) is not None]
            started = parse_timestamp(response.get("scheduleStart") or schedule.get("startSchedule")) or datetime.now(timezone.utc)
            value = limit_now(periods, started, datetime.now(timezone.utc)) if periods else None
            if value is not None:
                rate_unit = schedule.get("chargingRateUnit", slider_unit)
                elec = electrical(state, self.config["charging"])
                effective = round(convert_limit(value, rate_unit, slider_unit, elec.voltage, elec.phases), 2)
                if not math.isfinite(effective):
                    effective = None  # 1e306 A is a number the schema allows, and no limit at all in W
        if effective != state.effective_limit:
            state.effective_limit, state.effective_limit_unit = effective, slider_unit
            self.hub.state_changed(state, ("effective_limit",))

    async def execute_trigger_message(self, requested_message: str, connector_id: int | None = None) -> dict[str, Any]:
        """Ask the charger to send a message now (BootNotification, MeterValues, StatusNotification, ...)."""
        profiles = self.state.capabilities.get("feature_profiles")
        if profiles is not None and not any(p.lower() == "remotetrigger" for p in profiles):
            return {"command": "trigger_message", "requested_message": requested_message, "status": Status.NOT_SUPPORTED,
                    "reason": "the charger does not list RemoteTrigger in SupportedFeatureProfiles"}
        return {"command": "trigger_message", "requested_message": requested_message,
                **await self.call_status(call.TriggerMessage(requested_message=requested_message, connector_id=connector_id))}

    async def execute_unlock_connector(self, connector_id: int = 1) -> dict[str, Any]:
        return {"command": "unlock_connector", "connector_id": connector_id,
                **await self.call_status(call.UnlockConnector(connector_id=connector_id))}

    async def execute_get_composite_schedule(self, connector_id: int = 0, duration: int = 3600, unit: str | None = None) -> dict[str, Any]:
        """The schedule the charger will really apply (the minimum of all its active profiles)."""
        return {"command": "get_composite_schedule", "connector_id": connector_id,
                **await self.call_status(call.GetCompositeSchedule(connector_id=connector_id, duration=duration, charging_rate_unit=unit))}

    async def execute_clear_charging_profile(self, profile_id: int | None = None, connector_id: int | None = None,
                                             purpose: str | None = None, stack_level: int | None = None) -> dict[str, Any]:
        return {"command": "clear_charging_profile", **await self.call_status(call.ClearChargingProfile(
            id=profile_id, connector_id=connector_id, charging_profile_purpose=purpose, stack_level=stack_level))}

    async def execute_reset(self, kind: str = "Soft") -> dict[str, Any]:
        return {"command": "reset", "type": kind, **await self.call_status(call.Reset(type=kind))}

    async def execute_remote_start_transaction(self, id_tag: str, connector_id: int | None = 1) -> dict[str, Any]:
        return {"command": "remote_start_transaction", **await self.call_status(
            call.RemoteStartTransaction(id_tag=id_tag, connector_id=connector_id))}

    async def execute_remote_stop_transaction(self, transaction_id: int) -> dict[str, Any]:
        return {"command": "remote_stop_transaction", "transaction_id": transaction_id,
                **await self.call_status(call.RemoteStopTransaction(transaction_id=transaction_id))}

    async def execute_change_availability(self, operative: bool, connector_id: int = 0) -> dict[str, Any]:
        """ChangeAvailability; some single-outlet chargers refuse connector 0, so fall back to each connector."""
        kind = "Operative" if operative else "Inoperative"
        outcome = await self.call_status(call.ChangeAvailability(connector_id=connector_id, type=kind))
        if connector_id == 0 and outcome["status"] == Status.REJECTED:
            for each in self.state.connector_ids:
                outcome = await self.call_status(call.ChangeAvailability(connector_id=each, type=kind))
                if outcome["status"] not in (Status.ACCEPTED, Status.SCHEDULED):
                    break
            connector_id = -1  # reported as "each connector"
        return {"command": "change_availability", "type": kind, "connector_id": connector_id if connector_id >= 0 else "each", **outcome}

    async def execute_refresh(self) -> dict[str, Any]:
        """Ask for fresh meter values and status now (TriggerMessage)."""
        meter = await self.execute_trigger_message("MeterValues", self.state.connector_ids[0])
        status = await self.execute_trigger_message("StatusNotification")
        worst = meter if meter["status"] != Status.ACCEPTED else status
        result = {"command": "refresh", "status": worst["status"], "meter_values": meter["status"], "status_notification": status["status"]}
        if "reason" in worst:
            result["reason"] = worst["reason"]
        return result

    async def execute_get_configuration(self, keys: list[str] | None = None) -> dict[str, Any]:
        return {"command": "get_configuration", **await self.call_status(call.GetConfiguration(key=keys))}

    async def execute_change_configuration(self, key: str, value: str) -> dict[str, Any]:
        return {"command": "change_configuration", "key": key,
                **await self.call_status(call.ChangeConfiguration(key=key, value=value))}

    async def call_status(self, request: Any) -> dict[str, Any]:
        """Run a CALL and express its outcome as ``{"status": ...}`` (never raises for charger faults)."""
        action = type(request).__name__
        try:
            response = await self.call(request, suppress=False)
        except asyncio.TimeoutError:
            _LOGGER.warning("%s: no answer to %s within %ss", self.id, action, self._response_timeout)
            return {"status": Status.TIMEOUT, "reason": f"no answer within {self._response_timeout:g} s"}
        except ConnectionClosed:
            _LOGGER.info("%s: %s not answered: the connection closed", self.id, action)
            return {"status": Status.DISCONNECTED, "reason": "the charger disconnected"}
        except InvalidResponse as err:
            _LOGGER.warning("%s: %s answer breaks the OCPP schema: %s", self.id, action, err)
            return {"status": Status.INVALID_RESPONSE, "reason": str(err)}
        except OCPPError as err:
            _LOGGER.warning("%s: %s answered with CALLERROR %s", self.id, action, err.code)
            return {"status": Status.CALL_ERROR, "reason": f"{err.code}: {err.description}"}
        status = getattr(response, "status", None)
        if status is not None:
            _LOGGER.info("%s: %s -> %s", self.id, action, status)
        outcome: dict[str, Any] = {"status": str(status) if status is not None else Status.ACCEPTED}
        details = camel_keys(remove_nones(serialize_as_dict(response)))
        details.pop("status", None)
        if details:
            outcome["response"] = details
        return outcome

