"""Cutting a byte stream into JSONL lines as it arrives, whatever the pieces."""

from __future__ import annotations

import pytest

from genqueue_api.services.jsonl import LineSplitter, loads


def _split(pieces: list[bytes], max_line_bytes: int = 16) -> list[tuple[int, bytes | None]]:
    s = LineSplitter(max_line_bytes)
    out = []
    for p in pieces:
        out.extend(s.feed(p))
    return out + s.close()


def test_lines_are_numbered_across_any_cut_of_the_input() -> None:
    data = b'\xef\xbb\xbf{"a": 1}\r\n\n{"b": 2}\n{"c"'
    expected = [(1, b'{"a": 1}'), (2, b""), (3, b'{"b": 2}'), (4, b'{"c"')]
    assert _split([data]) == expected
    assert _split([data[i:i + 1] for i in range(len(data))]) == expected  # one byte at a time
    assert _split([data[:5], data[5:13], data[13:]]) == expected


def test_a_line_past_the_limit_is_refused_without_being_held() -> None:
    s = LineSplitter(8)
    assert s.feed(b"short\n" + b"x" * 5) == [(1, b"short")]
    assert s.feed(b"y" * 100) == []
    assert len(s._buf) == 0  # the long line is not kept while it lasts
    assert s.feed(b"zz\nok\n") == [(2, None), (3, b"ok")]
    assert s.close() == []


@pytest.mark.parametrize("raw", [b"{", b'{"x": NaN}', b'{"x": 1e999}', b"\xff", b"[" * 100_000])
def test_loads_refuses_what_post_jobs_refuses(raw: bytes) -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        loads(raw)
