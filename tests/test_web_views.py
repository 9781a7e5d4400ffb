"""Issue 16, the pure parts of the web page: the message log's bounds and round trips,
table rows from the typed state, the monthly summary and the CSV."""

from __future__ import annotations

import csv
import io
import sqlite3

import pytest

from ocpp2mqtt import events as ev
from ocpp2mqtt.commands import CommandError
from ocpp2mqtt.commands.v2x import component_variable
from ocpp2mqtt.ocpp.v201 import config_key
from ocpp2mqtt.state import Stations
from ocpp2mqtt.store import SessionRow, Store, sessions_summary
from ocpp2mqtt.store.sqlite import SCHEMA_VERSION
from ocpp2mqtt.web import views
from ocpp2mqtt.web.message_log import ENTRY_OVERHEAD, MessageLog, entries

AT = "2026-11-30T10:00:00Z"


def test_the_log_keeps_the_last_frames_of_each_station():
    log = MessageLog(frames_per_station=3, max_bytes=10**9)
    for n in range(5):
        log.record("A", False, f'[2,"{n}","Heartbeat",{{}}]')
    log.record("B", False, '[2,"x","Heartbeat",{}]')
    assert [f["id"] for f in log.frames("A")] == ["2", "3", "4"]
    assert [f["id"] for f in log.frames("B")] == ["x"]
    assert log.bytes == sum(len(f["frame"]) + ENTRY_OVERHEAD
                            for s in "AB" for f in log.frames(s))


def test_over_the_byte_budget_every_station_loses_its_oldest_quarter():
    frame = '[2,"1","Heartbeat",{}]'
    cost = len(frame) + ENTRY_OVERHEAD
    log = MessageLog(frames_per_station=1000, max_bytes=cost * 100)
    for n in range(100):
        log.record("busy", False, frame)
        if n < 4:
            log.record("quiet", False, frame)
    assert log.bytes <= cost * 100
    # the busy station gave up its oldest frames; the quiet one keeps its few
    assert len(log.frames("busy")) < 100 and len(log.frames("quiet")) == 4
    for _ in range(10_000):
        log.record("busy", True, frame)
        assert log.bytes <= cost * 100
    log.forget("busy")
    assert log.bytes == cost * len(log.frames("quiet"))


def test_a_disabled_log_keeps_nothing():
    log = MessageLog(frames_per_station=0, max_bytes=10**9)
    log.record("A", False, "[2]")
    assert log.frames("A") == [] and log.bytes == 0


def test_round_trips_pair_a_call_with_its_answer_in_the_other_direction():
    docs = entries([
        (100.0, False, '[2,"7","Heartbeat",{}]'),
        (100.002, True, '[3,"7",{"currentTime":"x"}]'),
        (101.0, True, '[2,"7","Reset",{"type":"Soft"}]'),  # our CALL may reuse the id
        (101.5, False, '[4,"7","NotSupported","",{}]'),
        (102.0, False, "not json"),
        (102.1, False, '[3,"nobody",{}]'),
    ])
    assert [(d["dir"], d["type"], d.get("action"), d.get("rtt_ms")) for d in docs] == [
        ("in", "CALL", "Heartbeat", None), ("out", "CALLRESULT", "Heartbeat", 2.0),
        ("out", "CALL", "Reset", None), ("in", "CALLERROR", "Reset", 500.0),
        ("in", "invalid", None, None), ("in", "CALLRESULT", None, None)]
    assert [d["id"] for d in entries([(1.0, False, '[2,"a","X",{}]'),
                                      (2.0, True, '[3,"a",{}]')], after=1.0)] == ["a"]


def test_a_row_from_the_typed_state():
    stations = Stations()
    stations.apply(ev.Connected("CP1", AT, ocpp_version="2.0.1", gateway="g1"))
    stations.apply(ev.Booted("CP1", AT, info=ev.BootInfo(vendor="V", model="M",
                                                         firmware_version="9")))
    stations.apply(ev.TransactionStarted("CP1", AT, connector_id=1, transaction_id="t1",
                                         id_tag="TAG", meter_start=1000, timestamp=AT))
    stations.apply(ev.MeterReading("CP1", AT, connector_id=1, transaction_id="t1", samples=[
        ev.Sample(AT, [ev.Reading("power_active_import", "Power.Active.Import", None, 7200.0,
                                  "W"),
                       ev.Reading("energy_active_import_register",
                                  "Energy.Active.Import.Register", None, 3500.0, "Wh")])]))
    state = stations.states["CP1"]
    row = views.station_row(state)
    assert {k: row[k] for k in ("id", "connection", "since", "version", "power", "energy",
                                "session_energy", "firmware", "transaction_id")} == {
        "id": "CP1", "connection": "CONNECTED", "since": AT, "version": "2.0.1",
        "power": 7200.0, "energy": 3500.0, "session_energy": 2500.0, "firmware": "9",
        "transaction_id": "t1"}
    detail = views.station_detail(state)
    assert detail["transaction"]["energy"] == 2500.0
    assert {m["key"] for m in detail["meter"]} == {"power_active_import",
                                                   "energy_active_import_register"}


def _row(tag: str, start: str, wh: float | None, station: str = "CP1") -> SessionRow:
    return SessionRow(station, "1", 1, tag, start, start, 1000.0,
                      None if wh is None else 1000.0 + wh, "Local")


def test_sessions_and_monthly_sums_from_the_store(tmp_path):
    store = Store(tmp_path)
    try:
        for station, tag, start, wh in (
                ("CP1", "B", "2026-10-03T00:00:00Z", 1000),
                ("CP1", "A", "2026-11-01T00:00:00Z", 500),
                ("CP2", "A", "2026-11-20T00:00:00Z", 250),
                ("CP1", "B", "2026-11-02T00:00:00Z", 100),
                # 1 November, 00:30 in UTC+02:00 is still October in UTC
                ("CP1", "B", "2026-11-01T00:30:00+02:00", 7)):
            tx = store.start_transaction(station, 1, tag, 1000, start)
            store.stop_transaction(station, tx, 1000 + wh, start, "Local")
        store.start_transaction("CP1", 1, "A", 5000, "2026-11-21T00:00:00Z")  # running
        total, summary = sessions_summary(store._db)
        assert total == 6
        assert summary == [
            {"month": "2026-11", "id_tag": "A", "sessions": 2, "energy": 750.0},
            {"month": "2026-11", "id_tag": "B", "sessions": 1, "energy": 100.0},
            {"month": "2026-10", "id_tag": "B", "sessions": 2, "energy": 1007.0}]
        assert sessions_summary(store._db, "CP2") == (1, [
            {"month": "2026-11", "id_tag": "A", "sessions": 1, "energy": 250.0}])
        latest = store.sessions(limit=2)
        assert [(r.started_at, r.ended, r.energy) for r in latest] == [
            ("2026-11-21T00:00:00Z", False, None), ("2026-11-20T00:00:00Z", True, 250)]
    finally:
        store.close()


def test_csv_has_kwh_and_never_a_formula():
    text = views.sessions_csv([_row("=HYPERLINK(\"x\")", "2026-11-01T00:00:00Z", 7500),
                               _row("@SUM(A1)", "2026-11-01T00:00:00Z", None)])
    table = list(csv.DictReader(io.StringIO(text)))
    assert list(table[0]) == list(views.CSV_COLUMNS)
    assert [r["energy_kwh"] for r in table] == ["7.5", ""]
    assert [r["id_tag"][0] for r in table] == ["'", "'"]
    # A meter reset gives a negative energy: still a number, not an escaped text.
    reset = views.sessions_csv([_row("A", "2026-11-01T00:00:00Z", -1000)])
    [row] = csv.DictReader(io.StringIO(reset))
    assert row["energy_kwh"] == "-1.0"


@pytest.mark.parametrize("key", ["OCPPCommCtrlr/HeartbeatInterval", "EVSE@1/Power",
                                 "Connector@1.2/ConnectorType", "Ctrlr:main/Var:limit",
                                 "EVSE:x@2/AvailabilityState:y"])
def test_a_2x_key_the_page_shows_names_the_same_variable_when_edited(key):
    assert config_key(component_variable(key)) == key


@pytest.mark.parametrize("key", ["EVSE@one/Power", "/Power", "EVSE/", "NoSuchKey"])
def test_a_malformed_2x_key_is_refused_with_its_name(key):
    with pytest.raises(CommandError, match="configuration key"):
        component_variable(key)


def test_a_data_directory_from_a_newer_version_is_refused(tmp_path):
    Store(tmp_path).close()
    db = sqlite3.connect(tmp_path / "ocpp2mqtt.sqlite3")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION
    db.execute(f"PRAGMA user_version={version + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="newer than this ocpp2mqtt"):
        Store(tmp_path)
