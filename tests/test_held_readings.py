"""MeterValues sent faster than ``mqtt.readings_interval`` are held and read together, and nothing they
say is lost: a quantity only an older one carries, a value the newest cannot give, a live reading a
late replay would hide, the readings before any other message and before the charger leaves.

Real service, mosquitto and WebSocket. The service runs with ``mqtt.readings_interval: 5`` (a user's
setting, within 0..60) so that every MeterValues after the first is surely held, however slow the
machine; each test then makes the service read what it holds by sending another message (any
message but MeterValues reads the held readings first) or by leaving.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from .conftest import MqttProbe, Service
from .test_reliability import wait_until
from .test_untrusted_values import BOOT_16, RawCharger, now

CID = "wallbox-1"


def sample(value: str, measurand: str, unit: str) -> dict[str, Any]:
    return {"value": value, "measurand": measurand, "unit": unit, "context": "Sample.Periodic"}


def meter_values(*samples: dict[str, Any], timestamp: str | None = None) -> dict[str, Any]:
    return {"connectorId": 1, "meterValue": [{"timestamp": timestamp or now(), "sampledValue": list(samples)}]}


def power(watts: str, timestamp: str | None = None) -> dict[str, Any]:
    return meter_values(sample(watts, "Power.Active.Import", "W"), timestamp=timestamp)


def energy(wh: str) -> dict[str, Any]:
    return meter_values(sample(wh, "Energy.Active.Import.Register", "Wh"))


async def booted(service_factory: Any) -> tuple[Service, RawCharger]:
    service = await service_factory(mqtt={"readings_interval": 5})
    charger = await RawCharger.connect(service, CID)
    assert (await charger.call("BootNotification", BOOT_16))[0] == 3
    assert (await charger.call("MeterValues", power("1")))[0] == 3  # read at once: the next ones are held
    assert service.app.hub.states[CID].readings["power"] == 1.0
    return service, charger


async def read_held(charger: RawCharger) -> None:
    """Any message but MeterValues reads what is held before it is answered."""
    assert (await charger.call("Heartbeat", {}))[0] == 3


async def test_held_readings_of_other_quantities_are_all_read(service_factory: Any) -> None:
    """Energy three times, then power twice, back to back: the newest energy and the newest power."""
    service, charger = await booted(service_factory)
    try:
        for wh in ("1000", "2000", "3000"):
            assert (await charger.call("MeterValues", energy(wh)))[0] == 3
        for watts in ("7000", "7400"):
            assert (await charger.call("MeterValues", power(watts)))[0] == 3
        readings = service.app.hub.states[CID].readings
        assert readings["power"] == 1.0, "read at once although within the interval"
        await read_held(charger)
        assert (readings["energy"], readings["power"]) == (3.0, 7400.0)
    finally:
        await charger.close()


async def test_a_newest_value_that_is_no_number_leaves_the_one_before_it(service_factory: Any) -> None:
    """As if each were read: 7000 W, then 'n/a' (skipped) -> 7000 W, not the 1 W from before both."""
    service, charger = await booted(service_factory)
    try:
        assert (await charger.call("MeterValues", power("7000")))[0] == 3
        assert (await charger.call("MeterValues", power("n/a")))[0] == 3
        await read_held(charger)
        assert service.app.hub.states[CID].readings["power"] == 7000.0
    finally:
        await charger.close()


async def test_a_late_replay_does_not_hide_the_live_reading_before_it(service_factory: Any) -> None:
    """A queued sample from an hour ago, sent after a live one: the live one stays (the replay is older)."""
    service, charger = await booted(service_factory)
    hour_ago = (datetime.now(timezone.utc) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        assert (await charger.call("MeterValues", power("5000")))[0] == 3
        assert (await charger.call("MeterValues", power("9999", timestamp=hour_ago)))[0] == 3
        await read_held(charger)
        assert service.app.hub.states[CID].readings["power"] == 5000.0
    finally:
        await charger.close()


async def test_a_status_after_held_readings_is_published_with_them(service_factory: Any, probe: MqttProbe) -> None:
    """The status message any automation sees carries the power sent before it, not an older one."""
    service, charger = await booted(service_factory)
    try:
        mark = probe.mark()
        assert (await charger.call("MeterValues", power("1234")))[0] == 3
        status = {"connectorId": 1, "errorCode": "NoError", "status": "Finishing"}
        assert (await charger.call("StatusNotification", status))[0] == 3
        published = await probe.wait_json(f"ocpp/{CID}/state", lambda d: d.get("status") == "Finishing", since=mark)
        assert published["power"] == 1234.0
    finally:
        await charger.close()


async def test_held_readings_are_read_when_the_charger_leaves(service_factory: Any, probe: MqttProbe) -> None:
    """Leaving reads what it held before it is marked offline (not when the 5 s interval ends)."""
    service, charger = await booted(service_factory)
    mark = probe.mark()
    assert (await charger.call("MeterValues", power("4321")))[0] == 3
    await charger.close()
    await probe.wait_for(f"ocpp/{CID}/availability", lambda payload: payload == b"offline", since=mark)
    assert service.app.hub.states[CID].readings["power"] == 4321.0


async def test_readings_held_by_a_replaced_connection_are_dropped(service_factory: Any) -> None:
    """Two connections never write into one charger: the old one's held readings do not overwrite the new one's."""
    service, old = await booted(service_factory)
    old_cp = service.app.hub.connected[CID]
    assert (await old.call("MeterValues", power("777")))[0] == 3  # held
    old.ws.transport.pause_reading()  # it does not see the service closing it: its connection ends when we say
    new = await RawCharger.connect(service, CID)
    try:
        assert (await new.call("BootNotification", BOOT_16))[0] == 3
        assert (await new.call("MeterValues", power("888")))[0] == 3  # its first: read at once
        assert service.app.hub.states[CID].readings["power"] == 888.0
        old.ws.transport.resume_reading()  # now the old connection closes, and what it held is let go
        await wait_until(lambda: not old_cp._held, what="the old connection let go of its readings")
        assert service.app.hub.states[CID].readings["power"] == 888.0
    finally:
        await new.close()
        await old.close()
