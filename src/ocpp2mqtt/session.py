"""One connected charge point: answers its CALLs, sends ours, emits events.

A session never waits on MQTT: handlers are synchronous, publish through the
event stream (which only queues), and answer at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ocpp import exceptions as ocpp_errors
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from ocpp2mqtt import events as ev
from ocpp2mqtt import protocol

if TYPE_CHECKING:
    from ocpp2mqtt.gateway import Gateway

log = logging.getLogger("ocpp2mqtt.session")


def utc_now(precise: bool = False) -> str:
    spec = "microseconds" if precise else "seconds"
    return datetime.now(timezone.utc).isoformat(timespec=spec).replace("+00:00", "Z")


class CallErrorReceived(Exception):
    """The charger answered our CALL with a CALLERROR."""

    def __init__(self, code: str, description: str, details: Any):
        super().__init__(f"{code}: {description}" if description else code)
        self.code = code
        self.description = description
        self.details = details


class Session:
    _ids = itertools.count(1)

    def __init__(self, gateway: Gateway, station: str, ws: ServerConnection, ip: str):
        self.gateway = gateway
        self.station = station
        self.ws = ws
        self.ip = ip
        self.pending: dict[str, asyncio.Future] = {}
        self.connected_at = ""
        self.taken_over = False  # another gateway replica has this station now
        self._owned_transactions: dict[int, bool] = {}  # transaction id → this station's?
        self._handlers: dict[str, Callable[[dict, str], dict]] = {
            "Authorize": self._authorize,
            "BootNotification": self._boot_notification,
            "DataTransfer": self._data_transfer,
            "DiagnosticsStatusNotification": self._diagnostics_status,
            "FirmwareStatusNotification": self._firmware_status,
            "Heartbeat": self._heartbeat,
            "MeterValues": self._meter_values,
            "StartTransaction": self._start_transaction,
            "StatusNotification": self._status_notification,
            "StopTransaction": self._stop_transaction,
        }

    # --- receive loop ------------------------------------------------------
    async def run(self) -> None:
        ws = self.ws
        link = self.gateway.link
        debug = log.isEnabledFor(logging.DEBUG)
        loop = asyncio.get_running_loop()
        rate = self.gateway.settings.ocpp_rate_limit
        burst = float(self.gateway.settings.ocpp_rate_burst)
        tokens, last, throttled = burst, loop.time(), False
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
                            self.gateway.metrics.rate_limited.inc()
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
                reply = self.handle_frame(frame)
                if reply is not None:
                    if link.dirty:
                        # Answer only once what the charger reported is on disk.
                        await link.durable()
                    if debug:
                        log.debug("%s ← %s", self.station, reply[:2000])
                    await ws.send(reply)
        except ConnectionClosed:
            pass
        finally:
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("charger disconnected"))
            self.pending.clear()

    def handle_frame(self, frame: str) -> str | None:
        """Answer one text frame; returns the frame to send back (or None)."""
        try:
            msg = protocol.parse_frame(frame)
        except protocol.FrameError as exc:
            log.warning("%s: bad frame (%s): %.200s", self.station, exc.error.code, frame)
            self.gateway.metrics_frame_error(exc.error.code)
            return protocol.encode_error(exc.unique_id, exc.error)
        if isinstance(msg, protocol.Call):
            return self._answer(msg)
        fut = self.pending.pop(msg.unique_id, None)
        if fut is None or fut.done():
            log.warning("%s: answer to unknown call id %r ignored", self.station, msg.unique_id)
            return None
        if isinstance(msg, protocol.CallResult):
            fut.set_result(msg.payload)
        else:
            fut.set_exception(CallErrorReceived(msg.code, msg.description, msg.details))
        return None

    def _answer(self, call: protocol.Call) -> str:
        try:
            protocol.check_call(call, self.gateway.settings.ocpp_lenient_schema)
            payload = self._handlers[call.action](call.payload, utc_now())
        except ocpp_errors.OCPPError as exc:
            log.warning("%s: %s rejected with %s: %s", self.station, call.action, exc.code,
                        exc.details.get("cause", exc.description) if isinstance(exc.details, dict)
                        else exc.description)
            self.gateway.metrics_frame_error(exc.code)
            return protocol.encode_error(call.unique_id, exc)
        except Exception:
            log.exception("%s: internal error handling %s", self.station, call.action)
            return protocol.encode_error(call.unique_id, ocpp_errors.InternalError())
        self.gateway.metrics_message_in(call.action)
        return protocol.encode_result(call.unique_id, payload)

    # --- outgoing calls ----------------------------------------------------
    async def call(self, action: str, payload: dict, timeout: float) -> Any:
        """Send a CALL and wait for its answer (raises CallErrorReceived, TimeoutError)."""
        unique_id = f"{next(self._ids)}"
        fut = asyncio.get_running_loop().create_future()
        self.pending[unique_id] = fut
        try:
            frame = protocol.encode_call(unique_id, action, payload)
            log.debug("%s ← %s", self.station, frame)
            await self.ws.send(frame)
            return await asyncio.wait_for(fut, timeout)
        except ConnectionClosed as exc:
            raise ConnectionError("charger disconnected") from exc
        finally:
            self.pending.pop(unique_id, None)

    # --- handlers: charger → central system ---------------------------------
    def _emit(self, event: ev.Event) -> None:
        self.gateway.emit(event)

    def _authorize(self, p: dict, now: str) -> dict:
        status = self.gateway.authorize(self.station, p["idTag"])
        self._emit(ev.Authorized(self.station, now, id_tag=p["idTag"], status=status))
        return {"idTagInfo": {"status": status}}

    def _boot_notification(self, p: dict, now: str) -> dict:
        self._emit(ev.Booted(self.station, now, payload=p))
        return {
            "status": "Accepted",
            "currentTime": now,
            "interval": self.gateway.settings.heartbeat_interval,
        }

    def _data_transfer(self, p: dict, now: str) -> dict:
        self._emit(ev.DataTransferred(
            self.station, now, vendor_id=p["vendorId"], message_id=p.get("messageId"),
            data=p.get("data"),
        ))
        return {"status": "Accepted"}

    def _diagnostics_status(self, p: dict, now: str) -> dict:
        self._emit(ev.NotificationReceived(self.station, now, kind="diagnostics_status",
                                           status=p["status"]))
        return {}

    def _firmware_status(self, p: dict, now: str) -> dict:
        self._emit(ev.NotificationReceived(self.station, now, kind="firmware_status",
                                           status=p["status"]))
        return {}

    def _heartbeat(self, p: dict, now: str) -> dict:
        self._emit(ev.Heartbeat(self.station, now))
        return {"currentTime": now}

    def _meter_values(self, p: dict, now: str) -> dict:
        tx_id = p.get("transactionId")
        if tx_id is not None and not self._owns_transaction(tx_id, "MeterValues"):
            tx_id = None
        self._emit(ev.MeterReading(
            self.station, now, connector_id=p["connectorId"],
            transaction_id=tx_id, meter_value=p["meterValue"],
        ))
        return {}

    def _owns_transaction(self, tx_id: int, action: str) -> bool:
        """False (logged, counted) for a transaction id another station was given."""
        owned = self._owned_transactions.get(tx_id)
        if owned is None:
            owner = self.gateway.store.transaction_owner(tx_id)
            owned = owner is None or owner == self.station  # unknown ids are the charger's
            if len(self._owned_transactions) > 64:
                self._owned_transactions.clear()
            self._owned_transactions[tx_id] = owned
        if not owned:
            self._foreign_transaction(tx_id, action)
        return owned

    def _foreign_transaction(self, tx_id: int, action: str) -> None:
        log.warning("%s: %s names transaction %s, which belongs to another station; "
                    "ignoring the transaction id", self.station, action, tx_id)
        self.gateway.metrics.foreign_transactions.inc()

    def _start_transaction(self, p: dict, now: str) -> dict:
        status = self.gateway.authorize(self.station, p["idTag"])
        tx_id = self.gateway.store.start_transaction(
            self.station, p["connectorId"], p["idTag"], p["meterStart"], p["timestamp"]
        )
        self._emit(ev.TransactionStarted(
            self.station, now, connector_id=p["connectorId"], transaction_id=tx_id,
            id_tag=p["idTag"], meter_start=p["meterStart"], timestamp=p["timestamp"],
            accepted=status == "Accepted",
        ))
        return {"transactionId": tx_id, "idTagInfo": {"status": status}}

    def _status_notification(self, p: dict, now: str) -> dict:
        self._emit(ev.StatusChanged(
            self.station, now, connector_id=p["connectorId"], status=p["status"],
            error_code=p["errorCode"], info=p.get("info"),
            vendor_error_code=p.get("vendorErrorCode"), vendor_id=p.get("vendorId"),
            timestamp=p.get("timestamp"),
        ))
        return {}

    def _stop_transaction(self, p: dict, now: str) -> dict:
        tx_id = p["transactionId"]
        tx = self.gateway.store.stop_transaction(
            self.station, tx_id, p["meterStop"], p["timestamp"], p.get("reason", "Local")
        )
        reading_tx: int | None = tx_id
        if tx is None:
            if self.gateway.store.transaction_owner(tx_id) is not None:
                # Answered as the spec asks, but nothing of the other station's changes.
                self._foreign_transaction(tx_id, "StopTransaction")
                reading_tx = None
            else:
                log.warning("%s: StopTransaction for unknown transaction %s", self.station,
                            tx_id)
        connector_id = tx.connector_id if tx else None
        if p.get("transactionData"):
            self._emit(ev.MeterReading(
                self.station, now, connector_id=connector_id or 0, transaction_id=reading_tx,
                meter_value=p["transactionData"],
            ))
        self._emit(ev.TransactionStopped(
            self.station, now, transaction_id=tx_id, connector_id=connector_id,
            meter_start=tx.meter_start if tx else None, meter_stop=p["meterStop"],
            reason=p.get("reason", "Local"), id_tag=p.get("idTag"), timestamp=p["timestamp"],
        ))
        if "idTag" in p:
            # StopTransaction.conf carries the tag's authorization, like Authorize.conf.
            return {"idTagInfo": {"status": self.gateway.authorize(self.station, p["idTag"])}}
        return {}
