"""Logging for every genqueue process: JSON lines in production, readable text in development.

A job's lines carry ``job_id``, ``model``, ``batch_id`` and ``worker`` wherever they are known, so that one
``grep <job id>`` over the API's and the workers' logs follows a job from submit to its final state. The
fields come from two places: ``bind()`` sets them for everything logged in the current context (a
contextvar, so threads and asyncio tasks each keep their own), and ``extra={...}`` sets them on one line.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

FIELDS = ("job_id", "model", "batch_id", "worker")

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("genqueue_log_context", default={})  # noqa: B039 - never mutated, only replaced
_process: dict[str, Any] = {}  # fields of the whole process (the service name, the worker id)

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Attach ``fields`` to every line logged inside the block (in this thread or task)."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def set_process_fields(**fields: Any) -> None:
    """Fields on every line of this process, e.g. ``worker`` in a worker."""
    _process.update({k: v for k, v in fields.items() if v is not None})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out = {**_process, **_context.get()}
    out.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")})
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the job fields and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The usual one-line text, with the job fields appended as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        if not fields:
            return text
        tail = " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in fields.items()
                        if k != "service")
        return f"{text} [{tail}]" if tail else text


def configure(fmt: str, level: str = "INFO", service: str | None = None) -> None:
    """Replace the root logger's handlers with one stderr handler in ``fmt`` ("json" or "text")."""
    set_process_fields(service=service)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Alembic logs each migration step at INFO on every start.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def job_event(log: logging.Logger, event: str, job_id: str, **fields: Any) -> None:
    """One line of a job's trail (``submitted``, ``claimed``, ``succeeded``, ...), found by grepping its id."""
    if log.isEnabledFor(logging.INFO):
        log.info("job %s %s", job_id, event, extra={"job_id": job_id, "event": event,
                                                     **{k: v for k, v in fields.items() if v is not None}})


def jobs_event(log: logging.Logger, event: str, job_ids: Sequence[str], **fields: Any) -> None:
    """One line for the same step of many jobs (a bulk's or a batch chunk's submit), their ids in ``job_ids``:
    grepping any one id still finds it. A line per job cost a bulk submit about a seventh of its CPU."""
    if job_ids and log.isEnabledFor(logging.INFO):
        log.info("%d jobs %s", len(job_ids), event,
                 extra={"job_ids": list(job_ids), "event": event, **{k: v for k, v in fields.items() if v is not None}})


def jobs_events(log: logging.Logger, event: str, rows: Sequence[Mapping[str, Any]], **fields: Any) -> None:
    """:func:`jobs_event` for job rows, one line per model (a line's ``model`` is its jobs' model)."""
    by_model: dict[str, list[str]] = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r["id"])
    for model, ids in by_model.items():
        jobs_event(log, event, ids, model=model, **fields)
