"""How JSON columns (job inputs and outputs, metrics, review flags, audit and webhook payloads) are written
and read: orjson, with the standard library behind it for what orjson refuses.

Every submitted and every finished job serializes several JSON columns; the standard library's encoder was
about a quarter of a bulk INSERT's CPU here, and orjson writes the same documents several times faster.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS  # {1: ...} becomes {"1": ...}, as json.dumps writes it


def dumps(value: Any) -> str:
    """``value`` as JSON text. orjson writes NaN and infinities as null (JSON has neither); integers past 64
    bits and strings with lone surrogates, which it refuses, go through json.dumps as before."""
    try:
        return orjson.dumps(value, option=_OPTIONS).decode()
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value)


# A run of 19 digits or more may be an integer past 64 bits, which orjson would read as a float: such text
# (rare, and a float's long mantissa or a long string of digits only costs the slower path) goes to json.loads.
_LONG_DIGITS = re.compile(r"[0-9]{19}")
_LONG_DIGITS_BYTES = re.compile(rb"[0-9]{19}")


def loads(text: str | bytes) -> Any:
    """JSON text back to Python, exactly as json.loads reads it; orjson reads all but what it cannot read
    the same way: NaN (which the standard library once wrote into SQLite) and integers past 64 bits."""
    # Searched as it comes (the drivers hand over str or bytes): no copy of the text on the common path.
    if (_LONG_DIGITS_BYTES if isinstance(text, bytes) else _LONG_DIGITS).search(text):  # type: ignore[arg-type]
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
