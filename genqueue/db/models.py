"""SQLAlchemy 2.0 typed models: the source of truth for every job, output and review decision."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from genqueue.enums import JobStatus

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Always timezone-aware UTC in Python; SQLite hands back naive values, which are UTC by construction."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC) if value is not None else None

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    # Only a SHA-256 of the secret is kept; the prefix lets operators recognise a key in logs.
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Trusted client keys may submit review="none".
    trusted: Mapped[bool] = mapped_column(Boolean, default=False)
    # Review policy for this key's review="auto" jobs (all | flagged | none); NULL: the model's or global one.
    review_policy: Mapped[str | None] = mapped_column(String(12), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency"),
        Index("ix_jobs_owner_created", "owner_id", "created_seq"),
        Index("ix_jobs_status_published", "status", "published_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # Monotonic insertion order: a stable, unique sort key for cursor pagination.
    created_seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    model: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(10))
    # Stored as a string with a CHECK constraint (not a native PostgreSQL enum, which a new state would need
    # an ALTER TYPE for); genqueue.jobstate is the one module that moves it.
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, native_enum=False, length=12, create_constraint=True, name="job_status",
             values_callable=lambda e: [m.value for m in e], validate_strings=True), index=True)
    priority: Mapped[int] = mapped_column(Integer, default=5)
    input: Mapped[dict[str, Any]] = mapped_column(JSONType)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    review_policy: Mapped[str] = mapped_column(String(12), default="auto")
    webhook: Mapped[str | None] = mapped_column(Text, nullable=True)
    webhook_events: Mapped[list[str]] = mapped_column(JSONType, default=list)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # SHA-256 of the canonical request body: same key + different body → 409.
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    batch_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)

    output: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    # Reliability: deliveries claimed so far, who holds the lease and until
    # when, and when the message was last published (NULL → never published: the reconciler's job).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    leased_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    published_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The broker message (its Celery task id) that last carried this job; one message carries a chunk of jobs.
    message_id: Mapped[str | None] = mapped_column(String(36), nullable=True)

    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    review: Mapped[Review | None] = relationship(lazy="raise", uselist=False, back_populates="job")


class JobImage(Base):
    """Image outputs live in SQL as bytes so that one transaction stores output and status together."""

    __tablename__ = "job_images"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    format: Mapped[str] = mapped_column(String(8))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Review(Base):
    """One output's review. Every change goes through genqueue.review.state, which writes its audit event."""

    __tablename__ = "reviews"
    __table_args__ = (Index("ix_reviews_queue", "status", "flag_score", "queued_at"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    # The job's model, copied here so that the claim queue and its metrics need no join.
    model: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16), index=True)
    flags: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    flag_score: Mapped[float] = mapped_column(default=0.0)
    # Bumped by every transition: a write guarded by the version it read fails instead of overwriting.
    version: Mapped[int] = mapped_column(Integer, default=0)
    # When the output entered review (or was decided at once): the start of the decision latency.
    queued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(36), nullable=True)
    claim_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(36), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Position in the delivery feed: set when the output becomes deliverable (approved or not_required).
    feed_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True, unique=True)

    job: Mapped[Job] = relationship(lazy="raise", back_populates="review")


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    actor: Mapped[str | None] = mapped_column(String(36), nullable=True)  # api key id; NULL = system
    actor_name: Mapped[str | None] = mapped_column(String(200), nullable=True)  # the key's name then
    action: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Counter(Base):
    """Named monotonic sequences (job order, feed order) that work the same on SQLite and PostgreSQL."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class WebhookDelivery(Base):
    """One webhook event for one job (the outbox): written in the transaction that changed the job, then
    handed to the `webhooks` Celery queue by the relay. Its id is the Standard Webhooks ``webhook-id``, the
    same on every attempt, so that receivers can drop repeats."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(12), default="pending")  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When the relay may hand it to the queue (again): now for a new event, later for a retry in flight.
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class WebhookAttempt(Base):
    """Every delivery attempt: when, the HTTP status (NULL when none came back) and the error."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[float] = mapped_column(default=0.0)


class File(Base):
    """A file in the OpenAI Files API's sense. An uploaded batch input keeps its bytes in ``file_parts``; a
    batch's output and error files (``purpose`` batch_output / batch_error, ``batch_id`` set) hold no bytes:
    their lines are made from the batch's jobs when they are read, so they never go stale or hold a copy."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_owner_created", "owner_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # NULL for generated files
    lines: Mapped[int | None] = mapped_column(Integer, nullable=True)
    batch_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class FilePart(Base):
    """An uploaded file's bytes, cut into parts so that neither the upload nor a read holds the whole file."""

    __tablename__ = "file_parts"

    file_id: Mapped[str] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"), primary_key=True)
    part: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Batch(Base):
    """A JSONL batch (the OpenAI Batch API's model): one job per valid line, its jobs linked by
    ``jobs.batch_id``. Its request counts are counted from those jobs when read, so they follow the run."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_owner_seq", "owner_id", "seq"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)  # list order (newest first)
    owner_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    endpoint: Mapped[str] = mapped_column(String(32))
    # validating (lines still being read) | in_progress | completed | failed | cancelling | cancelled
    status: Mapped[str] = mapped_column(String(16))
    completion_window: Mapped[str] = mapped_column(String(8), default="24h")
    input_file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id", ondelete="SET NULL"), nullable=True)
    output_file_id: Mapped[str] = mapped_column(String(40))
    error_file_id: Mapped[str] = mapped_column(String(40))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType, nullable=True)
    total: Mapped[int] = mapped_column(Integer, default=0)  # lines read so far
    invalid: Mapped[int] = mapped_column(Integer, default=0)  # lines refused by validation
    # Errors of the batch as a whole (too many lines, an empty file); line errors live on batch_requests.
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When the last chunk of lines was stored: a batch still validating long after it has lost its reader
    # (the API process died mid-upload) and is moved on when read.
    read_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    in_progress_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    failed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancelling_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class BatchRequest(Base):
    """One line of a batch: its custom_id and either its job or the reason it was refused."""

    __tablename__ = "batch_requests"
    __table_args__ = (Index("ix_batch_requests_custom_id", "batch_id", "custom_id"),)  # duplicates, chunk by chunk

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1-based line number in the input
    custom_id: Mapped[str | None] = mapped_column(String(512), nullable=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    # {"status", "code", "message", "field"} of a line refused by validation; NULL when its job exists.
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
