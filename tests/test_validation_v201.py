"""ocpp_addon.validation for OCPP 2.0.1 gives the ocpp library's verdicts, as it does for 1.6.

The oracle is the library: ``ocpp.messages._validate_payload`` with version "2.0.1". Payloads are
generated from each 2.0.1 schema (valid ones, checked against the oracle), then mutated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ocpp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ocpp.exceptions import OCPPError, ProtocolError

from ocpp_addon.simulator import SimOptions
from ocpp_addon.simulator_v201 import SimulatedStation
from ocpp_addon.validation import known_action, validate_call
from tests import test_validation as v16
from tests.test_validation import mutated, valid_instances

SCHEMA_DIR = Path(ocpp.__file__).parent / "v201" / "schemas"
ACTIONS = sorted(path.stem.removesuffix("Request") for path in SCHEMA_DIR.glob("*Request.json"))
KINDS_AND_ACTIONS = [(kind, action) for action in ACTIONS for kind in ("call", "result")]


def library_verdict(kind: str, action: str, payload: Any) -> type[OCPPError] | None:
    return v16.library_verdict(kind, action, payload, "2.0.1")


def our_verdict(kind: str, action: str, payload: Any) -> type[OCPPError] | None:
    return v16.our_verdict(kind, action, payload, "2.0.1")


def assert_same_verdict(kind: str, action: str, payload: Any) -> type[OCPPError] | None:
    return v16.assert_same_verdict(kind, action, payload, "2.0.1")


def schema_of(kind: str, action: str) -> dict[str, Any]:
    name = action + ("Request" if kind == "call" else "Response")
    return json.loads((SCHEMA_DIR / f"{name}.json").read_text(encoding="utf-8-sig"))


def test_every_2_0_1_action_is_known_and_1_6_ones_are_not() -> None:
    assert len(ACTIONS) == 64
    assert all(known_action(action, "2.0.1") for action in ACTIONS)
    assert not known_action("StartTransaction", "2.0.1") and known_action("StartTransaction")
    assert not known_action("TransactionEvent") and known_action("TransactionEvent", "2.0.1")
    with pytest.raises(ValueError):
        validate_call("StartTransaction", {}, version="2.0.1")
    with pytest.raises(ValueError):
        validate_call("Heartbeat", {}, version="1.5")


@pytest.mark.parametrize(("kind", "action"), KINDS_AND_ACTIONS)
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_payloads_get_the_library_verdict(kind: str, action: str, data: st.DataObject) -> None:
    schema = schema_of(kind, action)
    payload = data.draw(valid_instances(schema, schema), label="payload")
    assert library_verdict(kind, action, payload) is None, "the generator must make valid payloads"
    assert our_verdict(kind, action, payload) is None
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        payload = data.draw(mutated(payload), label="mutated")
    assert_same_verdict(kind, action, payload)


@pytest.mark.parametrize(("kind", "action"), KINDS_AND_ACTIONS)
@pytest.mark.parametrize("payload", [[], None, "x", 5, {"unexpectedKey": 1}])
def test_non_objects_and_strangers_get_the_library_verdict(kind: str, action: str, payload: Any) -> None:
    assert_same_verdict(kind, action, payload)


def test_a_transaction_event_without_its_transaction_info_is_a_protocol_error() -> None:
    from ocpp.charge_point import snake_to_camel_case

    station = SimulatedStation("s", None, SimOptions())
    payload = snake_to_camel_case({
        "event_type": "Updated", "timestamp": "2026-12-07T12:00:00Z", "trigger_reason": "MeterValuePeriodic", "seq_no": 3,
        "transaction_info": {"transaction_id": "tx-1"},
        "meter_value": [{"timestamp": "2026-12-07T12:00:00Z", "sampled_value": station.sampled_values("Sample.Periodic")}],
    })
    assert assert_same_verdict("call", "TransactionEvent", payload) is None
    del payload["transactionInfo"]
    assert assert_same_verdict("call", "TransactionEvent", payload) is ProtocolError


CORPUS = Path(__file__).parent / "data" / "charger-traces-201" / "frames.jsonl"


def corpus_cases() -> list[Any]:
    cases = []
    for number, line in enumerate(CORPUS.read_text(encoding="utf-8").splitlines(), 1):
        record = json.loads(line)
        frame = record["frame"] or record.get("reconstructed_frame")
        if frame and frame[0] in (2, 3):
            kind, payload = ("call", frame[3]) if frame[0] == 2 else ("result", frame[2])
            cases.append(pytest.param(kind, record["action"], payload, id=f"{number}-{record['vendor']}-{record['action']}"))
    return cases


@pytest.mark.parametrize(("kind", "action", "payload"), corpus_cases())
def test_real_stations_frames_get_the_library_verdict(kind: str, action: str, payload: Any) -> None:
    assert_same_verdict(kind, action, payload)
