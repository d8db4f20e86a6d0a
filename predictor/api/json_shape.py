"""A bound on a JSON body's shape, checked on the raw bytes before anything parses it.

A request body may be tens of megabytes (a ``data:`` URI), but an upscaling request has a
dozen fields: what makes a body expensive is not its size but its shape — millions of keys,
thousands of nesting levels, numbers thousands of digits long — and parsing and validating such a
body costs seconds of the event loop and an error per key. :func:`check_json_shape` walks the
bytes once (strings are skipped at C speed, whatever their length) and stops at the first bound
crossed, so its cost is bounded by :class:`JsonLimits`, not by the body. It is no parser: a body
it lets through may still be invalid JSON, which the parser then reports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from json import JSONDecodeError
from json.decoder import scanstring

from predictor.errors import ValidationFailed


@dataclass(frozen=True)
class JsonLimits:
    """Far above any valid request (depth 5 and ~40 values for a v1 instance with 3 LoRAs)."""

    #: nested objects and arrays
    max_depth: int = 16
    #: keys and values (strings, numbers, literals, objects, arrays), all counted
    max_values: int = 2048
    #: characters of one number literal (2⁶⁴ has 20 digits)
    max_number_chars: int = 64


JSON_LIMITS = JsonLimits()

#: a token outside strings: a string's opening quote, a bracket, a number-like run, a literal
_TOKEN = re.compile(r'"|[{\[]|[}\]]|[-+0-9.eE]+|true|false|null')


def check_json_shape(body: bytes, limits: JsonLimits) -> None:
    """Refuse (422, ``loc`` ``["body"]``) a body past ``limits`` or not UTF-8, before parsing."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _refusal(
            "json_invalid", f"The body is not UTF-8 (byte {exc.start}).", {"error": exc.reason}
        ) from None
    depth = values = 0
    position = 0
    while (match := _TOKEN.search(text, position)) is not None:
        token = match.group()
        position = match.end()
        first = token[0]
        if first in "}]":
            depth -= 1
            continue
        values += 1
        if first == '"':
            try:  # the json module's own string scanner (C): its end, escapes and all
                position = scanstring(text, position)[1]
            except JSONDecodeError:
                return  # not JSON: the parser says where
        elif first in "{[":
            depth += 1
            if depth > limits.max_depth:
                raise _refusal(
                    "json_too_deep",
                    f"The JSON nests deeper than {limits.max_depth} levels.",
                    {"max_depth": limits.max_depth},
                )
        elif len(token) > limits.max_number_chars:
            raise _refusal(
                "json_number_too_long",
                f"A number in the JSON is longer than {limits.max_number_chars} characters.",
                {"max_number_chars": limits.max_number_chars},
            )
        if values > limits.max_values:
            raise _refusal(
                "json_too_many_values",
                f"The JSON holds more than {limits.max_values} keys and values; a request has "
                "a few dozen (unknown fields are refused anyway).",
                {"max_values": limits.max_values},
            )


def _refusal(kind: str, msg: str, ctx: dict) -> ValidationFailed:
    return ValidationFailed([{"type": kind, "loc": ["body"], "msg": msg, "input": {}, "ctx": ctx}])
