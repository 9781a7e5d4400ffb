"""What a charger takes as a current limit, and the order to try the ways of setting one.
Pure.

Chargers differ (docs/chargers.md): some reject TxDefaultProfile, take only stack
level 0, only Absolute profiles, only watts, only a few fixed currents, or have no
smart charging at all but a vendor configuration key. `Capabilities` is what the
charger announces (1.6 GetConfiguration, 2.x GetVariables); `Knowledge` adds what
the gateway learned by trying, and is persisted per station so the next limit, and
the next start of the gateway, go straight to what works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# 1.6 profile purposes, in the order a command tries them (CURRENT_LIMIT_PURPOSE first);
# load balancing starts with TxProfile during a transaction: it ends with the session.
PURPOSES = ("TxDefaultProfile", "TxProfile", "ChargePointMaxProfile")
FAILSAFE_PURPOSE = "TxDefaultProfile"
FAILSAFE_STACK_LEVEL = 0
FAILSAFE_ID_OFFSET = 100  # the failsafe profile's id: CURRENT_LIMIT_PROFILE_ID + 100

# Keys read when probing a 1.6 charger.
PROBE_KEYS_16 = (
    "SupportedFeatureProfiles", "ChargeProfileMaxStackLevel",
    "ChargingScheduleAllowedChargingRateUnit", "ChargingScheduleMaxPeriods",
    "ConnectorSwitch3to1PhaseSupported", "ACPhaseSwitchingSupported",
)
# Vendor configuration keys that take the maximum current in amps, for chargers without
# (working) smart charging; docs/chargers.md says where each comes from. Keys in other
# units (mA, W) are left out on purpose: a wrong unit would be a wrong current.
VENDOR_CURRENT_KEYS = ("Station-MaxCurrent",  # Alfen Eve
                       "chargingALimitConn1",  # Wallbox Copper SB, Pulsar Plus/Pro
                       "maxintensitysocket",  # Schneider EVlink
                       "G_MaxCurrent")  # Growatt Thor
# 2.x: SmartChargingCtrlr variables read when probing (OCPP 2.0.1 Part 2, appendix).
PROBE_VARIABLES_2X = ("Available", "Enabled", "ProfileStackLevel", "RateUnit",
                      "PeriodsPerSchedule", "Phases3to1", "ACPhaseSwitchingSupported")

STATUSES = ("applied", "pending", "rejected", "unsupported")


@dataclass(slots=True)
class Capabilities:
    """What the charger says about smart charging; None: it did not say."""

    smart_charging: bool | None = None
    max_stack_level: int | None = None
    units: tuple[str, ...] = ("A", "W")
    max_periods: int | None = None
    phase_switch: bool | None = None
    vendor_key: str | None = None


@dataclass(frozen=True, slots=True)
class Way:
    """One way of setting a limit: a profile shape, or a vendor key (`purpose` = config:<key>)."""

    purpose: str
    stack_level: int = 0
    kind: str = "Relative"
    unit: str = "A"

    @property
    def source(self) -> str:
        """What `state/current_limit_source` says."""
        return self.purpose

    @property
    def is_key(self) -> bool:
        return self.purpose.startswith("config:")

    def describe(self) -> str:
        if self.is_key:
            return self.purpose
        return f"{self.purpose} stack {self.stack_level} {self.kind} {self.unit}"

    def to_json(self) -> list[Any]:
        return [self.purpose, self.stack_level, self.kind, self.unit]

    @classmethod
    def from_json(cls, raw: Any) -> Way:
        purpose, stack, kind, unit = raw
        return cls(str(purpose), int(stack), str(kind), str(unit))


@dataclass(slots=True)
class Pins:
    """The static settings (issue 9) the user set explicitly: they are not varied."""

    purpose: str | None = None
    stack_level: int | None = None
    kind: str | None = None
    unit: str | None = None  # "A": CURRENT_LIMIT_UNIT=A


@dataclass(slots=True)
class Knowledge:
    """What the gateway knows about one station's current control (persisted)."""

    caps: Capabilities = field(default_factory=Capabilities)
    probed: bool = False
    firmware: str | None = None
    works: dict[str, Way] = field(default_factory=dict)  # purpose → the way it was accepted
    fails: set[str] = field(default_factory=set)  # purposes every variant of which failed
    no_profiles: bool = False  # SetChargingProfile answered NotImplemented/NotSupported

    def to_json(self) -> dict[str, Any]:
        c = self.caps
        return {
            "caps": {"smart_charging": c.smart_charging, "max_stack_level": c.max_stack_level,
                     "units": list(c.units), "max_periods": c.max_periods,
                     "phase_switch": c.phase_switch, "vendor_key": c.vendor_key},
            "probed": self.probed, "firmware": self.firmware,
            "works": {p: w.to_json() for p, w in self.works.items()},
            "fails": sorted(self.fails), "no_profiles": self.no_profiles,
        }

    @classmethod
    def from_json(cls, raw: Any) -> Knowledge:
        """Tolerant: a row written by another version comes back as far as it can."""
        k = cls()
        if not isinstance(raw, dict):
            return k
        c = raw.get("caps") or {}
        try:
            k.caps = Capabilities(c.get("smart_charging"), c.get("max_stack_level"),
                                  tuple(c.get("units") or ("A", "W")), c.get("max_periods"),
                                  c.get("phase_switch"), c.get("vendor_key"))
            k.works = {p: Way.from_json(w) for p, w in (raw.get("works") or {}).items()}
        except (TypeError, ValueError):
            return cls()
        k.probed = bool(raw.get("probed"))
        k.firmware = raw.get("firmware")
        k.fails = set(raw.get("fails") or ())
        k.no_profiles = bool(raw.get("no_profiles"))
        return k


# --- probing -----------------------------------------------------------------------------
def capabilities_16(answer: Any) -> Capabilities:
    """A GetConfiguration answer → Capabilities (keys the charger did not report: None)."""
    values: dict[str, str] = {}
    for item in answer.get("configurationKey") or () if isinstance(answer, dict) else ():
        if isinstance(item, dict) and isinstance(item.get("key"), str):
            values[item["key"]] = str(item.get("value") or "")
    caps = Capabilities()
    profiles = values.get("SupportedFeatureProfiles")
    if profiles is not None:
        caps.smart_charging = "smartcharging" in profiles.replace(" ", "").lower()
    caps.max_stack_level = _int(values.get("ChargeProfileMaxStackLevel"))
    units = values.get("ChargingScheduleAllowedChargingRateUnit")
    if units:
        named = tuple(u for word, u in (("current", "A"), ("power", "W"))
                      if word in units.lower())
        caps.units = named or caps.units
    caps.max_periods = _int(values.get("ChargingScheduleMaxPeriods"))
    switches = [values[k] for k in ("ConnectorSwitch3to1PhaseSupported",
                                     "ACPhaseSwitchingSupported") if k in values]
    if switches:
        caps.phase_switch = any(v.strip().lower() == "true" for v in switches)
    caps.vendor_key = next((k for k in VENDOR_CURRENT_KEYS if k in values), None)
    return caps


def probe_request_16() -> dict[str, Any]:
    return {"key": [*PROBE_KEYS_16, *VENDOR_CURRENT_KEYS]}


def probe_request_2x() -> dict[str, Any]:
    return {"getVariableData": [
        {"component": {"name": "SmartChargingCtrlr"}, "variable": {"name": name}}
        for name in PROBE_VARIABLES_2X]}


def capabilities_2x(answer: Any) -> Capabilities:
    """A GetVariables answer over SmartChargingCtrlr → Capabilities."""
    values: dict[str, str] = {}
    results = answer.get("getVariableResult") or () if isinstance(answer, dict) else ()
    for item in results:
        if isinstance(item, dict) and item.get("attributeStatus") == "Accepted":
            name = (item.get("variable") or {}).get("name")
            if isinstance(name, str):
                values[name] = str(item.get("attributeValue") or "")
    caps = Capabilities()
    available, enabled = values.get("Available"), values.get("Enabled")
    if available is not None or enabled is not None:
        caps.smart_charging = all(v is None or v.lower() == "true" for v in (available, enabled))
    caps.max_stack_level = _int(values.get("ProfileStackLevel"))
    if values.get("RateUnit"):
        named = tuple(u for u in ("A", "W") if u in values["RateUnit"].split(","))
        caps.units = named or caps.units
    caps.max_periods = _int(values.get("PeriodsPerSchedule"))
    switches = [values[k] for k in ("Phases3to1", "ACPhaseSwitchingSupported") if k in values]
    if switches:
        caps.phase_switch = any(v.lower() == "true" for v in switches)
    return caps


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


# --- the order to try ------------------------------------------------------------------------
def ways(knowledge: Knowledge, pins: Pins, *, unit: str, in_transaction: bool,
         balancing: bool, configured: Way) -> list[Way]:
    """Every way to try, best first: per purpose what worked before, else its variants
    (stack level, unit, kind); a vendor key last. `unit`: the request's unit, tried
    first. `balancing`: a limit over the failsafe profile (never in the failsafe's slot)."""
    caps = knowledge.caps
    if pins.purpose is not None:
        purposes: tuple[str, ...] = (pins.purpose,)
    elif balancing:
        purposes = ("TxProfile", "TxDefaultProfile", "ChargePointMaxProfile")
    else:
        purposes = (configured.purpose, *(p for p in PURPOSES if p != configured.purpose))
    out: list[Way] = []
    if not knowledge.no_profiles and caps.smart_charging is not False:
        for purpose in purposes:
            if purpose == "TxProfile" and not in_transaction:
                continue
            remembered = knowledge.works.get(purpose)
            variants = _variants(purpose, caps, pins, unit, configured)
            if balancing and purpose == FAILSAFE_PURPOSE:
                variants = [w for w in variants if w.stack_level != FAILSAFE_STACK_LEVEL]
                if remembered is not None and remembered.stack_level == FAILSAFE_STACK_LEVEL:
                    remembered = None
            if remembered is not None and remembered in variants:
                out.append(remembered)
                continue
            if purpose in knowledge.fails:
                continue
            out.extend(variants)
    if caps.vendor_key and pins.purpose is None:
        out.append(Way(f"config:{caps.vendor_key}", unit="A"))
    return out


def _variants(purpose: str, caps: Capabilities, pins: Pins, unit: str,
              configured: Way) -> list[Way]:
    top = caps.max_stack_level
    if pins.stack_level is not None:
        stacks: list[int] = [pins.stack_level]
    else:
        stacks = [configured.stack_level, 0, *(() if top is None else (top,))]
        if top is not None:
            stacks = [min(s, top) for s in stacks]
        stacks = list(dict.fromkeys(stacks))
    units = [pins.unit] if pins.unit else [u for u in dict.fromkeys((unit, "A", "W"))
                                           if u in caps.units] or [unit]
    kinds = [pins.kind] if pins.kind else list(dict.fromkeys((configured.kind, "Absolute",
                                                              "Relative")))
    return [Way(purpose, s, k, u) for s in stacks for u in units for k in kinds]


# --- the value -----------------------------------------------------------------------------
def round_to_steps(amps: float, steps: tuple[float, ...] | None, min_current: float,
                   whole_amps: bool) -> float:
    """The current to offer: the largest step ≤ `amps`; below the minimum, 0 (pause)."""
    if steps:
        fitting = [s for s in steps if s <= amps + 1e-9]
        return max(fitting) if fitting else 0.0
    if whole_amps:
        amps = float(math.floor(amps + 1e-9))
    return 0.0 if amps < min_current else round(amps, 1)


# --- kind to the flash -------------------------------------------------------------------
def when_to_write(in_force: float | None, wanted: float, last_write: float | None, now: float,
                  min_interval: float, hysteresis: float) -> float | None:
    """When to write `wanted` (amps): `now`, a later time, or None (no write needed).

    A decrease is written at once (it may be needed to stay under a fuse); an increase
    only when it is more than `hysteresis` and at most once per `min_interval`."""
    if in_force is None:
        return now
    if wanted < in_force - 1e-9:
        return now
    if wanted - in_force <= hysteresis + 1e-9 and not (in_force == 0 and wanted > 0):
        return None
    if last_write is not None and now - last_write < min_interval:
        return last_write + min_interval
    return now
