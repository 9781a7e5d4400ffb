"""Issue 4: hostile or broken OCPP input gets the right CALLERROR (or a clean close),
and the gateway and every other charger keep working. Includes a hypothesis fuzz test."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ocpp.v16 import call

from ocpp2mqtt.gateway import Gateway
from ocpp2mqtt.ocpp import protocol
from tests.helpers import connect_station

CASES = [
    ("this is not json", "-1", "FormationViolation"),
    ("{}", "-1", "FormationViolation"),
    ("[2]", "-1", "FormationViolation"),
    ('[2, 5, "Heartbeat", {}]', "-1", "FormationViolation"),
    ('[9, "a", "Heartbeat", {}]', "a", "FormationViolation"),
    ('[2, "a", "Heartbeat"]', "a", "FormationViolation"),
    ('[2, "a", "Heartbeat", []]', "a", "FormationViolation"),
    ('[2, "a", "LaunchRocket", {}]', "a", "NotImplemented"),
    ('[2, "a", "Reset", {"type": "Soft"}]', "a", "NotSupported"),
    ('[2, "a", "BootNotification", {}]', "a", "ProtocolError"),
    ('[2, "a", "BootNotification", {"chargePointVendor": 1, "chargePointModel": "x"}]', "a",
     "TypeConstraintViolation"),
    ('[2, "a", "StatusNotification", {"connectorId": 1, "errorCode": "NoError", '
     '"status": "Bogus"}]', "a", "PropertyConstraintViolation"),
    ('[2, "a", "Heartbeat", {"x": 1}]', "a", "FormationViolation"),
    ('[2, "a", "MeterValues", {"connectorId": 1, "meterValue": []}]', "a",
     "OccurenceConstraintViolation"),
    ('[2, "' + "x" * 40 + '", "Heartbeat", {}]', "-1", "FormationViolation"),
]


@pytest.fixture
async def gw(settings_factory):
    async with Gateway(settings_factory(ocpp_rate_limit=0, max_frame_size=4096)) as gateway:
        yield gateway


async def still_serving(gateway: Gateway) -> None:
    other = await connect_station(f"ws://127.0.0.1:{gateway.port}", "Bystander")
    try:
        assert (await other.cp.call(call.Heartbeat())).current_time
    finally:
        await other.close()


@pytest.mark.parametrize(("frame", "unique_id", "code"), CASES)
async def test_bad_frame_gets_the_right_callerror(gw, frame, unique_id, code):
    async with websockets.connect(f"ws://127.0.0.1:{gw.port}/Bad",
                                  subprotocols=["ocpp1.6"]) as ws:
        await ws.send(frame)
        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert answer[0] == 4 and answer[1] == unique_id and answer[2] == code, answer
        assert isinstance(answer[3], str) and isinstance(answer[4], dict)
        # the same connection still works after the error
        await ws.send('[2, "ok", "Heartbeat", {}]')
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))[:2] == [3, "ok"]
    await still_serving(gw)


async def test_binary_frame_closes_cleanly(gw):
    ws = await websockets.connect(f"ws://127.0.0.1:{gw.port}/Bin", subprotocols=["ocpp1.6"])
    await ws.send(b"\x00\x01binary")
    await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1003
    await still_serving(gw)


async def test_oversized_frame_closes_cleanly(gw):
    ws = await websockets.connect(f"ws://127.0.0.1:{gw.port}/Big", subprotocols=["ocpp1.6"])
    await ws.send('[2, "a", "DataTransfer", {"vendorId": "x", "data": "' + "y" * 5000 + '"}]')
    await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1009  # message too big
    await still_serving(gw)


async def test_answer_to_unknown_call_is_ignored(gw):
    async with websockets.connect(f"ws://127.0.0.1:{gw.port}/Odd",
                                  subprotocols=["ocpp1.6"]) as ws:
        await ws.send('[3, "never-asked", {}]')
        await ws.send('[4, "never-asked", "GenericError", "", {}]')
        await ws.send('[2, "ok", "Heartbeat", {}]')
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))[:2] == [3, "ok"]


# --- fuzz --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=12,
)
actions = st.sampled_from([*sorted(protocol.CHARGER_ACTIONS_16), "Reset", "Nope", ""])
camel_keys = st.sampled_from(["connectorId", "idTag", "meterValue", "status", "errorCode",
                              "chargePointVendor", "chargePointModel", "transactionId",
                              "meterStart", "meterStop", "timestamp", "vendorId", "x"])
payloads = st.dictionaries(camel_keys, json_values, max_size=6)
calls = st.builds(lambda uid, action, payload: json.dumps([2, uid, action, payload]),
                  st.text(min_size=0, max_size=40), actions, payloads)
shapes = st.builds(json.dumps, json_values)
garbage = st.text(max_size=200)
frames = st.lists(st.one_of(calls, shapes, garbage), min_size=1, max_size=8)

FUZZ_STATS = {"frames": 0, "examples": 0}


@pytest.fixture(scope="module", autouse=True)
def _report_fuzz_stats():
    yield
    if FUZZ_STATS["examples"]:
        print(f"\nfuzz: {FUZZ_STATS['examples']} examples, {FUZZ_STATS['frames']} frames")
VALID_CODES = {"FormationViolation", "ProtocolError", "NotImplemented", "NotSupported",
               "TypeConstraintViolation", "PropertyConstraintViolation",
               "OccurenceConstraintViolation", "InternalError"}


@settings(max_examples=500, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=frames)
async def test_fuzzed_frames_never_break_the_gateway(gw, batch):
    FUZZ_STATS["examples"] += 1
    async with websockets.connect(f"ws://127.0.0.1:{gw.port}/Fuzz",
                                  subprotocols=["ocpp1.6"]) as ws:
        for frame in batch:
            await ws.send(frame)
            FUZZ_STATS["frames"] += 1
        await ws.send('[2, "probe", "Heartbeat", {}]')
        while True:
            answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert isinstance(answer, list) and answer[0] in (3, 4), answer
            if answer[0] == 4:
                assert answer[2] in VALID_CODES, answer
                assert answer[2] != "InternalError", answer  # no handler blew up
            if answer[1] == "probe" and answer[0] == 3:
                break


async def test_after_fuzzing_a_well_behaved_charger_is_served(gw):
    # runs the fuzzer's kind of abuse once more, then a normal session
    async with websockets.connect(f"ws://127.0.0.1:{gw.port}/Fuzz2",
                                  subprotocols=["ocpp1.6"]) as ws:
        for frame in ("[", "[2,", '[2,"x","MeterValues",{"connectorId":"1"}]', "null"):
            await ws.send(frame)
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))[0] == 4
    await still_serving(gw)


async def test_strict_schema_mode_refuses_what_lenient_mode_accepts(settings_factory):
    frame = ('[2, "s", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M",'
             ' "chargePointSerialNumber": "' + "9" * 30 + '"}]')
    for lenient, expected in ((True, [3, "s"]), (False, [4, "s"])):
        async with Gateway(settings_factory(ocpp_lenient_schema=lenient)) as gateway:
            async with websockets.connect(f"ws://127.0.0.1:{gateway.port}/Long",
                                          subprotocols=["ocpp1.6"]) as ws:
                await ws.send(frame)
                answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert answer[:2] == expected
                if not lenient:
                    assert answer[2] == "TypeConstraintViolation"


async def test_connection_limit_refuses_with_503(settings_factory):
    async with Gateway(settings_factory(max_connections=1)) as gateway:
        first = await connect_station(f"ws://127.0.0.1:{gateway.port}", "One")
        try:
            with pytest.raises(websockets.InvalidStatus) as err:
                await websockets.connect(f"ws://127.0.0.1:{gateway.port}/Two",
                                         subprotocols=["ocpp1.6"])
            assert err.value.response.status_code == 503
            assert (await first.cp.call(call.Heartbeat())).current_time
        finally:
            await first.close()
