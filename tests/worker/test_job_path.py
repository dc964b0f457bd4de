"""The worker's job path in this process, on real Redis and real SQL, with fake engines (``fake_engine.py``).

Jobs go in through the API's store and out through the real publisher into Redis; the test then works the
queues the way a worker in burst mode would: it takes each waiting message from Redis and runs the Celery
task body on it (``genqueue_worker.tasks``), with a real ``WorkerRuntime`` whose engines are fakes. No
subprocess, no model: what is checked is the glue, from message to committed outcome and notification.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from fake_engine import FakeEngine, fake_png, fake_texts
from sqlalchemy import func, select

from genqueue import events, jobstate, queue
from genqueue.db.models import AuditEvent, Job, JobImage
from genqueue.db.session import Database
from genqueue.enums import Role
from genqueue.publisher import Publisher
from genqueue.registry import ModelEntry
from genqueue.settings import Settings
from genqueue_api.auth import create_key
from genqueue_api.store import jobs as store
from genqueue_worker import tasks
from genqueue_worker.runtime import WorkerRuntime, set_runtime

TEXT, IMAGE = "tiny-lm", "dcgan-digits"


@dataclass
class Worker:
    rt: WorkerRuntime
    app: Celery
    engines: dict[str, FakeEngine]  # by model name
    entries: dict[str, ModelEntry]
    settings: Settings
    db: Database
    owner: str  # an API key's id, the jobs' owner

    def submit(self, model: str, inputs: Sequence[dict[str, Any]], priority: int = 5) -> list[str]:
        """Insert queued rows through the API's store, committed; nothing is published yet."""
        entry = self.entries[model]
        ids = [str(uuid.uuid4()) for _ in inputs]
        with self.db.session() as s:
            store.insert_jobs(s, [
                {"id": jid, "owner_id": self.owner, "model": model, "model_version": entry.manifest.version,
                 "kind": entry.manifest.kind.value, "status": "queued", "priority": priority, "input": dict(inp),
                 "metadata_": {}, "review_policy": "none", "webhook_events": [], "metrics": {}, "attempts": 0}
                for jid, inp in zip(ids, inputs, strict=True)])
            s.commit()
        return ids

    def publish(self, ids: Sequence[str]) -> None:
        """The API's publishing of committed rows: chunks of ids, one message each, into Redis."""
        with self.db.session() as s:
            rows = s.execute(select(Job.id, Job.model, Job.priority, Job.kind).where(Job.id.in_(ids))).all()
        by_id = {r.id: queue.Publication(r.id, r.model, r.priority, r.kind) for r in rows}
        publisher = Publisher(self.settings, self.db, self.app)
        try:
            assert publisher.publish_now([by_id[i] for i in ids])
        finally:
            publisher.close()

    def take_messages(self) -> list[tuple[str, list[str], str | None]]:
        """Every message waiting in the models' queues, as the consumer would fetch them (highest priority
        bucket first, oldest first), decoded: (message id, job ids, model)."""
        client = queue.redis_client(str(self.settings.redis_url))
        out = []
        for model in self.engines:
            for key in queue.bucket_keys(queue.queue_name(model)):
                while (raw := client.rpop(key)) is not None:
                    envelope = json.loads(raw)
                    assert envelope["headers"]["task"] == queue.TASK_NAME
                    args, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
                    out.append((envelope["headers"]["id"], list(args[0]), kwargs.get("model")))
        return out

    def run(self, message: tuple[str, list[str], str | None]) -> Any:
        """The Celery task body on one message, in this thread; returns Celery's result of it."""
        message_id, ids, model = message
        return self.app.tasks[queue.TASK_NAME].apply(args=[ids], kwargs={"model": model}, task_id=message_id)

    def burst(self) -> dict[str, dict[str, str]]:
        """Run every waiting message until the queues are empty; returns each message's report."""
        reports = {}
        while messages := self.take_messages():
            for m in messages:
                result = self.run(m)
                assert result.state == "SUCCESS", result.result
                reports[m[0]] = result.get()
        return reports


_apps: dict[str, Celery] = {}


def _celery(settings: Settings) -> Celery:
    """One Celery app with the worker's tasks per broker, as in a worker process: Celery keeps task names
    process-wide, and a second registration would be refused with a warning. The task body finds its
    runtime through ``get_runtime``, so one app serves every test's runtime."""
    url = str(settings.redis_url)
    if url not in _apps:
        _apps[url] = queue.make_celery(settings, url)
        tasks.register(_apps[url])
    return _apps[url]


@pytest.fixture
def worker(db: Database, database_url: str, redis_scratch_url: str, models_dir: Path,
           tmp_path: Path) -> Iterator[Worker]:
    """A worker runtime as ``genqueue worker`` builds it, minus its models: fake engines stand in for them."""
    settings = Settings(database_url=database_url, redis_url=redis_scratch_url, models_dir=models_dir,
                        data_dir=tmp_path, publish_chunk_size=3)
    rt = WorkerRuntime(settings, [TEXT, IMAGE], redis_scratch_url)
    entries = {e.name: e for e in rt.entries}
    engines = {name: FakeEngine() for name in entries}
    for name, e in entries.items():
        engines[name].start()
        rt.engines[e.ref] = engines[name]
    app = _celery(settings)
    set_runtime(rt)
    with db.session() as s:
        key, _ = create_key(s, "jobs", Role.client)
        owner = key.id
    try:
        yield Worker(rt, app, engines, entries, settings, db, owner)
    finally:
        set_runtime(None)
        for engine in engines.values():
            engine.stop(drain=False)
        rt.store.close()
        rt.db.dispose()


def _prescreen_writes(db: Database, ids: Sequence[str]) -> dict[str, int]:
    """Outcome writes per job: each successful write adds one prescreen audit event in its transaction."""
    with db.session() as s:
        return dict(s.execute(select(AuditEvent.job_id, func.count()).where(  # type: ignore[arg-type]
            AuditEvent.job_id.in_(ids), AuditEvent.action == "prescreen").group_by(AuditEvent.job_id)).all())


def _announced(pubsub: Any) -> list[str]:
    """The job ids announced on the finished channel since subscribing, in order, repeats kept."""
    ids: list[str] = []
    while (m := pubsub.get_message(timeout=0.5)) is not None:
        if m["type"] == "message":
            ids.extend(m["data"].decode().split())
    return ids


def test_a_burst_runs_every_job_once_and_skips_what_it_must(worker: Worker,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="genqueue_worker.jobs")
    pubsub = queue.redis_client(str(worker.settings.redis_url)).pubsub()
    pubsub.subscribe(events.CHANNEL)
    texts = [{"prompt": f"story {i}", "max_new_tokens": 2 + 3 * i, "seed": i, "n": 1 + i % 2} for i in range(6)]
    text_ids = worker.submit(TEXT, texts)
    failing = worker.submit(TEXT, [{"prompt": "fail here", "max_new_tokens": 4}])[0]
    urgent = worker.submit(TEXT, [{"prompt": "urgent", "max_new_tokens": 3, "seed": 9}], priority=0)[0]
    images = [{"seed": 40 + i, "num_images": 2} for i in range(2)]
    image_ids = worker.submit(IMAGE, images)
    canceled = worker.submit(TEXT, [{"prompt": "never mind", "max_new_tokens": 4}])[0]
    live = [*text_ids, failing, urgent, *image_ids]
    worker.publish([*live, canceled])
    with worker.db.session() as s:  # the owner cancels a queued job after it was published
        assert jobstate.cancel(s, canceled)
        s.commit()
    # A message no API would publish: an unknown id, another model's job, and the canceled job again.
    unknown = str(uuid.uuid4())
    stray = queue.Chunk(TEXT, 5, [unknown, image_ids[0], canceled])
    queue.publish(worker.app, [stray])

    reports = worker.burst()

    # Chunks of at most three ids, one model and one priority each, plus the stray message.
    assert len(reports) == 3 + 1 + 1 + 1 and stray.message_id in reports
    outcomes = {j: o for mid, r in reports.items() if mid != stray.message_id for j, o in r.items()}
    assert outcomes == {**{j: "succeeded" for j in [*text_ids, urgent, *image_ids]},
                        failing: "failed:engine_error", canceled: "skipped:finished"}
    assert reports[stray.message_id] == {unknown: "skipped:missing", image_ids[0]: "skipped:other_model",
                                         canceled: "skipped:finished"}
    # Each skipped id is logged with its reason, the suspicious ones as warnings.
    skips = {(r.levelno, r.getMessage()) for r in caplog.records if "skipped" in r.getMessage()}
    assert (logging.WARNING, f"job {unknown} skipped: missing (message for model {TEXT})") in skips
    assert (logging.WARNING, f"job {image_ids[0]} skipped: other_model (message for model {TEXT})") in skips
    assert (logging.INFO, f"job {canceled} skipped: finished") in skips

    with worker.db.session() as s:
        rows = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_([*live, canceled])))}
        for jid, inp in zip([*text_ids, urgent], [*texts, {"prompt": "urgent", "max_new_tokens": 3, "seed": 9}],
                            strict=True):
            row = rows[jid]
            assert row.status == "succeeded" and row.attempts == 1 and row.lease_expires_at is None
            assert row.output is not None and row.output["texts"] == fake_texts(
                inp["prompt"], inp["seed"], inp.get("n", 1), inp["max_new_tokens"])
        assert (rows[failing].status, rows[failing].error_code) == ("failed", "engine_error")
        assert rows[canceled].status == "canceled" and rows[canceled].output is None
        assert rows[canceled].started_at is None  # never claimed
        for jid, inp in zip(image_ids, images, strict=True):
            assert rows[jid].status == "succeeded"
            stored = s.execute(select(JobImage.index, JobImage.data).where(JobImage.job_id == jid)
                               .order_by(JobImage.index)).all()
            assert [bytes(d) for _, d in stored] == [fake_png(inp["seed"], i) for i in range(2)]
    # The urgent job's message was fetched first (bucket 0) and its job admitted before any other text job.
    assert worker.engines[TEXT].admitted[0] == urgent

    # The same messages delivered again (a worker died before acking them): every id is skipped as finished,
    # and no engine sees a job twice.
    admitted = {m: list(e.admitted) for m, e in worker.engines.items()}
    worker.publish(live)
    again = worker.burst()
    assert {j: o for r in again.values() for j, o in r.items()} == {j: "skipped:finished" for j in live}
    assert {m: e.admitted for m, e in worker.engines.items()} == admitted

    succeeded = [*text_ids, urgent, *image_ids]
    assert _prescreen_writes(worker.db, [*live, canceled]) == {j: 1 for j in succeeded}
    # Redis pub/sub channels span its databases, so other stacks on the same server announce their jobs here
    # too: keep this test's ids (the repeats of its own ids still count).
    mine = {*live, canceled}
    announced = [j for j in _announced(pubsub) if j in mine]
    assert sorted(announced) == sorted([*succeeded, failing])  # each once, after its commit
    assert (worker.rt.flow.messages, worker.rt.flow.jobs) == (0, 0)
    pubsub.close()


def test_a_canceled_running_job_writes_nothing_and_a_held_one_is_given_back_at_shutdown(worker: Worker) -> None:
    held, canceled, short = worker.submit(TEXT, [{"prompt": "hold on"}, {"prompt": "hold still"},
                                                 {"prompt": "short", "max_new_tokens": 2}])
    worker.publish([held, canceled, short])
    (message,) = worker.take_messages()
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(r=worker.run(message)))
    thread.start()
    engine = worker.engines[TEXT]
    assert engine.wait_admitted([held, canceled, short])
    with worker.db.session() as s:
        assert jobstate.cancel(s, canceled)  # as the API does for its owner
        s.commit()
    # The runtime's watcher: cancels found in SQL reach the engine between steps.
    for jid in worker.rt.store.canceled_among([held, canceled]):
        engine.cancel(jid)
    worker.rt.stop_engines(timeout=0.3)  # a warm shutdown: the held job cannot finish within the grace
    thread.join(30)
    assert not thread.is_alive()
    r = result["r"]
    # The message goes back to the broker whole; its finished ids will be skipped by whoever takes it.
    assert r.state == "REJECTED" and "1 job(s) given back" in str(r.result)
    with worker.db.session() as s:
        rows = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_([held, canceled, short])))}
        assert (rows[held].status, rows[held].attempts, rows[held].leased_by) == ("queued", 0, None)
        assert rows[canceled].status == "canceled" and rows[canceled].output is None
        assert rows[short].status == "succeeded"
    assert _prescreen_writes(worker.db, [held, canceled, short]) == {short: 1}
    assert (worker.rt.flow.messages, worker.rt.flow.jobs) == (0, 0)
