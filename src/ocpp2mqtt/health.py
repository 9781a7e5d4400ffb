"""The gateway's HTTP server (aiohttp, on the gateway's event loop): health, metrics and,
when WEB_ENABLED, the web page (web/).

Listening on HTTP_ADDR:HTTP_PORT when HTTP_ENABLED:

- `GET /healthz`  liveness: 200 while the event loop answers.
- `GET /readyz`   readiness: 200 when the MQTT broker is connected and the OCPP
                  server is listening, else 503 (the body says what is missing).
- `GET /metrics`  Prometheus text exposition format 0.0.4.

The probes stay open even when WEB_AUTH_TOKEN guards the page: Kubernetes and
Prometheus cannot log in, and they show nothing a charger owner must hide. With
HTTP_PORT=0 the kernel picks a port: `bound_port(server)` tells which.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web

from ocpp2mqtt import __version__
from ocpp2mqtt.config import Settings
from ocpp2mqtt.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("ocpp2mqtt.health")

MAX_HEAD = 8190  # bytes of one request line or header we accept (aiohttp's default)

SERVER = f"ocpp2mqtt/{__version__}"
Readiness = Callable[[], tuple[bool, str]]  # → (ready, text saying what is missing)
_NO_STORE = {"Cache-Control": "no-store"}


class HttpServer:
    """The running server: its port, and `close()`."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket):
        self._runner = runner
        self.port = int(sock.getsockname()[1])

    async def close(self) -> None:
        await self._runner.cleanup()


def bound_port(server: HttpServer) -> int:
    """The TCP port the HTTP server listens on (useful with HTTP_PORT=0)."""
    return server.port


def health_routes(app: web.Application, ready: Readiness, metrics: Metrics) -> None:
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n", headers=_NO_STORE)

    async def readyz(request: web.Request) -> web.Response:
        ok, text = ready()
        return web.Response(status=200 if ok else 503, text=text, headers=_NO_STORE)

    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={
            **_NO_STORE, "Content-Type": CONTENT_TYPE})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)


def _answers(endpoints: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware: our Server header, and a 404 that lists what there is."""

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                         ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPNotFound as exc:
            if exc.text != "404: Not Found":
                raise  # a handler's own message
            raise web.HTTPNotFound(text=f"not found: {request.path[:100]}\n"
                                   f"endpoints: {endpoints}\n",
                                   headers={"Server": SERVER}) from None
        except web.HTTPException as exc:
            exc.headers["Server"] = SERVER
            raise
        if not response.prepared:
            response.headers["Server"] = SERVER
        return response

    return middleware


async def start_http(s: Settings, ready: Readiness, metrics: Metrics,
                     extend: Callable[[web.Application], None] | None = None,
                     ) -> HttpServer | None:
    """Serve /healthz, /readyz, /metrics (and what `extend` adds: the web page) on
    HTTP_ADDR:HTTP_PORT; None when HTTP_ENABLED is false."""
    if not s.http_enabled:
        return None
    endpoints = ("/ " if extend is not None else "") + "/healthz /readyz /metrics"
    app = web.Application(middlewares=[_answers(endpoints)], client_max_size=64 * 1024,
                          handler_args={"max_field_size": MAX_HEAD,
                                        "max_line_size": MAX_HEAD})
    health_routes(app, ready, metrics)
    if extend is not None:
        extend(app)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0,
                           handle_signals=False)
    await runner.setup()
    # Our own sockets, so the port HTTP_PORT=0 got is known without aiohttp's internals;
    # one per address HTTP_ADDR names (both families for "" or a host name).
    sockets: list[socket.socket] = []
    try:
        for family, _, _, _, address in socket.getaddrinfo(
                s.http_addr or None, s.http_port, type=socket.SOCK_STREAM,
                flags=socket.AI_PASSIVE):
            port = sockets[0].getsockname()[1] if sockets else s.http_port
            sockets.append(socket.create_server((address[0], port), family=family,
                                                dualstack_ipv6=False))
    except OSError:
        for sock in sockets:
            sock.close()
        await runner.cleanup()
        raise
    for sock in sockets:
        await web.SockSite(runner, sock).start()
    server = HttpServer(runner, sockets[0])
    log.info("HTTP on http://%s:%s (/healthz /readyz /metrics%s)", s.http_addr, server.port,
             " and the web page /" if extend is not None else "")
    return server


__all__ = ["HttpServer", "bound_port", "health_routes", "start_http"]
