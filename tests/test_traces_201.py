"""Real chargers' OCPP 2.0.1 frames (``charger-traces-201/frames.jsonl``), checked offline.

Pure test, no network and no service: every line parses and carries the corpus fields, and every
frame's ``compliant`` label is re-derived here with the 2.0.1 JSON schemas shipped with the ``ocpp``
library (``ocpp/v201/schemas``, ``<Action>Request.json`` for a CALL, ``<Action>Response.json`` for a
CALLRESULT, the OCPP-J 2.0.1 RPC rules for a CALLERROR) plus an RFC 3339 timezone check on every
``date-time`` field, which the library's own validator does not perform. A ``compliant: true`` frame
must produce no finding; a ``compliant: false`` one must produce exactly the findings its
``why_noncompliant`` states, each named ``path (keyword)``. So a mislabelled frame, or a reason that
names the wrong field or the wrong kind of fault, fails here.

Where no usable frame was posted (a Python repr or a log line), ``frame`` is null and the judgement is
made on ``reconstructed_frame``, as in the 1.6J corpus. ``judge()`` is the single source of the labels:
the corpus was labelled by running it.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import ocpp
import pytest
from jsonschema import Draft4Validator, FormatChecker

CORPUS_DIR = Path(__file__).parent / "data" / "charger-traces-201"
SCHEMA_DIR = Path(ocpp.__file__).parent / "v201" / "schemas"

#: The 1.6J corpus's layout: ``reconstructed_frame`` (before ``provenance``) only on lines that need it.
FIELDS = (
    "vendor", "model", "firmware", "direction", "frame", "raw", "action", "compliant", "why_noncompliant",
    "source", "note", "provenance",
)
FIELDS_RECONSTRUCTED = FIELDS[:-1] + ("reconstructed_frame", "provenance")
DIRECTIONS = {"cp->cs", "cp-result", "cs->cp"}
PROVENANCES = {"issue-thread", "documentation", "test-fixture", "repository-notes", "simulated"}
#: OCPP-J 2.0.1 (part 4, RPC framework) CALLERROR codes; note the 2.0.1 spellings FormatViolation and
#: OccurrenceConstraintViolation (1.6 has FormationViolation and OccurenceConstraintViolation).
RPC_ERROR_CODES_201 = frozenset({
    "FormatViolation", "GenericError", "InternalError", "MessageTypeNotSupported", "NotImplemented",
    "NotSupported", "OccurrenceConstraintViolation", "PropertyConstraintViolation", "ProtocolError",
    "RpcFrameworkError", "SecurityError", "TypeConstraintViolation",
})
#: RFC 3339 date-time, which OCPP 2.0.1 prescribes: a timezone is mandatory, the offset has a colon.
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$", re.IGNORECASE)
#: Placeholders for identifying data (README): serials, id tokens, station ids.
PLACEHOLDER = re.compile(r"^(SERIAL|TAG|CP|VIN|EMAID|MAC)-\d+")
REASON = re.compile(r"(?P<path>[^;]+?) [^;]*?\((?P<keyword>[A-Za-z-]+)\)")


# ---------------------------------------------------------------------------------------------
# The judge
# ---------------------------------------------------------------------------------------------

_FORMATS = FormatChecker(formats=())


@_FORMATS.checks("date-time")
def _is_rfc3339(value: object) -> bool:
    if not isinstance(value, str):
        return True  # the type keyword reports it
    if not RFC3339.match(value):
        return False
    try:
        datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


_VALIDATORS: dict[str, Draft4Validator] = {}


def _validator(name: str) -> Draft4Validator:
    """The library's schema, as the library itself loads it (Draft 4), plus the date-time check."""
    if name not in _VALIDATORS:
        schema = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
        _VALIDATORS[name] = Draft4Validator(schema, format_checker=_FORMATS)
    return _VALIDATORS[name]


def _path(error_path: Any) -> str:
    return "/".join(str(part) for part in error_path) or "(root)"


def judged_frame(entry: dict[str, Any]) -> list[Any]:
    frame = entry["frame"] if entry["frame"] is not None else entry.get("reconstructed_frame")
    assert isinstance(frame, list), "a line needs a frame or a reconstructed_frame"
    return frame


def judge(entry: dict[str, Any]) -> list[str]:
    """Findings for a corpus line, each ``path: message (keyword)``; empty means compliant."""
    frame = judged_frame(entry)
    kind = frame[0] if frame else None
    if kind == 4:
        findings = []
        if len(frame) != 5:
            findings.append(f"(root): CALLERROR has {len(frame)} elements, OCPP-J requires 5 (rpc-frame)")
            return findings
        _, _, code, description, details = frame
        if code not in RPC_ERROR_CODES_201:
            findings.append(f"2: {code!r} is not an OCPP-J 2.0.1 error code (rpc-errorcode)")
        if not isinstance(description, str):
            findings.append(f"3: {description!r} is not a string (rpc-frame)")
        if not isinstance(details, dict):
            findings.append(f"4: {details!r} is not an object (rpc-frame)")
        return findings
    if kind == 2:
        if len(frame) != 4 or not isinstance(frame[2], str):
            return ["(root): CALL must be [2, id, action, payload] (rpc-frame)"]
        name, payload = f"{frame[2]}Request.json", frame[3]
    elif kind == 3:
        if len(frame) != 3:
            return ["(root): CALLRESULT must be [3, id, payload] (rpc-frame)"]
        name, payload = f"{entry['action']}Response.json", frame[2]
    else:
        return [f"0: {kind!r} is not an OCPP-J message type (rpc-frame)"]
    if not isinstance(frame[1], str):
        return [f"1: {frame[1]!r} is not a string message id (rpc-frame)"]
    findings = []
    errors = _validator(name).iter_errors(payload)
    for error in sorted(errors, key=lambda e: (list(map(str, e.absolute_path)), e.validator)):
        if error.validator == "format":
            message = f"{error.instance!r} is not an RFC 3339 date-time with a timezone"
        else:
            message = error.message
        findings.append(f"{_path(error.absolute_path)}: {message} ({error.validator})")
    return findings


def reason_classes(text: str) -> Counter[tuple[str, str]]:
    """The ``(path, keyword)`` pairs a ``why_noncompliant`` (or a list of findings) states."""
    return Counter((m["path"].split(":")[0].strip(), m["keyword"]) for m in REASON.finditer(text))


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------

def _load() -> list[tuple[int, dict[str, Any]]]:
    lines = (CORPUS_DIR / "frames.jsonl").read_text(encoding="utf-8").splitlines()
    return [(number, json.loads(text)) for number, text in enumerate(lines, 1) if text.strip()]


TRACES = _load()


def _id(trace: tuple[int, dict[str, Any]]) -> str:
    number, entry = trace
    vendor = re.sub(r"[^A-Za-z0-9]+", "-", entry["vendor"]).strip("-")[:30]
    return f"{number}-{vendor}-{entry['direction']}-{entry['action']}"


def test_corpus_size_and_mix() -> None:
    assert len(TRACES) == 25
    directions = Counter(entry["direction"] for _, entry in TRACES)
    assert directions == {"cp->cs": 11, "cp-result": 8, "cs->cp": 6}
    real_calls = [e for _, e in TRACES if e["direction"] == "cp->cs" and e["provenance"] != "simulated"]
    assert len(real_calls) == 10
    assert {e["compliant"] for _, e in TRACES} == {True, False}


@pytest.mark.parametrize("trace", TRACES, ids=_id)
def test_line_has_the_fields(trace: tuple[int, dict[str, Any]]) -> None:
    _, entry = trace
    assert tuple(entry) == (FIELDS if entry["frame"] is not None else FIELDS_RECONSTRUCTED)
    assert entry["direction"] in DIRECTIONS
    assert entry["provenance"] in PROVENANCES
    assert entry["vendor"] and entry["source"] and entry["action"] and entry["note"]
    assert isinstance(entry["compliant"], bool)
    assert (entry["why_noncompliant"] is None) == entry["compliant"]
    assert (entry["frame"] is None) != (entry.get("reconstructed_frame") is None)
    frame = judged_frame(entry)
    if entry["direction"] == "cp-result":
        assert frame[0] in (3, 4)
    else:
        assert frame[0] == 2 and frame[2] == entry["action"]
    if entry["frame"] is not None:
        assert json.loads(entry["raw"]) == entry["frame"], "frame must be exactly what raw says"
    else:  # a reconstruction only where no OCPP-J frame was posted (a repr, a log line, a backend's view)
        try:
            posted = json.loads(entry["raw"])
        except ValueError:
            posted = None
        assert not (isinstance(posted, list) and posted and posted[0] in (2, 3, 4))


@pytest.mark.parametrize("trace", TRACES, ids=_id)
def test_identifying_data_is_replaced(trace: tuple[int, dict[str, Any]]) -> None:
    """Serial numbers and id tokens carry placeholders (message ids and timestamps are kept).

    The one exception is the empty idToken of type NoAuthorization (use case C02, a start button):
    it identifies no one."""
    _, entry = trace
    payload = judged_frame(entry)[-1]
    station = payload.get("chargingStation", {}) if isinstance(payload, dict) else {}
    if "serialNumber" in station:
        assert PLACEHOLDER.match(station["serialNumber"])
    token = payload.get("idToken", {}) if isinstance(payload, dict) else {}
    if "idToken" in token and not (token["idToken"] == "" and token.get("type") == "NoAuthorization"):
        assert PLACEHOLDER.match(token["idToken"])


@pytest.mark.parametrize("trace", TRACES, ids=_id)
def test_compliance_label_is_what_the_schemas_say(trace: tuple[int, dict[str, Any]]) -> None:
    _, entry = trace
    findings = judge(entry)
    if entry["compliant"]:
        assert findings == [], f"labelled compliant, but: {findings}"
    else:
        assert findings, "labelled non-compliant, but the 2.0.1 schemas accept it"
        assert reason_classes(entry["why_noncompliant"]) == reason_classes("; ".join(findings)), (
            f"stated {entry['why_noncompliant']!r}, found {findings}")


# ---------------------------------------------------------------------------------------------
# The judge itself: it must catch what a mislabel would hide
# ---------------------------------------------------------------------------------------------

def _first(action: str, direction: str = "cp->cs", compliant: bool = True) -> dict[str, Any]:
    return next(copy.deepcopy(e) for _, e in TRACES
                if e["action"] == action and e["direction"] == direction and e["compliant"] is compliant)


def test_judge_catches_a_missing_required_field() -> None:
    entry = _first("BootNotification")
    del judged_frame(entry)[3]["reason"]
    assert reason_classes("; ".join(judge(entry))) == {("(root)", "required"): 1}


def test_judge_catches_a_bad_enum_and_a_wrong_type() -> None:
    entry = _first("NotifyEvent")
    event = judged_frame(entry)[3]["eventData"][0]
    event["trigger"], event["eventId"] = "Periodically", "2"
    assert reason_classes("; ".join(judge(entry))) == {
        ("eventData/0/eventId", "type"): 1, ("eventData/0/trigger", "enum"): 1}


@pytest.mark.parametrize(("stamp", "ok"), [
    ("2026-03-06T12:29:11Z", True), ("2023-11-09T11:41:29.225Z", True), ("2025-08-21T07:03:33.373+02:00", True),
    ("2025-08-21T07:03:33.373+0000", False), ("2026-03-06T12:29:11", False), ("2026-02-30T12:29:11Z", False),
    ("...", False),
])
def test_timezone_check(stamp: str, ok: bool) -> None:
    assert _is_rfc3339(stamp) is ok


def test_callerror_codes_are_the_201_spellings() -> None:
    entry = _first("SetChargingProfile", "cp-result", compliant=True)
    frame = judged_frame(entry)
    assert frame[0] == 4 and judge(entry) == []
    frame[2] = "FormationViolation"  # the 1.6 spelling
    assert reason_classes("; ".join(judge(entry))) == {("2", "rpc-errorcode"): 1}
