"""The lean MQTT connection (mqtt/lean.py, issue 18): QoS 0, 1 and 2 against a real
Mosquitto, and a broker that sends garbage or stops answering — the gateway reconnects
and its chargers never notice. The pure packet readers are checked on their own too."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Any

import pytest
from ocpp.v16 import call

from ocpp2mqtt.gateway import Gateway
from ocpp2mqtt.mqtt.lean import ProtocolError, read_properties, read_varint, varint
from tests.conftest import make_settings
from tests.helpers import MqttRecorder, connect_station


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_every_qos_reaches_the_broker(settings_factory, recorder, basepath, qos):
    async with Gateway(settings_factory(mqtt_qos=qos)) as gw:
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", f"Q{qos}")
        try:
            for status in ("Preparing", "Charging"):
                await st.cp.call(call.StatusNotification(connector_id=1, error_code="NoError",
                                                         status=status))
            await recorder.wait_for(f"{basepath}/Q{qos}/state/status", "Charging")
        finally:
            await st.close()
        # QoS 1 and 2: every message acknowledged, nothing left in flight.
        deadline = asyncio.get_running_loop().time() + 10
        while gw.publisher.queue_depth():
            assert asyncio.get_running_loop().time() < deadline, gw.publisher.queue_depth()
            await asyncio.sleep(0.02)


async def read_packet(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One MQTT packet from a client: (its first byte, its body)."""
    head = await reader.readexactly(1)
    length = shift = 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return head, await reader.readexactly(length)


class FakeBroker:
    """A TCP server that speaks just enough MQTT: CONNACK to every CONNECT, then whatever
    `behaviour` says; it records the packet types it receives per connection."""

    def __init__(self, behaviour: str):
        self.behaviour = behaviour
        self.connections: list[list[int]] = []
        self.connected = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        self.server.close()
        for w in self._writers:
            w.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        kinds: list[int] = []
        self.connections.append(kinds)
        first_connection = len(self.connections) == 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head, body = await read_packet(reader)
                kind = head[0] >> 4
                kinds.append(kind)
                if kind == 1:  # CONNECT
                    if first_connection and self.behaviour == "close":
                        writer.close()  # no CONNACK: the client must not wait MQTT_TIMEOUT
                        return
                    writer.write(b"\x20\x02\x00\x00")
                    self.connected.set()
                    if first_connection and self.behaviour == "garbage":
                        writer.write(b"\xff\xff\xff\xff\xff\x00garbage")
                elif kind == 3 and (head[0] >> 1) & 3 == 1:  # PUBLISH QoS 1: PUBACK
                    n = struct.unpack("!H", body[:2])[0]
                    writer.write(b"\x40\x02" + body[2 + n:4 + n])
                elif kind == 8:  # SUBSCRIBE: SUBACK
                    writer.write(b"\x90\x03" + body[:2] + b"\x01")
                elif kind == 12 and not (first_connection and self.behaviour == "stall"):
                    writer.write(b"\xd0\x00")  # PINGRESP (a stalled broker sends none)
                await writer.drain()


@pytest.mark.parametrize("behaviour", ["garbage", "stall", "close"])
async def test_a_broker_that_sends_garbage_or_stalls_is_left_and_rejoined(
        tmp_path, basepath, behaviour):
    broker = FakeBroker(behaviour)
    port = await broker.start()
    settings = make_settings(port, basepath, tmp_path / "data", http_enabled=False,
                             homeassistant_discovery=False, mqtt_keepalive=5,
                             mqtt_reconnect_base_delay=0.1, mqtt_reconnect_max_delay=0.2,
                             mqtt_timeout=30)
    try:
        async with Gateway(settings) as gw:
            st = await connect_station(f"ws://127.0.0.1:{gw.port}", "GB")
            try:
                deadline = asyncio.get_running_loop().time() + 15
                while len(broker.connections) < 2 or 3 not in broker.connections[-1]:
                    assert asyncio.get_running_loop().time() < deadline, broker.connections
                    # The charger is answered all along.
                    await asyncio.wait_for(st.cp.call(call.Heartbeat()), 5)
                    await asyncio.sleep(0.2)
                assert await gw.mqtt.wait_connected(5)
            finally:
                await st.close()
    finally:
        await broker.close()


def test_packet_readers():
    for n in (0, 1, 127, 128, 16_383, 16_384, 2_097_151, 268_435_455):
        assert read_varint(varint(n) + b"x", 0) == (n, len(varint(n)))
    with pytest.raises(ProtocolError):
        read_varint(b"\xff\xff\xff\xff\xff", 0)
    with pytest.raises(IndexError):
        read_varint(b"\x80", 0)  # incomplete: wait for more
    # Response topic (0x08), correlation data (0x09), a user property (0x26) skipped.
    props = (b"\x08\x00\x03a/b" + b"\x09\x00\x02\x01\x02" + b"\x26\x00\x01k\x00\x01v")
    found, end = read_properties(varint(len(props)) + props + b"rest", 0)
    assert found[0x08] == "a/b" and found[0x09] == b"\x01\x02"
    assert end == len(varint(len(props)) + props)
    with pytest.raises(ProtocolError):
        read_properties(b"\x02\x7f\x00", 0)  # an unknown property


async def test_publish_before_connect_waits_and_goes_out_once(tmp_path, broker, basepath):
    """Messages queued while the broker is not (yet) there go out once it is, in order."""
    rec = MqttRecorder(broker.port, f"{basepath}/#")
    try:
        settings = make_settings(broker.port, basepath, tmp_path / "data", http_enabled=False,
                                 homeassistant_discovery=False)
        gw: Any = Gateway(settings)
        await gw.start()
        try:
            for n in range(50):
                gw.publisher.publish(f"{basepath}/order", str(n), retain=False,
                                     essential=True)
            await rec.wait_for(f"{basepath}/order", "49")
            assert rec.values(f"{basepath}/order") == [str(n) for n in range(50)]
        finally:
            await gw.stop()
    finally:
        rec.close()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_payloads_of_every_length_class_arrive_whole(tmp_path, broker, basepath, protocol):
    """The remaining length of a PUBLISH is 1 to 4 bytes; each boundary, both protocols,
    QoS 0 and 1, byte for byte through Mosquitto."""
    rec = MqttRecorder(broker.port, f"{basepath}/size/#")
    settings = make_settings(broker.port, basepath, tmp_path / "data", http_enabled=False,
                             homeassistant_discovery=False, mqtt_protocol=protocol)
    lengths = [127, 128, 16383, 16384, 2_097_151, 2_097_152]  # remaining lengths

    def message(qos: int, n: int) -> tuple[str, str]:
        topic = f"{basepath}/size/{qos}/{n}"
        overhead = 2 + len(topic) + (2 if qos else 0) + (1 if protocol == "5" else 0)
        size = max(0, lengths[n] - overhead) if n < len(lengths) else 0
        return topic, (str(n) * size)[:size]

    try:
        async with Gateway(settings) as gw:
            assert await gw.mqtt.wait_connected(10)
            for qos in (0, 1):
                for n in range(len(lengths) + 1):  # and an empty payload
                    gw.publisher.publish(*message(qos, n), retain=False, qos=qos)
            for qos in (0, 1):
                for n in range(len(lengths) + 1):
                    topic, payload = message(qos, n)
                    got = await rec.wait_for(topic)
                    assert len(got) == len(payload) and got == payload, (qos, n, len(got))
    finally:
        rec.close()


async def test_mqtt5_keeps_to_the_brokers_receive_maximum(tmp_path, basepath):
    """A broker announcing Receive Maximum 5 may disconnect a client with more QoS 1
    messages in flight (MQTT 5, 3.3.4): 300 at once go out at most 5 unacknowledged at a
    time, in order, on one connection."""
    broker = WindowBroker()
    port = await broker.start()
    settings = make_settings(port, basepath, tmp_path / "data", http_enabled=False,
                             homeassistant_discovery=False, mqtt_protocol="5")
    try:
        async with Gateway(settings) as gw:
            assert await gw.mqtt.wait_connected(10)
            for n in range(300):
                gw.publisher.publish(f"{basepath}/window", str(n), retain=False,
                                     essential=True)
            deadline = asyncio.get_running_loop().time() + 20
            while len(broker.payloads) < 300:
                assert asyncio.get_running_loop().time() < deadline, len(broker.payloads)
                await asyncio.sleep(0.05)
            assert broker.payloads[:300] == [str(n).encode() for n in range(300)]
            assert broker.most_in_flight <= 5, broker.most_in_flight
            assert broker.connections == 1
    finally:
        await broker.close()


class WindowBroker:
    """MQTT 5, Receive Maximum 5; acknowledges in batches, 20 ms after the first waiting
    PUBLISH, and records the most QoS 1 messages it ever had unacknowledged."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.most_in_flight = 0
        self.connections = 0
        self._pending: list[bytes] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        loop = asyncio.get_running_loop()

        def ack() -> None:
            pending, self._pending = self._pending, []
            writer.write(b"".join(b"\x40\x02" + mid for mid in pending))

        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head, body = await read_packet(reader)
                kind = head[0] >> 4
                if kind == 1:  # CONNACK with Receive Maximum (0x21) = 5
                    writer.write(b"\x20\x06\x00\x00\x03\x21\x00\x05")
                elif kind == 3 and (head[0] >> 1) & 3 == 1:
                    n = struct.unpack("!H", body[:2])[0]
                    mid = body[2 + n:4 + n]
                    props, i = read_varint(body, 4 + n)
                    if body[2:2 + n].endswith(b"/window"):
                        self.payloads.append(body[i + props:])
                    if not self._pending:
                        loop.call_later(0.02, ack)
                    self._pending.append(mid)
                    self.most_in_flight = max(self.most_in_flight, len(self._pending))
                elif kind == 8:  # SUBACK (MQTT 5: properties, then the reason code)
                    writer.write(b"\x90\x04" + body[:2] + b"\x00\x01")
                elif kind == 12:
                    writer.write(b"\xd0\x00")
                await writer.drain()
