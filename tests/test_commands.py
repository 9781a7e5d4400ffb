"""Issue 3: MQTT → charger commands, against a real broker and a real OCPP client."""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import paho.mqtt.client as paho
import pytest
from ocpp.v16 import call
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ocpp2mqtt import commands
from ocpp2mqtt.gateway import Gateway
from tests.helpers import MqttRecorder, connect_station

TS = "2026-11-25T10:00:00Z"


async def command(gw: Gateway, recorder: MqttRecorder, prefix: str, doc: dict | bytes | str,
                  timeout: float = 10, retain: bool = False) -> dict:
    """Publish a command and wait for the cmd_result document carrying its id."""
    await gw.mqtt.wait_subscribed(f"{prefix}/cmd")
    if isinstance(doc, dict):
        doc = {"id": doc.get("id", uuid.uuid4().hex), **doc}
        cid = doc["id"]
        payload = orjson.dumps(doc)
    else:
        cid = None
        payload = doc
    before = len(recorder.values(f"{prefix}/cmd_result"))
    recorder.publish(f"{prefix}/cmd", payload, retain=retain)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        results = [orjson.loads(v) for v in recorder.values(f"{prefix}/cmd_result")]
        if cid is not None:
            for r in results:
                if r.get("id") == cid:
                    return r
        elif len(results) > before:
            return results[-1]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no cmd_result for {payload!r}")


# (action, args, OCPP action the charger must receive, payload it must receive (snake_case))
OCPP_CASES = [
    ("cancel_reservation", {"reservation_id": 7}, "CancelReservation", {"reservation_id": 7}),
    ("change_availability", {"connector_id": 1, "type": "Inoperative"}, "ChangeAvailability",
     {"connector_id": 1, "type": "Inoperative"}),
    ("change_configuration", {"key": "HeartbeatInterval", "value": "60"},
     "ChangeConfiguration", {"key": "HeartbeatInterval", "value": "60"}),
    ("clear_cache", {}, "ClearCache", {}),
    ("clear_charging_profile", {"id": 5}, "ClearChargingProfile", {"id": 5}),
    ("data_transfer", {"vendor_id": "ACME", "message_id": "m", "data": "d"}, "DataTransfer",
     {"vendor_id": "ACME", "message_id": "m", "data": "d"}),
    ("get_composite_schedule", {"connector_id": 1, "duration": 3600},
     "GetCompositeSchedule", {"connector_id": 1, "duration": 3600}),
    ("get_configuration", {"key": ["HeartbeatInterval"]}, "GetConfiguration",
     {"key": ["HeartbeatInterval"]}),
    ("get_diagnostics", {"location": "ftp://127.0.0.1/x"}, "GetDiagnostics",
     {"location": "ftp://127.0.0.1/x"}),
    ("get_local_list_version", {}, "GetLocalListVersion", {}),
    ("get_local_version", {}, "GetLocalListVersion", {}),
    ("remote_start_transaction", {"connector_id": 1, "id_tag": "tag"},
     "RemoteStartTransaction", {"connector_id": 1, "id_tag": "tag"}),
    ("remote_stop_transaction", {"transaction_id": 9}, "RemoteStopTransaction",
     {"transaction_id": 9}),
    ("reserve_now", {"connector_id": 1, "expiry_date": TS, "id_tag": "t", "reservation_id": 3},
     "ReserveNow", {"connector_id": 1, "expiry_date": TS, "id_tag": "t", "reservation_id": 3}),
    ("reset", {"type": "Soft"}, "Reset", {"type": "Soft"}),
    ("send_local_list", {"list_version": 2, "update_type": "Full"}, "SendLocalList",
     {"list_version": 2, "update_type": "Full"}),
    ("set_charging_profile", {"connector_id": 1, "cs_charging_profiles": {
        "charging_profile_id": 1, "stack_level": 0, "charging_profile_purpose":
        "TxDefaultProfile", "charging_profile_kind": "Relative", "charging_schedule": {
            "charging_rate_unit": "A", "charging_schedule_period": [
                {"start_period": 0, "limit": 10.5}]}}},
     "SetChargingProfile", None),
    ("trigger_message", {"requested_message": "StatusNotification"}, "TriggerMessage",
     {"requested_message": "StatusNotification"}),
    ("unlock_connector", {"connector_id": 1}, "UnlockConnector", {"connector_id": 1}),
    ("update_firmware", {"location": "http://127.0.0.1/fw", "retrieve_date": TS},
     "UpdateFirmware", {"location": "http://127.0.0.1/fw", "retrieve_date": TS}),
    # camelCase args are accepted too
    ("reset", {"type": "Hard"}, "Reset", {"type": "Hard"}),
    ("unlock_connector", {"connectorId": 2}, "UnlockConnector", {"connector_id": 2}),
]


def test_every_core_operation_is_an_action():
    core = {"cancel_reservation", "change_availability", "change_configuration", "clear_cache",
            "clear_charging_profile", "data_transfer", "get_composite_schedule",
            "get_configuration", "get_diagnostics", "get_local_list_version",
            "remote_start_transaction", "remote_stop_transaction", "reserve_now", "reset",
            "send_local_list", "set_charging_profile", "trigger_message", "unlock_connector",
            "update_firmware", "get_local_version"}
    assert core <= set(commands.ALL_ACTIONS)


@pytest.fixture
async def station(url):
    st = await connect_station(url, f"C{uuid.uuid4().hex[:6]}")
    yield st
    await st.close()


@pytest.mark.parametrize(("action", "args", "ocpp_action", "expected"), OCPP_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(OCPP_CASES)])
async def test_action_reaches_charger_and_result_is_published(
    gateway, recorder, basepath, station, action, args, ocpp_action, expected
):
    prefix = f"{basepath}/{station.cp.id}"
    result = await command(gateway, recorder, prefix, {"action": action, "args": args})
    assert result["status"] == "ok", result
    got = await station.cp.wait_call(ocpp_action)
    if expected is not None:
        assert got.payload == expected
    else:
        profile = got.payload["cs_charging_profiles"]
        assert profile["charging_schedule"]["charging_schedule_period"][0]["limit"] == 10.5
    assert result["action"] == commands.normalise_action(action)
    assert result["error"] is None
    # The original's plain result topic
    status = await recorder.wait_for(f"{prefix}/cmd_result/status")
    assert status


async def test_result_fields_published_like_the_original(gateway, recorder, basepath, station):
    prefix = f"{basepath}/{station.cp.id}"
    result = await command(gateway, recorder, prefix, {"action": "get_local_list_version"})
    assert result["response"] == {"list_version": 3}
    assert await recorder.wait_for(f"{prefix}/cmd_result/list_version") == "3"
    result = await command(gateway, recorder, prefix, {"action": "unlock_connector",
                                              "args": {"connector_id": 1}})
    assert result["response"] == {"status": "Unlocked"}
    assert await recorder.wait_for(f"{prefix}/cmd_result/status", "Unlocked")


async def test_rejected_answer(gateway, recorder, basepath, station):
    station.cp.answers["Reset"] = {"status": "Rejected"}
    result = await command(gateway, recorder, f"{basepath}/{station.cp.id}",
                           {"action": "reset", "args": {"type": "Soft"}})
    assert result["status"] == "rejected"
    assert result["response"] == {"status": "Rejected"}


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"action": "launch_rocket"}', "unknown action 'launch_rocket'"),
        (b'{"action": "unlock_connector", "args": {}}', "connectorId"),
        (b'{"action": "reset", "args": {"type": "Sideways"}}', "must be one of"),
        (b'{"action": "reset", "args": {"type": "Soft", "force": 1}}', "force"),
        (b'{"action": "unlock_connector", "args": {"connector_id": "one"}}', "integer"),
        (b'{"action": "reset", "args": [1]}', '"args" must be a JSON object'),
        (b'{"args": {}}', '"action" is missing'),
    ],
)
async def test_bad_commands_get_error_and_send_nothing(
    gateway, recorder, basepath, station, payload, needle
):
    result = await command(gateway, recorder, f"{basepath}/{station.cp.id}", payload)
    assert result["status"] == "error"
    assert needle in result["error"], result["error"]
    # nothing reached the charger, and it still works
    assert station.cp.received == []
    ok = await command(gateway, recorder, f"{basepath}/{station.cp.id}", {"action": "clear_cache"})
    assert ok["status"] == "ok"


async def test_charger_callerror_is_reported(gateway, recorder, basepath, station):
    station.cp.answers["ClearCache"] = "error"
    result = await command(gateway, recorder, f"{basepath}/{station.cp.id}",
                           {"action": "clear_cache"})
    assert result["status"] == "error"
    assert "GenericError" in result["error"]
    assert result["response"]["error_code"] == "GenericError"


async def test_charger_that_never_answers_times_out(settings_factory, recorder, basepath):
    async with Gateway(settings_factory(ocpp_response_timeout=0.5)) as gw:
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "Mute")
        other = await connect_station(f"ws://127.0.0.1:{gw.port}", "Chatty")
        try:
            st.cp.answers["Reset"] = "silent"
            pending = asyncio.ensure_future(command(gw, recorder, f"{basepath}/Mute",
                                                    {"action": "reset", "args": {"type": "Soft"}}))
            # a slow charger never blocks another station's commands
            fast = await command(gw, recorder, f"{basepath}/Chatty", {"action": "clear_cache"})
            assert fast["status"] == "ok"
            result = await pending
            assert result["status"] == "timeout"
            assert "0.5" in result["error"]
        finally:
            await st.close()
            await other.close()


async def test_disconnected_station_answers_not_connected(settings_factory, recorder, basepath):
    async with Gateway(settings_factory(expected_charge_points=["Away"])) as gw:
        result = await command(gw, recorder, f"{basepath}/Away", {"action": "clear_cache"})
        assert result["status"] == "not_connected"


async def test_command_waits_for_a_reconnecting_station(settings_factory, recorder, basepath):
    settings = settings_factory(expected_charge_points=["Back"], ocpp_command_retry_attempts=6,
                                ocpp_command_retry_base_delay=0.1)
    async with Gateway(settings) as gw:
        pending = asyncio.ensure_future(command(gw, recorder, f"{basepath}/Back",
                                                {"action": "clear_cache"}))
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "Back")
        try:
            result = await pending
            assert result["status"] == "ok"
            await st.cp.wait_call("ClearCache")
        finally:
            await st.close()


async def test_ten_commands_at_once_are_serialised(gateway, recorder, basepath, station):
    prefix = f"{basepath}/{station.cp.id}"
    docs = [{"id": i, "action": "change_configuration",
             "args": {"key": f"K{i}", "value": str(i)}} for i in range(10)]
    results = await asyncio.gather(*(command(gateway, recorder, prefix, d) for d in docs))
    assert [r["id"] for r in results] == list(range(10))
    assert all(r["status"] == "ok" for r in results)
    keys = [r.payload["key"] for r in station.cp.received if r.action == "ChangeConfiguration"]
    assert sorted(keys) == sorted(f"K{i}" for i in range(10))


async def test_convenience_actions(gateway, recorder, basepath, station):
    prefix = f"{basepath}/{station.cp.id}"
    r = await command(gateway, recorder, prefix, {"action": "set_current_limit",
                                         "args": {"limit": 10, "connector_id": 1}})
    assert r["status"] == "ok", r
    got = (await station.cp.wait_call("SetChargingProfile")).payload
    profile = got["cs_charging_profiles"]
    assert got["connector_id"] == 1
    assert profile["charging_profile_purpose"] == "TxDefaultProfile"
    assert profile["stack_level"] == 1
    assert profile["charging_schedule"]["charging_rate_unit"] == "A"
    assert profile["charging_schedule"]["charging_schedule_period"] == [
        {"start_period": 0, "limit": 10.0}]
    r = await command(gateway, recorder, prefix, {"action": "clear_current_limit",
                                         "args": {"connector_id": 1}})
    assert r["status"] == "ok"
    assert (await station.cp.wait_call("ClearChargingProfile")).payload == {
        "id": profile["charging_profile_id"]}
    r = await command(gateway, recorder, prefix, {"action": "start_charging"})
    assert r["status"] == "ok"
    assert (await station.cp.wait_call("RemoteStartTransaction")).payload == {
        "connector_id": 1, "id_tag": "ocpp2mqtt"}
    r = await command(gateway, recorder, prefix, {"action": "stop_charging"})
    assert r["status"] == "error" and "no active transaction" in r["error"]
    start = await station.cp.call(call.StartTransaction(connector_id=1, id_tag="ocpp2mqtt",
                                                        meter_start=0, timestamp=TS))
    r = await command(gateway, recorder, prefix, {"action": "stop_charging"})
    assert r["status"] == "ok"
    assert (await station.cp.wait_call("RemoteStopTransaction")).payload == {
        "transaction_id": start.transaction_id}


async def test_set_current_limit_in_watts_and_quirks(settings_factory, recorder, basepath):
    settings = settings_factory(current_limit_unit="A", current_limit_min_current=6,
                                current_limit_round_amps=True, current_limit_stack_level=3)
    async with Gateway(settings) as gw:
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "Quirky")
        try:
            r = await command(gw, recorder, f"{basepath}/Quirky", {
                "action": "set_current_limit", "args": {"limit": 6900, "unit": "W"}})
            assert r["status"] == "ok", r
            period = (await st.cp.wait_call("SetChargingProfile")).payload[
                "cs_charging_profiles"]["charging_schedule"]["charging_schedule_period"][0]
            assert period["limit"] == 10.0  # 6900 W / (3 × 230 V), whole amps
            st.cp.received.clear()
            r = await command(gw, recorder, f"{basepath}/Quirky", {
                "action": "set_current_limit", "args": {"limit": 4}})
            assert "pausing" in r["note"]
            got = (await st.cp.wait_call("SetChargingProfile")).payload["cs_charging_profiles"]
            assert got["charging_schedule"]["charging_schedule_period"][0]["limit"] == 0
            assert got["stack_level"] == 3
        finally:
            await st.close()


async def test_charging_enabled_gates_authorization(gateway, recorder, basepath, station):
    prefix = f"{basepath}/{station.cp.id}"
    r = await command(gateway, recorder, prefix, {"action": "charging_enabled",
                                         "args": {"enabled": False}})
    assert r["status"] == "ok"
    await recorder.wait_for(f"{prefix}/state/charging_enabled", "false")
    auth = await station.cp.call(call.Authorize(id_tag="any"))
    assert auth.id_tag_info["status"] == "Blocked"
    await command(gateway, recorder, prefix,
                  {"action": "charging_enabled", "args": {"enabled": True}})
    auth = await station.cp.call(call.Authorize(id_tag="any"))
    assert auth.id_tag_info["status"] == "Accepted"


async def test_mqtt5_response_topic_and_correlation(settings_factory, broker, basepath):
    async with Gateway(settings_factory(mqtt_protocol="5")) as gw:
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "V5")
        rec = MqttRecorder(broker.port, f"{basepath}/replies/#", protocol=paho.MQTTv5)
        try:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = f"{basepath}/replies/me"
            props.CorrelationData = b"corr-42"
            await gw.mqtt.wait_subscribed(f"{basepath}/V5/cmd")
            rec.publish(f"{basepath}/V5/cmd", orjson.dumps({"action": "clear_cache"}),
                        properties=props)
            reply = await rec.wait_for(f"{basepath}/replies/me")
            assert orjson.loads(reply)["status"] == "ok"
            msg = next(m for m in rec.snapshot() if m.topic == f"{basepath}/replies/me")
            assert msg.properties.CorrelationData == b"corr-42"
        finally:
            rec.close()
            await st.close()


async def test_retained_command_runs_once_across_restarts(settings_factory, recorder, basepath):
    settings = settings_factory(expected_charge_points=["Ret"])
    resets = 0
    for _ in range(2):
        async with Gateway(settings) as gw:
            st = await connect_station(f"ws://127.0.0.1:{gw.port}", "Ret")
            try:
                if resets == 0:
                    r = await command(gw, recorder, f"{basepath}/Ret",
                                      {"action": "reset", "args": {"type": "Soft"}}, retain=True)
                    assert r["status"] == "ok"
                    await st.cp.wait_call("Reset")
                # Restarted gateway: give the retained message (if any) the chance to arrive.
                await recorder.wait_for(f"{basepath}/Ret/state/connection_state", "CONNECTED")
                ok = await command(gw, recorder, f"{basepath}/Ret", {"action": "clear_cache"})
                assert ok["status"] == "ok"
                resets += sum(1 for r in st.cp.received if r.action == "Reset")
            finally:
                await st.close()
    assert resets == 1
    # the broker no longer holds a retained command
    late = MqttRecorder(settings.mqtt_port, f"{basepath}/Ret/#")
    try:
        # retained messages are delivered on subscribe, before this probe
        late.publish(f"{basepath}/Ret/probe", b"x")
        await late.wait_for(f"{basepath}/Ret/probe", "x")
        assert [m for m in late.snapshot() if m.topic.endswith("/cmd") and m.payload] == []
    finally:
        late.close()


async def test_absolute_profile_kind_for_easee(settings_factory, recorder, basepath):
    async with Gateway(settings_factory(current_limit_profile_kind="Absolute",
                                        current_limit_stack_level=0)) as gw:
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "Easee")
        try:
            r = await command(gw, recorder, f"{basepath}/Easee",
                              {"action": "set_current_limit", "args": {"limit": 16}})
            assert r["status"] == "ok", r
            profile = (await st.cp.wait_call("SetChargingProfile")).payload["cs_charging_profiles"]
            assert profile["charging_profile_kind"] == "Absolute"
            assert profile["stack_level"] == 0
            assert profile["charging_schedule"]["start_schedule"].startswith("20")
        finally:
            await st.close()


def test_parse_errors_keep_the_command_id():
    with pytest.raises(commands.CommandError) as err:
        commands.plan(b'{"id": "x8", "action": "reset", "type": "Soft"}', commands.StationFacts())
    assert err.value.command_id == "x8" and err.value.action == "reset"
    result = commands.result_document(err.value.action, "error", err.value.command_id,
                                      error=str(err.value))
    assert result["id"] == "x8"


def test_tx_profile_goes_to_the_transaction_connector():
    facts = commands.StationFacts(open_transactions={2: 77},
                                  policy=commands.CurrentLimitPolicy(purpose="TxProfile"))
    plan = commands.plan(b'{"action": "set_current_limit", "args": {"limit": 10}}', facts)
    assert plan.payload["connectorId"] == 2
    assert plan.payload["csChargingProfiles"]["transactionId"] == 77
    with pytest.raises(commands.CommandError, match="active transaction"):
        commands.plan(b'{"action": "set_current_limit", "args": {"limit": 10}}',
                      commands.StationFacts(policy=commands.CurrentLimitPolicy(
                          purpose="TxProfile")))


async def test_other_stations_connecting_do_not_shorten_the_wait(settings_factory, recorder,
                                                                 basepath):
    settings = settings_factory(expected_charge_points=["Late"], ocpp_command_retry_attempts=4,
                                ocpp_command_retry_base_delay=0.1)  # waits 1.5 s
    async with Gateway(settings) as gw:
        pending = asyncio.ensure_future(command(gw, recorder, f"{basepath}/Late",
                                                {"action": "clear_cache"}))
        others = [await connect_station(f"ws://127.0.0.1:{gw.port}", f"Other{i}")
                  for i in range(6)]
        late = await connect_station(f"ws://127.0.0.1:{gw.port}", "Late")
        try:
            result = await pending
            assert result["status"] == "ok", result
        finally:
            for st in [*others, late]:
                await st.close()
