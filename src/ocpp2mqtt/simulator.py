"""`ocpp2mqtt simulate`: OCPP 1.6J charge point simulator (issue 7).

Runs N simulated charge points (`SIM0001`, `SIM0002`, … with `--prefix SIM`)
against a central system, each over its own WebSocket with the `ocpp`
library's v1.6 ChargePoint. Every charge point:

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

A lost connection is retried with backoff; a transaction goes on while
offline and is reported after reconnecting. `--duration` stops after N
seconds, ending open transactions with reason `Local` (SIGINT/SIGTERM too).
`--password` sends HTTP Basic credentials (user = station id) and `wss://`
URLs use TLS (`--ca-file` for a private CA): OCPP security profiles 1 and 2.

    ocpp2mqtt simulate --url ws://127.0.0.1:3000 --stations 10 --interval 5 \
        --session-seconds 600 --idle-seconds 60

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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar, cast

import websockets
from ocpp.exceptions import OCPPError
from ocpp.routing import after as _after
from ocpp.routing import on as _on
from ocpp.v16 import ChargePoint, call, call_result
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
    id: int
    id_tag: str
    meter_start: int
    started_wall: datetime
    started: float  # monotonic
    ends_at: float  # monotonic: when the car leaves
    stop_reason: str | None = None


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
        self.reset: str | None = None  # "Soft" / "Hard" once requested
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
        self.wake = asyncio.Event()  # something changed: the behaviour loop looks again
        self.heartbeat_changed = asyncio.Event()

    # --- configuration ---------------------------------------------------------
    def interval(self) -> float:
        return float(self.config["MeterValueSampleInterval"][0])

    def heartbeat_interval(self) -> float:
        return float(self.config["HeartbeatInterval"][0])

    def flag(self, key: str) -> bool:
        return cast(str, self.config[key][0]).lower() == "true"

    # --- smart charging ----------------------------------------------------------
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

    def meter_value(self, context: str = "Sample.Periodic") -> dict[str, Any]:
        wanted = set(cast(str, self.config["MeterValuesSampledData"][0]).split(","))
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


class SimulatedChargePoint(ChargePoint):  # type: ignore[misc]  # ocpp is untyped (Any)
    """The OCPP side of one `Charger` over one WebSocket connection."""

    def __init__(self, charger: Charger, ws: Any):
        super().__init__(charger.station, ws, response_timeout=charger.cfg.response_timeout)
        self.ch = charger
        self.accepted = asyncio.Event()  # BootNotification accepted

    # --- sending ----------------------------------------------------------------------
    async def send(self, payload: Any) -> Any:
        """CALL → result; None when the central system answered CALLERROR."""
        try:
            return await self.call(payload, suppress=False)
        except OCPPError as exc:
            log.warning("%s: %s answered with CALLERROR %s", self.id,
                        type(payload).__name__, exc)
            return None

    async def send_status(self, connector: int, status: str | None = None) -> None:
        if connector == 1:
            status = status or self.ch.status
        else:
            status = status or ("Available" if self.ch.available else "Unavailable")
        await self.send(call.StatusNotification(
            connector_id=connector, error_code="NoError", status=status, timestamp=utc_now()))

    async def send_meter_values(self, context: str = "Sample.Periodic",
                                sample: dict[str, Any] | None = None) -> None:
        ch = self.ch
        tx_id = ch.tx.id if ch.tx else None
        await self.send(call.MeterValues(connector_id=1, transaction_id=tx_id,
                                         meter_value=[sample or ch.meter_value(context)]))
        ch.stats.meter_values += 1

    async def boot(self) -> None:
        while True:
            result = await self.send(call.BootNotification(
                charge_point_vendor=VENDOR, charge_point_model="Simulator",
                charge_point_serial_number=self.id, firmware_version=__version__,
                meter_type="SimMeter 3P", meter_serial_number=f"M-{self.id}"))
            if result is not None and result.status == "Accepted":
                self.ch.stats.boots += 1
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
            await self.send(call.Heartbeat())

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
        await self.send_status(0)
        if ch.tx is not None:  # back after a lost connection: the session went on
            await self.send_status(1)
            await self.charge(stop)
        else:
            ch.status = "Available" if ch.available else "Unavailable"
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
            await self.send(call.Heartbeat())
            idle = cfg.idle_seconds
        if ch.reset is not None:
            raise Reboot(ch.reset)

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
        now = time.monotonic()
        ch.tx = Transaction(started.transaction_id, id_tag, meter_start, now_wall, now,
                            now + ch.cfg.session_seconds)
        ch.stats.sessions_started += 1
        if ch.cfg.soc:
            ch.soc = ch.rng.uniform(15.0, 60.0)
        if ch.pending_tx_profile is not None:
            self._install(1, {**ch.pending_tx_profile, "transaction_id": ch.tx.id})
            ch.pending_tx_profile = None
        if started.id_tag_info.get("status") != "Accepted" and ch.flag(
                "StopTransactionOnInvalidId"):
            ch.tx.stop_reason = "DeAuthorized"
        log.info("%s: transaction %s started for %s", self.id, ch.tx.id, id_tag)
        return True

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
        await self.send_status(1)
        await self.send_meter_values(sample=sample)
        last_sample = time.monotonic()
        while tx.stop_reason is None:
            now = time.monotonic()
            next_sample = last_sample + ch.interval()  # the interval may change at any time
            if stop.is_set():
                tx.stop_reason = "Local"
                break
            if ch.reset is not None:
                tx.stop_reason = "HardReset" if ch.reset == "Hard" else "SoftReset"
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
            due = time.monotonic() >= next_sample or ch.offered != offered_before
            sample = ch.meter_value() if due else None  # periodic, or at once on a new limit
            if ch.status != reported:
                reported = ch.status
                await self.send_status(1)
            if sample is not None:
                await self.send_meter_values(sample=sample)
                last_sample = time.monotonic()
        await self.stop_session()

    async def stop_session(self) -> None:
        ch = self.ch
        tx = ch.tx
        assert tx is not None
        ch.integrate()
        ch.currents = [0.0, 0.0, 0.0]  # the contactor opens
        final = ch.meter_value("Transaction.End")
        meter_stop = max(int(ch.energy_wh), tx.meter_start)
        reason = tx.stop_reason or "Local"
        ch.status = "Finishing"
        await self.send(call.StopTransaction(
            meter_stop=meter_stop, timestamp=utc_now(), transaction_id=tx.id, reason=reason,
            id_tag=tx.id_tag, transaction_data=[final]))
        ch.stats.sessions_completed += 1
        ch.stats.energy_wh += meter_stop - tx.meter_start
        log.info("%s: transaction %s stopped (%s), %d Wh", self.id, tx.id, reason,
                 meter_stop - tx.meter_start)
        ch.tx = None
        ch.soc = 0.0
        for pid in [pid for pid, p in ch.profiles.items() if p.purpose == "TxProfile"]:
            del ch.profiles[pid]  # a TxProfile ends with its transaction
        await self.send_status(1)
        if ch.pending_availability is not None:
            ch.available, ch.pending_availability = ch.pending_availability, None
            await self.send_status(0)
        ch.status = "Available" if ch.available else "Unavailable"
        if ch.reset is None:
            await self.send_status(1)

    # --- commands from the central system ------------------------------------------------
    def _count(self, action: str) -> None:
        self.ch.stats.commands[action] += 1
        log.info("%s: central system sent %s", self.id, action)

    def _wake(self) -> None:
        self.ch.wake.set()

    @on("Reset")
    def on_reset(self, type: str, **_: Any) -> call_result.Reset:
        self._count("Reset")
        self.ch.reset = type
        self._wake()
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

    def _install(self, connector_id: int, body: dict[str, Any]) -> None:
        ch = self.ch
        profile = Profile(int(body["charging_profile_id"]), connector_id,
                          body["charging_profile_purpose"], int(body["stack_level"]), body,
                          datetime.now(timezone.utc))
        for pid, old in list(ch.profiles.items()):  # same id, or same slot → replaced
            if pid == profile.id or (old.purpose, old.stack_level, old.connector_id) == (
                    profile.purpose, profile.stack_level, profile.connector_id):
                del ch.profiles[pid]
        ch.profiles[profile.id] = profile

    @on("SetChargingProfile")
    def on_set_charging_profile(self, connector_id: int,
                                cs_charging_profiles: dict[str, Any],
                                **_: Any) -> call_result.SetChargingProfile:
        self._count("SetChargingProfile")
        ch, body = self.ch, cs_charging_profiles
        purpose = body.get("charging_profile_purpose")
        rejected = call_result.SetChargingProfile(status="Rejected")
        if connector_id not in (0, 1) or int(body.get("stack_level", 0)) > 10:
            return rejected
        if purpose == "ChargePointMaxProfile" and connector_id != 0:
            return rejected
        if purpose == "TxProfile":
            tx_id = body.get("transaction_id")
            if connector_id != 1 or ch.tx is None or tx_id not in (None, ch.tx.id):
                return rejected
            body = {**body, "transaction_id": ch.tx.id}
        periods = (body.get("charging_schedule") or {}).get("charging_schedule_period") or []
        if not periods or len(periods) > 24:
            return rejected
        self._install(connector_id, body)
        self._wake()
        return call_result.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")
    def on_clear_charging_profile(self, id: int | None = None, connector_id: int | None = None,
                                  charging_profile_purpose: str | None = None,
                                  stack_level: int | None = None,
                                  **_: Any) -> call_result.ClearChargingProfile:
        self._count("ClearChargingProfile")
        ch = self.ch
        if id is not None:
            doomed = [id] if id in ch.profiles else []
        else:
            doomed = [pid for pid, p in ch.profiles.items()
                      if connector_id in (None, p.connector_id)
                      and charging_profile_purpose in (None, p.purpose)
                      and stack_level in (None, p.stack_level)]
        for pid in doomed:
            del ch.profiles[pid]
        self._wake()
        return call_result.ClearChargingProfile(status="Accepted" if doomed else "Unknown")

    @on("ChangeAvailability")
    def on_change_availability(self, connector_id: int, type: str,
                               **_: Any) -> call_result.ChangeAvailability:
        self._count("ChangeAvailability")
        ch = self.ch
        if connector_id not in (0, 1):
            return call_result.ChangeAvailability(status="Rejected")
        wanted = type == "Operative"
        if ch.tx is not None and not wanted:
            ch.pending_availability = wanted
            return call_result.ChangeAvailability(status="Scheduled")
        ch.available, ch.pending_availability = wanted, None
        return call_result.ChangeAvailability(status="Accepted")

    @after("ChangeAvailability")
    async def after_change_availability(self, connector_id: int, type: str, **_: Any) -> None:
        ch = self.ch
        if ch.tx is None and connector_id in (0, 1):
            ch.status = "Available" if ch.available else "Unavailable"
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
        ch = self.ch
        entry = ch.config.get(key)
        if entry is None:
            return call_result.ChangeConfiguration(status="NotSupported")
        if entry[1]:
            return call_result.ChangeConfiguration(status="Rejected")
        if key in ("HeartbeatInterval", "MeterValueSampleInterval", "ConnectionTimeOut"):
            try:
                number = float(value)
            except ValueError:
                return call_result.ChangeConfiguration(status="Rejected")
            if not math.isfinite(number) or number <= 0:
                return call_result.ChangeConfiguration(status="Rejected")
        elif key in ("AuthorizeRemoteTxRequests", "StopTransactionOnInvalidId"):
            if value.lower() not in ("true", "false"):
                return call_result.ChangeConfiguration(status="Rejected")
        elif key == "MeterValuesSampledData":
            allowed = set(ALL_MEASURANDS.split(","))
            if not value or not set(value.split(",")) <= allowed:
                return call_result.ChangeConfiguration(status="Rejected")
        entry[0] = value
        if key == "HeartbeatInterval":
            ch.heartbeat_changed.set()
        self._wake()
        return call_result.ChangeConfiguration(status="Accepted")

    @on("DataTransfer")
    def on_data_transfer(self, vendor_id: str, message_id: str | None = None,
                         data: str | None = None, **_: Any) -> call_result.DataTransfer:
        self._count("DataTransfer")
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


async def _connection(charger: Charger, ws: Any, stop: asyncio.Event, first_idle: float) -> None:
    """Boot and behave over one connection until it closes, a reset, or `stop`."""
    cp = SimulatedChargePoint(charger, ws)
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
    url = f"{cfg.url.rstrip('/')}/{charger.station}"
    headers = {}
    if cfg.password is not None:
        token = base64.b64encode(f"{charger.station}:{cfg.password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    tls = _tls_context(cfg)
    backoff = 1.0
    first_idle = charger.rng.uniform(0, cfg.idle_seconds)
    while not stop.is_set():
        rebooting = False
        try:
            async with websockets.connect(url, subprotocols=[Subprotocol("ocpp1.6")],
                                          open_timeout=10, ping_interval=None,
                                          additional_headers=headers, ssl=tls) as ws:
                charger.stats.connects += 1
                backoff = 1.0
                log.info("%s connected to %s", charger.station, url)
                await _connection(charger, ws, stop, first_idle)
        except Reboot as exc:
            log.info("%s: %s reset: rebooting", charger.station, exc)
            rebooting = True
        except (OSError, InvalidHandshake, ConnectionClosed, asyncio.TimeoutError) as exc:
            log.warning("%s: connection failed: %s", charger.station, exc)
        except Exception:
            log.exception("%s: simulator error; reconnecting", charger.station)
        first_idle = charger.rng.uniform(0, cfg.idle_seconds)
        charger.reset = None
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
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="DEBUG also logs every OCPP frame (default %(default)s)")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        url=args.url, stations=args.stations, interval=args.interval, prefix=args.prefix,
        session_seconds=args.session_seconds, idle_seconds=max(0.0, args.idle_seconds),
        duration=args.duration, max_current=args.max_current, phases=args.phases,
        soc=args.soc, id_tag=args.id_tag, seed=args.seed, password=args.password,
        ca_file=args.ca_file, insecure=args.insecure,
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
        log.info("simulating %d charge point(s) %s… against %s", cfg.stations,
                 cfg.station_ids()[0], cfg.url)
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
