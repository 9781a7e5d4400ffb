"""What happens at a charge point, as plain data.

Sessions emit these; extensions (state topics, Home Assistant discovery,
metrics) read them. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Event:
    station: str
    at: str  # gateway receive time, ISO 8601 UTC: drives last_seen, never the charger's clock


@dataclass(slots=True)
class Connected(Event):
    ip: str = ""
    subprotocol: str | None = None
    gateway: str = ""  # instance id of the replica that holds the connection


@dataclass(slots=True)
class Disconnected(Event):
    reason: str = ""


@dataclass(slots=True)
class Booted(Event):
    payload: dict = field(default_factory=dict)


@dataclass(slots=True)
class Heartbeat(Event):
    pass


@dataclass(slots=True)
class StatusChanged(Event):
    connector_id: int = 0
    status: str = ""
    error_code: str = ""
    info: str | None = None
    vendor_error_code: str | None = None
    vendor_id: str | None = None
    timestamp: str | None = None


@dataclass(slots=True)
class MeterReading(Event):
    connector_id: int = 0
    transaction_id: int | None = None
    meter_value: list = field(default_factory=list)
    # mapping.meter_samples() memoises its work here, so extensions share it
    samples: list | None = None


@dataclass(slots=True)
class TransactionStarted(Event):
    connector_id: int = 0
    transaction_id: int = 0
    id_tag: str = ""
    meter_start: int = 0
    timestamp: str = ""
    accepted: bool = True


@dataclass(slots=True)
class TransactionStopped(Event):
    transaction_id: int = 0
    connector_id: int | None = None
    meter_start: int | None = None
    meter_stop: int = 0
    reason: str = "Local"
    id_tag: str | None = None
    timestamp: str = ""


@dataclass(slots=True)
class Authorized(Event):
    id_tag: str = ""
    status: str = ""


@dataclass(slots=True)
class DataTransferred(Event):
    vendor_id: str = ""
    message_id: str | None = None
    data: Any = None


@dataclass(slots=True)
class NotificationReceived(Event):
    """DiagnosticsStatusNotification / FirmwareStatusNotification."""

    kind: str = ""  # "diagnostics_status" | "firmware_status"
    status: str = ""


@dataclass(slots=True)
class ChargingEnabledChanged(Event):
    enabled: bool = True


@dataclass(slots=True)
class CommandFinished(Event):
    """One command's outcome; `document` is the JSON result published."""

    document: dict = field(default_factory=dict)
    response_topic: str | None = None
    correlation_data: bytes | None = None
    retained_cleared: bool = False
