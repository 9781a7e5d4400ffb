"""Durable queue of MQTT messages not yet acknowledged by the broker.

Every QoS≥1 message is written here before the charger gets its answer and
deleted when the broker's PUBACK arrives, so a broker outage, a SIGTERM or a
kill -9 loses nothing: what is left is published, in order, after reconnect
or restart. One row holds all messages of one event-loop tick (group commit),
which keeps SQLite off the hot path's profile.

The queue is bounded (OUTBOX_MAX_BYTES). Over the bound, the *non-essential*
messages of the oldest rows are dropped with a log line; essential ones —
transactions, energy registers, command results, as their publisher marks
them — are never dropped.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import orjson

# topic, payload, retain, qos, essential. One tuple per message, as the publisher made it.
Message = tuple[str, str, bool, int, bool]


def _messages(body: bytes, row_essential: int) -> list[Message]:
    # Rows written before 2.6 hold 4-element messages and one class per row.
    return [(m[0], m[1], m[2], m[3], bool(m[4]) if len(m) > 4 else bool(row_essential))
            for m in orjson.loads(body)]


_SCHEMA = ("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, essential INTEGER NOT NULL,"
           " size INTEGER NOT NULL, body BLOB NOT NULL)")


class Outbox:
    def __init__(self, path: Path, max_bytes: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # A WAL checkpoint fsyncs the database: tens of milliseconds the event loop
        # would stall for (it showed as p99 latency in bench/). Checkpoint from a
        # background thread instead; commits stay in the WAL and survive kill -9.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        # essential = 1: the row holds only essential messages (nothing the bound may drop).
        # seq is assigned here, rising within a run (replay order); AUTOINCREMENT, as before
        # 2.6, cost every insert a second page write (sqlite_sequence): migrated away.
        schema = self._db.execute(
            "SELECT sql FROM sqlite_master WHERE type='table' AND name='outbox'").fetchone()
        if schema and "AUTOINCREMENT" in schema[0].upper():
            self._db.executescript(
                "BEGIN; ALTER TABLE outbox RENAME TO outbox_old;"
                f" {_SCHEMA}; INSERT INTO outbox SELECT seq, essential, size, body FROM outbox_old;"
                " DROP TABLE outbox_old; COMMIT;")
        self._db.execute(_SCHEMA.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"))
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        self.rows, self.bytes = int(row[0]), int(row[1])
        self._next_seq = int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox")
                             .fetchone()[0]) + 1
        self.dropped_messages = 0
        self._sizes: dict[int, int] = {}  # seq → size of rows written by this run
        self._stop_checkpoints = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, args=(path,), name="outbox-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _checkpoint_loop(self, path: Path) -> None:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            while not self._stop_checkpoints.wait(1.0):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass  # busy: next second
        finally:
            db.close()

    def close(self) -> None:
        self._stop_checkpoints.set()
        self._checkpointer.join(5)
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self._db.close()

    def write(self, messages: list[Message], delivered: list[int]) -> int:
        """Insert one row (if there are messages) and delete delivered rows in one
        transaction; return the new row's seq (0 when none was written)."""
        db = self._db
        seq = 0
        if messages:
            body = orjson.dumps(messages)
            seq = self._next_seq
            insert = ("INSERT INTO outbox (seq, essential, size, body) VALUES (?, ?, ?, ?)",
                      (seq, int(all(m[4] for m in messages)), len(body), body))
        if not delivered:
            if seq:
                db.execute(*insert)  # one statement is its own transaction: no BEGIN/COMMIT
        else:
            db.execute("BEGIN")
            try:
                if seq:
                    db.execute(*insert)
                self._delete(delivered)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        if seq:
            self._next_seq = seq + 1
            self._sizes[seq] = len(body)
            self.rows += 1
            self.bytes += len(body)
        return seq

    def _delete(self, seqs: list[int]) -> None:
        sizes = self._sizes
        for start in range(0, len(seqs), 500):
            chunk = seqs[start:start + 500]
            marks = ",".join("?" * len(chunk))
            missing = [seq for seq in chunk if seq not in sizes]
            if missing:  # rows from a previous run: learn their sizes once
                marks_missing = ",".join("?" * len(missing))
                sizes.update(self._db.execute(
                    f"SELECT seq, size FROM outbox WHERE seq IN ({marks_missing})", missing
                ).fetchall())
            self._db.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", chunk)
            for seq in chunk:
                size = sizes.pop(seq, None)
                if size is not None:
                    self.rows -= 1
                    self.bytes -= size

    def after(self, seq: int, limit: int = 500) -> list[tuple[int, list[Message]]]:
        rows = self._db.execute(
            "SELECT seq, essential, body FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        ).fetchall()
        return [(s, _messages(b, e)) for s, e, b in rows]

    def enforce_bound(self, keep_after: int) -> int:
        """Drop the non-essential messages of the oldest rows not yet sent, until the
        outbox fits its bound; return how many messages went."""
        if self.bytes <= self.max_bytes:
            return 0
        dropped = 0
        while self.bytes > self.max_bytes:
            rows = self._db.execute(
                "SELECT seq, size, body FROM outbox WHERE essential=0 AND seq > ?"
                " ORDER BY seq LIMIT 200",
                (keep_after,),
            ).fetchall()
            if not rows:
                break
            self._db.execute("BEGIN")
            try:
                for seq, size, body in rows:
                    messages = _messages(body, 0)
                    kept = [m for m in messages if m[4]]
                    dropped += len(messages) - len(kept)
                    if kept:
                        new = orjson.dumps(kept)
                        self._db.execute(
                            "UPDATE outbox SET essential=1, size=?, body=? WHERE seq=?",
                            (len(new), new, seq))
                        self._sizes[seq] = len(new)
                        self.bytes += len(new) - size
                    else:
                        self._sizes.setdefault(seq, size)
                        self._delete([seq])
                    if self.bytes <= self.max_bytes:
                        break
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self.dropped_messages += dropped
        return dropped
