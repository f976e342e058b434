"""When a charger's state message goes out: readings alone at most once per ``mqtt.readings_interval``
(the newest values), anything else at once. Real service, mosquitto and WebSocket."""

from __future__ import annotations

import json
from typing import Any

from .conftest import MqttProbe, Service
from .test_untrusted_values import BOOT_16, RawCharger, now

STATE = "ocpp/wallbox-1/state"


def meter_values(watts: int) -> dict[str, Any]:
    return {"connectorId": 1, "meterValue": [{"timestamp": now(), "sampledValue": [
        {"value": str(watts), "measurand": "Power.Active.Import", "unit": "W"}]}]}


def status(value: str) -> dict[str, Any]:
    return {"connectorId": 1, "errorCode": "NoError", "status": value}


async def charging(service: Service, probe: MqttProbe) -> RawCharger:
    """A booted charger whose Charging status has been published."""
    charger = await RawCharger.connect(service, "wallbox-1")
    await charger.call("BootNotification", BOOT_16)
    await charger.call("StatusNotification", status("Charging"))
    await probe.wait_json(STATE, lambda d: d.get("status") == "Charging")
    return charger


async def test_a_flood_of_readings_is_published_as_its_newest_values_and_no_status_is_merged_away(
        service: Service, probe: MqttProbe) -> None:
    charger = await charging(service, probe)
    try:
        mark = probe.mark()
        for watts in range(1000, 1040):  # one after the other, each answered: a closed loop
            assert (await charger.call("MeterValues", meter_values(watts)))[0] == 3
        # A status between readings: published as it is, not folded into the next readings' message.
        await charger.call("StatusNotification", status("SuspendedEV"))
        await charger.call("MeterValues", meter_values(2000))
        await charger.call("StatusNotification", status("Charging"))
        final = await probe.wait_json(STATE, lambda d: d.get("power") == 2000 and d.get("status") == "Charging", since=mark)
        states = [json.loads(payload) for topic, payload, _ in probe.messages[mark:] if topic == STATE]
        assert final == states[-1]
        assert any(s["status"] == "SuspendedEV" for s in states)
        assert len(states) < 20, f"{len(states)} state messages for 42 charger messages"
    finally:
        await charger.close()


async def test_with_readings_interval_0_every_message_is_published(service_factory: Any, probe: MqttProbe) -> None:
    service = await service_factory(mqtt={"readings_interval": 0})
    charger = await charging(service, probe)
    try:
        mark = probe.mark()
        for watts in range(1000, 1010):
            await charger.call("MeterValues", meter_values(watts))
        await probe.wait_json(STATE, lambda d: d.get("power") == 1009, since=mark)
        powers = [json.loads(payload).get("power") for topic, payload, _ in probe.messages[mark:] if topic == STATE]
        assert powers == list(range(1000, 1010))
    finally:
        await charger.close()
