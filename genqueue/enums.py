"""State machines shared by the API, the worker and the store."""

from enum import StrEnum


class JobStatus(StrEnum):
    queued = "queued"  # committed to SQL and (to be) published; waiting for a worker
    running = "running"  # a worker holds its lease and the engine is working on it
    succeeded = "succeeded"  # output stored; terminal
    failed = "failed"  # error stored with a code; terminal
    canceled = "canceled"  # canceled by its owner before it finished; terminal

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


class ReviewStatus(StrEnum):
    not_required = "not_required"  # delivered without review
    pending = "pending"  # waiting for a moderator
    approved = "approved"
    rejected = "rejected"
    escalated = "escalated"  # a moderator passed it to an admin


class ReviewPolicy(StrEnum):
    auto = "auto"  # the server's policy decides (GENQUEUE_REVIEW_AUTO_POLICY)
    required = "required"
    none = "none"  # only admins / trusted keys may skip review


class Role(StrEnum):
    client = "client"
    moderator = "moderator"
    admin = "admin"
