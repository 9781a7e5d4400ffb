"""The gateway's one MQTT connection.

paho-mqtt runs its network loop in its own thread; `publish` only appends to
paho's queue and never awaits, so a slow or absent broker cannot stall a
charger's OCPP answers. paho keeps QoS≥1 messages queued while the broker is
away and sends them, in order, after reconnecting (backoff between
MQTT_RECONNECT_BASE_DELAY and MQTT_RECONNECT_MAX_DELAY). The last will marks
`<basepath>/bridge/state` offline; `online` is published on every connect.
"""

from __future__ import annotations

import asyncio
import contextlib
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

log = logging.getLogger("ocpp2mqtt.mqtt")


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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscriptions: set[str] = set()
        self._pending_subscribe: dict[int, str] = {}
        self._subscribe_lock = threading.Lock()
        self.active_subscriptions: set[str] = set()  # acknowledged by the broker
        self._on_message: Callable[[Incoming], None] | None = None
        self._on_connect: Callable[[], None] | None = None
        self.published = 0
        self._v5 = settings.mqtt_protocol == "5"
        self._client = self._make_client()

    def _make_client(self) -> paho.Client:
        s = self.settings
        transport = s.mqtt_transport
        client = paho.Client(
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
        tls = getattr(s, "mqtt_tls", False)
        if tls:
            self._configure_tls(client)
        client.will_set(self.bridge_topic, "offline", qos=1, retain=True)
        base, maximum = s.reconnect_delays
        client.reconnect_delay_set(min_delay=max(1, int(base)), max_delay=max(1, int(maximum)))
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(1000)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_subscribe = self._handle_subscribe
        client.enable_logger(logging.getLogger("ocpp2mqtt.paho"))
        return client

    def _configure_tls(self, client: paho.Client) -> None:
        s = self.settings
        ctx = ssl.create_default_context(cafile=getattr(s, "mqtt_tls_ca_file", "") or None)
        cert = getattr(s, "mqtt_tls_cert_file", "")
        if cert:
            ctx.load_cert_chain(cert, getattr(s, "mqtt_tls_key_file", "") or None)
        if getattr(s, "mqtt_tls_insecure", False):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        client.tls_set_context(ctx)

    # --- lifecycle -------------------------------------------------------
    def start(
        self,
        on_message: Callable[[Incoming], None],
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_message = on_message
        self._on_connect = on_connect
        s = self.settings
        log.info(
            "connecting to MQTT broker %s:%s (%s, client id %s)",
            s.mqtt_hostname, s.mqtt_port, s.mqtt_transport, self.client_id,
        )
        self._client.connect_async(
            s.mqtt_hostname, s.mqtt_port if s.mqtt_transport != "unix" else 0,
            keepalive=s.mqtt_keepalive,
            clean_start=True if self._v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
        )
        self._client.loop_start()

    async def stop(self, timeout: float = 5.0) -> None:
        """Publish offline, flush what is queued (bounded), disconnect."""
        if self._loop is None:
            return
        if self.connected.is_set():
            info = self._client.publish(self.bridge_topic, "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                await asyncio.to_thread(info.wait_for_publish, timeout)
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        self.connected.clear()

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

    def _connected_in_loop(self) -> None:
        self.connected.set()
        if self._on_connect:
            self._on_connect()

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

    async def wait_subscribed(self, topic: str, timeout: float = 10.0) -> None:
        """Wait until the broker has acknowledged our subscription to `topic`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while topic not in self.active_subscriptions:
            if loop.time() > deadline:
                raise TimeoutError(f"subscription to {topic} not acknowledged")
            await asyncio.sleep(0.01)

    def _handle_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self.active_subscriptions.clear)
        log.warning("MQTT disconnected (%s); reconnecting with backoff", reason_code)
        self._loop.call_soon_threadsafe(self.connected.clear)

    def _handle_message(self, client, userdata, message: paho.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        incoming = Incoming(
            message.topic, bytes(message.payload), bool(message.retain), response_topic, correlation
        )
        if self._loop is not None and self._on_message is not None:
            self._loop.call_soon_threadsafe(self._on_message, incoming)

    # --- API -------------------------------------------------------------
    def publish(
        self,
        topic: str,
        payload: str | bytes,
        retain: bool = True,
        qos: int | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        """Queue a message; never blocks, never raises for a missing broker."""
        properties = None
        if correlation_data is not None and self._v5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation_data
        self._client.publish(
            topic,
            payload,
            qos=self.settings.mqtt_qos if qos is None else qos,
            retain=retain,
            properties=properties,
        )
        self.published += 1

    def queue_depth(self) -> int:
        """Messages paho holds that the broker has not acknowledged yet."""
        return len(getattr(self._client, "_out_messages", ()))

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
