"""OCPP 1.6J frames the simulated chargers send, pre-rendered so building one costs ~1 µs."""

from __future__ import annotations

import calendar
import time

import orjson

_UID, _TS, _KWH = "@@UID@@", "@@TS@@", "@@KWH@@"

# The per-key state topics the gateway publishes for each MeterValues below: 3 phase
# voltages + their mean, 3 phase currents + their max, power, energy, meter_timestamp,
# transaction_id, last_seen.
PER_KEY_TOPICS = (
    "voltage/l1_n", "voltage/l2_n", "voltage/l3_n", "voltage",
    "current_import/l1", "current_import/l2", "current_import/l3", "current_import",
    "power_active_import", "energy_active_import_register",
    "meter_timestamp", "transaction_id", "last_seen",
)


def iso_utc(t: float) -> str:
    """Unix time → ISO 8601 UTC with microseconds, e.g. 2025-01-02T03:04:05.123456Z."""
    seconds = int(t)
    micros = round((t - seconds) * 1e6)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


def parse_iso_utc(text: str) -> float:
    """Inverse of `iso_utc` (only that format)."""
    head, _, frac = text.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")


def sampled_values(kwh: str) -> list[dict]:
    """Eight sampled values as a three-phase AC charger reports them (~1 KB as a frame)."""
    common = {"context": "Sample.Periodic", "location": "Outlet"}
    out = []
    for i, phase in enumerate(("L1-N", "L2-N", "L3-N"), start=1):
        out.append({"value": f"{229 + i}.{i}", **common, "measurand": "Voltage",
                    "phase": phase, "unit": "V"})
    for i, phase in enumerate(("L1", "L2", "L3"), start=1):
        out.append({"value": f"{15 + i}.5", **common, "measurand": "Current.Import",
                    "phase": phase, "unit": "A"})
    out.append({"value": "11.04", **common, "measurand": "Power.Active.Import", "unit": "kW"})
    out.append({"value": kwh, **common, "measurand": "Energy.Active.Import.Register",
                "unit": "kWh"})
    return out


def meter_values_payload(timestamp: str, kwh: str, transaction_id: int = 1) -> dict:
    return {
        "connectorId": 1,
        "transactionId": transaction_id,
        "meterValue": [{"timestamp": timestamp, "sampledValue": sampled_values(kwh)}],
    }


class MeterValuesFrame:
    """`build(uid, timestamp, kwh)` → the CALL frame as bytes, by string splicing."""

    def __init__(self, transaction_id: int = 1):
        text = orjson.dumps(
            [2, _UID, "MeterValues", meter_values_payload(_TS, _KWH, transaction_id)]
        ).decode()
        a, rest = text.split(_UID)
        b, rest = rest.split(_TS)
        c, d = rest.split(_KWH)
        self._parts = (a.encode(), b.encode(), c.encode(), d.encode())

    def build(self, uid: str, timestamp: str, kwh: str) -> bytes:
        a, b, c, d = self._parts
        return b"".join((a, uid.encode(), b, timestamp.encode(), c, kwh.encode(), d))


def boot_notification(uid: str, station: str) -> bytes:
    return orjson.dumps([2, uid, "BootNotification", {
        "chargePointVendor": "BenchCo", "chargePointModel": "Sim-22",
        "chargePointSerialNumber": station[-25:], "firmwareVersion": "1.2.3",
    }])


def status_notification(uid: str, status: str = "Available") -> bytes:
    return orjson.dumps([2, uid, "StatusNotification", {
        "connectorId": 1, "errorCode": "NoError", "status": status,
    }])
