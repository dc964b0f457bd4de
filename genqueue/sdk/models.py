"""Typed answers of the API. Fields the server adds later are kept (``extra="allow"``), so an older SDK
reads a newer server."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

TERMINAL = frozenset({"succeeded", "failed", "canceled"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class JobError(_Model):
    code: str
    message: str = ""


class Review(_Model):
    status: str
    flags: list[dict[str, Any]] = Field(default_factory=list)
    decided_by: str | None = None
    reason: str | None = None


class Job(_Model):
    id: str
    model: str
    model_version: str = ""
    kind: str = ""
    status: str
    priority: int = 5
    input: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    output: dict[str, Any] | None = None
    error: JobError | None = None
    review: Review | None = None
    attempts: int = 0
    created_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    batch_id: str | None = None
    # Set once retention deleted the job's output and images; the job itself stays readable.
    expired_at: dt.datetime | None = None

    @property
    def done(self) -> bool:
        """Whether the job has ended (succeeded, failed or canceled)."""
        return self.status in TERMINAL

    @property
    def text(self) -> str | None:
        """A text job's first completion (``output["texts"][0]``), when it has one."""
        texts = (self.output or {}).get("texts") or []
        return str(texts[0]) if texts else None


class ItemError(_Model):
    """One bulk item that the API refused; the others went through."""

    code: str
    message: str
    details: list[Any] = Field(default_factory=list)


class JobPage(_Model):
    data: list[Job]
    next_cursor: str | None = None


def job_or_error(item: dict[str, Any]) -> Job | ItemError:
    if "error" in item and "id" not in item:
        return ItemError.model_validate(item["error"])
    return Job.model_validate(item)
