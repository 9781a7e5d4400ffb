"""What happens at a charge point, as typed, version-neutral data.

The protocol edge (`ocpp/v16.py`, later 2.0.1) turns wire payloads into these;
`state.py` reduces them into one typed state per station; extensions read both.
Readings are numbers in published units, transaction ids are strings, whatever
OCPP version the charger speaks. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Reading:
    """One sampled value, normalised: `value` in `unit` (kW → W, kWh → Wh, …)."""

    key: str  # the measurand in snake_case: "energy_active_import_register", "soc"
    measurand: str  # as OCPP names it: "Energy.Active.Import.Register"
    phase: str | None  # "l1", "l1_n", "n", … or None
    value: float | str  # str only for signed meter data (`signed`)
    unit: str | None
    context: str | None = None
    location: str | None = None
    signed: bool = False


@dataclass(slots=True)
class Sample:
    """The readings of one instant (one meterValue entry, or several with one timestamp)."""

    timestamp: str | None  # the charger's clock, as sent
    readings: list[Reading] = field(default_factory=list)


@dataclass(slots=True)
class BootInfo:
    vendor: str = ""
    model: str = ""
    firmware_version: str | None = None
    charge_point_serial_number: str | None = None
    charge_box_serial_number: str | None = None
    meter_type: str | None = None
    meter_serial_number: str | None = None
    iccid: str | None = None
    imsi: str | None = None
    reason: str | None = None  # 2.0.1: why the station booted (PowerUp, RemoteReset, …)


@dataclass(slots=True)
class Event:
    station: str
    at: str  # gateway receive time, ISO 8601 UTC: drives last_seen, never the charger's clock


@dataclass(slots=True)
class Connected(Event):
    ip: str = ""
    subprotocol: str | None = None
    ocpp_version: str = "1.6"  # "1.6", "2.0.1", "2.1": negotiated on this connection
    gateway: str = ""  # instance id of the replica that holds the connection


@dataclass(slots=True)
class Disconnected(Event):
    reason: str = ""


@dataclass(slots=True)
class Booted(Event):
    info: BootInfo = field(default_factory=BootInfo)


@dataclass(slots=True)
class Heartbeat(Event):
    pass


@dataclass(slots=True)
class StatusChanged(Event):
    """A connector's (1.6) or EVSE's (2.x) status, in the OCPP 1.6 vocabulary."""

    connector_id: int = 0  # 2.x: the EVSE id
    status: str = ""
    error_code: str = ""
    info: str | None = None
    vendor_error_code: str | None = None
    vendor_id: str | None = None
    timestamp: str | None = None
    # 2.x: the values `status` was derived from
    connector_status: str | None = None
    charging_state: str | None = None


@dataclass(slots=True)
class MeterReading(Event):
    connector_id: int = 0
    transaction_id: str | None = None
    samples: list[Sample] = field(default_factory=list)


@dataclass(slots=True)
class TransactionStarted(Event):
    connector_id: int = 0
    transaction_id: str = ""
    id_tag: str = ""
    meter_start: float | None = 0  # Wh; None: not reported (2.x)
    timestamp: str = ""
    accepted: bool = True


@dataclass(slots=True)
class TransactionStopped(Event):
    transaction_id: str = ""
    connector_id: int | None = None  # None: a transaction this gateway does not know
    meter_start: float | None = None
    meter_stop: float | None = 0  # Wh; None: not reported (2.x)
    reason: str = "Local"
    id_tag: str | None = None
    timestamp: str = ""


@dataclass(slots=True)
class SessionEnergyLearned(Event):
    """A stop whose start this replica did not know (the shared store was away): its
    energy, once the store had the start."""

    transaction_id: str = ""
    energy: float = 0.0  # Wh


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
class ConfigurationReported(Event):
    """Configuration values the station reported (2.x NotifyReport): key → value, and the
    keys whose value the station says cannot be changed."""

    values: dict[str, str] = field(default_factory=dict)
    readonly: frozenset[str] = frozenset()


@dataclass(slots=True)
class ChargingEnabledChanged(Event):
    enabled: bool = True


@dataclass(slots=True)
class CurrentLimitChanged(Event):
    """What the gateway knows is in force at the station (charging/control.py)."""

    limit: float | None = None  # A (a limit set in W: converted)
    source: str | None = None  # the profile purpose, or config:<key>
    status: str = "applied"  # applied | pending | rejected | unsupported
    phases: int | None = None  # set by set_phases


@dataclass(slots=True)
class ChargeModeChanged(Event):
    """The station's load-balancing mode: fast, solar, min_solar or off."""

    mode: str = "fast"


@dataclass(slots=True)
class UpstreamChanged(Event):
    """A back office's link (relay/) connected, disconnected, or its queue changed."""

    upstream: str = ""
    connected: bool = False
    queue: int = 0  # the station's messages waiting for this back office


@dataclass(slots=True)
class UpstreamCommanded(Event):
    """A back office sent the station a CALL; what became of it."""

    upstream: str = ""
    action: str = ""
    payload: Any = None
    allowed: bool = False  # relayed to the charger (else refused by the gateway)
    response: Any = None  # the charger's answer, or ours; a CALLERROR as errorCode/…
