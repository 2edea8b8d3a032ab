"""JSON on the evaluation's hot path (chat bodies and answers, saved items, prediction lines): orjson, with the
standard library behind it for the few documents orjson refuses, so going faster never loses an answer or a save.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(raw: bytes | str) -> Any:
    """Parse a JSON document; what orjson refuses and the standard library reads (NaN/Infinity, lone surrogate
    escapes, UTF-16/32 bytes) is read by the standard library. Malformed JSON raises ValueError either way."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON; what orjson cannot encode (integers past 64 bits, non-string keys, lone surrogates) goes
    through the standard library (ASCII with escapes), which raises TypeError for what is not JSON at all."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode()
