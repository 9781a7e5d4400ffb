"""Valid instances of OCPP JSON schemas, for driving every action of a version.

`instance(schema, full=False)`: the required fields only; `full=True`: every field,
one item per array. Strings are short ASCII (dates are dates), numbers small, enums
their first value. Independent of the code under test: it reads the `ocpp`
package's schema files, and `check(schema, payload)` validates with jsonschema,
the validator the `ocpp` package itself uses.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import jsonschema

TS = "2026-11-30T08:00:00Z"


def load(package: str, name: str) -> dict[str, Any]:
    path = resources.files(package) / "schemas" / f"{name}.json"
    return json.loads(path.read_text("utf-8-sig"))


def check(schema: dict[str, Any], payload: Any) -> None:
    jsonschema.Draft7Validator(schema).validate(payload)


def instance(schema: dict[str, Any], full: bool = False) -> Any:
    return _value(schema, schema, full, "x")


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/definitions/"), ref
        node = root["definitions"][ref.split("/")[-1]]
    return node


def _value(node: dict[str, Any], root: dict[str, Any], full: bool, name: str) -> Any:
    node = _resolve(node, root)
    if "enum" in node:
        return node["enum"][0]
    kind = node.get("type")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object" or "properties" in node:
        required = node.get("required", [])
        props = node.get("properties", {})
        names = [n for n in props if n != "customData"] if full else required
        return {n: _value(props[n], root, full, n) for n in names}
    if kind == "array":
        count = max(node.get("minItems", 1 if full else 0), 1 if full else 0)
        item = node.get("items", {})
        return [_value(item, root, full, name) for _ in range(count)]
    if kind == "string":
        if node.get("format") == "date-time" or name.lower().endswith(("time", "timestamp")):
            return TS
        text = "x" * max(1, node.get("minLength", 1))
        return text[: node.get("maxLength", len(text))]
    if kind in ("integer", "number"):
        low, high = node.get("minimum", 1), node.get("maximum", 1)
        number = min(max(low, 1), high)
        return int(number) if kind == "integer" else float(number)
    if kind == "boolean":
        return False
    return None
