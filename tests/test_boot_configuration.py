"""Issue 9: configuration on boot (ChangeConfiguration for listed keys, GetConfiguration)."""

from __future__ import annotations

import orjson
from ocpp.v16 import call

from ocpp2mqtt.gateway import Gateway
from tests.helpers import connect_station


async def test_boot_sets_keys_and_publishes_configuration(settings_factory, recorder, basepath):
    settings = settings_factory(
        ocpp_boot_configuration={"MeterValueSampleInterval": 60,
                                 "MeterValuesSampledData": "Energy.Active.Import.Register"},
        ocpp_boot_configuration_stations={"BOOT1": {"ClockAlignedDataInterval": 900}},
        ocpp_boot_get_configuration=True,
    )
    async with Gateway(settings) as gw:
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "BOOT1")
        other = await connect_station(f"ws://127.0.0.1:{gw.port}", "BOOT2")
        try:
            st.cp.answers["ChangeConfiguration"] = {"status": "RebootRequired"}
            await st.cp.call(call.BootNotification(charge_point_model="M",
                                                   charge_point_vendor="V"))
            await other.cp.call(call.BootNotification(charge_point_model="M",
                                                      charge_point_vendor="V"))
            p = f"{basepath}/BOOT1"
            await recorder.wait_for(f"{p}/config/HeartbeatInterval", "300")
            changes = [r.payload for r in st.cp.received if r.action == "ChangeConfiguration"]
            assert changes == [
                {"key": "MeterValueSampleInterval", "value": "60"},
                {"key": "MeterValuesSampledData", "value": "Energy.Active.Import.Register"},
                {"key": "ClockAlignedDataInterval", "value": "900"},
            ]
            result = orjson.loads(await recorder.wait_for(
                f"{p}/config_result/ClockAlignedDataInterval"))
            assert result == {"value": "900", "status": "RebootRequired"}
            # the per-station key is not sent to the other station
            await recorder.wait_for(f"{basepath}/BOOT2/config/HeartbeatInterval", "300")
            keys = [r.payload["key"] for r in other.cp.received
                    if r.action == "ChangeConfiguration"]
            assert keys == ["MeterValueSampleInterval", "MeterValuesSampledData"]
        finally:
            await st.close()
            await other.close()


async def test_no_boot_configuration_by_default(gateway, url, recorder, basepath):
    st = await connect_station(url, "PLAIN")
    try:
        await st.cp.call(call.BootNotification(charge_point_model="M", charge_point_vendor="V"))
        # a command after boot is answered first: nothing was queued before it
        await st.cp.call(call.Heartbeat())
        await recorder.wait_for(f"{basepath}/PLAIN/state/heartbeat")
        assert [r.action for r in st.cp.received] == []
    finally:
        await st.close()
