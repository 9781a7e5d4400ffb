"""What the gateway uses of its MQTT connection (`Transport`; the connection is
lean.py), what arrives on it (`Incoming`), and its TLS context."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ocpp2mqtt.config import Settings


@dataclass(slots=True)
class Incoming:
    topic: str
    payload: bytes
    retain: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None


def tls_context(s: Settings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=s.mqtt_tls_ca_file or None)
    if s.mqtt_tls_cert_file:
        ctx.load_cert_chain(s.mqtt_tls_cert_file, s.mqtt_tls_key_file or None)
    if s.mqtt_tls_insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Transport(Protocol):
    """What the publisher, the router and the gateway use of an MQTT connection."""

    connected: asyncio.Event
    active_subscriptions: set[str]
    on_message: Callable[[Incoming], None]
    on_connected: Callable[[], None]
    on_disconnected: Callable[[], None]
    on_ack: Callable[[int], None]

    def start(self) -> None: ...

    async def disconnect(self, timeout: float) -> None: ...

    async def wait_connected(self, timeout: float) -> bool: ...

    def is_connected(self) -> bool: ...

    def publish(self, topic: str, payload: str | bytes, qos: int, retain: bool,
                correlation_data: bytes | None = None) -> int | None: ...

    def subscribe(self, topic: str) -> None: ...

    def unsubscribe(self, topic: str) -> None: ...

    async def wait_subscribed(self, topic: str, timeout: float = 10.0) -> None: ...


class Waits:
    """Waiting for the connection and for subscriptions, as a mixin."""

    connected: asyncio.Event
    active_subscriptions: set[str]

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.connected.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def wait_subscribed(self, topic: str, timeout: float = 10.0) -> None:
        """Wait until the broker has acknowledged our subscription to `topic`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while topic not in self.active_subscriptions:
            if loop.time() > deadline:
                raise TimeoutError(f"subscription to {topic} not acknowledged")
            await asyncio.sleep(0.01)
