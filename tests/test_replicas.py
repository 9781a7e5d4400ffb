"""Issue 7: two gateway processes share one broker; a station moves between them.

Backs the claims of docs/scaling.md: commands reach the replica that holds the
station's socket, exactly one result per command, a stale connection on the
old replica is dropped without publishing a wrong DISCONNECTED, and a command
waiting on the old replica is handed over.
"""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
from ocpp.v16 import call

from tests.helpers import MqttRecorder, connect_station, free_port
from tests.test_reliability import start_gateway_process, wait_listening


async def results_for(rec: MqttRecorder, topic: str, cid: str, timeout: float = 15) -> list:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [d for d in map(orjson.loads, rec.values(topic)) if d.get("id") == cid]
        if found or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.02)


@pytest.fixture
async def two_replicas(broker, basepath, tmp_path):
    ports = free_port(), free_port()
    procs = [
        start_gateway_process(broker.port, basepath, tmp_path / f"data{i}", port,
                              OCPP_COMMAND_RETRY_ATTEMPTS="4",
                              OCPP_COMMAND_RETRY_BASE_DELAY="0.2")  # waits up to 3 s
        for i, port in enumerate(ports)
    ]
    try:
        for proc, port in zip(procs, ports, strict=True):
            await wait_listening(port, proc)
        yield [f"ws://127.0.0.1:{p}" for p in ports]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


async def test_station_moves_between_replicas(two_replicas, broker, basepath):
    url_a, url_b = two_replicas
    prefix = f"{basepath}/MOVER"
    rec = MqttRecorder(broker.port, f"{basepath}/#")

    cids: list[str] = []

    async def command(doc: dict, timeout: float = 15) -> list:
        cid = uuid.uuid4().hex
        cids.append(cid)
        rec.publish(f"{prefix}/cmd", orjson.dumps({"id": cid, **doc}))
        return await results_for(rec, f"{prefix}/cmd_result", cid, timeout)

    try:
        on_a = await connect_station(url_a, "MOVER")
        await rec.wait_for(f"{prefix}/state/connection_state", "CONNECTED")
        owner_a = orjson.loads(await rec.wait_for(f"{prefix}/state/gateway"))["id"]
        # A subscribes to the station's commands as it connects; poll until it answers
        for _ in range(30):
            first = await command({"action": "clear_cache"}, timeout=0.5)
            if first:
                break
        cids[:] = cids[-1:]  # earlier probes may have been published before A listened
        assert [r["status"] for r in first] == ["ok"]

        # The charger's network changes: it opens a new connection to B while
        # A still believes the old one is alive.
        on_b = await connect_station(url_b, "MOVER")

        def claims() -> list[str]:
            return [orjson.loads(v)["id"] for v in rec.values(f"{prefix}/state/gateway")]

        for _ in range(500):  # B's claim arrives (poll with timeout)
            if claims()[-1] != owner_a:
                break
            await asyncio.sleep(0.02)
        assert claims()[-1] != owner_a
        await asyncio.wait_for(on_a.ws.wait_closed(), 10)  # A dropped its stale connection
        await rec.wait_for(f"{prefix}/state/connection_state", "CONNECTED")
        assert rec.values(f"{prefix}/state/connection_state")[-1] == "CONNECTED"

        results = await command({"action": "unlock_connector", "args": {"connector_id": 1}})
        assert [r["status"] for r in results] == ["ok"]
        await on_b.cp.wait_call("UnlockConnector")
        assert not [r for r in on_a.cp.received if r.action == "UnlockConnector"]

        # B loses the charger; a command arrives while it is away; it comes back on A.
        await on_b.close()
        await rec.wait_for(f"{prefix}/state/connection_state", "DISCONNECTED")
        pending = asyncio.ensure_future(command({"action": "reset", "args": {"type": "Soft"}}))
        # The command is on the broker (B, lingering, has it) before the charger is back.
        for _ in range(500):
            if cids and any(cids[-1] in v for v in rec.values(f"{prefix}/cmd")):
                break
            await asyncio.sleep(0.01)
        assert any(cids[-1] in v for v in rec.values(f"{prefix}/cmd"))
        back_on_a = await connect_station(url_a, "MOVER")
        found = await pending
        assert [r["status"] for r in found] == ["ok"], found
        await back_on_a.cp.wait_call("Reset")
        # Exactly one answer per command: wait out the replicas' retry window (3 s), in
        # which a replica that wrongly kept the command would answer not_connected.
        await asyncio.sleep(4)
        for cid in cids:
            assert len(await results_for(rec, f"{prefix}/cmd_result", cid, 0)) == 1, cid
        assert sum(1 for r in back_on_a.cp.received if r.action == "Reset") == 1
        await back_on_a.cp.call(call.Heartbeat())
        await back_on_a.close()
        await on_a.close()
    finally:
        rec.close()


async def test_a_handed_over_copy_of_a_command_that_already_ran_is_dropped(
        gateway, url, recorder, basepath):
    """A replica may hear a command itself *and* get it handed over by the replica the
    station left (docs/scaling.md): it runs it once."""
    from tests.helpers import connect_station as connect

    prefix = f"{basepath}/DEDUP"
    st = await connect(url, "DEDUP")
    try:
        await gateway.mqtt.wait_subscribed(f"{prefix}/cmd")
        original = orjson.dumps({"id": "d-1", "action": "reset", "args": {"type": "Soft"}})
        recorder.publish(f"{prefix}/cmd", original)
        assert (await results_for(recorder, f"{prefix}/cmd_result", "d-1"))[0]["status"] == "ok"
        copy = orjson.dumps({"handed_over": "other-replica", "command": original.decode()})
        recorder.publish(f"{prefix}/cmd", copy)
        # a command that did not run here yet, handed over: it runs
        fresh = orjson.dumps({"id": "d-2", "action": "clear_cache"})
        recorder.publish(f"{prefix}/cmd", orjson.dumps(
            {"handed_over": "other-replica", "command": fresh.decode()}))
        assert (await results_for(recorder, f"{prefix}/cmd_result", "d-2"))[0]["status"] == "ok"
        # the copy of d-1 came before d-2's copy on the same topic: it was dropped
        assert len(await results_for(recorder, f"{prefix}/cmd_result", "d-1", 0)) == 1
        assert sum(1 for r in st.cp.received if r.action == "Reset") == 1
        assert sum(1 for r in st.cp.received if r.action == "ClearCache") == 1
    finally:
        await st.close()
