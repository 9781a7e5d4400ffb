"""Issue 7: the charge point simulator against a real gateway and a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import orjson
import pytest

from ocpp2mqtt.gateway import Gateway
from ocpp2mqtt.simulator import SimConfig, StationStats, simulate
from tests.helpers import MqttRecorder, free_port, make_cert


async def until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Poll `check()` until truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Sim:
    """A simulator running in this event loop; `finish()` stops it and returns its stats."""

    def __init__(self, cfg: SimConfig):
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(simulate(cfg, self.stop))

    async def finish(self, timeout: float = 15.0) -> list[StationStats]:
        self.stop.set()
        return await asyncio.wait_for(self.task, timeout)


@contextlib.asynccontextmanager
async def running(cfg: SimConfig) -> AsyncIterator[Sim]:
    sim = Sim(cfg)
    try:
        yield sim
    finally:
        if not sim.task.done():
            with contextlib.suppress(Exception):
                await sim.finish()


_ids = itertools.count(1)


class Remote:
    """Commands one station over MQTT and watches what it publishes *after* each command."""

    def __init__(self, recorder: MqttRecorder, prefix: str):
        self.recorder = recorder
        self.prefix = prefix
        self.mark = 0

    def latest(self, key: str) -> str | None:
        return self.recorder.last().get(f"{self.prefix}/state/{key}")

    async def expect(self, key: str, value: str, timeout: float = 10.0) -> None:
        """Wait for `state/<key>` = `value` published since the last command."""
        topic = f"{self.prefix}/state/{key}"

        def seen() -> bool:
            return any(m.topic == topic and m.text == value
                       for m in self.recorder.snapshot()[self.mark:])

        await until(seen, f"{topic} = {value!r} (now {self.latest(key)!r})", timeout)

    async def command(self, action: str, **args: Any) -> dict:
        """Publish a command; return its cmd_result document."""
        cid = f"c{next(_ids)}"
        self.mark = len(self.recorder.snapshot())
        self.recorder.publish(f"{self.prefix}/cmd",
                              orjson.dumps({"id": cid, "action": action, "args": args}))

        def result() -> dict | None:
            for text in self.recorder.values(f"{self.prefix}/cmd_result"):
                doc = orjson.loads(text)
                if doc.get("id") == cid:
                    return doc
            return None

        return await until(result, f"cmd_result of {action}")


def samples(recorder: MqttRecorder, state: str) -> list[dict]:
    """The meter values one station published, in order, rebuilt from its state topics.

    Each MeterValues entry publishes its measurand topics and then
    `meter_timestamp`; the values seen since the previous timestamp form one sample.
    """
    out: list[dict] = []
    current: dict[str, str] = {}
    for m in recorder.snapshot():
        if not m.topic.startswith(state + "/"):
            continue
        key = m.topic[len(state) + 1:]
        if key == "meter_timestamp":
            out.append({**current, "t": datetime.fromisoformat(m.text.replace("Z", "+00:00"))})
            current = {}
        elif key.startswith(("voltage", "current_", "power_", "energy_", "soc")):
            current[key] = m.text
    return out


def check_physics(recorder: MqttRecorder, state: str) -> None:
    """The readings a simulated station published are physical: three phases of 230 V and
    16 A, power = Σ V·I, and an energy register that integrates power over time."""
    charging = [s for s in samples(recorder, state)
                if float(s.get("current_import/l1", 0)) > 0]
    assert len(charging) >= 5
    for s in charging:
        volts = [float(s[f"voltage/{p}"]) for p in ("l1_n", "l2_n", "l3_n")]
        amps = [float(s[f"current_import/{p}"]) for p in ("l1", "l2", "l3")]
        assert all(220 <= v <= 240 for v in volts), s
        assert all(15 <= a <= 16 for a in amps), s
        assert float(s["current_offered"]) == 16
        power = float(s["power_active_import"])
        assert power == pytest.approx(sum(v * a for v, a in zip(volts, amps, strict=True)),
                                      rel=0.02)
        assert 0 < float(s["soc"]) <= 100
    series = [s for s in samples(recorder, state) if "energy_active_import_register" in s]
    energy = [float(s["energy_active_import_register"]) for s in series]
    assert energy == sorted(energy) and energy[-1] > energy[0]
    expected = gained = 0.0
    for a, b in itertools.pairwise(series):
        power = float(a.get("power_active_import", 0))
        expected += power * (b["t"] - a["t"]).total_seconds() / 3600
        gained += float(b["energy_active_import_register"]) - float(
            a["energy_active_import_register"])
    # loose: the simulator integrates over its own clock, samples jitter under load
    assert gained == pytest.approx(expected, rel=0.15, abs=1.0)


async def test_stations_charge_realistically(gateway, url, recorder, basepath):
    cfg = SimConfig(url=url, stations=2, prefix="SIM", interval=0.2, session_seconds=1.5,
                    idle_seconds=0.2, seed=7)
    async with running(cfg) as sim:
        for station in ("SIM0001", "SIM0002"):
            state = f"{basepath}/{station}/state"
            await recorder.wait_for(f"{state}/charge_point_vendor", "ocpp2mqtt")
            await recorder.wait_for(f"{state}/connector/0/status", "Available")
            await recorder.wait_for(f"{state}/meter_stop_reason", "EVDisconnected")
        stats = await sim.finish()
    assert [s.station for s in stats] == ["SIM0001", "SIM0002"]
    for s in stats:
        assert s.boots == 1 and s.sessions_completed >= 1 and s.meter_values >= 5

    for station in ("SIM0001", "SIM0002"):
        state = f"{basepath}/{station}/state"
        # The status cycle of a session, in order. The last statuses were sent just
        # before the simulator stopped: wait for the broker to deliver them.
        def cycled(state: str = state) -> bool:
            it = iter(recorder.values(f"{state}/status"))
            return all(s in it for s in ("Available", "Preparing", "Charging", "Finishing",
                                         "Available"))

        await until(cycled, f"the status cycle of a session of {station}")
        assert recorder.values(f"{state}/authorize_status")[0] == "Accepted"
        await recorder.wait_for(f"{state}/heartbeat")  # sent after each session
        starts = [int(v) for v in recorder.values(f"{state}/meter_start")]
        stops = [int(v) for v in recorder.values(f"{state}/meter_stop")]
        energies = [int(v) for v in recorder.values(f"{state}/session_energy")]
        assert stops and energies[0] == stops[0] - starts[0]
        # 16 A on three phases ≈ 11 kW; 1.5 s of that ≈ 4.5 Wh.
        assert 2 <= energies[0] <= 8, energies

        check_physics(recorder, state)


async def test_commands_are_answered(gateway, url, recorder, basepath):
    # No car of its own for an hour: sessions here start by remote start only.
    cfg = SimConfig(url=url, stations=1, prefix="CMD", interval=30, session_seconds=300,
                    idle_seconds=3600, seed=1)
    cp = Remote(recorder, f"{basepath}/CMD0001")

    async with running(cfg) as sim:
        await cp.expect("status", "Available")
        doc = await cp.command("start_charging", idTag="REMOTE0")
        assert doc["response"] == {"status": "Accepted"}
        await cp.expect("status", "Charging")
        await cp.expect("current_offered", "16")
        assert cp.latest("id_tag") == "REMOTE0"
        assert cp.latest("authorize") is None  # AuthorizeRemoteTxRequests=false

        # SetChargingProfile: the car draws what the limit allows, at once.
        doc = await cp.command("set_current_limit", limit=8)
        assert doc["status"] == "ok" and doc["response"] == {"status": "Accepted"}
        await cp.expect("current_offered", "8")
        await until(lambda: float(cp.latest("power_active_import")) < 6000, "power at 8 A")
        for phase in ("l1", "l2", "l3"):
            assert 7.5 <= float(cp.latest(f"current_import/{phase}")) <= 8
        # Below 6 A the car pauses (IEC 61851).
        assert (await cp.command("set_current_limit", limit=4))["status"] == "ok"
        await cp.expect("status", "SuspendedEVSE")
        await cp.expect("current_import", "0")
        # Watts: 4140 W over three phases at 230 V = 6 A.
        assert (await cp.command("set_current_limit", limit=4140, unit="W"))["status"] == "ok"
        await cp.expect("current_offered", "6")
        await cp.expect("status", "Charging")
        assert (await cp.command("clear_current_limit"))["status"] == "ok"
        await cp.expect("current_offered", "16")
        doc = await cp.command("clear_current_limit")
        assert doc["status"] == "rejected" and doc["response"] == {"status": "Unknown"}

        # Configuration.
        doc = await cp.command("get_configuration", key=["MeterValueSampleInterval", "NoSuchKey"])
        assert doc["status"] == "ok"
        assert doc["response"]["configuration_key"] == [
            {"key": "MeterValueSampleInterval", "readonly": False, "value": "30"}]
        assert doc["response"]["unknown_key"] == ["NoSuchKey"]
        doc = await cp.command("change_configuration", key="NumberOfConnectors", value="2")
        assert doc["response"] == {"status": "Rejected"}
        doc = await cp.command("change_configuration", key="Nope", value="1")
        assert doc["response"] == {"status": "NotSupported"}
        doc = await cp.command("change_configuration", key="MeterValueSampleInterval",
                               value="0.1")
        assert doc["status"] == "ok"
        topic = f"{cp.prefix}/state/meter_timestamp"
        await until(lambda: sum(m.topic == topic for m in recorder.snapshot()[cp.mark:]) >= 5,
                    "meter values every 0.1 s")

        # TriggerMessage, DataTransfer.
        doc = await cp.command("trigger_message", requested_message="Heartbeat")
        assert doc["response"] == {"status": "Accepted"}
        await until(lambda: any(m.topic == f"{cp.prefix}/state/heartbeat"
                                for m in recorder.snapshot()[cp.mark:]), "a heartbeat")
        doc = await cp.command("data_transfer", vendor_id="ocpp2mqtt", message_id="echo",
                               data="ping")
        assert doc["response"] == {"status": "Accepted", "data": "ping"}
        doc = await cp.command("data_transfer", vendor_id="someone-else")
        assert doc["response"] == {"status": "UnknownVendorId"}

        # Remote stop and start, unlock.
        tx = cp.latest("transaction_id")
        assert (await cp.command("stop_charging"))["status"] == "ok"
        await cp.expect("meter_stop_reason", "Remote")
        await cp.expect("status", "Available")
        assert cp.latest("last_transaction_id") == tx
        doc = await cp.command("start_charging", idTag="REMOTE1")
        assert doc["response"] == {"status": "Accepted"}
        await cp.expect("id_tag", "REMOTE1")
        await cp.expect("status", "Charging")
        assert cp.latest("transaction_id") not in ("", tx)
        doc = await cp.command("start_charging")
        assert doc["response"] == {"status": "Rejected"}  # one transaction at a time
        doc = await cp.command("unlock_connector", connector_id=1)
        assert doc["response"] == {"status": "Unlocked"}
        await cp.expect("meter_stop_reason", "UnlockCommand")

        # Availability: Inoperative refuses remote starts until Operative again.
        doc = await cp.command("change_availability", connector_id=0, type="Inoperative")
        assert doc["response"]["status"] in ("Accepted", "Scheduled")
        await cp.expect("status", "Unavailable")
        doc = await cp.command("start_charging")
        assert doc["response"] == {"status": "Rejected"}
        doc = await cp.command("change_availability", connector_id=0, type="Operative")
        assert doc["response"] == {"status": "Accepted"}
        await cp.expect("status", "Available")
        assert (await cp.command("start_charging"))["status"] == "ok"
        await cp.expect("status", "Charging")

        # Reset: the transaction ends, the charge point reconnects and boots again.
        doc = await cp.command("reset", type="Soft")
        assert doc["response"] == {"status": "Accepted"}
        await cp.expect("meter_stop_reason", "SoftReset")
        await cp.expect("connection_state", "DISCONNECTED")
        await cp.expect("connection_state", "CONNECTED")
        await cp.expect("status", "Available")
        assert (await cp.command("start_charging"))["status"] == "ok"
        await cp.expect("status", "Charging")
        stats = (await sim.finish())[0]
    assert stats.boots == 2 and stats.connects == 2
    assert stats.commands["SetChargingProfile"] == 3
    assert stats.commands["Reset"] == 1
    # Stopping the simulator ended the open transaction properly.
    await cp.expect("meter_stop_reason", "Local")


async def test_cli_runs_for_duration(gateway, url, recorder, basepath):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ocpp2mqtt", "simulate", "--url", url, "--stations", "2",
        "--prefix", "CLI", "--interval", "0.2", "--session-seconds", "0.5",
        "--idle-seconds", "0.1", "--duration", "3", "--seed", "5", "--log-level", "WARNING",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert [line.split(":")[0] for line in lines] == ["CLI0001", "CLI0002"]
    for station in ("CLI0001", "CLI0002"):
        state = f"{basepath}/{station}/state"
        await recorder.wait_for(f"{state}/meter_stop_reason", "EVDisconnected")
        await recorder.wait_for(f"{state}/connection_state", "DISCONNECTED")
        assert float(recorder.last()[f"{state}/energy_active_import_register"]) > 0


async def test_cli_fails_when_nothing_connects():
    url = f"ws://127.0.0.1:{free_port()}"  # nothing listens here
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ocpp2mqtt", "simulate", "--url", url, "--duration", "1",
        "--log-level", "ERROR",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    assert "SIM0001: connects=0 boots=0" in out.decode()



async def test_wss_and_basic_auth(settings_factory, recorder, basepath, tmp_path):
    """Security profiles 1 and 2: the simulator speaks wss:// and sends Basic credentials."""
    cert, key = await asyncio.to_thread(make_cert, tmp_path)
    settings = settings_factory(ocpp_tls_cert_file=str(cert), ocpp_tls_key_file=str(key),
                                ocpp_basic_auth={"SEC0001": "s3cret"})
    async with Gateway(settings) as gw:
        url = f"wss://127.0.0.1:{gw.port}"
        base = dict(url=url, stations=1, prefix="SEC", interval=0.2, session_seconds=0.5,
                    idle_seconds=0.1, ca_file=str(cert))
        wrong = await simulate(SimConfig(**base, password="guess", duration=1.0))
        assert wrong[0].connects == 0 and wrong[0].boots == 0
        untrusted = await simulate(SimConfig(**{**base, "ca_file": None}, password="s3cret",
                                             duration=1.0))
        assert untrusted[0].connects == 0  # the self-signed certificate is not trusted
        async with running(SimConfig(**base, password="s3cret")) as sim:
            await recorder.wait_for(f"{basepath}/SEC0001/state/meter_stop_reason",
                                    "EVDisconnected")
            stats = await sim.finish()
        assert stats[0].boots == 1 and stats[0].sessions_completed >= 1
