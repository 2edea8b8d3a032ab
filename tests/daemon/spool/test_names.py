"""Names as bytes: what is shown of a file name, and the name finetuned keeps an input under."""

from __future__ import annotations

import os

from daemon.spool.names import MAX_KEPT_NAME_BYTES, kept_name, printable


def test_printable_escapes_undecodable_bytes_and_control_characters() -> None:
    """A name holding a non-UTF-8 byte and a newline shows them as \\xNN and encodes as UTF-8."""
    name = os.fsdecode(b"bad\xff\nname.yaml")
    shown = printable(name)
    assert shown == "bad\\xff\\x0aname.yaml"
    shown.encode("utf-8")


def test_kept_name_keeps_ordinary_names_and_bounds_the_rest() -> None:
    """An ordinary name is kept as is; an undecodable or 240-character one becomes a short safe name that keeps
    its suffix and differs for different originals."""
    assert kept_name("my spec.yaml") == "my spec.yaml"
    odd = kept_name(os.fsdecode(b"caf\xe9.yaml"))
    assert odd.endswith(".yaml") and odd.isascii() and odd.startswith("caf_xe9-")
    long_a, long_b = kept_name("a" * 235 + ".json"), kept_name("a" * 234 + "b.json")
    assert long_a != long_b and long_a.endswith(".json")
    assert len(long_a.encode()) <= MAX_KEPT_NAME_BYTES
