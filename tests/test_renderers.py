"""Issue 12: the renderers of the typed station state, without a broker or a socket.

Typed events go through the real reducer (`state.py`) and the real extension host
into the JSON state document and Home Assistant discovery; a small fake Context
stands in for MQTT. The end-to-end tests (test_homeassistant.py) stay as they are.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from ocpp2mqtt import events as ev
from ocpp2mqtt.config import Settings
from ocpp2mqtt.extensions import BridgeResponse, ExtensionHost, RequestHandler
from ocpp2mqtt.extensions.homeassistant import (
    DISCOVERY_CHUNK,
    DISCOVERY_CHUNK_GAP,
    DISCOVERY_DELAY,
    DISCOVERY_MAX_WAIT,
    HomeAssistantExtension,
)
from ocpp2mqtt.extensions.state_document import StateDocumentExtension
from ocpp2mqtt.extensions.state_document import render as render_document
from ocpp2mqtt.mqtt.transport import Incoming
from ocpp2mqtt.ocpp import meter
from ocpp2mqtt.state import Stations, StationState, apply
from ocpp2mqtt.topics import Topics
from tests.helpers import three_phase_meter_value
from tests.test_homeassistant import check_schema

AT = "2026-11-30T08:00:00Z"
TS = "2026-11-30T07:59:59Z"


class FakeContext:
    """The Context protocol, recording instead of publishing."""

    def __init__(self, settings: Settings, stations: Stations):
        self.settings = settings
        self.topics = Topics(settings)
        self._stations = stations
        self.published: list[tuple[str, str, bool]] = []
        self.handlers: dict[str, Callable[[Incoming], None]] = {}
        self.requests: dict[str, RequestHandler] = {}
        # A fake timer: (due, seq, fn); `clock` moves only in tick() and advance().
        self.deferred: list[tuple[float, int, Callable[[], None]]] = []
        self.clock = 0.0
        self._seq = itertools.count()

    def publish(self, topic: str, payload: str | bytes, *, retain: bool = True,
                qos: int | None = None, essential: bool = False) -> None:
        text = payload.decode() if isinstance(payload, bytes) else payload
        self.published.append((topic, text, retain))

    def subscribe(self, topic_filter: str, handler: Callable[[Incoming], None]):
        self.handlers[topic_filter] = handler
        return lambda: self.handlers.pop(topic_filter, None)

    async def call(self, station: str, action: str, payload: dict) -> Any:
        raise AssertionError("no calls expected")

    def state(self, station: str) -> StationState | None:
        return self._stations.states.get(station)

    def stations(self):
        return self._stations.states

    def now(self) -> str:
        return AT

    def spawn(self, coro):
        raise AssertionError("no tasks expected")

    def defer(self, fn: Callable[[], None], delay: float = 0.0) -> None:
        heapq.heappush(self.deferred, (self.clock + delay, next(self._seq), fn))

    def handle_request(self, name: str, handler: RequestHandler) -> None:
        self.requests[name] = handler

    @property
    def mqtt_connected(self) -> bool:
        return True

    def tick(self) -> None:
        """Time passes until everything deferred so far has run (and what that deferred)."""
        while self.deferred:
            self.advance(self.deferred[0][0] - self.clock)

    def advance(self, seconds: float) -> None:
        """`seconds` pass: what falls due runs, in order."""
        until = self.clock + seconds
        while self.deferred and self.deferred[0][0] <= until:
            due, _, fn = heapq.heappop(self.deferred)
            self.clock = max(self.clock, due)
            fn()
        self.clock = until

    def last(self, topic: str) -> Any:
        texts = [text for t, text, _ in self.published if t == topic]
        assert texts, f"nothing published on {topic}"
        return orjson.loads(texts[-1])


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = dict(mqtt_basepath="ocpp", mqtt_usestationname=True,
                                  data_dir=Path("/nonexistent"), homeassistant_discovery=True)
    values.update(overrides)
    return Settings(_env_file=None, **values)


def host_with(extension: Any, **overrides: Any) -> tuple[ExtensionHost, FakeContext]:
    errors: list[str] = []
    s = settings(**overrides)
    stations = Stations(s.connector_topics)
    ctx = FakeContext(s, stations)
    host = ExtensionHost(stations, [extension], errors.append)
    host.start(lambda name: ctx)
    host.errors = errors  # type: ignore[attr-defined]
    return host, ctx


def reading(connector: int, entries: list[dict], tx: str | None = None) -> ev.MeterReading:
    return ev.MeterReading("CP1", AT, connector_id=connector, transaction_id=tx,
                           samples=meter.samples(entries))


def session_events() -> list[ev.Event]:
    return [
        ev.Connected("CP1", AT, ip="10.0.0.7", gateway="gw1"),
        ev.Booted("CP1", AT, info=ev.BootInfo(vendor="ACME", model="Wallbox X",
                                              firmware_version="1.2.3",
                                              charge_point_serial_number="SN42")),
        ev.StatusChanged("CP1", AT, connector_id=0, status="Available", error_code="NoError"),
        ev.StatusChanged("CP1", AT, connector_id=1, status="Charging", error_code="NoError"),
        ev.TransactionStarted("CP1", AT, connector_id=1, transaction_id="17", id_tag="tag1",
                              meter_start=1000, timestamp=TS),
        # two samples in one event: the document carries the second
        reading(1, [three_phase_meter_value(TS, 1500.0), three_phase_meter_value(TS, 2500.0)],
                tx="17"),
    ]


# --- the JSON state document ------------------------------------------------------------------
def test_state_document_is_rendered_from_typed_state():
    state = StationState("CP1")
    for event in session_events():
        apply(state, event)
    doc = render_document(state)
    assert doc["station"] == "CP1"
    assert doc["connection_state"] == "CONNECTED" and doc["last_seen"] == AT
    assert doc["gateway"] == {"id": "gw1", "since": AT}
    assert doc["charge_point_vendor"] == "ACME" and doc["charge_point_serial_number"] == "SN42"
    assert doc["status"] == "Charging" and doc["connector_id"] == 1
    assert doc["transaction_id"] == 17  # a 1.6 id stays a number
    assert doc["meter_start"] == 1000 and doc["meter_timestamp"] == TS
    assert doc["voltage"] == {"value": 231.2, "phases": {"l1_n": 230.1, "l2_n": 231.2,
                                                         "l3_n": 232.3},
                              "unit": "V", "measurand": "Voltage",
                              "context": "Sample.Periodic", "timestamp": TS}
    assert doc["current_import"]["value"] == 18.5  # max of the phases
    assert doc["power_active_import"] == {"value": 11040.0, "unit": "W",
                                          "measurand": "Power.Active.Import",
                                          "context": "Sample.Periodic", "timestamp": TS}
    assert doc["energy_active_import_register"]["value"] == 2500.0
    # one connector: only the station-wide status is shown per connector
    assert doc["connectors"] == {"0": {"status": "Available", "error_code": "NoError"}}
    orjson.dumps(doc)  # serialisable as is

    apply(state, ev.TransactionStopped("CP1", AT, transaction_id="17", connector_id=1,
                                       meter_start=1000, meter_stop=6000, reason="Local",
                                       timestamp=TS))
    doc = render_document(state)
    assert doc["transaction_id"] is None and doc["last_transaction_id"] == 17
    assert doc["session_energy"] == 5000


def test_a_second_connector_shows_every_connector():
    state = StationState("CP1")
    for event in session_events():
        apply(state, event)
    update = apply(state, ev.StatusChanged("CP1", AT, connector_id=2, status="SuspendedEV",
                                           error_code="NoError"))
    # what connector 1 reported before is written out once, so topics match the document
    shown = {(k.connector, k.name, k.phase) for k, _ in update.changes if k.connector == 1}
    assert {(1, "status", None), (1, "transaction_id", None)} <= shown
    doc = render_document(state)
    assert set(doc["connectors"]) == {"0", "1", "2"}
    assert doc["connectors"]["1"]["status"] == "Charging"
    assert doc["connectors"]["1"]["transaction_id"] == 17
    assert doc["connectors"]["2"] == {"status": "SuspendedEV", "error_code": "NoError"}
    # while it was the only connector its readings were the station's; now they are its own
    assert state.meter_of(1) == {}
    update = apply(state, reading(1, [three_phase_meter_value(TS, 3000.0)]))
    assert (1, "voltage", "l2_n") in {(k.connector, k.name, k.phase) for k, _ in update.changes}
    assert state.meter_of(1)["voltage"].phases["l3_n"] == 232.3
    assert render_document(state)["connectors"]["1"]["voltage"]["phases"]["l3_n"] == 232.3


@pytest.mark.parametrize(("mode", "shown"), [("never", {"0"}), ("always", {"0", "1"})])
def test_connector_topics_setting(mode, shown):
    state = StationState("CP1", connector_topics_mode=mode)
    for event in session_events():
        apply(state, event)
    assert set(render_document(state)["connectors"]) == shown


def test_document_extension_publishes_once_per_tick():
    ext = StateDocumentExtension()
    host, ctx = host_with(ext)
    for event in session_events():
        host.emit(event)
    assert ctx.published == []
    ctx.tick()
    assert [t for t, _, _ in ctx.published] == ["ocpp/CP1/state"]
    assert ctx.last("ocpp/CP1/state")["energy_active_import_register"]["value"] == 2500
    assert host.errors == []  # type: ignore[attr-defined]


# --- Home Assistant discovery ------------------------------------------------------------------
async def ready_ha(**overrides: Any) -> tuple[HomeAssistantExtension, ExtensionHost, FakeContext]:
    ext = HomeAssistantExtension()
    host, ctx = host_with(ext, **overrides)
    ext.clock = lambda: ctx.clock
    host.mqtt_connected()  # publishes a marker and waits for it to come back
    token = next(text for t, text, _ in ctx.published if t == ctx.topics.discovery_sync)
    ctx.handlers[ctx.topics.discovery_sync](Incoming(ctx.topics.discovery_sync,
                                                     token.encode(), False))
    assert ext.ready
    return ext, host, ctx


CONFIG = "homeassistant/device/ocpp2mqtt/CP1/config"


async def test_discovery_from_typed_events():
    ext, host, ctx = await ready_ha(current_limit_max=24)
    for event in session_events():
        host.emit(event)
    ctx.tick()
    doc = ctx.last(CONFIG)
    check_schema(doc)
    assert doc["device"] == {"identifiers": ["ocpp2mqtt_CP1"], "name": "CP1",
                             "manufacturer": "ACME", "model": "Wallbox X",
                             "sw_version": "1.2.3", "serial_number": "SN42"}
    comps = doc["components"]
    energy = comps["energy_active_import_register"]
    assert (energy["device_class"], energy["state_class"], energy["unit_of_measurement"]) == (
        "energy", "total_increasing", "Wh")  # sent in kWh: the state holds Wh
    assert energy["state_topic"] == "ocpp/CP1/state/energy_active_import_register"
    assert comps["voltage_l2_n"]["name"] == "Voltage L2-N"
    assert comps["connector_0_status"]["name"] == "Charge point Status"
    assert comps["current_limit"]["max"] == 24
    assert comps["charging_1"]["state_topic"] == "ocpp/CP1/state/status"
    assert "connector_1_status" not in comps  # one connector: plain topics only
    assert host.errors == []  # type: ignore[attr-defined]

    # readings of a known shape change nothing; a new measurand does
    sent = ext.published
    for wh in (3000.0, 4000.0):
        host.emit(reading(1, [three_phase_meter_value(TS, wh)], tx="17"))
        ctx.tick()
    assert ext.published == sent
    host.emit(reading(1, [{"timestamp": TS, "sampledValue": [
        {"value": "55", "measurand": "SoC", "unit": "Percent"}]}]))
    ctx.tick()
    assert ext.published == sent + 1
    soc = ctx.last(CONFIG)["components"]["soc"]
    assert (soc["device_class"], soc["unit_of_measurement"]) == ("battery", "%")


async def test_discovery_of_a_second_connector():
    _ext, host, ctx = await ready_ha()
    for event in session_events():
        host.emit(event)
    host.emit(ev.StatusChanged("CP1", AT, connector_id=2, status="Charging",
                               error_code="NoError"))
    host.emit(reading(1, [three_phase_meter_value(TS, 3000.0)]))
    ctx.tick()
    comps = ctx.last(CONFIG)["components"]
    for cid in ("connector_1_status", "connector_2_status", "unlock_1", "unlock_2",
                "charging_1", "charging_2", "connector_1_power_active_import"):
        assert cid in comps, cid
    assert comps["charging_2"]["state_topic"] == "ocpp/CP1/state/connector/2/status"
    assert comps["unlock_2"]["name"] == "Connector 2 Unlock"
    assert "connector_1_voltage_l1_n" not in comps  # per-connector phases: topics only


async def test_remove_station_request():
    _ext, host, ctx = await ready_ha()
    for event in session_events():
        host.emit(event)
    ctx.tick()
    entities = len(ctx.last(CONFIG)["components"])
    answer = ctx.requests["remove_station"]({"station": "CP1", "id": 5})
    assert answer == BridgeResponse("ok", {"station": "CP1", "entities": entities,
                                           "discovery_topic": CONFIG})
    assert ctx.published[-1] == (CONFIG, "", True)
    assert ctx.requests["remove_station"]("nope").status == "error"
    # a reading does not bring it back; connecting again does, without the old entities
    host.emit(ev.Heartbeat("CP1", AT))
    ctx.tick()
    assert ctx.published[-1] == (CONFIG, "", True)
    host.emit(ev.Connected("CP1", AT, gateway="gw1"))
    ctx.tick()
    comps = ctx.last(CONFIG)["components"]
    assert "connection_state" in comps and "restart" not in comps


def _documents(ctx: FakeContext) -> list[str]:
    """The stations whose discovery documents were published, in order."""
    return [t.split("/")[-2] for t, text, _ in ctx.published
            if t.startswith("homeassistant/device/ocpp2mqtt/") and text]


async def test_discovery_waits_until_stations_are_quiet_and_no_longer_than_the_cap():
    ext, host, ctx = await ready_ha()
    # One charger: its connect and boot, closer than DISCOVERY_DELAY, make one document.
    host.emit(ev.Connected("CP1", AT, gateway="gw1"))
    ctx.advance(DISCOVERY_DELAY * 0.6)
    host.emit(ev.Booted("CP1", AT, info=ev.BootInfo(vendor="ACME", model="X")))
    ctx.advance(DISCOVERY_DELAY * 0.9)
    assert _documents(ctx) == []  # 1.5 × the delay after the first change: not yet quiet
    ctx.advance(DISCOVERY_DELAY * 0.2)
    assert _documents(ctx) == ["CP1"]

    # A storm: a station every 50 ms for 1 s, each booting 150 ms after it connected. A
    # fixed delay after the first change would publish most of them twice.
    step = 0.05
    for i in range(20):
        host.emit(ev.Connected(f"S{i}", AT, gateway="gw1"))
        if i >= 3:
            host.emit(ev.Booted(f"S{i - 3}", AT, info=ev.BootInfo(vendor="ACME", model="X")))
        ctx.advance(step)
    for i in range(17, 20):
        host.emit(ev.Booted(f"S{i}", AT, info=ev.BootInfo(vendor="ACME", model="X")))
    assert _documents(ctx) == ["CP1"]
    ctx.tick()
    storm = _documents(ctx)[1:]
    assert sorted(storm) == sorted(f"S{i}" for i in range(20))  # one document each
    assert all(ctx.last(f"homeassistant/device/ocpp2mqtt/S{i}/config")["device"]["model"]
               == "X" for i in range(20))

    # Changes that never stop still publish within DISCOVERY_MAX_WAIT.
    first = ctx.clock
    published = len(ctx.published)
    i = 0
    while len(ctx.published) == published:
        host.emit(ev.Connected(f"T{i}", AT, gateway="gw1"))
        ctx.advance(step)
        i += 1
    assert DISCOVERY_MAX_WAIT <= ctx.clock - first <= DISCOVERY_MAX_WAIT + step
    assert ext.published == len(_documents(ctx))


async def test_discovery_goes_out_in_chunks():
    _ext, host, ctx = await ready_ha()
    n = 2 * DISCOVERY_CHUNK + 20
    for i in range(n):
        host.emit(ev.Connected(f"S{i:03d}", AT, gateway="gw1"))
    ctx.advance(DISCOVERY_DELAY)
    assert len(_documents(ctx)) == DISCOVERY_CHUNK
    ctx.advance(DISCOVERY_CHUNK_GAP)
    assert len(_documents(ctx)) == 2 * DISCOVERY_CHUNK
    ctx.advance(DISCOVERY_CHUNK_GAP)
    assert _documents(ctx) == [f"S{i:03d}" for i in range(n)]
    # Home Assistant's birth message: every document again, though the broker has them,
    # in chunks too.
    ctx.published.clear()
    ctx.handlers[ctx.topics.discovery_status](
        Incoming(ctx.topics.discovery_status, b"online", False))
    assert len(_documents(ctx)) == DISCOVERY_CHUNK
    ctx.tick()
    assert _documents(ctx) == [f"S{i:03d}" for i in range(n)]


def test_the_extension_example_in_the_docs_runs():
    text = (Path(__file__).resolve().parent.parent / "docs" / "architecture.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/architecture.md", "exec"), namespace)
    host, ctx = host_with(namespace["PowerAlarm"]())
    host.emit(reading(1, [three_phase_meter_value(TS)]))  # 11.04 kW
    assert ctx.published == [("ocpp/CP1/alarm", "over 11 kW", False)]
    assert host.errors == []  # type: ignore[attr-defined]
