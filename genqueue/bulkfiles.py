"""The files of `genqueue bulk`: the input (JSONL job requests), the journal that makes a rerun resume, and
the results (JSONL, one line per input line, written as each job ends).

Every input line gets an idempotency key made from the input file's digest and the line number, so a line
sent twice (after an interrupt that lost the journal's last lines) is answered with the job it made the first
time. The journal (``<out>.state``) records which line became which job; the results file records which
lines are finished. Together they tell a rerun what is left: lines never submitted, and jobs not yet written.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO


class BulkFileError(Exception):
    """A file `genqueue bulk` cannot work with; the message is one line for the user."""


@dataclass
class Line:
    number: int  # 1-based, as editors count
    body: dict[str, Any]


@dataclass
class Input:
    path: Path
    digest: str  # SHA-256 of the file's bytes
    lines: list[Line]
    invalid: list[tuple[int, str]]  # (line number, why) for lines that are not a JSON object

    def key(self, number: int) -> str:
        return f"gqbulk-{self.digest[:24]}-{number}"


def read_input(path: Path) -> Input:
    if not path.is_file():
        raise BulkFileError(f"{path}: no such file")
    h = hashlib.sha256()
    lines: list[Line] = []
    invalid: list[tuple[int, str]] = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            h.update(raw)
            text = raw.strip()
            if not text:
                continue
            try:
                body = json.loads(text)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                invalid.append((number, f"not valid JSON: {e}"))
                continue
            if not isinstance(body, dict):
                invalid.append((number, "not a JSON object (a job request)"))
                continue
            lines.append(Line(number, body))
    return Input(path, h.hexdigest(), lines, invalid)


@dataclass
class Progress:
    """What earlier runs did: line -> job id (submitted) and the lines already in the results file."""

    submitted: dict[int, str] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)
    failed: int = 0  # finished lines that did not succeed


def _records(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSONL file we wrote; a last line cut short by a crash is dropped."""
    out: list[dict[str, Any]] = []
    with path.open("rb") as f:
        for raw in f:
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def load_progress(inp: Input, journal: Path, results: Path | None) -> Progress:
    """Read what earlier runs left. Refuses (BulkFileError) files written for another input file: the results
    file first, since that is the one the user named."""
    done = Progress()
    if results is not None and results.exists():
        for rec in _records(results):
            if rec.get("source_sha256") != inp.digest:
                raise BulkFileError(f"{results} already holds results of {rec.get('source', 'another input file')}, "
                                    f"not of {inp.path}; choose another --out")
            if isinstance(rec.get("line"), int) and rec["line"] not in done.finished:
                done.finished.add(rec["line"])
                done.failed += rec.get("status") != "succeeded"
    if journal.exists():
        for rec in _records(journal):
            if "source_sha256" in rec and rec["source_sha256"] != inp.digest:
                raise BulkFileError(f"{journal} is the journal of {rec.get('source', 'another file')}, not of "
                                    f"{inp.path} (the contents differ); delete it or choose another --out")
            if isinstance(rec.get("line"), int) and isinstance(rec.get("id"), str):
                done.submitted[rec["line"]] = rec["id"]
    return done


class Appender:
    """An append-only JSONL file, flushed after every write, so an interrupt loses at most a line."""

    def __init__(self, path: Path, fsync: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f: TextIO = path.open("a", encoding="utf-8")
        self._fsync = fsync

    def write(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        self._f.write("".join(json.dumps(r, separators=(",", ":"), default=str) + "\n" for r in records))
        self._f.flush()
        if self._fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def result_record(inp: Input, number: int, job: dict[str, Any] | None = None,
                  error: dict[str, Any] | None = None) -> dict[str, Any]:
    """One results line: where it came from, and the job as it ended (or why it never became one)."""
    rec: dict[str, Any] = {"source": str(inp.path), "source_sha256": inp.digest, "line": number}
    if job is not None:
        rec.update({"id": job.get("id"), "status": job.get("status"), "output": job.get("output"),
                    "error": job.get("error"), "metadata": job.get("metadata") or {}})
    else:
        rec.update({"id": None, "status": "rejected", "output": None, "error": error})
    return rec
