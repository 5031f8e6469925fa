"""JSON text the service writes: responses, outbox rows and the database's JSON columns.

msgspec writes it several times faster than `json.dumps` (the screening page, several kilobytes per call,
was encoded twice on its way to the database: a tenth of a small call's CPU). Datetimes are written as
RFC 3339 text, which `datetime.fromisoformat` reads back; text written by earlier versions with the
standard library (NaN tokens included) is still read.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import msgspec

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder()


def encode(value: Any) -> bytes:
    """Compact UTF-8 JSON of plain data (dicts, lists, tuples, strings, numbers, None, datetimes).

    Text from a chart can hold a lone surrogate (read through the standard library's decoder), which UTF-8
    cannot carry: such a value is written by the standard library instead, as a \\u escape."""
    try:
        return _ENCODER.encode(value)
    except UnicodeEncodeError:
        return json.dumps(value, default=_isoformat, separators=(",", ":")).encode("ascii")


def dumps(value: Any) -> str:
    return encode(value).decode("utf-8")


def _isoformat(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def loads(text: str | bytes) -> Any:
    try:
        return _DECODER.decode(text)
    except msgspec.DecodeError:
        return json.loads(text)
