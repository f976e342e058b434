"""JSON as RFC 8259 has it, in and out.

Python's json module reads ``NaN``, ``Infinity`` and ``1e400`` (as infinity) and
writes them back as ``NaN``/``Infinity``, which is not JSON: a charger that sends
``"connectorId": 1e400`` would otherwise put ``Infinity`` into a retained
message that every consumer then fails to parse. Untrusted JSON is read with
:func:`loads`; everything we publish is written with :func:`dumps`.
"""

from __future__ import annotations

import json
import math
from typing import Any


class NonFiniteNumber(ValueError):
    """NaN, Infinity or a number beyond double range."""


def _no_constant(name: str) -> Any:
    raise NonFiniteNumber(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise NonFiniteNumber(f"{text[:20]} is out of range")
    return number


def loads(text: str | bytes) -> Any:
    """Like json.loads, but every number finite. Raises ValueError (NonFiniteNumber) or RecursionError."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)


def dumps(data: Any, **kwargs: Any) -> str:
    """Like json.dumps, but a non-finite number raises ValueError instead of becoming NaN/Infinity."""
    return json.dumps(data, allow_nan=False, **kwargs)
