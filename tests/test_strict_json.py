"""strict_json.loads reads with orjson but must return what the json module returns, or fail as it fails."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocpp_addon import strict_json
from ocpp_addon.strict_json import NonFiniteNumber


def reference(text: str | bytes) -> Any:
    """strict_json.loads before orjson (json module only): the oracle."""
    def no_constant(name: str) -> Any:
        raise NonFiniteNumber(name)

    def finite(number: str) -> float:
        value = float(number)
        if not math.isfinite(value):
            raise NonFiniteNumber(number)
        return value

    return json.loads(text, parse_constant=no_constant, parse_float=finite)


def outcome(read: Any, text: str | bytes) -> Any:
    """A value with every scalar tagged by its exact type (1 != 1.0 != True, -0.0 != 0.0), or the exception class."""
    def tag(value: Any) -> Any:
        if isinstance(value, dict):
            return ("dict", [(key, tag(item)) for key, item in value.items()])
        if isinstance(value, list):
            return ("list", [tag(item) for item in value])
        if isinstance(value, float):
            return ("float", value.hex())
        return (type(value).__name__, value)

    try:
        return tag(read(text))
    except NonFiniteNumber:
        return NonFiniteNumber
    except RecursionError:
        return RecursionError
    except ValueError:
        return ValueError


class Literal(str):
    """A number written as it is, digits and exponent as a charger might send them."""


NUMBERS = st.one_of(
    st.integers(-(10**25), 10**25), st.integers(-(2**64), 2**64), st.floats(allow_nan=False, allow_infinity=False),
    st.from_regex(r"\A-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?\Z").map(Literal),
)
LEAVES = st.one_of(st.none(), st.booleans(), st.text(max_size=8), NUMBERS)
VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4), max_leaves=20)


def render(value: Any) -> str:
    if isinstance(value, Literal):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(render(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(key)}:{render(item)}" for key, item in value.items()) + "}"
    return json.dumps(value)


@settings(max_examples=1000, deadline=None)
@given(value=VALUES)
def test_valid_json_reads_the_same(value: Any) -> None:
    text = render(value)
    assert outcome(strict_json.loads, text) == outcome(reference, text)


TOKENS = [*'[]{}",:0123456789.eE+- \tnulltruefalseNaInfity\\u', "\\ud800", "\\udc00", "\\u00e9", "\u00e9", "\ufeff", "\x00", "0" * 19]
JSONISH = st.lists(st.sampled_from(TOKENS), max_size=30).map("".join)


@settings(max_examples=2000, deadline=None)
@given(text=JSONISH)
def test_anything_else_fails_or_reads_the_same(text: str) -> None:
    assert outcome(strict_json.loads, text) == outcome(reference, text)
    assert outcome(strict_json.loads, text.encode("utf-8", "surrogatepass")) == outcome(reference, text.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize("text", [
    "1e400", "[-1e400]", "NaN", "[Infinity]", "-Infinity", "18446744073709551616", "[-9223372036854775809]", "123456789012345678901234567890",
    "1e-400", '"\\ud800"', '{"a":1,"b":2,"a":3}', "[" * 3000 + "]" * 3000, "\ufeff[1]", "[1,]", "01", '"\x01"', " [1] ", "",
    "9223372036854775807", "-9223372036854775808", "18446744073709551615", "1.7976931348623157e308", "2.2250738585072014e-308",
    "0.1", "-0.0", "1E5", '"\\u0000"',
])
def test_edges_read_the_same(text: str) -> None:
    assert outcome(strict_json.loads, text) == outcome(reference, text)
    assert outcome(strict_json.loads, text.encode("utf-8", "surrogatepass")) == outcome(reference, text.encode("utf-8", "surrogatepass"))


PUBLISHED = st.recursive(st.one_of(st.none(), st.booleans(), st.text(max_size=8), st.integers(-(2**70), 2**70),
                                   st.floats(allow_nan=False, allow_infinity=False)),
                         lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4), max_leaves=20)


@settings(max_examples=1000, deadline=None)
@given(value=PUBLISHED)
def test_dumps_bytes_writes_what_dumps_writes(value: Any) -> None:
    """Compact and UTF-8 instead of ASCII-escaped, but read back the same, type for type."""
    assert outcome(reference, strict_json.dumps_bytes(value)) == outcome(reference, strict_json.dumps(value))


def test_dumps_bytes_writes_non_finite_floats_as_null() -> None:
    assert strict_json.dumps_bytes({"power": float("inf"), "soc": float("nan"), "energy": 1.5}) == b'{"power":null,"soc":null,"energy":1.5}'
    assert strict_json.dumps_bytes({"huge": 2**70, "unit": "°C"}) == '{"huge":1180591620717411303424,"unit":"°C"}'.encode()
    with pytest.raises(ValueError):
        strict_json.dumps({"power": float("inf")})
