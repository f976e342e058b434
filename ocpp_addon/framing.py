"""OCPP-J framing (OCPP 1.6 JSON, section 4): one text frame -> what it is, as data. Pure.

The connection class only acts on the answer (route a CALL, queue a response, send a
CALLERROR, log a drop), so every framing rule here is unit-tested without a socket, the way
the ``websockets`` library keeps its protocol a pure state machine under thin I/O adapters.

Rules (4.1.3-4.2.3): a frame is a JSON array ``[MessageTypeId, UniqueId, ...]``; the UniqueId
is a string of at most 36 characters; a CALL is ``[2, id, Action, {payload}]``, a CALLRESULT
``[3, id, {payload}]``, a CALLERROR ``[4, id, code, description, {details}]``. A malformed
frame whose id can be read is answered with a CALLERROR (FormationViolation, the 1.6 spelling;
TypeConstraintViolation for a number JSON cannot carry); one without a usable id cannot be
answered and is dropped. Responses are never answered.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from . import strict_json
from .strict_json import NonFiniteNumber
from .topics import printable

CALL, CALLRESULT, CALLERROR = 2, 3, 4
MAX_ID_LENGTH = 36
# What OCPP 1.6 calls two codes the ocpp library spells the 2.0 way.
WIRE_CODES = {"FormatViolation": "FormationViolation", "OccurrenceConstraintViolation": "OccurenceConstraintViolation"}
_CALL_ID_RE = re.compile(r'\A\s*\[\s*2\s*,\s*"([^"\\]{1,36})"')


@dataclass(slots=True)  # not frozen: made for every frame a charger sends, and frozen __init__ costs ~1 µs
class Call:
    unique_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Result:
    unique_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Error:
    unique_id: str
    code: str
    description: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reject:
    """Malformed, with a readable id: answer with a CALLERROR of ``code`` saying ``cause``."""

    unique_id: str
    cause: str
    code: str = "FormationViolation"


@dataclass(frozen=True, slots=True)
class Drop:
    """Cannot be answered (no usable id, or a malformed response): log ``why`` and move on."""

    why: str


Frame = Call | Result | Error | Reject | Drop


def usable_id(value: Any) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH else None


def call_id(raw: str) -> str | None:
    """The id of a CALL whose JSON could not be read, so the CALLERROR can still name it."""
    match = _CALL_ID_RE.match(raw)
    return match.group(1) if match else None


def parse(raw: str) -> Frame:
    """What one received text frame is. Never raises."""
    try:
        msg = strict_json.loads(raw)
    except NonFiniteNumber as err:  # e.g. "connectorId": 1e400
        unique_id = call_id(raw)
        cause = f"a number JSON cannot carry: {err}"
        return Reject(unique_id, cause, "TypeConstraintViolation") if unique_id else Drop(f"malformed frame without a usable message id ({cause})")
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return Drop("a frame that is not JSON")
    if not isinstance(msg, list) or not msg:
        return Drop("a frame that is not an OCPP-J array")
    type_id = msg[0]
    unique_id = usable_id(msg[1]) if len(msg) > 1 else None
    if type_id in (CALLRESULT, CALLERROR):
        return _response(msg, unique_id)
    if type_id == CALL:
        if len(msg) == 4 and unique_id and isinstance(msg[2], str) and isinstance(msg[3], dict):
            return Call(unique_id, msg[2], msg[3])
        cause = 'a CALL must be [2, "<id>", "<Action>", {payload}]'
    else:
        cause = f"unknown MessageTypeId {printable(type_id, 20)} (2 CALL, 3 CALLRESULT, 4 CALLERROR)"
    return Reject(unique_id, cause) if unique_id else Drop(f"malformed frame without a usable message id ({cause})")


def _response(msg: list[Any], unique_id: str | None) -> Frame:
    if msg[0] == CALLRESULT and len(msg) == 3 and unique_id and isinstance(msg[2], dict):
        return Result(unique_id, msg[2])
    if msg[0] == CALLERROR and len(msg) in (4, 5) and unique_id and isinstance(msg[2], str):
        details = msg[4] if len(msg) == 5 and isinstance(msg[4], dict) else {}
        return Error(unique_id, msg[2], str(msg[3]), details)
    return Drop("a malformed response")


def call_error(unique_id: str, code: str, description: str = "", details: dict[str, Any] | None = None,
               version: str = "1.6") -> str:
    """A CALLERROR frame, with the code spelled as ``version`` spells it (1.6: FormationViolation)."""
    wire = WIRE_CODES.get(code, code) if version == "1.6" else code
    return json.dumps([CALLERROR, unique_id, wire, description, details or {}], separators=(",", ":"))
