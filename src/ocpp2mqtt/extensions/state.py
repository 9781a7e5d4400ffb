"""State topics: every event becomes retained `<prefix>/state/...` messages."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ocpp2mqtt import events as ev
from ocpp2mqtt import mapping

if TYPE_CHECKING:
    from ocpp2mqtt.gateway import Gateway


class StateExtension:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.views: dict[str, mapping.StationView] = {}
        self.last_payloads: dict[str, str] | None = (
            None if gateway.settings.mqtt_publish_unchanged else {}
        )
        self._was_connected = False

    def _view(self, event: ev.Event) -> mapping.StationView:
        view = self.views.get(event.station)
        if view is None:
            mode = self.gateway.settings.connector_topics
            view = mapping.StationView(connector_topics=mode == "always")
            self.views[event.station] = view
        connector = getattr(event, "connector_id", None)
        if (
            connector is not None
            and connector >= 2
            and not view.connector_topics
            and self.gateway.settings.connector_topics == "auto"
        ):
            # A second connector appeared: from now on every connector also
            # gets its own topics so the plain ones are not the only record.
            view.connector_topics = True
        return view

    def handle(self, event: ev.Event) -> None:
        messages = mapping.event_messages(event, self._view(event))
        if not messages:
            return
        prefix = self.gateway.prefix(event.station)
        publish = self.gateway.link.publish
        last = self.last_payloads
        for subtopic, payload in messages:
            topic = f"{prefix}/{subtopic}"
            if last is not None:
                # MQTT_PUBLISH_UNCHANGED=false: a retained topic already holds this value.
                if last.get(topic) == payload:
                    continue
                last[topic] = payload
            publish(topic, payload, True)

    def on_mqtt_connected(self) -> None:
        # After a reconnect the broker may have lost its retained messages: publish every
        # value again. Not on the first connect: what was queued before it is delivered
        # now, and forgetting it would publish the next unchanged value twice.
        if self.last_payloads and self._was_connected:
            self.last_payloads.clear()
        self._was_connected = True
