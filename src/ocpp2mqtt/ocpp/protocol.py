"""OCPP-J framing and validation for OCPP 1.6, 2.0.1 and 2.1: pure functions, no I/O.

The `ocpp` package is the source of truth for schemas, enums and call classes.
What we replace is its slow path: schemas are compiled once instead of being
interpreted by jsonschema on every message, and payloads stay in the wire's
camelCase so no per-message case conversion runs. A payload is checked by
jsonschema-rs (compiled Rust, ~5 µs for a MeterValues); only one it finds invalid
goes through fastjsonschema (compiled Python, ~30 µs), whose verdict and error
name the CALLERROR. tests/test_validation.py holds the two to the same verdicts.

Where the `ocpp` package and the OCPP specification disagree, the specification
wins: CALLERROR codes and descriptions come from each version's OCPP-J table
(`OcppVersion.descriptions`), not from the package's exception classes (whose
NotImplemented/NotSupported texts are swapped, mobilityhouse/ocpp #426, #493).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import import_module, resources
from typing import Any

import fastjsonschema
import orjson

jsonschema_rs: Any
try:
    import jsonschema_rs
except ImportError:  # pragma: no cover - a platform without its wheel: the Python path
    jsonschema_rs = None

CALL, CALLRESULT, CALLERROR, CALLRESULTERROR, SEND = 2, 3, 4, 5, 6
MAX_UNIQUE_ID_LENGTH = 36
# OCPP integers are stored and re-encoded as 64-bit; a larger one is a type violation
# (answering InternalError would make the charger retry the message forever).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_DEPTH = 32  # OCPP payloads nest about 6 levels; deeper is hostile or broken

_TYPE_TEXT = ("Payload for Action is syntactically correct but at least one of the fields "
              "violates data type constraints (e.g. \"somestring\": 12)")
_COMMON = {
    "NotImplemented": "Requested Action is not known by receiver",
    "NotSupported": "Requested Action is recognized but not supported by the receiver",
    "InternalError": "An internal error occurred and the receiver was not able to process the "
    "requested Action successfully",
    "SecurityError": "During the processing of Action a security issue occurred preventing "
    "receiver from completing the Action successfully",
    "PropertyConstraintViolation": "Payload is syntactically correct but at least one field "
    "contains an invalid value",
    "TypeConstraintViolation": _TYPE_TEXT,
}
# OCPP-J 1.6 §4.2.3.
DESCRIPTIONS_16 = {
    **_COMMON,
    "ProtocolError": "Payload for Action is incomplete",
    "FormationViolation": "Payload for Action is syntactically incorrect or not conform the PDU "
    "structure for Action",
    "OccurenceConstraintViolation": "Payload for Action is syntactically correct but at least "
    "one of the fields violates occurence constraints",
    "GenericError": "Any other error not covered by the previous ones",
}
# OCPP-J 2.0.1 §4.3 (2.1 the same, with "Occurrence" spelled right: the 1.6 typo was
# kept in 2.0.1 and fixed in 2.1, mobilityhouse/ocpp #490).
_DESCRIPTIONS_2X = {
    **_COMMON,
    "FormatViolation": "Payload for Action is syntactically incorrect",
    "GenericError": "Any other error not covered by the more specific error codes in this table",
    "MessageTypeNotSupported": "A message with an Message Type Number received that is not "
    "supported by this implementation.",
    "ProtocolError": "Payload for Action is not conform the PDU structure",
    "RpcFrameworkError": "Content of the call is not a valid RPC Request, for example: "
    "MessageId could not be read.",
}
_OCCURRENCE_TEXT = ("Payload for Action is syntactically correct but at least one of the fields "
                    "violates occurrence constraints")
DESCRIPTIONS_201 = {**_DESCRIPTIONS_2X, "OccurenceConstraintViolation": _OCCURRENCE_TEXT}
DESCRIPTIONS_21 = {**_DESCRIPTIONS_2X, "OccurrenceConstraintViolation": _OCCURRENCE_TEXT}

# What a charging station may send to a central system, per version (we answer these).
CHARGER_ACTIONS_16 = frozenset({
    "Authorize", "BootNotification", "DataTransfer", "DiagnosticsStatusNotification",
    "FirmwareStatusNotification", "Heartbeat", "MeterValues", "StartTransaction",
    "StatusNotification", "StopTransaction",
})
# 1.6 security-whitepaper messages a charger sends: recognised, not supported (yet).
CHARGER_ACTIONS_16_SECURITY = frozenset({
    "LogStatusNotification", "SecurityEventNotification", "SignCertificate",
    "SignedFirmwareStatusNotification",
})
CHARGER_ACTIONS_201 = frozenset({
    "Authorize", "BootNotification", "ClearedChargingLimit", "DataTransfer",
    "FirmwareStatusNotification", "Get15118EVCertificate", "GetCertificateStatus", "Heartbeat",
    "LogStatusNotification", "MeterValues", "NotifyChargingLimit", "NotifyCustomerInformation",
    "NotifyDisplayMessages", "NotifyEVChargingNeeds", "NotifyEVChargingSchedule", "NotifyEvent",
    "NotifyMonitoringReport", "NotifyReport", "PublishFirmwareStatusNotification",
    "ReportChargingProfiles", "ReservationStatusUpdate", "SecurityEventNotification",
    "SignCertificate", "StatusNotification", "TransactionEvent",
})
CHARGER_ACTIONS_21 = CHARGER_ACTIONS_201 | frozenset({
    "BatterySwap", "ClosePeriodicEventStream", "GetCertificateChainStatus", "NotifyDERAlarm",
    "NotifyDERStartStop", "NotifyPriorityCharging", "NotifySettlement",
    "OpenPeriodicEventStream", "PullDynamicScheduleUpdate", "ReportDERControl",
    "VatNumberValidation",
})
# OCPP 2.1 SEND messages (message type 6): never answered.
SEND_ACTIONS_21 = frozenset({"NotifyPeriodicEventStream"})


@dataclass(frozen=True, slots=True, eq=False)  # one object per version: compared by identity
class OcppVersion:
    """What differs between OCPP versions at the framing and validation level."""

    name: str  # "1.6", "2.0.1", "2.1": as published on state/ocpp_version
    subprotocol: str  # the WebSocket subprotocol
    package: str  # the `ocpp` package's module with schemas, enums and call classes
    request_suffix: str  # schema file of a request: f"{action}{suffix}.json"
    charger_actions: frozenset[str]
    recognised_actions: frozenset[str]  # known, but not accepted from a charger
    descriptions: Mapping[str, str]
    format_code: str  # payload (or, 1.6, frame) not well-formed
    frame_code: str  # a frame that is not a valid RPC message
    message_type_code: str  # an unknown message type number
    required_code: str  # a required field is missing
    structure_code: str  # a field the schema does not have
    occurrence_code: str
    send_actions: frozenset[str] = frozenset()

    def schema_name(self, action: str, response: bool = False) -> str:
        return f"{action}Response" if response else f"{action}{self.request_suffix}"

    def error(self, code: str, cause: str, **details: Any) -> CallErrorReply:
        return CallErrorReply(code, {"cause": cause, **details})


class CallErrorReply(Exception):
    """A CALL (or frame) to answer with a CALLERROR of `code`; `details` says why."""

    def __init__(self, code: str, details: dict[str, Any] | None = None):
        super().__init__(code)
        self.code = code
        self.details = details or {}


def _actions(package: str) -> frozenset[str]:
    enums = import_module(f"{package}.enums")
    return frozenset(a.value for a in enums.Action)


V16 = OcppVersion(
    name="1.6", subprotocol="ocpp1.6", package="ocpp.v16", request_suffix="",
    charger_actions=CHARGER_ACTIONS_16,
    recognised_actions=_actions("ocpp.v16") - CHARGER_ACTIONS_16,
    descriptions=DESCRIPTIONS_16,
    # OCPP 1.6 has no code for an unreadable frame or an unknown message type: such a
    # frame does not conform to the PDU structure.
    format_code="FormationViolation", frame_code="FormationViolation",
    message_type_code="FormationViolation", required_code="ProtocolError",
    structure_code="FormationViolation", occurrence_code="OccurenceConstraintViolation",
)
V201 = OcppVersion(
    name="2.0.1", subprotocol="ocpp2.0.1", package="ocpp.v201", request_suffix="Request",
    charger_actions=CHARGER_ACTIONS_201,
    recognised_actions=_actions("ocpp.v201") - CHARGER_ACTIONS_201,
    descriptions=DESCRIPTIONS_201,
    format_code="FormatViolation", frame_code="RpcFrameworkError",
    message_type_code="MessageTypeNotSupported", required_code="OccurenceConstraintViolation",
    structure_code="ProtocolError", occurrence_code="OccurenceConstraintViolation",
)
V21 = OcppVersion(
    name="2.1", subprotocol="ocpp2.1", package="ocpp.v21", request_suffix="Request",
    charger_actions=CHARGER_ACTIONS_21 | SEND_ACTIONS_21,
    recognised_actions=_actions("ocpp.v21") - CHARGER_ACTIONS_21,
    descriptions=DESCRIPTIONS_21,
    format_code="FormatViolation", frame_code="RpcFrameworkError",
    message_type_code="MessageTypeNotSupported", required_code="OccurrenceConstraintViolation",
    structure_code="ProtocolError", occurrence_code="OccurrenceConstraintViolation",
    send_actions=SEND_ACTIONS_21,
)
VERSIONS: dict[str, OcppVersion] = {v.subprotocol: v for v in (V21, V201, V16)}
BY_NAME: dict[str, OcppVersion] = {v.name: v for v in VERSIONS.values()}


class FrameError(Exception):
    """A frame that must be answered with a CALLERROR."""

    def __init__(self, unique_id: str, error: CallErrorReply):
        super().__init__(error.code)
        self.unique_id = unique_id
        self.error = error


@dataclass(slots=True)
class Call:
    unique_id: str
    action: str
    payload: dict[str, Any]
    send: bool = False  # OCPP 2.1 SEND: never answered


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
    after_result: bool = False  # OCPP 2.1 CALLRESULTERROR: about our answer to its CALL


Frame = Call | CallResult | CallError


# --- schemas ---------------------------------------------------------------------------------
def _permissive_date_time(_value: str) -> bool:
    # The `ocpp` package validates with jsonschema without a format checker, so
    # "date-time" is not enforced there either. Real firmware sends timestamps without
    # a zone or with odd precision; we accept them as text.
    return True


def _drop_multiple_of(schema: Any) -> Any:
    # The 1.6 schemas demand multipleOf 0.1 on charging-rate limits, which floats cannot
    # satisfy reliably (21.4/0.1 != 214). The `ocpp` package works around it with
    # Decimal parsing; we round limits to one decimal where we build them (commands.py)
    # and do not enforce it on input.
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


def _lenient(schema: Any) -> Any:
    """Schemas as real firmware needs them (docs/chargers.md, Known gaps): no string
    length limits, 1.6 sampled values as string or number, any reading context, empty
    sampledValue lists. Types of required fields and everything else still apply."""
    if isinstance(schema, dict):
        out = {}
        for k, v in schema.items():
            if k == "maxLength":
                continue
            if k == "minItems" and schema.get("type") == "array" and \
                    "value" in schema.get("items", {}).get("required", ()):
                continue
            out[k] = _lenient(v)
        props = out.get("properties")
        if isinstance(props, dict):
            value_type = props.get("value", {}).get("type")
            if value_type in ("string", "number") and "context" in props:
                props["value"] = {"type": ["string", "number"]}  # a number as text, or not
            if isinstance(props.get("sampledValue"), dict):
                props["sampledValue"].pop("minItems", None)
            if "context" in props and "enum" in props["context"] and "measurand" in props:
                props["context"] = {"type": "string"}
        definitions = out.get("definitions")
        if isinstance(definitions, dict) and "ReadingContextEnumType" in definitions:
            definitions["ReadingContextEnumType"] = {"type": "string"}
        return out
    if isinstance(schema, list):
        return [_lenient(v) for v in schema]
    return schema


@cache
def load_schema(package: str, name: str) -> dict[str, Any]:
    path = resources.files(package) / "schemas" / f"{name}.json"
    schema: dict[str, Any] = json.loads(path.read_text("utf-8-sig"))
    return schema


def _schema(package: str, name: str, lenient: bool) -> dict[str, Any]:
    schema = _drop_multiple_of(load_schema(package, name))
    if lenient:
        schema = _lenient(schema)
    out: dict[str, Any] = _bound_integers(schema)
    return out


@cache
def full_validator(package: str, name: str, lenient: bool) -> Callable[[Any], Any]:
    """fastjsonschema's validator: raises JsonSchemaValueException naming the rule."""
    return fastjsonschema.compile(_schema(package, name, lenient),
                                  formats={"date-time": _permissive_date_time})


def _formats(schema: Any) -> set[str]:
    if isinstance(schema, dict):
        found = {schema["format"]} if isinstance(schema.get("format"), str) else set()
        return found.union(*(_formats(v) for v in schema.values()))
    if isinstance(schema, list):
        return set().union(*(_formats(v) for v in schema))
    return set()


@cache
def quick_validator(package: str, name: str, lenient: bool) -> Callable[[Any], bool] | None:
    """jsonschema-rs's yes/no, where it can agree with `full_validator`: formats unchecked,
    which is what `_permissive_date_time` does, so only schemas without other formats
    (a firmware URI, …; none of them on the hot path) get one."""
    if jsonschema_rs is None or _formats(load_schema(package, name)) - {"date-time"}:
        return None
    check: Callable[[Any], bool] = jsonschema_rs.validator_for(
        _schema(package, name, lenient), validate_formats=False).is_valid
    return check


@cache
def validator(package: str, name: str, lenient: bool) -> Callable[[Any], Any]:
    """Validator for schema `name` of `package` (e.g. "ocpp.v16", "MeterValues"): returns
    for a valid payload, raises JsonSchemaValueException for an invalid one."""
    quick = quick_validator(package, name, lenient)
    if quick is None:
        return full_validator(package, name, lenient)

    def validate(payload: Any) -> None:
        try:
            if quick(payload):
                return
        except (ValueError, OverflowError, TypeError):
            pass  # a value jsonschema-rs cannot take: the full validator decides
        # compiled on first need (~20 ms each): a fresh gateway's first chargers wait less
        full_validator(package, name, lenient)(payload)

    return validate


def has_schema(version: OcppVersion, name: str) -> bool:
    return (resources.files(version.package) / "schemas" / f"{name}.json").is_file()


def schema_error(exc: fastjsonschema.JsonSchemaValueException,
                 version: OcppVersion) -> CallErrorReply:
    """Map a schema violation to the CALLERROR code the version's table names."""
    field = (exc.name or "").removeprefix("data").lstrip(".") or "payload"
    cause = str(exc.message).replace("data.", "").replace("data ", "payload ")
    rule = exc.rule
    if rule in ("minimum", "maximum") and exc.rule_definition in (INT64_MIN, INT64_MAX):
        return version.error("TypeConstraintViolation",
                             f"{field}: integer out of the 64-bit range", field=field)
    if rule in ("type", "maxLength"):
        code = "TypeConstraintViolation"
    elif rule == "required":
        code = version.required_code
    elif rule in ("enum", "minimum", "maximum", "pattern", "minLength", "const"):
        code = "PropertyConstraintViolation"
    elif rule in ("minItems", "maxItems"):
        code = version.occurrence_code
    elif rule == "additionalProperties":
        code = version.structure_code
    else:  # structural problems
        code = version.format_code
    return version.error(code, cause, field=field)


def validate(version: OcppVersion, name: str, payload: Any, lenient: bool = False) -> None:
    """Raise CallErrorReply if `payload` does not match schema `name` of `version`."""
    try:
        validator(version.package, name, lenient)(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise schema_error(exc, version) from None


# --- frames ------------------------------------------------------------------------------------
def parse_frame(raw: str | bytes, version: OcppVersion = V16) -> Frame:
    """Parse one OCPP-J text frame, raising `FrameError` with the CALLERROR to send.

    A frame whose unique id cannot be read is answered with unique id "-1", the
    convention OCPP 2.0.1 made explicit.
    """
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise FrameError("-1", version.error(version.frame_code,
                                             "frame is not valid JSON")) from None
    if not isinstance(msg, list) or len(msg) < 3:
        raise FrameError("-1", version.error(version.frame_code,
                                             "frame must be a JSON array [type, id, ...]"))
    type_id, unique_id = msg[0], msg[1]
    if not isinstance(unique_id, str) or not unique_id or len(unique_id) > MAX_UNIQUE_ID_LENGTH:
        raise FrameError("-1", version.error(
            version.frame_code, "unique id must be a non-empty string of at most 36 chars"))
    kind = type_id if type(type_id) is int else None
    if kind == CALL or (kind == SEND and version.send_actions):
        if len(msg) != 4 or not isinstance(msg[2], str):
            raise FrameError(unique_id, version.error(
                version.frame_code, f"CALL must be [{kind}, id, action, payload]"))
        if not isinstance(msg[3], dict):
            raise FrameError(unique_id, version.error(version.format_code,
                                                      "CALL payload must be a JSON object"))
        return Call(unique_id, msg[2], msg[3], send=kind == SEND)
    if kind == CALLRESULT:
        if len(msg) != 3:
            raise FrameError(unique_id, version.error(version.frame_code,
                                                      "CALLRESULT must be [3, id, payload]"))
        return CallResult(unique_id, msg[2])
    if kind == CALLERROR or (kind == CALLRESULTERROR and version.send_actions):
        code = msg[2] if isinstance(msg[2], str) else "GenericError"
        description = msg[3] if len(msg) > 3 and isinstance(msg[3], str) else ""
        details = msg[4] if len(msg) > 4 else {}
        return CallError(unique_id, code, description, details, kind == CALLRESULTERROR)
    raise FrameError(unique_id, version.error(
        version.message_type_code,
        f"message type id {str(type_id)[:20]!r} is not one this version knows"))


def tolerate(call: Call) -> None:
    """Repair shapes that are unambiguous but not per schema, in place."""
    if call.action == "MeterValues" and isinstance(call.payload.get("meterValue"), dict):
        call.payload["meterValue"] = [call.payload["meterValue"]]


def check_call(call: Call, version: OcppVersion = V16, lenient: bool = True) -> None:
    """Raise CallErrorReply for an unknown, unsupported or schema-invalid CALL.

    `lenient` (OCPP_LENIENT_SCHEMA, default on) accepts the deviations real firmware
    is known to send (see `_lenient`); off, the schema is applied as written.
    """
    if call.action not in version.charger_actions:
        if call.action in version.recognised_actions:
            raise version.error("NotSupported",
                                f"{call.action} is not accepted from a charge point here")
        raise version.error("NotImplemented", f"unknown action {call.action[:64]!r}")
    if lenient:
        tolerate(call)
    name = call.action if call.send else version.schema_name(call.action)
    validate(version, name, call.payload, lenient)


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


def check_answer(action: str, payload: Any, version: OcppVersion = V16,
                 lenient: bool = True) -> None:
    """Raise InvalidAnswer unless `payload` is a valid `<action>Response` of `version`.

    `lenient` (OCPP_LENIENT_SCHEMA) drops string length limits, as for requests.
    """
    if too_deep(payload):
        raise InvalidAnswer(action, f"nested deeper than {MAX_DEPTH} levels",
                            f"<answer nested deeper than {MAX_DEPTH} levels, not shown>")
    try:
        validate(version, version.schema_name(action, response=True), payload, lenient)
    except CallErrorReply as exc:
        raise InvalidAnswer(action, f"{exc.details.get('cause', exc.code)} ({exc.code})",
                            payload) from None


def encode_result(unique_id: str, payload: dict[str, Any]) -> str:
    return orjson.dumps([CALLRESULT, unique_id, payload]).decode()


def encode_error(unique_id: str, error: CallErrorReply, version: OcppVersion = V16) -> str:
    """A CALLERROR frame with the specification's description of the code."""
    description = version.descriptions.get(error.code, "")
    return orjson.dumps([CALLERROR, unique_id, error.code, description, error.details]).decode()


def encode_call(unique_id: str, action: str, payload: dict[str, Any]) -> str:
    return orjson.dumps([CALL, unique_id, action, payload]).decode()


@cache
def central_system_actions(version: OcppVersion = V16) -> dict[str, type]:
    """The actions a central system sends, by OCPP name → the `ocpp` package's call class."""
    calls = import_module(f"{version.package}.call")
    own = version.charger_actions | (CHARGER_ACTIONS_16_SECURITY if version is V16 else frozenset())
    out = {}
    for action in sorted(_actions(version.package)):
        cls = getattr(calls, action, None)
        if cls is None or (action in own and action != "DataTransfer"):
            continue
        out[action] = cls
    return out


def _fold(key: str) -> str:
    return key.replace("_", "").lower()


def spell_keys(version: OcppVersion, schema_name: str, payload: Any) -> Any:
    """`payload` with every key spelled as the schema spells it (`evse_id` → `evseId`,
    `limit_at_soc` → `limitAtSoC`, 2.1's `limit_l2` → `limit_L2`, `soc` → `soc`), and
    whole numbers where the schema wants integers.

    Keys are matched ignoring case and underscores, property by property along the
    schema, so snake_case and camelCase args both work for every version; the `ocpp`
    package's converter guesses from the key alone and gets some 2.x names wrong.
    A key the schema does not know is left as it is: the schema check names it.
    """
    root = load_schema(version.package, schema_name)
    return _spell(payload, root, root)


def _spell(value: Any, node: Any, root: dict[str, Any]) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = root.get("definitions", {}).get(str(node["$ref"]).rsplit("/", 1)[-1], {})
    if not isinstance(node, dict):
        return value
    if isinstance(value, dict):
        props = node.get("properties", {})
        names = {_fold(name): name for name in props}
        out = {}
        for key, item in value.items():
            name = names.get(_fold(key), key) if isinstance(key, str) else key
            out[name] = _spell(item, props.get(name), root)
        return out
    if isinstance(value, list):
        return [_spell(item, node.get("items"), root) for item in value]
    if isinstance(value, float) and node.get("type") == "integer" and value.is_integer():
        return int(value)  # 16.0 from a dashboard is 16: some chargers refuse "16.0"
    return value
