"""OCPP 1.6: the ten charger-initiated actions, answered and turned into typed events.

Each handler takes the session, the schema-checked payload (wire camelCase) and
the gateway's receive time, emits version-neutral events (events.py) and returns
the answer's payload. Transaction ids become strings here; readings become
numbers in published units (ocpp/meter.py).
"""

from __future__ import annotations

import logging
from typing import Any

from ocpp2mqtt import events as ev
from ocpp2mqtt.ocpp import meter
from ocpp2mqtt.ocpp.session import Handler, Session

log = logging.getLogger("ocpp2mqtt.session")

VERSION = "1.6"


def _authorize(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    status = s.tag_status(p["idTag"])
    s.services.emit(ev.Authorized(s.station, now, id_tag=p["idTag"], status=status))
    return {"idTagInfo": {"status": status}}


def _boot_notification(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    info = ev.BootInfo(
        vendor=p["chargePointVendor"], model=p["chargePointModel"],
        firmware_version=p.get("firmwareVersion"),
        charge_point_serial_number=p.get("chargePointSerialNumber"),
        charge_box_serial_number=p.get("chargeBoxSerialNumber"),
        meter_type=p.get("meterType"), meter_serial_number=p.get("meterSerialNumber"),
        iccid=p.get("iccid"), imsi=p.get("imsi"),
    )
    s.services.emit(ev.Booted(s.station, now, info=info))
    return {"status": "Accepted", "currentTime": now,
            "interval": s.services.settings.heartbeat_interval}


def _data_transfer(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    s.services.emit(ev.DataTransferred(s.station, now, vendor_id=p["vendorId"],
                                       message_id=p.get("messageId"), data=p.get("data")))
    return {"status": "Accepted"}


def _diagnostics_status(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    s.services.emit(ev.NotificationReceived(s.station, now, kind="diagnostics_status",
                                            status=p["status"]))
    return {}


def _firmware_status(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    s.services.emit(ev.NotificationReceived(s.station, now, kind="firmware_status",
                                            status=p["status"]))
    return {}


def _heartbeat(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    s.services.emit(ev.Heartbeat(s.station, now))
    return {"currentTime": now}


def _owns_transaction(s: Session, tx_id: int, action: str) -> bool:
    """False (logged, counted) for a transaction id another station was given."""
    owned = s.owned_transactions.get(tx_id)
    if owned is None:
        store = s.services.store
        # Unknown ids are the charger's own. A primary back office's id may equal one we
        # gave another station: the station's own transactions are asked first.
        owned = store.transaction(s.station, tx_id) is not None or \
            store.transaction_owner(tx_id) in (None, s.station)
        if len(s.owned_transactions) > 64:
            s.owned_transactions.clear()
        s.owned_transactions[tx_id] = owned
    if not owned:
        _foreign_transaction(s, tx_id, action)
    return owned


def _foreign_transaction(s: Session, tx_id: int, action: str) -> None:
    log.warning("%s: %s names transaction %s, which belongs to another station; "
                "ignoring the transaction id", s.station, action, tx_id)
    s.services.metrics.foreign_transactions.inc()


def _meter_values(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    tx_id = p.get("transactionId")
    if tx_id is not None and not _owns_transaction(s, tx_id, "MeterValues"):
        tx_id = None
    s.services.emit(ev.MeterReading(
        s.station, now, connector_id=p["connectorId"],
        transaction_id=None if tx_id is None else str(tx_id),
        samples=meter.samples(p["meterValue"]),
    ))
    return {}


def _start_transaction(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    services = s.services
    status = s.tag_status(p["idTag"])
    store = services.store
    tx_id = store.start_transaction(
        s.station, p["connectorId"], p["idTag"], p["meterStart"], p["timestamp"]
    )
    decision = s.decision
    if decision is not None:  # relayed: the id the primary back office gave, if it did
        if decision.transaction_id is not None:
            store.set_charger_id(s.station, tx_id, decision.transaction_id)
        tx = store.transaction_by_local_id(s.station, tx_id)
        if tx is not None:
            tx_id = tx.id
    services.emit(ev.TransactionStarted(
        s.station, now, connector_id=p["connectorId"], transaction_id=str(tx_id),
        id_tag=p["idTag"], meter_start=p["meterStart"], timestamp=p["timestamp"],
        accepted=status == "Accepted",
    ))
    return {"transactionId": tx_id, "idTagInfo": {"status": status}}


def _status_notification(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    s.services.emit(ev.StatusChanged(
        s.station, now, connector_id=p["connectorId"], status=p["status"],
        error_code=p["errorCode"], info=p.get("info"),
        vendor_error_code=p.get("vendorErrorCode"), vendor_id=p.get("vendorId"),
        timestamp=p.get("timestamp"),
    ))
    return {}


def _stop_transaction(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    services = s.services
    tx_id = p["transactionId"]
    reason = p.get("reason", "Local")
    tx = services.store.stop_transaction(s.station, tx_id, p["meterStop"], p["timestamp"],
                                         reason)
    reading_tx: str | None = str(tx_id)
    if tx is None:
        if services.store.transaction_owner(tx_id) is not None:
            # Answered as the spec asks, but nothing of the other station's changes.
            _foreign_transaction(s, tx_id, "StopTransaction")
            reading_tx = None
        else:
            log.warning("%s: StopTransaction for unknown transaction %s", s.station, tx_id)
    connector_id = tx.connector_id if tx else None
    if p.get("transactionData"):
        services.emit(ev.MeterReading(
            s.station, now, connector_id=connector_id or 0, transaction_id=reading_tx,
            samples=meter.samples(p["transactionData"]),
        ))
    services.emit(ev.TransactionStopped(
        s.station, now, transaction_id=str(tx_id), connector_id=connector_id,
        meter_start=tx.meter_start if tx else None, meter_stop=p["meterStop"],
        reason=reason, id_tag=p.get("idTag"), timestamp=p["timestamp"],
    ))
    if "idTag" in p:
        # StopTransaction.conf carries the tag's authorization, like Authorize.conf.
        return {"idTagInfo": {"status": s.tag_status(p["idTag"])}}
    return {}


HANDLERS: dict[str, Handler] = {
    "Authorize": _authorize,
    "BootNotification": _boot_notification,
    "DataTransfer": _data_transfer,
    "DiagnosticsStatusNotification": _diagnostics_status,
    "FirmwareStatusNotification": _firmware_status,
    "Heartbeat": _heartbeat,
    "MeterValues": _meter_values,
    "StartTransaction": _start_transaction,
    "StatusNotification": _status_notification,
    "StopTransaction": _stop_transaction,
}
