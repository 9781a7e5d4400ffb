"""Issue 2: MQTT over the original's three transports: tcp (everywhere else), websockets, unix."""

from __future__ import annotations

import pytest
from ocpp.v16 import call

from ocpp2mqtt.gateway import Gateway
from tests.conftest import make_settings
from tests.helpers import Mosquitto, MqttRecorder, connect_station, free_port


@pytest.mark.parametrize("transport", ["websockets", "unix"])
async def test_mqtt_transport(transport, tmp_path, basepath):
    if transport == "websockets":
        ws_port = free_port()
        extra = f"listener {ws_port} 127.0.0.1\nprotocol websockets\n"
        overrides = dict(mqtt_hostname="127.0.0.1", mqtt_port=ws_port,
                         mqtt_websocket_path="/mqtt")
    else:
        sock = tmp_path / "mosquitto.sock"
        extra = f"listener 0 {sock}\n"
        overrides = dict(mqtt_hostname=str(sock))
    mosq = Mosquitto(extra_conf=extra).start()
    rec = MqttRecorder(mosq.port, f"{basepath}/#")  # the plain TCP listener, to observe
    try:
        settings = make_settings(mosq.port, basepath, tmp_path / "data", http_enabled=False,
                                 homeassistant_discovery=False, mqtt_transport=transport,
                                 **overrides)
        async with Gateway(settings) as gw:
            assert await gw.mqtt.wait_connected(10)
            st = await connect_station(f"ws://127.0.0.1:{gw.port}", "TR")
            try:
                await st.cp.call(call.StatusNotification(connector_id=1, error_code="NoError",
                                                         status="Charging"))
                await rec.wait_for(f"{basepath}/TR/state/status", "Charging")
            finally:
                await st.close()
    finally:
        rec.close()
        mosq.close()
