"""Configuration on boot: set the keys the user lists, then read the charger's configuration.

After each BootNotification (opt-in: OCPP_BOOT_CONFIGURATION[_STATIONS],
OCPP_BOOT_GET_CONFIGURATION) the gateway sets each key, publishing every answer on
`<prefix>/config_result/<key>`, then reads the configuration, publishing each key
retained on `<prefix>/config/<key>`.

OCPP 1.6: ChangeConfiguration, then GetConfiguration. OCPP 2.x: SetVariables (a 1.6 key
is mapped to its component/variable, or name it `Component/Variable`), then
GetBaseReport(ConfigurationInventory); the charger's NotifyReport messages become
`<prefix>/config/<Component>/<Variable>` (instance and EVSE in the names).
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from ocpp2mqtt import events as ev
from ocpp2mqtt.commands.v2x import component_variable
from ocpp2mqtt.extensions import BaseExtension
from ocpp2mqtt.state import StateUpdate, StationState

log = logging.getLogger("ocpp2mqtt.boot_configuration")


class BootConfigurationExtension(BaseExtension):
    name = "boot_configuration"

    def on_event(self, event: ev.Event, state: StationState, update: StateUpdate) -> None:
        if type(event) is ev.ConfigurationReported:
            for key, value in event.values.items():
                self.ctx.publish(self.ctx.topics.config(event.station, key), value)
            return
        if type(event) is ev.Booted:
            settings = self.ctx.settings
            if settings.boot_configuration(event.station) or settings.ocpp_boot_get_configuration:
                self.ctx.spawn(self.configure(event.station))

    async def configure(self, station: str) -> None:
        await asyncio.sleep(0)  # let the BootNotification answer go out first
        ctx, topics = self.ctx, self.ctx.topics
        state = ctx.state(station)
        v2 = state is not None and state.values.get("ocpp_version", "1.6") != "1.6"
        for key, value in ctx.settings.boot_configuration(station).items():
            try:
                if v2:
                    item = {**component_variable(key), "attributeValue": value}
                    answer = await ctx.call(station, "SetVariables", {"setVariableData": [item]})
                    status = answer["setVariableResult"][0]["attributeStatus"]
                else:
                    answer = await ctx.call(station, "ChangeConfiguration",
                                            {"key": key, "value": value})
                    status = answer.get("status", "?") if isinstance(answer, dict) else "?"
            except Exception as exc:  # not connected, CALLERROR, timeout, bad answer: reported
                status = f"error: {exc}"
            level = logging.INFO if status == "Accepted" else logging.WARNING
            log.log(level, "%s: ChangeConfiguration %s=%s → %s", station, key, value, status)
            ctx.publish(topics.config_result(station, key),
                        orjson.dumps({"value": value, "status": status}))
        if not ctx.settings.ocpp_boot_get_configuration:
            return
        if v2:
            try:
                answer = await ctx.call(station, "GetBaseReport", {
                    "requestId": int(time.time()) % 1_000_000_000,
                    "reportBase": "ConfigurationInventory"})
                log.info("%s: GetBaseReport → %s (the values follow in NotifyReport)",
                         station, answer.get("status"))
            except Exception as exc:
                log.warning("%s: GetBaseReport failed: %s", station, exc)
            return
        try:
            answer = await ctx.call(station, "GetConfiguration", {})
        except Exception as exc:
            log.warning("%s: GetConfiguration failed: %s", station, exc)
            return
        for item in answer.get("configurationKey", []) if isinstance(answer, dict) else []:
            key = str(item.get("key", ""))
            if not key or any(ch in key for ch in "/+#"):
                continue
            ctx.publish(topics.config(station, key), str(item.get("value", "")))
        unknown = answer.get("unknownKey") if isinstance(answer, dict) else None
        if unknown:
            log.info("%s: charger does not know configuration keys %s", station, unknown)
