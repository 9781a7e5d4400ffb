"""Convenience actions for OCPP 1.6 stations. Pure."""

from __future__ import annotations

from typing import Any

from ocpp2mqtt.commands.model import (
    CommandError,
    Plan,
    StationFacts,
    charging_enabled,
    current_limit,
    int_arg,
    only,
    transaction_of,
)


def set_current_limit(args: dict[str, Any], facts: StationFacts) -> Plan:
    policy = facts.policy
    limit = current_limit(args, policy)
    connector = limit.connector
    period: dict[str, Any] = {"startPeriod": 0, "limit": limit.value}
    if limit.phases is not None:
        period["numberPhases"] = limit.phases
    profile: dict[str, Any] = {
        "chargingProfileId": policy.profile_id_base + connector,
        "stackLevel": policy.stack_level,
        "chargingProfilePurpose": policy.purpose,
        "chargingProfileKind": policy.kind,
        "chargingSchedule": {"chargingRateUnit": limit.unit, "chargingSchedulePeriod": [period]},
    }
    if policy.kind == "Absolute" and facts.now:
        profile["chargingSchedule"]["startSchedule"] = facts.now
    if policy.valid_to:
        profile["validTo"] = policy.valid_to
    if policy.purpose == "TxProfile":
        connector, profile["transactionId"] = transaction_of(facts, connector, "connector")
        profile["chargingProfileId"] = policy.profile_id_base + connector
    return Plan("", None, "SetChargingProfile",
                {"connectorId": connector, "csChargingProfiles": profile}, note=limit.note)


def clear_current_limit(args: dict[str, Any], facts: StationFacts) -> Plan:
    only(args, {"connectorId"}, "clear_current_limit")
    connector = int_arg(args, "connectorId", 0, "clear_current_limit")
    return Plan("", None, "ClearChargingProfile",
                {"id": facts.policy.profile_id_base + (connector or 0)})


def start_charging(args: dict[str, Any], facts: StationFacts) -> Plan:
    only(args, {"connectorId", "idTag"}, "start_charging")
    connector = int_arg(args, "connectorId", 1, "start_charging")
    id_tag = args.get("idTag", facts.default_id_tag)
    return Plan("", None, "RemoteStartTransaction", {"connectorId": connector, "idTag": id_tag})


def stop_charging(args: dict[str, Any], facts: StationFacts) -> Plan:
    only(args, {"connectorId"}, "stop_charging")
    connector = int_arg(args, "connectorId", None, "stop_charging")
    tx: Any
    if connector is not None:
        tx = facts.open_transactions.get(connector)
    else:
        tx = max(facts.open_transactions.values(), default=None)  # the newest
    if tx is None:
        where = f"on connector {connector}" if connector is not None else ""
        raise CommandError(f"stop_charging: no active transaction {where}".strip())
    return Plan("", None, "RemoteStopTransaction", {"transactionId": tx})


CONVENIENCE = {
    "set_current_limit": set_current_limit,
    "clear_current_limit": clear_current_limit,
    "start_charging": start_charging,
    "stop_charging": stop_charging,
    "charging_enabled": charging_enabled,
}
