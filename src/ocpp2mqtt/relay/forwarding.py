"""`Relay`: a relayed station's messages to its back offices, and their CALLs to it.

Charger → back offices (`forward`, called by the session for every schema-valid
CALL of a station with upstreams): the message is written to every upstream's
queue (before the charger is answered, so it survives a crash), then — if a
deciding back office is connected — its answer is awaited for at most
OCPP_UPSTREAM_TIMEOUT. The session's own handler always runs, so MQTT shows
everything as without a relay; the `Decision` says which parts of the answer the
back offices decided (policy.py).

Back office → charger (`upstream_call`): checked like any CALL, refused unless its
`allow` list has the action, relayed through the command runner (one CALL at a
time towards the charger, shared with MQTT commands), the answer sent back and
published on `<prefix>/upstream/<name>/command`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

import orjson
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ocpp2mqtt import events as ev
from ocpp2mqtt.clock import utc_now
from ocpp2mqtt.config import Settings, UpstreamConfig
from ocpp2mqtt.metrics import Metrics
from ocpp2mqtt.ocpp import protocol
from ocpp2mqtt.ocpp.session import CallErrorReceived, Session
from ocpp2mqtt.relay import policy
from ocpp2mqtt.relay.link import BOOT_FLAG, UpstreamLink
from ocpp2mqtt.state import Stations
from ocpp2mqtt.store import Store

log = logging.getLogger("ocpp2mqtt.relay")

MAX_AHEAD = 4  # queued messages before a CALL beyond which its answer is not awaited
CallStation = Callable[[str, str, dict[str, Any], protocol.OcppVersion], Awaitable[Any]]


class Relay:
    def __init__(self, settings: Settings, store: Store, metrics: Metrics,
                 emit: Callable[[ev.Event], None], call_station: CallStation,
                 stations: Stations, spawn: Callable[[Coroutine[Any, Any, Any]],
                                                     asyncio.Task[Any]]):
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.emit = emit
        self.call_station = call_station
        self.stations = stations
        self._spawn = spawn
        self.links: dict[str, dict[str, UpstreamLink]] = {}  # station → name → link
        self._changed: dict[UpstreamLink, None] = {}
        self._scheduled = False
        metrics.registry.register(_UpstreamGauges(self))

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return self._spawn(coro)

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Drain what waited in the queues when the gateway stopped. With a shared store
        a station's queue is drained by the replica it connects to, which reads it then
        (store/postgres.py): this one may no longer hold it."""
        if self.settings.shared_store:
            return
        for station, name in self.store.relay_waiting():
            config = next((u for u in self.settings.upstreams_for(station) if u.name == name),
                          None)
            if config is None:
                log.warning("%s: messages are queued for upstream %r, which OCPP_UPSTREAMS "
                            "no longer names; they stay queued", station, name)
                continue
            self._link(station, config).resume()

    async def stop(self) -> None:
        await asyncio.gather(*(link.close() for links in self.links.values()
                               for link in links.values()))

    def relays(self, station: str) -> bool:
        return bool(self.settings.upstreams_for(station))

    def session_started(self, session: Session) -> None:
        for config in self.settings.upstreams_for(session.station):
            link = self._link(session.station, config)
            if self.settings.shared_store:
                link.reload()  # another replica may have held it: its queue was read
            link.attach(session.version)

    def session_ended(self, session: Session) -> None:
        for link in self.links.get(session.station, {}).values():
            link.detach()

    def _link(self, station: str, config: UpstreamConfig) -> UpstreamLink:
        links = self.links.setdefault(station, {})
        link = links.get(config.name)
        if link is None:
            link = links[config.name] = UpstreamLink(self, station, config)
            self.changed(link)
        return link

    # --- what MQTT shows ------------------------------------------------------------------
    def changed(self, link: UpstreamLink) -> None:
        """A link connected, disconnected or its queue changed: one event per loop tick."""
        self._changed[link] = None
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._publish)

    def _publish(self) -> None:
        self._scheduled = False
        changed, self._changed = self._changed, {}
        now = utc_now()
        for link in changed:
            self.emit(ev.UpstreamChanged(link.station, now, upstream=link.name,
                                         connected=link.connected, queue=link.count))

    # --- charger → back offices -------------------------------------------------------------
    async def forward(self, session: Session, call: protocol.Call) -> policy.Decision:
        station, version = session.station, session.version
        configs = self.settings.upstreams_for(station)
        links = [self._link(station, config) for config in configs]
        decision = policy.Decision()
        if not links:
            return decision
        action, payload = call.action, call.payload
        local_tx = self._local_transaction(station, version, action, payload)
        if action == "BootNotification":  # for a back office that never saw the boot
            self.store.set_flag(station, BOOT_FLAG, orjson.dumps(
                {"version": version.name, "payload": payload}).decode())
        text = orjson.dumps(payload).decode()
        transactional = policy.is_transactional(version, action, payload)
        queued: dict[str, int] = {}
        ahead: dict[str, int] = {}  # messages the link had to send before this one
        for link in links:
            ahead[link.name] = link.count
            seq = link.enqueue(version, action, payload, text, local_tx, transactional)
            if seq is not None:
                queued[link.name] = seq

        primary = next((link for link in links if link.config.role == "primary"), None)
        tag = policy.tag_of(version, action, payload)
        decider_config = policy.decider(configs, tag) if tag is not None else None
        decider = next((link for link in links if link.config is decider_config), None)
        if primary is not None and local_tx is not None and action == "StartTransaction":
            # A StartTransaction the charger repeated: the id the primary gave the first time.
            decision.transaction_id = self.store.relay_upstream_tx(station, primary.name,
                                                                    local_tx)
        waiting: dict[UpstreamLink, asyncio.Future[dict[str, Any] | None]] = {}
        if policy.answer_matters(version, action):
            for asked in (primary, decider):
                # Not for a link that is down, or still sending a backlog: its answer
                # could not come in time.
                if asked is not None and asked not in waiting and asked.name in queued \
                        and ahead[asked.name] <= MAX_AHEAD and asked.can_answer(action):
                    waiting[asked] = asked.waiter(queued[asked.name])
        if not waiting:
            return decision
        try:
            await asyncio.wait(waiting.values(), timeout=self.settings.ocpp_upstream_timeout)
        finally:
            for link in waiting:
                link.forget(queued[link.name])
        answers = {link: fut.result() for link, fut in waiting.items()
                   if fut.done() and not fut.cancelled()}
        for link in waiting:
            if link not in answers:
                log.info("%s → %s: no answer to %s within %g s; answered locally", station,
                         link.name, action, self.settings.ocpp_upstream_timeout)
                self.metrics.upstream_messages.labels(link.name, "late").inc()
        primary_answer = answers.get(primary) if primary is not None else None
        if primary_answer is not None:
            decision.primary = primary_answer
            if version is protocol.V16 and action == "StartTransaction":
                tx_id = primary_answer.get("transactionId")
                decision.transaction_id = tx_id if isinstance(tx_id, int) else None
        field = policy.answer_field(version, action)
        verdict = answers.get(decider) if decider is not None else None
        if field is not None and verdict is not None and isinstance(verdict.get(field), dict):
            decision.tag_info = verdict[field]
        return decision

    def _local_transaction(self, station: str, version: protocol.OcppVersion, action: str,
                           payload: dict[str, Any]) -> int | None:
        """1.6: our row of the transaction a message belongs to (StartTransaction: made
        now — the handler, running after, gets the same row for the same message)."""
        if version is not protocol.V16:
            return None
        if action == "StartTransaction":
            return self.store.start_transaction(station, payload["connectorId"],
                                                payload["idTag"], payload["meterStart"],
                                                payload["timestamp"])
        tx_id = payload.get("transactionId")
        if action in ("MeterValues", "StopTransaction") and isinstance(tx_id, int):
            tx = self.store.transaction(station, tx_id)
            return tx.local_id if tx is not None else None
        return None

    # --- back office → charger --------------------------------------------------------------
    async def upstream_call(self, link: UpstreamLink, call: protocol.Call) -> str:
        """Answer a back office's CALL: refused, or relayed to the charger."""
        version, action = link.version, call.action
        response: dict[str, Any]
        allowed = False
        try:
            if action not in protocol.central_system_actions(version):
                known = action in version.charger_actions or \
                    action in version.recognised_actions
                raise version.error("NotSupported" if known else "NotImplemented",
                                    f"{action[:64]!r} is not a CALL a back office sends")
            protocol.validate(version, version.schema_name(action), call.payload,
                              self.settings.ocpp_lenient_schema)
            if not link.config.allows(action):
                refusal = policy.rejection(version, action)
                self.metrics.upstream_commands.labels(link.name, "blocked").inc()
                log.info("%s ← %s: %s blocked (not in its allow list)", link.station,
                         link.name, action)
                if refusal is None:
                    raise version.error("NotSupported", f"{action} is not allowed for "
                                        f"upstream {link.name!r} (OCPP_UPSTREAMS allow)")
                response = refusal
            else:
                allowed = True
                response = await self._relay_to_charger(link, action, call.payload)
        except protocol.CallErrorReply as exc:
            error = {"errorCode": exc.code,
                     "errorDescription": version.descriptions.get(exc.code, ""),
                     "errorDetails": exc.details}
            self._commanded(link, call, allowed, error)
            return protocol.encode_error(call.unique_id, exc, version)
        except CallErrorReceived as exc:  # the charger's own CALLERROR, passed on
            self._commanded(link, call, allowed, {"errorCode": exc.code, "errorDescription":
                                                  exc.description, "errorDetails": exc.details})
            return orjson.dumps([protocol.CALLERROR, call.unique_id, exc.code, exc.description,
                                 exc.details if isinstance(exc.details, dict) else {}]).decode()
        self._commanded(link, call, allowed, response)
        return protocol.encode_result(call.unique_id, response)

    async def _relay_to_charger(self, link: UpstreamLink, action: str,
                                payload: dict[str, Any]) -> dict[str, Any]:
        version, station = link.version, link.station
        refusal = self._out_of_reach(link, action, payload)
        if refusal is not None:
            return refusal
        if version is protocol.V16 and action == "RemoteStopTransaction":
            charger_tx = self._charger_transaction(station, link.name, payload["transactionId"])
            if charger_tx is None:
                log.info("%s ← %s: RemoteStopTransaction of transaction %s, which is not "
                         "this station's; rejected", station, link.name,
                         payload["transactionId"])
                self.metrics.upstream_commands.labels(link.name, "refused").inc()
                return {"status": "Rejected"}
            payload = {**payload, "transactionId": charger_tx}
        self.metrics.upstream_commands.labels(link.name, "relayed").inc()
        try:
            answer: dict[str, Any] = await self.call_station(station, action, payload, version)
        except CallErrorReceived:
            raise
        except asyncio.TimeoutError:
            raise version.error("GenericError", "the charger did not answer within "
                                f"{self.settings.ocpp_response_timeout:g} s") from None
        except protocol.InvalidAnswer as exc:
            raise version.error("GenericError", str(exc)) from None
        except Exception as exc:  # not connected, or connected to another replica
            raise version.error("GenericError", f"the charger is not reachable: {exc}") \
                from None
        return answer

    def _out_of_reach(self, link: UpstreamLink, action: str,
                      payload: dict[str, Any]) -> dict[str, Any] | None:
        """A refusal for a CALL naming a connector (EVSE) the station does not have."""
        target = payload.get("connectorId", payload.get("evseId"))
        if not isinstance(target, int) or target == 0:
            return None
        state = self.stations.states.get(link.station)
        known = set(state.connectors) if state is not None else set()
        if not known or target in known:
            return None
        log.info("%s ← %s: %s names connector %s, which the station does not have; refused",
                 link.station, link.name, action, target)
        self.metrics.upstream_commands.labels(link.name, "refused").inc()
        refusal = policy.rejection(link.version, action)
        if refusal is None:
            raise link.version.error("PropertyConstraintViolation",
                                     f"connector {target} does not exist on this station")
        return refusal

    def _charger_transaction(self, station: str, upstream: str, upstream_tx: int) -> int | None:
        """The charger's id of the transaction `upstream` calls `upstream_tx`, if it is
        one of this station's."""
        local = self.store.relay_local_tx(station, upstream, upstream_tx)
        if local is not None:
            tx = self.store.transaction_by_local_id(station, local)
            return tx.id if tx is not None else None
        tx = self.store.transaction(station, upstream_tx)
        return tx.id if tx is not None else None

    def _commanded(self, link: UpstreamLink, call: protocol.Call, allowed: bool,
                   response: Any) -> None:
        self.emit(ev.UpstreamCommanded(link.station, utc_now(), upstream=link.name,
                                       action=call.action, payload=call.payload,
                                       allowed=allowed, response=response))


class _UpstreamGauges(Collector):
    """`ocpp2mqtt_upstream_connected` and `ocpp2mqtt_upstream_queue`, per station and
    upstream, read at scrape time."""

    def __init__(self, relay: Relay):
        self.relay = relay

    def collect(self) -> Iterable[Metric]:
        connected = GaugeMetricFamily(
            "ocpp2mqtt_upstream_connected", "1 while the link to a back office is connected.",
            labels=["station", "upstream"])
        queue = GaugeMetricFamily(
            "ocpp2mqtt_upstream_queue", "Charger messages waiting for a back office.",
            labels=["station", "upstream"])
        for station, links in sorted(self.relay.links.items()):
            for name, link in sorted(links.items()):
                connected.add_metric([station, name], 1 if link.connected else 0)
                queue.add_metric([station, name], link.count)
        yield connected
        yield queue
