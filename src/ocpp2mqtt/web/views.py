"""What the page shows, from the typed state and the store. Pure: no I/O.

One table row per station (`station_row`), one document per station page
(`station_detail`), sessions as documents and as CSV (`sessions_csv`; the per-tag,
per-month sums come from the store's SQL). Numbers stay numbers (W, Wh, A); the page
formats them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from typing import Any

from ocpp2mqtt.state import Measurement, StationState, Value
from ocpp2mqtt.store import SessionRow

POWER = "power_active_import"
ENERGY = "energy_active_import_register"


def _number(value: Value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _reading(meter: Mapping[str, Measurement], name: str) -> float | None:
    m = meter.get(name)
    return m.value if m is not None else None


def _status(state: StationState) -> str | None:
    """The station's status: connector 1's, or every connector's where there are several."""
    statuses = [(n, c.values.get("status")) for n, c in sorted(state.connectors.items())
                if n > 0 and c.values.get("status")]
    if len(statuses) > 1:
        return ", ".join(f"{n}: {status}" for n, status in statuses)
    if statuses:
        return str(statuses[0][1])
    status = state.values.get("status")
    return str(status) if status is not None else None


def _meters(state: StationState) -> list[Mapping[str, Measurement]]:
    if state.many_connectors:
        return [c.meter for n, c in sorted(state.connectors.items()) if n > 0 and c.meter]
    return [state.meter]


def live_session_energy(state: StationState) -> float | None:
    """Wh charged in the running transaction (register − meter start), else the last
    finished session's."""
    if state.transaction_id is not None:
        start = _number(state.values.get("meter_start"))
        register = _reading(state.meter, ENERGY)
        if start is not None and register is not None and register >= start:
            return register - start
        return None
    return _number(state.values.get("session_energy"))


def station_row(state: StationState) -> dict[str, Any]:
    """One line of the stations table."""
    v = state.values
    connected = state.connected
    meters = _meters(state)
    powers = [p for p in (_reading(m, POWER) for m in meters) if p is not None]
    energy = _reading(state.meter, ENERGY)
    if energy is None:
        energies = [e for e in (_reading(m, ENERGY) for m in meters) if e is not None]
        energy = sum(energies) if energies else None
    return {
        "id": state.station,
        "connection": v.get("connection_state") or "UNKNOWN",
        "since": v.get("last_connected") if connected else v.get("last_disconnected"),
        "version": v.get("ocpp_version"),
        "status": _status(state),
        "power": sum(powers) if powers else None,
        "session_energy": live_session_energy(state),
        "energy": energy,
        "current_limit": _number(v.get("current_limit")),
        "firmware": v.get("firmware_version"),
        "vendor": v.get("charge_point_vendor"),
        "model": v.get("charge_point_model"),
        "last_seen": v.get("last_seen"),
        "transaction_id": state.transaction_id,
        "upstreams": {name: {"connected": u.connected, "queue": u.queue}
                      for name, u in sorted(state.upstreams.items())},
    }


def _measurements(meter: Mapping[str, Measurement]) -> list[dict[str, Any]]:
    return [{"key": name, "measurand": m.measurand, "value": m.value, "unit": m.unit,
             "phases": dict(m.phases), "context": m.context, "timestamp": m.timestamp}
            for name, m in sorted(meter.items()) if m.value is not None or m.phases]


def _plain(values: Mapping[str, Value]) -> dict[str, Value]:
    return {name: value for name, value in sorted(values.items())
            if not isinstance(value, (dict, list))}


def station_detail(state: StationState) -> dict[str, Any]:
    """Everything the station page shows: values, readings per connector and phase, the
    running transaction."""
    v = state.values
    transaction = None
    if state.transaction_id is not None:
        transaction = {
            "id": state.transaction_id, "connector": v.get("connector_id"),
            "id_tag": v.get("id_tag"), "meter_start": v.get("meter_start"),
            "start": v.get("transaction_start"), "energy": live_session_energy(state),
        }
    connectors = []
    for n, holder in sorted(state.connectors.items()):
        connectors.append({"id": n, "values": _plain(holder.values),
                           "meter": _measurements(holder.meter)})
    return {
        "row": station_row(state),
        "values": _plain(v),
        "meter": _measurements(state.meter),
        "connectors": connectors,
        "transaction": transaction,
    }


# --- sessions ------------------------------------------------------------------------------
def session_document(row: SessionRow) -> dict[str, Any]:
    return {"station": row.station, "transaction_id": row.transaction_id,
            "connector": row.connector_id, "id_tag": row.id_tag,
            "started_at": row.started_at, "stopped_at": row.stopped_at,
            "meter_start": row.meter_start, "meter_stop": row.meter_stop,
            "energy": row.energy, "reason": row.reason, "ended": row.ended}


CSV_COLUMNS = ("station", "transaction_id", "connector", "id_tag", "started_at", "stopped_at",
               "meter_start_wh", "meter_stop_wh", "energy_kwh", "reason")


def _cell(value: Any) -> Any:
    # A tag or reason comes from the charger: never let a spreadsheet run it as a formula.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def sessions_csv(rows: Iterable[SessionRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        # Numbers stay numbers (a meter reset gives a negative energy, not a text).
        energy = "" if row.energy is None else round(row.energy / 1000, 3)
        writer.writerow([_cell(row.station), _cell(row.transaction_id), row.connector_id,
                         _cell(row.id_tag), _cell(row.started_at), _cell(row.stopped_at),
                         _cell(row.meter_start), _cell(row.meter_stop), energy,
                         _cell(row.reason)])
    return out.getvalue()
