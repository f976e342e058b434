"""Bad input loses nothing: clear refusal, the right OCPP/MQTT answer, everyone else keeps working."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from .conftest import MqttProbe, Service

LIMIT_SET = "ocpp/wallbox-1/charging_limit/set"


async def raw_client(service: Service, charger_id: str = "raw-1", **kwargs: Any) -> ClientConnection:
    kwargs.setdefault("subprotocols", ["ocpp1.6"])
    return await websockets.connect(f"{service.url}/{charger_id}", **kwargs)


async def exchange(ws: ClientConnection, frame: Any, expect_reply: bool = True) -> Any:
    await ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))
    if not expect_reply:
        return None
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


@pytest.mark.parametrize(
    "path",
    ["/a+b", "/a%23b", "/a%2Fb", "/", "/" + "x" * 65, "/w%C3%A4llbox", "/bridge", "/wallbox%201", "/a/b"],
)
async def test_invalid_charger_ids_are_refused_at_the_handshake(service: Service, path: str, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(websockets.InvalidStatus) as err:
        await websockets.connect(f"ws://127.0.0.1:{service.config['ocpp']['port']}{path}", subprotocols=["ocpp1.6"])
    assert err.value.response.status_code == 404
    assert any("refused a connection" in r.getMessage() for r in caplog.records)
    assert service.app.hub.connected == {}


async def test_wrong_subprotocol_refused_missing_one_accepted(service: Service) -> None:
    with pytest.raises(websockets.InvalidStatus) as err:
        await raw_client(service, subprotocols=["ocpp2.0"])  # 2.0 (not 2.0.1) is spoken by nobody here
    assert err.value.response.status_code == 400
    ws = await raw_client(service, subprotocols=None)  # many real chargers offer none
    reply = await exchange(ws, [2, "1", "Heartbeat", {}])
    assert reply[0] == 3 and reply[1] == "1"
    await ws.close()


async def test_required_subprotocol_is_enforced_when_configured(service_factory) -> None:
    service = await service_factory(ocpp={"require_subprotocol": True})
    with pytest.raises(websockets.InvalidStatus):
        await raw_client(service, subprotocols=None)


async def test_malformed_frames_get_the_right_answer_and_the_connection_survives(service: Service, probe: MqttProbe) -> None:
    other = await service.charger("wallbox-1")
    ws = await raw_client(service)
    # Not JSON / not an array / no usable id: nothing to answer to (OCPP-J), dropped with a log line.
    for frame in ("not json", '{"a": 1}', "[]", "[2]", '[2, 17, "Heartbeat", {}]'):
        await exchange(ws, frame, expect_reply=False)
    await ws.send(b"\x00\x01binary")
    cases = [
        ([2, "m1", "Heartbeat"], "FormationViolation"),  # missing payload
        ([5, "m2", {}], "FormationViolation"),  # unknown MessageTypeId
        ([2, "m3", "FlyToTheMoon", {}], "NotImplemented"),  # not a 1.6 action
        ([2, "m4", "BootNotification", {"chargePointVendor": "x"}], "ProtocolError"),  # required field missing
        ([2, "m5", "StatusNotification", {"connectorId": "one", "errorCode": "NoError", "status": "Available"}], "TypeConstraintViolation"),
        ([2, "m6", "StatusNotification", {"connectorId": 1, "errorCode": "Error", "status": "Available"}], "FormationViolation"),
        ([2, "m7", "Heartbeat", {"unexpected": 1}], "FormationViolation"),
        ([2, "m8", "GetConfiguration", {}], "NotSupported"),  # a CS->CP action sent the wrong way
    ]
    for frame, code in cases:
        reply = await exchange(ws, frame)
        assert reply[:3] == [4, frame[1], code], (frame, reply)
        assert isinstance(reply[3], str) and isinstance(reply[4], dict)
    # A response to nothing we asked is dropped, not queued for our next call.
    await exchange(ws, [3, "never-sent", {"status": "Accepted"}], expect_reply=False)
    reply = await exchange(ws, [2, "ok", "Heartbeat", {}])
    assert reply[0] == 3 and reply[1] == "ok" and reply[2]["currentTime"].endswith("Z")
    # the other charger was never disturbed
    probe.publish(LIMIT_SET, "9")
    await other.wait_for_call("SetChargingProfile")
    await ws.close()


async def test_oversized_frame_closes_only_that_connection(service_factory, probe: MqttProbe) -> None:
    service = await service_factory(ocpp={"max_message_size": 4096})
    other = await service.charger("wallbox-1")
    ws = await raw_client(service)
    await ws.send(json.dumps([2, "big", "DataTransfer", {"vendorId": "x", "data": "y" * 10000}]))
    await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1009  # message too big
    probe.publish(LIMIT_SET, "9")
    await other.wait_for_call("SetChargingProfile")


EMPTY_PAYLOADS = [b"", b"   "]  # how MQTT deletes a retained message: ignored, never an answer or a command
BAD_SETPOINTS = [
    b"abc", b"1_9", "١٩".encode(), b"0x10", b"+-5", b"nan", b"NaN", b"inf", b"-inf", b"-5", b"33", b"1e9", b"16 A", b"\xff\xfe",
    b"[16]", b"null", b"true", b'{"limit": true}', b'{"limit": "sixteen"}', b'{"limit": null}', b'{"value": 16}',
    b'{"limit": 16, "unit": "kW"}', b'{"limit": 16, "unit": 7}', b'{"limit": 40000, "unit": "W"}', b'{"limit": -1}',
    b"1" * 300, b'{"limit": 1e400}',
]


async def test_bad_setpoints_are_refused_without_any_ocpp_traffic(service: Service, probe: MqttProbe) -> None:
    sim = await service.charger("wallbox-1")
    mark = probe.mark()
    for payload in [*EMPTY_PAYLOADS, *BAD_SETPOINTS]:
        probe.publish(LIMIT_SET, payload)
    probe.publish(LIMIT_SET, "10")  # a valid one behind them: the barrier
    request = await sim.wait_for_call("SetChargingProfile")
    assert request["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 10
    await probe.wait_json("ocpp/wallbox-1/event", lambda d: d["status"] == "Accepted", since=mark)
    events = [json.loads(p) for p in probe.received("ocpp/wallbox-1/event")]
    invalid = [e for e in events if e["status"] == "Invalid"]
    assert len(invalid) == len(BAD_SETPOINTS)
    assert all(e["reason"] for e in invalid)
    assert len(sim.calls("SetChargingProfile")) == 1


async def test_setpoint_for_unknown_charger_and_unknown_command(service: Service, probe: MqttProbe) -> None:
    probe.publish("ocpp/ghost/charging_limit/set", "10")
    event = await probe.wait_json("ocpp/ghost/event")
    assert event["status"] == "UnknownCharger"
    await service.charger("wallbox-1")
    probe.publish("ocpp/wallbox-1/teleport/set", "1")
    event = await probe.wait_json("ocpp/wallbox-1/event", lambda d: d["command"] == "teleport")
    assert event["status"] == "UnknownCommand"
