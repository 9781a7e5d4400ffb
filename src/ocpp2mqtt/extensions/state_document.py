"""One JSON state document per station on `<prefix>/state` (issue 6). Placeholder."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ocpp2mqtt.events import Event

if TYPE_CHECKING:
    from ocpp2mqtt.gateway import Gateway


class StateDocumentExtension:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def handle(self, event: Event) -> None:
        pass

    def on_mqtt_connected(self) -> None:
        pass
