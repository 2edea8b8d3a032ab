"""daemon/fastjson.py: orjson on the hot path, the standard library behind it for what orjson refuses."""

from __future__ import annotations

import json
import math

import pytest

from daemon import fastjson


def test_loads_reads_what_orjson_refuses_as_the_standard_library_does() -> None:
    """NaN/Infinity and a lone surrogate escape are read (as json.loads reads them); malformed JSON is a ValueError."""
    values = fastjson.loads(b'{"a": [NaN, Infinity], "s": "\\ud800", "ok": "\xc3\xa9"}')
    assert math.isnan(values["a"][0]) and values["a"][1] == math.inf
    assert values["s"] == "\ud800" and values["ok"] == "é"
    with pytest.raises(ValueError):
        fastjson.loads(b'{"choices": [')


def test_dumps_writes_what_orjson_refuses_and_reads_back_the_same() -> None:
    """Integers past 64 bits, non-string keys and lone surrogates are encoded by the standard library; what is not
    JSON at all is a TypeError; everything reads back equal to json's own round trip."""
    for value in ({"n": 2**70}, {1: "one"}, {"s": "\ud800"}, {"é": ["ok", 1.5, None, True]}):
        assert json.loads(fastjson.dumps(value)) == json.loads(json.dumps(value))
    with pytest.raises(TypeError):
        fastjson.dumps({"a": object()})
