"""Real chargers' frames against the real service, over a real WebSocket.

The corpus (``charger-traces/frames.jsonl``, 93 frames from about 28 vendors, see its
README) is replayed line by line:

* every ``cp->cs`` frame (a charger's CALL) is sent, byte for byte as posted, on a raw
  WebSocket of a charger named after the trace's vendor. A compliant frame must get a
  schema-valid CALLRESULT with the same message id and the right meaning (BootNotification
  Accepted, a usable transaction id, readings on ``ocpp/<cp>/state`` ...); a non-compliant
  one a CALLERROR naming the offending field, or nothing when it has no usable id. Either
  way the connection stays open and a following Heartbeat is answered;
* every ``cp-result`` frame (a charger's answer to one of our CALLs) is fed back as the
  answer to the matching command, and the command's result must report it honestly;
* the README's quirks that no frame shows verbatim (transactionId 2^63-1, numbers with a
  leading space, context ``CurrentMax``, timestamps without a zone, ``Celcius``, feature
  lists with spaces, ...) are replayed as variants of a real frame, named after it.

Test ids are ``<line>-<vendor>-<action>`` (plus ``-<variant>``), so a failure names the
frame. Nothing sleeps: every wait is on a reply, an MQTT message or a hub event, with a
timeout.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
import websockets
from ocpp.exceptions import OCPPError
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from ocpp_addon import validation
from ocpp_addon.homeassistant import discovery_topic
from ocpp_addon.hub import READY, RESULT

from .conftest import MqttProbe, Service

REPLY_TIMEOUT = 5.0
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MAX = 2**63 - 1
#: OCPP-J 1.6 §4.2.3 error codes, in the 1.6 spelling.
OCPP16_ERROR_CODES = frozenset({
    "NotImplemented", "NotSupported", "InternalError", "ProtocolError", "SecurityError", "FormationViolation",
    "PropertyConstraintViolation", "OccurenceConstraintViolation", "TypeConstraintViolation", "GenericError",
})


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------

def _corpus_dir() -> Path | None:
    candidates = [
        os.environ.get("OCPP_CHARGER_TRACES"),
        Path(__file__).parent / "data" / "charger-traces",
        "/work/shared/reference/charger-traces",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "frames.jsonl").is_file():
            return Path(candidate)
    return None


CORPUS_DIR = _corpus_dir()


@dataclass(frozen=True)
class Trace:
    line: int
    data: dict[str, Any] = field(repr=False)

    vendor = property(lambda self: self.data["vendor"])
    direction = property(lambda self: self.data["direction"])
    action = property(lambda self: self.data["action"])
    frame = property(lambda self: self.data["frame"])
    raw = property(lambda self: self.data["raw"])
    compliant = property(lambda self: self.data["compliant"])
    reconstructed = property(lambda self: self.data.get("reconstructed_frame"))

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._:-]+", "-", self.vendor).strip("-") or "unknown"

    @property
    def charger_id(self) -> str:
        """The vendor, sanitised to the charge point id alphabet, plus the line (unique per test)."""
        return f"{self.slug[:50]}-{self.line}"

    @property
    def case_id(self) -> str:
        return f"{self.line}-{self.slug}-{self.action}"

    @property
    def payload(self) -> Any:
        """The payload of the frame as sent (CALL: index 3, CALLRESULT: index 2)."""
        frame = self.frame if self.frame is not None else self.reconstructed
        return frame[3] if frame[0] == 2 else frame[2]


def _load() -> dict[int, Trace]:
    if CORPUS_DIR is None:
        return {}
    lines = (CORPUS_DIR / "frames.jsonl").read_text(encoding="utf-8").splitlines()
    return {number: Trace(number, json.loads(text)) for number, text in enumerate(lines, 1) if text.strip()}


TRACES = _load()
CHARGER_CALLS = [t for t in TRACES.values() if t.direction == "cp->cs"]
CHARGER_ANSWERS = [t for t in TRACES.values() if t.direction == "cp-result"]


def trace_ids(trace: Trace) -> str:
    return trace.case_id


def test_corpus_is_present_and_complete() -> None:
    assert CORPUS_DIR is not None, (
        "charger-traces corpus not found: set OCPP_CHARGER_TRACES or copy it to tests/data/charger-traces/")
    assert len(TRACES) == 93
    assert {t.direction for t in TRACES.values()} == {"cp->cs", "cp-result", "cs->cp"}
    assert len(CHARGER_CALLS) + len(CHARGER_ANSWERS) == 85  # the other 8 are our side's CALLs, context only


# ---------------------------------------------------------------------------------------------
# A raw charger: a bare WebSocket, frames as text, no OCPP library on this side
# ---------------------------------------------------------------------------------------------

def default_answer(call: list[Any]) -> str:
    """What a plain charger answers to our housekeeping CALLs (capability read, schedule read-back).

    It knows none of the requested configuration keys, accepts configuration changes, has no
    composite schedule and supports nothing else. Tests that care about a CALL claim it instead.
    """
    message_id, action, payload = call[1], call[2], call[3]
    if action == "GetConfiguration":
        return json.dumps([3, message_id, {"configurationKey": [], "unknownKey": payload.get("key", [])}])
    if action == "ChangeConfiguration":
        return json.dumps([3, message_id, {"status": "Accepted"}])
    if action == "GetCompositeSchedule":
        return json.dumps([3, message_id, {"status": "Rejected"}])
    return json.dumps([4, message_id, "NotSupported", f"{action} is not supported by this test charger", {}])


_CLOSED = object()


class RawCharger:
    """A charger on a bare WebSocket.

    A reader task sorts what the service sends: answers to our CALLs go to ``replies`` (in
    order), the service's CALLs to ``calls``. A CALL somebody ``claim``-ed is handed over
    unanswered; the others are answered at once from ``answers`` (per action) or
    ``default_answer``, as a charger's firmware would.
    """

    def __init__(self, service: Service, charger_id: str, ws: ClientConnection) -> None:
        self.service = service
        self.id = charger_id
        self.ws = ws
        self.replies: asyncio.Queue[Any] = asyncio.Queue()
        self.calls: list[list[Any]] = []
        self.answers: dict[str, Callable[[list[Any]], str]] = {}
        self._claims: list[tuple[str, asyncio.Future[list[Any]]]] = []
        self.closed_by: str | None = None
        self._reader = asyncio.create_task(self._read(), name=f"raw-{charger_id}")

    @classmethod
    async def connect(cls, service: Service, charger_id: str) -> RawCharger:
        ws = await websockets.connect(f"{service.url}/{charger_id}", subprotocols=["ocpp1.6"])
        return cls(service, charger_id, ws)

    async def _read(self) -> None:
        try:
            async for text in self.ws:
                msg = json.loads(text)
                if isinstance(msg, list) and len(msg) == 4 and msg[0] == 2:
                    self.calls.append(msg)
                    claim = next((c for c in self._claims if c[0] == msg[2] and not c[1].done()), None)
                    if claim is not None:
                        self._claims.remove(claim)
                        claim[1].set_result(msg)
                    else:
                        await self.ws.send(self.answers.get(msg[2], default_answer)(msg))
                else:
                    self.replies.put_nowait(msg)
        except ConnectionClosed as err:
            self.closed_by = repr(err)
        except Exception as err:  # e.g. a frame from the service that is not JSON: fail the waiting test
            self.closed_by = f"reader failed: {err!r}"
        finally:
            self.replies.put_nowait(_CLOSED)
            for _, future in self._claims:
                if not future.done():
                    future.set_exception(AssertionError(f"{self.id}: connection closed ({self.closed_by})"))

    def claim(self, action: str) -> asyncio.Future[list[Any]]:
        """The next ``action`` CALL from the service is ours to answer (see ``wait_claimed``)."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._claims.append((action, future))
        return future

    async def wait_claimed(self, future: asyncio.Future[list[Any]], action: str) -> list[Any]:
        try:
            call = await asyncio.wait_for(future, REPLY_TIMEOUT)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.id}: the service sent no {action} CALL within {REPLY_TIMEOUT}s") from None
        validation.validate_call(action, call[3])  # what we send is valid OCPP 1.6 too
        return call

    async def send(self, text: str) -> None:
        await self.ws.send(text)

    async def recv(self, what: str = "a frame") -> Any:
        try:
            reply = await asyncio.wait_for(self.replies.get(), REPLY_TIMEOUT)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.id}: no {what} from the service within {REPLY_TIMEOUT}s") from None
        if reply is _CLOSED:
            self.replies.put_nowait(_CLOSED)
            raise AssertionError(f"{self.id}: the service closed the connection while we waited for {what}: {self.closed_by}")
        return reply

    async def request(self, text: str, message_id: str) -> list[Any]:
        """Send a CALL and return the answer, which must be the next one and carry ``message_id``."""
        await self.send(text)
        reply = await self.recv(f"answer to message {message_id!r}")
        assert isinstance(reply, list) and len(reply) >= 3 and reply[1] == message_id, (
            f"expected the answer to {message_id!r} (same id) next, got {reply!r}")
        return reply

    async def heartbeat(self, tag: str | int) -> list[Any]:
        """``[2,"probe-N","Heartbeat",{}]`` must be answered: the connection is alive and in sync."""
        message_id = f"probe-{tag}"[:36]
        reply = await self.request(json.dumps([2, message_id, "Heartbeat", {}]), message_id)
        assert reply[0] == 3, f"Heartbeat {message_id} not accepted: {reply!r}"
        validation.validate_result("Heartbeat", reply[2])
        assert reply[2]["currentTime"].endswith("Z")
        return reply

    async def assert_alive(self, tag: str | int) -> None:
        await self.heartbeat(tag)
        assert self.service.app.hub.connected.get(self.id) is not None, f"{self.id} is no longer registered as connected"

    async def configured(self) -> None:
        """Ready for commands and done with the service's own capability read (answered by ``answers``/``default_answer``)."""
        since = len(self.service.events)
        await self.heartbeat("ready")  # registered, and evidently running: commands may go out
        cp = self.service.app.hub.connected[self.id]
        if not cp.ready.is_set():
            await self.service.wait_event(READY, self.id, since=since, timeout=REPLY_TIMEOUT)
        configured = getattr(cp, "configured", None)
        if configured is not None:
            try:
                await asyncio.wait_for(configured.wait(), REPLY_TIMEOUT)
            except asyncio.TimeoutError:
                raise AssertionError(f"{self.id}: the service did not finish its capability read within {REPLY_TIMEOUT}s") from None

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)


async def open_charger(service: Service, charger_id: str) -> RawCharger:
    return await RawCharger.connect(service, charger_id)


def with_message_id(raw: str, old_id: str, new_id: str) -> str:
    """The posted text with only its message id replaced (pretty-printing kept)."""
    quoted = json.dumps(old_id)
    assert quoted in raw, f"message id {quoted} not found in {raw!r}"
    text = raw.replace(quoted, json.dumps(new_id), 1)
    parsed = json.loads(text)
    assert parsed[1] == new_id
    return text


def answer_text(trace: Trace, message_id: str) -> str:
    """The charger's answer from the trace, re-addressed to ``message_id``."""
    if trace.frame is not None:
        return with_message_id(trace.raw, trace.frame[1], message_id)
    frame = copy.deepcopy(trace.reconstructed)  # only a Python repr was posted: send its JSON equivalent
    frame[1] = message_id
    return json.dumps(frame)


# ---------------------------------------------------------------------------------------------
# MQTT and state checks
# ---------------------------------------------------------------------------------------------

def close_to(actual: Any, expected: float) -> bool:
    return isinstance(actual, (int, float)) and not isinstance(actual, bool) and math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-6)


async def wait_state(probe: MqttProbe, charger_id: str, expected: dict[str, Any], since: int) -> dict[str, Any]:
    """Wait for ``ocpp/<cp>/state`` to carry every key of ``expected`` (numbers compared with a tolerance)."""
    topic = f"ocpp/{charger_id}/state"

    def matches(state: dict[str, Any]) -> bool:
        return all(close_to(state.get(k), v) if isinstance(v, (int, float)) and not isinstance(v, bool) else state.get(k) == v
                   for k, v in expected.items())

    try:
        return await probe.wait_json(topic, matches, timeout=REPLY_TIMEOUT, since=since)
    except AssertionError:
        published = [json.loads(p) for p in probe.received(topic)[-1:]]
        last = published[-1] if published else None
        shown = {k: last.get(k) for k in expected} if isinstance(last, dict) else last
        raise AssertionError(f"{topic}: expected {expected}, last published values {shown}") from None


#: Compliant MeterValues -> readings that must appear on the state topic, in the units published
#: (kWh, W, A, V, %, degC). Worked out by hand from the frames, not with the service's parser.
EXPECTED_READINGS: dict[int, dict[str, float]] = {
    6: {"energy": 364.874, "power": 20040, "soc": 47.0, "current_offered": 29.9, "current": 30, "voltage": 668},
    10: {"energy": 0.139, "power": 0, "power_l1": 0, "power_l2": 0, "power_l3": 0, "current": 0.0},
    # single-phase charger: voltage on L1-N is L1's, current on N is reported as such; power in kW
    11: {"energy": 254.78, "power": 3500, "temperature": 35, "voltage_l1": 231.1, "current_n": 15.6},
    15: {"connector_3_energy": 51.6085},  # a satellite's outlet: its own keys beside the main ones
    20: {"energy": 1.02, "power": 2834, "current_offered": 6, "power_offered": 4156, "current_l1": 6, "voltage_l1": 225.0},
    23: {"energy": 0.7346},
    28: {"energy": 5014.23, "power": 0, "current_l1": 0, "current_l2": 0, "current_l3": 0,
         "voltage_l1": 239, "voltage_l2": 238, "voltage_l3": 237},
    41: {"energy": 107.8593},
    42: {"energy": 165.5445, "power": 0},
    43: {"energy": 49.7, "power": 2, "power_offered": 0, "voltage_l1": 240.3, "current_l1": 0.01},
    62: {"voltage": 247.1},
    # the register is the Sample.Periodic 678 Wh; the repeated Transaction.Begin 0 Wh is history, not the reading
    65: {"energy": 0.678, "current_l1": 16.3, "voltage_l1": 236.7, "power_l1": 3878, "temperature": 30.0},
    # StopTransaction.transactionData: the Transaction.End register (newest timestamp) wins
    67: {"energy": 2.421},
}


# ---------------------------------------------------------------------------------------------
# Per-action checks of a CALLRESULT to a compliant charger CALL
# ---------------------------------------------------------------------------------------------

@dataclass
class CallCase:
    """One charger CALL to replay: the text as sent plus what its answer must say."""

    case_id: str
    charger_id: str
    action: str
    text: str
    message_id: str | None  # None: not JSON / no usable id -> must be dropped
    payload: Any = None
    compliant: bool = True
    error: tuple[str, str] | None = None  # (error code, field the cause must name) for non-compliant frames
    readings: dict[str, float] | None = None


async def check_boot(service: Service, probe: MqttProbe, charger: RawCharger, case: CallCase, result: dict[str, Any], since: int) -> None:
    assert result["status"] == "Accepted", f"BootNotification answered {result['status']}: the charger will reboot-loop"
    assert result["currentTime"].endswith("Z"), result["currentTime"]
    datetime.fromisoformat(result["currentTime"][:-1] + "+00:00")
    assert isinstance(result["interval"], int) and result["interval"] > 0
    sent = case.payload
    state = service.app.hub.states[charger.id]
    assert state.vendor == (sent["chargePointVendor"] or None)
    assert state.model == (sent["chargePointModel"] or None)
    assert state.firmware == sent.get("firmwareVersion")
    # Home Assistant sees the identity; an empty vendor is left out, not announced as ""
    discovery = await probe.wait_json(
        discovery_topic("homeassistant", charger.id), lambda d: d["device"].get("model") == sent["chargePointModel"], since=since)
    if sent["chargePointVendor"]:
        assert discovery["device"]["manufacturer"] == sent["chargePointVendor"]
    else:
        assert "manufacturer" not in discovery["device"]


async def check_status(service: Service, probe: MqttProbe, charger: RawCharger, case: CallCase, result: dict[str, Any], since: int) -> None:
    assert result == {}
    sent = case.payload
    connector = service.app.hub.states[charger.id].connectors[sent["connectorId"]]
    assert (connector.status, connector.error_code) == (sent["status"], sent["errorCode"])
    # on a fresh charger the reported connector (0 or 1) is the one the state topic shows
    await wait_state(probe, charger.id, {"status": sent["status"], "error_code": sent["errorCode"]}, since)


async def check_meter_values(service: Service, probe: MqttProbe, charger: RawCharger, case: CallCase, result: dict[str, Any], since: int) -> None:
    assert result == {}
    assert case.readings is not None, f"{case.case_id}: add its expected readings to EXPECTED_READINGS"
    await wait_state(probe, charger.id, case.readings, since)


async def check_start_transaction(service: Service, probe: MqttProbe, charger: RawCharger, case: CallCase, result: dict[str, Any], since: int) -> None:
    assert result["idTagInfo"]["status"] == "Accepted", f"idTag {case.payload['idTag']!r} refused: {result}"
    first = result["transactionId"]
    assert type(first) is int and INT32_MIN <= first <= INT32_MAX, f"transactionId {first!r} is not a 32-bit integer"
    connector = case.payload["connectorId"]
    assert service.app.hub.states[charger.id].connectors[connector].transaction_id == first
    await wait_state(probe, charger.id, {"transaction_id": first}, since)
    # a second transaction (another connector, a new message id) gets a different id
    again = dict(case.payload, connectorId=connector + 1)
    reply = await charger.request(json.dumps([2, "second-start", "StartTransaction", again]), "second-start")
    assert reply[0] == 3, reply
    validation.validate_result("StartTransaction", reply[2])
    second = reply[2]["transactionId"]
    assert type(second) is int and INT32_MIN <= second <= INT32_MAX and second != first, (first, second)


async def check_stop_transaction(service: Service, probe: MqttProbe, charger: RawCharger, case: CallCase, result: dict[str, Any], since: int) -> None:
    # the transaction is unknown here (started before this connection): acknowledged anyway,
    # or the charger keeps it queued and replays it forever
    if "idTagInfo" in result:
        assert result["idTagInfo"]["status"] == "Accepted", result
    if case.readings:
        await wait_state(probe, charger.id, case.readings, since)
    # a duplicate (same content, replayed with a new message id) is acknowledged too
    reply = await charger.request(json.dumps([2, "duplicate-stop", "StopTransaction", case.payload]), "duplicate-stop")
    assert reply[0] == 3, f"duplicate StopTransaction refused: {reply!r}"
    validation.validate_result("StopTransaction", reply[2])


async def check_data_transfer(service: Service, probe: MqttProbe, charger: RawCharger, case: CallCase, result: dict[str, Any], since: int) -> None:
    # we implement no vendor extension: say so, do not pretend to have processed the data
    assert result["status"] in ("UnknownVendorId", "UnknownMessageId"), result


CHECKS: dict[str, Callable[..., Awaitable[None]]] = {
    "BootNotification": check_boot,
    "StatusNotification": check_status,
    "MeterValues": check_meter_values,
    "StartTransaction": check_start_transaction,
    "StopTransaction": check_stop_transaction,
    "DataTransfer": check_data_transfer,
}

#: Non-compliant frames that carry a usable id: the CALLERROR code and the field its cause must name.
EXPECTED_ERRORS: dict[int, tuple[str, str]] = {
    2: ("FormationViolation", "errorCode"),  # errorCode 'Error' is not a ChargePointErrorCode
}


async def replay_call(service: Service, probe: MqttProbe, case: CallCase) -> None:
    """Send one charger CALL exactly as given and check the answer, then that the connection lives on."""
    charger = await open_charger(service, case.charger_id)
    since = probe.mark()
    await charger.send(case.text)
    if case.message_id is None:
        # not JSON or not an OCPP-J array: nothing to address an answer to. The next frame we
        # receive must be the answer to our probe, i.e. the frame was dropped, not answered late.
        await charger.assert_alive(case.case_id)
    else:
        reply = await charger.recv(f"answer to {case.message_id!r}")
        assert isinstance(reply, list) and reply[1] == case.message_id, f"answer not addressed to {case.message_id!r}: {reply!r}"
        if case.compliant:
            assert reply[0] == 3, f"a compliant {case.action} got {reply!r}"
            assert len(reply) == 3
            validation.validate_result(case.action, reply[2])
            await CHECKS[case.action](service, probe, charger, case, reply[2], since)
        else:
            assert reply[0] == 4 and len(reply) == 5, f"a non-compliant {case.action} must get a CALLERROR, got {reply!r}"
            code, description, details = reply[2:]
            assert code in OCPP16_ERROR_CODES and isinstance(description, str) and isinstance(details, dict), reply
            assert case.error is not None, f"{case.case_id}: add its expected error to EXPECTED_ERRORS"
            expected_code, field_name = case.error
            assert code == expected_code, f"expected {expected_code}, got {reply!r}"
            assert field_name in details.get("cause", ""), f"the cause should name {field_name!r}: {details}"
        await charger.assert_alive(case.case_id)
    await charger.close()


def case_from_trace(trace: Trace) -> CallCase:
    """The frame exactly as posted; a null ``frame`` (not JSON) is sent as posted too and must be dropped."""
    frame = trace.frame
    return CallCase(
        case_id=trace.case_id,
        charger_id=trace.charger_id,
        action=trace.action,
        text=trace.raw,
        message_id=frame[1] if frame is not None else None,
        payload=frame[3] if frame is not None else None,
        compliant=trace.compliant,
        error=EXPECTED_ERRORS.get(trace.line),
        readings=EXPECTED_READINGS.get(trace.line),
    )


# ---------------------------------------------------------------------------------------------
# 1. Every charger CALL in the corpus, as posted
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("trace", CHARGER_CALLS, ids=trace_ids)
async def test_charger_call_as_posted(service: Service, probe: MqttProbe, trace: Trace) -> None:
    await replay_call(service, probe, case_from_trace(trace))


# ---------------------------------------------------------------------------------------------
# 1b. Frames posted only as a Python repr or a bare payload: their JSON equivalent, enveloped
# ---------------------------------------------------------------------------------------------

def _reconstructed_cases() -> list[CallCase]:
    cases = []
    errors = {
        68: ("TypeConstraintViolation", "meterValue"),  # meterValue sent as an object, not a list
        69: ("TypeConstraintViolation", "value"),  # sampledValue.value as JSON numbers
        70: ("FormationViolation", "measurand"),  # measurand 'Current.import' (first fault; unit 'Hz' follows)
        84: ("TypeConstraintViolation", "idTag"),  # idTag of 22 chars: 20 + control bytes 0x10 0x0E
    }
    for trace in CHARGER_CALLS:
        if trace.frame is not None:
            continue
        frame = trace.reconstructed
        if frame is None:  # the device printed the payload only (line 70): put it in an envelope
            frame = [2, f"{trace.line}-enveloped", trace.action, json.loads(trace.raw)]
        cases.append(CallCase(
            case_id=f"{trace.case_id}-reconstructed", charger_id=trace.charger_id, action=trace.action,
            text=json.dumps(frame), message_id=frame[1], payload=frame[3], compliant=False, error=errors.get(trace.line)))
    return cases


RECONSTRUCTED = _reconstructed_cases()


@pytest.mark.parametrize("case", RECONSTRUCTED, ids=lambda c: c.case_id)
async def test_reconstructed_frame(service: Service, probe: MqttProbe, case: CallCase) -> None:
    await replay_call(service, probe, case)


# ---------------------------------------------------------------------------------------------
# 1c. README quirks no frame shows verbatim: variants of a real frame, named after it
# ---------------------------------------------------------------------------------------------

def _variant(line: int, tag: str, edit: Callable[[dict[str, Any]], None], *, readings: dict[str, float] | None = None,
             error: tuple[str, str] | None = None) -> CallCase:
    trace = TRACES[line]
    payload = copy.deepcopy(trace.frame[3])
    edit(payload)
    message_id = f"{line}-{tag}"[:36]
    return CallCase(
        case_id=f"{trace.case_id}-{tag}", charger_id=trace.charger_id, action=trace.action,
        text=json.dumps([2, message_id, trace.action, payload]), message_id=message_id, payload=payload,
        compliant=error is None, error=error, readings=readings)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Edit one field: ``meterValue.0.sampledValue.2.value`` style paths."""
    def edit(payload: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = payload
        for part in parents:
            node = node[part]
        node[last] = value
    return edit


def _zone_less_entries(payload: dict[str, Any]) -> None:
    """A replayed older sample with a proper 'Z' after the frame's own, whose timestamp lost its zone.

    A zone-less time is UTC (the usual firmware bug); read as anything else (or unparsable, sorted
    first) the older register would win.
    """
    entry = payload["meterValue"][0]
    entry["timestamp"] = "2024-02-28T21:10:00.000"
    older = {"timestamp": "2024-02-28T20:55:00Z",
             "sampledValue": [{"value": "49600", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}
    payload["meterValue"].append(older)


def _variants() -> list[CallCase]:
    if not TRACES:
        return []
    return [
        # transactionId 2^63-1 (a charger's own 64-bit counter): valid JSON integer, acknowledged
        _variant(50, "txid-2^63-1", _set("transactionId", INT64_MAX)),
        _variant(42, "txid-2^63-1", _set("transactionId", INT64_MAX), readings=EXPECTED_READINGS[42]),
        # numbers as strings with a leading space
        _variant(62, "leading-space", _set("meterValue.0.sampledValue.0.value", " 247.10"), readings={"voltage": 247.1}),
        # context 'CurrentMax' is no ReadingContext: a CALLERROR naming the field, the connection stays
        _variant(20, "context-CurrentMax", _set("meterValue.0.sampledValue.2.context", "CurrentMax"),
                 error=("FormationViolation", "context")),
        # timestamps without a zone
        _variant(43, "timestamp-without-zone", _zone_less_entries, readings={"energy": 49.7}),
        _variant(48, "timestamp-without-zone", _set("timestamp", "2019-05-10T16:05:33")),
        # the schema's historical misspelling 'Celcius' (its erratum 'Celsius' is line 11 itself)
        _variant(11, "unit-Celcius", _set("meterValue.0.sampledValue.2.unit", "Celcius"), readings={"temperature": 35}),
        # control bytes in an idTag that still fits CiString20: valid, accepted
        _variant(85, "idTag-control-bytes", _set("idTag", "TAG-1\u0010\u000e")),
    ]


VARIANTS = _variants()


@pytest.mark.parametrize("case", VARIANTS, ids=lambda c: c.case_id)
async def test_quirk_variant(service: Service, probe: MqttProbe, case: CallCase) -> None:
    await replay_call(service, probe, case)


# ---------------------------------------------------------------------------------------------
# 2. Every charger answer in the corpus, to the command that asked for it
# ---------------------------------------------------------------------------------------------

def _context(line: int) -> dict[str, Any]:
    """Our side's request kept in the corpus for context (``cs->cp``)."""
    trace = TRACES[line]
    assert trace.direction == "cs->cp"
    return trace.frame[3]


ALL_MEASURANDS = ",".join([
    "Current.Export", "Current.Import", "Current.Offered", "Energy.Active.Export.Register", "Energy.Active.Import.Register",
    "Energy.Reactive.Export.Register", "Energy.Reactive.Import.Register", "Energy.Active.Export.Interval",
    "Energy.Active.Import.Interval", "Energy.Reactive.Export.Interval", "Energy.Reactive.Import.Interval", "Frequency",
    "Power.Active.Export", "Power.Active.Import", "Power.Factor", "Power.Offered", "Power.Reactive.Export",
    "Power.Reactive.Import", "RPM", "SoC", "Temperature", "Voltage",
])


def _command_for(trace: Trace) -> tuple[str, dict[str, Any]]:
    """The hub command whose CALL this trace answers (arguments from the notes / context frames)."""
    payload = trace.payload
    if trace.action == "GetConfiguration":
        keys = [k["key"] for k in payload.get("configurationKey", [])] + list(payload.get("unknownKey", []))
        return "get_configuration", {"keys": keys}
    by_line: dict[int, tuple[str, dict[str, Any]]] = {
        9: ("change_configuration", dict(_context(8))),
        31: ("change_configuration", dict(_context(30))),
        35: ("change_configuration", {"key": "MeterValuesSampledData", "value": "Frequency"}),
        45: ("change_configuration", {"key": "MeterValueSampleInterval", "value": "60"}),
        61: ("change_configuration", {"key": "MeterValuesSampledData", "value": "Power.Factor"}),
        79: ("change_configuration", {"key": "MeterValuesSampledData", "value": ALL_MEASURANDS}),
        82: ("change_configuration", dict(_context(81))),
        19: ("trigger_message", {"requested_message": "MeterValues", "connector_id": 1}),
        39: ("trigger_message", {"requested_message": "MeterValues", "connector_id": 1}),
        90: ("trigger_message", {"requested_message": "BootNotification"}),
        26: ("remote_start_transaction", {"id_tag": _context(25)["idTag"], "connector_id": _context(25)["connectorId"]}),
        27: ("remote_stop_transaction", {"transaction_id": 1}),
        52: ("clear_charging_profile", {}),
        72: ("get_composite_schedule", {"connector_id": 1, "duration": 86400, "unit": "A"}),
        75: ("get_composite_schedule", {"connector_id": 1, "duration": 60, "unit": "A"}),
    }
    return by_line[trace.line]


@dataclass
class AnswerCase:
    case_id: str
    charger_id: str
    action: str
    trace: Trace
    text: Callable[[str], str]  # message id of our CALL -> the charger's answer text


def answer_case(trace: Trace) -> AnswerCase:
    return AnswerCase(trace.case_id, trace.charger_id, trace.action, trace, lambda mid: answer_text(trace, mid))


async def run_command(service: Service, charger: RawCharger, action: str, command: str, kwargs: dict[str, Any],
                      answer: Callable[[list[Any]], Awaitable[None]]) -> dict[str, Any]:
    """hub.command(...) against the raw charger; ``answer`` gets our CALL and replies to it."""
    claimed = charger.claim(action)
    task = asyncio.create_task(service.app.hub.command(charger.id, command, **kwargs))
    try:
        call = await charger.wait_claimed(claimed, action)
        await answer(call)
        return await asyncio.wait_for(asyncio.shield(task), REPLY_TIMEOUT)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def run_setpoint(service: Service, charger: RawCharger, answer: Callable[[list[Any]], str],
                       limit: float = 16) -> dict[str, Any]:
    """hub.set_charging_limit(...) against the raw charger, which answers every SetChargingProfile
    (the fallback ladder may send several) with ``answer``; returns the RESULT event's data."""
    charger.answers["SetChargingProfile"] = answer
    since = len(service.events)
    service.app.hub.set_charging_limit(charger.id, limit)
    event = await service.wait_event(RESULT, charger.id, lambda e: e.data.get("command") == "charging_limit",
                                     since=since, timeout=REPLY_TIMEOUT)
    return event.data


async def exchange(service: Service, charger: RawCharger, case: AnswerCase,
                   before_answer: Callable[[], Awaitable[None]] | None = None) -> tuple[list[list[Any]], dict[str, Any]]:
    """Make the service send the CALL this case answers; answer it with the case's text.

    Returns our CALLs that got the case's answer, and the command's result.
    """
    await charger.configured()
    seen: list[list[Any]] = []
    if case.action == "SetChargingProfile":
        assert before_answer is None

        def answer_profile(call: list[Any]) -> str:
            validation.validate_call("SetChargingProfile", call[3])
            seen.append(call)
            return case.text(call[1])

        result = await run_setpoint(service, charger, answer_profile)
        assert seen, "no SetChargingProfile reached the charger"
        return seen, result

    async def answer(call: list[Any]) -> None:
        seen.append(call)
        if before_answer is not None:
            await before_answer()
        await charger.send(case.text(call[1]))

    command, kwargs = _command_for(case.trace)
    result = await run_command(service, charger, case.action, command, kwargs, answer)
    return seen, result


def check_result(case: AnswerCase, calls: list[list[Any]], result: dict[str, Any]) -> None:
    """The command's result states what the charger answered, no more and no less."""
    trace = case.trace
    answer = json.loads(case.text(calls[0][1]))
    payload = answer[2] if answer[0] == 3 else None
    if answer[0] == 4:
        assert result["status"] == "CallError", result
        assert answer[2] in result.get("reason", ""), f"the reason should carry the charger's code {answer[2]!r}: {result}"
        return
    try:
        validation.validate_result(case.action, payload)
        valid = trace.compliant or trace.line in VALID_BY_SCHEMA
    except OCPPError:
        valid = False
    if not valid:
        # an answer that breaks the schema is reported as an error, with what was wrong
        assert result["status"] in ("CallError", "Invalid", "InvalidResponse"), f"an invalid {case.action} answer was reported as {result}"
        # ... that says what was wrong: the offending field, as our own CALLERRORs do
        with pytest.raises(OCPPError) as fault:
            validation.validate_result(case.action, payload)
        field_name = re.split(r"[.\[:]", fault.value.details["cause"])[0]
        assert field_name in result.get("reason", ""), f"the reason should name {field_name!r}: {result}"
        return
    if "status" in payload:
        assert result["status"] == payload["status"], f"charger said {payload['status']}, result says {result}"
    else:
        assert result["status"] == "Accepted", result
    rest = {k: v for k, v in payload.items() if k != "status"}
    if case.action == "SetChargingProfile":
        # every profile we tried got this answer, and each attempt reports it
        attempts = result.get("attempts", [])
        assert len(attempts) == len(calls), (attempts, calls)
        assert all(a["status"] == payload["status"] for a in attempts), attempts
        return
    reported = result.get("response", {})
    if case.action == "GetConfiguration":
        # verbatim: values, readonly flags, unknown keys (absent and empty are the same)
        assert reported.get("configurationKey", []) == rest.get("configurationKey", []), result
        assert reported.get("unknownKey", []) == rest.get("unknownKey", []), result
    else:
        assert reported == rest, f"charger answered {payload}, result reports {result}"


#: Answers the README marks non-compliant by a spec rule the JSON schema does not express; the
#: result still has to repeat them verbatim (what the charger said), not call them an error.
VALID_BY_SCHEMA = {
    55,  # ChargingScheduleAllowedChargingRateUnit 'A' (spec: Current and/or Power); a free string in the schema
    75,  # GetCompositeSchedule with an empty chargingSchedulePeriod (spec 1..*, no minItems in the schema)
}


async def check_limit_outcome(service: Service, probe: MqttProbe, charger: RawCharger, case: AnswerCase,
                              result: dict[str, Any], since: int) -> None:
    """The accepted limit changes only on Accepted, and the event topic says what happened."""
    status = case.trace.payload["status"]
    event = await probe.wait_json(f"ocpp/{charger.id}/event", lambda d: d.get("command") == "charging_limit", since=since)
    assert event["status"] == status
    state = service.app.hub.states[charger.id]
    if status == "Accepted":
        assert (state.charging_limit, state.charging_limit_unit) == (16, "A")
        await wait_state(probe, charger.id, {"charging_limit": 16}, since)
    else:
        assert state.charging_limit is None, f"a {status} setpoint must not count as applied"


async def follow_up_command(service: Service, charger: RawCharger) -> None:
    """The command channel is not wedged: a next command gets its own answer."""
    async def accept(call: list[Any]) -> None:
        await charger.send(json.dumps([3, call[1], {"status": "Accepted"}]))

    result = await run_command(service, charger, "TriggerMessage", "trigger_message", {"requested_message": "Heartbeat"}, accept)
    assert result["status"] == "Accepted", result


async def replay_answer(service: Service, probe: MqttProbe, case: AnswerCase) -> None:
    charger = await open_charger(service, case.charger_id)
    await charger.configured()
    # the same answer arriving unasked (late, or duplicated) is dropped, not kept for our next CALL
    await charger.send(case.text(f"unasked-{case.trace.line}"))
    await charger.assert_alive(f"{case.trace.line}-unasked")
    since = probe.mark()
    calls, result = await exchange(service, charger, case)
    check_result(case, calls, result)
    if case.action == "SetChargingProfile":
        await check_limit_outcome(service, probe, charger, case, result, since)
    await charger.assert_alive(case.trace.line)
    await follow_up_command(service, charger)
    await charger.close()


@pytest.mark.parametrize("trace", CHARGER_ANSWERS, ids=trace_ids)
async def test_charger_answer(service: Service, probe: MqttProbe, trace: Trace) -> None:
    await replay_answer(service, probe, answer_case(trace))


async def test_feature_profile_list_with_spaces(service: Service, probe: MqttProbe) -> None:
    """Variant of line 53 (ABB GetConfiguration): 'SupportedFeatureProfiles' listed with spaces after the commas.

    Read as a capability (SmartCharging supported, names without the spaces) and reported verbatim
    when asked for.
    """
    trace = TRACES[53]
    features = "Core, FirmwareManagement, LocalAuthListManagement, Reservation, SmartCharging, RemoteTrigger"
    entry = {"key": "SupportedFeatureProfiles", "readonly": True, "value": features}

    def configuration(call: list[Any]) -> str:
        keys = call[3].get("key", [])
        return json.dumps([3, call[1], {"configurationKey": [entry] if entry["key"] in keys else [],
                                        "unknownKey": [k for k in keys if k != entry["key"]]}])

    payload = {"configurationKey": [entry], "unknownKey": []}
    variant = Trace(53, dict(trace.data, frame=[3, trace.frame[1], payload], raw=json.dumps([3, trace.frame[1], payload])))
    case = AnswerCase(f"{trace.case_id}-feature-list-with-spaces", trace.charger_id, "GetConfiguration", variant,
                      lambda mid: json.dumps([3, mid, payload]))
    charger = await open_charger(service, case.charger_id)
    charger.answers["GetConfiguration"] = configuration  # also the answer to the service's own capability read
    since = probe.mark()
    await charger.configured()
    capabilities = service.app.hub.states[charger.id].capabilities
    assert capabilities.get("feature_profiles") == [
        "Core", "FirmwareManagement", "LocalAuthListManagement", "Reservation", "SmartCharging", "RemoteTrigger"], capabilities
    assert capabilities.get("smart_charging") is True, capabilities
    await wait_state(probe, charger.id, {"smart_charging": "supported"}, since)
    calls, result = await exchange(service, charger, case)
    assert calls[0][3] == {"key": ["SupportedFeatureProfiles"]}
    assert result["status"] == "Accepted"
    assert result["response"]["configurationKey"][0]["value"] == features  # verbatim
    await charger.assert_alive("features")
    await charger.close()


# ---------------------------------------------------------------------------------------------
# Sequences the notes describe
# ---------------------------------------------------------------------------------------------

SYNTHETIC_METER_VALUES = {"connectorId": 1, "meterValue": [{"timestamp": "2024-07-01T10:00:00Z", "sampledValue": [
    {"value": "1234", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}]}


@pytest.mark.parametrize("answered, interleaved", [(35, 34), (39, None)],
                         ids=["35-TEISON-ChangeConfiguration-BootNotification-first", "39-eProWallbox-TriggerMessage-MeterValues-first"])
async def test_charger_sends_a_call_before_answering_ours(service: Service, probe: MqttProbe, answered: int, interleaved: int | None) -> None:
    """TEISON boots in the middle of our ChangeConfiguration burst (line 34 before 35); the eProWallbox
    answers a repeated TriggerMessage(MeterValues) with the MeterValues CALL first (line 39's note).
    Their CALL is answered while ours is outstanding, and our command still gets its result."""
    trace = TRACES[answered]
    case = answer_case(trace)
    charger = await open_charger(service, trace.charger_id)
    if interleaved is not None:
        first = TRACES[interleaved]
        text, message_id = first.raw, first.frame[1]
    else:
        message_id = "mv-before-answer"
        text = json.dumps([2, message_id, "MeterValues", SYNTHETIC_METER_VALUES])
    since = probe.mark()

    async def their_call_first() -> None:
        reply = await charger.request(text, message_id)
        assert reply[0] == 3, f"their CALL, sent while ours was outstanding, got {reply!r}"

    calls, result = await exchange(service, charger, case, before_answer=their_call_first)
    check_result(case, calls, result)
    if interleaved is not None:
        assert service.app.hub.states[charger.id].vendor == "TEISON"
    else:
        await wait_state(probe, charger.id, {"energy": 1.234}, since)
    await charger.assert_alive(answered)
    await charger.close()


@pytest.mark.parametrize("accepted, composite", [(37, 75), (71, 72)],
                         ids=["37-ZJ-Beny-SetChargingProfile-then-75-GetCompositeSchedule",
                              "71-Delta-SetChargingProfile-then-72-GetCompositeSchedule"])
async def test_limit_accepted_then_odd_composite_schedule(service: Service, probe: MqttProbe, caplog: pytest.LogCaptureFixture,
                                                          accepted: int, composite: int) -> None:
    """ZJ Beny accepts a limit, then reads its composite schedule back with an empty chargingSchedulePeriod
    (75); Delta accepts (71), then rejects GetCompositeSchedule (72). The service's own read-back after an
    accepted limit gets these answers: the limit counts as applied, the effective limit stays unknown
    (not 0, not a crash)."""
    charger = await open_charger(service, TRACES[accepted].charger_id)
    await charger.configured()
    read_back = charger.claim("GetCompositeSchedule")
    result = await run_setpoint(service, charger, lambda call: answer_text(TRACES[accepted], call[1]))
    assert result["status"] == "Accepted", result
    call = await charger.wait_claimed(read_back, "GetCompositeSchedule")
    await charger.send(answer_text(TRACES[composite], call[1]))
    await follow_up_command(service, charger)  # queued behind the read-back, so that has finished
    state = service.app.hub.states[charger.id]
    assert (state.charging_limit, state.effective_limit) == (16, None)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    await charger.assert_alive(composite)
    await charger.close()


async def test_etrel_status_before_boot(service: Service, probe: MqttProbe) -> None:
    """Etrel sends StatusNotification (id 5, line 33) before BootNotification (id 6, line 32) on one connection."""
    status, boot = TRACES[33], TRACES[32]
    charger = await open_charger(service, status.charger_id)
    since = probe.mark()
    assert (await charger.request(status.raw, "5"))[0] == 3
    reply = await charger.request(boot.raw, "6")
    assert reply[0] == 3 and reply[2]["status"] == "Accepted"
    await wait_state(probe, charger.id, {"status": "Finishing"}, since)
    assert service.app.hub.states[charger.id].vendor == "Etrel"
    await charger.close()


async def test_late_replayed_values_do_not_overwrite_newer_ones(service: Service, probe: MqttProbe) -> None:
    """StarCharge (line 43) delivers its queued clock-aligned samples ~10 h late after a reconnect.

    By then a newer sample has been reported. The stale ones (20:50 and 21:00, variants of line 43,
    then line 43 itself at 21:10) must not roll the energy register back (Home Assistant's
    total_increasing reads a decrease as a meter reset), not even three in a row, nor replace the
    current power with a 10-hour-old one.
    """
    trace = TRACES[43]
    charger = await open_charger(service, trace.charger_id)
    newer = {"connectorId": 1, "meterValue": [{"timestamp": "2024-02-29T07:10:00.000Z", "sampledValue": [
        {"value": "50100", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
        {"value": "3700", "measurand": "Power.Active.Import", "unit": "W"}]}]}
    since = probe.mark()
    assert (await charger.request(json.dumps([2, "newer", "MeterValues", newer]), "newer"))[0] == 3
    await wait_state(probe, charger.id, {"energy": 50.1, "power": 3700}, since)
    queued = []
    for minute, energy in (("50", "49500"), ("00", "49600")):
        stale = copy.deepcopy(trace.frame[3])
        stale["meterValue"][0]["timestamp"] = f"2024-02-28T21:{minute}:00.000Z" if minute == "00" else f"2024-02-28T20:{minute}:00.000Z"
        stale["meterValue"][0]["sampledValue"][4]["value"] = energy
        queued.append((json.dumps([2, f"queued-{minute}", "MeterValues", stale]), f"queued-{minute}"))
    queued.append((trace.raw, trace.frame[1]))  # line 43 as posted: 21:10, 49700 Wh, 2 W
    for text, message_id in queued:
        assert (await charger.request(text, message_id))[0] == 3  # acknowledged, or the charger keeps replaying
    since = probe.mark()
    await charger.heartbeat(43)  # a state publish after all of them
    state = await probe.wait_json(f"ocpp/{charger.id}/state", lambda d: d.get("last_heartbeat") is not None, since=since)
    assert state["energy"] == 50.1, f"energy rolled back by a stale replay: {state['energy']}"
    assert state["power"] == 3700, f"power replaced by a 10-hour-old sample: {state['power']}"
    await charger.close()


# ---------------------------------------------------------------------------------------------
# Everyone else keeps working
# ---------------------------------------------------------------------------------------------

async def test_bystander_keeps_working_after_the_whole_corpus(service: Service, probe: MqttProbe) -> None:
    bystander = await service.charger("bystander")
    chargers: list[RawCharger] = []
    for trace in CHARGER_CALLS:
        charger = await open_charger(service, trace.charger_id)
        chargers.append(charger)
        texts = [(trace.raw, trace.frame[1] if trace.frame else None)]
        texts += [(c.text, c.message_id) for c in RECONSTRUCTED + VARIANTS if c.charger_id == trace.charger_id]
        for text, message_id in texts:
            await charger.send(text)
            if message_id is not None:
                reply = await charger.recv(f"answer to {message_id!r}")
                assert reply[1] == message_id, reply
            await charger.assert_alive(trace.line)
    for trace in CHARGER_ANSWERS:
        charger = await open_charger(service, trace.charger_id)
        chargers.append(charger)
        await exchange(service, charger, answer_case(trace))
        await charger.assert_alive(trace.line)
    since = probe.mark()
    probe.publish("ocpp/bystander/charging_limit/set", "9")
    request = await bystander.wait_for_call("SetChargingProfile")
    assert request["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 9
    event = await probe.wait_json("ocpp/bystander/event", lambda d: d.get("command") == "charging_limit", since=since)
    assert event["status"] == "Accepted"
    # and every trace charger is still connected
    assert all(service.app.hub.connected.get(c.id) is not None for c in chargers)
    for charger in chargers:
        await charger.close()


# ---------------------------------------------------------------------------------------------
# The README's quirks, and where each is asserted
# ---------------------------------------------------------------------------------------------

def _case(case_id: str) -> CallCase:
    return next(c for c in RECONSTRUCTED + VARIANTS if c.case_id == case_id)


def _samples(case_id: str) -> list[dict[str, Any]]:
    return [s for entry in _case(case_id).payload["meterValue"] for s in entry["sampledValue"]]


QUIRKS: dict[str, tuple[list[str], Callable[[], bool]]] = {
    # quirk: (test case ids asserting it, a check that the frame really shows it)
    "empty chargePointVendor (Accepted, left out of discovery)": (
        ["1-Huawei-BootNotification"], lambda: TRACES[1].frame[3]["chargePointVendor"] == ""),
    "transactionId 2^63-1 (acknowledged)": (
        ["50-OpenEVSE-StopTransaction-txid-2^63-1", "42-Wallbox-MeterValues-txid-2^63-1"],
        lambda: _case("50-OpenEVSE-StopTransaction-txid-2^63-1").payload["transactionId"] == 2**63 - 1),
    "idTag with the serial appended (Accepted)": (
        ["24-KEBA-StartTransaction"], lambda: TRACES[24].frame[3]["idTag"].startswith("TAG-1_")),
    "idTag with control bytes (22 chars: CALLERROR naming idTag; within 20: Accepted)": (
        ["84-Ocular-StopTransaction-reconstructed", "85-ZJ-Beny-StartTransaction-idTag-control-bytes"],
        lambda: "\u0010\u000e" in TRACES[84].reconstructed[3]["idTag"]
        and "\u0010" in _case("85-ZJ-Beny-StartTransaction-idTag-control-bytes").payload["idTag"]),
    "local time labelled Z (status applied)": (
        ["48-Chago-StatusNotification", "49-Chago-StatusNotification"], lambda: TRACES[48].frame[3]["timestamp"].endswith("Z")),
    "1970 timestamps (status applied)": (
        ["51-MicroOcpp-ArduinoOcpp-based-EVSE-custom-ESP32-build-StatusNotification"],
        lambda: TRACES[51].frame[3]["timestamp"].startswith("1970")),
    "queued events replayed hours late (not applied over newer values)": (
        ["test_late_replayed_values_do_not_overwrite_newer_ones"], lambda: TRACES[43].action == "MeterValues"),
    "numbers as strings with a leading space (parsed)": (
        ["62-TEISON-MeterValues-leading-space"], lambda: _samples("62-TEISON-MeterValues-leading-space")[0]["value"] == " 247.10"),
    "Transaction.Begin repeated in periodic samples (register stays the periodic value)": (
        ["65-Project-EV-MeterValues"],
        lambda: any(s.get("context") == "Transaction.Begin" for s in TRACES[65].frame[3]["meterValue"][0]["sampledValue"])),
    "phase L1-N / N (voltage_l1, current_n)": (
        ["11-Injet-MeterValues", "20-unknown-MeterValues"],
        lambda: {"L1-N", "N"} <= {s.get("phase") for s in TRACES[11].frame[3]["meterValue"][0]["sampledValue"]}),
    "pretty-printed multi-line frames": (
        ["89-Wallbox-StatusNotification", "45-Vestel-ChangeConfiguration", "90-Wallbox-TriggerMessage"],
        lambda: all("\n" in TRACES[n].raw for n in (45, 89, 90))),
    "feature-profile lists with spaces (capability parsed, answer reported verbatim)": (
        ["test_feature_profile_list_with_spaces"], lambda: True),  # the variant is built inside that test
    "odd message ids (echoed verbatim)": (
        ["4-ABB-StatusNotification", "43-StarCharge-MeterValues", "63-Charge-Amps-BootNotification",
         "73-ZJ-Beny-BootNotification", "32-Etrel-BootNotification"],
        lambda: [TRACES[n].frame[1] for n in (4, 32)] == ["36:352", "6"] and len(TRACES[43].frame[1]) == 36),
    "meterValue as an object (CALLERROR naming meterValue)": (
        ["68-Huawei-MeterValues-reconstructed"], lambda: isinstance(TRACES[68].reconstructed[3]["meterValue"], dict)),
    "meter values as JSON numbers (CALLERROR naming value)": (
        ["69-OpenEVSE-MeterValues-reconstructed"],
        lambda: isinstance(TRACES[69].reconstructed[3]["meterValue"][0]["sampledValue"][0]["value"], float)),
    "GetConfiguration value as a number (reported as an error naming the field)": (
        ["93-unknown-GetConfiguration"], lambda: TRACES[93].reconstructed[2]["configurationKey"][0]["value"] == 1),
    "context CurrentMax (CALLERROR naming context)": (
        ["20-unknown-MeterValues-context-CurrentMax"],
        lambda: any(s.get("context") == "CurrentMax" for s in _samples("20-unknown-MeterValues-context-CurrentMax"))),
    "measurand Current.import (CALLERROR naming measurand)": (
        ["70-MicroOcpp-ArduinoOcpp-based-EVSE-custom-ESP32-build-MeterValues-reconstructed"],
        lambda: "Current.import" in TRACES[70].raw),
    "timestamps without a zone (taken as UTC)": (
        ["43-StarCharge-MeterValues-timestamp-without-zone", "48-Chago-StatusNotification-timestamp-without-zone"],
        lambda: _case("48-Chago-StatusNotification-timestamp-without-zone").payload["timestamp"] == "2019-05-10T16:05:33"),
    "units Celcius / Celsius (temperature)": (
        ["11-Injet-MeterValues-unit-Celcius", "11-Injet-MeterValues", "65-Project-EV-MeterValues"],
        lambda: "Celcius" in {s.get("unit") for s in _samples("11-Injet-MeterValues-unit-Celcius")}
        and "Celsius" in {s.get("unit") for s in TRACES[11].frame[3]["meterValue"][0]["sampledValue"]}),
    "SetChargingProfile / GetCompositeSchedule rejections (reported, limit not taken as applied)": (
        ["14-Wallbox-SetChargingProfile", "58-unknown-SetChargingProfile", "72-Delta-GetCompositeSchedule"],
        lambda: all(TRACES[n].payload["status"] == "Rejected" for n in (14, 58, 72))),
}


def test_every_quirk_is_asserted_by_a_named_case() -> None:
    module_tests = {name for name in globals() if name.startswith("test_")}
    known = {c.case_id for c in [*CHARGER_CALLS, *CHARGER_ANSWERS, *RECONSTRUCTED, *VARIANTS]} | module_tests
    for quirk, (cases, shows_it) in QUIRKS.items():
        missing = [c for c in cases if c not in known]
        assert not missing, f"{quirk}: no test case {missing}"
        assert shows_it(), f"{quirk}: the corpus frame no longer shows it"
