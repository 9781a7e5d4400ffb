"""A real back office for relay tests: the `ocpp` package's central-system side, served
with `websockets` on a free loopback port (ws, or wss with HTTP Basic auth).

It records every frame it receives, as sent on the wire, and answers the charger's
CALLs with the package's call_result classes: defaults below, or per action a dict,
a function of the (snake_case) payload, a delay, or a CALLERROR.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as OcppChargePoint
from ocpp.v16 import call_result
from ocpp.v201 import ChargePoint as OcppChargePoint201
from ocpp.v201 import call_result as call_result_201

CHARGER_ACTIONS_16 = ("Authorize", "BootNotification", "DataTransfer",
                      "DiagnosticsStatusNotification", "FirmwareStatusNotification",
                      "Heartbeat", "MeterValues", "StartTransaction", "StatusNotification",
                      "StopTransaction")
CHARGER_ACTIONS_201 = ("Authorize", "BootNotification", "Heartbeat", "StatusNotification",
                       "TransactionEvent", "MeterValues", "NotifyReport")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Frame:
    station: str
    kind: int  # 2 CALL, 3 CALLRESULT, 4 CALLERROR
    unique_id: str
    action: str | None
    payload: Any


class _Recording:
    """The connection as the `ocpp` package sees it, recording what arrives."""

    def __init__(self, ws: Any, office: BackOffice, station: str):
        self.ws = ws
        self.office = office
        self.station = station

    async def recv(self) -> str:
        text = await self.ws.recv()
        msg = json.loads(text)
        action = msg[2] if msg[0] == 2 else None
        payload = msg[3] if msg[0] == 2 else msg[2] if msg[0] == 3 else msg[2:]
        self.office.frames.append(Frame(self.station, msg[0], msg[1], action, payload))
        return text

    async def send(self, text: str) -> None:
        await self.ws.send(text)


def _handler(action: str, result: Any) -> Any:
    async def handle(self: Any, **payload: Any) -> Any:
        office: BackOffice = self.office
        delay = office.delays.get(action)
        if delay:
            await asyncio.sleep(delay)
        answer = office.answers.get(action)
        if answer == "error":
            from ocpp.exceptions import GenericError

            raise GenericError(description="back office refuses")
        if callable(answer):
            answer = answer(payload)
        if answer is None:
            answer = office.default(action, payload)
        return result(**answer)

    handle.__name__ = f"on_{action}"
    return on(action)(handle)


class CentralSystem16(OcppChargePoint):
    office: BackOffice


class CentralSystem201(OcppChargePoint201):
    office: BackOffice


for _action in CHARGER_ACTIONS_16:
    setattr(CentralSystem16, f"on_{_action}", _handler(_action, getattr(call_result, _action)))
for _action in CHARGER_ACTIONS_201:
    setattr(CentralSystem201, f"on_{_action}",
            _handler(_action, getattr(call_result_201, _action)))


@dataclass
class BackOffice:
    """One central system; `url` is what goes into OCPP_UPSTREAMS."""

    password: str | None = None  # require HTTP Basic auth (user = station id)
    cert: tuple[Path, Path] | None = None  # serve wss with this certificate and key
    first_tx: int = 5000  # transaction ids it gives count up from here
    port: int = 0
    answers: dict[str, Any] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    frames: list[Frame] = field(default_factory=list)
    systems: dict[str, Any] = field(default_factory=dict)  # station id → central system
    logins: list[str] = field(default_factory=list)  # Basic-auth users that got in
    refused: int = 0

    def __post_init__(self) -> None:
        self._tx = itertools.count(self.first_tx)
        self._server: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._placeholder: socket.socket | None = None

    def reserve(self) -> BackOffice:
        """Hold a port without listening: connections are refused (a back office that is
        down) and no other test's server can take the port meanwhile."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        self._placeholder = sock
        return self

    # --- answers ------------------------------------------------------------------------
    def default(self, action: str, p: dict[str, Any]) -> dict[str, Any]:
        if action == "StartTransaction":
            return {"transaction_id": next(self._tx), "id_tag_info": {"status": "Accepted"}}
        if action == "BootNotification":
            return {"current_time": _now(), "interval": 300, "status": "Accepted"}
        if action == "Heartbeat":
            return {"current_time": _now()}
        if action == "Authorize":
            if "id_token" in p:  # 2.0.1
                return {"id_token_info": {"status": "Accepted"}}
            return {"id_tag_info": {"status": "Accepted"}}
        if action == "DataTransfer":
            return {"status": "Accepted"}
        if action == "StopTransaction" and "id_tag" in p:
            return {"id_tag_info": {"status": "Accepted"}}
        return {}

    # --- serving ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{'wss' if self.cert else 'ws'}://127.0.0.1:{self.port}/ocpp"

    async def start(self) -> BackOffice:
        if self._placeholder is not None:
            self._placeholder.close()  # and bind the port again at once
            self._placeholder = None
        tls = None
        if self.cert:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.load_cert_chain(*self.cert)
        self._server = await websockets.serve(
            self._connection, "127.0.0.1", self.port,
            subprotocols=["ocpp1.6", "ocpp2.0.1"], process_request=self._check, ssl=tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def _check(self, connection: Any, request: Any) -> Any:
        if self.password is None:
            return None
        station = request.path.rstrip("/").rsplit("/", 1)[-1]
        expected = "Basic " + base64.b64encode(f"{station}:{self.password}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            self.refused += 1
            return connection.respond(HTTPStatus.UNAUTHORIZED, "wrong credentials\n")
        self.logins.append(station)
        return None

    async def _connection(self, ws: Any) -> None:
        station = ws.request.path.rstrip("/").rsplit("/", 1)[-1]
        cls = CentralSystem201 if ws.subprotocol == "ocpp2.0.1" else CentralSystem16
        system = cls(station, _Recording(ws, self, station), response_timeout=10)
        system.office = self
        self.systems[station] = system
        task = asyncio.ensure_future(system.start())
        self._tasks.add(task)
        with contextlib.suppress(websockets.ConnectionClosed, asyncio.CancelledError):
            await task
        self._tasks.discard(task)

    async def stop(self) -> None:
        """Go away: close the listening socket and every connection (an outage)."""
        if self._server is not None:
            self._server.close()
            for task in self._tasks:  # a handler sleeping in a delay would hold up the close
                task.cancel()
            await self._server.wait_closed()
            self._server = None
            self.reserve()  # down, but the port stays ours for start()
        self.systems.clear()

    def close(self) -> None:
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None

    # --- what arrived -------------------------------------------------------------------
    def calls(self, station: str | None = None) -> list[Frame]:
        return [f for f in self.frames if f.kind == 2 and station in (None, f.station)]

    def actions(self, station: str | None = None) -> list[str]:
        return [f.action or "" for f in self.calls(station)]

    async def wait_for(self, predicate: Callable[[BackOffice], bool], timeout: float = 10,
                       what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"back office never saw {what or predicate}; "
                                     f"it got {self.actions()}")
            await asyncio.sleep(0.01)

    async def wait_actions(self, *actions: str, station: str | None = None,
                           timeout: float = 10) -> list[Frame]:
        """Wait until these actions arrived (in this order, among others); their frames."""
        wanted = list(actions)

        def found(office: BackOffice) -> bool:
            it = iter(office.actions(station))
            return all(a in it for a in wanted)

        await self.wait_for(found, timeout, f"{wanted}")
        out, it = [], iter(self.calls(station))
        for action in wanted:
            out.append(next(f for f in it if f.action == action))
        return out

    async def wait_connected(self, station: str, timeout: float = 10) -> Any:
        await self.wait_for(lambda o: station in o.systems, timeout, f"{station} connect")
        return self.systems[station]
