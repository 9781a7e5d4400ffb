"""The measurands of OCPP as the gateway publishes them: keys, units, phase aggregates.

Version-neutral (OCPP 2.0.1 names measurands, phases and units as 1.6 does) and
pure. The table is derived from the `ocpp` package's enum, so every measurand
has a key.
"""

from __future__ import annotations

from ocpp.v16.enums import Measurand
from ocpp.v21.enums import MeasurandEnumType as Measurand21
from ocpp.v201.enums import MeasurandEnumType as Measurand201

# "Energy.Active.Import.Register" → "energy_active_import_register", "SoC" → "soc":
# every measurand of 1.6, 2.0.1 and 2.1 (the `ocpp` package's enum names).
MEASURAND_KEYS: dict[str, str] = {
    m.value: m.name for enum in (Measurand21, Measurand201, Measurand) for m in enum
}
MEASURANDS_BY_KEY: dict[str, str] = {key: name for name, key in MEASURAND_KEYS.items()}

# Units the charger may send, normalised to the unit we publish (× factor).
UNIT_SCALE: dict[str, tuple[str, float]] = {
    "kWh": ("Wh", 1000.0),
    "kW": ("W", 1000.0),
    "kvarh": ("varh", 1000.0),
    "kvar": ("var", 1000.0),
    "kVA": ("VA", 1000.0),
    "kVAh": ("VAh", 1000.0),
}
_OTHER_DEFAULT_UNITS: dict[str, str | None] = {
    "Voltage": "V",
    "Frequency": "Hz",
    "Temperature": "Celsius",
    "SoC": "Percent",
    "RPM": None,
}


def default_unit(measurand: str) -> str | None:
    """The unit a reading without one is in.

    OCPP says a missing unit means "Wh", which only makes sense for energy; firmware
    often omits the unit for everything, so each measurand family gets its natural unit.
    """
    if measurand.startswith("Energy.Reactive"):
        return "varh"
    if measurand.startswith("Energy.Apparent"):
        return "VAh"
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
    return _OTHER_DEFAULT_UNITS.get(measurand)


def aggregate_kind(key: str) -> str:
    """How the phase-less value is computed when only per-phase values are sent."""
    if key.startswith("energy_") or (key.startswith("power_") and key != "power_factor"):
        return "sum"
    if key.startswith("current_"):
        return "max"  # the limiting phase is what a current limit acts on
    return "mean"


# Values are rounded to this many decimals, so unit scaling and averaging leave no float
# noise (1.001 kWh × 1000 = 1000.9999999999999 Wh; the mean of three voltages).
DECIMALS = 6


def aggregate(key: str, values: list[float]) -> float:
    kind = aggregate_kind(key)
    if kind == "sum":
        return round(sum(values), DECIMALS)
    if kind == "max":
        return max(values)
    return round(sum(values) / len(values), DECIMALS)
