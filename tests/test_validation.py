"""Schema checks: jsonschema-rs decides, fastjsonschema names the error (ocpp/protocol.py).

The fast path may only answer "valid" where the full validator does: for every schema
of every OCPP version, strict and lenient, a valid instance and hundreds of broken ones
(each field given the wrong type, a number out of range, removed, an unknown field
added, arrays emptied) get the same verdict from both.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from importlib import resources
from typing import Any

import fastjsonschema
import pytest

from ocpp2mqtt.ocpp import protocol
from tests.schema_instances import instance

if protocol.jsonschema_rs is None:  # pragma: no cover
    pytest.skip("jsonschema-rs is not installed", allow_module_level=True)

PACKAGES = ("ocpp.v16", "ocpp.v201", "ocpp.v21")
REPLACEMENTS: list[Any] = [
    0, -1, 1.0, 1.5, True, "", "x", "2026-11-30T08:00:00Z", None, [1], {"a": 1},
    2**63, -(2**63) - 1, "x" * 2000,
]


def schemas() -> list[tuple[str, str]]:
    out = []
    for package in PACKAGES:
        folder = resources.files(package) / "schemas"
        out += [(package, p.name.removesuffix(".json")) for p in folder.iterdir()
                if p.name.endswith(".json")]
    return sorted(out)


def paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*path, index))


def at(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def variants(valid: Any) -> Iterator[Any]:
    for path in paths(valid):
        parent, last = (at(valid, path[:-1]), path[-1]) if path else (None, None)
        for replacement in REPLACEMENTS:
            if not path:
                yield replacement
                continue
            broken = copy.deepcopy(valid)
            at(broken, path[:-1])[last] = replacement
            yield broken
        if isinstance(parent, dict):
            broken = copy.deepcopy(valid)
            del at(broken, path[:-1])[last]
            yield broken
        node = at(valid, path)
        if isinstance(node, dict):
            broken = copy.deepcopy(valid)
            at(broken, path)["unexpectedField"] = 1
            yield broken
        if isinstance(node, list) and node:
            broken = copy.deepcopy(valid)
            at(broken, path).clear()
            yield broken
            broken = copy.deepcopy(valid)
            at(broken, path).extend(copy.deepcopy(node))
            yield broken


def full_verdict(full: Any, payload: Any) -> bool:
    try:
        full(payload)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


@pytest.mark.parametrize("lenient", [False, True])
@pytest.mark.parametrize(("package", "name"), schemas())
def test_the_fast_and_the_full_validator_agree(package, name, lenient):
    full = protocol.full_validator(package, name, lenient)
    quick = protocol.quick_validator(package, name, lenient)
    schema = protocol.load_schema(package, name)
    if quick is None:  # a format jsonschema-rs would not check like fastjsonschema
        assert protocol._formats(schema) - {"date-time"}
        return
    valid = instance(schema, full=True)  # every field: each can be broken or removed
    assert quick(valid) and full_verdict(full, valid)
    for payload in variants(valid):
        assert quick(payload) == full_verdict(full, payload), payload


def test_the_hot_path_has_the_fast_validator():
    for package, name in (("ocpp.v16", "MeterValues"), ("ocpp.v16", "StatusNotification"),
                          ("ocpp.v16", "Heartbeat"), ("ocpp.v201", "MeterValuesRequest"),
                          ("ocpp.v201", "TransactionEventRequest"),
                          ("ocpp.v21", "TransactionEventRequest")):
        assert protocol.quick_validator(package, name, True) is not None, name


def test_an_invalid_payload_is_named_by_the_full_validator():
    validate = protocol.validator("ocpp.v16", "MeterValues", True)
    with pytest.raises(fastjsonschema.JsonSchemaValueException) as exc:
        validate({"connectorId": "1", "meterValue": [{"timestamp": "t", "sampledValue": []}]})
    assert exc.value.rule == "type" and exc.value.name == "data.connectorId"
