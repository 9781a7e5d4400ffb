"""One back office for one station: a WebSocket client that behaves like the charger.

The link connects with the charger's OCPP version, the station id it is told to
present (HTTP Basic auth as that id, if a password is set) and keeps the
connection with pings, reconnecting with jittered exponential backoff bounded by
OCPP_UPSTREAM_RECONNECT_MAX_DELAY.

What it sends comes from its durable queue (store.py `relay_queue`), oldest first,
one CALL at a time (OCPP-J), each with the gateway's own message id (the row's
seq, so a message sent again after a lost connection keeps its id). A row leaves
the queue only when the back office answered it — a CALLRESULT or a CALLERROR —
and, for a 1.6 StartTransaction, together with the transaction id it gave. A row
sent but never answered is sent again on the next connection: at least once,
exactly once whenever the answer arrived.

Until the back office accepted a BootNotification (persisted per link), only
BootNotifications go out: a Pending or Rejected one is sent again after the
interval the back office named, and everything else waits in the queue. A link
that never saw a boot sends the charger's last BootNotification first.

When the charger disconnects the link drains its queue, then closes: the back
office sees the charger go offline, as it would without the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from ocpp2mqtt import __version__
from ocpp2mqtt.config import Settings, UpstreamConfig
from ocpp2mqtt.metrics import Metrics
from ocpp2mqtt.ocpp import protocol
from ocpp2mqtt.relay import policy
from ocpp2mqtt.store import QueuedMessage, Store

log = logging.getLogger("ocpp2mqtt.relay")

MAX_ATTEMPTS = 3  # sends without an answer before a message outside a transaction is dropped
CALL_BACKLOG = 16  # a back office's CALLs waiting for the charger (OCPP-J allows one)
STABLE_AFTER = 10.0  # seconds a connection must last for the reconnect backoff to restart
WARN_EVERY = 60.0  # seconds between warnings about one unreachable back office
BOOT_FLAG = "relay.boot"  # station flag: the charger's last BootNotification (JSON)


class LinkHost(Protocol):
    """What a link needs of the relay (relay/forwarding.py)."""

    settings: Settings
    store: Store
    metrics: Metrics

    def changed(self, link: UpstreamLink) -> None: ...

    async def upstream_call(self, link: UpstreamLink, call: protocol.Call) -> str: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...


class _Unanswered(Exception):
    """The back office did not answer a CALL in time: the connection is presumed dead."""


class _Reconnect(Exception):
    """The next message is of another OCPP version than this connection speaks."""


@dataclass(slots=True)
class _InFlight:
    unique_id: str
    answer: asyncio.Future[Any]


class UpstreamLink:
    def __init__(self, host: LinkHost, station: str, config: UpstreamConfig):
        self.host = host
        self.station = station
        self.config = config
        self.name = config.name
        self.presented = config.station_id or station  # the id the back office sees
        self.url = policy.upstream_url(config.url, self.presented)
        store = host.store
        self.count = store.relay_count(station, self.name)  # messages waiting
        self.boot_status = store.flag(station, self._boot_key, "")  # its last answer to Boot
        self.version = protocol.V16  # spoken on the current (or last) connection
        self.charger_version: protocol.OcppVersion | None = None  # while the charger is here
        self.connected = False
        self.reachable = False  # connected, or connecting and not (yet) known to be down
        self.waiters: dict[int, asyncio.Future[dict[str, Any] | None]] = {}
        self._in_flight: _InFlight | None = None
        self._in_flight_seq = 0
        self._hold_until = 0.0  # loop time before which a refused Boot is not sent again
        self._wake = asyncio.Event()
        self._calls: asyncio.Queue[protocol.Call] = asyncio.Queue()  # per connection
        self._task: asyncio.Task[Any] | None = None
        self._last_warning = -WARN_EVERY

    @property
    def _boot_key(self) -> str:
        return f"relay.{self.name}.boot"

    @property
    def attached(self) -> bool:
        return self.charger_version is not None

    # --- lifecycle ----------------------------------------------------------------------
    def attach(self, version: protocol.OcppVersion) -> None:
        """The charger connected (speaking `version`): connect, and stay connected."""
        self.charger_version = version
        self._ensure_running()

    def detach(self) -> None:
        """The charger left: drain the queue, then close. With a shared store: finish
        the message on the wire, then close; the queue waits (in PostgreSQL) for the
        replica the charger connects to next, so that only one sends it."""
        self.charger_version = None
        self._wake.set()

    @property
    def _draining(self) -> bool:
        """Sending while the charger is away."""
        return self.count > 0 and not self.host.settings.shared_store

    def reload(self) -> None:
        """The queue and the last Boot answer may have changed in the store."""
        if self._in_flight is None:
            store = self.host.store
            self.count = store.relay_count(self.station, self.name)
            self.boot_status = store.flag(self.station, self._boot_key, "")
            self.host.changed(self)

    def resume(self) -> None:
        """Messages are waiting (e.g. after a restart): connect and drain them."""
        self._ensure_running()

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self.reachable = True  # until the first attempt fails
            self._task = self.host.spawn(self._run())
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    # --- the queue --------------------------------------------------------------------
    def enqueue(self, version: protocol.OcppVersion, action: str, payload: dict[str, Any],
                text: str, local_tx: int | None, transactional: bool) -> int | None:
        """Queue one charger message (durably); its seq, or None if it is not needed."""
        store, station, name = self.host.store, self.station, self.name
        keep = self._in_flight_seq  # the message on the wire is not ours to touch
        if action == "Authorize" and not self.reachable:
            return None  # a decision needed now; stale once the back office is back
        if action == "StartTransaction" and local_tx is not None and \
                store.relay_start_known(station, name, local_tx):
            return None  # the charger repeated it: the back office has (or gets) it once
        if self.count and self._superseded(action, payload, keep):
            return None
        if action == "BootNotification":  # only the newest boot is worth sending
            self.count -= store.relay_delete_action(station, name, action, keep)
        if self.count >= self.host.settings.ocpp_upstream_queue_limit:
            if store.relay_drop_oldest(station, name, keep):
                self.count -= 1
                self.host.metrics.upstream_messages.labels(name, "dropped").inc()
            else:
                log.warning("%s → %s: queue over OCPP_UPSTREAM_QUEUE_LIMIT with transaction "
                            "messages only; keeping them all", station, name)
        seq = store.relay_enqueue(station, name, version.name, action, text, local_tx,
                                  transactional, time.time())
        self.count += 1
        self.host.changed(self)
        self._wake.set()
        return seq

    def _superseded(self, action: str, payload: dict[str, Any], keep: int) -> bool:
        """Behind a backlog, a Heartbeat (one is waiting already) or a StatusNotification
        repeating the last one waiting for its connector adds nothing."""
        store = self.host.store
        if action == "Heartbeat":
            return bool(store.relay_last(self.station, self.name, action, keep))
        if action != "StatusNotification":
            return False
        key = policy.status_key(payload)
        for row in store.relay_last(self.station, self.name, action, keep):
            waiting = policy.status_key(orjson.loads(row.payload))
            if waiting[:2] == key[:2]:  # the same connector (1.6) / EVSE and connector (2.x)
                return waiting == key
        return False

    def can_answer(self, action: str) -> bool:
        """Worth waiting for: connected (or connecting, not known to be down), and not
        holding its queue for a Boot."""
        if not self.reachable:
            return False
        if self.boot_status == "Accepted":
            return True
        return action == "BootNotification" and \
            asyncio.get_running_loop().time() >= self._hold_until

    def waiter(self, seq: int) -> asyncio.Future[dict[str, Any] | None]:
        """The back office's answer to message `seq` (None: a CALLERROR, an invalid
        answer, or the connection was lost first)."""
        fut: asyncio.Future[dict[str, Any] | None] = \
            asyncio.get_running_loop().create_future()
        self.waiters[seq] = fut
        return fut

    def forget(self, seq: int) -> None:
        self.waiters.pop(seq, None)

    def _answered(self, seq: int, answer: dict[str, Any] | None) -> None:
        fut = self.waiters.pop(seq, None)
        if fut is not None and not fut.done():
            fut.set_result(answer)

    def _removed(self) -> None:
        self.count = max(0, self.count - 1)
        self.host.changed(self)

    # --- connection ---------------------------------------------------------------------
    def _version_to_speak(self) -> protocol.OcppVersion:
        head = self.host.store.relay_head(self.station, self.name)
        if head is not None:
            return protocol.BY_NAME.get(head.version, protocol.V16)
        return self.charger_version or self.version

    def _tls(self) -> ssl.SSLContext | None:
        if not self.url.startswith("wss://"):
            return None
        ctx = ssl.create_default_context(cafile=self.config.ca_file or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    async def _run(self) -> None:
        s = self.host.settings
        delay = 1.0
        while self.attached or self._draining:
            version = self._version_to_speak()
            headers = {}
            if self.config.password is not None:
                headers["Authorization"] = policy.basic_auth(
                    self.presented, self.config.password.get_secret_value())
            try:
                ws = await connect(
                    self.url, subprotocols=[Subprotocol(version.subprotocol)],
                    additional_headers=headers, ssl=self._tls(),
                    open_timeout=s.ocpp_upstream_timeout,
                    ping_interval=s.ws_ping_interval or None,
                    ping_timeout=s.ws_ping_timeout or None,
                    close_timeout=5, max_size=s.max_frame_size, compression=None,
                    user_agent_header=f"ocpp2mqtt/{__version__}",
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._warn("cannot connect to %s: %s", self.url, exc)
                self._set_connected(False)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, s.ocpp_upstream_reconnect_max_delay)
                continue
            self.version = version
            if ws.subprotocol != version.subprotocol:
                log.warning("%s → %s: the back office did not confirm subprotocol %s",
                            self.station, self.name, version.subprotocol)
            log.info("%s → %s: connected to %s (OCPP %s)", self.station, self.name, self.url,
                     version.name)
            self._set_connected(True)
            lost = False
            since = asyncio.get_running_loop().time()
            try:
                await self._serve(ws)
            except _Reconnect:
                pass
            except (ConnectionClosed, OSError, _Unanswered) as exc:
                lost = True
                self._warn("connection to %s lost: %s", self.url, exc)
            finally:
                self._set_connected(False)
                await ws.close()
            if lost:
                # A back office that accepts and drops us at once is not hammered: the
                # backoff restarts only after a connection that lasted.
                if asyncio.get_running_loop().time() - since >= STABLE_AFTER:
                    delay = 1.0
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, s.ocpp_upstream_reconnect_max_delay)
            else:
                delay = 1.0
        log.info("%s → %s: nothing to send and the charger is gone; closed", self.station,
                 self.name)

    def _warn(self, text: str, *args: Any) -> None:
        now = time.monotonic()
        level = logging.WARNING if now - self._last_warning >= WARN_EVERY else logging.DEBUG
        if level == logging.WARNING:
            self._last_warning = now
        log.log(level, f"%s → %s: {text}", self.station, self.name, *args)

    def _set_connected(self, connected: bool) -> None:
        changed = connected != self.connected
        self.connected = self.reachable = connected
        if not connected:
            for seq in list(self.waiters):
                self._answered(seq, None)  # nobody waits for an answer that cannot come now
            if self._in_flight is not None and not self._in_flight.answer.done():
                self._in_flight.answer.cancel()
        else:
            self._last_warning = -WARN_EVERY
        if changed:
            self.host.changed(self)

    async def _serve(self, ws: ClientConnection) -> None:
        """Send the queue, read answers and the back office's CALLs; returns when the
        charger is gone and the queue is empty."""
        self._calls = asyncio.Queue()  # CALLs of an earlier connection have no one to answer
        tasks = {asyncio.create_task(self._read(ws)), asyncio.create_task(self._pump(ws)),
                 asyncio.create_task(self._serve_calls(ws))}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()  # raises what ended the connection; None: drained

    # --- sending ------------------------------------------------------------------------
    def _next(self) -> QueuedMessage | None:
        store, station, name = self.host.store, self.station, self.name
        if self.boot_status != "Accepted":
            # Not (yet) accepted: a BootNotification first — the charger's, or its last one
            # for a back office that never saw it boot.
            row = store.relay_head(station, name, "BootNotification") or \
                self._queue_last_boot()
            if row is not None:
                return row
            self.boot_status = "Accepted"  # no boot known to send: send what there is
        return store.relay_head(station, name)

    def _queue_last_boot(self) -> QueuedMessage | None:
        raw = self.host.store.flag(self.station, BOOT_FLAG, "")
        if not raw:
            return None
        boot = orjson.loads(raw)
        version = protocol.BY_NAME.get(boot.get("version"), protocol.V16)
        self.enqueue(version, "BootNotification", boot["payload"],
                     orjson.dumps(boot["payload"]).decode(), None, False)
        return self.host.store.relay_head(self.station, self.name, "BootNotification")


    async def _pump(self, ws: ClientConnection) -> None:
        s = self.host.settings
        loop = asyncio.get_running_loop()
        while True:
            row = self._next() if self.attached or self._draining else None
            if row is None:
                if not self.attached:
                    return  # drained (or handed on), and the charger is gone
                if self.charger_version is not self.version:
                    raise _Reconnect  # the charger came back speaking another version
                self._wake.clear()
                await self._wake.wait()
                continue
            if row.version != self.version.name:
                raise _Reconnect
            if row.action == "Authorize" and time.time() - row.created > \
                    s.ocpp_upstream_timeout:
                self.host.store.relay_delete(row.seq)  # stale: the charger was answered
                self._removed()
                continue
            wait = self._hold_until - loop.time()
            if row.action == "BootNotification" and wait > 0:
                await asyncio.sleep(wait)
                continue
            await self._send(ws, row)

    def _rewrite(self, row: QueuedMessage) -> dict[str, Any]:
        """The message as this back office must see it: its own transaction id."""
        payload: dict[str, Any] = orjson.loads(row.payload)
        if row.local_tx is not None and "transactionId" in payload and \
                row.action in ("MeterValues", "StopTransaction"):
            mapped = self.host.store.relay_upstream_tx(self.station, self.name, row.local_tx)
            if mapped is not None:
                payload["transactionId"] = mapped
        return payload

    async def _send(self, ws: ClientConnection, row: QueuedMessage) -> None:
        s = self.host.settings
        unique_id = str(row.seq)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._in_flight = _InFlight(unique_id, fut)
        self._in_flight_seq = row.seq
        try:
            await ws.send(protocol.encode_call(unique_id, row.action, self._rewrite(row)))
            try:
                answer = await asyncio.wait_for(fut, s.ocpp_response_timeout)
            except asyncio.TimeoutError:
                self._unanswered(row)
                raise _Unanswered(f"no answer to {row.action} within "
                                  f"{s.ocpp_response_timeout:g} s") from None
            except asyncio.CancelledError:
                if fut.cancelled():  # the connection went away with the message unanswered
                    raise ConnectionError("connection lost before the answer") from None
                raise
        finally:
            self._in_flight = None
            self._in_flight_seq = 0
        self._settle(row, answer)

    def _unanswered(self, row: QueuedMessage) -> None:
        store = self.host.store
        store.relay_attempted(row.seq)
        if not row.transactional and row.attempts + 1 >= MAX_ATTEMPTS:
            log.warning("%s → %s: %s unanswered %d times; dropped", self.station, self.name,
                        row.action, MAX_ATTEMPTS)
            store.relay_delete(row.seq)
            self._removed()
            self.host.metrics.upstream_messages.labels(self.name, "dropped").inc()

    def _settle(self, row: QueuedMessage, answer: Any) -> None:
        """The back office answered `row`."""
        store, metrics = self.host.store, self.host.metrics
        if isinstance(answer, protocol.CallError):
            log.warning("%s → %s: %s answered with CALLERROR %s %s", self.station, self.name,
                        row.action, answer.code, answer.description)
            store.relay_delete(row.seq)
            self._removed()
            metrics.upstream_messages.labels(self.name, "error").inc()
            self._answered(row.seq, None)
            return
        try:
            protocol.check_answer(row.action, answer, self.version,
                                  self.host.settings.ocpp_lenient_schema)
        except protocol.InvalidAnswer as exc:
            log.warning("%s → %s: %s", self.station, self.name,
                        str(exc).replace("the charger's", "the back office's"))
            store.relay_delete(row.seq)
            self._removed()
            metrics.upstream_messages.labels(self.name, "invalid").inc()
            self._answered(row.seq, None)
            return
        metrics.upstream_messages.labels(self.name, "answered").inc()
        if row.action == "BootNotification":
            status = str(answer.get("status"))
            if status != self.boot_status:
                self.boot_status = status
                store.set_flag(self.station, self._boot_key, status)
            if status != "Accepted":
                interval = answer.get("interval") or 0
                retry = interval if interval > 0 else \
                    self.host.settings.ocpp_upstream_reconnect_max_delay
                self._hold_until = asyncio.get_running_loop().time() + retry
                log.info("%s → %s: BootNotification %s; sending it again in %g s",
                         self.station, self.name, status, retry)
                self._answered(row.seq, answer)
                return  # the row stays: it is the next thing sent
        upstream_tx = None
        if row.action == "StartTransaction" and self.version is protocol.V16:
            upstream_tx = answer.get("transactionId")
        store.relay_answered(row.seq, self.station, self.name, row.local_tx, upstream_tx)
        self._removed()
        self._answered(row.seq, answer)

    # --- receiving ----------------------------------------------------------------------
    async def _read(self, ws: ClientConnection) -> None:
        version = self.version
        async for frame in ws:
            if isinstance(frame, bytes):
                log.warning("%s → %s: binary frame ignored", self.station, self.name)
                continue
            try:
                msg = protocol.parse_frame(frame, version)
            except protocol.FrameError as exc:
                log.warning("%s → %s: bad frame (%s): %.200s", self.station, self.name,
                            exc.error.code, frame)
                if exc.unique_id:
                    await ws.send(protocol.encode_error(exc.unique_id, exc.error, version))
                continue
            if isinstance(msg, protocol.Call):
                if msg.send:
                    continue  # an OCPP 2.1 SEND is the charger's kind of message, never ours
                if self._calls.qsize() >= CALL_BACKLOG:
                    await ws.send(protocol.encode_error(msg.unique_id, version.error(
                        "GenericError", "too many CALLs without waiting for answers (OCPP-J "
                        "allows one at a time)"), version))
                else:
                    self._calls.put_nowait(msg)
                continue
            in_flight = self._in_flight
            if in_flight is None or msg.unique_id != in_flight.unique_id or \
                    in_flight.answer.done():
                log.info("%s → %s: answer to unknown call id %r ignored", self.station,
                         self.name, msg.unique_id)
                continue
            if isinstance(msg, protocol.CallResult):
                in_flight.answer.set_result(msg.payload)
            else:
                in_flight.answer.set_result(msg)
        raise ConnectionError(f"closed by the back office ({ws.close_code})")

    async def _serve_calls(self, ws: ClientConnection) -> None:
        """The back office's CALLs, one at a time, each answered in turn."""
        while True:
            call = await self._calls.get()
            reply = await self.host.upstream_call(self, call)
            await ws.send(reply)

