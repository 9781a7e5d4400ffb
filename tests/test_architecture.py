"""Issue 12: the shape of the code, and the promises it makes.

- No import cycles inside the package, and only the composition root's users
  (the CLI) import `gateway.py`.
- An extension that raises on every event harms nobody: every CALL is answered
  correctly, the other extensions' topics all arrive, the errors are counted.
- A retried StartTransaction gets the same transaction id.
"""

from __future__ import annotations

import ast
from pathlib import Path

import orjson
from ocpp.v16 import call

from ocpp2mqtt.command_runner import CommandRunner
from ocpp2mqtt.extensions import BaseExtension
from ocpp2mqtt.gateway import Gateway
from ocpp2mqtt.health import bound_port
from ocpp2mqtt.mqtt.transport import Incoming
from tests.helpers import connect_station, three_phase_meter_value
from tests.test_health import metrics, value
from tests.test_homeassistant import discovery_prefix, wait_json

SRC = Path(__file__).resolve().parent.parent / "src" / "ocpp2mqtt"
TS = "2026-11-25T10:00:00Z"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module → the package modules it imports (anywhere in the file, lazily or not)."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            found.update(c for c in candidates if c in modules and c != name)
        graph[name] = found
    return graph


def test_import_graph_has_no_cycles():
    graph = imports()
    assert len(graph) > 20
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # A package's __init__ imported by its own modules is not a cycle of modules.
    real = [c for c in cycles if not any(c[0].startswith(f"{m}.") for m in c[1:])]
    assert not real, real


def test_only_the_cli_imports_the_composition_root():
    importers = {m for m, deps in imports().items() if "ocpp2mqtt.gateway" in deps}
    assert importers == {"ocpp2mqtt.cli"}


# --- fault isolation -------------------------------------------------------------------------
class Boom(BaseExtension):
    name = "boom"

    def __init__(self) -> None:
        self.events = 0

    def on_event(self, event, state, update):
        self.events += 1
        raise RuntimeError("boom")

    def on_mqtt_connected(self) -> None:
        raise RuntimeError("boom on connect")


async def test_an_extension_that_always_raises_harms_nobody(settings_factory, recorder,
                                                            basepath):
    boom = Boom()
    settings = settings_factory(http_enabled=True, http_addr="127.0.0.1", http_port=0,
                                homeassistant_discovery=True,
                                homeassistant_discovery_prefix=discovery_prefix(basepath))
    async with Gateway(settings, extensions=[boom]) as gw:
        assert await gw.mqtt.wait_connected(10)
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "ISO")
        p = f"{basepath}/ISO/state"
        try:
            boot = await st.cp.call(call.BootNotification(charge_point_model="M",
                                                          charge_point_vendor="V"))
            assert boot.status == "Accepted"
            await st.cp.call(call.StatusNotification(connector_id=1, error_code="NoError",
                                                     status="Charging"))
            start = await st.cp.call(call.StartTransaction(connector_id=1, id_tag="t",
                                                           meter_start=1000, timestamp=TS))
            assert start.id_tag_info["status"] == "Accepted"
            tx = start.transaction_id
            await st.cp.call(call.MeterValues(connector_id=1, transaction_id=tx,
                                              meter_value=[three_phase_meter_value(TS, 2000)]))
            stop = await st.cp.call(call.StopTransaction(meter_stop=3500, timestamp=TS,
                                                         transaction_id=tx, id_tag="t"))
            assert stop.id_tag_info["status"] == "Accepted"
            assert (await st.cp.call(call.Heartbeat())).current_time
            # every other extension did its work
            await recorder.wait_for(f"{p}/session_energy", "2500")
            await recorder.wait_for(f"{p}/voltage/l2_n", "231.2")
            await recorder.wait_for(f"{p}/heartbeat")
            doc = orjson.loads(await recorder.wait_for(f"{basepath}/ISO/state"))
            await wait_json(recorder, f"{basepath}/ISO/state",
                            lambda d: d.get("session_energy") == 2500)
            assert doc["station"] == "ISO"
            await wait_json(recorder, f"{discovery_prefix(basepath)}/device/ocpp2mqtt/ISO/config",
                            lambda d: "voltage_l2_n" in d["components"])
            # and the errors are counted: one per event, one for the MQTT connect
            m = await metrics(bound_port(gw.http_server))
            assert boom.events == 7  # connected, boot, status, start, reading, stop, heartbeat
            assert value(m, "ocpp2mqtt_extension_errors_total", extension="boom") == 8
            assert value(m, "ocpp2mqtt_extension_errors_total", extension="state_topics") is None
        finally:
            await st.close()


async def test_a_failing_mqtt_handler_is_isolated(settings_factory, recorder, basepath):
    class BadSubscriber(BaseExtension):
        name = "bad_subscriber"

        def start(self, ctx):
            super().start(ctx)
            ctx.subscribe(f"{basepath}/poke", self.poked)

        def poked(self, message: Incoming) -> None:
            raise ValueError("cannot digest this")

    settings = settings_factory(http_enabled=True, http_addr="127.0.0.1", http_port=0)
    async with Gateway(settings, extensions=[BadSubscriber()]) as gw:
        await gw.mqtt.wait_subscribed(f"{basepath}/poke")
        recorder.publish(f"{basepath}/poke", b"x")
        st = await connect_station(f"ws://127.0.0.1:{gw.port}", "POKE")
        try:
            await gw.mqtt.wait_subscribed(f"{basepath}/POKE/cmd")
            recorder.publish(f"{basepath}/POKE/cmd", b'{"action": "clear_cache"}')
            result = orjson.loads(await recorder.wait_for(f"{basepath}/POKE/cmd_result"))
            assert result["status"] == "ok"
            m = await metrics(bound_port(gw.http_server))
            assert value(m, "ocpp2mqtt_extension_errors_total", extension="bad_subscriber") == 1
        finally:
            await st.close()


# --- idempotent StartTransaction -------------------------------------------------------------
async def test_retried_start_transaction_gets_the_same_id(gateway, url):
    st = await connect_station(url, "RETRY")
    try:
        start = call.StartTransaction(connector_id=1, id_tag="t", meter_start=42, timestamp=TS)
        first = (await st.cp.call(start)).transaction_id
        again = (await st.cp.call(start)).transaction_id
        other = (await st.cp.call(call.StartTransaction(
            connector_id=1, id_tag="t", meter_start=43, timestamp=TS))).transaction_id
        assert first == again != other
    finally:
        await st.close()


# --- command results are essential ------------------------------------------------------------
def test_command_results_are_published_as_essential():
    published = []

    class Publisher:
        def publish(self, topic, payload, retain=True, qos=None, essential=False,
                    correlation_data=None):
            published.append((topic, essential))

    class Topics:
        base = "b"

        def prefix(self, station):
            return f"b/{station}"

    class Server:
        last_station = None

    class Metrics:
        class commands:
            @staticmethod
            def labels(status):
                return type("C", (), {"inc": staticmethod(lambda: None)})

    runner = CommandRunner.__new__(CommandRunner)
    runner.publisher, runner.topics, runner.server, runner.metrics = (
        Publisher(), Topics(), Server(), Metrics())
    doc = {"id": 1, "action": "reset", "status": "ok", "response": {"status": "Accepted"},
           "error": None}
    runner._publish_result("CP", Incoming("b/CP/cmd", b"", False), doc)
    assert published == [("b/CP/cmd_result", True), ("b/CP/cmd_result/status", True)]
