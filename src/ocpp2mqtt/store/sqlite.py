"""What must survive a restart: transaction ids, per-station flags (also what current
control learned about a charger, charging/), instance id, group limits, and the
relay's queues and transaction-id maps (relay/).

SQLite in the data directory. Calls are synchronous and small (one row per
transaction start/stop), so they run inline on the event loop; WAL mode keeps
them well under a millisecond and durable across kill -9.

With a shared store (STORE_URL=postgresql://…, store/postgres.py) this stays the
replica's working copy: every change that other replicas must see is also written,
in the same SQLite transaction, to the `journal`, which the shared store copies to
PostgreSQL in order; what other replicas wrote about a station is imported when the
station connects here (`import_station`).
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

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
-- Changes waiting to be copied to the shared store (STORE_URL=postgresql://…), in order.
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL,
    args TEXT NOT NULL
);
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
CREATE INDEX IF NOT EXISTS relay_queue_shared ON relay_queue (shared_key)
    WHERE shared_key IS NOT NULL;
"""
# (table, column, definition): columns added after a table first shipped, in order;
# SCHEMA_VERSION counts them.
MIGRATIONS = (
    # 1.6 with a primary back office: the charger uses the id the back office gave.
    ("transactions", "charger_id", "INTEGER"),
    # 2.x: how a transaction ended, for the session history (web page, CSV).
    ("charger_transactions", "meter_stop", "REAL"),
    ("charger_transactions", "stopped_at", "TEXT"),
    ("charger_transactions", "reason", "TEXT"),
    # Shared store: a relay message's name in every replica (the journal, import_station).
    ("relay_queue", "shared_key", "TEXT"),
)
SCHEMA_VERSION = 1 + len(MIGRATIONS)


class StoreTooNew(RuntimeError):
    """The store was written by a newer ocpp2mqtt."""


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
    ended: bool = False

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


class _SessionsQuery:
    """Both generations' transactions as one table of sessions."""

    query = ("SELECT * FROM (SELECT station, CAST(COALESCE(charger_id, id) AS TEXT) AS tx,"
             " connector_id, id_tag, started_at, stopped_at, meter_start, meter_stop, reason,"
             " meter_stop IS NOT NULL AS ended FROM transactions"
             " UNION ALL SELECT station, transaction_id, evse_id, id_tag, started_at,"
             " stopped_at, meter_start, COALESCE(meter_stop, CASE WHEN ended THEN last_energy"
             " END), reason, ended FROM charger_transactions)")

    @staticmethod
    def where(station: str | None) -> tuple[str, tuple[Any, ...]]:
        return ("WHERE station=?", (station,)) if station else ("", ())


_SESSIONS = _SessionsQuery()


def sessions(db: sqlite3.Connection, station: str | None = None,
             limit: int | None = None) -> list[SessionRow]:
    """Sessions newest first (all of them without `limit`)."""
    where, args = _SESSIONS.where(station)
    rows = db.execute(f"{_SESSIONS.query} {where} ORDER BY started_at DESC LIMIT ?",
                      (*args, -1 if limit is None else limit)).fetchall()
    return [SessionRow(station_, tx, connector, tag, start, stop, meter_start, meter_stop,
                       reason, bool(ended))
            for (station_, tx, connector, tag, start, stop, meter_start, meter_stop, reason,
                 ended) in rows]


def sessions_summary(db: sqlite3.Connection, station: str | None = None,
                     ) -> tuple[int, list[dict[str, Any]]]:
    """(how many sessions, energy per month (UTC) and tag of the finished ones)."""
    where, args = _SESSIONS.where(station)
    count = db.execute(f"SELECT COUNT(*) FROM ({_SESSIONS.query} {where})", args).fetchone()[0]
    rows = db.execute(
        f"SELECT COALESCE(strftime('%Y-%m', started_at), substr(started_at, 1, 7)) AS m,"
        f" id_tag, COUNT(*), SUM(meter_stop - meter_start) FROM ({_SESSIONS.query} {where})"
        " WHERE meter_stop IS NOT NULL AND meter_start IS NOT NULL"
        " GROUP BY m, id_tag ORDER BY m DESC, id_tag", args).fetchall()
    return int(count), [{"month": m, "id_tag": tag, "sessions": n, "energy": round(wh, 3)}
                        for m, tag, n, wh in rows]


_QUEUE_COLUMNS = "seq, version, action, payload, local_tx, transactional, created, attempts"


class Store:
    def __init__(self, data_dir: Path, path: Path | None = None):
        """SQLite at `path`, by default `<data_dir>/ocpp2mqtt.sqlite3`."""
        self.path = path or data_dir / "ocpp2mqtt.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        for table, column, definition in MIGRATIONS:
            columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in columns:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        self._db.executescript(LATE_SCHEMA)
        # The schema version (PRAGMA user_version): 1 + the column migrations above. A data
        # directory written by a newer ocpp2mqtt is refused rather than misread.
        found = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            self._db.close()
            raise StoreTooNew(f"{self.path} has schema version {found}, newer than this "
                               f"ocpp2mqtt knows ({SCHEMA_VERSION}): upgrade ocpp2mqtt")
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        # Set by the shared store: journal changes, take transaction ids from its sequence,
        # and hear when the journal grew.
        self.journaling = False
        self.next_id: Callable[[], int] | None = None
        self.journaled: Callable[[int], None] = lambda seq: None  # the entry's seq
        self.stopped_unknown: Callable[[str, int, int], None] = lambda *args: None
        self._journal_seq = 0

    @contextlib.contextmanager
    def _atomic(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _journal(self, op: str, **args: Any) -> None:
        if self.journaling:
            cur = self._db.execute("INSERT INTO journal (op, args) VALUES (?, ?)",
                                   (op, orjson.dumps(args).decode()))
            self._journal_seq = cur.lastrowid or self._journal_seq

    def _after(self) -> None:
        """After the commit of a journaled change: tell the shared store."""
        if self.journaling:
            self.journaled(self._journal_seq)

    def journal(self, limit: int) -> list[tuple[int, str, dict[str, Any]]]:
        rows = self._db.execute("SELECT seq, op, args FROM journal ORDER BY seq LIMIT ?",
                                (limit,)).fetchall()
        return [(seq, op, orjson.loads(args)) for seq, op, args in rows]

    def journal_done(self, upto: int) -> None:
        self._db.execute("DELETE FROM journal WHERE seq <= ?", (upto,))

    def journal_depth(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM journal").fetchone()[0])

    def journal_bounds(self) -> tuple[int, int]:
        """(seq of the oldest waiting entry − 1, seq of the newest); (0, 0) when empty."""
        low, high = self._db.execute("SELECT MIN(seq), MAX(seq) FROM journal").fetchone()
        return (low - 1, high) if low is not None else (0, 0)

    def max_transaction_id(self) -> int:
        row = self._db.execute("SELECT MAX(id) FROM transactions").fetchone()
        return int(row[0] or 0)

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

    def set_meta(self, key: str, value: str, shared: bool = True) -> None:
        with self._atomic():
            self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?)"
                             " ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                             (key, value))
            if shared:
                self._journal("meta", key=key, value=value)
        self._after()

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
        with self._atomic():
            # Shared store: an id from the one sequence every replica draws from.
            wanted = self.next_id() if self.next_id is not None else None
            cur = self._db.execute(
                "INSERT INTO transactions (id, station, connector_id, id_tag, meter_start,"
                " started_at) VALUES (?, ?, ?, ?, ?, ?)",
                (wanted, station, connector_id, id_tag, meter_start, started_at),
            )
            assert cur.lastrowid is not None
            self._journal("tx_start", id=cur.lastrowid, station=station,
                          connector_id=connector_id, id_tag=id_tag, meter_start=meter_start,
                          started_at=started_at)
        self._after()
        return cur.lastrowid

    def set_charger_id(self, station: str, local_id: int, charger_id: int) -> None:
        """The charger was given `charger_id` (a primary back office's) for our `local_id`."""
        charger = None if charger_id == local_id else charger_id
        with self._atomic():
            self._db.execute("UPDATE transactions SET charger_id=? WHERE id=? AND station=?",
                             (charger, local_id, station))
            self._journal("tx_charger_id", id=local_id, station=station, charger_id=charger)
        self._after()

    def stop_transaction(
        self, station: str, transaction_id: int, meter_stop: int, stopped_at: str, reason: str
    ) -> Transaction | None:
        """Close one of `station`'s transactions; returns it (with meter_start) or None.

        A transaction belongs to the station that started it: another station's
        StopTransaction with its id finds nothing and changes nothing.
        """
        tx = self.transaction(station, transaction_id)
        if tx is not None:
            with self._atomic():
                self._db.execute(
                    "UPDATE transactions SET meter_stop=?, stopped_at=?, reason=? WHERE id=?",
                    (meter_stop, stopped_at, reason, tx.local_id),
                )
                self._journal("tx_stop", id=tx.local_id, station=station,
                              meter_stop=meter_stop, stopped_at=stopped_at, reason=reason)
            self._after()
        elif self.journaling:
            # Started on another replica while the shared store was away: unknown here,
            # but the shared store gets its end when it is back (and its energy is
            # published then: `stopped_unknown`).
            with self._atomic():
                self._journal("tx_stop", id=transaction_id, station=station,
                              meter_stop=meter_stop, stopped_at=stopped_at, reason=reason)
            self._after()
            self.stopped_unknown(station, transaction_id, meter_stop)
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

    def flags(self, station: str) -> dict[str, str]:
        """Every flag of a station, in one read (a booting charger needs several)."""
        return dict(self._db.execute(
            "SELECT key, value FROM station_flags WHERE station=?", (station,)).fetchall())

    def set_flag(self, station: str, key: str, value: str) -> None:
        with self._atomic():
            self._db.execute(
                "INSERT INTO station_flags (station, key, value) VALUES (?, ?, ?)"
                " ON CONFLICT (station, key) DO UPDATE SET value=excluded.value",
                (station, key, value),
            )
            self._journal("flag", station=station, key=key, value=value)
        self._after()

    # --- OCPP 2.x transactions (the charger names them) ----------------------------------
    def charger_transaction(self, station: str, transaction_id: str) -> ChargerTransaction | None:
        row = self._db.execute(
            f"SELECT {_CHARGER_TX_COLUMNS} FROM charger_transactions"
            " WHERE station=? AND transaction_id=?", (station, transaction_id)).fetchone()
        return _charger_tx(row) if row else None

    def save_charger_transaction(self, tx: ChargerTransaction) -> None:
        with self._atomic():
            self._save_charger_transaction(tx)
            self._journal("charger_tx", **asdict(tx))
        self._after()

    def _save_charger_transaction(self, tx: ChargerTransaction) -> None:
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
        with self._atomic():
            self._db.execute(
                "UPDATE charger_transactions SET meter_stop=?, stopped_at=?, reason=?"
                " WHERE station=? AND transaction_id=?",
                (meter_stop, stopped_at, reason, station, transaction_id))
            self._journal("charger_tx_stopped", station=station, transaction_id=transaction_id,
                          meter_stop=meter_stop, stopped_at=stopped_at, reason=reason)
        self._after()

    def sessions(self, station: str | None = None, limit: int = 500) -> list[SessionRow]:
        """The latest charging sessions, newest first, both OCPP generations."""
        return sessions(self._db, station, limit)

    def session_reader(self) -> sqlite3.Connection:
        """A connection of its own, for reading every session in a worker thread (CSV)."""
        return sqlite3.connect(self.path, check_same_thread=False)

    # --- what other replicas wrote (shared store) ------------------------------------------
    def import_station(self, station: str, transactions: list[tuple[Any, ...]],
                       charger_transactions: list[tuple[Any, ...]],
                       flags: list[tuple[str, str, str]],
                       relay_queue: list[tuple[Any, ...]] | None = None,
                       relay_transactions: list[tuple[Any, ...]] | None = None) -> None:
        """Rows read from the shared store, newest there: replace ours (no journal).

        `relay_queue`: the station's messages waiting for back offices, oldest first, as
        (key, upstream, version, action, payload, local_tx, transactional, created,
        attempts). Ours that are not there were answered through another replica; theirs
        that are not here join the queue, after ours (which are older: they waited here
        before the station moved), keeping the seq of those a link may be sending."""
        with self._atomic():
            if relay_queue is not None:
                keys = [row[0] for row in relay_queue]
                self._db.execute("CREATE TEMP TABLE IF NOT EXISTS shared_keys (key TEXT)")
                self._db.execute("DELETE FROM shared_keys")
                self._db.executemany("INSERT INTO shared_keys VALUES (?)",
                                     [(k,) for k in keys])
                self._db.execute(
                    "DELETE FROM relay_queue WHERE station=? AND shared_key IS NOT NULL AND"
                    " shared_key NOT IN (SELECT key FROM shared_keys)", (station,))
                self._db.executemany(
                    "INSERT INTO relay_queue (shared_key, station, upstream, version, action,"
                    " payload, local_tx, transactional, created, attempts)"
                    " SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS"
                    " (SELECT 1 FROM relay_queue WHERE shared_key=?)",
                    [(key, station, upstream, version, action, payload, local_tx,
                      int(transactional), created, attempts, key)
                     for (key, upstream, version, action, payload, local_tx, transactional,
                          created, attempts) in relay_queue])
            self._db.executemany(
                "INSERT INTO relay_transactions (station, upstream, local_tx, upstream_tx)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (station, upstream, local_tx)"
                " DO UPDATE SET upstream_tx=excluded.upstream_tx", relay_transactions or [])
            self._db.executemany(
                "INSERT INTO transactions (id, station, connector_id, id_tag, meter_start,"
                " started_at, meter_stop, stopped_at, reason, charger_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " station=excluded.station, connector_id=excluded.connector_id,"
                " id_tag=excluded.id_tag, meter_start=excluded.meter_start,"
                " started_at=excluded.started_at, meter_stop=excluded.meter_stop,"
                " stopped_at=excluded.stopped_at, reason=excluded.reason,"
                " charger_id=excluded.charger_id", transactions)
            self._db.executemany(
                f"INSERT OR REPLACE INTO charger_transactions ({_CHARGER_TX_COLUMNS},"
                " meter_stop, stopped_at, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                charger_transactions)
            self._db.executemany(
                "INSERT INTO station_flags (station, key, value) VALUES (?, ?, ?)"
                " ON CONFLICT (station, key) DO UPDATE SET value=excluded.value", flags)

    def open_charger_transactions(self, station: str) -> list[ChargerTransaction]:
        rows = self._db.execute(
            f"SELECT {_CHARGER_TX_COLUMNS} FROM charger_transactions"
            " WHERE station=? AND ended=0 ORDER BY rowid", (station,)).fetchall()
        return [_charger_tx(row) for row in rows]


    # --- the relay's queues and transaction-id maps (relay/) -------------------------------
    def relay_enqueue(self, station: str, upstream: str, version: str, action: str,
                      payload: str, local_tx: int | None, transactional: bool,
                      created: float) -> int:
        key = uuid.uuid4().hex if self.journaling else None
        with self._atomic_if_journaling():
            cur = self._db.execute(
                "INSERT INTO relay_queue (station, upstream, version, action, payload, local_tx,"
                " transactional, created, shared_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (station, upstream, version, action, payload, local_tx, int(transactional),
                 created, key))
            self._journal("relay_put", key=key, station=station, upstream=upstream,
                          version=version, action=action, payload=payload, local_tx=local_tx,
                          transactional=transactional, created=created)
        self._after()
        assert cur.lastrowid is not None
        return cur.lastrowid

    @contextlib.contextmanager
    def _atomic_if_journaling(self) -> Iterator[None]:
        """The change and its journal entry together; alone, one statement is atomic."""
        if not self.journaling:
            yield
            return
        with self._atomic():
            yield

    def _relay_removed(self, sql: str, args: tuple[Any, ...]) -> int:
        """Run a DELETE on relay_queue; journal each removed message; how many."""
        with self._atomic_if_journaling():
            if not self.journaling:
                return self._db.execute(sql, args).rowcount
            keys = self._db.execute(f"{sql} RETURNING shared_key", args).fetchall()
            for (key,) in keys:
                if key is not None:
                    self._journal("relay_del", key=key)
        self._after()
        return len(keys)

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
        self._relay_removed("DELETE FROM relay_queue WHERE seq=?", (seq,))

    def relay_delete_action(self, station: str, upstream: str, action: str,
                            keep: int) -> int:
        """Drop the waiting messages of `action` but message `keep`; how many."""
        return self._relay_removed(
            "DELETE FROM relay_queue WHERE station=? AND upstream=? AND action=? AND seq!=?",
            (station, upstream, action, keep))

    def relay_drop_oldest(self, station: str, upstream: str, keep: int) -> bool:
        """Drop the oldest waiting message outside a transaction (not message `keep`)."""
        return self._relay_removed(
            "DELETE FROM relay_queue WHERE seq=(SELECT seq FROM relay_queue WHERE station=?"
            " AND upstream=? AND transactional=0 AND seq!=? ORDER BY seq LIMIT 1)",
            (station, upstream, keep)) > 0

    def relay_attempted(self, seq: int) -> None:
        with self._atomic_if_journaling():
            row = self._db.execute(
                "UPDATE relay_queue SET attempts=attempts+1 WHERE seq=? RETURNING shared_key",
                (seq,)).fetchone()
            if row is not None and row[0] is not None:
                self._journal("relay_attempt", key=row[0])
        self._after()

    def relay_answered(self, seq: int, station: str, upstream: str, local_tx: int | None,
                       upstream_tx: int | None) -> None:
        """The back office answered message `seq`: it leaves the queue, and the id the
        back office gave the transaction (StartTransaction) is kept — both or neither."""
        with self._atomic():
            row = self._db.execute("DELETE FROM relay_queue WHERE seq=? RETURNING shared_key",
                                   (seq,)).fetchone()
            if row is not None and row[0] is not None:
                self._journal("relay_del", key=row[0])
            if local_tx is not None and upstream_tx is not None:
                self._db.execute(
                    "INSERT INTO relay_transactions (station, upstream, local_tx, upstream_tx)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (station, upstream, local_tx)"
                    " DO UPDATE SET upstream_tx=excluded.upstream_tx",
                    (station, upstream, local_tx, upstream_tx))
                self._journal("relay_tx", station=station, upstream=upstream,
                              local_tx=local_tx, upstream_tx=upstream_tx)
        self._after()

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
