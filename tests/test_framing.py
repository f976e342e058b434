"""OCPP-J framing rules, one test per rule, without a socket (ocpp_addon/framing.py)."""

from __future__ import annotations

import json

import pytest

from ocpp_addon.framing import Call, Drop, Error, Reject, Result, call_error, parse


def test_a_call_is_four_elements_with_an_action_and_an_object() -> None:
    assert parse('[2, "19223201", "Heartbeat", {}]') == Call("19223201", "Heartbeat", {})
    pretty = '[\n  2,\n  "a:1",\n  "BootNotification",\n  {"chargePointVendor": ""}\n]'  # pretty-printed, seen in the field
    assert parse(pretty) == Call("a:1", "BootNotification", {"chargePointVendor": ""})


@pytest.mark.parametrize("frame", [
    '[2, "id-1", "Heartbeat"]', '[2, "id-1", "Heartbeat", []]', '[2, "id-1", 7, {}]', '[2, "id-1", "Heartbeat", {}, {}]',
])
def test_a_malformed_call_with_a_readable_id_is_answered_formation_violation(frame: str) -> None:
    answer = parse(frame)
    assert isinstance(answer, Reject) and answer.unique_id == "id-1" and answer.code == "FormationViolation"


@pytest.mark.parametrize("frame", ['[2, "", "Heartbeat", {}]', '[2, 17, "Heartbeat", {}]', f'[2, "{"x" * 37}", "Heartbeat", {{}}]', "[2]"])
def test_without_a_usable_id_nothing_can_be_answered(frame: str) -> None:
    assert isinstance(parse(frame), Drop)


def test_an_unknown_message_type_is_refused_by_id() -> None:
    answer = parse('[5, "id-2", "Heartbeat", {}]')
    assert isinstance(answer, Reject) and "unknown MessageTypeId 5" in answer.cause


def test_a_number_json_cannot_carry_is_a_type_constraint_violation_named_by_id() -> None:
    answer = parse('[2, "id-3", "MeterValues", {"connectorId": 1e400}]')
    assert isinstance(answer, Reject) and (answer.unique_id, answer.code) == ("id-3", "TypeConstraintViolation")


@pytest.mark.parametrize("frame", ["not json", "{}", "[]", '"text"', "[" * 100000])
def test_what_is_not_an_ocpp_j_array_is_dropped(frame: str) -> None:
    assert isinstance(parse(frame), Drop)


def test_responses_are_parsed_and_never_answered() -> None:
    assert parse('[3, "id-4", {"status": "Accepted"}]') == Result("id-4", {"status": "Accepted"})
    assert parse('[4, "id-5", "NotSupported", "no", {"a": 1}]') == Error("id-5", "NotSupported", "no", {"a": 1})
    assert parse('[4, "id-5", "NotSupported", "no"]') == Error("id-5", "NotSupported", "no", {})
    for bad in ('[3, "id-6"]', '[3, "id-6", []]', '[4, "id-7", 5, "x", {}]', '[3, "", {}]'):
        assert isinstance(parse(bad), Drop), bad


def test_call_errors_use_the_1_6_spelling_of_the_codes() -> None:
    assert json.loads(call_error("id-8", "FormatViolation", "bad", {"cause": "x"})) == [4, "id-8", "FormationViolation", "bad", {"cause": "x"}]
    assert json.loads(call_error("id-9", "OccurrenceConstraintViolation"))[2] == "OccurenceConstraintViolation"
