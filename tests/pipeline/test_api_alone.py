"""The API with no worker behind it: jobs stay queued, Redis outages lose nothing, cancel of queued jobs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from genqueue import queue
from genqueue.db.models import Job
from genqueue.db.session import Database, NotMigrated, upgrade
from genqueue.enums import Role
from genqueue.publisher import Publisher
from genqueue.reconcile import reconcile_once
from genqueue.settings import Settings
from genqueue_api.app import create_app
from genqueue_api.auth import create_key
from tests.quota_windows import early_in_a_minute


@pytest.fixture
def api(database_url: str, redis_scratch_url: str, models_dir: Path,
        tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str], Database, Settings]]:
    settings = Settings(data_dir=tmp_path, database_url=database_url, redis_url=redis_scratch_url,
                        models_dir=models_dir)
    upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    with db.session() as s:
        _, secret = create_key(s, "c", Role.client)
    with TestClient(create_app(settings)) as c:
        yield c, {"Authorization": f"Bearer {secret}"}, db, settings
    db.dispose()


def test_queued_job_is_published_once_with_only_its_id(api) -> None:  # type: ignore[no-untyped-def]
    c, h, db, settings = api
    r = c.post("/v1/jobs", json={"model": "tiny-lm", "input": {"prompt": "hi"}, "priority": 0}, headers=h)
    assert r.status_code == 201
    job = r.json()
    assert job["status"] == "queued" and job["input"]["seed"] is not None
    # The answer came after the COMMIT; the publish follows within the coalescing window.
    deadline = time.monotonic() + 5
    while True:
        with db.session() as s:
            row = s.get(Job, job["id"])
            assert row is not None
            if row.published_at is not None or time.monotonic() > deadline:
                break
        time.sleep(0.01)
    assert row.published_at is not None and row.message_id is not None
    rc = queue.redis_client(settings.redis_url)
    import base64
    import json

    msgs = rc.lrange("gen.tiny-lm", 0, -1)  # priority 0 lands in the first bucket
    assert len(msgs) == 1
    message = json.loads(msgs[0])
    body = json.loads(base64.b64decode(message["body"]))
    assert body[0] == [[job["id"]]] and body[1] == {"model": "tiny-lm"}
    assert message["headers"]["id"] == row.message_id


def test_cancel_queued_job(api) -> None:  # type: ignore[no-untyped-def]
    c, h, _, _ = api
    job = c.post("/v1/jobs", json={"model": "tiny-lm", "input": {"prompt": "hi"}}, headers=h).json()
    r = c.post(f"/v1/jobs/{job['id']}/cancel", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    r = c.post(f"/v1/jobs/{job['id']}/cancel", headers=h)
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_finished"


def test_redis_down_job_still_accepted_then_reconciled(database_url: str, models_dir: Path, tmp_path: Path,
                                                        redis_scratch_url: str) -> None:
    settings = Settings(data_dir=tmp_path, database_url=database_url, redis_url="redis://127.0.0.1:1/0",
                        models_dir=models_dir)
    upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    with db.session() as s:
        _, secret = create_key(s, "c", Role.client)
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/jobs", json={"model": "tiny-lm", "input": {"prompt": "hi"}},
                   headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 201 and r.json()["status"] == "queued"
        assert c.get("/readyz").status_code == 503
        # The publish runs just after the response (single submits are coalesced), so its failure shows
        # in the metrics a moment later.
        deadline = time.monotonic() + 15
        while True:
            line = next(ln for ln in c.get("/metrics").text.splitlines()
                        if ln.startswith("genqueue_api_publish_failures_total "))
            if float(line.split()[-1]) >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert float(line.split()[-1]) >= 1
    with db.session() as s:
        row = s.get(Job, r.json()["id"])
        assert row is not None and row.status == "queued" and row.published_at is None
    # Redis is back: the reconciler publishes the stored job, and only once.
    redis_url = redis_scratch_url
    app = Publisher(settings, db, queue.make_celery(settings, redis_url))
    # (lost_grace_s: the session's database holds other tests' queued jobs, published to other Redis DBs.)
    assert reconcile_once(db, app, unpublished_grace_s=0, lost_grace_s=1e9) == 1
    assert reconcile_once(db, app, unpublished_grace_s=0, lost_grace_s=1e9) == 0
    assert queue.redis_client(redis_url).llen("gen.tiny-lm:3") == 1  # priority 5 → bucket 3
    with db.session() as s:
        row = s.get(Job, r.json()["id"])
        assert row is not None and row.published_at is not None
    db.dispose()


def test_messages_lost_with_redis_are_published_again_without_waiting_minutes(api) -> None:  # type: ignore[no-untyped-def]
    import base64
    import json

    c, h, db, settings = api
    job = c.post("/v1/jobs", json={"model": "tiny-lm", "input": {"prompt": "hi"}}, headers=h).json()
    app = Publisher(settings, db, queue.make_celery(settings, settings.redis_url))
    rc = queue.redis_client(settings.redis_url)
    keys = queue.bucket_keys(queue.queue_name("tiny-lm"))

    def queued_ids() -> set[str]:
        return {i for k in keys for m in rc.lrange(k, 0, -1)
                for i in json.loads(base64.b64decode(json.loads(m)["body"]))[0][0]}

    # The session's database also holds other tests' queued jobs, published to other Redis DBs: the first
    # pass may publish those here; after it, Redis holds a message per queued job and nothing is published
    # again, however old the jobs are (600 s is the fallback that this check makes unnecessary).
    reconcile_once(db, app, lost_grace_s=0, republish_after_s=1e9)
    assert job["id"] in queued_ids()
    assert reconcile_once(db, app, lost_grace_s=0, republish_after_s=1e9) == 0
    rc.flushdb()  # Redis restarted without persistence, or flushed
    assert reconcile_once(db, app, lost_grace_s=0, republish_after_s=1e9) >= 1
    assert job["id"] in queued_ids()
    assert reconcile_once(db, app, lost_grace_s=0, republish_after_s=1e9) == 0
    # A worker took every message (kombu moves it to its unacked hash and index) and was killed before it
    # claimed the jobs: Redis would give them back after the visibility timeout, an hour by default.
    for k in keys:
        while (m := rc.rpop(k)) is not None:
            tag = f"tag-{rc.incr('test-tags')}"
            rc.hset("unacked", tag, m)
            rc.zadd("unacked_index", {tag: time.time() - 120})
    assert job["id"] not in queued_ids()
    assert reconcile_once(db, app, lost_grace_s=0, republish_after_s=1e9) >= 1
    assert job["id"] in queued_ids()


def test_refuses_unmigrated_database(tmp_path: Path, models_dir: Path) -> None:
    settings = Settings(data_dir=tmp_path, models_dir=models_dir, redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(NotMigrated, match="genqueue db upgrade"):
        create_app(settings)


def test_openapi_lists_the_contract(api) -> None:  # type: ignore[no-untyped-def]
    c, _, _, _ = api
    spec = c.get("/openapi.json").json()
    for path in ("/v1/jobs", "/v1/jobs/bulk", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel",
                 "/v1/jobs/{job_id}/images/{n}", "/v1/models", "/healthz", "/readyz"):
        assert path in spec["paths"]
    assert "JobCreate" in spec["components"]["schemas"]


def test_rate_limit_answers_429_with_retry_after(database_url: str, models_dir: Path, tmp_path: Path,
                                                 redis_scratch_url: str) -> None:
    settings = Settings(data_dir=tmp_path, database_url=database_url, redis_url=redis_scratch_url,
                        models_dir=models_dir, rate_limit_jobs_per_min=3)
    upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    with db.session() as s:
        _, secret = create_key(s, "c", Role.client)
        before = s.query(Job).count()
    h = {"Authorization": f"Bearer {secret}"}
    job = {"model": "tiny-lm", "input": {"prompt": "hi"}}
    with TestClient(create_app(settings)) as c:
        early_in_a_minute()
        assert c.post("/v1/jobs/bulk", json={"jobs": [job, job]}, headers=h).status_code == 200
        assert c.post("/v1/jobs", json=job, headers=h).status_code == 201
        r = c.post("/v1/jobs/bulk", json={"jobs": [job, job]}, headers=h)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert int(r.headers["Retry-After"]) >= 1
        r = c.post("/v1/jobs", json=job, headers=h)
        assert r.status_code == 429
    with db.session() as s:
        assert s.query(Job).count() == before + 3  # refused requests stored nothing
    db.dispose()
