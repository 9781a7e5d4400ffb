"""One typed state per station, and the reducer that keeps it. Pure: no I/O.

`apply(state, event)` folds an event into the station's state and returns what it
wrote, in order, as `(Key, value)` changes. The renderers — per-key MQTT topics,
the JSON state document, Home Assistant discovery — work from the state and the
changes; none of them parses a topic or a text.

Values keep their type: numbers are numbers, a cleared transaction id is None,
the data of a DataTransfer is its JSON value. The key names are the user-facing
vocabulary: `<prefix>/state/<key>`, the document's fields, the entity ids.

The connector-topics rule (CONNECTOR_TOPICS) lives here and only here: per-connector
status values are always recorded, per-connector readings once a station has several
connectors (with one, its readings are the station's: `StationState.meter_of`);
`StationState.shows(connector, name)` says whether they are shown (topics, document,
entities).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from ocpp2mqtt import events as ev
from ocpp2mqtt.measurands import aggregate

DEFAULT_CONTEXT = "Sample.Periodic"  # OCPP: the context of a sampled value that names none

ConnectorTopicsMode = Literal["auto", "always", "never"]
Value = str | int | float | bool | dict[str, Any] | list[Any] | None


class Key(NamedTuple):
    """Where a value lives: `<name>[/<phase>][/signed_data]`, per station or per connector."""

    name: str
    phase: str | None = None
    connector: int | None = None
    signed: bool = False


Change = tuple[Key, Any]

_KEY_CACHE_LIMIT = 100_000
_keys: dict[tuple[str, str | None, int | None, bool], Key] = {}


def key(name: str, phase: str | None = None, connector: int | None = None,
        signed: bool = False) -> Key:
    """The Key for these parts, made once: keys repeat on every event, and making a
    NamedTuple is a Python call where a dict lookup is not."""
    parts = (name, phase, connector, signed)
    found = _keys.get(parts)
    if found is None:
        if len(_keys) >= _KEY_CACHE_LIMIT:
            _keys.clear()
        found = _keys[parts] = Key(name, phase, connector, signed)
    return found

# Values of a StatusNotification: the station-wide one (connector 0) has no plain topic,
# so it is always shown per connector.
STATUS_FIELDS = ("status", "error_code", "status_info", "vendor_error_code", "status_vendor_id",
                 "connector_status", "charging_state")
_STATUS_NAMES = frozenset(STATUS_FIELDS)
# What a lost message would cost money or an answer: never dropped from the outbox.
_ESSENTIAL_NAMES = frozenset({
    "transaction_id", "transaction_start", "transaction_stop", "meter_start", "meter_stop",
    "meter_stop_reason", "last_transaction_id", "session_energy", "id_tag",
})
BOOT_FIELDS = (
    "charge_point_vendor", "charge_point_model", "firmware_version",
    "charge_point_serial_number", "charge_box_serial_number", "meter_type",
    "meter_serial_number", "iccid", "imsi",
)


def is_essential(key: Key) -> bool:
    return key.name.startswith("energy_") or key.name in _ESSENTIAL_NAMES


@dataclass(slots=True)
class Measurement:
    """The latest reading of one measurand, its phases and how it was taken."""

    measurand: str
    value: float | None = None  # the phase-less value, or the aggregate of the phases
    unit: str | None = None
    context: str = DEFAULT_CONTEXT
    location: str | None = None
    timestamp: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    signed_data: str | None = None
    phases_signed_data: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ConnectorState:
    values: dict[str, Value] = field(default_factory=dict)
    meter: dict[str, Measurement] = field(default_factory=dict)


@dataclass(slots=True)
class UpstreamStatus:
    """A back office the station's messages are relayed to (relay/)."""

    connected: bool = False
    queue: int = 0


@dataclass(slots=True)
class StationState:
    station: str
    connector_topics_mode: ConnectorTopicsMode = "auto"
    values: dict[str, Value] = field(default_factory=dict)
    meter: dict[str, Measurement] = field(default_factory=dict)
    connectors: dict[int, ConnectorState] = field(default_factory=dict)
    boot: ev.BootInfo | None = None
    many_connectors: bool = False  # a connector ≥ 2 was reported (CONNECTOR_TOPICS=auto)
    upstreams: dict[str, UpstreamStatus] = field(default_factory=dict)  # by upstream name

    # --- the connector-topics rule ------------------------------------------------
    @property
    def connector_topics(self) -> bool:
        """Per-connector values are shown (`state/connector/<n>/…`, document, entities)."""
        mode = self.connector_topics_mode
        return mode == "always" or (mode == "auto" and self.many_connectors)

    def shows(self, connector: int, name: str) -> bool:
        return self.connector_topics or (connector == 0 and name in _STATUS_NAMES)

    # --- typed reads for features that act on the state -----------------------------
    def meter_of(self, connector: int) -> dict[str, Measurement]:
        """A connector's latest readings (the station's, while it has only one connector)."""
        holder = self.connectors.get(connector)
        if holder is not None and holder.meter:
            return holder.meter
        return {} if self.many_connectors else self.meter

    @property
    def connected(self) -> bool:
        return self.values.get("connection_state") == "CONNECTED"

    @property
    def transaction_id(self) -> str | None:
        tx = self.values.get("transaction_id")
        return tx if isinstance(tx, str) else None


@dataclass(slots=True)
class StateUpdate:
    """What one event wrote and is shown, in order (per-connector values are recorded
    always, but are changes only while shown). `structural`: something new to describe
    appeared (a key, a phase, a unit, a connector, boot information) — Home Assistant
    discovery looks then."""

    changes: list[Change] = field(default_factory=list)
    structural: bool = False


class _Writer:
    """Writes values into a station's state and records the changes, in order."""

    __slots__ = ("state", "update")

    def __init__(self, state: StationState):
        self.state = state
        self.update = StateUpdate()

    def set(self, name: str, value: Value, connector: int | None = None) -> None:
        if connector is None:
            values = self.state.values
        else:
            values = self._connector(connector).values
        if name not in values:
            self.update.structural = True
        values[name] = value
        if connector is None or self.state.shows(connector, name):
            self.update.changes.append((key(name, None, connector), value))

    def _connector(self, connector: int) -> ConnectorState:
        holder = self.state.connectors.get(connector)
        if holder is None:
            holder = self.state.connectors[connector] = ConnectorState()
            self.update.structural = True
        return holder

    def see_connector(self, connector: int | None) -> None:
        """A connector named by an event; the second one switches connector topics on."""
        if connector is None or connector < 2 or self.state.many_connectors:
            return
        was = self.state.connector_topics
        self.state.many_connectors = True
        self.update.structural = True
        if not was and self.state.connector_topics:
            self._show_connectors()

    def _show_connectors(self) -> None:
        # Per-connector values recorded before the switch are shown from now on: write
        # them out once, so the topics hold what the document and entities show.
        changes = self.update.changes
        for n, holder in sorted(self.state.connectors.items()):
            for name, value in holder.values.items():
                if not (n == 0 and name in _STATUS_NAMES):  # those were shown already
                    changes.append((key(name, None, n), value))
            for name, m in holder.meter.items():
                for phase, number in m.phases.items():
                    changes.append((key(name, phase, n), number))
                if m.value is not None:
                    changes.append((key(name, None, n), m.value))
                for phase, text in m.phases_signed_data.items():
                    changes.append((key(name, phase, n, True), text))
                if m.signed_data is not None:
                    changes.append((key(name, None, n, True), m.signed_data))

    def sample(self, sample: ev.Sample, connector: int) -> None:
        """The readings of one instant, into the station's meter and the connector's."""
        readings = sample.readings
        phases: dict[str, list[float]] = {}
        plain: set[str] = set()
        for r in readings:
            if r.signed:
                continue
            if r.phase is None:
                plain.add(r.key)
            elif r.phase != "n":
                phases.setdefault(r.key, []).append(float(r.value))
        totals = [(key, aggregate(key, values)) for key, values in phases.items()
                  if key not in plain]
        self._readings(self.state.meter, sample, totals, None)
        state = self.state
        if state.many_connectors or state.connector_topics:
            # A station with one connector: its readings are the station's (`meter_of`);
            # recording them twice would double the work of every reading.
            self._readings(self._connector(connector).meter, sample, totals,
                           connector if state.connector_topics else False)

    def _readings(self, meter: dict[str, Measurement], sample: ev.Sample,
                  totals: list[tuple[str, float]], connector: int | Literal[False] | None
                  ) -> None:
        """Write one sample into `meter`; record changes unless `connector` is False."""
        update = self.update
        keys = _keys  # looked up inline: the hottest loop of the gateway
        changes = update.changes if connector is not False else None
        where = connector if connector is not False else None
        timestamp = sample.timestamp
        for r in sample.readings:
            m = meter.get(r.key)
            if m is None:
                m = meter[r.key] = Measurement(r.measurand)
                update.structural = True
            if r.unit is not None and r.unit != m.unit:
                update.structural = True
                m.unit = r.unit
            m.measurand = r.measurand
            m.context = r.context or DEFAULT_CONTEXT
            if r.location is not None:
                m.location = r.location
            if timestamp is not None:
                m.timestamp = timestamp
            if r.signed:
                text = str(r.value)
                if r.phase is None:
                    m.signed_data = text
                else:
                    m.phases_signed_data[r.phase] = text
                if changes is not None:
                    changes.append((keys.get((r.key, r.phase, where, True))
                                    or key(r.key, r.phase, where, True), text))
            else:
                number = float(r.value)
                if r.phase is None:
                    m.value = number
                else:
                    if r.phase not in m.phases:
                        update.structural = True
                    m.phases[r.phase] = number
                if changes is not None:
                    changes.append((keys.get((r.key, r.phase, where, False))
                                    or key(r.key, r.phase, where), number))
        for name, total in totals:
            meter[name].value = total
            if changes is not None:
                changes.append((keys.get((name, None, where, False)) or key(name, None, where),
                                total))


def apply(state: StationState, event: ev.Event) -> StateUpdate:
    """Fold `event` into `state`; return the changes it made, in publishing order."""
    w = _Writer(state)
    reducer = _REDUCERS.get(type(event))
    if reducer is not None:
        reducer(w, event)
    return w.update


# connection_state goes out last: whoever reacts to it finds the rest already published.
def _connected(w: _Writer, e: ev.Connected) -> None:
    w.set("ocpp_version", e.ocpp_version)
    w.set("last_connected", e.at)
    w.set("last_seen", e.at)
    w.set("gateway", {"id": e.gateway, "since": e.at})
    w.set("connection_state", "CONNECTED")


def _disconnected(w: _Writer, e: ev.Disconnected) -> None:
    w.set("last_disconnected", e.at)
    w.set("connection_state", "DISCONNECTED")


def _booted(w: _Writer, e: ev.Booted) -> None:
    info = e.info
    if w.state.boot != info:
        w.update.structural = True
    w.state.boot = info
    values = (info.vendor, info.model, info.firmware_version, info.charge_point_serial_number,
              info.charge_box_serial_number, info.meter_type, info.meter_serial_number,
              info.iccid, info.imsi)
    for name, value in zip(BOOT_FIELDS, values, strict=True):
        if value is not None:
            w.set(name, value)
    if info.reason is not None:
        w.set("boot_reason", info.reason)
    w.set("last_boot", e.at)
    w.set("last_seen", e.at)


def _heartbeat(w: _Writer, e: ev.Heartbeat) -> None:
    w.set("heartbeat", e.at)
    w.set("last_seen", e.at)


def _status(w: _Writer, e: ev.StatusChanged) -> None:
    w.see_connector(e.connector_id)
    fields: list[tuple[str, Value]] = [("status", e.status), ("error_code", e.error_code)]
    if e.info is not None:
        fields.append(("status_info", e.info))
    if e.vendor_error_code is not None:
        fields.append(("vendor_error_code", e.vendor_error_code))
    if e.vendor_id is not None:
        fields.append(("status_vendor_id", e.vendor_id))
    if e.connector_status is not None:
        fields.append(("connector_status", e.connector_status))
    if e.charging_state is not None:
        fields.append(("charging_state", e.charging_state))
    if e.connector_id > 0:  # the plain status is the last one of a real connector
        for name, value in fields:
            w.set(name, value)
        w.set("connector_id", e.connector_id)
    for name, value in fields:
        w.set(name, value, e.connector_id)
    if e.timestamp:
        w.set("status_timestamp", e.timestamp)
    w.set("last_seen", e.at)


def _meter(w: _Writer, e: ev.MeterReading) -> None:
    w.see_connector(e.connector_id)
    for sample in e.samples:
        w.sample(sample, e.connector_id)
        if sample.timestamp is not None:
            w.set("meter_timestamp", sample.timestamp)
    if e.transaction_id is not None:
        w.set("transaction_id", e.transaction_id)
    w.set("last_seen", e.at)


def _tx_started(w: _Writer, e: ev.TransactionStarted) -> None:
    w.see_connector(e.connector_id)
    w.set("transaction_id", e.transaction_id)
    w.set("connector_id", e.connector_id)
    w.set("id_tag", e.id_tag)
    if e.meter_start is not None:
        w.set("meter_start", e.meter_start)
    w.set("transaction_start", e.timestamp)
    w.set("last_seen", e.at)
    w.set("transaction_id", e.transaction_id, e.connector_id)


def _tx_stopped(w: _Writer, e: ev.TransactionStopped) -> None:
    w.see_connector(e.connector_id)
    if e.meter_stop is not None:
        w.set("meter_stop", e.meter_stop)
    w.set("meter_stop_reason", e.reason)
    w.set("transaction_stop", e.timestamp)
    w.set("last_transaction_id", e.transaction_id)
    w.set("transaction_id", None)
    if e.meter_start is not None and e.meter_stop is not None:
        w.set("session_energy", e.meter_stop - e.meter_start)
    if e.connector_id is not None:
        w.set("transaction_id", None, e.connector_id)
    w.set("last_seen", e.at)


def _late_energy(w: _Writer, e: ev.SessionEnergyLearned) -> None:
    if w.state.values.get("last_transaction_id") == e.transaction_id:
        w.set("session_energy", e.energy)


def _authorized(w: _Writer, e: ev.Authorized) -> None:
    w.set("authorize", e.id_tag)
    w.set("authorize_status", e.status)
    w.set("last_seen", e.at)


def _data_transfer(w: _Writer, e: ev.DataTransferred) -> None:
    w.set("data_transfer", {"vendor_id": e.vendor_id, "message_id": e.message_id,
                            "data": e.data})
    w.set("last_seen", e.at)


def _notification(w: _Writer, e: ev.NotificationReceived) -> None:
    w.set(e.kind, e.status)
    w.set("last_seen", e.at)


def _charging_enabled(w: _Writer, e: ev.ChargingEnabledChanged) -> None:
    w.set("charging_enabled", e.enabled)


def _current_limit(w: _Writer, e: ev.CurrentLimitChanged) -> None:
    if e.status == "applied" or e.limit is not None:
        w.set("current_limit", e.limit)
        w.set("current_limit_source", e.source)
    w.set("current_limit_status", e.status)
    if e.phases is not None:
        w.set("phases", e.phases)


def _charge_mode(w: _Writer, e: ev.ChargeModeChanged) -> None:
    w.set("charge_mode", e.mode)


def _upstream(w: _Writer, e: ev.UpstreamChanged) -> None:
    # Not a `state/<key>` value: rendered on `<prefix>/upstream/<name>/…` (relay_topics).
    status = w.state.upstreams.get(e.upstream)
    if status is None:
        status = w.state.upstreams[e.upstream] = UpstreamStatus()
        w.update.structural = True
    status.connected, status.queue = e.connected, e.queue


_REDUCERS: dict[type, Any] = {
    ev.Connected: _connected,
    ev.Disconnected: _disconnected,
    ev.Booted: _booted,
    ev.Heartbeat: _heartbeat,
    ev.StatusChanged: _status,
    ev.MeterReading: _meter,
    ev.TransactionStarted: _tx_started,
    ev.TransactionStopped: _tx_stopped,
    ev.SessionEnergyLearned: _late_energy,
    ev.Authorized: _authorized,
    ev.DataTransferred: _data_transfer,
    ev.NotificationReceived: _notification,
    ev.ChargingEnabledChanged: _charging_enabled,
    ev.UpstreamChanged: _upstream,
    ev.CurrentLimitChanged: _current_limit,
    ev.ChargeModeChanged: _charge_mode,
}


class Stations:
    """Every station's state, by id."""

    def __init__(self, connector_topics: ConnectorTopicsMode = "auto"):
        self.mode: ConnectorTopicsMode = connector_topics
        self.states: dict[str, StationState] = {}

    def get(self, station: str) -> StationState:
        state = self.states.get(station)
        if state is None:
            state = self.states[station] = StationState(station, self.mode)
        return state

    def apply(self, event: ev.Event) -> tuple[StationState, StateUpdate]:
        state = self.get(event.station)
        return state, apply(state, event)
