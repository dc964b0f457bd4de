"""Sections of RESULTS.md that a command of their own records (``python -m bench.bulk_cli --record``,
``python -m bench.reliability --record``): each sits between its markers, is replaced as a whole by its next
record, and survives a rewrite of the rest of the file by ``bench/report.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def markers(name: str, command: str) -> tuple[str, str]:
    return f"<!-- {name}: begin ({command}) -->", f"<!-- {name}: end -->"


def cut(text: str, begin: str, end: str) -> str:
    """``text`` without the section between ``begin`` and ``end`` (markers included)."""
    if begin not in text or end not in text:
        return text
    return text[: text.index(begin)] + text[text.index(end) + len(end) + 1:]


def record(base: Path, name: str, result: dict[str, Any], section: str, begin: str, end: str) -> None:
    """Writes ``results/<name>.json`` and puts ``section`` (which starts with ``begin`` and ends with
    ``end``) at the end of RESULTS.md in place of the previous one."""
    (base / "results").mkdir(parents=True, exist_ok=True)
    (base / "results" / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    md = base / "RESULTS.md"
    text = cut(md.read_text() if md.exists() else "", begin, end)
    md.write_text(text.rstrip("\n") + "\n\n" + section)


def kept(old: str, pairs: list[tuple[str, str]]) -> str:
    """The sections of ``old`` between each pair of markers, in the order they stand."""
    found = [(old.index(b), old[old.index(b): old.index(e) + len(e)]) for b, e in pairs if b in old and e in old]
    return "".join(f"\n{text}\n" for _, text in sorted(found))
