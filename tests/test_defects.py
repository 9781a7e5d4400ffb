"""Issue 19: defects found by outside checks. Each test failed on the code before the fix.

Real gateway, real Mosquitto, real WebSockets; the "raw" chargers below answer our
CALLs with whatever a broken or hostile firmware would send.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from ocpp.v16 import call

from ocpp2mqtt.config import SECRET_FIELDS
from ocpp2mqtt.gateway import Gateway
from ocpp2mqtt.health import bound_port
from tests.helpers import MqttRecorder, connect_station
from tests.test_health import metrics, value

TS = "2026-11-25T10:00:00Z"
ROOT = Path(__file__).resolve().parent.parent

# OCPP-J 1.6 §4.2.3, copied from the specification (not from the code under test).
SPEC_16 = {
    "NotImplemented": "Requested Action is not known by receiver",
    "NotSupported": "Requested Action is recognized but not supported by the receiver",
    "ProtocolError": "Payload for Action is incomplete",
    "FormationViolation": "Payload for Action is syntactically incorrect or not conform the PDU "
    "structure for Action",
    "PropertyConstraintViolation": "Payload is syntactically correct but at least one field "
    "contains an invalid value",
    "OccurenceConstraintViolation": "Payload for Action is syntactically correct but at least "
    "one of the fields violates occurence constraints",
    "TypeConstraintViolation": "Payload for Action is syntactically correct but at least one "
    'of the fields violates data type constraints (e.g. "somestring": 12)',
}


async def exchange(url: str, station: str, frame: str) -> list:
    async with websockets.connect(f"{url}/{station}", subprotocols=["ocpp1.6"]) as ws:
        await ws.send(frame)
        return json.loads(await asyncio.wait_for(ws.recv(), 5))


# --- NotImplemented / NotSupported, and the spec's texts ----------------------------------
@pytest.mark.parametrize(("frame", "code"), [
    ('[2, "a", "LaunchRocket", {}]', "NotImplemented"),  # not known
    ('[2, "a", "Reset", {"type": "Soft"}]', "NotSupported"),  # known, central-system only
    ('[2, "a", "SecurityEventNotification", {"type": "x", "timestamp": "' + TS + '"}]',
     "NotSupported"),
    ('[2, "a", "BootNotification", {}]', "ProtocolError"),
    ('[2, "a", "Heartbeat", {"x": 1}]', "FormationViolation"),
    ('[9, "a", "Heartbeat", {}]', "FormationViolation"),  # no such message type: not a PDU
    ('[2, "a", "StatusNotification", {"connectorId": 1, "errorCode": "NoError", '
     '"status": "Bogus"}]', "PropertyConstraintViolation"),
    ('[2, "a", "MeterValues", {"connectorId": 1, "meterValue": []}]',
     "OccurenceConstraintViolation"),
    ('[2, "a", "Authorize", {"idTag": 5}]', "TypeConstraintViolation"),
])
async def test_callerror_codes_and_texts_follow_the_spec(gateway, url, frame, code):
    answer = await exchange(url, "Spec", frame)
    assert answer[0] == 4 and answer[2] == code, answer
    assert answer[3] == SPEC_16[code]


# --- transactions belong to their station ---------------------------------------------------
async def test_another_stations_stop_touches_nothing(gateway, url, recorder, basepath):
    a = await connect_station(url, "TXA")
    b = await connect_station(url, "TXB")
    try:
        tx = (await a.cp.call(call.StartTransaction(connector_id=1, id_tag="a", meter_start=1000,
                                                    timestamp=TS))).transaction_id
        # B reports A's transaction id: in a reading and in a stop.
        await b.cp.call(call.MeterValues(connector_id=1, transaction_id=tx, meter_value=[
            {"timestamp": TS, "sampledValue": [{"value": "77", "unit": "Wh"}]}]))
        stop_b = await b.cp.call(call.StopTransaction(meter_stop=99_999, timestamp=TS,
                                                      transaction_id=tx, id_tag="b"))
        assert stop_b.id_tag_info["status"] == "Accepted"  # answered as the spec asks
        await recorder.wait_for(f"{basepath}/TXB/state/meter_stop", "99999")
        await recorder.wait_for(f"{basepath}/TXB/state/energy_active_import_register", "77")
        # ... and A's transaction is untouched: still open, and its energy is its own.
        assert str(tx) not in recorder.values(f"{basepath}/TXB/state/transaction_id")
        assert recorder.values(f"{basepath}/TXB/state/session_energy") == []
        recorder.publish(f"{basepath}/TXA/cmd", orjson.dumps({"id": "s", "action":
                                                              "stop_charging"}))
        result = orjson.loads(await recorder.wait_for(f"{basepath}/TXA/cmd_result"))
        assert result["status"] == "ok", result
        assert (await a.cp.wait_call("RemoteStopTransaction")).payload["transaction_id"] == tx
        await a.cp.call(call.StopTransaction(meter_stop=5000, timestamp=TS, transaction_id=tx))
        assert await recorder.wait_for(f"{basepath}/TXA/state/session_energy") == "4000"
    finally:
        await a.close()
        await b.close()


async def test_foreign_transactions_are_counted(settings_factory):
    settings = settings_factory(http_enabled=True, http_addr="127.0.0.1", http_port=0)
    async with Gateway(settings) as gw:
        url = f"ws://127.0.0.1:{gw.port}"
        a = await connect_station(url, "FA")
        b = await connect_station(url, "FB")
        try:
            tx = (await a.cp.call(call.StartTransaction(
                connector_id=1, id_tag="a", meter_start=0, timestamp=TS))).transaction_id
            await b.cp.call(call.StopTransaction(meter_stop=1, timestamp=TS, transaction_id=tx))
            m = await metrics(bound_port(gw.http_server))
            assert value(m, "ocpp2mqtt_ocpp_foreign_transactions_total") == 1
        finally:
            await a.close()
            await b.close()


# --- StopTransaction's idTagInfo --------------------------------------------------------------
async def test_stop_transaction_authorizes_the_tag(settings_factory, recorder, basepath):
    async with Gateway(settings_factory(authorized_tag_id_list=["good"])) as gw:
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "STAG")
        try:
            async def stop(tag: str) -> str:
                tx = (await st.cp.call(call.StartTransaction(
                    connector_id=1, id_tag="good", meter_start=0, timestamp=TS))).transaction_id
                answer = await st.cp.call(call.StopTransaction(
                    meter_stop=10, timestamp=TS, transaction_id=tx, id_tag=tag))
                return answer.id_tag_info["status"]

            assert await stop("good") == "Accepted"
            assert await stop("evil") == "Invalid"
            await gw.mqtt.wait_subscribed(f"{basepath}/STAG/cmd")
            recorder.publish(f"{basepath}/STAG/cmd", orjson.dumps(
                {"action": "charging_enabled", "args": {"enabled": False}}))
            await recorder.wait_for(f"{basepath}/STAG/state/charging_enabled", "false")
            assert await stop("good") == "Blocked"
        finally:
            await st.close()


# --- the charger's answers to commands --------------------------------------------------------
class RawCharger:
    """A charger on bare websockets that answers our CALLs with `answer(action, payload)`."""

    def __init__(self, ws: Any, answer: Callable[[str, Any], str]):
        self.ws = ws
        self.answer = answer
        self.task = asyncio.ensure_future(self._serve())

    async def _serve(self) -> None:
        async for frame in self.ws:
            msg = json.loads(frame)
            if msg[0] == 2:
                await self.ws.send(self.answer(msg[2], msg))

    async def close(self) -> None:
        self.task.cancel()
        await self.ws.close()


async def raw_charger(url: str, station: str, answer: Callable[[str, Any], str]) -> RawCharger:
    ws = await websockets.connect(f"{url}/{station}", subprotocols=["ocpp1.6"])
    return RawCharger(ws, answer)


async def command_result(recorder: MqttRecorder, prefix: str, doc: dict,
                         timeout: float = 10) -> dict:
    """Publish one command; return its one result (and check no second one follows)."""
    before = len(recorder.values(f"{prefix}/cmd_result"))
    recorder.publish(f"{prefix}/cmd", orjson.dumps(doc))
    values = await recorder.wait_count(f"{prefix}/cmd_result", before + 1, timeout)
    return orjson.loads(values[before])


@pytest.mark.parametrize(("answer", "field"), [
    ('{"status": "Maybe"}', "status"),
    ("{}", "status"),
    ('"a bare string"', "payload"),
    ('{"status": "Accepted", "extra": 1}', "extra"),
])
async def test_invalid_answers_are_errors_naming_the_field(gateway, url, recorder, basepath,
                                                           answer, field):
    station = await raw_charger(url, "BADANS", lambda action, msg: f'[3, "{msg[1]}", {answer}]')
    try:
        await gateway.mqtt.wait_subscribed(f"{basepath}/BADANS/cmd")
        result = await command_result(recorder, f"{basepath}/BADANS",
                                      {"id": 1, "action": "reset", "args": {"type": "Hard"}})
        assert result["status"] == "error", result
        assert field in result["error"] and "Reset" in result["error"]
        assert result["response"] == json.loads(answer)  # the raw answer, as received
    finally:
        await station.close()


async def test_valid_answers_are_still_ok(gateway, url, recorder, basepath):
    station = await raw_charger(url, "GOODANS",
                                lambda action, msg: f'[3, "{msg[1]}", {{"status": "Accepted"}}]')
    try:
        await gateway.mqtt.wait_subscribed(f"{basepath}/GOODANS/cmd")
        result = await command_result(recorder, f"{basepath}/GOODANS",
                                      {"id": 1, "action": "reset", "args": {"type": "Hard"}})
        assert (result["status"], result["response"]) == ("ok", {"status": "Accepted"})
    finally:
        await station.close()


# --- nesting ------------------------------------------------------------------------------------
def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


async def test_deeply_nested_command_gets_one_error_result(gateway, url, recorder, basepath):
    st = await connect_station(url, "DEEP")
    try:
        await gateway.mqtt.wait_subscribed(f"{basepath}/DEEP/cmd")
        raw = ('{"id": "deep", "action": "data_transfer", "args": {"vendor_id": "x", "data": '
               + nested(1000) + "}}")
        assert orjson.loads(raw)  # within the JSON parser's limit
        before = len(recorder.values(f"{basepath}/DEEP/cmd_result"))
        recorder.publish(f"{basepath}/DEEP/cmd", raw)
        values = await recorder.wait_count(f"{basepath}/DEEP/cmd_result", before + 1)
        result = orjson.loads(values[before])
        assert result["status"] == "error" and "nested" in result["error"]
        assert result["id"] == "deep"
        # the gateway still runs commands
        ok = await command_result(recorder, f"{basepath}/DEEP", {"action": "clear_cache"})
        assert ok["status"] == "ok"
    finally:
        await st.close()


async def test_deeply_nested_answer_gets_one_error_result(gateway, url, recorder, basepath):
    deep = nested(1000)
    station = await raw_charger(
        url, "DEEPANS",
        lambda action, msg: f'[3, "{msg[1]}", {{"status": "Accepted", "data": {deep}}}]')
    try:
        await gateway.mqtt.wait_subscribed(f"{basepath}/DEEPANS/cmd")
        result = await command_result(recorder, f"{basepath}/DEEPANS",
                                      {"id": 7, "action": "data_transfer",
                                       "args": {"vendor_id": "x"}})
        assert result["status"] == "error" and "nested" in result["error"], result
        # and a deep CALLERROR details object, too
        station.answer = (lambda action, msg:
                          f'[4, "{msg[1]}", "GenericError", "no", {{"x": {deep}}}]')
        result = await command_result(recorder, f"{basepath}/DEEPANS",
                                      {"id": 8, "action": "clear_cache"})
        assert result["status"] == "error" and result["id"] == 8
    finally:
        await station.close()


# --- integers beyond 64 bits ---------------------------------------------------------------------
@pytest.mark.parametrize("frame", [
    '[2, "big", "StartTransaction", {"connectorId": 1, "idTag": "t", '
    '"meterStart": 9223372036854775808, "timestamp": "' + TS + '"}]',
    '[2, "big", "StopTransaction", {"transactionId": 9223372036854775808, "meterStop": 1, '
    '"timestamp": "' + TS + '"}]',
    '[2, "big", "MeterValues", {"connectorId": 18446744073709551615, "meterValue": '
    '[{"timestamp": "' + TS + '", "sampledValue": [{"value": "1"}]}]}]',
])
async def test_huge_integers_get_a_constraint_error(gateway, url, frame):
    async with websockets.connect(f"{url}/BIG", subprotocols=["ocpp1.6"]) as ws:
        await ws.send(frame)
        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert answer[:3] == [4, "big", "TypeConstraintViolation"], answer
        # the largest 64-bit value is fine, and the session goes on
        await ws.send(frame.replace("9223372036854775808", "9223372036854775807")
                      .replace("18446744073709551615", "2"))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert answer[:2] == [3, "big"], answer


# --- secrets --------------------------------------------------------------------------------------
SENTINELS = {
    "mqtt_password": "sekrit-pw-1",
    "mqtt_websocket_headers": '{"Authorization": "Bearer sekrit-token-2"}',
    "ocpp_basic_auth": '{"CP1": "sekrit-charger-3"}',
    "ocpp_upstreams": '{"CP1": [{"name": "employer", "url": "wss://bo.example/ocpp", '
                      '"role": "primary", "password": "sekrit-upstream-4"}]}',
    "web_auth_token": "sekrit-web-5",
    "store_url": "postgresql://ocpp:sekrit-db-6@db.example:5432/ocpp",
}


def test_every_secret_is_masked_by_check_config(tmp_path):
    assert set(SENTINELS) == set(SECRET_FIELDS)  # a new secret needs a sentinel here
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "OCPP_"))}
    env.update({name.upper(): text for name, text in SENTINELS.items()})
    proc = subprocess.run([sys.executable, "-m", "ocpp2mqtt", "check-config"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for secret in ("sekrit-pw-1", "sekrit-token-2", "sekrit-charger-3", "sekrit-upstream-4",
                   "sekrit-web-5", "sekrit-db-6"):
        assert secret not in proc.stdout + proc.stderr
    for name in SENTINELS:
        assert f"{name.upper()}=" in proc.stdout
    assert "Authorization" in proc.stdout and "CP1" in proc.stdout  # keys are not secret
    assert "wss://bo.example/ocpp" in proc.stdout  # nor is where an upstream is
    assert "postgresql://ocpp:**********@db.example:5432/ocpp" in proc.stdout


# --- metrics --------------------------------------------------------------------------------------
async def test_counters_and_process_metrics_are_exported(settings_factory):
    settings = settings_factory(http_enabled=True, http_addr="127.0.0.1", http_port=0,
                                ocpp_rate_limit=50, ocpp_rate_burst=2)
    async with Gateway(settings) as gw:
        async with websockets.connect(f"ws://127.0.0.1:{gw.port}/FLOOD",
                                      subprotocols=["ocpp1.6"]) as ws:
            for i in range(10):
                await ws.send(f'[2, "h{i}", "Heartbeat", {{}}]')
            for _ in range(10):
                await asyncio.wait_for(ws.recv(), 5)
        m = await metrics(bound_port(gw.http_server))
        assert value(m, "ocpp2mqtt_ocpp_rate_limited_total") >= 1
        assert value(m, "ocpp2mqtt_outbox_dropped_messages_total") == 0
        assert value(m, "ocpp2mqtt_mqtt_publish_failures_total") == 0
        # prometheus-client's own collectors
        assert value(m, "process_virtual_memory_bytes") > 0
        assert any(name == "python_info" for name, _ in m)
        assert any(name == "python_gc_collections_total" for name, _ in m)


# --- the newcomer trap: MQTT_USESTATIONNAME=false with two stations ---------------------------
async def test_second_station_on_shared_topics_is_warned_about(settings_factory, caplog):
    settings = settings_factory(mqtt_usestationname=False, http_enabled=True,
                                http_addr="127.0.0.1", http_port=0)
    async with Gateway(settings) as gw:
        url = f"ws://127.0.0.1:{gw.port}"
        first = await connect_station(url, "ONE")
        try:
            await first.cp.call(call.Heartbeat())
            m = await metrics(bound_port(gw.http_server))
            assert value(m, "ocpp2mqtt_shared_topic_stations") == 1
            assert "MQTT_USESTATIONNAME" not in caplog.text
            with caplog.at_level(logging.WARNING):
                second = await connect_station(url, "TWO")
                await second.cp.call(call.Heartbeat())
            try:
                warnings = [r.getMessage() for r in caplog.records
                            if "MQTT_USESTATIONNAME=true" in r.getMessage()]
                assert len(warnings) == 1 and "TWO" in warnings[0] and "ONE" in warnings[0]
                m = await metrics(bound_port(gw.http_server))
                assert value(m, "ocpp2mqtt_shared_topic_stations") == 2
            finally:
                await second.close()
        finally:
            await first.close()


async def test_own_topics_per_station_need_no_warning(settings_factory):
    settings = settings_factory(http_enabled=True, http_addr="127.0.0.1", http_port=0)
    async with Gateway(settings) as gw:
        url = f"ws://127.0.0.1:{gw.port}"
        stations = [await connect_station(url, f"OWN{i}") for i in range(2)]
        try:
            for st in stations:
                await st.cp.call(call.Heartbeat())
            m = await metrics(bound_port(gw.http_server))
            assert value(m, "ocpp2mqtt_shared_topic_stations") == 0
        finally:
            for st in stations:
                await st.close()


def test_simulator_help_names_the_setting():
    proc = subprocess.run([sys.executable, "-m", "ocpp2mqtt", "simulate", "--help"],
                          capture_output=True, text=True, timeout=60)
    text = " ".join(proc.stdout.split())
    assert "--stations" in text and "MQTT_USESTATIONNAME=true" in text


# --- the repository -------------------------------------------------------------------------------
def test_gitignore_covers_every_virtual_environment():
    for path in (".venv/", ".venv-py310/", ".venv2/"):
        proc = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT)
        assert proc.returncode == 0, f"{path} is not ignored"


async def test_every_exported_metric_is_documented(settings_factory):
    doc = (ROOT / "docs" / "kubernetes.md").read_text()
    settings = settings_factory(http_enabled=True, http_addr="127.0.0.1", http_port=0)
    async with Gateway(settings) as gw:
        text = (gw.metrics.render()).decode()
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    ours = {f for f in families if f.startswith("ocpp2mqtt_")}
    assert len(ours) >= 10
    for family in ours:
        kind = next(line.split()[3] for line in text.splitlines()
                    if line.startswith(f"# TYPE {family} "))
        name = family if kind != "counter" or family.endswith("_total") else f"{family}_total"
        assert f"`{name}" in doc, f"{name} is not in docs/kubernetes.md"
