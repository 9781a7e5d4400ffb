"""The parts every command shares: parsing, the plan, station facts, errors. Pure."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ocpp2mqtt.ocpp import protocol

_SNAKE = re.compile(r"(?<!^)(?=[A-Z])")
ALIASES = {"get_local_version": "get_local_list_version"}
CONVENIENCE = (
    "set_current_limit",
    "clear_current_limit",
    "start_charging",
    "stop_charging",
    "charging_enabled",
)


def snake(name: str) -> str:
    return _SNAKE.sub("_", name).lower()


def snake_path(path: str) -> str:
    return ".".join(snake(p) for p in path.split("."))


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
    valid_to: str | None = None  # load balancing: the profile lapses then (the failsafe holds)


@dataclass(slots=True)
class StationFacts:
    """What the plan of a command needs to know about the station right now."""

    # connector (1.6) or EVSE (2.x) → its open transaction's id
    open_transactions: dict[int, int | str] = field(default_factory=dict)
    default_id_tag: str = "ocpp2mqtt"
    policy: CurrentLimitPolicy = field(default_factory=CurrentLimitPolicy)
    now: str = ""  # ISO 8601 UTC, for Absolute profiles' startSchedule
    version: protocol.OcppVersion = protocol.V16
    request_id: int = 1  # a fresh id for 2.x requests that need one (remoteStartId, …)


@dataclass(slots=True)
class Plan:
    """What to do for one command."""

    action: str  # the user's action name
    command_id: Any = None
    ocpp_action: str | None = None  # None for local actions
    payload: dict[str, Any] = field(default_factory=dict)
    local: dict[str, Any] = field(default_factory=dict)  # e.g. {"charging_enabled": False}
    note: str | None = None  # said in the result, e.g. "paused: limit below minimum"
    # A 1.6 command sent to a 2.x station: the charger's (checked) answer → the 1.6 shape
    respond: Callable[[Any], Any] | None = None
    version: protocol.OcppVersion = protocol.V16


def error(message: str, command_id: Any = None, action: str | None = None) -> CommandError:
    exc = CommandError(message)
    exc.command_id = command_id
    exc.action = action
    return exc


def normalise_action(action: str) -> str:
    name = snake(action) if any(c.isupper() for c in action) else action
    return ALIASES.get(name, name)


def parse(raw: bytes) -> tuple[Any, str, dict[str, Any]]:
    """Raw MQTT payload → (id, action, args); raises CommandError (with the id if readable)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise error(f"payload is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise error(
            f'payload must be a JSON object {{"action": ..., "args": {{...}}}}, '
            f"got {type(doc).__name__}"
        )
    if protocol.too_deep(doc):
        command_id = doc.get("id")
        raise error(f"command nested deeper than {protocol.MAX_DEPTH} levels",
                    command_id if not isinstance(command_id, (dict, list)) else None)
    command_id = doc.get("id")
    action = doc.get("action")
    if not isinstance(action, str) or not action:
        raise error('"action" is missing or not a string', command_id)
    name = normalise_action(action)
    args = doc.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise error(f'"args" must be a JSON object, got {type(args).__name__}', command_id, name)
    unknown = set(doc) - {"id", "action", "args"}
    if unknown:
        raise error(f"unknown top-level fields {sorted(unknown)}; put them in \"args\"",
                    command_id, name)
    return command_id, action, args


def peek_action(raw: bytes) -> str:
    """The command's action if it can be read at all, else "?"."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "?"
    action = doc.get("action") if isinstance(doc, dict) else None
    return action if isinstance(action, str) else "?"


def peek_id(raw: bytes) -> Any:
    """The command's id if it can be read at all (for results of failed commands)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    command_id = doc.get("id") if isinstance(doc, dict) else None
    return command_id if isinstance(command_id, (str, int, float, bool)) else None


def schema_check(version: protocol.OcppVersion, ocpp_action: str,
                 payload: dict[str, Any]) -> None:
    """Raise CommandError naming the argument if `payload` is not a valid request."""
    try:
        protocol.validate(version, version.schema_name(ocpp_action), payload)
    except protocol.CallErrorReply as exc:
        cause = exc.details.get("cause", exc.code)
        field_name = exc.details.get("field", "")
        hint = ""
        if field_name and field_name != "payload":
            hint = f" (args.{snake_path(field_name)})"
        raise CommandError(f"invalid args for {ocpp_action}: {cause}{hint}") from None


def only(args: dict[str, Any], allowed: set[str], action: str) -> None:
    extra = set(args) - allowed
    if extra:
        raise CommandError(
            f"{action}: unknown args {sorted(snake(e) for e in extra)}; "
            f"allowed: {sorted(snake(a) for a in allowed)}"
        )


def int_arg(args: dict[str, Any], key: str, default: int | None, action: str) -> int | None:
    value = args.get(key, default)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise CommandError(f"{action}: {snake(key)} must be an integer, got {value!r}")
    return value


@dataclass(slots=True)
class Limit:
    """A `set_current_limit` request, checked and converted per the policy."""

    value: float
    unit: str  # "A" | "W"
    connector: int
    phases: int | None
    note: str | None


def transaction_of(facts: StationFacts, connector: int, word: str) -> tuple[int, int | str]:
    """A TxProfile's connector (`word`: "connector" or "EVSE") and its open transaction: a
    TxProfile belongs to a transaction, never to connector 0 (0: the first with one)."""
    if not connector:
        connector = next(iter(sorted(facts.open_transactions)), 0)
    tx = facts.open_transactions.get(connector)
    if tx is None or not connector:
        raise CommandError("set_current_limit: TxProfile needs an active transaction"
                           + (f" on {word} {connector}" if connector else ""))
    return connector, tx


def current_limit(args: dict[str, Any], policy: CurrentLimitPolicy) -> Limit:
    only(args, {"limit", "unit", "connectorId", "numberPhases"}, "set_current_limit")
    limit = args.get("limit")
    if not isinstance(limit, (int, float)) or isinstance(limit, bool) or limit < 0:
        raise CommandError("set_current_limit: limit must be a number ≥ 0 (amps or watts)")
    unit = args.get("unit", "A")
    if unit not in ("A", "W"):
        raise CommandError(f"set_current_limit: unit must be \"A\" or \"W\", got {unit!r}")
    connector = int_arg(args, "connectorId", 0, "set_current_limit") or 0
    phases = int_arg(args, "numberPhases", None, "set_current_limit")
    if unit == "W" and policy.force_amps:
        limit = limit / ((phases or policy.phases) * policy.voltage)
        unit = "A"
    if unit == "A":
        if policy.round_amps:
            limit = float(int(limit))
        if limit < policy.min_current:
            # Many chargers ignore limits below 6 A; a 0 A limit pauses reliably.
            limit = 0.0
    note = "limit below minimum current: pausing with 0 A" if (
        unit == "A" and args["limit"] > 0 and limit == 0.0
    ) else None
    if note is None and unit == "A" and args.get("unit", "A") == "W":
        note = f"converted to {round(limit, 1)} A"
    return Limit(round(float(limit), 1), unit, connector, phases, note)


def charging_enabled(args: dict[str, Any], facts: StationFacts) -> Plan:
    only(args, {"enabled"}, "charging_enabled")
    enabled = args.get("enabled")
    if not isinstance(enabled, bool):
        raise CommandError("charging_enabled: args.enabled must be true or false")
    return Plan("", None, None, {}, local={"charging_enabled": enabled})
