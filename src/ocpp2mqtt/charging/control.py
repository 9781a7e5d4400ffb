"""Sets a station's current limit the way its charger takes it, kind to its flash.

`set_current_limit` (MQTT) and load balancing both come here. The first time, the
gateway asks the charger what it supports (1.6 GetConfiguration, 2.x GetVariables),
then tries the ways in `knowledge.ways` order until one is accepted; what worked
(and what never did) is kept in the store, so the next limit — and the next start
of the gateway — goes straight there. A firmware change makes it ask again.

Every write is a flash write at the charger: an increase is written only when it
is more than CURRENT_LIMIT_HYSTERESIS and at most once per CURRENT_LIMIT_MIN_INTERVAL
(the latest request wins; nothing queues up); a decrease is written at once.

What is in force is published as `state/current_limit` (A), `current_limit_source`
and `current_limit_status` (applied, pending, rejected, unsupported).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

import orjson
from ocpp.charge_point import snake_to_camel_case

from ocpp2mqtt import commands
from ocpp2mqtt import events as ev
from ocpp2mqtt.charging import knowledge as kn
from ocpp2mqtt.command_runner import Handler, NotConnected
from ocpp2mqtt.commands import v2x
from ocpp2mqtt.commands import v16 as v16_builders
from ocpp2mqtt.commands.model import CommandError, current_limit, schema_check
from ocpp2mqtt.metrics import Metrics
from ocpp2mqtt.ocpp import protocol
from ocpp2mqtt.ocpp.session import CallErrorReceived
from ocpp2mqtt.state import StateUpdate, StationState
from ocpp2mqtt.store import Store

log = logging.getLogger("ocpp2mqtt.current_control")

KNOWLEDGE_FLAG = "current_control"
PHASES_FLAG = "phases"
UNSUPPORTED_CODES = ("NotImplemented", "NotSupported")


class Runner(Protocol):
    """What control needs of the command runner (command_runner.py)."""

    def facts(self, station: str) -> commands.StationFacts: ...

    async def run_plan(self, station: str, raw: bytes) -> dict[str, Any]: ...

    async def call_station(self, station: str, action: str, payload: dict[str, Any],
                           version: protocol.OcppVersion | None = None) -> Any: ...

    @property
    def policy(self) -> commands.CurrentLimitPolicy: ...


@dataclass(slots=True)
class Request:
    """A limit to put in force at one station."""

    amps: float  # after steps and the minimum: what is compared and published
    unit: str = "A"  # the unit the request came in (tried first)
    native: float | None = None  # the value in `unit` when that is W
    connector: int = 0
    phases: int | None = None
    valid_for: float | None = None  # load balancing: the profile lapses after this (s)
    kind: str = "limit"  # limit | renewal | failsafe (the metric's label)


@dataclass(slots=True)
class Outcome:
    status: str  # applied | unchanged | pending | rejected | unsupported | not_connected |
    #              timeout
    way: kn.Way | None = None
    answer: Any = None
    tried: list[str] = field(default_factory=list)
    wait: float = 0.0  # pending: seconds until it is written
    error: str | None = None


@dataclass(slots=True)
class _Slot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    in_force: float | None = None  # A, as last written (None: not known)
    source: str | None = None
    last_write: float | None = None  # loop time
    changed_at: float = float("-inf")  # loop time the limit in force last changed
    valid_until: float | None = None  # loop time: a balancing profile lapses
    wanted: Request | None = None  # the latest increase waiting for the interval
    timer: asyncio.TimerHandle | None = None
    lapse: asyncio.TimerHandle | None = None
    failsafe: float | None = None  # the failsafe profile's current, once installed
    phases: int | None = None  # set_phases
    writes: int = 0


class CurrentControl:
    """An extension (extensions/__init__.py's protocol) that the balancer builds on."""

    name = "current_control"
    ctx: Any  # extensions.Context, given at start
    def __init__(self, store: Store, metrics: Metrics):
        self.store = store
        self.metrics = metrics
        self.runner: Runner  # set by the composition root
        self.register: Callable[[str, Handler], None]
        self.emit: Callable[[ev.Event], None] = lambda event: None  # the event stream
        # Load balancing: station → (group name, the user cap setter); set by the balancer.
        self.grouped: dict[str, tuple[str, Callable[[str, float | None], None]]] = {}
        self._slots: dict[str, _Slot] = {}
        self._knowledge: dict[str, kn.Knowledge] = {}
        self._saved: dict[str, str] = {}  # station → the knowledge row last written

    def start(self, ctx: Any) -> None:
        self.ctx = ctx
        self.register("set_current_limit", self._set_current_limit)
        self.register("set_phases", self._set_phases)
        self.register("clear_current_limit", self._clear_current_limit)

    def on_mqtt_connected(self) -> None:
        pass

    async def stop(self) -> None:
        for slot in self._slots.values():
            for handle in (slot.timer, slot.lapse):
                if handle is not None:
                    handle.cancel()

    def slot(self, station: str, flags: Mapping[str, str] | None = None) -> _Slot:
        """`flags`: the station's, if already read (`Store.flags`)."""
        found = self._slots.get(station)
        if found is None:
            slot = self._slots[station] = _Slot()
            raw = (flags.get(PHASES_FLAG, "") if flags is not None
                   else self.store.flag(station, PHASES_FLAG, ""))
            slot.phases = int(raw) if raw.isdigit() else None
            return slot
        return found

    def writes(self, station: str) -> int:
        """SetChargingProfile/ChangeConfiguration calls that set a limit (tests, web page)."""
        return self.slot(station).writes

    # --- events ----------------------------------------------------------------------
    def on_event(self, event: ev.Event, state: StationState, update: StateUpdate) -> None:
        kind = type(event)
        if kind is ev.Booted:
            assert isinstance(event, ev.Booted)
            flags = None
            if event.station not in self._slots or event.station not in self._knowledge:
                flags = self.store.flags(event.station)  # one read: a storm boots thousands
            slot = self.slot(event.station, flags)
            slot.in_force = None  # a rebooted charger may have lost what we set
            slot.valid_until = None
            known = self.knowledge(event.station, flags)
            firmware = event.info.firmware_version
            if known.probed and firmware and known.firmware not in (None, firmware):
                log.info("%s: firmware %s → %s: asking again what it supports",
                         event.station, known.firmware, firmware)
                self._save(event.station, kn.Knowledge())
        elif kind is ev.TransactionStopped:
            held = self._slots.get(event.station)
            if held is not None and held.source == "TxProfile":
                # A TxProfile ends with its transaction: what lies under it holds now.
                self._fallen_back(event.station, held)

    def _fallen_back(self, station: str, slot: _Slot) -> None:
        slot.in_force = slot.failsafe
        slot.source = kn.FAILSAFE_PURPOSE if slot.failsafe is not None else None
        slot.valid_until = None
        event = ev.CurrentLimitChanged(station, self.ctx.now(), limit=slot.in_force,
                                       source=slot.source)
        self.ctx.defer(lambda: self.emit(event))  # not from inside another event's handlers

    # --- what the charger takes -------------------------------------------------------
    def knowledge(self, station: str, flags: Mapping[str, str] | None = None) -> kn.Knowledge:
        known = self._knowledge.get(station)
        if known is None:
            raw = (flags.get(KNOWLEDGE_FLAG, "") if flags is not None
                   else self.store.flag(station, KNOWLEDGE_FLAG, ""))
            try:
                known = kn.Knowledge.from_json(orjson.loads(raw)) if raw else kn.Knowledge()
            except orjson.JSONDecodeError:
                known = kn.Knowledge()
            self._knowledge[station] = known
            self._saved[station] = raw
        return known

    def _save(self, station: str, known: kn.Knowledge) -> None:
        """Keep what was learned; written to the store only when it changed."""
        self._knowledge[station] = known
        text = orjson.dumps(known.to_json()).decode()
        if self._saved.get(station) != text:
            self._saved[station] = text
            self.store.set_flag(station, KNOWLEDGE_FLAG, text)

    async def _probe(self, station: str, version: protocol.OcppVersion) -> kn.Knowledge:
        known = self.knowledge(station)
        if known.probed:
            return known
        try:
            if version is protocol.V16:
                answer = await self.runner.call_station(station, "GetConfiguration",
                                                        kn.probe_request_16(), version)
                caps = kn.capabilities_16(answer)
            else:
                answer = await self.runner.call_station(station, "GetVariables",
                                                        kn.probe_request_2x(), version)
                caps = kn.capabilities_2x(answer)
        except (CallErrorReceived, protocol.InvalidAnswer, asyncio.TimeoutError) as exc:
            log.info("%s: could not read what it supports (%s): trying every way", station, exc)
            caps = kn.Capabilities()
        state = self.ctx.state(station)
        firmware = state.boot.firmware_version if state is not None and state.boot else None
        known = replace(known, caps=caps, probed=True, firmware=firmware)
        self._save(station, known)
        log.info("%s: smart charging %s, stack levels ≤ %s, units %s, phase switching %s, "
                 "vendor key %s", station, caps.smart_charging, caps.max_stack_level,
                 ",".join(caps.units), caps.phase_switch, caps.vendor_key)
        return known

    # --- requests ---------------------------------------------------------------------
    async def request(self, station: str, req: Request) -> Outcome:
        """Put `req` in force, now, later (pending) or not at all (unchanged)."""
        s = self.ctx.settings
        slot = self.slot(station)
        loop = asyncio.get_running_loop()
        now = loop.time()
        if req.phases is None:
            req.phases = slot.phases
        at = kn.when_to_write(slot.in_force, req.amps, slot.last_write, now,
                              s.current_limit_min_interval, s.current_limit_hysteresis)
        if at is None and req.valid_for is not None and (
                slot.valid_until is None or slot.valid_until - now < req.valid_for / 2):
            at, req.kind = now, "renewal"  # the same limit, its validity running out
        if at is None:
            if slot.wanted is not None:  # a waiting increase is no longer wanted
                self._cancel_wanted(slot)
            return Outcome("unchanged")
        if at > now:
            slot.wanted = req  # the latest request wins
            if slot.timer is None:
                slot.timer = loop.call_at(at, self._write_wanted, station)
            self.emit(ev.CurrentLimitChanged(station, self.ctx.now(), limit=slot.in_force,
                                             source=slot.source, status="pending"))
            return Outcome("pending", wait=at - now)
        self._cancel_wanted(slot)
        return await self._write(station, req)

    def forget_wanted(self, station: str) -> None:
        """A waiting increase is no longer wanted (the car left)."""
        slot = self._slots.get(station)
        if slot is not None:
            self._cancel_wanted(slot)

    def _cancel_wanted(self, slot: _Slot) -> None:
        slot.wanted = None
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None

    def _write_wanted(self, station: str) -> None:
        slot = self.slot(station)
        slot.timer = None
        req, slot.wanted = slot.wanted, None
        if req is not None:
            self.ctx.spawn(self._write(station, req))

    async def _write(self, station: str, req: Request) -> Outcome:
        slot = self.slot(station)
        async with slot.lock:
            try:
                return await self._try_ways(station, slot, req)
            except _NotConnected as exc:
                return Outcome("not_connected", error=str(exc))

    async def _try_ways(self, station: str, slot: _Slot, req: Request) -> Outcome:
        facts = self.runner.facts(station)
        version = facts.version
        known = await self._call_guard(self._probe(station, version))
        policy = self.runner.policy
        s = self.ctx.settings
        pins = kn.Pins(
            purpose=policy.purpose if s.pinned("current_limit_purpose") else None,
            stack_level=policy.stack_level if s.pinned("current_limit_stack_level") else None,
            kind=policy.kind if s.pinned("current_limit_profile_kind") else None,
            unit="A" if s.current_limit_unit == "A" else None)
        if req.kind == "failsafe":
            pins = replace(pins, purpose=kn.FAILSAFE_PURPOSE, stack_level=kn.FAILSAFE_STACK_LEVEL)
        configured = kn.Way(policy.purpose, policy.stack_level, policy.kind, req.unit)
        ways = kn.ways(known, pins, unit=req.unit, in_transaction=bool(facts.open_transactions),
                       balancing=req.valid_for is not None, configured=configured)
        tried: list[str] = []
        rejected: set[str] = set()  # purposes with a variant answered Rejected
        attempted: dict[str, int] = {}
        last_answer: Any = None
        for way in ways:
            if way.is_key and version is not protocol.V16:
                continue
            if not way.is_key and known.no_profiles:
                continue
            attempted[way.purpose] = attempted.get(way.purpose, 0) + 1
            try:
                answer, status = await self._call_guard(self._send(station, way, req, facts))
            except CallErrorReceived as exc:
                tried.append(f"{way.describe()}: CALLERROR {exc.code}")
                self.metrics.limit_writes.labels(req.kind, "error").inc()
                if exc.code in UNSUPPORTED_CODES and not way.is_key:
                    known.no_profiles = True  # no SetChargingProfile at all: the key, if any
                continue
            except protocol.InvalidAnswer as exc:
                tried.append(f"{way.describe()}: invalid answer ({exc})")
                continue
            except CommandError as exc:  # e.g. a TxProfile without a transaction
                tried.append(f"{way.describe()}: {exc}")
                continue
            except asyncio.TimeoutError:
                tried.append(f"{way.describe()}: no answer")
                self._save(station, known)
                return Outcome("timeout", way, None, tried,
                               error=f"no answer within {s.ocpp_response_timeout:g} s")
            last_answer = answer
            slot.writes += 1
            if status in ("Accepted", "RebootRequired"):
                self.metrics.limit_writes.labels(req.kind, "applied").inc()
                if req.kind != "failsafe":  # the failsafe's slot says nothing of the others
                    _refused(known, rejected, attempted, pins)
                    self._learned(station, known, way)
                self._applied(station, slot, req, way)
                return Outcome("applied", way, answer, tried)
            self.metrics.limit_writes.labels(req.kind, "rejected").inc()
            tried.append(f"{way.describe()}: {status}")
            if req.kind == "failsafe":
                continue
            rejected.add(way.purpose)
            if known.works.get(way.purpose) == way:
                del known.works[way.purpose]  # worked once, not now: try its variants next time
        _refused(known, rejected, attempted, pins)
        self._save(station, known)
        status = "rejected" if rejected else "unsupported"
        if req.kind != "failsafe":
            self.emit(ev.CurrentLimitChanged(station, self.ctx.now(), limit=slot.in_force,
                                             source=slot.source, status=status))
        log.warning("%s: current limit %g A not accepted: %s", station, req.amps,
                    "; ".join(tried) or "the charger announces no way to set one")
        return Outcome(status, None, last_answer, tried)

    async def _call_guard(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except NotConnected as exc:  # HandedOver goes on up: the command is passed on
            raise _NotConnected(str(exc)) from exc

    async def _send(self, station: str, way: kn.Way, req: Request,
                    facts: commands.StationFacts) -> tuple[Any, str]:
        """One attempt: the charger's answer and its status."""
        s = self.ctx.settings
        phases = req.phases or self.runner.policy.phases
        if way.is_key:
            key = way.purpose.removeprefix("config:")
            answer = await self.runner.call_station(
                station, "ChangeConfiguration", {"key": key, "value": str(int(req.amps))},
                facts.version)
            return answer, str(answer.get("status"))
        value: float
        if way.unit == req.unit and req.native is not None:
            value = req.native
        elif way.unit == "W":
            value = round(req.amps * phases * s.current_limit_voltage)
        else:
            value = req.amps
        args: dict[str, Any] = {"limit": value, "unit": way.unit, "connectorId": req.connector}
        if req.phases is not None:
            args["numberPhases"] = req.phases
        base = self.runner.policy.profile_id_base
        valid_to = None
        if req.valid_for is not None:
            valid_to = (datetime.now(timezone.utc) + timedelta(seconds=req.valid_for)
                        ).isoformat(timespec="seconds").replace("+00:00", "Z")
        policy = commands.CurrentLimitPolicy(
            purpose=way.purpose, stack_level=way.stack_level, kind=way.kind,
            profile_id_base=base + (kn.FAILSAFE_ID_OFFSET if req.kind == "failsafe" else 0),
            phases=phases, voltage=s.current_limit_voltage, valid_to=valid_to)
        builder = v16_builders.set_current_limit if facts.version is protocol.V16 \
            else v2x.set_current_limit
        plan = builder(args, replace(facts, policy=policy))  # CommandError: this way can't
        schema_check(facts.version, "SetChargingProfile", plan.payload)
        answer = await self.runner.call_station(station, "SetChargingProfile", plan.payload,
                                                facts.version)
        return answer, str(answer.get("status"))

    def _learned(self, station: str, known: kn.Knowledge, way: kn.Way) -> None:
        if known.works.get(way.purpose) != way or way.purpose in known.fails:
            known.works[way.purpose] = way
            known.fails.discard(way.purpose)
            log.info("%s: current limits work as %s", station, way.describe())
        self._save(station, known)

    def _applied(self, station: str, slot: _Slot, req: Request, way: kn.Way) -> None:
        loop = asyncio.get_running_loop()
        if req.kind == "failsafe":
            slot.failsafe = req.amps
            if slot.in_force is None:
                slot.in_force, slot.source = req.amps, way.source
                self.emit(ev.CurrentLimitChanged(station, self.ctx.now(), limit=req.amps,
                                                 source=way.source))
            return
        if slot.in_force != req.amps:
            slot.changed_at = loop.time()
        slot.in_force, slot.source, slot.last_write = req.amps, way.source, loop.time()
        if slot.lapse is not None:
            slot.lapse.cancel()
            slot.lapse = None
        slot.valid_until = None
        if req.valid_for is not None:
            slot.valid_until = loop.time() + req.valid_for
            slot.lapse = loop.call_at(slot.valid_until, self._lapsed, station)
        self.emit(ev.CurrentLimitChanged(station, self.ctx.now(), limit=req.amps,
                                         source=way.source, phases=req.phases))

    def _lapsed(self, station: str) -> None:
        """A balancing profile was not renewed: the charger is on its failsafe now."""
        slot = self.slot(station)
        slot.lapse = None
        if slot.valid_until is not None:
            self._fallen_back(station, slot)

    # --- MQTT commands ------------------------------------------------------------------
    def request_from_args(self, station: str, args: dict[str, Any]) -> tuple[Request, str | None]:
        """A set_current_limit's args → the request (raises CommandError naming the arg)."""
        s = self.ctx.settings
        policy = self.runner.policy
        camel = snake_to_camel_case(args)
        limit = current_limit(camel, policy)
        phases = limit.phases or self.slot(station).phases or policy.phases
        amps = limit.value if limit.unit == "A" else limit.value / (phases * policy.voltage)
        note = limit.note
        steps = s.steps_for(station)
        native = limit.value if limit.unit == "W" else None
        if steps:
            stepped = kn.round_to_steps(amps, steps, 0.0, False)
            if abs(stepped - amps) > 1e-9:
                note = f"{round(amps, 1):g} A → {stepped:g} A (CURRENT_LIMIT_STEPS)"
            amps, native = stepped, None
        return Request(round(amps, 1), "A" if native is None else "W", native, limit.connector,
                       limit.phases), note

    async def _clear_current_limit(self, station: str, command_id: Any,
                                   args: dict[str, Any], raw: bytes) -> dict[str, Any]:
        doc = await self.runner.run_plan(station, raw)
        if doc["status"] == "ok":
            slot = self.slot(station)
            self._cancel_wanted(slot)
            slot.in_force = slot.failsafe
            slot.source = kn.FAILSAFE_PURPOSE if slot.failsafe is not None else None
            slot.valid_until = None
            self.emit(ev.CurrentLimitChanged(station, self.ctx.now(), limit=slot.in_force,
                                             source=slot.source))
        return doc

    async def _set_current_limit(self, station: str, command_id: Any,
                                 args: dict[str, Any], raw: bytes) -> dict[str, Any]:
        action = "set_current_limit"
        try:
            req, note = self.request_from_args(station, args)
        except CommandError as exc:
            return commands.result_document(action, "error", command_id, error=str(exc))
        grouped = self.grouped.get(station)
        if grouped is not None:
            group, cap = grouped
            cap(station, req.amps)
            return commands.result_document(
                action, "ok", command_id, response={"limit": req.amps},
                note=f"load-balancing group {group}: the station's share is capped at "
                     f"{req.amps:g} A")
        return self._result(action, command_id, await self.request(station, req), req, note)

    async def _set_phases(self, station: str, command_id: Any,
                          args: dict[str, Any], raw: bytes) -> dict[str, Any]:
        action = "set_phases"
        phases = args.get("phases")
        extra = set(args) - {"phases"}
        if extra or phases not in (1, 3) or isinstance(phases, bool):
            return commands.result_document(
                action, "error", command_id,
                error=f"set_phases: args must be {{\"phases\": 1 | 3}}, got {args!r}")
        facts = self.runner.facts(station)
        try:
            known = await self._call_guard(self._probe(station, facts.version))
        except _NotConnected as exc:
            return commands.result_document(action, "not_connected", command_id, error=str(exc))
        if known.caps.phase_switch is not True:
            self.emit(ev.CurrentLimitChanged(station, self.ctx.now(),
                                             limit=self.slot(station).in_force,
                                             source=self.slot(station).source,
                                             status="unsupported"))
            return commands.result_document(
                action, "error", command_id,
                error="unsupported: the charger does not announce phase switching "
                      "(ConnectorSwitch3to1PhaseSupported / Phases3to1)")
        slot = self.slot(station)
        slot.phases = phases
        self.store.set_flag(station, PHASES_FLAG, str(phases))
        amps = slot.in_force if slot.in_force is not None else self.ctx.settings.current_limit_max
        outcome = await self._write(station, Request(amps, phases=phases))
        return self._result(action, command_id, outcome, Request(amps, phases=phases), None)

    def _result(self, action: str, command_id: Any, outcome: Outcome, req: Request,
                note: str | None) -> dict[str, Any]:
        notes = [note] if note else []
        status = outcome.status
        doc_status = {"applied": "ok", "unchanged": "ok", "pending": "pending",
                      "rejected": "rejected", "unsupported": "error"}.get(status, status)
        error = outcome.error
        if status == "applied" and outcome.way is not None:
            if outcome.tried:
                notes.append(f"applied as {outcome.way.describe()} after: "
                             + "; ".join(outcome.tried))
        elif status == "unchanged":
            notes.append(f"unchanged: {req.amps:g} A is within CURRENT_LIMIT_HYSTERESIS of "
                         "the limit in force")
        elif status == "pending":
            notes.append(f"applies in {outcome.wait:.1f} s (CURRENT_LIMIT_MIN_INTERVAL); a "
                         "later request replaces it")
        elif status == "rejected":
            notes.append("tried: " + "; ".join(outcome.tried))
        elif status == "unsupported":
            error = "the charger takes no current limit" + (
                ": tried " + "; ".join(outcome.tried) if outcome.tried else
                " (no SmartCharging profile and no known vendor key)")
        return commands.result_document(action, doc_status, command_id,
                                        response=outcome.answer, error=error,
                                        note="; ".join(notes) or None)

    # --- the failsafe (load balancing) ---------------------------------------------------
    async def install_failsafe(self, station: str, amps: float) -> Outcome:
        """The profile a charger falls back to by itself when it loses the gateway."""
        slot = self.slot(station)
        async with slot.lock:
            try:
                return await self._try_ways(station, slot, Request(amps, kind="failsafe"))
            except _NotConnected as exc:
                return Outcome("not_connected", error=str(exc))


class _NotConnected(Exception):
    pass


def _refused(known: kn.Knowledge, rejected: set[str], attempted: dict[str, int],
             pins: kn.Pins) -> None:
    """A purpose all of whose variants were refused is not tried again (unless pinned)."""
    if pins.purpose is not None:
        return
    for purpose in rejected:
        if attempted.get(purpose, 0) > 1:
            known.fails.add(purpose)
