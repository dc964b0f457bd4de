"""The worker's one door to SQL: claims and outcome writes grouped across messages, lease renewal, cancels.

Claims and writes go through two groupers (genqueue/grouping.py), so that the ids of every message that
arrived within ``claim_linger_ms`` are claimed in one statement, and every outcome finished since the last
commit is written in one transaction. The state transitions themselves are genqueue.jobstate's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from genqueue import jobstate
from genqueue.db.session import Database
from genqueue.grouping import Grouper
from genqueue.settings import Settings

log = logging.getLogger(__name__)

ClaimResult = dict[str, jobstate.Claimed | jobstate.Skipped]


@dataclass(frozen=True)
class _ClaimItem:
    job_ids: Sequence[str]
    model: str | None  # the model whose queue delivered the message; None: any


class JobStore:
    def __init__(self, settings: Settings, db: Database, worker_id: str, *, busy: Callable[[], bool],
                 on_finished: Callable[[list[str]], None]) -> None:
        self.settings, self.db, self.worker_id = settings, db, worker_id
        self._on_finished = on_finished
        self._claimer: Grouper[_ClaimItem, ClaimResult] = Grouper(
            "gq-claim", self._claim_batch, linger_s=settings.claim_linger_ms / 1000)
        # Outcomes linger for company only while other jobs are still running here (``busy``): under load a
        # commit then carries several jobs, and on a quiet worker none waits.
        self._writer: Grouper[jobstate.Outcome, bool] = Grouper(
            "gq-write", self._write_batch, linger_s=settings.write_linger_ms / 1000, linger_if=busy)

    def claim(self, job_ids: Sequence[str], model: str | None) -> ClaimResult:
        """Claim a message's ids under this worker's lease (blocks until the grouped statement commits)."""
        return self._claimer.submit(_ClaimItem(job_ids, model)).result()

    def claim_alone(self, job_id: str, model: str | None) -> jobstate.Claimed | jobstate.Skipped:
        """Claim one job outside the grouped claims (a job on its last attempt, run alone)."""
        with self.db.session() as s:
            return jobstate.claim_many(s, [job_id], self.worker_id, self.settings.lease_seconds,
                                       self.settings.job_max_attempts, models=None if model is None else [model])[job_id]

    def write(self, outcome: jobstate.Outcome) -> Future[bool]:
        """Queue an outcome for the next grouped commit; the future says whether this worker still owned the
        job (False: canceled or re-leased meanwhile, nothing written)."""
        return self._writer.submit(outcome)

    def renew(self, job_ids: Sequence[str]) -> None:
        with self.db.session() as s:
            jobstate.renew_leases(s, job_ids, self.worker_id, self.settings.lease_seconds)

    def canceled_among(self, job_ids: Sequence[str]) -> list[str]:
        with self.db.session() as s:
            return jobstate.canceled_among(s, job_ids)

    def close(self) -> None:
        self._claimer.close()
        self._writer.close()

    def _claim_batch(self, items: Sequence[_ClaimItem]) -> list[ClaimResult]:
        # One statement per model among the messages (almost always one); an id named twice, in one
        # message or in two that arrived together, is claimed once and the second mention skipped.
        by_model: dict[str | None, list[str]] = {}
        for it in items:
            by_model.setdefault(it.model, []).extend(it.job_ids)
        claimed: dict[str | None, ClaimResult] = {}
        with self.db.session() as s:
            for model, ids in by_model.items():
                claimed[model] = jobstate.claim_many(
                    s, ids, self.worker_id, self.settings.lease_seconds, self.settings.job_max_attempts,
                    models=None if model is None else [model], hold_last=True)
        seen: set[str] = set()
        out: list[ClaimResult] = []
        for it in items:
            res: ClaimResult = {}
            for job_id in it.job_ids:
                res[job_id] = jobstate.Skipped("leased_elsewhere") if job_id in seen else claimed[it.model][job_id]
                seen.add(job_id)
            out.append(res)
        return out

    def _write_batch(self, outcomes: Sequence[jobstate.Outcome]) -> list[bool]:
        with self.db.session() as s:
            res = jobstate.write_outcomes(s, self.worker_id, outcomes)
        finished = [o.job_id for o in outcomes if res[o.job_id] and not isinstance(o, jobstate.Release)]
        try:  # after COMMIT: API requests holding `Prefer: wait` answer now
            self._on_finished(finished)
        except Exception as e:  # only a hint; waiters also poll
            log.debug("finished-job notification not sent: %s", e)
        return [res[o.job_id] for o in outcomes]
