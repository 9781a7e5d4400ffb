"""The gateway's clock: ISO 8601 UTC text, as published and as answered to chargers."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now(precise: bool = False) -> str:
    spec = "microseconds" if precise else "seconds"
    return datetime.now(timezone.utc).isoformat(timespec=spec).replace("+00:00", "Z")
