"""The review and delivery endpoints in process (no worker): roles, the contract's errors, bulk decisions,
history, the feed's cursor, webhook address checks and the review metrics."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from review_helpers import outputs

from genqueue.db.models import ApiKey
from genqueue.db.session import Database, upgrade
from genqueue.enums import Role
from genqueue.settings import Settings
from genqueue_api.app import create_app
from genqueue_api.auth import create_key


@dataclass
class Api:
    c: TestClient
    db: Database
    keys: dict[str, ApiKey]
    h: dict[str, dict[str, str]]  # Authorization headers by key name


@pytest.fixture
def api(database_url: str, redis_scratch_url: str, models_dir: Path, tmp_path: Path) -> Iterator[Api]:
    settings = Settings(data_dir=tmp_path, database_url=database_url, redis_url=redis_scratch_url,
                        models_dir=models_dir, reconcile_interval_s=0)
    upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    keys, headers = {}, {}
    with db.session() as s:
        for name, role in (("client", Role.client), ("other", Role.client), ("mod", Role.moderator),
                           ("mod2", Role.moderator), ("admin", Role.admin)):
            keys[name], secret = create_key(s, name, role)
            headers[name] = {"Authorization": f"Bearer {secret}"}
    with TestClient(create_app(settings)) as c:
        yield Api(c, db, keys, headers)
    db.dispose()


def test_roles_on_the_review_endpoints(api: Api) -> None:
    ids, model = outputs(api.db, 1, owner=api.keys["client"])
    r = api.c.post("/v1/review/claim", json={"model": model}, headers=api.h["client"])
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert api.c.post("/v1/review/claim", json={}).status_code == 401
    assert api.c.get(f"/v1/review/{ids[0]}/history", headers=api.h["client"]).status_code == 403
    # A moderator sees outputs through the review endpoints only: the job itself is someone else's.
    assert api.c.get(f"/v1/jobs/{ids[0]}", headers=api.h["mod"]).status_code == 404
    assert api.c.get(f"/v1/jobs/{ids[0]}", headers=api.h["other"]).status_code == 404
    assert api.c.get("/v1/feed", headers=api.h["mod"]).status_code == 403
    assert api.c.get(f"/v1/jobs/{ids[0]}", headers=api.h["client"]).json()["review"]["status"] == "pending"


def test_a_moderators_session(api: Api) -> None:
    ids, model = outputs(api.db, 3, owner=api.keys["client"], flags=[])
    flagged, _ = outputs(api.db, 1, owner=api.keys["client"], model=model,
                         flags=[{"rule": "pii_email", "score": 0.5}])
    r = api.c.post("/v1/review/claim", json={"limit": 2, "model": model}, headers=api.h["mod"])
    assert r.status_code == 200
    items = r.json()["data"]
    assert [i["job_id"] for i in items][0] == flagged[0]  # flagged first
    assert items[0]["flags"] == [{"rule": "pii_email", "score": 0.5}] and items[0]["output"] is not None
    assert items[0]["claimed_by"] == api.keys["mod"].id and items[0]["claim_expires_at"]
    a, b = items[0]["job_id"], items[1]["job_id"]
    # Someone else's claim, no claim at all, a bad decision, a reject without reason.
    r = api.c.post(f"/v1/review/{a}/decision", json={"decision": "approve"}, headers=api.h["mod2"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "claimed_by_other"
    rest = [i for i in ids if i not in (a, b)]
    r = api.c.post(f"/v1/review/{rest[0]}/decision", json={"decision": "approve"}, headers=api.h["mod"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "claim_required"
    r = api.c.post(f"/v1/review/{a}/decision", json={"decision": "maybe"}, headers=api.h["mod"])
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "decision"
    r = api.c.post(f"/v1/review/{a}/decision", json={"decision": "reject"}, headers=api.h["mod"])
    assert r.status_code == 422 and r.json()["error"]["code"] == "reason_required"
    r = api.c.post(f"/v1/review/{a}/decision", json={"decision": "reject", "reason": "an email address"},
                   headers=api.h["mod"])
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    r = api.c.post(f"/v1/review/{a}/decision", json={"decision": "approve"}, headers=api.h["mod"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "already_decided"
    r = api.c.post(f"/v1/review/{b}/renew", json={"lease_seconds": 30}, headers=api.h["mod"])
    assert r.status_code == 200
    r = api.c.post(f"/v1/review/{b}/release", headers=api.h["mod"])
    assert r.status_code == 200 and r.json()["claimed_by"] is None
    assert api.c.post(f"/v1/review/{b}/release", headers=api.h["mod"]).status_code == 409
    # The owner sees the decision on the job.
    job = api.c.get(f"/v1/jobs/{a}", headers=api.h["client"]).json()
    assert job["review"] == {"status": "rejected", "flags": [{"rule": "pii_email", "score": 0.5}],
                             "decided_by": api.keys["mod"].id, "reason": "an email address"}
    hist = api.c.get(f"/v1/review/{a}/history", headers=api.h["mod2"]).json()
    assert [(e["action"], e["actor_name"], e["from_status"], e["to_status"]) for e in hist["data"]] == [
        ("prescreen", "system", None, "pending"), ("claim", "mod", "pending", "claimed"),
        ("reject", "mod", "claimed", "rejected")]
    assert api.c.get("/v1/review/nope/history", headers=api.h["mod"]).status_code == 404
    assert api.c.post("/v1/review/nope/decision", json={"decision": "approve"},
                      headers=api.h["admin"]).status_code == 404


def test_bulk_decisions_succeed_or_fail_one_by_one(api: Api) -> None:
    ids, model = outputs(api.db, 3, owner=api.keys["client"])
    claimed = [i["job_id"] for i in api.c.post("/v1/review/claim", json={"model": model, "limit": 2},
                                               headers=api.h["mod"]).json()["data"]]
    unclaimed = next(i for i in ids if i not in claimed)
    r = api.c.post("/v1/review/bulk-decision", json={"job_ids": [*claimed, unclaimed, "missing"],
                                                     "decision": "approve"}, headers=api.h["mod"])
    assert r.status_code == 200
    data = r.json()["data"]
    assert [d["ok"] for d in data] == [True, True, False, False]
    assert [d["error"]["code"] for d in data[2:]] == ["claim_required", "not_found"]
    assert all(d["review"]["status"] == "approved" for d in data[:2])
    r = api.c.post("/v1/review/bulk-decision", json={"job_ids": [], "decision": "approve"}, headers=api.h["mod"])
    assert r.status_code == 422


def test_escalation_goes_to_admins(api: Api) -> None:
    ids, model = outputs(api.db, 1, owner=api.keys["client"])
    api.c.post("/v1/review/claim", json={"model": model}, headers=api.h["mod"])
    r = api.c.post(f"/v1/review/{ids[0]}/decision", json={"decision": "escalate", "reason": "unsure"},
                   headers=api.h["mod"])
    assert r.status_code == 200 and r.json()["status"] == "escalated"
    assert api.c.post("/v1/review/claim", json={"model": model}, headers=api.h["mod2"]).json()["data"] == []
    r = api.c.post(f"/v1/review/{ids[0]}/decision", json={"decision": "approve"}, headers=api.h["mod"])
    assert r.status_code == 403
    got = api.c.post("/v1/review/claim", json={"model": model}, headers=api.h["admin"]).json()["data"]
    assert [g["job_id"] for g in got] == ids and got[0]["status"] == "escalated"
    r = api.c.post(f"/v1/review/{ids[0]}/decision", json={"decision": "approve"}, headers=api.h["admin"])
    assert r.status_code == 200 and r.json()["decided_by"] == api.keys["admin"].id


def test_the_feed_lists_deliverable_outputs_in_decision_order(api: Api) -> None:
    clean, _ = outputs(api.db, 2, owner=api.keys["client"], policy="auto")  # approved by the system
    held, model = outputs(api.db, 2, owner=api.keys["client"])
    outputs(api.db, 1, owner=api.keys["other"], policy="auto")  # someone else's: not in this feed
    page = api.c.get("/v1/feed", params={"limit": 1000}, headers=api.h["client"]).json()
    mine = [d["job_id"] for d in page["data"]]
    assert mine[-2:] == clean and not set(held) & set(mine)
    cursor = page["next_cursor"]
    again = api.c.get("/v1/feed", params={"after": cursor}, headers=api.h["client"]).json()
    assert again == {"data": [], "next_cursor": cursor}
    api.c.post("/v1/review/claim", json={"model": model}, headers=api.h["mod"])
    for i in reversed(held):  # decision order, not submission order
        api.c.post(f"/v1/review/{i}/decision", json={"decision": "approve"}, headers=api.h["mod"])
    page = api.c.get("/v1/feed", params={"after": cursor, "limit": 1}, headers=api.h["client"]).json()
    assert [d["job_id"] for d in page["data"]] == [held[1]]
    assert page["data"][0]["output"] == {"texts": [f"text {held[1]}"]}
    assert page["data"][0]["review"]["status"] == "approved"
    page = api.c.get("/v1/feed", params={"after": page["next_cursor"]}, headers=api.h["client"]).json()
    assert [d["job_id"] for d in page["data"]] == [held[0]]
    everyone = api.c.get("/v1/feed", params={"limit": 1000}, headers=api.h["admin"]).json()["data"]
    assert len(everyone) > len(mine) + 1
    r = api.c.get("/v1/feed", params={"after": "not-a-cursor"}, headers=api.h["client"])
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "after"


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://hooks.example.com/x", "string_pattern_mismatch"),
    ("http://127.0.0.1:9/hook", "unsafe_webhook"),
    ("http://localhost:9/hook", "unsafe_webhook"),
    ("http://10.1.2.3/hook", "unsafe_webhook"),
    ("http://169.254.169.254/latest/meta-data", "unsafe_webhook"),
    ("http://[::1]/hook", "unsafe_webhook"),
    ("http://[::ffff:192.168.0.1]/hook", "unsafe_webhook"),
])
def test_webhook_targets_are_checked_at_submission(api: Api, url: str, why: str) -> None:
    r = api.c.post("/v1/jobs", json={"model": "tiny-lm", "input": {"prompt": "hi"}, "webhook": url},
                   headers=api.h["client"])
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "webhook" and r.json()["error"]["details"][0]["type"] == why


def test_review_metrics(api: Api) -> None:
    ids, model = outputs(api.db, 2, owner=api.keys["client"], flags=[{"rule": "url", "score": 0.3}])
    text = api.c.get("/metrics").text
    assert f'genqueue_review_pending{{model="{model}",status="pending"}} 2.0' in text
    assert f'genqueue_review_flagged_total{{model="{model}"}} 2.0' in text
    assert "genqueue_review_flagged_share " in text
    api.c.post("/v1/review/claim", json={"model": model}, headers=api.h["mod"])
    api.c.post(f"/v1/review/{ids[0]}/decision", json={"decision": "approve"}, headers=api.h["mod"])
    text = api.c.get("/metrics").text
    assert f'genqueue_review_pending{{model="{model}",status="pending"}} 1.0' in text
    assert f'genqueue_review_decision_latency_seconds_count{{model="{model}"}} 1.0' in text


def test_openapi_lists_review_and_delivery(api: Api) -> None:
    spec = api.c.get("/openapi.json").json()
    for path in ("/v1/review/claim", "/v1/review/{job_id}/decision", "/v1/review/{job_id}/release",
                 "/v1/review/{job_id}/history", "/v1/review/bulk-decision", "/v1/feed"):
        assert path in spec["paths"]


def test_cancel_and_failure_webhooks_go_to_the_outbox(api: Api) -> None:
    from sqlalchemy import select

    from genqueue import jobstate as service
    from genqueue.db.models import WebhookDelivery

    hook = "https://hooks.example.com/in"
    r = api.c.post("/v1/jobs", json={"model": "tiny-lm", "input": {"prompt": "hi"}, "webhook": hook},
                   headers=api.h["client"])
    assert r.status_code == 201
    canceled = r.json()["id"]
    assert api.c.post(f"/v1/jobs/{canceled}/cancel", headers=api.h["client"]).status_code == 200
    quiet = api.c.post("/v1/jobs", json={"model": "tiny-lm", "input": {"prompt": "hi"}, "webhook": hook,
                                         "webhook_events": ["review"]}, headers=api.h["client"]).json()["id"]
    api.c.post(f"/v1/jobs/{quiet}/cancel", headers=api.h["client"])
    with api.db.session() as s:
        assert service.claim_many(s, [canceled], "w", 60, 3)[canceled] == service.Skipped("finished")
    r = api.c.post("/v1/jobs", json={"model": "tiny-lm", "input": {"prompt": "hi"}, "webhook": hook},
                   headers=api.h["client"])
    job = r.json()["id"]
    with api.db.session() as s:
        assert isinstance(service.claim_many(s, [job], "w", 60, 3)[job], service.Claimed)
    with api.db.session() as s:  # a failure, as a worker writes it
        assert service.write_outcomes(s, "w", [service.Failure(job, "nan_output", "NaN")]) == {job: True}
    with api.db.session() as s:
        rows = s.execute(select(WebhookDelivery).where(WebhookDelivery.job_id.in_([canceled, quiet, job]))).scalars()
        got = {(d.job_id, d.event): d.payload["data"] for d in rows}
    assert set(got) == {(canceled, "job.canceled"), (job, "job.failed")}  # `quiet` asked for review events only
    assert got[(job, "job.failed")]["error"] == {"code": "nan_output", "message": "NaN"}
