"""An output the SQL store refuses fails its job with a code instead of leaving it running (real SQL).

PostgreSQL cannot hold U+0000 in JSONB. The text engine no longer emits it, but any value the store refuses
must end the job: a seeded job run again gives the same output, so it would otherwise come back until its
attempts ran out, and each write would fail the neighbours in its group.
"""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from typing import Any

from genqueue.db.models import Job
from genqueue.db.session import Database
from genqueue.enums import Role
from genqueue.settings import Settings
from genqueue_api.auth import create_key
from genqueue_api.store import jobs as store
from genqueue_worker import jobs, prescreen
from genqueue_worker.engine.types import JobResult
from genqueue_worker.store import JobStore


class _Replay:
    """Engines that hand back preset results: the message path runs for real, the model is not needed."""

    def __init__(self, results: dict[str, JobResult]) -> None:
        self.results = results

    def engine_for(self, model: str, version: str) -> tuple[str, Any]:
        return f"{model}@{version}", self

    def submit(self, request: Any) -> Future[JobResult]:
        fut: Future[JobResult] = Future()
        fut.set_result(self.results[request.job_id])
        return fut

    def submit_many(self, requests: Any) -> list[Future[JobResult]]:
        return [self.submit(r) for r in requests]

    def track(self, job_id: str, engine_ref: str, fut: Future[JobResult]) -> None:
        pass

    def untrack(self, job_id: str) -> None:
        pass


def _queued(db: Database, n: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    with db.session() as s:
        key, _ = create_key(s, "t", Role.client)
        store.insert_jobs(s, [{"id": jid, "owner_id": key.id, "model": "tiny-lm", "model_version": "1", "kind": "text",
                               "status": "queued", "priority": 5, "input": {"prompt": "x"}, "metadata_": {},
                               "review_policy": "none", "webhook_events": [], "metrics": {}, "attempts": 0}
                              for jid in ids])
        s.commit()
    return ids


def test_a_refused_output_fails_its_job_and_not_its_neighbours(db: Database) -> None:
    good, bad = _queued(db, 2)
    texts = {good: "fine", bad: "NUL \x00 inside"}
    if db.engine.dialect.name == "sqlite":
        texts[bad] = "fine too"  # SQLite stores U+0000: nothing to refuse there
    results = {j: JobResult(j, "succeeded", output={"texts": [texts[j]], "finish_reasons": ["length"]},
                            metrics={"tokens": 3.0}) for j in (good, bad)}
    # The worker's own store: both outcomes share one grouped transaction, which the refusal fails as a whole.
    st = JobStore(Settings(write_linger_ms=300), db, "w1", busy=lambda: True, on_finished=lambda ids: None)
    try:
        report = jobs.process_message(st, _Replay(results), prescreen.default_rules(), [good, bad], "tiny-lm")
    finally:
        st.close()
    got = [report.outcomes[good], report.outcomes[bad]]
    with db.session() as s:
        rows = {j: s.get(Job, j) for j in (good, bad)}
        assert rows[good].status == "succeeded" and rows[good].output["texts"] == ["fine"]  # type: ignore[union-attr]
        if db.engine.dialect.name == "sqlite":
            assert got == ["succeeded", "succeeded"]
        else:
            assert got == ["succeeded", "failed:postprocess_error"]
            row = rows[bad]
            assert row is not None and row.status == "failed" and row.error_code == "postprocess_error"
            assert row.error_message.startswith("the output could not be stored: ")  # type: ignore[union-attr]
