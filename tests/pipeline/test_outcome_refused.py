"""An output the SQL store refuses fails its job with a code instead of leaving it running (real SQL).

PostgreSQL cannot hold U+0000 in JSONB. The text engine no longer emits it, but any value the store refuses
must end the job: a seeded job run again gives the same output, so it would otherwise come back until its
attempts ran out, and each write would fail the neighbours in its group.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from types import SimpleNamespace

from genqueue.db.models import Job
from genqueue.db.session import Database
from genqueue.enums import Role
from genqueue_api.auth import create_key
from genqueue_api.store import jobs as store
from genqueue_worker import jobs, service
from genqueue_worker.engine.types import JobResult
from genqueue_worker.groupsql import Grouper


def _claimed(db: Database, n: int) -> list[service.Claimed]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    with db.session() as s:
        key, _ = create_key(s, "t", Role.client)
        store.insert_jobs(s, [{"id": jid, "owner_id": key.id, "model": "tiny-lm", "model_version": "1", "kind": "text",
                               "status": "queued", "priority": 5, "input": {"prompt": "x"}, "metadata_": {},
                               "review_policy": "none", "webhook_events": [], "metrics": {}, "attempts": 0}
                              for jid in ids])
        s.commit()
    with db.session() as s:
        claimed = service.claim_many(s, ids, "w1", 60, 3)
    out = [claimed[jid] for jid in ids]
    assert all(isinstance(c, service.Claimed) for c in out)
    return out  # type: ignore[return-value]


def test_a_refused_output_fails_its_job_and_not_its_neighbours(db: Database) -> None:
    def write(outcomes: Sequence[service.Outcome]) -> list[bool]:
        with db.session() as s:
            res = service.write_outcomes(s, "w1", outcomes)
        return [res[o.job_id] for o in outcomes]

    # The runtime's writer: outcomes of concurrent jobs share one transaction.
    writer: Grouper[service.Outcome, bool] = Grouper("gq-write", write, linger_s=0.3, retries=0)
    rt = SimpleNamespace(writer=writer, settings=SimpleNamespace(blocklist="", blocklist_file=None))
    good, bad = _claimed(db, 2)
    texts = {good.job_id: "fine", bad.job_id: "NUL \x00 inside"}
    if db.engine.dialect.name == "sqlite":
        texts[bad.job_id] = "fine too"  # SQLite stores U+0000: nothing to refuse there
    results = [JobResult(c.job_id, "succeeded", output={"texts": [texts[c.job_id]], "finish_reasons": ["length"]},
                         metrics={"tokens": 3.0}) for c in (good, bad)]
    from concurrent.futures import ThreadPoolExecutor

    try:
        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(lambda cr: jobs._record(rt, cr[0], cr[1], 1.0), zip((good, bad), results, strict=True)))  # type: ignore[arg-type]
    finally:
        writer.close()
    with db.session() as s:
        rows = {c.job_id: s.get(Job, c.job_id) for c in (good, bad)}
        assert rows[good.job_id].status == "succeeded" and rows[good.job_id].output["texts"] == ["fine"]  # type: ignore[union-attr]
        if db.engine.dialect.name == "sqlite":
            assert got == ["succeeded", "succeeded"]
        else:
            assert got == ["succeeded", "failed:postprocess_error"]
            row = rows[bad.job_id]
            assert row is not None and row.status == "failed" and row.error_code == "postprocess_error"
            assert row.error_message.startswith("the output could not be stored: ")  # type: ignore[union-attr]
