"""Durable queue of MQTT messages not yet acknowledged by the broker.

Every QoS≥1 message is written here before the charger gets its answer and
deleted when the broker's PUBACK arrives, so a broker outage, a SIGTERM or a
kill -9 loses nothing: what is left is published, in order, after reconnect
or restart. One row holds all messages of one event-loop tick and class
(group commit), which keeps SQLite off the hot path's profile.

The queue is bounded (OUTBOX_MAX_BYTES). Over the bound, the oldest
*non-essential* rows are dropped with a log line; essential rows —
transactions, energy registers, command results, as their publisher marks
them — are never dropped.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import orjson

Message = tuple[str, str, bool, int]  # topic, payload, retain, qos

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
        self._stop_checkpoints = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, args=(path,), name="outbox-checkpoint", daemon=True
        )
        self._checkpointer.start()
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " essential INTEGER NOT NULL, size INTEGER NOT NULL, body BLOB NOT NULL)"
        )
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        self.rows, self.bytes = int(row[0]), int(row[1])
        self.dropped_messages = 0
        self._sizes: dict[int, int] = {}  # seq → size of rows written by this run

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

    def write(self, batches: list[tuple[bool, list[Message]]], delivered: list[int]) -> list[int]:
        """Insert batches and delete delivered rows in one transaction; return new seqs."""
        seqs = []
        db = self._db
        db.execute("BEGIN")
        try:
            for essential, messages in batches:
                body = orjson.dumps(messages)
                cur = db.execute(
                    "INSERT INTO outbox (essential, size, body) VALUES (?, ?, ?)",
                    (int(essential), len(body), body),
                )
                assert cur.lastrowid is not None
                seq = cur.lastrowid
                seqs.append(seq)
                self._sizes[seq] = len(body)
                self.rows += 1
                self.bytes += len(body)
            if delivered:
                self._delete(delivered)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return seqs

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
            "SELECT seq, body FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()
        return [(s, [tuple(m) for m in orjson.loads(b)]) for s, b in rows]

    def enforce_bound(self, keep_after: int) -> int:
        """Drop the oldest non-essential rows not yet sent; return how many messages went."""
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
            victims, freed = [], 0
            for seq, size, body in rows:
                victims.append(seq)
                freed += size
                dropped += len(orjson.loads(body))
                if self.bytes - freed <= self.max_bytes:
                    break
            self._db.execute("BEGIN")
            self._delete(victims)
            self._db.execute("COMMIT")
        self.dropped_messages += dropped
        return dropped
