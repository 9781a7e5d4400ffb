"""The OCPP WebSocket server: handshakes, and the registry of connected stations.

Handshakes go through `Admission` (station id, limits, authentication,
subprotocol). Each connection becomes a `Session`; a station that reconnects
replaces its old session. Other parts learn about sessions through the
`on_session_start` / `on_session_end` callbacks and `wait_for`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Coroutine, Sequence
from typing import Any
from urllib.parse import unquote

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from ocpp2mqtt import __version__
from ocpp2mqtt import events as ev
from ocpp2mqtt.clock import utc_now
from ocpp2mqtt.config import Settings
from ocpp2mqtt.ocpp import protocol, v16, v201
from ocpp2mqtt.ocpp.admission import Admission, Refusal
from ocpp2mqtt.ocpp.session import Session, SessionServices

log = logging.getLogger("ocpp2mqtt.gateway")
_NO_HEADERS = Headers()  # shared by every connection once its handshake is done

HANDLERS = {"1.6": v16.HANDLERS, "2.0.1": v201.HANDLERS_201, "2.1": v201.HANDLERS_21}


class OcppServer:
    def __init__(self, settings: Settings, services: SessionServices, admission: Admission,
                 gateway_id: str, spawn: Callable[[Coroutine[Any, Any, Any]], Any]):
        self.settings = settings
        self.services = services
        self.admission = admission
        self.gateway_id = gateway_id
        self.spawn = spawn
        self.sessions: dict[str, Session] = {}
        self.last_station: str | None = None  # MQTT_USESTATIONNAME=false: commands go here
        self.on_session_start: list[Callable[[Session], None]] = []
        self.on_session_end: list[Callable[[Session], None]] = []
        # (the station id asked for, ip, HTTP status, reason): a refused handshake
        self.on_refused: list[Callable[[str, str, int, str], None]] = []
        self._changed = asyncio.Condition()
        self._warned_subprotocol: set[str] = set()
        self._server: Server | None = None

    # --- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
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
            ssl=self._tls(),
            server_header=f"ocpp2mqtt/{__version__}",
            # After a power cut every charger reconnects at once: the default accept
            # backlog (100) drops SYNs and makes them retry seconds later.
            backlog=min(s.max_connections, 4096),
        )
        scheme = "wss" if s.ocpp_tls_cert_file else "ws"
        log.info("OCPP server listening on %s://%s:%s/<station-id>", scheme, s.listen_addr,
                 self.port)

    async def stop(self) -> None:
        """Stop accepting, close chargers (1001 going away: they reconnect)."""
        if self._server is None:
            return
        self._server.close(close_connections=False)
        for session in list(self.sessions.values()):
            await session.ws.close(1001, "central system shutting down")
        await self._server.wait_closed()

    def stop_accepting(self) -> None:
        """Close the listening socket; connected chargers stay."""
        if self._server is not None:
            self._server.close(close_connections=False)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    def _tls(self) -> ssl.SSLContext | None:
        s = self.settings
        if not s.ocpp_tls_cert_file:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # OCPP 1.6 security profile 2
        ctx.load_cert_chain(s.ocpp_tls_cert_file, s.ocpp_tls_key_file)
        return ctx

    # --- handshake ----------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        ip = connection.remote_address[0] if connection.remote_address else "unknown"
        station = self.admission.admit(request.path, request.headers, ip, self.sessions)
        if isinstance(station, Refusal):
            self.services.metrics.handshake_rejections.inc()
            log.warning("refused %s: %s", ip, station.reason)
            asked = unquote(request.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])
            for callback in self.on_refused:
                callback(asked, ip, int(station.status), station.reason)
            response = connection.respond(station.status, station.body)
            for name, value in station.headers.items():
                response.headers[name] = value
            return response
        connection.ocpp_station = station  # type: ignore[attr-defined]
        return None

    def _select_subprotocol(self, connection: ServerConnection,
                            offered: Sequence[Subprotocol]) -> Subprotocol | None:
        """The first of OCPP_VERSIONS the charger offers (decided anew on every connection:
        a charger may probe with 1.6 and come back with 2.0.1)."""
        for wanted in self.settings.ocpp_versions:
            if wanted in offered:
                return Subprotocol(wanted)
        return None

    # --- connections --------------------------------------------------------------------
    async def _handle_connection(self, ws: ServerConnection) -> None:
        station: str = ws.ocpp_station  # type: ignore[attr-defined]
        ip = ws.remote_address[0] if ws.remote_address else ""
        # websockets keeps the opening handshake's request and response for the life of
        # the connection; nothing reads their headers after the handshake, and they cost
        # 2–3 KiB per idle charger (bench: memory).
        for message in (ws.request, ws.response):
            if message is not None:
                message.headers = _NO_HEADERS
        if ws.subprotocol is None and station not in self._warned_subprotocol:
            # No subprotocol offered: OCPP 1.6, as real 1.6 firmware that omits it expects.
            self._warned_subprotocol.add(station)
            log.warning("%s connected without a subprotocol; treating it as OCPP 1.6 "
                        "(set OCPP_STRICT_SUBPROTOCOL=true to refuse)", station)
        old = self.sessions.get(station)
        version = protocol.VERSIONS.get(ws.subprotocol or "", protocol.V16)
        session = Session(self.services, version, HANDLERS[version.name], station, ws, ip)
        self.sessions[station] = session
        self.last_station = station
        if old is not None:
            log.info("%s reconnected; closing its previous connection", station)
            self.spawn(old.ws.close(1000, "replaced by a new connection"))
        log.info("%s connected from %s (OCPP %s)", station, ip, version.name)
        session.connected_at = utc_now(precise=True)
        try:
            if self.services.prepare is not None:
                # What other replicas wrote about the station, before anything here
                # (extensions, relay links, its first message) looks at it.
                await self.services.prepare(station)
            if self.sessions.get(station) is session:  # not replaced meanwhile
                for callback in self.on_session_start:
                    callback(session)
                self.services.emit(ev.Connected(
                    station, session.connected_at, ip=ip, subprotocol=ws.subprotocol,
                    ocpp_version=version.name, gateway=self.gateway_id))
                await self._notify()
                await session.run()
        finally:
            if self.sessions.get(station) is session:
                del self.sessions[station]
                if not session.taken_over:
                    log.info("%s disconnected (%s)", station, ws.close_code)
                    self.services.emit(ev.Disconnected(station, utc_now(),
                                                       reason=str(ws.close_code)))
                for callback in self.on_session_end:
                    callback(session)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def changed(self) -> None:
        """Something about sessions changed elsewhere (e.g. a replica took one over)."""
        self.spawn(self._notify())

    async def wait_changed(self, timeout: float) -> None:
        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass
