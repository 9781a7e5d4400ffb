"""Issue 16: the web page, in a real headless Chromium (Debian's `chromium`, driven by
Playwright for Python through its executable path) against a real gateway, a real
Mosquitto and chargers over real WebSockets.

Every page test fails on any console error or uncaught exception in the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import resource
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from ocpp.v16 import call
from ocpp.v201 import call as call201
from playwright.async_api import Browser, Page, async_playwright, expect

from ocpp2mqtt.gateway import Gateway
from ocpp2mqtt.health import bound_port
from ocpp2mqtt.web.live import TICK
from tests.helpers import connect_station, three_phase_meter_value
from tests.test_ocpp2 import connect2x

TS = "2026-11-25T10:00:00Z"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    # This machine's network is closed: without these Chromium keeps calling home.
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic", "--disable-default-apps", "--disable-extensions",
]


def chromium_path() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or \
        shutil.which("chromium-browser")
    if not found:
        raise AssertionError("Debian's chromium is not installed: ./scripts/test.sh installs it "
                             "(apt-get install chromium), or set CHROMIUM=/path/to/chromium")
    return found


@dataclass
class Web:
    gateway: Gateway
    base: str
    browser: Browser
    problems: list[str] = field(default_factory=list)

    async def page(self, path: str = "/", width: int = 1280, height: int = 900) -> Page:
        context = await self.browser.new_context(viewport={"width": width, "height": height},
                                                 accept_downloads=True)
        page = await context.new_page()
        page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        if path is not None:
            await page.goto(self.base + path)
        return page

    async def ready_page(self, path: str = "/", **kw: Any) -> Page:
        page = await self.page(path, **kw)
        await page.wait_for_selector("body[data-ready='1']", state="attached")
        return page


@contextlib.asynccontextmanager
async def launch(gateway: Gateway) -> AsyncIterator[Web]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        web = Web(gateway, f"http://127.0.0.1:{bound_port(gateway.http_server)}", browser)
        try:
            yield web
        finally:
            await browser.close()
        assert web.problems == [], web.problems


def web_settings(settings_factory: Any, **overrides: Any) -> Any:
    return settings_factory(http_enabled=True, http_addr="127.0.0.1", http_port=0, **overrides)


@pytest.fixture
async def web(settings_factory) -> AsyncIterator[Web]:
    async with Gateway(web_settings(settings_factory)) as gw:
        assert await gw.mqtt.wait_connected(10)
        async with launch(gw) as w:
            yield w


def ocpp_url(gw: Gateway) -> str:
    return f"ws://127.0.0.1:{gw.port}"


async def booted(gw: Gateway, station: str, **kw: Any) -> Any:
    st = await connect_station(ocpp_url(gw), station, **kw)
    await st.cp.call(call.BootNotification(charge_point_model="Wallbox X",
                                           charge_point_vendor="ACME", firmware_version="1.2.3"))
    await st.cp.call(call.StatusNotification(connector_id=1, error_code="NoError",
                                             status="Available"))
    return st


def meter(kw: float, energy_wh: float) -> dict[str, Any]:
    value = three_phase_meter_value(TS, energy_wh)
    for sampled in value["sampledValue"]:
        if sampled["measurand"] == "Power.Active.Import":
            sampled["value"] = f"{kw}"
    return value


# --- the stations table --------------------------------------------------------------------
async def test_a_charger_appears_and_its_power_changes_without_a_reload(web):
    page = await web.ready_page("/")
    await page.evaluate("window.sameDocument = true")
    await expect(page.locator("#stations")).to_contain_text("No station has connected yet")
    st = await booted(web.gateway, "CP1")
    try:
        row = page.locator("tr[data-station='CP1']")
        await expect(row.locator("[data-k='connection']")).to_have_text("connected")
        await expect(row.locator("[data-k='firmware']")).to_have_text("1.2.3")
        await st.cp.call(call.MeterValues(connector_id=1, meter_value=[meter(11.04, 5000)]))
        await expect(row.locator("[data-k='power']")).to_have_text("11.04 kW")
        await expect(row.locator("[data-k='energy']")).to_have_text("5.000 kWh")
        await st.cp.call(call.MeterValues(connector_id=1, meter_value=[meter(3.5, 5100)]))
        await expect(row.locator("[data-k='power']")).to_have_text("3.50 kW")
        assert await page.evaluate("window.sameDocument") is True  # no reload happened
    finally:
        await st.close()
    await expect(page.locator("tr[data-station='CP1'] [data-k='connection']")
                 ).to_have_text("disconnected")


async def test_the_table_searches_sorts_and_pages(web):
    stations = [await booted(web.gateway, f"S{n:03d}") for n in range(60)]
    try:
        page = await web.ready_page("/")
        rows = page.locator("#stations tbody tr")
        await expect(rows).to_have_count(50)
        await expect(page.locator("main")).to_contain_text("60 stations, 60 connected")
        await page.get_by_role("button", name="Next").click()
        await expect(rows).to_have_count(10)
        await expect(rows.first).to_have_attribute("data-station", "S050")
        await page.get_by_role("button", name="Station", exact=True).click()  # descending
        await expect(rows.first).to_have_attribute("data-station", "S009")
        await page.get_by_label("Search stations").fill("S04")
        await expect(rows).to_have_count(10)
        await page.get_by_label("Search stations").press("Control+a")
        await page.keyboard.type("nothing-like-this")
        await expect(page.locator("#stations")).to_contain_text("No station matches.")
    finally:
        for st in stations:
            await st.close()


# --- one station ------------------------------------------------------------------------------
async def test_configuration_browser_lists_the_keys_and_an_edit_reaches_the_charger(web):
    st = await booted(web.gateway, "CP1")
    st.cp.answers["GetConfiguration"] = {"configuration_key": [
        {"key": "HeartbeatInterval", "readonly": False, "value": "300"},
        {"key": "MeterValueSampleInterval", "readonly": False, "value": "60"},
        {"key": "ChargePointModel", "readonly": True, "value": "Wallbox X"},
    ], "unknown_key": []}
    try:
        page = await web.ready_page("/#/station/CP1")
        config = page.locator("#configuration")
        await expect(page.locator(".config")).to_contain_text("Not read from the charger yet")
        await page.get_by_role("button", name="Read from charger").click()
        await expect(config.locator("tbody tr")).to_have_count(3)
        await expect(config.locator("tr[data-key='ChargePointModel']")).to_contain_text(
            "read-only")
        assert await config.locator("tr[data-key='ChargePointModel'] input").count() == 0
        await expect(page.locator(".config")).to_contain_text("3 keys (2 writable)")

        heartbeat = config.locator("tr[data-key='HeartbeatInterval']")
        await heartbeat.get_by_label("Value of HeartbeatInterval").fill("120")
        await heartbeat.get_by_role("button", name="Save").click()
        await expect(heartbeat.locator("[data-k='answer']")).to_have_text("Accepted")
        change = await st.cp.wait_call("ChangeConfiguration")
        assert change.payload == {"key": "HeartbeatInterval", "value": "120"}

        st.cp.answers["ChangeConfiguration"] = {"status": "RebootRequired"}
        sample = config.locator("tr[data-key='MeterValueSampleInterval']")
        await sample.get_by_label("Value of MeterValueSampleInterval").fill("10")
        await sample.get_by_label("Value of MeterValueSampleInterval").press("Enter")
        await expect(sample.locator("[data-k='answer']")).to_have_text("RebootRequired")

        st.cp.answers["ChangeConfiguration"] = {"status": "Rejected"}
        await heartbeat.get_by_label("Value of HeartbeatInterval").fill("1")
        await heartbeat.get_by_role("button", name="Save").click()
        await expect(heartbeat.locator("[data-k='answer']")).to_have_text("Rejected")

        # The page remembers what was read and accepted: a fresh page shows it at once.
        fresh = await web.ready_page("/#/station/CP1")
        await expect(fresh.get_by_label("Value of HeartbeatInterval")).to_have_value("120")
    finally:
        await st.close()


async def test_a_201_charger_reports_its_device_model_and_takes_an_edit(web):
    st = await connect2x(ocpp_url(web.gateway), "EV1")
    try:
        await st.cp.call(call201.BootNotification(
            charging_station={"model": "M", "vendorName": "V"}, reason="PowerUp"))
        page = await web.ready_page("/#/station/EV1")
        await page.get_by_role("button", name="Read from charger").click()
        report = await st.wait_call("GetBaseReport")
        assert report["report_base"] == "FullInventory"
        await expect(page.locator(".config")).to_contain_text("appear here as it reports")
        parts = (
            [{"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"},
              "variableAttribute": [{"value": "300", "mutability": "ReadWrite"}]}],
            [{"component": {"name": "EVSE", "evse": {"id": 1}}, "variable": {"name": "Power"},
              "variableAttribute": [{"value": "22000", "mutability": "ReadOnly"}]}],
        )
        for seq, data in enumerate(parts):  # the report arrives in parts, after the answer
            await st.cp.call(call201.NotifyReport(
                request_id=report["request_id"], generated_at=TS, seq_no=seq,
                report_data=data, tbc=seq < len(parts) - 1))
        config = page.locator("#configuration")
        await expect(config.locator("tbody tr")).to_have_count(2)
        await expect(config.locator("tr[data-key='EVSE@1/Power']")).to_contain_text("read-only")
        heartbeat = config.locator("tr[data-key='OCPPCommCtrlr/HeartbeatInterval']")
        await heartbeat.get_by_label("Value of OCPPCommCtrlr/HeartbeatInterval").fill("60")
        await heartbeat.get_by_role("button", name="Save").click()
        await expect(heartbeat.locator("[data-k='answer']")).to_have_text("Accepted")
        [item] = (await st.wait_call("SetVariables"))["set_variable_data"]
        assert (item["component"], item["variable"], item["attribute_value"]) == (
            {"name": "OCPPCommCtrlr"}, {"name": "HeartbeatInterval"}, "60")
    finally:
        await st.close()


async def test_actions_show_the_chargers_answer(web):
    st = await booted(web.gateway, "CP1")
    try:
        page = await web.ready_page("/#/station/CP1")
        result = page.locator("#action-result")
        await page.get_by_role("button", name="Unlock").click()
        await expect(result).to_contain_text("unlock_connector → ok")
        await expect(result).to_contain_text("Unlocked")
        assert (await st.cp.wait_call("UnlockConnector")).payload == {"connector_id": 1}

        st.cp.answers["TriggerMessage"] = {"status": "Rejected"}
        await page.get_by_label("Message", exact=True).select_option("MeterValues")
        await page.get_by_role("button", name="Trigger").click()
        await expect(result).to_contain_text("trigger_message → rejected")

        page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await page.get_by_label("Type", exact=True).select_option("Hard")
        await page.get_by_role("button", name="Reset").click()
        await expect(result).to_contain_text("reset → ok")
        assert (await st.cp.wait_call("Reset")).payload == {"type": "Hard"}

        await page.get_by_role("button", name="Stop charging").click()
        await expect(result).to_contain_text("stop_charging → error")
        await expect(result).to_contain_text("no active transaction")
    finally:
        await st.close()


async def test_the_message_log_shows_frames_both_ways_live(web):
    st = await booted(web.gateway, "CP1")
    try:
        page = await web.ready_page("/#/station/CP1")
        log = page.locator("#log tbody")
        boot = log.locator("tr", has_text="BootNotification")
        await expect(boot.filter(has_text="CALLRESULT")).to_have_count(1)
        await expect(boot.filter(has_text="→ in")).to_have_count(1)
        await expect(boot.filter(has_text="CALLRESULT")).to_contain_text(" ms")
        await st.cp.call(call.Heartbeat())  # arrives while the page is open
        await expect(log.locator("tr", has_text="Heartbeat")).to_have_count(2)
        await page.get_by_role("button", name="Unlock").click()
        await expect(log.locator("tr", has_text="UnlockConnector")).to_have_count(2)
        await expect(log.locator("tr.out", has_text="UnlockConnector").filter(
            has_text="CALL")).to_have_count(1)
    finally:
        await st.close()


async def test_refused_handshakes_are_shown_for_that_station(settings_factory):
    settings = web_settings(settings_factory, ocpp_basic_auth={"CP9": "right-password"})
    async with Gateway(settings) as gw:
        async with launch(gw) as w:
            with pytest.raises(websockets.InvalidStatus):
                await websockets.connect(
                    f"ws://CP9:wrong@127.0.0.1:{gw.port}/CP9", subprotocols=["ocpp1.6"])
            page = await w.ready_page("/#/gateway")
            await expect(page.locator("main")).to_contain_text("CP9")
            await expect(page.locator("main")).to_contain_text("401")
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{w.base}/api/stations/CP9/log") as resp:
                    doc = await resp.json()
            assert [r["status"] for r in doc["refusals"]] == [401]


# --- sessions ---------------------------------------------------------------------------------
async def test_sessions_per_tag_and_month_and_the_csv(web):
    st = await booted(web.gateway, "CP1")
    try:
        for tag, start, stop in (("TAG-A", 1000, 8500), ("TAG-A", 8500, 9000),
                                 ("=cmd|' /C calc'!A0", 9000, 9250)):
            answer = await st.cp.call(call.StartTransaction(
                connector_id=1, id_tag=tag, meter_start=start, timestamp=TS))
            await st.cp.call(call.StopTransaction(meter_stop=stop, timestamp=TS,
                                                  transaction_id=answer.transaction_id))
        page = await web.ready_page("/#/sessions")
        summary = page.locator("#summary tbody tr")
        await expect(summary).to_have_count(2)
        await expect(summary.filter(has_text="TAG-A")).to_contain_text("8.000 kWh")
        await expect(page.locator("#sessions tbody tr")).to_have_count(3)
        async with page.expect_download() as info:
            await page.get_by_role("link", name="Download CSV").click()
        download = await info.value
        text = await asyncio.to_thread(Path(await download.path()).read_text)
    finally:
        await st.close()
    table = list(csv.DictReader(io.StringIO(text)))
    assert sorted(float(row["energy_kwh"]) for row in table) == [0.25, 0.5, 7.5]
    assert {row["id_tag"] for row in table} == {"TAG-A", "'=cmd|' /C calc'!A0"}
    assert all(row["station"] == "CP1" and row["stopped_at"] == TS for row in table)


async def test_a_201_session_is_in_the_history_with_its_energy(web):
    ws = await websockets.connect(f"{ocpp_url(web.gateway)}/EV2", subprotocols=["ocpp2.0.1"])

    async def send(action: str, payload: dict[str, Any], n: int) -> None:
        await ws.send(orjson.dumps([2, str(n), action, payload]).decode())
        assert orjson.loads(await ws.recv())[0] == 3

    def event(kind: str, seq: int, wh: float, context: str) -> dict[str, Any]:
        return {"eventType": kind, "timestamp": TS, "triggerReason": "Authorized",
                "seqNo": seq, "transactionInfo": {"transactionId": "tx-1"},
                "evse": {"id": 1, "connectorId": 1}, "idToken": {"idToken": "CARD",
                                                                  "type": "ISO14443"},
                "meterValue": [{"timestamp": TS, "sampledValue": [
                    {"value": wh, "measurand": "Energy.Active.Import.Register",
                     "context": context}]}]}

    try:
        await send("BootNotification", {"reason": "PowerUp", "chargingStation": {
            "model": "M", "vendorName": "V"}}, 1)
        await send("TransactionEvent", event("Started", 0, 2000, "Transaction.Begin"), 2)
        await send("TransactionEvent", event("Ended", 1, 5250, "Transaction.End"), 3)
    finally:
        await ws.close()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{web.base}/api/sessions?station=EV2") as resp:
            doc = await resp.json()
    [session] = doc["sessions"]
    assert (session["transaction_id"], session["id_tag"], session["energy"],
            session["stopped_at"]) == ("tx-1", "CARD", 3250, TS)


# --- the gateway ------------------------------------------------------------------------------
async def test_gateway_view_shows_link_groups_and_masked_settings(settings_factory):
    settings = web_settings(settings_factory, mqtt_password="hunter2-secret", load_balancing=[
        {"name": "garage", "max_current": 25, "stations": ["LB1"]}])
    async with Gateway(settings) as gw:
        assert await gw.mqtt.wait_connected(10)
        st = await booted(gw, "LB1")
        try:
            async with launch(gw) as w:
                page = await w.ready_page("/#/gateway")
                await expect(page.locator("main")).to_contain_text("connected")
                await expect(page.locator("#settings")).to_contain_text("MQTT_PASSWORD")
                assert "hunter2" not in await page.content()
                group = page.get_by_role("region", name="Group garage")
                await expect(group).to_contain_text("25.0 A")
                await expect(group.locator("tbody tr")).to_have_count(1)
                await expect(group.locator("tbody tr")).to_contain_text("LB1")
                assert "[object" not in await page.locator("main").inner_text()
                await expect(page.locator("main")).to_contain_text("1 connected of 1 known")
                second = await booted(gw, "GW2")  # the view follows without a reload
                await expect(page.locator("main")).to_contain_text("2 connected of 2 known")
                await second.close()
                # A phone: nothing wider than the screen but the tables' own scroll boxes.
                phone = await w.ready_page("/#/gateway", width=390, height=800)
                await expect(phone.locator("#settings")).to_contain_text("MQTT_PASSWORD")
                width = await phone.evaluate("document.documentElement.scrollWidth")
                assert width <= 390
        finally:
            await st.close()


# --- access -----------------------------------------------------------------------------------
async def test_with_a_token_nothing_works_without_it(settings_factory):
    token = "correct horse battery staple"
    async with Gateway(web_settings(settings_factory, web_auth_token=token)) as gw:
        assert await gw.mqtt.wait_connected(10)
        st = await booted(gw, "CP1")
        base = f"http://127.0.0.1:{bound_port(gw.http_server)}"
        try:
            async with aiohttp.ClientSession() as http:
                for method, path in (("GET", "/"), ("GET", "/api/stations"),
                                     ("GET", "/api/events"), ("GET", "/api/stations/CP1/log"),
                                     ("GET", "/api/sessions.csv"), ("GET", "/api/gateway"),
                                     ("POST", "/api/stations/CP1/command")):
                    async with http.request(method, base + path, allow_redirects=False,
                                            data=b'{"action": "reset"}', headers={
                                                "X-Requested-With": "ocpp2mqtt"}) as resp:
                        assert resp.status in (303, 401), (path, resp.status)
                        if path == "/":
                            assert resp.headers["Location"] == "/login"
                async with http.get(base + "/metrics") as resp:
                    assert resp.status == 200  # probes stay open for Prometheus/Kubernetes
                bearer = {"Authorization": f"Bearer {token}"}
                async with http.get(base + "/api/stations", headers=bearer) as resp:
                    assert resp.status == 200
                    assert [r["id"] for r in (await resp.json())["rows"]] == ["CP1"]
            assert not any(r.action == "Reset" for r in st.cp.received)

            async with launch(gw) as w:
                page = await w.page("/")
                await expect(page).to_have_url(f"{base}/login")
                await page.get_by_label("Access token").fill("wrong")
                await page.get_by_role("button", name="Log in").click()
                await expect(page.get_by_role("alert")).to_contain_text("not right")
                await page.get_by_label("Access token").fill(token)
                await page.get_by_role("button", name="Log in").click()
                await page.wait_for_selector("body[data-ready='1']", state="attached")
                await expect(page.locator("tr[data-station='CP1'] [data-k='connection']")
                             ).to_have_text("connected")
                await expect(page.locator("#open-banner")).to_be_hidden()
                cookies = await page.context.cookies()
                assert all(token not in c["value"] for c in cookies)
                await page.get_by_role("button", name="Log out").click()
                await expect(page).to_have_url(f"{base}/login")
                await page.goto(f"{base}/")
                await expect(page).to_have_url(f"{base}/login")
        finally:
            await st.close()


async def test_cross_site_requests_are_refused(web):
    st = await booted(web.gateway, "CP1")
    url = f"{web.base}/api/stations/CP1/command"
    body = b'{"action": "unlock_connector", "args": {"connector_id": 1}}'
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=body) as resp:  # a plain form post can't add it
                assert resp.status == 403
                assert "X-Requested-With" in (await resp.json())["error"]
            async with http.post(url, data=body, headers={
                    "X-Requested-With": "ocpp2mqtt", "Origin": "http://evil.example"}) as resp:
                assert resp.status == 403
            async with http.post(url, data=body, headers={
                    "X-Requested-With": "ocpp2mqtt", "Sec-Fetch-Site": "cross-site"}) as resp:
                assert resp.status == 403
            assert not any(r.action == "UnlockConnector" for r in st.cp.received)
            async with http.post(url, data=body, headers={
                    "X-Requested-With": "ocpp2mqtt", "Origin": web.base}) as resp:
                assert resp.status == 200
                assert (await resp.json())["result"]["status"] == "ok"
            async with http.post(url, data=b"{not json", headers={
                    "X-Requested-With": "ocpp2mqtt"}) as resp:
                result = (await resp.json())["result"]
                assert result["status"] == "error" and "JSON" in result["error"]
            async with http.get(web.base + "/") as resp:
                assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    finally:
        await st.close()


async def test_open_page_refuses_names_another_site_could_point_here(settings_factory):
    """DNS rebinding: evil.example resolving to the gateway is same-origin with it."""
    settings = web_settings(settings_factory, web_allowed_hosts=("gw.example.org",))
    async with Gateway(settings) as gw:
        st = await booted(gw, "CP1")
        base = f"http://127.0.0.1:{bound_port(gw.http_server)}"
        command = b'{"action": "unlock_connector", "args": {"connector_id": 1}}'
        try:
            async with aiohttp.ClientSession() as http:
                for host in ("evil.example:8081", "evil.example"):
                    headers = {"Host": host, "X-Requested-With": "ocpp2mqtt",
                               "Origin": f"http://{host}"}
                    async with http.post(f"{base}/api/stations/CP1/command", data=command,
                                         headers=headers) as resp:
                        assert resp.status == 403
                        assert "WEB_ALLOWED_HOSTS" in (await resp.json())["error"]
                    async with http.get(f"{base}/api/stations", headers=headers) as resp:
                        assert resp.status == 403
                assert not any(r.action == "UnlockConnector" for r in st.cp.received)
                for host in ("gw.example.org:8081", "localhost:8081", "[::1]:8081",
                             "charger-gateway", "gateway.lan", "192.168.1.5:8081"):
                    async with http.get(f"{base}/api/stations", headers={"Host": host}) as resp:
                        assert resp.status == 200, host
                async with http.get(f"{base}/healthz", headers={"Host": "evil.example"}) as resp:
                    assert resp.status == 200  # probes answer whatever the name
        finally:
            await st.close()
    token = "t0ken-for-rebinding-test"
    async with Gateway(web_settings(settings_factory, web_auth_token=token)) as gw:
        base = f"http://127.0.0.1:{bound_port(gw.http_server)}"
        async with aiohttp.ClientSession() as http:  # with a token, any name: no cookie there
            async with http.get(f"{base}/api/stations", headers={
                    "Host": "evil.example", "Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 200


async def test_web_disabled_keeps_the_probes(settings_factory):
    async with Gateway(web_settings(settings_factory, web_enabled=False)) as gw:
        assert gw.web is None and gw.message_log.frames_per_station == 0
        base = f"http://127.0.0.1:{bound_port(gw.http_server)}"
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/") as resp:
                assert resp.status == 404
            async with http.get(base + "/api/stations") as resp:
                assert resp.status == 404
            async with http.get(base + "/healthz") as resp:
                assert resp.status == 200


# --- a thousand stations ------------------------------------------------------------------------
async def _light_charger(url: str, station: str, go: asyncio.Event) -> Any:
    ws = await websockets.connect(f"{url}/{station}", subprotocols=["ocpp1.6"],
                                  open_timeout=60, ping_interval=None)
    await ws.send(orjson.dumps([2, "1", "BootNotification", {
        "chargePointVendor": "ACME", "chargePointModel": "M"}]).decode())
    await ws.recv()
    await ws.send(orjson.dumps([2, "2", "StatusNotification", {
        "connectorId": 1, "errorCode": "NoError", "status": "Available"}]).decode())
    await ws.recv()
    return ws


async def test_the_page_stays_responsive_with_1000_stations(settings_factory, capsys):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 2500, \
        "1,000 chargers and their gateway need 2,500 open files (ulimit -n)"
    async with Gateway(web_settings(settings_factory)) as gw:
        assert await gw.mqtt.wait_connected(10)
        url, go = ocpp_url(gw), asyncio.Event()
        sockets: list[Any] = []
        for batch in range(10):
            sockets += await asyncio.gather(*(
                _light_charger(url, f"P{batch * 100 + n:04d}", go) for n in range(100)))
        try:
            async with launch(gw) as w:
                t0 = time.perf_counter()
                page = await w.page("/")
                await expect(page.locator("main")).to_contain_text(
                    "1000 stations, 1000 connected", timeout=30_000)
                await expect(page.locator("#stations tbody tr")).to_have_count(50)
                first_render = time.perf_counter() - t0
                row = page.locator("tr[data-station='P0000'] [data-k='power']")
                await expect(row).to_have_text("–")
                t1 = time.perf_counter()
                await sockets[0].send(orjson.dumps([2, "3", "MeterValues", {
                    "connectorId": 1, "meterValue": [meter(7.25, 1000)]}]).decode())
                await sockets[0].recv()
                await expect(row).to_have_text("7.25 kW", timeout=30_000)
                live_update = time.perf_counter() - t1
                timing = await page.evaluate(
                    "JSON.stringify(performance.getEntriesByType('navigation')[0].toJSON())")
                assert orjson.loads(timing)["responseEnd"] > 0
                with capsys.disabled():
                    print(f"\n[web, 1,000 stations] first render {first_render * 1000:.0f} ms, "
                          f"live update on screen {live_update * 1000:.0f} ms "
                          f"(pushed every {TICK:g} s)")
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
