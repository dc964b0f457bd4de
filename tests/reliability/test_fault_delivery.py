"""Delivery faults, each on SQLite and on PostgreSQL: the same message delivered again to live workers while
two workers share one queue, and cancels racing the workers' completions."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest
from faults import exactly_once, long_jobs, short_jobs, statuses, wait_final
from sqlalchemy import select

from genqueue import queue
from genqueue.db.models import Job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


def test_the_same_message_twice_and_two_workers_on_one_queue(fault_stack, database: str) -> None:  # type: ignore[no-untyped-def]
    # Small messages, and two of them at a time per worker: neither worker can take the whole bulk.
    f = fault_stack({"GENQUEUE_WORKER_CONCURRENCY": "2", "GENQUEUE_PUBLISH_CHUNK_SIZE": "4"}, workers=2)
    app = queue.make_celery(f.stack.settings, f.stack.broker_url)
    with f.client() as c:
        ids = [j["id"] for j in c.submit_bulk(short_jobs(48, "dup", tokens=16))]
        # While both workers take the API's messages, the same ids arrive again: one message, published twice
        # under one message id, so that each worker may get a copy of it.
        again = queue.Chunk("tiny-lm", 5, ids)
        queue.publish(app, [again, again])
        st = wait_final(f.db, ids, 120)
        assert set(st.values()) == {"succeeded"}, st
        with f.db.session() as s:
            before = dict(s.execute(select(Job.id, Job.finished_at).where(Job.id.in_(ids))).all())  # type: ignore[arg-type]
        # Delivered once more to the live workers after every job ended: each one is skipped.
        queue.publish(app, [queue.Chunk("tiny-lm", 5, ids)])
        marker = c.submit("tiny-lm", {"prompt": "after", "max_new_tokens": 4})["id"]  # behind the copy
        assert c.wait(marker, timeout=60)["status"] == "succeeded"
    exactly_once(f.db, ids)
    with f.db.session() as s:
        rows = s.execute(select(Job.id, Job.attempts, Job.finished_at, Job.leased_by).where(Job.id.in_(ids))).all()
    assert {r.attempts for r in rows} == {1}  # no job was claimed twice
    assert {r.id: r.finished_at for r in rows} == before  # nor written again
    assert len({r.leased_by for r in rows}) == 2  # both workers took a share


def test_cancels_racing_completions(fault_stack, database: str) -> None:  # type: ignore[no-untyped-def]
    # Eight rows at a time, so that jobs start and end for a while as the cancels arrive.
    f = fault_stack({"GENQUEUE_WORKER_CONCURRENCY": "4", "GENQUEUE_TEXT_MAX_RUNNING": "8"})
    auth = {"Authorization": f"Bearer {f.secret}"}

    def cancel(job_id: str) -> int:
        return httpx.post(f"{f.stack.base_url}/v1/jobs/{job_id}/cancel", headers=auth, timeout=30).status_code

    with f.client() as c:
        # Jobs of many lengths: a cancel sent the moment a job is seen running meets a short job at its end
        # and a long one in the middle.
        items = [it if i % 3 else long_jobs(c, 1, f"race {i}", candidates=4)[0]
                 for i, it in enumerate(short_jobs(64, "race", tokens=24))]
        ids = [j["id"] for j in c.submit_bulk(items)]
        answers: dict[str, concurrent.futures.Future[int]] = {}
        seen: dict[str, str] = {}
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            # The last few first, while still queued: sent after the other 60 cancels, they used to arrive once
            # a fast worker had finished them too.
            for i, s in statuses(f.db, ids[-4:]).items():
                answers[i] = pool.submit(cancel, i)
                seen[i] = s
            deadline = time.monotonic() + 60
            while len(answers) < len(ids) and time.monotonic() < deadline:
                for i, s in statuses(f.db, ids).items():
                    if i not in answers and (s != "queued" or i in ids[-4:]):  # the last few while queued
                        answers[i] = pool.submit(cancel, i)
                        seen[i] = s
                time.sleep(0.01)
        got = {i: a.result() for i, a in answers.items()}
        st = wait_final(f.db, ids, 120)
    assert len(got) == len(ids) and set(got.values()) <= {200, 409}, got
    for i in ids:  # the answer agrees with what happened: a 200 canceled it, a 409 came after its outcome
        assert st[i] == ("canceled" if got[i] == 200 else "succeeded"), (i, got[i], st[i])
    tally = exactly_once(f.db, ids, allowed=("succeeded", "canceled"))
    with f.db.session() as s:
        outputs = dict(s.execute(select(Job.id, Job.output).where(Job.id.in_(ids))).all())  # type: ignore[arg-type]
    assert all(outputs[i] is None for i in ids if st[i] == "canceled")  # a canceled job keeps no output
    # Both outcomes happened: cancels that won (on queued jobs, and usually on running ones too) and cancels
    # that came after the outcome. How many won against a running job depends on the machine's speed.
    won_running = [i for i in ids if seen[i] == "running" and got[i] == 200]
    print(f"cancels: {list(got.values()).count(200)} won ({len(won_running)} on running jobs), "
          f"{list(got.values()).count(409)} came too late")
    assert tally.by_status.get("canceled") and tally.by_status.get("succeeded"), tally
