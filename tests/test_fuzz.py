"""Bad input, fuzzed and by hand: OCPP frames, floods, handshakes and MQTT command payloads.

Every bad input gets the answer OCPP-J or our MQTT contract prescribes (a CALLERROR, a
drop, an ``Invalid`` event), never a crash, never a command to a charger, and the
connection and every other charger keep working. (tests/test_bad_input.py has the
first cases; these extend it.)

Hypothesis drives synchronous tests, so the fuzzed ones share one running service on an
event loop in a background thread (:class:`Rig`) instead of starting one per example.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterator

import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ocpp.v16 import call
from websockets.asyncio.client import ClientConnection

from ocpp_addon.broker import EmbeddedBroker
from ocpp_addon.central_system import charger_id_from_path
from ocpp_addon.config import CHARGER_ID_RE
from ocpp_addon.homeassistant import MAX_COMMAND_PAYLOAD
from ocpp_addon.hub import READY, RESULT
from ocpp_addon.simulator import SimulatedCharger

from .conftest import TIMEOUT, MqttProbe, Service, free_port, make_config

OCPP16_ERRORS = {"NotImplemented", "NotSupported", "InternalError", "ProtocolError", "SecurityError", "FormationViolation",
                 "PropertyConstraintViolation", "OccurenceConstraintViolation", "TypeConstraintViolation", "GenericError"}
LIMIT_SET = "ocpp/wallbox-1/charging_limit/set"


def _limit(payload: dict) -> float:
    return payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"]


# -- a service that outlives hypothesis examples ------------------------------------------------------------


class Rig:
    """Broker, service, one simulated charger and an MQTT probe on a loop in a background thread."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-rig", daemon=True)
        self.thread.start()
        self.barrier = 0

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def start(self) -> None:
        self.broker = EmbeddedBroker(free_port(), self.tmp / "broker")
        await self.broker.start()
        self.probe = MqttProbe(self.broker.port, asyncio.get_running_loop())
        await self.probe.subscribe("#")
        self.service = Service(make_config(self.broker.port, self.tmp))
        await self.service.start()
        self.sim: SimulatedCharger = await self.service.charger("wallbox-1")
        self.raw: ClientConnection | None = None

    async def stop(self) -> None:
        if self.raw is not None:
            await self.raw.close()
        await self.service.stop()
        self.probe.close()
        await self.broker.stop()

    def close(self) -> None:
        self.run(self.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def next_barrier_limit(self) -> float:
        """Alternating values, so that every barrier really changes the limit (and is sent)."""
        self.barrier += 1
        return 10.0 + self.barrier % 2


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    rig = Rig(tmp_path_factory.mktemp("fuzz"))
    rig.run(rig.start())
    yield rig
    rig.close()


FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# -- MQTT: fuzzed setpoints -----------------------------------------------------------------------------------------------


def _finite_out_of_range(x: float) -> bool:
    return x < -1e-6 or x > 32 + 1e-6  # the slider is 0..32 A


json_junk = st.recursive(
    st.none() | st.booleans() | st.text(alphabet=st.characters(blacklist_categories=("Nd",)), max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)

INVALID_SETPOINTS = st.one_of(
    # not UTF-8
    st.binary(min_size=1, max_size=40).filter(lambda b: not _decodes(b)),
    # text with no decimal digit anywhere (in any script) cannot be a number: 'inf', 'nan', 'sixteen', ...
    # (an empty or blank payload is how MQTT deletes a retained message: ignored, see test_bad_input)
    st.text(alphabet=st.characters(blacklist_categories=("Nd", "Cs")), max_size=40).map(lambda t: t.encode()).filter(lambda b: b.strip()),
    # numbers out of range, as text in several spellings
    st.floats().filter(lambda x: math.isnan(x) or math.isinf(x) or _finite_out_of_range(x)).flatmap(lambda x: st.sampled_from([repr(x), f"{x:e}", json.dumps({"limit": x}), f" {x} "]).map(str.encode)),
    st.integers().filter(lambda n: n < 0 or n > 32).map(lambda n: str(n).encode()),
    # JSON of the wrong shape or with a limit that is not a number
    json_junk.filter(lambda v: not isinstance(v, dict) or "limit" not in v).map(lambda v: json.dumps(v).encode()),
    json_junk.map(lambda v: json.dumps({"limit": v}).encode()),
    st.sampled_from([True, False, None, [16], {"a": 16}]).map(lambda v: json.dumps({"limit": v}).encode()),
    # a fine limit in a unit we do not know
    st.text(max_size=5).filter(lambda u: u not in ("A", "W")).map(lambda u: json.dumps({"limit": 16, "unit": u}).encode()),
    # a fine number, too long a payload
    st.integers(min_value=MAX_COMMAND_PAYLOAD - 1, max_value=4 * MAX_COMMAND_PAYLOAD).map(lambda n: b" " * n + b"16"),
)


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


async def _setpoint_round(rig: Rig, payloads: list[bytes]) -> tuple[int, int, float]:
    service, sim, probe = rig.service, rig.sim, rig.probe
    since_event, since_call = len(service.events), len(sim.received)
    for payload in payloads:
        probe.publish(LIMIT_SET, payload)
    barrier = rig.next_barrier_limit()
    probe.publish(LIMIT_SET, f"{barrier:g}")  # valid, behind all of them
    await sim.wait_for_call("SetChargingProfile", lambda p: _limit(p) == barrier, since=since_call, timeout=TIMEOUT)
    invalid = [e for e in service.events[since_event:]
               if e.kind == RESULT and e.data.get("command") == "charging_limit" and e.data.get("status") == "Invalid"]
    sent = [p for name, p in sim.received[since_call:] if name == "SetChargingProfile"]
    return len(invalid), len(sent), barrier


@FUZZ
@given(payloads=st.lists(INVALID_SETPOINTS, min_size=1, max_size=8))
def test_fuzzed_setpoints_are_refused_and_never_reach_the_charger(rig: Rig, payloads: list[bytes]) -> None:
    invalid, sent, _ = rig.run(_setpoint_round(rig, payloads))
    assert invalid == len(payloads), payloads
    assert sent == 1  # the barrier, nothing else


# -- OCPP: fuzzed frames ---------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
CP_ACTIONS = ["BootNotification", "Heartbeat", "StatusNotification", "MeterValues", "StartTransaction", "StopTransaction",
              "Authorize", "DataTransfer", "FirmwareStatusNotification", "DiagnosticsStatusNotification"]
FIELDS = ["chargePointVendor", "chargePointModel", "connectorId", "errorCode", "status", "meterValue", "idTag", "meterStart",
          "meterStop", "timestamp", "transactionId", "vendorId", "sampledValue", "value", "reason"]
payloads = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), json_values, max_size=5)
message_ids = st.text(min_size=1, max_size=36) | st.text(min_size=37, max_size=60) | json_values
calls = st.tuples(st.just(2), message_ids, st.sampled_from(CP_ACTIONS + ["Reset", "SetChargingProfile"]) | st.text(max_size=20),
                  payloads | json_values).map(list)
FRAMES = st.one_of(
    calls,
    st.tuples(st.sampled_from([0, 1, 2, 3, 4, 5, 2.0, 3.0, -1, "2", True, None]), message_ids, json_values, json_values).map(list),
    st.lists(json_values, max_size=6).map(list),
    json_values,
).map(json.dumps) | st.text(max_size=60)


def expects_answer(frame: str) -> str | None:
    """OCPP-J: a frame with a usable message id that is not itself a response gets one answer; the rest is dropped."""
    try:
        msg = json.loads(frame)
    except ValueError:
        return None
    if not isinstance(msg, list) or len(msg) < 2 or not isinstance(msg[1], str) or not 0 < len(msg[1]) <= 36:
        return None
    if msg[0] in (3, 4):
        return None
    return msg[1]


async def _raw_connection(rig: Rig) -> ClientConnection:
    if rig.raw is None or rig.raw.close_code is not None:
        rig.raw = await websockets.connect(f"{rig.service.url}/fuzz-1", subprotocols=["ocpp1.6"])
    return rig.raw


async def _frame_round(rig: Rig, frame: str) -> tuple[list[list[Any]], int | None]:
    """Send one frame and a Heartbeat behind it; return every answer before the Heartbeat's."""
    ws = await _raw_connection(rig)
    rig.barrier += 1
    barrier_id = f"barrier-{rig.barrier}"
    await ws.send(frame)
    await ws.send(json.dumps([2, barrier_id, "Heartbeat", {}]))
    answers: list[list[Any]] = []
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if msg[0] == 2:  # the central system asking us something (capabilities, ...): decline, politely
            await ws.send(json.dumps([4, msg[1], "NotImplemented", "", {}]))
            continue
        if msg[1] == barrier_id:
            assert msg[0] == 3
            return answers, ws.close_code
        answers.append(msg)


@settings(FUZZ, max_examples=200)
@given(frame=FRAMES)
def test_fuzzed_frames_get_one_answer_or_are_dropped_and_the_connection_lives(rig: Rig, frame: str) -> None:
    answers, close_code = rig.run(_frame_round(rig, frame))
    assert close_code is None
    expected = expects_answer(frame)
    if expected is None:
        assert answers == [], frame
    else:
        assert len(answers) == 1 and answers[0][1] == expected, (frame, answers)
        assert answers[0][0] in (3, 4)
        if answers[0][0] == 4:
            assert answers[0][2] in OCPP16_ERRORS and isinstance(answers[0][3], str) and isinstance(answers[0][4], dict)


def test_after_the_fuzzing_everyone_else_still_works(rig: Rig) -> None:
    async def check() -> None:
        rig.probe.publish(LIMIT_SET, "16" if rig.sim.limit_amps != 16 else "15")
        await rig.sim.wait_for_call("SetChargingProfile", lambda p: _limit(p) in (15, 16), since=len(rig.sim.received) - 1)
        assert set(rig.service.app.hub.connected) >= {"wallbox-1"}

    rig.run(check())


# -- handshake paths: a property ------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(path=st.text(max_size=80) | st.from_regex(r"/[A-Za-z0-9._:%+#/-]{0,70}", fullmatch=True))
def test_any_path_yields_a_safe_id_or_none(path: str) -> None:
    for prefix in ("", "/ocpp"):
        cid = charger_id_from_path(path, prefix)
        assert cid is None or (CHARGER_ID_RE.fullmatch(cid) and not set(cid) & set("+#/ ") and cid.lower() != "bridge")


# -- by hand: floods, responses to nothing, broken frames ---------------------------------------------------------------


async def raw(service: Service, charger_id: str = "raw-1") -> ClientConnection:
    return await websockets.connect(f"{service.url}/{charger_id}", subprotocols=["ocpp1.6"])


async def test_a_flood_of_2000_pipelined_heartbeats_is_answered_and_others_are_unaffected(service_factory: Any, probe: MqttProbe) -> None:
    # Pipelining itself, with the per-charger rate limit raised (test_hardening covers the limit)
    service = await service_factory(ocpp={"max_message_rate": 100_000, "message_burst": 100_000})
    other = await service.charger("wallbox-1")
    ws = await raw(service)
    count = 2000

    async def send_all() -> None:
        for n in range(count):
            await ws.send(json.dumps([2, f"hb-{n}", "Heartbeat", {}]))

    async def read_all() -> list[str]:
        ids: list[str] = []
        while len(ids) < count:
            msg = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT * 3))
            if msg[0] == 2:
                await ws.send(json.dumps([4, msg[1], "NotImplemented", "", {}]))
                continue
            assert msg[0] == 3, msg
            ids.append(msg[1])
        return ids

    reader = asyncio.create_task(read_all())
    sender = asyncio.create_task(send_all())
    # meanwhile, another charger's round trip and a setpoint go through
    await asyncio.wait_for(other.call(call.Heartbeat()), TIMEOUT)
    probe.publish(LIMIT_SET, "9")
    assert _limit(await other.wait_for_call("SetChargingProfile", timeout=TIMEOUT * 3)) == 9
    await sender
    ids = await reader
    assert ids == [f"hb-{n}" for n in range(count)]  # each one answered, in order
    assert ws.close_code is None
    await ws.close()


async def test_responses_to_nothing_and_bad_answers_to_our_calls(service: Service, probe: MqttProbe) -> None:
    ws = await raw(service)
    answer: Callable[[str], list[list[Any]]] = lambda mid: [[3, mid, {"status": "Accepted"}]]

    async def respond() -> None:
        """A charger answering every SetChargingProfile with whatever the test wants just now."""
        while True:
            msg = json.loads(await ws.recv())
            if msg[0] != 2:
                continue
            frames = answer(msg[1]) if msg[2] == "SetChargingProfile" else [[4, msg[1], "NotImplemented", "", {}]]
            for frame in frames:
                await ws.send(json.dumps(frame))

    responder = asyncio.create_task(respond())
    await ws.send(json.dumps([2, "boot", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]))
    await service.wait_event(READY, "raw-1")

    async def setpoint(value: int) -> dict[str, Any]:
        since = len(service.events)
        probe.publish("ocpp/raw-1/charging_limit/set", str(value))
        event = await service.wait_event(RESULT, "raw-1", lambda e: e.data.get("command") == "charging_limit"
                                         and e.data.get("limit") == value and e.data.get("status") != "Queued", since=since)
        return event.data

    try:
        # answers for ids we never used, then the real one: the real one counts
        answer = lambda mid: [[3, "not-ours", {"status": "Rejected"}], [4, "nor-this", "GenericError", "", {}], [3, mid, {"status": "Accepted"}]]
        assert (await setpoint(10))["status"] == "Accepted"
        # a result that violates the schema, a CALLERROR, a result of the wrong shape (then a real Rejected): never Accepted
        for value, bad in ((11, lambda mid: [[3, mid, {"status": "Maybe"}]]), (12, lambda mid: [[4, mid, "InternalError", "boom", {}]]),
                           (13, lambda mid: [[3, mid, ["status", "Accepted"]], [3, mid, {"status": "Rejected"}]])):
            answer = bad
            result = await setpoint(value)
            assert result["status"] != "Accepted", (value, result)
        assert service.app.hub.states["raw-1"].charging_limit == 10
        assert ws.close_code is None and "raw-1" in service.app.hub.connected
    finally:
        responder.cancel()
        await ws.close()


async def test_invalid_utf8_text_frame_fails_only_that_connection(service: Service, probe: MqttProbe) -> None:
    other = await service.charger("wallbox-1")
    ws = await raw(service)
    await ws.send(b"[2, \"x\", \"Heartbeat\", {\"a\": \"\xff\"}]", text=True)
    await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
    assert ws.close_code == 1007  # invalid frame payload data, as RFC 6455 prescribes
    probe.publish(LIMIT_SET, "8")
    assert _limit(await other.wait_for_call("SetChargingProfile")) == 8


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        # a valid integer, but more connectors than ocpp.max_connectors would cost entities and state keys
        (json.dumps([2, "big-int", "StatusNotification", {"connectorId": 10**30, "errorCode": "NoError", "status": "Available"}]), "PropertyConstraintViolation"),
        ('[2, "inf", "StatusNotification", {"connectorId": 1e400, "errorCode": "NoError", "status": "Available"}]', "TypeConstraintViolation"),
        ('[2, "nan", "MeterValues", {"connectorId": NaN, "meterValue": []}]', "TypeConstraintViolation"),
        (json.dumps([2, "long-vendor", "BootNotification", {"chargePointVendor": "v" * 21, "chargePointModel": "m"}]), ("TypeConstraintViolation", "PropertyConstraintViolation")),
        (json.dumps([2, "x" * 37, "Heartbeat", {}]), "dropped"),  # a message id longer than OCPP-J's 36
        (json.dumps([2, "", "Heartbeat", {}]), "dropped"),
        (json.dumps([2, "dup", "Heartbeat", {}, "extra"]), "FormationViolation"),
        (json.dumps([2, "nul", "Heart\u0000beat", {}]), "NotImplemented"),
        (json.dumps([2, "stop", "StopTransaction", {"meterStop": 1, "timestamp": "2024-01-01T00:00:00Z", "transactionId": 987654}]), None),
        (json.dumps([2, "surrogate", "DataTransfer", {"vendorId": "\ud800x"}]), None),
    ],
    ids=["huge-int", "1e400", "NaN", "too-long", "id-37", "id-empty", "5-elements", "nul-action", "unknown-tx", "lone-surrogate"],
)
async def test_odd_frames_by_hand(service: Service, frame: str, code: str | tuple[str, ...] | None) -> None:
    ws = await raw(service)
    await ws.send(frame)
    await ws.send(json.dumps([2, "after", "Heartbeat", {}]))
    answers = []
    while (msg := json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))[1] != "after":
        if msg[0] != 2:
            answers.append(msg)
    if code == "dropped":
        assert answers == []
    elif code is None:
        assert len(answers) == 1 and answers[0][0] == 3, answers
    else:
        assert len(answers) == 1 and answers[0][0] == 4 and answers[0][2] in ((code,) if isinstance(code, str) else code), answers
    assert ws.close_code is None
    await ws.close()


async def test_deeply_nested_json_is_dropped_not_fatal(service: Service) -> None:
    ws = await raw(service)
    await ws.send("[" * 30000 + "]" * 30000)
    await ws.send(json.dumps([2, "after", "Heartbeat", {}]))
    while (msg := json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))[1] != "after":
        pass
    assert msg[0] == 3 and ws.close_code is None
    await ws.close()


# -- by hand: handshakes --------------------------------------------------------------------------------------------------


async def _http(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        data = await asyncio.wait_for(reader.read(4096), TIMEOUT)
    except ConnectionResetError:
        data = b""
    writer.close()
    return data


UPGRADE = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        ("GET /wällbox HTTP/1.1\r\nHost: x\r\n".encode() + UPGRADE + b"\r\n", (b"400", b"404", b"")),  # raw non-ASCII path
        (b"GET /wallbox-1 HTTP/1.1\r\nHost: x\r\n\r\n", (b"426", b"400")),  # plain HTTP, no upgrade
        (b"POST /wallbox-1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n" + UPGRADE + b"\r\n", (b"400", b"405", b"")),
        (b"\x16\x03\x01\x00\x05hello", (b"400", b"")),  # a TLS ClientHello on the plain port
        (b"GET /wallbox-1 HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 20000 + b"\r\n" + UPGRADE + b"\r\n", (b"400", b"431", b"")),
        (b"GET /wallbox-1 HTTP/1.1\r\nHost: x\r\n" + UPGRADE + b"Sec-WebSocket-Version: 8\r\n\r\n", (b"400", b"426")),
    ],
    ids=["non-ascii-path", "no-upgrade", "post", "tls-on-plain-port", "huge-header", "bad-version"],
)
async def test_broken_http_handshakes_are_refused_and_harmless(service_factory, request_bytes: bytes, status: tuple[bytes, ...]) -> None:
    service = await service_factory(ocpp={"open_timeout": 2})  # a request that never ends is cut after this
    data = await _http(service.config["ocpp"]["port"], request_bytes)
    assert data[9:12] in status or (data == b"" and b"" in status), data[:200]
    await service.charger("wallbox-1")  # and the next charger gets in


@pytest.mark.parametrize(
    ("path", "accepted"),
    [
        ("/ocpp/" + "x" * 64, True),  # the longest id
        ("/ocpp/" + "x" * 65, False),
        ("/ocpp/cp-1?token=abc", True),  # a query string is not part of the id
        ("/other/cp-1", False),  # the wrong prefix
        ("/ocpp", False),
        ("/ocpp/", False),
        ("/ocpp/cp-1/extra", False),
        ("/ocpp/%F0%9F%94%8C", False),  # an emoji, percent-encoded
        ("/ocpp/cp%00x", False),
        ("/ocpp/..%2F..%2Fetc", False),
    ],
)
async def test_paths_under_a_prefix(service_factory, path: str, accepted: bool) -> None:
    service = await service_factory(ocpp={"path_prefix": "ocpp"})
    url = f"ws://127.0.0.1:{service.config['ocpp']['port']}{path}"
    if accepted:
        ws = await websockets.connect(url, subprotocols=["ocpp1.6"])
        await ws.send(json.dumps([2, "1", "Heartbeat", {}]))
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))[0] in (2, 3)
        await ws.close()
    else:
        with pytest.raises(websockets.InvalidStatus) as err:
            await websockets.connect(url, subprotocols=["ocpp1.6"])
        assert err.value.response.status_code == 404


# -- by hand: every MQTT command topic ------------------------------------------------------------------------------------

NOT_UTF8 = b"\xff\xfe\xfd"
HUGE = b"x" * 100_000

COMMAND_CASES = [
    ("charging/set", b"maybe"), ("charging/set", NOT_UTF8), ("unlock/set", "١".encode()), ("unlock/set", b"9"), ("charging/set", HUGE),
    ("available/set", b"2"), ("available/set", b"{}"), ("available/set", NOT_UTF8),
    ("reset/set", b"Warm"), ("reset/set", NOT_UTF8), ("reset/set", HUGE),
    ("unlock/set", b"0"), ("unlock/set", b"101"), ("unlock/set", b"-1"), ("unlock/set", b"one"), ("unlock/set", b"1.5"),
    ("charging_schedule/set", b"not json"), ("charging_schedule/set", NOT_UTF8), ("charging_schedule/set", HUGE),
]


async def test_bad_payloads_on_every_command_topic(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    await _quiet(service, sim)
    since_event, since_call = len(service.events), len(sim.received)
    for topic, payload in COMMAND_CASES:
        probe.publish(f"ocpp/wallbox-1/{topic}", payload)
    probe.publish(LIMIT_SET, "10")  # the barrier
    await sim.wait_for_call("SetChargingProfile", since=since_call)
    results = [e.data for e in service.events[since_event:] if e.kind == RESULT and e.charger_id == "wallbox-1"]
    refused = [r for r in results if r["status"] in ("Invalid", "NoTransaction")]
    assert len(refused) == len(COMMAND_CASES), results
    assert [name for name, _ in sim.received[since_call:]] == ["SetChargingProfile"], sim.received[since_call:]


async def test_deeply_nested_schedule_payload_is_refused(service: Service, probe: MqttProbe) -> None:
    probe.publish("ocpp/wallbox-1/charging_schedule/set", b"[" * 5000 + b"]" * 5000)
    event = await probe.wait_json("ocpp/wallbox-1/event", timeout=5)
    assert event["status"] == "Invalid"


async def _quiet(service: Service, sim: SimulatedCharger) -> None:
    cp = service.app.hub.connected[sim.id]
    configured = getattr(cp, "configured", None)
    if configured is not None:
        await asyncio.wait_for(configured.wait(), TIMEOUT)


@pytest.mark.parametrize("topic", ["charging_limit/set", "charging/set", "available/set", "reset/set", "unlock/set", "refresh/set",
                                   "charging_schedule/set", "teleport/set"])
async def test_commands_for_unknown_chargers_say_so(service: Service, probe: MqttProbe, topic: str) -> None:
    probe.publish(f"ocpp/ghost/{topic}", b"1")
    event = await probe.wait_json("ocpp/ghost/event")
    assert event["status"] in ("UnknownCharger", "UnknownCommand", "Invalid", "Offline"), event
    assert "ghost" not in service.app.hub.connected


async def test_commands_with_an_invalid_charger_id_in_the_topic_are_ignored(service: Service, probe: MqttProbe,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    sim = await service.charger("wallbox-1")
    for cid in ("a b", "wäll", "x" * 65):
        probe.publish(f"ocpp/{cid}/charging_limit/set", b"10")
    probe.publish(LIMIT_SET, "12")
    assert _limit(await sim.wait_for_call("SetChargingProfile")) == 12
    assert sum("not a valid charge point id" in r.getMessage() for r in caplog.records) == 3
    assert set(service.app.hub.states) == {"wallbox-1"}
