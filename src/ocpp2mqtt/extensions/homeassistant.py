"""Home Assistant MQTT discovery (issue 6).

One Home Assistant device per station, announced with *device-based
discovery* (https://www.home-assistant.io/integrations/mqtt/#device-discovery-payload,
Home Assistant 2024.12 or newer): one retained JSON document per station on

    <discovery_prefix>/device/ocpp2mqtt/<station-slug>/config

holding `device`, `origin`, the shared `availability` (the bridge's
`<basepath>/bridge/state` AND the station's `state/connection_state`,
`availability_mode: all`) and one entry per entity under `components`.
Entities point at the gateway's ordinary retained state topics and at the
ordinary `<prefix>/cmd` command topic with ordinary command JSON, so nothing
here is Home-Assistant-only.

What is discovered is table-driven (STATE_ENTITIES, MEASURAND_NAMES /
UNIT_CLASSES, CONTROLS) and only what has been reported: a state topic gets
its entity the first time the gateway publishes it (`voltage/l2_n` appears
with the first L2-N voltage), controls appear after the BootNotification.
Discovery is recomputed only when something new appears; a MeterValues frame
whose shape (measurands, phases, units) was seen before costs one tuple build
and a set lookup.

The set of entities only grows: a device-based discovery update that omits a
component deletes it in Home Assistant. After a gateway restart the retained
documents are read back first (we subscribe to our own discovery topics and
wait for a marker we publish ourselves, so everything retained has arrived)
and merged, so a restart never shrinks a station's entities.

Also handled:
- `<discovery_prefix>/status` = `online` (Home Assistant's birth message):
  every station's document is published again;
- `<basepath>/bridge/request/remove_station` with `{"station": "...", "id": ...}`
  (or the bare station id): the station's document is replaced by an empty
  retained message, which removes the device and all its entities; the
  answer goes to `<basepath>/bridge/response/remove_station`. The station is
  discovered again the next time it connects.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from ocpp.v16.enums import ChargePointErrorCode, ChargePointStatus

from ocpp2mqtt import __version__, mapping
from ocpp2mqtt import events as ev
from ocpp2mqtt.extensions.state_document import ConnectorTopics

if TYPE_CHECKING:
    from ocpp2mqtt.gateway import Gateway

log = logging.getLogger("ocpp2mqtt.homeassistant")

NODE_ID = "ocpp2mqtt"  # the <node_id> level of our discovery topics
ORIGIN = {"name": "ocpp2mqtt", "sw_version": __version__}
SYNC_TIMEOUT = 5.0  # give up waiting for our own marker (e.g. an ACL forbids it)
MAX_CURRENT = 32  # upper end of the current-limit number (A); CURRENT_LIMIT_MAX overrides
PLACEHOLDER = "__HA_VALUE__"
MAX_SHAPES = 64  # MeterValues shapes remembered per station (chargers use a handful)


@dataclass(frozen=True, slots=True)
class StateEntity:
    """An entity over a plain state topic `<prefix>/state/<key>`."""

    key: str
    platform: str
    name: str
    device_class: str | None = None
    state_class: str | None = None
    unit: str | None = None
    category: str | None = None
    icon: str | None = None
    per_connector: bool = False  # also for `state/connector/<n>/<key>`
    bridge_only: bool = False  # available while the station is disconnected, too
    options: tuple[tuple[str, Any], ...] = ()  # further documented config keys


STATE_ENTITIES: tuple[StateEntity, ...] = (
    StateEntity("connection_state", "binary_sensor", "Connected", "connectivity",
                category="diagnostic", bridge_only=True,
                options=(("payload_on", "CONNECTED"), ("payload_off", "DISCONNECTED"))),
    StateEntity("last_seen", "sensor", "Last seen", "timestamp", category="diagnostic",
                bridge_only=True),
    StateEntity("status", "sensor", "Status", "enum", per_connector=True,
                options=(("options", [s.value for s in ChargePointStatus]),)),
    StateEntity("error_code", "sensor", "Error code", "enum", category="diagnostic",
                per_connector=True,
                options=(("options", [c.value for c in ChargePointErrorCode]),)),
    StateEntity("status_info", "sensor", "Status info", category="diagnostic",
                per_connector=True),
    StateEntity("vendor_error_code", "sensor", "Vendor error code", category="diagnostic",
                per_connector=True),
    StateEntity("transaction_id", "sensor", "Transaction", icon="mdi:identifier",
                per_connector=True),
    StateEntity("id_tag", "sensor", "ID tag", icon="mdi:card-account-details"),
    StateEntity("session_energy", "sensor", "Session energy", "energy", unit="Wh"),
    StateEntity("last_boot", "sensor", "Last boot", "timestamp", category="diagnostic"),
    StateEntity("heartbeat", "sensor", "Last heartbeat", "timestamp", category="diagnostic",
                options=(("enabled_by_default", False),)),
    StateEntity("firmware_status", "sensor", "Firmware status", category="diagnostic"),
    StateEntity("diagnostics_status", "sensor", "Diagnostics status", category="diagnostic"),
)
_STATE_BY_KEY = {e.key: e for e in STATE_ENTITIES}

# Meter readings: every OCPP measurand (mapping.MEASURAND_KEYS) gets a sensor;
# these get friendlier names than the measurand's own.
MEASURAND_NAMES = {
    "energy_active_import_register": "Energy",
    "power_active_import": "Power",
    "current_import": "Current",
    "voltage": "Voltage",
    "soc": "State of charge",
    "current_offered": "Current offered",
    "power_offered": "Power offered",
    "rpm": "RPM",
}
# Published unit (mapping normalises k-units away) → (HA unit, device_class, state_class).
UNIT_CLASSES: dict[str | None, tuple[str | None, str | None, str | None]] = {
    "W": ("W", "power", "measurement"),
    "Wh": ("Wh", "energy", "total_increasing"),
    "A": ("A", "current", "measurement"),
    "V": ("V", "voltage", "measurement"),
    "Hz": ("Hz", "frequency", "measurement"),
    "var": ("var", "reactive_power", "measurement"),
    "varh": ("varh", None, "total_increasing"),
    "VA": ("VA", "apparent_power", "measurement"),
    "Celsius": ("°C", "temperature", "measurement"),
    "Fahrenheit": ("°F", "temperature", "measurement"),
    "K": ("K", "temperature", "measurement"),
    "Percent": ("%", None, "measurement"),
    None: (None, None, "measurement"),
}
_MEASURAND_BY_KEY = {key: name for name, key in mapping.MEASURAND_KEYS.items()}

CHARGING_STATES = ("Charging", "SuspendedEV", "SuspendedEVSE")  # the switch shows ON


@dataclass(frozen=True, slots=True)
class Control:
    """A control entity whose commands are ordinary `<prefix>/cmd` JSON."""

    id: str
    platform: str
    name: str
    action: str
    args: tuple[tuple[str, Any], ...] = ()
    per_connector: bool = False  # one per connector, with args.connector_id = n
    off_action: str | None = None  # switch: payload_off's action (payload_on uses `action`)
    value_arg: str | None = None  # number/select: the arg HA's value fills (command_template)
    state_template: str | None = None  # value_template over the connector's status topic
    options: tuple[tuple[str, Any], ...] = ()


CONTROLS: tuple[Control, ...] = (
    Control("restart", "button", "Restart", "reset", args=(("type", "Soft"),),
            options=(("device_class", "restart"), ("entity_category", "config"))),
    Control("unlock", "button", "Unlock", "unlock_connector", per_connector=True,
            options=(("icon", "mdi:lock-open-variant"),)),
    Control("charging", "switch", "Charging", "start_charging", per_connector=True,
            off_action="stop_charging",
            state_template="{{ 'ON' if value in " + str(list(CHARGING_STATES))
            + " else 'OFF' }}",
            options=(("icon", "mdi:ev-station"), ("state_on", "ON"), ("state_off", "OFF"))),
    Control("current_limit", "number", "Current limit", "set_current_limit",
            args=(("unit", "A"), ("connector_id", 0)), value_arg="limit",
            options=(("device_class", "current"), ("unit_of_measurement", "A"), ("min", 0),
                     ("max", MAX_CURRENT), ("step", 1), ("mode", "box"))),
    Control("availability", "select", "Availability", "change_availability",
            args=(("connector_id", 0),), value_arg="type",
            state_template="{{ 'Inoperative' if value == 'Unavailable' else 'Operative' }}",
            options=(("options", ["Operative", "Inoperative"]), ("entity_category", "config"))),
)

_SLUG_BAD = re.compile(r"[^A-Za-z0-9_-]")
_PHASE_LABELS = {"n": "N"}


def station_slug(station: str) -> str:
    """The station id as a discovery object id (`[a-zA-Z0-9_-]`), stable and unique."""
    slug = _SLUG_BAD.sub("_", station)
    if slug != station:
        slug += "_" + hashlib.sha1(station.encode()).hexdigest()[:6]
    return slug


def _phase_label(phase: str) -> str:
    return _PHASE_LABELS.get(phase) or phase.upper().replace("_", "-")


@dataclass(slots=True)
class _Station:
    name: str
    slug: str
    seen: set[str] = field(default_factory=set)  # published state subtopics
    shapes: set[tuple] = field(default_factory=set)  # MeterValues shapes already looked at
    units: dict[str, str | None] = field(default_factory=dict)  # measurand key[/phase] → unit
    connectors: set[int] = field(default_factory=set)
    boot: dict[str, str] = field(default_factory=dict)  # device fields from BootNotification
    booted: bool = False
    removed: bool = False  # by remove_station, until the station connects again
    recovered: dict = field(default_factory=dict)  # components from retained documents
    recovered_device: dict = field(default_factory=dict)
    broker: str | None = None  # the document the broker holds, as far as we know
    echoes: list[str] = field(default_factory=list)  # published, not yet seen back

    @property
    def uid(self) -> str:
        return f"{NODE_ID}_{self.slug}"

    def reset(self) -> None:
        """Forget what was discovered (remove_station); keep what the broker holds."""
        self.seen, self.shapes, self.units, self.connectors = set(), set(), {}, set()
        self.boot, self.booted, self.removed = {}, False, False
        self.recovered, self.recovered_device = {}, {}

    def empty(self) -> bool:
        return not (self.seen or self.booted or self.recovered)


class HomeAssistantExtension:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        s = gateway.settings
        self.discovery_prefix = s.homeassistant_discovery_prefix.strip("/") or "homeassistant"
        self.status_topic = f"{self.discovery_prefix}/status"
        self.config_prefix = f"{self.discovery_prefix}/device/{NODE_ID}/"
        bridge = gateway.bridge_topic.rsplit("/", 1)[0]  # "<basepath>/bridge"
        self.remove_topic = f"{bridge}/request/remove_station"
        self.remove_response_topic = f"{bridge}/response/remove_station"
        self.sync_topic = f"{bridge}/discovery_sync"
        self.stations: dict[str, _Station] = {}
        self.by_slug: dict[str, _Station] = {}
        self.retained: dict[str, str] = {}  # slug → document of a station not seen yet
        self.connector_topics = ConnectorTopics(s.connector_topics)
        self._views = (mapping.StationView(False), mapping.StationView(True))
        self.ready = False  # our retained documents have been read back
        self._sync_token: str | None = None
        self._sync_timer: asyncio.TimerHandle | None = None
        self._force_pending = False  # Home Assistant came online before we were ready
        self._dirty: dict[str, None] = {}
        self._scheduled = False
        self.published = 0

    # --- topics ----------------------------------------------------------------
    def subscriptions(self) -> list[str]:
        return [self.status_topic, f"{self.config_prefix}+/config", self.sync_topic,
                self.remove_topic]

    def config_topic(self, station: str) -> str:
        return f"{self.config_prefix}{station_slug(station)}/config"

    # --- events (hot path) ---------------------------------------------------------
    def handle(self, event: ev.Event) -> None:
        st = self.stations.get(event.station)
        if st is None:
            st = self._station(event.station)
        per_connector = self.connector_topics.update(event)
        if st.removed:
            if type(event) is not ev.Connected:
                return
            st.reset()  # removed by request, connected again: discover it afresh
        kind = type(event)
        changed = False
        if kind is ev.MeterReading:
            shape = self._shape(event, per_connector)
            if shape in st.shapes:
                return
            complete, changed = self._learn_units(st, event)
            if complete:  # only once every value was usable
                if len(st.shapes) >= MAX_SHAPES:
                    st.shapes.clear()
                st.shapes.add(shape)
        elif kind is ev.Booted:
            changed = self._boot(st, event.payload)
        connector = getattr(event, "connector_id", None)
        if connector and connector > 0 and connector not in st.connectors:
            st.connectors.add(connector)
            changed = True
        seen = st.seen
        for subtopic, _ in mapping.event_messages(event, self._views[per_connector]):
            if subtopic not in seen:
                seen.add(subtopic)
                changed = True
        if changed:
            self._mark(st)

    @staticmethod
    def _shape(e: ev.MeterReading, per_connector: bool) -> tuple:
        return (
            e.connector_id,
            per_connector,
            e.transaction_id is not None,
            tuple((s.get("measurand"), s.get("phase"), s.get("format"), s.get("unit"))
                  for entry in e.meter_value for s in entry.get("sampledValue", ())),
        )

    @staticmethod
    def _learn_units(st: _Station, e: ev.MeterReading) -> tuple[bool, bool]:
        """Record each reading's published unit → (every value usable, a unit changed)."""
        complete, changed = True, False
        for entry in e.meter_value:
            for sampled in entry.get("sampledValue", ()):
                reading = mapping.normalise(sampled)
                if reading is None:
                    complete = False
                    continue
                if reading.signed:
                    continue
                keys = [reading.key]
                if reading.phase is not None:
                    keys.append(f"{reading.key}/{reading.phase}")
                for key in keys:
                    if st.units.get(key, "?") != reading.unit:
                        st.units[key] = reading.unit
                        changed = True
        return complete, changed

    @staticmethod
    def _device_fields(payload: dict) -> dict[str, str]:
        fields = {
            "manufacturer": payload.get("chargePointVendor"),
            "model": payload.get("chargePointModel"),
            "sw_version": payload.get("firmwareVersion"),
            "serial_number": payload.get("chargePointSerialNumber")
            or payload.get("chargeBoxSerialNumber"),
        }
        return {k: str(v) for k, v in fields.items() if v}

    def _boot(self, st: _Station, payload: dict) -> bool:
        fields = self._device_fields(payload)
        if st.booted and fields == st.boot:
            return False
        st.boot = fields
        st.booted = True
        return True

    # --- stations ----------------------------------------------------------------
    def _station(self, name: str) -> _Station:
        st = _Station(name, station_slug(name))
        self.stations[name] = st
        self.by_slug[st.slug] = st
        retained = self.retained.pop(st.slug, None)
        if retained is not None:
            st.broker = retained
            self._merge(st, retained)
        return st

    @staticmethod
    def _merge(st: _Station, payload: str) -> None:
        """Adopt components and device fields of a document found on the broker."""
        if not payload:
            st.recovered, st.recovered_device = {}, {}
            return
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(doc, dict):
            return
        components = doc.get("components")
        if isinstance(components, dict):
            st.recovered.update(components)
        device = doc.get("device")
        if isinstance(device, dict):
            st.recovered_device.update(device)

    # --- the discovery document ------------------------------------------------------
    def document(self, st: _Station) -> dict:
        prefix = self.gateway.prefix(st.name)
        device = {**st.recovered_device, "identifiers": [st.uid], "name": st.name, **st.boot}
        return {
            "device": device,
            "origin": ORIGIN,
            "availability": [
                {"topic": self.gateway.bridge_topic},
                {"topic": f"{prefix}/state/connection_state",
                 "payload_available": "CONNECTED", "payload_not_available": "DISCONNECTED"},
            ],
            "availability_mode": "all",
            "qos": 1,
            "components": {**st.recovered, **self.components(st)},
        }

    def components(self, st: _Station) -> dict[str, dict]:
        prefix = self.gateway.prefix(st.name)
        multi = len(st.connectors) > 1
        out: dict[str, dict] = {}
        for subtopic in sorted(st.seen):
            described = self._state_component(st, prefix, subtopic)
            if described is not None:
                out[described[0]] = described[1]
        if st.booted:
            for control in CONTROLS:
                for cid, config in self._control_components(st, prefix, control, multi):
                    out[cid] = config
        return out

    def _state_component(self, st: _Station, prefix: str,
                         subtopic: str) -> tuple[str, dict] | None:
        parts = subtopic.split("/")[1:]  # drop "state"
        label = ""
        if parts[0] == "connector" and len(parts) >= 3:
            n = parts[1]
            label = "Charge point " if n == "0" else f"Connector {n} "
            rest = parts[2:]
        else:
            rest = parts
        key = rest[0]
        if len(rest) > 2 or rest[-1] == "signed_data":
            return None
        entity = _STATE_BY_KEY.get(key)
        if entity is not None:
            if len(rest) > 1 or (label and not entity.per_connector):
                return None
            name = label + entity.name
            config: dict[str, Any] = {"platform": entity.platform, "name": name}
            for option, value in (("device_class", entity.device_class),
                                  ("state_class", entity.state_class),
                                  ("unit_of_measurement", entity.unit),
                                  ("entity_category", entity.category),
                                  ("icon", entity.icon)):
                if value is not None:
                    config[option] = value
            config.update(entity.options)
            if entity.bridge_only:
                config["availability"] = [{"topic": self.gateway.bridge_topic}]
        elif key in _MEASURAND_BY_KEY:
            phase = rest[1] if len(rest) > 1 else None
            if label and phase is not None:
                return None  # per-connector phases: on the MQTT topics, not as entities
            unit_key = f"{key}/{phase}" if phase else key
            unit, device_class, state_class = UNIT_CLASSES.get(
                st.units.get(unit_key), (st.units.get(unit_key), None, "measurement"))
            if key.endswith("_interval"):
                state_class = None  # energy per interval is neither a total nor a measurement
            if key == "soc":
                device_class = "battery"
            elif key == "power_factor":
                device_class = "power_factor"
            name = label + (MEASURAND_NAMES.get(key)
                            or _MEASURAND_BY_KEY[key].replace(".", " ").capitalize())
            if phase:
                name += f" {_phase_label(phase)}"
            config = {"platform": "sensor", "name": name}
            for option, value in (("device_class", device_class), ("state_class", state_class),
                                  ("unit_of_measurement", unit)):
                if value is not None:
                    config[option] = value
        else:
            return None
        cid = "_".join(parts)
        config["unique_id"] = f"{st.uid}_{cid}"
        config["state_topic"] = f"{prefix}/{subtopic}"
        return cid, config

    def _status_topic(self, st: _Station, prefix: str, connector: int) -> str | None:
        for subtopic in (f"state/connector/{connector}/status", "state/status"):
            if subtopic in st.seen:
                return f"{prefix}/{subtopic}"
        return None

    def _control_components(self, st: _Station, prefix: str, control: Control,
                            multi: bool) -> list[tuple[str, dict]]:
        if control.per_connector:
            targets = [(n, f"{control.id}_{n}") for n in sorted(st.connectors or {1})]
        else:
            targets = [(0, control.id)]
        out = []
        for connector, cid in targets:
            state_topic = None
            if control.state_template is not None:
                state_topic = self._status_topic(st, prefix, connector)
                if state_topic is None and control.platform == "switch":
                    continue  # a charging switch needs the connector's status first
            args = dict(control.args)
            if control.per_connector:
                args["connector_id"] = connector
            name = control.name
            if control.per_connector and multi:
                name = f"Connector {connector} {name}"
            config: dict[str, Any] = {"platform": control.platform, "name": name,
                                      "unique_id": f"{st.uid}_{cid}",
                                      "command_topic": f"{prefix}/cmd"}
            if control.platform == "button":
                config["payload_press"] = _command(control.action, args)
            elif control.platform == "switch":
                config["payload_on"] = _command(control.action, args)
                config["payload_off"] = _command(control.off_action or control.action, args)
            else:
                quoted = control.platform == "select"
                config["command_template"] = _command(
                    control.action, {**args, control.value_arg: PLACEHOLDER}
                ).replace(f'"{PLACEHOLDER}"', '"{{ value }}"' if quoted else "{{ value }}")
            if state_topic is not None:
                config["state_topic"] = state_topic
                config["value_template"] = control.state_template
            config.update(control.options)
            if "max" in config and control.id == "current_limit":
                config["max"] = self.gateway.settings.current_limit_max
            out.append((cid, config))
        return out

    # --- publishing ------------------------------------------------------------------
    def _mark(self, st: _Station) -> None:
        self._dirty[st.name] = None
        if self.ready and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self, force: bool = False) -> None:
        """Publish the document of every changed station (all of them if `force`)."""
        self._scheduled = False
        if not self.ready:
            self._force_pending = self._force_pending or force
            return
        names = list(self.stations) if force else list(self._dirty)
        self._dirty = {}
        for name in names:
            st = self.stations[name]
            if st.removed or st.empty():
                continue
            body = orjson.dumps(self.document(st)).decode()
            if body == st.broker and not force:
                continue
            self.gateway.link.publish(self.config_topic(name), body, retain=True, qos=1)
            st.broker = body
            st.echoes.append(body)
            self.published += 1

    # --- MQTT ------------------------------------------------------------------------
    def on_mqtt_connected(self) -> None:
        """Read our retained documents back before publishing anything (see module doc)."""
        self.ready = False
        for st in self.stations.values():
            st.broker = None
            st.echoes.clear()
        token = os.urandom(8).hex()
        self._sync_token = token
        self.gateway.link.publish(self.sync_topic, token, retain=False, qos=0)
        if self._sync_timer is not None:
            self._sync_timer.cancel()
        self._sync_timer = asyncio.get_running_loop().call_later(
            SYNC_TIMEOUT, self._synced, token, True)

    def _synced(self, token: str, timed_out: bool = False) -> None:
        if token != self._sync_token or self.ready:
            return
        if timed_out and not self.gateway.link.connected.is_set():
            return  # disconnected (or stopped) meanwhile: the next connect starts over
        if timed_out:
            log.warning("no echo on %s within %g s; publishing discovery without reading "
                        "back retained documents", self.sync_topic, SYNC_TIMEOUT)
        elif self._sync_timer is not None:
            self._sync_timer.cancel()
        self._sync_timer = None
        self.ready = True
        for name in self.stations:
            self._dirty[name] = None
        force, self._force_pending = self._force_pending, False
        self.flush(force)

    def on_mqtt_message(self, topic: str, payload: bytes) -> bool:
        if topic.startswith(self.config_prefix) and topic.endswith("/config"):
            self._document_received(topic[len(self.config_prefix):-7], payload.decode())
            return True
        if topic == self.status_topic:
            if payload == b"online":
                log.info("Home Assistant is online: publishing discovery again")
                self.flush(force=True)
            return True
        if topic == self.sync_topic:
            self._synced(payload.decode())
            return True
        if topic == self.remove_topic:
            if payload:
                self._remove_station(payload)
            return True
        return False

    def _document_received(self, slug: str, body: str) -> None:
        st = self.by_slug.get(slug)
        if st is None:
            if body:
                self.retained[slug] = body
            else:
                self.retained.pop(slug, None)
            return
        if body in st.echoes:  # our own publish coming back
            del st.echoes[: st.echoes.index(body) + 1]
            st.broker = body
            return
        st.broker = body
        self._merge(st, body)  # written by an earlier run (or someone else): keep it
        if body and not st.removed:
            self._mark(st)

    # --- bridge/request/remove_station -------------------------------------------------
    def _remove_station(self, payload: bytes) -> None:
        request_id = None
        station = None
        try:
            request = orjson.loads(payload)
        except orjson.JSONDecodeError:
            request = payload.decode(errors="replace").strip()
        if isinstance(request, dict):
            request_id = request.get("id")
            station = request.get("station")
        elif isinstance(request, str):
            station = request
        if not isinstance(station, str) or not station:
            self._respond(request_id, "error", {}, 'expected {"station": "<station id>", '
                          '"id": <optional request id>} or the bare station id')
            return
        slug = station_slug(station)
        st = self.stations.get(station)
        known = (st is not None and not st.removed and not st.empty()) or slug in self.retained
        if not known:
            self._respond(request_id, "error", {"station": station},
                          f"no Home Assistant discovery known for station {station!r}")
            return
        entities = 0
        if st is not None and not st.removed:
            entities = len(self.document(st)["components"])
        elif slug in self.retained:
            try:
                entities = len(orjson.loads(self.retained[slug]).get("components", {}))
            except (orjson.JSONDecodeError, AttributeError):
                entities = 0
        self.retained.pop(slug, None)
        self.gateway.link.publish(self.config_topic(station), "", retain=True, qos=1)
        if st is not None:
            st.reset()
            st.removed = True
            st.broker = ""
            st.echoes.append("")
        log.info("removed Home Assistant discovery of %s (%d entities)", station, entities)
        self._respond(request_id, "ok", {"station": station, "entities": entities,
                                         "discovery_topic": self.config_topic(station)}, None)

    def _respond(self, request_id: Any, status: str, data: dict, error: str | None) -> None:
        body = orjson.dumps({"id": request_id, "status": status, "data": data, "error": error})
        self.gateway.link.publish(self.remove_response_topic, body.decode(), retain=False)


def _command(action: str, args: dict) -> str:
    return orjson.dumps({"action": action, "args": args}).decode()
