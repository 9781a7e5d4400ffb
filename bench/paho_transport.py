"""paho-mqtt driven by the event loop: the gateway's MQTT connection until 2.5 (and its
MQTT over WebSockets until 2.6), kept here as a candidate of `--only publish`
(publish_paths.py) to measure the lean connection (ocpp2mqtt/mqtt/lean.py) against.

paho's socket is registered with the loop (add_reader/add_writer), so publishing
costs no thread hand-off. Only the TCP/TLS connect, which blocks, runs in the
default executor; the socket callbacks paho makes from there are handed to the
loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ocpp2mqtt.config import Settings
from ocpp2mqtt.mqtt.transport import Incoming, Waits, tls_context

log = logging.getLogger("ocpp2mqtt.mqtt")

MISC_INTERVAL = 1.0  # paho's keepalive pings and their timeouts


class MqttTransport(Waits):
    """Connect, reconnect, publish, subscribe. Delivery guarantees are the publisher's."""

    def __init__(self, settings: Settings, client_id: str, will_topic: str):
        self.settings = settings
        self.client_id = client_id
        self.will_topic = will_topic
        self.connected = asyncio.Event()
        self.active_subscriptions: set[str] = set()  # acknowledged by the broker
        self.v5 = settings.mqtt_protocol == "5"
        self.on_message: Callable[[Incoming], None] = lambda message: None
        self.on_connected: Callable[[], None] = lambda: None
        self.on_disconnected: Callable[[], None] = lambda: None
        self.on_ack: Callable[[int], None] = lambda mid: None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._subscriptions: set[str] = set()
        self._pending_subscribe: dict[int, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._lost = asyncio.Event()
        self._stopping = False
        self._offline_mid: int | None = None
        self._offline_acked = asyncio.Event()
        self._fd = -1
        self._sock: object | None = None
        self._client = self._make_client()

    def _make_client(self) -> paho.Client:
        s = self.settings
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            transport=s.mqtt_transport,
            protocol=paho.MQTTv5 if self.v5 else paho.MQTTv311,
            reconnect_on_failure=True,
        )
        if s.mqtt_username:
            client.username_pw_set(s.mqtt_username, s.mqtt_password.get_secret_value() or None)
        if s.mqtt_transport == "websockets":
            client.ws_set_options(
                path=s.mqtt_websocket_path or "/mqtt", headers=s.mqtt_websocket_headers or None
            )
        if s.mqtt_tls:
            client.tls_set_context(self._tls_context())
        client.connect_timeout = s.mqtt_timeout
        client.will_set(self.will_topic, "offline", qos=1, retain=True)
        client.max_queued_messages_set(0)
        # 0 = no paho limit: paho rescans its held messages on every PUBACK while a limit
        # is set; the publisher keeps its own bound on messages in flight.
        client.max_inflight_messages_set(0)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_subscribe = self._handle_subscribe
        client.on_publish = self._handle_publish
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._socket_want_write
        client.on_socket_unregister_write = self._socket_done_writing
        client.enable_logger(logging.getLogger("ocpp2mqtt.paho"))
        return client

    def _tls_context(self) -> ssl.SSLContext:
        return tls_context(self.settings)

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        s = self.settings
        log.info("connecting to MQTT broker %s:%s (%s, client id %s)",
                 s.mqtt_hostname, s.mqtt_port, s.mqtt_transport, self.client_id)
        self._stopping = False
        self._tasks = [asyncio.ensure_future(self._keep_connected()),
                       asyncio.ensure_future(self._misc_loop())]

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
                        clean_start=True if self.v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
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

    async def _misc_loop(self) -> None:
        while True:
            await asyncio.sleep(MISC_INTERVAL)
            try:
                self._client.loop_misc()
            except Exception:
                log.exception("MQTT keepalive failed")

    async def disconnect(self, timeout: float) -> None:
        """Publish `offline` (waiting up to `timeout` for the broker), then disconnect."""
        self._stopping = True
        if self.connected.is_set():
            info = self._client.publish(self.will_topic, "offline", qos=1, retain=True)
            self._offline_mid = info.mid
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._offline_acked.wait(), max(0.5, timeout))
            self._client.disconnect()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._lost.wait(), 2)
        for task in self._tasks:
            task.cancel()
        self.connected.clear()

    # --- the socket on the event loop ---------------------------------------------------
    # paho makes these callbacks on the loop, or — during connect — from the executor
    # thread. paho calls on_socket_close just before closing the socket: on the loop we
    # unregister at once, so a reused descriptor never meets a stale registration; from
    # elsewhere, registrations are matched to their socket object, never to a bare
    # descriptor number that may already belong to a new socket.
    def _in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    def _socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._register_socket, sock, sock.fileno())

    def _register_socket(self, sock: object, fd: int) -> None:
        assert self._loop is not None
        self._sock, self._fd = sock, fd
        self._loop.add_reader(fd, self._read)

    def _socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._forget_socket, sock)

    def _forget_socket(self, sock: object) -> None:
        assert self._loop is not None
        if sock is not self._sock:
            return  # a newer socket owns the registration now
        fd, self._sock, self._fd = self._fd, None, -1
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)

    def _socket_want_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._add_writer, sock)

    def _add_writer(self, sock: object) -> None:
        assert self._loop is not None
        if sock is self._sock:
            self._loop.add_writer(self._fd, self._client.loop_write)

    def _socket_done_writing(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._forget_writer, sock)

    def _forget_writer(self, sock: object) -> None:
        assert self._loop is not None
        if sock is self._sock:
            self._loop.remove_writer(self._fd)

    def _read(self) -> None:
        self._client.loop_read()
        sock = self._sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending() and self._loop is not None:
            # TLS records OpenSSL has already read: the socket will not signal them.
            self._loop.call_soon(self._read)

    # --- paho callbacks (on the loop) -----------------------------------------------------
    def _handle_connect(self, client: paho.Client, userdata: Any, flags: Any,
                        reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker refused the connection: %s", reason_code)
            return
        if self._stopping:
            return  # a connect that finished while we were shutting down
        log.info("MQTT connected")
        client.publish(self.will_topic, "online", qos=1, retain=True)
        for topic in list(self._subscriptions):
            self._subscribe(topic)
        self.connected.set()
        self.on_connected()

    def _handle_disconnect(self, client: paho.Client, userdata: Any, flags: Any,
                           reason_code: Any, properties: Any) -> None:
        if not self._stopping:
            log.warning("MQTT disconnected (%s); reconnecting with backoff", reason_code)
        self._in_loop(self._lost_connection)

    def _lost_connection(self) -> None:
        self._lost.set()
        self.connected.clear()
        self.active_subscriptions.clear()
        self.on_disconnected()

    def _handle_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any,
                        properties: Any) -> None:
        if mid == self._offline_mid:
            self._offline_acked.set()
        self.on_ack(mid)

    def _handle_message(self, client: paho.Client, userdata: Any,
                        message: paho.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        self.on_message(Incoming(message.topic, bytes(message.payload), bool(message.retain),
                                 response_topic, correlation))

    def _handle_subscribe(self, client: paho.Client, userdata: Any, mid: int,
                          reason_codes: Any, properties: Any) -> None:
        topic = self._pending_subscribe.pop(mid, None)
        if topic is not None and topic in self._subscriptions:
            self.active_subscriptions.add(topic)

    # --- publishing -----------------------------------------------------------------------
    def publish(self, topic: str, payload: str | bytes, qos: int, retain: bool,
                correlation_data: bytes | None = None) -> int | None:
        """Hand one message to paho; its message id (for `on_ack`), or None if refused."""
        properties = None
        if correlation_data is not None and self.v5:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.CorrelationData = correlation_data
        info = self._client.publish(topic, payload, qos=qos, retain=retain,
                                    properties=properties)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            return None
        return info.mid

    def is_connected(self) -> bool:
        """paho's own view: true from the moment the CONNACK arrived."""
        return self._client.is_connected()

    # --- subscriptions ----------------------------------------------------------------------
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
            if self._client.is_connected():
                self._client.unsubscribe(topic)

    def _subscribe(self, topic: str) -> None:
        if self.v5:
            # retainAsPublished: tell live retained commands from plain ones.
            options = SubscribeOptions(qos=1, retainAsPublished=True)
            _, mid = self._client.subscribe(topic, options=options)
        else:
            _, mid = self._client.subscribe(topic, qos=1)
        if mid is not None:
            self._pending_subscribe[mid] = topic

