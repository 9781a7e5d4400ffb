"""Issue 2: a real charge point (ocpp library) → real gateway → real Mosquitto."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import websockets
from ocpp.v16 import call

from ocpp2mqtt.gateway import Gateway
from tests.helpers import MqttRecorder, connect_station, three_phase_meter_value

TS = "2026-11-25T10:00:00Z"


async def test_full_session_publishes_original_topics(gateway, url, recorder, basepath):
    st = await connect_station(url, "CP1")
    p = f"{basepath}/CP1/state"
    try:
        await recorder.wait_for(f"{p}/connection_state", "CONNECTED")
        boot = await st.cp.call(call.BootNotification(
            charge_point_model="Wallbox X", charge_point_vendor="ACME",
            firmware_version="1.2.3", charge_point_serial_number="SN42"))
        assert boot.status == "Accepted"
        assert boot.interval == 300  # a sensible default, not 10 s
        await st.cp.call(call.StatusNotification(connector_id=1, error_code="NoError",
                                                 status="Preparing"))
        auth = await st.cp.call(call.Authorize(id_tag="tag1"))
        assert auth.id_tag_info["status"] == "Accepted"
        start = await st.cp.call(call.StartTransaction(connector_id=1, id_tag="tag1",
                                                       meter_start=1000, timestamp=TS))
        tx = start.transaction_id
        assert isinstance(tx, int) and start.id_tag_info["status"] == "Accepted"
        await st.cp.call(call.MeterValues(connector_id=1, transaction_id=tx, meter_value=[
            three_phase_meter_value(TS, 1500.0), three_phase_meter_value(TS, 2500.0)]))
        hb = await st.cp.call(call.Heartbeat())
        assert hb.current_time.endswith("Z")
        dt = await st.cp.call(call.DataTransfer(vendor_id="ACME", message_id="hello",
                                                data="world"))
        assert dt.status == "Accepted"
        await st.cp.call(call.StopTransaction(meter_stop=6000, timestamp=TS, transaction_id=tx,
                                              reason="EVDisconnected", id_tag="tag1"))
        await recorder.wait_for(f"{p}/session_energy", "5000")
    finally:
        await st.close()
    await recorder.wait_for(f"{p}/connection_state", "DISCONNECTED")
    last = recorder.last()
    expected = {
        "charge_point_vendor": "ACME",
        "charge_point_model": "Wallbox X",
        "firmware_version": "1.2.3",
        "charge_point_serial_number": "SN42",
        "status": "Preparing",
        "error_code": "NoError",
        "connector_id": "1",
        "authorize": "tag1",
        "authorize_status": "Accepted",
        "id_tag": "tag1",
        "meter_start": "1000",
        "meter_stop": "6000",
        "meter_stop_reason": "EVDisconnected",
        "last_transaction_id": str(tx),
        "session_energy": "5000",
        # the second meterValue wins; kW → W and kWh → Wh
        "energy_active_import_register": "2500",
        "power_active_import": "11040",
        "voltage/l1_n": "230.1",
        "voltage/l2_n": "231.2",
        "voltage/l3_n": "232.3",
        "voltage": "231.2",  # mean of the phases (documented aggregate)
        "current_import/l1": "16.5",
        "current_import/l2": "17.5",
        "current_import/l3": "18.5",
        "current_import": "18.5",  # max of the phases
        "meter_timestamp": TS,
        "connection_state": "DISCONNECTED",
    }
    for key, value in expected.items():
        assert last.get(f"{p}/{key}") == value, key
    transfer = orjson.loads(last[f"{p}/data_transfer"])
    assert transfer == {"vendor_id": "ACME", "message_id": "hello", "data": "world"}
    for key in ("heartbeat", "last_seen", "last_connected", "last_disconnected"):
        assert last[f"{p}/{key}"].startswith("20"), key
    # Both meterValues went out, in order, not only the first one.
    assert recorder.values(f"{p}/energy_active_import_register")[-2:] == ["1500", "2500"]
    # State topics are retained: a late subscriber sees them.
    late = MqttRecorder(gateway.settings.mqtt_port, f"{p}/#")
    try:
        assert await late.wait_for(f"{p}/meter_stop", "6000") == "6000"
        assert all(m.retain for m in late.snapshot())
    finally:
        late.close()


async def test_bridge_state_online_and_last_will(gateway, recorder, basepath):
    await recorder.wait_for(f"{basepath}/bridge/state", "online")


async def test_every_answer_is_schema_valid(gateway, url):
    # The ocpp library's client validates every CALLRESULT against the schemas
    # and raises if one is invalid: each charger-initiated action once.
    st = await connect_station(url, "CPS")
    try:
        await st.cp.call(call.DiagnosticsStatusNotification(status="Uploaded"))
        await st.cp.call(call.FirmwareStatusNotification(status="Installed"))
        await st.cp.call(call.Authorize(id_tag="x"))
        r = await st.cp.call(call.StopTransaction(meter_stop=5, timestamp=TS, transaction_id=999))
        assert r.id_tag_info is None
    finally:
        await st.close()


async def test_meter_value_defaults(gateway, url, recorder, basepath):
    st = await connect_station(url, "CPD")
    try:
        # No measurand → Energy.Active.Import.Register; no unit → Wh.
        await st.cp.call(call.MeterValues(connector_id=1, meter_value=[
            {"timestamp": TS, "sampledValue": [{"value": "42.0"}]}]))
        await recorder.wait_for(f"{basepath}/CPD/state/energy_active_import_register", "42")
    finally:
        await st.close()


async def test_two_stations_at_once(gateway, url, recorder, basepath):
    a, b = await connect_station(url, "A1"), await connect_station(url, "B2")
    try:
        await asyncio.gather(
            a.cp.call(call.StatusNotification(connector_id=1, error_code="NoError",
                                              status="Charging")),
            b.cp.call(call.StatusNotification(connector_id=1, error_code="NoError",
                                              status="Available")),
        )
        await recorder.wait_for(f"{basepath}/A1/state/status", "Charging")
        await recorder.wait_for(f"{basepath}/B2/state/status", "Available")
    finally:
        await a.close()
        await b.close()


async def test_two_connector_station(gateway, url, recorder, basepath):
    st = await connect_station(url, "DUO")
    p = f"{basepath}/DUO/state"
    try:
        for connector, status in ((0, "Available"), (1, "Charging"), (2, "SuspendedEV")):
            await st.cp.call(call.StatusNotification(connector_id=connector,
                                                     error_code="NoError", status=status))
        tx1 = (await st.cp.call(call.StartTransaction(connector_id=1, id_tag="a",
                                                      meter_start=0, timestamp=TS))).transaction_id
        tx2 = (await st.cp.call(call.StartTransaction(connector_id=2, id_tag="b",
                                                      meter_start=0, timestamp=TS))).transaction_id
        assert tx1 != tx2
        await st.cp.call(call.MeterValues(connector_id=1, transaction_id=tx1, meter_value=[
            {"timestamp": TS, "sampledValue": [{"value": "3000", "measurand":
                                                "Power.Active.Import", "unit": "W"}]}]))
        await st.cp.call(call.MeterValues(connector_id=2, transaction_id=tx2, meter_value=[
            {"timestamp": TS, "sampledValue": [{"value": "7000", "measurand":
                                                "Power.Active.Import", "unit": "W"}]}]))
        await recorder.wait_for(f"{p}/connector/1/power_active_import", "3000")
        await recorder.wait_for(f"{p}/connector/2/power_active_import", "7000")
        await recorder.wait_for(f"{p}/connector/2/status", "SuspendedEV")
        await recorder.wait_for(f"{p}/connector/0/status", "Available")
        await recorder.wait_for(f"{p}/connector/2/transaction_id", str(tx2))
    finally:
        await st.close()


async def test_transaction_ids_survive_restart(settings_factory, recorder, basepath):
    settings = settings_factory()
    async with Gateway(settings) as gw:
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "RS")
        start = await st.cp.call(call.StartTransaction(connector_id=1, id_tag="t",
                                                       meter_start=100, timestamp=TS))
        await st.close()
    async with Gateway(settings) as gw:
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "RS")
        try:
            stop = await st.cp.call(call.StopTransaction(
                meter_stop=900, timestamp=TS, transaction_id=start.transaction_id))
            assert stop is not None
            await recorder.wait_for(f"{basepath}/RS/state/session_energy", "800")
            again = await st.cp.call(call.StartTransaction(connector_id=1, id_tag="t",
                                                           meter_start=900, timestamp=TS))
            assert again.transaction_id > start.transaction_id
        finally:
            await st.close()


@pytest.mark.parametrize(
    "path",
    ["/a%2Fb", "/a+b", "/a%23b", "/%00x", "/a%0Ab", "/" + "x" * 49, "/bridge"],
)
async def test_hostile_station_ids_are_refused(gateway, url, path):
    with pytest.raises(websockets.InvalidStatus) as err:
        await websockets.connect(url + path, subprotocols=["ocpp1.6"])
    assert 400 <= err.value.response.status_code < 500
    # and the gateway keeps serving
    st = await connect_station(url, "AfterHostile")
    try:
        assert (await st.cp.call(call.Heartbeat())).current_time
    finally:
        await st.close()


async def test_reconnect_replaces_old_session(gateway, url, recorder, basepath):
    first = await connect_station(url, "RE")
    await recorder.wait_for(f"{basepath}/RE/state/connection_state", "CONNECTED")
    second = await connect_station(url, "RE")
    try:
        await asyncio.wait_for(first.ws.wait_closed(), 5)
        assert (await second.cp.call(call.Heartbeat())).current_time
        assert recorder.values(f"{basepath}/RE/state/connection_state")[-1] == "CONNECTED"
        assert gateway.server.sessions["RE"].ws is not None
    finally:
        await first.close()
        await second.close()


async def test_percent_decoded_and_query_station(gateway, url, recorder, basepath):
    ws = await websockets.connect(url + "/?station=Q1", subprotocols=["ocpp1.6"])
    ws2 = await websockets.connect(url + "/My%20Charger", subprotocols=["ocpp1.6"])
    try:
        await recorder.wait_for(f"{basepath}/Q1/state/connection_state", "CONNECTED")
        await recorder.wait_for(f"{basepath}/My Charger/state/connection_state", "CONNECTED")
    finally:
        await ws.close()
        await ws2.close()


async def test_expected_charge_points_published_disconnected(settings_factory, recorder, basepath):
    async with Gateway(settings_factory(expected_charge_points=["E1", "E2"])):
        await recorder.wait_for(f"{basepath}/E1/state/connection_state", "DISCONNECTED")
        await recorder.wait_for(f"{basepath}/E2/state/connection_state", "DISCONNECTED")


async def test_without_station_name_uses_basepath(settings_factory, recorder, basepath):
    async with Gateway(settings_factory(mqtt_usestationname=False)) as gw:
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "Solo")
        try:
            await st.cp.call(call.StatusNotification(connector_id=1, error_code="NoError",
                                                     status="Available"))
            await recorder.wait_for(f"{basepath}/state/status", "Available")
        finally:
            await st.close()


async def test_authorized_tag_list(settings_factory):
    async with Gateway(settings_factory(authorized_tag_id_list=["good"])) as gw:
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "AU")
        try:
            ok = await st.cp.call(call.Authorize(id_tag="good"))
            bad = await st.cp.call(call.Authorize(id_tag="evil"))
            start = await st.cp.call(call.StartTransaction(connector_id=1, id_tag="evil",
                                                           meter_start=0, timestamp=TS))
            assert ok.id_tag_info["status"] == "Accepted"
            assert bad.id_tag_info["status"] == "Invalid"
            assert start.id_tag_info["status"] == "Invalid"
        finally:
            await st.close()


async def test_unchanged_values_can_be_skipped(settings_factory, recorder, basepath):
    async with Gateway(settings_factory(mqtt_publish_unchanged=False)) as gw:
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "Quiet")
        p = f"{basepath}/Quiet/state"
        try:
            for wh in ("100", "100", "200"):
                await st.cp.call(call.MeterValues(connector_id=1, meter_value=[
                    {"timestamp": TS, "sampledValue": [
                        {"value": wh, "unit": "Wh"},
                        {"value": "230", "measurand": "Voltage", "unit": "V"}]}]))
            await recorder.wait_for(f"{p}/energy_active_import_register", "200")
            assert recorder.values(f"{p}/energy_active_import_register") == ["100", "200"]
            assert recorder.values(f"{p}/voltage") == ["230"]
        finally:
            await st.close()


async def test_messages_of_one_tick_arrive_in_the_order_they_were_published(
        gateway, recorder, basepath):
    # Essential messages wait for the tick's outbox write; a non-essential one published
    # after them in the same tick must not overtake them (a reading's energy register
    # arrived after its meter_timestamp, and consumers group by that timestamp).
    await recorder.wait_for(f"{basepath}/bridge/state", "online")
    topics = [f"{basepath}/order/{n}" for n in range(6)]
    for n, topic in enumerate(topics):
        gateway.publisher.publish(topic, str(n), retain=False, essential=n in (1, 2, 4))
    await recorder.wait_for(topics[-1], "5")
    await asyncio.gather(*(recorder.wait_for(t) for t in topics))
    arrived = [m.topic for m in recorder.snapshot() if m.topic in topics]
    assert arrived == topics


@pytest.mark.parametrize(("batch_ms", "rows"), [(0, {5}), (100, {1, 2})])
async def test_mqtt_batch_ms_groups_ticks_into_one_outbox_write(
        settings_factory, recorder, basepath, batch_ms, rows):
    # Group commit: the first flush goes at once, the ones after it within MQTT_BATCH_MS
    # wait for each other (one SQLite commit, one socket write); 0 flushes every tick.
    # (One row, not two, if the gateway's own start-up messages flushed just before.)
    async with Gateway(settings_factory(mqtt_batch_ms=batch_ms)) as gw:
        assert await gw.mqtt.wait_connected(10)
        await recorder.wait_for(f"{basepath}/bridge/state", "online")
        first = gw.publisher.outbox._next_seq
        for n in range(5):
            gw.publisher.publish(f"{basepath}/batch/{n}", str(n), retain=False, essential=True)
            await asyncio.sleep(0)  # the next event-loop tick
        await gw.publisher.durable()
        assert gw.publisher.outbox._next_seq - first in rows
        await asyncio.gather(*(recorder.wait_for(f"{basepath}/batch/{n}") for n in range(5)))


async def test_a_flush_every_recent_charger_waits_for_goes_at_once(settings_factory, recorder,
                                                                    basepath):
    # MQTT_BATCH_MS waits for company; a charger alone waits for its answer and sends
    # nothing meanwhile, so waiting for it would only slow it down (a closed loop of
    # MeterValues ran at one per window).
    async with Gateway(settings_factory(mqtt_batch_ms=100)) as gw:
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "Alone")
        try:
            await recorder.wait_for(f"{basepath}/Alone/state/connection_state", "CONNECTED")
            before = gw.publisher.batched_flushes
            for n in range(10):
                await st.cp.call(call.MeterValues(connector_id=1, meter_value=[
                    {"timestamp": TS, "sampledValue": [{"value": str(n), "unit": "Wh"}]}]))
            assert gw.publisher.batched_flushes == before
            await recorder.wait_for(f"{basepath}/Alone/state/energy_active_import_register", "9")
        finally:
            await st.close()
