"""The gateway's MQTT connection on a plain asyncio Protocol (MQTT 3.1.1 and 5).

paho-mqtt spends ~55 µs of CPU per QoS 1 message (bench: `--only publish`): an object
with a lock per message, three `recv` calls and a `Properties` object per PUBACK. Here a
publish appends one encoded PUBLISH packet to the batch's buffer, the buffer goes out in
one transport write, and acknowledgements are parsed in bulk from whatever arrived:
~2–4 µs per message, acknowledgement included.

What it does, as paho did until 2.5: TCP, TLS, unix sockets and WebSockets (the
`websockets` client carries the same byte stream in binary messages, `_WebSocketLink`);
CONNECT with the last will (`bridge/state` offline), user and password, keepalive pings;
QoS 0, 1 and 2 both ways; retain; MQTT 5 correlation data out and response topic /
correlation data in, subscriptions with retain-as-published; unacknowledged messages
kept and sent again (DUP) after a reconnect, in order, before anything new; reconnect
with exponential backoff; a broker that sends garbage or stops answering pings is
disconnected from.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
import struct
from collections.abc import Callable
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from ocpp2mqtt.config import Settings
from ocpp2mqtt.mqtt.transport import Incoming, Waits, tls_context

log = logging.getLogger("ocpp2mqtt.mqtt")

MAX_PACKET = 256 * 1024 * 1024  # the MQTT limit (remaining length ≤ 268,435,455)

# MQTT 5 property ids → how their value is encoded (to read or skip them).
_BYTE, _TWO, _FOUR, _VAR, _STR, _BIN, _PAIR = range(7)
_PROPERTY_TYPES = {
    0x01: _BYTE, 0x02: _FOUR, 0x03: _STR, 0x08: _STR, 0x09: _BIN, 0x0B: _VAR, 0x11: _FOUR,
    0x12: _STR, 0x13: _TWO, 0x15: _STR, 0x16: _BIN, 0x17: _BYTE, 0x18: _FOUR, 0x19: _BYTE,
    0x1A: _STR, 0x1C: _STR, 0x1F: _STR, 0x21: _TWO, 0x22: _TWO, 0x23: _TWO, 0x24: _BYTE,
    0x25: _BYTE, 0x26: _PAIR, 0x27: _FOUR, 0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}


class ProtocolError(Exception):
    """The broker sent something that is not MQTT."""


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def read_varint(buf: bytes | memoryview, i: int) -> tuple[int, int]:
    """(value, index after it); raises IndexError if incomplete."""
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift > 21:
            raise ProtocolError("malformed remaining length")


def read_properties(buf: bytes, i: int) -> tuple[dict[int, Any], int]:
    """MQTT 5 properties at `i`: ({id: value}, index after them)."""
    length, i = read_varint(buf, i)
    end = i + length
    props: dict[int, Any] = {}
    value: int | None
    while i < end:
        pid, i = read_varint(buf, i)
        kind = _PROPERTY_TYPES.get(pid)
        if kind is None:
            raise ProtocolError(f"unknown MQTT 5 property {pid:#x}")
        if kind == _BYTE:
            value, i = buf[i], i + 1
        elif kind == _TWO:
            value, i = struct.unpack_from("!H", buf, i)[0], i + 2
        elif kind == _FOUR:
            value, i = struct.unpack_from("!I", buf, i)[0], i + 4
        elif kind == _VAR:
            value, i = read_varint(buf, i)
        elif kind == _PAIR:
            n = struct.unpack_from("!H", buf, i)[0]
            i += 2 + n
            m = struct.unpack_from("!H", buf, i)[0]
            value, i = None, i + 2 + m
        else:
            n = struct.unpack_from("!H", buf, i)[0]
            raw = bytes(buf[i + 2:i + 2 + n])
            i += 2 + n
            props[pid] = raw.decode(errors="replace") if kind == _STR else raw
            continue
        props[pid] = value
    if i != end:
        raise ProtocolError("malformed properties")
    return props, i


class _Connection(asyncio.Protocol):
    def __init__(self, owner: LeanTransport):
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        i, n = 0, len(buf)
        owner = self.owner
        try:
            while i + 2 <= n:
                first = buf[i]
                try:
                    length, start = read_varint(buf, i + 1)
                except IndexError:
                    break
                if length > MAX_PACKET:
                    raise ProtocolError(f"a packet of {length} bytes")
                end = start + length
                if end > n:
                    break
                owner.packet(first, buf, start, end)
                i = end
        except (ProtocolError, IndexError, struct.error, UnicodeDecodeError) as exc:
            log.warning("MQTT broker sent something that is not MQTT (%s); reconnecting", exc)
            self.buf = b""
            if self.transport is not None:
                self.transport.abort()
            return
        self.buf = buf[i:]
        owner.flush_acks()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.owner.closed_before_connack()


class _WebSocketLink:
    """What `_Connection` uses of an asyncio transport, over a WebSocket client connection
    (MQTT over WebSockets: binary messages carry the MQTT byte stream, in order)."""

    def __init__(self, ws: ClientConnection, conn: _Connection):
        self.ws = ws
        self.conn = conn
        self._closing = False
        self._close_requested = False
        self._out: list[bytes] = []
        self._wake = asyncio.Event()
        self._tasks = [asyncio.ensure_future(self._read()),
                       asyncio.ensure_future(self._write())]
        conn.connection_made(self)  # type: ignore[arg-type]

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if isinstance(message, str):
                    log.warning("MQTT broker sent a text WebSocket message; reconnecting")
                    self.abort()
                    break
                self.conn.data_received(message)
        except websockets.ConnectionClosed:
            pass
        finally:
            self._closing = True
            for task in self._tasks:
                if task is not asyncio.current_task():
                    task.cancel()
            self.conn.connection_lost(None)

    async def _write(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._out:
                    out, self._out = self._out, []
                    await self.ws.send(b"".join(out))
                if self._close_requested and not self._out:
                    await self.ws.close()  # after what was written before close()
                    return

    def write(self, data: bytes) -> None:
        if not self._closing:
            self._out.append(data)
            self._wake.set()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = self._close_requested = True
            self._wake.set()

    def abort(self) -> None:
        self._closing = True
        self.ws.transport.abort()


class LeanTransport(Waits):
    """Connect, reconnect, publish, subscribe. Delivery guarantees are the publisher's."""

    def __init__(self, settings: Settings, client_id: str, will_topic: str):
        self.settings = settings
        self.client_id = client_id
        self.will_topic = will_topic
        self.connected = asyncio.Event()
        self.active_subscriptions: set[str] = set()
        self.v5 = settings.mqtt_protocol == "5"
        self.on_message: Callable[[Incoming], None] = lambda message: None
        self.on_connected: Callable[[], None] = lambda: None
        self.on_disconnected: Callable[[], None] = lambda: None
        self.on_ack: Callable[[int], None] = lambda mid: None
        self._conn: _Connection | None = None
        self._session = False  # CONNACK arrived on the current connection
        self._subscriptions: set[str] = set()
        self._pending_sub: dict[int, tuple[str, bool]] = {}  # mid → (topic, subscribe?)
        # QoS 1/2 messages not yet acknowledged, in order: mid → PUBLISH packet (or, once
        # PUBREC arrived, None: PUBREL is what is sent again).
        self._unacked: dict[int, bytes | None] = {}
        # MQTT 5: the broker's Receive Maximum bounds our QoS 1/2 messages in flight; the
        # rest wait (in order) until acknowledgements make room. 3.1.1: no bound here (the
        # publisher keeps its own).
        self._window = 65535
        self._windowed = False  # a window below 65,535: _in_flight is kept
        self._in_flight: set[int] = set()  # written on this connection, not acknowledged
        self._waiting: collections.deque[int] = collections.deque()
        self._unsent: set[int] = set()  # never written yet (the others go again with DUP)
        self._next_mid = 0
        self._out: list[bytes] = []
        self._write_scheduled = False
        self._acks: list[bytes] = []  # our answers to the broker's PUBLISH/PUBREL
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False
        self._first = True
        self._pong_due: float | None = None
        self._offline_mid: int | None = None
        self._offline_acked = asyncio.Event()
        self._connack: asyncio.Future[int] | None = None
        self._qos2_in: set[int] = set()

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        log.info("connecting to MQTT broker %s:%s (%s, client id %s)",
                 s.mqtt_hostname, s.mqtt_port, s.mqtt_transport, self.client_id)
        self._stopping = False
        self._tasks = [asyncio.ensure_future(self._keep_connected())]

    async def _keep_connected(self) -> None:
        s = self.settings
        base, maximum = s.reconnect_delays
        delay = base
        while not self._stopping:
            try:
                await asyncio.wait_for(self._connect(), s.mqtt_timeout)
            except (OSError, ssl.SSLError, ValueError, asyncio.TimeoutError,
                    ConnectionError, websockets.WebSocketException) as exc:
                self._drop()
                log.warning("MQTT broker %s:%s unreachable (%s); retrying in %g s",
                            s.mqtt_hostname, s.mqtt_port, exc or type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, maximum)
                continue
            delay = base
            assert self._conn is not None
            pinger = asyncio.ensure_future(self._ping())
            try:
                await self._conn.lost
            finally:
                pinger.cancel()
            self._lost_connection()
            if self._stopping:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, maximum)

    async def _connect(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        if s.mqtt_transport == "unix":
            _, conn = await loop.create_unix_connection(lambda: _Connection(self),
                                                        s.mqtt_hostname)
        elif s.mqtt_transport == "websockets":
            tls = tls_context(s) if s.mqtt_tls else None
            url = (f"{'wss' if tls else 'ws'}://{s.mqtt_hostname}:{s.mqtt_port}"
                   f"{s.mqtt_websocket_path or '/mqtt'}")
            ws = await websockets.connect(
                url, subprotocols=[websockets.Subprotocol("mqtt")], ssl=tls,
                additional_headers=s.mqtt_websocket_headers or None,
                ping_interval=None,  # MQTT's keepalive pings
                max_size=None, compression=None, open_timeout=None)
            conn = _Connection(self)
            _WebSocketLink(ws, conn)
        else:
            tls = tls_context(s) if s.mqtt_tls else None
            _, conn = await loop.create_connection(
                lambda: _Connection(self), s.mqtt_hostname, s.mqtt_port, ssl=tls,
                server_hostname=s.mqtt_hostname if tls else None)
        self._conn = conn
        self._session = False
        self._connack = loop.create_future()
        assert conn.transport is not None
        conn.transport.write(self._connect_packet())
        code = await self._connack
        if code != 0:
            conn.transport.close()
            raise ConnectionError(f"the broker refused the connection (reason {code:#x})")
        self._first = False
        self._session = True
        log.info("MQTT connected")
        # Unacknowledged messages first, in order, then what waited meanwhile.
        self._in_flight.clear()
        self._waiting = collections.deque(self._unacked)
        self._release()
        self.publish(self.will_topic, b"online", 1, True)
        for topic in list(self._subscriptions):
            self._subscribe(topic)
        self._write()
        self.connected.set()
        self.on_connected()

    def _connect_packet(self) -> bytes:
        s = self.settings
        clean = self.v5 or self._first  # 3.1.1: a persistent session after the first
        flags = 0x02 if clean else 0
        flags |= 0x04 | (1 << 3) | 0x20  # will: QoS 1, retained
        payload = _string(self.client_id)
        if self.v5:
            payload += b"\x00"  # will properties
        payload += _string(self.will_topic) + _string(b"offline")
        if s.mqtt_username:
            flags |= 0x80
            payload += _string(s.mqtt_username)
            password = s.mqtt_password.get_secret_value()
            if password:
                flags |= 0x40
                payload += _string(password)
        header = b"\x00\x04MQTT" + bytes([5 if self.v5 else 4, flags]) + \
            struct.pack("!H", s.mqtt_keepalive)
        if self.v5:
            header += b"\x00"
        body = header + payload
        return b"\x10" + varint(len(body)) + body

    async def _ping(self) -> None:
        keepalive = self.settings.mqtt_keepalive
        if not keepalive:
            return
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(keepalive / 2)
            if self._pong_due is not None and loop.time() > self._pong_due:
                log.warning("MQTT broker stopped answering pings; reconnecting")
                if self._conn is not None and self._conn.transport is not None:
                    self._conn.transport.abort()
                return
            if self._pong_due is None:
                self._pong_due = loop.time() + keepalive
                self._raw(b"\xc0\x00")

    def _drop(self) -> None:
        self._connack = None  # nobody waits for it any more
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.transport.abort()
        self._session = False

    def _lost_connection(self) -> None:
        was = self.connected.is_set()
        self._drop()
        self._pong_due = None
        self._out.clear()  # unacknowledged ones are in _unacked; QoS 0 ones are gone
        self._in_flight.clear()
        self._waiting.clear()
        self.connected.clear()
        self.active_subscriptions.clear()
        self._pending_sub.clear()
        if was and not self._stopping:
            log.warning("MQTT disconnected; reconnecting with backoff")
        if was:
            self.on_disconnected()

    async def disconnect(self, timeout: float) -> None:
        """Publish `offline` (waiting up to `timeout` for the broker), then disconnect."""
        self._stopping = True
        if self.connected.is_set():
            self._offline_mid = self.publish(self.will_topic, b"offline", 1, True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._offline_acked.wait(), max(0.5, timeout))
            self._raw(b"\xe0\x00")
            conn = self._conn
            if conn is not None and conn.transport is not None:
                conn.transport.close()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(conn.lost), 2)
        for task in self._tasks:
            task.cancel()
        self._drop()
        self.connected.clear()

    def is_connected(self) -> bool:
        return self._session

    # --- writing ----------------------------------------------------------------------
    def _raw(self, packet: bytes) -> None:
        conn = self._conn
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            conn.transport.write(packet)

    def _queue(self, packet: bytes) -> None:
        self._out.append(packet)
        if not self._write_scheduled:
            self._write_scheduled = True
            asyncio.get_running_loop().call_soon(self._write)

    def _write(self) -> None:
        """The tick's packets in one write (only on a connection the broker accepted)."""
        self._write_scheduled = False
        if not self._session or not self._out:
            return
        out, self._out = self._out, []
        self._raw(b"".join(out))

    def publish(self, topic: str, payload: str | bytes, qos: int, retain: bool,
                correlation_data: bytes | None = None) -> int | None:
        """Queue one message; its message id (for `on_ack`; 0 for QoS 0), or None if it
        cannot go out (QoS 0 while disconnected)."""
        if type(payload) is not bytes:
            payload = payload.encode()  # type: ignore[union-attr]
        raw = topic.encode()
        # topic length, topic: not cached, memory per station counts more
        enc = len(raw).to_bytes(2, "big") + raw
        props = b""
        if self.v5:
            props = b"\x00"
            if correlation_data is not None:
                inner = b"\x09" + _string(correlation_data)
                props = varint(len(inner)) + inner
        if qos == 0:
            if not self._session:
                return None
            body_len = len(enc) + len(props) + len(payload)
            self._queue(bytes([0x30 | retain]) + varint(body_len) + enc + props + payload)
            return 0
        # The next free message id; almost always the one after the last.
        mid = self._next_mid % 65535 + 1
        if mid in self._unacked or mid in self._pending_sub:
            mid = self._mid()
        self._next_mid = mid
        body_len = len(enc) + 2 + len(props) + len(payload)
        # remaining length as a variable byte integer: 1 or 2 bytes for all but huge payloads
        head = (bytes((0x30 | (qos << 1) | retain, body_len)) if body_len < 128 else
                bytes((0x30 | (qos << 1) | retain, body_len & 0x7F | 0x80, body_len >> 7))
                if body_len < 16384 else
                bytes((0x30 | (qos << 1) | retain,)) + varint(body_len))
        packet = b"".join((head, enc, mid.to_bytes(2, "big"), props, payload))
        self._unacked[mid] = packet
        if self._session and not self._waiting and (
                not self._windowed or len(self._in_flight) < self._window):
            if self._windowed:
                self._in_flight.add(mid)
            self._out.append(packet)
            if not self._write_scheduled:
                self._write_scheduled = True
                asyncio.get_running_loop().call_soon(self._write)
        else:
            self._unsent.add(mid)
            if self._session:
                self._waiting.append(mid)
        return mid

    def _release(self) -> None:
        """Write waiting QoS 1/2 messages while the broker's window has room."""
        waiting, unacked, in_flight = self._waiting, self._unacked, self._in_flight
        while waiting and (not self._windowed or len(in_flight) < self._window):
            mid = waiting.popleft()
            if mid not in unacked:
                continue
            packet = unacked[mid]
            if packet is None:  # PUBREC arrived before: release it again
                self._queue(b"\x62\x02" + mid.to_bytes(2, "big"))
            elif mid in self._unsent:
                self._unsent.discard(mid)
                self._queue(packet)
            else:
                self._queue(bytes([packet[0] | 0x08]) + packet[1:])
            if self._windowed:
                in_flight.add(mid)

    def _mid(self) -> int:
        mid = self._next_mid
        for _ in range(65535):
            mid = mid % 65535 + 1
            if mid not in self._unacked and mid not in self._pending_sub:
                self._next_mid = mid
                return mid
        raise RuntimeError("65,535 MQTT messages unacknowledged")

    # --- reading ----------------------------------------------------------------------
    def packet(self, first: int, buf: bytes, start: int, end: int) -> None:
        kind = first >> 4
        if kind == 4 or kind == 7:  # PUBACK, PUBCOMP
            mid = (buf[start] << 8) | buf[start + 1]
            if mid in self._unacked:
                del self._unacked[mid]
                if self._windowed:
                    self._in_flight.discard(mid)
                if self._waiting:
                    self._release()
                if mid == self._offline_mid:
                    self._offline_acked.set()
                self.on_ack(mid)
        elif kind == 3:
            self._incoming(first, buf, start, end)
        elif kind == 5:  # PUBREC: our QoS 2 message arrived; release it
            mid = (buf[start] << 8) | buf[start + 1]
            if mid in self._unacked:
                self._unacked[mid] = None
            self._acks.append(b"\x62\x02" + mid.to_bytes(2, "big"))
        elif kind == 6:  # PUBREL of the broker's QoS 2 message
            mid = (buf[start] << 8) | buf[start + 1]
            self._qos2_in.discard(mid)
            self._acks.append(b"\x70\x02" + mid.to_bytes(2, "big"))
        elif kind == 2:
            self._connack_received(buf, start, end)
        elif kind == 9 or kind == 11:  # SUBACK, UNSUBACK
            self._subscription_answer(kind, buf, start, end)
        elif kind == 13:  # PINGRESP
            self._pong_due = None
        elif kind == 14:  # DISCONNECT (MQTT 5)
            raise ProtocolError("the broker disconnected us")
        else:
            raise ProtocolError(f"unexpected packet type {kind}")

    def flush_acks(self) -> None:
        if self._acks:
            acks, self._acks = self._acks, []
            self._raw(b"".join(acks))

    def closed_before_connack(self) -> None:
        """A broker that closes the connection instead of answering CONNECT: retry now,
        not after MQTT_TIMEOUT."""
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectionError("closed before CONNACK"))

    def _connack_received(self, buf: bytes, start: int, end: int) -> None:
        if end - start < 2:
            raise ProtocolError("short CONNACK")
        self._window = 65535
        if self.v5 and end - start > 2:
            props, _ = read_properties(buf, start + 2)
            self._window = max(1, int(props.get(0x21, 65535)))  # Receive Maximum
        self._windowed = self._window < 65535
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(buf[start + 1])

    def _incoming(self, first: int, buf: bytes, start: int, end: int) -> None:
        qos = (first >> 1) & 3
        n = (buf[start] << 8) | buf[start + 1]
        i = start + 2 + n
        topic = bytes(buf[start + 2:i]).decode()
        mid = 0
        if qos:
            mid = (buf[i] << 8) | buf[i + 1]
            i += 2
        response_topic = correlation = None
        if self.v5:
            props, i = read_properties(buf, i)
            response_topic = props.get(0x08)
            correlation = props.get(0x09)
        if i > end:
            raise ProtocolError("malformed PUBLISH")
        if qos == 1:
            self._acks.append(b"\x40\x02" + mid.to_bytes(2, "big"))
        elif qos == 2:
            self._acks.append(b"\x50\x02" + mid.to_bytes(2, "big"))
            if mid in self._qos2_in:
                return  # sent again before our PUBREC arrived: delivered once
            self._qos2_in.add(mid)
        self.on_message(Incoming(topic, bytes(buf[i:end]), bool(first & 1), response_topic,
                                 correlation))

    # --- subscriptions ----------------------------------------------------------------------
    def subscribe(self, topic: str) -> None:
        if topic in self._subscriptions:
            return
        self._subscriptions.add(topic)
        if self._session:
            self._subscribe(topic)

    def unsubscribe(self, topic: str) -> None:
        if topic not in self._subscriptions:
            return
        self._subscriptions.discard(topic)
        self.active_subscriptions.discard(topic)
        if self._session:
            mid = self._mid_for_subscription(topic, False)
            body = mid.to_bytes(2, "big") + (b"\x00" if self.v5 else b"") + _string(topic)
            self._queue(b"\xa2" + varint(len(body)) + body)

    def _subscribe(self, topic: str) -> None:
        mid = self._mid_for_subscription(topic, True)
        # QoS 1; MQTT 5: retain-as-published, to tell live retained commands from others.
        options = b"\x09" if self.v5 else b"\x01"
        body = mid.to_bytes(2, "big") + (b"\x00" if self.v5 else b"") + _string(topic) + options
        self._queue(b"\x82" + varint(len(body)) + body)

    def _mid_for_subscription(self, topic: str, subscribe: bool) -> int:
        mid = self._mid()
        self._pending_sub[mid] = (topic, subscribe)
        return mid

    def _subscription_answer(self, kind: int, buf: bytes, start: int, end: int) -> None:
        mid = (buf[start] << 8) | buf[start + 1]
        pending = self._pending_sub.pop(mid, None)
        if pending is None or kind != 9:
            return
        topic, _ = pending
        i = start + 2
        if self.v5:
            _, i = read_properties(buf, i)
        granted = buf[i] if i < end else 0x80
        if granted < 0x80 and topic in self._subscriptions:
            self.active_subscriptions.add(topic)
        elif granted >= 0x80:
            log.warning("MQTT broker refused the subscription to %s (%#x)", topic, granted)
