"""Features that read the gateway's event stream (the Zigbee2MQTT "extension" idea).

An extension has `handle(event)`; it may publish through the gateway's MQTT
link and must never block (handlers run inline on the OCPP hot path).
"""

from __future__ import annotations

from typing import Protocol

from ocpp2mqtt.events import Event


class Extension(Protocol):
    def handle(self, event: Event) -> None: ...

    def on_mqtt_connected(self) -> None: ...
