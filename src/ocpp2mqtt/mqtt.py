"""The gateway's one MQTT connection, with a durable outbox.

paho-mqtt runs on the gateway's event loop. `publish` never awaits
the broker: it appends to the current batch; at the end of the event-loop
tick the batch is written to the outbox (SQLite, one row per tick) and, when
the broker is up, handed to paho. Sessions `await durable()` before they
answer a charger, so an answered reading is on disk. A PUBACK deletes the
row. While the broker is away, rows accumulate (bounded) and are replayed in
order after reconnect; after a restart, whatever is left is replayed too.

The last will marks `<basepath>/bridge/state` offline; `online` is published
on every connect. Reconnects back off between MQTT_RECONNECT_BASE_DELAY and
MQTT_RECONNECT_MAX_DELAY (paho's exponential backoff).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ocpp2mqtt.config import Settings
from ocpp2mqtt.outbox import Message, Outbox, is_essential

log = logging.getLogger("ocpp2mqtt.mqtt")

# paho message ids are 16-bit: never have more than this many unacknowledged.
MAX_IN_FLIGHT = 20000
ACK_INTERVAL = 0.05


class _BufferedClient(paho.Client):
    """paho with chunked reads.

    paho reads each packet in two or three recv() calls (type, length, body); with
    one PUBACK per published message that was 17 % of the gateway's CPU in bench/.
    Here one recv() takes up to 64 KiB and paho's small reads are served from it.
    """

    _rbuf = b""
    _rpos = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            chunk = super()._sock_recv(65536)
            if not chunk:
                return chunk  # end of stream: paho handles the lost connection
            self._rbuf, self._rpos = chunk, 0
        start = self._rpos
        self._rpos = start + bufsize
        return self._rbuf[start:start + bufsize]

    def has_buffered_input(self) -> bool:
        # Also TLS records OpenSSL has already read: the socket won't signal them.
        sock = self._sock
        return self._rpos < len(self._rbuf) or (
            isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        )

    def reconnect(self) -> paho.MQTTErrorCode:
        self._rbuf, self._rpos = b"", 0  # never feed a new connection the old one's bytes
        return super().reconnect()


@dataclass(slots=True)
class Incoming:
    topic: str
    payload: bytes
    retain: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None


class MqttLink:
    def __init__(self, settings: Settings, client_id: str, bridge_topic: str):
        self.settings = settings
        self.bridge_topic = bridge_topic
        self.client_id = client_id
        self.connected = asyncio.Event()
        self.published = 0
        self.publish_failures = 0
        self.active_subscriptions: set[str] = set()  # acknowledged by the broker
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscriptions: set[str] = set()
        self._pending_subscribe: dict[int, str] = {}
        self._subscribe_lock = threading.Lock()
        self._on_message: Callable[[Incoming], None] | None = None
        self._on_connect: Callable[[], None] | None = None
        self._v5 = settings.mqtt_protocol == "5"
        self._client = self._make_client()
        # outbox state (event-loop thread only, except _acked which paho appends to)
        self.outbox = Outbox(settings.data_dir / "outbox.sqlite3", settings.outbox_max_bytes)
        self._essential: list[Message] = []
        self._other: list[Message] = []
        self._flush_scheduled = False
        self._durable_waiters: list[asyncio.Future] = []
        self._online = False  # broker up AND backlog replayed: new batches go straight out
        self._last_sent = 0  # highest outbox seq handed to paho
        self._mid_seq: dict[int, int] = {}
        self._remaining: dict[int, int] = {}
        self._acked: collections.deque[int] = collections.deque()
        self._delivered: list[int] = []
        self._replaying: asyncio.Task | None = None
        self._connection_task: asyncio.Task | None = None
        self._lost = asyncio.Event()
        self._stopping = False
        self._fd = -1
        self._sock_obj: object | None = None
        self._loop_thread = 0
        self._ack_task: asyncio.Task | None = None
        self._warned_drop = False

    def _make_client(self) -> _BufferedClient:
        s = self.settings
        transport = s.mqtt_transport
        client = _BufferedClient(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            transport=transport,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            reconnect_on_failure=True,
        )
        if s.mqtt_username:
            client.username_pw_set(s.mqtt_username, s.mqtt_password.get_secret_value() or None)
        if transport == "websockets":
            client.ws_set_options(
                path=s.mqtt_websocket_path or "/mqtt", headers=s.mqtt_websocket_headers or None
            )
        if s.mqtt_tls:
            client.tls_set_context(self._tls_context())
        client.connect_timeout = s.mqtt_timeout
        client.will_set(self.bridge_topic, "offline", qos=1, retain=True)
        client.max_queued_messages_set(0)
        # 0 = no paho limit: paho rescans its held messages on every PUBACK while a
        # limit is set (16 % of CPU in bench/); MAX_IN_FLIGHT below is our own cap.
        client.max_inflight_messages_set(0)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_subscribe = self._handle_subscribe
        client.on_publish = self._handle_publish
        client.enable_logger(logging.getLogger("ocpp2mqtt.paho"))
        return client

    def _tls_context(self) -> ssl.SSLContext:
        s = self.settings
        ctx = ssl.create_default_context(cafile=s.mqtt_tls_ca_file or None)
        if s.mqtt_tls_cert_file:
            ctx.load_cert_chain(s.mqtt_tls_cert_file, s.mqtt_tls_key_file or None)
        if s.mqtt_tls_insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    # --- lifecycle -------------------------------------------------------
    def start(
        self,
        on_message: Callable[[Incoming], None],
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._on_message = on_message
        self._on_connect = on_connect
        s = self.settings
        if self.outbox.rows:
            log.info("outbox holds %d undelivered batches from before; they go out first",
                     self.outbox.rows)
        log.info(
            "connecting to MQTT broker %s:%s (%s, client id %s)",
            s.mqtt_hostname, s.mqtt_port, s.mqtt_transport, self.client_id,
        )
        # paho runs on our event loop (no network thread): its socket is registered
        # with add_reader/add_writer, so a publish costs no thread hand-off, no lock
        # contention and no wake-up write (bench/ measured both designs).
        client = self._client
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._socket_want_write
        client.on_socket_unregister_write = self._socket_done_writing
        self._stopping = False
        self._connection_task = asyncio.ensure_future(self._keep_connected())
        self._ack_task = asyncio.ensure_future(self._ack_loop())

    async def _keep_connected(self) -> None:
        """Connect, and reconnect with exponential backoff, until stopped."""
        s = self.settings
        loop = asyncio.get_running_loop()
        base, maximum = s.reconnect_delays
        delay = base
        first = True
        while not self._stopping:
            self._lost = asyncio.Event()
            try:
                if first:
                    await loop.run_in_executor(None, functools.partial(
                        self._client.connect,
                        s.mqtt_hostname, s.mqtt_port,  # unix: hostname is the socket path
                        keepalive=s.mqtt_keepalive,
                        clean_start=True if self._v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
                    ))
                    first = False
                else:
                    await loop.run_in_executor(None, self._client.reconnect)
            except (OSError, ssl.SSLError, ValueError) as exc:
                log.warning("MQTT broker %s:%s unreachable (%s); retrying in %g s",
                            s.mqtt_hostname, s.mqtt_port, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, maximum)
                continue
            delay = base  # connected: back off again from the start next time
            await self._lost.wait()
            if self._stopping:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, maximum)

    # --- paho socket callbacks ---------------------------------------------------
    # They come from the event loop, or from the executor thread that connects. paho
    # calls on_socket_close just before closing the socket: from the loop thread we
    # unregister at once, so a reused file descriptor never meets a stale registration;
    # from elsewhere, registrations are matched to their socket object, never to a
    # bare descriptor number that may already belong to a new socket.
    def _in_loop(self, fn: Callable, *args: object) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    def _socket_open(self, client, userdata, sock) -> None:
        self._in_loop(self._register_socket, sock, sock.fileno())

    def _register_socket(self, sock: object, fd: int) -> None:
        assert self._loop is not None
        self._sock_obj, self._fd = sock, fd
        self._loop.add_reader(fd, self._read)

    def _socket_close(self, client, userdata, sock) -> None:
        self._in_loop(self._forget_socket, sock)

    def _forget_socket(self, sock: object) -> None:
        assert self._loop is not None
        if sock is not self._sock_obj:
            return  # a newer socket owns the registration now
        fd, self._sock_obj, self._fd = self._fd, None, -1
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)

    def _socket_want_write(self, client, userdata, sock) -> None:
        self._in_loop(self._add_writer, sock)

    def _add_writer(self, sock: object) -> None:
        assert self._loop is not None
        if sock is self._sock_obj:
            self._loop.add_writer(self._fd, self._write)

    def _socket_done_writing(self, client, userdata, sock) -> None:
        self._in_loop(self._forget_writer, sock)

    def _forget_writer(self, sock: object) -> None:
        assert self._loop is not None
        if sock is self._sock_obj:
            self._loop.remove_writer(self._fd)

    def _read(self) -> None:
        self._client.loop_read()
        if self._client.has_buffered_input() and self._loop is not None:
            # paho stops after a bounded number of packets; the socket may not become
            # readable again for what is already in our buffer.
            self._loop.call_soon(self._read)

    def _write(self) -> None:
        self._client.loop_write()

    async def stop(self, timeout: float = 5.0) -> None:
        """Flush, wait (bounded) for the broker to acknowledge, publish offline, disconnect."""
        if self._loop is None:
            return
        self._flush()
        deadline = self._loop.time() + timeout
        while self.connected.is_set() and self._loop.time() < deadline and (
            self._mid_seq or not self._online
        ):
            await asyncio.sleep(ACK_INTERVAL)
            self._process_acks()
        self._process_acks()
        self._stopping = True
        if self.connected.is_set():
            info = self._client.publish(self.bridge_topic, "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                await asyncio.to_thread(info.wait_for_publish,
                                        max(0.5, deadline - self._loop.time()))
            self._client.disconnect()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._lost.wait(), 2)
        for task in (self._ack_task, self._replaying, self._connection_task):
            if task is not None:
                task.cancel()
        self.connected.clear()
        self.outbox.close()

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.connected.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    # --- callbacks (paho thread) ----------------------------------------
    def _handle_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker refused the connection: %s", reason_code)
            return
        log.info("MQTT connected")
        client.publish(self.bridge_topic, "online", qos=1, retain=True)
        for topic in list(self._subscriptions):
            self._subscribe(topic)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._connected_in_loop)

    def _handle_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        if not self._stopping:
            log.warning("MQTT disconnected (%s); reconnecting with backoff", reason_code)
        self._loop.call_soon_threadsafe(self._disconnected_in_loop)

    def _handle_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acked.append(mid)  # deque.append is thread-safe; drained by _ack_loop

    def _handle_message(self, client, userdata, message: paho.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        incoming = Incoming(
            message.topic, bytes(message.payload), bool(message.retain), response_topic, correlation
        )
        if self._loop is not None and self._on_message is not None:
            self._loop.call_soon_threadsafe(self._on_message, incoming)

    def _subscribe(self, topic: str) -> None:
        # The SUBACK can arrive (paho thread) before subscribe() returns here.
        with self._subscribe_lock:
            if self._v5:
                # retainAsPublished: tell live retained commands from plain ones.
                options = SubscribeOptions(qos=1, retainAsPublished=True)
                _, mid = self._client.subscribe(topic, options=options)
            else:
                _, mid = self._client.subscribe(topic, qos=1)
            if mid is not None:
                self._pending_subscribe[mid] = topic

    def _handle_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._subscribe_lock:
            topic = self._pending_subscribe.pop(mid, None)
        if topic is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.active_subscriptions.add, topic)

    # --- connection state (event-loop thread) -----------------------------------
    def _connected_in_loop(self) -> None:
        if self._stopping:
            return  # a connect that finished while we were shutting down
        self.connected.set()
        if self._replaying is None or self._replaying.done():
            self._replaying = asyncio.ensure_future(self._replay())
        if self._on_connect:
            self._on_connect()

    def _disconnected_in_loop(self) -> None:
        self._lost.set()
        self.connected.clear()
        self.active_subscriptions.clear()
        # What paho already holds it resends itself after reconnecting; new
        # batches wait in the outbox until the replay has caught up.
        self._online = False

    async def _replay(self) -> None:
        """Hand the outbox backlog to paho, oldest first, then go online."""
        replayed = 0
        while self.connected.is_set() and not self._stopping:
            if len(self._mid_seq) > MAX_IN_FLIGHT:
                await asyncio.sleep(ACK_INTERVAL)
                continue
            rows = self.outbox.after(self._last_sent, 200)
            if not rows:
                self._online = True
                if replayed:
                    log.info("replayed %d queued messages to the broker", replayed)
                return
            for seq, messages in rows:
                self._send(seq, messages)
                replayed += len(messages)
            await asyncio.sleep(0)

    # --- publishing ------------------------------------------------------------
    def publish(
        self,
        topic: str,
        payload: str | bytes,
        retain: bool = True,
        qos: int | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        """Queue a message; never blocks, never raises for a missing broker."""
        qos = self.settings.mqtt_qos if qos is None else qos
        self.published += 1
        if correlation_data is not None or qos == 0:
            self._publish_direct(topic, payload, retain, qos, correlation_data)
            return
        if isinstance(payload, bytes):
            payload = payload.decode()
        message = (topic, payload, retain, qos)
        if is_essential(topic):
            self._essential.append(message)
        elif self._online and len(self._mid_seq) < MAX_IN_FLIGHT:
            # Non-essential state (voltages, last_seen, …) goes straight to paho while the
            # broker is up and nothing is queued before it: paho keeps it across a
            # reconnect, and the next reading supersedes it anyway. Only a kill -9 in the
            # few milliseconds before the broker's PUBACK can lose one.
            self._client.publish(topic, payload, qos=qos, retain=retain)
            return
        else:
            self._other.append(message)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _publish_direct(self, topic, payload, retain, qos, correlation_data) -> None:
        # Responses to MQTT v5 requests and QoS 0 messages skip the outbox.
        properties = None
        if correlation_data is not None and self._v5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation_data
        if qos == 0 and not self._client.is_connected():
            self.publish_failures += 1
            return
        self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)

    @property
    def dirty(self) -> bool:
        return self._flush_scheduled

    async def durable(self) -> None:
        """Wait until everything published so far is in the outbox on disk."""
        if not self._flush_scheduled:
            return
        fut = asyncio.get_running_loop().create_future()
        self._durable_waiters.append(fut)
        await fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        batches = []
        if self._essential:
            batches.append((True, self._essential))
            self._essential = []
        if self._other:
            batches.append((False, self._other))
            self._other = []
        try:
            # Deletions of acknowledged rows are left to _ack_loop: fewer statements here.
            seqs = self.outbox.write(batches, [])
        except Exception:
            log.exception("outbox write failed; publishing without persistence")
            seqs = [0] * len(batches)
            self.publish_failures += 1
        if self._online and len(self._mid_seq) < MAX_IN_FLIGHT:
            for seq, (_, messages) in zip(seqs, batches, strict=True):
                self._send(seq, messages)
        elif batches:
            self._online = False
            dropped = self.outbox.enforce_bound(self._last_sent)
            if dropped and not self._warned_drop:
                self._warned_drop = True
                log.warning(
                    "outbox over OUTBOX_MAX_BYTES=%d: dropped the %d oldest non-essential "
                    "messages (energy, transactions and command results are kept)",
                    self.outbox.max_bytes, dropped,
                )
            if (
                self.connected.is_set()
                and (self._replaying is None or self._replaying.done())
            ):
                self._replaying = asyncio.ensure_future(self._replay())
        waiters, self._durable_waiters = self._durable_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _send(self, seq: int, messages: list[Message]) -> None:
        publish = self._client.publish
        count = 0
        for topic, payload, retain, qos in messages:
            info = publish(topic, payload, qos=qos, retain=retain)
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
                self.publish_failures += 1
                continue
            self._mid_seq[info.mid] = seq
            count += 1
        if seq:
            self._remaining[seq] = self._remaining.get(seq, 0) + count
            if count == 0:
                self._delivered.append(seq)
        self._last_sent = max(self._last_sent, seq)

    def _process_acks(self, write: bool = True) -> None:
        acked = self._acked
        while acked:
            seq = self._mid_seq.pop(acked.popleft(), None)
            if not seq:
                continue
            left = self._remaining[seq] - 1
            if left:
                self._remaining[seq] = left
            else:
                del self._remaining[seq]
                self._delivered.append(seq)
        if write and self._delivered:
            delivered, self._delivered = self._delivered, []
            self.outbox.write([], delivered)

    async def _ack_loop(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(ACK_INTERVAL)
            ticks += 1
            try:
                self._process_acks()
                if ticks % 20 == 0:
                    self._client.loop_misc()  # keepalive pings and their timeouts
            except Exception:
                log.exception("outbox acknowledgement failed")

    def queue_depth(self) -> int:
        """Messages not yet acknowledged by the broker (in flight + waiting in the outbox)."""
        return len(self._mid_seq) + len(self._essential) + len(self._other) + (
            0 if self._online else self.outbox.rows
        )

    # --- subscriptions -----------------------------------------------------
    async def wait_subscribed(self, topic: str, timeout: float = 10.0) -> None:
        """Wait until the broker has acknowledged our subscription to `topic`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while topic not in self.active_subscriptions:
            if loop.time() > deadline:
                raise TimeoutError(f"subscription to {topic} not acknowledged")
            await asyncio.sleep(0.01)

    def subscribe(self, topic: str) -> None:
        if topic in self._subscriptions:
            return
        self._subscriptions.add(topic)
        # paho's flag, not ours: ours is set a moment after on_connect resubscribes.
        if self._client.is_connected():
            self._subscribe(topic)

    def unsubscribe(self, topic: str) -> None:
        if topic in self._subscriptions:
            self._subscriptions.discard(topic)
            self.active_subscriptions.discard(topic)
            if self.connected.is_set():
                self._client.unsubscribe(topic)
