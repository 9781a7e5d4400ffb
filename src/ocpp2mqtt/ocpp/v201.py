"""OCPP 2.0.1 and 2.1: every charger-initiated action answered, turned into the same typed
events as 1.6 — so a 2.0.1 charger has the topics a 1.6 charger has.

- EVSEs take the place of 1.6 connectors (`connector_id` is the evseId).
- `status` keeps the 1.6 vocabulary, derived from connectorStatus and the
  transaction's chargingState (`status_16`); the raw values are events too.
- TransactionEvent Started/Updated/Ended → TransactionStarted, MeterReading,
  TransactionStopped with the charger's string transaction id; meter start and stop
  come from the energy register readings. A TransactionEvent whose seqNo is not newer
  than one already applied to its transaction (an offline-queued event arriving
  late, or a repeat) is answered but does not move the state backwards.
- Certificate requests are answered Rejected/Failed (security profile 3 is not
  implemented); 2.1's energy-market messages get valid "not supported" answers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ocpp2mqtt import events as ev
from ocpp2mqtt.ocpp import meter
from ocpp2mqtt.ocpp.protocol import MAX_DEPTH, too_deep
from ocpp2mqtt.ocpp.session import Handler, Session
from ocpp2mqtt.store import ChargerTransaction

log = logging.getLogger("ocpp2mqtt.session")

ENERGY = "energy_active_import_register"
ACTIVE_STATES = ("Charging", "SuspendedEV", "SuspendedEVSE")


def status_16(connector_status: str | None, charging_state: str | None,
              transaction_open: bool, transaction_ended: bool) -> str:
    """The OCPP 1.6 status of an EVSE, from its 2.x connectorStatus and chargingState."""
    if connector_status in ("Reserved", "Unavailable", "Faulted"):
        return connector_status
    if transaction_open:
        if charging_state in ACTIVE_STATES:
            return charging_state
        return "Preparing"  # EVConnected, or Idle: authorised, not plugged in yet
    if connector_status == "Occupied":
        return "Finishing" if transaction_ended else "Preparing"
    return "Available"


@dataclass(slots=True)
class Evse:
    connector_status: str | None = None
    charging_state: str | None = None
    transaction_id: str | None = None  # open transaction
    ended: bool = False  # its transaction ended while the connector is still occupied
    reported: tuple[str, str | None, str | None] | None = None


@dataclass(slots=True)
class Memory:
    """What this connection has learned about the station's EVSEs (never kept across
    connections: a charger may come back speaking another version)."""

    evses: dict[int, Evse] = field(default_factory=dict)


def _memory(s: Session) -> Memory:
    if s.memory is None:
        memory = s.memory = Memory()
        for tx in s.services.store.open_charger_transactions(s.station):
            memory.evses.setdefault(tx.evse_id, Evse()).transaction_id = tx.transaction_id
    assert isinstance(s.memory, Memory)
    return s.memory


def _evse(s: Session, evse_id: int) -> Evse:
    return _memory(s).evses.setdefault(evse_id, Evse())


def _report_status(s: Session, evse_id: int, now: str, timestamp: str | None = None,
                   always: bool = False) -> None:
    evse = _evse(s, evse_id)
    status = status_16(evse.connector_status, evse.charging_state,
                       evse.transaction_id is not None, evse.ended)
    reported = (status, evse.connector_status, evse.charging_state)
    if not always and reported == evse.reported:
        return
    evse.reported = reported
    s.services.emit(ev.StatusChanged(
        s.station, now, connector_id=evse_id, status=status,
        # 2.x reports faults through the device model, not the status: 1.6's catch-all.
        error_code="OtherError" if status == "Faulted" else "NoError",
        timestamp=timestamp, connector_status=evse.connector_status,
        charging_state=evse.charging_state,
    ))


def _authorize_token(s: Session, token: dict[str, Any] | None) -> str:
    if token is None:
        return "Accepted"
    authorizer = s.services.authorizer
    if token.get("type") == "NoAuthorization":  # free vend: nobody to check
        return "Accepted" if authorizer.charging_enabled(s.station) else "Blocked"
    return s.tag_status(str(token.get("idToken", "")))


# --- handlers ---------------------------------------------------------------------------------
def _authorize(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    token = p["idToken"]
    status = _authorize_token(s, token)
    s.services.emit(ev.Authorized(s.station, now, id_tag=str(token.get("idToken", "")),
                                  status=status))
    return {"idTokenInfo": {"status": status}}


def _boot_notification(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    station = p["chargingStation"]
    modem = station.get("modem") or {}
    s.services.emit(ev.Booted(s.station, now, info=ev.BootInfo(
        vendor=station["vendorName"], model=station["model"],
        firmware_version=station.get("firmwareVersion"),
        charge_point_serial_number=station.get("serialNumber"),
        iccid=modem.get("iccid"), imsi=modem.get("imsi"), reason=p.get("reason"),
    )))
    return {"currentTime": now, "interval": s.services.settings.heartbeat_interval,
            "status": "Accepted"}


def _data_transfer(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    data = p.get("data")
    if too_deep(data):
        data = f"<data nested deeper than {MAX_DEPTH} levels, not shown>"
    s.services.emit(ev.DataTransferred(s.station, now, vendor_id=p["vendorId"],
                                       message_id=p.get("messageId"), data=data))
    return {"status": "Accepted"}


def _firmware_status(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    s.services.emit(ev.NotificationReceived(s.station, now, kind="firmware_status",
                                            status=p["status"]))
    return {}


def _log_status(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    # The 2.x log upload is what 1.6 called diagnostics.
    s.services.emit(ev.NotificationReceived(s.station, now, kind="diagnostics_status",
                                            status=p["status"]))
    return {}


def _heartbeat(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    s.services.emit(ev.Heartbeat(s.station, now))
    return {"currentTime": now}


def _status_notification(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    evse = _evse(s, p["evseId"])
    evse.connector_status = p["connectorStatus"]
    if evse.connector_status != "Occupied":
        evse.ended = False  # unplugged (or out of service): the finished session is over
    _report_status(s, p["evseId"], now, p.get("timestamp"), always=True)
    return {}


def _energy(samples: list[ev.Sample], context: str | None = None) -> float | None:
    """The last station-wide energy register reading (of `context`, if given)."""
    found = None
    for sample in samples:
        for r in sample.readings:
            if r.key == ENERGY and r.phase is None and not r.signed and (
                    context is None or r.context == context):
                found = float(r.value)
    return found


def _meter_values(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    samples = meter.samples_2x(p["meterValue"])
    evse_id = p["evseId"]
    tx_id = _evse(s, evse_id).transaction_id if evse_id else None
    energy = _energy(samples)
    if tx_id is not None and energy is not None:
        tx = s.services.store.charger_transaction(s.station, tx_id)
        if tx is not None and not tx.ended:
            tx.last_energy = energy
            s.services.store.save_charger_transaction(tx)
    s.services.emit(ev.MeterReading(s.station, now, connector_id=evse_id, samples=samples))
    return {}


def _transaction_event(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    services = s.services
    info = p["transactionInfo"]
    tx_id = str(info["transactionId"])
    kind = p["eventType"]
    token = p.get("idToken")
    answer: dict[str, Any] = {}
    if token is not None:
        status = _authorize_token(s, token)
        answer = {"idTokenInfo": {"status": status}}
    tx = services.store.charger_transaction(s.station, tx_id)
    seq = p["seqNo"]
    if tx is not None and tx.last_seq_no is not None and seq <= tx.last_seq_no:
        log.info("%s: TransactionEvent %s of %s has seqNo %s, not after %s: answered, not "
                 "applied", s.station, kind, tx_id, seq, tx.last_seq_no)
        return answer
    samples = meter.samples_2x(p.get("meterValue", ()))
    energy = _energy(samples)
    evse_id = (p.get("evse") or {}).get("id")
    new = tx is None
    if tx is None:
        begin = _energy(samples, "Transaction.Begin")
        tx = ChargerTransaction(
            s.station, tx_id, evse_id or 0, "", begin if begin is not None else energy,
            p["timestamp"], None, None, False)
    if evse_id:
        tx.evse_id = evse_id
    if token is not None:
        tx.id_tag = str(token.get("idToken", ""))
    if tx.meter_start is None and energy is not None:
        tx.meter_start = energy  # a transaction that started before its first reading
    evse = _evse(s, tx.evse_id)
    if new:
        if kind != "Started":
            log.info("%s: TransactionEvent %s for transaction %s it never started here; "
                     "taking it as started", s.station, kind, tx_id)
        evse.transaction_id, evse.ended = tx_id, False
        services.emit(ev.TransactionStarted(
            s.station, now, connector_id=tx.evse_id, transaction_id=tx_id, id_tag=tx.id_tag,
            meter_start=tx.meter_start, timestamp=p["timestamp"],
            accepted=answer.get("idTokenInfo", {}).get("status", "Accepted") == "Accepted"))
    if "chargingState" in info:
        evse.charging_state = info["chargingState"]
    if samples:
        services.emit(ev.MeterReading(s.station, now, connector_id=tx.evse_id,
                                      transaction_id=tx_id, samples=samples))
    if energy is not None:
        tx.last_energy = energy
    if kind == "Ended":
        end = _energy(samples, "Transaction.End")
        stop = end if end is not None else tx.last_energy
        tx.ended = True
        if evse.transaction_id == tx_id:
            evse.transaction_id = None
        evse.ended = True
        services.emit(ev.TransactionStopped(
            s.station, now, transaction_id=tx_id, connector_id=tx.evse_id,
            meter_start=tx.meter_start, meter_stop=stop,
            reason=info.get("stoppedReason", "Local"), id_tag=tx.id_tag or None,
            timestamp=p["timestamp"]))
    tx.last_seq_no = seq
    services.store.save_charger_transaction(tx)
    if kind == "Ended":
        services.store.charger_transaction_stopped(
            s.station, tx_id, stop, p["timestamp"], info.get("stoppedReason", "Local"))
    _report_status(s, tx.evse_id, now, p["timestamp"])
    return answer


def config_key(item: dict[str, Any]) -> str | None:
    """`<Component>[:<instance>][@<evse>[.<connector>]]/<Variable>[:<instance>]`, or None
    where a name could not be part of an MQTT topic."""
    component, variable = item.get("component") or {}, item.get("variable") or {}
    name = str(component.get("name", ""))
    if component.get("instance"):
        name += f":{component['instance']}"
    evse = component.get("evse")
    if isinstance(evse, dict) and "id" in evse:
        name += f"@{evse['id']}" + (f".{evse['connectorId']}" if "connectorId" in evse else "")
    var = str(variable.get("name", ""))
    if variable.get("instance"):
        var += f":{variable['instance']}"
    key = f"{name}/{var}"
    if not name or not var or any(ch in key for ch in "+#\0"):
        return None
    return key


def _notify_report(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    values: dict[str, str] = {}
    readonly = set()
    for item in p.get("reportData", ()):
        key = config_key(item)
        attributes = item.get("variableAttribute") or []
        actual = next((a for a in attributes if a.get("type", "Actual") == "Actual"), None)
        if key is not None and actual is not None and "value" in actual:
            values[key] = str(actual["value"])
            if actual.get("mutability") == "ReadOnly":
                readonly.add(key)
    if values:
        s.services.emit(ev.ConfigurationReported(s.station, now, values=values,
                                                 readonly=frozenset(readonly)))
    return {}


def _security_event(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    log.info("%s: security event %s%s", s.station, p.get("type"),
             f" ({p['techInfo']})" if p.get("techInfo") else "")
    return {}


def _certificate_chain_status(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    log.info("%s: certificate status requested; answered Failed (no OCSP here)", s.station)
    return {"certificateStatus": [
        {"certificateHashData": r["certificateHashData"], "source": r["source"],
         "status": "Failed", "nextUpdate": now} for r in p["certificateStatusRequests"]]}


def _answer(payload: dict[str, Any], note: str | None = None) -> Handler:
    def handler(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
        if note:
            log.info("%s: %s", s.station, note)
        return dict(payload)

    return handler


def _vat_number(s: Session, p: dict[str, Any], now: str) -> dict[str, Any]:
    return {"vatNumber": p["vatNumber"], "status": "Rejected"}


HANDLERS_201: dict[str, Handler] = {
    "Authorize": _authorize,
    "BootNotification": _boot_notification,
    "ClearedChargingLimit": _answer({}),
    "DataTransfer": _data_transfer,
    "FirmwareStatusNotification": _firmware_status,
    "Get15118EVCertificate": _answer(
        {"status": "Failed", "exiResponse": ""},
        "ISO 15118 certificate requested; answered Failed (security profile 3 not supported)"),
    "GetCertificateStatus": _answer(
        {"status": "Failed"}, "certificate status requested; answered Failed (no OCSP here)"),
    "Heartbeat": _heartbeat,
    "LogStatusNotification": _log_status,
    "MeterValues": _meter_values,
    "NotifyChargingLimit": _answer({}),
    "NotifyCustomerInformation": _answer({}),
    "NotifyDisplayMessages": _answer({}),
    "NotifyEVChargingNeeds": _answer({"status": "Rejected"}),
    "NotifyEVChargingSchedule": _answer({"status": "Accepted"}),
    "NotifyEvent": _answer({}),
    "NotifyMonitoringReport": _answer({}),
    "NotifyReport": _notify_report,
    "PublishFirmwareStatusNotification": _answer({}),
    "ReportChargingProfiles": _answer({}),
    "ReservationStatusUpdate": _answer({}),
    "SecurityEventNotification": _security_event,
    "SignCertificate": _answer(
        {"status": "Rejected"},
        "certificate signing requested; answered Rejected (security profile 3 not supported)"),
    "StatusNotification": _status_notification,
    "TransactionEvent": _transaction_event,
}
HANDLERS_21: dict[str, Handler] = {
    **HANDLERS_201,
    "BatterySwap": _answer({}),
    "ClosePeriodicEventStream": _answer({}),
    "GetCertificateChainStatus": _certificate_chain_status,
    "NotifyDERAlarm": _answer({}),
    "NotifyDERStartStop": _answer({}),
    "NotifyPeriodicEventStream": _answer({}),  # a SEND: the answer is never sent
    "NotifyPriorityCharging": _answer({}),
    "NotifySettlement": _answer({}),
    "OpenPeriodicEventStream": _answer({"status": "Rejected"}),
    "PullDynamicScheduleUpdate": _answer({"status": "Rejected"}),
    "ReportDERControl": _answer({}),
    "VatNumberValidation": _vat_number,
}
