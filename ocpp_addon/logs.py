"""Log hygiene for strings we do not control.

A charger (or anyone on the network) chooses the action names, vendor strings
and frames we log. Two rules keep the log trustworthy and bounded:

* one record is one line: control characters are escaped by the formatter, so a
  newline inside an action name cannot forge a second, innocent-looking line;
* one misbehaving peer gets a bounded number of lines (:class:`LogBudget`), with
  the count of lines held back, instead of one line per bad frame.
"""

from __future__ import annotations

import logging
import time

from .topics import printable



class OneLineFormatter(logging.Formatter):
    """Escapes control characters in the message; a traceback (``exc_info``) keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return printable(super().formatMessage(record), limit=100_000)


class LogBudget:
    """At most ``lines`` lines per ``interval`` seconds for one source.

    :meth:`take` answers whether to log now and how many lines were held back
    since the last one that got through (to append to it)."""

    __slots__ = ("lines", "interval", "_window_start", "_used", "_held")

    def __init__(self, lines: int = 10, interval: float = 60.0) -> None:
        self.lines = lines
        self.interval = interval
        self._window_start = -interval
        self._used = 0
        self._held = 0

    def take(self) -> tuple[bool, int]:
        now = time.monotonic()
        if now - self._window_start >= self.interval:
            self._window_start, self._used = now, 0
        if self._used >= self.lines:
            self._held += 1
            return False, 0
        self._used += 1
        held, self._held = self._held, 0
        return True, held
