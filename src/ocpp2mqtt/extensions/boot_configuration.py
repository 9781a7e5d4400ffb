"""Configuration on boot: set the keys the user lists, then read the charger's configuration.

After each BootNotification (opt-in: OCPP_BOOT_CONFIGURATION[_STATIONS],
OCPP_BOOT_GET_CONFIGURATION) the gateway sends ChangeConfiguration for each
key, publishing every answer on `<prefix>/config_result/<key>`, then
GetConfiguration, publishing each key retained on `<prefix>/config/<key>`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import orjson

from ocpp2mqtt import events as ev

if TYPE_CHECKING:
    from ocpp2mqtt.gateway import Gateway

log = logging.getLogger("ocpp2mqtt.boot_configuration")


class BootConfigurationExtension:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def handle(self, event: ev.Event) -> None:
        if isinstance(event, ev.Booted):
            settings = self.gateway.settings
            if settings.boot_configuration(event.station) or settings.ocpp_boot_get_configuration:
                self.gateway.spawn(self.configure(event.station))

    def on_mqtt_connected(self) -> None:
        pass

    async def configure(self, station: str) -> None:
        await asyncio.sleep(0)  # let the BootNotification answer go out first
        gw = self.gateway
        prefix = gw.prefix(station)
        for key, value in gw.settings.boot_configuration(station).items():
            try:
                answer = await gw.call_station(
                    station, "ChangeConfiguration", {"key": key, "value": value}
                )
                status = answer.get("status", "?") if isinstance(answer, dict) else "?"
            except Exception as exc:  # NotConnected, CallErrorReceived, timeout: all reported
                status = f"error: {exc}"
            level = logging.INFO if status == "Accepted" else logging.WARNING
            log.log(level, "%s: ChangeConfiguration %s=%s → %s", station, key, value, status)
            gw.link.publish(
                f"{prefix}/config_result/{key}",
                orjson.dumps({"value": value, "status": status}),
                retain=True,
            )
        if not gw.settings.ocpp_boot_get_configuration:
            return
        try:
            answer = await gw.call_station(station, "GetConfiguration", {})
        except Exception as exc:
            log.warning("%s: GetConfiguration failed: %s", station, exc)
            return
        for item in answer.get("configurationKey", []) if isinstance(answer, dict) else []:
            key = str(item.get("key", ""))
            if not key or any(ch in key for ch in "/+#"):
                continue
            gw.link.publish(f"{prefix}/config/{key}", str(item.get("value", "")), retain=True)
        unknown = answer.get("unknownKey") if isinstance(answer, dict) else None
        if unknown:
            log.info("%s: charger does not know configuration keys %s", station, unknown)
