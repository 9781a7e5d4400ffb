"""MQTT commands → OCPP calls → exactly one result each.

The runner listens to `<prefix>/cmd` of every station this gateway holds (and,
for the retry window after it left, of stations that might come back), turns each
command into a plan (commands.py, pure), sends it to the station's session — one
CALL at a time per station — checks the charger's answer against the action's
response schema, and publishes the result on `<prefix>/cmd_result` (plus the
original's `cmd_result/<key>` topics and, for MQTT v5, the response topic).

With several gateway replicas (docs/scaling.md), a command waiting for a station
that reconnects to another replica is handed over: re-published, wrapped as
`{"handed_over": <replica>, "command": <the original text>}`, on the same topic.
The new owner runs it unless it already ran the same command itself (it may
have heard the original too): one command, one result.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import orjson

from ocpp2mqtt import commands
from ocpp2mqtt import events as ev
from ocpp2mqtt.authorization import Authorizer
from ocpp2mqtt.clock import utc_now
from ocpp2mqtt.config import Settings
from ocpp2mqtt.metrics import Metrics
from ocpp2mqtt.mqtt.publisher import DurablePublisher
from ocpp2mqtt.mqtt.router import TopicRouter
from ocpp2mqtt.mqtt.transport import Incoming
from ocpp2mqtt.ocpp import protocol
from ocpp2mqtt.ocpp.server import OcppServer
from ocpp2mqtt.ocpp.session import CallErrorReceived, Session
from ocpp2mqtt.state import Stations
from ocpp2mqtt.store import Store
from ocpp2mqtt.topics import Topics

log = logging.getLogger("ocpp2mqtt.commands")

RECENT_LIMIT = 256  # commands remembered per station to recognise a handed-over copy
CLAIM_GRACE = 3.0  # seconds the holder of a station has to claim one of its commands
WATCH_INTERVAL = 2.0  # seconds between looks at a command another replica runs


Handler = Callable[[str, Any, dict[str, Any], bytes], Awaitable[dict[str, Any]]]


class Fleet(Protocol):
    """The shared store's part in commands (store/postgres.py), with STORE_URL set."""

    async def responsible(self, station: str) -> bool: ...

    async def claimed(self, digest: bytes) -> bool: ...

    reliable_since: float

    async def command_done(self, digest: bytes) -> None: ...

    async def orphaned(self, digest: bytes) -> bool | None: ...

    async def claim_command(self, digest: bytes) -> str: ...

    async def hand_over_command(self, digest: bytes, to: str,
                                parent: bytes | None) -> None: ...


class NotConnected(Exception):
    """The station is not connected (and did not come back in time)."""



class HandedOver(Exception):
    """The station is connected to another gateway replica (its id is the message)."""


class CommandRunner:
    def __init__(self, settings: Settings, topics: Topics, server: OcppServer,
                 router: TopicRouter, publisher: DurablePublisher, store: Store,
                 authorizer: Authorizer, emit: Callable[[ev.Event], None], metrics: Metrics,
                 spawn: Callable[[Coroutine[Any, Any, Any]], Any], instance_id: str,
                 stations: Stations):
        self.settings = settings
        self.topics = topics
        self.server = server
        self.router = router
        self.publisher = publisher
        self.store = store
        self.authorizer = authorizer
        self.emit = emit
        self.metrics = metrics
        self.spawn = spawn
        self.instance_id = instance_id
        self.stations = stations
        self.owner_of: Callable[[str], str | None] = lambda station: None  # replicas.py
        # With a shared store: (replica, since) holding a station, read from the database.
        self.shared_owner: Callable[[str], Awaitable[tuple[str, float] | None]] | None = None
        # With a shared store every replica hears every station's commands and the store
        # decides which one answers (docs/scaling.md).
        self.fleet: Fleet | None = None
        self.policy = commands.CurrentLimitPolicy(
            purpose=settings.current_limit_purpose,
            stack_level=settings.current_limit_stack_level,
            profile_id_base=settings.current_limit_profile_id,
            round_amps=settings.current_limit_round_amps,
            min_current=settings.current_limit_min_current,
            force_amps=settings.current_limit_unit == "A",
            phases=settings.current_limit_phases,
            voltage=settings.current_limit_voltage,
            kind=settings.current_limit_profile_kind,
        )
        # Actions answered by a feature instead of a plan (charging/control.py:
        # set_current_limit, set_phases, clear_current_limit; load balancing:
        # set_charge_mode): (station, command id, args, raw) → the result document.
        self.handlers: dict[str, Handler] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._watching: dict[str, Callable[[], None]] = {}  # station → unsubscribe
        self._linger: dict[str, asyncio.TimerHandle] = {}
        self._recent: dict[str, dict[bytes, None]] = {}  # station → digests of commands run
        # 2.x requests carry an integer id (remoteStartId, requestId): unique across restarts
        self._request_ids = itertools.count(int(time.time()) % 1_000_000_000)

    # --- which command topics we listen to -------------------------------------------
    def start(self) -> None:
        if self.fleet is not None and self.settings.mqtt_usestationname:
            command = self.topics.command("+")
            self.router.subscribe(command, lambda message: self._on_command(
                self.topics.station_of(message.topic, "cmd") or "", message))
            return
        if not self.settings.mqtt_usestationname:
            # One shared prefix: one command topic, for the station that connected last.
            self.router.subscribe(self.topics.command(""), self._handler(""))
        for station in self.settings.expected_charge_points:
            self.watch(station)

    def _handler(self, station: str) -> Callable[[Incoming], None]:
        return lambda message: self._on_command(station, message)

    @property
    def _wildcard(self) -> bool:
        return self.fleet is not None and self.settings.mqtt_usestationname

    def watch(self, station: str) -> None:
        if self._wildcard:
            return  # every station's commands are heard already
        handle = self._linger.pop(station, None)
        if handle is not None:
            handle.cancel()
        if self.settings.mqtt_usestationname and station not in self._watching:
            self._watching[station] = self.router.subscribe(
                self.topics.command(station), self._handler(station))

    def unwatch(self, station: str) -> None:
        self._linger.pop(station, None)
        if station in self.server.sessions or station in self.settings.expected_charge_points:
            return
        unsubscribe = self._watching.pop(station, None)
        if unsubscribe is not None:
            unsubscribe()

    def session_started(self, session: Session) -> None:
        # Subscribe before the station is claimed: a replica that sees our claim may
        # hand a waiting command over by re-publishing it, and we must hear it.
        self.watch(session.station)

    def session_ended(self, session: Session) -> None:
        if self._wildcard:
            return
        station = session.station
        if session.taken_over:
            log.info("%s now connected to another gateway replica", station)
            self.unwatch(station)
            return
        if station in self.settings.expected_charge_points or \
                not self.settings.mqtt_usestationname:
            return
        # Keep listening while a command could still be waiting for a reconnect,
        # then let go so another gateway replica can own this station's commands.
        self._linger[station] = asyncio.get_running_loop().call_later(
            self._linger_seconds(), self.unwatch, station)

    def _linger_seconds(self) -> float:
        s = self.settings
        return float(s.ocpp_command_retry_base_delay * (2 ** s.ocpp_command_retry_attempts) + 1)

    def released(self, station: str) -> None:
        """Another replica claimed `station`: stop listening if we are only lingering."""
        if station in self._linger:
            self._linger.pop(station).cancel()
            self.unwatch(station)
        self.server.changed()  # wake commands waiting for the station: hand them over

    # --- running commands ------------------------------------------------------------------
    def _on_command(self, station: str, message: Incoming) -> None:
        if not message.payload:
            return  # our own clearing of a retained command
        session = self.server.sessions.get(station)
        holding = session is not None and not session.taken_over
        if self.fleet is None and self.owner_of(station) is not None and not holding:
            return  # the replica that holds the station hears this command too
        # A retained command would run again at every restart: run it once and clear
        # it. MQTT 3.1.1 hides the retain flag of live messages, so we clear after
        # every command (an empty retained message is a no-op).
        self.publisher.publish(message.topic, b"", retain=True, qos=1)
        raw, copy = _unwrap(message.payload)
        if self.fleet is not None:  # the shared store's claims decide (every replica hears)
            self.spawn(self._fleet_run(station, message, raw, holding, copy, time.time()))
            return
        digest = hashlib.blake2b(raw, digest_size=16).digest()
        recent = self._recent.setdefault(station, {})
        if copy and digest in recent:
            log.info("%s: handed-over command already ran here; dropped", station or "?")
            return
        recent[digest] = None
        if len(recent) > RECENT_LIMIT:
            del recent[next(iter(recent))]
        self.spawn(self._run(station, message, raw))

    async def _fleet_run(self, station: str, message: Incoming, raw: bytes, holding: bool,
                         copy: bool, arrived: float) -> None:
        """Every replica heard the command: an atomic claim in the shared store makes one
        of them answer. The holder of the station (or the one that held it last, or, if
        none holds it, the live replica with the lowest id) claims at once; the others
        give it CLAIM_GRACE, then all try (the one on record may be gone: kill -9), and
        the winner hands the command over to the station's holder if that is another
        replica. A handed-over copy is claimed for its new owner by the replica that
        hands it over. Whoever loses watches over the winner (`_watch_over`)."""
        assert self.fleet is not None
        claim = hashlib.blake2b(message.payload, digest_size=16).digest()
        try:
            if not copy and not holding and not await self.fleet.responsible(station):
                await asyncio.sleep(CLAIM_GRACE)
                if await self.fleet.claimed(claim):
                    await self._watch_over(station, message, raw, claim)
                    return
                if arrived < self.fleet.reliable_since + CLAIM_GRACE:
                    # The store was away around the command's arrival: the holder may
                    # have run it unclaimed. One result or none, never two.
                    return
            if await self.fleet.claim_command(claim) != self.instance_id:
                if not holding and not copy:
                    await self._watch_over(station, message, raw, claim)
                return
        except Exception as exc:
            # The store is away: the holder answers; any other replica cannot know
            # whether another one does, and one result is better than two.
            log.warning("%s: shared store unavailable for a command (%s)", station, exc)
            if not holding:
                return
        await self._run(station, message, raw, claim)

    async def _watch_over(self, station: str, message: Incoming, raw: bytes,
                          claim: bytes) -> None:
        """Another replica runs this command. If it stops before answering (kill -9),
        one of the others answers in its place: the charger may or may not have got the
        CALL, so the answer says the outcome is unknown rather than sending it again."""
        assert self.fleet is not None
        s = self.settings
        give_up = time.monotonic() + self._linger_seconds() + s.ocpp_response_timeout + 60
        while time.monotonic() < give_up:
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                mine = await self.fleet.orphaned(claim)
            except Exception:
                continue
            if mine is None:
                return
            if mine:
                doc = commands.result_document(
                    commands.peek_action(raw), "timeout", command_id=commands.peek_id(raw),
                    error="the gateway replica running this command stopped before the "
                          "charger's answer arrived; whether the charger executed it is "
                          "unknown")
                self._publish_result(station, message, doc)
                with contextlib.suppress(Exception):
                    await self.fleet.command_done(claim)
                return

    async def _run(self, station: str, message: Incoming, raw: bytes,
                   claim: bytes | None = None) -> None:
        try:
            doc = await self._execute(station, raw)
            if doc.get("status") == "not_connected" and self.shared_owner is not None:
                await self._held_elsewhere(station)
        except HandedOver as exc:
            # The station is on another replica now, which listens to this topic:
            # pass the command on instead of answering not_connected.
            log.info("%s: command handed over to replica %s", station, exc)
            copy = orjson.dumps({"handed_over": self.instance_id, "command": raw.decode()})
            copy_claim = hashlib.blake2b(copy, digest_size=16).digest()
            if self.fleet is not None:
                with contextlib.suppress(Exception):
                    await self.fleet.hand_over_command(copy_claim, str(exc), claim)
            self.publisher.publish(message.topic, copy, retain=False, qos=1)
            if self.fleet is not None:
                # Still ours until the new owner answers: if it stops first, we answer.
                await self._watch_over(station, message, raw, copy_claim)
            await self._done(claim)
            return
        except Exception as exc:  # a bug must still give the command its one result
            log.exception("%s: command failed inside the gateway", station or "?")
            doc = commands.result_document("?", "error", command_id=commands.peek_id(raw),
                                           error=f"internal error: {type(exc).__name__}")
        if message.retain:
            doc["retained_cleared"] = True
        self._publish_result(station, message, doc)
        await self._done(claim)

    async def _done(self, claim: bytes | None) -> None:
        if claim is not None and self.fleet is not None:
            with contextlib.suppress(Exception):
                await self.fleet.command_done(claim)

    async def _held_elsewhere(self, station: str) -> None:
        """Before answering not_connected: does the shared store know another replica that
        holds the station? Then it gets the command (HandedOver): this replica won the
        claim, so that one did not run it. The MQTT claims can arrive late under load;
        the database cannot."""
        assert self.shared_owner is not None
        try:
            owner = await self.shared_owner(station or self.server.last_station or "")
        except Exception:  # the store is away: answer as without one
            return
        if owner is not None and owner[0] != self.instance_id:
            raise HandedOver(owner[0])

    def _publish_result(self, station: str, message: Incoming, doc: dict[str, Any]) -> None:
        target = station or self.server.last_station or ""
        self.metrics.commands.labels(doc["status"]).inc()
        prefix = self.topics.prefix(target) if target else self.topics.base
        try:
            body = orjson.dumps(doc)
        except (TypeError, orjson.JSONEncodeError) as exc:
            log.error("%s: command result not serialisable (%s)", target or "?", exc)
            doc = commands.result_document(doc.get("action", "?"), "error",
                                           error="result not serialisable")
            body = orjson.dumps(doc)
        publish = self.publisher.publish
        publish(f"{prefix}/cmd_result", body, retain=False, essential=True)
        for subtopic, payload in commands.legacy_result_messages(doc):
            publish(f"{prefix}/{subtopic}", payload, retain=False, essential=True)
        if message.response_topic:
            publish(message.response_topic, body, retain=False,
                    correlation_data=message.correlation_data)
        log.info("%s: command %s → %s%s", target or "?", doc["action"], doc["status"],
                 f" ({doc['error']})" if doc.get("error") else "")

    def version_of(self, station: str) -> protocol.OcppVersion:
        """The station's OCPP version: its connection's, else the last one it spoke."""
        session = self.server.sessions.get(station)
        if session is not None:
            return session.version
        state = self.stations.states.get(station)
        name = state.values.get("ocpp_version") if state is not None else None
        return protocol.BY_NAME.get(str(name), protocol.V16)

    def register(self, action: str, handler: Handler) -> None:
        self.handlers[action] = handler

    def facts(self, station: str) -> commands.StationFacts:
        version = self.version_of(station)
        open_tx: dict[int, int | str] = {}
        if version is protocol.V16:
            for tx in self.store.open_transactions(station):
                open_tx[tx.connector_id] = tx.id  # later rows (newer) win
        else:
            for charger_tx in self.store.open_charger_transactions(station):
                open_tx[charger_tx.evse_id] = charger_tx.transaction_id
        return commands.StationFacts(open_tx, self.settings.default_id_tag, self.policy,
                                     now=utc_now(), version=version,
                                     request_id=next(self._request_ids))

    async def execute(self, station: str, raw: bytes, origin: str = "web") -> dict[str, Any]:
        """Run a command that did not come over MQTT (the web page): the same parsing,
        handlers and plans, its result returned instead of published."""
        try:
            doc = await self._execute(station, raw)
        except HandedOver as exc:
            doc = commands.result_document(
                "?", "not_connected", command_id=commands.peek_id(raw),
                error=f"{station} is connected to gateway replica {exc}: send the command "
                      "over MQTT or open that replica's page")
        self.metrics.commands.labels(doc["status"]).inc()
        log.info("%s: %s command %s → %s%s", station, origin, doc["action"], doc["status"],
                 f" ({doc['error']})" if doc.get("error") else "")
        return doc

    async def _execute(self, station: str, raw: bytes) -> dict[str, Any]:
        target = station or self.server.last_station or ""
        try:
            command_id, action, args = commands.parse(raw)
            handler = self.handlers.get(commands.normalise_action(action))
            if handler is not None:
                return await handler(target, command_id, args, raw)
        except commands.CommandError as exc:
            return commands.result_document(exc.action or "?", "error",
                                            command_id=exc.command_id, error=str(exc))
        return await self.run_plan(station, raw)

    async def run_plan(self, station: str, raw: bytes) -> dict[str, Any]:
        """A command the plain way: plan (commands/), call, the result document."""
        target = station or self.server.last_station or ""
        try:
            plan = commands.plan(raw, self.facts(target))
        except commands.CommandError as exc:
            return commands.result_document(exc.action or "?", "error",
                                            command_id=exc.command_id, error=str(exc))
        if plan.local:
            enabled = plan.local["charging_enabled"]
            self.authorizer.set_charging_enabled(target, enabled)
            self.emit(ev.ChargingEnabledChanged(target, utc_now(), enabled=enabled))
            return commands.result_document(plan, "ok", response={"chargingEnabled": enabled})
        assert plan.ocpp_action is not None
        try:
            response = await self.call_station(station, plan.ocpp_action, plan.payload,
                                               plan.version)
            if plan.respond is not None:
                response = plan.respond(response)
        except NotConnected as exc:
            return commands.result_document(plan, "not_connected", error=str(exc))
        except CallErrorReceived as exc:
            return commands.result_document(
                plan, "error", response={"errorCode": exc.code, "errorDescription":
                                         exc.description, "errorDetails": exc.details},
                error=f"charger answered CALLERROR {exc}",
            )
        except protocol.InvalidAnswer as exc:
            return commands.result_document(plan, "error", response=exc.raw, error=str(exc),
                                            raw=True)
        except asyncio.TimeoutError:
            return commands.result_document(
                plan, "timeout",
                error=f"no answer within {self.settings.ocpp_response_timeout:g} s",
            )
        return commands.result_document(plan, commands.result_status(response),
                                        response=response)

    async def call_station(self, station: str, action: str, payload: dict[str, Any],
                           version: protocol.OcppVersion | None = None) -> Any:
        """Send one CALL to a station, one at a time per station; the checked answer.

        `version`: the OCPP version the payload was made for; a station that came back
        speaking another one gets nothing (NotConnected says so).

        Waits for a momentarily disconnected station (OCPP_COMMAND_RETRY_*); raises
        NotConnected, HandedOver, CallErrorReceived, protocol.InvalidAnswer (an answer
        that does not match the action's response schema) or asyncio.TimeoutError.
        """
        target = station or self.server.last_station or ""
        lock = self._locks.setdefault(target, asyncio.Lock())
        async with lock:  # OCPP allows one outstanding CALL per direction
            session = await self._wait_for_session(station)
            if session is None:
                raise NotConnected(f"station {target or '?'} is not connected")
            if version is not None and session.version is not version:
                raise NotConnected(f"station {target or '?'} came back speaking OCPP "
                                   f"{session.version.name}; send the command again")
            try:
                answer = await session.call(action, payload,
                                            self.settings.ocpp_response_timeout)
            except ConnectionError as exc:
                raise NotConnected(str(exc)) from exc
        protocol.check_answer(action, answer, session.version,
                              self.settings.ocpp_lenient_schema)
        return answer

    async def _wait_for_session(self, station: str) -> Session | None:
        """The station's session, waiting up to the whole retry window for it to come back.

        OCPP_COMMAND_RETRY_ATTEMPTS waits of OCPP_COMMAND_RETRY_BASE_DELAY, doubling: the
        window is base × (2^attempts − 1). Other stations connecting do not shorten it.
        """
        s = self.settings
        loop = asyncio.get_running_loop()
        window = s.ocpp_command_retry_base_delay * (2 ** s.ocpp_command_retry_attempts - 1)
        deadline = loop.time() + window
        sessions = self.server.sessions
        while True:
            name = station or self.server.last_station
            if name and name in sessions and not sessions[name].taken_over:
                return sessions[name]
            owner = self.owner_of(name) if name else None
            if owner is not None:
                if self.shared_owner is None:
                    raise HandedOver(owner)
                # The MQTT claim may be old (the station has left that replica since):
                # hand over only to the replica the shared store says holds it.
                try:
                    holder = await self.shared_owner(name or "")
                except Exception:
                    raise HandedOver(owner) from None  # the store is away: trust the claim
                if holder is not None and holder[0] != self.instance_id:
                    raise HandedOver(holder[0])
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            await self.server.wait_changed(remaining)


def _unwrap(payload: bytes) -> tuple[bytes, bool]:
    """A handed-over copy → (the original command, True); anything else → (it, False)."""
    if not payload.startswith(b'{"handed_over"'):
        return payload, False
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload, False
    if isinstance(doc, dict) and set(doc) == {"handed_over", "command"} and isinstance(
            doc["command"], str):
        return doc["command"].encode(), True
    return payload, False
