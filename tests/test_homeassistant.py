"""Issue 6: Home Assistant discovery and the JSON state document, end to end.

A real charge point (the `ocpp` library) talks to a real gateway that
publishes to a real Mosquitto; the tests read the broker like Home Assistant
would and press buttons the way Home Assistant would (publishing the
discovered payloads to the discovered command topics).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import orjson
from ocpp.v16 import call
from ocpp.v16.enums import ChargePointStatus

from ocpp2mqtt import commands
from ocpp2mqtt.gateway import Gateway
from tests.helpers import MqttRecorder, connect_station, three_phase_meter_value

TS = "2026-11-25T10:00:00Z"

# --- Home Assistant's documented discovery schema --------------------------------
# Device-based discovery, shared (root) options:
#   https://www.home-assistant.io/integrations/mqtt/#device-discovery-payload
ROOT_KEYS = {
    "device", "origin", "components", "availability", "availability_topic",
    "availability_mode", "availability_template", "payload_available",
    "payload_not_available", "command_topic", "state_topic", "qos", "encoding",
}
# Origin info: https://www.home-assistant.io/integrations/mqtt/#adding-information-about-the-origin-of-a-discovery-message
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
# The `device` map, identical on every platform page, e.g.
#   https://www.home-assistant.io/integrations/sensor.mqtt/#device
DEVICE_KEYS = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model",
    "model_id", "name", "serial_number", "suggested_area", "sw_version", "via_device",
}
# The `availability` list items: https://www.home-assistant.io/integrations/mqtt/#using-availability-topics
AVAILABILITY_KEYS = {"payload_available", "payload_not_available", "topic", "value_template"}
_ENTITY = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "device", "enabled_by_default", "encoding", "entity_category", "entity_picture", "icon",
    "json_attributes_template", "json_attributes_topic", "name", "object_id",
    "payload_available", "payload_not_available", "platform", "qos", "unique_id",
}
# Configuration variables of each platform page.
PLATFORM_KEYS = {
    # https://www.home-assistant.io/integrations/sensor.mqtt/
    "sensor": _ENTITY | {
        "device_class", "expire_after", "force_update", "last_reset_value_template", "options",
        "suggested_display_precision", "state_class", "state_topic", "unit_of_measurement",
        "value_template"},
    # https://www.home-assistant.io/integrations/binary_sensor.mqtt/
    "binary_sensor": _ENTITY | {
        "device_class", "expire_after", "force_update", "off_delay", "payload_off", "payload_on",
        "state_topic", "value_template"},
    # https://www.home-assistant.io/integrations/button.mqtt/
    "button": _ENTITY | {
        "command_template", "command_topic", "device_class", "payload_press", "retain"},
    # https://www.home-assistant.io/integrations/switch.mqtt/
    "switch": _ENTITY | {
        "command_template", "command_topic", "device_class", "optimistic", "payload_off",
        "payload_on", "retain", "state_off", "state_on", "state_topic", "value_template"},
    # https://www.home-assistant.io/integrations/number.mqtt/
    "number": _ENTITY | {
        "command_template", "command_topic", "device_class", "max", "min", "mode", "optimistic",
        "payload_reset", "retain", "state_topic", "step", "unit_of_measurement",
        "value_template"},
    # https://www.home-assistant.io/integrations/select.mqtt/
    "select": _ENTITY | {
        "command_template", "command_topic", "optimistic", "options", "retain", "state_topic",
        "value_template"},
}
STATE_CLASSES = {"measurement", "total", "total_increasing"}  # sensor.mqtt → state_class
STATUSES = {s.value for s in ChargePointStatus}


def discovery_prefix(basepath: str) -> str:
    # Under the test's unique root, so parallel tests on one broker never meet
    # and the `recorder` fixture (`<root>/#`) sees discovery too.
    return f"{basepath.split('/')[0]}/homeassistant"


def ha_gateway(settings_factory, basepath: str) -> Gateway:
    return Gateway(settings_factory(homeassistant_discovery=True,
                                    homeassistant_discovery_prefix=discovery_prefix(basepath)))


async def wait_json(recorder: MqttRecorder, topic: str, predicate: Callable[[dict], bool],
                    timeout: float = 10.0, since: int = 0) -> dict:
    """Poll until a JSON message on `topic` (from the `since`-th on) satisfies `predicate`."""
    deadline = time.monotonic() + timeout
    while True:
        for text in reversed(recorder.values(topic)[since:]):
            if text:
                doc = orjson.loads(text)
                if predicate(doc):
                    return doc
        if time.monotonic() > deadline:
            raise AssertionError(f"no matching document on {topic}; got "
                                 f"{recorder.values(topic)[-1:]!r}")
        await asyncio.sleep(0.01)


async def retained(port: int, topic: str) -> dict:
    """What a subscriber arriving now gets on `topic`: it must be a retained message."""
    late = MqttRecorder(port, topic)
    try:
        await late.wait_for(topic)
        message = late.snapshot()[-1]
        assert message.retain, topic
        return orjson.loads(message.payload)
    finally:
        late.close()


def check_schema(doc: dict) -> None:
    """Every key is one Home Assistant documents, with documented values."""
    assert set(doc) <= ROOT_KEYS, set(doc) - ROOT_KEYS
    assert set(doc["origin"]) <= ORIGIN_KEYS and doc["origin"]["name"] == "ocpp2mqtt"
    assert set(doc["device"]) <= DEVICE_KEYS, set(doc["device"]) - DEVICE_KEYS
    assert doc["device"]["identifiers"] and doc["device"]["name"]
    assert doc["availability_mode"] in ("all", "any", "latest")
    unique_ids = set()
    for cid, config in doc["components"].items():
        assert cid.replace("_", "").replace("-", "").isalnum(), cid
        platform = config["platform"]
        allowed = PLATFORM_KEYS[platform]
        assert set(config) <= allowed, (cid, set(config) - allowed)
        assert config["unique_id"] not in unique_ids  # required and unique
        unique_ids.add(config["unique_id"])
        for availability in config.get("availability", doc["availability"]):
            assert set(availability) <= AVAILABILITY_KEYS and availability["topic"]
        if "state_class" in config:
            assert config["state_class"] in STATE_CLASSES
        if config.get("device_class") == "energy" and "state_class" in config:
            assert config["state_class"] in ("total", "total_increasing")
        if config.get("device_class") == "enum":  # options excludes unit and state_class
            assert config["options"] and "unit_of_measurement" not in config
            assert "state_class" not in config
        if platform in ("sensor", "binary_sensor") and "entity_category" in config:
            assert config["entity_category"] == "diagnostic"
        if platform in ("button", "switch", "number", "select"):
            assert config["command_topic"]
        if platform == "number":
            assert config.get("mode", "auto") in ("auto", "box", "slider")


async def check_state_topics(recorder: MqttRecorder, doc: dict) -> None:
    """Every state and availability topic carries a value Home Assistant can use."""
    for availability in doc["availability"]:
        value = await recorder.wait_for(availability["topic"])
        assert value == availability.get("payload_available", "online")
    for cid, config in doc["components"].items():
        if "state_topic" not in config:
            continue
        value = await recorder.wait_for(config["state_topic"])
        device_class = config.get("device_class")
        if config["platform"] == "binary_sensor":
            assert value in (config["payload_on"], config["payload_off"]), cid
        elif config["platform"] in ("switch", "select"):
            assert value in STATUSES, cid  # value_template maps the OCPP status
        elif device_class == "enum":
            assert value in config["options"], (cid, value)
        elif device_class == "timestamp":
            assert datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo, cid
        elif "unit_of_measurement" in config or "state_class" in config:
            float(value)
        else:
            assert value, cid


def render(template: str, value: object) -> str:
    """Render a command_template the way Home Assistant does, for `{{ value }}` only."""
    assert template.count("{{") == 1 and "{{ value }}" in template, template
    return template.replace("{{ value }}", str(value))


async def boot(st, **kw) -> None:
    await st.cp.call(call.BootNotification(
        charge_point_model=kw.get("model", "Wallbox X"), charge_point_vendor="ACME",
        firmware_version="1.2.3", charge_point_serial_number="SN42"))


async def test_discovery_appears_with_data_and_controls_reach_the_charger(
    settings_factory, recorder, basepath, broker
):
    dp = discovery_prefix(basepath)
    topic = f"{dp}/device/ocpp2mqtt/HA1/config"
    prefix = f"{basepath}/HA1"
    async with ha_gateway(settings_factory, basepath) as gw:
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "HA1")
        try:
            # Reported before the BootNotification: the status entity, no controls.
            await st.cp.call(call.StatusNotification(connector_id=1, error_code="NoError",
                                                     status="Available"))
            doc = await wait_json(recorder, topic, lambda d: "status" in d["components"])
            assert "restart" not in doc["components"]
            assert "voltage_l2_n" not in doc["components"]
            await boot(st)
            doc = await wait_json(recorder, topic, lambda d: "restart" in d["components"])
            assert doc["device"]["manufacturer"] == "ACME"
            assert doc["device"]["model"] == "Wallbox X"
            assert doc["device"]["sw_version"] == "1.2.3"
            assert doc["device"]["serial_number"] == "SN42"
            assert "voltage_l2_n" not in doc["components"]  # no voltage reported yet
            start = await st.cp.call(call.StartTransaction(connector_id=1, id_tag="t",
                                                           meter_start=0, timestamp=TS))
            tx = start.transaction_id
            await st.cp.call(call.MeterValues(connector_id=1, transaction_id=tx,
                                              meter_value=[three_phase_meter_value(TS)]))
            doc = await wait_json(recorder, topic,
                                  lambda d: "voltage_l2_n" in d["components"])
            assert await retained(broker.port, topic) == doc
            check_schema(doc)
            await check_state_topics(recorder, doc)

            comps = doc["components"]
            assert doc["availability_mode"] == "all"
            assert {a["topic"] for a in doc["availability"]} == {
                gw.topics.bridge_state, f"{prefix}/state/connection_state"}
            assert comps["voltage_l2_n"]["state_topic"] == f"{prefix}/state/voltage/l2_n"
            energy = comps["energy_active_import_register"]
            assert (energy["device_class"], energy["state_class"],
                    energy["unit_of_measurement"]) == ("energy", "total_increasing", "Wh")
            assert comps["power_active_import"]["unit_of_measurement"] == "W"
            assert comps["current_import_l3"]["device_class"] == "current"
            assert comps["connection_state"]["device_class"] == "connectivity"
            assert comps["connection_state"]["availability"] == [{"topic": gw.topics.bridge_state}]
            assert comps["last_seen"]["device_class"] == "timestamp"
            for cid in ("status", "error_code", "transaction_id"):
                assert cid in comps
            # unique ids are stable names, not counters
            assert comps["status"]["unique_id"] == "ocpp2mqtt_HA1_status"

            # Controls: publish exactly what Home Assistant would publish.
            await gw.mqtt.wait_subscribed(f"{prefix}/cmd")
            restart = comps["restart"]
            recorder.publish(restart["command_topic"], restart["payload_press"])
            assert (await st.cp.wait_call("Reset")).payload["type"] == "Soft"

            unlock = comps["unlock_1"]
            recorder.publish(unlock["command_topic"], unlock["payload_press"])
            assert (await st.cp.wait_call("UnlockConnector")).payload["connector_id"] == 1

            limit = comps["current_limit"]
            assert limit["unit_of_measurement"] == "A"
            recorder.publish(limit["command_topic"], render(limit["command_template"], 16))
            profile = (await st.cp.wait_call("SetChargingProfile")).payload
            period = profile["cs_charging_profiles"]["charging_schedule"]
            assert period["charging_rate_unit"] == "A"
            assert period["charging_schedule_period"][0]["limit"] == 16

            availability = comps["availability"]
            assert availability["options"] == ["Operative", "Inoperative"]
            recorder.publish(availability["command_topic"],
                             render(availability["command_template"], "Inoperative"))
            change = (await st.cp.wait_call("ChangeAvailability")).payload
            assert change == {"connector_id": 0, "type": "Inoperative"}

            charging = comps["charging_1"]
            assert charging["state_topic"] == f"{prefix}/state/status"
            recorder.publish(charging["command_topic"], charging["payload_on"])
            assert (await st.cp.wait_call("RemoteStartTransaction")).payload["connector_id"] == 1
            recorder.publish(charging["command_topic"], charging["payload_off"])
            stop = await st.cp.wait_call("RemoteStopTransaction")
            assert stop.payload["transaction_id"] == tx

            # A measurand seen for the first time adds its entity.
            await st.cp.call(call.MeterValues(connector_id=1, meter_value=[
                {"timestamp": TS, "sampledValue": [
                    {"value": "55", "measurand": "SoC", "unit": "Percent"}]}]))
            doc = await wait_json(recorder, topic, lambda d: "soc" in d["components"])
            assert doc["components"]["soc"]["unit_of_measurement"] == "%"
            assert doc["components"]["soc"]["device_class"] == "battery"
            check_schema(doc)
        finally:
            await st.close()


async def test_readings_of_a_known_shape_do_not_republish_discovery(
    settings_factory, recorder, basepath
):
    topic = f"{discovery_prefix(basepath)}/device/ocpp2mqtt/HOT/config"
    async with ha_gateway(settings_factory, basepath) as gw:
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "HOT")
        try:
            await boot(st)
            await st.cp.call(call.MeterValues(connector_id=1, meter_value=[
                three_phase_meter_value(TS, 1000.0)]))
            await wait_json(recorder, topic, lambda d: "voltage" in d["components"])
            sent = gw_extension(gw).published
            for i in range(20):
                await st.cp.call(call.MeterValues(connector_id=1, meter_value=[
                    three_phase_meter_value(TS, 1000.0 * (i + 2))]))
            await recorder.wait_for(f"{basepath}/HOT/state/energy_active_import_register",
                                    "21000")
            assert gw_extension(gw).published == sent
        finally:
            await st.close()


def gw_extension(gw: Gateway):
    from ocpp2mqtt.extensions.homeassistant import HomeAssistantExtension

    return gw.extension(HomeAssistantExtension)


async def test_home_assistant_birth_republishes_discovery(settings_factory, recorder, basepath):
    dp = discovery_prefix(basepath)
    topic = f"{dp}/device/ocpp2mqtt/BIRTH/config"
    async with ha_gateway(settings_factory, basepath) as gw:
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "BIRTH")
        try:
            await boot(st)
            first = await wait_json(recorder, topic, lambda d: "restart" in d["components"])
            count = len(recorder.values(topic))
            await gw.mqtt.wait_subscribed(f"{dp}/status")
            recorder.publish(f"{dp}/status", "offline")
            recorder.publish(f"{dp}/status", "online")
            values = await recorder.wait_count(topic, count + 1)
            assert orjson.loads(values[-1]) == first
        finally:
            await st.close()


async def test_remove_station(settings_factory, recorder, basepath, broker):
    dp = discovery_prefix(basepath)
    topic = f"{dp}/device/ocpp2mqtt/RM1/config"
    request = f"{basepath}/bridge/request/remove_station"
    response = f"{basepath}/bridge/response/remove_station"
    async with ha_gateway(settings_factory, basepath) as gw:
        url = f"ws://127.0.0.1:{gw.port}"
        st = await connect_station(url, "RM1")
        try:
            await boot(st)
            doc = await wait_json(recorder, topic, lambda d: "restart" in d["components"])
            await gw.mqtt.wait_subscribed(gw.topics.bridge_requests)
            recorder.publish(request, orjson.dumps({"station": "RM1", "id": "r-1"}))
            answer = await wait_json(recorder, response, lambda d: d["id"] == "r-1")
            assert answer["status"] == "ok" and answer["error"] is None
            assert answer["data"]["station"] == "RM1"
            assert answer["data"]["entities"] == len(doc["components"])
            await recorder.wait_for(topic, "")  # the empty config removes the device

            # Nothing retained is left: a new subscriber gets every retained
            # message before a marker published after it subscribed.
            root = basepath.split("/")[0]
            late = MqttRecorder(broker.port, f"{root}/#")
            try:
                marker = f"{root}/marker/{uuid.uuid4().hex}"
                late.publish(marker, "x")
                await late.wait_for(marker, "x")
                assert f"{basepath}/RM1/state/connection_state" in late.last()
                assert topic not in late.last()
            finally:
                late.close()

            # An unknown station is an error, not a silent success.
            recorder.publish(request, orjson.dumps({"station": "nope", "id": 2}))
            answer = await wait_json(recorder, response, lambda d: d["id"] == 2)
            assert answer["status"] == "error" and "nope" in answer["error"]
            recorder.publish(request, b"[1, 2]")
            answer = await wait_json(recorder, response,
                                     lambda d: d["status"] == "error" and d["id"] is None)
            assert "station" in answer["error"]

            # Readings of the removed (still connected) station do not bring it back ...
            before = gw_extension(gw).published
            await st.cp.call(call.Heartbeat())
            await recorder.wait_for(f"{basepath}/RM1/state/heartbeat")
            assert gw_extension(gw).published == before
        finally:
            await st.close()
        # ... connecting again does.
        removed_at = len(recorder.values(topic))
        st = await connect_station(url, "RM1")
        try:
            doc = await wait_json(recorder, topic,
                                  lambda d: "connection_state" in d["components"],
                                  since=removed_at)
            assert "restart" not in doc["components"]  # no BootNotification since
        finally:
            await st.close()


async def test_restart_keeps_entities(settings_factory, recorder, basepath):
    """A gateway restart must never publish a smaller document: HA would delete entities."""
    topic = f"{discovery_prefix(basepath)}/device/ocpp2mqtt/RS1/config"
    settings = settings_factory(homeassistant_discovery=True,
                                homeassistant_discovery_prefix=discovery_prefix(basepath))
    async with Gateway(settings) as gw:
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "RS1")
        await boot(st)
        await st.cp.call(call.StatusNotification(connector_id=1, error_code="NoError",
                                                 status="Available"))
        before = await wait_json(recorder, topic, lambda d: "charging_1" in d["components"])
        await st.close()
    async with Gateway(settings) as gw:
        # The charger reconnects without a BootNotification and reports something new.
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "RS1")
        try:
            await st.cp.call(call.MeterValues(connector_id=1, meter_value=[
                {"timestamp": TS, "sampledValue": [{"value": "21.5", "measurand": "Temperature",
                                                    "unit": "Celsius"}]}]))
            after = await wait_json(recorder, topic, lambda d: "temperature" in d["components"])
            assert set(before["components"]) <= set(after["components"])
            assert after["device"]["model"] == "Wallbox X"
            assert after["components"]["temperature"]["unit_of_measurement"] == "°C"
            check_schema(after)
        finally:
            await st.close()


async def test_two_connectors_get_entities_and_controls_each(
    settings_factory, recorder, basepath
):
    topic = f"{discovery_prefix(basepath)}/device/ocpp2mqtt/DUO/config"
    prefix = f"{basepath}/DUO"
    async with ha_gateway(settings_factory, basepath) as gw:
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "DUO")
        try:
            await boot(st)
            for connector, status in ((1, "Available"), (2, "Charging"), (1, "Preparing")):
                await st.cp.call(call.StatusNotification(connector_id=connector,
                                                         error_code="NoError", status=status))
            doc = await wait_json(recorder, topic,
                                  lambda d: "charging_2" in d["components"]
                                  and "connector_1_status" in d["components"])
            check_schema(doc)
            await check_state_topics(recorder, doc)
            comps = doc["components"]
            for cid in ("connector_1_status", "connector_2_status", "connector_2_error_code",
                        "unlock_1", "unlock_2", "charging_1"):
                assert cid in comps, cid
            assert comps["charging_2"]["state_topic"] == f"{prefix}/state/connector/2/status"
            assert comps["unlock_2"]["name"] == "Connector 2 Unlock"
            await gw.mqtt.wait_subscribed(f"{prefix}/cmd")
            recorder.publish(comps["unlock_2"]["command_topic"], comps["unlock_2"]["payload_press"])
            assert (await st.cp.wait_call("UnlockConnector")).payload["connector_id"] == 2
        finally:
            await st.close()


async def test_json_state_document(gateway, url, recorder, basepath, broker):
    topic = f"{basepath}/DOC1/state"
    st = await connect_station(url, "DOC1")
    try:
        await boot(st)
        await st.cp.call(call.StatusNotification(connector_id=0, error_code="NoError",
                                                 status="Available"))
        await st.cp.call(call.StatusNotification(connector_id=1, error_code="NoError",
                                                 status="Charging"))
        tx = (await st.cp.call(call.StartTransaction(connector_id=1, id_tag="tag1",
                                                     meter_start=1000,
                                                     timestamp=TS))).transaction_id
        # Two readings in one frame: one document, carrying the second one.
        await st.cp.call(call.MeterValues(connector_id=1, transaction_id=tx, meter_value=[
            three_phase_meter_value(TS, 1500.0), three_phase_meter_value(TS, 2500.0)]))
        doc = await wait_json(recorder, topic, lambda d: "energy_active_import_register" in d)
        assert not any(b'"value":1500' in m.payload for m in recorder.snapshot()
                       if m.topic == topic)
        assert doc["station"] == "DOC1"
        assert doc["connection_state"] == "CONNECTED"
        assert doc["last_seen"].startswith("20")
        assert doc["charge_point_vendor"] == "ACME" and doc["firmware_version"] == "1.2.3"
        assert doc["status"] == "Charging" and doc["error_code"] == "NoError"
        assert doc["connector_id"] == 1 and doc["transaction_id"] == tx
        assert doc["connectors"]["0"]["status"] == "Available"
        assert doc["meter_timestamp"] == TS
        voltage = doc["voltage"]
        assert voltage["value"] == 231.2 and voltage["unit"] == "V"
        assert voltage["phases"] == {"l1_n": 230.1, "l2_n": 231.2, "l3_n": 232.3}
        assert voltage["context"] == "Sample.Periodic" and voltage["timestamp"] == TS
        assert voltage["measurand"] == "Voltage"
        assert doc["current_import"]["phases"]["l3"] == 18.5
        assert doc["power_active_import"] == {
            "value": 11040, "unit": "W", "measurand": "Power.Active.Import",
            "context": "Sample.Periodic", "timestamp": TS}
        assert doc["energy_active_import_register"]["value"] == 2500
        assert doc["energy_active_import_register"]["unit"] == "Wh"

        # Several events from one frame (StopTransaction with transactionData → a
        # reading and the stop) give exactly one new document.
        count = len(recorder.values(topic))
        await st.cp.call(call.StopTransaction(
            meter_stop=6000, timestamp=TS, transaction_id=tx, reason="EVDisconnected",
            transaction_data=[{"timestamp": TS, "sampledValue": [
                {"value": "6000", "context": "Transaction.End", "unit": "Wh"}]}]))
        doc = await wait_json(recorder, topic, lambda d: "session_energy" in d)
        assert len(recorder.values(topic)) == count + 1
        assert doc["session_energy"] == 5000 and doc["transaction_id"] is None
        assert doc["last_transaction_id"] == tx
        assert doc["energy_active_import_register"]["value"] == 6000
        assert doc["energy_active_import_register"]["context"] == "Transaction.End"

        # A second connector: per-connector values are nested under "connectors".
        await st.cp.call(call.StatusNotification(connector_id=2, error_code="NoError",
                                                 status="SuspendedEV"))
        await st.cp.call(call.MeterValues(connector_id=2, meter_value=[
            {"timestamp": TS, "sampledValue": [
                {"value": "7000", "measurand": "Power.Active.Import", "unit": "W"}]}]))
        doc = await wait_json(recorder, topic, lambda d: "power_active_import"
                              in d.get("connectors", {}).get("2", {}))
        assert doc["connectors"]["2"]["status"] == "SuspendedEV"
        assert doc["connectors"]["2"]["power_active_import"]["value"] == 7000
    finally:
        await st.close()
    doc = await wait_json(recorder, topic, lambda d: d["connection_state"] == "DISCONNECTED")
    assert doc["last_disconnected"].startswith("20")
    assert await retained(broker.port, topic) == doc


def test_documented_examples_are_valid():
    """JSON in the integration guides parses; the discovery excerpt passes the schema check."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    found = {}
    for name in ("homeassistant.md", "node-red.md"):
        text = (docs / name).read_text()
        blocks = [b.split("```", 1)[0] for b in text.split("```json\n")[1:]]
        assert blocks, name
        found[name] = [orjson.loads(b) for b in blocks]
    discovery = next(d for d in found["homeassistant.md"] if "components" in d)
    check_schema(discovery)
    flow = next(d for d in found["node-red.md"] if isinstance(d, list))
    topics = {n["topic"] for n in flow if n["type"] in ("mqtt in", "mqtt out")}
    assert {"ocpp/CP1/state", "ocpp/CP1/cmd", "ocpp/CP1/cmd_result"} <= topics
    facts = commands.StationFacts(open_transactions={1: 5})
    for node in flow:
        if node["type"] == "inject":  # the buttons send commands the gateway accepts
            assert commands.plan(node["payload"].encode(), facts).ocpp_action


async def test_retained_bridge_request_runs_once_and_is_cleared(settings_factory, recorder,
                                                               basepath, broker):
    request = f"{basepath}/bridge/request/remove_station"
    response = f"{basepath}/bridge/response/remove_station"
    async with ha_gateway(settings_factory, basepath) as gw:
        await gw.mqtt.wait_subscribed(gw.topics.bridge_requests)
        recorder.publish(request, orjson.dumps({"station": "NOPE", "id": "ret-1"}), retain=True)
        answer = orjson.loads(await recorder.wait_for(response))
        assert answer["id"] == "ret-1"
    # the broker no longer holds it: a late subscriber sees no retained request
    late = MqttRecorder(broker.port, f"{basepath}/bridge/#")
    try:
        late.publish(f"{basepath}/bridge/probe", b"x")
        await late.wait_for(f"{basepath}/bridge/probe", "x")
        assert [m for m in late.snapshot() if m.topic == request and m.payload] == []
    finally:
        late.close()
    assert len(recorder.values(response)) == 1
