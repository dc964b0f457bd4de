"""One worker process: its loaded engines, the jobs in flight, and the threads that watch over them.

Celery delivers messages into task threads (pool=threads); each task thread hands its message's jobs to the
models' engines and waits on their futures while each engine's own loop thread batches across all of them.
The engines are created here, in the process that runs them, after any fork (an ONNX Runtime or CUDA
session does not survive one).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from genqueue import events, queue
from genqueue.db.session import Database
from genqueue.registry import ModelEntry, ModelKind, Registry
from genqueue.settings import Settings
from genqueue.workers import HEARTBEAT_EVERY_S, HEARTBEAT_TTL_S, WORKER_KEY_PREFIX
from genqueue_worker import metrics
from genqueue_worker.engine.loop import stop_all
from genqueue_worker.engine.types import Engine, JobResult
from genqueue_worker.flow import Flow
from genqueue_worker.store import JobStore

log = logging.getLogger(__name__)


@dataclass
class InFlight:
    job_id: str
    engine_ref: str
    future: Future[JobResult]
    started: float = field(default_factory=time.monotonic)


class WorkerRuntime:
    def __init__(self, settings: Settings, models: list[str] | None = None, broker_url: str | None = None) -> None:
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.db = Database.from_settings(settings)
        self.registry = Registry(settings.models_dir)
        for err in self.registry.errors:
            log.warning("model skipped: %s", err)
        self.entries: list[ModelEntry] = [
            e for e in self.registry.entries() if not models or e.name in models or e.ref in models
        ]
        if models:
            missing = [m for m in models if m not in self.registry]
            if missing:
                raise SystemExit(f"genqueue worker: error: no model folder for {', '.join(missing)} in {settings.models_dir}")
        if not self.entries:
            raise SystemExit(f"genqueue worker: error: no models found in {settings.models_dir}; "
                             "build them with `genqueue export builtin`")
        self.broker_url = broker_url or queue.resolve_broker_url(settings)
        self.engines: dict[str, Engine] = {}
        self.providers: dict[str, str] = {}
        self._inflight: dict[str, InFlight] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat_now = threading.Event()
        self._threads: list[threading.Thread] = []
        self.store = JobStore(settings, self.db, self.worker_id, busy=lambda: bool(self._inflight),
                              on_finished=lambda ids: events.publish_finished(self._redis(), ids))
        held = settings.worker_held_jobs or max(
            (settings.text_max_running if e.manifest.kind is ModelKind.text else settings.image_max_batch_size)
            for e in self.entries)
        self.flow = Flow(target_jobs=held, max_messages=settings.worker_concurrency)

    def _redis(self) -> Any:
        return queue.shared_redis(self.broker_url)

    @property
    def model_names(self) -> list[str]:
        return sorted({e.name for e in self.entries})

    def queues(self) -> list[str]:
        return [queue.queue_name(n) for n in self.model_names]

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        from genqueue_worker.engine.loader import engine_configs, load_engine

        configs = engine_configs(self.settings)
        for entry in self.entries:
            if entry.manifest.kind is ModelKind.text:
                per_lane = -(-self.settings.text_max_running // self.settings.text_lanes)
                if self.settings.text_lanes > 1 and per_lane < 16:
                    log.warning("%s: %d text lanes leave %d rows each; a job with more candidates (n, up to 16) "
                                "fails there: raise GENQUEUE_TEXT_MAX_RUNNING", entry.ref, self.settings.text_lanes, per_lane)
            engine = load_engine(entry, self.settings.provider, configs.for_kind(entry.manifest.kind))
            engine.start()
            self.engines[entry.ref] = engine
            self.providers[entry.ref] = engine.provider
            log.info("serving %s (%s) on %s", entry.ref, entry.manifest.kind.value, engine.provider)
        metrics.serve(self.settings.worker_metrics_port)
        metrics.announce_providers(self.providers)
        for target, name in ((self._watch, "gq-watch"), (self._heartbeat, "gq-heartbeat")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop_engines(self, timeout: float = 30.0) -> None:
        """Stop taking jobs and finish the admitted ones within ``timeout``; what is left fails with
        ``shutdown``, which the task threads turn into a release and a requeue. Leases keep being renewed."""
        stop_all(self.engines.values(), drain=True, timeout=timeout)  # one grace for the worker, not one per model

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._beat_now.set()
        self.stop_engines(timeout)
        self.store.close()
        with contextlib.suppress(Exception):
            queue.redis_client(self.broker_url).delete(WORKER_KEY_PREFIX + self.worker_id)

    # -- what process_message needs (genqueue_worker.jobs.Engines) ----------------------------------------
    def engine_for(self, model: str, version: str) -> tuple[str, Engine] | None:
        ref = f"{model}@{version}"
        engine = self.engines.get(ref)
        return (ref, engine) if engine is not None else None

    def track(self, job_id: str, engine_ref: str, fut: Future[JobResult]) -> None:
        with self._lock:
            self._inflight[job_id] = InFlight(job_id, engine_ref, fut)

    def untrack(self, job_id: str) -> None:
        with self._lock:
            self._inflight.pop(job_id, None)

    # -- background threads -----------------------------------------------------------------------------
    def _watch(self) -> None:
        """Cancellations reach running jobs between steps; leases are renewed while jobs run."""
        last_renew = 0.0
        while not self._stop.wait(0.25):
            with self._lock:
                inflight = list(self._inflight.values())
            if not inflight:
                continue
            ids = [f.job_id for f in inflight]
            try:
                for job_id in self.store.canceled_among(ids):
                    f = self._inflight.get(job_id)
                    if f is not None:
                        self.engines[f.engine_ref].cancel(job_id)
                if time.monotonic() - last_renew > self.settings.lease_seconds / 3:
                    self.store.renew(ids)
                    last_renew = time.monotonic()
            except Exception as e:  # the database may blip; the next round retries
                log.warning("watcher: %s", e)

    def _heartbeat(self) -> None:
        client = queue.redis_client(self.broker_url)
        while True:
            info = {"id": self.worker_id, "models": self.model_names, "refs": sorted(self.engines),
                    "providers": self.providers, "pid": os.getpid(), "inflight": len(self._inflight),
                    "held_messages": self.flow.messages, "held_jobs": self.flow.jobs,
                    # False until Celery's consumer runs: the engines are loaded, but nothing is fetched yet.
                    "consuming": self.flow.attached,
                    "lanes": {ref: len(getattr(e, "lanes", [e])) for ref, e in self.engines.items()},
                    "torch_loaded": "torch" in sys.modules, "at": time.time()}
            try:
                client.set(WORKER_KEY_PREFIX + self.worker_id, json.dumps(info), ex=HEARTBEAT_TTL_S)
                metrics.INFLIGHT.set(len(self._inflight))
                pipe = client.pipeline(transaction=False)
                for q in self.queues():
                    for key in queue.bucket_keys(q):
                        pipe.llen(key)
                depths = iter(pipe.execute())
                for q in self.queues():
                    metrics.QUEUE_DEPTH.labels(q).set(sum(next(depths) for _ in queue.PRIORITY_STEPS))
            except Exception as e:
                log.warning("heartbeat: %s", e)
            self._beat_now.wait(HEARTBEAT_EVERY_S)
            self._beat_now.clear()
            if self._stop.is_set():
                return

    def consumer_started(self) -> None:
        """Celery's consumer runs: say so in the heartbeat now rather than at the next beat."""
        self._beat_now.set()


_runtime: WorkerRuntime | None = None


def set_runtime(rt: WorkerRuntime | None) -> None:
    global _runtime
    _runtime = rt


def get_runtime() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("the genqueue worker runtime is not started")
    return _runtime
