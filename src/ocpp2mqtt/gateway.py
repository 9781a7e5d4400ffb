"""The composition root: builds the gateway's parts and wires them together.

    async with Gateway(settings) as gw:
        await gw.serve_forever()

Nothing else imports this module (the CLI and the tests do). The parts and how
a reading and a command travel through them: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterator
from typing import Any

from ocpp2mqtt import __version__
from ocpp2mqtt import events as ev
from ocpp2mqtt.authorization import Authorizer
from ocpp2mqtt.charging.control import CurrentControl
from ocpp2mqtt.clock import utc_now
from ocpp2mqtt.command_runner import CommandRunner
from ocpp2mqtt.config import Settings
from ocpp2mqtt.events import Disconnected
from ocpp2mqtt.extensions import Extension, ExtensionHost, GatewayContext, RequestHandler
from ocpp2mqtt.extensions.boot_configuration import BootConfigurationExtension
from ocpp2mqtt.extensions.bridge import BridgeExtension
from ocpp2mqtt.extensions.homeassistant import HomeAssistantExtension
from ocpp2mqtt.extensions.load_balancing import LoadBalancingExtension
from ocpp2mqtt.extensions.relay_topics import RelayTopicsExtension
from ocpp2mqtt.extensions.state_document import StateDocumentExtension
from ocpp2mqtt.extensions.state_topics import StateTopicsExtension
from ocpp2mqtt.health import HttpServer, start_http
from ocpp2mqtt.metrics import Metrics
from ocpp2mqtt.mqtt.lean import LeanTransport
from ocpp2mqtt.mqtt.outbox import Outbox
from ocpp2mqtt.mqtt.publisher import DurablePublisher
from ocpp2mqtt.mqtt.router import TopicRouter
from ocpp2mqtt.mqtt.transport import Transport
from ocpp2mqtt.ocpp.admission import Admission
from ocpp2mqtt.ocpp.server import OcppServer
from ocpp2mqtt.ocpp.session import Durability, SessionServices
from ocpp2mqtt.ocpp.station_id import InvalidStationId, check_station_id
from ocpp2mqtt.relay.forwarding import Relay
from ocpp2mqtt.replicas import Replicas
from ocpp2mqtt.state import Stations
from ocpp2mqtt.store import SessionRow, Store, sessions, sessions_summary
from ocpp2mqtt.store.postgres import SharedStore, StoreUnavailable
from ocpp2mqtt.topics import Topics
from ocpp2mqtt.web.app import Sources, WebPage
from ocpp2mqtt.web.live import LiveExtension
from ocpp2mqtt.web.message_log import MessageLog

log = logging.getLogger("ocpp2mqtt.gateway")

SESSIONS_SHOWN = 500  # the web page's list; the CSV has every session


class BothDurable:
    """The session's answer waits for the MQTT outbox and the shared store."""

    def __init__(self, publisher: DurablePublisher, shared: SharedStore):
        self.publisher = publisher
        self.shared = shared

    @property
    def dirty(self) -> bool:
        return self.publisher.dirty or self.shared.dirty

    async def durable(self, who: object = None) -> None:
        if self.publisher.dirty:
            await self.publisher.durable(who)
        if self.shared.dirty:
            await self.shared.durable()


class Gateway:
    def __init__(self, settings: Settings, extensions: list[Extension] | None = None):
        """`extensions`: more extensions, run before the built-in ones."""
        s = self.settings = settings
        self.store = Store(s.data_dir, s.sqlite_path)
        self.instance_id = self.store.instance_id()
        self.shared = SharedStore(s.store_url, self.store, s.store_sync_timeout,
                                  self.instance_id) if s.shared_store else None
        self.started_at = utc_now(precise=True)
        self.metrics = Metrics()
        self.topics = Topics(s)
        self.mqtt: Transport = LeanTransport(
            s, s.mqtt_client_id or f"ocpp2mqtt-{self.instance_id}", self.topics.bridge_state)
        self.publisher = DurablePublisher(
            s, self.mqtt, Outbox(s.data_dir / "outbox.sqlite3", s.outbox_max_bytes))
        self.router = TopicRouter(self.mqtt, on_error=lambda name, exc:
                                  self.metrics.extension_errors.labels("mqtt_handler").inc())
        self.authorizer = Authorizer(s, self.store)
        self.stations = Stations(s.connector_topics)
        self._requests: dict[str, RequestHandler] = {}
        self.current = CurrentControl(self.store, self.metrics)
        web = s.web_enabled and s.http_enabled
        self.message_log = MessageLog(s.web_message_log_frames if web else 0,
                                      s.web_message_log_bytes)
        self.live = LiveExtension(self.message_log)
        extensions = [
            *(extensions or []),
            StateTopicsExtension(),
            StateDocumentExtension(),
            BootConfigurationExtension(),
            BridgeExtension(self._requests, self._answers_requests),
            RelayTopicsExtension(),
            self.current,
            LoadBalancingExtension(self.current, self.shared),
        ]
        if web:
            extensions.append(self.live)
        if s.homeassistant_discovery:
            extensions.append(HomeAssistantExtension())
        self.host = ExtensionHost(self.stations, extensions,
                                  lambda name: self.metrics.extension_errors.labels(name).inc())
        durability: Durability = self.publisher if self.shared is None else \
            BothDurable(self.publisher, self.shared)
        services = SessionServices(s, self.host.emit, self.authorizer, self.store,
                                   self.metrics, durability,
                                   frames=self.message_log if web else None,
                                   prepare=self.shared.load_station if self.shared else None)
        self.server = OcppServer(s, services, Admission(s), self.instance_id, self.spawn)
        self.commands = CommandRunner(s, self.topics, self.server, self.router, self.publisher,
                                      self.store, self.authorizer, self.host.emit, self.metrics,
                                      self.spawn, self.instance_id, self.stations)
        self.current.runner = self.commands
        self.current.register = self.commands.register
        self.current.emit = self.host.emit
        self.relay = services.relay = Relay(s, self.store, self.metrics, self.host.emit,
                                            self.commands.call_station, self.stations,
                                            self.spawn)
        self.replicas = Replicas(self.topics, self.router, self.server, self.host.emit,
                                 self.instance_id, self.started_at, self.commands.released,
                                 self.spawn)
        self.commands.owner_of = self.replicas.owner_of
        if self.shared is not None:
            self.shared.on_session_energy = lambda station, tx, energy: self.host.emit(
                ev.SessionEnergyLearned(station, utc_now(), transaction_id=str(tx),
                                        energy=energy))
            self.commands.shared_owner = self.shared.station_owner
            self.commands.fleet = self.shared
            self.shared.held = lambda: [station for station, session in
                                        self.server.sessions.items() if not session.taken_over]
            self.server.on_session_end.append(self._release_station)
        self.server.on_session_start += [self.replicas.session_started,
                                         self.commands.session_started,
                                         self.relay.session_started, self._warn_shared_topics]
        self.server.on_session_end += [self.commands.session_ended, self.relay.session_ended]
        if web:
            self.server.on_refused.append(self.message_log.refused)
        self.mqtt.on_connected = self._mqtt_connected
        self.mqtt.on_disconnected = self.publisher.disconnected
        self.metrics.live(self._live_metrics)
        self.http_server: HttpServer | None = None
        self.web = WebPage(Sources(
            settings=s, stations=self.stations, sessions=self.sessions,
            all_sessions=self.all_sessions, log=self.message_log,
            live=self.live, execute=self.commands.execute, status=self.status,
            version=lambda station: self.commands.version_of(station).name)) if web else None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._shared_warned: set[str] = set()

    # --- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        s = self.settings
        if self.shared is not None:
            await self.shared.start(wait=max(2 * s.store_sync_timeout, 5.0))
        self.publisher.start()
        self.mqtt.start()
        self.host.start(self._context)
        self.commands.start()
        self.replicas.start()
        self.relay.start()
        now = utc_now()
        for station in s.expected_charge_points:
            try:
                check_station_id(station)
            except InvalidStationId as exc:
                log.error("EXPECTED_CHARGE_POINTS: %s: %s", station, exc)
                continue
            self.host.emit(Disconnected(station, now, reason="not connected since start-up"))
        await self.server.start()
        self.http_server = await start_http(
            s, self.readiness, self.metrics,
            self.web.install if self.web is not None else None)
        if self.http_server is not None and self.web is not None:
            log.info("web page on http://%s:%d/ — %s", s.http_addr, self.http_server.port,
                     "login with WEB_AUTH_TOKEN" if s.web_auth_token else
                     "open to anyone who can reach this port (set WEB_AUTH_TOKEN to require "
                     "a login)")

    async def stop(self) -> None:
        """Stop accepting, close chargers (1001 going away), publish offline, flush."""
        await self.server.stop()
        await self.relay.stop()
        for task in list(self._tasks):
            task.cancel()
        if self.http_server is not None:
            self.live.end_pages()
            await self.http_server.close()
        await self.host.stop()
        await self.publisher.stop()
        if self.shared is not None:
            await self.shared.stop()
        self.store.close()

    async def serve_forever(self) -> None:
        await self.server.serve_forever()

    @property
    def port(self) -> int:
        """The OCPP server's port (useful with LISTEN_PORT=0)."""
        return self.server.port

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def extension(self, kind: type) -> Any:
        return self.host.extension(kind)

    # --- wiring ---------------------------------------------------------------------------
    def _context(self, name: str) -> GatewayContext:
        return GatewayContext(
            name=name, failed=self.host.failed, settings=self.settings, topics=self.topics,
            publish_fn=self.publisher.publish,
            publish_retained_fn=self.publisher.publish_retained,
            subscribe_fn=self.router.subscribe,
            call_fn=self.commands.call_station, stations_=self.stations, now_fn=utc_now,
            spawn_fn=self.spawn, requests=self._requests,
            connected_fn=self.mqtt.connected.is_set,
        )

    def _release_station(self, session: Any) -> None:
        if self.shared is not None and not session.taken_over:
            self.spawn(self.shared.release_station(session.station))

    def _mqtt_connected(self) -> None:
        self.publisher.connected()
        self.host.mqtt_connected()

    def readiness(self) -> tuple[bool, str]:
        problems = []
        if not self.mqtt.connected.is_set():
            problems.append("mqtt: not connected to the broker")
        if not self.server.listening:
            problems.append("ocpp: server not listening")
        store = self.shared.readiness() if self.shared is not None else None
        # A replica that never reached the shared store knows nothing of the others: not
        # ready. One that lost it keeps serving its chargers (and says so).
        if store is not None and self.shared is not None and not self.shared.ever_connected:
            problems.append(store)
        if problems:
            return False, "\n".join(problems) + "\n"
        return True, f"ready (degraded: {store})\n" if store else "ready\n"

    # --- session history (the web page) ----------------------------------------------------
    async def sessions(self, station: str | None) -> tuple[list[SessionRow], int,
                                                            list[dict[str, Any]]]:
        if self.shared is not None and self.shared.connected:
            with contextlib.suppress(StoreUnavailable, OSError, ImportError):
                rows = await self.shared.sessions(station, SESSIONS_SHOWN)
                return (rows, *await self.shared.sessions_summary(station))

        def read() -> tuple[list[SessionRow], int, list[dict[str, Any]]]:
            with contextlib.closing(self.store.session_reader()) as db:
                return (sessions(db, station, SESSIONS_SHOWN), *sessions_summary(db, station))

        return await asyncio.to_thread(read)

    async def all_sessions(self, station: str | None) -> list[SessionRow]:
        if self.shared is not None and self.shared.connected:
            with contextlib.suppress(StoreUnavailable, OSError, ImportError):
                return await self.shared.sessions(station, None)

        def read() -> list[SessionRow]:
            with contextlib.closing(self.store.session_reader()) as db:
                return sessions(db, station)

        return await asyncio.to_thread(read)

    def status(self) -> dict[str, Any]:
        """The gateway as the web page's gateway view shows it."""
        publisher = self.publisher
        ready, problems = self.readiness()
        balancing = self.host.extension(LoadBalancingExtension)
        return {
            "version": __version__, "instance": self.instance_id,
            "started_at": self.started_at, "uptime": round(self.metrics.uptime(), 1),
            "now": time.time(),
            "ready": ready, "readiness": problems.strip(),
            "mqtt": {"connected": self.mqtt.connected.is_set(),
                     "broker": f"{self.settings.mqtt_hostname}:{self.settings.mqtt_port}",
                     "queue_depth": publisher.queue_depth(),
                     "published": publisher.published,
                     "failures": publisher.publish_failures,
                     "dropped": publisher.outbox.dropped_messages},
            "stations": {"known": len(self.stations.states),
                         "connected": len(self.server.sessions)},
            "groups": balancing.documents(),
            "message_log_bytes": self.message_log.bytes,
        }

    def _live_metrics(self) -> Iterator[tuple[str, str, str, float]]:
        """The values /metrics reads at every scrape."""
        publisher = self.publisher
        yield ("gauge", "ocpp2mqtt_uptime_seconds", "Seconds since the gateway started.",
               round(self.metrics.uptime(), 3))
        yield ("gauge", "ocpp2mqtt_ready", "1 when /readyz answers 200.",
               1 if self.readiness()[0] else 0)
        yield ("gauge", "ocpp2mqtt_connected_stations",
               "Charge points connected over OCPP right now.", len(self.server.sessions))
        yield ("gauge", "ocpp2mqtt_mqtt_connected", "1 while connected to the MQTT broker.",
               1 if self.mqtt.connected.is_set() else 0)
        yield ("gauge", "ocpp2mqtt_mqtt_queue_depth",
               "MQTT messages queued or in flight, not yet acknowledged by the broker.",
               publisher.queue_depth())
        yield ("counter", "ocpp2mqtt_mqtt_messages_published",
               "MQTT messages handed to the client for publishing.", publisher.published)
        yield ("counter", "ocpp2mqtt_mqtt_publish_failures",
               "MQTT messages the client refused, or outbox writes that failed.",
               publisher.publish_failures)
        yield ("counter", "ocpp2mqtt_outbox_dropped_messages",
               "Non-essential messages dropped because the outbox was over OUTBOX_MAX_BYTES.",
               publisher.outbox.dropped_messages)
        if self.shared is not None:
            shared = self.shared
            yield ("gauge", "ocpp2mqtt_store_connected",
                   "1 while connected to the shared store (STORE_URL).",
                   1 if shared.connected else 0)
            yield ("gauge", "ocpp2mqtt_store_unreachable_seconds",
                   "Seconds since the shared store was lost (0 while connected).",
                   round(shared.unreachable_seconds(), 1))
            yield ("gauge", "ocpp2mqtt_store_journal_depth",
                   "Changes waiting to be copied to the shared store.",
                   self.store.journal_depth())
            yield ("counter", "ocpp2mqtt_store_copied",
                   "Changes copied to the shared store.", shared.copied)
            yield ("counter", "ocpp2mqtt_store_failures",
                   "Failed attempts to reach or write the shared store.", shared.failures)
        yield ("gauge", "ocpp2mqtt_shared_topic_stations",
               "Connected stations publishing on one shared set of topics "
               "(MQTT_USESTATIONNAME=false); more than 1 mixes their values.",
               self.shared_topic_stations())

    # --- MQTT_USESTATIONNAME=false with several stations ----------------------------------
    def _answers_requests(self) -> bool:
        """Of several replicas on one shared store, one answers bridge requests."""
        return self.shared is None or self.shared.leader

    def shared_topic_stations(self) -> int:
        """Connected stations that publish on one shared prefix (MQTT_USESTATIONNAME=false)."""
        return 0 if self.settings.mqtt_usestationname else len(self.server.sessions)

    def _warn_shared_topics(self, session: Any) -> None:
        # The original's default: every station on one prefix. Right for one charger;
        # with two, their values silently interleave on the same topics.
        station = session.station
        if self.settings.mqtt_usestationname or station in self._shared_warned:
            return
        others = sorted(s for s in self.server.sessions if s != station)
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
