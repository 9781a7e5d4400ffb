"""Sampled values (OCPP-J wire shape) → typed readings in published units. Pure.

Shared by every OCPP version: 2.0.1 names its measurands, phases and units the
same way (its unitOfMeasure multiplier is applied by its own edge before calling
`normalise`). Keys, units and aggregates: measurands.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ocpp2mqtt.events import Reading, Sample
from ocpp2mqtt.measurands import DECIMALS, MEASURAND_KEYS, UNIT_SCALE, default_unit

DEFAULT_MEASURAND = "Energy.Active.Import.Register"  # OCPP: a sampled value without one
ENERGY_UNITS = (None, "", "Wh", "kWh")
# Readings taken at another moment than the entry's sample (the transaction's start,
# an interruption): they go first so a live value of the same key wins.
LOW_PRIORITY_CONTEXTS = frozenset(
    {"Transaction.Begin", "Transaction.End", "Interruption.Begin", "Interruption.End"}
)

def normalise(sampled: Mapping[str, Any]) -> Reading | None:
    """One SampledValue (1.6 wire names) → a Reading in published units, or None if unusable."""
    get = sampled.get
    fmt = get("format")
    description = (get("measurand"), get("phase"), get("unit"), fmt == "SignedData",
                   get("context"), get("location"))
    try:
        found = _descriptions.get(description)
        if found is None:
            found = _describe(*description)
    except TypeError:  # not text (the schemas let none through): unusable
        return None
    key, measurand, phase_key, unit, factor = found
    if key is None:
        return None
    raw = get("value", "")
    if fmt == "SignedData":
        return Reading(key, measurand, phase_key, str(raw), None, description[4],
                       description[5], True)
    try:
        number = float(raw)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    if factor:
        number = round(number * factor, DECIMALS)
    return Reading(key, measurand, phase_key, number, unit, description[4], description[5],
                   False)


# Chargers describe their values the same way every time: what a description means
# (key, measurand, phase, unit, scale) is worked out once. Bounded: descriptions are
# the charger's text.
_descriptions: dict[tuple[Any, ...], tuple[Any, ...]] = {}
_UNUSABLE = (None, None, None, None, None)


def _describe(measurand: Any, phase: Any, unit: Any, signed: bool, context: Any,
              location: Any) -> tuple[Any, ...]:
    description = (measurand, phase, unit, signed, context, location)
    if len(_descriptions) > 4096:
        _descriptions.clear()
    if not measurand:
        # The OCPP default is the energy register; a value in amps or volts is not one.
        if not signed and unit not in ENERGY_UNITS:
            _descriptions[description] = _UNUSABLE
            return _UNUSABLE
        measurand = DEFAULT_MEASURAND
    key = MEASURAND_KEYS.get(measurand) if isinstance(measurand, str) else None
    if key is None:
        _descriptions[description] = _UNUSABLE
        return _UNUSABLE
    phase_key = phase.lower().replace("-", "_") if isinstance(phase, str) and phase else None
    unit = unit or default_unit(measurand)
    factor = None
    scale = UNIT_SCALE.get(unit) if unit else None
    if scale:
        unit, factor = scale
    found = _descriptions[description] = (key, measurand, phase_key, unit, factor)
    return found


def _readings(sampled_values: list[Any]) -> list[Reading]:
    """The usable readings of one sample; those of another moment (Transaction.Begin, …)
    first, so the live value of a key is the one that stays."""
    out = []
    later = False
    for sampled in sampled_values:
        if isinstance(sampled, dict):
            reading = normalise(sampled)
            if reading is not None:
                out.append(reading)
                if reading.context in LOW_PRIORITY_CONTEXTS:
                    later = True
    if later:
        out.sort(key=lambda r: r.context not in LOW_PRIORITY_CONTEXTS)  # stable
    return out


def samples(entries: Iterable[Mapping[str, Any]]) -> list[Sample]:
    """meterValue entries → one Sample per instant.

    Consecutive entries with one timestamp are one sample (firmware that sends one
    value per entry); values of another moment (Transaction.Begin, …) come first in
    their sample, so the live value of a key is the one that stays.
    """
    merged: list[tuple[Any, list[Any]]] = []
    for entry in entries:
        timestamp = entry.get("timestamp")
        sampled = list(entry.get("sampledValue", ()))
        if merged and timestamp is not None and merged[-1][0] == timestamp:
            merged[-1][1].extend(sampled)
        else:
            merged.append((timestamp, sampled))
    return [Sample(None if timestamp is None else str(timestamp), _readings(sampled))
            for timestamp, sampled in merged]


def sampled_2x(sampled: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One OCPP 2.x SampledValue → the 1.6-shaped values `normalise` reads.

    `unitOfMeasure.multiplier` is applied (value × 10^multiplier) before the unit is
    normalised; a `signedMeterValue` becomes a second, signed value beside the number.
    """
    unit = sampled.get("unitOfMeasure") or {}
    common = {key: sampled[key] for key in ("measurand", "phase", "context", "location")
              if key in sampled}
    out: list[dict[str, Any]] = []
    try:
        number = float(sampled.get("value"))  # type: ignore[arg-type]
        multiplier = int(unit.get("multiplier", 0))
        if -30 <= multiplier <= 30:
            out.append({**common, "value": round(number * 10.0 ** multiplier, DECIMALS),
                        **({"unit": unit["unit"]} if unit.get("unit") else {})})
    except (TypeError, ValueError, OverflowError):
        pass  # not a number: dropped, like a 1.6 value that is not one
    signed = sampled.get("signedMeterValue")
    if isinstance(signed, dict) and isinstance(signed.get("signedMeterData"), str):
        out.append({**common, "value": signed["signedMeterData"], "format": "SignedData"})
    return out


def samples_2x(entries: Iterable[Mapping[str, Any]]) -> list[Sample]:
    """OCPP 2.x meterValue entries → one Sample per instant (as `samples`)."""
    return samples({"timestamp": entry.get("timestamp"),
                    "sampledValue": [v for sampled in entry.get("sampledValue", ())
                                     for v in sampled_2x(sampled)]}
                   for entry in entries)
