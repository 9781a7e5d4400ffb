"""Which id tags may charge: AUTHORIZED_TAG_ID_LIST and the per-station charging_enabled flag.

The same answer goes into Authorize.conf, StartTransaction.conf and
StopTransaction.conf (and, later, every OCPP version's equivalents).
"""

from __future__ import annotations

from ocpp2mqtt.config import Settings
from ocpp2mqtt.store import Store


class Authorizer:
    def __init__(self, settings: Settings, store: Store):
        self.allowed = frozenset(settings.authorized_tag_id_list)
        self.store = store

    def charging_enabled(self, station: str) -> bool:
        return self.store.flag(station, "charging_enabled", "true") == "true"

    def set_charging_enabled(self, station: str, enabled: bool) -> None:
        self.store.set_flag(station, "charging_enabled", "true" if enabled else "false")

    def status(self, station: str, id_tag: str) -> str:
        """`Accepted`, `Blocked` (charging disabled for the station) or `Invalid`."""
        if not self.charging_enabled(station):
            return "Blocked"
        if not self.allowed or id_tag in self.allowed:
            return "Accepted"
        return "Invalid"
