"""Independent checks of our CRD: schema defaulting and CEL rules evaluated with cel-python.

Kept apart from the operator's own ``openapi``/``spec`` code on purpose: the tests compare the
two, so the operator's Python mirror of the CRD cannot drift from what the API server enforces.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """The API server's defaulting: fill absent fields that declare a default, recursively."""
    value = copy.deepcopy(value)
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(sub, value[key])
    elif isinstance(value, list) and "items" in schema:
        value = [apply_defaults(schema["items"], item) for item in value]
    return value


def _celpy() -> Any:
    """cel-python (the dev extra); tests that evaluate CEL are skipped without it."""
    return pytest.importorskip("celpy", reason="cel-python evaluates the CRD's CEL rules")


@functools.cache
def _program(rule: str) -> Any:
    environment = _celpy().Environment()
    return environment.program(environment.compile(rule))


def compile_rule(rule: str) -> None:
    _program(rule)


def cel_errors(schema: dict[str, Any], value: Any) -> list[str]:
    """Messages of every x-kubernetes-validations rule that ``value`` (defaulted) breaks."""
    messages: list[str] = []
    _walk(schema, apply_defaults(schema, value), messages)
    return messages


def _walk(schema: dict[str, Any], value: Any, messages: list[str]) -> None:
    celpy = _celpy()
    for validation in schema.get("x-kubernetes-validations", []):
        try:
            result = _program(validation["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError as exc:  # the API server rejects a rule that errors, too
            messages.append(f"{validation.get('message', validation['rule'])} (error: {exc})")
            continue
        if not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            messages.append(validation.get("message", validation["rule"]))
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                _walk(sub, value[key], messages)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _walk(schema["items"], item, messages)
