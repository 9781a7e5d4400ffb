"""One retained JSON document per station on `<prefix>/state` (issue 6).

The document holds everything the per-key topics under `<prefix>/state/...`
hold, as one object, so a consumer can read a station with one subscription:

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

Keys are the per-key topic names; `<key>/<phase>` topics become
`<key>.phases.<phase>`, `connector/<n>/<key>` topics become
`connectors.<n>.<key>` (present exactly when the per-connector topics are,
see CONNECTOR_TOPICS). Numbers are JSON numbers; `transaction_id` is null
when no transaction runs; a measurand's `value` is null when only values
without an aggregate (a neutral phase, signed data) were sent.

Publishing is coalesced: an event only updates the in-memory object and marks
the station; one `loop.call_soon` per event-loop tick serialises each marked
station once. A MeterValues frame with 2 × 8 sampled values therefore costs one
JSON serialisation and one MQTT message, not sixteen.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson

from ocpp2mqtt import events as ev
from ocpp2mqtt import mapping

if TYPE_CHECKING:
    from ocpp2mqtt.gateway import Gateway

DEFAULT_CONTEXT = "Sample.Periodic"  # OCPP 1.6: the context when a sampledValue has none
_INTEGER_KEYS = frozenset({"connector_id", "transaction_id", "last_transaction_id",
                           "meter_start", "meter_stop"})
_NUMBER_KEYS = frozenset({"session_energy"})


class ConnectorTopics:
    """Whether a station also gets `state/connector/<n>/...` topics.

    Mirrors StateExtension: CONNECTOR_TOPICS=always → yes, never → no, auto →
    from the first event naming a connector ≥ 2 on. Kept here so the
    document and Home Assistant discovery do not depend on another
    extension's internals or on the order extensions run in.
    """

    __slots__ = ("mode", "stations")

    def __init__(self, mode: str):
        self.mode = mode
        self.stations: set[str] = set()

    def update(self, event: ev.Event) -> bool:
        if self.mode != "auto":
            return self.mode == "always"
        if event.station in self.stations:
            return True
        connector = getattr(event, "connector_id", None)
        if connector is not None and connector >= 2:
            self.stations.add(event.station)
            return True
        return False


def _number(text: str) -> float | int:
    value = float(text)
    return int(value) if value.is_integer() and abs(value) < 1e15 else value


def _scalar(key: str, text: str) -> Any:
    if key in _INTEGER_KEYS:
        if text == "":
            return None
        try:
            return int(text)
        except ValueError:
            return text
    if key in _NUMBER_KEYS:
        return _number(text)
    if key == "charging_enabled":
        return text == "true"
    if key == "data_transfer":
        return orjson.loads(text)
    return text


class StateDocumentExtension:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.documents: dict[str, dict] = {}
        self.connector_topics = ConnectorTopics(gateway.settings.connector_topics)
        self._views = (mapping.StationView(False), mapping.StationView(True))
        self._dirty: dict[str, None] = {}  # insertion-ordered set
        self._scheduled = False
        self.published = 0

    # --- events -------------------------------------------------------------
    def handle(self, event: ev.Event) -> None:
        doc = self.documents.get(event.station)
        if doc is None:
            doc = self.documents[event.station] = {"station": event.station}
        per_connector = self.connector_topics.update(event)
        if type(event) is ev.MeterReading:
            self._meter(doc, event, per_connector)
        else:
            messages = mapping.event_messages(event, self._views[per_connector])
            if not messages:
                return
            for subtopic, text in messages:
                self._apply(doc, subtopic, text)
        self._mark(event.station)

    def _apply(self, doc: dict, subtopic: str, text: str) -> None:
        parts = subtopic.split("/")[1:]  # drop "state"
        if parts[0] == "connector" and len(parts) >= 3:
            doc = doc.setdefault("connectors", {}).setdefault(parts[1], {})
            parts = parts[2:]
        doc[parts[0]] = _scalar(parts[0], text)

    def _meter(self, doc: dict, e: ev.MeterReading, per_connector: bool) -> None:
        targets = [doc]
        if per_connector:
            targets.append(doc.setdefault("connectors", {}).setdefault(str(e.connector_id), {}))
        for entry, messages, readings in mapping.meter_samples(e):
            if not messages:
                continue
            timestamp = entry.get("timestamp")
            for target in targets:
                self._readings(target, messages, readings, timestamp)
            if timestamp is not None:
                doc["meter_timestamp"] = str(timestamp)
        if e.transaction_id is not None:
            doc["transaction_id"] = e.transaction_id
        doc["last_seen"] = e.at

    @staticmethod
    def _readings(target: dict, messages: list, readings: list, timestamp: Any) -> None:
        for topic, text in messages:
            parts = topic.split("/")  # "state", key[, phase][, "signed_data"]
            obj = target.get(parts[1])
            if obj is None:
                obj = target[parts[1]] = {"value": None}
            if parts[-1] == "signed_data":
                if len(parts) == 3:
                    obj["signed_data"] = text
                else:
                    obj.setdefault("phases_signed_data", {})[parts[2]] = text
            elif len(parts) == 2:
                obj["value"] = _number(text)
            else:
                obj.setdefault("phases", {})[parts[2]] = _number(text)
        for reading in readings:
            obj = target[reading.key]
            if reading.unit is not None:
                obj["unit"] = reading.unit
            obj["measurand"] = reading.measurand
            obj["context"] = reading.context or DEFAULT_CONTEXT
            if reading.location is not None:
                obj["location"] = reading.location
            if timestamp is not None:
                obj["timestamp"] = str(timestamp)

    # --- publishing -----------------------------------------------------------
    def _mark(self, station: str) -> None:
        self._dirty[station] = None
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Serialise and publish every station changed since the last flush."""
        self._scheduled = False
        dirty, self._dirty = self._dirty, {}
        publish = self.gateway.link.publish
        for station in dirty:
            body = orjson.dumps(self.documents[station]).decode()
            publish(f"{self.gateway.prefix(station)}/state", body, True)
            self.published += 1

    def on_mqtt_connected(self) -> None:
        pass
