"""Commands for OCPP 2.0.1 and 2.1 stations. Pure.

An automation written for a 1.6 charger keeps working when the charger is replaced
by a 2.x one: the 1.6 commands (`reset` with `Soft`/`Hard`, `unlock_connector`,
`change_availability`, `remote_start_transaction`, `get_configuration`, …) are
translated here, and their answers are reshaped to what the 1.6 command answered.
Every 2.x action is also available by its own snake_case name with 2.x arguments;
those are sent as given (after the version's schema check).
"""

from __future__ import annotations

from collections.abc import Callable
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

# OCPP 1.6 configuration keys and their 2.x component/variable (OCPP 2.0.1 part 2,
# the device model's standardized controller components).
CONFIG_KEYS: dict[str, tuple[str, str]] = {
    "HeartbeatInterval": ("OCPPCommCtrlr", "HeartbeatInterval"),
    "WebSocketPingInterval": ("OCPPCommCtrlr", "WebSocketPingInterval"),
    "ResetRetries": ("OCPPCommCtrlr", "ResetRetries"),
    "MeterValueSampleInterval": ("SampledDataCtrlr", "TxUpdatedInterval"),
    "MeterValuesSampledData": ("SampledDataCtrlr", "TxUpdatedMeasurands"),
    "StopTxnSampledData": ("SampledDataCtrlr", "TxEndedMeasurands"),
    "ClockAlignedDataInterval": ("AlignedDataCtrlr", "Interval"),
    "MeterValuesAlignedData": ("AlignedDataCtrlr", "Measurands"),
    "StopTxnAlignedData": ("AlignedDataCtrlr", "TxEndedMeasurands"),
    "ConnectionTimeOut": ("TxCtrlr", "EVConnectionTimeOut"),
    "StopTransactionOnEVSideDisconnect": ("TxCtrlr", "StopTxOnEVSideDisconnect"),
    "StopTransactionOnInvalidId": ("TxCtrlr", "StopTxOnInvalidId"),
    "LocalAuthorizeOffline": ("AuthCtrlr", "LocalAuthorizeOffline"),
    "LocalPreAuthorize": ("AuthCtrlr", "LocalPreAuthorize"),
    "AuthorizeRemoteTxRequests": ("AuthCtrlr", "AuthorizeRemoteStart"),
    "LocalAuthListEnabled": ("LocalAuthListCtrlr", "Enabled"),
    "ChargeProfileMaxStackLevel": ("SmartChargingCtrlr", "ProfileStackLevel"),
    "ChargingScheduleAllowedChargingRateUnit": ("SmartChargingCtrlr", "RateUnit"),
    "ChargingScheduleMaxPeriods": ("SmartChargingCtrlr", "PeriodsPerSchedule"),
}
# 1.6 TriggerMessage names and their 2.x names.
TRIGGERS = {"DiagnosticsStatusNotification": "LogStatusNotification"}
PURPOSES = {"ChargePointMaxProfile": "ChargingStationMaxProfile"}

Translation = Callable[[dict[str, Any], StationFacts], Plan]


def component_variable(key: Any) -> dict[str, Any]:
    """A 1.6 key, `Component.Variable`, or the name a NotifyReport value is published
    under, `<Component>[:<instance>][@<evse>[.<connector>]]/<Variable>[:<instance>]`
    (ocpp/v201.py config_key) → 2.x names."""
    if not isinstance(key, str) or not key:
        raise CommandError("configuration keys must be non-empty strings")
    if key in CONFIG_KEYS:
        component, variable = CONFIG_KEYS[key]
        return {"component": {"name": component}, "variable": {"name": variable}}
    if "/" in key:
        return _device_model_name(key)
    if "." in key:
        component, _, variable = key.partition(".")
        return {"component": {"name": component}, "variable": {"name": variable}}
    raise CommandError(
        f"configuration key {key!r} has no OCPP 2.x name here; name it as "
        f"Component/Variable, e.g. OCPPCommCtrlr/HeartbeatInterval")


def _device_model_name(key: str) -> dict[str, Any]:
    where, _, var = key.partition("/")
    where, _, evse = where.partition("@")
    name, _, instance = where.partition(":")
    variable_name, _, variable_instance = var.partition(":")
    if not name or not variable_name:
        raise CommandError(f"configuration key {key!r}: name it as Component/Variable")
    component: dict[str, Any] = {"name": name}
    if instance:
        component["instance"] = instance
    if evse:
        evse_id, _, connector = evse.partition(".")
        try:
            component["evse"] = {"id": int(evse_id)}
            if connector:
                component["evse"]["connectorId"] = int(connector)
        except ValueError:
            raise CommandError(f"configuration key {key!r}: the EVSE after @ must be a "
                               f"number, or number.connector") from None
    variable: dict[str, Any] = {"name": variable_name}
    if variable_instance:
        variable["instance"] = variable_instance
    return {"component": component, "variable": variable}


def _names(item: dict[str, Any]) -> tuple[str, str]:
    return (str(item.get("component", {}).get("name", "")),
            str(item.get("variable", {}).get("name", "")))


# --- 1.6 commands on a 2.x station ----------------------------------------------------------
def _reset(args: dict[str, Any], facts: StationFacts) -> Plan:
    only(args, {"type"}, "reset")
    kind = {"Soft": "OnIdle", "Hard": "Immediate"}.get(args.get("type", ""))
    if kind is None:
        raise CommandError('reset: type must be "Soft" or "Hard" (1.6), '
                           'or "OnIdle" or "Immediate" (2.x)')
    return Plan("", None, "Reset", {"type": kind})


def _unlock_connector(args: dict[str, Any], facts: StationFacts) -> Plan:
    only(args, {"connectorId"}, "unlock_connector")
    evse = int_arg(args, "connectorId", None, "unlock_connector")
    if evse is None:
        raise CommandError("unlock_connector: connector_id is required")
    return Plan("", None, "UnlockConnector", {"evseId": evse, "connectorId": 1})


def _change_availability(args: dict[str, Any], facts: StationFacts) -> Plan:
    only(args, {"connectorId", "type"}, "change_availability")
    evse = int_arg(args, "connectorId", 0, "change_availability") or 0
    payload: dict[str, Any] = {"operationalStatus": args.get("type")}
    if evse:
        payload["evse"] = {"id": evse}
    return Plan("", None, "ChangeAvailability", payload)


def _remote_start(args: dict[str, Any], facts: StationFacts) -> Plan:
    only(args, {"connectorId", "idTag"}, "remote_start_transaction")
    id_tag = args.get("idTag", facts.default_id_tag)
    payload: dict[str, Any] = {"idToken": {"idToken": id_tag, "type": "Central"},
                               "remoteStartId": facts.request_id}
    evse = int_arg(args, "connectorId", None, "remote_start_transaction")
    if evse is not None:
        payload["evseId"] = evse
    return Plan("", None, "RequestStartTransaction", payload)


def _remote_stop(args: dict[str, Any], facts: StationFacts) -> Plan:
    only(args, {"transactionId"}, "remote_stop_transaction")
    tx = args.get("transactionId")
    if not isinstance(tx, (str, int)) or isinstance(tx, bool):
        raise CommandError("remote_stop_transaction: transaction_id is required")
    return Plan("", None, "RequestStopTransaction", {"transactionId": str(tx)})


def _trigger_message(args: dict[str, Any], facts: StationFacts) -> Plan:
    only(args, {"requestedMessage", "connectorId"}, "trigger_message")
    message = args.get("requestedMessage")
    payload: dict[str, Any] = {"requestedMessage": TRIGGERS.get(str(message), message)}
    evse = int_arg(args, "connectorId", None, "trigger_message")
    if evse:
        payload["evse"] = {"id": evse}
    return Plan("", None, "TriggerMessage", payload)


def _get_configuration(args: dict[str, Any], facts: StationFacts) -> Plan:
    only(args, {"key"}, "get_configuration")
    keys = args.get("key")
    if not keys:
        return Plan("", None, "GetBaseReport",
                    {"requestId": facts.request_id, "reportBase": "FullInventory"},
                    note="the values arrive on config/<Component>/<Variable>")
    if not isinstance(keys, list):
        raise CommandError("get_configuration: key must be a list of configuration keys")
    wanted = [component_variable(key) for key in keys]
    asked = {_names(item): key for item, key in zip(wanted, keys, strict=True)}

    def answer_as_16(answer: Any) -> Any:
        # The answer names each key as the command did (1.6 name or Component/Variable).
        known, unknown = [], []
        for item in answer.get("getVariableResult", ()):
            names = _names(item)
            key = asked.get(names, "/".join(names))
            if item.get("attributeStatus") == "Accepted":
                known.append({"key": key, "readonly": False,
                              "value": item.get("attributeValue", "")})
            else:
                unknown.append(key)
        return {"configurationKey": known, "unknownKey": unknown}

    return Plan("", None, "GetVariables", {"getVariableData": wanted}, respond=answer_as_16)


def _change_configuration(args: dict[str, Any], facts: StationFacts) -> Plan:
    only(args, {"key", "value"}, "change_configuration")
    if not isinstance(args.get("value"), str):
        raise CommandError("change_configuration: value must be a string")
    item = {**component_variable(args.get("key")), "attributeValue": args["value"]}
    return Plan("", None, "SetVariables", {"setVariableData": [item]},
                respond=lambda answer: {"status": answer["setVariableResult"][0]
                                        ["attributeStatus"]})


def _get_composite_schedule(args: dict[str, Any], facts: StationFacts) -> Plan:
    only(args, {"connectorId", "duration", "chargingRateUnit"}, "get_composite_schedule")
    payload = {"evseId": int_arg(args, "connectorId", 0, "get_composite_schedule") or 0,
               "duration": args.get("duration")}
    if "chargingRateUnit" in args:
        payload["chargingRateUnit"] = args["chargingRateUnit"]
    return Plan("", None, "GetCompositeSchedule", payload)


def _clear_charging_profile(args: dict[str, Any], facts: StationFacts) -> Plan:
    only(args, {"id", "connectorId", "chargingProfilePurpose", "stackLevel"},
         "clear_charging_profile")
    payload: dict[str, Any] = {}
    if "id" in args:
        payload["chargingProfileId"] = args["id"]
    criteria = {"evseId": args.get("connectorId"),
                "chargingProfilePurpose": PURPOSES.get(args.get("chargingProfilePurpose", ""),
                                                       args.get("chargingProfilePurpose")),
                "stackLevel": args.get("stackLevel")}
    criteria = {k: v for k, v in criteria.items() if v is not None}
    if criteria:
        payload["chargingProfileCriteria"] = criteria
    return Plan("", None, "ClearChargingProfile", payload)


# The 1.6 commands a 2.x station also understands (tried when the args are not 2.x args).
TRANSLATIONS: dict[str, Translation] = {
    "reset": _reset,
    "unlock_connector": _unlock_connector,
    "change_availability": _change_availability,
    "remote_start_transaction": _remote_start,
    "remote_stop_transaction": _remote_stop,
    "trigger_message": _trigger_message,
    "get_configuration": _get_configuration,
    "change_configuration": _change_configuration,
    "get_composite_schedule": _get_composite_schedule,
    "clear_charging_profile": _clear_charging_profile,
}


# --- convenience actions ------------------------------------------------------------------------
def set_current_limit(args: dict[str, Any], facts: StationFacts) -> Plan:
    policy = facts.policy
    limit = current_limit(args, policy)
    purpose = PURPOSES.get(policy.purpose, policy.purpose)
    evse = 0 if purpose == "ChargingStationMaxProfile" else limit.connector
    period: dict[str, Any] = {"startPeriod": 0, "limit": limit.value}
    if limit.phases is not None:
        period["numberPhases"] = limit.phases
    schedule: dict[str, Any] = {"id": 1, "chargingRateUnit": limit.unit,
                                "chargingSchedulePeriod": [period]}
    if policy.kind == "Absolute" and facts.now:
        schedule["startSchedule"] = facts.now
    profile: dict[str, Any] = {
        "id": policy.profile_id_base + evse, "stackLevel": policy.stack_level,
        "chargingProfilePurpose": purpose, "chargingProfileKind": policy.kind,
        "chargingSchedule": [schedule],
    }
    if policy.valid_to:
        profile["validTo"] = policy.valid_to
    if purpose == "TxProfile":
        evse, tx = transaction_of(facts, evse, "EVSE")
        profile["id"], profile["transactionId"] = policy.profile_id_base + evse, str(tx)
    return Plan("", None, "SetChargingProfile", {"evseId": evse, "chargingProfile": profile},
                note=limit.note)


def clear_current_limit(args: dict[str, Any], facts: StationFacts) -> Plan:
    only(args, {"connectorId"}, "clear_current_limit")
    evse = int_arg(args, "connectorId", 0, "clear_current_limit") or 0
    return Plan("", None, "ClearChargingProfile",
                {"chargingProfileId": facts.policy.profile_id_base + evse})


def start_charging(args: dict[str, Any], facts: StationFacts) -> Plan:
    only(args, {"connectorId", "idTag"}, "start_charging")
    evse = int_arg(args, "connectorId", 1, "start_charging")
    return Plan("", None, "RequestStartTransaction", {
        "idToken": {"idToken": args.get("idTag", facts.default_id_tag), "type": "Central"},
        "remoteStartId": facts.request_id, "evseId": evse})


def stop_charging(args: dict[str, Any], facts: StationFacts) -> Plan:
    only(args, {"connectorId"}, "stop_charging")
    evse = int_arg(args, "connectorId", None, "stop_charging")
    tx: Any
    if evse is not None:
        tx = facts.open_transactions.get(evse)
    else:
        tx = next(reversed(list(facts.open_transactions.values())), None)  # the newest
    if tx is None:
        where = f"on connector {evse}" if evse is not None else ""
        raise CommandError(f"stop_charging: no active transaction {where}".strip())
    return Plan("", None, "RequestStopTransaction", {"transactionId": str(tx)})


CONVENIENCE = {
    "set_current_limit": set_current_limit,
    "clear_current_limit": clear_current_limit,
    "start_charging": start_charging,
    "stop_charging": stop_charging,
    "charging_enabled": charging_enabled,
}
