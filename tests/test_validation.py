"""ocpp_addon.validation must give the ocpp library's verdicts: same accept/reject, same error class.

The oracle is the library itself: ``ocpp.messages._validate_payload`` on a ``Call`` or
``CallResult``, synchronous, exactly what ``ChargePoint`` runs for every message.
"""

from __future__ import annotations

import copy
import decimal
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import fastjsonschema
import ocpp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ocpp.exceptions import (
    FormatViolationError,
    OCPPError,
    ProtocolError,
    TypeConstraintViolationError,
)
from ocpp.messages import Call, CallResult, _validate_payload

from ocpp_addon import validation
from ocpp_addon.validation import known_action, validate_call, validate_result

SCHEMA_DIR = Path(ocpp.__file__).parent / "v16" / "schemas"
TRACES = Path("/work/shared/reference/charger-traces/frames.jsonl")

ACTIONS = sorted(path.stem for path in SCHEMA_DIR.glob("*.json") if not path.stem.endswith("Response"))
KINDS_AND_ACTIONS = [(kind, action) for action in ACTIONS for kind in ("call", "result")]


def library_verdict(kind: str, action: str, payload: Any, version: str = "1.6") -> type[OCPPError] | None:
    """The error class the library raises for this payload, or None if it accepts it."""
    message = Call("1", action, copy.deepcopy(payload)) if kind == "call" else CallResult("1", copy.deepcopy(payload), action)
    try:
        _validate_payload(message, version)
    except OCPPError as exc:
        return type(exc)
    return None


def our_verdict(kind: str, action: str, payload: Any, version: str = "1.6") -> type[OCPPError] | None:
    """Our error class, the same whether the payload counts as parsed JSON (``wire``) or not."""
    before = copy.deepcopy(payload)
    verdicts, causes = [], []
    for wire in (False, True):
        try:
            (validate_call if kind == "call" else validate_result)(action, payload, version, wire=wire)
        except OCPPError as exc:
            verdicts.append(type(exc))
            cause = exc.details["cause"]
            causes.append(cause)
            assert set(exc.details) == {"cause"} and isinstance(cause, str) and len(cause) < 200, exc.details
        else:
            verdicts.append(None)
    assert payload == before, "validation must not change the payload"
    assert verdicts[0] is verdicts[1] and causes[:1] == causes[1:], (verdicts, causes)
    rust = rust_accepts(kind, action, payload, version)
    assert rust is None or rust == (verdicts[0] is None), f"jsonschema-rs says valid={rust}, the library {verdicts[0]}"
    return verdicts[0]


def rust_accepts(kind: str, action: str, payload: Any, version: str = "1.6") -> bool | None:
    """jsonschema-rs's own verdict (the wire fast path), None where it is not used or cannot take the value."""
    schema = validation._compiled.get((version, action, kind == "result")) or validation._compile(version, action, kind == "result")
    if schema.accepts is None:
        return None
    try:
        return schema.accepts(payload)
    except ValueError:
        return None


def assert_same_verdict(kind: str, action: str, payload: Any, version: str = "1.6") -> type[OCPPError] | None:
    expected = library_verdict(kind, action, payload, version)
    assert our_verdict(kind, action, payload, version) is expected, (kind, action, payload)
    return expected


def schema_of(kind: str, action: str) -> dict[str, Any]:
    name = action if kind == "call" else action + "Response"
    return json.loads((SCHEMA_DIR / f"{name}.json").read_text(encoding="utf-8-sig"))


# --- valid payloads from a schema, and mutations of them -----------------------------------

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),  # beyond ~1e27 the library crashes in multipleOf fields
    st.floats(-1e12, 1e12, allow_nan=False),  # NaN/Infinity are not JSON; see the difference tests
    st.text(max_size=8),
    st.sampled_from(["", " 5", "5", "6.25", "Error", "accepted", "Accepted", "A", "2024-01-01T00:00:00Z"]),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from(["a", "value", "idTag"]), inner, max_size=2),
    max_leaves=4,
)


def valid_instances(schema: dict[str, Any], root: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Instances of the keyword subset the 1.6 and 2.0.1 schemas use; format ignored like the library."""
    if "$ref" in schema:
        return valid_instances(root["definitions"][schema["$ref"].rsplit("/", 1)[1]], root)
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        return st.fixed_dictionaries(
            {name: valid_instances(properties[name], root) for name in required},
            optional={name: valid_instances(sub, root) for name, sub in properties.items() if name not in required},
        )
    if kind == "array":
        low = schema.get("minItems", 0)
        return st.lists(valid_instances(schema["items"], root), min_size=low, max_size=min(schema.get("maxItems", 3), max(low, 3)))
    if kind == "string":
        longest = schema.get("maxLength", 50)
        dates = st.datetimes().map(lambda moment: moment.isoformat() + "Z")
        texts = st.one_of(st.text(max_size=min(longest, 30)), st.just("a" * longest))
        return texts | dates if longest >= 32 else texts
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**63)), schema.get("maximum", 2**63))
    if kind == "number":
        if "multipleOf" in schema:
            return st.integers(-100_000, 100_000).map(lambda tenths: tenths / 10)
        low, high = schema.get("minimum", -(10**9)), schema.get("maximum", 10**9)
        return st.one_of(st.integers(int(low), int(high)), st.floats(low, high, allow_nan=False))
    if kind == "boolean":
        return st.booleans()
    return JSON_VALUES  # untyped, e.g. DataTransfer.data


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*prefix, index))
    return found


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    value = copy.copy(value)
    value[path[0]] = replaced(value[path[0]], path[1:], new)
    return value


def at(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


@st.composite
def mutated(draw: st.DrawFn, payload: Any) -> Any:
    """One mutation: drop a key, add a key, wrong type, bad enum, numeric string, too long, float artefact."""
    path = draw(st.sampled_from(paths(payload)))
    node = at(payload, path)
    choices = ["replace"]
    if isinstance(node, dict):
        choices += ["drop", "add"] if node else ["add"]
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        choices += ["numeric string", "float artefact"]
    if isinstance(node, str):
        choices += ["lengthen", "number"]
    choice = draw(st.sampled_from(choices))
    if choice == "drop":
        key = draw(st.sampled_from(sorted(node)))
        return replaced(payload, path, {name: child for name, child in node.items() if name != key})
    if choice == "add":
        key = draw(st.sampled_from(["unexpectedKey", "connector_id", "value", "status"]))
        return replaced(payload, path, {**node, key: draw(JSON_VALUES)})
    if choice == "numeric string":
        return replaced(payload, path, draw(st.sampled_from([str(node), f" {node}"])))
    if choice == "float artefact":
        return replaced(payload, path, draw(st.sampled_from([node * 0.1 * 3, node + 0.05, node + 0.1 * 3, 1.0 * node])))
    if choice == "lengthen":
        return replaced(payload, path, node + "x" * draw(st.sampled_from([1, 20, 500, 5000])))
    if choice == "number":
        return replaced(payload, path, draw(st.sampled_from([1, 1.5, 0])))
    return replaced(payload, path, draw(JSON_VALUES))


def load_traces() -> list[dict[str, Any]]:
    return [json.loads(line) for line in TRACES.read_text(encoding="utf-8").splitlines() if line.strip()]


def trace_cases() -> list[Any]:
    """(kind, action, payload, compliant) for every trace frame that is a CALL or a CALLRESULT.

    Where the posted text was not JSON (``frame`` is null) the README's
    ``reconstructed_frame`` stands in: those are the type and length faults real chargers
    make (meterValue as an object, numbers for strings, an idTag with control bytes).
    """
    cases = []
    for number, record in enumerate(load_traces(), 1):
        frame, origin = record["frame"], ""
        if frame is None:
            frame, origin = record.get("reconstructed_frame"), "-reconstructed"
        if frame is None or frame[0] == 4:
            continue
        kind, payload = ("call", frame[3]) if frame[0] == 2 else ("result", frame[2])
        case = (kind, record["action"], payload, record["compliant"])
        cases.append(pytest.param(*case, id=f"{number}-{record['direction']}-{record['action']}{origin}"))
    return cases


def seeds(kind: str, action: str) -> list[Any]:
    return [case.values[2] for case in trace_cases() if case.values[:2] == (kind, action)]


# --- equivalence ----------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "action", "payload", "compliant"), trace_cases())
def test_real_charger_frames_get_the_library_verdict(kind: str, action: str, payload: Any, compliant: bool) -> None:
    verdict = assert_same_verdict(kind, action, payload)
    if compliant:
        assert verdict is None


def test_traces_hold_both_verdicts() -> None:
    verdicts = {library_verdict(*case.values[:3]) for case in trace_cases()}
    assert verdicts == {None, FormatViolationError, TypeConstraintViolationError}, verdicts


@pytest.mark.parametrize(("kind", "action"), KINDS_AND_ACTIONS)
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_payloads_get_the_library_verdict(kind: str, action: str, data: st.DataObject) -> None:
    schema = schema_of(kind, action)
    generated = valid_instances(schema, schema)
    start = seeds(kind, action)
    payload = data.draw(st.one_of(st.sampled_from(start), generated) if start else generated, label="payload")
    if not start:
        assert library_verdict(kind, action, payload) is None, "the generator must make valid payloads"
    assert_same_verdict(kind, action, payload)
    # Several faults at once: which one counts first decides the OCPP error class.
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        payload = data.draw(mutated(payload), label="mutated")
    assert_same_verdict(kind, action, payload)


@pytest.mark.parametrize(("kind", "action"), KINDS_AND_ACTIONS)
@pytest.mark.parametrize("payload", [[], None, "x", 5, {"unexpectedKey": 1}])
def test_non_objects_and_strangers_get_the_library_verdict(kind: str, action: str, payload: Any) -> None:
    assert assert_same_verdict(kind, action, payload) is not None


# --- cases worth naming -----------------------------------------------------------------------


def test_empty_charge_point_vendor_is_schema_valid() -> None:
    payload = {"chargePointVendor": "", "chargePointModel": "ACChargePoint", "chargePointSerialNumber": "SERIAL-1"}
    validate_call("BootNotification", payload)
    assert library_verdict("call", "BootNotification", payload) is None


def test_unknown_error_code_is_a_format_violation_naming_the_field() -> None:
    payload = {"connectorId": 0, "errorCode": "Error", "status": "Faulted", "timestamp": "2024-08-03T16:16:55Z"}
    with pytest.raises(FormatViolationError) as caught:
        validate_call("StatusNotification", payload)
    assert caught.value.details["cause"].startswith("errorCode:")
    assert "Faulted" not in caught.value.details["cause"]
    assert library_verdict("call", "StatusNotification", payload) is FormatViolationError


def charging_profile(limit: Any) -> dict[str, Any]:
    return {
        "chargingProfileId": 1,
        "stackLevel": 0,
        "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute",
        "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]},
    }


def with_limit(kind: str, action: str, limit: Any) -> dict[str, Any]:
    if action == "SetChargingProfile":
        return {"connectorId": 1, "csChargingProfiles": charging_profile(limit)}
    if action == "RemoteStartTransaction":
        return {"idTag": "TAG-1", "chargingProfile": charging_profile(limit)}
    schedule = charging_profile(limit)["chargingSchedule"]
    return {"status": "Accepted", "connectorId": 1, "chargingSchedule": schedule}


DECIMAL_CASES = [("call", "SetChargingProfile"), ("call", "RemoteStartTransaction"), ("result", "GetCompositeSchedule")]


@pytest.mark.parametrize(("kind", "action"), DECIMAL_CASES)
@pytest.mark.parametrize(
    ("limit", "accepted"),
    [(6.2, True), (0.7, True), (0.3, True), (16, True), (16.0, True), (21.4, True), (0.1, True), (-0.3, True),
     (6.25, False), (4.11, False),
     (0.1 * 3, False), (1.1 + 2.2, False)],
)
def test_limits_must_be_multiples_of_a_tenth_like_the_library(kind: str, action: str, limit: float, accepted: bool) -> None:
    """Decimal arithmetic on the shortest repr: 6.2 passes, 6.25 fails, and so do 0.1*3 and 1.1+2.2,
    whose reprs (0.30000000000000004, 3.3000000000000003) the library rejects too."""
    verdict = assert_same_verdict(kind, action, with_limit(kind, action, limit))
    assert (verdict is None) is accepted
    if not accepted:
        assert verdict is FormatViolationError


@pytest.mark.parametrize(("kind", "action"), DECIMAL_CASES)
@pytest.mark.parametrize(
    ("fault", "error"),
    [("numberPhases", TypeConstraintViolationError), ("chargingRateUnit", ProtocolError)],
)
def test_a_valid_tenth_does_not_mask_a_later_fault(kind: str, action: str, fault: str, error: type[OCPPError]) -> None:
    """0.7 / 0.1 is 6.999999999999999 in floats: a diagnosis in floats would report the limit
    (FormatViolation) before the real fault that comes later in schema order."""
    payload = with_limit(kind, action, 0.7)
    schedule = payload["chargingSchedule"] if kind == "result" else next(
        value["chargingSchedule"] for value in payload.values() if isinstance(value, dict)
    )
    if fault == "numberPhases":
        schedule["chargingSchedulePeriod"][0]["numberPhases"] = "3"
    else:
        del schedule["chargingRateUnit"]
    assert assert_same_verdict(kind, action, payload) is error


def test_first_fault_in_schema_order_decides_the_error_class() -> None:
    """Missing ``status`` plus a string connectorId: jsonschema meets the type error first
    (properties come before required in the schema); fastjsonschema alone would report
    ``required`` (ProtocolError). The diagnosis step exists for exactly this."""
    payload = {"connectorId": "1", "errorCode": "NoError"}
    schema = schema_of("call", "StatusNotification")
    with pytest.raises(fastjsonschema.JsonSchemaValueException) as fast:
        fastjsonschema.compile(schema, use_default=False, use_formats=False)(payload)
    assert fast.value.rule == "required"
    with pytest.raises(TypeConstraintViolationError) as caught:
        validate_call("StatusNotification", payload)
    assert caught.value.details == {"cause": "connectorId: expected integer, got string"}
    assert library_verdict("call", "StatusNotification", payload) is TypeConstraintViolationError


@pytest.mark.parametrize(
    ("action", "payload", "error", "cause"),
    [
        ("StatusNotification", {"connectorId": 1, "errorCode": "NoError"}, ProtocolError, "status: required property is missing"),
        ("Authorize", {"idTag": "TAG-1234567890123456789"}, TypeConstraintViolationError, "idTag: longer than 20 characters"),
        ("Heartbeat", {"at": 1}, FormatViolationError, "payload: unexpected property 'at'"),
        ("Heartbeat", {f"k{n}": n for n in range(50)}, FormatViolationError,
         "payload: unexpected properties 'k0', 'k1', 'k10' and 47 more"),
        ("MeterValues", {"connectorId": 1, "meterValue": {"timestamp": "x", "sampledValue": []}}, TypeConstraintViolationError,
         "meterValue: expected array, got object"),
        ("MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": "x", "sampledValue": [{"value": 5}]}]},
         TypeConstraintViolationError, "meterValue[0].sampledValue[0].value: expected string, got integer"),
        ("StartTransaction", {"connectorId": 1.0, "idTag": "T", "meterStart": 0, "timestamp": "x"}, TypeConstraintViolationError,
         "connectorId: expected integer, got number"),
        ("SetChargingProfile", with_limit("call", "SetChargingProfile", 6.25), FormatViolationError,
         "csChargingProfiles.chargingSchedule.chargingSchedulePeriod[0].limit: 6.25 is not a multiple of 0.1"),
    ],
)
def test_errors_name_the_field_and_the_problem(action: str, payload: Any, error: type[OCPPError], cause: str) -> None:
    with pytest.raises(error) as caught:
        validate_call(action, payload)
    assert caught.value.details == {"cause": cause}
    assert library_verdict("call", action, payload) is error


def test_formats_are_not_checked_like_the_library() -> None:
    payload = {"connectorId": 1, "errorCode": "NoError", "status": "Available", "timestamp": "yesterday"}
    validate_call("StatusNotification", payload)
    assert library_verdict("call", "StatusNotification", payload) is None


def test_security_extension_schemas_use_draft4_and_local_refs() -> None:
    """GetLog declares draft-06 and $id; the library still applies Draft 4 and resolves #/definitions."""
    payload = {"logType": "SecurityLog", "requestId": 1, "log": {"remoteLocation": "ftp://x"}, "retries": 1.0}
    assert assert_same_verdict("call", "GetLog", payload) is TypeConstraintViolationError  # 1.0 is no Draft 4 integer
    payload = {"logType": "AuditLog", "requestId": 1, "log": {"remoteLocation": "ftp://x"}}
    assert assert_same_verdict("call", "GetLog", payload) is FormatViolationError
    assert assert_same_verdict("call", "GetLog", {"logType": "SecurityLog", "requestId": 1, "log": {}}) is ProtocolError


# --- deliberate differences ---------------------------------------------------------------------


@pytest.mark.parametrize("limit", [float("nan"), float("inf"), 1e308])
def test_non_finite_or_huge_limits_are_format_violations_where_the_library_crashes(limit: float) -> None:
    """NaN/Infinity are not JSON and 1e308 overflows; the library leaks TypeError or
    decimal.InvalidOperation, we answer FormatViolation and never a bare ValueError
    (which callers read as "unknown action")."""
    payload = with_limit("call", "SetChargingProfile", limit)
    with pytest.raises(FormatViolationError):
        validate_call("SetChargingProfile", payload)
    with pytest.raises((TypeError, decimal.InvalidOperation)):
        _validate_payload(Call("1", "SetChargingProfile", payload), "1.6")


def test_large_finite_multiples_of_a_tenth_are_accepted_where_the_library_crashes() -> None:
    payload = with_limit("call", "SetChargingProfile", 1e30)
    validate_call("SetChargingProfile", payload)
    with pytest.raises(decimal.InvalidOperation):
        _validate_payload(Call("1", "SetChargingProfile", payload), "1.6")


# --- API ---------------------------------------------------------------------------------------


def test_known_actions_are_the_call_schemas() -> None:
    assert len(ACTIONS) == 39
    assert all(known_action(action) for action in ACTIONS)
    for name in ["BootNotificationResponse", "Foo", "", "../v201/schemas/BootNotificationRequest", "bootnotification"]:
        assert not known_action(name)


@pytest.mark.parametrize("action", ["Foo", "BootNotificationResponse", "../v201/schemas/BootNotificationRequest"])
def test_unknown_actions_raise_value_error(action: str) -> None:
    with pytest.raises(ValueError, match="no OCPP 1.6 schema"):
        validate_call(action, {})
    with pytest.raises(ValueError, match="no OCPP 1.6 schema"):
        validate_result(action, {})


def test_each_schema_is_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[Any] = []
    real_compile = fastjsonschema.compile

    def counting_compile(*args: Any, **kwargs: Any) -> Any:
        compiled.append(args[0]["title"] if "title" in args[0] else args[0].get("$id"))
        return real_compile(*args, **kwargs)

    monkeypatch.setattr(validation, "_compiled", {})
    monkeypatch.setattr(fastjsonschema, "compile", counting_compile)
    for _ in range(3):
        validate_call("Heartbeat", {})
        validate_result("Heartbeat", {"currentTime": "2024-01-01T00:00:00Z"})
        with pytest.raises(ProtocolError):
            validate_call("Authorize", {})
    assert compiled == ["HeartbeatRequest", "HeartbeatResponse", "AuthorizeRequest"]


# --- the jsonschema-rs fast path ----------------------------------------------------------------


def test_a_valid_wire_payload_is_decided_by_jsonschema_rs_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    payload = {"connectorId": 1, "meterValue": [{"timestamp": "2024-01-01T00:00:00Z", "sampledValue": [
        {"value": "12.5", "measurand": "Current.Import", "phase": "L1", "unit": "A"}]}]}
    validate_call("MeterValues", payload)  # compiled and cached
    schema = validation._compiled[("1.6", "MeterValues", False)]
    assert schema.accepts is not None and schema.accepts(payload)

    def compiled_check(value: Any) -> None:
        raise AssertionError("fastjsonschema ran for a payload jsonschema-rs accepts")

    monkeypatch.setattr(validation, "_compiled", {**validation._compiled, ("1.6", "MeterValues", False): replace(schema, check=compiled_check)})
    validate_call("MeterValues", payload, wire=True)
    with pytest.raises(AssertionError):
        validate_call("MeterValues", payload)


def test_a_rejection_by_jsonschema_rs_keeps_the_library_error_and_cause() -> None:
    payload = {"connectorId": "1", "errorCode": "NoError"}
    assert rust_accepts("call", "StatusNotification", payload) is False
    with pytest.raises(TypeConstraintViolationError) as caught:
        validate_call("StatusNotification", payload, wire=True)
    assert caught.value.details == {"cause": "connectorId: expected integer, got string"}


@pytest.mark.parametrize(("kind", "action"), DECIMAL_CASES)
def test_schemas_with_multiple_of_never_use_jsonschema_rs(kind: str, action: str) -> None:
    """It decides multipleOf in floats (6.2 / 0.1 is not whole there); the library in decimals."""
    assert rust_accepts(kind, action, with_limit(kind, action, 6.2)) is None
    assert our_verdict(kind, action, with_limit(kind, action, 6.2)) is None


def test_values_json_cannot_hold_keep_the_library_type_rules() -> None:
    """Our own outgoing payloads are Python objects: ``Decimal("1")`` is no Draft 4 integer for the
    library, while jsonschema-rs takes it for one; so only payloads parsed from JSON use it."""
    payload = {"connectorId": decimal.Decimal("1"), "type": "Operative"}
    assert rust_accepts("call", "ChangeAvailability", payload) is True
    assert library_verdict("call", "ChangeAvailability", payload) is TypeConstraintViolationError
    with pytest.raises(TypeConstraintViolationError):
        validate_call("ChangeAvailability", payload)
