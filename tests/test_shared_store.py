"""Issue 17: STORE_URL=postgresql://… — replicas share one PostgreSQL store (Debian's
postgresql, started by the fixture in a temporary directory on a free port)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import psycopg
import pytest
from ocpp.v16 import call

from ocpp2mqtt.config import ConfigError, load_settings
from ocpp2mqtt.gateway import Gateway
from ocpp2mqtt.health import bound_port
from ocpp2mqtt.store import Store
from ocpp2mqtt.store.postgres import MIGRATIONS, SharedStore
from tests.backoffice import BackOffice
from tests.helpers import MqttRecorder, Postgres, connect_station
from tests.test_current_control import Fuse, connected, settle, stations
from tests.test_health import http_get, metrics, poll, value
from tests.test_relay import boot, latest, meter, upstream
from tests.test_simulator import Remote, until

TS = "2026-11-30T10:00:00Z"


@contextlib.asynccontextmanager
async def replicas(settings_factory: Any, tmp_path: Any, url: str, n: int = 2,
                   **overrides: Any) -> AsyncIterator[list[Gateway]]:
    gateways = [Gateway(settings_factory(store_url=url, data_dir=tmp_path / f"replica{i}",
                                         http_enabled=True, http_addr="127.0.0.1",
                                         http_port=0, **overrides)) for i in range(n)]
    started: list[Gateway] = []
    try:
        for gw in gateways:
            await gw.start()
            started.append(gw)
            assert await gw.mqtt.wait_connected(10)
        yield gateways
    finally:
        for gw in reversed(started):
            await gw.stop()


def rows(url: str, sql: str, *args: Any) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, args).fetchall()


async def test_a_stop_on_another_replica_has_the_right_energy(
        settings_factory, tmp_path, postgres: Postgres, recorder: MqttRecorder, basepath):
    url = postgres.new_database()
    async with replicas(settings_factory, tmp_path, url) as (a, b):
        ids: list[int] = []
        topic = f"{basepath}/CP1/state/session_energy"
        for replica, meter_start in ((a, 1000), (b, 20_000), (a, 30_000)):
            st = await connect_station(f"ws://127.0.0.1:{replica.port}", "CP1")
            answer = await st.cp.call(call.StartTransaction(
                connector_id=1, id_tag="TAG", meter_start=meter_start, timestamp=TS))
            ids.append(answer.transaction_id)
            await st.close()
            # The charger comes back through the other replica and stops its session there.
            other = b if replica is a else a
            st = await connect_station(f"ws://127.0.0.1:{other.port}", "CP1")
            await st.cp.call(call.StopTransaction(
                meter_stop=meter_start + 7000, timestamp=TS, transaction_id=answer.transaction_id))
            await recorder.wait_for(f"{basepath}/CP1/state/last_transaction_id",
                                    str(answer.transaction_id))
            # Published in the same tick as last_transaction_id, possibly just after it.
            await until(lambda: len(recorder.values(topic)) == len(ids), "session_energy")
            energy = recorder.values(topic)
            assert energy[-1] == "7000", energy
            await st.close()
        # One sequence for all replicas: unique, never reused.
        assert len(set(ids)) == 3
        assert rows(url, "SELECT id, meter_start, meter_stop FROM transactions"
                         " ORDER BY meter_start") == [
            (ids[0], 1000, 8000), (ids[1], 20_000, 27_000), (ids[2], 30_000, 37_000)]


async def test_flags_set_on_one_replica_hold_on_another(
        settings_factory, tmp_path, postgres: Postgres, recorder: MqttRecorder, basepath):
    url = postgres.new_database()
    async with replicas(settings_factory, tmp_path, url) as (a, b):
        st = await connect_station(f"ws://127.0.0.1:{a.port}", "CP2")
        await recorder.wait_for(f"{basepath}/CP2/state/connection_state", "CONNECTED")
        recorder.publish(f"{basepath}/CP2/cmd", orjson.dumps(
            {"id": "off", "action": "charging_enabled", "args": {"enabled": False}}))
        await recorder.wait_for(f"{basepath}/CP2/state/charging_enabled", "false")
        await st.close()
        st = await connect_station(f"ws://127.0.0.1:{b.port}", "CP2")
        try:
            answer = await st.cp.call(call.Authorize(id_tag="ANY"))
            assert answer.id_tag_info["status"] == "Blocked"
        finally:
            await st.close()


async def test_the_database_away_and_back_loses_nothing(
        settings_factory, tmp_path, recorder: MqttRecorder, basepath):
    pg = Postgres().start()
    try:
        url = pg.new_database()
        async with replicas(settings_factory, tmp_path, url, n=1,
                            store_sync_timeout=0.5) as (a,):
            port = bound_port(a.http_server)
            st = await connect_station(f"ws://127.0.0.1:{a.port}", "CP3")
            try:
                first = await st.cp.call(call.StartTransaction(
                    connector_id=1, id_tag="T", meter_start=100, timestamp=TS))
                pg.stop("immediate")  # as if the database host died
                # The charger is still answered, from the replica's own copy.
                await asyncio.wait_for(st.cp.call(call.StopTransaction(
                    meter_stop=600, timestamp=TS, transaction_id=first.transaction_id)), 10)
                second = await asyncio.wait_for(st.cp.call(call.StartTransaction(
                    connector_id=1, id_tag="T", meter_start=600, timestamp=TS)), 10)
                assert second.transaction_id != first.transaction_id

                async def gap_shown():
                    m = await metrics(port)
                    return m if value(m, "ocpp2mqtt_store_connected") == 0 else None

                m = await poll(gap_shown, "ocpp2mqtt_store_connected == 0")
                assert value(m, "ocpp2mqtt_store_journal_depth") >= 2
                status, _, body = await http_get(port, "/readyz")
                assert status == 200 and "PostgreSQL unreachable" in body
                pg.start()

                async def copied():
                    m = await metrics(port)
                    return m if value(m, "ocpp2mqtt_store_journal_depth") == 0 else None

                await poll(copied, "the journal copied after the database came back", 30)
            finally:
                await st.close()
            assert rows(url, "SELECT id, meter_start, meter_stop FROM transactions"
                             " ORDER BY id") == [
                (first.transaction_id, 100, 600), (second.transaction_id, 600, None)]
            assert (await http_get(port, "/readyz"))[2] == "ready\n"
    finally:
        pg.close()


async def test_schema_is_versioned_and_migrated_once(settings_factory, tmp_path,
                                                     postgres: Postgres):
    url = postgres.new_database()
    async with replicas(settings_factory, tmp_path, url, n=3):
        pass  # three replicas starting against an empty database
    assert rows(url, "SELECT version FROM schema_version") == [(len(MIGRATIONS),)]
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE schema_version SET version = version + 1")
    gw = Gateway(settings_factory(store_url=url, data_dir=tmp_path / "newer"))
    await gw.start()
    try:
        ok, text = gw.readiness()
        assert not ok and "PostgreSQL unreachable" in text
    finally:
        await gw.stop()


def test_store_url_is_checked_and_its_password_never_shown(monkeypatch, tmp_path):
    monkeypatch.setenv("STORE_URL", "mysql://root:hunter2@db/ocpp")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "STORE_URL" in str(err.value) and "hunter2" not in str(err.value)
    monkeypatch.setenv("STORE_URL", "postgresql://ocpp:hunter2@db:5432/ocpp")
    shown = load_settings().redacted()["STORE_URL"]
    assert shown == "postgresql://ocpp:**********@db:5432/ocpp"


async def results(recorder: MqttRecorder, topic: str, cid: str, settle: float) -> list[dict]:
    """Every result published for command `cid`, after `settle` seconds of quiet."""
    deadline = asyncio.get_running_loop().time() + 15
    while not [d for d in map(orjson.loads, recorder.values(topic)) if d.get("id") == cid]:
        assert asyncio.get_running_loop().time() < deadline, f"no result for {cid}"
        await asyncio.sleep(0.02)
    await asyncio.sleep(settle)  # a second result would come within the retry window
    return [d for d in map(orjson.loads, recorder.values(topic)) if d.get("id") == cid]


async def test_a_replica_that_missed_the_claim_never_adds_a_second_result(
        settings_factory, tmp_path, postgres: Postgres, recorder: MqttRecorder, basepath):
    """Under load a replica can hear a command before it hears that another replica took
    the station. The shared store knows: the command gets exactly one result, `ok`."""
    url = postgres.new_database()
    async with replicas(settings_factory, tmp_path, url, ocpp_command_retry_base_delay=0.2,
                        ocpp_command_retry_attempts=4) as (a, b):
        prefix = f"{basepath}/MV1"
        # B held the station and still listens for its commands (the retry window) ...
        st = await connect_station(f"ws://127.0.0.1:{b.port}", "MV1")
        await recorder.wait_for(f"{prefix}/state/connection_state", "CONNECTED")
        await st.close()
        # ... and never hears the claims (they are late under load): it keeps listening
        b.commands.owner_of = lambda station: None
        b.replicas.released = lambda station: None
        # 1. The station is on A when the command arrives: A answers, B stays silent.
        st = await connect_station(f"ws://127.0.0.1:{a.port}", "MV1")
        try:
            await poll_owner(url, "MV1", a.instance_id)
            recorder.publish(f"{prefix}/cmd", orjson.dumps(
                {"id": "c1", "action": "unlock_connector", "args": {"connector_id": 1}}))
            got = await results(recorder, f"{prefix}/cmd_result", "c1", settle=3.5)
            assert [d["status"] for d in got] == ["ok"]
            assert [r.action for r in st.cp.received].count("UnlockConnector") == 1
        finally:
            await st.close()
        await poll_owner(url, "MV1", None)
        # 2. The station is away; it comes back through A while B waits with the command:
        #    B hands it over instead of answering not_connected.
        st = await connect_station(f"ws://127.0.0.1:{b.port}", "MV1")
        await poll_owner(url, "MV1", b.instance_id)
        await st.close()
        await poll_owner(url, "MV1", None)
        recorder.publish(f"{prefix}/cmd", orjson.dumps(
            {"id": "c2", "action": "unlock_connector", "args": {"connector_id": 1}}))
        await asyncio.sleep(0.3)
        st = await connect_station(f"ws://127.0.0.1:{a.port}", "MV1")
        try:
            got = await results(recorder, f"{prefix}/cmd_result", "c2", settle=3.5)
            assert [d["status"] for d in got] == ["ok"], got
            assert [r.action for r in st.cp.received].count("UnlockConnector") == 1
        finally:
            await st.close()


async def poll_owner(url: str, station: str, owner: str | None) -> None:
    async def check():
        found = rows(url, "SELECT owner FROM station_owners WHERE station=%s", station)
        return (found[0][0] if found else None) == owner

    await poll(check, f"station_owners[{station}] == {owner}")


@contextlib.asynccontextmanager
async def split_group(settings_factory: Any, tmp_path: Any, url: str, recorder: MqttRecorder,
                      basepath: str, name: str, ids: list[str], fuse_amps: float,
                      on_a: int) -> AsyncIterator[tuple[Gateway, Gateway, list, Fuse, dict]]:
    """One load-balancing group over two replicas: the first `on_a` chargers (simulated,
    16 A each) on A, the rest on B, all connected; a fuse watcher over all of them."""
    group = [{"name": name, "max_current": fuse_amps, "failsafe_current": 6,
              "stations": [{"id": sid, "max_current": 16} for sid in ids]}]
    async with replicas(settings_factory, tmp_path, url,
                        load_balancing=orjson.dumps(group).decode()) as (a, b), \
            stations(f"ws://127.0.0.1:{a.port}", ids[:on_a]) as sims_a, \
            stations(f"ws://127.0.0.1:{b.port}", ids[on_a:]) as sims_b:
        sims = sims_a + sims_b
        fuse = Fuse(sims, fuse_amps)
        remotes = {sid: Remote(recorder, f"{basepath}/{sid}") for sid in ids}
        for remote in remotes.values():
            await connected(remote)
        yield a, b, sims, fuse, remotes


async def test_a_group_spread_over_two_replicas_never_overloads_its_fuse(
        settings_factory, tmp_path, postgres: Postgres, recorder: MqttRecorder, basepath):
    """Four chargers on one 32 A fuse, two held by each replica; cars arrive and a
    charging station moves between replicas. Every increase any charger is given keeps
    the sum of what the charging cars are offered within the fuse, and both replicas
    converge on one fair allocation."""
    url = postgres.new_database()
    ids = ["FG1", "FG2", "FG3", "FG4"]
    async with split_group(settings_factory, tmp_path, url, recorder, basepath, "depot", ids,
                           32, on_a=2) as (a, b, sims, fuse, fg):
        await fg["FG1"].command("start_charging")
        await fg["FG3"].command("start_charging")
        await settle(recorder, basepath, "depot", sims, {"FG1": 16, "FG3": 16}, fuse)
        # A third car, on A: B's charger must come down before A's goes up.
        await fg["FG2"].command("start_charging")
        await settle(recorder, basepath, "depot", sims,
                     {"FG1": 10.6, "FG2": 10.6, "FG3": 10.6}, fuse)
        await fg["FG4"].command("start_charging")
        await settle(recorder, basepath, "depot", sims, {sid: 8 for sid in ids}, fuse)
        # A charging station moves from A to B (its car charges on).
        moving = sims[0]  # the first charger on A
        moving.charger.cfg.url = f"ws://127.0.0.1:{b.port}"
        await a.server.sessions["FG1"].ws.close()
        await until(lambda: "FG1" in b.server.sessions, "FG1 on replica B")
        await fg["FG2"].command("stop_charging")
        await settle(recorder, basepath, "depot", sims, {"FG1": 10.6, "FG2": 0, "FG3": 10.6,
                                                          "FG4": 10.6}, fuse)
        # The group limit set through one replica holds for both.
        recorder.publish(f"{basepath}/bridge/request/group_limit",
                         orjson.dumps({"id": "gl", "group": "depot", "max_current": 24}))
        fuse.max_current = 24
        await settle(recorder, basepath, "depot", sims, {"FG1": 8, "FG3": 8, "FG4": 8}, fuse)
        # Both replicas applied the request; one answered it.
        answers = recorder.values(f"{basepath}/bridge/response/group_limit")
        assert [orjson.loads(a)["id"] for a in answers] == ["gl"], answers
        fuse.check()
        # Each decrease is recorded once its charger accepted it (just after the above).
        await until(lambda: sum(dict(rows(url, "SELECT station, share FROM group_members"))
                                .values()) <= 24 + 1e-6, "the shares recorded under 24 A")


async def test_a_relayed_station_takes_its_back_office_queue_to_the_next_replica(
        settings_factory, tmp_path, postgres: Postgres, recorder: MqttRecorder, basepath):
    """A charger starts a session on replica A while its secondary back office is down,
    and finishes it on replica B. When the back office is back it gets the whole
    session once, in order, with its own transaction id: from B, the only sender."""
    url = postgres.new_database()
    employer = await BackOffice(first_tx=5000).start()
    ere = await BackOffice(first_tx=7000).start()
    try:
        upstreams = {"MV9": [upstream(employer, "employer", "primary"), upstream(ere, "ere")]}
        async with replicas(settings_factory, tmp_path, url, ocpp_upstreams=upstreams,
                            ocpp_upstream_reconnect_max_delay=0.2) as (a, b):
            st = await connect_station(f"ws://127.0.0.1:{a.port}", "MV9")
            await st.cp.call(boot())
            await ere.wait_actions("BootNotification")
            await ere.stop()
            await latest(recorder, f"{basepath}/MV9/upstream/ere/connection_state",
                         "DISCONNECTED")
            started = await st.cp.call(call.StartTransaction(
                connector_id=1, id_tag="T", meter_start=1000, timestamp=TS))
            tx = started.transaction_id
            assert tx == 5000  # the primary's id
            await st.cp.call(meter(tx, 1100))
            await st.cp.call(meter(tx, 1200))
            await st.close()
            st = await connect_station(f"ws://127.0.0.1:{b.port}", "MV9")
            try:
                await st.cp.call(meter(tx, 1300))
                await st.cp.call(call.StopTransaction(meter_stop=1400, timestamp=TS,
                                                      transaction_id=tx))
                await recorder.wait_for(f"{basepath}/MV9/state/session_energy", "400")
                # The primary saw the session through both replicas with its own id.
                frames = await employer.wait_actions("StartTransaction", "MeterValues",
                                                     "MeterValues", "MeterValues",
                                                     "StopTransaction")
                assert [f.payload.get("transactionId") for f in frames[1:]] == [5000] * 4
                await ere.start()
                await latest(recorder, f"{basepath}/MV9/upstream/ere/queue", "0", timeout=15)
                session = [f for f in ere.calls() if f.action in
                           ("StartTransaction", "MeterValues", "StopTransaction")]
                assert [f.action for f in session] == [
                    "StartTransaction", "MeterValues", "MeterValues", "MeterValues",
                    "StopTransaction"], [f.action for f in session]
                assert [f.payload["transactionId"] for f in session[1:]] == [7000] * 4
                readings = [f.payload["meterValue"][0]["sampledValue"][0]["value"]
                            for f in session if f.action == "MeterValues"]
                assert readings == ["1100", "1200", "1300"]
                # Nothing left anywhere for another replica to send again (the answers'
                # deletions reach PostgreSQL with B's journal, just after).
                await until(lambda: rows(url, "SELECT count(*) FROM relay_queue") == [(0,)],
                            "the relay queue empty in PostgreSQL")
                assert a.store.relay_count("MV9", "ere") == 0 or \
                    "MV9" not in a.server.sessions
            finally:
                await st.close()
    finally:
        for office in (employer, ere):
            await office.stop()
            office.close()


async def test_a_handed_over_command_is_answered_once_when_its_first_runner_dies(
        tmp_path, postgres: Postgres):
    """Replica X ran a command, handed it over to Y (the station moved) and died before
    marking the original done. Z, watching over the original, must leave it to Y's copy,
    and once Y answered the copy the original is answered too: never a second result
    ("timeout") after Y's "ok"."""
    url = postgres.new_database()
    stores = {}
    for name in ("x", "y", "z"):
        stores[name] = SharedStore(url, Store(tmp_path / name), 2.0, name)
        await stores[name].start(wait=10)
    x, y, z = stores["x"], stores["y"], stores["z"]
    try:
        original, copy = b"o" * 16, b"c" * 16
        assert await x.claim_command(original) == "x"
        await x.hand_over_command(copy, "y", original)
        assert await y.claim_command(copy) == "y"
        with psycopg.connect(url) as conn:  # x dies (kill -9): its heartbeat is old
            conn.execute("UPDATE replicas SET seen = 0 WHERE id = 'x'")
        x._heartbeat_task.cancel()
        assert await z.orphaned(original) is False  # y's copy is in hand
        await y.command_done(copy)
        assert await z.orphaned(original) is None  # answered, through the copy
    finally:
        for store in stores.values():
            await store.stop()


async def test_a_stop_on_another_replica_while_the_database_is_away_gets_its_energy_later(
        settings_factory, tmp_path, recorder: MqttRecorder, basepath):
    pg = Postgres().start()
    try:
        url = pg.new_database()
        async with replicas(settings_factory, tmp_path, url, store_sync_timeout=0.5) as (a, b):
            st = await connect_station(f"ws://127.0.0.1:{a.port}", "CP5")
            started = await st.cp.call(call.StartTransaction(
                connector_id=1, id_tag="T", meter_start=5000, timestamp=TS))
            await st.close()
            pg.stop("immediate")
            # The charger moves while the database is away: B does not know the start.
            st = await connect_station(f"ws://127.0.0.1:{b.port}", "CP5")
            try:
                await asyncio.wait_for(st.cp.call(call.StopTransaction(
                    meter_stop=7500, timestamp=TS, transaction_id=started.transaction_id)),
                    10)
                prefix = f"{basepath}/CP5/state"
                await recorder.wait_for(f"{prefix}/last_transaction_id",
                                        str(started.transaction_id))
                assert recorder.values(f"{prefix}/session_energy") == []
                pg.start()
                # Once the store has the start, the session's energy is published.
                await recorder.wait_for(f"{prefix}/session_energy", "2500", timeout=30)
            finally:
                await st.close()
    finally:
        pg.close()


async def test_a_station_new_to_a_replica_holds_its_share_until_its_status_comes(
        settings_factory, tmp_path, postgres: Postgres, recorder: MqttRecorder, basepath):
    """A charging station that moves to another replica charges on; until its status
    arrives there, that replica does not know whether its car charges, and must not give
    its share away (it did: the share went to 0 and the others rose over the fuse)."""
    from ocpp2mqtt.extensions.load_balancing import LoadBalancingExtension

    url = postgres.new_database()
    ids = ["HS1", "HS2", "HS3"]
    async with split_group(settings_factory, tmp_path, url, recorder, basepath, "hold", ids,
                           24, on_a=2) as (a, b, sims, fuse, fg):
        await fg["HS1"].command("start_charging")
        await settle(recorder, basepath, "hold", sims, {"HS1": 16}, fuse)
        await fg["HS3"].command("start_charging")
        await settle(recorder, basepath, "hold", sims, {"HS1": 12, "HS3": 12}, fuse)
        await fg["HS2"].command("start_charging")
        await settle(recorder, basepath, "hold", sims, {sid: 8 for sid in ids}, fuse)
        # HS1's charger loses A and comes back on B, saying nothing yet (no status).
        moving = sims[0]  # the first charger on A
        moving.charger.cfg.url = "ws://127.0.0.1:9"  # its own reconnects go nowhere
        await a.server.sessions["HS1"].ws.close()
        await until(lambda: "HS1" not in a.server.sessions, "HS1 gone from A")
        quiet = await connect_station(f"ws://127.0.0.1:{b.port}", "HS1")
        try:
            await until(lambda: b.host.stations.get("HS1").connected, "HS1 on replica B")
            balancer = b.host.extension(LoadBalancingExtension)
            await balancer._balance(balancer.groups["hold"])
            share = rows(url, "SELECT share FROM group_members WHERE grp='hold' AND"
                              " station='HS1'")[0][0]
            assert share == 8, share  # what its car may still draw
            assert balancer.groups["hold"].allocations["HS1"] == 8
            fuse.check()
        finally:
            await quiet.close()
