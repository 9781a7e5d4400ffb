"""Pure mapping: events → (topic, payload) pairs. No I/O, no clocks.

Topic names follow the original ocpp2mqtt (`<prefix>/state/<key>`), with
per-phase sub-topics and per-connector copies added so nothing overwrites
anything else. The measurand table is derived from the `ocpp` package's
enum, so every OCPP 1.6 measurand has a topic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson
from ocpp.v16.enums import Measurand

from ocpp2mqtt import events as ev

DEFAULT_MEASURAND = Measurand.energy_active_import_register.value
ENERGY_UNITS = (None, "", "Wh", "kWh")
# Readings taken at another moment than the entry's sample (the transaction's start,
# an interruption): published first so a live value of the same key wins.
LOW_PRIORITY_CONTEXTS = frozenset(
    {"Transaction.Begin", "Transaction.End", "Interruption.Begin", "Interruption.End"}
)

# "Energy.Active.Import.Register" → "energy_active_import_register", "SoC" → "soc".
MEASURAND_KEYS: dict[str, str] = {m.value: m.name for m in Measurand}

# Units the charger may send, normalised to the unit we publish (× factor).
UNIT_SCALE: dict[str, tuple[str, float]] = {
    "kWh": ("Wh", 1000.0),
    "kW": ("W", 1000.0),
    "kvarh": ("varh", 1000.0),
    "kvar": ("var", 1000.0),
    "kVA": ("VA", 1000.0),
}


def _default_unit(measurand: str) -> str | None:
    # OCPP says a missing unit means "Wh", which only makes sense for energy.
    # Firmware often omits the unit for everything, so each measurand family
    # gets its natural unit instead.
    if measurand.startswith("Energy.Reactive"):
        return "varh"
    if measurand.startswith("Energy"):
        return "Wh"
    if measurand.startswith("Power.Reactive"):
        return "var"
    if measurand == "Power.Factor":
        return None
    if measurand.startswith("Power"):
        return "W"
    if measurand.startswith("Current"):
        return "A"
    return {
        "Voltage": "V",
        "Frequency": "Hz",
        "Temperature": "Celsius",
        "SoC": "Percent",
        "RPM": None,
    }.get(measurand)


def _aggregate_kind(key: str) -> str:
    """How the plain topic is computed when only per-phase values are sent."""
    if key.startswith("energy_") or (key.startswith("power_") and key != "power_factor"):
        return "sum"
    if key.startswith("current_"):
        return "max"  # the limiting phase is what a current limit acts on
    return "mean"


def format_number(value: float) -> str:
    value = round(value, 6)  # round first: 1.001 kWh * 1000 = 1000.9999999999999
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


@dataclass(slots=True)
class Reading:
    key: str
    phase: str | None  # "l1", "l1_n", ... or None
    value: float | str  # str only for SignedData
    unit: str | None
    measurand: str
    context: str | None
    location: str | None
    signed: bool


def normalise(sampled: dict) -> Reading | None:
    """One SampledValue → a Reading in published units, or None if unusable."""
    measurand = sampled.get("measurand")
    if not measurand:
        # The OCPP default is the energy register; a value in amps or volts is not one.
        if sampled.get("format") != "SignedData" and sampled.get("unit") not in ENERGY_UNITS:
            return None
        measurand = DEFAULT_MEASURAND
    key = MEASURAND_KEYS.get(measurand)
    if key is None:
        return None
    phase = sampled.get("phase")
    phase_key = phase.lower().replace("-", "_") if phase else None
    raw = sampled.get("value", "")
    if sampled.get("format") == "SignedData":
        return Reading(key, phase_key, raw, None, measurand, sampled.get("context"),
                       sampled.get("location"), True)
    unit = sampled.get("unit") or _default_unit(measurand)
    try:
        number = float(raw)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    scale = UNIT_SCALE.get(unit) if unit else None
    if scale:
        unit, factor = scale
        number *= factor
    return Reading(key, phase_key, number, unit, measurand, sampled.get("context"),
                   sampled.get("location"), False)


def _aggregate(key: str, values: list[float]) -> float:
    kind = _aggregate_kind(key)
    if kind == "sum":
        return sum(values)
    if kind == "max":
        return max(values)
    return sum(values) / len(values)


def sample_messages(sampled_values: list, base: str) -> tuple[list[tuple[str, str]], list[Reading]]:
    """Topics for one meterValue entry (one timestamp) under `base` (e.g. "state").

    Every value goes out; per-phase values on `<key>/<phase>`; the plain
    `<key>` is the phase-less value if sent, else an aggregate of the phases
    (sum for power/energy, max for current, mean otherwise; neutral excluded).
    """
    out: list[tuple[str, str]] = []
    readings: list[Reading] = []
    phases: dict[str, list[float]] = {}
    plain: set[str] = set()
    ordered = sampled_values
    if any(isinstance(s, dict) and s.get("context") in LOW_PRIORITY_CONTEXTS
           for s in sampled_values):
        ordered = sorted(sampled_values, key=lambda s: not (
            isinstance(s, dict) and s.get("context") in LOW_PRIORITY_CONTEXTS))
    for sampled in ordered:
        reading = normalise(sampled)
        if reading is None:
            continue
        readings.append(reading)
        key = reading.key
        if reading.signed:
            suffix = f"/{reading.phase}" if reading.phase else ""
            out.append((f"{base}/{key}{suffix}/signed_data", reading.value))
            continue
        text = format_number(reading.value)
        if reading.phase is None:
            out.append((f"{base}/{key}", text))
            plain.add(key)
        else:
            out.append((f"{base}/{key}/{reading.phase}", text))
            if reading.phase != "n":
                phases.setdefault(key, []).append(reading.value)
    for key, values in phases.items():
        if key not in plain:
            out.append((f"{base}/{key}", format_number(_aggregate(key, values))))
    return out, readings


@dataclass(slots=True)
class StationView:
    """What the mapping needs to know about a station beyond the event."""

    connector_topics: bool = False  # also publish state/connector/<n>/...


def event_messages(event: ev.Event, view: StationView) -> list[tuple[str, str]]:
    """Retained state messages (sub-topic relative to the station prefix, payload)."""
    handler = _HANDLERS.get(type(event))
    return handler(event, view) if handler else []


def _connected(e: ev.Connected, view: StationView) -> list[tuple[str, str]]:
    return [
        ("state/connection_state", "CONNECTED"),
        ("state/last_connected", e.at),
        ("state/last_seen", e.at),
        ("state/gateway", orjson.dumps({"id": e.gateway, "since": e.at}).decode()),
    ]


def _disconnected(e: ev.Disconnected, view: StationView) -> list[tuple[str, str]]:
    return [("state/connection_state", "DISCONNECTED"), ("state/last_disconnected", e.at)]


BOOT_KEYS = {
    "chargePointVendor": "charge_point_vendor",
    "chargePointModel": "charge_point_model",
    "firmwareVersion": "firmware_version",
    "chargePointSerialNumber": "charge_point_serial_number",
    "chargeBoxSerialNumber": "charge_box_serial_number",
    "meterType": "meter_type",
    "meterSerialNumber": "meter_serial_number",
    "iccid": "iccid",
    "imsi": "imsi",
}


def _booted(e: ev.Booted, view: StationView) -> list[tuple[str, str]]:
    out = [(f"state/{key}", str(e.payload[name])) for name, key in BOOT_KEYS.items()
           if name in e.payload]
    out.append(("state/last_boot", e.at))
    out.append(("state/last_seen", e.at))
    return out


def _heartbeat(e: ev.Heartbeat, view: StationView) -> list[tuple[str, str]]:
    return [("state/heartbeat", e.at), ("state/last_seen", e.at)]


def _status(e: ev.StatusChanged, view: StationView) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    fields = [("status", e.status), ("error_code", e.error_code)]
    if e.info is not None:
        fields.append(("status_info", e.info))
    if e.vendor_error_code is not None:
        fields.append(("vendor_error_code", e.vendor_error_code))
    if e.vendor_id is not None:
        fields.append(("status_vendor_id", e.vendor_id))
    if e.connector_id > 0:
        out.extend((f"state/{k}", v) for k, v in fields)
        out.append(("state/connector_id", str(e.connector_id)))
    if e.connector_id == 0 or view.connector_topics:
        out.extend((f"state/connector/{e.connector_id}/{k}", v) for k, v in fields)
    if e.timestamp:
        out.append(("state/status_timestamp", e.timestamp))
    out.append(("state/last_seen", e.at))
    return out


def _merge_same_timestamp(entries: list) -> list:
    """Consecutive entries with one timestamp are one sample (one value per entry firmware)."""
    merged: list = []
    for entry in entries:
        if merged and "timestamp" in entry and merged[-1].get("timestamp") == entry["timestamp"]:
            merged[-1] = {**merged[-1], "sampledValue": [
                *merged[-1].get("sampledValue", ()), *entry.get("sampledValue", ())]}
        else:
            merged.append(entry)
    return merged


def meter_samples(e: ev.MeterReading) -> list[tuple[dict, list[tuple[str, str]], list[Reading]]]:
    """(entry, messages, readings) per meterValue entry, computed once per event."""
    if e.samples is None:
        e.samples = [
            (entry, *sample_messages(entry.get("sampledValue", ()), "state"))
            for entry in _merge_same_timestamp(e.meter_value)
        ]
    return e.samples


def _meter(e: ev.MeterReading, view: StationView) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for entry, messages, _ in meter_samples(e):
        out.extend(messages)
        if view.connector_topics:
            base = f"state/connector/{e.connector_id}"
            out.extend((base + topic[5:], payload) for topic, payload in messages)
        if "timestamp" in entry:
            out.append(("state/meter_timestamp", str(entry["timestamp"])))
    if e.transaction_id is not None:
        out.append(("state/transaction_id", str(e.transaction_id)))
    out.append(("state/last_seen", e.at))
    return out


def _tx_started(e: ev.TransactionStarted, view: StationView) -> list[tuple[str, str]]:
    out = [
        ("state/transaction_id", str(e.transaction_id)),
        ("state/connector_id", str(e.connector_id)),
        ("state/id_tag", e.id_tag),
        ("state/meter_start", str(e.meter_start)),
        ("state/transaction_start", e.timestamp),
        ("state/last_seen", e.at),
    ]
    if view.connector_topics:
        out.append((f"state/connector/{e.connector_id}/transaction_id", str(e.transaction_id)))
    return out


def _tx_stopped(e: ev.TransactionStopped, view: StationView) -> list[tuple[str, str]]:
    out = [
        ("state/meter_stop", str(e.meter_stop)),
        ("state/meter_stop_reason", e.reason),
        ("state/transaction_stop", e.timestamp),
        ("state/last_transaction_id", str(e.transaction_id)),
        ("state/transaction_id", ""),
    ]
    if e.meter_start is not None:
        out.append(("state/session_energy", format_number(e.meter_stop - e.meter_start)))
    if view.connector_topics and e.connector_id is not None:
        out.append((f"state/connector/{e.connector_id}/transaction_id", ""))
    out.append(("state/last_seen", e.at))
    return out


def _authorized(e: ev.Authorized, view: StationView) -> list[tuple[str, str]]:
    return [
        ("state/authorize", e.id_tag),
        ("state/authorize_status", e.status),
        ("state/last_seen", e.at),
    ]


def _data_transfer(e: ev.DataTransferred, view: StationView) -> list[tuple[str, str]]:
    doc = {"vendor_id": e.vendor_id, "message_id": e.message_id, "data": e.data}
    return [("state/data_transfer", orjson.dumps(doc).decode()), ("state/last_seen", e.at)]


def _notification(e: ev.NotificationReceived, view: StationView) -> list[tuple[str, str]]:
    return [(f"state/{e.kind}", e.status), ("state/last_seen", e.at)]


def _charging_enabled(e: ev.ChargingEnabledChanged, view: StationView) -> list[tuple[str, str]]:
    return [("state/charging_enabled", "true" if e.enabled else "false")]


_HANDLERS = {
    ev.Connected: _connected,
    ev.Disconnected: _disconnected,
    ev.Booted: _booted,
    ev.Heartbeat: _heartbeat,
    ev.StatusChanged: _status,
    ev.MeterReading: _meter,
    ev.TransactionStarted: _tx_started,
    ev.TransactionStopped: _tx_stopped,
    ev.Authorized: _authorized,
    ev.DataTransferred: _data_transfer,
    ev.NotificationReceived: _notification,
    ev.ChargingEnabledChanged: _charging_enabled,
}


def station_prefix(basepath: str, station: str, use_station_name: bool) -> str:
    """`MQTT_BASEPATH` (already stripped of stray slashes) joined with one `/`."""
    if not use_station_name:
        return basepath
    return f"{basepath}/{station}" if basepath else station
