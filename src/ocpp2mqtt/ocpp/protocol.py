"""OCPP-J 1.6 framing and validation: pure functions, no I/O.

The `ocpp` package is the source of truth: its JSON schemas, its error
classes (the CALLERROR codes) and its enums. What we replace is its slow
path: schemas are compiled once with fastjsonschema instead of being
interpreted by jsonschema on every message (≈10× faster, see bench/), and
payloads stay in the wire's camelCase so no per-message case conversion runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema
import orjson
from ocpp import exceptions as ocpp_errors
from ocpp.v16 import call as v16_call
from ocpp.v16.enums import Action

CALL, CALLRESULT, CALLERROR = 2, 3, 4
SUBPROTOCOL = "ocpp1.6"
MAX_UNIQUE_ID_LENGTH = 36
# OCPP integers are stored and re-encoded as 64-bit; a larger one is a type violation
# (answering InternalError would make the charger retry the message forever).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# OCPP-J 1.6 §4.2.3, CallError codes and their descriptions as the specification writes them.
# The `ocpp` package swaps the texts of NotImplemented and NotSupported (mobilityhouse/ocpp
# #426, #493); the specification wins, so every CALLERROR we send takes its text from here.
SPEC_DESCRIPTIONS = {
    "NotImplemented": "Requested Action is not known by receiver",
    "NotSupported": "Requested Action is recognized but not supported by the receiver",
    "InternalError": "An internal error occurred and the receiver was not able to process the "
    "requested Action successfully",
    "ProtocolError": "Payload for Action is incomplete",
    "SecurityError": "During the processing of Action a security issue occurred preventing "
    "receiver from completing the Action successfully",
    "FormationViolation": "Payload for Action is syntactically incorrect or not conform the PDU "
    "structure for Action",
    "PropertyConstraintViolation": "Payload is syntactically correct but at least one field "
    "contains an invalid value",
    "OccurenceConstraintViolation": "Payload for Action is syntactically correct but at least "
    "one of the fields violates occurence constraints",
    "TypeConstraintViolation": "Payload for Action is syntactically correct but at least one of "
    "the fields violates data type constraints (e.g. \"somestring\": 12)",
    "GenericError": "Any other error not covered by the previous ones",
}

# Actions a charge point may send to a central system (OCPP 1.6 core and
# firmware/diagnostics profiles). DataTransfer goes both ways.
CHARGER_INITIATED = (
    "Authorize",
    "BootNotification",
    "DataTransfer",
    "DiagnosticsStatusNotification",
    "FirmwareStatusNotification",
    "Heartbeat",
    "MeterValues",
    "StartTransaction",
    "StatusNotification",
    "StopTransaction",
)
KNOWN_ACTIONS = frozenset(a.value for a in Action)
# Security-extension messages a charger sends (answered NotImplemented for now).
CHARGER_INITIATED_SECURITY = frozenset(
    {"LogStatusNotification", "SecurityEventNotification", "SignCertificate",
     "SignedFirmwareStatusNotification"}
)


class FrameError(Exception):
    """A frame that must be answered with a CALLERROR (or closed on)."""

    def __init__(self, unique_id: str, error: ocpp_errors.OCPPError):
        super().__init__(error.description)
        self.unique_id = unique_id
        self.error = error


@dataclass(slots=True)
class Call:
    unique_id: str
    action: str
    payload: dict[str, Any]


@dataclass(slots=True)
class CallResult:
    unique_id: str
    payload: Any


@dataclass(slots=True)
class CallError:
    unique_id: str
    code: str
    description: str
    details: Any


Frame = Call | CallResult | CallError


def _permissive_date_time(_value: str) -> bool:
    # The `ocpp` package validates with jsonschema without a format checker,
    # so "date-time" is not enforced there either. Real firmware sends
    # timestamps without a zone or with odd precision; we accept them as text.
    return True


def _drop_multiple_of(schema: Any) -> Any:
    # The 1.6 schemas demand multipleOf 0.1 on charging-rate limits, which
    # floats cannot satisfy reliably (21.4/0.1 != 214). The `ocpp` package
    # works around it with Decimal parsing; we round limits to one decimal
    # where we build them (commands.py) and do not enforce it on input.
    if isinstance(schema, dict):
        return {k: _drop_multiple_of(v) for k, v in schema.items() if k != "multipleOf"}
    if isinstance(schema, list):
        return [_drop_multiple_of(v) for v in schema]
    return schema


def _bound_integers(schema: Any) -> Any:
    """Every OCPP integer gets the 64-bit range, unless the schema bounds it already."""
    if isinstance(schema, dict):
        out = {k: _bound_integers(v) for k, v in schema.items()}
        if out.get("type") == "integer":
            out.setdefault("minimum", INT64_MIN)
            out.setdefault("maximum", INT64_MAX)
        return out
    if isinstance(schema, list):
        return [_bound_integers(v) for v in schema]
    return schema


@cache
def load_schema(name: str) -> dict[str, Any]:
    path = resources.files("ocpp.v16") / "schemas" / f"{name}.json"
    schema: dict[str, Any] = json.loads(path.read_text("utf-8-sig"))
    return schema


@cache
def validator(name: str) -> Callable[[Any], Any]:
    """Compiled validator for schema `name` (e.g. "MeterValues", "ResetResponse")."""
    schema = _bound_integers(_drop_multiple_of(load_schema(name)))
    return fastjsonschema.compile(schema, formats={"date-time": _permissive_date_time})


def schema_error(exc: fastjsonschema.JsonSchemaValueException) -> ocpp_errors.OCPPError:
    """Map a schema violation to the OCPP-J CALLERROR the `ocpp` package would use."""
    field = (exc.name or "").removeprefix("data").lstrip(".") or "payload"
    cause = str(exc.message).replace("data.", "").replace("data ", "payload ")
    details = {"cause": cause, "field": field}
    rule = exc.rule
    if rule in ("minimum", "maximum") and exc.rule_definition in (INT64_MIN, INT64_MAX):
        details["cause"] = f"{field}: integer out of the 64-bit range"
        cls = ocpp_errors.TypeConstraintViolationError
    elif rule in ("type", "maxLength"):
        cls = ocpp_errors.TypeConstraintViolationError
    elif rule == "required":
        cls = ocpp_errors.ProtocolError
    elif rule in ("enum", "minimum", "maximum", "pattern"):
        cls = ocpp_errors.PropertyConstraintViolationError
    elif rule in ("minItems", "maxItems"):
        cls = ocpp_errors.OccurenceConstraintViolationError
    else:  # additionalProperties and structural problems
        cls = ocpp_errors.FormationViolationError
    return cls(details=details)


def validate(name: str, payload: Any) -> None:
    """Raise the right `OCPPError` if `payload` does not match schema `name`."""
    try:
        validator(name)(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise schema_error(exc) from None


def parse_frame(raw: str | bytes) -> Frame:
    """Parse one OCPP-J text frame, raising `FrameError` with the CALLERROR to send.

    A frame whose unique id cannot be read is answered with unique id "-1",
    the convention OCPP 2.0.1 made explicit.
    """
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise FrameError(
            "-1", ocpp_errors.FormationViolationError(details={"cause": "frame is not valid JSON"})
        ) from None
    if not isinstance(msg, list) or len(msg) < 3:
        raise FrameError(
            "-1",
            ocpp_errors.FormationViolationError(
                details={"cause": "frame must be a JSON array [type, id, ...]"}
            ),
        )
    type_id, unique_id = msg[0], msg[1]
    if not isinstance(unique_id, str) or not unique_id or len(unique_id) > MAX_UNIQUE_ID_LENGTH:
        raise FrameError(
            "-1",
            ocpp_errors.FormationViolationError(
                details={"cause": "unique id must be a non-empty string of at most 36 chars"}
            ),
        )
    if type_id == CALL and type(type_id) is int:
        if len(msg) != 4 or not isinstance(msg[2], str):
            raise FrameError(
                unique_id,
                ocpp_errors.FormationViolationError(
                    details={"cause": "CALL must be [2, id, action, payload]"}
                ),
            )
        if not isinstance(msg[3], dict):
            raise FrameError(
                unique_id,
                ocpp_errors.FormationViolationError(
                    details={"cause": "CALL payload must be a JSON object"}
                ),
            )
        return Call(unique_id, msg[2], msg[3])
    if type_id == CALLRESULT and type(type_id) is int:
        if len(msg) != 3:
            raise FrameError(
                unique_id,
                ocpp_errors.FormationViolationError(
                    details={"cause": "CALLRESULT must be [3, id, payload]"}
                ),
            )
        return CallResult(unique_id, msg[2])
    if type_id == CALLERROR and type(type_id) is int:
        code = msg[2] if isinstance(msg[2], str) else "GenericError"
        description = msg[3] if len(msg) > 3 and isinstance(msg[3], str) else ""
        details = msg[4] if len(msg) > 4 else {}
        return CallError(unique_id, code, description, details)
    # OCPP 1.6 has no code for an unknown message type (2.0.1 added MessageTypeNotSupported):
    # such a frame does not conform to the PDU structure.
    raise FrameError(
        unique_id,
        ocpp_errors.FormationViolationError(
            details={"cause": f"message type id {str(type_id)[:20]!r} is not 2, 3 or 4"}
        ),
    )


def _lenient(schema: Any) -> Any:
    """Request schemas as real firmware needs them (docs/chargers.md, Known gaps):
    no string length limits, sampled values as string or number, any reading context,
    empty sampledValue lists. Types of required fields and everything else still apply."""
    if isinstance(schema, dict):
        out = {}
        for k, v in schema.items():
            if k == "maxLength":
                continue
            if k == "minItems" and schema.get("type") == "array" and \
                    schema.get("items", {}).get("required") == ["value"]:
                continue
            out[k] = _lenient(v)
        props = out.get("properties")
        if isinstance(props, dict):
            if "value" in props and props["value"].get("type") == "string" and "context" in props:
                props["value"] = {"type": ["string", "number"]}
            if "context" in props and "enum" in props["context"] and "measurand" in props:
                props["context"] = {"type": "string"}
        return out
    if isinstance(schema, list):
        return [_lenient(v) for v in schema]
    return schema


@cache
def request_validator(name: str) -> Callable[[Any], Any]:
    schema = _bound_integers(_lenient(_drop_multiple_of(load_schema(name))))
    return fastjsonschema.compile(schema, formats={"date-time": _permissive_date_time})


def tolerate(call: Call) -> None:
    """Repair shapes that are unambiguous but not per schema, in place."""
    if call.action == "MeterValues" and isinstance(call.payload.get("meterValue"), dict):
        call.payload["meterValue"] = [call.payload["meterValue"]]


def check_call(call: Call, lenient: bool = True) -> None:
    """Raise the right `OCPPError` for an unsupported or schema-invalid CALL.

    `lenient` (OCPP_LENIENT_SCHEMA, default on) accepts the deviations real
    firmware is known to send (see `_lenient`); off, the schema is applied as written.
    """
    if call.action not in CHARGER_INITIATED:
        if call.action in KNOWN_ACTIONS:
            raise ocpp_errors.NotSupportedError(
                details={"cause": f"{call.action} is not accepted from a charge point here"}
            )
        raise ocpp_errors.NotImplementedError(
            details={"cause": f"unknown action {call.action[:64]!r}"}
        )
    if not lenient:
        validate(call.action, call.payload)
        return
    tolerate(call)
    try:
        request_validator(call.action)(call.payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise schema_error(exc) from None


MAX_DEPTH = 32  # OCPP payloads nest about 6 levels; deeper is hostile or broken


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True if `value` nests lists/objects deeper than `limit` (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


class InvalidAnswer(Exception):
    """A charger's CALLRESULT does not match the action's response schema."""

    def __init__(self, action: str, cause: str, raw: Any):
        super().__init__(f"the charger's answer to {action} is invalid: {cause}")
        self.raw = raw


def check_answer(action: str, payload: Any, lenient: bool = True) -> None:
    """Raise InvalidAnswer unless `payload` is a valid `<action>Response`.

    `lenient` (OCPP_LENIENT_SCHEMA) drops string length limits, as for requests.
    """
    if too_deep(payload):
        raise InvalidAnswer(action, f"nested deeper than {MAX_DEPTH} levels",
                            f"<answer nested deeper than {MAX_DEPTH} levels, not shown>")
    check = request_validator if lenient else validator
    try:
        check(f"{action}Response")(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        error = schema_error(exc)
        details = error.details if isinstance(error.details, dict) else {}
        raise InvalidAnswer(action, f"{details.get('cause', exc.message)} ({error.code})",
                            payload) from None


def encode_result(unique_id: str, payload: dict[str, Any]) -> str:
    return orjson.dumps([CALLRESULT, unique_id, payload]).decode()


def encode_error(unique_id: str, error: ocpp_errors.OCPPError) -> str:
    """A CALLERROR frame with the specification's description of the code."""
    details = error.details if isinstance(error.details, dict) else {}
    description = SPEC_DESCRIPTIONS.get(error.code, error.description or "")
    return orjson.dumps([CALLERROR, unique_id, error.code, description, details]).decode()


def encode_call(unique_id: str, action: str, payload: dict[str, Any]) -> str:
    return orjson.dumps([CALL, unique_id, action, payload]).decode()


# Central-system-initiated actions, derived from the `ocpp` package's call
# classes: every class in ocpp.v16.call whose action a charger may not send.
def central_system_actions() -> dict[str, type]:
    out = {}
    for action in Action:
        cls = getattr(v16_call, action.value, None)
        charger_only = (
            action.value in CHARGER_INITIATED or action.value in CHARGER_INITIATED_SECURITY
        )
        if cls is None or (charger_only and action.value != "DataTransfer"):
            continue
        out[action.value] = cls
    return out
