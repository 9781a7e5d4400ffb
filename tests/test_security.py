"""Issue 4: charger authentication (security profiles 1 and 2), allow-list, MQTT over TLS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import websockets
from ocpp.v16 import call

from ocpp2mqtt.gateway import Gateway
from tests.conftest import make_settings
from tests.helpers import (
    ChargePoint,
    Mosquitto,
    MqttRecorder,
    connect_station,
    free_port,
    make_cert,
    mosquitto_binary,
)


@pytest.fixture
async def auth_gateway(settings_factory, tmp_path):
    pwfile = tmp_path / "passwords.txt"
    pwfile.write_text("# station:password\nFILE1:from-file\n")
    settings = settings_factory(ocpp_basic_auth={"CP1": "s3cret"},
                                ocpp_basic_auth_file=str(pwfile))
    async with Gateway(settings) as gw:
        yield gw


@pytest.mark.parametrize(("userinfo", "station"), [("CP1:s3cret", "CP1"),
                                                   ("FILE1:from-file", "FILE1")])
async def test_basic_auth_right_password(auth_gateway, userinfo, station):
    ws = await websockets.connect(f"ws://{userinfo}@127.0.0.1:{auth_gateway.port}/{station}",
                                  subprotocols=["ocpp1.6"])
    cp = ChargePoint(station, ws)
    task = asyncio.create_task(cp.start())
    try:
        assert (await cp.call(call.Heartbeat())).current_time
    finally:
        task.cancel()
        await ws.close()


@pytest.mark.parametrize("url_userinfo", ["CP1:wrong@", "", "OTHER:s3cret@", "CP2:s3cret@"])
async def test_basic_auth_refusals_are_401_and_never_log_the_password(
    auth_gateway, url_userinfo, caplog
):
    caplog.set_level(logging.DEBUG)
    station = "CP2" if url_userinfo.startswith("CP2") else "CP1"
    with pytest.raises(websockets.InvalidStatus) as err:
        await websockets.connect(f"ws://{url_userinfo}127.0.0.1:{auth_gateway.port}/{station}",
                                 subprotocols=["ocpp1.6"])
    assert err.value.response.status_code == 401
    assert "s3cret" not in caplog.text and "wrong" not in caplog.text.replace(
        "wrong username or password", "")
    assert "refused" in caplog.text


async def test_allowlist_refuses_unknown_stations(settings_factory):
    settings = settings_factory(ocpp_allowlist_only=True, expected_charge_points=["Known"])
    async with Gateway(settings) as gw:
        with pytest.raises(websockets.InvalidStatus) as err:
            await websockets.connect(f"ws://127.0.0.1:{gw.port}/Stranger",
                                     subprotocols=["ocpp1.6"])
        assert err.value.response.status_code == 403
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "Known")
        await st.close()


async def test_tls_profile_2(settings_factory, tmp_path):
    cert, key = make_cert(tmp_path)
    settings = settings_factory(ocpp_tls_cert_file=str(cert), ocpp_tls_key_file=str(key),
                                ocpp_basic_auth={"TLS1": "pw"})
    async with Gateway(settings) as gw:
        client_ctx = ssl.create_default_context(cafile=str(cert))
        st = await connect_station(f"wss://TLS1:pw@127.0.0.1:{gw.port}", "TLS1", ssl=client_ctx)
        try:
            assert (await st.cp.call(call.Heartbeat())).current_time
        finally:
            await st.close()
        # plain ws:// to a wss:// server does not get in
        with pytest.raises((websockets.InvalidHandshake, OSError, EOFError)):
            await websockets.connect(f"ws://TLS1:pw@127.0.0.1:{gw.port}/TLS1",
                                     subprotocols=["ocpp1.6"], open_timeout=5)


@pytest.mark.parametrize("transport", ["tcp", "websockets"])
async def test_mqtt_over_tls(tmp_path, basepath, transport):
    cert, key = make_cert(tmp_path)
    tls = f"cafile {cert}\ncertfile {cert}\nkeyfile {key}\n"
    overrides: dict = {}
    conf = tls
    if transport == "websockets":  # wss://
        ws_port = free_port()
        conf += f"listener {ws_port} 127.0.0.1\nprotocol websockets\n{tls}"
        overrides = dict(mqtt_transport="websockets", mqtt_port=ws_port)
    mosq = Mosquitto(extra_conf=conf).start()
    try:
        settings = make_settings(mosq.port, basepath, tmp_path / "data", mqtt_tls=True,
                                 mqtt_tls_ca_file=str(cert), http_enabled=False,
                                 homeassistant_discovery=False, **overrides)
        rec = MqttRecorder(mosq.port, f"{basepath}/#", ca_certs=str(cert))
        try:
            async with Gateway(settings) as gw:
                assert await gw.mqtt.wait_connected(10)
                st = await connect_station(f"ws://127.0.0.1:{gw.port}", "SEC")
                await st.cp.call(call.StatusNotification(connector_id=1, error_code="NoError",
                                                         status="Available"))
                await rec.wait_for(f"{basepath}/SEC/state/status", "Available")
                await st.close()
        finally:
            rec.close()
    finally:
        mosq.close()


def test_mqtt_tls_verifies_by_default(tmp_path):
    # verification stays on unless MQTT_TLS_INSECURE=true
    cert, _ = make_cert(tmp_path)
    settings = make_settings(1883, "x", tmp_path / "d", mqtt_tls=True)
    from ocpp2mqtt.mqtt.transport import tls_context

    ctx = tls_context(settings)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    insecure = make_settings(1883, "x", tmp_path / "d", mqtt_tls=True, mqtt_tls_insecure=True,
                             mqtt_tls_ca_file=str(cert))
    ctx = tls_context(insecure)
    assert ctx.verify_mode == ssl.CERT_NONE


def test_debug_logging_never_shows_charger_credentials():
    from ocpp2mqtt.cli import _drop_credentials

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("websockets.server", logging.DEBUG, __file__, 1, message,
                                 (), None)

    assert not _drop_credentials(record("< Authorization: Basic Q1AxOnMzY3JldA=="))
    assert _drop_credentials(record("< Host: 127.0.0.1"))
    source = Path(__file__).parents[1] / "src" / "ocpp2mqtt" / "cli.py"
    assert "handler.addFilter(_drop_credentials)" in source.read_text()


def start_password_broker(directory: Path) -> tuple[subprocess.Popen, int]:
    """A Mosquitto that accepts only user "gw" with password "mqtt-secret"."""
    pwfile = directory / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "gw", "mqtt-secret"],
                   check=True, capture_output=True)
    pwfile.chmod(0o600)
    port = free_port()
    conf = directory / "auth.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\n"
                    f"password_file {pwfile}\n" + ("user root\n" if os.geteuid() == 0 else ""))
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(250):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc, port
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError("password broker did not start")


async def test_mqtt_username_and_password(tmp_path, basepath, caplog):
    proc, port = await asyncio.to_thread(start_password_broker, tmp_path)
    try:
        wrong = make_settings(port, basepath, tmp_path / "d1", mqtt_username="gw",
                              mqtt_password="nope", http_enabled=False,
                              homeassistant_discovery=False)
        async with Gateway(wrong) as gw:
            assert not await gw.mqtt.wait_connected(2)  # refused: never connected
        assert "nope" not in caplog.text
        right = make_settings(port, basepath, tmp_path / "d2", mqtt_username="gw",
                              mqtt_password="mqtt-secret", http_enabled=False,
                              homeassistant_discovery=False)
        async with Gateway(right) as gw:
            assert await gw.mqtt.wait_connected(10)
        assert "mqtt-secret" not in caplog.text
    finally:
        proc.terminate()
        proc.wait(10)
