"""Issue 13: OCPP 2.0.1 and 2.1 chargers behind the same MQTT topics and commands.

Real 2.x charge points (the `ocpp` package's v201/v21 ChargePoint, which checks every
message it receives and sends against its schemas) over real WebSockets, a real
gateway and a real Mosquitto. Request payloads for "every action" come from the
schemas themselves (tests/schema_instances.py); answers are checked with jsonschema,
independently of the gateway's own checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from typing import Any

import orjson
import pytest
import websockets
from ocpp.charge_point import camel_to_snake_case, snake_to_camel_case
from ocpp.routing import on
from ocpp.v16 import call as call16
from ocpp.v21 import ChargePoint as ChargePoint21
from ocpp.v21 import call as call21
from ocpp.v21 import call_result as result21
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201

from ocpp2mqtt.gateway import Gateway
from ocpp2mqtt.ocpp import protocol
from ocpp2mqtt.ocpp.v201 import status_16
from tests.helpers import MqttRecorder, connect_station
from tests.schema_instances import check, instance, load
from tests.test_simulator import until

TS = "2026-11-30T08:00:00Z"
_ids = itertools.count(1)


# --- a 2.x test charger that answers every central-system action ---------------------------
class Charger2x:
    """Records what the gateway sent; answers each action with a valid response (or
    `answers[action]`, a camelCase dict)."""

    received: list[tuple[str, dict[str, Any]]]
    answers: dict[str, dict[str, Any]]


def make_charger(version: protocol.OcppVersion) -> type:
    base = ChargePoint201 if version is protocol.V201 else ChargePoint21
    results = result201 if version is protocol.V201 else result21

    def handler_for(action: str):
        default = instance(load(version.package, version.schema_name(action, True)))

        async def handler(self, **payload):
            self.received.append((action, payload))
            answer = self.answers.get(action, default)
            return getattr(results, action)(**camel_to_snake_case(answer))

        handler.__name__ = f"on_{action}"
        return on(action)(handler)

    namespace = {f"on_{action}": handler_for(action)
                 for action in protocol.central_system_actions(version)}

    def __init__(self, cp_id, ws):
        base.__init__(self, cp_id, ws, response_timeout=10)
        self.received, self.answers = [], {}

    namespace["__init__"] = __init__
    return type(f"Charger{version.name}", (base, Charger2x), namespace)


CHARGERS = {v.name: make_charger(v) for v in (protocol.V201, protocol.V21)}


class Station2x:
    def __init__(self, cp: Any, ws: Any):
        self.cp, self.ws = cp, ws
        self.task = asyncio.ensure_future(cp.start())

    async def wait_call(self, action: str, timeout: float = 10) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for name, payload in self.cp.received:
                if name == action:
                    return payload
            if loop.time() > deadline:
                raise AssertionError(f"never received {action}; got {self.cp.received}")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self.task.cancel()
        await self.ws.close()


async def connect2x(url: str, station: str, version: str = "2.0.1",
                    offer: list[str] | None = None) -> Station2x:
    ws = await websockets.connect(f"{url}/{station}",
                                  subprotocols=offer or [f"ocpp{version}"])
    assert ws.subprotocol == f"ocpp{version}"
    return Station2x(CHARGERS[version](station, ws), ws)


async def raw_call(ws: Any, action: str, payload: Any, unique_id: str | None = None) -> list:
    unique_id = unique_id or f"r{next(_ids)}"
    await ws.send(json.dumps([2, unique_id, action, payload]))
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


# --- version negotiation -----------------------------------------------------------------------
@pytest.mark.parametrize(("offer", "chosen"), [
    (["ocpp2.0.1", "ocpp1.6"], "ocpp2.0.1"),
    (["ocpp1.6", "ocpp2.0.1"], "ocpp2.0.1"),  # our preference, not the charger's order
    (["ocpp1.6", "ocpp2.0.1", "ocpp2.1"], "ocpp2.1"),
    (["ocpp1.6"], "ocpp1.6"),
])
async def test_version_negotiation(gateway, url, recorder, basepath, offer, chosen):
    station = f"NEG{next(_ids)}"
    async with websockets.connect(f"{url}/{station}", subprotocols=offer) as ws:
        assert ws.subprotocol == chosen
        await recorder.wait_for(f"{basepath}/{station}/state/ocpp_version",
                                chosen.removeprefix("ocpp"))


async def test_no_subprotocol_is_16(gateway, url, recorder, basepath):
    async with websockets.connect(f"{url}/BARE") as ws:
        assert ws.subprotocol is None
        await recorder.wait_for(f"{basepath}/BARE/state/ocpp_version", "1.6")


async def test_ocpp_versions_setting(settings_factory):
    async with Gateway(settings_factory(ocpp_versions="ocpp1.6,ocpp2.0.1")) as gw:
        url = f"ws://127.0.0.1:{gw.port}"
        async with websockets.connect(f"{url}/PREF", subprotocols=["ocpp2.0.1", "ocpp1.6"]) as ws:
            assert ws.subprotocol == "ocpp1.6"
    async with Gateway(settings_factory(ocpp_versions="ocpp1.6")) as gw:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"ws://127.0.0.1:{gw.port}/ONLY2",
                                     subprotocols=["ocpp2.0.1"])
        assert refused.value.response.status_code == 400
        assert b"ocpp1.6" in refused.value.response.body


async def test_probe_connection_then_201(gateway, url, recorder, basepath):
    """Some chargers probe with 1.6, close, and come back with 2.0.1 (lbbrhzn #2008)."""
    probe = await connect_station(url, "PROBE")
    await probe.cp.call(call16.Heartbeat())
    await recorder.wait_for(f"{basepath}/PROBE/state/ocpp_version", "1.6")
    await probe.close()
    await recorder.wait_for(f"{basepath}/PROBE/state/connection_state", "DISCONNECTED")
    st = await connect2x(url, "PROBE", offer=["ocpp2.0.1", "ocpp1.6"])
    try:
        boot = await st.cp.call(call201.BootNotification(
            charging_station={"model": "M", "vendor_name": "V"}, reason="PowerUp"))
        assert boot.status == "Accepted"
        await recorder.wait_for(f"{basepath}/PROBE/state/ocpp_version", "2.0.1")
        await recorder.wait_for(f"{basepath}/PROBE/state/boot_reason", "PowerUp")
    finally:
        await st.close()


# --- every charger-initiated action, answered schema-valid ------------------------------------
def charger_actions(version: protocol.OcppVersion) -> list:
    return [pytest.param(version, action, full, id=f"{version.name}-{action}-{full}")
            for action in sorted(version.charger_actions - version.send_actions)
            for full in ("required", "full")]


@pytest.mark.parametrize(("version", "action", "shape"),
                         charger_actions(protocol.V201) + charger_actions(protocol.V21))
async def test_every_charger_action_is_answered_valid(gateway, url, version, action, shape):
    request = instance(load(version.package, version.schema_name(action)), shape == "full")
    station = f"ALL{version.name.replace('.', '')}{shape}"
    message = None
    if shape == "required" and snake_to_camel_case(camel_to_snake_case(request)) == request:
        calls = call201 if version is protocol.V201 else call21
        with contextlib.suppress(TypeError):  # e.g. 2.1's iso15118SchemaVersion
            message = getattr(calls, action)(**camel_to_snake_case(request))
    if message is not None:
        # Through the `ocpp` package's charge point: it checks our answer against its schema
        # (where the package can spell the request: its key converter and classes get a few
        # 2.1 names wrong, e.g. `soc`).
        st = await connect2x(url, station, version.name)
        try:
            assert await st.cp.call(message) is not None
        finally:
            await st.close()
    # Raw, with every optional field (the package cannot spell some 2.1 names back):
    async with websockets.connect(f"{url}/{station}",
                                  subprotocols=[version.subprotocol]) as ws:
        answer = await raw_call(ws, action, request)
        assert answer[0] == 3, answer
        check(load(version.package, version.schema_name(action, True)), answer[2])
        # the session goes on
        assert (await raw_call(ws, "Heartbeat", {}))[0] == 3


async def test_a_21_send_is_never_answered(gateway, url):
    request = instance(load("ocpp.v21", "NotifyPeriodicEventStream"))
    async with websockets.connect(f"{url}/SEND21", subprotocols=["ocpp2.1"]) as ws:
        await ws.send(json.dumps([6, "s1", "NotifyPeriodicEventStream", request]))
        await ws.send(json.dumps([2, "h1", "Heartbeat", {}]))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert answer[:2] == [3, "h1"]  # the first answer is the Heartbeat's


# --- every central-system action, by its own name, through MQTT -------------------------------
def central_actions(version: protocol.OcppVersion) -> list:
    return [pytest.param(version, action, id=f"{version.name}-{action}")
            for action in sorted(protocol.central_system_actions(version))]


@pytest.mark.parametrize(("version", "action"),
                         central_actions(protocol.V201) + central_actions(protocol.V21))
async def test_every_central_system_action_reaches_the_charger(gateway, url, recorder,
                                                               basepath, version, action):
    station = f"CS{version.name.replace('.', '')}{action[:20]}"
    st = await connect2x(url, station, version.name)
    try:
        await gateway.mqtt.wait_subscribed(f"{basepath}/{station}/cmd")
        args = instance(load(version.package, version.schema_name(action)), full=True)
        command = {"id": action, "action": snake(action), "args": args}
        recorder.publish(f"{basepath}/{station}/cmd", orjson.dumps(command))
        result = orjson.loads(await recorder.wait_for(f"{basepath}/{station}/cmd_result"))
        assert result["status"] in ("ok", "rejected"), result
        assert result["id"] == action and result["action"] == snake(action)
        payload = await st.wait_call(action)  # the charger's library validated it
        assert payload is not None
    finally:
        await st.close()


def snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


async def test_an_action_of_another_version_is_an_error_naming_the_version(
        gateway, url, recorder, basepath):
    st = await connect2x(url, "WRONGV")
    try:
        await gateway.mqtt.wait_subscribed(f"{basepath}/WRONGV/cmd")
        recorder.publish(f"{basepath}/WRONGV/cmd", b'{"action": "get_diagnostics", "args": '
                         b'{"location": "ftp://x"}}')
        result = orjson.loads(await recorder.wait_for(f"{basepath}/WRONGV/cmd_result"))
        assert result["status"] == "error" and "2.0.1" in result["error"], result
        recorder.publish(f"{basepath}/WRONGV/cmd", b'{"action": "afrr_signal", "args": {}}')
        values = await recorder.wait_count(f"{basepath}/WRONGV/cmd_result", 2)
        result = orjson.loads(values[1])  # a 2.1 action
        assert result["status"] == "error" and "2.0.1" in result["error"], result
    finally:
        await st.close()


# --- 1.6 commands on a 2.0.1 station --------------------------------------------------------------
async def command(recorder: MqttRecorder, prefix: str, doc: dict) -> dict:
    before = len(recorder.values(f"{prefix}/cmd_result"))
    recorder.publish(f"{prefix}/cmd", orjson.dumps(doc))
    values = await recorder.wait_count(f"{prefix}/cmd_result", before + 1)
    return orjson.loads(values[before])


@pytest.mark.parametrize(("doc", "action", "sent"), [
    ({"action": "reset", "args": {"type": "Soft"}}, "Reset", {"type": "OnIdle"}),
    ({"action": "reset", "args": {"type": "Hard"}}, "Reset", {"type": "Immediate"}),
    ({"action": "reset", "args": {"type": "OnIdle", "evse_id": 1}}, "Reset",
     {"type": "OnIdle", "evse_id": 1}),
    ({"action": "unlock_connector", "args": {"connector_id": 2}}, "UnlockConnector",
     {"evse_id": 2, "connector_id": 1}),
    ({"action": "change_availability", "args": {"connector_id": 0, "type": "Inoperative"}},
     "ChangeAvailability", {"operational_status": "Inoperative"}),
    ({"action": "change_availability", "args": {"connector_id": 1, "type": "Operative"}},
     "ChangeAvailability", {"operational_status": "Operative", "evse": {"id": 1}}),
    ({"action": "remote_start_transaction", "args": {"id_tag": "TAG", "connector_id": 1}},
     "RequestStartTransaction", {"id_token": {"id_token": "TAG", "type": "Central"},
                                 "evse_id": 1}),
    ({"action": "start_charging", "args": {}}, "RequestStartTransaction",
     {"id_token": {"id_token": "ocpp2mqtt", "type": "Central"}, "evse_id": 1}),
    ({"action": "remote_stop_transaction", "args": {"transaction_id": "tx-9"}},
     "RequestStopTransaction", {"transaction_id": "tx-9"}),
    ({"action": "trigger_message", "args": {"requested_message": "StatusNotification",
                                            "connector_id": 1}},
     "TriggerMessage", {"requested_message": "StatusNotification", "evse": {"id": 1}}),
    ({"action": "trigger_message", "args": {"requested_message":
                                            "DiagnosticsStatusNotification"}},
     "TriggerMessage", {"requested_message": "LogStatusNotification"}),
    ({"action": "set_current_limit", "args": {"limit": 16}}, "SetChargingProfile",
     {"evse_id": 0, "charging_profile": {
         "id": 1000, "stack_level": 1, "charging_profile_purpose": "TxDefaultProfile",
         "charging_profile_kind": "Relative", "charging_schedule": [
             {"id": 1, "charging_rate_unit": "A",
              "charging_schedule_period": [{"start_period": 0, "limit": 16.0}]}]}}),
    ({"action": "clear_current_limit", "args": {}}, "ClearChargingProfile",
     {"charging_profile_id": 1000}),
    ({"action": "get_composite_schedule", "args": {"connector_id": 1, "duration": 60}},
     "GetCompositeSchedule", {"evse_id": 1, "duration": 60}),
])
async def test_16_commands_on_a_201_station(gateway, url, recorder, basepath, doc, action, sent):
    station = f"T16{next(_ids)}"
    st = await connect2x(url, station)
    try:
        await gateway.mqtt.wait_subscribed(f"{basepath}/{station}/cmd")
        result = await command(recorder, f"{basepath}/{station}", {"id": "c", **doc})
        assert result["status"] == "ok", result
        received = await st.wait_call(action)
        for key, value in sent.items():
            assert received[key] == value, (key, received)
    finally:
        await st.close()


async def test_configuration_commands_answer_like_16(gateway, url, recorder, basepath):
    st = await connect2x(url, "CFG")
    st.cp.answers["GetVariables"] = {"getVariableResult": [
        {"attributeStatus": "Accepted", "attributeValue": "300",
         "component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
        {"attributeStatus": "UnknownVariable", "component": {"name": "Foo"},
         "variable": {"name": "Bar"}}]}
    st.cp.answers["SetVariables"] = {"setVariableResult": [
        {"attributeStatus": "RebootRequired", "component": {"name": "SampledDataCtrlr"},
         "variable": {"name": "TxUpdatedInterval"}}]}
    try:
        prefix = f"{basepath}/CFG"
        await gateway.mqtt.wait_subscribed(f"{prefix}/cmd")
        result = await command(recorder, prefix, {"action": "get_configuration", "args": {
            "key": ["HeartbeatInterval", "Foo/Bar"]}})
        asked = await st.wait_call("GetVariables")
        assert asked["get_variable_data"] == [
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
            {"component": {"name": "Foo"}, "variable": {"name": "Bar"}}]
        assert result["status"] == "ok"
        assert result["response"] == {
            "configuration_key": [{"key": "HeartbeatInterval", "readonly": False,
                                   "value": "300"}],
            "unknown_key": ["Foo/Bar"]}
        result = await command(recorder, prefix, {"action": "change_configuration", "args": {
            "key": "MeterValueSampleInterval", "value": "60"}})
        assert result["status"] == "ok" and result["response"] == {"status": "RebootRequired"}
        changed = await st.wait_call("SetVariables")
        assert changed["set_variable_data"][0]["variable"] == {"name": "TxUpdatedInterval"}
        result = await command(recorder, prefix, {"action": "get_configuration"})
        assert result["status"] == "ok" and "config/" in result["note"]
        assert (await st.wait_call("GetBaseReport"))["report_base"] == "FullInventory"
        result = await command(recorder, prefix, {"action": "get_configuration", "args": {
            "key": ["NoSuchKey"]}})
        assert result["status"] == "error" and "Component/Variable" in result["error"]
    finally:
        await st.close()


async def test_notify_report_becomes_config_topics(gateway, url, recorder, basepath):
    st = await connect2x(url, "REP")
    try:
        await st.cp.call(call201.NotifyReport(request_id=1, generated_at=TS, seq_no=0, report_data=[
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"},
             "variable_attribute": [{"type": "Actual", "value": "300"},
                                    {"type": "MaxSet", "value": "3600"}]},
            {"component": {"name": "EVSE", "evse": {"id": 1}}, "variable": {"name": "Power"},
             "variable_attribute": [{"value": "22000"}]},
            {"component": {"name": "Connector", "evse": {"id": 1, "connector_id": 2},
                           "instance": "left"},
             "variable": {"name": "ConnectorType", "instance": "x"},
             "variable_attribute": [{"value": "cType2"}]},
        ]))
        base = f"{basepath}/REP/config"
        await recorder.wait_for(f"{base}/OCPPCommCtrlr/HeartbeatInterval", "300")
        await recorder.wait_for(f"{base}/EVSE@1/Power", "22000")
        await recorder.wait_for(f"{base}/Connector:left@1.2/ConnectorType:x", "cType2")
    finally:
        await st.close()


async def test_boot_configuration_on_a_201_station(settings_factory, recorder, basepath):
    settings = settings_factory(ocpp_boot_configuration='{"HeartbeatInterval": 120}',
                                ocpp_boot_get_configuration=True)
    async with Gateway(settings) as gw:
        st = await connect2x(f"ws://127.0.0.1:{gw.port}", "BOOTCFG")
        st.cp.answers["SetVariables"] = {"setVariableResult": [
            {"attributeStatus": "Accepted", "component": {"name": "OCPPCommCtrlr"},
             "variable": {"name": "HeartbeatInterval"}}]}
        try:
            await st.cp.call(call201.BootNotification(
                charging_station={"model": "M", "vendor_name": "V"}, reason="PowerUp"))
            item = (await st.wait_call("SetVariables"))["set_variable_data"][0]
            assert item["attribute_value"] == "120"
            assert item["variable"] == {"name": "HeartbeatInterval"}
            result = orjson.loads(await recorder.wait_for(
                f"{basepath}/BOOTCFG/config_result/HeartbeatInterval"))
            assert result == {"value": "120", "status": "Accepted"}
            assert (await st.wait_call("GetBaseReport"))["report_base"] == \
                "ConfigurationInventory"
        finally:
            await st.close()


# --- bad 2.x input gets the 2.x CALLERRORs --------------------------------------------------------
SPEC_201 = {
    "RpcFrameworkError": "Content of the call is not a valid RPC Request, for example: "
    "MessageId could not be read.",
    "MessageTypeNotSupported": "A message with an Message Type Number received that is not "
    "supported by this implementation.",
    "NotImplemented": "Requested Action is not known by receiver",
    "NotSupported": "Requested Action is recognized but not supported by the receiver",
    "FormatViolation": "Payload for Action is syntactically incorrect",
    "ProtocolError": "Payload for Action is not conform the PDU structure",
    "PropertyConstraintViolation": "Payload is syntactically correct but at least one field "
    "contains an invalid value",
    "TypeConstraintViolation": "Payload for Action is syntactically correct but at least one "
    'of the fields violates data type constraints (e.g. "somestring": 12)',
    "OccurenceConstraintViolation": "Payload for Action is syntactically correct but at least "
    "one of the fields violates occurrence constraints",
}
BAD_201 = [
    ("not json", "-1", "RpcFrameworkError"),
    ("[2]", "-1", "RpcFrameworkError"),
    ('[9, "a", "Heartbeat", {}]', "a", "MessageTypeNotSupported"),
    ('[2, "a", "LaunchRocket", {}]', "a", "NotImplemented"),
    ('[2, "a", "Reset", {"type": "Immediate"}]', "a", "NotSupported"),
    ('[2, "a", "Heartbeat", []]', "a", "FormatViolation"),
    ('[2, "a", "Heartbeat", {"x": 1}]', "a", "ProtocolError"),
    ('[2, "a", "BootNotification", {"reason": "PowerUp"}]', "a", "OccurenceConstraintViolation"),
    ('[2, "a", "BootNotification", {"reason": "Bogus", "chargingStation": {"model": "m", '
     '"vendorName": "v"}}]', "a", "PropertyConstraintViolation"),
    ('[2, "a", "Authorize", {"idToken": {"idToken": 5, "type": "Central"}}]', "a",
     "TypeConstraintViolation"),
    ('[2, "a", "StatusNotification", {"timestamp": "' + TS + '", "connectorStatus": '
     '"Available", "evseId": 9223372036854775808, "connectorId": 1}]', "a",
     "TypeConstraintViolation"),
]


@pytest.mark.parametrize(("frame", "unique_id", "code"), BAD_201)
async def test_bad_201_input_gets_the_201_callerror(gateway, url, frame, unique_id, code):
    async with websockets.connect(f"{url}/BAD201", subprotocols=["ocpp2.0.1"]) as ws:
        await ws.send(frame)
        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert answer[:3] == [4, unique_id, code], answer
        assert answer[3] == SPEC_201[code]
        assert (await raw_call(ws, "Heartbeat", {}))[0] == 3  # the session goes on


async def test_21_spells_occurrence_right(gateway, url):
    async with websockets.connect(f"{url}/BAD21", subprotocols=["ocpp2.1"]) as ws:
        answer = await raw_call(ws, "BootNotification", {"reason": "PowerUp"})
        assert answer[2] == "OccurrenceConstraintViolation", answer


# --- the 1.6 status vocabulary ---------------------------------------------------------------
@pytest.mark.parametrize(("connector", "charging", "open_tx", "ended", "status"), [
    ("Available", None, False, False, "Available"),
    ("Occupied", None, False, False, "Preparing"),
    ("Occupied", "EVConnected", True, False, "Preparing"),
    ("Occupied", "Charging", True, False, "Charging"),
    ("Occupied", "SuspendedEV", True, False, "SuspendedEV"),
    ("Occupied", "SuspendedEVSE", True, False, "SuspendedEVSE"),
    ("Available", "Idle", True, False, "Preparing"),  # authorised, not plugged in yet
    ("Occupied", "EVConnected", False, True, "Finishing"),
    ("Occupied", "Charging", False, True, "Finishing"),  # whatever Ended carried
    ("Reserved", None, False, False, "Reserved"),
    ("Unavailable", None, False, False, "Unavailable"),
    ("Faulted", "Charging", True, False, "Faulted"),
])
def test_status_table(connector, charging, open_tx, ended, status):
    assert status_16(connector, charging, open_tx, ended) == status


# --- a 1.6 and a 2.0.1 charger, the same session: the same topics ---------------------------------
def sampled_201(entry: dict) -> dict:
    """A 1.6 meterValue entry (tests/helpers.three_phase_meter_value) in 2.0.1 shape."""
    out = []
    for sv in entry["sampledValue"]:
        item = {"value": float(sv["value"]), "unit_of_measure": {"unit": sv.get("unit", "Wh")}}
        for key in ("measurand", "phase", "context", "location"):
            if key in sv:
                item[key] = sv[key]
        out.append(item)
    return {"timestamp": entry["timestamp"], "sampled_value": out}


DIFFERENT = {  # what is meant to differ between the two versions
    "ocpp_version", "connector_status", "charging_state", "boot_reason", "last_transaction_id",
    "gateway", "last_seen", "last_connected", "last_disconnected", "last_boot",
}


async def test_a_16_and_a_201_charger_publish_the_same_topics(gateway, url, recorder, basepath):
    from tests.helpers import three_phase_meter_value

    reading = three_phase_meter_value(TS, 2000.0)
    end_16 = {"timestamp": TS, "sampledValue": [
        {"value": "3000", "context": "Transaction.End", "unit": "Wh",
         "measurand": "Energy.Active.Import.Register"}]}
    old = await connect_station(url, "SIDE16")
    new = await connect2x(url, "SIDE201")
    try:
        # OCPP 1.6
        await old.cp.call(call16.BootNotification(
            charge_point_vendor="V", charge_point_model="M", charge_point_serial_number="S",
            firmware_version="1.0"))
        status = lambda s: call16.StatusNotification(  # noqa: E731
            connector_id=1, error_code="NoError", status=s, timestamp=TS)
        await old.cp.call(status("Available"))
        await old.cp.call(call16.Authorize(id_tag="TAG"))
        await old.cp.call(status("Preparing"))
        tx = (await old.cp.call(call16.StartTransaction(
            connector_id=1, id_tag="TAG", meter_start=1000, timestamp=TS))).transaction_id
        await old.cp.call(status("Charging"))
        await old.cp.call(call16.MeterValues(connector_id=1, transaction_id=tx,
                                             meter_value=[reading]))
        await old.cp.call(call16.StopTransaction(
            meter_stop=3000, timestamp=TS, transaction_id=tx, reason="EVDisconnected",
            id_tag="TAG", transaction_data=[end_16]))
        await old.cp.call(status("Finishing"))
        await old.cp.call(status("Available"))

        # OCPP 2.0.1
        cp = new.cp
        await cp.call(call201.BootNotification(charging_station={
            "vendor_name": "V", "model": "M", "serial_number": "S", "firmware_version": "1.0"},
            reason="PowerUp"))
        status201 = lambda s: call201.StatusNotification(  # noqa: E731
            timestamp=TS, connector_status=s, evse_id=1, connector_id=1)
        await cp.call(status201("Available"))
        await cp.call(call201.Authorize(id_token={"id_token": "TAG", "type": "ISO14443"}))
        await cp.call(status201("Occupied"))

        def event(kind, seq, state, meter, **extra):
            return call201.TransactionEvent(
                event_type=kind, timestamp=TS, trigger_reason="ChargingStateChanged",
                seq_no=seq, transaction_info={"transaction_id": "tx-a", "charging_state": state,
                                              **extra},
                evse={"id": 1, "connector_id": 1}, meter_value=[meter],
                id_token={"id_token": "TAG", "type": "ISO14443"} if kind == "Started" else None)

        begin = {"timestamp": TS, "sampled_value": [
            {"value": 1000.0, "context": "Transaction.Begin",
             "measurand": "Energy.Active.Import.Register"}]}
        end = {"timestamp": TS, "sampled_value": [
            {"value": 3.0, "context": "Transaction.End", "unit_of_measure": {"unit": "kWh"},
             "measurand": "Energy.Active.Import.Register"}]}
        await cp.call(event("Started", 0, "EVConnected", begin))
        await cp.call(event("Updated", 1, "Charging", sampled_201(reading)))
        await cp.call(event("Ended", 2, "EVConnected", end, stopped_reason="EVDisconnected"))
        await cp.call(status201("Available"))

        a, b = f"{basepath}/SIDE16/state", f"{basepath}/SIDE201/state"

        def statuses(prefix: str) -> list[str]:
            values = recorder.values(f"{prefix}/status")
            return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]

        def finished(prefix: str) -> bool:
            # the last status went out, and the document that carries it
            docs = [orjson.loads(v) for v in recorder.values(prefix)]
            return len(statuses(prefix)) == 5 and any(
                d.get("status") == "Available" and "session_energy" in d for d in docs)

        await until(lambda: finished(a) and finished(b), "both sessions on the broker")
        last = recorder.last()

        def topics(prefix: str) -> dict[str, str]:
            return {t[len(prefix) + 1:]: v for t, v in last.items()
                    if t.startswith(prefix + "/") and t[len(prefix) + 1:].split("/")[0]
                    not in DIFFERENT}

        assert topics(a) == topics(b)
        assert topics(a)["session_energy"] == "2000" and topics(a)["meter_stop"] == "3000"
        assert len(topics(a)) >= 30

        assert statuses(a) == statuses(b) == ["Available", "Preparing", "Charging",
                                              "Finishing", "Available"]

        def document(prefix: str) -> dict:
            doc = orjson.loads(last[prefix])
            return {k: v for k, v in doc.items() if k not in DIFFERENT | {"station"}}

        assert document(a) == document(b)
    finally:
        await old.close()
        await new.close()


async def test_late_transaction_events_do_not_move_the_state_back(gateway, url, recorder,
                                                                 basepath):
    st = await connect2x(url, "LATE")
    try:
        def event(kind, seq, kwh, offline=False):
            return call201.TransactionEvent(
                event_type=kind, timestamp=TS, trigger_reason="MeterValuePeriodic", seq_no=seq,
                offline=offline, transaction_info={"transaction_id": "tx-late"},
                evse={"id": 1, "connector_id": 1}, meter_value=[{"timestamp": TS, "sampled_value": [
                    {"value": kwh, "unit_of_measure": {"unit": "kWh"}}]}])

        await st.cp.call(event("Started", 0, 1.0))
        await st.cp.call(event("Updated", 2, 3.0))
        answer = await st.cp.call(event("Updated", 1, 2.0, offline=True))  # queued, late
        assert answer is not None
        await st.cp.call(event("Ended", 3, 4.0))
        prefix = f"{basepath}/LATE/state"
        await recorder.wait_for(f"{prefix}/session_energy", "3000")
        assert recorder.values(f"{prefix}/energy_active_import_register") == [
            "1000", "3000", "4000"]
    finally:
        await st.close()


async def test_home_assistant_controls_work_on_a_201_station(settings_factory, recorder,
                                                            basepath):
    from tests.test_homeassistant import check_schema, discovery_prefix, render, wait_json

    settings = settings_factory(homeassistant_discovery=True,
                                homeassistant_discovery_prefix=discovery_prefix(basepath))
    async with Gateway(settings) as gw:
        st = await connect2x(f"ws://127.0.0.1:{gw.port}", "HA201")
        try:
            await st.cp.call(call201.BootNotification(charging_station={
                "vendor_name": "ACME", "model": "X", "firmware_version": "2.0"},
                reason="PowerUp"))
            await st.cp.call(call201.StatusNotification(
                timestamp=TS, connector_status="Occupied", evse_id=1, connector_id=1))
            topic = f"{discovery_prefix(basepath)}/device/ocpp2mqtt/HA201/config"
            doc = await wait_json(recorder, topic, lambda d: "charging_1" in d["components"]
                                  and "connector_status" in d["components"])
            check_schema(doc)
            comps = doc["components"]
            assert comps["ocpp_version"]["state_topic"].endswith("/state/ocpp_version")
            assert "Occupied" in comps["connector_status"]["options"]
            assert doc["device"]["sw_version"] == "2.0"
            await gw.mqtt.wait_subscribed(f"{basepath}/HA201/cmd")
            recorder.publish(comps["restart"]["command_topic"], comps["restart"]["payload_press"])
            assert (await st.wait_call("Reset"))["type"] == "OnIdle"
            limit = comps["current_limit"]
            recorder.publish(limit["command_topic"], render(limit["command_template"], 10))
            profile = (await st.wait_call("SetChargingProfile"))["charging_profile"]
            assert profile["charging_schedule"][0]["charging_schedule_period"][0]["limit"] == 10
            charging = comps["charging_1"]
            recorder.publish(charging["command_topic"], charging["payload_on"])
            assert (await st.wait_call("RequestStartTransaction"))["evse_id"] == 1
        finally:
            await st.close()


async def test_basic_auth_and_metrics_for_a_201_station(settings_factory):
    from tests.test_health import metrics, value

    settings = settings_factory(ocpp_basic_auth='{"SEC201": "pw201"}', http_enabled=True,
                                http_addr="127.0.0.1", http_port=0)
    async with Gateway(settings) as gw:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"ws://127.0.0.1:{gw.port}/SEC201",
                                     subprotocols=["ocpp2.0.1"])
        assert refused.value.response.status_code == 401
        st = await connect2x(f"ws://SEC201:pw201@127.0.0.1:{gw.port}", "SEC201")
        try:
            await st.cp.call(call201.Heartbeat())
            from ocpp2mqtt.health import bound_port

            m = await metrics(bound_port(gw.http_server))
            assert value(m, "ocpp2mqtt_ocpp_messages_received_total", action="Heartbeat") == 1
        finally:
            await st.close()
