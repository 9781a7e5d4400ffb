"""Issue 14: relay mode — a charger's back offices stay connected while the gateway
controls it locally.

Real parts only: the gateway, Mosquitto, an `ocpp` charger over WebSockets, and
back offices that are the `ocpp` package's central-system side (tests/backoffice.py),
one of them over wss with HTTP Basic auth.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from ocpp.v16 import call

from ocpp2mqtt.config import ConfigError
from ocpp2mqtt.gateway import Gateway
from tests.backoffice import BackOffice
from tests.helpers import MqttRecorder, Station, connect_station, make_cert

TS = "2026-11-30T10:00:00Z"


def boot() -> call.BootNotification:
    return call.BootNotification(charge_point_vendor="ACME", charge_point_model="Relay-1")


def meter(tx: int, wh: float) -> call.MeterValues:
    return call.MeterValues(connector_id=1, transaction_id=tx, meter_value=[{
        "timestamp": TS, "sampled_value": [
            {"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}])


@contextlib.asynccontextmanager
async def charger(settings: Any, station: str) -> AsyncIterator[tuple[Gateway, Station]]:
    """A gateway with `settings`, and a 1.6 charger connected to it as `station`."""
    async with Gateway(settings) as gw:
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", station)
        try:
            yield gw, st
        finally:
            await st.close()


async def latest(recorder: MqttRecorder, topic: str, value: str, timeout: float = 10) -> None:
    """Wait until the last message on `topic` is `value` (not any earlier one)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (values := recorder.values(topic)) or values[-1] != value:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{topic}: wanted {value!r} last, got {values!r}")
        await asyncio.sleep(0.01)


def upstream(office: BackOffice, name: str, role: str = "secondary",
             **extra: Any) -> dict[str, Any]:
    entry = {"name": name, "url": office.url, "role": role, **extra}
    if office.password:
        entry["password"] = office.password
    return entry


@pytest.fixture
async def offices(tmp_path):
    """An employer's back office (wss, Basic auth) and an ERE reporting one (ws)."""
    employer = await BackOffice(password="employer-secret", cert=make_cert(tmp_path),
                                first_tx=5000).start()
    ere = await BackOffice(first_tx=7000).start()
    yield employer, ere
    for office in (employer, ere):
        await office.stop()
        office.close()


def relay_settings(settings_factory, tmp_path, upstreams: dict[str, list[dict[str, Any]]],
                   **overrides: Any):
    cert = tmp_path / "cert.pem"
    for links in upstreams.values():
        for link in links:
            if link["url"].startswith("wss") and cert.exists():
                link.setdefault("ca_file", str(cert))
    return settings_factory(ocpp_upstreams=upstreams, **overrides)


async def test_forwards_in_order_and_the_charger_gets_the_primarys_answers(
        settings_factory, tmp_path, offices, recorder, basepath):
    employer, ere = offices
    employer.answers["BootNotification"] = {"current_time": TS, "interval": 123,
                                            "status": "Accepted"}
    ere.answers["BootNotification"] = {"current_time": TS, "interval": 999,
                                       "status": "Accepted"}
    ere.answers["Authorize"] = {"id_tag_info": {"status": "Invalid"}}
    employer.answers["Authorize"] = {"id_tag_info": {"status": "Accepted",
                                                     "expiry_date": "2027-01-01T00:00:00Z"}}
    settings = relay_settings(settings_factory, tmp_path, {"CP1": [
        upstream(employer, "employer", "primary"), upstream(ere, "ere")]},
        authorized_tag_id_list=["SOMEONE-ELSE"])
    async with charger(settings, "CP1") as (_, st):
        booted = await st.cp.call(boot())
        assert booted.interval == 123  # the primary's, not ours (300) nor the secondary's
        await st.cp.call(call.StatusNotification(connector_id=1, error_code="NoError",
                                                 status="Preparing"))
        auth = await st.cp.call(call.Authorize(id_tag="BADGE"))
        # The primary decides (the local list would have said Invalid, the secondary too)
        assert auth.id_tag_info["status"] == "Accepted"
        assert auth.id_tag_info["expiry_date"] == "2027-01-01T00:00:00Z"
        started = await st.cp.call(call.StartTransaction(
            connector_id=1, id_tag="BADGE", meter_start=100, timestamp=TS))
        assert started.transaction_id == 5000  # the primary's id
        await st.cp.call(meter(5000, 1100))
        await st.cp.call(call.StopTransaction(meter_stop=2100, timestamp=TS,
                                              transaction_id=5000, id_tag="BADGE"))
        order = ["BootNotification", "StatusNotification", "Authorize", "StartTransaction",
                 "MeterValues", "StopTransaction"]
        await employer.wait_actions(*order)
        await ere.wait_actions(*order)
        assert employer.actions() == order
        assert ere.actions() == order
        # each back office sees its own transaction id
        assert [f.payload["transactionId"] for f in employer.calls()[-2:]] == [5000, 5000]
        assert [f.payload["transactionId"] for f in ere.calls()[-2:]] == [7000, 7000]
        # the gateway's own message ids (the ocpp charger uses UUIDs)
        assert all(f.unique_id.isdigit() for f in employer.calls())
        assert employer.logins == ["CP1"]  # Basic auth as the charger's id, over wss
        # MQTT shows what the charger uses
        prefix = f"{basepath}/CP1"
        await recorder.wait_for(f"{prefix}/state/last_transaction_id", "5000")
        await recorder.wait_for(f"{prefix}/state/session_energy", "2000")
        await recorder.wait_for(f"{prefix}/upstream/employer/connection_state", "CONNECTED")
        await recorder.wait_for(f"{prefix}/upstream/ere/connection_state", "CONNECTED")
        await recorder.wait_for(f"{prefix}/upstream/ere/queue", "0")


async def test_without_a_primary_each_back_office_gets_its_own_ids_both_ways(
        settings_factory, tmp_path, offices, recorder, basepath):
    employer, ere = offices
    settings = relay_settings(settings_factory, tmp_path, {"*": [
        upstream(employer, "employer", allow=["RemoteStopTransaction"]),
        upstream(ere, "ere")]})
    async with charger(settings, "CP2") as (_, st):
        await st.cp.call(boot())
        started = await st.cp.call(call.StartTransaction(
            connector_id=1, id_tag="T", meter_start=0, timestamp=TS))
        local = started.transaction_id
        assert local not in (5000, 7000)  # ours: there is no primary
        await st.cp.call(meter(local, 500))
        frames = await employer.wait_actions("StartTransaction", "MeterValues")
        assert frames[1].payload["transactionId"] == 5000
        frames = await ere.wait_actions("StartTransaction", "MeterValues")
        assert frames[1].payload["transactionId"] == 7000
        # The employer stops "its" transaction 5000: the charger hears its own id.
        system = await employer.wait_connected("CP2")
        answer = await system.call(call.RemoteStopTransaction(transaction_id=5000))
        assert answer.status == "Accepted"
        got = await st.cp.wait_call("RemoteStopTransaction")
        assert got.payload["transaction_id"] == local
        command = json.loads(await recorder.wait_for(
            f"{basepath}/CP2/upstream/employer/command"))
        assert command == {"action": "RemoteStopTransaction",
                           "payload": {"transactionId": 5000}, "allowed": True,
                           "response": {"status": "Accepted"}}


async def test_secondary_commands_are_filtered_and_answered_by_policy(
        settings_factory, tmp_path, offices, recorder, basepath):
    employer, ere = offices
    settings = relay_settings(settings_factory, tmp_path, {"CP3": [
        upstream(employer, "employer", "primary"), upstream(ere, "ere")]})
    async with charger(settings, "CP3") as (_, st):
        await st.cp.call(boot())
        ere_cs = await ere.wait_connected("CP3")
        employer_cs = await employer.wait_connected("CP3")
        # a secondary may ask (default allow list) …
        conf = await ere_cs.call(call.GetConfiguration(key=["HeartbeatInterval"]))
        assert conf.configuration_key[0]["key"] == "HeartbeatInterval"
        # … but not order: rejected in the response's own terms, never reaching the charger
        refused = await ere_cs.call(call.RemoteStartTransaction(id_tag="X"))
        assert refused.status == "Rejected"
        # no status to reject with: CALLERROR NotSupported
        with pytest.raises(Exception) as raised:
            await ere_cs.call(call.GetDiagnostics(location="ftp://x/"), suppress=False)
        assert type(raised.value).__name__ == "NotSupportedError"
        # the primary may do everything
        reset = await employer_cs.call(call.Reset(type="Soft"))
        assert reset.status == "Accepted"
        assert [r.action for r in st.cp.received] == ["GetConfiguration", "Reset"]
        prefix = f"{basepath}/CP3/upstream"
        commands = [json.loads(v) for v in await recorder.wait_count(
            f"{prefix}/ere/command", 3)]
        assert [(c["action"], c["allowed"]) for c in commands] == [
            ("GetConfiguration", True), ("RemoteStartTransaction", False),
            ("GetDiagnostics", False)]
        assert commands[1]["response"] == {"status": "Rejected"}
        assert commands[2]["response"]["errorCode"] == "NotSupported"
        reset_cmd = json.loads(await recorder.wait_for(f"{prefix}/employer/command"))
        assert reset_cmd["response"] == {"status": "Accepted"} and reset_cmd["allowed"]
        # MQTT commands keep working while relayed (the homeowner's override)
        recorder.publish(f"{basepath}/CP3/cmd", orjson.dumps(
            {"action": "unlock_connector", "args": {"connector_id": 1}}))
        result = json.loads(await recorder.wait_for(f"{basepath}/CP3/cmd_result"))
        assert result["status"] == "ok"


async def test_rfid_routing_private_card_local_business_card_by_back_office(
        settings_factory, tmp_path, offices):
    employer, ere = offices
    # The employer decides its cards only; the ERE back office decides one card; the rest
    # is local (AUTHORIZED_TAG_ID_LIST).
    employer.answers["Authorize"] = lambda p: {"id_tag_info": {
        "status": "Accepted" if p["id_tag"] == "BUSINESS" else "Invalid"}}
    ere.answers["Authorize"] = {"id_tag_info": {"status": "Accepted"}}
    employer.answers["StartTransaction"] = lambda p: {
        "transaction_id": 4242, "id_tag_info": {
            "status": "Accepted" if p["id_tag"] == "BUSINESS" else "Invalid"}}
    settings = relay_settings(settings_factory, tmp_path, {"CP4": [
        upstream(employer, "employer", "primary", tags=["BUSINESS", "LOST"]),
        upstream(ere, "ere", tags=["ERE-CARD"])]}, authorized_tag_id_list=["PRIVATE"])
    employer.answers["StopTransaction"] = {"id_tag_info": {"status": "Invalid"}}
    async with charger(settings, "CP4") as (_, st):
        await st.cp.call(boot())
        statuses = {}
        for tag in ("PRIVATE", "BUSINESS", "ERE-CARD", "STRANGER", "LOST"):
            answer = await st.cp.call(call.Authorize(id_tag=tag))
            statuses[tag] = answer.id_tag_info["status"]
        assert statuses == {"PRIVATE": "Accepted",  # local list; the primary said Invalid
                            "BUSINESS": "Accepted",  # the employer; not in the local list
                            "ERE-CARD": "Accepted",  # the secondary that lists it
                            "STRANGER": "Invalid",  # local
                            "LOST": "Invalid"}  # the employer
        private = await st.cp.call(call.StartTransaction(
            connector_id=1, id_tag="PRIVATE", meter_start=0, timestamp=TS))
        # The primary still numbers the transaction; the tag is decided locally.
        assert private.transaction_id == 4242
        assert private.id_tag_info["status"] == "Accepted"
        stopped = await st.cp.call(call.StopTransaction(
            meter_stop=10, timestamp=TS, transaction_id=4242, id_tag="PRIVATE"))
        assert stopped.id_tag_info["status"] == "Accepted"


async def test_homeowner_blocking_beats_the_back_office(settings_factory, tmp_path, offices,
                                                       recorder, basepath):
    employer, _ = offices
    settings = relay_settings(settings_factory, tmp_path, {"CP5": [
        upstream(employer, "employer", "primary")]})
    async with charger(settings, "CP5") as (_, st):
        await st.cp.call(boot())
        recorder.publish(f"{basepath}/CP5/cmd", orjson.dumps(
            {"action": "charging_enabled", "args": {"enabled": False}}))
        await recorder.wait_for(f"{basepath}/CP5/state/charging_enabled", "false")
        answer = await st.cp.call(call.Authorize(id_tag="BADGE"))
        assert answer.id_tag_info == {"status": "Blocked"}
        await employer.wait_actions("Authorize")  # the back office still hears of it


async def test_a_primary_that_is_down_is_not_waited_for(settings_factory, tmp_path, offices,
                                                        recorder, basepath):
    employer, _ = offices
    await employer.stop()  # the employer's back office is away
    # Waiting for it would take 60 s; the test charger gives up after 10 s.
    settings = relay_settings(settings_factory, tmp_path, {"CP6": [
        upstream(employer, "employer", "primary")]}, ocpp_upstream_timeout=60)
    async with charger(settings, "CP6") as (_, st):
        prefix = f"{basepath}/CP6/upstream/employer"
        await recorder.wait_for(f"{prefix}/connection_state", "DISCONNECTED")
        booted = await st.cp.call(boot())
        assert booted.interval == 300  # ours
        auth = await st.cp.call(call.Authorize(id_tag="ANY"))
        assert auth.id_tag_info["status"] == "Accepted"
        started = await st.cp.call(call.StartTransaction(
            connector_id=1, id_tag="ANY", meter_start=0, timestamp=TS))
        assert started.transaction_id < 5000  # ours
        # Authorize is a question for now: not kept for later. The rest is.
        await latest(recorder, f"{prefix}/queue", "2")


async def test_a_late_primary_gets_its_id_mapped(settings_factory, tmp_path, offices):
    employer, _ = offices
    employer.delays["StartTransaction"] = 1.0
    settings = relay_settings(settings_factory, tmp_path, {"CP7": [
        upstream(employer, "employer", "primary")]}, ocpp_upstream_timeout=0.2)
    async with charger(settings, "CP7") as (_, st):
        await st.cp.call(boot())
        started = await st.cp.call(call.StartTransaction(
            connector_id=1, id_tag="T", meter_start=0, timestamp=TS))
        local = started.transaction_id
        assert local != 5000  # the primary was too late: ours
        await st.cp.call(meter(local, 100))
        await st.cp.call(call.StopTransaction(meter_stop=200, timestamp=TS,
                                              transaction_id=local))
        frames = await employer.wait_actions("StartTransaction", "MeterValues",
                                             "StopTransaction")
        # …and, once it answered, it hears of the transaction by its own id
        assert [f.payload["transactionId"] for f in frames[1:]] == [5000, 5000]


async def test_an_outage_across_a_whole_transaction_is_replayed_in_order(
        settings_factory, tmp_path, offices, recorder, basepath):
    employer, ere = offices
    settings = relay_settings(settings_factory, tmp_path, {"CP8": [
        upstream(employer, "employer", "primary"), upstream(ere, "ere")]},
        ocpp_upstream_reconnect_max_delay=0.2)
    async with charger(settings, "CP8") as (_, st):
        await st.cp.call(boot())
        await ere.wait_actions("BootNotification")
        await ere.stop()  # the ERE back office goes away for the whole transaction
        prefix = f"{basepath}/CP8/upstream/ere"
        await recorder.wait_for(f"{prefix}/connection_state", "DISCONNECTED")
        started = await st.cp.call(call.StartTransaction(
            connector_id=1, id_tag="T", meter_start=1000, timestamp=TS))
        tx = started.transaction_id
        assert tx == 5000  # the primary is there
        for i in range(3):
            await st.cp.call(call.Heartbeat())
            await st.cp.call(meter(tx, 1000 + 100 * (i + 1)))
            await st.cp.call(call.StatusNotification(connector_id=1, error_code="NoError",
                                                     status="Charging"))
        await st.cp.call(call.StopTransaction(meter_stop=1400, timestamp=TS,
                                              transaction_id=tx))
        # Start, 3 MeterValues, Stop; one Heartbeat and one Charging stand for three
        await latest(recorder, f"{prefix}/queue", "7")
        before = len(ere.frames)
        await ere.start()  # back, on the same port
        await latest(recorder, f"{prefix}/queue", "0", timeout=15)
        replayed = [f for f in ere.frames[before:] if f.kind == 2]
        assert [f.action for f in replayed] == [
            "StartTransaction", "Heartbeat", "MeterValues", "StatusNotification",
            "MeterValues", "MeterValues", "StopTransaction"]
        assert [f.payload.get("transactionId") for f in replayed
                if f.action in ("MeterValues", "StopTransaction")] == [7000] * 4
        readings = [f.payload["meterValue"][0]["sampledValue"][0]["value"]
                    for f in replayed if f.action == "MeterValues"]
        assert readings == ["1100", "1200", "1300"]  # nothing lost, in order
        await recorder.wait_for(f"{prefix}/connection_state", "CONNECTED")


async def test_queued_messages_survive_a_gateway_restart(settings_factory, tmp_path, offices,
                                                         recorder, basepath):
    _, ere = offices
    await ere.stop()
    settings = relay_settings(settings_factory, tmp_path, {"CP9": [upstream(ere, "ere")]},
                              ocpp_upstream_reconnect_max_delay=0.2)
    async with charger(settings, "CP9") as (_, st):
        await st.cp.call(boot())
        started = await st.cp.call(call.StartTransaction(
            connector_id=1, id_tag="T", meter_start=0, timestamp=TS))
        await st.cp.call(meter(started.transaction_id, 42))
        # it boots again: the earlier boot is superseded, not replayed
        await st.cp.call(call.BootNotification(charge_point_vendor="ACME",
                                               charge_point_model="Relay-2"))
        await latest(recorder, f"{basepath}/CP9/upstream/ere/queue", "3")
    # A new gateway on the same data directory; the charger stays away. The queue drains
    # as soon as the back office is reachable.
    await ere.start()
    async with Gateway(settings):
        frames = await ere.wait_actions("BootNotification", "StartTransaction", "MeterValues",
                                        station="CP9", timeout=15)
        assert frames[2].payload["transactionId"] == 7000
        # a back office that never accepted a boot gets one before anything else
        assert frames[0].payload["chargePointModel"] == "Relay-2"
        await latest(recorder, f"{basepath}/CP9/upstream/ere/queue", "0")
        # drained, and the charger is away: the link closes, as the charger's would
        await recorder.wait_for(f"{basepath}/CP9/upstream/ere/connection_state", "CONNECTED")
        await latest(recorder, f"{basepath}/CP9/upstream/ere/connection_state",
                     "DISCONNECTED")
    assert ere.actions("CP9") == ["BootNotification", "StartTransaction", "MeterValues"]


async def test_a_secondary_that_answers_pending_gets_the_boot_again(
        settings_factory, tmp_path, offices, recorder, basepath):
    _, ere = offices
    boots = iter(["Pending", "Rejected", "Accepted"])
    ere.answers["BootNotification"] = lambda p: {
        "current_time": TS, "interval": 1, "status": next(boots)}
    settings = relay_settings(settings_factory, tmp_path, {"CP10": [upstream(ere, "ere")]})
    async with charger(settings, "CP10") as (_, st):
        booted = await st.cp.call(boot())
        assert booted.status == "Accepted"  # the charger never sees the secondary's
        await st.cp.call(call.StatusNotification(connector_id=1, error_code="NoError",
                                                 status="Available"))
        await ere.wait_actions("BootNotification", "BootNotification", "BootNotification",
                               "StatusNotification", timeout=15)
        assert ere.actions() == ["BootNotification"] * 3 + ["StatusNotification"]


async def test_a_hostile_back_office_disturbs_nobody(settings_factory, tmp_path, recorder,
                                                     basepath):
    """Garbage frames, a flood of CALLs, CALLs for another station's transaction and for a
    connector the charger does not have: each gets its answer from the gateway; the
    charger, MQTT and another station go on."""
    replies: list[list[Any]] = []
    connected = asyncio.Event()
    sockets: list[Any] = []

    async def hostile(ws: Any) -> None:
        sockets.append(ws)
        connected.set()
        async for text in ws:
            msg = json.loads(text)
            if msg[0] == 2:  # the charger's messages: answered like a back office would
                answer: dict[str, Any] = {}
                if msg[2] == "BootNotification":
                    answer = {"currentTime": TS, "interval": 300, "status": "Accepted"}
                elif msg[2] == "StartTransaction":
                    answer = {"transactionId": 1, "idTagInfo": {"status": "Accepted"}}
                elif msg[2] == "Heartbeat":
                    answer = {"currentTime": TS}
                await ws.send(json.dumps([3, msg[1], answer]))
            else:
                replies.append(msg)

    import websockets

    server = await websockets.serve(hostile, "127.0.0.1", 0, subprotocols=["ocpp1.6"])
    port = server.sockets[0].getsockname()[1]
    settings = settings_factory(ocpp_upstreams={"VICTIM": [{
        "name": "hostile", "url": f"ws://127.0.0.1:{port}",
        "allow": ["GetConfiguration", "RemoteStopTransaction", "UnlockConnector"]}]})
    try:
        async with Gateway(settings) as gw:
            url = f"ws://127.0.0.1:{gw.port}"
            victim = await connect_station(url, "VICTIM")
            other = await connect_station(url, "OTHER")
            try:
                await victim.cp.call(boot())
                await victim.cp.call(call.StatusNotification(
                    connector_id=1, error_code="NoError", status="Available"))
                mine = await other.cp.call(call.StartTransaction(
                    connector_id=1, id_tag="T", meter_start=0, timestamp=TS))
                await asyncio.wait_for(connected.wait(), 10)
                ws = sockets[0]
                garbage = ["not json", "[2]", "[2, 7]", '[9, "m9", "Heartbeat", {}]',
                           '[2, "bad-schema", "Reset", {"type": "Bogus"}]',
                           '[2, "unknown", "LaunchRocket", {}]',
                           '[2, "charger-only", "BootNotification", '
                           '{"chargePointVendor": "x", "chargePointModel": "y"}]',
                           '[3, "no-such-call", {}]']
                for frame in garbage:
                    await ws.send(frame)
                await ws.send(b"\x00\x01binary")
                await ws.send(json.dumps([2, "other-tx", "RemoteStopTransaction",
                                          {"transactionId": mine.transaction_id}]))
                await ws.send(json.dumps([2, "no-connector", "UnlockConnector",
                                          {"connectorId": 9}]))
                flood = [f"f{i}" for i in range(100)]
                for unique_id in flood:
                    await ws.send(json.dumps([2, unique_id, "GetConfiguration", {}]))
                # meanwhile the charger is answered and MQTT goes on
                for _ in range(5):
                    await victim.cp.call(call.Heartbeat())
                await other.cp.call(call.Heartbeat())
                await recorder.wait_for(f"{basepath}/OTHER/state/heartbeat")
                await recorder.wait_for(f"{basepath}/VICTIM/state/heartbeat")

                def answered() -> dict[str, list[Any]]:
                    return {m[1]: m for m in replies}

                wanted = {"bad-schema", "unknown", "charger-only", "other-tx", "no-connector",
                          *flood}
                deadline = asyncio.get_running_loop().time() + 20
                while not wanted <= set(answered()):
                    assert asyncio.get_running_loop().time() < deadline, \
                        sorted(wanted - set(answered()))[:5]
                    await asyncio.sleep(0.02)
                got = answered()
                assert got["bad-schema"][2] == "PropertyConstraintViolation"
                assert got["unknown"][2] == "NotImplemented"
                assert got["charger-only"][2] == "NotSupported"
                assert got["other-tx"] == [3, "other-tx", {"status": "Rejected"}]
                assert got["no-connector"][2] == "PropertyConstraintViolation"
                ids = [m[1] for m in replies if m[1] != "-1"]  # "-1": no id could be read
                assert len(ids) == len(set(ids))  # one answer per CALL
                assert got["m9"][2] == "FormationViolation"
                relayed = [m for m in replies if m[1] in flood and m[0] == 3]
                refused = [m for m in replies if m[1] in flood and m[0] == 4]
                assert relayed and len(relayed) + len(refused) == 100
                assert all(m[2] == "GenericError" for m in refused)
                received = [r.action for r in victim.cp.received]
                assert set(received) == {"GetConfiguration"}  # nothing else reached it
                assert len(received) == len(relayed)
                assert other.cp.received == []
                await other.cp.call(call.StopTransaction(
                    meter_stop=1, timestamp=TS, transaction_id=mine.transaction_id))
                await recorder.wait_for(f"{basepath}/OTHER/state/last_transaction_id",
                                        str(mine.transaction_id))
            finally:
                await victim.close()
                await other.close()
    finally:
        server.close()
        await server.wait_closed()


# --- configuration --------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "needle"), [
    ("[not json", "not valid JSON"),
    ('{"CP1": {"name": "x"}}', "must be a list"),
    ('{"CP1": [{"name": "Bad Name", "url": "ws://h"}]}', "CP1.0.name"),
    ('{"CP1": [{"name": "x", "url": "http://h"}]}', "CP1.0.url"),
    ('{"CP1": [{"name": "x", "url": "ws://h", "role": "boss"}]}', "CP1.0.role"),
    ('{"CP1": [{"name": "x", "url": "ws://h", "allow": ["LaunchRocket"]}]}', "LaunchRocket"),
    ('{"CP1": [{"name": "x", "url": "ws://h", "pasword": "p"}]}', "CP1.0.pasword"),
    ('{"CP1": [{"name": "x", "url": "ws://h", "ca_file": "/nonexistent.pem"}]}', "ca_file"),
    ('{"CP1": [{"name": "x", "url": "ws://h", "station_id": "a/b"}]}', "station_id"),
    ('{"CP1": [{"name": "a", "url": "ws://h", "role": "primary"}, '
     '{"name": "b", "url": "ws://h", "role": "primary"}]}', "more than one primary"),
    ('{"CP1": [{"name": "a", "url": "ws://h"}, {"name": "a", "url": "ws://i"}]}', "repeat"),
    ('{"bad/id": [{"name": "a", "url": "ws://h"}]}', "bad/id"),
])
def test_a_bad_upstream_is_a_configuration_error_naming_the_field(value, needle):
    from ocpp2mqtt.config import load_settings

    value = value.replace('"url"', '"password": "pw-sekrit", "url"', 1)
    with pytest.raises(ConfigError) as raised:
        load_settings(_env_file=None, ocpp_upstreams=value)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("OCPP_UPSTREAMS") and needle in message, message
    assert "pw-sekrit" not in message


def test_a_bad_upstream_stops_startup(tmp_path):
    from tests.test_config import clean_env

    env = clean_env(OCPP_UPSTREAMS='{"CP1": [{"name": "x", "url": "http://h", '
                                   '"password": "pw-sekrit"}]}')
    proc = subprocess.run([sys.executable, "-m", "ocpp2mqtt"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "OCPP_UPSTREAMS: CP1.0.url" in lines[0], proc.stderr
    assert "pw-sekrit" not in proc.stderr


def test_upstreams_file_and_defaults(tmp_path):
    from ocpp2mqtt.config import SECONDARY_ALLOW, load_settings

    path = tmp_path / "upstreams.json"
    path.write_text(json.dumps({"*": [{"name": "vendor", "url": "wss://cloud.example/ocpp/"}],
                                "CP1": [{"name": "employer", "url": "ws://bo", "role": "primary",
                                         "station_id": "EMP-17"}]}))
    s = load_settings(_env_file=None, ocpp_upstreams_file=str(path),
                      ocpp_upstreams='{"CP2": [{"name": "ere", "url": "ws://ere"}]}')
    assert [u.name for u in s.upstreams_for("CP1")] == ["employer"]  # replaces "*"
    assert [u.name for u in s.upstreams_for("CP2")] == ["ere"]  # the variable's entry
    assert [u.name for u in s.upstreams_for("ANY")] == ["vendor"]
    vendor, employer = s.upstreams_for("ANY")[0], s.upstreams_for("CP1")[0]
    assert vendor.role == "secondary" and employer.role == "primary"
    assert all(vendor.allows(a) for a in SECONDARY_ALLOW) and not vendor.allows("Reset")
    assert employer.allows("Reset") and employer.allows("RequestStartTransaction")
    path.write_text('{"CP1": [{"name": "x"}]}')
    with pytest.raises(ConfigError, match=r"OCPP_UPSTREAMS_FILE: CP1\.0\.url"):
        load_settings(_env_file=None, ocpp_upstreams_file=str(path))


def test_policy_rules():
    from ocpp2mqtt.config import UpstreamConfig
    from ocpp2mqtt.ocpp import protocol
    from ocpp2mqtt.relay import policy

    assert policy.upstream_url("wss://bo.example/ocpp/", "CP 1") == \
        "wss://bo.example/ocpp/CP%201"
    assert policy.upstream_url("ws://h", "CP1") == "ws://h/CP1"
    assert policy.basic_auth("CP1", "pw") == "Basic Q1AxOnB3"
    primary = UpstreamConfig(name="p", url="ws://p", role="primary")
    tagged = UpstreamConfig(name="t", url="ws://t", tags=("CARD",))
    assert policy.decider([primary, tagged], "CARD") is tagged
    assert policy.decider([primary, tagged], "OTHER") is primary
    assert policy.decider([tagged], "OTHER") is None
    picky = UpstreamConfig(name="p", url="ws://p", role="primary", tags=("BIZ",))
    assert policy.decider([picky], "PRIVATE") is None
    v16, v201 = protocol.V16, protocol.V201
    assert policy.rejection(v16, "RemoteStartTransaction") == {"status": "Rejected"}
    assert policy.rejection(v16, "UnlockConnector") is None  # no "Rejected" among its values
    assert policy.rejection(v16, "GetConfiguration") is None  # no status at all
    assert policy.rejection(v201, "RequestStartTransaction") == {"status": "Rejected"}
    assert policy.rejection(v201, "GetVariables") is None
    assert policy.tag_of(v201, "Authorize", {"idToken": {"idToken": "A", "type": "ISO14443"}}) \
        == "A"
    assert policy.tag_of(v16, "Heartbeat", {}) is None
    assert policy.is_transactional(v16, "MeterValues", {"transactionId": 1})
    assert not policy.is_transactional(v16, "MeterValues", {"connectorId": 1})
    # merging: the primary's answer, the decider's tag info, our transaction id
    decision = policy.Decision(primary={"transactionId": 9, "idTagInfo": {"status": "Invalid"}},
                               tag_info={"status": "Accepted", "expiryDate": TS},
                               transaction_id=9)
    local = {"transactionId": 9, "idTagInfo": {"status": "Accepted"}}
    assert decision.merge(v16, "StartTransaction", local) == {
        "transactionId": 9, "idTagInfo": {"status": "Accepted", "expiryDate": TS}}
    blocked = {"transactionId": 9, "idTagInfo": {"status": "Blocked"}}  # the homeowner's
    assert decision.merge(v16, "StartTransaction", blocked)["idTagInfo"] == {"status": "Blocked"}
    assert policy.Decision().merge(v16, "Heartbeat", {"currentTime": TS}) == {"currentTime": TS}


# --- OCPP 2.0.1 ------------------------------------------------------------------------------
async def test_a_201_charger_is_relayed_with_its_own_version(settings_factory, recorder,
                                                             basepath):
    from ocpp.v201 import call as call201

    from tests.test_ocpp2 import connect2x

    office = await BackOffice().start()
    office.answers["BootNotification"] = {"current_time": TS, "interval": 77,
                                          "status": "Accepted"}
    office.answers["Authorize"] = {"id_token_info": {"status": "Accepted",
                                                     "cache_expiry_date_time": TS}}
    settings = settings_factory(ocpp_upstreams={"V2": [upstream(office, "cso", "primary")]},
                                authorized_tag_id_list=["NOT-THIS-ONE"])
    try:
        async with Gateway(settings) as gw:
            st = await connect2x(f"ws://127.0.0.1:{gw.port}", "V2")
            try:
                booted = await st.cp.call(call201.BootNotification(
                    charging_station={"vendor_name": "ACME", "model": "Two"},
                    reason="PowerUp"))
                assert booted.interval == 77
                auth = await st.cp.call(call201.Authorize(
                    id_token={"id_token": "RFID1", "type": "ISO14443"}))
                assert auth.id_token_info == {"status": "Accepted",
                                              "cache_expiry_date_time": TS}
                await st.cp.call(call201.TransactionEvent(
                    event_type="Started", timestamp=TS, trigger_reason="Authorized", seq_no=0,
                    transaction_info={"transaction_id": "tx-1"}, evse={"id": 1},
                    id_token={"id_token": "RFID1", "type": "ISO14443"}))
                frames = await office.wait_actions("BootNotification", "Authorize",
                                                   "TransactionEvent")
                assert frames[2].payload["transactionInfo"]["transactionId"] == "tx-1"
                system = await office.wait_connected("V2")
                result = await system.call(call201.GetVariables(get_variable_data=[{
                    "component": {"name": "OCPPCommCtrlr"},
                    "variable": {"name": "HeartbeatInterval"}}]))
                assert result.get_variable_result
                await st.wait_call("GetVariables")
                await recorder.wait_for(f"{basepath}/V2/state/transaction_id", "tx-1")
            finally:
                await st.close()
    finally:
        await office.stop()
        office.close()


# --- Home Assistant, metrics, the state document ------------------------------------------------
async def test_back_offices_in_home_assistant_metrics_and_the_document(
        settings_factory, tmp_path, offices, recorder, basepath):
    from ocpp2mqtt.health import bound_port
    from tests.test_health import metrics, value
    from tests.test_homeassistant import discovery_prefix, wait_json

    employer, ere = offices
    await ere.stop()
    settings = relay_settings(settings_factory, tmp_path, {"HA1": [
        upstream(employer, "employer", "primary"), upstream(ere, "ere")]},
        homeassistant_discovery=True, homeassistant_discovery_prefix=discovery_prefix(basepath),
        http_enabled=True, http_addr="127.0.0.1", http_port=0)
    async with charger(settings, "HA1") as (gw, st):
        await st.cp.call(boot())
        await st.cp.call(call.StatusNotification(connector_id=1, error_code="NoError",
                                                 status="Available"))
        topic = f"{discovery_prefix(basepath)}/device/ocpp2mqtt/HA1/config"
        doc = await wait_json(recorder, topic, lambda d: "upstream_ere_queue" in
                              d["components"] and "upstream_employer_connection_state"
                              in d["components"])
        link = doc["components"]["upstream_employer_connection_state"]
        assert link["state_topic"] == f"{basepath}/HA1/upstream/employer/connection_state"
        assert link["device_class"] == "connectivity" and link["payload_on"] == "CONNECTED"
        assert doc["components"]["upstream_ere_queue"]["state_topic"] == \
            f"{basepath}/HA1/upstream/ere/queue"
        await latest(recorder, f"{basepath}/HA1/upstream/ere/queue", "2")
        # (the charger is not kept waiting for the answer to a StatusNotification: the
        # employer's queue empties a moment after the charger was answered)
        await employer.wait_actions("BootNotification", "StatusNotification")
        await latest(recorder, f"{basepath}/HA1/upstream/employer/queue", "0")
        await wait_json(recorder, f"{basepath}/HA1/state", lambda d: d.get("upstreams") == {
            "employer": {"connection_state": "CONNECTED", "queue": 0},
            "ere": {"connection_state": "DISCONNECTED", "queue": 2}})
        m = await metrics(bound_port(gw.http_server))
        assert value(m, "ocpp2mqtt_upstream_connected", station="HA1",
                     upstream="employer") == 1
        assert value(m, "ocpp2mqtt_upstream_connected", station="HA1", upstream="ere") == 0
        assert value(m, "ocpp2mqtt_upstream_queue", station="HA1", upstream="ere") == 2
        assert value(m, "ocpp2mqtt_upstream_messages_total", upstream="employer",
                     result="answered") == 2


# --- kill -9 -----------------------------------------------------------------------------------
async def test_kill_9_loses_nothing_queued_for_a_back_office(broker, tmp_path, basepath):
    from tests.helpers import free_port
    from tests.test_reliability import start_gateway_process, wait_listening

    office = BackOffice(first_tx=9000).reserve()  # down until the gateway was killed
    data, port = tmp_path / "data", free_port()
    upstreams = json.dumps({"RK9": [{"name": "ere", "url": office.url}]})
    proc = start_gateway_process(broker.port, basepath, data, port, OCPP_UPSTREAMS=upstreams,
                                 OCPP_UPSTREAM_RECONNECT_MAX_DELAY="0.2")
    try:
        await wait_listening(port, proc)
        st = await connect_station(f"ws://127.0.0.1:{port}", "RK9")
        await st.cp.call(boot())
        started = await st.cp.call(call.StartTransaction(
            connector_id=1, id_tag="T", meter_start=0, timestamp=TS))
        for wh in (10, 20, 30):
            await st.cp.call(meter(started.transaction_id, wh))
        await st.cp.call(call.StopTransaction(meter_stop=40, timestamp=TS,
                                              transaction_id=started.transaction_id))
        proc.kill()  # every message was answered, so every message is in the queue
        proc.wait(10)
        await st.close()
        await office.start()
        proc = start_gateway_process(broker.port, basepath, data, port,
                                     OCPP_UPSTREAMS=upstreams)
        frames = await office.wait_actions(
            "BootNotification", "StartTransaction", "MeterValues", "MeterValues",
            "MeterValues", "StopTransaction", timeout=20)
        assert office.actions() == [f.action for f in frames]  # once each, in order
        assert [f.payload["transactionId"] for f in frames[2:]] == [9000] * 4
    finally:
        proc.kill()
        proc.wait(10)
        await office.stop()
        office.close()


async def test_each_message_reaches_a_back_office_once_unless_unanswered(
        settings_factory, tmp_path, offices, recorder, basepath):
    employer, _ = offices
    settings = relay_settings(settings_factory, tmp_path, {"CP11": [
        upstream(employer, "employer", "primary")]}, ocpp_upstream_timeout=0.3,
        ocpp_upstream_reconnect_max_delay=0.2)
    async with charger(settings, "CP11") as (_, st):
        await st.cp.call(boot())
        start = call.StartTransaction(connector_id=1, id_tag="T", meter_start=5,
                                      timestamp=TS)
        first = await st.cp.call(start)
        again = await st.cp.call(start)  # the charger repeats it (our answer got lost)
        assert first.transaction_id == again.transaction_id == 5000
        await st.cp.call(call.Heartbeat())
        await employer.wait_actions("StartTransaction", "Heartbeat")
        assert employer.actions().count("StartTransaction") == 1
        # The back office goes away with a StopTransaction unanswered: it gets the same
        # message again (same message id) when it is back, and answers it then.
        employer.delays["StopTransaction"] = 30
        await st.cp.call(call.StopTransaction(meter_stop=9, timestamp=TS,
                                              transaction_id=5000))
        await employer.wait_actions("StopTransaction")
        await employer.stop()
        await latest(recorder, f"{basepath}/CP11/upstream/employer/connection_state",
                     "DISCONNECTED")
        del employer.delays["StopTransaction"]
        await employer.start()
        await latest(recorder, f"{basepath}/CP11/upstream/employer/queue", "0")
        stops = [f for f in employer.calls() if f.action == "StopTransaction"]
        assert len(stops) == 2 and stops[0].unique_id == stops[1].unique_id
        assert stops[1].payload["transactionId"] == 5000
