"""The API's Prometheus counters (served with the process metrics at /metrics)."""

from prometheus_client import Counter

SUBMITTED = Counter("genqueue_api_jobs_submitted_total", "Jobs accepted and stored", ["model"])
REFUSED = Counter("genqueue_api_jobs_refused_total", "Job requests refused, by error code", ["code"])
UNPUBLISHED = Counter("genqueue_api_publish_failures_total",
                      "Jobs stored while the queue was unavailable (the reconciler publishes them)")
