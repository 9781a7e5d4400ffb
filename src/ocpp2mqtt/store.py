"""What must survive a restart: transaction ids, per-station flags, instance id.

SQLite in the data directory. Calls are synchronous and small (one row per
transaction start/stop), so they run inline on the event loop; WAL mode keeps
them well under a millisecond and durable across kill -9.
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS transactions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    station TEXT NOT NULL,
    connector_id INTEGER NOT NULL,
    id_tag TEXT NOT NULL,
    meter_start INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    meter_stop INTEGER,
    stopped_at TEXT,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS transactions_open ON transactions (station, connector_id)
    WHERE meter_stop IS NULL;
CREATE INDEX IF NOT EXISTS transactions_started ON transactions (station, started_at);
CREATE TABLE IF NOT EXISTS charger_transactions (
    station TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    evse_id INTEGER NOT NULL,
    id_tag TEXT NOT NULL DEFAULT '',
    meter_start REAL,
    started_at TEXT NOT NULL,
    last_seq_no INTEGER,
    last_energy REAL,
    ended INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (station, transaction_id)
);
CREATE TABLE IF NOT EXISTS station_flags (
    station TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (station, key)
);
"""


@dataclass(slots=True)
class ChargerTransaction:
    """An OCPP 2.x transaction: its id is the charger's (a string), per station."""

    station: str
    transaction_id: str
    evse_id: int
    id_tag: str
    meter_start: float | None
    started_at: str
    last_seq_no: int | None
    last_energy: float | None  # the last energy register reading of the transaction (Wh)
    ended: bool


_CHARGER_TX_COLUMNS = ("station, transaction_id, evse_id, id_tag, meter_start, started_at, "
                       "last_seq_no, last_energy, ended")


@dataclass(slots=True)
class Transaction:
    id: int
    station: str
    connector_id: int
    id_tag: str
    meter_start: int
    started_at: str
    meter_stop: int | None = None


class Store:
    def __init__(self, data_dir: Path):
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "ocpp2mqtt.sqlite3"
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def instance_id(self) -> str:
        """A random id made once per data directory: a stable, unique MQTT client id."""
        row = self._db.execute("SELECT value FROM meta WHERE key='instance_id'").fetchone()
        if row:
            return str(row[0])
        value = uuid.uuid4().hex[:12]
        self._db.execute("INSERT INTO meta (key, value) VALUES ('instance_id', ?)", (value,))
        return value

    def start_transaction(
        self, station: str, connector_id: int, id_tag: str, meter_start: int, started_at: str
    ) -> int:
        """A new transaction id — or, for a retried StartTransaction (same station,
        connector, tag, meter start and timestamp), the id it was given the first time."""
        row = self._db.execute(
            "SELECT id FROM transactions WHERE station=? AND started_at=? AND connector_id=?"
            " AND id_tag=? AND meter_start=? ORDER BY id DESC LIMIT 1",
            (station, started_at, connector_id, id_tag, meter_start),
        ).fetchone()
        if row:
            return int(row[0])
        cur = self._db.execute(
            "INSERT INTO transactions (station, connector_id, id_tag, meter_start, started_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (station, connector_id, id_tag, meter_start, started_at),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def stop_transaction(
        self, station: str, transaction_id: int, meter_stop: int, stopped_at: str, reason: str
    ) -> Transaction | None:
        """Close one of `station`'s transactions; returns it (with meter_start) or None.

        A transaction belongs to the station that started it: another station's
        StopTransaction with its id finds nothing and changes nothing.
        """
        tx = self.transaction(station, transaction_id)
        if tx is not None:
            self._db.execute(
                "UPDATE transactions SET meter_stop=?, stopped_at=?, reason=? WHERE id=?",
                (meter_stop, stopped_at, reason, transaction_id),
            )
        return tx

    def transaction(self, station: str, transaction_id: int) -> Transaction | None:
        row = self._db.execute(
            "SELECT id, station, connector_id, id_tag, meter_start, started_at, meter_stop"
            " FROM transactions WHERE id=? AND station=?",
            (transaction_id, station),
        ).fetchone()
        return Transaction(*row) if row else None

    def transaction_owner(self, transaction_id: int) -> str | None:
        """The station a transaction id was handed to, if any."""
        row = self._db.execute(
            "SELECT station FROM transactions WHERE id=?", (transaction_id,)
        ).fetchone()
        return row[0] if row else None

    def open_transactions(self, station: str) -> list[Transaction]:
        rows = self._db.execute(
            "SELECT id, station, connector_id, id_tag, meter_start, started_at, meter_stop"
            " FROM transactions WHERE station=? AND meter_stop IS NULL ORDER BY id",
            (station,),
        ).fetchall()
        return [Transaction(*r) for r in rows]

    def flag(self, station: str, key: str, default: str) -> str:
        row = self._db.execute(
            "SELECT value FROM station_flags WHERE station=? AND key=?", (station, key)
        ).fetchone()
        return row[0] if row else default

    def set_flag(self, station: str, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO station_flags (station, key, value) VALUES (?, ?, ?)"
            " ON CONFLICT (station, key) DO UPDATE SET value=excluded.value",
            (station, key, value),
        )

    # --- OCPP 2.x transactions (the charger names them) ----------------------------------
    def charger_transaction(self, station: str, transaction_id: str) -> ChargerTransaction | None:
        row = self._db.execute(
            f"SELECT {_CHARGER_TX_COLUMNS} FROM charger_transactions"
            " WHERE station=? AND transaction_id=?", (station, transaction_id)).fetchone()
        return _charger_tx(row) if row else None

    def save_charger_transaction(self, tx: ChargerTransaction) -> None:
        self._db.execute(
            f"INSERT INTO charger_transactions ({_CHARGER_TX_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (station, transaction_id) DO UPDATE SET evse_id=excluded.evse_id,"
            " id_tag=excluded.id_tag, meter_start=excluded.meter_start,"
            " last_seq_no=excluded.last_seq_no, last_energy=excluded.last_energy,"
            " ended=excluded.ended",
            (tx.station, tx.transaction_id, tx.evse_id, tx.id_tag, tx.meter_start,
             tx.started_at, tx.last_seq_no, tx.last_energy, int(tx.ended)))

    def open_charger_transactions(self, station: str) -> list[ChargerTransaction]:
        rows = self._db.execute(
            f"SELECT {_CHARGER_TX_COLUMNS} FROM charger_transactions"
            " WHERE station=? AND ended=0 ORDER BY rowid", (station,)).fetchall()
        return [_charger_tx(row) for row in rows]


def _charger_tx(row: tuple[Any, ...]) -> ChargerTransaction:
    station, tx_id, evse, tag, start, started, seq, energy, ended = row
    return ChargerTransaction(station, tx_id, evse, tag, start, started, seq, energy, bool(ended))
