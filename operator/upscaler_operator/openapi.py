"""The API server's structural-schema work (defaults, type and range checks), done again in Python.

A CRD applied with ``--validate=false``, an old API server, or an object written before a schema
change lets anything through; the operator runs every spec through the CRD's own schema so such a
spec ends as a status message naming the field, never as a broken InferenceService. It covers the
keywords ``crd.yaml`` uses; the CEL rules are mirrored in ``spec.py``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
}
_DESCRIPTIONS = {
    "object": "an object",
    "array": "a list",
    "string": "a string",
    "boolean": "true or false",
    "integer": "an integer",
    "number": "a number",
}


def normalize(value: Any, schema: Mapping[str, Any], path: str) -> tuple[Any, list[str]]:
    """``value`` with the schema's defaults applied and nulls pruned, plus every violation.

    Unknown fields are errors here (the API server prunes them silently): with validation off,
    a misspelt field is more likely a mistake than something to drop.
    """
    errors: list[str] = []
    return _walk(value, schema, path, errors), errors


def _type_ok(value: Any, schema: Mapping[str, Any]) -> bool:
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, int | str) and not isinstance(value, bool)
    expected = schema.get("type")
    if expected is None:
        return True
    if expected != "boolean" and isinstance(value, bool):
        return False  # bool is an int in Python, never in JSON
    return isinstance(value, _PYTHON_TYPES[expected])


def _describe(schema: Mapping[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "an integer or a string"
    return _DESCRIPTIONS.get(schema.get("type", ""), "a value")


def _walk(value: Any, schema: Mapping[str, Any], path: str, errors: list[str]) -> Any:
    if not _type_ok(value, schema):
        errors.append(f"{path}: must be {_describe(schema)}, not {type(value).__name__}")
        return value
    _check_scalar(value, schema, path, errors)
    if isinstance(value, dict):
        return _walk_object(value, schema, path, errors)
    if isinstance(value, list):
        return _walk_array(value, schema, path, errors)
    return value


def _check_scalar(value: Any, schema: Mapping[str, Any], path: str, errors: list[str]) -> None:
    if "enum" in schema and value not in schema["enum"]:
        expected = ", ".join(str(item) for item in schema["enum"])
        errors.append(f"{path}: unsupported value {value!r}; expected one of {expected}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: must be at least {schema['minimum']} (got {value})")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: must be at most {schema['maximum']} (got {value})")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(
                f"{path}: must not be empty"
                if schema["minLength"] == 1
                else f"{path}: must be at least {schema['minLength']} characters"
            )
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: must be at most {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")


def _walk_object(
    value: dict[str, Any], schema: Mapping[str, Any], path: str, errors: list[str]
) -> dict[str, Any]:
    properties = schema.get("properties")
    additional = schema.get("additionalProperties")
    if properties is None and additional is None:
        return value  # x-kubernetes-preserve-unknown-fields: taken as it is
    result: dict[str, Any] = {}
    for key, item in value.items():
        if item is None:
            continue  # the API server prunes nulls of non-nullable fields, then defaults them
        if properties is not None and key in properties:
            result[key] = _walk(item, properties[key], f"{path}.{key}", errors)
        elif isinstance(additional, Mapping):
            result[key] = _walk(item, additional, f"{path}[{key}]", errors)
        elif schema.get("x-kubernetes-preserve-unknown-fields"):
            result[key] = item
        else:
            errors.append(f"{path}.{key}: unknown field")
    for key, sub in (properties or {}).items():
        if key not in result and "default" in sub:
            result[key] = _walk(copy.deepcopy(sub["default"]), sub, f"{path}.{key}", errors)
    missing = [key for key in schema.get("required", ()) if key not in result]
    errors.extend(f"{path}.{key}: required" for key in missing)
    return result


def _walk_array(
    value: list[Any], schema: Mapping[str, Any], path: str, errors: list[str]
) -> list[Any]:
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{path}: at most {schema['maxItems']} items (got {len(value)})")
    items = schema.get("items", {})
    result = [_walk(item, items, f"{path}[{index}]", errors) for index, item in enumerate(value)]
    if schema.get("x-kubernetes-list-type") == "map":
        keys = schema.get("x-kubernetes-list-map-keys", ())
        seen: set[tuple[Any, ...]] = set()
        for index, item in enumerate(result):
            if not isinstance(item, dict):
                continue
            identity = tuple(item.get(key) for key in keys)
            if identity in seen:
                errors.append(f"{path}[{index}]: duplicate {', '.join(keys)} {identity[0]!r}")
            seen.add(identity)
    return result
