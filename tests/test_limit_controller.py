"""The limit controller with a fake charger: the ordering rules, without sockets or a broker.

The fake answers each SetChargingProfile only when the test says so, so "a new setpoint arrives
while the previous one is on the wire" is a fixed order of steps instead of a race.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ocpp_addon import config as cfg
from ocpp_addon.hub import RESULT, Event, Hub
from ocpp_addon.state import ChargerState
from ocpp_addon.store import Store

TIMEOUT = 5.0


class FakeCharger:
    """The few things the hub and the limit controller use of a ChargePoint."""

    def __init__(self, charger_id: str, state: ChargerState) -> None:
        self.id = charger_id
        self.state = state
        self.ready = asyncio.Event()
        self.configured = asyncio.Event()
        self.ready.set()
        self.configured.set()
        self.calls: asyncio.Queue[tuple[Any, asyncio.Future[dict[str, Any]]]] = asyncio.Queue()

    async def call_status(self, payload: Any) -> dict[str, Any]:
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        await self.calls.put((payload, answer))
        return await answer

    async def refresh_effective_limit(self) -> None:
        return None

    async def next_call(self) -> tuple[Any, asyncio.Future[dict[str, Any]]]:
        return await asyncio.wait_for(self.calls.get(), TIMEOUT)


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.arrived = asyncio.Event()

    def handle(self, event: Event) -> None:
        self.events.append(event)
        self.arrived.set()

    async def result(self, predicate: Any) -> dict[str, Any]:
        async def find() -> dict[str, Any]:
            while True:
                for event in self.events:
                    if event.kind == RESULT and predicate(event.data):
                        return event.data
                self.arrived.clear()
                await self.arrived.wait()
        return await asyncio.wait_for(find(), TIMEOUT)


def _limit(payload: Any) -> float:
    return payload.cs_charging_profiles["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"]


def _rig(tmp_path: Path, **charging: Any) -> tuple[Hub, FakeCharger, Recorder]:
    config = cfg.validate({"data_dir": str(tmp_path), "charging": {"debounce": 0, **charging}})
    hub = Hub(config, Store(tmp_path))
    recorder = Recorder()
    hub.add_sink(recorder)
    state = hub.state_for("cp-1")
    state.capabilities = {"smart_charging": True, "allowed_units": ["A", "W"], "max_stack_level": 8}
    fake = FakeCharger("cp-1", state)
    hub.connected["cp-1"] = fake  # type: ignore[assignment]
    return hub, fake, recorder


async def test_a_setpoint_that_arrives_while_one_is_on_the_wire_is_sent_after_it(tmp_path: Path) -> None:
    hub, fake, recorder = _rig(tmp_path)
    hub.set_charging_limit("cp-1", 10)
    first, answer = await fake.next_call()
    assert _limit(first) == 10
    hub.set_charging_limit("cp-1", 12)  # while 10 waits for its answer
    answer.set_result({"status": "Accepted"})
    second, answer = await fake.next_call()
    assert _limit(second) == 12  # not overwritten by the answer to 10
    answer.set_result({"status": "Accepted"})
    await recorder.result(lambda d: d.get("status") == "Accepted" and d.get("limit") == 12)
    state = hub.states["cp-1"]
    assert (state.requested_limit, state.charging_limit) == (12, 12)
    await hub.close()


async def test_a_charger_without_smart_charging_gets_no_write_and_a_reason(tmp_path: Path) -> None:
    hub, fake, recorder = _rig(tmp_path)
    fake.state.capabilities = {"smart_charging": False, "feature_profiles": ["Core"]}
    hub.set_charging_limit("cp-1", 16)
    result = await recorder.result(lambda d: d.get("command") == "charging_limit" and d.get("status") != "Queued")
    assert result["status"] == "NotSupported" and "SmartCharging" in result["reason"]
    assert fake.calls.empty()
    assert hub.states["cp-1"].requested_limit is None  # a final answer: not sent again on reconnect
    await hub.close()


async def test_a_refusal_leaves_the_accepted_limit_and_the_slider_as_they_were(tmp_path: Path) -> None:
    hub, fake, recorder = _rig(tmp_path, fallback=False)
    hub.set_charging_limit("cp-1", 10)
    _, answer = await fake.next_call()
    answer.set_result({"status": "Accepted"})
    await recorder.result(lambda d: d.get("status") == "Accepted")
    hub.set_charging_limit("cp-1", 20)
    _, answer = await fake.next_call()
    answer.set_result({"status": "Rejected"})
    await recorder.result(lambda d: d.get("status") == "Rejected")
    state = hub.states["cp-1"]
    assert state.charging_limit == 10 and state.applied is not None and state.applied.value == 10
    assert state.requested_limit == 10  # settled: a reconnect does not send the refused 20 again
    await hub.close()
