"""Every MQTT topic name the gateway uses, in one place. Pure.

`<prefix>` is MQTT_BASEPATH, plus `/<station-id>` when MQTT_USESTATIONNAME=true
(joined with exactly one `/`); without it all stations share the base path, as
in the original ocpp2mqtt.
"""

from __future__ import annotations

from ocpp2mqtt.config import Settings
from ocpp2mqtt.state import Key

NODE_ID = "ocpp2mqtt"  # the <node_id> level of our Home Assistant discovery topics
_SUBTOPIC_CACHE_LIMIT = 100_000
_subtopics: dict[Key, str] = {}


def station_prefix(basepath: str, station: str, use_station_name: bool) -> str:
    """`MQTT_BASEPATH` (already stripped of stray slashes) joined with one `/`."""
    if not use_station_name:
        return basepath
    return f"{basepath}/{station}" if basepath else station


def state_subtopic(key: Key) -> str:
    """`state/[connector/<n>/]<name>[/<phase>][/signed_data]`, relative to the prefix."""
    topic = _subtopics.get(key)
    if topic is None:
        parts = ["state"]
        if key.connector is not None:
            parts += ["connector", str(key.connector)]
        parts.append(key.name)
        if key.phase:
            parts.append(key.phase)
        if key.signed:
            parts.append("signed_data")
        topic = "/".join(parts)
        if len(_subtopics) >= _SUBTOPIC_CACHE_LIMIT:
            _subtopics.clear()
        _subtopics[key] = topic
    return topic


def _join(base: str, rest: str) -> str:
    return f"{base}/{rest}" if base else rest


class Topics:
    def __init__(self, settings: Settings):
        self.base = settings.mqtt_basepath
        self.per_station = settings.mqtt_usestationname
        self.bridge = _join(self.base, "bridge")
        self.bridge_state = f"{self.bridge}/state"
        self.bridge_requests = f"{self.bridge}/request/+"
        discovery = settings.homeassistant_discovery_prefix.strip("/") or "homeassistant"
        self.discovery_status = f"{discovery}/status"
        self.discovery_devices = f"{discovery}/device/{NODE_ID}/"
        self.discovery_configs = f"{self.discovery_devices}+/config"
        self.discovery_sync = f"{self.bridge}/discovery_sync"
        self.discovery_groups = f"{discovery}/device/{NODE_ID}_groups/"  # + <group>/config
        # Which replica holds which station (docs/scaling.md); per-station prefixes only.
        self.owner_claims = self.state(station="+", key=Key("gateway")) if self.per_station \
            else None

    def prefix(self, station: str) -> str:
        return station_prefix(self.base, station, self.per_station)

    def state(self, station: str, key: Key) -> str:
        return f"{self.prefix(station)}/{state_subtopic(key)}"

    def document(self, station: str) -> str:
        return f"{self.prefix(station)}/state"

    def command(self, station: str) -> str:
        return f"{self.prefix(station)}/cmd"

    def command_result(self, station: str) -> str:
        return f"{self.prefix(station)}/cmd_result"

    def upstream(self, station: str, name: str, leaf: str) -> str:
        """`<prefix>/upstream/<name>/<leaf>`: a back office the station is relayed to."""
        return f"{self.prefix(station)}/upstream/{name}/{leaf}"

    def config(self, station: str, key: str) -> str:
        return f"{self.prefix(station)}/config/{key}"

    def config_result(self, station: str, key: str) -> str:
        return f"{self.prefix(station)}/config_result/{key}"

    def bridge_request(self, name: str) -> str:
        return f"{self.bridge}/request/{name}"

    def bridge_response(self, name: str) -> str:
        return f"{self.bridge}/response/{name}"

    def request_name(self, topic: str) -> str | None:
        """`<bridge>/request/<name>` → name."""
        head = f"{self.bridge}/request/"
        return topic[len(head):] if topic.startswith(head) else None

    def station_of(self, topic: str, suffix: str) -> str | None:
        """The station of a per-station topic `<base>/<station>/<suffix>`."""
        if not (self.per_station and topic.endswith(f"/{suffix}")):
            return None
        head = f"{self.base}/" if self.base else ""
        if not topic.startswith(head):
            return None
        station = topic[len(head):-len(suffix) - 1]
        return station if station and "/" not in station else None

    def discovery_config(self, slug: str) -> str:
        return f"{self.discovery_devices}{slug}/config"

    def discovery_slug(self, topic: str) -> str | None:
        if topic.startswith(self.discovery_devices) and topic.endswith("/config"):
            return topic[len(self.discovery_devices):-len("/config")]
        return None
