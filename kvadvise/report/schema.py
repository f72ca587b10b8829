"""A small validator for the subset of JSON Schema our documented schemas use.

Supported: allOf, type (or a list of types), required, properties, additionalProperties (bool or schema),
items, enum, minimum, and $ref to `#/$defs/...` or `other.json#/$defs/...` inside report/schemas/.
No dependency on the jsonschema package: the subset is small and this keeps the install lean.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).parent / "schemas"

_TYPES = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
}


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict[str, Any]:
    """Load report/schemas/NAME.json (NAME without extension, or with it)."""
    file_name = name if name.endswith(".json") else f"{name}.json"
    return json.loads((SCHEMA_DIR / file_name).read_text(encoding="utf-8"))


def _type_ok(value: Any, type_name: str) -> bool:
    if type_name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[type_name])


def _resolve(ref: str, current_file: str) -> tuple[dict[str, Any], str]:
    file_part, _, pointer = ref.partition("#")
    file_name = file_part or current_file
    node: Any = load_schema(file_name)
    for key in [k for k in pointer.split("/") if k]:
        node = node[key]
    return node, file_name


def validate(document: Any, schema: dict[str, Any] | str, *, file_name: str | None = None,
             strict: bool = False) -> list[str]:
    """Return a list of problems (empty when the document conforms).

    strict: also report every object key that no schema part names (where additionalProperties is not
    given explicitly), so a schema must document every key a command emits.
    """
    if isinstance(schema, str):
        file_name = schema if schema.endswith(".json") else f"{schema}.json"
        schema = load_schema(file_name)
    problems: list[str] = []
    _check(document, schema, "$", file_name or "", problems)
    if strict:
        _undeclared(document, [(schema, file_name or "")], "$", problems)
    return problems


def _parts(schema: dict[str, Any], file_name: str) -> list[tuple[dict[str, Any], str]]:
    """The schema and everything it pulls in through $ref and allOf, each with the file it lives in."""
    if "$ref" in schema:
        target, target_file = _resolve(schema["$ref"], file_name)
        return _parts(target, target_file)
    found = [(schema, file_name)]
    for part in schema.get("allOf", []):
        found += _parts(part, file_name)
    return found


def _undeclared(value: Any, nodes: list[tuple[dict[str, Any], str]], where: str, problems: list[str]) -> None:
    parts = [part for node, file_name in nodes for part in _parts(node, file_name)]
    if isinstance(value, dict):
        open_map = [(part["additionalProperties"], f) for part, f in parts
                    if isinstance(part.get("additionalProperties"), dict)]
        explicit = any("additionalProperties" in part for part, _ in parts)
        for key, item in value.items():
            named = [(part["properties"][key], f) for part, f in parts if key in part.get("properties", {})]
            if named:
                _undeclared(item, named, f"{where}.{key}", problems)
            elif open_map:
                _undeclared(item, open_map, f"{where}.{key}", problems)
            elif not explicit:
                problems.append(f"{where}: key {key!r} is not in the schema")
    elif isinstance(value, list):
        items = [(part["items"], f) for part, f in parts if "items" in part]
        for index, item in enumerate(value):
            if items:
                _undeclared(item, items, f"{where}[{index}]", problems)


def _check(value: Any, schema: dict[str, Any], where: str, file_name: str, problems: list[str]) -> None:
    if "$ref" in schema:
        target, target_file = _resolve(schema["$ref"], file_name)
        _check(value, target, where, target_file, problems)
        return
    for part in schema.get("allOf", []):
        _check(value, part, where, file_name, problems)
    expected = schema.get("type")
    if expected is not None:
        names = expected if isinstance(expected, list) else [expected]
        if not any(_type_ok(value, n) for n in names):
            problems.append(f"{where}: expected {'/'.join(names)}, got {type(value).__name__}")
            return
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} not one of {schema['enum']}")
    if "minimum" in schema and _type_ok(value, "number") and value < schema["minimum"]:
        problems.append(f"{where}: {value} below minimum {schema['minimum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                problems.append(f"{where}: missing required key {key!r}")
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                _check(item, properties[key], f"{where}.{key}", file_name, problems)
            elif extra is False:
                problems.append(f"{where}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                _check(item, extra, f"{where}.{key}", file_name, problems)
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            _check(item, schema["items"], f"{where}[{index}]", file_name, problems)
