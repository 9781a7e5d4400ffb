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
UNIT_CLASSES, CONTROLS) and only what has been reported: a state key gets
its entity the first time the station's state writes it (`voltage/l2_n` appears
with the first L2-N voltage), controls appear after the BootNotification.
Units and device fields come from the typed station state. Discovery is
recomputed only when the state says something new appeared (a key, phase,
unit, connector or boot information); a MeterValues frame of a known shape
costs a set lookup per value.

The set of entities only grows: a device-based discovery update that omits a
component deletes it in Home Assistant. After a gateway restart the retained
documents are read back first (we subscribe to our own discovery topics and
wait for a marker we publish ourselves, so everything retained has arrived)
and merged, so a restart never shrinks a station's entities.

Also handled:
- `<discovery_prefix>/status` = `online` (Home Assistant's birth message):
  every station's document is published again;
- the bridge request `remove_station` (`<basepath>/bridge/request/remove_station`
  with `{"station": "...", "id": ...}` or the bare station id, see
  extensions/bridge.py): the station's document is replaced by an empty
  retained message, which removes the device and all its entities. The station
  is discovered again the next time it connects.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from ocpp.v16.enums import ChargePointErrorCode, ChargePointStatus
from ocpp.v201.enums import ChargingStateEnumType, ConnectorStatusEnumType

from ocpp2mqtt import __version__
from ocpp2mqtt import events as ev
from ocpp2mqtt.extensions import BaseExtension, BridgeResponse, Context
from ocpp2mqtt.measurands import MEASURANDS_BY_KEY
from ocpp2mqtt.mqtt.transport import Incoming
from ocpp2mqtt.state import Key, StateUpdate, StationState
from ocpp2mqtt.topics import NODE_ID, state_subtopic

log = logging.getLogger("ocpp2mqtt.homeassistant")

ORIGIN = {"name": "ocpp2mqtt", "sw_version": __version__}
# Discovery documents wait until no station has changed for DISCOVERY_DELAY (a charger's
# connect, boot and status are then one document), but no longer than DISCOVERY_MAX_WAIT
# while stations keep changing (a reconnect storm: one document per station, after the
# chargers' own answers, instead of two or three during them).
DISCOVERY_DELAY = 0.1  # s
DISCOVERY_MAX_WAIT = 2.0  # s
# Documents (a few KiB each) go out in chunks 10 ms apart: the broker's PUBACKs free the
# ones before while the next are rendered. 1,000 at once held ~9 MB in flight, and the
# process kept that memory (bench: RSS per idle charger 27 KiB instead of 19).
DISCOVERY_CHUNK = 50
DISCOVERY_CHUNK_GAP = 0.01  # s
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
    StateEntity("connector_status", "sensor", "Connector status", "enum", category="diagnostic",
                per_connector=True,
                options=(("options", [s.value for s in ConnectorStatusEnumType]),)),
    StateEntity("charging_state", "sensor", "Charging state", "enum", category="diagnostic",
                per_connector=True,
                options=(("options", [s.value for s in ChargingStateEnumType]),)),
    StateEntity("ocpp_version", "sensor", "OCPP version", category="diagnostic",
                icon="mdi:protocol"),
    StateEntity("boot_reason", "sensor", "Boot reason", category="diagnostic"),
    StateEntity("last_boot", "sensor", "Last boot", "timestamp", category="diagnostic"),
    StateEntity("heartbeat", "sensor", "Last heartbeat", "timestamp", category="diagnostic",
                options=(("enabled_by_default", False),)),
    StateEntity("current_limit", "sensor", "Current limit in force", "current",
                "measurement", "A"),
    StateEntity("current_limit_status", "sensor", "Current limit status", "enum",
                category="diagnostic",
                options=(("options", ["applied", "pending", "rejected", "unsupported"]),)),
    StateEntity("current_limit_source", "sensor", "Current limit source", category="diagnostic"),
    StateEntity("firmware_status", "sensor", "Firmware status", category="diagnostic"),
    StateEntity("diagnostics_status", "sensor", "Diagnostics status", category="diagnostic"),
)
_STATE_BY_KEY = {e.key: e for e in STATE_ENTITIES}

# Meter readings: every OCPP measurand (ocpp/meter.py) gets a sensor;
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
# Published unit (ocpp/meter.py normalises k-units away) → (HA unit, device_class, state_class).
UNIT_CLASSES: dict[str | None, tuple[str | None, str | None, str | None]] = {
    "W": ("W", "power", "measurement"),
    "Wh": ("Wh", "energy", "total_increasing"),
    "A": ("A", "current", "measurement"),
    "V": ("V", "voltage", "measurement"),
    "Hz": ("Hz", "frequency", "measurement"),
    "var": ("var", "reactive_power", "measurement"),
    "varh": ("varh", None, "total_increasing"),
    "VA": ("VA", "apparent_power", "measurement"),
    "VAh": ("VAh", None, "total_increasing"),
    "Celsius": ("°C", "temperature", "measurement"),
    "Fahrenheit": ("°F", "temperature", "measurement"),
    "K": ("K", "temperature", "measurement"),
    "Percent": ("%", None, "measurement"),
    None: (None, None, "measurement"),
}

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

# A back office of a relayed station (docs/relay.md): (topic leaf, name, config).
UPSTREAM_ENTITIES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("connection_state", "Back office {name}",
     {"platform": "binary_sensor", "device_class": "connectivity",
      "payload_on": "CONNECTED", "payload_off": "DISCONNECTED"}),
    ("queue", "Back office {name} queue",
     {"platform": "sensor", "state_class": "measurement", "unit_of_measurement": "messages",
      "icon": "mdi:tray-full"}),
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
    seen: set[Key] = field(default_factory=set)  # shown state keys written since discovery
    connectors: set[int] = field(default_factory=set)
    boot: dict[str, str] = field(default_factory=dict)  # device fields from BootNotification
    booted: bool = False
    removed: bool = False  # by remove_station, until the station connects again
    recovered: dict[str, Any] = field(default_factory=dict)  # components from retained documents
    recovered_device: dict[str, Any] = field(default_factory=dict)
    # The document the broker holds as far as we know, and ours published but not yet
    # seen back: digests (_digest), not the documents (a few KiB per station).
    broker: bytes | None = None
    echoes: list[bytes] = field(default_factory=list)
    upstreams: set[str] = field(default_factory=set)  # back offices it is relayed to

    @property
    def uid(self) -> str:
        return f"{NODE_ID}_{self.slug}"

    def reset(self) -> None:
        """Forget what was discovered (remove_station); keep what the broker holds."""
        self.seen, self.connectors, self.upstreams = set(), set(), set()
        self.boot, self.booted, self.removed = {}, False, False
        self.recovered, self.recovered_device = {}, {}

    def empty(self) -> bool:
        return not (self.seen or self.booted or self.recovered or self.upstreams)


def _device_fields(info: ev.BootInfo) -> dict[str, str]:
    fields = {
        "manufacturer": info.vendor,
        "model": info.model,
        "sw_version": info.firmware_version,
        "serial_number": info.charge_point_serial_number or info.charge_box_serial_number,
    }
    return {k: str(v) for k, v in fields.items() if v}


def _component_id(key: Key) -> str:
    return state_subtopic(key)[len("state/"):].replace("/", "_")


class HomeAssistantExtension(BaseExtension):
    name = "homeassistant"

    def __init__(self) -> None:
        self.stations: dict[str, _Station] = {}
        self.by_slug: dict[str, _Station] = {}
        # slug → the document of a station not seen yet, zlib-compressed: after a restart
        # every station's is read back, and they are a few KiB each.
        self.retained: dict[str, bytes] = {}
        self.ready = False  # our retained documents have been read back
        self._sync_token: str | None = None
        self._sync_timer: asyncio.TimerHandle | None = None
        self._force_pending = False  # Home Assistant came online before we were ready
        self._dirty: dict[str, None] = {}  # stations whose document is to be published
        self._forced: set[str] = set()  # … even if the broker holds it already
        self._draining = False  # a chunk is due
        self._scheduled = False
        self._first_mark = self._last_mark = 0.0  # clock(): the changes waiting to go
        self.clock: Callable[[], float] = lambda: asyncio.get_running_loop().time()
        self.published = 0

    def start(self, ctx: Context) -> None:
        super().start(ctx)
        t = ctx.topics
        ctx.subscribe(t.discovery_status, self._on_status)
        ctx.subscribe(t.discovery_configs, self._on_document)
        ctx.subscribe(t.discovery_sync, self._on_sync)
        ctx.handle_request("remove_station", self._remove_station)

    async def stop(self) -> None:
        if self._sync_timer is not None:
            self._sync_timer.cancel()

    def config_topic(self, station: str) -> str:
        return self.ctx.topics.discovery_config(station_slug(station))

    # --- events (hot path) ---------------------------------------------------------
    def on_event(self, event: ev.Event, state: StationState, update: StateUpdate) -> None:
        st = self.stations.get(event.station)
        if st is None:
            st = self._station(event.station)
        if st.removed:
            if type(event) is not ev.Connected:
                return
            st.reset()  # removed by request, connected again: discover it afresh
        changed = update.structural
        if type(event) is ev.Booted:
            changed = self._boot(st, event.info) or changed
        elif type(event) is ev.UpstreamChanged and event.upstream not in st.upstreams:
            st.upstreams.add(event.upstream)
            changed = True
        connector = getattr(event, "connector_id", None)
        if connector and connector > 0 and connector not in st.connectors:
            st.connectors.add(connector)
            changed = True
        seen = st.seen
        for key, _ in update.changes:
            if key not in seen and (key.connector is None
                                    or state.shows(key.connector, key.name)):
                seen.add(key)
                changed = True
        if changed:
            self._mark(st)

    def _boot(self, st: _Station, info: ev.BootInfo) -> bool:
        fields = _device_fields(info)
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
        packed = self.retained.pop(st.slug, None)
        if packed is not None:
            retained = zlib.decompress(packed).decode(errors="replace")
            st.broker = _digest(retained)
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
    def document(self, st: _Station) -> dict[str, Any]:
        t = self.ctx.topics
        device = {**st.recovered_device, "identifiers": [st.uid], "name": st.name, **st.boot}
        return {
            "device": device,
            "origin": ORIGIN,
            "availability": [
                {"topic": t.bridge_state},
                {"topic": t.state(st.name, Key("connection_state")),
                 "payload_available": "CONNECTED", "payload_not_available": "DISCONNECTED"},
            ],
            "availability_mode": "all",
            "qos": 1,
            "components": {**st.recovered, **self.components(st)},
        }

    def components(self, st: _Station) -> dict[str, dict[str, Any]]:
        state = self.ctx.state(st.name)
        multi = len(st.connectors) > 1
        out: dict[str, dict[str, Any]] = {}
        for key in sorted(st.seen, key=state_subtopic):
            config = self._state_component(st, state, key)
            if config is not None:
                out[_component_id(key)] = config
        if st.booted:
            for control in CONTROLS:
                for cid, config in self._control_components(st, control, multi):
                    out[cid] = config
        for name in sorted(st.upstreams):
            out.update(self._upstream_components(st, name))
        return out

    def _upstream_components(self, st: _Station, name: str) -> dict[str, dict[str, Any]]:
        """A back office the station is relayed to (docs/relay.md): its link and queue.
        Available while the station is offline too: the queue drains meanwhile."""
        topics = self.ctx.topics
        out = {}
        for leaf, label, options in UPSTREAM_ENTITIES:
            cid = f"upstream_{name}_{leaf}"
            out[cid] = {**options, "name": label.format(name=name),
                        "entity_category": "diagnostic",
                        "availability": [{"topic": topics.bridge_state}],
                        "state_topic": topics.upstream(st.name, name, leaf),
                        "unique_id": f"{st.uid}_{cid}"}
        return out

    def _state_component(self, st: _Station, state: StationState | None,
                         key: Key) -> dict[str, Any] | None:
        label = ""
        if key.connector is not None:
            label = "Charge point " if key.connector == 0 else f"Connector {key.connector} "
        if key.signed:
            return None
        entity = _STATE_BY_KEY.get(key.name)
        if entity is not None:
            if key.phase is not None or (label and not entity.per_connector):
                return None
            config: dict[str, Any] = {"platform": entity.platform, "name": label + entity.name}
            for option, value in (("device_class", entity.device_class),
                                  ("state_class", entity.state_class),
                                  ("unit_of_measurement", entity.unit),
                                  ("entity_category", entity.category),
                                  ("icon", entity.icon)):
                if value is not None:
                    config[option] = value
            config.update(entity.options)
            if entity.bridge_only:
                config["availability"] = [{"topic": self.ctx.topics.bridge_state}]
        elif key.name in MEASURANDS_BY_KEY:
            if label and key.phase is not None:
                return None  # per-connector phases: on the MQTT topics, not as entities
            config = self._sensor(state, key, label)
        else:
            return None
        config["unique_id"] = f"{st.uid}_{_component_id(key)}"
        config["state_topic"] = self.ctx.topics.state(st.name, key)
        return config

    @staticmethod
    def _sensor(state: StationState | None, key: Key, label: str) -> dict[str, Any]:
        measured = None
        if state is not None:
            holder = state.connectors.get(key.connector) if key.connector is not None else None
            meter = holder.meter if holder is not None else state.meter
            measured = meter.get(key.name)
        published_unit = measured.unit if measured is not None else None
        unit, device_class, state_class = UNIT_CLASSES.get(
            published_unit, (published_unit, None, "measurement"))
        if key.name.endswith("_interval"):
            state_class = None  # energy per interval is neither a total nor a measurement
        if key.name == "soc":
            device_class = "battery"
        elif key.name == "power_factor":
            device_class = "power_factor"
        name = label + (MEASURAND_NAMES.get(key.name)
                        or MEASURANDS_BY_KEY[key.name].replace(".", " ").capitalize())
        if key.phase:
            name += f" {_phase_label(key.phase)}"
        config: dict[str, Any] = {"platform": "sensor", "name": name}
        for option, value in (("device_class", device_class), ("state_class", state_class),
                              ("unit_of_measurement", unit)):
            if value is not None:
                config[option] = value
        return config

    def _status_topic(self, st: _Station, connector: int) -> str | None:
        for key in (Key("status", None, connector), Key("status")):
            if key in st.seen:
                return self.ctx.topics.state(st.name, key)
        return None

    def _control_components(self, st: _Station, control: Control,
                            multi: bool) -> list[tuple[str, dict[str, Any]]]:
        if control.per_connector:
            targets = [(n, f"{control.id}_{n}") for n in sorted(st.connectors or {1})]
        else:
            targets = [(0, control.id)]
        out = []
        for connector, cid in targets:
            state_topic = None
            if control.state_template is not None:
                state_topic = self._status_topic(st, connector)
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
                                      "command_topic": self.ctx.topics.command(st.name)}
            if control.platform == "button":
                config["payload_press"] = _command(control.action, args)
            elif control.platform == "switch":
                config["payload_on"] = _command(control.action, args)
                config["payload_off"] = _command(control.off_action or control.action, args)
            else:
                quoted = control.platform == "select"
                assert control.value_arg is not None
                config["command_template"] = _command(
                    control.action, {**args, control.value_arg: PLACEHOLDER}
                ).replace(f'"{PLACEHOLDER}"', '"{{ value }}"' if quoted else "{{ value }}")
            if state_topic is not None:
                config["state_topic"] = state_topic
                config["value_template"] = control.state_template
            config.update(control.options)
            if "max" in config and control.id == "current_limit":
                config["max"] = self.ctx.settings.current_limit_max
            out.append((cid, config))
        return out

    # --- publishing ------------------------------------------------------------------
    def _mark(self, st: _Station) -> None:
        self._dirty[st.name] = None
        if not self.ready:
            return  # flushed once our retained documents are read back
        self._last_mark = self.clock()
        if not self._scheduled:
            self._scheduled = True
            self._first_mark = self._last_mark
            self.ctx.defer(self._due, DISCOVERY_DELAY)

    def _due(self) -> None:
        if not self._scheduled:
            return  # flushed meanwhile (forced, or read back)
        now = self.clock()
        wait = min(self._last_mark + DISCOVERY_DELAY, self._first_mark + DISCOVERY_MAX_WAIT) - now
        if wait > 0.001:  # (not for the float dust of timers that run a hair early)
            self.ctx.defer(self._due, wait)
            return
        self.flush()

    def flush(self, force: bool = False) -> None:
        """Publish the document of every changed station (all of them if `force`)."""
        self._scheduled = False
        if not self.ready:
            self._force_pending = self._force_pending or force
            return
        if force:
            for name in self.stations:
                self._dirty[name] = None
            self._forced.update(self.stations)
        if not self._draining:
            self._publish_chunk()

    def _publish_chunk(self) -> None:
        self._draining = False
        if not self.ready:
            return  # the broker went away: all are published again once it is back
        names = list(itertools.islice(self._dirty, DISCOVERY_CHUNK))
        for name in names:
            del self._dirty[name]
            forced = name in self._forced
            if forced:
                self._forced.discard(name)
            st = self.stations[name]
            if st.removed or st.empty():
                continue
            body = orjson.dumps(self.document(st)).decode()
            digest = _digest(body)
            if digest == st.broker and not forced:
                continue
            self.ctx.publish(self.config_topic(name), body, retain=True, qos=1)
            st.broker = digest
            st.echoes.append(digest)
            self.published += 1
        if self._dirty:
            self._draining = True
            self.ctx.defer(self._publish_chunk, DISCOVERY_CHUNK_GAP)

    # --- MQTT ------------------------------------------------------------------------
    def on_mqtt_connected(self) -> None:
        """Read our retained documents back before publishing anything (see module doc)."""
        self.ready = False
        for st in self.stations.values():
            st.broker = None
            st.echoes.clear()
        token = os.urandom(8).hex()
        self._sync_token = token
        self.ctx.publish(self.ctx.topics.discovery_sync, token, retain=False, qos=0)
        if self._sync_timer is not None:
            self._sync_timer.cancel()
        self._sync_timer = asyncio.get_running_loop().call_later(
            SYNC_TIMEOUT, self._synced, token, True)

    def _synced(self, token: str, timed_out: bool = False) -> None:
        if token != self._sync_token or self.ready:
            return
        if timed_out and not self.ctx.mqtt_connected:
            return  # disconnected (or stopped) meanwhile: the next connect starts over
        if timed_out:
            log.warning("no echo on %s within %g s; publishing discovery without reading "
                        "back retained documents", self.ctx.topics.discovery_sync, SYNC_TIMEOUT)
        elif self._sync_timer is not None:
            self._sync_timer.cancel()
        self._sync_timer = None
        self.ready = True
        for name in self.stations:
            self._dirty[name] = None
        force, self._force_pending = self._force_pending, False
        self.flush(force)

    def _on_status(self, message: Incoming) -> None:
        if message.payload == b"online":
            log.info("Home Assistant is online: publishing discovery again")
            self.flush(force=True)

    def _on_sync(self, message: Incoming) -> None:
        self._synced(message.payload.decode(errors="replace"))

    def _on_document(self, message: Incoming) -> None:
        slug = self.ctx.topics.discovery_slug(message.topic)
        if slug is None:
            return
        body = message.payload.decode(errors="replace")
        st = self.by_slug.get(slug)
        if st is None:
            if body:
                self.retained[slug] = zlib.compress(message.payload)
            else:
                self.retained.pop(slug, None)
            return
        digest = _digest(body)
        if digest in st.echoes:  # our own publish coming back
            del st.echoes[: st.echoes.index(digest) + 1]
            st.broker = digest
            return
        st.broker = digest
        self._merge(st, body)  # written by an earlier run (or someone else): keep it
        if body and not st.removed:
            self._mark(st)

    # --- bridge request remove_station -------------------------------------------------
    def _remove_station(self, request: Any) -> BridgeResponse:
        station = request.get("station") if isinstance(request, dict) else request
        if not isinstance(station, str) or not station:
            return BridgeResponse("error", {}, 'expected {"station": "<station id>", '
                                  '"id": <optional request id>} or the bare station id')
        slug = station_slug(station)
        st = self.stations.get(station)
        known = (st is not None and not st.removed and not st.empty()) or slug in self.retained
        if not known:
            return BridgeResponse("error", {"station": station},
                                  f"no Home Assistant discovery known for station {station!r}")
        entities = 0
        if st is not None and not st.removed:
            entities = len(self.document(st)["components"])
        elif slug in self.retained:
            try:
                entities = len(orjson.loads(zlib.decompress(self.retained[slug]))
                               .get("components", {}))
            except (orjson.JSONDecodeError, AttributeError):
                entities = 0
        self.retained.pop(slug, None)
        self.ctx.publish(self.config_topic(station), "", retain=True, qos=1)
        if st is not None:
            st.reset()
            st.removed = True
            st.broker = _digest("")
            st.echoes.append(st.broker)
        log.info("removed Home Assistant discovery of %s (%d entities)", station, entities)
        return BridgeResponse("ok", {"station": station, "entities": entities,
                                     "discovery_topic": self.config_topic(station)})


def _digest(document: str) -> bytes:
    return hashlib.blake2b(document.encode(), digest_size=16).digest()


def _command(action: str, args: dict[str, Any]) -> str:
    return orjson.dumps({"action": action, "args": args}).decode()
