"""The gateway's clock: ISO 8601 UTC text, as published and as answered to chargers."""

from __future__ import annotations

import time
from datetime import datetime, timezone

# Every CALL is stamped with the time it arrived (to the second): formatting a datetime
# for each of thousands of frames a second showed in the profile. One text per second.
_last: tuple[int, str] = (-1, "")


def utc_now(precise: bool = False) -> str:
    global _last
    if precise:
        return datetime.now(timezone.utc).isoformat(timespec="microseconds") \
            .replace("+00:00", "Z")
    second = int(time.time())
    if _last[0] != second:
        _last = (second, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second)))
    return _last[1]
