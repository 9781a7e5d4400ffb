"""One connected charge point: answers its CALLs, sends ours.

A session never waits on MQTT: handlers are synchronous, emit typed events
(which only update state and queue messages) and answer at once. The one await
before an answer is the outbox's group commit, so what the charger reported is
on disk before it hears back.

A relayed station (OCPP_UPSTREAMS) answers its CALLs in order in a task of their own:
each is first handed to the relay (queued for every back office, then up to
OCPP_UPSTREAM_TIMEOUT for the deciding ones' answers), while the receive loop goes on
taking the charger's answers to calls a back office or MQTT sent meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from ocpp2mqtt import events as ev
from ocpp2mqtt.authorization import Authorizer
from ocpp2mqtt.clock import utc_now
from ocpp2mqtt.config import Settings
from ocpp2mqtt.metrics import Metrics
from ocpp2mqtt.ocpp import protocol
from ocpp2mqtt.store import Store

log = logging.getLogger("ocpp2mqtt.session")


class CallErrorReceived(Exception):
    """The charger answered our CALL with a CALLERROR."""

    def __init__(self, code: str, description: str, details: Any):
        super().__init__(f"{code}: {description}" if description else code)
        self.code = code
        self.description = description
        self.details = details


class Durability(Protocol):
    """The outbox's group commit (mqtt/publisher.py)."""

    @property
    def dirty(self) -> bool: ...

    def durable(self, who: object = None) -> Awaitable[None]: ...


class Decision(Protocol):
    """What the back offices decided about one CALL (relay/policy.py `Decision`)."""

    @property
    def transaction_id(self) -> int | None: ...

    def tag_status(self, local: str) -> str: ...

    def merge(self, version: protocol.OcppVersion, action: str,
              local: dict[str, Any]) -> dict[str, Any]: ...


class Forwarder(Protocol):
    """The relay (relay/forwarding.py)."""

    def relays(self, station: str) -> bool: ...

    async def forward(self, session: Session, call: protocol.Call) -> Decision: ...


class FrameSink(Protocol):
    """Where every frame goes, both directions (web/message_log.py)."""

    def record(self, station: str, outgoing: bool, frame: str) -> None: ...


@dataclass(slots=True)
class SessionServices:
    """What the protocol edge needs of the rest of the gateway; one for all sessions."""

    settings: Settings
    emit: Callable[[ev.Event], None]
    authorizer: Authorizer
    store: Store
    metrics: Metrics
    durability: Durability
    relay: Forwarder | None = None
    frames: FrameSink | None = None
    # Before a station's first message is handled (shared store: read what other
    # replicas wrote about it).
    prepare: Callable[[str], Awaitable[None]] | None = None


RELAYED_BACKLOG = 64  # CALLs a relayed charger may send before we answered (OCPP-J: 1)


Handler = Callable[["Session", dict[str, Any], str], dict[str, Any]]


class Session:
    _ids = itertools.count(1)

    def __init__(self, services: SessionServices, version: protocol.OcppVersion,
                 handlers: dict[str, Handler], station: str, ws: ServerConnection, ip: str):
        self.services = services
        self.version = version
        self.handlers = handlers
        self.station = station
        self.ws = ws
        self.ip = ip
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self.connected_at = ""
        self.taken_over = False  # another gateway replica has this station now
        self.owned_transactions: dict[int, bool] = {}  # 1.6 transaction id → this station's?
        self.memory: Any = None  # what a version's handlers remember about the station
        self.decision: Decision | None = None  # the back offices', for the CALL in hand
        self._relayed: asyncio.Queue[protocol.Call] | None = None

    # --- receive loop ---------------------------------------------------------------
    async def run(self) -> None:
        ws = self.ws
        services = self.services
        durability = services.durability
        debug = log.isEnabledFor(logging.DEBUG)
        loop = asyncio.get_running_loop()
        rate = services.settings.ocpp_rate_limit
        burst = float(services.settings.ocpp_rate_burst)
        tokens, last, throttled = burst, loop.time(), False
        frames = services.frames
        station = self.station
        answering = None
        if services.relay is not None and services.relay.relays(self.station):
            self._relayed = asyncio.Queue()
            answering = asyncio.create_task(self._answer_relayed())
        try:
            async for frame in ws:
                if rate:
                    # Token bucket: a flooding charger is slowed down (TCP backpressure),
                    # every frame still gets its answer, other chargers are unaffected.
                    now = loop.time()
                    tokens = min(burst, tokens + (now - last) * rate)
                    last = now
                    if tokens < 1:
                        if not throttled:
                            throttled = True
                            log.warning("%s: over OCPP_RATE_LIMIT=%g msg/s; slowing it down",
                                        self.station, rate)
                            services.metrics.rate_limited.inc()
                        await asyncio.sleep((1 - tokens) / rate)
                        tokens, last = 1.0, loop.time()
                    else:
                        throttled = False
                    tokens -= 1
                if isinstance(frame, bytes):
                    # OCPP-J is text-only; a binary frame is a protocol error (RFC 6455 1003).
                    log.warning("%s: binary frame received; closing", self.station)
                    await ws.close(1003, "OCPP-J uses text frames only")
                    return
                if debug:
                    log.debug("%s → %s", self.station, frame[:2000])
                if frames is not None:
                    frames.record(station, False, frame)
                reply = self.handle_frame(frame)
                if reply is not None:
                    if durability.dirty:
                        # Answer only once what the charger reported is on disk.
                        await durability.durable(self)
                    if debug:
                        log.debug("%s ← %s", self.station, reply[:2000])
                    if frames is not None:
                        frames.record(station, True, reply)
                    await ws.send(reply)
        except ConnectionClosed:
            pass
        finally:
            if answering is not None:
                answering.cancel()
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("charger disconnected"))
            self.pending.clear()

    def handle_frame(self, frame: str) -> str | None:
        """Answer one text frame; returns the frame to send back (or None)."""
        try:
            msg = protocol.parse_frame(frame, self.version)
        except protocol.FrameError as exc:
            log.warning("%s: bad frame (%s): %.200s", self.station, exc.error.code, frame)
            self.services.metrics.frame_errors.labels(exc.error.code).inc()
            return protocol.encode_error(exc.unique_id, exc.error, self.version)
        if isinstance(msg, protocol.Call):
            if self._relayed is not None:
                if self._relayed.qsize() < RELAYED_BACKLOG:
                    self._relayed.put_nowait(msg)
                    return None
                return protocol.encode_error(msg.unique_id, self.version.error(
                    "GenericError", "too many CALLs without waiting for answers (OCPP-J "
                    "allows one at a time)"), self.version)
            reply = self._answer(msg)
            return None if msg.send else reply  # an OCPP 2.1 SEND is never answered
        if isinstance(msg, protocol.CallError) and msg.after_result:
            log.warning("%s: our answer to its call %r was refused: %s %s", self.station,
                        msg.unique_id, msg.code, msg.description)
            return None
        fut = self.pending.pop(msg.unique_id, None)
        if fut is None or fut.done():
            log.warning("%s: answer to unknown call id %r ignored", self.station, msg.unique_id)
            return None
        if isinstance(msg, protocol.CallResult):
            fut.set_result(msg.payload)
        else:
            fut.set_exception(CallErrorReceived(msg.code, msg.description, msg.details))
        return None

    def _answer(self, call: protocol.Call, decision: Decision | None = None,
                checked: bool = False) -> str:
        version = self.version
        try:
            if not checked:
                protocol.check_call(call, version, self.services.settings.ocpp_lenient_schema)
            self.decision = decision
            payload = self.handlers[call.action](self, call.payload, utc_now())
            if decision is not None:
                payload = decision.merge(version, call.action, payload)
        except protocol.CallErrorReply as exc:
            return self._refuse(call, exc)
        except Exception:
            log.exception("%s: internal error handling %s", self.station, call.action)
            return protocol.encode_error(call.unique_id, version.error(
                "InternalError", "the gateway failed; see its log"), version)
        finally:
            self.decision = None
        self.services.metrics.message_received(call.action)
        return protocol.encode_result(call.unique_id, payload)

    def _refuse(self, call: protocol.Call, exc: protocol.CallErrorReply) -> str:
        log.warning("%s: %s rejected with %s: %s", self.station, call.action, exc.code,
                    exc.details.get("cause", ""))
        self.services.metrics.frame_errors.labels(exc.code).inc()
        return protocol.encode_error(call.unique_id, exc, self.version)

    async def _answer_relayed(self) -> None:
        """Answer a relayed station's CALLs in order: each forwarded to the back offices
        (durably queued, and the deciding ones' answers awaited) before ours is made."""
        assert self._relayed is not None and self.services.relay is not None
        relay, durability = self.services.relay, self.services.durability
        while True:
            call = await self._relayed.get()
            try:
                reply = await self._relayed_reply(relay, call)
                if reply is None:
                    continue
                if durability.dirty:
                    await durability.durable(self)
                if self.services.frames is not None:
                    self.services.frames.record(self.station, True, reply)
                await self.ws.send(reply)
            except ConnectionClosed:
                return
            except Exception:
                # Like an exception in the receive loop: drop the connection, the charger
                # comes back and sends its message again.
                log.exception("%s: answering %s failed; closing the connection",
                              self.station, call.action)
                await self.ws.close(1011, "internal error")
                return

    async def _relayed_reply(self, relay: Forwarder, call: protocol.Call) -> str | None:
        try:
            protocol.check_call(call, self.version, self.services.settings.ocpp_lenient_schema)
        except protocol.CallErrorReply as exc:
            refusal = self._refuse(call, exc)
            return None if call.send else refusal
        decision: Decision | None
        try:
            decision = await relay.forward(self, call)
        except Exception:
            log.exception("%s: relaying %s failed; answering locally", self.station,
                          call.action)
            decision = None
        reply = self._answer(call, decision, checked=True)
        return None if call.send else reply

    def tag_status(self, id_tag: str) -> str:
        """Whether `id_tag` may charge here: AUTHORIZED_TAG_ID_LIST and charging_enabled,
        or the back office that decides the tag (relay) unless charging is disabled."""
        status = self.services.authorizer.status(self.station, id_tag)
        decision = self.decision
        return status if decision is None else decision.tag_status(status)

    # --- outgoing calls ----------------------------------------------------------
    async def call(self, action: str, payload: dict[str, Any], timeout: float) -> Any:
        """Send a CALL and wait for its answer (raises CallErrorReceived, TimeoutError)."""
        unique_id = f"{next(self._ids)}"
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[unique_id] = fut
        try:
            frame = protocol.encode_call(unique_id, action, payload)
            log.debug("%s ← %s", self.station, frame)
            if self.services.frames is not None:
                self.services.frames.record(self.station, True, frame)
            await self.ws.send(frame)
            return await asyncio.wait_for(fut, timeout)
        except ConnectionClosed as exc:
            raise ConnectionError("charger disconnected") from exc
        finally:
            self.pending.pop(unique_id, None)
