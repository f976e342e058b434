"""The one gate between untrusted strings and MQTT topic names.

A charge point id comes from a URL path, the state file or an MQTT topic, and
ends up inside topics (``<base>/<id>/state``), discovery ids and file keys. It
is checked here, always against the *whole* string: ``re.match`` with ``$``
lets a trailing newline through (``$`` matches before it), and one invalid
topic makes the broker drop the connection for every charger.

:func:`publish_topic_problem` is the last line of defence: the MQTT bridge runs
every topic it publishes or subscribes through it, so a string that slipped past
an earlier check is refused with one log line instead of costing the connection.
"""

from __future__ import annotations

import re
from typing import Any

CHARGER_ID_PATTERN = r"[A-Za-z0-9._:-]{1,64}"
CHARGER_ID_RE = re.compile(CHARGER_ID_PATTERN, re.ASCII)
RESERVED_IDS = frozenset({"bridge"})  # <base>/bridge/... is the bridge's own topic tree
MAX_TOPIC_BYTES = 65535  # MQTT: a topic is a UTF-8 string with a 16-bit length
# MQTT 3.1.1 §1.5.3 forbids U+0000 and says control characters SHOULD NOT appear; mosquitto refuses them.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def is_charger_id(value: Any) -> bool:
    """True for a string that is, as a whole, a valid charge point id."""
    return isinstance(value, str) and CHARGER_ID_RE.fullmatch(value) is not None


def is_usable_charger_id(value: Any) -> bool:
    """A valid id that does not collide with the bridge's own topics."""
    return is_charger_id(value) and value.lower() not in RESERVED_IDS


def publish_topic_problem(topic: str, wildcards: bool = False) -> str | None:
    """Why ``topic`` must not go to the broker, or None when it may (``wildcards`` for subscriptions)."""
    if not isinstance(topic, str) or not topic:
        return "empty topic"
    if _CONTROL_RE.search(topic):
        return "control character in topic"
    if not wildcards and ("+" in topic or "#" in topic):
        return "wildcard in a publish topic"
    if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        return "topic longer than 65535 bytes"
    return None


def printable(text: Any, limit: int = 200) -> str:
    """A charger-supplied string made safe for one log line: control characters escaped, length bounded."""
    value = text if isinstance(text, str) else repr(text)
    if len(value) > limit:
        value = value[:limit] + "..."
    return _CONTROL_RE.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"), value)
