"""The gateway: OCPP server + sessions + MQTT link + extensions, wired together.

    async with Gateway(settings) as gw:
        await gw.serve_forever()
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from http import HTTPStatus
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from ocpp2mqtt import __version__, commands, protocol
from ocpp2mqtt import events as ev
from ocpp2mqtt.config import Settings
from ocpp2mqtt.extensions.boot_configuration import BootConfigurationExtension
from ocpp2mqtt.extensions.homeassistant import HomeAssistantExtension
from ocpp2mqtt.extensions.state import StateExtension
from ocpp2mqtt.extensions.state_document import StateDocumentExtension
from ocpp2mqtt.health import live_metrics, start_http
from ocpp2mqtt.mapping import station_prefix
from ocpp2mqtt.metrics import Metrics
from ocpp2mqtt.mqtt import Incoming, MqttLink
from ocpp2mqtt.security import check_basic_auth, load_passwords
from ocpp2mqtt.session import CallErrorReceived, Session, utc_now
from ocpp2mqtt.stations import InvalidStationId, check_station_id, station_id_from_path
from ocpp2mqtt.store import Store

log = logging.getLogger("ocpp2mqtt.gateway")


class NotConnected(Exception):
    """The station is not connected (and did not come back in time)."""


class HandedOver(Exception):
    """The station is connected to another gateway replica (its id is the message)."""


class Gateway:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = Store(settings.data_dir)
        client_id = settings.mqtt_client_id or f"ocpp2mqtt-{self.store.instance_id()}"
        base = settings.mqtt_basepath
        self.bridge_topic = f"{base}/bridge/state" if base else "bridge/state"
        self.link = MqttLink(settings, client_id, self.bridge_topic)
        self.sessions: dict[str, Session] = {}
        self.extensions: list[Any] = [
            StateExtension(self),
            StateDocumentExtension(self),
            BootConfigurationExtension(self),
        ]
        if settings.homeassistant_discovery:
            self.extensions.append(HomeAssistantExtension(self))
        self.http_server: asyncio.AbstractServer | None = None
        self.command_locks: dict[str, asyncio.Lock] = {}
        self.cmd_topics: dict[str, str] = {}  # command topic → station ("" = any)
        self.last_station: str | None = None
        self._owner_topic: str | None = None
        self._linger: dict[str, asyncio.TimerHandle] = {}
        self._session_changed = asyncio.Condition()
        self._warned_subprotocol: set[str] = set()
        self._server: Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.metrics = Metrics()
        self._shared_warned: set[str] = set()
        self.metrics.live(lambda: live_metrics(self))
        self.passwords = load_passwords(settings)
        self.instance_id = self.store.instance_id()
        self.started_at = utc_now(precise=True)
        self._taken_over: dict[str, str] = {}  # station → the replica that has it now
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

    # --- lifecycle -----------------------------------------------------------
    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        s = self.settings
        self.link.start(self._on_mqtt_message, self._on_mqtt_connected)
        for extension in self.extensions:
            for topic in getattr(extension, "subscriptions", list)():
                self.link.subscribe(topic)
        if not s.mqtt_usestationname:
            self._watch_commands("", f"{s.mqtt_basepath}/cmd" if s.mqtt_basepath else "cmd")
        else:
            # Which replica holds which station (see docs/scaling.md).
            self._owner_topic = self.prefix("+") + "/state/gateway"
            self.link.subscribe(self._owner_topic)
        now = utc_now()
        for station in s.expected_charge_points:
            try:
                check_station_id(station)
            except InvalidStationId as exc:
                log.error("EXPECTED_CHARGE_POINTS: %s: %s", station, exc)
                continue
            self.emit(ev.Disconnected(station, now, reason="not connected since start-up"))
            self._watch_station(station)
        self._server = await serve(
            self._handle_connection,
            s.listen_addr,
            s.listen_port,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            max_size=s.max_frame_size,
            compression=None,  # chargers rarely use it; zlib state costs ~100 KiB per socket
            ping_interval=s.ws_ping_interval or None,
            ping_timeout=s.ws_ping_timeout or None,
            # A vanished charger never completes the closing handshake: don't wait long.
            close_timeout=min(10.0, s.ws_ping_timeout or 10.0),
            ssl=self._server_tls(),
            server_header=f"ocpp2mqtt/{__version__}",
            # After a power cut every charger reconnects at once: the default accept
            # backlog (100) drops SYNs and makes them retry seconds later.
            backlog=min(s.max_connections, 4096),
        )
        scheme = "wss" if s.ocpp_tls_cert_file else "ws"
        log.info("OCPP server listening on %s://%s:%s/<station-id>", scheme, s.listen_addr,
                 self.port)
        self.http_server = await start_http(self)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def listening(self) -> bool:
        """The OCPP server accepts connections (readiness)."""
        return self._server is not None and self._server.is_serving()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def stop(self) -> None:
        """Stop accepting, close chargers (1001 going away), publish offline, flush."""
        if self._server is not None:
            self._server.close(close_connections=False)
        for session in list(self.sessions.values()):
            await session.ws.close(1001, "central system shutting down")
        if self._server is not None:
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        if self.http_server is not None:
            self.http_server.close()
        await self.link.stop()
        self.store.close()

    # --- events --------------------------------------------------------------
    def emit(self, event: ev.Event) -> None:
        for extension in self.extensions:
            extension.handle(event)

    def prefix(self, station: str) -> str:
        s = self.settings
        return station_prefix(s.mqtt_basepath, station, s.mqtt_usestationname)

    def metrics_frame_error(self, code: str) -> None:
        self.metrics.frame_errors.labels(code).inc()

    def metrics_message_in(self, action: str) -> None:
        self.metrics.message_received(action)

    # --- authorization ---------------------------------------------------------
    def charging_enabled(self, station: str) -> bool:
        return self.store.flag(station, "charging_enabled", "true") == "true"

    def authorize(self, station: str, id_tag: str) -> str:
        if not self.charging_enabled(station):
            return "Blocked"
        allowed = self.settings.authorized_tag_id_list
        if not allowed or id_tag in allowed:
            return "Accepted"
        return "Invalid"

    # --- OCPP handshake and connections -----------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        ip = connection.remote_address[0] if connection.remote_address else "unknown"
        try:
            station = station_id_from_path(request.path, ip, self.settings.station_id_fallback)
        except InvalidStationId as exc:
            self.metrics.handshake_rejections.inc()
            log.warning("refused handshake from %s for %.80r: %s", ip, request.path, exc)
            return connection.respond(HTTPStatus.BAD_REQUEST, f"{exc}\n")
        refusal = self._refuse(connection, request, station, ip)
        if refusal is not None:
            self.metrics.handshake_rejections.inc()
            return refusal
        offered = request.headers.get("Sec-WebSocket-Protocol")
        if offered is not None and protocol.SUBPROTOCOL not in [
            p.strip() for p in offered.split(",")
        ]:
            self.metrics.handshake_rejections.inc()
            log.warning("refused %s: offers only %s, we speak ocpp1.6", station, offered)
            return connection.respond(HTTPStatus.BAD_REQUEST, "only ocpp1.6 is supported\n")
        if offered is None and self.settings.ocpp_strict_subprotocol:
            self.metrics.handshake_rejections.inc()
            log.warning("refused %s: no Sec-WebSocket-Protocol (OCPP_STRICT_SUBPROTOCOL)", station)
            return connection.respond(HTTPStatus.BAD_REQUEST, "Sec-WebSocket-Protocol required\n")
        connection.ocpp_station = station  # type: ignore[attr-defined]
        return None

    def _refuse(
        self, connection: ServerConnection, request: Request, station: str, ip: str
    ) -> Response | None:
        """Connection limit, allow-list and HTTP Basic auth (OCPP security profile 1)."""
        if len(self.sessions) >= self.settings.max_connections and station not in self.sessions:
            log.warning("refused %s from %s: MAX_CONNECTIONS=%d reached", station, ip,
                        self.settings.max_connections)
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        passwords = self.passwords
        if self.settings.ocpp_allowlist_only and station not in passwords and (
            station not in self.settings.expected_charge_points
        ):
            log.warning("refused %s from %s: not a configured station (OCPP_ALLOWLIST_ONLY)",
                        station, ip)
            return connection.respond(HTTPStatus.FORBIDDEN, "unknown station\n")
        if passwords:
            problem = check_basic_auth(request.headers.get("Authorization"), station, passwords)
            if problem:
                log.warning("refused %s from %s: %s", station, ip, problem)
                response = connection.respond(HTTPStatus.UNAUTHORIZED, "authentication failed\n")
                response.headers["WWW-Authenticate"] = 'Basic realm="ocpp2mqtt"'
                return response
        return None

    def _server_tls(self) -> ssl.SSLContext | None:
        s = self.settings
        if not s.ocpp_tls_cert_file:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # OCPP 1.6 security profile 2
        ctx.load_cert_chain(s.ocpp_tls_cert_file, s.ocpp_tls_key_file)
        return ctx

    @staticmethod
    def _select_subprotocol(connection: ServerConnection, offered: Any) -> str | None:
        return protocol.SUBPROTOCOL if protocol.SUBPROTOCOL in offered else None

    async def _handle_connection(self, ws: ServerConnection) -> None:
        station: str = ws.ocpp_station  # type: ignore[attr-defined]
        ip = ws.remote_address[0] if ws.remote_address else ""
        if ws.subprotocol is None and station not in self._warned_subprotocol:
            self._warned_subprotocol.add(station)
            log.warning("%s connected without the ocpp1.6 subprotocol; treating it as OCPP 1.6 "
                        "(set OCPP_STRICT_SUBPROTOCOL=true to refuse)", station)
        old = self.sessions.get(station)
        session = Session(self, station, ws, ip)
        self.sessions[station] = session
        self.last_station = station
        if old is not None:
            log.info("%s reconnected; closing its previous connection", station)
            self.spawn(old.ws.close(1000, "replaced by a new connection"))
        log.info("%s connected from %s", station, ip)
        self._warn_shared_topics(station)
        self._taken_over.pop(station, None)
        # Subscribe before claiming the station: a replica that sees our claim may
        # hand a waiting command over by re-publishing it, and we must hear it.
        self._watch_station(station)
        session.connected_at = utc_now(precise=True)
        self.emit(ev.Connected(station, session.connected_at, ip=ip, subprotocol=ws.subprotocol,
                               gateway=self.instance_id))
        await self._notify_sessions()
        try:
            await session.run()
        finally:
            if self.sessions.get(station) is session:
                del self.sessions[station]
                if session.taken_over:
                    log.info("%s now connected to another gateway replica", station)
                    if station not in self.settings.expected_charge_points:
                        self._unwatch(station)
                else:
                    log.info("%s disconnected (%s)", station, ws.close_code)
                    self.emit(ev.Disconnected(station, utc_now(), reason=str(ws.close_code)))
                    self._schedule_unwatch(station)

    def shared_topic_stations(self) -> int:
        """Connected stations that publish on one shared prefix (MQTT_USESTATIONNAME=false)."""
        return 0 if self.settings.mqtt_usestationname else len(self.sessions)

    def _warn_shared_topics(self, station: str) -> None:
        # The original's default: every station on one prefix. Right for one charger;
        # with two, their values silently interleave on the same topics.
        if self.settings.mqtt_usestationname or station in self._shared_warned:
            return
        others = sorted(s for s in self.sessions if s != station)
        if not others:
            return
        self._shared_warned.add(station)
        log.warning(
            "%s connected while %s %s connected too: with MQTT_USESTATIONNAME=false every "
            "station publishes on the same topics under %r and their values mix. Set "
            "MQTT_USESTATIONNAME=true to give each station its own topics "
            "(<basepath>/<station-id>/...)",
            station, ", ".join(others[:5]), "is" if len(others) == 1 else "are",
            self.settings.mqtt_basepath)

    async def _notify_sessions(self) -> None:
        async with self._session_changed:
            self._session_changed.notify_all()

    def spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- command subscriptions ----------------------------------------------------
    def _watch_commands(self, station: str, topic: str) -> None:
        self.cmd_topics[topic] = station
        self.link.subscribe(topic)

    def _watch_station(self, station: str) -> None:
        handle = self._linger.pop(station, None)
        if handle:
            handle.cancel()
        if self.settings.mqtt_usestationname:
            self._watch_commands(station, f"{self.prefix(station)}/cmd")

    def _schedule_unwatch(self, station: str) -> None:
        # Keep listening while a command could still be waiting for a reconnect,
        # then let go so another gateway replica can own this station's commands.
        if station in self.settings.expected_charge_points or not self.settings.mqtt_usestationname:
            return
        s = self.settings
        linger = s.ocpp_command_retry_base_delay * (2 ** s.ocpp_command_retry_attempts) + 1
        loop = asyncio.get_running_loop()
        self._linger[station] = loop.call_later(linger, self._unwatch, station)

    def _unwatch(self, station: str) -> None:
        self._linger.pop(station, None)
        if station in self.sessions:
            return
        topic = f"{self.prefix(station)}/cmd"
        self.cmd_topics.pop(topic, None)
        self.link.unsubscribe(topic)

    # --- MQTT ------------------------------------------------------------------------
    def _on_mqtt_connected(self) -> None:
        for extension in self.extensions:
            extension.on_mqtt_connected()

    def _on_mqtt_message(self, msg: Incoming) -> None:
        if "/bridge/request/" in f"/{msg.topic}":
            if not msg.payload:
                return  # our own clearing of a retained request
            # Like commands: a retained request would run at every restart, and MQTT
            # 3.1.1 hides the retain flag of live messages, so always clear.
            self.link.publish(msg.topic, b"", retain=True, qos=1)
        for extension in self.extensions:
            hook = getattr(extension, "on_mqtt_message", None)
            if hook is not None and hook(msg.topic, msg.payload):
                return
        if self._owner_topic and msg.topic.endswith("/state/gateway"):
            self._on_owner_claim(msg)
            return
        station = self.cmd_topics.get(msg.topic)
        if station is None or not msg.payload:
            return  # not ours, or our own clearing of a retained command
        if station in self._taken_over and station not in self.sessions:
            return  # the replica that holds the station hears this command too
        # A retained command would run again at every restart: run it once and
        # clear it. MQTT 3.1.1 hides the retain flag of live messages, so we
        # clear after every command (an empty retained message is a no-op).
        self.link.publish(msg.topic, b"", retain=True, qos=1)
        self.spawn(self._run_command(station, msg))

    def _on_owner_claim(self, msg: Incoming) -> None:
        """Another replica claimed a station: let go of it without a word."""
        try:
            claim = orjson.loads(msg.payload)
            owner, since = str(claim["id"]), str(claim["since"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        base = self.prefix("")
        station = msg.topic[len(base):-len("/state/gateway")] if base else msg.topic.split("/")[0]
        session = self.sessions.get(station)
        if owner == self.instance_id:
            if msg.retain and session is None and since < self.started_at:
                # Our previous run held this station and died without saying goodbye
                # (kill -9, power cut): its retained CONNECTED is stale.
                self.emit(ev.Disconnected(station, utc_now(), reason="gateway restarted"))
            return
        # A retained claim may be older than our own connection (e.g. replayed after
        # a broker restart); a live one is always news.
        if session is not None and (not msg.retain or since > session.connected_at):
            log.info("%s was claimed by replica %s; closing our stale connection", station, owner)
            session.taken_over = True
            self.spawn(session.ws.close(1001, "connected to another central system replica"))
        if session is None or session.taken_over:
            self._taken_over[station] = owner
            if station in self._linger:
                self._linger.pop(station).cancel()
                self._unwatch(station)
            self.spawn(self._notify_sessions())

    async def _run_command(self, station: str, msg: Incoming) -> None:
        try:
            doc = await self._execute(station, msg.payload)
        except HandedOver as exc:
            # The station is on another replica now, which listens to this topic:
            # pass the command on instead of answering not_connected.
            log.info("%s: command handed over to replica %s", station, exc)
            self.link.publish(msg.topic, msg.payload, retain=False, qos=1)
            return
        except Exception as exc:  # a bug must still give the command its one result
            log.exception("%s: command failed inside the gateway", station or "?")
            doc = commands.result_document("?", "error", command_id=commands.peek_id(msg.payload),
                                           error=f"internal error: {type(exc).__name__}")
        if msg.retain:
            doc["retained_cleared"] = True
        target = station or self.last_station or ""
        self.metrics.commands.labels(doc["status"]).inc()
        prefix = self.prefix(target) if target else self.settings.mqtt_basepath
        try:
            body = orjson.dumps(doc)
        except (TypeError, orjson.JSONEncodeError) as exc:
            log.error("%s: command result not serialisable (%s)", target or "?", exc)
            doc = commands.result_document(doc.get("action", "?"), "error",
                                           command_id=None, error="result not serialisable")
            body = orjson.dumps(doc)
        self.link.publish(f"{prefix}/cmd_result", body, retain=False)
        for subtopic, payload in commands.legacy_result_messages(doc):
            self.link.publish(f"{prefix}/{subtopic}", payload, retain=False)
        if msg.response_topic:
            self.link.publish(msg.response_topic, body, retain=False,
                              correlation_data=msg.correlation_data)
        log.info("%s: command %s → %s%s", target or "?", doc["action"], doc["status"],
                 f" ({doc['error']})" if doc.get("error") else "")

    def _facts(self, station: str) -> commands.StationFacts:
        open_tx = {}
        for tx in self.store.open_transactions(station):
            open_tx[tx.connector_id] = tx.id  # later rows (newer) win
        return commands.StationFacts(open_tx, self.settings.default_id_tag, self.policy,
                                     now=utc_now())

    async def _execute(self, station: str, raw: bytes) -> dict:
        target = station or self.last_station or ""
        try:
            plan = commands.plan(raw, self._facts(target))
        except commands.CommandError as exc:
            return commands.result_document(
                getattr(exc, "action", None) or "?", "error",
                command_id=getattr(exc, "command_id", None), error=str(exc),
            )
        if plan.local:
            enabled = plan.local["charging_enabled"]
            self.store.set_flag(target, "charging_enabled", "true" if enabled else "false")
            self.emit(ev.ChargingEnabledChanged(target, utc_now(), enabled=enabled))
            return commands.result_document(plan, "ok", response={"chargingEnabled": enabled})
        try:
            response = await self.call_station(station, plan.ocpp_action, plan.payload)
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
        return commands.result_document(plan, commands.result_status(response), response=response)

    async def call_station(self, station: str, action: str, payload: dict) -> Any:
        """Send one CALL to a station, one at a time per station.

        Waits for a momentarily disconnected station (OCPP_COMMAND_RETRY_*);
        raises NotConnected, CallErrorReceived, protocol.InvalidAnswer (an answer that
        does not match the action's response schema) or asyncio.TimeoutError.
        """
        target = station or self.last_station or ""
        lock = self.command_locks.setdefault(target, asyncio.Lock())
        async with lock:  # OCPP allows one outstanding CALL per direction
            session = await self._wait_for_session(station)
            if session is None:
                raise NotConnected(f"station {target or '?'} is not connected")
            try:
                answer = await session.call(action, payload,
                                            self.settings.ocpp_response_timeout)
            except ConnectionError as exc:
                raise NotConnected(str(exc)) from exc
        protocol.check_answer(action, answer, self.settings.ocpp_lenient_schema)
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
        while True:
            name = station or self.last_station
            if name and name in self.sessions and not self.sessions[name].taken_over:
                return self.sessions[name]
            if name and name in self._taken_over:
                raise HandedOver(self._taken_over[name])
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                async with self._session_changed:
                    await asyncio.wait_for(self._session_changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

