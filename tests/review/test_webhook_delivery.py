"""Webhook delivery on real SQL, real Redis and a real HTTP receiver: Standard Webhooks signatures the SDK
verifies, retries with backoff, every attempt recorded, the address guard at send time, and the relay."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from review_helpers import outputs
from sqlalchemy import select
from standardwebhooks.webhooks import WebhookVerificationError
from webhook_receiver import WEBHOOK_SECRET as SECRET
from webhook_receiver import Receiver

from genqueue import queue
from genqueue.client import verify_webhook
from genqueue.db.models import WebhookAttempt, WebhookDelivery
from genqueue.db.session import Database, upgrade
from genqueue.settings import Settings
from genqueue.webhooks import delivery, relay


@pytest.fixture
def db(database_url: str, tmp_path: Path) -> Iterator[Database]:
    """A database of this test's own: the test stacks of the session run webhook relays on the shared one,
    and would send these webhooks before the test does."""
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'hooks.db'}"
    else:
        import psycopg

        name = f"gq_hooks_{uuid.uuid4().hex[:8]}"
        admin = database_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = f"{database_url.rsplit('/', 1)[0]}/{name}"
    upgrade(url)
    d = Database(url)
    yield d
    d.dispose()
    if not database_url.startswith("sqlite"):
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def _settings(tmp_path: Path, **kw: object) -> Settings:
    base: dict[str, object] = {"data_dir": tmp_path, "webhook_secret": SECRET, "webhook_allow_private": "127.0.0.1",
                               "webhook_retry_base_s": 0.5, "webhook_max_attempts": 3}
    return Settings(**{**base, **kw})  # type: ignore[arg-type]


def _delivery(db: Database, job_id: str) -> WebhookDelivery:
    with db.session() as s:
        return s.execute(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).scalar_one()


def _attempts(db: Database, delivery_id: str) -> list[tuple[int, int | None, str | None]]:
    with db.session() as s:
        rows = s.execute(select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)
                         .order_by(WebhookAttempt.attempt)).scalars()
        return [(a.attempt, a.status_code, a.error) for a in rows]


def test_signed_delivery_after_a_retry(db: Database, receiver: Receiver, tmp_path: Path) -> None:
    receiver.fail_first = 1
    ids, _ = outputs(db, 1, policy="none", webhook=receiver.url)
    d = _delivery(db, ids[0])
    assert d.event == "job.succeeded" and d.status == "pending"
    settings = _settings(tmp_path)
    with httpx.Client() as http:
        first = delivery.attempt(db, settings, http, d.id, 1)
        assert first == delivery.Outcome("retry", 0.5)
        assert delivery.attempt(db, settings, http, d.id, 1).status == "skipped"  # attempt 1 was taken
        assert delivery.attempt(db, settings, http, d.id, 2).status == "delivered"
    assert _attempts(db, d.id) == [(1, 500, "HTTP 500"), (2, 204, None)]
    assert _delivery(db, ids[0]).status == "delivered"
    got = receiver.got[0]
    assert got.headers["webhook-id"] == d.id
    event = verify_webhook(got.body, got.headers, SECRET)
    assert event["type"] == "job.succeeded" and event["data"]["id"] == ids[0]
    assert event["data"]["output"] == {"texts": [f"text {ids[0]}"]}  # review not required: deliverable
    with pytest.raises(WebhookVerificationError):
        verify_webhook(got.body.replace(b"text", b"TEXT"), got.headers, SECRET)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(got.body, got.headers, "whsec_" + "A" * 32)


def test_attempts_run_out(db: Database, tmp_path: Path) -> None:
    ids, _ = outputs(db, 1, policy="none", webhook="http://127.0.0.1:9/closed")
    d = _delivery(db, ids[0])
    settings = _settings(tmp_path, webhook_max_attempts=2, webhook_timeout_s=2)
    with httpx.Client() as http:
        assert delivery.attempt(db, settings, http, d.id, 1).status == "retry"
        assert delivery.attempt(db, settings, http, d.id, 2).status == "failed"
    tries = _attempts(db, d.id)
    assert [(a, code) for a, code, _ in tries] == [(1, None), (2, None)] and all("Connect" in (e or "") for *_, e in tries)
    assert _delivery(db, ids[0]).status == "failed"
    assert delivery.backoff_s(settings, 1) == 0.5 and delivery.backoff_s(settings, 4) == 4.0


def test_private_targets_are_refused_again_at_send_time(db: Database, receiver: Receiver, tmp_path: Path) -> None:
    # Accepted earlier (say the allow-list changed, or the name now resolves elsewhere): refused when sending.
    ids, _ = outputs(db, 1, policy="none", webhook=receiver.url.replace("127.0.0.1", "localhost"))
    d = _delivery(db, ids[0])
    with httpx.Client() as http:
        assert delivery.attempt(db, _settings(tmp_path, webhook_allow_private=""), http, d.id, 1).status == "failed"
    (attempt,) = _attempts(db, d.id)
    assert attempt[1] is None and "127.0.0.1" in (attempt[2] or "") and receiver.answered == []


def test_the_relay_hands_due_deliveries_to_the_webhooks_queue(db: Database, redis_scratch_url: str,
                                                              tmp_path: Path) -> None:
    ids, _ = outputs(db, 2, policy="none", webhook="https://hooks.example.com/in")
    settings = _settings(tmp_path, redis_url=redis_scratch_url)
    app = queue.make_celery(settings, redis_scratch_url)
    assert relay.relay_once(db, app, settings) == 2
    assert relay.relay_once(db, app, settings) == 0  # in flight now: not handed out twice
    msgs = queue.redis_client(redis_scratch_url).lrange(delivery.QUEUE, 0, -1)
    args = [json.loads(__import__("base64").b64decode(json.loads(m)["body"]))[0] for m in msgs]
    mine = {_delivery(db, i).id for i in ids}
    assert {(a[0], a[1]) for a in args if a[0] in mine} == {(m, 1) for m in mine}
