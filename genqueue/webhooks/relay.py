"""The relay: hands due outbox rows to the `webhooks` Celery queue. New events are due at once; a delivery
whose message was lost (a Redis restart, a consumer killed mid-attempt) becomes due again once its
in-flight time has passed, so an event that committed is always sent."""

from __future__ import annotations

import datetime as dt
import logging
import threading

from celery import Celery
from sqlalchemy import select, update

from genqueue.db.models import WebhookDelivery, utcnow
from genqueue.db.picking import picked
from genqueue.db.session import Database
from genqueue.settings import Settings
from genqueue.webhooks import delivery

log = logging.getLogger(__name__)


def relay_once(db: Database, app: Celery, settings: Settings, limit: int = 500) -> int:
    now = utcnow()
    with db.session() as s:
        due = (WebhookDelivery.status == "pending") & (WebhookDelivery.next_attempt_at <= now)
        pick = select(WebhookDelivery.id).where(due).order_by(WebhookDelivery.next_attempt_at).limit(limit)
        rows = s.execute(
            update(WebhookDelivery).where(picked(WebhookDelivery.id, pick), due)
            .values(next_attempt_at=now + dt.timedelta(seconds=delivery.in_flight_s(settings)))
            .returning(WebhookDelivery.id, WebhookDelivery.attempts)
            .execution_options(synchronize_session=False)
        ).all()
        s.commit()
    if rows:
        try:
            delivery.publish(app, [(r.id, r.attempts + 1) for r in rows])
        except Exception as e:  # the broker is down: they are due again after their in-flight time
            log.warning("webhook relay: publishing failed (%s); %d deliveries wait", e, len(rows))
            return 0
    return len(rows)


class Relay:
    def __init__(self, db: Database, app: Celery, settings: Settings) -> None:
        self.db, self.app, self.settings = db, app, settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gq-webhook-relay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                n = relay_once(self.db, self.app, self.settings)
            except Exception:
                log.exception("webhook relay failed; trying again")
                n = 0
            if n < 500:
                self._stop.wait(self.settings.webhook_relay_interval_s)
