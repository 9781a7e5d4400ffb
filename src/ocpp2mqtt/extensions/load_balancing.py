"""Load balancing and solar surplus across the stations of a group (docs/load-balancing.md).

One loop per LOAD_BALANCING group. It wakes on every event of a member station
(connect, boot, status, transaction, meter values), on every meter-topic and
grid-power reading, on a runtime limit change, and once a second; it shares the
group's capacity (charging/balancing.py) and has charging/control.py put each
car's share in force: decreases first, and increases only once every decrease was
accepted, so the sum of what the chargers offer never goes over the fuse.

Each share is a profile whose validity is renewed while the gateway is healthy,
over a failsafe profile (TxDefaultProfile, stack level 0, `failsafe_current`, no
validity) installed when the station boots: a charger that loses the gateway
falls back to the failsafe current by itself.

MQTT: `<basepath>/bridge/groups/<name>` (retained JSON), `bridge/request/group_limit`
`{"group", "max_current"}`, and per station the `set_charge_mode` command
(`fast`, `solar`, `min_solar`, `off`) shown as `state/charge_mode`. With
HOMEASSISTANT_DISCOVERY, each group is a Home Assistant device: the group limit as a
number, the metered and available current, each station's share and its mode (a select).

With a shared store (STORE_URL=postgresql://…) a group's stations may be held by
different replicas. Each replica writes its members to PostgreSQL, reads the others',
and computes the same allocation for the whole group; it puts in force only its own
stations' shares. Every station's `share` (the most its charger may offer) is in the
store: a decrease is recorded once the charger accepted it, and an increase is
reserved under the group's lock before it is sent, against what every other station
holds, so the sum stays under the fuse however the replicas interleave. Without the
database a replica makes no increases. One replica (the live one with the lowest id)
publishes the group's document.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from ocpp2mqtt import commands
from ocpp2mqtt import events as ev
from ocpp2mqtt.charging.balancing import MODES, Demand, Solar, SolarTiming, allocate, give_back
from ocpp2mqtt.charging.control import CurrentControl, Request
from ocpp2mqtt.config import GroupConfig
from ocpp2mqtt.extensions import BaseExtension, BridgeResponse, Context
from ocpp2mqtt.extensions.homeassistant import ORIGIN, station_slug
from ocpp2mqtt.mqtt.transport import Incoming
from ocpp2mqtt.state import Key, StateUpdate, StationState
from ocpp2mqtt.store.postgres import GroupMember, GroupView, SharedStore, StoreUnavailable

log = logging.getLogger("ocpp2mqtt.load_balancing")

TICK = 1.0  # s between looks when nothing happens (renewals, stale meters, solar timers)
# s a charger that connected may take to report its status (OCPP 1.6 chargers send one
# after BootNotification; after a mere reconnect some send none): until then it holds what
# it held (a car may charge on through a reconnect).
UNSURE_FOR = 30.0
RETRY_AFTER = 60.0  # s before a station whose charger refused its share is asked again
# A car's current follows a new limit within seconds; a reading older than that says
# nothing about what it would draw now.
GIVE_BACK_AFTER = 5.0
ACTIVE = frozenset({"Charging", "SuspendedEV", "SuspendedEVSE"})
MODE_FLAG = "charge_mode"
FAILSAFE_FLAG = "failsafe_current"
_WAKING = (ev.Connected, ev.Disconnected, ev.Booted, ev.StatusChanged, ev.TransactionStarted,
           ev.TransactionStopped, ev.MeterReading)


@dataclass(slots=True)
class _Group:
    cfg: GroupConfig
    max_current: float
    solar: Solar
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    metered: float | None = None  # A, the worst phase
    metered_at: float | None = None
    modes: dict[str, str] = field(default_factory=dict)
    caps: dict[str, float] = field(default_factory=dict)  # set_current_limit on a member
    allocations: dict[str, float] = field(default_factory=dict)
    reserved: dict[str, tuple[float, float]] = field(default_factory=dict)  # → (until, A)
    # Connected, but no status since: whether its car charges is not known yet (it may
    # have charged on through a reconnect, or a move to this replica) → until (loop time).
    unsure: dict[str, float] = field(default_factory=dict)
    failsafe: set[str] = field(default_factory=set)  # stations whose failsafe is in place
    refused: dict[str, tuple[float, float]] = field(default_factory=dict)  # → (until, A)
    announced: set[str] = field(default_factory=set)  # charge_mode published this run
    read_at: dict[str, float] = field(default_factory=dict)  # last current reading
    given_back: dict[str, float] = field(default_factory=dict)  # a car's cap (give_back)
    bad_input: set[str] = field(default_factory=set)  # topics whose garbage was logged
    published: bytes = b""
    # Shared store: each held member's row as last written, and the group as last read.
    written: dict[str, GroupMember] = field(default_factory=dict)
    view: GroupView | None = None


class LoadBalancingExtension(BaseExtension):
    name = "load_balancing"

    def __init__(self, control: CurrentControl, shared: SharedStore | None = None):
        self.control = control
        self.shared = shared
        self.groups: dict[str, _Group] = {}
        self.group_of: dict[str, _Group] = {}
        self._tasks: list[asyncio.Task[Any]] = []

    def start(self, ctx: Context) -> None:
        super().start(ctx)
        store = self.control.store
        for cfg in ctx.settings.load_balancing:
            saved = store.meta(f"group_limit:{cfg.name}")
            timing = SolarTiming(cfg.solar_smoothing_s, cfg.solar_start_s, cfg.solar_stop_s,
                                 cfg.solar_min_on_s, cfg.solar_min_off_s)
            g = _Group(cfg, float(saved) if saved else cfg.max_current,
                       Solar(timing, cfg.voltage))
            self.groups[cfg.name] = g
            for member in cfg.stations:
                self.group_of[member.id] = g
                g.modes[member.id] = store.flag(member.id, MODE_FLAG, "fast")
                self.control.grouped[member.id] = (cfg.name, self._cap)
                if store.flag(member.id, FAILSAFE_FLAG, "") == f"{cfg.failsafe_current:g}":
                    g.failsafe.add(member.id)
                    self.control.slot(member.id).failsafe = cfg.failsafe_current
            if cfg.meter_topic:
                ctx.subscribe(cfg.meter_topic, functools.partial(self._on_meter, g))
            if cfg.grid_power_topic:
                ctx.subscribe(cfg.grid_power_topic, functools.partial(self._on_grid, g))
            if len(cfg.stations) * cfg.failsafe_current > g.max_current:
                log.warning("group %s: %d stations × failsafe_current %g A = %g A is more than "
                            "max_current %g A: if the gateway is gone and every car charges, "
                            "the fuse may trip", cfg.name, len(cfg.stations),
                            cfg.failsafe_current, len(cfg.stations) * cfg.failsafe_current,
                            g.max_current)
            self._tasks.append(ctx.spawn(self._loop(g)))
        if self.groups:
            ctx.handle_request("group_limit", self._group_limit)
            self.control.register("set_charge_mode", self._set_charge_mode)
            if ctx.settings.homeassistant_discovery:
                ctx.subscribe(ctx.topics.discovery_status, self._on_homeassistant_status)

    def on_mqtt_connected(self) -> None:
        if self.groups and self.ctx.settings.homeassistant_discovery:
            self._discover()

    def _on_homeassistant_status(self, message: Incoming) -> None:
        if message.payload == b"online":
            self._discover()

    def _discover(self) -> None:
        for g in self.groups.values():
            self.ctx.publish(f"{self.ctx.topics.discovery_groups}{g.cfg.name}/config",
                             orjson.dumps(self.discovery(g)), qos=1)

    def discovery(self, g: _Group) -> dict[str, Any]:
        """The group as a Home Assistant device (device-based discovery)."""
        t, name = self.ctx.topics, g.cfg.name
        uid = f"ocpp2mqtt_group_{name}"
        state = {"state_topic": self.group_topic(name)}
        amps = {"device_class": "current", "unit_of_measurement": "A",
                "state_class": "measurement"}
        components: dict[str, dict[str, Any]] = {
            "max_current": {
                "platform": "number", "name": "Group limit", "unique_id": f"{uid}_max_current",
                "command_topic": t.bridge_request("group_limit"),
                "command_template": '{"group": ' + orjson.dumps(name).decode()
                                    + ', "max_current": {{ value }}}',
                "value_template": "{{ value_json.max_current }}", "min": 1,
                "max": max(g.cfg.max_current * 4, 100), "step": 1, "mode": "box",
                "device_class": "current", "unit_of_measurement": "A",
                "entity_category": "config", **state},
            "metered": {"platform": "sensor", "name": "Metered load",
                        "unique_id": f"{uid}_metered",
                        "value_template": "{{ value_json.metered }}", **amps, **state},
            "available": {"platform": "sensor", "name": "Available",
                          "unique_id": f"{uid}_available",
                          "value_template": "{{ value_json.available }}", **amps, **state},
        }
        for member in g.cfg.stations:
            sid, slug = member.id, station_slug(member.id)
            components[f"allocation_{slug}"] = {
                "platform": "sensor", "name": f"{sid} share",
                "unique_id": f"{uid}_allocation_{slug}",
                "value_template": "{{ value_json.allocations[" + orjson.dumps(sid).decode()
                + "] | default(0) }}", **amps, **state}
            components[f"mode_{slug}"] = {
                "platform": "select", "name": f"{sid} mode", "unique_id": f"{uid}_mode_{slug}",
                "options": list(MODES), "command_topic": t.command(sid),
                "command_template": '{"action": "set_charge_mode", "args": {"mode": '
                                    '"{{ value }}"}}',
                "state_topic": t.state(sid, Key("charge_mode")), "icon": "mdi:solar-power"}
        return {"device": {"identifiers": [uid], "name": f"Load balancing {name}",
                           "manufacturer": "ocpp2mqtt", "model": "Load-balancing group"},
                "origin": ORIGIN, "availability": [{"topic": t.bridge_state}], "qos": 1,
                "components": components}

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    # --- inputs --------------------------------------------------------------------------
    def on_event(self, event: ev.Event, state: StationState, update: StateUpdate) -> None:
        g = self.group_of.get(event.station)
        if g is None or not isinstance(event, _WAKING):
            return
        station = event.station
        kind = type(event)
        if kind is ev.Booted:
            g.failsafe.discard(station)  # a rebooted charger may have lost it: set it again
        elif kind is ev.Connected:
            # What it held stays held until its status says whether its car charges.
            g.unsure[station] = asyncio.get_running_loop().time() + UNSURE_FOR
            if self.shared is not None:
                # Another replica may have held it: its flags were read at connect.
                store = self.control.store
                g.modes[station] = store.flag(station, MODE_FLAG, g.modes.get(station, "fast"))
                if store.flag(station, FAILSAFE_FLAG, "") == f"{g.cfg.failsafe_current:g}":
                    g.failsafe.add(station)
                    self.control.slot(station).failsafe = g.cfg.failsafe_current
            if station not in g.announced:
                g.announced.add(station)
                mode = g.modes.get(station, "fast")
                self.ctx.defer(lambda: self.control.emit(
                    ev.ChargeModeChanged(station, self.ctx.now(), mode=mode)))
        elif kind is ev.StatusChanged:
            if g.unsure.pop(station, None) is not None:
                g.reserved.pop(station, None)
        elif kind is ev.MeterReading:
            g.read_at[station] = asyncio.get_running_loop().time()
        elif kind is ev.Disconnected:
            g.unsure.pop(station, None)
            given = g.allocations.get(station, 0.0)
            if given > 0:
                # It charges on without us: on its share until the profile lapses, then on
                # the failsafe. Keep the larger for it for reserve_s.
                until = asyncio.get_running_loop().time() + g.cfg.reserve_s
                g.reserved[station] = (until, max(given, g.cfg.failsafe_current))
        g.wake.set()

    def _on_meter(self, g: _Group, message: Incoming) -> None:
        amps = _amps(message.payload)
        if amps is None:
            self._bad_input(g, message, 'a number (A) or {"l1", "l2", "l3"}')
            return
        g.bad_input.discard(message.topic)
        g.metered, g.metered_at = amps, asyncio.get_running_loop().time()
        g.wake.set()

    def _on_grid(self, g: _Group, message: Incoming) -> None:
        watts = _number(message.payload)
        if watts is None:
            self._bad_input(g, message, "a number (W, export negative)")
            return
        g.bad_input.discard(message.topic)
        g.solar.reading(watts, asyncio.get_running_loop().time(), self._solar_drawing_w(g))
        g.wake.set()

    @staticmethod
    def _bad_input(g: _Group, message: Incoming, expected: str) -> None:
        """Ignored (the last good reading holds until it is stale); logged once per run of
        bad readings, not at every one."""
        if message.topic not in g.bad_input:
            g.bad_input.add(message.topic)
            log.warning("group %s: %s: expected %s, got %r; ignored until a good reading",
                        g.cfg.name, message.topic, expected, message.payload[:80])

    def _solar_drawing_w(self, g: _Group) -> float:
        """What the group's solar-mode cars draw now (W), from their latest readings."""
        total = 0.0
        for member in g.cfg.stations:
            if g.modes.get(member.id) not in ("solar", "min_solar"):
                continue
            state = self.ctx.state(member.id)
            amps = _drawing(state) if state is not None else None
            in_force = self.control.slot(member.id).in_force
            if amps is not None and in_force is not None:
                amps = min(amps, in_force)  # a reading from before a decrease
            total += (amps or 0.0) * member.phases * g.cfg.voltage
        return total

    def _cap(self, station: str, amps: float | None) -> None:
        g = self.group_of[station]
        if amps is None:
            g.caps.pop(station, None)
        else:
            g.caps[station] = amps
        g.wake.set()

    # --- the loop --------------------------------------------------------------------------
    async def _loop(self, g: _Group) -> None:
        while True:
            try:
                await asyncio.wait_for(g.wake.wait(), TICK)
            except asyncio.TimeoutError:
                pass
            g.wake.clear()
            try:
                await self._balance(g)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("group %s: balancing failed; trying again", g.cfg.name)

    def meter_stale(self, g: _Group, now: float) -> bool:
        if not g.cfg.meter_topic:
            return False
        return g.metered_at is None or now - g.metered_at > g.cfg.meter_stale_s

    async def _balance(self, g: _Group) -> None:
        cfg = g.cfg
        now = asyncio.get_running_loop().time()
        stale = self.meter_stale(g, now)
        metered = 0.0 if stale or g.metered is None else g.metered
        for station, (until, _) in list(g.reserved.items()):
            if until <= now:
                del g.reserved[station]
        for station, until in list(g.unsure.items()):
            if until <= now:  # no status after all: the state as it is decides
                del g.unsure[station]
                g.reserved.pop(station, None)
        demands: list[Demand] = []
        targets: dict[str, int] = {}  # connected stations with a car → charging connectors
        connected_ids: list[str] = []
        held: list[GroupMember] = []  # members connected here, for the shared store
        for member in cfg.stations:
            sid = member.id
            state = self.ctx.state(sid)
            connected = state is not None and state.connected
            charging = _charging_connectors(state) if connected and state is not None else 0
            mode = g.modes.get(sid, "fast")
            if connected:
                connected_ids.append(sid)
            if connected and charging and sid not in g.unsure:
                targets[sid] = charging
            top = min(member.max_current or self.ctx.settings.current_limit_max,
                      g.caps.get(sid, math.inf))
            drawing = _drawing(state) if state is not None else None
            slot = self.control.slot(sid)
            if not charging:
                g.given_back.pop(sid, None)
            elif g.read_at.get(sid, -math.inf) >= slot.changed_at + GIVE_BACK_AFTER:
                cap = give_back(g.given_back.get(sid), drawing, slot.in_force,
                                member.min_current)
                if cap is None:
                    g.given_back.pop(sid, None)
                else:
                    g.given_back[sid] = cap
            top = min(top, g.given_back.get(sid, math.inf))
            if stale:
                top = min(top, cfg.failsafe_current)
            active = bool(charging) and mode != "off"
            if connected and self.shared is not None:
                held.append(GroupMember(sid, True, active, top, mode,
                                        None if drawing is None else round(drawing * 2) / 2))
            unsure = sid in g.unsure
            reserved = g.reserved.get(sid, (0.0, 0.0))[1] if not connected or unsure else 0.0
            demands.append(Demand(sid, member.priority, member.min_current, top,
                                  active=active, reserved=reserved,
                                  steps=self.ctx.settings.steps_for(sid)))
        view = await self._exchange(g, held) if self.shared is not None else None
        if view is not None:
            if view.max_current is not None:
                g.max_current = view.max_current  # set through another replica
            demands = [self._elsewhere(g, d, view.members.get(d.station), stale)
                       if d.station not in g.written else d for d in demands]
            # Moved here from another replica, status not yet known: its recorded share.
            demands = [replace(d, reserved=max(d.reserved, self._recorded(g, d.station)))
                       if d.station in g.unsure else d for d in demands]
        capacity = g.max_current - metered
        solar_rows = [(d.station, mode, m.phases, m.min_current)
                      for d, m in zip(demands, cfg.stations, strict=True)
                      if (mode := self._mode(g, d.station, view)) in ("solar", "min_solar")]
        if solar_rows:
            fresh = g.solar.grid_at is not None and now - g.solar.grid_at <= cfg.meter_stale_s
            solar_caps = g.solar.caps(now, solar_rows, fresh)
            log.debug("group %s: surplus %s W → %s", cfg.name, g.solar.surplus_w, solar_caps)
            for d in demands:
                if d.station in solar_caps:
                    d.max_current = min(d.max_current, solar_caps[d.station])
                    d.active = d.active and d.max_current > 0
        g.allocations = allocate(capacity, demands)
        log.debug("group %s: capacity %g A, targets %s → %s", cfg.name, capacity, targets,
                  g.allocations)
        await self._apply(g, targets, connected_ids, now, capacity)
        if self.shared is None or (view is not None and view.publisher):
            self._publish(g, metered if not stale else None, stale, capacity)

    def _mode(self, g: _Group, station: str, view: GroupView | None) -> str:
        remote = view.members.get(station) if view is not None else None
        if station not in g.written and remote is not None and remote.alive and \
                remote.connected:
            return remote.mode  # held by another replica
        return g.modes.get(station, "fast")

    # --- a group spread over replicas (shared store) ----------------------------------------
    async def _exchange(self, g: _Group, held: list[GroupMember]) -> GroupView | None:
        """Tell the shared store about the members held here, read the others'; None
        while the database is away (then only decreases are made)."""
        assert self.shared is not None
        changed = [m for m in held if g.written.get(m.station) != m]
        here = {m.station for m in held}
        left = [sid for sid in g.written if sid not in here]
        try:
            g.view = await self.shared.group_view(g.cfg.name, changed, left,
                                                  f"group_limit:{g.cfg.name}")
        except StoreUnavailable:
            g.view = None
            return None
        for m in changed:
            g.written[m.station] = m
        for sid in left:
            del g.written[sid]
        return g.view

    def _elsewhere(self, g: _Group, local: Demand, row: GroupMember | None,
                   stale: bool) -> Demand:
        """A member not connected here, as the shared store has it."""
        if row is None:
            return local
        if row.alive and row.connected:
            top = min(row.max_current, g.cfg.failsafe_current) if stale else row.max_current
            return Demand(local.station, local.priority, local.min_current, top,
                          active=row.active, steps=local.steps)
        return Demand(local.station, local.priority, local.min_current, local.max_current,
                      reserved=max(local.reserved, self._held_for(g, row, time.time())),
                      steps=local.steps)

    def _held_for(self, g: _Group, row: GroupMember, now: float) -> float:
        """What a member's charger may draw as far as the group knows (A, whole station).
        One that left its replica (or whose replica died) while charging runs on without
        us: its share (then its failsafe) is kept for it for reserve_s, as on one replica."""
        if row.alive and row.connected:
            return row.share
        gone_at = row.at if not row.connected else row.seen  # left; or its replica died
        if row.share > 0 and now < gone_at + g.cfg.reserve_s:
            return max(row.share, g.cfg.failsafe_current)
        return 0.0

    async def _record(self, g: _Group, station: str, whole: float,
                      capacity: float | None = None) -> float:
        """Record `station`'s share (A, whole station). A rise (`capacity` given) is
        granted only up to what the other members leave of `capacity`; returns the share
        recorded."""
        assert self.shared is not None
        now = time.time()

        def decide(members: dict[str, GroupMember]) -> float:
            own = members[station].share if station in members else 0.0
            if capacity is None:
                return whole
            others = sum(self._held_for(g, m, now) for sid, m in members.items()
                         if sid != station)
            return max(own, min(whole, math.floor((capacity - others) * 10 + 1e-9) / 10))

        return await self.shared.set_share(g.cfg.name, station, decide)

    def _recorded(self, g: _Group, station: str) -> float:
        row = g.view.members.get(station) if g.view is not None else None
        return row.share if row is not None else 0.0

    async def _apply(self, g: _Group, targets: dict[str, int], connected: list[str],
                     now: float, capacity: float) -> None:
        cfg = g.cfg
        control = self.control
        fleet = self.shared is not None
        for sid in connected:
            if sid not in g.failsafe:
                outcome = await control.install_failsafe(sid, cfg.failsafe_current)
                if outcome.status == "applied":
                    g.failsafe.add(sid)
                    control.store.set_flag(sid, FAILSAFE_FLAG, f"{cfg.failsafe_current:g}")
                else:
                    log.warning("%s: failsafe profile (%g A) not accepted: %s", sid,
                                cfg.failsafe_current, "; ".join(outcome.tried) or outcome.status)
                    g.failsafe.add(sid)  # not again before the next boot
        for sid in g.allocations:
            if sid not in targets:
                control.forget_wanted(sid)
        decreases: list[tuple[str, float, int]] = []
        increases: list[tuple[str, float, int]] = []
        for sid, connectors in targets.items():
            # A profile on connector 0 holds for each connector: share the station's part.
            amps = math.floor(g.allocations.get(sid, 0.0) / connectors * 10) / 10
            refused = g.refused.get(sid)
            if refused is not None and refused[0] > now and refused[1] == amps:
                continue
            in_force = control.slot(sid).in_force
            if fleet and amps * connectors > self._recorded(g, sid) + 1e-6:
                increases.append((sid, amps, connectors))  # reserved first (below)
                continue
            (decreases if in_force is None or amps < in_force else increases).append(
                (sid, amps, connectors))
        ok = await self._send(g, decreases, now)
        if fleet:
            if g.view is None:  # the database is away: nothing may rise
                return
            for sid in connected:
                if sid not in targets and sid not in g.unsure and self._recorded(g, sid) > 0:
                    await self._shared_record(g, sid, 0.0)
            for sid, amps, connectors in decreases:
                if sid not in g.refused and amps * connectors < self._recorded(g, sid):
                    await self._shared_record(g, sid, amps * connectors)
        if not ok:
            if increases:
                log.warning("group %s: a decrease was not accepted; increases held back",
                            g.cfg.name)
            return
        if fleet:
            increases = await self._reserve(g, increases, capacity)
        await self._send(g, increases, now)

    async def _shared_record(self, g: _Group, station: str, whole: float) -> None:
        with contextlib.suppress(StoreUnavailable):
            recorded = await self._record(g, station, whole)
            if g.view is not None and station in g.view.members:
                g.view.members[station].share = recorded

    async def _reserve(self, g: _Group, rows: list[tuple[str, float, int]],
                       capacity: float) -> list[tuple[str, float, int]]:
        """The increases the other members leave room for, each reserved in the store."""
        granted = []
        minimum = {m.id: m.min_current for m in g.cfg.stations}
        for sid, amps, connectors in rows:
            before = self._recorded(g, sid)
            if amps * connectors <= before + 1e-6:
                granted.append((sid, amps, connectors))
                continue
            try:
                share = await self._record(g, sid, amps * connectors, capacity)
            except StoreUnavailable:
                return granted
            if g.view is not None and sid in g.view.members:
                g.view.members[sid].share = share
            amps = min(amps, math.floor(share / connectors * 10 + 1e-9) / 10)
            if amps >= minimum.get(sid, 0.0) - 1e-9:
                granted.append((sid, amps, connectors))
            else:  # less than the car can use: once the others came down
                log.debug("group %s: %s waits for another replica's decrease", g.cfg.name,
                          sid)
        return granted

    async def _send(self, g: _Group, rows: list[tuple[str, float, int]], now: float) -> bool:
        if not rows:
            return True
        outcomes = await asyncio.gather(*(
            self.control.request(sid, Request(amps, valid_for=g.cfg.failsafe_validity_s))
            for sid, amps, _ in rows), return_exceptions=True)
        ok = True
        for (sid, amps, _), outcome in zip(rows, outcomes, strict=True):
            status = getattr(outcome, "status", "error")
            if status in ("applied", "unchanged", "pending"):
                g.refused.pop(sid, None)
                continue
            ok = False
            g.refused[sid] = (now + RETRY_AFTER, amps)
            log.warning("%s: share %g A not put in force (%s)", sid, amps,
                        outcome if isinstance(outcome, BaseException) else status)
        return ok

    def _publish(self, g: _Group, metered: float | None, stale: bool, capacity: float) -> None:
        doc = {"name": g.cfg.name, "max_current": g.max_current, "metered": metered,
               "meter_stale": stale, "available": round(max(capacity, 0.0), 1),
               "allocations": g.allocations,
               "modes": {m.id: self._mode(g, m.id, g.view) for m in g.cfg.stations},
               "in_force": {sid: self._in_force(g, sid) for sid in g.allocations}}
        body = orjson.dumps(doc)
        if body != g.published:
            g.published = body
            self.ctx.publish(self.group_topic(g.cfg.name), body)

    def _in_force(self, g: _Group, station: str) -> float | None:
        row = g.view.members.get(station) if g.view is not None else None
        if station in g.written or row is None or not row.connected:
            return self.control.slot(station).in_force
        return row.share  # held by another replica: the most it may offer

    def documents(self) -> list[dict[str, Any]]:
        """Every group as last published on `bridge/groups/<name>` (the web page)."""
        return [orjson.loads(g.published) for g in self.groups.values() if g.published]

    def group_topic(self, name: str) -> str:
        return f"{self.ctx.topics.bridge}/groups/{name}"

    # --- requests -------------------------------------------------------------------------
    def _group_limit(self, request: Any) -> BridgeResponse:
        names = ", ".join(sorted(self.groups))
        if not isinstance(request, dict) or set(request) - {"id", "group", "max_current"}:
            return BridgeResponse("error", {}, 'expected {"group": "<name>", '
                                  '"max_current": <A>}')
        g = self.groups.get(request.get("group"))  # type: ignore[arg-type]
        if g is None:
            return BridgeResponse("error", {}, f"unknown group {request.get('group')!r}; "
                                  f"groups: {names}")
        value = request.get("max_current")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or \
                not math.isfinite(value) or value <= 0:
            return BridgeResponse("error", {"group": g.cfg.name},
                                  f"max_current must be a number > 0 (A), got {value!r}")
        g.max_current = float(value)
        self.control.store.set_meta(f"group_limit:{g.cfg.name}", f"{g.max_current:g}")
        log.info("group %s: max_current now %g A", g.cfg.name, g.max_current)
        g.wake.set()
        return BridgeResponse("ok", {"group": g.cfg.name, "max_current": g.max_current})

    async def _set_charge_mode(self, station: str, command_id: Any,
                               args: dict[str, Any], raw: bytes) -> dict[str, Any]:
        action = "set_charge_mode"
        g = self.group_of.get(station)
        mode = args.get("mode")
        if set(args) - {"mode"} or mode not in MODES:
            return commands.result_document(
                action, "error", command_id,
                error=f"set_charge_mode: args must be {{\"mode\": one of {', '.join(MODES)}}}, "
                      f"got {args!r}")
        if g is None:
            return commands.result_document(
                action, "error", command_id,
                error=f"station {station!r} is in no LOAD_BALANCING group")
        assert isinstance(mode, str)
        g.modes[station] = mode
        self.control.store.set_flag(station, MODE_FLAG, mode)
        self.control.emit(ev.ChargeModeChanged(station, self.ctx.now(), mode=mode))
        g.wake.set()
        return commands.result_document(action, "ok", command_id, response={"mode": mode})


# --- reading the state and the meter topics ----------------------------------------------------
def _charging_connectors(state: StationState) -> int:
    """Connectors with a car that charges or wants to (0: none)."""
    found = sum(1 for n, c in state.connectors.items()
                if n > 0 and c.values.get("status") in ACTIVE)
    if not found and state.values.get("status") in ACTIVE:
        found = 1
    return found


def _drawing(state: StationState) -> float | None:
    current = state.meter.get("current_import")
    if current is None:
        return None
    values = list(current.phases.values()) or (
        [current.value] if current.value is not None else [])
    return max(values) if values else None


def _number(payload: bytes) -> float | None:
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _amps(payload: bytes) -> float | None:
    """The house's other load: a number (A, every phase) or {"l1", "l2", "l3"}: the worst."""
    value = _number(payload)
    if value is not None:
        return value
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    phases: list[float] = []
    for name in ("l1", "l2", "l3"):
        if name not in doc:
            continue
        value = doc[name]
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not math.isfinite(value):
            return None
        phases.append(float(value))
    return max(phases) if phases else None
