"""Home Assistant MQTT discovery (issue 6). Placeholder until implemented."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ocpp2mqtt.events import Event

if TYPE_CHECKING:
    from ocpp2mqtt.gateway import Gateway


class HomeAssistantExtension:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def handle(self, event: Event) -> None:
        pass

    def on_mqtt_connected(self) -> None:
        pass

    def on_mqtt_message(self, topic: str, payload: bytes) -> bool:
        """Return True if the message was for this extension (e.g. homeassistant/status)."""
        return False

    def subscriptions(self) -> list[str]:
        """Topics this extension wants to receive via on_mqtt_message."""
        return []
