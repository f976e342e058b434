"""The ``status`` of every command result we publish on ``<base>/<cp>/event``, as one enum.

Chargers answer with OCPP's own statuses (Accepted, Rejected, NotSupported, RebootRequired,
Scheduled, ...), which pass through as the charger said them; the rest are ours: what happened
when there was no usable answer, or no charger to ask. A StrEnum, so JSON and comparisons with
the charger's strings keep working.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    # OCPP answers we act on
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    NOT_SUPPORTED = "NotSupported"
    REBOOT_REQUIRED = "RebootRequired"
    SCHEDULED = "Scheduled"
    # no usable answer from the charger
    TIMEOUT = "Timeout"
    DISCONNECTED = "Disconnected"
    CALL_ERROR = "CallError"
    INVALID_RESPONSE = "InvalidResponse"
    # decided here, before or instead of asking the charger
    INVALID = "Invalid"
    QUEUED = "Queued"
    BUSY = "Busy"  # MAX_PENDING_COMMANDS already wait for this charger: refused at once, not queued
    UNCHANGED = "Unchanged"
    OFFLINE = "Offline"
    UNKNOWN_CHARGER = "UnknownCharger"
    UNKNOWN_COMMAND = "UnknownCommand"


# Answers that settle a setpoint: it is not retried on reconnect (a Timeout or a lost connection is).
FINAL_REFUSALS = frozenset({Status.REJECTED, Status.NOT_SUPPORTED, Status.CALL_ERROR, Status.INVALID_RESPONSE, Status.INVALID})
# A configuration change the charger took (now or at its next reboot).
CONFIG_TAKEN = frozenset({Status.ACCEPTED, Status.REBOOT_REQUIRED})
