"""Issue 9: real chargers' frames, replayed through a raw WebSocket against the real gateway.

Each fixture in tests/fixtures/real_world/ holds what one charger model sends,
taken from a public bug report or forum thread (its `sources` and `notes` say
which parts are verbatim and which are reconstructed): the handshake (path,
offered subprotocols, extra headers), the CALL frames, and the exact retained
topics the gateway must publish for them. See docs/chargers.md.

The replay is a plain `websockets` client, not the `ocpp` library, so frames go
out exactly as the charger wrote them (key order, number formatting, schema
violations and all). Every CALL must get a CALLRESULT; then the station's
`state/` topics must be exactly the expected ones.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from ocpp2mqtt.gateway import Gateway

FIXTURES = Path(__file__).parent / "fixtures" / "real_world"
FIXTURE_FILES = sorted(FIXTURES.glob("*.json"))

# Topics whose payload is the gateway's own clock or session bookkeeping;
# checked by `check_gateway_clock_topics`, not listed in the fixtures.
CONNECTION_TOPICS = {
    "state/connection_state",
    "state/last_connected",
    "state/last_seen",
    "state/last_disconnected",
    "state/gateway",  # which replica holds the station: {"id": <instance>, "since": <time>}
    "state/ocpp_version",  # checked below: every fixture is an OCPP 1.6 charger
}


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text("utf-8"))


def is_now(text: str, slack: timedelta = timedelta(minutes=5)) -> bool:
    """An ISO 8601 UTC timestamp from the gateway's clock (this year, within `slack`)."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    now = datetime.now(timezone.utc)
    return when.tzinfo is not None and when.year == now.year and abs(now - when) < slack


def substitute(value: Any, tx: int | None) -> Any:
    """Replace the placeholder "$transactionId" by the id the gateway handed out."""
    if value == "$transactionId":
        return tx
    if isinstance(value, dict):
        return {k: substitute(v, tx) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, tx) for v in value]
    return value


async def connect(port: int, handshake: dict):
    headers = dict(handshake.get("headers", {}))
    user_agent = headers.pop("User-Agent", None)
    return await websockets.connect(
        f"ws://127.0.0.1:{port}{handshake['path']}",
        subprotocols=handshake.get("subprotocols") or None,
        additional_headers=headers or None,
        user_agent_header=user_agent,
        open_timeout=10,
    )


async def answer_to(ws, unique_id: str, timeout: float = 10.0) -> list:
    """The gateway's reply to our CALL `unique_id` (CALLs the gateway sends are skipped)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        frame = json.loads(await asyncio.wait_for(ws.recv(), max(remaining, 0.01)))
        if frame[0] in (3, 4) and frame[1] == unique_id:
            return frame


async def replay(fixture: dict, settings_factory, recorder, basepath: str) -> tuple[dict, list]:
    """Run one fixture; returns (last payload per topic under the station prefix, problems)."""
    problems: list[str] = []
    gw = Gateway(settings_factory(**fixture.get("settings", {})))
    await gw.start()
    try:
        assert await gw.mqtt.wait_connected(10)
        prefix = f"{basepath}/{fixture['station']}"
        ws = await connect(gw.port, fixture["handshake"])
        offered = fixture["handshake"].get("subprotocols") or []
        assert ws.subprotocol == ("ocpp1.6" if "ocpp1.6" in offered else None)
        await recorder.wait_for(f"{prefix}/state/connection_state", "CONNECTED")
        tx: int | None = None
        try:
            for frame in fixture["frames"]:
                frame = substitute(frame, tx)
                _, unique_id, action, _ = frame
                await ws.send(json.dumps(frame))
                reply = await answer_to(ws, unique_id)
                if reply[0] != 3:
                    problems.append(f"{action} [{unique_id}] answered with CALLERROR {reply[2:]}")
                elif action == "StartTransaction":
                    tx = reply[2]["transactionId"]
        finally:
            await ws.close()
        # Everything the session emitted is published before DISCONNECTED (one ordered stream).
        await recorder.wait_for(f"{prefix}/state/connection_state", "DISCONNECTED")
    finally:
        await gw.stop()
    published = {
        topic[len(prefix) + 1:]: payload
        for topic, payload in recorder.last().items()
        if topic.startswith(f"{prefix}/state/")
    }
    return published, problems


def compare(expect: dict[str, str], published: dict[str, str]) -> list[str]:
    problems = []
    seen = {k: v for k, v in published.items() if k not in CONNECTION_TOPICS}
    for topic in sorted(set(expect) | set(seen)):
        want, got = expect.get(topic), seen.get(topic)
        if topic not in seen:
            problems.append(f"{topic}: expected {want!r}, not published")
        elif topic not in expect:
            problems.append(f"{topic}: published {got!r}, not expected")
        elif want == "<now>":
            if not is_now(got):
                problems.append(f"{topic}: expected the gateway's current time, got {got!r}")
        elif want == "<int>":
            if not got.isdigit():
                problems.append(f"{topic}: expected a gateway-assigned integer, got {got!r}")
        elif got != want:
            problems.append(f"{topic}: expected {want!r}, got {got!r}")
    return problems


def check_gateway_clock_topics(published: dict[str, str]) -> list[str]:
    """last_seen/last_connected are the gateway's receive time, whatever the charger's clock."""
    problems = []
    for topic in ("state/last_seen", "state/last_connected", "state/last_disconnected"):
        if not is_now(published.get(topic, "")):
            problems.append(f"{topic}: expected the gateway's current time, got "
                            f"{published.get(topic)!r}")
    if published.get("state/ocpp_version") != "1.6":
        problems.append(f"state/ocpp_version: {published.get('state/ocpp_version')!r}")
    if published.get("state/connection_state") != "DISCONNECTED":
        problems.append(f"state/connection_state: {published.get('state/connection_state')!r}")
    return problems


def test_fixtures_are_documented():
    """Every fixture names its public sources and says what was reconstructed."""
    assert len(FIXTURE_FILES) >= 10
    for path in FIXTURE_FILES:
        fixture = json.loads(path.read_text("utf-8"))
        assert fixture["sources"] and all(
            s.startswith("https://") for s in fixture["sources"]), path.name
        assert fixture["notes"], path.name
        assert fixture["handshake"]["path"].startswith("/"), path.name
        for frame in fixture["frames"]:
            assert frame[0] == 2 and isinstance(frame[1], str) and isinstance(frame[3], dict)


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
async def test_replay_real_world_fixture(path, settings_factory, recorder, basepath):
    fixture = json.loads(path.read_text("utf-8"))
    published, problems = await replay(fixture, settings_factory, recorder, basepath)
    problems += compare(fixture["expect"], published)
    problems += check_gateway_clock_topics(published)
    assert not problems, f"{path.name} ({fixture['charger']}):\n  " + "\n  ".join(problems)


# --- Specific properties, spelled out -------------------------------------------------


async def test_kw_is_published_in_w(settings_factory, recorder, basepath):
    """evcc-io/evcc #19420 and Injet Sonic (lbbrhzn/ocpp #1311) send power in kW."""
    published, problems = await replay(
        load("kw_power_three_phase_voltages.json"), settings_factory, recorder, basepath)
    assert not problems
    assert published["state/power_active_import"] == "3400"  # "3.4" kW


async def test_signed_data_is_published_untouched(settings_factory, recorder, basepath):
    """The OCMF record reaches MQTT as the same text: no parsing, re-encoding or scaling."""
    fixture = load("keba_ocmf_signed_transaction_data.json")
    sent = fixture["frames"][1][3]["transactionData"][0]["sampledValue"][0]["value"]
    published, problems = await replay(fixture, settings_factory, recorder, basepath)
    assert not problems
    payload = published["state/energy_active_import_register/signed_data"]
    assert payload == sent
    assert payload.startswith("OCMF|{") and payload.count("|") == 2
    # A signed value never feeds the numeric register topic.
    assert "state/energy_active_import_register" not in published


async def test_1970_timestamps_are_harmless(settings_factory, recorder, basepath):
    """A charger without a clock (MicroOcpp #311, #354): its 1970 times go to the charger's
    timestamp topics, while last_seen and last_boot are the gateway's own clock."""
    published, problems = await replay(
        load("microocpp_1970_timestamps.json"), settings_factory, recorder, basepath)
    assert not problems
    assert published["state/meter_timestamp"] == "1970-01-01T00:00:12.500Z"
    assert published["state/status_timestamp"] == "1970-01-01T00:00:00.750Z"
    now_year = datetime.now(timezone.utc).year
    for topic in ("state/last_seen", "state/last_boot"):
        assert is_now(published[topic]), (topic, published[topic])
        assert published[topic].startswith(str(now_year))


async def test_transaction_begin_does_not_overwrite_live_register(
    settings_factory, recorder, basepath
):
    """Growatt THOR sends the live register and the Transaction.Begin value in one frame
    (lbbrhzn/ocpp #1466, #1709, #1838; evcc-io/evcc #33256): the live value must stay."""
    published, _ = await replay(
        load("growatt_thor_duplicate_energy_context.json"), settings_factory, recorder, basepath)
    assert published["state/energy_active_import_register"] == "111"


# --- Handshake variants -------------------------------------------------------------------


HANDSHAKES = [
    # (request path, offered subprotocols, station id)
    ("/", [], "cp_127.0.0.1"),  # Grizzl-E 05.x: lbbrhzn/ocpp #442
    ("/", ["ocpp1.6"], "cp_127.0.0.1"),
    ("/CP1/", ["ocpp1.6"], "CP1"),  # trailing slash
    ("/CP1/", [], "CP1"),
    ("/ocpp/CP1", ["ocpp1.6"], "CP1"),  # base URL + identity: dallmann-consulting/OCPP.Core #1
    ("/steve/websocket/CentralSystemService/CP1", ["ocpp1.6"], "CP1"),  # steve #1109
    ("/chargers/201564", ["ocpp1.6"], "201564"),  # go-e ocpp-en.md example URL
    ("/GRS-1700003fb5d", ["ocpp1.6"], "GRS-1700003fb5d"),  # Grizzl-E v2: lbbrhzn/ocpp #899
    ("/SERIALASREQUESTED", [], "SERIALASREQUESTED"),  # Grizzl-E on ChargeLab: #442
    ("/?station=CP9", [], "CP9"),
]


@pytest.mark.parametrize(("path", "subprotocols", "station"), HANDSHAKES)
async def test_handshake_variants_are_accepted(
    gateway, url, recorder, basepath, path, subprotocols, station
):
    async with websockets.connect(f"{url}{path}", subprotocols=subprotocols or None) as ws:
        assert ws.subprotocol == (subprotocols[0] if subprotocols else None)
        await recorder.wait_for(f"{basepath}/{station}/state/connection_state", "CONNECTED")
        await ws.send(json.dumps([2, "hb-1", "Heartbeat", {}]))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply[0] == 3 and reply[1] == "hb-1" and reply[2]["currentTime"].endswith("Z")
        assert is_now(await recorder.wait_for(f"{basepath}/{station}/state/heartbeat"))


async def test_a_charger_offering_compression_gets_none_and_is_served(gateway, url):
    """Chargers whose WebSocket client offers permessage-deflate (the websockets and
    Java-WebSocket clients do by default): the gateway declines it (its zlib state is
    ~100 KiB per connection, bench: memory) and the charger works uncompressed."""
    async with websockets.connect(f"{url}/CPZ", subprotocols=["ocpp1.6"],
                                  compression="deflate") as ws:
        assert ws.request is not None and "permessage-deflate" in ws.request.headers.get(
            "Sec-WebSocket-Extensions", "")
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert ws.protocol.extensions == []
        await ws.send(json.dumps([2, "hb-1", "Heartbeat", {}]))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))[:2] == [3, "hb-1"]


async def test_missing_subprotocol_refused_when_strict(settings_factory):
    """OCPP_STRICT_SUBPROTOCOL=true refuses the Grizzl-E 05.x handshake (no subprotocol)."""
    gw = Gateway(settings_factory(ocpp_strict_subprotocol=True))
    await gw.start()
    try:
        fixture = load("grizzl_e_smart_fw05_root_path.json")
        with pytest.raises(InvalidStatus) as refused:
            await connect(gw.port, fixture["handshake"])
        assert refused.value.response.status_code == 400
        ws = await connect(gw.port, {"path": "/", "subprotocols": ["ocpp1.6"]})
        await ws.close()
    finally:
        await gw.stop()
