"""What must survive a restart, and what replicas share.

- `sqlite.py` — `Store`, the replica's own SQLite store (the default, and with a shared
  store its working copy and journal).
- `postgres.py` — `SharedStore`: STORE_URL=postgresql://… makes every replica share one
  PostgreSQL database (docs/scaling.md).
"""

from ocpp2mqtt.store.sqlite import (
    ChargerTransaction,
    QueuedMessage,
    SessionRow,
    Store,
    Transaction,
    sessions,
    sessions_summary,
)

__all__ = ["ChargerTransaction", "QueuedMessage", "SessionRow", "Store", "Transaction",
           "sessions", "sessions_summary"]
