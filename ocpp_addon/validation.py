"""OCPP payload validation (1.6 and 2.0.1): the ocpp library's verdicts at a compiled validator's speed.

Payloads read from a charger's JSON (``wire=True``) are first checked by jsonschema-rs (Rust,
~2-3 µs for a MeterValues with nine sampled values, against ~22 µs for the fastjsonschema code
below): when it accepts, that is the verdict. Anything else, a rejection, a value it cannot
take, or a schema with ``multipleOf`` (decided in decimals, below) goes the way described
next, so an error's class and cause never depend on it. Only for JSON: it reads a tuple as
an array and ``Decimal("1")`` as an integer, the library does not; our own outgoing payloads
(dataclasses turned into dicts) therefore skip it. tests/test_validation.py checks that its
verdict equals the library's on generated valid and broken payloads of every schema.

The ``ocpp`` library checks every message with a jsonschema ``Draft4Validator``
(``ocpp.messages._validate_payload``), about 230 µs for a MeterValues with eight
sampled values. Here the same schema files (``ocpp/v16/schemas/<Action>.json`` for
CALLs, ``<Action>Response.json`` for CALLRESULTs) are compiled with fastjsonschema,
lazily and once per schema, and that compiled code alone decides accept/reject.

Equal strictness, kept on purpose:
- draft-04 semantics for every schema, also the security-extension ones that declare
  draft-06, because the library forces ``Draft4Validator`` (so ``1.0`` is not an integer);
- ``format`` is not checked (date-time, uri): the library passes no format checker;
- ``multipleOf: 0.1`` (charging-schedule limits) is decided in decimal arithmetic on the
  number's shortest repr, as the library's ``parse_float=Decimal`` does for
  SetChargingProfile, RemoteStartTransaction and GetCompositeScheduleResponse:
  6.2 passes, 6.25 and the float artefact ``0.1 * 3`` (0.30000000000000004) fail.

Equal error classes: the library maps the keyword of the *first* error jsonschema meets
(see ``_ERROR_CLASSES``). jsonschema walks keywords in schema order, depth first;
fastjsonschema checks ``required`` before ``properties``, so for a payload with two faults
it can meet a different one first (missing ``status`` and ``connectorId: "1"``: the library
answers TypeConstraintViolation, fastjsonschema's first failure is ``required``). So once
the compiled check has rejected a payload, the first error is looked up with a Draft-4
jsonschema validator over the same schema. That costs the library's price, but only for
frames that are invalid anyway.

Deliberate differences from the library:
- ``details`` is ``{"cause": "<field path>: <problem>"}``; the library also puts the whole
  message (``ocpp_message``) and, for most keywords, the whole payload into it.
- Non-finite or astronomically large numbers in a ``multipleOf`` field (NaN, ±Infinity,
  beyond ~1e307) raise FormatViolationError; the library crashes with TypeError or
  ``decimal.InvalidOperation``. Finite values from ~1e27 up to there are accepted (they
  are multiples of 0.1), where the library crashes with ``decimal.InvalidOperation``.
- An action without a schema in that version raises ``ValueError`` instead of the library's
  NotImplementedError, so the caller can choose NotSupported or NotImplemented.

OCPP 2.0.1 (``version="2.0.1"``) reads ``ocpp/v201/schemas/<Action>Request.json`` and
``<Action>Response.json`` the same way: Draft 4 forced as the library does, no Decimal floats
(the library uses them for three 1.6 schemas only, and no 2.0.1 schema has ``multipleOf``).
"""

from __future__ import annotations

import decimal
import json
import logging
import reprlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema_rs
import ocpp
from jsonschema import Draft4Validator
from jsonschema.exceptions import ValidationError as SchemaValidationError
from ocpp.exceptions import (
    FormatViolationError,
    OCPPError,
    ProtocolError,
    TypeConstraintViolationError,
)

__all__ = ["known_action", "validate_call", "validate_result"]

_LOGGER = logging.getLogger(__name__)

VERSIONS = ("1.6", "2.0.1")

#: version -> (schema directory, suffix of a CALL's schema file)
_SCHEMA_DIRS: dict[str, tuple[Path, str]] = {
    "1.6": (Path(ocpp.__file__).parent / "v16" / "schemas", ""),
    "2.0.1": (Path(ocpp.__file__).parent / "v201" / "schemas", "Request"),
}


def _actions(directory: Path, call_suffix: str) -> frozenset[str]:
    stems = [path.stem for path in directory.glob("*.json") if not path.stem.endswith("Response")]
    return frozenset(stem.removesuffix(call_suffix) for stem in stems if stem.endswith(call_suffix))


#: Actions with a CALL schema, per version; only these names ever reach the file system.
_ACTIONS: dict[str, frozenset[str]] = {version: _actions(*where) for version, where in _SCHEMA_DIRS.items()}

#: Schemas the library validates with floats parsed as Decimal (see module docstring).
_DECIMAL_SCHEMAS = frozenset({"SetChargingProfile", "RemoteStartTransaction", "GetCompositeScheduleResponse"})

#: jsonschema keyword of the first error -> OCPP error class, as in ``_validate_payload``.
#: Every other keyword (enum, multipleOf, minItems, ...) is a FormatViolationError.
_ERROR_CLASSES: dict[str, type[OCPPError]] = {
    "type": TypeConstraintViolationError,
    "maxLength": TypeConstraintViolationError,
    "additionalProperties": FormatViolationError,
    "required": ProtocolError,
}

_DRAFT4 = "http://json-schema.org/draft-04/schema#"

_short = reprlib.Repr()
_short.maxstring = 40
_short.maxother = 40

_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (decimal.Decimal, "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
    (type(None), "null"),
)


@dataclass(frozen=True)
class _Schema:
    """One schema, compiled for the fast path and kept as Draft 4 for diagnosis."""

    name: str
    #: jsonschema-rs ``is_valid``; None where it cannot decide like the library (multipleOf).
    accepts: Callable[[Any], bool] | None
    check: Callable[[Any], Any]
    reference: Draft4Validator
    decimal_floats: bool


#: (version, action, is a CALLRESULT) -> schema. Keyed by action, not file name, so that
#: validate_call("BootNotificationResponse") cannot find the result schema.
_compiled: dict[tuple[str, str, bool], _Schema] = {}


def known_action(action: str, version: str = "1.6") -> bool:
    """Return True if OCPP ``version`` (1.6 with the security extension, or 2.0.1) defines ``action``."""
    return action in _ACTIONS[version]


def validate_call(action: str, payload: Any, version: str = "1.6", wire: bool = False) -> None:
    """Validate the payload of a CALL for ``action``, in either direction.

    ``wire``: the payload was parsed from JSON text (only dict, list, str, int, float, bool,
    None in it), so the Rust validator may accept it. Raises an ``ocpp.exceptions.OCPPError`` subclass (ProtocolError,
    TypeConstraintViolationError or FormatViolationError) if the payload breaks the
    schema, and ``ValueError`` if ``action`` has no schema in ``version`` (``known_action``
    is False): whether that is NotSupported or NotImplemented is the caller's call.
    """
    _validate(version, action, False, payload, wire)


def validate_result(action: str, payload: Any, version: str = "1.6", wire: bool = False) -> None:
    """Validate the payload of the CALLRESULT answering a CALL for ``action``.

    Raises like ``validate_call``.
    """
    _validate(version, action, True, payload, wire)


def _validate(version: str, action: str, result: bool, payload: Any, wire: bool = False) -> None:
    schema = _compiled.get((version, action, result)) or _compile(version, action, result)
    if wire and schema.accepts is not None:
        try:
            if schema.accepts(payload):
                return
        except ValueError:  # a value it cannot convert (not JSON): the checks below decide
            pass
    try:
        schema.check(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise _diagnose(schema, payload, exc) from None
    except (ArithmeticError, ValueError):
        # multipleOf's decimal arithmetic on NaN, Infinity or ~1e308. Never let a
        # ValueError out: the caller reads ValueError as "unknown action".
        raise FormatViolationError(
            details={"cause": f"{schema.name}: a number is not finite or too large"}
        ) from None


def _compile(version: str, action: str, result: bool) -> _Schema:
    if version not in _SCHEMA_DIRS:
        raise ValueError(f"no OCPP version {version!r} (known: {', '.join(VERSIONS)})")
    if action not in _ACTIONS[version]:
        raise ValueError(f"no OCPP {version} schema for action {action!r}")
    directory, call_suffix = _SCHEMA_DIRS[version]
    schema_name = action + ("Response" if result else call_suffix)
    text = (directory / f"{schema_name}.json").read_text(encoding="utf-8-sig")
    definition = json.loads(text)
    # Forcing draft-04 is what the library does; "$id" only names the schema here
    # (every $ref is local) and must not become a base URI for fastjsonschema.
    definition["$schema"] = _DRAFT4
    definition.pop("$id", None)
    decimal_floats = version == "1.6" and schema_name in _DECIMAL_SCHEMAS
    rust = None if "multipleOf" in text else jsonschema_rs.Draft4Validator(definition, validate_formats=False)
    schema = _Schema(
        name=schema_name,
        accepts=None if rust is None else rust.is_valid,
        check=fastjsonschema.compile(definition, use_default=False, use_formats=False),
        reference=Draft4Validator(
            json.loads(text, parse_float=decimal.Decimal) if decimal_floats else json.loads(text)
        ),
        decimal_floats=decimal_floats,
    )
    _compiled[(version, action, result)] = schema
    return schema


def _diagnose(schema: _Schema, payload: Any, exc: fastjsonschema.JsonSchemaValueException) -> OCPPError:
    """Build the error the library would raise for a payload the compiled check rejected."""
    instance = payload
    try:
        if schema.decimal_floats:
            instance = json.loads(json.dumps(payload), parse_float=decimal.Decimal)
        error = next(schema.reference.iter_errors(instance), None)
    except decimal.InvalidOperation:
        return FormatViolationError(details={"cause": f"{schema.name}: a number is too large"})
    if error is None:
        # Both validators read the same schema, so this means they disagree; the
        # compiled check stays authoritative, with its own first failure.
        _LOGGER.warning("Validators disagree on a %s payload: only fastjsonschema rejects it (%s)", schema.name, exc.rule)
        keyword = exc.rule or ""
        return _ERROR_CLASSES.get(keyword, FormatViolationError)(
            details={"cause": f"{schema.name}: fails {keyword}"}
        )
    return _ERROR_CLASSES.get(str(error.validator), FormatViolationError)(
        details={"cause": _cause(error)}
    )


def _cause(error: SchemaValidationError) -> str:
    """Say which field breaks which rule, echoing at most a short value, never the payload."""
    path = _path(error.absolute_path)
    keyword, rule, value = error.validator, error.validator_value, error.instance
    if keyword == "required" and isinstance(value, dict):
        missing = next(name for name in rule if name not in value)
        return f"{_path([*error.absolute_path, missing])}: required property is missing"
    if keyword == "additionalProperties" and isinstance(value, dict):
        allowed: Collection[str] = error.schema.get("properties", {})
        extra = sorted(name for name in value if name not in allowed)
        listed = ", ".join(map(_show, extra[:3])) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        return f"{path}: unexpected propert{'y' if len(extra) == 1 else 'ies'} {listed}"
    if keyword == "type":
        return f"{path}: expected {rule}, got {_json_type(value)}"
    if keyword == "maxLength":
        return f"{path}: longer than {rule} characters"
    if keyword == "enum":
        return f"{path}: {_show(value)} is not an allowed value"
    if keyword == "multipleOf":
        return f"{path}: {_show(value)} is not a multiple of {rule}"
    if keyword == "minItems":
        return f"{path}: fewer than {rule} items"
    return f"{path}: fails {keyword} {_show(rule)}"


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "payload"


def _show(value: Any) -> str:
    return str(value) if isinstance(value, decimal.Decimal) else _short.repr(value)


def _json_type(value: Any) -> str:
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), type(value).__name__)
