"""Station ids from WebSocket handshake paths: pure rules (README, "Connecting a charger").

- the id is the last non-empty path segment, percent-decoded:
  `/CP1`, `/CP1/`, `/ocpp/CP1` all give `CP1`;
- with no path segment, `?station=<id>` is used, else the configured fallback
  (default `cp_{ip}`, the original's behaviour for firmware that connects to `/`);
- an id that could break MQTT topics is refused: empty, `/`, `+`, `#`, NUL or
  other control characters, longer than 48 characters, or the reserved `bridge`.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

MAX_STATION_ID_LENGTH = 48
RESERVED_IDS = frozenset({"bridge"})


class InvalidStationId(ValueError):
    """The handshake names a station id that cannot be used; message says why."""


def check_station_id(station: str) -> str:
    if not station:
        raise InvalidStationId("station id is empty")
    if len(station) > MAX_STATION_ID_LENGTH:
        raise InvalidStationId(f"station id is longer than {MAX_STATION_ID_LENGTH} characters")
    for ch in station:
        if ch in "/+#" or ord(ch) < 32 or ord(ch) == 127:
            raise InvalidStationId(
                f"station id contains {ch!r}, which would break MQTT topics"
            )
    if station in RESERVED_IDS:
        raise InvalidStationId(f"station id {station!r} is reserved")
    return station


def station_id_from_path(path: str, ip: str, fallback: str) -> str:
    """Resolve and check the station id of a handshake request target."""
    parts = urlsplit(path)
    # Split before decoding so an encoded "%2F" cannot create a path level.
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if segments:
        return check_station_id(segments[-1])
    query = parse_qs(parts.query)
    if query.get("station"):
        return check_station_id(query["station"][0])
    if not fallback:
        raise InvalidStationId("no station id in the path and no fallback configured")
    return check_station_id(fallback.format(ip=ip))
