"""Review metrics on the API's /metrics: decisions and their latency as they happen, and the queue's state
(pending items by model, the flagged share) read from SQL at each scrape, so that every API process reports
the same numbers whoever made the change."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select

from genqueue.db.models import Review
from genqueue.db.session import Database
from genqueue.enums import ReviewStatus

log = logging.getLogger(__name__)

DECISIONS = Counter("genqueue_review_decisions_total", "Review decisions made by people", ["decision"])
DECISION_LATENCY = Histogram(
    "genqueue_review_decision_latency_seconds", "From an output entering review to its decision", ["model"],
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 7 * 24 * 3600))


class QueueCollector(Collector):
    def __init__(self) -> None:
        self.db: Database | None = None

    def collect(self) -> Iterator[Any]:
        pending = GaugeMetricFamily("genqueue_review_pending", "Outputs waiting for a decision, by model",
                                    labels=["model", "status"])
        outputs = CounterMetricFamily("genqueue_review_outputs", "Outputs pre-screened, by model", labels=["model"])
        flagged = CounterMetricFamily("genqueue_review_flagged", "Outputs the pre-screen flagged, by model",
                                      labels=["model"])
        share = GaugeMetricFamily("genqueue_review_flagged_share", "Share of pre-screened outputs flagged")
        if self.db is not None:
            try:
                with self.db.session() as s:
                    waiting = [ReviewStatus.pending.value, ReviewStatus.escalated.value]
                    for model, status, n in s.execute(
                            select(Review.model, Review.status, func.count()).where(Review.status.in_(waiting))
                            .group_by(Review.model, Review.status)):
                        pending.add_metric([model, status], n)
                    total_all = flagged_all = 0
                    for model, total, n_flagged in s.execute(
                            select(Review.model, func.count(), func.sum(case((Review.flag_score > 0, 1), else_=0)))
                            .group_by(Review.model)):
                        outputs.add_metric([model], total)
                        flagged.add_metric([model], n_flagged or 0)
                        total_all += total
                        flagged_all += n_flagged or 0
                    share.add_metric([], flagged_all / total_all if total_all else 0.0)
            except Exception as e:  # a scrape must not fail because the database is away for a moment
                log.warning("review metrics: %s", e)
        yield from (pending, outputs, flagged, share)


_collector = QueueCollector()
REGISTRY.register(_collector)


def watch(db: Database) -> None:
    """Report the queue of this database (the API process's own)."""
    _collector.db = db
