"""The one owner of job state: every guarded transition of a job row, for the API, the worker and the
reconciler alike.

    queued ──claim──▶ running ──write_outcomes──▶ succeeded | failed
      ▲                 │  └──write_outcomes(Release)──▶ queued   (graceful shutdown; the attempt is not counted)
      │                 └──lease runs out──▶ claimable again (a worker died; the reconciler publishes it)
      └──────────── cancel (queued or running) ──▶ canceled

Every function takes a batch: a worker claims all the ids of a broker message (and of any other message
that arrived within a few milliseconds) in one statement, and commits every outcome finished since its last
commit in one transaction (group commit), so the SQL cost per job stays small next to inference. Every
write is still guarded per row by ``status = running AND leased_by = me``, so a duplicate delivery or a job
canceled meanwhile never produces a second output: delivery is at least once, the effect exactly once.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Integer, and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from genqueue.db import bulk
from genqueue.db.hints import unindexed
from genqueue.db.models import Job, JobImage, UTCDateTime, utcnow
from genqueue.enums import JobStatus
from genqueue.review import state as review_state

_ACTIVE = (JobStatus.queued.value, JobStatus.running.value)


@dataclass(frozen=True)
class Claimed:
    job_id: str
    model: str
    model_version: str
    kind: str
    input: dict[str, Any]
    priority: int
    review_policy: str
    created_at: dt.datetime
    started_at: dt.datetime
    attempts: int


@dataclass(frozen=True)
class Skipped:
    # "missing" (no such row) | "other_model" (the message came from another model's queue) | "finished"
    # (terminal, canceled included) | "leased_elsewhere" (another worker holds a live lease) | "poison"
    # | "last_attempt" (a retry on its last attempt, for the worker to claim alone)
    reason: str


@dataclass(frozen=True)
class Success:
    job_id: str
    output: dict[str, Any]
    metrics: dict[str, Any]
    images: Sequence[tuple[bytes, int, int, str]]  # (data, width, height, format), in output order
    flags: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Failure:
    job_id: str
    code: str
    message: str
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Release:
    """Give a job back (graceful shutdown): queued again, and this attempt does not count."""

    job_id: str


Outcome = Success | Failure | Release


def _claimable(now: Any) -> Any:
    """Queued, or running under a lease that ran out by ``now`` (a value, or a bound parameter)."""
    status = unindexed(Job.status)  # every caller names its ids: the primary key must drive the plan
    return or_(status == JobStatus.queued.value,
               and_(status == JobStatus.running.value, unindexed(Job.lease_expires_at) <= now))


@functools.cache
def _claim_statement(scoped: bool, hold_last: bool) -> Any:
    """The claim's UPDATE … RETURNING, built once per variant: with every value a bound parameter, a call
    costs neither the statement's construction nor its cache key, which for a chunk of ids cost more CPU
    than SQLite's work on the rows."""
    t: Any = Job.__table__
    now = bindparam("now", type_=UTCDateTime())
    most = bindparam("max_attempts", type_=Integer())
    limit = or_(t.c.attempts == 0, t.c.attempts < most - 1) if hold_last else t.c.attempts < most
    where = [t.c.id.in_(bindparam("ids", expanding=True)), _claimable(now), limit]
    if scoped:
        where.append(t.c.model.in_(bindparam("models", expanding=True)))
    return (update(t).where(*where)
            .values(status=JobStatus.running.value, leased_by=bindparam("worker"), attempts=t.c.attempts + 1,
                    lease_expires_at=bindparam("until", type_=UTCDateTime()),
                    started_at=func.coalesce(t.c.started_at, now))
            .returning(t.c.id, t.c.model, t.c.model_version, t.c.kind, t.c.input, t.c.priority,
                       t.c.review_policy, t.c.created_at, t.c.started_at, t.c.attempts))


def claim_many(session: Session, job_ids: Sequence[str], worker_id: str, lease_s: float,
               max_attempts: int, models: Sequence[str] | None = None,
               hold_last: bool = False) -> dict[str, Claimed | Skipped]:
    """Claim every claimable job of ``job_ids``; commits. In the common case (every job queued) that is
    one UPDATE … RETURNING; only jobs it did not claim are read back to say why. ``models``: the model
    names the ids' messages were queued for; an id of another model is left alone (a malformed message
    must not make a worker run, or fail, a job that another model's workers will run).

    ``hold_last``: a retried job on its last attempt is not claimed but skipped as ``last_attempt``, for
    the worker to claim and run alone: a job that keeps killing its worker must not take the jobs that
    shared its deliveries down with it on the attempt that decides it is poison."""
    now = utcnow()
    ids = list(dict.fromkeys(job_ids))
    out: dict[str, Claimed | Skipped] = {}
    scope = [Job.model.in_(list(models))] if models is not None else []
    params: dict[str, Any] = {"ids": ids, "now": now, "worker": worker_id, "max_attempts": max_attempts,
                              "until": now + dt.timedelta(seconds=lease_s)}
    if models is not None:
        params["models"] = list(models)
    claimed = session.connection().execute(_claim_statement(models is not None, hold_last), params).all()
    for r in claimed:
        out[r.id] = Claimed(job_id=r.id, model=r.model, model_version=r.model_version, kind=r.kind,
                            input=r.input, priority=r.priority, review_policy=r.review_policy,
                            created_at=r.created_at, started_at=r.started_at or now, attempts=r.attempts)
    rest = [j for j in ids if j not in out]
    if rest:
        rows = {r.id: r for r in session.execute(
            select(Job.id, Job.model, Job.status, Job.attempts, Job.lease_expires_at).where(Job.id.in_(rest)))}
        poison: list[str] = []
        for job_id in rest:
            row = rows.get(job_id)
            if row is None:
                out[job_id] = Skipped("missing")
            elif models is not None and row.model not in models:
                out[job_id] = Skipped("other_model")
            elif row.status not in _ACTIVE:
                out[job_id] = Skipped("finished")
            elif row.status == JobStatus.running.value and row.lease_expires_at and row.lease_expires_at > now:
                out[job_id] = Skipped("leased_elsewhere")
            elif hold_last and row.attempts < max_attempts:
                out[job_id] = Skipped("last_attempt")
            else:
                poison.append(job_id)  # claimable but out of attempts
        if poison:
            # Each earlier delivery died without writing an outcome: stop the loop here.
            failed = set(session.execute(
                update(Job).where(Job.id.in_(poison), *scope, _claimable(now), Job.attempts >= max_attempts)
                .values(status=JobStatus.failed.value, error_code="poison_job",
                        error_message=f"the job was delivered {max_attempts} times without finishing; giving up",
                        finished_at=now, lease_expires_at=None)
                .returning(Job.id).execution_options(synchronize_session=False)
            ).scalars())
            out.update({j: Skipped("poison" if j in failed else "leased_elsewhere") for j in poison})
            review_state.record_outputs(session, [], sorted(failed), now)  # their job.failed webhooks
    session.commit()
    return out


def _mine(worker_id: str) -> Any:
    return and_(unindexed(Job.status) == JobStatus.running.value, unindexed(Job.leased_by) == worker_id)


@dataclass(frozen=True)
class _OutcomeStatements:
    success: Any
    failure: Any
    finished: Any


@functools.cache
def _outcome_statements() -> _OutcomeStatements:
    """``write_outcomes``' statements, built once (see ``_claim_statement``)."""
    t: Any = Job.__table__
    now = bindparam("b_now", type_=UTCDateTime())
    guard = and_(t.c.id == bindparam("b_id"), t.c.status == JobStatus.running.value,
                 t.c.leased_by == bindparam("b_worker"))
    success = update(t).where(guard).values(
        status=JobStatus.succeeded.value, output=bindparam("b_output", type_=t.c.output.type),
        metrics=bindparam("b_metrics", type_=t.c.metrics.type), finished_at=now, lease_expires_at=None,
        error_code=None, error_message=None)
    failure = update(t).where(guard).values(
        status=JobStatus.failed.value, error_code=bindparam("b_code"), error_message=bindparam("b_msg"),
        metrics=bindparam("b_metrics", type_=t.c.metrics.type), finished_at=now, lease_expires_at=None)
    finished = select(t.c.id).where(
        t.c.id.in_(bindparam("ids", expanding=True)), unindexed(t.c.leased_by) == bindparam("worker"),
        unindexed(t.c.finished_at) == bindparam("now", type_=UTCDateTime()),
        unindexed(t.c.status).in_([JobStatus.succeeded.value, JobStatus.failed.value]))
    return _OutcomeStatements(success, failure, finished)


def write_outcomes(session: Session, worker_id: str, outcomes: Sequence[Outcome]) -> dict[str, bool]:
    """Write a batch of outcomes in ONE transaction: for each success its output, images, review row and
    status=succeeded go in together. Returns, per job, whether this worker still owned it (a job canceled
    or re-leased meanwhile is left alone)."""
    now = utcnow()  # also marks which rows this transaction finished
    written: dict[str, bool] = {}
    successes: list[Success] = [o for o in outcomes if isinstance(o, Success)]
    failures: list[Failure] = [o for o in outcomes if isinstance(o, Failure)]
    releases: list[Release] = [o for o in outcomes if isinstance(o, Release)]
    conn = session.connection()
    stmts = _outcome_statements()
    changed = 0
    if successes:
        changed += conn.execute(stmts.success, [
            {"b_id": o.job_id, "b_worker": worker_id, "b_now": now, "b_output": o.output, "b_metrics": o.metrics}
            for o in successes]).rowcount
    if failures:
        changed += conn.execute(stmts.failure, [
            {"b_id": o.job_id, "b_worker": worker_id, "b_now": now, "b_code": o.code, "b_msg": o.message,
             "b_metrics": o.metrics} for o in failures]).rowcount
    if successes or failures:
        ids = [o.job_id for o in successes] + [o.job_id for o in failures]
        if conn.dialect.supports_sane_multi_rowcount and changed == len(ids):
            ours = set(ids)  # every guarded UPDATE matched its row: the common case, no read-back
        else:
            # executemany reports no per-row counts: read back which rows this transaction finished.
            ours = set(conn.execute(stmts.finished, {"ids": ids, "worker": worker_id, "now": now}).scalars())
        written.update({i: i in ours for i in ids})
        done = [o for o in successes if o.job_id in ours]
        images = [{"job_id": o.job_id, "index": i, "data": d, "width": w, "height": h, "format": f}
                  for o in done for i, (d, w, h, f) in enumerate(o.images)]
        if images:
            bulk.insert_rows(session, JobImage, images)
        # The review row, its audit event, its feed position and the job's webhooks: one rule, in genqueue.review.
        review_state.record_outputs(session, [(o.job_id, o.flags) for o in done],
                                    [o.job_id for o in failures if o.job_id in ours], now)
    for o in releases:
        res = session.execute(
            update(Job).where(Job.id == o.job_id, _mine(worker_id))
            .values(status=JobStatus.queued.value, leased_by=None, lease_expires_at=None, attempts=Job.attempts - 1)
            .execution_options(synchronize_session=False)
        )
        written[o.job_id] = bool(res.rowcount)  # type: ignore[attr-defined]
    session.commit()
    return written


def renew_leases(session: Session, job_ids: Sequence[str], worker_id: str, lease_s: float) -> None:
    if not job_ids:
        return
    session.execute(
        update(Job).where(Job.id.in_(list(job_ids)), _mine(worker_id))
        .values(lease_expires_at=utcnow() + dt.timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    session.commit()


def canceled_among(session: Session, job_ids: Sequence[str]) -> list[str]:
    if not job_ids:
        return []
    rows = session.execute(
        select(Job.id).where(Job.id.in_(list(job_ids)), unindexed(Job.status) == JobStatus.canceled.value)
    ).scalars()
    return list(rows)


def cancel(session: Session, job_id: str) -> bool:
    """Queued or running → canceled (the owner asked). False when the job had already ended. A running
    job's worker sees the cancel between steps and writes nothing: its writes are guarded by status."""
    res = session.execute(
        update(Job).where(Job.id == job_id, Job.status.in_(_ACTIVE))
        .values(status=JobStatus.canceled.value, finished_at=utcnow(), lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]


def cancel_queued(session: Session, job_ids: Sequence[str]) -> list[str]:
    """Queued → canceled for the ids given (a batch being canceled); running jobs are left to finish.
    Returns the ids that were canceled."""
    if not job_ids:
        return []
    rows = session.execute(
        update(Job).where(Job.id.in_(list(job_ids)), unindexed(Job.status) == JobStatus.queued.value)
        .values(status=JobStatus.canceled.value, finished_at=utcnow(), lease_expires_at=None)
        .returning(Job.id).execution_options(synchronize_session=False)
    ).scalars()
    return list(rows)


def mark_published(session: Session, chunks: Sequence[tuple[str, Sequence[str]]], at: dt.datetime | None = None) -> None:
    """Record that each chunk's ids went out in the message named by its id. The message id is what lets
    the reconciler count the messages Redis should hold (one message carries many jobs)."""
    when = at or utcnow()
    conn = session.connection()
    for message_id, ids in chunks:
        conn.execute(_mark_published_statement(), {"ids": list(ids), "when": when, "message_id": message_id})


@functools.cache
def _mark_published_statement() -> Any:
    """Built once (see ``_claim_statement``): the API's publisher runs it for every coalesced message."""
    t: Any = Job.__table__
    return (update(t).where(t.c.id.in_(bindparam("ids", expanding=True)))
            .values(published_at=bindparam("when", type_=UTCDateTime()), message_id=bindparam("message_id")))


def due_for_publish(session: Session, now: dt.datetime, *, unpublished_grace_s: float, stale_before: dt.datetime,
                    limit: int) -> list[tuple[str, str, int, str]]:
    """(id, model, priority, kind) of the jobs whose message may be missing, most urgent first: never published
    (the API died or Redis was down between the COMMIT and the publish), published before ``stale_before``
    and still queued (the message died with Redis), or running under an expired lease (a worker died, or the
    worker lost SQL) and not published since, or only before ``stale_before``."""
    q = (
        select(Job.id, Job.model, Job.priority, Job.kind)
        .where(or_(
            and_(Job.status == JobStatus.queued.value, Job.published_at.is_(None),
                 Job.created_at < now - dt.timedelta(seconds=unpublished_grace_s)),
            and_(Job.status == JobStatus.queued.value, Job.published_at < stale_before),
            # Running under an expired lease: once after the lease ran out, and again whenever that publish is
            # stale (its delivery reached a worker while SQL was unreachable, failed its claim and was acked).
            and_(Job.status == JobStatus.running.value, Job.lease_expires_at < now,
                 or_(Job.published_at.is_(None), Job.published_at < Job.lease_expires_at,
                     Job.published_at < stale_before)),
        ))
        .order_by(Job.priority, Job.created_seq)
        .limit(limit)
    )
    return [(r.id, r.model, r.priority, r.kind) for r in session.execute(q)]


def queued_messages(session: Session, published_before: dt.datetime) -> dict[str, int]:
    """Per model, how many distinct messages still carry queued jobs published before the given time: a lower
    bound on the messages Redis must hold for them."""
    rows = session.execute(
        select(Job.model, func.count(func.distinct(Job.message_id)))
        .where(Job.status == JobStatus.queued.value, Job.published_at < published_before)
        .group_by(Job.model)
    ).all()
    return {str(m): int(n) for m, n in rows}


def lease_holders(session: Session, now: dt.datetime) -> set[str]:
    """The workers that hold live leases on running jobs."""
    return {str(w) for w in session.execute(
        select(Job.leased_by).where(Job.status == JobStatus.running.value, Job.lease_expires_at > now,
                                    Job.leased_by.is_not(None)).distinct()).scalars()}


def expire_leases(session: Session, worker_ids: Sequence[str], now: dt.datetime) -> int:
    """Lease expiry for workers known to be dead: their running jobs become claimable now rather than when
    their leases would have run out (120 s by default). Should one of them be alive after all, its writes
    are refused once another worker has claimed the job, so no job gets two outcomes."""
    if not worker_ids:
        return 0
    res = session.execute(
        update(Job).where(Job.status == JobStatus.running.value, Job.leased_by.in_(list(worker_ids)),
                          Job.lease_expires_at > now)
        .values(lease_expires_at=now).execution_options(synchronize_session=False))
    return int(res.rowcount)  # type: ignore[attr-defined]
