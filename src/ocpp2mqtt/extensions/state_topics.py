"""Per-key state topics: every value an event writes becomes `<prefix>/state/<key>`.

Retained, plain text: numbers without units (in the units of `ocpp/meter.py`),
`true`/`false`, JSON for structured values, an empty payload for a cleared value.
"""

from __future__ import annotations

from typing import Any

import orjson

from ocpp2mqtt import events as ev
from ocpp2mqtt.extensions import BaseExtension, Context
from ocpp2mqtt.state import Change, Key, StateUpdate, StationState, is_essential
from ocpp2mqtt.topics import state_subtopic


def format_number(value: float) -> str:
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(round(value, 6))  # readings are rounded already; aggregates may not be


def format_value(value: Any) -> str:
    kind = type(value)
    if kind is float:
        return format_number(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if value is None:
        return ""
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    return orjson.dumps(value).decode()


_targets: dict[Key, tuple[str, bool]] = {}


def _target(key: Key) -> tuple[str, bool]:
    """(sub-topic, essential) of a key; keys repeat (stations × measurands): remembered."""
    found = _targets.get(key)
    if found is None:
        if len(_targets) > 100_000:
            _targets.clear()
        found = _targets[key] = (state_subtopic(key), is_essential(key))
    return found


def render(state: StationState, changes: list[Change]) -> list[tuple[str, str, bool]]:
    """(sub-topic under the station prefix, payload, essential) for each shown change."""
    out = []
    targets = _targets
    for key, value in changes:
        if key.connector is not None and not state.shows(key.connector, key.name):
            continue
        subtopic, essential = targets.get(key) or _target(key)
        # readings (floats) are most of what is published: their format without a call
        if type(value) is float and value.is_integer() and abs(value) < 1e15:
            payload = str(int(value))
        else:
            payload = format_value(value)
        out.append((subtopic, payload, essential))
    return out


class StateTopicsExtension(BaseExtension):
    name = "state_topics"

    def __init__(self) -> None:
        self.last_payloads: dict[str, str] | None = None
        self._was_connected = False

    def start(self, ctx: Context) -> None:
        super().start(ctx)
        if not ctx.settings.mqtt_publish_unchanged:
            self.last_payloads = {}

    def on_event(self, event: ev.Event, state: StationState, update: StateUpdate) -> None:
        if not update.changes:
            return
        prefix = self.ctx.topics.prefix(event.station)
        last = self.last_payloads
        messages = [(f"{prefix}/{subtopic}", payload, essential)
                    for subtopic, payload, essential in render(state, update.changes)]
        if last is not None:
            # MQTT_PUBLISH_UNCHANGED=false: a retained topic already holds this value.
            fresh = []
            for message in messages:
                if last.get(message[0]) != message[1]:
                    last[message[0]] = message[1]
                    fresh.append(message)
            messages = fresh
        self.ctx.publish_retained(messages)

    def on_mqtt_connected(self) -> None:
        # After a reconnect the broker may have lost its retained messages: publish every
        # value again. Not on the first connect: what was queued before it is delivered
        # now, and forgetting it would publish the next unchanged value twice.
        if self.last_payloads and self._was_connected:
            self.last_payloads.clear()
        self._was_connected = True
