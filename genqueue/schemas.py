"""Pydantic request and response models of the public HTTP API (docs/api.md is generated from them)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from genqueue.enums import JobStatus, ReviewPolicy, ReviewStatus

MAX_METADATA_BYTES = 16 * 1024
MAX_STOP_STRINGS = 8
MAX_STOP_LENGTH = 64
MAX_SEED = 2**63 - 1
WebhookEvent = Literal["completed", "review"]
DEFAULT_WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("completed", "review")


MAX_METADATA_DEPTH = 32


def _check_storable(value: Any, depth: int = 0) -> None:
    """Refuse text a SQL store cannot hold, anywhere in a value (dict keys included): U+0000, which PostgreSQL
    stores in neither text nor JSONB, and lone surrogates (JSON's "\\ud800"), which are not UTF-8 at all. Both
    are refused at the door on every backend instead of failing the INSERT or the answer. Nesting is capped
    too: the answer has to serialize what was stored."""
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(f"nested more than {MAX_METADATA_DEPTH} levels deep")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain the NUL character (U+0000)")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must not contain lone UTF-16 surrogates (not valid Unicode text)") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_storable(k, depth + 1)
            _check_storable(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_storable(v, depth + 1)


def storable(value: Any) -> bool:
    """Whether a SQL store can hold ``value`` (see :func:`_check_storable`)."""
    try:
        _check_storable(value)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class TextDefaults:
    """A text request's defaults, the one place they are written: the API's :class:`TextInput`, the worker's
    requests built from stored inputs and the engine's ``TextParams`` all read them here."""

    max_new_tokens: int = 64
    temperature: float = 0.8  # 0 means greedy
    top_k: int = 0  # 0 disables
    top_p: float = 1.0  # 1 disables
    repetition_penalty: float = 1.0  # 1 disables
    no_repeat_ngram_size: int = 0  # 0 disables
    n: int = 1


@dataclass(frozen=True)
class ImageDefaults:
    """An image request's defaults (see :class:`TextDefaults`)."""

    num_images: int = 1
    truncation: float = 1.0  # 1 means none
    format: Literal["png", "webp"] = "png"


TEXT_DEFAULTS = TextDefaults()
IMAGE_DEFAULTS = ImageDefaults()


class TextInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(max_length=100_000)  # the real limit is in tokens, checked against the manifest
    max_new_tokens: int = Field(default=TEXT_DEFAULTS.max_new_tokens, ge=1, le=4096)
    temperature: float = Field(default=TEXT_DEFAULTS.temperature, ge=0.0, le=5.0)  # 0 means greedy
    top_k: int = Field(default=TEXT_DEFAULTS.top_k, ge=0, le=100_000)  # 0 disables
    top_p: float = Field(default=TEXT_DEFAULTS.top_p, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=TEXT_DEFAULTS.repetition_penalty, gt=0.0, le=10.0)
    no_repeat_ngram_size: int = Field(default=TEXT_DEFAULTS.no_repeat_ngram_size, ge=0, le=32)
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOP_STRINGS)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)  # chosen and recorded when missing
    n: int = Field(default=TEXT_DEFAULTS.n, ge=1, le=16)

    @field_validator("prompt", "stop")
    @classmethod
    def _storable(cls, v: Any) -> Any:
        _check_storable(v)
        return v

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, v: list[str]) -> list[str]:
        for s in v:
            if not s:
                raise ValueError("stop strings must not be empty")
            if len(s) > MAX_STOP_LENGTH:
                raise ValueError(f"stop strings are at most {MAX_STOP_LENGTH} characters")
        return v


class ImageInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    num_images: int = Field(default=IMAGE_DEFAULTS.num_images, ge=1, le=64)
    truncation: float = Field(default=IMAGE_DEFAULTS.truncation, gt=0.0, le=1.0)  # 1 means none
    class_label: int | None = Field(default=None, ge=0)
    format: Literal["png", "webp"] = IMAGE_DEFAULTS.format


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=130)  # "name" or "name@version"
    input: dict[str, Any]  # validated as TextInput or ImageInput once the model's kind is known
    priority: int = Field(default=5, ge=0, le=9)  # 0 is highest
    review: ReviewPolicy = ReviewPolicy.auto
    webhook: str | None = Field(default=None, max_length=2048, pattern=r"^https?://")
    webhook_events: list[WebhookEvent] = Field(default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS))
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata", "webhook")
    @classmethod
    def _storable(cls, v: Any) -> Any:
        _check_storable(v)
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, v: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(v, separators=(",", ":")).encode()) > MAX_METADATA_BYTES:
            raise ValueError(f"metadata is larger than {MAX_METADATA_BYTES // 1024} KiB")
        return v


class BulkItem(JobCreate):
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)

    @field_validator("idempotency_key")
    @classmethod
    def _storable_key(cls, v: str | None) -> str | None:
        _check_storable(v)
        return v


class BulkCreate(BaseModel):
    # Items are validated one by one so that one bad item fails alone.
    jobs: list[dict[str, Any]] = Field(min_length=1, max_length=1000)


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[Any] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    error: ErrorBody


class JobError(BaseModel):
    code: str
    message: str


class ReviewFlag(BaseModel):
    rule: str
    score: float


class ReviewInfo(BaseModel):
    status: ReviewStatus
    flags: list[ReviewFlag] = Field(default_factory=list)
    decided_by: str | None = None
    reason: str | None = None


class JobOut(BaseModel):
    id: str
    model: str
    model_version: str
    kind: Literal["text", "image"]
    status: JobStatus
    priority: int
    input: dict[str, Any]
    metadata: dict[str, Any]
    output: dict[str, Any] | None = None
    error: JobError | None = None
    review: ReviewInfo
    attempts: int
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    batch_id: str | None = None
    # When retention (GENQUEUE_RETENTION_DAYS) deleted the job's output and images; null while they are kept.
    expired_at: dt.datetime | None = None


class JobList(BaseModel):
    data: list[JobOut]
    next_cursor: str | None = None


class JobAccepted(BaseModel):
    """A bulk item's answer under ``Prefer: return=minimal``: what a submitter keeps (the id), without the
    echo of its own input. Building and sending the whole job was about a fifth of a bulk request's CPU."""

    id: str
    model: str
    status: JobStatus


class BulkResult(BaseModel):
    # Items in request order: the job, or with Prefer: return=minimal its id, model and status, or the error
    # that refused the item.
    data: list[JobOut | JobAccepted | ErrorResponse]


class ModelVersionOut(BaseModel):
    version: str
    precision: str
    limits: dict[str, Any]
    metrics: dict[str, float]
    sha256: str


class ModelOut(BaseModel):
    name: str
    kind: Literal["text", "image"]
    versions: list[ModelVersionOut]
    latest: str
    served: bool  # a live worker has announced it serves this model
    workers: int


class ModelList(BaseModel):
    data: list[ModelOut]


class QuotaUpdate(BaseModel):
    """A key's limits: a number sets it for this key (0: no limit), null goes back to the deployment's
    default, and a field left out is unchanged."""

    model_config = ConfigDict(extra="forbid")

    requests_per_s: int | None = Field(default=None, ge=0, le=1_000_000)
    jobs_per_min: int | None = Field(default=None, ge=0, le=1_000_000_000)
    jobs_in_flight: int | None = Field(default=None, ge=0, le=100_000_000)


class QuotaOut(BaseModel):
    key_id: str
    requests_per_s: int  # the limits in force for the key (0: none)
    jobs_per_min: int
    jobs_in_flight: int
    overrides: dict[str, int]  # the limits set for this key; the others are the deployment's defaults
    in_flight: int  # the key's jobs counted as queued or running (while it has an in-flight limit)


class JobLookup(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(min_length=1, max_length=1000)
    # Answer only the jobs that have ended (a client following many jobs): the others are neither read nor
    # sent, and are in neither list.
    ended_only: bool = False


class LookupResult(BaseModel):
    data: list[JobOut]  # the jobs found (with ended_only: those that ended), in the order asked
    missing: list[str]  # ids that are no job of the caller's
