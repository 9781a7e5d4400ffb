"""`ocpp2mqtt simulate`: OCPP 1.6J, 2.0.1 and 2.1 charge point simulator (issue 7).

Runs N simulated charge points (`SIM0001`, `SIM0002`, … with `--prefix SIM`)
against a central system, each over its own WebSocket with the `ocpp`
library's ChargePoint of the version chosen with `--ocpp` (default 1.6),
offering only that subprotocol. Every 1.6 charge point:

1. boots (BootNotification, retried until Accepted) and reports connector 0
   and connector 1 `Available`;
2. loops charging sessions: a car plugs in (`Preparing`), Authorize,
   StartTransaction, `Charging`, three-phase MeterValues every `--interval`
   seconds (voltage L1-N/L2-N/L3-N, current L1/L2/L3, offered current, active
   power in W, the energy register in Wh integrated from power × time, and the
   car's SoC), StopTransaction (`EVDisconnected`) after `--session-seconds`,
   `Finishing`, `Available`, a Heartbeat, then `--idle-seconds` until the
   next car;
3. answers the central system: Reset (reboots: stops the transaction, boots
   again), RemoteStart/StopTransaction, SetChargingProfile (the current the
   car draws follows the limit, at once), ClearChargingProfile,
   ChangeAvailability, UnlockConnector, TriggerMessage, GetConfiguration,
   ChangeConfiguration (HeartbeatInterval and MeterValueSampleInterval act
   at once), DataTransfer, ClearCache, GetLocalListVersion.

With `--ocpp 2.0.1` or `--ocpp 2.1` the same station (same physics: the
`Charger` class) speaks OCPP 2.x: BootNotification, StatusNotification
(Available/Occupied/Unavailable) for EVSE 1 connector 1, TransactionEvent
Started/Updated/Ended with a UUID transaction id, seqNo from 0, chargingState
EVConnected → Charging (or Suspended…), periodic meterValues (unitOfMeasure,
contexts Transaction.Begin, Sample.Periodic, Transaction.End); it answers
RequestStart/StopTransaction, Reset (Immediate at once; OnIdle after the
transaction), UnlockConnector, ChangeAvailability, TriggerMessage,
Set/ClearChargingProfile, Get/SetVariables and GetBaseReport (→ NotifyReport)
for a small device model (`DEVICE_MODEL`), DataTransfer.

`--quirk` makes a charger behave like real ones do with current limits
(docs/load-balancing.md, `QUIRKS`): it rejects TxDefaultProfile, takes only stack
level 0, only Absolute profiles, only watts, only 6/8/10/13/16 A, has no smart
charging but a vendor key (`Station-MaxCurrent`), or switches phases.

A lost connection is retried with backoff; a transaction goes on while
offline and is reported after reconnecting. `--duration` stops after N
seconds, ending open transactions with reason `Local` (SIGINT/SIGTERM too).
`--password` sends HTTP Basic credentials (user = station id) and `wss://`
URLs use TLS (`--ca-file` for a private CA): OCPP security profiles 1 and 2.

    ocpp2mqtt simulate --url ws://127.0.0.1:3000 --stations 10 --interval 5 \
        --session-seconds 600 --idle-seconds 60 [--ocpp 2.0.1]

Programmatic use (tests): `await simulate(SimConfig(...), stop_event)`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import math
import random
import signal
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar, cast

import websockets
from ocpp import v21, v201
from ocpp.exceptions import NotSupportedError, OCPPError
from ocpp.routing import after as _after
from ocpp.routing import on as _on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v21.enums import Action as Action21
from ocpp.v201.enums import Action as Action201
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from ocpp2mqtt import __version__

log = logging.getLogger("ocpp2mqtt.simulator")

_F = TypeVar("_F", bound=Callable[..., Any])
_N = TypeVar("_N", int, float)


# The ocpp library has no type information: typed views of its handler decorators
# (both wrap the handler with functools.wraps, keeping its signature).
def on(action: str) -> Callable[[_F], _F]:
    return cast("Callable[[_F], _F]", _on(action))


def after(action: str) -> Callable[[_F], _F]:
    return cast("Callable[[_F], _F]", _after(action))


VENDOR = "ocpp2mqtt"
MIN_CURRENT = 6.0  # IEC 61851: below 6 A offered, the car pauses
# Real chargers' ways with current limits (docs/chargers.md), one flag each.
QUIRKS = {
    "no_tx_default": "rejects TxDefaultProfile (EVBox after an update)",
    "stack0": "announces 10 stack levels, rejects all but 0 (Alfen 1.8.0)",
    "absolute_only": "rejects Relative profiles (Easee)",
    "watts_only": "announces and takes only W (Huawei FusionCharger)",
    "steps": "takes only 6, 8, 10, 13 or 16 A (NEcharge)",
    "no_smart_charging": "no SmartCharging profile; the vendor key Station-MaxCurrent",
    "phase_switch": "announces ConnectorSwitch3to1PhaseSupported and follows numberPhases",
}
STEPS = (0.0, 6.0, 8.0, 10.0, 13.0, 16.0)
VENDOR_KEY = "Station-MaxCurrent"
ALL_MEASURANDS = (
    "Voltage,Current.Import,Current.Offered,Power.Active.Import,"
    "Energy.Active.Import.Register,SoC"
)


@dataclass
class SimConfig:
    url: str = "ws://127.0.0.1:3000"
    stations: int = 1
    interval: float = 10.0  # seconds between MeterValues (MeterValueSampleInterval)
    prefix: str = "SIM"
    session_seconds: float = 120.0  # how long a car stays plugged in
    idle_seconds: float = 30.0  # between sessions (the first one: random up to this)
    duration: float | None = None  # stop after this many seconds
    max_current: float = 16.0  # A per phase the charger/car draw at most
    phases: int = 3
    voltage: float = 230.0
    battery_kwh: float = 60.0
    soc: bool = True
    id_tag: str = "SIMTAG01"
    seed: int | None = None
    response_timeout: float = 30.0
    password: str | None = None  # HTTP Basic auth (security profile 1); user = station id
    ca_file: str | None = None  # for wss:// with a private CA
    insecure: bool = False  # wss:// without certificate verification (testing only)
    ocpp: str = "1.6"  # "1.6", "2.0.1" or "2.1": the only subprotocol offered
    quirks: tuple[str, ...] = ()  # QUIRKS
    firmware: str = __version__  # reported in BootNotification

    def station_ids(self) -> list[str]:
        return [f"{self.prefix}{i:04d}" for i in range(1, self.stations + 1)]


@dataclass
class StationStats:
    station: str
    connects: int = 0
    boots: int = 0
    sessions_started: int = 0
    sessions_completed: int = 0
    meter_values: int = 0
    energy_wh: float = 0.0  # delivered in completed sessions
    commands: Counter[str] = field(default_factory=Counter)  # OCPP action → answered
    # Every completed session: (transaction id, meter start, meter stop), as the charger
    # knows them (tests compare them with what the central system recorded).
    sessions: list[tuple[int | str, float, float]] = field(default_factory=list)
    data_transfers: list[str] = field(default_factory=list)  # message ids, as received


def utc_now(dt: datetime | None = None) -> str:
    dt = dt or datetime.now(timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _fmt(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


@dataclass
class Transaction:
    id: int | str  # 1.6: the central system's number; 2.x: the station's UUID
    id_tag: str
    meter_start: float  # Wh (an int in 1.6)
    started_wall: datetime
    started: float  # monotonic
    ends_at: float  # monotonic: when the car leaves
    stop_reason: str | None = None
    seq_no: int = 0  # 2.x: the next TransactionEvent's seqNo
    remote_start_id: int | None = None  # 2.x: of the RequestStartTransaction that began it


@dataclass
class Profile:
    id: int
    connector_id: int
    purpose: str
    stack_level: int
    body: dict[str, Any]  # snake_case, as the ocpp library hands it over
    installed: datetime


class Charger:
    """The physical charge point: meter, car, profiles, configuration.

    Outlives WebSocket connections (a transaction goes on while offline).
    """

    def __init__(self, station: str, cfg: SimConfig, rng: random.Random):
        self.station = station
        self.cfg = cfg
        self.rng = rng
        self.stats = StationStats(station)
        self.energy_wh = float(rng.randint(100_000, 5_000_000))  # lifetime register
        self.soc = 0.0
        self.tx: Transaction | None = None
        self.available = True
        self.pending_availability: bool | None = None  # applies when the tx ends
        self.status = "Available"
        self.profiles: dict[int, Profile] = {}
        self.pending_tx_profile: dict[str, Any] | None = None  # from RemoteStartTransaction
        self.remote_start: str | None = None  # idTag of an accepted remote start
        self.remote_start_id: int | None = None  # 2.x: its remoteStartId
        self.remote_token_type = "Central"  # 2.x: its idToken type
        self.reset: str | None = None  # "Soft" / "Hard" (2.x: "Immediate", …) once requested
        self.pending_reset: str | None = None  # 2.x: "OnIdle", applies when the tx ends
        self.boot_reason = "PowerUp"  # 2.x: of the next BootNotification
        self.voltages = [cfg.voltage + rng.uniform(-2, 2) for _ in range(3)]
        self.currents = [0.0, 0.0, 0.0]
        self.offered = 0.0
        self.last_update = time.monotonic()
        self.config: dict[str, list[str | bool]] = {  # key → [value, readonly]
            "HeartbeatInterval": ["300", False],
            "MeterValueSampleInterval": [_num(cfg.interval), False],
            "MeterValuesSampledData": [ALL_MEASURANDS if cfg.soc else
                                       ALL_MEASURANDS.replace(",SoC", ""), False],
            "AuthorizeRemoteTxRequests": ["false", False],
            "StopTransactionOnInvalidId": ["true", False],
            "ConnectionTimeOut": ["60", False],
            "NumberOfConnectors": ["1", True],
            "SupportedFeatureProfiles": [
                "Core,FirmwareManagement,LocalAuthListManagement,RemoteTrigger,SmartCharging",
                True],
            "ChargeProfileMaxStackLevel": ["10", True],
            "ChargingScheduleAllowedChargingRateUnit": ["Current,Power", True],
            "ChargingScheduleMaxPeriods": ["24", True],
            "MaxChargingProfilesInstalled": ["10", True],
        }
        quirks = set(cfg.quirks)
        if "watts_only" in quirks:
            self.config["ChargingScheduleAllowedChargingRateUnit"] = ["Power", True]
        if "no_smart_charging" in quirks:
            self.config["SupportedFeatureProfiles"] = [
                "Core,FirmwareManagement,LocalAuthListManagement,RemoteTrigger", True]
            self.config[VENDOR_KEY] = [_num(cfg.max_current), False]
        if "phase_switch" in quirks:
            self.config["ConnectorSwitch3to1PhaseSupported"] = ["true", True]
        self.profile_writes = 0  # SetChargingProfile calls accepted (flash writes)
        self.on_profile: Callable[[Charger], None] | None = None  # after each accepted one
        self.wake = asyncio.Event()  # something changed: the behaviour loop looks again
        self.heartbeat_changed = asyncio.Event()

    # --- configuration ---------------------------------------------------------
    def interval(self) -> float:
        return float(self.config["MeterValueSampleInterval"][0])

    def heartbeat_interval(self) -> float:
        return float(self.config["HeartbeatInterval"][0])

    def flag(self, key: str) -> bool:
        return cast(str, self.config[key][0]).lower() == "true"

    def change_config(self, key: str, value: str) -> str:
        """Set one configuration key (1.6 ChangeConfiguration, 2.x SetVariables): Accepted,
        Rejected or NotSupported. Acts at once."""
        entry = self.config.get(key)
        if entry is None:
            return "NotSupported"
        if entry[1]:
            return "Rejected"
        if key in ("HeartbeatInterval", "MeterValueSampleInterval", "ConnectionTimeOut",
                   VENDOR_KEY):
            try:
                number = float(value)
            except ValueError:
                return "Rejected"
            if not math.isfinite(number) or number < 0 or (number == 0 and key != VENDOR_KEY):
                return "Rejected"
        elif key in ("AuthorizeRemoteTxRequests", "StopTransactionOnInvalidId"):
            if value.lower() not in ("true", "false"):
                return "Rejected"
        elif key == "MeterValuesSampledData":
            allowed = set(ALL_MEASURANDS.split(","))
            if not value or not set(value.split(",")) <= allowed:
                return "Rejected"
        entry[0] = value
        if key == "HeartbeatInterval":
            self.heartbeat_changed.set()
        self.wake.set()
        return "Accepted"

    # --- availability, transactions ----------------------------------------------------
    def idle_status(self) -> str:
        return "Available" if self.available else "Unavailable"

    def change_availability(self, operative: bool) -> str:
        """Accepted, or Scheduled: Inoperative during a transaction applies when it ends."""
        if self.tx is not None and not operative:
            self.pending_availability = operative
            return "Scheduled"
        self.available, self.pending_availability = operative, None
        return "Accepted"

    def apply_pending_availability(self) -> bool:
        """After a transaction: apply a scheduled availability change; True if there was one."""
        if self.pending_availability is None:
            return False
        self.available, self.pending_availability = self.pending_availability, None
        return True

    def begin_transaction(self, tx_id: int | str, id_tag: str, meter_start: float,
                          started_wall: datetime) -> Transaction:
        now = time.monotonic()
        tx = self.tx = Transaction(tx_id, id_tag, meter_start, started_wall, now,
                                   now + self.cfg.session_seconds)
        self.stats.sessions_started += 1
        if self.cfg.soc:
            self.soc = self.rng.uniform(15.0, 60.0)
        if self.pending_tx_profile is not None:
            self.install(1, {**self.pending_tx_profile, "transaction_id": tx.id})
            self.pending_tx_profile = None
        return tx

    def end_transaction(self, meter_stop: float, reason: str) -> None:
        tx = self.tx
        assert tx is not None
        self.stats.sessions_completed += 1
        self.stats.energy_wh += meter_stop - tx.meter_start
        self.stats.sessions.append((tx.id, tx.meter_start, meter_stop))
        log.info("%s: transaction %s stopped (%s), %d Wh", self.station, tx.id, reason,
                 meter_stop - tx.meter_start)
        self.tx = None
        self.soc = 0.0
        for pid in [pid for pid, p in self.profiles.items() if p.purpose == "TxProfile"]:
            del self.profiles[pid]  # a TxProfile ends with its transaction

    # --- smart charging ----------------------------------------------------------
    # Profiles are kept in the 1.6 shape (snake_case, as the ocpp library hands a 1.6
    # SetChargingProfile over); 2.x profiles are converted by `_profile_16`.
    def install(self, connector_id: int, body: dict[str, Any]) -> None:
        profile = Profile(int(body["charging_profile_id"]), connector_id,
                          body["charging_profile_purpose"], int(body["stack_level"]), body,
                          datetime.now(timezone.utc))
        for pid, old in list(self.profiles.items()):  # same id, or same slot → replaced
            if pid == profile.id or (old.purpose, old.stack_level, old.connector_id) == (
                    profile.purpose, profile.stack_level, profile.connector_id):
                del self.profiles[pid]
        self.profiles[profile.id] = profile

    def refuses(self, body: dict[str, Any]) -> bool:
        """This charger's quirks (QUIRKS) refuse the profile."""
        quirks = self.cfg.quirks
        sched = body.get("charging_schedule") or {}
        unit = sched.get("charging_rate_unit", "A")
        limits = [float(p.get("limit", 0)) for p in sched.get("charging_schedule_period") or ()]
        return (("no_tx_default" in quirks and body.get("charging_profile_purpose")
                 == "TxDefaultProfile")
                or ("stack0" in quirks and int(body.get("stack_level", 0)) > 0)
                or ("absolute_only" in quirks and body.get("charging_profile_kind") == "Relative")
                or ("watts_only" in quirks and unit != "W")
                or ("steps" in quirks and (unit != "A" or any(v not in STEPS for v in limits))))

    def set_profile(self, connector_id: int, body: dict[str, Any]) -> bool:
        """Install a profile if this charger takes it (the current follows at once)."""
        if self.refuses(body):
            return False
        purpose = body.get("charging_profile_purpose")
        if connector_id not in (0, 1) or int(body.get("stack_level", 0)) > 10:
            return False
        if purpose == "ChargePointMaxProfile" and connector_id != 0:
            return False
        if purpose == "TxProfile":
            tx_id = body.get("transaction_id")
            if connector_id != 1 or self.tx is None or tx_id not in (None, self.tx.id):
                return False
            body = {**body, "transaction_id": self.tx.id}
        periods = (body.get("charging_schedule") or {}).get("charging_schedule_period") or []
        if not periods or len(periods) > 24:
            return False
        self.install(connector_id, body)
        self.profile_writes += 1
        self.wake.set()
        if self.on_profile is not None:
            self.on_profile(self)
        return True

    def clear_profiles(self, profile_id: int | None, connector_id: int | None,
                       purpose: str | None, stack_level: int | None) -> bool:
        """Remove the profile with that id, else those matching the criteria; True if any."""
        if profile_id is not None:
            doomed = [profile_id] if profile_id in self.profiles else []
        else:
            doomed = [pid for pid, p in self.profiles.items()
                      if connector_id in (None, p.connector_id)
                      and purpose in (None, p.purpose)
                      and stack_level in (None, p.stack_level)]
        for pid in doomed:
            del self.profiles[pid]
        self.wake.set()
        return bool(doomed)

    def _period(self, p: Profile, now: datetime) -> tuple[float, str, int | None] | None:
        """(limit, unit, numberPhases) in force for `p` now, or None."""
        body = p.body
        valid_from, valid_to = _parse_time(body.get("valid_from")), _parse_time(
            body.get("valid_to"))
        if (valid_from and now < valid_from) or (valid_to and now >= valid_to):
            return None
        sched = body.get("charging_schedule") or {}
        kind = body.get("charging_profile_kind", "Absolute")
        if kind == "Relative":
            start = self.tx.started_wall if self.tx else now
        else:
            start = _parse_time(sched.get("start_schedule")) or valid_from or p.installed
        elapsed = (now - start).total_seconds()
        if kind == "Recurring":
            span = 7 * 86400 if body.get("recurrency_kind") == "Weekly" else 86400
            elapsed %= span
        duration = sched.get("duration")
        if elapsed < 0 or (duration is not None and elapsed > duration):
            return None
        periods = sorted(sched.get("charging_schedule_period") or (),
                         key=lambda q: q.get("start_period", 0))
        chosen = None
        for q in periods:
            if q.get("start_period", 0) <= elapsed:
                chosen = q
        if chosen is None:
            return None
        return (float(chosen["limit"]), sched.get("charging_rate_unit", "A"),
                chosen.get("number_phases"))

    def _best(self, purpose: str, connector: int,
              now: datetime) -> tuple[float, str, int | None] | None:
        found: tuple[Profile, tuple[float, str, int | None]] | None = None
        for p in self.profiles.values():
            if p.purpose != purpose or p.connector_id != connector:
                continue
            if purpose == "TxProfile" and (
                self.tx is None or p.body.get("transaction_id") not in (None, self.tx.id)
            ):
                continue
            period = self._period(p, now)
            if period is not None and (found is None or p.stack_level > found[0].stack_level):
                found = (p, period)
        return found[1] if found else None

    def limit(self) -> tuple[float, int]:
        """Current offered per phase (A) and the number of phases, after all profiles."""
        now = datetime.now(timezone.utc)
        amps, phases = self.cfg.max_current, self.cfg.phases
        chosen = self._best("TxProfile", 1, now) or self._best("TxDefaultProfile", 1, now) \
            or self._best("TxDefaultProfile", 0, now)
        if VENDOR_KEY in self.config:
            amps = min(amps, float(self.config[VENDOR_KEY][0]))
        for period in (self._best("ChargePointMaxProfile", 0, now), chosen):
            if period is None:
                continue
            value, unit, number_phases = period
            if number_phases:
                phases = min(phases, int(number_phases))
            if unit == "W":
                value = value / (phases * self.cfg.voltage)
            amps = min(amps, value)
        return max(amps, 0.0), phases

    # --- physics ------------------------------------------------------------------
    def integrate(self) -> None:
        """Add the energy of the operating point since the last update (power × time)."""
        now = time.monotonic()
        dt = now - self.last_update
        self.last_update = now
        if dt <= 0:
            return
        wh = self.power() * dt / 3600.0
        self.energy_wh += wh
        if self.cfg.soc and self.tx is not None:
            self.soc = min(100.0, self.soc + 100.0 * wh / (self.cfg.battery_kwh * 1000.0))

    def power(self) -> float:
        pf = 0.99  # power factor
        return sum(v * i for v, i in zip(self.voltages, self.currents, strict=True)) * pf

    def operate(self) -> None:
        """Settle the operating point (after `integrate`): offered current, what the car draws."""
        for n in range(3):  # the grid wanders a little
            self.voltages[n] = min(max(self.voltages[n] + self.rng.uniform(-0.8, 0.8),
                                       self.cfg.voltage - 8), self.cfg.voltage + 8)
        offered, phases = self.limit()
        self.offered = offered
        charging = self.tx is not None and self.tx.stop_reason is None
        draw = 0.0
        if charging and offered >= MIN_CURRENT:
            draw = offered
            if self.cfg.soc and self.soc >= 80.0:  # the car tapers near full
                draw = min(draw, max(0.0, self.cfg.max_current * (100.0 - self.soc) / 20.0))
        self.currents = [
            draw * self.rng.uniform(0.97, 1.0) if n < phases and draw > 0 else 0.0
            for n in range(3)
        ]
        if self.tx is not None:
            if offered < MIN_CURRENT:
                self.status = "SuspendedEVSE"
            elif draw <= 0.0:
                self.status = "SuspendedEV"
            else:
                self.status = "Charging"

    def meter_value(self, context: str = "Sample.Periodic",
                    register: bool = False) -> dict[str, Any]:
        """One meterValue entry (1.6 wire shape) of the measurands configured; `register`:
        with the energy register whatever is configured."""
        wanted = set(cast(str, self.config["MeterValuesSampledData"][0]).split(","))
        if register:
            wanted.add("Energy.Active.Import.Register")
        sampled: list[dict[str, str]] = []

        def add(measurand: str, value: str, unit: str, phase: str | None = None,
                location: str | None = None) -> None:
            if measurand not in wanted:
                return
            entry = {"value": value, "context": context, "measurand": measurand, "unit": unit}
            if phase:
                entry["phase"] = phase
            if location:
                entry["location"] = location
            sampled.append(entry)

        for n, phase in enumerate(("L1-N", "L2-N", "L3-N")):
            add("Voltage", _fmt(self.voltages[n]), "V", phase)
        for n, phase in enumerate(("L1", "L2", "L3")):
            add("Current.Import", _fmt(self.currents[n], 2), "A", phase)
        add("Current.Offered", _fmt(self.offered), "A")
        add("Power.Active.Import", _fmt(self.power()), "W")
        add("Energy.Active.Import.Register", _fmt(self.energy_wh), "Wh")
        if self.cfg.soc and self.tx is not None:
            add("SoC", str(int(self.soc)), "Percent", location="EV")
        return {"timestamp": utc_now(), "sampledValue": sampled}


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Reboot(Exception):
    """Reset requested: close the connection and boot again."""


class _Behaviour:
    """What a charge point does over one connection, in any OCPP version: boot, heartbeats,
    sessions and their metering. The version classes below supply the messages (the
    methods that raise NotImplementedError here) and the answers to the central system.

    Mixed into the `ocpp` library's ChargePoint of each version (before it: nothing
    here may share a name with the library's methods).
    """

    ch: Charger
    id: str
    calls: Any  # the version's `ocpp` call module
    results: Any  # ... and its call_result module
    call: Callable[..., Awaitable[Any]]  # ocpp's ChargePoint.call
    start: Callable[[], Coroutine[Any, Any, None]]  # ocpp's ChargePoint.start: receive loop
    accepted: asyncio.Event  # BootNotification accepted

    # --- the version's messages --------------------------------------------------------
    def boot_request(self) -> Any:
        raise NotImplementedError

    async def send_status(self, connector: int, status: str | None = None) -> None:
        raise NotImplementedError

    async def send_station_status(self) -> None:
        """The station's own status after boot (1.6: connector 0)."""

    async def start_session(self, id_tag: str, remote: bool) -> bool:
        """A car plugged in: authorize and start a transaction (`ch.tx`); False if not."""
        raise NotImplementedError

    async def report(self, sample: dict[str, Any] | None, status_changed: bool,
                     rate_changed: bool) -> None:
        """During a transaction: the status changed, and/or a meter sample is due."""
        raise NotImplementedError

    async def stop_session(self) -> None:
        """End `ch.tx` (its stop_reason is set) and report the connector free."""
        raise NotImplementedError

    def reset_reason(self) -> str:
        """The stop reason of a transaction ended by the reset `ch.reset`."""
        raise NotImplementedError

    # --- sending ----------------------------------------------------------------------
    async def send(self, payload: Any) -> Any:
        """CALL → result; None when the central system answered CALLERROR."""
        try:
            return await self.call(payload, suppress=False)
        except OCPPError as exc:
            log.warning("%s: %s answered with CALLERROR %s", self.id,
                        type(payload).__name__, exc)
            return None

    async def boot(self) -> None:
        while True:
            result = await self.send(self.boot_request())
            if result is not None and result.status == "Accepted":
                self.ch.stats.boots += 1
                self.ch.boot_reason = "PowerUp"
                if result.interval > 0:
                    self.ch.config["HeartbeatInterval"][0] = str(result.interval)
                self.accepted.set()
                return
            retry = result.interval if result is not None and result.interval > 0 else 10
            log.info("%s: boot %s; retrying in %s s", self.id,
                     result.status if result else "refused", retry)
            await asyncio.sleep(retry)

    # --- behaviour ---------------------------------------------------------------------
    async def heartbeats(self) -> None:
        ch = self.ch
        while True:
            ch.heartbeat_changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ch.heartbeat_changed.wait(), ch.heartbeat_interval())
                continue  # interval changed: start counting again
            await self.send(self.calls.Heartbeat())

    async def pause(self, seconds: float, stop: asyncio.Event) -> None:
        """Sleep up to `seconds`; wakes early when a command changed something."""
        if stop.is_set() or seconds <= 0:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.ch.wake.wait(), seconds)
        self.ch.wake.clear()

    def interrupted(self, stop: asyncio.Event) -> bool:
        return stop.is_set() or self.ch.reset is not None

    async def behave(self, stop: asyncio.Event, first_idle: float) -> None:
        ch, cfg = self.ch, self.ch.cfg
        await self.send_station_status()
        if ch.tx is not None:  # back after a lost connection: the session went on
            await self.send_status(1)
            await self.charge(stop)
        else:
            ch.status = ch.idle_status()
            await self.send_status(1)
        idle = first_idle
        while not self.interrupted(stop):
            deadline = time.monotonic() + idle
            while not self.interrupted(stop) and ch.remote_start is None:
                left = deadline - time.monotonic()
                if left <= 0 and ch.available:
                    break
                await self.pause(left if left > 0 else 3600, stop)
            if self.interrupted(stop):
                break
            id_tag, remote = ch.remote_start or cfg.id_tag, ch.remote_start is not None
            ch.remote_start = None
            if await self.start_session(id_tag, remote):
                await self.charge(stop)
            await self.send(self.calls.Heartbeat())
            idle = cfg.idle_seconds
        if ch.reset is not None:
            raise Reboot(ch.reset)

    async def charge(self, stop: asyncio.Event) -> None:
        """Meter the running transaction until it ends; then stop it."""
        ch = self.ch
        tx = ch.tx
        assert tx is not None
        ch.integrate()
        ch.operate()
        # A meter reads its register and its clock at one instant: take the sample now,
        # not after the status round trip (under load that took 100s of ms at 11 kW).
        sample: dict[str, Any] | None = ch.meter_value()
        reported = ch.status
        await self.report(sample, True, False)
        last_sample = time.monotonic()
        while tx.stop_reason is None:
            now = time.monotonic()
            next_sample = last_sample + ch.interval()  # the interval may change at any time
            if stop.is_set():
                tx.stop_reason = "Local"
                break
            if ch.reset is not None:
                tx.stop_reason = self.reset_reason()
                break
            if now >= tx.ends_at:
                tx.stop_reason = "EVDisconnected"
                break
            if not ch.wake.is_set():
                await self.pause(min(next_sample, tx.ends_at) - now, stop)
            ch.wake.clear()
            if tx.stop_reason is not None or stop.is_set() or ch.reset is not None:
                continue
            ch.integrate()
            offered_before = ch.offered
            ch.operate()
            rate_changed = ch.offered != offered_before
            due = time.monotonic() >= next_sample or rate_changed
            sample = ch.meter_value() if due else None  # periodic, or at once on a new limit
            status_changed = ch.status != reported
            reported = ch.status
            if status_changed or sample is not None:
                await self.report(sample, status_changed, rate_changed)
            if sample is not None:
                last_sample = time.monotonic()
        await self.stop_session()

    # --- commands from the central system ------------------------------------------------
    def _count(self, action: str) -> None:
        self.ch.stats.commands[action] += 1
        log.info("%s: central system sent %s", self.id, action)

    def _wake(self) -> None:
        self.ch.wake.set()

    # A Reset answered Accepted: the reboot starts once the answer is on its way (set
    # at once, the reboot could close the connection before the answer was sent).
    reset_accepted: str | None = None

    @after("Reset")
    def after_reset(self, **_: Any) -> None:
        if self.reset_accepted is not None:
            self.ch.reset, self.reset_accepted = self.reset_accepted, None
            self._wake()


class SimulatedChargePoint(_Behaviour, ChargePoint):  # type: ignore[misc]  # ocpp: untyped
    """The OCPP 1.6 side of one `Charger` over one WebSocket connection."""

    calls, results = call, call_result

    def __init__(self, charger: Charger, ws: Any):
        super().__init__(charger.station, ws, response_timeout=charger.cfg.response_timeout)
        self.ch = charger
        self.accepted = asyncio.Event()  # BootNotification accepted

    # --- sending ----------------------------------------------------------------------
    async def send_status(self, connector: int, status: str | None = None) -> None:
        if connector == 1:
            status = status or self.ch.status
        else:
            status = status or ("Available" if self.ch.available else "Unavailable")
        await self.send(call.StatusNotification(
            connector_id=connector, error_code="NoError", status=status, timestamp=utc_now()))

    async def send_station_status(self) -> None:
        await self.send_status(0)

    async def send_meter_values(self, context: str = "Sample.Periodic",
                                sample: dict[str, Any] | None = None) -> None:
        ch = self.ch
        tx_id = ch.tx.id if ch.tx else None
        await self.send(call.MeterValues(connector_id=1, transaction_id=tx_id,
                                         meter_value=[sample or ch.meter_value(context)]))
        ch.stats.meter_values += 1

    def boot_request(self) -> Any:
        return call.BootNotification(
            charge_point_vendor=VENDOR, charge_point_model="Simulator",
            charge_point_serial_number=self.id, firmware_version=self.ch.cfg.firmware,
            meter_type="SimMeter 3P", meter_serial_number=f"M-{self.id}")

    # --- behaviour ---------------------------------------------------------------------
    def reset_reason(self) -> str:
        return "HardReset" if self.ch.reset == "Hard" else "SoftReset"

    async def start_session(self, id_tag: str, remote: bool) -> bool:
        ch = self.ch
        ch.status = "Preparing"
        await self.send_status(1)
        if not remote or ch.flag("AuthorizeRemoteTxRequests"):
            auth = await self.send(call.Authorize(id_tag=id_tag))
            if auth is None or auth.id_tag_info.get("status") != "Accepted":
                log.info("%s: %s not authorized", self.id, id_tag)
                ch.status = "Available"
                await self.send_status(1)
                return False
        ch.integrate()
        meter_start = int(ch.energy_wh)
        now_wall = datetime.now(timezone.utc)
        started = await self.send(call.StartTransaction(
            connector_id=1, id_tag=id_tag, meter_start=meter_start, timestamp=utc_now(now_wall)))
        if started is None:
            ch.status = "Available"
            await self.send_status(1)
            return False
        tx = ch.begin_transaction(started.transaction_id, id_tag, meter_start, now_wall)
        if started.id_tag_info.get("status") != "Accepted" and ch.flag(
                "StopTransactionOnInvalidId"):
            tx.stop_reason = "DeAuthorized"
        log.info("%s: transaction %s started for %s", self.id, tx.id, id_tag)
        return True

    async def report(self, sample: dict[str, Any] | None, status_changed: bool,
                     rate_changed: bool) -> None:
        if status_changed:
            await self.send_status(1)
        if sample is not None:
            await self.send_meter_values(sample=sample)

    async def stop_session(self) -> None:
        ch = self.ch
        tx = ch.tx
        assert tx is not None
        ch.integrate()
        ch.currents = [0.0, 0.0, 0.0]  # the contactor opens
        final = ch.meter_value("Transaction.End")
        meter_stop = max(int(ch.energy_wh), int(tx.meter_start))
        reason = tx.stop_reason or "Local"
        ch.status = "Finishing"
        await self.send(call.StopTransaction(
            meter_stop=meter_stop, timestamp=utc_now(), transaction_id=tx.id, reason=reason,
            id_tag=tx.id_tag, transaction_data=[final]))
        ch.end_transaction(meter_stop, reason)
        await self.send_status(1)
        if ch.apply_pending_availability():
            await self.send_status(0)
        ch.status = ch.idle_status()
        if ch.reset is None:
            await self.send_status(1)

    # --- commands from the central system ------------------------------------------------
    @on("Reset")
    def on_reset(self, type: str, **_: Any) -> call_result.Reset:
        self._count("Reset")
        self.reset_accepted = type
        return call_result.Reset(status="Accepted")

    @on("RemoteStartTransaction")
    def on_remote_start(self, id_tag: str, connector_id: int | None = None,
                        charging_profile: dict[str, Any] | None = None,
                        **_: Any) -> call_result.RemoteStartTransaction:
        self._count("RemoteStartTransaction")
        ch = self.ch
        if (ch.tx is not None or not ch.available or connector_id not in (None, 1)
                or ch.remote_start is not None or (
                    charging_profile is not None
                    and charging_profile.get("charging_profile_purpose") != "TxProfile")):
            return call_result.RemoteStartTransaction(status="Rejected")
        ch.remote_start = id_tag
        ch.pending_tx_profile = charging_profile
        self._wake()
        return call_result.RemoteStartTransaction(status="Accepted")

    @on("RemoteStopTransaction")
    def on_remote_stop(self, transaction_id: int,
                       **_: Any) -> call_result.RemoteStopTransaction:
        self._count("RemoteStopTransaction")
        tx = self.ch.tx
        if tx is None or tx.id != transaction_id:
            return call_result.RemoteStopTransaction(status="Rejected")
        tx.stop_reason = tx.stop_reason or "Remote"
        self._wake()
        return call_result.RemoteStopTransaction(status="Accepted")

    @on("SetChargingProfile")
    def on_set_charging_profile(self, connector_id: int,
                                cs_charging_profiles: dict[str, Any],
                                **_: Any) -> call_result.SetChargingProfile:
        self._count("SetChargingProfile")
        if "no_smart_charging" in self.ch.cfg.quirks:
            raise NotSupportedError(details={"cause": "SmartCharging is not supported"})
        accepted = self.ch.set_profile(connector_id, cs_charging_profiles)
        return call_result.SetChargingProfile(status="Accepted" if accepted else "Rejected")

    @on("ClearChargingProfile")
    def on_clear_charging_profile(self, id: int | None = None, connector_id: int | None = None,
                                  charging_profile_purpose: str | None = None,
                                  stack_level: int | None = None,
                                  **_: Any) -> call_result.ClearChargingProfile:
        self._count("ClearChargingProfile")
        cleared = self.ch.clear_profiles(id, connector_id, charging_profile_purpose, stack_level)
        return call_result.ClearChargingProfile(status="Accepted" if cleared else "Unknown")

    @on("ChangeAvailability")
    def on_change_availability(self, connector_id: int, type: str,
                               **_: Any) -> call_result.ChangeAvailability:
        self._count("ChangeAvailability")
        if connector_id not in (0, 1):
            return call_result.ChangeAvailability(status="Rejected")
        status = self.ch.change_availability(type == "Operative")
        return call_result.ChangeAvailability(status=status)

    @after("ChangeAvailability")
    async def after_change_availability(self, connector_id: int, type: str, **_: Any) -> None:
        ch = self.ch
        if ch.tx is None and connector_id in (0, 1):
            ch.status = ch.idle_status()
            await self.send_status(0)
            await self.send_status(1)
            self._wake()

    @on("UnlockConnector")
    def on_unlock_connector(self, connector_id: int,
                            **_: Any) -> call_result.UnlockConnector:
        self._count("UnlockConnector")
        if connector_id != 1:
            return call_result.UnlockConnector(status="NotSupported")
        tx = self.ch.tx
        if tx is not None and tx.stop_reason is None:
            tx.stop_reason = "UnlockCommand"
            self._wake()
        return call_result.UnlockConnector(status="Unlocked")

    TRIGGERABLE = ("BootNotification", "DiagnosticsStatusNotification",
                   "FirmwareStatusNotification", "Heartbeat", "MeterValues",
                   "StatusNotification")

    @on("TriggerMessage")
    def on_trigger_message(self, requested_message: str, connector_id: int | None = None,
                           **_: Any) -> call_result.TriggerMessage:
        self._count("TriggerMessage")
        if requested_message not in self.TRIGGERABLE:
            return call_result.TriggerMessage(status="NotImplemented")
        if connector_id not in (None, 0, 1):
            return call_result.TriggerMessage(status="Rejected")
        return call_result.TriggerMessage(status="Accepted")

    @after("TriggerMessage")
    async def after_trigger_message(self, requested_message: str,
                                    connector_id: int | None = None, **_: Any) -> None:
        if requested_message not in self.TRIGGERABLE or connector_id not in (None, 0, 1):
            return
        if requested_message == "BootNotification":
            await self.boot()
        elif requested_message == "Heartbeat":
            await self.send(call.Heartbeat())
        elif requested_message == "MeterValues":
            self.ch.integrate()
            await self.send_meter_values("Trigger")
        elif requested_message == "StatusNotification":
            for connector in (0, 1) if connector_id is None else (connector_id,):
                await self.send_status(connector)
        elif requested_message == "DiagnosticsStatusNotification":
            await self.send(call.DiagnosticsStatusNotification(status="Idle"))
        else:
            await self.send(call.FirmwareStatusNotification(status="Idle"))

    @on("GetConfiguration")
    def on_get_configuration(self, key: list[str] | None = None,
                             **_: Any) -> call_result.GetConfiguration:
        self._count("GetConfiguration")
        config = self.ch.config
        names = list(config) if not key else key
        known = [{"key": k, "readonly": config[k][1], "value": config[k][0]}
                 for k in names if k in config]
        unknown = [k for k in names if k not in config]
        return call_result.GetConfiguration(configuration_key=known,
                                            unknown_key=unknown or None)

    @on("ChangeConfiguration")
    def on_change_configuration(self, key: str, value: str,
                                **_: Any) -> call_result.ChangeConfiguration:
        self._count("ChangeConfiguration")
        return call_result.ChangeConfiguration(status=self.ch.change_config(key, value))

    @on("DataTransfer")
    def on_data_transfer(self, vendor_id: str, message_id: str | None = None,
                         data: str | None = None, **_: Any) -> call_result.DataTransfer:
        self._count("DataTransfer")
        self.ch.stats.data_transfers.append(message_id or "")
        if vendor_id != VENDOR:
            return call_result.DataTransfer(status="UnknownVendorId")
        return call_result.DataTransfer(status="Accepted", data=data)

    @on("ClearCache")
    def on_clear_cache(self, **_: Any) -> call_result.ClearCache:
        self._count("ClearCache")
        return call_result.ClearCache(status="Accepted")

    @on("GetLocalListVersion")
    def on_get_local_list_version(self, **_: Any) -> call_result.GetLocalListVersion:
        self._count("GetLocalListVersion")
        return call_result.GetLocalListVersion(list_version=0)


# --- OCPP 2.0.1 and 2.1 -----------------------------------------------------------------
# The device model: (component, variable) → (the `Charger.config` key it is, dataType).
# The 1.6 keys are what the gateway translates them from (commands/v2x.py CONFIG_KEYS).
DEVICE_MODEL: dict[tuple[str, str], tuple[str, str]] = {
    ("OCPPCommCtrlr", "HeartbeatInterval"): ("HeartbeatInterval", "integer"),
    ("SampledDataCtrlr", "TxUpdatedInterval"): ("MeterValueSampleInterval", "integer"),
    ("SampledDataCtrlr", "TxUpdatedMeasurands"): ("MeterValuesSampledData", "MemberList"),
    ("AuthCtrlr", "AuthorizeRemoteStart"): ("AuthorizeRemoteTxRequests", "boolean"),
    ("TxCtrlr", "StopTxOnInvalidId"): ("StopTransactionOnInvalidId", "boolean"),
    ("TxCtrlr", "EVConnectionTimeOut"): ("ConnectionTimeOut", "integer"),
    ("SmartChargingCtrlr", "ProfileStackLevel"): ("ChargeProfileMaxStackLevel", "integer"),
    ("SmartChargingCtrlr", "PeriodsPerSchedule"): ("ChargingScheduleMaxPeriods", "integer"),
    ("SmartChargingCtrlr", "Entries"): ("MaxChargingProfilesInstalled", "integer"),
}
COMPONENTS = frozenset(component for component, _ in DEVICE_MODEL)
# 2.x charging profile purposes → the 1.6 ones `Charger` works with (others: Rejected).
PURPOSES_16 = {"TxDefaultProfile": "TxDefaultProfile", "TxProfile": "TxProfile",
               "ChargingStationMaxProfile": "ChargePointMaxProfile"}
# Why a transaction ended (stoppedReason) → the TransactionEvent's triggerReason.
STOP_TRIGGERS = {"EVDisconnected": "EVCommunicationLost", "Remote": "RemoteStop",
                 "Local": "StopAuthorized", "DeAuthorized": "Deauthorized",
                 "ImmediateReset": "ResetCommand"}
TRIGGERABLE_2X = ("BootNotification", "FirmwareStatusNotification", "Heartbeat",
                  "LogStatusNotification", "MeterValues", "StatusNotification",
                  "TransactionEvent")
EVSE = {"id": 1, "connector_id": 1}  # the one EVSE and its one connector


def _meter_value_2x(entry: dict[str, Any]) -> dict[str, Any]:
    """A `Charger.meter_value` entry → OCPP 2.x: numeric values, unitOfMeasure."""
    sampled = []
    for value in entry["sampledValue"]:
        out: dict[str, Any] = {"value": float(value["value"])}
        out.update((k, value[k]) for k in ("context", "measurand", "phase", "location")
                   if k in value)
        out["unitOfMeasure"] = {"unit": value["unit"]}
        sampled.append(out)
    return {"timestamp": entry["timestamp"], "sampledValue": sampled}


def _connector_status(status: str) -> str:
    """The charger's 1.6 status → the 2.x connectorStatus."""
    return status if status in ("Available", "Unavailable", "Faulted", "Reserved") \
        else "Occupied"


def _charging_state(status: str) -> str:
    """The charger's 1.6 status during a transaction → the 2.x chargingState."""
    return status if status in ("Charging", "SuspendedEV", "SuspendedEVSE") else "EVConnected"


def _profile_16(profile: dict[str, Any]) -> dict[str, Any] | None:
    """A 2.x chargingProfile (snake_case, as the ocpp library hands it over) → the 1.6
    shape `Charger` reads (its first schedule); None if this charger cannot use it."""
    purpose = PURPOSES_16.get(profile.get("charging_profile_purpose", ""))
    schedules = profile.get("charging_schedule") or []
    if purpose is None or not schedules:
        return None
    schedule = schedules[0]
    if any("limit" not in period for period in schedule.get("charging_schedule_period") or ()):
        return None  # 2.1: setpoints or per-phase limits only
    return {**profile, "charging_profile_id": profile["id"],
            "charging_profile_purpose": purpose, "charging_schedule": schedule}


class _ChargePoint2x(_Behaviour):
    """The OCPP 2.x side of one `Charger` (one EVSE, one connector), mixed into the `ocpp`
    library's 2.0.1 or 2.1 ChargePoint below. Messages are built with `calls`/`results`."""

    def __init__(self, charger: Charger, ws: Any):
        # the `ocpp` library's ChargePoint, next in the concrete classes' MRO
        super().__init__(charger.station, ws,  # type: ignore[call-arg]
                         response_timeout=charger.cfg.response_timeout)
        self.ch = charger
        self.accepted = asyncio.Event()

    # --- sending ----------------------------------------------------------------------
    def boot_request(self) -> Any:
        return self.calls.BootNotification(
            charging_station={"vendor_name": VENDOR, "model": "Simulator",
                              "serial_number": self.id,
                              "firmware_version": self.ch.cfg.firmware},
            reason=self.ch.boot_reason)

    async def send_status(self, connector: int, status: str | None = None) -> None:
        await self.send(self.calls.StatusNotification(
            timestamp=utc_now(), connector_status=_connector_status(status or self.ch.status),
            evse_id=EVSE["id"], connector_id=EVSE["connector_id"]))

    async def send_event(self, event_type: str, trigger: str, *,
                         charging_state: str | None = None,
                         sample: dict[str, Any] | None = None,
                         stopped_reason: str | None = None,
                         id_token: dict[str, str] | None = None,
                         timestamp: datetime | None = None) -> Any:
        """A TransactionEvent of `ch.tx`; `sample` in the 1.6 shape of `Charger`."""
        ch = self.ch
        tx = ch.tx
        assert tx is not None
        info: dict[str, Any] = {"transaction_id": tx.id}
        if charging_state is not None:
            info["charging_state"] = charging_state
        if stopped_reason is not None:
            info["stopped_reason"] = stopped_reason
        if event_type == "Started" and tx.remote_start_id is not None:
            info["remote_start_id"] = tx.remote_start_id
        seq_no, tx.seq_no = tx.seq_no, tx.seq_no + 1
        result = await self.send(self.calls.TransactionEvent(
            event_type=event_type, timestamp=utc_now(timestamp), trigger_reason=trigger,
            seq_no=seq_no, transaction_info=info, evse=dict(EVSE), id_token=id_token,
            meter_value=None if sample is None else [_meter_value_2x(sample)]))
        if sample is not None:
            ch.stats.meter_values += 1
        return result

    # --- behaviour ---------------------------------------------------------------------
    def reset_reason(self) -> str:
        return "ImmediateReset"

    async def start_session(self, id_tag: str, remote: bool) -> bool:
        ch = self.ch
        remote_start_id, ch.remote_start_id = ch.remote_start_id, None
        token = {"id_token": id_tag, "type": ch.remote_token_type if remote else "ISO14443"}
        ch.status = "Preparing"
        await self.send_status(1)  # Occupied: the car plugged in
        if not remote or ch.flag("AuthorizeRemoteTxRequests"):
            auth = await self.send(self.calls.Authorize(id_token=token))
            if auth is None or auth.id_token_info.get("status") != "Accepted":
                log.info("%s: %s not authorized", self.id, id_tag)
                ch.status = ch.idle_status()
                await self.send_status(1)
                return False
        ch.integrate()
        now_wall = datetime.now(timezone.utc)
        meter_start = round(ch.energy_wh, 1)
        tx = ch.begin_transaction(str(uuid.uuid4()), id_tag, meter_start, now_wall)
        tx.remote_start_id = remote_start_id
        begin = {"timestamp": utc_now(now_wall), "sampledValue": [{
            "value": _fmt(meter_start), "context": "Transaction.Begin",
            "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}
        started = await self.send_event(
            "Started", "RemoteStart" if remote else "CablePluggedIn",
            charging_state="EVConnected", id_token=token, sample=begin, timestamp=now_wall)
        status = ((started.id_token_info or {}).get("status", "Accepted")
                  if started is not None else "Accepted")
        if status != "Accepted" and ch.flag("StopTransactionOnInvalidId"):
            tx.stop_reason = "DeAuthorized"
        log.info("%s: transaction %s started for %s", self.id, tx.id, id_tag)
        return True

    async def report(self, sample: dict[str, Any] | None, status_changed: bool,
                     rate_changed: bool) -> None:
        trigger = ("ChargingStateChanged" if status_changed else
                   "ChargingRateChanged" if rate_changed else "MeterValuePeriodic")
        await self.send_event("Updated", trigger, sample=sample, charging_state=(
            _charging_state(self.ch.status) if status_changed else None))

    async def stop_session(self) -> None:
        ch = self.ch
        tx = ch.tx
        assert tx is not None
        ch.integrate()
        ch.currents = [0.0, 0.0, 0.0]  # the contactor opens
        final = ch.meter_value("Transaction.End", register=True)
        meter_stop = max(round(ch.energy_wh, 1), tx.meter_start)
        for value in final["sampledValue"]:  # the register as the transaction's meter_stop
            if value["measurand"] == "Energy.Active.Import.Register":
                value["value"] = _fmt(meter_stop)
        reason = tx.stop_reason or "Local"
        ch.status = "Finishing"  # the connector stays Occupied until the car leaves
        await self.send_event(
            "Ended", STOP_TRIGGERS.get(reason, "AbnormalCondition"), stopped_reason=reason,
            charging_state="Idle" if reason == "EVDisconnected" else "EVConnected",
            sample=final)
        ch.end_transaction(meter_stop, reason)
        ch.apply_pending_availability()
        ch.status = ch.idle_status()
        if ch.pending_reset is not None:  # Reset OnIdle: now
            ch.reset, ch.pending_reset = ch.pending_reset, None
        if ch.reset is None:
            await self.send_status(1)  # the car left

    # --- commands from the central system ------------------------------------------------
    @on("Reset")
    def on_reset(self, type: str, evse_id: int | None = None, **_: Any) -> Any:
        self._count("Reset")
        ch = self.ch
        if evse_id is not None:  # no EVSE-level reset here
            return self.results.Reset(status="Rejected")
        if type == "OnIdle" and ch.tx is not None:
            ch.pending_reset = type
            return self.results.Reset(status="Scheduled")
        self.reset_accepted = type
        return self.results.Reset(status="Accepted")

    @on("RequestStartTransaction")
    def on_request_start(self, id_token: dict[str, Any], remote_start_id: int,
                         evse_id: int | None = None,
                         charging_profile: dict[str, Any] | None = None, **_: Any) -> Any:
        self._count("RequestStartTransaction")
        ch = self.ch
        profile = None if charging_profile is None else _profile_16(charging_profile)
        if (ch.tx is not None or not ch.available or evse_id not in (None, 1)
                or ch.remote_start is not None or (charging_profile is not None and (
                    profile is None or profile["charging_profile_purpose"] != "TxProfile"))):
            return self.results.RequestStartTransaction(status="Rejected")
        ch.remote_start = str(id_token["id_token"])
        ch.remote_start_id = remote_start_id
        ch.remote_token_type = str(id_token.get("type", "Central"))
        ch.pending_tx_profile = profile
        self._wake()
        return self.results.RequestStartTransaction(status="Accepted")

    @on("RequestStopTransaction")
    def on_request_stop(self, transaction_id: str, **_: Any) -> Any:
        self._count("RequestStopTransaction")
        tx = self.ch.tx
        if tx is None or tx.id != transaction_id:
            return self.results.RequestStopTransaction(status="Rejected")
        tx.stop_reason = tx.stop_reason or "Remote"
        self._wake()
        return self.results.RequestStopTransaction(status="Accepted")

    @on("SetChargingProfile")
    def on_set_charging_profile(self, evse_id: int, charging_profile: dict[str, Any],
                                **_: Any) -> Any:
        self._count("SetChargingProfile")
        body = _profile_16(charging_profile)
        accepted = body is not None and self.ch.set_profile(evse_id, body)
        return self.results.SetChargingProfile(
            status="Accepted" if accepted else "Rejected")

    @on("ClearChargingProfile")
    def on_clear_charging_profile(self, charging_profile_id: int | None = None,
                                  charging_profile_criteria: dict[str, Any] | None = None,
                                  **_: Any) -> Any:
        self._count("ClearChargingProfile")
        criteria = charging_profile_criteria or {}
        purpose = criteria.get("charging_profile_purpose")
        cleared = self.ch.clear_profiles(
            charging_profile_id, criteria.get("evse_id"),
            None if purpose is None else PURPOSES_16.get(purpose, purpose),
            criteria.get("stack_level"))
        return self.results.ClearChargingProfile(
            status="Accepted" if cleared else "Unknown")

    @staticmethod
    def _evse_ok(evse: dict[str, Any] | None, station: bool = True) -> bool:
        """Is `evse` (an EVSEType) ours: EVSE 1 connector 1, or the station (id 0)?"""
        if evse is None:
            return True
        return (evse.get("id") == 1 or (station and evse.get("id") == 0)) and \
            evse.get("connector_id") in (None, 1)

    @on("ChangeAvailability")
    def on_change_availability(self, operational_status: str,
                               evse: dict[str, Any] | None = None, **_: Any) -> Any:
        self._count("ChangeAvailability")
        if not self._evse_ok(evse):
            return self.results.ChangeAvailability(status="Rejected")
        status = self.ch.change_availability(operational_status == "Operative")
        return self.results.ChangeAvailability(status=status)

    @after("ChangeAvailability")
    async def after_change_availability(self, operational_status: str,
                                        evse: dict[str, Any] | None = None,
                                        **_: Any) -> None:
        ch = self.ch
        if ch.tx is None and self._evse_ok(evse):
            ch.status = ch.idle_status()
            await self.send_status(1)
            self._wake()

    @on("UnlockConnector")
    def on_unlock_connector(self, evse_id: int, connector_id: int, **_: Any) -> Any:
        self._count("UnlockConnector")
        if (evse_id, connector_id) != (EVSE["id"], EVSE["connector_id"]):
            return self.results.UnlockConnector(status="UnknownConnector")
        if self.ch.tx is not None:  # OCPP 2.0.1 F05.FR.02: no unlocking during a transaction
            return self.results.UnlockConnector(status="OngoingAuthorizedTransaction")
        return self.results.UnlockConnector(status="Unlocked")

    def _trigger_status(self, requested_message: str, evse: dict[str, Any] | None) -> str:
        if requested_message not in TRIGGERABLE_2X:
            return "NotImplemented"
        if not self._evse_ok(evse, station=False) or (
                requested_message == "TransactionEvent" and self.ch.tx is None):
            return "Rejected"
        return "Accepted"

    @on("TriggerMessage")
    def on_trigger_message(self, requested_message: str, evse: dict[str, Any] | None = None,
                           **_: Any) -> Any:
        self._count("TriggerMessage")
        return self.results.TriggerMessage(
            status=self._trigger_status(requested_message, evse))

    @after("TriggerMessage")
    async def after_trigger_message(self, requested_message: str,
                                    evse: dict[str, Any] | None = None, **_: Any) -> None:
        if self._trigger_status(requested_message, evse) != "Accepted":
            return
        ch = self.ch
        if requested_message == "BootNotification":
            ch.boot_reason = "Triggered"
            await self.boot()
        elif requested_message == "Heartbeat":
            await self.send(self.calls.Heartbeat())
        elif requested_message == "MeterValues":
            ch.integrate()
            await self.send(self.calls.MeterValues(
                evse_id=EVSE["id"], meter_value=[_meter_value_2x(ch.meter_value("Trigger"))]))
            ch.stats.meter_values += 1
        elif requested_message == "TransactionEvent" and ch.tx is not None:
            ch.integrate()
            await self.send_event("Updated", "Trigger", charging_state=_charging_state(
                ch.status), sample=ch.meter_value("Trigger"))
        elif requested_message == "StatusNotification":
            await self.send_status(1)
        elif requested_message == "LogStatusNotification":
            await self.send(self.calls.LogStatusNotification(status="Idle"))
        elif requested_message == "FirmwareStatusNotification":
            await self.send(self.calls.FirmwareStatusNotification(status="Idle"))

    # --- device model ------------------------------------------------------------------
    @staticmethod
    def _lookup(item: dict[str, Any]) -> tuple[str | None, str]:
        """(the config key, "Accepted") of a Get/SetVariableData item, or (None, status)."""
        component = (item.get("component") or {}).get("name", "")
        variable = (item.get("variable") or {}).get("name", "")
        entry = DEVICE_MODEL.get((component, variable))
        if entry is None:
            return None, "UnknownVariable" if component in COMPONENTS else "UnknownComponent"
        if item.get("attribute_type", "Actual") != "Actual":
            return None, "NotSupportedAttributeType"
        return entry[0], "Accepted"

    @staticmethod
    def _result(item: dict[str, Any], status: str) -> dict[str, Any]:
        result = {"attribute_status": status, "component": item["component"],
                  "variable": item["variable"]}
        if "attribute_type" in item:
            result["attribute_type"] = item["attribute_type"]
        return result

    @on("GetVariables")
    def on_get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        self._count("GetVariables")
        results = []
        for item in get_variable_data:
            key, status = self._lookup(item)
            result = self._result(item, status)
            if key is not None:
                result["attribute_value"] = str(self.ch.config[key][0])
            results.append(result)
        return self.results.GetVariables(get_variable_result=results)

    @on("SetVariables")
    def on_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        self._count("SetVariables")
        results = []
        for item in set_variable_data:
            key, status = self._lookup(item)
            if key is not None:
                status = self.ch.change_config(key, str(item["attribute_value"]))
            results.append(self._result(item, status))
        return self.results.SetVariables(set_variable_result=results)

    @on("GetBaseReport")
    def on_get_base_report(self, request_id: int, report_base: str, **_: Any) -> Any:
        self._count("GetBaseReport")
        return self.results.GetBaseReport(status="Accepted")

    @after("GetBaseReport")
    async def after_get_base_report(self, request_id: int, report_base: str,
                                    **_: Any) -> None:
        config = self.ch.config
        report = []
        for (component, variable), (key, data_type) in DEVICE_MODEL.items():
            readonly = bool(config[key][1])
            if report_base == "ConfigurationInventory" and readonly:
                continue
            characteristics: dict[str, Any] = {"data_type": data_type,
                                               "supports_monitoring": False}
            if data_type == "MemberList":
                characteristics["values_list"] = ALL_MEASURANDS
            report.append({
                "component": {"name": component}, "variable": {"name": variable},
                "variable_attribute": [{
                    "type": "Actual", "value": str(config[key][0]), "persistent": True,
                    "mutability": "ReadOnly" if readonly else "ReadWrite",
                    "constant": False}],
                "variable_characteristics": characteristics})
        await self.send(self.calls.NotifyReport(request_id=request_id, generated_at=utc_now(),
                                                seq_no=0, tbc=False, report_data=report))

    @on("DataTransfer")
    def on_data_transfer(self, vendor_id: str, message_id: str | None = None,
                         data: Any = None, **_: Any) -> Any:
        self._count("DataTransfer")
        self.ch.stats.data_transfers.append(message_id or "")
        if vendor_id != VENDOR:
            return self.results.DataTransfer(status="UnknownVendorId")
        return self.results.DataTransfer(status="Accepted", data=data)


def _refuse_the_rest(cls: type, actions: Iterable[str]) -> type:
    """Answer every action of the version the simulator does not implement with
    NotSupported (known, not supported): without a handler the `ocpp` library (2.1.0)
    would leave a 2.1 call unanswered."""
    handled = {getattr(getattr(cls, name), "_on_action", None) for name in dir(cls)}
    for action in sorted(set(actions) - handled):
        def refuse(self: Any, _action: str = action, **_: Any) -> Any:
            raise NotSupportedError(
                details={"cause": f"{_action} is not implemented by the simulator"})

        name = f"on_unsupported_{action}"
        refuse.__name__ = name  # the library finds handlers by function name
        setattr(cls, name, _on(action)(refuse))
    return cls


class SimulatedChargePoint2x(_ChargePoint2x, v201.ChargePoint):  # type: ignore[misc]
    """OCPP 2.0.1."""

    calls, results = v201.call, v201.call_result


class SimulatedChargePoint21(_ChargePoint2x, v21.ChargePoint):  # type: ignore[misc]
    """OCPP 2.1: the same charge point with 2.1's messages and schemas."""

    calls, results = v21.call, v21.call_result


_refuse_the_rest(SimulatedChargePoint2x, (a.value for a in Action201))
_refuse_the_rest(SimulatedChargePoint21, (a.value for a in Action21))


# --ocpp → (subprotocol, charge point class)
VERSIONS: dict[str, tuple[str, Callable[[Charger, Any], _Behaviour]]] = {
    "1.6": ("ocpp1.6", SimulatedChargePoint),
    "2.0.1": ("ocpp2.0.1", SimulatedChargePoint2x),
    "2.1": ("ocpp2.1", SimulatedChargePoint21),
}


async def _connection(charger: Charger, ws: Any, stop: asyncio.Event, first_idle: float) -> None:
    """Boot and behave over one connection until it closes, a reset, or `stop`."""
    cp = VERSIONS[charger.cfg.ocpp][1](charger, ws)
    reader = asyncio.create_task(cp.start(), name=f"{charger.station}-reader")
    stopped = asyncio.create_task(stop.wait())
    tasks = [reader, stopped]
    try:
        boot = asyncio.create_task(cp.boot())
        tasks.append(boot)
        await asyncio.wait({reader, boot, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not boot.done():
            return  # connection lost, or stopped, before the boot was accepted
        boot.result()
        tasks.append(asyncio.create_task(cp.heartbeats()))
        behaviour = asyncio.create_task(cp.behave(stop, first_idle))
        tasks.append(behaviour)
        await asyncio.wait({reader, behaviour}, return_when=asyncio.FIRST_COMPLETED)
        if behaviour.done():
            behaviour.result()  # raises Reboot
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, Exception):
                await task


def _tls_context(cfg: SimConfig) -> ssl.SSLContext | None:
    if not cfg.url.startswith("wss://"):
        return None
    ctx = ssl.create_default_context(cafile=cfg.ca_file or None)
    if cfg.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def run_station(charger: Charger, stop: asyncio.Event) -> StationStats:
    cfg = charger.cfg
    headers = {}
    if cfg.password is not None:
        token = base64.b64encode(f"{charger.station}:{cfg.password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    tls = _tls_context(cfg)
    subprotocol = Subprotocol(VERSIONS[cfg.ocpp][0])
    backoff = 1.0
    first_idle = charger.rng.uniform(0, cfg.idle_seconds)
    while not stop.is_set():
        rebooting = False
        url = f"{cfg.url.rstrip('/')}/{charger.station}"  # read at each connect (tests move it)
        try:
            async with websockets.connect(url, subprotocols=[subprotocol],
                                          open_timeout=10, ping_interval=None,
                                          additional_headers=headers, ssl=tls) as ws:
                if ws.subprotocol != subprotocol:
                    log.warning("%s: the central system answered subprotocol %r, not %r",
                                charger.station, ws.subprotocol, subprotocol)
                charger.stats.connects += 1
                backoff = 1.0
                log.info("%s connected to %s (%s)", charger.station, url, subprotocol)
                await _connection(charger, ws, stop, first_idle)
        except Reboot as exc:
            log.info("%s: %s reset: rebooting", charger.station, exc)
            rebooting = True
            charger.boot_reason = "RemoteReset"
        except (OSError, InvalidHandshake, ConnectionClosed, asyncio.TimeoutError) as exc:
            log.warning("%s: connection failed: %s", charger.station, exc)
        except Exception:
            log.exception("%s: simulator error; reconnecting", charger.station)
        first_idle = charger.rng.uniform(0, cfg.idle_seconds)
        charger.reset = charger.pending_reset = None
        if stop.is_set():
            break
        if rebooting:
            charger.wake.clear()
            continue
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), backoff)
        backoff = min(backoff * 2, 30.0)
    return charger.stats


async def simulate(cfg: SimConfig, stop: asyncio.Event | None = None) -> list[StationStats]:
    """Run `cfg.stations` charge points until `stop` is set or `cfg.duration` passes."""
    if cfg.ocpp not in VERSIONS:
        raise ValueError(f"ocpp must be one of {', '.join(VERSIONS)}, not {cfg.ocpp!r}")
    stop = stop or asyncio.Event()
    rng = random.Random(cfg.seed)
    chargers = [Charger(station, cfg, random.Random(rng.random()))
                for station in cfg.station_ids()]
    timer = None
    if cfg.duration is not None:
        timer = asyncio.get_running_loop().call_later(cfg.duration, stop.set)

    async def wake_all() -> None:
        await stop.wait()
        for charger in chargers:
            charger.wake.set()

    waker = asyncio.create_task(wake_all())
    try:
        return list(await asyncio.gather(*(run_station(c, stop) for c in chargers)))
    finally:
        waker.cancel()
        if timer is not None:
            timer.cancel()


# --- command line ----------------------------------------------------------------------
def _positive(kind: Callable[[str], _N]) -> Callable[[str], _N]:
    def parse(text: str) -> _N:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="ws://127.0.0.1:3000",
                        help="gateway URL without the station id (default %(default)s)")
    parser.add_argument("--stations", type=_positive(int), default=1,
                        help="number of charge points (default %(default)s). For more than "
                        "one, run the gateway with MQTT_USESTATIONNAME=true: otherwise all "
                        "stations publish on the same topics and their values mix")
    parser.add_argument("--prefix", default="SIM",
                        help="station id prefix: SIM → SIM0001, SIM0002, … (default %(default)s)")
    parser.add_argument("--interval", type=_positive(float), default=10.0,
                        help="seconds between MeterValues (default %(default)s)")
    parser.add_argument("--session-seconds", type=_positive(float), default=120.0,
                        help="how long a car charges before it leaves (default %(default)s)")
    parser.add_argument("--idle-seconds", type=float, default=30.0,
                        help="pause between sessions (default %(default)s)")
    parser.add_argument("--duration", type=_positive(float), default=None,
                        help="stop after this many seconds (default: run until Ctrl-C)")
    parser.add_argument("--max-current", type=_positive(float), default=16.0,
                        help="amps per phase the car draws at most (default %(default)s)")
    parser.add_argument("--phases", type=int, choices=(1, 3), default=3,
                        help="phases the car charges on (default %(default)s)")
    parser.add_argument("--soc", action=argparse.BooleanOptionalAction, default=True,
                        help="report the car's state of charge (default: yes)")
    parser.add_argument("--id-tag", default="SIMTAG01", help="RFID tag (default %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (repeatable runs)")
    parser.add_argument("--password", default=None,
                        help="HTTP Basic auth password (user: the station id), for gateways "
                        "with OCPP_BASIC_AUTH")
    parser.add_argument("--ca-file", default=None, help="CA certificate for wss:// URLs")
    parser.add_argument("--insecure", action="store_true",
                        help="wss:// without certificate verification (testing only)")
    parser.add_argument("--ocpp", choices=tuple(VERSIONS), default="1.6",
                        help="OCPP version spoken (the only subprotocol offered; "
                        "default %(default)s)")
    parser.add_argument("--quirk", action="append", choices=sorted(QUIRKS), default=[],
                        help="behave like a real charger with current limits (repeatable): "
                        + "; ".join(f"{k}: {v}" for k, v in QUIRKS.items()))
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="DEBUG also logs every OCPP frame (default %(default)s)")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        url=args.url, stations=args.stations, interval=args.interval, prefix=args.prefix,
        session_seconds=args.session_seconds, idle_seconds=max(0.0, args.idle_seconds),
        duration=args.duration, max_current=args.max_current, phases=args.phases,
        soc=args.soc, id_tag=args.id_tag, seed=args.seed, password=args.password,
        ca_file=args.ca_file, insecure=args.insecure, ocpp=args.ocpp,
        quirks=tuple(args.quirk),
    )


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
    logging.getLogger("ocpp").setLevel(logging.DEBUG if args.log_level == "DEBUG"
                                       else logging.WARNING)
    logging.getLogger("websockets").setLevel(logging.WARNING)

    async def main() -> list[StationStats]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        log.info("simulating %d OCPP %s charge point(s) %s… against %s", cfg.stations,
                 cfg.ocpp, cfg.station_ids()[0], cfg.url)
        return await simulate(cfg, stop)

    try:
        stats = asyncio.run(main())
    except KeyboardInterrupt:
        return 130
    for s in stats:
        print(f"{s.station}: connects={s.connects} boots={s.boots} "
              f"sessions={s.sessions_completed}/{s.sessions_started} "
              f"meter_values={s.meter_values} energy_wh={s.energy_wh:.0f} "
              f"commands={dict(s.commands)}")
    return 0 if any(s.boots for s in stats) else 1


__all__ = ["SimConfig", "StationStats", "add_arguments", "run", "simulate"]
