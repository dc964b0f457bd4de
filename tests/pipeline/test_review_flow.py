"""The whole path on a real stack (API, GPU worker, webhook sender; real Redis; SQLite and PostgreSQL):
generate, pre-screen, claim, decide, then the feed item and the signed webhooks arrive at a real HTTP
server and the SDK's verifier accepts them. Nothing under review is delivered before its approval."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from webhook_receiver import WEBHOOK_SECRET, Received, Receiver

from genqueue.client import Client, GenqueueError, verify_webhook
from genqueue.db.models import WebhookAttempt, WebhookDelivery


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=1).start()  # the first webhook is answered 500: it must be retried
    yield r
    r.stop()


def _event(job_id: str, kind: str):  # type: ignore[no-untyped-def]
    def match(r: Received) -> bool:
        body = json.loads(r.body)
        return bool(body["type"] == kind and body["data"]["id"] == job_id)
    return match


def _whole_feed(c: Client) -> list[dict[str, Any]]:
    items, cursor = [], None
    while True:
        page = c.feed(after=cursor, limit=1000)
        items += page["data"]
        if not page["data"]:
            return items
        cursor = page["next_cursor"]


def _claim(mod: Client, job_id: str) -> None:
    """Claim until the job is among the claimed items; the others go back."""
    for _ in range(20):
        got = [i["job_id"] for i in mod.claim(limit=100, model="tiny-lm")]
        for other in got:
            if other != job_id:
                mod.release(other)
        if job_id in got:
            return
    raise AssertionError(f"job {job_id} was never claimed")


@pytest.mark.slow
def test_generate_review_and_deliver(running: Any, receiver: Receiver) -> None:
    c = running.client
    with Client(running.stack.base_url, running.keys["moderator"]) as mod:
        ok = c.submit("tiny-lm", {"prompt": "The garden", "max_new_tokens": 12, "seed": 3}, review="required",
                      webhook=receiver.url, wait=60)
        bad = c.submit("tiny-lm", {"prompt": "The river", "max_new_tokens": 12, "seed": 4}, review="required",
                       webhook=receiver.url, wait=60)
        for job in (ok, bad):
            assert job["status"] == "succeeded" and job["review"]["status"] == "pending"
            assert job["output"]["texts"]  # the owner reads its own job as it stands

        # Completion is announced at once, without the output that still waits for review.
        done = receiver.wait_for(_event(ok["id"], "job.succeeded"))[0]
        event = verify_webhook(done.body, done.headers, WEBHOOK_SECRET)
        assert event["data"]["output"] is None and event["data"]["review"]["status"] == "pending"
        assert ok["id"] not in {i["job_id"] for i in _whole_feed(c)}

        # A client key cannot moderate; a moderator cannot read the job outside the review endpoints.
        with pytest.raises(GenqueueError) as e:
            c.claim(model="tiny-lm")
        assert e.value.status == 403
        with pytest.raises(GenqueueError) as e:
            mod.get(ok["id"])
        assert e.value.status == 404

        _claim(mod, ok["id"])
        assert mod.decide(ok["id"], "approve")["status"] == "approved"
        _claim(mod, bad["id"])
        with pytest.raises(GenqueueError) as e:
            mod.decide(bad["id"], "reject")
        assert (e.value.status, e.value.code) == (422, "reason_required")
        assert mod.decide(bad["id"], "reject", "off topic")["status"] == "rejected"

        feed = {i["job_id"]: i for i in _whole_feed(c)}
        assert feed[ok["id"]]["output"] == ok["output"] and bad["id"] not in feed

        approved = receiver.wait_for(_event(ok["id"], "review.approved"))[0]
        event = verify_webhook(approved.body, approved.headers, WEBHOOK_SECRET)
        assert event["data"]["output"] == ok["output"] and event["data"]["review"]["status"] == "approved"
        rejected = receiver.wait_for(_event(bad["id"], "review.rejected"))[0]
        event = verify_webhook(rejected.body, rejected.headers, WEBHOOK_SECRET)
        assert event["data"]["output"] is None and event["data"]["review"]["reason"] == "off topic"

        assert [h["action"] for h in mod.history(ok["id"])] == ["prescreen", "claim", "approve"]
        assert mod.history(ok["id"])[0]["actor_name"] == "system"

    # The first webhook was answered 500 and sent again; both attempts are on record.
    with running.db.session() as s:
        ids = [ok["id"], bad["id"]]
        attempts = s.execute(select(WebhookAttempt.status_code).join(
            WebhookDelivery, WebhookDelivery.id == WebhookAttempt.delivery_id).where(
            WebhookDelivery.job_id.in_(ids))).scalars().all()
        statuses = s.execute(select(WebhookDelivery.status).where(WebhookDelivery.job_id.in_(ids))).scalars().all()
    assert sorted(attempts, key=str).count(500) == 1 and len(attempts) == 5 and set(statuses) == {"delivered"}
