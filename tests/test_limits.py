"""Pure parts of the limit controller: what a charger's readings prove, planning, conversion for display."""

from __future__ import annotations

import pytest

from ocpp_addon import config as cfg
from ocpp_addon.limits import Applied, Electrical, Supply, electrical, learn_supply, shown, to_wire
from ocpp_addon.profiles import SetpointError
from ocpp_addon.state import ChargerState

CHARGING = cfg.validate({})["charging"]
AC3 = Electrical(230.0, 3, False, 6.0, "config")
DC = Electrical(400.0, 1, True, 0.0, "measured")


def test_the_readings_prove_dc_single_phase_three_phases_or_nothing() -> None:
    assert learn_supply({"power": 7000, "voltage": 400, "current": 17.5}) == Supply(True, 1, 400)
    assert learn_supply({"power": 3680, "voltage": 230, "current": 16}) == Supply(False, 1, 230)
    assert learn_supply({"power": 11040, "voltage": 230, "current": 16}) == Supply(False, 3, 230)
    # one unlabelled 400 V line-to-line voltage on a three-phase AC charger: not DC
    assert learn_supply({"power": 11085, "voltage": 400, "current": 16}) == Supply(False, 3, 230.9)
    assert learn_supply({"voltage": 400}) is None  # idle: unproven, never guessed DC
    assert learn_supply({"power": 0, "voltage": 400, "current": 0}) is None
    assert learn_supply({"power": 6000, "voltage": 230, "current": 16}) is None  # unbalanced: labels decide


def test_planning_trusts_the_override_then_the_readings_then_the_config() -> None:
    state = ChargerState(id="cp")
    assert electrical(state, CHARGING) == Electrical(230.0, 3, False, 6.0, "config")
    state.readings = {"voltage_l1": 231.0, "voltage": 231.0, "current_l1": 10.0}
    assert (electrical(state, CHARGING).phases, electrical(state, CHARGING).voltage) == (1, 231.0)
    state.readings = {"voltage": 400.0}
    assert not electrical(state, CHARGING).dc and electrical(state, CHARGING).voltage == 230  # unproven 400 V
    state.supply = Supply(True, 1, 400.0)
    assert electrical(state, CHARGING) == Electrical(400.0, 1, True, 0.0, "measured")
    overridden = {**CHARGING, "chargers": [{"id": "cp", "dc": False, "phases": 3, "voltage": 240}]}
    assert electrical(state, overridden) == Electrical(240.0, 3, False, 6.0, "override")
    with_min = {**CHARGING, "chargers": [{"id": "cp", "min_current": 8}]}
    assert electrical(ChargerState(id="cp"), with_min).min_current == 8


def test_to_wire_pauses_below_the_minimum_on_ac_only_and_rounds_down() -> None:
    assert to_wire(7400, "W", "A", AC3) == (10.7, None)  # 10.724... A rounded down
    assert to_wire(3, "A", "A", AC3) == (0.0, "paused: below 6 A")
    assert to_wire(4000, "W", "A", AC3) == (0.0, "paused: below 6 A")  # 5.8 A
    assert to_wire(4140, "W", "W", AC3) == (4140, None)  # exactly 6 A
    assert to_wire(5, "A", "A", DC) == (5, None)
    assert to_wire(7000, "W", "A", DC) == (17.5, None)
    with pytest.raises(SetpointError, match="minimum"):
        to_wire(3, "A", "A", AC3, below_min="reject")


def test_the_slider_shows_what_was_sent_converted_the_same_way() -> None:
    assert shown(Applied(10.7, "A", 230, 3), "A") == 10.7
    assert shown(Applied(10.7, "A", 230, 3), "W") == 7383.0
    assert shown(Applied(0.0, "A", 230, 3, "paused: below 6 A"), "A") == 0
    assert shown(None, "A") is None
