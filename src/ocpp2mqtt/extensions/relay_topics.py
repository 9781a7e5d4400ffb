"""The relay on MQTT (docs/relay.md): per back office of a station,

- `<prefix>/upstream/<name>/connection_state`: `CONNECTED` / `DISCONNECTED`, retained;
- `<prefix>/upstream/<name>/queue`: messages waiting for it, retained;
- `<prefix>/upstream/<name>/command`: one JSON per CALL it sent the station,
  `{"action", "payload", "allowed", "response"}`, not retained.
"""

from __future__ import annotations

import orjson

from ocpp2mqtt import events as ev
from ocpp2mqtt.extensions import BaseExtension
from ocpp2mqtt.state import StateUpdate, StationState


class RelayTopicsExtension(BaseExtension):
    name = "relay_topics"

    def __init__(self) -> None:
        self._last: dict[str, str] = {}  # retained topic → payload published

    def on_event(self, event: ev.Event, state: StationState, update: StateUpdate) -> None:
        kind = type(event)
        if kind is ev.UpstreamChanged:
            assert isinstance(event, ev.UpstreamChanged)
            topics = self.ctx.topics
            for leaf, payload in (
                ("connection_state", "CONNECTED" if event.connected else "DISCONNECTED"),
                ("queue", str(event.queue)),
            ):
                topic = topics.upstream(event.station, event.upstream, leaf)
                if self._last.get(topic) != payload:
                    self._last[topic] = payload
                    self.ctx.publish(topic, payload)
        elif kind is ev.UpstreamCommanded:
            assert isinstance(event, ev.UpstreamCommanded)
            body = orjson.dumps({"action": event.action, "payload": event.payload,
                                 "allowed": event.allowed, "response": event.response})
            self.ctx.publish(self.ctx.topics.upstream(event.station, event.upstream, "command"),
                             body, retain=False)

    def on_mqtt_connected(self) -> None:
        # The broker may have lost retained values while we were away: publish them again.
        self._last.clear()
        for station, state in self.ctx.stations().items():
            for name, status in state.upstreams.items():
                self.on_event(ev.UpstreamChanged(station, self.ctx.now(), upstream=name,
                                                 connected=status.connected,
                                                 queue=status.queue),
                              state, StateUpdate())
