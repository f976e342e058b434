"""Several instances on one broker: commands route themselves, a moving charger keeps its setpoint."""

from __future__ import annotations

import json
from pathlib import Path

from ocpp_addon.hub import DISCONNECTED

from .conftest import MqttProbe


def _limit(payload: dict) -> float:
    return payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"]


async def test_two_instances_split_chargers_and_hand_over(service_factory, probe: MqttProbe, tmp_path: Path) -> None:
    a = await service_factory(instance_id="a", data_dir=str(tmp_path / "a"), mqtt={"client_id": "inst-a"})
    b = await service_factory(instance_id="b", data_dir=str(tmp_path / "b"), mqtt={"client_id": "inst-b"})
    # distinct bridge devices and last wills
    await probe.wait_for("ocpp/bridge/a/state", lambda p: p == b"online")
    await probe.wait_for("ocpp/bridge/b/state", lambda p: p == b"online")
    bridge_a = json.loads(await probe.wait_for("homeassistant/device/ocpp_bridge_a/config"))
    bridge_b = json.loads(await probe.wait_for("homeassistant/device/ocpp_bridge_b/config"))
    assert bridge_a["device"]["identifiers"] != bridge_b["device"]["identifiers"]
    assert bridge_a["availability"] == [{"topic": "ocpp/bridge/a/state"}]

    on_a = await a.charger("cp-1")
    on_b = await b.charger("cp-2")
    disco = await probe.wait_json("homeassistant/device/cp-1/config", lambda d: d["device"]["via_device"] == "ocpp_bridge_a")
    assert disco["availability"][0] == {"topic": "ocpp/bridge/a/state"}
    await probe.wait_json("homeassistant/device/cp-2/config", lambda d: d["device"]["via_device"] == "ocpp_bridge_b")

    # every setpoint reaches the right charger, through the instance that holds it
    probe.publish("ocpp/cp-1/charging_limit/set", "10", retain=True)
    probe.publish("ocpp/cp-2/charging_limit/set", "11", retain=True)
    assert _limit(await on_a.wait_for_call("SetChargingProfile")) == 10
    assert _limit(await on_b.wait_for_call("SetChargingProfile")) == 11
    await probe.wait_json("ocpp/cp-1/state", lambda d: d["charging_limit"] == 10)
    assert on_a.calls("SetChargingProfile") and len(on_b.calls("SetChargingProfile")) == 1
    assert "cp-2" not in a.app.hub.states and "cp-1" not in b.app.hub.states  # no instance saw the other's commands

    # cp-1 moves from instance a to instance b: same entities, its setpoint is handed over by the broker
    mark = probe.mark()
    await on_a._connection.close()
    await a.wait_event(DISCONNECTED, "cp-1")
    moved = await b.charger("cp-1")
    assert _limit(await moved.wait_for_call("SetChargingProfile")) == 10
    disco = await probe.wait_json("homeassistant/device/cp-1/config", lambda d: d["device"]["via_device"] == "ocpp_bridge_b", since=mark)
    assert disco["components"]["charging_limit"]["unique_id"] == "ocpp_cp-1_charging_limit"
    await probe.wait_json("ocpp/cp-1/state", lambda d: d["charging_limit"] == 10, since=mark)
    assert await probe.wait_for("ocpp/cp-1/availability", lambda p: p == b"online", since=mark)
    assert json.loads(await probe.wait_for("ocpp/cp-1/connection", since=mark))["instance"] == "b"
    # a new setpoint now goes through b only
    probe.publish("ocpp/cp-1/charging_limit/set", "12", retain=True)
    assert _limit(await moved.wait_for_call("SetChargingProfile", lambda p: _limit(p) == 12)) == 12
    assert all(_limit(p) != 12 for p in on_a.calls("SetChargingProfile"))


async def test_late_disconnect_on_the_old_instance_does_not_mark_a_moved_charger_offline(service_factory, probe: MqttProbe, tmp_path: Path) -> None:
    a = await service_factory(instance_id="a", data_dir=str(tmp_path / "a"), mqtt={"client_id": "inst-a"})
    b = await service_factory(instance_id="b", data_dir=str(tmp_path / "b"), mqtt={"client_id": "inst-b"})
    old = await a.charger("cp-1")
    await b.charger("cp-1")  # reconnected through the other instance before a noticed the drop
    await probe.wait_json("ocpp/cp-1/connection", lambda d: d["instance"] == "b")
    await a.app.homeassistant.mqtt.connected.wait()
    await probe.wait_for("ocpp/cp-1/availability", lambda p: p == b"online")
    mark = probe.mark()
    await old._connection.close()
    await a.wait_event(DISCONNECTED, "cp-1")
    probe.publish("ocpp/cp-1/charging_limit/set", "9")  # barrier: anything a published before is delivered first
    await probe.wait_json("ocpp/cp-1/event", lambda d: d.get("limit") == 9, since=mark)
    assert b"offline" not in probe.received("ocpp/cp-1/availability")[-1:]
    assert all(p != b"offline" for t, p, _ in probe.messages[mark:] if t == "ocpp/cp-1/availability")
