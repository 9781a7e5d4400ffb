"""Issue 7: /healthz, /readyz and /metrics over real HTTP, with real chargers and a real broker."""

from __future__ import annotations

import asyncio
import http.client
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
import websockets
from ocpp.v16 import call
from prometheus_client.parser import text_string_to_metric_families

from ocpp2mqtt import __version__
from ocpp2mqtt.gateway import Gateway
from ocpp2mqtt.health import bound_port
from tests.helpers import Mosquitto, connect_station


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, dict, str]:
    def fetch() -> tuple[int, dict, str]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode()
        finally:
            conn.close()

    return await asyncio.to_thread(fetch)


async def poll(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 10.0) -> Any:
    """Await `check()` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def parse_metrics(text: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text → {(sample name, sorted labels): value}; raises on malformed text."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


async def metrics(port: int) -> dict[tuple[str, tuple], float]:
    status, headers, body = await http_get(port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(body)


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def test_endpoints_and_metrics_with_connected_stations(settings_factory, recorder,
                                                             basepath):
    settings = settings_factory(http_enabled=True, http_addr="127.0.0.1", http_port=0)
    async with Gateway(settings) as gw:
        assert await gw.mqtt.wait_connected(10)
        port = bound_port(gw.http_server)
        assert port != settings.http_port  # the kernel picked one
        url = f"ws://127.0.0.1:{gw.port}"

        status, _, body = await http_get(port, "/healthz")
        assert (status, body) == (200, "ok\n")
        status, _, body = await http_get(port, "/readyz")
        assert (status, body) == (200, "ready\n")

        st = await connect_station(url, "HC1")
        raw = await websockets.connect(f"{url}/HC2", subprotocols=["ocpp1.6"])
        try:
            await st.cp.call(call.BootNotification(charge_point_model="M",
                                                   charge_point_vendor="V"))
            await st.cp.call(call.Heartbeat())
            await st.cp.call(call.Heartbeat())
            # An action the gateway does not know → CALLERROR; learn its code from the reply.
            await raw.send('[2,"e1","NoSuchAction",{}]')
            reply = orjson.loads(await asyncio.wait_for(raw.recv(), 5))
            assert reply[0] == 4 and reply[1] == "e1"
            error_code = reply[2]
            # A refused handshake: offers only OCPP 1.5.
            with pytest.raises(websockets.InvalidStatus):
                await websockets.connect(f"{url}/HC3", subprotocols=["ocpp1.5"])
            # A command through MQTT, answered by HC1 → command result "ok".
            recorder.publish(f"{basepath}/HC1/cmd",
                             orjson.dumps({"action": "reset", "args": {"type": "Soft"}}))
            await st.cp.wait_call("Reset")

            async def command_counted():
                m = await metrics(port)
                return m if value(m, "ocpp2mqtt_commands_total", status="ok") == 1 else None

            m = await poll(command_counted, "commands_total{status=ok} == 1")
            assert value(m, "ocpp2mqtt_connected_stations") == 2
            assert value(m, "ocpp2mqtt_ocpp_messages_received_total",
                         action="BootNotification") == 1
            assert value(m, "ocpp2mqtt_ocpp_messages_received_total", action="Heartbeat") == 2
            assert value(m, "ocpp2mqtt_ocpp_frame_errors_total", code=error_code) == 1
            assert value(m, "ocpp2mqtt_ocpp_handshake_rejections_total") == 1
            published = value(m, "ocpp2mqtt_mqtt_messages_published_total")
            assert published is not None and 0 < published <= gw.publisher.published
            depth = value(m, "ocpp2mqtt_mqtt_queue_depth")
            assert depth is not None and depth >= 0
            assert value(m, "ocpp2mqtt_mqtt_connected") == 1
            assert value(m, "ocpp2mqtt_ready") == 1
            assert value(m, "ocpp2mqtt_uptime_seconds") > 0
            start = value(m, "process_start_time_seconds")
            assert start is not None and time.time() - 3600 < start <= time.time()
            assert value(m, "process_cpu_seconds_total") > 0
            assert value(m, "process_resident_memory_bytes") > 1_000_000
            build = [k for k in m if k[0] == "ocpp2mqtt_build_info"]
            assert build and ("version", __version__) in build[0][1]
        finally:
            await st.close()
            await raw.close()

        async def stations_gone():
            return value(await metrics(port), "ocpp2mqtt_connected_stations") == 0

        await poll(stations_gone, "connected_stations == 0 after both chargers left")

        status, _, body = await http_get(port, "/nope")
        assert status == 404 and "/metrics" in body
        status, headers, _ = await http_get(port, "/healthz", method="POST")
        assert status == 405 and set(headers["allow"].replace(" ", "").split(",")) == {
            "GET", "HEAD"}
        status, headers, body = await http_get(port, "/healthz", method="HEAD")
        assert status == 200 and body == "" and headers["content-length"] == "3"
        status, _, _ = await http_get(port, "/readyz?verbose=1")
        assert status == 200

    # Stopping the gateway closes the health server too.
    with pytest.raises(OSError):
        await http_get(port, "/healthz")


async def test_readyz_follows_the_broker(settings_factory):
    mosq = Mosquitto().start()
    try:
        settings = settings_factory(http_enabled=True, http_addr="127.0.0.1", http_port=0,
                                    mqtt_port=mosq.port)
        async with Gateway(settings) as gw:
            port = bound_port(gw.http_server)

            async def readyz_is(code: int):
                status, _, body = await http_get(port, "/readyz")
                return body if status == code else None

            await poll(lambda: readyz_is(200), "readyz 200 with the broker up")
            mosq.stop()
            body = await poll(lambda: readyz_is(503), "readyz 503 with the broker down")
            assert "mqtt" in body
            status, _, _ = await http_get(port, "/healthz")
            assert status == 200  # alive, just not ready
            m = await metrics(port)
            assert value(m, "ocpp2mqtt_mqtt_connected") == 0
            assert value(m, "ocpp2mqtt_ready") == 0
            mosq.start()
            await poll(lambda: readyz_is(200), "readyz 200 after the broker came back", 20)
    finally:
        mosq.close()


async def test_readyz_needs_the_ocpp_listener(settings_factory):
    settings = settings_factory(http_enabled=True, http_addr="127.0.0.1", http_port=0)
    async with Gateway(settings) as gw:
        assert await gw.mqtt.wait_connected(10)
        port = bound_port(gw.http_server)
        assert (await http_get(port, "/readyz"))[0] == 200
        gw.server.stop_accepting()  # the OCPP listener stops accepting
        status, _, body = await http_get(port, "/readyz")
        assert status == 503 and "ocpp" in body and "mqtt" not in body


async def test_disabled_and_malformed_requests(settings_factory):
    async with Gateway(settings_factory(http_enabled=False)) as gw:
        assert gw.http_server is None
    settings = settings_factory(http_enabled=True, http_addr="127.0.0.1", http_port=0)
    async with Gateway(settings) as gw:
        port = bound_port(gw.http_server)

        async def raw(request: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 5)  # server closes after answering
            writer.close()
            return data

        # Requests that are not HTTP get aiohttp's own 400 (answered as HTTP/1.0).
        assert (await raw(b"garbage\r\n\r\n")).split(b" ", 2)[1] == b"400"
        too_long = await raw(b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
        assert too_long.split(b" ", 2)[1] == b"400" and b"8190 bytes" in too_long
        ok = await raw(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.0 200 OK\r\n") and ok.endswith(b"\r\n\r\nok\n")
