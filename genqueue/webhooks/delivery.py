"""One delivery attempt of one webhook, and the Celery task that makes it and schedules the next.

Each attempt first takes its number on the outbox row (``attempts = n - 1 → n``, guarded), so two messages
for the same attempt (a retry and the relay's re-publication of it) never both send. Every attempt is
recorded in webhook_attempts: when, the HTTP status (none when no answer came) and the error. A 2xx answer
delivers; anything else is retried after base * 2**(n-1) seconds (capped) until the attempts run out; a
target that the address guard refuses fails at once.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
from celery import Celery
from sqlalchemy import insert, update

from genqueue.db.models import WebhookAttempt, WebhookDelivery, utcnow
from genqueue.db.session import Database
from genqueue.settings import Settings
from genqueue.webhooks import guard, signing

log = logging.getLogger(__name__)
TASK_NAME = "genqueue.deliver_webhook"
QUEUE = "webhooks"
USER_AGENT = "genqueue-webhooks/1"


def backoff_s(settings: Settings, attempt: int) -> float:
    return float(min(settings.webhook_retry_max_s, settings.webhook_retry_base_s * 2 ** (attempt - 1)))


def in_flight_s(settings: Settings) -> float:
    """How long an attempt may be under way before the relay hands the delivery out again."""
    return 2 * settings.webhook_timeout_s + 30.0


@dataclass(frozen=True)
class Outcome:
    status: str  # delivered | retry | failed | skipped (another message took this attempt)
    retry_in_s: float = 0.0


def attempt(db: Database, settings: Settings, http: httpx.Client, delivery_id: str, n: int) -> Outcome:
    now = utcnow()
    with db.session() as s:
        row = s.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending",
                   WebhookDelivery.attempts == n - 1)
            .values(attempts=n, next_attempt_at=now + dt.timedelta(seconds=in_flight_s(settings)))
            .returning(WebhookDelivery.url, WebhookDelivery.payload)
            .execution_options(synchronize_session=False)
        ).first()
        s.commit()
    if row is None:
        return Outcome("skipped")
    body = json.dumps(row.payload, separators=(",", ":"), ensure_ascii=False)
    code: int | None = None
    error: str | None = None
    permanent = False
    t0 = time.perf_counter()
    try:
        guard.check_send(row.url, guard.parse_allow(settings.webhook_allow_private))
        headers = signing.headers(settings.webhook_secret, delivery_id, body, utcnow())
        headers.update({"content-type": "application/json", "user-agent": USER_AGENT})
        # No redirects: a redirect could lead past the address guard.
        r = http.post(row.url, content=body.encode("utf-8"), headers=headers, timeout=settings.webhook_timeout_s,
                      follow_redirects=False)
        code = r.status_code
        if not 200 <= code < 300:
            error = f"HTTP {code}"
    except guard.UnsafeTarget as e:
        error, permanent = str(e), True
    except (httpx.HTTPError, OSError) as e:
        error = f"{e.__class__.__name__}: {e}"[:500]
    ms = (time.perf_counter() - t0) * 1000
    done = utcnow()
    if error is None:
        status, retry_in = "delivered", 0.0
    elif permanent or n >= settings.webhook_max_attempts:
        status, retry_in = "failed", 0.0
    else:
        status, retry_in = "retry", backoff_s(settings, n)
    values: dict[str, Any] = {"last_error": error}
    if status == "delivered":
        values.update(status="delivered", delivered_at=done)
    elif status == "failed":
        values.update(status="failed")
    else:
        # The retry message is due then; the relay re-publishes only if it got lost.
        values.update(next_attempt_at=done + dt.timedelta(seconds=retry_in + in_flight_s(settings)))
    with db.session() as s:
        s.execute(insert(WebhookAttempt).values(delivery_id=delivery_id, attempt=n, at=done, status_code=code,
                                                error=error, duration_ms=round(ms, 2)))
        s.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values)
                  .execution_options(synchronize_session=False))
        s.commit()
    if error:
        log.info("webhook %s attempt %d: %s (%s)", delivery_id, n, error, status)
    return Outcome(status, retry_in)


def register(app: Celery, db: Database, settings: Settings, http: httpx.Client) -> None:
    app.conf.task_routes = {TASK_NAME: {"queue": QUEUE}}

    @app.task(name=TASK_NAME, bind=True, acks_late=True, ignore_result=True, max_retries=None)
    def deliver_webhook(self: Any, delivery_id: str, n: int = 1) -> str:
        out = attempt(db, settings, http, delivery_id, n)
        if out.status == "retry":
            raise self.retry(args=(delivery_id, n + 1), countdown=out.retry_in_s)
        return out.status


def publish(app: Celery, items: list[tuple[str, int]]) -> None:
    """Hand ``(delivery id, attempt number)`` pairs to the webhooks queue."""
    for delivery_id, n in items:
        app.send_task(TASK_NAME, args=(delivery_id, n), queue=QUEUE)
