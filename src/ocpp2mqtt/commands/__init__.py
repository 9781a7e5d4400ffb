"""MQTT command JSON → a validated OCPP call, or a precise error; the charger's answer →
the result document. Pure.

The action tables are derived from the `ocpp` package's call classes of each OCPP
version: every central-system-initiated operation is an action named in
snake_case (`GetLocalListVersion` → `get_local_list_version`). Args may be
snake_case (as in the original README) or camelCase; they are converted with the
`ocpp` package's own converter and checked against the station's version's schema
before anything is sent. Convenience actions (`set_current_limit`,
`start_charging`, …) are built from station facts the caller passes in
(commands/v16.py, commands/v2x.py); 1.6 commands sent to a 2.x station are
translated (commands/v2x.py).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson
from ocpp.charge_point import camel_to_snake_case, snake_to_camel_case

from ocpp2mqtt.commands import v2x
from ocpp2mqtt.commands import v16 as v16_builders
from ocpp2mqtt.commands.model import (
    ALIASES,
    CONVENIENCE,
    CommandError,
    CurrentLimitPolicy,
    Plan,
    StationFacts,
    normalise_action,
    parse,
    peek_action,
    peek_id,
    schema_check,
    snake,
)
from ocpp2mqtt.ocpp import protocol

OK_STATUSES = frozenset(
    {"Accepted", "AcceptedCanceled", "Unlocked", "Scheduled", "RebootRequired"}
)


@cache
def ocpp_actions(version: protocol.OcppVersion = protocol.V16) -> dict[str, str]:
    """snake_case action → OCPP action, for one version."""
    return {snake(name): name for name in protocol.central_system_actions(version)}


# The 1.6 table, as before (docs and tests read it).
OCPP_ACTIONS = ocpp_actions(protocol.V16)
ALL_ACTIONS = sorted([*OCPP_ACTIONS, *ALIASES, *CONVENIENCE])


def plan(raw: bytes, facts: StationFacts) -> Plan:
    """Parse and validate one command for the station's version; raises CommandError
    naming the problem."""
    command_id, action, args = parse(raw)
    name = normalise_action(action)
    version = facts.version
    try:
        result = _plan(name, action, args, facts)
    except CommandError as exc:
        exc.command_id = command_id
        exc.action = name
        raise
    result.action, result.command_id, result.version = name, command_id, version
    return result


def _plan(name: str, action: str, args: dict[str, Any], facts: StationFacts) -> Plan:
    version = facts.version
    actions = ocpp_actions(version)
    convenience = v16_builders.CONVENIENCE if version is protocol.V16 else v2x.CONVENIENCE
    translation = None if version is protocol.V16 else v2x.TRANSLATIONS.get(name)
    camel = snake_to_camel_case(args)  # the 1.6 args of translations and convenience actions
    if name in convenience:
        result = convenience[name](camel, facts)
    elif name in actions:
        native = protocol.spell_keys(version, version.schema_name(actions[name]), args)
        try:
            schema_check(version, actions[name], native)
            return Plan(name, None, actions[name], native)
        except CommandError as native:
            if translation is None:
                raise
            try:
                result = translation(camel, facts)
                _check(version, result)
            except CommandError as translated:
                raise CommandError(f"{native}; read as an OCPP 1.6 command: {translated}") \
                    from None
            return result
    elif translation is not None:
        result = translation(camel, facts)
    else:
        known = sorted({*actions, *ALIASES, *convenience,
                        *(v2x.TRANSLATIONS if version is not protocol.V16 else ())})
        if version is not protocol.V16 and name in ocpp_actions(protocol.V16):
            raise CommandError(f"{action!r} is an OCPP 1.6 action; this station speaks OCPP "
                               f"{version.name}: known actions: {', '.join(known)}")
        where = "" if version is protocol.V16 else f" for OCPP {version.name}"
        raise CommandError(f"unknown action {action!r}{where}; known actions: "
                           f"{', '.join(known)}")
    _check(version, result)
    return result


def _check(version: protocol.OcppVersion, result: Plan) -> None:
    if result.ocpp_action:
        schema_check(version, result.ocpp_action, result.payload)


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


__all__ = [
    "ALL_ACTIONS", "OCPP_ACTIONS", "OK_STATUSES", "CommandError", "CurrentLimitPolicy", "Plan",
    "StationFacts", "legacy_result_messages", "normalise_action", "ocpp_actions", "parse",
    "peek_action", "peek_id", "plan",
    "result_document", "result_status",
]
