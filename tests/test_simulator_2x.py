"""The charge point simulator speaking OCPP 2.0.1 and 2.1 (`--ocpp`) against a real gateway
and a real Mosquitto: what the gateway publishes, and commands reaching the simulator."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest
from ocpp import v21, v201
from ocpp.exceptions import NotSupportedError
from ocpp.routing import on
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from ocpp2mqtt import __version__
from ocpp2mqtt.simulator import SimConfig
from tests.helpers import MqttRecorder
from tests.test_simulator import Remote, check_physics, running, until

CYCLE = ("Available", "Preparing", "Charging", "Finishing", "Available")


def cycled(recorder: MqttRecorder, state: str) -> bool:
    """The status cycle of a session, in order, among the statuses published."""
    it = iter(recorder.values(f"{state}/status"))
    return all(s in it for s in CYCLE)


def numbers(recorder: MqttRecorder, topic: str) -> list[float]:
    return [float(v) for v in recorder.values(topic) if v]


def assert_session_energy(recorder: MqttRecorder, state: str) -> list[float]:
    """meter_start, meter_stop and session_energy agree; sessions follow each other."""
    starts = numbers(recorder, f"{state}/meter_start")
    stops = numbers(recorder, f"{state}/meter_stop")
    energies = numbers(recorder, f"{state}/session_energy")
    assert stops and len(energies) == len(stops) <= len(starts)
    for start, stop, energy in zip(starts, stops, energies, strict=False):
        assert energy == pytest.approx(stop - start, abs=1e-6)
        assert energy >= 0
    for stop, next_start in zip(stops, starts[1:], strict=False):
        assert next_start >= stop  # the register never runs backwards
    return energies


async def test_201_stations_charge_realistically(gateway, url, recorder, basepath):
    cfg = SimConfig(url=url, stations=2, prefix="V2X", interval=0.2, session_seconds=1.5,
                    idle_seconds=0.2, seed=7, ocpp="2.0.1")
    stations = ("V2X0001", "V2X0002")
    async with running(cfg) as sim:
        for station in stations:
            state = f"{basepath}/{station}/state"
            await recorder.wait_for(f"{state}/ocpp_version", "2.0.1")
            await recorder.wait_for(f"{state}/charge_point_vendor", "ocpp2mqtt")
            await recorder.wait_for(f"{state}/meter_stop_reason", "EVDisconnected")
        stats = await sim.finish()
    assert [s.station for s in stats] == list(stations)
    for s in stats:
        assert s.boots == 1 and s.sessions_completed >= 1 and s.meter_values >= 5

    for station in stations:
        state = f"{basepath}/{station}/state"
        last = recorder.last()
        assert last[f"{state}/charge_point_model"] == "Simulator"
        assert last[f"{state}/charge_point_serial_number"] == station
        assert last[f"{state}/firmware_version"] == __version__
        await until(lambda state=state: cycled(recorder, state),
                    f"the status cycle of a session of {station}")
        # 2.x's own vocabulary is published beside the 1.6 status.
        assert {"Occupied", "Available"} <= set(recorder.values(f"{state}/connector_status"))
        assert {"EVConnected", "Charging"} <= set(recorder.values(f"{state}/charging_state"))
        # Transaction ids are the station's UUIDs (strings), emptied at the stop.
        ids = [v for v in recorder.values(f"{state}/transaction_id") if v]
        assert ids and all(str(uuid.UUID(v)) == v for v in ids)
        assert recorder.values(f"{state}/last_transaction_id")[0] == ids[0]
        assert recorder.values(f"{state}/id_tag")[0] == "SIMTAG01"
        assert recorder.values(f"{state}/authorize_status")[0] == "Accepted"
        await recorder.wait_for(f"{state}/heartbeat")  # sent after each session
        energies = assert_session_energy(recorder, state)
        # 16 A on three phases ≈ 11 kW; 1.5 s of that ≈ 4.5 Wh.
        assert 2 <= energies[0] <= 8, energies

        check_physics(recorder, state)


async def test_201_commands_are_answered(gateway, url, recorder, basepath):
    # No car of its own for an hour: sessions here start by remote start only.
    cfg = SimConfig(url=url, stations=1, prefix="CMX", interval=30, session_seconds=300,
                    idle_seconds=3600, seed=1, ocpp="2.0.1")
    cp = Remote(recorder, f"{basepath}/CMX0001")

    async with running(cfg) as sim:
        await cp.expect("ocpp_version", "2.0.1")
        await cp.expect("status", "Available")
        doc = await cp.command("start_charging", idTag="REMOTE0")
        assert doc["status"] == "ok" and doc["response"] == {"status": "Accepted"}
        await cp.expect("status", "Charging")
        await cp.expect("current_offered", "16")
        assert cp.latest("id_tag") == "REMOTE0"
        assert cp.latest("authorize") is None  # AuthorizeRemoteStart=false
        tx = cp.latest("transaction_id")
        assert tx and str(uuid.UUID(tx)) == tx

        # SetChargingProfile (TxDefaultProfile on EVSE 0): the car follows at once.
        doc = await cp.command("set_current_limit", limit=10)
        assert doc["status"] == "ok" and doc["response"] == {"status": "Accepted"}
        await cp.expect("current_offered", "10")
        await until(lambda: float(cp.latest("power_active_import")) < 7000, "power at 10 A")
        for phase in ("l1", "l2", "l3"):
            assert 9.5 <= float(cp.latest(f"current_import/{phase}")) <= 10
        assert (await cp.command("set_current_limit", limit=4))["status"] == "ok"
        await cp.expect("status", "SuspendedEVSE")
        await cp.expect("charging_state", "SuspendedEVSE")
        await cp.expect("current_import", "0")
        # Watts: 4140 W over three phases at 230 V = 6 A.
        assert (await cp.command("set_current_limit", limit=4140, unit="W"))["status"] == "ok"
        await cp.expect("current_offered", "6")
        await cp.expect("status", "Charging")
        assert (await cp.command("clear_current_limit"))["status"] == "ok"
        await cp.expect("current_offered", "16")
        doc = await cp.command("clear_current_limit")
        assert doc["status"] == "rejected" and doc["response"] == {"status": "Unknown"}

        # The device model, through the 1.6 commands and the 2.x ones.
        doc = await cp.command("get_configuration", key=["MeterValueSampleInterval",
                                                         "SampledDataCtrlr/Nope", "Nope/X"])
        assert doc["status"] == "ok"
        assert doc["response"]["configuration_key"] == [
            {"key": "MeterValueSampleInterval", "readonly": False, "value": "30"}]
        assert doc["response"]["unknown_key"] == ["SampledDataCtrlr/Nope", "Nope/X"]
        doc = await cp.command("get_variables", get_variable_data=[
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "Nope"}},
            {"component": {"name": "Nope"}, "variable": {"name": "HeartbeatInterval"}}])
        assert [(r["attribute_status"], r.get("attribute_value"))
                for r in doc["response"]["get_variable_result"]] == [
            ("Accepted", "300"), ("UnknownVariable", None), ("UnknownComponent", None)]
        doc = await cp.command("change_configuration", key="ChargeProfileMaxStackLevel",
                               value="2")
        assert doc["response"] == {"status": "Rejected"}  # read-only
        doc = await cp.command("change_configuration", key="HeartbeatInterval", value="soon")
        assert doc["response"] == {"status": "Rejected"}
        doc = await cp.command("set_variables", set_variable_data=[
            {"component": {"name": "SampledDataCtrlr"}, "variable": {"name": "Nope"},
             "attribute_value": "1"}])
        assert doc["response"]["set_variable_result"][0]["attribute_status"] == \
            "UnknownVariable"
        doc = await cp.command("change_configuration", key="MeterValueSampleInterval",
                               value="0.1")
        assert doc["status"] == "ok" and doc["response"] == {"status": "Accepted"}
        topic = f"{cp.prefix}/state/meter_timestamp"
        await until(lambda: sum(m.topic == topic for m in recorder.snapshot()[cp.mark:]) >= 5,
                    "meter values every 0.1 s")
        doc = await cp.command("get_configuration")  # GetBaseReport → NotifyReport
        assert doc["status"] == "ok" and doc["response"] == {"status": "Accepted"}
        await recorder.wait_for(f"{cp.prefix}/config/SampledDataCtrlr/TxUpdatedInterval", "0.1")
        await recorder.wait_for(f"{cp.prefix}/config/OCPPCommCtrlr/HeartbeatInterval", "300")
        measurands = await recorder.wait_for(
            f"{cp.prefix}/config/SampledDataCtrlr/TxUpdatedMeasurands")
        assert "Current.Import" in measurands.split(",")

        # TriggerMessage, DataTransfer.
        for message, key in (("Heartbeat", "heartbeat"), ("MeterValues", "meter_timestamp"),
                             ("StatusNotification", "status_timestamp")):
            doc = await cp.command("trigger_message", requested_message=message)
            assert doc["response"] == {"status": "Accepted"}, message
            await until(lambda key=key: any(m.topic == f"{cp.prefix}/state/{key}"
                                            for m in recorder.snapshot()[cp.mark:]), key)
        doc = await cp.command("trigger_message", requested_message="SignV2GCertificate")
        assert doc["response"] == {"status": "NotImplemented"}
        doc = await cp.command("data_transfer", vendor_id="ocpp2mqtt", message_id="echo",
                               data="ping")
        assert doc["response"] == {"status": "Accepted", "data": "ping"}
        doc = await cp.command("data_transfer", vendor_id="someone-else")
        assert doc["response"] == {"status": "UnknownVendorId"}

        # Remote stop and start; no unlocking during a transaction.
        doc = await cp.command("stop_charging")
        assert doc["status"] == "ok" and doc["response"] == {"status": "Accepted"}
        await cp.expect("meter_stop_reason", "Remote")
        await cp.expect("status", "Finishing")
        await cp.expect("status", "Available")
        assert cp.latest("last_transaction_id") == tx
        assert_session_energy(recorder, f"{cp.prefix}/state")
        doc = await cp.command("unlock_connector", connector_id=1)
        assert doc["response"] == {"status": "Unlocked"}
        doc = await cp.command("start_charging", idTag="REMOTE1")
        assert doc["response"] == {"status": "Accepted"}
        await cp.expect("id_tag", "REMOTE1")
        await cp.expect("status", "Charging")
        assert cp.latest("transaction_id") not in ("", tx)
        doc = await cp.command("start_charging")
        assert doc["response"] == {"status": "Rejected"}  # one transaction at a time
        doc = await cp.command("unlock_connector", connector_id=1)
        assert doc["status"] == "rejected"
        assert doc["response"] == {"status": "OngoingAuthorizedTransaction"}

        # Availability: Inoperative during a transaction is scheduled for its end.
        doc = await cp.command("change_availability", connector_id=0, type="Inoperative")
        assert doc["response"] == {"status": "Scheduled"}
        assert (await cp.command("stop_charging"))["status"] == "ok"
        await cp.expect("status", "Unavailable")
        doc = await cp.command("start_charging")
        assert doc["response"] == {"status": "Rejected"}
        doc = await cp.command("change_availability", connector_id=0, type="Operative")
        assert doc["response"] == {"status": "Accepted"}
        await cp.expect("status", "Available")

        # Reset: OnIdle ("Soft") waits for the transaction's end; Immediate ends it.
        assert (await cp.command("start_charging"))["status"] == "ok"
        await cp.expect("status", "Charging")
        doc = await cp.command("reset", type="Soft")
        assert doc["status"] == "ok" and doc["response"] == {"status": "Scheduled"}
        assert (await cp.command("stop_charging"))["status"] == "ok"
        await cp.expect("meter_stop_reason", "Remote")
        await cp.expect("connection_state", "DISCONNECTED")
        await cp.expect("connection_state", "CONNECTED")
        await cp.expect("status", "Available")
        assert (await cp.command("start_charging"))["status"] == "ok"
        await cp.expect("status", "Charging")
        doc = await cp.command("reset", type="Hard")
        assert doc["response"] == {"status": "Accepted"}
        await cp.expect("meter_stop_reason", "ImmediateReset")
        await cp.expect("connection_state", "DISCONNECTED")
        await cp.expect("connection_state", "CONNECTED")
        await cp.expect("status", "Available")
        assert (await cp.command("start_charging"))["status"] == "ok"
        await cp.expect("status", "Charging")
        stats = (await sim.finish())[0]
    assert stats.boots == 3 and stats.connects == 3
    assert stats.commands["SetChargingProfile"] == 3
    assert stats.commands["RequestStartTransaction"] == 7
    assert stats.commands["Reset"] == 2
    # Stopping the simulator ended the open transaction properly.
    await cp.expect("meter_stop_reason", "Local")


async def test_21_session_and_commands(gateway, url, recorder, basepath):
    cfg = SimConfig(url=url, stations=1, prefix="V21", interval=0.2, session_seconds=300,
                    idle_seconds=3600, seed=3, ocpp="2.1")
    cp = Remote(recorder, f"{basepath}/V210001")
    state = f"{cp.prefix}/state"
    async with running(cfg) as sim:
        await cp.expect("ocpp_version", "2.1")
        await cp.expect("status", "Available")
        assert (await cp.command("start_charging", idTag="TAG21"))["status"] == "ok"
        await cp.expect("status", "Charging")
        await cp.expect("current_offered", "16")
        for key in ("voltage/l1_n", "voltage/l2_n", "voltage/l3_n", "current_import/l1",
                    "current_import/l2", "current_import/l3", "soc"):
            await recorder.wait_for(f"{state}/{key}")
        doc = await cp.command("set_current_limit", limit=10)
        assert doc["status"] == "ok" and doc["response"] == {"status": "Accepted"}
        await cp.expect("current_offered", "10")
        await until(lambda: all(float(cp.latest(f"current_import/{p}")) <= 10
                                for p in ("l1", "l2", "l3")), "10 A on every phase")
        # An action the simulator has no handler for still gets an answer: the CALLERROR
        # for an action that is known but not supported.
        doc = await cp.command("get_installed_certificate_ids")
        assert doc["status"] == "error" and doc["response"]["error_code"] == "NotSupported"
        doc = await cp.command("stop_charging")
        assert doc["status"] == "ok" and doc["response"] == {"status": "Accepted"}
        await cp.expect("meter_stop_reason", "Remote")
        await cp.expect("status", "Available")
        stats = (await sim.finish())[0]
    assert stats.boots == 1 and stats.sessions_completed == 1
    await until(lambda: cycled(recorder, state), "the status cycle of the session")
    assert [v for v in recorder.values(f"{state}/id_tag") if v] == ["TAG21"]
    assert 0 < assert_session_energy(recorder, state)[0] < 1000


async def test_cli_speaks_201(gateway, url, recorder, basepath):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ocpp2mqtt", "simulate", "--url", url, "--stations", "1",
        "--prefix", "CLX", "--interval", "0.2", "--session-seconds", "0.5",
        "--idle-seconds", "0.1", "--duration", "3", "--seed", "5", "--log-level", "WARNING",
        "--ocpp", "2.0.1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert out.decode().startswith("CLX0001: connects=1 boots=1")
    state = f"{basepath}/CLX0001/state"
    await recorder.wait_for(f"{state}/ocpp_version", "2.0.1")
    await recorder.wait_for(f"{state}/meter_stop_reason", "EVDisconnected")
    await recorder.wait_for(f"{state}/connection_state", "DISCONNECTED")


async def test_cli_refuses_unknown_version():
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ocpp2mqtt", "simulate", "--ocpp", "2.0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "invalid choice" in err.decode()


# --- the wire, against a minimal central system (the `ocpp` library's own) ----------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def make_csms(version: str) -> type:
    """An OCPP 2.x central system class that answers everything and records what it got."""
    module = v201 if version == "2.0.1" else v21
    result = module.call_result

    def record(action: str, answer: Callable[[], Any]) -> Any:
        def handler(self: Any, **payload: Any) -> Any:
            self.received.append((action, payload))
            return answer()

        handler.__name__ = f"on_{action}"
        return on(action)(handler)

    answers: dict[str, Callable[[], Any]] = {
        "BootNotification": lambda: result.BootNotification(
            current_time=_now(), interval=300, status="Accepted"),
        "StatusNotification": result.StatusNotification,
        "Heartbeat": lambda: result.Heartbeat(current_time=_now()),
        "Authorize": lambda: result.Authorize(id_token_info={"status": "Accepted"}),
        "TransactionEvent": result.TransactionEvent,
        "MeterValues": result.MeterValues,
        "NotifyReport": result.NotifyReport,
    }

    def init(self: Any, station: str, ws: Any) -> None:
        module.ChargePoint.__init__(self, station, ws, response_timeout=10)
        self.received = []

    namespace: dict[str, Any] = {"__init__": init}
    for action, answer in answers.items():
        namespace[f"on_{action}"] = record(action, answer)
    return type(f"Csms{version.replace('.', '')}", (module.ChargePoint,), namespace)


class Wire:
    """What one simulated station sent to the central system, with polling waits."""

    def __init__(self, csms: Any, version: str):
        self.csms = csms
        self.call = (v201 if version == "2.0.1" else v21).call

    def got(self, action: str, **match: Any) -> list[dict[str, Any]]:
        return [p for a, p in self.csms.received if a == action
                and all(p.get(k) == v for k, v in match.items())]

    async def wait(self, action: str, check: Callable[[dict[str, Any]], Any] | None = None,
                   after: int = 0, **match: Any) -> dict[str, Any]:
        """The first `action` (matching, `check`-ed) received after the `after`-th message."""
        def found() -> tuple[dict[str, Any]] | None:
            for a, p in self.csms.received[after:]:
                if a == action and all(p.get(k) == v for k, v in match.items()) and (
                        check is None or check(p)):
                    return (p,)  # truthy even when the payload is {}
            return None

        return (await until(found, f"{action} {match}"))[0]

    def mark(self) -> int:
        return len(self.csms.received)


def measurands(event: dict[str, Any]) -> dict[tuple[str, str | None], dict[str, Any]]:
    return {(s["measurand"], s.get("phase")): s
            for mv in event.get("meter_value", ()) for s in mv["sampled_value"]}


@pytest.mark.parametrize("version", ["2.0.1", "2.1"])
async def test_wire_messages(version):
    csms_class = make_csms(version)
    connections: asyncio.Queue[Any] = asyncio.Queue()

    async def serve_station(ws: Any) -> None:
        csms = csms_class(ws.request.path.strip("/"), ws)
        await connections.put(csms)
        with contextlib.suppress(ConnectionClosed):
            await csms.start()

    async with serve(serve_station, "127.0.0.1", 0,
                     subprotocols=[Subprotocol(f"ocpp{version}")]) as server:
        port = server.sockets[0].getsockname()[1]
        cfg = SimConfig(url=f"ws://127.0.0.1:{port}", stations=1, prefix="W", interval=30,
                        session_seconds=300, idle_seconds=3600, seed=4, ocpp=version)
        async with running(cfg) as sim:
            csms = await asyncio.wait_for(connections.get(), 10)
            assert csms._connection.subprotocol == f"ocpp{version}"
            wire = Wire(csms, version)
            call = wire.call
            boot = await wire.wait("BootNotification")
            assert boot == {"charging_station": {
                "vendor_name": "ocpp2mqtt", "model": "Simulator", "serial_number": "W0001",
                "firmware_version": __version__}, "reason": "PowerUp"}
            status = await wire.wait("StatusNotification")
            assert status["connector_status"] == "Available"
            assert (status["evse_id"], status["connector_id"]) == (1, 1)

            # Remote start: the remoteStartId comes back in the Started event.
            mark = wire.mark()
            answer = await csms.call(call.RequestStartTransaction(
                id_token={"id_token": "RS1", "type": "Central"}, remote_start_id=42, evse_id=1))
            assert answer.status == "Accepted"
            await wire.wait("StatusNotification", after=mark, connector_status="Occupied")
            started = await wire.wait("TransactionEvent", after=mark, event_type="Started")
            tx_id = started["transaction_info"]["transaction_id"]
            assert str(uuid.UUID(tx_id)) == tx_id
            assert started["transaction_info"] == {"transaction_id": tx_id,
                                                   "charging_state": "EVConnected",
                                                   "remote_start_id": 42}
            assert started["trigger_reason"] == "RemoteStart" and started["seq_no"] == 0
            assert started["id_token"] == {"id_token": "RS1", "type": "Central"}
            assert started["evse"] == {"id": 1, "connector_id": 1}
            (begin,) = started["meter_value"][0]["sampled_value"]
            assert begin["context"] == "Transaction.Begin" and begin["unit_of_measure"] == {
                "unit": "Wh"} and begin["measurand"] == "Energy.Active.Import.Register"
            charging = await wire.wait("TransactionEvent", after=mark, seq_no=1)
            assert charging["event_type"] == "Updated"
            assert charging["trigger_reason"] == "ChargingStateChanged"
            assert charging["transaction_info"]["charging_state"] == "Charging"
            values = measurands(charging)
            assert set(values) == {
                ("Voltage", "L1-N"), ("Voltage", "L2-N"), ("Voltage", "L3-N"),
                ("Current.Import", "L1"), ("Current.Import", "L2"), ("Current.Import", "L3"),
                ("Current.Offered", None), ("Power.Active.Import", None),
                ("Energy.Active.Import.Register", None), ("SoC", None)}
            assert all(s["context"] == "Sample.Periodic" and isinstance(s["value"], float)
                       for s in values.values())
            assert values[("SoC", None)]["location"] == "EV"
            assert values[("SoC", None)]["unit_of_measure"] == {"unit": "Percent"}
            assert values[("Power.Active.Import", None)]["unit_of_measure"] == {"unit": "W"}
            assert values[("Energy.Active.Import.Register", None)]["value"] >= begin["value"]

            # Smart charging: a TxProfile, the station maximum, clearing by id and criteria.
            def profile(pid: int, purpose: str, limit: float, **extra: Any) -> dict[str, Any]:
                return {"id": pid, "stack_level": 0, "charging_profile_purpose": purpose,
                        "charging_profile_kind": "Relative", **extra, "charging_schedule": [
                            {"id": 1, "charging_rate_unit": "A",
                             "charging_schedule_period": [{"start_period": 0, "limit": limit}]}]}

            def offered(amps: float) -> Callable[[dict[str, Any]], bool]:
                return lambda event: measurands(event).get(
                    ("Current.Offered", None), {}).get("value") == amps

            mark = wire.mark()
            answer = await csms.call(call.SetChargingProfile(evse_id=1, charging_profile=profile(
                7, "TxProfile", 8.0, transaction_id="not-this-one")))
            assert answer.status == "Rejected"
            answer = await csms.call(call.SetChargingProfile(evse_id=1, charging_profile=profile(
                7, "TxProfile", 8.0, transaction_id=tx_id)))
            assert answer.status == "Accepted"
            rate = await wire.wait("TransactionEvent", offered(8.0), after=mark)
            assert rate["trigger_reason"] == "ChargingRateChanged"
            assert all(7.5 <= measurands(rate)[("Current.Import", p)]["value"] <= 8
                       for p in ("L1", "L2", "L3"))
            answer = await csms.call(call.SetChargingProfile(evse_id=1, charging_profile=profile(
                8, "ChargingStationMaxProfile", 7.0)))
            assert answer.status == "Rejected"  # only on EVSE 0
            answer = await csms.call(call.SetChargingProfile(evse_id=0, charging_profile=profile(
                8, "ChargingStationMaxProfile", 7.0)))
            assert answer.status == "Accepted"
            await wire.wait("TransactionEvent", offered(7.0), after=mark)
            cleared = wire.mark()
            answer = await csms.call(call.ClearChargingProfile(charging_profile_criteria={
                "charging_profile_purpose": "ChargingStationMaxProfile"}))
            assert answer.status == "Accepted"
            await wire.wait("TransactionEvent", offered(8.0), after=cleared)
            answer = await csms.call(call.ClearChargingProfile(charging_profile_id=7))
            assert answer.status == "Accepted"
            await wire.wait("TransactionEvent", offered(16.0), after=mark)
            answer = await csms.call(call.ClearChargingProfile(charging_profile_id=7))
            assert answer.status == "Unknown"

            # The device model.
            def variable(component: str, name: str, **extra: Any) -> dict[str, Any]:
                return {"component": {"name": component}, "variable": {"name": name}, **extra}

            answer = await csms.call(call.SetVariables(set_variable_data=[
                variable("SampledDataCtrlr", "TxUpdatedInterval", attribute_value="0.5"),
                variable("OCPPCommCtrlr", "HeartbeatInterval", attribute_value="-1"),
                variable("SmartChargingCtrlr", "ProfileStackLevel", attribute_value="3"),
                variable("OCPPCommCtrlr", "HeartbeatInterval", attribute_value="60",
                         attribute_type="Target"),
                variable("OCPPCommCtrlr", "Nope", attribute_value="1"),
                variable("Nope", "HeartbeatInterval", attribute_value="1")]))
            assert [r["attribute_status"] for r in answer.set_variable_result] == [
                "Accepted", "Rejected", "Rejected", "NotSupportedAttributeType",
                "UnknownVariable", "UnknownComponent"]
            answer = await csms.call(call.GetVariables(get_variable_data=[
                variable("SampledDataCtrlr", "TxUpdatedInterval"),
                variable("AuthCtrlr", "AuthorizeRemoteStart")]))
            assert [(r["attribute_status"], r["attribute_value"])
                    for r in answer.get_variable_result] == [("Accepted", "0.5"),
                                                             ("Accepted", "false")]
            mark = wire.mark()
            periodic = await wire.wait("TransactionEvent", after=mark,
                                       trigger_reason="MeterValuePeriodic")
            assert "charging_state" not in periodic["transaction_info"]
            for base, request_id in (("FullInventory", 5), ("ConfigurationInventory", 6)):
                answer = await csms.call(call.GetBaseReport(request_id=request_id,
                                                            report_base=base))
                assert answer.status == "Accepted"
                report = await wire.wait("NotifyReport", request_id=request_id)
                assert report["tbc"] is False and report["seq_no"] == 0
                found = {(r["component"]["name"], r["variable"]["name"]):
                         r["variable_attribute"][0] for r in report["report_data"]}
                assert found[("SampledDataCtrlr", "TxUpdatedInterval")]["value"] == "0.5"
                assert found[("OCPPCommCtrlr", "HeartbeatInterval")]["mutability"] == \
                    "ReadWrite"
                assert (("SmartChargingCtrlr", "ProfileStackLevel") in found) == (
                    base == "FullInventory")

            # TriggerMessage, UnlockConnector, DataTransfer, an action without a handler.
            mark = wire.mark()
            for message in ("TransactionEvent", "MeterValues", "Heartbeat",
                            "StatusNotification", "BootNotification"):
                answer = await csms.call(call.TriggerMessage(requested_message=message))
                assert answer.status == "Accepted", message
            await wire.wait("TransactionEvent", after=mark, trigger_reason="Trigger")
            triggered = await wire.wait("MeterValues", after=mark)
            assert triggered["evse_id"] == 1
            assert {s["context"] for s in triggered["meter_value"][0]["sampled_value"]} == {
                "Trigger"}
            await wire.wait("Heartbeat", after=mark)
            await wire.wait("StatusNotification", after=mark, connector_status="Occupied")
            await wire.wait("BootNotification", after=mark, reason="Triggered")
            answer = await csms.call(call.TriggerMessage(requested_message="StatusNotification",
                                                         evse={"id": 2}))
            assert answer.status == "Rejected"
            answer = await csms.call(call.UnlockConnector(evse_id=1, connector_id=1))
            assert answer.status == "OngoingAuthorizedTransaction"
            answer = await csms.call(call.UnlockConnector(evse_id=2, connector_id=1))
            assert answer.status == "UnknownConnector"
            answer = await csms.call(call.DataTransfer(vendor_id="acme", data="x"))
            assert answer.status == "UnknownVendorId"
            with pytest.raises(NotSupportedError):  # known, not supported (OCPP-J)
                await csms.call(call.GetLocalListVersion(), suppress=False)

            # Remote stop: Ended with the register, then Available; seqNo has no gaps.
            answer = await csms.call(call.RequestStopTransaction(transaction_id="nope"))
            assert answer.status == "Rejected"
            mark = wire.mark()
            answer = await csms.call(call.RequestStopTransaction(transaction_id=tx_id))
            assert answer.status == "Accepted"
            ended = await wire.wait("TransactionEvent", after=mark, event_type="Ended")
            assert ended["trigger_reason"] == "RemoteStop"
            assert ended["transaction_info"]["stopped_reason"] == "Remote"
            end = measurands(ended)[("Energy.Active.Import.Register", None)]
            assert end["context"] == "Transaction.End" and end["value"] >= begin["value"]
            await wire.wait("StatusNotification", after=mark, connector_status="Available")
            events = [e for e in wire.got("TransactionEvent")
                      if e["transaction_info"]["transaction_id"] == tx_id]
            assert [e["seq_no"] for e in events] == list(range(len(events)))

            # Availability, and a reset: the station boots again, saying why.
            answer = await csms.call(call.ChangeAvailability(operational_status="Inoperative"))
            assert answer.status == "Accepted"
            await wire.wait("StatusNotification", after=mark, connector_status="Unavailable")
            answer = await csms.call(call.RequestStartTransaction(
                id_token={"id_token": "RS2", "type": "Central"}, remote_start_id=43))
            assert answer.status == "Rejected"
            answer = await csms.call(call.ChangeAvailability(operational_status="Operative",
                                                             evse={"id": 1}))
            assert answer.status == "Accepted"
            answer = await csms.call(call.Reset(type="Immediate"))
            assert answer.status == "Accepted"
            again = Wire(await asyncio.wait_for(connections.get(), 10), version)
            await again.wait("BootNotification", reason="RemoteReset")
            await again.wait("StatusNotification", connector_status="Available")
            stats = (await sim.finish())[0]
    assert stats.boots == 3 and stats.connects == 2 and stats.sessions_completed == 1
