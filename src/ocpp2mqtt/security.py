"""Charger authentication: HTTP Basic auth per station (OCPP 1.6 security profile 1).

Passwords come from OCPP_BASIC_AUTH (JSON object station → password) and/or
OCPP_BASIC_AUTH_FILE (JSON object, or one `station:password` per line; `#`
comments). Passwords are compared in constant time and never logged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from pathlib import Path

from ocpp2mqtt.config import ConfigError, Settings


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
