"""JSONL reading for batches: a byte stream cut into numbered lines as it arrives, and strict JSON per line."""

from __future__ import annotations

import json
import math
from typing import Any

# A longer line is refused as a whole (and skipped without being held), so that a file without newlines
# cannot make the reader hold it all. A job request is far smaller: a prompt is at most 100,000 characters.
MAX_LINE_BYTES = 1024 * 1024

Line = tuple[int, bytes | None]  # (1-based line number, the line's bytes; None when it was too long)


class LineSplitter:
    """Cuts bytes into lines as they are fed, holding at most one partial line of MAX_LINE_BYTES."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.line = 0  # lines emitted so far
        self._buf = bytearray()
        self._too_long = False

    def feed(self, data: bytes) -> list[Line]:
        out: list[Line] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._emit(data[start:end], out)
            start = end + 1
        rest = data[start:]
        if not self._too_long:
            self._buf += rest
            if len(self._buf) > self.max_line_bytes:
                self._too_long = True
                self._buf.clear()
        return out

    def close(self) -> list[Line]:
        """The last line, when the input does not end with a newline."""
        out: list[Line] = []
        if self._buf or self._too_long:
            self._emit(b"", out)
        return out

    def _emit(self, piece: bytes, out: list[Line]) -> None:
        self.line += 1
        if self._too_long or len(self._buf) + len(piece) > self.max_line_bytes:
            out.append((self.line, None))
        else:
            line = bytes(self._buf) + piece
            if self.line == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # a UTF-8 byte order mark, as some editors write
            out.append((self.line, line[:-1] if line.endswith(b"\r") else line))
        self._buf.clear()
        self._too_long = False


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is beyond the float range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def strict_json(raw: bytes) -> Any:
    """``json.loads`` without Python's NaN and Infinity extensions (PostgreSQL's JSONB refuses them, SQLite
    turns them into null); raises what ``json.loads`` raises, and ValueError for those numbers."""
    return json.loads(raw, parse_constant=_no_constant, parse_float=_finite)


def loads(raw: bytes) -> Any:
    """JSON as POST /v1/jobs reads it: no NaN or Infinity (which a store cannot hold). Raises ValueError with
    a message for the client."""
    try:
        return strict_json(raw)
    except json.JSONDecodeError as e:  # before ValueError, of which it (and UnicodeDecodeError) is a subclass
        raise ValueError(f"not valid JSON: {e.msg} at column {e.colno}") from None
    except UnicodeDecodeError:
        raise ValueError("not valid JSON: not UTF-8") from None
    except RecursionError:
        raise ValueError("not valid JSON: nested too deeply") from None
    except ValueError as e:
        raise ValueError(f"not valid JSON: {str(e)[:200]}") from None
