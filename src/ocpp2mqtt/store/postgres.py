"""The shared store: STORE_URL=postgresql://… makes every replica share one PostgreSQL
database, so replicas are interchangeable behind any load balancer (docs/scaling.md).

The replica keeps its SQLite store (sqlite.py) as its working copy: the OCPP handlers
read and write it inline, as they always did. What other replicas must see goes into
the SQLite `journal` in the same local transaction; this module copies the journal to
PostgreSQL in order, one PostgreSQL transaction per batch, and:

- **before a charger gets its answer** the session waits until the change is in
  PostgreSQL (`durable`), at most STORE_SYNC_TIMEOUT: a replica killed right after
  answering loses nothing another replica needs. When PostgreSQL is away the answer
  goes out after that timeout, the journal keeps the changes in order, and they follow
  when it is back (the gap is on /readyz and /metrics);
- **when a station connects** its rows (open and recent transactions of both OCPP
  generations, its flags, its messages waiting for back offices and their transaction
  ids) are read from PostgreSQL into the working copy before its
  first message is handled (`load_station`);
- **1.6 transaction ids** come from one PostgreSQL sequence: each replica reserves a
  block (ID_BLOCK) and hands ids out of it, so ids are unique across replicas and never
  reused, and a replica keeps handing them out while the database restarts.

psycopg 3's asyncio connection is used, so nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ocpp2mqtt.store.sqlite import SessionRow, Store

log = logging.getLogger("ocpp2mqtt.store")

ID_BLOCK = 200  # 1.6 transaction ids reserved at a time
ID_LOW = ID_BLOCK // 2  # reserve the next block when fewer than this are left
BATCH = 500  # journal entries per PostgreSQL transaction
RECENT = 20  # closed transactions of a station read when it connects (late stops)
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
HEARTBEAT = 2.0  # seconds between a replica's "alive" writes
ALIVE = 30.0  # a replica not seen for this long is gone (kill -9, power cut; generous:
# a replica starved of CPU for seconds is slow, not gone)
CLAIMS_KEPT = 3600.0  # seconds a command claim is kept
SAME_COMMAND = 10.0  # seconds within which the same bytes on a cmd topic are one command

# Versioned schema: MIGRATIONS[n] takes the database from version n to n + 1. Applied at
# start-up under an advisory lock, so replicas starting together do it once.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE SEQUENCE IF NOT EXISTS transaction_ids;
    CREATE TABLE IF NOT EXISTS transactions (
        id BIGINT PRIMARY KEY,
        station TEXT NOT NULL,
        connector_id INTEGER NOT NULL,
        id_tag TEXT NOT NULL,
        meter_start BIGINT NOT NULL,
        started_at TEXT NOT NULL,
        meter_stop BIGINT,
        stopped_at TEXT,
        reason TEXT,
        charger_id BIGINT
    );
    CREATE INDEX IF NOT EXISTS transactions_station ON transactions (station, id);
    CREATE TABLE IF NOT EXISTS charger_transactions (
        station TEXT NOT NULL,
        transaction_id TEXT NOT NULL,
        evse_id INTEGER NOT NULL,
        id_tag TEXT NOT NULL DEFAULT '',
        meter_start DOUBLE PRECISION,
        started_at TEXT NOT NULL,
        last_seq_no INTEGER,
        last_energy DOUBLE PRECISION,
        ended BOOLEAN NOT NULL DEFAULT FALSE,
        meter_stop DOUBLE PRECISION,
        stopped_at TEXT,
        reason TEXT,
        PRIMARY KEY (station, transaction_id)
    );
    CREATE TABLE IF NOT EXISTS station_flags (
        station TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (station, key)
    );
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    -- The month (UTC) of a charger's timestamp; its first 7 characters if it is no time.
    -- Which replica holds which station's connection, since when (epoch seconds).
    CREATE TABLE IF NOT EXISTS station_owners (
        station TEXT PRIMARY KEY, owner TEXT NOT NULL, since DOUBLE PRECISION NOT NULL
    );
    -- Replicas alive: each one writes `seen` every HEARTBEAT seconds.
    CREATE TABLE IF NOT EXISTS replicas (id TEXT PRIMARY KEY, seen DOUBLE PRECISION NOT NULL);
    -- Which replica answers which MQTT command (by its digest): exactly one.
    CREATE TABLE IF NOT EXISTS command_claims (
        digest BYTEA PRIMARY KEY, replica TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,
        done BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE OR REPLACE FUNCTION ocpp_utc_month(t TEXT) RETURNS TEXT
    LANGUAGE plpgsql IMMUTABLE AS $$
    BEGIN
        RETURN to_char(t::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM');
    EXCEPTION WHEN others THEN
        RETURN substr(t, 1, 7);
    END $$;
    """,
    # Load-balancing groups whose stations are spread over replicas (docs/scaling.md):
    # each member as its holder sees it, and `share`, the most its charger may offer
    # now (A, whole station), raised only under the group's lock.
    """
    CREATE TABLE IF NOT EXISTS group_members (
        grp TEXT NOT NULL,
        station TEXT NOT NULL,
        replica TEXT NOT NULL,
        connected BOOLEAN NOT NULL,
        active BOOLEAN NOT NULL,
        max_current DOUBLE PRECISION NOT NULL,
        mode TEXT NOT NULL,
        drawing DOUBLE PRECISION,
        share DOUBLE PRECISION NOT NULL DEFAULT 0,
        at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (grp, station)
    );
    -- A handed-over copy of a command: the original it answers.
    ALTER TABLE command_claims ADD COLUMN IF NOT EXISTS parent BYTEA;
    -- The relay's queues and transaction-id maps (relay/): a station's messages for its
    -- back offices follow it to whichever replica it connects to.
    CREATE TABLE IF NOT EXISTS relay_queue (
        key TEXT PRIMARY KEY,
        station TEXT NOT NULL,
        upstream TEXT NOT NULL,
        version TEXT NOT NULL,
        action TEXT NOT NULL,
        payload TEXT NOT NULL,
        local_tx BIGINT,
        transactional BOOLEAN NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS relay_queue_station ON relay_queue (station, created);
    CREATE TABLE IF NOT EXISTS relay_transactions (
        station TEXT NOT NULL,
        upstream TEXT NOT NULL,
        local_tx BIGINT NOT NULL,
        upstream_tx BIGINT NOT NULL,
        PRIMARY KEY (station, upstream, local_tx)
    );
    """,
)

_CHARGER_TX = ("station, transaction_id, evse_id, id_tag, meter_start, started_at, "
               "last_seq_no, last_energy, ended, meter_stop, stopped_at, reason")

# Journal operations (sqlite.py `_journal`) → SQL. Each is idempotent: a batch that
# failed half-way is sent again whole.
APPLY: dict[str, tuple[str, tuple[str, ...]]] = {
    "tx_start": (
        "INSERT INTO transactions (id, station, connector_id, id_tag, meter_start, started_at)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
        ("id", "station", "connector_id", "id_tag", "meter_start", "started_at")),
    "tx_charger_id": (
        "UPDATE transactions SET charger_id=%s WHERE id=%s AND station=%s",
        ("charger_id", "id", "station")),
    "tx_stop": (
        "UPDATE transactions SET meter_stop=%s, stopped_at=%s, reason=%s"
        " WHERE id=%s AND station=%s",
        ("meter_stop", "stopped_at", "reason", "id", "station")),
    "flag": (
        "INSERT INTO station_flags (station, key, value) VALUES (%s, %s, %s)"
        " ON CONFLICT (station, key) DO UPDATE SET value=excluded.value",
        ("station", "key", "value")),
    "meta": (
        "INSERT INTO meta (key, value) VALUES (%s, %s)"
        " ON CONFLICT (key) DO UPDATE SET value=excluded.value",
        ("key", "value")),
    "charger_tx": (
        "INSERT INTO charger_transactions (station, transaction_id, evse_id, id_tag,"
        " meter_start, started_at, last_seq_no, last_energy, ended)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (station, transaction_id) DO UPDATE SET evse_id=excluded.evse_id,"
        " id_tag=excluded.id_tag, meter_start=excluded.meter_start,"
        " last_seq_no=excluded.last_seq_no, last_energy=excluded.last_energy,"
        " ended=excluded.ended",
        ("station", "transaction_id", "evse_id", "id_tag", "meter_start", "started_at",
         "last_seq_no", "last_energy", "ended")),
    "relay_put": (
        "INSERT INTO relay_queue (key, station, upstream, version, action, payload, local_tx,"
        " transactional, created) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (key) DO NOTHING",
        ("key", "station", "upstream", "version", "action", "payload", "local_tx",
         "transactional", "created")),
    "relay_del": ("DELETE FROM relay_queue WHERE key=%s", ("key",)),
    "relay_attempt": ("UPDATE relay_queue SET attempts=attempts+1 WHERE key=%s", ("key",)),
    "relay_tx": (
        "INSERT INTO relay_transactions (station, upstream, local_tx, upstream_tx)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (station, upstream, local_tx)"
        " DO UPDATE SET upstream_tx=excluded.upstream_tx",
        ("station", "upstream", "local_tx", "upstream_tx")),
    "charger_tx_stopped": (
        "UPDATE charger_transactions SET meter_stop=%s, stopped_at=%s, reason=%s"
        " WHERE station=%s AND transaction_id=%s",
        ("meter_stop", "stopped_at", "reason", "station", "transaction_id")),
}


@dataclass(slots=True)
class GroupMember:
    """A load-balancing group's member as the replica holding it sees it."""

    station: str
    connected: bool
    active: bool  # a car charges or wants to
    max_current: float  # what it may take (its own cap, a user limit, given back)
    mode: str
    drawing: float | None  # A, the worst phase
    replica: str = ""
    share: float = 0.0  # the most its charger may offer now (A, whole station)
    at: float = 0.0  # epoch s of the row's last change
    alive: bool = True  # its replica is alive (ALIVE)
    seen: float = 0.0  # epoch s its replica was last seen


@dataclass(slots=True)
class GroupView:
    """A group as the shared store has it."""

    members: dict[str, GroupMember]
    max_current: float | None  # the runtime group limit (bridge/request/group_limit)
    publisher: bool  # this replica publishes the group's document (lowest live id)


class StoreUnavailable(Exception):
    """PostgreSQL cannot be reached (the message says why)."""


class SharedStore:
    """The replica's link to PostgreSQL: journal copier, station loader, id blocks."""

    def __init__(self, url: str, local: Store, sync_timeout: float, replica: str = ""):
        self.url = url
        self.replica = replica  # this gateway's instance id (station_owners)
        # The stations connected here (the gateway sets it): claimed again on reconnect.
        self.held: Callable[[], list[str]] = list
        self.local = local
        self.sync_timeout = sync_timeout
        # Its own tasks: they outlive the gateway's (the last changes are copied at stop).
        self.spawn = asyncio.ensure_future
        self.connected = False
        self.ever_connected = False
        self.down_since: float | None = time.monotonic()  # until the first connection
        self.copied = 0  # journal entries copied to PostgreSQL
        self.reliable_since = float("inf")  # see _connect
        # The live replica with the lowest id (as of the last heartbeat): it answers
        # bridge requests. Until known, every replica does (two answers beat none).
        self.leader = True
        self.failures = 0  # failed attempts to reach or write PostgreSQL
        self._conn: Any = None  # psycopg.AsyncConnection
        self._lock = asyncio.Lock()  # one statement sequence at a time on the connection
        self._ids: list[int] = []
        self._journal_seq = 0  # the newest journal entry we know of
        self._copied_seq = 0  # the newest one in PostgreSQL
        self._wake = asyncio.Event()
        self._copied_event = asyncio.Event()
        self._first_connection = asyncio.Event()
        self._task: asyncio.Task[Any] | None = None
        self._id_task: asyncio.Task[Any] | None = None
        self._heartbeat_task: asyncio.Task[Any] | None = None
        local.journaling = True
        local.next_id = self._next_id
        local.journaled = self._journaled
        local.stopped_unknown = self._stopped_unknown
        # Stops of transactions this replica did not know: (station, id) → (meter stop,
        # when); their energy is told (`on_session_energy`) once the start is here.
        self._late: dict[tuple[str, int], tuple[int, float]] = {}
        self.on_session_energy: Callable[[str, int, float], None] = lambda *args: None

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self, wait: float) -> None:
        """Connect (waiting up to `wait` seconds at start-up) and start copying."""
        self._copied_seq, self._journal_seq = self.local.journal_bounds()
        self._task = self.spawn(self._run())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._first_connection.wait(), wait)
        if not self.ever_connected:
            log.error("shared store (STORE_URL) not reachable after %g s; serving chargers "
                      "from this replica's own store and retrying", wait)

    async def stop(self, wait: float = 5.0) -> None:
        """Copy what is left (up to `wait` seconds), then close."""
        if self.connected and self.local.journal_depth():
            self._wake.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._until_copied(self._journal_seq), wait)
        if self.connected:
            with contextlib.suppress(StoreUnavailable):
                await self._query("DELETE FROM replicas WHERE id=%s", (self.replica,))
        for task in (self._task, self._id_task, self._heartbeat_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()

    # --- what the rest of the gateway sees -------------------------------------------------
    @property
    def dirty(self) -> bool:
        """Changes not yet in PostgreSQL (the session awaits `durable` before answering)."""
        return self._copied_seq < self._journal_seq

    async def durable(self) -> None:
        """Until every change so far is in PostgreSQL, at most STORE_SYNC_TIMEOUT."""
        wanted = self._journal_seq
        if self._copied_seq >= wanted:
            return
        if not self.connected:
            timeout = min(self.sync_timeout, 0.05)  # away: do not hold every answer
        else:
            timeout = self.sync_timeout
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._until_copied(wanted), timeout)

    def readiness(self) -> str | None:
        """What /readyz says about the store, or None when all is well."""
        if self.connected:
            return None
        gap = time.monotonic() - (self.down_since or time.monotonic())
        return (f"store: PostgreSQL unreachable for {gap:.0f} s; "
                f"{self.local.journal_depth()} changes waiting to be copied")

    def unreachable_seconds(self) -> float:
        return 0.0 if self.connected or self.down_since is None else \
            time.monotonic() - self.down_since

    async def station_owner(self, station: str) -> tuple[str, float] | None:
        """(replica, since) holding `station` now according to the shared store; a replica
        that stopped without letting go (kill -9) holds nothing."""
        async with self._lock:
            conn = self._need()
            try:
                cur = await conn.execute(
                    "SELECT o.owner, o.since FROM station_owners o JOIN replicas r"
                    " ON r.id = o.owner WHERE o.station=%s AND (r.seen > %s OR o.owner = %s)",
                    (station, time.time() - ALIVE, self.replica))
                row = await cur.fetchone()
                await conn.commit()
            except Exception as exc:
                await self._lost(exc)
                raise StoreUnavailable(str(exc)) from exc
        return (str(row[0]), float(row[1])) if row else None

    async def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async with self._lock:
            conn = self._need()
            try:
                cur = await conn.execute(sql, args)
                rows = await cur.fetchall() if cur.description else []
                await conn.commit()
            except Exception as exc:
                await self._lost(exc)
                raise StoreUnavailable(str(exc)) from exc
        return list(rows)

    async def responsible(self, station: str) -> bool:
        """For a command to a station this replica does not hold: should it claim it at
        once? Yes if it held the station last, or if no live replica holds it and this is
        the live replica with the lowest id. (The others claim after CLAIM_GRACE: the one
        chosen here may be dead without being counted gone yet.)"""
        rows = await self._query(
            "SELECT o.owner, r.seen > %s FROM station_owners o LEFT JOIN replicas r"
            " ON r.id = o.owner WHERE o.station=%s", (time.time() - ALIVE, station))
        owner = rows[0][0] if rows else None
        if owner == self.replica:
            return True
        if rows and rows[0][1]:
            return False  # that replica heard the command too
        first = await self._query(
            "SELECT id FROM replicas WHERE seen > %s AND id <> %s ORDER BY id LIMIT 1",
            (time.time() - ALIVE, owner or ""))
        return not first or first[0][0] == self.replica

    async def command_done(self, digest: bytes) -> None:
        """Its result is published: nobody needs to watch over it any more."""
        with contextlib.suppress(StoreUnavailable):
            # A handed-over copy answers its original too: a replica watching over the
            # original (its runner handed it over, then died) must not answer it again.
            await self._query(
                "WITH RECURSIVE up(d) AS (SELECT %s::bytea UNION SELECT c.parent FROM"
                " command_claims c JOIN up ON c.digest = up.d WHERE c.parent IS NOT NULL)"
                " UPDATE command_claims SET done=TRUE WHERE digest IN (SELECT d FROM up)",
                (digest,))

    async def orphaned(self, digest: bytes) -> bool | None:
        """A claimed command whose replica stopped before answering it: True if this
        replica now owns it (and must answer it), False while it is in hand, None once
        it is answered."""
        rows = await self._query(
            "SELECT c.done, r.seen > %s FROM command_claims c LEFT JOIN replicas r"
            " ON r.id = c.replica WHERE c.digest=%s", (time.time() - ALIVE, digest))
        if not rows or rows[0][0]:
            return None
        if rows[0][1]:
            return False
        copies = await self._query(
            "SELECT 1 FROM command_claims c JOIN replicas r ON r.id = c.replica"
            " WHERE c.parent=%s AND NOT c.done AND r.seen > %s",
            (digest, time.time() - ALIVE))
        if copies:
            return False  # handed over before its runner stopped: the copy's runner answers
        taken = await self._query(
            "UPDATE command_claims SET replica=%s WHERE digest=%s AND NOT done AND replica IN"
            " (SELECT c.replica FROM command_claims c LEFT JOIN replicas r ON r.id = c.replica"
            " WHERE c.digest=%s AND (r.seen IS NULL OR r.seen <= %s)) RETURNING replica",
            (self.replica, digest, digest, time.time() - ALIVE))
        return bool(taken)

    async def claimed(self, digest: bytes) -> bool:
        rows = await self._query(
            "SELECT 1 FROM command_claims WHERE digest=%s AND (NOT done OR at > %s)",
            (digest, time.time() - SAME_COMMAND))
        return bool(rows)

    async def claim_command(self, digest: bytes) -> str:
        """Claim an MQTT command: returns the replica that answers it (us if we won)."""
        now = time.time()
        # The same bytes published again later are a new command: a claim older than
        # SAME_COMMAND is taken over.
        # Only a finished one: a claim still in hand is watched over (`orphaned`).
        rows = await self._query(
            "INSERT INTO command_claims (digest, replica, at) VALUES (%s, %s, %s)"
            " ON CONFLICT (digest) DO UPDATE SET"
            " replica = CASE WHEN command_claims.done AND command_claims.at < %s"
            " THEN excluded.replica ELSE command_claims.replica END,"
            " done = command_claims.done AND command_claims.at >= %s,"
            " at = CASE WHEN command_claims.done AND command_claims.at < %s"
            " THEN excluded.at ELSE command_claims.at END"
            " RETURNING replica", (digest, self.replica, now, now - SAME_COMMAND,
                                   now - SAME_COMMAND, now - SAME_COMMAND))
        return str(rows[0][0])

    async def hand_over_command(self, digest: bytes, to: str, parent: bytes | None) -> None:
        """The copy a replica hands over (its digest) is the new owner's to answer; its
        result is the original's (`parent`) too."""
        await self._query(
            "INSERT INTO command_claims (digest, replica, at, parent) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (digest) DO UPDATE SET replica=excluded.replica, at=excluded.at,"
            " parent=excluded.parent", (digest, to, time.time(), parent))

    # --- load-balancing groups spread over replicas -------------------------------------------
    _MEMBERS = ("SELECT m.station, m.connected, m.active, m.max_current, m.mode, m.drawing,"
                " m.replica, m.share, m.at, COALESCE(r.seen, 0) FROM group_members m"
                " LEFT JOIN replicas r ON r.id = m.replica WHERE m.grp=%s")

    def _members(self, rows: list[tuple[Any, ...]]) -> dict[str, GroupMember]:
        alive_after = time.time() - ALIVE
        return {row[0]: GroupMember(row[0], row[1], row[2], row[3], row[4], row[5],
                                    replica=row[6], share=row[7], at=row[8], seen=row[9],
                                    alive=row[6] == self.replica or row[9] > alive_after)
                for row in rows}

    async def group_view(self, group: str, held: list[GroupMember], left: list[str],
                         limit_key: str) -> GroupView:
        """Write what changed about the members held here (`left`: no longer connected
        here), read every member, the runtime limit, and whether this replica publishes."""
        now = time.time()
        async with self._lock:
            conn = self._need()
            try:
                async with conn.pipeline():
                    for m in held:
                        await conn.execute(
                            "INSERT INTO group_members (grp, station, replica, connected,"
                            " active, max_current, mode, drawing, at) VALUES"
                            " (%s, %s, %s, TRUE, %s, %s, %s, %s, %s) ON CONFLICT (grp, station)"
                            " DO UPDATE SET replica=excluded.replica, connected=TRUE,"
                            " active=excluded.active, max_current=excluded.max_current,"
                            " mode=excluded.mode, drawing=excluded.drawing, at=excluded.at",
                            (group, m.station, self.replica, m.active, m.max_current, m.mode,
                             m.drawing, now))
                    for station in left:
                        await conn.execute(
                            "UPDATE group_members SET connected=FALSE, at=%s WHERE grp=%s"
                            " AND station=%s AND replica=%s",
                            (now, group, station, self.replica))
                    members = await conn.execute(self._MEMBERS, (group,))
                    limit = await conn.execute("SELECT value FROM meta WHERE key=%s",
                                               (limit_key,))
                    first = await conn.execute(
                        "SELECT id FROM replicas WHERE seen > %s ORDER BY id LIMIT 1",
                        (now - ALIVE,))
                rows = await members.fetchall()
                limit_row = await limit.fetchone()
                first_row = await first.fetchone()
                await conn.commit()
            except Exception as exc:
                await self._lost(exc)
                raise StoreUnavailable(str(exc)) from exc
        return GroupView(self._members(rows),
                         float(limit_row[0]) if limit_row else None,
                         first_row is None or first_row[0] == self.replica)

    async def set_share(self, group: str, station: str,
                        decide: Callable[[dict[str, GroupMember]], float]) -> float:
        """Under the group's lock (one replica at a time): `decide` sees every member and
        returns the share `station` gets, which is recorded; returns it. A rise is only
        safe this way: two replicas raising at once would each count the other's old
        share."""
        async with self._lock:
            conn = self._need()
            try:
                await conn.execute("SELECT pg_advisory_xact_lock(7008, hashtext(%s))",
                                   (group,))
                cur = await conn.execute(self._MEMBERS, (group,))
                share = decide(self._members(await cur.fetchall()))
                await conn.execute("UPDATE group_members SET share=%s WHERE grp=%s AND"
                                   " station=%s", (share, group, station))
                await conn.commit()
            except Exception as exc:
                await self._lost(exc)
                raise StoreUnavailable(str(exc)) from exc
        return share

    def _stopped_unknown(self, station: str, transaction_id: int, meter_stop: int) -> None:
        self._late[(station, transaction_id)] = (meter_stop, time.time())

    async def _late_energy(self) -> None:
        """The starts of the stops this replica did not know, if the store has them now
        (the replica that started them copies its journal when it is back)."""
        now = time.time()
        for key, (_, when) in list(self._late.items()):
            if now - when > CLAIMS_KEPT:
                del self._late[key]
        if not self._late:
            return
        rows = await self._query(
            "SELECT station, id, meter_start FROM transactions WHERE id = ANY(%s)",
            ([tx for _, tx in self._late],))
        for station, tx, meter_start in rows:
            late = self._late.pop((station, tx), None)
            if late is not None:
                self.on_session_energy(station, tx, late[0] - meter_start)

    async def _heartbeats(self) -> None:
        while True:
            with contextlib.suppress(StoreUnavailable):
                await self._late_energy()
                now = time.time()
                await self._query(
                    "INSERT INTO replicas (id, seen) VALUES (%s, %s) ON CONFLICT (id)"
                    " DO UPDATE SET seen=excluded.seen", (self.replica, now))
                first = await self._query(
                    "SELECT id FROM replicas WHERE seen > %s ORDER BY id LIMIT 1",
                    (now - ALIVE,))
                self.leader = not first or first[0][0] == self.replica
                await self._query("DELETE FROM command_claims WHERE at < %s",
                                  (now - CLAIMS_KEPT,))
            await asyncio.sleep(HEARTBEAT)

    async def release_station(self, station: str) -> None:
        """The station left this replica (not to another one)."""
        with contextlib.suppress(StoreUnavailable):
            async with self._lock:
                conn = self._need()
                try:
                    await conn.execute("DELETE FROM station_owners WHERE station=%s"
                                       " AND owner=%s", (station, self.replica))
                    await conn.commit()
                except Exception as exc:
                    await self._lost(exc)

    async def load_station(self, station: str) -> None:
        """Read what other replicas wrote about `station` into the working copy: its open
        and recent transactions and its flags. Waits at most STORE_SYNC_TIMEOUT (first our
        own changes go out, so nothing newer here is overwritten)."""
        if not self.connected:
            return
        try:
            await asyncio.wait_for(self._load(station), self.sync_timeout * 2)
        except (asyncio.TimeoutError, StoreUnavailable, OSError) as exc:
            log.warning("%s: could not read the shared store (%s); using this replica's copy",
                        station, exc or type(exc).__name__)
            self.spawn(self._claim_stations([station]))  # commands must find it here

    async def _claim_stations(self, stations: list[str]) -> None:
        """Record that these stations are connected here (station_owners)."""
        if not stations:
            return
        now = time.time()
        with contextlib.suppress(StoreUnavailable):
            async with self._lock:
                conn = self._need()
                try:
                    async with conn.pipeline():
                        for station in stations:
                            await conn.execute(
                                "INSERT INTO station_owners (station, owner, since)"
                                " VALUES (%s, %s, %s) ON CONFLICT (station) DO UPDATE"
                                " SET owner=excluded.owner, since=excluded.since",
                                (station, self.replica, now))
                    await conn.commit()
                except Exception as exc:
                    await self._lost(exc)

    async def _load(self, station: str) -> None:
        await self._until_copied(self._journal_seq)
        async with self._lock:
            conn = self._need()
            try:
                cur = await conn.execute(
                    "(SELECT id, station, connector_id, id_tag, meter_start, started_at,"
                    " meter_stop, stopped_at, reason, charger_id FROM transactions"
                    " WHERE station=%s AND meter_stop IS NULL)"
                    " UNION (SELECT id, station, connector_id, id_tag, meter_start, started_at,"
                    " meter_stop, stopped_at, reason, charger_id FROM transactions"
                    " WHERE station=%s ORDER BY id DESC LIMIT %s)",
                    (station, station, RECENT))
                transactions = await cur.fetchall()
                cur = await conn.execute(
                    f"(SELECT {_CHARGER_TX} FROM charger_transactions"
                    " WHERE station=%s AND NOT ended) UNION"
                    f" (SELECT {_CHARGER_TX} FROM charger_transactions WHERE station=%s"
                    " ORDER BY started_at DESC LIMIT %s)", (station, station, RECENT))
                charger = await cur.fetchall()
                cur = await conn.execute(
                    "SELECT station, key, value FROM station_flags WHERE station=%s",
                    (station,))
                flags = await cur.fetchall()
                cur = await conn.execute(
                    "SELECT key, upstream, version, action, payload, local_tx, transactional,"
                    " created, attempts FROM relay_queue WHERE station=%s"
                    " ORDER BY created, key", (station,))
                relay_queue = await cur.fetchall()
                cur = await conn.execute(
                    "SELECT station, upstream, local_tx, upstream_tx FROM relay_transactions"
                    " WHERE station=%s ORDER BY local_tx DESC LIMIT %s", (station, RECENT * 4))
                relay_transactions = await cur.fetchall()
                # This replica holds the station now: a replica still waiting with a
                # command for it hands it over instead of answering not_connected.
                await conn.execute(
                    "INSERT INTO station_owners (station, owner, since)"
                    " VALUES (%s, %s, %s) ON CONFLICT (station) DO UPDATE"
                    " SET owner=excluded.owner, since=excluded.since",
                    (station, self.replica, time.time()))
                await conn.commit()
            except Exception as exc:
                await self._lost(exc)
                raise StoreUnavailable(str(exc)) from exc
        self.local.import_station(station, list(transactions), list(charger), list(flags),
                                  list(relay_queue), list(relay_transactions))

    async def sessions(self, station: str | None, limit: int | None,
                       ) -> list[SessionRow]:
        """Every replica's sessions, newest first (the web page's history and CSV). On a
        connection of its own: a long read never delays the journal."""
        where, args = ("WHERE station=%s", (station,)) if station else ("", ())
        async with await self._reader() as conn:
            cur = await conn.execute(
                f"SELECT * FROM ({_SESSIONS}) s {where} ORDER BY started_at DESC"
                + (" LIMIT %s" if limit is not None else ""),
                (*args, limit) if limit is not None else args)
            rows = await cur.fetchall()
        return [SessionRow(station_, tx, connector, tag, start, stop, meter_start, meter_stop,
                           reason, bool(ended))
                for (station_, tx, connector, tag, start, stop, meter_start, meter_stop,
                     reason, ended) in rows]

    async def sessions_summary(self, station: str | None) -> tuple[int, list[dict[str, Any]]]:
        where, args = ("WHERE station=%s", (station,)) if station else ("", ())
        async with await self._reader() as conn:
            cur = await conn.execute(f"SELECT COUNT(*) FROM ({_SESSIONS}) s {where}", args)
            count = (await cur.fetchone())[0]
            cur = await conn.execute(
                f"SELECT ocpp_utc_month(started_at) AS m, id_tag, COUNT(*),"
                f" SUM(meter_stop - meter_start) FROM ({_SESSIONS}) s {where}"
                f"{' AND' if where else ' WHERE'} meter_stop IS NOT NULL"
                " AND meter_start IS NOT NULL GROUP BY m, id_tag ORDER BY m DESC, id_tag",
                args)
            rows = await cur.fetchall()
        return int(count), [{"month": m, "id_tag": tag, "sessions": n,
                             "energy": round(float(wh), 3)} for m, tag, n, wh in rows]

    async def _reader(self) -> Any:
        import psycopg

        return await psycopg.AsyncConnection.connect(self.url, connect_timeout=5,
                                                     application_name="ocpp2mqtt-web")

    # --- transaction ids ----------------------------------------------------------------------
    def _next_id(self) -> int:
        if len(self._ids) < ID_LOW and (self._id_task is None or self._id_task.done()):
            self._id_task = self.spawn(self._reserve_ids())
        if self._ids:
            return self._ids.pop(0)
        # The block ran out while PostgreSQL is away: an id no other replica can have
        # been given, above every id handed out so far, is not knowable. Say so loudly;
        # the local sequence continues above the highest id this replica has seen.
        log.error("no 1.6 transaction id reserved in the shared store (unreachable): "
                  "using this replica's own sequence; ids may repeat across replicas")
        return self.local.max_transaction_id() + 1

    async def _reserve_ids(self) -> None:
        async with self._lock:
            conn = self._need()
            try:
                cur = await conn.execute(
                    "SELECT nextval('transaction_ids') FROM generate_series(1, %s)",
                    (ID_BLOCK,))
                block = [row[0] for row in await cur.fetchall()]
                await conn.commit()
            except Exception as exc:
                await self._lost(exc)
                return
        self._ids.extend(block)

    # --- copying the journal ---------------------------------------------------------------
    def _journaled(self, seq: int) -> None:
        self._journal_seq = max(self._journal_seq, seq)
        self._wake.set()

    async def _until_copied(self, seq: int) -> None:
        while self._copied_seq < seq:
            self._copied_event.clear()
            await self._copied_event.wait()

    async def _run(self) -> None:
        attempt = 0
        while True:
            if self._conn is None:
                try:
                    await self._connect()
                    attempt = 0
                except Exception as exc:
                    self.failures += 1
                    if attempt == 0:
                        log.warning("shared store: cannot connect (%s); retrying", exc)
                    await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
                    attempt += 1
                    continue
            self._wake.clear()
            batch = self.local.journal(BATCH)
            if not batch:
                await self._wake.wait()
                continue
            try:
                await self._copy(batch)
            except Exception as exc:
                await self._lost(exc)
                await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
                attempt += 1
                continue
            self.local.journal_done(batch[-1][0])
            self.copied += len(batch)
            self._copied_seq = batch[-1][0]
            self._copied_event.set()

    async def _copy(self, batch: list[tuple[int, str, dict[str, Any]]]) -> None:
        async with self._lock:
            conn = self._need()
            async with conn.pipeline():
                for _, op, args in batch:
                    sql, names = APPLY[op]
                    await conn.execute(sql, tuple(args.get(name) for name in names))
            await conn.commit()

    async def _connect(self) -> None:
        import psycopg  # only with STORE_URL=postgresql://…

        conn = await psycopg.AsyncConnection.connect(self.url, connect_timeout=5,
                                                     application_name="ocpp2mqtt")
        try:
            await migrate(conn)
            # A store that ran on SQLite before: never hand out an id it already gave.
            await conn.execute(
                "SELECT setval('transaction_ids', GREATEST((SELECT last_value FROM"
                " transaction_ids), %s))", (max(self.local.max_transaction_id(), 1),))
            await conn.commit()
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        if not self.connected:
            gap = time.monotonic() - (self.down_since or time.monotonic())
            log.info("shared store: connected to PostgreSQL%s",
                     f" after {gap:.1f} s away" if self.ever_connected else "")
        self.connected = self.ever_connected = True
        self.down_since = None
        # What the store says about commands older than this may be incomplete: a
        # replica may have run one without being able to claim it.
        self.reliable_since = time.time()
        self._first_connection.set()
        # Stations that connected while the database was away are ours: say so.
        self.spawn(self._claim_stations(self.held()))
        if self._heartbeat_task is None:
            self._heartbeat_task = self.spawn(self._heartbeats())
        if len(self._ids) < ID_LOW:
            self._id_task = self.spawn(self._reserve_ids())

    def _need(self) -> Any:
        if self._conn is None:
            raise StoreUnavailable("not connected to PostgreSQL")
        return self._conn

    async def _lost(self, exc: BaseException) -> None:
        self.failures += 1
        if self.connected:
            log.warning("shared store: lost PostgreSQL (%s); serving from this replica's "
                        "copy and retrying", exc)
            self.down_since = time.monotonic()
        self.connected = False
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
        self._wake.set()  # the copier reconnects


_SESSIONS = (
    "SELECT station, CAST(COALESCE(charger_id, id) AS TEXT) AS tx, connector_id, id_tag,"
    " started_at, stopped_at, CAST(meter_start AS DOUBLE PRECISION) AS meter_start,"
    " CAST(meter_stop AS DOUBLE PRECISION) AS meter_stop, reason,"
    " meter_stop IS NOT NULL AS ended FROM transactions"
    " UNION ALL SELECT station, transaction_id, evse_id, id_tag, started_at, stopped_at,"
    " meter_start, COALESCE(meter_stop, CASE WHEN ended THEN last_energy END), reason, ended"
    " FROM charger_transactions")


async def migrate(conn: Any) -> int:
    """Bring the database to the newest schema version; returns it."""
    await conn.execute("SELECT pg_advisory_xact_lock(7007)")  # one replica at a time
    await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    cur = await conn.execute("SELECT version FROM schema_version")
    row = await cur.fetchone()
    version = row[0] if row else 0
    if row is None:
        await conn.execute("INSERT INTO schema_version (version) VALUES (0)")
    for n in range(version, len(MIGRATIONS)):
        await conn.execute(MIGRATIONS[n])
        log.info("shared store: schema version %d applied", n + 1)
    if version < len(MIGRATIONS):
        await conn.execute("UPDATE schema_version SET version=%s", (len(MIGRATIONS),))
    elif version > len(MIGRATIONS):
        raise StoreUnavailable(f"the database has schema version {version}, newer than this "
                               f"ocpp2mqtt knows ({len(MIGRATIONS)}): upgrade ocpp2mqtt")
    await conn.commit()
    return len(MIGRATIONS)


__all__ = ["MIGRATIONS", "GroupMember", "GroupView", "SharedStore", "StoreUnavailable", "migrate"]
