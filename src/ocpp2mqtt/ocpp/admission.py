"""Who may connect, as which station: pure rules over the WebSocket handshake.

Station ids: ocpp/station_id.py. Charger authentication (OCPP 1.6 security profile 1):
HTTP Basic auth per station. Passwords come from OCPP_BASIC_AUTH (JSON object station →
password) and/or OCPP_BASIC_AUTH_FILE (JSON object, or one `station:password` per line;
`#` comments). Passwords are compared in constant time and never logged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

from ocpp2mqtt.config import ConfigError, Settings
from ocpp2mqtt.ocpp.station_id import InvalidStationId, station_id_from_path


def load_passwords(settings: Settings) -> dict[str, str]:
    passwords = dict(settings.ocpp_basic_auth)
    if settings.ocpp_basic_auth_file:
        text = Path(settings.ocpp_basic_auth_file).read_text("utf-8")
        if text.lstrip().startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"OCPP_BASIC_AUTH_FILE: not valid JSON: {exc.msg}") from None
            passwords.update({str(k): str(v) for k, v in data.items()})
        else:
            for number, line in enumerate(text.splitlines(), start=1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                station, sep, password = line.partition(":")
                if not sep or not station:
                    raise ConfigError(
                        f"OCPP_BASIC_AUTH_FILE: line {number} is not 'station:password'"
                    )
                passwords[station] = password
    return passwords


def check_basic_auth(header: str | None, station: str, passwords: dict[str, str]) -> str | None:
    """None if the Authorization header proves `station`; else why not (no secrets)."""
    expected = passwords.get(station)
    if expected is None:
        return "no password configured for this station"
    if not header:
        return "no Authorization header"
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return f"unsupported authorization scheme {scheme[:20]!r}"
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return "malformed Basic credentials"
    user, sep, password = decoded.partition(":")
    if not sep:
        return "malformed Basic credentials"
    # OCPP 1.6 security whitepaper: the username is the charge point identity.
    user_ok = hmac.compare_digest(user.encode(), station.encode())
    password_ok = hmac.compare_digest(password.encode(), expected.encode())
    if not (user_ok and password_ok):
        return "wrong username or password"
    return None


@dataclass(slots=True)
class Refusal:
    """A handshake answered with an HTTP error instead of a WebSocket."""

    status: HTTPStatus
    body: str
    reason: str  # for the log: never contains a secret
    headers: dict[str, str] = field(default_factory=dict)


class Admission:
    """The handshake rules: station id, connection limit, allow-list, Basic auth,
    subprotocol. `admit` returns the station id or the Refusal to send."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.passwords = load_passwords(settings)

    def admit(self, path: str, headers: Mapping[str, str], ip: str,
              connected: Collection[str]) -> str | Refusal:
        """`connected`: the stations connected now (a reconnect never hits the limit)."""
        s = self.settings
        try:
            station = station_id_from_path(path, ip, s.station_id_fallback)
        except InvalidStationId as exc:
            return Refusal(HTTPStatus.BAD_REQUEST, f"{exc}\n",
                           f"handshake for {path[:80]!r}: {exc}")
        if len(connected) >= s.max_connections and station not in connected:
            return Refusal(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n",
                           f"{station}: MAX_CONNECTIONS={s.max_connections} reached")
        if s.ocpp_allowlist_only and station not in self.passwords and (
            station not in s.expected_charge_points
        ):
            return Refusal(HTTPStatus.FORBIDDEN, "unknown station\n",
                           f"{station}: not a configured station (OCPP_ALLOWLIST_ONLY)")
        if self.passwords:
            problem = check_basic_auth(headers.get("Authorization"), station, self.passwords)
            if problem:
                return Refusal(HTTPStatus.UNAUTHORIZED, "authentication failed\n",
                               f"{station}: {problem}",
                               {"WWW-Authenticate": 'Basic realm="ocpp2mqtt"'})
        offered = headers.get("Sec-WebSocket-Protocol")
        if offered is not None and not {p.strip() for p in offered.split(",")} & set(
                s.ocpp_versions):
            wanted = ", ".join(s.ocpp_versions)
            return Refusal(HTTPStatus.BAD_REQUEST, f"supported subprotocols: {wanted}\n",
                           f"{station}: offers only {offered[:100]}, we speak {wanted}")
        if offered is None and s.ocpp_strict_subprotocol:
            return Refusal(HTTPStatus.BAD_REQUEST, "Sec-WebSocket-Protocol required\n",
                           f"{station}: no Sec-WebSocket-Protocol (OCPP_STRICT_SUBPROTOCOL)")
        return station
