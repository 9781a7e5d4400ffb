"""One retained JSON document per station on `<prefix>/state`, rendered from its state.

The document holds what the per-key topics under `<prefix>/state/...` hold, as
one object, so a consumer can read a station with one subscription:

    {
      "station": "CP1",
      "connection_state": "CONNECTED", "last_seen": "2026-11-25T10:00:05Z",
      "charge_point_vendor": "ACME", ..., "status": "Charging", "connector_id": 1,
      "transaction_id": 17, "meter_timestamp": "2026-11-25T10:00:00Z",
      "voltage": {"value": 231.2, "unit": "V", "measurand": "Voltage",
                  "context": "Sample.Periodic", "timestamp": "2026-11-25T10:00:00Z",
                  "phases": {"l1_n": 230.1, "l2_n": 231.2, "l3_n": 232.3}},
      "connectors": {"0": {"status": "Available", ...},
                     "2": {"status": "Charging", "power_active_import": {...}, ...}}
    }

Keys are the per-key topic names; `<key>/<phase>` topics are `<key>.phases.<phase>`,
`connector/<n>/<key>` topics are `connectors.<n>.<key>` (shown exactly when the
per-connector topics are, see CONNECTOR_TOPICS). Numbers are JSON numbers; an
OCPP 1.6 transaction id is a number, `transaction_id` is null when no transaction
runs; a measurand's `value` is null when only values without an aggregate (a
neutral phase, signed data) were sent. A relayed station (docs/relay.md) has
`"upstreams": {"<name>": {"connection_state": "CONNECTED", "queue": 0}}`.

Publishing is coalesced: an event only marks the station; one `loop.call_soon`
per event-loop tick renders and publishes each marked station once. A MeterValues
frame with 2 × 8 sampled values therefore costs one JSON serialisation and one
MQTT message, not sixteen.
"""

from __future__ import annotations

from typing import Any

import orjson

from ocpp2mqtt import events as ev
from ocpp2mqtt.extensions import BaseExtension
from ocpp2mqtt.state import Measurement, StateUpdate, StationState, Value

_TRANSACTION_IDS = frozenset({"transaction_id", "last_transaction_id"})


def _value(name: str, value: Value) -> Any:
    if name in _TRANSACTION_IDS and isinstance(value, str) and value.isdecimal():
        return int(value)  # OCPP 1.6 ids stay numbers, as they always were here
    return value


def measurement_document(m: Measurement) -> dict[str, Any]:
    out: dict[str, Any] = {"value": m.value}
    if m.phases:
        out["phases"] = dict(m.phases)
    if m.signed_data is not None:
        out["signed_data"] = m.signed_data
    if m.phases_signed_data:
        out["phases_signed_data"] = dict(m.phases_signed_data)
    if m.unit is not None:
        out["unit"] = m.unit
    out["measurand"] = m.measurand
    out["context"] = m.context
    if m.location is not None:
        out["location"] = m.location
    if m.timestamp is not None:
        out["timestamp"] = m.timestamp
    return out


def render(state: StationState) -> dict[str, Any]:
    """The JSON state document of one station. Pure."""
    doc: dict[str, Any] = {"station": state.station}
    for name, value in state.values.items():
        doc[name] = _value(name, value)
    for name, m in state.meter.items():
        doc[name] = measurement_document(m)
    connectors: dict[str, dict[str, Any]] = {}
    for n, holder in sorted(state.connectors.items()):
        shown = {name: _value(name, value) for name, value in holder.values.items()
                 if state.shows(n, name)}
        if state.connector_topics:
            for name, m in holder.meter.items():
                shown[name] = measurement_document(m)
        if shown:
            connectors[str(n)] = shown
    if connectors:
        doc["connectors"] = connectors
    if state.upstreams:
        doc["upstreams"] = {
            name: {"connection_state": "CONNECTED" if u.connected else "DISCONNECTED",
                   "queue": u.queue} for name, u in sorted(state.upstreams.items())}
    return doc


class StateDocumentExtension(BaseExtension):
    name = "state_document"

    def __init__(self) -> None:
        self._dirty: dict[str, StationState] = {}  # insertion-ordered
        self._scheduled = False
        self.published = 0

    def on_event(self, event: ev.Event, state: StationState, update: StateUpdate) -> None:
        if not update.changes and type(event) is not ev.UpstreamChanged:
            return
        self._dirty[event.station] = state
        if not self._scheduled:
            self._scheduled = True
            self.ctx.defer(self.flush)

    def flush(self) -> None:
        """Render and publish every station changed since the last flush."""
        self._scheduled = False
        dirty, self._dirty = self._dirty, {}
        for station, state in dirty.items():
            body = orjson.dumps(render(state)).decode()
            self.ctx.publish(self.ctx.topics.document(station), body)
            self.published += 1
