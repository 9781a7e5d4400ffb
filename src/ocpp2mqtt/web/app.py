"""The web page's routes on the gateway's aiohttp server (health.py).

    GET  /                                   the page (static/index.html)
    GET  /static/…                           its script, stylesheet, icon
    GET  /api/gateway                        version, uptime, MQTT link, settings (masked),
                                             groups, refused handshakes
    GET  /api/stations                       every known station as a table row
    GET  /api/stations/{id}                  one station: values, readings, transaction
    GET  /api/stations/{id}/log              its last OCPP frames and refused handshakes
    GET  /api/stations/{id}/configuration    the keys last read from the charger
    POST /api/stations/{id}/configuration/refresh   GetConfiguration, now
    POST /api/stations/{id}/configuration    {"key", "value"} → ChangeConfiguration/SetVariables
    POST /api/stations/{id}/command          any MQTT command document → its result
    GET  /api/sessions[.csv]                 sessions, summed per tag and month; CSV
    GET  /api/events[?station=id|gateway=1]  Server-Sent Events: rows, station, frames,
                                             configuration, gateway
    POST /login, /logout                     WEB_AUTH_TOKEN

Access: without WEB_AUTH_TOKEN anyone who reaches the port may look and act (the page
says so, as Zigbee2MQTT's frontend does). With it, every page, stream and action needs
the login cookie or `Authorization: Bearer <token>`. Every POST must carry the header
`X-Requested-With: ocpp2mqtt` and, if the browser sends one, a same-origin `Origin`: a
cross-site page can neither add the header (CORS preflight, which we never grant) nor
pass the origin check.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from ocpp2mqtt.config import Settings
from ocpp2mqtt.state import Stations
from ocpp2mqtt.store import SessionRow
from ocpp2mqtt.web import views
from ocpp2mqtt.web.live import LiveExtension, sse
from ocpp2mqtt.web.message_log import MessageLog

log = logging.getLogger("ocpp2mqtt.web")

STATIC = Path(__file__).parent / "static"
COOKIE = "ocpp2mqtt_session"
CSRF_HEADER = "X-Requested-With"
CSRF_VALUE = "ocpp2mqtt"
KEEPALIVE = 15.0  # seconds between SSE comments, so proxies keep the stream open
LOGIN_FAILURE_DELAY = 1.0  # seconds a wrong token waits: guessing stays slow
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "style-src 'self'; script-src 'self'; connect-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
# Open without login: the probes, the login itself, logging out (it only clears the
# cookie) and the page's static files (nothing in them is private).
LOCAL_SUFFIXES = (".local", ".lan", ".home.arpa", ".internal", ".localhost", ".home")
_OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/login", "/logout", "/static/")

Execute = Callable[[str, bytes], Awaitable[dict[str, Any]]]
# (station or None) → (latest sessions, how many in all, sums per month and tag)
SessionsPage = Callable[[str | None], Awaitable[tuple[list[SessionRow], int,
                                                      list[dict[str, Any]]]]]
AllSessions = Callable[[str | None], Awaitable[list[SessionRow]]]


@dataclass
class Sources:
    """What the page reads and does, handed over by the composition root."""

    settings: Settings
    stations: Stations
    sessions: SessionsPage  # off the event loop: a fleet's history is large
    all_sessions: AllSessions
    log: MessageLog
    live: LiveExtension
    execute: Execute  # (station, command JSON) → the result document, like MQTT's
    status: Callable[[], dict[str, Any]]  # the gateway: version, MQTT link, groups, …
    version: Callable[[str], str]  # the OCPP version a station speaks ("1.6", "2.0.1", …)


SESSION_DAYS = 30


def session_value(token: str, expires: int) -> str:
    """The cookie a login sets: its expiry, signed with the token (never the token)."""
    mac = hmac.new(token.encode(), f"ocpp2mqtt web session {expires}".encode(),
                   hashlib.sha256).hexdigest()
    return f"{expires}.{mac}"


def session_valid(token: str, cookie: str, now: float) -> bool:
    expires, _, _ = cookie.partition(".")
    if not expires.isdigit() or int(expires) < now:
        return False
    return hmac.compare_digest(cookie.encode(), session_value(token, int(expires)).encode())


def _plain_host(host: str) -> str:
    """`[::1]:8081` → `::1`, `gw.lan:8081` → `gw.lan`."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def local_name(host: str) -> bool:
    """A Host a DNS-rebinding attacker cannot make a browser send: an IP address,
    localhost, a name without a dot, or one under a local-only suffix."""
    name = _plain_host(host).lower().rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return "." not in name or name.endswith(LOCAL_SUFFIXES)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, default=str), status=status,
                        content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


class WebPage:
    def __init__(self, sources: Sources):
        self.src = sources
        self.token = sources.settings.web_auth_token
        self.allowed_hosts = {h.lower() for h in sources.settings.web_allowed_hosts}
        self.configurations = sources.live.configurations
        sources.live.gateway_document = self.gateway_document

    def install(self, app: web.Application) -> None:
        app.middlewares.append(self._guard)
        r = app.router
        r.add_get("/", self.index)
        r.add_static("/static/", STATIC, append_version=False)
        r.add_get("/login", self.login_page)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_get("/api/gateway", self.gateway)
        r.add_get("/api/stations", self.stations)
        r.add_get("/api/stations/{id}", self.station)
        r.add_get("/api/stations/{id}/log", self.message_log)
        r.add_get("/api/stations/{id}/configuration", self.get_configuration)
        r.add_post("/api/stations/{id}/configuration/refresh", self.refresh_configuration)
        r.add_post("/api/stations/{id}/configuration", self.change_configuration)
        r.add_post("/api/stations/{id}/command", self.command)
        r.add_get("/api/sessions", self.sessions)
        r.add_get("/api/sessions.csv", self.sessions_csv)
        r.add_get("/api/events", self.events)

    # --- access ------------------------------------------------------------------------
    def authorised(self, request: web.Request) -> bool:
        if not self.token:
            return True
        cookie = request.cookies.get(COOKIE, "")
        if cookie and session_valid(self.token, cookie, time.time()):
            return True
        header = request.headers.get("Authorization", "")
        return header.startswith("Bearer ") and hmac.compare_digest(
            header[7:].encode(), self.token.encode())

    def host_allowed(self, request: web.Request) -> bool:
        """Without a token, only names a rebinding attacker cannot use (or
        WEB_ALLOWED_HOSTS): a page on evil.example resolving to this gateway's address
        would otherwise be same-origin with it. With a token it has no cookie."""
        if self.token:
            return True
        host = request.headers.get("Host", "")
        return local_name(host) or _plain_host(host).lower() in self.allowed_hosts

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                     ) -> web.StreamResponse:
        path = request.path
        if path.startswith(("/healthz", "/readyz", "/metrics")):
            return await handler(request)
        if not self.host_allowed(request):
            return _error(403, f"this page was reached as {request.host[:100]!r}, a name "
                               "another site could point at this gateway: open it by its IP "
                               "address, add the name to WEB_ALLOWED_HOSTS, or set "
                               "WEB_AUTH_TOKEN")
        if path.startswith(_OPEN_PATHS):
            if request.method == "POST" and not self._same_site(request):
                return _error(403, "cross-site request refused")
            return await self._secured(handler, request)
        if not self.authorised(request):
            if path.startswith("/api/"):
                return _error(401, "log in first: WEB_AUTH_TOKEN is set")
            raise web.HTTPSeeOther("/login")
        if request.method not in ("GET", "HEAD") and not self._same_site(request, True):
            return _error(403, f"cross-site request refused: send the header "
                               f"{CSRF_HEADER}: {CSRF_VALUE} from the page's own origin")
        return await self._secured(handler, request)

    @staticmethod
    async def _secured(handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                       request: web.Request) -> web.StreamResponse:
        response = await handler(request)
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)
        return response

    @staticmethod
    def _same_site(request: web.Request, header: bool = False) -> bool:
        if header and request.headers.get(CSRF_HEADER) != CSRF_VALUE:
            return False
        if request.headers.get("Sec-Fetch-Site") not in (None, "same-origin", "none"):
            return False
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        # Behind a reverse proxy the page's origin is the proxy's host. A cross-site page
        # cannot set X-Forwarded-Host (a custom header needs a CORS preflight).
        hosts = {request.host, request.headers.get("X-Forwarded-Host", "")}
        return urlsplit(origin).netloc in hosts

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        if not self.token:
            raise web.HTTPSeeOther("/")
        page = (STATIC / "login.html").read_text()
        if request.query.get("failed"):
            page = page.replace("<!--error-->", '<p class="error" role="alert">That token is '
                                "not right. Try again.</p>")
        return web.Response(text=page, content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        given = str(form.get("token", ""))
        if not self.token or not hmac.compare_digest(given.encode(), self.token.encode()):
            log.warning("web: wrong token from %s", request.remote)
            await asyncio.sleep(LOGIN_FAILURE_DELAY)
            raise web.HTTPSeeOther("/login?failed=1")
        redirect = web.HTTPSeeOther("/")
        expires = int(time.time()) + SESSION_DAYS * 86400
        secure = request.secure or request.headers.get("X-Forwarded-Proto") == "https"
        redirect.set_cookie(COOKIE, session_value(self.token, expires), httponly=True,
                            samesite="Strict", max_age=SESSION_DAYS * 86400, path="/",
                            secure=secure)
        raise redirect

    async def logout(self, request: web.Request) -> web.StreamResponse:
        redirect = web.HTTPSeeOther("/login" if self.token else "/")
        redirect.del_cookie(COOKIE, path="/")
        raise redirect

    # --- pages ---------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    def gateway_document(self) -> dict[str, Any]:
        """The gateway view's live part (pushed every 2 s to a page showing it)."""
        doc = self.src.status()
        doc["open_access"] = not self.token
        doc["refusals"] = self.src.log.refusals_of()[:100]
        return doc

    async def gateway(self, request: web.Request) -> web.Response:
        doc = self.gateway_document()
        doc["settings"] = self.src.settings.redacted()
        return _json(doc)

    async def stations(self, request: web.Request) -> web.Response:
        states = self.src.stations.states
        return _json({"rows": [views.station_row(state) for state in states.values()]})

    def _state_or_404(self, request: web.Request) -> Any:
        station = request.match_info["id"]
        state = self.src.stations.states.get(station)
        if state is None:
            raise web.HTTPNotFound(text=f"unknown station {station!r}\n")
        return state

    async def station(self, request: web.Request) -> web.Response:
        state = self._state_or_404(request)
        return _json(views.station_detail(state))

    async def message_log(self, request: web.Request) -> web.Response:
        station = request.match_info["id"]
        return _json({"frames": self.src.log.frames(station),
                      "refusals": self.src.log.refusals_of(station),
                      "kept": self.src.settings.web_message_log_frames})

    # --- configuration -------------------------------------------------------------------
    async def get_configuration(self, request: web.Request) -> web.Response:
        return _json(self.configurations.document(request.match_info["id"]))

    async def refresh_configuration(self, request: web.Request) -> web.Response:
        """1.6: GetConfiguration answers with every key. 2.x: GetBaseReport is answered
        Accepted, and the keys follow in NotifyReport messages (pushed to the page)."""
        station = request.match_info["id"]
        reported = self.src.version(station) != "1.6"
        if reported:
            self.configurations.expect_report(station)  # the parts replace the old keys
        result = await self.src.execute(station, b'{"action": "get_configuration"}')
        response = result.get("response")
        if reported and result.get("status") != "ok":
            self.configurations.expect_report(station, False)  # keep what we had
        if not reported and result.get("status") == "ok" and isinstance(response, dict):
            # Results keep the original's snake_case (configuration_key, unknown_key).
            self.configurations.read(station, response.get("configuration_key") or [],
                                     response.get("unknown_key") or [])
        return _json({"result": result, "reported": reported,
                      "configuration": self.configurations.document(station)})

    async def change_configuration(self, request: web.Request) -> web.Response:
        station = request.match_info["id"]
        body = await self._body(request)
        key, value = body.get("key"), body.get("value")
        if not isinstance(key, str) or not key or not isinstance(value, str):
            return _error(400, 'send {"key": "<name>", "value": "<text>"}')
        command = orjson.dumps({"action": "change_configuration", "args": {
            "key": key, "value": value}})
        result = await self.src.execute(station, command)
        answer = (result.get("response") or {}).get("status")
        if answer in ("Accepted", "RebootRequired"):
            self.configurations.changed(station, key, value)
        return _json({"result": result})

    # --- actions ------------------------------------------------------------------------------
    async def command(self, request: web.Request) -> web.Response:
        station = request.match_info["id"]
        body = await request.read()
        return _json({"result": await self.src.execute(station, body)})

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise web.HTTPBadRequest(text=f"not JSON: {exc}\n") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="send a JSON object\n")
        return body

    # --- sessions -----------------------------------------------------------------------------
    async def sessions(self, request: web.Request) -> web.Response:
        station = request.query.get("station") or None
        rows, total, summary = await self.src.sessions(station)
        return _json({"sessions": [views.session_document(r) for r in rows],
                      "total": total, "summary": summary})

    async def sessions_csv(self, request: web.Request) -> web.Response:
        station = request.query.get("station") or None
        rows = await self.src.all_sessions(station)
        body = await asyncio.to_thread(views.sessions_csv, rows)
        name = f"sessions-{station}.csv" if station else "sessions.csv"
        return web.Response(text=body, content_type="text/csv", charset="utf-8", headers={
            "Content-Disposition": f'attachment; filename="{_safe_name(name)}"',
            "Cache-Control": "no-store"})

    # --- live -----------------------------------------------------------------------------------
    async def events(self, request: web.Request) -> web.StreamResponse:
        station = request.query.get("station") or None
        gateway = request.query.get("gateway") == "1"
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no", **SECURITY_HEADERS})
        await response.prepare(request)
        live = self.src.live
        page = live.open(station, time.time(), gateway)
        try:
            await response.write(sse("hello", {"station": station}))
            while True:
                try:
                    message = await asyncio.wait_for(page.queue.get(), KEEPALIVE)
                except asyncio.TimeoutError:
                    message = b": keepalive\n\n"
                if not message:
                    break  # the gateway is stopping
                await response.write(message)
        except ConnectionResetError:
            pass  # the page was closed
        finally:
            live.close(page)
        return response


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
