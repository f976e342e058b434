"""Lenient mode (ocpp.lenient): known firmware quirks from the charger traces are repaired, not refused."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import websockets

from .conftest import MqttProbe

TRACES = Path(__file__).parent / "data" / "charger-traces" / "frames.jsonl"


def trace(line: int) -> dict:
    record = json.loads(TRACES.read_text(encoding="utf-8").splitlines()[line - 1])
    return record.get("frame") or record["reconstructed_frame"]


async def reply(ws, frame) -> list:
    """Send a frame and return the answer to it (our own CALLs to the charger are skipped)."""
    await ws.send(json.dumps(frame))
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if message[0] != 2:
            return message


async def test_quirky_frames_are_accepted_in_lenient_mode(service_factory, probe: MqttProbe) -> None:
    service = await service_factory(ocpp={"lenient": ["quirky"]})
    ws = await websockets.connect(f"{service.url}/quirky", subprotocols=["ocpp1.6"])
    numbers = trace(69)  # sampled values as JSON numbers
    numbers[1] = "n69"
    assert (await reply(ws, numbers))[0] == 3
    state = await probe.wait_json("ocpp/quirky/state", lambda d: d.get("energy") is not None)
    assert abs(state["energy"] - 0.604213) < 1e-6
    object_form = trace(68)  # meterValue as an object
    answer = await reply(ws, object_form)
    assert answer[:2] == [3, object_form[1]]
    long_tag = trace(84)  # StopTransaction with a 22-character idTag: refusing it makes the charger replay it forever
    assert (await reply(ws, long_tag))[0] == 3
    await ws.close()


async def test_strict_mode_still_refuses_them(service_factory) -> None:
    service = await service_factory()
    ws = await websockets.connect(f"{service.url}/strict", subprotocols=["ocpp1.6"])
    answer = await reply(ws, trace(68))
    assert answer[0] == 4 and "meterValue" in answer[4]["cause"]
    await ws.close()


async def test_numeric_configuration_values_are_read_in_lenient_mode(service_factory) -> None:
    service = await service_factory(ocpp={"lenient": ["*"]})
    ws = await websockets.connect(f"{service.url}/numeric", subprotocols=["ocpp1.6"])
    await ws.send(json.dumps([2, "b", "BootNotification", {"chargePointVendor": "X", "chargePointModel": "Y"}]))
    await asyncio.wait_for(ws.recv(), 5)
    request = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert request[2] == "GetConfiguration"
    await ws.send(json.dumps([3, request[1], {"configurationKey": [
        {"key": "NumberOfConnectors", "readonly": True, "value": 2},
        {"key": "ChargeProfileMaxStackLevel", "readonly": True, "value": 3}]}]))
    cp = service.app.hub.connected["numeric"]
    await asyncio.wait_for(cp.configured.wait(), 5)
    assert cp.state.capabilities["number_of_connectors"] == 2 and cp.state.capabilities["max_stack_level"] == 3
    await ws.close()
