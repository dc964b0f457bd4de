"""Prometheus metrics of one worker: jobs by outcome, failures by code, batch sizes, tokens and images
(rates give tokens/s and images/s), job latency (end to end, waiting in the queue, in the engine), the
provider each model runs on, and the depth of the queues it consumes. One endpoint per worker process
(GENQUEUE_WORKER_METRICS_PORT), so no multiprocess registry is needed."""

from __future__ import annotations

import functools
import logging
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

JOBS = Counter("genqueue_worker_jobs_total", "Jobs handled, by outcome", ["model", "outcome"])
FAILURES = Counter("genqueue_worker_failures_total", "Failed jobs, by error code", ["model", "code"])
BATCH = Histogram("genqueue_worker_batch_size", "Mean rows per step (text) or images per forward a job shared",
                  ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
TOKENS = Counter("genqueue_worker_tokens_total", "Generated tokens", ["model"])
IMAGES = Counter("genqueue_worker_images_total", "Generated images", ["model"])
PROMPT_CACHE_HITS = Counter("genqueue_worker_prompt_cache_hits_total",
                            "Succeeded text jobs whose prompt's prefill came from the prompt cache", ["model"])
LATENCY = Histogram("genqueue_worker_job_latency_seconds", "Job creation to outcome", ["model"],
                    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
QUEUE_WAIT = Histogram("genqueue_worker_queue_wait_seconds", "Job creation to its claim by a worker", ["model"],
                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
INFERENCE = Histogram("genqueue_worker_inference_seconds", "Time a job spent in its engine (waiting to join a "
                      "batch and running in it)", ["model"],
                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
PROVIDER = Gauge("genqueue_worker_provider_info", "The ONNX Runtime provider that runs each loaded model (1)",
                 ["model", "provider"])
QUEUE_DEPTH = Gauge("genqueue_queue_depth", "Messages waiting in a model's queue (all priority buckets)", ["queue"])
INFLIGHT = Gauge("genqueue_worker_inflight", "Jobs this worker holds")


def serve(port: int) -> None:
    if port <= 0:
        return
    try:
        start_http_server(port, addr="0.0.0.0")
        log.info("worker metrics on :%d/metrics", port)
    except OSError as e:  # another worker on this host has the port: run without an endpoint
        log.warning("worker metrics not served on :%d (%s); set GENQUEUE_WORKER_METRICS_PORT", port, e)


def announce_providers(providers: dict[str, str]) -> None:
    """``providers``: model ref -> the provider ONNX Runtime actually runs it on."""
    for ref, provider in providers.items():
        PROVIDER.labels(ref, provider).set(1)


@functools.cache
def _child(metric: Any, *labels: str) -> Any:
    # ``labels()`` validates and looks its arguments up under a lock on every call: about a microsecond each,
    # several per job. The label sets are few (models, outcomes, error codes), so each child is kept.
    return metric.labels(*labels)


def observe(model: str, kind: str, outcome: str, metrics: dict[str, Any], latency_s: float,
            code: str | None = None, queue_s: float | None = None) -> None:
    _child(JOBS, model, outcome).inc()
    if code:
        _child(FAILURES, model, code).inc()
    if queue_s is not None:
        _child(QUEUE_WAIT, model).observe(max(0.0, queue_s))
    if outcome != "succeeded":
        return
    _child(LATENCY, model).observe(latency_s)
    engine_ms = float(metrics.get("wait_ms", 0.0)) + float(metrics.get("inference_ms", 0.0))
    if engine_ms:
        _child(INFERENCE, model).observe(engine_ms / 1000)
    if "batch_size" in metrics:
        _child(BATCH, model).observe(float(metrics["batch_size"]))
    _child(TOKENS if kind == "text" else IMAGES, model).inc(float(metrics.get("tokens", 0)))
    if metrics.get("prompt_cached"):
        _child(PROMPT_CACHE_HITS, model).inc()
