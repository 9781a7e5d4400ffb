"""Current control that finds what works (issue 15): simulated chargers, each with one
real quirk, a real gateway, a real broker; and the pure rules behind it."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest

from ocpp2mqtt.charging import knowledge as kn
from ocpp2mqtt.config import parse_steps
from ocpp2mqtt.gateway import Gateway
from ocpp2mqtt.simulator import Charger, SimConfig, run_station
from tests.helpers import MqttRecorder
from tests.test_simulator import Remote, until


@dataclass
class SimStation:
    charger: Charger
    stop: asyncio.Event
    task: asyncio.Task

    @property
    def offered(self) -> float:
        return self.charger.limit()[0]

    def count(self, action: str) -> int:
        return self.charger.stats.commands[action]


@contextlib.asynccontextmanager
async def stations(url: str, ids: list[str], **cfg) -> AsyncIterator[list[SimStation]]:
    """Simulated chargers without a car of their own (sessions by remote start only)."""
    out = []
    for n, station in enumerate(ids):
        config = SimConfig(url=url, interval=1, session_seconds=3600, idle_seconds=3600,
                           seed=n, **cfg)
        charger = Charger(station, config, random.Random(n))
        stop = asyncio.Event()
        out.append(SimStation(charger, stop, asyncio.create_task(run_station(charger, stop))))
    try:
        yield out
    finally:
        for s in out:
            s.stop.set()
            s.charger.wake.set()
        for s in out:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.task, 15)


async def connected(remote: Remote) -> None:
    await until(lambda: remote.latest("connection_state") == "CONNECTED", "connected")
    await until(lambda: remote.latest("status") == "Available", "Available")


def state(remote: Remote, key: str) -> str | None:
    return remote.latest(key)


# --- each quirk ends with the requested current in force ---------------------------------
QUIRK_CASES = [
    # quirk, requested, in force, source, settings
    ("no_tx_default", 10, 10, "ChargePointMaxProfile", {}),
    ("stack0", 10, 10, "TxDefaultProfile", {}),
    ("absolute_only", 10, 10, "TxDefaultProfile", {}),
    ("watts_only", 10, 10, "TxDefaultProfile", {}),
    ("steps", 11, 10, "TxDefaultProfile", {"current_limit_steps": "6,8,10,13,16"}),
    ("no_smart_charging", 10, 10, "config:Station-MaxCurrent", {}),
]


@pytest.mark.parametrize(("quirk", "requested", "expected", "source", "extra"), QUIRK_CASES,
                         ids=[c[0] for c in QUIRK_CASES])
async def test_each_quirk_ends_with_the_limit_in_force(settings_factory, recorder, basepath,
                                                       quirk, requested, expected, source,
                                                       extra):
    settings = settings_factory(**extra)
    station = f"Q{quirk.replace('_', '')[:12]}"
    remote = Remote(recorder, f"{basepath}/{station}")
    gw = Gateway(settings)
    await gw.start()
    try:
        async with stations(f"ws://127.0.0.1:{gw.port}", [station], quirks=(quirk,)) as (sim,):
            await connected(remote)
            assert sim.offered == 16
            doc = await remote.command("set_current_limit", limit=requested)
            assert doc["status"] == "ok", doc
            assert sim.offered == pytest.approx(expected)
            await remote.expect("current_limit_status", "applied")
            assert float(state(remote, "current_limit")) == expected
            assert state(remote, "current_limit_source") == source
            probes = sim.count("GetConfiguration")
            assert probes == 1

            # A restart reuses what worked: no probe, no refused attempt.
            await gw.stop()
            remote.mark = len(recorder.snapshot())  # expect() looks from here on
            gw = Gateway(settings)
            await gw.start()
            sim.charger.cfg.url = f"ws://127.0.0.1:{gw.port}"  # listen_port 0: a new port
            await remote.expect("connection_state", "CONNECTED", timeout=15)
            writes = sim.count("SetChargingProfile") + sim.count("ChangeConfiguration")
            doc = await remote.command("set_current_limit", limit=8)
            assert doc["status"] == "ok", doc
            assert "after" not in (doc.get("note") or ""), doc
            assert sim.offered == 8
            assert sim.count("GetConfiguration") == probes
            assert sim.count("SetChargingProfile") + sim.count("ChangeConfiguration") == \
                writes + 1
            await until(lambda: state(remote, "current_limit_source") == source, "source")
    finally:
        await gw.stop()


async def test_a_charger_that_takes_nothing_says_unsupported(settings_factory, recorder,
                                                              basepath):
    settings = settings_factory()
    remote = Remote(recorder, f"{basepath}/QNONE")
    async with Gateway(settings) as gw:
        async with stations(f"ws://127.0.0.1:{gw.port}", ["QNONE"],
                            quirks=("no_smart_charging",)) as (sim,):
            await connected(remote)
            del sim.charger.config["Station-MaxCurrent"]  # no vendor key either
            doc = await remote.command("set_current_limit", limit=10)
            assert doc["status"] == "error"
            assert "takes no current limit" in doc["error"]
            await remote.expect("current_limit_status", "unsupported")
            assert sim.offered == 16


async def test_flash_rules(settings_factory, recorder, basepath):
    settings = settings_factory(current_limit_min_interval=1.5)
    remote = Remote(recorder, f"{basepath}/FLASH")
    async with Gateway(settings) as gw:
        async with stations(f"ws://127.0.0.1:{gw.port}", ["FLASH"]) as (sim,):
            await connected(remote)
            assert (await remote.command("set_current_limit", limit=6))["status"] == "ok"
            assert sim.charger.profile_writes == 1
            # Increases within the interval wait; the latest one wins, nothing queues up.
            doc = await remote.command("set_current_limit", limit=8)
            assert doc["status"] == "pending" and "CURRENT_LIMIT_MIN_INTERVAL" in doc["note"]
            await remote.expect("current_limit_status", "pending")
            doc = await remote.command("set_current_limit", limit=12)
            assert doc["status"] == "pending"
            await until(lambda: sim.offered == 12, "12 A in force", timeout=5)
            await remote.expect("current_limit_status", "applied")
            assert sim.charger.profile_writes == 2
            # Within the hysteresis: no write.
            doc = await remote.command("set_current_limit", limit=12.5)
            assert doc["status"] == "ok" and "unchanged" in doc["note"]
            # A decrease goes at once, interval or not.
            doc = await remote.command("set_current_limit", limit=7)
            assert doc["status"] == "ok"
            assert sim.offered == 7
            assert sim.charger.profile_writes == 3
            # After clear_current_limit the next limit is written even if equal.
            assert (await remote.command("clear_current_limit"))["status"] == "ok"
            assert sim.offered == 16
            assert (await remote.command("set_current_limit", limit=7))["status"] == "ok"
            assert sim.offered == 7


async def test_set_phases(settings_factory, recorder, basepath):
    settings = settings_factory()
    async with Gateway(settings) as gw:
        url = f"ws://127.0.0.1:{gw.port}"
        async with stations(url, ["PH1"], quirks=("phase_switch",)) as (sim,), \
                stations(url, ["PH0"]) as (plain,):
            one, other = Remote(recorder, f"{basepath}/PH1"), Remote(recorder, f"{basepath}/PH0")
            await connected(one)
            await connected(other)
            doc = await one.command("set_phases", phases=1)
            assert doc["status"] == "ok", doc
            assert sim.charger.limit()[1] == 1
            await one.expect("phases", "1")
            doc = await other.command("set_phases", phases=1)
            assert doc["status"] == "error" and "unsupported" in doc["error"]
            assert plain.charger.limit()[1] == 3
            doc = await other.command("set_phases", phases=2)
            assert doc["status"] == "error" and "1 | 3" in doc["error"]


# --- pure rules ------------------------------------------------------------------------------
def test_ways_order_and_memory():
    configured = kn.Way("TxDefaultProfile", 1, "Relative", "A")
    known = kn.Knowledge(caps=kn.Capabilities(max_stack_level=0, units=("W",)))
    ways = kn.ways(known, kn.Pins(), unit="A", in_transaction=False, balancing=False,
                   configured=configured)
    assert ways[0] == kn.Way("TxDefaultProfile", 0, "Relative", "W")
    assert all(w.purpose != "TxProfile" for w in ways)
    assert {w.stack_level for w in ways} == {0}
    known.works["ChargePointMaxProfile"] = kn.Way("ChargePointMaxProfile", 0, "Absolute", "W")
    known.fails.add("TxDefaultProfile")
    ways = kn.ways(known, kn.Pins(), unit="A", in_transaction=True, balancing=True,
                   configured=configured)
    assert ways[-1] == known.works["ChargePointMaxProfile"]
    assert ways[0].purpose == "TxProfile"
    assert not any(w.purpose == "TxDefaultProfile" for w in ways)
    pinned = kn.ways(kn.Knowledge(), kn.Pins(purpose="TxProfile", stack_level=3), unit="A",
                     in_transaction=True, balancing=False, configured=configured)
    assert {(w.purpose, w.stack_level) for w in pinned} == {("TxProfile", 3)}
    # The failsafe's slot is never a balancing limit's.
    balancing = kn.ways(kn.Knowledge(caps=kn.Capabilities(max_stack_level=0)), kn.Pins(),
                        unit="A", in_transaction=False, balancing=True, configured=configured)
    assert all(w.purpose != "TxDefaultProfile" for w in balancing)
    restored = kn.Knowledge.from_json(orjson.loads(orjson.dumps(known.to_json())))
    assert restored == known


def test_capabilities():
    caps = kn.capabilities_16({"configurationKey": [
        {"key": "SupportedFeatureProfiles", "readonly": True, "value": "Core,Reservation"},
        {"key": "ChargeProfileMaxStackLevel", "readonly": True, "value": "3"},
        {"key": "ChargingScheduleAllowedChargingRateUnit", "readonly": True, "value": "Power"},
        {"key": "Station-MaxCurrent", "readonly": False, "value": "32"},
        {"key": "ConnectorSwitch3to1PhaseSupported", "readonly": True, "value": "TRUE"},
    ]})
    assert caps == kn.Capabilities(False, 3, ("W",), None, True, "Station-MaxCurrent")
    assert kn.capabilities_16("garbage") == kn.Capabilities()
    caps2 = kn.capabilities_2x({"getVariableResult": [
        {"attributeStatus": "Accepted", "component": {"name": "SmartChargingCtrlr"},
         "variable": {"name": "Enabled"}, "attributeValue": "true"},
        {"attributeStatus": "Accepted", "component": {"name": "SmartChargingCtrlr"},
         "variable": {"name": "RateUnit"}, "attributeValue": "A"},
        {"attributeStatus": "UnknownVariable", "component": {"name": "SmartChargingCtrlr"},
         "variable": {"name": "Phases3to1"}},
    ]})
    assert caps2.smart_charging is True and caps2.units == ("A",) and caps2.phase_switch is None


def test_steps_and_when_to_write():
    steps = (6.0, 8.0, 10.0, 13.0, 16.0)
    assert kn.round_to_steps(12.9, steps, 0, False) == 10
    assert kn.round_to_steps(5.9, steps, 0, False) == 0
    assert kn.round_to_steps(7.6, None, 6, True) == 7
    assert kn.round_to_steps(5.9, None, 6, False) == 0
    with pytest.raises(ValueError, match="'x' is not a number"):
        parse_steps("6,x")
    w = kn.when_to_write
    assert w(None, 10, None, 100, 10, 1) == 100  # nothing known: now
    assert w(16, 10, 99, 100, 10, 1) == 100  # decrease: now
    assert w(10, 10.9, 0, 100, 10, 1) is None  # within the hysteresis
    assert w(10, 16, 95, 100, 10, 1) == 105  # increase: after the interval
    assert w(10, 16, 80, 100, 10, 1) == 100
    assert w(0, 0.5, 95, 100, 10, 1) == 105  # a paused station resumes, after the interval


# --- load balancing ---------------------------------------------------------------------------
class Fuse:
    """Watches every charger's limit as it changes: an increase must never take the sum
    of what the cars are offered over the fuse minus the metered load."""

    def __init__(self, sims: list[SimStation], max_current: float):
        self.sims = sims
        self.max_current = max_current
        self.metered = 0.0
        self.violations: list[str] = []
        self.before = {id(s.charger): s.offered for s in sims}
        self.history: list[str] = []  # every change, for the message of a violation
        for s in sims:
            s.charger.on_profile = self._changed

    def offered(self) -> float:
        return sum(s.offered for s in self.sims if s.charger.tx is not None)

    def _changed(self, charger: Charger) -> None:
        now = charger.limit()[0]
        rose = now > self.before.get(id(charger), 0.0) + 1e-6
        self.before[id(charger)] = now
        charging = {s.charger.station: s.offered for s in self.sims if s.charger.tx is not None}
        self.history.append(f"{charger.station} → {now} A; charging cars offered {charging}")
        if rose and self.offered() > self.max_current - self.metered + 1e-6:
            self.violations.append(f"{charger.station} → {now} A: Σ {self.offered()} A with "
                                   f"{self.metered} A metered")

    def check(self) -> None:
        assert not self.violations, "\n".join(["violations:", *self.violations,
                                                "last changes:", *self.history[-16:]])
        assert self.offered() <= self.max_current - self.metered + 1e-6


def group_doc(recorder, basepath: str, name: str) -> dict:
    text = recorder.last().get(f"{basepath}/bridge/groups/{name}")
    return orjson.loads(text) if text else {}


async def settle(recorder, basepath: str, name: str, sims: list[SimStation],
                 expected: dict[str, float], fuse: Fuse, hysteresis: float = 1.0) -> None:
    """Wait until the group allocates `expected` and each charging car is offered its
    share (an increase within the hysteresis is not written: up to 1 A less); check."""
    def done() -> bool:
        doc = group_doc(recorder, basepath, name)
        allocations = doc.get("allocations", {})
        if not all(abs(allocations.get(k, -1) - v) < 0.05 for k, v in expected.items()):
            return False
        return all(-0.05 <= allocations[s.charger.station] - s.offered <= hysteresis + 0.05
                   for s in sims if s.charger.station in expected and s.charger.tx is not None)

    try:
        await until(done, "allocations", timeout=15)
    except AssertionError:
        offered = {s.charger.station: s.offered for s in sims}
        raise AssertionError(f"wanted {expected}; group {group_doc(recorder, basepath, name)}"
                             f"; chargers offer {offered}") from None
    fuse.check()


async def test_two_chargers_share_one_fuse(settings_factory, recorder, basepath):
    meter = f"{basepath}/house/other_load"
    group = [{"name": "home", "stations": [{"id": "LBA", "max_current": 16},
                                           {"id": "LBB", "max_current": 16}],
              "max_current": 25, "meter_topic": meter, "failsafe_current": 6}]
    settings = settings_factory(load_balancing=orjson.dumps(group).decode())
    recorder.publish(meter, "5", retain=True)
    async with Gateway(settings) as gw:
        async with stations(f"ws://127.0.0.1:{gw.port}", ["LBA", "LBB"]) as sims:
            a, b = Remote(recorder, f"{basepath}/LBA"), Remote(recorder, f"{basepath}/LBB")
            fuse = Fuse(sims, 25)
            fuse.metered = 5
            await connected(a)
            await connected(b)
            # The failsafe profile is in place before any car arrives.
            await until(lambda: all(s.offered == 6 for s in sims), "failsafe 6 A")
            await a.command("start_charging")
            await settle(recorder, basepath, "home", sims, {"LBA": 16, "LBB": 0}, fuse)
            await b.command("start_charging")
            await settle(recorder, basepath, "home", sims, {"LBA": 10, "LBB": 10}, fuse)
            # The rest of the house draws more: both go down, at once.
            fuse.metered = 12
            recorder.publish(meter, '{"l1": 12, "l2": 3, "l3": 0}', retain=True)
            await settle(recorder, basepath, "home", sims, {"LBA": 6.5, "LBB": 6.5}, fuse)
            fuse.metered = 15
            recorder.publish(meter, "15", retain=True)  # 10 A left: one car paused
            await settle(recorder, basepath, "home", sims, {"LBA": 10, "LBB": 0}, fuse)
            fuse.metered = 5
            recorder.publish(meter, "5", retain=True)
            await settle(recorder, basepath, "home", sims, {"LBA": 10, "LBB": 10}, fuse)
            # A car that draws less than offered gives the rest back.
            sims[0].charger.soc = 95.0  # tapers: 4 A
            await settle(recorder, basepath, "home", sims, {"LBB": 14}, fuse)
            assert group_doc(recorder, basepath, "home")["allocations"]["LBA"] <= 6.1
            # A car leaves: the other gets what it can use.
            await a.command("stop_charging")
            await settle(recorder, basepath, "home", sims, {"LBA": 0, "LBB": 16}, fuse)
            # The group limit changes at runtime (bridge request), and survives a restart.
            recorder.publish(f"{basepath}/bridge/request/group_limit",
                             orjson.dumps({"group": "home", "max_current": 15}))
            fuse.max_current = 15
            await settle(recorder, basepath, "home", sims, {"LBB": 10}, fuse)
            assert gw.store.meta("group_limit:home") == "15"
            doc = await b.command("set_charge_mode", mode="off")
            assert doc["status"] == "ok"
            await settle(recorder, basepath, "home", sims, {"LBB": 0}, fuse)
            await b.expect("charge_mode", "off")
            doc = await b.command("set_charge_mode", mode="turbo")
            assert doc["status"] == "error" and "fast, solar, min_solar, off" in doc["error"]


async def test_five_chargers_by_priority_under_a_stepping_meter(settings_factory, recorder,
                                                                basepath):
    meter = f"{basepath}/house5/load"
    ids = [f"LB5{n}" for n in range(5)]
    members = [{"id": ids[0], "priority": 1, "max_current": 16},
               *({"id": i, "max_current": 16} for i in ids[1:])]
    group = [{"name": "depot", "stations": members, "max_current": 40, "meter_topic": meter,
              "failsafe_current": 6}]
    settings = settings_factory(load_balancing=orjson.dumps(group).decode())
    recorder.publish(meter, "0", retain=True)
    async with Gateway(settings) as gw:
        async with stations(f"ws://127.0.0.1:{gw.port}", ids) as sims:
            remotes = [Remote(recorder, f"{basepath}/{i}") for i in ids]
            fuse = Fuse(sims, 40)
            for r in remotes:
                await connected(r)
            # Cars arrive one by one; priority first: LB50 always gets its 16 A.
            for n, shares in enumerate(([16], [16, 16], [16, 12, 12], [16, 8, 8, 8],
                                        [16, 6, 6, 6, 6])):
                await remotes[n].command("start_charging")
                expected = dict.fromkeys(ids, 0.0)
                expected.update(zip(ids, shares, strict=False))
                await settle(recorder, basepath, "depot", sims, expected, fuse)
            # Less room: the lowest priority's last cars are paused, not starved.
            for metered, allocation in (
                    (10, [16, 7, 7, 0, 0]),  # 30 A: 16 + 6 + 6, the 2 A left shared
                    (30, [10, 0, 0, 0, 0]),  # 10 A: all of it to the priority car
                    (2, [16, 7.3, 7.3, 7.3, 0])):  # 38 A: 16 + 3 × 6, 4 A left shared
                fuse.metered = metered
                recorder.publish(meter, str(metered), retain=True)
                shares = dict(zip(ids, allocation, strict=True))
                await settle(recorder, basepath, "depot", sims, shares, fuse)
            await remotes[0].command("stop_charging")
            await settle(recorder, basepath, "depot", sims,
                         {ids[0]: 0, **dict.fromkeys(ids[1:], 9.5)}, fuse)


async def test_killed_gateway_chargers_fall_back_to_the_failsafe(broker, recorder, basepath,
                                                                tmp_path):
    from tests.helpers import free_port
    from tests.test_reliability import start_gateway_process, wait_listening

    group = [{"name": "kill", "stations": ["KF1", "KF2"], "max_current": 40,
              "failsafe_current": 6, "failsafe_validity_s": 3}]
    port = free_port()
    proc = start_gateway_process(broker.port, basepath, tmp_path / "data", port,
                                 LOAD_BALANCING=orjson.dumps(group).decode(),
                                 CURRENT_LIMIT_MAX="16")
    try:
        await wait_listening(port, proc)
        async with stations(f"ws://127.0.0.1:{port}", ["KF1", "KF2"]) as sims:
            remotes = [Remote(recorder, f"{basepath}/{s}") for s in ("KF1", "KF2")]
            for r in remotes:
                await connected(r)
                await r.command("start_charging")
            await until(lambda: all(s.offered == 16 for s in sims), "16 A each", timeout=15)
            # Renewed while the gateway lives: still 16 A after two validity windows.
            await asyncio.sleep(0)
            renewals = sum(s.charger.profile_writes for s in sims)
            await until(lambda: sum(s.charger.profile_writes for s in sims) >= renewals + 4,
                        "renewals", timeout=10)
            assert all(s.offered == 16 for s in sims)
            proc.kill()  # SIGKILL: nothing is cleared
            killed = asyncio.get_running_loop().time()
            await until(lambda: all(s.offered == 6 for s in sims), "failsafe 6 A", timeout=5)
            assert asyncio.get_running_loop().time() - killed <= 3.5  # within the validity
            assert all(s.charger.tx is not None for s in sims)  # still charging, safely
    finally:
        proc.kill()
        proc.wait(10)


async def test_a_jittering_meter_costs_few_flash_writes(settings_factory, recorder, basepath):
    meter = f"{basepath}/jitter/load"
    group = [{"name": "jit", "stations": [{"id": "JIT", "max_current": 16}],
              "max_current": 25, "meter_topic": meter}]
    settings = settings_factory(load_balancing=orjson.dumps(group).decode(),
                                current_limit_min_interval=10)
    recorder.publish(meter, "10", retain=True)
    async with Gateway(settings) as gw:
        async with stations(f"ws://127.0.0.1:{gw.port}", ["JIT"]) as (sim,):
            remote = Remote(recorder, f"{basepath}/JIT")
            await connected(remote)
            await remote.command("start_charging")
            await until(lambda: sim.offered == 15, "15 A")
            writes = sim.charger.profile_writes
            rng = random.Random(7)
            for _ in range(40):  # the house load wanders ±0.4 A, 20 times a second
                value = round(10 + rng.uniform(-0.4, 0.4), 2)
                recorder.publish(meter, str(value), retain=True)
                await asyncio.sleep(0.05)
            await until(lambda: group_doc(recorder, basepath, "jit").get("metered") == value,
                        "last reading")
            # Decreases below the lowest allocation so far are written, nothing else.
            assert sim.charger.profile_writes - writes <= 3
            assert sim.offered <= 25 - value + 1e-6


def test_allocation_never_exceeds_capacity():
    from ocpp2mqtt.charging.balancing import Demand, allocate

    rng = random.Random(15)
    for _ in range(2000):
        capacity = rng.uniform(-5, 64)
        demands = [Demand(f"S{i}", rng.choice((0, 0, 1)), rng.choice((0, 6, 6, 8)),
                          rng.choice((6, 10, 16, 32, rng.uniform(0, 32))),
                          active=rng.random() < 0.7,
                          reserved=rng.choice((0, 0, 0, 6)),
                          steps=rng.choice((None, (6.0, 8.0, 10.0, 13.0, 16.0))))
                   for i in range(rng.randint(1, 6))]
        shares = allocate(capacity, demands)
        assert sum(shares.values()) <= max(capacity, 0) + 1e-6, (capacity, demands, shares)
        for d in demands:
            got = shares[d.station]
            if d.reserved <= 0:
                assert got == 0 or (got >= d.min_current - 1e-6 and got <= d.max_current + 1e-6)
                if not d.active:
                    assert got == 0


def test_solar_starts_and_stops_without_chattering():
    from ocpp2mqtt.charging.balancing import Solar, SolarTiming

    solar = Solar(SolarTiming(smoothing_s=0, start_s=60, stop_s=120, min_on_s=300,
                              min_off_s=300))
    row = [("PV", "solar", 1, 6.0)]  # one phase, 6 A minimum = 1,380 W
    solar.reading(-2000, 0)  # exporting 2 kW
    assert solar.caps(0, row, fresh=True) == {"PV": 0.0}  # not yet: 60 s above first
    assert solar.caps(59, row, fresh=True) == {"PV": 0.0}
    assert solar.caps(60, row, fresh=True)["PV"] == pytest.approx(2000 / 230)
    # A cloud: the car draws 8.7 A (2,001 W), the grid imports 500 W: 1.5 kW is left.
    solar.reading(500, 61, drawing_w=8.7 * 230)
    assert solar.caps(61, row, fresh=True)["PV"] == pytest.approx((8.7 * 230 - 500) / 230)
    # Too little for the minimum: it keeps 6 A (min_on_s and stop_s) before stopping.
    solar.reading(1500, 62, drawing_w=8.7 * 230)
    assert solar.caps(62, row, fresh=True)["PV"] == 6.0
    assert solar.caps(300, row, fresh=True)["PV"] == 6.0  # on for < min_on_s
    assert solar.caps(361, row, fresh=True)["PV"] == 0.0
    # No fresh grid reading: no surplus; min_solar keeps its minimum anyway.
    assert solar.caps(400, [("PV", "min_solar", 1, 6.0)], fresh=False) == {"PV": 6.0}
    # Smoothing: a one-second spike moves a 30-second average by a thirtieth.
    smooth = Solar(SolarTiming(smoothing_s=30))
    smooth.reading(-3000, 0)
    smooth.reading(3000, 1)
    assert smooth.surplus_w == pytest.approx(3000 * 29 / 30)


async def test_a_group_in_home_assistant(settings_factory, broker, recorder, basepath):
    group = [{"name": "ha", "stations": ["HAG1"], "max_current": 25}]
    discovery = f"hagroups{basepath.replace('/', '')}"
    settings = settings_factory(load_balancing=orjson.dumps(group).decode(),
                                homeassistant_discovery=True,
                                homeassistant_discovery_prefix=discovery)
    watch = MqttRecorder(broker.port, f"{discovery}/#")
    try:
        async with Gateway(settings) as gw:
            async with stations(f"ws://127.0.0.1:{gw.port}", ["HAG1"]):
                remote = Remote(recorder, f"{basepath}/HAG1")
                await connected(remote)
                doc = orjson.loads(await watch.wait_for(
                    f"{discovery}/device/ocpp2mqtt_groups/ha/config"))
                parts = doc["components"]
                assert {"max_current", "metered", "available", "allocation_HAG1",
                        "mode_HAG1"} <= set(parts)
                # What Home Assistant sends when the user moves the number and the select.
                number = parts["max_current"]
                recorder.publish(number["command_topic"],
                                 number["command_template"].replace("{{ value }}", "20"))
                await until(lambda: group_doc(recorder, basepath, "ha").get("max_current")
                            == 20, "group limit 20 A")
                select = parts["mode_HAG1"]
                assert select["state_topic"] == f"{basepath}/HAG1/state/charge_mode"
                recorder.publish(select["command_topic"],
                                 select["command_template"].replace("{{ value }}", "solar"))
                await remote.expect("charge_mode", "solar")
    finally:
        watch.close()


async def test_bad_group_input_gets_an_answer_and_changes_nothing(settings_factory, recorder,
                                                                  basepath, caplog):
    meter = f"{basepath}/bad/load"
    group = [{"name": "bad", "stations": [{"id": "BAD1", "max_current": 16}],
              "max_current": 25, "meter_topic": meter}]
    settings = settings_factory(load_balancing=orjson.dumps(group).decode())
    recorder.publish(meter, "5", retain=True)
    async with Gateway(settings) as gw:
        async with stations(f"ws://127.0.0.1:{gw.port}", ["BAD1"]) as (sim,):
            remote = Remote(recorder, f"{basepath}/BAD1")
            await connected(remote)
            await remote.command("start_charging")
            await until(lambda: sim.offered == 16, "16 A")
            response = f"{basepath}/bridge/response/group_limit"
            for request, error in (
                    ({"group": "nope", "max_current": 10}, "unknown group 'nope'"),
                    ({"group": "bad", "max_current": -3}, "max_current must be a number > 0"),
                    ({"group": "bad", "max_current": "ten"}, "max_current must be a number"),
                    ({"group": "bad", "limit": 10}, 'expected {"group"'),
            ):
                before = len(recorder.values(response))
                recorder.publish(f"{basepath}/bridge/request/group_limit", orjson.dumps(request))
                await until(lambda b=before: len(recorder.values(response)) > b, "answer")
                answer = orjson.loads(recorder.values(response)[-1])
                assert answer["status"] == "error" and error in answer["error"], answer
            for garbage in ("abc", '{"l1": "x"}', "[1, 2]", "NaN"):
                recorder.publish(meter, garbage)
            recorder.publish(meter, "9", retain=True)  # the next good reading counts
            await until(lambda: group_doc(recorder, basepath, "bad").get("metered") == 9,
                        "metered 9 A")
            warned = [r for r in caplog.records if "ignored until a good reading" in r.message]
            assert len(warned) == 1, [r.message for r in warned]  # once, not per message
            await until(lambda: sim.offered == 16, "still 16 A (25 − 9)")
            assert group_doc(recorder, basepath, "bad")["max_current"] == 25
            doc = await remote.command("set_charge_mode", mode="fast", speed=3)
            assert doc["status"] == "error"


def test_group_configuration_errors_name_the_variable():
    from ocpp2mqtt.config import ConfigError, load_settings

    cases = (
        ('[{"name": "a", "stations": ["X"], "max_current": 0}]',
         "LOAD_BALANCING: 0.max_current: Input should be greater than 0"),
        ('[{"name": "a", "stations": ["X"], "max_current": 10},'
         ' {"name": "b", "stations": ["X"], "max_current": 10}]',
         "LOAD_BALANCING: station 'X' is in two groups (a, b)"),
        ('[{"name": "a", "stations": [], "max_current": 10}]', "LOAD_BALANCING: 0.stations"),
        ('[{"name": "a", "stations": ["X"], "max_current": 10, "meter_topic": "h/#"}]',
         "LOAD_BALANCING: 0.meter_topic: must be an MQTT topic without wildcards"),
        ('[{"name": "a", "stations": ["X"], "max_current": 10, "fuse": 3}]',
         "LOAD_BALANCING: 0.fuse: Extra inputs are not permitted"),
        ("{not json", "LOAD_BALANCING: not valid JSON"),
    )
    for raw, message in cases:
        with pytest.raises(ConfigError) as info:
            load_settings(_env_file=None, load_balancing=raw)
        assert str(info.value).startswith(message), str(info.value)
    with pytest.raises(ConfigError, match=r"^CURRENT_LIMIT_STEPS: CP1: '-6' is not a current"):
        load_settings(_env_file=None, current_limit_steps='{"CP1": "-6,8"}')
    assert load_settings(_env_file=None, current_limit_steps='{"CP1": [16, 6]}').steps_for(
        "CP1") == (6.0, 16.0)


async def test_ocpp_201_current_control(settings_factory, recorder, basepath):
    async with Gateway(settings_factory()) as gw:
        async with stations(f"ws://127.0.0.1:{gw.port}", ["V2CC"], ocpp="2.0.1",
                            quirks=("absolute_only",)) as (sim,):
            remote = Remote(recorder, f"{basepath}/V2CC")
            await connected(remote)
            doc = await remote.command("set_current_limit", limit=11)
            assert doc["status"] == "ok", doc
            assert sim.offered == 11
            assert sim.count("GetVariables") == 1
            assert state(remote, "current_limit_source") == "TxDefaultProfile"
            assert "Absolute" in doc["note"]  # found after Relative was refused
            doc = await remote.command("set_current_limit", limit=7)
            assert doc["status"] == "ok" and "note" not in doc, doc


async def test_solar_surplus_end_to_end(settings_factory, recorder, basepath):
    grid = f"{basepath}/solar/grid"
    group = [{"name": "pv", "stations": [{"id": "PV1", "max_current": 16}], "max_current": 25,
              "grid_power_topic": grid, "solar_smoothing_s": 0, "solar_start_s": 0,
              "solar_stop_s": 2, "solar_min_on_s": 2, "solar_min_off_s": 2}]
    settings = settings_factory(load_balancing=orjson.dumps(group).decode())
    async with Gateway(settings) as gw:
        async with stations(f"ws://127.0.0.1:{gw.port}", ["PV1"]) as (sim,):
            remote = Remote(recorder, f"{basepath}/PV1")
            await connected(remote)
            assert (await remote.command("set_charge_mode", mode="solar"))["status"] == "ok"
            # The house: the grid meter sees what the panels make minus what the car draws.
            pv = {"w": 2760.0}  # 4 A on three phases: under the 6 A minimum

            async def grid_meter() -> None:
                while True:
                    recorder.publish(grid, f"{sim.charger.power() - pv['w']:.0f}")
                    await asyncio.sleep(0.2)

            meter_task = asyncio.create_task(grid_meter())
            try:
                await remote.command("start_charging")
                await until(lambda: sim.charger.tx is not None and sim.offered == 0, "paused")
                pv["w"] = 5520.0  # 8 A of surplus
                await until(lambda: 7 <= sim.offered <= 9, "about 8 A from the sun")
                await asyncio.sleep(3)  # the car uses it all: it keeps charging from the sun
                assert 7 <= sim.offered <= 9
                pv["w"] = 2500.0  # a cloud
                await until(lambda: sim.offered == 0, "paused again")
                doc = await remote.command("set_charge_mode", mode="min_solar")
                assert doc["status"] == "ok"
                await until(lambda: sim.offered == 6, "the minimum, from the grid")
            finally:
                meter_task.cancel()


async def test_a_new_firmware_is_asked_again(settings_factory, recorder, basepath):
    async with Gateway(settings_factory()) as gw:
        async with stations(f"ws://127.0.0.1:{gw.port}", ["FWUP"],
                            quirks=("absolute_only",)) as (sim,):
            remote = Remote(recorder, f"{basepath}/FWUP")
            await connected(remote)
            assert (await remote.command("set_current_limit", limit=10))["status"] == "ok"
            assert sim.count("GetConfiguration") == 1
            for firmware, probes in ((sim.charger.cfg.firmware, 1), ("9.9.9", 2)):
                sim.charger.cfg.firmware = firmware
                remote.mark = len(recorder.snapshot())
                assert (await remote.command("reset", type="Soft"))["status"] == "ok"
                await remote.expect("firmware_version", firmware, timeout=15)
                await until(lambda: remote.latest("status") == "Available", "back")
                doc = await remote.command("set_current_limit", limit=8)
                assert doc["status"] == "ok", doc
                assert sim.count("GetConfiguration") == probes  # same firmware: not again
                assert ("after" in (doc.get("note") or "")) == (probes == 2)
