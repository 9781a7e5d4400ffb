"""Sampled values → typed readings in published units. Pure: no I/O, no clocks.

The measurand table is derived from the `ocpp` package's enum, so every OCPP
measurand has a key. Shared by every OCPP version: 2.0.1 names its measurands,
phases and units the same way (its unitOfMeasure multiplier is applied by its
own edge before calling `normalise`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ocpp.v16.enums import Measurand

from ocpp2mqtt.events import Reading, Sample

DEFAULT_MEASURAND = Measurand.energy_active_import_register.value
ENERGY_UNITS = (None, "", "Wh", "kWh")
# Readings taken at another moment than the entry's sample (the transaction's start,
# an interruption): they go first so a live value of the same key wins.
LOW_PRIORITY_CONTEXTS = frozenset(
    {"Transaction.Begin", "Transaction.End", "Interruption.Begin", "Interruption.End"}
)

# "Energy.Active.Import.Register" → "energy_active_import_register", "SoC" → "soc".
MEASURAND_KEYS: dict[str, str] = {m.value: m.name for m in Measurand}
MEASURANDS_BY_KEY: dict[str, str] = {key: name for name, key in MEASURAND_KEYS.items()}

# Units the charger may send, normalised to the unit we publish (× factor).
UNIT_SCALE: dict[str, tuple[str, float]] = {
    "kWh": ("Wh", 1000.0),
    "kW": ("W", 1000.0),
    "kvarh": ("varh", 1000.0),
    "kvar": ("var", 1000.0),
    "kVA": ("VA", 1000.0),
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


def normalise(sampled: Mapping[str, Any]) -> Reading | None:
    """One SampledValue (1.6 wire names) → a Reading in published units, or None if unusable."""
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
    phase_key = phase.lower().replace("-", "_") if isinstance(phase, str) and phase else None
    raw = sampled.get("value", "")
    context, location = sampled.get("context"), sampled.get("location")
    if sampled.get("format") == "SignedData":
        return Reading(key, measurand, phase_key, str(raw), None, context, location, True)
    unit = sampled.get("unit") or default_unit(measurand)
    try:
        number = float(raw)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    scale = UNIT_SCALE.get(unit) if unit else None
    if scale:
        unit, factor = scale
        number = round(number * factor, DECIMALS)
    return Reading(key, measurand, phase_key, number, unit, context, location, False)


def _priority_order(sampled_values: list) -> list:
    if any(isinstance(s, dict) and s.get("context") in LOW_PRIORITY_CONTEXTS
           for s in sampled_values):
        return sorted(sampled_values, key=lambda s: not (
            isinstance(s, dict) and s.get("context") in LOW_PRIORITY_CONTEXTS))
    return sampled_values


def samples(entries: Iterable[Mapping[str, Any]]) -> list[Sample]:
    """meterValue entries → one Sample per instant.

    Consecutive entries with one timestamp are one sample (firmware that sends one
    value per entry); values of another moment (Transaction.Begin, …) come first in
    their sample, so the live value of a key is the one that stays.
    """
    merged: list[tuple[Any, list]] = []
    for entry in entries:
        timestamp = entry.get("timestamp")
        sampled = list(entry.get("sampledValue", ()))
        if merged and timestamp is not None and merged[-1][0] == timestamp:
            merged[-1][1].extend(sampled)
        else:
            merged.append((timestamp, sampled))
    return [
        Sample(None if timestamp is None else str(timestamp),
               [r for r in map(normalise, _priority_order(sampled)) if r is not None])
        for timestamp, sampled in merged
    ]
