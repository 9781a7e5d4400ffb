"""MQTT command JSON → a validated OCPP call, or a precise error. Pure.

The action table is derived from the `ocpp` package's v1.6 call classes:
every central-system-initiated operation is an action named in snake_case
(`GetLocalListVersion` → `get_local_list_version`). Args may be snake_case
(as in the original README) or camelCase; they are converted with the `ocpp`
package's own converter and checked against its JSON schema before anything
is sent. Convenience actions (`set_current_limit`, `start_charging`, …) are
built here from station facts the caller passes in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson
from ocpp import exceptions as ocpp_errors
from ocpp.charge_point import camel_to_snake_case, snake_to_camel_case

from ocpp2mqtt.ocpp import protocol

_SNAKE = re.compile(r"(?<!^)(?=[A-Z])")


def _snake(name: str) -> str:
    return _SNAKE.sub("_", name).lower()


# snake_case action → OCPP action, derived from the ocpp package.
OCPP_ACTIONS: dict[str, str] = {_snake(name): name for name in protocol.central_system_actions()}
ALIASES = {"get_local_version": "get_local_list_version"}
CONVENIENCE = (
    "set_current_limit",
    "clear_current_limit",
    "start_charging",
    "stop_charging",
    "charging_enabled",
)
ALL_ACTIONS = sorted([*OCPP_ACTIONS, *ALIASES, *CONVENIENCE])

OK_STATUSES = frozenset(
    {"Accepted", "AcceptedCanceled", "Unlocked", "Scheduled", "RebootRequired"}
)


class CommandError(Exception):
    """The command cannot be sent; the message says what to fix."""

    command_id: Any = None
    action: str | None = None


@dataclass(slots=True)
class CurrentLimitPolicy:
    """How `set_current_limit` becomes a charging profile (see docs/commands.md)."""

    purpose: str = "TxDefaultProfile"
    stack_level: int = 1
    profile_id_base: int = 1000
    round_amps: bool = False
    min_current: float = 0.0
    force_amps: bool = False  # convert W limits to A for chargers that only take amps
    kind: str = "Relative"  # Easee takes only Absolute profiles
    phases: int = 3
    voltage: float = 230.0


@dataclass(slots=True)
class StationFacts:
    """What convenience actions need to know about the station right now."""

    open_transactions: dict[int, int] = field(default_factory=dict)  # connector → tx id
    default_id_tag: str = "ocpp2mqtt"
    policy: CurrentLimitPolicy = field(default_factory=CurrentLimitPolicy)
    now: str = ""  # ISO 8601 UTC, for Absolute profiles' startSchedule


@dataclass(slots=True)
class Plan:
    """What to do for one command."""

    action: str  # the user's action name
    command_id: Any = None
    ocpp_action: str | None = None  # None for local actions
    payload: dict[str, Any] = field(default_factory=dict)
    local: dict[str, Any] = field(default_factory=dict)  # e.g. {"charging_enabled": False}
    note: str | None = None  # said in the result, e.g. "paused: limit below minimum"


def _error(message: str, command_id: Any = None, action: str | None = None) -> CommandError:
    exc = CommandError(message)
    exc.command_id = command_id
    exc.action = action
    return exc


def parse(raw: bytes) -> tuple[Any, str, dict[str, Any]]:
    """Raw MQTT payload → (id, action, args); raises CommandError (with the id if readable)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _error(f"payload is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _error(
            f'payload must be a JSON object {{"action": ..., "args": {{...}}}}, '
            f"got {type(doc).__name__}"
        )
    if protocol.too_deep(doc):
        command_id = doc.get("id")
        raise _error(f"command nested deeper than {protocol.MAX_DEPTH} levels",
                     command_id if not isinstance(command_id, (dict, list)) else None)
    command_id = doc.get("id")
    action = doc.get("action")
    if not isinstance(action, str) or not action:
        raise _error('"action" is missing or not a string', command_id)
    name = _normalise_action(action)
    args = doc.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise _error(f'"args" must be a JSON object, got {type(args).__name__}', command_id, name)
    unknown = set(doc) - {"id", "action", "args"}
    if unknown:
        raise _error(f"unknown top-level fields {sorted(unknown)}; put them in \"args\"",
                     command_id, name)
    return command_id, action, args


def peek_id(raw: bytes) -> Any:
    """The command's id if it can be read at all (for results of failed commands)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    command_id = doc.get("id") if isinstance(doc, dict) else None
    return command_id if isinstance(command_id, (str, int, float, bool)) else None


def _normalise_action(action: str) -> str:
    name = _snake(action) if any(c.isupper() for c in action) else action
    return ALIASES.get(name, name)


def _schema_check(ocpp_action: str, payload: dict[str, Any]) -> None:
    try:
        protocol.validate(ocpp_action, payload)
    except ocpp_errors.OCPPError as exc:
        details = exc.details if isinstance(exc.details, dict) else {}
        cause = details.get("cause", exc.description)
        field_name = details.get("field", "")
        hint = ""
        if field_name and field_name != "payload":
            hint = f" (args.{_snake_path(field_name)})"
        raise CommandError(f"invalid args for {ocpp_action}: {cause}{hint}") from None


def _snake_path(path: str) -> str:
    return ".".join(_snake(p) for p in path.split("."))


def plan(raw: bytes, facts: StationFacts) -> Plan:
    """Parse and validate one command; raises CommandError naming the problem."""
    command_id, action, args = parse(raw)
    name = _normalise_action(action)
    try:
        if name in OCPP_ACTIONS:
            ocpp_action = OCPP_ACTIONS[name]
            payload = snake_to_camel_case(args)
            _schema_check(ocpp_action, payload)
            return Plan(name, command_id, ocpp_action, payload)
        builder = _CONVENIENCE.get(name)
        if builder is None:
            raise CommandError(
                f"unknown action {action!r}; known actions: {', '.join(ALL_ACTIONS)}"
            )
        result = builder(snake_to_camel_case(args), facts)
        result.action, result.command_id = name, command_id
        if result.ocpp_action:
            _schema_check(result.ocpp_action, result.payload)
        return result
    except CommandError as exc:
        exc.command_id = command_id
        exc.action = name
        raise


def _only(args: dict[str, Any], allowed: set[str], action: str) -> None:
    extra = set(args) - allowed
    if extra:
        raise CommandError(
            f"{action}: unknown args {sorted(_snake(e) for e in extra)}; "
            f"allowed: {sorted(_snake(a) for a in allowed)}"
        )


def _int_arg(args: dict[str, Any], key: str, default: int | None, action: str) -> int | None:
    value = args.get(key, default)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise CommandError(f"{action}: {_snake(key)} must be an integer, got {value!r}")
    return value


def _set_current_limit(args: dict[str, Any], facts: StationFacts) -> Plan:
    _only(args, {"limit", "unit", "connectorId", "numberPhases"}, "set_current_limit")
    policy = facts.policy
    limit = args.get("limit")
    if not isinstance(limit, (int, float)) or isinstance(limit, bool) or limit < 0:
        raise CommandError("set_current_limit: limit must be a number ≥ 0 (amps or watts)")
    unit = args.get("unit", "A")
    if unit not in ("A", "W"):
        raise CommandError(f"set_current_limit: unit must be \"A\" or \"W\", got {unit!r}")
    connector = _int_arg(args, "connectorId", 0, "set_current_limit")
    phases = _int_arg(args, "numberPhases", None, "set_current_limit")
    if unit == "W" and policy.force_amps:
        limit = limit / ((phases or policy.phases) * policy.voltage)
        unit = "A"
    if unit == "A":
        if policy.round_amps:
            limit = float(int(limit))
        if limit < policy.min_current:
            # Many chargers ignore limits below 6 A; a 0 A limit pauses reliably.
            limit = 0.0
    period: dict[str, Any] = {"startPeriod": 0, "limit": round(float(limit), 1)}
    if phases is not None:
        period["numberPhases"] = phases
    profile: dict[str, Any] = {
        "chargingProfileId": policy.profile_id_base + (connector or 0),
        "stackLevel": policy.stack_level,
        "chargingProfilePurpose": policy.purpose,
        "chargingProfileKind": policy.kind,
        "chargingSchedule": {"chargingRateUnit": unit, "chargingSchedulePeriod": [period]},
    }
    if policy.kind == "Absolute" and facts.now:
        profile["chargingSchedule"]["startSchedule"] = facts.now
    if policy.purpose == "TxProfile":
        if not connector:
            # A TxProfile belongs to a transaction's connector, never connector 0.
            connector = next(iter(sorted(facts.open_transactions)), 0)
            profile["chargingProfileId"] = policy.profile_id_base + connector
        tx = facts.open_transactions.get(connector)
        if tx is None or not connector:
            raise CommandError("set_current_limit: TxProfile needs an active transaction"
                               + (f" on connector {connector}" if connector else ""))
        profile["transactionId"] = tx
    note = "limit below minimum current: pausing with 0 A" if (
        unit == "A" and args["limit"] > 0 and limit == 0.0
    ) else None
    if note is None and unit == "A" and args.get("unit", "A") == "W":
        note = f"converted to {round(limit, 1)} A"
    return Plan("", None, "SetChargingProfile",
                {"connectorId": connector, "csChargingProfiles": profile}, note=note)


def _clear_current_limit(args: dict[str, Any], facts: StationFacts) -> Plan:
    _only(args, {"connectorId"}, "clear_current_limit")
    connector = _int_arg(args, "connectorId", 0, "clear_current_limit")
    return Plan("", None, "ClearChargingProfile",
                {"id": facts.policy.profile_id_base + (connector or 0)})


def _start_charging(args: dict[str, Any], facts: StationFacts) -> Plan:
    _only(args, {"connectorId", "idTag"}, "start_charging")
    connector = _int_arg(args, "connectorId", 1, "start_charging")
    id_tag = args.get("idTag", facts.default_id_tag)
    return Plan("", None, "RemoteStartTransaction", {"connectorId": connector, "idTag": id_tag})


def _stop_charging(args: dict[str, Any], facts: StationFacts) -> Plan:
    _only(args, {"connectorId"}, "stop_charging")
    connector = _int_arg(args, "connectorId", None, "stop_charging")
    if connector is not None:
        tx = facts.open_transactions.get(connector)
    else:
        tx = max(facts.open_transactions.values(), default=None)
    if tx is None:
        where = f"on connector {connector}" if connector is not None else ""
        raise CommandError(f"stop_charging: no active transaction {where}".strip())
    return Plan("", None, "RemoteStopTransaction", {"transactionId": tx})


def _charging_enabled(args: dict[str, Any], facts: StationFacts) -> Plan:
    _only(args, {"enabled"}, "charging_enabled")
    enabled = args.get("enabled")
    if not isinstance(enabled, bool):
        raise CommandError("charging_enabled: args.enabled must be true or false")
    return Plan("", None, None, {}, local={"charging_enabled": enabled})


_CONVENIENCE = {
    "set_current_limit": _set_current_limit,
    "clear_current_limit": _clear_current_limit,
    "start_charging": _start_charging,
    "stop_charging": _stop_charging,
    "charging_enabled": _charging_enabled,
}


def result_status(response: Any) -> str:
    """"ok" or "rejected", from the charger's answer."""
    if isinstance(response, dict) and "status" in response:
        return "ok" if response["status"] in OK_STATUSES else "rejected"
    return "ok"


def result_document(
    plan_or_action: Plan | str,
    status: str,
    command_id: Any = None,
    response: Any = None,
    error: str | None = None,
    note: str | None = None,
    raw: bool = False,
) -> dict[str, Any]:
    """The JSON result of one command. `raw`: the response is shown as received
    (an invalid answer), not converted to snake_case."""
    if isinstance(plan_or_action, Plan):
        action, command_id, note = plan_or_action.action, plan_or_action.command_id, (
            note or plan_or_action.note
        )
    else:
        action = plan_or_action
    if response is not None and protocol.too_deep(response):
        response = f"<answer nested deeper than {protocol.MAX_DEPTH} levels, not shown>"
    elif isinstance(response, (dict, list)) and not raw:
        response = camel_to_snake_case(response)
    doc = {
        "id": command_id,
        "action": action,
        "status": status,
        "response": response,
        "error": error,
    }
    if note:
        doc["note"] = note
    return doc


def legacy_result_messages(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """The original's `cmd_result/status` and `cmd_result/<key>` topics."""
    response = doc.get("response")
    status = response.get("status") if isinstance(response, dict) else None
    out = [("cmd_result/status", str(status) if status is not None else doc["status"])]
    if isinstance(response, dict):
        for key, value in response.items():
            if key == "status":
                continue
            text = value if isinstance(value, str) else orjson.dumps(value).decode()
            out.append((f"cmd_result/{key}", text))
    return out
