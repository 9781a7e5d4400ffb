"""HTTP health and metrics endpoints (issue 7).

A deliberately small HTTP/1.1 server on asyncio streams (no extra dependency),
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
import os
import sys
import time
from typing import TYPE_CHECKING

from ocpp2mqtt import __version__

if TYPE_CHECKING:
    from ocpp2mqtt.gateway import Gateway

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
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _process_start_time() -> float:
    """Unix time the process started (Linux: from /proc; elsewhere: import time)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat(5), counted after "(comm)"
        with open("/proc/stat", encoding="ascii") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return btime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


PROCESS_START = _process_start_time()


def bound_port(server: asyncio.AbstractServer) -> int:
    """The TCP port the health server listens on (useful with HTTP_PORT=0)."""
    sockets = getattr(server, "sockets", None) or ()
    return sockets[0].getsockname()[1]


def ocpp_listening(gateway: Gateway) -> bool:
    return gateway.listening


def readiness(gateway: Gateway) -> tuple[bool, str]:
    problems = []
    if not gateway.link.connected.is_set():
        problems.append("mqtt: not connected to the broker")
    if not ocpp_listening(gateway):
        problems.append("ocpp: server not listening")
    if problems:
        return False, "\n".join(problems) + "\n"
    return True, "ready\n"


# --- Prometheus text format -------------------------------------------------------
def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    return repr(float(value))


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: list[tuple[dict[str, str], float]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{label_text}}} {_number(value)}" if label_text
                              else f"{name} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _labelled(counters: dict[str, int], prefix: str, label: str) -> list[tuple[dict, float]]:
    return [({label: key[len(prefix):]}, value)
            for key, value in sorted(counters.items()) if key.startswith(prefix)]


def _resident_memory_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def render_metrics(gateway: Gateway, started: float) -> str:
    counters = dict(gateway.counters)
    link = gateway.link
    out = _Exposition()
    out.family("ocpp2mqtt_build_info", "gauge", "Version of ocpp2mqtt and Python.",
               [({"version": __version__, "python": sys.version.split()[0]}, 1)])
    out.family("ocpp2mqtt_uptime_seconds", "gauge", "Seconds since the gateway started.",
               [({}, round(time.monotonic() - started, 3))])
    out.family("ocpp2mqtt_ready", "gauge", "1 when /readyz answers 200.",
               [({}, 1 if readiness(gateway)[0] else 0)])
    out.family("ocpp2mqtt_connected_stations", "gauge",
               "Charge points connected over OCPP right now.",
               [({}, len(gateway.sessions))])
    out.family("ocpp2mqtt_ocpp_messages_received_total", "counter",
               "CALLs received from charge points and answered, by OCPP action.",
               _labelled(counters, "in:", "action"))
    out.family("ocpp2mqtt_ocpp_frame_errors_total", "counter",
               "Frames or CALLs from charge points answered with a CALLERROR, by error code.",
               _labelled(counters, "frame_error:", "code"))
    out.family("ocpp2mqtt_ocpp_handshake_rejections_total", "counter",
               "WebSocket handshakes refused (bad station id or subprotocol).",
               [({}, counters.get("handshake_rejected", 0))])
    out.family("ocpp2mqtt_commands_total", "counter",
               "MQTT commands executed, by result status.",
               _labelled(counters, "command:", "status"))
    out.family("ocpp2mqtt_mqtt_connected", "gauge", "1 while connected to the MQTT broker.",
               [({}, 1 if link.connected.is_set() else 0)])
    out.family("ocpp2mqtt_mqtt_queue_depth", "gauge",
               "MQTT messages queued or in flight, not yet acknowledged by the broker.",
               [({}, link.queue_depth())])
    out.family("ocpp2mqtt_mqtt_messages_published_total", "counter",
               "MQTT messages handed to the client for publishing.",
               [({}, link.published)])
    # Standard process metrics (names as in the Prometheus client libraries).
    usage = os.times()
    out.family("process_cpu_seconds_total", "counter",
               "Total user and system CPU time spent in seconds.",
               [({}, round(usage.user + usage.system, 3))])
    out.family("process_start_time_seconds", "gauge",
               "Start time of the process since unix epoch in seconds.",
               [({}, round(PROCESS_START, 3))])
    rss = _resident_memory_bytes()
    if rss is not None:
        out.family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
                   [({}, rss)])
    fds = _open_fds()
    if fds is not None:
        out.family("process_open_fds", "gauge", "Number of open file descriptors.",
                   [({}, fds)])
    return out.text()


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


def _route(gateway: Gateway, started: float, method: str, target: str) -> bytes:
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
        ready, text = readiness(gateway)
        return _response(200 if ready else 503, text, head=head)
    return _response(200, render_metrics(gateway, started), PROMETHEUS_CONTENT_TYPE, head=head)


def _handler(gateway: Gateway, started: float):
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
            writer.write(_route(gateway, started, method, target))
        except Exception:
            log.exception("health endpoint failed")
        finally:
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return handle


async def start_http(gateway: Gateway) -> asyncio.AbstractServer | None:
    """Start /healthz, /readyz, /metrics on HTTP_ADDR:HTTP_PORT; None when disabled."""
    s = gateway.settings
    if not s.http_enabled:
        return None
    started = time.monotonic()
    server = await asyncio.start_server(
        _handler(gateway, started), s.http_addr, s.http_port, limit=MAX_HEAD
    )
    log.info("health and metrics on http://%s:%s (/healthz /readyz /metrics)",
             s.http_addr, bound_port(server))
    return server


__all__ = ["bound_port", "readiness", "render_metrics", "start_http"]
