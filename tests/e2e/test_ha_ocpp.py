"""Our service in a real Home Assistant: discovery, the charging-limit slider, controls, availability, restart.

A real HA core (scripts/ha_venv.sh) and a real mosquitto on 127.0.0.1 (session fixtures from conftest.py),
our service in-process (``tests.conftest.Service``: the real ``ocpp_addon.app.App``) and two simulated
chargers: ``wallbox-1`` accepts charging profiles, ``wallbox-2`` (single phase) rejects them, and an
OCPP 2.0.1 station ``station-3`` beside them on the same port.

Everything is checked through Home Assistant's own APIs (REST states, websocket registries, service
calls); our MQTT traffic is only read to learn what we announced (the retained discovery payloads) and
what our event topic said. The tests run in file order and share one scenario (module-scoped loop):

    entities registered -> limit accepted -> limit rejected -> switches and buttons
    -> a charger stops (unavailable) -> HA restarts (everything back) -> HA's log is clean

The terminal summary prints how long the scenario took, step by step.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from ocpp_addon import __version__
from ocpp_addon.homeassistant import bridge_id, discovery_topic
from ocpp_addon.hub import DISCONNECTED
from ocpp_addon.simulator import SimulatedCharger

from ..conftest import MqttProbe, Service, make_config
from .ha import AsyncHomeAssistant, HomeAssistant, Mosquitto, version_tuple

pytestmark = [pytest.mark.ha_e2e, pytest.mark.timeout(900), pytest.mark.asyncio(loop_scope="module")]

ACCEPTING = "wallbox-1"
REJECTING = "wallbox-2"
STATION = "station-3"  # OCPP 2.0.1
CHARGERS: dict[str, dict[str, Any]] = {
    ACCEPTING: {"vendor": "ACME", "model": "Wallbox 22", "firmware": "2.3.4", "serial": "ACME-0001"},
    REJECTING: {"vendor": "Contoso", "model": "Home 7", "firmware": "0.9.1", "serial": "C-42", "phases": 1,
                "profile_status": "Rejected"},
    STATION: {"ocpp": "2.0.1", "vendor": "Fabrikam", "model": "EVSE 2", "firmware": "2.0.1-b7", "serial": "F-9"},
}
PREFIX = "homeassistant"
BASE = "ocpp"
WAIT = 30.0  # seconds for anything HA should do after an MQTT message
NOT_A_VALUE = ("unknown", "unavailable")


# --------------------------------------------------------------------------------------------------
# the scenario's shared state


@dataclass
class Rig:
    ha: AsyncHomeAssistant
    service: Service
    probe: MqttProbe
    sims: dict[str, SimulatedCharger]
    log_mark: int  # HA's console log before our service started
    bridge: str  # the bridge device's identifier
    entity_ids: dict[str, str] = field(default_factory=dict)  # unique_id -> entity_id (HA's registry)
    timings: list[tuple[str, float]] = field(default_factory=list)

    # ---- what we announced (read back from the broker) ----------------------------------------------

    def latest_json(self, topic: str) -> Any:
        payloads = [p for p in self.probe.received(topic) if p]
        assert payloads, f"nothing retained on {topic}"
        return json.loads(payloads[-1])

    def discovery(self, charger_id: str | None) -> dict[str, Any]:
        """Our current discovery payload for a charger (None: the bridge)."""
        return self.latest_json(self.discovery_topic(charger_id))

    def discovery_topic(self, charger_id: str | None) -> str:
        return f"{PREFIX}/device/{self.bridge}/config" if charger_id is None else discovery_topic(PREFIX, charger_id)

    def announced(self) -> list[tuple[str | None, str, dict[str, Any]]]:
        """(charger id or None for the bridge, component key, component) for everything we announce."""
        return [(cid, key, comp) for cid in (None, *CHARGERS) for key, comp in self.discovery(cid)["components"].items()]

    def values(self, charger_id: str | None) -> dict[str, Any]:
        """The JSON on the state topic the components of this device read."""
        return self.latest_json(self.discovery(charger_id)["state_topic"])

    def eid(self, charger_id: str, key: str) -> str:
        return self.entity_ids[self.discovery(charger_id)["components"][key]["unique_id"]]

    def bridge_entity(self, key: str) -> str:
        return self.entity_ids[self.discovery(None)["components"][key]["unique_id"]]

    def charger_entities(self, charger_id: str) -> list[str]:
        return [self.entity_ids[c["unique_id"]] for c in self.discovery(charger_id)["components"].values()]

    # ---- HA helpers ---------------------------------------------------------------------------------

    async def refresh_entity_ids(self) -> None:
        self.entity_ids = {e["unique_id"]: e["entity_id"] for e in await self.ha.entity_registry() if e["platform"] == "mqtt"}

    async def wait_value(self, entity_id: str, value: float, timeout: float = WAIT) -> dict[str, Any]:
        return await self.ha.wait_for_state(
            entity_id, lambda s: s is not None and s["state"] not in NOT_A_VALUE and float(s["state"]) == value, timeout)

    async def wait_state(self, entity_id: str, state: str, timeout: float = WAIT) -> dict[str, Any]:
        return await self.ha.wait_for_state(entity_id, lambda s: s is not None and s["state"] == state, timeout)

    async def press_and_expect(self, charger_id: str, domain: str, service: str, key: str, action: str,
                               predicate: Callable[[dict[str, Any]], bool] = lambda p: True) -> dict[str, Any]:
        """Call an HA service on one of our entities; return the CALL the simulated charger received."""
        sim = self.sims[charger_id]
        mark = len(sim.received)
        await self.ha.call_service(domain, service, {"entity_id": self.eid(charger_id, key)})
        return await sim.wait_for_call(action, predicate, timeout=WAIT, since=mark)

    async def event(self, charger_id: str, predicate: Callable[[dict[str, Any]], bool], since: int) -> dict[str, Any]:
        return await self.probe.wait_json(f"{BASE}/{charger_id}/event", predicate, timeout=WAIT, since=since)

    async def barrier(self, charger_id: str, soc: float) -> None:
        """New MeterValues -> a new state publish; once HA shows it, HA has handled every earlier state."""
        sim = self.sims[charger_id]
        sim.options.soc = soc
        await sim.send_meter_values()
        await self.wait_value(self.eid(charger_id, "soc"), soc)

    async def eventually(self, check: Callable[[], Awaitable[list[str]]], timeout: float = WAIT) -> list[str]:
        """Re-run ``check`` (it returns problems) until it finds none or time runs out; the last problems."""
        deadline = time.monotonic() + timeout
        while True:
            problems = await check()
            if not problems or time.monotonic() > deadline:
                return problems
            await asyncio.sleep(0.5)

    def mqtt_log_problems(self) -> tuple[list[str], list[str]]:
        """HA's warnings and errors since our service started: (about MQTT or our devices, everything else)."""
        ours, other = [], []
        for r in self.ha.sync.log_records("WARNING", since=self.log_mark):
            line = f"{r['level']} [{r['logger']}] {r['message']}"
            about_us = r["logger"].startswith("homeassistant.components.mqtt") or re.search(r"ocpp|wallbox", r["message"], re.I)
            (ours if about_us else other).append(line)
        return ours, other


async def stop_charger(rig: Rig, charger_id: str) -> None:
    sim = rig.sims[charger_id]
    task = next(t for s, t in rig.service.chargers if s is sim)
    since = len(rig.service.events)
    await sim._connection.close()
    await asyncio.gather(task, return_exceptions=True)
    await rig.service.wait_event(DISCONNECTED, charger_id, since=since)


# --------------------------------------------------------------------------------------------------
# checking one entity against its discovery component


def _value_key(comp: dict[str, Any]) -> str | None:
    template = comp.get("value_template", "")
    m = (re.fullmatch(r"\{\{ value_json\.(\w+) \}\}", template)
         or re.fullmatch(r"\{\{ 'ON' if value_json\.(\w+) else 'OFF' \}\}", template))  # a binary sensor
    return m.group(1) if m else None


def state_matches(comp: dict[str, Any], state: str, value: Any) -> bool:
    """Does HA's state string show the value our state topic carries for this component?"""
    platform = comp["platform"]
    if platform == "button":
        return state == "unknown" or _is_timestamp(state)  # last press (or never)
    if platform == "binary_sensor":
        return state == ("on" if value else "off")
    if value is None:
        return state == "unknown"
    if platform == "switch":
        return state == {"ON": "on", "OFF": "off"}.get(value)
    if comp.get("device_class") == "timestamp":
        return _is_timestamp(state) and datetime.fromisoformat(state) == datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(state) == float(value)
        except ValueError:
            return False
    return state == str(value)


def _is_timestamp(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
        return True
    except ValueError:
        return False


def entity_problems(comp: dict[str, Any], entity_id: str, entry: dict[str, Any] | None, state: dict[str, Any] | None,
                    values: dict[str, Any], device: dict[str, Any]) -> list[str]:
    """Everything about one announced entity that HA does not show the way we announced it."""
    where = f"{entity_id} ({comp['unique_id']})"
    if entry is None:
        return [f"{where}: not in HA's entity registry"]
    problems = []

    def expect(what: str, got: Any, want: Any) -> None:
        if got != want:
            problems.append(f"{where}: {what} is {got!r}, announced {want!r}")

    expect("domain", entity_id.split(".")[0], comp["platform"])
    expect("integration", entry["platform"], "mqtt")
    expect("device", entry["device_id"], device["id"])
    expect("original_device_class", entry["original_device_class"], comp.get("device_class"))
    expect("original_name", entry["original_name"], comp.get("name"))
    expect("entity_category", entry["entity_category"], comp.get("entity_category"))
    expect("original_icon", entry["original_icon"], comp.get("icon"))
    expect("disabled_by", entry["disabled_by"], None)
    if "suggested_display_precision" in comp:
        expect("display precision", (entry.get("options") or {}).get("sensor", {}).get("suggested_display_precision"),
               comp["suggested_display_precision"])
    if state is None:
        return problems + [f"{where}: no state in HA"]
    attrs = state["attributes"]
    expect("unit_of_measurement", attrs.get("unit_of_measurement"), comp.get("unit_of_measurement"))
    expect("state_class", attrs.get("state_class"), comp.get("state_class"))
    expect("device_class attribute", attrs.get("device_class"), comp.get("device_class"))
    expect("friendly_name", attrs.get("friendly_name"), f"{device['name']} {comp['name']}")
    if comp["platform"] == "number":
        expect("min/max/step/mode", (attrs.get("min"), attrs.get("max"), attrs.get("step"), attrs.get("mode")),
               (comp["min"], comp["max"], comp["step"], comp["mode"]))
    key = _value_key(comp)
    value = values.get(key) if key else None
    if state["state"] == "unavailable":
        problems.append(f"{where}: unavailable")
    elif not state_matches(comp, state["state"], value):
        problems.append(f"{where}: state {state['state']!r} does not show {key}={value!r} from our state topic")
    return problems


# --------------------------------------------------------------------------------------------------
# fixtures


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(home_assistant: HomeAssistant, e2e_broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory,
              e2e_report: list[str]) -> AsyncIterator[Rig]:
    t0 = time.monotonic()
    ha = AsyncHomeAssistant(home_assistant)
    probe = MqttProbe(e2e_broker.port, asyncio.get_running_loop())
    await probe.subscribe("#")
    data = Path(tmp_path_factory.mktemp("ocpp-e2e"))
    service = Service(make_config(e2e_broker.port, data, mqtt={"base_topic": BASE, "discovery_prefix": PREFIX}))
    log_mark = home_assistant.log_mark()
    await service.start()
    rig = Rig(ha, service, probe, {}, log_mark, bridge_id(service.config))
    try:
        for cid, options in CHARGERS.items():
            rig.sims[cid] = await service.charger(cid, **options)
            await rig.sims[cid].send_meter_values()  # per-phase, SoC, temperature, ... get announced
            await probe.wait_json(discovery_topic(PREFIX, cid), lambda d: "current_l1" in d["components"], timeout=WAIT)
        wanted = {comp["unique_id"] for _, _, comp in rig.announced()}

        async def registered() -> list[str]:
            await rig.refresh_entity_ids()
            return sorted(wanted - set(rig.entity_ids))

        missing = await rig.eventually(registered, timeout=60)
        assert not missing, f"HA never registered {missing}\n{home_assistant.log_tail(80)}"
        rig.timings.append(("setup (service, 3 chargers, HA registers every entity)", time.monotonic() - t0))
        yield rig
    finally:
        await service.stop()
        # The session's HA and broker outlive this module: drop our retained discovery, state and setpoints.
        ours = {rig.discovery_topic(cid) for cid in (None, *CHARGERS)}
        ours |= {t for t, _, _ in probe.messages if t.startswith(f"{BASE}/") and not t.endswith("/event")}
        for topic in sorted(ours):
            probe.publish(topic, b"", retain=True)
        probe.close()
        total = time.monotonic() - t0
        steps = "; ".join(f"{name} {seconds:.1f} s" for name, seconds in rig.timings)
        e2e_report.append(f"test_ha_ocpp (Home Assistant {home_assistant.version}): {total:.1f} s in all -- {steps}")


@pytest.fixture(autouse=True)
def _timed(request: pytest.FixtureRequest, rig: Rig) -> Any:
    t0 = time.monotonic()
    yield
    rig.timings.append((request.node.name.removeprefix("test_"), time.monotonic() - t0))


# --------------------------------------------------------------------------------------------------
# the scenario


async def test_every_announced_entity_is_in_home_assistant(rig: Rig, e2e_report: list[str]) -> None:
    """Domain, device class, unit, state class, category, icon, name, state and device of every component."""
    devices = {tuple(i): d for d in await rig.ha.device_registry() for i in d["identifiers"]}
    bridge = devices.get(("mqtt", rig.bridge))
    assert bridge is not None, "no 'OCPP bridge' device in HA's device registry"
    assert (bridge["name"], bridge["manufacturer"], bridge["model"], bridge["sw_version"]) == (
        "OCPP bridge", "ocpp_addon", "OCPP 2.0.1 and 1.6J central system", __version__)
    for cid, options in CHARGERS.items():  # BootNotification -> device registry
        device = devices.get(("mqtt", f"ocpp_{cid}"))
        assert device is not None, f"no device for {cid} in HA's device registry"
        assert {k: device[k] for k in ("name", "manufacturer", "model", "sw_version", "serial_number", "via_device_id")} == {
            "name": cid, "manufacturer": options["vendor"], "model": options["model"], "sw_version": options["firmware"],
            "serial_number": options["serial"], "via_device_id": bridge["id"]}
    # a single-phase charger gets no empty L2/L3 entities
    assert "current_l3" in rig.discovery(ACCEPTING)["components"]
    assert "current_l2" not in rig.discovery(REJECTING)["components"]

    async def check() -> list[str]:
        entries = await rig.ha.entity_registry_entries(list(rig.entity_ids.values()))
        states = {s["entity_id"]: s for s in await rig.ha.states()}
        problems = []
        for cid in (None, *CHARGERS):
            payload = rig.discovery(cid)
            device = devices[("mqtt", payload["device"]["identifiers"][0])]
            values = rig.values(cid)
            for comp in payload["components"].values():
                entity_id = rig.entity_ids[comp["unique_id"]]
                problems += entity_problems(comp, entity_id, entries.get(entity_id), states.get(entity_id), values, device)
        return problems

    problems = await rig.eventually(check)
    assert not problems, "HA shows our entities differently from what we announced:\n" + "\n".join(problems)
    counts = {cid: len(rig.discovery(cid)["components"]) for cid in (None, *CHARGERS)}
    e2e_report.append("test_ha_ocpp: checked in HA: " + ", ".join(
        f"{n} entities of {cid or 'the bridge'}" for cid, n in counts.items()))
    assert (await rig.ha.state(rig.eid(ACCEPTING, "status")))["state"] == "Charging"
    ours, _ = rig.mqtt_log_problems()
    assert ours == [], "HA complained about our MQTT discovery:\n" + "\n".join(ours)


# From this release on Home Assistant takes an entity's id from our default_entity_id (the object_id
# option it replaces was deprecated in 2025.10); older releases make it from the device and entity names.
DEFAULT_ENTITY_ID_SINCE = (2025, 10)
# Ids that DOCS.md and docs/dashboard.png show users (the current release, a charger called wallbox-1).
IDS_USERS_SEE = {
    "charging_limit": "number.wallbox_1_charging_limit",
    "charging": "switch.wallbox_1_charging",
    "power": "sensor.wallbox_1_power",
    "energy": "sensor.wallbox_1_energy",
    "soc": "sensor.wallbox_1_soc",
    "reset": "button.wallbox_1_reset",
}


async def test_entity_ids_are_the_ones_users_see(rig: Rig, e2e_report: list[str]) -> None:
    """On releases that honour default_entity_id every entity has the id we announced; older ones differ."""
    announced = {comp["unique_id"]: comp["default_entity_id"] for _, _, comp in rig.announced()}
    differ = sorted(f"{rig.entity_ids[u]} (announced {want})" for u, want in announced.items() if rig.entity_ids[u] != want)
    if version_tuple(rig.ha.version) >= DEFAULT_ENTITY_ID_SINCE:
        assert differ == [], "HA did not use our default_entity_id:\n" + "\n".join(differ)
        assert {key: rig.eid(ACCEPTING, key) for key in IDS_USERS_SEE} == IDS_USERS_SEE
    else:
        e2e_report.append(f"test_ha_ocpp (Home Assistant {rig.ha.version}, ignores default_entity_id): "
                          f"{len(differ)} of {len(announced)} entity ids differ from the announced ones: {', '.join(differ)}")


async def test_charging_limit_accepted(rig: Rig) -> None:
    limit = rig.eid(ACCEPTING, "charging_limit")
    sim = rig.sims[ACCEPTING]
    since, mark = rig.probe.mark(), len(sim.received)
    await rig.ha.call_service("number", "set_value", {"entity_id": limit, "value": 16})
    request = await sim.wait_for_call("SetChargingProfile", timeout=WAIT, since=mark)
    schedule = request["csChargingProfiles"]["chargingSchedule"]
    assert (schedule["chargingRateUnit"], schedule["chargingSchedulePeriod"][0]["limit"]) == ("A", 16)
    await rig.wait_value(limit, 16)
    await rig.wait_value(rig.eid(ACCEPTING, "effective_limit"), 16)  # GetCompositeSchedule read-back
    event = await rig.event(ACCEPTING, lambda d: d.get("command") == "charging_limit" and d.get("limit") == 16, since)
    assert event["status"] == "Accepted"


async def test_charging_limit_accepted_by_a_2_0_1_station(rig: Rig) -> None:
    """The same slider on a 2.0.1 station: SetChargingProfile in 2.0.1 shape, the accepted value in HA."""
    limit = rig.eid(STATION, "charging_limit")
    sim = rig.sims[STATION]
    since, mark = rig.probe.mark(), len(sim.received)
    await rig.ha.call_service("number", "set_value", {"entity_id": limit, "value": 12})
    request = await sim.wait_for_call("SetChargingProfile", timeout=WAIT, since=mark)
    schedule = request["chargingProfile"]["chargingSchedule"][0]
    assert (schedule["chargingRateUnit"], schedule["chargingSchedulePeriod"][0]["limit"]) == ("A", 12)
    assert request["evseId"] == 0  # TxDefaultProfile for the whole station, as for 1.6 connector 0
    await rig.wait_value(limit, 12)
    assert sim.limit_amps == 12  # what HA shows is what the station accepted
    await rig.wait_value(rig.eid(STATION, "effective_limit"), 12)  # GetCompositeSchedule (2.0.1) read-back
    event = await rig.event(STATION, lambda d: d.get("command") == "charging_limit" and d.get("limit") == 12, since)
    assert event["status"] == "Accepted"


async def test_charging_limit_rejected_keeps_the_old_value(rig: Rig) -> None:
    sim = rig.sims[REJECTING]
    limit = rig.eid(REJECTING, "charging_limit")

    async def set_rejected(value: float, before: str) -> None:
        since, mark = rig.probe.mark(), len(sim.received)
        await rig.ha.call_service("number", "set_value", {"entity_id": limit, "value": value})
        await sim.wait_for_call("SetChargingProfile", timeout=WAIT, since=mark)
        event = await rig.event(REJECTING, lambda d: d.get("command") == "charging_limit" and d.get("limit") == value, since)
        assert event["status"] == "Rejected", event
        await rig.barrier(REJECTING, soc=value + 40)
        assert (await rig.ha.state(limit))["state"] == before

    # never accepted anything: stays unknown
    assert (await rig.ha.state(limit))["state"] == "unknown"
    await set_rejected(10, "unknown")
    # an accepted value stays when the next one is rejected
    sim.options.profile_status = "Accepted"
    await rig.ha.call_service("number", "set_value", {"entity_id": limit, "value": 12})
    state = await rig.wait_value(limit, 12)
    sim.options.profile_status = "Rejected"
    await set_rejected(8, state["state"])


async def test_switches_and_buttons_do_what_they_say(rig: Rig) -> None:
    cid, sim = ACCEPTING, rig.sims[ACCEPTING]
    charging, available = rig.eid(cid, "charging"), rig.eid(cid, "available")
    await rig.wait_state(charging, "on")
    tx = sim.transaction_id
    request = await rig.press_and_expect(cid, "switch", "turn_off", "charging", "RemoteStopTransaction")
    assert request["transactionId"] == tx
    await rig.wait_state(charging, "off")
    request = await rig.press_and_expect(cid, "switch", "turn_on", "charging", "RemoteStartTransaction")
    assert request["idTag"] == rig.service.config["charging"]["id_tag"]
    await rig.wait_state(charging, "on")

    await rig.wait_state(available, "on")
    request = await rig.press_and_expect(cid, "switch", "turn_off", "available", "ChangeAvailability")
    assert request["type"] == "Inoperative"
    await rig.wait_state(available, "off")
    request = await rig.press_and_expect(cid, "switch", "turn_on", "available", "ChangeAvailability")
    assert request["type"] == "Operative"
    await rig.wait_state(available, "on")

    request = await rig.press_and_expect(cid, "button", "press", "reset", "Reset")
    assert request["type"] == "Soft"
    request = await rig.press_and_expect(cid, "button", "press", "unlock", "UnlockConnector")
    assert request["connectorId"] == 1
    mark = len(sim.received)
    await rig.press_and_expect(cid, "button", "press", "refresh", "TriggerMessage", lambda p: p["requestedMessage"] == "MeterValues")
    await sim.wait_for_call("TriggerMessage", lambda p: p["requestedMessage"] == "StatusNotification", timeout=WAIT, since=mark)

    limit = rig.eid(cid, "charging_limit")
    await rig.wait_value(limit, 16)
    since = rig.probe.mark()
    await rig.press_and_expect(cid, "button", "press", "clear_limit", "ClearChargingProfile")
    event = await rig.event(cid, lambda d: d.get("command") == "clear_charging_limit", since)
    assert event["status"] == "Accepted"
    await rig.wait_state(limit, "unknown")
    for key in ("reset", "unlock", "refresh", "clear_limit"):  # HA records the press
        assert _is_timestamp((await rig.ha.state(rig.eid(cid, key)))["state"])


async def test_a_stopped_charger_turns_unavailable(rig: Rig) -> None:
    await stop_charger(rig, REJECTING)

    async def check() -> list[str]:
        states = {s["entity_id"]: s["state"] for s in await rig.ha.states()}
        problems = [f"{e}: {states.get(e)!r}, expected 'unavailable'" for e in rig.charger_entities(REJECTING)
                    if states.get(e) != "unavailable"]
        problems += [f"{e}: unavailable although {ACCEPTING} is connected" for e in rig.charger_entities(ACCEPTING)
                     if states.get(e) == "unavailable"]
        return problems

    problems = await rig.eventually(check)
    assert not problems, "\n".join(problems)
    await rig.wait_value(rig.bridge_entity("connected_chargers"), len(CHARGERS) - 1)


async def test_restarting_home_assistant_brings_every_entity_back(rig: Rig) -> None:
    await rig.ha.call_service("number", "set_value", {"entity_id": rig.eid(ACCEPTING, "charging_limit"), "value": 20})
    await rig.wait_value(rig.eid(ACCEPTING, "charging_limit"), 20)
    await rig.wait_value(rig.eid(ACCEPTING, "effective_limit"), 20)  # read back after the limit: settle first
    ours = {rig.entity_ids[comp["unique_id"]] for _, _, comp in rig.announced()}
    before = {s["entity_id"]: s["state"] for s in await rig.ha.states() if s["entity_id"] in ours}
    assert set(before) == ours
    registry_before = dict(rig.entity_ids)

    await rig.ha.restart()

    async def check() -> list[str]:
        now = {s["entity_id"]: s["state"] for s in await rig.ha.states()}
        return [f"{e}: {now.get(e)!r} after the restart, {state!r} before" for e, state in sorted(before.items())
                if now.get(e) != state]

    problems = await rig.eventually(check, timeout=90)
    assert not problems, "\n".join(problems)
    await rig.refresh_entity_ids()
    assert {u: e for u, e in rig.entity_ids.items() if u in registry_before} == registry_before
    devices = {tuple(i): d for d in await rig.ha.device_registry() for i in d["identifiers"]}
    bridge = devices[("mqtt", rig.bridge)]["id"]
    assert all(devices[("mqtt", f"ocpp_{cid}")]["via_device_id"] == bridge for cid in CHARGERS)

    # and the stopped charger comes back to life when it reconnects
    rig.sims[REJECTING] = await rig.service.charger(REJECTING, **CHARGERS[REJECTING])
    await rig.wait_state(rig.eid(REJECTING, "status"), "Charging")
    await rig.wait_value(rig.eid(REJECTING, "charging_limit"), 12)
    await rig.wait_value(rig.bridge_entity("connected_chargers"), 2)


async def test_home_assistant_logged_nothing_about_our_discovery(rig: Rig, e2e_report: list[str]) -> None:
    """Over the whole scenario (restart included): no MQTT warning or error, nothing about our devices."""
    ours, other = rig.mqtt_log_problems()
    for line in other:
        e2e_report.append(f"test_ha_ocpp: HA warned (not about MQTT or our devices): {line.splitlines()[0][:300]}")
    assert ours == [], "HA complained about our MQTT discovery:\n" + "\n".join(ours)
    # Deprecations (e.g. of a discovery option) also become repair issues, shown to users under Settings.
    issues = (await rig.ha.ws("repairs/list_issues"))["issues"]
    about_us = [i for i in issues if i["domain"] == "mqtt" or re.search(r"ocpp|wallbox", json.dumps(i), re.I)]
    for issue in issues:
        if issue not in about_us:
            e2e_report.append(f"test_ha_ocpp (Home Assistant {rig.ha.version}): repair issue not about us: "
                              f"{issue['domain']}/{issue['issue_id']} {issue.get('translation_placeholders') or ''}")
    assert about_us == [], f"HA raised repair issues about MQTT or our devices: {about_us}"
