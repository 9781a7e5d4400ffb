"""HTTP health and metrics endpoints (issue 7).

A deliberately small HTTP/1.1 server on asyncio streams,
listening on HTTP_ADDR:HTTP_PORT when HTTP_ENABLED:

- `GET /healthz`  liveness: 200 while the event loop answers.
- `GET /readyz`   readiness: 200 when the MQTT broker is connected and the OCPP
                  server is listening, else 503 (the body says what is missing).
- `GET /metrics`  Prometheus text exposition format 0.0.4.

Anything else: 404 (unknown path) or 405 (method other than GET/HEAD). Every
response closes the connection. With HTTP_PORT=0 the kernel picks a port:
`bound_port(server)` tells which.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from ocpp2mqtt import __version__
from ocpp2mqtt.config import Settings
from ocpp2mqtt.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("ocpp2mqtt.health")

REQUEST_TIMEOUT = 5.0  # seconds a client gets to send its request head
MAX_HEAD = 8192  # bytes of request line + headers we accept

_STATUS_TEXT = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
_TEXT = "text/plain; charset=utf-8"


def bound_port(server: asyncio.AbstractServer) -> int:
    """The TCP port the health server listens on (useful with HTTP_PORT=0)."""
    sockets: Sequence[socket.socket] = getattr(server, "sockets", None) or ()
    return int(sockets[0].getsockname()[1])


# --- HTTP -------------------------------------------------------------------------------
def _response(status: int, body: str, content_type: str = _TEXT, head: bool = False,
              extra: str = "") -> bytes:
    data = body.encode()
    header = (
        f"HTTP/1.1 {status} {_STATUS_TEXT[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\n"
        "Cache-Control: no-store\r\n"
        f"Server: ocpp2mqtt/{__version__}\r\n"
        f"{extra}"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    return header if head else header + data


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


Readiness = Callable[[], tuple[bool, str]]  # → (ready, text saying what is missing)


def _route(ready: Readiness, metrics: Metrics, method: str, target: str) -> bytes:
    head = method == "HEAD"
    path = target.split("?", 1)[0]
    if path not in ("/healthz", "/readyz", "/metrics"):
        return _response(404, f"not found: {path[:100]}\n"
                         "endpoints: /healthz /readyz /metrics\n", head=head)
    if method not in ("GET", "HEAD"):
        return _response(405, "only GET and HEAD\n", head=head, extra="Allow: GET, HEAD\r\n")
    if path == "/healthz":
        return _response(200, "ok\n", head=head)
    if path == "/readyz":
        ok, text = ready()
        return _response(200 if ok else 503, text, head=head)
    return _response(200, metrics.render().decode(), CONTENT_TYPE, head=head)


def _handler(ready: Readiness, metrics: Metrics) -> Callable[
        [asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                raw = await asyncio.wait_for(_read_head(reader), REQUEST_TIMEOUT)
            except asyncio.TimeoutError:
                writer.write(_response(408, "request timeout\n"))
                return
            except asyncio.LimitOverrunError:
                writer.write(_response(431, "request head too large\n"))
                return
            except asyncio.IncompleteReadError:
                return  # client went away
            request_line = raw.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                writer.write(_response(400, "bad request\n"))
                return
            method, target, _ = parts
            writer.write(_route(ready, metrics, method, target))
        except Exception:
            log.exception("health endpoint failed")
        finally:
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return handle


async def start_http(s: Settings, ready: Readiness,
                     metrics: Metrics) -> asyncio.AbstractServer | None:
    """Start /healthz, /readyz, /metrics on HTTP_ADDR:HTTP_PORT; None when disabled."""
    if not s.http_enabled:
        return None
    server = await asyncio.start_server(
        _handler(ready, metrics), s.http_addr, s.http_port, limit=MAX_HEAD
    )
    log.info("health and metrics on http://%s:%s (/healthz /readyz /metrics)",
             s.http_addr, bound_port(server))
    return server


__all__ = ["bound_port", "start_http"]
