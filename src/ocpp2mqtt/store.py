"""What must survive a restart: transaction ids, per-station flags (also what current
control learned about a charger, charging/), instance id, group limits, and the
relay's queues and transaction-id maps (relay/).

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
-- Messages for a back office (relay/), in the order the charger sent them; a row
-- leaves when the back office answered it.
CREATE TABLE IF NOT EXISTS relay_queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    station TEXT NOT NULL,
    upstream TEXT NOT NULL,
    version TEXT NOT NULL,
    action TEXT NOT NULL,
    payload TEXT NOT NULL,
    local_tx INTEGER,  -- 1.6: the gateway's row of the transaction the message belongs to
    transactional INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS relay_queue_link ON relay_queue (station, upstream, seq);
-- 1.6: the id a back office gave a transaction, when it is not the charger's.
CREATE TABLE IF NOT EXISTS relay_transactions (
    station TEXT NOT NULL,
    upstream TEXT NOT NULL,
    local_tx INTEGER NOT NULL,
    upstream_tx INTEGER NOT NULL,
    PRIMARY KEY (station, upstream, local_tx)
);
"""
# Indexes that need the columns MIGRATIONS add.
LATE_SCHEMA = """
CREATE INDEX IF NOT EXISTS transactions_charger ON transactions
    (station, COALESCE(charger_id, id));
CREATE INDEX IF NOT EXISTS transactions_charger_id ON transactions (charger_id)
    WHERE charger_id IS NOT NULL;
"""
# (table, column, definition): columns added after a table first shipped.
MIGRATIONS = (
    # 1.6 with a primary back office: the charger uses the id the back office gave.
    ("transactions", "charger_id", "INTEGER"),
    # 2.x: how a transaction ended, for the session history (web page, CSV).
    ("charger_transactions", "meter_stop", "REAL"),
    ("charger_transactions", "stopped_at", "TEXT"),
    ("charger_transactions", "reason", "TEXT"),
)


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


@dataclass(slots=True)
class SessionRow:
    """One charging session as the web page and its CSV show it."""

    station: str
    transaction_id: str
    connector_id: int
    id_tag: str
    started_at: str
    stopped_at: str | None
    meter_start: float | None
    meter_stop: float | None
    reason: str | None

    @property
    def energy(self) -> float | None:
        if self.meter_start is None or self.meter_stop is None:
            return None
        return self.meter_stop - self.meter_start


_CHARGER_TX_COLUMNS = ("station, transaction_id, evse_id, id_tag, meter_start, started_at, "
                       "last_seq_no, last_energy, ended")


@dataclass(slots=True)
class Transaction:
    """An OCPP 1.6 transaction. `id` is the one the charger uses: the gateway's own
    (`local_id`) or, when a primary back office answered its StartTransaction, that
    back office's."""

    id: int
    station: str
    connector_id: int
    id_tag: str
    meter_start: int
    started_at: str
    meter_stop: int | None = None
    local_id: int = 0


_TX_COLUMNS = ("COALESCE(charger_id, id), station, connector_id, id_tag, meter_start, "
               "started_at, meter_stop, id")


@dataclass(slots=True)
class QueuedMessage:
    """A charger's message waiting for a back office (relay/)."""

    seq: int
    version: str
    action: str
    payload: str  # JSON, as the charger sent it
    local_tx: int | None
    transactional: bool
    created: float
    attempts: int


_QUEUE_COLUMNS = "seq, version, action, payload, local_tx, transactional, created, attempts"


class Store:
    def __init__(self, data_dir: Path):
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "ocpp2mqtt.sqlite3"
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        for table, column, definition in MIGRATIONS:
            columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in columns:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        self._db.executescript(LATE_SCHEMA)

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

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return str(row[0]) if row else default

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?)"
                         " ON CONFLICT (key) DO UPDATE SET value=excluded.value", (key, value))

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

    def set_charger_id(self, station: str, local_id: int, charger_id: int) -> None:
        """The charger was given `charger_id` (a primary back office's) for our `local_id`."""
        self._db.execute("UPDATE transactions SET charger_id=? WHERE id=? AND station=?",
                         (None if charger_id == local_id else charger_id, local_id, station))

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
                (meter_stop, stopped_at, reason, tx.local_id),
            )
        return tx

    def transaction(self, station: str, transaction_id: int) -> Transaction | None:
        """`station`'s transaction the charger calls `transaction_id` (the open one, if
        a back office's id and one of ours ever coincide)."""
        row = self._db.execute(
            f"SELECT {_TX_COLUMNS} FROM transactions WHERE station=? AND"
            " COALESCE(charger_id, id)=? ORDER BY meter_stop IS NULL DESC, id DESC LIMIT 1",
            (station, transaction_id),
        ).fetchone()
        return Transaction(*row) if row else None

    def transaction_owner(self, transaction_id: int) -> str | None:
        """The station a transaction id was handed to, if any."""
        row = self._db.execute(
            "SELECT station FROM transactions WHERE id=? AND charger_id IS NULL"
            " UNION ALL SELECT station FROM transactions WHERE charger_id=? LIMIT 1",
            (transaction_id, transaction_id),
        ).fetchone()
        return row[0] if row else None

    def open_transactions(self, station: str) -> list[Transaction]:
        rows = self._db.execute(
            f"SELECT {_TX_COLUMNS} FROM transactions WHERE station=? AND meter_stop IS NULL"
            " ORDER BY id", (station,),
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

    def charger_transaction_stopped(self, station: str, transaction_id: str,
                                    meter_stop: float | None, stopped_at: str,
                                    reason: str) -> None:
        self._db.execute(
            "UPDATE charger_transactions SET meter_stop=?, stopped_at=?, reason=?"
            " WHERE station=? AND transaction_id=?",
            (meter_stop, stopped_at, reason, station, transaction_id))

    def sessions(self, station: str | None = None, limit: int = 100_000) -> list[SessionRow]:
        """Charging sessions, newest first, both OCPP generations; `energy` in Wh when
        the start and the end register are both known."""
        where, args = ("WHERE station=?", (station,)) if station else ("", ())
        rows = self._db.execute(
            f"SELECT * FROM (SELECT station, CAST(COALESCE(charger_id, id) AS TEXT),"
            f" connector_id, id_tag, started_at, stopped_at, meter_start, meter_stop, reason"
            f" FROM transactions {where}"
            f" UNION ALL SELECT station, transaction_id, evse_id, id_tag, started_at,"
            f" stopped_at, meter_start, COALESCE(meter_stop, CASE WHEN ended THEN last_energy"
            f" END), reason FROM charger_transactions {where})"
            " ORDER BY started_at DESC LIMIT ?", (*args, *args, limit)).fetchall()
        return [SessionRow(*row) for row in rows]

    def open_charger_transactions(self, station: str) -> list[ChargerTransaction]:
        rows = self._db.execute(
            f"SELECT {_CHARGER_TX_COLUMNS} FROM charger_transactions"
            " WHERE station=? AND ended=0 ORDER BY rowid", (station,)).fetchall()
        return [_charger_tx(row) for row in rows]


    # --- the relay's queues and transaction-id maps (relay/) -------------------------------
    def relay_enqueue(self, station: str, upstream: str, version: str, action: str,
                      payload: str, local_tx: int | None, transactional: bool,
                      created: float) -> int:
        cur = self._db.execute(
            "INSERT INTO relay_queue (station, upstream, version, action, payload, local_tx,"
            " transactional, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (station, upstream, version, action, payload, local_tx, int(transactional),
             created))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def relay_head(self, station: str, upstream: str,
                   action: str | None = None) -> QueuedMessage | None:
        """The oldest waiting message (of `action`, if given)."""
        if action is None:
            row = self._db.execute(
                f"SELECT {_QUEUE_COLUMNS} FROM relay_queue WHERE station=? AND upstream=?"
                " ORDER BY seq LIMIT 1", (station, upstream)).fetchone()
        else:
            row = self._db.execute(
                f"SELECT {_QUEUE_COLUMNS} FROM relay_queue WHERE station=? AND upstream=?"
                " AND action=? ORDER BY seq LIMIT 1", (station, upstream, action)).fetchone()
        return _queued(row) if row else None

    def relay_last(self, station: str, upstream: str, action: str,
                   keep: int) -> list[QueuedMessage]:
        """Waiting messages of `action` but message `keep`, newest first (up to 64)."""
        rows = self._db.execute(
            f"SELECT {_QUEUE_COLUMNS} FROM relay_queue WHERE station=? AND upstream=?"
            " AND action=? AND seq!=? ORDER BY seq DESC LIMIT 64",
            (station, upstream, action, keep)).fetchall()
        return [_queued(row) for row in rows]

    def relay_delete(self, seq: int) -> None:
        self._db.execute("DELETE FROM relay_queue WHERE seq=?", (seq,))

    def relay_delete_action(self, station: str, upstream: str, action: str,
                            keep: int) -> int:
        """Drop the waiting messages of `action` but message `keep`; how many."""
        return self._db.execute(
            "DELETE FROM relay_queue WHERE station=? AND upstream=? AND action=? AND seq!=?",
            (station, upstream, action, keep)).rowcount

    def relay_drop_oldest(self, station: str, upstream: str, keep: int) -> bool:
        """Drop the oldest waiting message outside a transaction (not message `keep`)."""
        return self._db.execute(
            "DELETE FROM relay_queue WHERE seq=(SELECT seq FROM relay_queue WHERE station=?"
            " AND upstream=? AND transactional=0 AND seq!=? ORDER BY seq LIMIT 1)",
            (station, upstream, keep)).rowcount > 0

    def relay_attempted(self, seq: int) -> None:
        self._db.execute("UPDATE relay_queue SET attempts=attempts+1 WHERE seq=?", (seq,))

    def relay_answered(self, seq: int, station: str, upstream: str, local_tx: int | None,
                       upstream_tx: int | None) -> None:
        """The back office answered message `seq`: it leaves the queue, and the id the
        back office gave the transaction (StartTransaction) is kept — both or neither."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM relay_queue WHERE seq=?", (seq,))
            if local_tx is not None and upstream_tx is not None:
                db.execute(
                    "INSERT INTO relay_transactions (station, upstream, local_tx, upstream_tx)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (station, upstream, local_tx)"
                    " DO UPDATE SET upstream_tx=excluded.upstream_tx",
                    (station, upstream, local_tx, upstream_tx))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def relay_count(self, station: str, upstream: str) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM relay_queue WHERE station=? AND upstream=?",
                               (station, upstream)).fetchone()
        return int(row[0])

    def relay_waiting(self) -> list[tuple[str, str]]:
        """(station, upstream) of every non-empty queue."""
        return [(r[0], r[1]) for r in self._db.execute(
            "SELECT DISTINCT station, upstream FROM relay_queue ORDER BY station, upstream")]

    def relay_start_known(self, station: str, upstream: str, local_tx: int) -> bool:
        """The StartTransaction of `local_tx` is queued for, or was answered by, upstream."""
        row = self._db.execute(
            "SELECT 1 FROM relay_transactions WHERE station=? AND upstream=? AND local_tx=?"
            " UNION ALL SELECT 1 FROM relay_queue WHERE station=? AND upstream=? AND"
            " local_tx=? AND action='StartTransaction' LIMIT 1",
            (station, upstream, local_tx, station, upstream, local_tx)).fetchone()
        return row is not None

    def relay_upstream_tx(self, station: str, upstream: str, local_tx: int) -> int | None:
        row = self._db.execute(
            "SELECT upstream_tx FROM relay_transactions WHERE station=? AND upstream=? AND"
            " local_tx=?", (station, upstream, local_tx)).fetchone()
        return int(row[0]) if row else None

    def relay_local_tx(self, station: str, upstream: str, upstream_tx: int) -> int | None:
        """Our transaction row that `upstream` knows as `upstream_tx` (newest first)."""
        row = self._db.execute(
            "SELECT local_tx FROM relay_transactions WHERE station=? AND upstream=? AND"
            " upstream_tx=? ORDER BY local_tx DESC LIMIT 1",
            (station, upstream, upstream_tx)).fetchone()
        return int(row[0]) if row else None

    def transaction_by_local_id(self, station: str, local_id: int) -> Transaction | None:
        row = self._db.execute(
            f"SELECT {_TX_COLUMNS} FROM transactions WHERE station=? AND id=?",
            (station, local_id)).fetchone()
        return Transaction(*row) if row else None


def _queued(row: tuple[Any, ...]) -> QueuedMessage:
    seq, version, action, payload, local_tx, transactional, created, attempts = row
    return QueuedMessage(seq, version, action, payload, local_tx, bool(transactional), created,
                         attempts)


def _charger_tx(row: tuple[Any, ...]) -> ChargerTransaction:
    station, tx_id, evse, tag, start, started, seq, energy, ended = row
    return ChargerTransaction(station, tx_id, evse, tag, start, started, seq, energy, bool(ended))
