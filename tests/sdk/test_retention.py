"""Retention: `genqueue gc` (and beat's duty) deletes the outputs and images of jobs that ended long ago, in
small batches; the job, review and audit rows stay, and the job reads as expired (images: 410), never 500.
Queued and running jobs and outputs still waiting for a moderator are left alone."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from genqueue import cli, jobstate, retention
from genqueue.db.models import AuditEvent, Job, JobImage, Review, WebhookDelivery, utcnow

IMG = {"model": "dcgan-digits", "input": {"num_images": 2}}
TXT = {"model": "tiny-lm", "input": {"prompt": "hi", "max_new_tokens": 2}}


def submit(api, body: dict, **extra: object) -> str:  # type: ignore[no-untyped-def,type-arg]
    r = httpx.post(f"{api.url}/v1/jobs", json={**body, **extra}, headers=api.headers())
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def finish(api, ids: list[str], fail: set[str] | None = None) -> None:  # type: ignore[no-untyped-def]
    """End the jobs the way a worker does: claim them, then write their outcomes (images included)."""
    with api.db.session() as s:
        claimed = jobstate.claim_many(s, ids, "w1", lease_s=60, max_attempts=3)
        outcomes: list[jobstate.Outcome] = []
        for job_id, c in claimed.items():
            assert isinstance(c, jobstate.Claimed)
            if job_id in (fail or set()):
                outcomes.append(jobstate.Failure(job_id, "engine_error", "boom"))
            elif c.kind == "image":
                images = [(b"\x89PNG-%d" % i, 28, 28, "png") for i in range(2)]
                out = {"images": [{"url": f"/v1/jobs/{job_id}/images/{i}", "width": 28, "height": 28,
                                   "format": "png"} for i in range(2)]}
                outcomes.append(jobstate.Success(job_id, out, {"engine_ms": 1.0}, images))
            else:
                outcomes.append(jobstate.Success(job_id, {"texts": ["ok"], "finish_reasons": ["length"]}, {"engine_ms": 1.0}, []))
        jobstate.write_outcomes(s, "w1", outcomes)
        s.commit()


def test_retention_deletes_old_content_in_batches_and_the_jobs_read_as_expired(api_server) -> None:  # type: ignore[no-untyped-def]
    api = api_server()
    images = [submit(api, IMG) for _ in range(3)]
    texts = [submit(api, TXT) for _ in range(2)]
    failed = submit(api, TXT)
    pending_review = submit(api, TXT, review="required")
    queued = submit(api, TXT)
    finish(api, [*images, *texts, failed, pending_review], fail={failed})
    with api.db.session() as s:
        assert s.get(Review, pending_review).status == "pending"  # type: ignore[union-attr]
        audits_before = s.query(AuditEvent).count()
        # A job that has failed has no content: nothing to expire there.
        assert s.get(Job, failed).output is None  # type: ignore[union-attr]

    with api.db.session() as s:  # two webhooks of one job: one sent, one still being retried
        for i, status in enumerate(("delivered", "pending")):
            s.add(WebhookDelivery(id=f"d{i}", job_id=texts[0], event="job.succeeded", url="http://example.com",
                                  payload={"type": "job.succeeded", "data": {"id": texts[0], "output": {"texts": ["ok"]}}},
                                  status=status))
        s.commit()
    # Nothing is old yet.
    assert retention.expire(api.db, dt.timedelta(days=30)).jobs == 0
    later = utcnow() + dt.timedelta(days=31)
    done = retention.expire(api.db, dt.timedelta(days=30), batch_size=2, pause_s=0, now=later)
    assert (done.jobs, done.images, done.batches) == (5, 6, 3)
    assert retention.expire(api.db, dt.timedelta(days=30), batch_size=2, pause_s=0, now=later).jobs == 0

    with api.db.session() as s:
        assert s.query(JobImage).filter(JobImage.job_id.in_(images)).count() == 0
        for job_id in [*images, *texts]:
            row = s.get(Job, job_id)
            assert row is not None and row.output is None and row.status == "succeeded"
        assert s.get(Job, pending_review).output == {"texts": ["ok"], "finish_reasons": ["length"]}  # type: ignore[union-attr]
        assert s.get(Job, queued).status == "queued"  # type: ignore[union-attr]
        assert s.query(AuditEvent).count() == audits_before  # review and audit rows stay
        assert s.query(Review).filter(Review.job_id.in_([*images, *texts])).count() == 5
        assert s.get(WebhookDelivery, "d0").payload["data"] == {"id": texts[0], "output": None}  # type: ignore[union-attr]
        assert s.get(WebhookDelivery, "d1").payload["data"]["output"] == {"texts": ["ok"]}  # type: ignore[union-attr]

    h = api.headers()
    job = httpx.get(f"{api.url}/v1/jobs/{images[0]}", headers=h).json()
    assert job["status"] == "succeeded" and job["output"] is None and job["expired_at"] is not None
    assert "expired_at" not in job["metrics"] and job["metrics"]["engine_ms"] == 1.0
    r = httpx.get(f"{api.url}/v1/jobs/{images[0]}/images/0", headers=h)
    assert r.status_code == 410 and r.json()["error"]["code"] == "expired"
    kept = httpx.get(f"{api.url}/v1/jobs/{pending_review}", headers=h).json()
    assert kept["expired_at"] is None and kept["output"]["texts"] == ["ok"]
    listed = httpx.get(f"{api.url}/v1/jobs", params={"limit": 100}, headers=h)
    assert listed.status_code == 200
    assert {j["id"] for j in listed.json()["data"] if j["expired_at"]} == {*images, *texts}
    feed = httpx.get(f"{api.url}/v1/feed", headers=h)
    assert feed.status_code == 200


def test_gc_command(api_server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    api = api_server()
    ids = [submit(api, TXT) for _ in range(3)]
    finish(api, ids)
    with api.db.session() as s:  # two of them ended 10 days ago
        for job_id in ids[:2]:
            s.get(Job, job_id).finished_at = utcnow() - dt.timedelta(days=10)  # type: ignore[union-attr]
        s.commit()
    monkeypatch.setenv("GENQUEUE_DATABASE_URL", api.settings.sqlalchemy_url)
    monkeypatch.delenv("GENQUEUE_RETENTION_DAYS", raising=False)
    with pytest.raises(SystemExit) as e:
        cli.main(["gc"])
    assert e.value.code == 2 and "GENQUEUE_RETENTION_DAYS" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["gc", "--older-than-days", "7"])
    assert e.value.code == 0
    assert "deleted the outputs of 2 jobs" in capsys.readouterr().out
    with api.db.session() as s:
        assert [s.get(Job, i).output is None for i in ids] == [True, True, False]  # type: ignore[union-attr]


def test_beat_runs_retention_as_a_duty(api_server) -> None:  # type: ignore[no-untyped-def]
    from genqueue import beat

    api = api_server()
    ids = [submit(api, TXT) for _ in range(3)]
    finish(api, ids)
    with api.db.session() as s:
        for job_id in ids:
            s.get(Job, job_id).finished_at = utcnow() - dt.timedelta(days=3)  # type: ignore[union-attr]
        s.commit()
    settings = api.settings.model_copy(update={"reconcile_interval_s": 0, "retention_days": 2.0,
                                               "retention_batch_size": 1, "retention_pause_ms": 0})
    duties = beat.duties(settings, api.db)
    assert [d.name for d in duties] == ["retention"]
    assert duties[0].run() is False  # all three expired within its round: nothing left for the next one
    with api.db.session() as s:
        assert all(s.get(Job, i).output is None for i in ids)  # type: ignore[union-attr]
    assert beat.duties(api.settings.model_copy(update={"reconcile_interval_s": 0}), api.db) == []
