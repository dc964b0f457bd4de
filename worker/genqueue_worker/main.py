"""`genqueue worker`: one process per GPU, pool=threads, engines loaded in this process before consuming."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from celery import bootsteps, signals

from genqueue import heap, logs, queue
from genqueue.db.session import Database, NotMigrated, ensure_migrated
from genqueue.settings import Settings
from genqueue_worker import tasks
from genqueue_worker.runtime import WorkerRuntime, set_runtime

log = logging.getLogger(__name__)


def _flow_step(rt: WorkerRuntime) -> type:
    """A consumer bootstep that hands Celery's prefetch count to the worker's flow rule (worker/genqueue_worker/flow.py)."""

    class FlowStep(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def start(self, c: Any) -> None:
            rt.flow.attach(c.qos)
            # kombu re-arms its fetch from the event loop only; a short timer there applies a changed count
            # within milliseconds instead of at the loop's next idle wake-up (up to a second).
            c.timer.call_repeatedly(0.005, rt.flow.apply)
            rt.consumer_started()

    return FlowStep


def run(settings: Settings, models: list[str] | None = None, loglevel: str = "INFO") -> None:
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Celery logs every message received and every task finished: lines per job on the hot path. The
    # outcome of each job is in SQL and in the worker's metrics; GENQUEUE_WORKER_LOG_JOBS=1 restores them.
    if not settings.worker_log_jobs:
        for name in ("celery.app.trace", "celery.worker.strategy", "genqueue_worker.tasks"):
            logging.getLogger(name).setLevel(logging.WARNING)
    db = Database.from_settings(settings)
    try:
        ensure_migrated(db)
    except NotMigrated as e:
        raise SystemExit(f"genqueue worker: error: {e}") from None
    finally:
        db.dispose()
    broker_url = queue.resolve_broker_url(settings)
    rt = WorkerRuntime(settings, models, broker_url)
    logs.set_process_fields(worker=rt.worker_id)  # every line of this process names the worker
    rt.start()
    set_runtime(rt)
    app = queue.make_celery(settings, broker_url)
    tasks.register(app)
    # No remote-control (pidbox) consumer: its Redis pub/sub channel is the one kombu cannot re-establish
    # after a Redis restart (the consumer dies with "'NoneType' object has no attribute 'hostname'"), while
    # the task queues reconnect by themselves. genqueue never sends remote-control commands.
    app.conf.worker_enable_remote_control = False
    app.steps["consumer"].add(_flow_step(rt))

    @signals.worker_shutting_down.connect(weak=False)
    def _drain(**_: object) -> None:
        # Celery's warm shutdown waits for every task thread, and each waits on its engine: without a bound the
        # shutdown lasts as long as the longest held job. The engines get the grace to finish what they hold;
        # the rest is given back (released and requeued) so that the shutdown ends. A thread, because this
        # runs in Celery's signal handler.
        threading.Thread(target=rt.stop_engines, kwargs={"timeout": settings.shutdown_grace_s},
                         name="gq-drain", daemon=True).start()

    @signals.worker_shutdown.connect(weak=False)
    def _stop(**_: object) -> None:
        # The task threads are done (finished or given back); the engines are stopped again (a no-op after
        # the drain) and the SQL groupers close last.
        rt.stop(timeout=settings.shutdown_grace_s)

    argv = [
        "worker", "--pool=threads", f"--concurrency={settings.worker_concurrency}",
        f"--queues={','.join(rt.queues())}", "--without-gossip", "--without-mingle", "--without-heartbeat",
        f"--hostname=genqueue-{rt.worker_id.replace(':', '-')}@%h", f"--loglevel={loglevel}",
    ]
    log.info("worker %s consuming %s", rt.worker_id, ", ".join(rt.queues()))
    heap.settle(settings.gc_gen0_threshold)  # the engines are loaded: what is left is per-job garbage
    app.worker_main(argv)
    sys.exit(0)
