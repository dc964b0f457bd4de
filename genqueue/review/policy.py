"""Which outputs need a person: the review policy, and what a job shows before it has a review row.

A job asks for review "auto" (the default), "required" or "none". "auto" resolves to a policy:
- ``all``: every output goes to moderators;
- ``flagged``: clean outputs are approved by the system at once, flagged ones go to moderators;
- ``none``: outputs are delivered without review (``not_required``).
The model's policy and the submitting key's policy (either may be unset) are compared and the stricter
wins, so that a model an operator marked ``all`` is not delivered unreviewed because a key says ``none``;
with neither set, the deployment's GENQUEUE_REVIEW_AUTO_POLICY applies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, or_

from genqueue.db.models import Job, Review
from genqueue.enums import JobStatus, ReviewPolicy, ReviewStatus
from genqueue.settings import Settings

AUTO_POLICIES = ("none", "flagged", "all")  # in order of strictness
SYSTEM = "system"  # decided_by of outputs the system approved; audit events by the system have actor NULL


@dataclass(frozen=True)
class ReviewConfig:
    auto_policy: str = "flagged"
    model_policy: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> ReviewConfig:
        return cls(settings.review_auto_policy, dict(settings.review_model_policy))


def resolve_auto(config: ReviewConfig, model: str, key_policy: str | None) -> str:
    """What review="auto" means for this model and key."""
    chosen = [p for p in (config.model_policy.get(model), key_policy) if p in AUTO_POLICIES]
    if not chosen:
        return config.auto_policy
    return max(chosen, key=AUTO_POLICIES.index)


@dataclass(frozen=True)
class Initial:
    status: ReviewStatus
    by_system: bool  # approved at once by the ``flagged`` policy


def initial(job_policy: str, auto: str, flags: Sequence[dict[str, Any]]) -> Initial:
    """The review status a fresh output starts in."""
    if job_policy == ReviewPolicy.none.value:
        return Initial(ReviewStatus.not_required, False)
    if job_policy == ReviewPolicy.required.value or auto == "all":
        return Initial(ReviewStatus.pending, False)
    if auto == "none":
        return Initial(ReviewStatus.not_required, False)
    if flags:
        return Initial(ReviewStatus.pending, False)
    return Initial(ReviewStatus.approved, True)


# A job has no review row until its output is written (and never one when it failed or was canceled).
def shown_status(job_status: str, job_policy: str, review_status: str | None) -> ReviewStatus:
    """The review status a job shows: its row's, or, without one, what the row will start as."""
    if review_status is not None:
        return ReviewStatus(review_status)
    if job_policy == ReviewPolicy.none.value or job_status in (JobStatus.failed.value, JobStatus.canceled.value):
        return ReviewStatus.not_required
    return ReviewStatus.pending


def status_filter(wanted: str) -> ColumnElement[bool]:
    """SQL for "the job shows review status ``wanted``" (as :func:`shown_status`), over jobs outer-joined
    to reviews."""
    no_output = Job.status.in_([JobStatus.failed.value, JobStatus.canceled.value])
    exempt = or_(Job.review_policy == ReviewPolicy.none.value, no_output)
    if wanted == ReviewStatus.pending.value:
        return or_(Review.status == wanted, and_(Review.job_id.is_(None), ~exempt))
    if wanted == ReviewStatus.not_required.value:
        return or_(Review.status == wanted, and_(Review.job_id.is_(None), exempt))
    return Review.status == wanted
